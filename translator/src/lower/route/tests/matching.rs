//! Match translation (§2.4, T-R7..T-R10) and its validation.

use super::*;
use crate::ir::{HeaderMatch, HeaderMatcher, PathMatch, QueryParameterMatcher, StringMatcher};

fn one_match(m: &str) -> (Out, Vec<Route>) {
    reviews(&format!(
        "hosts: [reviews]\nhttp:\n- match:\n  - {m}\n  route:\n  - destination: {{host: reviews, subset: v2}}\n- route:\n  - destination: {{host: reviews, subset: v1}}\n"
    ))
}

fn hm(name: &str, matcher: HeaderMatch, invert: bool, treat_missing: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        matcher,
        invert,
        treat_missing_header_as_empty: treat_missing,
    }
}

fn s(m: StringMatcher) -> HeaderMatch {
    HeaderMatch::String(m)
}

#[test]
fn t_r7_header_order_and_regex_unchanged() {
    let (out, routes) = one_match(
        r#"headers: {x-version: {regex: "^v[0-9]+$"}, a-first: {prefix: ab}, m-mid: {exact: x}}
    withoutHeaders: {b-without: {exact: "no"}}
    method: {exact: GET}
    authority: {prefix: api.}
    scheme: {exact: https}
    uri: {regex: '\/(.?)\/status'}"#,
    );
    out.assert_clean();
    let m = &routes[0].matcher;
    assert_eq!(m.path, PathMatch::Regex(r"\/(.?)\/status".to_string()));
    assert_eq!(
        m.headers,
        vec![
            hm(
                "a-first",
                s(StringMatcher::Prefix("ab".into())),
                false,
                false
            ),
            hm(
                "b-without",
                s(StringMatcher::Exact("no".into())),
                true,
                true
            ),
            hm("m-mid", s(StringMatcher::Exact("x".into())), false, false),
            hm(
                "x-version",
                s(StringMatcher::Regex("^v[0-9]+$".into())),
                false,
                false
            ),
            hm(
                ":method",
                s(StringMatcher::Exact("GET".into())),
                false,
                false
            ),
            hm(
                ":authority",
                s(StringMatcher::Prefix("api.".into())),
                false,
                false
            ),
            hm(
                ":scheme",
                s(StringMatcher::Exact("https".into())),
                false,
                false
            ),
        ]
    );
    assert_eq!(
        routes[0].decorator,
        format!("{REVIEWS}:9080\\/(.?)\\/status")
    );
}

#[test]
fn t_r8_empty_and_star_are_present_matches() {
    let (out, routes) = one_match(r#"headers: {x-empty: {}, x-star: {regex: "*"}}"#);
    out.assert_clean();
    assert_eq!(
        routes[0].matcher.headers,
        vec![
            hm("x-empty", HeaderMatch::Present, false, false),
            hm("x-star", HeaderMatch::Present, false, false),
        ]
    );
}

#[test]
fn t_r9_without_headers_invert_and_treat_missing_as_empty() {
    let (_, routes) =
        one_match(r#"withoutHeaders: {end-user: {exact: jason}, x-any: {regex: "*"}}"#);
    assert_eq!(
        routes[0].matcher.headers,
        vec![
            hm(
                "end-user",
                s(StringMatcher::Exact("jason".into())),
                true,
                true
            ),
            hm("x-any", HeaderMatch::Present, true, false),
        ]
    );
}

#[test]
fn t_r10_ignore_uri_case() {
    let (_, routes) = one_match("uri: {prefix: /Api}\n    ignoreUriCase: true");
    assert_eq!(routes[0].matcher.case_sensitive, Some(false));
    let (_, routes) = one_match("uri: {exact: /api}");
    assert_eq!(routes[0].matcher.case_sensitive, Some(true));
    assert_eq!(routes[0].matcher.path, PathMatch::Exact("/api".to_string()));
}

#[test]
fn query_params_sorted_with_present_matches() {
    let (out, routes) = one_match(r#"queryParams: {z: {exact: ""}, a: {regex: "[0-9]+"}, p: {}}"#);
    out.assert_clean();
    let qp = &routes[0].matcher.query_parameters;
    assert_eq!(
        qp,
        &vec![
            QueryParameterMatcher {
                name: "a".into(),
                matcher: s(StringMatcher::Regex("[0-9]+".into()))
            },
            QueryParameterMatcher {
                name: "p".into(),
                matcher: HeaderMatch::Present
            },
            QueryParameterMatcher {
                name: "z".into(),
                matcher: s(StringMatcher::Exact(String::new()))
            },
        ]
    );
    assert_eq!(routes.len(), 2, "a query match is not a catch-all");
}

#[test]
fn stat_prefix_comes_from_the_match() {
    let (_, routes) = one_match("uri: {prefix: /s}\n    statPrefix: reviews-s");
    assert_eq!(routes[0].stat_prefix.as_deref(), Some("reviews-s"));
    assert_eq!(routes[1].stat_prefix, None);
}

#[test]
fn invalid_regex_drops_only_that_rule() {
    for (m, field) in [
        ("uri: {regex: '(a)\\1'}", "spec.http[0].match[0].uri.regex"),
        (
            "headers: {x-h: {regex: 'a(?=b)'}}",
            "spec.http[0].match[0].headers.x-h.regex",
        ),
        (
            "queryParams: {q: {regex: '(unclosed'}}",
            "spec.http[0].match[0].queryParams.q.regex",
        ),
        (
            "authority: {regex: '[z-a]'}",
            "spec.http[0].match[0].authority.regex",
        ),
    ] {
        let (out, routes) = one_match(m);
        let d = out.one(Code::InvalidRegex);
        assert_eq!(d.severity, Severity::Error, "{m}");
        assert_eq!(d.field.as_deref(), Some(field), "{m}");
        assert!(
            d.message.starts_with("invalid regular expression \""),
            "{}",
            d.message
        );
        assert!(d.value.is_some());
        // The bad rule is gone, the fallback rule of the same VirtualService remains.
        assert_eq!(routes.len(), 1, "{m}");
        assert_eq!(cluster(&routes[0]), format!("outbound|9080|v1|{REVIEWS}"));
    }
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  rewrite:\n    uriRegexRewrite: {match: '(?<!x)y', rewrite: z}\n",
    );
    assert_eq!(
        out.one(Code::InvalidRegex).field.as_deref(),
        Some("spec.http[0].rewrite.uriRegexRewrite.match")
    );
    assert_eq!(routes[0].name, "default");
}

#[test]
fn string_match_with_several_kinds_or_none_is_invalid() {
    let (out, routes) = one_match("uri: {exact: /a, prefix: /b}");
    let d = out.one(Code::InvalidValue);
    assert_eq!(d.field.as_deref(), Some("spec.http[0].match[0].uri"));
    assert!(d.message.contains("exact and prefix"), "{}", d.message);
    assert_eq!(routes.len(), 1);

    for (m, field) in [
        ("uri: {}", "spec.http[0].match[0].uri"),
        ("method: {}", "spec.http[0].match[0].method"),
        ("authority: {}", "spec.http[0].match[0].authority"),
        ("scheme: {}", "spec.http[0].match[0].scheme"),
    ] {
        let (out, routes) = one_match(m);
        let d = out.one(Code::InvalidValue);
        assert_eq!(d.field.as_deref(), Some(field));
        assert_eq!(routes.len(), 1, "{m}");
    }
}

#[test]
fn jwt_claim_matches_are_skipped_with_a_warning() {
    let (out, routes) = reviews(
        r#"
hosts: [reviews]
http:
- match:
  - headers: {"@request.auth.claims.group": {exact: admin}}
  route:
  - destination: {host: reviews, subset: v2}
- route:
  - destination: {host: reviews, subset: v1}
"#,
    );
    assert_eq!(out.one(Code::UnsupportedField).severity, Severity::Warning);
    // The skipped rule must not turn into a catch-all.
    assert_eq!(routes.len(), 1);
    assert_eq!(cluster(&routes[0]), format!("outbound|9080|v1|{REVIEWS}"));
}
