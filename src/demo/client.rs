//! A minimal HTTP/1.1 client for the demo: the traffic loop (one keep-alive connection per
//! worker) and the admin pages it reads (serve, the forwarder, Envoy). Every call is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One answer, read to the end.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
}

impl Conn {
    /// Connect to `addr` (bounded by `timeout`).
    pub async fn open(addr: SocketAddr, timeout: Duration) -> Result<Conn, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http handshake with {addr}: {e}"))?;
        // The connection task ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }

    /// Whether the connection can take another request.
    pub fn is_usable(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Send one request and read the whole answer, within `timeout`.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Answer, String> {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| format!("bad request {path}: {e}"))?;
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection closed: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("{path}: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("{path}: reading the body: {e}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{path}: no answer within {timeout:?}"))?
    }
}

/// One request on a fresh connection (the admin pages).
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    let mut conn = Conn::open(addr, timeout).await?;
    conn.send(method, path, &[("host", "localhost")], timeout)
        .await
}

/// `GET path` on a fresh connection: the status and the body as text.
pub async fn get_text(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let answer = request(addr, Method::GET, path, Duration::from_secs(5)).await?;
    Ok((
        answer.status.as_u16(),
        String::from_utf8_lossy(&answer.body).into_owned(),
    ))
}

/// `GET path` as JSON (any status; the body must parse).
pub async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let (_, body) = get_text(addr, path).await?;
    serde_json::from_str(&body).map_err(|e| format!("{path} is not JSON: {e}"))
}
