//! Istio resources → [`ir::Model`]: every Istio semantic (names, defaults, precedence,
//! percentages, catch-all short-circuit) and every cross-resource check lives here.
//!
//! Order of work (each step only reads what earlier steps built):
//! 1. [`registry`]: ServiceEntry + WorkloadEntry → [`registry::Registry`] (services, ports,
//!    endpoints with labels).
//! 2. [`destination_rule`]: DestinationRules → [`destination_rule::RuleIndex`] (merged per host),
//!    then clusters for every service port plus one per defined subset.
//! 3. [`virtual_service`] and [`gateway`]: VirtualServices → virtual hosts and routes per port,
//!    Gateways → gateway listeners; [`listener`] assembles listeners and route configs.

pub mod destination_rule;
pub mod duration;
pub mod gateway;
pub mod listener;
pub mod registry;
pub mod route;
pub mod traffic_policy;
pub mod virtual_service;

use crate::diag::Diagnostic;
use crate::ir::Model;
use crate::source::Resource;
use crate::Options;

/// Lower all resources. Bad resources are reported and skipped; the rest still translates.
pub fn lower(resources: &[Resource], options: &Options, diags: &mut Vec<Diagnostic>) -> Model {
    let services = lower_services(resources, options);
    lower_with_services(resources, &services, options, diags)
}

/// Steps 1 and 2 of [`lower`]: what lowering derives from the ServiceEntries, WorkloadEntries
/// and DestinationRules of `resources` alone (and `options`), with the diagnostics of those
/// steps. Reading no VirtualService or Gateway, it can be kept while only those change:
/// [`lower_with_services`] of it is then exactly [`lower`].
#[derive(Debug, Clone)]
pub struct Services {
    pub registry: registry::Registry,
    pub rules: destination_rule::RuleIndex,
    pub clusters: Vec<crate::ir::Cluster>,
    /// In the order [`lower`] reports them, before the diagnostics of step 3.
    pub diagnostics: Vec<Diagnostic>,
}

/// Steps 1 and 2 of [`lower`] (see [`Services`]).
pub fn lower_services(resources: &[Resource], options: &Options) -> Services {
    let mut diagnostics = Vec::new();
    let registry = registry::build(resources, options, &mut diagnostics);
    let rules = destination_rule::index(resources, &registry, options, &mut diagnostics);
    let clusters = destination_rule::build_clusters(&registry, &rules, options, &mut diagnostics);
    Services {
        registry,
        rules,
        clusters,
        diagnostics,
    }
}

/// Step 3 of [`lower`], with steps 1 and 2 already done: `services` must be
/// [`lower_services`] of resources whose ServiceEntries, WorkloadEntries and DestinationRules
/// are those of `resources` (same order, same content), with the same `options`. Appends the
/// diagnostics of `services`, then those of step 3, to `diags`, as [`lower`] does.
pub fn lower_with_services(
    resources: &[Resource],
    services: &Services,
    options: &Options,
    diags: &mut Vec<Diagnostic>,
) -> Model {
    diags.extend(services.diagnostics.iter().cloned());
    let (listeners, route_configs) = listener::build(
        resources,
        &services.registry,
        &services.rules,
        options,
        diags,
    );
    Model {
        listeners,
        route_configs,
        clusters: services.clusters.clone(),
    }
}

/// Whether lowering reads `resource` in steps 1 and 2 ([`lower_services`]): ServiceEntries,
/// WorkloadEntries and DestinationRules. A change to any other resource keeps [`Services`].
pub fn is_service_input(resource: &Resource) -> bool {
    !matches!(
        resource.spec,
        crate::istio::Spec::VirtualService(_) | crate::istio::Spec::Gateway(_)
    )
}

/// Resolve a short host name the way istiod does: a name without dots gets
/// `.<namespace>.svc.<domain_suffix>`; anything with a dot (or a wildcard/IP) is kept.
pub fn resolve_short_name(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host.starts_with('*') || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_string()
    } else {
        // Concatenated rather than formatted: this runs for every host reference.
        [host, ".", namespace, ".svc.", domain_suffix].concat()
    }
}

/// Istio's outbound cluster name: `outbound|<port>|<subset>|<fqdn>`.
pub fn cluster_name(port: u32, subset: Option<&str>, fqdn: &str) -> String {
    use std::fmt::Write;
    // Built in one allocation rather than formatted: this runs for every cluster and every
    // route destination.
    let subset = subset.unwrap_or("");
    let mut name = String::with_capacity("outbound|65535||".len() + subset.len() + fqdn.len());
    name.push_str("outbound|");
    // Writing to a String cannot fail.
    let _ = write!(name, "{port}");
    name.push('|');
    name.push_str(subset);
    name.push('|');
    name.push_str(fqdn);
    name
}
