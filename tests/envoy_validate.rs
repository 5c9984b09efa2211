//! A real Envoy (`envoy --mode validate`) accepts every golden translation.
//!
//! Each case folder of `testdata/translate/` with expected resources is wrapped into one static
//! bootstrap: the golden clusters (EDS clusters turned STATIC with their golden
//! ClusterLoadAssignment inline) and the golden listeners with each HTTP connection manager's
//! `rds` replaced by the golden route configuration inline, so that Envoy parses and checks
//! the listeners, filters, route configurations, clusters and endpoints alike. Route configs are
//! inlined with `validate_clusters: false` (RDS's default) because a route to an undefined
//! subset is served on purpose (Envoy answers 503 NC at run time, as with istiod).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

/// Envoys run at a time (the machine has 2 cores).
const PARALLEL: usize = 2;

const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn cases_dir() -> PathBuf {
    common::repo_root().join("testdata").join("translate")
}

/// The golden resources of one case (each list empty when its file is absent).
#[derive(Debug, Default)]
struct Golden {
    listeners: Vec<Value>,
    routes: Vec<Value>,
    clusters: Vec<Value>,
    endpoints: Vec<Value>,
}

impl Golden {
    fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.routes.is_empty()
            && self.clusters.is_empty()
            && self.endpoints.is_empty()
    }
}

/// A YAML list of resources (the golden format), a `{resources: [...]}` mapping, or nothing.
fn load_list(path: &Path) -> Result<Vec<Value>, String> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let value: Value =
        serde_yaml::from_str(&text).map_err(|e| format!("parse {}: {e}", path.display()))?;
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => Ok(items),
        Value::Object(mut map) => match map.remove("resources") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(format!(
                "{}: expected a YAML list of resources",
                path.display()
            )),
        },
        _ => Err(format!(
            "{}: expected a YAML list of resources",
            path.display()
        )),
    }
}

fn load_golden(case: &Path) -> Result<Golden, String> {
    Ok(Golden {
        listeners: load_list(&case.join("listeners.yaml"))?,
        routes: load_list(&case.join("routes.yaml"))?,
        clusters: load_list(&case.join("clusters.yaml"))?,
        endpoints: load_list(&case.join("endpoints.yaml"))?,
    })
}

fn name_of(resource: &Value, field: &str) -> String {
    resource
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Every socket address of a ClusterLoadAssignment.
fn cla_addresses(cla: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for locality in cla
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for lb in locality
            .get("lb_endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(address) = lb
                .pointer("/endpoint/address/socket_address/address")
                .and_then(Value::as_str)
            {
                out.push(address.to_string());
            }
        }
    }
    out
}

/// Strip a top-level `@type` (a resource printed from an `Any`); static_resources hold typed
/// messages.
fn untyped(mut resource: Value) -> Value {
    if let Value::Object(map) = &mut resource {
        map.remove("@type");
    }
    resource
}

/// Wrap a case's golden resources into a static bootstrap (see the module docs).
/// Errors are inconsistencies between the golden files themselves.
fn bootstrap_for(golden: &Golden) -> Result<Value, String> {
    let mut problems = Vec::new();

    // --- clusters: EDS → STATIC with the golden CLA inline ---
    let mut assignments: BTreeMap<String, Value> = BTreeMap::new();
    for cla in &golden.endpoints {
        let cla = untyped(cla.clone());
        let name = name_of(&cla, "cluster_name");
        if assignments.insert(name.clone(), cla).is_some() {
            problems.push(format!(
                "endpoints.yaml has two ClusterLoadAssignments for {name:?}"
            ));
        }
    }
    let mut used_assignments = BTreeSet::new();
    let mut clusters = Vec::new();
    for cluster in &golden.clusters {
        let mut cluster = untyped(cluster.clone());
        let name = name_of(&cluster, "name");
        let is_eds = cluster.get("type").and_then(Value::as_str) == Some("EDS")
            || cluster.get("eds_cluster_config").is_some();
        if is_eds {
            let service_name = cluster
                .pointer("/eds_cluster_config/service_name")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| name.clone());
            let cla = match assignments.get(&service_name) {
                Some(cla) => {
                    used_assignments.insert(service_name.clone());
                    cla.clone()
                }
                None => json!({ "cluster_name": service_name }),
            };
            let all_ips = cla_addresses(&cla)
                .iter()
                .all(|a| a.parse::<IpAddr>().is_ok());
            let map = cluster
                .as_object_mut()
                .ok_or_else(|| format!("cluster {name:?} is not a mapping"))?;
            map.remove("eds_cluster_config");
            map.insert(
                "type".into(),
                Value::from(if all_ips { "STATIC" } else { "STRICT_DNS" }),
            );
            map.insert("load_assignment".into(), cla);
        }
        clusters.push(cluster);
    }
    for name in assignments.keys() {
        if !used_assignments.contains(name) {
            problems.push(format!(
                "endpoints.yaml has a ClusterLoadAssignment for {name:?} but clusters.yaml has \
                 no EDS cluster of that name (Envoy would never ask for it)"
            ));
        }
    }

    // --- listeners: rds → route_config inline ---
    let mut routes: BTreeMap<String, Value> = BTreeMap::new();
    for route in &golden.routes {
        let route = untyped(route.clone());
        let name = name_of(&route, "name");
        if routes.insert(name.clone(), route).is_some() {
            problems.push(format!(
                "routes.yaml has two route configurations named {name:?}"
            ));
        }
    }
    let mut used_routes = BTreeSet::new();
    let mut listeners = Vec::new();
    for listener in &golden.listeners {
        let mut listener = untyped(listener.clone());
        let listener_name = name_of(&listener, "name");
        let Some(map) = listener.as_object_mut() else {
            return Err(format!("listener {listener_name:?} is not a mapping"));
        };
        let mut chains: Vec<&mut Value> = Vec::new();
        for (key, value) in map.iter_mut() {
            match (key.as_str(), value) {
                ("filter_chains", Value::Array(items)) => chains.extend(items.iter_mut()),
                ("default_filter_chain", chain) => chains.push(chain),
                _ => {}
            }
        }
        for chain in chains {
            for filter in chain
                .get_mut("filters")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let is_hcm = filter.get("name").and_then(Value::as_str) == Some(HCM_NAME)
                    || filter
                        .pointer("/typed_config/@type")
                        .and_then(Value::as_str)
                        == Some(HCM_TYPE);
                if !is_hcm {
                    continue;
                }
                let Some(hcm) = filter
                    .get_mut("typed_config")
                    .and_then(Value::as_object_mut)
                else {
                    continue;
                };
                let Some(rds) = hcm.remove("rds") else {
                    continue;
                };
                let route_name = rds
                    .get("route_config_name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                match routes.get(&route_name) {
                    Some(route) => {
                        used_routes.insert(route_name.clone());
                        hcm.insert("route_config".into(), inline_route(route.clone()));
                    }
                    None => problems.push(format!(
                        "listener {listener_name:?} uses RDS {route_name:?} but routes.yaml has \
                         no route configuration of that name (the listener would never warm)"
                    )),
                }
            }
        }
        listeners.push(listener);
    }
    // Route configurations no listener uses: give each a listener of its own so Envoy checks
    // them too (validate mode binds no socket; the ports only need to be distinct).
    let mut used_ports: BTreeSet<u64> = listeners
        .iter()
        .filter_map(|l| {
            l.pointer("/address/socket_address/port_value")
                .and_then(Value::as_u64)
        })
        .collect();
    let mut next_port = 60000u64;
    for (name, route) in &routes {
        if used_routes.contains(name) {
            continue;
        }
        while used_ports.contains(&next_port) {
            next_port += 1;
        }
        used_ports.insert(next_port);
        listeners.push(json!({
            "name": format!("validate_unreferenced_route_{name}"),
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": next_port}},
            "filter_chains": [{"filters": [{
                "name": HCM_NAME,
                "typed_config": {
                    "@type": HCM_TYPE,
                    "stat_prefix": "validate",
                    "route_config": inline_route(route.clone()),
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                        }
                    }]
                }
            }]}]
        }));
    }

    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    Ok(json!({
        "node": {"id": "validate", "cluster": "validate"},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
        }
    }))
}

/// A route configuration to inline into an HCM: `validate_clusters` as RDS would default it.
fn inline_route(mut route: Value) -> Value {
    if let Value::Object(map) = &mut route {
        map.entry("validate_clusters").or_insert(Value::Bool(false));
    }
    route
}

/// Case folders that hold at least one expected resource file, sorted.
fn golden_cases() -> Vec<PathBuf> {
    let dir = cases_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_dir())
        .filter(|path| {
            [
                "listeners.yaml",
                "routes.yaml",
                "clusters.yaml",
                "endpoints.yaml",
            ]
            .iter()
            .any(|f| path.join(f).is_file())
        })
        .collect();
    cases.sort();
    cases
}

/// Envoy's rejection without the text-proto dump of the whole config it prints: the lines that
/// say what is wrong (each cut to a readable length), or the last lines if none is recognised.
fn summarize(output: &str) -> String {
    let cut = |line: &str| {
        let mut line = line.trim().to_string();
        if line.len() > 600 {
            let mut end = 600;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str(" ...");
        }
        line
    };
    let key: Vec<String> = output
        .lines()
        .filter(|l| {
            l.starts_with("envoy --mode validate failed")
                || l.contains("[critical]")
                || l.contains("[error]")
                || l.starts_with(": ")
                || l.contains("validation failed")
                || l.contains("Unable to parse")
        })
        .map(cut)
        .collect();
    if key.len() > 1 {
        key.join("\n")
    } else {
        let lines: Vec<&str> = output.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("{}\n{tail}", key.join("\n"))
    }
}

/// Validate one case: `Ok(false)` when it holds no resources at all. On failure Envoy's full
/// output and the bootstrap are kept under the target directory for a closer look.
fn validate_case(case: &Path) -> Result<bool, String> {
    let golden = load_golden(case)?;
    if golden.is_empty() {
        return Ok(false);
    }
    let bootstrap = bootstrap_for(&golden)?;
    let text = serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())?;
    if let Err(output) = common::validate_config(&text) {
        let name = case.file_name().unwrap_or_default().to_string_lossy();
        let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("envoy-validate");
        let kept = std::fs::create_dir_all(&keep)
            .and_then(|_| std::fs::write(keep.join(format!("{name}.bootstrap.json")), &text))
            .and_then(|_| std::fs::write(keep.join(format!("{name}.envoy.log")), &output));
        let where_ = match kept {
            Ok(()) => format!(
                "(full output and bootstrap: {}/{name}.{{envoy.log,bootstrap.json}})",
                keep.display()
            ),
            Err(e) => format!("(could not keep the full output: {e})"),
        };
        return Err(format!("{}\n{where_}", summarize(&output)));
    }
    Ok(true)
}

#[test]
fn envoy_accepts_every_golden_translation() {
    let cases = golden_cases();
    assert!(
        !cases.is_empty(),
        "no golden case with expected resources under {}: the goldens are missing \
         (UPDATE_GOLDEN=1 cargo test -p shadowplane-translator --test golden writes them)",
        cases_dir().display()
    );
    let queue = Mutex::new(cases.clone());
    let results: Mutex<Vec<(String, Result<bool, String>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(case) = next else { break };
                let name = case
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let result = validate_case(&case);
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((name, result));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let validated = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(true)))
        .count();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("--- {name} ---\n{e}")))
        .collect();
    eprintln!(
        "envoy --mode validate: {validated} of {} golden cases validated, {} failed",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "envoy rejected {} of {} golden cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        validated > 0,
        "no golden case held any resource to validate"
    );
}

// --- the wrapping itself, so that a broken wrapper cannot pass silently ---

fn hand_golden(route_regex: &str) -> Golden {
    Golden {
        listeners: vec![json!({
            "name": "0.0.0.0_8080",
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8080}},
            "filter_chains": [{"filters": [{
                "name": HCM_NAME,
                "typed_config": {
                    "@type": HCM_TYPE,
                    "stat_prefix": "outbound_0.0.0.0_8080",
                    "rds": {"route_config_name": "8080", "config_source": {"ads": {}, "resource_api_version": "V3"}},
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                    }]
                }
            }]}]
        })],
        routes: vec![json!({
            "name": "8080",
            "virtual_hosts": [{
                "name": "svc:8080",
                "domains": ["svc"],
                "routes": [{
                    "match": {"safe_regex": {"regex": route_regex}},
                    "route": {
                        "cluster": "outbound|8080|v1|svc",
                        "request_mirror_policies": [{"cluster": "outbound|8080|undefined|svc"}]
                    }
                }]
            }]
        })],
        clusters: vec![json!({
            "name": "outbound|8080|v1|svc",
            "type": "EDS",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}
        })],
        endpoints: vec![json!({
            "cluster_name": "outbound|8080|v1|svc",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9001}}}}]}]
        })],
    }
}

#[test]
fn wrapped_hand_written_resources_validate() {
    let bootstrap = bootstrap_for(&hand_golden("/a.*")).expect("consistent hand-written golden");
    let hcm = bootstrap
        .pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
        .expect("the listener keeps its HCM");
    assert!(hcm.get("rds").is_none(), "rds is replaced: {hcm}");
    assert_eq!(hcm.pointer("/route_config/name"), Some(&json!("8080")));
    let cluster = bootstrap
        .pointer("/static_resources/clusters/0")
        .expect("the cluster is kept");
    assert_eq!(cluster.get("type"), Some(&json!("STATIC")));
    assert!(cluster.get("eds_cluster_config").is_none());
    assert_eq!(
        cluster.pointer("/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/port_value"),
        Some(&json!(9001))
    );
    common::validate_config(&bootstrap.to_string()).expect("envoy accepts the wrapped config");
}

#[test]
fn envoy_checks_the_inlined_route_configs() {
    // RE2 rejects look-ahead: Envoy must refuse the config, proving the route config is parsed.
    let bootstrap = bootstrap_for(&hand_golden("/(?=a)")).expect("consistent hand-written golden");
    let err = common::validate_config(&bootstrap.to_string())
        .expect_err("envoy must reject an RE2-invalid regex inside the inlined route config");
    assert!(err.contains("(?="), "{err}");
}

#[test]
fn inconsistent_goldens_are_reported() {
    let mut golden = hand_golden("/a");
    golden.routes.clear();
    golden.endpoints[0]["cluster_name"] = json!("outbound|8080|v9|svc");
    let err = bootstrap_for(&golden).expect_err("dangling RDS and orphan CLA are reported");
    assert!(err.contains("uses RDS \"8080\""), "{err}");
    assert!(err.contains("outbound|8080|v9|svc"), "{err}");
}

#[test]
fn unreferenced_route_configs_are_validated_too() {
    let mut golden = hand_golden("/a");
    golden.listeners.clear();
    let bootstrap = bootstrap_for(&golden).expect("consistent");
    let listeners = bootstrap
        .pointer("/static_resources/listeners")
        .and_then(Value::as_array)
        .expect("listeners");
    assert_eq!(
        listeners.len(),
        1,
        "a synthetic listener carries the route config"
    );
    let mut bad = hand_golden("/(?=a)");
    bad.listeners.clear();
    let bootstrap = bootstrap_for(&bad).expect("consistent");
    assert!(common::validate_config(&bootstrap.to_string()).is_err());
}
