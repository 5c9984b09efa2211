//! DestinationRules → a per-host index (merged as istiod merges them) and the clusters:
//! `outbound|<port>||<fqdn>` for every service port plus one per defined subset, with
//! traffic-policy precedence subset port-level > subset > DR port-level > DR.

use std::collections::BTreeMap;

use crate::diag::{Code, Diagnostic, ResourceRef};
use crate::ir::{Cluster, Discovery, Endpoint};
use crate::istio::{ConsistentHashLb, DestinationRuleSpec, Spec, Subset, TrafficPolicy};
use crate::lower::registry::{Registry, Resolution, Service};
use crate::lower::traffic_policy::{self, Checker};
use crate::lower::{cluster_name, resolve_short_name};
use crate::source::Resource;
use crate::Options;

/// The merged DestinationRule of one host.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedRule {
    /// Fully qualified host (short names resolved in the rule's namespace).
    pub host: String,
    /// Subsets in definition order; the first definition of a duplicate name wins.
    pub subsets: Vec<Subset>,
    /// The first non-empty top-level traffic policy (boxed like the Istio types').
    pub traffic_policy: Option<Box<TrafficPolicy>>,
    /// The rules that contributed, in input order.
    pub sources: Vec<ResourceRef>,
}

/// DestinationRules by fully qualified host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleIndex {
    pub rules: BTreeMap<String, MergedRule>,
}

impl RuleIndex {
    pub fn get(&self, host: &str) -> Option<&MergedRule> {
        self.rules.get(host)
    }

    /// Is `subset` defined for `host` by some DestinationRule?
    pub fn has_subset(&self, host: &str, subset: &str) -> bool {
        self.get(host)
            .is_some_and(|r| r.subsets.iter().any(|s| s.name == subset))
    }

    /// The subset names defined for `host`, in definition order (for hints).
    pub fn subset_names(&self, host: &str) -> Vec<String> {
        self.get(host)
            .map(|r| r.subsets.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    }

    /// The consistent-hash setting that applies to traffic for host/subset/port, with istiod's
    /// precedence (subset port-level > subset > DR port-level > DR; the load balancer of the
    /// most specific level that sets one replaces the others whole). An undefined subset is
    /// treated as no subset.
    pub fn consistent_hash(
        &self,
        host: &str,
        subset: Option<&str>,
        port: u32,
    ) -> Option<&ConsistentHashLb> {
        let rule = self.get(host)?;
        let subset_policy = subset
            .and_then(|name| rule.subsets.iter().find(|s| s.name == name))
            .and_then(|s| s.traffic_policy.as_deref());
        traffic_policy::effective(rule.traffic_policy.as_deref(), subset_policy, port)
            .load_balancer?
            .consistent_hash
            .as_ref()
    }
}

/// Does a DestinationRule host (possibly `*.suffix` or `*`) cover a service host?
fn wildcard_covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern == host,
    }
}

/// One rule as written, after validation, remembered for the cross-checks.
struct Accepted<'a> {
    res: &'a Resource,
    host: String,
    /// (index in `spec.subsets`, subset as written) for the subsets this rule contributed.
    subsets: Vec<(usize, &'a Subset)>,
}

/// Validate one rule: host, subsets and policies. `None` if the rule is dropped; else the
/// rule, its valid subsets with checked policies (in the order of `Accepted::subsets`) and
/// its checked top-level policy.
fn check_rule<'a>(
    res: &'a Resource,
    dr: &'a DestinationRuleSpec,
    options: &Options,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Accepted<'a>, Vec<Subset>, Option<Box<TrafficPolicy>>)> {
    let written = dr.host.trim();
    if written.is_empty() {
        diags.push(
            res.diag(
                Diagnostic::error(Code::MissingField, "destination rule has no host"),
                "spec.host",
            )
            .hint("set spec.host to the service the rule applies to, e.g. calcbackendsvc; this DestinationRule is ignored"),
        );
        return None;
    }
    let host = resolve_short_name(written, res.namespace(), &options.domain_suffix);
    if dr.workload_selector.is_some() {
        diags.push(
            res.diag(
                Diagnostic::warning(
                    Code::UnsupportedField,
                    "workloadSelector is not supported: the rule applies to every proxy",
                ),
                "spec.workloadSelector",
            )
            .hint("remove workloadSelector, or keep it knowing shadowplane ignores it"),
        );
    }
    if dr.export_to.iter().any(|e| e != "*") {
        diags.push(
            res.diag(
                Diagnostic::warning(
                    Code::UnsupportedField,
                    "exportTo is not supported: the rule is visible to every proxy",
                ),
                "spec.exportTo",
            )
            .value(dr.export_to.join(", "))
            .hint("remove exportTo, or keep it knowing shadowplane ignores it"),
        );
    }
    let mut checker = Checker { res, diags };
    let policy = dr
        .traffic_policy
        .as_ref()
        .map(|p| Box::new(checker.traffic_policy(p, "spec.trafficPolicy")));
    // A subset is ~1.5 KB (its traffic policy is inline): size these once.
    let mut subsets: Vec<(usize, &Subset)> = Vec::with_capacity(dr.subsets.len());
    let mut checked: Vec<Subset> = Vec::with_capacity(dr.subsets.len());
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if s.name.trim().is_empty() {
            checker.diags.push(
                res.diag(
                    Diagnostic::error(Code::MissingField, "subset has no name"),
                    &format!("{path}.name"),
                )
                .hint("give the subset a name such as v1 and refer to it from VirtualService destinations; this subset is ignored"),
            );
            continue;
        }
        if let Some(first) = names.get(s.name.as_str()) {
            checker.diags.push(
                res.diag(
                    Diagnostic::error(
                        Code::DuplicateName,
                        format!("duplicate subset name {:?}", s.name),
                    ),
                    &format!("{path}.name"),
                )
                .value(s.name.clone())
                .hint(format!(
                    "spec.subsets[{first}] already defines {:?} and wins; rename or remove this subset",
                    s.name
                )),
            );
            continue;
        }
        names.insert(s.name.as_str(), i);
        let traffic_policy = s
            .traffic_policy
            .as_ref()
            .map(|p| Box::new(checker.traffic_policy(p, &format!("{path}.trafficPolicy"))));
        subsets.push((i, s));
        checked.push(Subset {
            name: s.name.clone(),
            labels: s.labels.clone(),
            traffic_policy,
        });
    }
    Some((Accepted { res, host, subsets }, checked, policy))
}

/// Index the DestinationRules: validate each, merge rules of one host like istiod (subsets
/// concatenated, first definition of a name wins, first top-level traffic policy wins), apply
/// wildcard hosts (`*.example.com`) to the services they cover when no exact rule exists, and
/// report rules for unknown hosts (IST0174) and subsets selecting no endpoint (IST0173).
pub fn index(
    resources: &[Resource],
    registry: &Registry,
    options: &Options,
    diags: &mut Vec<Diagnostic>,
) -> RuleIndex {
    // Rules merged per host, in input order, and the index of each host's rule. The map by
    // host is built once at the end, from the sorted hosts: a MergedRule is ~1.5 KB, and
    // inserting each into a B-tree in input order shifted whole nodes of them.
    let mut merged_rules: Vec<MergedRule> = Vec::new();
    let mut by_host: BTreeMap<String, usize> = BTreeMap::new();
    // For a host with several rules only: the rule that defined each of its subsets (in the
    // order of the merged rule's subsets).
    let mut owners: BTreeMap<String, Vec<ResourceRef>> = BTreeMap::new();
    let mut accepted: Vec<Accepted<'_>> = Vec::new();
    for res in resources {
        let Spec::DestinationRule(dr) = &res.spec else {
            continue;
        };
        let Some((mut acc, checked, policy)) = check_rule(res, dr, options, diags) else {
            continue;
        };
        match by_host.get(&acc.host) {
            None => {
                by_host.insert(acc.host.clone(), merged_rules.len());
                merged_rules.push(MergedRule {
                    host: acc.host.clone(),
                    subsets: checked,
                    traffic_policy: policy,
                    sources: vec![res.reference()],
                });
            }
            Some(&m) => {
                let merged = &mut merged_rules[m];
                // Until now every subset came from the host's first rule.
                let owner_of = owners
                    .entry(acc.host.clone())
                    .or_insert_with(|| vec![merged.sources[0].clone(); merged.subsets.len()]);
                let mut contributed = Vec::with_capacity(acc.subsets.len());
                for (&(i, written), subset) in acc.subsets.iter().zip(checked) {
                    match merged.subsets.iter().position(|s| s.name == written.name) {
                        Some(p) => {
                            let owner = &owner_of[p];
                            diags.push(
                                res.diag(
                                    Diagnostic::warning(
                                        Code::DuplicateName,
                                        format!(
                                            "subset {:?} of host {} is already defined by {owner}",
                                            written.name, acc.host
                                        ),
                                    ),
                                    &format!("spec.subsets[{i}].name"),
                                )
                                .value(written.name.clone())
                                .hint(format!(
                                    "the first definition ({owner}) wins; remove or rename this subset"
                                )),
                            );
                        }
                        None => {
                            merged.subsets.push(subset);
                            owner_of.push(res.reference());
                            contributed.push((i, written));
                        }
                    }
                }
                acc.subsets = contributed;
                match (&merged.traffic_policy, policy) {
                    (None, p) => merged.traffic_policy = p,
                    (Some(_), Some(_)) => diags.push(
                        res.diag(
                            Diagnostic::warning(
                                Code::DuplicateResource,
                                format!(
                                    "traffic policy ignored: an earlier DestinationRule for host {} already sets one",
                                    acc.host
                                ),
                            ),
                            "spec.trafficPolicy",
                        )
                        .hint(format!(
                            "the first top-level trafficPolicy wins ({}); move these settings there",
                            merged
                                .sources
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    ),
                    (Some(_), None) => {}
                }
                merged.sources.push(res.reference());
            }
        }
        accepted.push(acc);
    }
    let mut rules: BTreeMap<String, MergedRule> = {
        let mut slots: Vec<Option<MergedRule>> = merged_rules.into_iter().map(Some).collect();
        // In host order, so the map is built without moving rules around.
        by_host
            .into_iter()
            .filter_map(|(host, i)| Some((host, slots.get_mut(i)?.take()?)))
            .collect()
    };

    // Wildcard rules apply to services that have no exact rule: the most specific one wins.
    let wildcards: Vec<String> = rules
        .keys()
        .filter(|h| h.starts_with('*'))
        .cloned()
        .collect();
    for host in registry.services.keys() {
        if rules.contains_key(host) {
            continue;
        }
        let best = wildcards
            .iter()
            .filter(|w| wildcard_covers(w, host))
            .max_by_key(|w| w.len());
        if let Some(w) = best {
            let rule = rules[w].clone();
            rules.insert(host.clone(), rule);
        }
    }

    // The services each rule host applies to, in one pass over the registry (so in hostname
    // order): the service of that exact host and, for a wildcard host, the services it was
    // applied to above.
    let mut targets: BTreeMap<&str, Vec<&Service>> = BTreeMap::new();
    for svc in registry.services.values() {
        targets.entry(svc.hostname.as_str()).or_default().push(svc);
        if let Some(rule) = rules.get(&svc.hostname) {
            if rule.host.starts_with('*') && rule.host != svc.hostname {
                targets.entry(rule.host.as_str()).or_default().push(svc);
            }
        }
    }
    let mut similar = SimilarHosts::default();
    for acc in &accepted {
        let services = targets
            .get(acc.host.as_str())
            .map_or(&[][..], Vec::as_slice);
        check_references(acc, services, registry, &mut similar, diags);
    }
    RuleIndex { rules }
}

/// IST0174 (no service for the host) and IST0173 (a subset selects no endpoint). `targets`:
/// the services the rule's host applies to.
fn check_references<'r>(
    acc: &Accepted<'_>,
    targets: &[&Service],
    registry: &'r Registry,
    similar: &mut SimilarHosts<'r>,
    diags: &mut Vec<Diagnostic>,
) {
    if targets.is_empty() {
        diags.push(
            acc.res
                .diag(
                    Diagnostic::warning(
                        Code::UnknownDestinationRuleHost,
                        format!(
                            "the host {} defined in the DestinationRule does not match any services",
                            acc.host
                        ),
                    ),
                    "spec.host",
                )
                .value(acc.host.clone())
                .hint(unknown_host_hint(acc, registry, similar)),
        );
        return;
    }
    for (i, subset) in &acc.subsets {
        if subset.labels.is_empty() {
            continue;
        }
        let statics: Vec<&Service> = targets
            .iter()
            .filter(|s| s.resolution == Resolution::Static)
            .copied()
            .collect();
        if statics.is_empty() {
            continue;
        }
        let selects_any = statics.iter().any(|svc| {
            svc.endpoints
                .iter()
                .any(|ep| labels_match(&subset.labels, &ep.labels))
        });
        if selects_any {
            continue;
        }
        let svc = statics[0];
        let port = match svc.ports.as_slice() {
            [p] => p.number.to_string(),
            _ => "<port>".to_string(),
        };
        let labels = subset
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        diags.push(
            acc.res
                .diag(
                    Diagnostic::warning(
                        Code::SubsetSelectsNoEndpoints,
                        format!(
                            "the subset {:?} defined in the DestinationRule does not select any endpoint of {}",
                            subset.name, svc.hostname
                        ),
                    ),
                    &format!("spec.subsets[{i}].labels"),
                )
                .value(labels.clone())
                .hint(format!(
                    "requests to {} will get 503 UH (no healthy upstream); add an endpoint labelled {labels} to {} (or a WorkloadEntry it selects), or fix the subset labels",
                    cluster_name_display(&port, &subset.name, &svc.hostname),
                    svc.source
                )),
        );
    }
}

fn cluster_name_display(port: &str, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Service hosts by their first label (`calcbackendsvc` for `calcbackendsvc.ns.svc...`), in
/// hostname order: the "did you mean" candidates of an unknown host. Built on first use, so a
/// mesh without unknown hosts never pays for it, and one with many scans the registry once.
#[derive(Default)]
struct SimilarHosts<'r> {
    by_first_label: Option<BTreeMap<&'r str, Vec<&'r str>>>,
}

impl<'r> SimilarHosts<'r> {
    fn get(&mut self, registry: &'r Registry, short: &str) -> &[&'r str] {
        let index = self.by_first_label.get_or_insert_with(|| {
            let mut index: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for host in registry.services.keys() {
                let first = host.split('.').next().unwrap_or("");
                index.entry(first).or_default().push(host.as_str());
            }
            index
        });
        index.get(short).map_or(&[], Vec::as_slice)
    }
}

fn unknown_host_hint<'r>(
    acc: &Accepted<'_>,
    registry: &'r Registry,
    similar_hosts: &mut SimilarHosts<'r>,
) -> String {
    let written = match &acc.res.spec {
        Spec::DestinationRule(dr) => dr.host.trim().to_string(),
        _ => acc.host.clone(),
    };
    let short = written.split('.').next().unwrap_or("");
    // A ServiceEntry host written the same short way is taken literally by istiod.
    if written != acc.host && registry.get(&written).is_some() {
        return format!(
            "a ServiceEntry defines the literal host {written:?}, but a DestinationRule resolves short names to {}; write {} in the ServiceEntry's hosts (ServiceEntry hosts are not expanded)",
            acc.host, acc.host
        );
    }
    let similar: &[&str] = if short.is_empty() {
        &[]
    } else {
        similar_hosts.get(registry, short)
    };
    if !similar.is_empty() {
        return format!(
            "did you mean {}? otherwise add a ServiceEntry for {}; without a service the rule has no effect",
            similar.join(" or "),
            acc.host
        );
    }
    let mut hint = format!(
        "add a ServiceEntry with host {} or fix the host; without a service the rule has no effect",
        acc.host
    );
    let known = &registry.services;
    if known.is_empty() {
        hint.push_str(" (no services are defined)");
    } else if known.len() <= 8 {
        hint.push_str(&format!(
            " (known hosts: {})",
            known
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    hint
}

/// `subset ⊆ endpoint` label match (a subset with no labels selects everything).
fn labels_match(subset: &BTreeMap<String, String>, endpoint: &BTreeMap<String, String>) -> bool {
    subset.iter().all(|(k, v)| endpoint.get(k) == Some(v))
}

/// Build every cluster: per service and port, `outbound|port||host` plus one per defined
/// subset, sorted by name.
pub fn build_clusters(
    registry: &Registry,
    rules: &RuleIndex,
    _options: &Options,
    _diags: &mut Vec<Diagnostic>,
) -> Vec<Cluster> {
    let mut clusters = Vec::new();
    for svc in registry.services.values() {
        let rule = rules.get(&svc.hostname);
        let rule_policy = rule.and_then(|r| r.traffic_policy.as_deref());
        for port in &svc.ports {
            clusters.push(build_cluster(svc, port, None, rule_policy));
            for subset in rule.map(|r| r.subsets.as_slice()).unwrap_or_default() {
                clusters.push(build_cluster(svc, port, Some(subset), rule_policy));
            }
        }
    }
    // By a cached copy of the name: a cluster is ~450 bytes, and a comparison sort moves
    // elements O(n log n) times (at 40,000 clusters that was ~300 MB of copying); this sorts
    // (name, index) pairs and moves each cluster once. Stable, like sort_by.
    clusters.sort_by_cached_key(|c| c.name.clone());
    clusters
}

fn build_cluster(
    svc: &Service,
    port: &crate::lower::registry::ServicePort,
    subset: Option<&Subset>,
    rule_policy: Option<&TrafficPolicy>,
) -> Cluster {
    let discovery = match svc.resolution {
        Resolution::Static | Resolution::None => Discovery::Eds,
        Resolution::Dns => Discovery::StrictDns,
        Resolution::DnsRoundRobin => Discovery::LogicalDns,
    };
    let endpoints = if svc.resolution == Resolution::None {
        Vec::new()
    } else {
        svc.endpoints
            .iter()
            .filter(|ep| subset.is_none_or(|s| labels_match(&s.labels, &ep.labels)))
            .map(|ep| Endpoint {
                address: ep.address.clone(),
                port: ep.port_for(port),
                weight: ep.weight,
                locality: ep.locality.clone(),
            })
            .collect()
    };
    let eff = traffic_policy::effective(
        rule_policy,
        subset.and_then(|s| s.traffic_policy.as_deref()),
        port.number,
    );
    let settings = traffic_policy::cluster_settings(&eff, port.protocol);
    let subset_name = subset.map(|s| s.name.as_str());
    Cluster {
        name: cluster_name(port.number, subset_name, &svc.hostname),
        service: svc.hostname.clone(),
        port: port.number,
        subset: subset_name.map(str::to_string),
        discovery,
        endpoints,
        lb_policy: settings.lb_policy,
        connect_timeout: settings.connect_timeout,
        circuit_breakers: settings.circuit_breakers,
        outlier_detection: settings.outlier_detection,
        http_options: settings.http_options,
        tls: settings.tls,
        tcp_keepalive: settings.tcp_keepalive,
        healthy_panic_threshold: settings.healthy_panic_threshold,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::diag::Severity;
    use crate::ir::LbPolicy;
    use crate::lower::registry::tests::{meta, resource, service_entry, CALC_SE};

    const CALC: &str = "calcbackendsvc.challengeistio.svc.cluster.local";

    fn dr(ns: &str, name: &str, yaml: &str) -> Resource {
        let spec: DestinationRuleSpec = serde_yaml::from_str(yaml).expect("test yaml is valid");
        resource(meta(ns, name), Spec::DestinationRule(spec))
    }

    fn calc_se() -> Resource {
        service_entry("challengeistio", "calcbackend", CALC_SE)
    }

    /// The seed's rule, verbatim (re-indented).
    const SEED_DR: &str = r#"
host: calcbackendsvc
subsets:
- name: v1
  labels:
    version: v1
- name: v2
  labels:
    version: v2
"#;

    struct Out {
        rules: RuleIndex,
        clusters: Vec<Cluster>,
        diags: Vec<Diagnostic>,
    }

    fn run(resources: &[Resource]) -> Out {
        let options = Options::default();
        let mut diags = Vec::new();
        let registry = crate::lower::registry::build(resources, &options, &mut diags);
        let rules = index(resources, &registry, &options, &mut diags);
        let clusters = build_clusters(&registry, &rules, &options, &mut diags);
        Out {
            rules,
            clusters,
            diags,
        }
    }

    impl Out {
        fn cluster(&self, name: &str) -> &Cluster {
            self.clusters
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no cluster {name} in {:?}", self.names()))
        }
        fn names(&self) -> Vec<&str> {
            self.clusters.iter().map(|c| c.name.as_str()).collect()
        }
        fn codes(&self) -> Vec<(Severity, Code, String)> {
            self.diags
                .iter()
                .map(|d| (d.severity, d.code, d.field.clone().unwrap_or_default()))
                .collect()
        }
    }

    fn ports(c: &Cluster) -> Vec<u32> {
        c.endpoints.iter().map(|e| e.port).collect()
    }

    #[test]
    fn seed_rule_gives_default_and_defined_subset_clusters_only() {
        let out = run(&[calc_se(), dr("challengeistio", "calcbackend-rule", SEED_DR)]);
        assert!(out.diags.is_empty(), "{:?}", out.diags);
        assert_eq!(
            out.names(),
            // Sorted by name, bytewise: `|` sorts after letters.
            vec![
                format!("outbound|80|v1|{CALC}"),
                format!("outbound|80|v2|{CALC}"),
                format!("outbound|80||{CALC}"),
            ]
        );
        // No cluster for the undefined v3 even though endpoints labelled v3 exist.
        assert!(!out.names().iter().any(|n| n.contains("|v3|")));
        let all = out.cluster(&format!("outbound|80||{CALC}"));
        assert_eq!(all.discovery, Discovery::Eds);
        assert_eq!(ports(all), vec![9001, 9002, 9003]);
        assert_eq!(all.subset, None);
        let v1 = out.cluster(&format!("outbound|80|v1|{CALC}"));
        assert_eq!(ports(v1), vec![9001]);
        assert_eq!(v1.endpoints[0].address, "127.0.0.1");
        assert_eq!(v1.subset.as_deref(), Some("v1"));
        assert_eq!(v1.service, CALC);
        assert_eq!(v1.port, 80);
        assert_eq!(
            ports(out.cluster(&format!("outbound|80|v2|{CALC}"))),
            vec![9002]
        );
        // Defaults as istiod sets them.
        assert_eq!(v1.lb_policy, LbPolicy::LeastRequest);
        assert_eq!(v1.connect_timeout, Duration::from_secs(10));
        assert_eq!(v1.circuit_breakers.max_requests, u32::MAX);
        assert_eq!(v1.outlier_detection, None);
        assert_eq!(v1.tls, None);
        assert_eq!(v1.healthy_panic_threshold, 0.0);
        assert!(!v1.http_options.http2);
        assert!(out.rules.has_subset(CALC, "v2"));
        assert!(!out.rules.has_subset(CALC, "v3"));
        assert_eq!(out.rules.subset_names(CALC), vec!["v1", "v2"]);
    }

    #[test]
    fn subset_without_labels_selects_every_endpoint() {
        let out = run(&[
            calc_se(),
            dr(
                "challengeistio",
                "r",
                "host: calcbackendsvc\nsubsets: [{name: all}]\n",
            ),
        ]);
        assert_eq!(
            ports(out.cluster(&format!("outbound|80|all|{CALC}"))),
            vec![9001, 9002, 9003]
        );
    }

    #[test]
    fn subset_load_balancer_overrides_rule_load_balancer() {
        // Istio's T-D2: DR RANDOM, subset v1 ROUND_ROBIN.
        let out = run(&[
            calc_se(),
            dr(
                "challengeistio",
                "r",
                r#"
host: calcbackendsvc
trafficPolicy:
  loadBalancer: {simple: RANDOM}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
- name: v2
  labels: {version: v2}
"#,
            ),
        ]);
        assert!(out.diags.is_empty(), "{:?}", out.diags);
        assert_eq!(
            out.cluster(&format!("outbound|80|v1|{CALC}")).lb_policy,
            LbPolicy::RoundRobin
        );
        assert_eq!(
            out.cluster(&format!("outbound|80||{CALC}")).lb_policy,
            LbPolicy::Random
        );
        assert_eq!(
            out.cluster(&format!("outbound|80|v2|{CALC}")).lb_policy,
            LbPolicy::Random
        );
    }

    const TWO_PORTS: &str = r#"
hosts: [pp.example.com]
ports:
- {number: 80, name: http, protocol: HTTP}
- {number: 81, name: grpc, protocol: GRPC}
resolution: STATIC
endpoints:
- {address: 10.0.0.1, labels: {version: v1}}
"#;

    #[test]
    fn port_level_settings_replace_all_four_parts() {
        let out = run(&[
            service_entry("ns", "pp", TWO_PORTS),
            dr(
                "ns",
                "r",
                r#"
host: pp.example.com
trafficPolicy:
  loadBalancer: {simple: RANDOM}
  connectionPool: {tcp: {maxConnections: 10}}
  portLevelSettings:
  - port: {number: 80}
    outlierDetection: {consecutive5xxErrors: 3}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
- name: tls
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 7}}
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE, sni: pp.example.com}
"#,
            ),
        ]);
        assert!(out.diags.is_empty(), "{:?}", out.diags);
        // Port 80: the DR port-level entry replaces the DR's lb and pool with defaults.
        let c80 = out.cluster("outbound|80||pp.example.com");
        assert_eq!(c80.lb_policy, LbPolicy::LeastRequest);
        assert_eq!(c80.circuit_breakers.max_connections, u32::MAX);
        assert_eq!(
            c80.outlier_detection.as_ref().unwrap().consecutive_5xx,
            Some(3)
        );
        // Port 81: the top-level policy.
        let c81 = out.cluster("outbound|81||pp.example.com");
        assert_eq!(c81.lb_policy, LbPolicy::Random);
        assert_eq!(c81.circuit_breakers.max_connections, 10);
        assert_eq!(c81.outlier_detection, None);
        assert!(c81.http_options.http2, "GRPC ports talk HTTP/2 upstream");
        // Subset lb replaces; the rest comes from the DR's effective policy for the port.
        let v1_80 = out.cluster("outbound|80|v1|pp.example.com");
        assert_eq!(v1_80.lb_policy, LbPolicy::RoundRobin);
        assert!(v1_80.outlier_detection.is_some());
        let v1_81 = out.cluster("outbound|81|v1|pp.example.com");
        assert_eq!(v1_81.lb_policy, LbPolicy::RoundRobin);
        assert_eq!(v1_81.circuit_breakers.max_connections, 10);
        // Subset port-level (tls only) replaces the subset's own pool on port 80; unset parts
        // fall back to the DR port-level policy.
        let tls80 = out.cluster("outbound|80|tls|pp.example.com");
        assert_eq!(
            tls80.tls.as_ref().unwrap().sni.as_deref(),
            Some("pp.example.com")
        );
        assert_eq!(tls80.circuit_breakers.max_connections, u32::MAX);
        assert_eq!(tls80.lb_policy, LbPolicy::LeastRequest);
        assert!(tls80.outlier_detection.is_some());
        let tls81 = out.cluster("outbound|81|tls|pp.example.com");
        assert_eq!(tls81.tls, None);
        assert_eq!(tls81.circuit_breakers.max_connections, 7);
        assert_eq!(tls81.lb_policy, LbPolicy::Random);
    }

    #[test]
    fn dns_service_cluster_resolves_the_host() {
        let out = run(&[
            service_entry(
                "ns",
                "ext",
                "hosts: [api.example.com]\nports: [{number: 443, name: https, protocol: HTTPS}]\nresolution: DNS\n",
            ),
            service_entry(
                "ns",
                "rr",
                "hosts: [rr.example.com]\nports: [{number: 80, name: http}]\nresolution: DNS_ROUND_ROBIN\n",
            ),
            service_entry(
                "ns",
                "none",
                "hosts: [none.example.com]\nports: [{number: 80, name: http}]\nresolution: NONE\n",
            ),
        ]);
        let c = out.cluster("outbound|443||api.example.com");
        assert_eq!(c.discovery, Discovery::StrictDns);
        assert_eq!(
            c.endpoints
                .iter()
                .map(|e| (e.address.as_str(), e.port))
                .collect::<Vec<_>>(),
            vec![("api.example.com", 443)]
        );
        assert_eq!(
            out.cluster("outbound|80||rr.example.com").discovery,
            Discovery::LogicalDns
        );
        let none = out.cluster("outbound|80||none.example.com");
        assert_eq!(none.discovery, Discovery::Eds);
        assert!(none.endpoints.is_empty());
    }

    #[test]
    fn rules_for_one_host_merge_like_istiod() {
        let out = run(&[
            calc_se(),
            dr(
                "challengeistio",
                "a",
                "host: calcbackendsvc\ntrafficPolicy: {loadBalancer: {simple: RANDOM}}\nsubsets: [{name: v1, labels: {version: v1}}]\n",
            ),
            dr(
                "challengeistio",
                "b",
                r#"
host: calcbackendsvc.challengeistio.svc.cluster.local
trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
subsets:
- {name: v1, labels: {version: v2}}
- {name: v3, labels: {version: v3}}
"#,
            ),
        ]);
        let rule = out.rules.get(CALC).unwrap();
        assert_eq!(
            rule.subsets
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            vec!["v1", "v3"]
        );
        assert_eq!(
            rule.subsets[0].labels["version"], "v1",
            "first definition wins"
        );
        assert_eq!(
            rule.sources
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(
            ports(out.cluster(&format!("outbound|80|v1|{CALC}"))),
            vec![9001]
        );
        assert_eq!(
            ports(out.cluster(&format!("outbound|80|v3|{CALC}"))),
            vec![9003]
        );
        assert_eq!(
            out.cluster(&format!("outbound|80|v3|{CALC}")).lb_policy,
            LbPolicy::Random
        );
        assert_eq!(
            out.codes(),
            vec![
                (
                    Severity::Warning,
                    Code::DuplicateName,
                    "spec.subsets[0].name".into()
                ),
                (
                    Severity::Warning,
                    Code::DuplicateResource,
                    "spec.trafficPolicy".into()
                ),
            ]
        );
        assert!(
            out.diags[0]
                .message
                .contains("DestinationRule challengeistio/a"),
            "{}",
            out.diags[0].message
        );
        assert_eq!(out.diags[0].resource.as_ref().unwrap().name, "b");
    }

    #[test]
    fn duplicate_subset_in_one_rule_is_an_error_and_first_is_kept() {
        let out = run(&[
            calc_se(),
            dr(
                "challengeistio",
                "r",
                r#"
host: calcbackendsvc
subsets:
- {name: v1, labels: {version: v1}}
- {name: v1, labels: {version: v2}}
- {labels: {version: v3}}
"#,
            ),
        ]);
        assert_eq!(
            out.codes(),
            vec![
                (
                    Severity::Error,
                    Code::DuplicateName,
                    "spec.subsets[1].name".into()
                ),
                (
                    Severity::Error,
                    Code::MissingField,
                    "spec.subsets[2].name".into()
                ),
            ]
        );
        assert_eq!(out.diags[0].message, "duplicate subset name \"v1\"");
        assert_eq!(out.rules.subset_names(CALC), vec!["v1"]);
        assert_eq!(
            ports(out.cluster(&format!("outbound|80|v1|{CALC}"))),
            vec![9001]
        );
        assert_eq!(out.clusters.len(), 2);
    }

    #[test]
    fn rule_without_host_is_dropped() {
        let out = run(&[
            calc_se(),
            dr("challengeistio", "r", "subsets: [{name: v1}]\n"),
        ]);
        assert_eq!(
            out.codes(),
            vec![(Severity::Error, Code::MissingField, "spec.host".into())]
        );
        assert!(out.rules.rules.is_empty());
        assert_eq!(out.clusters.len(), 1);
    }

    #[test]
    fn unknown_host_warns_ist0174_with_a_hint() {
        let out = run(&[
            calc_se(),
            dr(
                "challengeistio",
                "r",
                "host: nosuchsvc\nsubsets: [{name: v1}]\n",
            ),
        ]);
        assert_eq!(
            out.codes(),
            vec![(
                Severity::Warning,
                Code::UnknownDestinationRuleHost,
                "spec.host".into()
            )]
        );
        let d = &out.diags[0];
        assert_eq!(d.code.id(), "IST0174");
        assert_eq!(
            d.message,
            "the host nosuchsvc.challengeistio.svc.cluster.local defined in the DestinationRule does not match any services"
        );
        let hint = d.hint.as_deref().unwrap();
        assert!(hint.contains("ServiceEntry"), "{hint}");
        assert!(hint.contains(CALC), "known hosts listed: {hint}");
        // The rule is still indexed (routes may name its subsets).
        assert!(out
            .rules
            .has_subset("nosuchsvc.challengeistio.svc.cluster.local", "v1"));

        // A ServiceEntry that wrote the short name literally gets a pointed hint.
        let out = run(&[
            service_entry(
                "ns",
                "se",
                "hosts: [httpbin]\nports: [{number: 8000, name: http}]\nresolution: STATIC\n",
            ),
            dr("ns", "r", "host: httpbin\n"),
        ]);
        let hint = out.diags[0].hint.as_deref().unwrap();
        assert!(hint.contains("httpbin.ns.svc.cluster.local"), "{hint}");
        assert!(hint.contains("not expanded"), "{hint}");
    }

    #[test]
    fn subset_selecting_no_endpoint_warns_ist0173() {
        let out = run(&[
            calc_se(),
            dr(
                "challengeistio",
                "r",
                "host: calcbackendsvc\nsubsets: [{name: v1, labels: {version: v1}}, {name: v4, labels: {version: v4}}]\n",
            ),
        ]);
        assert_eq!(
            out.codes(),
            vec![(
                Severity::Warning,
                Code::SubsetSelectsNoEndpoints,
                "spec.subsets[1].labels".into()
            )]
        );
        let d = &out.diags[0];
        assert!(d.message.contains("\"v4\""), "{}", d.message);
        let hint = d.hint.as_deref().unwrap();
        assert!(hint.contains("503 UH"), "{hint}");
        assert!(hint.contains(&format!("outbound|80|v4|{CALC}")), "{hint}");
        // The cluster still exists, empty.
        assert!(out
            .cluster(&format!("outbound|80|v4|{CALC}"))
            .endpoints
            .is_empty());
    }

    #[test]
    fn consistent_hash_precedence() {
        let out = run(&[
            service_entry("ns", "pp", TWO_PORTS),
            dr(
                "ns",
                "r",
                r#"
host: pp.example.com
trafficPolicy:
  loadBalancer: {consistentHash: {httpHeaderName: x-dr}}
  portLevelSettings:
  - port: {number: 81}
    loadBalancer: {consistentHash: {httpHeaderName: x-dr-81}}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: sticky, ttl: 10s}}}
    portLevelSettings:
    - port: {number: 81}
      loadBalancer: {consistentHash: {useSourceIp: true}}
- name: plain
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
- name: inherit
"#,
            ),
        ]);
        assert!(out.diags.is_empty(), "{:?}", out.diags);
        let h = "pp.example.com";
        let header = |s: Option<&str>, p: u32| {
            out.rules
                .consistent_hash(h, s, p)
                .and_then(|c| c.http_header_name.clone())
        };
        assert_eq!(header(None, 80).as_deref(), Some("x-dr"));
        assert_eq!(header(None, 81).as_deref(), Some("x-dr-81"));
        assert_eq!(header(Some("inherit"), 81).as_deref(), Some("x-dr-81"));
        assert_eq!(header(Some("undefined"), 80).as_deref(), Some("x-dr"));
        let v1_80 = out.rules.consistent_hash(h, Some("v1"), 80).unwrap();
        assert_eq!(v1_80.http_cookie.as_ref().unwrap().name, "sticky");
        let v1_81 = out.rules.consistent_hash(h, Some("v1"), 81).unwrap();
        assert_eq!(v1_81.use_source_ip, Some(true));
        assert_eq!(v1_81.http_cookie, None);
        assert_eq!(out.rules.consistent_hash(h, Some("plain"), 80), None);
        assert_eq!(
            out.rules.consistent_hash("other.example.com", None, 80),
            None
        );
        // And the clusters hash with a ring.
        assert_eq!(
            out.cluster("outbound|80|v1|pp.example.com").lb_policy,
            LbPolicy::RingHash {
                minimum_ring_size: 1024
            }
        );
        assert_eq!(
            out.cluster("outbound|80|plain|pp.example.com").lb_policy,
            LbPolicy::RoundRobin
        );
    }

    #[test]
    fn traffic_policy_settings_reach_the_cluster() {
        let out = run(&[
            service_entry("ns", "pp", TWO_PORTS),
            dr(
                "ns",
                "r",
                r#"
host: pp.example.com
trafficPolicy:
  loadBalancer:
    consistentHash:
      httpQueryParameterName: user
      maglev: {tableSize: 131071}
  connectionPool:
    tcp:
      maxConnections: 100
      connectTimeout: 250ms
      maxConnectionDuration: 1h
      idleTimeout: 5m
      tcpKeepalive: {probes: 3, time: 30s, interval: 5s}
    http:
      http1MaxPendingRequests: 5
      http2MaxRequests: 50
      maxRequestsPerConnection: 1
      maxRetries: 2
      h2UpgradePolicy: UPGRADE
      maxConcurrentStreams: 9
  outlierDetection:
    consecutive5xxErrors: 7
    consecutiveGatewayErrors: 2
    splitExternalLocalOriginErrors: true
    consecutiveLocalOriginFailures: 4
    interval: 10s
    baseEjectionTime: 30s
    maxEjectionPercent: 50
    minHealthPercent: 20
  tls:
    mode: SIMPLE
    caCertificates: /etc/ca.pem
    subjectAltNames: [pp.example.com]
    sni: pp.example.com
"#,
            ),
        ]);
        assert!(out.diags.is_empty(), "{:?}", out.diags);
        let c = out.cluster("outbound|80||pp.example.com");
        assert_eq!(
            c.lb_policy,
            LbPolicy::Maglev {
                table_size: Some(131071)
            }
        );
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(
            c.circuit_breakers,
            crate::ir::CircuitBreakers {
                max_connections: 100,
                max_pending_requests: 5,
                max_requests: 50,
                max_retries: 2
            }
        );
        assert_eq!(
            c.http_options,
            crate::ir::HttpOptions {
                idle_timeout: Some(Duration::from_secs(300)),
                max_requests_per_connection: Some(1),
                max_connection_duration: Some(Duration::from_secs(3600)),
                max_concurrent_streams: Some(9),
                http2: true,
                use_client_protocol: false,
            }
        );
        assert_eq!(
            c.tcp_keepalive,
            Some(crate::ir::TcpKeepalive {
                probes: Some(3),
                time: Some(Duration::from_secs(30)),
                interval: Some(Duration::from_secs(5))
            })
        );
        assert_eq!(
            c.outlier_detection,
            Some(crate::ir::OutlierDetection {
                consecutive_5xx: Some(7),
                consecutive_gateway_failure: Some(2),
                consecutive_local_origin_failure: Some(4),
                split_external_local_origin_errors: true,
                interval: Some(Duration::from_secs(10)),
                base_ejection_time: Some(Duration::from_secs(30)),
                max_ejection_percent: Some(50),
            })
        );
        assert_eq!(c.healthy_panic_threshold, 20.0);
        assert_eq!(
            c.tls,
            Some(crate::ir::UpstreamTls {
                sni: Some("pp.example.com".into()),
                subject_alt_names: vec!["pp.example.com".into()],
                ca_certificates: Some("/etc/ca.pem".into()),
                client_certificate: None,
                private_key: None,
                insecure_skip_verify: false,
            })
        );
    }

    #[test]
    fn invalid_policies_are_reported_and_fall_back_to_defaults() {
        let out = run(&[
            calc_se(),
            dr(
                "challengeistio",
                "r",
                r#"
host: calcbackendsvc
trafficPolicy:
  loadBalancer: {simple: FASTEST}
  connectionPool:
    tcp: {connectTimeout: soon}
    http: {maxRetries: -1}
  outlierDetection: {consecutiveErrors: 4}
  tls: {mode: ISTIO_MUTUAL}
  portLevelSettings:
  - loadBalancer: {simple: RANDOM}
  tunnel: {protocol: CONNECT}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    loadBalancer: {simple: PASSTHROUGH}
- name: v2
  labels: {version: v2}
  trafficPolicy:
    loadBalancer: {consistentHash: {}}
"#,
            ),
        ]);
        let p = "spec.trafficPolicy";
        assert_eq!(
            out.codes(),
            vec![
                (
                    Severity::Warning,
                    Code::UnsupportedField,
                    format!("{p}.tunnel")
                ),
                (
                    Severity::Error,
                    Code::MissingField,
                    format!("{p}.portLevelSettings[0].port")
                ),
                (
                    Severity::Error,
                    Code::InvalidValue,
                    format!("{p}.loadBalancer.simple")
                ),
                (
                    Severity::Error,
                    Code::InvalidValue,
                    format!("{p}.connectionPool.tcp.connectTimeout")
                ),
                (
                    Severity::Error,
                    Code::InvalidValue,
                    format!("{p}.connectionPool.http.maxRetries")
                ),
                (
                    Severity::Warning,
                    Code::DeprecatedField,
                    format!("{p}.outlierDetection.consecutiveErrors")
                ),
                (
                    Severity::Warning,
                    Code::UnsupportedField,
                    format!("{p}.tls.mode")
                ),
                (
                    Severity::Warning,
                    Code::UnsupportedField,
                    "spec.subsets[0].trafficPolicy.loadBalancer.simple".into()
                ),
                (
                    Severity::Error,
                    Code::InvalidValue,
                    "spec.subsets[1].trafficPolicy.loadBalancer.consistentHash".into()
                ),
            ]
        );
        let bad_lb = &out.diags[2];
        assert!(bad_lb.message.contains("\"FASTEST\""), "{}", bad_lb.message);
        assert!(bad_lb.hint.as_deref().unwrap().contains("LEAST_REQUEST"));
        let c = out.cluster(&format!("outbound|80||{CALC}"));
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.circuit_breakers.max_retries, u32::MAX);
        assert_eq!(
            c.outlier_detection.as_ref().unwrap().consecutive_5xx,
            Some(4)
        );
        assert_eq!(c.tls, None);
        assert_eq!(
            out.cluster(&format!("outbound|80|v1|{CALC}")).lb_policy,
            LbPolicy::LeastRequest
        );
        assert_eq!(
            out.cluster(&format!("outbound|80|v2|{CALC}")).lb_policy,
            LbPolicy::LeastRequest
        );
        assert_eq!(out.rules.consistent_hash(CALC, Some("v2"), 80), None);
    }

    #[test]
    fn wildcard_rule_applies_to_covered_services_without_an_exact_rule() {
        let out = run(&[
            service_entry(
                "ns",
                "se",
                "hosts: [a.example.com, b.example.com]\nports: [{number: 80, name: http}]\nresolution: STATIC\n",
            ),
            dr("ns", "wild", "host: \"*.example.com\"\ntrafficPolicy: {loadBalancer: {simple: RANDOM}}\n"),
            dr("ns", "b", "host: b.example.com\ntrafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n"),
        ]);
        assert!(out.diags.is_empty(), "{:?}", out.diags);
        assert_eq!(
            out.cluster("outbound|80||a.example.com").lb_policy,
            LbPolicy::Random
        );
        assert_eq!(
            out.cluster("outbound|80||b.example.com").lb_policy,
            LbPolicy::RoundRobin
        );
    }

    #[test]
    fn diagnostics_point_at_the_yaml_position_of_the_field() {
        let text = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: calcbackend
  namespace: challengeistio
spec:
  hosts: [calcbackendsvc.challengeistio.svc.cluster.local]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    labels: {version: v1}
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
  - name: v1
    labels:
      version: v2
"#;
        let parsed = crate::parse::parse_file("dr.yaml", text);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let out = run(&parsed.resources);
        assert_eq!(out.diags.len(), 1, "{:?}", out.diags);
        let d = &out.diags[0];
        assert_eq!(d.code, Code::DuplicateName);
        let loc = d.location.as_ref().unwrap();
        assert_eq!((loc.file.as_str(), loc.line), ("dr.yaml", 26));
        assert_eq!(
            d.resource.as_ref().unwrap().to_string(),
            "DestinationRule challengeistio/calcbackend-rule"
        );
    }
}
