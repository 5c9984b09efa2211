//! [`ir::Cluster`] → `envoy.config.cluster.v3.Cluster`: discovery (EDS over ADS or DNS with
//! inline endpoints), load balancing, circuit breakers, outlier detection, upstream HTTP
//! options, TLS and TCP keepalive.

use envoy_types::pb::envoy::config::cluster::v3 as cluster_v3;
use envoy_types::pb::envoy::config::core::v3 as core_v3;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls_v3;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http_v3;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_v3;
use envoy_types::pb::envoy::r#type::v3 as type_v3;
use envoy_types::pb::google::protobuf::{Any, UInt64Value};
use envoy_types::util::pack_any;
use prost::Name;

use super::endpoint::build_cluster_load_assignment;
use super::{config_source, duration, uint32};
use crate::{ir, ConfigSourceKind};

pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// A cluster; an EDS cluster takes its endpoints over ADS.
pub fn build_cluster(c: &ir::Cluster) -> cluster_v3::Cluster {
    build_cluster_with_config_source(c, &ConfigSourceKind::Ads)
}

/// A cluster; an EDS cluster takes its endpoints from `kind`.
pub fn build_cluster_with_config_source(
    c: &ir::Cluster,
    kind: &ConfigSourceKind,
) -> cluster_v3::Cluster {
    use cluster_v3::cluster::DiscoveryType;
    let (discovery, eds_cluster_config, load_assignment) = match c.discovery {
        ir::Discovery::Eds => (
            DiscoveryType::Eds,
            Some(build_eds_cluster_config(c, kind)),
            None,
        ),
        ir::Discovery::StrictDns => (
            DiscoveryType::StrictDns,
            None,
            Some(build_cluster_load_assignment(c)),
        ),
        ir::Discovery::LogicalDns => (
            DiscoveryType::LogicalDns,
            None,
            Some(build_cluster_load_assignment(c)),
        ),
    };
    let (lb_policy, lb_config) = build_lb_policy(c.lb_policy);
    let typed_extension_protocol_options = build_http_protocol_options(&c.http_options)
        .map(|o| {
            (
                upstream_http_v3::HttpProtocolOptions::full_name(),
                pack_any(o),
            )
        })
        .into_iter()
        .collect();
    cluster_v3::Cluster {
        name: c.name.clone(),
        cluster_discovery_type: Some(cluster_v3::cluster::ClusterDiscoveryType::Type(
            discovery as i32,
        )),
        eds_cluster_config,
        load_assignment,
        connect_timeout: Some(duration(c.connect_timeout)),
        lb_policy: lb_policy as i32,
        lb_config,
        circuit_breakers: Some(build_circuit_breakers(&c.circuit_breakers)),
        outlier_detection: c.outlier_detection.as_ref().map(build_outlier_detection),
        common_lb_config: Some(cluster_v3::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(type_v3::Percent {
                value: c.healthy_panic_threshold,
            }),
            ..Default::default()
        }),
        typed_extension_protocol_options,
        transport_socket: c.tls.as_ref().map(build_tls_transport_socket),
        upstream_connection_options: c.tcp_keepalive.as_ref().map(|k| {
            cluster_v3::UpstreamConnectionOptions {
                tcp_keepalive: Some(build_tcp_keepalive(k)),
                ..Default::default()
            }
        }),
        ..Default::default()
    }
}

/// `{service_name: <cluster>, eds_config: {ads: {}, initial_fetch_timeout: 0s, V3}}` (or an
/// `api_config_source` in place of `ads: {}`).
fn build_eds_cluster_config(
    c: &ir::Cluster,
    kind: &ConfigSourceKind,
) -> cluster_v3::cluster::EdsClusterConfig {
    let mut eds_config = config_source(kind);
    eds_config.initial_fetch_timeout = Some(duration(std::time::Duration::ZERO));
    cluster_v3::cluster::EdsClusterConfig {
        service_name: c.name.clone(),
        eds_config: Some(eds_config),
    }
}

fn build_lb_policy(
    p: ir::LbPolicy,
) -> (
    cluster_v3::cluster::LbPolicy,
    Option<cluster_v3::cluster::LbConfig>,
) {
    use cluster_v3::cluster::{LbConfig, LbPolicy, MaglevLbConfig, RingHashLbConfig};
    match p {
        ir::LbPolicy::LeastRequest => (LbPolicy::LeastRequest, None),
        ir::LbPolicy::RoundRobin => (LbPolicy::RoundRobin, None),
        ir::LbPolicy::Random => (LbPolicy::Random, None),
        ir::LbPolicy::RingHash { minimum_ring_size } => (
            LbPolicy::RingHash,
            Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value {
                    value: minimum_ring_size,
                }),
                ..Default::default()
            })),
        ),
        ir::LbPolicy::Maglev { table_size } => (
            LbPolicy::Maglev,
            table_size.map(|value| {
                LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: Some(UInt64Value { value }),
                })
            }),
        ),
    }
}

fn build_circuit_breakers(cb: &ir::CircuitBreakers) -> cluster_v3::CircuitBreakers {
    cluster_v3::CircuitBreakers {
        thresholds: vec![cluster_v3::circuit_breakers::Thresholds {
            max_connections: Some(uint32(cb.max_connections)),
            max_pending_requests: Some(uint32(cb.max_pending_requests)),
            max_requests: Some(uint32(cb.max_requests)),
            max_retries: Some(uint32(cb.max_retries)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Enforcement 100% for a positive count, 0% for a zero count, as istiod does.
fn enforcing(count: u32) -> u32 {
    if count > 0 {
        100
    } else {
        0
    }
}

fn build_outlier_detection(o: &ir::OutlierDetection) -> cluster_v3::OutlierDetection {
    let local_origin = o
        .consecutive_local_origin_failure
        .filter(|_| o.split_external_local_origin_errors);
    cluster_v3::OutlierDetection {
        consecutive_5xx: o.consecutive_5xx.map(uint32),
        enforcing_consecutive_5xx: o.consecutive_5xx.map(|n| uint32(enforcing(n))),
        consecutive_gateway_failure: o.consecutive_gateway_failure.map(uint32),
        enforcing_consecutive_gateway_failure: o
            .consecutive_gateway_failure
            .map(|n| uint32(enforcing(n))),
        enforcing_success_rate: Some(uint32(0)),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        consecutive_local_origin_failure: local_origin.map(uint32),
        enforcing_consecutive_local_origin_failure: local_origin.map(|n| uint32(enforcing(n))),
        enforcing_local_origin_success_rate: o
            .split_external_local_origin_errors
            .then(|| uint32(0)),
        interval: o.interval.map(duration),
        base_ejection_time: o.base_ejection_time.map(duration),
        max_ejection_percent: o.max_ejection_percent.map(uint32),
        ..Default::default()
    }
}

/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`, or `None` when nothing is set.
/// Envoy requires an upstream protocol choice in it: the client's protocol, explicit HTTP/2, or
/// explicit HTTP/1.1 when only the common options are set.
fn build_http_protocol_options(
    h: &ir::HttpOptions,
) -> Option<upstream_http_v3::HttpProtocolOptions> {
    use upstream_http_v3::http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
        UseDownstreamHttpConfig,
    };
    let common_set = h.idle_timeout.is_some()
        || h.max_requests_per_connection.is_some()
        || h.max_connection_duration.is_some();
    if !common_set && !h.http2 && !h.use_client_protocol && h.max_concurrent_streams.is_none() {
        return None;
    }
    let common_http_protocol_options = common_set.then(|| core_v3::HttpProtocolOptions {
        idle_timeout: h.idle_timeout.map(duration),
        max_requests_per_connection: h.max_requests_per_connection.map(uint32),
        max_connection_duration: h.max_connection_duration.map(duration),
        ..Default::default()
    });
    let http2 = || core_v3::Http2ProtocolOptions {
        max_concurrent_streams: h.max_concurrent_streams.map(uint32),
        ..Default::default()
    };
    let upstream = if h.use_client_protocol {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http_protocol_options: Some(core_v3::Http1ProtocolOptions::default()),
            http2_protocol_options: Some(http2()),
            http3_protocol_options: None,
        })
    } else if h.http2 {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(http2())),
        })
    } else {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                core_v3::Http1ProtocolOptions::default(),
            )),
        })
    };
    Some(upstream_http_v3::HttpProtocolOptions {
        common_http_protocol_options,
        upstream_protocol_options: Some(upstream),
        ..Default::default()
    })
}

fn file(path: &str) -> core_v3::DataSource {
    core_v3::DataSource {
        specifier: Some(core_v3::data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// `envoy.transport_sockets.tls` with an `UpstreamTlsContext`: SNI, client certificate (for
/// MUTUAL), and a validation context (CA file and SANs) unless verification is skipped.
fn build_tls_transport_socket(t: &ir::UpstreamTls) -> core_v3::TransportSocket {
    core_v3::TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(core_v3::transport_socket::ConfigType::TypedConfig(
            build_upstream_tls_context(t),
        )),
    }
}

fn build_upstream_tls_context(t: &ir::UpstreamTls) -> Any {
    use tls_v3::common_tls_context::ValidationContextType;
    use tls_v3::subject_alt_name_matcher::SanType;
    let tls_certificates = match (&t.client_certificate, &t.private_key) {
        (Some(cert), Some(key)) => vec![tls_v3::TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    let validation = (!t.insecure_skip_verify
        && (t.ca_certificates.is_some() || !t.subject_alt_names.is_empty()))
    .then(|| tls_v3::CertificateValidationContext {
        trusted_ca: t.ca_certificates.as_deref().map(file),
        match_typed_subject_alt_names: t
            .subject_alt_names
            .iter()
            .map(|san| tls_v3::SubjectAltNameMatcher {
                san_type: if san.contains("://") {
                    SanType::Uri
                } else {
                    SanType::Dns
                } as i32,
                matcher: Some(matcher_v3::StringMatcher {
                    ignore_case: false,
                    match_pattern: Some(matcher_v3::string_matcher::MatchPattern::Exact(
                        san.clone(),
                    )),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    pack_any(tls_v3::UpstreamTlsContext {
        sni: t.sni.clone().unwrap_or_default(),
        common_tls_context: Some(tls_v3::CommonTlsContext {
            tls_certificates,
            validation_context_type: validation.map(ValidationContextType::ValidationContext),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Envoy's keepalive fields are whole seconds.
fn build_tcp_keepalive(k: &ir::TcpKeepalive) -> core_v3::TcpKeepalive {
    let secs = |d: std::time::Duration| uint32(u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    core_v3::TcpKeepalive {
        keepalive_probes: k.probes.map(uint32),
        keepalive_time: k.time.map(secs),
        keepalive_interval: k.interval.map(secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_v3;
    use envoy_types::pb::google::protobuf::Duration;
    use prost::Message;
    use std::time::Duration as StdDuration;

    const NAME: &str = "outbound|8000|v1|httpbin.default.svc.cluster.local";

    fn cluster(discovery: ir::Discovery) -> ir::Cluster {
        ir::Cluster {
            name: NAME.to_string(),
            service: "httpbin.default.svc.cluster.local".to_string(),
            port: 8000,
            subset: Some("v1".to_string()),
            discovery,
            endpoints: vec![ir::Endpoint {
                address: "10.0.0.1".to_string(),
                port: 80,
                weight: None,
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

    fn discovery_type(c: &cluster_v3::Cluster) -> cluster_v3::cluster::DiscoveryType {
        match c.cluster_discovery_type {
            Some(cluster_v3::cluster::ClusterDiscoveryType::Type(t)) => {
                cluster_v3::cluster::DiscoveryType::try_from(t).expect("known discovery type")
            }
            ref other => panic!("unexpected discovery type {other:?}"),
        }
    }

    fn http_options(c: &cluster_v3::Cluster) -> upstream_http_v3::HttpProtocolOptions {
        assert_eq!(c.typed_extension_protocol_options.len(), 1);
        let any = c
            .typed_extension_protocol_options
            .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
            .expect("HttpProtocolOptions present");
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        );
        upstream_http_v3::HttpProtocolOptions::decode(any.value.as_slice())
            .expect("decodes as HttpProtocolOptions")
    }

    #[test]
    fn eds_cluster_with_delta_grpc_config_source() {
        let c = build_cluster_with_config_source(
            &cluster(ir::Discovery::Eds),
            &ConfigSourceKind::Grpc {
                cluster_name: "my_xds".into(),
                delta: true,
            },
        );
        let cs = c
            .eds_cluster_config
            .and_then(|e| e.eds_config)
            .expect("eds_config set");
        let Some(core_v3::config_source::ConfigSourceSpecifier::ApiConfigSource(api)) =
            cs.config_source_specifier
        else {
            panic!("eds_config is not an api_config_source: {cs:?}");
        };
        assert_eq!(
            api.api_type,
            core_v3::api_config_source::ApiType::DeltaGrpc as i32
        );
        assert_eq!(api.transport_api_version, core_v3::ApiVersion::V3 as i32);
        let names: Vec<_> = api
            .grpc_services
            .iter()
            .map(|g| match &g.target_specifier {
                Some(core_v3::grpc_service::TargetSpecifier::EnvoyGrpc(e)) => {
                    e.cluster_name.as_str()
                }
                other => panic!("not an envoy_grpc service: {other:?}"),
            })
            .collect();
        assert_eq!(names, ["my_xds"]);
        assert_eq!(cs.resource_api_version, core_v3::ApiVersion::V3 as i32);
        assert_eq!(
            cs.initial_fetch_timeout,
            Some(duration(std::time::Duration::ZERO))
        );
    }

    #[test]
    fn eds_cluster_over_ads_with_defaults() {
        let c = build_cluster(&cluster(ir::Discovery::Eds));
        assert_eq!(c.name, NAME);
        assert_eq!(c.alt_stat_name, "");
        assert_eq!(discovery_type(&c), cluster_v3::cluster::DiscoveryType::Eds);
        assert!(c.load_assignment.is_none(), "EDS endpoints come over ADS");
        let eds = c.eds_cluster_config.expect("eds_cluster_config set");
        assert_eq!(eds.service_name, NAME);
        let cs = eds.eds_config.expect("eds_config set");
        assert_eq!(
            cs.config_source_specifier,
            Some(core_v3::config_source::ConfigSourceSpecifier::Ads(
                core_v3::AggregatedConfigSource {}
            ))
        );
        assert_eq!(
            cs.initial_fetch_timeout,
            Some(Duration {
                seconds: 0,
                nanos: 0
            })
        );
        assert_eq!(cs.resource_api_version, core_v3::ApiVersion::V3 as i32);
        assert_eq!(
            c.connect_timeout,
            Some(Duration {
                seconds: 10,
                nanos: 0
            })
        );
        assert_eq!(
            c.lb_policy,
            cluster_v3::cluster::LbPolicy::LeastRequest as i32
        );
        assert_eq!(c.lb_config, None);
        let t = &c.circuit_breakers.expect("circuit breakers set").thresholds;
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].max_connections, Some(uint32(u32::MAX)));
        assert_eq!(t[0].max_pending_requests, Some(uint32(u32::MAX)));
        assert_eq!(t[0].max_requests, Some(uint32(u32::MAX)));
        assert_eq!(t[0].max_retries, Some(uint32(u32::MAX)));
        assert_eq!(
            c.common_lb_config.and_then(|l| l.healthy_panic_threshold),
            Some(type_v3::Percent { value: 0.0 })
        );
        assert!(c.outlier_detection.is_none());
        assert!(c.typed_extension_protocol_options.is_empty());
        assert!(c.transport_socket.is_none());
        assert!(c.upstream_connection_options.is_none());
    }

    #[test]
    fn dns_clusters_carry_inline_endpoints() {
        for (d, want) in [
            (
                ir::Discovery::StrictDns,
                cluster_v3::cluster::DiscoveryType::StrictDns,
            ),
            (
                ir::Discovery::LogicalDns,
                cluster_v3::cluster::DiscoveryType::LogicalDns,
            ),
        ] {
            let mut ir_cluster = cluster(d);
            ir_cluster.endpoints[0].address = "httpbin.org".to_string();
            let c = build_cluster(&ir_cluster);
            assert_eq!(discovery_type(&c), want);
            assert!(c.eds_cluster_config.is_none());
            let la = c.load_assignment.expect("inline load assignment");
            assert_eq!(la.cluster_name, NAME);
            assert_eq!(la.endpoints.len(), 1);
            let Some(endpoint_v3::lb_endpoint::HostIdentifier::Endpoint(e)) =
                &la.endpoints[0].lb_endpoints[0].host_identifier
            else {
                panic!("no endpoint");
            };
            let Some(core_v3::address::Address::SocketAddress(sa)) =
                e.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                panic!("no socket address");
            };
            assert_eq!(sa.address, "httpbin.org");
        }
    }

    #[test]
    fn lb_policies() {
        use cluster_v3::cluster::{LbConfig, LbPolicy, MaglevLbConfig};
        let mut ir_cluster = cluster(ir::Discovery::Eds);
        for (p, want) in [
            (ir::LbPolicy::RoundRobin, LbPolicy::RoundRobin),
            (ir::LbPolicy::Random, LbPolicy::Random),
        ] {
            ir_cluster.lb_policy = p;
            assert_eq!(build_cluster(&ir_cluster).lb_policy, want as i32);
        }
        ir_cluster.lb_policy = ir::LbPolicy::RingHash {
            minimum_ring_size: 1024,
        };
        let c = build_cluster(&ir_cluster);
        assert_eq!(c.lb_policy, LbPolicy::RingHash as i32);
        let Some(LbConfig::RingHashLbConfig(rh)) = c.lb_config else {
            panic!("expected a ring hash config");
        };
        assert_eq!(rh.minimum_ring_size, Some(UInt64Value { value: 1024 }));

        ir_cluster.lb_policy = ir::LbPolicy::Maglev {
            table_size: Some(65537),
        };
        let c = build_cluster(&ir_cluster);
        assert_eq!(c.lb_policy, LbPolicy::Maglev as i32);
        assert_eq!(
            c.lb_config,
            Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(UInt64Value { value: 65537 })
            }))
        );
        ir_cluster.lb_policy = ir::LbPolicy::Maglev { table_size: None };
        assert_eq!(build_cluster(&ir_cluster).lb_config, None);
    }

    #[test]
    fn outlier_detection_enforcement() {
        let mut ir_cluster = cluster(ir::Discovery::Eds);
        ir_cluster.outlier_detection = Some(ir::OutlierDetection {
            consecutive_5xx: Some(7),
            consecutive_gateway_failure: Some(0),
            consecutive_local_origin_failure: Some(3),
            split_external_local_origin_errors: true,
            interval: Some(StdDuration::from_secs(30)),
            base_ejection_time: Some(StdDuration::from_secs(60)),
            max_ejection_percent: Some(50),
        });
        ir_cluster.healthy_panic_threshold = 25.0;
        let c = build_cluster(&ir_cluster);
        let o = c.outlier_detection.expect("outlier detection set");
        assert_eq!(o.consecutive_5xx, Some(uint32(7)));
        assert_eq!(o.enforcing_consecutive_5xx, Some(uint32(100)));
        assert_eq!(o.consecutive_gateway_failure, Some(uint32(0)));
        assert_eq!(o.enforcing_consecutive_gateway_failure, Some(uint32(0)));
        assert_eq!(o.enforcing_success_rate, Some(uint32(0)));
        assert!(o.split_external_local_origin_errors);
        assert_eq!(o.consecutive_local_origin_failure, Some(uint32(3)));
        assert_eq!(
            o.enforcing_consecutive_local_origin_failure,
            Some(uint32(100))
        );
        assert_eq!(
            o.interval,
            Some(Duration {
                seconds: 30,
                nanos: 0
            })
        );
        assert_eq!(
            o.base_ejection_time,
            Some(Duration {
                seconds: 60,
                nanos: 0
            })
        );
        assert_eq!(o.max_ejection_percent, Some(uint32(50)));
        assert_eq!(
            c.common_lb_config.and_then(|l| l.healthy_panic_threshold),
            Some(type_v3::Percent { value: 25.0 })
        );

        // Unset counts stay unset (Envoy's defaults apply).
        ir_cluster.outlier_detection = Some(ir::OutlierDetection {
            consecutive_5xx: None,
            consecutive_gateway_failure: None,
            consecutive_local_origin_failure: None,
            split_external_local_origin_errors: false,
            interval: None,
            base_ejection_time: None,
            max_ejection_percent: None,
        });
        let o = build_cluster(&ir_cluster)
            .outlier_detection
            .expect("outlier detection set");
        assert_eq!(o.consecutive_5xx, None);
        assert_eq!(o.enforcing_consecutive_5xx, None);
        assert_eq!(o.enforcing_success_rate, Some(uint32(0)));
        assert_eq!(o.enforcing_local_origin_success_rate, None);
    }

    #[test]
    fn http2_upstream_with_max_concurrent_streams() {
        use upstream_http_v3::http_protocol_options::{
            explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
        };
        let mut ir_cluster = cluster(ir::Discovery::Eds);
        ir_cluster.http_options = ir::HttpOptions {
            http2: true,
            max_concurrent_streams: Some(100),
            ..Default::default()
        };
        let o = http_options(&build_cluster(&ir_cluster));
        assert!(o.common_http_protocol_options.is_none());
        let Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) = o.upstream_protocol_options
        else {
            panic!("expected explicit http config");
        };
        let Some(ProtocolConfig::Http2ProtocolOptions(h2)) = e.protocol_config else {
            panic!("expected http2 options");
        };
        assert_eq!(h2.max_concurrent_streams, Some(uint32(100)));
    }

    #[test]
    fn common_http_options_pin_http1() {
        use upstream_http_v3::http_protocol_options::{
            explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
        };
        let mut ir_cluster = cluster(ir::Discovery::Eds);
        ir_cluster.http_options = ir::HttpOptions {
            idle_timeout: Some(StdDuration::from_secs(300)),
            max_requests_per_connection: Some(10),
            max_connection_duration: Some(StdDuration::from_secs(3600)),
            ..Default::default()
        };
        let o = http_options(&build_cluster(&ir_cluster));
        let common = o.common_http_protocol_options.expect("common options set");
        assert_eq!(
            common.idle_timeout,
            Some(Duration {
                seconds: 300,
                nanos: 0
            })
        );
        assert_eq!(common.max_requests_per_connection, Some(uint32(10)));
        assert_eq!(
            common.max_connection_duration,
            Some(Duration {
                seconds: 3600,
                nanos: 0
            })
        );
        let Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) = o.upstream_protocol_options
        else {
            panic!("expected explicit http config");
        };
        assert!(matches!(
            e.protocol_config,
            Some(ProtocolConfig::HttpProtocolOptions(_))
        ));
    }

    #[test]
    fn use_client_protocol() {
        use upstream_http_v3::http_protocol_options::UpstreamProtocolOptions;
        let mut ir_cluster = cluster(ir::Discovery::Eds);
        ir_cluster.http_options = ir::HttpOptions {
            use_client_protocol: true,
            ..Default::default()
        };
        let o = http_options(&build_cluster(&ir_cluster));
        let Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(d)) =
            o.upstream_protocol_options
        else {
            panic!("expected use_downstream_protocol_config");
        };
        assert!(d.http_protocol_options.is_some());
        assert!(d.http2_protocol_options.is_some());
    }

    #[test]
    fn tls_transport_socket_and_keepalive() {
        use tls_v3::common_tls_context::ValidationContextType;
        let mut ir_cluster = cluster(ir::Discovery::Eds);
        ir_cluster.tls = Some(ir::UpstreamTls {
            sni: Some("httpbin.org".to_string()),
            subject_alt_names: vec![
                "httpbin.org".to_string(),
                "spiffe://cluster.local/ns/default/sa/httpbin".to_string(),
            ],
            ca_certificates: Some("/etc/certs/ca.pem".to_string()),
            client_certificate: Some("/etc/certs/cert.pem".to_string()),
            private_key: Some("/etc/certs/key.pem".to_string()),
            insecure_skip_verify: false,
        });
        ir_cluster.tcp_keepalive = Some(ir::TcpKeepalive {
            probes: Some(3),
            time: Some(StdDuration::from_secs(7200)),
            interval: Some(StdDuration::from_secs(75)),
        });
        let c = build_cluster(&ir_cluster);
        let ts = c.transport_socket.expect("transport socket set");
        assert_eq!(ts.name, TLS_TRANSPORT_SOCKET);
        let Some(core_v3::transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else {
            panic!("no typed config");
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        let ctx = tls_v3::UpstreamTlsContext::decode(any.value.as_slice()).expect("decodes");
        assert_eq!(ctx.sni, "httpbin.org");
        let common = ctx.common_tls_context.expect("common tls context");
        assert_eq!(common.tls_certificates.len(), 1);
        assert_eq!(
            common.tls_certificates[0].certificate_chain,
            Some(file("/etc/certs/cert.pem"))
        );
        assert_eq!(
            common.tls_certificates[0].private_key,
            Some(file("/etc/certs/key.pem"))
        );
        let Some(ValidationContextType::ValidationContext(v)) = common.validation_context_type
        else {
            panic!("no validation context");
        };
        assert_eq!(v.trusted_ca, Some(file("/etc/certs/ca.pem")));
        let sans: Vec<_> = v
            .match_typed_subject_alt_names
            .iter()
            .map(|m| m.san_type)
            .collect();
        assert_eq!(
            sans,
            [
                tls_v3::subject_alt_name_matcher::SanType::Dns as i32,
                tls_v3::subject_alt_name_matcher::SanType::Uri as i32
            ]
        );

        let ka = c
            .upstream_connection_options
            .and_then(|u| u.tcp_keepalive)
            .expect("keepalive set");
        assert_eq!(ka.keepalive_probes, Some(uint32(3)));
        assert_eq!(ka.keepalive_time, Some(uint32(7200)));
        assert_eq!(ka.keepalive_interval, Some(uint32(75)));
    }

    #[test]
    fn tls_insecure_skip_verify_has_no_validation() {
        let mut ir_cluster = cluster(ir::Discovery::Eds);
        ir_cluster.tls = Some(ir::UpstreamTls {
            sni: None,
            subject_alt_names: vec!["a".to_string()],
            ca_certificates: Some("/ca.pem".to_string()),
            client_certificate: None,
            private_key: None,
            insecure_skip_verify: true,
        });
        let ts = build_cluster(&ir_cluster)
            .transport_socket
            .expect("transport socket set");
        let Some(core_v3::transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else {
            panic!("no typed config");
        };
        let ctx = tls_v3::UpstreamTlsContext::decode(any.value.as_slice()).expect("decodes");
        let common = ctx.common_tls_context.expect("common tls context");
        assert!(common.validation_context_type.is_none());
        assert!(common.tls_certificates.is_empty());
        assert_eq!(ctx.sni, "");
    }
}
