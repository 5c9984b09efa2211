//! Semantic tests of VirtualService and Gateway lowering, through the public entry point
//! [`crate::lower::listener::build`]. Inputs are built directly (Istio specs from YAML,
//! hand-made registry and DestinationRule index); assertions are on the IR.

mod actions;
mod domains;
mod gateway;
mod matching;
mod mirror;
mod routing;
mod seeds;
mod validation;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::diag::{Code, Diagnostic, Severity};
use crate::ir::{
    ClusterSpecifier, Forward, Listener, Route, RouteAction, RouteConfig, VirtualHost,
};
use crate::istio::{ObjectMeta, Spec, Subset};
use crate::lower::destination_rule::{MergedRule, RuleIndex};
use crate::lower::listener;
use crate::lower::registry::{Protocol, Registry, Resolution, Service, ServicePort};
use crate::source::{Origin, PathIndex, Resource};
use crate::Options;

pub(super) fn meta(ns: &str, name: &str, created: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: name.to_string(),
        namespace: Some(ns.to_string()),
        creation_timestamp: created.map(str::to_string),
        ..ObjectMeta::default()
    }
}

fn resource(metadata: ObjectMeta, spec: Spec) -> Resource {
    Resource {
        api_version: "networking.istio.io/v1".to_string(),
        metadata,
        spec,
        origin: Origin {
            file: Arc::from("test.yaml"),
            document: 0,
            index: Arc::new(PathIndex::default()),
        },
    }
}

/// A VirtualService from its `spec` YAML.
pub(super) fn vs(ns: &str, name: &str, spec: &str) -> Resource {
    vs_at(ns, name, None, spec)
}

/// A VirtualService with a creation timestamp.
pub(super) fn vs_at(ns: &str, name: &str, created: Option<&str>, spec: &str) -> Resource {
    let spec = serde_yaml::from_str(spec).expect("test VirtualService spec must parse");
    resource(meta(ns, name, created), Spec::VirtualService(spec))
}

/// A Gateway from its `spec` YAML.
pub(super) fn gw(ns: &str, name: &str, spec: &str) -> Resource {
    let spec = serde_yaml::from_str(spec).expect("test Gateway spec must parse");
    resource(meta(ns, name, None), Spec::Gateway(spec))
}

/// A service with HTTP ports (`(number, protocol)`).
pub(super) fn svc_ports(host: &str, ports: &[(u32, Protocol)]) -> Service {
    let ns = host.split('.').nth(1).unwrap_or("default").to_string();
    Service {
        hostname: host.to_string(),
        namespace: ns.clone(),
        ports: ports
            .iter()
            .map(|(n, p)| ServicePort {
                number: *n,
                name: format!("http-{n}"),
                protocol: *p,
                target_port: *n,
            })
            .collect(),
        resolution: Resolution::Static,
        endpoints: Vec::new(),
        source: crate::diag::ResourceRef {
            kind: "ServiceEntry".to_string(),
            namespace: ns,
            name: host.to_string(),
        },
    }
}

/// A service with HTTP ports.
pub(super) fn svc(host: &str, ports: &[u32]) -> Service {
    let ports: Vec<_> = ports.iter().map(|p| (*p, Protocol::Http)).collect();
    svc_ports(host, &ports)
}

pub(super) fn registry(services: Vec<Service>) -> Registry {
    Registry {
        services: services
            .into_iter()
            .map(|s| (s.hostname.clone(), s))
            .collect(),
    }
}

/// A DestinationRule index with the given subsets per host.
pub(super) fn subsets(entries: &[(&str, &[&str])]) -> RuleIndex {
    let mut rules = BTreeMap::new();
    for (host, names) in entries {
        rules.insert(
            host.to_string(),
            MergedRule {
                host: host.to_string(),
                subsets: names
                    .iter()
                    .map(|n| Subset {
                        name: n.to_string(),
                        labels: BTreeMap::from([("version".to_string(), n.to_string())]),
                        traffic_policy: None,
                    })
                    .collect(),
                traffic_policy: None,
                sources: Vec::new(),
            },
        );
    }
    RuleIndex { rules }
}

/// The output of one lowering.
pub(super) struct Out {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfig>,
    pub diags: Vec<Diagnostic>,
}

impl Out {
    pub fn route_config(&self, name: &str) -> &RouteConfig {
        self.routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no route config {name:?} in {:?}", self.names()))
    }

    pub fn vhost(&self, rc: &str, name: &str) -> &VirtualHost {
        let rc = self.route_config(rc);
        rc.virtual_hosts
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no virtual host {name:?} in {:?}",
                    rc.virtual_hosts.iter().map(|v| &v.name).collect::<Vec<_>>()
                )
            })
    }

    pub fn listener(&self, name: &str) -> &Listener {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no listener {name:?}"))
    }

    fn names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.name.as_str()).collect()
    }

    /// Diagnostics with this code.
    pub fn with_code(&self, code: Code) -> Vec<&Diagnostic> {
        self.diags.iter().filter(|d| d.code == code).collect()
    }

    /// Exactly one diagnostic with this code; returns it.
    pub fn one(&self, code: Code) -> &Diagnostic {
        let found = self.with_code(code);
        assert_eq!(
            found.len(),
            1,
            "expected one {code:?}, got {:#?}",
            self.diags
        );
        found[0]
    }

    pub fn errors(&self) -> Vec<&Diagnostic> {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect()
    }

    pub fn assert_clean(&self) {
        assert!(
            self.diags.is_empty(),
            "unexpected diagnostics: {:#?}",
            self.diags
        );
    }
}

pub(super) fn lower_with(
    resources: &[Resource],
    registry: &Registry,
    rules: &RuleIndex,
    options: &Options,
) -> Out {
    let mut diags = Vec::new();
    let (listeners, routes) = listener::build(resources, registry, rules, options, &mut diags);
    Out {
        listeners,
        routes,
        diags,
    }
}

pub(super) fn lower(resources: &[Resource], registry: &Registry, rules: &RuleIndex) -> Out {
    lower_with(resources, registry, rules, &Options::default())
}

pub(super) fn forward(route: &Route) -> &Forward {
    match &route.action {
        RouteAction::Forward(f) => f,
        other => panic!("expected a forward action, got {other:?}"),
    }
}

pub(super) fn cluster(route: &Route) -> &str {
    match &forward(route).destination {
        ClusterSpecifier::Cluster(c) => c,
        other => panic!("expected a single cluster, got {other:?}"),
    }
}

/// The standard fixture: `reviews.default.svc.cluster.local` on port 9080 with subsets
/// v1, v2, v3; VirtualServices in namespace `default`.
pub(super) const REVIEWS: &str = "reviews.default.svc.cluster.local";

pub(super) fn reviews_registry() -> Registry {
    registry(vec![svc(REVIEWS, &[9080])])
}

pub(super) fn reviews_rules() -> RuleIndex {
    subsets(&[(REVIEWS, &["v1", "v2", "v3"])])
}

/// Lower one VirtualService (namespace `default`, name `reviews`) against the reviews fixture
/// and return the output plus the routes of the reviews virtual host.
pub(super) fn reviews(spec: &str) -> (Out, Vec<Route>) {
    reviews_with(spec, &Options::default())
}

pub(super) fn reviews_with(spec: &str, options: &Options) -> (Out, Vec<Route>) {
    let out = lower_with(
        &[vs("default", "reviews", spec)],
        &reviews_registry(),
        &reviews_rules(),
        options,
    );
    let routes = out.vhost("9080", &format!("{REVIEWS}:9080")).routes.clone();
    (out, routes)
}
