//! Command-line interface: argument definitions and the `validate`, `translate` and `serve`
//! commands.

mod backend;
mod crds;
mod demo;
mod forward;
mod output;
mod serve;
mod translate;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

pub use backend::BackendArgs;
pub use crds::CrdsArgs;
pub use demo::DemoArgs;
pub use forward::ForwardArgs;
pub use serve::ServeArgs;
pub use translate::TranslateArgs;
pub use validate::ValidateArgs;

/// Exit code when the input has errors (diagnostics of severity `error`).
pub const EXIT_INVALID: u8 = 1;
/// Exit code for usage and I/O problems (missing file, unwritable output), as clap uses.
pub const EXIT_USAGE: u8 = 2;

const MAIN_AFTER_HELP: &str = "\
Examples:
  # Check a folder of Istio YAML, istioctl-analyze style
  shadowplane validate --config examples/calc/service-entry.yaml --config examples/calc/mirror

  # Print the Envoy resources (listeners, routes, clusters, endpoints) it becomes
  shadowplane translate --config examples/calc/service-entry.yaml --config examples/calc/mirror

  # Write a complete static Envoy bootstrap and run Envoy on it
  shadowplane translate --bootstrap --bind-address 127.0.0.1 \\
      --config examples/calc/service-entry.yaml --config examples/calc/mirror --output envoy.yaml
  envoy -c envoy.yaml

  # Or serve it over xDS (watching the files) to Envoys that connect
  shadowplane serve --config examples/calc/service-entry.yaml --config examples/calc/mirror
  envoy -c envoy-configs/ads-delta.yaml

Logging: -v for debug, -vv for trace; RUST_LOG (e.g. RUST_LOG=shadowplane=debug) overrides -v.
Logs go to stderr.";

/// Istio-style traffic mirroring for plain Envoy: translate VirtualService, DestinationRule,
/// ServiceEntry, WorkloadEntry and Gateway YAML into Envoy v3 resources.
#[derive(Debug, Parser)]
#[command(name = "shadowplane", version, after_help = MAIN_AFTER_HELP)]
pub struct Cli {
    /// More logging on stderr (-v debug, -vv trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check Istio YAML and report problems with file:line:column (exit 0 ok, 1 errors, 2 usage)
    #[command(after_help = validate::AFTER_HELP)]
    Validate(ValidateArgs),
    /// Translate Istio YAML into Envoy resources or a static Envoy bootstrap
    #[command(after_help = translate::AFTER_HELP)]
    Translate(TranslateArgs),
    /// Serve the config to Envoy over xDS (ADS, SotW and delta), reloading it when the files change
    #[command(after_help = serve::AFTER_HELP)]
    Serve(ServeArgs),
    /// Run the demo backend: factors numbers, echoes requests, names itself in x-backend-version
    #[command(after_help = backend::AFTER_HELP)]
    Backend(BackendArgs),
    /// Proxy HTTP like Envoy from the same xDS (or Istio YAML), mirroring included
    #[command(after_help = forward::AFTER_HELP)]
    Forward(ForwardArgs),
    /// Play the calc walkthrough end to end (serve, backends, data plane, traffic), nothing to install
    #[command(after_help = demo::AFTER_HELP)]
    Demo(DemoArgs),
    /// Print CustomResourceDefinitions for the five Istio kinds (for clusters without Istio)
    #[command(after_help = crds::AFTER_HELP)]
    Crds(CrdsArgs),
}

/// Where the Istio YAML comes from (shared by every command).
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// A YAML file or a folder (walked recursively for *.yaml and *.yml, hidden entries
    /// skipped). Repeat to combine several; they are translated together.
    #[arg(short, long = "config", value_name = "PATH", required = true, num_args = 1..)]
    pub config: Vec<PathBuf>,
}

/// Translation choices that are not in the YAML (see `shadowplane_translator::Options`).
#[derive(Debug, Args)]
pub struct OptionArgs {
    /// Address the listeners bind to (istiod uses 0.0.0.0; 127.0.0.1 for local runs).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    pub bind_address: String,

    /// Keep the original Host on mirrored requests (Istio 1.28's default). Without it Envoy
    /// appends `-shadow` to the mirrored Host, as the Istio mirroring task describes.
    #[arg(long)]
    pub no_shadow_suffix: bool,

    /// Namespace of the proxy the config is for: short host names follow Istio's rules for a
    /// sidecar in that namespace. Without it every unambiguous short form is accepted.
    #[arg(long, value_name = "NS")]
    pub proxy_namespace: Option<String>,

    /// Kubernetes cluster DNS suffix used to expand short host names.
    #[arg(long, value_name = "SUFFIX", default_value = "cluster.local")]
    pub domain_suffix: String,
}

impl OptionArgs {
    pub fn to_options(&self) -> shadowplane_translator::Options {
        shadowplane_translator::Options {
            bind_address: self.bind_address.clone(),
            disable_shadow_host_suffix: self.no_shadow_suffix,
            proxy_namespace: self.proxy_namespace.clone(),
            domain_suffix: self.domain_suffix.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiagnosticFormat {
    /// Human-readable lines on stderr
    Text,
    /// A JSON array on stdout
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResourceFormat {
    Yaml,
    Json,
}

/// Run the parsed command line. `Err` is a usage or I/O problem (the caller exits 2).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Translate(args) => translate::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Backend(args) => backend::run(&args),
        Command::Forward(args) => forward::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Crds(args) => crds::run(&args),
    }
}

/// `N errors, M warnings` with proper plurals.
fn summary(diagnostics: &[shadowplane_translator::Diagnostic]) -> String {
    use shadowplane_translator::Severity;
    let count = |s| diagnostics.iter().filter(|d| d.severity == s).count();
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    format!(
        "{}, {}",
        plural(count(Severity::Error), "error"),
        plural(count(Severity::Warning), "warning")
    )
}

/// Print diagnostics in their human form on stderr, one per diagnostic.
fn print_diagnostics_text(diagnostics: &[shadowplane_translator::Diagnostic]) {
    for d in diagnostics {
        eprintln!("{d}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn translate_flags_map_to_options() {
        let cli = Cli::parse_from([
            "shadowplane",
            "translate",
            "--config",
            "a.yaml",
            "--bind-address",
            "127.0.0.1",
            "--no-shadow-suffix",
            "--proxy-namespace",
            "prod",
        ]);
        let Command::Translate(args) = cli.command else {
            panic!("expected translate");
        };
        let options = args.options.to_options();
        assert_eq!(options.bind_address, "127.0.0.1");
        assert!(options.disable_shadow_host_suffix);
        assert_eq!(options.proxy_namespace.as_deref(), Some("prod"));
        assert_eq!(options.domain_suffix, "cluster.local");
    }

    #[test]
    fn serve_defaults_are_the_pipeline_defaults() {
        let cli = Cli::parse_from(["shadowplane", "serve", "--config", "a.yaml"]);
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let cfg = args.to_serve_config();
        let defaults = shadowplane::app::ServeConfig::new(vec!["a.yaml".into()]);
        assert_eq!(cfg.config_paths, defaults.config_paths);
        assert_eq!(cfg.xds_listen, defaults.xds_listen);
        assert_eq!(cfg.admin_listen, defaults.admin_listen);
        assert_eq!(cfg.options, defaults.options);
        assert_eq!(cfg.debounce, defaults.debounce);
        assert_eq!(cfg.phase_timeout, defaults.phase_timeout);
        assert_eq!(cfg.drain_timeout, defaults.drain_timeout);
    }

    #[test]
    fn serve_flags_map_to_serve_config() {
        let cli = Cli::parse_from([
            "shadowplane",
            "serve",
            "--config",
            "a.yaml",
            "--config",
            "dir",
            "--xds-listen",
            "127.0.0.1:18001",
            "--admin-listen",
            "0.0.0.0:19001",
            "--bind-address",
            "127.0.0.1",
            "--no-shadow-suffix",
            "--domain-suffix",
            "corp.local",
            "--debounce",
            "20ms",
            "--debounce-max",
            "2s",
            "--phase-timeout",
            "1500ms",
            "--drain-timeout",
            "1m",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let cfg = args.to_serve_config();
        assert_eq!(cfg.config_paths.len(), 2);
        assert_eq!(cfg.xds_listen.to_string(), "127.0.0.1:18001");
        assert_eq!(cfg.admin_listen.to_string(), "0.0.0.0:19001");
        assert_eq!(cfg.options.bind_address, "127.0.0.1");
        assert!(cfg.options.disable_shadow_host_suffix);
        assert_eq!(cfg.options.domain_suffix, "corp.local");
        assert_eq!(cfg.debounce.quiet, std::time::Duration::from_millis(20));
        assert_eq!(cfg.debounce.max_delay, std::time::Duration::from_secs(2));
        assert_eq!(cfg.phase_timeout, std::time::Duration::from_millis(1500));
        assert_eq!(cfg.drain_timeout, std::time::Duration::from_secs(60));
    }

    #[test]
    fn summary_uses_plurals() {
        use shadowplane_translator::{Code, Diagnostic};
        let diags = vec![
            Diagnostic::error(Code::InvalidValue, "a"),
            Diagnostic::warning(Code::DeprecatedField, "b"),
            Diagnostic::warning(Code::DeprecatedField, "c"),
            Diagnostic::info(Code::SkippedKind, "d"),
        ];
        assert_eq!(summary(&diags), "1 error, 2 warnings");
        assert_eq!(summary(&[]), "0 errors, 0 warnings");
    }
}
