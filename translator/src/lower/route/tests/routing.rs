//! Routing: destinations, weights, rule order, catch-alls, host ownership (T-R1..T-R6,
//! T-R11..T-R15).

use std::time::Duration;

use super::*;
use crate::ir::{AppendAction, HeaderValueOption, PathMatch, WeightedCluster};
use crate::lower::route::retry::default_policy;

fn weighted(route: &Route) -> &[WeightedCluster] {
    match &forward(route).destination {
        ClusterSpecifier::Weighted(w) => w,
        other => panic!("expected weighted clusters, got {other:?}"),
    }
}

fn set(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        key: key.to_string(),
        value: value.to_string(),
        append_action: AppendAction::OverwriteIfExistsOrAdd,
    }
}

fn add(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        key: key.to_string(),
        value: value.to_string(),
        append_action: AppendAction::AppendIfExistsOrAdd,
    }
}

#[test]
fn t_r1_weights_80_20_become_weighted_clusters() {
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n    weight: 80\n  - destination: {host: reviews, subset: v2}\n    weight: 20\n",
    );
    out.assert_clean();
    let w = weighted(&routes[0]);
    assert_eq!(w.len(), 2);
    assert_eq!(
        (w[0].name.as_str(), w[0].weight),
        (format!("outbound|9080|v1|{REVIEWS}").as_str(), 80)
    );
    assert_eq!(
        (w[1].name.as_str(), w[1].weight),
        (format!("outbound|9080|v2|{REVIEWS}").as_str(), 20)
    );
    // Several clusters: the decorator names the VirtualService.
    assert_eq!(routes[0].decorator, "reviews:9080/*");
}

#[test]
fn t_r2_zero_weight_entries_are_dropped_but_the_form_stays_weighted() {
    let (_, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n    weight: 100\n  - destination: {host: reviews, subset: v2}\n    weight: 0\n",
    );
    let w = weighted(&routes[0]);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].name, format!("outbound|9080|v1|{REVIEWS}"));
    assert_eq!(w[0].weight, 100);
}

#[test]
fn t_r3_single_destination_ignores_its_weight() {
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n    weight: 30\n",
    );
    out.assert_clean();
    assert_eq!(cluster(&routes[0]), format!("outbound|9080|v1|{REVIEWS}"));
    assert_eq!(routes[0].decorator, format!("{REVIEWS}:9080/*"));
}

#[test]
fn invalid_weights_drop_the_rule() {
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n    weight: -1\n  - destination: {host: reviews, subset: v2}\n    weight: 50\n",
    );
    assert_eq!(
        out.one(Code::InvalidWeight).field.as_deref(),
        Some("spec.http[0].route[0].weight")
    );
    assert_eq!(routes[0].name, "default");

    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n  - destination: {host: reviews, subset: v2}\n",
    );
    let d = out.one(Code::InvalidWeight);
    assert_eq!(d.message, "total destination weight = 0");
    assert_eq!(routes[0].name, "default");
}

#[test]
fn t_r4_each_match_block_is_a_route_named_rule_dot_match() {
    let (out, routes) = reviews(
        r#"
hosts: [reviews]
http:
- name: r
  match:
  - name: a
    uri: {prefix: /a}
  - name: b
    uri: {prefix: /b}
  route:
  - destination: {host: reviews, subset: v2}
- name: rest
  route:
  - destination: {host: reviews, subset: v1}
"#,
    );
    out.assert_clean();
    let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r.a", "r.b", "rest"]);
    assert_eq!(routes[0].action, routes[1].action);
    assert_eq!(routes[0].matcher.path, PathMatch::Prefix("/a".to_string()));
    assert_eq!(routes[1].matcher.path, PathMatch::Prefix("/b".to_string()));
    assert_eq!(routes[0].decorator, format!("{REVIEWS}:9080/a*"));
}

#[test]
fn route_names_from_match_name_only() {
    let (_, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- match:\n  - name: m\n    uri: {exact: /x}\n  route:\n  - destination: {host: reviews}\n",
    );
    assert_eq!(routes[0].name, "m");
    assert_eq!(routes[0].decorator, format!("{REVIEWS}:9080/x"));
}

#[test]
fn t_r5_rule_without_match_ends_the_virtual_service() {
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n- match:\n  - uri: {prefix: /late}\n  route:\n  - destination: {host: reviews, subset: v2}\n- route:\n  - destination: {host: reviews, subset: v3}\n",
    );
    assert_eq!(routes.len(), 1);
    assert_eq!(cluster(&routes[0]), format!("outbound|9080|v1|{REVIEWS}"));
    let warnings = out.with_code(Code::VirtualServiceUnreachableRule);
    assert_eq!(warnings.len(), 2);
    assert!(warnings.iter().all(|d| d.severity == Severity::Warning));
    assert_eq!(warnings[0].field.as_deref(), Some("spec.http[1]"));
    assert_eq!(warnings[1].field.as_deref(), Some("spec.http[2]"));
}

#[test]
fn t_r6_catch_all_match_stops_partway_through_the_match_list() {
    let (out, routes) = reviews(
        r#"
hosts: [reviews]
http:
- match:
  - uri: {prefix: /}
  - uri: {prefix: /a}
  route:
  - destination: {host: reviews, subset: v1}
- route:
  - destination: {host: reviews, subset: v2}
"#,
    );
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].matcher.path, PathMatch::Prefix("/".to_string()));
    assert_eq!(routes[0].matcher.case_sensitive, Some(true));
    assert_eq!(out.with_code(Code::VirtualServiceUnreachableRule).len(), 1);
}

#[test]
fn regex_dot_star_is_a_catch_all_but_header_matches_are_not() {
    let (_, routes) = reviews(
        r#"
hosts: [reviews]
http:
- match:
  - uri: {prefix: /}
    headers: {end-user: {exact: jason}}
  route:
  - destination: {host: reviews, subset: v2}
- match:
  - uri: {regex: "/.*"}
  route:
  - destination: {host: reviews, subset: v3}
- match:
  - uri: {regex: ".*"}
  route:
  - destination: {host: reviews, subset: v1}
- route:
  - destination: {host: reviews}
"#,
    );
    assert_eq!(routes.len(), 3);
    assert_eq!(cluster(&routes[2]), format!("outbound|9080|v1|{REVIEWS}"));
    assert_eq!(routes[1].decorator, format!("{REVIEWS}:9080/.*"));
}

#[test]
fn match_port_selects_listener_and_catch_all_per_port() {
    // "catch all route: port match": a match with only `port: 8080` is a catch-all there.
    let host = "multi.default.svc.cluster.local";
    let spec = r#"
hosts: [multi]
http:
- name: route 1
  match:
  - name: catch-all for 8080
    port: 8080
  route:
  - destination: {host: multi, port: {number: 8080}}
- name: route 2
  route:
  - destination: {host: multi, port: {number: 9090}}
"#;
    let out = lower(
        &[vs("default", "multi", spec)],
        &registry(vec![svc(host, &[8080, 9090])]),
        &RuleIndex::default(),
    );
    out.assert_clean();
    let on_8080 = &out.vhost("8080", &format!("{host}:8080")).routes;
    assert_eq!(on_8080.len(), 1);
    assert_eq!(on_8080[0].name, "route 1.catch-all for 8080");
    let on_9090 = &out.vhost("9090", &format!("{host}:9090")).routes;
    assert_eq!(on_9090.len(), 1);
    assert_eq!(on_9090[0].name, "route 2");
    assert_eq!(cluster(&on_9090[0]), format!("outbound|9090||{host}"));
}

#[test]
fn virtual_service_without_routes_on_a_port_leaves_the_default_route() {
    let host = "multi.default.svc.cluster.local";
    let out = lower(
        &[vs(
            "default",
            "multi",
            "hosts: [multi]\nhttp:\n- match:\n  - port: 8080\n  route:\n  - destination: {host: multi, port: {number: 8080}}\n",
        )],
        &registry(vec![svc(host, &[8080, 9090])]),
        &RuleIndex::default(),
    );
    let on_9090 = &out.vhost("9090", &format!("{host}:9090")).routes;
    assert_eq!(on_9090.len(), 1);
    assert_eq!(on_9090[0].name, "default");
    assert_eq!(cluster(&on_9090[0]), format!("outbound|9090||{host}"));
}

#[test]
fn match_gateways_override_the_virtual_service_binding() {
    let (out, routes) = reviews(
        r#"
hosts: [reviews]
http:
- match:
  - uri: {prefix: /gw-only}
    gateways: [ingress]
  - uri: {prefix: /mesh}
    gateways: [mesh]
  route:
  - destination: {host: reviews, subset: v2}
- route:
  - destination: {host: reviews, subset: v1}
"#,
    );
    // `ingress` does not exist in namespace default.
    let d = out.one(Code::GatewayNotFound);
    assert_eq!(
        d.field.as_deref(),
        Some("spec.http[0].match[0].gateways[0]")
    );
    assert_eq!(routes.len(), 2);
    assert_eq!(
        routes[0].matcher.path,
        PathMatch::Prefix("/mesh".to_string())
    );
}

#[test]
fn t_r11_timeout_defaults_to_zero() {
    let (_, routes) =
        reviews("hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n");
    assert_eq!(forward(&routes[0]).timeout, Duration::ZERO);
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  timeout: 1.5s\n",
    );
    out.assert_clean();
    assert_eq!(forward(&routes[0]).timeout, Duration::from_millis(1500));
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  timeout: soon\n",
    );
    assert_eq!(
        out.one(Code::InvalidValue).field.as_deref(),
        Some("spec.http[0].timeout")
    );
    assert_eq!(forward(&routes[0]).timeout, Duration::ZERO);
}

#[test]
fn t_r12_attempts_zero_disables_retries() {
    let (_, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n  retries: {attempts: 0}\n",
    );
    assert_eq!(forward(&routes[0]).retry, None);
}

#[test]
fn t_r13_default_retry_policy() {
    let (_, routes) =
        reviews("hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n");
    let r = forward(&routes[0])
        .retry
        .clone()
        .expect("default retry policy");
    assert_eq!(r.num_retries, 2);
    assert_eq!(
        r.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert_eq!(r.host_selection_retry_max_attempts, 5);
    assert!(r.previous_hosts_predicate);
    assert!(r.retriable_status_codes.is_empty());
    assert_eq!(r.per_try_timeout, None);
}

#[test]
fn t_r14_numeric_retry_on_tokens_become_status_codes() {
    let (out, routes) = reviews(
        r#"
hosts: [reviews]
http:
- route:
  - destination: {host: reviews}
  retries:
    attempts: 3
    retryOn: 5xx,503
    perTryTimeout: 2s
    retryRemoteLocalities: true
    retryIgnorePreviousHosts: false
    backoff: 25ms
"#,
    );
    out.assert_clean();
    let r = forward(&routes[0]).retry.clone().expect("retry policy");
    assert_eq!(r.num_retries, 3);
    assert_eq!(r.retry_on, "5xx,retriable-status-codes");
    assert_eq!(r.retriable_status_codes, vec![503]);
    assert_eq!(r.per_try_timeout, Some(Duration::from_secs(2)));
    assert!(r.previous_priorities);
    assert!(!r.previous_hosts_predicate);
    assert_eq!(r.backoff_base_interval, Some(Duration::from_millis(25)));
    assert_eq!(r.host_selection_retry_max_attempts, 5);
}

#[test]
fn t_r15_undefined_route_subset_is_an_error_but_still_routed() {
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: bogus}\n",
    );
    assert_eq!(
        cluster(&routes[0]),
        format!("outbound|9080|bogus|{REVIEWS}")
    );
    let d = out.one(Code::ReferencedResourceNotFound);
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(
        d.message,
        "referenced host+subset in destinationrule not found: \"reviews+bogus\""
    );
    assert_eq!(
        d.field.as_deref(),
        Some("spec.http[0].route[0].destination.subset")
    );
    let hint = d.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("v1, v2, v3"), "{hint}");
    assert!(
        hint.contains("until then Envoy answers 503 NC for this route"),
        "{hint}"
    );
}

#[test]
fn unknown_destination_host_is_reported_and_uses_the_listener_port() {
    let (out, routes) =
        reviews("hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: ratings}\n");
    let d = out.one(Code::ReferencedResourceNotFound);
    assert_eq!(d.message, "referenced host not found: \"ratings\"");
    assert!(d
        .hint
        .as_deref()
        .unwrap_or_default()
        .contains("ServiceEntry"));
    assert_eq!(
        cluster(&routes[0]),
        "outbound|9080||ratings.default.svc.cluster.local"
    );
}

#[test]
fn multi_port_destination_without_port_is_ist0112_and_uses_the_listener_port() {
    let host = "multi.default.svc.cluster.local";
    let out = lower(
        &[vs(
            "default",
            "multi",
            "hosts: [multi]\nhttp:\n- route:\n  - destination: {host: multi}\n  mirror: {host: multi}\n",
        )],
        &registry(vec![svc(host, &[8080, 9090])]),
        &RuleIndex::default(),
    );
    let found = out.with_code(Code::DestinationPortSelectorRequired);
    assert_eq!(found.len(), 2, "{:#?}", out.diags);
    assert_eq!(found[0].code.id(), "IST0112");
    let mut fields: Vec<_> = found
        .iter()
        .map(|d| d.field.clone().unwrap_or_default())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["spec.http[0].mirror", "spec.http[0].route[0].destination"]
    );
    // Reported once, though the rule lands on two listeners.
    for port in [8080, 9090] {
        let routes = &out
            .vhost(&port.to_string(), &format!("{host}:{port}"))
            .routes;
        assert_eq!(cluster(&routes[0]), format!("outbound|{port}||{host}"));
        assert_eq!(
            forward(&routes[0]).mirrors[0].cluster,
            format!("outbound|{port}||{host}")
        );
    }
}

#[test]
fn destination_port_not_on_the_service_is_reported() {
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, port: {number: 8000}}\n",
    );
    let d = out.one(Code::ReferencedResourceNotFound);
    assert_eq!(
        d.message,
        format!("referenced host:port not found: \"{REVIEWS}:8000\"")
    );
    assert_eq!(cluster(&routes[0]), format!("outbound|8000||{REVIEWS}"));
}

#[test]
fn weighted_destination_headers_go_on_each_cluster() {
    let (out, routes) = reviews(
        r#"
hosts: [reviews]
http:
- headers:
    request:
      set: {x-route: r}
  route:
  - destination: {host: reviews, subset: v1}
    weight: 75
    headers:
      request:
        set: {x-dest: one, ":authority": v1.example.com}
        remove: [x-drop]
      response:
        add: {x-served-by: v1}
  - destination: {host: reviews, subset: v2}
    weight: 25
"#,
    );
    out.assert_clean();
    let r = &routes[0];
    assert_eq!(r.request_headers_to_add, vec![set("x-route", "r")]);
    assert_eq!(forward(r).host_rewrite_literal, None);
    let w = weighted(r);
    assert_eq!(w[0].request_headers_to_add, vec![set("x-dest", "one")]);
    assert_eq!(w[0].request_headers_to_remove, vec!["x-drop".to_string()]);
    assert_eq!(w[0].response_headers_to_add, vec![add("x-served-by", "v1")]);
    assert_eq!(w[0].host_rewrite_literal.as_deref(), Some("v1.example.com"));
    assert!(w[1].request_headers_to_add.is_empty());
    assert_eq!(w[1].host_rewrite_literal, None);
}

#[test]
fn single_destination_headers_follow_route_headers_and_route_authority_wins() {
    let (out, routes) = reviews(
        r#"
hosts: [reviews]
http:
- headers:
    request:
      set: {x-b: "2", x-a: "1", host: route.example.com}
      add: {x-c: "3"}
      remove: [x-old, ":path"]
    response:
      set: {x-resp: r}
  route:
  - destination: {host: reviews, subset: v1}
    headers:
      request:
        set: {x-d: "4", ":authority": dest.example.com}
        add: {x-e: "5"}
"#,
    );
    // `:path` cannot be removed: a warning, no error.
    assert!(out.errors().is_empty(), "{:#?}", out.diags);
    assert_eq!(out.with_code(Code::InvalidValue).len(), 1);
    let r = &routes[0];
    assert_eq!(
        r.request_headers_to_add,
        vec![
            set("x-a", "1"),
            set("x-b", "2"),
            add("x-c", "3"),
            set("x-d", "4"),
            add("x-e", "5"),
        ]
    );
    assert_eq!(r.request_headers_to_remove, vec!["x-old".to_string()]);
    assert_eq!(r.response_headers_to_add, vec![set("x-resp", "r")]);
    assert_eq!(
        forward(r).host_rewrite_literal.as_deref(),
        Some("route.example.com")
    );
}

#[test]
fn destination_authority_applies_without_a_route_level_one() {
    let (out, routes) = reviews(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n    headers:\n      request:\n        add: {host: dest.example.com}\n",
    );
    out.assert_clean();
    assert_eq!(
        forward(&routes[0]).host_rewrite_literal.as_deref(),
        Some("dest.example.com")
    );
    assert!(routes[0].request_headers_to_add.is_empty());
}

#[test]
fn authority_set_twice_is_a_conflict() {
    let (out, routes) = reviews(
        r#"
hosts: [reviews]
http:
- rewrite: {authority: a.example.com}
  headers:
    request:
      set: {":authority": b.example.com}
  route:
  - destination: {host: reviews}
"#,
    );
    let d = out.one(Code::AuthorityConflict);
    assert_eq!(
        d.message,
        "authority header cannot be set multiple times: have \"a.example.com\", attempting to set \"b.example.com\""
    );
    assert_eq!(
        d.field.as_deref(),
        Some("spec.http[0].headers.request.set.:authority")
    );
    assert_eq!(routes[0].name, "default");
}

#[test]
fn services_without_virtual_service_get_the_default_route() {
    let out = lower(&[], &reviews_registry(), &RuleIndex::default());
    out.assert_clean();
    let routes = &out.vhost("9080", &format!("{REVIEWS}:9080")).routes;
    assert_eq!(routes.len(), 1);
    let r = &routes[0];
    assert_eq!(r.name, "default");
    assert_eq!(r.matcher, crate::lower::route::matcher::match_all());
    assert_eq!(cluster(r), format!("outbound|9080||{REVIEWS}"));
    let f = forward(r);
    assert_eq!(f.timeout, Duration::ZERO);
    assert_eq!(f.retry, Some(default_policy()));
    assert!(f.mirrors.is_empty());
    assert_eq!(r.decorator, format!("{REVIEWS}:9080/*"));
    assert_eq!(r.config_path, None);
}

#[test]
fn oldest_virtual_service_owns_a_contested_host() {
    let spec = |subset: &str| {
        format!("hosts: [reviews]\nhttp:\n- route:\n  - destination: {{host: reviews, subset: {subset}}}\n")
    };
    let out = lower(
        &[
            vs_at("default", "newer", Some("2024-05-02T00:00:00Z"), &spec("v2")),
            vs_at("default", "older", Some("2024-05-01T00:00:00Z"), &spec("v1")),
            vs_at("other", "also-newer", Some("2024-05-03T00:00:00Z"), &format!(
                "hosts: [{REVIEWS}]\nhttp:\n- route:\n  - destination: {{host: {REVIEWS}, subset: v3}}\n"
            )),
        ],
        &reviews_registry(),
        &reviews_rules(),
    );
    let routes = &out.vhost("9080", &format!("{REVIEWS}:9080")).routes;
    assert_eq!(cluster(&routes[0]), format!("outbound|9080|v1|{REVIEWS}"));
    let conflicts = out.with_code(Code::ConflictingVirtualServiceHosts);
    assert_eq!(conflicts.len(), 2);
    let losers: Vec<_> = conflicts
        .iter()
        .map(|d| {
            d.resource
                .as_ref()
                .map(|r| r.name.as_str())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(losers, ["newer", "also-newer"]);
    assert!(conflicts.iter().all(|d| d.severity == Severity::Error
        && d.field.as_deref() == Some("spec.hosts[0]")
        && d.message.contains("default/older")));

    // No timestamp counts as the oldest; then names decide.
    let out = lower(
        &[
            vs_at(
                "default",
                "b-stamped",
                Some("2020-01-01T00:00:00Z"),
                &spec("v2"),
            ),
            vs("default", "z-unstamped", &spec("v3")),
            vs("default", "a-unstamped", &spec("v1")),
        ],
        &reviews_registry(),
        &reviews_rules(),
    );
    let routes = &out.vhost("9080", &format!("{REVIEWS}:9080")).routes;
    assert_eq!(cluster(&routes[0]), format!("outbound|9080|v1|{REVIEWS}"));
}

#[test]
fn exact_host_beats_wildcard_and_wildcards_match_by_suffix() {
    let a = "a.example.com";
    let b = "b.example.com";
    let out = lower(
        &[
            vs("default", "wild", "hosts: ['*.example.com']\nhttp:\n- route:\n  - destination: {host: b.example.com, subset: wild}\n"),
            vs("default", "exact", "hosts: [a.example.com]\nhttp:\n- route:\n  - destination: {host: a.example.com, subset: exact}\n"),
        ],
        &registry(vec![svc(a, &[80]), svc(b, &[80])]),
        &subsets(&[(a, &["exact"]), (b, &["wild"])]),
    );
    out.assert_clean();
    assert_eq!(
        cluster(&out.vhost("80", "a.example.com:80").routes[0]),
        "outbound|80|exact|a.example.com"
    );
    assert_eq!(
        cluster(&out.vhost("80", "b.example.com:80").routes[0]),
        "outbound|80|wild|b.example.com"
    );
}

#[test]
fn virtual_service_hosts_without_a_service_get_a_vhost_on_port_80_only() {
    let out = lower(
        &[vs(
            "default",
            "ext",
            "hosts: [api.external.com, reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n",
        )],
        &registry(vec![svc(REVIEWS, &[80, 9080])]),
        &RuleIndex::default(),
    );
    let vh = out.vhost("80", "api.external.com:80");
    assert_eq!(vh.domains, vec!["api.external.com".to_string()]);
    assert_eq!(cluster(&vh.routes[0]), format!("outbound|80||{REVIEWS}"));
    assert!(out
        .route_config("9080")
        .virtual_hosts
        .iter()
        .all(|v| v.name != "api.external.com:9080"));
}

#[test]
fn listeners_and_route_configs_are_sorted_and_only_for_http_ports() {
    let tcp = super::svc_ports(
        "db.default.svc.cluster.local",
        &[(5432, crate::lower::registry::Protocol::Other)],
    );
    let out = lower(
        &[],
        &registry(vec![
            svc(REVIEWS, &[9080, 80]),
            svc("web.default.svc.cluster.local", &[8080]),
            tcp,
        ]),
        &RuleIndex::default(),
    );
    let names: Vec<_> = out.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["0.0.0.0_80", "0.0.0.0_8080", "0.0.0.0_9080"]);
    let rcs: Vec<_> = out.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(rcs, ["80", "8080", "9080"]);
    let options = Options {
        bind_address: "127.0.0.1".to_string(),
        ..Options::default()
    };
    let out = lower_with(&[], &reviews_registry(), &RuleIndex::default(), &options);
    let l = out.listener("127.0.0.1_9080");
    assert_eq!(l.address, "127.0.0.1");
    assert_eq!(l.stat_prefix, "outbound_127.0.0.1_9080");
    assert_eq!(l.route_config_name, "9080");
}

#[test]
fn consistent_hash_adds_hash_policy_and_drops_previous_hosts() {
    use crate::ir::HashPolicy;
    let mut rules = reviews_rules();
    let policy =
        |yaml: &str| Some(serde_yaml::from_str(yaml).expect("test traffic policy must parse"));
    let rule = rules.rules.get_mut(REVIEWS).expect("fixture rule");
    rule.traffic_policy = policy("loadBalancer: {consistentHash: {httpHeaderName: x-user}}");
    rule.subsets[1].traffic_policy =
        policy("loadBalancer: {consistentHash: {httpCookie: {name: session, path: /, ttl: 10s}}}");
    let out = lower(
        &[vs(
            "default",
            "reviews",
            r#"
hosts: [reviews]
http:
- match:
  - uri: {prefix: /v2}
  route:
  - destination: {host: reviews, subset: v2}
- match:
  - uri: {prefix: /split}
  route:
  - destination: {host: reviews, subset: v1}
    weight: 50
  - destination: {host: reviews, subset: v3}
    weight: 50
- route:
  - destination: {host: reviews, subset: v1}
"#,
        )],
        &reviews_registry(),
        &rules,
    );
    let routes = &out.vhost("9080", &format!("{REVIEWS}:9080")).routes;
    // Subset-level policy wins for v2.
    let v2 = forward(&routes[0]);
    assert_eq!(
        v2.hash_policy,
        vec![HashPolicy::Cookie {
            name: "session".to_string(),
            path: Some("/".to_string()),
            ttl: Some(Duration::from_secs(10)),
        }]
    );
    assert!(!v2.retry.as_ref().expect("retry").previous_hosts_predicate);
    // Weighted: no hash policy, but the predicate still goes.
    let split = forward(&routes[1]);
    assert!(split.hash_policy.is_empty());
    assert!(
        !split
            .retry
            .as_ref()
            .expect("retry")
            .previous_hosts_predicate
    );
    let v1 = forward(&routes[2]);
    assert_eq!(
        v1.hash_policy,
        vec![HashPolicy::Header("x-user".to_string())]
    );

    // Services without a VirtualService: the default route hashes too.
    let out = lower(&[], &reviews_registry(), &rules);
    let d = forward(&out.vhost("9080", &format!("{REVIEWS}:9080")).routes[0]);
    assert_eq!(
        d.hash_policy,
        vec![HashPolicy::Header("x-user".to_string())]
    );
    assert!(!d.retry.as_ref().expect("retry").previous_hosts_predicate);
}
