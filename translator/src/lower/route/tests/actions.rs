//! Actions other than plain forwarding: rewrite, redirect, direct response, fault, CORS
//! (T-R16, T-R17, §2.5, §1.6).

use std::time::Duration;

use super::*;
use crate::ir::{
    AbortStatus, Body, Cors, Denominator, DirectResponse, Fault, FaultAbort, FaultDelay, Fraction,
    Redirect, RegexRewrite, StringMatcher,
};

fn only_rule(rule: &str) -> (Out, Vec<Route>) {
    reviews(&format!("hosts: [reviews]\nhttp:\n- {rule}\n"))
}

#[test]
fn t_r16_rewrite_uri_and_authority() {
    let (out, routes) = only_rule(
        "match:\n  - uri: {prefix: /old}\n  rewrite: {uri: /new, authority: reviews.internal}\n  route:\n  - destination: {host: reviews}",
    );
    out.assert_clean();
    let f = forward(&routes[0]);
    assert_eq!(f.prefix_rewrite.as_deref(), Some("/new"));
    assert_eq!(f.host_rewrite_literal.as_deref(), Some("reviews.internal"));
    assert_eq!(f.regex_rewrite, None);

    let (out, routes) = only_rule(
        "rewrite:\n    uriRegexRewrite: {match: '^/v1/(.*)$', rewrite: '/v2/\\1'}\n  route:\n  - destination: {host: reviews}",
    );
    out.assert_clean();
    assert_eq!(
        forward(&routes[0]).regex_rewrite,
        Some(RegexRewrite {
            pattern: "^/v1/(.*)$".to_string(),
            substitution: "/v2/\\1".to_string()
        })
    );
}

#[test]
fn t_r17_redirect_codes() {
    let (out, routes) =
        only_rule("redirect: {uri: /v2, authority: new.example.com, redirectCode: 302}");
    out.assert_clean();
    assert_eq!(
        routes[0].action,
        RouteAction::Redirect(Redirect {
            host_redirect: Some("new.example.com".to_string()),
            path_redirect: Some("/v2".to_string()),
            prefix_rewrite: None,
            scheme_redirect: None,
            port_redirect: None,
            response_code: 302,
        })
    );
    assert_eq!(routes[0].decorator, "reviews:9080/*");

    for (code, expected) in [
        ("", 301),
        ("redirectCode: 0, ", 301),
        ("redirectCode: 301, ", 301),
        ("redirectCode: 303, ", 303),
        ("redirectCode: 307, ", 307),
        ("redirectCode: 308, ", 308),
    ] {
        let (_, routes) = only_rule(&format!("redirect: {{{code}uri: /x}}"));
        match &routes[0].action {
            RouteAction::Redirect(r) => assert_eq!(r.response_code, expected, "{code}"),
            other => panic!("{other:?}"),
        }
    }

    let (out, routes) = only_rule("redirect: {uri: /v2, redirectCode: 999}");
    let d = out.one(Code::InvalidRedirectCode);
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(
        d.field.as_deref(),
        Some("spec.http[0].redirect.redirectCode")
    );
    // The rule is dropped: a route without an action would make Envoy reject the whole
    // route configuration ("action: is required"). With no rule left the VirtualService
    // contributes nothing and the service keeps its default route, as istiod does.
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].name, "default");
    assert!(matches!(routes[0].action, RouteAction::Forward(_)));
}

#[test]
fn redirect_ports_and_schemes() {
    let (_, routes) =
        only_rule("redirect: {scheme: https, derivePort: FROM_REQUEST_PORT, prefixRewrite: /p}");
    match &routes[0].action {
        RouteAction::Redirect(r) => {
            assert_eq!(r.port_redirect, Some(9080));
            assert_eq!(r.scheme_redirect.as_deref(), Some("https"));
            assert_eq!(r.prefix_rewrite.as_deref(), Some("/p"));
            assert_eq!(r.path_redirect, None);
        }
        other => panic!("{other:?}"),
    }
    let (_, routes) = only_rule("redirect: {scheme: https, port: 443}");
    match &routes[0].action {
        RouteAction::Redirect(r) => assert_eq!(r.port_redirect, None),
        other => panic!("{other:?}"),
    }
    let (_, routes) = only_rule("redirect: {scheme: http, port: 8443}");
    match &routes[0].action {
        RouteAction::Redirect(r) => assert_eq!(r.port_redirect, Some(8443)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn direct_response_string_and_bytes() {
    let (out, routes) = only_rule("directResponse: {status: 503, body: {string: unavailable}}");
    out.assert_clean();
    assert_eq!(
        routes[0].action,
        RouteAction::DirectResponse(DirectResponse {
            status: 503,
            body: Some(Body::String("unavailable".to_string())),
        })
    );
    let (_, routes) = only_rule("directResponse: {status: 200, body: {bytes: aGVsbG8=}}");
    assert_eq!(
        routes[0].action,
        RouteAction::DirectResponse(DirectResponse {
            status: 200,
            body: Some(Body::Bytes(b"hello".to_vec())),
        })
    );
    let (out, routes) = only_rule("directResponse: {status: 200, body: {bytes: '!!'}}");
    assert_eq!(
        out.one(Code::InvalidValue).field.as_deref(),
        Some("spec.http[0].directResponse.body.bytes")
    );
    assert_eq!(routes[0].name, "default");
}

#[test]
fn conflicting_actions_drop_the_rule() {
    for (rule, field) in [
        (
            "redirect: {uri: /x}\n  route:\n  - destination: {host: reviews}",
            "spec.http[0].redirect",
        ),
        (
            "redirect: {uri: /x}\n  directResponse: {status: 200}",
            "spec.http[0].redirect",
        ),
        (
            "redirect: {uri: /x}\n  fault: {abort: {httpStatus: 500}}",
            "spec.http[0].redirect",
        ),
        (
            "redirect: {uri: /x}\n  rewrite: {uri: /y}",
            "spec.http[0].redirect",
        ),
        (
            "directResponse: {status: 200}\n  route:\n  - destination: {host: reviews}",
            "spec.http[0].directResponse",
        ),
        (
            "directResponse: {status: 200}\n  rewrite: {uri: /y}",
            "spec.http[0].directResponse",
        ),
        ("name: nothing", "spec.http[0]"),
    ] {
        let (out, routes) = only_rule(rule);
        let d = out.one(Code::ConflictingRouteAction);
        assert_eq!(d.severity, Severity::Error, "{rule}");
        assert_eq!(d.field.as_deref(), Some(field), "{rule}");
        assert_eq!(routes[0].name, "default", "{rule}");
    }
    let (out, _) = only_rule("name: nothing");
    assert_eq!(
        out.one(Code::ConflictingRouteAction).message,
        "http route, redirect or direct_response is required"
    );
}

#[test]
fn fault_injection_and_the_listener_filter() {
    let (out, routes) = only_rule(
        r#"fault:
    delay: {percentage: {value: 0.1}, fixedDelay: 7s}
    abort: {httpStatus: 500}
  route:
  - destination: {host: reviews}"#,
    );
    out.assert_clean();
    assert_eq!(
        routes[0].fault,
        Some(Fault {
            delay: Some(FaultDelay {
                fixed_delay: Duration::from_secs(7),
                percentage: Some(Fraction {
                    numerator: 1000,
                    denominator: Denominator::Million
                }),
            }),
            abort: Some(FaultAbort {
                status: AbortStatus::Http(500),
                percentage: None
            }),
        })
    );
    assert!(out.listener("0.0.0.0_9080").fault_filter);
    assert!(!out.listener("0.0.0.0_9080").cors_filter);

    let (out, routes) = only_rule(
        r#"fault:
    delay: {percent: 50, fixedDelay: 1s}
    abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}
  route:
  - destination: {host: reviews}"#,
    );
    assert_eq!(
        out.one(Code::DeprecatedField).field.as_deref(),
        Some("spec.http[0].fault.delay.percent")
    );
    let f = routes[0].fault.clone().expect("fault");
    assert_eq!(
        f.delay.expect("delay").percentage,
        Some(Fraction {
            numerator: 50,
            denominator: Denominator::Hundred
        })
    );
    assert_eq!(
        f.abort,
        Some(FaultAbort {
            status: AbortStatus::Grpc(14),
            percentage: Some(Fraction {
                numerator: 1_000_000,
                denominator: Denominator::Million
            }),
        })
    );

    let (out, routes) = only_rule(
        "fault:\n    delay: {exponentialDelay: 1s, percentage: {value: 10}}\n  route:\n  - destination: {host: reviews}",
    );
    assert_eq!(
        out.one(Code::UnsupportedField).field.as_deref(),
        Some("spec.http[0].fault.delay.exponentialDelay")
    );
    assert_eq!(routes[0].fault, None);
    assert!(!out.listener("0.0.0.0_9080").fault_filter);

    let (out, routes) = only_rule(
        "fault:\n    abort: {httpStatus: 503, percentage: {value: 150}}\n  route:\n  - destination: {host: reviews}",
    );
    assert_eq!(
        out.one(Code::PercentageOutOfRange).severity,
        Severity::Error
    );
    assert_eq!(routes[0].name, "default");
}

#[test]
fn cors_policy_and_the_listener_filter() {
    let (out, routes) = only_rule(
        r#"corsPolicy:
    allowOrigins: [{exact: "https://a.example.com"}, {regex: "https://.*\\.b\\.com"}]
    allowMethods: [GET, POST]
    allowHeaders: [x-a, x-b]
    exposeHeaders: [x-c]
    maxAge: 24h
    allowCredentials: true
    unmatchedPreflights: IGNORE
  route:
  - destination: {host: reviews}"#,
    );
    out.assert_clean();
    assert_eq!(
        routes[0].cors,
        Some(Cors {
            allow_origin_string_match: vec![
                StringMatcher::Exact("https://a.example.com".to_string()),
                StringMatcher::Regex("https://.*\\.b\\.com".to_string()),
            ],
            allow_methods: "GET,POST".to_string(),
            allow_headers: "x-a,x-b".to_string(),
            expose_headers: "x-c".to_string(),
            max_age: Some("86400".to_string()),
            allow_credentials: Some(true),
            forward_not_matching_preflights: Some(false),
        })
    );
    assert!(out.listener("0.0.0.0_9080").cors_filter);

    let (out, routes) = only_rule(
        "corsPolicy:\n    allowOrigin: [\"https://old.example.com\"]\n    unmatchedPreflights: FORWARD\n  route:\n  - destination: {host: reviews}",
    );
    assert_eq!(out.one(Code::DeprecatedField).severity, Severity::Warning);
    let cors = routes[0].cors.clone().expect("cors");
    assert_eq!(
        cors.allow_origin_string_match,
        vec![StringMatcher::Exact("https://old.example.com".to_string())]
    );
    // istiod always sets it: true unless unmatchedPreflights is IGNORE.
    assert_eq!(cors.forward_not_matching_preflights, Some(true));
    assert_eq!(cors.max_age, None);
}
