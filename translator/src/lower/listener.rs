//! Listeners and route configurations: one `<bind>_<port>` listener per HTTP service port with
//! RDS `"<port>"` (virtual hosts for every service on that port, with or without a
//! VirtualService), plus one listener per Gateway server with RDS `http.<port>`.
//!
//! Sidecar-style route configuration `"<port>"`, as istiod builds it for a sidecar:
//! - one virtual host `<fqdn>:<port>` per service with an HTTP port `<port>`; its routes come
//!   from the mesh VirtualService owning the host ([`virtual_service::mesh_index`]), else a
//!   single `default` route to `outbound|<port>||<fqdn>`; a VirtualService that yields no
//!   route on this port (e.g. every match selects another `port`) also leaves the default
//!   route, as istiod does;
//! - on port 80 only (istiod's explicit special case), one virtual host `<host>:80` with
//!   domains `[host]` per VirtualService host that matches no service. Without a service on
//!   port 80 there is no port-80 listener and such hosts are not reachable, as in istiod;
//! - virtual hosts sorted by name, each domain kept only on the first virtual host that
//!   lists it (Envoy rejects duplicates), virtual hosts left without domains dropped.
//!
//! istiod's catch-all `allow_any` virtual host (forwarding unknown hosts to its
//! `PassthroughCluster`) is not emitted: shadowplane has no passthrough cluster, so a request
//! for an unknown Host gets Envoy's 404 (NR).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::diag::Diagnostic;
use crate::ir::{
    ClusterSpecifier, Forward, Listener, Route, RouteAction, RouteConfig, VirtualHost,
};
use crate::lower::destination_rule::RuleIndex;
use crate::lower::registry::{Registry, Service};
use crate::lower::route::{action, matcher, retry};
use crate::lower::{cluster_name, gateway, virtual_service};
use crate::source::Resource;
use crate::Options;

/// Build listeners and route configs (both sorted by name).
pub fn build(
    resources: &[Resource],
    registry: &Registry,
    rules: &RuleIndex,
    options: &Options,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<Listener>, Vec<RouteConfig>) {
    let gateways = gateway::index(resources);
    let known: BTreeSet<String> = gateways.keys().cloned().collect();
    let vss = virtual_service::compile_all(resources, registry, rules, options, &known, diags);
    let mesh = virtual_service::mesh_index(&vss, diags);
    let mesh_context = BTreeSet::from([virtual_service::MESH.to_string()]);
    let domains = Domains::new(registry, options);

    let ports: BTreeSet<u32> = registry
        .services
        .values()
        .flat_map(|s| s.ports.iter())
        .filter(|p| p.protocol.is_http())
        .map(|p| p.number)
        .collect();

    let mut listeners = Vec::new();
    let mut route_configs = Vec::new();
    for port in ports {
        let mut vhosts = Vec::new();
        for svc in registry.services.values() {
            if !svc
                .ports
                .iter()
                .any(|p| p.number == port && p.protocol.is_http())
            {
                continue;
            }
            let routes = mesh
                .for_service(&svc.hostname)
                .map(|i| vss[i].routes(port, &mesh_context, rules, options))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| vec![default_route(&svc.hostname, port, rules)]);
            vhosts.push(VirtualHost {
                name: vhost_name(&svc.hostname, port),
                domains: domains.for_service(svc),
                routes,
            });
        }
        if port == 80 {
            for (host, i) in mesh.unmatched_hosts(registry) {
                let routes = vss[i].routes(port, &mesh_context, rules, options);
                if routes.is_empty() {
                    continue;
                }
                vhosts.push(VirtualHost {
                    name: vhost_name(host, port),
                    domains: vec![host.to_string()],
                    routes,
                });
            }
        }
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        dedupe_domains(&mut vhosts);
        let rc = RouteConfig {
            name: port.to_string(),
            virtual_hosts: vhosts,
        };
        let bind = &options.bind_address;
        listeners.push(Listener {
            name: format!("{bind}_{port}"),
            address: bind.clone(),
            port,
            route_config_name: rc.name.clone(),
            stat_prefix: format!("outbound_{bind}_{port}"),
            fault_filter: uses(&rc, |r| r.fault.is_some()),
            cors_filter: uses(&rc, |r| r.cors.is_some()),
        });
        route_configs.push(rc);
    }

    let (gw_listeners, gw_routes) =
        gateway::build(&gateways, &vss, rules, options, &listeners, diags);
    listeners.extend(gw_listeners);
    route_configs.extend(gw_routes);
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    route_configs.sort_by(|a, b| a.name.cmp(&b.name));
    (listeners, route_configs)
}

fn uses(rc: &RouteConfig, f: impl Fn(&Route) -> bool) -> bool {
    rc.virtual_hosts.iter().flat_map(|v| &v.routes).any(f)
}

/// `host:port`, IPv6 in brackets (Go's `net.JoinHostPort`).
fn vhost_name(host: &str, port: u32) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// Keep each domain on the first virtual host listing it; drop virtual hosts left empty.
fn dedupe_domains(vhosts: &mut Vec<VirtualHost>) {
    // Which domains to keep, decided on borrowed names (no copy of every domain), then kept.
    let keep: Vec<Vec<bool>> = {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        vhosts
            .iter()
            .map(|v| v.domains.iter().map(|d| seen.insert(d.as_str())).collect())
            .collect()
    };
    for (v, keep) in vhosts.iter_mut().zip(keep) {
        let mut keep = keep.into_iter();
        v.domains.retain(|_| keep.next().unwrap_or(true));
    }
    vhosts.retain(|v| !v.domains.is_empty());
}

/// The route of a service without a VirtualService (istiod's `BuildDefaultHTTPOutboundRoute`).
fn default_route(host: &str, port: u32, rules: &RuleIndex) -> Route {
    let hash = rules.consistent_hash(host, None, port);
    let mut retry = retry::default_policy();
    if hash.is_some() {
        retry.previous_hosts_predicate = false;
    }
    Route {
        name: "default".to_string(),
        matcher: matcher::match_all(),
        action: RouteAction::Forward(Box::new(Forward {
            destination: ClusterSpecifier::Cluster(cluster_name(port, None, host)),
            timeout: Duration::ZERO,
            retry: Some(retry),
            mirrors: Vec::new(),
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite_literal: None,
            hash_policy: hash.map(action::hash_policy).unwrap_or_default(),
        })),
        request_headers_to_add: Vec::new(),
        request_headers_to_remove: Vec::new(),
        response_headers_to_add: Vec::new(),
        response_headers_to_remove: Vec::new(),
        fault: None,
        cors: None,
        config_path: None,
        decorator: format!("{host}:{port}/*"),
        stat_prefix: None,
    }
}

/// Virtual-host domain generation (istiod's `generateVirtualHostDomains`), without `:port`
/// variants (`ignore_port_in_host_matching` is set when emitting).
struct Domains<'a> {
    options: &'a Options,
    /// Every service hostname (an expanded short name equal to one of them is dropped).
    fqdns: BTreeSet<&'a str>,
    /// Short name → namespaces of the Kubernetes-style hosts (`name.ns.svc.<suffix>`) using it.
    short_claims: BTreeMap<&'a str, BTreeSet<&'a str>>,
}

impl<'a> Domains<'a> {
    fn new(registry: &'a Registry, options: &'a Options) -> Self {
        let mut short_claims: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for host in registry.services.keys() {
            if let Some((name, ns)) = split_kube_host(host, &options.domain_suffix) {
                short_claims.entry(name).or_default().insert(ns);
            }
        }
        Domains {
            options,
            fqdns: registry.services.keys().map(String::as_str).collect(),
            short_claims,
        }
    }

    /// The FQDN, the FQDN with a trailing dot, then the short forms:
    /// - proxy in the service's namespace: `name`, `name.ns.svc`, `name.ns` (istiod);
    /// - proxy in another namespace: `name.ns`, `name.ns.svc` (istiod);
    /// - proxy without a namespace: `name` (only if no service of another namespace has the
    ///   same short name), `name.ns.svc`, `name.ns` (shadowplane's decision, so that
    ///   `Host: calcbackendsvc` works outside Kubernetes).
    ///
    /// An IP host gets just the IP (IPv6 in brackets).
    fn for_service(&self, svc: &Service) -> Vec<String> {
        let host = svc.hostname.as_str();
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => return vec![format!("[{host}]")],
            Ok(IpAddr::V4(_)) => return vec![host.to_string()],
            Err(_) => {}
        }
        let mut out = vec![host.to_string(), format!("{host}.")];
        if let Some((name, ns)) = split_kube_host(host, &self.options.domain_suffix) {
            let short = match self.options.proxy_namespace.as_deref() {
                Some(p) if p == ns => vec![
                    name.to_string(),
                    format!("{name}.{ns}.svc"),
                    format!("{name}.{ns}"),
                ],
                Some(_) => vec![format!("{name}.{ns}"), format!("{name}.{ns}.svc")],
                None => {
                    let mut v = Vec::new();
                    let unique = self
                        .short_claims
                        .get(name)
                        .is_none_or(|namespaces| namespaces.len() == 1);
                    if unique {
                        v.push(name.to_string());
                    }
                    v.push(format!("{name}.{ns}.svc"));
                    v.push(format!("{name}.{ns}"));
                    v
                }
            };
            out.extend(
                short
                    .into_iter()
                    .filter(|d| !self.fqdns.contains(d.as_str())),
            );
        }
        out
    }
}

/// `name.ns.svc.<suffix>` → (`name`, `ns`).
fn split_kube_host<'h>(host: &'h str, suffix: &str) -> Option<(&'h str, &'h str)> {
    let rest = host.strip_suffix(suffix)?.strip_suffix(".svc.")?;
    let (name, ns) = rest.split_once('.')?;
    if name.is_empty() || ns.is_empty() || ns.contains('.') || name.starts_with('*') {
        return None;
    }
    Some((name, ns))
}
