//! What the demo prints: step lines, a live table (redrawn in place ~4 times a second on a
//! terminal; one plain line a second otherwise), and the summary with the verdict.
//!
//! The live table is plain ANSI: the cursor goes back up over the previous frame, which is
//! erased (`ESC[J`) and drawn again; the cursor is hidden meanwhile and shown again at the end.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use super::ledger::{Quantiles, Row, Users, VERSIONS};
use super::verdict::{p_text, Comparison, Verdict};

/// The algorithm each version runs.
pub const ALGORITHMS: [&str; 3] = ["trial-division", "trial-division", "pollard-rho"];

/// One refresh of the live table.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<'a> {
    /// 0-based.
    pub step: usize,
    pub steps: usize,
    pub name: &'a str,
    pub elapsed: Duration,
    pub length: Duration,
    pub rows: [Row; 3],
    /// Requests the data plane sent each version's cluster this step (`None`: no such cluster).
    pub proxy_sent: [Option<f64>; 3],
    pub users: Users,
    /// `the forwarder` or `Envoy`.
    pub plane: &'a str,
}

/// Where the demo writes.
pub struct View {
    out: Box<dyn Write + Send>,
    live: bool,
    /// Lines of the live frame currently on screen.
    drawn: usize,
    /// Live lines are cut to this many characters (`$COLUMNS` - 1, else 79).
    width: usize,
}

impl View {
    /// `live`: redraw a table in place (stdout is a terminal); else plain lines.
    pub fn new(out: Box<dyn Write + Send>, live: bool) -> View {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|c| *c >= 20)
            .unwrap_or(80)
            - 1;
        View {
            out,
            live,
            drawn: 0,
            width,
        }
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    fn erase_frame(&mut self) {
        if self.live && self.drawn > 0 {
            let _ = write!(self.out, "\x1b[{}A\r\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    /// A line that stays (above the live table).
    pub fn line(&mut self, text: &str) {
        self.erase_frame();
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    /// Show `frame`: redraw the table (live) or print one plain line.
    pub fn frame(&mut self, frame: &Frame<'_>) {
        if !self.live {
            let _ = writeln!(self.out, "{}", plain_line(frame));
            let _ = self.out.flush();
            return;
        }
        // A line wider than the terminal would wrap and throw the redraw off by a line.
        let text: String = live_table(frame)
            .lines()
            .map(|l| format!("{}\n", l.chars().take(self.width).collect::<String>()))
            .collect();
        self.erase_frame();
        if self.drawn == 0 {
            // Hide the cursor while the table is redrawn in place.
            let _ = write!(self.out, "\x1b[?25l");
        }
        let _ = write!(self.out, "{text}");
        let _ = self.out.flush();
        self.drawn = text.lines().count();
    }

    /// Remove the live table and show the cursor again (every exit path calls it).
    pub fn end_live(&mut self) {
        if self.live {
            self.erase_frame();
            let _ = write!(self.out, "\x1b[?25h");
            let _ = self.out.flush();
        }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.end_live();
    }
}

/// Milliseconds with the precision that matters at that size.
pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) if v >= 10.0 => format!("{v:.1} ms"),
        Some(v) if v >= 1.0 => format!("{v:.2} ms"),
        Some(v) => format!("{v:.3} ms"),
    }
}

fn count(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))
}

/// The column titles; rows are 79 characters wide, so the live table fits an 80-column
/// terminal without wrapping (which would break redrawing in place).
const COLUMNS: &str = "received mirrored errors       p50       p90       p99  proxy";

fn header(label: &str) -> String {
    format!("{label:<17} {COLUMNS}")
}

fn row_line(label: &str, row: &Row, proxy_sent: Option<f64>) -> String {
    format!(
        "{label:<17} {:>8} {:>8} {:>6} {:>9} {:>9} {:>9} {:>6}",
        row.received,
        row.mirrored,
        row.errors,
        ms(row.service.p50),
        ms(row.service.p90),
        ms(row.service.p99),
        count(proxy_sent),
    )
}

/// `answers to users: N (v1 a, v2 b, v3 c), F failed`.
pub fn users_line(u: &Users) -> String {
    format!(
        "answers to users: {} (v1 {}, v2 {}, v3 {}), {} failed",
        u.sent, u.by_version[0], u.by_version[1], u.by_version[2], u.failed
    )
}

/// `answers to users from v3: 0 (of N)`.
pub fn from_v3_line(u: &Users) -> String {
    format!(
        "answers to users from v3: {} (of {})",
        u.by_version[2], u.sent
    )
}

/// The live table of a terminal.
pub fn live_table(f: &Frame<'_>) -> String {
    let width = 24;
    let done = if f.length.is_zero() {
        width
    } else {
        ((f.elapsed.as_secs_f64() / f.length.as_secs_f64()) * width as f64).round() as usize
    }
    .min(width);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "step {}/{} {:<9} [{}{}] {:>5.1}s / {:.1}s",
        f.step + 1,
        f.steps,
        f.name,
        "#".repeat(done),
        "-".repeat(width - done),
        f.elapsed.as_secs_f64().min(f.length.as_secs_f64()),
        f.length.as_secs_f64()
    );
    let _ = writeln!(out, "{}", header("version"));
    for (v, (row, sent)) in f.rows.iter().zip(f.proxy_sent).enumerate() {
        let label = format!("{} {}", VERSIONS[v], ALGORITHMS[v]);
        let _ = writeln!(out, "{}", row_line(&label, row, sent));
    }
    let _ = writeln!(out, "{}", users_line(&f.users));
    let _ = writeln!(out, "{}", from_v3_line(&f.users));
    let _ = writeln!(
        out,
        "(received .. p99: as each backend saw them; p50-p99: service time)"
    );
    let _ = writeln!(
        out,
        "(proxy: requests {} sent, its upstream_rq_total)",
        f.plane
    );
    out
}

/// The line printed each second when stdout is not a terminal.
pub fn plain_line(f: &Frame<'_>) -> String {
    let mut out = format!(
        "[{} {:.1}s/{:.1}s]",
        f.name,
        f.elapsed.as_secs_f64().min(f.length.as_secs_f64()),
        f.length.as_secs_f64()
    );
    for (v, row) in f.rows.iter().enumerate() {
        let _ = write!(
            out,
            " {} {} received, {} mirrored, p50 {} ·",
            VERSIONS[v],
            row.received,
            row.mirrored,
            ms(row.service.p50)
        );
    }
    let _ = write!(out, " {}", from_v3_line(&f.users));
    out
}

/// `v1 received 120 (0 mirrored) · v2 ... · v3 ...`: a step's counts in one line.
pub fn step_counts(rows: &[Row; 3]) -> String {
    rows.iter()
        .enumerate()
        .map(|(v, r)| {
            format!(
                "{} received {} ({} mirrored)",
                VERSIONS[v], r.received, r.mirrored
            )
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// One step's figures for the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSummary {
    pub name: &'static str,
    pub ran: Duration,
    pub rows: [Row; 3],
    pub proxy_sent: [Option<f64>; 3],
}

/// The forwarder's own primary/shadow comparison (its `/debug/mirror`), for v3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MirrorPairs {
    pub pairs: u64,
    pub status_mismatch: u64,
    pub body_mismatch: u64,
}

impl MirrorPairs {
    /// Sum the routes of `/debug/mirror` whose shadow cluster is v3.
    pub fn from_json(v: &serde_json::Value) -> MirrorPairs {
        let mut out = MirrorPairs::default();
        for r in v["routes"].as_array().into_iter().flatten() {
            if !r["shadow_cluster"]
                .as_str()
                .is_some_and(|c| c.contains("|v3|"))
            {
                continue;
            }
            let get = |k: &str| r[k].as_u64().unwrap_or(0);
            out.pairs += get("pairs");
            out.status_mismatch += get("status_mismatch");
            out.body_mismatch += get("body_mismatch");
        }
        out
    }
}

/// v1's and v3's quantiles over the requests both answered.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Paired {
    /// Calculation time (the answers' `elapsed_us`).
    pub calculation: (Quantiles, Quantiles),
    /// Service time at the backend (queueing for a CPU included).
    pub service: (Quantiles, Quantiles),
}

/// Everything the summary shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// `the forwarder` or `Envoy`.
    pub plane: String,
    pub interrupted: bool,
    pub steps: Vec<StepSummary>,
    pub users: Users,
    /// The comparison of the mirror step (`None`: it did not run).
    pub comparison: Option<Comparison>,
    /// v1's and v3's quantiles over the paired requests.
    pub paired: Paired,
    /// The data plane's `upstream_rq_time` quantiles of v1 and v3 in the mirror step.
    pub proxy_time: Option<(Quantiles, Quantiles)>,
    pub mirror_pairs: Option<MirrorPairs>,
}

fn quantiles_text(q: &Quantiles) -> String {
    format!("p50 {}  p90 {}  p99 {}", ms(q.p50), ms(q.p90), ms(q.p99))
}

/// The verdict's one-word answer.
pub fn answer(v: Verdict) -> &'static str {
    match v {
        Verdict::Better => "yes",
        Verdict::NoDifference => "not measurably",
        Verdict::Worse => "no",
        Verdict::Inconclusive => "inconclusive",
    }
}

/// The summary printed at the end (also after Ctrl-C, with what was measured so far).
pub fn summary(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== summary: {} through {}{} ==",
        s.steps
            .iter()
            .map(|st| format!("{} {:.1}s", st.name, st.ran.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        s.plane,
        if s.interrupted {
            " (interrupted: the figures so far)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "{}", header("step      version"));
    for st in &s.steps {
        for ((version, row), sent) in VERSIONS.iter().zip(&st.rows).zip(st.proxy_sent) {
            let label = format!("{:<9} {version}", st.name);
            let _ = writeln!(out, "{}", row_line(&label, row, sent));
        }
    }
    let _ = writeln!(
        out,
        "(v1, v2: trial division; v3: Pollard's rho. p50-p99: service time at the backend;\n proxy: requests {} sent each version, its upstream_rq_total)",
        s.plane
    );
    let _ = writeln!(out, "{}", users_line(&s.users));
    let _ = writeln!(out, "{}", from_v3_line(&s.users));
    let _ = writeln!(out);
    let Some(c) = &s.comparison else {
        let _ = writeln!(out, "is v3 better than v1?");
        let _ = writeln!(
            out,
            "verdict: inconclusive: the mirror step did not run, so v3 got no traffic to compare"
        );
        return out;
    };
    let _ = writeln!(
        out,
        "is v3 better than v1?  {} requests of the mirror step answered by both",
        c.pairs
    );
    let _ = writeln!(
        out,
        "(v1 served the user, v3 the mirrored copy; paired by x-request-id)"
    );
    let _ = writeln!(
        out,
        "  calculation  v3 faster on {} of {} requests, slower on {}, equal on {}",
        c.v3_faster,
        c.pairs,
        c.v3_slower,
        c.pairs - c.v3_faster - c.v3_slower
    );
    let _ = writeln!(
        out,
        "               sign test p {}{}",
        p_text(c.sign_p),
        c.ratio.map_or_else(String::new, |(m, lo, hi)| format!(
            ", median v3/v1 {m:.3} (98% CI {lo:.3}-{hi:.3})"
        ))
    );
    let _ = writeln!(
        out,
        "               v1 {}",
        quantiles_text(&s.paired.calculation.0)
    );
    let _ = writeln!(
        out,
        "               v3 {}",
        quantiles_text(&s.paired.calculation.1)
    );
    let _ = writeln!(
        out,
        "  service      v1 {}",
        quantiles_text(&s.paired.service.0)
    );
    let _ = writeln!(
        out,
        "               v3 {}",
        quantiles_text(&s.paired.service.1)
    );
    let _ = writeln!(
        out,
        "               (at the backend, queueing for the CPUs the demo shares included)"
    );
    let _ = writeln!(
        out,
        "  errors       v1 {} of {} ({:.1}%), v3 {} of {} ({:.1}%)",
        c.v1_errors.errors,
        c.v1_errors.requests,
        c.v1_errors.rate() * 100.0,
        c.v3_errors.errors,
        c.v3_errors.requests,
        c.v3_errors.rate() * 100.0
    );
    let _ = writeln!(
        out,
        "  answers      the same factors on {} of {} requests",
        c.answers_compared - c.answers_differ,
        c.answers_compared
    );
    if let Some((v1, v3)) = &s.proxy_time {
        let _ = writeln!(
            out,
            "  proxy        {}'s upstream_rq_time, histogram buckets:",
            s.plane
        );
        let _ = writeln!(
            out,
            "               v1 p50 {} p99 {}; v3 p50 {} p99 {}",
            ms(v1.p50),
            ms(v1.p99),
            ms(v3.p50),
            ms(v3.p99)
        );
    }
    if let Some(m) = &s.mirror_pairs {
        let _ = writeln!(
            out,
            "  forwarder    /debug/mirror: {} pairs, {} status mismatches;",
            m.pairs, m.status_mismatch
        );
        let _ = writeln!(
            out,
            "               bodies differ in {} (answers name their version and timing)",
            m.body_mismatch
        );
    }
    let _ = writeln!(
        out,
        "  not done     an A/A control (a second v1 behind the same mirror),"
    );
    let _ = writeln!(out, "               several intervals, CPU and memory");
    let _ = writeln!(out, "verdict: {}: {}", answer(c.verdict), c.reason);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::verdict::{compare, Errors, Pair};
    use std::sync::{Arc, Mutex};

    /// A `Write` that keeps what was written.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
        }
    }

    fn row(received: u64, mirrored: u64, p50: f64) -> Row {
        Row {
            received,
            mirrored,
            errors: 0,
            service: Quantiles {
                p50: Some(p50),
                p90: Some(p50 * 2.0),
                p99: Some(p50 * 3.0),
            },
        }
    }

    fn frame() -> Frame<'static> {
        Frame {
            step: 1,
            steps: 3,
            name: "mirror",
            elapsed: Duration::from_secs(5),
            length: Duration::from_secs(10),
            rows: [row(120, 0, 0.9), row(40, 0, 0.8), row(120, 120, 0.03)],
            proxy_sent: [Some(120.0), Some(40.0), Some(120.0)],
            users: Users {
                sent: 160,
                by_version: [120, 40, 0],
                failed: 0,
            },
            plane: "the forwarder",
        }
    }

    #[test]
    fn plain_mode_prints_lines_without_escape_codes() {
        let buf = Buf::default();
        let mut view = View::new(Box::new(buf.clone()), false);
        view.line("step 2/3 mirror");
        view.frame(&frame());
        drop(view);
        let text = buf.text();
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(text.contains("[mirror 5.0s/10.0s] v1 120 received, 0 mirrored"));
        assert!(text.contains("v3 120 received, 120 mirrored"));
        assert!(text.contains("answers to users from v3: 0 (of 160)"));
    }

    #[test]
    fn live_mode_redraws_in_place_and_restores_the_cursor() {
        let buf = Buf::default();
        let mut view = View::new(Box::new(buf.clone()), true);
        view.frame(&frame());
        let lines = live_table(&frame()).lines().count();
        view.frame(&frame());
        view.line("a step line");
        view.end_live();
        let text = buf.text();
        assert!(text.starts_with("\x1b[?25l"), "{text:?}");
        assert_eq!(text.matches(&format!("\x1b[{lines}A\r\x1b[J")).count(), 2);
        assert!(text.ends_with("a step line\n\x1b[?25h"), "{text:?}");
        let table = live_table(&frame());
        assert!(table.contains("[############------------]"), "{table}");
        assert!(
            table.contains("v3 pollard-rho         120      120"),
            "{table}"
        );
        assert!(table.lines().all(|l| l.chars().count() < 80), "{table}");
        assert!(table.contains("0.030 ms"), "{table}");
    }

    #[test]
    fn summary_shows_steps_users_and_the_verdict() {
        let pairs: Vec<Pair> = (0..100)
            .map(|i| Pair {
                v1_us: 900.0 + f64::from(i),
                v3_us: 30.0,
                same_answer: Some(true),
            })
            .collect();
        let clean = Errors {
            requests: 100,
            errors: 0,
        };
        let s = Summary {
            plane: "the forwarder".into(),
            interrupted: false,
            steps: vec![StepSummary {
                name: "mirror",
                ran: Duration::from_secs(10),
                rows: frame().rows,
                proxy_sent: [Some(120.0), Some(40.0), Some(120.0)],
            }],
            users: frame().users,
            comparison: Some(compare(&pairs, clean, clean)),
            paired: Paired {
                calculation: (Quantiles::of_us(&[900.0, 950.0]), Quantiles::of_us(&[30.0])),
                service: (Quantiles::of_us(&[990.0]), Quantiles::of_us(&[80.0])),
            },
            proxy_time: None,
            mirror_pairs: Some(MirrorPairs {
                pairs: 100,
                status_mismatch: 0,
                body_mismatch: 100,
            }),
        };
        let text = summary(&s);
        assert!(
            text.contains("mirror 10.0s through the forwarder =="),
            "{text}"
        );
        assert!(
            text.contains(&row_line("mirror    v3", &frame().rows[2], Some(120.0))),
            "{text}"
        );
        assert!(
            text.contains("answers to users from v3: 0 (of 160)"),
            "{text}"
        );
        assert!(
            text.contains(
                "calculation  v3 faster on 100 of 100 requests, slower on 0, equal on 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("sign test p < 0.0001, median v3/v1 0.032"),
            "{text}"
        );
        assert!(text.contains("v3 p50 0.030 ms"), "{text}");
        assert!(text.contains("the same factors on 100 of 100"), "{text}");
        assert!(
            text.contains("verdict: yes: v3 is faster: 1/32 of v1's calculation time"),
            "{text}"
        );

        let none = Summary {
            comparison: None,
            ..s
        };
        assert!(summary(&none).contains("verdict: inconclusive: the mirror step did not run"));
    }

    #[test]
    fn mirror_pairs_sum_the_v3_routes() {
        let v = serde_json::json!({"routes": [
            {"shadow_cluster": "outbound|1|v3|h", "pairs": 5, "status_mismatch": 1, "body_mismatch": 5},
            {"shadow_cluster": "outbound|1|v3|h", "pairs": 2, "status_mismatch": 0, "body_mismatch": 2},
            {"shadow_cluster": "outbound|1|v2|h", "pairs": 9, "status_mismatch": 9, "body_mismatch": 9}
        ]});
        assert_eq!(
            MirrorPairs::from_json(&v),
            MirrorPairs {
                pairs: 7,
                status_mismatch: 1,
                body_mismatch: 7
            }
        );
    }
}
