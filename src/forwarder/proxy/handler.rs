//! One request, start to finish: match, CORS, fault, then redirect / direct response /
//! forward (header processing, mirrors, retries, timeouts).
//!
//! The table is loaded once per request; everything the request touches afterwards hangs off
//! that `Arc`, so a swap never changes a request in flight.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, COOKIE, EXPECT, HOST, ORIGIN,
};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::{Body, Incoming};
use rand::Rng;

use super::body::{Capture, ReqBody, RespBody, Tee, UpstreamBody};
use super::headers::{
    append_forwarded_for, apply_mutations, ensure_forwarded_proto, ensure_request_id, mark_shadow,
    strip_hop_by_hop, upstream_request, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_ORIGINAL_HOST,
    X_ENVOY_ORIGINAL_PATH,
};
use super::reply::{self, Local};
use super::upstream::{ClusterRt, ConnectError, Finish, SendFail};
use super::{Active, ListenerCtx, RouteRt, Shared};
use crate::forwarder::matcher::{self, RequestView};
use crate::forwarder::mirror::{self, MirrorJob, PairSlot, PrimaryMeasure};
use crate::forwarder::table::{
    Action, Cors, Forward, HashPolicy, HashPolicyKind, LbPolicy, RetryOn, RetryPolicy, Route,
    UpstreamProtocol,
};

/// Serve one downstream request.
pub(super) async fn handle(
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let started = Instant::now();
    let active = shared.active.load_full();
    let resp = route(&shared, &active, &ctx, peer, req, started).await;
    if let Some(d) = active.downstream.get(&ctx.key) {
        d.record(resp.status().as_u16(), started.elapsed());
    }
    resp
}

/// The Host (HTTP/1) or `:authority` (HTTP/2) of a request.
fn authority(parts: &Parts) -> &str {
    parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

async fn route(
    shared: &Shared,
    active: &Active,
    ctx: &ListenerCtx,
    peer: SocketAddr,
    req: Request<Incoming>,
    started: Instant,
) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let view = RequestView {
        method: &parts.method,
        path_and_query,
        authority: authority(&parts),
        headers: &parts.headers,
        scheme: "http",
    };
    let matched = match matcher::route_request(&active.table, &ctx.key, &view) {
        Ok(m) => m,
        Err(_) => return Local::NoRoute.reply(),
    };
    let route = matched.route;

    // CORS (Envoy's cors filter runs before the fault filter and the router).
    let mut cors_origin: Option<(&Cors, HeaderValue)> = None;
    if let Some(cors) = &route.cors {
        if let Some(origin) = parts.headers.get(ORIGIN) {
            if cors.filter_enabled.sample(&mut rand::rng()) {
                let allowed = origin.to_str().is_ok_and(|o| cors.origin_allowed(o));
                let preflight = parts.method == Method::OPTIONS
                    && parts.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
                if preflight {
                    if allowed {
                        return reply::cors_preflight(cors, origin);
                    }
                    if !cors.forward_not_matching_preflights {
                        return reply::text(200, Bytes::new());
                    }
                } else if allowed {
                    cors_origin = Some((cors, origin.clone()));
                }
            }
        }
    }

    // Fault injection: delay, then abort, each with its own draw.
    if let Some(fault) = &route.fault {
        if let Some(d) = &fault.delay {
            if d.fraction.sample(&mut rand::rng()) {
                tokio::time::sleep(d.fixed).await;
            }
        }
        if let Some(a) = &fault.abort {
            if a.fraction.sample(&mut rand::rng()) {
                return reply::fault_abort(a.kind);
            }
        }
    }

    let mut resp = match &route.action {
        Action::Redirect(r) => {
            let location = matcher::redirect_location(route, r, &view);
            let mut resp = reply::redirect(r.response_code, &location);
            apply_mutations(&route.response_headers, resp.headers_mut());
            resp
        }
        Action::DirectResponse(d) => {
            let mut resp = reply::text(d.status, d.body.clone().unwrap_or_default());
            apply_mutations(&route.response_headers, resp.headers_mut());
            resp
        }
        Action::Forward(fwd) => {
            let use_remote_address = matched.listener.use_remote_address;
            let rt = active.routes.get(&route_key(route));
            forward(
                shared,
                active,
                route,
                rt,
                fwd,
                use_remote_address,
                peer,
                parts,
                body,
                started,
            )
            .await
        }
    };
    if let Some((cors, origin)) = cors_origin {
        reply::cors_response_headers(cors, &origin, resp.headers_mut());
    }
    resp
}

/// The key of a route in [`Active::routes`]: its address inside the table, which is stable
/// for as long as the table (held by the request) lives.
pub(super) fn route_key(route: &Route) -> usize {
    std::ptr::from_ref(route) as usize
}

/// What one try ended with, when it produced no usable response.
enum TryFail {
    Connect(ConnectError),
    Reset,
    PerTryTimeout,
    GlobalTimeout,
}

/// Where the body of a retry comes from.
enum Replay {
    /// Known in full (no body, or a body already buffered).
    Bytes(Bytes),
    /// The tee's bounded copy (complete only if the body ended within the limit).
    Capture(Capture),
    /// Streamed without a copy: no retry once the first try consumed it.
    None,
}

impl Replay {
    fn body(&self) -> Option<ReqBody> {
        match self {
            Replay::Bytes(b) => Some(ReqBody::full(b.clone())),
            Replay::Capture(c) => match c.now() {
                Some(Ok(b)) => Some(ReqBody::full(b)),
                _ => None,
            },
            Replay::None => None,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Shared,
    active: &Active,
    route: &Route,
    rt: Option<&RouteRt>,
    fwd: &Forward,
    use_remote_address: bool,
    peer: SocketAddr,
    parts: Parts,
    body: Incoming,
    started: Instant,
) -> Response<RespBody> {
    let (cluster_name, weighted) = fwd.pick_cluster(&mut rand::rng());
    let Some(cluster) = active.clusters.get(cluster_name) else {
        // Envoy sends no shadow when the primary cluster is missing.
        return Local::NoCluster.reply();
    };
    let Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;

    // ----- the request as it goes upstream (the mirrors get the same)
    let mut host = headers
        .get(HOST)
        .cloned()
        .or_else(|| {
            uri.authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
        .unwrap_or_else(|| HeaderValue::from_static(""));
    strip_hop_by_hop(&mut headers);
    // Like Envoy (`proxy_100_continue: false`): hyper answers `100 Continue` downstream when
    // the body is read; the upstream never sees the expectation.
    if headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        headers.remove(EXPECT);
    }
    if use_remote_address {
        append_forwarded_for(&mut headers, peer.ip());
    }
    ensure_forwarded_proto(&mut headers, "http");
    let request_id = ensure_request_id(&mut headers);
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let path: Uri = match &fwd.rewrite {
        Some(rw) => {
            let new = matcher::rewrite_path(route, rw, path_and_query);
            match new.parse::<Uri>() {
                Ok(u) => {
                    if let Ok(orig) = HeaderValue::from_str(path_and_query) {
                        headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), orig);
                    }
                    u
                }
                Err(_) => return Local::BadRequest.reply(),
            }
        }
        None if uri.scheme().is_none() && uri.authority().is_none() => uri.clone(),
        None => match path_and_query.parse::<Uri>() {
            Ok(u) => u,
            Err(_) => return Local::BadRequest.reply(),
        },
    };
    if let Some(h) = &fwd.host_rewrite {
        if let Ok(v) = HeaderValue::from_str(h) {
            headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), host.clone());
            host = v;
        }
    }
    if let Some(w) = weighted {
        apply_mutations(&w.request_headers, &mut headers);
    }
    apply_mutations(&route.request_headers, &mut headers);
    let timeout = effective_timeout(fwd, &headers);
    if let Some(t) = timeout {
        headers.insert(
            X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
            HeaderValue::from(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    headers.insert(HOST, host.clone());

    // ----- body: streamed, with a bounded copy when mirrors or retries need one
    let limit = shared.options.mirror.body_limit;
    let no_body = body.is_end_stream();
    let declared_len: Option<u64> = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let too_large = !no_body && declared_len.is_some_and(|n| n > limit as u64);

    // ----- mirrors: one independent draw per policy
    let mut pending: Vec<(
        Arc<ClusterRt>,
        tokio::sync::OwnedSemaphorePermit,
        Arc<PairSlot>,
        usize,
    )> = Vec::new();
    if !fwd.mirrors.is_empty() && method != Method::CONNECT {
        if let Some(rt) = rt {
            let mut rng = rand::rng();
            for (i, (policy, m)) in fwd.mirrors.iter().zip(&rt.mirrors).enumerate() {
                if !policy.should_mirror(&mut rng) {
                    m.stats.skipped_fraction.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if too_large {
                    m.stats.body_too_large.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(shadow) = &m.cluster else {
                    // Envoy logs "shadow cluster does not exist" at debug level; count it.
                    m.stats.shadow_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let Some(permit) = shadow.mirror.try_permit() else {
                    continue;
                };
                let slot = Arc::new(PairSlot::new(
                    request_id.clone(),
                    m.pair.clone(),
                    shared.recent.clone(),
                ));
                pending.push((shadow.clone(), permit, slot, i));
            }
        }
    }
    let retries = fwd.retry.as_ref().filter(|r| r.num_retries > 0);
    let (first_body, replay, capture) = if no_body {
        (
            ReqBody::empty(),
            Replay::Bytes(Bytes::new()),
            Capture::Ready(Bytes::new()),
        )
    } else if (pending.is_empty() && retries.is_none()) || too_large {
        (
            ReqBody::Stream(body),
            Replay::None,
            Capture::Ready(Bytes::new()),
        )
    } else {
        let (tee, capture) = Tee::new(body, limit);
        (ReqBody::Tee(tee), Replay::Capture(capture.clone()), capture)
    };
    let mut slots = Vec::with_capacity(pending.len());
    for (shadow, permit, slot, i) in pending {
        let policy = &fwd.mirrors[i];
        let shadow_host = host
            .to_str()
            .ok()
            .and_then(|h| HeaderValue::from_str(&policy.shadow_host(h)).ok())
            .unwrap_or_else(|| host.clone());
        let mut shadow_headers = headers.clone();
        shadow_headers.insert(HOST, shadow_host.clone());
        mark_shadow(&mut shadow_headers);
        slots.push(slot.clone());
        tokio::spawn(mirror::run(MirrorJob {
            cluster: shadow,
            permit,
            method: method.clone(),
            path: path.clone(),
            headers: shadow_headers,
            host: shadow_host,
            body: capture.clone(),
            timeout: timeout.unwrap_or(shared.options.mirror.default_timeout),
            slot,
        }));
    }
    drop(capture);

    // ----- the primary, with retries
    let primary_started = Instant::now();
    let result = primary(
        cluster, fwd, retries, &method, &path, headers, &host, first_body, replay, peer, timeout,
    )
    .await;
    match result {
        Ok((resp, finish, deadline)) => {
            let status = resp.status().as_u16();
            let (mut rparts, incoming) = resp.into_parts();
            strip_hop_by_hop(&mut rparts.headers);
            rparts.version = Version::HTTP_11;
            if let Some(w) = weighted {
                apply_mutations(&w.response_headers, &mut rparts.headers);
            }
            apply_mutations(&route.response_headers, &mut rparts.headers);
            let measure =
                (!slots.is_empty()).then(|| PrimaryMeasure::new(slots, status, primary_started));
            let body = UpstreamBody::new(incoming, finish, measure, deadline);
            Response::from_parts(rparts, RespBody::Upstream(body))
        }
        Err(local) => {
            if !slots.is_empty() {
                PrimaryMeasure::local(&slots, local.status(), local.body().as_bytes(), started);
            }
            local.reply()
        }
    }
}

/// The route timeout, or for a gRPC request on a route with `max_grpc_timeout` the
/// `grpc-timeout` header capped at it.
fn effective_timeout(fwd: &Forward, headers: &HeaderMap) -> Option<Duration> {
    if let Some(cap) = fwd.max_grpc_timeout {
        if matcher::is_grpc(headers) {
            if let Some(t) = headers
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_grpc_timeout)
            {
                return Some(match cap {
                    Some(c) => t.min(c),
                    None => t,
                });
            }
        }
    }
    fwd.timeout
}

/// `grpc-timeout`: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request hash for consistent-hash clusters (Envoy combines the policies' hashes and
/// stops at a `terminal` one that produced a hash).
fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    peer: SocketAddr,
    path: &Uri,
) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let hash_of = |v: &[u8]| {
        let mut h = std::hash::DefaultHasher::new();
        v.hash(&mut h);
        h.finish()
    };
    let mut acc: Option<u64> = None;
    for p in policies {
        let h = match &p.kind {
            HashPolicyKind::Header(name) => headers.get(name).map(|v| hash_of(v.as_bytes())),
            HashPolicyKind::Cookie { name, .. } => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash_of(v.as_bytes())),
            HashPolicyKind::SourceIp => Some(hash_of(peer.ip().to_string().as_bytes())),
            HashPolicyKind::QueryParameter(name) => path.query().and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| hash_of(v.as_bytes()))
            }),
        };
        if let Some(h) = h {
            acc = Some(acc.map_or(h, |a| a.rotate_left(1) ^ h));
            if p.terminal {
                break;
            }
        }
    }
    acc
}

fn retriable_response(r: &RetryPolicy, status: u16, headers: &HeaderMap) -> bool {
    let on = r.retry_on;
    if (on.contains(RetryOn::FIVE_XX) && status >= 500)
        || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
        || (on.contains(RetryOn::RETRIABLE_4XX) && status == 409)
        || (on.contains(RetryOn::RETRIABLE_STATUS_CODES)
            && r.retriable_status_codes.contains(&status))
    {
        return true;
    }
    if let Some(g) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
    {
        return (on.contains(RetryOn::GRPC_CANCELLED) && g == 1)
            || (on.contains(RetryOn::GRPC_DEADLINE_EXCEEDED) && g == 4)
            || (on.contains(RetryOn::GRPC_RESOURCE_EXHAUSTED) && g == 8)
            || (on.contains(RetryOn::GRPC_INTERNAL) && g == 13)
            || (on.contains(RetryOn::GRPC_UNAVAILABLE) && g == 14);
    }
    false
}

fn retriable_failure(r: &RetryPolicy, f: &TryFail, h2: bool) -> bool {
    let on = r.retry_on;
    let transport = on.contains(RetryOn::FIVE_XX) || on.contains(RetryOn::GATEWAY_ERROR);
    match f {
        TryFail::Connect(_) => transport || on.contains(RetryOn::CONNECT_FAILURE),
        TryFail::Reset => {
            transport || on.contains(RetryOn::RESET) || (h2 && on.contains(RetryOn::REFUSED_STREAM))
        }
        TryFail::PerTryTimeout => transport,
        TryFail::GlobalTimeout => false,
    }
}

/// Envoy's fully jittered exponential back-off before retry `n` (1-based).
fn backoff(r: &RetryPolicy, n: u32) -> Duration {
    let base = r.base_interval.max(Duration::from_millis(1));
    let cap = r.max_interval.max(base);
    let exp = base
        .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
        .min(cap);
    let ms = u64::try_from(exp.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rand::rng().random_range(0..=ms))
}

/// A future bounded by an optional deadline.
async fn until<T>(
    deadline: Option<tokio::time::Instant>,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await.ok(),
        None => Some(f.await),
    }
}

type PrimaryOk = (Response<Incoming>, Finish, Option<tokio::time::Instant>);

#[allow(clippy::too_many_arguments)]
async fn primary(
    cluster: &Arc<ClusterRt>,
    fwd: &Forward,
    retries: Option<&RetryPolicy>,
    method: &Method,
    path: &Uri,
    headers: HeaderMap,
    host: &HeaderValue,
    first_body: ReqBody,
    replay: Replay,
    peer: SocketAddr,
    timeout: Option<Duration>,
) -> Result<PrimaryOk, Local> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    if until(deadline, cluster.ready()).await.is_none() {
        return Err(Local::Timeout);
    }
    if cluster.overloaded() {
        return Err(Local::Overflow);
    }
    let hash = match cluster.cfg.lb {
        LbPolicy::ConsistentHash { .. } => request_hash(&fwd.hash_policy, &headers, peer, path),
        _ => None,
    };
    let h2 = cluster.cfg.protocol == UpstreamProtocol::Http2;
    let max_retries = retries.map_or(0, |r| r.num_retries);
    let mut headers = Some(headers);
    let mut body = Some(first_body);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut retry_slot = false;
    let mut attempt = 0u32;
    let result = loop {
        let Some(ep) = cluster.pick(
            hash,
            &tried,
            retries.map_or(1, |r| r.host_selection_retry_max_attempts),
        ) else {
            cluster
                .stats
                .upstream_cx_none_healthy
                .fetch_add(1, Ordering::Relaxed);
            break Err(Local::NoHealthyUpstream);
        };
        let last = attempt >= max_retries;
        let try_deadline = match retries.and_then(|r| r.per_try_timeout) {
            Some(p) => {
                let t = tokio::time::Instant::now() + p;
                Some(deadline.map_or(t, |d| d.min(t)))
            }
            None => deadline,
        };
        let mut finish = Finish::start(cluster, ep.clone());
        let hdrs = if last {
            headers.take()
        } else {
            headers.clone()
        };
        let body_slot = &mut body;
        let one = async {
            let mut conn = cluster
                .connection(&ep, false)
                .await
                .map_err(TryFail::Connect)?;
            // The body is taken only once a connection is there: a connect failure leaves it
            // for the next try.
            let b = body_slot.take().or_else(|| replay.body());
            let Some(b) = b else {
                return Err(TryFail::Reset);
            };
            let mut req =
                upstream_request(method.clone(), path, hdrs.unwrap_or_default(), host, h2, b);
            let mut fresh = false;
            loop {
                match conn.send(req).await {
                    Ok(r) => return Ok((r, conn)),
                    Err(SendFail::NotSent(r)) if !fresh => {
                        // A pooled connection closed under us before the request went out.
                        fresh = true;
                        req = *r;
                        conn = cluster
                            .connection(&ep, true)
                            .await
                            .map_err(TryFail::Connect)?;
                    }
                    Err(_) => return Err(TryFail::Reset),
                }
            }
        };
        let outcome = match until(try_deadline, one).await {
            Some(r) => r,
            None if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) => {
                Err(TryFail::GlobalTimeout)
            }
            None => Err(TryFail::PerTryTimeout),
        };
        let may_retry = !last && (body.is_some() || !matches!(replay, Replay::None));
        match outcome {
            Ok((resp, conn)) => {
                let status = resp.status().as_u16();
                let retry = may_retry
                    && retries.is_some_and(|r| retriable_response(r, status, resp.headers()))
                    && replay_ready(&body, &replay)
                    && take_retry_slot(cluster, &mut retry_slot);
                if !retry {
                    finish.responded(status, conn);
                    break Ok((resp, finish));
                }
                // This try's answer is dropped (its connection closes) and charged.
                finish.failed(status);
            }
            Err(f) => {
                let code = match f {
                    TryFail::PerTryTimeout => {
                        cluster
                            .stats
                            .upstream_rq_per_try_timeout
                            .fetch_add(1, Ordering::Relaxed);
                        504
                    }
                    TryFail::GlobalTimeout => {
                        cluster
                            .stats
                            .upstream_rq_timeout
                            .fetch_add(1, Ordering::Relaxed);
                        504
                    }
                    TryFail::Reset => {
                        cluster
                            .stats
                            .upstream_rq_rx_reset
                            .fetch_add(1, Ordering::Relaxed);
                        503
                    }
                    TryFail::Connect(ref e) => {
                        tracing::debug!(cluster = %cluster.name, endpoint = %ep.addr, error = %e, "upstream connect failed");
                        503
                    }
                };
                finish.failed(code);
                let retry = may_retry
                    && retries.is_some_and(|r| retriable_failure(r, &f, h2))
                    && replay_ready(&body, &replay)
                    && take_retry_slot(cluster, &mut retry_slot);
                if !retry {
                    let retried = attempt > 0;
                    break Err(match f {
                        TryFail::Connect(_) if retried => Local::RetriedConnectFailure,
                        TryFail::Connect(_) => Local::ConnectFailure,
                        TryFail::Reset if retried => Local::RetriedReset,
                        TryFail::Reset => Local::Reset,
                        TryFail::PerTryTimeout | TryFail::GlobalTimeout => Local::Timeout,
                    });
                }
            }
        }
        // ----- retry
        cluster
            .stats
            .upstream_rq_retry
            .fetch_add(1, Ordering::Relaxed);
        attempt += 1;
        if retries.is_some_and(|r| r.previous_hosts) {
            tried.push(ep.addr);
        }
        if let Some(r) = retries {
            if until(deadline, tokio::time::sleep(backoff(r, attempt)))
                .await
                .is_none()
            {
                cluster
                    .stats
                    .upstream_rq_timeout
                    .fetch_add(1, Ordering::Relaxed);
                break Err(Local::Timeout);
            }
        }
    };
    if retry_slot {
        cluster.release_retry_slot();
    }
    result.map(|(resp, finish)| (resp, finish, deadline))
}

/// Hold one of the cluster's `max_retries` slots for this request (taken once).
fn take_retry_slot(cluster: &ClusterRt, held: &mut bool) -> bool {
    if !*held {
        *held = cluster.try_retry_slot();
    }
    *held
}

/// Can the next try get a body?
fn replay_ready(body: &Option<ReqBody>, replay: &Replay) -> bool {
    body.is_some()
        || match replay {
            Replay::Bytes(_) => true,
            Replay::Capture(c) => matches!(c.now(), Some(Ok(_))),
            Replay::None => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::table::RetryOn;

    fn policy(on: RetryOn, codes: Vec<u16>) -> RetryPolicy {
        RetryPolicy {
            retry_on: on,
            retriable_status_codes: codes,
            num_retries: 2,
            per_try_timeout: None,
            previous_hosts: false,
            host_selection_retry_max_attempts: 1,
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
        }
    }

    #[test]
    fn retry_on_responses() {
        let h = HeaderMap::new();
        let p = policy(RetryOn::FIVE_XX, vec![]);
        assert!(retriable_response(&p, 500, &h));
        assert!(!retriable_response(&p, 404, &h));
        let p = policy(RetryOn::GATEWAY_ERROR, vec![]);
        assert!(retriable_response(&p, 503, &h));
        assert!(!retriable_response(&p, 500, &h));
        let p = policy(RetryOn::RETRIABLE_STATUS_CODES, vec![418]);
        assert!(retriable_response(&p, 418, &h));
        let p = policy(RetryOn::GRPC_UNAVAILABLE, vec![]);
        let mut g = HeaderMap::new();
        g.insert("grpc-status", HeaderValue::from_static("14"));
        assert!(retriable_response(&p, 200, &g));
        assert!(!retriable_response(&p, 200, &h));
    }

    #[test]
    fn retry_on_failures() {
        let istio = policy(
            RetryOn::CONNECT_FAILURE
                | RetryOn::REFUSED_STREAM
                | RetryOn::GRPC_UNAVAILABLE
                | RetryOn::GRPC_CANCELLED
                | RetryOn::RETRIABLE_STATUS_CODES,
            vec![503],
        );
        let connect = TryFail::Connect(ConnectError::Timeout);
        assert!(retriable_failure(&istio, &connect, false));
        assert!(!retriable_failure(&istio, &TryFail::Reset, false));
        assert!(retriable_failure(&istio, &TryFail::Reset, true));
        assert!(!retriable_failure(&istio, &TryFail::PerTryTimeout, false));
        let p = policy(RetryOn::FIVE_XX, vec![]);
        assert!(retriable_failure(&p, &TryFail::PerTryTimeout, false));
        assert!(!retriable_failure(&p, &TryFail::GlobalTimeout, false));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = policy(RetryOn::FIVE_XX, vec![]);
        for n in 1..10 {
            assert!(backoff(&p, n) <= Duration::from_millis(250));
        }
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn hash_policies_pick_their_input() {
        let peer: SocketAddr = "10.0.0.1:1234".parse().expect("addr");
        let uri: Uri = "/p?user=7&x".parse().expect("uri");
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("a"));
        h.insert(COOKIE, HeaderValue::from_static("s=1; session=abc"));
        let pol = |kind| HashPolicy {
            kind,
            terminal: false,
        };
        let header = request_hash(
            &[pol(HashPolicyKind::Header(http::HeaderName::from_static(
                "x-user",
            )))],
            &h,
            peer,
            &uri,
        );
        assert!(header.is_some());
        let missing = request_hash(
            &[pol(HashPolicyKind::Header(http::HeaderName::from_static(
                "x-none",
            )))],
            &h,
            peer,
            &uri,
        );
        assert_eq!(missing, None);
        let cookie = request_hash(
            &[pol(HashPolicyKind::Cookie {
                name: "session".into(),
                ttl: None,
                path: None,
            })],
            &h,
            peer,
            &uri,
        );
        assert!(cookie.is_some());
        let q = request_hash(
            &[pol(HashPolicyKind::QueryParameter("user".into()))],
            &h,
            peer,
            &uri,
        );
        assert!(q.is_some());
        assert!(request_hash(&[pol(HashPolicyKind::SourceIp)], &h, peer, &uri).is_some());
    }
}
