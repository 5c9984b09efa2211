//! The seed walkthroughs through a real Envoy, configured by a static bootstrap.
//!
//! Each test starts real HTTP backends (one per version), writes a ServiceEntry with their
//! ports, translates it together with a seed step folder taken verbatim from `examples/`
//! (`bind_address: 127.0.0.1`), turns the model into a static bootstrap, starts Envoy on it and
//! checks what the user and each backend see.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{free_port, Backend, EnvoyProcess, HttpClient, Recorded, Response};
use shadowplane_translator::xds::bootstrap::{static_bootstrap, BootstrapOptions};
use shadowplane_translator::{print, translate_files, Options, SourceFile};

const DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                       (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const MOBILE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) \
                      AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 \
                      Safari/604.1";

/// How long a mirrored copy may take to arrive.
const COPY_TIMEOUT: Duration = Duration::from_secs(10);
/// "Nothing more arrives": no new request for this long.
const QUIET: Duration = Duration::from_millis(300);

/// Every `.yaml` file of an `examples/` step folder (or one file), sorted, verbatim.
fn example(rel: &str) -> Vec<SourceFile> {
    let path = common::repo_root().join(rel);
    let mut paths = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(&path).unwrap_or_else(|e| panic!("read {rel}: {e}")) {
            let p = entry.expect("directory entry").path();
            if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                paths.push(p);
            }
        }
        paths.sort();
    } else {
        paths.push(path);
    }
    assert!(!paths.is_empty(), "{rel} holds no YAML file");
    paths
        .into_iter()
        .map(|p| SourceFile {
            path: p
                .strip_prefix(common::repo_root())
                .unwrap_or(&p)
                .display()
                .to_string(),
            text: std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("read {}: {e}", p.display())),
        })
        .collect()
}

fn inline(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: path.to_string(),
        text: text.to_string(),
    }
}

/// Backends named after the versions they serve.
fn backends(versions: &[&str]) -> BTreeMap<String, Backend> {
    versions
        .iter()
        .map(|v| (v.to_string(), Backend::start(v)))
        .collect()
}

/// A STATIC ServiceEntry for `<name>.<namespace>.svc.cluster.local:<port>` with one
/// 127.0.0.1 endpoint per backend, labelled `version: <backend name>` (plus `extra_labels`).
fn service_entry(
    name: &str,
    namespace: &str,
    port: u16,
    backends: &BTreeMap<String, Backend>,
    extra_labels: &str,
) -> SourceFile {
    let mut text = format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: ServiceEntry\n\
         metadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  hosts:\n  - {name}.{namespace}.svc.cluster.local\n\
         \x20 location: MESH_INTERNAL\n\
         \x20 ports:\n  - number: {port}\n    name: http\n    protocol: HTTP\n\
         \x20 resolution: STATIC\n  endpoints:\n"
    );
    for (version, backend) in backends {
        text.push_str(&format!(
            "  - address: 127.0.0.1\n    ports:\n      http: {}\n    labels:\n      version: {version}\n{extra_labels}",
            backend.port()
        ));
    }
    inline("test/service-entry.yaml", &text)
}

fn calc_service_entry(port: u16, backends: &BTreeMap<String, Backend>) -> SourceFile {
    service_entry("calcbackendsvc", "challengeistio", port, backends, "")
}

/// Envoy started on the static bootstrap of a translation, with its listener on `port`.
struct Mesh {
    envoy: EnvoyProcess,
    port: u16,
    client: HttpClient,
}

impl Mesh {
    /// Translate `files`, start Envoy on the static bootstrap. Translation errors fail the test
    /// unless `allow_errors` (a config `validate` rejects but `serve` still serves).
    fn start(files: &[SourceFile], port: u16, options: Options, allow_errors: bool) -> Mesh {
        let options = Options {
            bind_address: "127.0.0.1".to_string(),
            ..options
        };
        let translation = translate_files(files, &options);
        let diagnostics = translation
            .diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            allow_errors || !translation.has_errors(),
            "the translation has errors:\n{diagnostics}"
        );
        let bootstrap = static_bootstrap(
            &translation.model,
            &BootstrapOptions {
                node_id: "seed-test".to_string(),
                node_cluster: "seed-test".to_string(),
                admin_address: "127.0.0.1".to_string(),
                // 0: Envoy picks a port; the harness reads it from --admin-address-path.
                admin_port: 0,
            },
        );
        let json = print::to_json(&bootstrap).expect("a bootstrap prints as JSON");
        let yaml = print::to_yaml_string(&json);
        let mut envoy = EnvoyProcess::start(&yaml);
        envoy.wait_for_listener(port);
        Mesh {
            envoy,
            port,
            client: HttpClient::new(),
        }
    }

    fn get(&self, host: &str, path: &str, user_agent: &str) -> Response {
        self.client
            .get(self.port, host, path, &[("user-agent", user_agent)])
    }
}

/// The backend that answered, from `x-backend-version` (panics with the response otherwise).
fn answered_by(response: &Response) -> String {
    assert_eq!(
        response.status,
        200,
        "expected a backend's 200, got {} {:?} {}",
        response.status,
        response.headers,
        response.body_string()
    );
    let version = response
        .header("x-backend-version")
        .unwrap_or_else(|| panic!("no x-backend-version in {:?}", response.headers))
        .to_string();
    assert_eq!(response.body_string(), version, "body names the backend");
    version
}

fn describe(requests: &[Recorded]) -> String {
    requests
        .iter()
        .map(|r| format!("{} {} (Host: {:?})", r.method, r.path, r.host))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Baseline (and reset, identical): desktop → v1, Mobile → v2, v3 never.
fn check_baseline(step: &str) {
    let port = free_port();
    let b = backends(&["v1", "v2", "v3"]);
    let mut files = vec![calc_service_entry(port, &b)];
    files.extend(example(step));
    let mesh = Mesh::start(&files, port, Options::default(), false);

    for i in 0..20 {
        let r = mesh.get("calcbackendsvc", &format!("/api/calc?number={i}"), DESKTOP);
        assert_eq!(answered_by(&r), "v1", "desktop request {i} in {step}");
        let r = mesh.get("calcbackendsvc", &format!("/api/calc?number={i}"), MOBILE);
        assert_eq!(answered_by(&r), "v2", "mobile request {i} in {step}");
    }
    assert_eq!(b["v1"].wait_quiet(QUIET, COPY_TIMEOUT).len(), 20);
    assert_eq!(b["v2"].wait_quiet(QUIET, COPY_TIMEOUT).len(), 20);
    let v3 = b["v3"].wait_quiet(QUIET, COPY_TIMEOUT);
    assert!(
        v3.is_empty(),
        "v3 must get nothing in {step}:\n{}",
        describe(&v3)
    );
    let v1 = b["v1"].requests();
    assert!(v1
        .iter()
        .all(|r| r.host.as_deref() == Some("calcbackendsvc")));
    drop(mesh.envoy);
}

#[test]
fn calc_baseline_routes_desktop_to_v1_and_mobile_to_v2() {
    check_baseline("examples/calc/baseline");
}

#[test]
fn calc_reset_is_the_baseline_again() {
    check_baseline("examples/calc/reset");
}

/// The mirror step: desktop → v1 with a copy to v3 (`Host: <host>`), Mobile → v2 and no copy.
fn check_calc_mirror(options: Options, copy_host: &str) {
    let port = free_port();
    let b = backends(&["v1", "v2", "v3"]);
    let mut files = vec![calc_service_entry(port, &b)];
    files.extend(example("examples/calc/mirror"));
    let mesh = Mesh::start(&files, port, options, false);

    const N: usize = 30;
    for i in 0..N {
        let r = mesh.get("calcbackendsvc", &format!("/api/calc?number={i}"), DESKTOP);
        assert_eq!(
            answered_by(&r),
            "v1",
            "desktop request {i}: the user never sees v3"
        );
    }
    let copies = b["v3"].wait_for(N, COPY_TIMEOUT);
    assert_eq!(
        copies.len(),
        N,
        "v3 must get a copy of every desktop request:\n{}",
        describe(&copies)
    );
    let primary = b["v1"].requests();
    assert_eq!(primary.len(), N);
    let by_request_id: BTreeMap<&str, &Recorded> = primary
        .iter()
        .map(|r| {
            (
                r.header("x-request-id").expect("envoy sets x-request-id"),
                r,
            )
        })
        .collect();
    assert_eq!(by_request_id.len(), N, "x-request-ids are unique");
    for copy in &copies {
        assert_eq!(copy.host.as_deref(), Some(copy_host), "Host of the copy");
        let id = copy
            .header("x-request-id")
            .expect("the copy keeps x-request-id");
        let original = by_request_id
            .get(id)
            .unwrap_or_else(|| panic!("copy {} has an x-request-id v1 never saw", copy.path));
        assert_eq!(copy.path, original.path, "the copy has the same path");
        assert_eq!(copy.method, original.method);
        assert_eq!(copy.header("user-agent"), Some(DESKTOP));
        assert_eq!(original.host.as_deref(), Some("calcbackendsvc"));
    }

    for i in 0..20 {
        let r = mesh.get("calcbackendsvc", &format!("/api/mobile?n={i}"), MOBILE);
        assert_eq!(answered_by(&r), "v2", "mobile request {i}");
    }
    assert_eq!(b["v2"].wait_quiet(QUIET, COPY_TIMEOUT).len(), 20);
    let copies = b["v3"].wait_quiet(QUIET, COPY_TIMEOUT);
    assert_eq!(
        copies.len(),
        N,
        "mobile requests must not be mirrored:\n{}",
        describe(&copies)
    );
    assert!(
        copies.iter().all(|c| !c.path.starts_with("/api/mobile")),
        "a mobile request reached v3"
    );
    drop(mesh.envoy);
}

#[test]
fn calc_mirror_copies_desktop_requests_to_v3_with_shadow_host() {
    check_calc_mirror(Options::default(), "calcbackendsvc-shadow");
}

#[test]
fn calc_mirror_without_shadow_suffix_keeps_the_host() {
    let options = Options {
        disable_shadow_host_suffix: true,
        ..Options::default()
    };
    check_calc_mirror(options, "calcbackendsvc");
}

#[test]
fn httpbin_mirror_copies_to_v2_with_shadow_host() {
    let port = free_port();
    let b = backends(&["v1", "v2"]);
    let mut files = vec![service_entry(
        "httpbin",
        "default",
        port,
        &b,
        "      app: httpbin\n",
    )];
    files.extend(example("examples/httpbin/destination-rule.yaml"));
    files.extend(example("examples/httpbin/virtual-service.yaml"));
    let mesh = Mesh::start(&files, port, Options::default(), false);

    for _ in 0..5 {
        let r = mesh.get("httpbin", "/status/200", "curl/8.5.0");
        assert_eq!(answered_by(&r), "v1");
    }
    let copies = b["v2"].wait_for(5, COPY_TIMEOUT);
    assert_eq!(copies.len(), 5, "v2 gets a copy of each request");
    for copy in &copies {
        assert_eq!(copy.path, "/status/200");
        assert_eq!(copy.host.as_deref(), Some("httpbin-shadow"));
    }
    assert_eq!(b["v1"].requests().len(), 5);
    drop(mesh.envoy);
}

/// The calc mirror step with the VirtualService's mirror carrying `mirrorPercentage`.
fn calc_mirror_with_percentage(percentage: &str) -> (Mesh, BTreeMap<String, Backend>) {
    let port = free_port();
    let b = backends(&["v1", "v2", "v3"]);
    let vs = format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: VirtualService\n\
         metadata:\n  name: backend-vs\n  namespace: challengeistio\n\
         spec:\n  hosts:\n  - calcbackendsvc\n  http:\n\
         \x20 - route:\n    - destination:\n        host: calcbackendsvc\n        subset: v1\n\
         \x20   mirror:\n      host: calcbackendsvc\n      subset: v3\n\
         \x20   mirrorPercentage:\n      value: {percentage}\n"
    );
    let files = vec![
        calc_service_entry(port, &b),
        example("examples/calc/mirror/destination-rule.yaml").remove(0),
        inline("test/virtual-service.yaml", &vs),
    ];
    let mesh = Mesh::start(&files, port, Options::default(), false);
    (mesh, b)
}

#[test]
fn mirror_percentage_zero_sends_no_copy() {
    let (mesh, b) = calc_mirror_with_percentage("0");
    for i in 0..100 {
        let r = mesh.get("calcbackendsvc", &format!("/p0/{i}"), DESKTOP);
        assert_eq!(answered_by(&r), "v1");
    }
    assert_eq!(b["v1"].requests().len(), 100);
    let copies = b["v3"].wait_quiet(Duration::from_millis(500), COPY_TIMEOUT);
    assert!(
        copies.is_empty(),
        "mirrorPercentage 0 must send no copy, v3 got {}",
        copies.len()
    );
}

#[test]
fn mirror_percentage_fifty_sends_about_half() {
    let (mesh, b) = calc_mirror_with_percentage("50");
    for i in 0..100 {
        let r = mesh.get("calcbackendsvc", &format!("/p50/{i}"), DESKTOP);
        assert_eq!(answered_by(&r), "v1");
    }
    let copies = b["v3"].wait_quiet(Duration::from_millis(500), COPY_TIMEOUT);
    // Binomial(100, 0.5): σ = 5, so 30..=70 is a 4σ bound (flakes about once in 15,000 runs).
    assert!(
        (30..=70).contains(&copies.len()),
        "mirrorPercentage 50 over 100 requests gave {} copies",
        copies.len()
    );
    let primary_ids: std::collections::BTreeSet<String> = b["v1"]
        .requests()
        .iter()
        .filter_map(|r| r.header("x-request-id").map(str::to_string))
        .collect();
    for copy in &copies {
        let id = copy.header("x-request-id").unwrap_or_default();
        assert!(
            primary_ids.contains(id),
            "copy {} matches no v1 request",
            copy.path
        );
    }
}

#[test]
fn route_to_undefined_subset_answers_503_and_sends_no_copy() {
    let port = free_port();
    let b = backends(&["v1", "v2", "v3"]);
    let vs = "apiVersion: networking.istio.io/v1\n\
              kind: VirtualService\n\
              metadata:\n  name: backend-vs\n  namespace: challengeistio\n\
              spec:\n  hosts:\n  - calcbackendsvc\n  http:\n\
              \x20 - route:\n    - destination:\n        host: calcbackendsvc\n        subset: v9\n\
              \x20   mirror:\n      host: calcbackendsvc\n      subset: v3\n";
    let files = vec![
        calc_service_entry(port, &b),
        example("examples/calc/mirror/destination-rule.yaml").remove(0),
        inline("test/virtual-service.yaml", vs),
    ];
    // `validate` reports the undefined subset as an error; the route is still served.
    let translation = translate_files(
        &files,
        &Options {
            bind_address: "127.0.0.1".to_string(),
            ..Options::default()
        },
    );
    assert!(
        translation
            .diagnostics
            .iter()
            .any(|d| d.is_error() && d.to_string().contains("v9")),
        "the undefined subset v9 is reported: {:?}",
        translation.diagnostics
    );
    let mesh = Mesh::start(&files, port, Options::default(), true);
    for i in 0..10 {
        let r = mesh.get("calcbackendsvc", &format!("/nc/{i}"), DESKTOP);
        assert_eq!(
            r.status,
            503,
            "a route to an undefined subset answers 503 (NC), got {} {}",
            r.status,
            r.body_string()
        );
    }
    for (version, backend) in &b {
        let got = backend.wait_quiet(QUIET, COPY_TIMEOUT);
        assert!(
            got.is_empty(),
            "{version} must get nothing (no primary, so no shadow):\n{}",
            describe(&got)
        );
    }
    drop(mesh.envoy);
}

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
    assert_eq!(envoy.stat("cluster.shadow.upstream_rq_total"), Some(1));
}
