//! Kubernetes benchmark (issue 6): `shadowplane serve --kubernetes` (the release binary, its own
//! process) reading a large cluster from the Kubernetes API server stand-in of
//! `tests/common/kube_apiserver.rs`, started in this process. `bench/kube-load.sh` builds and
//! runs it; this file is the tool.
//!
//! ## The cluster
//! `--services N` Services (default 10,000) over `--namespaces` namespaces (default 100):
//! Service `svc-<i>` in `ns-<i % namespaces>`, one port `http` 8080 → targetPort `http`; one
//! EndpointSlice per Service with `--endpoints E` ready endpoints (default 3), each a Pod
//! `svc-<i>-<e>` (labels `app`, `version: v1|v2|v3` in turn) on its own IP, port `http` 9080.
//! The first `--virtual-services M` Services (default 1,000) also get a DestinationRule with
//! subsets v1, v2, v3 and a VirtualService splitting 80/20 between v1 and v2; every other one
//! also mirrors 10% to v3. After loading, the stand-in's history is compacted (an API server
//! that has run a while), and the objects are listed once by this process, page by page as the
//! `kube` client does (`limit=500`), to show what the stand-in alone costs.
//!
//! ## Measured
//! 1. Start: from spawning `serve` to `/readyz` 200 (polled every 20 ms), and, at a delta ADS
//!    client connected from the start (retrying until the xDS port answers), to a CDS state
//!    holding every expected cluster (`outbound|8080||<host>`, and the three subset clusters of
//!    each Service with a DestinationRule) and to endpoints for every one of them. serve's own
//!    "first complete list" log line (its elapsed time since the source started) is quoted.
//! 2. Memory: serve's `VmRSS` sampled every 100 ms from `/proc` while starting, `VmHWM` (peak),
//!    and `VmRSS` once synced and idle for 5 s with the client connected, and after the rounds.
//! 3. Endpoint change, `--rounds R` (default 5): flip `ready` of the first endpoint (the v1 Pod)
//!    of Service 0's EndpointSlice (false, then true, ...), then time from the update at the
//!    stand-in to the first delta response carrying `outbound|8080||svc-0.ns-0.svc.cluster.local`
//!    with the new endpoint set, and to the v1 subset's load assignment too; median, min, max.
//!    Each round waits `--settle` (default 2 s) more and lists every response the change caused:
//!    type and number of resources (only EDS is expected).
//!
//! The client: one delta ADS stream (node `kube-load`, no metadata), wildcard CDS, the EDS names
//! of the clusters, wildcard LDS, the RDS names of the listeners, every response ACKed at once.
//!
//! Requests the stand-in refused (anything a real API server would refuse) are listed, and make
//! the run fail.
//!
//! ```sh
//! cargo bench --bench kube_load -- --services 200 --virtual-services 20 --rounds 3
//! cargo bench --bench kube_load -- --bin target/release/shadowplane --report results.jsonl
//! ```

#[allow(dead_code)]
#[path = "../tests/common/kube_apiserver.rs"]
mod kube_apiserver;

/// The repository (the stand-in reads `deploy/kubernetes/clusterrole.yaml` through it, as
/// `tests/common` provides it to the tests).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use kube_apiserver::{KubeApiServer, TOKEN};
use prost::Message;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Endpoint;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const SERVICE_PORT: u16 = 8080;
const POD_PORT: u16 = 9080;

fn short(type_url: &str) -> &'static str {
    match type_url {
        CDS => "CDS",
        EDS => "EDS",
        LDS => "LDS",
        RDS => "RDS",
        _ => "other",
    }
}

// ============================== arguments ==============================

#[derive(Debug, Clone)]
struct Args {
    services: usize,
    virtual_services: usize,
    namespaces: usize,
    endpoints: usize,
    rounds: usize,
    settle: Duration,
    sync_timeout: Duration,
    debounce: Option<String>,
    bin: PathBuf,
    report: Option<PathBuf>,
    keep: bool,
}

const USAGE: &str = "\
usage: kube_load [--services N] [--virtual-services N] [--namespaces N] [--endpoints N]
                 [--rounds N] [--settle SECS] [--sync-timeout SECS] [--debounce D]
                 [--bin PATH] [--report FILE] [--keep]";

fn usage(message: &str) -> ! {
    eprintln!("kube_load: {message}\n{USAGE}");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        services: 10_000,
        virtual_services: 1_000,
        namespaces: 100,
        endpoints: 3,
        rounds: 5,
        settle: Duration::from_secs(2),
        sync_timeout: Duration::from_secs(900),
        debounce: None,
        bin: PathBuf::from("target/release/shadowplane"),
        report: None,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    fn number(it: &mut impl Iterator<Item = String>, flag: &str, zero_ok: bool) -> usize {
        it.next()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| zero_ok || n > 0)
            .unwrap_or_else(|| usage(&format!("{flag} needs a number")))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // `cargo bench` passes --bench; libtest options do not apply.
            "--bench" => {}
            "--services" => args.services = number(&mut it, "--services", false),
            "--virtual-services" => {
                args.virtual_services = number(&mut it, "--virtual-services", true)
            }
            "--namespaces" => args.namespaces = number(&mut it, "--namespaces", false),
            "--endpoints" => args.endpoints = number(&mut it, "--endpoints", false),
            "--rounds" => args.rounds = number(&mut it, "--rounds", true),
            "--settle" => {
                args.settle = Duration::from_secs(number(&mut it, "--settle", true) as u64)
            }
            "--sync-timeout" => {
                args.sync_timeout =
                    Duration::from_secs(number(&mut it, "--sync-timeout", false) as u64)
            }
            "--debounce" => {
                args.debounce = Some(
                    it.next()
                        .unwrap_or_else(|| usage("--debounce needs a value")),
                )
            }
            "--bin" => {
                args.bin = PathBuf::from(it.next().unwrap_or_else(|| usage("--bin needs a path")))
            }
            "--report" => {
                args.report = Some(PathBuf::from(
                    it.next().unwrap_or_else(|| usage("--report needs a path")),
                ))
            }
            "--keep" => args.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if args.virtual_services > args.services {
        usage("--virtual-services cannot exceed --services");
    }
    args
}

// ============================== the cluster ==============================

fn namespace(args: &Args, i: usize) -> String {
    format!("ns-{}", i % args.namespaces)
}

fn host(args: &Args, i: usize) -> String {
    format!("svc-{i}.{}.svc.cluster.local", namespace(args, i))
}

fn version(e: usize) -> String {
    format!("v{}", e % 3 + 1)
}

/// A unique Pod IP per (service, endpoint): 10.x.y.z.
fn pod_ip(args: &Args, i: usize, e: usize) -> String {
    let n = i * args.endpoints + e + 1;
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

fn service(args: &Args, i: usize) -> Value {
    let name = format!("svc-{i}");
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace(args, i), "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": format!("10.96.{}.{}", (i >> 8) & 0xff, i & 0xff),
            "selector": {"app": name},
            "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": "http"}],
        },
    })
}

fn pod(args: &Args, i: usize, e: usize) -> Value {
    let ip = pod_ip(args, i, e);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("svc-{i}-{e}"),
            "namespace": namespace(args, i),
            "labels": {"app": format!("svc-{i}"), "version": version(e)},
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "app", "image": "app",
                            "ports": [{"name": "http", "containerPort": POD_PORT, "protocol": "TCP"}]}],
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.168.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// Service `i`'s EndpointSlice; endpoint `not_ready` (if any) has `ready: false`.
fn slice(args: &Args, i: usize, not_ready: Option<usize>) -> Value {
    let ns = namespace(args, i);
    let endpoints: Vec<Value> = (0..args.endpoints)
        .map(|e| {
            let ready = not_ready != Some(e);
            json!({
                "addresses": [pod_ip(args, i, e)],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": "node-1",
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("svc-{i}-{e}")},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("svc-{i}-abcde"),
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": format!("svc-{i}"),
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}],
    })
}

fn destination_rule(args: &Args, i: usize) -> Value {
    let subsets: Vec<Value> = ["v1", "v2", "v3"]
        .iter()
        .map(|v| json!({"name": v, "labels": {"version": v}}))
        .collect();
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": format!("svc-{i}"), "namespace": namespace(args, i)},
        "spec": {
            "host": format!("svc-{i}"),
            "subsets": subsets,
        },
    })
}

fn virtual_service(args: &Args, i: usize) -> Value {
    let name = format!("svc-{i}");
    let mut route = json!({
        "route": [
            {"destination": {"host": name, "subset": "v1"}, "weight": 80},
            {"destination": {"host": name, "subset": "v2"}, "weight": 20},
        ],
    });
    if i % 2 == 0 {
        route["mirror"] = json!({"host": name, "subset": "v3"});
        route["mirrorPercentage"] = json!({"value": 10.0});
    }
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace(args, i)},
        "spec": {"hosts": [name], "http": [route]},
    })
}

/// Apply the whole cluster; the number of objects.
fn fill(api: &KubeApiServer, args: &Args) -> usize {
    let mut objects = 0;
    for i in 0..args.services {
        api.apply(&service(args, i));
        for e in 0..args.endpoints {
            api.apply(&pod(args, i, e));
        }
        api.apply(&slice(args, i, None));
        objects += 2 + args.endpoints;
        if i < args.virtual_services {
            api.apply(&destination_rule(args, i));
            api.apply(&virtual_service(args, i));
            objects += 2;
        }
    }
    objects
}

/// The clusters serve must produce: every Service's default cluster and the subset clusters
/// of those with a DestinationRule.
fn expected_clusters(args: &Args) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for i in 0..args.services {
        let h = host(args, i);
        out.insert(format!("outbound|{SERVICE_PORT}||{h}"));
        if i < args.virtual_services {
            for v in ["v1", "v2", "v3"] {
                out.insert(format!("outbound|{SERVICE_PORT}|{v}|{h}"));
            }
        }
    }
    out
}

// ============================== HTTP helpers ==============================

/// `GET path` over HTTP/1.1 (`Connection: close`), optionally with the stand-in's bearer
/// token: status and body. Bounded by `timeout`.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    token: bool,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let auth = if token {
            format!("Authorization: Bearer {TOKEN}\r\nAccept: application/json\r\n")
        } else {
            String::new()
        };
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no header end from {addr}"))?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line from {addr}"))?;
        let body = raw[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Ok((status, dechunk(&body)));
        }
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET {path} on {addr}: no answer within {timeout:?}"))?
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || body.len() < line_end + 2 + size {
            break;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[(line_end + 4 + size).min(body.len())..];
    }
    out
}

/// List every object of `path` page by page (`limit=500`, like kube's watcher): items, pages.
async fn list_all(addr: SocketAddr, path: &str) -> Result<(usize, usize), String> {
    let mut items = 0;
    let mut pages = 0;
    let mut cont = String::new();
    loop {
        let url = if cont.is_empty() {
            format!("{path}?limit=500")
        } else {
            format!("{path}?limit=500&continue={cont}")
        };
        let (status, body) = http_get(addr, &url, true, Duration::from_secs(120)).await?;
        if status != 200 {
            return Err(format!(
                "list {url}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| format!("list {url}: not JSON: {e}"))?;
        pages += 1;
        items += v["items"].as_array().map_or(0, Vec::len);
        match v["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => {
                cont = c
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect()
            }
            _ => return Ok((items, pages)),
        }
    }
}

// ============================== /proc ==============================

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .trim_start_matches(':')
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

// ============================== serve ==============================

/// `shadowplane serve --kubernetes`, killed on drop; its output in `log`.
struct Serve {
    child: Child,
    log: PathBuf,
    xds: SocketAddr,
    admin: SocketAddr,
    spawned: Instant,
}

impl Serve {
    fn spawn(args: &Args, kubeconfig: &Path, log: PathBuf) -> Result<Serve, String> {
        if !args.bin.is_file() {
            return Err(format!(
                "{} does not exist: build it with `cargo build --release` or pass --bin",
                args.bin.display()
            ));
        }
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let out =
            std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new(&args.bin);
        cmd.arg("serve")
            .arg("--kubernetes")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--xds-listen", &xds.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .env_remove("KUBECONFIG")
            .env(
                "RUST_LOG",
                std::env::var("KUBE_LOAD_RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        if let Some(d) = &args.debounce {
            cmd.args(["--debounce", d]);
        }
        let spawned = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", args.bin.display()))?;
        Ok(Serve {
            child,
            log,
            xds,
            admin,
            spawned,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "serve exited ({status}); its log ({}):\n{}",
                self.log.display(),
                self.tail()
            )),
            Err(e) => Err(format!("serve: {e}")),
        }
    }

    /// SIGTERM, then wait (bounded); the exit code.
    async fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ============================== the ADS client ==============================

/// One response as the client received it.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    type_url: String,
    resources: usize,
    removed: usize,
    bytes: usize,
}

/// What the client knows, shared with the coordinator.
#[derive(Default)]
struct ClientState {
    /// Cluster name → its EDS name (`None`: not an EDS cluster).
    clusters: BTreeMap<String, Option<String>>,
    /// Load assignment name → its endpoints (`address:port`), sorted.
    assignments: BTreeMap<String, Vec<String>>,
    listeners: BTreeSet<String>,
    routes: BTreeSet<String>,
    log: Vec<Received>,
    error: Option<String>,
    /// When the connection was opened (after retries).
    connected: Option<Instant>,
}

fn lock(state: &Mutex<ClientState>) -> std::sync::MutexGuard<'_, ClientState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn eds_name(cluster: &Cluster) -> Option<String> {
    let eds = matches!(
        cluster.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
    );
    eds.then(|| {
        cluster
            .eds_cluster_config
            .as_ref()
            .map(|c| c.service_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| cluster.name.clone())
    })
}

fn endpoints_of(cla: &ClusterLoadAssignment) -> Vec<String> {
    let mut out: Vec<String> = cla
        .endpoints
        .iter()
        .flat_map(|l| l.lb_endpoints.iter())
        .filter_map(|lb| match &lb.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => ep.address.as_ref(),
            _ => None,
        })
        .filter_map(|a| match &a.address {
            Some(AddressKind::SocketAddress(s)) => Some(format!(
                "{}:{}",
                s.address,
                match s.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => p,
                    _ => 0,
                }
            )),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn rds_names(listener: &Listener) -> Vec<String> {
    let mut names = Vec::new();
    for chain in listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter())
    {
        for filter in &chain.filters {
            let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
                continue;
            };
            if !any.type_url.ends_with("HttpConnectionManager") {
                continue;
            }
            if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
                if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                    names.push(rds.route_config_name);
                }
            }
        }
    }
    names
}

/// Connect (retrying every 20 ms until `deadline`) and run one delta ADS stream like Envoy:
/// wildcard CDS, the EDS names of the clusters, wildcard LDS, the RDS names of the listeners.
async fn ads_client(
    xds: SocketAddr,
    state: Arc<Mutex<ClientState>>,
    changed: watch::Sender<u64>,
    deadline: Instant,
) {
    if let Err(e) = ads_client_inner(xds, &state, &changed, deadline).await {
        lock(&state).error = Some(e);
        changed.send_modify(|n| *n += 1);
    }
}

async fn ads_client_inner(
    xds: SocketAddr,
    state: &Mutex<ClientState>,
    changed: &watch::Sender<u64>,
    deadline: Instant,
) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("http://{xds}"))
        .map_err(|e| e.to_string())?
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(64 * 1024 * 1024))
        .connect_timeout(Duration::from_secs(5));
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("cannot connect to xDS on {xds}: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    lock(state).connected = Some(Instant::now());
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(1024 * 1024 * 1024);
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let send =
        |r: DeltaDiscoveryRequest| tx.send(r).map_err(|_| "request stream closed".to_string());
    send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: "kube-load".into(),
            cluster: "kube-load".into(),
            ..Default::default()
        }),
        type_url: CDS.into(),
        ..Default::default()
    })?;
    let mut inbound = client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| format!("open the delta ADS stream: {s}"))?
        .into_inner();
    let mut eds_subscribed: BTreeSet<String> = BTreeSet::new();
    let mut rds_subscribed: BTreeSet<String> = BTreeSet::new();
    let mut lds_requested = false;
    while let Some(response) = inbound
        .message()
        .await
        .map_err(|s| format!("ADS stream: {s}"))?
    {
        let at = Instant::now();
        let bytes = response.encoded_len();
        let DeltaDiscoveryResponse {
            type_url,
            resources,
            removed_resources,
            nonce,
            ..
        } = response;
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        {
            let mut st = lock(state);
            match type_url.as_str() {
                CDS => {
                    for r in &resources {
                        let Some(any) = &r.resource else { continue };
                        let cluster = Cluster::decode(any.value.as_slice())
                            .map_err(|e| format!("decode cluster {}: {e}", r.name))?;
                        let eds = eds_name(&cluster);
                        if let Some(n) = &eds {
                            if eds_subscribed.insert(n.clone()) {
                                subscribe.push(n.clone());
                            }
                        }
                        st.clusters.insert(cluster.name.clone(), eds);
                    }
                    for name in &removed_resources {
                        if let Some(Some(eds)) = st.clusters.remove(name) {
                            if eds_subscribed.remove(&eds) {
                                unsubscribe.push(eds);
                            }
                        }
                    }
                }
                EDS => {
                    for r in &resources {
                        let Some(any) = &r.resource else { continue };
                        let cla = ClusterLoadAssignment::decode(any.value.as_slice())
                            .map_err(|e| format!("decode load assignment {}: {e}", r.name))?;
                        st.assignments
                            .insert(cla.cluster_name.clone(), endpoints_of(&cla));
                    }
                    for name in &removed_resources {
                        st.assignments.remove(name);
                    }
                }
                LDS => {
                    for r in &resources {
                        let Some(any) = &r.resource else { continue };
                        let listener = Listener::decode(any.value.as_slice())
                            .map_err(|e| format!("decode listener {}: {e}", r.name))?;
                        for n in rds_names(&listener) {
                            if rds_subscribed.insert(n.clone()) {
                                subscribe.push(n);
                            }
                        }
                        st.listeners.insert(listener.name);
                    }
                    for name in &removed_resources {
                        st.listeners.remove(name);
                    }
                }
                RDS => {
                    for r in &resources {
                        st.routes.insert(r.name.clone());
                    }
                    for name in &removed_resources {
                        st.routes.remove(name);
                    }
                }
                _ => {}
            }
            st.log.push(Received {
                at,
                type_url: type_url.clone(),
                resources: resources.len(),
                removed: removed_resources.len(),
                bytes,
            });
        }
        let dependent = match type_url.as_str() {
            CDS => Some(EDS),
            LDS => Some(RDS),
            _ => None,
        };
        if let Some(dep) = dependent {
            if !subscribe.is_empty() || !unsubscribe.is_empty() {
                send(DeltaDiscoveryRequest {
                    type_url: dep.into(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                })?;
            }
        }
        send(DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: nonce,
            ..Default::default()
        })?;
        if type_url == EDS && !lds_requested {
            lds_requested = true;
            send(DeltaDiscoveryRequest {
                type_url: LDS.into(),
                ..Default::default()
            })?;
        }
        changed.send_modify(|n| *n += 1);
    }
    Err("the ADS stream ended".into())
}

// ============================== the run ==============================

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// serve's log line that starts with `needle`'s first occurrence, if any.
fn log_line(log: &Path, needle: &str) -> Option<String> {
    std::fs::read_to_string(log)
        .ok()?
        .lines()
        .find(|l| l.contains(needle))
        .map(str::to_string)
}

/// The `key=value` of a tracing line.
fn log_field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('"').to_string())
}

struct Started {
    ready: Option<f64>,
    connected: Option<f64>,
    all_clusters: Option<f64>,
    all_endpoints: Option<f64>,
    peak_sampled_kib: u64,
    samples: Vec<(f64, u64)>,
    cpu_s: f64,
}

async fn run(api: &KubeApiServer, args: &Args, dir: &Path) -> Result<Value, String> {
    let api_addr = SocketAddr::from(([127, 0, 0, 1], api.port()));
    eprintln!("load average before: {}", load_average());

    // 1. The cluster.
    let t = Instant::now();
    let objects = fill(api, args);
    let compacted = api.compact();
    let fill_s = t.elapsed().as_secs_f64();
    eprintln!(
        "stand-in on {}: {objects} objects applied in {fill_s:.1} s (history compacted at resourceVersion {compacted})",
        api.url()
    );

    // 2. What the stand-in alone costs: one paged list of everything serve lists.
    let t = Instant::now();
    let mut listed = BTreeMap::new();
    for path in [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/pods",
        "/apis/networking.istio.io/v1/virtualservices",
        "/apis/networking.istio.io/v1/destinationrules",
    ] {
        let t = Instant::now();
        let (items, pages) = list_all(api_addr, path).await?;
        listed.insert(
            path.to_string(),
            json!({"items": items, "pages": pages, "s": t.elapsed().as_secs_f64()}),
        );
    }
    let list_s = t.elapsed().as_secs_f64();
    eprintln!("stand-in alone: one paged list of every kind in {list_s:.2} s");

    // 3. serve, and a client from the start.
    let kubeconfig = api.write_kubeconfig(dir);
    let expected = expected_clusters(args);
    let mut serve = Serve::spawn(args, &kubeconfig, dir.join("serve.log"))?;
    let pid = serve.pid();
    let spawned = serve.spawned;
    eprintln!(
        "serve pid {pid}: xDS {}, admin {}, log {}",
        serve.xds,
        serve.admin,
        serve.log.display()
    );
    let state = Arc::new(Mutex::new(ClientState::default()));
    let (changed_tx, mut changed) = watch::channel(0u64);
    let client = tokio::spawn(ads_client(
        serve.xds,
        state.clone(),
        changed_tx,
        spawned + args.sync_timeout,
    ));

    let started = wait_started(&mut serve, args, &state, &expected).await?;
    let since = |secs: Option<f64>| secs.map_or("never".to_string(), |s| format!("{s:.2} s"));
    eprintln!(
        "start: /readyz 200 after {}, client connected after {}, all {} clusters after {}, all their endpoints after {}",
        since(started.ready),
        since(started.connected),
        expected.len(),
        since(started.all_clusters),
        since(started.all_endpoints),
    );
    let first_list = log_line(&serve.log, "first complete list of the Kubernetes objects");
    let first_list_ms = first_list
        .as_deref()
        .and_then(|l| log_field(l, "elapsed_ms"))
        .and_then(|v| v.parse::<f64>().ok());

    // 4. Steady memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    serve.check_alive()?;
    let steady_kib = status_kib(pid, "VmRSS").unwrap_or(0);
    let hwm_kib = status_kib(pid, "VmHWM").unwrap_or(0);
    let cpu_idle0 = cpu_seconds(pid).unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_cpu = (cpu_seconds(pid).unwrap_or(0.0) - cpu_idle0) / 3.0;
    eprintln!(
        "memory: peak until synced (VmHWM) {:.0} MiB, steady (synced, idle 5 s, one client) {:.0} MiB; idle CPU {idle_cpu:.2} cores",
        mib(hwm_kib),
        mib(steady_kib)
    );

    // 5. Endpoint changes.
    let default_cla = format!("outbound|{SERVICE_PORT}||{}", host(args, 0));
    let v1_cla = (args.virtual_services > 0)
        .then(|| format!("outbound|{SERVICE_PORT}|v1|{}", host(args, 0)));
    let all_eps: Vec<String> = (0..args.endpoints)
        .map(|e| format!("{}:{POD_PORT}", pod_ip(args, 0, e)))
        .collect();
    let v1_eps: Vec<String> = (0..args.endpoints)
        .filter(|e| version(*e) == "v1")
        .map(|e| format!("{}:{POD_PORT}", pod_ip(args, 0, e)))
        .collect();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let mut rounds = Vec::new();
    let mut first_ms = Vec::new();
    let mut both_ms = Vec::new();
    let mut only_eds = true;
    for round in 1..=args.rounds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        serve.check_alive()?;
        let not_ready = (round % 2 == 1).then_some(0);
        let want_default = sorted(
            all_eps
                .iter()
                .enumerate()
                .filter(|(e, _)| Some(*e) != not_ready)
                .map(|(_, a)| a.clone())
                .collect(),
        );
        let want_v1 = sorted(
            v1_eps
                .iter()
                .filter(|a| not_ready.is_none() || **a != all_eps[0])
                .cloned()
                .collect(),
        );
        let log_from = lock(&state).log.len();
        let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
        let t0 = Instant::now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        api.apply(&slice(args, 0, not_ready));
        let deadline = t0 + Duration::from_secs(60);
        let mut first: Option<Instant> = None;
        let mut both: Option<Instant> = None;
        // The first response (time) after which the client's state has the change.
        loop {
            {
                let st = lock(&state);
                if let Some(e) = &st.error {
                    return Err(format!("round {round}: client: {e}"));
                }
                let at = st.log.last().map(|r| r.at);
                let default_ok = st.assignments.get(&default_cla) == Some(&want_default);
                let v1_ok = v1_cla.as_ref().is_none_or(|n| {
                    st.assignments
                        .get(n)
                        .map_or(want_v1.is_empty(), |e| *e == want_v1)
                });
                if default_ok && first.is_none() {
                    first = at;
                }
                if default_ok && v1_ok && both.is_none() {
                    both = at;
                }
            }
            if both.is_some() {
                break;
            }
            if Instant::now() > deadline {
                serve.check_alive()?;
                return Err(format!(
                    "round {round}: the endpoint change did not reach the client within 60 s; serve log:\n{}",
                    serve.tail()
                ));
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), changed.changed()).await;
        }
        tokio::time::sleep(args.settle).await;
        let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu0;
        let st = lock(&state);
        let after: Vec<&Received> = st.log[log_from..].iter().collect();
        let mut by_type: BTreeMap<&'static str, (usize, usize, usize, usize)> = BTreeMap::new();
        for r in &after {
            let e = by_type.entry(short(&r.type_url)).or_default();
            e.0 += 1;
            e.1 += r.resources;
            e.2 += r.removed;
            e.3 += r.bytes;
        }
        if by_type.keys().any(|t| *t != "EDS") {
            only_eds = false;
        }
        drop(st);
        let f = first.map(|t| ms(t.duration_since(t0))).unwrap_or(f64::NAN);
        let b = both.map(|t| ms(t.duration_since(t0))).unwrap_or(f64::NAN);
        first_ms.push(f);
        both_ms.push(b);
        let sent: Vec<String> = by_type
            .iter()
            .map(|(t, (n, res, rem, bytes))| {
                format!("{t}: {n} response(s), {res} resource(s), {rem} removed, {bytes} bytes")
            })
            .collect();
        eprintln!(
            "  round {round} ({}): default cluster's endpoints at the client after {f:.1} ms, v1 subset's too after {b:.1} ms; server CPU {cpu:.2} s; sent: {} (the update at unix {wall:.3}, to line it up with serve.log)",
            if not_ready.is_some() { "v1 Pod not ready" } else { "v1 Pod ready again" },
            if sent.is_empty() { "nothing".to_string() } else { sent.join("; ") },
        );
        rounds.push(json!({
            "round": round,
            "change": if not_ready.is_some() { "ready=false" } else { "ready=true" },
            "at_unix": wall,
            "first_ms": f,
            "both_ms": b,
            "server_cpu_s": cpu,
            "sent": by_type.iter().map(|(t, (n, res, rem, bytes))| (t.to_string(), json!({"responses": n, "resources": res, "removed": rem, "bytes": bytes}))).collect::<BTreeMap<_, _>>(),
        }));
    }
    let after_kib = status_kib(pid, "VmRSS").unwrap_or(0);
    let hwm_end_kib = status_kib(pid, "VmHWM").unwrap_or(0);
    let exit = serve.terminate().await;
    client.abort();
    let rejections: Vec<String> = api.rejections().iter().map(|r| r.to_string()).collect();

    let st = lock(&state);
    let result = json!({
        "scenario": "kube",
        "services": args.services,
        "virtual_services": args.virtual_services,
        "namespaces": args.namespaces,
        "endpoints_per_service": args.endpoints,
        "objects": objects,
        "expected_clusters": expected.len(),
        "clusters_at_client": st.clusters.len(),
        "assignments_at_client": st.assignments.len(),
        "listeners_at_client": st.listeners.len(),
        "routes_at_client": st.routes.len(),
        "fill_s": fill_s,
        "standin_list_s": list_s,
        "standin_lists": listed,
        "ready_s": started.ready,
        "client_connected_s": started.connected,
        "all_clusters_s": started.all_clusters,
        "all_endpoints_s": started.all_endpoints,
        "first_complete_list_ms": first_list_ms,
        "startup_cpu_s": started.cpu_s,
        "rss_samples": started.samples.iter().map(|(s, k)| json!([s, mib(*k)])).collect::<Vec<_>>(),
        "peak_sampled_mib": mib(started.peak_sampled_kib),
        "hwm_start_mib": mib(hwm_kib),
        "hwm_mib": mib(hwm_kib.max(hwm_end_kib)),
        "steady_mib": mib(steady_kib),
        "after_rounds_mib": mib(after_kib),
        "idle_cpu_cores": idle_cpu,
        "rounds": rounds,
        "change_first_median_ms": median(&first_ms),
        "change_both_median_ms": median(&both_ms),
        "only_eds": only_eds,
        "serve_exit": exit,
        "standin_rejections": rejections,
        "load_average_after": load_average(),
        "debounce": args.debounce,
    });
    Ok(result)
}

/// Poll `/readyz` and the client until both are complete; sample RSS every 100 ms.
async fn wait_started(
    serve: &mut Serve,
    args: &Args,
    state: &Mutex<ClientState>,
    expected: &BTreeSet<String>,
) -> Result<Started, String> {
    let pid = serve.pid();
    let spawned = serve.spawned;
    let deadline = spawned + args.sync_timeout;
    let mut out = Started {
        ready: None,
        connected: None,
        all_clusters: None,
        all_endpoints: None,
        peak_sampled_kib: 0,
        samples: Vec::new(),
        cpu_s: 0.0,
    };
    let mut last_sample = spawned;
    let mut last_progress = Instant::now();
    let secs = |t: Instant| t.duration_since(spawned).as_secs_f64();
    loop {
        serve.check_alive()?;
        let now = Instant::now();
        if now.duration_since(last_sample) >= Duration::from_millis(100) || out.samples.is_empty() {
            last_sample = now;
            if let Some(kib) = status_kib(pid, "VmRSS") {
                out.peak_sampled_kib = out.peak_sampled_kib.max(kib);
                out.samples.push((secs(now), kib));
            }
        }
        if out.ready.is_none() {
            if let Ok((200, _)) =
                http_get(serve.admin, "/readyz", false, Duration::from_secs(2)).await
            {
                out.ready = Some(secs(Instant::now()));
            }
        }
        {
            let st = lock(state);
            if let Some(e) = &st.error {
                return Err(format!("the ADS client failed: {e}"));
            }
            out.connected = st.connected.map(secs);
            if out.all_clusters.is_none() && expected.iter().all(|c| st.clusters.contains_key(c)) {
                out.all_clusters = st.log.last().map(|r| secs(r.at));
            }
            if out.all_clusters.is_some() && out.all_endpoints.is_none() {
                let complete = expected.iter().all(|c| match st.clusters.get(c) {
                    Some(Some(eds)) => st.assignments.get(eds).is_some_and(|e| !e.is_empty()),
                    _ => true,
                });
                if complete {
                    out.all_endpoints = st.log.last().map(|r| secs(r.at));
                }
            }
            if last_progress.elapsed() > Duration::from_secs(10) {
                last_progress = Instant::now();
                eprintln!(
                    "  {:.0} s: /readyz {}, client has {}/{} clusters, {} load assignments; serve RSS {:.0} MiB, CPU {:.1} s",
                    secs(Instant::now()),
                    if out.ready.is_some() { "200" } else { "not yet 200" },
                    expected.iter().filter(|c| st.clusters.contains_key(*c)).count(),
                    expected.len(),
                    st.assignments.len(),
                    mib(status_kib(pid, "VmRSS").unwrap_or(0)),
                    cpu_seconds(pid).unwrap_or(0.0),
                );
            }
        }
        if out.ready.is_some() && out.all_endpoints.is_some() {
            out.cpu_s = cpu_seconds(pid).unwrap_or(0.0);
            return Ok(out);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not started within {:?} (/readyz 200: {}, all clusters: {}); serve log:\n{}",
                args.sync_timeout,
                out.ready.is_some(),
                out.all_clusters.is_some(),
                serve.tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ============================== report ==============================

fn print_report(args: &Args, v: &Value) {
    let f = |key: &str, digits: usize| {
        v[key]
            .as_f64()
            .map_or("never".to_string(), |x| format!("{x:.digits$}"))
    };
    println!();
    println!(
        "## serve --kubernetes: {} Services ({} endpoints each, {} namespaces), {} VirtualServices + DestinationRules",
        args.services, args.endpoints, args.namespaces, args.virtual_services
    );
    println!();
    println!(
        "cluster: {} objects, {} expected clusters; stand-in: filled in {} s, one paged list of every kind by this process {} s",
        v["objects"], v["expected_clusters"], f("fill_s", 1), f("standin_list_s", 2)
    );
    println!();
    println!("| start (from spawning serve) | s |");
    println!("|---|---:|");
    println!(
        "| client connected to xDS | {} |",
        f("client_connected_s", 2)
    );
    println!(
        "| serve's first complete list (its own log, from the source's start) | {} |",
        v["first_complete_list_ms"]
            .as_f64()
            .map_or("?".into(), |x| format!("{:.2}", x / 1000.0))
    );
    println!("| /readyz 200 | {} |", f("ready_s", 2));
    println!(
        "| client has every expected cluster | {} |",
        f("all_clusters_s", 2)
    );
    println!(
        "| client has endpoints for every one | {} |",
        f("all_endpoints_s", 2)
    );
    println!("| serve CPU time until then | {} |", f("startup_cpu_s", 1));
    println!();
    println!(
        "client state: {} clusters, {} load assignments, {} listeners, {} route configurations",
        v["clusters_at_client"],
        v["assignments_at_client"],
        v["listeners_at_client"],
        v["routes_at_client"]
    );
    println!();
    println!(
        "memory (serve RSS): peak {} MiB until synced (VmHWM; sampled every 100 ms: {} MiB), {} MiB over the whole run (the endpoint changes included); steady {} MiB (synced, idle, one client), {} MiB after the rounds; idle CPU {} cores",
        f("hwm_start_mib", 0),
        f("peak_sampled_mib", 0),
        f("hwm_mib", 0),
        f("steady_mib", 0),
        f("after_rounds_mib", 0),
        f("idle_cpu_cores", 2),
    );
    println!();
    println!("| round | change | to the client: default cluster ms | + v1 subset ms | server CPU s | sent |");
    println!("|---:|---|---:|---:|---:|---|");
    for r in v["rounds"].as_array().into_iter().flatten() {
        let sent: Vec<String> = r["sent"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(t, s)| {
                format!(
                    "{t} {}×, {} resources, {} B",
                    s["responses"], s["resources"], s["bytes"]
                )
            })
            .collect();
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {} |",
            r["round"],
            r["change"].as_str().unwrap_or("?"),
            r["first_ms"].as_f64().unwrap_or(f64::NAN),
            r["both_ms"].as_f64().unwrap_or(f64::NAN),
            r["server_cpu_s"].as_f64().unwrap_or(f64::NAN),
            if sent.is_empty() {
                "nothing".to_string()
            } else {
                sent.join("; ")
            },
        );
    }
    println!();
    println!(
        "endpoint change → client: median {} ms (default cluster), {} ms (both load assignments); only EDS sent: {}",
        f("change_first_median_ms", 1),
        f("change_both_median_ms", 1),
        if v["only_eds"] == json!(true) { "yes" } else { "NO" }
    );
    let rejections = v["standin_rejections"].as_array().map_or(0, Vec::len);
    println!(
        "stand-in: {rejections} request(s) refused or flagged; load average after: {}",
        v["load_average_after"].as_str().unwrap_or("?")
    );
    for r in v["standin_rejections"]
        .as_array()
        .into_iter()
        .flatten()
        .take(10)
    {
        println!("  {}", r.as_str().unwrap_or("?"));
    }
}

fn main() {
    let args = parse_args();
    let dir = match tempfile::Builder::new().prefix("kube-load-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kube_load: temp dir: {e}");
            std::process::exit(1);
        }
    };
    if args.keep {
        eprintln!("keeping {}", dir.path().display());
    }
    // The stand-in has its own runtime; it is started and dropped outside ours.
    let api = KubeApiServer::start_with(kube_apiserver::Options {
        bookmark_interval: Duration::from_secs(30),
        ..Default::default()
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kube_load: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(run(&api, &args, dir.path()));
    drop(runtime);
    drop(api);
    if args.keep {
        let _ = dir.keep();
    }
    match result {
        Ok(v) => {
            print_report(&args, &v);
            if let Some(path) = &args.report {
                let line = format!("{v}\n");
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(line.as_bytes()));
                match written {
                    Ok(()) => eprintln!("results appended to {}", path.display()),
                    Err(e) => eprintln!("kube_load: cannot write {}: {e}", path.display()),
                }
            }
            if v["standin_rejections"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                eprintln!(
                    "kube_load: the stand-in refused requests a real API server would refuse"
                );
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("kube_load: {e}");
            std::process::exit(1);
        }
    }
}
