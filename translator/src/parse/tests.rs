//! Input-stage tests on real YAML: positions, schema errors, dispatch, duplicates and the
//! first seed walkthrough (re-indented, otherwise verbatim).

use super::*;
use crate::diag::Severity;
use crate::istio::{DestinationRuleSpec, VirtualServiceSpec};

/// Seed 1, step 1 ("install the base destination rule and virtual services").
const SEED_BASE: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: calcbackend-rule
  namespace: challengeistio
spec:
  host: calcbackendsvc
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: backend-vs
  namespace: challengeistio
spec:
  hosts:
  - calcbackendsvc
  http:
  - match:
    - headers:
        user-agent:
          regex: .*Mobile.*
    route:
    - destination:
        host: calcbackendsvc
        subset: v2
  - route:
    - destination:
        host: calcbackendsvc
        subset: v1
      weight: 100
";

/// Seed 1, step 2: the new version's Deployment, subset v3 and the mirror.
const SEED_MIRROR: &str = "\
apiVersion: extensions/v1beta1
kind: Deployment
metadata:
  name: jscalcbackend-new-v2
  namespace: challengeistio
spec:
  replicas: 1
  minReadySeconds: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 1
  template:
    metadata:
      labels:
        name: jscalcbackend-new
        app: backend
        version: v3
    spec:
      containers:
      - name: jscalcbackend-new
        image: csaocpger/jscalcbackend-new:2.0
        ports:
        - containerPort: 80
          name: http
          protocol: TCP
        env:
        - name: \"PORT\"
          value: \"80\"
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: calcbackend-rule
  namespace: challengeistio
spec:
  host: calcbackendsvc
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: backend-vs
  namespace: challengeistio
spec:
  hosts:
  - calcbackendsvc
  http:
  - match:
    - headers:
        user-agent:
          regex: .*Mobile.*
    route:
    - destination:
        host: calcbackendsvc
        subset: v2
  - route:
    - destination:
        host: calcbackendsvc
        subset: v1
      weight: 100
    mirror:
      host: calcbackendsvc
      subset: v3
";

/// Seed 1, step 3 ("reset your service mesh to baseline"): the same text as step 1.
const SEED_RESET: &str = SEED_BASE;

fn vs(resource: &Resource) -> &VirtualServiceSpec {
    match &resource.spec {
        Spec::VirtualService(vs) => vs,
        other => panic!("expected a VirtualService, got {}", other.kind()),
    }
}

fn dr(resource: &Resource) -> &DestinationRuleSpec {
    match &resource.spec {
        Spec::DestinationRule(dr) => dr,
        other => panic!("expected a DestinationRule, got {}", other.kind()),
    }
}

fn pos(resource: &Resource, path: &str) -> Option<(u32, u32)> {
    resource.origin.index.positions.get(path).copied()
}

fn errors(parsed: &Parsed) -> Vec<&Diagnostic> {
    parsed.diagnostics.iter().filter(|d| d.is_error()).collect()
}

fn only(parsed: &Parsed) -> &Diagnostic {
    assert_eq!(parsed.diagnostics.len(), 1, "{:#?}", parsed.diagnostics);
    &parsed.diagnostics[0]
}

fn loc(d: &Diagnostic) -> (&str, u32, u32) {
    let l = d.location.as_ref().expect("the diagnostic has a location");
    (l.file.as_str(), l.line, l.column)
}

#[test]
fn seed_step_1_parses() {
    let parsed = parse_file("seed/base.yaml", SEED_BASE);
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    assert_eq!(parsed.resources.len(), 2);

    let rule = &parsed.resources[0];
    assert_eq!(rule.kind(), "DestinationRule");
    assert_eq!(rule.api_version, "networking.istio.io/v1alpha3");
    assert_eq!(rule.namespace(), "challengeistio");
    assert_eq!(rule.name(), "calcbackend-rule");
    let spec = dr(rule);
    assert_eq!(spec.host, "calcbackendsvc");
    let subsets: Vec<(&str, &str)> = spec
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.labels["version"].as_str()))
        .collect();
    assert_eq!(subsets, [("v1", "v1"), ("v2", "v2")]);

    let service = &parsed.resources[1];
    assert_eq!(
        service.reference().to_string(),
        "VirtualService challengeistio/backend-vs"
    );
    let spec = vs(service);
    assert_eq!(spec.hosts, ["calcbackendsvc"]);
    assert_eq!(spec.http.len(), 2);
    let header = &spec.http[0].matches[0].headers["user-agent"];
    assert_eq!(header.regex.as_deref(), Some(".*Mobile.*"));
    assert_eq!(
        spec.http[0].route[0].destination.subset.as_deref(),
        Some("v2")
    );
    assert_eq!(spec.http[1].route[0].destination.host, "calcbackendsvc");
    assert_eq!(
        spec.http[1].route[0].destination.subset.as_deref(),
        Some("v1")
    );
    assert_eq!(spec.http[1].route[0].weight, Some(100));
    assert!(spec.http[1].mirror.is_none());

    assert_eq!(rule.origin.document, 0);
    assert_eq!(service.origin.document, 1);
    assert_eq!(&*service.origin.file, "seed/base.yaml");
}

#[test]
fn seed_step_2_parses_and_skips_the_deployment() {
    let parsed = parse_file("seed/mirror.yaml", SEED_MIRROR);
    let d = only(&parsed);
    assert_eq!(d.severity, Severity::Info);
    assert_eq!(d.code, Code::SkippedKind);
    assert_eq!(d.message, "skipped: not an Istio networking resource");
    assert_eq!(loc(d), ("seed/mirror.yaml", 2, 1));
    assert_eq!(d.field.as_deref(), Some("kind"));
    assert_eq!(
        d.resource.as_ref().map(ToString::to_string).as_deref(),
        Some("Deployment challengeistio/jscalcbackend-new-v2")
    );

    let kinds: Vec<&str> = parsed.resources.iter().map(Resource::kind).collect();
    assert_eq!(kinds, ["DestinationRule", "VirtualService"]);
    let subsets: Vec<&str> = dr(&parsed.resources[0])
        .subsets
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(subsets, ["v1", "v2", "v3"]);
    let spec = vs(&parsed.resources[1]);
    let mirror = spec.http[1]
        .mirror
        .as_ref()
        .expect("the second route mirrors");
    assert_eq!(mirror.host, "calcbackendsvc");
    assert_eq!(mirror.subset.as_deref(), Some("v3"));
    assert!(spec.http[0].mirror.is_none());
    assert_eq!(parsed.resources[1].origin.document, 2);
}

#[test]
fn seed_step_3_parses() {
    let parsed = parse_file("seed/reset.yaml", SEED_RESET);
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    let kinds: Vec<&str> = parsed.resources.iter().map(Resource::kind).collect();
    assert_eq!(kinds, ["DestinationRule", "VirtualService"]);
    assert!(vs(&parsed.resources[1])
        .http
        .iter()
        .all(|r| r.mirror.is_none()));
}

#[test]
fn whole_seed_in_one_file_keeps_the_first_of_each_step() {
    let text = format!("{SEED_BASE}---\n{SEED_MIRROR}---\n{SEED_RESET}");
    let parsed = parse_file("seed.yaml", &text);
    let kinds: Vec<&str> = parsed.resources.iter().map(Resource::kind).collect();
    assert_eq!(kinds, ["DestinationRule", "VirtualService"]);
    assert!(
        vs(&parsed.resources[1]).http[1].mirror.is_none(),
        "the first (base) VS is kept"
    );

    let dups: Vec<&Diagnostic> = parsed
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::DuplicateResource)
        .collect();
    assert_eq!(dups.len(), 4, "{:#?}", parsed.diagnostics);
    // Step 2's DestinationRule is document 3 (after base DR, base VS, Deployment).
    assert_eq!(
        dups[0].message,
        "duplicate DestinationRule challengeistio/calcbackend-rule: already defined at seed.yaml:4"
    );
    assert_eq!(
        dups[0].hint.as_deref(),
        Some("rename one of them or delete the duplicate")
    );
    let skipped = parsed
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::SkippedKind)
        .count();
    assert_eq!(skipped, 1);
}

#[test]
fn positions_of_field_paths() {
    let parsed = parse_file("vs.yaml", SEED_MIRROR);
    let rule = &parsed.resources[0];
    let service = &parsed.resources[1];
    // The DestinationRule is the second document: lines 32..=48.
    assert_eq!(pos(rule, ""), Some((32, 1)));
    assert_eq!(pos(rule, "metadata.name"), Some((35, 3)));
    assert_eq!(pos(rule, "spec.subsets"), Some((39, 3)));
    assert_eq!(pos(rule, "spec.subsets[0]"), Some((40, 5)));
    assert_eq!(pos(rule, "spec.subsets[0].labels.version"), Some((42, 7)));
    assert_eq!(pos(rule, "spec.subsets[2].name"), Some((46, 5)));

    assert_eq!(pos(service, ""), Some((50, 1)));
    assert_eq!(pos(service, "spec"), Some((55, 1)));
    assert_eq!(
        pos(service, "spec.http[0].match[0].headers.user-agent"),
        Some((61, 9))
    );
    assert_eq!(
        pos(service, "spec.http[0].match[0].headers.user-agent.regex"),
        Some((62, 11))
    );
    assert_eq!(pos(service, "spec.http[1]"), Some((67, 5)));
    assert_eq!(pos(service, "spec.http[1].route[0].weight"), Some((71, 7)));
    assert_eq!(pos(service, "spec.http[1].mirror"), Some((72, 5)));
    assert_eq!(pos(service, "spec.http[1].mirror.subset"), Some((74, 7)));

    // Origin::at falls back to the nearest ancestor for a path with no node.
    let at = service
        .origin
        .at("spec.http[1].mirror.port.number")
        .expect("a location");
    assert_eq!((at.file.as_str(), at.line, at.column), ("vs.yaml", 72, 5));
    let diag = service.diag(
        Diagnostic::error(Code::InvalidValue, "x"),
        "spec.http[1].mirror.subset",
    );
    assert_eq!(loc(&diag), ("vs.yaml", 74, 7));
    assert_eq!(diag.field.as_deref(), Some("spec.http[1].mirror.subset"));
}

#[test]
fn positions_of_odd_keys_and_flow_style() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: odd, namespace: ns}
spec:
  hosts: [a.example.com, b]
  http:
  - match:
    - headers:
        x.with.dots: {exact: \"1\"}
        \"quoted key\": {prefix: p}
    route:
    - destination: {host: a.example.com}
";
    let parsed = parse_file("odd.yaml", text);
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    let r = &parsed.resources[0];
    assert_eq!(pos(r, "metadata.name"), Some((3, 12)));
    assert_eq!(pos(r, "metadata.namespace"), Some((3, 23)));
    assert_eq!(pos(r, "spec.hosts[1]"), Some((5, 26)));
    assert_eq!(
        pos(r, "spec.http[0].match[0].headers.x.with.dots"),
        Some((9, 9))
    );
    assert_eq!(
        pos(r, "spec.http[0].match[0].headers.x.with.dots.exact"),
        Some((9, 23))
    );
    assert_eq!(
        pos(r, "spec.http[0].match[0].headers.quoted key"),
        Some((10, 9))
    );
    assert_eq!(
        pos(r, "spec.http[0].route[0].destination.host"),
        Some((12, 21))
    );
    let headers = &vs(r).http[0].matches[0].headers;
    assert_eq!(headers["x.with.dots"].exact.as_deref(), Some("1"));
    assert_eq!(headers["quoted key"].prefix.as_deref(), Some("p"));
}

#[test]
fn unknown_field_points_at_its_name_and_suggests() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subest: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
";
    let parsed = parse_file("typo.yaml", text);
    let d = only(&parsed);
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(d.code, Code::UnknownField);
    assert_eq!(loc(d), ("typo.yaml", 11, 9));
    assert_eq!(
        d.field.as_deref(),
        Some("spec.http[0].route[0].destination.subest")
    );
    assert_eq!(d.message, "unknown field \"subest\"");
    assert_eq!(
        d.hint.as_deref(),
        Some("did you mean \"subset\"? valid fields here: host, subset, port")
    );
    assert_eq!(
        d.resource.as_ref().map(ToString::to_string).as_deref(),
        Some("VirtualService default/reviews")
    );
    // The VirtualService is dropped; the next document still parses.
    let kinds: Vec<&str> = parsed.resources.iter().map(Resource::kind).collect();
    assert_eq!(kinds, ["DestinationRule"]);
}

#[test]
fn unknown_fields_at_other_levels() {
    let route_typo = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  http:
  - route: []
    mirror_percentage: {value: 5}
";
    let d = only(&parse_file("a.yaml", route_typo)).clone();
    assert_eq!(d.code, Code::UnknownField);
    assert_eq!(d.field.as_deref(), Some("spec.http[0].mirror_percentage"));
    assert_eq!(loc(&d), ("a.yaml", 7, 5));
    assert!(
        d.hint
            .as_deref()
            .is_some_and(|h| h.starts_with("did you mean \"mirrorPercentage\"?")),
        "{d}"
    );

    let top_typo = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r}
sepc:
  host: r
";
    let parsed = parse_file("b.yaml", top_typo);
    let d = only(&parsed);
    assert_eq!(d.code, Code::UnknownField);
    assert_eq!(d.field.as_deref(), Some("sepc"));
    assert_eq!(loc(d), ("b.yaml", 4, 1));
    assert_eq!(
        d.hint.as_deref(),
        Some("did you mean \"spec\"? valid fields here: apiVersion, kind, metadata, spec, status")
    );
    assert!(parsed.resources.is_empty());
}

#[test]
fn wrong_types_are_invalid_values_with_paths() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: r
  namespace: shop
spec:
  hosts: [r]
  http:
  - route:
    - destination:
        host: r
        port:
          number: eighty
";
    let parsed = parse_file("t.yaml", text);
    let d = only(&parsed);
    assert_eq!(d.code, Code::InvalidValue);
    assert_eq!(
        d.field.as_deref(),
        Some("spec.http[0].route[0].destination.port.number")
    );
    assert_eq!(loc(d), ("t.yaml", 13, 11));
    assert_eq!(
        d.message,
        "invalid value \"eighty\": expected a whole number from 0 to 4294967295"
    );
    assert_eq!(d.value.as_deref(), Some("eighty"));
    assert!(parsed.resources.is_empty());

    let subset_number = text.replace("port:\n          number: eighty", "subset: 1");
    let d = only(&parse_file("t.yaml", &subset_number)).clone();
    assert_eq!(
        d.field.as_deref(),
        Some("spec.http[0].route[0].destination.subset")
    );
    assert_eq!(d.message, "invalid value 1: expected a string");
    assert_eq!(
        d.hint.as_deref(),
        Some("quote the value to make it a string: \"1\"")
    );

    let hosts_string = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: r
";
    let d = only(&parse_file("t.yaml", hosts_string)).clone();
    assert_eq!(d.field.as_deref(), Some("spec.hosts"));
    assert_eq!(d.message, "invalid value \"r\": expected a list");
    assert_eq!(loc(&d), ("t.yaml", 5, 3));
}

#[test]
fn mirror_percent_both_spellings() {
    for (key, file) in [
        ("mirror_percent", "snake.yaml"),
        ("mirrorPercent", "camel.yaml"),
    ] {
        let text = format!(
            "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: r}}
spec:
  hosts: [r]
  http:
  - route:
    - destination: {{host: r}}
    mirror: {{host: r, subset: v2}}
    {key}: 40
"
        );
        let parsed = parse_file(file, &text);
        assert!(
            parsed.diagnostics.is_empty(),
            "{key}: {:#?}",
            parsed.diagnostics
        );
        assert_eq!(
            vs(&parsed.resources[0]).http[0].mirror_percent,
            Some(40),
            "{key}"
        );
    }
}

#[test]
fn multi_document_with_empty_documents() {
    let text = "\
# leading comment only
---
---
# a document with only a comment
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a}
spec: {host: a}
---

---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b}
spec: {host: b}
...
";
    let parsed = parse_file("multi.yaml", text);
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    let names: Vec<(&str, usize)> = parsed
        .resources
        .iter()
        .map(|r| (r.name(), r.origin.document))
        .collect();
    assert_eq!(names, [("a", 2), ("b", 4)]);
    assert_eq!(pos(&parsed.resources[1], "spec.host"), Some((16, 8)));
}

#[test]
fn tab_indentation_is_a_syntax_error_on_its_line() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: r
spec:
\thost: r
";
    let parsed = parse_file("tab.yaml", text);
    let d = only(&parsed);
    assert_eq!(d.code, Code::YamlSyntax);
    assert_eq!(d.severity, Severity::Error);
    let (file, line, _) = loc(d);
    assert_eq!((file, line), ("tab.yaml", 6));
    assert!(d.message.starts_with("invalid YAML: "), "{d}");
    assert_eq!(
        d.hint.as_deref(),
        Some("line 6 is indented with a tab; YAML needs spaces, not tabs")
    );
    assert!(parsed.resources.is_empty());
}

#[test]
fn syntax_error_keeps_earlier_documents_only() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: first}
spec: {host: a}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: second
 spec:
  host: b
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: third}
spec: {host: c}
";
    let parsed = parse_file("broken.yaml", text);
    let d = only(&parsed);
    assert_eq!(d.code, Code::YamlSyntax);
    let (_, line, _) = loc(d);
    assert_eq!(line, 10);
    assert!(
        d.hint.as_deref().is_some_and(|h| h.contains("line 10")),
        "{d}"
    );
    let names: Vec<&str> = parsed.resources.iter().map(Resource::name).collect();
    assert_eq!(names, ["first"], "the rest of the file is not trusted");
}

#[test]
fn unclosed_quote_is_a_syntax_error() {
    let text = "apiVersion: networking.istio.io/v1\nkind: \"DestinationRule\nmetadata: {name: x}\n";
    let parsed = parse_file("q.yaml", text);
    let d = only(&parsed);
    assert_eq!(d.code, Code::YamlSyntax);
    assert!(parsed.resources.is_empty());
}

#[test]
fn duplicate_keys_drop_the_document() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r}
spec:
  host: a
  host: b
";
    let parsed = parse_file("dup.yaml", text);
    let d = only(&parsed);
    assert_eq!(d.code, Code::YamlSyntax);
    assert_eq!(loc(d), ("dup.yaml", 6, 3));
    assert_eq!(
        d.message,
        "invalid YAML: duplicate key \"host\" (first at line 5)"
    );
    assert_eq!(d.field.as_deref(), Some("spec.host"));
    assert!(parsed.resources.is_empty());
}

#[test]
fn other_kinds_are_skipped_with_an_info() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: calcbackendsvc, namespace: challengeistio}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: List
items: []
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec: {}
";
    let parsed = parse_file("k8s.yaml", text);
    assert!(parsed.resources.is_empty());
    let messages: Vec<(&str, Severity, Code)> = parsed
        .diagnostics
        .iter()
        .map(|d| (d.message.as_str(), d.severity, d.code))
        .collect();
    use Code::SkippedKind as S;
    use Severity::Info as I;
    assert_eq!(
        messages,
        [
            ("skipped: not an Istio networking resource", I, S),
            ("skipped List (unnamed): not an Istio networking resource", I, S),
            ("skipped: this Istio kind is not supported by shadowplane", I, S),
            ("skipped: this Istio kind is not supported by shadowplane", I, S),
            (
                "skipped: Kubernetes Gateway API resources are not supported (use a networking.istio.io Gateway)",
                I,
                S
            ),
        ]
    );
}

#[test]
fn api_versions() {
    for version in ACCEPTED_API_VERSIONS {
        let text = format!("apiVersion: {version}\nkind: Gateway\nmetadata: {{name: g}}\n");
        let parsed = parse_file("gw.yaml", &text);
        assert!(
            parsed.diagnostics.is_empty(),
            "{version}: {:#?}",
            parsed.diagnostics
        );
        assert_eq!(parsed.resources[0].api_version, version);
    }
    let text = "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: r}\n";
    let parsed = parse_file("v2.yaml", text);
    let d = only(&parsed);
    assert_eq!(d.code, Code::UnsupportedApiVersion);
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(loc(d), ("v2.yaml", 1, 1));
    assert_eq!(
        d.message,
        "unsupported apiVersion \"networking.istio.io/v2\" for VirtualService"
    );
    assert_eq!(d.value.as_deref(), Some("networking.istio.io/v2"));
    assert_eq!(
        d.hint.as_deref(),
        Some("use one of networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3")
    );
    assert!(parsed.resources.is_empty());
}

#[test]
fn missing_identity_fields() {
    let no_kind = "apiVersion: networking.istio.io/v1\nmetadata: {name: r}\n";
    let d = only(&parse_file("k.yaml", no_kind)).clone();
    assert_eq!(d.code, Code::MissingField);
    assert_eq!(d.field.as_deref(), Some("kind"));
    assert_eq!(d.message, "missing required field \"kind\"");
    assert_eq!(loc(&d), ("k.yaml", 1, 1));

    let no_api = "kind: VirtualService\nmetadata: {name: r}\n";
    let d = only(&parse_file("a.yaml", no_api)).clone();
    assert_eq!(d.code, Code::MissingField);
    assert_eq!(d.field.as_deref(), Some("apiVersion"));
    assert_eq!(
        d.resource.as_ref().map(ToString::to_string).as_deref(),
        Some("VirtualService default/r")
    );

    let no_name = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  namespace: x\nspec: {}\n";
    let parsed = parse_file("n.yaml", no_name);
    let d = only(&parsed);
    assert_eq!(d.code, Code::MissingField);
    assert_eq!(d.field.as_deref(), Some("metadata.name"));
    assert_eq!(loc(d), ("n.yaml", 3, 1));
    assert_eq!(d.resource, None);
    assert!(parsed.resources.is_empty());

    let empty_name =
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: \"\"\n";
    let d = only(&parse_file("n.yaml", empty_name)).clone();
    assert_eq!(d.code, Code::MissingField);
    assert_eq!(loc(&d), ("n.yaml", 4, 3));

    let no_metadata = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {}\n";
    assert_eq!(
        only(&parse_file("n.yaml", no_metadata)).code,
        Code::MissingField
    );
}

#[test]
fn missing_spec_is_an_empty_spec() {
    let text = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r}\n---\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n";
    let parsed = parse_file("s.yaml", text);
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    assert_eq!(dr(&parsed.resources[0]), &DestinationRuleSpec::default());
    assert_eq!(vs(&parsed.resources[1]), &VirtualServiceSpec::default());
}

#[test]
fn metadata_extra_fields_are_ignored_and_namespace_defaults() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: r
  uid: 1234
  resourceVersion: \"99\"
  creationTimestamp: \"2024-01-02T03:04:05Z\"
  labels: {app: r}
spec: {host: r}
";
    let parsed = parse_file("m.yaml", text);
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    let r = &parsed.resources[0];
    assert_eq!(r.namespace(), "default");
    assert_eq!(r.metadata.labels["app"], "r");
    assert_eq!(
        r.metadata.creation_timestamp.as_deref(),
        Some("2024-01-02T03:04:05Z")
    );
}

#[test]
fn non_mapping_documents_are_invalid() {
    let parsed = parse_file("l.yaml", "- a\n- b\n---\njust a string\n");
    let codes: Vec<(Code, u32)> = parsed
        .diagnostics
        .iter()
        .map(|d| (d.code, loc(d).1))
        .collect();
    assert_eq!(codes, [(Code::InvalidValue, 1), (Code::InvalidValue, 4)]);
    assert_eq!(
        parsed.diagnostics[0].message,
        "document 1 is a list, not a Kubernetes object"
    );
    assert_eq!(
        parsed.diagnostics[1].message,
        "document 2 is a string, not a Kubernetes object"
    );
}

#[test]
fn duplicates_across_files_keep_the_first() {
    let a = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
spec:
  hosts: [reviews]
";
    let b = "\
# a copy
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  namespace: shop
  name: reviews
spec:
  hosts: [reviews-copy]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews-other-namespace]
";
    let files = [
        SourceFile {
            path: "a.yaml".into(),
            text: a.into(),
        },
        SourceFile {
            path: "b.yaml".into(),
            text: b.into(),
        },
    ];
    let parsed = parse_files(&files);
    let errs = errors(&parsed);
    assert_eq!(errs.len(), 1, "{:#?}", parsed.diagnostics);
    let d = errs[0];
    assert_eq!(d.code, Code::DuplicateResource);
    assert_eq!(loc(d), ("b.yaml", 6, 3));
    assert_eq!(
        d.message,
        "duplicate VirtualService shop/reviews: already defined at a.yaml:4"
    );
    assert_eq!(
        d.hint.as_deref(),
        Some("rename one of them or delete the duplicate")
    );
    assert_eq!(d.field.as_deref(), Some("metadata.name"));
    let kept: Vec<(&str, &str, &str)> = parsed
        .resources
        .iter()
        .map(|r| (&*r.origin.file, r.namespace(), vs(r).hosts[0].as_str()))
        .collect();
    assert_eq!(
        kept,
        [
            ("a.yaml", "shop", "reviews"),
            ("b.yaml", "default", "reviews-other-namespace")
        ]
    );

    // Each file on its own has no duplicate.
    assert!(parse_file("a.yaml", a).diagnostics.is_empty());
    assert!(parse_file("b.yaml", b).diagnostics.is_empty());
    // Different kinds with the same name are not duplicates.
    let dr = a
        .replace("VirtualService", "DestinationRule")
        .replace("hosts: [reviews]", "host: reviews");
    let parsed = parse_file("both.yaml", &format!("{a}---\n{dr}"));
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
}

#[test]
fn diagnostics_render_with_file_line_column() {
    let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: ns}\nspec:\n  hots: r\n";
    let d = only(&parse_file("dr.yaml", text)).clone();
    assert_eq!(
        d.to_string(),
        "error[SP0002] dr.yaml:5:3: DestinationRule ns/r: spec.hots: unknown field \"hots\"\n  \
         hint: did you mean \"host\"? valid fields here: host, trafficPolicy, subsets, exportTo, workloadSelector"
    );
}

#[test]
fn never_panics_on_truncated_or_mangled_input() {
    let text = format!("{SEED_MIRROR}---\n{SEED_BASE}");
    let chars: Vec<char> = text.chars().collect();
    for cut in (0..chars.len()).step_by(7) {
        let prefix: String = chars[..cut].iter().collect();
        let parsed = parse_file("cut.yaml", &prefix);
        for d in &parsed.diagnostics {
            assert!(d.location.is_some(), "{d}");
        }
        // Knock out one character too.
        let mut mangled = chars.clone();
        mangled[cut] = match cut % 4 {
            0 => '\t',
            1 => ':',
            2 => '-',
            _ => '"',
        };
        let mangled: String = mangled.into_iter().collect();
        let _ = parse_file("mangled.yaml", &mangled);
    }
    for odd in [
        "",
        "\n",
        "---",
        "...",
        "&a [*a]",
        "*x",
        "!!binary aGk=",
        "? a\n? b",
        "{",
        "[",
        "a: !tag {b: 1}",
        "\u{feff}kind: x",
    ] {
        let _ = parse_file("odd.yaml", odd);
    }
}

#[test]
fn merge_keys_are_applied() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: r
spec:
  host: r
  subsets:
  - &v1
    name: v1
    labels: {version: v1, app: r}
  - <<: *v1
    name: v2
";
    let parsed = parse_file("merge.yaml", text);
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    let subsets = &dr(&parsed.resources[0]).subsets;
    assert_eq!(subsets[1].name, "v2");
    assert_eq!(subsets[1].labels["app"], "r");

    let bad = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  <<: 5\n  name: r\n";
    let d = only(&parse_file("merge.yaml", bad)).clone();
    assert_eq!(d.code, Code::YamlSyntax);
}

#[test]
fn unclosed_flow_collection_hint() {
    let d = only(&parse_file("f.yaml", "a: [1, 2\nb: 3\n")).clone();
    assert_eq!(d.code, Code::YamlSyntax);
    assert_eq!(loc(&d), ("f.yaml", 2, 2));
    assert_eq!(
        d.hint.as_deref(),
        Some("check for a [ or { before line 2 that is not closed")
    );
}

#[test]
fn byte_order_mark_and_crlf_line_endings() {
    let text = "\u{feff}apiVersion: networking.istio.io/v1\r\nkind: DestinationRule\r\nmetadata:\r\n  name: r\r\nspec:\r\n  host: r\r\n";
    let parsed = parse_file("win.yaml", text);
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    assert_eq!(dr(&parsed.resources[0]).host, "r");
    assert_eq!(pos(&parsed.resources[0], "spec.host"), Some((6, 3)));
    assert_eq!(pos(&parsed.resources[0], "kind"), Some((2, 1)));
}

#[test]
fn deferred_positions_are_the_positions_of_a_full_load() {
    let mut deferred = 0;
    for (name, text) in yaml::tests::corpus() {
        let full = yaml::load(&text);
        let parsed = parse_file(&name, &text);
        for resource in &parsed.resources {
            let expected = full
                .documents
                .iter()
                .find(|d| d.number == resource.origin.document)
                .map(|d| d.index.positions.map().clone())
                .unwrap_or_default();
            assert_eq!(
                resource.origin.index.positions.map(),
                &expected,
                "{name}: document {}",
                resource.origin.document
            );
            deferred += 1;
        }
    }
    assert!(deferred > 100, "only {deferred} resources checked");
}

#[test]
fn a_duplicate_key_in_a_later_document_keeps_each_resource_once() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a}
spec: {host: a}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b}
spec:
  host: b
  host: c
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d}
spec: {host: d}
";
    let parsed = parse_file("dup.yaml", text);
    let names: Vec<&str> = parsed.resources.iter().map(Resource::name).collect();
    assert_eq!(names, ["a", "d"]);
    let d = only(&parsed);
    assert_eq!(d.code, Code::YamlSyntax);
    assert_eq!(loc(d), ("dup.yaml", 11, 3));
    assert_eq!(
        d.message,
        "invalid YAML: duplicate key \"host\" (first at line 10)"
    );
    // The positions of the other documents are those of the full load.
    assert_eq!(pos(&parsed.resources[1], "spec.host"), Some((16, 8)));
}

#[test]
fn untracked_schema_check_agrees_with_the_tracked_one() {
    fn tracked(kind: SpecKind, v: Value) -> Result<Spec, schema::SchemaError> {
        Ok(match kind {
            SpecKind::VirtualService => Spec::VirtualService(schema::deserialize(v, "spec")?),
            SpecKind::DestinationRule => Spec::DestinationRule(schema::deserialize(v, "spec")?),
            SpecKind::ServiceEntry => Spec::ServiceEntry(schema::deserialize(v, "spec")?),
            SpecKind::WorkloadEntry => Spec::WorkloadEntry(schema::deserialize(v, "spec")?),
            SpecKind::Gateway => Spec::Gateway(schema::deserialize(v, "spec")?),
        })
    }
    let (mut specs, mut errors) = (0, 0);
    for (name, text) in yaml::tests::corpus() {
        for doc in yaml::load(&text).documents {
            let mut value = doc.value;
            if value.apply_merge().is_err() {
                continue;
            }
            let Value::Mapping(map) = value else {
                continue;
            };
            let kind = map
                .get("kind")
                .and_then(Value::as_str)
                .and_then(SpecKind::from_kind);
            let (Some(kind), Some(spec)) = (kind, map.get("spec")) else {
                continue;
            };
            // The spec, and variants with one node replaced by a value of another shape.
            let nodes = count_nodes(spec);
            let mut variants = vec![spec.clone()];
            for n in 0..nodes.min(40) {
                for replacement in replacements() {
                    let mut v = spec.clone();
                    replace_node(&mut v, &mut { n }, &replacement);
                    variants.push(v);
                }
            }
            for v in variants {
                let fast = kind.typed_spec(v.clone(), || Some(v.clone()));
                let slow = tracked(kind, v.clone());
                assert_eq!(fast, slow, "{name}: document {}: {v:?}", doc.number);
                specs += 1;
                errors += usize::from(slow.is_err());
            }
        }
    }
    assert!(
        specs > 1000 && errors > 500,
        "{specs} specs, {errors} with errors"
    );
}

fn replacements() -> Vec<Value> {
    vec![
        Value::Null,
        Value::Bool(true),
        Value::Number((-7).into()),
        Value::Number(1.5.into()),
        Value::String("x".into()),
        Value::Sequence(vec![Value::String("x".into())]),
        serde_yaml::from_str("{unknownField: 1}").expect("valid YAML"),
    ]
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Sequence(items) => items.iter().map(count_nodes).sum(),
        Value::Mapping(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Replace the `n`th node (pre-order) of `v` by `with`.
fn replace_node(v: &mut Value, n: &mut usize, with: &Value) -> bool {
    if *n == 0 {
        *v = with.clone();
        return true;
    }
    *n -= 1;
    match v {
        Value::Sequence(items) => items.iter_mut().any(|i| replace_node(i, n, with)),
        Value::Mapping(map) => map.values_mut().any(|i| replace_node(i, n, with)),
        _ => false,
    }
}

/// A cache of per-file parses gives what one parse of all the files gives: the same resources
/// in the same order and the same diagnostics, duplicates across and within files included.
#[test]
fn combining_per_file_parses_is_parsing_the_files() {
    let files = [
        SourceFile {
            path: "base.yaml".to_string(),
            text: SEED_BASE.to_string(),
        },
        SourceFile {
            path: "mirror.yaml".to_string(),
            text: format!("{SEED_MIRROR}---\n{SEED_RESET}"),
        },
        SourceFile {
            path: "broken.yaml".to_string(),
            text: "kind: VirtualService\n  bad: [\n".to_string(),
        },
        SourceFile {
            path: "reset.yaml".to_string(),
            text: SEED_RESET.to_string(),
        },
    ];
    let whole = parse_files(&files);
    let parts: Vec<Parsed> = files
        .iter()
        .map(|f| parse_file_unchecked(&f.path, &f.text))
        .collect();
    let combined = combine(&parts);
    assert_eq!(combined.resources, whole.resources);
    assert_eq!(combined.diagnostics, whole.diagnostics);
    let dups = combined
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::DuplicateResource)
        .count();
    assert!(dups >= 3, "{:#?}", combined.diagnostics);
    assert!(
        combined
            .diagnostics
            .iter()
            .any(|d| d.code == Code::YamlSyntax),
        "{:#?}",
        combined.diagnostics
    );
}
