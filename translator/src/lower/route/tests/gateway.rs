//! Gateway listeners, route configs and VirtualService binding.

use super::*;
use crate::ir::PathMatch;

const PRODUCTPAGE: &str = "productpage.default.svc.cluster.local";

fn bookinfo_gateway(hosts: &str) -> Resource {
    gw(
        "istio-system",
        "ingress",
        &format!(
            "servers:\n- port: {{number: 8080, name: http, protocol: HTTP}}\n  hosts: {hosts}\n"
        ),
    )
}

fn pp_registry() -> Registry {
    registry(vec![svc(PRODUCTPAGE, &[9080])])
}

#[test]
fn bound_virtual_service_fills_the_gateway_route_config() {
    let out = lower(
        &[
            bookinfo_gateway("['*']"),
            vs(
                "default",
                "bookinfo",
                r#"
hosts: [bookinfo.example.com]
gateways: [istio-system/ingress]
http:
- match:
  - uri: {exact: /productpage}
  - uri: {prefix: /static}
  route:
  - destination: {host: productpage, port: {number: 9080}}
"#,
            ),
        ],
        &pp_registry(),
        &RuleIndex::default(),
    );
    out.assert_clean();
    let l = out.listener("0.0.0.0_8080");
    assert_eq!(l.route_config_name, "http.8080");
    assert_eq!(l.stat_prefix, "http.8080");
    assert_eq!(l.port, 8080);
    let vh = out.vhost("http.8080", "bookinfo.example.com:8080");
    assert_eq!(vh.domains, ["bookinfo.example.com"]);
    assert_eq!(vh.routes.len(), 2);
    assert_eq!(
        cluster(&vh.routes[0]),
        format!("outbound|9080||{PRODUCTPAGE}")
    );
    // Gateway-only: the sidecar route config keeps the default route.
    let mesh = &out.vhost("9080", &format!("{PRODUCTPAGE}:9080")).routes;
    assert_eq!(mesh[0].name, "default");
}

#[test]
fn unbound_gateway_gets_a_blackhole_virtual_host() {
    let out = lower(
        &[
            bookinfo_gateway("['*']"),
            vs(
                "default",
                "mesh-only",
                "hosts: [productpage]\nhttp:\n- route:\n  - destination: {host: productpage}\n",
            ),
        ],
        &pp_registry(),
        &RuleIndex::default(),
    );
    let rc = out.route_config("http.8080");
    assert_eq!(rc.virtual_hosts.len(), 1);
    assert_eq!(rc.virtual_hosts[0].name, "blackhole:8080");
    assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
    assert!(rc.virtual_hosts[0].routes.is_empty());
}

#[test]
fn server_hosts_filter_virtual_service_hosts_and_namespaces() {
    let bound = |ns: &str, name: &str, host: &str| {
        vs(
            ns,
            name,
            &format!("hosts: [{host}]\ngateways: [istio-system/ingress]\nhttp:\n- route:\n  - destination: {{host: {PRODUCTPAGE}}}\n"),
        )
    };
    let out = lower(
        &[
            bookinfo_gateway("['default/*.example.com', './admin.internal', 'shop.example.org']"),
            bound("default", "a", "a.example.com"),
            bound("default", "b", "other.example.net"),
            bound("team", "c", "c.example.com"),
            bound("team", "d", "shop.example.org"),
            bound("default", "e", "'*.example.org'"),
            bound("istio-system", "f", "admin.internal"),
        ],
        &pp_registry(),
        &RuleIndex::default(),
    );
    let rc = out.route_config("http.8080");
    let names: Vec<_> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    // a: namespace default allowed; b: no host match; c: namespace team not allowed for
    // `default/*`; d and e: `shop.example.org` (e's wildcard narrowed to the server host);
    // f: `./` means the Gateway's namespace.
    assert_eq!(
        names,
        [
            "a.example.com:8080",
            "admin.internal:8080",
            "shop.example.org:8080"
        ]
    );
    let shop = out.vhost("http.8080", "shop.example.org:8080");
    assert_eq!(shop.routes.len(), 2, "routes of d then e");
    assert_eq!(
        shop.routes[0].config_path.as_deref(),
        Some("/apis/networking.istio.io/v1/namespaces/team/virtual-service/d")
    );
    assert_eq!(
        shop.routes[1].config_path.as_deref(),
        Some("/apis/networking.istio.io/v1/namespaces/default/virtual-service/e")
    );
}

#[test]
fn routes_of_several_virtual_services_with_catch_alls_last() {
    let out = lower(
        &[
            bookinfo_gateway("['*']"),
            vs("default", "first", "hosts: [shop.example.com]\ngateways: [istio-system/ingress]\nhttp:\n- route:\n  - destination: {host: productpage}\n"),
            vs("default", "second", "hosts: [shop.example.com]\ngateways: [istio-system/ingress]\nhttp:\n- match:\n  - uri: {prefix: /api}\n  route:\n  - destination: {host: productpage}\n- match:\n  - uri: {prefix: /b}\n  route:\n  - destination: {host: productpage}\n"),
        ],
        &pp_registry(),
        &RuleIndex::default(),
    );
    // Gateway-bound VirtualServices do not conflict (IST0109 is for mesh hosts).
    out.assert_clean();
    let vh = out.vhost("http.8080", "shop.example.com:8080");
    let paths: Vec<_> = vh.routes.iter().map(|r| r.matcher.path.clone()).collect();
    assert_eq!(
        paths,
        [
            PathMatch::Prefix("/api".into()),
            PathMatch::Prefix("/b".into()),
            PathMatch::Prefix("/".into())
        ]
    );
    assert_eq!(
        vh.routes[2].config_path.as_deref(),
        Some("/apis/networking.istio.io/v1/namespaces/default/virtual-service/first")
    );
    // Gateway routes use the server port when the destination has several ports... here one.
    assert_eq!(
        cluster(&vh.routes[0]),
        format!("outbound|9080||{PRODUCTPAGE}")
    );
}

#[test]
fn servers_on_one_port_share_a_listener_and_bind_changes_names() {
    let out = lower(
        &[
            gw("ns1", "one", "servers:\n- port: {number: 8080, protocol: HTTP}\n  hosts: [a.example.com]\n"),
            gw("ns2", "two", "servers:\n- port: {number: 8080, protocol: http2}\n  hosts: [b.example.com]\n- port: {number: 8443, protocol: HTTPS}\n  hosts: ['*']\n- port: {number: 9000, protocol: HTTP}\n  bind: 127.0.0.2\n  hosts: ['*']\n"),
            vs("ns1", "a", "hosts: [a.example.com]\ngateways: [one]\nhttp:\n- route:\n  - destination: {host: a.example.com}\n"),
            vs("ns2", "b", "hosts: [b.example.com]\ngateways: [two, mesh]\nhttp:\n- route:\n  - destination: {host: b.example.com}\n"),
        ],
        &registry(vec![]),
        &RuleIndex::default(),
    );
    let names: Vec<_> = out.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["0.0.0.0_8080", "127.0.0.2_9000"]);
    let rc = out.route_config("http.8080");
    let vhosts: Vec<_> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(vhosts, ["a.example.com:8080", "b.example.com:8080"]);
    let bind = out.listener("127.0.0.2_9000");
    assert_eq!(bind.address, "127.0.0.2");
    assert_eq!(bind.route_config_name, "http.9000.127.0.0.2");
    // HTTPS is skipped with a warning; unknown hosts produce IST0101 errors for routes.
    let unsupported = out.with_code(Code::UnsupportedField);
    assert_eq!(unsupported.len(), 1);
    assert_eq!(
        unsupported[0].field.as_deref(),
        Some("spec.servers[1].port.protocol")
    );
}

#[test]
fn match_gateways_select_per_gateway() {
    let out = lower(
        &[
            bookinfo_gateway("['*']"),
            vs(
                "default",
                "both",
                r#"
hosts: [productpage]
gateways: [istio-system/ingress, mesh]
http:
- match:
  - uri: {prefix: /public}
    gateways: [istio-system/ingress]
  route:
  - destination: {host: productpage, subset: public}
- route:
  - destination: {host: productpage}
"#,
            ),
        ],
        &pp_registry(),
        &subsets(&[(PRODUCTPAGE, &["public"])]),
    );
    out.assert_clean();
    let gw_routes = &out
        .vhost("http.8080", &format!("{PRODUCTPAGE}:8080"))
        .routes;
    assert_eq!(gw_routes.len(), 2);
    assert_eq!(
        cluster(&gw_routes[0]),
        format!("outbound|9080|public|{PRODUCTPAGE}")
    );
    let mesh_routes = &out.vhost("9080", &format!("{PRODUCTPAGE}:9080")).routes;
    assert_eq!(mesh_routes.len(), 1);
    assert_eq!(
        cluster(&mesh_routes[0]),
        format!("outbound|9080||{PRODUCTPAGE}")
    );
}

#[test]
fn unknown_gateway_reference_is_reported() {
    let out = lower(
        &[vs("default", "lost", "hosts: [x.example.com]\ngateways: [nowhere, other/gw]\nhttp:\n- route:\n  - destination: {host: productpage}\n")],
        &pp_registry(),
        &RuleIndex::default(),
    );
    let found = out.with_code(Code::GatewayNotFound);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].message, "gateway \"default/nowhere\" not found");
    assert_eq!(found[0].field.as_deref(), Some("spec.gateways[0]"));
    assert_eq!(found[1].field.as_deref(), Some("spec.gateways[1]"));
}

#[test]
fn gateway_port_colliding_with_a_service_port_is_skipped() {
    let out = lower(
        &[gw(
            "istio-system",
            "ingress",
            "servers:\n- port: {number: 9080, protocol: HTTP}\n  hosts: ['*']\n",
        )],
        &pp_registry(),
        &RuleIndex::default(),
    );
    let d = out.one(Code::InvalidValue);
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(d.field.as_deref(), Some("spec.servers[0].port.number"));
    assert_eq!(out.listeners.len(), 1);
    assert_eq!(out.listeners[0].route_config_name, "9080");
}
