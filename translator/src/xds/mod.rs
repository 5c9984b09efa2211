//! [`ir::Model`] → Envoy v3 protos, one module per resource kind. No decisions here: every
//! Istio semantic was applied by lowering.
//!
//! Note on determinism: a few envoy-types fields are `HashMap`s (`typed_per_filter_config`,
//! `Metadata.filter_metadata`, `Struct.fields`, `typed_extension_protocol_options`). Their
//! protobuf encoding follows the map's iteration order, so a message with two or more entries in
//! one of them does not encode to the same bytes twice. Hash a canonical rendering (sorted-key
//! JSON), not `encode_to_vec`, when a content hash must be stable.

pub mod bootstrap;
pub mod cluster;
pub mod endpoint;
pub mod listener;
pub mod route;
pub mod virtual_host;

pub use bootstrap::{ads_bootstrap, static_bootstrap, AdsBootstrapOptions, BootstrapOptions};
pub use cluster::{build_cluster, build_cluster_with_config_source};
pub use endpoint::build_cluster_load_assignment;
pub use listener::{
    build_listener, build_listener_with_config_source, build_listener_with_inline_routes,
};
pub use route::{
    build_request_mirror_policies, build_retry_policy, build_route, build_route_action,
    build_route_configuration, build_virtual_host,
};

use envoy_types::pb::envoy::config::core::v3 as core_v3;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_v3;
use envoy_types::pb::envoy::r#type::v3 as type_v3;
use envoy_types::pb::google::protobuf::{
    value::Kind, BoolValue, Duration, Struct, UInt32Value, Value,
};

use crate::ir::{self, Discovery, Model};
use crate::{ConfigSourceKind, Resources};

/// Build the Envoy resources of a model: listeners, route configurations and clusters in model
/// order (already sorted by name), and one ClusterLoadAssignment per EDS cluster, sorted by name.
/// Listeners and clusters reference their routes and endpoints over ADS.
pub fn build(model: &Model) -> Resources {
    build_with_config_source(model, &ConfigSourceKind::Ads)
}

/// [`build`], with listeners and clusters referencing their routes (RDS) and endpoints (EDS)
/// through `config_source`.
pub fn build_with_config_source(model: &Model, config_source: &ConfigSourceKind) -> Resources {
    let listeners = model
        .listeners
        .iter()
        .map(|l| build_listener_with_config_source(l, config_source))
        .collect();
    let routes = model
        .route_configs
        .iter()
        .map(build_route_configuration)
        .collect();
    let clusters = model
        .clusters
        .iter()
        .map(|c| build_cluster_with_config_source(c, config_source))
        .collect();
    let mut endpoints: Vec<_> = model
        .clusters
        .iter()
        .filter(|c| c.discovery == Discovery::Eds)
        .map(build_cluster_load_assignment)
        .collect();
    endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    Resources {
        listeners,
        routes,
        clusters,
        endpoints,
    }
}

// ===== small shared conversions =====

/// `std::time::Duration` → `google.protobuf.Duration` (seconds saturate at `i64::MAX`).
pub(crate) fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Always below 1e9, so it fits an i32.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn uint32(value: u32) -> UInt32Value {
    UInt32Value { value }
}

pub(crate) fn boolean(value: bool) -> BoolValue {
    BoolValue { value }
}

pub(crate) fn fractional_percent(f: ir::Fraction) -> type_v3::FractionalPercent {
    let denominator = match f.denominator {
        ir::Denominator::Hundred => type_v3::fractional_percent::DenominatorType::Hundred,
        ir::Denominator::Million => type_v3::fractional_percent::DenominatorType::Million,
    };
    type_v3::FractionalPercent {
        numerator: f.numerator,
        denominator: denominator as i32,
    }
}

pub(crate) fn string_matcher(m: &ir::StringMatcher) -> matcher_v3::StringMatcher {
    use matcher_v3::string_matcher::MatchPattern;
    let pattern = match m {
        ir::StringMatcher::Exact(s) => MatchPattern::Exact(s.clone()),
        ir::StringMatcher::Prefix(s) => MatchPattern::Prefix(s.clone()),
        ir::StringMatcher::Regex(s) => MatchPattern::SafeRegex(regex_matcher(s)),
    };
    matcher_v3::StringMatcher {
        ignore_case: false,
        match_pattern: Some(pattern),
    }
}

pub(crate) fn regex_matcher(regex: &str) -> matcher_v3::RegexMatcher {
    matcher_v3::RegexMatcher {
        regex: regex.to_string(),
        engine_type: None,
    }
}

/// `address:port` as an Envoy TCP socket address.
pub(crate) fn socket_address(address: &str, port: u32) -> core_v3::Address {
    core_v3::Address {
        address: Some(core_v3::address::Address::SocketAddress(
            core_v3::SocketAddress {
                address: address.to_string(),
                port_specifier: Some(core_v3::socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            },
        )),
    }
}

/// `{ads: {}, resource_api_version: V3}`.
pub(crate) fn ads_config_source() -> core_v3::ConfigSource {
    core_v3::ConfigSource {
        config_source_specifier: Some(core_v3::config_source::ConfigSourceSpecifier::Ads(
            core_v3::AggregatedConfigSource {},
        )),
        resource_api_version: core_v3::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// `{api_config_source: {api_type: GRPC|DELTA_GRPC, transport_api_version: V3, grpc_services:
/// [{envoy_grpc: {cluster_name}}], set_node_on_first_message_only: true},
/// resource_api_version: V3}`.
pub(crate) fn grpc_config_source(cluster_name: &str, delta: bool) -> core_v3::ConfigSource {
    let api_type = if delta {
        core_v3::api_config_source::ApiType::DeltaGrpc
    } else {
        core_v3::api_config_source::ApiType::Grpc
    };
    core_v3::ConfigSource {
        config_source_specifier: Some(
            core_v3::config_source::ConfigSourceSpecifier::ApiConfigSource(
                core_v3::ApiConfigSource {
                    api_type: api_type as i32,
                    transport_api_version: core_v3::ApiVersion::V3 as i32,
                    grpc_services: vec![core_v3::GrpcService {
                        target_specifier: Some(core_v3::grpc_service::TargetSpecifier::EnvoyGrpc(
                            core_v3::grpc_service::EnvoyGrpc {
                                cluster_name: cluster_name.to_string(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    set_node_on_first_message_only: true,
                    ..Default::default()
                },
            ),
        ),
        resource_api_version: core_v3::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// `{self: {transport_api_version: V3}, resource_api_version: V3}`.
pub(crate) fn self_config_source() -> core_v3::ConfigSource {
    core_v3::ConfigSource {
        config_source_specifier: Some(core_v3::config_source::ConfigSourceSpecifier::Self_(
            core_v3::SelfConfigSource {
                transport_api_version: core_v3::ApiVersion::V3 as i32,
            },
        )),
        resource_api_version: core_v3::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// The config source of an RDS or EDS reference.
pub(crate) fn config_source(kind: &ConfigSourceKind) -> core_v3::ConfigSource {
    match kind {
        ConfigSourceKind::Ads => ads_config_source(),
        ConfigSourceKind::Grpc {
            cluster_name,
            delta,
        } => grpc_config_source(cluster_name, *delta),
        ConfigSourceKind::SelfSource => self_config_source(),
    }
}

/// A `google.protobuf.Struct` of string fields.
pub(crate) fn string_struct<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Struct {
    Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    }
}

pub(crate) fn header_value_option(h: &ir::HeaderValueOption) -> core_v3::HeaderValueOption {
    use core_v3::header_value_option::HeaderAppendAction;
    let action = match h.append_action {
        ir::AppendAction::OverwriteIfExistsOrAdd => HeaderAppendAction::OverwriteIfExistsOrAdd,
        ir::AppendAction::AppendIfExistsOrAdd => HeaderAppendAction::AppendIfExistsOrAdd,
    };
    core_v3::HeaderValueOption {
        header: Some(core_v3::HeaderValue {
            key: h.key.clone(),
            value: h.value.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

pub(crate) fn header_value_options(
    hs: &[ir::HeaderValueOption],
) -> Vec<core_v3::HeaderValueOption> {
    hs.iter().map(header_value_option).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

    #[test]
    fn config_sources_by_kind() {
        use core_v3::config_source::ConfigSourceSpecifier as S;
        assert!(matches!(
            config_source(&ConfigSourceKind::Ads).config_source_specifier,
            Some(S::Ads(_))
        ));
        assert!(matches!(
            config_source(&ConfigSourceKind::SelfSource).config_source_specifier,
            Some(S::Self_(core_v3::SelfConfigSource { transport_api_version }))
                if transport_api_version == core_v3::ApiVersion::V3 as i32
        ));
        let grpc = config_source(&ConfigSourceKind::Grpc {
            cluster_name: "xds_cluster".into(),
            delta: false,
        });
        assert!(matches!(
            grpc.config_source_specifier,
            Some(S::ApiConfigSource(ref a))
                if a.api_type == core_v3::api_config_source::ApiType::Grpc as i32
        ));
        assert_eq!(grpc.resource_api_version, core_v3::ApiVersion::V3 as i32);
        assert_eq!(
            ConfigSourceKind::Grpc {
                cluster_name: "x".into(),
                delta: true
            }
            .to_string(),
            "delta_grpc:x"
        );
    }

    fn eds_cluster(name: &str, endpoints: Vec<ir::Endpoint>) -> ir::Cluster {
        ir::Cluster {
            name: name.to_string(),
            service: "svc.ns.svc.cluster.local".to_string(),
            port: 80,
            subset: None,
            discovery: Discovery::Eds,
            endpoints,
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

    #[test]
    fn duration_keeps_seconds_and_nanos() {
        let d = duration(StdDuration::from_millis(1500));
        assert_eq!(d.seconds, 1);
        assert_eq!(d.nanos, 500_000_000);
        assert_eq!(
            duration(StdDuration::ZERO),
            Duration {
                seconds: 0,
                nanos: 0
            }
        );
    }

    #[test]
    fn build_emits_one_cla_per_eds_cluster_sorted_by_name() {
        let mut dns = eds_cluster("outbound|80||a.example.com", vec![]);
        dns.discovery = Discovery::StrictDns;
        let model = Model {
            listeners: vec![],
            route_configs: vec![],
            clusters: vec![
                dns,
                eds_cluster(
                    "outbound|80|v1|svc.ns.svc.cluster.local",
                    vec![ir::Endpoint {
                        address: "10.0.0.1".to_string(),
                        port: 8080,
                        weight: None,
                        locality: None,
                    }],
                ),
                eds_cluster("outbound|80||svc.ns.svc.cluster.local", vec![]),
            ],
        };
        let res = build(&model);
        assert_eq!(res.clusters.len(), 3);
        assert_eq!(res.clusters[0].name, "outbound|80||a.example.com");
        let names: Vec<_> = res
            .endpoints
            .iter()
            .map(|c| c.cluster_name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "outbound|80|v1|svc.ns.svc.cluster.local",
                "outbound|80||svc.ns.svc.cluster.local"
            ]
        );
        assert_eq!(res.endpoints[0].endpoints.len(), 1);
        // No endpoints: an empty assignment, still served.
        assert!(res.endpoints[1].endpoints.is_empty());
    }
}
