//! Envoy bootstraps: a static one holding a whole translation (`translate --bootstrap`), and an
//! ADS one that takes everything from `shadowplane serve`.

use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap_v3;
use envoy_types::pb::envoy::config::cluster::v3 as cluster_v3;
use envoy_types::pb::envoy::config::core::v3 as core_v3;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_v3;
use envoy_types::pb::envoy::config::route::v3 as route_v3;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http_v3;
use envoy_types::util::pack_any;
use prost::Name;

use super::cluster::build_cluster;
use super::endpoint::build_cluster_load_assignment;
use super::listener::inline_listener;
use super::route::build_route_configuration;
use super::{ads_config_source, duration, socket_address, string_struct};
use crate::ir::{self, Model};

/// The cluster of an ADS bootstrap that points at the xDS server.
pub const XDS_CLUSTER: &str = "xds_cluster";

/// Who the static Envoy is and where its admin interface listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapOptions {
    pub node_id: String,
    pub node_cluster: String,
    pub admin_address: String,
    pub admin_port: u32,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions {
            node_id: "shadowplane".to_string(),
            node_cluster: "shadowplane".to_string(),
            admin_address: "127.0.0.1".to_string(),
            admin_port: 15000,
        }
    }
}

/// Who the ADS Envoy is, where its admin interface listens and where `shadowplane serve` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsBootstrapOptions {
    pub node_id: String,
    pub node_cluster: String,
    pub admin_address: String,
    pub admin_port: u32,
    pub xds_address: String,
    pub xds_port: u32,
    /// Incremental (delta) xDS instead of state of the world.
    pub delta: bool,
    /// Sent as node metadata `NAMESPACE`, as Istio sidecars do.
    pub node_namespace: Option<String>,
}

impl Default for AdsBootstrapOptions {
    fn default() -> Self {
        AdsBootstrapOptions {
            node_id: "shadowplane".to_string(),
            node_cluster: "shadowplane".to_string(),
            admin_address: "127.0.0.1".to_string(),
            admin_port: 15000,
            xds_address: "127.0.0.1".to_string(),
            xds_port: 18000,
            delta: false,
            node_namespace: None,
        }
    }
}

fn node(id: &str, cluster: &str, namespace: Option<&str>) -> core_v3::Node {
    core_v3::Node {
        id: id.to_string(),
        cluster: cluster.to_string(),
        metadata: namespace.map(|ns| string_struct([("NAMESPACE", ns)])),
        ..Default::default()
    }
}

fn admin(address: &str, port: u32) -> bootstrap_v3::Admin {
    bootstrap_v3::Admin {
        address: Some(socket_address(address, port)),
        ..Default::default()
    }
}

/// A bootstrap holding the whole model: listeners with their route configurations inline, EDS
/// clusters turned STATIC with their endpoints inline (DNS clusters unchanged). No xDS.
pub fn static_bootstrap(model: &Model, opts: &BootstrapOptions) -> bootstrap_v3::Bootstrap {
    let listeners = model
        .listeners
        .iter()
        .map(|l| {
            let rc = model
                .route_configs
                .iter()
                .find(|rc| rc.name == l.route_config_name)
                .map(build_route_configuration)
                .unwrap_or_else(|| route_v3::RouteConfiguration {
                    name: l.route_config_name.clone(),
                    ..Default::default()
                });
            inline_listener(l, rc)
        })
        .collect();
    let clusters = model.clusters.iter().map(build_static_cluster).collect();
    bootstrap_v3::Bootstrap {
        node: Some(node(&opts.node_id, &opts.node_cluster, None)),
        admin: Some(admin(&opts.admin_address, opts.admin_port)),
        static_resources: Some(bootstrap_v3::bootstrap::StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        stats_config: Some(stats_config()),
        ..Default::default()
    }
}

/// Stat tags that keep whole Istio cluster names, as Istio's own bootstrap does.
///
/// Envoy's default `envoy.cluster_name` tag stops at the first dot, so
/// `cluster.outbound|8080|v1|calc.ns.svc.cluster.local.upstream_rq_total` would become the metric
/// `envoy_cluster_ns_svc_cluster_local_upstream_rq_total` with `envoy_cluster_name=
/// "outbound|8080|v1|calc"`. With these tags it is `envoy_cluster_upstream_rq_total` with the
/// full cluster name, exactly as the forwarder's `/metrics` names it, so one query compares
/// versions on both. The default tags are turned off because Envoy would apply its own
/// cluster-name regex first; the other defaults we rely on are listed (empty regex = Envoy's).
pub fn stats_config() -> envoy_types::pb::envoy::config::metrics::v3::StatsConfig {
    use envoy_types::pb::envoy::config::metrics::v3::{
        tag_specifier::TagValue, StatsConfig, TagSpecifier,
    };
    let tag = |name: &str, regex: Option<&str>| TagSpecifier {
        tag_name: name.to_string(),
        tag_value: regex.map(|r| TagValue::Regex(r.to_string())),
    };
    StatsConfig {
        use_all_default_tags: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        stats_tags: vec![
            tag(
                "envoy.cluster_name",
                Some(r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"),
            ),
            tag(
                "envoy.http_conn_manager_prefix",
                Some(
                    r"^(?:listener\.(?:[0-9.]+_[0-9]+|[^.]+)\.)?http\.(((?:inbound|outbound)_[^_]*_[0-9]+|[^.]+)\.)",
                ),
            ),
            tag("envoy.response_code", None),
            tag("envoy.response_code_class", None),
            tag("envoy.listener_address", None),
            tag("envoy.virtual_host", None),
            tag("envoy.virtual_cluster", None),
        ],
        ..Default::default()
    }
}

/// The cluster as [`build_cluster`] builds it, with an EDS cluster turned STATIC and its
/// endpoints inline.
fn build_static_cluster(c: &ir::Cluster) -> cluster_v3::Cluster {
    let mut cluster = build_cluster(c);
    if c.discovery == ir::Discovery::Eds {
        cluster.cluster_discovery_type = Some(cluster_v3::cluster::ClusterDiscoveryType::Type(
            cluster_v3::cluster::DiscoveryType::Static as i32,
        ));
        cluster.eds_cluster_config = None;
        cluster.load_assignment = Some(build_cluster_load_assignment(c));
    }
    cluster
}

/// A bootstrap that takes listeners and clusters (and through them routes and endpoints) over
/// one ADS stream from `xds_address:xds_port`, over HTTP/2.
pub fn ads_bootstrap(opts: &AdsBootstrapOptions) -> bootstrap_v3::Bootstrap {
    let api_type = if opts.delta {
        core_v3::api_config_source::ApiType::DeltaGrpc
    } else {
        core_v3::api_config_source::ApiType::Grpc
    };
    let ads_config = core_v3::ApiConfigSource {
        api_type: api_type as i32,
        transport_api_version: core_v3::ApiVersion::V3 as i32,
        grpc_services: vec![core_v3::GrpcService {
            target_specifier: Some(core_v3::grpc_service::TargetSpecifier::EnvoyGrpc(
                core_v3::grpc_service::EnvoyGrpc {
                    cluster_name: XDS_CLUSTER.to_string(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        set_node_on_first_message_only: true,
        ..Default::default()
    };
    bootstrap_v3::Bootstrap {
        node: Some(node(
            &opts.node_id,
            &opts.node_cluster,
            opts.node_namespace.as_deref(),
        )),
        admin: Some(admin(&opts.admin_address, opts.admin_port)),
        dynamic_resources: Some(bootstrap_v3::bootstrap::DynamicResources {
            ads_config: Some(ads_config),
            lds_config: Some(ads_config_source()),
            cds_config: Some(ads_config_source()),
            ..Default::default()
        }),
        static_resources: Some(bootstrap_v3::bootstrap::StaticResources {
            clusters: vec![build_xds_cluster(&opts.xds_address, opts.xds_port)],
            ..Default::default()
        }),
        stats_config: Some(stats_config()),
        ..Default::default()
    }
}

/// The xDS server's cluster: STATIC for an IP address, STRICT_DNS for a host name (a STATIC
/// cluster only takes IPs), HTTP/2 for gRPC.
fn build_xds_cluster(address: &str, port: u32) -> cluster_v3::Cluster {
    use upstream_http_v3::http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    };
    let discovery = if address.parse::<std::net::IpAddr>().is_ok() {
        cluster_v3::cluster::DiscoveryType::Static
    } else {
        cluster_v3::cluster::DiscoveryType::StrictDns
    };
    let http2 = upstream_http_v3::HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    core_v3::Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    cluster_v3::Cluster {
        name: XDS_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster_v3::cluster::ClusterDiscoveryType::Type(
            discovery as i32,
        )),
        connect_timeout: Some(duration(std::time::Duration::from_secs(1))),
        typed_extension_protocol_options: [(
            upstream_http_v3::HttpProtocolOptions::full_name(),
            pack_any(http2),
        )]
        .into_iter()
        .collect(),
        load_assignment: Some(endpoint_v3::ClusterLoadAssignment {
            cluster_name: XDS_CLUSTER.to_string(),
            endpoints: vec![endpoint_v3::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint_v3::LbEndpoint {
                    host_identifier: Some(endpoint_v3::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint_v3::Endpoint {
                            address: Some(socket_address(address, port)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3 as listener_v3;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_v3;
    use envoy_types::pb::google::protobuf::value::Kind;
    use prost::Message;
    use std::time::Duration as StdDuration;

    const V1: &str = "outbound|8000|v1|httpbin.default.svc.cluster.local";
    const EXT: &str = "outbound|443||httpbin.org";

    fn cluster(name: &str, discovery: ir::Discovery, address: &str) -> ir::Cluster {
        ir::Cluster {
            name: name.to_string(),
            service: "httpbin".to_string(),
            port: 8000,
            subset: None,
            discovery,
            endpoints: vec![ir::Endpoint {
                address: address.to_string(),
                port: 80,
                weight: Some(2),
                locality: None,
            }],
            lb_policy: ir::LbPolicy::LeastRequest,
            connect_timeout: StdDuration::from_secs(10),
            circuit_breakers: ir::CircuitBreakers::default(),
            outlier_detection: None,
            http_options: ir::HttpOptions::default(),
            tls: None,
            tcp_keepalive: None,
            healthy_panic_threshold: 0.0,
        }
    }

    fn listener(port: u32) -> ir::Listener {
        ir::Listener {
            name: format!("127.0.0.1_{port}"),
            address: "127.0.0.1".to_string(),
            port,
            route_config_name: port.to_string(),
            stat_prefix: format!("outbound_127.0.0.1_{port}"),
            fault_filter: false,
            cors_filter: false,
        }
    }

    fn model() -> Model {
        Model {
            listeners: vec![listener(8000), listener(9000)],
            route_configs: vec![ir::RouteConfig {
                name: "8000".to_string(),
                virtual_hosts: vec![ir::VirtualHost {
                    name: "httpbin.default.svc.cluster.local:8000".to_string(),
                    domains: vec!["httpbin".to_string()],
                    routes: vec![],
                }],
            }],
            clusters: vec![
                cluster(EXT, ir::Discovery::StrictDns, "httpbin.org"),
                cluster(V1, ir::Discovery::Eds, "10.0.0.1"),
            ],
        }
    }

    fn discovery(c: &cluster_v3::Cluster) -> i32 {
        match c.cluster_discovery_type {
            Some(cluster_v3::cluster::ClusterDiscoveryType::Type(t)) => t,
            ref other => panic!("unexpected discovery type {other:?}"),
        }
    }

    fn inline_routes(l: &listener_v3::Listener) -> route_v3::RouteConfiguration {
        let Some(listener_v3::filter::ConfigType::TypedConfig(any)) =
            &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no HCM");
        };
        let hcm = hcm_v3::HttpConnectionManager::decode(any.value.as_slice()).expect("decodes");
        match hcm.route_specifier {
            Some(hcm_v3::http_connection_manager::RouteSpecifier::RouteConfig(rc)) => rc,
            other => panic!("expected inline routes, got {other:?}"),
        }
    }

    fn socket(a: &Option<core_v3::Address>) -> (String, u32) {
        let Some(core_v3::address::Address::SocketAddress(sa)) =
            a.as_ref().and_then(|a| a.address.as_ref())
        else {
            panic!("no socket address");
        };
        let Some(core_v3::socket_address::PortSpecifier::PortValue(p)) = sa.port_specifier else {
            panic!("no port");
        };
        (sa.address.clone(), p)
    }

    #[test]
    fn static_bootstrap_inlines_routes_and_endpoints() {
        let b = static_bootstrap(&model(), &BootstrapOptions::default());
        let node = b.node.as_ref().expect("node set");
        assert_eq!(node.id, "shadowplane");
        assert_eq!(node.cluster, "shadowplane");
        assert_eq!(
            socket(&b.admin.as_ref().expect("admin set").address),
            ("127.0.0.1".to_string(), 15000)
        );
        assert!(b.dynamic_resources.is_none());
        let sr = b.static_resources.expect("static resources");

        assert_eq!(sr.listeners.len(), 2);
        let rc = inline_routes(&sr.listeners[0]);
        assert_eq!(rc.name, "8000");
        assert_eq!(rc.virtual_hosts.len(), 1);
        // A listener whose route configuration is missing gets an empty one with its name.
        let rc = inline_routes(&sr.listeners[1]);
        assert_eq!(rc.name, "9000");
        assert!(rc.virtual_hosts.is_empty());

        assert_eq!(sr.clusters.len(), 2);
        let dns = &sr.clusters[0];
        assert_eq!(dns.name, EXT);
        assert_eq!(
            discovery(dns),
            cluster_v3::cluster::DiscoveryType::StrictDns as i32
        );
        assert!(dns.load_assignment.is_some());

        let st = &sr.clusters[1];
        assert_eq!(st.name, V1);
        assert_eq!(
            discovery(st),
            cluster_v3::cluster::DiscoveryType::Static as i32
        );
        assert!(st.eds_cluster_config.is_none());
        let la = st.load_assignment.as_ref().expect("inline endpoints");
        assert_eq!(la.cluster_name, V1);
        assert_eq!(la.endpoints.len(), 1);
        assert_eq!(
            la.endpoints[0].load_balancing_weight,
            Some(super::super::uint32(2))
        );
        let lb = &la.endpoints[0].lb_endpoints[0];
        let Some(endpoint_v3::lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier
        else {
            panic!("no endpoint");
        };
        assert_eq!(socket(&e.address), ("10.0.0.1".to_string(), 80));
        // Everything else is as the ADS cluster has it.
        assert!(st.circuit_breakers.is_some());
        assert_eq!(
            st.connect_timeout,
            Some(duration(StdDuration::from_secs(10)))
        );
    }

    #[test]
    fn ads_bootstrap_sotw_and_delta() {
        let mut opts = AdsBootstrapOptions {
            node_id: "envoy-1".to_string(),
            node_namespace: Some("challengeistio".to_string()),
            ..Default::default()
        };
        let b = ads_bootstrap(&opts);
        let node = b.node.as_ref().expect("node set");
        assert_eq!(node.id, "envoy-1");
        assert_eq!(
            node.metadata
                .as_ref()
                .and_then(|m| m.fields.get("NAMESPACE"))
                .and_then(|v| v.kind.clone()),
            Some(Kind::StringValue("challengeistio".to_string()))
        );
        let dr = b.dynamic_resources.as_ref().expect("dynamic resources");
        let ads = dr.ads_config.as_ref().expect("ads config");
        assert_eq!(
            ads.api_type,
            core_v3::api_config_source::ApiType::Grpc as i32
        );
        assert_eq!(ads.transport_api_version, core_v3::ApiVersion::V3 as i32);
        assert!(ads.set_node_on_first_message_only);
        assert_eq!(ads.grpc_services.len(), 1);
        assert_eq!(
            ads.grpc_services[0].target_specifier,
            Some(core_v3::grpc_service::TargetSpecifier::EnvoyGrpc(
                core_v3::grpc_service::EnvoyGrpc {
                    cluster_name: XDS_CLUSTER.to_string(),
                    ..Default::default()
                }
            ))
        );
        assert_eq!(dr.lds_config, Some(ads_config_source()));
        assert_eq!(dr.cds_config, Some(ads_config_source()));

        let sr = b.static_resources.as_ref().expect("static resources");
        assert_eq!(sr.clusters.len(), 1);
        let xds = &sr.clusters[0];
        assert_eq!(xds.name, XDS_CLUSTER);
        assert_eq!(
            discovery(xds),
            cluster_v3::cluster::DiscoveryType::Static as i32
        );
        let any = &xds.typed_extension_protocol_options
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        let o =
            upstream_http_v3::HttpProtocolOptions::decode(any.value.as_slice()).expect("decodes");
        assert!(matches!(
            o.upstream_protocol_options,
            Some(
                upstream_http_v3::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    upstream_http_v3::http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            upstream_http_v3::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)
                        )
                    }
                )
            )
        ));
        let la = xds.load_assignment.as_ref().expect("xds endpoint");
        let Some(endpoint_v3::lb_endpoint::HostIdentifier::Endpoint(e)) =
            &la.endpoints[0].lb_endpoints[0].host_identifier
        else {
            panic!("no endpoint");
        };
        assert_eq!(socket(&e.address), ("127.0.0.1".to_string(), 18000));

        opts.delta = true;
        opts.node_namespace = None;
        opts.xds_address = "shadowplane".to_string();
        let b = ads_bootstrap(&opts);
        assert_eq!(
            b.dynamic_resources
                .and_then(|d| d.ads_config)
                .map(|a| a.api_type),
            Some(core_v3::api_config_source::ApiType::DeltaGrpc as i32)
        );
        assert!(b.node.and_then(|n| n.metadata).is_none());
        let xds = &b.static_resources.expect("static resources").clusters[0];
        assert_eq!(
            discovery(xds),
            cluster_v3::cluster::DiscoveryType::StrictDns as i32,
            "a host name needs DNS"
        );
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    /// Envoy's default cluster-name tag would cut `outbound|8080|v1|calc.ns.svc.cluster.local`
    /// at its first dot; both bootstraps carry Istio's regex instead, with the defaults off.
    #[test]
    fn bootstraps_keep_whole_cluster_names_in_stat_tags() {
        for stats in [
            static_bootstrap(&Model::default(), &BootstrapOptions::default()).stats_config,
            ads_bootstrap(&AdsBootstrapOptions::default()).stats_config,
        ] {
            let stats = stats.expect("stats_config is set");
            assert_eq!(stats.use_all_default_tags.map(|b| b.value), Some(false));
            let cluster = stats
                .stats_tags
                .iter()
                .find(|t| t.tag_name == "envoy.cluster_name")
                .expect("a cluster-name tag");
            let Some(envoy_types::pb::envoy::config::metrics::v3::tag_specifier::TagValue::Regex(
                re,
            )) = &cluster.tag_value
            else {
                panic!("cluster-name tag has no regex: {cluster:?}");
            };
            assert!(re.contains(r"\.svc\.cluster\.local"), "{re}");
        }
    }
}
