//! Encoded resources: each resource is encoded into a `google.protobuf.Any` once, when its
//! snapshot is built, and every stream shares those bytes.

use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use prost::bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};

/// `type.googleapis.com/envoy.config.listener.v3.Listener`
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `type.googleapis.com/envoy.config.route.v3.RouteConfiguration`
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `type.googleapis.com/envoy.config.route.v3.VirtualHost` (VHDS, delta only; resources named
/// `<route configuration name>/<virtual host>`).
pub const VIRTUAL_HOST: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
/// `type.googleapis.com/envoy.config.cluster.v3.Cluster`
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment`
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The order in which a push on an aggregated stream sends types (make-before-break,
/// xds_protocol.rst "Eventual consistency considerations"): clusters, endpoints, listeners,
/// routes, virtual hosts (VHDS after RDS). Other type URLs follow in lexical order.
pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, VIRTUAL_HOST];

/// The order in which removals are sent on an aggregated delta stream: whatever references
/// a resource is removed before the resource itself (a virtual host before its clusters).
pub const REMOVAL_ORDER: [&str; 5] = [LISTENER, ROUTE, VIRTUAL_HOST, CLUSTER, ENDPOINT];

/// Whether a SotW response of this type must carry every resource of the type (the client
/// deletes what is absent). True for listeners and clusters only (xds_protocol.rst, "Grouping
/// Resources into Responses").
pub fn is_full_state(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// A short, human name for a type URL (`Cluster`, `ClusterLoadAssignment`, ...).
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit(['.', '/']).next().unwrap_or(type_url)
}

/// Sort type URLs in push order: [`PUSH_ORDER`] first, then the rest lexically.
pub fn push_rank(type_url: &str) -> (usize, &str) {
    let rank = PUSH_ORDER
        .iter()
        .position(|t| *t == type_url)
        .unwrap_or(PUSH_ORDER.len());
    (rank, type_url)
}

/// Sort key for removals on an aggregated delta stream: [`REMOVAL_ORDER`] first.
pub fn removal_rank(type_url: &str) -> (usize, &str) {
    let rank = REMOVAL_ORDER
        .iter()
        .position(|t| *t == type_url)
        .unwrap_or(REMOVAL_ORDER.len());
    (rank, type_url)
}

/// One resource, encoded once. Cheap to share: streams hold `Arc<EncodedResource>`.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedResource {
    name: String,
    type_url: String,
    /// Content hash of the encoded message (hex, 16 bytes of SHA-256). Identical content gives
    /// an identical version in every process, so restarts and replicas agree.
    version: String,
    /// The encoded `google.protobuf.Any` (type_url + value), written as-is into responses.
    any: Bytes,
    /// True for a placeholder the server made up for a requested name that does not exist.
    placeholder: bool,
    /// For an EDS cluster: the `ClusterLoadAssignment` name it waits for, read once here
    /// rather than decoded per stream per push ([`Self::eds_service_name`]).
    eds_service_name: Option<String>,
}

impl fmt::Debug for EncodedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedResource")
            .field("name", &self.name)
            .field("type_url", &self.type_url)
            .field("version", &self.version)
            .field("bytes", &self.any.len())
            .field("placeholder", &self.placeholder)
            .finish()
    }
}

/// The `ClusterLoadAssignment` name an encoded Cluster of type EDS waits for.
fn eds_service_name(cluster: &[u8]) -> Option<String> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    let decoded = Cluster::decode(cluster).ok()?;
    let eds = matches!(
        decoded.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
    );
    if !eds {
        return None;
    }
    let service_name = decoded
        .eds_cluster_config
        .map(|c| c.service_name)
        .filter(|n| !n.is_empty());
    Some(service_name.unwrap_or(decoded.name))
}

/// The version given to placeholders; real versions are hex, so it never collides.
pub const PLACEHOLDER_VERSION: &str = "placeholder";

impl EncodedResource {
    /// Wrap an already-encoded message (the `Any.value` bytes) of `type_url` named `name`.
    pub fn new(type_url: impl Into<String>, name: impl Into<String>, value: Vec<u8>) -> Self {
        let type_url = type_url.into();
        let version = content_version(&type_url, &value);
        let eds_service_name = if type_url == CLUSTER {
            eds_service_name(&value)
        } else {
            None
        };
        let any = Any {
            type_url: type_url.clone(),
            value,
        }
        .encode_to_vec();
        EncodedResource {
            name: name.into(),
            type_url,
            version,
            any: Bytes::from(any),
            placeholder: false,
            eds_service_name,
        }
    }

    /// Encode a typed message.
    pub fn from_message<M: Message + prost::Name>(name: impl Into<String>, message: &M) -> Self {
        Self::new(M::type_url(), name, message.encode_to_vec())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn type_url(&self) -> &str {
        &self.type_url
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The encoded `google.protobuf.Any`.
    pub fn any_bytes(&self) -> &Bytes {
        &self.any
    }

    pub fn is_placeholder(&self) -> bool {
        self.placeholder
    }

    /// For a Cluster of type EDS: the `ClusterLoadAssignment` it waits for
    /// (`eds_cluster_config.service_name`, else the cluster's name). `None` otherwise.
    pub fn eds_service_name(&self) -> Option<&str> {
        self.eds_service_name.as_deref()
    }

    /// Decode the `Any` back (tests, diagnostics).
    pub fn to_any(&self) -> Any {
        // Invariant: `any` was produced by `Any::encode_to_vec` in `new`.
        Any::decode(self.any.clone()).expect("EncodedResource holds a valid encoded Any")
    }
}

/// The placeholder sent in SotW for a requested endpoint or route name that does not exist,
/// so the proxy's cluster or listener leaves warming at once instead of waiting for the
/// initial fetch timeout (reference §6.1): an empty `ClusterLoadAssignment` (no endpoints) or
/// an empty `RouteConfiguration` (no virtual hosts, so 404). `None` for other types.
pub fn placeholder(type_url: &str, name: &str) -> Option<Arc<EncodedResource>> {
    let value = match type_url {
        ENDPOINT => ClusterLoadAssignment {
            cluster_name: name.to_string(),
            ..Default::default()
        }
        .encode_to_vec(),
        ROUTE => RouteConfiguration {
            name: name.to_string(),
            ..Default::default()
        }
        .encode_to_vec(),
        _ => return None,
    };
    let mut resource = EncodedResource::new(type_url, name, value);
    resource.version = PLACEHOLDER_VERSION.to_string();
    resource.placeholder = true;
    Some(Arc::new(resource))
}

/// Content hash of one encoded resource.
fn content_version(type_url: &str, value: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(type_url.as_bytes());
    hasher.update([0]);
    hasher.update(value);
    hex::encode(&hasher.finalize()[..16])
}

/// Version of a set of resources: a hash over the sorted (name, version) pairs. Used for the
/// per-type snapshot version.
pub fn set_version<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut hasher = Sha256::new();
    for (name, version) in entries {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((version.len() as u64).to_le_bytes());
        hasher.update(version.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn eds_clusters_name_the_assignment_they_wait_for() {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::{
            ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
        };
        let eds = |service_name: &str| Cluster {
            name: "outbound|80||a".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                service_name: service_name.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let named = EncodedResource::from_message("outbound|80||a", &eds("a-endpoints"));
        assert_eq!(named.eds_service_name(), Some("a-endpoints"));
        let unnamed = EncodedResource::from_message("outbound|80||a", &eds(""));
        assert_eq!(unnamed.eds_service_name(), Some("outbound|80||a"));
        let static_cluster = Cluster {
            name: "s".into(),
            ..Default::default()
        };
        let s = EncodedResource::from_message("s", &static_cluster);
        assert_eq!(s.eds_service_name(), None);
    }

    #[test]
    fn same_content_same_version_different_content_different_version() {
        let a = Cluster {
            name: "a".into(),
            ..Default::default()
        };
        let b = Cluster {
            name: "b".into(),
            ..Default::default()
        };
        let a1 = EncodedResource::from_message("a", &a);
        let a2 = EncodedResource::from_message("a", &a);
        let b1 = EncodedResource::from_message("b", &b);
        assert_eq!(a1.version(), a2.version());
        assert_ne!(a1.version(), b1.version());
        assert_eq!(a1.type_url(), CLUSTER);
        let any = a1.to_any();
        assert_eq!(any.type_url, CLUSTER);
        assert_eq!(Cluster::decode(any.value.as_slice()).unwrap(), a);
    }

    #[test]
    fn type_urls_match_envoy_types() {
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        use prost::Name;
        assert_eq!(Listener::type_url(), LISTENER);
        assert_eq!(RouteConfiguration::type_url(), ROUTE);
        assert_eq!(Cluster::type_url(), CLUSTER);
        assert_eq!(ClusterLoadAssignment::type_url(), ENDPOINT);
        assert_eq!(short_type(ENDPOINT), "ClusterLoadAssignment");
        assert_eq!(
            envoy_types::pb::envoy::config::route::v3::VirtualHost::type_url(),
            VIRTUAL_HOST
        );
        assert!(push_rank(ROUTE) < push_rank(VIRTUAL_HOST));
        assert!(removal_rank(VIRTUAL_HOST) < removal_rank(CLUSTER));
    }

    #[test]
    fn placeholders_only_for_endpoints_and_routes() {
        let cla = placeholder(ENDPOINT, "c").unwrap();
        assert!(cla.is_placeholder());
        let decoded = ClusterLoadAssignment::decode(cla.to_any().value.as_slice()).unwrap();
        assert_eq!(decoded.cluster_name, "c");
        assert!(decoded.endpoints.is_empty());
        assert!(placeholder(ROUTE, "80").is_some());
        assert!(placeholder(CLUSTER, "c").is_none());
    }
}
