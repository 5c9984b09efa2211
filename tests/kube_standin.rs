//! Self-tests of the Kubernetes API server stand-in (`tests/common/kube_apiserver.rs`): the
//! real `kube` client discovers, lists, watches (bookmarks, resume after a restart, 410 Gone
//! after compaction → relist, streaming lists) and posts Events against it; and the stand-in
//! refuses, with the real Status JSON, what a real API server refuses.

mod common;

use std::time::Duration;

use common::kube_apiserver::{allow_all, KubeApiServer, Options, TOKEN};
use common::{HttpClient, TempDir};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use serde_json::{json, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn client(server: &KubeApiServer, dir: &TempDir) -> kube::Client {
    let path = server.write_kubeconfig(dir.path());
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("a kube config from the stand-in's kubeconfig");
    kube::Client::try_from(config).expect("a kube client")
}

fn service(ns: &str, name: &str, port: u16, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": port}],
                 "clusterIP": "10.96.0.10", "type": "ClusterIP"},
    })
}

fn virtual_service(ns: &str, name: &str, api_version: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hosts": ["calc"], "http": [{"route": [{"destination": {"host": "calc"}}]}]},
    })
}

/// `method path` against the stand-in with the kubeconfig's token (unless `token` is false).
fn raw(
    http: &HttpClient,
    server: &KubeApiServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    token: bool,
) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if token {
        all.push(("authorization", auth.as_str()));
    }
    let r = http.request(
        method,
        server.port(),
        "127.0.0.1",
        path,
        &all,
        body.as_bytes().to_vec(),
    );
    let value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, value)
}

/// Assert a refusal: status, the Status JSON's reason, and that it was recorded.
fn assert_refused(server: &KubeApiServer, got: (u16, Value), code: u16, reason: &str) {
    let (status, body) = got;
    assert_eq!(status, code, "status of the refusal; body: {body}");
    assert_eq!(body["kind"], "Status", "a Status body: {body}");
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["status"], "Failure");
    assert_eq!(body["code"], code);
    assert_eq!(body["reason"], reason, "reason of {body}");
    let rejections = server.take_rejections();
    assert_eq!(
        rejections.len(),
        1,
        "exactly this refusal is recorded: {rejections:?}"
    );
    assert_eq!(rejections[0].status, code);
}

#[test]
fn refuses_what_the_real_api_server_refuses() {
    let server = KubeApiServer::start();
    server.apply(&service("demo", "calc", 8080, json!({"app": "calc"})));
    let http = HttpClient::new();
    let get = |path: &str| raw(&http, &server, "GET", path, &[], "", true);

    // Accepted requests leave nothing behind.
    assert_eq!(get("/api/v1/namespaces/demo/services").0, 200);
    assert_eq!(
        get("/api/v1/services?labelSelector=app%3Dcalc&fieldSelector=metadata.name%3Dcalc").0,
        200
    );
    assert_eq!(
        get("/api/v1/pods?fieldSelector=status.phase%3DRunning").0,
        200
    );
    assert!(server.rejections().is_empty(), "{:?}", server.rejections());

    // No token: 401.
    assert_refused(
        &server,
        raw(&http, &server, "GET", "/api/v1/services", &[], "", false),
        401,
        "Unauthorized",
    );
    // Unknown resource, unknown group, unserved version, cluster-scoped get: 404.
    assert_refused(&server, get("/api/v1/configmaps"), 404, "NotFound");
    assert_refused(&server, get("/apis/apps/v1/deployments"), 404, "NotFound");
    server.set_istio_versions(&["v1beta1"]);
    assert_refused(
        &server,
        get("/apis/networking.istio.io/v1/virtualservices"),
        404,
        "NotFound",
    );
    assert_eq!(
        get("/apis/networking.istio.io/v1beta1/virtualservices").0,
        200
    );
    assert_refused(&server, get("/api/v1/services/calc"), 404, "NotFound");
    // A missing object: 404 naming it.
    let (status, body) = get("/api/v1/namespaces/demo/services/nope");
    assert_eq!(status, 404);
    assert_eq!(body["message"], "services \"nope\" not found");
    assert_eq!(body["details"]["name"], "nope");
    server.take_rejections();
    // Unsupported field selector: 400, like the real server.
    let (status, body) = get("/api/v1/services?fieldSelector=spec.ports%3D80");
    assert_eq!(status, 400);
    assert_eq!(body["message"], "field label not supported: spec.ports");
    server.take_rejections();
    assert_refused(
        &server,
        get("/apis/networking.istio.io/v1beta1/virtualservices?fieldSelector=spec.hosts%3Dx"),
        400,
        "BadRequest",
    );
    // Malformed label selector, resourceVersion, limit, watch: 400.
    assert_refused(
        &server,
        get("/api/v1/services?labelSelector=app%20in%20(a"),
        400,
        "BadRequest",
    );
    assert_refused(
        &server,
        get("/api/v1/services?resourceVersion=abc"),
        400,
        "BadRequest",
    );
    assert_refused(
        &server,
        get("/api/v1/services?limit=ten"),
        400,
        "BadRequest",
    );
    assert_refused(
        &server,
        get("/api/v1/services?watch=yes"),
        400,
        "BadRequest",
    );
    // ListOptions the real server's validation forbids: 422.
    assert_refused(
        &server,
        get("/api/v1/services?watch=true&resourceVersion=5&resourceVersionMatch=NotOlderThan"),
        422,
        "Invalid",
    );
    assert_refused(
        &server,
        get("/api/v1/services?resourceVersionMatch=Exact"),
        422,
        "Invalid",
    );
    assert_refused(
        &server,
        get("/api/v1/services?sendInitialEvents=true"),
        422,
        "Invalid",
    );
    // An unknown query parameter is ignored by the real server: answered, but flagged.
    assert_eq!(get("/api/v1/services?labelselector=app%3Dcalc").0, 200);
    let flagged = server.take_rejections();
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert!(flagged[0].message.contains("labelselector"), "{flagged:?}");

    // Writes other than Events: 403 (the least-privilege ClusterRole).
    assert_refused(
        &server,
        raw(
            &http,
            &server,
            "POST",
            "/api/v1/namespaces/demo/services",
            &[("content-type", "application/json")],
            &service("demo", "x", 80, json!({})).to_string(),
            true,
        ),
        403,
        "Forbidden",
    );
    assert_refused(
        &server,
        raw(
            &http,
            &server,
            "DELETE",
            "/api/v1/namespaces/demo/services/calc",
            &[],
            "",
            true,
        ),
        403,
        "Forbidden",
    );
    // A verb the path does not have: 405.
    assert_refused(
        &server,
        raw(
            &http,
            &server,
            "POST",
            "/api/v1/namespaces/demo/events/x",
            &[],
            "{}",
            true,
        ),
        405,
        "MethodNotAllowed",
    );

    // Events the real server's validation refuses.
    let post_v1 = |ns: &str, body: &Value| {
        raw(
            &http,
            &server,
            "POST",
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            &[("content-type", "application/json")],
            &body.to_string(),
            true,
        )
    };
    let good = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "calc.1", "namespace": "demo"},
        "eventTime": "2026-11-23T18:00:00.000000Z",
        "reportingController": "shadowplane",
        "reportingInstance": "shadowplane-0",
        "action": "Translate",
        "reason": "InvalidConfig",
        "type": "Warning",
        "note": "bad",
        "regarding": {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                      "namespace": "demo", "name": "calc"},
    });
    let mut no_reason = good.clone();
    no_reason.as_object_mut().unwrap().remove("reason");
    let (status, body) = post_v1("demo", &no_reason);
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["message"],
        "Event.events.k8s.io \"calc.1\" is invalid: reason: Required value"
    );
    assert_eq!(body["details"]["causes"][0]["field"], "reason");
    server.take_rejections();
    let mut no_regarding = good.clone();
    no_regarding.as_object_mut().unwrap().remove("regarding");
    assert_refused(&server, post_v1("demo", &no_regarding), 422, "Invalid");
    let mut bad_type = good.clone();
    bad_type["type"] = json!("Error");
    assert_refused(&server, post_v1("demo", &bad_type), 422, "Invalid");
    let mut no_time = good.clone();
    no_time.as_object_mut().unwrap().remove("eventTime");
    assert_refused(&server, post_v1("demo", &no_time), 422, "Invalid");
    // The body's namespace differs from the path's: 400.
    assert_refused(&server, post_v1("other", &good), 400, "BadRequest");
    // A namespace that does not exist: 404.
    let mut elsewhere = good.clone();
    elsewhere["metadata"]["namespace"] = json!("nowhere");
    elsewhere["regarding"]["namespace"] = json!("nowhere");
    assert_refused(&server, post_v1("nowhere", &elsewhere), 404, "NotFound");
    // A core/v1 body on the events.k8s.io endpoint: 400.
    let mut core_body = good.clone();
    core_body["apiVersion"] = json!("v1");
    assert_refused(&server, post_v1("demo", &core_body), 400, "BadRequest");
    // Not JSON: 400; not a JSON content type: 415.
    assert_refused(
        &server,
        raw(
            &http,
            &server,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/demo/events",
            &[("content-type", "application/json")],
            "{not json",
            true,
        ),
        400,
        "BadRequest",
    );
    assert_refused(
        &server,
        raw(
            &http,
            &server,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/demo/events",
            &[("content-type", "text/plain")],
            &good.to_string(),
            true,
        ),
        415,
        "UnsupportedMediaType",
    );
    // The good one is created, once.
    let (status, created) = post_v1("demo", &good);
    assert_eq!(status, 201, "{created}");
    assert!(server.rejections().is_empty(), "{:?}", server.rejections());
    // A second create of the same name: 409 AlreadyExists with the real server's Status (no
    // `group` in the details for core events, which this is not). Writers that agree on a
    // name (replicas posting one Event) rely on it, so it is not recorded as a rejection.
    let (status, exists) = post_v1("demo", &good);
    assert_eq!(status, 409, "{exists}");
    assert_eq!(
        exists,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "events.events.k8s.io \"calc.1\" already exists",
            "reason": "AlreadyExists",
            "details": {"name": "calc.1", "group": "events.k8s.io", "kind": "events"},
            "code": 409,
        })
    );
    assert!(server.take_rejections().is_empty());
    assert_eq!(
        server.events().len(),
        1,
        "the refused create stored nothing: {:#?}",
        server.events()
    );
    // The deployed role reads an Event by name (a replica whose create got AlreadyExists
    // records a recurrence on it), as the events.k8s.io/v1 JSON; it does not list them.
    let (status, read) = get("/apis/events.k8s.io/v1/namespaces/demo/events/calc.1");
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["apiVersion"], "events.k8s.io/v1", "{read}");
    assert_eq!(read["kind"], "Event", "{read}");
    assert_eq!(read["metadata"]["name"], "calc.1", "{read}");
    assert!(read["metadata"]["resourceVersion"].is_string(), "{read}");
    assert_eq!(read["regarding"]["name"], "calc", "{read}");
    assert_refused(
        &server,
        get("/apis/events.k8s.io/v1/namespaces/demo/events"),
        403,
        "Forbidden",
    );
    // The deployed ClusterRole grants events.k8s.io only: a core/v1 Event is 403.
    let core_bad = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "x.1", "namespace": "demo"},
        "involvedObject": {"kind": "Service", "namespace": "other", "name": "x"},
        "reason": "R",
        "message": "m",
    });
    assert_refused(
        &server,
        raw(
            &http,
            &server,
            "POST",
            "/api/v1/namespaces/demo/events",
            &[("content-type", "application/json")],
            &core_bad.to_string(),
            true,
        ),
        403,
        "Forbidden",
    );
    // With a role that grants it, the same Event (its involvedObject namespace differs from
    // its own) is invalid: 422.
    let admin = KubeApiServer::start_with(Options {
        rules: allow_all(),
        ..Options::default()
    });
    admin.create_namespace("demo");
    assert_refused(
        &admin,
        raw(
            &http,
            &admin,
            "POST",
            "/api/v1/namespaces/demo/events",
            &[("content-type", "application/json")],
            &core_bad.to_string(),
            true,
        ),
        422,
        "Invalid",
    );
    // An Event shows through both APIs, converted.
    let (status, _) = raw(
        &http,
        &admin,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/demo/events",
        &[("content-type", "application/json")],
        &good.to_string(),
        true,
    );
    assert_eq!(status, 201);
    let (status, core) = raw(
        &http,
        &admin,
        "GET",
        "/api/v1/namespaces/demo/events/calc.1",
        &[],
        "",
        true,
    );
    assert_eq!(status, 200);
    assert_eq!(core["involvedObject"]["name"], "calc");
    assert_eq!(core["message"], "bad");
    assert_eq!(core["reportingComponent"], "shadowplane");
    // The same name through core/v1: AlreadyExists, its details without a group (core).
    let core_dup = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "calc.1", "namespace": "demo"},
        "involvedObject": {"kind": "Service", "namespace": "demo", "name": "calc"},
        "reason": "R",
        "message": "m",
    });
    let (status, exists) = raw(
        &http,
        &admin,
        "POST",
        "/api/v1/namespaces/demo/events",
        &[("content-type", "application/json")],
        &core_dup.to_string(),
        true,
    );
    assert_eq!(status, 409, "{exists}");
    assert_eq!(exists["message"], "events \"calc.1\" already exists");
    assert_eq!(
        exists["details"],
        json!({"name": "calc.1", "kind": "events"})
    );
    assert!(admin.take_rejections().is_empty());
    // A write the stand-in does not implement is never silently accepted.
    assert_refused(
        &admin,
        raw(
            &http,
            &admin,
            "DELETE",
            "/api/v1/namespaces/demo/services/calc",
            &[],
            "",
            true,
        ),
        405,
        "MethodNotAllowed",
    );
    // An unknown field in an Event body is dropped by the real server with a warning: flagged.
    let mut extra = good.clone();
    extra["metadata"]["name"] = json!("calc.2");
    extra["notAField"] = json!(1);
    assert_eq!(post_v1("demo", &extra).0, 201);
    let flagged = server.take_rejections();
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert!(flagged[0].message.contains("notAField"), "{flagged:?}");
}

#[test]
fn kube_discovery_sees_the_served_groups_and_istio_versions() {
    let server = KubeApiServer::start();
    let dir = TempDir::new("kube-standin");
    let rt = runtime();
    rt.block_on(async {
        let client = client(&server, &dir).await;
        let version = client.apiserver_version().await.expect("/version");
        assert_eq!(version.git_version, "v1.33.1");

        let discovery = kube::discovery::Discovery::new(client.clone())
            .run()
            .await
            .expect("legacy discovery");
        let istio = discovery.get("networking.istio.io").expect("istio group");
        assert_eq!(istio.preferred_version(), Some("v1"));
        assert_eq!(
            istio.versions().collect::<Vec<_>>(),
            ["v1", "v1beta1", "v1alpha3"]
        );
        let kinds: Vec<String> = istio
            .recommended_resources()
            .into_iter()
            .map(|(ar, _)| ar.kind)
            .collect();
        for kind in [
            "VirtualService",
            "DestinationRule",
            "ServiceEntry",
            "WorkloadEntry",
            "Gateway",
        ] {
            assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
        }
        let (slices, caps) = discovery
            .get("discovery.k8s.io")
            .expect("discovery.k8s.io")
            .recommended_kind("EndpointSlice")
            .expect("EndpointSlice");
        assert_eq!(slices.plural, "endpointslices");
        assert!(caps.supports_operation("watch"));
        assert!(discovery.get("").is_some(), "the core group");

        let aggregated = kube::discovery::Discovery::new(client.clone())
            .run_aggregated()
            .await
            .expect("aggregated discovery");
        assert_eq!(
            aggregated
                .get("networking.istio.io")
                .expect("istio group (aggregated)")
                .versions()
                .collect::<Vec<_>>(),
            ["v1", "v1beta1", "v1alpha3"]
        );

        // A cluster that only serves v1beta1.
        server.set_istio_versions(&["v1beta1"]);
        let group = kube::discovery::group(&client, "networking.istio.io")
            .await
            .expect("group discovery");
        assert_eq!(group.versions().collect::<Vec<_>>(), ["v1beta1"]);
        assert_eq!(group.preferred_version(), Some("v1beta1"));
        let pinned = kube::discovery::pinned_group(
            &client,
            &kube::core::GroupVersion::gv("networking.istio.io", "v1"),
        )
        .await;
        assert!(pinned.is_err(), "v1 is not served");
        let refused = server.take_rejections();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].status, 404);

        // A server without aggregated discovery answers the legacy document with the plain
        // content type; kube's run_aggregated then reads no groups at all, which is why a
        // client must fall back to legacy discovery (Discovery::run) there.
        server.set_aggregated_discovery(false);
        let legacy_only = kube::discovery::Discovery::new(client.clone())
            .run_aggregated()
            .await
            .expect("an APIGroupList parses as an empty APIGroupDiscoveryList");
        assert!(legacy_only.get("networking.istio.io").is_none());
        let legacy = kube::discovery::Discovery::new(client.clone())
            .run()
            .await
            .expect("legacy discovery");
        assert!(legacy.get("networking.istio.io").is_some());
    });
    server.assert_no_rejections();
    let http = HttpClient::new();
    let auth = format!("Bearer {TOKEN}");
    let r = http.get(
        server.port(),
        "127.0.0.1",
        "/apis",
        &[
            ("authorization", auth.as_str()),
            ("accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"),
        ],
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    server.set_aggregated_discovery(true);
    let r = http.get(
        server.port(),
        "127.0.0.1",
        "/apis",
        &[
            ("authorization", auth.as_str()),
            ("accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"),
        ],
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    );
}

#[test]
fn a_cluster_without_istio_crds_discovers_no_group_until_they_are_installed_and_lists_can_be_held()
{
    let server = KubeApiServer::start_with(Options {
        istio_versions: Vec::new(),
        ..Options::default()
    });
    server.apply(&service("demo", "calc", 8080, json!({})));
    let dir = TempDir::new("kube-standin");
    let rt = runtime();
    rt.block_on(async {
        let client = client(&server, &dir).await;
        for aggregated in [false, true] {
            let discovery = kube::discovery::Discovery::new(client.clone());
            let discovery = if aggregated {
                discovery.run_aggregated().await
            } else {
                discovery.run().await
            }
            .expect("discovery");
            assert!(discovery.get("networking.istio.io").is_none());
            assert!(discovery.get("discovery.k8s.io").is_some());
        }
        match kube::discovery::group(&client, "networking.istio.io").await {
            Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))) => {}
            Err(e) => panic!("expected MissingApiGroup, got {e}"),
            Ok(g) => panic!("expected MissingApiGroup, got group {}", g.name()),
        }
        server.assert_no_rejections();
        // A path of the missing group is 404, as on a real server.
        let vs: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
                "virtualservices",
            ),
        );
        match vs.list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
            other => panic!("expected 404, got {other:?}"),
        }
        assert_eq!(server.take_rejections().len(), 1);

        // Installed: discovered; a held list is answered once released.
        server.set_istio_versions(&["v1"]);
        let group = kube::discovery::group(&client, "networking.istio.io")
            .await
            .expect("the installed group");
        assert_eq!(group.versions().collect::<Vec<_>>(), ["v1"]);
        server.hold_lists("virtualservices");
        let pending = tokio::spawn({
            let vs = vs.clone();
            async move { vs.list(&ListParams::default()).await }
        });
        for _ in 0..100 {
            if server.held_lists("virtualservices") == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.held_lists("virtualservices"), 1);
        // Other resources are answered meanwhile.
        let services: Api<Service> = Api::all(client.clone());
        assert_eq!(
            services
                .list(&ListParams::default())
                .await
                .expect("services")
                .items
                .len(),
            1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!pending.is_finished(), "the list is held");
        server.release_lists("virtualservices");
        let listed = tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .expect("answered once released")
            .expect("the task ran")
            .expect("the list");
        assert!(listed.items.is_empty());
        assert_eq!(server.held_lists("virtualservices"), 0);
    });
    server.assert_no_rejections();
}

/// The next watcher event, bounded.
async fn next_event<K>(
    stream: &mut (impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
) -> Result<watcher::Event<K>, watcher::Error> {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("a watcher event within 20s")
        .expect("the watcher stream does not end")
}

fn name_of(svc: &Service) -> String {
    svc.metadata.name.clone().unwrap_or_default()
}

/// Read watcher events until `pred` holds on one (earlier events are passed over), bounded.
async fn until<K, S>(
    stream: &mut S,
    what: &str,
    mut pred: impl FnMut(&watcher::Event<K>) -> bool,
) -> Vec<String>
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
    K: std::fmt::Debug,
{
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing within 20s; seen {seen:?}"))
            .unwrap_or_else(|| panic!("{what}: the stream ended; seen {seen:?}"));
        match ev {
            Ok(ev) => {
                let done = pred(&ev);
                seen.push(format!("{ev:?}").chars().take(120).collect());
                if done {
                    return seen;
                }
            }
            Err(e) => seen.push(format!("error: {e}")),
        }
    }
}

#[test]
fn kube_watcher_lists_watches_resumes_and_relists_after_410() {
    let server = KubeApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    });
    let dir = TempDir::new("kube-standin");
    server.apply(&service("demo", "a", 80, json!({"app": "a"})));
    server.apply(&service("other", "b", 80, json!({"app": "b"})));
    let rt = runtime();
    let mut server = server;
    rt.block_on(async {
        let client = client(&server, &dir).await;
        let api: Api<Service> = Api::all(client.clone());
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        assert!(matches!(
            next_event(&mut stream).await,
            Ok(watcher::Event::Init)
        ));
        let mut names = Vec::new();
        loop {
            match next_event(&mut stream).await {
                Ok(watcher::Event::InitApply(svc)) => names.push(name_of(&svc)),
                Ok(watcher::Event::InitDone) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        names.sort();
        assert_eq!(names, ["a", "b"]);

        // A change, then a deletion, arrive as Apply / Delete.
        server.apply(&service("demo", "a", 81, json!({"app": "a"})));
        match next_event(&mut stream).await {
            Ok(watcher::Event::Apply(svc)) => {
                assert_eq!(name_of(&svc), "a");
                assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 81);
            }
            other => panic!("expected the change, got {other:?}"),
        }
        server.delete("Service", "other", "b");
        match next_event(&mut stream).await {
            Ok(watcher::Event::Delete(svc)) => assert_eq!(name_of(&svc), "b"),
            other => panic!("expected the deletion, got {other:?}"),
        }
        // Let a bookmark or two pass (they advance the watcher's resourceVersion silently).
        tokio::time::sleep(Duration::from_millis(600)).await;
        let bookmarked = server.resource_version();

        // The server restarts: the watch is cut; the watcher resumes from its resourceVersion
        // without relisting and sees what changed after the restart.
        let lists_before = server
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && !r.is_watch() && r.path() == "/api/v1/services")
            .count();
        server.restart();
        server.apply(&service("demo", "c", 80, json!({"app": "c"})));
        let seen = until(
            &mut stream,
            "c after the restart",
            |ev| matches!(ev, watcher::Event::Apply(s) if name_of(s) == "c"),
        )
        .await;
        assert!(
            !seen.iter().any(|s| s.starts_with("Init")),
            "no relist after a plain restart: {seen:?}"
        );
        let lists_after = server
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && !r.is_watch() && r.path() == "/api/v1/services")
            .count();
        assert_eq!(lists_before, lists_after, "resumed, not relisted");
        let resumed = server
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.is_watch())
            .expect("a watch after the restart");
        let from: u64 = resumed
            .query("resourceVersion")
            .and_then(|v| v.parse().ok())
            .expect("the resumed watch names a resourceVersion");
        assert!(
            from >= bookmarked,
            "resumed from {from}, bookmarks reached {bookmarked}"
        );
        assert_eq!(
            resumed.query("allowWatchBookmarks").as_deref(),
            Some("true")
        );

        // The server is down while things change and history is compacted: the watcher's
        // resourceVersion is too old (410 Expired), so it relists and sees the new state.
        server.stop();
        server.apply(&service("demo", "d", 80, json!({"app": "d"})));
        server.delete("Service", "demo", "c");
        server.compact();
        server.resume();
        let mut saw_410 = false;
        let mut relisted = Vec::new();
        loop {
            match next_event(&mut stream).await {
                Err(watcher::Error::WatchError(status)) => {
                    assert_eq!(status.code, 410);
                    assert_eq!(status.reason, "Expired");
                    saw_410 = true;
                }
                Err(_) => {} // connection refused while the server was down
                Ok(watcher::Event::Init) => relisted.clear(),
                Ok(watcher::Event::InitApply(svc)) => relisted.push(name_of(&svc)),
                Ok(watcher::Event::InitDone) => break,
                Ok(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(saw_410, "the watcher got 410 Gone");
        assert!(server.expired_watches() >= 1, "counted as an expired watch");
        relisted.sort();
        assert_eq!(relisted, ["a", "d"]);
    });
    server.assert_no_rejections();
    let watches = server
        .requests()
        .into_iter()
        .filter(|r| r.is_watch())
        .count();
    assert!(
        watches >= 3,
        "initial, resumed and relisted watches: {watches}"
    );
}

#[test]
fn label_selector_watch_turns_label_changes_into_added_and_deleted() {
    let server = KubeApiServer::start();
    let dir = TempDir::new("kube-standin");
    server.apply(&service("demo", "a", 80, json!({"version": "v1"})));
    let rt = runtime();
    rt.block_on(async {
        let client = client(&server, &dir).await;
        let api: Api<Service> = Api::namespaced(client.clone(), "demo");
        let config = watcher::Config::default().labels("version=v1");
        let mut stream = watcher(api, config).boxed();
        until(&mut stream, "initial list", |ev| {
            matches!(ev, watcher::Event::InitDone)
        })
        .await;
        server.apply(&service("demo", "a", 80, json!({"version": "v2"})));
        until(
            &mut stream,
            "deleted from the selection",
            |ev| matches!(ev, watcher::Event::Delete(s) if name_of(s) == "a"),
        )
        .await;
        server.apply(&service("demo", "a", 80, json!({"version": "v1"})));
        until(
            &mut stream,
            "added back",
            |ev| matches!(ev, watcher::Event::Apply(s) if name_of(s) == "a"),
        )
        .await;
    });
    server.assert_no_rejections();
}

#[test]
fn kube_streaming_list_watcher_gets_the_initial_events_end_bookmark() {
    let server = KubeApiServer::start();
    let dir = TempDir::new("kube-standin");
    server.apply(&virtual_service("demo", "vs1", "networking.istio.io/v1"));
    server.apply(&virtual_service(
        "demo",
        "vs2",
        "networking.istio.io/v1alpha3",
    ));
    let rt = runtime();
    rt.block_on(async {
        let client = client(&server, &dir).await;
        let ar = kube::discovery::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("networking.istio.io", "v1beta1", "VirtualService"),
            "virtualservices",
        );
        let api: Api<kube::core::DynamicObject> = Api::all_with(client.clone(), &ar);
        let mut stream = watcher(api, watcher::Config::default().streaming_lists()).boxed();
        let mut names = Vec::new();
        loop {
            match next_event(&mut stream).await {
                Ok(watcher::Event::Init) => {}
                Ok(watcher::Event::InitApply(o)) => {
                    assert_eq!(
                        o.types.as_ref().map(|t| t.api_version.as_str()),
                        Some("networking.istio.io/v1beta1"),
                        "served at the version asked for"
                    );
                    names.push(o.metadata.name.unwrap_or_default());
                }
                Ok(watcher::Event::InitDone) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(names, ["vs1", "vs2"]);
        server.delete("VirtualService", "demo", "vs1");
        until(&mut stream, "deletion", |ev| {
            matches!(ev, watcher::Event::Delete(_))
        })
        .await;
    });
    server.assert_no_rejections();
    let streaming = server
        .requests()
        .into_iter()
        .find(|r| r.is_watch())
        .expect("a watch");
    assert_eq!(
        streaming.query("sendInitialEvents").as_deref(),
        Some("true")
    );
}

#[test]
fn pagination_continues_and_expires_at_compaction() {
    let server = KubeApiServer::start();
    let dir = TempDir::new("kube-standin");
    for i in 0..5 {
        server.apply(&service("demo", &format!("s{i}"), 80, json!({})));
    }
    let rt = runtime();
    rt.block_on(async {
        let client = client(&server, &dir).await;
        let api: Api<Service> = Api::namespaced(client.clone(), "demo");
        let first = api
            .list(&ListParams::default().limit(2))
            .await
            .expect("page 1");
        assert_eq!(first.items.len(), 2);
        let token = first.metadata.continue_.clone().expect("a continue token");
        assert_eq!(first.metadata.remaining_item_count, Some(3));
        // A change between pages does not show: the list is consistent at the first page's rv.
        server.apply(&service("demo", "s9", 80, json!({})));
        let mut all: Vec<String> = first.items.iter().map(name_of).collect();
        let mut token = Some(token);
        while let Some(t) = token {
            let page = api
                .list(&ListParams::default().limit(2).continue_token(&t))
                .await
                .expect("next page");
            all.extend(page.items.iter().map(name_of));
            token = page.metadata.continue_.filter(|t| !t.is_empty());
        }
        assert_eq!(all, ["s0", "s1", "s2", "s3", "s4"]);
        // After compaction, an old token is 410 Expired (a client must start over).
        let first = api
            .list(&ListParams::default().limit(2))
            .await
            .expect("page 1");
        server.compact();
        server.apply(&service("demo", "s10", 80, json!({})));
        server.compact();
        let err = api
            .list(
                &ListParams::default()
                    .limit(2)
                    .continue_token(first.metadata.continue_.as_deref().expect("token")),
            )
            .await
            .expect_err("an expired token");
        match err {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 410);
                assert_eq!(status.reason, "Expired");
            }
            other => panic!("expected 410, got {other}"),
        }
    });
    server.assert_no_rejections();
}

#[test]
fn pages_across_namespaces_that_prefix_each_other_list_every_object_once_in_key_order() {
    // `a`, `a-b` and `ab`: the real server orders by storage key `<ns>/<name>`, so `a-b/...`
    // ('-' < '/') comes before `a/...`, which comes before `ab/...`; a continue token
    // resumes after the last key.
    let server = KubeApiServer::start();
    let dir = TempDir::new("kube-standin");
    for ns in ["ab", "a", "a-b"] {
        for name in ["s1", "s0", "s2"] {
            server.apply(&service(ns, name, 80, json!({})));
        }
    }
    let want = [
        "a-b/s0", "a-b/s1", "a-b/s2", "a/s0", "a/s1", "a/s2", "ab/s0", "ab/s1", "ab/s2",
    ];
    let key = |svc: &Service| {
        format!(
            "{}/{}",
            svc.metadata.namespace.as_deref().unwrap_or_default(),
            name_of(svc)
        )
    };
    let rt = runtime();
    rt.block_on(async {
        let client = client(&server, &dir).await;
        let api: Api<Service> = Api::all(client.clone());
        let whole = api.list(&ListParams::default()).await.expect("list");
        assert_eq!(whole.items.iter().map(key).collect::<Vec<_>>(), want);
        for limit in 1..=4 {
            let mut all = Vec::new();
            let mut token: Option<String> = None;
            let mut pages = 0;
            loop {
                let mut params = ListParams::default().limit(limit);
                if let Some(t) = &token {
                    params = params.continue_token(t);
                }
                let page = api.list(&params).await.expect("a page");
                pages += 1;
                assert!(page.items.len() <= limit as usize, "limit {limit}");
                all.extend(page.items.iter().map(key));
                token = page.metadata.continue_.filter(|t| !t.is_empty());
                if token.is_none() {
                    break;
                }
                assert!(pages < 20, "limit {limit}: no end to the pages: {all:?}");
            }
            assert_eq!(all, want, "limit {limit}: every object once, in key order");
            assert_eq!(pages, want.len().div_ceil(limit as usize), "limit {limit}");
        }
    });
    server.assert_no_rejections();
}

#[test]
fn kube_event_recorder_posts_then_patches_events() {
    // The recorder needs only the deployed role; the core/v1 Event below needs more.
    let server = KubeApiServer::start_with(Options {
        rules: allow_all(),
        ..Options::default()
    });
    let dir = TempDir::new("kube-standin");
    let vs = server.apply(&virtual_service("demo", "calc", "networking.istio.io/v1"));
    let rt = runtime();
    rt.block_on(async {
        let client = client(&server, &dir).await;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "shadowplane".into(),
                instance: Some("shadowplane-0".into()),
            },
        );
        let reference = ObjectReference {
            api_version: Some("networking.istio.io/v1".into()),
            kind: Some("VirtualService".into()),
            name: Some("calc".into()),
            namespace: Some("demo".into()),
            uid: vs["metadata"]["uid"].as_str().map(str::to_string),
            resource_version: vs["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
            field_path: None,
        };
        let event = RecorderEvent {
            type_: EventType::Warning,
            reason: "InvalidConfig".into(),
            note: Some("weight 120 is over 100".into()),
            action: "Translate".into(),
            secondary: None,
        };
        recorder
            .publish(&event, &reference)
            .await
            .expect("first publish (POST)");
        recorder
            .publish(&event, &reference)
            .await
            .expect("second publish (PATCH)");
        // core/v1 Events are accepted too.
        let core: Api<CoreEvent> = Api::namespaced(client.clone(), "demo");
        let mut ev = CoreEvent {
            involved_object: reference.clone(),
            reason: Some("Legacy".into()),
            message: Some("old style".into()),
            type_: Some("Normal".into()),
            ..CoreEvent::default()
        };
        ev.metadata.name = Some("calc.legacy".into());
        core.create(&PostParams::default(), &ev)
            .await
            .expect("core/v1 create");
        let v1: Api<Event> = Api::namespaced(client.clone(), "demo");
        let listed = v1.list(&ListParams::default()).await.expect("list events");
        assert_eq!(listed.items.len(), 2);
    });
    server.assert_no_rejections();
    let events = server.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let recorded = events
        .iter()
        .find(|e| e["reason"] == "InvalidConfig")
        .expect("the recorder's event");
    assert_eq!(recorded["regarding"]["kind"], "VirtualService");
    assert_eq!(recorded["regarding"]["name"], "calc");
    assert_eq!(recorded["note"], "weight 120 is over 100");
    assert_eq!(recorded["type"], "Warning");
    assert_eq!(
        recorded["series"]["count"], 2,
        "the second publish patched the series"
    );
    let methods: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.path().starts_with("/apis/events.k8s.io"))
        .map(|r| format!("{} {}", r.method, r.status))
        .collect();
    assert_eq!(
        methods[..2],
        ["POST 201".to_string(), "PATCH 200".to_string()]
    );
}

#[test]
fn a_watch_ends_at_its_timeout_with_a_bookmark_and_the_watcher_resumes_without_relisting() {
    let server = KubeApiServer::start_with(Options {
        // No periodic bookmark: the only ones are those sent when a watch times out.
        bookmark_interval: Duration::from_secs(3600),
        ..Options::default()
    });
    let dir = TempDir::new("kube-standin");
    server.apply(&service("demo", "a", 80, json!({})));
    let rt = runtime();
    rt.block_on(async {
        let client = client(&server, &dir).await;
        let api: Api<Service> = Api::namespaced(client.clone(), "demo");
        let mut stream = watcher(api, watcher::Config::default().timeout(1)).boxed();
        until(&mut stream, "initial list", |ev| {
            matches!(ev, watcher::Event::InitDone)
        })
        .await;
        // Changes made while the watch comes and goes (every second) all arrive.
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let name = format!("b{i}");
            server.apply(&service("demo", &name, 80, json!({})));
            until(
                &mut stream,
                "a change across watch timeouts",
                |ev| matches!(ev, watcher::Event::Apply(s) if name_of(s) == name),
            )
            .await;
        }
        // A change outside the watched namespace: no event for this watcher, but the
        // bookmark sent when its watch times out carries the newer resourceVersion.
        let drain = tokio::spawn(async move { while stream.next().await.is_some() {} });
        server.apply(&service("elsewhere", "z", 80, json!({})));
        let global = server.resource_version();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        drain.abort();
        let last_watch = server
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.is_watch())
            .expect("a watch");
        let from: u64 = last_watch
            .query("resourceVersion")
            .and_then(|v| v.parse().ok())
            .expect("a resourceVersion");
        assert!(
            from >= global,
            "the re-watch starts from the bookmark's resourceVersion {global}, not {from}"
        );
    });
    server.assert_no_rejections();
    let requests = server.requests();
    let lists = requests.iter().filter(|r| !r.is_watch()).count();
    let watches: Vec<_> = requests.iter().filter(|r| r.is_watch()).collect();
    assert_eq!(lists, 1, "listed once: {requests:?}");
    assert!(
        watches.len() >= 2,
        "re-watched after each timeout: {watches:?}"
    );
    for w in &watches {
        assert_eq!(w.query("timeoutSeconds").as_deref(), Some("1"));
    }
    // Every re-watch starts from a resourceVersion the client got from the server.
    let mut from: Vec<u64> = watches
        .iter()
        .filter_map(|w| w.query("resourceVersion")?.parse().ok())
        .collect();
    assert_eq!(from.len(), watches.len());
    let sorted = {
        let mut s = from.clone();
        s.sort();
        s
    };
    assert_eq!(from, sorted, "resourceVersions never go back");
    from.dedup();
    assert!(
        from.len() >= 2,
        "the timeout bookmark advanced the resourceVersion: {from:?}"
    );
}
