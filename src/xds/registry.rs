//! Who is connected and what they have: per-stream status (node, per type URL: versions and
//! nonces sent and acknowledged, last NACK with Envoy's message, subscribed and missing
//! names) and server-wide counters. Plain Rust API with `serde::Serialize` output; the admin
//! page and Prometheus text are built on top of it elsewhere.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use serde::Serialize;

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
    /// `*` first if wildcard, then explicit names.
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

/// Server-wide counters (simple atomics).
#[derive(Debug, Default)]
pub struct XdsMetrics {
    initial_requests: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    stale: AtomicU64,
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

impl XdsMetrics {
    pub(crate) fn request(&self, kind: RequestKind) {
        let counter = match kind {
            RequestKind::Initial => &self.initial_requests,
            RequestKind::Ack => &self.acks,
            RequestKind::Nack => &self.nacks,
            RequestKind::Stale => &self.stale,
        };
        counter.fetch_add(1, Ordering::Relaxed);
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
    types: BTreeMap<String, TypeStatus>,
}

/// Connected streams and counters. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    streams: DashMap<u64, StreamRecord>,
    next_id: AtomicU64,
    metrics: XdsMetrics,
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
                s.types = r.types.values().cloned().collect();
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
            requests_initial: m.initial_requests.load(Ordering::Relaxed),
            requests_ack: m.acks.load(Ordering::Relaxed),
            requests_nack: m.nacks.load(Ordering::Relaxed),
            requests_stale: m.stale.load(Ordering::Relaxed),
            streams_opened: m.streams_opened.load(Ordering::Relaxed),
            streams_closed: m.streams_closed.load(Ordering::Relaxed),
            streams_connected: self.streams.len() as u64,
            oversized_responses: m.oversized_responses.load(Ordering::Relaxed),
            by_type,
        }
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
            },
        );
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

    /// Update (creating if needed) the status of one type.
    pub fn update(&self, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(mut r) = self.registry.streams.get_mut(&self.id) {
            let entry = r
                .types
                .entry(type_url.to_string())
                .or_insert_with(|| TypeStatus {
                    type_url: type_url.to_string(),
                    ..Default::default()
                });
            f(entry);
        }
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.registry.streams.remove(&self.id);
        self.registry
            .metrics
            .streams_closed
            .fetch_add(1, Ordering::Relaxed);
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
