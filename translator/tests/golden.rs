//! Golden tests: every folder under `testdata/translate/` is one case.
//!
//! A case holds its input (`input.yaml`, or an `input/` folder of YAML files), optional
//! `options.yaml` (the [`Options`] fields in snake_case) and the expected output:
//! `listeners.yaml`, `routes.yaml`, `clusters.yaml`, `endpoints.yaml` (a YAML list of the
//! resources in canonical proto JSON; omitted when empty) and `diagnostics.txt` (the `Display`
//! form of every diagnostic, paths relative to the case folder; omitted when there are none).
//!
//! `UPDATE_GOLDEN=1 cargo test -p shadowplane-translator --test golden` rewrites the expected
//! files (and deletes those no longer produced). Read the diff before committing it.

// A benchmark/test harness reads fixtures and the clock; the purity rule is for the library.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shadowplane_translator::{
    print, translate_files, ConfigSourceKind, Options, Resources, SourceFile,
};

/// The expected-output files a case may hold, in the order they are compared.
const OUTPUT_FILES: [&str; 5] = [
    "listeners.yaml",
    "routes.yaml",
    "clusters.yaml",
    "endpoints.yaml",
    "diagnostics.txt",
];
/// Other files a case folder may hold.
const INPUT_FILES: [&str; 4] = ["input.yaml", "input", "options.yaml", "README.md"];

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testdata")
        .join("translate")
}

/// `options.yaml` of a case: any field left out keeps [`Options::default`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseOptions {
    bind_address: Option<String>,
    disable_shadow_host_suffix: Option<bool>,
    proxy_namespace: Option<String>,
    domain_suffix: Option<String>,
    /// `ads`, `grpc`, `delta_grpc` or `self`.
    config_source: Option<String>,
    /// The bootstrap cluster a `grpc`/`delta_grpc` config source names (`xds_cluster`).
    xds_cluster: Option<String>,
}

impl CaseOptions {
    fn into_options(self) -> Result<Options, String> {
        let mut options = Options::default();
        if let Some(v) = self.bind_address {
            options.bind_address = v;
        }
        if let Some(v) = self.disable_shadow_host_suffix {
            options.disable_shadow_host_suffix = v;
        }
        if self.proxy_namespace.is_some() {
            options.proxy_namespace = self.proxy_namespace;
        }
        if let Some(v) = self.domain_suffix {
            options.domain_suffix = v;
        }
        let cluster_name = self
            .xds_cluster
            .unwrap_or_else(|| "xds_cluster".to_string());
        match self.config_source.as_deref() {
            None | Some("ads") => {}
            Some(api @ ("grpc" | "delta_grpc")) => {
                options.config_source = ConfigSourceKind::Grpc {
                    cluster_name,
                    delta: api == "delta_grpc",
                }
            }
            Some("self") => options.config_source = ConfigSourceKind::SelfSource,
            Some(other) => {
                return Err(format!(
                    "options.yaml: config_source {other:?} is not ads, grpc, delta_grpc or self"
                ))
            }
        }
        Ok(options)
    }
}

/// The input files of a case, with paths relative to the case folder (`input.yaml`,
/// `input/a.yaml`, ...) so diagnostics are the same on every machine.
fn read_inputs(case: &Path) -> Result<Vec<SourceFile>, String> {
    let single = case.join("input.yaml");
    let folder = case.join("input");
    match (single.is_file(), folder.is_dir()) {
        (true, true) => Err("has both input.yaml and input/; keep one".to_string()),
        (false, false) => Err("has no input: add input.yaml or an input/ folder".to_string()),
        (true, false) => Ok(vec![SourceFile {
            path: "input.yaml".to_string(),
            text: read(&single)?,
        }]),
        (false, true) => {
            let mut paths = Vec::new();
            walk_yaml(&folder, &mut paths)?;
            if paths.is_empty() {
                return Err("input/ holds no *.yaml or *.yml file".to_string());
            }
            paths
                .into_iter()
                .map(|p| {
                    let rel = p
                        .strip_prefix(case)
                        .map_err(|e| format!("{}: {e}", p.display()))?;
                    let rel = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/");
                    Ok(SourceFile {
                        path: rel,
                        text: read(&p)?,
                    })
                })
                .collect()
        }
    }
}

fn walk_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk_yaml(&path, out)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_options(case: &Path) -> Result<Options, String> {
    let path = case.join("options.yaml");
    if !path.exists() {
        return Ok(Options::default());
    }
    let text = read(&path)?;
    let options: CaseOptions =
        serde_yaml::from_str(&text).map_err(|e| format!("options.yaml: {e}"))?;
    options.into_options()
}

/// A YAML list of the canonical proto JSON of `items`, or `None` when there are none.
fn render_list<M>(items: &[M]) -> Result<Option<String>, String>
where
    M: prost::Name + prost::Message,
{
    if items.is_empty() {
        return Ok(None);
    }
    let values = items
        .iter()
        .map(|m| print::to_json(m).map_err(|e| format!("cannot print {}: {e}", M::full_name())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(print::to_yaml_string(&serde_json::Value::Array(
        values,
    ))))
}

/// Translate a case and render every output file it should have (absent = empty).
fn render(case: &Path) -> Result<BTreeMap<&'static str, String>, String> {
    let files = read_inputs(case)?;
    let options = read_options(case)?;
    let translation = translate_files(&files, &options);
    let Resources {
        listeners,
        routes,
        clusters,
        endpoints,
    } = &translation.resources;

    let mut out = BTreeMap::new();
    let lists = [
        ("listeners.yaml", render_list(listeners)?),
        ("routes.yaml", render_list(routes)?),
        ("clusters.yaml", render_list(clusters)?),
        ("endpoints.yaml", render_list(endpoints)?),
    ];
    for (name, text) in lists {
        if let Some(text) = text {
            out.insert(name, ensure_newline(text));
        }
    }
    if !translation.diagnostics.is_empty() {
        let text = translation
            .diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        out.insert("diagnostics.txt", ensure_newline(text));
    }
    Ok(out)
}

fn ensure_newline(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn diff(name: &str, expected: &str, actual: &str) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{name} (expected)"), &format!("{name} (actual)"))
        .to_string()
}

/// Check one case; `Err` holds the report of every mismatch.
fn check_case(case: &Path, update: bool) -> Result<(), String> {
    let mut problems = Vec::new();

    for entry in fs::read_dir(case).map_err(|e| format!("{}: {e}", case.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", case.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !OUTPUT_FILES.contains(&name.as_str()) && !INPUT_FILES.contains(&name.as_str()) {
            problems.push(format!(
                "unexpected file {name}: a case holds only {} and {}",
                INPUT_FILES.join(", "),
                OUTPUT_FILES.join(", ")
            ));
        }
    }

    let first = render(case)?;
    let second = render(case)?;
    if first != second {
        let mut report = String::from("translation is not deterministic: two runs differ\n");
        for name in OUTPUT_FILES {
            let a = first.get(name).map(String::as_str).unwrap_or("");
            let b = second.get(name).map(String::as_str).unwrap_or("");
            if a != b {
                report.push_str(&diff(name, a, b));
            }
        }
        problems.push(report);
    }

    for name in OUTPUT_FILES {
        let path = case.join(name);
        let expected = if path.exists() {
            Some(read(&path)?)
        } else {
            None
        };
        let actual = first.get(name);
        if update {
            match actual {
                Some(text) if expected.as_deref() != Some(text.as_str()) => {
                    fs::write(&path, text)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
                None if expected.is_some() => {
                    fs::remove_file(&path)
                        .map_err(|e| format!("cannot delete {}: {e}", path.display()))?;
                }
                _ => {}
            }
            continue;
        }
        match (expected.as_deref(), actual.map(String::as_str)) {
            (None, None) => {}
            (Some(e), Some(a)) if e == a => {}
            (Some(e), a) => {
                let a = a.unwrap_or("");
                let note = if a.is_empty() {
                    " (now produced empty)"
                } else {
                    ""
                };
                problems.push(format!("{name} differs{note}:\n{}", diff(name, e, a)));
            }
            (None, Some(a)) => {
                problems.push(format!(
                    "{name} is produced but not expected (no such file):\n{}",
                    diff(name, "", a)
                ));
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn golden_cases() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let dir = cases_dir();
    let mut cases = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("readable entry in testdata/translate").path())
        .filter(|p| p.is_dir())
        .collect::<Vec<_>>();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases under {}", dir.display());

    let mut failed = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Err(report) = check_case(case, update) {
            eprintln!("=== golden case {name} ===\n{report}\n");
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} golden cases failed: {}\n(see the diffs above; if the new output is right, \
         run UPDATE_GOLDEN=1 cargo test -p shadowplane-translator --test golden and review the \
         changes)",
        failed.len(),
        cases.len(),
        failed.join(", ")
    );
}

#[test]
fn case_without_input_is_reported() {
    let dir = std::env::temp_dir().join(format!("shadowplane-golden-empty-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create temp case folder");
    let result = check_case(&dir, false);
    let _ = fs::remove_dir_all(&dir);
    let err = result.expect_err("a case without input must fail");
    assert!(err.contains("has no input"), "{err}");
}
