//! The data plane's own view of each version: Prometheus text from the forwarder's `/metrics`
//! or Envoy's `/stats/prometheus`, which use the same names (`envoy_cluster_upstream_rq_total`,
//! `envoy_cluster_upstream_rq_xx`, the `envoy_cluster_upstream_rq_time` histogram, labelled
//! with `envoy_cluster_name="outbound|<port>|<subset>|<host>"`), so one parser reads both.

use std::collections::BTreeMap;

use super::ledger::{Quantiles, VERSIONS};

/// A cumulative histogram as Prometheus exposes it: `(le, cumulative count)` ascending, `+Inf`
/// last.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// The observations.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// `self - earlier`, bucket by bucket (same bounds; a missing bucket counts as 0).
    pub fn minus(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |b| b.1);
                    (*le, (c - before).max(0.0))
                })
                .collect(),
        }
    }

    /// Quantile `q` by linear interpolation inside the bucket, as Prometheus'
    /// `histogram_quantile` does (the `+Inf` bucket answers its lower bound).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count;
        let mut lower = 0.0;
        let mut below = 0.0;
        for (le, c) in &self.buckets {
            if *c >= rank && *c > below {
                if le.is_infinite() {
                    return Some(lower);
                }
                let within = (rank - below) / (c - below);
                return Some(lower + (le - lower) * within.clamp(0.0, 1.0));
            }
            lower = *le;
            below = *c;
        }
        Some(lower)
    }

    pub fn quantiles(&self) -> Quantiles {
        Quantiles {
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
        }
    }
}

/// One version's cluster as the data plane counts it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterView {
    /// `upstream_rq_total`: requests sent to the cluster (routed and mirrored).
    pub requests: f64,
    /// `upstream_rq_xx{class="5"}`: 5xx answers (the backend's, or the proxy's own 503s).
    pub errors_5xx: f64,
    /// `upstream_rq_time`, milliseconds.
    pub time: Histogram,
}

impl ClusterView {
    pub fn minus(&self, earlier: &ClusterView) -> ClusterView {
        ClusterView {
            requests: (self.requests - earlier.requests).max(0.0),
            errors_5xx: (self.errors_5xx - earlier.errors_5xx).max(0.0),
            time: self.time.minus(&earlier.time),
        }
    }
}

/// The three versions' clusters (`None`: the data plane has no such cluster, e.g. v3 before
/// the mirror step).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProxyView {
    pub versions: [Option<ClusterView>; 3],
}

impl ProxyView {
    /// Keep the last known figures of clusters this reading lacks (Envoy drops the stats of a
    /// removed cluster).
    pub fn merge_missing(&mut self, previous: &ProxyView) {
        for (now, before) in self.versions.iter_mut().zip(&previous.versions) {
            if now.is_none() {
                now.clone_from(before);
            }
        }
    }

    /// Per version, what happened between `earlier` and `self`.
    pub fn minus(&self, earlier: &ProxyView) -> ProxyView {
        let mut out = ProxyView::default();
        for (i, slot) in out.versions.iter_mut().enumerate() {
            *slot = self.versions[i]
                .as_ref()
                .map(|now| match &earlier.versions[i] {
                    Some(before) => now.minus(before),
                    None => now.clone(),
                });
        }
        out
    }
}

/// One sample line: name, labels, value (a timestamp after it is ignored).
fn parse_line(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let Some(open) = line.find('{') else {
        let (name, value) = line.split_once(char::is_whitespace)?;
        return Some((
            name,
            BTreeMap::new(),
            parse_value(value.split_whitespace().next()?)?,
        ));
    };
    let name = &line[..open];
    let mut labels = BTreeMap::new();
    let mut rest = &line[open + 1..];
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if let Some(after) = rest.strip_prefix('}') {
            rest = after;
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let quoted = after.trim_start().strip_prefix('"')?;
        let mut chars = quoted.char_indices();
        let mut value = String::new();
        let close = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => {
                    let (_, escaped) = chars.next()?;
                    value.push(if escaped == 'n' { '\n' } else { escaped });
                }
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.insert(key.trim().to_string(), value);
        rest = &quoted[close + 1..];
    }
    let value = rest.split_whitespace().next()?;
    Some((name, labels, parse_value(value)?))
}

fn parse_value(s: &str) -> Option<f64> {
    match s.trim() {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

/// The version of an Istio-named cluster of `port` (`outbound|<port>|v3|<host>`).
fn version_of(cluster: &str, port: u16) -> Option<usize> {
    let mut parts = cluster.split('|');
    let (_, p, subset) = (parts.next()?, parts.next()?, parts.next()?);
    if p != port.to_string() {
        return None;
    }
    VERSIONS.iter().position(|v| *v == subset)
}

/// Read the versions' clusters of service port `port` from Prometheus text.
pub fn parse(text: &str, port: u16) -> ProxyView {
    let mut view = ProxyView::default();
    for line in text.lines() {
        let Some((name, labels, value)) = parse_line(line) else {
            continue;
        };
        let Some(v) = labels
            .get("envoy_cluster_name")
            .and_then(|c| version_of(c, port))
        else {
            continue;
        };
        let cluster = view.versions[v].get_or_insert_with(ClusterView::default);
        match name {
            "envoy_cluster_upstream_rq_total" => cluster.requests = value,
            "envoy_cluster_upstream_rq_xx"
                if labels.get("envoy_response_code_class").map(String::as_str) == Some("5") =>
            {
                cluster.errors_5xx = value
            }
            "envoy_cluster_upstream_rq_time_bucket" => {
                if let Some(le) = labels.get("le").and_then(|l| parse_value(l)) {
                    cluster.time.buckets.push((le, value));
                }
            }
            _ => {}
        }
    }
    for c in view.versions.iter_mut().flatten() {
        c.time.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORWARDER: &str = r#"# HELP envoy_cluster_upstream_rq_total Requests.
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound|18080|v1|calcbackendsvc.challengeistio.svc.cluster.local"} 40
envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound|18080|v3|calcbackendsvc.challengeistio.svc.cluster.local"} 30
envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound|18080||calcbackendsvc.challengeistio.svc.cluster.local"} 99
envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound|9999|v1|other"} 7
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="outbound|18080|v3|calcbackendsvc.challengeistio.svc.cluster.local"} 28
envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="outbound|18080|v3|calcbackendsvc.challengeistio.svc.cluster.local"} 2
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="outbound|18080|v3|calcbackendsvc.challengeistio.svc.cluster.local",le="0.5"} 10
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="outbound|18080|v3|calcbackendsvc.challengeistio.svc.cluster.local",le="1"} 20
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="outbound|18080|v3|calcbackendsvc.challengeistio.svc.cluster.local",le="+Inf"} 30
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="outbound|18080|v3|calcbackendsvc.challengeistio.svc.cluster.local"} 21.5
"#;

    #[test]
    fn reads_the_versions_of_the_service_port_only() {
        let view = parse(FORWARDER, 18080);
        let v1 = view.versions[0].as_ref().expect("v1");
        assert_eq!(v1.requests, 40.0);
        assert!(view.versions[1].is_none());
        let v3 = view.versions[2].as_ref().expect("v3");
        assert_eq!(v3.requests, 30.0);
        assert_eq!(v3.errors_5xx, 2.0);
        assert_eq!(v3.time.count(), 30.0);
        assert_eq!(v3.time.quantile(0.5), Some(0.75));
        assert_eq!(v3.time.quantile(0.1), Some(0.15));
        // The +Inf bucket answers its lower bound.
        assert_eq!(v3.time.quantile(0.99), Some(1.0));
    }

    #[test]
    fn labels_with_escapes_and_spaces_parse() {
        let (name, labels, value) =
            parse_line(r#"m{a="x\"y", b="1,2"} 3.5 1700000000"#).expect("line");
        assert_eq!(name, "m");
        assert_eq!(labels["a"], "x\"y");
        assert_eq!(labels["b"], "1,2");
        assert_eq!(value, 3.5);
        assert_eq!(parse_line("plain 4").map(|l| l.2), Some(4.0));
        assert!(parse_line("# TYPE m counter").is_none());
        assert!(parse_line(r#"broken{a="x} 1"#).is_none());
    }

    #[test]
    fn differences_and_missing_clusters() {
        let before = parse(FORWARDER, 18080);
        let after_text = FORWARDER
            .replace("} 40", "} 55")
            .replace("} 30\n", "} 45\n");
        let mut after = parse(&after_text, 18080);
        let d = after.minus(&before);
        assert_eq!(d.versions[0].as_ref().map(|c| c.requests), Some(15.0));
        assert_eq!(d.versions[2].as_ref().map(|c| c.requests), Some(15.0));
        after.versions[2] = None;
        after.merge_missing(&before);
        assert_eq!(after.versions[2], before.versions[2]);
    }
}
