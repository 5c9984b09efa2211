//! `shadowplane serve`: the one place that wires the config source, the translator, the
//! snapshot cache, the xDS server and the admin server together.
//!
//! ```text
//! --config paths ─► config_source::files ─► translate (per node view) ─► SnapshotCache ─► xds::serve ─► proxies
//!   (watched)         (debounced readings)    last-good check              (per group)                    │
//!                                                                                 ProxyRegistry ◄─ ACK/NACK┘
//!                                                 admin (/readyz, /metrics, /debug/*) ◄─ observer (NACKs, convergence)
//! ```
//!
//! **Last good config.** A reading whose translation has an error that would change what is
//! served (see [`blocks_serving`]) is logged (each diagnostic as `validate` prints it), shown
//! on `/debug/errors` and counted in `shadowplane_config_errors`, and *not* served: the previous
//! snapshot keeps serving everyone, new connections included. Fixing the file resumes.
//! An unreadable config (a path that disappeared, a non-UTF-8 file) is handled the same way.
//! The server never exits because of its input.
//!
//! **Startup with a broken config.** The server starts anyway, serves nothing yet (proxies
//! that connect wait for a first snapshot), answers `/readyz` with 503 and the reason, and
//! keeps watching; the first good reading makes it ready.
//!
//! **Per-node views.** Every proxy gets the same config, except for what its node metadata
//! asks for, where Envoy and Istio users put it:
//! - `NAMESPACE` (what Istio sidecars send): short host names follow Istio's rules for a
//!   proxy in that namespace ([`Options::proxy_namespace`]);
//! - `BIND_ADDRESS` (shadowplane's): the address the listeners bind to, e.g. `127.0.0.1` for
//!   an Envoy on a laptop (default `--bind-address`, `0.0.0.0` like istiod);
//! - `XDS_CLUSTER` (shadowplane's): see below;
//!
//! and except for how the stream came in. On ADS, listeners and clusters reference their
//! routes and endpoints with `{ads: {}}`, as istiod does. A stream on a per-type discovery
//! service (a bootstrap whose `lds_config`/`cds_config` is an `api_config_source` and that
//! has no `ads_config`, like `envoy-configs/xds-per-type.yaml`) gets them with
//! `{api_config_source: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name:
//! xds_cluster}}]}}` (`DELTA_GRPC` for a delta stream), so that Envoy fetches RDS and EDS on
//! streams of their own to the same server ([`Options::config_source`]). The cluster is the
//! bootstrap's static cluster of the xDS server: `xds_cluster`, the name Envoy's and
//! go-control-plane's examples use, or node metadata `XDS_CLUSTER` for another name. (Envoy
//! does not implement `{self: {}}`, which would not need the name.) So any standard bootstrap
//! works unchanged.
//!
//! Each distinct view is a snapshot group, translated the first time a proxy with that view
//! connects and again on every config change.
//!
//! **Make-before-break.** On an aggregated stream the server sends clusters and endpoints
//! before listeners and routes. On top of that a change is pushed in phases when needed, each
//! gated on the group's proxies acknowledging the previous one (or `phase_timeout`):
//! new clusters (and endpoints) first with the old routes; then the new routes with the old
//! clusters still present; then the final snapshot that removes the old clusters. A change
//! that adds or removes no cluster, or leaves listeners and routes alone, is one push.

//!
//! **Flags of `shadowplane serve`**, as the CLI maps them onto [`ServeConfig`]:
//!
//! | flag | default | field |
//! |---|---|---|
//! | `--config PATH` (repeatable; required without `--kubernetes`) | | `config_paths` |
//! | `--kubernetes` | off | `kubernetes` (see [`crate::config_source::kubernetes`]) |
//! | `--namespace NS` | all namespaces | `kubernetes.namespace` |
//! | `--kubeconfig PATH` | `$KUBECONFIG`, `~/.kube/config`, in-cluster | `kubernetes.kubeconfig` |
//! | `--kube-context NAME` | the kubeconfig's current context | `kubernetes.context` |
//! | `--max-connection-age DURATION` | `30m` (`0`: never) | `max_connection_age` |
//! | `--xds-listen ADDR:PORT` | `127.0.0.1:18000` | `xds_listen` |
//! | `--admin-listen ADDR:PORT` | `127.0.0.1:19000` | `admin_listen` |
//! | `--bind-address ADDR` | `0.0.0.0` (node metadata `BIND_ADDRESS` overrides) | `options.bind_address` |
//! | `--no-shadow-suffix` | off | `options.disable_shadow_host_suffix` |
//! | `--proxy-namespace NS` | none (node metadata `NAMESPACE` overrides) | `options.proxy_namespace` |
//! | `--domain-suffix SUFFIX` | `cluster.local` | `options.domain_suffix` |
//! | `--debounce DURATION` | `20ms` | `debounce.quiet` |
//! | `--debounce-max DURATION` | `1s` | `debounce.max_delay` |
//! | `--phase-timeout DURATION` | `5s` | `phase_timeout` |
//! | `--drain-timeout DURATION` | `5s` | `drain_timeout` |
//!
//! The command runs [`run`] on a tokio runtime with `std::future::pending()` as the extra
//! shutdown future (SIGTERM and Ctrl-C are handled inside), and exits 0 when it returns `Ok`;
//! a [`ServeError`] (a port in use, neither `--config` nor `--kubernetes`) is a usage error. Logs go through
//! `tracing` (`RUST_LOG`): config changes at info, rejected configs at error, NACKs at warn,
//! one line per push per proxy at debug.

mod attribution;
mod kube_events;
mod reload;

pub use attribution::SourceRef;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use serde_json::json;
use shadowplane_translator::{
    diag, print, Code, ConfigSourceKind, Diagnostic, Options, Parsed, Severity, Translation,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminView};
use crate::config_source::{ConfigLoad, Debounce, KubeSourceConfig, SourceError, Sources};
use crate::metrics::{Metrics, ReloadResult};
use crate::xds::resource::{self, CLUSTER, ENDPOINT, LISTENER, ROUTE, VIRTUAL_HOST};
use crate::xds::{ProxyRegistry, Snapshot, SnapshotCache, StreamInfo, DEFAULT_GROUP};

/// Default `--xds-listen`.
pub const DEFAULT_XDS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 18000);
/// Default `--admin-listen`.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 19000);
/// Node metadata key naming the proxy's namespace (Istio sidecars send it).
pub const NAMESPACE_KEY: &str = "NAMESPACE";
/// Node metadata key naming the address the proxy's listeners bind to.
pub const BIND_ADDRESS_KEY: &str = "BIND_ADDRESS";
/// Node metadata key: `"true"` asks for virtual hosts over VHDS (translator `Options::vhds`),
/// honoured on delta ADS streams only (Envoy serves VHDS over delta xDS only).
pub const VHDS_KEY: &str = "VHDS";
/// Node metadata key naming the bootstrap's static cluster of the xDS server, for proxies on
/// per-type streams (their RDS and EDS go to it).
pub const XDS_CLUSTER_KEY: &str = "XDS_CLUSTER";
/// The xDS cluster a per-type proxy's RDS and EDS go to when it does not say
/// ([`XDS_CLUSTER_KEY`]): the name of Envoy's and go-control-plane's examples, and of
/// `envoy-configs/`.
pub const DEFAULT_XDS_CLUSTER: &str = "xds_cluster";

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `--config`: files and folders, watched.
    pub config_paths: Vec<PathBuf>,
    /// `--xds-listen`: where proxies connect (gRPC, plaintext).
    pub xds_listen: SocketAddr,
    /// `--admin-listen`: health, metrics and debug pages (HTTP). Keep it on loopback.
    pub admin_listen: SocketAddr,
    /// Translation options for proxies that do not say otherwise in their node metadata.
    pub options: Options,
    /// How long the config folder must be quiet before it is re-read.
    pub debounce: Debounce,
    /// How long one make-before-break phase waits for the proxies' ACKs before going on.
    pub phase_timeout: Duration,
    /// How long shutdown waits for open connections before closing them.
    pub drain_timeout: Duration,
    /// `--kubernetes`: also read Istio objects and Services from a Kubernetes API server.
    pub kubernetes: Option<KubeSourceConfig>,
    /// `--max-connection-age`: close xDS connections after this age (proxies reconnect,
    /// which spreads them over replicas after a rollout). `None`: never.
    pub max_connection_age: Option<Duration>,
}

/// Default `--max-connection-age`: istiod's `keepaliveMaxServerConnectionAge`.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);

/// After `--max-connection-age`, how long open xDS streams get before the connection is cut.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(10);

impl ServeConfig {
    /// Defaults for everything but the paths (no Kubernetes).
    pub fn new(config_paths: Vec<PathBuf>) -> ServeConfig {
        ServeConfig {
            config_paths,
            xds_listen: DEFAULT_XDS_LISTEN,
            admin_listen: DEFAULT_ADMIN_LISTEN,
            options: Options::default(),
            debounce: Debounce::default(),
            phase_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            kubernetes: None,
            max_connection_age: Some(DEFAULT_MAX_CONNECTION_AGE),
        }
    }
}

/// Why `serve` could not start or stopped with an error. Bad config is never one of these.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no config given; pass --config PATH or --kubernetes")]
    NoConfigPaths,
    #[error("cannot listen for {what} on {addr}: {source}; {hint}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        hint: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Xds(#[from] crate::xds::ServeError),
    #[error("a serve task failed: {0}")]
    Task(String),
}

/// A started server: its bound addresses and a way to stop it.
pub struct RunningServer {
    xds_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// The xDS address actually bound (useful with port 0).
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    /// The admin address actually bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stop gracefully: close the listeners, end the xDS streams (proxies reconnect
    /// elsewhere), let admin requests finish, and wait (bounded by the drain timeout).
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.shutdown_tx.send(true);
        self.wait().await
    }

    /// Wait until the server stops (after [`RunningServer::shutdown`] or a fatal error).
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ServeError::Task(e.to_string())),
        }
    }
}

/// Run until `shutdown` completes or the process gets SIGTERM or Ctrl-C, then drain.
pub async fn run(cfg: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let server = start(cfg).await?;
    tracing::info!(
        xds = %server.xds_addr(),
        admin = %server.admin_addr(),
        "shadowplane serving"
    );
    tokio::select! {
        _ = shutdown => {}
        _ = shutdown_signal() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await
}

/// Resolves on SIGTERM (Unix) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| {
        let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
            format!("another process holds the port; stop it or pick another address with {flag} ADDR:PORT")
        } else {
            format!("pick another address with {flag} ADDR:PORT")
        };
        ServeError::Bind {
            what,
            addr,
            hint,
            source,
        }
    })
}

/// Bind both listeners, read the config once, and start everything in the background.
pub async fn start(cfg: ServeConfig) -> Result<RunningServer, ServeError> {
    if cfg.config_paths.is_empty() && cfg.kubernetes.is_none() {
        return Err(ServeError::NoConfigPaths);
    }
    let xds_listener = bind(cfg.xds_listen, "xDS", "--xds-listen").await?;
    let admin_listener = bind(cfg.admin_listen, "the admin server", "--admin-listen").await?;
    let xds_addr = xds_listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            what: "xDS",
            addr: cfg.xds_listen,
            hint: "pick another address with --xds-listen ADDR:PORT".to_string(),
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            what: "the admin server",
            addr: cfg.admin_listen,
            hint: "pick another address with --admin-listen ADDR:PORT".to_string(),
            source,
        })?;

    let source = Sources::start(
        cfg.config_paths.clone(),
        cfg.debounce,
        cfg.kubernetes.clone(),
        &cfg.options.domain_suffix,
    )
    .await?;
    let (group_tx, group_rx) = mpsc::unbounded_channel();
    let grouping = node_grouping(cfg.options.clone(), group_tx);
    let cache = Arc::new(SnapshotCache::with_stream_grouping(grouping));
    let registry = Arc::new(ProxyRegistry::new());
    let app = Arc::new(App {
        options: cfg.options.clone(),
        phase_timeout: cfg.phase_timeout,
        cache: cache.clone(),
        registry: registry.clone(),
        metrics: Metrics::new(registry.clone()),
        state: ArcSwap::from_pointee(ConfigState::default()),
        groups: Mutex::new(BTreeMap::new()),
        nacks: Mutex::new(VecDeque::new()),
        kube_synced: source.kube().map(|k| k.synced_flag()),
    });
    // The first reading is applied before anything listens, so the first proxy to connect
    // gets the config at once. Generation 0 is no reading yet (Kubernetes still listing):
    // the control loop applies the first one when it comes.
    let mut loads = source.subscribe();
    let first = loads.borrow_and_update().clone();
    if first.generation > 0 {
        app.apply_load(&first);
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let drain = cfg.drain_timeout;
    let xds_options = crate::xds::ServerOptions {
        max_connection_age: cfg.max_connection_age.filter(|age| !age.is_zero()),
        max_connection_age_grace: cfg
            .max_connection_age
            .filter(|age| !age.is_zero())
            .map(|_| MAX_CONNECTION_AGE_GRACE),
        ..crate::xds::ServerOptions::default()
    };
    let task = tokio::spawn(supervise(
        app,
        source,
        loads,
        group_rx,
        xds_listener,
        xds_options,
        admin_listener,
        shutdown_rx,
        drain,
    ));
    Ok(RunningServer {
        xds_addr,
        admin_addr,
        shutdown_tx,
        task,
    })
}

async fn wait_for_true(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone: treat it as shutdown.
    let _ = rx.wait_for(|down| *down).await;
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    app: Arc<App>,
    source: Sources,
    loads: watch::Receiver<Arc<ConfigLoad>>,
    groups: mpsc::UnboundedReceiver<(String, NodeView)>,
    xds_listener: TcpListener,
    xds_options: crate::xds::ServerOptions,
    admin_listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> Result<(), ServeError> {
    let xds = tokio::spawn(crate::xds::serve_with_options(
        xds_listener,
        app.cache.clone(),
        app.registry.clone(),
        xds_options,
        wait_for_true(shutdown.clone()),
    ));
    // Diagnostics about Kubernetes objects become Events on them.
    let events = source
        .kube()
        .map(|kube| kube_events::spawn(app.clone(), kube));
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        app.clone() as Arc<dyn AdminView>,
        wait_for_true(shutdown.clone()),
        drain,
    ));
    let control = tokio::spawn(control_loop(
        app.clone(),
        loads,
        groups,
        wait_for_true(shutdown.clone()),
    ));

    let mut xds = xds;
    let result = tokio::select! {
        r = &mut xds => {
            // The xDS server stopped before shutdown was asked: a fatal transport error.
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Xds(e)),
                Err(e) => Err(ServeError::Task(e.to_string())),
            }
        }
        _ = wait_for_true(shutdown.clone()) => {
            match tokio::time::timeout(drain, &mut xds).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(e))) => Err(ServeError::Xds(e)),
                Ok(Err(e)) => Err(ServeError::Task(e.to_string())),
                Err(_) => {
                    tracing::warn!("xDS connections still open after {drain:?}; closing them");
                    xds.abort();
                    Ok(())
                }
            }
        }
    };
    drop(source);
    control.abort();
    if let Some(events) = events {
        events.abort();
    }
    if tokio::time::timeout(drain, admin).await.is_err() {
        tracing::debug!("admin server did not stop within the drain time");
    }
    tracing::info!("shadowplane stopped");
    result
}

/// Apply config readings and new node groups; watch ACKs and NACKs.
///
/// The loop does not poll the registry: it wakes when the registry reports a change (a stream
/// connected, disconnected, acknowledged, rejected or was pushed to, see
/// [`ProxyRegistry::changed`]), and otherwise only on a timer for phase timeouts and the
/// convergence give-up. Each wake reads per-group counts, never a copy of every proxy.
async fn control_loop(
    app: Arc<App>,
    mut loads: watch::Receiver<Arc<ConfigLoad>>,
    mut groups: mpsc::UnboundedReceiver<(String, NodeView)>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut observer = Observer::default();
    let mut loads_open = true;
    loop {
        // The timer only matters for phase timeouts and giving up on convergence.
        let tick = if app.has_pending_phases() || observer.converging.is_some() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = &mut shutdown => return,
            changed = loads.changed(), if loads_open => {
                if changed.is_err() {
                    loads_open = false;
                    continue;
                }
                let load = loads.borrow_and_update().clone();
                if app.apply_load(&load) {
                    observer.converging = Some((load.generation, Instant::now()));
                }
            }
            Some((name, view)) = groups.recv() => {
                app.add_group(&name, view);
            }
            _ = app.registry.changed() => {}
            _ = tokio::time::sleep(tick) => {}
        }
        observer.mark_swaps(&app);
        app.advance_phases();
        observer.observe(&app);
    }
}

// ===== node views =====

/// What a proxy's node metadata, and the stream it came in on, change in its config.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeView {
    /// `NAMESPACE`, when it differs from `--proxy-namespace`.
    pub namespace: Option<String>,
    /// `BIND_ADDRESS`, when it differs from `--bind-address`.
    pub bind_address: Option<String>,
    /// How the stream's listeners and clusters reference routes and endpoints, when it
    /// differs from the server's options: `ads` on ADS streams; on per-type ones gRPC to the
    /// bootstrap's xDS cluster.
    pub config_source: Option<ConfigSourceKind>,
    /// Virtual hosts over VHDS: node metadata `VHDS: "true"` on a delta ADS stream.
    pub vhds: bool,
}

impl NodeView {
    /// The view of `node` on a stream like `stream`: [`NodeView::of`], plus the config source
    /// the stream needs: `ads` on an aggregated stream; on a per-type one `GRPC` (or
    /// `DELTA_GRPC`, like the stream) to the cluster `XDS_CLUSTER` names, else
    /// [`DEFAULT_XDS_CLUSTER`].
    pub fn for_stream(node: &Node, stream: &StreamInfo, options: &Options) -> NodeView {
        let needed = if stream.is_aggregated() {
            ConfigSourceKind::Ads
        } else {
            ConfigSourceKind::Grpc {
                cluster_name: metadata_string(node, XDS_CLUSTER_KEY)
                    .unwrap_or_else(|| DEFAULT_XDS_CLUSTER.to_string()),
                delta: stream.transport == crate::xds::Transport::Delta,
            }
        };
        let vhds = stream.transport == crate::xds::Transport::DeltaAds
            && metadata_string(node, VHDS_KEY).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        NodeView {
            config_source: (needed != options.config_source).then_some(needed),
            vhds,
            ..NodeView::of(node, options)
        }
    }

    /// The view of `node`'s metadata, relative to the server's default `options`. Values that
    /// are not a namespace name or an IP address are ignored (with a warning).
    pub fn of(node: &Node, options: &Options) -> NodeView {
        let get = |key: &str| metadata_string(node, key);
        let namespace = get(NAMESPACE_KEY).filter(|ns| {
            let ok = is_dns_label(ns);
            if !ok {
                tracing::warn!(node = %node.id, namespace = %ns, "ignoring node metadata NAMESPACE: not a namespace name (lowercase letters, digits and '-')");
            }
            ok && options.proxy_namespace.as_deref() != Some(ns.as_str())
        });
        let bind_address = get(BIND_ADDRESS_KEY).filter(|addr| {
            let ok = addr.parse::<IpAddr>().is_ok();
            if !ok {
                tracing::warn!(node = %node.id, bind_address = %addr, "ignoring node metadata BIND_ADDRESS: not an IP address such as 127.0.0.1 or 0.0.0.0");
            }
            ok && *addr != options.bind_address
        });
        NodeView {
            namespace,
            bind_address,
            config_source: None,
            vhds: false,
        }
    }

    /// The snapshot group name: `default`, or any of `namespace=<ns>`, `bind=<addr>`,
    /// `config_source=<ads|grpc:<cluster>|delta_grpc:<cluster>>`, joined by commas.
    pub fn group(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace={ns}"));
        }
        if let Some(addr) = &self.bind_address {
            parts.push(format!("bind={addr}"));
        }
        if let Some(kind) = &self.config_source {
            parts.push(format!("config_source={kind}"));
        }
        if self.vhds {
            parts.push("vhds".to_string());
        }
        if parts.is_empty() {
            DEFAULT_GROUP.to_string()
        } else {
            parts.join(",")
        }
    }

    /// The translation options for this view.
    pub fn options(&self, base: &Options) -> Options {
        let mut options = base.clone();
        if let Some(ns) = &self.namespace {
            options.proxy_namespace = Some(ns.clone());
        }
        if let Some(addr) = &self.bind_address {
            options.bind_address = addr.clone();
        }
        if let Some(kind) = &self.config_source {
            options.config_source = kind.clone();
        }
        if self.vhds {
            options.vhds = true;
        }
        options
    }
}

/// A non-empty string value of the node's metadata.
fn metadata_string(node: &Node, key: &str) -> Option<String> {
    let value = node.metadata.as_ref()?.fields.get(key)?;
    match &value.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The cache's grouping function: the view of a node on a stream names its group; the first
/// time a group is seen it is reported on `new_groups` so the control loop translates for it.
fn node_grouping(
    options: Options,
    new_groups: mpsc::UnboundedSender<(String, NodeView)>,
) -> crate::xds::StreamGrouping {
    let seen = Mutex::new(BTreeSet::from([DEFAULT_GROUP.to_string()]));
    Arc::new(move |node: &Node, stream: &StreamInfo| {
        let view = NodeView::for_stream(node, stream, &options);
        let group = view.group();
        let first = seen
            .lock()
            .map(|mut s| s.insert(group.clone()))
            .unwrap_or(false);
        if first {
            let _ = new_groups.send((group.clone(), view));
        }
        group
    })
}

// ===== config state =====

/// Whether a diagnostic keeps a config from being served. Every error does, except
/// references to hosts or subsets that do not exist (IST0101): istiod serves those (Envoy
/// answers 503 for them), and so does shadowplane (`validate` still reports them).
pub fn blocks_serving(d: &Diagnostic) -> bool {
    d.is_error() && d.code != Code::ReferencedResourceNotFound
}

/// The config being served.
struct Served {
    generation: u64,
    parsed: Arc<Parsed>,
    /// Each file's parse, for the next reading.
    parse_cache: reload::ParseCache,
    /// The default view's snapshot: its encodings are reused for unchanged resources.
    snapshot: Arc<Snapshot>,
    /// The default view's translation.
    translation: Arc<Translation>,
    /// The lowering of its services, for the next reading.
    services_cache: reload::ServicesCache,
    /// The snapshot of the VHDS view derived from the default view, if a group has that view:
    /// its virtual hosts' encodings are reused for unchanged virtual hosts.
    vhds_snapshot: Option<Arc<Snapshot>>,
    /// Overall version of the default group's snapshot.
    version: String,
    applied_unix_ms: u64,
}

/// Why the latest reading is not served.
enum Problem {
    Read(String),
    Diagnostics(Vec<Diagnostic>),
    Snapshot(String),
}

struct Rejected {
    generation: u64,
    at_unix_ms: u64,
    problem: Problem,
}

impl Rejected {
    fn error_count(&self) -> usize {
        match &self.problem {
            Problem::Diagnostics(d) => d.iter().filter(|d| blocks_serving(d)).count(),
            Problem::Read(_) | Problem::Snapshot(_) => 1,
        }
    }

    /// One line: the first error and how many more.
    fn summary(&self) -> String {
        let first = match &self.problem {
            Problem::Read(e) | Problem::Snapshot(e) => e.clone(),
            Problem::Diagnostics(d) => d
                .iter()
                .find(|d| blocks_serving(d))
                .map(one_line)
                .unwrap_or_default(),
        };
        match self.error_count() {
            0 | 1 => first,
            n => format!("{first} (and {} more)", n - 1),
        }
    }
}

#[derive(Default)]
struct ConfigState {
    served: Option<Arc<Served>>,
    rejected: Option<Arc<Rejected>>,
}

/// One snapshot group: a node view and where its push stands.
struct Group {
    view: NodeView,
    /// The snapshot the group should end up with.
    target: Arc<Snapshot>,
    /// What the cache holds for the group now.
    current: Arc<Snapshot>,
    set_at: Instant,
    set_at_unix_ms: u64,
    /// Make-before-break phases still to push, in order; the last is `target`.
    pending: VecDeque<(&'static str, Arc<Snapshot>)>,
    phase: &'static str,
}

/// A NACK as shown on `/debug/errors`.
#[derive(Debug, Clone, serde::Serialize)]
struct NackRecord {
    at_unix_ms: u64,
    node_id: String,
    type_url: String,
    version: String,
    resource_names: Vec<String>,
    message: String,
    sources: Vec<SourceRef>,
}

const MAX_NACKS: usize = 20;

struct App {
    options: Options,
    phase_timeout: Duration,
    cache: Arc<SnapshotCache>,
    registry: Arc<ProxyRegistry>,
    metrics: Metrics,
    state: ArcSwap<ConfigState>,
    groups: Mutex<BTreeMap<String, Group>>,
    nacks: Mutex<VecDeque<NackRecord>>,
    /// With `--kubernetes`: set once every watcher finished its first list.
    kube_synced: Option<Arc<std::sync::atomic::AtomicBool>>,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `error[CODE] file:line:col: ...` with the hint on the same line.
fn one_line(d: &Diagnostic) -> String {
    d.to_string().replace("\n  hint: ", " (hint: ") + if d.hint.is_some() { ")" } else { "" }
}

fn log_diagnostic(d: &Diagnostic) {
    let line = one_line(d);
    match d.severity {
        Severity::Error if blocks_serving(d) => tracing::error!("{line}"),
        Severity::Error | Severity::Warning => tracing::warn!("{line}"),
        Severity::Info => tracing::debug!("{line}"),
    }
}

/// Overall version of a snapshot: a hash of its per-type versions.
fn snapshot_version(s: &Snapshot) -> String {
    let versions = s.versions();
    resource::set_version(versions.iter().map(|(t, v)| (t.as_str(), v.as_str())))
}

impl App {
    fn lock_groups(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Group>> {
        // A poisoned lock means a panic elsewhere; the map itself is still consistent.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_nacks(&self) -> std::sync::MutexGuard<'_, VecDeque<NackRecord>> {
        self.nacks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reject(&self, generation: u64, problem: Problem) {
        let rejected = Rejected {
            generation,
            at_unix_ms: now_unix_ms(),
            problem,
        };
        let served = self.state.load().served.clone();
        match &served {
            Some(s) => tracing::error!(
                generation,
                serving = s.generation,
                version = %s.version,
                "config rejected: {}; still serving the last good config",
                rejected.summary()
            ),
            None => tracing::error!(
                generation,
                "config rejected: {}; nothing is served until the config is fixed",
                rejected.summary()
            ),
        }
        self.metrics.set_config_errors(rejected.error_count());
        self.metrics.reload(ReloadResult::Rejected);
        self.state.store(Arc::new(ConfigState {
            served,
            rejected: Some(Arc::new(rejected)),
        }));
    }

    /// Translate and serve a reading if it is good. Returns whether any group's snapshot
    /// changed.
    fn apply_load(&self, load: &ConfigLoad) -> bool {
        let _span = tracing::debug_span!("reload", generation = load.generation).entered();
        let started = Instant::now();
        let files = match &load.result {
            Ok(files) => files,
            Err(e) => {
                self.reject(load.generation, Problem::Read(e.to_string()));
                return false;
            }
        };
        let mut timings = reload::Timings::default();
        let served_before = self.state.load().served.clone();
        let (parsed, parse_cache) = {
            let empty = reload::ParseCache::default();
            let cache = served_before.as_ref().map_or(&empty, |s| &s.parse_cache);
            let (parsed, next, n) = reload::timed(&mut timings.parse, || cache.parse(files));
            timings.files_parsed = n;
            (Arc::new(parsed), next)
        };
        // Incremental: the services' lowering, the protos of unchanged model elements and
        // their encodings come from the served config when they are the same (see reload).
        let (translation, built, services_cache, services_reused) = reload::translate_incremental(
            &parsed,
            parse_cache.parts(files),
            &self.options,
            served_before
                .as_ref()
                .map(|s| (&s.services_cache, &*s.translation)),
            &mut timings,
        );
        timings.services_reused = services_reused;
        for d in &translation.diagnostics {
            log_diagnostic(d);
        }
        if translation.diagnostics.iter().any(blocks_serving) {
            self.reject(
                load.generation,
                Problem::Diagnostics(translation.diagnostics.clone()),
            );
            return false;
        }
        let default_snapshot = match reload::timed(&mut timings.encode, || {
            let previous = served_before.as_ref().map(|s| (&built, &*s.snapshot));
            reload::snapshot_reusing(&translation.resources, previous)
        }) {
            Ok(s) => s,
            Err(e) => {
                self.reject(load.generation, Problem::Snapshot(e.to_string()));
                return false;
            }
        };
        let problems = reload::timed(&mut timings.check, || {
            let state = self.state.load();
            match state.served.as_ref() {
                // Same references as the served snapshot: its problems were already logged.
                Some(s) if reload::same_references(&s.snapshot, &default_snapshot) => Vec::new(),
                _ => default_snapshot.consistent().problems(),
            }
        });
        for problem in problems {
            tracing::warn!("{problem}");
        }
        let version = snapshot_version(&default_snapshot);
        let previous_version = self.state.load().served.as_ref().map(|s| s.version.clone());

        // Every other group, translated from the same parse.
        let snapshot = Arc::new(default_snapshot.clone());
        let mut changed = reload::timed(&mut timings.set, || {
            self.set_target(DEFAULT_GROUP, NodeView::default(), default_snapshot)
        });
        let others: Vec<(String, NodeView)> = self
            .lock_groups()
            .iter()
            .filter(|(name, _)| name.as_str() != DEFAULT_GROUP)
            .map(|(name, g)| (name.clone(), g.view.clone()))
            .collect();
        timings.other_groups = others.len();
        // A VHDS view whose options are the default view's but for `vhds`: derived from the
        // default translation and snapshot instead of translating again, once for all
        // groups with that view.
        let derived_vhds = |view: &NodeView| {
            let options = view.options(&self.options);
            let plain = Options {
                vhds: false,
                ..options.clone()
            };
            (options.vhds && plain == self.options).then_some(options)
        };
        let vhds_snapshot = reload::timed(&mut timings.views, || {
            let options = others.iter().find_map(|(_, view)| derived_vhds(view))?;
            let previous = served_before.as_ref().and_then(|s| {
                s.vhds_snapshot
                    .as_ref()
                    .map(|v| (&*s.translation, v.as_ref()))
            });
            match reload::vhds_snapshot(&translation, &snapshot, &options, previous) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::error!("cannot build the snapshot for the VHDS node view: {e}; its groups keep their previous config");
                    None
                }
            }
        });
        // Each other view is a whole translation: on as many cores as there are.
        let snapshots = reload::timed(&mut timings.views, || {
            reload::in_parallel(&others, |(_, view)| {
                if derived_vhds(view).is_some() {
                    vhds_snapshot.as_ref().map(|s| (**s).clone())
                } else {
                    self.translate_view(&parsed, view)
                }
            })
        });
        for ((name, view), snapshot) in others.into_iter().zip(snapshots) {
            if let Some(snapshot) = snapshot {
                changed |=
                    reload::timed(&mut timings.set, || self.set_target(&name, view, snapshot));
            }
        }

        let result = if previous_version.as_deref() == Some(version.as_str()) {
            ReloadResult::Unchanged
        } else {
            ReloadResult::Applied
        };
        tracing::info!(
            generation = load.generation,
            %version,
            files = files.len(),
            result = result.as_str(),
            "config applied"
        );
        self.metrics.reload(result);
        self.metrics.set_config_errors(0);
        self.metrics.set_snapshot_version(&version);
        self.state.store(Arc::new(ConfigState {
            served: Some(Arc::new(Served {
                generation: load.generation,
                parsed,
                parse_cache,
                snapshot,
                translation: Arc::new(translation),
                services_cache,
                vhds_snapshot,
                version,
                applied_unix_ms: now_unix_ms(),
            })),
            rejected: None,
        }));
        timings.log(load.generation, started.elapsed());
        changed
    }

    /// Translate the served config for a non-default view.
    fn translate_view(&self, parsed: &Parsed, view: &NodeView) -> Option<Snapshot> {
        let translation = reload::translate_timed(
            parsed,
            &view.options(&self.options),
            &mut reload::Timings::default(),
        );
        let group = view.group();
        for d in translation.diagnostics.iter().filter(|d| blocks_serving(d)) {
            tracing::warn!(%group, "{}", one_line(d));
        }
        self.view_snapshot(view, &translation.resources)
    }

    /// The snapshot of a non-default view's resources.
    fn view_snapshot(
        &self,
        view: &NodeView,
        resources: &shadowplane_translator::Resources,
    ) -> Option<Snapshot> {
        let group = view.group();
        match Snapshot::from_resources(resources) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(%group, "cannot build the snapshot for this node view: {e}; the group keeps its previous config");
                None
            }
        }
    }

    /// A proxy with a new view connected: translate the served config for it.
    fn add_group(&self, name: &str, view: NodeView) {
        tracing::info!(group = %name, "new node view");
        let served = self.state.load().served.clone();
        let Some(served) = served else {
            // Nothing served yet: remember the view; the first good config covers it.
            self.lock_groups()
                .entry(name.to_string())
                .or_insert_with(|| {
                    let empty = Arc::new(Snapshot::empty());
                    Group {
                        view,
                        target: empty.clone(),
                        current: empty,
                        set_at: Instant::now(),
                        set_at_unix_ms: now_unix_ms(),
                        pending: VecDeque::new(),
                        phase: "waiting for a good config",
                    }
                });
            return;
        };
        if let Some(snapshot) = self.translate_view(&served.parsed, &view) {
            self.set_target(name, view, snapshot);
        }
    }

    /// Make `snapshot` the target of `group`, pushing it in make-before-break phases when
    /// proxies already have an older config. Returns whether anything is pushed.
    fn set_target(&self, name: &str, view: NodeView, snapshot: Snapshot) -> bool {
        let target = Arc::new(snapshot);
        let mut groups = self.lock_groups();
        let first = !groups.contains_key(name)
            || groups
                .get(name)
                .is_some_and(|g| g.current.is_empty() && self.cache.snapshot(name).is_none());
        if first {
            self.cache.set_snapshot(name, (*target).clone());
            groups.insert(
                name.to_string(),
                Group {
                    view,
                    target: target.clone(),
                    current: target,
                    set_at: Instant::now(),
                    set_at_unix_ms: now_unix_ms(),
                    pending: VecDeque::new(),
                    phase: "final",
                },
            );
            return true;
        }
        let Some(group) = groups.get_mut(name) else {
            return false;
        };
        if *group.target == *target && group.pending.is_empty() {
            return false;
        }
        group.view = view;
        group.target = target.clone();
        group.pending = phases(&group.current, &target);
        let Some((phase, first)) = group.pending.pop_front() else {
            // Already there (a pending transition was reverted).
            return false;
        };
        if phase != "final" {
            tracing::debug!(group = %name, phase, "make-before-break: pushing in phases");
        }
        group.phase = phase;
        group.current = first.clone();
        group.set_at = Instant::now();
        group.set_at_unix_ms = now_unix_ms();
        self.cache.set_snapshot(name, (*first).clone());
        true
    }

    fn has_pending_phases(&self) -> bool {
        self.lock_groups().values().any(|g| !g.pending.is_empty())
    }

    /// Push the next phase of every group whose proxies acknowledged the current one (or
    /// that waited `phase_timeout`). Reads the registry's per-group counts only.
    fn advance_phases(&self) {
        let mut groups = self.lock_groups();
        for (name, group) in groups.iter_mut() {
            if group.pending.is_empty() {
                continue;
            }
            let acked = group_synced(&self.registry, name, &group.current);
            if !acked && group.set_at.elapsed() < self.phase_timeout {
                continue;
            }
            if !acked {
                tracing::warn!(group = %name, phase = group.phase, timeout = ?self.phase_timeout, "proxies did not acknowledge this phase in time; pushing the next one anyway");
            }
            if let Some((phase, next)) = group.pending.pop_front() {
                tracing::debug!(group = %name, phase, "make-before-break: next phase");
                group.phase = phase;
                group.current = next.clone();
                group.set_at = Instant::now();
                group.set_at_unix_ms = now_unix_ms();
                // Before the swap, so that every push it causes is measured against it.
                self.registry.mark_swap(name, group.set_at_unix_ms);
                self.cache.set_snapshot(name, (*next).clone());
            }
        }
    }

    fn record_nack(&self, record: NackRecord) {
        let mut nacks = self.lock_nacks();
        nacks.push_front(record);
        nacks.truncate(MAX_NACKS);
    }
}

/// Whether every stream of `group` is in sync with `snapshot` (acknowledged it, or needed
/// nothing from it) for each type it was sent: the registry's per-group counts of
/// `synced_version`, see [`type_synced`] for one stream.
fn group_synced(registry: &ProxyRegistry, group: &str, snapshot: &Snapshot) -> bool {
    registry.group_in_sync(group, |type_url| snapshot.version(type_url))
}

/// A type that was never sent needs nothing; otherwise the proxy must be in sync with the
/// snapshot's version of it (the registry's `synced_version`: `version_acked` can lag when a
/// change does not touch what the proxy subscribes to).
fn type_synced(t: &crate::xds::TypeStatus, snapshot: &Snapshot) -> bool {
    t.version_sent.is_none() || t.synced_version.as_deref() == Some(snapshot.version(&t.type_url))
}

/// The snapshots to push, in order, to go from `current` to `target` without dropping
/// traffic: new clusters before the routes that use them, old clusters removed only after
/// the routes stopped using them.
fn phases(current: &Snapshot, target: &Arc<Snapshot>) -> VecDeque<(&'static str, Arc<Snapshot>)> {
    let mut out: VecDeque<(&'static str, Arc<Snapshot>)> = VecDeque::new();
    if current == &**target {
        return out;
    }
    let names = |s: &Snapshot| {
        s.resources(CLUSTER)
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    let (old, new) = (names(current), names(target));
    // With VHDS (node metadata `VHDS`), a route change is a VirtualHost change.
    let routing_changes = current.version(LISTENER) != target.version(LISTENER)
        || current.version(ROUTE) != target.version(ROUTE)
        || current.version(VIRTUAL_HOST) != target.version(VIRTUAL_HOST);
    let adds = new.difference(&old).next().is_some();
    let removes = old.difference(&new).next().is_some();
    if routing_changes && adds {
        // Phase 1: old and new clusters and endpoints, old listeners and routes.
        if let Some(s) = mixed(current, target, &[LISTENER, ROUTE, VIRTUAL_HOST], current) {
            out.push_back(("clusters added", Arc::new(s)));
        }
    }
    if routing_changes && removes {
        // Phase 2: old and new clusters and endpoints, new listeners and routes.
        if let Some(s) = mixed(current, target, &[LISTENER, ROUTE, VIRTUAL_HOST], target) {
            out.push_back(("routes switched", Arc::new(s)));
        }
    }
    out.push_back(("final", target.clone()));
    out
}

/// Clusters and endpoints: the union of `current` and `target` (target wins on a name);
/// `routing_types` from `routing_from`; every other type from `target`.
fn mixed(
    current: &Snapshot,
    target: &Snapshot,
    routing_types: &[&str],
    routing_from: &Snapshot,
) -> Option<Snapshot> {
    let mut types: BTreeSet<&str> = current.type_urls().collect();
    types.extend(target.type_urls());
    let mut items = Vec::new();
    for type_url in types {
        if type_url == CLUSTER || type_url == ENDPOINT {
            let mut merged = current.resources(type_url).clone();
            merged.extend(
                target
                    .resources(type_url)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            items.extend(merged.into_values().map(|r| (*r).clone()));
        } else if routing_types.contains(&type_url) {
            items.extend(
                routing_from
                    .resources(type_url)
                    .values()
                    .map(|r| (**r).clone()),
            );
        } else {
            items.extend(target.resources(type_url).values().map(|r| (**r).clone()));
        }
    }
    match Snapshot::new(items) {
        Ok(s) => Some(s),
        Err(e) => {
            // Names come from snapshots that were valid on their own: cannot happen.
            tracing::error!(
                "cannot build a make-before-break phase: {e}; pushing the final config at once"
            );
            None
        }
    }
}

// ===== observer: NACKs, push latency, convergence =====

/// A swap that not every proxy acknowledged after this long is not measured.
const CONVERGENCE_GIVE_UP: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Observer {
    /// Generation being converged and when it was applied.
    converging: Option<(u64, Instant)>,
}

impl Observer {
    /// Tell the registry when each group's snapshot was last swapped, so it can report the
    /// first push after it (`set_target` swaps before the loop sees it; the registry also
    /// counts pushes that went out in between).
    fn mark_swaps(&self, app: &App) {
        let swaps: Vec<(String, u64)> = app
            .lock_groups()
            .iter()
            .map(|(n, g)| (n.clone(), g.set_at_unix_ms))
            .collect();
        for (name, at) in swaps {
            app.registry.mark_swap(&name, at);
        }
    }

    /// Push delays and NACKs the registry reported, and whether the config being converged
    /// is now acknowledged by every proxy.
    fn observe(&mut self, app: &App) {
        let events = app.registry.take_events();
        for (type_url, seconds) in &events.push_delays {
            app.metrics.observe_push(type_url, *seconds);
        }
        for e in &events.nacks {
            app.on_nack(&e.node_id, &e.type_url, &e.nack);
        }

        if let Some((generation, since)) = self.converging {
            if since.elapsed() > CONVERGENCE_GIVE_UP {
                tracing::debug!(generation, "config did not converge within {CONVERGENCE_GIVE_UP:?} (a proxy rejected it or never acknowledged it); not measured");
                self.converging = None;
                return;
            }
            if app.has_pending_phases() {
                return;
            }
            let with_streams = app.registry.groups_with_streams();
            let groups = app.lock_groups();
            let all = with_streams.iter().all(|name| match groups.get(name) {
                Some(g) => group_synced(&app.registry, name, &g.current),
                None => true,
            });
            drop(groups);
            if all {
                let proxies = app.registry.len();
                if proxies > 0 {
                    let elapsed = since.elapsed();
                    tracing::debug!(
                        generation,
                        ?elapsed,
                        proxies,
                        "config converged: every proxy acknowledged it"
                    );
                    app.metrics.observe_convergence(elapsed.as_secs_f64());
                }
                self.converging = None;
            }
        }
    }
}

impl App {
    fn on_nack(&self, node_id: &str, type_url: &str, nack: &crate::xds::NackStatus) {
        let served = self.state.load().served.clone();
        let sources = match &served {
            Some(s) => attribution::attribute(
                type_url,
                &nack
                    .resource_names
                    .iter()
                    .map(|n| n.trim_start_matches('-').to_string())
                    .collect::<Vec<_>>(),
                &nack.message,
                &s.translation.model,
                &s.parsed,
                &self.options.domain_suffix,
            ),
            None => Vec::new(),
        };
        let source_list = if sources.is_empty() {
            "unknown".to_string()
        } else {
            sources
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        tracing::warn!(
            node = %node_id,
            type_url = resource::short_type(type_url),
            version = %nack.version,
            names = ?nack.resource_names,
            source = %source_list,
            "proxy rejected config: {}",
            nack.message
        );
        self.record_nack(NackRecord {
            at_unix_ms: nack.at_unix_ms,
            node_id: node_id.to_string(),
            type_url: type_url.to_string(),
            version: nack.version.clone(),
            resource_names: nack.resource_names.clone(),
            message: nack.message.clone(),
            sources,
        });
    }
}

// ===== admin pages =====

impl App {
    /// The group (and its view) a `/debug/config` query asks for: `node=<id>` or
    /// `group=<name>`; `None` for no query (the default view).
    fn selected_group(&self, query: Option<&str>) -> Result<Option<(String, NodeView)>, String> {
        let Some(query) = query.filter(|q| !q.is_empty()) else {
            return Ok(None);
        };
        let mut group = None;
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "node" => {
                    let streams = self.registry.node(&value);
                    let Some(stream) = streams.first() else {
                        return Err(format!(
                            "no connected proxy with node id {value:?}; see /debug/proxies"
                        ));
                    };
                    group = Some(stream.group.clone());
                }
                "group" => group = Some(value),
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; use ?node=<node id> or ?group=<group>"
                    ))
                }
            }
        }
        let Some(name) = group else {
            return Ok(None);
        };
        let groups = self.lock_groups();
        match groups.get(&name) {
            Some(g) => Ok(Some((name, g.view.clone()))),
            None => Err(format!(
                "no node view {name:?}; known: {}",
                groups.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// Decode `%XX` escapes and `+` in a query value (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl AdminView for App {
    fn readiness(&self) -> Result<(), String> {
        let state = self.state.load();
        if state.served.is_some() {
            return Ok(());
        }
        if let Some(synced) = &self.kube_synced {
            if !synced.load(std::sync::atomic::Ordering::Acquire) {
                return Err("waiting for the first complete list of the Kubernetes objects (API server errors are in the logs)".to_string());
            }
        }
        Err(match &state.rejected {
            Some(r) => format!("no good config yet: {}", r.summary()),
            None => "no config read yet".to_string(),
        })
    }

    fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    fn proxies_json(&self) -> serde_json::Value {
        let proxies = self.registry.snapshot();
        let groups = self.lock_groups();
        let list: Vec<serde_json::Value> = proxies
            .iter()
            .map(|p| {
                let mut v =
                    serde_json::to_value(p).unwrap_or_else(|e| json!({"@error": e.to_string()}));
                // Istio's proxy-status words per type: SYNCED, NOT SENT, STALE, NACKED.
                if let (Some(group), Some(types)) = (
                    groups.get(&p.group),
                    v.get_mut("types").and_then(|t| t.as_array_mut()),
                ) {
                    for (t, status) in types.iter_mut().zip(&p.types) {
                        let current = group.current.version(&status.type_url);
                        let sync = if status
                            .last_nack
                            .as_ref()
                            .is_some_and(|n| Some(&n.version) == status.version_sent.as_ref())
                        {
                            "NACKED"
                        } else if status.version_sent.is_none() {
                            "NOT SENT"
                        } else if type_synced(status, &group.current) {
                            "SYNCED"
                        } else {
                            "STALE"
                        };
                        if let Some(obj) = t.as_object_mut() {
                            obj.insert("sync".into(), json!(sync));
                            obj.insert("version_current".into(), json!(current));
                        }
                    }
                }
                v
            })
            .collect();
        json!({ "proxies": list })
    }

    fn config_json(&self, query: Option<&str>) -> Result<serde_json::Value, String> {
        let state = self.state.load();
        let selected = self.selected_group(query)?;
        let groups: serde_json::Map<String, serde_json::Value> = self
            .lock_groups()
            .iter()
            .map(|(name, g)| {
                (
                    name.clone(),
                    json!({
                        "version": snapshot_version(&g.current),
                        "target_version": snapshot_version(&g.target),
                        "phase": g.phase,
                        "versions": g.current.versions(),
                    }),
                )
            })
            .collect();
        let rejected = state.rejected.as_ref().map(|r| {
            let mut v = json!({
                "generation": r.generation,
                "at_unix_ms": r.at_unix_ms,
                "errors": r.error_count(),
            });
            match &r.problem {
                Problem::Read(e) | Problem::Snapshot(e) => v["error"] = json!(e),
                Problem::Diagnostics(d) => v["diagnostics"] = print::diagnostics_to_json(d),
            }
            v
        });
        Ok(match &state.served {
            Some(s) => {
                // The default view is kept; another view is translated on demand.
                let other = selected
                    .as_ref()
                    .filter(|(name, _)| name != DEFAULT_GROUP)
                    .map(|(_, view)| {
                        shadowplane_translator::translate(&s.parsed, &view.options(&self.options))
                    });
                let translation = other.as_ref().unwrap_or(&s.translation);
                json!({
                    "status": if rejected.is_some() { "serving the last good config; the latest reading was rejected" } else { "serving the latest config" },
                    "generation": s.generation,
                    "version": s.version,
                    "applied_at_unix_ms": s.applied_unix_ms,
                    "group": selected.as_ref().map(|(name, _)| name.as_str()).unwrap_or(DEFAULT_GROUP),
                    "resources": print::resources_to_json(&translation.resources),
                    "diagnostics": print::diagnostics_to_json(&translation.diagnostics),
                    "rejected": rejected,
                    "groups": groups,
                })
            }
            None => json!({
                "status": "no good config yet",
                "resources": null,
                "rejected": rejected,
                "groups": groups,
            }),
        })
    }

    fn errors_text(&self) -> String {
        let state = self.state.load();
        let mut out = String::new();
        match (&state.rejected, &state.served) {
            (None, Some(s)) => {
                out.push_str(&format!(
                    "no config errors: serving generation {} (version {})\n",
                    s.generation, s.version
                ));
                // What is served anyway: references istiod also serves (IST0101), warnings.
                let notes: Vec<&Diagnostic> = s
                    .translation
                    .diagnostics
                    .iter()
                    .filter(|d| d.severity != Severity::Info)
                    .collect();
                if !notes.is_empty() {
                    out.push_str("\nserved with these diagnostics:\n");
                    for d in notes {
                        out.push_str(&format!("{d}\n"));
                    }
                }
            }
            (None, None) => out.push_str("no config read yet\n"),
            (Some(r), served) => {
                match served {
                    Some(s) => out.push_str(&format!(
                        "config rejected (reading {}, {} error(s)); still serving generation {} (version {})\n",
                        r.generation,
                        r.error_count(),
                        s.generation,
                        s.version
                    )),
                    None => out.push_str(&format!(
                        "config rejected (reading {}, {} error(s)); nothing served until it is fixed\n",
                        r.generation,
                        r.error_count()
                    )),
                }
                out.push('\n');
                match &r.problem {
                    Problem::Read(e) | Problem::Snapshot(e) => {
                        out.push_str(&format!("error: {e}\n"));
                    }
                    Problem::Diagnostics(diags) => {
                        let mut diags = diags.clone();
                        diag::sort(&mut diags);
                        for d in diags.iter().filter(|d| d.severity != Severity::Info) {
                            out.push_str(&format!("{d}\n"));
                        }
                    }
                }
            }
        }
        let nacks = self.lock_nacks();
        if nacks.is_empty() {
            out.push_str("\nno NACKs\n");
        } else {
            out.push_str("\nrecent NACKs (newest first):\n");
            for n in nacks.iter() {
                out.push_str(&format!(
                    "{} node {} rejected {} version {} {:?}: {}\n",
                    n.at_unix_ms,
                    n.node_id,
                    resource::short_type(&n.type_url),
                    n.version,
                    n.resource_names,
                    n.message
                ));
                for s in &n.sources {
                    out.push_str(&format!("  source: {s}\n"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(meta: &[(&str, &str)]) -> Node {
        Node {
            id: "n".into(),
            metadata: Some(Struct {
                fields: meta
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            Value {
                                kind: Some(Kind::StringValue(v.to_string())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn node_metadata_selects_namespace_and_bind_address() {
        let base = Options::default();
        assert_eq!(NodeView::of(&node(&[]), &base).group(), "default");
        let view = NodeView::of(
            &node(&[
                ("NAMESPACE", "challengeistio"),
                ("BIND_ADDRESS", "127.0.0.1"),
            ]),
            &base,
        );
        assert_eq!(view.group(), "namespace=challengeistio,bind=127.0.0.1");
        let options = view.options(&base);
        assert_eq!(options.proxy_namespace.as_deref(), Some("challengeistio"));
        assert_eq!(options.bind_address, "127.0.0.1");
        // Same as the server default: same group as everyone.
        assert_eq!(
            NodeView::of(&node(&[("BIND_ADDRESS", "0.0.0.0")]), &base).group(),
            "default"
        );
        // Garbage is ignored.
        assert_eq!(
            NodeView::of(
                &node(&[("NAMESPACE", "Not_A_NS"), ("BIND_ADDRESS", "localhost")]),
                &base
            )
            .group(),
            "default"
        );
    }

    #[test]
    fn vhds_metadata_is_honoured_on_delta_ads_streams_only() {
        use crate::xds::registry::Transport;
        let base = Options::default();
        let vhds = node(&[("VHDS", "true")]);
        let on = |transport| StreamInfo {
            transport,
            type_url: match transport {
                Transport::SotwAds | Transport::DeltaAds => None,
                Transport::Sotw | Transport::Delta => Some(crate::xds::resource::ROUTE),
            },
        };
        let view = NodeView::for_stream(&vhds, &on(Transport::DeltaAds), &base);
        assert_eq!(view.group(), "vhds");
        assert!(view.options(&base).vhds);
        for transport in [Transport::SotwAds, Transport::Sotw, Transport::Delta] {
            let view = NodeView::for_stream(&vhds, &on(transport), &base);
            assert!(!view.group().contains("vhds"), "{transport:?}");
            assert!(!view.options(&base).vhds, "{transport:?}");
        }
        let off = node(&[("VHDS", "false")]);
        let view = NodeView::for_stream(&off, &on(Transport::DeltaAds), &base);
        assert_eq!(view.group(), "default");
    }

    #[test]
    fn per_type_streams_get_a_grpc_config_source_to_the_xds_cluster() {
        use crate::xds::registry::Transport;
        let base = Options::default();
        let ns = node(&[("NAMESPACE", "challengeistio")]);
        let on = |transport| StreamInfo {
            transport,
            type_url: match transport {
                Transport::SotwAds | Transport::DeltaAds => None,
                Transport::Sotw | Transport::Delta => Some(crate::xds::resource::LISTENER),
            },
        };
        for transport in [Transport::SotwAds, Transport::DeltaAds] {
            let view = NodeView::for_stream(&ns, &on(transport), &base);
            assert_eq!(view.group(), "namespace=challengeistio");
            assert_eq!(view.options(&base).config_source, ConfigSourceKind::Ads);
        }
        let view = NodeView::for_stream(&ns, &on(Transport::Sotw), &base);
        assert_eq!(
            view.group(),
            "namespace=challengeistio,config_source=grpc:xds_cluster"
        );
        assert_eq!(
            view.options(&base).config_source,
            ConfigSourceKind::Grpc {
                cluster_name: "xds_cluster".into(),
                delta: false
            }
        );
        // A delta per-type stream: DELTA_GRPC; XDS_CLUSTER names another bootstrap cluster.
        let named = node(&[("XDS_CLUSTER", "control-plane")]);
        let view = NodeView::for_stream(&named, &on(Transport::Delta), &base);
        assert_eq!(view.group(), "config_source=delta_grpc:control-plane");
        assert_eq!(
            view.options(&base).config_source,
            ConfigSourceKind::Grpc {
                cluster_name: "control-plane".into(),
                delta: true
            }
        );
        // XDS_CLUSTER means nothing on ADS.
        assert_eq!(
            NodeView::for_stream(&named, &on(Transport::DeltaAds), &base).group(),
            "default"
        );
        // A server whose default is gRPC gives ADS streams `ads`.
        let grpc_base = Options {
            config_source: ConfigSourceKind::Grpc {
                cluster_name: "xds_cluster".into(),
                delta: false,
            },
            ..Options::default()
        };
        let view = NodeView::for_stream(&ns, &on(Transport::SotwAds), &grpc_base);
        assert_eq!(view.group(), "namespace=challengeistio,config_source=ads");
        assert_eq!(
            view.options(&grpc_base).config_source,
            ConfigSourceKind::Ads
        );
        assert_eq!(
            NodeView::for_stream(&ns, &on(Transport::Sotw), &grpc_base).group(),
            "namespace=challengeistio"
        );
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            percent_decode("sidecar~10.0.0.1~a.b%7Cc"),
            "sidecar~10.0.0.1~a.b|c"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn unknown_subsets_do_not_block_but_other_errors_do() {
        let undefined = Diagnostic::error(Code::ReferencedResourceNotFound, "subset v3 not found");
        let typo = Diagnostic::error(Code::UnknownField, "unknown field subest");
        let warning = Diagnostic::warning(Code::DeprecatedField, "mirrorPercent");
        assert!(!blocks_serving(&undefined));
        assert!(blocks_serving(&typo));
        assert!(!blocks_serving(&warning));
    }

    fn cluster(name: &str, body: &str) -> crate::xds::EncodedResource {
        crate::xds::EncodedResource::new(CLUSTER, name, body.as_bytes().to_vec())
    }

    fn route(name: &str, body: &str) -> crate::xds::EncodedResource {
        crate::xds::EncodedResource::new(ROUTE, name, body.as_bytes().to_vec())
    }

    fn names(s: &Snapshot, type_url: &str) -> Vec<String> {
        s.resources(type_url).keys().cloned().collect()
    }

    #[test]
    fn retargeting_a_route_adds_clusters_first_and_removes_them_last() {
        let current = Snapshot::new([cluster("a", "a"), route("80", "to a")]).expect("snapshot");
        let target =
            Arc::new(Snapshot::new([cluster("b", "b"), route("80", "to b")]).expect("snapshot"));
        let phases = phases(&current, &target);
        let labels: Vec<&str> = phases.iter().map(|(l, _)| *l).collect();
        assert_eq!(labels, ["clusters added", "routes switched", "final"]);
        let (_, one) = &phases[0];
        assert_eq!(names(one, CLUSTER), ["a", "b"]);
        assert_eq!(one.get(ROUTE, "80"), current.get(ROUTE, "80"));
        let (_, two) = &phases[1];
        assert_eq!(names(two, CLUSTER), ["a", "b"]);
        assert_eq!(two.get(ROUTE, "80"), target.get(ROUTE, "80"));
        assert_eq!(*phases[2].1, *target);
    }

    #[test]
    fn retargeting_a_vhds_virtual_host_adds_clusters_first_and_removes_them_last() {
        let vhost = |name: &str, body: &str| {
            crate::xds::EncodedResource::new(VIRTUAL_HOST, name, body.as_bytes().to_vec())
        };
        // The route configuration (vhds, no vhosts) is unchanged; only the vhost moves.
        let current = Snapshot::new([
            cluster("a", "a"),
            route("80", "vhds"),
            vhost("80/h:80", "to a"),
        ])
        .expect("snapshot");
        let target = Arc::new(
            Snapshot::new([
                cluster("b", "b"),
                route("80", "vhds"),
                vhost("80/h:80", "to b"),
            ])
            .expect("snapshot"),
        );
        let phases = phases(&current, &target);
        let labels: Vec<&str> = phases.iter().map(|(l, _)| *l).collect();
        assert_eq!(labels, ["clusters added", "routes switched", "final"]);
        let (_, one) = &phases[0];
        assert_eq!(names(one, CLUSTER), ["a", "b"]);
        assert_eq!(
            one.get(VIRTUAL_HOST, "80/h:80"),
            current.get(VIRTUAL_HOST, "80/h:80")
        );
        let (_, two) = &phases[1];
        assert_eq!(names(two, CLUSTER), ["a", "b"]);
        assert_eq!(
            two.get(VIRTUAL_HOST, "80/h:80"),
            target.get(VIRTUAL_HOST, "80/h:80")
        );
    }

    #[test]
    fn changes_that_keep_the_cluster_set_are_one_push() {
        let current = Snapshot::new([cluster("a", "a"), route("80", "to a")]).expect("snapshot");
        let target = Arc::new(
            Snapshot::new([cluster("a", "a2"), route("80", "to a, new timeout")])
                .expect("snapshot"),
        );
        let labels: Vec<&str> = phases(&current, &target).iter().map(|(l, _)| *l).collect();
        assert_eq!(labels, ["final"]);
        // Adding a cluster nobody routes to yet: one push too.
        let target = Arc::new(
            Snapshot::new([cluster("a", "a"), cluster("b", "b"), route("80", "to a")])
                .expect("snapshot"),
        );
        let labels: Vec<&str> = phases(&current, &target).iter().map(|(l, _)| *l).collect();
        assert_eq!(labels, ["final"]);
    }
}
