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
//!
//! Sharing: a type whose snapshot resources (the shared [`TypeResources`], or one of the same
//! version) and subscription are those it was last reconciled against is skipped without
//! looking at a resource. A type that changed gets its response from [`shared_plan`]: a pure
//! function of (what the client has, subscription, new resources), memoized on the new
//! `TypeResources` and keyed by the identity of the shared `sent` map and the interned name
//! set. Streams that got the same responses hold the same `sent` map, so a thousand streams
//! with one subscription build one response per change and share its bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, Weak};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message;
use tonic::Status;

use super::cache::{Snapshot, TypeResources, SOTW_PLAN_MEMO};
use super::registry::{now_unix_ms, NackStatus, RequestKind, SyncState};
use super::resource::{
    self, is_full_state, placeholder, push_rank, set_version, short_type, EncodedResource,
};
use super::stream::{Protocol, StreamCtx};
use super::subscription::{Names, Subscription};
use super::wire::SotwWire;

/// What a client has of one type as far as the server knows: name → resource last sent,
/// NACKed ones and placeholders included. Shared between streams that got the same responses.
pub(crate) type SentMap = BTreeMap<String, Arc<EncodedResource>>;

/// The one empty [`SentMap`] every new type state starts from (so first responses are shared
/// too).
fn empty_sent() -> Arc<SentMap> {
    static EMPTY: OnceLock<Arc<SentMap>> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::new(BTreeMap::new())).clone()
}

struct Last {
    nonce: String,
    version: String,
    names: Arc<Vec<String>>,
}

struct TypeState {
    sub: Subscription,
    /// What the client has, as far as the server knows.
    sent: Arc<SentMap>,
    last: Option<Last>,
    /// Answer the next ACK even if nothing changed (a cluster or listener is warming).
    force: bool,
    /// Snapshot version of this type last reconciled against (pushed or not).
    view_version: Option<String>,
    /// The last response is not acknowledged yet.
    pending: bool,
    /// The last response was rejected.
    nacked: bool,
    /// What this type was last reconciled against: the snapshot's resources and the
    /// subscription (names, wildcard) then. Equal again → nothing to send.
    base: Option<(Arc<TypeResources>, Names, bool)>,
}

impl Default for TypeState {
    fn default() -> Self {
        TypeState {
            sub: Subscription::default(),
            sent: empty_sent(),
            last: None,
            force: false,
            view_version: None,
            pending: false,
            nacked: false,
            base: None,
        }
    }
}

impl TypeState {
    /// Reconciled against `resources` (or the same content) with the current subscription:
    /// the view, and so the answer, cannot have changed.
    fn in_sync_with(&self, resources: &Arc<TypeResources>) -> bool {
        self.last.is_some()
            && self.base.as_ref().is_some_and(|(base, names, wildcard)| {
                (Arc::ptr_eq(base, resources) || base.version() == resources.version())
                    && Arc::ptr_eq(names, self.sub.shared_names())
                    && *wildcard == self.sub.is_wildcard()
            })
    }
}

/// One SotW response for a type and what the client has after it.
pub(crate) struct Plan {
    resources: Vec<Arc<EncodedResource>>,
    names: Arc<Vec<String>>,
    /// What the client has after this response; `None`: what it had before (a plan never
    /// holds its own key, the `sent` map it was computed from, alive).
    sent: Option<Arc<SentMap>>,
    version: String,
    /// The response adds or changes a resource the client had (for CDS/LDS on ADS: Envoy
    /// warms it and waits for EDS/RDS).
    warming: bool,
}

impl Plan {
    /// What the client has after this response, given what it had before.
    fn sent_after(&self, before: &Arc<SentMap>) -> Arc<SentMap> {
        self.sent.clone().unwrap_or_else(|| before.clone())
    }
}

/// What a memoized plan was computed from: pointer identities (held weakly: a live `Weak`
/// keeps the address from being reused) and the flags that change the answer.
pub(crate) struct PlanKey {
    type_url: String,
    sent: Weak<SentMap>,
    names: Weak<std::collections::BTreeSet<String>>,
    wildcard: bool,
    placeholders: bool,
    full: bool,
}

/// A memo entry on a [`TypeResources`]: `None` means "nothing to send".
pub(crate) type SotwPlanEntry = (PlanKey, Option<Arc<Plan>>);

/// A memoized cut of a `sent` map to a subscription: (from, names, wildcard) → result.
pub(crate) type SotwFilterEntry = (
    Weak<SentMap>,
    Weak<std::collections::BTreeSet<String>>,
    bool,
    Arc<SentMap>,
);

/// `sent` without the names `sub` no longer covers; streams making the same cut with
/// `resources` current share the result (so they keep sharing plans afterwards).
fn shared_filter(
    sent: &Arc<SentMap>,
    sub: &Subscription,
    resources: Option<&Arc<TypeResources>>,
) -> Arc<SentMap> {
    let compute = || -> Arc<SentMap> {
        Arc::new(
            sent.iter()
                .filter(|(name, _)| sub.covers(name))
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect(),
        )
    };
    let Some(resources) = resources.filter(|r| r.keeps_memos()) else {
        return compute();
    };
    let names = sub.shared_names();
    let wildcard = sub.is_wildcard();
    let lookup = |memo: &[SotwFilterEntry]| {
        memo.iter()
            .find(|(s, n, w, _)| {
                std::ptr::eq(s.as_ptr(), Arc::as_ptr(sent))
                    && std::ptr::eq(n.as_ptr(), Arc::as_ptr(names))
                    && *w == wildcard
            })
            .map(|(_, _, _, out)| out.clone())
    };
    let lock = || {
        resources
            .sotw_filters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    };
    if let Some(out) = lookup(&lock()) {
        return out;
    }
    let out = compute();
    let mut memo = lock();
    if let Some(theirs) = lookup(&memo) {
        return theirs;
    }
    memo.retain(|(s, n, _, _)| s.strong_count() > 0 && n.strong_count() > 0);
    if memo.len() >= SOTW_PLAN_MEMO {
        memo.remove(0);
    }
    memo.push((
        Arc::downgrade(sent),
        Arc::downgrade(names),
        wildcard,
        out.clone(),
    ));
    out
}

/// What the client should have of `type_url` now.
fn view(
    type_url: &str,
    sent: &SentMap,
    sub: &Subscription,
    resources: &BTreeMap<String, Arc<EncodedResource>>,
    placeholders: bool,
) -> SentMap {
    let mut view = BTreeMap::new();
    if sub.is_wildcard() {
        view.extend(resources.iter().map(|(n, r)| (n.clone(), r.clone())));
    }
    for name in sub.names() {
        if let Some(r) = resources.get(name) {
            view.insert(name.clone(), r.clone());
            continue;
        }
        // A name the client already has real content for keeps it (SotW cannot delete
        // endpoints or routes; during make-before-break the old cluster still needs them).
        let has_real = sent.get(name).is_some_and(|r| !r.is_placeholder());
        if placeholders && !has_real {
            if let Some(p) = placeholder(type_url, name) {
                view.insert(name.clone(), p);
            }
        }
    }
    view
}

/// The response `type_url` needs, if any, for a client that has `sent` and subscribes to
/// `sub`. `full`: answer with the whole view even if nothing changed.
fn compute_plan(
    type_url: &str,
    sent: &Arc<SentMap>,
    sub: &Subscription,
    resources: &TypeResources,
    placeholders: bool,
    full: bool,
) -> Option<Plan> {
    let view = view(type_url, sent, sub, resources.resources(), placeholders);
    let changed: Vec<Arc<EncodedResource>> = view
        .values()
        .filter(|r| sent.get(r.name()).map(|s| s.version()) != Some(r.version()))
        .cloned()
        .collect();
    let full_state = is_full_state(type_url);
    let removed = full_state && sent.keys().any(|n| !view.contains_key(n));
    if !full && changed.is_empty() && !removed {
        return None;
    }
    let version = resources.version().to_string();
    let warming = !changed.is_empty();
    let (resources, sent) = if full_state {
        (view.values().cloned().collect(), Some(Arc::new(view)))
    } else {
        let resources: Vec<Arc<EncodedResource>> = if full {
            view.values().cloned().collect()
        } else {
            changed
        };
        let sent = if resources.is_empty() {
            None
        } else {
            let mut next = (**sent).clone();
            for r in &resources {
                next.insert(r.name().to_string(), r.clone());
            }
            Some(Arc::new(next))
        };
        (resources, sent)
    };
    Some(Plan {
        names: Arc::new(resources.iter().map(|r| r.name().to_string()).collect()),
        resources,
        sent,
        version,
        warming,
    })
}

/// [`compute_plan`], computed once per (what the client has, subscription, flags) and
/// shared through `resources`' memo by every stream in that position. The memo is only
/// consulted and filled under its lock; the plan is computed outside it (two streams that
/// miss at once both compute, and the second uses the first one's entry). The process-wide
/// empty `TypeResources` (a type a snapshot lacks) keeps no memo: it never goes away.
pub(crate) fn shared_plan(
    type_url: &str,
    sent: &Arc<SentMap>,
    sub: &Subscription,
    resources: &Arc<TypeResources>,
    placeholders: bool,
    full: bool,
) -> Option<Arc<Plan>> {
    if !resources.keeps_memos() {
        return compute_plan(type_url, sent, sub, resources, placeholders, full).map(Arc::new);
    }
    let names = sub.shared_names();
    let wildcard = sub.is_wildcard();
    let lookup = |memo: &[SotwPlanEntry]| {
        memo.iter()
            .find(|(k, _)| {
                std::ptr::eq(k.sent.as_ptr(), Arc::as_ptr(sent))
                    && std::ptr::eq(k.names.as_ptr(), Arc::as_ptr(names))
                    && k.wildcard == wildcard
                    && k.placeholders == placeholders
                    && k.full == full
                    && k.type_url == type_url
            })
            .map(|(_, plan)| plan.clone())
    };
    let lock = || {
        resources
            .sotw_plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    };
    if let Some(plan) = lookup(&lock()) {
        return plan;
    }
    let plan = compute_plan(type_url, sent, sub, resources, placeholders, full).map(Arc::new);
    let mut memo = lock();
    if let Some(theirs) = lookup(&memo) {
        // Another stream in the same position got here first: share its plan.
        return theirs;
    }
    memo.retain(|(k, _)| k.sent.strong_count() > 0 && k.names.strong_count() > 0);
    if memo.len() >= SOTW_PLAN_MEMO {
        memo.remove(0);
    }
    memo.push((
        PlanKey {
            type_url: type_url.to_string(),
            sent: Arc::downgrade(sent),
            names: Arc::downgrade(names),
            wildcard,
            placeholders,
            full,
        },
        plan.clone(),
    ));
    plan
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

    /// The response `type_url` needs, if any (shared with streams in the same position).
    /// `full`: answer with the whole view even if nothing changed.
    fn plan(
        &self,
        type_url: &str,
        state: &TypeState,
        snapshot: &Snapshot,
        full: bool,
    ) -> Option<Arc<Plan>> {
        shared_plan(
            type_url,
            &state.sent,
            &state.sub,
            snapshot.type_resources(type_url),
            self.ctx.options.placeholders_for_missing,
            full,
        )
    }

    fn commit(&mut self, type_url: &str, plan: Arc<Plan>) -> SotwWire {
        let nonce = self.ctx.next_nonce();
        let Some(state) = self.types.get_mut(type_url) else {
            // Invariant: plans are only made for types that have a state.
            unreachable!("commit for a type without state");
        };
        // Did this response add or change a cluster/listener (which Envoy then warms)?
        let warming = plan.warming;
        state.sent = plan.sent_after(&state.sent);
        state.pending = true;
        state.last = Some(Last {
            nonce: nonce.clone(),
            version: plan.version.clone(),
            names: plan.names.clone(),
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
            version_info: plan.version.clone(),
            resources: plan.resources.clone(),
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
    fn reconciled(&mut self, type_url: &str, resources: &Arc<TypeResources>) {
        let Some(state) = self.types.get_mut(type_url) else {
            return;
        };
        let version = resources.version();
        state.view_version = Some(version.to_string());
        state.base = Some((
            resources.clone(),
            state.sub.shared_names().clone(),
            state.sub.is_wildcard(),
        ));
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
        let before = (state.sub.shared_names().clone(), state.sub.is_wildcard());
        let added: BTreeSet<String> = state.sub.apply_sotw(&req.resource_names, legacy);
        let sub = &state.sub;
        let sub_changed =
            !Arc::ptr_eq(&before.0, sub.shared_names()) || before.1 != sub.is_wildcard();
        if sub_changed && state.sent.keys().any(|name| !sub.covers(name)) {
            let resources = self.snapshot.as_ref().map(|s| s.type_resources(&type_url));
            state.sent = shared_filter(&state.sent, sub, resources);
        }
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
                    .map(|l| (l.version.clone(), (*l.names).clone()))
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
            self.reconciled(&type_url, snapshot.type_resources(&type_url));
            return Ok(Vec::new());
        }
        let state = &self.types[&type_url];
        let out = match self.plan(&type_url, state, &snapshot, full) {
            Some(plan) => vec![self.commit(&type_url, plan)],
            None => Vec::new(),
        };
        self.reconciled(&type_url, snapshot.type_resources(&type_url));
        Ok(out)
    }

    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<SotwWire> {
        let previous = self.snapshot.replace(snapshot.clone());
        let mut order: Vec<String> = self.types.keys().cloned().collect();
        order.sort_by(|a, b| push_rank(a).cmp(&push_rank(b)));
        // Types reconciled against these very resources with this subscription: their
        // answer cannot have changed, skip them without looking at a resource.
        let mut skip: BTreeSet<String> = BTreeSet::new();
        for type_url in &order {
            let resources = snapshot.type_resources(type_url);
            let Some(state) = self.types.get_mut(type_url) else {
                continue;
            };
            if state.in_sync_with(resources) {
                // Same content in a new allocation: hold the new one (the old snapshot can go).
                if let Some((base, _, _)) = state.base.as_mut() {
                    if !Arc::ptr_eq(base, resources) {
                        *base = resources.clone();
                    }
                }
                skip.insert(type_url.clone());
            }
            // `missing` can only change when names come or go.
            let names_changed = previous.as_ref().is_none_or(|p| {
                TypeResources::diff(p.type_resources(type_url), resources).names_changed
            });
            if names_changed && !self.types[type_url].sub.names().is_empty() {
                self.record_subscription(type_url);
            }
        }
        let mut out = Vec::new();

        // Make-before-break: keep clusters that are going away until routes and listeners
        // that may still point at them have been replaced.
        let mut cds_final = false;
        if self.ctx.ads && !skip.contains(resource::CLUSTER) {
            if let Some(cds) = self
                .types
                .get(resource::CLUSTER)
                .filter(|s| s.last.is_some())
            {
                // CDS is full state: the full plan's `sent` is the view.
                let view = self
                    .plan(resource::CLUSTER, cds, &snapshot, true)
                    .and_then(|p| p.sent.clone())
                    .unwrap_or_else(empty_sent);
                let leaving: Vec<(String, Arc<EncodedResource>)> = cds
                    .sent
                    .iter()
                    .filter(|(n, _)| !view.contains_key(*n))
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect();
                let routing_changes = !leaving.is_empty()
                    && [resource::LISTENER, resource::ROUTE].iter().any(|t| {
                        !skip.contains(*t)
                            && self.types.get(*t).is_some_and(|s| {
                                self.plan(t, s, &snapshot, s.last.is_none()).is_some()
                            })
                    });
                if routing_changes {
                    let mut union = (*view).clone();
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
                        let warming = union.iter().any(|(n, r)| {
                            cds.sent.get(n).map(|s| s.version()) != Some(r.version())
                        });
                        let plan = Plan {
                            resources: union.values().cloned().collect(),
                            names: Arc::new(union.keys().cloned().collect()),
                            sent: Some(Arc::new(union)),
                            version,
                            warming,
                        };
                        out.push(self.commit(resource::CLUSTER, Arc::new(plan)));
                    }
                    cds_final = true;
                }
            }
        }

        for type_url in &order {
            if skip.contains(type_url) || (cds_final && type_url == resource::CLUSTER) {
                continue;
            }
            let state = &self.types[type_url];
            if let Some(plan) = self.plan(type_url, state, &snapshot, state.last.is_none()) {
                out.push(self.commit(type_url, plan));
            }
            self.reconciled(type_url, snapshot.type_resources(type_url));
        }
        if cds_final {
            let state = &self.types[resource::CLUSTER];
            if let Some(plan) = self.plan(resource::CLUSTER, state, &snapshot, false) {
                out.push(self.commit(resource::CLUSTER, plan));
            }
            self.reconciled(
                resource::CLUSTER,
                snapshot.type_resources(resource::CLUSTER),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::resource::{CLUSTER, ROUTE};

    fn snap(items: &[(&str, &str, &[u8])]) -> Snapshot {
        Snapshot::from_encoded(items.iter().map(|(t, n, v)| (*t, *n, v.to_vec())))
            .expect("test snapshot names are unique and non-empty")
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.resources.iter().map(|r| r.name()).collect()
    }

    fn sub(names: &[&str]) -> Subscription {
        let mut s = Subscription::default();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        s.apply_sotw(&names, false);
        s
    }

    #[test]
    fn streams_in_the_same_position_share_one_plan() {
        let s1 = snap(&[
            (ROUTE, "80", b"a"),
            (ROUTE, "81", b"a"),
            (ROUTE, "82", b"a"),
        ]);
        let s2 = snap(&[
            (ROUTE, "80", b"b"),
            (ROUTE, "81", b"a"),
            (ROUTE, "82", b"a"),
        ]);
        let (one, two) = (sub(&["80", "81"]), sub(&["81", "80"]));
        let first = |s: &Subscription| {
            shared_plan(
                ROUTE,
                &empty_sent(),
                s,
                s1.type_resources(ROUTE),
                true,
                true,
            )
            .expect("a first request is always answered")
        };
        let (p1, p2) = (first(&one), first(&two));
        assert!(Arc::ptr_eq(&p1, &p2), "one plan for both streams");
        assert_eq!(names(&p1), ["80", "81"]);
        // Both now hold the same `sent`; the next change is one shared plan again, with
        // only the changed route.
        let next = |s: &Subscription| {
            shared_plan(
                ROUTE,
                &p1.sent_after(&empty_sent()),
                s,
                s2.type_resources(ROUTE),
                true,
                false,
            )
            .expect("route 80 changed")
        };
        let (n1, n2) = (next(&one), next(&two));
        assert!(Arc::ptr_eq(&n1, &n2));
        assert_eq!(names(&n1), ["80"]);
        assert_eq!(n1.version, s2.version(ROUTE));
        // Another subscription gets its own answer: 82 is not covered, so nothing to send.
        let other = sub(&["81", "82"]);
        let p3 = first(&other);
        assert!(!Arc::ptr_eq(&p1, &p3));
        let none = shared_plan(
            ROUTE,
            &p3.sent_after(&empty_sent()),
            &other,
            s2.type_resources(ROUTE),
            true,
            false,
        );
        assert!(none.is_none(), "neither 81 nor 82 changed");
    }

    #[test]
    fn memoized_plans_do_not_keep_an_old_sent_map_alive() {
        let s1 = snap(&[(ROUTE, "80", b"a")]);
        // 80 is gone (and no placeholders): a full answer sends nothing new and leaves what
        // the client has as it was.
        let s2 = snap(&[(ROUTE, "81", b"a")]);
        let s3 = snap(&[(ROUTE, "80", b"b")]);
        let one = sub(&["80"]);
        let old = shared_plan(
            ROUTE,
            &empty_sent(),
            &one,
            s1.type_resources(ROUTE),
            false,
            true,
        )
        .expect("first answer")
        .sent_after(&empty_sent());
        let weak_old = Arc::downgrade(&old);
        let p2 = shared_plan(ROUTE, &old, &one, s2.type_resources(ROUTE), false, true)
            .expect("a full answer");
        assert!(p2.resources.is_empty());
        assert!(Arc::ptr_eq(&p2.sent_after(&old), &old), "sent unchanged");
        let p3 = shared_plan(ROUTE, &old, &one, s3.type_resources(ROUTE), false, false)
            .expect("80 is back with new content");
        let new = p3.sent_after(&old);
        assert!(!Arc::ptr_eq(&new, &old));
        // The stream moved on and the snapshot that produced `old` is gone; s2 (whose memo
        // was keyed by `old`), s3 and p2 are still alive.
        drop((old, s1));
        assert!(
            weak_old.upgrade().is_none(),
            "no memo or plan holds the old sent map"
        );
        drop((p2, p3, new));
    }

    #[test]
    fn a_type_the_snapshot_lacks_keeps_no_memo() {
        let s = snap(&[(CLUSTER, "a", b"1")]);
        let empty = s.type_resources(ROUTE);
        let plan = shared_plan(ROUTE, &empty_sent(), &sub(&["80"]), empty, true, true)
            .expect("a first request is always answered");
        assert_eq!(names(&plan), ["80"], "a placeholder for the missing route");
        let memo = empty.sotw_plans.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            memo.is_empty(),
            "the shared empty resources memoize nothing"
        );
    }

    #[test]
    fn streams_dropping_the_same_names_keep_sharing_plans() {
        let s1 = snap(&[(ROUTE, "80", b"a"), (ROUTE, "81", b"a")]);
        let s2 = snap(&[(ROUTE, "80", b"b"), (ROUTE, "81", b"b")]);
        let both = sub(&["80", "81"]);
        let had = shared_plan(
            ROUTE,
            &empty_sent(),
            &both,
            s1.type_resources(ROUTE),
            true,
            true,
        )
        .expect("first answer")
        .sent_after(&empty_sent());
        // Two streams each unsubscribe 81 on their own.
        let (one, two) = (sub(&["80"]), sub(&["80"]));
        let current = Some(s1.type_resources(ROUTE));
        let (f1, f2) = (
            shared_filter(&had, &one, current),
            shared_filter(&had, &two, current),
        );
        assert!(Arc::ptr_eq(&f1, &f2), "one cut map for both streams");
        assert_eq!(f1.keys().collect::<Vec<_>>(), ["80"]);
        let p1 = shared_plan(ROUTE, &f1, &one, s2.type_resources(ROUTE), true, false)
            .expect("80 changed");
        let p2 = shared_plan(ROUTE, &f2, &two, s2.type_resources(ROUTE), true, false)
            .expect("80 changed");
        assert!(
            Arc::ptr_eq(&p1, &p2),
            "still one plan after the unsubscribe"
        );
        assert_eq!(names(&p1), ["80"]);
    }

    #[test]
    fn full_state_plans_carry_the_whole_view_and_the_removal() {
        let s1 = snap(&[(CLUSTER, "a", b"1"), (CLUSTER, "b", b"1")]);
        let s2 = snap(&[(CLUSTER, "a", b"1")]);
        let mut wildcard = Subscription::default();
        wildcard.apply_sotw(&[], true);
        let p1 = shared_plan(
            CLUSTER,
            &empty_sent(),
            &wildcard,
            s1.type_resources(CLUSTER),
            true,
            true,
        )
        .expect("first answer");
        assert!(p1.warming);
        let p2 = shared_plan(
            CLUSTER,
            &p1.sent_after(&empty_sent()),
            &wildcard,
            s2.type_resources(CLUSTER),
            true,
            false,
        )
        .expect("b was removed");
        assert_eq!(names(&p2), ["a"], "full state: what remains");
        assert!(!p2.warming, "nothing new to warm");
    }
}
