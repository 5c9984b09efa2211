//! Envoy xDS resources → the forwarder's [`Table`]. Pure: no I/O, no clock, no randomness.
//!
//! Two passes over every resource:
//! 1. [`fields`]: every field set (at any depth, inside `typed_config` too) must be on the
//!    forwarder's written-out list of supported fields; anything else is a [`CompileError`]
//!    naming the field path, e.g.
//!    `virtual_hosts[0].routes[2].route.hash_policy[0].filter_state`.
//! 2. The typed conversion below: values (enums, ranges, regexes, combinations) are checked
//!    and Envoy's defaults applied.
//!
//! Any error rejects the whole update (the xDS client NACKs it with every error and keeps the
//! previous table). A reference to a resource that has not arrived is not an error: a listener
//! whose RDS route configuration is missing answers 404 (Envoy would keep it warming), an EDS
//! cluster whose ClusterLoadAssignment is missing has no endpoints (503), a route to a missing
//! cluster answers 503 NC.

mod descriptors;
mod fields;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster_v3;
use envoy_types::pb::envoy::config::core::v3 as core_v3;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_v3;
use envoy_types::pb::envoy::config::listener::v3 as listener_v3;
use envoy_types::pb::envoy::config::route::v3 as route_v3;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors_v3;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault_v3;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_v3;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http_v3;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher_v3;
use envoy_types::pb::envoy::r#type::v3 as type_v3;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::DynamicMessage;

use super::table::{self, *};

/// Type URLs of the four resource types.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
}

/// The current resources of each type, by resource name, plus their versions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsResources {
    pub listeners: BTreeMap<String, listener_v3::Listener>,
    pub routes: BTreeMap<String, route_v3::RouteConfiguration>,
    pub clusters: BTreeMap<String, cluster_v3::Cluster>,
    pub endpoints: BTreeMap<String, endpoint_v3::ClusterLoadAssignment>,
    /// Copied to [`Table::versions`].
    pub versions: Versions,
}

impl XdsResources {
    /// The translator's output, keyed by resource name, all types at `version`.
    pub fn from_translator(res: &shadowplane_translator::Resources, version: &str) -> Self {
        XdsResources {
            listeners: res
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.clone()))
                .collect(),
            routes: res
                .routes
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            clusters: res
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.clone()))
                .collect(),
            endpoints: res
                .endpoints
                .iter()
                .map(|e| (e.cluster_name.clone(), e.clone()))
                .collect(),
            versions: Versions {
                listeners: version.to_string(),
                route_configs: version.to_string(),
                clusters: version.to_string(),
                endpoints: version.to_string(),
            },
        }
    }
}

/// A resource field the forwarder cannot honour (or an invalid value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{} {resource_name:?}: {field}: {message}", short_type(type_url))]
pub struct CompileError {
    pub type_url: String,
    pub resource_name: String,
    /// Path of the field inside the resource (`virtual_hosts[0].routes[2].route.timeout`);
    /// empty for the resource as a whole.
    pub field: String,
    pub message: String,
}

fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// The `error_detail.message` of a NACK: one line per error.
pub fn error_detail(errors: &[CompileError]) -> String {
    let mut lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    lines.dedup();
    format!(
        "shadowplane forwarder rejected {} field(s):\n{}",
        lines.len(),
        lines.join("\n")
    )
}

/// Errors of one resource.
struct Errs<'a> {
    type_url: &'static str,
    name: &'a str,
    out: &'a mut Vec<CompileError>,
}

impl Errs<'_> {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(CompileError {
            type_url: self.type_url.to_string(),
            resource_name: self.name.to_string(),
            field: field.into(),
            message: message.into(),
        });
    }
}

fn at(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn idx(path: &str, field: &str, i: usize) -> String {
    format!("{}[{i}]", at(path, field))
}

/// Drop the typed-conversion errors (from index `typed_from` on) that concern a field the
/// field check (errors `walk_from..typed_from`) already reported, or its parent.
fn dedup_overlapping(errors: &mut Vec<CompileError>, walk_from: usize, typed_from: usize) {
    /// `inner` is `outer` or a field below it.
    fn within(inner: &str, outer: &str) -> bool {
        outer.is_empty()
            || inner == outer
            || (inner.starts_with(outer)
                && matches!(inner.as_bytes().get(outer.len()), Some(b'.' | b'[')))
    }
    let walked: Vec<CompileError> = errors[walk_from..typed_from].to_vec();
    let mut i = typed_from;
    while i < errors.len() {
        let t = &errors[i];
        let overlaps = walked.iter().any(|w| {
            w.type_url == t.type_url
                && w.resource_name == t.resource_name
                && (within(&w.field, &t.field) || within(&t.field, &w.field))
        });
        if overlaps {
            errors.remove(i);
        } else {
            i += 1;
        }
    }
}

/// Pass 1 over one resource.
fn check_fields<M: Message>(msg: &M, full_name: &str, e: &mut Errs<'_>) {
    let pool = descriptors::pool();
    let Some(desc) = pool.get_message_by_name(full_name) else {
        e.err(
            "",
            format!("{full_name} is not in the envoy api descriptors"),
        );
        return;
    };
    match DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()) {
        Ok(dynamic) => {
            for u in fields::unsupported_fields(&dynamic, "") {
                e.err(u.field, u.message);
            }
        }
        Err(err) => e.err("", format!("does not decode as {full_name}: {err}")),
    }
}

/// Fields of an encoded resource (as received on the wire) that the forwarder's Envoy API does
/// not know (field numbers of a newer API). prost drops those when decoding, so the xDS client
/// checks the raw bytes with this before decoding.
pub fn unknown_fields(type_url: &str, name: &str, bytes: &[u8]) -> Vec<CompileError> {
    let full_name = type_url.rsplit('/').next().unwrap_or(type_url);
    let pool = descriptors::pool();
    let mut out = Vec::new();
    let Some(desc) = pool.get_message_by_name(full_name) else {
        return out;
    };
    if let Ok(dynamic) = DynamicMessage::decode(desc, bytes) {
        for u in fields::unsupported_fields(&dynamic, "") {
            if u.field
                .rsplit('.')
                .next()
                .is_some_and(|f| f.starts_with('#'))
            {
                out.push(CompileError {
                    type_url: type_url.to_string(),
                    resource_name: name.to_string(),
                    field: u.field,
                    message: u.message,
                });
            }
        }
    }
    out
}

/// Compile a complete set of resources into a table. `Err` lists every problem found.
pub fn compile(res: &XdsResources) -> Result<Table, Vec<CompileError>> {
    let mut errors = Vec::new();
    let mut table = Table {
        versions: res.versions.clone(),
        ..Table::default()
    };

    for (name, l) in &res.listeners {
        let mut e = Errs {
            type_url: type_url::LISTENER,
            name,
            out: &mut errors,
        };
        let walk_from = e.out.len();
        check_fields(l, "envoy.config.listener.v3.Listener", &mut e);
        let typed_from = e.out.len();
        if let Some(listener) = compile_listener(name, l, &mut e) {
            table
                .listeners
                .insert(listener.name.clone(), Arc::new(listener));
        }
        dedup_overlapping(e.out, walk_from, typed_from);
    }
    for (name, rc) in &res.routes {
        let mut e = Errs {
            type_url: type_url::ROUTE,
            name,
            out: &mut errors,
        };
        let walk_from = e.out.len();
        check_fields(rc, "envoy.config.route.v3.RouteConfiguration", &mut e);
        let typed_from = e.out.len();
        let compiled = compile_route_config(name, rc, &mut e);
        table.route_configs.insert(name.clone(), Arc::new(compiled));
        dedup_overlapping(e.out, walk_from, typed_from);
    }
    for (name, cla) in &res.endpoints {
        let mut e = Errs {
            type_url: type_url::ENDPOINT,
            name,
            out: &mut errors,
        };
        check_fields(
            cla,
            "envoy.config.endpoint.v3.ClusterLoadAssignment",
            &mut e,
        );
    }
    for (name, c) in &res.clusters {
        let mut e = Errs {
            type_url: type_url::CLUSTER,
            name,
            out: &mut errors,
        };
        let walk_from = e.out.len();
        check_fields(c, "envoy.config.cluster.v3.Cluster", &mut e);
        let typed_from = e.out.len();
        if let Some(cluster) = compile_cluster(name, c, res, &mut e) {
            table.clusters.insert(name.clone(), Arc::new(cluster));
        }
        dedup_overlapping(e.out, walk_from, typed_from);
    }
    // Errors found while compiling a CLA for a cluster are attributed to the CLA; the same CLA
    // may back several clusters: report each once.
    let mut seen = HashSet::new();
    errors.retain(|e| seen.insert(e.clone()));
    if errors.is_empty() {
        Ok(table)
    } else {
        Err(errors)
    }
}

// ================================================================================ listeners

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
const PREVIOUS_HOSTS: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
const PREVIOUS_PRIORITIES: &str =
    "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig";
const HTTP_PROTOCOL_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

fn decode_any<M: Message + Default>(
    any: &Any,
    expected: &str,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<M> {
    if any.type_url != expected {
        e.err(
            path,
            format!("expected typed config {expected:?}, got {:?}", any.type_url),
        );
        return None;
    }
    match M::decode(any.value.as_slice()) {
        Ok(m) => Some(m),
        Err(err) => {
            e.err(path, format!("{expected:?} does not decode: {err}"));
            None
        }
    }
}

fn socket_address(
    addr: Option<&core_v3::Address>,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<(String, u16)> {
    let Some(core_v3::address::Address::SocketAddress(sa)) = addr.and_then(|a| a.address.as_ref())
    else {
        e.err(path, "a socket_address is required");
        return None;
    };
    if sa.protocol != core_v3::socket_address::Protocol::Tcp as i32 {
        e.err(
            at(path, "socket_address.protocol"),
            "only tcp is supported by the forwarder",
        );
    }
    let port = match sa.port_specifier {
        Some(core_v3::socket_address::PortSpecifier::PortValue(p)) => p,
        _ => {
            e.err(
                at(path, "socket_address.port_value"),
                "a port_value is required",
            );
            return None;
        }
    };
    let Ok(port) = u16::try_from(port) else {
        e.err(
            at(path, "socket_address.port_value"),
            format!("port {port} is out of range (0-65535)"),
        );
        return None;
    };
    Some((sa.address.clone(), port))
}

fn compile_listener(name: &str, l: &listener_v3::Listener, e: &mut Errs<'_>) -> Option<Listener> {
    let (address, port) = socket_address(l.address.as_ref(), "address", e)?;
    let Ok(ip) = address.parse::<IpAddr>() else {
        e.err(
            "address.socket_address.address",
            format!("listener address {address:?} must be an ip literal"),
        );
        return None;
    };
    if l.filter_chains.len() != 1 {
        e.err(
            "filter_chains",
            format!(
                "exactly one filter chain is supported, got {}",
                l.filter_chains.len()
            ),
        );
        return None;
    }
    let chain = &l.filter_chains[0];
    if chain.filters.len() != 1 {
        e.err(
            "filter_chains[0].filters",
            format!(
                "exactly one network filter (the http connection manager) is supported, got {}",
                chain.filters.len()
            ),
        );
        return None;
    }
    let filter = &chain.filters[0];
    let path = "filter_chains[0].filters[0].typed_config";
    let Some(listener_v3::filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        e.err(path, "the http connection manager needs a typed_config");
        return None;
    };
    let hcm: hcm_v3::HttpConnectionManager = decode_any(any, HCM, path, e)?;
    if hcm.codec_type != hcm_v3::http_connection_manager::CodecType::Auto as i32 {
        e.err(
            at(path, "codec_type"),
            "only AUTO is supported (the forwarder serves http/1.1 and h2c)",
        );
    }
    let route_config_name = match &hcm.route_specifier {
        Some(hcm_v3::http_connection_manager::RouteSpecifier::Rds(rds)) => {
            match rds
                .config_source
                .as_ref()
                .and_then(|c| c.config_source_specifier.as_ref())
            {
                Some(
                    core_v3::config_source::ConfigSourceSpecifier::Ads(_)
                    | core_v3::config_source::ConfigSourceSpecifier::Self_(_),
                ) => {}
                _ => e.err(
                    at(path, "rds.config_source"),
                    "only an ads or self config source is supported",
                ),
            }
            rds.route_config_name.clone()
        }
        _ => {
            e.err(
                at(path, "rds"),
                "the route configuration must come from rds",
            );
            return None;
        }
    };
    let mut fault_filter = false;
    let mut cors_filter = false;
    let mut router = false;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let fpath = idx(path, "http_filters", i);
        if router {
            e.err(&fpath, "the router must be the last http filter");
        }
        let Some(hcm_v3::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            e.err(
                at(&fpath, "typed_config"),
                format!("http filter {:?} needs a typed_config", f.name),
            );
            continue;
        };
        let tpath = at(&fpath, "typed_config");
        match any.type_url.as_str() {
            ROUTER => router = true,
            FAULT => {
                let fault: Option<fault_v3::HttpFault> = decode_any(any, FAULT, &tpath, e);
                if fault.is_some_and(|f| f != fault_v3::HttpFault::default()) {
                    e.err(
                        &tpath,
                        "filter-level fault config is not supported; configure faults per route",
                    );
                }
                if f.name != "envoy.filters.http.fault" {
                    e.err(
                        at(&fpath, "name"),
                        "the fault filter must be named envoy.filters.http.fault",
                    );
                }
                fault_filter = true;
            }
            CORS => {
                if f.name != "envoy.filters.http.cors" {
                    e.err(
                        at(&fpath, "name"),
                        "the cors filter must be named envoy.filters.http.cors",
                    );
                }
                cors_filter = true;
            }
            other => e.err(
                &tpath,
                format!(
                    "http filter {:?} ({other}) is not supported by the forwarder",
                    f.name
                ),
            ),
        }
    }
    if !router {
        e.err(
            at(path, "http_filters"),
            "the last http filter must be envoy.filters.http.router",
        );
    }
    Some(Listener {
        name: ListenerKey::new(name),
        address,
        port,
        socket_addr: SocketAddr::new(ip, port),
        stat_prefix: hcm.stat_prefix.clone(),
        route_config_name,
        fault_filter,
        cors_filter,
        use_remote_address: hcm.use_remote_address.is_some_and(|b| b.value),
    })
}

// ============================================================================ route configs

/// Envoy's default `max_direct_response_body_size_bytes`.
const DEFAULT_MAX_DIRECT_RESPONSE_BODY: u32 = 4096;

/// Build the domain index of a list of virtual hosts (Envoy `RouteMatcher` constructor):
/// `*` alone is the default, a leading `*` a suffix wildcard, a trailing `*` a prefix
/// wildcard, anything else exact; all lowercased. Duplicates keep the first vhost.
pub fn domain_index(vhosts: &[VirtualHost]) -> DomainIndex {
    let mut index = DomainIndex::default();
    for (i, vh) in vhosts.iter().enumerate() {
        for d in &vh.domains {
            let d = d.to_ascii_lowercase();
            if d == "*" {
                index.any.get_or_insert(i);
            } else if d.len() > 1 && d.starts_with('*') {
                index.suffixes.push((d[1..].to_string(), i));
            } else if d.len() > 1 && d.ends_with('*') {
                index.prefixes.push((d[..d.len() - 1].to_string(), i));
            } else {
                index.exact.entry(d).or_insert(i);
            }
        }
    }
    // Longest first; stable sort keeps config order among equal lengths.
    index.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    index.prefixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    index
}

fn compile_route_config(
    name: &str,
    rc: &route_v3::RouteConfiguration,
    e: &mut Errs<'_>,
) -> RouteConfig {
    let max_body = rc
        .max_direct_response_body_size_bytes
        .map(|v| v.value)
        .unwrap_or(DEFAULT_MAX_DIRECT_RESPONSE_BODY);
    let rc_req = header_mutations(
        &rc.request_headers_to_add,
        &rc.request_headers_to_remove,
        "",
        "request_headers_to",
        e,
    );
    let rc_resp = header_mutations(
        &rc.response_headers_to_add,
        &rc.response_headers_to_remove,
        "",
        "response_headers_to",
        e,
    );
    let rc_mirrors = mirror_policies(&rc.request_mirror_policies, "", e);
    let mut seen_domains: HashMap<String, usize> = HashMap::new();
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
        let vpath = idx("", "virtual_hosts", vi);
        for (di, d) in vh.domains.iter().enumerate() {
            let lower = d.to_ascii_lowercase();
            if let Some(prev) = seen_domains.insert(lower, vi) {
                e.err(
                    idx(&vpath, "domains", di),
                    format!(
                        "domain {d:?} is already used by virtual host {:?} (envoy rejects duplicate domains)",
                        rc.virtual_hosts[prev].name
                    ),
                );
            }
        }
        let vh_req = header_mutations(
            &vh.request_headers_to_add,
            &vh.request_headers_to_remove,
            &vpath,
            "request_headers_to",
            e,
        );
        let vh_resp = header_mutations(
            &vh.response_headers_to_add,
            &vh.response_headers_to_remove,
            &vpath,
            "response_headers_to",
            e,
        );
        let vh_retry = vh
            .retry_policy
            .as_ref()
            .and_then(|r| retry_policy(r, &at(&vpath, "retry_policy"), e));
        let vh_mirrors = mirror_policies(&vh.request_mirror_policies, &vpath, e);
        let inherited = Inherited {
            retry: vh_retry.as_ref(),
            mirrors: if vh_mirrors.is_empty() {
                &rc_mirrors
            } else {
                &vh_mirrors
            },
            max_body,
        };
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (ri, r) in vh.routes.iter().enumerate() {
            let rpath = idx(&vpath, "routes", ri);
            if let Some(mut route) = compile_route(r, &rpath, &inherited, e) {
                // Route first, then virtual host, then route configuration.
                append_mutations(&mut route.request_headers, &vh_req);
                append_mutations(&mut route.request_headers, &rc_req);
                append_mutations(&mut route.response_headers, &vh_resp);
                append_mutations(&mut route.response_headers, &rc_resp);
                routes.push(route);
            }
        }
        virtual_hosts.push(VirtualHost {
            name: vh.name.clone(),
            domains: vh.domains.clone(),
            routes,
        });
    }
    let domains = domain_index(&virtual_hosts);
    RouteConfig {
        name: name.to_string(),
        virtual_hosts,
        domains,
        ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
        max_direct_response_body_size_bytes: max_body,
    }
}

fn append_mutations(into: &mut HeaderMutations, from: &HeaderMutations) {
    into.add.extend(from.add.iter().cloned());
    into.remove.extend(from.remove.iter().cloned());
}

/// Vhost / route-config settings a route inherits when it has none of its own.
struct Inherited<'a> {
    retry: Option<&'a RetryPolicy>,
    mirrors: &'a [MirrorPolicy],
    max_body: u32,
}

fn compile_route(
    r: &route_v3::Route,
    path: &str,
    inherited: &Inherited<'_>,
    e: &mut Errs<'_>,
) -> Option<Route> {
    let errors_before = e.out.len();
    let matcher = route_match(r.r#match.as_ref(), &at(path, "match"), e);
    let action = match &r.action {
        Some(route_v3::route::Action::Route(ra)) => {
            forward(ra, matcher.as_ref(), &at(path, "route"), inherited, e).map(Action::Forward)
        }
        Some(route_v3::route::Action::Redirect(rd)) => {
            redirect(rd, matcher.as_ref(), &at(path, "redirect"), e).map(Action::Redirect)
        }
        Some(route_v3::route::Action::DirectResponse(dr)) => {
            direct_response(dr, &at(path, "direct_response"), inherited.max_body, e)
                .map(Action::DirectResponse)
        }
        _ => {
            e.err(
                path,
                "the route has no route, redirect or direct_response action",
            );
            None
        }
    };
    let request_headers = header_mutations(
        &r.request_headers_to_add,
        &r.request_headers_to_remove,
        path,
        "request_headers_to",
        e,
    );
    let response_headers = header_mutations(
        &r.response_headers_to_add,
        &r.response_headers_to_remove,
        path,
        "response_headers_to",
        e,
    );
    let mut fault = None;
    let mut cors = None;
    let mut keys: Vec<&String> = r.typed_per_filter_config.keys().collect();
    keys.sort();
    for key in keys {
        let any = &r.typed_per_filter_config[key];
        let fpath = format!("{}[{key}]", at(path, "typed_per_filter_config"));
        match key.as_str() {
            "envoy.filters.http.fault" => {
                fault = decode_any::<fault_v3::HttpFault>(any, FAULT, &fpath, e)
                    .and_then(|f| compile_fault(&f, &fpath, e));
            }
            "envoy.filters.http.cors" => {
                cors = decode_any::<cors_v3::CorsPolicy>(any, CORS_POLICY, &fpath, e)
                    .and_then(|c| compile_cors(&c, &fpath, e));
            }
            other => e.err(
                &fpath,
                format!("per-route config for filter {other:?} is not supported by the forwarder"),
            ),
        }
    }
    if e.out.len() != errors_before {
        return None;
    }
    Some(Route {
        name: r.name.clone(),
        operation: r
            .decorator
            .as_ref()
            .map(|d| d.operation.clone())
            .filter(|o| !o.is_empty()),
        matcher: matcher?,
        action: action?,
        request_headers,
        response_headers,
        fault,
        cors,
    })
}

fn compile_regex(re: &str, path: &str, e: &mut Errs<'_>) -> Option<regex::Regex> {
    match regex::Regex::new(&format!("^(?:{re})$")) {
        Ok(r) => Some(r),
        Err(err) => {
            e.err(path, format!("regex {re:?} does not compile: {err}"));
            None
        }
    }
}

/// An unanchored regex (for rewrites, which replace matches inside the path).
fn compile_search_regex(re: &str, path: &str, e: &mut Errs<'_>) -> Option<regex::Regex> {
    match regex::Regex::new(re) {
        Ok(r) => Some(r),
        Err(err) => {
            e.err(path, format!("regex {re:?} does not compile: {err}"));
            None
        }
    }
}

fn route_match(
    m: Option<&route_v3::RouteMatch>,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<RouteMatch> {
    use route_v3::route_match::PathSpecifier;
    let Some(m) = m else {
        e.err(path, "a route needs a match");
        return None;
    };
    let case_sensitive = m.case_sensitive.map(|b| b.value).unwrap_or(true);
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_ascii_lowercase()
        }
    };
    let path_match = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => Some(PathMatch::Prefix(fold(p))),
        Some(PathSpecifier::Path(p)) => Some(PathMatch::Exact(fold(p))),
        Some(PathSpecifier::SafeRegex(re)) => {
            compile_regex(&re.regex, &at(path, "safe_regex.regex"), e).map(PathMatch::Regex)
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            if p.ends_with('/') || p.contains(['?', '#']) {
                e.err(
                    at(path, "path_separated_prefix"),
                    format!("{p:?} must not end with '/' or contain '?' or '#'"),
                );
            }
            Some(PathMatch::PathSeparatedPrefix(fold(p)))
        }
        _ => {
            e.err(
                path,
                "one of prefix, path, safe_regex or path_separated_prefix is required",
            );
            None
        }
    };
    let headers: Vec<_> = m
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| header_matcher(h, &idx(path, "headers", i), e))
        .collect();
    let query_parameters: Vec<_> = m
        .query_parameters
        .iter()
        .enumerate()
        .filter_map(|(i, q)| query_matcher(q, &idx(path, "query_parameters", i), e))
        .collect();
    Some(RouteMatch {
        path: path_match?,
        case_sensitive,
        headers,
        query_parameters,
        grpc_only: m.grpc.is_some(),
    })
}

fn string_matcher(
    m: &matcher_v3::StringMatcher,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<StringMatcher> {
    use matcher_v3::string_matcher::MatchPattern;
    let fold = |s: &str| {
        if m.ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let kind = match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => StringMatchKind::Exact(fold(s)),
        Some(MatchPattern::Prefix(s)) => StringMatchKind::Prefix(fold(s)),
        Some(MatchPattern::Suffix(s)) => StringMatchKind::Suffix(fold(s)),
        Some(MatchPattern::Contains(s)) => StringMatchKind::Contains(fold(s)),
        Some(MatchPattern::SafeRegex(re)) => {
            if m.ignore_case {
                e.err(
                    at(path, "ignore_case"),
                    "ignore_case cannot be used with safe_regex (envoy rejects it)",
                );
                return None;
            }
            StringMatchKind::Regex(compile_regex(&re.regex, &at(path, "safe_regex.regex"), e)?)
        }
        _ => {
            e.err(
                path,
                "a string matcher needs exact, prefix, suffix, contains or safe_regex",
            );
            return None;
        }
    };
    Some(StringMatcher {
        kind,
        ignore_case: m.ignore_case,
    })
}

fn header_key(name: &str, path: &str, e: &mut Errs<'_>) -> Option<HeaderKey> {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        ":method" => Some(HeaderKey::Method),
        ":authority" | "host" => Some(HeaderKey::Authority),
        ":scheme" => Some(HeaderKey::Scheme),
        ":path" => Some(HeaderKey::Path),
        _ => match http::HeaderName::from_bytes(lower.as_bytes()) {
            Ok(h) => Some(HeaderKey::Header(h)),
            Err(_) => {
                e.err(path, format!("{name:?} is not a valid header name"));
                None
            }
        },
    }
}

// Deprecated Envoy fields are still valid config and are honoured.
#[allow(deprecated)]
fn header_matcher(
    h: &route_v3::HeaderMatcher,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<HeaderMatcher> {
    use route_v3::header_matcher::HeaderMatchSpecifier as S;
    let key = header_key(&h.name, &at(path, "name"), e)?;
    let plain = |kind| {
        HeaderRule::String(StringMatcher {
            kind,
            ignore_case: false,
        })
    };
    let rule = match &h.header_match_specifier {
        // Envoy: no specifier = presence match.
        None => HeaderRule::Present(true),
        Some(S::PresentMatch(p)) => HeaderRule::Present(*p),
        // Deprecated exact_match: an empty value matches any value.
        Some(S::ExactMatch(s)) if s.is_empty() => HeaderRule::Present(true),
        Some(S::ExactMatch(s)) => plain(StringMatchKind::Exact(s.clone())),
        Some(S::PrefixMatch(s)) => plain(StringMatchKind::Prefix(s.clone())),
        Some(S::SuffixMatch(s)) => plain(StringMatchKind::Suffix(s.clone())),
        Some(S::ContainsMatch(s)) => plain(StringMatchKind::Contains(s.clone())),
        Some(S::SafeRegexMatch(re)) => plain(StringMatchKind::Regex(compile_regex(
            &re.regex,
            &at(path, "safe_regex_match.regex"),
            e,
        )?)),
        Some(S::RangeMatch(r)) => HeaderRule::Range {
            start: r.start,
            end: r.end,
        },
        Some(S::StringMatch(sm)) => {
            HeaderRule::String(string_matcher(sm, &at(path, "string_match"), e)?)
        }
    };
    Some(HeaderMatcher {
        key,
        rule,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn query_matcher(
    q: &route_v3::QueryParameterMatcher,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<QueryParameterMatcher> {
    use route_v3::query_parameter_matcher::QueryParameterMatchSpecifier as S;
    let value = match &q.query_parameter_match_specifier {
        Some(S::StringMatch(sm)) => Some(string_matcher(sm, &at(path, "string_match"), e)?),
        Some(S::PresentMatch(true)) => None,
        Some(S::PresentMatch(false)) => {
            e.err(
                at(path, "present_match"),
                "present_match: false is not supported; use true or a string_match",
            );
            return None;
        }
        None => {
            e.err(
                path,
                "a query parameter matcher needs string_match or present_match",
            );
            return None;
        }
    };
    Some(QueryParameterMatcher {
        name: q.name.clone(),
        value,
    })
}

fn duration(
    d: &envoy_types::pb::google::protobuf::Duration,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        e.err(path, "a negative duration is not allowed");
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn fraction(f: Option<&type_v3::FractionalPercent>) -> Fraction {
    use type_v3::fractional_percent::DenominatorType;
    match f {
        None => Fraction {
            numerator: 0,
            denominator: 100,
        },
        Some(f) => {
            let denominator = match DenominatorType::try_from(f.denominator) {
                Ok(DenominatorType::TenThousand) => 10_000,
                Ok(DenominatorType::Million) => 1_000_000,
                _ => 100,
            };
            Fraction {
                numerator: f.numerator.min(denominator),
                denominator,
            }
        }
    }
}

// Deprecated Envoy fields are still valid config and are honoured.
#[allow(deprecated)]
fn forward(
    ra: &route_v3::RouteAction,
    matcher: Option<&RouteMatch>,
    path: &str,
    inherited: &Inherited<'_>,
    e: &mut Errs<'_>,
) -> Option<Forward> {
    use route_v3::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    let clusters = match &ra.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => ClusterTarget::Single(c.clone()),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            ClusterTarget::Weighted(weighted_clusters(w, &at(path, "weighted_clusters"), e)?)
        }
        _ => {
            e.err(path, "a cluster or weighted_clusters is required");
            return None;
        }
    };
    let timeout = match &ra.timeout {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(d) => duration(d, &at(path, "timeout"), e).filter(|d| !d.is_zero()),
    };
    let max_grpc_timeout = ra
        .max_grpc_timeout
        .as_ref()
        .map(|d| duration(d, &at(path, "max_grpc_timeout"), e).filter(|d| !d.is_zero()));
    let retry = match &ra.retry_policy {
        Some(r) => retry_policy(r, &at(path, "retry_policy"), e),
        None => inherited.retry.cloned(),
    };
    let own_mirrors = mirror_policies(&ra.request_mirror_policies, path, e);
    let mirrors = if own_mirrors.is_empty() {
        inherited.mirrors.to_vec()
    } else {
        own_mirrors
    };
    let rewrite = match (&ra.prefix_rewrite, &ra.regex_rewrite) {
        (p, Some(_)) if !p.is_empty() => {
            e.err(
                at(path, "regex_rewrite"),
                "prefix_rewrite and regex_rewrite are mutually exclusive",
            );
            None
        }
        (p, None) if !p.is_empty() => {
            if matches!(matcher.map(|m| &m.path), Some(PathMatch::Regex(_))) {
                e.err(
                    at(path, "prefix_rewrite"),
                    "prefix_rewrite cannot be used with a safe_regex match (envoy rejects it); use regex_rewrite",
                );
            }
            Some(PathRewrite::Prefix(p.clone()))
        }
        (_, Some(rr)) => {
            regex_rewrite(rr, &at(path, "regex_rewrite"), e).map(|(pattern, substitution)| {
                PathRewrite::Regex {
                    pattern,
                    substitution,
                }
            })
        }
        _ => None,
    };
    let host_rewrite = match &ra.host_rewrite_specifier {
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) if !h.is_empty() => Some(h.clone()),
        _ => None,
    };
    let hash_policy = ra
        .hash_policy
        .iter()
        .enumerate()
        .filter_map(|(i, h)| hash_policy(h, &idx(path, "hash_policy", i), e))
        .collect();
    Some(Forward {
        clusters,
        timeout,
        max_grpc_timeout,
        retry,
        mirrors,
        rewrite,
        host_rewrite,
        hash_policy,
    })
}

// Deprecated Envoy fields are still valid config and are honoured.
#[allow(deprecated)]
fn weighted_clusters(
    w: &route_v3::WeightedCluster,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<WeightedClusters> {
    let mut clusters = Vec::with_capacity(w.clusters.len());
    let mut cumulative = Vec::with_capacity(w.clusters.len());
    let mut total = 0u64;
    for (i, c) in w.clusters.iter().enumerate() {
        let cpath = idx(path, "clusters", i);
        if c.name.is_empty() {
            e.err(at(&cpath, "name"), "a weighted cluster needs a name");
        }
        let weight = c.weight.map(|v| v.value).unwrap_or(0);
        total += u64::from(weight);
        cumulative.push(total);
        clusters.push(WeightedCluster {
            name: c.name.clone(),
            weight,
            request_headers: header_mutations(
                &c.request_headers_to_add,
                &c.request_headers_to_remove,
                &cpath,
                "request_headers_to",
                e,
            ),
            response_headers: header_mutations(
                &c.response_headers_to_add,
                &c.response_headers_to_remove,
                &cpath,
                "response_headers_to",
                e,
            ),
        });
    }
    if clusters.is_empty() {
        e.err(
            at(path, "clusters"),
            "weighted_clusters needs at least one cluster",
        );
        return None;
    }
    if let Some(t) = w.total_weight {
        if u64::from(t.value) != total {
            e.err(
                at(path, "total_weight"),
                format!(
                    "total_weight {} differs from the sum of weights {total}",
                    t.value
                ),
            );
        }
    }
    if total == 0 {
        e.err(at(path, "clusters"), "the weights sum to 0");
        return None;
    }
    Some(WeightedClusters {
        clusters,
        cumulative,
        total,
    })
}

/// Envoy's RE2 substitution `\1` → the regex crate's `${1}`; a literal `$` is escaped.
fn convert_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn regex_rewrite(
    rr: &matcher_v3::RegexMatchAndSubstitute,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<(regex::Regex, String)> {
    let Some(pattern) = &rr.pattern else {
        e.err(at(path, "pattern"), "a pattern is required");
        return None;
    };
    let re = compile_search_regex(&pattern.regex, &at(path, "pattern.regex"), e)?;
    Some((re, convert_substitution(&rr.substitution)))
}

fn retry_policy(r: &route_v3::RetryPolicy, path: &str, e: &mut Errs<'_>) -> Option<RetryPolicy> {
    let errors_before = e.out.len();
    let mut retry_on = RetryOn::default();
    for token in r
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        match RetryOn::TOKENS.iter().find(|(n, _)| *n == token) {
            Some((_, bit)) => retry_on |= *bit,
            None => e.err(
                at(path, "retry_on"),
                format!("retry condition {token:?} is not supported by the forwarder"),
            ),
        }
    }
    let mut retriable_status_codes = Vec::new();
    for (i, code) in r.retriable_status_codes.iter().enumerate() {
        match u16::try_from(*code) {
            Ok(c) if (100..600).contains(&c) => retriable_status_codes.push(c),
            _ => e.err(
                idx(path, "retriable_status_codes", i),
                format!("{code} is not an http status code"),
            ),
        }
    }
    let mut previous_hosts = false;
    for (i, p) in r.retry_host_predicate.iter().enumerate() {
        let ppath = idx(path, "retry_host_predicate", i);
        let typed = match &p.config_type {
            Some(route_v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(a)) => {
                Some(a.type_url.as_str())
            }
            _ => None,
        };
        if p.name == "envoy.retry_host_predicates.previous_hosts"
            && typed.is_none_or(|t| t == PREVIOUS_HOSTS)
        {
            previous_hosts = true;
        } else {
            e.err(
                ppath,
                format!(
                    "retry host predicate {:?} is not supported by the forwarder",
                    p.name
                ),
            );
        }
    }
    if let Some(p) = &r.retry_priority {
        let typed = match &p.config_type {
            Some(route_v3::retry_policy::retry_priority::ConfigType::TypedConfig(a)) => {
                Some(a.type_url.as_str())
            }
            _ => None,
        };
        if !(p.name == "envoy.retry_priorities.previous_priorities"
            && typed.is_none_or(|t| t == PREVIOUS_PRIORITIES))
        {
            e.err(
                at(path, "retry_priority"),
                format!(
                    "retry priority {:?} is not supported by the forwarder",
                    p.name
                ),
            );
        }
    }
    let per_try_timeout = r
        .per_try_timeout
        .as_ref()
        .and_then(|d| duration(d, &at(path, "per_try_timeout"), e))
        .filter(|d| !d.is_zero());
    let (base_interval, max_interval) = match &r.retry_back_off {
        None => (
            DEFAULT_RETRY_BASE_INTERVAL,
            DEFAULT_RETRY_BASE_INTERVAL * 10,
        ),
        Some(b) => {
            let bpath = at(path, "retry_back_off");
            let base = b
                .base_interval
                .as_ref()
                .and_then(|d| duration(d, &at(&bpath, "base_interval"), e))
                .filter(|d| !d.is_zero());
            let Some(base) = base else {
                e.err(
                    at(&bpath, "base_interval"),
                    "a base_interval greater than 0 is required",
                );
                return None;
            };
            let max = b
                .max_interval
                .as_ref()
                .and_then(|d| duration(d, &at(&bpath, "max_interval"), e))
                .unwrap_or(base * 10);
            if max < base {
                e.err(
                    at(&bpath, "max_interval"),
                    "max_interval must not be below base_interval",
                );
            }
            (base, max)
        }
    };
    if e.out.len() != errors_before {
        return None;
    }
    Some(RetryPolicy {
        retry_on,
        retriable_status_codes,
        num_retries: r.num_retries.map(|n| n.value).unwrap_or(1),
        per_try_timeout,
        previous_hosts,
        host_selection_retry_max_attempts: u32::try_from(
            r.host_selection_retry_max_attempts.max(1),
        )
        .unwrap_or(u32::MAX),
        base_interval,
        max_interval,
    })
}

fn mirror_policies(
    ps: &[route_v3::route_action::RequestMirrorPolicy],
    path: &str,
    e: &mut Errs<'_>,
) -> Vec<MirrorPolicy> {
    let mut out = Vec::with_capacity(ps.len());
    for (i, p) in ps.iter().enumerate() {
        let ppath = idx(path, "request_mirror_policies", i);
        if p.cluster.is_empty() {
            e.err(at(&ppath, "cluster"), "a mirror policy needs a cluster");
            continue;
        }
        let fraction = match &p.runtime_fraction {
            None => Fraction::ALWAYS,
            Some(rf) => fraction(rf.default_value.as_ref()),
        };
        out.push(MirrorPolicy {
            cluster: p.cluster.clone(),
            fraction,
            disable_shadow_host_suffix_append: p.disable_shadow_host_suffix_append,
            host_rewrite: Some(p.host_rewrite_literal.clone()).filter(|h| !h.is_empty()),
        });
    }
    out
}

fn hash_policy(
    h: &route_v3::route_action::HashPolicy,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<HashPolicy> {
    use route_v3::route_action::hash_policy::PolicySpecifier as P;
    let kind = match &h.policy_specifier {
        Some(P::Header(hd)) => {
            match http::HeaderName::from_bytes(hd.header_name.to_ascii_lowercase().as_bytes()) {
                Ok(n) => HashPolicyKind::Header(n),
                Err(_) => {
                    e.err(
                        at(path, "header.header_name"),
                        format!("{:?} is not a valid header name", hd.header_name),
                    );
                    return None;
                }
            }
        }
        Some(P::Cookie(c)) => {
            if c.name.is_empty() {
                e.err(at(path, "cookie.name"), "a cookie name is required");
                return None;
            }
            HashPolicyKind::Cookie {
                name: c.name.clone(),
                ttl: c
                    .ttl
                    .as_ref()
                    .and_then(|d| duration(d, &at(path, "cookie.ttl"), e)),
                path: Some(c.path.clone()).filter(|p| !p.is_empty()),
            }
        }
        Some(P::ConnectionProperties(cp)) if cp.source_ip => HashPolicyKind::SourceIp,
        Some(P::ConnectionProperties(_)) => {
            e.err(
                at(path, "connection_properties.source_ip"),
                "source_ip: false hashes nothing; remove the policy",
            );
            return None;
        }
        Some(P::QueryParameter(q)) => HashPolicyKind::QueryParameter(q.name.clone()),
        _ => {
            e.err(
                path,
                "a hash policy needs header, cookie, connection_properties or query_parameter",
            );
            return None;
        }
    };
    Some(HashPolicy {
        kind,
        terminal: h.terminal,
    })
}

fn redirect(
    rd: &route_v3::RedirectAction,
    matcher: Option<&RouteMatch>,
    path: &str,
    e: &mut Errs<'_>,
) -> Option<Redirect> {
    use route_v3::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let scheme = match &rd.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let port = match rd.port_redirect {
        0 => None,
        p => match u16::try_from(p) {
            Ok(p) => Some(p),
            Err(_) => {
                e.err(
                    at(path, "port_redirect"),
                    format!("port {p} is out of range"),
                );
                return None;
            }
        },
    };
    let path_redirect = match &rd.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => Some(PathRedirect::Path(p.clone())),
        Some(P::PrefixRewrite(p)) => {
            if matches!(matcher.map(|m| &m.path), Some(PathMatch::Regex(_))) {
                e.err(
                    at(path, "prefix_rewrite"),
                    "prefix_rewrite cannot be used with a safe_regex match",
                );
            }
            Some(PathRedirect::Prefix(p.clone()))
        }
        Some(P::RegexRewrite(rr)) => {
            let (pattern, substitution) = regex_rewrite(rr, &at(path, "regex_rewrite"), e)?;
            Some(PathRedirect::Regex {
                pattern,
                substitution,
            })
        }
        _ => None,
    };
    let response_code = match C::try_from(rd.response_code) {
        Ok(C::MovedPermanently) => 301,
        Ok(C::Found) => 302,
        Ok(C::SeeOther) => 303,
        Ok(C::TemporaryRedirect) => 307,
        Ok(C::PermanentRedirect) => 308,
        Err(_) => {
            e.err(
                at(path, "response_code"),
                format!("unknown redirect response code {}", rd.response_code),
            );
            return None;
        }
    };
    Some(Redirect {
        scheme,
        host: Some(rd.host_redirect.clone()).filter(|h| !h.is_empty()),
        port,
        path: path_redirect,
        response_code,
        strip_query: rd.strip_query,
    })
}

fn direct_response(
    dr: &route_v3::DirectResponseAction,
    path: &str,
    max_body: u32,
    e: &mut Errs<'_>,
) -> Option<DirectResponse> {
    if !(200..600).contains(&dr.status) {
        e.err(
            at(path, "status"),
            format!("status {} is outside 200-599", dr.status),
        );
        return None;
    }
    let body = match dr.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(core_v3::data_source::Specifier::InlineString(s)) => {
            Some(bytes::Bytes::from(s.clone()))
        }
        Some(core_v3::data_source::Specifier::InlineBytes(b)) => {
            Some(bytes::Bytes::from(b.clone()))
        }
        Some(_) => {
            e.err(
                at(path, "body"),
                "only inline_string and inline_bytes bodies are supported",
            );
            return None;
        }
    };
    if let Some(b) = &body {
        if b.len() > max_body as usize {
            e.err(
                at(path, "body"),
                format!(
                    "body of {} bytes exceeds max_direct_response_body_size_bytes {max_body}",
                    b.len()
                ),
            );
            return None;
        }
    }
    Some(DirectResponse {
        status: dr.status as u16,
        body,
    })
}

/// Header values may hold Envoy substitution formatters (`%DOWNSTREAM_REMOTE_ADDRESS%`),
/// which the forwarder does not implement; `%%` is a literal `%`.
fn header_value_literal(value: &str, path: &str, e: &mut Errs<'_>) -> Option<String> {
    if !value.contains('%') {
        return Some(value.to_string());
    }
    let unescaped = value.replace("%%", "");
    if unescaped.contains('%') {
        e.err(
            path,
            format!("header value {value:?} uses a substitution formatter, which the forwarder does not support (write %% for a literal %)"),
        );
        return None;
    }
    Some(value.replace("%%", "%"))
}

// Deprecated Envoy fields are still valid config and are honoured.
#[allow(deprecated)]
fn header_mutations(
    add: &[core_v3::HeaderValueOption],
    remove: &[String],
    path: &str,
    prefix: &str,
    e: &mut Errs<'_>,
) -> HeaderMutations {
    use core_v3::header_value_option::HeaderAppendAction as A;
    let mut out = HeaderMutations::default();
    let add_field = format!("{prefix}add");
    let remove_field = format!("{prefix}remove");
    for (i, h) in add.iter().enumerate() {
        let hpath = idx(path, &add_field, i);
        let Some(hv) = &h.header else {
            e.err(at(&hpath, "header"), "a header is required");
            continue;
        };
        let key = hv.key.to_ascii_lowercase();
        if key.starts_with(':') {
            e.err(
                at(&hpath, "header.key"),
                format!("pseudo-header {key:?} cannot be set"),
            );
            continue;
        }
        let Ok(name) = http::HeaderName::from_bytes(key.as_bytes()) else {
            e.err(
                at(&hpath, "header.key"),
                format!("{:?} is not a valid header name", hv.key),
            );
            continue;
        };
        let raw = if hv.raw_value.is_empty() {
            hv.value.clone()
        } else {
            String::from_utf8_lossy(&hv.raw_value).into_owned()
        };
        let Some(literal) = header_value_literal(&raw, &at(&hpath, "header.value"), e) else {
            continue;
        };
        let Ok(value) = http::HeaderValue::from_str(&literal) else {
            e.err(
                at(&hpath, "header.value"),
                format!("{literal:?} is not a valid header value"),
            );
            continue;
        };
        let action = match (h.append, A::try_from(h.append_action)) {
            (Some(_), Ok(a)) if a != A::AppendIfExistsOrAdd => {
                e.err(&hpath, "append and append_action cannot both be set");
                continue;
            }
            (Some(b), _) => {
                if b.value {
                    AppendAction::AppendIfExistsOrAdd
                } else {
                    AppendAction::OverwriteIfExistsOrAdd
                }
            }
            (None, Ok(A::AppendIfExistsOrAdd)) => AppendAction::AppendIfExistsOrAdd,
            (None, Ok(A::AddIfAbsent)) => AppendAction::AddIfAbsent,
            (None, Ok(A::OverwriteIfExistsOrAdd)) => AppendAction::OverwriteIfExistsOrAdd,
            (None, Ok(A::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
            (None, Err(_)) => {
                e.err(
                    at(&hpath, "append_action"),
                    format!("unknown append action {}", h.append_action),
                );
                continue;
            }
        };
        out.add.push(HeaderAdd {
            name,
            value,
            action,
        });
    }
    for (i, r) in remove.iter().enumerate() {
        let lower = r.to_ascii_lowercase();
        let rpath = idx(path, &remove_field, i);
        if lower.starts_with(':') || lower == "host" {
            e.err(rpath, format!("{r:?} cannot be removed"));
            continue;
        }
        match http::HeaderName::from_bytes(lower.as_bytes()) {
            Ok(n) => out.remove.push(n),
            Err(_) => e.err(rpath, format!("{r:?} is not a valid header name")),
        }
    }
    out
}

fn compile_fault(f: &fault_v3::HttpFault, path: &str, e: &mut Errs<'_>) -> Option<Fault> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fd)) => Some(FaultDelay {
                fixed: duration(fd, &at(path, "delay.fixed_delay"), e)?,
                fraction: fraction(d.percentage.as_ref()),
            }),
            _ => {
                e.err(at(path, "delay"), "a fixed_delay is required");
                return None;
            }
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let kind = match &a.error_type {
                Some(fault_v3::fault_abort::ErrorType::HttpStatus(s)) if (200..600).contains(s) => {
                    AbortKind::Http(*s as u16)
                }
                Some(fault_v3::fault_abort::ErrorType::HttpStatus(s)) => {
                    e.err(
                        at(path, "abort.http_status"),
                        format!("{s} is outside 200-599"),
                    );
                    return None;
                }
                Some(fault_v3::fault_abort::ErrorType::GrpcStatus(s)) => AbortKind::Grpc(*s),
                _ => {
                    e.err(at(path, "abort"), "http_status or grpc_status is required");
                    return None;
                }
            };
            Some(FaultAbort {
                kind,
                fraction: fraction(a.percentage.as_ref()),
            })
        }
    };
    Some(Fault { delay, abort })
}

fn compile_cors(c: &cors_v3::CorsPolicy, path: &str, e: &mut Errs<'_>) -> Option<Cors> {
    let allow_origin = c
        .allow_origin_string_match
        .iter()
        .enumerate()
        .filter_map(|(i, m)| string_matcher(m, &idx(path, "allow_origin_string_match", i), e))
        .collect();
    let opt = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    let filter_enabled = match &c.filter_enabled {
        None => Fraction::ALWAYS,
        Some(rf) => fraction(rf.default_value.as_ref()),
    };
    Some(Cors {
        allow_origin,
        allow_methods: opt(&c.allow_methods),
        allow_headers: opt(&c.allow_headers),
        expose_headers: opt(&c.expose_headers),
        max_age: opt(&c.max_age),
        allow_credentials: c.allow_credentials.is_some_and(|b| b.value),
        forward_not_matching_preflights: c
            .forward_not_matching_preflights
            .map(|b| b.value)
            .unwrap_or(true),
        filter_enabled,
    })
}

// ================================================================================== clusters

/// Envoy's default `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default `dns_refresh_rate`.
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

// Deprecated Envoy fields are still valid config and are honoured.
#[allow(deprecated)]
fn compile_cluster(
    name: &str,
    c: &cluster_v3::Cluster,
    res: &XdsResources,
    e: &mut Errs<'_>,
) -> Option<Cluster> {
    use cluster_v3::cluster::{ClusterDiscoveryType, DiscoveryType as T, LbConfig, LbPolicy as L};
    let errors_before = e.out.len();
    let ty = match &c.cluster_discovery_type {
        None => Ok(T::Static),
        Some(ClusterDiscoveryType::Type(t)) => T::try_from(*t).map_err(|_| *t),
        Some(_) => Err(-1),
    };
    let dns_refresh = c
        .dns_refresh_rate
        .as_ref()
        .and_then(|d| duration(d, "dns_refresh_rate", e))
        .unwrap_or(DEFAULT_DNS_REFRESH);
    let discovery = match ty {
        Ok(T::Eds) => {
            let Some(eds) = &c.eds_cluster_config else {
                e.err(
                    "eds_cluster_config",
                    "an eds cluster needs eds_cluster_config",
                );
                return None;
            };
            match eds
                .eds_config
                .as_ref()
                .and_then(|s| s.config_source_specifier.as_ref())
            {
                Some(
                    core_v3::config_source::ConfigSourceSpecifier::Ads(_)
                    | core_v3::config_source::ConfigSourceSpecifier::Self_(_),
                ) => {}
                _ => e.err(
                    "eds_cluster_config.eds_config",
                    "only an ads or self config source is supported",
                ),
            }
            if c.load_assignment.is_some() {
                e.err(
                    "load_assignment",
                    "an eds cluster takes its endpoints from eds, not load_assignment",
                );
            }
            let service_name = if eds.service_name.is_empty() {
                name.to_string()
            } else {
                eds.service_name.clone()
            };
            Discovery::Eds { service_name }
        }
        Ok(T::Static) => Discovery::Static,
        Ok(T::StrictDns) => Discovery::StrictDns {
            refresh: dns_refresh,
        },
        Ok(T::LogicalDns) => Discovery::LogicalDns {
            refresh: dns_refresh,
        },
        Ok(other) => {
            e.err(
                "type",
                format!(
                    "cluster type {} is not supported by the forwarder",
                    other.as_str_name()
                ),
            );
            return None;
        }
        Err(t) => {
            e.err(
                "type",
                format!("cluster type {t} is not supported by the forwarder"),
            );
            return None;
        }
    };
    let lb = match L::try_from(c.lb_policy) {
        Ok(L::RoundRobin) => LbPolicy::RoundRobin,
        Ok(L::LeastRequest) => {
            let choice_count = match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(lr)) => {
                    lr.choice_count.map(|v| v.value).unwrap_or(2)
                }
                _ => 2,
            };
            if choice_count < 2 {
                e.err(
                    "least_request_lb_config.choice_count",
                    "choice_count must be at least 2",
                );
            }
            LbPolicy::LeastRequest { choice_count }
        }
        Ok(L::Random) => LbPolicy::Random,
        Ok(L::RingHash) => LbPolicy::ConsistentHash {
            kind: HashLbKind::RingHash,
        },
        Ok(L::Maglev) => LbPolicy::ConsistentHash {
            kind: HashLbKind::Maglev,
        },
        Ok(other) => {
            e.err(
                "lb_policy",
                format!(
                    "lb_policy {} is not supported by the forwarder",
                    other.as_str_name()
                ),
            );
            return None;
        }
        Err(_) => {
            e.err("lb_policy", format!("unknown lb_policy {}", c.lb_policy));
            return None;
        }
    };
    match (&c.lb_config, lb) {
        (None, _)
        | (Some(LbConfig::LeastRequestLbConfig(_)), LbPolicy::LeastRequest { .. })
        | (
            Some(LbConfig::RingHashLbConfig(_)),
            LbPolicy::ConsistentHash {
                kind: HashLbKind::RingHash,
            },
        )
        | (
            Some(LbConfig::MaglevLbConfig(_)),
            LbPolicy::ConsistentHash {
                kind: HashLbKind::Maglev,
            },
        ) => {}
        _ => e.err("lb_config", "the lb config does not match lb_policy"),
    }
    let connect_timeout = c
        .connect_timeout
        .as_ref()
        .and_then(|d| duration(d, "connect_timeout", e))
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let mut circuit_breakers = CircuitBreakers::default();
    if let Some(cb) = &c.circuit_breakers {
        for t in &cb.thresholds {
            // HIGH-priority thresholds only apply to high-priority routes, which the forwarder
            // does not have (RouteAction.priority is rejected): they never apply, as in Envoy.
            if t.priority != core_v3::RoutingPriority::Default as i32 {
                continue;
            }
            let v = |o: Option<envoy_types::pb::google::protobuf::UInt32Value>, d| {
                o.map(|x| x.value).unwrap_or(d)
            };
            circuit_breakers = CircuitBreakers {
                max_connections: v(t.max_connections, DEFAULT_MAX_CONNECTIONS),
                max_pending_requests: v(t.max_pending_requests, DEFAULT_MAX_PENDING_REQUESTS),
                max_requests: v(t.max_requests, DEFAULT_MAX_REQUESTS),
                max_retries: v(t.max_retries, DEFAULT_MAX_RETRIES),
            };
        }
    }
    let mut protocol = UpstreamProtocol::Http1;
    let mut idle_timeout = Some(Duration::from_secs(3600));
    let mut max_requests_per_connection = None;
    let mut max_connection_duration = None;
    let mut keys: Vec<&String> = c.typed_extension_protocol_options.keys().collect();
    keys.sort();
    for key in keys {
        let any = &c.typed_extension_protocol_options[key];
        let kpath = format!("typed_extension_protocol_options[{key}]");
        if key != HTTP_PROTOCOL_OPTIONS_KEY {
            e.err(
                &kpath,
                format!("protocol options {key:?} are not supported by the forwarder"),
            );
            continue;
        }
        let Some(opts) = decode_any::<upstream_http_v3::HttpProtocolOptions>(
            any,
            HTTP_PROTOCOL_OPTIONS,
            &kpath,
            e,
        ) else {
            continue;
        };
        if let Some(common) = &opts.common_http_protocol_options {
            let cpath = at(&kpath, "common_http_protocol_options");
            if let Some(d) = &common.idle_timeout {
                idle_timeout = duration(d, &at(&cpath, "idle_timeout"), e).filter(|d| !d.is_zero());
            }
            if let Some(d) = &common.max_connection_duration {
                max_connection_duration =
                    duration(d, &at(&cpath, "max_connection_duration"), e).filter(|d| !d.is_zero());
            }
            max_requests_per_connection = common
                .max_requests_per_connection
                .map(|v| v.value)
                .filter(|v| *v > 0);
        }
        use upstream_http_v3::http_protocol_options::{
            explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
        };
        match &opts.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(x)) => match &x.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => protocol = UpstreamProtocol::Http2,
                Some(ProtocolConfig::HttpProtocolOptions(_)) | None => {}
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => e.err(
                    at(&kpath, "explicit_http_config.http3_protocol_options"),
                    "http/3 upstreams are not supported by the forwarder",
                ),
            },
            None => {}
            Some(_) => e.err(&kpath, "only explicit_http_config is supported"),
        }
    }
    let tcp_keepalive = c
        .upstream_connection_options
        .as_ref()
        .and_then(|u| u.tcp_keepalive.as_ref())
        .map(|k| TcpKeepalive {
            probes: k.keepalive_probes.map(|v| v.value),
            time: k
                .keepalive_time
                .map(|v| Duration::from_secs(u64::from(v.value))),
            interval: k
                .keepalive_interval
                .map(|v| Duration::from_secs(u64::from(v.value))),
        });
    let outlier_detection = c
        .outlier_detection
        .as_ref()
        .and_then(|o| outlier_detection(o, e));
    let healthy_panic_threshold = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
        .map(|p| p.value)
        .unwrap_or(50.0);
    if !(0.0..=100.0).contains(&healthy_panic_threshold) {
        e.err(
            "common_lb_config.healthy_panic_threshold",
            "must be within 0-100",
        );
    }
    let (endpoints, endpoints_pending) = match &discovery {
        Discovery::Eds { service_name } => match res.endpoints.get(service_name) {
            Some(cla) => {
                let mut ce = Errs {
                    type_url: type_url::ENDPOINT,
                    name: service_name,
                    out: e.out,
                };
                (cla_endpoints(cla, "", true, &mut ce), false)
            }
            None => (Vec::new(), true),
        },
        _ => match &c.load_assignment {
            Some(cla) => (
                cla_endpoints(
                    cla,
                    "load_assignment",
                    matches!(discovery, Discovery::Static),
                    e,
                ),
                false,
            ),
            None => (Vec::new(), false),
        },
    };
    if e.out.len() != errors_before {
        return None;
    }
    Some(Cluster {
        name: name.to_string(),
        discovery,
        lb,
        connect_timeout,
        circuit_breakers,
        protocol,
        idle_timeout,
        max_requests_per_connection,
        max_connection_duration,
        tcp_keepalive,
        outlier_detection,
        healthy_panic_threshold,
        endpoints,
        endpoints_pending,
    })
}

fn outlier_detection(
    o: &cluster_v3::OutlierDetection,
    e: &mut Errs<'_>,
) -> Option<OutlierDetection> {
    let u = |v: Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
        v.map(|x| x.value).unwrap_or(d)
    };
    // Success-rate ejection (Envoy enables it by default) is not implemented: it must be off.
    if u(o.enforcing_success_rate, 100) != 0 {
        e.err(
            "outlier_detection.enforcing_success_rate",
            "success-rate outlier detection is not supported by the forwarder; set enforcing_success_rate: 0",
        );
    }
    if o.split_external_local_origin_errors && u(o.enforcing_local_origin_success_rate, 100) != 0 {
        e.err(
            "outlier_detection.enforcing_local_origin_success_rate",
            "success-rate outlier detection is not supported by the forwarder; set enforcing_local_origin_success_rate: 0",
        );
    }
    let d = |v: &Option<envoy_types::pb::google::protobuf::Duration>,
             field: &str,
             default: Duration,
             e: &mut Errs<'_>| {
        v.as_ref()
            .and_then(|x| duration(x, &format!("outlier_detection.{field}"), e))
            .unwrap_or(default)
    };
    Some(OutlierDetection {
        consecutive_5xx: u(o.consecutive_5xx, 5),
        consecutive_gateway_failure: u(o.consecutive_gateway_failure, 5),
        consecutive_local_origin_failure: u(o.consecutive_local_origin_failure, 5),
        interval: d(&o.interval, "interval", Duration::from_secs(10), e),
        base_ejection_time: d(
            &o.base_ejection_time,
            "base_ejection_time",
            Duration::from_secs(30),
            e,
        ),
        max_ejection_percent: u(o.max_ejection_percent, 10),
        enforcing_consecutive_5xx: u(o.enforcing_consecutive_5xx, 100),
        enforcing_consecutive_gateway_failure: u(o.enforcing_consecutive_gateway_failure, 0),
        enforcing_consecutive_local_origin_failure: u(
            o.enforcing_consecutive_local_origin_failure,
            100,
        ),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
    })
}

/// Endpoints of a ClusterLoadAssignment. `ip_only`: addresses must be IP literals (EDS,
/// STATIC); DNS clusters may name hosts.
fn cla_endpoints(
    cla: &endpoint_v3::ClusterLoadAssignment,
    path: &str,
    ip_only: bool,
    e: &mut Errs<'_>,
) -> Vec<Endpoint> {
    use core_v3::HealthStatus as H;
    let mut out = Vec::new();
    for (li, loc) in cla.endpoints.iter().enumerate() {
        let lpath = idx(path, "endpoints", li);
        if loc.priority != 0 {
            e.err(
                at(&lpath, "priority"),
                format!(
                    "priority {} is not supported by the forwarder (one priority level)",
                    loc.priority
                ),
            );
            continue;
        }
        let locality = loc.locality.as_ref().map(|l| {
            [l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("/")
        });
        for (ei, lb) in loc.lb_endpoints.iter().enumerate() {
            let epath = idx(&lpath, "lb_endpoints", ei);
            match H::try_from(lb.health_status) {
                Ok(H::Unhealthy | H::Draining | H::Timeout) => continue,
                Ok(_) => {}
                Err(_) => {
                    e.err(
                        at(&epath, "health_status"),
                        format!("unknown health status {}", lb.health_status),
                    );
                    continue;
                }
            }
            let Some(endpoint_v3::lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier
            else {
                e.err(at(&epath, "endpoint"), "an endpoint is required");
                continue;
            };
            let Some((host, port)) =
                socket_address(ep.address.as_ref(), &at(&epath, "endpoint.address"), e)
            else {
                continue;
            };
            let ip = host.parse::<IpAddr>().ok();
            if ip_only && ip.is_none() {
                e.err(
                    at(&epath, "endpoint.address.socket_address.address"),
                    format!("{host:?} is not an ip address (only dns clusters may name hosts)"),
                );
                continue;
            }
            let weight = lb.load_balancing_weight.map(|w| w.value).unwrap_or(1);
            if weight == 0 {
                e.err(
                    at(&epath, "load_balancing_weight"),
                    "a weight must be at least 1",
                );
                continue;
            }
            out.push(Endpoint {
                host,
                port,
                socket_addr: ip.map(|ip| SocketAddr::new(ip, port)),
                weight,
                locality: locality.clone().filter(|l| !l.is_empty()),
            });
        }
    }
    out
}

#[allow(dead_code)]
fn _assert_table_is_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<table::Table>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowplane_translator::{translate_files, Options, SourceFile};
    use std::path::{Path, PathBuf};

    fn cases_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/translate")
    }

    fn read_inputs(case: &Path) -> Vec<SourceFile> {
        let mut paths = Vec::new();
        let single = case.join("input.yaml");
        if single.is_file() {
            paths.push(single);
        }
        if let Ok(dir) = std::fs::read_dir(case.join("input")) {
            paths.extend(dir.flatten().map(|e| e.path()));
        }
        paths.sort();
        paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .map(|p| SourceFile {
                path: p.display().to_string(),
                text: std::fs::read_to_string(&p).expect("readable test input"),
            })
            .collect()
    }

    fn translate_case(name: &str) -> XdsResources {
        let case = cases_dir().join(name);
        // Cases' options.yaml are the golden test's business; the config source is ads here
        // (what serve gives the forwarder), `self` is covered by its own test.
        let options = Options::default();
        let t = translate_files(&read_inputs(&case), &options);
        XdsResources::from_translator(&t.resources, "v1")
    }

    /// Cases whose translation uses a feature the forwarder rejects, with the field named.
    const EXPECTED_REJECTIONS: &[(&str, &str)] = &[("dr-tls", "transport_socket")];

    #[test]
    fn every_golden_compiles_or_names_the_unsupported_field() {
        let mut checked = 0;
        let mut entries: Vec<_> = std::fs::read_dir(cases_dir())
            .expect("testdata/translate exists")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for case in entries {
            let name = case
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let res = translate_case(&name);
            let expected = EXPECTED_REJECTIONS.iter().find(|(n, _)| *n == name);
            match (compile(&res), expected) {
                (Ok(table), None) => {
                    assert_eq!(table.listeners.len(), res.listeners.len(), "{name}");
                    assert_eq!(table.clusters.len(), res.clusters.len(), "{name}");
                    assert_eq!(table.route_configs.len(), res.routes.len(), "{name}");
                    // Every route of the translation is in the table.
                    let routes_in = |rcs: usize| rcs;
                    let n_src: usize = res
                        .routes
                        .values()
                        .flat_map(|r| &r.virtual_hosts)
                        .map(|v| v.routes.len())
                        .sum();
                    let n_tab: usize = table
                        .route_configs
                        .values()
                        .flat_map(|r| &r.virtual_hosts)
                        .map(|v| v.routes.len())
                        .sum();
                    assert_eq!(routes_in(n_tab), n_src, "{name}");
                    // The debug view serializes.
                    assert!(table.debug_json().is_object());
                }
                (Err(errors), None) => {
                    panic!("{name}: unexpected rejection:\n{}", error_detail(&errors))
                }
                (Ok(_), Some((_, field))) => {
                    panic!("{name}: expected a rejection naming {field}")
                }
                (Err(errors), Some((_, field))) => assert!(
                    errors.iter().all(|e| e.field.contains(field)),
                    "{name}: {}",
                    error_detail(&errors)
                ),
            }
            checked += 1;
        }
        assert!(checked > 50, "only {checked} golden cases found");
    }

    #[test]
    fn seed_calc_mirror_compiles_to_the_expected_table() {
        let table = compile(&translate_case("seed-calc-mirror")).expect("the seed compiles");
        let l = &table.listeners[&ListenerKey::new("0.0.0.0_8080")];
        assert_eq!(l.port, 8080);
        assert_eq!(l.route_config_name, "8080");
        let rc = &table.route_configs["8080"];
        assert!(rc.ignore_port_in_host_matching);
        let vh = crate::forwarder::matcher::find_virtual_host(rc, "calcbackendsvc:8080")
            .expect("short name matches");
        assert_eq!(vh.routes.len(), 2);
        // Route 0: user-agent regex → v2, no mirror.
        let r0 = &vh.routes[0];
        assert!(
            matches!(&r0.matcher.headers[0].rule, HeaderRule::String(StringMatcher { kind: StringMatchKind::Regex(re), .. }) if re.is_match("x Mobile y") && !re.is_match("desktop"))
        );
        let Action::Forward(f0) = &r0.action else {
            panic!("forward")
        };
        assert!(
            matches!(&f0.clusters, ClusterTarget::Single(c) if c == "outbound|8080|v2|calcbackendsvc.challengeistio.svc.cluster.local")
        );
        assert!(f0.mirrors.is_empty());
        assert_eq!(f0.timeout, None, "timeout: 0s disables the timeout");
        let retry = f0.retry.as_ref().expect("istio's default retry policy");
        assert_eq!(retry.num_retries, 2);
        assert!(retry
            .retry_on
            .contains(RetryOn::CONNECT_FAILURE | RetryOn::REFUSED_STREAM));
        assert!(retry
            .retry_on
            .contains(RetryOn::GRPC_UNAVAILABLE | RetryOn::GRPC_CANCELLED));
        assert!(!retry.retry_on.contains(RetryOn::FIVE_XX));
        assert!(retry.previous_hosts);
        assert_eq!(retry.host_selection_retry_max_attempts, 5);
        // Route 1: → v1, mirrored 100% to v3 with the -shadow suffix.
        let Action::Forward(f1) = &vh.routes[1].action else {
            panic!("forward")
        };
        assert_eq!(f1.mirrors.len(), 1);
        let m = &f1.mirrors[0];
        assert_eq!(
            m.cluster,
            "outbound|8080|v3|calcbackendsvc.challengeistio.svc.cluster.local"
        );
        assert_eq!(
            m.fraction,
            Fraction {
                numerator: 100,
                denominator: 100
            }
        );
        assert_eq!(
            m.shadow_host("calcbackendsvc:8080"),
            "calcbackendsvc-shadow:8080"
        );
        let c = &table.clusters["outbound|8080|v3|calcbackendsvc.challengeistio.svc.cluster.local"];
        assert_eq!(c.lb, LbPolicy::LeastRequest { choice_count: 2 });
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.circuit_breakers.max_requests, u32::MAX);
        assert!(matches!(&c.discovery, Discovery::Eds { service_name } if service_name == &c.name));
        assert!(!c.endpoints_pending);
    }

    fn seed() -> XdsResources {
        translate_case("seed-calc-mirror")
    }

    fn first_route_action(res: &mut XdsResources) -> &mut route_v3::RouteAction {
        let rc = res.routes.get_mut("8080").expect("rds 8080");
        match rc.virtual_hosts[0].routes[0].action.as_mut() {
            Some(route_v3::route::Action::Route(ra)) => ra,
            _ => panic!("route action"),
        }
    }

    fn only_error(res: &XdsResources) -> CompileError {
        let errors = compile(res).expect_err("rejected");
        assert_eq!(errors.len(), 1, "{}", error_detail(&errors));
        errors.into_iter().next().expect("one error")
    }

    #[test]
    fn unsupported_fields_are_named() {
        // filter_state hash policy.
        let mut res = seed();
        first_route_action(&mut res)
            .hash_policy
            .push(route_v3::route_action::HashPolicy {
                policy_specifier: Some(
                    route_v3::route_action::hash_policy::PolicySpecifier::FilterState(
                        route_v3::route_action::hash_policy::FilterState { key: "k".into() },
                    ),
                ),
                terminal: false,
            });
        let e = only_error(&res);
        assert_eq!(e.type_url, type_url::ROUTE);
        assert_eq!(e.resource_name, "8080");
        assert_eq!(
            e.field,
            "virtual_hosts[0].routes[0].route.hash_policy[0].filter_state"
        );

        // CLUSTER_PROVIDED lb policy.
        let mut res = seed();
        let name = "outbound|8080|v1|calcbackendsvc.challengeistio.svc.cluster.local";
        res.clusters.get_mut(name).expect("v1").lb_policy =
            cluster_v3::cluster::LbPolicy::ClusterProvided as i32;
        let e = only_error(&res);
        assert_eq!(
            (
                e.type_url.as_str(),
                e.resource_name.as_str(),
                e.field.as_str()
            ),
            (type_url::CLUSTER, name, "lb_policy")
        );
        assert!(e.message.contains("CLUSTER_PROVIDED"), "{}", e.message);

        // An unknown retry condition.
        let mut res = seed();
        first_route_action(&mut res)
            .retry_policy
            .as_mut()
            .expect("retry")
            .retry_on = "5xx,retriable-headers".into();
        let e = only_error(&res);
        assert_eq!(
            e.field,
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on"
        );
        assert!(e.message.contains("retriable-headers"));

        // A route-level field the forwarder does not implement.
        let mut res = seed();
        first_route_action(&mut res).idle_timeout =
            Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 5,
                nanos: 0,
            });
        assert_eq!(
            only_error(&res).field,
            "virtual_hosts[0].routes[0].route.idle_timeout"
        );

        // A per-route config for an unknown filter.
        let mut res = seed();
        res.routes.get_mut("8080").expect("rds").virtual_hosts[0].routes[0]
            .typed_per_filter_config
            .insert(
                "envoy.filters.http.lua".into(),
                Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
                            .into(),
                    value: vec![],
                },
            );
        let errors = compile(&res).expect_err("rejected");
        assert!(
            errors.iter().any(|e| e.field
                == "virtual_hosts[0].routes[0].typed_per_filter_config[envoy.filters.http.lua]"),
            "{}",
            error_detail(&errors)
        );

        // A field inside a typed_config Any (HCM).
        let mut res = seed();
        let l = res.listeners.get_mut("0.0.0.0_8080").expect("listener");
        let Some(listener_v3::filter::ConfigType::TypedConfig(any)) =
            &mut l.filter_chains[0].filters[0].config_type
        else {
            panic!("hcm")
        };
        let mut hcm =
            hcm_v3::HttpConnectionManager::decode(any.value.as_slice()).expect("hcm decodes");
        hcm.xff_num_trusted_hops = 2;
        any.value = hcm.encode_to_vec();
        assert_eq!(
            only_error(&res).field,
            "filter_chains[0].filters[0].typed_config.xff_num_trusted_hops"
        );
    }

    #[test]
    fn self_config_source_is_accepted_and_api_config_source_rejected() {
        use core_v3::config_source::ConfigSourceSpecifier as S;
        let with = |spec: S| {
            let mut res = seed();
            for c in res.clusters.values_mut() {
                if let Some(eds) = c.eds_cluster_config.as_mut() {
                    eds.eds_config
                        .as_mut()
                        .expect("eds_config")
                        .config_source_specifier = Some(spec.clone());
                }
            }
            let l = res.listeners.get_mut("0.0.0.0_8080").expect("listener");
            let Some(listener_v3::filter::ConfigType::TypedConfig(any)) =
                &mut l.filter_chains[0].filters[0].config_type
            else {
                panic!("hcm")
            };
            let mut hcm = hcm_v3::HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
            if let Some(hcm_v3::http_connection_manager::RouteSpecifier::Rds(rds)) =
                hcm.route_specifier.as_mut()
            {
                rds.config_source
                    .as_mut()
                    .expect("config source")
                    .config_source_specifier = Some(spec.clone());
            }
            any.value = hcm.encode_to_vec();
            res
        };
        let self_source = S::Self_(core_v3::SelfConfigSource {
            transport_api_version: core_v3::ApiVersion::V3 as i32,
        });
        compile(&with(self_source)).expect("self config source is the same server");
        let api = S::ApiConfigSource(core_v3::ApiConfigSource {
            api_type: core_v3::api_config_source::ApiType::Grpc as i32,
            ..Default::default()
        });
        let errors = compile(&with(api)).expect_err("a separate rds/eds server is not supported");
        assert!(
            errors.iter().any(|e| e.field
                == "filter_chains[0].filters[0].typed_config.rds.config_source.api_config_source"),
            "{}",
            error_detail(&errors)
        );
        assert!(
            errors
                .iter()
                .any(|e| e.field == "eds_cluster_config.eds_config.api_config_source"),
            "{}",
            error_detail(&errors)
        );
    }

    #[test]
    fn missing_references_are_not_errors() {
        let mut res = seed();
        res.routes.clear();
        res.endpoints.clear();
        let table = compile(&res).expect("missing rds/eds is not an error");
        assert!(table.route_configs.is_empty());
        assert!(table
            .clusters
            .values()
            .all(|c| c.endpoints_pending && c.endpoints.is_empty()));
    }

    #[test]
    fn endpoints_honour_weights_health_and_priority() {
        let mut res = seed();
        let name = "outbound|8080|v1|calcbackendsvc.challengeistio.svc.cluster.local";
        let lb =
            |ip: &str, w: Option<u32>, health: core_v3::HealthStatus| endpoint_v3::LbEndpoint {
                host_identifier: Some(endpoint_v3::lb_endpoint::HostIdentifier::Endpoint(
                    endpoint_v3::Endpoint {
                        address: Some(core_v3::Address {
                            address: Some(core_v3::address::Address::SocketAddress(
                                core_v3::SocketAddress {
                                    address: ip.into(),
                                    port_specifier: Some(
                                        core_v3::socket_address::PortSpecifier::PortValue(9000),
                                    ),
                                    ..Default::default()
                                },
                            )),
                        }),
                        ..Default::default()
                    },
                )),
                health_status: health as i32,
                load_balancing_weight: w
                    .map(|value| envoy_types::pb::google::protobuf::UInt32Value { value }),
                ..Default::default()
            };
        res.endpoints.insert(
            name.into(),
            endpoint_v3::ClusterLoadAssignment {
                cluster_name: name.into(),
                endpoints: vec![endpoint_v3::LocalityLbEndpoints {
                    lb_endpoints: vec![
                        lb("10.0.0.1", Some(3), core_v3::HealthStatus::Healthy),
                        lb("10.0.0.2", None, core_v3::HealthStatus::Unknown),
                        lb("10.0.0.3", None, core_v3::HealthStatus::Draining),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let table = compile(&res).expect("compiles");
        let eps = &table.clusters[name].endpoints;
        assert_eq!(eps.len(), 2, "the draining endpoint is left out");
        assert_eq!(
            eps[0].socket_addr,
            Some("10.0.0.1:9000".parse().expect("literal"))
        );
        assert_eq!((eps[0].weight, eps[1].weight), (3, 1));

        res.endpoints.get_mut(name).expect("cla").endpoints[0].priority = 1;
        let e = only_error(&res);
        assert_eq!(
            (e.type_url.as_str(), e.field.as_str()),
            (type_url::ENDPOINT, "endpoints[0].priority")
        );

        res.endpoints.get_mut(name).expect("cla").endpoints[0].priority = 0;
        res.endpoints.get_mut(name).expect("cla").endpoints[0]
            .lb_endpoints
            .push(lb("calc.example", None, core_v3::HealthStatus::Healthy));
        let e = only_error(&res);
        assert_eq!(
            e.field,
            "endpoints[0].lb_endpoints[3].endpoint.address.socket_address.address"
        );
    }

    #[test]
    fn domain_index_orders_wildcards_longest_first() {
        let vh = |n: &str, d: &[&str]| VirtualHost {
            name: n.into(),
            domains: d.iter().map(|s| s.to_string()).collect(),
            routes: vec![],
        };
        let idx = domain_index(&[
            vh("a", &["*.com", "Foo.*"]),
            vh("b", &["*.example.com", "foo.bar.*", "*"]),
            vh("c", &["EXACT.com"]),
        ]);
        assert_eq!(
            idx.suffixes,
            vec![(".example.com".to_string(), 1), (".com".to_string(), 0)]
        );
        assert_eq!(
            idx.prefixes,
            vec![("foo.bar.".to_string(), 1), ("foo.".to_string(), 0)]
        );
        assert_eq!(idx.exact.get("exact.com"), Some(&2));
        assert_eq!(idx.any, Some(1));
    }

    #[test]
    fn substitution_is_converted_from_re2() {
        assert_eq!(
            convert_substitution(r"/\2/instance/\1"),
            "/${2}/instance/${1}"
        );
        assert_eq!(convert_substitution("a$b"), "a$$b");
    }
}
