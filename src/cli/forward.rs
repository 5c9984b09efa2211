//! `shadowplane forward`: the forwarder's data plane (see [`shadowplane::forwarder`]).
//!
//! This module maps the flags onto an [`XdsClientConfig`] (`--xds`) or a [`LocalConfig`]
//! (`--config`) and [`ForwarderOptions`], and wires them as `forwarder::proxy` describes:
//! a [`proxy::runtime`] with `--concurrency` workers, one [`Forwarder`], its admin server,
//! and the xDS client or the folder watcher feeding [`Forwarder::table_sink`], until SIGTERM
//! or Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args};
use shadowplane::app::{BIND_ADDRESS_KEY, NAMESPACE_KEY};
use shadowplane::config_source::Debounce;
use shadowplane::forwarder::admin;
use shadowplane::forwarder::local::{self, LocalConfig};
use shadowplane::forwarder::mirror::MirrorOptions;
use shadowplane::forwarder::proxy::{self, Forwarder, ForwarderOptions};
use shadowplane::forwarder::xds_client::{self, ClientStatus, Protocol, XdsClientConfig};
use tokio::sync::watch;

pub(super) const AFTER_HELP: &str = "\
Proxies HTTP like Envoy would with the same config: the listeners, routes (matches, weights,
rewrites, redirects, direct responses, faults, retries, timeouts) and request mirroring of
the Envoy resources `shadowplane serve` produces. Mirrored requests are fire-and-forget copies
(Host with Envoy's `-shadow` suffix unless the config disables it) that never delay or fail
the user's request; request bodies up to --mirror-body-limit are mirrored.

Where the config comes from (exactly one):
  --xds HOST:PORT    an xDS server (`shadowplane serve`, or any control plane sending the same
                     resources) over ADS, incremental (delta) by default, --sotw for state of
                     the world. The node is --node-id / --node-cluster, with node metadata
                     NAMESPACE (--namespace), BIND_ADDRESS (--bind-address) and any --metadata.
                     A resource the forwarder cannot honour is NACKed with its field path and
                     the last good config keeps serving; when the server goes away the
                     forwarder keeps serving and reconnects.
  --config PATH...   Istio YAML files or folders, translated in-process and watched: a change
                     is applied once the files are quiet; a config with errors is logged and
                     the last good one keeps serving.

Admin HTTP (--admin-listen; keep it on loopback):
  /metrics (and /stats/prometheus)  Prometheus metrics with Envoy's stat names
  /ready          200 once a config is applied and its listeners are bound
  /debug/config   the compiled routing table and its xDS versions
  /debug/mirror   mirror counters, per-route primary/shadow comparison, the last pairs

Stops gracefully on SIGTERM or Ctrl-C: the listeners stop accepting and open requests get
--drain-timeout to finish.

Exit status: 0 after a graceful stop, 2 when it cannot start (the admin port in use, a config
path that cannot be watched, a bad --xds address) or a usage problem.

Sizes: a number of bytes, or with a unit B, KiB, MiB (64KiB, 1MiB, 0 mirrors no body).
Durations: a number with a unit, ms, s or m (250ms, 1s, 2m).

Examples:
  # Next to an Envoy, from the same control plane (the listeners bind 127.0.0.2 here, so
  # both can use the ServiceEntry's port on one machine)
  shadowplane serve --config examples/calc/service-entry.yaml --config examples/calc/mirror
  shadowplane forward --xds 127.0.0.1:18000 --node-id forwarder-1 \\
      --namespace challengeistio --bind-address 127.0.0.2
  curl -H 'Host: calcbackendsvc' http://127.0.0.2:8080/

  # Without a control plane: translate and watch the YAML itself
  shadowplane forward --bind-address 127.0.0.1 \\
      --config examples/calc/service-entry.yaml --config examples/calc/mirror
  curl -H 'Host: calcbackendsvc' http://127.0.0.1:8080/

  # Two workers, a larger mirror body limit, state-of-the-world xDS
  shadowplane forward --xds 127.0.0.1:18000 --node-id fwd --sotw --concurrency 2 \\
      --mirror-body-limit 1MiB --admin-listen 127.0.0.1:15100

  # What it serves and how the mirror compares
  curl -s 127.0.0.1:15000/debug/config | jq .versions
  curl -s 127.0.0.1:15000/debug/mirror | jq .routes";

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["xds", "config"])))]
pub struct ForwardArgs {
    /// The xDS server to get the config from (`shadowplane serve`'s --xds-listen).
    #[arg(
        long,
        value_name = "HOST:PORT",
        conflicts_with = "config",
        requires = "node_id"
    )]
    pub xds: Option<String>,

    /// Istio YAML files or folders to translate in-process and watch (instead of --xds).
    /// Repeat to combine several.
    #[arg(short, long = "config", value_name = "PATH", num_args = 1..)]
    pub config: Vec<PathBuf>,

    /// The node id the forwarder gives the xDS server (what serve's /debug/proxies shows).
    #[arg(long, value_name = "ID", requires = "xds", conflicts_with = "config")]
    pub node_id: Option<String>,

    /// The node cluster sent to the xDS server.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "shadowplane-forwarder",
        requires = "xds",
        conflicts_with = "config"
    )]
    pub node_cluster: String,

    /// Speak state-of-the-world ADS instead of incremental (delta) ADS.
    #[arg(long, requires = "xds", conflicts_with = "config")]
    pub sotw: bool,

    /// Extra node metadata for the xDS server, KEY=VALUE (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value, requires = "xds", conflicts_with = "config")]
    pub metadata: Vec<(String, String)>,

    /// The proxy's namespace: Istio's short host names for a sidecar in that namespace. With
    /// --xds it is sent as node metadata NAMESPACE; with --config it is the translation's.
    #[arg(long, visible_alias = "proxy-namespace", value_name = "NS")]
    pub namespace: Option<String>,

    /// Address the listeners bind to. With --xds it is sent as node metadata BIND_ADDRESS
    /// (without it, serve's --bind-address applies); with --config the default is 0.0.0.0.
    #[arg(long, value_name = "ADDR")]
    pub bind_address: Option<String>,

    /// (--config) Keep the original Host on mirrored requests instead of appending `-shadow`.
    #[arg(long, requires = "config", conflicts_with = "xds")]
    pub no_shadow_suffix: bool,

    /// (--config) Kubernetes cluster DNS suffix used to expand short host names.
    #[arg(
        long,
        value_name = "SUFFIX",
        default_value = "cluster.local",
        requires = "config",
        conflicts_with = "xds"
    )]
    pub domain_suffix: String,

    /// (--config) Re-read the files once they have been quiet this long after a change.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration, requires = "config", conflicts_with = "xds")]
    pub debounce: Duration,

    /// Address of the admin HTTP server (metrics, readiness, debug pages).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:15000")]
    pub admin_listen: SocketAddr,

    /// Worker threads (default: the number of CPUs, like Envoy). 1 runs everything on one
    /// thread.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: Option<u16>,

    /// Largest request body mirrored (and kept for retries); larger bodies are forwarded to
    /// the primary but not mirrored, and counted.
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub mirror_body_limit: usize,

    /// Mirrored requests in flight per shadow cluster; copies beyond it are dropped and
    /// counted, so a slow shadow cannot pile up work.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub mirror_max_in_flight: usize,

    /// How long a mirrored request may take when its route sets no timeout.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub mirror_timeout: Duration,

    /// On SIGTERM/Ctrl-C (and for listeners a new config removes), how long open requests
    /// get to finish.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// Where the table comes from, resolved from the flags.
#[derive(Debug, Clone)]
pub enum Source {
    Xds(XdsClientConfig),
    Local(LocalConfig),
}

impl ForwardArgs {
    /// The xDS client or folder watcher configuration. `Err` is a usage problem clap cannot
    /// express.
    pub fn source(&self) -> anyhow::Result<Source> {
        if let Some(server) = &self.xds {
            let node_id = self
                .node_id
                .clone()
                .filter(|id| !id.trim().is_empty())
                .context("--xds needs --node-id ID (the name serve's /debug/proxies shows)")?;
            let mut cfg = XdsClientConfig::new(server.clone(), node_id);
            cfg.node_cluster = self.node_cluster.clone();
            cfg.protocol = if self.sotw {
                Protocol::Sotw
            } else {
                Protocol::Delta
            };
            let mut metadata: BTreeMap<String, String> = self.metadata.iter().cloned().collect();
            if let Some(ns) = &self.namespace {
                metadata.insert(NAMESPACE_KEY.to_string(), ns.clone());
            }
            if let Some(addr) = &self.bind_address {
                metadata.insert(BIND_ADDRESS_KEY.to_string(), addr.clone());
            }
            cfg.node_metadata = metadata;
            Ok(Source::Xds(cfg))
        } else if !self.config.is_empty() {
            let mut cfg = LocalConfig::new(self.config.clone());
            cfg.options = shadowplane_translator::Options {
                bind_address: self
                    .bind_address
                    .clone()
                    .unwrap_or_else(|| "0.0.0.0".to_string()),
                disable_shadow_host_suffix: self.no_shadow_suffix,
                proxy_namespace: self.namespace.clone(),
                domain_suffix: self.domain_suffix.clone(),
                ..Default::default()
            };
            cfg.debounce = Debounce {
                quiet: self.debounce,
                max_delay: self.debounce.max(Duration::from_secs(1)),
            };
            Ok(Source::Local(cfg))
        } else {
            anyhow::bail!("give the config source: --xds HOST:PORT --node-id ID, or --config PATH")
        }
    }

    pub fn forwarder_options(&self) -> ForwarderOptions {
        ForwarderOptions {
            mirror: MirrorOptions {
                body_limit: self.mirror_body_limit,
                max_in_flight: self.mirror_max_in_flight,
                default_timeout: self.mirror_timeout,
                ..MirrorOptions::default()
            },
            drain_timeout: self.drain_timeout,
        }
    }

    /// `--concurrency`, else the number of CPUs.
    pub fn workers(&self) -> usize {
        match self.concurrency {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "{text:?} is not KEY=VALUE: write e.g. --metadata REGION=eu"
        )),
    }
}

/// `65536`, `64KiB`, `1MiB`, `512B` (also `KB`/`MB`/`k`/`m`, read as powers of 1024).
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a size: write a number of bytes or e.g. 64KiB or 1MiB")
    })?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}: use B, KiB or MiB"
            ))
        }
    };
    value
        .checked_mul(scale)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `250ms`, `1s`, `1.5s`, `2m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration: write a number and a unit, e.g. 250ms, 1s or 2m")
    })?;
    let scale = match unit.trim() {
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

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Run until SIGTERM or Ctrl-C. A forwarder that cannot start (the admin port in use, a
/// config path that cannot be watched) is an `Err`, which `main` reports with exit status 2.
pub(super) fn run(args: &ForwardArgs) -> anyhow::Result<ExitCode> {
    let source = args.source()?;
    let options = args.forwarder_options();
    let workers = args.workers();
    let admin_listen = args.admin_listen;
    let runtime = proxy::runtime(workers).context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let admin_socket = tokio::net::TcpListener::bind(admin_listen)
            .await
            .map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    "another process holds the port; stop it or pick another address with --admin-listen ADDR:PORT"
                } else {
                    "pick another address with --admin-listen ADDR:PORT"
                };
                anyhow::anyhow!("cannot listen for the admin server on {admin_listen}: {e}; {hint}")
            })?;
        let admin_addr = admin_socket.local_addr().unwrap_or(admin_listen);

        let fwd = Arc::new(Forwarder::new(options));
        let (stop_tx, stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(
            fwd.clone(),
            admin_socket,
            stopped(stop_rx.clone()),
            options.drain_timeout,
        ));
        let sink = fwd.table_sink();
        let on_table = move |t| sink.send(t);
        let status = Arc::new(ClientStatus::default());
        let what = match &source {
            Source::Xds(cfg) => format!(
                "{} xDS from {} as node {}",
                match cfg.protocol {
                    Protocol::Delta => "delta",
                    Protocol::Sotw => "state-of-the-world",
                },
                cfg.server,
                cfg.node_id
            ),
            Source::Local(cfg) => format!(
                "config {}",
                cfg.paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut client: tokio::task::JoinHandle<anyhow::Result<()>> = match source {
            Source::Xds(cfg) => {
                let (st, stop) = (status.clone(), stopped(stop_rx.clone()));
                tokio::spawn(async move {
                    xds_client::run_with_status(cfg, st, on_table, stop)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}; give --xds as HOST:PORT"))
                })
            }
            Source::Local(cfg) => {
                let (st, stop) = (status.clone(), stopped(stop_rx.clone()));
                tokio::spawn(async move {
                    local::run_with_status(cfg, st, on_table, stop)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))
                })
            }
        };
        eprintln!(
            "shadowplane: forwarding with {workers} worker(s), {what}; admin on http://{admin_addr}/ (Ctrl-C or SIGTERM stops)"
        );

        // The client only ends by itself when it cannot start (a bad address, an
        // unwatchable path): that is a start-up failure.
        let early = tokio::select! {
            _ = shadowplane::app::shutdown_signal() => None,
            ended = &mut client => Some(ended),
        };
        let _ = stop_tx.send(true);
        let result = match early {
            Some(ended) => match ended {
                Ok(Ok(())) => Err(anyhow::anyhow!("the config source stopped unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("the config source task failed: {e}")),
            },
            None => {
                eprintln!("shadowplane: stopping");
                match client.await {
                    Ok(r) => r,
                    Err(e) => Err(anyhow::anyhow!("the config source task failed: {e}")),
                }
            }
        };
        fwd.shutdown().await;
        let _ = admin_task.await;
        let view = status.view();
        tracing::info!(
            tables = view.tables,
            rejected = view.nacks,
            "forwarder stopped"
        );
        result.map(|()| ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<ForwardArgs, clap::Error> {
        let mut argv = vec!["shadowplane", "forward"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Forward(a) => Ok(a),
            other => panic!("expected forward, got {other:?}"),
        }
    }

    #[test]
    fn xds_flags_map_to_the_client_config() {
        let a = parse(&[
            "--xds",
            "127.0.0.1:18000",
            "--node-id",
            "fwd-1",
            "--node-cluster",
            "edge",
            "--namespace",
            "prod",
            "--bind-address",
            "127.0.0.2",
            "--metadata",
            "REGION=eu",
            "--sotw",
            "--concurrency",
            "2",
        ])
        .expect("valid flags");
        let Source::Xds(cfg) = a.source().expect("a source") else {
            panic!("expected xds");
        };
        assert_eq!(cfg.server, "127.0.0.1:18000");
        assert_eq!(cfg.node_id, "fwd-1");
        assert_eq!(cfg.node_cluster, "edge");
        assert_eq!(cfg.protocol, Protocol::Sotw);
        assert_eq!(
            cfg.node_metadata.get("NAMESPACE").map(String::as_str),
            Some("prod")
        );
        assert_eq!(
            cfg.node_metadata.get("BIND_ADDRESS").map(String::as_str),
            Some("127.0.0.2")
        );
        assert_eq!(
            cfg.node_metadata.get("REGION").map(String::as_str),
            Some("eu")
        );
        assert_eq!(a.workers(), 2);
        assert_eq!(a.admin_listen.to_string(), "127.0.0.1:15000");
    }

    #[test]
    fn xds_defaults_are_delta_without_metadata() {
        let a = parse(&["--xds", "cp:18000", "--node-id", "n"]).expect("valid flags");
        let Source::Xds(cfg) = a.source().expect("a source") else {
            panic!("expected xds");
        };
        assert_eq!(cfg.protocol, Protocol::Delta);
        assert_eq!(cfg.node_cluster, "shadowplane-forwarder");
        assert!(cfg.node_metadata.is_empty(), "{:?}", cfg.node_metadata);
        assert_eq!(a.forwarder_options(), ForwarderOptions::default());
    }

    #[test]
    fn config_flags_map_to_translation_options() {
        let a = parse(&[
            "--config",
            "a.yaml",
            "dir",
            "--bind-address",
            "127.0.0.1",
            "--no-shadow-suffix",
            "--proxy-namespace",
            "prod",
            "--mirror-body-limit",
            "1MiB",
            "--mirror-max-in-flight",
            "8",
            "--mirror-timeout",
            "250ms",
            "--drain-timeout",
            "1s",
        ])
        .expect("valid flags");
        let Source::Local(cfg) = a.source().expect("a source") else {
            panic!("expected --config");
        };
        assert_eq!(
            cfg.paths,
            vec![PathBuf::from("a.yaml"), PathBuf::from("dir")]
        );
        assert_eq!(cfg.options.bind_address, "127.0.0.1");
        assert!(cfg.options.disable_shadow_host_suffix);
        assert_eq!(cfg.options.proxy_namespace.as_deref(), Some("prod"));
        assert_eq!(cfg.options.domain_suffix, "cluster.local");
        let o = a.forwarder_options();
        assert_eq!(o.mirror.body_limit, 1024 * 1024);
        assert_eq!(o.mirror.max_in_flight, 8);
        assert_eq!(o.mirror.default_timeout, Duration::from_millis(250));
        assert_eq!(o.drain_timeout, Duration::from_secs(1));
        let plain = parse(&["--config", "a.yaml"]).expect("valid flags");
        let Source::Local(cfg) = plain.source().expect("a source") else {
            panic!("expected --config");
        };
        assert_eq!(cfg.options.bind_address, "0.0.0.0");
    }

    #[test]
    fn exactly_one_source_and_mode_specific_flags() {
        let neither = parse(&[]).unwrap_err().to_string();
        assert!(
            neither.contains("--xds") && neither.contains("--config"),
            "{neither}"
        );
        assert!(parse(&["--xds", "a:1", "--node-id", "n", "--config", "x"]).is_err());
        let no_id = parse(&["--xds", "a:1"]).unwrap_err().to_string();
        assert!(no_id.contains("--node-id"), "{no_id}");
        assert!(parse(&["--config", "x", "--sotw"]).is_err());
        let r = parse(&["--config", "x", "--node-id", "n"]);
        assert!(r.is_err(), "{r:?}");
        assert!(parse(&["--xds", "a:1", "--node-id", "n", "--no-shadow-suffix"]).is_err());
        assert!(parse(&["--config", "x", "--concurrency", "0"]).is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("2kb"), Ok(2048));
        let bad = parse_size("64 furlongs").unwrap_err();
        assert!(bad.contains("furlongs"), "{bad}");
        assert!(parse_size("big").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").unwrap_err().contains("5ms"));
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn metadata_is_key_value() {
        assert_eq!(
            parse_key_value("REGION=eu=west"),
            Ok(("REGION".to_string(), "eu=west".to_string()))
        );
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("novalue").is_err());
    }
}
