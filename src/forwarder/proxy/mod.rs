//! The forwarder's data plane: listeners, request handling, upstream pools.
//!
//! A [`Forwarder`] serves the [`Table`] last given to [`Forwarder::apply`]. The table and the
//! run-time state derived from it (upstream clusters with their pools, per-route mirror
//! statistics) sit together in one [`Active`] behind an `ArcSwap`: a request loads it once and
//! finishes on it, so a swap never drops or changes a request in flight. Listeners are
//! reconciled on each apply: new ones are bound, removed ones stop accepting and drain, and a
//! listener whose address did not change keeps its socket.
//!
//! Modules: [`body`] (request tee, response bookkeeping), [`headers`], [`handler`] (one
//! request: match, CORS, fault, redirect / direct response / forward with mirrors, retries and
//! timeouts), [`reply`] (local replies), [`upstream`] (clusters, balancing, pools).
//!
//! Wiring (what `shadowplane forward` does):
//!
//! ```text
//! let rt = proxy::runtime(concurrency)?;                 // --concurrency N worker threads
//! rt.block_on(async {
//!     let fwd = Arc::new(Forwarder::new(ForwarderOptions::default()));
//!     let admin = TcpListener::bind(admin_listen).await?;   // --admin-listen
//!     tokio::spawn(admin::serve(fwd.clone(), admin, shutdown.clone(), drain));
//!     let sink = fwd.table_sink();                        // on_table for xds_client / local
//!     xds_client::run(cfg, move |t| sink.send(t), shutdown).await?;
//!     fwd.shutdown().await;                               // stop listeners, drain
//! })
//! ```

pub mod body;
pub mod handler;
pub mod headers;
pub mod reply;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use self::upstream::ClusterRt;
use super::metrics::{DownstreamStats, MirrorClusterStats, PairStats, Stats};
use super::mirror::{MirrorBudget, MirrorOptions, Recent};
use super::table::{Action, ListenerKey, Table};

/// Data-plane settings that are not in xDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwarderOptions {
    pub mirror: MirrorOptions,
    /// How long a removed listener's open connections may take to finish.
    pub drain_timeout: Duration,
}

impl Default for ForwarderOptions {
    fn default() -> ForwarderOptions {
        ForwarderOptions {
            mirror: MirrorOptions::default(),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// The tokio runtime for `forward --concurrency N`: N worker threads (a current-thread
/// runtime for 1, which avoids the work-stealing overhead on a single core).
pub fn runtime(concurrency: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(concurrency)
            .thread_name("shadowplane-worker")
            .enable_all()
            .build()
    }
}

/// A listener could not be bound; the others (and the table) were applied.
#[derive(Debug, thiserror::Error)]
#[error(
    "listener {listener} could not bind {address}: {source}; free the port or change the listener"
)]
pub struct BindError {
    pub listener: ListenerKey,
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The mirror side of one mirror policy of one route, resolved when the table is applied.
#[derive(Debug)]
pub(crate) struct MirrorRt {
    /// The shadow cluster (`None`: not in the table; the mirror is counted as an error).
    pub cluster: Option<Arc<ClusterRt>>,
    pub stats: Arc<MirrorClusterStats>,
    pub pair: Arc<PairStats>,
}

/// Per-route run-time data: one [`MirrorRt`] per mirror policy, in order.
#[derive(Debug)]
pub(crate) struct RouteRt {
    pub mirrors: Vec<MirrorRt>,
}

/// A table with everything derived from it for serving.
#[derive(Debug)]
pub struct Active {
    pub table: Arc<Table>,
    pub(crate) clusters: HashMap<String, Arc<ClusterRt>>,
    /// Keyed by the route's address in `table` (see [`handler::route_key`]).
    pub(crate) routes: HashMap<usize, RouteRt>,
    pub(crate) downstream: HashMap<ListenerKey, Arc<DownstreamStats>>,
}

impl Active {
    fn empty() -> Active {
        Active {
            table: Arc::new(Table::default()),
            clusters: HashMap::new(),
            routes: HashMap::new(),
            downstream: HashMap::new(),
        }
    }
}

/// What request handling shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub active: ArcSwap<Active>,
    pub stats: Arc<Stats>,
    pub options: ForwarderOptions,
    pub recent: Arc<Recent>,
    /// Mirror budgets by shadow cluster name (kept across swaps so the bound holds).
    budgets: Mutex<BTreeMap<String, Arc<MirrorBudget>>>,
}

/// What a listener's requests need to know about it.
#[derive(Debug)]
pub(crate) struct ListenerCtx {
    pub key: ListenerKey,
}

#[derive(Debug)]
struct Running {
    address: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    closed: Option<oneshot::Receiver<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Hands tables from a synchronous callback (the `on_table` of the xDS client or of the local
/// watcher) to a task that applies them one after the other; when several arrive while one is
/// being applied, only the newest is applied next.
#[derive(Debug, Clone)]
pub struct TableSink {
    tx: Arc<watch::Sender<Option<Arc<Table>>>>,
}

impl TableSink {
    pub fn send(&self, table: Arc<Table>) {
        self.tx.send_replace(Some(table));
    }
}

/// The data plane.
#[derive(Debug)]
pub struct Forwarder {
    shared: Arc<Shared>,
    listeners: tokio::sync::Mutex<BTreeMap<ListenerKey, Running>>,
    ready: AtomicBool,
}

impl Forwarder {
    /// A forwarder serving nothing until the first [`Forwarder::apply`].
    pub fn new(options: ForwarderOptions) -> Forwarder {
        Forwarder {
            shared: Arc::new(Shared {
                active: ArcSwap::from_pointee(Active::empty()),
                stats: Arc::new(Stats::new()),
                recent: Arc::new(Recent::new(options.mirror.recent)),
                options,
                budgets: Mutex::new(BTreeMap::new()),
            }),
            listeners: tokio::sync::Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
        }
    }

    pub fn options(&self) -> &ForwarderOptions {
        &self.shared.options
    }

    /// The table being served.
    pub fn table(&self) -> Arc<Table> {
        self.shared.active.load().table.clone()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    /// `true` once a table was applied and all its listeners are bound.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The address each running listener is bound to (the port the OS picked for port 0).
    pub async fn listener_addrs(&self) -> BTreeMap<ListenerKey, SocketAddr> {
        self.listeners
            .lock()
            .await
            .iter()
            .map(|(k, r)| (k.clone(), r.local))
            .collect()
    }

    /// Serve `table` from now on: bind new listeners, swap the table in (lock-free for
    /// requests; those in flight finish on the table they started with), then stop removed
    /// listeners (they drain in the background). Listeners that failed to bind are reported;
    /// everything else is applied.
    pub async fn apply(&self, table: Arc<Table>) -> Result<(), Vec<BindError>> {
        let mut running = self.listeners.lock().await;
        let active = self.build_active(table.clone());

        // Listeners whose address changed or that are gone: stop accepting first, so a
        // re-bind of the same port can succeed.
        let mut stopping = Vec::new();
        let keys: Vec<ListenerKey> = running.keys().cloned().collect();
        for key in keys {
            let keep = table.listeners.get(&key).is_some_and(|l| {
                running
                    .get(&key)
                    .is_some_and(|r| r.address == l.socket_addr)
            });
            if !keep {
                if let Some(r) = running.remove(&key) {
                    stopping.push(r);
                }
            }
        }
        for r in &mut stopping {
            let _ = r.stop.send(true);
            if let Some(closed) = r.closed.take() {
                let _ = closed.await;
            }
        }

        // Bind what is new.
        let mut errors = Vec::new();
        let mut bound = Vec::new();
        for (key, l) in &table.listeners {
            if running.contains_key(key) {
                continue;
            }
            match TcpListener::bind(l.socket_addr).await {
                Ok(sock) => bound.push((key.clone(), l.socket_addr, sock)),
                Err(source) => errors.push(BindError {
                    listener: key.clone(),
                    address: l.socket_addr,
                    source,
                }),
            }
        }

        self.shared.active.store(Arc::new(active));
        self.shared
            .stats
            .table_swaps
            .fetch_add(1, Ordering::Relaxed);

        for (key, address, sock) in bound {
            let local = sock.local_addr().unwrap_or(address);
            let (stop, stop_rx) = watch::channel(false);
            let (closed_tx, closed_rx) = oneshot::channel();
            let task = tokio::spawn(accept_loop(
                self.shared.clone(),
                Arc::new(ListenerCtx { key: key.clone() }),
                sock,
                stop_rx,
                closed_tx,
            ));
            running.insert(
                key,
                Running {
                    address,
                    local,
                    stop,
                    closed: Some(closed_rx),
                    task,
                },
            );
        }
        // The drains of stopped listeners go on in their own tasks.
        drop(stopping);
        self.ready.store(errors.is_empty(), Ordering::Release);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Start the task that applies the tables sent to the returned sink (call inside the
    /// runtime). Listeners that fail to bind are logged; the rest of the table applies. The
    /// task ends when every sink is dropped or the forwarder is gone.
    pub fn table_sink(self: &Arc<Self>) -> TableSink {
        let (tx, mut rx) = watch::channel::<Option<Arc<Table>>>(None);
        let forwarder = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(table) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let Some(forwarder) = forwarder.upgrade() else {
                    break;
                };
                if let Err(errors) = forwarder.apply(table).await {
                    for e in errors {
                        tracing::error!(error = %e, "listener not serving");
                    }
                }
            }
        });
        TableSink { tx: Arc::new(tx) }
    }

    /// Stop every listener and wait (at most the drain timeout) for open requests.
    pub async fn shutdown(&self) {
        let mut running = self.listeners.lock().await;
        let all: Vec<Running> = std::mem::take(&mut *running).into_values().collect();
        for r in &all {
            let _ = r.stop.send(true);
        }
        for r in all {
            let _ = r.task.await;
        }
        self.ready.store(false, Ordering::Release);
    }

    /// The `/debug/mirror` page.
    pub fn mirror_json(&self) -> serde_json::Value {
        let budgets: Vec<Arc<MirrorBudget>> = self
            .shared
            .budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        super::mirror::summary_json(&self.shared.stats, &budgets, &self.shared.recent)
    }

    fn budget(&self, cluster: &str) -> Arc<MirrorBudget> {
        let mut budgets = self
            .shared
            .budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        budgets
            .entry(cluster.to_string())
            .or_insert_with(|| {
                Arc::new(MirrorBudget::new(
                    self.shared.options.mirror.max_in_flight,
                    self.shared.stats.mirror_cluster(cluster),
                ))
            })
            .clone()
    }

    /// The run-time state for `table`, reusing the current one's endpoints and pools.
    fn build_active(&self, table: Arc<Table>) -> Active {
        let stats = &self.shared.stats;
        let prev = self.shared.active.load();
        let mut clusters = HashMap::with_capacity(table.clusters.len());
        for (name, cfg) in &table.clusters {
            let rt = ClusterRt::build(
                cfg.clone(),
                prev.clusters.get(name).map(|c| c.as_ref()),
                stats.cluster(name),
                self.budget(name),
            );
            clusters.insert(name.clone(), Arc::new(rt));
        }
        let mut routes = HashMap::new();
        for rc in table.route_configs.values() {
            for vh in &rc.virtual_hosts {
                for (i, route) in vh.routes.iter().enumerate() {
                    let Action::Forward(fwd) = &route.action else {
                        continue;
                    };
                    if fwd.mirrors.is_empty() {
                        continue;
                    }
                    let label = if route.name.is_empty() {
                        format!("{}/{}/{}", rc.name, vh.name, i)
                    } else {
                        route.name.clone()
                    };
                    let mirrors = fwd
                        .mirrors
                        .iter()
                        .map(|m| MirrorRt {
                            cluster: clusters.get(&m.cluster).cloned(),
                            stats: stats.mirror_cluster(&m.cluster),
                            pair: stats.pair(&label, &m.cluster),
                        })
                        .collect();
                    routes.insert(handler::route_key(route), RouteRt { mirrors });
                }
            }
        }
        let downstream = table
            .listeners
            .iter()
            .map(|(k, l)| (k.clone(), stats.downstream(&l.stat_prefix)))
            .collect();
        Active {
            table,
            clusters,
            routes,
            downstream,
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    closed: oneshot::Sender<()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let ctx = ctx.clone();
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        let ctx = ctx.clone();
                        async move {
                            Ok::<_, Infallible>(handler::handle(shared, ctx, peer, req).await)
                        }
                    });
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %ctx.key, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let _ = closed.send(());
    let drain = shared.options.drain_timeout;
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sink_applies_tables_in_the_background() {
        let f = Arc::new(Forwarder::new(ForwarderOptions::default()));
        let sink = f.table_sink();
        assert!(!f.is_ready());
        let mut t = Table::default();
        t.versions.listeners = "7".into();
        sink.send(Arc::new(t));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while f.table().versions.listeners != "7" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the table was not applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(f.is_ready());
    }
}
