//! A real Envoy on each committed bootstrap of `envoy-configs/`, against `serve` running
//! in-process, with real HTTP backends on 127.0.0.1: the seed walkthrough end to end.
//!
//! The bootstraps are used as committed; the test only points them at the ports it picked
//! (the xDS cluster's endpoint port and the admin port). For ADS (state of the world and
//! delta), one Envoy goes through every step of issue 3:
//!
//! - (a) the first seed's baseline routes by user-agent (Mobile → v2, everyone else → v1);
//! - (b) the mirror rules: within 5 s v3 gets a copy of every non-Mobile request (Host
//!   `calcbackendsvc-shadow`), of no Mobile one, and answers no user;
//! - (c) the reset rules: the mirror stops;
//! - (d) a broken file: routing unchanged, `/debug/errors` names the file;
//! - (e) `serve` stops: Envoy keeps serving; a new `serve` on the same port with a changed
//!   config: Envoy resyncs;
//! - (f) 100 successive route changes under steady traffic: no non-2xx answer;
//! - (g) a route Envoy rejects (a regex RE2 finds too big, which Istio's validation accepts):
//!   the NACK shows on `/debug/proxies` with Envoy's message and in `/metrics`; fixing the file
//!   clears it.
//!
//! The per-type bootstrap (no ADS) gets the baseline and follows a change.
//!
//! Every wait is bounded, and every process and server is stopped on drop. Without an Envoy
//! binary the tests fail (see `common::envoy_bin`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, EnvoyProcess, HttpClient, TempDir};
use serde_json::Value;
use shadowplane::app::{start, RunningServer, ServeConfig};
use shadowplane::config_source::Debounce;

const MOBILE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148";
const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
/// The Host users send, as the VirtualService names the service.
const HOST: &str = "calcbackendsvc";
/// The Host mirrored copies arrive with (Envoy's `-shadow` suffix, the default).
const SHADOW_HOST: &str = "calcbackendsvc-shadow";
/// How long a file change may take to show in Envoy's routing.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long Envoy may take to come back to a restarted `serve` (its reconnect back-off).
const RESYNC_TIMEOUT: Duration = Duration::from_secs(20);
/// The route RE2 refuses with Envoy's default `max_program_size` (100) while the regex
/// itself is valid: Istio's validation (and ours) accepts it, Envoy NACKs the route.
const HUGE_REGEX: &str = ".*(Mobile|Android|iPhone|iPad|iPod|BlackBerry|IEMobile|Opera Mini|Windows Phone|webOS|Kindle|Silk|PlayBook|Nokia|Symbian|Fennec|Minimo).*";

// ===== the committed bootstraps, pointed at the test's ports =====

fn repo_path(rel: &str) -> PathBuf {
    common::repo_root().join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `envoy-configs/<name>` with the xDS cluster's endpoint port set to `xds_port` and the
/// admin port to 0 (Envoy picks one; `EnvoyProcess` reads it back). Everything else is as
/// committed; the committed file must point at `serve`'s default xDS address.
fn bootstrap(name: &str, xds_port: u16) -> String {
    let path = repo_path(&format!("envoy-configs/{name}"));
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    let admin = doc
        .get_mut("admin")
        .and_then(|a| a.get_mut("address"))
        .and_then(|a| a.get_mut("socket_address"))
        .and_then(|a| a.as_mapping_mut())
        .unwrap_or_else(|| panic!("{name}: no admin.address.socket_address"));
    admin.insert("port_value".into(), 0.into());

    let clusters = doc
        .get_mut("static_resources")
        .and_then(|s| s.get_mut("clusters"))
        .and_then(|c| c.as_sequence_mut())
        .unwrap_or_else(|| panic!("{name}: no static_resources.clusters"));
    let xds = clusters
        .iter_mut()
        .find(|c| c.get("name").and_then(|n| n.as_str()) == Some("xds_cluster"))
        .unwrap_or_else(|| panic!("{name}: no static cluster xds_cluster"));
    let endpoints = xds
        .get_mut("load_assignment")
        .and_then(|l| l.get_mut("endpoints"))
        .and_then(|e| e.as_sequence_mut())
        .unwrap_or_else(|| panic!("{name}: xds_cluster has no load_assignment.endpoints"));
    let mut rewritten = 0;
    for locality in endpoints.iter_mut() {
        let Some(lb_endpoints) = locality
            .get_mut("lb_endpoints")
            .and_then(|l| l.as_sequence_mut())
        else {
            continue;
        };
        for lb in lb_endpoints {
            let socket = lb
                .get_mut("endpoint")
                .and_then(|e| e.get_mut("address"))
                .and_then(|a| a.get_mut("socket_address"))
                .and_then(|s| s.as_mapping_mut())
                .unwrap_or_else(|| panic!("{name}: an xds_cluster endpoint has no socket_address"));
            let default = shadowplane::app::DEFAULT_XDS_LISTEN;
            assert_eq!(
                socket.get("address").and_then(|a| a.as_str()),
                Some(default.ip().to_string().as_str()),
                "{name}: the xDS endpoint is not serve's default address {default}"
            );
            assert_eq!(
                socket.get("port_value").and_then(|p| p.as_u64()),
                Some(u64::from(default.port())),
                "{name}: the xDS endpoint is not serve's default port {default}"
            );
            socket.insert("port_value".into(), u64::from(xds_port).into());
            rewritten += 1;
        }
    }
    assert_eq!(rewritten, 1, "{name}: expected one xds_cluster endpoint");
    serde_yaml::to_string(&doc).expect("a YAML value serializes")
}

/// A value of the committed bootstrap, for checks on what it asks for.
fn bootstrap_value(name: &str) -> serde_yaml::Value {
    let path = repo_path(&format!("envoy-configs/{name}"));
    serde_yaml::from_str(&read(&path)).expect("bootstrap YAML")
}

// ===== the config folder =====

/// `examples/calc/service-entry.yaml` with the listener on `port` and each version's
/// endpoint on its backend's port.
fn service_entry(port: u16, v1: &Backend, v2: &Backend, v3: &Backend) -> String {
    let mut text = read(&repo_path("examples/calc/service-entry.yaml"));
    for (from, to) in [
        ("number: 8080", format!("number: {port}")),
        ("http: 9001", format!("http: {}", v1.port())),
        ("http: 9002", format!("http: {}", v2.port())),
        ("http: 9003", format!("http: {}", v3.port())),
    ] {
        assert!(
            text.contains(from),
            "examples/calc/service-entry.yaml has no {from:?}"
        );
        text = text.replace(from, &to);
    }
    text
}

/// The seed's VirtualService shape: Mobile user-agents (matched by `mobile_regex`) to subset
/// `mobile`; everyone else split over `rest` (subset, weight), optionally mirrored.
fn virtual_service(
    mobile_regex: &str,
    mobile: &str,
    rest: &[(&str, u32)],
    mirror: Option<&str>,
) -> String {
    let mut s = format!(
        "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: backend-vs
  namespace: challengeistio
spec:
  hosts:
  - calcbackendsvc
  http:
  - match:
    - headers:
        user-agent:
          regex: '{mobile_regex}'
    route:
    - destination:
        host: calcbackendsvc
        subset: {mobile}
  - route:
"
    );
    for (subset, weight) in rest {
        s.push_str(&format!(
            "    - destination:\n        host: calcbackendsvc\n        subset: {subset}\n      weight: {weight}\n"
        ));
    }
    if let Some(subset) = mirror {
        s.push_str(&format!(
            "    mirror:\n      host: calcbackendsvc\n      subset: {subset}\n"
        ));
    }
    s
}

/// A VirtualService with a YAML syntax error (an unclosed flow sequence).
const BROKEN_VIRTUAL_SERVICE: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: backend-vs
  namespace: challengeistio
spec:
  hosts: [calcbackendsvc
  http:
  - route:
    - destination:
        host: calcbackendsvc
        subset: v1
";

/// The watched config folder, and a staging folder beside it so that every change lands
/// with a rename, as editors and `kubectl cp` do (serve never reads a half-written file).
struct ConfigDir {
    root: TempDir,
}

impl ConfigDir {
    fn new() -> ConfigDir {
        let root = TempDir::new("serve-envoy");
        for sub in ["config", "staging"] {
            std::fs::create_dir_all(root.path().join(sub)).expect("create config folders");
        }
        ConfigDir { root }
    }

    fn path(&self) -> PathBuf {
        self.root.path().join("config")
    }

    fn write(&self, name: &str, text: &str) {
        let staged = self.root.path().join("staging").join(name);
        std::fs::write(&staged, text).expect("write a staged config file");
        std::fs::rename(&staged, self.path().join(name)).expect("move a config file in place");
    }

    fn remove(&self, name: &str) {
        let path = self.path().join(name);
        if path.exists() {
            std::fs::remove_file(&path).expect("remove a config file");
        }
    }

    /// Make the folder hold `examples/calc/<step>/*` (and the ServiceEntry): the
    /// DestinationRule first, so that no reading has a route to a subset not defined yet.
    fn use_step(&self, step: &str) {
        let dir = repo_path(&format!("examples/calc/{step}"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort_by_key(|n| (n != "destination-rule.yaml", n.clone()));
        for name in ["deployment-v3.yaml"] {
            if !names.iter().any(|n| n == name) {
                self.remove(name);
            }
        }
        for name in &names {
            self.write(name, &read(&dir.join(name)));
        }
    }
}

// ===== serve =====

fn serve_config(config: &Path, xds_listen: SocketAddr) -> ServeConfig {
    let mut cfg = ServeConfig::new(vec![config.to_path_buf()]);
    cfg.xds_listen = xds_listen;
    cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
    // The listeners bind to loopback only (the bootstraps send no BIND_ADDRESS).
    cfg.options.bind_address = "127.0.0.1".to_string();
    cfg.debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
    };
    cfg.phase_timeout = Duration::from_secs(1);
    cfg.drain_timeout = Duration::from_secs(2);
    cfg
}

/// Start `serve`; the xDS port may still be held for a moment by a server just stopped, so
/// a taken port is retried (bounded).
fn start_serve(
    rt: &tokio::runtime::Runtime,
    config: &Path,
    xds_listen: SocketAddr,
) -> RunningServer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                start(serve_config(config, xds_listen)),
            )
            .await
        });
        match started {
            Ok(Ok(server)) => return server,
            Ok(Err(e)) if Instant::now() < deadline => {
                eprintln!("serve did not start yet ({e}); retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(Err(e)) => panic!("serve does not start on {xds_listen}: {e}"),
            Err(_) => panic!("serve did not start within 10s"),
        }
    }
}

fn admin_get(server: &RunningServer, path: &str) -> String {
    let (status, body) = common::simple_get(server.admin_addr(), path, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("serve admin {path}: {e}"));
    assert_eq!(status, 200, "serve admin {path}: {body}");
    body
}

fn proxies(server: &RunningServer) -> Vec<Value> {
    let body = admin_get(server, "/debug/proxies");
    let json: Value = serde_json::from_str(&body).expect("/debug/proxies is JSON");
    json["proxies"].as_array().cloned().unwrap_or_default()
}

/// The value of one sample of `/metrics` (`name{labels}` exactly as printed).
fn metric(server: &RunningServer, series: &str) -> Option<f64> {
    admin_get(server, "/metrics").lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Retry `check` until it returns `Ok` or `within` has passed (then panic with the last
/// reason).
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

// ===== one Envoy, three backends, serve =====

struct Rig {
    rt: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    xds_addr: SocketAddr,
    config: ConfigDir,
    v1: Backend,
    v2: Backend,
    v3: Backend,
    /// The listener port (the ServiceEntry's port).
    port: u16,
    envoy: EnvoyProcess,
    client: HttpClient,
    node_id: String,
}

impl Rig {
    /// Backends v1–v3, the ServiceEntry and `examples/calc/baseline`, `serve`, and an Envoy
    /// on `envoy-configs/<bootstrap_name>` with its listener up.
    fn start(bootstrap_name: &str) -> Rig {
        let (v1, v2, v3) = (
            Backend::start("v1"),
            Backend::start("v2"),
            Backend::start("v3"),
        );
        let port = common::free_port();
        let config = ConfigDir::new();
        config.write("service-entry.yaml", &service_entry(port, &v1, &v2, &v3));
        config.use_step("baseline");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let server = start_serve(&rt, &config.path(), "127.0.0.1:0".parse().expect("addr"));
        let xds_addr = server.xds_addr();
        let node_id = bootstrap_value(bootstrap_name)["node"]["id"]
            .as_str()
            .expect("node.id")
            .to_string();
        let mut envoy = EnvoyProcess::start(&bootstrap(bootstrap_name, xds_addr.port()));
        envoy.wait_for_listener(port);
        Rig {
            rt,
            server: Some(server),
            xds_addr,
            config,
            v1,
            v2,
            v3,
            port,
            envoy,
            client: HttpClient::new(),
            node_id,
        }
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("serve is running")
    }

    fn backends(&self) -> [&Backend; 3] {
        [&self.v1, &self.v2, &self.v3]
    }

    fn clear(&self) {
        for b in self.backends() {
            b.clear();
        }
    }

    /// One request through Envoy; `Err` on a transport error or a non-200 answer.
    fn try_send(&self, user_agent: &str, path: &str) -> Result<String, String> {
        let r = self.client.try_request(
            "GET",
            self.port,
            HOST,
            path,
            &[("user-agent", user_agent)],
            Vec::new(),
        )?;
        if r.status != 200 {
            return Err(format!("{path}: {} {}", r.status, r.body_string()));
        }
        r.header("x-backend-version")
            .map(str::to_string)
            .ok_or_else(|| format!("{path}: no x-backend-version header"))
    }

    /// The backend that answered a request (which must succeed).
    fn send(&self, user_agent: &str, path: &str) -> String {
        self.try_send(user_agent, path)
            .unwrap_or_else(|e| panic!("request through envoy failed: {e}\n{}", self.context()))
    }

    /// The routing `mobile` / `desktop` answer with, checked over a few requests each.
    fn assert_routing(&self, mobile: &str, desktop: &str, label: &str) {
        for i in 0..3 {
            assert_eq!(
                self.send(MOBILE, &format!("/{label}/mobile/{i}")),
                mobile,
                "{label}: a Mobile request"
            );
            assert_eq!(
                self.send(DESKTOP, &format!("/{label}/desktop/{i}")),
                desktop,
                "{label}: a non-Mobile request"
            );
        }
    }

    /// Wait until non-Mobile requests are answered by `desktop` (and Mobile ones by `mobile`).
    fn wait_routing(&self, mobile: &str, desktop: &str, label: &str, within: Duration) {
        let mut n = 0;
        eventually(label, within, || {
            n += 1;
            let d = self.try_send(DESKTOP, &format!("/{label}/wait/{n}"))?;
            let m = self.try_send(MOBILE, &format!("/{label}/wait-mobile/{n}"))?;
            if d == desktop && m == mobile {
                Ok(())
            } else {
                Err(format!("desktop answered by {d}, mobile by {m}"))
            }
        });
        self.assert_routing(mobile, desktop, label);
    }

    /// Whether v3 receives copies of non-Mobile requests now: sends one and waits a little.
    fn mirrored_now(&self, path: &str) -> bool {
        let before = self.v3.count();
        self.send(DESKTOP, path);
        self.v3
            .wait_for(before + 1, Duration::from_millis(300))
            .iter()
            .any(|r| r.path == path)
    }

    /// This Envoy's streams on `/debug/proxies`.
    fn streams(&self) -> Vec<Value> {
        proxies(self.server())
            .into_iter()
            .filter(|p| p["node_id"] == self.node_id.as_str())
            .collect()
    }

    /// What to print when something fails: serve's view and Envoy's stderr.
    fn context(&self) -> String {
        let errors = self
            .server
            .as_ref()
            .map(|s| admin_get(s, "/debug/errors"))
            .unwrap_or_else(|| "serve is stopped".to_string());
        format!(
            "--- serve /debug/errors ---\n{errors}\n--- envoy stderr (tail) ---\n{}",
            tail(&self.envoy.stderr(), 40)
        )
    }

    fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt
                .block_on(server.shutdown())
                .expect("serve shuts down cleanly");
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.rt.block_on(server.shutdown());
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ===== the steps =====

/// (a) The baseline: Mobile → v2, everyone else → v1, nobody mirrored.
fn step_baseline_routes_by_user_agent(rig: &Rig) {
    rig.assert_routing("v2", "v1", "baseline");
    let v3 = rig
        .v3
        .wait_quiet(Duration::from_millis(200), Duration::from_secs(1));
    assert!(v3.is_empty(), "v3 got requests in the baseline: {v3:?}");
}

/// (b) The mirror rules: within 5 s, every non-Mobile request is copied to v3 with the
/// `-shadow` Host; Mobile requests are not; users are answered by v1 and v2 only.
fn step_mirror_copies_every_non_mobile_request(rig: &Rig) {
    rig.config.use_step("mirror");
    let mut n = 0;
    eventually("v3 gets a mirrored copy", CHANGE_TIMEOUT, || {
        n += 1;
        if rig.mirrored_now(&format!("/mirror/probe/{n}")) {
            Ok(())
        } else {
            Err("no copy at v3".to_string())
        }
    });

    rig.clear();
    let count = 20;
    for i in 0..count {
        let desktop = rig.send(DESKTOP, &format!("/mirror/desktop/{i}"));
        assert_eq!(desktop, "v1", "a non-Mobile user must be answered by v1");
        let mobile = rig.send(MOBILE, &format!("/mirror/mobile/{i}"));
        assert_eq!(mobile, "v2", "a Mobile user must be answered by v2");
    }
    rig.v3.wait_for(count, Duration::from_secs(5));
    let copies = rig
        .v3
        .wait_quiet(Duration::from_millis(300), Duration::from_secs(2));
    // (A copy of a probe sent before the batch may still trickle in: only the batch counts.)
    let copies: Vec<_> = copies
        .into_iter()
        .filter(|r| !r.path.starts_with("/mirror/probe/"))
        .collect();
    let mut paths: Vec<&str> = copies.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    let mut expected: Vec<String> = (0..count).map(|i| format!("/mirror/desktop/{i}")).collect();
    expected.sort();
    assert_eq!(
        paths, expected,
        "v3 must get exactly one copy of every non-Mobile request and none of the Mobile ones"
    );
    for r in &copies {
        assert_eq!(r.host.as_deref(), Some(SHADOW_HOST), "mirrored copy {r:?}");
    }
    for r in rig.v1.requests() {
        assert_eq!(r.host.as_deref(), Some(HOST), "a user request at v1: {r:?}");
        assert!(r.path.starts_with("/mirror/desktop/"), "v1 got {}", r.path);
    }
    for r in rig.v2.requests() {
        assert!(r.path.starts_with("/mirror/mobile/"), "v2 got {}", r.path);
    }
}

/// (c) The reset rules: the mirror stops.
fn step_reset_removes_the_mirror(rig: &Rig) {
    rig.config.use_step("reset");
    let mut n = 0;
    eventually("the mirror stops", CHANGE_TIMEOUT, || {
        n += 1;
        if rig.mirrored_now(&format!("/reset/probe/{n}")) {
            return Err("v3 still gets copies".to_string());
        }
        // A copy may lag: check a batch with a longer look.
        rig.v3.clear();
        for i in 0..5 {
            rig.send(DESKTOP, &format!("/reset/check/{n}/{i}"));
        }
        let late = rig
            .v3
            .wait_quiet(Duration::from_millis(300), Duration::from_secs(1));
        if late.is_empty() {
            Ok(())
        } else {
            Err(format!("v3 got {} copies", late.len()))
        }
    });
    rig.assert_routing("v2", "v1", "reset");
}

/// A change to clusters alone (a DestinationRule's connect timeout: CDS changes, every
/// ClusterLoadAssignment stays the same) is active in Envoy at once: the re-created EDS
/// clusters finish warming instead of waiting for endpoints that the server thinks Envoy
/// already has (Envoy's initial fetch timeout is 15 s; this waits 5).
fn step_cluster_change_alone_is_active_at_once(rig: &Rig) {
    let reset = read(&repo_path("examples/calc/reset/destination-rule.yaml"));
    let with_timeout = reset.replace(
        "spec:\n  host: calcbackendsvc\n",
        "spec:\n  host: calcbackendsvc\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        connectTimeout: 3s\n",
    );
    assert_ne!(
        with_timeout, reset,
        "the DestinationRule gained a traffic policy"
    );
    let subset_v1 = format!(
        "outbound|{}|v1|calcbackendsvc.challengeistio.svc.cluster.local",
        rig.port
    );
    let active_timeout = || -> Result<String, String> {
        let (status, body) = rig
            .envoy
            .admin_get("/config_dump?resource=dynamic_active_clusters");
        if status != 200 {
            return Err(format!("config_dump answered {status}"));
        }
        let dump: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["cluster"]["name"] == subset_v1.as_str())
            .map(|c| {
                c["cluster"]["connect_timeout"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .ok_or_else(|| format!("no active cluster {subset_v1}"))
    };
    let warming = || -> usize {
        let (_, body) = rig
            .envoy
            .admin_get("/config_dump?resource=dynamic_warming_clusters");
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|d| d["configs"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let before = active_timeout().unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    assert_eq!(
        before, "10s",
        "Istio's default connect timeout before the change"
    );
    for (label, text, expected) in [("timeout", &with_timeout, "3s"), ("default", &reset, "10s")] {
        rig.config.write("destination-rule.yaml", text);
        eventually(
            &format!("the {label} connect timeout is active with no cluster warming"),
            CHANGE_TIMEOUT,
            || {
                let now = active_timeout()?;
                let warming = warming();
                if now == expected && warming == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "active connect_timeout {now}, {warming} cluster(s) warming"
                    ))
                }
            },
        );
        rig.assert_routing("v2", "v1", &format!("cluster-{label}"));
    }
}

/// (d) A broken file: `serve` rejects it (naming the file), Envoy keeps its routing; the
/// fix is taken again.
fn step_broken_file_keeps_the_last_good_routing(rig: &Rig) {
    rig.config
        .write("virtual-service.yaml", BROKEN_VIRTUAL_SERVICE);
    let errors = eventually("serve reports the broken file", CHANGE_TIMEOUT, || {
        let errors = admin_get(rig.server(), "/debug/errors");
        if errors.contains("config rejected") {
            Ok(errors)
        } else {
            Err(errors)
        }
    });
    assert!(
        errors.contains("virtual-service.yaml"),
        "/debug/errors must name the broken file:\n{errors}"
    );
    rig.assert_routing("v2", "v1", "broken");
    rig.v3.clear();
    for i in 0..5 {
        rig.send(DESKTOP, &format!("/broken/{i}"));
    }
    let v3 = rig
        .v3
        .wait_quiet(Duration::from_millis(300), Duration::from_secs(1));
    assert!(v3.is_empty(), "a broken file turned a mirror on: {v3:?}");

    rig.config.use_step("reset");
    eventually("serve takes the fixed file", CHANGE_TIMEOUT, || {
        let errors = admin_get(rig.server(), "/debug/errors");
        if errors.starts_with("no config errors") {
            Ok(())
        } else {
            Err(errors)
        }
    });
}

/// (e) `serve` stops: Envoy keeps serving what it has. A new `serve` on the same xDS port
/// with a changed config (non-Mobile → v3): Envoy reconnects and follows it.
fn step_restart_keeps_envoy_serving_and_resyncs(rig: &mut Rig) {
    rig.shutdown();
    std::thread::sleep(Duration::from_millis(300));
    rig.assert_routing("v2", "v1", "serve-down");

    rig.config.use_step("mirror");
    rig.config.write(
        "virtual-service.yaml",
        &virtual_service(".*Mobile.*", "v2", &[("v3", 100)], None),
    );
    rig.server = Some(start_serve(&rig.rt, &rig.config.path(), rig.xds_addr));
    rig.wait_routing("v2", "v3", "restarted", RESYNC_TIMEOUT);
    let streams = eventually(
        "envoy reconnected to the new serve",
        CHANGE_TIMEOUT,
        || match rig.streams() {
            s if s.is_empty() => Err("not on /debug/proxies".to_string()),
            s => Ok(s),
        },
    );
    assert!(!streams.is_empty());
}

/// (f) 100 route changes (the non-Mobile split between v1 and v2 flipping, one every
/// ~75 ms) while traffic flows: every request is answered 200.
fn step_route_changes_under_load_never_fail_a_request(rig: &Rig) {
    let reloads_before = metric(
        rig.server(),
        "shadowplane_config_reloads_total{result=\"applied\"}",
    )
    .unwrap_or(0.0);
    let stop = Arc::new(AtomicBool::new(false));
    let port = rig.port;
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let client = HttpClient::new();
            let (mut sent, mut failures) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(40);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                sent += 1;
                let ua = if sent % 4 == 0 { MOBILE } else { DESKTOP };
                match client.try_request(
                    "GET",
                    port,
                    HOST,
                    &format!("/load/{sent}"),
                    &[("user-agent", ua)],
                    Vec::new(),
                ) {
                    Ok(r) if (200..300).contains(&r.status) => {}
                    Ok(r) => {
                        failures.push(format!("/load/{sent}: {} {}", r.status, r.body_string()))
                    }
                    Err(e) => failures.push(format!("/load/{sent}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (sent, failures)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..100 {
        let split: &[(&str, u32)] = if i % 2 == 0 {
            &[("v1", 20), ("v2", 80)]
        } else {
            &[("v1", 80), ("v2", 20)]
        };
        rig.config.write(
            "virtual-service.yaml",
            &virtual_service(".*Mobile.*", "v2", split, None),
        );
        std::thread::sleep(Duration::from_millis(75));
    }
    // The last change reaches Envoy under traffic too.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = traffic.join().expect("traffic thread");
    assert!(sent > 100, "only {sent} requests were sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed during 100 route changes: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        rig.context()
    );
    let reloads = metric(
        rig.server(),
        "shadowplane_config_reloads_total{result=\"applied\"}",
    )
    .unwrap_or(0.0)
        - reloads_before;
    assert!(
        reloads >= 20.0,
        "only {reloads} of the 100 changes were applied (debounce: 50 ms)"
    );
    for b in [&rig.v1, &rig.v2] {
        assert!(
            b.requests().iter().any(|r| r.path.starts_with("/load/")),
            "{} got no traffic during the route changes",
            b.name()
        );
    }
}

/// The route-configuration status of this Envoy's stream(s): `(sync, last NACK message)`.
fn route_status(rig: &Rig) -> Vec<(String, String)> {
    let route = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    rig.streams()
        .iter()
        .flat_map(|p| p["types"].as_array().cloned().unwrap_or_default())
        .filter(|t| t["type_url"] == route)
        .map(|t| {
            (
                t["sync"].as_str().unwrap_or("").to_string(),
                t["last_nack"]["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// (g) A VirtualService Envoy rejects: the NACK (with Envoy's message) is on
/// `/debug/proxies`, `/debug/errors` and `/metrics`, Envoy keeps its routing; fixing the file
/// clears it.
fn step_nack_is_visible_and_clears_when_fixed(rig: &Rig) {
    let nacks_series = "shadowplane_xds_requests_total{result=\"nack\"}";
    let nacks_before = metric(rig.server(), nacks_series).unwrap_or(0.0);
    rig.config.write(
        "virtual-service.yaml",
        &virtual_service(HUGE_REGEX, "v1", &[("v2", 100)], None),
    );
    let status = eventually("envoy's NACK on /debug/proxies", CHANGE_TIMEOUT, || {
        let status = route_status(rig);
        if status.iter().any(|(sync, _)| sync == "NACKED") {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    });
    let (_, message) = status
        .iter()
        .find(|(sync, _)| sync == "NACKED")
        .expect("a NACKED route type");
    assert!(
        message.contains("program size"),
        "the NACK should carry Envoy's message about the regex: {message:?}"
    );
    let nacks = metric(rig.server(), nacks_series).unwrap_or(0.0);
    assert!(
        nacks > nacks_before,
        "/metrics {nacks_series} did not count the NACK ({nacks_before} → {nacks})"
    );
    // The control loop records NACKs on its next look (every 200 ms at most).
    eventually("the NACK on /debug/errors", CHANGE_TIMEOUT, || {
        let errors = admin_get(rig.server(), "/debug/errors");
        if errors.contains(&format!("node {} rejected", rig.node_id))
            && errors.contains("program size")
        {
            Ok(())
        } else {
            Err(errors)
        }
    });
    // Envoy kept the routes it had (non-Mobile → v1/v2 split, Mobile → v2).
    assert_eq!(rig.send(MOBILE, "/nacked/mobile"), "v2");

    // Fixed: the route is taken and the NACK state clears.
    rig.config.write(
        "virtual-service.yaml",
        &virtual_service(".*Mobile.*", "v1", &[("v2", 100)], None),
    );
    rig.wait_routing("v1", "v2", "nack-fixed", CHANGE_TIMEOUT);
    eventually("the NACK clears on /debug/proxies", CHANGE_TIMEOUT, || {
        let status = route_status(rig);
        if !status.is_empty() && status.iter().all(|(sync, _)| sync == "SYNCED") {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    });
}

/// Every step on one Envoy that gets everything over one ADS stream.
fn ads_scenario(bootstrap_name: &str, api_type: &str) {
    let committed = bootstrap_value(bootstrap_name);
    assert_eq!(
        committed["dynamic_resources"]["ads_config"]["api_type"].as_str(),
        Some(api_type),
        "{bootstrap_name} is not the {api_type} ADS bootstrap"
    );
    let mut rig = Rig::start(bootstrap_name);
    step_baseline_routes_by_user_agent(&rig);
    let streams = rig.streams();
    assert_eq!(streams.len(), 1, "one ADS stream: {streams:?}");
    assert_eq!(streams[0]["group"], "namespace=challengeistio");

    step_mirror_copies_every_non_mobile_request(&rig);
    step_reset_removes_the_mirror(&rig);
    step_cluster_change_alone_is_active_at_once(&rig);
    step_broken_file_keeps_the_last_good_routing(&rig);
    step_restart_keeps_envoy_serving_and_resyncs(&mut rig);
    step_route_changes_under_load_never_fail_a_request(&rig);
    step_nack_is_visible_and_clears_when_fixed(&rig);
    rig.shutdown();
}

#[test]
fn envoy_on_ads_sotw_bootstrap_follows_the_seed_walkthrough() {
    ads_scenario("ads-sotw.yaml", "GRPC");
}

#[test]
fn envoy_on_ads_delta_bootstrap_follows_the_seed_walkthrough() {
    ads_scenario("ads-delta.yaml", "DELTA_GRPC");
}

/// The bootstrap without ADS: LDS and CDS streams, then RDS and EDS on the same server
/// (`config_source: {api_config_source: ...}` to `xds_cluster`), the baseline, and a change followed.
#[test]
fn envoy_on_per_type_bootstrap_gets_the_baseline_and_follows_a_change() {
    let committed = bootstrap_value("xds-per-type.yaml");
    assert!(
        committed["dynamic_resources"].get("ads_config").is_none(),
        "xds-per-type.yaml must not use ADS"
    );
    let rig = Rig::start("xds-per-type.yaml");
    step_baseline_routes_by_user_agent(&rig);

    // Per-type streams only (LDS, CDS, and RDS and EDS to the same xds_cluster), all in the
    // view with the gRPC config source, all in sync.
    let streams = eventually("per-type streams for every type", CHANGE_TIMEOUT, || {
        let streams = rig.streams();
        let mut types: Vec<String> = streams
            .iter()
            .flat_map(|s| s["types"].as_array().cloned().unwrap_or_default())
            .filter(|t| t["sync"] == "SYNCED")
            .map(|t| t["type_url"].as_str().unwrap_or("").to_string())
            .collect();
        types.sort();
        types.dedup();
        if types
            == [
                "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "type.googleapis.com/envoy.config.listener.v3.Listener",
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ]
        {
            Ok(streams)
        } else {
            Err(format!("synced types {types:?} on {streams:?}"))
        }
    });
    for s in &streams {
        assert_eq!(s["group"], "config_source=grpc:xds_cluster", "{s}");
        assert_eq!(s["transport"], "sotw", "{s}");
        assert_eq!(s["types"].as_array().map(Vec::len), Some(1), "{s}");
    }

    step_mirror_copies_every_non_mobile_request(&rig);
    // A route change: non-Mobile users move to v2.
    rig.config.write(
        "virtual-service.yaml",
        &virtual_service(".*Mobile.*", "v2", &[("v2", 100)], None),
    );
    rig.wait_routing("v2", "v2", "per-type-moved", CHANGE_TIMEOUT);
}
