//! The two walkthroughs shadowplane was born from.

use std::time::Duration;

use super::*;
use crate::ir::{
    Denominator, Fraction, HeaderMatch, HeaderMatcher, MirrorPolicy, PathMatch, RouteMatch,
    StringMatcher,
};
use crate::lower::route::retry::default_policy;

const CALC: &str = "calcbackendsvc.challengeistio.svc.cluster.local";

/// The first seed's VirtualService, verbatim (re-indented).
const CALC_VS: &str = r#"
hosts:
- calcbackendsvc
http:
- match:
  - headers:
      user-agent:
        regex: .*Mobile.*
  route:
  - destination:
      host: calcbackendsvc
      subset: v2
- route:
  - destination:
      host: calcbackendsvc
      subset: v1
    weight: 100
  mirror:
    host: calcbackendsvc
    subset: v3
"#;

fn calc(subset_names: &[&str]) -> Out {
    lower(
        &[vs("challengeistio", "backend-vs", CALC_VS)],
        &registry(vec![svc(CALC, &[80])]),
        &subsets(&[(CALC, subset_names)]),
    )
}

#[test]
fn calc_backend_mobile_to_v2_else_v1_mirrored_to_v3() {
    let out = calc(&["v1", "v2", "v3"]);
    out.assert_clean();

    let l = out.listener("0.0.0.0_80");
    assert_eq!(l.address, "0.0.0.0");
    assert_eq!(l.port, 80);
    assert_eq!(l.route_config_name, "80");
    assert_eq!(l.stat_prefix, "outbound_0.0.0.0_80");
    assert!(!l.fault_filter && !l.cors_filter);

    let vh = out.vhost("80", &format!("{CALC}:80"));
    assert_eq!(vh.routes.len(), 2);
    let config_path = Some(
        "/apis/networking.istio.io/v1/namespaces/challengeistio/virtual-service/backend-vs"
            .to_string(),
    );

    let mobile = &vh.routes[0];
    assert_eq!(mobile.name, "");
    assert_eq!(
        mobile.matcher,
        RouteMatch {
            path: PathMatch::Prefix("/".to_string()),
            case_sensitive: Some(true),
            headers: vec![HeaderMatcher {
                name: "user-agent".to_string(),
                matcher: HeaderMatch::String(StringMatcher::Regex(".*Mobile.*".to_string())),
                invert: false,
                treat_missing_header_as_empty: false,
            }],
            query_parameters: vec![],
        }
    );
    assert_eq!(cluster(mobile), format!("outbound|80|v2|{CALC}"));
    let f = forward(mobile);
    assert_eq!(f.timeout, Duration::ZERO);
    assert_eq!(f.retry, Some(default_policy()));
    assert!(f.mirrors.is_empty());
    assert_eq!(mobile.decorator, format!("{CALC}:80/*"));
    assert_eq!(mobile.config_path, config_path);

    let rest = &vh.routes[1];
    assert_eq!(rest.matcher, crate::lower::route::matcher::match_all());
    assert_eq!(rest.matcher.case_sensitive, None);
    assert_eq!(cluster(rest), format!("outbound|80|v1|{CALC}"));
    assert_eq!(
        forward(rest).mirrors,
        vec![MirrorPolicy {
            cluster: format!("outbound|80|v3|{CALC}"),
            fraction: Fraction {
                numerator: 100,
                denominator: Denominator::Hundred
            },
            disable_shadow_host_suffix_append: false,
        }]
    );
    assert_eq!(rest.config_path, config_path);
}

#[test]
fn calc_backend_mirror_before_v3_subset_exists_is_reported_but_emitted() {
    let out = calc(&["v1", "v2"]);
    let d = out.one(Code::ReferencedResourceNotFound);
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(
        d.message,
        "referenced mirror+subset in destinationrule not found: \"calcbackendsvc+v3\""
    );
    assert_eq!(d.field.as_deref(), Some("spec.http[1].mirror.subset"));
    let hint = d.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("v1, v2"), "{hint}");
    assert!(
        hint.contains("the mirror is silently dropped by Envoy"),
        "{hint}"
    );
    let vh = out.vhost("80", &format!("{CALC}:80"));
    assert_eq!(
        forward(&vh.routes[1]).mirrors[0].cluster,
        format!("outbound|80|v3|{CALC}")
    );
}

#[test]
fn httpbin_v1_mirrored_to_v2() {
    let host = "httpbin.default.svc.cluster.local";
    let out = lower(
        &[vs(
            "default",
            "httpbin",
            r#"
hosts:
  - httpbin
http:
  - route:
      - destination:
          host: httpbin
          subset: v1
    mirror:
      host: httpbin
      subset: v2
"#,
        )],
        &registry(vec![svc(host, &[80])]),
        &subsets(&[(host, &["v1", "v2"])]),
    );
    out.assert_clean();
    let vh = out.vhost("80", &format!("{host}:80"));
    assert_eq!(vh.routes.len(), 1);
    assert_eq!(cluster(&vh.routes[0]), format!("outbound|80|v1|{host}"));
    let m = &forward(&vh.routes[0]).mirrors;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].cluster, format!("outbound|80|v2|{host}"));
    assert_eq!(m[0].fraction.numerator, 100);
    assert_eq!(m[0].fraction.denominator, Denominator::Hundred);
}
