//! `Gateway` (istio/api `networking/v1alpha3/gateway.proto`): HTTP servers become listeners
//! with route configurations named `http.<port>`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{AnyValue, Unsupported};

#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    #[serde(default)]
    pub port: GatewayPort,
    pub bind: Option<String>,
    /// `host` or `namespace/host`; `*` wildcards allowed.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[schemars(with = "Option<AnyValue>")]
    pub tls: Unsupported,
    #[schemars(with = "Option<AnyValue>")]
    pub default_endpoint: Unsupported,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPort {
    #[serde(default)]
    pub number: u32,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    #[schemars(with = "Option<AnyValue>")]
    pub target_port: Unsupported,
}
