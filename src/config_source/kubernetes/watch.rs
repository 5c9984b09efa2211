//! The watches: discovery of the Istio kinds the cluster serves, one `kube::runtime::watcher`
//! per kind, and the store they keep up to date.
//!
//! A watcher lists, then watches from the list's `resourceVersion`; it resumes from the last
//! version it saw after a timeout, relists on `410 Gone`, and retries with backoff
//! (`default_backoff`) while the API server is unreachable. A relist replaces the kind's
//! objects only once it is complete (`InitDone`), so a broken watch never empties the store:
//! the last reading keeps serving.
//!
//! Logging: a (re)list at info; the first error of an outage at warn, the retries at debug,
//! and the recovery at info.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::convert::{
    self, IstioKind, Labels, ObjectKey, Rendered, ServiceInfo, SliceInfo, ISTIO_GROUP, ISTIO_KINDS,
    ISTIO_VERSIONS,
};
use super::reading::Tracker;

/// Everything the watchers know, converted.
#[derive(Default)]
pub(super) struct Store {
    /// Kind → rendered objects.
    pub istio: BTreeMap<&'static str, BTreeMap<ObjectKey, Rendered>>,
    pub services: BTreeMap<ObjectKey, ServiceInfo>,
    pub slices: BTreeMap<ObjectKey, SliceInfo>,
    pub pods: BTreeMap<ObjectKey, Labels>,
    /// Watcher name → whether its first list completed.
    pub synced: BTreeMap<String, bool>,
    /// Whether the first discovery of the Istio kinds finished (found or not).
    pub discovered: bool,
    /// What changed since the last reading, and which Services a slice or Pod affects.
    pub tracker: Tracker,
}

impl Store {
    /// Every started watcher finished its first list, and discovery ran.
    pub fn ready(&self) -> bool {
        self.discovered && self.synced.values().all(|s| *s)
    }
}

pub(super) type SharedStore = Arc<Mutex<Store>>;

pub(super) fn lock(store: &SharedStore) -> MutexGuard<'_, Store> {
    // A poisoned lock means a panic in another watcher; the maps are still consistent.
    store.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a watcher keeps its objects, and how it converts one.
pub(super) trait Table<K>: Send + 'static {
    type Value: PartialEq + Send + 'static;
    fn convert(&self, obj: &K) -> Option<(ObjectKey, Self::Value)>;
    fn table<'s>(&self, store: &'s mut Store) -> &'s mut BTreeMap<ObjectKey, Self::Value>;
    /// Record in the store's tracker that `key` changed from `old` (its new value, if any,
    /// is in the table).
    fn touched(&self, store: &mut Store, key: &ObjectKey, old: Option<&Self::Value>);
}

/// Set (`Some`) or delete (`None`) one object; whether the table changed.
pub(super) fn apply<K, T: Table<K>>(
    table: &T,
    store: &mut Store,
    key: ObjectKey,
    value: Option<T::Value>,
) -> bool {
    let slot = table.table(store);
    if slot.get(&key) == value.as_ref() {
        return false;
    }
    let old = match value {
        Some(v) => slot.insert(key.clone(), v),
        None => slot.remove(&key),
    };
    table.touched(store, &key, old.as_ref());
    true
}

/// Replace the whole table with a complete list; whether it changed.
pub(super) fn replace<K, T: Table<K>>(
    table: &T,
    store: &mut Store,
    listed: BTreeMap<ObjectKey, T::Value>,
) -> bool {
    let old = std::mem::replace(table.table(store), listed);
    let new = table.table(store);
    let changed: Vec<ObjectKey> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(new.keys().filter(|k| !old.contains_key(*k)).cloned())
        .collect();
    for key in &changed {
        table.touched(store, key, old.get(key));
    }
    !changed.is_empty()
}

pub(super) struct IstioTable {
    pub api_version: String,
    pub kind: IstioKind,
}

impl Table<DynamicObject> for IstioTable {
    type Value = Rendered;
    fn convert(&self, obj: &DynamicObject) -> Option<(ObjectKey, Rendered)> {
        let r = convert::istio_object(&self.api_version, self.kind, obj)?;
        let key = (
            r.reference.namespace.clone().unwrap_or_default(),
            r.reference.name.clone().unwrap_or_default(),
        );
        Some((key, r))
    }
    fn table<'s>(&self, store: &'s mut Store) -> &'s mut BTreeMap<ObjectKey, Rendered> {
        store.istio.entry(self.kind.kind).or_default()
    }
    fn touched(&self, store: &mut Store, key: &ObjectKey, _old: Option<&Rendered>) {
        store.tracker.istio_changed(self.kind.kind, key);
    }
}

pub(super) struct ServiceTable;

impl Table<Service> for ServiceTable {
    type Value = ServiceInfo;
    fn convert(&self, obj: &Service) -> Option<(ObjectKey, ServiceInfo)> {
        let s = ServiceInfo::from_service(obj)?;
        Some((s.key(), s))
    }
    fn table<'s>(&self, store: &'s mut Store) -> &'s mut BTreeMap<ObjectKey, ServiceInfo> {
        &mut store.services
    }
    fn touched(&self, store: &mut Store, key: &ObjectKey, _old: Option<&ServiceInfo>) {
        store.tracker.service_changed(key);
    }
}

pub(super) struct SliceTable;

impl Table<EndpointSlice> for SliceTable {
    type Value = SliceInfo;
    fn convert(&self, obj: &EndpointSlice) -> Option<(ObjectKey, SliceInfo)> {
        let s = SliceInfo::from_slice(obj)?;
        Some((s.key(), s))
    }
    fn table<'s>(&self, store: &'s mut Store) -> &'s mut BTreeMap<ObjectKey, SliceInfo> {
        &mut store.slices
    }
    fn touched(&self, store: &mut Store, key: &ObjectKey, old: Option<&SliceInfo>) {
        store.tracker.slice_changed(key, old, store.slices.get(key));
    }
}

pub(super) struct PodTable;

impl Table<Pod> for PodTable {
    type Value = Labels;
    fn convert(&self, obj: &Pod) -> Option<(ObjectKey, Labels)> {
        convert::pod_labels(obj)
    }
    fn table<'s>(&self, store: &'s mut Store) -> &'s mut BTreeMap<ObjectKey, Labels> {
        &mut store.pods
    }
    fn touched(&self, store: &mut Store, key: &ObjectKey, _old: Option<&Labels>) {
        store.tracker.pod_changed(key, &store.slices);
    }
}

/// What the watches share: the client, the scope, the store and the change signal.
#[derive(Clone)]
pub(super) struct Watches {
    pub client: Client,
    pub namespace: Option<String>,
    pub store: SharedStore,
    /// A change worth a new reading (a full channel already holds one).
    pub changed: mpsc::Sender<()>,
    /// How often missing Istio kinds are looked for again.
    pub discovery_interval: Duration,
}

/// How often missing Istio kinds are looked for again by default.
pub(super) const DISCOVERY_INTERVAL: Duration = Duration::from_secs(30);

impl Watches {
    fn signal(&self) {
        let _ = self.changed.try_send(());
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    fn dynamic_api(&self, ar: &ApiResource) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    /// Start the Service, EndpointSlice and Pod watchers and the discovery of the Istio kinds
    /// (which starts their watchers). The handles are the tasks to abort on drop.
    pub fn start(&self) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![
            self.spawn("services", self.api::<Service>(), ServiceTable),
            self.spawn("endpointslices", self.api::<EndpointSlice>(), SliceTable),
            self.spawn("pods", self.api::<Pod>(), PodTable),
        ];
        let this = self.clone();
        tasks.push(tokio::spawn(async move { this.discover().await }));
        tasks
    }

    /// Register a watcher (not synced) and run it.
    fn spawn<K, T>(&self, name: &str, api: Api<K>, table: T) -> JoinHandle<()>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        T: Table<K>,
    {
        lock(&self.store).synced.insert(name.to_string(), false);
        tokio::spawn(run_watcher(self.clone(), name.to_string(), api, table))
    }

    /// Find the version the cluster serves of each Istio kind and watch it. Kinds (or the
    /// whole group) not served yet are looked for again every 30 s; until the first answer
    /// the source is not ready.
    async fn discover(self) {
        let mut started: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut backoff = Duration::from_millis(500);
        let mut failing = false;
        let mut reported_missing: Vec<&'static str> = Vec::new();
        let mut watchers: Vec<JoinHandle<()>> = Vec::new();
        // The watchers live as long as this task: abort them when it is aborted.
        struct AbortOnDrop(Vec<JoinHandle<()>>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                for t in &self.0 {
                    t.abort();
                }
            }
        }
        let mut guard = AbortOnDrop(Vec::new());
        loop {
            let found = match kube::discovery::group(&self.client, ISTIO_GROUP).await {
                Ok(group) => Some(group),
                Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))) => {
                    None
                }
                Err(e) => {
                    if failing {
                        tracing::debug!(error = %e, "discovery of {ISTIO_GROUP} failed again");
                    } else {
                        tracing::warn!(error = %e, "cannot discover the {ISTIO_GROUP} kinds the API server serves; retrying with backoff");
                        failing = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            if failing {
                tracing::info!("discovery of {ISTIO_GROUP} works again");
                failing = false;
            }
            backoff = Duration::from_millis(500);
            let mut missing = Vec::new();
            for kind in ISTIO_KINDS {
                if started.contains_key(kind.kind) {
                    continue;
                }
                let served = found.as_ref().and_then(|g| {
                    ISTIO_VERSIONS.iter().find_map(|v| {
                        g.versioned_resources(v)
                            .into_iter()
                            .find(|(ar, _)| ar.kind == kind.kind)
                            .map(|(ar, _)| ar)
                    })
                });
                match served {
                    Some(ar) => {
                        let name = format!("{}.{}", ar.plural, ar.api_version);
                        tracing::info!(kind = kind.kind, api_version = %ar.api_version, "watching {}", kind.kind);
                        let table = IstioTable {
                            api_version: ar.api_version.clone(),
                            kind,
                        };
                        watchers.push(self.spawn(&name, self.dynamic_api(&ar), table));
                        started.insert(kind.kind, ar.api_version.clone());
                    }
                    None => missing.push(kind.kind),
                }
            }
            guard.0.append(&mut watchers);
            {
                let mut store = lock(&self.store);
                if !store.discovered {
                    store.discovered = true;
                }
            }
            self.signal();
            if missing.is_empty() {
                // Keep the watchers running: wait to be aborted.
                std::future::pending::<()>().await;
            }
            if missing != reported_missing {
                tracing::warn!(
                    missing = %missing.join(", "),
                    "the API server does not serve these {ISTIO_GROUP} kinds (v1, v1beta1 or v1alpha3); install the CRDs (shadowplane crds | kubectl apply -f -); looking again every {:?}",
                    self.discovery_interval
                );
                reported_missing = missing;
            }
            tokio::time::sleep(self.discovery_interval).await;
        }
    }
}

/// Run one watcher until aborted, keeping its table of the store up to date.
async fn run_watcher<K, T>(watches: Watches, name: String, api: Api<K>, table: T)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Table<K>,
{
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    // Objects of a (re)list in progress, swapped in at `InitDone`.
    let mut buffer: Option<BTreeMap<ObjectKey, T::Value>> = None;
    let mut failing = false;
    let mut lists = 0u64;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => {
                if failing {
                    tracing::info!(watcher = %name, "watch of {name} works again");
                    failing = false;
                }
                event
            }
            Err(e) => {
                if failing {
                    tracing::debug!(watcher = %name, error = %e, "watch of {name} failed again");
                } else {
                    tracing::warn!(watcher = %name, error = %e, "lost the watch of {name}; retrying with backoff and serving the last reading meanwhile");
                    failing = true;
                }
                continue;
            }
        };
        let changed = match event {
            Event::Init => {
                lists += 1;
                if lists == 1 {
                    tracing::debug!(watcher = %name, "listing {name}");
                } else {
                    tracing::info!(watcher = %name, "listing {name} again (the watch could not resume)");
                }
                buffer = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                if let (Some(buf), Some((key, value))) = (buffer.as_mut(), table.convert(&obj)) {
                    buf.insert(key, value);
                }
                false
            }
            Event::InitDone => {
                let listed = buffer.take().unwrap_or_default();
                let count = listed.len();
                let mut store = lock(&watches.store);
                let changed = replace(&table, &mut store, listed);
                let first = store.synced.insert(name.clone(), true) != Some(true);
                drop(store);
                if first {
                    tracing::info!(watcher = %name, objects = count, "listed {name}");
                }
                changed || first
            }
            Event::Apply(obj) => match table.convert(&obj) {
                Some((key, value)) => apply(&table, &mut lock(&watches.store), key, Some(value)),
                None => false,
            },
            Event::Delete(obj) => match table.convert(&obj) {
                Some((key, _)) => apply(&table, &mut lock(&watches.store), key, None),
                None => false,
            },
        };
        if changed {
            watches.signal();
        }
    }
}
