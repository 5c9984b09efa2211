//! [`ir::RouteConfig`] → `envoy.config.route.v3.RouteConfiguration`: virtual hosts, routes,
//! matches and actions (forward with mirrors and retries, redirect, direct response).

use envoy_types::pb::envoy::config::core::v3 as core_v3;
use envoy_types::pb::envoy::config::route::v3 as route_v3;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault_v3;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors_v3;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault_v3;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3 as previous_hosts_v3;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3 as previous_priorities_v3;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_v3;
use envoy_types::pb::envoy::r#type::v3 as type_v3;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use super::listener::{CORS_FILTER, FAULT_FILTER};
use super::{
    boolean, duration, fractional_percent, header_value_options, regex_matcher, string_matcher,
    string_struct, uint32,
};
use crate::ir;

pub const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.retry_host_predicates.previous_hosts";
pub const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";
/// `RouteConfiguration.max_direct_response_body_size_bytes`, as istiod sets it (1 MiB).
pub const MAX_DIRECT_RESPONSE_BODY_SIZE_BYTES: u32 = 1024 * 1024;

/// A route configuration with istiod's sidecar flags: clusters not validated, 1 MiB direct
/// response bodies, port ignored in host matching.
pub fn build_route_configuration(rc: &ir::RouteConfig) -> route_v3::RouteConfiguration {
    route_v3::RouteConfiguration {
        name: rc.name.clone(),
        virtual_hosts: rc.virtual_hosts.iter().map(build_virtual_host).collect(),
        validate_clusters: Some(boolean(false)),
        max_direct_response_body_size_bytes: Some(uint32(MAX_DIRECT_RESPONSE_BODY_SIZE_BYTES)),
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

pub fn build_virtual_host(vh: &ir::VirtualHost) -> route_v3::VirtualHost {
    route_v3::VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes: vh.routes.iter().map(build_route).collect(),
        ..Default::default()
    }
}

pub fn build_route(r: &ir::Route) -> route_v3::Route {
    // envoy-types' field type; its random encoding order is fixed by `canonical::encode`.
    #[allow(clippy::disallowed_types)]
    let mut typed_per_filter_config = std::collections::HashMap::new();
    if let Some(fault) = r.fault.as_ref().and_then(build_http_fault) {
        typed_per_filter_config.insert(FAULT_FILTER.to_string(), pack_any(fault));
    }
    if let Some(cors) = &r.cors {
        typed_per_filter_config.insert(CORS_FILTER.to_string(), pack_any(build_cors_policy(cors)));
    }
    route_v3::Route {
        name: r.name.clone(),
        r#match: Some(build_route_match(&r.matcher)),
        action: build_action(&r.action),
        metadata: r.config_path.as_deref().map(config_metadata),
        decorator: (!r.decorator.is_empty()).then(|| route_v3::Decorator {
            operation: r.decorator.clone(),
            ..Default::default()
        }),
        request_headers_to_add: header_value_options(&r.request_headers_to_add),
        request_headers_to_remove: r.request_headers_to_remove.clone(),
        response_headers_to_add: header_value_options(&r.response_headers_to_add),
        response_headers_to_remove: r.response_headers_to_remove.clone(),
        typed_per_filter_config,
        stat_prefix: r.stat_prefix.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// `filter_metadata.istio.config = <path>`, as istiod's `BuildConfigInfoMetadata`.
fn config_metadata(path: &str) -> core_v3::Metadata {
    core_v3::Metadata {
        filter_metadata: [("istio".to_string(), string_struct([("config", path)]))]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

fn build_action(action: &ir::RouteAction) -> Option<route_v3::route::Action> {
    use route_v3::route::Action;
    match action {
        ir::RouteAction::Forward(f) => Some(Action::Route(build_route_action(f))),
        ir::RouteAction::Redirect(r) => build_redirect_action(r).map(Action::Redirect),
        ir::RouteAction::DirectResponse(d) => {
            Some(Action::DirectResponse(build_direct_response_action(d)))
        }
    }
}

// ===== match =====

fn build_route_match(m: &ir::RouteMatch) -> route_v3::RouteMatch {
    use route_v3::route_match::PathSpecifier;
    let path = match &m.path {
        ir::PathMatch::Prefix(p) => PathSpecifier::Prefix(p.clone()),
        ir::PathMatch::Exact(p) => PathSpecifier::Path(p.clone()),
        ir::PathMatch::Regex(r) => PathSpecifier::SafeRegex(regex_matcher(r)),
    };
    route_v3::RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.case_sensitive.map(boolean),
        headers: m.headers.iter().map(build_header_matcher).collect(),
        query_parameters: m
            .query_parameters
            .iter()
            .map(build_query_parameter_matcher)
            .collect(),
        ..Default::default()
    }
}

fn build_header_matcher(h: &ir::HeaderMatcher) -> route_v3::HeaderMatcher {
    use route_v3::header_matcher::HeaderMatchSpecifier;
    let specifier = match &h.matcher {
        ir::HeaderMatch::String(s) => HeaderMatchSpecifier::StringMatch(string_matcher(s)),
        ir::HeaderMatch::Present => HeaderMatchSpecifier::PresentMatch(true),
    };
    route_v3::HeaderMatcher {
        name: h.name.clone(),
        header_match_specifier: Some(specifier),
        invert_match: h.invert,
        treat_missing_header_as_empty: h.treat_missing_header_as_empty,
    }
}

fn build_query_parameter_matcher(q: &ir::QueryParameterMatcher) -> route_v3::QueryParameterMatcher {
    use route_v3::query_parameter_matcher::QueryParameterMatchSpecifier;
    let specifier = match &q.matcher {
        ir::HeaderMatch::String(s) => QueryParameterMatchSpecifier::StringMatch(string_matcher(s)),
        ir::HeaderMatch::Present => QueryParameterMatchSpecifier::PresentMatch(true),
    };
    route_v3::QueryParameterMatcher {
        name: q.name.clone(),
        query_parameter_match_specifier: Some(specifier),
    }
}

// ===== forward =====

/// The `route` action: cluster or weighted clusters, timeout (always, `0s` included, and the
/// same `max_grpc_timeout`), retries, mirrors, rewrites and hash policies.
pub fn build_route_action(f: &ir::Forward) -> route_v3::RouteAction {
    use route_v3::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    let cluster_specifier = match &f.destination {
        ir::ClusterSpecifier::Cluster(name) => ClusterSpecifier::Cluster(name.clone()),
        ir::ClusterSpecifier::Weighted(clusters) => {
            ClusterSpecifier::WeightedClusters(route_v3::WeightedCluster {
                // No total_weight: Envoy sums the weights (istiod dropped it in 1.18).
                clusters: clusters.iter().map(build_cluster_weight).collect(),
                ..Default::default()
            })
        }
    };
    let timeout = duration(f.timeout);
    // Deprecated in Envoy in favour of max_stream_duration, but istiod still sets it for
    // sidecars (equal to the timeout, 0s included) and Envoy still honours it.
    #[allow(deprecated)]
    route_v3::RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: Some(timeout),
        max_grpc_timeout: Some(timeout),
        retry_policy: f.retry.as_ref().map(build_retry_policy),
        request_mirror_policies: build_request_mirror_policies(&f.mirrors),
        prefix_rewrite: f.prefix_rewrite.clone().unwrap_or_default(),
        regex_rewrite: f
            .regex_rewrite
            .as_ref()
            .map(|r| matcher_v3::RegexMatchAndSubstitute {
                pattern: Some(regex_matcher(&r.pattern)),
                substitution: r.substitution.clone(),
            }),
        host_rewrite_specifier: f
            .host_rewrite_literal
            .clone()
            .map(HostRewriteSpecifier::HostRewriteLiteral),
        hash_policy: f.hash_policy.iter().map(build_hash_policy).collect(),
        ..Default::default()
    }
}

fn build_cluster_weight(w: &ir::WeightedCluster) -> route_v3::weighted_cluster::ClusterWeight {
    use route_v3::weighted_cluster::cluster_weight::HostRewriteSpecifier;
    route_v3::weighted_cluster::ClusterWeight {
        name: w.name.clone(),
        weight: Some(UInt32Value { value: w.weight }),
        request_headers_to_add: header_value_options(&w.request_headers_to_add),
        request_headers_to_remove: w.request_headers_to_remove.clone(),
        response_headers_to_add: header_value_options(&w.response_headers_to_add),
        response_headers_to_remove: w.response_headers_to_remove.clone(),
        host_rewrite_specifier: w
            .host_rewrite_literal
            .clone()
            .map(HostRewriteSpecifier::HostRewriteLiteral),
        ..Default::default()
    }
}

/// One `RequestMirrorPolicy` per mirror, exactly as istiod's `TranslateRequestMirrorPolicy`:
/// cluster, `runtime_fraction{default_value}` without a runtime key, `trace_sampled: false`
/// and the `-shadow` suffix switch.
pub fn build_request_mirror_policies(
    mirrors: &[ir::MirrorPolicy],
) -> Vec<route_v3::route_action::RequestMirrorPolicy> {
    mirrors
        .iter()
        .map(|m| route_v3::route_action::RequestMirrorPolicy {
            cluster: m.cluster.clone(),
            runtime_fraction: Some(core_v3::RuntimeFractionalPercent {
                default_value: Some(fractional_percent(m.fraction)),
                runtime_key: String::new(),
            }),
            trace_sampled: Some(boolean(false)),
            disable_shadow_host_suffix_append: m.disable_shadow_host_suffix_append,
            ..Default::default()
        })
        .collect()
}

pub fn build_retry_policy(r: &ir::RetryPolicy) -> route_v3::RetryPolicy {
    use route_v3::retry_policy::{
        retry_host_predicate, retry_priority, RetryBackOff, RetryHostPredicate, RetryPriority,
    };
    let retry_host_predicate = if r.previous_hosts_predicate {
        vec![RetryHostPredicate {
            name: PREVIOUS_HOSTS_PREDICATE.to_string(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(pack_any(
                previous_hosts_v3::PreviousHostsPredicate {},
            ))),
        }]
    } else {
        Vec::new()
    };
    let retry_priority = r.previous_priorities.then(|| RetryPriority {
        name: PREVIOUS_PRIORITIES.to_string(),
        config_type: Some(retry_priority::ConfigType::TypedConfig(pack_any(
            previous_priorities_v3::PreviousPrioritiesConfig {
                update_frequency: 2,
            },
        ))),
    });
    route_v3::RetryPolicy {
        retry_on: r.retry_on.clone(),
        num_retries: Some(uint32(r.num_retries)),
        per_try_timeout: r.per_try_timeout.map(duration),
        retry_host_predicate,
        host_selection_retry_max_attempts: i64::from(r.host_selection_retry_max_attempts),
        retriable_status_codes: r.retriable_status_codes.clone(),
        retry_priority,
        retry_back_off: r.backoff_base_interval.map(|b| RetryBackOff {
            base_interval: Some(duration(b)),
            max_interval: None,
        }),
        ..Default::default()
    }
}

fn build_hash_policy(h: &ir::HashPolicy) -> route_v3::route_action::HashPolicy {
    use route_v3::route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
    };
    let specifier = match h {
        ir::HashPolicy::Header(name) => PolicySpecifier::Header(Header {
            header_name: name.clone(),
            regex_rewrite: None,
        }),
        ir::HashPolicy::Cookie { name, path, ttl } => PolicySpecifier::Cookie(Cookie {
            name: name.clone(),
            ttl: ttl.map(duration),
            path: path.clone().unwrap_or_default(),
            ..Default::default()
        }),
        ir::HashPolicy::SourceIp => {
            PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
        }
        ir::HashPolicy::QueryParameter(name) => {
            PolicySpecifier::QueryParameter(QueryParameter { name: name.clone() })
        }
    };
    route_v3::route_action::HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    }
}

// ===== redirect and direct response =====

/// `None` for a code Envoy cannot express (istiod then leaves the route without an action).
fn build_redirect_action(r: &ir::Redirect) -> Option<route_v3::RedirectAction> {
    use route_v3::redirect_action::{
        PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
    };
    let code = match r.response_code {
        0 | 301 => RedirectResponseCode::MovedPermanently,
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => return None,
    };
    let path = match (&r.path_redirect, &r.prefix_rewrite) {
        (Some(p), _) => Some(PathRewriteSpecifier::PathRedirect(p.clone())),
        (None, Some(p)) => Some(PathRewriteSpecifier::PrefixRewrite(p.clone())),
        (None, None) => None,
    };
    Some(route_v3::RedirectAction {
        host_redirect: r.host_redirect.clone().unwrap_or_default(),
        port_redirect: r.port_redirect.unwrap_or(0),
        response_code: code as i32,
        scheme_rewrite_specifier: r
            .scheme_redirect
            .clone()
            .map(SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: path,
        ..Default::default()
    })
}

fn build_direct_response_action(d: &ir::DirectResponse) -> route_v3::DirectResponseAction {
    use core_v3::data_source::Specifier;
    route_v3::DirectResponseAction {
        status: d.status,
        body: d.body.as_ref().map(|b| core_v3::DataSource {
            specifier: Some(match b {
                ir::Body::String(s) => Specifier::InlineString(s.clone()),
                ir::Body::Bytes(bytes) => Specifier::InlineBytes(bytes.clone()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ===== per-filter configs =====

/// `None` when neither a delay nor an abort is left (istiod emits no filter config then).
fn build_http_fault(f: &ir::Fault) -> Option<fault_v3::HttpFault> {
    if f.delay.is_none() && f.abort.is_none() {
        return None;
    }
    let delay = f.delay.as_ref().map(|d| common_fault_v3::FaultDelay {
        percentage: d.percentage.map(fractional_percent),
        fault_delay_secifier: Some(
            common_fault_v3::fault_delay::FaultDelaySecifier::FixedDelay(duration(d.fixed_delay)),
        ),
    });
    let abort = f.abort.as_ref().map(|a| fault_v3::FaultAbort {
        percentage: a.percentage.map(fractional_percent),
        error_type: Some(match a.status {
            ir::AbortStatus::Http(code) => fault_v3::fault_abort::ErrorType::HttpStatus(code),
            ir::AbortStatus::Grpc(code) => fault_v3::fault_abort::ErrorType::GrpcStatus(code),
        }),
        ..Default::default()
    });
    Some(fault_v3::HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

fn build_cors_policy(c: &ir::Cors) -> cors_v3::CorsPolicy {
    cors_v3::CorsPolicy {
        allow_origin_string_match: c
            .allow_origin_string_match
            .iter()
            .map(string_matcher)
            .collect(),
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: c.max_age.clone().unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(boolean),
        filter_enabled: Some(core_v3::RuntimeFractionalPercent {
            default_value: Some(type_v3::FractionalPercent {
                numerator: 100,
                denominator: type_v3::fractional_percent::DenominatorType::Hundred as i32,
            }),
            runtime_key: String::new(),
        }),
        forward_not_matching_preflights: c.forward_not_matching_preflights.map(boolean),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{value::Kind, Any, Duration};
    use prost::{Message, Name};
    use std::time::Duration as StdDuration;

    const V1: &str = "outbound|8000|v1|httpbin.default.svc.cluster.local";
    const V2: &str = "outbound|8000|v2|httpbin.default.svc.cluster.local";
    const V3: &str = "outbound|8000|v3|httpbin.default.svc.cluster.local";

    fn forward(destination: ir::ClusterSpecifier) -> ir::Forward {
        ir::Forward {
            destination,
            timeout: StdDuration::ZERO,
            retry: None,
            mirrors: vec![],
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite_literal: None,
            hash_policy: vec![],
        }
    }

    /// A plain 204 direct response: the neutral action for tests about other route fields.
    fn no_content() -> ir::RouteAction {
        ir::RouteAction::DirectResponse(ir::DirectResponse {
            status: 204,
            body: None,
        })
    }

    fn route(action: ir::RouteAction) -> ir::Route {
        ir::Route {
            name: String::new(),
            matcher: ir::RouteMatch {
                path: ir::PathMatch::Prefix("/".to_string()),
                case_sensitive: None,
                headers: vec![],
                query_parameters: vec![],
            },
            action,
            request_headers_to_add: vec![],
            request_headers_to_remove: vec![],
            response_headers_to_add: vec![],
            response_headers_to_remove: vec![],
            fault: None,
            cors: None,
            config_path: None,
            decorator: String::new(),
            stat_prefix: None,
        }
    }

    fn route_action(r: &route_v3::Route) -> &route_v3::RouteAction {
        match &r.action {
            Some(route_v3::route::Action::Route(a)) => a,
            other => panic!("expected a route action, got {other:?}"),
        }
    }

    fn redirect(code: u32) -> ir::Redirect {
        ir::Redirect {
            host_redirect: Some("example.com".to_string()),
            path_redirect: Some("/new".to_string()),
            prefix_rewrite: None,
            scheme_redirect: Some("https".to_string()),
            port_redirect: Some(8443),
            response_code: code,
        }
    }

    fn unpack<T: Message + Name + Default>(any: &Any) -> T {
        assert_eq!(any.type_url, T::type_url());
        T::decode(any.value.as_slice()).expect("Any decodes as its type")
    }

    #[test]
    fn mirror_policies_field_by_field() {
        let mirrors = [
            ir::MirrorPolicy {
                cluster: V2.to_string(),
                fraction: ir::Fraction {
                    numerator: 250_000,
                    denominator: ir::Denominator::Million,
                },
                disable_shadow_host_suffix_append: false,
            },
            ir::MirrorPolicy {
                cluster: V3.to_string(),
                fraction: ir::Fraction {
                    numerator: 100,
                    denominator: ir::Denominator::Hundred,
                },
                disable_shadow_host_suffix_append: true,
            },
        ];
        let p = build_request_mirror_policies(&mirrors);
        assert_eq!(p.len(), 2);

        assert_eq!(p[0].cluster, V2);
        assert!(p[0].cluster_header.is_empty());
        let rf = p[0]
            .runtime_fraction
            .as_ref()
            .expect("runtime_fraction set");
        assert_eq!(rf.runtime_key, "", "istiod sets no runtime_key");
        let dv = rf.default_value.as_ref().expect("default_value set");
        assert_eq!(dv.numerator, 250_000);
        assert_eq!(
            dv.denominator,
            type_v3::fractional_percent::DenominatorType::Million as i32
        );
        assert_eq!(p[0].trace_sampled, Some(boolean(false)));
        assert!(!p[0].disable_shadow_host_suffix_append);

        assert_eq!(p[1].cluster, V3);
        let dv = p[1]
            .runtime_fraction
            .as_ref()
            .and_then(|rf| rf.default_value.as_ref())
            .expect("default_value set");
        assert_eq!(dv.numerator, 100);
        assert_eq!(
            dv.denominator,
            type_v3::fractional_percent::DenominatorType::Hundred as i32
        );
        assert_eq!(p[1].trace_sampled, Some(boolean(false)));
        assert!(p[1].disable_shadow_host_suffix_append);
    }

    #[test]
    #[allow(deprecated)] // max_grpc_timeout
    fn route_action_carries_zero_timeout_and_mirrors() {
        let mut f = forward(ir::ClusterSpecifier::Cluster(V1.to_string()));
        f.mirrors = vec![ir::MirrorPolicy {
            cluster: V2.to_string(),
            fraction: ir::Fraction {
                numerator: 100,
                denominator: ir::Denominator::Hundred,
            },
            disable_shadow_host_suffix_append: false,
        }];
        let r = build_route(&route(ir::RouteAction::Forward(Box::new(f))));
        let a = route_action(&r);
        assert_eq!(
            a.cluster_specifier,
            Some(route_v3::route_action::ClusterSpecifier::Cluster(
                V1.to_string()
            ))
        );
        let zero = Duration {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(a.timeout, Some(zero), "0s timeout must be explicit");
        assert_eq!(a.max_grpc_timeout, Some(zero));
        assert_eq!(a.request_mirror_policies.len(), 1);
        assert_eq!(a.request_mirror_policies[0].cluster, V2);
        assert!(a.retry_policy.is_none());
    }

    #[test]
    #[allow(deprecated)] // max_grpc_timeout
    fn nonzero_timeout_is_copied_to_max_grpc_timeout() {
        let mut f = forward(ir::ClusterSpecifier::Cluster(V1.to_string()));
        f.timeout = StdDuration::from_millis(2500);
        let a = build_route_action(&f);
        let want = Duration {
            seconds: 2,
            nanos: 500_000_000,
        };
        assert_eq!(a.timeout, Some(want));
        assert_eq!(a.max_grpc_timeout, Some(want));
    }

    #[test]
    #[allow(deprecated)] // total_weight
    fn weighted_clusters_have_no_total_weight() {
        let wc = |name: &str, weight| ir::WeightedCluster {
            name: name.to_string(),
            weight,
            request_headers_to_add: vec![ir::HeaderValueOption {
                key: "x-version".to_string(),
                value: name.to_string(),
                append_action: ir::AppendAction::OverwriteIfExistsOrAdd,
            }],
            request_headers_to_remove: vec![],
            response_headers_to_add: vec![],
            response_headers_to_remove: vec!["x-internal".to_string()],
            host_rewrite_literal: (weight == 25).then(|| "v2.example".to_string()),
        };
        let a = build_route_action(&forward(ir::ClusterSpecifier::Weighted(vec![
            wc(V1, 75),
            wc(V2, 25),
        ])));
        let Some(route_v3::route_action::ClusterSpecifier::WeightedClusters(w)) =
            &a.cluster_specifier
        else {
            panic!("expected weighted clusters");
        };
        assert_eq!(w.total_weight, None);
        assert_eq!(w.clusters.len(), 2);
        assert_eq!(w.clusters[0].name, V1);
        assert_eq!(w.clusters[0].weight, Some(uint32(75)));
        assert_eq!(w.clusters[1].name, V2);
        assert_eq!(w.clusters[1].weight, Some(uint32(25)));
        let h = &w.clusters[0].request_headers_to_add[0];
        assert_eq!(h.header.as_ref().map(|h| h.key.as_str()), Some("x-version"));
        assert_eq!(
            h.append_action,
            core_v3::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(w.clusters[0].response_headers_to_remove, ["x-internal"]);
        assert_eq!(w.clusters[0].host_rewrite_specifier, None);
        assert_eq!(
            w.clusters[1].host_rewrite_specifier,
            Some(
                route_v3::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                    "v2.example".to_string()
                )
            )
        );
    }

    #[test]
    fn retry_policy_with_predicate_priority_and_backoff() {
        let r = build_retry_policy(&ir::RetryPolicy {
            num_retries: 3,
            retry_on: "gateway-error,retriable-status-codes".to_string(),
            retriable_status_codes: vec![503],
            per_try_timeout: Some(StdDuration::from_secs(2)),
            host_selection_retry_max_attempts: 5,
            previous_hosts_predicate: true,
            previous_priorities: true,
            backoff_base_interval: Some(StdDuration::from_millis(100)),
        });
        assert_eq!(r.retry_on, "gateway-error,retriable-status-codes");
        assert_eq!(r.num_retries, Some(uint32(3)));
        assert_eq!(r.retriable_status_codes, [503]);
        assert_eq!(
            r.per_try_timeout,
            Some(Duration {
                seconds: 2,
                nanos: 0
            })
        );
        assert_eq!(r.host_selection_retry_max_attempts, 5);
        assert_eq!(r.retry_host_predicate.len(), 1);
        assert_eq!(r.retry_host_predicate[0].name, PREVIOUS_HOSTS_PREDICATE);
        let Some(route_v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any)) =
            &r.retry_host_predicate[0].config_type
        else {
            panic!("previous_hosts predicate has no typed config");
        };
        let _: previous_hosts_v3::PreviousHostsPredicate = unpack(any);
        let prio = r.retry_priority.as_ref().expect("retry_priority set");
        assert_eq!(prio.name, PREVIOUS_PRIORITIES);
        let Some(route_v3::retry_policy::retry_priority::ConfigType::TypedConfig(any)) =
            &prio.config_type
        else {
            panic!("previous_priorities has no typed config");
        };
        let cfg: previous_priorities_v3::PreviousPrioritiesConfig = unpack(any);
        assert_eq!(cfg.update_frequency, 2);
        assert_eq!(
            r.retry_back_off.and_then(|b| b.base_interval),
            Some(Duration {
                seconds: 0,
                nanos: 100_000_000
            })
        );
    }

    #[test]
    fn retry_policy_without_predicate_or_priority() {
        let r = build_retry_policy(&ir::RetryPolicy {
            num_retries: 2,
            retry_on: "connect-failure".to_string(),
            retriable_status_codes: vec![],
            per_try_timeout: None,
            host_selection_retry_max_attempts: 5,
            previous_hosts_predicate: false,
            previous_priorities: false,
            backoff_base_interval: None,
        });
        assert!(r.retry_host_predicate.is_empty());
        assert!(r.retry_priority.is_none());
        assert!(r.retry_back_off.is_none());
        assert!(r.per_try_timeout.is_none());
    }

    #[test]
    fn redirect_codes_map_to_envoy_enum() {
        use route_v3::redirect_action::RedirectResponseCode as C;
        for (code, want) in [
            (301, C::MovedPermanently),
            (302, C::Found),
            (303, C::SeeOther),
            (307, C::TemporaryRedirect),
            (308, C::PermanentRedirect),
        ] {
            let r = build_route(&route(ir::RouteAction::Redirect(redirect(code))));
            let Some(route_v3::route::Action::Redirect(ra)) = &r.action else {
                panic!("expected a redirect for {code}");
            };
            assert_eq!(ra.response_code, want as i32, "code {code}");
            assert_eq!(ra.host_redirect, "example.com");
            assert_eq!(ra.port_redirect, 8443);
            assert_eq!(
                ra.scheme_rewrite_specifier,
                Some(
                    route_v3::redirect_action::SchemeRewriteSpecifier::SchemeRedirect(
                        "https".to_string()
                    )
                )
            );
            assert_eq!(
                ra.path_rewrite_specifier,
                Some(
                    route_v3::redirect_action::PathRewriteSpecifier::PathRedirect(
                        "/new".to_string()
                    )
                )
            );
        }
        // A code Envoy cannot express leaves the route without an action, as istiod does.
        let r = build_route(&route(ir::RouteAction::Redirect(redirect(304))));
        assert_eq!(r.action, None);
    }

    #[test]
    fn redirect_prefix_rewrite() {
        let mut rd = redirect(302);
        rd.path_redirect = None;
        rd.prefix_rewrite = Some("/v2/".to_string());
        rd.port_redirect = None;
        rd.host_redirect = None;
        let r = build_route(&route(ir::RouteAction::Redirect(rd)));
        let Some(route_v3::route::Action::Redirect(ra)) = &r.action else {
            panic!("expected a redirect");
        };
        assert_eq!(
            ra.path_rewrite_specifier,
            Some(
                route_v3::redirect_action::PathRewriteSpecifier::PrefixRewrite("/v2/".to_string())
            )
        );
        assert_eq!(ra.port_redirect, 0);
        assert_eq!(ra.host_redirect, "");
    }

    #[test]
    fn direct_response_and_no_action() {
        let r = build_route(&route(ir::RouteAction::DirectResponse(
            ir::DirectResponse {
                status: 503,
                body: Some(ir::Body::String("down".to_string())),
            },
        )));
        let Some(route_v3::route::Action::DirectResponse(d)) = &r.action else {
            panic!("expected a direct response");
        };
        assert_eq!(d.status, 503);
        assert_eq!(
            d.body.as_ref().and_then(|b| b.specifier.clone()),
            Some(core_v3::data_source::Specifier::InlineString(
                "down".to_string()
            ))
        );

        let r = build_route(&route(ir::RouteAction::DirectResponse(
            ir::DirectResponse {
                status: 200,
                body: Some(ir::Body::Bytes(vec![0, 1, 2])),
            },
        )));
        let Some(route_v3::route::Action::DirectResponse(d)) = &r.action else {
            panic!("expected a direct response");
        };
        assert_eq!(
            d.body.as_ref().and_then(|b| b.specifier.clone()),
            Some(core_v3::data_source::Specifier::InlineBytes(vec![0, 1, 2]))
        );
    }

    #[test]
    fn match_path_case_headers_and_query() {
        let mut ir_route = route(no_content());
        ir_route.matcher = ir::RouteMatch {
            path: ir::PathMatch::Regex("/api/v[0-9]+".to_string()),
            case_sensitive: Some(false),
            headers: vec![
                ir::HeaderMatcher {
                    name: "end-user".to_string(),
                    matcher: ir::HeaderMatch::String(ir::StringMatcher::Exact("jason".to_string())),
                    invert: false,
                    treat_missing_header_as_empty: false,
                },
                ir::HeaderMatcher {
                    name: "x-debug".to_string(),
                    matcher: ir::HeaderMatch::String(ir::StringMatcher::Prefix("y".to_string())),
                    invert: true,
                    treat_missing_header_as_empty: true,
                },
                ir::HeaderMatcher {
                    name: "x-present".to_string(),
                    matcher: ir::HeaderMatch::Present,
                    invert: false,
                    treat_missing_header_as_empty: false,
                },
            ],
            query_parameters: vec![
                ir::QueryParameterMatcher {
                    name: "q".to_string(),
                    matcher: ir::HeaderMatch::String(ir::StringMatcher::Regex("a.*".to_string())),
                },
                ir::QueryParameterMatcher {
                    name: "p".to_string(),
                    matcher: ir::HeaderMatch::Present,
                },
            ],
        };
        let m = build_route(&ir_route).r#match.expect("match set");
        assert_eq!(
            m.path_specifier,
            Some(route_v3::route_match::PathSpecifier::SafeRegex(
                matcher_v3::RegexMatcher {
                    regex: "/api/v[0-9]+".to_string(),
                    engine_type: None
                }
            ))
        );
        assert_eq!(m.case_sensitive, Some(boolean(false)));
        use route_v3::header_matcher::HeaderMatchSpecifier as H;
        assert_eq!(m.headers[0].name, "end-user");
        assert_eq!(
            m.headers[0].header_match_specifier,
            Some(H::StringMatch(matcher_v3::StringMatcher {
                ignore_case: false,
                match_pattern: Some(matcher_v3::string_matcher::MatchPattern::Exact(
                    "jason".to_string()
                )),
            }))
        );
        assert!(!m.headers[0].invert_match);
        assert!(m.headers[1].invert_match);
        assert!(m.headers[1].treat_missing_header_as_empty);
        assert_eq!(
            m.headers[2].header_match_specifier,
            Some(H::PresentMatch(true))
        );
        use route_v3::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        assert_eq!(m.query_parameters[0].name, "q");
        assert_eq!(
            m.query_parameters[0].query_parameter_match_specifier,
            Some(Q::StringMatch(string_matcher(&ir::StringMatcher::Regex(
                "a.*".to_string()
            ))))
        );
        assert_eq!(
            m.query_parameters[1].query_parameter_match_specifier,
            Some(Q::PresentMatch(true))
        );
    }

    #[test]
    fn matchless_route_has_no_case_sensitive_and_exact_path() {
        let r = build_route(&route(no_content()));
        let m = r.r#match.expect("match set");
        assert_eq!(m.case_sensitive, None);
        assert_eq!(
            m.path_specifier,
            Some(route_v3::route_match::PathSpecifier::Prefix(
                "/".to_string()
            ))
        );

        let mut ir_route = route(no_content());
        ir_route.matcher.path = ir::PathMatch::Exact("/status".to_string());
        ir_route.matcher.case_sensitive = Some(true);
        let m = build_route(&ir_route).r#match.expect("match set");
        assert_eq!(
            m.path_specifier,
            Some(route_v3::route_match::PathSpecifier::Path(
                "/status".to_string()
            ))
        );
        assert_eq!(m.case_sensitive, Some(boolean(true)));
    }

    #[test]
    fn metadata_decorator_stat_prefix_and_headers() {
        let mut ir_route = route(no_content());
        ir_route.name = "primary.m1".to_string();
        ir_route.config_path = Some(
            "/apis/networking.istio.io/v1/namespaces/default/virtual-service/httpbin".to_string(),
        );
        ir_route.decorator = "httpbin.default.svc.cluster.local:8000/*".to_string();
        ir_route.stat_prefix = Some("httpbin".to_string());
        ir_route.request_headers_to_add = vec![
            ir::HeaderValueOption {
                key: "a".to_string(),
                value: "1".to_string(),
                append_action: ir::AppendAction::OverwriteIfExistsOrAdd,
            },
            ir::HeaderValueOption {
                key: "b".to_string(),
                value: "2".to_string(),
                append_action: ir::AppendAction::AppendIfExistsOrAdd,
            },
        ];
        ir_route.request_headers_to_remove = vec!["x-remove".to_string()];
        ir_route.response_headers_to_add = vec![ir::HeaderValueOption {
            key: "c".to_string(),
            value: "3".to_string(),
            append_action: ir::AppendAction::OverwriteIfExistsOrAdd,
        }];
        ir_route.response_headers_to_remove = vec!["server".to_string()];
        let r = build_route(&ir_route);
        assert_eq!(r.name, "primary.m1");
        let md = r.metadata.expect("metadata set");
        let istio = md.filter_metadata.get("istio").expect("istio metadata");
        assert_eq!(
            istio.fields.get("config").and_then(|v| v.kind.clone()),
            Some(Kind::StringValue(
                "/apis/networking.istio.io/v1/namespaces/default/virtual-service/httpbin"
                    .to_string()
            ))
        );
        assert_eq!(
            r.decorator.map(|d| d.operation),
            Some("httpbin.default.svc.cluster.local:8000/*".to_string())
        );
        assert_eq!(r.stat_prefix, "httpbin");
        use core_v3::header_value_option::HeaderAppendAction as A;
        let adds: Vec<_> = r
            .request_headers_to_add
            .iter()
            .map(|h| {
                let hv = h.header.as_ref().expect("header set");
                (hv.key.as_str(), hv.value.as_str(), h.append_action)
            })
            .collect();
        assert_eq!(
            adds,
            [
                ("a", "1", A::OverwriteIfExistsOrAdd as i32),
                ("b", "2", A::AppendIfExistsOrAdd as i32)
            ]
        );
        assert_eq!(r.request_headers_to_remove, ["x-remove"]);
        assert_eq!(r.response_headers_to_add.len(), 1);
        assert_eq!(r.response_headers_to_remove, ["server"]);

        // Generated default routes carry neither metadata nor a decorator when none is given.
        let r = build_route(&route(no_content()));
        assert!(r.metadata.is_none());
        assert!(r.decorator.is_none());
        assert!(r.typed_per_filter_config.is_empty());
    }

    #[test]
    fn fault_per_filter_config() {
        let mut ir_route = route(no_content());
        ir_route.fault = Some(ir::Fault {
            delay: Some(ir::FaultDelay {
                fixed_delay: StdDuration::from_secs(5),
                percentage: Some(ir::Fraction {
                    numerator: 100_000,
                    denominator: ir::Denominator::Million,
                }),
            }),
            abort: Some(ir::FaultAbort {
                status: ir::AbortStatus::Http(400),
                percentage: None,
            }),
        });
        let r = build_route(&ir_route);
        let any = r
            .typed_per_filter_config
            .get(FAULT_FILTER)
            .expect("fault config present");
        let fault: fault_v3::HttpFault = unpack(any);
        let delay = fault.delay.expect("delay set");
        assert_eq!(
            delay.fault_delay_secifier,
            Some(
                common_fault_v3::fault_delay::FaultDelaySecifier::FixedDelay(Duration {
                    seconds: 5,
                    nanos: 0
                })
            )
        );
        assert_eq!(
            delay.percentage,
            Some(type_v3::FractionalPercent {
                numerator: 100_000,
                denominator: type_v3::fractional_percent::DenominatorType::Million as i32
            })
        );
        let abort = fault.abort.expect("abort set");
        assert_eq!(abort.percentage, None, "no percentage: no field");
        assert_eq!(
            abort.error_type,
            Some(fault_v3::fault_abort::ErrorType::HttpStatus(400))
        );

        ir_route.fault = Some(ir::Fault {
            delay: None,
            abort: Some(ir::FaultAbort {
                status: ir::AbortStatus::Grpc(14),
                percentage: Some(ir::Fraction {
                    numerator: 50,
                    denominator: ir::Denominator::Hundred,
                }),
            }),
        });
        let r = build_route(&ir_route);
        let fault: fault_v3::HttpFault = unpack(&r.typed_per_filter_config[FAULT_FILTER]);
        assert!(fault.delay.is_none());
        assert_eq!(
            fault.abort.and_then(|a| a.error_type),
            Some(fault_v3::fault_abort::ErrorType::GrpcStatus(14))
        );

        ir_route.fault = Some(ir::Fault {
            delay: None,
            abort: None,
        });
        assert!(build_route(&ir_route).typed_per_filter_config.is_empty());
    }

    #[test]
    fn cors_per_filter_config() {
        let mut ir_route = route(no_content());
        ir_route.cors = Some(ir::Cors {
            allow_origin_string_match: vec![
                ir::StringMatcher::Exact("https://a.example".to_string()),
                ir::StringMatcher::Regex(".*\\.b\\.example".to_string()),
            ],
            allow_methods: "GET,POST".to_string(),
            allow_headers: "x-a".to_string(),
            expose_headers: "x-b".to_string(),
            max_age: Some("86400".to_string()),
            allow_credentials: Some(true),
            forward_not_matching_preflights: Some(false),
        });
        let r = build_route(&ir_route);
        let cors: cors_v3::CorsPolicy = unpack(&r.typed_per_filter_config[CORS_FILTER]);
        assert_eq!(cors.allow_origin_string_match.len(), 2);
        assert_eq!(
            cors.allow_origin_string_match[1].match_pattern,
            Some(matcher_v3::string_matcher::MatchPattern::SafeRegex(
                regex_matcher(".*\\.b\\.example")
            ))
        );
        assert_eq!(cors.allow_methods, "GET,POST");
        assert_eq!(cors.allow_headers, "x-a");
        assert_eq!(cors.expose_headers, "x-b");
        assert_eq!(cors.max_age, "86400");
        assert_eq!(cors.allow_credentials, Some(boolean(true)));
        assert_eq!(cors.forward_not_matching_preflights, Some(boolean(false)));
        let fe = cors
            .filter_enabled
            .and_then(|f| f.default_value)
            .expect("filter_enabled set");
        assert_eq!(fe.numerator, 100);
        assert_eq!(
            fe.denominator,
            type_v3::fractional_percent::DenominatorType::Hundred as i32
        );
    }

    #[test]
    fn rewrites_and_hash_policies() {
        let mut f = forward(ir::ClusterSpecifier::Cluster(V1.to_string()));
        f.prefix_rewrite = Some("/v1/".to_string());
        f.regex_rewrite = Some(ir::RegexRewrite {
            pattern: "^/old/(.*)$".to_string(),
            substitution: "/new/\\1".to_string(),
        });
        f.host_rewrite_literal = Some("backend.internal".to_string());
        f.hash_policy = vec![
            ir::HashPolicy::Header("x-user".to_string()),
            ir::HashPolicy::Cookie {
                name: "session".to_string(),
                path: Some("/".to_string()),
                ttl: Some(StdDuration::from_secs(60)),
            },
            ir::HashPolicy::SourceIp,
            ir::HashPolicy::QueryParameter("id".to_string()),
        ];
        let a = build_route_action(&f);
        assert_eq!(a.prefix_rewrite, "/v1/");
        let rr = a.regex_rewrite.expect("regex_rewrite set");
        assert_eq!(rr.pattern.map(|p| p.regex), Some("^/old/(.*)$".to_string()));
        assert_eq!(rr.substitution, "/new/\\1");
        assert_eq!(
            a.host_rewrite_specifier,
            Some(
                route_v3::route_action::HostRewriteSpecifier::HostRewriteLiteral(
                    "backend.internal".to_string()
                )
            )
        );
        use route_v3::route_action::hash_policy::PolicySpecifier as P;
        let specs: Vec<_> = a
            .hash_policy
            .into_iter()
            .map(|h| h.policy_specifier.expect("specifier set"))
            .collect();
        assert!(matches!(&specs[0], P::Header(h) if h.header_name == "x-user"));
        let P::Cookie(c) = &specs[1] else {
            panic!("expected a cookie hash policy");
        };
        assert_eq!(c.name, "session");
        assert_eq!(c.path, "/");
        assert_eq!(
            c.ttl,
            Some(Duration {
                seconds: 60,
                nanos: 0
            })
        );
        assert!(matches!(&specs[2], P::ConnectionProperties(c) if c.source_ip));
        assert!(matches!(&specs[3], P::QueryParameter(q) if q.name == "id"));
    }

    #[test]
    fn route_configuration_flags_and_order() {
        let rc = build_route_configuration(&ir::RouteConfig {
            name: "8000".to_string(),
            virtual_hosts: vec![
                ir::VirtualHost {
                    name: "httpbin.default.svc.cluster.local:8000".to_string(),
                    domains: vec![
                        "httpbin.default.svc.cluster.local".to_string(),
                        "httpbin".to_string(),
                    ],
                    routes: vec![
                        {
                            let mut r = route(no_content());
                            r.name = "first".to_string();
                            r
                        },
                        {
                            let mut r = route(no_content());
                            r.name = "second".to_string();
                            r
                        },
                    ],
                },
                ir::VirtualHost {
                    name: "allow_any".to_string(),
                    domains: vec!["*".to_string()],
                    routes: vec![],
                },
            ],
        });
        assert_eq!(rc.name, "8000");
        assert_eq!(rc.validate_clusters, Some(boolean(false)));
        assert_eq!(
            rc.max_direct_response_body_size_bytes,
            Some(uint32(1_048_576))
        );
        assert!(rc.ignore_port_in_host_matching);
        assert_eq!(rc.virtual_hosts.len(), 2);
        let vh = &rc.virtual_hosts[0];
        assert_eq!(vh.name, "httpbin.default.svc.cluster.local:8000");
        assert_eq!(vh.domains, ["httpbin.default.svc.cluster.local", "httpbin"]);
        let names: Vec<_> = vh.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["first", "second"], "user route order kept");
        assert_eq!(rc.virtual_hosts[1].name, "allow_any");
    }
}
