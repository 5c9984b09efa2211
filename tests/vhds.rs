//! VHDS (Virtual Host Discovery Service): virtual hosts as resources of their own over delta
//! ADS, for proxies that ask with node metadata `VHDS: "true"`.
//!
//! - a real Envoy on delta ADS with the opt-in routes by host through VHDS, and a
//!   VirtualService change reaches it as one `VirtualHost` resource: the route configuration
//!   is not sent again (`/debug/proxies` counts pushes per type);
//! - a scripted delta client: Envoy's VHDS subscription (an empty first subscribe, meaning
//!   every virtual host) gets every virtual host, then only the changed one, then the removed
//!   one's name; an explicitly subscribed name that does not exist is reported removed; the
//!   route configuration carries `vhds` and no virtual hosts.
//!
//! What Envoy 1.40 does (found with this server and `-l debug`): the first VirtualHost request
//! has no names (legacy wildcard) and serves every route configuration of the stream; Envoy
//! files virtual hosts by the `<route configuration>/` prefix of their name and removes them by
//! `VirtualHost.name`, which therefore equals the resource name.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use prost::Message;
use serde_json::Value;
use shadowplane::app::{start, RunningServer, ServeConfig};
use shadowplane::config_source::Debounce;
use shadowplane::xds::resource::{ROUTE, VIRTUAL_HOST};
use shadowplane::xds::{ProxyRegistry, Snapshot, SnapshotCache};
use shadowplane_translator::{translate_files, Options, SourceFile};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use common::{Backend, EnvoyProcess, HttpClient, TempDir};

const WAIT: Duration = Duration::from_secs(10);

fn service_entry(host: &str, port: u16, backend: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: web
spec:
  hosts:
  - {host}
  location: MESH_INTERNAL
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      http: {backend}
",
        name = host.replace('.', "-"),
    )
}

/// A VirtualService for `host` sending everything to `destination`.
fn virtual_service(host: &str, destination: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: web
spec:
  hosts:
  - {host}
  http:
  - route:
    - destination:
        host: {destination}
        port:
          number: {port}
",
        name = host.replace('.', "-"),
    )
}

/// Replace `name` in `dir` at once (write a temp file, rename), so the watcher reads it once.
fn write_atomically(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, dir.join(name)).expect("rename config");
}

fn bootstrap(xds_port: u16) -> String {
    common::ads_bootstrap(xds_port, "DELTA_GRPC", "envoy-vhds", &[("VHDS", "true")])
}

fn admin_json(server: &RunningServer, path: &str) -> Value {
    let (status, body) = common::simple_get(server.admin_addr(), path, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("serve admin {path}: {e}"));
    assert_eq!(status, 200, "serve admin {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

/// `/debug/proxies` entry of node `envoy-vhds`, type `type_url`: (pushes, resources in the
/// last push), and the proxy's group.
fn pushes(server: &RunningServer, type_url: &str) -> (u64, u64, String) {
    let json = admin_json(server, "/debug/proxies");
    let proxies = json["proxies"].as_array().cloned().unwrap_or_default();
    let proxy = proxies
        .iter()
        .find(|p| p["node_id"] == "envoy-vhds")
        .unwrap_or_else(|| panic!("envoy-vhds not on /debug/proxies: {json}"));
    let group = proxy["group"].as_str().unwrap_or_default().to_string();
    let t = proxy["types"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["type_url"] == type_url))
        .unwrap_or_else(|| panic!("envoy-vhds has no {type_url} stream: {proxy}"));
    (
        t["pushes"].as_u64().unwrap_or(0),
        t["resources_in_last_push"].as_u64().unwrap_or(0),
        group,
    )
}

/// Poll GET `host` on Envoy's `port` until `backend` answers it (bounded).
fn wait_routed(
    client: &HttpClient,
    port: u16,
    host: &str,
    backend: &Backend,
    envoy: &EnvoyProcess,
) {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        let before = backend.count();
        match client.try_request("GET", port, host, "/", &[], vec![]) {
            Ok(r) if r.status == 200 && backend.count() > before => return,
            Ok(r) => last = format!("status {}", r.status),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, routes) = envoy.admin_get("/config_dump?resource=dynamic_route_configs");
    panic!(
        "{host} on :{port} never reached {} within {WAIT:?} (last: {last})\nroutes: {routes}",
        backend.name()
    );
}

#[test]
fn envoy_routes_by_host_over_vhds_and_a_change_is_one_virtual_host() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let port = common::free_port();
    let dir = TempDir::new("vhds");
    let (host_a, host_b) = ("a.example.com", "b.example.com");
    dir.write("se-a.yaml", &service_entry(host_a, port, a.port()));
    dir.write("se-b.yaml", &service_entry(host_b, port, b.port()));
    dir.write("vs-a.yaml", &virtual_service(host_a, host_a, port));

    let mut cfg = ServeConfig::new(vec![dir.path().to_path_buf()]);
    cfg.xds_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.options.bind_address = "127.0.0.1".to_string();
    cfg.debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
    };
    cfg.phase_timeout = Duration::from_secs(1);
    cfg.drain_timeout = Duration::from_secs(2);
    let server = rt
        .block_on(async { tokio::time::timeout(WAIT, start(cfg)).await })
        .expect("serve starts in time")
        .expect("serve starts");

    let mut envoy = EnvoyProcess::start(&bootstrap(server.xds_addr().port()));
    envoy.wait_for_listener(port);
    let client = HttpClient::new();
    wait_routed(&client, port, host_a, &a, &envoy);
    wait_routed(&client, port, host_b, &b, &envoy);

    // Envoy holds the route configuration without virtual hosts plus them from VHDS, named
    // `<route configuration>/<virtual host>`.
    let (_, dump) = envoy.admin_get("/config_dump?resource=dynamic_route_configs");
    let vhost_a = format!("\"{port}/{host_a}:{port}\"");
    assert!(dump.contains(&vhost_a), "no {vhost_a} in {dump}");
    assert!(dump.contains("\"vhds\""), "no vhds block in {dump}");

    let (routes_before, _, group) = pushes(&server, ROUTE);
    assert!(group.split(',').any(|p| p == "vhds"), "group {group:?}");
    let (vhosts_before, _, _) = pushes(&server, VIRTUAL_HOST);
    assert!(vhosts_before >= 1);

    // One VirtualService change: host a now goes to b's backend.
    write_atomically(
        dir.path(),
        "vs-a.yaml",
        &virtual_service(host_a, host_b, port),
    );
    wait_routed(&client, port, host_a, &b, &envoy);
    let (vhosts_after, in_last, _) = pushes(&server, VIRTUAL_HOST);
    let (routes_after, _, _) = pushes(&server, ROUTE);
    assert_eq!(
        routes_after, routes_before,
        "the route configuration was sent again for a virtual host change"
    );
    assert_eq!(vhosts_after, vhosts_before + 1, "one VirtualHost push");
    assert_eq!(in_last, 1, "one VirtualHost resource in that push");
    wait_routed(&client, port, host_b, &b, &envoy);

    rt.block_on(async { server.shutdown().await })
        .expect("shutdown");
}

// ===== scripted delta client =====

struct DeltaClient {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    async fn connect(addr: std::net::SocketAddr) -> DeltaClient {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = client
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .expect("delta stream")
            .into_inner();
        DeltaClient { tx, rx }
    }

    fn send(&self, type_url: &str, sub: &[&str], nonce: &str, node: Option<Node>) {
        self.tx
            .send(DeltaDiscoveryRequest {
                node,
                type_url: type_url.into(),
                resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
                response_nonce: nonce.into(),
                ..Default::default()
            })
            .expect("stream open");
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!("no response: {other:?}"),
        }
    }

    /// Receive one response of `type_url`, ACK it, and return it.
    async fn recv_ack(&mut self, type_url: &str) -> DeltaDiscoveryResponse {
        let r = self.recv().await;
        assert_eq!(r.type_url, type_url, "response order");
        self.send(type_url, &[], &r.nonce, None);
        r
    }
}

fn vhost_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|res| {
            let any = res.resource.as_ref().expect("resource body");
            assert_eq!(any.type_url, VIRTUAL_HOST);
            let vh = VirtualHost::decode(any.value.as_slice()).expect("a VirtualHost");
            assert_eq!(vh.name, res.name, "VirtualHost.name is the resource name");
            res.name.clone()
        })
        .collect()
}

fn config(hosts: &[(&str, &str)]) -> Vec<SourceFile> {
    let mut files = Vec::new();
    for (i, (host, dest)) in hosts.iter().enumerate() {
        files.push(SourceFile {
            path: format!("se{i}.yaml"),
            text: service_entry(host, 80, 9000 + i as u16),
        });
        files.push(SourceFile {
            path: format!("vs{i}.yaml"),
            text: virtual_service(host, dest, 80),
        });
    }
    files
}

fn vhds_snapshot(hosts: &[(&str, &str)]) -> Snapshot {
    let options = Options {
        vhds: true,
        ..Options::default()
    };
    let translation = translate_files(&config(hosts), &options);
    assert!(!translation.has_errors(), "{:?}", translation.diagnostics);
    Snapshot::from_resources(&translation.resources).expect("snapshot")
}

#[test]
fn delta_client_gets_virtual_hosts_subscribed_changed_and_removed() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cache = Arc::new(SnapshotCache::new());
        let registry = Arc::new(ProxyRegistry::new());
        cache.set(vhds_snapshot(&[
            ("x.example", "x.example"),
            ("y.example", "y.example"),
        ]));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (c, r) = (cache.clone(), registry.clone());
        let server = tokio::spawn(async move {
            shadowplane::xds::serve(listener, c, r, std::future::pending()).await
        });
        let mut client = DeltaClient::connect(addr).await;
        let node = Node {
            id: "scripted".into(),
            metadata: Some(Struct {
                fields: [(
                    "VHDS".to_string(),
                    PbValue {
                        kind: Some(Kind::StringValue("true".into())),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        };

        // RDS: the route configuration has a vhds block and no virtual hosts.
        client.send(ROUTE, &["80"], "", Some(node));
        let rds = client.recv_ack(ROUTE).await;
        assert_eq!(rds.resources.len(), 1);
        let rc = RouteConfiguration::decode(
            rds.resources[0]
                .resource
                .as_ref()
                .expect("body")
                .value
                .as_slice(),
        )
        .expect("a RouteConfiguration");
        assert!(rc.virtual_hosts.is_empty());
        assert!(rc.vhds.is_some());

        // Envoy's first VHDS request names nothing: every virtual host.
        client.send(VIRTUAL_HOST, &[], "", None);
        let first = client.recv_ack(VIRTUAL_HOST).await;
        let mut names = vhost_names(&first);
        names.sort();
        assert_eq!(names, ["80/x.example:80", "80/y.example:80"]);
        assert!(first.removed_resources.is_empty());

        // Change: x now routes to y. Only x's virtual host comes, RDS is quiet.
        cache.set(vhds_snapshot(&[
            ("x.example", "y.example"),
            ("y.example", "y.example"),
        ]));
        let change = client.recv_ack(VIRTUAL_HOST).await;
        assert_eq!(vhost_names(&change), ["80/x.example:80"]);
        assert!(change.removed_resources.is_empty());

        // Remove: x goes away (its cluster too). The virtual host's removal comes by name
        // (after nothing else of routing: no RouteConfiguration change).
        cache.set(vhds_snapshot(&[("y.example", "y.example")]));
        let mut removed_vh = Vec::new();
        for _ in 0..3 {
            let r = client.recv().await;
            client.send(&r.type_url, &[], &r.nonce, None);
            assert_ne!(r.type_url, ROUTE, "route configuration resent");
            if r.type_url == VIRTUAL_HOST {
                assert!(r.resources.is_empty());
                removed_vh = r.removed_resources.clone();
                break;
            }
        }
        assert_eq!(removed_vh, ["80/x.example:80"]);

        // An explicit name that does not exist (Envoy's on-demand form `<rc>/<host>`) is
        // reported removed.
        client.send(VIRTUAL_HOST, &["80/z.example"], "", None);
        let missing = client.recv_ack(VIRTUAL_HOST).await;
        assert!(missing.resources.is_empty());
        assert_eq!(missing.removed_resources, ["80/z.example"]);

        server.abort();
    });
}
