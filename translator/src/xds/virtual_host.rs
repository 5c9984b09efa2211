//! Virtual hosts as resources of their own (VHDS, the Virtual Host Discovery Service).
//!
//! With [`crate::Options::vhds`], every route configuration gets
//! `vhds { config_source { ads {} } }` ([`enable_vhds`]); the xDS server then sends it without
//! virtual hosts and its virtual hosts as `VirtualHost` resources ([`split_virtual_hosts`])
//! named `<route configuration name>/<virtual host name>` (Envoy's naming convention, matched
//! right to left, so `8080/calc.ns.svc.cluster.local:8080`). A route configuration that keeps
//! both is valid Envoy config too (Envoy merges them), which is what `translate` prints. Envoy keys the virtual hosts it got
//! over VHDS by `VirtualHost.name` and removes them by resource name, so the virtual host's own
//! name is the resource name too (a removal of a differently named one is accepted and ignored).
//!
//! Envoy picks a virtual host by its domains (exact, then the longest suffix and prefix
//! wildcards, then `*`), not by position, so sending them one by one keeps the routing of the
//! single route configuration as long as no domain appears twice (Istio never emits one twice).

use envoy_types::pb::envoy::config::core::v3 as core_v3;
use envoy_types::pb::envoy::config::route::v3 as route_v3;

/// The resource (and `VirtualHost.name`) of virtual host `vhost` of route configuration `rc`.
pub fn vhds_name(rc: &str, vhost: &str) -> String {
    format!("{rc}/{vhost}")
}

/// The VHDS config source: the aggregated stream (Envoy serves VHDS over delta ADS only).
pub fn vhds_config_source() -> core_v3::ConfigSource {
    core_v3::ConfigSource {
        resource_api_version: core_v3::ApiVersion::V3 as i32,
        config_source_specifier: Some(core_v3::config_source::ConfigSourceSpecifier::Ads(
            core_v3::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// Give every route configuration a `vhds` block (over ADS); its virtual hosts stay.
pub fn enable_vhds(routes: &mut [route_v3::RouteConfiguration]) {
    for rc in routes {
        rc.vhds = Some(route_v3::Vhds {
            config_source: Some(vhds_config_source()),
        });
    }
}

/// Move the virtual hosts of the route configurations that have a `vhds` block out into VHDS
/// resources: those route configurations keep everything but their virtual hosts; the virtual
/// hosts come back in route configuration order, then their own order, renamed
/// [`vhds_name`]. Route configurations without `vhds` are left alone.
pub fn split_virtual_hosts(
    routes: &mut [route_v3::RouteConfiguration],
) -> Vec<route_v3::VirtualHost> {
    let mut out = Vec::new();
    for rc in routes.iter_mut().filter(|rc| rc.vhds.is_some()) {
        for mut vh in std::mem::take(&mut rc.virtual_hosts) {
            vh.name = vhds_name(&rc.name, &vh.name);
            out.push(vh);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(name: &str, domain: &str) -> route_v3::VirtualHost {
        route_v3::VirtualHost {
            name: name.into(),
            domains: vec![domain.into()],
            ..Default::default()
        }
    }

    #[test]
    fn virtual_hosts_leave_their_route_configuration_named_after_it() {
        let mut routes = vec![
            route_v3::RouteConfiguration {
                name: "8080".into(),
                virtual_hosts: vec![vh("b.ns.svc.cluster.local:8080", "b"), vh("a:8080", "a")],
                ignore_port_in_host_matching: true,
                ..Default::default()
            },
            route_v3::RouteConfiguration {
                name: "9090".into(),
                virtual_hosts: vec![vh("c:9090", "c")],
                ..Default::default()
            },
        ];
        let mut untouched = routes.clone();
        assert!(
            split_virtual_hosts(&mut untouched).is_empty(),
            "no vhds block"
        );
        assert_eq!(untouched, routes);
        enable_vhds(&mut routes);
        assert_eq!(routes[0].virtual_hosts.len(), 2, "enable_vhds keeps them");
        let vhosts = split_virtual_hosts(&mut routes);
        let names: Vec<&str> = vhosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "8080/b.ns.svc.cluster.local:8080",
                "8080/a:8080",
                "9090/c:9090"
            ]
        );
        assert_eq!(vhosts[0].domains, ["b"]);
        for rc in &routes {
            assert!(rc.virtual_hosts.is_empty());
            let source = rc.vhds.as_ref().and_then(|v| v.config_source.as_ref());
            assert_eq!(source, Some(&vhds_config_source()));
        }
        assert!(routes[0].ignore_port_in_host_matching, "other fields kept");
    }
}
