//! The forwarder's admin HTTP server (`forward --admin-listen`): HTTP/1.1, GET/HEAD only.
//!
//! | path | what |
//! |---|---|
//! | `/metrics` (and `/stats/prometheus`, Envoy's path) | Prometheus text with Envoy's stat names |
//! | `/ready` | 200 once a table is applied and its listeners are bound, else 503 |
//! | `/debug/config` | JSON: the compiled table and the xDS versions it was built from |
//! | `/debug/mirror` | JSON: mirror counters, per-route primary/shadow comparison, last pairs |

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::metrics::PROMETHEUS_CONTENT_TYPE;
use super::proxy::Forwarder;

const INDEX: &str = "shadowplane forward admin\n\
/metrics          Prometheus metrics, Envoy's names (also /stats/prometheus)\n\
/ready            readiness (200 once a table is served)\n\
/debug/config     the compiled table and its xDS versions (JSON)\n\
/debug/mirror     mirror counters and the primary/shadow comparison (JSON)\n";

/// Serve the admin pages on `listener` until `shutdown` completes; open requests then get
/// `drain` to finish.
pub async fn serve(
    forwarder: Arc<Forwarder>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let fwd = forwarder.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let fwd = fwd.clone();
                    async move { Ok::<_, Infallible>(handle(&fwd, &req)) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

/// One admin request.
pub fn handle<B>(forwarder: &Forwarder, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/" => text(StatusCode::OK, INDEX.into()),
        "/metrics" | "/stats/prometheus" => body(
            StatusCode::OK,
            PROMETHEUS_CONTENT_TYPE,
            forwarder.stats().render(),
        ),
        "/ready" => {
            if forwarder.is_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no table applied yet, or a listener failed to bind\n".into(),
                )
            }
        }
        "/debug/config" => {
            let table = forwarder.table();
            json(&serde_json::json!({
                "versions": table.versions,
                "table": table.debug_json(),
            }))
        }
        "/debug/mirror" => json(&forwarder.mirror_json()),
        other => text(
            StatusCode::NOT_FOUND,
            format!("no admin page {other}; see / for the list\n"),
        ),
    }
}

fn text(status: StatusCode, s: String) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", s)
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    s.push('\n');
    body(StatusCode::OK, "application/json", s)
}

fn body(status: StatusCode, content_type: &'static str, s: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(s)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::proxy::ForwarderOptions;
    use http_body_util::BodyExt;

    async fn get(f: &Forwarder, method: Method, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request");
        let r = handle(f, &req);
        let status = r.status();
        let b = r.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&b).into_owned())
    }

    #[tokio::test]
    async fn pages() {
        let f = Forwarder::new(ForwarderOptions::default());
        let (s, _) = get(&f, Method::GET, "/ready").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        f.apply(Arc::new(crate::forwarder::table::Table::default()))
            .await
            .expect("an empty table applies");
        let (s, _) = get(&f, Method::GET, "/ready").await;
        assert_eq!(s, StatusCode::OK);
        let (s, m) = get(&f, Method::GET, "/stats/prometheus").await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            m.contains("shadowplane_forwarder_table_swaps_total 1"),
            "{m}"
        );
        let (s, c) = get(&f, Method::GET, "/debug/config").await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&c).expect("json");
        assert!(v.get("versions").is_some());
        let (s, m) = get(&f, Method::GET, "/debug/mirror").await;
        assert_eq!(s, StatusCode::OK);
        assert!(m.contains("\"routes\""));
        let (s, _) = get(&f, Method::POST, "/metrics").await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        let (s, _) = get(&f, Method::GET, "/nope").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}
