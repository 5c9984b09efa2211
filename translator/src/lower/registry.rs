//! ServiceEntry and WorkloadEntry → the service registry (what Kubernetes Services and
//! EndpointSlices give istiod): hosts, ports and endpoints with labels.

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, ResourceRef};
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

/// Build the registry. TODO: implemented by the registry helper.
pub fn build(
    _resources: &[Resource],
    _options: &Options,
    _diags: &mut Vec<Diagnostic>,
) -> Registry {
    Registry::default()
}
