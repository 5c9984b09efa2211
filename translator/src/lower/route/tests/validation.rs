//! VirtualService-level validation and unsupported fields.

use super::*;

#[test]
fn virtual_service_without_hosts_is_dropped() {
    let out = lower(
        &[vs(
            "default",
            "empty",
            "http:\n- route:\n  - destination: {host: reviews, subset: v1}\n",
        )],
        &reviews_registry(),
        &reviews_rules(),
    );
    let d = out.one(Code::MissingField);
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(d.field.as_deref(), Some("spec.hosts"));
    let r = d.resource.as_ref().expect("resource");
    assert_eq!(
        (r.kind.as_str(), r.namespace.as_str(), r.name.as_str()),
        ("VirtualService", "default", "empty")
    );
    assert_eq!(
        d.location.as_ref().map(|l| l.file.as_str()),
        Some("test.yaml")
    );
    assert_eq!(
        out.vhost("9080", &format!("{REVIEWS}:9080")).routes[0].name,
        "default"
    );
}

#[test]
fn virtual_service_without_http_is_reported() {
    let (out, routes) = reviews("hosts: [reviews]\n");
    assert_eq!(
        out.one(Code::MissingField).field.as_deref(),
        Some("spec.http")
    );
    assert_eq!(routes[0].name, "default");
    // tcp only: a warning, and no error.
    let (out, _) = reviews("hosts: [reviews]\ntcp:\n- route:\n  - destination: {host: reviews}\n");
    assert!(out.errors().is_empty());
    assert_eq!(
        out.one(Code::UnsupportedField).field.as_deref(),
        Some("spec.tcp")
    );
}

#[test]
fn duplicate_hosts_are_reported_once_resolved() {
    let (out, routes) = reviews(&format!(
        "hosts: [reviews, {REVIEWS}]\nhttp:\n- route:\n  - destination: {{host: reviews, subset: v2}}\n"
    ));
    let d = out.one(Code::DuplicateName);
    assert_eq!(d.field.as_deref(), Some("spec.hosts[1]"));
    assert_eq!(cluster(&routes[0]), format!("outbound|9080|v2|{REVIEWS}"));
}

#[test]
fn star_host_is_not_allowed_on_the_mesh() {
    let (out, routes) = reviews(
        "hosts: ['*', reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v2}\n",
    );
    let d = out.one(Code::InvalidValue);
    assert_eq!(d.field.as_deref(), Some("spec.hosts[0]"));
    assert_eq!(cluster(&routes[0]), format!("outbound|9080|v2|{REVIEWS}"));
}

#[test]
fn unsupported_fields_warn_and_delegate_rules_are_skipped() {
    let (out, routes) = reviews(
        r#"
hosts: [reviews]
tls:
- match: [{sniHosts: [reviews]}]
  route: [{destination: {host: reviews}}]
http:
- delegate: {name: other, namespace: default}
- match:
  - sourceLabels: {app: frontend}
    sourceNamespace: web
    uri: {prefix: /x}
  route:
  - destination: {host: reviews, subset: v2}
- route:
  - destination: {host: reviews, subset: v1}
"#,
    );
    assert!(out.errors().is_empty(), "{:#?}", out.diags);
    let fields: Vec<_> = out
        .with_code(Code::UnsupportedField)
        .iter()
        .map(|d| d.field.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.tls",
            "spec.http[0].delegate",
            "spec.http[1].match[0].sourceLabels",
            "spec.http[1].match[0].sourceNamespace",
        ]
    );
    assert!(out
        .with_code(Code::UnsupportedField)
        .iter()
        .all(|d| d.severity == Severity::Warning));
    // The delegate rule is skipped; the selector-only match applies to every client.
    assert_eq!(routes.len(), 2);
    assert_eq!(cluster(&routes[0]), format!("outbound|9080|v2|{REVIEWS}"));
}

#[test]
fn diagnostics_are_reported_once_per_resource() {
    // The same VirtualService lands on three listeners (two mesh ports and a gateway).
    let host = "multi.default.svc.cluster.local";
    let out = lower(
        &[
            gw("default", "gw", "servers:\n- port: {number: 8000, protocol: HTTP}\n  hosts: ['*']\n"),
            vs(
                "default",
                "multi",
                "hosts: [multi]\ngateways: [mesh, gw]\nhttp:\n- route:\n  - destination: {host: multi, port: {number: 80}, subset: missing}\n",
            ),
        ],
        &registry(vec![svc(host, &[80, 81])]),
        &RuleIndex::default(),
    );
    assert_eq!(out.diags.len(), 1, "{:#?}", out.diags);
    assert_eq!(out.diags[0].code, Code::ReferencedResourceNotFound);
    assert_eq!(out.vhost("81", &format!("{host}:81")).routes.len(), 1);
    assert_eq!(
        out.vhost("http.8000", &format!("{host}:8000")).routes.len(),
        1
    );
}
