//! Prometheus metrics of `serve` (`/metrics`, OpenMetrics text).
//!
//! Two kinds:
//! - metrics this crate owns and updates as things happen (config reloads and errors, the
//!   snapshot version, push and convergence latency), held in [`Metrics`];
//! - the xDS server's counters, which live in [`ProxyRegistry`] as plain atomics and are read
//!   at scrape time by [`XdsCollector`] instead of being counted twice.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `shadowplane_xds_connected_proxies` | gauge | `type_url` |
//! | `shadowplane_xds_streams` | gauge | |
//! | `shadowplane_xds_requests_total` | counter | `result` = `initial`, `ack`, `nack`, `stale` |
//! | `shadowplane_xds_requests_by_type_total` | counter | `type` = `cds`, `eds`, `lds`, `rds`, `other`; `result` as above |
//! | `shadowplane_xds_pushes_total` | counter | `type_url` |
//! | `shadowplane_xds_push_bytes_total` | counter | `type_url` |
//! | `shadowplane_xds_push_resources_total` | counter | `type_url` |
//! | `shadowplane_xds_push_duration_seconds` | histogram | `type_url` |
//! | `shadowplane_xds_convergence_seconds` | histogram | |
//! | `shadowplane_config_errors` | gauge | |
//! | `shadowplane_config_reloads_total` | counter | `result` = `applied`, `rejected`, `unchanged` |
//! | `shadowplane_snapshot_info` | gauge (1) | `version` |

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::xds::registry::{ProxyRegistry, REQUEST_KINDS};

/// Outcome of one config reading, as counted by `shadowplane_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// A new snapshot was swapped in.
    Applied,
    /// The reading had errors; the last good snapshot keeps serving.
    Rejected,
    /// Good, but it translates to the snapshot already served.
    Unchanged,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Rejected => "rejected",
            ReloadResult::Unchanged => "unchanged",
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// Latency buckets in seconds: 1 ms .. ~33 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

/// The metrics `serve` updates itself, plus the registry it encodes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    config_errors: Gauge,
    config_reloads: Family<Labels, Counter>,
    snapshot_info: Family<Labels, Gauge>,
    push_duration: Family<Labels, Histogram>,
    convergence: Histogram,
}

impl Metrics {
    /// Metrics of a server whose xDS counters live in `proxies`.
    pub fn new(proxies: Arc<ProxyRegistry>) -> Metrics {
        let mut registry = Registry::default();
        let config_errors = Gauge::default();
        registry.register(
            "shadowplane_config_errors",
            "Errors in the latest config reading that keep it from being served (0 when it is served)",
            config_errors.clone(),
        );
        let config_reloads = Family::<Labels, Counter>::default();
        registry.register(
            "shadowplane_config_reloads",
            "Config readings by outcome: applied, rejected (errors; the last good config keeps serving) or unchanged",
            config_reloads.clone(),
        );
        let snapshot_info = Family::<Labels, Gauge>::default();
        registry.register(
            "shadowplane_snapshot_info",
            "The version of the snapshot being served (value is always 1)",
            snapshot_info.clone(),
        );
        let push_duration =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register_with_unit(
            "shadowplane_xds_push_duration",
            "Time from a snapshot swap to the response carrying it being sent to a proxy, per type",
            Unit::Seconds,
            push_duration.clone(),
        );
        let convergence = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "shadowplane_xds_convergence",
            "Time from a snapshot swap until every connected proxy has acknowledged it (ACK-based)",
            Unit::Seconds,
            convergence.clone(),
        );
        // Series for the four Envoy types exist from the start, so dashboards see zeros.
        for type_url in crate::xds::resource::PUSH_ORDER {
            drop(push_duration.get_or_create(&vec![("type_url", type_url.to_string())]));
        }
        registry.register_collector(Box::new(XdsCollector { registry: proxies }));
        Metrics {
            registry,
            config_errors,
            config_reloads,
            snapshot_info,
            push_duration,
            convergence,
        }
    }

    /// Count one config reading.
    pub fn reload(&self, result: ReloadResult) {
        self.config_reloads
            .get_or_create(&vec![("result", result.as_str().to_string())])
            .inc();
    }

    /// Set the number of blocking errors in the latest reading.
    pub fn set_config_errors(&self, n: usize) {
        self.config_errors.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Set the version of the snapshot being served (the previous label set is dropped).
    pub fn set_snapshot_version(&self, version: &str) {
        self.snapshot_info.clear();
        self.snapshot_info
            .get_or_create(&vec![("version", version.to_string())])
            .set(1);
    }

    /// Record a swap→sent delay for one type.
    pub fn observe_push(&self, type_url: &str, seconds: f64) {
        self.push_duration
            .get_or_create(&vec![("type_url", type_url.to_string())])
            .observe(seconds);
    }

    /// Record a swap→all-ACKed delay.
    pub fn observe_convergence(&self, seconds: f64) {
        self.convergence.observe(seconds);
    }

    /// The `/metrics` body (OpenMetrics text, ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing into a String does not fail; a label that cannot be encoded would.
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Reads [`ProxyRegistry`]'s counters at scrape time.
#[derive(Debug)]
pub struct XdsCollector {
    registry: Arc<ProxyRegistry>,
}

impl Collector for XdsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.registry.metrics();

        let mut family = encoder.encode_descriptor(
            "shadowplane_xds_connected_proxies",
            "Open xDS streams subscribed to each type",
            None,
            MetricType::Gauge,
        )?;
        for (type_url, t) in &m.by_type {
            let labels = [("type_url", type_url.as_str())];
            ConstGauge::new(i64::try_from(t.connected).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }

        let streams = encoder.encode_descriptor(
            "shadowplane_xds_streams",
            "Open xDS streams (one per proxy with ADS)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(m.streams_connected).unwrap_or(i64::MAX)).encode(streams)?;

        let mut family = encoder.encode_descriptor(
            "shadowplane_xds_requests",
            "Discovery requests by kind: initial (first for a type or a subscription change), ack, nack, stale (old nonce)",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("initial", m.requests_initial),
            ("ack", m.requests_ack),
            ("nack", m.requests_nack),
            ("stale", m.requests_stale),
        ] {
            let labels = [("result", result)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }

        // The same requests by type. A family of its own (rather than a `type` label on
        // `shadowplane_xds_requests_total`) so the existing series and queries keep their
        // meaning; `sum by (result)` of this one equals that one.
        let mut family = encoder.encode_descriptor(
            "shadowplane_xds_requests_by_type",
            "Discovery requests by short type (cds, eds, lds, rds, other) and kind (initial, ack, nack, stale)",
            None,
            MetricType::Counter,
        )?;
        for (short, counts) in &m.requests_by_type {
            for (result, n) in REQUEST_KINDS.iter().zip(counts) {
                let labels = [("type", *short), ("result", *result)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }

        for (name, help, pick) in [
            (
                "shadowplane_xds_pushes",
                "Responses sent, per type",
                (|t: &crate::xds::registry::TypeMetrics| t.pushes) as fn(&_) -> u64,
            ),
            (
                "shadowplane_xds_push_bytes",
                "Bytes of responses sent, per type",
                |t| t.bytes,
            ),
            (
                "shadowplane_xds_push_resources",
                "Resources sent in responses, per type",
                |t| t.resources,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (type_url, t) in &m.by_type {
                let labels = [("type_url", type_url.as_str())];
                ConstCounter::new(pick(t)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_metrics_are_encoded_with_their_names_and_labels() {
        let metrics = Metrics::new(Arc::new(ProxyRegistry::new()));
        metrics.set_config_errors(2);
        metrics.reload(ReloadResult::Rejected);
        metrics.reload(ReloadResult::Applied);
        metrics.set_snapshot_version("aaa");
        metrics.set_snapshot_version("bbb");
        metrics.observe_convergence(0.02);
        metrics.observe_push(crate::xds::resource::CLUSTER, 0.001);
        let text = metrics.encode();
        for line in [
            "shadowplane_config_errors 2",
            "shadowplane_config_reloads_total{result=\"rejected\"} 1",
            "shadowplane_config_reloads_total{result=\"applied\"} 1",
            "shadowplane_snapshot_info{version=\"bbb\"} 1",
            "shadowplane_xds_convergence_seconds_count 1",
            "shadowplane_xds_push_duration_seconds_count{type_url=\"type.googleapis.com/envoy.config.cluster.v3.Cluster\"} 1",
            "shadowplane_xds_streams 0",
            "shadowplane_xds_requests_total{result=\"nack\"} 0",
            "shadowplane_xds_requests_by_type_total{type=\"eds\",result=\"ack\"} 0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("version=\"aaa\""), "{text}");
    }
}
