//! `shadowplane forward` as a user runs it, with real backends on 127.0.0.1:
//!
//! - `--config` (the calc mirror walkthrough, with the ServiceEntry's ports rewritten to free
//!   ones): requests are routed (Mobile → v2, others → v1) and copied to v3 with the
//!   `-shadow` Host; a file change is picked up (the reset step stops the copies); SIGTERM →
//!   exit 0;
//! - `--xds` against `serve` (in-process): the forwarder shows up on serve's
//!   `/debug/proxies` with its node id and metadata and routes like the config says;
//!   SIGTERM → exit 0;
//! - usage problems and a taken admin port exit 2 with a message naming the flag.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::ShadowplaneProcess;
use common::{Backend, HttpClient};
use shadowplane::app::{start, ServeConfig};
use shadowplane::config_source::Debounce;

const MOBILE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148";
const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `shadowplane forward` (killed on drop if the test did not stop it).
struct Forward(ShadowplaneProcess);

impl std::ops::Deref for Forward {
    type Target = ShadowplaneProcess;
    fn deref(&self) -> &ShadowplaneProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Forward {
    fn deref_mut(&mut self) -> &mut ShadowplaneProcess {
        &mut self.0
    }
}

impl Forward {
    fn start(args: &[&str]) -> Forward {
        Forward(ShadowplaneProcess::start(&[&["forward"], args].concat()))
    }

    /// The admin address from the startup line (the port is picked by the OS).
    fn admin(&mut self) -> SocketAddr {
        let line = self.wait_for_line("admin on http://", START_TIMEOUT);
        let start = line.find("admin on http://").expect("prefix") + 16;
        let addr = line[start..].split('/').next().unwrap_or("");
        addr.parse()
            .unwrap_or_else(|e| panic!("admin address {addr:?} in {line:?}: {e}"))
    }

    /// Poll the admin `/ready` until it answers 200 (bounded).
    fn wait_ready(&mut self) -> SocketAddr {
        let admin = self.admin();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match common::simple_get(admin, "/ready", Duration::from_secs(2)) {
                Ok((200, _)) => return admin,
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "/ready not 200 within {START_TIMEOUT:?}; last: {last}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn read(rel: &str) -> String {
    let path = common::repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `examples/calc/service-entry.yaml` with the listener on `port` and each version's endpoint
/// on its backend's port (the example's fixed 8080 and 9001–9003 may be taken here).
fn service_entry(port: u16, v1: &Backend, v2: &Backend, v3: &Backend) -> String {
    let mut text = read("examples/calc/service-entry.yaml");
    for (from, to) in [
        ("number: 8080", format!("number: {port}")),
        ("http: 9001", format!("http: {}", v1.port())),
        ("http: 9002", format!("http: {}", v2.port())),
        ("http: 9003", format!("http: {}", v3.port())),
    ] {
        assert!(text.contains(from), "the example has no {from:?}");
        text = text.replace(from, &to);
    }
    text
}

/// Write `examples/calc/<step>/{destination-rule,virtual-service}.yaml` into `dir` (through
/// a rename, so the watcher never reads half a file).
fn use_step(dir: &Path, step: &str) {
    for name in ["destination-rule.yaml", "virtual-service.yaml"] {
        let staged = dir.with_extension("staging");
        std::fs::create_dir_all(&staged).expect("staging dir");
        let tmp = staged.join(name);
        std::fs::write(&tmp, read(&format!("examples/calc/{step}/{name}"))).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename into place");
    }
}

struct Backends {
    v1: Backend,
    v2: Backend,
    v3: Backend,
}

impl Backends {
    fn start() -> Backends {
        Backends {
            v1: Backend::start("v1"),
            v2: Backend::start("v2"),
            v3: Backend::start("v3"),
        }
    }
}

/// Send one request to 127.0.0.1:`port`; the backend that answered (200 required).
fn send(client: &HttpClient, port: u16, user_agent: &str, path: &str, f: &Forward) -> String {
    let r = client
        .try_request(
            "GET",
            port,
            "calcbackendsvc",
            path,
            &[("user-agent", user_agent)],
            Vec::new(),
        )
        .unwrap_or_else(|e| panic!("{path}: {e}; forward stderr:\n{}", f.stderr()));
    assert_eq!(r.status, 200, "{path}: {}", r.body_string());
    r.header("x-backend-version").unwrap_or("").to_string()
}

/// The mirror walkthrough's routing and copies through the forwarder on `port`.
fn assert_mirror_step(b: &Backends, client: &HttpClient, port: u16, f: &Forward) {
    b.v3.clear();
    for i in 0..3 {
        assert_eq!(send(client, port, DESKTOP, &format!("/d/{i}"), f), "v1");
        assert_eq!(send(client, port, MOBILE, &format!("/m/{i}"), f), "v2");
    }
    let copies = b.v3.wait_for(3, Duration::from_secs(5));
    let mut paths: Vec<&str> = copies.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        ["/d/0", "/d/1", "/d/2"],
        "v3 got a copy of each desktop request only"
    );
    for c in &copies {
        assert_eq!(c.host.as_deref(), Some("calcbackendsvc-shadow"), "{c:?}");
        assert_eq!(c.header("user-agent"), Some(DESKTOP), "{c:?}");
    }
}

#[test]
fn forward_config_routes_mirrors_reloads_and_stops_on_sigterm() {
    let b = Backends::start();
    let port = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("service-entry.yaml"),
        service_entry(port, &b.v1, &b.v2, &b.v3),
    )
    .expect("write the service entry");
    use_step(&config, "mirror");

    let mut f = Forward::start(&[
        "--config",
        config.to_str().expect("utf-8 temp path"),
        "--bind-address",
        "127.0.0.1",
        "--admin-listen",
        "127.0.0.1:0",
        "--concurrency",
        "1",
        "--debounce",
        "50ms",
    ]);
    let admin = f.wait_ready();
    let client = HttpClient::new();
    assert_mirror_step(&b, &client, port, &f);

    // Metrics and the mirror page are served on the admin address.
    let (status, metrics) =
        common::simple_get(admin, "/metrics", Duration::from_secs(5)).expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("calcbackendsvc"),
        "metrics name the clusters:\n{metrics}"
    );

    // The reset step: no more copies (the watched folder is reloaded).
    use_step(&config, "reset");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        b.v3.clear();
        let path = format!("/after-reset/{n}");
        assert_eq!(send(&client, port, DESKTOP, &path, &f), "v1");
        std::thread::sleep(Duration::from_millis(300));
        if !b.v3.requests().iter().any(|r| r.path == path) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reset config was not applied within 10 s; stderr:\n{}",
            f.stderr()
        );
    }
    assert_eq!(send(&client, port, MOBILE, "/after-reset/m", &f), "v2");

    f.sigterm();
    let code = f.wait_exit(STOP_TIMEOUT);
    assert_eq!(code, 0, "exit code after SIGTERM; stderr:\n{}", f.stderr());
    assert!(
        f.stderr().contains("stopping"),
        "stderr says it stops:\n{}",
        f.stderr()
    );
}

#[test]
fn forward_xds_follows_serve_and_stops_on_sigterm() {
    let b = Backends::start();
    let port = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("service-entry.yaml"),
        service_entry(port, &b.v1, &b.v2, &b.v3),
    )
    .expect("write the service entry");
    use_step(&config, "mirror");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut cfg = ServeConfig::new(vec![config.clone()]);
    cfg.xds_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.admin_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
    };
    let server = rt.block_on(start(cfg)).expect("serve starts");

    let xds = server.xds_addr().to_string();
    let mut f = Forward::start(&[
        "--xds",
        &xds,
        "--node-id",
        "cli-forwarder",
        "--namespace",
        "challengeistio",
        "--bind-address",
        "127.0.0.1",
        "--admin-listen",
        "127.0.0.1:0",
        "--concurrency",
        "2",
    ]);
    f.wait_ready();
    let client = HttpClient::new();
    assert_mirror_step(&b, &client, port, &f);

    let (status, body) = common::simple_get(
        server.admin_addr(),
        "/debug/proxies",
        Duration::from_secs(5),
    )
    .expect("serve's /debug/proxies");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let me = json["proxies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["node_id"] == "cli-forwarder"))
        .unwrap_or_else(|| panic!("the forwarder is not on /debug/proxies: {body}"));
    assert_eq!(me["node_metadata"]["NAMESPACE"], "challengeistio", "{me}");
    assert_eq!(me["node_metadata"]["BIND_ADDRESS"], "127.0.0.1", "{me}");
    assert_eq!(me["node_cluster"], "shadowplane-forwarder", "{me}");
    assert!(
        me["transport"].to_string().to_lowercase().contains("delta"),
        "delta ADS by default: {me}"
    );

    f.sigterm();
    assert_eq!(f.wait_exit(STOP_TIMEOUT), 0, "stderr:\n{}", f.stderr());
    rt.block_on(server.shutdown()).expect("serve stops");
}

#[test]
fn forward_usage_problems_exit_2() {
    // Neither source.
    let mut f = Forward::start(&[]);
    assert_eq!(f.wait_exit(STOP_TIMEOUT), 2);
    let err = f.stderr();
    assert!(err.contains("--xds") && err.contains("--config"), "{err}");

    // --xds without a node id.
    let mut f = Forward::start(&["--xds", "127.0.0.1:1"]);
    assert_eq!(f.wait_exit(STOP_TIMEOUT), 2);
    assert!(f.stderr().contains("--node-id"), "{}", f.stderr());

    // The admin port is taken: exit 2 naming the address and the flag.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Forward::start(&[
        "--config",
        dir.path().to_str().expect("utf-8"),
        "--admin-listen",
        &addr,
    ]);
    assert_eq!(f.wait_exit(STOP_TIMEOUT), 2);
    let err = f.stderr();
    assert!(
        err.contains(&addr) && err.contains("--admin-listen"),
        "{err}"
    );
}
