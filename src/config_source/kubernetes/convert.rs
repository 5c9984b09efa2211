//! Kubernetes objects → the [`SourceFile`]s the translator reads. Pure and deterministic: the
//! same objects give byte-identical text, so two replicas serve identical versions.
//!
//! - An Istio object (VirtualService, DestinationRule, ServiceEntry, WorkloadEntry, Gateway)
//!   becomes one file: the object as YAML with only `apiVersion`, `kind`, `metadata` (name,
//!   namespace, labels, annotations, creationTimestamp) and `spec`. Server fields (`status`,
//!   `managedFields`, `uid`, `resourceVersion`, ...) are dropped, so they neither reach the
//!   translator's strict parser nor change the text when only they change.
//! - A Service becomes a synthesized ServiceEntry, as istiod's Kubernetes registry does:
//!   host `<name>.<namespace>.svc.<domain>`, `MESH_INTERNAL`, resolution `STATIC` (the
//!   translator gives STATIC entries EDS clusters, so an endpoint change is an EDS-only push),
//!   the Service's ports with Istio's protocol selection ([`port_protocol`]) and the ready
//!   endpoints of its EndpointSlices, each with its Pod's labels so DestinationRule subsets
//!   select them.
//!
//! Every file's `path` is the object's API path behind `kubernetes:`, e.g.
//! `kubernetes:/apis/networking.istio.io/v1/namespaces/default/virtualservices/reviews`, so
//! diagnostics name the object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use serde_json::{json, Map, Value};
use shadowplane_translator::SourceFile;

/// Prefix of every Kubernetes object's file path.
pub const PATH_PREFIX: &str = "kubernetes:";

/// Label of an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Annotation dropped from rendered objects: a copy of the whole object, and not config.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `(namespace, name)` of a namespaced object.
pub type ObjectKey = (String, String);

/// Labels of a Pod.
pub type Labels = BTreeMap<String, String>;

/// One Istio kind shadowplane reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IstioKind {
    pub kind: &'static str,
    pub plural: &'static str,
}

/// The Istio kinds, in `networking.istio.io`.
pub const ISTIO_KINDS: [IstioKind; 5] = [
    IstioKind {
        kind: "VirtualService",
        plural: "virtualservices",
    },
    IstioKind {
        kind: "DestinationRule",
        plural: "destinationrules",
    },
    IstioKind {
        kind: "ServiceEntry",
        plural: "serviceentries",
    },
    IstioKind {
        kind: "WorkloadEntry",
        plural: "workloadentries",
    },
    IstioKind {
        kind: "Gateway",
        plural: "gateways",
    },
];

/// The Istio API group.
pub const ISTIO_GROUP: &str = "networking.istio.io";

/// The versions of [`ISTIO_GROUP`] the translator accepts, most preferred first.
pub const ISTIO_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// One object, ready for the translator, and the reference Events about it are posted on.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub file: SourceFile,
    pub reference: ObjectReference,
}

impl PartialEq for Rendered {
    /// Same file: the reference's `resourceVersion` and `uid` do not count.
    fn eq(&self, other: &Self) -> bool {
        self.file.path == other.file.path && self.file.text == other.file.text
    }
}

/// `kubernetes:/apis/<group>/<version>/namespaces/<ns>/<plural>/<name>` (or `/api/v1/...` for
/// the core group).
pub fn object_path(api_version: &str, plural: &str, namespace: &str, name: &str) -> String {
    let root = if api_version.contains('/') {
        "/apis"
    } else {
        "/api"
    };
    format!("{PATH_PREFIX}{root}/{api_version}/namespaces/{namespace}/{plural}/{name}")
}

/// The metadata the translator reads, in a fixed key order.
fn rendered_metadata(
    name: &str,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
    creation_timestamp: Option<String>,
) -> Value {
    let mut meta = Map::new();
    meta.insert("name".into(), json!(name));
    meta.insert("namespace".into(), json!(namespace));
    if let Some(labels) = labels.filter(|l| !l.is_empty()) {
        meta.insert("labels".into(), json!(labels));
    }
    let annotations: BTreeMap<&String, &String> = annotations
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LAST_APPLIED)
        .collect();
    if !annotations.is_empty() {
        meta.insert("annotations".into(), json!(annotations));
    }
    if let Some(ts) = creation_timestamp {
        meta.insert("creationTimestamp".into(), json!(ts));
    }
    Value::Object(meta)
}

fn to_yaml(value: &Value) -> String {
    // A JSON value always serializes (string keys only); the fallback is flow-style YAML.
    serde_yaml::to_string(value).unwrap_or_else(|_| value.to_string())
}

/// An Istio object of `kind` served at `api_version` (e.g. `networking.istio.io/v1`) as the
/// translator's input. `None` for an object without a name.
pub fn istio_object(api_version: &str, kind: IstioKind, obj: &DynamicObject) -> Option<Rendered> {
    let name = obj.metadata.name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = obj.metadata.namespace.as_deref().unwrap_or("default");
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!(api_version));
    doc.insert("kind".into(), json!(kind.kind));
    doc.insert(
        "metadata".into(),
        rendered_metadata(
            name,
            namespace,
            obj.metadata.labels.as_ref(),
            obj.metadata.annotations.as_ref(),
            obj.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
        ),
    );
    if let Some(spec) = obj.data.get("spec").filter(|s| !s.is_null()) {
        doc.insert("spec".into(), spec.clone());
    }
    Some(Rendered {
        file: SourceFile {
            path: object_path(api_version, kind.plural, namespace, name),
            text: to_yaml(&Value::Object(doc)),
        },
        reference: ObjectReference {
            api_version: Some(api_version.to_string()),
            kind: Some(kind.kind.to_string()),
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            uid: obj.metadata.uid.clone(),
            resource_version: obj.metadata.resource_version.clone(),
            field_path: None,
        },
    })
}

// ===== Services =====

/// The file path of the ServiceEntry synthesized for Service `name` in `namespace`.
pub fn service_path(namespace: &str, name: &str) -> String {
    object_path("v1", "services", namespace, name)
}

/// What shadowplane keeps of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// `ExternalName` services resolve `external_name` with DNS.
    pub external_name: Option<String>,
    pub ports: Vec<ServicePortInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// Empty for the single unnamed port a Service may have.
    pub name: String,
    pub port: i32,
    /// `TCP` (default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
    /// The target port when it is a number (a named target port is resolved per Pod, in the
    /// EndpointSlices).
    pub target_port: Option<i32>,
}

impl ServiceInfo {
    /// `None` for a Service without a name.
    pub fn from_service(svc: &Service) -> Option<ServiceInfo> {
        let name = svc.metadata.name.clone().filter(|n| !n.is_empty())?;
        let spec = svc.spec.as_ref();
        let external_name = spec
            .filter(|s| s.type_.as_deref() == Some("ExternalName"))
            .and_then(|s| s.external_name.clone())
            .filter(|n| !n.is_empty());
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| ServicePortInfo {
                        name: p.name.clone().unwrap_or_default(),
                        port: p.port,
                        protocol: p.protocol.clone(),
                        app_protocol: p.app_protocol.clone(),
                        target_port: match &p.target_port {
                            Some(IntOrString::Int(n)) => Some(*n),
                            _ => None,
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(ServiceInfo {
            namespace: svc
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name,
            uid: svc.metadata.uid.clone(),
            external_name,
            ports,
        })
    }

    pub fn key(&self) -> ObjectKey {
        (self.namespace.clone(), self.name.clone())
    }

    /// The file path of its synthesized ServiceEntry.
    pub fn path(&self) -> String {
        service_path(&self.namespace, &self.name)
    }
}

/// What shadowplane keeps of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub namespace: String,
    pub name: String,
    /// The [`SERVICE_NAME_LABEL`].
    pub service: Option<String>,
    /// `IPv4`, `IPv6` or `FQDN`.
    pub address_type: String,
    /// Port name (empty when unnamed) → port.
    pub ports: Vec<(String, i32)>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The first address (Kubernetes: consumers use the first).
    pub address: String,
    /// `conditions.ready`, absent meaning ready.
    pub ready: bool,
    /// `targetRef` when it is a Pod: `(namespace, name)`.
    pub pod: Option<ObjectKey>,
}

impl SliceInfo {
    pub fn from_slice(slice: &EndpointSlice) -> Option<SliceInfo> {
        let name = slice.metadata.name.clone().filter(|n| !n.is_empty())?;
        let namespace = slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port?)))
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .filter_map(|e| {
                let address = e.addresses.first()?.clone();
                let ready = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                let pod = e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some((
                            r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                            r.name.clone()?,
                        ))
                    });
                Some(SliceEndpoint {
                    address,
                    ready,
                    pod,
                })
            })
            .collect();
        Some(SliceInfo {
            service: slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL).cloned()),
            namespace,
            name,
            address_type: slice.address_type.clone(),
            ports,
            endpoints,
        })
    }

    pub fn key(&self) -> ObjectKey {
        (self.namespace.clone(), self.name.clone())
    }

    /// The Service it belongs to, if labelled.
    pub fn service_key(&self) -> Option<ObjectKey> {
        self.service
            .as_ref()
            .map(|s| (self.namespace.clone(), s.clone()))
    }
}

/// A Pod's key and labels.
pub fn pod_labels(pod: &Pod) -> Option<(ObjectKey, Labels)> {
    let name = pod.metadata.name.clone().filter(|n| !n.is_empty())?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    Some((
        (namespace, name),
        pod.metadata.labels.clone().unwrap_or_default(),
    ))
}

/// Istio's protocol for a Service port (istio `kube.ConvertProtocol`): UDP for UDP (and SCTP)
/// ports; else `appProtocol` when set (`kubernetes.io/h2c` → HTTP2, `kubernetes.io/ws` → HTTP,
/// `kubernetes.io/wss` → HTTPS), else the port name; a `grpc-web` prefix, else the part
/// before the first `-`, names the protocol (`http`, `http2`, `grpc`, `https`, `tls`, `tcp`,
/// `mongo`, `redis`, `mysql`, ...).
///
/// An unnamed port, or one whose name and `appProtocol` name no protocol, is `TCP`: istiod
/// would sniff the protocol of such a port on the connection, which an Envoy listener built
/// from static config cannot do, so shadowplane treats it as plain TCP (no HTTP listener or
/// routes; name the port `http-...` or set `appProtocol: http` to route it).
pub fn port_protocol(port: &ServicePortInfo) -> &'static str {
    match port.protocol.as_deref() {
        Some("UDP") | Some("SCTP") => return "UDP",
        _ => {}
    }
    let name = match port.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") => return "HTTP2",
        Some("kubernetes.io/ws") => return "HTTP",
        Some("kubernetes.io/wss") => return "HTTPS",
        Some(app) => app,
        None => port.name.as_str(),
    };
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("grpc-web") {
        return "GRPC-WEB";
    }
    match lower.split('-').next().unwrap_or("") {
        "http" => "HTTP",
        "http2" => "HTTP2",
        "grpc" => "GRPC",
        "https" => "HTTPS",
        "tls" => "TLS",
        "http_proxy" => "HTTP_PROXY",
        "mongo" => "MONGO",
        "redis" => "REDIS",
        "mysql" => "MYSQL",
        "udp" => "UDP",
        _ => "TCP",
    }
}

/// The name of the ServiceEntry synthesized for Service `name`: `svc:<name>`. A `:` is not
/// allowed in Kubernetes names, so it never collides with a ServiceEntry of the user's.
pub fn service_entry_name(name: &str) -> String {
    format!("svc:{name}")
}

/// The ServiceEntry of a Service, from its EndpointSlices (any order) and the Pods' labels.
/// `None` for a Service without ports (nothing to route).
///
/// Endpoints: the ready ones (`conditions.ready` not `false`) of the IPv4 and IPv6 slices,
/// one per address and ports (sorted), each with its Pod's labels and its port for each Service port
/// (the slice port of the same name). An endpoint whose Pod (`targetRef`) is not known yet is
/// left out until the Pod is seen, as istiod does, so a subset never gets a Pod without its
/// labels. A Service port missing from a slice falls back to the Service's numeric
/// `targetPort`, else its port.
pub fn service_entry(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    pods: &BTreeMap<ObjectKey, Labels>,
    domain_suffix: &str,
) -> Option<Rendered> {
    service_entry_doc(svc, slices, pods, domain_suffix).map(|doc| render(svc, &doc))
}

/// The file of a Service's ServiceEntry document.
fn render(svc: &ServiceInfo, doc: &Value) -> Rendered {
    Rendered {
        file: SourceFile {
            path: svc.path(),
            text: to_yaml(doc),
        },
        reference: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: Some(svc.name.clone()),
            namespace: Some(svc.namespace.clone()),
            uid: svc.uid.clone(),
            resource_version: None,
            field_path: None,
        },
    }
}

/// The Service's ports, one per port number, in the Service's order. Kubernetes allows one
/// number twice with different protocols (`kube-dns`: 53/UDP and 53/TCP), while a
/// ServiceEntry (like istiod's service model, keyed by port number) has one port per number,
/// and a duplicate is an error that would block the whole reading: the TCP port wins over a
/// UDP or SCTP one, else the first.
fn ports_by_number(ports: &[ServicePortInfo]) -> Vec<&ServicePortInfo> {
    let datagram = |p: &ServicePortInfo| matches!(p.protocol.as_deref(), Some("UDP" | "SCTP"));
    let mut out: Vec<&ServicePortInfo> = Vec::with_capacity(ports.len());
    for p in ports {
        match out.iter().position(|kept| kept.port == p.port) {
            None => out.push(p),
            Some(i) if datagram(out[i]) && !datagram(p) => out[i] = p,
            Some(_) => {}
        }
    }
    out
}

/// [`service_entry`] before rendering: the document as a JSON value.
fn service_entry_doc(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    pods: &BTreeMap<ObjectKey, Labels>,
    domain_suffix: &str,
) -> Option<Value> {
    if svc.ports.is_empty() {
        return None;
    }
    let host = format!("{}.{}.svc.{}", svc.name, svc.namespace, domain_suffix);
    let service_ports = ports_by_number(&svc.ports);
    let ports: Vec<Value> = service_ports
        .iter()
        .map(|p| {
            let mut port = Map::new();
            port.insert("name".into(), json!(p.name));
            port.insert("number".into(), json!(p.port));
            port.insert("protocol".into(), json!(port_protocol(p)));
            if let Some(target) = p.target_port.filter(|t| *t != p.port) {
                port.insert("targetPort".into(), json!(target));
            }
            Value::Object(port)
        })
        .collect();

    let mut spec = Map::new();
    spec.insert("hosts".into(), json!([host]));
    spec.insert("ports".into(), Value::Array(ports));
    if let Some(external) = &svc.external_name {
        spec.insert("location".into(), json!("MESH_EXTERNAL"));
        spec.insert("resolution".into(), json!("DNS"));
        spec.insert("endpoints".into(), json!([{ "address": external }]));
    } else {
        spec.insert("location".into(), json!("MESH_INTERNAL"));
        spec.insert("resolution".into(), json!("STATIC"));
        // One endpoint per address and ports, as istiod keeps one per (address, port): the
        // same address with other ports is another endpoint (hostNetwork Pods on one node).
        let mut endpoints: BTreeMap<(&str, BTreeMap<&str, i32>), Value> = BTreeMap::new();
        let mut sorted: Vec<&&SliceInfo> = slices.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for slice in sorted {
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            for ep in slice.endpoints.iter().filter(|e| e.ready) {
                let labels = match &ep.pod {
                    Some(pod) => match pods.get(pod) {
                        Some(labels) => labels.clone(),
                        None => continue,
                    },
                    None => Labels::new(),
                };
                let ports: BTreeMap<&str, i32> = service_ports
                    .iter()
                    .filter_map(|sp| {
                        slice
                            .ports
                            .iter()
                            .find(|(name, _)| *name == sp.name)
                            .map(|(_, port)| (sp.name.as_str(), *port))
                    })
                    .collect();
                let key = (ep.address.as_str(), ports);
                if endpoints.contains_key(&key) {
                    continue;
                }
                let mut endpoint = Map::new();
                endpoint.insert("address".into(), json!(ep.address));
                if !labels.is_empty() {
                    endpoint.insert("labels".into(), json!(labels));
                }
                if !key.1.is_empty() {
                    endpoint.insert("ports".into(), json!(key.1));
                }
                endpoints.insert(key, Value::Object(endpoint));
            }
        }
        spec.insert(
            "endpoints".into(),
            Value::Array(endpoints.into_values().collect()),
        );
    }

    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!("networking.istio.io/v1"));
    doc.insert("kind".into(), json!("ServiceEntry"));
    doc.insert(
        "metadata".into(),
        rendered_metadata(
            &service_entry_name(&svc.name),
            &svc.namespace,
            None,
            None,
            None,
        ),
    );
    doc.insert("spec".into(), Value::Object(spec));
    Some(Value::Object(doc))
}

/// Every Service's ServiceEntry rendered from scratch, sorted by path. `slices` and `pods`
/// are all known ones. The source renders incrementally (`reading.rs`); this is what
/// its files must equal.
pub fn service_entries(
    services: &BTreeMap<ObjectKey, ServiceInfo>,
    slices: &BTreeMap<ObjectKey, SliceInfo>,
    pods: &BTreeMap<ObjectKey, Labels>,
    domain_suffix: &str,
) -> Vec<Rendered> {
    let mut by_service: BTreeMap<ObjectKey, Vec<&SliceInfo>> = BTreeMap::new();
    for slice in slices.values() {
        if let Some(key) = slice.service_key() {
            by_service.entry(key).or_default().push(slice);
        }
    }
    let mut out: Vec<Rendered> = services
        .iter()
        .filter_map(|(key, svc)| {
            let slices = by_service.get(key).map(Vec::as_slice).unwrap_or(&[]);
            service_entry(svc, slices, pods, domain_suffix)
        })
        .collect();
    out.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowplane_translator::{translate_files, Options};

    fn service(json: Value) -> ServiceInfo {
        let svc: Service = serde_json::from_value(json).expect("service json");
        ServiceInfo::from_service(&svc).expect("named service")
    }

    fn slice(json: Value) -> SliceInfo {
        let s: EndpointSlice = serde_json::from_value(json).expect("slice json");
        SliceInfo::from_slice(&s).expect("named slice")
    }

    fn reviews() -> ServiceInfo {
        service(json!({
            "metadata": {"name": "reviews", "namespace": "shop", "uid": "u-1"},
            "spec": {"ports": [
                {"name": "http-web", "port": 80, "targetPort": 9080},
                {"name": "grpc", "port": 7070, "targetPort": "grpc"},
                {"name": "metrics", "port": 9090},
                {"name": "h2", "port": 8443, "appProtocol": "kubernetes.io/h2c"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ]}
        }))
    }

    fn reviews_slice(name: &str, endpoints: Value) -> SliceInfo {
        slice(json!({
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http-web", "port": 9080}, {"name": "grpc", "port": 7071}],
            "endpoints": endpoints,
        }))
    }

    fn pods(list: &[(&str, &[(&str, &str)])]) -> BTreeMap<ObjectKey, Labels> {
        list.iter()
            .map(|(name, labels)| {
                (
                    ("shop".to_string(), name.to_string()),
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
            })
            .collect()
    }

    fn ep(ip: &str, pod: &str, ready: Option<bool>) -> Value {
        let mut e = json!({"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}});
        if let Some(r) = ready {
            e["conditions"] = json!({"ready": r});
        }
        e
    }

    fn spec_of(rendered: &Rendered) -> serde_yaml::Value {
        let doc: serde_yaml::Value = serde_yaml::from_str(&rendered.file.text).expect("yaml");
        doc["spec"].clone()
    }

    #[test]
    fn service_ports_get_istio_protocols() {
        let se = service_entry(&reviews(), &[], &BTreeMap::new(), "cluster.local")
            .expect("service entry");
        assert_eq!(
            se.file.path,
            "kubernetes:/api/v1/namespaces/shop/services/reviews"
        );
        let spec = spec_of(&se);
        assert_eq!(
            spec["hosts"][0].as_str(),
            Some("reviews.shop.svc.cluster.local")
        );
        assert_eq!(spec["location"].as_str(), Some("MESH_INTERNAL"));
        assert_eq!(spec["resolution"].as_str(), Some("STATIC"));
        let ports: Vec<(String, u64, String, Option<u64>)> = spec["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_string(),
                    p["number"].as_u64().unwrap_or_default(),
                    p["protocol"].as_str().unwrap_or_default().to_string(),
                    p["targetPort"].as_u64(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            vec![
                ("http-web".into(), 80, "HTTP".into(), Some(9080)),
                ("grpc".into(), 7070, "GRPC".into(), None),
                ("metrics".into(), 9090, "TCP".into(), None),
                ("h2".into(), 8443, "HTTP2".into(), None),
                ("dns".into(), 53, "UDP".into(), None),
            ]
        );
        assert_eq!(se.reference.kind.as_deref(), Some("Service"));
        assert_eq!(se.reference.uid.as_deref(), Some("u-1"));
    }

    #[test]
    fn protocol_selection_follows_istio() {
        let port = |name: &str, app: Option<&str>| ServicePortInfo {
            name: name.into(),
            port: 80,
            protocol: None,
            app_protocol: app.map(str::to_string),
            target_port: None,
        };
        assert_eq!(port_protocol(&port("http", None)), "HTTP");
        assert_eq!(port_protocol(&port("HTTP-api", None)), "HTTP");
        assert_eq!(port_protocol(&port("http2-x", None)), "HTTP2");
        assert_eq!(port_protocol(&port("grpc-web-ui", None)), "GRPC-WEB");
        assert_eq!(port_protocol(&port("https", None)), "HTTPS");
        assert_eq!(port_protocol(&port("web", None)), "TCP");
        // Unnamed: TCP (istiod would sniff).
        assert_eq!(port_protocol(&port("", None)), "TCP");
        // appProtocol wins over the name.
        assert_eq!(port_protocol(&port("tcp-x", Some("http"))), "HTTP");
        assert_eq!(
            port_protocol(&port("web", Some("kubernetes.io/ws"))),
            "HTTP"
        );
        assert_eq!(
            port_protocol(&port("web", Some("kubernetes.io/wss"))),
            "HTTPS"
        );
    }

    #[test]
    fn only_ready_endpoints_with_their_pod_labels_and_mapped_ports() {
        let s = reviews_slice(
            "reviews-abc",
            json!([
                ep("10.0.0.2", "reviews-v2", None),
                ep("10.0.0.1", "reviews-v1", Some(true)),
                ep("10.0.0.3", "reviews-v3", Some(false)),
            ]),
        );
        let pods = pods(&[
            ("reviews-v1", &[("app", "reviews"), ("version", "v1")]),
            ("reviews-v2", &[("app", "reviews"), ("version", "v2")]),
            ("reviews-v3", &[("app", "reviews"), ("version", "v3")]),
        ]);
        let se = service_entry(&reviews(), &[&s], &pods, "cluster.local").expect("se");
        let spec = spec_of(&se);
        let endpoints = spec["endpoints"].as_sequence().expect("endpoints");
        assert_eq!(endpoints.len(), 2, "{}", se.file.text);
        assert_eq!(endpoints[0]["address"].as_str(), Some("10.0.0.1"));
        assert_eq!(endpoints[0]["labels"]["version"].as_str(), Some("v1"));
        assert_eq!(endpoints[1]["address"].as_str(), Some("10.0.0.2"));
        assert_eq!(endpoints[1]["labels"]["version"].as_str(), Some("v2"));
        // Ports by Service port name: http-web → 9080, grpc → 7071 (named target port);
        // ports missing from the slice are not listed.
        assert_eq!(endpoints[0]["ports"]["http-web"].as_u64(), Some(9080));
        assert_eq!(endpoints[0]["ports"]["grpc"].as_u64(), Some(7071));
        assert!(endpoints[0]["ports"]["metrics"].is_null());
    }

    #[test]
    fn an_endpoint_whose_pod_is_unknown_waits_for_it() {
        let s = reviews_slice(
            "reviews-abc",
            json!([ep("10.0.0.1", "reviews-v1", None), ep("10.0.0.9", "new-pod", None),
                   {"addresses": ["10.0.0.5"]}]),
        );
        let pods = pods(&[("reviews-v1", &[("version", "v1")])]);
        let se = service_entry(&reviews(), &[&s], &pods, "cluster.local").expect("se");
        let spec = spec_of(&se);
        let addresses: Vec<&str> = spec["endpoints"]
            .as_sequence()
            .expect("endpoints")
            .iter()
            .filter_map(|e| e["address"].as_str())
            .collect();
        // 10.0.0.9's Pod is not known yet; 10.0.0.5 has no Pod (a manual slice): no labels.
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.5"]);
        assert!(spec["endpoints"][1]["labels"].is_null());
    }

    #[test]
    fn output_is_deterministic_whatever_the_input_order() {
        let a = reviews_slice("reviews-a", json!([ep("10.0.0.4", "p4", None)]));
        let b = reviews_slice(
            "reviews-b",
            json!([ep("10.0.0.2", "p2", None), ep("10.0.0.4", "p4", None)]),
        );
        let pods = pods(&[("p2", &[("v", "2")]), ("p4", &[("v", "4")])]);
        let one = service_entry(&reviews(), &[&a, &b], &pods, "cluster.local").expect("se");
        let two = service_entry(&reviews(), &[&b, &a], &pods, "cluster.local").expect("se");
        assert_eq!(one.file.text, two.file.text);
        // An address in two slices (a Pod moving between slices) is one endpoint.
        assert_eq!(
            spec_of(&one)["endpoints"]
                .as_sequence()
                .map(|s| s.len())
                .unwrap_or(0),
            2
        );

        // All services: sorted by path, slices matched by namespace and service label.
        let mut services = BTreeMap::new();
        let other_ns = service(
            json!({"metadata": {"name": "reviews", "namespace": "other"},
                                      "spec": {"ports": [{"name": "http", "port": 80}]}}),
        );
        services.insert(other_ns.key(), other_ns);
        services.insert(reviews().key(), reviews());
        let slices: BTreeMap<ObjectKey, SliceInfo> =
            [(a.key(), a), (b.key(), b)].into_iter().collect();
        let all = service_entries(&services, &slices, &pods, "cluster.local");
        let paths: Vec<&str> = all.iter().map(|r| r.file.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "kubernetes:/api/v1/namespaces/other/services/reviews",
                "kubernetes:/api/v1/namespaces/shop/services/reviews"
            ]
        );
        assert!(spec_of(&all[0])["endpoints"]
            .as_sequence()
            .is_some_and(|e| e.is_empty()));
        assert_eq!(all[1].file.text, one.file.text);
    }

    #[test]
    fn istio_objects_keep_spec_and_metadata_and_drop_server_fields() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "VirtualService",
            "metadata": {
                "name": "reviews", "namespace": "shop", "uid": "u-9", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-01-02T03:04:05Z",
                "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "note": "x"},
                "managedFields": [{"manager": "kubectl"}],
            },
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
            "status": {"observedGeneration": 3},
        }))
        .expect("object");
        let r = istio_object("networking.istio.io/v1beta1", ISTIO_KINDS[0], &obj).expect("named");
        assert_eq!(
            r.file.path,
            "kubernetes:/apis/networking.istio.io/v1beta1/namespaces/shop/virtualservices/reviews"
        );
        let doc: serde_yaml::Value = serde_yaml::from_str(&r.file.text).expect("yaml");
        let keys: Vec<&str> = doc
            .as_mapping()
            .expect("mapping")
            .keys()
            .filter_map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec"]);
        let meta = doc["metadata"].as_mapping().expect("metadata");
        let meta_keys: Vec<&str> = meta.keys().filter_map(|k| k.as_str()).collect();
        assert_eq!(
            meta_keys,
            [
                "name",
                "namespace",
                "labels",
                "annotations",
                "creationTimestamp"
            ]
        );
        assert!(
            doc["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                .is_null()
        );
        assert_eq!(r.reference.uid.as_deref(), Some("u-9"));
        // The translator parses it: the only diagnostic is the host no ServiceEntry defines.
        let t = translate_files(std::slice::from_ref(&r.file), &Options::default());
        assert!(
            t.diagnostics
                .iter()
                .all(|d| d.code == shadowplane_translator::Code::ReferencedResourceNotFound),
            "{:?}",
            t.diagnostics
        );
        let parsed = shadowplane_translator::parse::parse_files(std::slice::from_ref(&r.file));
        assert_eq!(parsed.resources.len(), 1);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    }

    fn translate(se: &Rendered, dr: &str) -> shadowplane_translator::Translation {
        translate_files(
            &[
                se.file.clone(),
                SourceFile {
                    path: "dr.yaml".into(),
                    text: dr.into(),
                },
            ],
            &Options::default(),
        )
    }

    const SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

    /// Endpoints of `cluster` in `t`, as `address:port`.
    fn endpoints_of(t: &shadowplane_translator::Translation, cluster: &str) -> Vec<String> {
        use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
        use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
        let cla = t
            .resources
            .endpoints
            .iter()
            .find(|c| c.cluster_name == cluster)
            .unwrap_or_else(|| panic!("no endpoints for {cluster}"));
        let mut out = Vec::new();
        for lle in &cla.endpoints {
            for lb in &lle.lb_endpoints {
                if let Some(HostIdentifier::Endpoint(e)) = &lb.host_identifier {
                    if let Some(address::Address::SocketAddress(sa)) =
                        e.address.as_ref().and_then(|a| a.address.as_ref())
                    {
                        let port = match sa.port_specifier {
                            Some(PortSpecifier::PortValue(p)) => p,
                            _ => 0,
                        };
                        out.push(format!("{}:{port}", sa.address));
                    }
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn one_port_number_twice_keeps_the_tcp_port_and_translates_without_errors() {
        // kube-dns in every cluster: 53/UDP and 53/TCP under two names.
        let dns = service(json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
            ]}
        }));
        let slice = slice(json!({
            "metadata": {"name": "kube-dns-x", "namespace": "kube-system",
                         "labels": {"kubernetes.io/service-name": "kube-dns"}},
            "addressType": "IPv4",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "metrics", "port": 9153, "protocol": "TCP"},
            ],
            "endpoints": [{"addresses": ["10.0.0.10"]}],
        }));
        let se = service_entry(&dns, &[&slice], &BTreeMap::new(), "cluster.local")
            .expect("service entry");
        let spec = spec_of(&se);
        let names: Vec<&str> = spec["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .map(|p| p["name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(names, ["dns-tcp", "metrics"]);
        let t = translate_files(std::slice::from_ref(&se.file), &Options::default());
        assert!(!t.has_errors(), "{:?}", t.diagnostics);
        assert_eq!(
            endpoints_of(&t, "outbound|53||kube-dns.kube-system.svc.cluster.local"),
            ["10.0.0.10:53"]
        );
    }

    #[test]
    fn a_pod_label_change_moves_its_endpoint_between_subsets_eds_only() {
        let s = reviews_slice(
            "reviews-abc",
            json!([ep("10.0.0.1", "pod-a", None), ep("10.0.0.2", "pod-b", None)]),
        );
        let before = pods(&[
            ("pod-a", &[("version", "v1")]),
            ("pod-b", &[("version", "v1")]),
        ]);
        let after = pods(&[
            ("pod-a", &[("version", "v1")]),
            ("pod-b", &[("version", "v2")]),
        ]);
        let t1 = translate(
            &service_entry(&reviews(), &[&s], &before, "cluster.local").expect("se"),
            SUBSETS,
        );
        let t2 = translate(
            &service_entry(&reviews(), &[&s], &after, "cluster.local").expect("se"),
            SUBSETS,
        );
        assert!(!t1.has_errors(), "{:?}", t1.diagnostics);
        let v1 = "outbound|80|v1|reviews.shop.svc.cluster.local";
        let v2 = "outbound|80|v2|reviews.shop.svc.cluster.local";
        assert_eq!(endpoints_of(&t1, v1), ["10.0.0.1:9080", "10.0.0.2:9080"]);
        assert!(endpoints_of(&t1, v2).is_empty());
        assert_eq!(endpoints_of(&t2, v1), ["10.0.0.1:9080"]);
        assert_eq!(endpoints_of(&t2, v2), ["10.0.0.2:9080"]);
        assert_eq!(t1.resources.clusters, t2.resources.clusters);
        assert_eq!(t1.resources.listeners, t2.resources.listeners);
        assert_eq!(t1.resources.routes, t2.resources.routes);
    }

    #[test]
    fn an_endpoint_change_only_changes_load_assignments() {
        let one = reviews_slice("reviews-abc", json!([ep("10.0.0.1", "pod-a", None)]));
        let two = reviews_slice(
            "reviews-abc",
            json!([ep("10.0.0.1", "pod-a", None), ep("10.0.0.2", "pod-b", None)]),
        );
        let pods = pods(&[
            ("pod-a", &[("version", "v1")]),
            ("pod-b", &[("version", "v1")]),
        ]);
        let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
  - route: [{destination: {host: reviews.shop.svc.cluster.local, subset: v1, port: {number: 80}}}]
    mirror: {host: reviews.shop.svc.cluster.local, subset: v2, port: {number: 80}}
";
        let files = |s: &SliceInfo| {
            vec![
                service_entry(&reviews(), &[s], &pods, "cluster.local")
                    .expect("se")
                    .file,
                SourceFile {
                    path: "dr.yaml".into(),
                    text: SUBSETS.into(),
                },
                SourceFile {
                    path: "vs.yaml".into(),
                    text: vs.into(),
                },
            ]
        };
        let t1 = translate_files(&files(&one), &Options::default());
        let t2 = translate_files(&files(&two), &Options::default());
        assert!(!t1.has_errors(), "{:?}", t1.diagnostics);
        assert!(!t1.resources.listeners.is_empty() && !t1.resources.routes.is_empty());
        assert_eq!(t1.resources.clusters, t2.resources.clusters);
        assert_eq!(t1.resources.listeners, t2.resources.listeners);
        assert_eq!(t1.resources.routes, t2.resources.routes);
        assert_ne!(t1.resources.endpoints, t2.resources.endpoints);
        let v1 = "outbound|80|v1|reviews.shop.svc.cluster.local";
        assert_eq!(endpoints_of(&t2, v1), ["10.0.0.1:9080", "10.0.0.2:9080"]);
    }

    #[test]
    fn one_address_with_different_ports_is_two_endpoints() {
        // hostNetwork Pods on one node: the node's IP, a named target port per Pod.
        let svc = service(json!({"metadata": {"name": "calc", "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}));
        let slice_for = |name: &str, pod: &str, port: i32| {
            slice(json!({
                "metadata": {"name": name, "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "calc"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": port}],
                "endpoints": [ep("127.0.0.1", pod, None)],
            }))
        };
        let (a, b) = (
            slice_for("calc-a", "v1", 8081),
            slice_for("calc-b", "v2", 8082),
        );
        let pods = pods(&[("v1", &[("version", "v1")]), ("v2", &[("version", "v2")])]);
        let se = service_entry(&svc, &[&a, &b], &pods, "cluster.local").expect("se");
        let t = translate(&se, &SUBSETS.replace("reviews", "calc"));
        assert!(!t.has_errors(), "{:?}", t.diagnostics);
        assert_eq!(
            endpoints_of(&t, "outbound|80||calc.shop.svc.cluster.local"),
            ["127.0.0.1:8081", "127.0.0.1:8082"]
        );
        assert_eq!(
            endpoints_of(&t, "outbound|80|v2|calc.shop.svc.cluster.local"),
            ["127.0.0.1:8082"]
        );
    }

    #[test]
    fn an_unnamed_port_maps_to_the_slice_port() {
        let svc = service(json!({"metadata": {"name": "web", "namespace": "shop"},
                                 "spec": {"ports": [{"port": 80, "targetPort": 8080}]}}));
        let s = slice(json!({
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 8081}],
            "endpoints": [{"addresses": ["10.1.0.1"]}],
        }));
        let se = service_entry(&svc, &[&s], &BTreeMap::new(), "cluster.local").expect("se");
        let t = translate_files(std::slice::from_ref(&se.file), &Options::default());
        assert!(!t.has_errors(), "{:?}\n{}", t.diagnostics, se.file.text);
        assert_eq!(
            endpoints_of(&t, "outbound|80||web.shop.svc.cluster.local"),
            ["10.1.0.1:8081"]
        );
    }

    #[test]
    fn external_name_services_resolve_with_dns_and_portless_services_are_skipped() {
        let ext = service(json!({"metadata": {"name": "db", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com",
                     "ports": [{"name": "tcp", "port": 5432}]}}));
        let se = service_entry(&ext, &[], &BTreeMap::new(), "cluster.local").expect("se");
        let spec = spec_of(&se);
        assert_eq!(spec["resolution"].as_str(), Some("DNS"));
        assert_eq!(spec["location"].as_str(), Some("MESH_EXTERNAL"));
        assert_eq!(
            spec["endpoints"][0]["address"].as_str(),
            Some("db.example.com")
        );
        let portless = service(json!({"metadata": {"name": "x", "namespace": "shop"}, "spec": {}}));
        assert!(service_entry(&portless, &[], &BTreeMap::new(), "cluster.local").is_none());
    }

    #[test]
    fn a_user_service_entry_with_the_services_name_does_not_collide() {
        let se = service_entry(&reviews(), &[], &BTreeMap::new(), "cluster.local").expect("se");
        let user = SourceFile {
            path: "se.yaml".into(),
            text: "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"
            .into(),
        };
        let t = translate_files(&[user, se.file], &Options::default());
        assert!(!t.has_errors(), "{:?}", t.diagnostics);
    }
}
