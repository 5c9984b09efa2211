//! `serve --kubernetes`: the config read from a Kubernetes API server, handed on exactly like
//! the file source's: a [`ConfigLoad`] of
//! [`SourceFile`](shadowplane_translator::SourceFile)s through a [`tokio::sync::watch`] channel.
//!
//! - [`watch`]: discovery of the Istio kinds and one watcher per kind (VirtualService,
//!   DestinationRule, ServiceEntry, WorkloadEntry, Gateway in `networking.istio.io`, at v1,
//!   else v1beta1, else v1alpha3; Services, EndpointSlices and Pods), resuming, relisting and
//!   backing off as needed.
//! - [`convert`]: objects → files (Istio objects as YAML; each Service as a ServiceEntry with
//!   its ready endpoints and their Pods' labels), pure and deterministic.
//! - [`events`]: diagnostics about Kubernetes objects posted as Kubernetes Events on them.
//! - `reading`: the files kept up to date by what changed: a slice or Pod change re-renders
//!   only the Services it feeds, and every other file keeps its text.
//!
//! The first reading (generation 1) is emitted once every watcher finished its first list
//! ([`KubeSource::is_synced`]); until then the receiver holds generation 0 with no files,
//! which is not a reading. Later changes are debounced like file changes. A broken watch
//! keeps the objects last seen, so the source never hands out an emptied config because the
//! API server went away.

pub mod convert;
pub mod events;
mod reading;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::sync::{mpsc, watch as channel};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::{ConfigLoad, Debounce};
use k8s_openapi::api::core::v1::ObjectReference;
use std::collections::BTreeMap;

/// The cluster DNS suffix of Service hosts when none is given.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";

/// How to reach the API server and what to watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSourceConfig {
    /// `--namespace`: watch only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// `--kubeconfig`: this kubeconfig instead of `$KUBECONFIG`, `~/.kube/config` or the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-context`: this context of the kubeconfig instead of its current one.
    pub context: Option<String>,
    /// How long the objects must be quiet before a new reading.
    pub debounce: Debounce,
    /// How often Istio kinds the cluster does not serve yet are looked for again (`None`:
    /// every 30 s). Tests shorten it.
    pub discovery_interval: Option<std::time::Duration>,
}

/// Why the Kubernetes source could not start. Once started it never fails: an unreachable
/// API server is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("cannot read the kubeconfig {path}: {message}; check the file or pass another with --kubeconfig PATH")]
    Kubeconfig { path: String, message: String },
    #[error("cannot configure the Kubernetes client: {0}; set KUBECONFIG, pass --kubeconfig PATH (and --kube-context NAME), or run in a Pod with a service account")]
    Config(String),
    #[error("cannot create the Kubernetes client: {0}")]
    Client(String),
}

/// A running watch of the Kubernetes objects. Dropping it stops watching.
pub struct KubeSource {
    rx: channel::Receiver<Arc<ConfigLoad>>,
    synced: Arc<AtomicBool>,
    client: Client,
    references: Arc<std::sync::Mutex<BTreeMap<String, ObjectReference>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubeSource {
    /// Build the client and start watching; Service hosts end in `cluster.local`.
    /// Must be called inside a tokio runtime. Returns at once: the first reading comes once
    /// every watcher has listed its objects.
    pub async fn start(cfg: KubeSourceConfig) -> Result<KubeSource, KubeSourceError> {
        KubeSource::start_with_domain(cfg, DEFAULT_DOMAIN_SUFFIX).await
    }

    /// [`KubeSource::start`], with Service hosts `<name>.<namespace>.svc.<domain_suffix>`.
    pub async fn start_with_domain(
        cfg: KubeSourceConfig,
        domain_suffix: &str,
    ) -> Result<KubeSource, KubeSourceError> {
        let client = client(&cfg).await?;
        Ok(KubeSource::with_client(client, cfg, domain_suffix))
    }

    /// Start watching with an existing client.
    pub fn with_client(client: Client, cfg: KubeSourceConfig, domain_suffix: &str) -> KubeSource {
        let (changed_tx, changed_rx) = mpsc::channel(1);
        let watches = watch::Watches {
            client: client.clone(),
            namespace: cfg.namespace.clone(),
            store: Arc::default(),
            changed: changed_tx,
            discovery_interval: cfg.discovery_interval.unwrap_or(watch::DISCOVERY_INTERVAL),
        };
        let mut tasks = watches.start();
        let (tx, rx) = channel::channel(Arc::new(ConfigLoad {
            generation: 0,
            result: Ok(Vec::new()),
        }));
        let synced = Arc::new(AtomicBool::new(false));
        let references = Arc::default();
        tasks.push(tokio::spawn(reading_loop(
            watches.store.clone(),
            changed_rx,
            tx,
            cfg.debounce,
            domain_suffix.to_string(),
            synced.clone(),
            Arc::clone(&references),
        )));
        match &cfg.namespace {
            Some(ns) => {
                tracing::info!(namespace = %ns, "watching Kubernetes objects in namespace {ns}")
            }
            None => tracing::info!("watching Kubernetes objects in all namespaces"),
        }
        KubeSource {
            rx,
            synced,
            client,
            references,
            tasks,
        }
    }

    /// A receiver of the readings (generation 0 until the first complete list).
    pub fn subscribe(&self) -> channel::Receiver<Arc<ConfigLoad>> {
        self.rx.clone()
    }

    /// The latest reading.
    pub fn current(&self) -> Arc<ConfigLoad> {
        self.rx.borrow().clone()
    }

    /// Whether every watcher finished its first list and the first reading went out.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The flag behind [`KubeSource::is_synced`], for whoever outlives a borrow.
    pub fn synced_flag(&self) -> Arc<AtomicBool> {
        self.synced.clone()
    }

    /// The client (for posting Events).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The object each file path of the latest reading came from.
    pub fn references(&self) -> References {
        References(self.references.clone())
    }
}

/// Object references by file path, as of the latest reading.
#[derive(Clone, Default)]
pub struct References(Arc<std::sync::Mutex<BTreeMap<String, ObjectReference>>>);

impl References {
    pub fn get(&self, path: &str) -> Option<ObjectReference> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned()
    }
}

/// The client for `cfg`: `kube::Config::infer()` (KUBECONFIG, ~/.kube/config, in-cluster)
/// unless a kubeconfig path or context is given.
async fn client(cfg: &KubeSourceConfig) -> Result<Client, KubeSourceError> {
    let config = if cfg.kubeconfig.is_none() && cfg.context.is_none() {
        kube::Config::infer()
            .await
            .map_err(|e| KubeSourceError::Config(e.to_string()))?
    } else {
        let kubeconfig = match &cfg.kubeconfig {
            Some(path) => Kubeconfig::read_from(path).map_err(|e| KubeSourceError::Kubeconfig {
                path: path.display().to_string(),
                message: e.to_string(),
            })?,
            None => Kubeconfig::read().map_err(|e| KubeSourceError::Kubeconfig {
                path: "$KUBECONFIG or ~/.kube/config".to_string(),
                message: e.to_string(),
            })?,
        };
        let options = KubeConfigOptions {
            context: cfg.context.clone(),
            cluster: None,
            user: None,
        };
        kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| KubeSourceError::Config(e.to_string()))?
    };
    Client::try_from(config).map_err(|e| KubeSourceError::Client(e.to_string()))
}

/// Wait for changes, let them settle, and emit a reading when every watcher has synced and
/// the files differ from the last reading.
async fn reading_loop(
    store: watch::SharedStore,
    mut changes: mpsc::Receiver<()>,
    tx: channel::Sender<Arc<ConfigLoad>>,
    debounce: Debounce,
    domain_suffix: String,
    synced: Arc<AtomicBool>,
    references: Arc<std::sync::Mutex<BTreeMap<String, ObjectReference>>>,
) {
    let started = std::time::Instant::now();
    let mut reading = reading::Reading::default();
    loop {
        if changes.recv().await.is_none() {
            return;
        }
        let hard_deadline = Instant::now() + debounce.max_delay;
        loop {
            let quiet_deadline = (Instant::now() + debounce.quiet).min(hard_deadline);
            tokio::select! {
                more = changes.recv() => {
                    if more.is_none() {
                        return;
                    }
                }
                _ = sleep_until(quiet_deadline) => break,
            }
        }
        if tx.is_closed() {
            return;
        }
        let render_started = std::time::Instant::now();
        let update = {
            let mut store = watch::lock(&store);
            // Only the first reading waits for every watcher's first list. A kind discovered
            // later (Istio's CRDs installed after start) contributes nothing until its list is
            // complete, and must not hold back every other change meanwhile.
            if !store.ready() && tx.borrow().generation == 0 {
                continue;
            }
            reading.update(&mut store, &domain_suffix)
        };
        if !update.references.is_empty() {
            let mut refs = references.lock().unwrap_or_else(|p| p.into_inner());
            for (path, reference) in update.references {
                match reference {
                    Some(r) => refs.insert(path, r),
                    None => refs.remove(&path),
                };
            }
        }
        let previous_generation = tx.borrow().generation;
        if previous_generation > 0 && !update.files_changed {
            tracing::trace!("Kubernetes objects unchanged");
            continue;
        }
        let load = ConfigLoad {
            generation: previous_generation + 1,
            result: Ok(reading.files()),
        };
        let render_ms = render_started.elapsed().as_secs_f64() * 1000.0;
        let count = load.result.as_ref().map(Vec::len).unwrap_or(0);
        if load.generation == 1 {
            tracing::info!(
                objects = count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "first complete list of the Kubernetes objects"
            );
        } else {
            tracing::debug!(
                generation = load.generation,
                objects = count,
                render_ms,
                "Kubernetes objects changed"
            );
        }
        if tx.send(Arc::new(load)).is_err() {
            return;
        }
        synced.store(true, Ordering::Release);
    }
}
