//! A cluster's endpoints → `envoy.config.endpoint.v3.ClusterLoadAssignment`, served over EDS
//! for EDS clusters and inlined for DNS clusters and the static bootstrap.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3 as core_v3;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_v3;

use super::{socket_address, uint32};
use crate::ir;

/// The assignment named like the cluster, with one `LocalityLbEndpoints` per locality (no
/// locality first, then by locality name), each weighted by the sum of its endpoints' weights
/// (an endpoint without a weight counts 1). No endpoints: an empty assignment.
pub fn build_cluster_load_assignment(cluster: &ir::Cluster) -> endpoint_v3::ClusterLoadAssignment {
    let mut by_locality: BTreeMap<Option<&str>, Vec<&ir::Endpoint>> = BTreeMap::new();
    for ep in &cluster.endpoints {
        by_locality
            .entry(ep.locality.as_deref())
            .or_default()
            .push(ep);
    }
    let endpoints = by_locality
        .into_iter()
        .map(|(locality, eps)| build_locality_lb_endpoints(locality, &eps))
        .collect();
    endpoint_v3::ClusterLoadAssignment {
        cluster_name: cluster.name.clone(),
        endpoints,
        ..Default::default()
    }
}

/// An endpoint's weight; 0 means unset (Istio's `weight` is a plain proto3 uint32 and Envoy
/// rejects a zero `load_balancing_weight`).
fn weight(ep: &ir::Endpoint) -> Option<u32> {
    ep.weight.filter(|w| *w > 0)
}

fn build_locality_lb_endpoints(
    locality: Option<&str>,
    eps: &[&ir::Endpoint],
) -> endpoint_v3::LocalityLbEndpoints {
    let total = eps
        .iter()
        .fold(0u32, |sum, ep| sum.saturating_add(weight(ep).unwrap_or(1)));
    endpoint_v3::LocalityLbEndpoints {
        locality: locality.map(build_locality),
        lb_endpoints: eps.iter().map(|ep| build_lb_endpoint(ep)).collect(),
        load_balancing_weight: Some(uint32(total)),
        ..Default::default()
    }
}

/// Istio's `region/zone/subzone` locality string.
fn build_locality(locality: &str) -> core_v3::Locality {
    let mut parts = locality.splitn(3, '/');
    let mut next = || parts.next().unwrap_or_default().to_string();
    core_v3::Locality {
        region: next(),
        zone: next(),
        sub_zone: next(),
    }
}

fn build_lb_endpoint(ep: &ir::Endpoint) -> endpoint_v3::LbEndpoint {
    endpoint_v3::LbEndpoint {
        host_identifier: Some(endpoint_v3::lb_endpoint::HostIdentifier::Endpoint(
            endpoint_v3::Endpoint {
                address: Some(socket_address(&ep.address, ep.port)),
                ..Default::default()
            },
        )),
        load_balancing_weight: weight(ep).map(uint32),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn endpoint(
        address: &str,
        port: u32,
        weight: Option<u32>,
        locality: Option<&str>,
    ) -> ir::Endpoint {
        ir::Endpoint {
            address: address.to_string(),
            port,
            weight,
            locality: locality.map(str::to_string),
        }
    }

    fn cluster(endpoints: Vec<ir::Endpoint>) -> ir::Cluster {
        ir::Cluster {
            name: "outbound|8000|v1|httpbin.default.svc.cluster.local".to_string(),
            service: "httpbin.default.svc.cluster.local".to_string(),
            port: 8000,
            subset: Some("v1".to_string()),
            discovery: ir::Discovery::Eds,
            endpoints,
            lb_policy: ir::LbPolicy::LeastRequest,
            connect_timeout: Duration::from_secs(10),
            circuit_breakers: ir::CircuitBreakers::default(),
            outlier_detection: None,
            http_options: ir::HttpOptions::default(),
            tls: None,
            tcp_keepalive: None,
            healthy_panic_threshold: 0.0,
        }
    }

    fn addr(lb: &endpoint_v3::LbEndpoint) -> (String, u32) {
        let Some(endpoint_v3::lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier
        else {
            panic!("lb endpoint has no endpoint");
        };
        let Some(core_v3::address::Address::SocketAddress(sa)) =
            e.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            panic!("endpoint has no socket address");
        };
        let Some(core_v3::socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier
        else {
            panic!("socket address has no port");
        };
        (sa.address.clone(), port)
    }

    #[test]
    fn empty_assignment_without_endpoints() {
        let cla = build_cluster_load_assignment(&cluster(vec![]));
        assert_eq!(
            cla.cluster_name,
            "outbound|8000|v1|httpbin.default.svc.cluster.local"
        );
        assert!(cla.endpoints.is_empty());
    }

    #[test]
    fn grouped_by_locality_none_first_with_weight_sums() {
        let cla = build_cluster_load_assignment(&cluster(vec![
            endpoint("10.0.0.3", 80, Some(3), Some("us-east/zone-b")),
            endpoint("10.0.0.1", 8080, None, None),
            endpoint("10.0.0.2", 8081, Some(5), None),
            endpoint("10.0.0.4", 80, None, Some("us-east/zone-a/rack1")),
        ]));
        assert_eq!(cla.endpoints.len(), 3);

        let none = &cla.endpoints[0];
        assert_eq!(none.locality, None);
        assert_eq!(none.load_balancing_weight, Some(uint32(6)));
        assert_eq!(none.lb_endpoints.len(), 2);
        assert_eq!(addr(&none.lb_endpoints[0]), ("10.0.0.1".to_string(), 8080));
        assert_eq!(none.lb_endpoints[0].load_balancing_weight, None);
        assert_eq!(addr(&none.lb_endpoints[1]), ("10.0.0.2".to_string(), 8081));
        assert_eq!(none.lb_endpoints[1].load_balancing_weight, Some(uint32(5)));

        let a = &cla.endpoints[1];
        assert_eq!(
            a.locality,
            Some(core_v3::Locality {
                region: "us-east".to_string(),
                zone: "zone-a".to_string(),
                sub_zone: "rack1".to_string(),
            })
        );
        assert_eq!(a.load_balancing_weight, Some(uint32(1)));

        let b = &cla.endpoints[2];
        assert_eq!(
            b.locality,
            Some(core_v3::Locality {
                region: "us-east".to_string(),
                zone: "zone-b".to_string(),
                sub_zone: String::new(),
            })
        );
        assert_eq!(b.load_balancing_weight, Some(uint32(3)));
        assert_eq!(b.lb_endpoints[0].load_balancing_weight, Some(uint32(3)));
    }

    #[test]
    fn zero_weight_counts_as_unset() {
        let cla =
            build_cluster_load_assignment(&cluster(vec![endpoint("10.0.0.1", 80, Some(0), None)]));
        assert_eq!(cla.endpoints[0].load_balancing_weight, Some(uint32(1)));
        assert_eq!(cla.endpoints[0].lb_endpoints[0].load_balancing_weight, None);
    }
}
