//! The docker-compose demo: the compose file passes `docker-compose config`, its files agree with
//! each other, and the Grafana dashboard "shadowplane: version comparison" queries series that a
//! real Envoy (with the compose bootstrap's stats settings) and a real forwarder export.
//!
//! Nothing here needs a Docker daemon: `docker-compose config` only reads files, and Envoy, the
//! backends and the forwarder run as local processes and tasks on 127.0.0.1.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, repo_root, simple_get, EnvoyProcess, HttpClient, TempDir};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use shadowplane::backend::{serve_on, Algorithm, BackendConfig};
use shadowplane::forwarder::proxy::{Forwarder, ForwarderOptions};
use shadowplane_translator::{Options, SourceFile};

const DASHBOARD: &str = "deploy/compose/grafana/dashboards/shadowplane-version-comparison.json";
const DESKTOP: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
const MOBILE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148";
const HOST: &str = "calcbackendsvc.challengeistio.svc.cluster.local";

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// A YAML file with its merge keys (`<<: *anchor`) applied.
fn yaml(rel: &str) -> Yaml {
    let mut v: Yaml =
        serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    v.apply_merge()
        .unwrap_or_else(|e| panic!("{rel}: merge keys: {e}"));
    v
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// `docker-compose` (Debian's package; `scripts/test.sh` installs it when missing).
fn docker_compose(args: &[&str]) -> std::process::Output {
    Command::new("docker-compose")
        .args(args)
        .current_dir(repo_root())
        .env_remove("CALC_STEP")
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run docker-compose ({e}): install Debian's docker-compose package \
                 (scripts/test.sh does when it is missing)"
            )
        })
}

#[test]
fn compose_file_passes_docker_compose_config() {
    for args in [
        &["config", "-q"][..],
        &["--profile", "forwarder", "config", "-q"][..],
    ] {
        let out = docker_compose(args);
        assert!(
            out.status.success(),
            "docker-compose {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The walkthrough step is a variable: every step folder exists.
    let out = docker_compose(&["config"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/examples/calc/mirror"), "{text}");
    for step in ["baseline", "mirror", "reset"] {
        assert!(
            repo_root().join("examples/calc").join(step).is_dir(),
            "{step}"
        );
    }
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &compose["services"][name];
    assert!(!s.is_null(), "docker-compose.yml has no service {name}");
    s
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| match x {
                    Yaml::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The value after `flag` in a command list.
fn flag<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command
        .iter()
        .position(|a| a == flag)
        .and_then(|i| command.get(i + 1))
        .map(String::as_str)
}

#[test]
fn compose_services_images_ports_and_files_agree() {
    let compose = yaml("docker-compose.yml");
    let services: BTreeSet<String> = compose["services"]
        .as_mapping()
        .expect("services")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    for name in [
        "shadowplane",
        "envoy",
        "backend-v1",
        "backend-v2",
        "backend-v3",
        "loop",
        "prometheus",
        "grafana",
        "forwarder",
    ] {
        assert!(
            services.contains(name),
            "missing service {name}: {services:?}"
        );
    }

    // Images: an explicit, non-latest tag everywhere; Envoy's is the version the tests run.
    let test_sh = read("scripts/test.sh");
    let envoy_version = test_sh
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("ENVOY_VERSION in scripts/test.sh");
    for name in &services {
        let s = service(&compose, name);
        let image = s["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no image"));
        let tag = image
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'));
        assert!(
            tag.is_some_and(|t| t != "latest"),
            "{name}: image {image} is not pinned to a tag"
        );
    }
    assert_eq!(
        service(&compose, "envoy")["image"].as_str(),
        Some(format!("envoyproxy/envoy:v{envoy_version}").as_str())
    );
    let dockerfile = read("Dockerfile");
    for line in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = line.split_whitespace().nth(1).unwrap_or_default();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "Dockerfile: {line} is not pinned"
        );
    }
    assert!(dockerfile.contains("cargo build --release --locked"));

    // Every file mounted from the repository exists.
    for name in &services {
        for volume in strings(&service(&compose, name)["volumes"]) {
            let src = volume.split(':').next().unwrap_or_default();
            if let Some(rel) = src.strip_prefix("./") {
                assert!(
                    repo_root().join(rel).exists(),
                    "{name}: {src} does not exist"
                );
            }
        }
    }

    // The backends: one per version, v3 with the fast algorithm, all on the ServiceEntry's port.
    let se = yaml("deploy/compose/calc/service-entry.yaml");
    let endpoints = se["spec"]["endpoints"].as_sequence().expect("endpoints");
    assert_eq!(endpoints.len(), 3);
    for ep in endpoints {
        let host = ep["address"].as_str().expect("address");
        let version = ep["labels"]["version"].as_str().expect("version label");
        assert_eq!(host, format!("backend-{version}"));
        let port = ep["ports"]["http"].as_u64().expect("port");
        let command = strings(&service(&compose, host)["command"]);
        assert_eq!(
            command.first().map(String::as_str),
            Some("backend"),
            "{host}"
        );
        assert_eq!(flag(&command, "--name"), Some(version), "{host}");
        assert_eq!(
            flag(&command, "--listen"),
            Some(format!("0.0.0.0:{port}").as_str())
        );
    }
    let v3 = strings(&service(&compose, "backend-v3")["command"]);
    assert_eq!(flag(&v3, "--algorithm"), Some("pollard-rho"));

    // Envoy and the forwarder reach the control plane where it listens.
    let serve = strings(&service(&compose, "shadowplane")["command"]);
    assert_eq!(serve.first().map(String::as_str), Some("serve"));
    let xds_port = flag(&serve, "--xds-listen")
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .expect("--xds-listen");
    let admin_port = flag(&serve, "--admin-listen")
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .expect("--admin-listen");
    let envoy = yaml("deploy/compose/envoy.yaml");
    let xds = &envoy["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
        ["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(xds["address"].as_str(), Some("shadowplane"));
    assert_eq!(
        xds["port_value"].as_u64().map(|p| p.to_string()),
        Some(xds_port.clone())
    );
    let forward = strings(&service(&compose, "forwarder")["command"]);
    assert_eq!(forward.first().map(String::as_str), Some("forward"));
    assert_eq!(
        flag(&forward, "--xds"),
        Some(format!("shadowplane:{xds_port}").as_str())
    );
    assert_eq!(
        strings(&service(&compose, "forwarder")["profiles"]),
        ["forwarder"]
    );

    // Prometheus scrapes each of them on the port and path it serves metrics on.
    let prom = yaml("deploy/compose/prometheus.yml");
    let jobs: BTreeMap<String, (String, String)> = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .map(|j| {
            (
                j["job_name"].as_str().unwrap_or_default().to_string(),
                (
                    j["metrics_path"].as_str().unwrap_or("/metrics").to_string(),
                    strings(&j["static_configs"][0]["targets"]).join(","),
                ),
            )
        })
        .collect();
    let envoy_admin = envoy["admin"]["address"]["socket_address"]["port_value"]
        .as_u64()
        .expect("envoy admin port");
    let forwarder_admin = flag(&forward, "--admin-listen")
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .expect("forwarder --admin-listen");
    assert_eq!(
        jobs.get("envoy"),
        Some(&(
            "/stats/prometheus".to_string(),
            format!("envoy:{envoy_admin}")
        ))
    );
    assert_eq!(
        jobs.get("forwarder"),
        Some(&(
            "/metrics".to_string(),
            format!("forwarder:{forwarder_admin}")
        ))
    );
    assert_eq!(
        jobs.get("shadowplane"),
        Some(&("/metrics".to_string(), format!("shadowplane:{admin_port}")))
    );
}

#[test]
fn compose_envoy_bootstrap_is_accepted_by_envoy() {
    let text = read("deploy/compose/envoy.yaml");
    if let Err(e) = common::validate_config(&text) {
        panic!("deploy/compose/envoy.yaml: {e}");
    }
}

#[test]
fn compose_config_validates_with_every_walkthrough_step() {
    for step in ["baseline", "mirror", "reset"] {
        let out = Command::new(env!("CARGO_BIN_EXE_shadowplane"))
            .current_dir(repo_root())
            .args([
                "validate",
                "--config",
                "deploy/compose/calc/service-entry.yaml",
            ])
            .args(["--config", &format!("examples/calc/{step}")])
            .output()
            .expect("run shadowplane validate");
        assert!(
            out.status.success(),
            "{step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dashboard_is_json_titled_and_uses_the_provisioned_datasource() {
    let d = dashboard();
    assert_eq!(d["title"], "shadowplane: version comparison");
    let provisioned = yaml("deploy/compose/grafana/provisioning/datasources/prometheus.yaml");
    let uid = provisioned["datasources"][0]["uid"]
        .as_str()
        .expect("datasource uid");
    assert_eq!(
        provisioned["datasources"][0]["url"].as_str(),
        Some("http://prometheus:9090")
    );
    let provider = yaml("deploy/compose/grafana/provisioning/dashboards/shadowplane.yaml");
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut exprs = 0;
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {p}"
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"].as_str(), Some(uid), "{}", p["title"]);
            let expr = t["expr"].as_str().expect("expr");
            assert_eq!(balance(expr), Ok(()), "{}: {expr}", p["title"]);
            exprs += 1;
        }
    }
    assert!(exprs >= 8, "{exprs} queries");
    // The panels that separate versions (not Istio's "by source" that mixes them).
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for needle in [
        "Request rate by destination version",
        "5xx share by destination version",
        "p50 request duration by destination version",
        "p90 request duration by destination version",
        "p99 request duration by destination version",
        "Mirrored share",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(needle)),
            "no panel {needle:?}: {titles:?}"
        );
    }
}

/// Brackets and quotes are balanced.
fn balance(expr: &str) -> Result<(), String> {
    let mut stack = Vec::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => loop {
                match chars.next() {
                    Some('\\') => {
                        chars.next();
                    }
                    Some('"') => break,
                    Some(_) => {}
                    None => return Err("unterminated string".into()),
                }
            },
            '(' | '{' | '[' => stack.push(c),
            ')' | '}' | ']' => {
                let open = stack.pop();
                let want = match c {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                if open != Some(want) {
                    return Err(format!("unbalanced {c}"));
                }
            }
            _ => {}
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("unclosed {stack:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// A small PromQL reader: enough to find the series selectors and label_replace calls of the
// dashboard's queries.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Matchers(Vec<Matcher>),
    Open,
    Close,
    Other,
}

#[derive(Debug, Clone, PartialEq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

impl Matcher {
    fn matches(&self, value: Option<&str>) -> bool {
        let v = value.unwrap_or("");
        let re = || {
            regex::Regex::new(&format!("^(?:{})$", self.value))
                .unwrap_or_else(|e| panic!("bad regex {:?}: {e}", self.value))
        };
        match self.op.as_str() {
            "=" => v == self.value,
            "!=" => v != self.value,
            "=~" => re().is_match(v),
            "!~" => !re().is_match(v),
            other => panic!("unknown matcher operator {other}"),
        }
    }
}

fn read_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut s = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => s.push('\n'),
                Some(x) => s.push(x),
                None => break,
            },
            '"' => break,
            c => s.push(c),
        }
    }
    s
}

fn tokenize(expr: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == '"' {
            chars.next();
            out.push(Tok::Str(read_string(&mut chars)));
        } else if c == '[' {
            for c in chars.by_ref() {
                if c == ']' {
                    break;
                }
            }
        } else if c == '{' {
            chars.next();
            let mut matchers = Vec::new();
            loop {
                while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                    chars.next();
                }
                if chars.peek() == Some(&'}') || chars.peek().is_none() {
                    chars.next();
                    break;
                }
                let mut label = String::new();
                while chars
                    .peek()
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    label.push(chars.next().unwrap_or_default());
                }
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                let mut op = String::new();
                while chars.peek().is_some_and(|c| "=!~".contains(*c)) {
                    op.push(chars.next().unwrap_or_default());
                }
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                assert_eq!(
                    chars.next(),
                    Some('"'),
                    "matcher {label}{op} without a string in {expr}"
                );
                let value = read_string(&mut chars);
                matchers.push(Matcher { label, op, value });
            }
            out.push(Tok::Matchers(matchers));
        } else if c.is_alphabetic() || c == '_' || c == ':' {
            let mut id = String::new();
            while chars
                .peek()
                .is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            {
                id.push(chars.next().unwrap_or_default());
            }
            out.push(Tok::Ident(id));
        } else if c.is_ascii_digit() || c == '.' {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '.')
            {
                chars.next();
            }
            out.push(Tok::Other);
        } else {
            chars.next();
            out.push(match c {
                '(' => Tok::Open,
                ')' => Tok::Close,
                c if c.is_whitespace() => continue,
                _ => Tok::Other,
            });
        }
    }
    out
}

const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

/// The series selectors of a query, and the (destination label, replacement, source label,
/// regex) of its label_replace calls.
fn selectors(expr: &str) -> (Vec<Selector>, Vec<[String; 4]>) {
    let toks = tokenize(expr);
    let mut sels = Vec::new();
    let mut replaces = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if let Tok::Ident(id) = &toks[i] {
            let next = toks.get(i + 1);
            if id == "by" || id == "without" || id == "on" || id == "ignoring" {
                // Skip the label list.
                while i < toks.len() && toks[i] != Tok::Close {
                    i += 1;
                }
            } else if next == Some(&Tok::Open)
                || matches!(next, Some(Tok::Ident(k)) if k == "by" || k == "without")
            {
                if id == "label_replace" {
                    let mut depth = 0;
                    let mut strs = Vec::new();
                    for t in &toks[i + 1..] {
                        match t {
                            Tok::Open => depth += 1,
                            Tok::Close => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            Tok::Str(s) if depth == 1 => strs.push(s.clone()),
                            _ => {}
                        }
                    }
                    let n = strs.len();
                    assert!(n >= 4, "label_replace with {n} strings in {expr}");
                    replaces.push([
                        strs[n - 4].clone(),
                        strs[n - 3].clone(),
                        strs[n - 2].clone(),
                        strs[n - 1].clone(),
                    ]);
                }
            } else if !KEYWORDS.contains(&id.as_str()) {
                let matchers = match next {
                    Some(Tok::Matchers(m)) => m.clone(),
                    _ => Vec::new(),
                };
                sels.push(Selector {
                    metric: id.clone(),
                    matchers,
                });
            }
        }
        i += 1;
    }
    (sels, replaces)
}

#[test]
fn promql_reader_finds_selectors() {
    let (s, r) = selectors(
        r#"label_replace(sum by (job, le) (rate(a_b{x=~"o\\|1", job="j"}[$__rate_interval])) / on (job) b or 0 * c, "v", "$1", "x", "o\\|(.*)")"#,
    );
    let names: Vec<&str> = s.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["a_b", "b", "c"]);
    assert_eq!(s[0].matchers[0].value, r"o\|1");
    assert!(s[0].matchers[0].matches(Some("o|1")));
    assert!(!s[0].matchers[0].matches(Some("o|12")));
    assert_eq!(
        r,
        [["v".to_string(), "$1".into(), "x".into(), r"o\|(.*)".into()]]
    );
}

// ---------------------------------------------------------------------------------------------
// The dashboard against real exporters

/// One scraped series: name and labels.
type Series = (String, BTreeMap<String, String>, f64);

/// Parse Prometheus text format (0.0.4); `job` is added as Prometheus would.
fn parse_scrape(text: &str, job: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let mut labels = BTreeMap::new();
        labels.insert("job".to_string(), job.to_string());
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let mut end = body.len();
            loop {
                let mut key = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '=' || c == '}' {
                        break;
                    }
                    if c != ',' {
                        key.push(c);
                    }
                    chars.next();
                }
                match chars.next() {
                    Some((i, '}')) => {
                        end = i;
                        break;
                    }
                    Some((_, '=')) => {}
                    _ => break,
                }
                chars.next(); // opening quote
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, x)) = chars.next() {
                                value.push(if x == 'n' { '\n' } else { x });
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key.trim().to_string(), value);
            }
            rest = &body[(end + 1).min(body.len())..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        out.push((name.to_string(), labels, value));
    }
    out
}

fn cluster(version: &str) -> String {
    format!("outbound|8080|{version}|{HOST}")
}

fn value_of(series: &[Series], name: &str, cluster_name: &str) -> f64 {
    series
        .iter()
        .find(|(n, l, _)| {
            n == name && l.get("envoy_cluster_name").map(String::as_str) == Some(cluster_name)
        })
        .map_or(0.0, |(_, _, v)| *v)
}

/// The dashboard's template variables at their defaults (`$job` is set per exporter).
fn variable_defaults(d: &Json) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().expect("variable name").to_string();
        let value = match v["type"].as_str() {
            Some("textbox") => v["query"].as_str().map(str::to_string),
            _ => v["current"]["value"].as_str().map(str::to_string),
        };
        out.insert(name, value.unwrap_or_default());
    }
    out.insert("__rate_interval".into(), "1m".into());
    out
}

fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = expr.to_string();
    // Longest names first, so `$primary` is not cut by a shorter `$p...`.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out.replace(&format!("${{{name}}}"), &vars[name]);
        out = out.replace(&format!("${name}"), &vars[name]);
    }
    out
}

/// A backend per version on 127.0.0.1 (same code as `shadowplane backend`), v3 with rho.
fn start_backends(rt: &tokio::runtime::Runtime) -> BTreeMap<&'static str, u16> {
    let mut ports = BTreeMap::new();
    for version in ["v1", "v2", "v3"] {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a backend");
        let addr = listener.local_addr().expect("backend address");
        let mut cfg = BackendConfig::new(version, addr);
        if version == "v3" {
            cfg.algorithm = Algorithm::PollardRho;
        }
        rt.spawn(async move {
            let _ = serve_on(listener, cfg, std::future::pending::<()>()).await;
        });
        ports.insert(version, addr.port());
    }
    ports
}

/// The calc ServiceEntry of `examples/calc/service-entry.yaml` with the backends' ports.
fn service_entry(ports: &BTreeMap<&str, u16>) -> String {
    let mut text = read("examples/calc/service-entry.yaml");
    for (version, default) in [("v1", "9001"), ("v2", "9002"), ("v3", "9003")] {
        let needle = format!("http: {default}");
        assert!(
            text.contains(&needle),
            "examples/calc/service-entry.yaml lost {needle}"
        );
        text = text.replace(&needle, &format!("http: {}", ports[version]));
    }
    text
}

/// The seed's traffic: desktop requests (v1, mirrored to v3), Mobile ones (v2), a 503 and a 404.
fn send_traffic(client: &HttpClient, port: u16) {
    for n in [
        "12",
        "360",
        "600851475143",
        "9999999967",
        "18446744073709551615",
    ] {
        let r = client.get(
            port,
            "calcbackendsvc",
            &format!("/factor/{n}"),
            &[("user-agent", DESKTOP)],
        );
        assert_eq!(r.status, 200, "{n}: {}", r.body_string());
        assert_eq!(r.header("x-backend-version"), Some("v1"));
    }
    for n in ["84", "97"] {
        let r = client.get(
            port,
            "calcbackendsvc",
            &format!("/factor/{n}"),
            &[("user-agent", MOBILE)],
        );
        assert_eq!(
            r.header("x-backend-version"),
            Some("v2"),
            "{}",
            r.body_string()
        );
    }
    for code in [503u16, 404] {
        let r = client.get(
            port,
            "calcbackendsvc",
            &format!("/status/{code}"),
            &[("user-agent", DESKTOP)],
        );
        assert_eq!(r.status, code);
    }
}

/// Wait (bounded) until `scrape()` shows the v3 cluster with as many requests as v1: every
/// desktop request was mirrored, and counted in the shadow cluster's statistics.
fn wait_mirrored(what: &str, scrape: impl Fn() -> Vec<Series>) -> Vec<Series> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let series = scrape();
        let v1 = value_of(&series, "envoy_cluster_upstream_rq_total", &cluster("v1"));
        let v3 = value_of(&series, "envoy_cluster_upstream_rq_total", &cluster("v3"));
        if v1 >= 7.0 && v3 >= v1 {
            return series;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: v1 has {v1} requests, the mirror v3 {v3} after 15s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A static Envoy bootstrap from `shadowplane translate --bootstrap`, with the compose
/// bootstrap's `stats_config`, the listener moved to `port` and the admin port left to the OS.
fn envoy_bootstrap(dir: &TempDir, se: &Path, port: u16) -> String {
    let out_file = dir.path().join("bootstrap.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_shadowplane"))
        .current_dir(repo_root())
        .args([
            "translate",
            "--bootstrap",
            "--bind-address",
            "127.0.0.1",
            "--config",
        ])
        .arg(se)
        .args(["--config", "examples/calc/mirror", "--output"])
        .arg(&out_file)
        .output()
        .expect("run shadowplane translate --bootstrap");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut boot: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(&out_file).expect("bootstrap"))
            .expect("bootstrap YAML");
    let listeners = boot["static_resources"]["listeners"]
        .as_sequence_mut()
        .expect("listeners");
    assert_eq!(listeners.len(), 1, "the calc seed has one listener (8080)");
    listeners[0]["address"]["socket_address"]["port_value"] = Yaml::from(port);
    boot["admin"]["address"]["socket_address"]["port_value"] = Yaml::from(0);
    let compose = yaml("deploy/compose/envoy.yaml");
    let stats = compose["stats_config"].clone();
    assert!(
        !stats.is_null(),
        "deploy/compose/envoy.yaml has no stats_config"
    );
    boot["stats_config"] = stats;
    serde_yaml::to_string(&boot).expect("bootstrap back to YAML")
}

fn seed_files(se_text: &str) -> Vec<SourceFile> {
    let mut files = vec![SourceFile {
        path: "test/service-entry.yaml".into(),
        text: se_text.to_string(),
    }];
    let dir = repo_root().join("examples/calc/mirror");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/calc/mirror")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    for p in paths {
        files.push(SourceFile {
            path: p.display().to_string(),
            text: std::fs::read_to_string(&p).expect("read seed file"),
        });
    }
    files
}

/// The forwarder on the same translation (listener on a free port), and its admin server.
fn start_forwarder(
    rt: &tokio::runtime::Runtime,
    files: &[SourceFile],
) -> (Arc<Forwarder>, u16, SocketAddr) {
    let options = Options {
        bind_address: "127.0.0.1".into(),
        ..Options::default()
    };
    let mut table = shadowplane::forwarder::local::compile_files(files, &options, "compose-test")
        .unwrap_or_else(|e| panic!("the forwarder cannot compile the calc seed: {e}"));
    for l in table.listeners.values_mut() {
        let mut moved = (**l).clone();
        moved.socket_addr.set_port(0);
        *l = Arc::new(moved);
    }
    let fwd = Arc::new(Forwarder::new(ForwarderOptions::default()));
    rt.block_on(fwd.apply(Arc::new(table)))
        .unwrap_or_else(|e| panic!("forwarder listeners: {e:?}"));
    let addrs = rt.block_on(fwd.listener_addrs());
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    let port = addrs.values().next().map(|a| a.port()).unwrap_or_default();
    let admin = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the forwarder admin");
    let admin_addr = admin.local_addr().expect("admin address");
    let f = fwd.clone();
    rt.spawn(async move {
        shadowplane::forwarder::admin::serve(
            f,
            admin,
            std::future::pending::<()>(),
            Duration::from_secs(1),
        )
        .await;
    });
    (fwd, port, admin_addr)
}

fn scrape(addr: SocketAddr, path: &str, job: &str) -> Vec<Series> {
    let (status, body) = simple_get(addr, path, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{job} {path}: {e}"));
    assert_eq!(status, 200, "{job} {path}: {body}");
    parse_scrape(&body, job)
}

#[test]
fn dashboard_queries_select_series_of_a_real_envoy_and_a_real_forwarder() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ports = start_backends(&rt);
    let dir = TempDir::new("compose-dashboard");
    let se_text = service_entry(&ports);
    let se = dir.write("service-entry.yaml", &se_text);
    let client = HttpClient::new();

    // Envoy, with the compose bootstrap's stats settings.
    let envoy_port = free_port();
    let mut envoy = EnvoyProcess::start(&envoy_bootstrap(&dir, &se, envoy_port));
    envoy.wait_for_listener(envoy_port);
    send_traffic(&client, envoy_port);
    let envoy_series = wait_mirrored("envoy", || {
        scrape(envoy.admin_address(), "/stats/prometheus", "envoy")
    });

    // The forwarder, on the same Istio YAML.
    let files = seed_files(&se_text);
    let (_fwd, fwd_port, fwd_admin) = start_forwarder(&rt, &files);
    send_traffic(&client, fwd_port);
    wait_mirrored("forwarder", || scrape(fwd_admin, "/metrics", "forwarder"));
    // The pair comparison is recorded once both answers are in.
    let deadline = Instant::now() + Duration::from_secs(15);
    let fwd_series = loop {
        let s = scrape(fwd_admin, "/metrics", "forwarder");
        let pairs: f64 = s
            .iter()
            .filter(|(n, _, _)| n == "shadowplane_mirror_pairs_total")
            .map(|(_, _, v)| v)
            .sum();
        if pairs >= 7.0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "forwarder: {pairs} mirror pairs after 15s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // The names Envoy exports for the calc clusters are the forwarder's: no cluster-name
    // fragment leaked into a metric name (Envoy's default tag regex would do that).
    for (name, labels, _) in &envoy_series {
        assert!(
            !name.contains("svc_cluster_local") && !name.contains("0_0_1_"),
            "envoy exported {name} {labels:?}: the compose stats_tags no longer apply"
        );
    }
    for version in ["v1", "v2", "v3"] {
        for (job, series) in [("envoy", &envoy_series), ("forwarder", &fwd_series)] {
            assert!(
                value_of(series, "envoy_cluster_upstream_rq_total", &cluster(version)) > 0.0,
                "{job}: no requests to {version}"
            );
        }
    }

    let sources = [("envoy", &envoy_series), ("forwarder", &fwd_series)];
    let d = dashboard();
    let mut vars = variable_defaults(&d);
    let mut checked = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let raw = t["expr"].as_str().expect("expr");
            let mut matched_in: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
            for (job, series) in sources {
                vars.insert("job".into(), job.into());
                let expr = substitute(raw, &vars);
                let (sels, replaces) = selectors(&expr);
                assert!(!sels.is_empty(), "no series selector in {expr}");
                for sel in &sels {
                    let hit = series.iter().any(|(name, labels, _)| {
                        name == &sel.metric
                            && sel
                                .matchers
                                .iter()
                                .all(|m| m.matches(labels.get(&m.label).map(String::as_str)))
                    });
                    let entry = matched_in.entry(sel.metric.clone()).or_default();
                    if hit {
                        entry.insert(job);
                    }
                    checked.insert(sel.metric.clone());
                }
                // label_replace reads a label the series have and extracts the version.
                for [dst, replacement, src, re] in &replaces {
                    assert_eq!((dst.as_str(), replacement.as_str()), ("version", "$1"));
                    assert!(
                        src == "envoy_cluster_name" || src == "shadow_cluster",
                        "{src}"
                    );
                    let re =
                        regex::Regex::new(&format!("^(?:{re})$")).expect("label_replace regex");
                    for v in ["v1", "v2", "v3"] {
                        let name = cluster(v);
                        let caps = re
                            .captures(&name)
                            .unwrap_or_else(|| panic!("{re} on {name}"));
                        assert_eq!(&caps[1], v);
                    }
                }
            }
            for (metric, jobs) in matched_in {
                let title = p["title"].as_str().unwrap_or_default();
                if metric.starts_with("envoy_") {
                    assert_eq!(
                        jobs,
                        BTreeSet::from(["envoy", "forwarder"]),
                        "{title}: {metric} with the query's label matchers (variables at their \
                         defaults) must select series of both Envoy and the forwarder:\n{raw}"
                    );
                } else {
                    assert!(
                        jobs.contains("forwarder"),
                        "{title}: {metric} selects nothing on the forwarder's /metrics:\n{raw}"
                    );
                }
            }
        }
    }
    // The queries cover the per-version statistics and the forwarder's pair comparison.
    for metric in [
        "envoy_cluster_upstream_rq_total",
        "envoy_cluster_upstream_rq_xx",
        "envoy_cluster_upstream_rq_time_bucket",
        "shadowplane_mirror_pairs_total",
        "shadowplane_mirror_status_mismatch_total",
    ] {
        assert!(
            checked.contains(metric),
            "the dashboard never queries {metric}: {checked:?}"
        );
    }
    drop(envoy);
}
