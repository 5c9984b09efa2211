//! `shadowplane serve --kubernetes` end to end: the real `shadowplane` binary reads a
//! Kubernetes API server (the stand-in of `tests/common/kube_apiserver.rs`, which the real
//! `kube` client talks to), a real Envoy connects to it over ADS, and real HTTP backends on
//! 127.0.0.1 answer.
//!
//! The workloads are modelled as hostNetwork Pods on one node (Pod IP 127.0.0.1): each backend
//! is one Pod with labels `app`/`version` and one EndpointSlice whose `http` port is the
//! backend's port (the Service's `targetPort` is the name `http`).
//!
//! - every kind (Service + EndpointSlice + Pod, DestinationRule, VirtualService with a mirror,
//!   ServiceEntry, WorkloadEntry, Gateway) created, updated and deleted reaches Envoy, seen at
//!   the backends (routing, mirrored copies with the `-shadow` Host);
//! - a Pod label change (version v1 → v2) moves its endpoint between subsets, as an EDS-only
//!   push; an endpoint that is not ready is not served;
//! - a bad VirtualService is reported (Kubernetes Event on it, `/debug/errors`) and the last good
//!   config keeps routing;
//! - the API server restarting: serve keeps serving, resumes, and relists after a compacted
//!   resourceVersion (410 Gone);
//! - a cluster that serves networking.istio.io at v1beta1 only (and no aggregated discovery);
//! - two replicas on the same API server give identical versions;
//! - `--namespace` scopes what is watched.
//!
//! Every test ends by asserting that the stand-in refused nothing a real API server would
//! refuse. Every wait is bounded; every process is killed on drop.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kube_apiserver::{KubeApiServer, Options};
use common::process::ShadowplaneProcess;
use common::{Backend, EnvoyProcess, HttpClient, TempDir};
use serde_json::{json, Value};

const NS: &str = "demo";
const HOST: &str = "calc.demo.svc.cluster.local";
/// How long a change in the cluster may take to show at Envoy.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long serve may take to come back after the API server did (watch back-off).
const RESYNC_TIMEOUT: Duration = Duration::from_secs(45);

// ===== Kubernetes objects =====

fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.42",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": "http"}],
        },
    })
}

/// A running hostNetwork Pod on 127.0.0.1 whose `http` container port is `port`.
fn pod(ns: &str, name: &str, app: &str, version: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app, "version": version}},
        "spec": {
            "hostNetwork": true,
            "nodeName": "node-1",
            "containers": [{"name": "app", "image": "shadowplane-backend",
                            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}]}],
        },
        "status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// The EndpointSlice of Service `service` holding Pod `pod` at 127.0.0.1:`port`.
fn slice(ns: &str, service: &str, pod: &str, port: u16, ready: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{pod}"),
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": ["127.0.0.1"],
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": ns, "name": pod},
        }],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    })
}

fn istio(api_version: &str) -> String {
    format!("networking.istio.io/{api_version}")
}

fn destination_rule(v: &str, subsets: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": istio(v),
        "kind": "DestinationRule",
        "metadata": {"name": "calc", "namespace": NS},
        "spec": {
            "host": HOST,
            "subsets": subsets.iter().map(|(name, version)| json!({"name": name, "labels": {"version": version}})).collect::<Vec<_>>(),
        },
    })
}

/// VirtualService `calc`: every request to `subset`, mirrored (100 %) to `mirror` if given.
fn virtual_service(v: &str, subset: &str, mirror: Option<&str>) -> Value {
    let mut route = json!({
        "route": [{"destination": {"host": HOST, "subset": subset}}],
    });
    if let Some(m) = mirror {
        route["mirror"] = json!({"host": HOST, "subset": m});
        route["mirrorPercentage"] = json!({"value": 100.0});
    }
    json!({
        "apiVersion": istio(v),
        "kind": "VirtualService",
        "metadata": {"name": "calc", "namespace": NS},
        "spec": {"hosts": [HOST], "http": [route]},
    })
}

// ===== shadowplane serve =====

/// A running `shadowplane serve --kubernetes`, killed on drop.
struct Serve {
    process: ShadowplaneProcess,
    admin: SocketAddr,
    xds_port: u16,
}

impl Serve {
    fn start(kubeconfig: &Path, extra: &[&str]) -> Serve {
        let xds_port = common::free_port();
        let admin_port = common::free_port();
        let mut cmd = ShadowplaneProcess::command();
        cmd.arg("serve")
            .arg("--kubernetes")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--xds-listen", &format!("127.0.0.1:{xds_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--debounce", "50ms", "--debounce-max", "300ms"])
            .args(["--phase-timeout", "1s", "--drain-timeout", "1s"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info");
        Serve {
            process: ShadowplaneProcess::spawn(cmd),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            xds_port,
        }
    }

    fn try_get(&self, path: &str) -> Result<(u16, String), String> {
        common::simple_get(self.admin, path, Duration::from_secs(5))
    }

    fn get(&self, path: &str) -> String {
        match self.try_get(path) {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("serve admin {path}: {status} {body}\n{}", self.tail()),
            Err(e) => panic!("serve admin {path}: {e}\n{}", self.tail()),
        }
    }

    /// Wait for `/readyz` 200 (the first complete sync was applied).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            self.process.assert_running();
            match self.try_get("/readyz") {
                Ok((200, _)) => return,
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "serve not ready within 30s (last /readyz: {last})\n{}",
            self.tail()
        );
    }

    fn config(&self) -> Value {
        serde_json::from_str(&self.get("/debug/config")).expect("/debug/config is JSON")
    }

    /// The per-type versions of snapshot group `group`.
    fn versions(&self, group: &str) -> Value {
        self.config()["groups"][group]["versions"].clone()
    }

    /// The sum of the samples of metric `name` whose labels contain `label`.
    fn metric(&self, name: &str, label: &str) -> f64 {
        self.get("/metrics")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
                (metric == name && labels.contains(label))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum()
    }

    fn tail(&self) -> String {
        self.process.tail(40)
    }
}

/// `envoy-configs/<name>` pointed at `xds_port`, with admin port 0, node `node_id` and node
/// metadata NAMESPACE `demo`.
fn bootstrap(name: &str, xds_port: u16, node_id: &str) -> String {
    let path = common::repo_root().join("envoy-configs").join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("bootstrap YAML");
    doc["admin"]["address"]["socket_address"]["port_value"] = 0.into();
    doc["node"]["id"] = node_id.into();
    doc["node"]["metadata"]["NAMESPACE"] = NS.into();
    let clusters = doc["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("static clusters");
    let xds = clusters
        .iter_mut()
        .find(|c| c["name"].as_str() == Some("xds_cluster"))
        .expect("xds_cluster");
    xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"] = u64::from(xds_port).into();
    serde_yaml::to_string(&doc).expect("YAML serializes")
}

// ===== the rig =====

/// The stand-in with Service `calc` (port `port`), Pods and EndpointSlices for backends v1, v2
/// and v3, a DestinationRule with subsets v1..v3 and a VirtualService to v1; `serve`; Envoy.
struct Rig {
    api: KubeApiServer,
    _dir: TempDir,
    kubeconfig: PathBuf,
    v1: Backend,
    v2: Backend,
    v3: Backend,
    port: u16,
    serve: Serve,
    envoy: EnvoyProcess,
    client: HttpClient,
}

struct RigOptions<'a> {
    api: Options,
    /// networking.istio.io version the objects are written in.
    istio_version: &'a str,
    bootstrap: &'a str,
    serve_args: &'a [&'a str],
    /// Whether the DestinationRule and VirtualService exist at start (not on a cluster
    /// without Istio's CRDs).
    istio_objects: bool,
}

impl Default for RigOptions<'_> {
    fn default() -> Self {
        RigOptions {
            api: Options::default(),
            istio_version: "v1",
            bootstrap: "ads-delta.yaml",
            serve_args: &[],
            istio_objects: true,
        }
    }
}

impl Rig {
    fn start(opts: RigOptions<'_>) -> Rig {
        let api = KubeApiServer::start_with(opts.api);
        let dir = TempDir::new("kubernetes");
        let kubeconfig = api.write_kubeconfig(dir.path());
        let (v1, v2, v3) = (
            Backend::start("v1"),
            Backend::start("v2"),
            Backend::start("v3"),
        );
        let port = common::free_port();
        api.apply(&service(NS, "calc", port));
        for (b, version) in [(&v1, "v1"), (&v2, "v2"), (&v3, "v3")] {
            let name = format!("calc-{version}");
            api.apply(&pod(NS, &name, "calc", version, b.port()));
            api.apply(&slice(NS, "calc", &name, b.port(), true));
        }
        let v = opts.istio_version;
        if opts.istio_objects {
            api.apply(&destination_rule(
                v,
                &[("v1", "v1"), ("v2", "v2"), ("v3", "v3")],
            ));
            api.apply(&virtual_service(v, "v1", None));
        }
        let mut serve = Serve::start(&kubeconfig, opts.serve_args);
        serve.wait_ready();
        let mut envoy =
            EnvoyProcess::start(&bootstrap(opts.bootstrap, serve.xds_port, "envoy-kube"));
        envoy.wait_for_listener(port);
        Rig {
            api,
            _dir: dir,
            kubeconfig,
            v1,
            v2,
            v3,
            port,
            serve,
            envoy,
            client: HttpClient::new(),
        }
    }

    /// One request through Envoy to `host` on `port`: the answering backend's name.
    fn try_send_to(&self, port: u16, host: &str, path: &str) -> Result<String, String> {
        let r = self
            .client
            .try_request("GET", port, host, path, &[], Vec::new())?;
        if r.status != 200 {
            return Err(format!("{path}: {} {}", r.status, r.body_string()));
        }
        r.header("x-backend-version")
            .map(str::to_string)
            .ok_or_else(|| format!("{path}: no x-backend-version header"))
    }

    fn try_send(&self, path: &str) -> Result<String, String> {
        self.try_send_to(self.port, HOST, path)
    }

    /// Wait until `n` requests in a row to `host:port` are all answered by backends in
    /// `expected` and, together, by every one of them.
    fn wait_answered_by_at(&self, port: u16, host: &str, expected: &[&str], label: &str) {
        let want: BTreeSet<&str> = expected.iter().copied().collect();
        let mut attempt = 0;
        eventually(label, CHANGE_TIMEOUT, || {
            attempt += 1;
            let mut seen = BTreeSet::new();
            for i in 0..(4 * expected.len()) {
                let who = self.try_send_to(port, host, &format!("/{label}/{attempt}/{i}"))?;
                if !want.contains(who.as_str()) {
                    return Err(format!("answered by {who}, expected one of {want:?}"));
                }
                seen.insert(who);
            }
            if seen.len() == want.len() {
                Ok(())
            } else {
                Err(format!(
                    "answered by {seen:?} only, expected all of {want:?}"
                ))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.context()));
    }

    fn wait_answered_by(&self, expected: &[&str], label: &str) {
        self.wait_answered_by_at(self.port, HOST, expected, label);
    }

    /// Whether v3 gets a copy of a request sent now (waits a little).
    /// Copies of earlier requests may still arrive (Envoy mirrors asynchronously), so this
    /// looks for this request's path, not for one more request.
    fn mirrored_now(&self, path: &str) -> bool {
        let _ = self.try_send(path);
        !copies_of(&self.v3, |p| p == path, 1, Duration::from_millis(500)).is_empty()
    }

    /// The Events about the `calc` VirtualService, as the stand-in holds them.
    fn calc_events(&self) -> Vec<Value> {
        self.api
            .events()
            .into_iter()
            .filter(|e| {
                e["regarding"]["kind"] == "VirtualService" && e["regarding"]["name"] == "calc"
            })
            .collect()
    }

    /// Wait until the `calc` VirtualService has one Event whose series counts `count`, and
    /// check 2 s later that it still has one, counted once (a recurrence recorded by two live
    /// replicas must count once). Returns the Events; `other` is a replica whose log a failure
    /// shows.
    fn wait_calc_event_counted(&self, count: u64, other: (&str, &Serve)) -> Vec<Value> {
        eventually(
            "the recurrence after the rollout is recorded on the Event",
            CHANGE_TIMEOUT,
            || {
                let events = self.calc_events();
                match events.as_slice() {
                    [e] if e["series"]["count"] == count => Ok(()),
                    _ => Err(format!("{events:#?}")),
                }
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\n--- {} ---\n{}",
                self.context(),
                other.0,
                other.1.tail()
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        let events = self.calc_events();
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(
            events[0]["series"]["count"], count,
            "one occurrence, counted once by two live replicas: {events:#?}"
        );
        events
    }

    fn context(&self) -> String {
        let errors = self
            .serve
            .try_get("/debug/errors")
            .map(|(_, b)| b)
            .unwrap_or_else(|e| e);
        format!(
            "--- serve /debug/errors ---\n{errors}\n{}\n--- stand-in rejections ---\n{:#?}\n--- envoy stderr (tail) ---\n{}",
            self.serve.tail(),
            self.api.rejections(),
            tail(&self.envoy.stderr(), 20)
        )
    }

    /// Whether Envoy has a listener on `port` now.
    fn envoy_listens_on(&self, port: u16) -> bool {
        let (_, listeners) = self.envoy.admin_get("/listeners?format=json");
        let compact: String = listeners.chars().filter(|c| !c.is_whitespace()).collect();
        compact.contains(&format!("\"port_value\":{port}}}"))
            || compact.contains(&format!("_{port}\""))
    }

    fn wait_envoy_listener(&self, port: u16, present: bool, label: &str) {
        eventually(label, CHANGE_TIMEOUT, || {
            if self.envoy_listens_on(port) == present {
                Ok(())
            } else {
                Err(format!("listener on {port} present: {}", !present))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.context()));
    }

    /// The end of every test: nothing the real API server would refuse was sent.
    fn finish(self) {
        self.api.assert_no_rejections();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Retry `check` until it returns `Ok` or `within` has passed; `Err` with the last reason.
fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(why) if Instant::now() >= deadline => {
                return Err(format!("{what}: not within {within:?}; last: {why}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ===== the tests =====

#[test]
fn every_kind_created_updated_and_deleted_reaches_envoy() {
    let rig = Rig::start(RigOptions::default());
    // Created: Service + EndpointSlices + Pods, DestinationRule, VirtualService.
    rig.wait_answered_by(&["v1"], "created");
    assert!(!rig.mirrored_now("/created/no-mirror"), "no mirror yet");

    // VirtualService updated: to v2, mirrored to v3.
    rig.api.apply(&virtual_service("v1", "v2", Some("v3")));
    rig.wait_answered_by(&["v2"], "mirror");
    rig.v3.clear();
    for i in 0..5 {
        assert_eq!(
            rig.try_send(&format!("/mirror/copy/{i}")).as_deref(),
            Ok("v2")
        );
    }
    // A late copy of a request sent before `clear` may still arrive: count this batch only.
    let copies = copies_of(
        &rig.v3,
        |p| p.starts_with("/mirror/copy/"),
        5,
        Duration::from_secs(5),
    );
    assert_eq!(
        copies.len(),
        5,
        "v3 got a copy of every request: {copies:?}"
    );
    for c in &copies {
        assert_eq!(
            c.host.as_deref(),
            Some(format!("{HOST}-shadow").as_str()),
            "mirrored Host"
        );
    }

    // DestinationRule updated: subset v2 now selects the version=v1 Pod.
    rig.api.apply(&destination_rule(
        "v1",
        &[("v1", "v1"), ("v2", "v1"), ("v3", "v3")],
    ));
    rig.wait_answered_by(&["v1"], "subset-moved");

    // VirtualService deleted: no more mirror, the Service's endpoints answer; then the
    // DestinationRule goes too.
    rig.api.delete("VirtualService", NS, "calc");
    rig.api.delete("DestinationRule", NS, "calc");
    rig.wait_answered_by(&["v1", "v2", "v3"], "vs-deleted");
    rig.v3.clear();
    for i in 0..6 {
        rig.try_send(&format!("/vs-deleted/{i}"))
            .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    }
    let shadowed: Vec<_> = rig
        .v3
        .wait_quiet(Duration::from_millis(300), Duration::from_secs(2))
        .into_iter()
        .filter(|r| r.host.as_deref().is_some_and(|h| h.ends_with("-shadow")))
        .collect();
    assert!(shadowed.is_empty(), "the mirror is gone: {shadowed:?}");

    // ServiceEntry + WorkloadEntry created, updated, deleted.
    let ext = Backend::start("ext");
    let ext_port = common::free_port();
    let se = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "ext", "namespace": NS},
        "spec": {
            "hosts": ["ext.example.com"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": ext_port, "name": "http", "protocol": "HTTP"}],
            "workloadSelector": {"labels": {"app": "ext"}},
        },
    });
    let we = |port: u16| {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": "ext-1", "namespace": NS},
            "spec": {"address": "127.0.0.1", "labels": {"app": "ext"}, "ports": {"http": port}},
        })
    };
    rig.api.apply(&se);
    rig.api.apply(&we(ext.port()));
    rig.wait_envoy_listener(ext_port, true, "service entry listener");
    rig.wait_answered_by_at(ext_port, "ext.example.com", &["ext"], "workload-entry");
    rig.api.apply(&we(rig.v2.port()));
    rig.wait_answered_by_at(ext_port, "ext.example.com", &["v2"], "workload-entry-moved");
    rig.api.delete("WorkloadEntry", NS, "ext-1");
    eventually("no endpoint left", CHANGE_TIMEOUT, || {
        match rig.try_send_to(ext_port, "ext.example.com", "/we-deleted") {
            Err(e) if e.contains("503") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    rig.api.delete("ServiceEntry", NS, "ext");
    rig.wait_envoy_listener(ext_port, false, "service entry deleted");

    // Gateway created (with a VirtualService bound to it), updated, deleted.
    let gw_port = common::free_port();
    let gateway = |hosts: Value| {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": NS},
            "spec": {
                "selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": gw_port, "name": "http", "protocol": "HTTP"}, "hosts": hosts}],
            },
        })
    };
    rig.api.apply(&gateway(json!(["*"])));
    rig.api.apply(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "edge", "namespace": NS},
        "spec": {
            "hosts": ["www.example.com"],
            "gateways": ["edge"],
            "http": [{"route": [{"destination": {"host": HOST, "port": {"number": rig.port}}}]}],
        },
    }));
    rig.wait_envoy_listener(gw_port, true, "gateway listener");
    rig.wait_answered_by_at(gw_port, "www.example.com", &["v1", "v2", "v3"], "gateway");
    rig.api.apply(&gateway(json!(["api.example.com"])));
    eventually(
        "the gateway no longer serves www",
        CHANGE_TIMEOUT,
        || match rig.try_send_to(gw_port, "www.example.com", "/gw-updated") {
            Err(e) if e.contains("404") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    rig.api.delete("VirtualService", NS, "edge");
    rig.api.delete("Gateway", NS, "edge");
    rig.wait_envoy_listener(gw_port, false, "gateway deleted");

    // Service deleted (with its slices and Pods): its listener goes.
    rig.api.delete("Service", NS, "calc");
    for v in ["v1", "v2", "v3"] {
        rig.api
            .delete("EndpointSlice", NS, &format!("calc-calc-{v}"));
        rig.api.delete("Pod", NS, &format!("calc-{v}"));
    }
    rig.wait_envoy_listener(rig.port, false, "service deleted");
    rig.finish();
}

#[test]
fn a_pod_label_change_moves_its_endpoint_between_subsets_with_an_eds_only_push() {
    let rig = Rig::start(RigOptions {
        bootstrap: "ads-sotw.yaml",
        ..RigOptions::default()
    });
    rig.api.apply(&virtual_service("v1", "v2", None));
    rig.wait_answered_by(&["v2"], "before");
    let group = format!("namespace={NS}");
    let eventually_stable = || {
        // Let the pushes of the previous step settle.
        std::thread::sleep(Duration::from_millis(500));
    };
    eventually_stable();
    let before = rig.serve.versions(&group);
    assert!(
        before.is_object(),
        "versions of group {group}: {}",
        rig.serve.config()["groups"]
    );
    let pushes = |t: &str| rig.serve.metric("shadowplane_xds_pushes_total", t);
    let (lds, rds, cds, eds) = (
        pushes("envoy.config.listener.v3.Listener"),
        pushes("envoy.config.route.v3.RouteConfiguration"),
        pushes("envoy.config.cluster.v3.Cluster"),
        pushes("envoy.config.endpoint.v3.ClusterLoadAssignment"),
    );

    // The Pod behind backend v1 becomes version v2: subset v2 has both endpoints.
    rig.api
        .apply(&pod(NS, "calc-v1", "calc", "v2", rig.v1.port()));
    rig.wait_answered_by(&["v1", "v2"], "moved");
    eventually_stable();
    let after = rig.serve.versions(&group);
    for t in [
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    ] {
        assert_eq!(
            before[t], after[t],
            "{t} unchanged by an endpoint-only change"
        );
    }
    let cla = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    assert_ne!(before[cla], after[cla], "the endpoints changed");
    assert_eq!(
        pushes("envoy.config.listener.v3.Listener"),
        lds,
        "no LDS push"
    );
    assert_eq!(
        pushes("envoy.config.route.v3.RouteConfiguration"),
        rds,
        "no RDS push"
    );
    assert_eq!(
        pushes("envoy.config.cluster.v3.Cluster"),
        cds,
        "no CDS push"
    );
    assert!(
        pushes("envoy.config.endpoint.v3.ClusterLoadAssignment") > eds,
        "an EDS push"
    );

    // Back to v1: subset v2 is the v2 Pod alone again.
    rig.api
        .apply(&pod(NS, "calc-v1", "calc", "v1", rig.v1.port()));
    rig.wait_answered_by(&["v2"], "moved-back");

    // An endpoint that is not ready is not served: subset v2 → v1's Pod labelled v2 but not
    // ready, and the v2 Pod not ready either → no endpoint.
    rig.api
        .apply(&slice(NS, "calc", "calc-v2", rig.v2.port(), false));
    eventually(
        "a not-ready endpoint is dropped",
        CHANGE_TIMEOUT,
        || match rig.try_send("/not-ready") {
            Err(e) if e.contains("503") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    rig.api
        .apply(&slice(NS, "calc", "calc-v2", rig.v2.port(), true));
    rig.wait_answered_by(&["v2"], "ready-again");
    rig.finish();
}

#[test]
fn a_bad_virtual_service_is_reported_on_the_object_and_the_last_good_config_keeps_routing() {
    let rig = Rig::start(RigOptions::default());
    rig.wait_answered_by(&["v1"], "good");
    // No hosts: an error. The object is reported and nothing changes at Envoy.
    let mut bad = virtual_service("v1", "v2", None);
    bad["spec"]["hosts"] = json!([]);
    rig.api.apply(&bad);
    let event = eventually("an Event on the VirtualService", CHANGE_TIMEOUT, || {
        rig.api
            .events()
            .into_iter()
            .find(|e| {
                e["regarding"]["kind"] == "VirtualService" && e["regarding"]["name"] == "calc"
            })
            .ok_or_else(|| format!("events: {:#?}", rig.api.events()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    assert_eq!(event["type"], "Warning", "{event:#}");
    assert_eq!(event["regarding"]["namespace"], NS, "{event:#}");
    assert_eq!(
        event["regarding"]["apiVersion"], "networking.istio.io/v1",
        "{event:#}"
    );
    assert!(
        event["note"].as_str().is_some_and(|n| n.contains("host")),
        "the note says what is wrong: {event:#}"
    );
    let errors = rig.serve.get("/debug/errors");
    assert!(
        errors.contains("virtualservices/calc") && errors.contains("host"),
        "/debug/errors names the object and the problem:\n{errors}"
    );
    for i in 0..5 {
        assert_eq!(
            rig.try_send(&format!("/bad/{i}")).as_deref(),
            Ok("v1"),
            "the last good config keeps routing\n{}",
            rig.context()
        );
    }
    // Another reading with the same error (an unrelated change): still reported, still the
    // last good routing, and no second Event (nor a series: the error never went away).
    rig.api.apply(&destination_rule(
        "v1",
        &[("v1", "v1"), ("v2", "v2"), ("v3", "v3"), ("v4", "v4")],
    ));
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..3 {
        assert_eq!(
            rig.try_send(&format!("/still-bad/{i}")).as_deref(),
            Ok("v1"),
            "the last good config keeps routing\n{}",
            rig.context()
        );
    }
    let reported: Vec<Value> = rig
        .api
        .events()
        .into_iter()
        .filter(|e| e["regarding"]["name"] == "calc" && e["regarding"]["kind"] == "VirtualService")
        .collect();
    assert_eq!(
        reported.len(),
        1,
        "the same error is reported once while it lasts, not once per reading: {reported:#?}"
    );
    assert_eq!(reported[0]["reason"], "ConfigError");
    assert!(reported[0]["series"].is_null(), "{:#}", reported[0]);
    // The new subset selects no endpoint: a warning, posted on the DestinationRule.
    let warning = eventually(
        "a warning Event on the DestinationRule",
        CHANGE_TIMEOUT,
        || {
            rig.api
                .events()
                .into_iter()
                .find(|e| e["regarding"]["kind"] == "DestinationRule")
                .ok_or_else(|| format!("events: {:#?}", rig.api.events()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    assert_eq!(warning["reason"], "ConfigWarning", "{warning:#}");
    assert!(
        warning["note"].as_str().is_some_and(|n| n.contains("v4")),
        "{warning:#}"
    );
    // Reported once while it lasts: one create per Event (the VirtualService's and the
    // DestinationRule's), never a create that finds it already there, nor a patch.
    std::thread::sleep(Duration::from_secs(1));
    let event_requests = |method: &str, status: u16| {
        rig.api
            .requests()
            .iter()
            .filter(|r| r.method == method && r.status == status)
            .filter(|r| r.path().starts_with("/apis/events.k8s.io/"))
            .count()
    };
    assert_eq!(rig.api.events().len(), 2, "{:#?}", rig.api.events());
    assert_eq!(event_requests("POST", 201), 2, "one create per Event");
    assert_eq!(
        event_requests("POST", 409),
        0,
        "no create of an existing Event"
    );
    assert_eq!(event_requests("PATCH", 200), 0, "nothing recurred");
    // Fixed: the new route applies and the errors clear.
    rig.api.apply(&virtual_service("v1", "v2", None));
    rig.wait_answered_by(&["v2"], "fixed");
    let errors = rig.serve.get("/debug/errors");
    assert!(errors.starts_with("no config errors"), "{errors}");

    // A rollout: the replica that created the Event is replaced by two new ones, which never
    // wrote it, and the Event was last written long ago (its TTL would delete it soon). The
    // error comes back: the new replicas' creates get AlreadyExists; the recurrence is still
    // recorded on the Event (series count 2), once, with both replicas live.
    let mut rig = rig;
    rig.serve = Serve::start(&rig.kubeconfig, &[]);
    rig.serve.wait_ready();
    let mut second = Serve::start(&rig.kubeconfig, &[]);
    second.wait_ready();
    let mut old = reported[0].clone();
    old["eventTime"] = json!("2026-01-01T00:00:00.000000Z");
    rig.api.apply(&old);
    rig.api.apply(&bad);
    let events = rig.wait_calc_event_counted(2, ("second replica", &second));
    assert_eq!(
        events[0]["metadata"]["name"],
        reported[0]["metadata"]["name"]
    );
    assert!(
        events[0]["series"]["lastObservedTime"].is_string(),
        "{events:#?}"
    );
    drop(second);
    rig.finish();
}

#[test]
fn serve_survives_api_server_restarts_and_relists_after_compaction() {
    let mut rig = Rig::start(RigOptions::default());
    rig.wait_answered_by(&["v1"], "before");

    // Down, changed, compacted, back: the old resourceVersions are gone (410), serve relists.
    rig.api.stop();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rig.serve.try_get("/healthz").map(|r| r.0), Ok(200));
    rig.wait_answered_by(&["v1"], "api-down");
    rig.api.apply(&virtual_service("v1", "v2", None));
    rig.api.compact();
    let lists_before = rig
        .api
        .requests()
        .iter()
        .filter(|r| !r.is_watch() && r.path().ends_with("/virtualservices"))
        .count();
    rig.api.resume();
    eventually(
        "routing follows the change made while down",
        RESYNC_TIMEOUT,
        || match rig.try_send("/after-compaction") {
            Ok(v) if v == "v2" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    rig.wait_answered_by(&["v2"], "after-compaction");
    let lists_after = rig
        .api
        .requests()
        .iter()
        .filter(|r| !r.is_watch() && r.path().ends_with("/virtualservices"))
        .count();
    assert!(
        lists_after > lists_before,
        "the VirtualServices were listed again after 410 Gone"
    );
    assert!(
        rig.api.expired_watches() >= 1,
        "a watch from a compacted resourceVersion got 410 Expired"
    );

    // A plain restart: the watches resume; a change made after it arrives.
    rig.api.restart();
    rig.api.apply(&virtual_service("v1", "v3", None));
    eventually(
        "routing follows a change made after the restart",
        RESYNC_TIMEOUT,
        || match rig.try_send("/after-restart") {
            Ok(v) if v == "v3" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    assert_eq!(rig.serve.try_get("/readyz").map(|r| r.0), Ok(200));
    rig.finish();
}

#[test]
fn a_cluster_serving_istio_at_v1beta1_only_works() {
    let rig = Rig::start(RigOptions {
        api: Options {
            istio_versions: vec!["v1beta1".to_string()],
            aggregated_discovery: false,
            ..Options::default()
        },
        istio_version: "v1beta1",
        ..RigOptions::default()
    });
    rig.wait_answered_by(&["v1"], "v1beta1");
    rig.api.apply(&virtual_service("v1beta1", "v2", Some("v3")));
    rig.wait_answered_by(&["v2"], "v1beta1-mirror");
    assert!(rig.mirrored_now("/v1beta1/mirrored"), "v3 gets copies");
    let istio_paths: Vec<String> = rig
        .api
        .requests()
        .into_iter()
        .map(|r| r.path().to_string())
        .filter(|p| p.contains("networking.istio.io/"))
        .collect();
    assert!(
        istio_paths.iter().any(|p| p.contains("/v1beta1/")),
        "{istio_paths:?}"
    );
    rig.finish();
}

#[test]
fn istio_crds_installed_after_start_are_watched_and_their_pending_first_list_holds_nothing_back() {
    // A cluster without Istio's CRDs: serve gets ready on Services alone and routes to every
    // ready endpoint; the missing group is looked for again every 200ms here (30s by default).
    let rig = Rig::start(RigOptions {
        api: Options {
            istio_versions: Vec::new(),
            ..Options::default()
        },
        istio_objects: false,
        serve_args: &["--kube-discovery-interval", "200ms"],
        ..RigOptions::default()
    });
    rig.wait_answered_by(&["v1", "v2", "v3"], "no-istio");
    rig.api
        .apply(&slice(NS, "calc", "calc-v3", rig.v3.port(), false));
    rig.wait_answered_by(&["v1", "v2"], "no-istio-endpoint");

    // The CRDs are installed and the objects created; the first list of VirtualServices is
    // slow (held by the stand-in).
    rig.api.hold_lists("virtualservices");
    rig.api.set_istio_versions(&["v1"]);
    rig.api.apply(&destination_rule(
        "v1",
        &[("v1", "v1"), ("v2", "v2"), ("v3", "v3")],
    ));
    rig.api.apply(&virtual_service("v1", "v1", None));
    eventually(
        "serve discovers the VirtualServices and lists them",
        CHANGE_TIMEOUT,
        || match rig.api.held_lists("virtualservices") {
            0 => Err("no VirtualService list yet".to_string()),
            _ => Ok(()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    // Meanwhile a Service change still goes out, and serve stays ready.
    rig.api
        .apply(&slice(NS, "calc", "calc-v3", rig.v3.port(), true));
    rig.wait_answered_by(&["v1", "v2", "v3"], "istio-list-pending-endpoint");
    assert_eq!(rig.serve.try_get("/readyz").map(|r| r.0), Ok(200));
    assert_eq!(
        rig.api.held_lists("virtualservices"),
        1,
        "the VirtualService list was still pending"
    );
    // The list completes: the VirtualService reaches Envoy.
    rig.api.release_lists("virtualservices");
    rig.wait_answered_by(&["v1"], "virtual-service-after-install");
    rig.finish();
}

#[test]
fn two_replicas_on_one_api_server_serve_identical_versions() {
    let rig = Rig::start(RigOptions::default());
    rig.wait_answered_by(&["v1"], "replica-a");
    let mut second = Serve::start(&rig.kubeconfig, &[]);
    second.wait_ready();
    let mut envoy_b = EnvoyProcess::start(&bootstrap(
        "ads-delta.yaml",
        second.xds_port,
        "envoy-kube-b",
    ));
    envoy_b.wait_for_listener(rig.port);
    let group = format!("namespace={NS}");
    let same = |label: &str| {
        eventually(label, CHANGE_TIMEOUT, || {
            let a = rig.serve.versions(&group);
            let b = second.versions(&group);
            let va = rig.serve.config()["version"].clone();
            let vb = second.config()["version"].clone();
            if a.is_object() && a == b && va == vb {
                Ok(())
            } else {
                Err(format!("replica a: {va} {a}\nreplica b: {vb} {b}"))
            }
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\n--- replica b ---\n{}",
                rig.context(),
                second.tail()
            )
        })
    };
    same("identical versions");
    rig.api.apply(&virtual_service("v1", "v2", Some("v3")));
    rig.wait_answered_by(&["v2"], "replica-a-changed");
    same("identical versions after a change");
    rig.api
        .apply(&pod(NS, "calc-v1", "calc", "v2", rig.v1.port()));
    rig.wait_answered_by(&["v1", "v2"], "replica-a-pod");
    same("identical versions after an endpoint change");

    // One Event per diagnostic, not one per replica: both replicas report a bad
    // VirtualService and name its Event alike; the first POST creates it, the other gets 409
    // AlreadyExists and leaves it.
    let mut bad = virtual_service("v1", "v2", None);
    bad["spec"]["hosts"] = json!([]);
    rig.api.apply(&bad);
    let event_writes = |method: &str, status: u16| {
        rig.api
            .requests()
            .iter()
            .filter(|r| r.method == method && r.status == status)
            .filter(|r| r.path().starts_with("/apis/events.k8s.io/"))
            .count()
    };
    eventually(
        "each replica posted each Event once: one created, one AlreadyExists",
        CHANGE_TIMEOUT,
        || {
            let events = rig.api.events();
            let (created, exists) = (event_writes("POST", 201), event_writes("POST", 409));
            if rig.calc_events().len() == 1 && created == events.len() && exists == events.len() {
                Ok(())
            } else {
                Err(format!(
                    "{created} created, {exists} AlreadyExists, events: {events:#?}"
                ))
            }
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n--- replica b ---\n{}",
            rig.context(),
            second.tail()
        )
    });
    let mut distinct = BTreeSet::new();
    for e in rig.api.events() {
        let key = (
            e["regarding"]["uid"].to_string(),
            e["reason"].to_string(),
            e["note"].to_string(),
        );
        assert!(distinct.insert(key), "two Events for one diagnostic: {e:#}");
    }
    let first = rig.calc_events().remove(0);
    assert!(first["series"].is_null(), "{first:#}");

    // Fixed, then broken again alike: the replica that created the Event records the
    // recurrence on it (series count 2, one PATCH); the other leaves it; still one Event.
    rig.api.apply(&virtual_service("v1", "v2", None));
    eventually("both replicas serve the fix", CHANGE_TIMEOUT, || {
        for (who, serve) in [("a", &rig.serve), ("b", &second)] {
            let errors = serve.get("/debug/errors");
            if !errors.starts_with("no config errors") {
                return Err(format!("replica {who}: {errors}"));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    // Events look at the served state a few times a second: an error fixed and back within
    // that is one occurrence. Let both replicas see the fix.
    std::thread::sleep(Duration::from_secs(1));
    rig.api.apply(&bad);
    let again = eventually(
        "the recurrence is recorded as a series",
        CHANGE_TIMEOUT,
        || {
            let events = rig.calc_events();
            match events.as_slice() {
                [e] if e["series"]["count"] == 2 => Ok(e.clone()),
                _ => Err(format!("{events:#?}")),
            }
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n--- replica b ---\n{}",
            rig.context(),
            second.tail()
        )
    });
    assert_eq!(again["metadata"]["name"], first["metadata"]["name"]);
    assert_eq!(again["eventTime"], first["eventTime"], "{again:#}");
    assert!(again["series"]["lastObservedTime"].is_string(), "{again:#}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        event_writes("PATCH", 200),
        1,
        "the recurrence is recorded once"
    );
    assert_eq!(rig.calc_events().len(), 1);
    assert_eq!(rig.calc_events()[0]["series"]["count"], 2);

    // A rollout: the error is fixed, replica b is replaced by a new replica c that never
    // wrote the Event, and the Event was last written long ago by a replica that is gone
    // (rewritten in the stand-in, so replica a's remembered version is stale too). The error
    // comes back: the recurrence is still recorded, once (count 3), by whichever replica
    // reads the Event first; the other sees it just observed (or gets 409 Conflict on its
    // precondition) and leaves it.
    rig.api.apply(&virtual_service("v1", "v2", None));
    eventually("both replicas serve the fix", CHANGE_TIMEOUT, || {
        for (who, serve) in [("a", &rig.serve), ("b", &second)] {
            let errors = serve.get("/debug/errors");
            if !errors.starts_with("no config errors") {
                return Err(format!("replica {who}: {errors}"));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.context()));
    drop(envoy_b);
    drop(second);
    let mut third = Serve::start(&rig.kubeconfig, &[]);
    third.wait_ready();
    let mut old = rig.calc_events().remove(0);
    old["series"]["lastObservedTime"] = json!("2026-01-01T00:00:00.000000Z");
    old["eventTime"] = json!("2026-01-01T00:00:00.000000Z");
    old["reportingInstance"] = json!("shadowplane-gone");
    rig.api.apply(&old);
    rig.api.apply(&bad);
    let events = rig.wait_calc_event_counted(3, ("replica c", &third));
    assert_eq!(events[0]["metadata"]["name"], first["metadata"]["name"]);
    assert_ne!(
        events[0]["series"]["lastObservedTime"], "2026-01-01T00:00:00.000000Z",
        "{events:#?}"
    );
    assert_eq!(event_writes("PATCH", 200), 2, "one PATCH per recurrence");
    rig.finish();
}

#[test]
fn the_namespace_flag_scopes_what_is_watched() {
    let rig = Rig::start(RigOptions {
        serve_args: &["--namespace", NS],
        ..RigOptions::default()
    });
    rig.wait_answered_by(&["v1"], "scoped");
    // Another namespace's Service, Pod, slice and VirtualService: not served.
    let other_port = common::free_port();
    rig.api.apply(&service("other", "calc", other_port));
    rig.api
        .apply(&pod("other", "calc-x", "calc", "v1", rig.v3.port()));
    rig.api
        .apply(&slice("other", "calc", "calc-x", rig.v3.port(), true));
    // A change in the watched namespace still arrives (and proves the reading went through).
    rig.api.apply(&virtual_service("v1", "v2", None));
    rig.wait_answered_by(&["v2"], "scoped-change");
    assert!(
        !rig.envoy_listens_on(other_port),
        "the Service of namespace other is not served"
    );
    let config = rig.serve.config().to_string();
    assert!(
        !config.contains("calc.other.svc.cluster.local"),
        "nothing of namespace other in the served config"
    );
    // Every resource request was scoped to the namespace.
    let unscoped: Vec<String> = rig
        .api
        .requests()
        .into_iter()
        .filter(|r| {
            let p = r.path();
            let last = p.rsplit('/').next().unwrap_or_default();
            let resource = [
                "services",
                "pods",
                "endpointslices",
                "virtualservices",
                "destinationrules",
                "serviceentries",
                "workloadentries",
                "gateways",
            ]
            .contains(&last);
            r.method == "GET" && resource && !p.contains(&format!("/namespaces/{NS}/"))
        })
        .map(|r| r.uri)
        .collect();
    assert!(
        unscoped.is_empty(),
        "requests outside --namespace: {unscoped:?}"
    );
    rig.finish();
}

#[test]
fn readyz_waits_for_the_first_complete_sync() {
    let mut api = KubeApiServer::start();
    let dir = TempDir::new("kubernetes");
    let kubeconfig = api.write_kubeconfig(dir.path());
    api.apply(&service(NS, "calc", common::free_port()));
    api.stop();
    let serve = Serve::start(&kubeconfig, &[]);
    let status = eventually("admin answers", Duration::from_secs(20), || {
        serve.try_get("/readyz").map(|(s, _)| s)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", serve.tail()));
    assert_eq!(status, 503, "not ready before the API server was read");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(serve.try_get("/readyz").map(|r| r.0), Ok(503));
    assert_eq!(serve.try_get("/healthz").map(|r| r.0), Ok(200));
    api.resume();
    eventually(
        "ready once the objects are listed",
        RESYNC_TIMEOUT,
        || match serve.try_get("/readyz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", serve.tail()));
    let config = serve.config().to_string();
    assert!(config.contains(HOST), "the Service is served");
    api.assert_no_rejections();
}

/// The number of resources `serve` pushed, all types together.
fn pushed_resources(serve: &Serve) -> f64 {
    serve.metric("shadowplane_xds_push_resources_total", "")
}

/// Whether Envoy `node_id` is connected to `serve` with every type it subscribed SYNCED.
fn synced(serve: &Serve, node_id: &str) -> Result<(), String> {
    let proxies: Value = serde_json::from_str(&serve.try_get("/debug/proxies")?.1)
        .map_err(|e| format!("/debug/proxies: {e}"))?;
    let mine: Vec<&Value> = proxies["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["node_id"] == node_id)
        .collect();
    let types: Vec<&Value> = mine
        .iter()
        .flat_map(|p| p["types"].as_array().into_iter().flatten())
        .collect();
    if types.len() >= 4 && types.iter().all(|t| t["sync"] == "SYNCED") {
        Ok(())
    } else {
        Err(format!("{node_id} on this replica: {mine:?}"))
    }
}

#[test]
fn an_envoy_moving_to_the_other_replica_gets_no_spurious_push() {
    let api = KubeApiServer::start();
    let dir = TempDir::new("kubernetes");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let (v1, v2) = (Backend::start("v1"), Backend::start("v2"));
    let port = common::free_port();
    api.apply(&service(NS, "calc", port));
    for (b, version) in [(&v1, "v1"), (&v2, "v2")] {
        let name = format!("calc-{version}");
        api.apply(&pod(NS, &name, "calc", version, b.port()));
        api.apply(&slice(NS, "calc", &name, b.port(), true));
    }
    api.apply(&destination_rule("v1", &[("v1", "v1"), ("v2", "v2")]));
    api.apply(&virtual_service("v1", "v2", None));
    let mut a = Serve::start(&kubeconfig, &[]);
    let mut b = Serve::start(&kubeconfig, &[]);
    a.wait_ready();
    b.wait_ready();
    // One Envoy whose xDS cluster has both replicas (like the Service in front of them).
    let mut boot: serde_yaml::Value =
        serde_yaml::from_str(&bootstrap("ads-delta.yaml", a.xds_port, "envoy-mover"))
            .expect("YAML");
    let endpoints = &mut boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
        ["lb_endpoints"];
    let first = endpoints[0].clone();
    let mut second = first.clone();
    second["endpoint"]["address"]["socket_address"]["port_value"] = u64::from(b.xds_port).into();
    *endpoints = serde_yaml::Value::Sequence(vec![first, second]);
    let mut envoy = EnvoyProcess::start(&serde_yaml::to_string(&boot).expect("YAML"));
    envoy.wait_for_listener(port);
    let client = HttpClient::new();
    let answer = |path: &str| -> Result<String, String> {
        let r = client.try_request("GET", port, HOST, path, &[], Vec::new())?;
        r.header("x-backend-version")
            .map(str::to_string)
            .ok_or_else(|| format!("{} {}", r.status, r.body_string()))
    };
    assert_eq!(answer("/first").as_deref(), Ok("v2"));
    // Which replica it is on; the other has pushed nothing yet.
    let (on, other) = eventually("envoy synced on one replica", CHANGE_TIMEOUT, || {
        if synced(&a, "envoy-mover").is_ok() {
            Ok(true)
        } else if synced(&b, "envoy-mover").is_ok() {
            Ok(false)
        } else {
            Err("not synced on either".to_string())
        }
    })
    .map(|on_a| if on_a { (a, b) } else { (b, a) })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        pushed_resources(&on) > 0.0,
        "the replica Envoy is on pushed its resources (and the metric exists)"
    );
    assert_eq!(
        pushed_resources(&other),
        0.0,
        "no Envoy on the other replica yet"
    );
    // The replica it is on goes away: Envoy reconnects to the other, which has the same
    // versions, so nothing needs to be sent again.
    drop(on);
    eventually("envoy synced on the other replica", RESYNC_TIMEOUT, || {
        synced(&other, "envoy-mover")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", other.tail()));
    assert_eq!(answer("/moved").as_deref(), Ok("v2"));
    assert_eq!(
        pushed_resources(&other),
        0.0,
        "an Envoy reconnecting with the same versions gets no resource again:\n{}",
        other.get("/metrics")
    );
    // A real change still reaches it through the new replica.
    api.apply(&virtual_service("v1", "v1", None));
    eventually("a change after the move", CHANGE_TIMEOUT, || {
        match answer("/changed") {
            Ok(v) if v == "v1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", other.tail()));
    assert!(pushed_resources(&other) > 0.0, "the change was pushed");
    drop(envoy);
    api.assert_no_rejections();
}

#[test]
fn kubernetes_objects_and_config_files_are_served_together() {
    let files = TempDir::new("kubernetes-files");
    let ext = Backend::start("file-backend");
    let file_port = common::free_port();
    files.write(
        "files.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: files
  namespace: {NS}
spec:
  hosts:
  - files.example.com
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: {file_port}
    name: http
    protocol: HTTP
  endpoints:
  - address: 127.0.0.1
    ports:
      http: {}
",
            ext.port()
        ),
    );
    let config = files.path().to_string_lossy().into_owned();
    let args = ["--config", config.as_str()];
    let rig = Rig::start(RigOptions {
        serve_args: &args,
        ..RigOptions::default()
    });
    rig.wait_answered_by(&["v1"], "kubernetes-part");
    rig.wait_envoy_listener(file_port, true, "file listener");
    rig.wait_answered_by_at(
        file_port,
        "files.example.com",
        &["file-backend"],
        "file-part",
    );
    // A Kubernetes VirtualService can route the file's host.
    rig.api.apply(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "files", "namespace": NS},
        "spec": {
            "hosts": ["files.example.com"],
            "http": [{"route": [{"destination": {"host": HOST, "subset": "v2", "port": {"number": rig.port}}}]}],
        },
    }));
    rig.wait_answered_by_at(
        file_port,
        "files.example.com",
        &["v2"],
        "file-host-routed-by-kubernetes",
    );
    rig.finish();
}

/// The requests `backend` recorded whose path satisfies `wanted`, once there are `n` of them
/// or `timeout` has passed.
fn copies_of(
    backend: &Backend,
    wanted: impl Fn(&str) -> bool,
    n: usize,
    timeout: Duration,
) -> Vec<common::Recorded> {
    let deadline = Instant::now() + timeout;
    loop {
        let found: Vec<_> = backend
            .requests()
            .into_iter()
            .filter(|r| wanted(&r.path))
            .collect();
        if found.len() >= n || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
