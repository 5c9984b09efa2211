//! `shadowplane serve`: the xDS control plane (see [`shadowplane::app`] for what it does).
//!
//! This module only maps the flags onto [`ServeConfig`] and runs [`app::start`] on the tokio
//! runtime built in `main.rs` until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args};
use shadowplane::app::{self, ServeConfig, DEFAULT_ADMIN_LISTEN, DEFAULT_XDS_LISTEN};
use shadowplane::config_source::{Debounce, KubeSourceConfig};

use super::OptionArgs;

pub(super) const AFTER_HELP: &str = "\
Serves the translated config to Envoy over xDS (gRPC, plaintext): aggregated (ADS) streams,
state-of-the-world and incremental (delta), and the per-type LDS/RDS/CDS/EDS services. The
--config paths are watched: a change is re-read once the files are quiet for --debounce and
pushed to every connected Envoy. A config with errors is not served; the last good one keeps
serving (the errors are logged and shown on /debug/errors). Each Envoy may set node metadata
NAMESPACE (Istio's short-name rules for that namespace) and BIND_ADDRESS (the address its
listeners bind to), overriding --proxy-namespace and --bind-address for that Envoy.

Kubernetes (--kubernetes): watches VirtualService, DestinationRule, ServiceEntry, WorkloadEntry
and Gateway (networking.istio.io v1, v1beta1 or v1alpha3, whichever the cluster serves), and
Services with their EndpointSlices and Pods: each Service is the host
<name>.<namespace>.svc.<domain-suffix> with its ports (protocol from appProtocol or the port
name prefix http, http2, grpc, ...; other and unnamed ports are TCP) and its ready endpoints,
labelled with their Pod's labels so DestinationRule subsets select them. The client uses
$KUBECONFIG, ~/.kube/config or the Pod's service account (or --kubeconfig/--kube-context);
it needs get, list and watch on those kinds, and create/patch on events.k8s.io events: errors
in an object are also posted as Warning Events on it. /readyz answers 503 until every kind has
been listed once. Combined with --config, the files come first, then the cluster's objects.

Admin HTTP (--admin-listen; keep it on loopback):
  /healthz  200 while the process runs        /readyz  200 once a good config is served
  /metrics  Prometheus metrics                /debug/proxies  what each Envoy has ACKed
  /debug/config[?node=ID|?group=NAME]  the served translation
  /debug/errors  why the latest config was rejected, recent NACKs

Stops gracefully on SIGTERM or Ctrl-C: the listeners close, open xDS streams end with
UNAVAILABLE (Envoy keeps its config and reconnects), within --drain-timeout.

Exit status: 0 after a graceful stop, 2 when it cannot start (a port already in use, a config
path that cannot be watched) or a usage problem.

Durations: a number with a unit, ms, s or m (250ms, 1s, 1.5s, 2m).

Examples:
  # Serve the seed walkthrough; Envoy connects over ADS (state of the world or delta)
  shadowplane serve --config examples/calc/service-entry.yaml --config examples/calc/mirror
  envoy -c envoy-configs/ads-sotw.yaml      # or: envoy -c envoy-configs/ads-delta.yaml

  # Other ports, listeners on loopback, faster reloads
  shadowplane serve --config ./istio --xds-listen 127.0.0.1:18001 \\
      --admin-listen 127.0.0.1:19001 --bind-address 127.0.0.1 --debounce 20ms

  # What is served, and what each Envoy has acknowledged
  curl -s localhost:19000/debug/config | jq '.resources.routes'
  curl -s localhost:19000/debug/proxies

  # In a cluster (or against the current kubectl context), one namespace only
  shadowplane serve --kubernetes --namespace shop --xds-listen 0.0.0.0:18000";

#[derive(Debug, Args)]
// Where the config comes from: files, the cluster, or both; with neither, clap's usage error
// names both flags.
#[command(group(
    ArgGroup::new("source")
        .args(["config", "kubernetes"])
        .required(true)
        .multiple(true)
))]
pub struct ServeArgs {
    /// A YAML file or a folder (walked recursively for *.yaml and *.yml, hidden entries
    /// skipped). Repeat to combine several; they are translated together. Optional with
    /// --kubernetes.
    #[arg(short, long = "config", value_name = "PATH", num_args = 1..)]
    pub config: Vec<PathBuf>,

    /// Also read the config from the Kubernetes API server: Istio objects, Services,
    /// EndpointSlices and Pods, watched.
    #[arg(long)]
    pub kubernetes: bool,

    /// With --kubernetes: watch only this namespace (default: all namespaces).
    #[arg(long, value_name = "NS", requires = "kubernetes")]
    pub namespace: Option<String>,

    /// With --kubernetes: the kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, or the
    /// in-cluster service account).
    #[arg(long, value_name = "PATH", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,

    /// With --kubernetes: the kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME", requires = "kubernetes")]
    pub kube_context: Option<String>,

    /// With --kubernetes: how often Istio kinds the cluster does not serve yet (CRDs not
    /// installed) are looked for again (default 30s). Hidden: for tests.
    #[arg(long, value_name = "DURATION", requires = "kubernetes", hide = true,
          value_parser = parse_duration)]
    pub kube_discovery_interval: Option<Duration>,

    #[command(flatten)]
    pub options: OptionArgs,

    /// Address the xDS gRPC server listens on (Envoy's xds_cluster points here).
    #[arg(long, value_name = "ADDR:PORT", default_value_t = DEFAULT_XDS_LISTEN)]
    pub xds_listen: SocketAddr,

    /// Address of the admin HTTP server (health, readiness, metrics, debug pages).
    #[arg(long, value_name = "ADDR:PORT", default_value_t = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,

    /// Re-read the config once the files have been quiet this long after a change (and files
    /// written in place have been closed, up to --debounce-max).
    #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = parse_duration)]
    pub debounce: Duration,

    /// Re-read at the latest this long after the first change of a burst, even if the files
    /// keep changing.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub debounce_max: Duration,

    /// How long each make-before-break step (new clusters first, then the routes, then the
    /// removals) waits for the Envoys' ACKs before going on.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub phase_timeout: Duration,

    /// On SIGTERM/Ctrl-C, how long open connections get to close before they are cut.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Close each xDS connection after this age (Envoy reconnects at once, keeping its
    /// config; open streams get 10s to finish), so Envoys spread over all replicas after a
    /// rollout; 0 never closes them.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    pub max_connection_age: Duration,
}

impl ServeArgs {
    pub fn to_serve_config(&self) -> ServeConfig {
        let mut cfg = ServeConfig::new(self.config.clone());
        cfg.xds_listen = self.xds_listen;
        cfg.admin_listen = self.admin_listen;
        cfg.options = self.options.to_options();
        cfg.debounce = Debounce {
            quiet: self.debounce,
            max_delay: self.debounce_max,
        };
        cfg.phase_timeout = self.phase_timeout;
        cfg.drain_timeout = self.drain_timeout;
        cfg.max_connection_age =
            (!self.max_connection_age.is_zero()).then_some(self.max_connection_age);
        cfg.kubernetes = self.kubernetes.then(|| KubeSourceConfig {
            namespace: self.namespace.clone(),
            kubeconfig: self.kubeconfig.clone(),
            context: self.kube_context.clone(),
            debounce: cfg.debounce,
            discovery_interval: self.kube_discovery_interval,
        });
        cfg
    }
}

/// `250ms`, `1s`, `1.5s`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration: write a number and a unit, e.g. 250ms, 1s or 2m")
    })?;
    let scale = match unit.trim() {
        // A bare 0 needs no unit (`--max-connection-age 0`).
        "" if value == 0.0 => 0.0,
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "" => {
            return Err(format!(
                "{text:?} has no unit: write {number}ms, {number}s or {number}m"
            ))
        }
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?}: use ms, s or m"
            ))
        }
    };
    let seconds = value * scale;
    if !seconds.is_finite() || seconds > 86_400.0 {
        return Err(format!("{text:?} is too long: use at most 24 hours"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Run until SIGTERM or Ctrl-C. A server that cannot start (e.g. a port in use) is an `Err`,
/// which `main` reports with exit status 2.
pub(super) fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.to_serve_config();
    let runtime = crate::tokio_runtime()?;
    runtime.block_on(async move {
        // The error's own text already names the address, the cause and the flag to change;
        // `anyhow!("{e}")` keeps it to that one line instead of repeating the io::Error.
        let server = app::start(cfg).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!(
            "shadowplane: serving xDS on {} and admin on http://{}/ (Ctrl-C or SIGTERM stops)",
            server.xds_addr(),
            server.admin_addr()
        );
        app::shutdown_signal().await;
        eprintln!("shadowplane: stopping");
        server
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        let no_unit = parse_duration("100").unwrap_err();
        assert!(no_unit.contains("100ms"), "{no_unit}");
        let bad_unit = parse_duration("5h").unwrap_err();
        assert!(bad_unit.contains("\"h\""), "{bad_unit}");
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("100000m").is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeConfig, clap::Error> {
        use clap::Parser;
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))?;
        Ok(cli.serve.to_serve_config())
    }

    #[test]
    fn kubernetes_flags_map_onto_the_config() {
        let cfg = parse(&[
            "--kubernetes",
            "--namespace",
            "shop",
            "--kubeconfig",
            "/tmp/kc",
            "--kube-context",
            "kind-a",
            "--debounce",
            "20ms",
        ])
        .expect("parses");
        assert!(cfg.config_paths.is_empty());
        let kube = cfg.kubernetes.expect("kubernetes");
        assert_eq!(kube.namespace.as_deref(), Some("shop"));
        assert_eq!(kube.kubeconfig, Some(PathBuf::from("/tmp/kc")));
        assert_eq!(kube.context.as_deref(), Some("kind-a"));
        assert_eq!(kube.debounce.quiet, Duration::from_millis(20));
        assert_eq!(kube.discovery_interval, None);
        assert_eq!(cfg.max_connection_age, Some(Duration::from_secs(1800)));

        // Both sources; --max-connection-age 0 disables it.
        let cfg = parse(&[
            "--config",
            "a.yaml",
            "--kubernetes",
            "--max-connection-age",
            "0",
        ])
        .expect("parses");
        assert_eq!(cfg.config_paths, [PathBuf::from("a.yaml")]);
        assert!(cfg.kubernetes.is_some());
        assert_eq!(cfg.max_connection_age, None);

        // Neither is a usage error, and so is --namespace without --kubernetes.
        assert!(parse(&[]).is_err());
        assert!(parse(&["--config", "a.yaml", "--namespace", "shop"]).is_err());
        let files_only = parse(&["--config", "a.yaml"]).expect("parses");
        assert!(files_only.kubernetes.is_none());
    }
}
