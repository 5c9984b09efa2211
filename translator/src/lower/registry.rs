//! ServiceEntry and WorkloadEntry → the service registry (what Kubernetes Services and
//! EndpointSlices give istiod): hosts, ports and endpoints with labels.
//!
//! Hosts are taken literally, as istiod does for ServiceEntries: `calcbackendsvc` stays
//! `calcbackendsvc` (no namespace expansion). The first ServiceEntry to define a host wins.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::diag::{Code, Diagnostic, ResourceRef};
use crate::istio::{self, ServiceEntrySpec, Spec, WorkloadEntrySpec};
use crate::source::Resource;
use crate::Options;

/// How a service's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints listed (or selected WorkloadEntries): EDS.
    Static,
    /// Endpoints are DNS names (or the host itself): STRICT_DNS.
    Dns,
    /// `DNS_ROUND_ROBIN`: LOGICAL_DNS.
    DnsRoundRobin,
    /// `NONE`: no clusters' endpoints known (passthrough); clusters get no endpoints.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    /// Anything not HTTP-like (TCP, TLS, HTTPS, MONGO, ...): no HTTP listener.
    Other,
}

impl Protocol {
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Other)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub number: u32,
    pub name: String,
    pub protocol: Protocol,
    /// Endpoint port when an endpoint does not name this port (defaults to `number`).
    pub target_port: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoint {
    pub address: String,
    /// Port name → endpoint port.
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub weight: Option<u32>,
    pub locality: Option<String>,
}

impl ServiceEndpoint {
    /// The endpoint's port for a service port: the named override, else the target port.
    pub fn port_for(&self, port: &ServicePort) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .unwrap_or(port.target_port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Fully qualified host as written in the ServiceEntry (`calcbackendsvc.ns.svc.cluster.local`).
    pub hostname: String,
    pub namespace: String,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub endpoints: Vec<ServiceEndpoint>,
    /// The ServiceEntry that defined it.
    pub source: ResourceRef,
}

/// All known services, keyed by hostname.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    pub services: BTreeMap<String, Service>,
}

impl Registry {
    pub fn get(&self, hostname: &str) -> Option<&Service> {
        self.services.get(hostname)
    }
}

const RESOLUTIONS: &str = "NONE, STATIC, DNS, DNS_ROUND_ROBIN";
const LOCATIONS: &str = "MESH_EXTERNAL, MESH_INTERNAL";
const PROTOCOLS: &str =
    "HTTP, HTTP2, GRPC, GRPC-WEB, HTTP_PROXY, HTTPS, TCP, TLS, UDP, MONGO, REDIS, MYSQL";

/// Build the registry from every ServiceEntry (and the WorkloadEntries they select), in input
/// order. Invalid entries are reported and skipped; the rest is kept.
pub fn build(resources: &[Resource], _options: &Options, diags: &mut Vec<Diagnostic>) -> Registry {
    // By namespace (input order within each): a ServiceEntry only selects the WorkloadEntries
    // of its own namespace, so it need not look at the others.
    let mut workloads: BTreeMap<&str, Vec<Workload<'_>>> = BTreeMap::new();
    for w in collect_workload_entries(resources, diags) {
        workloads.entry(w.res.namespace()).or_default().push(w);
    }
    let mut registry = Registry::default();
    for res in resources {
        if let Spec::ServiceEntry(se) = &res.spec {
            let candidates = workloads
                .get(res.namespace())
                .map_or(&[][..], Vec::as_slice);
            add_service_entry(res, se, candidates, &mut registry, diags);
        }
    }
    registry
}

/// A WorkloadEntry with a usable address, its labels already merged.
struct Workload<'a> {
    res: &'a Resource,
    spec: &'a WorkloadEntrySpec,
    address: String,
    /// `spec.labels` merged over `metadata.labels`.
    labels: BTreeMap<String, String>,
}

fn collect_workload_entries<'a>(
    resources: &'a [Resource],
    diags: &mut Vec<Diagnostic>,
) -> Vec<Workload<'a>> {
    let mut out = Vec::new();
    for res in resources {
        let Spec::WorkloadEntry(we) = &res.spec else {
            continue;
        };
        let address = match we.address.as_deref().map(str::trim) {
            Some(a) if !a.is_empty() => a.to_string(),
            _ => {
                diags.push(
                    res.diag(
                        Diagnostic::error(Code::MissingField, "workload entry has no address"),
                        "spec.address",
                    )
                    .hint("set spec.address to the workload's IP address (or a DNS name for DNS ServiceEntries); this WorkloadEntry is ignored"),
                );
                continue;
            }
        };
        let mut labels = res.metadata.labels.clone();
        labels.extend(we.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        out.push(Workload {
            res,
            spec: we,
            address,
            labels,
        });
    }
    out
}

fn parse_resolution(
    res: &Resource,
    se: &ServiceEntrySpec,
    diags: &mut Vec<Diagnostic>,
) -> Option<Resolution> {
    let Some(raw) = se.resolution.as_deref() else {
        return Some(Resolution::None);
    };
    match raw {
        "NONE" => Some(Resolution::None),
        "STATIC" => Some(Resolution::Static),
        "DNS" => Some(Resolution::Dns),
        "DNS_ROUND_ROBIN" => Some(Resolution::DnsRoundRobin),
        "DYNAMIC_DNS" => {
            diags.push(
                res.diag(
                    Diagnostic::warning(
                        Code::UnsupportedField,
                        "resolution \"DYNAMIC_DNS\" is not supported: treated as DNS",
                    ),
                    "spec.resolution",
                )
                .value(raw)
                .hint("use DNS (STRICT_DNS clusters resolving each host) to make this explicit"),
            );
            Some(Resolution::Dns)
        }
        other => {
            diags.push(
                res.diag(
                    Diagnostic::error(Code::InvalidValue, format!("unknown resolution {other:?}")),
                    "spec.resolution",
                )
                .value(other)
                .hint(format!(
                    "use one of {RESOLUTIONS}; this ServiceEntry is ignored"
                )),
            );
            None
        }
    }
}

/// Istio's protocol names (case-insensitive) mapped onto what matters here.
fn parse_protocol(raw: &str) -> Option<Protocol> {
    match raw.to_ascii_lowercase().as_str() {
        "http" | "http_proxy" => Some(Protocol::Http),
        "http2" => Some(Protocol::Http2),
        "grpc" | "grpc-web" => Some(Protocol::Grpc),
        "https" | "tcp" | "tls" | "udp" | "mongo" | "redis" | "mysql" => Some(Protocol::Other),
        _ => None,
    }
}

/// The protocol a port name implies, Istio style: `http`, `http-foo`, `http2-foo`, `grpc-foo`.
fn protocol_from_name(name: &str) -> Option<Protocol> {
    let lower = name.to_ascii_lowercase();
    let prefix = lower.split('-').next().unwrap_or("");
    match prefix {
        "http" => Some(Protocol::Http),
        "http2" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        _ => None,
    }
}

fn is_valid_static_address(addr: &str) -> bool {
    addr.parse::<IpAddr>().is_ok() || addr.starts_with("unix://")
}

/// An IP address or a CIDR block (`10.0.0.0/8`).
fn is_ip_or_cidr(addr: &str) -> bool {
    match addr.split_once('/') {
        None => addr.parse::<IpAddr>().is_ok(),
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
    }
}

fn valid_port(n: u32) -> bool {
    (1..=65535).contains(&n)
}

fn parse_ports(
    res: &Resource,
    se: &ServiceEntrySpec,
    diags: &mut Vec<Diagnostic>,
) -> Vec<ServicePort> {
    let mut ports: Vec<ServicePort> = Vec::new();
    let mut numbers: BTreeMap<u32, usize> = BTreeMap::new();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in se.ports.iter().enumerate() {
        // Field paths, for diagnostics only.
        let path = |suffix: &str| format!("spec.ports[{i}]{suffix}");
        if !valid_port(p.number) {
            diags.push(
                res.diag(
                    Diagnostic::error(
                        Code::InvalidValue,
                        format!("invalid port number {}", p.number),
                    ),
                    &path(".number"),
                )
                .value(p.number.to_string())
                .hint("a port number must be between 1 and 65535; this port is ignored"),
            );
            continue;
        }
        let target_port = match p.target_port {
            None => p.number,
            Some(t) if valid_port(t) => t,
            Some(t) => {
                diags.push(
                    res.diag(
                        Diagnostic::error(Code::InvalidValue, format!("invalid target port {t}")),
                        &path(".targetPort"),
                    )
                    .value(t.to_string())
                    .hint("a target port must be between 1 and 65535 (omit it to use the port number); this port is ignored"),
                );
                continue;
            }
        };
        if let Some(first) = numbers.get(&p.number) {
            diags.push(
                res.diag(
                    Diagnostic::error(
                        Code::DuplicateName,
                        format!("duplicate port number {}", p.number),
                    ),
                    &path(".number"),
                )
                .value(p.number.to_string())
                .hint(format!(
                    "port {} is already defined by spec.ports[{first}]; this port is ignored",
                    p.number
                )),
            );
            continue;
        }
        if !p.name.is_empty() {
            if let Some(first) = names.get(p.name.as_str()) {
                diags.push(
                    res.diag(
                        Diagnostic::error(
                            Code::DuplicateName,
                            format!("duplicate port name {:?}", p.name),
                        ),
                        &path(".name"),
                    )
                    .value(p.name.clone())
                    .hint(format!(
                        "the name is already used by spec.ports[{first}]; give each port a unique name, this port is ignored"
                    )),
                );
                continue;
            }
        }
        let protocol = match p.protocol.as_deref() {
            Some(raw) => match parse_protocol(raw) {
                Some(proto) => proto,
                None => {
                    diags.push(
                        res.diag(
                            Diagnostic::error(
                                Code::InvalidValue,
                                format!("unknown protocol {raw:?} on port {}", p.number),
                            ),
                            &path(".protocol"),
                        )
                        .value(raw)
                        .hint(format!("use one of {PROTOCOLS}; this port is ignored")),
                    );
                    continue;
                }
            },
            None => match protocol_from_name(&p.name) {
                Some(proto) => proto,
                None => {
                    diags.push(
                        res.diag(
                            Diagnostic::info(
                                Code::MissingField,
                                format!(
                                    "port {} has no protocol and its name {:?} does not imply one: treated as TCP",
                                    p.number, p.name
                                ),
                            ),
                            &path(""),
                        )
                        .hint("set protocol: HTTP (or name the port http-...) to get an HTTP listener and routes for it"),
                    );
                    Protocol::Other
                }
            },
        };
        numbers.insert(p.number, i);
        if !p.name.is_empty() {
            names.insert(p.name.as_str(), i);
        }
        ports.push(ServicePort {
            number: p.number,
            name: p.name.clone(),
            protocol,
            target_port,
        });
    }
    ports
}

/// Inline `spec.endpoints[]` → service endpoints (invalid ones reported and skipped).
fn parse_endpoints(
    res: &Resource,
    se: &ServiceEntrySpec,
    resolution: Resolution,
    ports: &[ServicePort],
    diags: &mut Vec<Diagnostic>,
) -> Vec<ServiceEndpoint> {
    let port_names: BTreeSet<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    let mut out = Vec::new();
    for (i, ep) in se.endpoints.iter().enumerate() {
        // Field paths, for diagnostics only.
        let path = |suffix: &str| format!("spec.endpoints[{i}]{suffix}");
        let address = match ep.address.as_deref().map(str::trim) {
            Some(a) if !a.is_empty() => a.to_string(),
            _ => {
                diags.push(
                    res.diag(
                        Diagnostic::error(Code::MissingField, "endpoint has no address"),
                        &path(".address"),
                    )
                    .hint("set the endpoint's address (an IP address, or a DNS name with resolution DNS); this endpoint is ignored"),
                );
                continue;
            }
        };
        if resolution == Resolution::Static && !is_valid_static_address(&address) {
            diags.push(
                res.diag(
                    Diagnostic::error(
                        Code::InvalidValue,
                        format!("endpoint address {address:?} is not an IP address"),
                    ),
                    &path(".address"),
                )
                .value(address.clone())
                .hint("with resolution STATIC every endpoint must be an IP address or unix:// path; use resolution DNS for host names; this endpoint is ignored"),
            );
            continue;
        }
        let mut endpoint_ports = BTreeMap::new();
        for (name, &number) in &ep.ports {
            let port_path = || path(&format!(".ports.{name}"));
            if !port_names.contains(name.as_str()) {
                diags.push(
                    res.diag(
                        Diagnostic::error(
                            Code::InvalidValue,
                            format!("endpoint port {name:?} is not defined by the service entry"),
                        ),
                        &port_path(),
                    )
                    .value(name.clone())
                    .hint(format!(
                        "endpoint ports are keyed by a port name of spec.ports ({}); this mapping is ignored",
                        if port_names.is_empty() {
                            "none defined".to_string()
                        } else {
                            port_names.iter().copied().collect::<Vec<_>>().join(", ")
                        }
                    )),
                );
                continue;
            }
            if !valid_port(number) {
                diags.push(
                    res.diag(
                        Diagnostic::error(
                            Code::InvalidValue,
                            format!("invalid endpoint port {number}"),
                        ),
                        &port_path(),
                    )
                    .value(number.to_string())
                    .hint("a port number must be between 1 and 65535; this mapping is ignored"),
                );
                continue;
            }
            endpoint_ports.insert(name.clone(), number);
        }
        out.push(ServiceEndpoint {
            address,
            ports: endpoint_ports,
            labels: ep.labels.clone(),
            weight: ep.weight.filter(|w| *w > 0),
            locality: ep.locality.clone().filter(|l| !l.is_empty()),
        });
    }
    out
}

/// WorkloadEntries of the ServiceEntry's namespace whose labels include the selector's.
/// `workloads`: those of the ServiceEntry's namespace, in input order.
fn select_workloads(
    res: &Resource,
    selector: &istio::WorkloadSelector,
    resolution: Resolution,
    workloads: &[Workload<'_>],
    diags: &mut Vec<Diagnostic>,
) -> Vec<ServiceEndpoint> {
    let mut out = Vec::new();
    for w in workloads {
        if !selector
            .labels
            .iter()
            .all(|(k, v)| w.labels.get(k) == Some(v))
        {
            continue;
        }
        if resolution == Resolution::Static && !is_valid_static_address(&w.address) {
            diags.push(
                w.res
                    .diag(
                        Diagnostic::error(
                            Code::InvalidValue,
                            format!("workload address {:?} is not an IP address", w.address),
                        ),
                        "spec.address",
                    )
                    .value(w.address.clone())
                    .hint(format!(
                        "{} selects this WorkloadEntry with resolution STATIC, which needs IP addresses; it is not used as an endpoint of it",
                        res.reference()
                    )),
            );
            continue;
        }
        let ports = w
            .spec
            .ports
            .iter()
            .filter(|(_, n)| valid_port(**n))
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        out.push(ServiceEndpoint {
            address: w.address.clone(),
            ports,
            labels: w.labels.clone(),
            weight: w.spec.weight.filter(|x| *x > 0),
            locality: w.spec.locality.clone().filter(|l| !l.is_empty()),
        });
    }
    out
}

fn add_service_entry(
    res: &Resource,
    se: &ServiceEntrySpec,
    // The WorkloadEntries of the ServiceEntry's namespace.
    workloads: &[Workload<'_>],
    registry: &mut Registry,
    diags: &mut Vec<Diagnostic>,
) {
    if se.hosts.is_empty() {
        diags.push(
            res.diag(
                Diagnostic::error(Code::MissingField, "service entry has no hosts"),
                "spec.hosts",
            )
            .hint("list at least one host, e.g. calcbackendsvc.challengeistio.svc.cluster.local; this ServiceEntry is ignored"),
        );
        return;
    }
    let Some(resolution) = parse_resolution(res, se, diags) else {
        return;
    };
    if let Some(location) = se.location.as_deref() {
        if location != "MESH_EXTERNAL" && location != "MESH_INTERNAL" {
            diags.push(
                res.diag(
                    Diagnostic::error(Code::InvalidValue, format!("unknown location {location:?}")),
                    "spec.location",
                )
                .value(location)
                .hint(format!(
                    "use one of {LOCATIONS}; this ServiceEntry is ignored"
                )),
            );
            return;
        }
    }
    for (i, addr) in se.addresses.iter().enumerate() {
        if !is_ip_or_cidr(addr) {
            diags.push(
                res.diag(
                    Diagnostic::error(
                        Code::InvalidValue,
                        format!("address {addr:?} is not an IP address or CIDR block"),
                    ),
                    &format!("spec.addresses[{i}]"),
                )
                .value(addr.clone())
                .hint("write an IP address (10.0.0.1) or a CIDR block (10.0.0.0/24); HTTP listeners bind <address>_<port> regardless of it"),
            );
        }
    }
    if se.export_to.iter().any(|e| e != "*") {
        diags.push(
            res.diag(
                Diagnostic::warning(
                    Code::UnsupportedField,
                    "exportTo is not supported: the service is visible to every proxy",
                ),
                "spec.exportTo",
            )
            .value(se.export_to.join(", "))
            .hint("remove exportTo, or keep it knowing shadowplane ignores it"),
        );
    }
    if !se.subject_alt_names.is_empty() {
        diags.push(
            res.diag(
                Diagnostic::warning(
                    Code::UnsupportedField,
                    "subjectAltNames is not supported: it only applies to Istio mutual TLS",
                ),
                "spec.subjectAltNames",
            )
            .hint("to verify an upstream certificate, use DestinationRule trafficPolicy.tls with mode SIMPLE and subjectAltNames"),
        );
    }

    let ports = parse_ports(res, se, diags);
    if se.ports.is_empty() {
        diags.push(
            res.diag(
                Diagnostic::warning(Code::MissingField, "service entry has no ports"),
                "spec.ports",
            )
            .hint("add ports (number, name, protocol); without them no cluster or listener is generated for its hosts"),
        );
    }

    let mut selector = se.workload_selector.as_ref();
    if selector.is_some() && !se.endpoints.is_empty() {
        diags.push(
            res.diag(
                Diagnostic::error(
                    Code::InvalidValue,
                    "only one of workloadSelector or endpoints is allowed in a service entry",
                ),
                "spec.workloadSelector",
            )
            .hint("remove workloadSelector or endpoints; the workloadSelector is ignored and the listed endpoints are used"),
        );
        selector = None;
    }

    let mut endpoints = if resolution == Resolution::None {
        if se.endpoints.is_empty() {
            // istiod sends such traffic to an ORIGINAL_DST passthrough cluster, which only
            // works for a proxy that intercepts connections to the real destination.
            diags.push(
                res.diag(
                    Diagnostic::warning(
                        Code::UnsupportedField,
                        "resolution NONE (passthrough to the original destination) is not supported: the clusters get no endpoints and requests to them fail with 503",
                    ),
                    "spec.resolution",
                )
                .value("NONE")
                .hint("use resolution STATIC with endpoints, or DNS to resolve the host"),
            );
        }
        if !se.endpoints.is_empty() {
            diags.push(
                res.diag(
                    Diagnostic::error(
                        Code::InvalidValue,
                        "no endpoints should be provided for resolution NONE",
                    ),
                    "spec.endpoints",
                )
                .hint("use resolution STATIC (IP endpoints) or DNS (host names); the endpoints are ignored"),
            );
        }
        Vec::new()
    } else {
        parse_endpoints(res, se, resolution, &ports, diags)
    };
    if let Some(sel) = selector {
        if resolution != Resolution::None {
            endpoints.extend(select_workloads(res, sel, resolution, workloads, diags));
        }
    }
    // Envoy's LOGICAL_DNS cluster takes exactly one endpoint; istiod's validation says the same.
    if resolution == Resolution::DnsRoundRobin && endpoints.len() > 1 {
        diags.push(
            res.diag(
                Diagnostic::error(
                    Code::InvalidValue,
                    format!(
                        "there must only be one endpoint for resolution mode DNS_ROUND_ROBIN (got {})",
                        endpoints.len()
                    ),
                ),
                "spec.endpoints[1]",
            )
            .hint("keep one endpoint, or use resolution DNS to resolve several; only the first endpoint is used"),
        );
        endpoints.truncate(1);
    }

    // The hosts that get a service, checked first so that the last can take the endpoints
    // instead of a copy (a service entry usually has one host). No check depends on the
    // services of this entry: `seen_hosts` keeps its hosts distinct.
    let dns_like = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);
    let no_endpoints = se.endpoints.is_empty() && selector.is_none();
    let mut seen_hosts: BTreeSet<&str> = BTreeSet::new();
    let mut accepted: Vec<&str> = Vec::with_capacity(se.hosts.len());
    for (i, host) in se.hosts.iter().enumerate() {
        let path = || format!("spec.hosts[{i}]");
        let host = host.trim();
        if host.is_empty() || host == "*" {
            diags.push(
                res.diag(
                    Diagnostic::error(Code::InvalidValue, format!("invalid host {host:?}")),
                    &path(),
                )
                .value(host)
                .hint("a host is a DNS name such as calcbackendsvc.challengeistio.svc.cluster.local (a leading *. wildcard is allowed); this host is ignored"),
            );
            continue;
        }
        if !seen_hosts.insert(host) {
            diags.push(
                res.diag(
                    Diagnostic::warning(Code::DuplicateName, format!("duplicate host {host:?}")),
                    &path(),
                )
                .value(host)
                .hint("remove the repeated host"),
            );
            continue;
        }
        if dns_like && no_endpoints && host.starts_with('*') {
            diags.push(
                res.diag(
                    Diagnostic::error(
                        Code::InvalidValue,
                        format!("wildcard host {host:?} cannot be resolved with DNS"),
                    ),
                    &path(),
                )
                .value(host)
                .hint("list endpoints, use resolution NONE, or name a concrete host; this host is ignored"),
            );
            continue;
        }
        if let Some(existing) = registry.services.get(host) {
            diags.push(
                res.diag(
                    Diagnostic::warning(
                        Code::DuplicateResource,
                        format!("host {host:?} is already defined by {}", existing.source),
                    ),
                    &path(),
                )
                .value(host)
                .hint(format!(
                    "the first definition ({}) wins; remove the host from one of the ServiceEntries",
                    existing.source
                )),
            );
            continue;
        }
        accepted.push(host);
    }

    let (mut endpoints, mut ports) = (Some(endpoints), Some(ports));
    let last = accepted.len().saturating_sub(1);
    for (n, host) in accepted.into_iter().enumerate() {
        // The last host takes the originals, the others copies.
        let is_last = n == last;
        let service_endpoints = if dns_like && no_endpoints {
            // istiod resolves the host itself.
            vec![ServiceEndpoint {
                address: host.to_string(),
                ports: BTreeMap::new(),
                labels: BTreeMap::new(),
                weight: None,
                locality: None,
            }]
        } else {
            take_or_clone(&mut endpoints, is_last)
        };
        registry.services.insert(
            host.to_string(),
            Service {
                hostname: host.to_string(),
                namespace: res.namespace().to_string(),
                ports: take_or_clone(&mut ports, is_last),
                resolution,
                endpoints: service_endpoints,
                source: res.reference(),
            },
        );
    }
}

/// The value itself for its last user, a copy for the others.
fn take_or_clone<T: Clone + Default>(value: &mut Option<T>, last: bool) -> T {
    if last {
        value.take().unwrap_or_default()
    } else {
        value.clone().unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::diag::Severity;
    use crate::istio::ObjectMeta;
    use crate::source::{Origin, PathIndex};

    pub(crate) fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.to_string(),
            namespace: Some(ns.to_string()),
            ..Default::default()
        }
    }

    pub(crate) fn resource(metadata: ObjectMeta, spec: Spec) -> Resource {
        Resource {
            api_version: "networking.istio.io/v1".to_string(),
            metadata,
            spec,
            origin: Origin {
                file: Arc::from("t.yaml"),
                document: 0,
                index: Arc::new(PathIndex::default()),
            },
        }
    }

    pub(crate) fn service_entry(ns: &str, name: &str, yaml: &str) -> Resource {
        let spec: ServiceEntrySpec = serde_yaml::from_str(yaml).expect("test yaml is valid");
        resource(meta(ns, name), Spec::ServiceEntry(spec))
    }

    fn workload_entry(ns: &str, name: &str, meta_labels: &[(&str, &str)], yaml: &str) -> Resource {
        let spec: WorkloadEntrySpec = serde_yaml::from_str(yaml).expect("test yaml is valid");
        let mut m = meta(ns, name);
        m.labels = meta_labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resource(m, Spec::WorkloadEntry(spec))
    }

    /// The seed's backend: three versions on 127.0.0.1:9001..9003.
    pub(crate) const CALC_SE: &str = r#"
hosts: [calcbackendsvc.challengeistio.svc.cluster.local]
ports:
- number: 80
  name: http
  protocol: HTTP
  targetPort: 9001
resolution: STATIC
endpoints:
- address: 127.0.0.1
  ports: {http: 9001}
  labels: {app: calcbackend, version: v1}
- address: 127.0.0.1
  ports: {http: 9002}
  labels: {app: calcbackend, version: v2}
- address: 127.0.0.1
  ports: {http: 9003}
  labels: {app: calcbackend, version: v3}
"#;

    fn build_all(resources: &[Resource]) -> (Registry, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let reg = build(resources, &Options::default(), &mut diags);
        (reg, diags)
    }

    fn codes(diags: &[Diagnostic]) -> Vec<(Severity, Code, String)> {
        diags
            .iter()
            .map(|d| (d.severity, d.code, d.field.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn static_service_entry_gives_ports_and_labelled_endpoints() {
        let (reg, diags) = build_all(&[service_entry("challengeistio", "calc", CALC_SE)]);
        assert!(diags.is_empty(), "{diags:?}");
        let svc = reg
            .get("calcbackendsvc.challengeistio.svc.cluster.local")
            .expect("service registered");
        assert_eq!(svc.namespace, "challengeistio");
        assert_eq!(svc.resolution, Resolution::Static);
        assert_eq!(
            svc.ports,
            vec![ServicePort {
                number: 80,
                name: "http".into(),
                protocol: Protocol::Http,
                target_port: 9001
            }]
        );
        let ports: Vec<u32> = svc
            .endpoints
            .iter()
            .map(|e| e.port_for(&svc.ports[0]))
            .collect();
        assert_eq!(ports, vec![9001, 9002, 9003]);
        assert_eq!(svc.endpoints[2].labels["version"], "v3");
        assert_eq!(svc.source.to_string(), "ServiceEntry challengeistio/calc");
    }

    #[test]
    fn short_hosts_are_kept_literally() {
        let se = service_entry(
            "ns",
            "a",
            "hosts: [httpbin]\nports: [{number: 8000, name: http, protocol: HTTP}]\nresolution: STATIC\n",
        );
        let (reg, diags) = build_all(&[se]);
        assert!(diags.is_empty(), "{diags:?}");
        assert!(reg.get("httpbin").is_some());
        assert!(reg.get("httpbin.ns.svc.cluster.local").is_none());
        // STATIC without endpoints is allowed (empty).
        assert!(reg.get("httpbin").unwrap().endpoints.is_empty());
    }

    #[test]
    fn protocol_from_field_or_port_name() {
        let se = service_entry(
            "ns",
            "a",
            r#"
hosts: [a.example.com]
ports:
- {number: 1, name: x, protocol: http2}
- {number: 2, name: y, protocol: GRPC-WEB}
- {number: 3, name: z, protocol: TLS}
- {number: 4, name: http-web}
- {number: 5, name: grpc}
- {number: 6, name: http2-x}
- {number: 7, name: https-x}
- {number: 8, name: http}
"#,
        );
        let (reg, diags) = build_all(&[se]);
        let protos: Vec<Protocol> = reg
            .get("a.example.com")
            .unwrap()
            .ports
            .iter()
            .map(|p| p.protocol)
            .collect();
        assert_eq!(
            protos,
            vec![
                Protocol::Http2,
                Protocol::Grpc,
                Protocol::Other,
                Protocol::Http,
                Protocol::Grpc,
                Protocol::Http2,
                Protocol::Other,
                Protocol::Http
            ]
        );
        // Only the unnamed-protocol, non-HTTP-named port gets an info note (plus the warning
        // that resolution NONE, the default, gives clusters without endpoints).
        assert_eq!(
            codes(&diags),
            vec![
                (Severity::Info, Code::MissingField, "spec.ports[6]".into()),
                (
                    Severity::Warning,
                    Code::UnsupportedField,
                    "spec.resolution".into()
                ),
            ]
        );
    }

    #[test]
    fn dns_without_endpoints_resolves_each_host() {
        let se = service_entry(
            "ns",
            "ext",
            r#"
hosts: [api.example.com, www.example.com]
ports: [{number: 443, name: tls, protocol: TLS, targetPort: 8443}]
resolution: DNS
"#,
        );
        let (reg, diags) = build_all(&[se]);
        assert!(diags.is_empty(), "{diags:?}");
        for host in ["api.example.com", "www.example.com"] {
            let svc = reg.get(host).unwrap();
            assert_eq!(svc.resolution, Resolution::Dns);
            assert_eq!(svc.endpoints.len(), 1);
            assert_eq!(svc.endpoints[0].address, host);
            assert_eq!(svc.endpoints[0].port_for(&svc.ports[0]), 8443);
        }
    }

    #[test]
    fn resolutions_and_dynamic_dns() {
        let mk = |r: &str| {
            service_entry(
                "ns",
                r,
                &format!("hosts: [{}.example.com]\nports: [{{number: 80, name: http}}]\nresolution: {r}\n", r.to_lowercase()),
            )
        };
        let (reg, diags) = build_all(&[
            mk("NONE"),
            mk("DNS_ROUND_ROBIN"),
            mk("DYNAMIC_DNS"),
            mk("BOGUS"),
        ]);
        assert_eq!(
            reg.get("none.example.com").unwrap().resolution,
            Resolution::None
        );
        assert_eq!(
            reg.get("dns_round_robin.example.com").unwrap().resolution,
            Resolution::DnsRoundRobin
        );
        assert_eq!(
            reg.get("dynamic_dns.example.com").unwrap().resolution,
            Resolution::Dns
        );
        assert!(reg.get("bogus.example.com").is_none());
        assert_eq!(
            codes(&diags),
            vec![
                // NONE: passthrough is not supported.
                (
                    Severity::Warning,
                    Code::UnsupportedField,
                    "spec.resolution".into()
                ),
                // DYNAMIC_DNS: treated as DNS.
                (
                    Severity::Warning,
                    Code::UnsupportedField,
                    "spec.resolution".into()
                ),
                (
                    Severity::Error,
                    Code::InvalidValue,
                    "spec.resolution".into()
                ),
            ]
        );
        assert!(
            diags[0].message.contains("resolution NONE"),
            "{}",
            diags[0].message
        );
        let bogus = &diags[2];
        assert!(bogus.message.contains("\"BOGUS\""), "{}", bogus.message);
        assert!(bogus.hint.as_deref().unwrap().contains("DNS_ROUND_ROBIN"));
    }

    #[test]
    fn workload_selector_picks_workload_entries_of_the_namespace() {
        let se = service_entry(
            "ns",
            "svc",
            r#"
hosts: [svc.ns.svc.cluster.local]
ports: [{number: 80, name: http, protocol: HTTP}]
resolution: STATIC
workloadSelector: {labels: {app: svc}}
"#,
        );
        let we1 = workload_entry(
            "ns",
            "w1",
            &[("app", "svc"), ("version", "old")],
            "address: 10.0.0.1\nlabels: {version: v1}\nports: {http: 8080}\n",
        );
        let we2 = workload_entry(
            "ns",
            "w2",
            &[],
            "address: 10.0.0.2\nlabels: {app: svc, version: v2}\n",
        );
        let other_ns = workload_entry("other", "w3", &[("app", "svc")], "address: 10.0.0.3\n");
        let other_app = workload_entry("ns", "w4", &[("app", "nope")], "address: 10.0.0.4\n");
        let (reg, diags) = build_all(&[se, we1, we2, other_ns, other_app]);
        assert!(diags.is_empty(), "{diags:?}");
        let svc = reg.get("svc.ns.svc.cluster.local").unwrap();
        let got: Vec<(&str, u32, &str)> = svc
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.address.as_str(),
                    e.port_for(&svc.ports[0]),
                    e.labels["version"].as_str(),
                )
            })
            .collect();
        // spec.labels win over metadata.labels.
        assert_eq!(got, vec![("10.0.0.1", 8080, "v1"), ("10.0.0.2", 80, "v2")]);
    }

    #[test]
    fn first_service_entry_wins_a_host() {
        let a = service_entry(
            "ns",
            "a",
            "hosts: [x.example.com]\nports: [{number: 80, name: http}]\nresolution: STATIC\n",
        );
        let b = service_entry(
            "ns",
            "b",
            "hosts: [x.example.com]\nports: [{number: 81, name: http}]\nresolution: STATIC\n",
        );
        let (reg, diags) = build_all(&[a, b]);
        assert_eq!(reg.get("x.example.com").unwrap().ports[0].number, 80);
        assert_eq!(
            codes(&diags),
            vec![(
                Severity::Warning,
                Code::DuplicateResource,
                "spec.hosts[0]".into()
            )]
        );
        assert_eq!(diags[0].resource.as_ref().unwrap().name, "b");
        assert!(
            diags[0].message.contains("ServiceEntry ns/a"),
            "{}",
            diags[0].message
        );
    }

    #[test]
    fn validation_errors_skip_the_broken_part() {
        let se = service_entry(
            "ns",
            "bad",
            r#"
hosts: [bad.example.com]
ports:
- {number: 0, name: zero}
- {number: 70000, name: big}
- {number: 80, name: http, protocol: HTTP}
- {number: 80, name: other, protocol: HTTP}
- {number: 81, name: http, protocol: HTTP}
- {number: 82, name: weird, protocol: SMTP}
resolution: STATIC
location: SOMEWHERE_ELSE
"#,
        );
        let (reg, diags) = build_all(&[se]);
        assert!(
            reg.get("bad.example.com").is_none(),
            "bad location drops the entry"
        );
        assert_eq!(
            codes(&diags),
            vec![(Severity::Error, Code::InvalidValue, "spec.location".into())]
        );

        let se = service_entry(
            "ns",
            "bad",
            r#"
hosts: [bad.example.com]
ports:
- {number: 0, name: zero}
- {number: 70000, name: big}
- {number: 80, name: http, protocol: HTTP}
- {number: 80, name: other, protocol: HTTP}
- {number: 81, name: http, protocol: HTTP}
- {number: 82, name: weird, protocol: SMTP}
resolution: STATIC
endpoints:
- address: 10.0.0.1
- labels: {a: b}
- address: not-an-ip.example.com
- address: unix:///var/run/sock
- address: 10.0.0.2
  ports: {nope: 1234}
"#,
        );
        let (reg, diags) = build_all(&[se]);
        let svc = reg.get("bad.example.com").unwrap();
        assert_eq!(
            svc.ports.iter().map(|p| p.number).collect::<Vec<_>>(),
            vec![80]
        );
        assert_eq!(
            svc.endpoints
                .iter()
                .map(|e| e.address.as_str())
                .collect::<Vec<_>>(),
            vec!["10.0.0.1", "unix:///var/run/sock", "10.0.0.2"]
        );
        assert!(svc.endpoints[2].ports.is_empty());
        assert_eq!(
            codes(&diags),
            vec![
                (
                    Severity::Error,
                    Code::InvalidValue,
                    "spec.ports[0].number".into()
                ),
                (
                    Severity::Error,
                    Code::InvalidValue,
                    "spec.ports[1].number".into()
                ),
                (
                    Severity::Error,
                    Code::DuplicateName,
                    "spec.ports[3].number".into()
                ),
                (
                    Severity::Error,
                    Code::DuplicateName,
                    "spec.ports[4].name".into()
                ),
                (
                    Severity::Error,
                    Code::InvalidValue,
                    "spec.ports[5].protocol".into()
                ),
                (
                    Severity::Error,
                    Code::MissingField,
                    "spec.endpoints[1].address".into()
                ),
                (
                    Severity::Error,
                    Code::InvalidValue,
                    "spec.endpoints[2].address".into()
                ),
                (
                    Severity::Error,
                    Code::InvalidValue,
                    "spec.endpoints[4].ports.nope".into()
                ),
            ]
        );
        assert!(diags[4].hint.as_deref().unwrap().contains("HTTP2"));

        let (reg, diags) = build_all(&[service_entry(
            "ns",
            "empty",
            "ports: [{number: 80, name: http}]\n",
        )]);
        assert!(reg.services.is_empty());
        assert_eq!(
            codes(&diags),
            vec![(Severity::Error, Code::MissingField, "spec.hosts".into())]
        );
    }
}
