//! The one place that touches translator types: `Resources` → [`Snapshot`].

use prost::Name;
use shadowplane_translator::{canonical, Resources};

use super::cache::{Snapshot, SnapshotError};
use super::resource::EncodedResource;

impl Snapshot {
    /// Encode every listener, route configuration, cluster and cluster load assignment once,
    /// canonically (map entries in a fixed order), so versions are the same in every process.
    /// Names: `Listener.name`, `RouteConfiguration.name`, `Cluster.name`,
    /// `ClusterLoadAssignment.cluster_name`. Fails on a duplicate or empty name.
    pub fn from_resources(resources: &Resources) -> Result<Snapshot, SnapshotError> {
        let listeners = resources
            .listeners
            .iter()
            .map(|l| encoded(l.name.clone(), l));
        let routes = resources.routes.iter().map(|r| encoded(r.name.clone(), r));
        let clusters = resources
            .clusters
            .iter()
            .map(|c| encoded(c.name.clone(), c));
        let endpoints = resources
            .endpoints
            .iter()
            .map(|e| encoded(e.cluster_name.clone(), e));
        Snapshot::new(listeners.chain(routes).chain(clusters).chain(endpoints))
    }
}

/// Canonical bytes: envoy-types' `HashMap` fields would otherwise encode in random order and
/// give the same content a different version after a restart or on another replica.
fn encoded<M: prost::Message + Name>(name: String, message: &M) -> EncodedResource {
    EncodedResource::new(M::type_url(), name, canonical::encode(message))
}

#[cfg(test)]
mod tests {
    use shadowplane_translator::{translate_files, Options, SourceFile};

    use super::*;

    /// A route with both a fault and a CORS policy has two `typed_per_filter_config` entries:
    /// the case where prost's encoding order would be random.
    const FAULT_AND_CORS: &str =
        include_str!("../../testdata/translate/vs-fault-and-cors/input.yaml");

    #[test]
    fn versions_are_the_same_for_the_same_config() {
        let versions = || {
            let files = [SourceFile {
                path: "fc.yaml".into(),
                text: FAULT_AND_CORS.into(),
            }];
            let translation = translate_files(&files, &Options::default());
            assert!(!translation.has_errors(), "{:?}", translation.diagnostics);
            Snapshot::from_resources(&translation.resources)
                .unwrap()
                .versions()
        };
        let first = versions();
        for _ in 0..10 {
            assert_eq!(versions(), first);
        }
    }
}
