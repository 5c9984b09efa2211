//! With `--kubernetes`: the diagnostics of each applied (or rejected) config about Kubernetes
//! objects are posted as Kubernetes Events (events.k8s.io/v1) on those objects. Logging and
//! `/debug/errors` already show them; this only adds the Events. The Event's type, reason and
//! note come from [`crate::config_source::kubernetes::events`].
//!
//! The hook is the app's config state: every apply or rejection stores a new
//! [`ConfigState`], and this task looks for a new one a few times a second, so nothing in
//! the reload path waits on the API server.
//!
//! Replicas converge on one Event per diagnostic: its name is derived from the object (its
//! uid, else namespace, kind and name) and the Event's content ([`event_name`]), so every
//! replica names it alike. The first replica to POST it creates it; the others get 409
//! AlreadyExists and leave it alone. Each distinct diagnostic is posted once while it lasts;
//! when it is gone and comes back, the replica that created the Event records the
//! recurrence on it as an events.k8s.io/v1 series (count 2, 3, ... and the last observed
//! time, which `kubectl get events` shows as `(x3 over 5m)`) by a merge PATCH.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use shadowplane_translator::Diagnostic;
use tokio::task::JoinHandle;

use super::{App, ConfigState, Problem};
use crate::config_source::kubernetes::events::{event_for, is_postable, REPORTER};
use crate::config_source::kubernetes::References;
use crate::config_source::KubeSource;

/// How often the config state is looked at.
const POLL: Duration = Duration::from_millis(200);

/// How long this replica remembers an Event it created, to record a recurrence on it. Past
/// the API server's default Event TTL (1 h): by then the server has deleted it, and a
/// recurrence creates it again.
const OWNED_TTL: Duration = Duration::from_secs(2 * 3600);

/// Kubernetes object names are at most 253 characters.
const MAX_NAME: usize = 253;

/// The diagnostics of the latest reading: the rejected one's if it was rejected, else the
/// served one's. `None` for a reading that could not be read at all.
fn latest_diagnostics(state: &ConfigState) -> Option<Vec<Diagnostic>> {
    match (&state.rejected, &state.served) {
        (Some(r), _) => match &r.problem {
            Problem::Diagnostics(d) => Some(d.clone()),
            Problem::Read(_) | Problem::Snapshot(_) => None,
        },
        (None, Some(s)) => Some(s.translation.diagnostics.clone()),
        (None, None) => None,
    }
}

/// Post Events for the diagnostics of every new config state, until aborted.
pub(super) fn spawn(app: Arc<App>, kube: &KubeSource) -> JoinHandle<()> {
    let mut poster = EventPoster::new(kube.client(), kube.references());
    tokio::spawn(async move {
        let mut seen: Option<Arc<ConfigState>> = None;
        loop {
            let state = app.state.load_full();
            if !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &state)) {
                if let Some(diagnostics) = latest_diagnostics(&state) {
                    poster.post(&diagnostics).await;
                }
                seen = Some(state);
            }
            tokio::time::sleep(POLL).await;
        }
    })
}

/// An Event this replica created: the series it last wrote.
struct Owned {
    /// 1 before any recurrence (no series yet).
    count: i32,
    written: std::time::Instant,
}

/// Posts Events for the diagnostics of each config.
struct EventPoster {
    client: Client,
    references: References,
    reporting_instance: String,
    /// The Events (namespace, name) of the latest config's diagnostics that are posted: a
    /// reading that reports them again posts nothing.
    current: BTreeSet<(String, String)>,
    /// Events this replica created, by namespace and name.
    owned: BTreeMap<(String, String), Owned>,
}

impl EventPoster {
    fn new(client: Client, references: References) -> EventPoster {
        // The Pod's name (its hostname) tells the replicas apart in `reportingInstance`.
        let reporter = Reporter::from(REPORTER);
        EventPoster {
            client,
            references,
            reporting_instance: reporter.instance.unwrap_or_else(|| REPORTER.to_string()),
            current: BTreeSet::new(),
            owned: BTreeMap::new(),
        }
    }

    /// Post every error and warning about a Kubernetes object in `diagnostics` that the
    /// previous call did not already post. A failed post is logged and tried again on the
    /// next call.
    async fn post(&mut self, diagnostics: &[Diagnostic]) {
        let mut current = BTreeSet::new();
        for d in diagnostics.iter().filter(|d| is_postable(d)) {
            let Some(path) = d.location.as_ref().map(|l| l.file.as_str()) else {
                continue;
            };
            let Some(reference) = self.references.get(path) else {
                tracing::debug!(%path, "no Kubernetes object for this diagnostic; no Event posted");
                continue;
            };
            let event = event_for(d);
            // Diagnostics that make the same Event (same object and note) are one.
            let key = (event_namespace(&reference), event_name(&reference, &event));
            if !current.insert(key.clone()) || self.current.contains(&key) {
                continue;
            }
            if let Err(e) = self.record(&reference, &event, &key).await {
                tracing::warn!(%path, error = %e, "cannot post a Kubernetes Event for a config error; it is still logged and on /debug/errors (the service account needs create and patch on events.k8s.io events)");
                current.remove(&key);
            }
        }
        self.current = current;
        self.owned.retain(|_, o| o.written.elapsed() < OWNED_TTL);
    }

    /// Create the Event, or record a recurrence on the one this replica created.
    async fn record(
        &mut self,
        reference: &ObjectReference,
        event: &Event,
        key: &(String, String),
    ) -> Result<(), kube::Error> {
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &key.0);
        let now = Timestamp::now();
        if let Some(owned) = self.owned.get_mut(key) {
            let count = owned.count.saturating_add(1).max(2);
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) },
            });
            match api
                .patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    owned.count = count;
                    owned.written = std::time::Instant::now();
                    return Ok(());
                }
                // Expired (the server's Event TTL) or deleted: create it again.
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    self.owned.remove(key);
                }
                Err(e) => return Err(e),
            }
        }
        let body = self.new_event(reference, event, key, now);
        match api.create(&PostParams::default(), &body).await {
            Ok(_) => {
                self.owned.insert(
                    key.clone(),
                    Owned {
                        count: 1,
                        written: std::time::Instant::now(),
                    },
                );
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                tracing::debug!(namespace = %key.0, name = %key.1, "the Event for this diagnostic was already posted (by another replica); leaving it");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn new_event(
        &self,
        reference: &ObjectReference,
        event: &Event,
        (namespace, name): &(String, String),
        now: Timestamp,
    ) -> K8sEvent {
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            type_: Some(type_name(event.type_).to_string()),
            regarding: Some(reference.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(REPORTER.to_string()),
            reporting_instance: Some(self.reporting_instance.clone()),
            ..K8sEvent::default()
        }
    }
}

/// Events about an object go in its namespace; about a cluster-scoped one, in `default`.
fn event_namespace(reference: &ObjectReference) -> String {
    reference
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// `<object name>.<16 hex digits>`: the same on every replica for the same diagnostic on the
/// same object (its uid, else namespace, kind and name), different for another diagnostic or
/// another object of that name.
pub(crate) fn event_name(reference: &ObjectReference, event: &Event) -> String {
    let mut hash = Sha256::new();
    let object = match reference.uid.as_deref().filter(|u| !u.is_empty()) {
        Some(uid) => format!("uid:{uid}"),
        None => format!(
            "{}/{}/{}/{}",
            reference.api_version.as_deref().unwrap_or(""),
            reference.kind.as_deref().unwrap_or(""),
            reference.namespace.as_deref().unwrap_or(""),
            reference.name.as_deref().unwrap_or("")
        ),
    };
    for part in [
        object.as_str(),
        type_name(event.type_),
        &event.reason,
        &event.action,
        event.note.as_deref().unwrap_or(""),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hex::encode(&hash.finalize()[..8]);
    let object_name = reference.name.as_deref().unwrap_or(REPORTER);
    let mut prefix: &str = object_name;
    if prefix.len() > MAX_NAME - 17 {
        let mut cut = MAX_NAME - 17;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix = &prefix[..cut];
    }
    // A cut name must still end with an alphanumeric character to be a DNS subdomain.
    let prefix = prefix.trim_end_matches(['.', '-']);
    if prefix.is_empty() {
        format!("{REPORTER}.{digest}")
    } else {
        format!("{prefix}.{digest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uid: Option<&str>, name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("networking.istio.io/v1".into()),
            kind: Some("VirtualService".into()),
            name: Some(name.into()),
            namespace: Some("demo".into()),
            uid: uid.map(str::to_string),
            resource_version: Some("12".into()),
            field_path: None,
        }
    }

    fn event(note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: "ConfigError".into(),
            note: Some(note.into()),
            action: "Translate".into(),
            secondary: None,
        }
    }

    #[test]
    fn event_names_are_deterministic_per_object_and_diagnostic() {
        let a = event_name(&reference(Some("u1"), "calc"), &event("[IST0101] bad"));
        assert_eq!(
            a,
            event_name(&reference(Some("u1"), "calc"), &event("[IST0101] bad"))
        );
        assert!(
            a.starts_with("calc.") && a.len() == "calc.".len() + 16,
            "{a}"
        );
        // Another diagnostic, another object with the same name (a new uid), no uid.
        assert_ne!(
            a,
            event_name(&reference(Some("u1"), "calc"), &event("[IST0101] other"))
        );
        assert_ne!(
            a,
            event_name(&reference(Some("u2"), "calc"), &event("[IST0101] bad"))
        );
        let no_uid = event_name(&reference(None, "calc"), &event("[IST0101] bad"));
        assert_ne!(a, no_uid);
        assert_eq!(
            no_uid,
            event_name(&reference(None, "calc"), &event("[IST0101] bad"))
        );
        // A long name is cut to a valid 253-character name.
        let long = format!("{}.{}", "a".repeat(235), "b".repeat(17));
        let name = event_name(&reference(Some("u1"), &long), &event("x"));
        assert!(name.len() <= MAX_NAME, "{}", name.len());
        assert!(!name.contains(".."), "{name}");
    }
}
