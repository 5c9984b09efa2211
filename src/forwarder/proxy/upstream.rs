//! Upstream clusters at run time: endpoints (static, EDS or resolved by DNS), load balancing
//! (round robin, least request, random, consistent hash) and per-endpoint connection pools
//! built on hyper's client connection API (an HTTP/1.1 keep-alive stack, or one multiplexed
//! HTTP/2 prior-knowledge connection).
//!
//! A [`ClusterRt`] is rebuilt when a table is applied, but it takes over the previous one's
//! endpoints (so pooled connections stay warm), statistics and mirror budget.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::body::ReqBody;
use crate::forwarder::metrics::ClusterStats;
use crate::forwarder::mirror::MirrorBudget;
use crate::forwarder::table::{self, LbPolicy, UpstreamProtocol};

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// Envoy's default upstream idle timeout (`common_http_protocol_options.idle_timeout`).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One upstream endpoint with its connection pool.
#[derive(Debug)]
pub struct EndpointRt {
    pub addr: SocketAddr,
    pub weight: u32,
    protocol: UpstreamProtocol,
    /// Requests in flight (least-request balancing).
    active: AtomicUsize,
    /// A stable hash of the address (consistent-hash balancing).
    addr_hash: u64,
    /// Idle HTTP/1.1 connections (a stack: the most recently used goes out first). The lock
    /// is held for a push or a pop only.
    idle: Mutex<Vec<Idle>>,
    /// The shared HTTP/2 connection and its generation (to tell a replaced one apart).
    h2: Mutex<Option<(u64, http2::SendRequest<ReqBody>)>>,
    h2_generation: AtomicU64,
    h2_connecting: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<ReqBody>,
    uses: u32,
    since: Instant,
}

impl EndpointRt {
    fn new(addr: SocketAddr, weight: u32, protocol: UpstreamProtocol) -> EndpointRt {
        let mut h = std::hash::DefaultHasher::new();
        addr.hash(&mut h);
        EndpointRt {
            addr,
            weight: weight.max(1),
            protocol,
            active: AtomicUsize::new(0),
            addr_hash: h.finish(),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_generation: AtomicU64::new(0),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Requests in flight to this endpoint.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn put_idle(&self, sender: http1::SendRequest<ReqBody>, uses: u32) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle {
                sender,
                uses,
                since: Instant::now(),
            });
        }
    }

    fn take_idle(&self) -> Option<Idle> {
        lock(&self.idle).pop()
    }
}

/// The endpoints of a cluster at one moment, with their balancing aids.
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub eps: Vec<Arc<EndpointRt>>,
    /// Smooth weighted round-robin schedule (indices into `eps`); empty when all weights are
    /// equal (plain round robin) or the cycle would be too long (weighted random instead).
    wheel: Vec<u32>,
    /// Cumulative weights for weighted random picks.
    cumulative: Vec<u64>,
    total: u64,
    equal: bool,
}

impl EndpointSet {
    fn new(eps: Vec<Arc<EndpointRt>>) -> EndpointSet {
        let equal = eps.windows(2).all(|w| w[0].weight == w[1].weight);
        let mut cumulative = Vec::with_capacity(eps.len());
        let mut total = 0u64;
        for e in &eps {
            total += u64::from(e.weight);
            cumulative.push(total);
        }
        let wheel = if equal { Vec::new() } else { schedule(&eps) };
        EndpointSet {
            eps,
            wheel,
            cumulative,
            total,
            equal,
        }
    }

    fn weighted_random(&self, rng: &mut impl Rng) -> usize {
        if self.equal || self.total == 0 {
            return rng.random_range(0..self.eps.len());
        }
        let r = rng.random_range(0..self.total);
        self.cumulative
            .partition_point(|&c| c <= r)
            .min(self.eps.len() - 1)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin over the weights reduced by their gcd, when the
/// cycle is at most 4096 long.
fn schedule(eps: &[Arc<EndpointRt>]) -> Vec<u32> {
    let g = eps
        .iter()
        .fold(0u64, |g, e| gcd(g, u64::from(e.weight)))
        .max(1);
    let weights: Vec<i64> = eps
        .iter()
        .map(|e| i64::try_from(u64::from(e.weight) / g).unwrap_or(i64::MAX))
        .collect();
    let total: i64 = weights.iter().fold(0i64, |a, w| a.saturating_add(*w));
    if total > 4096 {
        return Vec::new();
    }
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(u32::try_from(best).unwrap_or(0));
    }
    out
}

/// A cluster at run time.
#[derive(Debug)]
pub struct ClusterRt {
    pub name: String,
    pub cfg: Arc<table::Cluster>,
    pub stats: Arc<ClusterStats>,
    /// The in-flight budget and counters for shadows sent to this cluster.
    pub mirror: Arc<MirrorBudget>,
    set: Arc<ArcSwap<EndpointSet>>,
    /// DNS clusters: `true` once resolved at least once.
    resolved: Option<watch::Receiver<bool>>,
    dns_task: Option<tokio::task::JoinHandle<()>>,
    rr: AtomicUsize,
    retries_active: AtomicU32,
}

impl Drop for ClusterRt {
    fn drop(&mut self) {
        if let Some(t) = self.dns_task.take() {
            t.abort();
        }
    }
}

/// Reuse `prev`'s endpoint (and its pool) for `addr` when nothing about it changed.
fn endpoint_for(
    prev: &HashMap<SocketAddr, Arc<EndpointRt>>,
    addr: SocketAddr,
    weight: u32,
    protocol: UpstreamProtocol,
) -> Arc<EndpointRt> {
    match prev.get(&addr) {
        Some(e) if e.protocol == protocol && e.weight == weight.max(1) => e.clone(),
        _ => Arc::new(EndpointRt::new(addr, weight, protocol)),
    }
}

fn by_addr(set: &EndpointSet) -> HashMap<SocketAddr, Arc<EndpointRt>> {
    set.eps.iter().map(|e| (e.addr, e.clone())).collect()
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Failed(std::io::Error),
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connect timeout"),
            ConnectError::Failed(e) => write!(f, "connect failed: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

/// A connection ready for one request.
#[derive(Debug)]
pub enum Conn {
    H1 {
        sender: http1::SendRequest<ReqBody>,
        uses: u32,
    },
    H2(http2::SendRequest<ReqBody>),
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendFail {
    /// The connection closed before the request was written: it can go on another one.
    NotSent(Box<Request<ReqBody>>),
    /// Reset or closed after the request was (maybe partly) written.
    Reset(hyper::Error),
}

impl Conn {
    /// Send `req`. HTTP/1.1 connections go back to the pool through [`Finish`] once the
    /// response has been read.
    pub async fn send(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>, SendFail> {
        let r = match self {
            Conn::H1 { sender, uses } => {
                *uses += 1;
                sender.try_send_request(req).await
            }
            Conn::H2(sender) => sender.try_send_request(req).await,
        };
        r.map_err(|mut e| match e.take_message() {
            Some(req) => SendFail::NotSent(Box::new(req)),
            None => SendFail::Reset(e.into_error()),
        })
    }
}

impl ClusterRt {
    /// The run-time cluster for `cfg`, taking over `prev`'s endpoints where they remain.
    pub fn build(
        cfg: Arc<table::Cluster>,
        prev: Option<&ClusterRt>,
        stats: Arc<ClusterStats>,
        mirror: Arc<MirrorBudget>,
    ) -> ClusterRt {
        let prev_eps = prev.map(|p| by_addr(&p.set.load())).unwrap_or_default();
        let protocol = cfg.protocol;
        let needs_dns = cfg.endpoints.iter().any(|e| e.socket_addr.is_none());
        if !needs_dns {
            let eps = cfg
                .endpoints
                .iter()
                .filter_map(|e| {
                    e.socket_addr
                        .map(|a| endpoint_for(&prev_eps, a, e.weight, protocol))
                })
                .collect();
            return ClusterRt {
                name: cfg.name.clone(),
                set: Arc::new(ArcSwap::from_pointee(EndpointSet::new(eps))),
                resolved: None,
                dns_task: None,
                cfg,
                stats,
                mirror,
                rr: AtomicUsize::new(0),
                retries_active: AtomicU32::new(0),
            };
        }
        // DNS: start from what the previous cluster had resolved (no gap), refresh in the
        // background.
        let same = prev.filter(|p| p.cfg.endpoints == cfg.endpoints && p.cfg.protocol == protocol);
        let initial = same.map_or_else(|| Arc::new(EndpointSet::default()), |p| p.set.load_full());
        let already = same.is_some_and(|p| p.is_resolved());
        let (tx, rx) = watch::channel(already);
        let set = Arc::new(ArcSwap::new(initial));
        let (refresh, first_only) = match cfg.discovery {
            table::Discovery::LogicalDns { refresh } => (refresh, true),
            table::Discovery::StrictDns { refresh } => (refresh, false),
            _ => (Duration::from_secs(5), false),
        };
        let task = tokio::spawn(dns_loop(
            cfg.endpoints.clone(),
            protocol,
            refresh.max(Duration::from_millis(100)),
            first_only,
            set.clone(),
            tx,
        ));
        ClusterRt {
            name: cfg.name.clone(),
            set,
            resolved: Some(rx),
            dns_task: Some(task),
            cfg,
            stats,
            mirror,
            rr: AtomicUsize::new(0),
            retries_active: AtomicU32::new(0),
        }
    }

    fn is_resolved(&self) -> bool {
        self.resolved.as_ref().is_none_or(|r| *r.borrow())
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.set.load()
    }

    /// Wait (at most the connect timeout) for a DNS cluster's first resolution.
    pub async fn ready(&self) {
        if let Some(rx) = &self.resolved {
            if *rx.borrow() {
                return;
            }
            let mut rx = rx.clone();
            let _ = tokio::time::timeout(self.cfg.connect_timeout, rx.wait_for(|r| *r)).await;
        }
    }

    /// Pick an endpoint by the cluster's policy, avoiding `avoid` (addresses already tried,
    /// Envoy's `previous_hosts` predicate): up to `attempts` re-picks by the policy, then the
    /// next endpoint not tried (Envoy would give up and use the last draw).
    pub fn pick(
        &self,
        hash: Option<u64>,
        avoid: &[SocketAddr],
        attempts: u32,
    ) -> Option<Arc<EndpointRt>> {
        let set = self.set.load();
        let n = set.eps.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(set.eps[0].clone());
        }
        let mut rng = rand::rng();
        let mut pick = self.pick_once(&set, hash, &mut rng);
        let mut tries = 0u32;
        while !avoid.is_empty() && avoid.contains(&set.eps[pick].addr) && tries < attempts.max(1) {
            tries += 1;
            pick = match hash {
                // A hashed pick is deterministic: step to the next endpoint instead.
                Some(_) => (pick + 1) % n,
                None => self.pick_once(&set, None, &mut rng),
            };
        }
        if !avoid.is_empty() && avoid.contains(&set.eps[pick].addr) {
            // Unlucky draws: take the next endpoint not tried yet, if any.
            if let Some(i) = (1..n)
                .map(|k| (pick + k) % n)
                .find(|&i| !avoid.contains(&set.eps[i].addr))
            {
                pick = i;
            }
        }
        Some(set.eps[pick].clone())
    }

    fn pick_once(&self, set: &EndpointSet, hash: Option<u64>, rng: &mut impl Rng) -> usize {
        let n = set.eps.len();
        match self.cfg.lb {
            LbPolicy::RoundRobin => {
                let i = self.rr.fetch_add(1, Ordering::Relaxed);
                if !set.wheel.is_empty() {
                    set.wheel[i % set.wheel.len()] as usize
                } else if set.equal {
                    i % n
                } else {
                    set.weighted_random(rng)
                }
            }
            LbPolicy::Random => set.weighted_random(rng),
            LbPolicy::LeastRequest { choice_count } => {
                let load =
                    |i: usize| (set.eps[i].active() as f64 + 1.0) / f64::from(set.eps[i].weight);
                let mut best = set.weighted_random(rng);
                for _ in 1..choice_count.max(2) {
                    let c = set.weighted_random(rng);
                    if load(c) < load(best) {
                        best = c;
                    }
                }
                best
            }
            LbPolicy::ConsistentHash { .. } => match hash {
                // Rendezvous hashing: the endpoint with the highest mixed score wins.
                Some(h) => (0..n)
                    .max_by_key(|&i| mix(h ^ set.eps[i].addr_hash))
                    .unwrap_or(0),
                None => set.weighted_random(rng),
            },
        }
    }

    /// Take a retry slot (circuit breaker `max_retries`); `false` when full.
    pub fn try_retry_slot(&self) -> bool {
        let max = self.cfg.circuit_breakers.max_retries;
        self.retries_active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release_retry_slot(&self) {
        self.retries_active.fetch_sub(1, Ordering::AcqRel);
    }

    /// `true` when the cluster is at its `max_requests` circuit breaker.
    pub fn overloaded(&self) -> bool {
        self.stats.upstream_rq_active.get() >= i64::from(self.cfg.circuit_breakers.max_requests)
    }

    /// A connection to `ep` ready for one request: a pooled one, or (`fresh`, or none
    /// pooled) a new one.
    pub async fn connection(
        &self,
        ep: &Arc<EndpointRt>,
        fresh: bool,
    ) -> Result<Conn, ConnectError> {
        match ep.protocol {
            UpstreamProtocol::Http1 => self.h1_connection(ep, fresh).await,
            UpstreamProtocol::Http2 => self.h2_connection(ep).await,
        }
    }

    async fn h1_connection(&self, ep: &Arc<EndpointRt>, fresh: bool) -> Result<Conn, ConnectError> {
        let idle_timeout = self.cfg.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
        while let Some(mut idle) = if fresh { None } else { ep.take_idle() } {
            if idle.sender.is_closed() || idle.since.elapsed() >= idle_timeout {
                continue;
            }
            if !idle.sender.is_ready() && idle.sender.ready().await.is_err() {
                continue;
            }
            return Ok(Conn::H1 {
                sender: idle.sender,
                uses: idle.uses,
            });
        }
        let io = self.connect(ep.addr).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, ReqBody>(io)
            .await
            .map_err(|e| {
                self.stats
                    .upstream_cx_connect_fail
                    .fetch_add(1, Ordering::Relaxed);
                ConnectError::Handshake(e)
            })?;
        let stats = self.stats.clone();
        stats.upstream_cx_active.inc();
        tokio::spawn(async move {
            let _ = conn.await;
            stats.upstream_cx_active.dec();
        });
        Ok(Conn::H1 { sender, uses: 0 })
    }

    async fn h2_connection(&self, ep: &Arc<EndpointRt>) -> Result<Conn, ConnectError> {
        loop {
            let existing = lock(&ep.h2).clone();
            if let Some((generation, mut s)) = existing {
                if !s.is_closed() && s.ready().await.is_ok() {
                    return Ok(Conn::H2(s));
                }
                // Broken: forget it unless another task already replaced it.
                let mut slot = lock(&ep.h2);
                if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
                    *slot = None;
                }
            }
            let _connecting = ep.h2_connecting.lock().await;
            if lock(&ep.h2).as_ref().is_some_and(|(_, c)| !c.is_closed()) {
                // Another task connected while this one waited.
                continue;
            }
            let io = self.connect(ep.addr).await?;
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            let (sender, conn) = builder.handshake::<_, ReqBody>(io).await.map_err(|e| {
                self.stats
                    .upstream_cx_connect_fail
                    .fetch_add(1, Ordering::Relaxed);
                ConnectError::Handshake(e)
            })?;
            let stats = self.stats.clone();
            stats.upstream_cx_active.inc();
            tokio::spawn(async move {
                let _ = conn.await;
                stats.upstream_cx_active.dec();
            });
            let generation = ep.h2_generation.fetch_add(1, Ordering::Relaxed);
            *lock(&ep.h2) = Some((generation, sender.clone()));
            return Ok(Conn::H2(sender));
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TokioIo<TcpStream>, ConnectError> {
        let stats = &self.stats;
        stats.upstream_cx_total.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(TokioIo::new(s))
            }
            Ok(Err(e)) => {
                stats
                    .upstream_cx_connect_fail
                    .fetch_add(1, Ordering::Relaxed);
                Err(ConnectError::Failed(e))
            }
            Err(_) => {
                stats
                    .upstream_cx_connect_fail
                    .fetch_add(1, Ordering::Relaxed);
                stats
                    .upstream_cx_connect_timeout
                    .fetch_add(1, Ordering::Relaxed);
                Err(ConnectError::Timeout)
            }
        }
    }
}

/// splitmix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Resolve a DNS cluster's hosts every `refresh` and publish the addresses.
async fn dns_loop(
    endpoints: Vec<table::Endpoint>,
    protocol: UpstreamProtocol,
    refresh: Duration,
    first_only: bool,
    set: Arc<ArcSwap<EndpointSet>>,
    resolved: watch::Sender<bool>,
) {
    loop {
        let mut addrs: Vec<(SocketAddr, u32)> = Vec::new();
        let mut failed = false;
        for e in &endpoints {
            if let Some(a) = e.socket_addr {
                addrs.push((a, e.weight));
                continue;
            }
            match tokio::net::lookup_host((e.host.as_str(), e.port)).await {
                Ok(found) => {
                    let mut found: Vec<SocketAddr> = found.collect();
                    found.sort();
                    found.dedup();
                    if first_only {
                        found.truncate(1);
                    }
                    addrs.extend(found.into_iter().map(|a| (a, e.weight)));
                }
                Err(err) => {
                    failed = true;
                    tracing::debug!(host = %e.host, error = %err, "dns resolution failed");
                }
            }
        }
        // Keep the last good answer when a refresh comes back empty because of failures.
        if !(failed && addrs.is_empty() && *resolved.borrow()) {
            let prev = by_addr(&set.load());
            let eps = addrs
                .into_iter()
                .map(|(a, w)| endpoint_for(&prev, a, w, protocol))
                .collect();
            set.store(Arc::new(EndpointSet::new(eps)));
        }
        resolved.send_replace(true);
        tokio::time::sleep(refresh).await;
    }
}

/// One attempt's bookkeeping, from picking the endpoint to the end of the response: the
/// endpoint's and the cluster's active requests, the response code and `upstream_rq_time`,
/// and the HTTP/1.1 connection's return to the pool after a clean end.
#[derive(Debug)]
pub struct Finish {
    stats: Arc<ClusterStats>,
    ep: Arc<EndpointRt>,
    started: Instant,
    status: u16,
    conn: Option<(http1::SendRequest<ReqBody>, u32)>,
    max_requests_per_connection: Option<u32>,
    recorded: bool,
}

impl Finish {
    /// Start an attempt on `ep`: counts `upstream_rq_total` and the active requests.
    pub fn start(cluster: &ClusterRt, ep: Arc<EndpointRt>) -> Finish {
        cluster
            .stats
            .upstream_rq_total
            .fetch_add(1, Ordering::Relaxed);
        cluster.stats.upstream_rq_active.inc();
        ep.active.fetch_add(1, Ordering::Relaxed);
        Finish {
            stats: cluster.stats.clone(),
            ep,
            started: Instant::now(),
            status: 0,
            conn: None,
            max_requests_per_connection: cluster.cfg.max_requests_per_connection,
            recorded: false,
        }
    }

    /// The response arrived on `conn` with `status`.
    pub fn responded(&mut self, status: u16, conn: Conn) {
        self.status = status;
        if let Conn::H1 { sender, uses } = conn {
            self.conn = Some((sender, uses));
        }
    }

    /// The attempt ended without a usable response: Envoy charges the router's local code
    /// (503 for a connect failure or reset, 504 for a timeout) or the dropped response's.
    pub fn failed(mut self, code: u16) {
        self.status = code;
        self.complete(false, false);
    }

    /// The response ended (`clean`: read completely). `timed_out`: the route timeout cut it.
    pub fn complete(mut self, clean: bool, timed_out: bool) {
        self.record();
        if timed_out {
            self.stats
                .upstream_rq_timeout
                .fetch_add(1, Ordering::Relaxed);
        }
        if clean {
            if let Some((sender, uses)) = self.conn.take() {
                let exhausted = self
                    .max_requests_per_connection
                    .is_some_and(|max| uses >= max);
                if !exhausted {
                    self.ep.put_idle(sender, uses);
                }
            }
        }
    }

    fn record(&mut self) {
        if !self.recorded && self.status != 0 {
            self.recorded = true;
            self.stats
                .record_response(self.status, self.started.elapsed());
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.record();
        self.ep.active.fetch_sub(1, Ordering::Relaxed);
        self.stats.upstream_rq_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16, weight: u32) -> Arc<EndpointRt> {
        Arc::new(EndpointRt::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            UpstreamProtocol::Http1,
        ))
    }

    #[test]
    fn smooth_weighted_schedule_follows_weights() {
        let eps = vec![ep(1, 5), ep(2, 1), ep(3, 1)];
        let s = schedule(&eps);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 5);
        // Smooth: the heavy endpoint's turns are spread out.
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn equal_weights_need_no_schedule() {
        let set = EndpointSet::new(vec![ep(1, 1), ep(2, 1)]);
        assert!(set.wheel.is_empty());
        assert!(set.equal);
        let set = EndpointSet::new(vec![ep(1, 3), ep(2, 1)]);
        assert_eq!(set.wheel.len(), 4);
    }

    fn cluster(
        discovery: table::Discovery,
        endpoints: Vec<table::Endpoint>,
    ) -> Arc<table::Cluster> {
        Arc::new(table::Cluster {
            name: "c".into(),
            discovery,
            lb: LbPolicy::RoundRobin,
            connect_timeout: Duration::from_secs(2),
            circuit_breakers: table::CircuitBreakers::default(),
            protocol: UpstreamProtocol::Http1,
            idle_timeout: None,
            max_requests_per_connection: None,
            max_connection_duration: None,
            tcp_keepalive: None,
            outlier_detection: None,
            healthy_panic_threshold: 50.0,
            endpoints,
            endpoints_pending: false,
        })
    }

    fn budget() -> Arc<MirrorBudget> {
        Arc::new(MirrorBudget::new(
            1,
            Arc::new(crate::forwarder::metrics::MirrorClusterStats::new("c")),
        ))
    }

    #[tokio::test]
    async fn strict_dns_resolves_names_and_keeps_pools_across_rebuilds() {
        let endpoint = table::Endpoint {
            host: "localhost".into(),
            port: 4321,
            socket_addr: None,
            weight: 1,
            locality: None,
        };
        let cfg = cluster(
            table::Discovery::StrictDns {
                refresh: Duration::from_secs(5),
            },
            vec![endpoint],
        );
        let stats = Arc::new(ClusterStats::new("c"));
        let rt = ClusterRt::build(cfg.clone(), None, stats.clone(), budget());
        rt.ready().await;
        let addrs: Vec<SocketAddr> = rt.endpoints().eps.iter().map(|e| e.addr).collect();
        assert!(
            addrs.contains(&SocketAddr::from(([127, 0, 0, 1], 4321))),
            "{addrs:?}"
        );
        // A rebuild with the same endpoints starts from the resolved set, same endpoints.
        let again = ClusterRt::build(cfg, Some(&rt), stats, budget());
        assert!(again.is_resolved());
        assert!(Arc::ptr_eq(
            &again.endpoints().eps[0],
            &rt.endpoints().eps[0]
        ));
    }

    #[tokio::test]
    async fn static_rebuilds_keep_endpoints_that_stay() {
        let ep = |port: u16| table::Endpoint {
            host: "127.0.0.1".into(),
            port,
            socket_addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            weight: 1,
            locality: None,
        };
        let stats = Arc::new(ClusterStats::new("c"));
        let a = ClusterRt::build(
            cluster(table::Discovery::Static, vec![ep(1), ep(2)]),
            None,
            stats.clone(),
            budget(),
        );
        let b = ClusterRt::build(
            cluster(table::Discovery::Static, vec![ep(2), ep(3)]),
            Some(&a),
            stats,
            budget(),
        );
        assert!(Arc::ptr_eq(&a.endpoints().eps[1], &b.endpoints().eps[0]));
        assert_eq!(b.endpoints().eps[1].addr.port(), 3);
        // Round robin alternates; avoiding a tried address moves to the other one.
        let picks: Vec<u16> = (0..4)
            .map(|_| b.pick(None, &[], 0).expect("endpoint").addr.port())
            .collect();
        assert_eq!(picks, vec![2, 3, 2, 3]);
        let tried = [SocketAddr::from(([127, 0, 0, 1], 3))];
        for _ in 0..4 {
            assert_eq!(b.pick(None, &tried, 1).expect("endpoint").addr.port(), 2);
        }
    }

    #[test]
    fn weighted_random_follows_weights() {
        let set = EndpointSet::new(vec![ep(1, 1), ep(2, 1000)]);
        let mut rng = rand::rng();
        let mut counts = [0usize; 2];
        for _ in 0..10_000 {
            counts[set.weighted_random(&mut rng)] += 1;
        }
        assert!(counts[1] > 9_900, "{counts:?}");
    }
}
