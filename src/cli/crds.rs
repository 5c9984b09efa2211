//! `shadowplane crds`: the CustomResourceDefinitions of the five Istio kinds shadowplane reads,
//! for clusters without Istio.
//!
//! The names (group, plural, singular, short names, categories), the served versions and the
//! printer columns are Istio's, so `kubectl get vs` looks the same as with Istio installed.
//! The `spec` schemas are generated from the translator's own serde types
//! (`shadowplane_translator::istio`, `#[derive(JsonSchema)]`), so the API server accepts what
//! `shadowplane validate` parses and rejects what it would report as a typo or a wrong type.
//! kube-core's [`StructuralSchemaRewriter`] and [`schemars`]' OpenAPI 3 settings make them
//! structural (inlined, `nullable` options); [`normalize`] does the rest (no descriptions,
//! Kubernetes' integer formats).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::schema::{OptionalEnum, OptionalIntOrString, StructuralSchemaRewriter};
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};
use shadowplane_translator::istio;

use super::output;

pub(super) const AFTER_HELP: &str = "\
Prints one apiextensions.k8s.io/v1 CustomResourceDefinition per kind (VirtualService,
DestinationRule, ServiceEntry, WorkloadEntry, Gateway) in group networking.istio.io, as a
multi-document YAML: versions v1 (stored), v1beta1 and v1alpha3 with the same schema, Istio's
names, short names (vs, dr, se, we, gw) and printer columns. The spec schemas come from the
types shadowplane parses the YAML with: a field it does not know is pruned by the API server
(and rejected by `kubectl apply`'s strict field validation), a field Istio has that shadowplane
does not implement is accepted as is. The output is the same bytes on every run.

Only for clusters WITHOUT Istio: Istio's own CRDs are a superset; do not replace them.

Examples:
  shadowplane crds | kubectl apply -f -
  shadowplane crds --output deploy/kubernetes/crds.yaml";

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write the YAML to FILE (atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

const GROUP: &str = "networking.istio.io";
/// Served versions, the stored one first (`storage: true`); Istio serves the same three.
const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// One kind's CRD names and printer columns, as Istio's CRDs have them.
struct Kind {
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_name: &'static str,
    /// (name, JSON path, description); `Age` is added where Istio has it.
    columns: &'static [(&'static str, &'static str, &'static str)],
    /// Where Istio puts `Age`: after the columns (true), or first (WorkloadEntry).
    age_last: bool,
    schema: fn() -> Result<Value, CrdError>,
}

const KINDS: [Kind; 5] = [
    Kind {
        kind: "VirtualService",
        plural: "virtualservices",
        singular: "virtualservice",
        short_name: "vs",
        columns: &[
            (
                "Gateways",
                ".spec.gateways",
                "The names of gateways and sidecars that should apply these routes",
            ),
            (
                "Hosts",
                ".spec.hosts",
                "The destination hosts to which traffic is being sent",
            ),
        ],
        age_last: true,
        schema: spec_schema::<istio::VirtualServiceSpec>,
    },
    Kind {
        kind: "DestinationRule",
        plural: "destinationrules",
        singular: "destinationrule",
        short_name: "dr",
        columns: &[(
            "Host",
            ".spec.host",
            "The name of a service from the service registry",
        )],
        age_last: true,
        schema: spec_schema::<istio::DestinationRuleSpec>,
    },
    Kind {
        kind: "ServiceEntry",
        plural: "serviceentries",
        singular: "serviceentry",
        short_name: "se",
        columns: &[
            (
                "Hosts",
                ".spec.hosts",
                "The hosts associated with the ServiceEntry",
            ),
            (
                "Location",
                ".spec.location",
                "Whether the service is external to the mesh or part of the mesh (MESH_EXTERNAL or MESH_INTERNAL)",
            ),
            (
                "Resolution",
                ".spec.resolution",
                "Service resolution mode for the hosts (NONE, STATIC, or DNS)",
            ),
        ],
        age_last: true,
        schema: spec_schema::<istio::ServiceEntrySpec>,
    },
    Kind {
        kind: "WorkloadEntry",
        plural: "workloadentries",
        singular: "workloadentry",
        short_name: "we",
        columns: &[(
            "Address",
            ".spec.address",
            "Address associated with the network endpoint.",
        )],
        age_last: false,
        schema: spec_schema::<istio::WorkloadEntrySpec>,
    },
    Kind {
        kind: "Gateway",
        plural: "gateways",
        singular: "gateway",
        short_name: "gw",
        columns: &[],
        age_last: true,
        schema: spec_schema::<istio::GatewaySpec>,
    },
];

/// A schema that cannot be expressed in a CRD. Only a change to the translator's types can
/// cause one (the output does not depend on any input), so a test catches it.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("the generated {kind} schema does not fit a CRD: {reason}")]
    Schema { kind: String, reason: String },
    #[error("cannot write the CRDs as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

pub(super) fn run(args: &CrdsArgs) -> anyhow::Result<ExitCode> {
    let text = render().context("cannot generate the CRDs")?;
    match &args.output {
        Some(path) => output::write_atomically(path, text.as_bytes())?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .context("cannot write to stdout")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The five CRDs as one multi-document YAML, `---` before each.
pub fn render() -> Result<String, CrdError> {
    let mut out = String::from(
        "# Istio's networking.istio.io CRDs with schemas generated by `shadowplane crds`\n\
         # from shadowplane's own types (for clusters without Istio).\n",
    );
    for kind in &KINDS {
        out.push_str("---\n");
        // Through JSON to print integral bounds as integers (`maximum: 4294967295`, as Istio's
        // CRDs have them): k8s-openapi holds them as f64, which YAML would print as `0.0`.
        let mut value = serde_json::to_value(crd(kind)?).map_err(|e| schema_error(kind.kind, e))?;
        integral_numbers(&mut value);
        out.push_str(&serde_yaml::to_string(&value)?);
    }
    Ok(out)
}

fn crd(kind: &Kind) -> Result<CustomResourceDefinition, CrdError> {
    let schema = root_schema(kind)?;
    let versions = VERSIONS
        .iter()
        .enumerate()
        .map(|(i, version)| CustomResourceDefinitionVersion {
            name: (*version).to_string(),
            served: true,
            storage: i == 0,
            additional_printer_columns: Some(columns(kind)),
            schema: Some(CustomResourceValidation {
                open_api_v3_schema: Some(schema.clone()),
            }),
            subresources: Some(CustomResourceSubresources {
                status: Some(CustomResourceSubresourceStatus(Value::Object(Map::new()))),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    Ok(CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{}.{GROUP}", kind.plural)),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "shadowplane".to_string(),
            )])),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.to_string(),
            names: CustomResourceDefinitionNames {
                kind: kind.kind.to_string(),
                list_kind: Some(format!("{}List", kind.kind)),
                plural: kind.plural.to_string(),
                singular: Some(kind.singular.to_string()),
                short_names: Some(vec![kind.short_name.to_string()]),
                categories: Some(vec![
                    "istio-io".to_string(),
                    "networking-istio-io".to_string(),
                ]),
            },
            scope: "Namespaced".to_string(),
            versions,
            ..Default::default()
        },
        status: None,
    })
}

fn columns(kind: &Kind) -> Vec<CustomResourceColumnDefinition> {
    let age = CustomResourceColumnDefinition {
        name: "Age".to_string(),
        json_path: ".metadata.creationTimestamp".to_string(),
        type_: "date".to_string(),
        description: Some(
            "CreationTimestamp is a timestamp representing the server time when this object was created"
                .to_string(),
        ),
        ..Default::default()
    };
    let mut out: Vec<_> = kind
        .columns
        .iter()
        .map(|(name, path, description)| CustomResourceColumnDefinition {
            name: (*name).to_string(),
            json_path: (*path).to_string(),
            type_: "string".to_string(),
            description: Some((*description).to_string()),
            ..Default::default()
        })
        .collect();
    if kind.age_last {
        out.push(age);
    } else {
        out.insert(0, age);
    }
    out
}

/// `{spec, status}` as Istio's CRDs have it: `status` is written by controllers and kept whole.
fn root_schema(kind: &Kind) -> Result<JSONSchemaProps, CrdError> {
    let mut spec = (kind.schema)()?;
    if let Value::Object(map) = &mut spec {
        map.insert(
            "description".into(),
            json!(format!(
                "{} spec, as shadowplane parses it: see https://istio.io/latest/docs/reference/config/networking/",
                kind.kind
            )),
        );
    }
    let mut root = json!({
        "type": "object",
        "properties": {
            "spec": spec,
            "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
        },
    });
    integral_numbers(&mut root);
    let props: JSONSchemaProps =
        serde_json::from_value(root.clone()).map_err(|e| schema_error(kind.kind, e))?;
    // k8s-openapi ignores keywords it does not know; a keyword lost here would be a constraint
    // the API server never sees, so the typed form must give back exactly what was generated.
    let mut back = serde_json::to_value(&props).map_err(|e| schema_error(kind.kind, e))?;
    integral_numbers(&mut back);
    if let Some(path) = first_difference(&root, &back, String::new()) {
        return Err(CrdError::Schema {
            kind: kind.kind.to_string(),
            reason: format!("{path} does not survive the typed JSONSchemaProps"),
        });
    }
    Ok(props)
}

fn schema_error(kind: &str, e: impl std::fmt::Display) -> CrdError {
    CrdError::Schema {
        kind: kind.to_string(),
        reason: e.to_string(),
    }
}

/// The structural OpenAPI v3 schema of one spec type.
fn spec_schema<T: JsonSchema>() -> Result<Value, CrdError> {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(OptionalEnum)
        .with_transform(OptionalIntOrString)
        .with_transform(StructuralSchemaRewriter)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    normalize(&mut schema).map_err(|reason| CrdError::Schema {
        kind: T::schema_name().into_owned(),
        reason,
    })?;
    Ok(schema)
}

/// What neither schemars nor the rewriter does for a CRD: drop the Rust doc comments (they
/// describe the implementation, not the field) and titles, and spell unsigned integers as
/// Kubernetes (and Istio) do: no `uint32` format, a `minimum`/`maximum` instead. No `default`
/// either (see below).
fn normalize(schema: &mut Value) -> Result<(), String> {
    let Value::Object(map) = schema else {
        return Err(format!("a schema node is not an object: {schema}"));
    };
    map.remove("description");
    map.remove("title");
    // serde's `default`s are what the parser assumes for a missing field; as CRD defaults the
    // API server would write them into every stored object (`hosts: []`, `host: ""`).
    map.remove("default");
    map.remove("$schema");
    if map.contains_key("$ref") || map.contains_key("definitions") || map.contains_key("$defs") {
        return Err("a $ref was left after inlining".to_string());
    }
    if let Some(Value::String(format)) = map.get("format") {
        let bounds = match format.as_str() {
            "uint8" => Some(u64::from(u8::MAX)),
            "uint16" => Some(u64::from(u16::MAX)),
            "uint32" => Some(u64::from(u32::MAX)),
            "uint64" | "uint" => None,
            "int32" | "int64" | "double" | "float" => return recurse(map),
            other => return Err(format!("format {other:?} is not one Kubernetes knows")),
        };
        map.remove("format");
        map.insert("minimum".into(), json!(0));
        if let Some(max) = bounds {
            map.insert("maximum".into(), json!(max));
        }
    }
    recurse(map)
}

fn recurse(map: &mut Map<String, Value>) -> Result<(), String> {
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for child in properties.values_mut() {
            normalize(child)?;
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child @ Value::Object(_)) = map.get_mut(key) {
            normalize(child)?;
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(children)) = map.get_mut(key) {
            for child in children {
                normalize(child)?;
            }
        }
    }
    Ok(())
}

/// Floats with no fractional part (k8s-openapi's `minimum`/`maximum` are f64) as integers.
fn integral_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                // 2^53: every integer below it is exact in an f64
                if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                    // The range check above makes the cast exact.
                    #[allow(clippy::cast_possible_truncation)]
                    let i = f as i64;
                    *value = json!(i);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// The JSON path of the first place where `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}/{key}");
                match b.get(key) {
                    Some(other) => {
                        if let Some(found) = first_difference(value, other, here) {
                            return Some(found);
                        }
                    }
                    None => return Some(here),
                }
            }
            b.keys()
                .find(|key| !a.contains_key(*key))
                .map(|key| format!("{path}/{key}"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, format!("{path}/{i}"))),
        _ if a == b => None,
        _ => Some(format!("{path} ({a} vs {b})")),
    }
}
