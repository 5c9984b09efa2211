//! State-of-the-world protocol state machine (ADS and per-type streams).
//!
//! Per type URL the stream remembers the subscription, what the client has as far as the
//! server knows (`sent`: name → resource last sent, NACKed ones included so they are not
//! re-sent in a loop), and the last response's nonce. Decisions:
//!
//! * first request for a type: always answered with the full view (also after a reconnect
//!   carrying a version from another replica);
//! * stale nonce: no answer, but the names are remembered and served at the next push;
//! * ACK: answered only if the view changed, names were added, or (ADS) the previous
//!   cluster/listener push started warming that needs an endpoint/route answer;
//! * NACK: recorded; answered only if the request also added names;
//! * snapshot change: types in CDS → EDS → LDS → RDS order, each only if its view changed;
//!   on ADS, clusters that disappear while listeners/routes change are kept in a first CDS
//!   response and removed in a second one after the routes (make-before-break).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message;
use tonic::Status;

use super::cache::{Snapshot, TypeResources};
use super::registry::{now_unix_ms, NackStatus, RequestKind, SyncState};
use super::resource::{
    self, is_full_state, placeholder, push_rank, set_version, short_type, EncodedResource,
};
use super::stream::{Protocol, StreamCtx};
use super::subscription::Subscription;
use super::wire::SotwWire;

struct Last {
    nonce: String,
    version: String,
    names: Vec<String>,
}

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    /// What the client has, as far as the server knows.
    sent: BTreeMap<String, Arc<EncodedResource>>,
    last: Option<Last>,
    /// Answer the next ACK even if nothing changed (a cluster or listener is warming).
    force: bool,
    /// Snapshot version of this type last reconciled against (pushed or not).
    view_version: Option<String>,
    /// The last response is not acknowledged yet.
    pending: bool,
    /// The last response was rejected.
    nacked: bool,
}

struct Plan {
    resources: Vec<Arc<EncodedResource>>,
    sent: BTreeMap<String, Arc<EncodedResource>>,
    version: String,
}

pub(crate) struct SotwProtocol {
    ctx: StreamCtx,
    types: BTreeMap<String, TypeState>,
    snapshot: Option<Arc<Snapshot>>,
}

impl SotwProtocol {
    pub fn new(ctx: StreamCtx) -> Self {
        SotwProtocol {
            ctx,
            types: BTreeMap::new(),
            snapshot: None,
        }
    }

    /// What the client should have of `type_url` now.
    fn view(
        &self,
        type_url: &str,
        state: &TypeState,
        snapshot: &Snapshot,
    ) -> BTreeMap<String, Arc<EncodedResource>> {
        let resources = snapshot.resources(type_url);
        let mut view = BTreeMap::new();
        if state.sub.is_wildcard() {
            view.extend(resources.iter().map(|(n, r)| (n.clone(), r.clone())));
        }
        for name in state.sub.names() {
            if let Some(r) = resources.get(name) {
                view.insert(name.clone(), r.clone());
                continue;
            }
            // A name the client already has real content for keeps it (SotW cannot delete
            // endpoints or routes; during make-before-break the old cluster still needs them).
            let has_real = state.sent.get(name).is_some_and(|r| !r.is_placeholder());
            if self.ctx.options.placeholders_for_missing && !has_real {
                if let Some(p) = placeholder(type_url, name) {
                    view.insert(name.clone(), p);
                }
            }
        }
        view
    }

    /// The response `type_url` needs, if any. `full`: answer with the whole view even if
    /// nothing changed.
    fn plan(
        &self,
        type_url: &str,
        state: &TypeState,
        snapshot: &Snapshot,
        full: bool,
    ) -> Option<Plan> {
        let view = self.view(type_url, state, snapshot);
        let changed: Vec<Arc<EncodedResource>> = view
            .values()
            .filter(|r| state.sent.get(r.name()).map(|s| s.version()) != Some(r.version()))
            .cloned()
            .collect();
        let full_state = is_full_state(type_url);
        let removed = full_state && state.sent.keys().any(|n| !view.contains_key(n));
        if !full && changed.is_empty() && !removed {
            return None;
        }
        let version = snapshot.version(type_url).to_string();
        if full_state {
            return Some(Plan {
                resources: view.values().cloned().collect(),
                sent: view,
                version,
            });
        }
        let mut sent = state.sent.clone();
        let resources = if full {
            view.values().cloned().collect()
        } else {
            changed
        };
        for r in &resources {
            sent.insert(r.name().to_string(), r.clone());
        }
        Some(Plan {
            resources,
            sent,
            version,
        })
    }

    fn commit(&mut self, type_url: &str, plan: Plan) -> SotwWire {
        let nonce = self.ctx.next_nonce();
        let names: Vec<String> = plan
            .resources
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        let Some(state) = self.types.get_mut(type_url) else {
            // Invariant: plans are only made for types that have a state.
            unreachable!("commit for a type without state");
        };
        // Did this response add or change a cluster/listener (which Envoy then warms)?
        let warming = plan
            .resources
            .iter()
            .any(|r| state.sent.get(r.name()).map(|s| s.version()) != Some(r.version()));
        state.sent = plan.sent;
        state.pending = true;
        state.last = Some(Last {
            nonce: nonce.clone(),
            version: plan.version.clone(),
            names,
        });
        if type_url == resource::ENDPOINT || type_url == resource::ROUTE {
            state.force = false;
        }
        if self.ctx.ads && warming {
            let dependent = match type_url {
                resource::CLUSTER => Some(resource::ENDPOINT),
                resource::LISTENER => Some(resource::ROUTE),
                _ => None,
            };
            if let Some(dep) = dependent.and_then(|d| self.types.get_mut(d)) {
                dep.force = true;
            }
        }
        let wire = SotwWire {
            version_info: plan.version,
            resources: plan.resources,
            type_url: type_url.to_string(),
            nonce,
            control_plane: self.ctx.control_plane.clone(),
        };
        self.record_push(&wire);
        wire
    }

    fn record_push(&self, wire: &SotwWire) {
        let bytes = wire.encoded_len();
        let count = wire.resources.len();
        let metrics = self.ctx.handle.metrics();
        metrics.push(&wire.type_url, count, bytes);
        tracing::debug!(
            node = %self.ctx.node_id,
            type_url = short_type(&wire.type_url),
            version = %wire.version_info,
            nonce = %wire.nonce,
            resources = count,
            bytes,
            "xds push (sotw)"
        );
        if bytes > self.ctx.options.warn_response_bytes {
            metrics.oversized();
            tracing::warn!(
                node = %self.ctx.node_id,
                type_url = short_type(&wire.type_url),
                bytes,
                limit = self.ctx.options.warn_response_bytes,
                "xds response is larger than the configured warning size; proxies with a 4 MiB gRPC limit reject it"
            );
        }
        self.ctx.handle.update(&wire.type_url, |t| {
            t.state = SyncState::Pending;
            t.version_sent = Some(wire.version_info.clone());
            t.nonce_sent = Some(wire.nonce.clone());
            t.pushes += 1;
            t.bytes_sent += bytes as u64;
            t.resources_in_last_push = count;
            t.last_push_unix_ms = Some(now_unix_ms());
        });
    }

    /// `type_url` was evaluated against snapshot `version`: with nothing outstanding, the
    /// proxy is in sync with it.
    fn reconciled(&mut self, type_url: &str, version: &str) {
        let Some(state) = self.types.get_mut(type_url) else {
            return;
        };
        state.view_version = Some(version.to_string());
        if state.last.is_some() && !state.pending && !state.nacked {
            let v = version.to_string();
            self.ctx
                .handle
                .update(type_url, |t| t.synced_version = Some(v));
        }
    }

    fn record_subscription(&self, type_url: &str) {
        let Some(state) = self.types.get(type_url) else {
            return;
        };
        let missing: Vec<String> = match &self.snapshot {
            Some(s) => state
                .sub
                .names()
                .iter()
                .filter(|n| s.get(type_url, n).is_none())
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        self.ctx
            .handle
            .set_subscription(type_url, &state.sub, missing);
    }
}

impl Protocol for SotwProtocol {
    type Request = DiscoveryRequest;
    type Response = SotwWire;

    fn ctx(&mut self) -> &mut StreamCtx {
        &mut self.ctx
    }

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn set_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>) {
        self.snapshot = snapshot;
    }

    fn on_request(&mut self, req: DiscoveryRequest) -> Result<Vec<SotwWire>, Status> {
        let type_url = self.ctx.resolve_type(&req.type_url)?;
        let legacy = self.ctx.options.legacy_wildcard.applies_to(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();
        let kind = match &state.last {
            None => RequestKind::Initial,
            Some(last) if req.response_nonce != last.nonce => RequestKind::Stale,
            Some(_) if req.error_detail.is_some() => RequestKind::Nack,
            Some(_) => RequestKind::Ack,
        };
        let added: BTreeSet<String> = state.sub.apply_sotw(&req.resource_names, legacy);
        let sub = &state.sub;
        state.sent.retain(|name, _| sub.covers(name));
        let force = state.force;
        self.ctx.handle.metrics().request(&type_url, kind);
        match kind {
            RequestKind::Ack => {
                state.pending = false;
                state.nacked = false;
                let synced = state.view_version.clone();
                let version = req.version_info.clone();
                let nonce = req.response_nonce.clone();
                self.ctx.handle.update(&type_url, |t| {
                    t.state = SyncState::Acked;
                    t.version_acked = Some(version);
                    t.nonce_acked = Some(nonce);
                    if synced.is_some() {
                        t.synced_version = synced;
                    }
                });
            }
            RequestKind::Nack => {
                state.pending = false;
                state.nacked = true;
                let (version, names) = state
                    .last
                    .as_ref()
                    .map(|l| (l.version.clone(), l.names.clone()))
                    .unwrap_or_default();
                let message = req
                    .error_detail
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                tracing::warn!(
                    node = %self.ctx.node_id,
                    type_url = %type_url,
                    version = %version,
                    resources = ?names,
                    message = %message,
                    "proxy rejected xds response (NACK)"
                );
                let nack = NackStatus {
                    version,
                    nonce: req.response_nonce.clone(),
                    client_version: req.version_info.clone(),
                    message,
                    resource_names: names,
                    at_unix_ms: now_unix_ms(),
                };
                self.ctx.handle.update(&type_url, |t| {
                    t.state = SyncState::Nacked;
                    t.nacks += 1;
                    t.last_nack = Some(nack);
                });
            }
            RequestKind::Stale => {
                tracing::debug!(
                    node = %self.ctx.node_id,
                    type_url = %type_url,
                    nonce = %req.response_nonce,
                    "ignoring sotw request with a stale nonce (its names are remembered)"
                );
            }
            RequestKind::Initial => {
                self.ctx.handle.update(&type_url, |_| {});
            }
        }
        self.record_subscription(&type_url);
        if kind == RequestKind::Stale {
            return Ok(Vec::new());
        }
        let Some(snapshot) = self.snapshot.clone() else {
            return Ok(Vec::new());
        };
        let full = kind == RequestKind::Initial || (kind == RequestKind::Ack && force);
        if kind == RequestKind::Nack && added.is_empty() {
            self.reconciled(&type_url, snapshot.version(&type_url));
            return Ok(Vec::new());
        }
        let state = &self.types[&type_url];
        let out = match self.plan(&type_url, state, &snapshot, full) {
            Some(plan) => vec![self.commit(&type_url, plan)],
            None => Vec::new(),
        };
        self.reconciled(&type_url, snapshot.version(&type_url));
        Ok(out)
    }

    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<SotwWire> {
        let previous = self.snapshot.replace(snapshot.clone());
        let mut order: Vec<String> = self.types.keys().cloned().collect();
        order.sort_by(|a, b| push_rank(a).cmp(&push_rank(b)));
        for type_url in &order {
            // `missing` can only change when names come or go.
            let names_changed = previous.as_ref().is_none_or(|p| {
                TypeResources::diff(
                    p.type_resources(type_url),
                    snapshot.type_resources(type_url),
                )
                .names_changed
            });
            if names_changed && !self.types[type_url].sub.names().is_empty() {
                self.record_subscription(type_url);
            }
        }
        let mut out = Vec::new();

        // Make-before-break: keep clusters that are going away until routes and listeners
        // that may still point at them have been replaced.
        let mut cds_final = false;
        if self.ctx.ads {
            if let Some(cds) = self
                .types
                .get(resource::CLUSTER)
                .filter(|s| s.last.is_some())
            {
                let view = self.view(resource::CLUSTER, cds, &snapshot);
                let leaving: Vec<(String, Arc<EncodedResource>)> = cds
                    .sent
                    .iter()
                    .filter(|(n, _)| !view.contains_key(*n))
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect();
                let routing_changes = [resource::LISTENER, resource::ROUTE].iter().any(|t| {
                    self.types
                        .get(*t)
                        .is_some_and(|s| self.plan(t, s, &snapshot, s.last.is_none()).is_some())
                });
                if !leaving.is_empty() && routing_changes {
                    let mut union = view;
                    union.extend(leaving);
                    let same = union.len() == cds.sent.len()
                        && union.iter().all(|(n, r)| {
                            cds.sent.get(n).map(|s| s.version()) == Some(r.version())
                        });
                    // Nothing new to add first: the removal is simply sent last.
                    if !same {
                        let version = format!(
                            "{}-keep",
                            set_version(union.iter().map(|(n, r)| (n.as_str(), r.version())))
                        );
                        let plan = Plan {
                            resources: union.values().cloned().collect(),
                            sent: union,
                            version,
                        };
                        out.push(self.commit(resource::CLUSTER, plan));
                    }
                    cds_final = true;
                }
            }
        }

        for type_url in &order {
            if cds_final && type_url == resource::CLUSTER {
                continue;
            }
            let state = &self.types[type_url];
            if let Some(plan) = self.plan(type_url, state, &snapshot, state.last.is_none()) {
                out.push(self.commit(type_url, plan));
            }
            self.reconciled(type_url, snapshot.version(type_url));
        }
        if cds_final {
            let state = &self.types[resource::CLUSTER];
            if let Some(plan) = self.plan(resource::CLUSTER, state, &snapshot, false) {
                out.push(self.commit(resource::CLUSTER, plan));
            }
            self.reconciled(resource::CLUSTER, snapshot.version(resource::CLUSTER));
        }
        out
    }
}
