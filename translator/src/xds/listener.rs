//! [`ir::Listener`] → `envoy.config.listener.v3.Listener` with one HTTP connection manager.

use envoy_types::pb::envoy::config::listener::v3 as listener_v3;
use envoy_types::pb::envoy::config::route::v3 as route_v3;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors_v3;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault_v3;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router_v3;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_v3;
use envoy_types::util::pack_any;

use super::{boolean, config_source, route::build_route_configuration, socket_address};
use crate::{ir, ConfigSourceKind};

pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// A listener whose HTTP connection manager takes its routes over RDS (ADS).
pub fn build_listener(listener: &ir::Listener) -> listener_v3::Listener {
    build_listener_with_config_source(listener, &ConfigSourceKind::Ads)
}

/// A listener whose HTTP connection manager takes its routes over RDS from `kind`.
pub fn build_listener_with_config_source(
    listener: &ir::Listener,
    kind: &ConfigSourceKind,
) -> listener_v3::Listener {
    let rds = hcm_v3::Rds {
        config_source: Some(config_source(kind)),
        route_config_name: listener.route_config_name.clone(),
    };
    listener_with(
        listener,
        hcm_v3::http_connection_manager::RouteSpecifier::Rds(rds),
    )
}

/// A listener with its route configuration inline, for a static bootstrap.
pub fn build_listener_with_inline_routes(
    listener: &ir::Listener,
    route_config: &ir::RouteConfig,
) -> listener_v3::Listener {
    inline_listener(listener, build_route_configuration(route_config))
}

/// A listener with an already built route configuration inline.
pub(crate) fn inline_listener(
    listener: &ir::Listener,
    route_config: route_v3::RouteConfiguration,
) -> listener_v3::Listener {
    listener_with(
        listener,
        hcm_v3::http_connection_manager::RouteSpecifier::RouteConfig(route_config),
    )
}

fn listener_with(
    listener: &ir::Listener,
    routes: hcm_v3::http_connection_manager::RouteSpecifier,
) -> listener_v3::Listener {
    let hcm = build_http_connection_manager(listener, routes);
    listener_v3::Listener {
        name: listener.name.clone(),
        address: Some(socket_address(&listener.address, listener.port)),
        filter_chains: vec![listener_v3::FilterChain {
            filters: vec![listener_v3::Filter {
                name: HTTP_CONNECTION_MANAGER.to_string(),
                config_type: Some(listener_v3::filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn build_http_connection_manager(
    listener: &ir::Listener,
    routes: hcm_v3::http_connection_manager::RouteSpecifier,
) -> hcm_v3::HttpConnectionManager {
    hcm_v3::HttpConnectionManager {
        stat_prefix: listener.stat_prefix.clone(),
        route_specifier: Some(routes),
        http_filters: build_http_filters(listener),
        use_remote_address: Some(boolean(false)),
        ..Default::default()
    }
}

/// Fault and CORS (when some route uses them), then the router, always last.
fn build_http_filters(listener: &ir::Listener) -> Vec<hcm_v3::HttpFilter> {
    let typed = |name: &str, any| hcm_v3::HttpFilter {
        name: name.to_string(),
        config_type: Some(hcm_v3::http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    };
    let mut filters = Vec::with_capacity(3);
    if listener.fault_filter {
        filters.push(typed(
            FAULT_FILTER,
            pack_any(fault_v3::HttpFault::default()),
        ));
    }
    if listener.cors_filter {
        filters.push(typed(CORS_FILTER, pack_any(cors_v3::Cors::default())));
    }
    filters.push(typed(ROUTER_FILTER, pack_any(router_v3::Router::default())));
    filters
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core_v3;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    fn listener(fault: bool, cors: bool) -> ir::Listener {
        ir::Listener {
            name: "0.0.0.0_8080".to_string(),
            address: "0.0.0.0".to_string(),
            port: 8080,
            route_config_name: "8080".to_string(),
            stat_prefix: "outbound_0.0.0.0_8080".to_string(),
            fault_filter: fault,
            cors_filter: cors,
        }
    }

    fn hcm_of(l: &listener_v3::Listener) -> (String, hcm_v3::HttpConnectionManager) {
        assert_eq!(l.filter_chains.len(), 1);
        let filters = &l.filter_chains[0].filters;
        assert_eq!(filters.len(), 1);
        assert_eq!(filters[0].name, HTTP_CONNECTION_MANAGER);
        let Some(listener_v3::filter::ConfigType::TypedConfig(any)) = &filters[0].config_type
        else {
            panic!("no typed config on the HCM filter");
        };
        let hcm = hcm_v3::HttpConnectionManager::decode(any.value.as_slice())
            .expect("the HCM Any decodes as HttpConnectionManager");
        (any.type_url.clone(), hcm)
    }

    fn filter_any(f: &hcm_v3::HttpFilter) -> &Any {
        match &f.config_type {
            Some(hcm_v3::http_filter::ConfigType::TypedConfig(any)) => any,
            other => panic!("filter {} has no typed config: {other:?}", f.name),
        }
    }

    #[test]
    fn listener_binds_address_and_uses_rds_over_ads() {
        let l = build_listener(&listener(false, false));
        assert_eq!(l.name, "0.0.0.0_8080");
        let Some(core_v3::address::Address::SocketAddress(sa)) =
            l.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            panic!("listener has no socket address");
        };
        assert_eq!(sa.address, "0.0.0.0");
        assert_eq!(
            sa.port_specifier,
            Some(core_v3::socket_address::PortSpecifier::PortValue(8080))
        );

        let (type_url, hcm) = hcm_of(&l);
        assert_eq!(
            type_url,
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        assert_eq!(hcm.stat_prefix, "outbound_0.0.0.0_8080");
        assert_eq!(hcm.use_remote_address, Some(boolean(false)));
        let Some(hcm_v3::http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier
        else {
            panic!("HCM does not use RDS");
        };
        assert_eq!(rds.route_config_name, "8080");
        let cs = rds.config_source.expect("RDS has a config source");
        assert_eq!(
            cs.config_source_specifier,
            Some(core_v3::config_source::ConfigSourceSpecifier::Ads(
                core_v3::AggregatedConfigSource {}
            ))
        );
        assert_eq!(cs.resource_api_version, core_v3::ApiVersion::V3 as i32);
    }

    #[test]
    fn listener_with_grpc_config_source_takes_rds_from_the_named_cluster() {
        let l = build_listener_with_config_source(
            &listener(false, false),
            &ConfigSourceKind::Grpc {
                cluster_name: "xds_cluster".into(),
                delta: false,
            },
        );
        let (_, hcm) = hcm_of(&l);
        let Some(hcm_v3::http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier
        else {
            panic!("HCM does not use RDS");
        };
        let cs = rds.config_source.expect("RDS has a config source");
        assert_eq!(
            cs.config_source_specifier,
            Some(
                core_v3::config_source::ConfigSourceSpecifier::ApiConfigSource(
                    core_v3::ApiConfigSource {
                        api_type: core_v3::api_config_source::ApiType::Grpc as i32,
                        transport_api_version: core_v3::ApiVersion::V3 as i32,
                        grpc_services: vec![core_v3::GrpcService {
                            target_specifier: Some(
                                core_v3::grpc_service::TargetSpecifier::EnvoyGrpc(
                                    core_v3::grpc_service::EnvoyGrpc {
                                        cluster_name: "xds_cluster".into(),
                                        ..Default::default()
                                    }
                                )
                            ),
                            ..Default::default()
                        }],
                        set_node_on_first_message_only: true,
                        ..Default::default()
                    }
                )
            )
        );
        assert_eq!(cs.resource_api_version, core_v3::ApiVersion::V3 as i32);
    }

    #[test]
    fn http_filters_fault_then_cors_then_router_last() {
        let (_, hcm) = hcm_of(&build_listener(&listener(true, true)));
        let names: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [FAULT_FILTER, CORS_FILTER, ROUTER_FILTER]);
        let urls: Vec<_> = hcm
            .http_filters
            .iter()
            .map(|f| filter_any(f).type_url.as_str())
            .collect();
        assert_eq!(
            urls,
            [
                "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
                "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            ]
        );
    }

    #[test]
    fn only_the_router_without_fault_or_cors() {
        let (_, hcm) = hcm_of(&build_listener(&listener(false, false)));
        let names: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [ROUTER_FILTER]);

        let (_, hcm) = hcm_of(&build_listener(&listener(false, true)));
        let names: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [CORS_FILTER, ROUTER_FILTER]);
    }

    #[test]
    fn inline_routes_replace_rds() {
        let rc = ir::RouteConfig {
            name: "8080".to_string(),
            virtual_hosts: vec![ir::VirtualHost {
                name: "allow_any".to_string(),
                domains: vec!["*".to_string()],
                routes: vec![],
            }],
        };
        let (_, hcm) = hcm_of(&build_listener_with_inline_routes(
            &listener(false, false),
            &rc,
        ));
        let Some(hcm_v3::http_connection_manager::RouteSpecifier::RouteConfig(inline)) =
            hcm.route_specifier
        else {
            panic!("HCM has no inline route config");
        };
        assert_eq!(inline.name, "8080");
        assert_eq!(inline.virtual_hosts.len(), 1);
        assert_eq!(inline.virtual_hosts[0].name, "allow_any");
        assert_eq!(inline.validate_clusters, Some(boolean(false)));
    }
}
