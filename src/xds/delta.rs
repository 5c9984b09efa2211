//! Incremental (delta) protocol state machine (ADS and per-type streams).
//!
//! Per type URL the stream remembers the subscription and what the client has. A response
//! carries only resources whose version the client lacks, and `removed_resources` for names
//! it has (or asked for) that the snapshot does not contain. Subscription changes are applied
//! even when the nonce is stale (the spec's "must honor").
//!
//! What the client has ([`Known`]) costs a stream almost nothing while it is in sync: after
//! every response (or a check that found nothing to send) the stream holds exactly what its
//! subscription covers of the snapshot's resources of that type, so it keeps only that
//! snapshot's shared [`TypeResources`]. On the next snapshot the response is the snapshot
//! diff ([`TypeResources::diff`], computed once for all streams) restricted to the
//! subscription: work proportional to what changed, not to the config. Only a subscription
//! change or a reconnect's `initial_resource_versions` makes a stream spell out its
//! knowledge name by name until its next response.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prost::Message;
use tonic::Status;

use super::cache::{Snapshot, TypeResources};
use super::registry::{now_unix_ms, NackStatus, RequestKind, SyncState};
use super::resource::{
    push_rank, removal_rank, short_type, EncodedResource, CLUSTER, ENDPOINT, VIRTUAL_HOST,
};
use super::stream::{Protocol, StreamCtx};
use super::subscription::{Subscription, WILDCARD};
use super::wire::DeltaWire;

/// How many unacknowledged responses per type are remembered for ACK/NACK attribution.
const IN_FLIGHT: usize = 32;

struct InFlight {
    nonce: String,
    version: String,
    names: Vec<String>,
}

/// What the client has of one type, as far as the server knows.
enum Known {
    /// Name by name: name → version the client has, and the names it was told do not exist.
    Names {
        known: BTreeMap<String, String>,
        told_absent: BTreeSet<String>,
    },
    /// Exactly the resources of this `TypeResources` that the subscription covers; every
    /// explicitly subscribed name it lacks was reported removed.
    Synced(Arc<TypeResources>),
}

impl Default for Known {
    fn default() -> Self {
        Known::Names {
            known: BTreeMap::new(),
            told_absent: BTreeSet::new(),
        }
    }
}

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    known: Known,
    /// Names to send (or report removed) at the next response even if unchanged.
    force: BTreeSet<String>,
    /// A request for this type has been seen.
    requested: bool,
    /// A response for this type has been sent.
    responded: bool,
    last_nonce: Option<String>,
    in_flight: VecDeque<InFlight>,
    /// Snapshot version of this type last reconciled against (pushed or not).
    view_version: Option<String>,
    /// The last answered response was rejected.
    nacked: bool,
}

#[derive(Default)]
struct Plan {
    upserts: Vec<Arc<EncodedResource>>,
    removed: Vec<String>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed.is_empty()
    }
}

pub(crate) struct DeltaProtocol {
    ctx: StreamCtx,
    /// Boxed: a map node has room for 11 entries and a stream uses four or five types.
    types: BTreeMap<String, Box<TypeState>>,
    snapshot: Option<Arc<Snapshot>>,
}

impl TypeState {
    /// Spell out a [`Known::Synced`] name by name (before the subscription changes).
    fn materialize(&mut self) {
        let Known::Synced(base) = &self.known else {
            return;
        };
        let sub = &self.sub;
        let known: BTreeMap<String, String> = if sub.is_wildcard() {
            base.resources()
                .iter()
                .map(|(n, r)| (n.clone(), r.version().to_string()))
                .collect()
        } else {
            sub.names()
                .iter()
                .filter_map(|n| base.get(n).map(|r| (n.clone(), r.version().to_string())))
                .collect()
        };
        let told_absent = sub
            .names()
            .iter()
            .filter(|n| base.get(n).is_none())
            .cloned()
            .collect();
        self.known = Known::Names { known, told_absent };
    }
}

fn plan(type_url: &str, state: &TypeState, snapshot: &Snapshot) -> Plan {
    let (known, told_absent) = match &state.known {
        Known::Synced(base) if state.force.is_empty() => {
            // In sync with `base`: send what changed since, as far as it is subscribed.
            let diff = TypeResources::diff(base, snapshot.type_resources(type_url));
            let sub = &state.sub;
            return Plan {
                upserts: diff
                    .changed
                    .iter()
                    .filter(|r| sub.covers(r.name()))
                    .cloned()
                    .collect(),
                removed: diff
                    .removed
                    .iter()
                    .filter(|n| sub.covers(n))
                    .cloned()
                    .collect(),
            };
        }
        Known::Synced(base) => {
            // With names to force (a resubscription), plan name by name.
            let mut spelled = TypeState {
                sub: state.sub.clone(),
                known: Known::Synced(base.clone()),
                force: state.force.clone(),
                ..Default::default()
            };
            spelled.materialize();
            return plan(type_url, &spelled, snapshot);
        }
        Known::Names { known, told_absent } => (known, told_absent),
    };
    let resources = snapshot.resources(type_url);
    let mut plan = Plan::default();
    let mut wanted: BTreeMap<&str, &Arc<EncodedResource>> = BTreeMap::new();
    if state.sub.is_wildcard() {
        wanted.extend(resources.iter().map(|(n, r)| (n.as_str(), r)));
    }
    for name in state.sub.names().iter().chain(state.force.iter()) {
        if let Some(r) = resources.get(name) {
            wanted.insert(name.as_str(), r);
        }
    }
    for (name, r) in wanted {
        let stale = known.get(name).map(String::as_str) != Some(r.version());
        if stale || state.force.contains(name) {
            plan.upserts.push(r.clone());
        }
    }
    let mut removed = BTreeSet::new();
    for name in known.keys() {
        if !resources.contains_key(name) {
            removed.insert(name.clone());
        }
    }
    for name in state.sub.names() {
        if !resources.contains_key(name) && !told_absent.contains(name) {
            removed.insert(name.clone());
        }
    }
    for name in &state.force {
        if !resources.contains_key(name) {
            removed.insert(name.clone());
        }
    }
    plan.removed = removed.into_iter().collect();
    plan
}

impl DeltaProtocol {
    pub fn new(ctx: StreamCtx) -> Self {
        DeltaProtocol {
            ctx,
            types: BTreeMap::new(),
            snapshot: None,
        }
    }

    /// Send `plan`, computed against `base` (the snapshot's resources of `type_url`). With
    /// `settled`, the plan was the whole plan: the client then holds what its subscription
    /// covers of `base`. Without (the first half of an ADS push whose removals go last), the
    /// caller commits the rest next.
    fn commit(
        &mut self,
        type_url: &str,
        plan: Plan,
        base: &Arc<TypeResources>,
        settled: bool,
    ) -> DeltaWire {
        let nonce = self.ctx.next_nonce();
        let version = base.version();
        let Some(state) = self.types.get_mut(type_url) else {
            // Invariant: plans are only made for types that have a state.
            unreachable!("commit for a type without state");
        };
        if settled {
            state.known = Known::Synced(base.clone());
            state.force.clear();
        } else if let Known::Names { known, told_absent } = &mut state.known {
            for r in &plan.upserts {
                known.insert(r.name().to_string(), r.version().to_string());
                told_absent.remove(r.name());
                state.force.remove(r.name());
            }
            for name in &plan.removed {
                known.remove(name);
                told_absent.insert(name.clone());
                state.force.remove(name);
            }
        }
        state.responded = true;
        state.last_nonce = Some(nonce.clone());
        let names: Vec<String> = plan
            .upserts
            .iter()
            .map(|r| r.name().to_string())
            .chain(plan.removed.iter().map(|n| format!("-{n}")))
            .collect();
        state.in_flight.push_back(InFlight {
            nonce: nonce.clone(),
            version: version.to_string(),
            names,
        });
        while state.in_flight.len() > IN_FLIGHT {
            state.in_flight.pop_front();
        }
        let wire = DeltaWire {
            system_version_info: version.to_string(),
            resources: plan.upserts,
            type_url: type_url.to_string(),
            removed_resources: plan.removed,
            nonce,
            control_plane: self.ctx.control_plane.clone(),
        };
        self.record_push(&wire);
        wire
    }

    fn record_push(&self, wire: &DeltaWire) {
        let bytes = wire.encoded_len();
        let count = wire.resources.len() + wire.removed_resources.len();
        let metrics = self.ctx.handle.metrics();
        metrics.push(&wire.type_url, wire.resources.len(), bytes);
        tracing::debug!(
            node = %self.ctx.node_id,
            type_url = short_type(&wire.type_url),
            version = %wire.system_version_info,
            nonce = %wire.nonce,
            resources = wire.resources.len(),
            removed = wire.removed_resources.len(),
            bytes,
            "xds push (delta)"
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
            t.version_sent = Some(wire.system_version_info.clone());
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
        if state.responded && state.in_flight.is_empty() && !state.nacked {
            let v = version.to_string();
            self.ctx
                .handle
                .update(type_url, |t| t.synced_version = Some(v));
        }
    }

    /// Nothing needed sending for `type_url` against `base`: the client holds what its
    /// subscription covers of it.
    fn settle(&mut self, type_url: &str, base: &Arc<TypeResources>) {
        if let Some(state) = self.types.get_mut(type_url) {
            state.known = Known::Synced(base.clone());
            state.force.clear();
        }
    }

    /// Envoy re-creates a cluster whose config changed and warms it until an answer names its
    /// `ClusterLoadAssignment`; over delta it does not ask again (the name stays subscribed),
    /// and the EDS clusters we make have no initial fetch timeout, so a cluster change whose
    /// endpoints did not change would warm for ever (seen with Envoy 1.40: a DestinationRule's
    /// connect timeout never applied). Resend the load assignment of every EDS cluster in
    /// `clusters` with this push's endpoints, changed or not.
    fn force_endpoints_of(&mut self, clusters: &[Arc<EncodedResource>]) {
        let Some(state) = self.types.get_mut(ENDPOINT) else {
            return;
        };
        if !state.requested {
            return;
        }
        for name in clusters.iter().filter_map(|c| c.eds_service_name()) {
            if state.sub.covers(name) {
                state.force.insert(name.to_string());
            }
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

    /// Classify the ACK/NACK part of a request and record it.
    fn acknowledge(&mut self, type_url: &str, req: &DeltaDiscoveryRequest) -> RequestKind {
        let Some(state) = self.types.get_mut(type_url) else {
            return RequestKind::Initial;
        };
        if req.response_nonce.is_empty() {
            return RequestKind::Initial;
        }
        let Some(pos) = state
            .in_flight
            .iter()
            .position(|f| f.nonce == req.response_nonce)
        else {
            tracing::debug!(
                node = %self.ctx.node_id,
                type_url = %type_url,
                nonce = %req.response_nonce,
                "delta request with an unknown or stale nonce (subscription changes still applied)"
            );
            return RequestKind::Stale;
        };
        // Responses up to this one are settled.
        let answered = state.in_flight.drain(..=pos).next_back();
        let Some(answered) = answered else {
            return RequestKind::Stale;
        };
        let latest = state.last_nonce.as_deref() == Some(req.response_nonce.as_str());
        match &req.error_detail {
            None => {
                let version = answered.version;
                let nonce = answered.nonce;
                let synced = if state.in_flight.is_empty() {
                    state.nacked = false;
                    state.view_version.clone()
                } else {
                    None
                };
                self.ctx.handle.update(type_url, |t| {
                    if latest {
                        t.state = SyncState::Acked;
                    }
                    t.version_acked = Some(version);
                    t.nonce_acked = Some(nonce);
                    if synced.is_some() {
                        t.synced_version = synced;
                    }
                });
                RequestKind::Ack
            }
            Some(error) => {
                state.nacked = true;
                tracing::warn!(
                    node = %self.ctx.node_id,
                    type_url = %type_url,
                    version = %answered.version,
                    resources = ?answered.names,
                    message = %error.message,
                    "proxy rejected xds response (NACK)"
                );
                let nack = NackStatus {
                    version: answered.version,
                    nonce: answered.nonce,
                    client_version: String::new(),
                    message: error.message.clone(),
                    resource_names: answered.names,
                    at_unix_ms: now_unix_ms(),
                };
                self.ctx.handle.update(type_url, |t| {
                    if latest {
                        t.state = SyncState::Nacked;
                    }
                    t.nacks += 1;
                    t.last_nack = Some(nack);
                });
                RequestKind::Nack
            }
        }
    }
}

impl Protocol for DeltaProtocol {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaWire;

    fn ctx(&mut self) -> &mut StreamCtx {
        &mut self.ctx
    }

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn set_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>) {
        self.snapshot = snapshot;
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<Vec<DeltaWire>, Status> {
        let type_url = self.ctx.resolve_type(&req.type_url)?;
        // Envoy's VHDS subscription starts with an empty subscribe meaning "every virtual host
        // of my route configurations" (it files them by the `<route config>/` prefix).
        let legacy = self.ctx.options.legacy_wildcard.applies_to(&type_url)
            || (type_url == VIRTUAL_HOST
                && self.ctx.options.legacy_wildcard != super::subscription::LegacyWildcard::Never);
        self.types.entry(type_url.clone()).or_default();
        let kind = self.acknowledge(&type_url, &req);
        self.ctx.handle.metrics().request(&type_url, kind);

        let node_id = self.ctx.node_id.clone();
        let Some(state) = self.types.get_mut(&type_url) else {
            // Invariant: inserted above.
            unreachable!("type state inserted above");
        };
        let first = !state.requested;
        state.requested = true;
        let changes_subscription = first
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty()
            || !req.initial_resource_versions.is_empty();
        if changes_subscription {
            state.materialize();
        }

        // Names explicitly subscribed before this request, for the wildcard+name unsubscribe
        // rule (spec: the server must then send the resource or its removal).
        let was_explicit: Vec<String> = req
            .resource_names_unsubscribe
            .iter()
            .filter(|n| state.sub.is_explicit(n))
            .cloned()
            .collect();
        state.sub.apply_delta(
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
            first,
            legacy,
        );
        if first {
            if let Known::Names { known, .. } = &mut state.known {
                for (name, version) in &req.initial_resource_versions {
                    if state.sub.covers(name) {
                        known.insert(name.clone(), version.clone());
                    }
                }
            }
        } else {
            if !req.initial_resource_versions.is_empty() {
                tracing::debug!(
                    node = %node_id,
                    type_url = %type_url,
                    "ignoring initial_resource_versions on a request that is not the first for its type"
                );
            }
            // A (re)subscription must be answered with the resource even if the client
            // already has this version (discovery.proto, DeltaSubscriptionStateTest.RemoveThenAdd).
            for name in &req.resource_names_subscribe {
                if name != WILDCARD {
                    state.force.insert(name.clone());
                }
            }
        }
        for name in was_explicit {
            if state.sub.is_wildcard() {
                state.force.insert(name);
            }
        }
        let sub = &state.sub;
        if let Known::Names { known, told_absent } = &mut state.known {
            known.retain(|name, _| sub.covers(name));
            told_absent.retain(|name| sub.covers(name));
        }
        state.force.retain(|name| sub.covers(name));

        if changes_subscription {
            self.record_subscription(&type_url);
        }
        let Some(snapshot) = self.snapshot.clone() else {
            return Ok(Vec::new());
        };
        let state = &self.types[&type_url];
        let plan = plan(&type_url, state, &snapshot);
        let base = snapshot.type_resources(&type_url).clone();
        let out = if plan.is_empty() && state.responded {
            self.settle(&type_url, &base);
            Vec::new()
        } else {
            vec![self.commit(&type_url, plan, &base, true)]
        };
        self.reconciled(&type_url, base.version());
        Ok(out)
    }

    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<DeltaWire> {
        let previous = self.snapshot.replace(snapshot.clone());
        let mut order: Vec<String> = self
            .types
            .iter()
            .filter(|(_, s)| s.requested)
            .map(|(t, _)| t.clone())
            .collect();
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
            let explicit = !self.types[type_url].sub.names().is_empty();
            if names_changed && explicit {
                self.record_subscription(type_url);
            }
        }
        let mut out = Vec::new();
        let mut removals: Vec<(String, Vec<String>)> = Vec::new();
        for type_url in &order {
            let state = &self.types[type_url];
            let mut plan = plan(type_url, state, &snapshot);
            let first = !state.responded;
            if self.ctx.ads && !plan.removed.is_empty() {
                // On ADS, removals go after every type's additions (make-before-break), in
                // listener, route, cluster, endpoint order.
                removals.push((type_url.clone(), std::mem::take(&mut plan.removed)));
            }
            let deferred = removals.iter().any(|(t, _)| t == type_url);
            let base = snapshot.type_resources(type_url).clone();
            if self.ctx.ads && type_url == CLUSTER && !first {
                self.force_endpoints_of(&plan.upserts);
            }
            if !plan.is_empty() || first {
                out.push(self.commit(type_url, plan, &base, !deferred));
            } else if !deferred {
                self.settle(type_url, &base);
            }
            if !deferred {
                self.reconciled(type_url, base.version());
            }
        }
        removals.sort_by(|a, b| removal_rank(&a.0).cmp(&removal_rank(&b.0)));
        for (type_url, removed) in removals {
            let base = snapshot.type_resources(&type_url).clone();
            let plan = Plan {
                upserts: Vec::new(),
                removed,
            };
            out.push(self.commit(&type_url, plan, &base, true));
            self.reconciled(&type_url, base.version());
        }
        out
    }
}
