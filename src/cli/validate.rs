//! `shadowplane validate`: report every problem in the config, `istioctl analyze` style.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use shadowplane_translator::{print, translate_files};

use super::{ConfigArgs, DiagnosticFormat, OptionArgs, EXIT_INVALID};
use shadowplane::config_files;

pub(super) const AFTER_HELP: &str = "\
Every resource is parsed, checked against the Istio API and cross-checked (hosts, subsets,
ports, gateways) exactly as `translate` does. Diagnostics name file:line:column, the resource,
the field path and a hint.

Output:
  --format text  every diagnostic on stderr (one line, plus an indented hint), then a summary
                 line `N errors, M warnings`
  --format json  a JSON array of diagnostics on stdout (for piping), nothing else on stdout

Exit status: 0 no errors (warnings and infos allowed), 1 at least one error,
2 usage or I/O problem (missing file, unreadable folder).

Examples:
  shadowplane validate --config examples/calc/service-entry.yaml --config examples/calc/mirror
  shadowplane validate --config ./istio --format json | jq '.[] | select(.severity == \"error\")'";

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    #[command(flatten)]
    pub options: OptionArgs,

    /// How to print the diagnostics.
    #[arg(long, value_enum, default_value_t = DiagnosticFormat::Text)]
    pub format: DiagnosticFormat,
}

pub(super) fn run(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let files = config_files::collect(&args.config.config)?;
    tracing::debug!(files = files.len(), "validating");
    let translation = translate_files(&files, &args.options.to_options());
    let diagnostics = &translation.diagnostics;

    match args.format {
        DiagnosticFormat::Text => {
            super::print_diagnostics_text(diagnostics);
            eprintln!("{}", super::summary(diagnostics));
        }
        DiagnosticFormat::Json => {
            let value = print::diagnostics_to_json(diagnostics);
            let text = serde_json::to_string_pretty(&value)
                .context("cannot render the diagnostics as JSON")?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{text}").context("cannot write to stdout")?;
        }
    }

    Ok(if translation.has_errors() {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    })
}
