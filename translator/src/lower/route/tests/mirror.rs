//! Mirrors: §2.6 percent table and T-M1..T-M14.

use super::*;
use crate::ir::{Denominator, Fraction, MirrorPolicy};

fn million(n: u32) -> Fraction {
    Fraction {
        numerator: n,
        denominator: Denominator::Million,
    }
}

fn hundred(n: u32) -> Fraction {
    Fraction {
        numerator: n,
        denominator: Denominator::Hundred,
    }
}

/// The mirror policies of a one-rule VirtualService routing to v1 with `extra` added to the rule.
fn mirrors_of(extra: &str) -> (Out, Vec<MirrorPolicy>) {
    let spec = format!(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {{host: reviews, subset: v1}}\n{extra}"
    );
    let (out, routes) = reviews(&spec);
    assert_eq!(routes.len(), 1, "{routes:#?}");
    let m = forward(&routes[0]).mirrors.clone();
    (out, m)
}

#[test]
fn percent_table() {
    let cases: &[(&str, Option<Fraction>)] = &[
        ("", Some(hundred(100))),
        (
            "  mirrorPercentage: {value: 100}\n",
            Some(million(1_000_000)),
        ),
        ("  mirrorPercentage: {value: 50}\n", Some(million(500_000))),
        (
            "  mirrorPercentage: {value: 33.3333333}\n",
            Some(million(333_333)),
        ),
        ("  mirrorPercentage: {value: 10}\n", Some(million(100_000))),
        ("  mirrorPercentage: {value: 0.5}\n", Some(million(5_000))),
        ("  mirrorPercentage: {value: 0.1}\n", Some(million(1_000))),
        ("  mirrorPercentage: {value: 0.0001}\n", Some(million(1))),
        ("  mirrorPercentage: {value: 0.00001}\n", Some(million(0))),
        ("  mirrorPercentage: {value: 0.57}\n", Some(million(5699))),
        ("  mirrorPercentage: {value: 0}\n", None),
        ("  mirrorPercent: 50\n", Some(hundred(50))),
        (
            "  mirrorPercent: 40\n  mirrorPercentage: {value: 50}\n",
            Some(million(500_000)),
        ),
    ];
    for (extra, expected) in cases {
        let (_, m) = mirrors_of(&format!("  mirror: {{host: reviews, subset: v2}}\n{extra}"));
        match expected {
            Some(f) => {
                assert_eq!(m.len(), 1, "case {extra:?}");
                assert_eq!(m[0].fraction, *f, "case {extra:?}");
                assert_eq!(m[0].cluster, format!("outbound|9080|v2|{REVIEWS}"));
            }
            None => assert!(m.is_empty(), "case {extra:?}: {m:?}"),
        }
    }
}

#[test]
fn t_m1_mirror_without_percentage_is_100_of_hundred() {
    let (out, m) = mirrors_of("  mirror: {host: reviews}\n");
    out.assert_clean();
    assert_eq!(
        m,
        vec![MirrorPolicy {
            cluster: format!("outbound|9080||{REVIEWS}"),
            fraction: hundred(100),
            disable_shadow_host_suffix_append: false,
        }]
    );
}

#[test]
fn t_m2_t_m3_t_m11_percentages() {
    let (_, m) = mirrors_of("  mirror: {host: reviews}\n  mirrorPercentage: {value: 50}\n");
    assert_eq!(m[0].fraction, million(500_000));
    let (out, m) = mirrors_of("  mirror: {host: reviews}\n  mirrorPercentage: {value: 0}\n");
    assert!(m.is_empty());
    out.assert_clean();
    let (_, m) = mirrors_of("  mirror: {host: reviews}\n  mirrorPercentage: {value: 0.57}\n");
    assert_eq!(m[0].fraction.numerator, 5699);
}

#[test]
fn t_m4_deprecated_mirror_percent_warns_in_both_spellings() {
    for key in ["mirrorPercent", "mirror_percent"] {
        let (out, m) = mirrors_of(&format!("  mirror: {{host: reviews}}\n  {key}: 30\n"));
        assert_eq!(m[0].fraction, hundred(30), "{key}");
        let d = out.one(Code::DeprecatedField);
        assert_eq!(d.severity, Severity::Warning);
        assert_eq!(
            d.message,
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead"
        );
        assert!(out.errors().is_empty());
    }
    let (_, m) = mirrors_of("  mirror: {host: reviews}\n  mirrorPercent: 0\n");
    assert!(m.is_empty());
}

#[test]
fn t_m5_mirror_percentage_wins_over_mirror_percent() {
    let (_, m) = mirrors_of(
        "  mirror: {host: reviews}\n  mirrorPercent: 40\n  mirrorPercentage: {value: 50}\n",
    );
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].fraction, million(500_000));
}

#[test]
fn t_m6_mirrors_in_order_with_their_own_percentages() {
    let (out, m) = mirrors_of(
        "  mirrors:\n  - destination: {host: reviews, subset: v2}\n    percentage: {value: 10}\n  - destination: {host: reviews, subset: v3}\n  - destination: {host: reviews, subset: v3}\n    percentage: {value: 0}\n",
    );
    out.assert_clean();
    assert_eq!(
        m,
        vec![
            MirrorPolicy {
                cluster: format!("outbound|9080|v2|{REVIEWS}"),
                fraction: million(100_000),
                disable_shadow_host_suffix_append: false,
            },
            MirrorPolicy {
                cluster: format!("outbound|9080|v3|{REVIEWS}"),
                fraction: hundred(100),
                disable_shadow_host_suffix_append: false,
            },
        ]
    );
}

#[test]
fn t_m7_mirror_and_mirrors_drops_the_rule() {
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n  mirror: {host: reviews, subset: v2}\n  mirrors:\n  - destination: {host: reviews, subset: v3}\n",
    );
    let d = out.one(Code::MirrorAndMirrors);
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(
        d.message,
        "http route cannot contain both mirror and mirrors"
    );
    assert_eq!(d.field.as_deref(), Some("spec.http[0].mirrors"));
    // The only rule is gone: the service keeps its default route.
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].name, "default");
    assert_eq!(cluster(&routes[0]), format!("outbound|9080||{REVIEWS}"));
}

#[test]
fn t_m8_percentages_out_of_range_are_rejected() {
    let cases = [
        (
            "  mirror: {host: reviews}\n  mirrorPercentage: {value: 101}\n",
            "mirror_percentage must have a max value of 100 (it has 101)",
            "spec.http[0].mirrorPercentage.value",
        ),
        (
            "  mirror: {host: reviews}\n  mirrorPercentage: {value: -1}\n",
            "mirror_percentage must have a min value of 0 (it has -1)",
            "spec.http[0].mirrorPercentage.value",
        ),
        (
            "  mirror: {host: reviews}\n  mirrorPercent: 101\n",
            "mirror_percent must have a max value of 100 (it has 101)",
            "spec.http[0].mirrorPercent",
        ),
        (
            "  mirrors:\n  - destination: {host: reviews, subset: v2}\n    percentage: {value: 1}\n  - destination: {host: reviews, subset: v3}\n    percentage: {value: 101}\n",
            "mirror percentage must have a max value of 100 (it has 101)",
            "spec.http[0].mirrors[1].percentage.value",
        ),
    ];
    for (extra, message, field) in cases {
        let spec = format!(
            "hosts: [reviews]\nhttp:\n- route:\n  - destination: {{host: reviews, subset: v1}}\n{extra}"
        );
        let (out, routes) = reviews(&spec);
        let d = out.one(Code::PercentageOutOfRange);
        assert_eq!(d.severity, Severity::Error);
        assert_eq!(d.message, message);
        assert_eq!(d.field.as_deref(), Some(field));
        assert_eq!(routes[0].name, "default", "rule must be dropped: {extra}");
    }
}

#[test]
fn mirrors_item_without_destination_is_reported_and_ignored() {
    let (out, m) = mirrors_of(
        "  mirrors:\n  - percentage: {value: 5}\n  - destination: {host: reviews, subset: v2}\n",
    );
    let d = out.one(Code::MissingField);
    assert_eq!(d.message, "destination is required for mirrors");
    assert_eq!(d.field.as_deref(), Some("spec.http[0].mirrors[0]"));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].cluster, format!("outbound|9080|v2|{REVIEWS}"));
}

#[test]
fn t_m9_mirror_to_defined_subset() {
    let (out, m) = mirrors_of("  mirror: {host: reviews, subset: v2}\n");
    out.assert_clean();
    assert_eq!(m[0].cluster, format!("outbound|9080|v2|{REVIEWS}"));
}

#[test]
fn t_m10_mirror_to_undefined_subset_is_an_error_but_still_emitted() {
    let (out, m) = mirrors_of("  mirror: {host: reviews, subset: bogus}\n");
    assert_eq!(m[0].cluster, format!("outbound|9080|bogus|{REVIEWS}"));
    let d = out.one(Code::ReferencedResourceNotFound);
    assert_eq!(d.code.id(), "IST0101");
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(
        d.message,
        "referenced mirror+subset in destinationrule not found: \"reviews+bogus\""
    );
    assert_eq!(d.field.as_deref(), Some("spec.http[0].mirror.subset"));
    let hint = d.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("v1, v2, v3"), "{hint}");
    assert!(
        hint.contains("add the subset to the DestinationRule or fix the name"),
        "{hint}"
    );

    // In `mirrors[]` the field path names the item's destination.
    let (out, _) =
        mirrors_of("  mirrors:\n  - destination: {host: reviews, subset: v2}\n  - destination: {host: reviews, subset: nope}\n");
    let d = out.one(Code::ReferencedResourceNotFound);
    assert_eq!(
        d.field.as_deref(),
        Some("spec.http[0].mirrors[1].destination.subset")
    );
}

#[test]
fn t_m12_every_match_route_carries_the_same_mirror() {
    let (out, routes) = reviews(
        r#"
hosts: [reviews]
http:
- match:
  - uri: {prefix: /a}
  - uri: {prefix: /b}
  - headers: {x-canary: {exact: "1"}}
  route:
  - destination: {host: reviews, subset: v1}
  mirror: {host: reviews, subset: v3}
  mirrorPercentage: {value: 25}
"#,
    );
    out.assert_clean();
    assert_eq!(routes.len(), 3);
    let first = forward(&routes[0]).mirrors.clone();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].fraction, million(250_000));
    for r in &routes {
        assert_eq!(forward(r).mirrors, first);
    }
}

#[test]
fn t_m13_redirect_with_mirror_has_no_mirror() {
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- redirect: {uri: /new}\n  mirror: {host: reviews, subset: v2}\n",
    );
    assert!(out.errors().is_empty(), "{:#?}", out.diags);
    assert_eq!(out.with_code(Code::ConflictingRouteAction).len(), 1);
    assert!(matches!(routes[0].action, RouteAction::Redirect(_)));
}

#[test]
fn t_m14_shadow_host_suffix_knob() {
    for disable in [false, true] {
        let options = Options {
            disable_shadow_host_suffix: disable,
            ..Options::default()
        };
        let (_, routes) = reviews_with(
            "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n  mirrors:\n  - destination: {host: reviews, subset: v2}\n  - destination: {host: reviews, subset: v3}\n",
            &options,
        );
        let m = &forward(&routes[0]).mirrors;
        assert_eq!(m.len(), 2);
        assert!(m
            .iter()
            .all(|p| p.disable_shadow_host_suffix_append == disable));
    }
}

#[test]
fn mirror_to_unknown_host_is_reported_with_mirror_host_reftype() {
    let (out, m) = mirrors_of("  mirror: {host: shadow.example.com}\n");
    let d = out.one(Code::ReferencedResourceNotFound);
    assert_eq!(
        d.message,
        "referenced mirror host not found: \"shadow.example.com\""
    );
    assert_eq!(d.field.as_deref(), Some("spec.http[0].mirror.host"));
    // No port and no service: the listener port.
    assert_eq!(m[0].cluster, "outbound|9080||shadow.example.com");
}
