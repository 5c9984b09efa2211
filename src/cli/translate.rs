//! `shadowplane translate`: Istio YAML → Envoy resources (or a static Envoy bootstrap).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use shadowplane_translator::{print, translate_files, xds};

use super::{output, ConfigArgs, OptionArgs, ResourceFormat, EXIT_INVALID};
use shadowplane::config_files;

pub(super) const AFTER_HELP: &str = "\
Output (stdout, or --output FILE): the Envoy v3 resources grouped by type, `listeners`,
`routes`, `clusters` and `endpoints`, as canonical protobuf JSON with proto field names (what
Envoy's config_dump shows and its YAML loader accepts). With --bootstrap: one complete static Envoy
bootstrap (static_resources plus an admin listener) that `envoy -c FILE` runs as is.

Diagnostics go to stderr. Translation is best effort: a resource with an error is dropped or
the bad field ignored, everything else is still translated and printed, and the exit status
is 1. With --output FILE, a config with errors is NOT written, so a bad config never replaces
a good file; the file is written atomically (temporary file in the same folder, then rename),
so it is never left half-written either.

Exit status: 0 no errors, 1 errors in the config (best-effort output printed on stdout; the
--output file not written), 2 usage or I/O problem.

Examples:
  shadowplane translate --config examples/calc/service-entry.yaml --config examples/calc/mirror
  shadowplane translate --config examples/httpbin --format json | jq '.routes'
  shadowplane translate --bootstrap --bind-address 127.0.0.1 --admin-port 9901 \\
      --config examples/calc/service-entry.yaml --config examples/calc/mirror --output envoy.yaml";

#[derive(Debug, Args)]
pub struct TranslateArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    #[command(flatten)]
    pub options: OptionArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = ResourceFormat::Yaml)]
    pub format: ResourceFormat,

    /// Print a complete static Envoy bootstrap instead of the resource lists.
    #[arg(long)]
    pub bootstrap: bool,

    /// Bootstrap only: the Envoy node id.
    #[arg(
        long,
        value_name = "ID",
        default_value = "shadowplane",
        requires = "bootstrap"
    )]
    pub node_id: String,

    /// Bootstrap only: the Envoy node cluster.
    #[arg(
        long,
        value_name = "CLUSTER",
        default_value = "shadowplane",
        requires = "bootstrap"
    )]
    pub node_cluster: String,

    /// Bootstrap only: address of Envoy's admin interface.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1",
        requires = "bootstrap"
    )]
    pub admin_address: String,

    /// Bootstrap only: port of Envoy's admin interface.
    #[arg(long, value_name = "N", default_value_t = 9901, requires = "bootstrap")]
    pub admin_port: u16,

    /// Write to FILE (atomically) instead of stdout; not written when the config has errors.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub(super) fn run(args: &TranslateArgs) -> anyhow::Result<ExitCode> {
    let files = config_files::collect(&args.config.config)?;
    tracing::debug!(files = files.len(), "translating");
    let translation = translate_files(&files, &args.options.to_options());

    super::print_diagnostics_text(&translation.diagnostics);
    if !translation.diagnostics.is_empty() {
        eprintln!("{}", super::summary(&translation.diagnostics));
    }

    let value = if args.bootstrap {
        let options = xds::bootstrap::BootstrapOptions {
            node_id: args.node_id.clone(),
            node_cluster: args.node_cluster.clone(),
            admin_address: args.admin_address.clone(),
            admin_port: u32::from(args.admin_port),
        };
        let bootstrap = xds::bootstrap::static_bootstrap(&translation.model, &options);
        print::to_json(&bootstrap).context("cannot render the bootstrap as JSON")?
    } else {
        print::resources_to_json(&translation.resources)
    };
    let mut text = match args.format {
        ResourceFormat::Yaml => print::to_yaml_string(&value),
        ResourceFormat::Json => print::to_json_string(&value),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }

    let has_errors = translation.has_errors();
    match &args.output {
        Some(path) if has_errors => {
            eprintln!(
                "not writing {}: the config has errors (listed above); fix them, or run without \
                 --output to see the best-effort translation",
                path.display()
            );
        }
        Some(path) => {
            output::write_atomically(path, text.as_bytes())?;
            tracing::info!(path = %path.display(), "wrote output");
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .context("cannot write to stdout")?;
        }
    }

    Ok(if has_errors {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    })
}
