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
//! replica names it alike, and all replicas treat it alike (optimistic concurrency, no
//! leader). Each distinct diagnostic is recorded once per occurrence: the first replica to
//! POST it creates it; a replica whose POST gets 409 AlreadyExists reads the Event, and if
//! it was observed within [`RECENT`] another replica just recorded this occurrence; else it is
//! a recurrence (or the replica that wrote it restarted, or a create's response was lost) and
//! is recorded as an events.k8s.io/v1 series (count + 1 and the last observed time, which
//! `kubectl get events` shows as `(x3 over 5m)`) by a merge PATCH whose
//! `metadata.resourceVersion` is a precondition: a 409 Conflict means another replica
//! recorded it first. A replica patches an Event it wrote itself directly, with the version
//! it wrote. While a diagnostic lasts, its Event is refreshed every [`HEARTBEAT`] (last
//! observed time only) so the API server's Event TTL does not delete it; an expired one is
//! created again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// While a diagnostic lasts, its Event is written again this long after its last write (its
/// series' last observed time; the count stays), as client-go's event broadcaster does, so
/// the API server's Event TTL (1 h after the last write) does not delete it.
const HEARTBEAT: Duration = Duration::from_secs(30 * 60);

/// An Event observed by another replica this recently records the same occurrence: a replica
/// whose create got AlreadyExists writes nothing then.
const RECENT: Duration = Duration::from_secs(10);

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

/// Post Events for the diagnostics of every new config state, and keep the Events of the
/// diagnostics that last alive, until aborted.
pub(super) fn spawn(app: Arc<App>, kube: &KubeSource) -> JoinHandle<()> {
    let mut poster = EventPoster::new(kube.client(), kube.references(), HEARTBEAT);
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
            poster.heartbeat().await;
            tokio::time::sleep(POLL).await;
        }
    })
}

/// An Event of a diagnostic of the latest config, as this replica last saw or wrote it.
struct Current {
    /// The Event to create if it is missing (expired or deleted).
    body: K8sEvent,
    /// When this replica last wrote it or saw it freshly written by another replica: the
    /// heartbeat is due `heartbeat` later.
    refreshed: Instant,
}

/// The version of an Event this replica last wrote: a recurrence patches it with this
/// `resourceVersion` as a precondition, so a write by another replica since is noticed.
struct Written {
    resource_version: Option<String>,
    /// The series count written (1: no series yet).
    count: i32,
    at: Instant,
}

/// What to write on an Event that exists, after reading it.
#[derive(Debug, PartialEq, Eq)]
enum Write {
    /// Another replica wrote it within [`RECENT`]: it recorded this same occurrence.
    Nothing,
    /// A series with this count and the last observed time now.
    Series(i32),
}

/// What to write on `existing` (its series count and last observation, `None` if it has
/// neither `series.lastObservedTime` nor `eventTime`), observed at `now`: for a recurrence
/// the count grows by one; for a heartbeat it stays. Nothing if it was observed within
/// `recent` (by another replica, which recorded the same occurrence).
fn write_for(
    count: Option<i32>,
    last_observed: Option<Timestamp>,
    now: Timestamp,
    recent: Duration,
    recurrence: bool,
) -> Write {
    if let Some(last) = last_observed {
        let age = now.duration_since(last);
        if age.is_negative() || age.unsigned_abs() < recent {
            return Write::Nothing;
        }
    }
    let count = count.unwrap_or(1).max(1);
    Write::Series(if recurrence {
        count.saturating_add(1)
    } else {
        count
    })
}

/// Posts Events for the diagnostics of each config.
struct EventPoster {
    client: Client,
    references: References,
    reporting_instance: String,
    /// How long an Event of a lasting diagnostic goes unwritten before this replica
    /// refreshes it ([`HEARTBEAT`]; shorter in tests).
    heartbeat: Duration,
    /// The Events (namespace, name) of the latest config's diagnostics that are posted: a
    /// reading that reports them again posts nothing.
    current: BTreeMap<(String, String), Current>,
    /// Events this replica wrote, by namespace and name.
    written: BTreeMap<(String, String), Written>,
}

/// Is this an API error with this reason (`AlreadyExists`, `Conflict`) or code?
fn api_error(e: &kube::Error, reason: &str, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.reason == reason || (s.reason.is_empty() && s.code == code))
}

impl EventPoster {
    fn new(client: Client, references: References, heartbeat: Duration) -> EventPoster {
        // The Pod's name (its hostname) tells the replicas apart in `reportingInstance`.
        let reporter = Reporter::from(REPORTER);
        EventPoster {
            client,
            references,
            reporting_instance: reporter.instance.unwrap_or_else(|| REPORTER.to_string()),
            heartbeat,
            current: BTreeMap::new(),
            written: BTreeMap::new(),
        }
    }

    /// Post every error and warning about a Kubernetes object in `diagnostics` that the
    /// previous call did not already post. A failed post is logged and tried again on the
    /// next call.
    async fn post(&mut self, diagnostics: &[Diagnostic]) {
        let mut current = BTreeMap::new();
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
            if current.contains_key(&key) {
                continue;
            }
            if let Some(c) = self.current.remove(&key) {
                current.insert(key, c);
                continue;
            }
            let body = self.new_event(&reference, &event, &key);
            match self.record(&body, &key, true).await {
                Ok(()) => {
                    current.insert(
                        key,
                        Current {
                            body,
                            refreshed: Instant::now(),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(%path, error = %e, "cannot post a Kubernetes Event for a config error; it is still logged and on /debug/errors (the service account needs create, get and patch on events.k8s.io events)");
                }
            }
        }
        self.current = current;
        self.written.retain(|_, w| w.at.elapsed() < OWNED_TTL);
    }

    /// Refresh the Events of lasting diagnostics not written for `heartbeat` (as client-go's
    /// event broadcaster does), so the API server's Event TTL does not delete them while
    /// the error lasts.
    async fn heartbeat(&mut self) {
        let due: Vec<(String, String)> = self
            .current
            .iter()
            .filter(|(_, c)| c.refreshed.elapsed() >= self.heartbeat)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(body) = self.current.get(&key).map(|c| c.body.clone()) else {
                continue;
            };
            match self.record(&body, &key, false).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "cannot refresh the Kubernetes Event of a lasting config error; tried again a heartbeat later (the service account needs create, get and patch on events.k8s.io events)");
                }
            }
            // Also after a failure: tried again a heartbeat later, not every poll.
            if let Some(c) = self.current.get_mut(&key) {
                c.refreshed = Instant::now();
            }
        }
    }

    /// Record an occurrence of the Event (`recurrence`: a new one, counted; else a
    /// heartbeat of a lasting one): create it, or record it on the existing one unless
    /// another replica just did.
    async fn record(
        &mut self,
        body: &K8sEvent,
        key: &(String, String),
        recurrence: bool,
    ) -> Result<(), kube::Error> {
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &key.0);
        // The Event as this replica last wrote it: patch that version directly (a write by
        // another replica since makes it a 409 Conflict, then read it).
        if let Some(w) = self.written.get(key) {
            let count = if recurrence {
                w.count.saturating_add(1)
            } else {
                w.count
            };
            let rv = w.resource_version.clone();
            match self.patch(&api, key, count, rv).await {
                Ok(()) => return Ok(()),
                Err(e) if api_error(&e, "Conflict", 409) || api_error(&e, "NotFound", 404) => {
                    self.written.remove(key);
                }
                Err(e) => return Err(e),
            }
        }
        // Create it, or read the one that exists (another replica's, or this replica's
        // before a restart or a lost response) and record the occurrence on it. A few rounds at
        // most: it may expire between the create and the read.
        // A heartbeat reads first: the Event most likely exists.
        let mut create = recurrence;
        for _ in 0..3 {
            if create {
                let mut body = body.clone();
                body.event_time = Some(MicroTime(Timestamp::now()));
                body.series = None;
                match api.create(&PostParams::default(), &body).await {
                    Ok(created) => {
                        self.wrote(key, &created.metadata, 1);
                        return Ok(());
                    }
                    Err(e) if api_error(&e, "AlreadyExists", 409) => {}
                    Err(e) => return Err(e),
                }
            }
            create = true;
            let existing = match api.get(&key.1).await {
                Ok(e) => e,
                Err(e) if api_error(&e, "NotFound", 404) => continue,
                Err(e) => return Err(e),
            };
            let last_observed = existing
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(existing.event_time.as_ref().map(|t| t.0));
            let count = existing.series.as_ref().map(|s| s.count);
            match write_for(count, last_observed, Timestamp::now(), RECENT, recurrence) {
                Write::Nothing => {
                    tracing::debug!(namespace = %key.0, name = %key.1, "the Event for this diagnostic was just written (by another replica); leaving it");
                    return Ok(());
                }
                Write::Series(count) => {
                    let rv = existing.metadata.resource_version.clone();
                    return match self.patch(&api, key, count, rv).await {
                        Err(e) if api_error(&e, "Conflict", 409) => {
                            tracing::debug!(namespace = %key.0, name = %key.1, "another replica recorded this occurrence on the Event first; leaving it");
                            Ok(())
                        }
                        Err(e) if api_error(&e, "NotFound", 404) => continue,
                        other => other,
                    };
                }
            }
        }
        Ok(())
    }

    /// Merge-patch the Event's series (`count`, last observed now), with `resourceVersion`
    /// as a precondition when known.
    async fn patch(
        &mut self,
        api: &Api<K8sEvent>,
        key: &(String, String),
        count: i32,
        resource_version: Option<String>,
    ) -> Result<(), kube::Error> {
        let mut patch = serde_json::json!({
            "series": EventSeries { count, last_observed_time: MicroTime(Timestamp::now()) },
        });
        if let Some(rv) = resource_version {
            patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
        }
        let patched = api
            .patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.wrote(key, &patched.metadata, count);
        Ok(())
    }

    fn wrote(&mut self, key: &(String, String), metadata: &ObjectMeta, count: i32) {
        self.written.insert(
            key.clone(),
            Written {
                resource_version: metadata.resource_version.clone(),
                count,
                at: Instant::now(),
            },
        );
    }

    fn new_event(
        &self,
        reference: &ObjectReference,
        event: &Event,
        (namespace, name): &(String, String),
    ) -> K8sEvent {
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
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

    /// A minimal events.k8s.io API for one Event: GET, POST (409 AlreadyExists), merge
    /// PATCH (`series` only, 409 Conflict on a stale `metadata.resourceVersion`), each
    /// request logged as (method, body).
    #[derive(Default)]
    struct MockEvents {
        event: Option<serde_json::Value>,
        rv: u64,
        log: Vec<(String, serde_json::Value)>,
    }

    type Mock = Arc<std::sync::Mutex<MockEvents>>;

    fn status(code: u16, reason: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": reason, "reason": reason, "code": code});
        (code, body)
    }

    fn answer(mock: &Mock, method: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let mut m = mock.lock().expect("not poisoned");
        m.log.push((method.to_string(), body.clone()));
        m.rv += 1;
        let rv = m.rv.to_string();
        match (method, m.event.as_mut()) {
            ("GET", Some(e)) => (200, e.clone()),
            ("GET" | "PATCH", None) => status(404, "NotFound"),
            ("POST", Some(_)) => status(409, "AlreadyExists"),
            ("POST", None) => {
                let mut e = body;
                e["metadata"]["resourceVersion"] = serde_json::json!(rv);
                m.event = Some(e.clone());
                (201, e)
            }
            ("PATCH", Some(e)) => {
                let want = &body["metadata"]["resourceVersion"];
                if !want.is_null() && *want != e["metadata"]["resourceVersion"] {
                    return status(409, "Conflict");
                }
                e["series"] = body["series"].clone();
                e["metadata"]["resourceVersion"] = serde_json::json!(rv);
                (200, e.clone())
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }

    /// Serve `mock` over HTTP/1.1 (one request per connection); the API server URL.
    async fn serve_mock(mock: Mock) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mock = mock.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let method = head.split(' ').next().unwrap_or("").to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = serde_json::from_slice(&buf[head_end..head_end + length])
                        .unwrap_or(serde_json::Value::Null);
                    let (code, answer) = answer(&mock, &method, body);
                    let answer = answer.to_string();
                    let response = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        url
    }

    fn old_event(name: &str, series: Option<i32>) -> serde_json::Value {
        let mut e = serde_json::json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "demo", "resourceVersion": "1"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reason": "ConfigError", "action": "Translate", "type": "Warning",
            "reportingController": REPORTER, "reportingInstance": "gone",
        });
        if let Some(count) = series {
            e["series"] = serde_json::json!({"count": count, "lastObservedTime": "2026-01-01T00:00:00.000000Z"});
        }
        e
    }

    async fn poster(mock: &Mock, heartbeat: Duration) -> EventPoster {
        let url = serve_mock(mock.clone()).await;
        let config = kube::Config::new(url.parse().expect("a valid URL"));
        let client = Client::try_from(config).expect("a client");
        EventPoster::new(client, References::default(), heartbeat)
    }

    /// The series count of the Event the mock holds.
    fn stored_count(mock: &Mock) -> serde_json::Value {
        let m = mock.lock().expect("not poisoned");
        m.event.as_ref().expect("kept")["series"]["count"].clone()
    }

    fn methods(mock: &Mock) -> Vec<String> {
        let mut m = mock.lock().expect("not poisoned");
        std::mem::take(&mut m.log)
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    }

    /// The Event of a diagnostic this replica had not posted (it restarted; the Event was
    /// created by a replica that is gone): a recurrence is counted on it, with the version
    /// read as a precondition; a lasting diagnostic's Event is refreshed every heartbeat
    /// (count unchanged) and created again once expired.
    #[tokio::test]
    async fn a_recurrence_and_heartbeats_are_recorded_on_an_event_this_replica_did_not_create() {
        let mock: Mock = Arc::default();
        let name = event_name(&reference(Some("u1"), "calc"), &event("bad"));
        let key = ("demo".to_string(), name.clone());
        mock.lock().expect("not poisoned").event = Some(old_event(&name, Some(3)));
        let mut p = poster(&mock, Duration::ZERO).await;
        let body = p.new_event(&reference(Some("u1"), "calc"), &event("bad"), &key);

        p.record(&body, &key, true).await.expect("recorded");
        let log = std::mem::take(&mut mock.lock().expect("not poisoned").log);
        let seen: Vec<&str> = log.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(seen, ["POST", "GET", "PATCH"]);
        assert_eq!(log[2].1["series"]["count"], 4, "{:#}", log[2].1);
        assert_eq!(
            log[2].1["metadata"]["resourceVersion"], "1",
            "a precondition"
        );
        let event = mock
            .lock()
            .expect("not poisoned")
            .event
            .clone()
            .expect("kept");
        assert_ne!(
            event["series"]["lastObservedTime"],
            "2026-01-01T00:00:00.000000Z"
        );

        // Just observed by another replica: this occurrence is already recorded.
        let mut other = poster(&mock, Duration::ZERO).await;
        other.record(&body, &key, true).await.expect("recorded");
        assert_eq!(methods(&mock), ["POST", "GET"]);
        assert_eq!(stored_count(&mock), 4);

        // Heartbeat (due at once with a zero interval): the writer patches its version,
        // count unchanged.
        p.current.insert(
            key.clone(),
            Current {
                body: body.clone(),
                refreshed: Instant::now(),
            },
        );
        p.heartbeat().await;
        assert_eq!(methods(&mock), ["PATCH"]);
        assert_eq!(stored_count(&mock), 4);
        // Not due with the real interval.
        p.heartbeat = HEARTBEAT;
        p.heartbeat().await;
        assert!(methods(&mock).is_empty());

        // A replica that did not write it reads it first; written long ago: refreshed.
        mock.lock().expect("not poisoned").event = Some(old_event(&name, Some(4)));
        other.current.insert(
            key.clone(),
            Current {
                body: body.clone(),
                refreshed: Instant::now(),
            },
        );
        other.heartbeat().await;
        assert_eq!(methods(&mock), ["GET", "PATCH"]);
        assert_eq!(stored_count(&mock), 4);

        // Expired: created again.
        mock.lock().expect("not poisoned").event = None;
        other.heartbeat().await;
        assert_eq!(methods(&mock), ["PATCH", "GET", "POST"]);
        let event = mock
            .lock()
            .expect("not poisoned")
            .event
            .clone()
            .expect("created");
        assert!(event["series"].is_null(), "{event:#}");
        assert_eq!(event["metadata"]["name"], name);
    }

    #[test]
    fn an_existing_event_gets_a_series_unless_another_replica_just_observed_it() {
        let now: Timestamp = "2026-11-23T22:00:00Z".parse().expect("a valid timestamp");
        let ago = |s: i64| now - k8s_openapi::jiff::SignedDuration::from_secs(s);
        // Observed 3 s ago (another replica reporting this occurrence), or in the future (a
        // skewed clock): nothing to write.
        for t in [ago(3), ago(-5)] {
            assert_eq!(
                write_for(Some(4), Some(t), now, RECENT, true),
                Write::Nothing
            );
            assert_eq!(write_for(None, Some(t), now, RECENT, false), Write::Nothing);
        }
        // A recurrence counts one more (1 without a series); a heartbeat keeps the count.
        assert_eq!(
            write_for(None, Some(ago(60)), now, RECENT, true),
            Write::Series(2)
        );
        assert_eq!(
            write_for(Some(4), Some(ago(3600)), now, RECENT, true),
            Write::Series(5)
        );
        assert_eq!(
            write_for(Some(4), Some(ago(1800)), now, RECENT, false),
            Write::Series(4)
        );
        assert_eq!(
            write_for(None, Some(ago(1800)), now, RECENT, false),
            Write::Series(1)
        );
        assert_eq!(write_for(None, None, now, RECENT, true), Write::Series(2));
        // The window is the parameter's.
        assert_eq!(
            write_for(Some(2), Some(ago(60)), now, Duration::from_secs(120), true),
            Write::Nothing
        );
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
