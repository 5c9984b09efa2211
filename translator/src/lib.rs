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
    /// endpoints (EDS): over ADS like istiod (default), or on per-type gRPC streams to a
    /// cluster of the proxy's bootstrap.
    pub config_source: ConfigSourceKind,
    /// Virtual hosts as resources of their own (VHDS), so a one-host change is one small
    /// resource: every route configuration gets `vhds { config_source { ads {} } }` and keeps
    /// its virtual hosts, which the xDS server then sends as `VirtualHost` resources named
    /// `<route configuration>/<virtual host>` instead of inside it
    /// ([`xds::virtual_host::split_virtual_hosts`]). Only with the `Ads` config source (Envoy
    /// serves VHDS over delta ADS only); ignored otherwise. Default `false`.
    pub vhds: bool,
}

/// The `ConfigSource` of the RDS and EDS references in the emitted listeners and clusters.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigSourceKind {
    /// `{ads: {}}`, as istiod emits: the proxy fetches routes and endpoints over its aggregated
    /// (ADS) stream. Needs a bootstrap with `ads_config`.
    #[default]
    Ads,
    /// `{api_config_source: {api_type: GRPC (or DELTA_GRPC), grpc_services: [{envoy_grpc:
    /// {cluster_name}}]}}`: the proxy opens one RDS and EDS stream of their own to the static
    /// cluster `cluster_name` of its bootstrap, the way a bootstrap without ADS gets LDS and
    /// CDS. (Envoy 1.40 does not implement `{self: {}}`, which would say "the same server"
    /// without naming the cluster: it rejects it with "Missing config source specifier".)
    Grpc {
        /// The bootstrap's static cluster of the xDS server (`xds_cluster` in Envoy's examples).
        cluster_name: String,
        /// `DELTA_GRPC` instead of `GRPC`.
        delta: bool,
    },
    /// `{self: {transport_api_version: V3}}`, xDS's "from the same server it got the
    /// ConfigSource from". Valid xDS, but Envoy 1.40 rejects it for RDS and EDS ("Missing
    /// config source specifier"), so `serve` never picks it for a proxy; it is here for xDS
    /// clients that implement it.
    SelfSource,
}

impl std::fmt::Display for ConfigSourceKind {
    /// `ads`, `grpc:<cluster>` or `delta_grpc:<cluster>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSourceKind::Ads => f.write_str("ads"),
            ConfigSourceKind::Grpc {
                cluster_name,
                delta: false,
            } => write!(f, "grpc:{cluster_name}"),
            ConfigSourceKind::Grpc {
                cluster_name,
                delta: true,
            } => write!(f, "delta_grpc:{cluster_name}"),
            ConfigSourceKind::SelfSource => f.write_str("self"),
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
            vhds: false,
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
    let mut resources = xds::build_with_config_source(&model, &options.config_source);
    if options.vhds && options.config_source == ConfigSourceKind::Ads {
        xds::virtual_host::enable_vhds(&mut resources.routes);
    }
    diag::sort(&mut diagnostics);
    Translation {
        model,
        resources,
        diagnostics,
    }
}
