//! Immutable snapshots of encoded resources and the cache that holds the current snapshot per
//! node group. The cache knows nothing of streams: streams hold a `watch::Receiver` and are
//! woken when their group's snapshot is replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::Message;
use serde::Serialize;
use tokio::sync::watch;

use super::registry::Transport;
use super::resource::{self, set_version, EncodedResource};
use super::sotw::{SotwFilterEntry, SotwPlanEntry};

/// Errors building a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("duplicate {type_name} name {name:?}: every resource of a type needs a unique name; rename one of them")]
    DuplicateName { type_name: String, name: String },
    #[error("{type_name} resource has an empty name: give it a name")]
    EmptyName { type_name: String },
}

/// The resources of one type in a snapshot, by name, with the type's version. Snapshots share
/// it by `Arc`, and a stream that is in sync with a snapshot remembers "I hold this
/// `TypeResources`" instead of a name → version map of its own.
pub struct TypeResources {
    version: String,
    resources: BTreeMap<String, Arc<EncodedResource>>,
    /// [`TypeResources::diff`]s from earlier `TypeResources` to this one, memoized: every
    /// stream making the same move shares one diff. A few entries, the newest last.
    diffs: Mutex<Vec<(Weak<TypeResources>, Arc<TypeDiff>)>>,
    /// State-of-the-world responses to this `TypeResources`, memoized by what the stream
    /// had and what it subscribes to: streams with the same subscription and the same
    /// last response share one plan (see `sotw::shared_plan`). A few entries, newest last.
    pub(crate) sotw_plans: Mutex<Vec<SotwPlanEntry>>,
    /// What the client has, cut down to a narrower subscription, memoized the same way so
    /// that streams dropping the same names keep sharing one `sent` map (and so one plan).
    pub(crate) sotw_filters: Mutex<Vec<SotwFilterEntry>>,
}

/// How many SotW plans a `TypeResources` remembers (distinct subscriptions beyond that
/// recompute).
pub(crate) const SOTW_PLAN_MEMO: usize = 64;

/// How many diffs a `TypeResources` remembers (streams lagging further behind recompute).
const DIFF_MEMO: usize = 4;

impl Clone for TypeResources {
    fn clone(&self) -> Self {
        TypeResources::from_map(self.version.clone(), self.resources.clone())
    }
}

impl PartialEq for TypeResources {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.resources == other.resources
    }
}

impl Eq for TypeResources {}

impl fmt::Debug for TypeResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypeResources")
            .field("version", &self.version)
            .field("names", &self.resources.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What changed in one type between two snapshots: a pure function of the two, see
/// [`TypeResources::diff`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TypeDiff {
    /// Resources that are new or whose version changed, in name order.
    pub changed: Vec<Arc<EncodedResource>>,
    /// Names the old one has and the new one lacks, in order.
    pub removed: Vec<String>,
    /// Whether the set of names differs (something added or removed).
    pub names_changed: bool,
}

impl TypeDiff {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

fn empty_diff() -> Arc<TypeDiff> {
    static EMPTY: OnceLock<Arc<TypeDiff>> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::new(TypeDiff::default())).clone()
}

impl TypeResources {
    fn from_map(version: String, resources: BTreeMap<String, Arc<EncodedResource>>) -> Self {
        TypeResources {
            version,
            resources,
            diffs: Mutex::new(Vec::new()),
            sotw_plans: Mutex::new(Vec::new()),
            sotw_filters: Mutex::new(Vec::new()),
        }
    }

    /// Whether this `TypeResources` keeps memos: not the process-wide empty one that every
    /// snapshot lacking a type shares (a memo there would live, and pin what it holds,
    /// forever).
    pub(crate) fn keeps_memos(&self) -> bool {
        !std::ptr::eq(self, Arc::as_ptr(empty_type()))
    }

    /// Hash of the sorted (name, content hash) pairs: identical content gives an identical
    /// version on every run and every replica.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn resources(&self) -> &BTreeMap<String, Arc<EncodedResource>> {
        &self.resources
    }

    pub fn get(&self, name: &str) -> Option<&Arc<EncodedResource>> {
        self.resources.get(name)
    }

    /// What changed from `old` to `new`. Computed once per pair and remembered by `new`, so
    /// the thousand streams that move from one snapshot to the next share the work; equal
    /// versions (content hashes of the whole set) give the empty diff without a walk.
    pub fn diff(old: &Arc<TypeResources>, new: &Arc<TypeResources>) -> Arc<TypeDiff> {
        if Arc::ptr_eq(old, new) || old.version == new.version {
            return empty_diff();
        }
        let mut memo = new.diffs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, d)) = memo
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(old)))
        {
            return d.clone();
        }
        let diff = Arc::new(compute_diff(&old.resources, &new.resources));
        memo.retain(|(w, _)| w.strong_count() > 0);
        if memo.len() >= DIFF_MEMO {
            memo.remove(0);
        }
        memo.push((Arc::downgrade(old), diff.clone()));
        diff
    }
}

/// One merge walk over two maps sorted by name.
fn compute_diff(
    old: &BTreeMap<String, Arc<EncodedResource>>,
    new: &BTreeMap<String, Arc<EncodedResource>>,
) -> TypeDiff {
    let mut diff = TypeDiff::default();
    let mut o = old.iter().peekable();
    let mut n = new.iter().peekable();
    loop {
        let order = match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((on, _)), Some((nn, _))) => on.cmp(nn),
        };
        match order {
            std::cmp::Ordering::Less => {
                if let Some((name, _)) = o.next() {
                    diff.removed.push(name.clone());
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((_, r)) = n.next() {
                    diff.changed.push(r.clone());
                    diff.names_changed = true;
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((_, or)), Some((_, nr))) = (o.next(), n.next()) {
                    if or.version() != nr.version() {
                        diff.changed.push(nr.clone());
                    }
                }
            }
        }
    }
    diff.names_changed |= !diff.removed.is_empty();
    diff
}

fn empty_version() -> &'static str {
    static EMPTY: OnceLock<String> = OnceLock::new();
    EMPTY.get_or_init(|| set_version([]))
}

fn empty_type() -> &'static Arc<TypeResources> {
    static EMPTY: OnceLock<Arc<TypeResources>> = OnceLock::new();
    EMPTY.get_or_init(|| {
        Arc::new(TypeResources::from_map(
            empty_version().to_string(),
            BTreeMap::new(),
        ))
    })
}

/// An immutable set of encoded resources, per type URL then name. Each resource was encoded
/// once when the snapshot was built; every stream shares those bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    types: BTreeMap<String, Arc<TypeResources>>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.types.iter()).finish()
    }
}

impl Snapshot {
    /// A snapshot with no resources (every type is empty).
    pub fn empty() -> Self {
        Snapshot::default()
    }

    /// Build from already-encoded resources. Fails on an empty or duplicate name within a
    /// type (a response must never carry one name twice).
    pub fn new(
        resources: impl IntoIterator<Item = EncodedResource>,
    ) -> Result<Snapshot, SnapshotError> {
        let mut by_type: BTreeMap<String, BTreeMap<String, Arc<EncodedResource>>> = BTreeMap::new();
        for r in resources {
            let type_name = resource::short_type(r.type_url()).to_string();
            if r.name().is_empty() {
                return Err(SnapshotError::EmptyName { type_name });
            }
            let entry = by_type.entry(r.type_url().to_string()).or_default();
            if entry.contains_key(r.name()) {
                return Err(SnapshotError::DuplicateName {
                    type_name,
                    name: r.name().to_string(),
                });
            }
            entry.insert(r.name().to_string(), Arc::new(r));
        }
        let types = by_type
            .into_iter()
            .map(|(type_url, resources)| {
                let version = set_version(
                    resources
                        .iter()
                        .map(|(name, r)| (name.as_str(), r.version())),
                );
                (
                    type_url,
                    Arc::new(TypeResources::from_map(version, resources)),
                )
            })
            .collect();
        Ok(Snapshot { types })
    }

    /// Build from `(type_url, name, encoded message)` triples; each message is wrapped in a
    /// `google.protobuf.Any` of that type URL.
    pub fn from_encoded<T, N>(
        items: impl IntoIterator<Item = (T, N, Vec<u8>)>,
    ) -> Result<Snapshot, SnapshotError>
    where
        T: Into<String>,
        N: Into<String>,
    {
        Snapshot::new(
            items
                .into_iter()
                .map(|(t, n, v)| EncodedResource::new(t, n, v)),
        )
    }

    /// The version of a type: a hash of its resources' names and content hashes. A type with
    /// no resources has the version of the empty set.
    pub fn version(&self, type_url: &str) -> &str {
        self.types
            .get(type_url)
            .map(|t| t.version.as_str())
            .unwrap_or_else(|| empty_version())
    }

    /// The resources of a type by name (empty for a type the snapshot does not have).
    pub fn resources(&self, type_url: &str) -> &BTreeMap<String, Arc<EncodedResource>> {
        &self.type_resources(type_url).resources
    }

    /// The resources of a type with their version, shared (an empty set for a type the
    /// snapshot does not have).
    pub fn type_resources(&self, type_url: &str) -> &Arc<TypeResources> {
        self.types.get(type_url).unwrap_or_else(|| empty_type())
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<EncodedResource>> {
        self.types.get(type_url).and_then(|t| t.resources.get(name))
    }

    /// Type URLs that have at least one resource, sorted.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// Number of resources over all types.
    pub fn len(&self) -> usize {
        self.types.values().map(|t| t.resources.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per type URL, its version (for status pages).
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.types
            .iter()
            .map(|(t, r)| (t.clone(), r.version.clone()))
            .collect()
    }

    /// Cross-reference check, a diagnostic (the server serves inconsistent snapshots too):
    /// every RDS name a listener's HTTP connection manager references exists, and every EDS
    /// cluster has a `ClusterLoadAssignment`.
    pub fn consistent(&self) -> ConsistencyReport {
        let mut report = ConsistencyReport::default();
        let routes = self.resources(resource::ROUTE);
        for (name, r) in self.resources(resource::LISTENER) {
            let listener = match Listener::decode(r.to_any().value.as_slice()) {
                Ok(l) => l,
                Err(e) => {
                    report.undecodable.push(format!("listener {name:?}: {e}"));
                    continue;
                }
            };
            for route in rds_names(&listener) {
                if !routes.contains_key(&route) {
                    report.missing_routes.push(MissingReference {
                        referrer: name.clone(),
                        name: route,
                    });
                }
            }
        }
        let endpoints = self.resources(resource::ENDPOINT);
        for (name, r) in self.resources(resource::CLUSTER) {
            let cluster = match Cluster::decode(r.to_any().value.as_slice()) {
                Ok(c) => c,
                Err(e) => {
                    report.undecodable.push(format!("cluster {name:?}: {e}"));
                    continue;
                }
            };
            if let Some(cla) = eds_name(&cluster) {
                if !endpoints.contains_key(&cla) {
                    report.missing_endpoints.push(MissingReference {
                        referrer: name.clone(),
                        name: cla,
                    });
                }
            }
        }
        report
    }
}

/// The RDS route names a listener's HTTP connection managers reference, sorted, unique.
fn rds_names(listener: &Listener) -> BTreeSet<String> {
    let chains = listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter());
    let mut names = BTreeSet::new();
    for chain in chains {
        for filter in &chain.filters {
            let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
                continue;
            };
            if !any.type_url.ends_with("HttpConnectionManager") {
                continue;
            }
            let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                names.insert(rds.route_config_name);
            }
        }
    }
    names
}

/// The `ClusterLoadAssignment` name of an EDS cluster (`service_name`, else the cluster name).
fn eds_name(cluster: &Cluster) -> Option<String> {
    let eds = matches!(
        cluster.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
    );
    if !eds {
        return None;
    }
    let service_name = cluster
        .eds_cluster_config
        .as_ref()
        .map(|c| c.service_name.as_str())
        .unwrap_or("");
    Some(if service_name.is_empty() {
        cluster.name.clone()
    } else {
        service_name.to_string()
    })
}

/// A reference from one resource to another that the snapshot lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingReference {
    /// The listener or cluster that holds the reference.
    pub referrer: String,
    /// The route configuration or cluster load assignment it names.
    pub name: String,
}

/// Result of [`Snapshot::consistent`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConsistencyReport {
    /// Listener → RDS route configuration name that is not in the snapshot.
    pub missing_routes: Vec<MissingReference>,
    /// EDS cluster → cluster load assignment that is not in the snapshot.
    pub missing_endpoints: Vec<MissingReference>,
    /// Listeners or clusters whose bytes did not decode.
    pub undecodable: Vec<String>,
}

impl ConsistencyReport {
    pub fn is_consistent(&self) -> bool {
        self.missing_routes.is_empty()
            && self.missing_endpoints.is_empty()
            && self.undecodable.is_empty()
    }

    /// One lowercase line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in &self.missing_routes {
            out.push(format!(
                "listener {:?} references route configuration {:?}, which the snapshot does not have",
                m.referrer, m.name
            ));
        }
        for m in &self.missing_endpoints {
            out.push(format!(
                "eds cluster {:?} has no cluster load assignment {:?} in the snapshot",
                m.referrer, m.name
            ));
        }
        for u in &self.undecodable {
            out.push(format!("cannot decode {u}"));
        }
        out
    }
}

/// Maps a proxy's node to the group whose snapshot it is served.
pub type NodeGrouping = Arc<dyn Fn(&Node) -> String + Send + Sync>;

/// What the server knows of a stream when it picks the group of the node on it: which
/// discovery service the proxy opened it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    pub transport: Transport,
    /// The only type a per-type stream serves (`None` on ADS).
    pub type_url: Option<&'static str>,
}

impl StreamInfo {
    /// A state-of-the-world ADS stream.
    pub const SOTW_ADS: StreamInfo = StreamInfo {
        transport: Transport::SotwAds,
        type_url: None,
    };

    /// Whether the stream is aggregated (ADS) rather than one type's discovery service.
    pub fn is_aggregated(&self) -> bool {
        matches!(self.transport, Transport::SotwAds | Transport::DeltaAds)
    }
}

/// Maps a proxy's node, and the stream it arrived on, to the group whose snapshot that stream
/// is served. Two streams of one proxy (say its LDS and its RDS stream) may be in different
/// groups.
pub type StreamGrouping = Arc<dyn Fn(&Node, &StreamInfo) -> String + Send + Sync>;

/// The group every node belongs to with the default grouping.
pub const DEFAULT_GROUP: &str = "default";

/// Current snapshot per node group, swapped atomically; streams watch their group.
pub struct SnapshotCache {
    groups: Mutex<BTreeMap<String, watch::Sender<Option<Arc<Snapshot>>>>>,
    grouping: StreamGrouping,
}

impl fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotCache")
            .field("groups", &self.groups())
            .finish()
    }
}

impl Default for SnapshotCache {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotCache {
    /// Every node in [`DEFAULT_GROUP`].
    pub fn new() -> Self {
        Self::with_grouping(Arc::new(|_: &Node| DEFAULT_GROUP.to_string()))
    }

    /// Nodes grouped by `grouping` (e.g. by `node.cluster` or a metadata key), one snapshot
    /// per group.
    pub fn with_grouping(grouping: NodeGrouping) -> Self {
        Self::with_stream_grouping(Arc::new(move |node: &Node, _: &StreamInfo| grouping(node)))
    }

    /// Streams grouped by their node and by how they connected (e.g. ADS or per-type), one
    /// snapshot per group.
    pub fn with_stream_grouping(grouping: StreamGrouping) -> Self {
        SnapshotCache {
            groups: Mutex::new(BTreeMap::new()),
            grouping,
        }
    }

    /// The group a node is served from on a state-of-the-world ADS stream.
    pub fn group_for(&self, node: &Node) -> String {
        self.group_for_stream(node, &StreamInfo::SOTW_ADS)
    }

    /// The group a node is served from on a stream like `stream`.
    pub fn group_for_stream(&self, node: &Node, stream: &StreamInfo) -> String {
        (self.grouping)(node, stream)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, watch::Sender<Option<Arc<Snapshot>>>>> {
        // A poisoned lock only means another thread panicked while holding it; the map is
        // still valid (every operation on it is a single insert or lookup).
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace the snapshot of `group` and wake its streams. Setting a snapshot identical
    /// to the current one wakes nobody. Returns the snapshot as stored.
    pub fn set_snapshot(&self, group: &str, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        let mut groups = self.lock();
        let sender = groups
            .entry(group.to_string())
            .or_insert_with(|| watch::channel(None).0);
        let stored = snapshot.clone();
        sender.send_if_modified(move |current| {
            if current.as_deref() == Some(&*snapshot) {
                false
            } else {
                *current = Some(snapshot);
                true
            }
        });
        stored
    }

    /// Replace the snapshot of [`DEFAULT_GROUP`].
    pub fn set(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        self.set_snapshot(DEFAULT_GROUP, snapshot)
    }

    /// The current snapshot of a group, if one was set.
    pub fn snapshot(&self, group: &str) -> Option<Arc<Snapshot>> {
        self.lock().get(group).and_then(|s| s.borrow().clone())
    }

    /// Forget a group's snapshot; its streams keep what they have and wait for the next one.
    pub fn clear(&self, group: &str) {
        if let Some(sender) = self.lock().get(group) {
            sender.send_replace(None);
        }
    }

    /// A receiver for a group's snapshot (`None` until one is set).
    pub fn watch(&self, group: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.lock()
            .entry(group.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Groups known to the cache (set or watched), sorted.
    pub fn groups(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Number of live receivers over all groups (one per open stream): lets tests and the
    /// admin page check that closed streams release their watch.
    pub fn watcher_count(&self) -> usize {
        self.lock().values().map(|s| s.receiver_count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Name;

    fn eds_cluster(name: &str) -> EncodedResource {
        EncodedResource::from_message(
            name,
            &Cluster {
                name: name.into(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
                eds_cluster_config: Some(EdsClusterConfig::default()),
                ..Default::default()
            },
        )
    }

    fn rds_listener(name: &str, route: &str) -> EncodedResource {
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: route.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        EncodedResource::from_message(
            name,
            &Listener {
                name: name.into(),
                filter_chains: vec![FilterChain {
                    filters: vec![Filter {
                        name: "envoy.filters.network.http_connection_manager".into(),
                        config_type: Some(ConfigType::TypedConfig(Any {
                            type_url: HttpConnectionManager::type_url(),
                            value: hcm.encode_to_vec(),
                        })),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    #[test]
    fn stream_grouping_sees_how_the_stream_connected() {
        let cache = SnapshotCache::with_stream_grouping(Arc::new(|n: &Node, s: &StreamInfo| {
            let how = if s.is_aggregated() { "ads" } else { "per-type" };
            format!("{}/{how}/{}", n.id, s.type_url.unwrap_or("*"))
        }));
        let node = Node {
            id: "n".into(),
            ..Default::default()
        };
        assert_eq!(cache.group_for(&node), "n/ads/*");
        let lds = StreamInfo {
            transport: Transport::Delta,
            type_url: Some(LISTENER),
        };
        assert!(!lds.is_aggregated());
        assert_eq!(
            cache.group_for_stream(&node, &lds),
            format!("n/per-type/{LISTENER}")
        );
        // A node-only grouping ignores the stream.
        let by_node = SnapshotCache::with_grouping(Arc::new(|n: &Node| n.id.clone()));
        assert_eq!(by_node.group_for_stream(&node, &lds), "n");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let err = Snapshot::new([eds_cluster("a"), eds_cluster("a")]).unwrap_err();
        assert_eq!(
            err,
            SnapshotError::DuplicateName {
                type_name: "Cluster".into(),
                name: "a".into()
            }
        );
    }

    #[test]
    fn versions_are_content_derived_and_per_type() {
        let s1 = Snapshot::new([eds_cluster("a"), eds_cluster("b")]).unwrap();
        let s2 = Snapshot::new([eds_cluster("b"), eds_cluster("a")]).unwrap();
        assert_eq!(s1.version(CLUSTER), s2.version(CLUSTER));
        let s3 = Snapshot::new([eds_cluster("a")]).unwrap();
        assert_ne!(s1.version(CLUSTER), s3.version(CLUSTER));
        assert_eq!(s1.version(LISTENER), Snapshot::empty().version(LISTENER));
        assert!(s1.resources(ROUTE).is_empty());
    }

    #[test]
    fn consistency_reports_missing_routes_and_endpoints() {
        let cla = EncodedResource::from_message(
            "a",
            &ClusterLoadAssignment {
                cluster_name: "a".into(),
                ..Default::default()
            },
        );
        let rc = EncodedResource::from_message(
            "80",
            &RouteConfiguration {
                name: "80".into(),
                ..Default::default()
            },
        );
        let good = Snapshot::new([
            eds_cluster("a"),
            cla.clone(),
            rds_listener("0.0.0.0_80", "80"),
            rc,
        ])
        .unwrap();
        assert!(good.consistent().is_consistent(), "{:?}", good.consistent());

        let bad = Snapshot::new([
            eds_cluster("a"),
            eds_cluster("b"),
            cla,
            rds_listener("l", "81"),
        ])
        .unwrap();
        let report = bad.consistent();
        assert_eq!(
            report.missing_routes,
            vec![MissingReference {
                referrer: "l".into(),
                name: "81".into()
            }]
        );
        assert_eq!(
            report.missing_endpoints,
            vec![MissingReference {
                referrer: "b".into(),
                name: "b".into()
            }]
        );
        assert_eq!(report.problems().len(), 2);
        assert!(bad.resources(ENDPOINT).contains_key("a"));
    }

    #[test]
    fn diffs_are_computed_once_per_pair() {
        let s1 = Snapshot::new([eds_cluster("a"), eds_cluster("b"), eds_cluster("c")]).unwrap();
        let b2 = EncodedResource::from_message(
            "b",
            &Cluster {
                name: "b".into(),
                connect_timeout: Some(Default::default()),
                ..Default::default()
            },
        );
        let s2 = Snapshot::new([eds_cluster("a"), b2, eds_cluster("d")]).unwrap();
        let (old, new) = (s1.type_resources(CLUSTER), s2.type_resources(CLUSTER));
        let diff = TypeResources::diff(old, new);
        let changed: Vec<&str> = diff.changed.iter().map(|r| r.name()).collect();
        assert_eq!(changed, ["b", "d"]);
        assert_eq!(diff.removed, ["c"]);
        assert!(diff.names_changed);
        // The same pair gives the same (shared) diff.
        assert!(Arc::ptr_eq(&diff, &TypeResources::diff(old, new)));
        // Same content: empty, without a walk.
        let same = Snapshot::new([eds_cluster("c"), eds_cluster("b"), eds_cluster("a")]).unwrap();
        let none = TypeResources::diff(old, same.type_resources(CLUSTER));
        assert!(none.is_empty() && !none.names_changed);
        // A type a snapshot lacks is the empty set.
        let gone = TypeResources::diff(old, Snapshot::empty().type_resources(CLUSTER));
        assert_eq!(gone.removed, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn cache_notifies_only_on_change() {
        let cache = SnapshotCache::new();
        let mut rx = cache.watch(DEFAULT_GROUP);
        assert!(rx.borrow().is_none());
        cache.set(Snapshot::new([eds_cluster("a")]).unwrap());
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        cache.set(Snapshot::new([eds_cluster("a")]).unwrap());
        assert!(
            !rx.has_changed().unwrap(),
            "identical snapshot must not wake streams"
        );
        cache.set(Snapshot::new([eds_cluster("b")]).unwrap());
        assert!(rx.has_changed().unwrap());
        assert_eq!(cache.watcher_count(), 1);
        drop(rx);
        assert_eq!(cache.watcher_count(), 0);
    }
}
