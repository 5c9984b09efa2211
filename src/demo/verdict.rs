//! "Is v3 better than v1?", answered from the mirror step's numbers.
//!
//! The method follows `forwarder-and-comparison.md` §7, cut to what one short run can
//! support:
//!
//! * **Same requests.** During the mirror step every request v1 serves is copied to v3, with
//!   the same `x-request-id`. Each (v1, v3) pair is one request answered by both, so the
//!   comparison is paired: the number to factor, the moment and the load are the same on
//!   both sides, which cancels most of the noise a two-dashboards comparison suffers from.
//! * **Latency** is the calculation time each version reports in its answer (`elapsed_us`,
//!   the factoring alone: what the developers changed, and what the seed asks about). Both
//!   are measured the same way (§7.3's "reporter=destination" view); the service time at
//!   the backend and the data plane's `upstream_rq_time` are shown beside it, but they also
//!   measure queueing for the CPU the demo's processes share. The test is a sign test on the
//!   pairs ("on how many requests was v3 faster?", normal approximation), and the effect is
//!   the median of the per-request ratios v3/v1 with a distribution-free 98 % confidence
//!   interval (order statistics). Confidence 0.98 and a ±10 % effect threshold are Kayenta's
//!   defaults (`confLevel = 0.98`, `allowedIncrease 1.1`).
//! * **Errors are critical** (Kayenta `critical: true`): v3 fails the comparison when its 5xx
//!   rate is significantly higher than v1's (two-proportion z test, one-sided 98 %) by more
//!   than 0.1 percentage point.
//! * **Correctness** (Diffy's idea, noise removed by comparing only the field that matters):
//!   the factors of each pair must be equal; the answers' `version` and `elapsed_us` differ
//!   by design.
//! * **Gates.** Fewer than [`MIN_PAIRS`] pairs is *inconclusive*.
//!
//! What it does not do (and the summary says so): an A/A control (a second v1 behind the same
//! shadow path), several intervals, memory and CPU.

/// Fewer pairs than this: inconclusive.
pub const MIN_PAIRS: usize = 20;
/// z of a two-sided 98 % interval (Kayenta's default confidence).
pub const Z_98: f64 = 2.326_347_874;
/// Significance level matching [`Z_98`].
pub const ALPHA: f64 = 0.02;
/// A latency ratio must be beyond ±10 % to count (Kayenta's `allowedIncrease` 1.1).
pub const EFFECT: f64 = 0.10;
/// The error-rate margin v3 may exceed v1 by before it counts (0.1 percentage point).
pub const ERROR_MARGIN: f64 = 0.001;

/// One request answered by both versions: the times compared, in microseconds (resolution
/// 1 µs), and whether the answers (the factors) were equal (`None`: one of them had no
/// factors, e.g. an error).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub v1_us: f64,
    pub v3_us: f64,
    pub same_answer: Option<bool>,
}

/// Requests and 5xx answers of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Errors {
    pub requests: u64,
    pub errors: u64,
}

impl Errors {
    pub fn rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Faster beyond the effect threshold, significantly, with no more errors and the same
    /// answers.
    Better,
    /// No significant latency difference beyond the threshold, no more errors, same answers.
    NoDifference,
    /// Slower (significantly, beyond the threshold), more errors, or different answers.
    Worse,
    /// Not enough data.
    Inconclusive,
}

/// The comparison and how it was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub pairs: usize,
    pub v3_faster: usize,
    pub v3_slower: usize,
    /// Two-sided p-value of the sign test.
    pub sign_p: f64,
    /// Median of the per-pair ratios v3/v1 and its 98 % confidence interval.
    pub ratio: Option<(f64, f64, f64)>,
    pub v1_errors: Errors,
    pub v3_errors: Errors,
    /// One-sided p-value for "v3 fails more often than v1".
    pub errors_p: f64,
    /// Pairs whose answers could be compared, and of those, how many differed.
    pub answers_compared: usize,
    pub answers_differ: usize,
    pub verdict: Verdict,
    /// Why, in one line.
    pub reason: String,
}

/// The complementary error function (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7).
pub fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    poly * (-x * x).exp()
}

/// P(Z > z) for a standard normal Z.
pub fn upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Two-sided sign test of `k` successes out of `n` against 1/2 (normal approximation with
/// continuity correction; exact enough from ~20 pairs on).
pub fn sign_test(k: usize, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let n = n as f64;
    let k = k as f64;
    let z = ((k - n / 2.0).abs() - 0.5).max(0.0) / (n.sqrt() / 2.0);
    (2.0 * upper_tail(z)).min(1.0)
}

/// The median of `values` and a distribution-free confidence interval from order statistics
/// (ranks `(n ∓ z·√n) / 2`, the binomial normal approximation).
pub fn median_ci(values: &[f64], z: f64) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let nf = n as f64;
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    // 1-based ranks r and n + 1 - r, r = ⌊(n - z·√n) / 2⌋, clamped to the sample.
    let lo = (((nf - z * nf.sqrt()) / 2.0).floor().max(1.0) as usize).min(n);
    let hi = n + 1 - lo;
    Some((median, v[lo - 1], v[hi - 1]))
}

/// One-sided two-proportion z test: p-value for "b's rate is higher than a's".
pub fn errors_higher_p(a: Errors, b: Errors) -> f64 {
    if a.requests == 0 || b.requests == 0 {
        return 1.0;
    }
    let pooled = (a.errors + b.errors) as f64 / (a.requests + b.requests) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / a.requests as f64 + 1.0 / b.requests as f64)).sqrt();
    if se == 0.0 {
        return if b.rate() > a.rate() { 0.0 } else { 1.0 };
    }
    upper_tail((b.rate() - a.rate()) / se)
}

/// Judge v3 against v1 from the paired requests and both versions' error counts.
pub fn compare(pairs: &[Pair], v1_errors: Errors, v3_errors: Errors) -> Comparison {
    let v3_faster = pairs.iter().filter(|p| p.v3_us < p.v1_us).count();
    let v3_slower = pairs.iter().filter(|p| p.v3_us > p.v1_us).count();
    let sign_p = sign_test(v3_faster, v3_faster + v3_slower);
    // Times are whole microseconds: below 1 µs is "less than the resolution", not 0.
    let ratios: Vec<f64> = pairs
        .iter()
        .map(|p| p.v3_us.max(1.0) / p.v1_us.max(1.0))
        .collect();
    let ratio = median_ci(&ratios, Z_98);
    let errors_p = errors_higher_p(v1_errors, v3_errors);
    let answers_compared = pairs.iter().filter(|p| p.same_answer.is_some()).count();
    let answers_differ = pairs
        .iter()
        .filter(|p| p.same_answer == Some(false))
        .count();

    let more_errors = errors_p < ALPHA && v3_errors.rate() > v1_errors.rate() + ERROR_MARGIN;
    let (verdict, reason) = if pairs.len() < MIN_PAIRS {
        (
            Verdict::Inconclusive,
            format!(
                "only {} requests reached both v1 and v3 (at least {MIN_PAIRS} are needed); run the demo longer",
                pairs.len()
            ),
        )
    } else if answers_differ > 0 {
        (
            Verdict::Worse,
            format!("v3 answered differently on {answers_differ} of {answers_compared} requests"),
        )
    } else if more_errors {
        (
            Verdict::Worse,
            format!(
                "v3 fails more often: {:.1}% against v1's {:.1}% (p {})",
                v3_errors.rate() * 100.0,
                v1_errors.rate() * 100.0,
                p_text(errors_p)
            ),
        )
    } else {
        // The ratio exists: there are at least MIN_PAIRS pairs.
        let (median, lo, hi) = ratio.unwrap_or((1.0, 1.0, 1.0));
        if sign_p < ALPHA && v3_faster > v3_slower && hi < 1.0 - EFFECT {
            (
                Verdict::Better,
                format!(
                    "v3 is faster: {} of v1's calculation time on the same requests, with no more errors and the same answers",
                    ratio_text(median)
                ),
            )
        } else if sign_p < ALPHA && v3_slower > v3_faster && lo > 1.0 + EFFECT {
            (
                Verdict::Worse,
                format!(
                    "v3 is slower: {} of v1's calculation time on the same requests",
                    ratio_text(median)
                ),
            )
        } else {
            (
                Verdict::NoDifference,
                format!(
                    "no latency difference beyond ±{:.0}% at 98% confidence (median ratio {:.2}, interval {:.2}-{:.2}); no more errors, same answers",
                    EFFECT * 100.0,
                    median,
                    lo,
                    hi
                ),
            )
        }
    };
    Comparison {
        pairs: pairs.len(),
        v3_faster,
        v3_slower,
        sign_p,
        ratio,
        v1_errors,
        v3_errors,
        errors_p,
        answers_compared,
        answers_differ,
        verdict,
        reason,
    }
}

/// `< 0.0001` or `= 0.0123` (to follow a `p`).
pub fn p_text(p: f64) -> String {
    if p < 0.0001 {
        "< 0.0001".to_string()
    } else {
        format!("= {p:.4}")
    }
}

/// A ratio in words: `1/29` for a speed-up, `1.35×` otherwise.
pub fn ratio_text(r: f64) -> String {
    if r > 0.0 && r < 0.5 {
        format!("1/{:.0}", 1.0 / r)
    } else {
        format!("{r:.2}×")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v1: &[f64], v3: &[f64]) -> Vec<Pair> {
        v1.iter()
            .zip(v3)
            .map(|(a, b)| Pair {
                v1_us: *a,
                v3_us: *b,
                same_answer: Some(true),
            })
            .collect()
    }

    fn clean(n: u64) -> Errors {
        Errors {
            requests: n,
            errors: 0,
        }
    }

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-6);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-6);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-6);
        assert!((upper_tail(Z_98) - 0.01).abs() < 1e-4);
    }

    #[test]
    fn sign_test_values() {
        assert_eq!(sign_test(0, 0), 1.0);
        assert!(sign_test(50, 100) > 0.9);
        // 60 of 100: exact two-sided binomial p = 0.0569.
        assert!((sign_test(60, 100) - 0.0569).abs() < 0.003);
        assert!(sign_test(100, 100) < 1e-9);
    }

    #[test]
    fn median_interval_brackets_the_median() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let (m, lo, hi) = median_ci(&v, Z_98).expect("values");
        assert_eq!(m, 50.5);
        assert!(lo < m && m < hi, "{lo} {m} {hi}");
        // n = 100, 98 %: ranks 38 and 63 (order statistics tables give 38/63).
        assert_eq!((lo, hi), (38.0, 63.0));
        assert_eq!(median_ci(&[], Z_98), None);
        assert_eq!(median_ci(&[4.0], Z_98), Some((4.0, 4.0, 4.0)));
    }

    #[test]
    fn a_much_faster_v3_is_better() {
        let v1: Vec<f64> = (0..200)
            .map(|i| 1000.0 + f64::from(i % 50) * 40.0)
            .collect();
        let v3: Vec<f64> = (0..200).map(|i| 30.0 + f64::from(i % 7)).collect();
        let c = compare(&pairs(&v1, &v3), clean(200), clean(200));
        assert_eq!(c.verdict, Verdict::Better, "{}", c.reason);
        assert_eq!(c.v3_faster, 200);
        assert!(c.sign_p < 1e-9);
        let (m, lo, hi) = c.ratio.expect("ratio");
        assert!(lo <= m && m <= hi && hi < 0.05, "{lo} {m} {hi}");
        assert!(c.reason.starts_with("v3 is faster: 1/"), "{}", c.reason);
    }

    #[test]
    fn equal_versions_show_no_difference() {
        // Same distribution, shuffled against each other: half the pairs each way.
        let v1: Vec<f64> = (0..100).map(|i| 100.0 + f64::from(i)).collect();
        let v3: Vec<f64> = (0..100)
            .map(|i| 100.0 + f64::from((i * 37) % 100))
            .collect();
        let c = compare(&pairs(&v1, &v3), clean(100), clean(100));
        assert_eq!(c.verdict, Verdict::NoDifference, "{}", c.reason);
    }

    #[test]
    fn a_slower_v3_is_worse() {
        let v1: Vec<f64> = vec![100.0; 50];
        let v3: Vec<f64> = vec![250.0; 50];
        let c = compare(&pairs(&v1, &v3), clean(50), clean(50));
        assert_eq!(c.verdict, Verdict::Worse);
        assert!(c.reason.contains("slower"), "{}", c.reason);
    }

    #[test]
    fn errors_and_wrong_answers_are_critical_even_when_faster() {
        let v1: Vec<f64> = vec![1000.0; 100];
        let v3: Vec<f64> = vec![10.0; 100];
        let c = compare(
            &pairs(&v1, &v3),
            clean(100),
            Errors {
                requests: 100,
                errors: 12,
            },
        );
        assert_eq!(c.verdict, Verdict::Worse);
        assert!(c.reason.contains("fails more often"), "{}", c.reason);

        let mut wrong = pairs(&v1, &v3);
        wrong[3].same_answer = Some(false);
        let c = compare(&wrong, clean(100), clean(100));
        assert_eq!(c.verdict, Verdict::Worse);
        assert!(c.reason.contains("differently on 1 of 100"), "{}", c.reason);

        // One error in a hundred is not significant.
        let c = compare(
            &pairs(&v1, &v3),
            clean(100),
            Errors {
                requests: 100,
                errors: 1,
            },
        );
        assert_eq!(c.verdict, Verdict::Better, "{}", c.reason);
    }

    #[test]
    fn too_few_pairs_is_inconclusive() {
        let c = compare(&pairs(&[1000.0; 5], &[10.0; 5]), clean(5), clean(5));
        assert_eq!(c.verdict, Verdict::Inconclusive);
        assert!(c.reason.contains("only 5 requests"), "{}", c.reason);
    }

    #[test]
    fn two_proportion_test() {
        let a = Errors {
            requests: 1000,
            errors: 10,
        };
        let b = Errors {
            requests: 1000,
            errors: 30,
        };
        assert!(errors_higher_p(a, b) < 0.01);
        assert!(errors_higher_p(b, a) > 0.99);
        assert_eq!(errors_higher_p(clean(10), clean(10)), 1.0);
        let all_failed = Errors {
            requests: 10,
            errors: 10,
        };
        assert!(errors_higher_p(clean(10), all_failed) < 1e-4);
        assert_eq!(errors_higher_p(all_failed, all_failed), 1.0);
    }
}
