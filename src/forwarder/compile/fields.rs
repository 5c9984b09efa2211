//! The forwarder's capability set, written out: for every Envoy message the compiler reads,
//! the fields it honours. Any other field set on a resource (at any depth, including inside
//! `typed_config` Anys) is reported with its path, so the resource is NACKed instead of being
//! half-applied.
//!
//! The walk is reflective (prost-reflect over the vendored Envoy descriptor set), so a field the
//! list does not name can never slip through: new Envoy fields are rejected by default. Value
//! checks (enum values, ranges, combinations) are done by the typed conversion in
//! [`super`].

use prost_reflect::{DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage, Value};

/// `(message full name, supported fields)`. A message reached through a supported field but
/// absent here supports no field at all (any field set on it is an error).
pub(super) const SUPPORTED: &[(&str, &[&str])] = &[
    // ---- LDS
    (
        "envoy.config.listener.v3.Listener",
        // traffic_direction: informational for Envoy's stats; no data-plane effect here.
        &["name", "address", "filter_chains", "traffic_direction"],
    ),
    ("envoy.config.core.v3.Address", &["socket_address"]),
    (
        "envoy.config.core.v3.SocketAddress",
        &["address", "port_value", "protocol"],
    ),
    ("envoy.config.listener.v3.FilterChain", &["filters"]),
    ("envoy.config.listener.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "stat_prefix",
            "rds",
            "http_filters",
            "use_remote_address",
            "codec_type",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.Rds",
        &["config_source", "route_config_name"],
    ),
    (
        "envoy.config.core.v3.ConfigSource",
        // initial_fetch_timeout: how long Envoy waits before using a missing resource; the
        // forwarder never waits (a missing RDS answers 404, a missing CLA 503).
        &[
            "ads",
            "self",
            "resource_api_version",
            "initial_fetch_timeout",
        ],
    ),
    // `self` (the server that sent the resource): its transport API version.
    (
        "envoy.config.core.v3.SelfConfigSource",
        &["transport_api_version"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        &["name", "typed_config"],
    ),
    // Router, HCM-level HTTPFault and Cors: no field supported (empty configs only).
    // ---- RDS
    (
        "envoy.config.route.v3.RouteConfiguration",
        &[
            "name",
            "virtual_hosts",
            // validate_clusters: a config-load check; the compiler never rejects a route to an
            // unknown cluster (503 NC at request time, like Envoy with validation off).
            "validate_clusters",
            "max_direct_response_body_size_bytes",
            "ignore_port_in_host_matching",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "request_mirror_policies",
        ],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &[
            "name",
            "domains",
            "routes",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "retry_policy",
            "request_mirror_policies",
        ],
    ),
    (
        "envoy.config.route.v3.Route",
        &[
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            // metadata: opaque to routing (Istio's `istio.config` back-reference).
            "metadata",
            "decorator",
            "typed_per_filter_config",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
    ),
    ("envoy.config.core.v3.Metadata", &["filter_metadata"]),
    ("envoy.config.route.v3.Decorator", &["operation"]),
    (
        "envoy.config.route.v3.RouteMatch",
        &[
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "case_sensitive",
            "headers",
            "query_parameters",
            "grpc",
        ],
    ),
    (
        "envoy.type.matcher.v3.RegexMatcher",
        &["regex", "google_re2"],
    ),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &[
            "name",
            "exact_match",
            "safe_regex_match",
            "range_match",
            "present_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "string_match",
            "invert_match",
            "treat_missing_header_as_empty",
        ],
    ),
    ("envoy.type.v3.Int64Range", &["start", "end"]),
    (
        "envoy.type.matcher.v3.StringMatcher",
        &[
            "exact",
            "prefix",
            "suffix",
            "safe_regex",
            "contains",
            "ignore_case",
        ],
    ),
    (
        "envoy.config.route.v3.QueryParameterMatcher",
        &["name", "string_match", "present_match"],
    ),
    (
        "envoy.config.route.v3.RouteAction",
        &[
            "cluster",
            "weighted_clusters",
            "timeout",
            "retry_policy",
            "request_mirror_policies",
            "prefix_rewrite",
            "regex_rewrite",
            "host_rewrite_literal",
            "hash_policy",
            "max_grpc_timeout",
        ],
    ),
    (
        "envoy.config.route.v3.WeightedCluster",
        &["clusters", "total_weight"],
    ),
    (
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        &[
            "name",
            "weight",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy",
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
            "retriable_status_codes",
            "retry_back_off",
            // previous_priorities: the forwarder has a single priority level (CLAs with a
            // priority other than 0 are rejected), where the predicate has no effect.
            "retry_priority",
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryHostPredicate",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryPriority",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
        &["update_frequency"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy.RetryBackOff",
        &["base_interval", "max_interval"],
    ),
    (
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        &[
            "cluster",
            "runtime_fraction",
            // trace_sampled: the forwarder does no tracing.
            "trace_sampled",
            "disable_shadow_host_suffix_append",
            "host_rewrite_literal",
        ],
    ),
    (
        "envoy.config.core.v3.RuntimeFractionalPercent",
        // runtime_key: the forwarder has no runtime layer, so the default value always
        // applies, as in an Envoy without runtime overrides.
        &["default_value", "runtime_key"],
    ),
    (
        "envoy.type.v3.FractionalPercent",
        &["numerator", "denominator"],
    ),
    (
        "envoy.type.matcher.v3.RegexMatchAndSubstitute",
        &["pattern", "substitution"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy",
        &[
            "header",
            "cookie",
            "connection_properties",
            "query_parameter",
            "terminal",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Header",
        &["header_name"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.Cookie",
        &["name", "ttl", "path"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties",
        &["source_ip"],
    ),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter",
        &["name"],
    ),
    (
        "envoy.config.route.v3.RedirectAction",
        &[
            "scheme_redirect",
            "https_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "regex_rewrite",
            "response_code",
            "strip_query",
        ],
    ),
    (
        "envoy.config.route.v3.DirectResponseAction",
        &["status", "body"],
    ),
    (
        "envoy.config.core.v3.DataSource",
        &["inline_bytes", "inline_string"],
    ),
    (
        "envoy.config.core.v3.HeaderValueOption",
        &["header", "append", "append_action"],
    ),
    (
        "envoy.config.core.v3.HeaderValue",
        &["key", "value", "raw_value"],
    ),
    // per-route filter configs
    (
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        &["delay", "abort"],
    ),
    (
        "envoy.extensions.filters.common.fault.v3.FaultDelay",
        &["fixed_delay", "percentage"],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.FaultAbort",
        &["http_status", "grpc_status", "percentage"],
    ),
    (
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        &[
            "allow_origin_string_match",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "max_age",
            "allow_credentials",
            "filter_enabled",
            "forward_not_matching_preflights",
        ],
    ),
    // ---- CDS
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "type",
            "eds_cluster_config",
            "connect_timeout",
            "lb_policy",
            "circuit_breakers",
            "common_lb_config",
            "load_assignment",
            "outlier_detection",
            // ring hash / maglev tuning: the forwarder approximates both with consistent
            // hashing over the endpoints (see table::LbPolicy::ConsistentHash).
            "ring_hash_lb_config",
            "maglev_lb_config",
            "least_request_lb_config",
            "typed_extension_protocol_options",
            "upstream_connection_options",
            "dns_refresh_rate",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.EdsClusterConfig",
        &["eds_config", "service_name"],
    ),
    ("envoy.config.cluster.v3.CircuitBreakers", &["thresholds"]),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig",
        // Without active health checking every endpoint counts as healthy, so the panic
        // threshold only matters with outlier ejection; carried to the table.
        &["healthy_panic_threshold"],
    ),
    ("envoy.type.v3.Percent", &["value"]),
    (
        "envoy.config.cluster.v3.OutlierDetection",
        &[
            "consecutive_5xx",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
            "enforcing_consecutive_5xx",
            // success-rate detection: only "disabled" (0) is accepted, checked by value.
            "enforcing_success_rate",
            "enforcing_local_origin_success_rate",
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
            "split_external_local_origin_errors",
            "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.RingHashLbConfig",
        &["minimum_ring_size", "maximum_ring_size", "hash_function"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.MaglevLbConfig",
        &["table_size"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
        &["choice_count"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &["common_http_protocol_options", "explicit_http_config"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        &[
            "idle_timeout",
            "max_connection_duration",
            "max_requests_per_connection",
        ],
    ),
    // Http1ProtocolOptions / Http2ProtocolOptions: no field supported (empty only).
    (
        "envoy.config.cluster.v3.UpstreamConnectionOptions",
        &["tcp_keepalive"],
    ),
    (
        "envoy.config.core.v3.TcpKeepalive",
        &["keepalive_probes", "keepalive_time", "keepalive_interval"],
    ),
    // ---- EDS (and inline load_assignment)
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &["cluster_name", "endpoints"],
    ),
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        // load_balancing_weight: ignored by Envoy without locality_weighted_lb_config, which
        // the forwarder does not support; so ignoring it is Envoy's behaviour.
        &[
            "locality",
            "lb_endpoints",
            "load_balancing_weight",
            "priority",
        ],
    ),
    (
        "envoy.config.core.v3.Locality",
        &["region", "zone", "sub_zone"],
    ),
    (
        "envoy.config.endpoint.v3.LbEndpoint",
        &[
            "endpoint",
            "health_status",
            "load_balancing_weight",
            "metadata",
        ],
    ),
    (
        "envoy.config.endpoint.v3.Endpoint",
        // hostname: informational (used by Envoy for auto_host_rewrite, unsupported here).
        &["address", "hostname"],
    ),
];

/// `typed_config` types the compiler can read (anywhere an Any appears). Which type is valid
/// at which place is checked by the typed conversion.
pub(super) const SUPPORTED_ANY: &[&str] = &[
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
];

/// A field set on a resource that the forwarder does not honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unsupported {
    pub field: String,
    pub message: String,
}

fn supported_fields(full_name: &str) -> &'static [&'static str] {
    SUPPORTED
        .iter()
        .find(|(n, _)| *n == full_name)
        .map(|(_, f)| *f)
        .unwrap_or(&[])
}

/// Well-known leaf messages (wrappers, Duration, Struct, ...): nothing to check inside.
fn is_leaf(desc: &MessageDescriptor) -> bool {
    let name = desc.full_name();
    name.starts_with("google.protobuf.") && name != "google.protobuf.Any"
}

/// Every field set on `msg` (recursively) that the forwarder does not support, and every
/// unknown field (a field number the vendored Envoy API does not know, i.e. a newer control
/// plane).
pub(super) fn unsupported_fields(msg: &DynamicMessage, path: &str) -> Vec<Unsupported> {
    let mut out = Vec::new();
    walk(msg, path, &mut out);
    out
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn walk(msg: &DynamicMessage, path: &str, out: &mut Vec<Unsupported>) {
    let desc = msg.descriptor();
    if is_leaf(&desc) {
        return;
    }
    for unknown in msg.unknown_fields() {
        out.push(Unsupported {
            field: join(path, &format!("#{}", unknown.number())),
            message: format!(
                "field number {} of {} is unknown to the forwarder (newer envoy api?)",
                unknown.number(),
                desc.full_name()
            ),
        });
    }
    if desc.full_name() == "google.protobuf.Any" {
        walk_any(msg, path, out);
        return;
    }
    let supported = supported_fields(desc.full_name());
    for (field, value) in msg.fields() {
        let here = join(path, field.name());
        if !supported.contains(&field.name()) {
            out.push(Unsupported {
                field: here,
                message: format!(
                    "{}.{} is not supported by the forwarder",
                    desc.full_name(),
                    field.name()
                ),
            });
            continue;
        }
        walk_value(value, &field.kind(), &here, out);
    }
}

fn walk_value(value: &Value, kind: &Kind, path: &str, out: &mut Vec<Unsupported>) {
    match value {
        Value::Message(m) => walk(m, path, out),
        Value::List(items) => {
            for (i, v) in items.iter().enumerate() {
                walk_value(v, kind, &format!("{path}[{i}]"), out);
            }
        }
        Value::Map(entries) => {
            let value_kind = match kind {
                Kind::Message(m) if m.is_map_entry() => m.map_entry_value_field().kind(),
                other => other.clone(),
            };
            let mut keys: Vec<&MapKey> = entries.keys().collect();
            keys.sort();
            for k in keys {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                if let Some(v) = entries.get(k) {
                    walk_value(v, &value_kind, &format!("{path}[{key}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn walk_any(any: &DynamicMessage, path: &str, out: &mut Vec<Unsupported>) {
    let type_url = match any.get_field_by_name("type_url").as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let type_name = type_url.rsplit('/').next().unwrap_or_default().to_string();
    if !SUPPORTED_ANY.contains(&type_name.as_str()) {
        out.push(Unsupported {
            field: path.to_string(),
            message: format!("typed config {type_url:?} is not supported by the forwarder"),
        });
        return;
    }
    let pool = super::descriptors::pool();
    let Some(desc) = pool.get_message_by_name(&type_name) else {
        out.push(Unsupported {
            field: path.to_string(),
            message: format!("typed config {type_url:?} is not in the envoy api descriptors"),
        });
        return;
    };
    let bytes = match any.get_field_by_name("value").as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    match DynamicMessage::decode(desc, bytes) {
        Ok(inner) => walk(&inner, path, out),
        Err(e) => out.push(Unsupported {
            field: path.to_string(),
            message: format!("typed config {type_url:?} does not decode: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_message_and_field_exists_in_the_envoy_api() {
        let pool = crate::forwarder::compile::descriptors::pool();
        for (name, fields) in SUPPORTED {
            let desc = pool
                .get_message_by_name(name)
                .unwrap_or_else(|| panic!("{name} is not an envoy message"));
            for f in *fields {
                assert!(
                    desc.get_field_by_name(f).is_some(),
                    "{name} has no field {f}"
                );
            }
        }
        for name in SUPPORTED_ANY {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }
}
