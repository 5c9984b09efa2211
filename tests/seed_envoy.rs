//! The seed walkthroughs through a real Envoy (static bootstrap).
mod common;

use std::time::Duration;

use common::{free_port, Backend, EnvoyProcess, HttpClient};

/// The harness itself against a hand-written Envoy config: a route to `primary` mirrored to
/// `shadow`. Separates "the harness or Envoy behaves unexpectedly" from translator bugs.
#[test]
fn harness_hand_written_mirror_config() {
    let primary = Backend::start("primary");
    let shadow = Backend::start("shadow");
    let listen = free_port();
    let bootstrap = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["svc"]
              routes:
              - match: {{prefix: /}}
                route:
                  cluster: primary
                  request_mirror_policies:
                  - cluster: shadow
  clusters:
  - name: primary
    type: STATIC
    load_assignment:
      cluster_name: primary
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}]}}]
  - name: shadow
    type: STATIC
    load_assignment:
      cluster_name: shadow
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {s}}}}}}}}}]}}]
"#,
        p = primary.port(),
        s = shadow.port(),
    );
    let mut envoy = EnvoyProcess::start(&bootstrap);
    envoy.wait_for_listener(listen);
    let client = HttpClient::new();
    let resp = client.get(listen, "svc", "/a?b=c", &[("x-test", "1")]);
    assert_eq!(resp.status, 200, "{}", resp.body_string());
    assert_eq!(resp.header("x-backend-version"), Some("primary"));
    assert_eq!(resp.body_string(), "primary");
    let copies = shadow.wait_for(1, Duration::from_secs(5));
    assert_eq!(copies.len(), 1, "the shadow got no copy");
    assert_eq!(copies[0].path, "/a?b=c");
    assert_eq!(copies[0].host.as_deref(), Some("svc-shadow"));
    assert_eq!(copies[0].header("x-test"), Some("1"));
    let seen = primary.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].host.as_deref(), Some("svc"));
    assert_eq!(
        seen[0].header("x-request-id"),
        copies[0].header("x-request-id")
    );
    let unknown = client.get(listen, "other", "/", &[]);
    assert_eq!(unknown.status, 404);
}
