//! `shadowplane crds`: the real binary's output, parsed as Kubernetes' typed
//! `CustomResourceDefinition`s, checked node by node against the API server's structural-schema
//! rules, and used as a JSON Schema (with a real validator) on every Istio document of
//! `testdata/translate/` and `examples/` (the seeds' YAML): the schema must accept exactly what
//! the translator's serde types accept, so it is neither looser nor stricter than the parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::{json, Value};
use shadowplane_translator::istio;

const KINDS: [&str; 5] = [
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "WorkloadEntry",
    "Gateway",
];

fn run_crds(extra: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowplane"))
        .arg("crds")
        .args(extra)
        .output()
        .expect("run shadowplane crds");
    assert!(
        out.status.success(),
        "shadowplane crds failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The output of `shadowplane crds`, once per test binary.
fn crds_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| String::from_utf8(run_crds(&[]).stdout).expect("UTF-8 output"))
}

/// Each YAML document of the output as plain JSON (every keyword, typed or not).
fn documents() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(crds_text())
        .map(|doc| Value::deserialize(doc).expect("each document is YAML"))
        .collect()
}

/// kind → the `spec` schema of its first version, as written.
fn spec_schemas() -> BTreeMap<String, Value> {
    documents()
        .into_iter()
        .map(|doc| {
            let kind = doc["spec"]["names"]["kind"]
                .as_str()
                .expect("names.kind")
                .to_string();
            let spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
                ["spec"]
                .clone();
            assert!(spec.is_object(), "{kind}: no spec schema");
            (kind, spec)
        })
        .collect()
}

/// Numbers compared by value: k8s-openapi holds `minimum`/`maximum` as f64.
fn numbers_as_f64(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().expect("finite number")),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn output_is_five_typed_crds_with_istio_names_and_versions() {
    let docs = documents();
    assert_eq!(docs.len(), 5, "one CRD per kind");
    let mut seen = Vec::new();
    for doc in &docs {
        let crd: CustomResourceDefinition =
            serde_json::from_value(doc.clone()).expect("a CustomResourceDefinition");
        // Nothing the typed struct does not know (it would be dropped without a word).
        let back = serde_json::to_value(&crd).expect("serialize");
        assert_eq!(
            numbers_as_f64(&back),
            numbers_as_f64(doc),
            "{:?}: the YAML has fields the typed CRD drops",
            crd.metadata.name
        );

        let spec = &crd.spec;
        let names = &spec.names;
        assert_eq!(spec.group, "networking.istio.io");
        assert_eq!(spec.scope, "Namespaced");
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{}.networking.istio.io", names.plural).as_str())
        );
        assert_eq!(
            names.singular.as_deref(),
            Some(names.kind.to_lowercase().as_str())
        );
        assert_eq!(
            names.list_kind.as_deref(),
            Some(format!("{}List", names.kind).as_str())
        );
        assert_eq!(
            names.categories.as_deref(),
            Some(&["istio-io".to_string(), "networking-istio-io".to_string()][..])
        );
        let (plural, short) = match names.kind.as_str() {
            "VirtualService" => ("virtualservices", "vs"),
            "DestinationRule" => ("destinationrules", "dr"),
            "ServiceEntry" => ("serviceentries", "se"),
            "WorkloadEntry" => ("workloadentries", "we"),
            "Gateway" => ("gateways", "gw"),
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(names.plural, plural);
        assert_eq!(names.short_names.as_deref(), Some(&[short.to_string()][..]));

        let versions: Vec<(&str, bool, bool)> = spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        assert_eq!(
            versions,
            [
                ("v1", true, true),
                ("v1beta1", true, false),
                ("v1alpha3", true, false)
            ]
        );
        let first = &spec.versions[0];
        for v in &spec.versions {
            assert_eq!(v.schema, first.schema, "{}: versions differ", names.kind);
            assert_eq!(
                v.additional_printer_columns,
                first.additional_printer_columns
            );
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "status subresource, as Istio's CRDs have"
            );
        }
        let columns: Vec<(&str, &str, &str)> = first
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.json_path.as_str(), c.type_.as_str()))
            .collect();
        let age = ("Age", ".metadata.creationTimestamp", "date");
        let expected: Vec<(&str, &str, &str)> = match names.kind.as_str() {
            "VirtualService" => vec![
                ("Gateways", ".spec.gateways", "string"),
                ("Hosts", ".spec.hosts", "string"),
                age,
            ],
            "DestinationRule" => vec![("Host", ".spec.host", "string"), age],
            "ServiceEntry" => vec![
                ("Hosts", ".spec.hosts", "string"),
                ("Location", ".spec.location", "string"),
                ("Resolution", ".spec.resolution", "string"),
                age,
            ],
            "WorkloadEntry" => vec![age, ("Address", ".spec.address", "string")],
            _ => vec![age],
        };
        assert_eq!(columns, expected, "{} printer columns", names.kind);
        seen.push(names.kind.clone());
    }
    assert_eq!(seen, KINDS);
}

#[test]
fn output_is_the_same_bytes_every_run_and_with_output_file() {
    let again = String::from_utf8(run_crds(&[]).stdout).expect("UTF-8");
    assert_eq!(again, crds_text(), "two runs differ");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crds.yaml");
    let out = run_crds(&["--output", path.to_str().expect("UTF-8 path")]);
    assert!(out.stdout.is_empty(), "--output writes nothing on stdout");
    assert_eq!(
        std::fs::read_to_string(&path).expect("written"),
        crds_text()
    );
}

/// The API server's structural-schema rules, applied to every node.
fn check_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    for forbidden in [
        "$ref",
        "$schema",
        "definitions",
        "$defs",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
    ] {
        if map.contains_key(forbidden) {
            problems.push(format!("{path}: has {forbidden}"));
        }
    }
    // A CRD default would be written into every stored object by the API server.
    if map.contains_key("default") {
        problems.push(format!("{path}: has a default"));
    }
    let preserve = map.get("x-kubernetes-preserve-unknown-fields");
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&json!(true));
    match map.get("type") {
        Some(Value::String(t)) => {
            if !["object", "array", "string", "integer", "number", "boolean"].contains(&t.as_str())
            {
                problems.push(format!("{path}: type {t:?}"));
            }
            if t == "array" && !map.contains_key("items") {
                problems.push(format!("{path}: array without items"));
            }
        }
        Some(other) => problems.push(format!("{path}: type {other} is not one string")),
        None if preserve == Some(&json!(true)) || int_or_string => {}
        None => problems.push(format!("{path}: no type")),
    }
    if preserve.is_some() && preserve != Some(&json!(true)) {
        problems.push(format!(
            "{path}: x-kubernetes-preserve-unknown-fields must be true"
        ));
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(nullable) = map.get("nullable") {
        if !nullable.is_boolean() {
            problems.push(format!("{path}: nullable {nullable}"));
        }
    }
    if let Some(format) = map.get("format").and_then(Value::as_str) {
        if !["int32", "int64", "double", "float"].contains(&format) {
            problems.push(format!("{path}: format {format:?} unknown to Kubernetes"));
        }
    }
    if let Some(required) = map.get("required").and_then(Value::as_array) {
        for name in required {
            let name = name.as_str().unwrap_or_default();
            if map.get("properties").and_then(|p| p.get(name)).is_none() {
                problems.push(format!("{path}: required {name:?} is not a property"));
            }
        }
    }
    match map.get("additionalProperties") {
        None => {}
        Some(child @ Value::Object(_)) => {
            check_structural(child, &format!("{path}/additionalProperties"), problems)
        }
        Some(other) => problems.push(format!("{path}: additionalProperties {other}")),
    }
    if let Some(items) = map.get("items") {
        check_structural(items, &format!("{path}/items"), problems);
    }
    if let Some(properties) = map.get("properties") {
        match properties.as_object() {
            Some(properties) => {
                for (name, child) in properties {
                    check_structural(child, &format!("{path}/{name}"), problems);
                }
            }
            None => problems.push(format!("{path}: properties is not a map")),
        }
    }
}

#[test]
fn every_schema_node_is_structural() {
    let mut nodes = 0;
    for doc in documents() {
        let kind = doc["spec"]["names"]["kind"]
            .as_str()
            .expect("kind")
            .to_string();
        for version in doc["spec"]["versions"].as_array().expect("versions") {
            let root = &version["schema"]["openAPIV3Schema"];
            let mut problems = Vec::new();
            check_structural(root, &kind, &mut problems);
            assert!(
                problems.is_empty(),
                "not structural:\n{}",
                problems.join("\n")
            );
            assert_eq!(root["type"], "object");
            assert_eq!(
                root["properties"]["status"],
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
            );
            nodes += 1;
        }
    }
    assert_eq!(nodes, 15, "five kinds, three versions");
    // The walk saw real schemas: an Unsupported field takes anything, typed fields are typed.
    let schemas = spec_schemas();
    let vs = &schemas["VirtualService"];
    assert_eq!(
        vs["properties"]["tcp"],
        json!({"x-kubernetes-preserve-unknown-fields": true})
    );
    assert_eq!(vs["properties"]["hosts"]["items"]["type"], "string");
    let port =
        &vs["properties"]["http"]["items"]["properties"]["match"]["items"]["properties"]["port"];
    assert_eq!(port["type"], "integer");
    assert_eq!(port["maximum"], json!(4294967295u64));
    assert_eq!(port["nullable"], true);
}

/// The CRD schema as a draft-4 JSON Schema that behaves as the API server does with
/// `kubectl apply`'s default strict field validation: an object with `properties` takes no
/// other field (the server reports it as unknown instead of pruning it), `nullable` allows
/// null, `x-kubernetes-preserve-unknown-fields` without a type takes anything.
fn as_strict_json_schema(node: &Value) -> Value {
    let Some(map) = node.as_object() else {
        return node.clone();
    };
    let mut out = serde_json::Map::new();
    for (key, value) in map {
        let value = match key.as_str() {
            "properties" => Value::Object(
                value
                    .as_object()
                    .expect("properties map")
                    .iter()
                    .map(|(k, v)| (k.clone(), as_strict_json_schema(v)))
                    .collect(),
            ),
            "items" | "additionalProperties" => as_strict_json_schema(value),
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    if out.contains_key("properties")
        && out.get("x-kubernetes-preserve-unknown-fields") != Some(&json!(true))
    {
        out.insert("additionalProperties".into(), json!(false));
    }
    if out.get("nullable") == Some(&json!(true)) {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
        }
    }
    if out.remove("x-kubernetes-int-or-string") == Some(json!(true)) {
        out.insert("type".into(), json!(["integer", "string"]));
    }
    Value::Object(out)
}

struct Validators(BTreeMap<String, jsonschema::Validator>);

impl Validators {
    fn new() -> Validators {
        Validators(
            spec_schemas()
                .into_iter()
                .map(|(kind, schema)| {
                    let validator = jsonschema::draft4::new(&as_strict_json_schema(&schema))
                        .unwrap_or_else(|e| panic!("{kind}: not a valid JSON Schema: {e}"));
                    (kind, validator)
                })
                .collect(),
        )
    }

    /// `Err` with the validator's messages when `spec` does not validate.
    fn check(&self, kind: &str, spec: &Value) -> Result<(), String> {
        let errors: Vec<String> = self.0[kind]
            .iter_errors(spec)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// What the translator's serde types say about a spec: the oracle the schema must agree with.
fn serde_accepts(kind: &str, spec: &serde_yaml::Value) -> Result<(), String> {
    fn parse<T: serde::de::DeserializeOwned>(spec: &serde_yaml::Value) -> Result<(), String> {
        serde_yaml::from_value::<T>(spec.clone())
            .map(drop)
            .map_err(|e| e.to_string())
    }
    match kind {
        "VirtualService" => parse::<istio::VirtualServiceSpec>(spec),
        "DestinationRule" => parse::<istio::DestinationRuleSpec>(spec),
        "ServiceEntry" => parse::<istio::ServiceEntrySpec>(spec),
        "WorkloadEntry" => parse::<istio::WorkloadEntrySpec>(spec),
        "Gateway" => parse::<istio::GatewaySpec>(spec),
        other => panic!("unexpected kind {other}"),
    }
}

/// One Istio document of a kind the CRDs define.
struct Doc {
    place: String,
    kind: String,
    spec: serde_yaml::Value,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(path);
        }
    }
}

/// The Istio documents of one file; `None` when the file is not YAML at all.
fn istio_documents(path: &Path) -> Option<Vec<Doc>> {
    let text = std::fs::read_to_string(path).expect("read input");
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).ok()?;
        let api_version = value.get("apiVersion").and_then(|v| v.as_str());
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let istio = api_version.is_some_and(|v| {
            [
                "networking.istio.io/v1",
                "networking.istio.io/v1beta1",
                "networking.istio.io/v1alpha3",
            ]
            .contains(&v)
        });
        if !istio || !KINDS.contains(&kind) {
            continue;
        }
        docs.push(Doc {
            place: format!("{}#{i}", path.display()),
            kind: kind.to_string(),
            spec: value
                .get("spec")
                .cloned()
                .unwrap_or(serde_yaml::Value::Mapping(Default::default())),
        });
    }
    Some(docs)
}

fn to_json(doc: &Doc) -> Value {
    serde_json::to_value(&doc.spec).unwrap_or_else(|e| {
        panic!(
            "{}: spec is not JSON (kubectl would refuse it): {e}",
            doc.place
        )
    })
}

#[test]
fn schema_accepts_exactly_what_the_translator_parses() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let validators = Validators::new();
    let mut files = Vec::new();
    yaml_files(&root.join("testdata/translate"), &mut files);
    yaml_files(&root.join("examples"), &mut files);
    let mut not_yaml = Vec::new();
    let (mut accepted, mut rejected) = (0, 0);
    let mut disagreements = Vec::new();
    // Cases whose diagnostics have no error at all: every document must validate.
    let mut clean_case_docs = 0;
    for path in &files {
        let Some(docs) = istio_documents(path) else {
            not_yaml.push(
                path.strip_prefix(&root)
                    .expect("under root")
                    .display()
                    .to_string(),
            );
            continue;
        };
        let case_has_errors = path
            .ancestors()
            .find(|dir| dir.join("diagnostics.txt").is_file() || dir.join("input.yaml").is_file())
            .map(|dir| {
                std::fs::read_to_string(dir.join("diagnostics.txt"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.starts_with("error"))
            })
            .unwrap_or(false);
        for doc in docs {
            let by_serde = serde_accepts(&doc.kind, &doc.spec);
            let by_schema = validators.check(&doc.kind, &to_json(&doc));
            match (&by_serde, &by_schema) {
                (Ok(()), Ok(())) => accepted += 1,
                (Err(_), Err(_)) => rejected += 1,
                _ => disagreements.push(format!(
                    "{} {}: serde {by_serde:?}, schema {by_schema:?}",
                    doc.place, doc.kind
                )),
            }
            if !case_has_errors {
                clean_case_docs += 1;
                assert!(by_schema.is_ok(), "{}: rejected: {by_schema:?}", doc.place);
            }
        }
    }
    eprintln!(
        "{} files: {accepted} documents accepted, {rejected} rejected by both the schema and the \
         parser, {clean_case_docs} from error-free cases",
        files.len()
    );
    assert!(
        disagreements.is_empty(),
        "the CRD schema and the translator disagree:\n{}",
        disagreements.join("\n")
    );
    assert_eq!(
        not_yaml,
        ["testdata/translate/invalid-yaml-syntax/input.yaml"]
    );
    assert!(accepted > 150, "only {accepted} documents validated");
    assert!(
        clean_case_docs > 100,
        "only {clean_case_docs} documents of error-free cases"
    );
    // invalid-unknown-field-subest and invalid-wrong-value-type at least.
    assert!(rejected >= 2, "only {rejected} documents rejected");
}

#[test]
fn seeds_and_type_errors_from_the_testdata() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let validators = Validators::new();
    // The seed walkthroughs' YAML (examples/ holds them re-indented, otherwise verbatim).
    let mut files = Vec::new();
    yaml_files(&root.join("examples"), &mut files);
    let mut seeds = 0;
    for path in &files {
        for doc in istio_documents(path).expect("examples are YAML") {
            validators
                .check(&doc.kind, &to_json(&doc))
                .unwrap_or_else(|e| panic!("{}: {e}", doc.place));
            seeds += 1;
        }
    }
    assert!(seeds >= 8, "only {seeds} seed documents");

    let rejected = |case: &str| -> Vec<String> {
        istio_documents(
            &root
                .join("testdata/translate")
                .join(case)
                .join("input.yaml"),
        )
        .expect("YAML")
        .iter()
        .filter_map(|doc| validators.check(&doc.kind, &to_json(doc)).err())
        .collect()
    };
    let subest = rejected("invalid-unknown-field-subest");
    assert_eq!(subest.len(), 1, "{subest:?}");
    assert!(subest[0].contains("subest"), "{subest:?}");
    let wrong_type = rejected("invalid-wrong-value-type");
    assert_eq!(wrong_type.len(), 1, "{wrong_type:?}");
    assert!(wrong_type[0].contains("eighty"), "{wrong_type:?}");
    assert!(wrong_type[0].contains("fifty"), "{wrong_type:?}");
}

#[test]
fn hand_written_specs_are_accepted_or_rejected_as_the_parser_does() {
    let validators = Validators::new();
    let cases: [(&str, Value, bool); 16] = [
        (
            "VirtualService",
            json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}}]}]}),
            true,
        ),
        // A valid Istio field shadowplane does not implement: any value.
        (
            "VirtualService",
            json!({"hosts": ["a"], "tcp": [{"route": []}], "tls": "anything"}),
            true,
        ),
        (
            "VirtualService",
            json!({"hosts": ["a"], "http": [{"timeout": null}]}),
            true,
        ),
        ("VirtualService", json!({"hostz": ["a"]}), false),
        ("VirtualService", json!({"hosts": "a"}), false),
        (
            "VirtualService",
            json!({"hosts": ["a"], "http": [{"match": [{"port": -1}]}]}),
            false,
        ),
        (
            "VirtualService",
            json!({"hosts": ["a"], "http": [{"match": [{"port": 4294967296u64}]}]}),
            false,
        ),
        (
            "VirtualService",
            json!({"hosts": ["a"], "http": [{"mirrorPercentage": {"value": "50"}}]}),
            false,
        ),
        (
            "VirtualService",
            json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a", "port": {}}}]}]}),
            false,
        ),
        (
            "DestinationRule",
            json!({"host": "a", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
            true,
        ),
        (
            "DestinationRule",
            json!({"host": "a", "subsets": [{"name": "v1", "labels": {"version": 1}}]}),
            false,
        ),
        (
            "DestinationRule",
            json!({"host": "a", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM", "warmup": {"duration": "1s"}}}}),
            true,
        ),
        (
            "ServiceEntry",
            json!({"hosts": ["a"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "STATIC", "endpoints": [{"address": "10.0.0.1", "ports": {"http": 8080}}]}),
            true,
        ),
        (
            "ServiceEntry",
            json!({"hosts": ["a"], "endpoints": [{"address": "10.0.0.1", "ports": {"http": "8080"}}]}),
            false,
        ),
        (
            "WorkloadEntry",
            json!({"address": "10.0.0.1", "weight": 3, "labels": {"version": "v2"}}),
            true,
        ),
        (
            "Gateway",
            json!({"servers": [{"port": {"number": 80, "protocol": "HTTP", "name": "http"}, "hosts": ["*"], "tlz": {}}]}),
            false,
        ),
    ];
    for (kind, spec, valid) in cases {
        let by_schema = validators.check(kind, &spec);
        assert_eq!(
            by_schema.is_ok(),
            valid,
            "{kind} {spec}: schema says {by_schema:?}"
        );
        let yaml: serde_yaml::Value = serde_yaml::to_value(&spec).expect("JSON is YAML");
        let by_serde = serde_accepts(kind, &yaml);
        assert_eq!(
            by_serde.is_ok(),
            valid,
            "{kind} {spec}: the parser says {by_serde:?}"
        );
    }
}
