//! Serde types mirroring the user's Istio YAML (`networking.istio.io` v1alpha3, v1beta1, v1).
//!
//! These are the "low-level" input types: they only describe what may be written.
//! Every struct denies unknown fields, so a typo (`subest`) is an error and never silently dropped.
//! Valid Istio fields that shadowplane does not implement are typed [`Unsupported`] so they
//! parse, and lowering reports each one as a warning.
//! No semantics live here: short-name resolution, defaults and validation are in `lower`.

pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod virtual_service;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use virtual_service::*;

/// A valid Istio field that shadowplane accepts but does not implement (yet).
/// Lowering emits an `UnsupportedField` warning naming it when it is present.
pub type Unsupported = Option<serde_yaml::Value>;

/// The JSON Schema of an [`Unsupported`] field's value: anything is accepted (an object, a
/// list, a string, a number), as the field is only parsed to be reported. In a Kubernetes CRD
/// that is `x-kubernetes-preserve-unknown-fields: true` with no `type`, which the API server
/// treats as structural. Fields use it as `#[schemars(with = "Option<AnyValue>")]`
/// (`serde_yaml::Value` has no `JsonSchema` implementation of its own).
pub struct AnyValue;

impl JsonSchema for AnyValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnyValue".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
    }
}

/// The Kubernetes object metadata we use. Unknown metadata fields are ignored on purpose:
/// objects exported from a cluster carry `managedFields`, `uid` and friends.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    /// Empty means `default`, as `kubectl apply` does.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; used to order conflicting VirtualServices the way istiod does (oldest wins).
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    /// The namespace, defaulting to `default`.
    pub fn namespace(&self) -> &str {
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => "default",
        }
    }
}

/// Istio `StringMatch`: exactly one of exact/prefix/regex. `{}` (none set) means "present" for
/// header and query-parameter matches; lowering validates the rest.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// Istio `Percent`: a double in [0, 100].
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// Istio `PortSelector`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

/// One parsed Istio resource of a kind shadowplane understands.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    VirtualService(VirtualServiceSpec),
    DestinationRule(DestinationRuleSpec),
    ServiceEntry(ServiceEntrySpec),
    WorkloadEntry(WorkloadEntrySpec),
    Gateway(GatewaySpec),
}

impl Spec {
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::VirtualService(_) => "VirtualService",
            Spec::DestinationRule(_) => "DestinationRule",
            Spec::ServiceEntry(_) => "ServiceEntry",
            Spec::WorkloadEntry(_) => "WorkloadEntry",
            Spec::Gateway(_) => "Gateway",
        }
    }
}
