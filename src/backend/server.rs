//! The demo backend's HTTP server (HTTP/1.1 and h2c, hyper 1).
//!
//! | route | answer |
//! |---|---|
//! | `GET /factor/<n>`, `GET /factor?n=<n>` | `{"n":…,"factors":[…],"version":"v1","algorithm":"trial-division","elapsed_us":…}`; 400 with `{"error":…}` for a bad `n` |
//! | `/status/<code>` | an empty response with that status (200–599) |
//! | `/headers` | `{"headers":{…}}`: the request headers (lowercase names, repeated ones joined with `, `) |
//! | `/anything[/…]` | JSON echo: method, path, query, args, headers, body (as text), request id |
//! | `/healthz` | 200 `ok` |
//!
//! Every response carries `x-backend-version: <name>`. Every request is logged at info
//! (target `shadowplane::backend`): method, path, status, elapsed time and Host (mirrored
//! requests arrive with Envoy's `-shadow` Host suffix, so they stand out in the log).
//!
//! [`serve_on_observed`] also reports every answered request to an [`Observer`] (what the
//! demo uses to count, per version, the requests received, the mirrored ones and their
//! service time).
//!
//! Factoring runs on tokio's blocking pool, at most one computation per CPU at a time (the
//! others wait their turn), so a slow factorization never stalls the other routes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::factor;

/// The response header that names the backend instance (`--name`).
pub const VERSION_HEADER: &str = "x-backend-version";

/// The largest request body `/anything` echoes; larger ones get 413.
pub const MAX_ECHO_BODY: usize = 1024 * 1024;

/// How `/factor` factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// [`factor::trial_division`]: slow on numbers with two large prime factors.
    #[default]
    TrialDivision,
    /// [`factor::pollard_rho`]: Miller–Rabin and Brent's rho, fast on every u64.
    PollardRho,
}

impl Algorithm {
    /// The name used on the command line and in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::TrialDivision => "trial-division",
            Algorithm::PollardRho => "pollard-rho",
        }
    }

    /// The prime factors of `n`, ascending, with multiplicity.
    pub fn factor(self, n: u64) -> Vec<u64> {
        match self {
            Algorithm::TrialDivision => factor::trial_division(n),
            Algorithm::PollardRho => factor::pollard_rho(n),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Algorithm, String> {
        match s {
            "trial-division" => Ok(Algorithm::TrialDivision),
            "pollard-rho" => Ok(Algorithm::PollardRho),
            other => Err(format!(
                "unknown algorithm {other:?}; use trial-division or pollard-rho"
            )),
        }
    }
}

/// What `shadowplane backend` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The instance name sent in `x-backend-version` and `"version"` (e.g. `v1`).
    pub name: String,
    /// Where [`serve`] listens.
    pub listen: SocketAddr,
    pub algorithm: Algorithm,
    /// How long open connections may take to finish after shutdown begins.
    pub drain_timeout: Duration,
}

impl BackendConfig {
    /// Trial division and a 5 s drain.
    pub fn new(name: impl Into<String>, listen: SocketAddr) -> BackendConfig {
        BackendConfig {
            name: name.into(),
            listen,
            algorithm: Algorithm::default(),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot listen on {address}: {source}; free the port or pick another with --listen")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the backend name {0:?} is not a valid header value; use letters, digits and -._")]
    InvalidName(String),
}

/// Bind `cfg.listen` and serve until `shutdown` completes, then drain.
pub async fn serve(
    cfg: BackendConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BackendError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| BackendError::Bind {
            address: cfg.listen,
            source,
        })?;
    serve_on(listener, cfg, shutdown).await
}

/// Serve on an already bound `listener` (its address wins over `cfg.listen`) until
/// `shutdown` completes, then give open connections `cfg.drain_timeout` to finish.
pub async fn serve_on(
    listener: TcpListener,
    cfg: BackendConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BackendError> {
    serve_state(listener, &cfg, State::new(&cfg)?, shutdown).await
}

/// [`serve_on`], reporting every answered request to `observer` (after the response is
/// built, before it is sent).
pub async fn serve_on_observed(
    listener: TcpListener,
    cfg: BackendConfig,
    observer: Observer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BackendError> {
    let state = State::new(&cfg)?.with_observer(observer);
    serve_state(listener, &cfg, state, shutdown).await
}

async fn serve_state(
    listener: TcpListener,
    cfg: &BackendConfig,
    state: State,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BackendError> {
    let state = Arc::new(state);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            target: "shadowplane::backend",
            backend = %cfg.name,
            algorithm = %cfg.algorithm,
            address = %addr,
            "backend listening"
        );
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(target: "shadowplane::backend", error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(target: "shadowplane::backend", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(cfg.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(target: "shadowplane::backend", "connections still open after the drain time; closing them");
    }
    Ok(())
}

/// A request body's error, boxed (what [`Limited`] needs).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One answered request, as an [`Observer`] sees it.
#[derive(Debug)]
pub struct Observation<'a> {
    /// The instance name (`--name`).
    pub backend: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    /// The Host header (or the URI authority): mirrored copies carry Envoy's `-shadow` suffix.
    pub host: &'a str,
    /// The `x-request-id` header, which a mirrored copy shares with its primary.
    pub request_id: Option<&'a str>,
    pub status: StatusCode,
    /// From the request's arrival to the response being ready (queueing for a CPU included).
    pub elapsed: Duration,
    /// The response body.
    pub body: &'a Bytes,
}

/// Called for every answered request; must be quick (it runs on the request's task).
pub type Observer = Arc<dyn Fn(&Observation<'_>) + Send + Sync>;

/// What every request shares.
pub struct State {
    name: String,
    version_header: HeaderValue,
    algorithm: Algorithm,
    /// One factorization per CPU at a time.
    compute: Semaphore,
    observer: Option<Observer>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl State {
    pub fn new(cfg: &BackendConfig) -> Result<State, BackendError> {
        let version_header = HeaderValue::from_str(&cfg.name)
            .ok()
            .filter(|_| !cfg.name.is_empty())
            .ok_or_else(|| BackendError::InvalidName(cfg.name.clone()))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(State {
            name: cfg.name.clone(),
            version_header,
            algorithm: cfg.algorithm,
            compute: Semaphore::new(cpus),
            observer: None,
        })
    }

    /// Report every answered request to `observer`.
    pub fn with_observer(mut self, observer: Observer) -> State {
        self.observer = Some(observer);
        self
    }
}

/// Answer one request, adding `x-backend-version` and logging it.
pub async fn handle<B>(state: &State, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let request_id = state.observer.as_ref().and_then(|_| {
        req.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let mut resp = route(state, req).await;
    resp.headers_mut()
        .insert(VERSION_HEADER, state.version_header.clone());
    let elapsed = start.elapsed();
    if let Some(observer) = &state.observer {
        let (parts, body) = resp.into_parts();
        // A `Full` body is one chunk that is already there; collecting it cannot fail.
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        observer(&Observation {
            backend: &state.name,
            method: &method,
            path: &path,
            host: &host,
            request_id: request_id.as_deref(),
            status: parts.status,
            elapsed,
            body: &bytes,
        });
        resp = Response::from_parts(parts, Full::new(bytes));
    }
    tracing::info!(
        target: "shadowplane::backend",
        backend = %state.name,
        %method,
        path = %path,
        status = resp.status().as_u16(),
        elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        host = %host,
        "request"
    );
    resp
}

async fn route<B>(state: &State, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path().to_string();
    if path == "/factor" || path.starts_with("/factor/") {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return error(
                state,
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {} not allowed on /factor; use GET", req.method()),
            );
        }
        let raw = match path.strip_prefix("/factor/") {
            Some(segment) => Some(segment.to_string()),
            None => query_args(req.uri().query())
                .remove("n")
                .and_then(|mut v| (!v.is_empty()).then(|| v.swap_remove(0))),
        };
        return match raw.as_deref().map(parse_n) {
            None => error(
                state,
                StatusCode::BAD_REQUEST,
                "missing n; use /factor/<n> or /factor?n=<n>".into(),
            ),
            Some(Err(msg)) => error(state, StatusCode::BAD_REQUEST, msg),
            Some(Ok(n)) => factor_answer(state, n).await,
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return status(state, code);
    }
    if path == "/anything" || path.starts_with("/anything/") {
        return anything(state, req).await;
    }
    match path.as_str() {
        "/headers" => json(
            StatusCode::OK,
            &serde_json::json!({ "headers": headers_map(req.headers()) }),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/" => text(StatusCode::OK, INDEX),
        _ => error(
            state,
            StatusCode::NOT_FOUND,
            format!("no route for {path}; try /factor/<n>, /status/<code>, /headers, /anything"),
        ),
    }
}

const INDEX: &str = "shadowplane demo backend\n\
GET /factor/<n>, /factor?n=<n>   prime factors of n (1 to 18446744073709551615)\n\
/status/<code>                   an empty response with that status\n\
/headers                         the request headers (JSON)\n\
/anything[/...]                  echo of the request (JSON)\n\
/healthz                         liveness\n";

/// `n` from the path or the query: decimal digits only, 1 ..= u64::MAX.
pub fn parse_n(raw: &str) -> Result<u64, String> {
    let max = u64::MAX;
    if raw.is_empty() {
        return Err("missing n; use /factor/<n> or /factor?n=<n>".into());
    }
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "n {raw:?} is not a whole number; use decimal digits, 1 to {max}"
        ));
    }
    match raw.parse::<u64>() {
        Ok(0) => Err(format!("n 0 has no prime factorization; use 1 to {max}")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "n {raw} is larger than {max}, the largest supported; use a smaller number"
        )),
    }
}

/// The `/factor` answer.
#[derive(Debug, Serialize)]
struct FactorAnswer<'a> {
    n: u64,
    factors: Vec<u64>,
    version: &'a str,
    algorithm: &'static str,
    elapsed_us: u64,
}

async fn factor_answer(state: &State, n: u64) -> Response<Full<Bytes>> {
    // The semaphore is never closed, so acquire only fails if it were; answer 503 then.
    let Ok(_permit) = state.compute.acquire().await else {
        return error(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            "the backend is shutting down; retry".into(),
        );
    };
    let algorithm = state.algorithm;
    let computed = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let factors = algorithm.factor(n);
        (factors, start.elapsed())
    })
    .await;
    match computed {
        Ok((factors, elapsed)) => json(
            StatusCode::OK,
            &FactorAnswer {
                n,
                factors,
                version: &state.name,
                algorithm: algorithm.as_str(),
                elapsed_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            },
        ),
        Err(e) => error(
            state,
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("factoring {n} failed: {e}"),
        ),
    }
}

fn status(state: &State, raw: &str) -> Response<Full<Bytes>> {
    let code = raw
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok());
    match code {
        Some(code) => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = code;
            resp
        }
        None => error(
            state,
            StatusCode::BAD_REQUEST,
            format!("status {raw:?} is not a status code; use a number from 200 to 599"),
        ),
    }
}

/// The `/anything` echo.
#[derive(Debug, Serialize)]
struct Echo {
    method: String,
    path: String,
    query: Option<String>,
    args: BTreeMap<String, Vec<String>>,
    headers: BTreeMap<String, String>,
    body: String,
    request_id: Option<String>,
    version: String,
}

async fn anything<B>(state: &State, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_ECHO_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return if e.is::<http_body_util::LengthLimitError>() {
                error(
                    state,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {MAX_ECHO_BODY} bytes; send less"),
                )
            } else {
                error(
                    state,
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
            };
        }
    };
    let echo = Echo {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        args: query_args(parts.uri.query()),
        headers: headers_map(&parts.headers),
        body: String::from_utf8_lossy(&body).into_owned(),
        request_id: parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        version: state.name.clone(),
    };
    json(StatusCode::OK, &echo)
}

/// Header names (lowercase) to values; repeated headers are joined with `, `. Values that are
/// not visible ASCII are shown lossily.
fn headers_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// `a=1&b=2&a=3` → `{a: [1, 3], b: [2]}`, percent-decoded (`+` is a space).
fn query_args(query: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k))
            .or_default()
            .push(percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    // Serializing these plain structs and maps cannot fail; fall back to an empty object.
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text(status: StatusCode, s: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(s.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn error(state: &State, status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({ "error": message, "version": state.name }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(algorithm: Algorithm) -> State {
        let mut cfg = BackendConfig::new("v9", SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.algorithm = algorithm;
        State::new(&cfg).expect("valid name")
    }

    async fn get(state: &State, method: Method, uri: &str, body: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, "calc.example")
            .header("x-request-id", "abc")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        let resp = handle(state, req).await;
        assert_eq!(resp.headers()[VERSION_HEADER], "v9");
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("full body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn the_observer_sees_every_answer_and_the_client_gets_it_unchanged() {
        type Seen = (String, String, String, Option<String>, u16, String);
        let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
        let sink = seen.clone();
        let observer: Observer = Arc::new(move |o: &Observation<'_>| {
            sink.lock().expect("not poisoned").push((
                o.backend.to_string(),
                o.path.to_string(),
                o.host.to_string(),
                o.request_id.map(str::to_string),
                o.status.as_u16(),
                String::from_utf8_lossy(o.body).into_owned(),
            ));
        });
        let state = state(Algorithm::PollardRho).with_observer(observer);
        let (status, body) = get(&state, Method::GET, "/factor/12", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"factors\":[2,2,3]"), "{body}");
        let (status, _) = get(&state, Method::GET, "/factor/zero", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let seen = seen.lock().expect("not poisoned").clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[0],
            (
                "v9".to_string(),
                "/factor/12".to_string(),
                "calc.example".to_string(),
                Some("abc".to_string()),
                200,
                body
            )
        );
        assert_eq!(seen[1].4, 400);
        assert!(format!("{state:?}").contains("observed: true"));
    }

    #[test]
    fn parse_n_accepts_only_1_to_u64_max() {
        assert_eq!(parse_n("12"), Ok(12));
        assert_eq!(parse_n("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "",
            "0",
            "-1",
            "+5",
            "1.5",
            "abc",
            " 7",
            "18446744073709551616",
        ] {
            let err = parse_n(bad).expect_err(bad);
            assert!(
                err.starts_with("n ") || err.starts_with("missing n"),
                "{bad}: {err}"
            );
        }
        assert!(parse_n("18446744073709551616")
            .unwrap_err()
            .contains("larger than 18446744073709551615"));
    }

    #[test]
    fn query_args_decode_and_keep_repeats() {
        let args = query_args(Some("a=1&b=x+y&a=%41%2f&c&d=%zz&e=%4"));
        assert_eq!(args["a"], vec!["1", "A/"]);
        assert_eq!(args["b"], vec!["x y"]);
        assert_eq!(args["c"], vec![""]);
        assert_eq!(args["d"], vec!["%zz"]);
        assert_eq!(args["e"], vec!["%4"]);
        assert!(query_args(None).is_empty());
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in [Algorithm::TrialDivision, Algorithm::PollardRho] {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
        }
        assert!("fast"
            .parse::<Algorithm>()
            .unwrap_err()
            .contains("use trial-division or pollard-rho"));
    }

    #[test]
    fn names_that_are_not_header_values_are_refused() {
        for bad in ["", "v1\n"] {
            let cfg = BackendConfig::new(bad, SocketAddr::from(([127, 0, 0, 1], 0)));
            assert!(matches!(
                State::new(&cfg),
                Err(BackendError::InvalidName(_))
            ));
        }
    }

    #[tokio::test]
    async fn routes_answer_with_the_version_header() {
        let s = state(Algorithm::PollardRho);
        let (code, body) = get(&s, Method::GET, "/factor/600851475143", "").await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["factors"], serde_json::json!([71, 839, 1471, 6857]));
        assert_eq!(v["algorithm"], "pollard-rho");
        assert_eq!(v["version"], "v9");
        // Field order is part of the answer's look.
        assert!(
            body.starts_with("{\"n\":600851475143,\"factors\":"),
            "{body}"
        );

        let (code, body) = get(&s, Method::GET, "/factor?x=1&n=84", "").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert!(body.contains("\"factors\":[2,2,3,7]"), "{body}");

        for uri in [
            "/factor",
            "/factor/",
            "/factor?n=",
            "/factor/abc",
            "/factor/0",
        ] {
            let (code, body) = get(&s, Method::GET, uri, "").await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert!(body.contains("\"error\":\""), "{uri}: {body}");
        }
        let (code, _) = get(&s, Method::POST, "/factor/12", "").await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);

        let (code, body) = get(&s, Method::GET, "/status/503", "").await;
        assert_eq!((code, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, ""));
        for bad in ["/status/99", "/status/600", "/status/x"] {
            assert_eq!(
                get(&s, Method::GET, bad, "").await.0,
                StatusCode::BAD_REQUEST
            );
        }

        let (code, body) = get(&s, Method::GET, "/headers", "").await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["headers"]["host"], "calc.example");

        let (code, body) = get(&s, Method::PUT, "/anything/a/b?q=1", "hello").await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["path"], "/anything/a/b");
        assert_eq!(v["query"], "q=1");
        assert_eq!(v["args"]["q"], serde_json::json!(["1"]));
        assert_eq!(v["body"], "hello");
        assert_eq!(v["request_id"], "abc");

        assert_eq!(
            get(&s, Method::GET, "/healthz", "").await,
            (StatusCode::OK, "ok\n".into())
        );
        assert_eq!(
            get(&s, Method::GET, "/nope", "").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn anything_refuses_bodies_over_the_limit() {
        let s = state(Algorithm::TrialDivision);
        let big = "x".repeat(MAX_ECHO_BODY + 1);
        let (code, body) = get(&s, Method::POST, "/anything", &big).await;
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    }
}
