//! VirtualService → virtual hosts and routes (match, action, mirrors, retries, fault, CORS, headers).
//!
//! Two steps, so that every diagnostic is reported exactly once per resource however many
//! listeners a VirtualService lands on:
//! 1. [`compile_all`] validates each VirtualService once and keeps its rules in a
//!    listener-independent form ([`CompiledVs`]); a rule with an error is dropped (the rest of
//!    the VirtualService still translates), a VirtualService with no usable hosts is dropped.
//! 2. [`CompiledVs::routes`] instantiates the rules for one listener port and gateway context
//!    (`mesh` or the gateways of a gateway listener): config-time selectors (`match.port`,
//!    `match.gateways`), the catch-all short-circuit, destination ports and cluster names.
//!
//! [`mesh_index`] decides which VirtualService owns each host on sidecar listeners.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::diag::{Code, Diagnostic};
use crate::ir::{
    ClusterSpecifier, Cors, DirectResponse, Fault, Forward, MirrorPolicy, RegexRewrite,
    RetryPolicy, Route, RouteAction, RouteMatch, WeightedCluster,
};
use crate::istio::{HttpMatchRequest, HttpRoute, Spec, VirtualServiceSpec};
use crate::lower::destination_rule::RuleIndex;
use crate::lower::registry::Registry;
use crate::lower::resolve_short_name;
use crate::lower::route::action::{self, RedirectSpec, RefKind, Target};
use crate::lower::route::headers::{self, authority_writes, HeaderOps};
use crate::lower::route::matcher::{self, check_regex, decorator_path, is_catch_all};
use crate::lower::route::mirror::{self, MirrorSpec};
use crate::lower::route::util::{parse_timestamp, Cx, RegexVerdicts, Reported};
use crate::lower::route::{cors, fault, retry};
use crate::source::Resource;
use crate::Options;

/// The reserved gateway name of every sidecar.
pub(crate) const MESH: &str = "mesh";

/// One host of a VirtualService, resolved to a FQDN (wildcards and IPs kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VsHost {
    pub host: String,
    /// Index in `spec.hosts` (for diagnostics).
    pub index: usize,
}

/// A validated VirtualService.
#[derive(Debug, Clone)]
pub(crate) struct CompiledVs<'a> {
    pub res: &'a Resource,
    /// Unique resolved hosts; `*` only when the VirtualService is not bound to `mesh`.
    pub hosts: Vec<VsHost>,
    /// `mesh` and/or `namespace/name` of Gateways (empty `gateways` → `mesh`).
    pub gateways: BTreeSet<String>,
    rules: Vec<Rule>,
    /// Parsed `metadata.creationTimestamp`.
    created: Option<(i64, u32)>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// Index in `spec.http`.
    index: usize,
    name: Option<String>,
    /// `None`: the rule has no `match` (matches everything, ends the VirtualService).
    matches: Option<Vec<Match>>,
    action: Action,
    headers: HeaderOps,
    fault: Option<Fault>,
    cors: Option<Cors>,
}

#[derive(Debug, Clone)]
struct Match {
    name: Option<String>,
    matcher: RouteMatch,
    /// Config-time selector: only on this listener port.
    port: Option<u32>,
    /// Config-time selector: normalized gateway names overriding the VirtualService's.
    gateways: BTreeSet<String>,
    stat_prefix: Option<String>,
}

#[derive(Debug, Clone)]
enum Action {
    Forward(ForwardSpec),
    Redirect(RedirectSpec),
    DirectResponse(DirectResponse),
}

#[derive(Debug, Clone)]
struct ForwardSpec {
    destinations: Vec<DestSpec>,
    timeout: Duration,
    retry: Option<RetryPolicy>,
    mirrors: Vec<MirrorSpec>,
    prefix_rewrite: Option<String>,
    regex_rewrite: Option<RegexRewrite>,
    /// Route-level authority: `rewrite.authority`, else `:authority`/`host` in headers.
    authority: Option<String>,
}

#[derive(Debug, Clone)]
struct DestSpec {
    target: Target,
    weight: u32,
    headers: HeaderOps,
}

/// Normalize a gateway reference: `mesh`, `ns/name`, or a bare name in the VirtualService's
/// namespace.
pub(crate) fn normalize_gateway(name: &str, namespace: &str) -> String {
    if name == MESH || name.contains('/') {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// Does `pattern` (a host that may be `*` or `*.suffix`) cover `host` (which may itself be a
/// narrower wildcard)?
pub(crate) fn host_covers(pattern: &str, host: &str) -> bool {
    if pattern == host || pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        // `*.example.com` covers `a.example.com` and `*.a.example.com`.
        Some(suffix) if suffix.starts_with('.') => {
            host.len() > suffix.len() && host.ends_with(suffix)
        }
        _ => false,
    }
}

/// Validate every VirtualService in input order. `known_gateways` holds `ns/name` of every
/// Gateway (for `GatewayNotFound`).
pub(crate) fn compile_all<'a>(
    resources: &'a [Resource],
    registry: &'a Registry,
    rules: &'a RuleIndex,
    options: &'a Options,
    known_gateways: &BTreeSet<String>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<CompiledVs<'a>> {
    let mut out = Vec::new();
    let mut regexes = RegexVerdicts::new();
    for res in resources {
        let Spec::VirtualService(spec) = &res.spec else {
            continue;
        };
        let mut cx = Cx {
            res,
            registry,
            rules,
            options,
            diags: &mut *diags,
            regexes: &mut regexes,
        };
        if let Some(vs) = compile(&mut cx, spec, known_gateways) {
            out.push(vs);
        }
    }
    out
}

fn warn_unsupported(cx: &mut Cx<'_, '_>, field: &str, what: &str, consequence: &str) {
    cx.emit(
        Diagnostic::warning(
            Code::UnsupportedField,
            format!("{what} is not supported by shadowplane; {consequence}"),
        )
        .hint("remove the field, or expect it to have no effect"),
        field,
    );
}

fn compile<'a>(
    cx: &mut Cx<'a, '_>,
    spec: &'a VirtualServiceSpec,
    known_gateways: &BTreeSet<String>,
) -> Option<CompiledVs<'a>> {
    let res = cx.res;
    let ns = res.namespace().to_string();
    if spec.tls.is_some() {
        warn_unsupported(
            cx,
            "spec.tls",
            "tls (TLS routes)",
            "the tls routes are ignored",
        );
    }
    if spec.tcp.is_some() {
        warn_unsupported(
            cx,
            "spec.tcp",
            "tcp (TCP routes)",
            "the tcp routes are ignored",
        );
    }
    if !spec.export_to.is_empty() && spec.export_to.iter().any(|e| e != "*") {
        warn_unsupported(
            cx,
            "spec.exportTo",
            "exportTo",
            "the virtual service is visible to every proxy",
        );
    }

    let mut gateways = BTreeSet::new();
    if spec.gateways.is_empty() {
        gateways.insert(MESH.to_string());
    }
    for (i, g) in spec.gateways.iter().enumerate() {
        let norm = normalize_gateway(g, &ns);
        check_gateway(cx, &norm, g, known_gateways, &format!("spec.gateways[{i}]"));
        gateways.insert(norm);
    }
    let mesh_bound = gateways.contains(MESH);

    let created = match res.metadata.creation_timestamp.as_deref() {
        None => None,
        Some(ts) => {
            let parsed = parse_timestamp(ts);
            if parsed.is_none() {
                cx.emit(
                    Diagnostic::warning(
                        Code::InvalidValue,
                        format!("creationTimestamp {ts:?} is not an RFC 3339 time; the virtual service is treated as the oldest"),
                    )
                    .value(ts)
                    .hint("write e.g. \"2024-05-01T12:00:00Z\" or remove the field"),
                    "metadata.creationTimestamp",
                );
            }
            parsed
        }
    };

    if spec.hosts.is_empty() {
        cx.emit(
            Diagnostic::error(Code::MissingField, "virtual service has no hosts")
                .hint("list the hosts it routes under spec.hosts (the virtual service is dropped until then)"),
            "spec.hosts",
        );
        return None;
    }
    let mut hosts: Vec<VsHost> = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if h.is_empty() {
            cx.emit(
                Diagnostic::error(Code::InvalidValue, "empty host")
                    .hint("remove the entry or write a host name"),
                &field,
            );
            continue;
        }
        let host = resolve_short_name(h, &ns, &cx.options.domain_suffix);
        if hosts.iter().any(|x| x.host == host) {
            cx.emit(
                Diagnostic::error(
                    Code::DuplicateName,
                    format!("duplicate hosts in virtual service: {host:?}"),
                )
                .value(h.clone())
                .hint("list each host once; the duplicate is ignored"),
                &field,
            );
            continue;
        }
        if host == "*" && mesh_bound {
            cx.emit(
                Diagnostic::error(
                    Code::InvalidValue,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                )
                .value(h.clone())
                .hint("name the hosts, or bind the virtual service to a Gateway only; the host is ignored"),
                &field,
            );
            continue;
        }
        hosts.push(VsHost { host, index: i });
    }
    if hosts.is_empty() {
        return None;
    }

    if spec.http.is_empty() {
        if spec.tcp.is_none() && spec.tls.is_none() {
            cx.emit(
                Diagnostic::error(Code::MissingField, "virtual service has no http routes")
                    .hint("add rules under spec.http (the virtual service is dropped until then)"),
                "spec.http",
            );
        }
        return None;
    }

    let mut rules = Vec::new();
    for (i, http) in spec.http.iter().enumerate() {
        if let Some(rule) = compile_rule(cx, http, i, known_gateways) {
            rules.push(rule);
        }
    }
    report_unreachable(cx, &rules);

    Some(CompiledVs {
        res,
        hosts,
        gateways,
        rules,
        created,
    })
}

fn check_gateway(
    cx: &mut Cx<'_, '_>,
    norm: &str,
    written: &str,
    known: &BTreeSet<String>,
    field: &str,
) {
    if norm != MESH && !known.contains(norm) {
        cx.emit(
            Diagnostic::error(
                Code::GatewayNotFound,
                format!("gateway {norm:?} not found"),
            )
            .value(written)
            .hint("define the Gateway, fix the name (`namespace/name`, or a bare name in the virtual service's namespace), or use `mesh`"),
            field,
        );
    }
}

/// IST0130: rules after one that matches every request on every port can never be used.
fn report_unreachable(cx: &mut Cx<'_, '_>, rules: &[Rule]) {
    let mut catch_all: Option<usize> = None;
    for rule in rules {
        if let Some(first) = catch_all {
            cx.emit(
                Diagnostic::warning(
                    Code::VirtualServiceUnreachableRule,
                    format!(
                        "virtual service rule spec.http[{}] not used: rule spec.http[{first}] before it matches every request",
                        rule.index
                    ),
                )
                .hint("move the catch-all rule last, or give it a match"),
                &format!("spec.http[{}]", rule.index),
            );
            continue;
        }
        let unconditional = match &rule.matches {
            None => true,
            Some(ms) => ms
                .iter()
                .any(|m| is_catch_all(&m.matcher) && m.port.is_none() && m.gateways.is_empty()),
        };
        if unconditional {
            catch_all = Some(rule.index);
        }
    }
}

fn compile_rule(
    cx: &mut Cx<'_, '_>,
    http: &HttpRoute,
    i: usize,
    known_gateways: &BTreeSet<String>,
) -> Option<Rule> {
    let field = format!("spec.http[{i}]");
    if http.delegate.is_some() {
        warn_unsupported(
            cx,
            &format!("{field}.delegate"),
            "delegate",
            "the rule is skipped",
        );
        return None;
    }
    let mut failed = false;

    // Exactly one kind of action (Istio's validateHTTPRoute).
    let has_route = !http.route.is_empty();
    let conflicting = |pairs: &[(&'static str, bool)]| -> Vec<&'static str> {
        pairs
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect()
    };
    if http.redirect.is_some() {
        let with = conflicting(&[
            ("route", has_route),
            ("fault", http.fault.is_some()),
            ("rewrite", http.rewrite.is_some()),
            ("directResponse", http.direct_response.is_some()),
        ]);
        if !with.is_empty() {
            cx.emit(
                Diagnostic::error(
                    Code::ConflictingRouteAction,
                    format!("redirect cannot be combined with {}", with.join(", ")),
                )
                .hint("a rule either redirects, answers directly or routes; split it into separate rules (the rule is dropped until then)"),
                &format!("{field}.redirect"),
            );
            failed = true;
        }
    } else if http.direct_response.is_some() {
        let with = conflicting(&[
            ("route", has_route),
            ("fault", http.fault.is_some()),
            ("rewrite", http.rewrite.is_some()),
        ]);
        if !with.is_empty() {
            cx.emit(
                Diagnostic::error(
                    Code::ConflictingRouteAction,
                    format!("directResponse cannot be combined with {}", with.join(", ")),
                )
                .hint("a rule either answers directly or routes; split it into separate rules (the rule is dropped until then)"),
                &format!("{field}.directResponse"),
            );
            failed = true;
        }
    } else if !has_route {
        cx.emit(
            Diagnostic::error(
                Code::ConflictingRouteAction,
                "http route, redirect or direct_response is required",
            )
            .hint("add a route (destinations), a redirect or a directResponse (the rule is dropped until then)"),
            &field,
        );
        failed = true;
    }

    // Matches.
    let matches = if http.matches.is_empty() {
        None
    } else {
        let mut out = Vec::new();
        for (j, m) in http.matches.iter().enumerate() {
            match compile_match(cx, m, &format!("{field}.match[{j}]"), known_gateways) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {}
                Err(Reported) => failed = true,
            }
        }
        if out.is_empty() && !failed {
            // Every match was skipped (unsupported): the rule never matches. It must not turn
            // into a match-less catch-all.
            return None;
        }
        Some(out)
    };

    let mirrors = match mirror::translate(cx, http, &field) {
        Ok(m) => m,
        Err(Reported) => {
            failed = true;
            Vec::new()
        }
    };

    let headers_field = path_if_set(http.headers.as_ref(), &field, ".headers");
    let route_headers = headers::translate(cx, http.headers.as_ref(), &headers_field);
    let rewrite_authority = http
        .rewrite
        .as_ref()
        .and_then(|r| r.authority.clone())
        .filter(|a| !a.is_empty());
    let mut writes: Vec<(String, String)> = Vec::new();
    if let Some(a) = &rewrite_authority {
        writes.push((format!("{field}.rewrite.authority"), a.clone()));
    }
    writes.extend(authority_writes(http.headers.as_ref(), &headers_field));
    if authority_conflict(cx, &writes) {
        failed = true;
    }
    let route_authority = rewrite_authority
        .clone()
        .or(route_headers.authority.clone());

    let fault_field = path_if_set(http.fault.as_ref(), &field, ".fault");
    let fault = match fault::translate(cx, http.fault.as_ref(), &fault_field) {
        Ok(f) => f,
        Err(Reported) => {
            failed = true;
            None
        }
    };
    let cors_field = path_if_set(http.cors_policy.as_ref(), &field, ".corsPolicy");
    let cors = match cors::translate(cx, http.cors_policy.as_ref(), &cors_field) {
        Ok(c) => c,
        Err(Reported) => {
            failed = true;
            None
        }
    };

    let mirror_ignored = |cx: &mut Cx<'_, '_>, kind: &str| {
        if http.mirror.is_some() || !http.mirrors.is_empty() {
            cx.emit(
                Diagnostic::warning(
                    Code::ConflictingRouteAction,
                    format!("mirror has no effect on a {kind} rule; only rules with route destinations are mirrored"),
                )
                .hint("move the mirror to a rule that routes to destinations"),
                &format!("{field}.{}", if http.mirror.is_some() { "mirror" } else { "mirrors" }),
            );
        }
    };

    let action = if let Some(r) = &http.redirect {
        mirror_ignored(cx, "redirect");
        action::redirect(cx, r, &format!("{field}.redirect"))
            .ok()
            .map(Action::Redirect)
    } else if let Some(d) = &http.direct_response {
        mirror_ignored(cx, "directResponse");
        action::direct_response(cx, d, &format!("{field}.directResponse"))
            .ok()
            .map(Action::DirectResponse)
    } else if has_route {
        compile_forward(
            cx,
            http,
            &field,
            mirrors,
            rewrite_authority.as_deref(),
            route_authority,
        )
        .ok()
        .map(Action::Forward)
    } else {
        None
    };
    let action = match action {
        Some(a) if !failed => a,
        _ => return None,
    };

    Some(Rule {
        index: i,
        name: http.name.clone().filter(|n| !n.is_empty()),
        matches,
        action,
        headers: route_headers,
        fault,
        cors,
    })
}

/// `authority header cannot be set multiple times`: report the second write.
/// `{field}{suffix}`, the field path of an optional part, or nothing when the part is not
/// set: the functions it is passed to return at once for an absent part, and formatting the
/// path of every part of every rule was a tenth of lowering.
fn path_if_set<T>(value: Option<&T>, field: &str, suffix: &str) -> String {
    match value {
        Some(_) => format!("{field}{suffix}"),
        None => String::new(),
    }
}

fn authority_conflict(cx: &mut Cx<'_, '_>, writes: &[(String, String)]) -> bool {
    if writes.len() < 2 {
        return false;
    }
    let (first_field, first) = &writes[0];
    let (field, value) = &writes[1];
    cx.emit(
        Diagnostic::error(
            Code::AuthorityConflict,
            format!("authority header cannot be set multiple times: have {first:?}, attempting to set {value:?}"),
        )
        .value(value.clone())
        .hint(format!("set the authority in one place only (it is already set at {first_field}); the rule is dropped until then")),
        field,
    );
    true
}

fn compile_match(
    cx: &mut Cx<'_, '_>,
    m: &HttpMatchRequest,
    field: &str,
    known_gateways: &BTreeSet<String>,
) -> Result<Option<Match>, Reported> {
    if m.source_labels.is_some() {
        warn_unsupported(
            cx,
            &format!("{field}.sourceLabels"),
            "sourceLabels",
            "the match applies to every client",
        );
    }
    if m.source_namespace.is_some() {
        warn_unsupported(
            cx,
            &format!("{field}.sourceNamespace"),
            "sourceNamespace",
            "the match applies to every client",
        );
    }
    let jwt = m
        .headers
        .keys()
        .map(|k| ("headers", k))
        .chain(m.without_headers.keys().map(|k| ("withoutHeaders", k)))
        .find(|(_, k)| k.starts_with("@request.auth.claims"));
    if let Some((map, key)) = jwt {
        warn_unsupported(
            cx,
            &format!("{field}.{map}.{key}"),
            "matching on JWT claims (@request.auth.claims)",
            "this match block is skipped",
        );
        return Ok(None);
    }
    let mut gateways = BTreeSet::new();
    for (k, g) in m.gateways.iter().enumerate() {
        let norm = normalize_gateway(g, cx.namespace());
        check_gateway(
            cx,
            &norm,
            g,
            known_gateways,
            &format!("{field}.gateways[{k}]"),
        );
        gateways.insert(norm);
    }
    let matcher = matcher::translate(cx, m, field)?;
    Ok(Some(Match {
        name: m.name.clone().filter(|n| !n.is_empty()),
        matcher,
        port: m.port.filter(|p| *p != 0),
        gateways,
        stat_prefix: m.stat_prefix.clone().filter(|s| !s.is_empty()),
    }))
}

fn compile_forward(
    cx: &mut Cx<'_, '_>,
    http: &HttpRoute,
    field: &str,
    mirrors: Vec<MirrorSpec>,
    rewrite_authority: Option<&str>,
    route_authority: Option<String>,
) -> Result<ForwardSpec, Reported> {
    let mut failed = false;
    let mut destinations = Vec::new();
    let mut total: i64 = 0;
    for (j, d) in http.route.iter().enumerate() {
        let df = format!("{field}.route[{j}]");
        let weight = d.weight.unwrap_or(0);
        if weight < 0 || weight > i64::from(i32::MAX) {
            cx.emit(
                Diagnostic::error(
                    Code::InvalidWeight,
                    format!(
                        "weight {weight} is out of range; it must be between 0 and {}",
                        i32::MAX
                    ),
                )
                .value(weight.to_string())
                .hint("use a non-negative weight (the rule is dropped until then)"),
                &format!("{df}.weight"),
            );
            failed = true;
        }
        total += weight.max(0);
        let target = action::target(
            cx,
            &d.destination,
            &format!("{df}.destination"),
            RefKind::Route,
        );
        let headers_field = path_if_set(d.headers.as_ref(), &df, ".headers");
        let dest_headers = headers::translate(cx, d.headers.as_ref(), &headers_field);
        let mut writes: Vec<(String, String)> = Vec::new();
        if let Some(a) = rewrite_authority {
            writes.push((format!("{field}.rewrite.authority"), a.to_string()));
        }
        writes.extend(authority_writes(d.headers.as_ref(), &headers_field));
        if authority_conflict(cx, &writes) {
            failed = true;
        }
        match target {
            Ok(target) => destinations.push(DestSpec {
                target,
                weight: u32::try_from(weight).unwrap_or(0),
                headers: dest_headers,
            }),
            Err(Reported) => failed = true,
        }
    }
    if http.route.len() > 1 && total == 0 && !failed {
        cx.emit(
            Diagnostic::error(Code::InvalidWeight, "total destination weight = 0")
                .value("0")
                .hint("give at least one destination a positive weight (the rule is dropped until then)"),
            &format!("{field}.route"),
        );
        failed = true;
    }

    let timeout = match &http.timeout {
        Some(t) => cx
            .duration(t, &format!("{field}.timeout"))
            .unwrap_or(Duration::ZERO),
        None => Duration::ZERO,
    };
    let retries_field = path_if_set(http.retries.as_ref(), field, ".retries");
    let retry = retry::translate(cx, http.retries.as_ref(), &retries_field);

    let mut prefix_rewrite = None;
    let mut regex_rewrite = None;
    if let Some(rw) = &http.rewrite {
        let uri = rw.uri.clone().filter(|u| !u.is_empty());
        if let Some(rr) = &rw.uri_regex_rewrite {
            if uri.is_some() {
                cx.emit(
                    Diagnostic::error(
                        Code::InvalidValue,
                        "rewrite sets both uri and uriRegexRewrite; only one is allowed",
                    )
                    .hint("keep uri or uriRegexRewrite (the rule is dropped until then)"),
                    &format!("{field}.rewrite.uriRegexRewrite"),
                );
                failed = true;
            }
            if check_regex(
                cx,
                &rr.pattern,
                &format!("{field}.rewrite.uriRegexRewrite.match"),
            )
            .is_err()
            {
                failed = true;
            }
            regex_rewrite = Some(RegexRewrite {
                pattern: rr.pattern.clone(),
                substitution: rr.rewrite.clone(),
            });
        } else {
            prefix_rewrite = uri;
        }
    }
    if failed {
        return Err(Reported);
    }
    Ok(ForwardSpec {
        destinations,
        timeout,
        retry,
        mirrors,
        prefix_rewrite,
        regex_rewrite,
        authority: route_authority,
    })
}

impl CompiledVs<'_> {
    pub fn name(&self) -> &str {
        self.res.name()
    }

    pub fn namespace(&self) -> &str {
        self.res.namespace()
    }

    /// Is the VirtualService bound to `gateway` (`mesh` or `ns/name`)?
    pub fn binds_to(&self, gateway: &str) -> bool {
        self.gateways.contains(gateway)
    }

    /// istiod's precedence among VirtualServices claiming the same host: oldest
    /// `creationTimestamp` first (absent counts as oldest), then name, then namespace.
    fn age_key(&self) -> (bool, Option<(i64, u32)>, &str, &str) {
        (
            self.created.is_some(),
            self.created,
            self.name(),
            self.namespace(),
        )
    }

    /// The routes of this VirtualService on listener `port` for a proxy acting as the
    /// gateways in `context` (`{"mesh"}` for sidecar listeners), in the user's order, with
    /// istiod's short-circuit after the first catch-all route. May be empty.
    pub fn routes(
        &self,
        port: u32,
        context: &BTreeSet<String>,
        rules: &RuleIndex,
        options: &Options,
    ) -> Vec<Route> {
        let mut out = Vec::new();
        for rule in &self.rules {
            match &rule.matches {
                None => {
                    out.push(self.route(rule, None, port, rules, options));
                    break;
                }
                Some(matches) => {
                    let mut stop = false;
                    for m in matches {
                        if m.port.is_some_and(|p| p != port) {
                            continue;
                        }
                        if !m.gateways.is_empty() && m.gateways.is_disjoint(context) {
                            continue;
                        }
                        let r = self.route(rule, Some(m), port, rules, options);
                        stop = is_catch_all(&r.matcher);
                        out.push(r);
                        if stop {
                            break;
                        }
                    }
                    if stop {
                        break;
                    }
                }
            }
        }
        out
    }

    fn route(
        &self,
        rule: &Rule,
        m: Option<&Match>,
        port: u32,
        rules: &RuleIndex,
        options: &Options,
    ) -> Route {
        let matcher = m.map_or_else(matcher::match_all, |m| m.matcher.clone());
        let name = match (rule.name.as_deref(), m.and_then(|m| m.name.as_deref())) {
            (Some(r), Some(n)) => format!("{r}.{n}"),
            (Some(r), None) => r.to_string(),
            (None, Some(n)) => n.to_string(),
            (None, None) => String::new(),
        };
        let path = decorator_path(&matcher.path);
        let mut decorator = format!("{}:{port}{path}", self.name());
        let mut request_headers_to_add = rule.headers.request_add.clone();
        let mut request_headers_to_remove = rule.headers.request_remove.clone();
        let mut response_headers_to_add = rule.headers.response_add.clone();
        let mut response_headers_to_remove = rule.headers.response_remove.clone();
        let action = match &rule.action {
            Action::Redirect(r) => RouteAction::Redirect(r.at_port(port)),
            Action::DirectResponse(d) => RouteAction::DirectResponse(d.clone()),
            Action::Forward(f) => {
                let hashes: Vec<_> = f
                    .destinations
                    .iter()
                    .map(|d| {
                        rules.consistent_hash(
                            &d.target.host,
                            d.target.subset.as_deref(),
                            d.target.port(port),
                        )
                    })
                    .collect();
                let any_hash = hashes.iter().any(Option::is_some);
                let mut host_rewrite_literal = f.authority.clone();
                let mut hash_policy = Vec::new();
                let destination = if let [d] = f.destinations.as_slice() {
                    request_headers_to_add.extend(d.headers.request_add.iter().cloned());
                    request_headers_to_remove.extend(d.headers.request_remove.iter().cloned());
                    response_headers_to_add.extend(d.headers.response_add.iter().cloned());
                    response_headers_to_remove.extend(d.headers.response_remove.iter().cloned());
                    if host_rewrite_literal.is_none() {
                        host_rewrite_literal = d.headers.authority.clone();
                    }
                    if let Some(Some(ch)) = hashes.first() {
                        hash_policy = action::hash_policy(ch);
                    }
                    decorator = format!("{}:{}{path}", d.target.host, d.target.port(port));
                    ClusterSpecifier::Cluster(d.target.cluster(port))
                } else {
                    ClusterSpecifier::Weighted(
                        f.destinations
                            .iter()
                            .filter(|d| d.weight > 0)
                            .map(|d| WeightedCluster {
                                name: d.target.cluster(port),
                                weight: d.weight,
                                request_headers_to_add: d.headers.request_add.clone(),
                                request_headers_to_remove: d.headers.request_remove.clone(),
                                response_headers_to_add: d.headers.response_add.clone(),
                                response_headers_to_remove: d.headers.response_remove.clone(),
                                host_rewrite_literal: d.headers.authority.clone(),
                            })
                            .collect(),
                    )
                };
                let retry = f.retry.clone().map(|mut r| {
                    if any_hash {
                        r.previous_hosts_predicate = false;
                    }
                    r
                });
                RouteAction::Forward(Box::new(Forward {
                    destination,
                    timeout: f.timeout,
                    retry,
                    mirrors: f
                        .mirrors
                        .iter()
                        .map(|m| MirrorPolicy {
                            cluster: m.target.cluster(port),
                            fraction: m.fraction,
                            disable_shadow_host_suffix_append: options.disable_shadow_host_suffix,
                        })
                        .collect(),
                    prefix_rewrite: f.prefix_rewrite.clone(),
                    regex_rewrite: f.regex_rewrite.clone(),
                    host_rewrite_literal,
                    hash_policy,
                }))
            }
        };
        Route {
            name,
            matcher,
            action,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            fault: rule.fault.clone(),
            cors: rule.cors.clone(),
            config_path: Some(format!(
                "/apis/networking.istio.io/v1/namespaces/{}/virtual-service/{}",
                self.namespace(),
                self.name()
            )),
            decorator,
            stat_prefix: m.and_then(|m| m.stat_prefix.clone()),
        }
    }
}

/// Which VirtualService owns each host on sidecar (`mesh`) listeners.
#[derive(Debug, Clone, Default)]
pub(crate) struct MeshIndex {
    /// Resolved host → index of the winning VirtualService in the compiled list.
    by_host: BTreeMap<String, usize>,
    /// The `*.suffix` hosts of `by_host`, in its order: the only candidates for a service
    /// host without an exact entry (scanning every host instead made the mesh quadratic).
    wildcards: Vec<(String, usize)>,
}

/// Index the mesh-bound VirtualServices by host. When several claim the same host the
/// oldest wins (istiod's `creationTimestamp`, then name, then namespace order) and each of
/// the others gets IST0109 on its `spec.hosts[i]`.
pub(crate) fn mesh_index(vss: &[CompiledVs<'_>], diags: &mut Vec<Diagnostic>) -> MeshIndex {
    let mut claims: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for (vi, vs) in vss.iter().enumerate() {
        if !vs.binds_to(MESH) {
            continue;
        }
        for h in &vs.hosts {
            claims
                .entry(h.host.as_str())
                .or_default()
                .push((vi, h.index));
        }
    }
    let mut index = MeshIndex::default();
    for (host, mut list) in claims {
        list.sort_by(|a, b| vss[a.0].age_key().cmp(&vss[b.0].age_key()));
        let winner = &vss[list[0].0];
        for &(vi, hi) in &list[1..] {
            let loser = &vss[vi];
            diags.push(loser.res.diag(
                Diagnostic::error(
                    Code::ConflictingVirtualServiceHosts,
                    format!(
                        "virtual services {}/{} and {}/{} define the same host {host}, which can lead to undefined behavior; the older {}/{} is used",
                        winner.namespace(),
                        winner.name(),
                        loser.namespace(),
                        loser.name(),
                        winner.namespace(),
                        winner.name()
                    ),
                )
                .value(host.to_string())
                .hint("define each host in one mesh virtual service only: merge the rules into one of them"),
                &format!("spec.hosts[{hi}]"),
            ));
        }
        index.by_host.insert(host.to_string(), list[0].0);
    }
    index.wildcards = index
        .by_host
        .iter()
        .filter(|(h, _)| h.starts_with("*."))
        .map(|(h, i)| (h.clone(), *i))
        .collect();
    index
}

impl MeshIndex {
    /// The VirtualService for a service host: an exact host wins, else the most specific
    /// wildcard (`*.a.example.com` before `*.example.com`).
    pub fn for_service(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.by_host.get(host) {
            return Some(*i);
        }
        self.wildcards
            .iter()
            .filter(|(h, _)| host_covers(h, host))
            .max_by_key(|(h, _)| h.len())
            .map(|(_, i)| *i)
    }

    /// VirtualService hosts that match no service in the registry, with their owner.
    pub fn unmatched_hosts<'s>(
        &'s self,
        registry: &'s Registry,
    ) -> impl Iterator<Item = (&'s str, usize)> + 's {
        self.by_host
            .iter()
            .filter(move |(h, _)| !covers_a_service(h, registry))
            .map(|(h, i)| (h.as_str(), *i))
    }
}

/// Does `host` cover some service host ([`host_covers`])? A plain host only covers itself: a
/// registry lookup, not a scan; only wildcard hosts look at every service.
fn covers_a_service(host: &str, registry: &Registry) -> bool {
    if host.starts_with('*') {
        registry.services.keys().any(|s| host_covers(host, s))
    } else {
        registry.services.contains_key(host)
    }
}
