//! The admin HTTP server of `serve` (`--admin-listen`, loopback by default): health, readiness,
//! Prometheus metrics and debug pages. HTTP/1.1, GET (and HEAD) only.
//!
//! | path | what |
//! |---|---|
//! | `/healthz` | 200 `ok` while the process runs |
//! | `/readyz` | 200 once a good config is served; 503 and the reason before that |
//! | `/metrics` | OpenMetrics text (Prometheus scrapes it as is) |
//! | `/debug/proxies` | JSON: every connected proxy, per type sent/acked/nacked versions and pending names |
//! | `/debug/config` | JSON: the snapshot being served, in Envoy's JSON, plus the diagnostics |
//! | `/debug/errors` | text: current config errors (`file:line` as `validate` prints them) and recent NACKs |
//!
//! The pages' content comes from an [`AdminView`] (implemented by [`crate::app`]), so this module
//! only does HTTP.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// The content type Prometheus expects for OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin pages show. Every method is called per request and must be cheap-ish and
/// non-blocking (read atomics and `Arc`s, no I/O).
pub trait AdminView: Send + Sync + 'static {
    /// `Ok` when ready to serve traffic, else why not (one line).
    fn readiness(&self) -> Result<(), String>;
    /// The whole `/metrics` body.
    fn metrics_text(&self) -> String;
    /// The `/debug/proxies` body.
    fn proxies_json(&self) -> serde_json::Value;
    /// The `/debug/config` body for the query string (`node=<id>` or `group=<name>` pick a
    /// node view; none: the default view). `Err` is a 404 with that message.
    fn config_json(&self, query: Option<&str>) -> Result<serde_json::Value, String>;
    /// The `/debug/errors` body.
    fn errors_text(&self) -> String;
}

const INDEX: &str = "shadowplane admin\n\
/healthz         liveness\n\
/readyz          readiness (200 once a good config is served)\n\
/metrics         Prometheus metrics (OpenMetrics text)\n\
/debug/proxies   connected proxies and their per-type xDS state (JSON)\n\
/debug/config    the snapshot being served, in Envoy JSON, and its diagnostics (JSON)\n\
/debug/errors    current config errors and recent NACKs (text)\n";

/// Serve the admin pages on `listener` until `shutdown` completes, then let open requests
/// finish (at most `drain` long).
pub async fn serve(
    listener: TcpListener,
    view: Arc<dyn AdminView>,
    shutdown: impl Future<Output = ()>,
    drain: std::time::Duration,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let view = view.clone();
                let service = service_fn(move |req| {
                    let view = view.clone();
                    async move { Ok::<_, Infallible>(handle(&*view, &req)) }
                });
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("admin connections still open after the drain time; closing them");
    }
}

/// Route one request.
pub fn handle(view: &dyn AdminView, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    route(view, req.method(), req.uri().path(), req.uri().query())
}

fn route(
    view: &dyn AdminView,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed; use GET\n"),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let resp = match path.trim_end_matches('/') {
        "" => text(StatusCode::OK, INDEX.to_string()),
        "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
        "/readyz" => match view.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_string()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => body(
            StatusCode::OK,
            OPENMETRICS_CONTENT_TYPE,
            view.metrics_text(),
        ),
        "/debug/proxies" => json(&view.proxies_json()),
        "/debug/config" => match view.config_json(query) {
            Ok(value) => json(&value),
            Err(why) => text(StatusCode::NOT_FOUND, format!("{why}\n")),
        },
        "/debug/errors" => text(StatusCode::OK, view.errors_text()),
        other => text(
            StatusCode::NOT_FOUND,
            format!("no admin page at {other}; see / for the list\n"),
        ),
    };
    if method == Method::HEAD {
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Full::new(Bytes::new()));
    }
    resp
}

fn text(status: StatusCode, s: String) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", s)
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(mut s) => {
            s.push('\n');
            body(StatusCode::OK, "application/json", s)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the page as JSON: {e}\n"),
        ),
    }
}

fn body(status: StatusCode, content_type: &'static str, s: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(s)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Fake {
        ready: bool,
    }

    impl AdminView for Fake {
        fn readiness(&self) -> Result<(), String> {
            if self.ready {
                Ok(())
            } else {
                Err("no good config yet".to_string())
            }
        }
        fn metrics_text(&self) -> String {
            "# EOF\n".to_string()
        }
        fn proxies_json(&self) -> serde_json::Value {
            serde_json::json!({"proxies": []})
        }
        fn config_json(&self, query: Option<&str>) -> Result<serde_json::Value, String> {
            match query {
                None => Ok(serde_json::json!({"version": "v1"})),
                Some(q) => Err(format!("no proxy {q}")),
            }
        }
        fn errors_text(&self) -> String {
            "no config errors\n".to_string()
        }
    }

    async fn get(view: &dyn AdminView, method: Method, path: &str) -> (StatusCode, String, String) {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let resp = route(view, &method, path, query);
        let status = resp.status();
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("full body")
            .to_bytes();
        (status, ct, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn readiness_follows_the_view_and_says_why() {
        let (status, _, body) = get(&Fake { ready: false }, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: no good config yet\n");
        let (status, _, _) = get(&Fake { ready: true }, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) = get(&Fake { ready: false }, Method::GET, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    }

    #[tokio::test]
    async fn pages_have_their_content_types_and_unknown_paths_404() {
        let view = Fake { ready: true };
        let (_, ct, _) = get(&view, Method::GET, "/metrics").await;
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        let (status, ct, body) = get(&view, Method::GET, "/debug/config/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct, "application/json");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).expect("json")["version"],
            "v1"
        );
        let (status, _, body) = get(&view, Method::GET, "/debug/config?node=x").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "no proxy node=x\n")
        );
        let (status, _, body) = get(&view, Method::GET, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("/nope"), "{body}");
        let (status, _, body) = get(&view, Method::HEAD, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
        let (status, _, _) = get(&view, Method::POST, "/healthz").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
