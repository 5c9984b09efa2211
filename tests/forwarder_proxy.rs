//! The forwarder's data plane end to end: Istio YAML → translator → xDS resources → the
//! forwarder's compiler → a running [`Forwarder`] on 127.0.0.1, with real HTTP backends that
//! record what they receive.
//!
//! Each test starts its own backends and forwarder on fresh ports. Every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shadowplane::forwarder::compile::{compile, error_detail, XdsResources};
use shadowplane::forwarder::proxy::{Forwarder, ForwarderOptions};
use shadowplane::forwarder::table::Table;
use shadowplane_translator::{translate_files, Options, SourceFile};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;

const DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                       (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const MOBILE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) \
                      AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148";
/// How long a mirrored copy may take to arrive.
const COPY_TIMEOUT: Duration = Duration::from_secs(10);
/// "Nothing more arrives": no new request for this long.
const QUIET: Duration = Duration::from_millis(300);

// =========================================================================== backends

/// One request as a backend received it.
#[derive(Debug, Clone)]
struct Recorded {
    version: hyper::Version,
    method: String,
    path: String,
    host: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a backend answers.
#[derive(Debug, Clone)]
struct Behavior {
    delay: Duration,
    status: u16,
}

impl Default for Behavior {
    fn default() -> Behavior {
        Behavior {
            delay: Duration::ZERO,
            status: 200,
        }
    }
}

#[derive(Default)]
struct Journal {
    requests: Mutex<Vec<Recorded>>,
    arrived: Notify,
    connections: AtomicUsize,
}

/// A real HTTP/1.1 and h2c server on 127.0.0.1 answering with body `<name>` and header
/// `x-backend: <name>` (after `behavior.delay`, with `behavior.status`), recording requests.
/// Or, `reset`: a TCP server that reads a request and closes the connection without answer.
struct Backend {
    addr: SocketAddr,
    journal: Arc<Journal>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start(name: &str) -> Backend {
        Backend::start_with(name, Behavior::default()).await
    }

    async fn start_with(name: &str, behavior: Behavior) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let journal = Arc::new(Journal::default());
        let behavior = Arc::new(behavior);
        let (j, b, n) = (journal.clone(), behavior, name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                j.connections.fetch_add(1, Ordering::Relaxed);
                let (j, b, n) = (j.clone(), b.clone(), n.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (j, b, n) = (j.clone(), b.clone(), n.clone());
                        async move { Ok::<_, Infallible>(answer(&j, &b, &n, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            journal,
            task,
        }
    }

    /// A server that accepts, reads the request head and closes the connection.
    async fn start_reset() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let journal = Arc::new(Journal::default());
        let j = journal.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                j.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    drop(stream);
                });
            }
        });
        Backend {
            addr,
            journal,
            task,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn requests(&self) -> Vec<Recorded> {
        self.journal.requests.lock().expect("journal lock").clone()
    }

    fn connections(&self) -> usize {
        self.journal.connections.load(Ordering::Relaxed)
    }

    /// Wait until `n` requests arrived (or the timeout), return what arrived.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.journal.arrived.notified();
            let got = self.requests();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    /// Wait until no request arrived for `quiet` (at most `timeout`), return all.
    async fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        let mut last = self.requests().len();
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.requests().len();
            if now == last || Instant::now() >= deadline {
                return self.requests();
            }
            last = now;
        }
    }
}

async fn answer(
    journal: &Journal,
    behavior: &Behavior,
    name: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let rec = Recorded {
        version: parts.version,
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string()),
        host,
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    journal.requests.lock().expect("journal lock").push(rec);
    journal.arrived.notify_waiters();
    let b = behavior;
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let mut r = Response::new(Full::new(Bytes::from(name.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(b.status).expect("valid status");
    r.headers_mut()
        .insert("x-backend", name.parse().expect("header value"));
    r
}

/// A port where nothing listens (connections are refused). From [`common::free_port`], so no
/// backend bound on port 0 by a parallel test can take it.
async fn down_port() -> u16 {
    common::free_port()
}

/// A port for a forwarder started later in the test; see [`common::free_port`].
async fn free_port() -> u16 {
    common::free_port()
}

// =========================================================================== config

fn inline(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: path.to_string(),
        text: text.to_string(),
    }
}

fn example(rel: &str) -> Vec<SourceFile> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {rel}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| SourceFile {
            path: p.display().to_string(),
            text: std::fs::read_to_string(&p).expect("read example"),
        })
        .collect()
}

/// A STATIC ServiceEntry for `<name>.<ns>.svc.cluster.local:<port>` with one 127.0.0.1
/// endpoint per (version label, backend port).
fn service_entry(name: &str, ns: &str, port: u16, endpoints: &[(&str, u16)]) -> SourceFile {
    let mut text = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  hosts:\n  - {name}.{ns}.svc.cluster.local\n  location: MESH_INTERNAL\n  ports:\n  - number: {port}\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  endpoints:\n"
    );
    for (version, p) in endpoints {
        text.push_str(&format!(
            "  - address: 127.0.0.1\n    ports:\n      http: {p}\n    labels:\n      version: {version}\n"
        ));
    }
    inline(&format!("test/{name}-service-entry.yaml"), &text)
}

/// A DestinationRule with subsets v1, v2, v3 (by `version` label).
fn subsets(name: &str, ns: &str) -> SourceFile {
    inline(
        &format!("test/{name}-dr.yaml"),
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             spec:\n  host: {name}\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n  - name: v3\n    labels:\n      version: v3\n"
        ),
    )
}

fn virtual_service(name: &str, ns: &str, http: &str) -> SourceFile {
    inline(
        &format!("test/{name}-vs.yaml"),
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             spec:\n  hosts:\n  - {name}\n  http:\n{http}"
        ),
    )
}

fn table(files: &[SourceFile]) -> Arc<Table> {
    table_with(files, Options::default())
}

fn table_with(files: &[SourceFile], options: Options) -> Arc<Table> {
    let options = Options {
        bind_address: "127.0.0.1".to_string(),
        ..options
    };
    let t = translate_files(files, &options);
    let diags: Vec<String> = t.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(!t.has_errors(), "translation errors:\n{}", diags.join("\n"));
    let res = XdsResources::from_translator(&t.resources, "test-1");
    Arc::new(compile(&res).unwrap_or_else(|e| panic!("{}", error_detail(&e))))
}

async fn start(table: Arc<Table>, options: ForwarderOptions) -> Arc<Forwarder> {
    let f = Arc::new(Forwarder::new(options));
    f.apply(table).await.expect("the listeners bind");
    f
}

// =========================================================================== client

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
    elapsed: Duration,
}

impl Resp {
    fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    fn new() -> HttpClient {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: &str,
        port: u16,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Resp {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}{path}"))
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).expect("request");
        let started = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .expect("the forwarder answers within 20 s")
            .expect("an HTTP response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("the whole body")
            .to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    async fn get(&self, port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send("GET", port, host, path, headers, Bytes::new())
            .await
    }
}

async fn metrics(f: &Forwarder) -> String {
    f.stats().render()
}

/// The value of one exact series in the metrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn cluster(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

// =========================================================================== the seed

/// The calc walkthrough's mirror step: desktop → v1 with a copy to v3 (`Host:
/// calcbackendsvc-shadow`, same `x-request-id`), Mobile → v2 and no copy; metrics after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_routes_and_mirrors_like_envoy() {
    let (v1, v2, v3) = (
        Backend::start("v1").await,
        Backend::start("v2").await,
        Backend::start("v3").await,
    );
    let port = free_port().await;
    let mut files = vec![service_entry(
        "calcbackendsvc",
        "challengeistio",
        port,
        &[("v1", v1.port()), ("v2", v2.port()), ("v3", v3.port())],
    )];
    files.extend(example("examples/calc/mirror"));
    let f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();

    const N: usize = 20;
    for i in 0..N {
        let path = format!("/api/calc?number={i}");
        let r = c
            .get(port, "calcbackendsvc", &path, &[("user-agent", DESKTOP)])
            .await;
        assert_eq!((r.status, r.backend()), (200, "v1"), "desktop {i}: {r:?}");
        assert_eq!(r.body, "v1");
        let r = c
            .get(port, "calcbackendsvc", &path, &[("user-agent", MOBILE)])
            .await;
        assert_eq!((r.status, r.backend()), (200, "v2"), "mobile {i}: {r:?}");
    }
    let copies = v3.wait_for(N, COPY_TIMEOUT).await;
    assert_eq!(copies.len(), N, "v3 gets a copy of every desktop request");
    let primary = v1.requests();
    assert_eq!(primary.len(), N);
    assert_eq!(v2.requests().len(), N);
    let ids: BTreeMap<&str, &Recorded> = primary
        .iter()
        .map(|r| (r.header("x-request-id").expect("a request id"), r))
        .collect();
    assert_eq!(ids.len(), N, "request ids are unique");
    for copy in &copies {
        assert_eq!(copy.host.as_deref(), Some("calcbackendsvc-shadow"));
        let id = copy.header("x-request-id").expect("the copy has the id");
        let p = ids.get(id).expect("the copy's id is a primary's id");
        assert_eq!(copy.path, p.path);
        assert_eq!(copy.header("user-agent"), Some(DESKTOP));
        assert_eq!(p.host.as_deref(), Some("calcbackendsvc"));
    }
    assert!(v3
        .wait_quiet(QUIET, COPY_TIMEOUT)
        .await
        .iter()
        .all(|r| r.header("user-agent") == Some(DESKTOP)));

    // Metrics, Envoy's names, per cluster; the mirror counters and the comparison.
    let host = "calcbackendsvc.challengeistio.svc.cluster.local";
    let (c1, c3) = (cluster(port, "v1", host), cluster(port, "v3", host));
    let deadline = Instant::now() + COPY_TIMEOUT;
    let text = loop {
        let text = metrics(&f).await;
        let pairs = format!(
            "shadowplane_mirror_pairs_total{{route=\"{}\",shadow_cluster=\"{c3}\"}}",
            route_label(&text, &c3)
        );
        if metric(&text, &pairs) == Some(N as f64) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (series, want) in [
        (format!("envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"{c1}\"}}"), N),
        (format!("envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"{c3}\"}}"), N),
        (
            format!("envoy_cluster_upstream_rq{{envoy_response_code=\"200\",envoy_cluster_name=\"{c1}\"}}"),
            N,
        ),
        (
            format!("envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"2\",envoy_cluster_name=\"{c3}\"}}"),
            N,
        ),
        (
            format!("envoy_cluster_upstream_rq_time_count{{envoy_cluster_name=\"{c1}\"}}"),
            N,
        ),
        (
            format!("envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"{c1}\",le=\"+Inf\"}}"),
            N,
        ),
        (
            format!("envoy_cluster_upstream_cx_connect_fail{{envoy_cluster_name=\"{c1}\"}}"),
            0,
        ),
        (format!("shadowplane_mirror_sent_total{{shadow_cluster=\"{c3}\"}}"), N),
        (
            format!("shadowplane_mirror_body_too_large_total{{shadow_cluster=\"{c3}\"}}"),
            0,
        ),
        (
            format!(
                "shadowplane_mirror_pairs_total{{route=\"{}\",shadow_cluster=\"{c3}\"}}",
                route_label(&text, &c3)
            ),
            N,
        ),
        (
            // Same status (200), different bodies ("v1" vs "v3").
            format!(
                "shadowplane_mirror_status_mismatch_total{{route=\"{}\",shadow_cluster=\"{c3}\"}}",
                route_label(&text, &c3)
            ),
            0,
        ),
        (
            format!(
                "shadowplane_mirror_body_mismatch_total{{route=\"{}\",shadow_cluster=\"{c3}\"}}",
                route_label(&text, &c3)
            ),
            N,
        ),
    ] {
        assert_eq!(
            metric(&text, &series),
            Some(want as f64),
            "{series} in\n{text}"
        );
    }
    assert!(text.contains(&format!(
        "envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"{c3}\",le=\"0.5\"}}"
    )));
    assert!(text.contains("envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="));
    // Keep-alive pools: sequential requests reuse one upstream connection; nothing is left
    // active once the responses (and the shadows) are done.
    let cx = |c: &str| {
        metric(
            &text,
            &format!("envoy_cluster_upstream_cx_total{{envoy_cluster_name=\"{c}\"}}"),
        )
        .unwrap_or(f64::NAN)
    };
    assert!(cx(&c1) <= 2.0, "v1 connections: {}", cx(&c1));
    assert!(cx(&c3) <= 5.0, "v3 connections: {}", cx(&c3));
    for c in [&c1, &c3] {
        assert_eq!(
            metric(
                &text,
                &format!("envoy_cluster_upstream_rq_active{{envoy_cluster_name=\"{c}\"}}")
            ),
            Some(0.0),
            "{text}"
        );
    }
    // The debug page pairs them too.
    let mirror = f.mirror_json();
    let route = &mirror["routes"][0];
    assert_eq!(route["pairs"], N as u64, "{mirror:#}");
    assert_eq!(route["shadow_cluster"], c3.as_str());
    assert!(!mirror["recent"].as_array().expect("recent").is_empty());
}

/// The `route` label of the pairs series of shadow cluster `c`.
fn route_label(text: &str, c: &str) -> String {
    let tail = format!("\",shadow_cluster=\"{c}\"}}");
    text.lines()
        .filter_map(|l| l.strip_prefix("shadowplane_mirror_pairs_total{route=\""))
        .find_map(|l| l.split_once(&tail).map(|(route, _)| route.to_string()))
        .unwrap_or_default()
}

// =========================================================================== mirror contents

/// The shadow sees the request as the route changed it: path after the prefix rewrite,
/// headers after the route's mutations, Host after the rewrite plus `-shadow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_gets_the_rewritten_path_and_mutated_headers() {
    let (v1, v3) = (Backend::start("v1").await, Backend::start("v3").await);
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port()), ("v3", v3.port())]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            "  - match:\n    - uri:\n        prefix: /old/\n    rewrite:\n      uri: /new/\n    headers:\n      request:\n        set:\n          x-set: fixed\n        add:\n          x-added: yes\n        remove:\n        - x-secret\n    route:\n    - destination:\n        host: calc\n        subset: v1\n    mirror:\n      host: calc\n      subset: v3\n",
        ),
    ];
    let f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();
    let r = c
        .get(
            port,
            "calc",
            "/old/thing?q=1",
            &[
                ("x-secret", "s"),
                ("x-set", "from-client"),
                ("x-request-id", "given-id"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
            ],
        )
        .await;
    assert_eq!((r.status, r.backend()), (200, "v1"), "{r:?}");
    let copy = v3.wait_for(1, COPY_TIMEOUT).await;
    assert_eq!(copy.len(), 1);
    let (p, s) = (&v1.requests()[0], &copy[0]);
    for rec in [p, s] {
        assert_eq!(rec.path, "/new/thing?q=1");
        assert_eq!(rec.header("x-set"), Some("fixed"));
        assert_eq!(rec.header("x-added"), Some("yes"));
        assert_eq!(rec.header("x-secret"), None);
        assert_eq!(rec.header("x-request-id"), Some("given-id"));
        assert_eq!(
            rec.header("x-hop"),
            None,
            "listed in Connection: hop-by-hop"
        );
        assert_eq!(rec.header("x-envoy-original-path"), Some("/old/thing?q=1"));
    }
    assert_eq!(p.host.as_deref(), Some("calc"));
    assert_eq!(s.host.as_deref(), Some("calc-shadow"));
    drop(f);
}

/// `disable_shadow_host_suffix_append` (Istio 1.28's default, a translator option): the
/// shadow keeps the primary's Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_host_suffix_can_be_disabled() {
    let (v1, v3) = (Backend::start("v1").await, Backend::start("v3").await);
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port()), ("v3", v3.port())]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n        subset: v1\n    mirror:\n      host: calc\n      subset: v3\n",
        ),
    ];
    let options = Options {
        disable_shadow_host_suffix: true,
        ..Options::default()
    };
    let _f = start(table_with(&files, options), ForwarderOptions::default()).await;
    let host = format!("calc:{port}");
    let r = HttpClient::new().get(port, &host, "/", &[]).await;
    assert_eq!((r.status, r.backend()), (200, "v1"), "{r:?}");
    let copy = v3.wait_for(1, COPY_TIMEOUT).await;
    assert_eq!(copy[0].host.as_deref(), Some(host.as_str()));
}

/// With the suffix (the default) and a port in the Host, `-shadow` goes before the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_suffix_goes_before_the_port() {
    let (v1, v3) = (Backend::start("v1").await, Backend::start("v3").await);
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port()), ("v3", v3.port())]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n        subset: v1\n    mirror:\n      host: calc\n      subset: v3\n",
        ),
    ];
    let _f = start(table(&files), ForwarderOptions::default()).await;
    let r = HttpClient::new()
        .get(port, &format!("calc:{port}"), "/", &[])
        .await;
    assert_eq!(r.status, 200);
    let copy = v3.wait_for(1, COPY_TIMEOUT).await;
    assert_eq!(
        copy[0].host.as_deref(),
        Some(format!("calc-shadow:{port}").as_str())
    );
}

/// A POST body is mirrored whole when it fits the buffer; a 1 MiB POST goes to the primary
/// whole and the mirror is skipped and counted (with and without a Content-Length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_mirrored_within_the_limit_and_large_ones_skipped_and_counted() {
    let (v1, v3) = (Backend::start("v1").await, Backend::start("v3").await);
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port()), ("v3", v3.port())]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n        subset: v1\n    mirror:\n      host: calc\n      subset: v3\n",
        ),
    ];
    let f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();

    let small: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let r = c
        .send(
            "POST",
            port,
            "calc",
            "/small",
            &[],
            Bytes::from(small.clone()),
        )
        .await;
    assert_eq!(r.status, 200);
    let copy = v3.wait_for(1, COPY_TIMEOUT).await;
    assert_eq!(copy.len(), 1);
    assert_eq!(copy[0].method, "POST");
    assert_eq!(copy[0].body, small, "the shadow gets the whole small body");
    assert_eq!(v1.requests()[0].body, small);

    let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let r = c
        .send("POST", port, "calc", "/big", &[], Bytes::from(big.clone()))
        .await;
    assert_eq!((r.status, r.backend()), (200, "v1"));
    // The same without Content-Length: a chunked stream, cut off at the limit by the tee.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = big
        .chunks(16 * 1024)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let stream = http_body_util::StreamBody::new(futures::stream::iter(chunks));
    let chunked: Client<HttpConnector, http_body_util::StreamBody<_>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://127.0.0.1:{port}/big-chunked"))
        .header("host", "calc")
        .body(stream)
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), chunked.request(req))
        .await
        .expect("answer in time")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;

    let primary = v1.wait_for(3, COPY_TIMEOUT).await;
    assert_eq!(primary.len(), 3);
    assert_eq!(primary[1].path, "/big");
    assert_eq!(primary[1].body.len(), big.len());
    assert!(
        primary[1].body == big,
        "the primary gets the 1 MiB body unchanged"
    );
    assert!(primary[2].body == big, "and the chunked one");
    let shadow = v3.wait_quiet(QUIET, COPY_TIMEOUT).await;
    assert_eq!(shadow.len(), 1, "no copy of the large bodies: {shadow:?}");
    let c3 = cluster(port, "v3", "calc.ns.svc.cluster.local");
    let deadline = Instant::now() + COPY_TIMEOUT;
    loop {
        let text = metrics(&f).await;
        let skipped = metric(
            &text,
            &format!("shadowplane_mirror_body_too_large_total{{shadow_cluster=\"{c3}\"}}"),
        );
        if skipped == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "body_too_large = {skipped:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// =========================================================================== shadow can't hurt

/// Whatever the shadow does (answers in 3 s, resets, is down, answers 500), the user gets the
/// primary's answer at the primary's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_shadow_never_delays_or_fails_the_user() {
    let v1 = Backend::start("v1").await;
    let slow = Backend::start_with(
        "slow",
        Behavior {
            delay: Duration::from_secs(3),
            status: 200,
        },
    )
    .await;
    let reset = Backend::start_reset().await;
    let failing = Backend::start_with(
        "failing",
        Behavior {
            delay: Duration::ZERO,
            status: 500,
        },
    )
    .await;
    let down = down_port().await;
    for (case, shadow_port) in [
        ("slow", slow.port()),
        ("reset", reset.port()),
        ("down", down),
        ("500", failing.port()),
    ] {
        let port = free_port().await;
        let files = vec![
            service_entry("calc", "ns", port, &[("v1", v1.port()), ("v3", shadow_port)]),
            subsets("calc", "ns"),
            virtual_service(
                "calc",
                "ns",
                "  - route:\n    - destination:\n        host: calc\n        subset: v1\n    mirror:\n      host: calc\n      subset: v3\n",
            ),
        ];
        let f = start(table(&files), ForwarderOptions::default()).await;
        let c = HttpClient::new();
        for i in 0..5 {
            let r = c
                .send(
                    "POST",
                    port,
                    "calc",
                    "/x",
                    &[],
                    Bytes::from_static(b"payload"),
                )
                .await;
            assert_eq!((r.status, r.body.as_str()), (200, "v1"), "{case} {i}");
            assert!(
                r.elapsed < Duration::from_millis(1000),
                "{case} {i}: the user waited {:?}",
                r.elapsed
            );
        }
        f.shutdown().await;
    }
    assert!(slow.wait_for(5, COPY_TIMEOUT).await.len() >= 5);
    assert!(reset.connections() >= 1);
    assert_eq!(failing.wait_for(5, COPY_TIMEOUT).await.len(), 5);
}

/// The in-flight budget: with a budget of 2 and a shadow that takes 3 s, the third and later
/// concurrent mirrors are dropped and counted; the users are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_over_budget_are_dropped_and_counted() {
    let v1 = Backend::start("v1").await;
    let slow = Backend::start_with(
        "slow",
        Behavior {
            delay: Duration::from_secs(3),
            status: 200,
        },
    )
    .await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port()), ("v3", slow.port())]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n        subset: v1\n    mirror:\n      host: calc\n      subset: v3\n",
        ),
    ];
    let mut options = ForwarderOptions::default();
    options.mirror.max_in_flight = 2;
    let f = start(table(&files), options).await;
    let c = HttpClient::new();
    for _ in 0..6 {
        let r = c.get(port, "calc", "/", &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.elapsed < Duration::from_secs(1));
    }
    let c3 = cluster(port, "v3", "calc.ns.svc.cluster.local");
    let text = metrics(&f).await;
    assert_eq!(
        metric(
            &text,
            &format!("shadowplane_mirror_dropped_budget_total{{shadow_cluster=\"{c3}\"}}")
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(slow.wait_quiet(QUIET, COPY_TIMEOUT).await.len(), 2);
}

/// A shadow slower than its timeout is cut off and counted as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_past_its_timeout_is_counted() {
    let v1 = Backend::start("v1").await;
    let slow = Backend::start_with(
        "slow",
        Behavior {
            delay: Duration::from_secs(3),
            status: 200,
        },
    )
    .await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port()), ("v3", slow.port())]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n        subset: v1\n    mirror:\n      host: calc\n      subset: v3\n",
        ),
    ];
    let mut options = ForwarderOptions::default();
    options.mirror.default_timeout = Duration::from_millis(300);
    let f = start(table(&files), options).await;
    let r = HttpClient::new().get(port, "calc", "/", &[]).await;
    assert_eq!(r.status, 200);
    let c3 = cluster(port, "v3", "calc.ns.svc.cluster.local");
    let series = format!("shadowplane_mirror_shadow_timeouts_total{{shadow_cluster=\"{c3}\"}}");
    let deadline = Instant::now() + COPY_TIMEOUT;
    while metric(&metrics(&f).await, &series) != Some(1.0) {
        assert!(Instant::now() < deadline, "{}", metrics(&f).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let json = f.mirror_json();
    let recent = json["recent"].as_array().expect("recent");
    assert!(
        recent.iter().any(|p| p["shadow_error"] == "timeout"),
        "{json:#}"
    );
}

// =========================================================================== percentages

async fn mirrored_count(percent: &str, n: usize) -> (usize, usize, String) {
    let (v1, v3) = (Backend::start("v1").await, Backend::start("v3").await);
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port()), ("v3", v3.port())]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            &format!("  - route:\n    - destination:\n        host: calc\n        subset: v1\n    mirror:\n      host: calc\n      subset: v3\n    mirrorPercentage:\n      value: {percent}\n"),
        ),
    ];
    let f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();
    for _ in 0..n {
        assert_eq!(c.get(port, "calc", "/", &[]).await.status, 200);
    }
    let copies = v3.wait_quiet(QUIET, COPY_TIMEOUT).await.len();
    let skipped = metrics(&f).await;
    (v1.requests().len(), copies, skipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_percentages_0_50_100() {
    const N: usize = 400;
    let (primary, copies, text) = mirrored_count("0", 100).await;
    assert_eq!((primary, copies), (100, 0));
    assert!(text.contains("shadowplane_mirror_skipped_fraction_total"));
    let (primary, copies, _) = mirrored_count("100", 100).await;
    assert_eq!((primary, copies), (100, 100));
    // 50 %: binomial(400, 0.5), sd 10; ±6 sd.
    let (primary, copies, _) = mirrored_count("50", N).await;
    assert_eq!(primary, N);
    assert!(
        (140..=260).contains(&copies),
        "50 % mirrored {copies} of {N}"
    );
}

// =========================================================================== routing features

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_80_20() {
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port()), ("v2", v2.port())]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n        subset: v1\n      weight: 80\n    - destination:\n        host: calc\n        subset: v2\n      weight: 20\n",
        ),
    ];
    let _f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();
    const N: usize = 500;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..N {
        let r = c.get(port, "calc", "/", &[]).await;
        *counts.entry(r.backend().to_string()).or_default() += 1;
    }
    // binomial(500, 0.8): mean 400, sd ~8.9; ±6 sd.
    let v1n = counts.get("v1").copied().unwrap_or(0);
    assert!((347..=453).contains(&v1n), "{counts:?}");
    assert_eq!(
        v1n + counts.get("v2").copied().unwrap_or(0),
        N,
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_direct_response_and_fault_abort() {
    let v1 = Backend::start("v1").await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port())]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            "  - match:\n    - uri:\n        prefix: /moved\n    redirect:\n      uri: /new-home\n      authority: elsewhere.example\n  - match:\n    - uri:\n        exact: /hello\n    directResponse:\n      status: 299\n      body:\n        string: hi there\n  - match:\n    - uri:\n        prefix: /teapot\n    fault:\n      abort:\n        httpStatus: 418\n        percentage:\n          value: 100\n    route:\n    - destination:\n        host: calc\n        subset: v1\n  - route:\n    - destination:\n        host: calc\n        subset: v1\n",
        ),
    ];
    let _f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();
    let r = c.get(port, "calc", "/moved?a=1", &[]).await;
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("http://elsewhere.example/new-home?a=1")
    );
    let r = c.get(port, "calc", "/hello", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (299, "hi there"));
    let r = c.get(port, "calc", "/teapot", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (418, "fault filter abort"));
    let r = c.get(port, "calc", "/other", &[]).await;
    assert_eq!((r.status, r.backend()), (200, "v1"));
    assert_eq!(v1.requests().len(), 1, "only the last request reached v1");
    // No route: 404 NR (unknown host).
    let r = c.get(port, "nobody", "/", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.headers
            .get("x-shadowplane-response-flags")
            .and_then(|v| v.to_str().ok()),
        Some("NR")
    );
}

/// CORS (Envoy's cors filter): an allowed preflight is answered locally, a simple request
/// from an allowed origin gets the allow-origin header, other origins get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_simple_requests() {
    let v1 = Backend::start("v1").await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port())]),
        virtual_service(
            "calc",
            "ns",
            "  - corsPolicy:\n      allowOrigins:\n      - exact: https://a.example\n      allowMethods:\n      - GET\n      - POST\n      allowHeaders:\n      - x-custom\n      exposeHeaders:\n      - x-backend\n      maxAge: 60s\n      allowCredentials: true\n    route:\n    - destination:\n        host: calc\n",
        ),
    ];
    let _f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();
    let h = |r: &Resp, name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let r = c
        .send(
            "OPTIONS",
            port,
            "calc",
            "/",
            &[
                ("origin", "https://a.example"),
                ("access-control-request-method", "POST"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        h(&r, "access-control-allow-origin").as_deref(),
        Some("https://a.example")
    );
    assert_eq!(
        h(&r, "access-control-allow-methods").as_deref(),
        Some("GET,POST")
    );
    assert_eq!(
        h(&r, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(h(&r, "access-control-max-age").as_deref(), Some("60"));
    assert!(
        v1.requests().is_empty(),
        "the preflight is answered locally"
    );

    let r = c
        .get(port, "calc", "/", &[("origin", "https://a.example")])
        .await;
    assert_eq!((r.status, r.backend()), (200, "v1"));
    assert_eq!(
        h(&r, "access-control-allow-origin").as_deref(),
        Some("https://a.example")
    );
    assert_eq!(
        h(&r, "access-control-expose-headers").as_deref(),
        Some("x-backend")
    );
    let r = c
        .get(port, "calc", "/", &[("origin", "https://evil.example")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(h(&r, "access-control-allow-origin"), None);
}

/// Fault delay: the request waits the fixed delay, then goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delay() {
    let v1 = Backend::start("v1").await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port())]),
        virtual_service(
            "calc",
            "ns",
            "  - fault:\n      delay:\n        fixedDelay: 0.4s\n        percentage:\n          value: 100\n    route:\n    - destination:\n        host: calc\n",
        ),
    ];
    let _f = start(table(&files), ForwarderOptions::default()).await;
    let r = HttpClient::new().get(port, "calc", "/", &[]).await;
    assert_eq!((r.status, r.backend()), (200, "v1"));
    assert!(r.elapsed >= Duration::from_millis(400), "{:?}", r.elapsed);
}

/// A cluster with HTTP/2 upstream (DestinationRule `h2UpgradePolicy: UPGRADE`): the backend
/// gets HTTP/2 with the Host as `:authority`; the mirror too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream() {
    let (v1, v3) = (Backend::start("v1").await, Backend::start("v3").await);
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port()), ("v3", v3.port())]),
        inline(
            "test/dr.yaml",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: calc\n  namespace: ns\nspec:\n  host: calc\n  trafficPolicy:\n    connectionPool:\n      http:\n        h2UpgradePolicy: UPGRADE\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v3\n    labels:\n      version: v3\n",
        ),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n        subset: v1\n    mirror:\n      host: calc\n      subset: v3\n",
        ),
    ];
    let f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();
    for _ in 0..5 {
        let r = c
            .send(
                "POST",
                port,
                "calc",
                "/h2?x=1",
                &[],
                Bytes::from_static(b"data"),
            )
            .await;
        assert_eq!((r.status, r.backend()), (200, "v1"), "{r:?}");
    }
    let copies = v3.wait_for(5, COPY_TIMEOUT).await;
    let primary = v1.requests();
    assert_eq!(primary.len(), 5);
    assert_eq!(primary[0].version, hyper::Version::HTTP_2);
    assert_eq!(primary[0].host.as_deref(), Some("calc"));
    assert_eq!(primary[0].path, "/h2?x=1");
    assert_eq!(primary[0].body, b"data");
    assert_eq!(copies.len(), 5);
    assert_eq!(copies[0].version, hyper::Version::HTTP_2);
    assert_eq!(copies[0].host.as_deref(), Some("calc-shadow"));
    assert_eq!(copies[0].body, b"data");
    // One multiplexed connection per endpoint.
    let c1 = cluster(port, "v1", "calc.ns.svc.cluster.local");
    let text = metrics(&f).await;
    assert_eq!(
        metric(
            &text,
            &format!("envoy_cluster_upstream_cx_total{{envoy_cluster_name=\"{c1}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
}

/// A primary that is down: 503 (UF) after the retries Istio configures by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_is_down_is_503() {
    let down = down_port().await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", down)]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n        subset: v1\n",
        ),
    ];
    let f = start(table(&files), ForwarderOptions::default()).await;
    let r = HttpClient::new().get(port, "calc", "/", &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("connection failure"), "{r:?}");
    let c1 = cluster(port, "v1", "calc.ns.svc.cluster.local");
    let text = metrics(&f).await;
    let fails = metric(
        &text,
        &format!("envoy_cluster_upstream_cx_connect_fail{{envoy_cluster_name=\"{c1}\"}}"),
    )
    .unwrap_or(0.0);
    assert!(fails >= 1.0, "{text}");
}

/// Retries: one endpoint of two resets every connection; with `retryOn: reset` every request
/// succeeds (the retry goes to the other endpoint) and the retries are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_move_to_the_healthy_endpoint() {
    let good = Backend::start("good").await;
    let bad = Backend::start_reset().await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", bad.port()), ("v1", good.port())]),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n    retries:\n      attempts: 3\n      retryOn: reset,connect-failure\n",
        ),
    ];
    let f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();
    for i in 0..10 {
        let r = c.get(port, "calc", "/", &[]).await;
        assert_eq!((r.status, r.backend()), (200, "good"), "request {i}: {r:?}");
    }
    assert!(bad.connections() >= 1, "the bad endpoint was tried");
    let text = metrics(&f).await;
    let series = format!(
        "envoy_cluster_upstream_rq_retry{{envoy_cluster_name=\"{}\"}}",
        cluster(port, "", "calc.ns.svc.cluster.local")
    );
    assert!(
        metric(&text, &series).unwrap_or(0.0) >= 1.0,
        "{series}\n{text}"
    );
}

/// Per-try timeout: a try on the slow endpoint is cut after `perTryTimeout` and retried on
/// the other endpoint (Istio's retries avoid hosts already tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_retries_elsewhere() {
    let fast = Backend::start("fast").await;
    let slow = Backend::start_with(
        "slow",
        Behavior {
            delay: Duration::from_secs(3),
            status: 200,
        },
    )
    .await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", slow.port()), ("v1", fast.port())]),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n    retries:\n      attempts: 2\n      perTryTimeout: 0.2s\n      retryOn: 5xx\n",
        ),
    ];
    let f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();
    // The default balancer (least request, two random choices) may pick the fast endpoint
    // several times in a row (1 run in ~64 never tried the slow one in 6 requests): go on
    // until it was tried.
    for i in 0..40 {
        let r = c.get(port, "calc", "/", &[]).await;
        assert_eq!((r.status, r.backend()), (200, "fast"), "request {i}: {r:?}");
        assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
        if i >= 5 && !slow.requests().is_empty() {
            break;
        }
    }
    assert!(!slow.requests().is_empty(), "the slow endpoint was tried");
    let c0 = cluster(port, "", "calc.ns.svc.cluster.local");
    let text = metrics(&f).await;
    let per_try = metric(
        &text,
        &format!("envoy_cluster_upstream_rq_per_try_timeout{{envoy_cluster_name=\"{c0}\"}}"),
    )
    .unwrap_or(0.0);
    assert!(per_try >= 1.0, "{text}");
}

/// The route timeout: 504 `upstream request timeout` when the upstream is slower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504() {
    let slow = Backend::start_with(
        "slow",
        Behavior {
            delay: Duration::from_secs(3),
            status: 200,
        },
    )
    .await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", slow.port())]),
        subsets("calc", "ns"),
        virtual_service(
            "calc",
            "ns",
            "  - timeout: 0.3s\n    route:\n    - destination:\n        host: calc\n        subset: v1\n",
        ),
    ];
    let f = start(table(&files), ForwarderOptions::default()).await;
    let r = HttpClient::new().get(port, "calc", "/", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout")
    );
    assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
    assert_eq!(
        slow.requests()[0].header("x-envoy-expected-rq-timeout-ms"),
        Some("300")
    );
    let c1 = cluster(port, "v1", "calc.ns.svc.cluster.local");
    let text = metrics(&f).await;
    assert_eq!(
        metric(
            &text,
            &format!("envoy_cluster_upstream_rq_timeout{{envoy_cluster_name=\"{c1}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
}

/// Request ids are generated when absent and forwarded; hop-by-hop headers are stripped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_hop_by_hop_headers() {
    let v1 = Backend::start("v1").await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port())]),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n",
        ),
    ];
    let _f = start(table(&files), ForwarderOptions::default()).await;
    let c = HttpClient::new();
    c.get(
        port,
        "calc",
        "/",
        &[
            ("proxy-authorization", "x"),
            ("te", "gzip"),
            ("keep-alive", "1"),
        ],
    )
    .await;
    c.get(port, "calc", "/", &[]).await;
    let got = v1.requests();
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.header("x-request-id").expect("an id"))
        .collect();
    assert_eq!(ids[0].len(), 36);
    assert_ne!(ids[0], ids[1]);
    assert_eq!(got[0].header("x-forwarded-proto"), Some("http"));
    for h in ["proxy-authorization", "te", "keep-alive"] {
        assert_eq!(got[0].header(h), None, "{h} is hop-by-hop");
    }
}

/// HTTP/2 prior knowledge (h2c) downstream works like HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream() {
    let v1 = Backend::start("v1").await;
    let port = free_port().await;
    let files = vec![
        service_entry("calc", "ns", port, &[("v1", v1.port())]),
        virtual_service(
            "calc",
            "ns",
            "  - route:\n    - destination:\n        host: calc\n",
        ),
    ];
    let _f = start(table(&files), ForwarderOptions::default()).await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::get(format!("http://calc:{port}/h2"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    // The URI names `calc`; connect to 127.0.0.1 instead by overriding the authority.
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://127.0.0.1:{port}/h2").parse().expect("uri");
    parts.headers.insert("host", "calc".parse().expect("host"));
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(Request::from_parts(parts, body)),
    )
    .await
    .expect("in time")
    .expect("response");
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(v1.requests()[0].path, "/h2");
}

// =========================================================================== config swap

/// A new table while requests are in flight: they finish on the table they started with
/// (v1), new requests follow the new table (v2), and the listener keeps its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_swap_keeps_in_flight_requests() {
    let v1 = Backend::start_with(
        "v1",
        Behavior {
            delay: Duration::from_millis(800),
            status: 200,
        },
    )
    .await;
    let v2 = Backend::start("v2").await;
    let port = free_port().await;
    let to = |subset: &str| {
        vec![
            service_entry("calc", "ns", port, &[("v1", v1.port()), ("v2", v2.port())]),
            subsets("calc", "ns"),
            virtual_service(
                "calc",
                "ns",
                &format!("  - route:\n    - destination:\n        host: calc\n        subset: {subset}\n"),
            ),
        ]
    };
    let f = start(table(&to("v1")), ForwarderOptions::default()).await;
    let before = f.listener_addrs().await;
    let mut in_flight = Vec::new();
    for _ in 0..5 {
        in_flight.push(tokio::spawn(async move {
            HttpClient::new().get(port, "calc", "/", &[]).await
        }));
    }
    v1.wait_for(5, Duration::from_secs(5)).await;
    f.apply(table(&to("v2"))).await.expect("the swap applies");
    assert_eq!(
        f.listener_addrs().await,
        before,
        "the listener kept its socket"
    );
    let r = HttpClient::new().get(port, "calc", "/", &[]).await;
    assert_eq!((r.status, r.backend()), (200, "v2"));
    for h in in_flight {
        let r = h.await.expect("request task");
        assert_eq!((r.status, r.backend()), (200, "v1"), "{r:?}");
    }
    // A listener removed by a table stops accepting.
    f.apply(Arc::new(Table::default()))
        .await
        .expect("empty table");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the removed listener no longer accepts"
    );
}
