//! NACK attribution: which Istio object (and where in which file) produced the Envoy resources
//! a proxy rejected. Best effort, from the translation's model and the parsed sources:
//!
//! - a listener → its route configuration → as below;
//! - a route configuration → the VirtualServices whose routes it holds (route `config_path`),
//!   narrowed to one virtual host when Envoy's message names it;
//! - a cluster or cluster load assignment `outbound|<port>|<subset>|<host>` → the
//!   DestinationRule defining that subset, or for the default cluster the ServiceEntry that
//!   defines the host.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;
use shadowplane_translator::diag::Location;
use shadowplane_translator::ir::Model;
use shadowplane_translator::istio::Spec;
use shadowplane_translator::{Parsed, Resource};

use crate::xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

/// One source object a rejected resource came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SourceRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The part of the object that produced the resource (`spec.subsets[2]`), if narrower
    /// than the whole object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)?;
        if let Some(field) = &self.field {
            write!(f, " {field}")?;
        }
        if let Some(loc) = &self.location {
            write!(f, " ({loc})")?;
        }
        Ok(())
    }
}

/// The sources of the resources `names` of `type_url`. When Envoy's `message` mentions some
/// of the names, only those are attributed (a SotW NACK lists every name of the response).
pub fn attribute(
    type_url: &str,
    names: &[String],
    message: &str,
    model: &Model,
    parsed: &Parsed,
    domain_suffix: &str,
) -> Vec<SourceRef> {
    let mentioned: Vec<&String> = names
        .iter()
        .filter(|n| !n.is_empty() && message.contains(n.as_str()))
        .collect();
    let names: Vec<&String> = if mentioned.is_empty() {
        names.iter().collect()
    } else {
        mentioned
    };
    let mut out = BTreeSet::new();
    for name in names {
        match type_url {
            LISTENER => {
                let route = model
                    .listeners
                    .iter()
                    .find(|l| &l.name == name)
                    .map(|l| l.route_config_name.clone())
                    // `<bind>_<port>` for a bind address this model was not built for.
                    .or_else(|| name.rsplit('_').next().map(str::to_string));
                if let Some(route) = route {
                    route_sources(&route, message, model, parsed, &mut out);
                }
            }
            ROUTE => route_sources(name, message, model, parsed, &mut out),
            CLUSTER | ENDPOINT => cluster_sources(name, model, parsed, domain_suffix, &mut out),
            _ => {}
        }
    }
    out.into_iter().collect()
}

fn route_sources(
    route_config: &str,
    message: &str,
    model: &Model,
    parsed: &Parsed,
    out: &mut BTreeSet<SourceRef>,
) {
    let Some(rc) = model.route_configs.iter().find(|r| r.name == route_config) else {
        return;
    };
    let named: Vec<_> = rc
        .virtual_hosts
        .iter()
        .filter(|vh| message.contains(&vh.name))
        .collect();
    let hosts = if named.is_empty() {
        rc.virtual_hosts.iter().collect()
    } else {
        named
    };
    for vh in hosts {
        for route in &vh.routes {
            let Some((namespace, name)) = route.config_path.as_deref().and_then(parse_config_path)
            else {
                continue;
            };
            out.insert(source(parsed, "VirtualService", namespace, name, None));
        }
    }
}

/// `/apis/networking.istio.io/v1/namespaces/<ns>/virtual-service/<name>` → (ns, name).
fn parse_config_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.split("/namespaces/").nth(1)?;
    let mut parts = rest.split('/');
    let namespace = parts.next()?;
    let _kind = parts.next()?;
    let name = parts.next()?;
    Some((namespace, name))
}

fn cluster_sources(
    cluster: &str,
    model: &Model,
    parsed: &Parsed,
    domain_suffix: &str,
    out: &mut BTreeSet<SourceRef>,
) {
    let (host, subset) = match model.clusters.iter().find(|c| c.name == cluster) {
        Some(c) => (
            c.service.clone(),
            c.subset.clone().filter(|s| !s.is_empty()),
        ),
        None => {
            // `outbound|<port>|<subset>|<host>`
            let parts: Vec<&str> = cluster.split('|').collect();
            if parts.len() != 4 {
                return;
            }
            (
                parts[3].to_string(),
                Some(parts[2].to_string()).filter(|s| !s.is_empty()),
            )
        }
    };
    let before = out.len();
    for r in &parsed.resources {
        match (&r.spec, &subset) {
            (Spec::DestinationRule(dr), Some(subset)) => {
                if expand(&dr.host, r.namespace(), domain_suffix) != host {
                    continue;
                }
                if let Some(i) = dr.subsets.iter().position(|s| &s.name == subset) {
                    let field = format!("spec.subsets[{i}]");
                    out.insert(located(r, Some(field)));
                }
            }
            (Spec::ServiceEntry(se), None)
                if se
                    .hosts
                    .iter()
                    .any(|h| expand(h, r.namespace(), domain_suffix) == host) =>
            {
                out.insert(located(r, None));
            }
            _ => {}
        }
    }
    // A default cluster of a host with a DestinationRule: the rule's traffic policy applies.
    if out.len() == before && subset.is_none() {
        for r in &parsed.resources {
            if let Spec::DestinationRule(dr) = &r.spec {
                if expand(&dr.host, r.namespace(), domain_suffix) == host {
                    out.insert(located(r, None));
                }
            }
        }
    }
}

/// Istio's short-name rule: a host without a dot is `<host>.<namespace>.svc.<suffix>`.
fn expand(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{domain_suffix}")
    }
}

fn source(
    parsed: &Parsed,
    kind: &str,
    namespace: &str,
    name: &str,
    field: Option<String>,
) -> SourceRef {
    match parsed
        .resources
        .iter()
        .find(|r| r.kind() == kind && r.namespace() == namespace && r.name() == name)
    {
        Some(r) => located(r, field),
        None => SourceRef {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            field,
            location: None,
        },
    }
}

fn located(r: &Resource, field: Option<String>) -> SourceRef {
    let location = r.origin.at(field.as_deref().unwrap_or("metadata.name"));
    SourceRef {
        kind: r.kind().to_string(),
        namespace: r.namespace().to_string(),
        name: r.name().to_string(),
        field,
        location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_paths_parse_to_namespace_and_name() {
        assert_eq!(
            parse_config_path(
                "/apis/networking.istio.io/v1/namespaces/challengeistio/virtual-service/backend-vs"
            ),
            Some(("challengeistio", "backend-vs"))
        );
        assert_eq!(parse_config_path("nonsense"), None);
    }

    #[test]
    fn short_hosts_expand_like_istio() {
        assert_eq!(
            expand("calc", "ns", "cluster.local"),
            "calc.ns.svc.cluster.local"
        );
        assert_eq!(
            expand("calc.ns.svc.cluster.local", "x", "cluster.local"),
            "calc.ns.svc.cluster.local"
        );
        assert_eq!(
            expand("*.example.com", "x", "cluster.local"),
            "*.example.com"
        );
    }
}
