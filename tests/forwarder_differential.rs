//! Differential test: a real Envoy and the forwarder, both fed by ONE `serve` (in-process),
//! get the same requests; the backends' observations and the client's answers must agree.
//!
//! **Two proxies, one listener port.** The config has one listener per ServiceEntry port and
//! both proxies must bind it. They bind different loopback addresses of the same port instead:
//! Envoy sends node metadata `BIND_ADDRESS: 127.0.0.1`, the forwarder `BIND_ADDRESS:
//! 127.0.0.2` (Linux routes all of 127.0.0.0/8 to loopback). This is `serve`'s per-node view
//! (each address is its own snapshot group, translated from the same files), so both get the
//! same resources but for the listener address, and the test sends each request to
//! `<proxy address>:<port>`. Both also send `NAMESPACE: challengeistio` (as the committed
//! bootstrap does), so short host names resolve alike.
//!
//! Envoy runs on `envoy-configs/ads-delta.yaml` as committed, with the ports rewritten and
//! `BIND_ADDRESS` added; the forwarder runs in-process with its delta xDS client. After each
//! config change the test waits until `serve`'s `/debug/proxies` shows both proxies SYNCED on
//! all four types, every node group has reached its target snapshot, and the forwarder has
//! applied the table its client accepted.
//!
//! Each request carries `x-diff-id` (its number) and `x-diff-via` (`envoy` or `forwarder`);
//! every backend records what it receives in one journal. For each request the test compares:
//! the client's status, body and chosen response headers; and every copy any backend got
//! (primary and mirrors): which backend, method, path, Host (with `-shadow` for mirrors),
//! chosen headers and body. Random splits (weights 80/20, mirror 0/10/50/100 %, two mirrors)
//! are each checked against the configured fraction with binomial 4σ bounds, since two
//! random samples are not comparable request by request.
//!
//! Scenarios: the first seed's baseline and mirror steps, the second seed (httpbin), header /
//! query / method matches, prefix rewrite with authority rewrite and header operations,
//! redirect, direct response, fault abort (100 %) and delay, retries over an endpoint that
//! resets connections, weights, mirror percentages, two mirrors on one route. And the fault
//! case: `serve` killed → traffic continues through both; a changed config while it is down
//! and `serve` back on the same port → both resync.
//!
//! Without an Envoy binary the tests fail (see `common::envoy_bin`). Every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{EnvoyProcess, TempDir};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use shadowplane::app::{start, RunningServer, ServeConfig};
use shadowplane::config_source::Debounce;
use shadowplane::forwarder::proxy::{Forwarder, ForwarderOptions};
use shadowplane::forwarder::xds_client::{self, ClientStatus, XdsClientConfig};
use tokio::io::AsyncReadExt;

const ENVOY_NODE: &str = "envoy-differential";
const FORWARDER_NODE: &str = "forwarder-differential";
const ENVOY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const FORWARDER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const NAMESPACE: &str = "challengeistio";
const MOBILE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148";
const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
/// How long a config change may take to reach both proxies.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);
/// How long Envoy and the forwarder may take to come back to a restarted `serve`.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Mirrors are fire-and-forget: a batch is complete once no copy arrived for this long.
const QUIET: Duration = Duration::from_millis(400);
/// Backend request headers compared between the proxies. `x-request-id` is compared as
/// present or not (each proxy makes its own ids), `x-forwarded-for` by its number of
/// addresses (a shadow carries the proxy's own address, which Envoy and the forwarder may
/// pick differently on a host with several).
const COMPARED_REQUEST_HEADERS: &[&str] = &[
    "user-agent",
    "content-type",
    "content-length",
    "x-variant",
    "x-added",
    "x-remove-me",
    "x-forwarded-proto",
    "x-envoy-original-path",
    "x-envoy-original-host",
    "x-envoy-internal",
    "x-forwarded-for",
    "x-request-id",
];
/// Response headers compared between the proxies.
const COMPARED_RESPONSE_HEADERS: &[&str] = &[
    "location",
    "x-backend-version",
    "x-resp",
    "content-type",
    "content-length",
];

// ================================================================ recording backends

/// One request as a backend received it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    backend: String,
    method: String,
    path: String,
    host: String,
    /// The compared headers, name → value (absent ones left out).
    headers: BTreeMap<String, String>,
    body: String,
}

/// Everything every backend received, with the test's tags.
#[derive(Debug, Clone)]
struct Entry {
    via: String,
    id: String,
    seen: Seen,
}

type Journal = Arc<Mutex<Vec<Entry>>>;

/// The backends: each a real HTTP/1.1 server on 127.0.0.1 answering 200 with body `<name>`
/// and `x-backend-version: <name>`; plus one that reads a request and closes the connection.
struct Backends {
    /// Owns the servers: dropping it stops them.
    _rt: tokio::runtime::Runtime,
    journal: Journal,
    ports: BTreeMap<String, u16>,
}

impl Backends {
    fn start(names: &[&str]) -> Backends {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("backends")
            .enable_all()
            .build()
            .expect("backend runtime");
        let journal: Journal = Arc::default();
        let mut ports = BTreeMap::new();
        for name in names {
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind a backend port");
            let port = listener.local_addr().expect("backend address").port();
            ports.insert(name.to_string(), port);
            let (j, n) = (journal.clone(), name.to_string());
            rt.spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let (j, n) = (j.clone(), n.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let (j, n) = (j.clone(), n.clone());
                            async move { Ok::<_, Infallible>(record(&j, &n, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        }
        // A port where nothing listens (connections are refused); below the ephemeral range,
        // so no parallel test's bind-to-0 takes it.
        ports.insert("dead".to_string(), common::free_port());
        // The endpoint that resets: reads the request head and closes without an answer.
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the resetting backend");
        ports.insert(
            "reset".to_string(),
            listener.local_addr().expect("address").port(),
        );
        rt.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        Backends {
            _rt: rt,
            journal,
            ports,
        }
    }

    fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    fn clear(&self) {
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn entries(&self) -> Vec<Entry> {
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait until no request arrived for [`QUIET`] (at most 10 s), then return everything.
    fn quiet(&self) -> Vec<Entry> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.entries().len();
        loop {
            std::thread::sleep(QUIET);
            let now = self.entries().len();
            if now == last || Instant::now() >= deadline {
                return self.entries();
            }
            last = now;
        }
    }
}

async fn record(
    journal: &Journal,
    name: &str,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let headers = COMPARED_REQUEST_HEADERS
        .iter()
        .filter_map(|n| {
            header(n).map(|v| {
                let v = match *n {
                    "x-request-id" => "(present)".to_string(),
                    "x-forwarded-for" => format!("({} addresses)", v.split(',').count()),
                    _ => v,
                };
                (n.to_string(), v)
            })
        })
        .collect();
    let entry = Entry {
        via: header("x-diff-via").unwrap_or_default(),
        id: header("x-diff-id").unwrap_or_default(),
        seen: Seen {
            backend: name.to_string(),
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.to_string()),
            host: header("host").unwrap_or_default(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        },
    };
    journal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(entry);
    let mut r = hyper::Response::new(Full::new(Bytes::from(name.to_string())));
    r.headers_mut().insert(
        "x-backend-version",
        name.parse().expect("a valid header value"),
    );
    r.headers_mut()
        .insert("content-type", "text/plain".parse().expect("header value"));
    r
}

// ============================================================================ client

/// One answer as the client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// The compared response headers.
    headers: BTreeMap<String, String>,
    body: String,
}

/// One request of a batch.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    host: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Req {
    fn get(host: &str, path: &str) -> Req {
        Req {
            method: "GET",
            host: host.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn post(mut self, body: &str) -> Req {
        self.method = "POST";
        self.body = body.to_string();
        self.headers
            .push(("content-type".to_string(), "application/json".to_string()));
        self
    }
}

/// A blocking HTTP/1.1 client (keep-alive within one batch).
struct HttpClient {
    rt: tokio::runtime::Runtime,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    fn new() -> HttpClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let client = {
            let _guard = rt.enter();
            Client::builder(TokioExecutor::new()).build_http()
        };
        HttpClient { rt, client }
    }

    fn send(
        &self,
        to: SocketAddr,
        via: &str,
        id: &str,
        r: &Req,
    ) -> Result<(Answer, Duration), String> {
        let mut b = hyper::Request::builder()
            .method(r.method)
            .uri(format!("http://{to}{}", r.path))
            .header("host", &r.host)
            .header("x-diff-via", via)
            .header("x-diff-id", id);
        for (k, v) in &r.headers {
            b = b.header(k, v);
        }
        let req = b
            .body(Full::new(Bytes::from(r.body.clone())))
            .map_err(|e| format!("bad request: {e}"))?;
        let started = Instant::now();
        self.rt.block_on(async {
            let exchange = async {
                let resp = self
                    .client
                    .request(req)
                    .await
                    .map_err(|e| format!("{} {} via {via}: {e:?}", r.method, r.path))?;
                let status = resp.status().as_u16();
                let headers = COMPARED_RESPONSE_HEADERS
                    .iter()
                    .filter_map(|n| {
                        resp.headers().get(*n).map(|v| {
                            (
                                n.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                    })
                    .collect();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body of {} via {via}: {e}", r.path))?
                    .to_bytes();
                Ok::<_, String>(Answer {
                    status,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            };
            let answer = tokio::time::timeout(Duration::from_secs(15), exchange)
                .await
                .map_err(|_| format!("{} {} via {via}: no answer in 15 s", r.method, r.path))??;
            Ok((answer, started.elapsed()))
        })
    }
}

// ============================================================================ config

fn read(rel: &str) -> String {
    let path = common::repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with each `from` replaced (each must be there).
fn rewrite(text: &str, what: &str, pairs: &[(&str, String)]) -> String {
    let mut text = text.to_string();
    for (from, to) in pairs {
        assert!(text.contains(from), "{what} has no {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// The ports the config uses.
struct Ports {
    calc: u16,
    httpbin: u16,
    feat: u16,
}

/// The first seed: the ServiceEntry on free ports and the files of `examples/calc/<step>`.
fn seed_calc(b: &Backends, p: &Ports, step: &str) -> Vec<String> {
    let se = rewrite(
        &read("examples/calc/service-entry.yaml"),
        "examples/calc/service-entry.yaml",
        &[
            ("number: 8080", format!("number: {}", p.calc)),
            ("http: 9001", format!("http: {}", b.port("v1"))),
            ("http: 9002", format!("http: {}", b.port("v2"))),
            ("http: 9003", format!("http: {}", b.port("v3"))),
        ],
    );
    let mut docs = vec![se];
    let dir = common::repo_root().join(format!("examples/calc/{step}"));
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    names.sort();
    for path in names {
        docs.push(std::fs::read_to_string(&path).expect("example file"));
    }
    docs
}

/// The second seed (httpbin): its ServiceEntry on free ports, DestinationRule and
/// VirtualService verbatim.
fn seed_httpbin(b: &Backends, p: &Ports) -> Vec<String> {
    let se = rewrite(
        &read("examples/httpbin/service-entry.yaml"),
        "examples/httpbin/service-entry.yaml",
        &[
            ("number: 8000", format!("number: {}", p.httpbin)),
            ("http: 9101", format!("http: {}", b.port("httpbin-v1"))),
            ("http: 9102", format!("http: {}", b.port("httpbin-v2"))),
        ],
    );
    vec![
        se,
        read("examples/httpbin/destination-rule.yaml"),
        read("examples/httpbin/virtual-service.yaml"),
    ]
}

/// Service `feat` (subsets v1–v3 on the v1–v3 backends) and `flaky` (an endpoint that
/// resets and a good one), both on port `p.feat`, and one VirtualService with a route per
/// feature.
fn features(b: &Backends, p: &Ports) -> Vec<String> {
    let service_entries = format!(
        "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: feat
  namespace: challengeistio
spec:
  hosts:
  - feat.challengeistio.svc.cluster.local
  location: MESH_INTERNAL
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      http: {v1}
    labels:
      version: v1
  - address: 127.0.0.1
    ports:
      http: {v2}
    labels:
      version: v2
  - address: 127.0.0.1
    ports:
      http: {v3}
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: flaky
  namespace: challengeistio
spec:
  hosts:
  - flaky.challengeistio.svc.cluster.local
  location: MESH_INTERNAL
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      http: {reset}
  - address: 127.0.0.1
    ports:
      http: {good}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: dead
  namespace: challengeistio
spec:
  hosts:
  - dead.challengeistio.svc.cluster.local
  location: MESH_INTERNAL
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      http: {dead}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: broken
  namespace: challengeistio
spec:
  hosts:
  - broken.challengeistio.svc.cluster.local
  location: MESH_INTERNAL
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      http: {reset}
",
        port = p.feat,
        v1 = b.port("v1"),
        v2 = b.port("v2"),
        v3 = b.port("v3"),
        reset = b.port("reset"),
        good = b.port("good"),
        dead = b.port("dead"),
    );
    let rule = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: feat
  namespace: challengeistio
spec:
  host: feat
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
";
    let mut vs = String::from(
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: feat
  namespace: challengeistio
spec:
  hosts:
  - feat
  http:
  - name: by-header
    match:
    - headers:
        x-variant:
          exact: two
    route:
    - destination: {host: feat, subset: v2}
  - name: by-query
    match:
    - queryParams:
        variant:
          exact: three
    route:
    - destination: {host: feat, subset: v3}
  - name: by-method
    match:
    - method:
        exact: POST
      uri:
        prefix: /submit
    route:
    - destination: {host: feat, subset: v2}
  - name: rewrite
    match:
    - uri:
        prefix: /old/
    rewrite:
      uri: /new/
      authority: rewritten.example
    headers:
      request:
        set:
          x-added: 'yes'
        remove:
        - x-remove-me
      response:
        set:
          x-resp: set
    route:
    - destination: {host: feat, subset: v1}
  - name: redirect
    match:
    - uri:
        exact: /moved
    redirect:
      uri: /landing
      authority: other.example
      redirectCode: 301
  - name: direct
    match:
    - uri:
        prefix: /static
    directResponse:
      status: 418
      body:
        string: short and stout
  - name: abort
    match:
    - uri:
        prefix: /abort
    fault:
      abort:
        httpStatus: 503
        percentage:
          value: 100
    route:
    - destination: {host: feat, subset: v1}
  - name: delay
    match:
    - uri:
        prefix: /delay
    fault:
      delay:
        fixedDelay: 300ms
        percentage:
          value: 100
    route:
    - destination: {host: feat, subset: v1}
  - name: retry
    match:
    - uri:
        prefix: /retry
    retries:
      attempts: 3
      retryOn: reset,connect-failure
    route:
    - destination: {host: flaky}
  - name: down
    match:
    - uri:
        prefix: /down
    route:
    - destination: {host: feat, subset: v9}
  - name: dead-once
    match:
    - uri:
        prefix: /dead-once
    retries:
      attempts: 0
    route:
    - destination: {host: dead}
  - name: dead
    match:
    - uri:
        prefix: /dead
    route:
    - destination: {host: dead}
  - name: broken-once
    match:
    - uri:
        prefix: /broken-once
    retries:
      attempts: 0
    route:
    - destination: {host: broken}
  - name: broken-retried
    match:
    - uri:
        prefix: /broken-retried
    retries:
      attempts: 2
      retryOn: reset
    route:
    - destination: {host: broken}
  - name: broken
    match:
    - uri:
        prefix: /broken
    route:
    - destination: {host: broken}
  - name: weights
    match:
    - uri:
        prefix: /weights
    route:
    - destination: {host: feat, subset: v1}
      weight: 80
    - destination: {host: feat, subset: v2}
      weight: 20
",
    );
    for pct in [0, 10, 50, 100] {
        vs.push_str(&format!(
            "  - name: mirror-{pct}
    match:
    - uri:
        prefix: /m{pct}/
    route:
    - destination: {{host: feat, subset: v1}}
    mirror: {{host: feat, subset: v3}}
    mirrorPercentage:
      value: {pct}
"
        ));
    }
    vs.push_str(
        "  - name: two-mirrors
    match:
    - uri:
        prefix: /multi/
    route:
    - destination: {host: feat, subset: v1}
    mirrors:
    - destination: {host: feat, subset: v2}
      percentage:
        value: 100
    - destination: {host: feat, subset: v3}
      percentage:
        value: 50
  - name: default
    route:
    - destination: {host: feat, subset: v1}
",
    );
    vec![service_entries, rule.to_string(), vs]
}

/// The watched folder: the whole config is one multi-document file replaced with a rename,
/// so each change is one reading.
struct ConfigDir {
    root: TempDir,
}

impl ConfigDir {
    fn new() -> ConfigDir {
        let root = TempDir::new("differential");
        for sub in ["config", "staging"] {
            std::fs::create_dir_all(root.path().join(sub)).expect("config folders");
        }
        ConfigDir { root }
    }

    fn path(&self) -> PathBuf {
        self.root.path().join("config")
    }

    fn set(&self, docs: &[String]) {
        let text = docs
            .iter()
            .map(|d| d.trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n---\n");
        let staged = self.root.path().join("staging/mesh.yaml");
        std::fs::write(&staged, text).expect("write the config");
        std::fs::rename(&staged, self.path().join("mesh.yaml")).expect("move the config in place");
    }
}

// ============================================================================== rig

/// The committed ADS delta bootstrap for this test: xDS port, admin port 0, the node id, and
/// node metadata `BIND_ADDRESS` added.
fn envoy_bootstrap(xds_port: u16) -> String {
    let path = common::repo_root().join("envoy-configs/ads-delta.yaml");
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).expect("read ads-delta.yaml"))
            .expect("ads-delta.yaml is YAML");
    doc["admin"]["address"]["socket_address"]["port_value"] = 0.into();
    doc["node"]["id"] = ENVOY_NODE.into();
    let meta = doc["node"]["metadata"]
        .as_mapping_mut()
        .expect("ads-delta.yaml has node metadata");
    assert_eq!(
        meta.get("NAMESPACE").and_then(|v| v.as_str()),
        Some(NAMESPACE),
        "the committed bootstrap's namespace"
    );
    meta.insert("BIND_ADDRESS".into(), ENVOY_IP.to_string().into());
    let clusters = doc["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("static clusters");
    let xds = clusters
        .iter_mut()
        .find(|c| c["name"] == "xds_cluster")
        .expect("xds_cluster");
    let ep = &mut xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(
        ep["port_value"].as_u64(),
        Some(18000),
        "serve's default port"
    );
    ep["port_value"] = u64::from(xds_port).into();
    serde_yaml::to_string(&doc).expect("YAML")
}

fn serve_config(dir: &Path, xds_listen: SocketAddr) -> ServeConfig {
    let mut cfg = ServeConfig::new(vec![dir.to_path_buf()]);
    cfg.xds_listen = xds_listen;
    cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
    };
    cfg.phase_timeout = Duration::from_secs(1);
    cfg.drain_timeout = Duration::from_secs(1);
    cfg
}

fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// What one batch observed through one proxy: per request id, the answer and every copy.
#[derive(Debug, Default)]
struct Observed {
    answers: BTreeMap<String, Answer>,
    seen: BTreeMap<String, Vec<Seen>>,
    elapsed: BTreeMap<String, Duration>,
}

impl Observed {
    fn count(&self, backend: &str) -> usize {
        self.seen
            .values()
            .flatten()
            .filter(|s| s.backend == backend)
            .count()
    }
}

struct Rig {
    rt: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    xds_addr: SocketAddr,
    config: ConfigDir,
    backends: Backends,
    ports: Ports,
    envoy: EnvoyProcess,
    forwarder: Arc<Forwarder>,
    client_status: Arc<ClientStatus>,
    stop_client: Option<tokio::sync::oneshot::Sender<()>>,
    /// serve's config generation before the last change.
    generation: u64,
    next_id: u64,
}

impl Rig {
    fn start(first: impl FnOnce(&Backends, &Ports) -> Vec<String>) -> Rig {
        let backends = Backends::start(&["v1", "v2", "v3", "httpbin-v1", "httpbin-v2", "good"]);
        let ports = Ports {
            calc: common::free_port(),
            httpbin: common::free_port(),
            feat: common::free_port(),
        };
        let config = ConfigDir::new();
        config.set(&first(&backends, &ports));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("serve-and-forwarder")
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt
            .block_on(start(serve_config(
                &config.path(),
                "127.0.0.1:0".parse().expect("addr"),
            )))
            .expect("serve starts");
        let xds_addr = server.xds_addr();

        // The forwarder, in-process, on its own loopback address.
        let forwarder = Arc::new(Forwarder::new(ForwarderOptions::default()));
        let client_status = Arc::new(ClientStatus::default());
        let (stop_client, stopped) = tokio::sync::oneshot::channel::<()>();
        {
            let mut cfg = XdsClientConfig::new(xds_addr.to_string(), FORWARDER_NODE);
            cfg.node_metadata
                .insert("NAMESPACE".into(), NAMESPACE.into());
            cfg.node_metadata
                .insert("BIND_ADDRESS".into(), FORWARDER_IP.to_string());
            cfg.max_backoff = Duration::from_millis(500);
            let (f, st) = (forwarder.clone(), client_status.clone());
            rt.spawn(async move {
                let sink = f.table_sink();
                let _ = xds_client::run_with_status(cfg, st, move |t| sink.send(t), async {
                    let _ = stopped.await;
                })
                .await;
            });
        }
        let envoy = EnvoyProcess::start(&envoy_bootstrap(xds_addr.port()));
        let mut rig = Rig {
            rt,
            server: Some(server),
            xds_addr,
            config,
            backends,
            ports,
            envoy,
            forwarder,
            client_status,
            stop_client: Some(stop_client),
            generation: 0,
            next_id: 0,
        };
        rig.wait_synced();
        rig
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("serve is running")
    }

    fn admin_json(&self, path: &str) -> Result<Value, String> {
        let (status, body) =
            common::simple_get(self.server().admin_addr(), path, Duration::from_secs(5))?;
        if status != 200 {
            return Err(format!("{path}: {status} {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("{path}: {e}"))
    }

    /// Replace the config and wait until both proxies serve it.
    fn set_config(&mut self, docs: Vec<String>) {
        self.generation = self
            .admin_json("/debug/config")
            .ok()
            .and_then(|c| c["generation"].as_u64())
            .unwrap_or(0);
        self.config.set(&docs);
        self.wait_synced();
    }

    /// Until: serve has read a newer generation without errors, each node group has
    /// reached its target, both proxies are SYNCED on the four types, and the forwarder
    /// applied the table its client accepted.
    fn wait_synced(&mut self) {
        let generation = self.generation;
        eventually("both proxies synced with serve", SYNC_TIMEOUT, || {
            let cfg = self.admin_json("/debug/config")?;
            let g = cfg["generation"].as_u64().unwrap_or(0);
            if g <= generation {
                return Err(format!(
                    "serve at generation {g}, waiting for > {generation}: {}",
                    cfg["status"]
                ));
            }
            if !cfg["rejected"].is_null() {
                return Err(format!("the config was rejected: {}", cfg["rejected"]));
            }
            let groups = cfg["groups"].as_object().cloned().unwrap_or_default();
            for (name, group) in &groups {
                if group["version"] != group["target_version"] {
                    return Err(format!("group {name} in phase {}", group["phase"]));
                }
            }
            let proxies = self.admin_json("/debug/proxies")?;
            for node in [ENVOY_NODE, FORWARDER_NODE] {
                let streams: Vec<&Value> = proxies["proxies"]
                    .as_array()
                    .map(|ps| ps.iter().filter(|p| p["node_id"] == node).collect())
                    .unwrap_or_default();
                if streams.is_empty() {
                    return Err(format!("{node} not connected"));
                }
                for s in streams {
                    let types = s["types"].as_array().cloned().unwrap_or_default();
                    if types.len() != 4 || types.iter().any(|t| t["sync"] != "SYNCED") {
                        let sync: Vec<String> = types
                            .iter()
                            .map(|t| format!("{}={}", t["type_url"], t["sync"]))
                            .collect();
                        return Err(format!("{node}: {}", sync.join(", ")));
                    }
                }
            }
            let accepted = self.client_status.view().versions;
            let applied = self.forwarder.table().versions.clone();
            if accepted != applied {
                return Err(format!(
                    "the forwarder applies {accepted:?}, serves {applied:?}"
                ));
            }
            Ok(())
        });
    }

    fn addr(&self, via: &str, port: u16) -> SocketAddr {
        let ip = if via == "envoy" {
            ENVOY_IP
        } else {
            FORWARDER_IP
        };
        SocketAddr::new(IpAddr::V4(ip), port)
    }

    /// Send `reqs` through Envoy, then through the forwarder, each to `port`; wait for the
    /// mirrors; what each proxy's requests caused.
    fn run(&mut self, port: u16, reqs: &[Req]) -> (Observed, Observed) {
        self.backends.clear();
        let base = self.next_id;
        self.next_id += reqs.len() as u64;
        let mut out = Vec::new();
        for via in ["envoy", "forwarder"] {
            let client = HttpClient::new();
            let to = self.addr(via, port);
            let mut o = Observed::default();
            for (i, r) in reqs.iter().enumerate() {
                // Zero-padded: answers sort in sending order.
                let id = format!("{:08}", base + i as u64);
                let (answer, elapsed) = client
                    .send(to, via, &id, r)
                    .unwrap_or_else(|e| panic!("{e}\n{}", self.context()));
                o.answers.insert(id.clone(), answer);
                o.elapsed.insert(id, elapsed);
            }
            out.push(o);
        }
        let entries = self.backends.quiet();
        for (via, o) in ["envoy", "forwarder"].iter().zip(out.iter_mut()) {
            for e in entries.iter().filter(|e| e.via == *via) {
                o.seen.entry(e.id.clone()).or_default().push(e.seen.clone());
            }
            for v in o.seen.values_mut() {
                v.sort();
            }
        }
        let forwarder = out.pop().expect("two");
        let envoy = out.pop().expect("two");
        (envoy, forwarder)
    }

    /// `run`, then: each request's answer and copies are the same through both proxies.
    fn same(&mut self, what: &str, port: u16, reqs: &[Req]) -> (Observed, Observed) {
        let (e, f) = self.run(port, reqs);
        for (id, ea) in &e.answers {
            let fa = &f.answers[id];
            assert_eq!(
                ea, fa,
                "{what}: request {id} answered differently (left: envoy, right: forwarder)"
            );
            let empty = Vec::new();
            let es = e.seen.get(id).unwrap_or(&empty);
            let fs = f.seen.get(id).unwrap_or(&empty);
            assert_eq!(es, fs, "{what}: request {id} reached the backends differently (left: envoy, right: forwarder)");
        }
        (e, f)
    }

    fn context(&self) -> String {
        let stderr = self.envoy.stderr();
        let lines: Vec<&str> = stderr.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "forwarder client: {:?}\n--- envoy stderr (tail) ---\n{}",
            self.client_status.view(),
            lines[from..].join("\n")
        )
    }

    fn stop_serve(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown()).expect("serve stops");
        }
    }

    /// A new `serve` on the same xDS address (retrying while the port is still held).
    fn restart_serve(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let server = loop {
            match self
                .rt
                .block_on(start(serve_config(&self.config.path(), self.xds_addr)))
            {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("serve not restarted yet: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("serve does not restart on {}: {e}", self.xds_addr),
            }
        };
        self.server = Some(server);
        self.generation = 0;
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_client.take() {
            let _ = stop.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = self.rt.block_on(s.shutdown());
        }
        let f = self.forwarder.clone();
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), f.shutdown()).await });
    }
}

// ========================================================================= checks

/// `k` successes out of `n` are within 4σ of the binomial mean for fraction `p`.
fn within_binomial(what: &str, k: usize, n: usize, p: f64) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let (lo, hi) = (mean - 4.0 * sigma, mean + 4.0 * sigma);
    assert!(
        (k as f64) >= lo && (k as f64) <= hi,
        "{what}: {k} of {n}, expected {mean:.1} ± 4σ = [{lo:.1}, {hi:.1}]"
    );
}

fn calc(path: &str, agent: &str) -> Req {
    Req::get("calcbackendsvc", path).header("user-agent", agent)
}

fn feat(path: &str) -> Req {
    Req::get("feat", path).header("user-agent", "differential")
}

/// Every request of `o` was answered by `backend` with 200.
fn all_answered_by(what: &str, o: &Observed, backend: &str) {
    for (id, a) in &o.answers {
        assert_eq!(
            (
                a.status,
                a.headers.get("x-backend-version").map(String::as_str)
            ),
            (200, Some(backend)),
            "{what}: request {id}: {a:?}"
        );
    }
}

// ========================================================================== tests

#[test]
fn envoy_and_the_forwarder_agree_on_the_seeds_and_every_route_feature() {
    let mut rig = Rig::start(|b, p| seed_calc(b, p, "baseline"));
    let calc_port = rig.ports.calc;

    // --- The first seed, baseline: Mobile → v2, the rest → v1, no copies.
    let reqs: Vec<Req> = (0..4)
        .flat_map(|i| {
            [
                calc(&format!("/b/{i}"), MOBILE),
                calc(&format!("/b/d{i}"), DESKTOP),
            ]
        })
        .collect();
    let (e, _) = rig.same("seed 1 baseline", calc_port, &reqs);
    assert_eq!(
        (e.count("v1"), e.count("v2"), e.count("v3")),
        (4, 4, 0),
        "{e:?}"
    );

    // --- The first seed, mirror step; with the second seed (httpbin) beside it.
    let docs = [
        seed_calc(&rig.backends, &rig.ports, "mirror"),
        seed_httpbin(&rig.backends, &rig.ports),
    ]
    .concat();
    rig.set_config(docs);
    let reqs: Vec<Req> = (0..4)
        .flat_map(|i| {
            [
                calc(&format!("/m/{i}"), MOBILE),
                calc(&format!("/m/d{i}?n=1{i}"), DESKTOP),
            ]
        })
        .chain([calc("/m/post", DESKTOP).post("{\"n\":42}")])
        .collect();
    let (e, _) = rig.same("seed 1 mirror", calc_port, &reqs);
    assert_eq!(
        (e.count("v1"), e.count("v2"), e.count("v3")),
        (5, 4, 5),
        "{e:?}"
    );
    assert!(
        e.seen
            .values()
            .flatten()
            .filter(|s| s.backend == "v3")
            .all(|s| s.host == "calcbackendsvc-shadow"),
        "{e:?}"
    );

    let httpbin_port = rig.ports.httpbin;
    let reqs: Vec<Req> = (0..4)
        .map(|i| {
            Req::get("httpbin.default", &format!("/headers?i={i}")).header("user-agent", "curl/8")
        })
        .chain([Req::get("httpbin.default", "/anything").post("{\"a\":1}")])
        .collect();
    let (e, _) = rig.same("seed 2 httpbin", httpbin_port, &reqs);
    assert_eq!(
        (e.count("httpbin-v1"), e.count("httpbin-v2")),
        (5, 5),
        "{e:?}"
    );
    assert!(
        e.seen
            .values()
            .flatten()
            .filter(|s| s.backend == "httpbin-v2")
            .all(|s| s.host == "httpbin.default-shadow"),
        "{e:?}"
    );

    // --- Route features, on a third service.
    let docs = [
        seed_calc(&rig.backends, &rig.ports, "mirror"),
        features(&rig.backends, &rig.ports),
    ]
    .concat();
    rig.set_config(docs);
    let port = rig.ports.feat;

    // Matches: header, query parameter, method (with a body), the default route.
    let reqs = vec![
        feat("/x").header("x-variant", "two"),
        feat("/x?variant=three"),
        feat("/x?variant=four"),
        feat("/submit/1").post("{\"n\":1}"),
        feat("/submit/1"),
        feat("/anything"),
    ];
    let (e, _) = rig.same("matches", port, &reqs);
    let backends: Vec<&str> = e
        .answers
        .values()
        .map(|a| a.headers["x-backend-version"].as_str())
        .collect();
    assert_eq!(backends, ["v2", "v3", "v1", "v2", "v1", "v1"], "{e:?}");

    // Rewrite: prefix and authority, request header set/remove, response header set.
    let reqs = vec![
        feat("/old/path?q=1").header("x-remove-me", "please"),
        feat("/old/").header("x-added", "no"),
    ];
    let (e, _) = rig.same("rewrite", port, &reqs);
    let seen: Vec<&Seen> = e.seen.values().flatten().collect();
    assert_eq!(seen.len(), 2, "{e:?}");
    assert_eq!(
        (seen[0].path.as_str(), seen[0].host.as_str()),
        ("/new/path?q=1", "rewritten.example")
    );
    assert_eq!(
        seen[0].headers.get("x-added").map(String::as_str),
        Some("yes")
    );
    assert!(!seen[0].headers.contains_key("x-remove-me"), "{seen:?}");
    assert!(e
        .answers
        .values()
        .all(|a| a.headers.get("x-resp").map(String::as_str) == Some("set")));

    // Local answers, no backend: redirect, direct response, fault abort; no virtual host
    // (404), a subset no DestinationRule defines (503, no cluster); and Envoy's upstream
    // failure texts: connection refused with Istio's default retries (retried) and without
    // (attempts 0), an endpoint that closes every connection without and with `retryOn: reset`.
    let reqs = vec![
        feat("/moved"),
        feat("/moved?keep=1"),
        feat("/static/x"),
        feat("/abort/1"),
        feat("/abort/2"),
        Req::get("nobody.example", "/"),
        feat("/down/1"),
        feat("/dead/1"),
        feat("/dead-once/1"),
        feat("/broken/1"),
        feat("/broken-once/1"),
        feat("/broken-retried/1"),
    ];
    let (e, _) = rig.same("local answers", port, &reqs);
    let statuses: Vec<u16> = e.answers.values().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [301, 301, 418, 503, 503, 404, 503, 503, 503, 503, 503, 503],
        "{e:?}"
    );
    let bodies: Vec<&str> = e.answers.values().map(|a| a.body.as_str()).collect();
    assert!(
        bodies[7].contains("retried and the latest reset reason: remote connection failure"),
        "{bodies:?}"
    );
    assert!(
        bodies[8].ends_with(". reset reason: remote connection failure"),
        "{bodies:?}"
    );
    assert!(
        bodies[10].ends_with(". reset reason: connection termination"),
        "{bodies:?}"
    );
    assert!(
        bodies[11].contains("retried and the latest reset reason: connection termination"),
        "{bodies:?}"
    );
    assert!(e.seen.is_empty(), "no backend is involved: {e:?}");
    let first = e.answers.values().next().expect("an answer");
    assert_eq!(
        first.headers.get("location").map(String::as_str),
        Some("http://other.example/landing")
    );

    // Fault delay: both hold the request ≥ 300 ms, then forward it.
    let (e, f) = rig.same("fault delay", port, &[feat("/delay/1"), feat("/delay/2")]);
    for (via, o) in [("envoy", &e), ("forwarder", &f)] {
        for (id, d) in &o.elapsed {
            assert!(
                *d >= Duration::from_millis(290),
                "{via}: request {id} took {d:?}"
            );
        }
        all_answered_by("fault delay", o, "v1");
    }

    // Retries: one endpoint resets every connection, the other answers; every request ends
    // on the good one with 200, once.
    let reqs: Vec<Req> = (0..12).map(|i| feat(&format!("/retry/{i}"))).collect();
    let (e, f) = rig.same("retries", port, &reqs);
    all_answered_by("retries through envoy", &e, "good");
    all_answered_by("retries through the forwarder", &f, "good");
    assert_eq!(e.count("good"), 12, "{e:?}");

    // Weights 80/20: each proxy's split is within 4σ of 20 % to v2.
    let n = 200;
    let reqs: Vec<Req> = (0..n).map(|i| feat(&format!("/weights/{i}"))).collect();
    let (e, f) = rig.run(port, &reqs);
    for (via, o) in [("envoy", &e), ("forwarder", &f)] {
        let v2 = o
            .answers
            .values()
            .filter(|a| a.headers.get("x-backend-version").map(String::as_str) == Some("v2"))
            .count();
        let v1 = o
            .answers
            .values()
            .filter(|a| a.headers.get("x-backend-version").map(String::as_str) == Some("v1"))
            .count();
        assert_eq!(v1 + v2, n, "{via}: every request answered by v1 or v2");
        within_binomial(&format!("{via}: weight 20 to v2"), v2, n, 0.2);
    }

    // Mirror percentages 0/10/50/100: primary always v1; v3 gets copies (Host feat-shadow,
    // same path and body) of a binomial share.
    for (pct, n) in [(0usize, 60usize), (10, 200), (50, 200), (100, 60)] {
        let reqs: Vec<Req> = (0..n).map(|i| feat(&format!("/m{pct}/{i}"))).collect();
        let (e, f) = rig.run(port, &reqs);
        for (via, o) in [("envoy", &e), ("forwarder", &f)] {
            let what = format!("{via}: mirror {pct} %");
            all_answered_by(&what, o, "v1");
            assert_eq!(o.count("v1"), n, "{what}: one primary each");
            for (id, seen) in &o.seen {
                let primary = seen.iter().find(|s| s.backend == "v1").expect("a primary");
                for copy in seen.iter().filter(|s| s.backend == "v3") {
                    assert_eq!(copy.host, "feat-shadow", "{what}: request {id}");
                    assert_eq!(
                        (&copy.method, &copy.path, &copy.body),
                        (&primary.method, &primary.path, &primary.body)
                    );
                }
            }
            let copies = o.count("v3");
            match pct {
                0 => assert_eq!(copies, 0, "{what}"),
                100 => assert_eq!(copies, n, "{what}"),
                _ => within_binomial(&what, copies, n, pct as f64 / 100.0),
            }
        }
    }

    // Two mirrors on one route: v2 gets every request, v3 half of them.
    let n = 200;
    let reqs: Vec<Req> = (0..n).map(|i| feat(&format!("/multi/{i}"))).collect();
    let (e, f) = rig.run(port, &reqs);
    for (via, o) in [("envoy", &e), ("forwarder", &f)] {
        let what = format!("{via}: two mirrors");
        all_answered_by(&what, o, "v1");
        assert_eq!(o.count("v2"), n, "{what}: the 100 % mirror");
        assert!(
            o.seen
                .values()
                .flatten()
                .filter(|s| s.backend != "v1")
                .all(|s| s.host == "feat-shadow"),
            "{what}"
        );
        within_binomial(&format!("{what}: the 50 % mirror"), o.count("v3"), n, 0.5);
    }
}

#[test]
fn traffic_continues_without_the_control_plane_and_both_resync_when_it_returns() {
    let mut rig = Rig::start(|b, p| seed_calc(b, p, "mirror"));
    let port = rig.ports.calc;
    let traffic = |rig: &mut Rig, label: &str| -> (Observed, Observed) {
        let reqs: Vec<Req> = (0..3)
            .flat_map(|i| {
                [
                    calc(&format!("/{label}/{i}"), MOBILE),
                    calc(&format!("/{label}/d{i}"), DESKTOP),
                ]
            })
            .collect();
        rig.same(label, port, &reqs)
    };
    let (e, _) = traffic(&mut rig, "before");
    assert_eq!((e.count("v1"), e.count("v2"), e.count("v3")), (3, 3, 3));

    // serve goes away: both keep serving the last config, mirror included.
    rig.stop_serve();
    let f = rig.forwarder.clone();
    eventually(
        "the forwarder notices that serve is gone",
        Duration::from_secs(10),
        || {
            if rig.client_status.view().connected {
                Err("still connected".to_string())
            } else {
                Ok(())
            }
        },
    );
    assert!(f.is_ready());
    let (e, _) = traffic(&mut rig, "while-down");
    assert_eq!((e.count("v1"), e.count("v2"), e.count("v3")), (3, 3, 3));

    // The config changes while serve is down (Mobile → v3, no mirror); serve comes back on
    // the same port: both reconnect and follow.
    let mut docs = seed_calc(&rig.backends, &rig.ports, "reset");
    let vs = docs
        .iter_mut()
        .find(|d| d.contains("kind: VirtualService"))
        .expect("the reset VirtualService");
    *vs = vs.replacen("subset: v2", "subset: v3", 1);
    let rule = docs
        .iter_mut()
        .find(|d| d.contains("kind: DestinationRule"))
        .expect("the reset DestinationRule");
    if !rule.contains("name: v3") {
        rule.push_str("  - name: v3\n    labels:\n      version: v3\n");
    }
    rig.config.set(&docs);
    rig.restart_serve();
    let started = Instant::now();
    eventually("both proxies resync", RESYNC_TIMEOUT, || {
        let (e, f) = rig.run(port, &[calc("/probe", MOBILE)]);
        for o in [&e, &f] {
            let b = o
                .answers
                .values()
                .next()
                .and_then(|a| a.headers.get("x-backend-version").cloned());
            if b.as_deref() != Some("v3") {
                return Err(format!("a Mobile request went to {b:?}"));
            }
        }
        Ok(())
    });
    rig.wait_synced();
    eprintln!("resynced {:?} after serve restarted", started.elapsed());
    let (e, _) = traffic(&mut rig, "after");
    assert_eq!(
        (e.count("v1"), e.count("v2"), e.count("v3")),
        (3, 0, 3),
        "Mobile → v3, no copies: {e:?}"
    );
    let view = rig.client_status.view();
    assert!(view.connects >= 2 && view.connected, "{view:?}");
}
