//! `shadowplane demo` as a newcomer runs it: the built binary, headless (stdout is a file, so
//! plain lines instead of the live table), a short `--duration`, with `TMPDIR` pointing at a
//! fresh folder that must be empty again afterwards.
//!
//! The output must show the three steps, v3 receiving mirrored copies during the mirror step
//! and nothing before or after it, v1 and v2 never receiving mirrored copies, no user
//! answered by v3, and a verdict; the exit status must be 0. Once through the built-in
//! forwarder and once through a real Envoy (the test fails, never skips, without one; see
//! `common::envoy_bin`). A third run is interrupted with SIGINT during the mirror step: exit
//! status 130, the summary so far, the temporary folder removed and no Envoy left running.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The whole demo must finish well within this (it runs for `--duration` plus start-up).
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// A fresh, empty `TMPDIR` for one run (removed by the guard).
fn fresh_tmpdir(name: &str) -> common::TempDir {
    common::TempDir::new(&format!("demo-{name}"))
}

fn spawn(args: &[&str], tmpdir: &Path, out: &Path, err: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_shadowplane"))
        .arg("demo")
        .args(args)
        .env("TMPDIR", tmpdir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("stdout file"))
        .stderr(std::fs::File::create(err).expect("stderr file"))
        .spawn()
        .expect("start shadowplane demo")
}

/// Wait (bounded) for the child; kill it and fail when it takes too long.
fn wait(mut child: Child, out: &Path, err: &Path) -> Run {
    let deadline = Instant::now() + DEMO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the demo did not finish within {DEMO_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                std::fs::read_to_string(out).unwrap_or_default(),
                std::fs::read_to_string(err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr: std::fs::read_to_string(err).unwrap_or_default(),
    }
}

fn run_demo(name: &str, args: &[&str]) -> (Run, common::TempDir) {
    let logs = common::TempDir::new(&format!("demo-logs-{name}"));
    let tmpdir = fresh_tmpdir(name);
    let (out, err) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let child = spawn(args, tmpdir.path(), &out, &err);
    let run = wait(child, &out, &err);
    (run, tmpdir)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// `(received, mirrored)` per version from a `step i/3 <name> done: v1 received A (B mirrored)
/// · v2 ... · v3 ...` line.
fn step_counts(stdout: &str, step: &str) -> [(u64, u64); 3] {
    let prefix_end = format!(" {step} done: ");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("step ") && l.contains(&prefix_end))
        .unwrap_or_else(|| panic!("no 'step .. {step} done' line in:\n{stdout}"));
    let counts = line.split_once(&prefix_end).expect("prefix").1;
    let mut out = [(0, 0); 3];
    for (i, part) in counts.split(" · ").enumerate() {
        // "v1 received 120 (0 mirrored)"
        let words: Vec<&str> = part.split_whitespace().collect();
        assert_eq!(words.len(), 5, "unexpected counts {part:?} in {line:?}");
        assert_eq!(words[0], ["v1", "v2", "v3"][i], "{line}");
        let received = words[2].parse().expect("received count");
        let mirrored = words[3]
            .trim_start_matches('(')
            .parse()
            .expect("mirrored count");
        out[i] = (received, mirrored);
    }
    out
}

/// The checks every complete run must pass.
fn assert_story(run: &Run, tmpdir: &Path, plane: &str) {
    let out = &run.stdout;
    let context = format!("--- stdout ---\n{out}\n--- stderr ---\n{}", run.stderr);
    assert!(run.status.success(), "exit {:?}\n{context}", run.status);
    assert!(
        !out.contains('\x1b'),
        "escape codes while stdout is not a terminal\n{context}"
    );
    // The three steps, in order, each written from the seed's files.
    let positions: Vec<usize> = [
        "step 1/3 baseline: wrote",
        "step 2/3 mirror: wrote",
        "step 3/3 reset: wrote",
    ]
    .iter()
    .map(|s| out.find(s).unwrap_or_else(|| panic!("no {s:?}\n{context}")))
    .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{context}");
    assert!(
        out.contains(&format!("  {plane} acknowledged the new rules")),
        "{context}"
    );

    let baseline = step_counts(out, "baseline");
    let mirror = step_counts(out, "mirror");
    let reset = step_counts(out, "reset");
    // Users reach v1 and v2 in every step.
    for step in [&baseline, &mirror, &reset] {
        assert!(step[0].0 > 0 && step[1].0 > 0, "{step:?}\n{context}");
    }
    // v3 only gets mirrored copies, and only during the mirror step.
    assert!(mirror[2].1 > 0, "no mirrored request reached v3\n{context}");
    assert_eq!(
        mirror[2].0, mirror[2].1,
        "v3 got unmirrored requests\n{context}"
    );
    assert_eq!(baseline[2], (0, 0), "{context}");
    assert_eq!(reset[2], (0, 0), "{context}");
    // v1 and v2 never see mirrored copies.
    for step in [&baseline, &mirror, &reset] {
        assert_eq!((step[0].1, step[1].1), (0, 0), "{context}");
    }
    // Every request v1 served in the mirror step (the non-Mobile ones) was mirrored once.
    assert_eq!(mirror[2].1, mirror[0].0, "{context}");

    let total_line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("answers to users from v3: "))
        .unwrap_or_else(|| panic!("no 'answers to users from v3' line\n{context}"));
    assert!(
        total_line.starts_with("answers to users from v3: 0 (of "),
        "{total_line}\n{context}"
    );
    let users: u64 = total_line
        .trim_start_matches("answers to users from v3: 0 (of ")
        .trim_end_matches(')')
        .parse()
        .expect("user count");
    assert!(users > 0, "{context}");
    assert!(
        out.contains(", 0 failed"),
        "a user request failed\n{context}"
    );
    assert!(out.contains("is v3 better than v1?"), "{context}");
    let verdict = out
        .lines()
        .find(|l| l.starts_with("verdict: "))
        .unwrap_or_else(|| panic!("no verdict line\n{context}"));
    assert!(
        [
            "verdict: yes",
            "verdict: not measurably",
            "verdict: no",
            "verdict: inconclusive"
        ]
        .iter()
        .any(|v| verdict.starts_with(v)),
        "{verdict}"
    );
    assert!(out.contains("the same factors on"), "{context}");

    let left = entries(tmpdir);
    assert!(
        left.is_empty(),
        "temporary files left behind: {left:?}\n{context}"
    );
}

#[test]
fn demo_through_the_forwarder_tells_the_whole_story() {
    let (run, tmpdir) = run_demo("forwarder", &["--duration", "6"]);
    assert_story(&run, tmpdir.path(), "the forwarder");
    // The forwarder's own primary/shadow comparison is part of the summary.
    assert!(run.stdout.contains("/debug/mirror: "), "{}", run.stdout);
}

#[test]
fn demo_through_a_real_envoy_tells_the_whole_story() {
    let envoy = common::envoy_bin();
    let envoy = envoy.to_str().expect("utf-8 envoy path");
    let (run, tmpdir) = run_demo("envoy", &["--duration", "6", "--envoy", envoy]);
    assert_story(&run, tmpdir.path(), "Envoy");
    assert!(run.stdout.contains("Envoy ("), "{}", run.stdout);
    assert!(
        run.stdout.contains("Envoy's upstream_rq_time"),
        "Envoy's per-version histograms are read\n{}",
        run.stdout
    );
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
fn ctrl_c_stops_everything_and_prints_the_summary_so_far() {
    let envoy = common::envoy_bin();
    let envoy = envoy.to_str().expect("utf-8 envoy path");
    let logs = common::TempDir::new("demo-logs-interrupt");
    let tmpdir = fresh_tmpdir("interrupt");
    let (out, err) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let child = spawn(
        &["--duration", "60", "--envoy", envoy],
        tmpdir.path(),
        &out,
        &err,
    );
    let pid = child.id().to_string();

    // Interrupt once the mirror step has run for a moment.
    let deadline = Instant::now() + DEMO_TIMEOUT;
    loop {
        let so_far = std::fs::read_to_string(&out).unwrap_or_default();
        if so_far.contains("[mirror ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror step did not start\n{so_far}\n{}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Envoy runs from a bootstrap inside TMPDIR: that is how it is found below.
    let needle = tmpdir.path().to_string_lossy().into_owned();
    assert!(
        !processes_mentioning(&needle).is_empty(),
        "no Envoy running from {needle}"
    );
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let run = wait(child, &out, &err);
    let context = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.status.code(), Some(130), "{context}");
    assert!(run.stdout.contains("interrupted: stopping"), "{context}");
    assert!(
        run.stdout.contains("(interrupted: the figures so far)"),
        "{context}"
    );
    assert!(
        run.stdout.contains("answers to users from v3: 0 (of "),
        "{context}"
    );
    assert!(run.stdout.contains("verdict: "), "{context}");
    assert!(
        !run.stdout.contains("step 3/3 reset"),
        "the story went on after Ctrl-C\n{context}"
    );
    let left = entries(tmpdir.path());
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    let running = processes_mentioning(&needle);
    assert!(running.is_empty(), "still running: {running:?}");
}
