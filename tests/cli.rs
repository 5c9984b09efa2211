//! The `shadowplane` binary as a user runs it: exit codes, where output goes, file writing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SE: &str = "examples/calc/service-entry.yaml";
const MIRROR: &str = "examples/calc/mirror";
const BASELINE: &str = "examples/calc/baseline";
/// A case whose mirror names an undefined subset: an error, but the route still translates.
const INVALID_MIRROR: &str = "testdata/translate/invalid-undefined-subset-mirror/input.yaml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    run_in(&root(), args)
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadowplane"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the shadowplane binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code (not killed by a signal)")
}

/// `file:line:col` where `file` is `path` as given on the command line.
fn has_location(text: &str, path: &str) -> bool {
    text.lines().any(|line| {
        let Some(pos) = line.find(path) else {
            return false;
        };
        let rest = &line[pos + path.len()..];
        let mut parts = rest.splitn(4, ':');
        parts.next() == Some("")
            && parts
                .next()
                .is_some_and(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|c| !c.is_empty() && c.chars().all(|c| c.is_ascii_digit()))
    })
}

#[test]
fn validate_clean_config_exits_0_with_summary() {
    let out = run(&["validate", "--config", SE, "--config", BASELINE]);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "stderr:\n{err}");
    assert!(err.contains("0 errors, 0 warnings"), "stderr:\n{err}");
    assert!(
        stdout(&out).is_empty(),
        "text diagnostics go to stderr only"
    );
}

#[test]
fn validate_mirror_step_reports_skipped_deployment_as_info() {
    let out = run(&["validate", "--config", SE, "--config", MIRROR]);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "an info is not an error; stderr:\n{err}");
    assert!(err.contains("info[SP0004]"), "stderr:\n{err}");
    assert!(
        has_location(&err, "examples/calc/mirror/deployment-v3.yaml"),
        "the skipped Deployment is located with the path as given; stderr:\n{err}"
    );
}

#[test]
fn validate_errors_exit_1_with_file_line_col() {
    let out = run(&["validate", "--config", INVALID_MIRROR]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "stderr:\n{err}");
    assert!(err.contains("error[IST0101]"), "stderr:\n{err}");
    assert!(has_location(&err, INVALID_MIRROR), "stderr:\n{err}");
    assert!(
        err.contains("bogus"),
        "names the bad subset; stderr:\n{err}"
    );
    assert!(err.contains("1 error,"), "summary line; stderr:\n{err}");
}

#[test]
fn validate_missing_path_exits_2_naming_it() {
    let out = run(&["validate", "--config", "no/such/file.yaml"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 2, "stderr:\n{err}");
    assert!(err.contains("no/such/file.yaml"), "stderr:\n{err}");
    assert!(err.contains("does not exist"), "stderr:\n{err}");
}

#[test]
fn validate_folder_without_yaml_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("notes.txt"), "x").expect("write");
    let path = dir.path().display().to_string();
    let out = run(&["validate", "--config", &path]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("no *.yaml or *.yml files under"));
}

#[test]
fn usage_error_exits_2() {
    let out = run(&["validate"]);
    assert_eq!(code(&out), 2, "missing --config is a usage error");
    let out = run(&["validate", "--config", SE, "--format", "xml"]);
    assert_eq!(code(&out), 2, "unknown format is a usage error");
}

#[test]
fn validate_json_goes_to_stdout_and_parses() {
    let out = run(&["validate", "--config", INVALID_MIRROR, "--format", "json"]);
    assert_eq!(code(&out), 1);
    let value: serde_json::Value =
        serde_json::from_str(&stdout(&out)).expect("stdout is one JSON document");
    let items = value.as_array().expect("a JSON array of diagnostics");
    assert!(
        items
            .iter()
            .any(|d| d["code"] == "IST0101" && d["severity"] == "error"),
        "{value:#}"
    );

    let clean = run(&[
        "validate", "--config", SE, "--config", BASELINE, "--format", "json",
    ]);
    assert_eq!(code(&clean), 0);
    let value: serde_json::Value = serde_json::from_str(&stdout(&clean)).expect("JSON");
    assert_eq!(value, serde_json::json!([]));
}

#[test]
fn translate_mirror_step_prints_mirror_policy() {
    let out = run(&["translate", "--config", SE, "--config", MIRROR]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "stderr:\n{}", stderr(&out));
    assert!(text.contains("request_mirror_policies"), "{text}");
    assert!(
        text.contains("outbound|8080|v3|calcbackendsvc.challengeistio.svc.cluster.local"),
        "{text}"
    );
    for group in ["listeners:", "routes:", "clusters:", "endpoints:"] {
        assert!(
            text.lines().any(|l| l.starts_with(group)),
            "missing {group}\n{text}"
        );
    }
}

#[test]
fn translate_baseline_has_no_mirror_policy() {
    let out = run(&["translate", "--config", SE, "--config", BASELINE]);
    assert_eq!(code(&out), 0);
    assert!(!stdout(&out).contains("request_mirror_policies"));
}

#[test]
fn translate_json_is_grouped_by_type() {
    let out = run(&[
        "translate",
        "--config",
        SE,
        "--config",
        MIRROR,
        "--format",
        "json",
    ]);
    assert_eq!(code(&out), 0, "stderr:\n{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    for group in ["listeners", "routes", "clusters", "endpoints"] {
        assert!(
            value[group].as_array().is_some_and(|a| !a.is_empty()),
            "{group} missing or empty in {value:#}"
        );
    }
}

#[test]
fn translate_yaml_and_json_say_the_same() {
    let yaml = run(&["translate", "--config", SE, "--config", MIRROR]);
    let json = run(&[
        "translate",
        "--config",
        SE,
        "--config",
        MIRROR,
        "--format",
        "json",
    ]);
    let from_yaml: serde_json::Value =
        serde_yaml::from_str(&stdout(&yaml)).expect("stdout is YAML");
    let from_json: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("JSON");
    assert_eq!(from_yaml, from_json);
}

#[test]
fn translate_flags_reach_the_output() {
    let out = run(&[
        "translate",
        "--config",
        SE,
        "--config",
        MIRROR,
        "--bind-address",
        "127.0.0.1",
        "--no-shadow-suffix",
    ]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0);
    assert!(text.contains("127.0.0.1_8080"), "{text}");
    assert!(
        text.contains("disable_shadow_host_suffix_append: true"),
        "{text}"
    );
}

#[test]
fn translate_with_errors_prints_best_effort_and_exits_1() {
    let out = run(&["translate", "--config", SE, "--config", INVALID_MIRROR]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    let err = stderr(&out);
    assert!(err.contains("error[IST0101]"), "{err}");
    assert!(
        text.contains("request_mirror_policies"),
        "the route still translates, like istiod; stdout:\n{text}"
    );
}

#[test]
fn translate_output_writes_the_file_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resources.yaml");
    let file_arg = file.display().to_string();
    let out = run(&[
        "translate",
        "--config",
        SE,
        "--config",
        MIRROR,
        "--output",
        &file_arg,
    ]);
    assert_eq!(code(&out), 0, "stderr:\n{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "nothing on stdout with --output");
    let written = fs::read_to_string(&file).expect("output written");
    let on_stdout = stdout(&run(&["translate", "--config", SE, "--config", MIRROR]));
    assert_eq!(written, on_stdout);
    let entries: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
    assert_eq!(entries.len(), 1, "no temporary file left behind");
}

#[test]
fn translate_output_is_not_written_when_config_has_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resources.yaml");
    fs::write(&file, "previous good config\n").expect("seed output");
    let file_arg = file.display().to_string();
    let out = run(&[
        "translate",
        "--config",
        SE,
        "--config",
        INVALID_MIRROR,
        "--output",
        &file_arg,
    ]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("not writing"), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(&file).expect("still there"),
        "previous good config\n",
        "a config with errors never replaces the output file"
    );
    let entries: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
    assert_eq!(entries.len(), 1, "no temporary file left behind");

    let fresh = dir.path().join("new.yaml");
    let fresh_arg = fresh.display().to_string();
    let out = run(&[
        "translate",
        "--config",
        INVALID_MIRROR,
        "--output",
        &fresh_arg,
    ]);
    assert_eq!(code(&out), 1);
    assert!(!fresh.exists(), "no partial file is created");
}

#[test]
fn translate_output_to_missing_folder_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("missing").join("out.yaml");
    let file_arg = file.display().to_string();
    let out = run(&[
        "translate",
        "--config",
        SE,
        "--config",
        MIRROR,
        "--output",
        &file_arg,
    ]);
    assert_eq!(code(&out), 2);
    assert!(!file.exists());
}

#[test]
fn translate_bootstrap_is_a_static_envoy_config() {
    let out = run(&[
        "translate",
        "--bootstrap",
        "--config",
        SE,
        "--config",
        MIRROR,
        "--admin-port",
        "19901",
    ]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "stderr:\n{}", stderr(&out));
    assert!(text.contains("static_resources"), "{text}");
    assert!(text.contains("19901"), "admin port from the flag:\n{text}");
    assert!(text.contains("request_mirror_policies"), "{text}");
}

#[test]
fn bootstrap_only_flags_need_bootstrap() {
    let out = run(&["translate", "--config", SE, "--admin-port", "19901"]);
    assert_eq!(code(&out), 2, "stderr:\n{}", stderr(&out));
}

#[test]
fn help_has_examples() {
    for args in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["translate", "--help"],
    ] {
        let out = run(&args);
        assert_eq!(code(&out), 0);
        assert!(stdout(&out).contains("Examples:"), "{args:?}");
    }
    let translate = stdout(&run(&["translate", "--help"]));
    assert!(translate.contains("best effort"), "{translate}");
    assert!(translate.contains("NOT written"), "{translate}");
}

#[test]
fn verbose_logs_to_stderr() {
    let out = run(&["-v", "validate", "--config", SE]);
    assert_eq!(code(&out), 0);
    assert!(stderr(&out).contains("DEBUG"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[test]
fn relative_paths_are_printed_as_given() {
    let out = run_in(
        &root().join("examples"),
        &[
            "validate",
            "--config",
            "calc/service-entry.yaml",
            "--config",
            "calc/mirror",
        ],
    );
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    assert!(
        has_location(&err, "calc/mirror/deployment-v3.yaml"),
        "{err}"
    );
    assert!(!err.contains(&root().display().to_string()), "{err}");
}

#[test]
fn bootstrap_of_every_example_is_accepted_by_envoy() {
    let steps: [&[&str]; 4] = [
        &[SE, BASELINE],
        &[SE, MIRROR],
        &[SE, "examples/calc/reset"],
        &["examples/httpbin"],
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, configs) in steps.iter().enumerate() {
        let file = dir.path().join(format!("envoy-{i}.yaml"));
        let file_arg = file.display().to_string();
        let mut args = vec![
            "translate",
            "--bootstrap",
            "--bind-address",
            "127.0.0.1",
            "--output",
            &file_arg,
        ];
        for c in configs.iter() {
            args.extend(["--config", c]);
        }
        let out = run(&args);
        assert_eq!(code(&out), 0, "{configs:?}: {}", stderr(&out));
        let text = fs::read_to_string(&file).expect("bootstrap written");
        common::validate_config(&text)
            .unwrap_or_else(|e| panic!("envoy rejects the bootstrap of {configs:?}: {e}"));
    }
}
