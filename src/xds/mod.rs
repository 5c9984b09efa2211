//! The xDS server: serves snapshots of encoded Envoy resources to proxies over gRPC.
//!
//! It knows nothing of Istio: it deals in type URLs, resource names and encoded resources.
//!
//! * [`cache`]: immutable [`Snapshot`]s (per type URL: name → resource encoded once, with a
//!   content-hash version) and the [`SnapshotCache`] holding the current snapshot per node
//!   group. [`snapshot_from_translator`] is the only module that touches translator types.
//! * [`server`]: tonic services (ADS SotW + delta; LDS, RDS, CDS, EDS streams SotW + delta)
//!   and [`serve`].
//! * [`registry`]: per-stream status and counters ([`ProxyRegistry`]), per-group sync counts
//!   and a change notification for watchers.
//! * `grpc`: gRPC framing of the streams (responses in allocations of their own size,
//!   request buffers that shrink back), so an idle stream holds no copy of a big message.
//!
//! Per-stream state is small and per-push work follows what changed: snapshots share each
//! type's resources by `Arc`, the diff between two snapshots is memoized for all streams
//! ([`TypeResources::diff`]), a delta stream in sync only remembers which `TypeResources` it
//! holds, and identical subscription name sets are one shared allocation.
//!
//! Protocol behaviour is pinned by `tests/xds_conformance.rs`, which reads as the checklist
//! of `shared/reference/xds-server.md` §2.2.
//!
//! ```no_run
//! # async fn demo(resources: shadowplane_translator::Resources) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use shadowplane::xds::{serve, ProxyRegistry, Snapshot, SnapshotCache};
//!
//! let cache = Arc::new(SnapshotCache::new());
//! let snapshot = Snapshot::from_resources(&resources)?;
//! for problem in snapshot.consistent().problems() {
//!     tracing::warn!("{problem}");
//! }
//! cache.set(snapshot);
//! let registry = Arc::new(ProxyRegistry::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:18000").await?;
//! serve(listener, cache, registry, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

pub mod cache;
mod delta;
mod grpc;
pub mod registry;
pub mod resource;
pub mod server;
pub mod snapshot_from_translator;
mod sotw;
mod stream;
pub mod subscription;
pub mod wire;

pub use cache::{
    ConsistencyReport, MissingReference, NodeGrouping, Snapshot, SnapshotCache, SnapshotError,
    StreamGrouping, StreamInfo, TypeDiff, TypeResources, DEFAULT_GROUP,
};
pub use registry::{
    MetricsSnapshot, NackEvent, NackStatus, ProxyRegistry, ProxyStatus, RegistryEvents, SyncState,
    Transport, TypeMetrics, TypeStatus,
};
pub use resource::EncodedResource;
pub use server::{serve, serve_with_options, ServeError, XdsServices};
pub use subscription::LegacyWildcard;

/// Tunables of the xDS server. `Default` is what `shadowplane serve` should use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Which types read an empty SotW name list (or an initial empty delta subscribe) as a
    /// wildcard subscription.
    pub legacy_wildcard: LegacyWildcard,
    /// SotW: answer a requested `ClusterLoadAssignment` / `RouteConfiguration` name that the
    /// snapshot lacks with an empty placeholder, so the proxy's cluster or listener leaves
    /// warming at once instead of after Envoy's initial fetch timeout (reference §6.1). The
    /// name is listed as `missing` in the registry either way. Delta always answers with
    /// `removed_resources`, as the spec requires.
    pub placeholders_for_missing: bool,
    /// Sent as `control_plane.identifier` in every response (Envoy shows it in config dumps).
    pub control_plane_id: Option<String>,
    /// Largest request the server accepts (gRPC default 4 MiB).
    pub max_request_bytes: usize,
    /// Responses larger than this are logged at `warn` and counted (Envoy's default gRPC
    /// receive limit is 4 MiB... and many proxies in front of it have lower ones).
    pub warn_response_bytes: usize,
    /// Close connections after this age (with `max_connection_age_grace`) so proxies
    /// reconnect and spread over replicas (istio: 30 min). `None`: never.
    pub max_connection_age: Option<Duration>,
    /// After `max_connection_age`, how long open streams get before the connection is cut.
    pub max_connection_age_grace: Option<Duration>,
    /// Responses buffered per stream before the stream's task waits for the client.
    pub stream_buffer: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            legacy_wildcard: LegacyWildcard::default(),
            placeholders_for_missing: true,
            control_plane_id: Some("shadowplane".to_string()),
            max_request_bytes: 4 * 1024 * 1024,
            warn_response_bytes: 4 * 1024 * 1024,
            max_connection_age: None,
            max_connection_age_grace: None,
            stream_buffer: 8,
        }
    }
}
