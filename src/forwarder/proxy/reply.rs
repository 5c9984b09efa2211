//! Local replies: Envoy's error answers (status, body text, response flag), redirects, direct
//! responses, fault aborts and CORS preflights.

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, CONTENT_TYPE, LOCATION,
};
use http::{HeaderMap, Response, StatusCode};

use super::body::RespBody;
use super::headers::{X_ENVOY_OVERLOADED, X_SHADOWPLANE_RESPONSE_FLAGS};
use crate::forwarder::table::{AbortKind, Cors};

/// Why the forwarder answered itself, with Envoy's status, body and response flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// 404 `NR`: no route (or no route configuration yet).
    NoRoute,
    /// 503 `NC`: the route's cluster does not exist.
    NoCluster,
    /// 503 `UH`: the cluster has no endpoint.
    NoHealthyUpstream,
    /// 503 `UF`: connecting upstream failed.
    ConnectFailure,
    /// 503 `UF` after retries: the last try could not connect.
    RetriedConnectFailure,
    /// 503 `UC`: the upstream closed or reset before the response headers.
    Reset,
    /// 503 `UC` after retries: the last try was closed or reset before the response headers.
    RetriedReset,
    /// 503 `UO`: the cluster's `max_requests` circuit breaker is open.
    Overflow,
    /// 504 `UT`: the route (or per-try) timeout expired.
    Timeout,
    /// 400: the request cannot be forwarded as it is (e.g. a rewrite produced an invalid path).
    BadRequest,
}

impl Local {
    pub fn status(self) -> u16 {
        match self {
            Local::NoRoute => 404,
            Local::NoCluster
            | Local::NoHealthyUpstream
            | Local::ConnectFailure
            | Local::RetriedConnectFailure
            | Local::Reset
            | Local::RetriedReset
            | Local::Overflow => 503,
            Local::Timeout => 504,
            Local::BadRequest => 400,
        }
    }

    /// The body Envoy sends (`sendLocalReply` texts; the upstream failures as Envoy 1.40
    /// words them, `retried and the latest` once a retry was made).
    pub fn body(self) -> &'static str {
        match self {
            Local::NoRoute | Local::NoCluster => "",
            Local::NoHealthyUpstream => "no healthy upstream",
            Local::ConnectFailure => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
            }
            Local::RetriedConnectFailure => {
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
            }
            Local::Reset => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            }
            Local::RetriedReset => {
                "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection termination"
            }
            Local::Overflow => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow"
            }
            Local::Timeout => "upstream request timeout",
            Local::BadRequest => "Bad Request",
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            Local::NoRoute => "NR",
            Local::NoCluster => "NC",
            Local::NoHealthyUpstream => "UH",
            Local::ConnectFailure | Local::RetriedConnectFailure => "UF",
            Local::Reset | Local::RetriedReset => "UC",
            Local::Overflow => "UO",
            Local::Timeout => "UT",
            Local::BadRequest => "DPE",
        }
    }

    pub fn reply(self) -> Response<RespBody> {
        let mut r = text(self.status(), Bytes::from_static(self.body().as_bytes()));
        r.headers_mut().insert(
            X_SHADOWPLANE_RESPONSE_FLAGS.clone(),
            HeaderValue::from_static(self.flag()),
        );
        if self == Local::Overflow {
            r.headers_mut()
                .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
        }
        r
    }
}

/// A reply with `status` and a text body (`content-type: text/plain` when not empty).
pub fn text(status: u16, body: Bytes) -> Response<RespBody> {
    let empty = body.is_empty();
    let mut r = Response::new(RespBody::full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !empty {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r
}

/// A redirect to `location`.
pub fn redirect(status: u16, location: &str) -> Response<RespBody> {
    let mut r = text(status, Bytes::new());
    match HeaderValue::from_str(location) {
        Ok(v) => {
            r.headers_mut().insert(LOCATION, v);
        }
        Err(_) => *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
    }
    r
}

/// The fault filter's abort: HTTP status with `fault filter abort`, or a gRPC trailers-only
/// reply (HTTP 200, `grpc-status`).
pub fn fault_abort(kind: AbortKind) -> Response<RespBody> {
    let mut r = match kind {
        AbortKind::Http(code) => text(code, Bytes::from_static(b"fault filter abort")),
        AbortKind::Grpc(status) => {
            let mut r = text(200, Bytes::new());
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            r.headers_mut()
                .insert("grpc-status", HeaderValue::from(status));
            r.headers_mut().insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            r
        }
    };
    r.headers_mut().insert(
        X_SHADOWPLANE_RESPONSE_FLAGS.clone(),
        HeaderValue::from_static("FI"),
    );
    r
}

fn header(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// Envoy's answer to a CORS preflight whose origin is allowed.
pub fn cors_preflight(cors: &Cors, origin: &HeaderValue) -> Response<RespBody> {
    let mut r = text(200, Bytes::new());
    let h = r.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.allow_credentials {
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = cors.allow_methods.as_deref().and_then(header) {
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(v) = cors.allow_headers.as_deref().and_then(header) {
        h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(v) = cors.max_age.as_deref().and_then(header) {
        h.insert(ACCESS_CONTROL_MAX_AGE, v);
    }
    r
}

/// The CORS headers Envoy adds to the response of a simple request from an allowed origin.
pub fn cors_response_headers(cors: &Cors, origin: &HeaderValue, h: &mut HeaderMap) {
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.allow_credentials {
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = cors.expose_headers.as_deref().and_then(header) {
        h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_local_replies() {
        let r = Local::NoHealthyUpstream.reply();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[&X_SHADOWPLANE_RESPONSE_FLAGS], "UH");
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain");
        let r = Local::NoRoute.reply();
        assert_eq!(r.status(), 404);
        assert!(!r.headers().contains_key(CONTENT_TYPE));
        assert_eq!(Local::Timeout.reply().status(), 504);
        // Envoy 1.40's words, seen through tests/forwarder_differential.rs.
        assert_eq!(
            Local::ConnectFailure.body(),
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
        );
        assert!(Local::RetriedConnectFailure
            .body()
            .contains(". retried and the latest reset reason: remote connection failure"));
        assert!(Local::RetriedReset
            .body()
            .ends_with("retried and the latest reset reason: connection termination"));
        assert_eq!(
            Local::RetriedReset.reply().headers()[&X_SHADOWPLANE_RESPONSE_FLAGS],
            "UC"
        );
        assert_eq!(
            Local::Overflow.reply().headers()[&X_ENVOY_OVERLOADED],
            "true"
        );
    }

    #[test]
    fn fault_aborts() {
        assert_eq!(fault_abort(AbortKind::Http(418)).status(), 418);
        let g = fault_abort(AbortKind::Grpc(14));
        assert_eq!(g.status(), 200);
        assert_eq!(g.headers()["grpc-status"], "14");
    }
}
