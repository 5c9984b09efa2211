//! Virtual-host domains (§2.2 and the shared README decision on short names).

use super::*;

fn domains(out: &Out, rc: &str, vhost: &str) -> Vec<String> {
    out.vhost(rc, vhost).domains.clone()
}

fn with_ns(ns: Option<&str>) -> Options {
    Options {
        proxy_namespace: ns.map(str::to_string),
        ..Options::default()
    }
}

const ECHO: &str = "echo.default.svc.cluster.local";

#[test]
fn t_n1_same_namespace_proxy_gets_istiods_list() {
    let out = lower_with(
        &[],
        &registry(vec![svc(ECHO, &[8123])]),
        &RuleIndex::default(),
        &with_ns(Some("default")),
    );
    assert_eq!(
        domains(&out, "8123", &format!("{ECHO}:8123")),
        [
            ECHO,
            &format!("{ECHO}."),
            "echo",
            "echo.default.svc",
            "echo.default"
        ]
    );
}

#[test]
fn other_namespace_proxy_never_gets_the_bare_name() {
    let out = lower_with(
        &[],
        &registry(vec![svc(ECHO, &[8123])]),
        &RuleIndex::default(),
        &with_ns(Some("mesh")),
    );
    assert_eq!(
        domains(&out, "8123", &format!("{ECHO}:8123")),
        [
            ECHO,
            &format!("{ECHO}."),
            "echo.default",
            "echo.default.svc"
        ]
    );
}

#[test]
fn proxy_without_namespace_gets_every_unclaimed_short_form() {
    let prod = "echo.prod.svc.cluster.local";
    let solo = "solo.prod.svc.cluster.local";
    let out = lower_with(
        &[],
        &registry(vec![svc(ECHO, &[80]), svc(prod, &[80]), svc(solo, &[80])]),
        &RuleIndex::default(),
        &with_ns(None),
    );
    // `echo` is claimed by two namespaces: neither gets it.
    assert_eq!(
        domains(&out, "80", &format!("{ECHO}:80")),
        [
            ECHO,
            &format!("{ECHO}."),
            "echo.default.svc",
            "echo.default"
        ]
    );
    assert_eq!(
        domains(&out, "80", &format!("{prod}:80")),
        [prod, &format!("{prod}."), "echo.prod.svc", "echo.prod"]
    );
    assert_eq!(
        domains(&out, "80", &format!("{solo}:80")),
        [
            solo,
            &format!("{solo}."),
            "solo",
            "solo.prod.svc",
            "solo.prod"
        ]
    );
}

#[test]
fn non_kubernetes_hosts_and_ips() {
    let out = lower(
        &[],
        &registry(vec![
            svc("api.example.com", &[80]),
            svc("10.0.0.1", &[80]),
            svc("2406:3003:2064:35b8:864:a648:4b96:e37d", &[80]),
        ]),
        &RuleIndex::default(),
    );
    assert_eq!(
        domains(&out, "80", "api.example.com:80"),
        ["api.example.com", "api.example.com."]
    );
    assert_eq!(domains(&out, "80", "10.0.0.1:80"), ["10.0.0.1"]);
    assert_eq!(
        domains(&out, "80", "[2406:3003:2064:35b8:864:a648:4b96:e37d]:80"),
        ["[2406:3003:2064:35b8:864:a648:4b96:e37d]"]
    );
}

#[test]
fn virtual_hosts_sorted_and_domains_unique_in_a_route_config() {
    // A ServiceEntry host equal to another service's short form: the short form is dropped
    // from the Kubernetes-style service, the FQDN keeps it.
    let out = lower(
        &[vs(
            "default",
            "taken",
            "hosts: [echo.default]\nhttp:\n- route:\n  - destination: {host: echo.default}\n",
        )],
        &registry(vec![svc(ECHO, &[80]), svc("echo.default", &[80])]),
        &RuleIndex::default(),
    );
    let rc = out.route_config("80");
    let names: Vec<_> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, [format!("{ECHO}:80").as_str(), "echo.default:80"]);
    assert_eq!(
        rc.virtual_hosts[0].domains,
        [ECHO, &format!("{ECHO}."), "echo", "echo.default.svc"]
    );
    assert_eq!(
        rc.virtual_hosts[1].domains,
        ["echo.default", "echo.default."]
    );
    let mut all: Vec<_> = rc
        .virtual_hosts
        .iter()
        .flat_map(|v| v.domains.clone())
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "duplicate domains in {rc:#?}");
}

#[test]
fn vs_host_without_service_loses_domains_already_taken() {
    // `echo.default` (a VS host in another namespace, kept as written) is a short form of
    // the echo service: the extra virtual host has no domain left and is dropped.
    let out = lower(
        &[vs(
            "other",
            "alias",
            "hosts: [echo.default]\nhttp:\n- route:\n  - destination: {host: echo.default.svc.cluster.local}\n",
        )],
        &registry(vec![svc(ECHO, &[80])]),
        &RuleIndex::default(),
    );
    let rc = out.route_config("80");
    assert_eq!(rc.virtual_hosts.len(), 1);
    assert_eq!(rc.virtual_hosts[0].name, format!("{ECHO}:80"));
}
