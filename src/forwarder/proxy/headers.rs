//! Header handling on the way through: hop-by-hop stripping (RFC 9110 §7.6.1), request ids,
//! `x-forwarded-*`, the route's header mutations, and building the upstream request.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::{
    HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, Request, Uri, Version};
use rand::Rng;

use super::body::ReqBody;
use crate::forwarder::table::{AppendAction, HeaderMutations};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
/// The Host before the route's host rewrite (Envoy sets it with the rewrite).
pub static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
/// `true` on the requests Envoy's async client sends, shadows included.
pub static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
pub static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
/// Why the forwarder answered itself (Envoy's response flag: `NR`, `NC`, `UH`, `UF`, `UT`,
/// `UC`, `UO`, `FI`), on local replies only.
pub static X_SHADOWPLANE_RESPONSE_FLAGS: HeaderName =
    HeaderName::from_static("x-shadowplane-response-flags");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Remove hop-by-hop headers: `Connection` and every header it lists, `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE` (except
/// `te: trailers`, which gRPC needs end to end), `Trailer`, `Transfer-Encoding`, `Upgrade`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(&CONNECTION) {
        let mut listed: Vec<HeaderName> = Vec::new();
        for v in h.get_all(&CONNECTION) {
            let Ok(v) = v.to_str() else { continue };
            for token in v.split(',') {
                let token = token.trim();
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    // Never let `Connection` strip what the request is routed on.
                    if name != HOST {
                        listed.push(name);
                    }
                }
            }
        }
        h.remove(&CONNECTION);
        for name in listed {
            h.remove(name);
        }
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(PROXY_AUTHENTICATE);
    h.remove(PROXY_AUTHORIZATION);
    if let Some(te) = h.get(TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            h.remove(TE);
        }
    }
    h.remove(TRAILER);
    h.remove(TRANSFER_ENCODING);
    h.remove(UPGRADE);
}

/// A random version-4 UUID, as Envoy's request id generator makes.
pub fn new_request_id() -> HeaderValue {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = BytesMut::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.put_u8(b'-');
        }
        out.put_u8(HEX[usize::from(byte >> 4)]);
        out.put_u8(HEX[usize::from(byte & 0x0f)]);
    }
    // Hex digits and dashes are valid header value bytes.
    HeaderValue::from_maybe_shared(out.freeze()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The request's id, set to a new one when absent (Envoy `generate_request_id`).
pub fn ensure_request_id(h: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID) {
        if !v.is_empty() {
            return v.clone();
        }
    }
    let id = new_request_id();
    h.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// Append the peer address to `x-forwarded-for` (Envoy with `use_remote_address`).
pub fn append_forwarded_for(h: &mut HeaderMap, peer: IpAddr) {
    let peer = peer.to_string();
    let value = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing}, {peer}"),
        _ => peer,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// What Envoy's async client adds to every request it sends, so to every shadow:
/// `x-envoy-internal: true`, and the proxy's own address ([`local_address`]) appended to
/// `x-forwarded-for`.
pub fn mark_shadow(h: &mut HeaderMap) {
    h.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    append_forwarded_for(h, local_address());
}

/// This host's address, as Envoy's `local_info` has it: the first non-loopback IPv4 address
/// (here: the source address the kernel picks for a route off the machine; no packet is
/// sent), else 127.0.0.1. Looked up once.
pub fn local_address() -> IpAddr {
    static ADDR: std::sync::OnceLock<IpAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        std::net::UdpSocket::bind(("0.0.0.0", 0))
            .and_then(|s| {
                // TEST-NET-2: never answered, and a UDP connect only picks the route.
                s.connect(("198.51.100.1", 9))?;
                s.local_addr()
            })
            .map(|a| a.ip())
            .ok()
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(loopback)
    })
}

/// Set `x-forwarded-proto` when absent.
pub fn ensure_forwarded_proto(h: &mut HeaderMap, scheme: &'static str) {
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    }
}

/// Apply one set of header mutations: removals first, then additions in order.
pub fn apply_mutations(m: &HeaderMutations, h: &mut HeaderMap) {
    for name in &m.remove {
        h.remove(name);
    }
    for a in &m.add {
        match a.action {
            AppendAction::AppendIfExistsOrAdd => {
                h.append(a.name.clone(), a.value.clone());
            }
            AppendAction::AddIfAbsent => {
                if !h.contains_key(&a.name) {
                    h.insert(a.name.clone(), a.value.clone());
                }
            }
            AppendAction::OverwriteIfExistsOrAdd => {
                h.insert(a.name.clone(), a.value.clone());
            }
            AppendAction::OverwriteIfExists => {
                if h.contains_key(&a.name) {
                    h.insert(a.name.clone(), a.value.clone());
                }
            }
        }
    }
}

/// The request to send upstream: HTTP/1.1 in origin form with `Host`, or HTTP/2 with the
/// host as `:authority` (Envoy moves Host into `:authority` for HTTP/2 upstreams).
pub fn upstream_request(
    method: Method,
    path: &Uri,
    mut headers: HeaderMap,
    host: &HeaderValue,
    h2: bool,
    body: ReqBody,
) -> Request<ReqBody> {
    let (uri, version) = if h2 {
        headers.remove(HOST);
        let pq = path.path_and_query().map_or("/", |p| p.as_str());
        let uri = host
            .to_str()
            .ok()
            .and_then(|host| {
                Uri::builder()
                    .scheme("http")
                    .authority(host)
                    .path_and_query(pq)
                    .build()
                    .ok()
            })
            .unwrap_or_else(|| path.clone());
        (uri, Version::HTTP_2)
    } else {
        headers.insert(HOST, host.clone());
        (path.clone(), Version::HTTP_11)
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::table::HeaderAdd;

    #[test]
    fn hop_by_hop_headers_go_and_listed_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(PROXY_AUTHORIZATION, HeaderValue::from_static("basic x"));
        h.insert(TE, HeaderValue::from_static("gzip"));
        h.insert(TRAILER, HeaderValue::from_static("x-t"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");

        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[TE], "trailers");
    }

    #[test]
    fn request_ids_are_uuid_v4_and_kept_when_present() {
        let id = new_request_id();
        let s = id.to_str().expect("ascii");
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(new_request_id(), id);

        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("given"));
        assert_eq!(ensure_request_id(&mut h), "given");
        let mut h = HeaderMap::new();
        let made = ensure_request_id(&mut h);
        assert_eq!(h[&X_REQUEST_ID], made);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().expect("ip"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
        append_forwarded_for(&mut h, "10.0.0.2".parse().expect("ip"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2");
    }

    #[test]
    fn shadows_are_marked_internal_with_the_proxy_address_appended() {
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.1"),
        );
        mark_shadow(&mut h);
        assert_eq!(h[&X_ENVOY_INTERNAL], "true");
        assert_eq!(
            h[&X_FORWARDED_FOR].to_str().expect("ascii"),
            format!("10.0.0.1, {}", local_address())
        );
        let mut h = HeaderMap::new();
        mark_shadow(&mut h);
        assert_eq!(
            h[&X_FORWARDED_FOR].to_str().expect("ascii"),
            local_address().to_string()
        );
        assert!(!local_address().is_unspecified());
    }

    #[test]
    fn mutations_follow_append_actions() {
        let add = |name: &'static str, value: &'static str, action| HeaderAdd {
            name: HeaderName::from_static(name),
            value: HeaderValue::from_static(value),
            action,
        };
        let m = HeaderMutations {
            remove: vec![HeaderName::from_static("x-gone")],
            add: vec![
                add("x-a", "2", AppendAction::AppendIfExistsOrAdd),
                add("x-b", "new", AppendAction::AddIfAbsent),
                add("x-c", "new", AppendAction::OverwriteIfExistsOrAdd),
                add("x-d", "new", AppendAction::OverwriteIfExists),
                add("x-e", "new", AppendAction::OverwriteIfExists),
            ],
        };
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-gone", "1"),
            ("x-a", "1"),
            ("x-b", "old"),
            ("x-c", "old"),
            ("x-d", "old"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        apply_mutations(&m, &mut h);
        assert!(!h.contains_key("x-gone"));
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert_eq!(h["x-b"], "old");
        assert_eq!(h["x-c"], "new");
        assert_eq!(h["x-d"], "new");
        assert!(!h.contains_key("x-e"));
    }

    #[test]
    fn upstream_request_forms() {
        let path: Uri = "/a?b=1".parse().expect("uri");
        let host = HeaderValue::from_static("svc:8080");
        let r = upstream_request(
            Method::GET,
            &path,
            HeaderMap::new(),
            &host,
            false,
            ReqBody::empty(),
        );
        assert_eq!(r.uri(), "/a?b=1");
        assert_eq!(r.headers()[HOST], "svc:8080");
        let r = upstream_request(
            Method::GET,
            &path,
            HeaderMap::new(),
            &host,
            true,
            ReqBody::empty(),
        );
        assert_eq!(r.uri(), "http://svc:8080/a?b=1");
        assert!(!r.headers().contains_key(HOST));
        assert_eq!(r.version(), Version::HTTP_2);
    }
}
