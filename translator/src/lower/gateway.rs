//! Gateway → gateway listeners (`http.<port>` route configs) and which VirtualServices bind to them.
//!
//! Each HTTP (HTTP2, GRPC) server becomes a listener `<bind>_<port>` (the server's `bind`, or
//! [`Options::bind_address`]) with RDS `http.<port>` (`http.<port>.<bind>` when the server
//! sets `bind`). Servers on the same listener, across Gateways, share it and its route
//! configuration, as istiod merges the servers of one gateway proxy.
//!
//! The route configuration has one virtual host per matching host (`<host>:<port>`, domains
//! `[host]`), filled with the routes of every VirtualService bound to one of the listener's
//! Gateways whose hosts intersect the server's hosts, in input order, with catch-all routes
//! moved to the end (istiod's `SortVHostRoutes`). Without any, the route configuration has a
//! single `blackhole:<port>` virtual host (domains `["*"]`, no routes: Envoy answers 404).
//!
//! Not implemented: HTTPS/TLS servers (skipped with a warning), and istiod's collapsing of
//! virtual hosts with identical routes into one (each host keeps its own virtual host here,
//! which routes the same way).

use std::collections::{BTreeMap, BTreeSet};

use crate::diag::{Code, Diagnostic};
use crate::ir::{Listener, RouteConfig, VirtualHost};
use crate::istio::{GatewaySpec, Server, Spec};
use crate::lower::destination_rule::RuleIndex;
use crate::lower::route::matcher::is_catch_all;
use crate::lower::virtual_service::{host_covers, CompiledVs};
use crate::source::Resource;
use crate::Options;

/// A Gateway resource.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GatewayRef<'a> {
    pub res: &'a Resource,
    pub spec: &'a GatewaySpec,
}

/// Gateways by `namespace/name` (the first definition wins; duplicates are reported by the
/// parser).
pub(crate) type GatewayIndex<'a> = BTreeMap<String, GatewayRef<'a>>;

/// Index the Gateway resources.
pub(crate) fn index(resources: &[Resource]) -> GatewayIndex<'_> {
    let mut out = GatewayIndex::new();
    for res in resources {
        if let Spec::Gateway(spec) = &res.spec {
            out.entry(format!("{}/{}", res.namespace(), res.name()))
                .or_insert(GatewayRef { res, spec });
        }
    }
    out
}

/// One gateway server that made it into a listener.
struct BoundServer<'a> {
    gateway: &'a str,
    gateway_namespace: &'a str,
    server: &'a Server,
}

/// The servers sharing one listener.
struct Group<'a> {
    address: String,
    port: u32,
    route_config_name: String,
    servers: Vec<BoundServer<'a>>,
}

fn is_wildcard_address(a: &str) -> bool {
    a == "0.0.0.0" || a == "::" || a == "[::]"
}

/// Build the gateway listeners and route configurations. `taken` are the sidecar listeners
/// already built: a gateway server on one of their ports would collide, so it is reported
/// and skipped.
pub(crate) fn build(
    gateways: &GatewayIndex<'_>,
    vss: &[CompiledVs<'_>],
    rules: &RuleIndex,
    options: &Options,
    taken: &[Listener],
    diags: &mut Vec<Diagnostic>,
) -> (Vec<Listener>, Vec<RouteConfig>) {
    let mut groups: BTreeMap<String, Group<'_>> = BTreeMap::new();
    for (key, gw) in gateways {
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let field = format!("spec.servers[{i}]");
            let mut report = |d: Diagnostic, f: &str| diags.push(gw.res.diag(d, f));
            let protocol = server.port.protocol.to_ascii_uppercase();
            match protocol.as_str() {
                "HTTP" | "HTTP2" | "GRPC" => {}
                "HTTPS" | "TLS" => {
                    report(
                        Diagnostic::warning(
                            Code::UnsupportedField,
                            format!("{protocol} gateway servers are not supported by shadowplane; the server is skipped"),
                        )
                        .value(server.port.protocol.clone())
                        .hint("terminate TLS in front of shadowplane and use an HTTP server"),
                        &format!("{field}.port.protocol"),
                    );
                    continue;
                }
                _ => {
                    report(
                        Diagnostic::warning(
                            Code::UnsupportedField,
                            format!(
                                "gateway server protocol {:?} is not supported; only HTTP, HTTP2 and GRPC servers are translated and the server is skipped",
                                server.port.protocol
                            ),
                        )
                        .value(server.port.protocol.clone())
                        .hint("use protocol HTTP"),
                        &format!("{field}.port.protocol"),
                    );
                    continue;
                }
            }
            for (present, f, what) in [
                (
                    server.tls.is_some(),
                    "tls",
                    "tls settings on an HTTP server (httpsRedirect)",
                ),
                (
                    server.default_endpoint.is_some(),
                    "defaultEndpoint",
                    "defaultEndpoint",
                ),
                (
                    server.port.target_port.is_some(),
                    "port.targetPort",
                    "targetPort",
                ),
            ] {
                if present {
                    report(
                        Diagnostic::warning(
                            Code::UnsupportedField,
                            format!("{what} is not supported by shadowplane and is ignored"),
                        )
                        .hint("remove the field, or expect it to have no effect"),
                        &format!("{field}.{f}"),
                    );
                }
            }
            if server.port.number == 0 {
                report(
                    Diagnostic::error(Code::MissingField, "gateway server has no port number")
                        .hint("set port.number (the server is skipped until then)"),
                    &format!("{field}.port.number"),
                );
                continue;
            }
            if server.hosts.is_empty() {
                report(
                    Diagnostic::error(Code::MissingField, "gateway server has no hosts")
                        .hint("list the hosts it serves, or \"*\" for all (the server is skipped until then)"),
                    &format!("{field}.hosts"),
                );
                continue;
            }
            let port = server.port.number;
            let bind = server.bind.clone().filter(|b| !b.is_empty());
            let address = bind.clone().unwrap_or_else(|| options.bind_address.clone());
            let name = format!("{address}_{port}");
            if let Some(l) = taken.iter().find(|l| {
                l.port == port
                    && (l.address == address
                        || is_wildcard_address(&l.address)
                        || is_wildcard_address(&address))
            }) {
                report(
                    Diagnostic::error(
                        Code::InvalidValue,
                        format!(
                            "gateway server port {port} collides with listener {} generated for services on port {}",
                            l.name, l.port
                        ),
                    )
                    .value(port.to_string())
                    .hint("use a port no service uses for the gateway server (the server is skipped until then)"),
                    &format!("{field}.port.number"),
                );
                continue;
            }
            let group = groups.entry(name).or_insert_with(|| Group {
                address,
                port,
                route_config_name: match &bind {
                    Some(b) => format!("http.{port}.{b}"),
                    None => format!("http.{port}"),
                },
                servers: Vec::new(),
            });
            group.servers.push(BoundServer {
                gateway: key,
                gateway_namespace: gw.res.namespace(),
                server,
            });
        }
    }

    let mut listeners = Vec::new();
    let mut route_configs = Vec::new();
    for (name, group) in groups {
        let rc = route_config(&group, vss, rules, options);
        let uses = |f: fn(&crate::ir::Route) -> bool| {
            rc.virtual_hosts.iter().flat_map(|v| &v.routes).any(f)
        };
        listeners.push(Listener {
            name,
            address: group.address.clone(),
            port: group.port,
            route_config_name: rc.name.clone(),
            stat_prefix: format!("http.{}", group.port),
            fault_filter: uses(|r| r.fault.is_some()),
            cors_filter: uses(|r| r.cors.is_some()),
        });
        route_configs.push(rc);
    }
    (listeners, route_configs)
}

/// Split a server host into its namespace selector and host (`ns/host`; plain = `*/host`).
fn split_server_host(h: &str) -> (&str, &str) {
    match h.split_once('/') {
        Some((ns, host)) => (ns, host),
        None => ("*", h),
    }
}

/// The host a VirtualService host and a server host have in common: the narrower of the two,
/// or `None` when they do not intersect.
fn intersect(vs_host: &str, server_host: &str) -> Option<String> {
    if host_covers(server_host, vs_host) {
        Some(vs_host.to_string())
    } else if host_covers(vs_host, server_host) {
        Some(server_host.to_string())
    } else {
        None
    }
}

fn route_config(
    group: &Group<'_>,
    vss: &[CompiledVs<'_>],
    rules: &RuleIndex,
    options: &Options,
) -> RouteConfig {
    let context: BTreeSet<String> = group
        .servers
        .iter()
        .map(|s| s.gateway.to_string())
        .collect();
    // Host → VirtualServices (indices, input order).
    let mut hosts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (vi, vs) in vss.iter().enumerate() {
        for s in &group.servers {
            if !vs.binds_to(s.gateway) {
                continue;
            }
            for sh in &s.server.hosts {
                let (ns, server_host) = split_server_host(sh);
                let allowed = match ns {
                    "*" => true,
                    "." => vs.namespace() == s.gateway_namespace,
                    other => vs.namespace() == other,
                };
                if !allowed {
                    continue;
                }
                for vh in &vs.hosts {
                    if let Some(host) = intersect(&vh.host, server_host) {
                        let list = hosts.entry(host).or_default();
                        if !list.contains(&vi) {
                            list.push(vi);
                        }
                    }
                }
            }
        }
    }
    let mut virtual_hosts = Vec::new();
    for (host, list) in hosts {
        let routes: Vec<_> = list
            .iter()
            .flat_map(|&vi| vss[vi].routes(group.port, &context, rules, options))
            .collect();
        if routes.is_empty() {
            continue;
        }
        // Catch-alls last, relative order kept.
        let (mut ordered, catch_alls): (Vec<_>, Vec<_>) =
            routes.into_iter().partition(|r| !is_catch_all(&r.matcher));
        ordered.extend(catch_alls);
        virtual_hosts.push(VirtualHost {
            name: format!("{host}:{}", group.port),
            domains: vec![host],
            routes: ordered,
        });
    }
    virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
    if virtual_hosts.is_empty() {
        virtual_hosts.push(VirtualHost {
            name: format!("blackhole:{}", group.port),
            domains: vec!["*".to_string()],
            routes: Vec::new(),
        });
    }
    RouteConfig {
        name: group.route_config_name.clone(),
        virtual_hosts,
    }
}
