//! A Kubernetes API server stand-in: a real HTTP/1.1 server on 127.0.0.1 that the real `kube`
//! client talks to as if it were a cluster's API server (v1.33). It is the only Kubernetes
//! stand-in of the project.
//!
//! What it serves, with the real paths and JSON:
//!
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>`,
//!   `/apis/<group>/<version>` (legacy JSON), and aggregated discovery (`/api` and `/apis` with
//!   `Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`) unless
//!   [`KubeApiServer::set_aggregated_discovery`] turns it off, as on a server from before 1.30:
//!   that server ignores the aggregated media type and answers the legacy JSON with
//!   `Content-Type: application/json`;
//! - core/v1 services, pods and events; discovery.k8s.io/v1 endpointslices; events.k8s.io/v1
//!   events (the same storage as core/v1 events, converted like the real server does);
//!   networking.istio.io virtualservices, destinationrules, serviceentries, workloadentries and
//!   gateways at the versions [`KubeApiServer::set_istio_versions`] serves (v1, v1beta1 and
//!   v1alpha3 by default, the first one preferred), like Istio's CRDs; none (the group is not
//!   discovered at all) is a cluster without them, until they are installed;
//! - list (cluster-wide and per namespace) with `metadata.resourceVersion`,
//!   `limit`/`continue` pagination in storage-key order (`<ns>/<name>`, as etcd; continue tokens
//!   expire at compaction: 410), label selectors,
//!   and field selectors (only the fields the real server supports for each resource);
//! - watch (`watch=true`) streaming newline-delimited WatchEvents ADDED / MODIFIED / DELETED /
//!   BOOKMARK (every [`Options::bookmark_interval`] with `allowWatchBookmarks=true`, and before a
//!   `timeoutSeconds` end), streaming lists (`sendInitialEvents=true` with the
//!   `k8s.io/initial-events-end` bookmark), label-selector transitions as ADDED/DELETED like the
//!   watch cache; a resourceVersion older than the compaction point gets an ERROR event with a
//!   410 `Expired` Status, as the real server sends it;
//! - Event writes (POST, PUT, and merge/strategic-merge PATCH as `kube::runtime::events::Recorder`
//!   sends them) in both API groups, validated like the real server (`ValidateEventCreate` /
//!   `ValidateEventUpdate`: regarding/involvedObject namespace, reason, action, reporting
//!   controller and instance, eventTime, type, immutable fields on update, namespace of the body
//!   against the path, namespace existence).
//!
//! One global resourceVersion counter (like etcd's revision) orders every change. Tests change
//! the cluster through [`KubeApiServer::apply`] / [`KubeApiServer::delete`], read Events with
//! [`KubeApiServer::events`], compact history with [`KubeApiServer::compact`], and stop and
//! restart the server on the same port ([`KubeApiServer::stop`], [`KubeApiServer::resume`],
//! [`KubeApiServer::restart`]): open watches are cut, the state is kept (an etcd-backed server's
//! state survives its restart).
//!
//! Strictness: every request the real server would refuse is answered with the real error
//! Status JSON (401, 403, 404, 405, 400, 409, 415, 422, 406 as Kubernetes does) and recorded in
//! [`KubeApiServer::rejections`], except the answers that are the protocol working rather than a
//! client mistake: 410 Expired after compaction, 409 AlreadyExists for a create whose name
//! exists (replicas that name the same Event alike rely on it), and 409 Conflict for a write
//! whose `metadata.resourceVersion` precondition failed (optimistic concurrency). Two things the real server accepts silently are recorded too
//! (answered as the real server answers them): an unknown query parameter (ignored by the real
//! server) and an unknown field in a written body (dropped with a `Warning` header). Every
//! end-to-end test asserts [`KubeApiServer::assert_no_rejections`] at its end.
//!
//! The client is authorized by RBAC rules, by default exactly those of the committed
//! `deploy/kubernetes/clusterrole.yaml` (read when the stand-in starts), bound to the service
//! account `system:serviceaccount:shadowplane-system:shadowplane`: a request the role does not
//! grant is 403 Forbidden, so the e2e tests also check that the deployed role is enough.
//! Requests must carry the kubeconfig's bearer token ([`KubeApiServer::write_kubeconfig`]),
//! else 401.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};

/// The bearer token of the kubeconfig [`KubeApiServer::write_kubeconfig`] writes.
pub const TOKEN: &str = "shadowplane-standin-token";
/// The Kubernetes version the stand-in claims to be.
pub const GIT_VERSION: &str = "v1.33.1";
const ISTIO_GROUP: &str = "networking.istio.io";
const ALL_ISTIO_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
/// How long a request for a resourceVersion newer than the server's waits before 504, like the
/// watch cache's `waitUntilFreshAndBlock`.
const TOO_LARGE_RV_WAIT: Duration = Duration::from_secs(3);
/// Namespaces that exist in every cluster.
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

// =============================================================================================
// Resources

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Store {
    Service,
    Pod,
    Event,
    EndpointSlice,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    Gateway,
}

/// How stored objects are shown through one API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// Built-in type: lists leave `apiVersion`/`kind` out of their items.
    Builtin,
    /// core/v1 Event over the events.k8s.io/v1 storage form.
    CoreEvent,
    /// Custom resource: every version shows the same object with its `apiVersion`.
    Crd,
}

struct ResourceDef {
    group: &'static str,
    /// Fixed version of a built-in group; `None` for the Istio CRDs (the served versions are
    /// configurable).
    version: Option<&'static str>,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    store: Store,
    form: Form,
    verbs: &'static [&'static str],
    /// Field selector labels besides `metadata.name` and `metadata.namespace`.
    field_labels: &'static [&'static str],
    subresources: &'static [&'static str],
    storage_version_hash: &'static str,
}

const BUILTIN_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: Some("v1"),
        plural: "events",
        singular: "event",
        kind: "Event",
        short_names: &["ev"],
        categories: &[],
        store: Store::Event,
        form: Form::CoreEvent,
        verbs: BUILTIN_VERBS,
        field_labels: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        subresources: &[],
        storage_version_hash: "r2yiGXH7wu8=",
    },
    ResourceDef {
        group: "",
        version: Some("v1"),
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        short_names: &["po"],
        categories: &["all"],
        store: Store::Pod,
        form: Form::Builtin,
        verbs: BUILTIN_VERBS,
        field_labels: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        subresources: &["status"],
        storage_version_hash: "xPOwRZ+Yhw8=",
    },
    ResourceDef {
        group: "",
        version: Some("v1"),
        plural: "services",
        singular: "service",
        kind: "Service",
        short_names: &["svc"],
        categories: &["all"],
        store: Store::Service,
        form: Form::Builtin,
        verbs: BUILTIN_VERBS,
        field_labels: &["spec.clusterIP", "spec.type"],
        subresources: &["status"],
        storage_version_hash: "0/CO1lhkEBI=",
    },
    ResourceDef {
        group: "discovery.k8s.io",
        version: Some("v1"),
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        short_names: &[],
        categories: &[],
        store: Store::EndpointSlice,
        form: Form::Builtin,
        verbs: BUILTIN_VERBS,
        field_labels: &[],
        subresources: &[],
        storage_version_hash: "Nx3SIv6I0mE=",
    },
    ResourceDef {
        group: "events.k8s.io",
        version: Some("v1"),
        plural: "events",
        singular: "event",
        kind: "Event",
        short_names: &["ev"],
        categories: &[],
        store: Store::Event,
        form: Form::Builtin,
        verbs: BUILTIN_VERBS,
        field_labels: &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
        subresources: &[],
        storage_version_hash: "r2yiGXH7wu8=",
    },
    ResourceDef {
        group: ISTIO_GROUP,
        version: None,
        plural: "destinationrules",
        singular: "destinationrule",
        kind: "DestinationRule",
        short_names: &["dr"],
        categories: &["istio-io", "networking-istio-io"],
        store: Store::DestinationRule,
        form: Form::Crd,
        verbs: BUILTIN_VERBS,
        field_labels: &[],
        subresources: &["status"],
        storage_version_hash: "qoVfJF8KIjA=",
    },
    ResourceDef {
        group: ISTIO_GROUP,
        version: None,
        plural: "gateways",
        singular: "gateway",
        kind: "Gateway",
        short_names: &["gw"],
        categories: &["istio-io", "networking-istio-io"],
        store: Store::Gateway,
        form: Form::Crd,
        verbs: BUILTIN_VERBS,
        field_labels: &[],
        subresources: &["status"],
        storage_version_hash: "lJ1Kz1PHMa8=",
    },
    ResourceDef {
        group: ISTIO_GROUP,
        version: None,
        plural: "serviceentries",
        singular: "serviceentry",
        kind: "ServiceEntry",
        short_names: &["se"],
        categories: &["istio-io", "networking-istio-io"],
        store: Store::ServiceEntry,
        form: Form::Crd,
        verbs: BUILTIN_VERBS,
        field_labels: &[],
        subresources: &["status"],
        storage_version_hash: "1gm5BUfXsbs=",
    },
    ResourceDef {
        group: ISTIO_GROUP,
        version: None,
        plural: "virtualservices",
        singular: "virtualservice",
        kind: "VirtualService",
        short_names: &["vs"],
        categories: &["istio-io", "networking-istio-io"],
        store: Store::VirtualService,
        form: Form::Crd,
        verbs: BUILTIN_VERBS,
        field_labels: &[],
        subresources: &["status"],
        storage_version_hash: "DKLn3Rtd3Y8=",
    },
    ResourceDef {
        group: ISTIO_GROUP,
        version: None,
        plural: "workloadentries",
        singular: "workloadentry",
        kind: "WorkloadEntry",
        short_names: &["we"],
        categories: &["istio-io", "networking-istio-io"],
        store: Store::WorkloadEntry,
        form: Form::Crd,
        verbs: BUILTIN_VERBS,
        field_labels: &[],
        subresources: &["status"],
        storage_version_hash: "8Rsy5fgHVWQ=",
    },
];

/// The groups under `/apis`, in the server's priority order.
const API_GROUPS: [&str; 3] = ["discovery.k8s.io", "events.k8s.io", ISTIO_GROUP];

fn resource_def(group: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
}

/// The definition a test object (`apiVersion` + `kind`) is stored under.
fn def_for_kind(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    RESOURCES.iter().find(|r| {
        r.group == group
            && r.kind == kind
            && match r.version {
                Some(v) => v == version,
                None => ALL_ISTIO_VERSIONS.contains(&version),
            }
    })
}

fn api_version_of(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

fn group_kind(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        def.kind.to_string()
    } else {
        format!("{}.{}", def.kind, def.group)
    }
}

fn group_resource(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        def.plural.to_string()
    } else {
        format!("{}.{}", def.plural, def.group)
    }
}

// =============================================================================================
// Public test API

/// What the stand-in serves.
#[derive(Clone, Debug)]
pub struct Options {
    /// The networking.istio.io versions served, the preferred first; none: the CRDs are not
    /// installed (the group is absent from discovery and its paths are 404).
    pub istio_versions: Vec<String>,
    /// Whether `/api` and `/apis` answer aggregated discovery (Kubernetes 1.30+) when asked.
    pub aggregated_discovery: bool,
    /// How often an open watch with `allowWatchBookmarks=true` gets a BOOKMARK (the real server
    /// sends one about every minute; tests want them sooner).
    pub bookmark_interval: Duration,
    /// The RBAC rules the client is granted ([`deploy_cluster_role`] by default).
    pub rules: Vec<PolicyRule>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            istio_versions: ALL_ISTIO_VERSIONS.iter().map(|v| v.to_string()).collect(),
            aggregated_discovery: true,
            bookmark_interval: Duration::from_secs(1),
            rules: deploy_cluster_role(),
        }
    }
}

/// One RBAC PolicyRule (`*` matches anything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
}

impl PolicyRule {
    fn allows(&self, group: &str, resource: &str, verb: &str) -> bool {
        let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        any(&self.api_groups, group) && any(&self.resources, resource) && any(&self.verbs, verb)
    }
}

/// The rules of the committed `deploy/kubernetes/clusterrole.yaml`. Panics if it is missing or
/// not a ClusterRole: the e2e tests check the deployed role, never skip it.
pub fn deploy_cluster_role() -> Vec<PolicyRule> {
    let path = super::repo_root().join("deploy/kubernetes/clusterrole.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let doc: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    assert_eq!(
        doc["kind"].as_str(),
        Some("ClusterRole"),
        "{} is not a ClusterRole",
        path.display()
    );
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    doc["rules"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{} has no rules", path.display()))
        .iter()
        .map(|r| PolicyRule {
            api_groups: strings(&r["apiGroups"]),
            resources: strings(&r["resources"]),
            verbs: strings(&r["verbs"]),
        })
        .collect()
}

/// Every verb on every resource (a cluster-admin), for self-tests that write what the deployed
/// role does not allow.
pub fn allow_all() -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: vec!["*".into()],
        resources: vec!["*".into()],
        verbs: vec!["*".into()],
    }]
}

/// A request the stand-in refused (or, with `status` 2xx, accepted while the real server would
/// have ignored part of it): the client did something a real API server would not honour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    pub status: u16,
    pub message: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}: {}",
            self.method, self.uri, self.status, self.message
        )
    }
}

/// One request as the stand-in answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    pub status: u16,
}

impl RequestRecord {
    /// The value of query parameter `name` (percent-decoded).
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.uri.split_once('?')?;
        parse_query(query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    pub fn is_watch(&self) -> bool {
        self.query("watch").as_deref() == Some("true")
    }
}

/// The Kubernetes API server stand-in (see the module documentation). Stopped on drop.
pub struct KubeApiServer {
    shared: Arc<Shared>,
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
    running: Option<Running>,
}

struct Running {
    accept: tokio::task::AbortHandle,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl KubeApiServer {
    /// Start on a free 127.0.0.1 port with the default [`Options`].
    pub fn start() -> KubeApiServer {
        KubeApiServer::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> KubeApiServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-apiserver-standin")
            .enable_all()
            .build()
            .expect("build a tokio runtime for the API server stand-in");
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let (holds_changed, _) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(options)),
            changed,
            holds_changed,
        });
        let listener = {
            let _guard = runtime.enter();
            bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .expect("bind the API server stand-in on 127.0.0.1:0")
        };
        let port = listener
            .local_addr()
            .expect("local address of a bound socket")
            .port();
        let mut server = KubeApiServer {
            shared,
            port,
            runtime: Some(runtime),
            running: None,
        };
        server.serve(listener);
        server
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let shared = self.shared.clone();
        let conns = connections.clone();
        let handle = self.runtime().handle().clone();
        let accept = self.runtime().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = shared.clone();
                let stop_rx = stop_rx.clone();
                let task =
                    handle.spawn(async move {
                        let service = service_fn(move |req| {
                            let shared = shared.clone();
                            let stop_rx = stop_rx.clone();
                            async move {
                                Ok::<_, Infallible>(handle_request(shared, stop_rx, req).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                let mut conns = lock(&conns);
                conns.retain(|t| !t.is_finished());
                conns.push(task.abort_handle());
            }
        });
        self.running = Some(Running {
            accept: accept.abort_handle(),
            connections,
            stop,
        });
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Write a kubeconfig for this server (plain HTTP, bearer token [`TOKEN`], current
    /// namespace `default`) to `<dir>/kubeconfig` and return its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: standin\n  \
               cluster:\n    \
                 server: {url}\n\
             users:\n\
             - name: shadowplane\n  \
               user:\n    \
                 token: {TOKEN}\n\
             contexts:\n\
             - name: standin\n  \
               context:\n    \
                 cluster: standin\n    \
                 user: shadowplane\n    \
                 namespace: default\n\
             current-context: standin\n",
            url = self.url()
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Stop serving: the listener closes and every open connection (watches included) is cut.
    /// The state is kept.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(true);
            running.accept.abort();
            for conn in lock(&running.connections).drain(..) {
                conn.abort();
            }
        }
    }

    /// Serve again on the same port (after [`KubeApiServer::stop`]), with the state kept.
    pub fn resume(&mut self) {
        if self.running.is_some() {
            return;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            let bound = {
                let _guard = self.runtime().enter();
                bind(addr)
            };
            match bound {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("the API server stand-in cannot listen on {addr} again: {e}"),
            }
        };
        self.serve(listener);
    }

    /// [`KubeApiServer::stop`] then [`KubeApiServer::resume`].
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    fn notify(&self, rv: u64) {
        self.shared.changed.send_replace(rv);
    }

    /// Create or replace an object (JSON with `apiVersion`, `kind`, `metadata.name` and
    /// `metadata.namespace`), like `kubectl apply`: the server sets `uid`,
    /// `creationTimestamp`, `resourceVersion` (and `generation` for custom resources and
    /// EndpointSlices). Its namespace starts to exist. Returns the stored object.
    pub fn apply(&self, object: &Value) -> Value {
        let api_version = object["apiVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("apply: no apiVersion in {object}"));
        let kind = object["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("apply: no kind in {object}"));
        let def = def_for_kind(api_version, kind)
            .unwrap_or_else(|| panic!("apply: the stand-in serves no {kind} in {api_version}"));
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("apply: no metadata.name in {object}"))
            .to_string();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_else(|| panic!("apply: no metadata.namespace in {object}"))
            .to_string();
        let mut object = object.clone();
        if def.store == Store::Event {
            if def.form == Form::CoreEvent {
                object = core_event_to_v1(&object);
            }
            object["apiVersion"] = json!("events.k8s.io/v1");
        }
        let (stored, rv) = {
            let mut state = self.state();
            state.namespaces.insert(namespace.clone());
            let stored = state.put(def.store, &namespace, &name, object);
            (stored, state.rv)
        };
        self.notify(rv);
        stored
    }

    /// Delete an object by kind (`Service`, `VirtualService`, ...; the first group serving the
    /// kind), namespace and name. Returns the object as it was, `None` if there was none.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let def = RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .unwrap_or_else(|| panic!("delete: the stand-in serves no kind {kind}"));
        let (old, rv) = {
            let mut state = self.state();
            let old = state.remove(def.store, namespace, name);
            (old, state.rv)
        };
        self.notify(rv);
        old
    }

    /// The stored object of `kind` (see [`KubeApiServer::delete`]), if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let def = RESOURCES.iter().find(|r| r.kind == kind)?;
        self.state()
            .objects
            .get(&(def.store, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every Event stored, in the events.k8s.io/v1 form (`regarding`, `note`, `reason`, `type`,
    /// `series`...), whichever API posted it; ordered by namespace and name.
    pub fn events(&self) -> Vec<Value> {
        self.state()
            .objects
            .iter()
            .filter(|((store, _, _), _)| *store == Store::Event)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Make a namespace exist (namespaces of applied objects exist already).
    pub fn create_namespace(&self, namespace: &str) {
        self.state().namespaces.insert(namespace.to_string());
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    /// Compact the history at the current resourceVersion, like etcd's compaction: a watch or a
    /// continue token from an older resourceVersion gets 410 Gone (`Expired`). Returns the
    /// compaction point.
    pub fn compact(&self) -> u64 {
        let mut state = self.state();
        let rv = state.rv;
        state.compacted = rv;
        state.log.retain(|e| e.rv > rv);
        rv
    }

    /// Serve networking.istio.io at `versions` only (the first one is preferred), like a
    /// cluster whose Istio CRDs serve those versions; none, like a cluster without them.
    /// Objects are kept.
    pub fn set_istio_versions(&self, versions: &[&str]) {
        for v in versions {
            assert!(
                ALL_ISTIO_VERSIONS.contains(v),
                "Istio's CRDs have no version {v}"
            );
        }
        self.state().options.istio_versions = versions.iter().map(|v| v.to_string()).collect();
    }

    /// Hold every list (not watch) of `plural` (e.g. `virtualservices`) until
    /// [`KubeApiServer::release_lists`]: a list that takes long, as on a big cluster. The
    /// request is recorded once it is answered.
    pub fn hold_lists(&self, plural: &str) {
        self.state().held_lists.insert(plural.to_string());
    }

    /// Answer the lists held by [`KubeApiServer::hold_lists`] and stop holding new ones.
    pub fn release_lists(&self, plural: &str) {
        self.state().held_lists.remove(plural);
        self.shared.holds_changed.send_modify(|n| *n += 1);
    }

    /// How many lists of `plural` are being held now.
    pub fn held_lists(&self, plural: &str) -> usize {
        self.state().waiting_lists.get(plural).copied().unwrap_or(0)
    }

    /// Answer aggregated discovery (Kubernetes 1.30+) or ignore its media type like an older
    /// server does.
    pub fn set_aggregated_discovery(&self, enabled: bool) {
        self.state().options.aggregated_discovery = enabled;
    }

    /// Every refused (or flagged) request so far.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.state().rejections.clone()
    }

    /// Return and forget the rejections so far (for tests that send bad requests on purpose).
    pub fn take_rejections(&self) -> Vec<Rejection> {
        std::mem::take(&mut self.state().rejections)
    }

    /// Panic, listing them, if any request was refused or flagged.
    pub fn assert_no_rejections(&self) {
        let rejections = self.rejections();
        assert!(
            rejections.is_empty(),
            "the Kubernetes API server stand-in refused {} request(s) a real API server would \
             refuse (or flagged what it would ignore):\n{}",
            rejections.len(),
            rejections
                .iter()
                .map(|r| format!("  {r}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Every request answered so far (a watch is recorded when it starts).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests.clone()
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.state().open_watches
    }

    /// How many watches were answered with a 410 `Expired` ERROR event (a resourceVersion
    /// older than the compaction point): each one makes a correct client relist.
    pub fn expired_watches(&self) -> usize {
        self.state().expired_watches
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for KubeApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KubeApiServer({})", self.url())
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// =============================================================================================
// State

struct Shared {
    state: Mutex<State>,
    /// The latest resourceVersion, for open watches to wake up.
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped when lists are released ([`KubeApiServer::release_lists`]).
    holds_changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Added,
    Modified,
    Deleted,
}

struct LogEntry {
    rv: u64,
    store: Store,
    namespace: String,
    change: Change,
    /// The object before the change (`None` when added).
    old: Option<Value>,
    /// The object after the change (for a deletion: the last state, at the deletion's rv).
    new: Value,
}

struct State {
    options: Options,
    /// The global resourceVersion (etcd's revision).
    rv: u64,
    /// History up to here is gone.
    compacted: u64,
    objects: BTreeMap<(Store, String, String), Value>,
    log: VecDeque<LogEntry>,
    namespaces: BTreeSet<String>,
    uid_counter: u64,
    rejections: Vec<Rejection>,
    requests: Vec<RequestRecord>,
    open_watches: usize,
    /// Watches answered with 410 Expired (their resourceVersion was compacted).
    expired_watches: usize,
    /// Resources (plural) whose lists are held ([`KubeApiServer::hold_lists`]).
    held_lists: BTreeSet<String>,
    /// Lists waiting on a hold now, by resource.
    waiting_lists: BTreeMap<String, usize>,
}

impl State {
    fn new(options: Options) -> State {
        State {
            options,
            rv: 1000,
            compacted: 0,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            namespaces: SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect(),
            uid_counter: 0,
            rejections: Vec::new(),
            requests: Vec::new(),
            open_watches: 0,
            expired_watches: 0,
            held_lists: BTreeSet::new(),
            waiting_lists: BTreeMap::new(),
        }
    }

    fn next_uid(&mut self) -> String {
        self.uid_counter += 1;
        format!(
            "5a1d0c3e-{:04x}-4000-8000-{:012x}",
            self.uid_counter >> 48,
            self.uid_counter
        )
    }

    /// Store `object` (create or replace) at a new resourceVersion; returns the stored object.
    fn put(&mut self, store: Store, namespace: &str, name: &str, mut object: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let key = (store, namespace.to_string(), name.to_string());
        let old = self.objects.get(&key).cloned();
        let meta = object
            .as_object_mut()
            .expect("objects are JSON objects")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        let uid = match old.as_ref().and_then(|o| o["metadata"]["uid"].as_str()) {
            Some(uid) => uid.to_string(),
            None => self.next_uid(),
        };
        let created = old
            .as_ref()
            .and_then(|o| o["metadata"]["creationTimestamp"].as_str())
            .map(str::to_string)
            .unwrap_or_else(now_rfc3339);
        let generation = old
            .as_ref()
            .and_then(|o| o["metadata"]["generation"].as_i64())
            .unwrap_or(0);
        let spec_changed = old
            .as_ref()
            .map(|o| {
                o.get("spec") != object.get("spec") || o.get("endpoints") != object.get("endpoints")
            })
            .unwrap_or(true);
        let meta = object["metadata"]
            .as_object_mut()
            .expect("metadata was made an object");
        meta.insert("name".into(), json!(name));
        meta.insert("namespace".into(), json!(namespace));
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(created));
        if matches!(
            store,
            Store::EndpointSlice
                | Store::VirtualService
                | Store::DestinationRule
                | Store::ServiceEntry
                | Store::WorkloadEntry
                | Store::Gateway
        ) {
            let generation = if spec_changed {
                generation + 1
            } else {
                generation
            };
            meta.insert("generation".into(), json!(generation.max(1)));
        }
        self.objects.insert(key, object.clone());
        self.log.push_back(LogEntry {
            rv,
            store,
            namespace: namespace.to_string(),
            change: if old.is_some() {
                Change::Modified
            } else {
                Change::Added
            },
            old,
            new: object.clone(),
        });
        object
    }

    fn remove(&mut self, store: Store, namespace: &str, name: &str) -> Option<Value> {
        let key = (store, namespace.to_string(), name.to_string());
        let old = self.objects.remove(&key)?;
        self.rv += 1;
        let mut last = old.clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.log.push_back(LogEntry {
            rv: self.rv,
            store,
            namespace: namespace.to_string(),
            change: Change::Deleted,
            old: Some(old.clone()),
            new: last,
        });
        Some(old)
    }

    /// The objects of `store` in `namespace` (all with `None`) as they were at `rv` (which must
    /// not be older than the compaction point), keyed by (namespace, name). Borrowed: a paged
    /// list of a big kind reads the whole kind once per page, and cloning every object per page
    /// made listing 30,000 Pods take the bench most of a minute.
    fn snapshot_at(
        &self,
        store: Store,
        namespace: Option<&str>,
        rv: u64,
    ) -> BTreeMap<(String, String), &Value> {
        let mut objects: BTreeMap<(String, String), &Value> = self
            .objects
            .range((store, String::new(), String::new())..)
            .take_while(|((s, _, _), _)| *s == store)
            .filter(|((_, ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|((_, ns, name), v)| ((ns.clone(), name.clone()), v))
            .collect();
        for entry in self.log.iter().rev().take_while(|e| e.rv > rv) {
            if entry.store != store || namespace.is_some_and(|n| n != entry.namespace) {
                continue;
            }
            let name = entry.new["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let key = (entry.namespace.clone(), name);
            match &entry.old {
                Some(old) => {
                    objects.insert(key, old);
                }
                None => {
                    objects.remove(&key);
                }
            }
        }
        objects
    }
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (civil-from-days, proleptic Gregorian).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

// =============================================================================================
// Errors as the API server writes them

struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
    /// The protocol working, not a client mistake (410 from compaction, 409 AlreadyExists):
    /// answered but not recorded as a rejection.
    expected: bool,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            expected: false,
        }
    }

    fn details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    fn not_found_path() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .details(json!({}))
    }

    /// A create of a name that exists: `errors.NewAlreadyExists` (details name the resource;
    /// `group` is omitted for the core group, as the real server's `omitempty`). Not a
    /// client mistake: writers that agree on a name (replicas posting the same Event) are
    /// told the object is already there, so it is not recorded as a rejection.
    fn already_exists(def: &ResourceDef, name: &str) -> ApiError {
        let mut details = json!({"name": name, "kind": def.plural});
        if !def.group.is_empty() {
            details["group"] = json!(def.group);
        }
        let mut e = ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", group_resource(def)),
        )
        .details(details);
        e.expected = true;
        e
    }

    /// A write whose `metadata.resourceVersion` precondition failed: `errors.NewConflict`
    /// (details as [`ApiError::already_exists`]). Not a client mistake: optimistic
    /// concurrency working (replicas recording the same Event occurrence), so it is not
    /// recorded as a rejection.
    fn conflict(def: &ResourceDef, name: &str) -> ApiError {
        let mut details = json!({"name": name, "kind": def.plural});
        if !def.group.is_empty() {
            details["group"] = json!(def.group);
        }
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", group_resource(def)),
        )
        .details(details);
        e.expected = true;
        e
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    fn not_found(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", group_resource(def)),
        )
        .details(json!({"name": name, "group": def.group, "kind": def.plural}))
    }

    fn invalid(def: &ResourceDef, name: &str, errors: &[FieldError]) -> ApiError {
        let list = errors.iter().map(FieldError::to_string).collect::<Vec<_>>();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let causes = errors
            .iter()
            .map(|e| json!({"reason": e.kind.reason(), "message": e.cause_message(), "field": e.field}))
            .collect::<Vec<_>>();
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {joined}", group_kind(def)),
        )
        .details(json!({"name": name, "group": def.group, "kind": def.kind, "causes": causes}))
    }

    fn invalid_list_options(errors: &[FieldError]) -> ApiError {
        let list = errors.iter().map(FieldError::to_string).collect::<Vec<_>>();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let causes = errors
            .iter()
            .map(|e| json!({"reason": e.kind.reason(), "message": e.cause_message(), "field": e.field}))
            .collect::<Vec<_>>();
        ApiError::new(
            422,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {joined}"),
        )
        .details(json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": causes}))
    }

    fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .details(json!({}))
    }

    fn expired(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(410, "Expired", message);
        e.expected = true;
        e
    }

    fn status_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldErrorKind {
    Required,
    Invalid,
    Forbidden,
    NotSupported,
}

impl FieldErrorKind {
    fn reason(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
        }
    }
}

struct FieldError {
    kind: FieldErrorKind,
    field: String,
    value: Option<String>,
    detail: String,
}

impl FieldError {
    fn required(field: &str) -> FieldError {
        FieldError {
            kind: FieldErrorKind::Required,
            field: field.to_string(),
            value: None,
            detail: String::new(),
        }
    }

    fn invalid(field: &str, value: &str, detail: impl Into<String>) -> FieldError {
        FieldError {
            kind: FieldErrorKind::Invalid,
            field: field.to_string(),
            value: Some(value.to_string()),
            detail: detail.into(),
        }
    }

    fn forbidden(field: &str, detail: impl Into<String>) -> FieldError {
        FieldError {
            kind: FieldErrorKind::Forbidden,
            field: field.to_string(),
            value: None,
            detail: detail.into(),
        }
    }

    fn not_supported(field: &str, value: &str, supported: &[&str]) -> FieldError {
        FieldError {
            kind: FieldErrorKind::NotSupported,
            field: field.to_string(),
            value: Some(value.to_string()),
            detail: format!(
                "supported values: {}",
                supported
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn cause_message(&self) -> String {
        let head = match self.kind {
            FieldErrorKind::Required => "Required value".to_string(),
            FieldErrorKind::Forbidden => "Forbidden".to_string(),
            FieldErrorKind::Invalid => format!(
                "Invalid value: \"{}\"",
                self.value.as_deref().unwrap_or_default()
            ),
            FieldErrorKind::NotSupported => format!(
                "Unsupported value: \"{}\"",
                self.value.as_deref().unwrap_or_default()
            ),
        };
        if self.detail.is_empty() {
            head
        } else {
            format!("{head}: {}", self.detail)
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.cause_message())
    }
}

// =============================================================================================
// HTTP

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: u16, content_type: &str, value: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(code)
        .header("content-type", content_type)
        .header("cache-control", "no-cache, private")
        .body(full(
            serde_json::to_vec(value).expect("JSON values serialize"),
        ))
        .expect("a response built from valid parts")
}

/// What one request turned into.
enum Outcome {
    Json(Value),
    JsonAs(&'static str, Value),
    Created(Value),
    Text(&'static str),
    Watch(Box<WatchSpec>),
}

struct Ctx {
    method: String,
    uri: String,
    /// Things the real server would silently ignore, flagged as rejections with a 2xx answer.
    flags: Vec<String>,
    warnings: Vec<String>,
}

async fn handle_request(
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Body> {
    let (parts, body) = req.into_parts();
    let uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    let mut ctx = Ctx {
        method: parts.method.as_str().to_string(),
        uri: uri.clone(),
        flags: Vec::new(),
        warnings: Vec::new(),
    };
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let outcome = route(&shared, &mut ctx, &parts, &body).await;
    let mut state = lock(&shared.state);
    for flag in ctx.flags.drain(..) {
        state.rejections.push(Rejection {
            method: ctx.method.clone(),
            uri: ctx.uri.clone(),
            status: 200,
            message: flag,
        });
    }
    let response = match outcome {
        Err(e) => {
            if !e.expected {
                state.rejections.push(Rejection {
                    method: ctx.method.clone(),
                    uri: ctx.uri.clone(),
                    status: e.code,
                    message: e.message.clone(),
                });
            }
            json_response(e.code, "application/json", &e.status_json())
        }
        Ok(Outcome::Json(v)) => json_response(200, "application/json", &v),
        Ok(Outcome::JsonAs(ct, v)) => json_response(200, ct, &v),
        Ok(Outcome::Created(v)) => json_response(201, "application/json", &v),
        Ok(Outcome::Text(t)) => hyper::Response::builder()
            .status(200)
            .header("content-type", "text/plain; charset=utf-8")
            .body(full(t))
            .expect("a response built from valid parts"),
        Ok(Outcome::Watch(spec)) => {
            state.open_watches += 1;
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
            let shared2 = shared.clone();
            tokio::spawn(run_watch(shared2, *spec, tx, stop));
            hyper::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("cache-control", "no-cache, private")
                .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
                .expect("a response built from valid parts")
        }
    };
    let mut response = response;
    for w in &ctx.warnings {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("299 - \"{w}\"")) {
            response.headers_mut().append("warning", v);
        }
    }
    state.requests.push(RequestRecord {
        method: ctx.method.clone(),
        uri: ctx.uri.clone(),
        status: response.status().as_u16(),
    });
    response
}

/// A parsed resource path.
struct Target {
    def: &'static ResourceDef,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

async fn route(
    shared: &Arc<Shared>,
    ctx: &mut Ctx,
    parts: &hyper::http::request::Parts,
    body: &Bytes,
) -> Result<Outcome, ApiError> {
    let path = parts.uri.path().to_string();
    let query = match parse_query(parts.uri.query().unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return Err(ApiError::bad_request(e)),
    };
    // Authentication: the kubeconfig's bearer token.
    let authorized = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    if !authorized {
        return Err(ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let accept = parts
        .headers
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = parts.method.as_str();
    let is_get = method == "GET";

    // Non-resource paths.
    match segments.as_slice() {
        ["healthz"] | ["readyz"] | ["livez"] if is_get => {
            check_params(ctx, &query, &["verbose", "exclude"])?;
            return Ok(Outcome::Text("ok"));
        }
        ["version"] if is_get => {
            check_params(ctx, &query, &[])?;
            return Ok(Outcome::Json(version_json()));
        }
        ["api"] if is_get => {
            check_params(ctx, &query, &[])?;
            return discovery_root(shared, &accept, true);
        }
        ["apis"] if is_get => {
            check_params(ctx, &query, &[])?;
            return discovery_root(shared, &accept, false);
        }
        ["api"] | ["apis"] | ["version"] | ["healthz"] | ["readyz"] | ["livez"] => {
            return Err(ApiError::method_not_allowed())
        }
        _ => {}
    }

    let istio_versions = lock(&shared.state).options.istio_versions.clone();
    let (group, version, rest): (&str, &str, &[&str]) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["api", ..] => return Err(ApiError::not_found_path()),
        ["apis", group] if is_get => {
            check_params(ctx, &query, &[])?;
            return api_group_json(group, &istio_versions)
                .map(Outcome::Json)
                .ok_or_else(ApiError::not_found_path);
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::not_found_path()),
    };
    if !group_version_served(group, version, &istio_versions) {
        return Err(ApiError::not_found_path());
    }
    if rest.is_empty() {
        if !is_get {
            return Err(ApiError::method_not_allowed());
        }
        check_params(ctx, &query, &[])?;
        return Ok(Outcome::Json(resource_list_json(group, version)));
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(ApiError::not_found_path()),
    };
    let def = resource_def(group, plural).ok_or_else(ApiError::not_found_path)?;
    if name.is_some() && namespace.is_none() {
        // Every served resource is namespaced: /api/v1/services/<name> does not exist.
        return Err(ApiError::not_found_path());
    }
    if let Some(sub) = &subresource {
        if !def.subresources.contains(&sub.as_str()) {
            return Err(ApiError::not_found_path());
        }
    }
    let target = Target {
        def,
        version: version.to_string(),
        namespace,
        name,
        subresource,
    };
    let verb = match (method, target.name.is_some()) {
        ("GET", false) => {
            if query_bool(&query, "watch")?.unwrap_or(false) {
                "watch"
            } else {
                "list"
            }
        }
        ("GET", true) => "get",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    if verb == "create" && target.namespace.is_none() {
        return Err(ApiError::method_not_allowed());
    }
    let rules = lock(&shared.state).options.rules.clone();
    authorize(&target, verb, &rules)?;
    match verb {
        "list" => list(shared, ctx, &target, &query).await,
        "watch" => watch(shared, ctx, &target, &query).await,
        "get" => get(shared, ctx, &target, &query),
        "create" => create_event(shared, ctx, &target, &query, parts, body),
        "update" => update_event(shared, ctx, &target, &query, parts, body),
        "patch" => patch_event(shared, ctx, &target, &query, parts, body),
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// RBAC: the request's (group, resource[/subresource], verb) must be granted by a rule. Only
/// Events can be written at all (the stand-in implements no other write).
fn authorize(target: &Target, verb: &str, rules: &[PolicyRule]) -> Result<(), ApiError> {
    let resource = match &target.subresource {
        Some(sub) => format!("{}/{sub}", target.def.plural),
        None => target.def.plural.to_string(),
    };
    let granted = rules
        .iter()
        .any(|r| r.allows(target.def.group, &resource, verb));
    let implemented = matches!(verb, "get" | "list" | "watch")
        || (target.def.store == Store::Event
            && target.subresource.is_none()
            && matches!(verb, "create" | "update" | "patch"));
    if granted && !implemented {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the stand-in does not implement {verb} on {resource} (the real server does): extend tests/common/kube_apiserver.rs"),
        ));
    }
    if granted {
        return Ok(());
    }
    let scope = match &target.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    Err(ApiError::new(
        403,
        "Forbidden",
        format!(
            "{} is forbidden: User \"system:serviceaccount:shadowplane-system:shadowplane\" cannot {verb} \
             resource \"{resource}\" in API group \"{}\" {scope}",
            group_resource(target.def),
            target.def.group
        ),
    )
    .details(json!({"group": target.def.group, "kind": target.def.plural})))
}

fn group_version_served(group: &str, version: &str, istio_versions: &[String]) -> bool {
    if group == ISTIO_GROUP {
        return istio_versions.iter().any(|v| v == version);
    }
    RESOURCES
        .iter()
        .any(|r| r.group == group && r.version == Some(version))
}

// ---------------------------------------------------------------------------------------------
// Query parameters

fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("invalid URL escape {:?}", s.get(i..).unwrap_or("")))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "invalid UTF-8 in the query".to_string())
}

fn query_value<'q>(query: &'q [(String, String)], name: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Go's `strconv.ParseBool`, as the parameter codec parses booleans.
fn query_bool(query: &[(String, String)], name: &str) -> Result<Option<bool>, ApiError> {
    match query_value(query, name) {
        None => Ok(None),
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(Some(true)),
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!(
            "strconv.ParseBool: parsing \"{other}\": invalid syntax"
        ))),
    }
}

fn query_int(query: &[(String, String)], name: &str) -> Result<Option<i64>, ApiError> {
    match query_value(query, name) {
        None => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!("strconv.ParseInt: parsing \"{v}\": invalid syntax"))
        }),
    }
}

/// Flag parameters the real server does not know (it ignores them), and repeated ones.
fn check_params(ctx: &mut Ctx, query: &[(String, String)], known: &[&str]) -> Result<(), ApiError> {
    let mut seen = BTreeSet::new();
    for (k, _) in query {
        if k == "pretty" {
            continue;
        }
        if !known.contains(&k.as_str()) {
            ctx.flags.push(format!(
                "unknown query parameter {k:?} (the real API server ignores it: the client relies \
                 on something that does not exist)"
            ));
        } else if !seen.insert(k.clone()) {
            ctx.flags.push(format!(
                "query parameter {k:?} given more than once (the real API server uses the first)"
            ));
        }
    }
    Ok(())
}

/// A resourceVersion parameter: empty, or an unsigned integer.
fn parse_rv(v: Option<&str>) -> Result<Option<u64>, ApiError> {
    match v {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!("invalid resource version \"{s}\": strconv.ParseUint: parsing \"{s}\": invalid syntax"))
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery

fn version_json() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828",
        "gitTreeState": "clean",
        "buildDate": "2025-05-15T08:19:08Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn versions_of(group: &str, istio_versions: &[String]) -> Vec<String> {
    if group == ISTIO_GROUP {
        return istio_versions.to_vec();
    }
    let mut out: Vec<String> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        if let Some(v) = r.version {
            if !out.iter().any(|o| o == v) {
                out.push(v.to_string());
            }
        }
    }
    out
}

fn api_group_json(group: &str, istio_versions: &[String]) -> Option<Value> {
    if !API_GROUPS.contains(&group) {
        return None;
    }
    let versions = versions_of(group, istio_versions);
    if versions.is_empty() {
        // Not installed (Istio's CRDs): not a group at all.
        return None;
    }
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": gv(&versions[0]),
    }))
}

fn resource_entries(group: &str, version: &str) -> Vec<&'static ResourceDef> {
    RESOURCES
        .iter()
        .filter(|r| {
            r.group == group
                && match r.version {
                    Some(v) => v == version,
                    None => true,
                }
        })
        .collect()
}

fn resource_list_json(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in resource_entries(group, version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": true,
            "kind": r.kind,
            "verbs": r.verbs,
            "storageVersionHash": r.storage_version_hash,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for sub in r.subresources {
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": true,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": api_version_of(group, version),
        "resources": resources,
    })
}

fn aggregated_group(group: &str, versions: &[String]) -> Value {
    let versions = versions
        .iter()
        .map(|v| {
            let resources = resource_entries(group, v)
                .into_iter()
                .map(|r| {
                    let mut entry = json!({
                        "resource": r.plural,
                        "responseKind": {"group": "", "version": "", "kind": r.kind},
                        "scope": "Namespaced",
                        "singularResource": r.singular,
                        "verbs": r.verbs,
                    });
                    if !r.short_names.is_empty() {
                        entry["shortNames"] = json!(r.short_names);
                    }
                    if !r.categories.is_empty() {
                        entry["categories"] = json!(r.categories);
                    }
                    if !r.subresources.is_empty() {
                        entry["subresources"] = json!(r
                            .subresources
                            .iter()
                            .map(|s| json!({
                                "subresource": s,
                                "responseKind": {"group": "", "version": "", "kind": r.kind},
                                "verbs": ["get", "patch", "update"],
                            }))
                            .collect::<Vec<_>>());
                    }
                    entry
                })
                .collect::<Vec<_>>();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect::<Vec<_>>();
    let mut metadata = json!({"creationTimestamp": null});
    if !group.is_empty() {
        metadata["name"] = json!(group);
    }
    json!({"metadata": metadata, "versions": versions})
}

/// The media types of an Accept header, in order, with their parameters.
fn accepts(accept: &str) -> Vec<String> {
    accept
        .split(',')
        .map(|m| m.split(';').map(str::trim).collect::<Vec<_>>().join(";"))
        .filter(|m| !m.is_empty())
        .collect()
}

fn discovery_root(shared: &Arc<Shared>, accept: &str, core: bool) -> Result<Outcome, ApiError> {
    let (aggregated, istio_versions) = {
        let state = lock(&shared.state);
        (
            state.options.aggregated_discovery,
            state.options.istio_versions.clone(),
        )
    };
    let media = accepts(accept);
    let mut legacy_ok = media.is_empty();
    for m in &media {
        let base = m.split(';').next().unwrap_or_default();
        let params: BTreeMap<&str, &str> = m
            .split(';')
            .skip(1)
            .filter_map(|p| p.split_once('='))
            .collect();
        let is_aggregated_v2 = base == "application/json"
            && params.get("g") == Some(&"apidiscovery.k8s.io")
            && params.get("v") == Some(&"v2")
            && params.get("as") == Some(&"APIGroupDiscoveryList");
        if is_aggregated_v2 && aggregated {
            let items = if core {
                vec![aggregated_group("", &["v1".to_string()])]
            } else {
                API_GROUPS
                    .iter()
                    .map(|g| (g, versions_of(g, &istio_versions)))
                    .filter(|(_, versions)| !versions.is_empty())
                    .map(|(g, versions)| aggregated_group(g, &versions))
                    .collect()
            };
            return Ok(Outcome::JsonAs(
                AGGREGATED_V2,
                json!({
                    "kind": "APIGroupDiscoveryList",
                    "apiVersion": "apidiscovery.k8s.io/v2",
                    "metadata": {},
                    "items": items,
                }),
            ));
        }
        if params.is_empty() && matches!(base, "application/json" | "application/*" | "*/*") {
            legacy_ok = true;
            break;
        }
    }
    if !legacy_ok {
        return Err(ApiError::new(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf (asked for {accept:?})"),
        ));
    }
    if core {
        return Ok(Outcome::Json(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}],
        })));
    }
    let groups = API_GROUPS
        .iter()
        .filter_map(|g| {
            let mut g = api_group_json(g, &istio_versions)?;
            let m = g.as_object_mut()?;
            m.remove("kind");
            m.remove("apiVersion");
            Some(g)
        })
        .collect::<Vec<_>>();
    Ok(Outcome::Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups,
    })))
}

// ---------------------------------------------------------------------------------------------
// Rendering objects through one API

fn render(def: &ResourceDef, version: &str, stored: &Value, with_type: bool) -> Value {
    let mut obj = match def.form {
        Form::CoreEvent => v1_event_to_core(stored),
        Form::Builtin | Form::Crd => stored.clone(),
    };
    if let Some(m) = obj.as_object_mut() {
        if with_type || def.form == Form::Crd {
            m.insert(
                "apiVersion".into(),
                json!(api_version_of(def.group, version)),
            );
            m.insert("kind".into(), json!(def.kind));
        } else {
            m.remove("apiVersion");
            m.remove("kind");
        }
    }
    obj
}

const EVENT_RENAMES: [(&str, &str); 6] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn core_event_to_v1(core: &Value) -> Value {
    let mut out = Map::new();
    if let Some(m) = core.as_object() {
        for (k, v) in m {
            let key = match k.as_str() {
                "reportingComponent" => "reportingController",
                other => EVENT_RENAMES
                    .iter()
                    .find(|(c, _)| *c == other)
                    .map(|(_, n)| *n)
                    .unwrap_or(other),
            };
            out.insert(key.to_string(), v.clone());
        }
    }
    out.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    Value::Object(out)
}

fn v1_event_to_core(v1: &Value) -> Value {
    let mut out = Map::new();
    if let Some(m) = v1.as_object() {
        for (k, v) in m {
            let key = match k.as_str() {
                "reportingController" => "reportingComponent",
                other => EVENT_RENAMES
                    .iter()
                    .find(|(_, n)| *n == other)
                    .map(|(c, _)| *c)
                    .unwrap_or(other),
            };
            out.insert(key.to_string(), v.clone());
        }
    }
    // The core form always has these (the server fills them when converting).
    out.entry("involvedObject").or_insert_with(|| json!({}));
    out.entry("source").or_insert_with(|| json!({}));
    out.entry("reportingComponent").or_insert_with(|| json!(""));
    out.entry("reportingInstance").or_insert_with(|| json!(""));
    out.entry("firstTimestamp").or_insert(Value::Null);
    out.entry("lastTimestamp").or_insert(Value::Null);
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Selectors

#[derive(Debug)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty()
            || p.len() > 253
            || !p.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
        {
            return false;
        }
    }
    valid_label_value(name) && !name.is_empty()
}

fn valid_label_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    v.len() <= 63
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    // Split on commas outside parentheses.
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => terms.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in {s:?}"));
    }
    terms.push(cur);
    let mut reqs = Vec::new();
    for term in terms {
        let t = term.trim();
        if t.is_empty() {
            if s.trim().is_empty() {
                continue;
            }
            return Err(format!("found '', expected: identifier in {s:?}"));
        }
        let check_key = |k: &str| -> Result<String, String> {
            let k = k.trim();
            if valid_label_key(k) {
                Ok(k.to_string())
            } else {
                Err(format!("invalid label key \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.'"))
            }
        };
        let check_value = |v: &str| -> Result<String, String> {
            let v = v.trim();
            if valid_label_value(v) {
                Ok(v.to_string())
            } else {
                Err(format!("invalid label value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"))
            }
        };
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("found '{rest}', expected: '('"))?;
            inner.split(',').map(check_value).collect()
        };
        if let Some(k) = t.strip_prefix('!') {
            reqs.push(LabelReq::NotExists(check_key(k)?));
        } else if let Some((k, v)) = t.split_once("!=") {
            reqs.push(LabelReq::NotEq(check_key(k)?, check_value(v)?));
        } else if let Some((k, v)) = t.split_once("==") {
            reqs.push(LabelReq::Eq(check_key(k)?, check_value(v)?));
        } else if let Some((k, v)) = t.split_once('=') {
            reqs.push(LabelReq::Eq(check_key(k)?, check_value(v)?));
        } else if let Some((k, rest)) = t.split_once(" notin ") {
            reqs.push(LabelReq::NotIn(check_key(k)?, set(rest)?));
        } else if let Some((k, rest)) = t.split_once(" in ") {
            reqs.push(LabelReq::In(check_key(k)?, set(rest)?));
        } else {
            reqs.push(LabelReq::Exists(check_key(t)?));
        }
    }
    Ok(reqs)
}

fn labels_match(reqs: &[LabelReq], obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
        LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
        LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        LabelReq::Exists(k) => get(k).is_some(),
        LabelReq::NotExists(k) => get(k).is_none(),
    })
}

struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

fn parse_field_selector(def: &ResourceDef, s: &str) -> Result<Vec<FieldReq>, ApiError> {
    let mut terms = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    terms.push(cur);
    let mut out = Vec::new();
    for term in terms {
        if term.is_empty() {
            continue;
        }
        let (field, value, equal) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, v, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{s}'; can't understand '{term}'"
            )));
        };
        let supported = field == "metadata.name"
            || field == "metadata.namespace"
            || def.field_labels.contains(&field);
        if !supported {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {field}"
            )));
        }
        out.push(FieldReq {
            field: field.to_string(),
            value: value
                .replace("\\,", ",")
                .replace("\\=", "=")
                .replace("\\\\", "\\"),
            equal,
        });
    }
    Ok(out)
}

fn field_value(obj: &Value, field: &str) -> String {
    let mut cur = obj;
    for part in field.split('.') {
        cur = &cur[part];
    }
    if field == "source" {
        return obj["source"]["component"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ if field == "spec.hostNetwork" => "false".to_string(),
        _ => String::new(),
    }
}

struct Selection {
    def: &'static ResourceDef,
    version: String,
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Selection {
    fn matches(&self, stored: &Value) -> bool {
        if !labels_match(&self.labels, stored) {
            return false;
        }
        if self.fields.is_empty() {
            return true;
        }
        let shown = render(self.def, &self.version, stored, true);
        self.fields
            .iter()
            .all(|f| (field_value(&shown, &f.field) == f.value) == f.equal)
    }
}

fn selection(target: &Target, query: &[(String, String)]) -> Result<Selection, ApiError> {
    let labels = match query_value(query, "labelSelector") {
        Some(s) => parse_label_selector(s).map_err(|e| {
            ApiError::bad_request(format!("unable to parse requested label selector: {e}"))
        })?,
        None => Vec::new(),
    };
    let fields = match query_value(query, "fieldSelector") {
        Some(s) => parse_field_selector(target.def, s)?,
        None => Vec::new(),
    };
    Ok(Selection {
        def: target.def,
        version: target.version.clone(),
        namespace: target.namespace.clone(),
        labels,
        fields,
    })
}

// ---------------------------------------------------------------------------------------------
// get / list

fn get(
    shared: &Arc<Shared>,
    ctx: &mut Ctx,
    target: &Target,
    query: &[(String, String)],
) -> Result<Outcome, ApiError> {
    check_params(ctx, query, &["resourceVersion"])?;
    let rv = parse_rv(query_value(query, "resourceVersion"))?;
    let name = target.name.as_deref().unwrap_or_default();
    let namespace = target.namespace.as_deref().unwrap_or_default();
    let state = lock(&shared.state);
    if let Some(rv) = rv {
        if rv > state.rv {
            return Err(too_large(rv, state.rv));
        }
    }
    let obj = state
        .objects
        .get(&(target.def.store, namespace.to_string(), name.to_string()))
        .ok_or_else(|| ApiError::not_found(target.def, name))?;
    Ok(Outcome::Json(render(
        target.def,
        &target.version,
        obj,
        true,
    )))
}

fn too_large(asked: u64, current: u64) -> ApiError {
    ApiError::new(
        504,
        "Timeout",
        format!("Timeout: Too large resource version: {asked}, current: {current}"),
    )
    .details(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}))
}

const LIST_PARAMS: &[&str] = &[
    "labelSelector",
    "fieldSelector",
    "limit",
    "continue",
    "resourceVersion",
    "resourceVersionMatch",
    "timeoutSeconds",
    "watch",
    "allowWatchBookmarks",
    "sendInitialEvents",
];

/// `ValidateListOptions` of the real server.
fn validate_list_options(query: &[(String, String)], watch: bool) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    let rv = query_value(query, "resourceVersion").unwrap_or("");
    let continue_ = query_value(query, "continue").unwrap_or("");
    let send_initial = query_bool(query, "sendInitialEvents")?;
    let bookmarks = query_bool(query, "allowWatchBookmarks")?.unwrap_or(false);
    let matching = query_value(query, "resourceVersionMatch").unwrap_or("");
    if watch {
        if send_initial.is_some() {
            if matching != "NotOlderThan" {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if !bookmarks {
                errs.push(FieldError::forbidden(
                    "allowWatchBookmarks",
                    "allowWatchBookmarks must be set to true when sendInitialEvents is set",
                ));
            }
        }
        if !matching.is_empty() {
            if send_initial.is_none() {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if matching != "NotOlderThan" {
                errs.push(FieldError::not_supported(
                    "resourceVersionMatch",
                    matching,
                    &["NotOlderThan"],
                ));
            }
            if !continue_.is_empty() {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
    } else {
        if !matching.is_empty() {
            if rv.is_empty() {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if !continue_.is_empty() {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if matching != "Exact" && matching != "NotOlderThan" {
                errs.push(FieldError::not_supported(
                    "resourceVersionMatch",
                    matching,
                    &["Exact", "NotOlderThan", ""],
                ));
            }
            if matching == "Exact" && rv == "0" {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if send_initial.is_some() {
            errs.push(FieldError::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_list_options(&errs))
    }
}

fn list_kind(def: &ResourceDef) -> String {
    format!("{}List", def.kind)
}

async fn list(
    shared: &Arc<Shared>,
    ctx: &mut Ctx,
    target: &Target,
    query: &[(String, String)],
) -> Result<Outcome, ApiError> {
    check_params(ctx, query, LIST_PARAMS)?;
    validate_list_options(query, false)?;
    let sel = selection(target, query)?;
    wait_while_held(shared, target.def.plural).await;
    let limit = query_int(query, "limit")?.filter(|l| *l > 0);
    let _ = query_int(query, "timeoutSeconds")?;
    let rv_param = query_value(query, "resourceVersion").unwrap_or("");
    let rv = parse_rv(Some(rv_param))?;
    let matching = query_value(query, "resourceVersionMatch").unwrap_or("");
    let continue_token = query_value(query, "continue").filter(|c| !c.is_empty());
    if continue_token.is_some() && !rv_param.is_empty() && rv_param != "0" {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    // A resourceVersion newer than the server's: wait a little (like the watch cache) then 504.
    if let Some(asked) = rv {
        wait_fresh(shared, asked).await?;
    }
    let state = lock(&shared.state);
    // Which revision to read, and where to start.
    let (read_rv, start_after) = if let Some(token) = continue_token {
        let (token_rv, start) = decode_continue(token).ok_or_else(|| {
            ApiError::bad_request("continue key is not valid: illegal base64 data")
        })?;
        if token_rv < state.compacted {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter, or use the continue \
                 token in this response to retrieve the remainder of the results. Continuing with \
                 the provided token results in an inconsistent list - objects that were created, \
                 modified, or deleted between the time the first chunk was returned and now may \
                 show up in the list.",
            ));
        }
        (token_rv, Some(start))
    } else {
        let exact = matching == "Exact"
            || (matching.is_empty() && limit.is_some() && rv.is_some_and(|r| r != 0));
        match rv {
            Some(asked) if exact && asked != 0 => {
                if asked < state.compacted {
                    return Err(ApiError::expired(format!(
                        "The resourceVersion for the provided list is too old. (requested {asked}, compacted at {})",
                        state.compacted
                    )));
                }
                (asked, None)
            }
            _ => (state.rv, None),
        }
    };
    // rv=0 without Exact is served from the watch cache, which ignores the limit.
    let limit = if rv_param == "0" { None } else { limit };
    // The real server lists in the byte order of its storage keys (`<namespace>/<name>` under
    // the resource's prefix, as etcd and the watch cache keep them), and a continue token
    // resumes after the last key: namespace `a-b` comes before `a` ('-' < '/'). Ordering by
    // (namespace, name) here but resuming by key would skip or repeat objects across such
    // namespaces.
    let mut objects: Vec<(String, &Value)> = state
        .snapshot_at(target.def.store, target.namespace.as_deref(), read_rv)
        .into_iter()
        .map(|((ns, name), obj)| (storage_key(&ns, &name), obj))
        .collect();
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    let mut items = Vec::new();
    let mut next: Option<String> = None;
    let mut remaining = 0usize;
    for (key, obj) in &objects {
        if start_after
            .as_ref()
            .is_some_and(|s| key.as_str() <= s.as_str())
        {
            continue;
        }
        if !sel.matches(obj) {
            continue;
        }
        if let Some(l) = limit {
            if items.len() as i64 >= l {
                remaining += 1;
                continue;
            }
        }
        next = Some(key.clone());
        items.push(render(
            target.def,
            &target.version,
            obj,
            target.def.form == Form::Crd,
        ));
    }
    let mut metadata = json!({"resourceVersion": read_rv.to_string()});
    if remaining > 0 {
        if let Some(last) = next {
            metadata["continue"] = json!(encode_continue(read_rv, &last));
            if sel.labels.is_empty() && sel.fields.is_empty() {
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
    }
    Ok(Outcome::Json(json!({
        "kind": list_kind(target.def),
        "apiVersion": api_version_of(target.def.group, &target.version),
        "metadata": metadata,
        "items": items,
    })))
}

/// Wait while lists of `plural` are held ([`KubeApiServer::hold_lists`]).
async fn wait_while_held(shared: &Arc<Shared>, plural: &'static str) {
    struct Waiting<'a>(&'a Shared, &'static str);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            if let Some(n) = lock(&self.0.state).waiting_lists.get_mut(self.1) {
                *n = n.saturating_sub(1);
            }
        }
    }
    let mut rx = shared.holds_changed.subscribe();
    {
        let mut state = lock(&shared.state);
        if !state.held_lists.contains(plural) {
            return;
        }
        *state.waiting_lists.entry(plural.to_string()).or_default() += 1;
    }
    let _waiting = Waiting(shared, plural);
    while rx.changed().await.is_ok() {
        if !lock(&shared.state).held_lists.contains(plural) {
            return;
        }
    }
}

async fn wait_fresh(shared: &Arc<Shared>, asked: u64) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + TOO_LARGE_RV_WAIT;
    let mut rx = shared.changed.subscribe();
    loop {
        let current = lock(&shared.state).rv;
        if asked <= current {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return Err(too_large(asked, current));
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=n {
            out.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    Some(out)
}

/// An object's storage key below its resource's prefix: `<namespace>/<name>`, or `<name>` for
/// a cluster-scoped object (as the real server's continue tokens carry it).
fn storage_key(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// A continue token like the real server's: base64url of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\u0000"}`.
fn encode_continue(rv: u64, last_key: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last_key}\u{0}")});
    b64_encode(token.to_string().as_bytes())
}

fn decode_continue(token: &str) -> Option<(u64, String)> {
    let bytes = b64_decode(token)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    if v["v"] != "meta.k8s.io/v1" {
        return None;
    }
    let rv = v["rv"].as_u64()?;
    let start = v["start"].as_str()?.trim_end_matches('\u{0}').to_string();
    Some((rv, start))
}

// ---------------------------------------------------------------------------------------------
// watch

struct WatchSpec {
    sel: Selection,
    /// Events after this resourceVersion are sent.
    from_rv: u64,
    /// Objects to send as ADDED first (a watch from "0"/"" or a streaming list).
    initial: Vec<Value>,
    /// End the initial events with the `k8s.io/initial-events-end` bookmark.
    initial_end_bookmark: bool,
    bookmarks: bool,
    bookmark_interval: Duration,
    timeout: Duration,
    /// An ERROR event to send instead (410 Expired).
    error: Option<Value>,
}

async fn watch(
    shared: &Arc<Shared>,
    ctx: &mut Ctx,
    target: &Target,
    query: &[(String, String)],
) -> Result<Outcome, ApiError> {
    check_params(ctx, query, LIST_PARAMS)?;
    validate_list_options(query, true)?;
    if query_value(query, "continue").is_some_and(|c| !c.is_empty()) {
        return Err(ApiError::bad_request("continue is not supported for watch"));
    }
    let sel = selection(target, query)?;
    let timeout_secs = query_int(query, "timeoutSeconds")?;
    let _ = query_int(query, "limit")?;
    let rv_param = query_value(query, "resourceVersion").unwrap_or("");
    let rv = parse_rv(Some(rv_param))?;
    let send_initial = query_bool(query, "sendInitialEvents")?.unwrap_or(false);
    let bookmarks = query_bool(query, "allowWatchBookmarks")?.unwrap_or(false);
    if let Some(asked) = rv {
        wait_fresh(shared, asked).await?;
    }
    let mut state = lock(&shared.state);
    let timeout = match timeout_secs {
        Some(s) if s > 0 => Duration::from_secs(s as u64),
        // The server's --min-request-timeout (1800 s) randomized: long enough here.
        _ => Duration::from_secs(1800),
    };
    let mut spec = WatchSpec {
        sel,
        from_rv: state.rv,
        initial: Vec::new(),
        initial_end_bookmark: false,
        bookmarks,
        bookmark_interval: state.options.bookmark_interval,
        timeout,
        error: None,
    };
    let start_from_state = send_initial || rv.is_none_or(|r| r == 0);
    if start_from_state {
        // "0" or "" (or a streaming list): the current state as ADDED, then the changes. A
        // plain "" without sendInitialEvents means "from now" only with sendInitialEvents=false.
        let explicit_no_initial = query_bool(query, "sendInitialEvents")? == Some(false);
        if !explicit_no_initial {
            for obj in state
                .snapshot_at(target.def.store, target.namespace.as_deref(), state.rv)
                .values()
            {
                if spec.sel.matches(obj) {
                    spec.initial.push((*obj).clone());
                }
            }
        }
        spec.initial_end_bookmark = send_initial;
    } else if let Some(asked) = rv {
        if asked < state.compacted {
            state.expired_watches += 1;
            spec.error = Some(json!({
                "type": "ERROR",
                "object": ApiError::expired(format!("too old resource version: {asked} ({})", state.compacted)).status_json(),
            }));
        }
        spec.from_rv = asked;
    }
    Ok(Outcome::Watch(Box::new(spec)))
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(sel: &Selection, rv: u64, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({
        "kind": sel.def.kind,
        "apiVersion": api_version_of(sel.def.group, &sel.version),
        "metadata": metadata,
    })
}

async fn run_watch(
    shared: Arc<Shared>,
    spec: WatchSpec,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let send = |bytes: Bytes| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(bytes))).await.is_ok() }
    };
    let mut changed = shared.changed.subscribe();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    'run: {
        if let Some(err) = &spec.error {
            let mut line = serde_json::to_vec(err).expect("JSON values serialize");
            line.push(b'\n');
            let _ = send(Bytes::from(line)).await;
            break 'run;
        }
        for obj in &spec.initial {
            let shown = render(spec.sel.def, &spec.sel.version, obj, true);
            if !send(watch_line("ADDED", &shown)).await {
                break 'run;
            }
        }
        let mut scanned = spec.from_rv;
        if spec.initial_end_bookmark
            && !send(watch_line("BOOKMARK", &bookmark(&spec.sel, scanned, true))).await
        {
            break 'run;
        }
        let mut ticker = tokio::time::interval(spec.bookmark_interval);
        ticker.tick().await;
        loop {
            // Everything after `scanned`, filtered and translated like the watch cache does.
            let (lines, latest) = {
                let state = lock(&shared.state);
                let mut lines = Vec::new();
                let start = state.log.partition_point(|e| e.rv <= scanned);
                for entry in state.log.iter().skip(start) {
                    if entry.store != spec.sel.def.store
                        || spec
                            .sel
                            .namespace
                            .as_ref()
                            .is_some_and(|n| *n != entry.namespace)
                    {
                        continue;
                    }
                    let now = entry.change != Change::Deleted && spec.sel.matches(&entry.new);
                    let before = entry.old.as_ref().is_some_and(|o| spec.sel.matches(o));
                    let kind = match (entry.change, before, now) {
                        (Change::Deleted, true, _) => "DELETED",
                        (Change::Deleted, false, _) => continue,
                        (_, false, true) => "ADDED",
                        (_, true, true) => "MODIFIED",
                        (_, true, false) => "DELETED",
                        (_, false, false) => continue,
                    };
                    let shown = render(spec.sel.def, &spec.sel.version, &entry.new, true);
                    lines.push(watch_line(kind, &shown));
                }
                (lines, state.rv)
            };
            scanned = latest;
            for line in lines {
                if !send(line).await {
                    break 'run;
                }
            }
            tokio::select! {
                r = changed.changed() => { if r.is_err() { break 'run; } }
                _ = ticker.tick() => {
                    if spec.bookmarks && !send(watch_line("BOOKMARK", &bookmark(&spec.sel, scanned, false))).await {
                        break 'run;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if spec.bookmarks {
                        let _ = send(watch_line("BOOKMARK", &bookmark(&spec.sel, scanned, false))).await;
                    }
                    break 'run;
                }
                _ = stop.changed() => break 'run,
            }
        }
    }
    lock(&shared.state).open_watches -= 1;
}

// ---------------------------------------------------------------------------------------------
// Event writes

const WRITE_PARAMS: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];

/// The fields of an Event in each API (anything else is unknown: dropped with a warning).
const V1_EVENT_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "eventTime",
    "series",
    "reportingController",
    "reportingInstance",
    "action",
    "reason",
    "regarding",
    "related",
    "note",
    "type",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "deprecatedCount",
];
const CORE_EVENT_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "involvedObject",
    "reason",
    "message",
    "source",
    "firstTimestamp",
    "lastTimestamp",
    "count",
    "type",
    "eventTime",
    "series",
    "action",
    "related",
    "reportingComponent",
    "reportingInstance",
];
const OBJECT_REFERENCE_FIELDS: &[&str] = &[
    "kind",
    "namespace",
    "name",
    "uid",
    "apiVersion",
    "resourceVersion",
    "fieldPath",
];
const METADATA_WRITE_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Decode a written Event body (JSON only) and check its type against the endpoint.
fn decode_event_body(
    ctx: &mut Ctx,
    target: &Target,
    parts: &hyper::http::request::Parts,
    body: &Bytes,
    check_content_type: bool,
) -> Result<Value, ApiError> {
    if check_content_type {
        let ct = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let base = ct.split(';').next().unwrap_or("").trim();
        if base != "application/json" {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct:?})"),
            ));
        }
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "couldn't get version/kind; json parse error: json: cannot unmarshal into Go value of type struct",
        ));
    }
    let expected_av = api_version_of(target.def.group, &target.version);
    if let Some(av) = value.get("apiVersion").and_then(Value::as_str) {
        if av != expected_av {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({expected_av})"
            )));
        }
    }
    if let Some(kind) = value.get("kind").and_then(Value::as_str) {
        if kind != target.def.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                target.def.kind
            )));
        }
    }
    flag_unknown_fields(ctx, target, &value);
    Ok(value)
}

fn flag_unknown_fields(ctx: &mut Ctx, target: &Target, value: &Value) {
    let (top, reference_field) = if target.def.form == Form::CoreEvent {
        (CORE_EVENT_FIELDS, "involvedObject")
    } else {
        (V1_EVENT_FIELDS, "regarding")
    };
    let mut unknown = Vec::new();
    if let Some(m) = value.as_object() {
        for k in m.keys() {
            if !top.contains(&k.as_str()) {
                unknown.push(k.clone());
            }
        }
        for (field, allowed) in [
            ("metadata", METADATA_WRITE_FIELDS),
            (reference_field, OBJECT_REFERENCE_FIELDS),
            ("related", OBJECT_REFERENCE_FIELDS),
        ] {
            if let Some(inner) = m.get(field).and_then(Value::as_object) {
                for k in inner.keys() {
                    if !allowed.contains(&k.as_str()) {
                        unknown.push(format!("{field}.{k}"));
                    }
                }
            }
        }
    }
    for u in unknown {
        ctx.warnings.push(format!("unknown field \"{u}\""));
        ctx.flags.push(format!(
            "unknown field \"{u}\" in the body (the real API server drops it with a warning)"
        ));
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) {
        return false;
    }
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn str_field<'v>(v: &'v Value, field: &str) -> &'v str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

fn time_set(v: &Value, field: &str) -> bool {
    v.get(field).is_some_and(|t| !t.is_null() && t != "")
}

/// `ValidateEventCreate` (and the part of `ValidateEventUpdate` it shares), on the stored
/// (events.k8s.io/v1) form. `core` is whether the request came through core/v1 (the legacy
/// checks only).
fn validate_event(event: &Value, core: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let namespace = event["metadata"]["namespace"].as_str().unwrap_or("");
    let regarding_ns = event["regarding"]["namespace"].as_str().unwrap_or("");
    let (reference, controller, message) = if core {
        ("involvedObject", "reportingComponent", "message")
    } else {
        ("regarding", "reportingController", "note")
    };
    let ns_field = format!("{reference}.namespace");
    if !time_set(event, "eventTime") {
        // Old-style events: the namespaces must agree.
        if regarding_ns.is_empty() {
            if !namespace.is_empty() && namespace != "default" {
                errs.push(FieldError::invalid(
                    &ns_field,
                    regarding_ns,
                    "does not match event.namespace",
                ));
            }
        } else if namespace != regarding_ns {
            errs.push(FieldError::invalid(
                &ns_field,
                regarding_ns,
                "does not match event.namespace",
            ));
        }
    } else {
        if regarding_ns.is_empty() && namespace != "default" && namespace != "kube-system" {
            errs.push(FieldError::invalid(
                &ns_field,
                regarding_ns,
                "does not match event.namespace",
            ));
        }
        let rc = str_field(event, "reportingController");
        if rc.is_empty() {
            errs.push(FieldError::required(controller));
        } else if !is_qualified_name(rc) {
            errs.push(FieldError::invalid(controller, rc, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        let ri = str_field(event, "reportingInstance");
        if ri.is_empty() {
            errs.push(FieldError::required("reportingInstance"));
        } else if ri.len() > 128 {
            errs.push(FieldError::invalid(
                "reportingInstance",
                "",
                "can have at most 128 characters",
            ));
        }
        let action = str_field(event, "action");
        if action.is_empty() {
            errs.push(FieldError::required("action"));
        } else if action.len() > 128 {
            errs.push(FieldError::invalid(
                "action",
                "",
                "can have at most 128 characters",
            ));
        }
        let reason = str_field(event, "reason");
        if reason.is_empty() {
            errs.push(FieldError::required("reason"));
        } else if reason.len() > 128 {
            errs.push(FieldError::invalid(
                "reason",
                "",
                "can have at most 128 characters",
            ));
        }
        if str_field(event, "note").len() > 1024 {
            errs.push(FieldError::invalid(
                message,
                "",
                "can have at most 1024 characters",
            ));
        }
    }
    if !is_dns_subdomain(namespace) {
        errs.push(FieldError::invalid("namespace", namespace, "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"));
    }
    if core {
        return errs;
    }
    // Strict validation of events.k8s.io/v1.
    let name = event["metadata"]["name"].as_str().unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name"));
    } else if !is_dns_subdomain(name) {
        errs.push(FieldError::invalid("metadata.name", name, "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"));
    }
    if let Some(series) = event.get("series").filter(|s| !s.is_null()) {
        if series["count"].as_i64().unwrap_or(0) < 2 {
            errs.push(FieldError::invalid(
                "series.count",
                &series["count"].to_string(),
                "should be at least 2",
            ));
        }
        if !time_set(series, "lastObservedTime") {
            errs.push(FieldError::required("series.lastObservedTime"));
        }
    }
    if !time_set(event, "eventTime") {
        errs.push(FieldError::required("eventTime"));
    }
    let type_ = str_field(event, "type");
    if type_ != "Normal" && type_ != "Warning" {
        errs.push(FieldError::invalid(
            "type",
            "",
            format!("has invalid value: {type_}"),
        ));
    }
    if time_set(event, "deprecatedFirstTimestamp") {
        errs.push(FieldError::invalid(
            "deprecatedFirstTimestamp",
            "",
            "needs to be unset",
        ));
    }
    if time_set(event, "deprecatedLastTimestamp") {
        errs.push(FieldError::invalid(
            "deprecatedLastTimestamp",
            "",
            "needs to be unset",
        ));
    }
    if event["deprecatedCount"].as_i64().unwrap_or(0) != 0 {
        errs.push(FieldError::invalid(
            "deprecatedCount",
            "",
            "needs to be unset",
        ));
    }
    let source = &event["deprecatedSource"];
    if !str_field(source, "component").is_empty() || !str_field(source, "host").is_empty() {
        errs.push(FieldError::invalid(
            "deprecatedSource",
            "",
            "needs to be unset",
        ));
    }
    errs
}

/// The immutable fields of `ValidateEventUpdate` (events.k8s.io/v1 only).
fn validate_event_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (field, shown) in [
        ("regarding", "involvedObject"),
        ("reason", "reason"),
        ("note", "message"),
        ("deprecatedSource", "source"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("action", "action"),
        ("related", "related"),
        ("reportingController", "reportingController"),
        ("reportingInstance", "reportingInstance"),
        ("type", "type"),
    ] {
        let a = new.get(field).filter(|v| !v.is_null());
        let b = old.get(field).filter(|v| !v.is_null());
        if a != b {
            errs.push(FieldError::invalid(
                shown,
                &a.map(Value::to_string).unwrap_or_default(),
                "field is immutable",
            ));
        }
    }
    errs
}

/// Fill the namespace from the path, or refuse a body whose namespace differs.
fn event_namespace(target: &Target, event: &mut Value) -> Result<String, ApiError> {
    let path_ns = target.namespace.clone().unwrap_or_default();
    let meta = event
        .as_object_mut()
        .expect("checked to be an object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !meta.is_object() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() && ns != path_ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta["namespace"] = json!(path_ns);
            Ok(path_ns)
        }
    }
}

fn to_stored_event(target: &Target, event: &Value) -> Value {
    let mut stored = if target.def.form == Form::CoreEvent {
        core_event_to_v1(event)
    } else {
        event.clone()
    };
    if let Some(m) = stored.as_object_mut() {
        m.insert("apiVersion".into(), json!("events.k8s.io/v1"));
        m.insert("kind".into(), json!("Event"));
        // Server-owned metadata is never taken from a body.
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "selfLink",
                "managedFields",
            ] {
                meta.remove(k);
            }
        }
    }
    stored
}

fn random_suffix(seed: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..5)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

fn create_event(
    shared: &Arc<Shared>,
    ctx: &mut Ctx,
    target: &Target,
    query: &[(String, String)],
    parts: &hyper::http::request::Parts,
    body: &Bytes,
) -> Result<Outcome, ApiError> {
    check_params(ctx, query, WRITE_PARAMS)?;
    let dry_run = query_value(query, "dryRun");
    if dry_run.is_some_and(|d| d != "All") {
        return Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: \"{}\": supported values: \"All\"",
            dry_run.unwrap_or_default()
        )));
    }
    let mut event = decode_event_body(ctx, target, parts, body, true)?;
    let namespace = event_namespace(target, &mut event)?;
    let mut state = lock(&shared.state);
    if !state.namespaces.contains(&namespace) {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        )
        .details(json!({"name": namespace, "kind": "namespaces"})));
    }
    let mut stored = to_stored_event(target, &event);
    let name = match stored["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        Some(n) => n.to_string(),
        None => match stored["metadata"]["generateName"].as_str() {
            Some(prefix) if !prefix.is_empty() => {
                let n = format!("{prefix}{}", random_suffix(state.rv));
                stored["metadata"]["name"] = json!(n);
                n
            }
            _ => {
                return Err(ApiError::invalid(
                    target.def,
                    "",
                    &[FieldError::required("metadata.name")]
                        .into_iter()
                        .map(|mut e| {
                            e.detail = "name or generateName is required".into();
                            e
                        })
                        .collect::<Vec<_>>(),
                ))
            }
        },
    };
    let errs = validate_event(&stored, target.def.form == Form::CoreEvent);
    if !errs.is_empty() {
        return Err(ApiError::invalid(target.def, &name, &errs));
    }
    let key = (Store::Event, namespace.clone(), name.clone());
    if state.objects.contains_key(&key) {
        return Err(ApiError::already_exists(target.def, &name));
    }
    if dry_run.is_some() {
        return Ok(Outcome::Created(render(
            target.def,
            &target.version,
            &stored,
            true,
        )));
    }
    let stored = state.put(Store::Event, &namespace, &name, stored);
    let rv = state.rv;
    drop(state);
    shared.changed.send_replace(rv);
    Ok(Outcome::Created(render(
        target.def,
        &target.version,
        &stored,
        true,
    )))
}

/// Store an updated Event (after PUT or PATCH) once it validates.
fn store_event_update(
    shared: &Arc<Shared>,
    target: &Target,
    state: &mut MutexGuard<'_, State>,
    old: &Value,
    new: Value,
    dry_run: bool,
) -> Result<Outcome, ApiError> {
    let name = target.name.clone().unwrap_or_default();
    let namespace = target.namespace.clone().unwrap_or_default();
    let mut errs = validate_event(&new, target.def.form == Form::CoreEvent);
    if target.def.form != Form::CoreEvent {
        errs.extend(validate_event_update(&new, old));
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(target.def, &name, &errs));
    }
    if dry_run {
        return Ok(Outcome::Json(render(
            target.def,
            &target.version,
            &new,
            true,
        )));
    }
    let stored = state.put(Store::Event, &namespace, &name, new);
    shared.changed.send_replace(state.rv);
    Ok(Outcome::Json(render(
        target.def,
        &target.version,
        &stored,
        true,
    )))
}

fn update_event(
    shared: &Arc<Shared>,
    ctx: &mut Ctx,
    target: &Target,
    query: &[(String, String)],
    parts: &hyper::http::request::Parts,
    body: &Bytes,
) -> Result<Outcome, ApiError> {
    check_params(ctx, query, WRITE_PARAMS)?;
    let dry_run = query_value(query, "dryRun").is_some();
    let mut event = decode_event_body(ctx, target, parts, body, true)?;
    event_namespace(target, &mut event)?;
    let name = target.name.clone().unwrap_or_default();
    let body_name = event["metadata"]["name"].as_str().unwrap_or("").to_string();
    if body_name != name {
        return Err(ApiError::bad_request(
            "the name of the object (".to_string()
                + &body_name
                + ") does not match the name on the URL ("
                + &name
                + ")",
        ));
    }
    let body_rv = event["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    let mut state = lock(&shared.state);
    let key = (
        Store::Event,
        target.namespace.clone().unwrap_or_default(),
        name.clone(),
    );
    let old = state
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(target.def, &name))?;
    if let Some(rv) = body_rv.filter(|r| !r.is_empty()) {
        if old["metadata"]["resourceVersion"].as_str() != Some(rv.as_str()) {
            return Err(ApiError::conflict(target.def, &name));
        }
    }
    let new = to_stored_event(target, &event);
    store_event_update(shared, target, &mut state, &old, new, dry_run)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn patch_event(
    shared: &Arc<Shared>,
    ctx: &mut Ctx,
    target: &Target,
    query: &[(String, String)],
    parts: &hyper::http::request::Parts,
    body: &Bytes,
) -> Result<Outcome, ApiError> {
    check_params(
        ctx,
        query,
        &["dryRun", "fieldManager", "fieldValidation", "force"],
    )?;
    let dry_run = query_value(query, "dryRun").is_some();
    let ct = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    match ct.as_str() {
        // Events have no patch-merge keys that matter here: strategic merge = merge.
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {}
        "application/json-patch+json" | "application/apply-patch+yaml" => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the stand-in does not implement {ct} patches (the real server does): extend tests/common/kube_apiserver.rs"),
            ))
        }
        _ => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"),
            ))
        }
    }
    let patch = decode_event_body(ctx, target, parts, body, false)?;
    let name = target.name.clone().unwrap_or_default();
    let mut state = lock(&shared.state);
    let key = (
        Store::Event,
        target.namespace.clone().unwrap_or_default(),
        name.clone(),
    );
    let old = state
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(target.def, &name))?;
    // Patch the object as this API shows it, then store it back.
    let mut shown = render(target.def, &target.version, &old, true);
    merge_patch(&mut shown, &patch);
    let shown_ns = shown["metadata"]["namespace"].as_str().unwrap_or("");
    if shown_ns != target.namespace.as_deref().unwrap_or("") {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if shown["metadata"]["name"].as_str() != Some(name.as_str()) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            shown["metadata"]["name"].as_str().unwrap_or("")
        )));
    }
    if let Some(rv) = patch["metadata"]["resourceVersion"].as_str() {
        if old["metadata"]["resourceVersion"].as_str() != Some(rv) {
            return Err(ApiError::conflict(target.def, &name));
        }
    }
    let mut new = to_stored_event(target, &shown);
    // Server-owned metadata survives a patch.
    for k in ["uid", "creationTimestamp"] {
        new["metadata"][k] = old["metadata"][k].clone();
    }
    store_event_update(shared, target, &mut state, &old, new, dry_run)
}
