//! What the demo saw: every request each backend answered and every answer a user got,
//! tagged with the step whose traffic it belongs to, and the per-step, per-version rows built
//! from them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::backend::{Observation, Observer};

/// The versions, in table order.
pub const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

/// One request a backend answered.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendRecord {
    /// Index into [`VERSIONS`].
    pub version: usize,
    pub step: usize,
    /// The Host carried Envoy's `-shadow` suffix: a mirrored copy.
    pub shadow: bool,
    pub status: u16,
    /// Service time at the backend (arrival to answer ready, queueing included), microseconds.
    pub service_us: f64,
    /// Calculation time, microseconds: the answer's `elapsed_us` (the factoring alone).
    pub compute_us: Option<f64>,
    pub request_id: Option<String>,
    /// The prime factors it answered (`None` unless a 200 with a `factors` list).
    pub factors: Option<Vec<u64>>,
}

/// One answer a user of the traffic loop got (or did not get).
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub step: usize,
    /// Index into [`VERSIONS`] from `x-backend-version` (`None`: no or unknown header).
    pub version: Option<usize>,
    /// `None`: no HTTP answer at all (connection error, timeout).
    pub status: Option<u16>,
    /// The answer was a 200 whose factors multiply back to the number asked.
    pub correct: bool,
}

/// Everything recorded so far, shared by the backends' observers, the traffic loop and the view.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The step the traffic belongs to (set when a step's traffic starts; answers that arrive
    /// while the next step is being applied still belong to the previous one).
    step: AtomicUsize,
    backend: Mutex<Vec<BackendRecord>>,
    users: Mutex<Vec<UserRecord>>,
    /// User requests in flight.
    pub in_flight: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ledger {
    pub fn step(&self) -> usize {
        self.step.load(Ordering::Acquire)
    }

    pub fn set_step(&self, step: usize) {
        self.step.store(step, Ordering::Release);
    }

    pub fn record_backend(&self, r: BackendRecord) {
        lock(&self.backend).push(r);
    }

    pub fn record_user(&self, r: UserRecord) {
        lock(&self.users).push(r);
    }

    pub fn backend_count(&self) -> usize {
        lock(&self.backend).len()
    }

    pub fn backend_records(&self) -> Vec<BackendRecord> {
        lock(&self.backend).clone()
    }

    pub fn user_records(&self) -> Vec<UserRecord> {
        lock(&self.users).clone()
    }

    /// The observer for backend `version` (index into [`VERSIONS`]): records `/factor` answers.
    pub fn observer(self: &Arc<Self>, version: usize) -> Observer {
        let ledger = self.clone();
        Arc::new(move |o: &Observation<'_>| {
            if !o.path.starts_with("/factor") {
                return;
            }
            let answer: Option<serde_json::Value> = (o.status.as_u16() == 200)
                .then(|| serde_json::from_slice(o.body).ok())
                .flatten();
            ledger.record_backend(BackendRecord {
                version,
                step: ledger.step(),
                shadow: is_shadow_host(o.host),
                status: o.status.as_u16(),
                service_us: o.elapsed.as_secs_f64() * 1e6,
                compute_us: answer.as_ref().and_then(|a| a.get("elapsed_us")?.as_f64()),
                request_id: o.request_id.map(str::to_string),
                factors: answer.as_ref().and_then(factors_in),
            });
        })
    }
}

/// Envoy appends `-shadow` to the host of a mirrored request, before any port.
pub fn is_shadow_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.ends_with("-shadow")
}

/// The `factors` list of a `/factor` answer.
pub fn factors_of(body: &[u8]) -> Option<Vec<u64>> {
    factors_in(&serde_json::from_slice(body).ok()?)
}

fn factors_in(answer: &serde_json::Value) -> Option<Vec<u64>> {
    answer
        .get("factors")?
        .as_array()?
        .iter()
        .map(serde_json::Value::as_u64)
        .collect()
}

/// p50, p90, p99 in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// The `q` quantile (nearest rank) of ascending `sorted`.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Quantiles {
    /// From samples in microseconds.
    pub fn of_us(samples: &[f64]) -> Quantiles {
        let mut ms: Vec<f64> = samples.iter().map(|us| us / 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        Quantiles {
            p50: quantile(&ms, 0.5),
            p90: quantile(&ms, 0.9),
            p99: quantile(&ms, 0.99),
        }
    }
}

/// One version's line of a step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    /// Requests the backend answered.
    pub received: u64,
    /// Of which mirrored copies.
    pub mirrored: u64,
    /// 5xx answers.
    pub errors: u64,
    /// Service time at the backend.
    pub service: Quantiles,
}

/// The rows of `step` (or of every step), one per version.
pub fn rows(records: &[BackendRecord], step: Option<usize>) -> [Row; 3] {
    let mut rows: [Row; 3] = Default::default();
    let mut samples: [Vec<f64>; 3] = Default::default();
    for r in records.iter().filter(|r| step.is_none_or(|s| r.step == s)) {
        let row = &mut rows[r.version];
        row.received += 1;
        row.mirrored += u64::from(r.shadow);
        row.errors += u64::from(r.status >= 500);
        samples[r.version].push(r.service_us);
    }
    for (row, s) in rows.iter_mut().zip(&samples) {
        row.service = Quantiles::of_us(s);
    }
    rows
}

/// What users got in `step` (or in every step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Users {
    /// Requests sent.
    pub sent: u64,
    /// Answers per version (by `x-backend-version`).
    pub by_version: [u64; 3],
    /// Requests without a good answer (no answer, a non-200, or wrong factors).
    pub failed: u64,
}

pub fn users(records: &[UserRecord], step: Option<usize>) -> Users {
    let mut u = Users::default();
    for r in records.iter().filter(|r| step.is_none_or(|s| r.step == s)) {
        u.sent += 1;
        if let Some(v) = r.version {
            u.by_version[v] += 1;
        }
        if !r.correct {
            u.failed += 1;
        }
    }
    u
}

/// Wall-clock bookkeeping of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepClock {
    /// How long its traffic ran.
    pub ran: Duration,
    /// How long the proxy took to acknowledge its rules after the files were written.
    pub applied_in: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: usize, step: usize, shadow: bool, status: u16, us: f64) -> BackendRecord {
        BackendRecord {
            version,
            step,
            shadow,
            status,
            service_us: us,
            compute_us: None,
            request_id: None,
            factors: None,
        }
    }

    #[test]
    fn shadow_hosts_are_recognised_with_and_without_a_port() {
        assert!(is_shadow_host("calcbackendsvc-shadow"));
        assert!(is_shadow_host("calcbackendsvc-shadow:8080"));
        assert!(!is_shadow_host("calcbackendsvc"));
        assert!(!is_shadow_host("calcbackendsvc:8080"));
        assert!(!is_shadow_host("shadow.example"));
    }

    #[test]
    fn factors_are_read_from_the_answer() {
        assert_eq!(
            factors_of(br#"{"n":12,"factors":[2,2,3],"version":"v1"}"#),
            Some(vec![2, 2, 3])
        );
        assert_eq!(factors_of(br#"{"error":"bad"}"#), None);
        assert_eq!(factors_of(b"not json"), None);
    }

    #[test]
    fn nearest_rank_quantiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.5), Some(50.0));
        assert_eq!(quantile(&s, 0.9), Some(90.0));
        assert_eq!(quantile(&s, 0.99), Some(99.0));
        assert_eq!(quantile(&s, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn rows_count_per_step_and_version() {
        let records = vec![
            rec(0, 0, false, 200, 1000.0),
            rec(0, 1, false, 200, 3000.0),
            rec(2, 1, true, 200, 20.0),
            rec(2, 1, true, 503, 40.0),
            rec(1, 2, false, 200, 500.0),
        ];
        let step1 = rows(&records, Some(1));
        assert_eq!(step1[0].received, 1);
        assert_eq!(step1[0].mirrored, 0);
        assert_eq!(step1[1], Row::default());
        assert_eq!(step1[2].received, 2);
        assert_eq!(step1[2].mirrored, 2);
        assert_eq!(step1[2].errors, 1);
        assert_eq!(step1[2].service.p50, Some(0.02));
        assert_eq!(step1[2].service.p99, Some(0.04));
        let all = rows(&records, None);
        assert_eq!(all.iter().map(|r| r.received).sum::<u64>(), 5);
    }

    #[test]
    fn users_count_answers_by_version_and_failures() {
        let r = |step, version, status, correct| UserRecord {
            step,
            version,
            status,
            correct,
        };
        let records = vec![
            r(0, Some(0), Some(200), true),
            r(0, Some(1), Some(200), true),
            r(1, None, None, false),
            r(1, Some(0), Some(503), false),
        ];
        let u = users(&records, Some(1));
        assert_eq!(u.sent, 2);
        assert_eq!(u.by_version, [1, 0, 0]);
        assert_eq!(u.failed, 2);
        assert_eq!(users(&records, None).by_version, [2, 1, 0]);
    }
}
