//! The forwarder's xDS client: ADS (delta by default, state of the world on request) against
//! `shadowplane serve` or any control plane sending the same subset of Envoy resources.
//!
//! Like Envoy: wildcard subscriptions to listeners and clusters, then the route configurations
//! the listeners name (RDS) and the ClusterLoadAssignments of EDS clusters. Every response is
//! applied to a copy of the current resources and compiled ([`compile`]); a good result is
//! ACKed and handed to `on_table`, a bad one is NACKed with an `error_detail` listing each
//! [`CompileError`] (resource, field path, message) and the previous table stays in service.
//!
//! The first table is handed over once listeners and clusters have both been accepted and,
//! like Envoy's listener and cluster warming, once the route configurations the listeners
//! name and the endpoints of the EDS clusters have arrived (or the server has said they do not
//! exist): the listeners are not bound before they can route. When
//! the server goes away the client keeps its resources (the data plane keeps serving the last
//! table) and reconnects with jittered exponential back-off (100 ms → 5 s); a delta
//! reconnect sends `initial_resource_versions` so the server only sends what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster_v3;
use envoy_types::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint_v3;
use envoy_types::pb::envoy::config::listener::v3 as listener_v3;
use envoy_types::pb::envoy::config::route::v3 as route_v3;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_v3;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct, Value};
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::compile::{compile, error_detail, type_url, unknown_fields, CompileError, XdsResources};
use super::table::Table;

/// Which ADS variant to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Incremental (delta) ADS, the default.
    #[default]
    Delta,
    /// State-of-the-world ADS.
    Sotw,
}

/// How to reach and identify with the control plane.
#[derive(Debug, Clone)]
pub struct XdsClientConfig {
    /// `host:port` (or a full `http://host:port` URI).
    pub server: String,
    /// `Node.id`.
    pub node_id: String,
    /// `Node.cluster` (default `shadowplane-forwarder`).
    pub node_cluster: String,
    /// `Node.metadata` string fields; `NAMESPACE` gives Istio's short host names for that
    /// namespace (see `serve`'s node views).
    pub node_metadata: BTreeMap<String, String>,
    pub protocol: Protocol,
    /// First reconnect delay; doubles up to `max_backoff`, each delay jittered to 50-100 %.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// TCP/HTTP2 connect timeout of one attempt.
    pub connect_timeout: Duration,
}

impl XdsClientConfig {
    pub fn new(server: impl Into<String>, node_id: impl Into<String>) -> XdsClientConfig {
        XdsClientConfig {
            server: server.into(),
            node_id: node_id.into(),
            node_cluster: "shadowplane-forwarder".to_string(),
            node_metadata: BTreeMap::new(),
            protocol: Protocol::Delta,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn node(&self) -> Node {
        let metadata = (!self.node_metadata.is_empty()).then(|| Struct {
            fields: self
                .node_metadata
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value {
                            kind: Some(Kind::StringValue(v.clone())),
                        },
                    )
                })
                .collect(),
        });
        Node {
            id: self.node_id.clone(),
            cluster: self.node_cluster.clone(),
            metadata,
            user_agent_name: "shadowplane-forwarder".to_string(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").to_string(),
            )),
            ..Default::default()
        }
    }

    fn uri(&self) -> String {
        if self.server.contains("://") {
            self.server.clone()
        } else {
            format!("http://{}", self.server)
        }
    }
}

/// Errors that stop the client (connection problems are retried, never returned).
#[derive(Debug, thiserror::Error)]
pub enum XdsClientError {
    #[error("invalid xds server address {0:?}: {1}")]
    InvalidServer(String, String),
}

/// What the client is doing, for the admin page and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStatusView {
    /// A stream is open.
    pub connected: bool,
    /// Streams opened so far.
    pub connects: u64,
    /// Why the last stream ended / the last connect failed.
    pub last_error: Option<String>,
    /// The `error_detail` of the last NACK (cleared by the next accepted update).
    pub last_nack: Option<String>,
    /// NACKs sent so far.
    pub nacks: u64,
    /// Tables handed to `on_table` so far.
    pub tables: u64,
    /// Versions of the resources in the current table.
    pub versions: super::table::Versions,
}

/// Shared, updated by the client.
#[derive(Debug, Default)]
pub struct ClientStatus(Mutex<ClientStatusView>);

impl ClientStatus {
    pub fn view(&self) -> ClientStatusView {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut ClientStatusView)) {
        if let Ok(mut g) = self.0.lock() {
            f(&mut g);
        }
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.update(|s| s.connected = connected);
    }

    pub(crate) fn table_applied(&self, versions: &super::table::Versions) {
        self.update(|s| {
            s.tables += 1;
            s.versions = versions.clone();
            s.last_nack = None;
        });
    }

    pub(crate) fn problem(&self, message: String) {
        self.update(|s| {
            s.nacks += 1;
            s.last_nack = Some(message);
        });
    }
}

/// Run the client until `shutdown` resolves. `on_table` gets every new compiled table.
pub async fn run<F>(
    cfg: XdsClientConfig,
    on_table: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), XdsClientError>
where
    F: Fn(Arc<Table>) + Send + Sync,
{
    run_with_status(cfg, Arc::new(ClientStatus::default()), on_table, shutdown).await
}

/// [`run`], reporting into `status`.
pub async fn run_with_status<F>(
    cfg: XdsClientConfig,
    status: Arc<ClientStatus>,
    on_table: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), XdsClientError>
where
    F: Fn(Arc<Table>) + Send + Sync,
{
    let endpoint = Endpoint::from_shared(cfg.uri())
        .map_err(|e| XdsClientError::InvalidServer(cfg.server.clone(), e.to_string()))?
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let mut state = State::default();
    let mut attempt: u32 = 0;
    tokio::pin!(shutdown);
    loop {
        let outcome = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            outcome = session(&endpoint, &cfg, &mut state, &status, &on_table) => outcome,
        };
        status.update(|s| {
            s.connected = false;
            s.last_error = Some(outcome.reason.clone());
        });
        tracing::warn!(server = %cfg.server, reason = %outcome.reason, "xds stream ended; reconnecting");
        if outcome.got_response {
            attempt = 0;
        }
        let delay = backoff(
            cfg.initial_backoff,
            cfg.max_backoff,
            attempt,
            &mut rand::rng(),
        );
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Exponential back-off with jitter: `min(max, initial × 2^attempt)` scaled by a random factor
/// in [0.5, 1].
pub fn backoff(initial: Duration, max: Duration, attempt: u32, rng: &mut impl Rng) -> Duration {
    let exp = initial.saturating_mul(2u32.saturating_pow(attempt.min(20)));
    let capped = exp.min(max);
    capped.mul_f64(rng.random_range(0.5..=1.0))
}

// ===================================================================================== state

/// Index of a type in per-type arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Lds = 0,
    Rds = 1,
    Cds = 2,
    Eds = 3,
}

impl Ty {
    const ALL: [Ty; 4] = [Ty::Lds, Ty::Rds, Ty::Cds, Ty::Eds];

    fn url(self) -> &'static str {
        match self {
            Ty::Lds => type_url::LISTENER,
            Ty::Rds => type_url::ROUTE,
            Ty::Cds => type_url::CLUSTER,
            Ty::Eds => type_url::ENDPOINT,
        }
    }

    fn of(url: &str) -> Option<Ty> {
        Ty::ALL.into_iter().find(|t| t.url() == url)
    }

    fn wildcard(self) -> bool {
        matches!(self, Ty::Lds | Ty::Cds)
    }
}

/// Survives reconnects.
#[derive(Default)]
struct State {
    /// The accepted resources (what the current table was compiled from).
    res: XdsResources,
    /// Delta: name → version of the accepted resources, per type.
    versions: [BTreeMap<String, String>; 4],
    /// Types accepted at least once.
    accepted: [bool; 4],
    /// The first table has been handed over.
    published: bool,
    /// RDS and EDS names the server answered as not existing (delta `removed_resources`, or
    /// requested and missing from a state-of-the-world response): warming does not wait for
    /// them.
    absent: [BTreeSet<String>; 4],
}

/// Whether every route configuration the listeners name and every ClusterLoadAssignment of
/// an EDS cluster is there or known to be absent (Envoy's warming before the first use).
fn warm(res: &XdsResources, absent: &[BTreeSet<String>; 4]) -> bool {
    [Ty::Rds, Ty::Eds].into_iter().all(|ty| {
        let have: BTreeSet<String> = names_of(res, ty).into_iter().collect();
        wanted(res, ty)
            .iter()
            .all(|n| have.contains(n) || absent[ty as usize].contains(n))
    })
}

/// The route configuration names the accepted listeners reference.
fn wanted_routes(res: &XdsResources) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in res.listeners.values() {
        for chain in &l.filter_chains {
            for f in &chain.filters {
                if let Some(listener_v3::filter::ConfigType::TypedConfig(any)) = &f.config_type {
                    if let Ok(hcm) = hcm_v3::HttpConnectionManager::decode(any.value.as_slice()) {
                        if let Some(hcm_v3::http_connection_manager::RouteSpecifier::Rds(rds)) =
                            &hcm.route_specifier
                        {
                            out.insert(rds.route_config_name.clone());
                        }
                    }
                }
            }
        }
    }
    out
}

/// The ClusterLoadAssignment names of the accepted EDS clusters.
fn wanted_endpoints(res: &XdsResources) -> BTreeSet<String> {
    use cluster_v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    res.clusters
        .iter()
        .filter(|(_, c)| {
            c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        })
        .map(|(name, c)| {
            c.eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| name.clone())
        })
        .collect()
}

fn wanted(res: &XdsResources, ty: Ty) -> BTreeSet<String> {
    match ty {
        Ty::Rds => wanted_routes(res),
        Ty::Eds => wanted_endpoints(res),
        _ => BTreeSet::new(),
    }
}

/// Decoded resources of one type, to upsert.
enum Decoded {
    Listener(listener_v3::Listener),
    Route(route_v3::RouteConfiguration),
    Cluster(cluster_v3::Cluster),
    Endpoint(endpoint_v3::ClusterLoadAssignment),
}

impl Decoded {
    fn name(&self) -> &str {
        match self {
            Decoded::Listener(l) => &l.name,
            Decoded::Route(r) => &r.name,
            Decoded::Cluster(c) => &c.name,
            Decoded::Endpoint(e) => &e.cluster_name,
        }
    }
}

fn decode_resource(
    ty: Ty,
    any: &Any,
    errors: &mut Vec<CompileError>,
    hint: &str,
) -> Option<Decoded> {
    let fail = |errors: &mut Vec<CompileError>, msg: String| {
        errors.push(CompileError {
            type_url: ty.url().to_string(),
            resource_name: hint.to_string(),
            field: String::new(),
            message: msg,
        })
    };
    if any.type_url != ty.url() {
        fail(
            errors,
            format!(
                "resource of type {:?} in a {} response",
                any.type_url,
                ty.url()
            ),
        );
        return None;
    }
    let bytes = any.value.as_slice();
    let decoded = match ty {
        Ty::Lds => listener_v3::Listener::decode(bytes).map(Decoded::Listener),
        Ty::Rds => route_v3::RouteConfiguration::decode(bytes).map(Decoded::Route),
        Ty::Cds => cluster_v3::Cluster::decode(bytes).map(Decoded::Cluster),
        Ty::Eds => endpoint_v3::ClusterLoadAssignment::decode(bytes).map(Decoded::Endpoint),
    };
    match decoded {
        Ok(d) => {
            errors.extend(unknown_fields(ty.url(), d.name(), bytes));
            Some(d)
        }
        Err(e) => {
            fail(errors, format!("does not decode: {e}"));
            None
        }
    }
}

fn upsert(res: &mut XdsResources, d: Decoded) {
    match d {
        Decoded::Listener(l) => {
            res.listeners.insert(l.name.clone(), l);
        }
        Decoded::Route(r) => {
            res.routes.insert(r.name.clone(), r);
        }
        Decoded::Cluster(c) => {
            res.clusters.insert(c.name.clone(), c);
        }
        Decoded::Endpoint(e) => {
            res.endpoints.insert(e.cluster_name.clone(), e);
        }
    }
}

fn remove(res: &mut XdsResources, ty: Ty, name: &str) {
    match ty {
        Ty::Lds => {
            res.listeners.remove(name);
        }
        Ty::Rds => {
            res.routes.remove(name);
        }
        Ty::Cds => {
            res.clusters.remove(name);
        }
        Ty::Eds => {
            res.endpoints.remove(name);
        }
    }
}

fn names_of(res: &XdsResources, ty: Ty) -> Vec<String> {
    match ty {
        Ty::Lds => res.listeners.keys().cloned().collect(),
        Ty::Rds => res.routes.keys().cloned().collect(),
        Ty::Cds => res.clusters.keys().cloned().collect(),
        Ty::Eds => res.endpoints.keys().cloned().collect(),
    }
}

fn set_version(res: &mut XdsResources, ty: Ty, version: &str) {
    let v = &mut res.versions;
    let slot = match ty {
        Ty::Lds => &mut v.listeners,
        Ty::Rds => &mut v.route_configs,
        Ty::Cds => &mut v.clusters,
        Ty::Eds => &mut v.endpoints,
    };
    *slot = version.to_string();
}

/// Compile `candidate`; on success make it the state, hand the table over (once listeners and
/// clusters have been accepted) and return `Ok`.
fn accept<F: Fn(Arc<Table>)>(
    state: &mut State,
    ty: Ty,
    candidate: XdsResources,
    status: &ClientStatus,
    on_table: &F,
) -> Result<(), Vec<CompileError>> {
    if state.published && state.accepted[ty as usize] && candidate == state.res {
        // The response repeats what is held (serve resends a changed cluster's unchanged load
        // assignment for Envoy's warming; SotW resends full state after a warming push): the
        // table in use is this one already.
        status.update(|s| s.last_nack = None);
        return Ok(());
    }
    let table = compile(&candidate)?;
    let ready = state.published || warm(&candidate, &state.absent);
    state.res = candidate;
    state.accepted[ty as usize] = true;
    if state.accepted[Ty::Lds as usize] && state.accepted[Ty::Cds as usize] && ready {
        state.published = true;
        let versions = table.versions.clone();
        on_table(Arc::new(table));
        status.update(|s| {
            s.tables += 1;
            s.versions = versions;
        });
    }
    status.update(|s| s.last_nack = None);
    Ok(())
}

fn nack_status(errors: &[CompileError]) -> Status {
    Status {
        // google.rpc.Code.INVALID_ARGUMENT
        code: 3,
        message: error_detail(errors),
        details: Vec::new(),
    }
}

/// How a stream ended.
struct SessionEnd {
    reason: String,
    got_response: bool,
}

async fn connect(endpoint: &Endpoint) -> Result<AggregatedDiscoveryServiceClient<Channel>, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

async fn session<F: Fn(Arc<Table>)>(
    endpoint: &Endpoint,
    cfg: &XdsClientConfig,
    state: &mut State,
    status: &ClientStatus,
    on_table: &F,
) -> SessionEnd {
    let client = match connect(endpoint).await {
        Ok(c) => c,
        Err(reason) => {
            return SessionEnd {
                reason,
                got_response: false,
            }
        }
    };
    match cfg.protocol {
        Protocol::Delta => delta_session(client, cfg, state, status, on_table).await,
        Protocol::Sotw => sotw_session(client, cfg, state, status, on_table).await,
    }
}

// ===================================================================================== delta

async fn delta_session<F: Fn(Arc<Table>)>(
    mut client: AggregatedDiscoveryServiceClient<Channel>,
    cfg: &XdsClientConfig,
    state: &mut State,
    status: &ClientStatus,
    on_table: &F,
) -> SessionEnd {
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let mut node = Some(cfg.node());
    // Subscriptions of this stream, per type.
    let mut subscribed: [BTreeSet<String>; 4] = Default::default();
    for ty in Ty::ALL {
        let names: BTreeSet<String> = if ty.wildcard() {
            ["*".to_string()].into()
        } else {
            wanted(&state.res, ty)
        };
        if names.is_empty() {
            continue;
        }
        let req = DeltaDiscoveryRequest {
            node: node.take(),
            type_url: ty.url().to_string(),
            resource_names_subscribe: names.iter().cloned().collect(),
            initial_resource_versions: state.versions[ty as usize]
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        };
        subscribed[ty as usize] = names;
        // The receiver lives until the stream ends.
        let _ = tx.send(req);
    }
    let stream = client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await;
    let mut stream = match stream {
        Ok(s) => s.into_inner(),
        Err(e) => {
            return SessionEnd {
                reason: format!("open delta ads stream: {e}"),
                got_response: false,
            }
        }
    };
    status.update(|s| {
        s.connected = true;
        s.connects += 1;
    });
    let mut got_response = false;
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return SessionEnd {
                    reason: "server closed the stream".into(),
                    got_response,
                }
            }
            Err(e) => {
                return SessionEnd {
                    reason: format!("stream error: {e}"),
                    got_response,
                }
            }
        };
        got_response = true;
        let Some(ty) = Ty::of(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring a response of an unrequested type");
            continue;
        };
        let (ack, accepted) = delta_apply(state, ty, &resp, status, on_table);
        let _ = tx.send(ack);
        if accepted {
            for t in [Ty::Rds, Ty::Eds] {
                let want = wanted(&state.res, t);
                let have = &subscribed[t as usize];
                let sub: Vec<String> = want.difference(have).cloned().collect();
                let unsub: Vec<String> = have.difference(&want).cloned().collect();
                if sub.is_empty() && unsub.is_empty() {
                    continue;
                }
                // No longer referenced: forget them (the server sends no removal).
                for n in &unsub {
                    remove(&mut state.res, t, n);
                    state.versions[t as usize].remove(n);
                }
                let _ = tx.send(DeltaDiscoveryRequest {
                    node: None,
                    type_url: t.url().to_string(),
                    resource_names_subscribe: sub,
                    resource_names_unsubscribe: unsub,
                    ..Default::default()
                });
                subscribed[t as usize] = want;
            }
        }
    }
}

/// Apply one delta response; returns the ACK/NACK to send and whether it was accepted.
fn delta_apply<F: Fn(Arc<Table>)>(
    state: &mut State,
    ty: Ty,
    resp: &DeltaDiscoveryResponse,
    status: &ClientStatus,
    on_table: &F,
) -> (DeltaDiscoveryRequest, bool) {
    let mut errors = Vec::new();
    let mut candidate = state.res.clone();
    let mut versions = state.versions[ty as usize].clone();
    for r in &resp.resources {
        let Some(any) = &r.resource else {
            // A resource without a body: nothing to apply.
            continue;
        };
        if let Some(d) = decode_resource(ty, any, &mut errors, &r.name) {
            if !r.name.is_empty() && d.name() != r.name {
                errors.push(CompileError {
                    type_url: ty.url().to_string(),
                    resource_name: r.name.clone(),
                    field: "name".into(),
                    message: format!(
                        "resource named {:?} inside the envelope of {:?}",
                        d.name(),
                        r.name
                    ),
                });
                continue;
            }
            versions.insert(d.name().to_string(), r.version.clone());
            upsert(&mut candidate, d);
        }
    }
    for name in &resp.removed_resources {
        remove(&mut candidate, ty, name);
        versions.remove(name);
    }
    if !ty.wildcard() {
        let absent = &mut state.absent[ty as usize];
        for r in &resp.resources {
            absent.remove(&r.name);
        }
        absent.extend(resp.removed_resources.iter().cloned());
    }
    let version = if resp.system_version_info.is_empty() {
        resp.nonce.clone()
    } else {
        resp.system_version_info.clone()
    };
    set_version(&mut candidate, ty, &version);
    let result = if errors.is_empty() {
        accept(state, ty, candidate, status, on_table)
    } else {
        Err(errors)
    };
    match result {
        Ok(()) => {
            state.versions[ty as usize] = versions;
            (
                DeltaDiscoveryRequest {
                    type_url: resp.type_url.clone(),
                    response_nonce: resp.nonce.clone(),
                    ..Default::default()
                },
                true,
            )
        }
        Err(errors) => {
            let detail = nack_status(&errors);
            tracing::warn!(type_url = %resp.type_url, nonce = %resp.nonce, "nack: {}", detail.message);
            status.update(|s| {
                s.nacks += 1;
                s.last_nack = Some(detail.message.clone());
            });
            (
                DeltaDiscoveryRequest {
                    type_url: resp.type_url.clone(),
                    response_nonce: resp.nonce.clone(),
                    error_detail: Some(detail),
                    ..Default::default()
                },
                false,
            )
        }
    }
}

// ====================================================================== state of the world

async fn sotw_session<F: Fn(Arc<Table>)>(
    mut client: AggregatedDiscoveryServiceClient<Channel>,
    cfg: &XdsClientConfig,
    state: &mut State,
    status: &ClientStatus,
    on_table: &F,
) -> SessionEnd {
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let mut node = Some(cfg.node());
    // Per type on this stream: the names requested, the last nonce, the last accepted version.
    let mut subscribed: [Option<BTreeSet<String>>; 4] = Default::default();
    let mut nonces: [String; 4] = Default::default();
    let mut accepted_versions: [String; 4] = Default::default();
    for ty in Ty::ALL {
        let names = if ty.wildcard() {
            BTreeSet::new()
        } else {
            let w = wanted(&state.res, ty);
            if w.is_empty() {
                continue;
            }
            w
        };
        let _ = tx.send(DiscoveryRequest {
            node: node.take(),
            type_url: ty.url().to_string(),
            resource_names: names.iter().cloned().collect(),
            ..Default::default()
        });
        subscribed[ty as usize] = Some(names);
    }
    let mut stream = match client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => {
            return SessionEnd {
                reason: format!("open ads stream: {e}"),
                got_response: false,
            }
        }
    };
    status.update(|s| {
        s.connected = true;
        s.connects += 1;
    });
    let mut got_response = false;
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return SessionEnd {
                    reason: "server closed the stream".into(),
                    got_response,
                }
            }
            Err(e) => {
                return SessionEnd {
                    reason: format!("stream error: {e}"),
                    got_response,
                }
            }
        };
        got_response = true;
        let Some(ty) = Ty::of(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring a response of an unrequested type");
            continue;
        };
        let i = ty as usize;
        nonces[i] = resp.nonce.clone();
        let names: Vec<String> = subscribed[i]
            .as_ref()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        match sotw_apply(state, ty, &resp, &names, status, on_table) {
            Ok(()) => {
                accepted_versions[i] = resp.version_info.clone();
                let _ = tx.send(DiscoveryRequest {
                    type_url: resp.type_url.clone(),
                    version_info: resp.version_info.clone(),
                    response_nonce: resp.nonce.clone(),
                    resource_names: names,
                    ..Default::default()
                });
                for t in [Ty::Rds, Ty::Eds] {
                    let want = wanted(&state.res, t);
                    let ti = t as usize;
                    if subscribed[ti].as_ref() == Some(&want)
                        || (subscribed[ti].is_none() && want.is_empty())
                    {
                        continue;
                    }
                    if let Some(old) = &subscribed[ti] {
                        for n in old.difference(&want) {
                            remove(&mut state.res, t, n);
                        }
                    }
                    let _ = tx.send(DiscoveryRequest {
                        node: node.take(),
                        type_url: t.url().to_string(),
                        version_info: accepted_versions[ti].clone(),
                        response_nonce: nonces[ti].clone(),
                        resource_names: want.iter().cloned().collect(),
                        ..Default::default()
                    });
                    subscribed[ti] = Some(want);
                }
            }
            Err(errors) => {
                let detail = nack_status(&errors);
                tracing::warn!(type_url = %resp.type_url, nonce = %resp.nonce, "nack: {}", detail.message);
                status.update(|s| {
                    s.nacks += 1;
                    s.last_nack = Some(detail.message.clone());
                });
                let _ = tx.send(DiscoveryRequest {
                    type_url: resp.type_url.clone(),
                    version_info: accepted_versions[i].clone(),
                    response_nonce: resp.nonce.clone(),
                    resource_names: names,
                    error_detail: Some(detail),
                    ..Default::default()
                });
            }
        }
    }
}

fn sotw_apply<F: Fn(Arc<Table>)>(
    state: &mut State,
    ty: Ty,
    resp: &DiscoveryResponse,
    requested: &[String],
    status: &ClientStatus,
    on_table: &F,
) -> Result<(), Vec<CompileError>> {
    let mut errors = Vec::new();
    let mut candidate = state.res.clone();
    if ty.wildcard() {
        // Listeners and clusters: each response is the complete set.
        for n in names_of(&candidate, ty) {
            remove(&mut candidate, ty, &n);
        }
    }
    for any in &resp.resources {
        if let Some(d) = decode_resource(ty, any, &mut errors, "") {
            upsert(&mut candidate, d);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if !ty.wildcard() {
        // A state-of-the-world answer covers every name requested: what it lacks is absent.
        let have: BTreeSet<String> = names_of(&candidate, ty).into_iter().collect();
        state.absent[ty as usize] = requested
            .iter()
            .filter(|n| !have.contains(*n))
            .cloned()
            .collect();
    }
    set_version(&mut candidate, ty, &resp.version_info);
    accept(state, ty, candidate, status, on_table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..30 {
            let d = backoff(i, m, attempt, &mut rng);
            let full = i
                .saturating_mul(2u32.saturating_pow(attempt.min(20)))
                .min(m);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
        assert!(backoff(i, m, 0, &mut rng) <= Duration::from_millis(100));
        assert!(backoff(i, m, 25, &mut rng) >= Duration::from_millis(2500));
    }

    fn seed_resources() -> XdsResources {
        let t = shadowplane_translator::translate_files(
            &[shadowplane_translator::SourceFile {
                path: "x.yaml".into(),
                text: std::fs::read_to_string(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/testdata/translate/seed-calc-mirror/input/service-entry.yaml"
                ))
                .expect("test input"),
            }],
            &shadowplane_translator::Options::default(),
        );
        XdsResources::from_translator(&t.resources, "1")
    }

    /// Regression: the first table used to be handed over as soon as listeners and clusters
    /// were accepted, so the forwarder bound its listeners and answered 404 until the route
    /// configuration arrived (Envoy keeps a listener warming until its RDS is there).
    #[test]
    fn the_first_table_waits_for_the_routes_and_endpoints_it_needs() {
        let full = seed_resources();
        assert!(!full.routes.is_empty() && !full.endpoints.is_empty());
        let tables = Mutex::new(Vec::<Arc<Table>>::new());
        let on_table = |t: Arc<Table>| tables.lock().expect("lock").push(t);
        let status = ClientStatus::default();
        let mut state = State::default();

        // Clusters and endpoints, then listeners: no routes yet, nothing handed over.
        let mut c = state.res.clone();
        c.clusters = full.clusters.clone();
        accept(&mut state, Ty::Cds, c, &status, &on_table).expect("clusters compile");
        let mut c = state.res.clone();
        c.endpoints = full.endpoints.clone();
        accept(&mut state, Ty::Eds, c, &status, &on_table).expect("endpoints compile");
        let mut c = state.res.clone();
        c.listeners = full.listeners.clone();
        accept(&mut state, Ty::Lds, c, &status, &on_table).expect("listeners compile");
        assert!(
            tables.lock().expect("lock").is_empty(),
            "handed over before RDS"
        );
        assert!(!state.published);

        // The routes arrive: the first table, with them.
        let mut c = state.res.clone();
        c.routes = full.routes.clone();
        accept(&mut state, Ty::Rds, c, &status, &on_table).expect("routes compile");
        let got = tables.lock().expect("lock").clone();
        assert_eq!(got.len(), 1);
        assert!(got[0].route_configs.contains_key("8080"));
        assert_eq!(status.view().tables, 1);

        // Later updates are handed over right away, even while a new RDS is pending.
        let mut c = state.res.clone();
        c.routes.clear();
        accept(&mut state, Ty::Rds, c, &status, &on_table).expect("compiles");
        assert_eq!(tables.lock().expect("lock").len(), 2);
    }

    #[test]
    fn warming_does_not_wait_for_what_the_server_says_is_absent() {
        let full = seed_resources();
        let mut absent: [BTreeSet<String>; 4] = Default::default();
        let mut res = full.clone();
        res.routes.clear();
        assert!(!warm(&res, &absent));
        absent[Ty::Rds as usize].insert("8080".to_string());
        assert!(warm(&res, &absent));
        res.endpoints.clear();
        assert!(
            !warm(&res, &absent),
            "EDS clusters wait for their endpoints"
        );
        assert!(warm(&full, &Default::default()));
    }

    #[test]
    fn wanted_names_follow_listeners_and_eds_clusters() {
        let t = shadowplane_translator::translate_files(
            &[shadowplane_translator::SourceFile {
                path: "x.yaml".into(),
                text: std::fs::read_to_string(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/testdata/translate/seed-calc-mirror/input/service-entry.yaml"
                ))
                .expect("test input"),
            }],
            &shadowplane_translator::Options::default(),
        );
        let res = XdsResources::from_translator(&t.resources, "1");
        assert_eq!(wanted_routes(&res), ["8080".to_string()].into());
        let eds = wanted_endpoints(&res);
        assert!(
            eds.contains("outbound|8080||calcbackendsvc.challengeistio.svc.cluster.local"),
            "{eds:?}"
        );
    }
}
