//! The one place that touches translator types: `Resources` → [`Snapshot`].

use shadowplane_translator::Resources;

use super::cache::{Snapshot, SnapshotError};
use super::resource::EncodedResource;

impl Snapshot {
    /// Encode every listener, route configuration, cluster and cluster load assignment once.
    /// Names: `Listener.name`, `RouteConfiguration.name`, `Cluster.name`,
    /// `ClusterLoadAssignment.cluster_name`. Fails on a duplicate or empty name.
    pub fn from_resources(resources: &Resources) -> Result<Snapshot, SnapshotError> {
        let listeners = resources
            .listeners
            .iter()
            .map(|l| EncodedResource::from_message(l.name.clone(), l));
        let routes = resources
            .routes
            .iter()
            .map(|r| EncodedResource::from_message(r.name.clone(), r));
        let clusters = resources
            .clusters
            .iter()
            .map(|c| EncodedResource::from_message(c.name.clone(), c));
        let endpoints = resources
            .endpoints
            .iter()
            .map(|e| EncodedResource::from_message(e.cluster_name.clone(), e));
        Snapshot::new(listeners.chain(routes).chain(clusters).chain(endpoints))
    }
}
