//! The one place that touches translator types: `Resources` → [`Snapshot`].

use prost::Name;
use shadowplane_translator::xds::virtual_host::split_virtual_hosts;
use shadowplane_translator::{canonical, Resources};

use super::cache::{Snapshot, SnapshotError};
use super::resource::EncodedResource;

impl Snapshot {
    /// Encode every listener, route configuration, cluster and cluster load assignment once,
    /// canonically (map entries in a fixed order), so versions are the same in every process.
    /// Names: `Listener.name`, `RouteConfiguration.name`, `Cluster.name`,
    /// `ClusterLoadAssignment.cluster_name`, and for the virtual hosts of a route configuration
    /// with a `vhds` block, `VirtualHost.name` (`<route configuration>/<virtual host>`). Fails
    /// on a duplicate or empty name.
    pub fn from_resources(resources: &Resources) -> Result<Snapshot, SnapshotError> {
        let listeners = resources
            .listeners
            .iter()
            .map(|l| encoded(l.name.clone(), l));
        // A route configuration with a `vhds` block (translator `Options::vhds`) is served
        // without its virtual hosts, which become `VirtualHost` resources of their own.
        let mut vhds_routes: Vec<_> = resources
            .routes
            .iter()
            .filter(|r| r.vhds.is_some())
            .cloned()
            .collect();
        let virtual_hosts = split_virtual_hosts(&mut vhds_routes);
        let routes = resources
            .routes
            .iter()
            .filter(|r| r.vhds.is_none())
            .chain(vhds_routes.iter())
            .map(|r| encoded(r.name.clone(), r));
        let virtual_hosts = virtual_hosts.iter().map(|v| encoded(v.name.clone(), v));
        let clusters = resources
            .clusters
            .iter()
            .map(|c| encoded(c.name.clone(), c));
        let endpoints = resources
            .endpoints
            .iter()
            .map(|e| encoded(e.cluster_name.clone(), e));
        Snapshot::new(
            listeners
                .chain(routes)
                .chain(clusters)
                .chain(endpoints)
                .chain(virtual_hosts),
        )
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

    #[test]
    fn vhds_route_configurations_are_served_without_their_virtual_hosts() {
        use crate::xds::resource::{ROUTE, VIRTUAL_HOST};
        use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
        use prost::Message;
        let files = [SourceFile {
            path: "fc.yaml".into(),
            text: FAULT_AND_CORS.into(),
        }];
        let plain = translate_files(&files, &Options::default());
        let options = Options {
            vhds: true,
            ..Options::default()
        };
        let vhds = translate_files(&files, &options);
        let plain = Snapshot::from_resources(&plain.resources).unwrap();
        let snapshot = Snapshot::from_resources(&vhds.resources).unwrap();
        assert!(plain.resources(VIRTUAL_HOST).is_empty());
        let mut expected = Vec::new();
        for (name, r) in plain.resources(ROUTE) {
            let rc = RouteConfiguration::decode(r.to_any().value.as_slice()).unwrap();
            for vh in rc.virtual_hosts {
                expected.push((format!("{name}/{}", vh.name), vh));
            }
            let served = snapshot.get(ROUTE, name).expect("route configuration kept");
            let served = RouteConfiguration::decode(served.to_any().value.as_slice()).unwrap();
            assert!(served.virtual_hosts.is_empty());
            assert!(served.vhds.is_some());
        }
        assert!(!expected.is_empty());
        assert_eq!(snapshot.resources(VIRTUAL_HOST).len(), expected.len());
        for (name, mut vh) in expected {
            let served = snapshot
                .get(VIRTUAL_HOST, &name)
                .expect("virtual host served");
            let served = VirtualHost::decode(served.to_any().value.as_slice()).unwrap();
            vh.name = name;
            assert_eq!(served, vh);
        }
    }
}
