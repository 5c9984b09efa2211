//! shadowplane-translator: Istio routing and mirroring YAML in, Envoy v3 resources and
//! diagnostics out.
//!
//! Pure: no file system, network, clock, environment or async. Two stages with a validated
//! model in the middle:
//!
//! ```text
//! SourceFile text --parse--> source::Resource (istio::*) --lower--> ir::Model --xds--> Envoy protos
//!                        \________________ diagnostics (diag::Diagnostic) ________________/
//! ```
//!
//! Output is deterministic: the same input gives byte-identical output, and the user's route
//! order is kept.

#![forbid(unsafe_code)]

pub mod canonical;
pub mod diag;
pub mod ir;
pub mod istio;
pub mod lower;
pub mod parse;
pub mod print;
pub mod source;
pub mod xds;

pub use diag::{Code, Diagnostic, Severity};
pub use source::{Parsed, Resource, SourceFile};

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};

/// Choices that are not in the YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Address listeners bind to (`0.0.0.0` like istiod; `127.0.0.1` for local runs).
    pub bind_address: String,
    /// `false` (default) keeps Envoy's `-shadow` Host suffix on mirrored requests, as the
    /// seeds and Istio's mirroring task describe; `true` is Istio 1.28's default.
    pub disable_shadow_host_suffix: bool,
    /// The namespace of the proxy the config is for (Istio sidecar node metadata `NAMESPACE`).
    /// `None`: every short form of each host that no other namespace also claims.
    pub proxy_namespace: Option<String>,
    /// Kubernetes cluster DNS suffix used to expand short names.
    pub domain_suffix: String,
    /// How listeners and clusters tell Envoy to fetch their route configurations (RDS) and
    /// endpoints (EDS): over ADS like istiod (default), or from the same server on the
    /// proxy's per-type streams.
    pub config_source: ConfigSourceKind,
}

/// The `ConfigSource` of the RDS and EDS references in the emitted listeners and clusters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigSourceKind {
    /// `{ads: {}}`, as istiod emits: the proxy fetches routes and endpoints over its aggregated
    /// (ADS) stream. Needs a bootstrap with `ads_config`.
    #[default]
    Ads,
    /// `{self: {}}`: the proxy fetches them "from the same server it got the ConfigSource
    /// from" (Envoy's `SelfConfigSource`), i.e. on per-type RDS/EDS streams to the server of
    /// its LDS/CDS `api_config_source`. For bootstraps without ADS.
    SelfSource,
}

impl ConfigSourceKind {
    /// `ads` or `self`, as in the Envoy field name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSourceKind::Ads => "ads",
            ConfigSourceKind::SelfSource => "self",
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bind_address: "0.0.0.0".to_string(),
            disable_shadow_host_suffix: false,
            proxy_namespace: None,
            domain_suffix: "cluster.local".to_string(),
            config_source: ConfigSourceKind::Ads,
        }
    }
}

/// The Envoy resources of one translation, each list sorted by resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    /// One ClusterLoadAssignment per EDS cluster (possibly empty).
    pub endpoints: Vec<ClusterLoadAssignment>,
}

/// The result of a translation: the model, the Envoy resources and every diagnostic.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    pub model: ir::Model,
    pub resources: Resources,
    /// Sorted by file, line, column (see [`diag::sort`]).
    pub diagnostics: Vec<Diagnostic>,
}

impl Translation {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Parse and translate a set of files in one go: the usual entry point.
pub fn translate_files(files: &[SourceFile], options: &Options) -> Translation {
    let parsed = parse::parse_files(files);
    translate(&parsed, options)
}

/// Translate already-parsed resources. Parse diagnostics in `parsed` are carried over.
pub fn translate(parsed: &Parsed, options: &Options) -> Translation {
    let mut diagnostics = parsed.diagnostics.clone();
    let model = lower::lower(&parsed.resources, options, &mut diagnostics);
    let resources = xds::build_with_config_source(&model, options.config_source);
    diag::sort(&mut diagnostics);
    Translation {
        model,
        resources,
        diagnostics,
    }
}
