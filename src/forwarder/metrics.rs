//! The forwarder's statistics, exposed on `/metrics` as Prometheus text (format 0.0.4) with
//! the names Envoy's `/stats/prometheus` uses, so one query works for Envoy and the forwarder.
//!
//! Envoy's tag extraction turns `cluster.<name>.upstream_rq_200` into
//! `envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="<name>"}`,
//! `cluster.<name>.upstream_rq_2xx` into `envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",…}`
//! and `http.<prefix>.downstream_rq_total` into
//! `envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="<prefix>"}`. Counters keep
//! their Envoy names (no `_total` is added), histograms are in milliseconds with Envoy's
//! default buckets.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `envoy_cluster_upstream_rq_total`, `_completed`, `_timeout`, `_per_try_timeout`, `_retry`, `_rx_reset` | counter | `envoy_cluster_name` |
//! | `envoy_cluster_upstream_rq` | counter | `envoy_response_code`, `envoy_cluster_name` |
//! | `envoy_cluster_upstream_rq_xx` | counter | `envoy_response_code_class`, `envoy_cluster_name` |
//! | `envoy_cluster_upstream_rq_time` | histogram (ms) | `envoy_cluster_name` |
//! | `envoy_cluster_upstream_cx_total`, `_connect_fail`, `_connect_timeout`, `_none_healthy` | counter | `envoy_cluster_name` |
//! | `envoy_cluster_upstream_cx_active`, `envoy_cluster_upstream_rq_active` | gauge | `envoy_cluster_name` |
//! | `envoy_http_downstream_rq_total` | counter | `envoy_http_conn_manager_prefix` |
//! | `envoy_http_downstream_rq_xx` | counter | `envoy_response_code_class`, `envoy_http_conn_manager_prefix` |
//! | `envoy_http_downstream_rq_time` | histogram (ms) | `envoy_http_conn_manager_prefix` |
//! | `shadowplane_mirror_sent_total`, `_skipped_fraction_total`, `_dropped_budget_total`, `_body_too_large_total`, `_shadow_errors_total`, `_shadow_timeouts_total` | counter | `shadow_cluster` |
//! | `shadowplane_mirror_pairs_total`, `_status_mismatch_total`, `_body_mismatch_total` | counter | `route`, `shadow_cluster` |
//! | `shadowplane_mirror_primary_time`, `shadowplane_mirror_shadow_time` | histogram (ms) | `route`, `shadow_cluster` |
//! | `shadowplane_forwarder_table_swaps_total` | counter | |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Envoy's default histogram buckets, in milliseconds
/// (`source/common/stats/histogram_impl.cc` `supportedBuckets`).
pub const ENVOY_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The content type of Prometheus text format 0.0.4 (what Envoy's `/stats/prometheus` sends).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A latency histogram with Envoy's buckets: lock-free, one bucket increment, the count and
/// the sum per observation.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; index 19 is the overflow (+Inf only).
    buckets: [AtomicU64; 20],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let ms = us as f64 / 1000.0;
        let i = ENVOY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(ENVOY_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of the observations in milliseconds.
    pub fn sum_ms(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Cumulative counts per bucket of [`ENVOY_BUCKETS_MS`] (the `+Inf` bucket is `count`).
    pub fn cumulative(&self) -> [u64; 19] {
        let mut out = [0u64; 19];
        let mut acc = 0;
        for (i, o) in out.iter_mut().enumerate() {
            acc += self.buckets[i].load(Ordering::Relaxed);
            *o = acc;
        }
        out
    }

    /// An estimate of quantile `q` (0..=1) in ms by linear interpolation inside the bucket,
    /// as Prometheus' `histogram_quantile` does; `None` without observations.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let cumulative = self.cumulative();
        let mut lower = 0.0;
        let mut below = 0u64;
        for (i, upper) in ENVOY_BUCKETS_MS.iter().enumerate() {
            let c = cumulative[i];
            if c as f64 >= rank && c > below {
                let within = (rank - below as f64) / (c - below) as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            lower = *upper;
            below = c;
        }
        Some(ENVOY_BUCKETS_MS[ENVOY_BUCKETS_MS.len() - 1])
    }
}

/// A gauge that callers raise and lower with a guard.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One upstream cluster's counters (`cluster.<name>.*` in Envoy). Kept across table swaps, so
/// the counters of a cluster that stays never reset.
#[derive(Debug)]
pub struct ClusterStats {
    pub name: String,
    pub upstream_rq_total: AtomicU64,
    pub upstream_rq_completed: AtomicU64,
    pub upstream_rq_timeout: AtomicU64,
    pub upstream_rq_per_try_timeout: AtomicU64,
    pub upstream_rq_retry: AtomicU64,
    pub upstream_rq_rx_reset: AtomicU64,
    pub upstream_cx_total: AtomicU64,
    pub upstream_cx_connect_fail: AtomicU64,
    pub upstream_cx_connect_timeout: AtomicU64,
    pub upstream_cx_none_healthy: AtomicU64,
    pub upstream_cx_active: Gauge,
    pub upstream_rq_active: Gauge,
    /// Responses by status code 100..=599 (index `code - 100`).
    codes: Box<[AtomicU64]>,
    pub upstream_rq_time: Histogram,
}

impl ClusterStats {
    pub fn new(name: &str) -> ClusterStats {
        ClusterStats {
            name: name.to_string(),
            upstream_rq_total: AtomicU64::new(0),
            upstream_rq_completed: AtomicU64::new(0),
            upstream_rq_timeout: AtomicU64::new(0),
            upstream_rq_per_try_timeout: AtomicU64::new(0),
            upstream_rq_retry: AtomicU64::new(0),
            upstream_rq_rx_reset: AtomicU64::new(0),
            upstream_cx_total: AtomicU64::new(0),
            upstream_cx_connect_fail: AtomicU64::new(0),
            upstream_cx_connect_timeout: AtomicU64::new(0),
            upstream_cx_none_healthy: AtomicU64::new(0),
            upstream_cx_active: Gauge::default(),
            upstream_rq_active: Gauge::default(),
            codes: (100..600).map(|_| AtomicU64::new(0)).collect(),
            upstream_rq_time: Histogram::default(),
        }
    }

    /// A response from the upstream: its code and the time from the start of the attempt to
    /// the end of the response (Envoy's `upstream_rq_time`).
    pub fn record_response(&self, status: u16, elapsed: Duration) {
        if let Some(c) = self.codes.get(usize::from(status).wrapping_sub(100)) {
            add(c);
        }
        add(&self.upstream_rq_completed);
        self.upstream_rq_time.record(elapsed);
    }

    /// The count of responses with `status`.
    pub fn code_count(&self, status: u16) -> u64 {
        self.codes
            .get(usize::from(status).wrapping_sub(100))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn class_counts(&self) -> [u64; 5] {
        let mut out = [0u64; 5];
        for (i, c) in self.codes.iter().enumerate() {
            out[i / 100] += c.load(Ordering::Relaxed);
        }
        out
    }
}

/// One HTTP connection manager's counters (`http.<stat_prefix>.*`): one per listener.
#[derive(Debug)]
pub struct DownstreamStats {
    pub prefix: String,
    pub downstream_rq_total: AtomicU64,
    /// By class 1xx..5xx.
    classes: [AtomicU64; 5],
    pub downstream_rq_time: Histogram,
}

impl DownstreamStats {
    pub fn new(prefix: &str) -> DownstreamStats {
        DownstreamStats {
            prefix: prefix.to_string(),
            downstream_rq_total: AtomicU64::new(0),
            classes: Default::default(),
            downstream_rq_time: Histogram::default(),
        }
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        add(&self.downstream_rq_total);
        if let Some(c) = self.classes.get(usize::from(status / 100).wrapping_sub(1)) {
            add(c);
        }
        self.downstream_rq_time.record(elapsed);
    }
}

/// Mirror counters of one shadow cluster.
#[derive(Debug)]
pub struct MirrorClusterStats {
    pub cluster: String,
    /// Shadow requests started (a permit was taken and the body fit).
    pub sent: AtomicU64,
    /// The policy's `runtime_fraction` said no.
    pub skipped_fraction: AtomicU64,
    /// The in-flight budget of the shadow cluster was full.
    pub dropped_budget: AtomicU64,
    /// The request body was larger than the mirror buffer (the primary got it whole).
    pub body_too_large: AtomicU64,
    /// The shadow failed: no such cluster, no endpoint, connect failure, reset, timeout.
    pub shadow_errors: AtomicU64,
    /// Of `shadow_errors`, the ones that hit the shadow timeout.
    pub shadow_timeouts: AtomicU64,
}

impl MirrorClusterStats {
    pub fn new(cluster: &str) -> MirrorClusterStats {
        MirrorClusterStats {
            cluster: cluster.to_string(),
            sent: AtomicU64::new(0),
            skipped_fraction: AtomicU64::new(0),
            dropped_budget: AtomicU64::new(0),
            body_too_large: AtomicU64::new(0),
            shadow_errors: AtomicU64::new(0),
            shadow_timeouts: AtomicU64::new(0),
        }
    }
}

/// The primary/shadow comparison of one (route, shadow cluster).
#[derive(Debug)]
pub struct PairStats {
    pub route: String,
    pub cluster: String,
    /// Both outcomes arrived.
    pub pairs: AtomicU64,
    pub status_mismatch: AtomicU64,
    pub body_mismatch: AtomicU64,
    /// Of the pairs, the ones where the shadow answered 5xx and the primary did not.
    pub shadow_only_5xx: AtomicU64,
    pub primary_time: Histogram,
    pub shadow_time: Histogram,
}

impl PairStats {
    pub fn new(route: &str, cluster: &str) -> PairStats {
        PairStats {
            route: route.to_string(),
            cluster: cluster.to_string(),
            pairs: AtomicU64::new(0),
            status_mismatch: AtomicU64::new(0),
            body_mismatch: AtomicU64::new(0),
            shadow_only_5xx: AtomicU64::new(0),
            primary_time: Histogram::default(),
            shadow_time: Histogram::default(),
        }
    }
}

/// Every statistic of a forwarder. The maps are touched when a table is applied (get or
/// create) and when `/metrics` is scraped, never per request: requests hold `Arc`s.
#[derive(Debug, Default)]
pub struct Stats {
    clusters: Mutex<BTreeMap<String, Arc<ClusterStats>>>,
    downstream: Mutex<BTreeMap<String, Arc<DownstreamStats>>>,
    mirror_clusters: Mutex<BTreeMap<String, Arc<MirrorClusterStats>>>,
    pairs: Mutex<BTreeMap<(String, String), Arc<PairStats>>>,
    pub table_swaps: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    pub fn new() -> Stats {
        Stats::default()
    }

    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        lock(&self.clusters)
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(ClusterStats::new(name)))
            .clone()
    }

    pub fn downstream(&self, prefix: &str) -> Arc<DownstreamStats> {
        lock(&self.downstream)
            .entry(prefix.to_string())
            .or_insert_with(|| Arc::new(DownstreamStats::new(prefix)))
            .clone()
    }

    pub fn mirror_cluster(&self, cluster: &str) -> Arc<MirrorClusterStats> {
        lock(&self.mirror_clusters)
            .entry(cluster.to_string())
            .or_insert_with(|| Arc::new(MirrorClusterStats::new(cluster)))
            .clone()
    }

    pub fn pair(&self, route: &str, cluster: &str) -> Arc<PairStats> {
        lock(&self.pairs)
            .entry((route.to_string(), cluster.to_string()))
            .or_insert_with(|| Arc::new(PairStats::new(route, cluster)))
            .clone()
    }

    /// Every (route, shadow cluster) comparison, sorted.
    pub fn all_pairs(&self) -> Vec<Arc<PairStats>> {
        lock(&self.pairs).values().cloned().collect()
    }

    /// Every shadow cluster's mirror counters, sorted.
    pub fn all_mirror_clusters(&self) -> Vec<Arc<MirrorClusterStats>> {
        lock(&self.mirror_clusters).values().cloned().collect()
    }

    /// The whole `/metrics` body.
    pub fn render(&self) -> String {
        let clusters: Vec<Arc<ClusterStats>> = lock(&self.clusters).values().cloned().collect();
        let downstream: Vec<Arc<DownstreamStats>> =
            lock(&self.downstream).values().cloned().collect();
        let mirrors = self.all_mirror_clusters();
        let pairs = self.all_pairs();
        let mut out = String::with_capacity(4096 + clusters.len() * 4096);

        let cluster_counters: [Field<ClusterStats, AtomicU64>; 10] = [
            ("envoy_cluster_upstream_rq_total", |c| &c.upstream_rq_total),
            ("envoy_cluster_upstream_rq_completed", |c| {
                &c.upstream_rq_completed
            }),
            ("envoy_cluster_upstream_rq_timeout", |c| {
                &c.upstream_rq_timeout
            }),
            ("envoy_cluster_upstream_rq_per_try_timeout", |c| {
                &c.upstream_rq_per_try_timeout
            }),
            ("envoy_cluster_upstream_rq_retry", |c| &c.upstream_rq_retry),
            ("envoy_cluster_upstream_rq_rx_reset", |c| {
                &c.upstream_rq_rx_reset
            }),
            ("envoy_cluster_upstream_cx_total", |c| &c.upstream_cx_total),
            ("envoy_cluster_upstream_cx_connect_fail", |c| {
                &c.upstream_cx_connect_fail
            }),
            ("envoy_cluster_upstream_cx_connect_timeout", |c| {
                &c.upstream_cx_connect_timeout
            }),
            ("envoy_cluster_upstream_cx_none_healthy", |c| {
                &c.upstream_cx_none_healthy
            }),
        ];
        for (name, get) in cluster_counters {
            type_line(&mut out, name, "counter");
            for c in &clusters {
                let _ = writeln!(
                    out,
                    "{name}{{envoy_cluster_name=\"{}\"}} {}",
                    escape(&c.name),
                    get(c).load(Ordering::Relaxed)
                );
            }
        }
        let cluster_gauges: [Field<ClusterStats, Gauge>; 2] = [
            ("envoy_cluster_upstream_cx_active", |c| {
                &c.upstream_cx_active
            }),
            ("envoy_cluster_upstream_rq_active", |c| {
                &c.upstream_rq_active
            }),
        ];
        for (name, get) in cluster_gauges {
            type_line(&mut out, name, "gauge");
            for c in &clusters {
                let _ = writeln!(
                    out,
                    "{name}{{envoy_cluster_name=\"{}\"}} {}",
                    escape(&c.name),
                    get(c).get()
                );
            }
        }
        type_line(&mut out, "envoy_cluster_upstream_rq", "counter");
        for c in &clusters {
            for (i, n) in c.codes.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "envoy_cluster_upstream_rq{{envoy_response_code=\"{}\",envoy_cluster_name=\"{}\"}} {n}",
                        i + 100,
                        escape(&c.name)
                    );
                }
            }
        }
        type_line(&mut out, "envoy_cluster_upstream_rq_xx", "counter");
        for c in &clusters {
            for (i, n) in c.class_counts().iter().enumerate() {
                let _ = writeln!(
                    out,
                    "envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"{}\",envoy_cluster_name=\"{}\"}} {n}",
                    i + 1,
                    escape(&c.name)
                );
            }
        }
        type_line(&mut out, "envoy_cluster_upstream_rq_time", "histogram");
        for c in &clusters {
            let labels = format!("envoy_cluster_name=\"{}\"", escape(&c.name));
            histogram(
                &mut out,
                "envoy_cluster_upstream_rq_time",
                &labels,
                &c.upstream_rq_time,
            );
        }

        type_line(&mut out, "envoy_http_downstream_rq_total", "counter");
        for d in &downstream {
            let _ = writeln!(
                out,
                "envoy_http_downstream_rq_total{{envoy_http_conn_manager_prefix=\"{}\"}} {}",
                escape(&d.prefix),
                d.downstream_rq_total.load(Ordering::Relaxed)
            );
        }
        type_line(&mut out, "envoy_http_downstream_rq_xx", "counter");
        for d in &downstream {
            for (i, n) in d.classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "envoy_http_downstream_rq_xx{{envoy_response_code_class=\"{}\",envoy_http_conn_manager_prefix=\"{}\"}} {}",
                    i + 1,
                    escape(&d.prefix),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        type_line(&mut out, "envoy_http_downstream_rq_time", "histogram");
        for d in &downstream {
            let labels = format!("envoy_http_conn_manager_prefix=\"{}\"", escape(&d.prefix));
            histogram(
                &mut out,
                "envoy_http_downstream_rq_time",
                &labels,
                &d.downstream_rq_time,
            );
        }

        let mirror_counters: [Field<MirrorClusterStats, AtomicU64>; 6] = [
            ("shadowplane_mirror_sent_total", |m| &m.sent),
            ("shadowplane_mirror_skipped_fraction_total", |m| {
                &m.skipped_fraction
            }),
            ("shadowplane_mirror_dropped_budget_total", |m| {
                &m.dropped_budget
            }),
            ("shadowplane_mirror_body_too_large_total", |m| {
                &m.body_too_large
            }),
            ("shadowplane_mirror_shadow_errors_total", |m| {
                &m.shadow_errors
            }),
            ("shadowplane_mirror_shadow_timeouts_total", |m| {
                &m.shadow_timeouts
            }),
        ];
        for (name, get) in mirror_counters {
            type_line(&mut out, name, "counter");
            for m in &mirrors {
                let _ = writeln!(
                    out,
                    "{name}{{shadow_cluster=\"{}\"}} {}",
                    escape(&m.cluster),
                    get(m).load(Ordering::Relaxed)
                );
            }
        }
        let pair_counters: [Field<PairStats, AtomicU64>; 4] = [
            ("shadowplane_mirror_pairs_total", |p| &p.pairs),
            ("shadowplane_mirror_status_mismatch_total", |p| {
                &p.status_mismatch
            }),
            ("shadowplane_mirror_body_mismatch_total", |p| {
                &p.body_mismatch
            }),
            ("shadowplane_mirror_shadow_only_5xx_total", |p| {
                &p.shadow_only_5xx
            }),
        ];
        for (name, get) in pair_counters {
            type_line(&mut out, name, "counter");
            for p in &pairs {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",shadow_cluster=\"{}\"}} {}",
                    escape(&p.route),
                    escape(&p.cluster),
                    get(p).load(Ordering::Relaxed)
                );
            }
        }
        for (name, get) in [
            (
                "shadowplane_mirror_primary_time",
                (|p| &p.primary_time) as fn(&PairStats) -> &Histogram,
            ),
            ("shadowplane_mirror_shadow_time", |p| &p.shadow_time),
        ] {
            type_line(&mut out, name, "histogram");
            for p in &pairs {
                let labels = format!(
                    "route=\"{}\",shadow_cluster=\"{}\"",
                    escape(&p.route),
                    escape(&p.cluster)
                );
                histogram(&mut out, name, &labels, get(p));
            }
        }
        type_line(
            &mut out,
            "shadowplane_forwarder_table_swaps_total",
            "counter",
        );
        let _ = writeln!(
            out,
            "shadowplane_forwarder_table_swaps_total {}",
            self.table_swaps.load(Ordering::Relaxed)
        );
        out
    }
}

/// A metric name and how to read it from a stats struct.
type Field<T, V> = (&'static str, fn(&T) -> &V);

fn type_line(out: &mut String, name: &str, kind: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `_bucket` lines (Envoy's `le` values, then `+Inf`), `_sum` (ms) and `_count`.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let cumulative = h.cumulative();
    for (b, c) in ENVOY_BUCKETS_MS.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
    }
    let count = h.count();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_ms());
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// A label value escaped for the text format (`\`, `"` and newlines).
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 2);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_envoys_and_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_micros(300)); // 0.3 ms -> le 0.5
        h.record(Duration::from_millis(3)); // -> le 5
        h.record(Duration::from_millis(5)); // exactly 5 -> le 5
        h.record(Duration::from_secs(4000)); // beyond 3.6e6 ms -> +Inf only
        let c = h.cumulative();
        assert_eq!(c[0], 1);
        assert_eq!(c[1], 1);
        assert_eq!(c[2], 3);
        assert_eq!(c[18], 3);
        assert_eq!(h.count(), 4);
        let mut out = String::new();
        histogram(&mut out, "x", "a=\"b\"", &h);
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.5\"} 1\n"), "{out}");
        assert!(
            out.contains("x_bucket{a=\"b\",le=\"1800000\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{a=\"b\",le=\"3600000\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4\n"), "{out}");
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        let h = Histogram::default();
        for _ in 0..10 {
            h.record(Duration::from_millis(7)); // (5, 10]
        }
        let p50 = h.quantile_ms(0.5).expect("observations");
        assert!((p50 - 7.5).abs() < 1e-9, "{p50}");
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn envoy_names_and_labels() {
        let stats = Stats::new();
        let c = stats.cluster("outbound|8080|v1|calc.ns.svc.cluster.local");
        c.upstream_rq_total.fetch_add(2, Ordering::Relaxed);
        c.record_response(200, Duration::from_millis(2));
        c.record_response(503, Duration::from_millis(2));
        stats
            .downstream("outbound_0.0.0.0_8080")
            .record(200, Duration::from_millis(3));
        stats
            .mirror_cluster("outbound|8080|v3|calc")
            .sent
            .fetch_add(1, Ordering::Relaxed);
        stats.pair("r1", "outbound|8080|v3|calc");
        let text = stats.render();
        for want in [
            "# TYPE envoy_cluster_upstream_rq_total counter\n",
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"outbound|8080|v1|calc.ns.svc.cluster.local\"} 2\n",
            "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"outbound|8080|v1|calc.ns.svc.cluster.local\"} 1\n",
            "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"outbound|8080|v1|calc.ns.svc.cluster.local\"} 1\n",
            "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"outbound|8080|v1|calc.ns.svc.cluster.local\",le=\"5\"} 2\n",
            "envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name=",
            "envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"outbound_0.0.0.0_8080\"} 1\n",
            "shadowplane_mirror_sent_total{shadow_cluster=\"outbound|8080|v3|calc\"} 1\n",
            "shadowplane_mirror_pairs_total{route=\"r1\",shadow_cluster=\"outbound|8080|v3|calc\"} 0\n",
            "shadowplane_mirror_shadow_time_bucket{route=\"r1\",shadow_cluster=\"outbound|8080|v3|calc\",le=\"0.5\"} 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("envoy_response_code=\"404\""));
        assert_eq!(c.code_count(503), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("plain"), "plain");
    }
}
