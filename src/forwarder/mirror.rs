//! Mirroring: shadow requests sent fire-and-forget, and the primary/shadow comparison.
//!
//! Envoy's semantics for what the shadow gets (the request after route rewrites and header
//! mutations, Host with `-shadow` before any port unless disabled, the same `x-request-id`,
//! one independent `runtime_fraction` draw per policy), and better in what it can cost the
//! user's request: nothing.
//!
//! * The body comes from a bounded copy taken while the primary streams
//!   ([`crate::forwarder::proxy::body::Tee`], default 64 KiB); a larger body goes to the
//!   primary unchanged and the mirror is skipped and counted (`body_too_large`), never silently.
//! * Each shadow cluster has an in-flight budget (a semaphore, `try_acquire` only): when it is
//!   full the mirror is dropped and counted (`dropped_budget`). Each shadow has a timeout
//!   (the route's, or [`MirrorOptions::default_timeout`] when the route has none). So memory is
//!   bounded by `max_in_flight × (body limit + headers)` whatever the shadow does.
//! * The shadow runs on its own task through its own cluster's pools; its response is read to
//!   the end (to measure it) and discarded.
//!
//! Decision data: a [`PairSlot`] is shared by the primary's response body and the shadow task;
//! whichever finishes second compares the two outcomes (status, latency, size, body hash) and
//! counts pairs, status and body mismatches per (route, shadow cluster). There is no map to
//! evict from: a slot lives exactly as long as its two sides. The last pairs (and unpaired
//! outcomes) are kept in a small ring for `/debug/mirror`.

use std::collections::VecDeque;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use hyper::body::Body;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::forwarder::metrics::{MirrorClusterStats, PairStats, Stats};
use crate::forwarder::proxy::body::{Capture, CaptureMiss, ReqBody};
use crate::forwarder::proxy::headers::upstream_request;
use crate::forwarder::proxy::upstream::{ClusterRt, Finish, SendFail};

/// Mirroring limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorOptions {
    /// Largest request body mirrored (and replayable for retries), bytes. Default 64 KiB.
    pub body_limit: usize,
    /// Shadow requests in flight per shadow cluster; more are dropped and counted.
    pub max_in_flight: usize,
    /// Shadow timeout when the route has none (Istio's default route timeout is none).
    pub default_timeout: Duration,
    /// Pairs kept for `/debug/mirror`.
    pub recent: usize,
}

impl Default for MirrorOptions {
    fn default() -> MirrorOptions {
        MirrorOptions {
            body_limit: 64 * 1024,
            max_in_flight: 1024,
            default_timeout: Duration::from_secs(5),
            recent: 64,
        }
    }
}

/// The in-flight budget and counters of one shadow cluster; kept across table swaps.
#[derive(Debug)]
pub struct MirrorBudget {
    sem: Arc<Semaphore>,
    max: usize,
    pub stats: Arc<MirrorClusterStats>,
}

impl MirrorBudget {
    pub fn new(max: usize, stats: Arc<MirrorClusterStats>) -> MirrorBudget {
        MirrorBudget {
            sem: Arc::new(Semaphore::new(max)),
            max,
            stats,
        }
    }

    /// A permit for one more shadow, or `None` (and `dropped_budget` counted) when full.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        match self.sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                self.stats.dropped_budget.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.max.saturating_sub(self.sem.available_permits())
    }
}

/// What one side of a pair answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub status: u16,
    #[serde(rename = "latency_ms", serialize_with = "ser_ms")]
    pub latency: Duration,
    /// Response body bytes.
    pub size: u64,
    /// A 64-bit hash of the response body (SipHash-1-3 with fixed keys).
    #[serde(serialize_with = "ser_hex")]
    pub hash: u64,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn ser_hex<S: serde::Serializer>(h: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{h:016x}"))
}

/// A streaming body hash: the same bytes give the same hash however they are chunked.
#[derive(Debug, Clone, Default)]
pub struct BodyHash {
    hasher: std::hash::DefaultHasher,
    size: u64,
}

impl BodyHash {
    pub fn update(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        self.hasher.write(data);
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn finish(&self) -> u64 {
        self.hasher.finish()
    }
}

/// One entry of the `/debug/mirror` ring.
#[derive(Debug, Clone, Serialize)]
pub struct PairRecord {
    pub request_id: String,
    pub route: String,
    pub shadow_cluster: String,
    pub primary: Option<Outcome>,
    pub shadow: Option<Outcome>,
    /// Why the shadow has no outcome (`timeout`, `connect failure`, `reset`, ...).
    pub shadow_error: Option<&'static str>,
}

/// The last pairs, newest last.
#[derive(Debug)]
pub struct Recent {
    cap: usize,
    ring: Mutex<VecDeque<PairRecord>>,
}

impl Recent {
    pub fn new(cap: usize) -> Recent {
        Recent {
            cap,
            ring: Mutex::new(VecDeque::with_capacity(cap)),
        }
    }

    fn push(&self, r: PairRecord) {
        if self.cap == 0 {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == self.cap {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    pub fn snapshot(&self) -> Vec<PairRecord> {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// The meeting point of a primary and its shadow (one per fired mirror policy).
#[derive(Debug)]
pub struct PairSlot {
    request_id: HeaderValue,
    stats: Arc<PairStats>,
    recent: Arc<Recent>,
    primary: OnceLock<Outcome>,
    shadow: OnceLock<Outcome>,
    shadow_error: OnceLock<&'static str>,
    arrived: AtomicU8,
}

impl PairSlot {
    pub fn new(request_id: HeaderValue, stats: Arc<PairStats>, recent: Arc<Recent>) -> PairSlot {
        PairSlot {
            request_id,
            stats,
            recent,
            primary: OnceLock::new(),
            shadow: OnceLock::new(),
            shadow_error: OnceLock::new(),
            arrived: AtomicU8::new(0),
        }
    }

    pub fn primary(&self, o: Outcome) {
        if self.primary.set(o).is_ok() {
            self.arrive();
        }
    }

    pub fn shadow(&self, o: Outcome) {
        if self.shadow.set(o).is_ok() {
            self.arrive();
        }
    }

    fn shadow_failed(&self, why: &'static str) {
        let _ = self.shadow_error.set(why);
    }

    fn arrive(&self) {
        if self.arrived.fetch_add(1, Ordering::AcqRel) == 1 {
            self.compare();
        }
    }

    fn compare(&self) {
        let (Some(p), Some(s)) = (self.primary.get(), self.shadow.get()) else {
            return;
        };
        let st = &self.stats;
        st.pairs.fetch_add(1, Ordering::Relaxed);
        if p.status != s.status {
            st.status_mismatch.fetch_add(1, Ordering::Relaxed);
        }
        if p.hash != s.hash || p.size != s.size {
            st.body_mismatch.fetch_add(1, Ordering::Relaxed);
        }
        if s.status >= 500 && p.status < 500 {
            st.shadow_only_5xx.fetch_add(1, Ordering::Relaxed);
        }
        st.primary_time.record(p.latency);
        st.shadow_time.record(s.latency);
        self.recent.push(self.record());
    }

    fn record(&self) -> PairRecord {
        PairRecord {
            request_id: String::from_utf8_lossy(self.request_id.as_bytes()).into_owned(),
            route: self.stats.route.clone(),
            shadow_cluster: self.stats.cluster.clone(),
            primary: self.primary.get().copied(),
            shadow: self.shadow.get().copied(),
            shadow_error: self.shadow_error.get().copied(),
        }
    }
}

impl Drop for PairSlot {
    fn drop(&mut self) {
        // One side never arrived: keep the unpaired outcome for the debug page.
        if self.arrived.load(Ordering::Acquire) < 2
            && (self.primary.get().is_some()
                || self.shadow.get().is_some()
                || self.shadow_error.get().is_some())
        {
            self.recent.push(self.record());
        }
    }
}

/// The primary's response measured on its way downstream, for the pairs of its mirrors.
#[derive(Debug)]
pub struct PrimaryMeasure {
    slots: Vec<Arc<PairSlot>>,
    status: u16,
    started: Instant,
    hash: BodyHash,
}

impl PrimaryMeasure {
    pub fn new(slots: Vec<Arc<PairSlot>>, status: u16, started: Instant) -> PrimaryMeasure {
        PrimaryMeasure {
            slots,
            status,
            started,
            hash: BodyHash::default(),
        }
    }

    pub fn data(&mut self, d: &[u8]) {
        self.hash.update(d);
    }

    /// The response ended; `clean`: completely. An incomplete primary is not paired.
    pub fn finish(self, clean: bool) {
        if !clean {
            return;
        }
        let o = Outcome {
            status: self.status,
            latency: self.started.elapsed(),
            size: self.hash.size(),
            hash: self.hash.finish(),
        };
        for s in &self.slots {
            s.primary(o);
        }
    }

    /// A local reply (no upstream response): its status and body are the primary's outcome.
    pub fn local(slots: &[Arc<PairSlot>], status: u16, body: &[u8], started: Instant) {
        let mut h = BodyHash::default();
        h.update(body);
        let o = Outcome {
            status,
            latency: started.elapsed(),
            size: h.size(),
            hash: h.finish(),
        };
        for s in slots {
            s.primary(o);
        }
    }
}

/// One shadow request, ready to go once the body is known.
#[derive(Debug)]
pub struct MirrorJob {
    pub cluster: Arc<ClusterRt>,
    pub permit: OwnedSemaphorePermit,
    pub method: Method,
    /// Path and query after the route's rewrites.
    pub path: Uri,
    /// The primary's final headers with the shadow Host.
    pub headers: HeaderMap,
    pub host: HeaderValue,
    pub body: Capture,
    pub timeout: Duration,
    pub slot: Arc<PairSlot>,
}

/// Run one shadow: wait for the body (bounded by the shadow timeout), send, read and measure
/// the response, report. Never touches the primary.
pub async fn run(job: MirrorJob) {
    let MirrorJob {
        cluster,
        permit,
        method,
        path,
        headers,
        host,
        body,
        timeout,
        slot,
    } = job;
    let stats = cluster.mirror.stats.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    let body = match tokio::time::timeout_at(deadline, body.wait()).await {
        Ok(Ok(b)) => b,
        Ok(Err(CaptureMiss::TooLarge)) => {
            stats.body_too_large.fetch_add(1, Ordering::Relaxed);
            slot.shadow_failed("body too large");
            return;
        }
        Ok(Err(CaptureMiss::Incomplete)) | Err(_) => {
            // The primary's body never completed: nothing whole to mirror.
            stats.shadow_errors.fetch_add(1, Ordering::Relaxed);
            slot.shadow_failed("request body incomplete");
            return;
        }
    };
    stats.sent.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let sent = send(&cluster, method, path, headers, host, body);
    match tokio::time::timeout_at(deadline, sent).await {
        Ok(Ok((status, hash))) => slot.shadow(Outcome {
            status,
            latency: started.elapsed(),
            size: hash.size(),
            hash: hash.finish(),
        }),
        Ok(Err(why)) => {
            stats.shadow_errors.fetch_add(1, Ordering::Relaxed);
            slot.shadow_failed(why);
        }
        Err(_) => {
            stats.shadow_errors.fetch_add(1, Ordering::Relaxed);
            stats.shadow_timeouts.fetch_add(1, Ordering::Relaxed);
            cluster
                .stats
                .upstream_rq_timeout
                .fetch_add(1, Ordering::Relaxed);
            slot.shadow_failed("timeout");
        }
    }
    drop(permit);
}

async fn send(
    cluster: &ClusterRt,
    method: Method,
    path: Uri,
    headers: HeaderMap,
    host: HeaderValue,
    body: Bytes,
) -> Result<(u16, BodyHash), &'static str> {
    cluster.ready().await;
    let Some(ep) = cluster.pick(None, &[], 0) else {
        cluster
            .stats
            .upstream_cx_none_healthy
            .fetch_add(1, Ordering::Relaxed);
        return Err("no healthy upstream");
    };
    let mut finish = Finish::start(cluster, ep.clone());
    let h2 = cluster.cfg.protocol == crate::forwarder::table::UpstreamProtocol::Http2;
    let mut req = upstream_request(method, &path, headers, &host, h2, ReqBody::full(body));
    let mut fresh = false;
    let (resp, conn) = loop {
        let mut conn = match cluster.connection(&ep, fresh).await {
            Ok(c) => c,
            Err(_) => {
                finish.failed(503);
                return Err("connect failure");
            }
        };
        match conn.send(req).await {
            Ok(r) => break (r, conn),
            Err(SendFail::NotSent(r)) if !fresh => {
                // A pooled connection closed under us before the request went out.
                fresh = true;
                req = *r;
            }
            Err(_) => {
                cluster
                    .stats
                    .upstream_rq_rx_reset
                    .fetch_add(1, Ordering::Relaxed);
                finish.failed(503);
                return Err("reset");
            }
        }
    };
    let status = resp.status().as_u16();
    finish.responded(status, conn);
    let mut body = resp.into_body();
    let mut hash = BodyHash::default();
    loop {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    hash.update(d);
                }
            }
            Some(Err(_)) => {
                finish.complete(false, false);
                return Err("reset during response body");
            }
            None => break,
        }
    }
    finish.complete(true, false);
    Ok((status, hash))
}

/// The `/debug/mirror` page: per shadow cluster counters, per (route, shadow cluster)
/// comparison with latency quantiles, and the last pairs.
pub fn summary_json(
    stats: &Stats,
    budgets: &[Arc<MirrorBudget>],
    recent: &Recent,
) -> serde_json::Value {
    use serde_json::json;
    let in_flight: std::collections::BTreeMap<&str, usize> = budgets
        .iter()
        .map(|b| (b.stats.cluster.as_str(), b.in_flight()))
        .collect();
    let clusters: Vec<serde_json::Value> = stats
        .all_mirror_clusters()
        .iter()
        .map(|m| {
            let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            json!({
                "shadow_cluster": m.cluster,
                "sent": get(&m.sent),
                "skipped_fraction": get(&m.skipped_fraction),
                "dropped_budget": get(&m.dropped_budget),
                "body_too_large": get(&m.body_too_large),
                "shadow_errors": get(&m.shadow_errors),
                "shadow_timeouts": get(&m.shadow_timeouts),
                "in_flight": in_flight.get(m.cluster.as_str()).copied().unwrap_or(0),
            })
        })
        .collect();
    let quantiles = |h: &crate::forwarder::metrics::Histogram| {
        let count = h.count();
        json!({
            "count": count,
            "mean_ms": if count > 0 { Some(h.sum_ms() / count as f64) } else { None },
            "p50_ms": h.quantile_ms(0.5),
            "p90_ms": h.quantile_ms(0.9),
            "p99_ms": h.quantile_ms(0.99),
        })
    };
    let routes: Vec<serde_json::Value> = stats
        .all_pairs()
        .iter()
        .map(|p| {
            let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            json!({
                "route": p.route,
                "shadow_cluster": p.cluster,
                "pairs": get(&p.pairs),
                "status_mismatch": get(&p.status_mismatch),
                "body_mismatch": get(&p.body_mismatch),
                "shadow_only_5xx": get(&p.shadow_only_5xx),
                "primary": quantiles(&p.primary_time),
                "shadow": quantiles(&p.shadow_time),
            })
        })
        .collect();
    json!({
        "clusters": clusters,
        "routes": routes,
        "recent": recent.snapshot(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_hash_ignores_chunking() {
        let mut a = BodyHash::default();
        a.update(b"hello world, this is a longer body");
        let mut b = BodyHash::default();
        for chunk in b"hello world, this is a longer body".chunks(3) {
            b.update(chunk);
        }
        assert_eq!(a.finish(), b.finish());
        assert_eq!(a.size(), b.size());
        let mut c = BodyHash::default();
        c.update(b"hello world, this is a longer bodY");
        assert_ne!(a.finish(), c.finish());
    }

    fn outcome(status: u16, body: &[u8], ms: u64) -> Outcome {
        let mut h = BodyHash::default();
        h.update(body);
        Outcome {
            status,
            latency: Duration::from_millis(ms),
            size: h.size(),
            hash: h.finish(),
        }
    }

    #[test]
    fn pairs_are_compared_once_whoever_comes_second() {
        let stats = Arc::new(PairStats::new("r", "c"));
        let recent = Arc::new(Recent::new(4));
        let id = HeaderValue::from_static("id-1");
        let slot = PairSlot::new(id.clone(), stats.clone(), recent.clone());
        slot.shadow(outcome(500, b"boom", 3));
        assert_eq!(stats.pairs.load(Ordering::Relaxed), 0);
        slot.primary(outcome(200, b"ok", 2));
        slot.primary(outcome(200, b"ok", 2)); // a second report is ignored
        assert_eq!(stats.pairs.load(Ordering::Relaxed), 1);
        assert_eq!(stats.status_mismatch.load(Ordering::Relaxed), 1);
        assert_eq!(stats.body_mismatch.load(Ordering::Relaxed), 1);
        assert_eq!(stats.shadow_only_5xx.load(Ordering::Relaxed), 1);
        assert_eq!(stats.primary_time.count(), 1);
        drop(slot);
        let r = recent.snapshot();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].request_id, "id-1");

        let same = PairSlot::new(id, stats.clone(), recent.clone());
        same.primary(outcome(200, b"ok", 2));
        same.shadow(outcome(200, b"ok", 9));
        assert_eq!(stats.pairs.load(Ordering::Relaxed), 2);
        assert_eq!(stats.status_mismatch.load(Ordering::Relaxed), 1);
        assert_eq!(stats.body_mismatch.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_unpaired_slot_is_kept_for_debugging() {
        let stats = Arc::new(PairStats::new("r", "c"));
        let recent = Arc::new(Recent::new(2));
        let slot = PairSlot::new(HeaderValue::from_static("x"), stats.clone(), recent.clone());
        slot.primary(outcome(200, b"ok", 1));
        slot.shadow_failed("timeout");
        drop(slot);
        let r = recent.snapshot();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].shadow_error, Some("timeout"));
        assert_eq!(stats.pairs.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn budget_drops_and_counts_when_full() {
        let stats = Arc::new(MirrorClusterStats::new("c"));
        let b = MirrorBudget::new(1, stats.clone());
        let p = b.try_permit().expect("one permit");
        assert_eq!(b.in_flight(), 1);
        assert!(b.try_permit().is_none());
        assert_eq!(stats.dropped_budget.load(Ordering::Relaxed), 1);
        drop(p);
        assert!(b.try_permit().is_some());
    }
}
