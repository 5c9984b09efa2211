//! `serve` end to end, in-process: a watched temp config folder, the xDS server on a free
//! port, a real gRPC ADS client, and the admin pages over HTTP.
//!
//! Every wait is bounded; a test fails (never hangs) when a push does not come.
//! The last tests put a real Envoy (ADS, state of the world and delta) in front of it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use shadowplane::app::{start, RunningServer, ServeConfig, ServeError};
use shadowplane::config_source::Debounce;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const HOST: &str = "calc.demo.svc.cluster.local";

const SERVICE_ENTRY: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: calc
  namespace: demo
spec:
  hosts:
  - calc.demo.svc.cluster.local
  location: MESH_INTERNAL
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      http: 9001
    labels:
      version: v1
  - address: 127.0.0.1
    ports:
      http: 9002
    labels:
      version: v2
";

const VIRTUAL_SERVICE: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: calc-vs
  namespace: demo
spec:
  hosts:
  - calc
  http:
  - route:
    - destination:
        host: calc
        subset: v1
    mirror:
      host: calc
      subset: v2
";

fn destination_rule(subsets: &[&str]) -> String {
    let mut s = String::from(
        "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: calc-dr
  namespace: demo
spec:
  host: calc
  subsets:
",
    );
    for name in subsets {
        s.push_str(&format!(
            "  - name: {name}\n    labels:\n      version: {name}\n"
        ));
    }
    s
}

/// The DestinationRule with a typo on line 10 (`labls`), which `validate` reports as an
/// unknown-field error.
const BROKEN_DESTINATION_RULE: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: calc-dr
  namespace: demo
spec:
  host: calc
  subsets:
  - name: v1
    labls:
      version: v1
";

fn write_config(dir: &Path, subsets: &[&str]) {
    std::fs::write(dir.join("service-entry.yaml"), SERVICE_ENTRY).expect("write");
    std::fs::write(dir.join("virtual-service.yaml"), VIRTUAL_SERVICE).expect("write");
    std::fs::write(dir.join("destination-rule.yaml"), destination_rule(subsets)).expect("write");
}

/// Replace a file the way editors do: write a temp file, rename it over the original.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp~");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

fn cluster_name(subset: &str) -> String {
    format!("outbound|8080|{subset}|{HOST}")
}

async fn start_server(dir: &Path) -> RunningServer {
    let mut cfg = ServeConfig::new(vec![dir.to_path_buf()]);
    cfg.xds_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
    };
    cfg.phase_timeout = Duration::from_secs(1);
    cfg.drain_timeout = Duration::from_secs(2);
    tokio::time::timeout(Duration::from_secs(10), start(cfg))
        .await
        .expect("start within 10s")
        .expect("start")
}

// ===== a minimal ADS client =====

struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    node: Node,
}

impl Ads {
    async fn connect(addr: SocketAddr, node_id: &str, metadata: &[(&str, &str)]) -> Ads {
        let mut client = tokio::time::timeout(
            Duration::from_secs(5),
            AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")),
        )
        .await
        .expect("connect within 5s")
        .expect("connect");
        let (tx, rx) = mpsc::channel(16);
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            client.stream_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("open stream within 5s")
        .expect("open stream");
        let node = Node {
            id: node_id.to_string(),
            cluster: "test".to_string(),
            metadata: Some(Struct {
                fields: metadata
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            Value {
                                kind: Some(Kind::StringValue(v.to_string())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        Ads {
            tx,
            rx: response.into_inner(),
            node,
        }
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.expect("stream open");
    }

    /// Subscribe (wildcard for an empty `names`).
    async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.send(DiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: type_url.to_string(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn nack(&self, resp: &DiscoveryResponse, names: &[&str], message: &str) {
        self.send(DiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: resp.type_url.clone(),
            version_info: String::new(),
            response_nonce: resp.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            error_detail: Some(Status {
                code: 3,
                message: message.to_string(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await;
    }

    /// The next response of `type_url` within `within`, or `None`. Other types are skipped.
    async fn next_of(&mut self, type_url: &str, within: Duration) -> Option<DiscoveryResponse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.rx.next())
                .await
                .ok()?;
            let resp = next.expect("stream ended").expect("stream error");
            if resp.type_url == type_url {
                return Some(resp);
            }
        }
    }

    async fn expect(&mut self, type_url: &str) -> DiscoveryResponse {
        self.next_of(type_url, Duration::from_secs(2))
            .await
            .unwrap_or_else(|| panic!("no {type_url} response within 2s"))
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn cluster_names(resp: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = resp
        .resources
        .iter()
        .map(|any| Cluster::decode(any.value.as_slice()).expect("cluster").name)
        .collect();
    names.sort();
    names
}

// ===== a minimal HTTP/1.1 GET =====

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect admin");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .expect("admin answers within 5s");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// Every sample line of an OpenMetrics/Prometheus text body: `name{labels} value`.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "bad labels in {line:?}");
                (n.to_string(), l.trim_end_matches('}').to_string())
            }
            None => (series.to_string(), String::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push((name, labels, value));
    }
    samples
}

fn metric(samples: &[(String, String, f64)], name: &str, labels: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|(_, _, v)| *v)
}

// ===== tests =====

#[tokio::test]
async fn changes_are_pushed_broken_files_keep_the_last_good_config_and_fixes_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["v1", "v2"]);
    let server = start_server(dir.path()).await;

    let (status, body) = get(server.admin_addr(), "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    // Initial config.
    let mut ads = Ads::connect(server.xds_addr(), "proxy-1", &[]).await;
    ads.subscribe(CLUSTER, &[]).await;
    let first = ads.expect(CLUSTER).await;
    assert_eq!(
        cluster_names(&first),
        sorted(vec![
            cluster_name(""),
            cluster_name("v1"),
            cluster_name("v2")
        ])
    );
    ads.ack(&first, &[]).await;

    // A changed file is pushed.
    replace(
        &dir.path().join("destination-rule.yaml"),
        &destination_rule(&["v1", "v2", "v3"]),
    );
    let second = ads.expect(CLUSTER).await;
    assert_ne!(second.version_info, first.version_info);
    assert!(
        cluster_names(&second).contains(&cluster_name("v3")),
        "{:?}",
        cluster_names(&second)
    );
    ads.ack(&second, &[]).await;

    // A broken file: nothing is pushed, the error is reported, the server stays ready.
    replace(
        &dir.path().join("destination-rule.yaml"),
        BROKEN_DESTINATION_RULE,
    );
    let (status, errors) = wait_for_page(server.admin_addr(), "/debug/errors", |b| {
        b.contains("config rejected")
    })
    .await;
    assert_eq!(status, 200);
    assert!(
        errors.contains("destination-rule.yaml:10:"),
        "no file:line in /debug/errors:\n{errors}"
    );
    assert!(errors.contains("labls"), "{errors}");
    assert!(
        ads.next_of(CLUSTER, Duration::from_millis(500))
            .await
            .is_none(),
        "a broken config must not be pushed"
    );
    let (_, metrics) = get(server.admin_addr(), "/metrics").await;
    let samples = parse_metrics(&metrics);
    assert_eq!(
        metric(&samples, "shadowplane_config_errors", ""),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &samples,
            "shadowplane_config_reloads_total",
            "result=\"rejected\""
        ),
        Some(1.0),
        "{metrics}"
    );
    let (status, _) = get(server.admin_addr(), "/readyz").await;
    assert_eq!(status, 200, "the last good config is still served");

    // A proxy connecting now gets the last good config.
    let mut late = Ads::connect(server.xds_addr(), "proxy-2", &[]).await;
    late.subscribe(CLUSTER, &[]).await;
    let late_first = late.expect(CLUSTER).await;
    assert_eq!(late_first.version_info, second.version_info);
    assert_eq!(cluster_names(&late_first), cluster_names(&second));

    // Fixing the file resumes pushes.
    replace(
        &dir.path().join("destination-rule.yaml"),
        &destination_rule(&["v1", "v2"]),
    );
    let third = ads.expect(CLUSTER).await;
    assert_eq!(
        cluster_names(&third),
        sorted(vec![
            cluster_name(""),
            cluster_name("v1"),
            cluster_name("v2")
        ])
    );
    let (_, errors) = wait_for_page(server.admin_addr(), "/debug/errors", |b| {
        b.starts_with("no config errors")
    })
    .await;
    assert!(errors.starts_with("no config errors"), "{errors}");
    let (_, metrics) = get(server.admin_addr(), "/metrics").await;
    assert_eq!(
        metric(&parse_metrics(&metrics), "shadowplane_config_errors", ""),
        Some(0.0)
    );

    server.shutdown().await.expect("clean shutdown");
}

/// GET `path` until `done(body)` (bounded: 3 s).
async fn wait_for_page(addr: SocketAddr, path: &str, done: impl Fn(&str) -> bool) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = get(addr, path).await;
        if done(&body) || tokio::time::Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn admin_pages_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["v1", "v2"]);
    let server = start_server(dir.path()).await;
    let mut ads = Ads::connect(server.xds_addr(), "proxy-metrics", &[]).await;
    ads.subscribe(CLUSTER, &[]).await;
    let resp = ads.expect(CLUSTER).await;
    ads.ack(&resp, &[]).await;

    let (status, body) = get(server.admin_addr(), "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // /debug/proxies shows the proxy with its acked version.
    let (status, body) = wait_for_page(server.admin_addr(), "/debug/proxies", |b| {
        b.contains("SYNCED")
    })
    .await;
    assert_eq!(status, 200);
    let proxies: serde_json::Value = serde_json::from_str(&body).expect("json");
    let proxy = &proxies["proxies"][0];
    assert_eq!(proxy["node_id"], "proxy-metrics");
    let cds = proxy["types"]
        .as_array()
        .expect("types")
        .iter()
        .find(|t| t["type_url"] == CLUSTER)
        .expect("cds status");
    assert_eq!(cds["version_acked"], resp.version_info.as_str());
    assert_eq!(cds["sync"], "SYNCED");

    // /debug/config has the snapshot in Envoy JSON.
    let (status, body) = get(server.admin_addr(), "/debug/config").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).expect("json");
    let clusters: Vec<&str> = config["resources"]["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        clusters.contains(&cluster_name("v1").as_str()),
        "{clusters:?}"
    );
    assert!(config["version"].is_string());

    // /metrics is Prometheus text with the documented names.
    let (status, body) = get(server.admin_addr(), "/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_metrics(&body);
    let cds_label = format!("type_url=\"{CLUSTER}\"");
    assert_eq!(
        metric(&samples, "shadowplane_xds_connected_proxies", &cds_label),
        Some(1.0),
        "{body}"
    );
    assert!(
        metric(&samples, "shadowplane_xds_pushes_total", &cds_label).is_some_and(|v| v >= 1.0),
        "{body}"
    );
    assert!(
        metric(&samples, "shadowplane_xds_push_bytes_total", &cds_label).is_some_and(|v| v > 0.0),
        "{body}"
    );
    assert!(
        metric(&samples, "shadowplane_xds_requests_total", "result=\"ack\"")
            .is_some_and(|v| v >= 1.0),
        "{body}"
    );
    for name in [
        "shadowplane_config_errors",
        "shadowplane_snapshot_info",
        "shadowplane_xds_requests_total",
        "shadowplane_xds_convergence_seconds_count",
        "shadowplane_config_reloads_total",
    ] {
        assert!(
            samples.iter().any(|(n, _, _)| n == name),
            "{name} missing from /metrics:\n{body}"
        );
    }
    assert_eq!(
        metric(
            &samples,
            "shadowplane_config_reloads_total",
            "result=\"applied\""
        ),
        Some(1.0)
    );
    // No swap happened since the proxy connected: no push latency yet, but the series exist.
    assert_eq!(
        metric(
            &samples,
            "shadowplane_xds_push_duration_seconds_count",
            &cds_label
        ),
        Some(0.0),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));

    let (status, _) = get(server.admin_addr(), "/nope").await;
    assert_eq!(status, 404);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_broken_config_at_startup_is_not_ready_until_fixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["v1", "v2"]);
    std::fs::write(
        dir.path().join("destination-rule.yaml"),
        BROKEN_DESTINATION_RULE,
    )
    .expect("write");
    let server = start_server(dir.path()).await;

    let (status, body) = get(server.admin_addr(), "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready: no good config yet: "),
        "{body}"
    );
    assert!(body.contains("destination-rule.yaml:10:"), "{body}");

    // A proxy that connects now waits; it gets the config once the file is fixed.
    let mut ads = Ads::connect(server.xds_addr(), "early", &[]).await;
    ads.subscribe(CLUSTER, &[]).await;
    assert!(ads
        .next_of(CLUSTER, Duration::from_millis(300))
        .await
        .is_none());
    replace(
        &dir.path().join("destination-rule.yaml"),
        &destination_rule(&["v1", "v2"]),
    );
    let resp = ads.expect(CLUSTER).await;
    assert!(cluster_names(&resp).contains(&cluster_name("v1")));
    let (status, _) = get(server.admin_addr(), "/readyz").await;
    assert_eq!(status, 200);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn node_metadata_selects_bind_address_and_namespace_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["v1", "v2"]);
    let server = start_server(dir.path()).await;

    let mut plain = Ads::connect(server.xds_addr(), "plain", &[]).await;
    plain.subscribe(LISTENER, &[]).await;
    let listeners = plain.expect(LISTENER).await;
    let names: Vec<String> = listeners
        .resources
        .iter()
        .map(|a| {
            envoy_types::pb::envoy::config::listener::v3::Listener::decode(a.value.as_slice())
                .expect("listener")
                .name
        })
        .collect();
    assert_eq!(names, vec!["0.0.0.0_8080"]);

    let mut local = Ads::connect(
        server.xds_addr(),
        "laptop",
        &[("BIND_ADDRESS", "127.0.0.1"), ("NAMESPACE", "demo")],
    )
    .await;
    local.subscribe(LISTENER, &[]).await;
    let listeners = local.expect(LISTENER).await;
    let names: Vec<String> = listeners
        .resources
        .iter()
        .map(|a| {
            envoy_types::pb::envoy::config::listener::v3::Listener::decode(a.value.as_slice())
                .expect("listener")
                .name
        })
        .collect();
    assert_eq!(names, vec!["127.0.0.1_8080"]);

    // The namespace view: a proxy in `demo` reaches the service by its short name.
    local.subscribe(ROUTE, &["8080"]).await;
    let routes = local.expect(ROUTE).await;
    let rc = RouteConfiguration::decode(routes.resources[0].value.as_slice()).expect("route");
    let domains: Vec<&str> = rc
        .virtual_hosts
        .iter()
        .flat_map(|vh| vh.domains.iter().map(String::as_str))
        .collect();
    assert!(domains.contains(&"calc"), "{domains:?}");

    // The view shows up in /debug/config.
    let (_, body) = get(server.admin_addr(), "/debug/config").await;
    let config: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        config["groups"]["namespace=demo,bind=127.0.0.1"].is_object(),
        "{body}"
    );
    // ... and /debug/config?node= shows what that proxy gets.
    let (status, body) = get(server.admin_addr(), "/debug/config?node=laptop").await;
    assert_eq!(status, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(config["group"], "namespace=demo,bind=127.0.0.1");
    assert_eq!(
        config["resources"]["listeners"][0]["name"],
        "127.0.0.1_8080"
    );
    let (status, body) = get(server.admin_addr(), "/debug/config?node=nobody").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"nobody\""), "{body}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_nack_is_shown_with_envoys_message_and_the_source_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["v1", "v2"]);
    let server = start_server(dir.path()).await;
    let mut ads = Ads::connect(server.xds_addr(), "picky", &[]).await;
    ads.subscribe(CLUSTER, &[]).await;
    let resp = ads.expect(CLUSTER).await;
    let v2 = cluster_name("v2");
    ads.nack(
        &resp,
        &[],
        &format!("Error adding/updating cluster(s) {v2}: something is wrong"),
    )
    .await;
    let (_, errors) = wait_for_page(server.admin_addr(), "/debug/errors", |b| {
        b.contains("recent NACKs")
    })
    .await;
    assert!(errors.contains("node picky rejected Cluster"), "{errors}");
    assert!(errors.contains("something is wrong"), "{errors}");
    assert!(
        errors.contains("source: DestinationRule demo/calc-dr spec.subsets[1] ("),
        "{errors}"
    );
    assert!(errors.contains("destination-rule.yaml:"), "{errors}");
    // Only the cluster Envoy's message names is attributed.
    assert!(!errors.contains("spec.subsets[0]"), "{errors}");

    // A rejected route configuration points at the VirtualService that produced it.
    ads.subscribe(ROUTE, &["8080"]).await;
    let routes = ads.expect(ROUTE).await;
    ads.nack(&routes, &["8080"], "Proto constraint validation failed")
        .await;
    let (_, errors) = wait_for_page(server.admin_addr(), "/debug/errors", |b| {
        b.contains("rejected RouteConfiguration")
    })
    .await;
    assert!(
        errors.contains("source: VirtualService demo/calc-vs (")
            && errors.contains("virtual-service.yaml:4:"),
        "{errors}"
    );
    // The metric counts both NACKs.
    let (_, metrics) = get(server.admin_addr(), "/metrics").await;
    assert_eq!(
        metric(
            &parse_metrics(&metrics),
            "shadowplane_xds_requests_total",
            "result=\"nack\""
        ),
        Some(2.0),
        "{metrics}"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["v1"]);
    let mut cfg = ServeConfig::new(vec![dir.path().to_path_buf()]);
    cfg.xds_listen = addr;
    cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
    let err = match start(cfg).await {
        Ok(_) => panic!("started on a taken port"),
        Err(e) => e,
    };
    assert!(matches!(err, ServeError::Bind { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&addr.to_string()), "{msg}");
    assert!(msg.contains("--xds-listen"), "{msg}");
}

/// A DestinationRule with one subset and a VirtualService routing to it, in one file (so a
/// change to both is read as one).
fn routing(subset: &str) -> String {
    format!(
        "{}---\n{}",
        destination_rule(&[subset]),
        VIRTUAL_SERVICE
            .replace("subset: v1", &format!("subset: {subset}"))
            .replace("    mirror:\n      host: calc\n      subset: v2\n", "")
    )
}

fn route_cluster(resp: &DiscoveryResponse) -> String {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier,
    };
    let rc = RouteConfiguration::decode(resp.resources[0].value.as_slice()).expect("route");
    let route = &rc
        .virtual_hosts
        .iter()
        .find(|vh| vh.name.starts_with(HOST))
        .expect("calc virtual host")
        .routes[0];
    match &route.action {
        Some(Action::Route(a)) => match &a.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => c.clone(),
            other => panic!("unexpected cluster specifier {other:?}"),
        },
        other => panic!("unexpected action {other:?}"),
    }
}

#[tokio::test]
async fn retargeting_a_route_pushes_the_new_cluster_first_and_removes_the_old_one_last() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("service-entry.yaml"), SERVICE_ENTRY).expect("write");
    std::fs::write(dir.path().join("routing.yaml"), routing("v1")).expect("write");
    let server = start_server(dir.path()).await;

    let mut ads = Ads::connect(server.xds_addr(), "mbb", &[]).await;
    ads.subscribe(CLUSTER, &[]).await;
    let cds = ads.expect(CLUSTER).await;
    ads.ack(&cds, &[]).await;
    ads.subscribe(ROUTE, &["8080"]).await;
    let rds = ads.expect(ROUTE).await;
    assert_eq!(route_cluster(&rds), cluster_name("v1"));
    ads.ack(&rds, &["8080"]).await;

    replace(&dir.path().join("routing.yaml"), &routing("v2"));

    // 1. The new cluster arrives while the old one stays.
    let cds1 = ads.expect(CLUSTER).await;
    let names = cluster_names(&cds1);
    assert!(
        names.contains(&cluster_name("v1")) && names.contains(&cluster_name("v2")),
        "{names:?}"
    );
    // The route has not moved yet: nothing on RDS until the clusters are acknowledged.
    assert!(ads
        .next_of(ROUTE, Duration::from_millis(200))
        .await
        .is_none());
    ads.ack(&cds1, &[]).await;

    // 2. The route moves to the new cluster; the old cluster is still there.
    let rds2 = ads.expect(ROUTE).await;
    assert_eq!(route_cluster(&rds2), cluster_name("v2"));
    assert!(
        ads.next_of(CLUSTER, Duration::from_millis(200))
            .await
            .is_none(),
        "old cluster removed before the route moved away from it"
    );
    ads.ack(&rds2, &["8080"]).await;

    // 3. Only then is the old cluster removed.
    let cds3 = ads.expect(CLUSTER).await;
    let names = cluster_names(&cds3);
    assert!(
        names.contains(&cluster_name("v2")) && !names.contains(&cluster_name("v1")),
        "{names:?}"
    );
    ads.ack(&cds3, &[]).await;

    // Convergence is measured once every proxy acknowledged the final config.
    let (_, metrics) = wait_for_page(server.admin_addr(), "/metrics", |b| {
        b.contains("shadowplane_xds_convergence_seconds_count 1")
    })
    .await;
    assert!(
        metrics.contains("shadowplane_xds_convergence_seconds_count 1"),
        "{metrics}"
    );
    // Three swaps reached this proxy's CDS subscription, two of them with a CDS push.
    let pushes = metric(
        &parse_metrics(&metrics),
        "shadowplane_xds_push_duration_seconds_count",
        &format!("type_url=\"{CLUSTER}\""),
    );
    assert!(pushes.is_some_and(|n| n >= 2.0), "{metrics}");
    server.shutdown().await.expect("clean shutdown");
}

// ===== a real Envoy =====

fn envoy_bootstrap(xds: SocketAddr, api_type: &str) -> String {
    common::ads_bootstrap(
        xds.port(),
        api_type,
        &format!("envoy-{}", api_type.to_ascii_lowercase()),
        &[("NAMESPACE", "demo"), ("BIND_ADDRESS", "127.0.0.1")],
    )
}

/// The ServiceEntry on `port` with one endpoint per backend (`version: <name>`).
fn service_entry_for(port: u16, backends: &[&common::Backend]) -> String {
    let mut s = SERVICE_ENTRY
        .replace("number: 8080", &format!("number: {port}"))
        .split("  endpoints:\n")
        .next()
        .expect("service entry text")
        .to_string();
    s.push_str("  endpoints:\n");
    for b in backends {
        s.push_str(&format!(
            "  - address: 127.0.0.1\n    ports:\n      http: {}\n    labels:\n      version: {}\n",
            b.port(),
            b.name()
        ));
    }
    s
}

/// Real Envoy over ADS: the first config, a route moved to another subset under continuous
/// traffic (no failed request), a broken file (Envoy keeps its config), no NACK anywhere.
fn envoy_follows_serve(api_type: &str) {
    let v1 = common::Backend::start("v1");
    let v2 = common::Backend::start("v2");
    let port = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("service-entry.yaml"),
        service_entry_for(port, &[&v1, &v2]),
    )
    .expect("write");
    std::fs::write(dir.path().join("routing.yaml"), routing("v1")).expect("write");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(start_server(dir.path()));

    let mut envoy = common::EnvoyProcess::start(&envoy_bootstrap(server.xds_addr(), api_type));
    envoy.wait_for_listener(port);
    let client = common::HttpClient::new();
    let first = client.get(port, "calc", "/first", &[]);
    assert_eq!(first.status, 200, "{}", first.body_string());
    assert_eq!(first.header("x-backend-version"), Some("v1"));

    // Continuous traffic while the route moves from v1 to v2.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let client = common::HttpClient::new();
            let (mut sent, mut failures) = (0u32, Vec::new());
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                sent += 1;
                match client.try_request("GET", port, "calc", "/during", &[], Vec::new()) {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body_string())),
                    Err(e) => failures.push(e),
                }
            }
            (sent, failures)
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    replace(&dir.path().join("routing.yaml"), &routing("v2"));
    let moved = v2.wait_for(1, Duration::from_secs(10));
    assert!(
        !moved.is_empty(),
        "no request reached v2 after the route moved"
    );
    // Let the last phase (removing the v1 cluster) happen under traffic too.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failures) = traffic.join().expect("traffic thread");
    assert!(sent > 10, "only {sent} requests were sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed while the route moved: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let (_, clusters) = envoy.admin_get("/clusters");
    assert!(
        !clusters.contains(&format!("outbound|{port}|v1|{HOST}")),
        "the v1 cluster was not removed:\n{clusters}"
    );

    // A broken file: Envoy keeps routing to v2.
    replace(&dir.path().join("routing.yaml"), BROKEN_DESTINATION_RULE);
    let (_, errors) = rt.block_on(wait_for_page(server.admin_addr(), "/debug/errors", |b| {
        b.contains("config rejected")
    }));
    assert!(errors.contains("config rejected"), "{errors}");
    let after = client.get(port, "calc", "/after", &[]);
    assert_eq!(after.status, 200);
    assert_eq!(after.header("x-backend-version"), Some("v2"));

    // Envoy accepted everything: no NACK, every type synced.
    assert!(errors.contains("no NACKs"), "{errors}");
    let (_, proxies) = rt.block_on(get(server.admin_addr(), "/debug/proxies"));
    let proxies: serde_json::Value = serde_json::from_str(&proxies).expect("json");
    let envoy_status = proxies["proxies"]
        .as_array()
        .expect("proxies")
        .iter()
        .find(|p| p["node_id"] == format!("envoy-{}", api_type.to_ascii_lowercase()))
        .expect("envoy in /debug/proxies");
    assert_eq!(envoy_status["group"], "namespace=demo,bind=127.0.0.1");
    for t in envoy_status["types"].as_array().expect("types") {
        assert_eq!(t["sync"], "SYNCED", "{t}");
    }
    rt.block_on(server.shutdown()).expect("clean shutdown");
}

#[test]
fn envoy_over_ads_sotw_follows_serve_without_dropping_traffic() {
    envoy_follows_serve("GRPC");
}

#[test]
fn envoy_over_ads_delta_follows_serve_without_dropping_traffic() {
    envoy_follows_serve("DELTA_GRPC");
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["v1"]);
    let server = start_server(dir.path()).await;
    let mut ads = Ads::connect(server.xds_addr(), "leaving", &[]).await;
    ads.subscribe(CLUSTER, &[]).await;
    let resp = ads.expect(CLUSTER).await;
    ads.ack(&resp, &[]).await;
    let admin = server.admin_addr();

    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown within 5s")
        .expect("clean shutdown");
    // The proxy's stream is over (it would reconnect elsewhere), and nothing listens any more.
    let end = tokio::time::timeout(Duration::from_secs(2), ads.rx.next())
        .await
        .expect("stream ends within 2s");
    assert!(!matches!(end, Some(Ok(_))), "stream still open: {end:?}");
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

#[tokio::test]
async fn run_returns_when_its_shutdown_future_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &["v1"]);
    let mut cfg = ServeConfig::new(vec![dir.path().to_path_buf()]);
    cfg.xds_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
    let shutdown = tokio::time::sleep(Duration::from_millis(200));
    tokio::time::timeout(Duration::from_secs(5), shadowplane::app::run(cfg, shutdown))
        .await
        .expect("run returns within 5s")
        .expect("run ends cleanly");
}
