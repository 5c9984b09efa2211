//! `shadowplane serve` as a user runs it: the process starts on the given ports, answers
//! /healthz and /readyz, reloads a fixed config, stops cleanly on SIGTERM, and exits 2 naming
//! the address and the flag when a port is taken.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::ShadowplaneProcess;

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
";

/// A field Istio does not have: an error that blocks serving.
const BROKEN: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: calc
  namespace: demo
spec:
  hostz:
  - calc.demo.svc.cluster.local
";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `shadowplane serve` (killed on drop if the test did not stop it).
struct Serve(ShadowplaneProcess);

impl std::ops::Deref for Serve {
    type Target = ShadowplaneProcess;
    fn deref(&self) -> &ShadowplaneProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut ShadowplaneProcess {
        &mut self.0
    }
}

impl Serve {
    fn start(config: &Path, extra: &[&str]) -> Serve {
        let mut cmd = ShadowplaneProcess::command();
        cmd.arg("serve").arg("--config").arg(config).args(extra);
        Serve(ShadowplaneProcess::spawn(cmd))
    }

    /// The xDS and admin addresses from the startup line (the ports are picked by the OS).
    fn addresses(&mut self) -> (SocketAddr, SocketAddr) {
        let line = self.wait_for_line("serving xDS on ", START_TIMEOUT);
        let xds = word_after(&line, "serving xDS on ");
        let admin = word_after(&line, "admin on http://");
        let xds = xds.parse().expect("xDS address in the startup line");
        let admin = admin
            .trim_end_matches('/')
            .parse()
            .expect("admin address in the startup line");
        (xds, admin)
    }
}

fn word_after<'a>(line: &'a str, prefix: &str) -> &'a str {
    let start = line.find(prefix).expect("prefix in line") + prefix.len();
    line[start..].split_whitespace().next().unwrap_or("")
}

/// `GET path` over HTTP/1.1: (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Poll `path` until it answers `want` (bounded); the last body.
fn wait_for_status(addr: SocketAddr, path: &str, want: u16, serve: &Serve) -> String {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let last = match get(addr, path) {
            Ok((status, body)) if status == want => return body,
            Ok((status, body)) => format!("{status} {body}"),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{path} did not answer {want} within {START_TIMEOUT:?}; last: {last}; stderr:\n{}",
            serve.stderr()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn config_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), text).expect("write config");
    dir
}

const EPHEMERAL: [&str; 4] = [
    "--xds-listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
];

#[test]
fn serve_is_healthy_ready_and_stops_cleanly_on_sigterm() {
    let dir = config_dir(SERVICE_ENTRY);
    let mut serve = Serve::start(dir.path(), &EPHEMERAL);
    let (xds, admin) = serve.addresses();
    assert_eq!(wait_for_status(admin, "/healthz", 200, &serve), "ok\n");
    wait_for_status(admin, "/readyz", 200, &serve);
    TcpStream::connect_timeout(&xds, Duration::from_secs(2)).expect("xDS port accepts");
    let (status, body) = get(admin, "/debug/config").expect("GET /debug/config");
    assert_eq!(status, 200);
    assert!(
        body.contains("outbound|8080||calc.demo.svc.cluster.local"),
        "the served config has the ServiceEntry's cluster: {body}"
    );

    serve.sigterm();
    let code = serve.wait_exit(STOP_TIMEOUT);
    let err = serve.stderr();
    assert_eq!(code, 0, "stderr:\n{err}");
    assert!(err.contains("stopping"), "stderr:\n{err}");
    assert!(
        TcpStream::connect_timeout(&admin, Duration::from_millis(500)).is_err(),
        "admin port closed after exit"
    );
}

#[test]
fn serve_starts_unready_on_a_broken_config_and_becomes_ready_when_fixed() {
    let dir = config_dir(BROKEN);
    let mut extra = EPHEMERAL.to_vec();
    extra.extend(["--debounce", "20ms"]);
    let mut serve = Serve::start(dir.path(), &extra);
    let (_, admin) = serve.addresses();
    wait_for_status(admin, "/healthz", 200, &serve);
    let body = wait_for_status(admin, "/readyz", 503, &serve);
    assert!(body.contains("no good config yet"), "{body}");

    std::fs::write(dir.path().join("mesh.yaml"), SERVICE_ENTRY).expect("fix the config");
    wait_for_status(admin, "/readyz", 200, &serve);

    serve.sigterm();
    assert_eq!(
        serve.wait_exit(STOP_TIMEOUT),
        0,
        "stderr:\n{}",
        serve.stderr()
    );
}

#[test]
fn serve_exits_2_naming_a_taken_port_and_its_flag() {
    let dir = config_dir(SERVICE_ENTRY);
    let taken = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let addr = taken.local_addr().expect("held address").to_string();

    let cases = [
        (
            [
                "--xds-listen",
                addr.as_str(),
                "--admin-listen",
                "127.0.0.1:0",
            ],
            "--xds-listen",
        ),
        (
            [
                "--xds-listen",
                "127.0.0.1:0",
                "--admin-listen",
                addr.as_str(),
            ],
            "--admin-listen",
        ),
    ];
    for (args, flag) in cases {
        let mut serve = Serve::start(dir.path(), &args);
        let code = serve.wait_exit(START_TIMEOUT);
        let err = serve.stderr();
        assert_eq!(code, 2, "{flag}: stderr:\n{err}");
        assert!(err.contains(&addr), "names {addr}; stderr:\n{err}");
        assert!(err.contains(flag), "names {flag}; stderr:\n{err}");
        assert!(err.contains("in use"), "says why; stderr:\n{err}");
    }
}

#[test]
fn serve_help_shows_the_envoy_bootstraps_and_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowplane"))
        .args(["serve", "--help"])
        .output()
        .expect("run serve --help");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "envoy-configs/ads-sotw.yaml",
        "envoy-configs/ads-delta.yaml",
        "--xds-listen",
        "--admin-listen",
        "[default: 127.0.0.1:18000]",
        "--debounce",
        "--bind-address",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}

/// Runs `shadowplane serve <args>` to its end (it must not start serving) and returns its exit
/// code and stderr.
fn serve_output(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowplane"))
        .arg("serve")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run shadowplane serve");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_without_a_source_exits_2_naming_config_and_kubernetes() {
    let (code, err) = serve_output(&[]);
    assert_eq!(code, Some(2), "stderr:\n{err}");
    assert!(err.contains("required"), "says what is missing:\n{err}");
    assert!(err.contains("--config"), "names --config:\n{err}");
    assert!(err.contains("--kubernetes"), "names --kubernetes:\n{err}");

    // Each source alone and both together are accepted by the parser: with a kubeconfig that
    // does not exist, serve gets as far as configuring the Kubernetes client and says so.
    let dir = config_dir(SERVICE_ENTRY);
    let config = dir.path().to_str().expect("temp dir path is UTF-8");
    let missing = dir.path().join("no-such-kubeconfig");
    let missing = missing.to_str().expect("temp path is UTF-8");
    for args in [
        vec!["--kubernetes", "--kubeconfig", missing],
        vec!["--config", config, "--kubernetes", "--kubeconfig", missing],
    ] {
        let mut all = args.clone();
        all.extend([
            "--xds-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        let (code, err) = serve_output(&all);
        assert_eq!(code, Some(2), "{args:?}: stderr:\n{err}");
        assert!(
            !err.contains("Usage:"),
            "{args:?} is a valid command line:\n{err}"
        );
        assert!(
            err.contains("cannot read the kubeconfig") && err.contains("no-such-kubeconfig"),
            "{args:?}: fails on the kubeconfig, after parsing:\n{err}"
        );
    }
}
