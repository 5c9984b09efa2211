//! `deploy/kubernetes/`: every manifest is a well-typed Kubernetes object (nothing the typed
//! struct would drop), RBAC is read-only except Events, the Deployment's arguments are accepted
//! by the real binary (which then fails only for want of a cluster), probes and Services point
//! at the container's ports, the Envoy sidecar's bootstrap passes a real Envoy, and the
//! kustomization lists every file.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    common::repo_root().join("deploy/kubernetes")
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The one document of `name` as `T`, checked to lose nothing: the typed object serialized back
/// is exactly the YAML (k8s-openapi ignores fields it does not know, which the API server would
/// reject or drop).
fn typed<T: DeserializeOwned + Serialize>(name: &str) -> T {
    let raw: Value = serde_yaml::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let object: T =
        serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{name}: not the type: {e}"));
    let back = serde_json::to_value(&object).expect("serialize");
    assert_eq!(
        back, raw,
        "{name}: fields the typed object drops (or a wrong spelling)"
    );
    object
}

/// Every manifest file (not the kustomization), sorted.
fn manifest_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(deploy_dir())
        .expect("read deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    names.sort();
    names
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
}

#[test]
fn every_manifest_is_its_typed_kubernetes_object_and_listed_in_the_kustomization() {
    let mut kinds = BTreeMap::new();
    for name in manifest_files() {
        let text = read(&name);
        assert_eq!(
            serde_yaml::Deserializer::from_str(&text).count(),
            1,
            "{name}: one object per file"
        );
        let raw: Value = serde_yaml::from_str(&text).expect("YAML");
        let kind = raw["kind"].as_str().expect("kind").to_string();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(&name)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&name)),
            "ClusterRole" => drop(typed::<ClusterRole>(&name)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&name)),
            "Deployment" => drop(typed::<Deployment>(&name)),
            "Service" => drop(typed::<Service>(&name)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(&name)),
            "ConfigMap" => drop(typed::<ConfigMap>(&name)),
            other => panic!("{name}: unexpected kind {other}"),
        }
        kinds.insert(name, kind);
    }
    let expected: BTreeMap<String, String> = [
        ("clusterrole.yaml", "ClusterRole"),
        ("clusterrolebinding.yaml", "ClusterRoleBinding"),
        ("deployment.yaml", "Deployment"),
        ("envoy-bootstrap-configmap.yaml", "ConfigMap"),
        ("envoy-sidecar-example.yaml", "Deployment"),
        ("namespace.yaml", "Namespace"),
        ("poddisruptionbudget.yaml", "PodDisruptionBudget"),
        ("service-admin.yaml", "Service"),
        ("service.yaml", "Service"),
        ("serviceaccount.yaml", "ServiceAccount"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(kinds, expected);

    let k: Kustomization =
        serde_yaml::from_str(&read("kustomization.yaml")).expect("kustomization");
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    let listed: BTreeSet<&String> = k.resources.iter().collect();
    assert_eq!(
        listed.len(),
        k.resources.len(),
        "listed twice: {:?}",
        k.resources
    );
    assert_eq!(
        listed,
        kinds.keys().collect::<BTreeSet<_>>(),
        "the kustomization must list exactly the manifest files"
    );
    // Namespace and RBAC before what uses them (kubectl apply -k sorts anyway; plain -f does not).
    assert_eq!(k.resources[0], "namespace.yaml");
}

#[test]
fn control_plane_objects_fit_together() {
    let ns: Namespace = typed("namespace.yaml");
    let ns = ns.metadata.name.expect("namespace name");
    assert_eq!(ns, "shadowplane-system");
    let sa: ServiceAccount = typed("serviceaccount.yaml");
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns.as_str()));
    let role: ClusterRole = typed("clusterrole.yaml");
    let binding: ClusterRoleBinding = typed("clusterrolebinding.yaml");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.clone().expect("role name")
    );
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns.as_str()));

    let deployment: Deployment = typed("deployment.yaml");
    assert_eq!(deployment.metadata.namespace.as_deref(), Some(ns.as_str()));
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    let selector = spec.selector.match_labels.clone().expect("matchLabels");
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert!(pod
        .termination_grace_period_seconds
        .is_some_and(|s| s >= 10));
    let pod_security = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    // Spread across nodes.
    let spread = pod
        .topology_spread_constraints
        .as_ref()
        .expect("topologySpreadConstraints");
    assert!(spread
        .iter()
        .any(|c| c.topology_key == "kubernetes.io/hostname"
            && c.label_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                == Some(&selector)));

    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("shadowplane:dev"),
        "the Dockerfile/docker-compose image"
    );
    let security = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert!(security
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .is_none());
    let resources = c.resources.as_ref().expect("resources");
    assert!(resources
        .requests
        .as_ref()
        .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    assert!(resources
        .limits
        .as_ref()
        .is_some_and(|r| r.contains_key("memory")));

    // Probes on the admin port, which is where --admin-listen puts it.
    let args = c.args.clone().expect("args");
    let admin_port = port_of_flag(&args, "--admin-listen");
    let xds_port = port_of_flag(&args, "--xds-listen");
    let ports = container_ports(c);
    assert_eq!(
        ports.values().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([admin_port, xds_port])
    );
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            resolve_port(&get.port, &ports),
            admin_port,
            "{path} probe port"
        );
    }

    // The Services select the pods and reach the ports the container listens on.
    for (file, name, port, app_protocol) in [
        ("service.yaml", "shadowplane", xds_port, "grpc"),
        (
            "service-admin.yaml",
            "shadowplane-admin",
            admin_port,
            "http",
        ),
    ] {
        let svc: Service = typed(file);
        assert_eq!(svc.metadata.name.as_deref(), Some(name));
        assert_eq!(svc.metadata.namespace.as_deref(), Some(ns.as_str()));
        let svc_spec = svc.spec.expect("spec");
        let svc_selector = svc_spec.selector.expect("selector");
        assert!(
            svc_selector
                .iter()
                .all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{file} selector"
        );
        let svc_ports = svc_spec.ports.expect("ports");
        assert_eq!(svc_ports.len(), 1);
        assert_eq!(svc_ports[0].port, port, "{file}");
        let target = svc_ports[0].target_port.as_ref().expect("targetPort");
        assert_eq!(resolve_port(target, &ports), port, "{file} targetPort");
        assert_eq!(svc_ports[0].app_protocol.as_deref(), Some(app_protocol));
    }

    let pdb: PodDisruptionBudget = typed("poddisruptionbudget.yaml");
    assert_eq!(pdb.metadata.namespace.as_deref(), Some(ns.as_str()));
    let pdb_spec = pdb.spec.expect("spec");
    assert_eq!(pdb_spec.min_available, Some(IntOrString::Int(1)));
    assert_eq!(
        pdb_spec.selector.and_then(|s| s.match_labels),
        Some(selector)
    );
}

#[test]
fn cluster_role_only_reads_except_posting_events() {
    let role: ClusterRole = typed("clusterrole.yaml");
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.expect("rules") {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.clone().expect("apiGroups") {
            for resource in rule.resources.clone().expect("resources") {
                assert!(
                    !group.contains('*') && !resource.contains('*'),
                    "no wildcards"
                );
                let verbs = granted.entry((group.clone(), resource)).or_default();
                verbs.extend(rule.verbs.iter().cloned());
            }
        }
    }
    let read: BTreeSet<String> = ["get", "list", "watch"].map(String::from).into();
    let mut expected: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for resource in [
        "virtualservices",
        "destinationrules",
        "serviceentries",
        "workloadentries",
        "gateways",
    ] {
        expected.insert(
            ("networking.istio.io".into(), resource.into()),
            read.clone(),
        );
    }
    expected.insert((String::new(), "services".into()), read.clone());
    expected.insert((String::new(), "pods".into()), read.clone());
    expected.insert(("discovery.k8s.io".into(), "endpointslices".into()), read);
    // events.k8s.io/v1 Events: create; get the one another replica (or this one before a
    // restart) created; patch a recurrence or a heartbeat on it.
    expected.insert(
        ("events.k8s.io".into(), "events".into()),
        ["create", "get", "patch"].map(String::from).into(),
    );
    assert_eq!(granted, expected);
}

fn port_of_flag(args: &[String], flag: &str) -> i32 {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    let addr: std::net::SocketAddr = args[i + 1].parse().expect("ADDR:PORT");
    assert!(
        addr.ip().is_unspecified(),
        "{flag} {addr}: kubelet and the Service need the pod IP"
    );
    i32::from(addr.port())
}

fn container_ports(c: &Container) -> BTreeMap<String, i32> {
    c.ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().expect("named port"), p.container_port))
        .collect()
}

fn resolve_port(port: &IntOrString, ports: &BTreeMap<String, i32>) -> i32 {
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => *ports
            .get(name)
            .unwrap_or_else(|| panic!("no port named {name}")),
    }
}

/// The Deployment's `serve` arguments, run by the real binary. Outside a cluster (no
/// kubeconfig, no service account) it must get past argument parsing and stop because it has
/// no Kubernetes API to talk to, not because of a flag.
#[test]
fn deployment_args_are_accepted_by_the_real_binary() {
    let deployment: Deployment = typed("deployment.yaml");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let args = pod.containers[0].args.clone().expect("args");
    assert_eq!(args[0], "serve");
    assert!(args.iter().any(|a| a == "--kubernetes"));

    // Parse only: clap accepts every flag and value.
    let help = Command::new(env!("CARGO_BIN_EXE_shadowplane"))
        .args(&args)
        .arg("--help")
        .output()
        .expect("run shadowplane");
    assert!(
        help.status.success(),
        "{args:?} rejected: {}",
        String::from_utf8_lossy(&help.stderr)
    );

    // Run for real, the listen addresses on free loopback ports (other tests use 18000/19000).
    let mut run_args = args.clone();
    for flag in ["--xds-listen", "--admin-listen"] {
        let i = run_args.iter().position(|a| a == flag).expect("flag");
        run_args[i + 1] = format!("127.0.0.1:{}", common::free_port());
    }
    let home = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shadowplane"))
        .args(&run_args)
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shadowplane serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve {run_args:?} kept running for 60s without a cluster");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        !status.success(),
        "serve without a cluster exited {status}: {stderr}"
    );
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("unexpected argument") && !lower.contains("usage:"),
        "a flag problem: {stderr}"
    );
    assert!(
        lower.contains("kube"),
        "not a Kubernetes connection problem: {stderr}"
    );
}

/// `$(VAR)` expanded as kubelet does for container args.
fn expand(arg: &str, env: &BTreeMap<&str, &str>) -> String {
    let mut out = arg.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    assert!(!out.contains("$("), "unexpanded variable in {arg}");
    out
}

/// The sidecar example: its bootstrap (from the ConfigMap, with the Deployment's arguments and
/// the downward-API env as kubelet would fill it) passes `envoy --mode validate`, and a running
/// Envoy reports the pod's name and namespace as its node id and NAMESPACE metadata.
#[test]
fn envoy_sidecar_example_runs_on_a_real_envoy() {
    let cm: ConfigMap = typed("envoy-bootstrap-configmap.yaml");
    let bootstrap = cm
        .data
        .as_ref()
        .and_then(|d| d.get("envoy.yaml"))
        .expect("envoy.yaml")
        .clone();
    assert!(bootstrap.contains("shadowplane.shadowplane-system.svc.cluster.local"));
    let parsed: Value = serde_yaml::from_str(&bootstrap).expect("bootstrap YAML");
    assert_eq!(
        parsed["dynamic_resources"]["ads_config"]["api_type"],
        "DELTA_GRPC"
    );
    let xds = &parsed["static_resources"]["clusters"][0];
    let address = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(
        address["address"],
        "shadowplane.shadowplane-system.svc.cluster.local"
    );
    assert_eq!(address["port_value"], 18000);
    let envoy_configs: Value = serde_yaml::from_str(
        &std::fs::read_to_string(common::repo_root().join("envoy-configs/ads-delta.yaml"))
            .expect("read"),
    )
    .expect("YAML");
    assert_eq!(
        parsed["stats_config"], envoy_configs["stats_config"],
        "Istio's stat tags as envoy-configs/ has"
    );

    let deployment: Deployment = typed("envoy-sidecar-example.yaml");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let envoy = pod
        .containers
        .iter()
        .find(|c| c.name == "envoy")
        .expect("envoy container");
    assert!(pod.containers.iter().any(|c| c.name == "app"));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.config_map.as_ref())
        .expect("configMap volume");
    assert_eq!(Some(&volume.name), cm.metadata.name.as_ref());
    let mount = &envoy.volume_mounts.as_ref().expect("mounts")[0];
    let mut env = BTreeMap::new();
    for var in envoy.env.iter().flatten() {
        let field = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .expect("fieldRef");
        let value = match field.field_path.as_str() {
            "metadata.name" => "example-7d9f-abcde",
            "metadata.namespace" => "default",
            other => panic!("unexpected fieldRef {other}"),
        };
        env.insert(var.name.as_str(), value);
    }
    let args: Vec<String> = envoy
        .args
        .iter()
        .flatten()
        .map(|a| expand(a, &env))
        .collect();
    let c = args.iter().position(|a| a == "-c").expect("-c");
    assert_eq!(args[c + 1], format!("{}/envoy.yaml", mount.mount_path));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("envoy.yaml");
    let mut with_file = args.clone();
    with_file[c + 1] = file.display().to_string();

    // 1. envoy --mode validate on exactly what the pod runs.
    std::fs::write(&file, &bootstrap).expect("write bootstrap");
    let validate = Command::new(common::envoy_bin())
        .args(&with_file)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .output()
        .expect("run envoy");
    assert!(
        validate.status.success(),
        "envoy --mode validate: {}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );
    // The check can fail: a typo in the bootstrap is reported.
    std::fs::write(&file, bootstrap.replace("api_type:", "api_typo:")).expect("write");
    let broken = Command::new(common::envoy_bin())
        .args(&with_file)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .output()
        .expect("run envoy");
    assert!(!broken.status.success(), "envoy accepted a misspelt field");

    // 2. Running: the node as shadowplane sees it (admin moved to a free port for the test).
    assert!(bootstrap.contains("port_value: 15000"));
    std::fs::write(
        &file,
        bootstrap.replace("port_value: 15000", "port_value: 0"),
    )
    .expect("write");
    let admin_file = dir.path().join("admin.txt");
    let mut child = Command::new(common::envoy_bin())
        .args(&with_file)
        .args([
            "--disable-hot-restart",
            "-l",
            "warning",
            "--admin-address-path",
        ])
        .arg(&admin_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start envoy");
    let deadline = Instant::now() + common::ENVOY_START_TIMEOUT;
    let info = loop {
        assert!(child.try_wait().expect("wait").is_none(), "envoy exited");
        let addr = std::fs::read_to_string(&admin_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Some(addr) = addr {
            if let Ok((200, body)) =
                common::simple_get(addr, "/server_info", Duration::from_secs(2))
            {
                break body;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("envoy admin did not answer");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    let info: Value = serde_json::from_str(&info).expect("server_info JSON");
    let node = &info["command_line_options"]["config_yaml"];
    assert!(
        node.as_str()
            .is_some_and(|s| s.contains("example-7d9f-abcde")),
        "{node}"
    );
    let dump_node = &info["node"];
    assert_eq!(dump_node["id"], "example-7d9f-abcde.default");
    assert_eq!(dump_node["cluster"], "envoy-example");
    assert_eq!(dump_node["metadata"]["NAMESPACE"], "default");
}
