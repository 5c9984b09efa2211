//! Who is connected and what they have: per-stream status (node, per type URL: versions and
//! nonces sent and acknowledged, last NACK with Envoy's message, subscribed and missing
//! names) and server-wide counters. Plain Rust API with `serde::Serialize` output; the admin
//! page and Prometheus text are built on top of it elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use serde::Serialize;
use tokio::sync::Notify;

use super::subscription::{Names, Subscription, WILDCARD};

/// How a stream talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// `StreamAggregatedResources`.
    SotwAds,
    /// `DeltaAggregatedResources`.
    DeltaAds,
    /// A per-type SotW stream (`StreamClusters`, ...).
    Sotw,
    /// A per-type delta stream (`DeltaClusters`, ...).
    Delta,
}

/// Where the last response of a type stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SyncState {
    /// Requested, nothing sent yet (no snapshot for the proxy's group yet).
    #[default]
    NotSent,
    /// The last response is not acknowledged yet.
    Pending,
    /// The last response was accepted.
    Acked,
    /// The last response was rejected; see `last_nack`.
    Nacked,
}

/// A rejected response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NackStatus {
    /// The version the proxy rejected (the version of the response with `nonce`).
    pub version: String,
    pub nonce: String,
    /// The version the proxy says it still runs (the request's `version_info`).
    pub client_version: String,
    /// Envoy's `error_detail.message` (for humans; not stable across Envoy versions).
    pub message: String,
    /// The resources the rejected response carried (delta: and removed).
    pub resource_names: Vec<String>,
    pub at_unix_ms: u64,
}

/// One type URL on one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct TypeStatus {
    pub type_url: String,
    /// `*` first if wildcard, then explicit names (filled when the status is read; the
    /// registry keeps the stream's shared name set, not a copy).
    pub subscribed: Vec<String>,
    /// Explicitly requested names the snapshot does not have (SotW: answered with an empty
    /// placeholder for endpoints/routes; delta: listed in `removed_resources`). A proxy stuck
    /// warming shows up here.
    pub missing: Vec<String>,
    pub state: SyncState,
    pub version_sent: Option<String>,
    pub nonce_sent: Option<String>,
    pub version_acked: Option<String>,
    pub nonce_acked: Option<String>,
    /// The snapshot version of this type the proxy is in sync with: its last response was
    /// acknowledged and nothing in snapshots up to this version needed sending since. A
    /// snapshot change that does not touch what this proxy subscribes to moves it without a
    /// push (so `version_acked` can lag while the proxy is current). Compare with the group's
    /// `Snapshot::version(type_url)` to tell SYNCED from STALE.
    pub synced_version: Option<String>,
    pub last_nack: Option<NackStatus>,
    pub nacks: u64,
    pub pushes: u64,
    pub bytes_sent: u64,
    /// Resources (and, for delta, removals) in the last response.
    pub resources_in_last_push: usize,
    pub last_push_unix_ms: Option<u64>,
}

/// One connected stream (a proxy has one with ADS, several with per-type streams).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyStatus {
    pub stream_id: u64,
    pub node_id: String,
    pub node_cluster: String,
    /// `node.metadata` as JSON.
    pub node_metadata: serde_json::Value,
    /// `node.user_agent_name` and version, e.g. `envoy 1.31.0`.
    pub user_agent: String,
    /// The snapshot group the node is served from.
    pub group: String,
    pub transport: Transport,
    pub connected_since_unix_ms: u64,
    /// Sorted by type URL.
    pub types: Vec<TypeStatus>,
}

#[derive(Debug, Default)]
struct TypeCounters {
    pushes: AtomicU64,
    bytes: AtomicU64,
    resources: AtomicU64,
}

/// The short type labels of request counters, in [`type_slot`] order.
pub const REQUEST_TYPES: [&str; 5] = ["cds", "eds", "lds", "rds", "other"];

/// The request kinds, in [`RequestKind`] slot order.
pub const REQUEST_KINDS: [&str; 4] = ["initial", "ack", "nack", "stale"];

/// Index of a type URL in [`REQUEST_TYPES`].
fn type_slot(type_url: &str) -> usize {
    match type_url {
        super::resource::CLUSTER => 0,
        super::resource::ENDPOINT => 1,
        super::resource::LISTENER => 2,
        super::resource::ROUTE => 3,
        _ => 4,
    }
}

/// Server-wide counters (simple atomics).
#[derive(Debug, Default)]
pub struct XdsMetrics {
    /// Requests by type ([`REQUEST_TYPES`]) then kind ([`REQUEST_KINDS`]).
    requests: [[AtomicU64; 4]; 5],
    streams_opened: AtomicU64,
    streams_closed: AtomicU64,
    oversized_responses: AtomicU64,
    per_type: DashMap<String, Arc<TypeCounters>>,
}

/// How a request was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// First request for a type, or a subscription change carrying no nonce.
    Initial,
    Ack,
    Nack,
    /// Carries a nonce other than the last one sent for the type.
    Stale,
}

impl RequestKind {
    fn slot(self) -> usize {
        match self {
            RequestKind::Initial => 0,
            RequestKind::Ack => 1,
            RequestKind::Nack => 2,
            RequestKind::Stale => 3,
        }
    }
}

impl XdsMetrics {
    pub(crate) fn request(&self, type_url: &str, kind: RequestKind) {
        self.requests[type_slot(type_url)][kind.slot()].fetch_add(1, Ordering::Relaxed);
    }

    fn requests_of(&self, kind: RequestKind) -> u64 {
        self.requests
            .iter()
            .map(|t| t[kind.slot()].load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn push(&self, type_url: &str, resources: usize, bytes: usize) {
        let counters = match self.per_type.get(type_url) {
            Some(c) => c.clone(),
            None => self
                .per_type
                .entry(type_url.to_string())
                .or_default()
                .clone(),
        };
        counters.pushes.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        counters
            .resources
            .fetch_add(resources as u64, Ordering::Relaxed);
    }

    pub(crate) fn oversized(&self) {
        self.oversized_responses.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters by type URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeMetrics {
    pub pushes: u64,
    pub bytes: u64,
    pub resources: u64,
    /// Streams currently subscribed to (that have requested) this type.
    pub connected: u64,
}

/// A copy of every counter at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// First requests per type and nonce-less subscription changes.
    pub requests_initial: u64,
    pub requests_ack: u64,
    pub requests_nack: u64,
    /// Requests carrying a stale nonce (SotW: ignored, their names remembered; delta: their
    /// subscription changes applied).
    pub requests_stale: u64,
    /// Requests by short type ([`REQUEST_TYPES`]: `cds`, `eds`, `lds`, `rds`, `other`), each
    /// by kind in [`REQUEST_KINDS`] order (`initial`, `ack`, `nack`, `stale`).
    pub requests_by_type: BTreeMap<&'static str, [u64; 4]>,
    pub streams_opened: u64,
    pub streams_closed: u64,
    pub streams_connected: u64,
    /// Responses larger than the configured warning size.
    pub oversized_responses: u64,
    pub by_type: BTreeMap<String, TypeMetrics>,
}

#[derive(Debug)]
struct StreamRecord {
    status: ProxyStatus,
    /// Boxed: a map node has room for 11 entries and a stream uses four or five types.
    types: BTreeMap<String, Box<TypeStatus>>,
    /// Per type, the group swap (unix ms) whose first push was already reported.
    push_seen: BTreeMap<String, u64>,
    /// Per type, the subscription: wildcard and the explicit names, shared with the stream
    /// (and with every other stream subscribed to the same names). `TypeStatus::subscribed`
    /// is filled from it only when a status is read.
    subs: BTreeMap<String, (bool, Names)>,
}

/// Per group and type: how many streams were sent the type, and how many of those are in sync
/// with each snapshot version (`TypeStatus::synced_version`). Kept up to date on every status
/// change, so "has every proxy of the group caught up with version V" is two lookups instead
/// of a walk over every stream.
#[derive(Debug, Default)]
struct TypeSync {
    sent: usize,
    synced: HashMap<String, usize>,
}

/// A NACK as reported to [`ProxyRegistry::take_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackEvent {
    pub stream_id: u64,
    pub node_id: String,
    pub group: String,
    pub type_url: String,
    pub nack: NackStatus,
}

/// What happened since the last [`ProxyRegistry::take_events`].
#[derive(Debug, Default)]
pub struct RegistryEvents {
    /// NACKs, oldest first (at most [`MAX_EVENTS`]; older ones are dropped).
    pub nacks: Vec<NackEvent>,
    /// Per push that was the first of its stream and type after its group's latest
    /// [`ProxyRegistry::mark_swap`] (streams that connected after the swap excluded): the type
    /// URL and the swap → send delay in seconds.
    pub push_delays: Vec<(String, f64)>,
}

/// Events kept between two [`ProxyRegistry::take_events`] calls, per kind.
pub const MAX_EVENTS: usize = 10_000;

#[derive(Debug, Default)]
struct Shared {
    /// group → type URL → counts.
    sync: HashMap<String, HashMap<String, TypeSync>>,
    /// group → unix ms of its latest snapshot swap.
    swaps: HashMap<String, u64>,
    events: RegistryEvents,
}

/// Connected streams and counters. Cheap to share (`Arc`).
///
/// Watchers (the app's control loop) do not poll it: [`ProxyRegistry::changed`] completes
/// after a stream connects or disconnects, is acknowledged, rejects a response or gets a push;
/// [`ProxyRegistry::group_in_sync`] and [`ProxyRegistry::take_events`] read what they need
/// without copying any stream's status.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    streams: DashMap<u64, StreamRecord>,
    next_id: AtomicU64,
    metrics: XdsMetrics,
    shared: Mutex<Shared>,
    changed: Notify,
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ProxyRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every connected stream, sorted by node id then stream id.
    pub fn snapshot(&self) -> Vec<ProxyStatus> {
        let mut out: Vec<ProxyStatus> = self
            .streams
            .iter()
            .map(|r| {
                let mut s = r.status.clone();
                s.types = r
                    .types
                    .values()
                    .map(|t| {
                        let mut t = TypeStatus::clone(t);
                        if let Some((wildcard, names)) = r.subs.get(&t.type_url) {
                            t.subscribed = Vec::with_capacity(names.len() + 1);
                            if *wildcard {
                                t.subscribed.push(WILDCARD.to_string());
                            }
                            t.subscribed.extend(names.iter().cloned());
                        }
                        t
                    })
                    .collect();
                s
            })
            .collect();
        out.sort_by(|a, b| (&a.node_id, a.stream_id).cmp(&(&b.node_id, b.stream_id)));
        out
    }

    /// Streams of one node id.
    pub fn node(&self, node_id: &str) -> Vec<ProxyStatus> {
        self.snapshot()
            .into_iter()
            .filter(|s| s.node_id == node_id)
            .collect()
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        let m = &self.metrics;
        let mut by_type: BTreeMap<String, TypeMetrics> = m
            .per_type
            .iter()
            .map(|e| {
                (
                    e.key().clone(),
                    TypeMetrics {
                        pushes: e.pushes.load(Ordering::Relaxed),
                        bytes: e.bytes.load(Ordering::Relaxed),
                        resources: e.resources.load(Ordering::Relaxed),
                        connected: 0,
                    },
                )
            })
            .collect();
        for r in self.streams.iter() {
            for type_url in r.types.keys() {
                by_type.entry(type_url.clone()).or_default().connected += 1;
            }
        }
        MetricsSnapshot {
            requests_initial: m.requests_of(RequestKind::Initial),
            requests_ack: m.requests_of(RequestKind::Ack),
            requests_nack: m.requests_of(RequestKind::Nack),
            requests_stale: m.requests_of(RequestKind::Stale),
            requests_by_type: REQUEST_TYPES
                .iter()
                .zip(&m.requests)
                .map(|(t, counts)| (*t, counts.each_ref().map(|c| c.load(Ordering::Relaxed))))
                .collect(),
            streams_opened: m.streams_opened.load(Ordering::Relaxed),
            streams_closed: m.streams_closed.load(Ordering::Relaxed),
            streams_connected: self.streams.len() as u64,
            oversized_responses: m.oversized_responses.load(Ordering::Relaxed),
            by_type,
        }
    }

    fn lock_shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A poisoned lock only means a panic elsewhere; every update keeps the counts valid.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes after the next change that can move a group's sync state or produce an event
    /// (connect, disconnect, ACK, NACK, push). One waiter is enough: a change with nobody
    /// waiting is remembered for the next call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether every stream of `group` that was sent a type is in sync with the version
    /// `version_of(type_url)` of it (acknowledged it, or needed nothing from it). True for a
    /// group without streams.
    pub fn group_in_sync<'a>(&self, group: &str, version_of: impl Fn(&str) -> &'a str) -> bool {
        let shared = self.lock_shared();
        let Some(types) = shared.sync.get(group) else {
            return true;
        };
        types.iter().all(|(type_url, t)| {
            t.sent == 0 || t.synced.get(version_of(type_url)).copied().unwrap_or(0) == t.sent
        })
    }

    /// Groups that have at least one stream that was sent something.
    pub fn groups_with_streams(&self) -> Vec<String> {
        self.lock_shared()
            .sync
            .iter()
            .filter(|(_, types)| types.values().any(|t| t.sent > 0))
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Record that `group`'s snapshot was swapped at `unix_ms`: the next push of each type to
    /// each of its streams is reported as a push delay by [`ProxyRegistry::take_events`].
    ///
    /// Pushes that went out before this call but after `unix_ms` (the swap is marked just after
    /// the snapshot is set, and fast streams may already have pushed) are reported too.
    pub fn mark_swap(&self, group: &str, unix_ms: u64) {
        {
            let mut shared = self.lock_shared();
            if shared.swaps.get(group) == Some(&unix_ms) {
                return;
            }
            shared.swaps.insert(group.to_string(), unix_ms);
        }
        let mut early = Vec::new();
        for mut r in self.streams.iter_mut() {
            let r = &mut *r;
            if r.status.group != group || r.status.connected_since_unix_ms > unix_ms {
                continue;
            }
            for (type_url, t) in &r.types {
                if let Some(pushed) = t.last_push_unix_ms.filter(|p| *p >= unix_ms) {
                    if r.push_seen.get(type_url) != Some(&unix_ms) {
                        r.push_seen.insert(type_url.clone(), unix_ms);
                        early.push((type_url.clone(), (pushed - unix_ms) as f64 / 1000.0));
                    }
                }
            }
        }
        if !early.is_empty() {
            let mut shared = self.lock_shared();
            let room = MAX_EVENTS.saturating_sub(shared.events.push_delays.len());
            shared
                .events
                .push_delays
                .extend(early.into_iter().take(room));
        }
    }

    /// NACKs and push delays since the last call.
    pub fn take_events(&self) -> RegistryEvents {
        std::mem::take(&mut self.lock_shared().events)
    }

    /// Register a new stream; the entry is removed when the handle is dropped.
    pub(crate) fn open(self: &Arc<Self>, transport: Transport) -> StreamHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.streams_opened.fetch_add(1, Ordering::Relaxed);
        self.streams.insert(
            id,
            StreamRecord {
                status: ProxyStatus {
                    stream_id: id,
                    node_id: String::new(),
                    node_cluster: String::new(),
                    node_metadata: serde_json::Value::Null,
                    user_agent: String::new(),
                    group: String::new(),
                    transport,
                    connected_since_unix_ms: now_unix_ms(),
                    types: Vec::new(),
                },
                types: BTreeMap::new(),
                push_seen: BTreeMap::new(),
                subs: BTreeMap::new(),
            },
        );
        self.changed.notify_one();
        StreamHandle {
            registry: self.clone(),
            id,
        }
    }
}

/// A stream's entry in the registry; dropping it removes the entry.
#[derive(Debug)]
pub(crate) struct StreamHandle {
    registry: Arc<ProxyRegistry>,
    id: u64,
}

impl StreamHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn metrics(&self) -> &XdsMetrics {
        &self.registry.metrics
    }

    pub fn set_node(&self, node: &Node, group: &str) {
        if let Some(mut r) = self.registry.streams.get_mut(&self.id) {
            if r.status.group != group {
                // Move the stream's counts to its (new) group.
                let mut shared = self.registry.lock_shared();
                for t in r.types.values() {
                    count(&mut shared, &r.status.group, t, -1);
                    count(&mut shared, group, t, 1);
                }
            }
            r.status.node_id = node.id.clone();
            r.status.node_cluster = node.cluster.clone();
            r.status.node_metadata = node
                .metadata
                .as_ref()
                .map(struct_to_json)
                .unwrap_or(serde_json::Value::Null);
            r.status.user_agent = user_agent(node);
            r.status.group = group.to_string();
        }
    }

    /// Record the subscription of one type (shared, not copied) and the explicitly
    /// subscribed names the snapshot lacks.
    pub fn set_subscription(&self, type_url: &str, sub: &Subscription, missing: Vec<String>) {
        if let Some(mut r) = self.registry.streams.get_mut(&self.id) {
            r.subs.insert(
                type_url.to_string(),
                (sub.is_wildcard(), sub.shared_names().clone()),
            );
        }
        self.update(type_url, |t| t.missing = missing);
    }

    /// Update (creating if needed) the status of one type.
    pub fn update(&self, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        let Some(mut guard) = self.registry.streams.get_mut(&self.id) else {
            return;
        };
        let r = &mut *guard;
        if !r.types.contains_key(type_url) {
            r.types.insert(
                type_url.to_string(),
                Box::new(TypeStatus {
                    type_url: type_url.to_string(),
                    ..Default::default()
                }),
            );
        }
        let Some(entry) = r.types.get_mut(type_url) else {
            return;
        };
        let before = (
            entry.version_sent.is_some(),
            entry.synced_version.clone(),
            entry.nacks,
            entry.last_push_unix_ms,
        );
        f(entry);
        let sync_moved =
            before.0 != entry.version_sent.is_some() || before.1 != entry.synced_version;
        let nacked = entry.nacks != before.2;
        let pushed = entry.last_push_unix_ms != before.3;
        if !(sync_moved || nacked || pushed) {
            return;
        }
        let mut shared = self.registry.lock_shared();
        let group = r.status.group.as_str();
        if sync_moved {
            let old = TypeStatus {
                type_url: type_url.to_string(),
                version_sent: before.0.then(String::new),
                synced_version: before.1,
                ..Default::default()
            };
            count(&mut shared, group, &old, -1);
            count(&mut shared, group, entry, 1);
        }
        if nacked {
            if let Some(nack) = &entry.last_nack {
                let events = &mut shared.events.nacks;
                if events.len() >= MAX_EVENTS {
                    events.remove(0);
                }
                events.push(NackEvent {
                    stream_id: self.id,
                    node_id: r.status.node_id.clone(),
                    group: group.to_string(),
                    type_url: type_url.to_string(),
                    nack: nack.clone(),
                });
            }
        }
        if let (true, Some(pushed)) = (pushed, entry.last_push_unix_ms) {
            // Push latency: the first push after the group's latest swap. Pushes to a stream
            // that connected after the swap are initial fetches, not push latency.
            if let Some(&swapped) = shared.swaps.get(group) {
                let seen = r.push_seen.get(type_url) == Some(&swapped);
                if pushed >= swapped && r.status.connected_since_unix_ms <= swapped && !seen {
                    r.push_seen.insert(type_url.to_string(), swapped);
                    let delays = &mut shared.events.push_delays;
                    if delays.len() < MAX_EVENTS {
                        delays.push((type_url.to_string(), (pushed - swapped) as f64 / 1000.0));
                    }
                }
            }
        }
        drop(shared);
        self.registry.changed.notify_one();
    }
}

/// Add (`delta` 1) or remove (-1) one stream's type status from its group's counts.
fn count(shared: &mut Shared, group: &str, t: &TypeStatus, delta: isize) {
    if t.version_sent.is_none() {
        return;
    }
    let types = shared.sync.entry(group.to_string()).or_default();
    let sync = types.entry(t.type_url.clone()).or_default();
    sync.sent = sync.sent.saturating_add_signed(delta);
    if let Some(v) = &t.synced_version {
        let n = sync.synced.entry(v.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            sync.synced.remove(v);
        }
    }
    if sync.sent == 0 && sync.synced.is_empty() {
        types.remove(&t.type_url);
        if types.is_empty() {
            shared.sync.remove(group);
        }
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        if let Some((_, r)) = self.registry.streams.remove(&self.id) {
            let mut shared = self.registry.lock_shared();
            for t in r.types.values() {
                count(&mut shared, &r.status.group, t, -1);
            }
        }
        self.registry
            .metrics
            .streams_closed
            .fetch_add(1, Ordering::Relaxed);
        self.registry.changed.notify_one();
    }
}

fn user_agent(node: &Node) -> String {
    let version = match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
            .unwrap_or_default(),
        None => String::new(),
    };
    match (node.user_agent_name.is_empty(), version.is_empty()) {
        (true, _) => version,
        (false, true) => node.user_agent_name.clone(),
        (false, false) => format!("{} {}", node.user_agent_name, version),
    }
}

/// `google.protobuf.Struct` → JSON (numbers that are not finite become null).
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = s
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect();
    serde_json::Value::Object(map)
}

fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_counts_follow_sync_and_streams() {
        let registry = Arc::new(ProxyRegistry::new());
        let a = registry.open(Transport::DeltaAds);
        let b = registry.open(Transport::DeltaAds);
        let node = Node::default();
        a.set_node(&node, "g");
        b.set_node(&node, "g");
        let v = |_: &str| "v1";
        // Nothing sent yet: nothing to wait for.
        assert!(registry.group_in_sync("g", v));
        a.update("t", |t| t.version_sent = Some("v1".into()));
        b.update("t", |t| t.version_sent = Some("v1".into()));
        assert!(!registry.group_in_sync("g", v));
        a.update("t", |t| t.synced_version = Some("v1".into()));
        assert!(!registry.group_in_sync("g", v));
        b.update("t", |t| t.synced_version = Some("v1".into()));
        assert!(registry.group_in_sync("g", v));
        assert!(!registry.group_in_sync("g", |_| "v2"));
        assert_eq!(registry.groups_with_streams(), ["g"]);
        // A stream that goes away no longer counts.
        b.update("t", |t| t.synced_version = Some("v0".into()));
        assert!(!registry.group_in_sync("g", v));
        drop(b);
        assert!(registry.group_in_sync("g", v));
        drop(a);
        assert!(registry.groups_with_streams().is_empty());
    }

    #[test]
    fn nacks_and_first_pushes_after_a_swap_are_events() {
        let registry = Arc::new(ProxyRegistry::new());
        let h = registry.open(Transport::SotwAds);
        h.set_node(
            &Node {
                id: "n".into(),
                ..Default::default()
            },
            "g",
        );
        let swap = now_unix_ms();
        registry.mark_swap("g", swap);
        h.update("t", |t| t.last_push_unix_ms = Some(swap + 5));
        h.update("t", |t| t.last_push_unix_ms = Some(swap + 9));
        h.update("t", |t| {
            t.nacks += 1;
            t.last_nack = Some(NackStatus {
                version: "v".into(),
                nonce: "1".into(),
                client_version: String::new(),
                message: "bad".into(),
                resource_names: vec!["r".into()],
                at_unix_ms: swap,
            });
        });
        let events = registry.take_events();
        assert_eq!(events.push_delays, [("t".to_string(), 0.005)]);
        assert_eq!(events.nacks.len(), 1);
        assert_eq!(events.nacks[0].node_id, "n");
        assert_eq!(events.nacks[0].nack.message, "bad");
        assert!(registry.take_events().nacks.is_empty());
    }

    #[test]
    fn requests_are_counted_by_type_and_kind() {
        let registry = Arc::new(ProxyRegistry::new());
        let h = registry.open(Transport::SotwAds);
        h.metrics()
            .request(super::super::resource::CLUSTER, RequestKind::Ack);
        h.metrics()
            .request(super::super::resource::ENDPOINT, RequestKind::Nack);
        let m = registry.metrics();
        assert_eq!((m.requests_ack, m.requests_nack), (1, 1));
        assert_eq!(m.requests_by_type["cds"], [0, 1, 0, 0]);
        assert_eq!(m.requests_by_type["eds"], [0, 0, 1, 0]);
    }

    #[test]
    fn handle_drop_removes_stream() {
        let registry = Arc::new(ProxyRegistry::new());
        let h = registry.open(Transport::SotwAds);
        let node = Node {
            id: "n1".into(),
            user_agent_name: "envoy".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion("1.31.0".into())),
            metadata: Some(Struct {
                fields: [(
                    "NAMESPACE".to_string(),
                    Value {
                        kind: Some(Kind::StringValue("default".into())),
                    },
                )]
                .into_iter()
                .collect(),
            }),
            ..Default::default()
        };
        h.set_node(&node, "default");
        h.update("t", |t| t.pushes += 1);
        let snap = registry.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].node_id, "n1");
        assert_eq!(snap[0].user_agent, "envoy 1.31.0");
        assert_eq!(snap[0].node_metadata["NAMESPACE"], "default");
        assert_eq!(snap[0].types[0].pushes, 1);
        assert_eq!(registry.metrics().by_type["t"].connected, 1);
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json[0]["transport"], "sotw-ads");
        drop(h);
        assert!(registry.is_empty());
        assert_eq!(registry.metrics().streams_closed, 1);
    }
}
