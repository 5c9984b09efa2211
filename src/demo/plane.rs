//! The demo's data plane: the in-process forwarder, or a real Envoy child process, both fed by
//! the demo's `serve` over ADS with node metadata `BIND_ADDRESS: 127.0.0.1`.
//!
//! Envoy gets an ADS bootstrap ([`ads_bootstrap`], delta xDS, admin on a free loopback port;
//! its stat tags keep whole Istio cluster names, so `/stats/prometheus` reads like the
//! forwarder's `/metrics`) with finer `upstream_rq_time` buckets added. The child is killed on every
//! exit path (`kill_on_drop`), and asked to quit through its admin page first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use shadowplane_translator::print;
use shadowplane_translator::xds::{ads_bootstrap, AdsBootstrapOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client;
use super::DemoError;
use crate::app::BIND_ADDRESS_KEY;
use crate::forwarder::proxy::{Forwarder, ForwarderOptions};
use crate::forwarder::xds_client::{self, ClientStatus, XdsClientConfig};

/// How long Envoy may take to start.
pub const ENVOY_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Which data plane to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataPlaneChoice {
    /// The in-process forwarder (`shadowplane forward`).
    Forwarder,
    /// A real Envoy: this binary.
    Envoy(PathBuf),
}

/// A running data plane.
pub enum Plane {
    Forwarder(ForwarderPlane),
    Envoy(EnvoyPlane),
}

impl Plane {
    /// What it is, for the screen.
    pub fn label(&self) -> String {
        match self {
            Plane::Forwarder(_) => "the forwarder (in-process, fed by serve over xDS)".to_string(),
            Plane::Envoy(e) => format!("Envoy ({}, fed by serve over xDS)", e.bin.display()),
        }
    }

    /// Its name in a sentence: `the forwarder`, `Envoy`.
    pub fn name(&self) -> &'static str {
        match self {
            Plane::Forwarder(_) => "the forwarder",
            Plane::Envoy(_) => "Envoy",
        }
    }

    pub fn admin(&self) -> SocketAddr {
        match self {
            Plane::Forwarder(f) => f.admin,
            Plane::Envoy(e) => e.admin,
        }
    }

    /// The Prometheus page of its admin server.
    pub fn metrics_path(&self) -> &'static str {
        match self {
            Plane::Forwarder(_) => "/metrics",
            Plane::Envoy(_) => "/stats/prometheus?usedonly",
        }
    }

    /// `Some` for the forwarder: its `/debug/mirror` primary/shadow comparison.
    pub async fn mirror_comparison(&self) -> Option<serde_json::Value> {
        match self {
            Plane::Forwarder(f) => Some(f.forwarder.mirror_json()),
            Plane::Envoy(_) => None,
        }
    }

    /// Still running? (`Err` says why not.)
    pub fn check_alive(&mut self) -> Result<(), DemoError> {
        match self {
            Plane::Forwarder(_) => Ok(()),
            Plane::Envoy(e) => e.check_alive(),
        }
    }

    pub async fn shutdown(self) {
        match self {
            Plane::Forwarder(f) => f.shutdown().await,
            Plane::Envoy(e) => e.shutdown().await,
        }
    }
}

/// Resolves once `rx` holds `true` (or its sender is gone).
pub async fn until_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The in-process forwarder with its admin server and xDS client.
pub struct ForwarderPlane {
    forwarder: Arc<Forwarder>,
    admin: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ForwarderPlane {
    pub async fn start(xds: SocketAddr) -> Result<ForwarderPlane, DemoError> {
        let forwarder = Arc::new(Forwarder::new(ForwarderOptions {
            drain_timeout: Duration::from_secs(1),
            ..ForwarderOptions::default()
        }));
        let admin_listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| DemoError::Io("cannot listen for the forwarder's admin".into(), e))?;
        let admin = admin_listener
            .local_addr()
            .map_err(|e| DemoError::Io("the forwarder's admin address".into(), e))?;
        let (stop, stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(crate::forwarder::admin::serve(
            forwarder.clone(),
            admin_listener,
            until_true(stop_rx.clone()),
            Duration::from_secs(1),
        ));
        let mut cfg = XdsClientConfig::new(xds.to_string(), "shadowplane-demo-forwarder");
        cfg.node_cluster = "shadowplane-demo".to_string();
        cfg.node_metadata
            .insert(BIND_ADDRESS_KEY.to_string(), "127.0.0.1".to_string());
        let sink = forwarder.table_sink();
        let status = Arc::new(ClientStatus::default());
        let client_task = tokio::spawn(async move {
            if let Err(e) = xds_client::run_with_status(
                cfg,
                status,
                move |table| sink.send(table),
                until_true(stop_rx),
            )
            .await
            {
                tracing::error!(error = %e, "the forwarder's xds client stopped");
            }
        });
        Ok(ForwarderPlane {
            forwarder,
            admin,
            stop,
            tasks: vec![client_task, admin_task],
        })
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.forwarder.shutdown().await;
    }
}

/// A real Envoy child process.
pub struct EnvoyPlane {
    bin: PathBuf,
    child: tokio::process::Child,
    admin: SocketAddr,
    stderr_path: PathBuf,
}

/// The ADS bootstrap the demo's Envoy runs, as JSON.
pub fn envoy_bootstrap(xds: SocketAddr) -> Result<serde_json::Value, DemoError> {
    let bootstrap = ads_bootstrap(&AdsBootstrapOptions {
        node_id: "shadowplane-demo-envoy".to_string(),
        node_cluster: "shadowplane-demo".to_string(),
        admin_address: "127.0.0.1".to_string(),
        admin_port: 0,
        xds_address: xds.ip().to_string(),
        xds_port: u32::from(xds.port()),
        delta: true,
        node_namespace: None,
    });
    let mut doc = print::to_json(&bootstrap)
        .map_err(|e| DemoError::Envoy(format!("cannot print the Envoy bootstrap: {e}")))?;
    doc["node"]["metadata"] = json!({ BIND_ADDRESS_KEY: "127.0.0.1" });
    // Envoy merges histograms into what its admin shows at each flush (default every 5 s);
    // the demo's steps are seconds long.
    doc["stats_flush_interval"] = json!("0.250s");
    // ads_bootstrap's stat tags keep whole Istio cluster names (as the forwarder labels them);
    // the demo adds sub-millisecond buckets: v3 answers in tens of microseconds.
    doc["stats_config"]["histogram_bucket_settings"] = json!([{
        "match": { "suffix": "upstream_rq_time" },
        "buckets": [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100,
                    250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
    }]);
    Ok(doc)
}

impl EnvoyPlane {
    /// Write the bootstrap into `dir`, start Envoy and wait until its admin page says LIVE.
    pub async fn start(bin: &Path, dir: &Path, xds: SocketAddr) -> Result<EnvoyPlane, DemoError> {
        let config = dir.join("envoy.json");
        let admin_path = dir.join("envoy-admin-address.txt");
        let stderr_path = dir.join("envoy.log");
        let doc = envoy_bootstrap(xds)?;
        std::fs::write(&config, print::to_json_string(&doc))
            .map_err(|e| DemoError::Io(format!("cannot write {}", config.display()), e))?;
        let log = std::fs::File::create(&stderr_path)
            .map_err(|e| DemoError::Io(format!("cannot create {}", stderr_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| DemoError::Io("cannot share the Envoy log file".into(), e))?;
        let child = tokio::process::Command::new(bin)
            .arg("-c")
            .arg(&config)
            .args([
                "-l",
                "warning",
                "--concurrency",
                "1",
                "--disable-hot-restart",
            ])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                DemoError::Envoy(format!(
                    "cannot run {}: {e}; pass --envoy PATH to an envoy binary, or drop --envoy to use the built-in forwarder",
                    bin.display()
                ))
            })?;
        let mut envoy = EnvoyPlane {
            bin: bin.to_path_buf(),
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr_path,
        };
        let deadline = Instant::now() + ENVOY_START_TIMEOUT;
        let mut last = "its admin address is not written yet".to_string();
        while Instant::now() < deadline {
            envoy.check_alive()?;
            if envoy.admin.port() == 0 {
                if let Some(addr) = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse::<SocketAddr>().ok())
                {
                    envoy.admin = addr;
                }
            }
            if envoy.admin.port() != 0 {
                match client::get_text(envoy.admin, "/ready").await {
                    Ok((200, body)) if body.trim() == "LIVE" => return Ok(envoy),
                    Ok((status, body)) => {
                        last = format!("/ready answered {status} {}", body.trim())
                    }
                    Err(e) => last = e,
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tail = envoy.log_tail();
        envoy.shutdown().await;
        Err(DemoError::Envoy(format!(
            "Envoy was not LIVE within {ENVOY_START_TIMEOUT:?} ({last}); its log ends with:\n{tail}"
        )))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn check_alive(&mut self) -> Result<(), DemoError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(DemoError::Envoy(format!(
                "Envoy exited ({status}); its log ends with:\n{}",
                self.log_tail()
            ))),
            Err(e) => Err(DemoError::Envoy(format!(
                "cannot watch the Envoy process: {e}"
            ))),
        }
    }

    /// Ask Envoy to quit (admin `/quitquitquit`), kill it if it has not within 2 s, and reap it.
    async fn shutdown(mut self) {
        if self.admin.port() != 0 {
            let _ = client::request(
                self.admin,
                Method::POST,
                "/quitquitquit",
                Duration::from_secs(1),
            )
            .await;
        }
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// The Envoy to use for `--envoy` without a path: `$ENVOY_BIN`, `envoy` on `PATH`, then
/// `.venv/bin/envoy` (where `scripts/test.sh` installs it) under the current directory or the
/// source checkout.
pub fn find_envoy() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Some(bin);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(found) = std::env::split_paths(&path)
            .map(|dir| dir.join("envoy"))
            .find(|c| c.is_file())
        {
            return Some(found);
        }
    }
    [
        PathBuf::from(".venv/bin/envoy"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy"),
    ]
    .into_iter()
    .find(|c| c.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envoy_bootstrap_points_at_serve_and_keeps_cluster_names() {
        let doc = envoy_bootstrap(SocketAddr::from(([127, 0, 0, 1], 18123))).expect("bootstrap");
        assert_eq!(doc["node"]["metadata"]["BIND_ADDRESS"], "127.0.0.1");
        assert_eq!(
            doc["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        assert_eq!(
            doc["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        let text = doc.to_string();
        assert!(text.contains("18123"), "{text}");
        assert_eq!(
            doc["stats_config"]["stats_tags"][0]["tag_name"],
            "envoy.cluster_name"
        );
        assert_eq!(
            doc["stats_config"]["histogram_bucket_settings"][0]["buckets"][0],
            0.1
        );
        // The regex keeps the whole cluster name.
        let re = regex::Regex::new(
            doc["stats_config"]["stats_tags"][0]["regex"]
                .as_str()
                .expect("regex"),
        )
        .expect("valid regex");
        let stat =
            "cluster.outbound|8080|v3|calcbackendsvc.challengeistio.svc.cluster.local.upstream_rq_total";
        let name = re.captures(stat).and_then(|c| c.get(2)).map(|m| m.as_str());
        assert_eq!(
            name,
            Some("outbound|8080|v3|calcbackendsvc.challengeistio.svc.cluster.local")
        );
    }
}
