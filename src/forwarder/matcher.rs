//! Request → route, with Envoy's semantics, over a compiled [`Table`]. Pure: no I/O, no
//! clock; randomness is injected (`&mut impl rand::Rng`) so tests are deterministic.
//!
//! * [`route_request`]: listener → route configuration → virtual host (Envoy
//!   `findVirtualHost`) → first matching route (Envoy `RouteMatcher::route`).
//! * [`select_mirrors`]: the mirror policies that fire for one request.
//! * [`rewrite_path`], [`redirect_location`]: the path / `location` a route produces.

use std::borrow::Cow;

use http::{HeaderMap, Method};

use super::table::{
    Action, Forward, HeaderKey, HeaderMatcher, HeaderRule, Listener, ListenerKey, MirrorPolicy,
    PathMatch, PathRedirect, PathRewrite, QueryParameterMatcher, Redirect, Route, RouteConfig,
    RouteMatch, Table, VirtualHost,
};

/// What the matcher needs from a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// `:path`, with the query string (`/a/b?x=1`).
    pub path_and_query: &'a str,
    /// Host header (HTTP/1) or `:authority` (HTTP/2), as received (may carry a port).
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    /// `http` or `https`.
    pub scheme: &'a str,
}

/// A matched route, with where it was found.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'t> {
    pub listener: &'t Listener,
    pub route_config: &'t RouteConfig,
    pub virtual_host: &'t VirtualHost,
    pub route: &'t Route,
}

impl<'t> Matched<'t> {
    /// The route's fault config, if the listener has the fault filter (Envoy ignores
    /// per-route config of a filter that is not in the chain).
    pub fn fault(&self) -> Option<&'t super::table::Fault> {
        self.route
            .fault
            .as_ref()
            .filter(|_| self.listener.fault_filter)
    }

    /// The route's CORS policy, if the listener has the cors filter.
    pub fn cors(&self) -> Option<&'t super::table::Cors> {
        self.route
            .cors
            .as_ref()
            .filter(|_| self.listener.cors_filter)
    }
}

/// Why no route matched. Envoy answers all of these with a local 404 (response flag `NR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMatch {
    /// The listener is not (or no longer) in the table.
    UnknownListener,
    /// The listener's RDS route configuration has not arrived. Envoy would keep the listener
    /// warming (not serving) until it does; the forwarder serves and answers 404 instead, so a
    /// control plane that never sends the route configuration is visible rather than a hang.
    RouteConfigNotReady,
    /// No virtual host matches the Host/:authority.
    NoVirtualHost,
    /// The virtual host has no route matching the request.
    NoRoute,
}

impl NoMatch {
    /// The HTTP status of the local reply (Envoy: 404 for every case).
    pub fn status(self) -> http::StatusCode {
        http::StatusCode::NOT_FOUND
    }

    /// Envoy's response flag for access logs / stats.
    pub fn response_flag(self) -> &'static str {
        "NR"
    }
}

/// The result of [`route_request`].
pub type Match<'t> = Result<Matched<'t>, NoMatch>;

/// Envoy's routing decision for one request on `listener`.
pub fn route_request<'t>(
    table: &'t Table,
    listener: &ListenerKey,
    req: &RequestView<'_>,
) -> Match<'t> {
    let listener = table
        .listeners
        .get(listener)
        .ok_or(NoMatch::UnknownListener)?;
    let route_config = table
        .route_configs
        .get(&listener.route_config_name)
        .ok_or(NoMatch::RouteConfigNotReady)?;
    let (virtual_host, route) = route_in_config(route_config, req)?;
    Ok(Matched {
        listener,
        route_config,
        virtual_host,
        route,
    })
}

/// Virtual host and route within one route configuration.
pub fn route_in_config<'t>(
    rc: &'t RouteConfig,
    req: &RequestView<'_>,
) -> Result<(&'t VirtualHost, &'t Route), NoMatch> {
    let vh = find_virtual_host(rc, req.authority).ok_or(NoMatch::NoVirtualHost)?;
    let route = vh
        .routes
        .iter()
        .find(|r| route_matches(&r.matcher, req))
        .ok_or(NoMatch::NoRoute)?;
    Ok((vh, route))
}

/// Envoy `RouteMatcher::findVirtualHost`: exact, then suffix wildcards longest first, then
/// prefix wildcards longest first, then `*`. The host is lowercased; its port is stripped when
/// the route configuration says `ignore_port_in_host_matching`.
pub fn find_virtual_host<'t>(rc: &'t RouteConfig, authority: &str) -> Option<&'t VirtualHost> {
    let idx = &rc.domains;
    let mut host: &str = authority;
    if rc.ignore_port_in_host_matching {
        if let Some(i) = super::table::port_start(host) {
            host = &host[..i];
        }
    }
    let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    let pick = |i: usize| rc.virtual_hosts.get(i);
    if let Some(&i) = idx.exact.get(host.as_ref()) {
        return pick(i);
    }
    // A wildcard matches at least one character.
    for (suffix, i) in &idx.suffixes {
        if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
            return pick(*i);
        }
    }
    for (prefix, i) in &idx.prefixes {
        if host.len() > prefix.len() && host.starts_with(prefix.as_str()) {
            return pick(*i);
        }
    }
    idx.any.and_then(pick)
}

/// Does `m` match the request (path, then headers, then query parameters)?
pub fn route_matches(m: &RouteMatch, req: &RequestView<'_>) -> bool {
    path_matches(&m.path, m.case_sensitive, req.path_and_query)
        && (!m.grpc_only || is_grpc(req.headers))
        && m.headers.iter().all(|h| header_matches(h, req))
        && (m.query_parameters.is_empty() || query_matches(&m.query_parameters, req.path_and_query))
}

/// `content-type` starts with `application/grpc` (Envoy `Grpc::Common::isGrpcRequestHeaders`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.len() >= 16
                && ct.as_bytes()[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(ct.as_bytes().get(16), None | Some(b'+') | Some(b';'))
        })
}

/// The path without query string and fragment.
pub fn path_only(path_and_query: &str) -> &str {
    let end = path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len());
    &path_and_query[..end]
}

fn starts_with_case(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    let (s, p) = (s.as_bytes(), prefix.as_bytes());
    s.len() >= p.len()
        && if case_sensitive {
            &s[..p.len()] == p
        } else {
            s[..p.len()].eq_ignore_ascii_case(p)
        }
}

fn path_matches(m: &PathMatch, case_sensitive: bool, path_and_query: &str) -> bool {
    match m {
        // Envoy compares a prefix with the whole :path, query string included.
        PathMatch::Prefix(p) => starts_with_case(path_and_query, p, case_sensitive),
        PathMatch::Exact(p) => {
            let path = path_only(path_and_query);
            if case_sensitive {
                path == p
            } else {
                path.eq_ignore_ascii_case(p)
            }
        }
        PathMatch::Regex(re) => re.is_match(path_only(path_and_query)),
        PathMatch::PathSeparatedPrefix(p) => {
            let path = path_only(path_and_query);
            starts_with_case(path, p, case_sensitive)
                && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
        }
    }
}

/// The value a header matcher sees: pseudo-headers from the request line, regular headers
/// with all values joined by `,`. `None` when absent.
fn header_value<'a>(key: &HeaderKey, req: &RequestView<'a>) -> Option<Cow<'a, str>> {
    match key {
        HeaderKey::Method => Some(Cow::Borrowed(req.method.as_str())),
        HeaderKey::Authority => Some(Cow::Borrowed(req.authority)).filter(|a| !a.is_empty()),
        HeaderKey::Scheme => Some(Cow::Borrowed(req.scheme)),
        HeaderKey::Path => Some(Cow::Borrowed(req.path_and_query)),
        HeaderKey::Header(name) => {
            let mut values = req.headers.get_all(name).iter();
            let first = values.next()?;
            let mut joined = String::from_utf8_lossy(first.as_bytes());
            for v in values {
                let s = joined.to_mut();
                s.push(',');
                s.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            Some(Cow::Owned(joined.into_owned()))
        }
    }
}

/// Envoy `HeaderUtility::matchHeaders`. A missing header (without
/// `treat_missing_header_as_empty`) matches only `present_match: false`, or
/// `present_match: true` inverted; inverting any other rule does not make a missing header
/// match.
pub fn header_matches(m: &HeaderMatcher, req: &RequestView<'_>) -> bool {
    let value = header_value(&m.key, req);
    let value = match value {
        Some(v) => v,
        None if m.treat_missing_as_empty => Cow::Borrowed(""),
        None => {
            return match m.rule {
                HeaderRule::Present(present) => present == m.invert,
                _ => false,
            }
        }
    };
    let matched = match &m.rule {
        HeaderRule::Present(present) => *present,
        HeaderRule::String(sm) => sm.matches(&value),
        HeaderRule::Range { start, end } => {
            value.parse::<i64>().is_ok_and(|n| *start <= n && n < *end)
        }
    };
    matched != m.invert
}

/// All query-parameter matchers match (each on the first value of its parameter,
/// percent-decoded, like Envoy `QueryParamsMulti::parseAndDecodeQueryString`).
fn query_matches(ms: &[QueryParameterMatcher], path_and_query: &str) -> bool {
    let Some(q) = path_and_query.find('?').map(|i| &path_and_query[i + 1..]) else {
        return false;
    };
    let q = q.split('#').next().unwrap_or("");
    ms.iter().all(|m| {
        let first = q.split('&').find_map(|pair| {
            if pair.is_empty() {
                return None;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == m.name).then(|| percent_decode(v))
        });
        match (first, &m.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(sm)) => sm.matches(&v),
        }
    })
}

/// Percent-decoding (`+` stays `+`, invalid escapes stay as written, like Envoy).
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                // Two hex digits are at most 0xff.
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The mirror policies that fire for this request: one independent draw per policy
/// (Envoy `shouldShadow`). CONNECT is never mirrored. Call only once the primary cluster
/// exists (Envoy sends no shadow when it does not).
pub fn select_mirrors<'f>(
    forward: &'f Forward,
    method: &Method,
    rng: &mut impl rand::Rng,
) -> Vec<&'f MirrorPolicy> {
    if *method == Method::CONNECT {
        return Vec::new();
    }
    forward
        .mirrors
        .iter()
        .filter(|m| m.should_mirror(rng))
        .collect()
}

/// The length of the path prefix the route matched (for `prefix_rewrite`): the prefix or
/// exact path; a regex or path-separated-prefix route replaces its prefix too.
fn matched_prefix_len(m: &RouteMatch) -> usize {
    match &m.path {
        PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::PathSeparatedPrefix(p) => p.len(),
        // Envoy rejects prefix_rewrite on regex routes; the compiler NACKs it.
        PathMatch::Regex(_) => 0,
    }
}

fn replace_prefix(route: &Route, new_prefix: &str, path_and_query: &str) -> String {
    let n = matched_prefix_len(&route.matcher).min(path_and_query.len());
    // The matched prefix is ASCII-compared, so n falls on a char boundary when it matched;
    // fall back to keeping the path when it does not (unmatched input).
    match path_and_query.get(n..) {
        Some(rest) => format!("{new_prefix}{rest}"),
        None => path_and_query.to_string(),
    }
}

fn replace_regex(pattern: &regex::Regex, substitution: &str, path_and_query: &str) -> String {
    let path = path_only(path_and_query);
    let rest = &path_and_query[path.len()..];
    let new = pattern.replace_all(path, substitution);
    format!("{new}{rest}")
}

/// The upstream `:path` after the route's rewrite (query string kept).
pub fn rewrite_path(route: &Route, rewrite: &PathRewrite, path_and_query: &str) -> String {
    match rewrite {
        PathRewrite::Prefix(p) => replace_prefix(route, p, path_and_query),
        PathRewrite::Regex {
            pattern,
            substitution,
        } => replace_regex(pattern, substitution, path_and_query),
    }
}

/// The `location` of a redirect route (Envoy `RouteEntryImplBase::newUri`).
pub fn redirect_location(route: &Route, r: &Redirect, req: &RequestView<'_>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme);
    let mut host = r.host.clone().unwrap_or_else(|| req.authority.to_string());
    if let Some(port) = r.port {
        if let Some(i) = super::table::port_start(&host) {
            host.truncate(i);
        }
        host.push_str(&format!(":{port}"));
    } else if r.host.is_none() && scheme != req.scheme {
        // A scheme change drops the request's port when it is the *old* scheme's default
        // (Envoy `processRequestHost`: `http://foo:80` → `https://foo`).
        if let Some(i) = super::table::port_start(&host) {
            let port = &host[i + 1..];
            if (req.scheme == "https" && port == "443") || (req.scheme == "http" && port == "80") {
                host.truncate(i);
            }
        }
    }
    let original_query = req
        .path_and_query
        .find('?')
        .map(|i| &req.path_and_query[i..]);
    let mut path = match &r.path {
        None => path_only(req.path_and_query).to_string(),
        Some(PathRedirect::Path(p)) => p.clone(),
        Some(PathRedirect::Prefix(p)) => {
            path_only(&replace_prefix(route, p, req.path_and_query)).to_string()
        }
        Some(PathRedirect::Regex {
            pattern,
            substitution,
        }) => path_only(&replace_regex(pattern, substitution, req.path_and_query)).to_string(),
    };
    if !r.strip_query && !path.contains('?') {
        if let Some(q) = original_query {
            path.push_str(q);
        }
    }
    format!("{scheme}://{host}{path}")
}

/// The route's action, for callers that matched with [`route_in_config`].
pub fn action(route: &Route) -> &Action {
    &route.action
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::table::*;
    use rand::SeedableRng;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;

    fn route(name: &str, matcher: RouteMatch) -> Route {
        Route {
            name: name.into(),
            operation: None,
            matcher,
            action: Action::DirectResponse(DirectResponse {
                status: 200,
                body: None,
            }),
            request_headers: HeaderMutations::default(),
            response_headers: HeaderMutations::default(),
            fault: None,
            cors: None,
        }
    }

    fn prefix(p: &str) -> RouteMatch {
        RouteMatch {
            path: PathMatch::Prefix(p.into()),
            case_sensitive: true,
            headers: vec![],
            query_parameters: vec![],
            grpc_only: false,
        }
    }

    fn vhost(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
        }
    }

    /// Builds the domain index like the compiler does.
    fn rc(vhosts: Vec<VirtualHost>, ignore_port: bool) -> RouteConfig {
        let domains = crate::forwarder::compile::domain_index(&vhosts);
        RouteConfig {
            name: "80".into(),
            virtual_hosts: vhosts,
            domains,
            ignore_port_in_host_matching: ignore_port,
            max_direct_response_body_size_bytes: 4096,
        }
    }

    fn table(rc: RouteConfig) -> Table {
        let mut listeners = BTreeMap::new();
        listeners.insert(
            ListenerKey::new("0.0.0.0_80"),
            Arc::new(Listener {
                name: ListenerKey::new("0.0.0.0_80"),
                address: "0.0.0.0".into(),
                port: 80,
                socket_addr: "0.0.0.0:80".parse().expect("literal"),
                stat_prefix: String::new(),
                route_config_name: "80".into(),
                fault_filter: false,
                cors_filter: false,
                use_remote_address: false,
            }),
        );
        let mut route_configs = HashMap::new();
        route_configs.insert("80".to_string(), Arc::new(rc));
        Table {
            versions: Versions::default(),
            listeners,
            route_configs,
            clusters: HashMap::new(),
        }
    }

    struct Req {
        method: Method,
        path: String,
        authority: String,
        headers: HeaderMap,
    }

    impl Req {
        fn new(authority: &str, path: &str) -> Req {
            Req {
                method: Method::GET,
                path: path.into(),
                authority: authority.into(),
                headers: HeaderMap::new(),
            }
        }
        fn header(mut self, k: &'static str, v: &'static str) -> Req {
            self.headers.append(k, http::HeaderValue::from_static(v));
            self
        }
        fn view(&self) -> RequestView<'_> {
            RequestView {
                method: &self.method,
                path_and_query: &self.path,
                authority: &self.authority,
                headers: &self.headers,
                scheme: "http",
            }
        }
    }

    fn vhost_of<'a>(rc: &'a RouteConfig, host: &str) -> Option<&'a str> {
        find_virtual_host(rc, host).map(|v| v.name.as_str())
    }

    #[test]
    fn domain_precedence_exact_suffix_prefix_any() {
        let c = rc(
            vec![
                vhost("any", &["*"], vec![]),
                vhost("prefix-short", &["foo.*"], vec![]),
                vhost("prefix-long", &["foo.bar.*"], vec![]),
                vhost("suffix-short", &["*.com"], vec![]),
                vhost("suffix-long", &["*.foo.bar.com"], vec![]),
                vhost("exact", &["www.foo.bar.com"], vec![]),
            ],
            false,
        );
        assert_eq!(vhost_of(&c, "www.foo.bar.com"), Some("exact"));
        assert_eq!(vhost_of(&c, "WWW.Foo.bar.com"), Some("exact"));
        assert_eq!(vhost_of(&c, "api.foo.bar.com"), Some("suffix-long"));
        assert_eq!(vhost_of(&c, "x.com"), Some("suffix-short"));
        // Suffix wildcards win over prefix wildcards.
        assert_eq!(vhost_of(&c, "foo.bar.com"), Some("suffix-short"));
        assert_eq!(vhost_of(&c, "foo.bar.org"), Some("prefix-long"));
        assert_eq!(vhost_of(&c, "foo.org"), Some("prefix-short"));
        assert_eq!(vhost_of(&c, "other.org"), Some("any"));
        // The wildcard never matches the empty string.
        assert_eq!(vhost_of(&c, ".com"), Some("any"));
        assert_eq!(vhost_of(&c, "foo."), Some("any"));
    }

    #[test]
    fn port_is_part_of_the_host_unless_ignored() {
        let vhosts = || {
            vec![
                vhost("plain", &["calc"], vec![]),
                vhost("with-port", &["calc:8080"], vec![]),
            ]
        };
        let strict = rc(vhosts(), false);
        assert_eq!(vhost_of(&strict, "calc:8080"), Some("with-port"));
        assert_eq!(vhost_of(&strict, "calc:9090"), None);
        let ignoring = rc(vec![vhost("plain", &["calc"], vec![])], true);
        assert_eq!(vhost_of(&ignoring, "calc:9090"), Some("plain"));
        assert_eq!(vhost_of(&ignoring, "calc"), Some("plain"));
        let v6 = rc(vec![vhost("v6", &["[::1]"], vec![])], true);
        assert_eq!(vhost_of(&v6, "[::1]:80"), Some("v6"));
    }

    #[test]
    fn no_virtual_host_or_route_is_envoys_404() {
        let t = table(rc(
            vec![vhost("a", &["a"], vec![route("r", prefix("/api"))])],
            true,
        ));
        let key = ListenerKey::new("0.0.0.0_80");
        let r = Req::new("b", "/api");
        let err = route_request(&t, &key, &r.view()).unwrap_err();
        assert_eq!(err, NoMatch::NoVirtualHost);
        assert_eq!(err.status(), http::StatusCode::NOT_FOUND);
        let r = Req::new("a", "/other");
        assert_eq!(
            route_request(&t, &key, &r.view()).unwrap_err(),
            NoMatch::NoRoute
        );
        let r = Req::new("a:80", "/api/x");
        let m = route_request(&t, &key, &r.view()).expect("route /api matches /api/x");
        assert_eq!(m.route.name, "r");
        assert_eq!(
            route_request(&t, &ListenerKey::new("nope"), &r.view()).unwrap_err(),
            NoMatch::UnknownListener
        );
        let mut missing = t.clone();
        missing.route_configs.clear();
        assert_eq!(
            route_request(&missing, &key, &r.view()).unwrap_err(),
            NoMatch::RouteConfigNotReady
        );
    }

    fn first_route<'a>(routes: &'a RouteConfig, r: &Req) -> Option<&'a str> {
        route_in_config(routes, &r.view())
            .ok()
            .map(|(_, r)| r.name.as_str())
    }

    #[test]
    fn path_semantics() {
        let exact = RouteMatch {
            path: PathMatch::Exact("/exact".into()),
            ..prefix("")
        };
        let regex = RouteMatch {
            path: PathMatch::Regex(regex::Regex::new("^(?:/re/[0-9]+)$").expect("literal")),
            ..prefix("")
        };
        let insensitive = RouteMatch {
            path: PathMatch::Prefix("/ci".into()),
            case_sensitive: false,
            ..prefix("")
        };
        let insensitive_exact = RouteMatch {
            path: PathMatch::Exact("/ciexact".into()),
            case_sensitive: false,
            ..prefix("")
        };
        let sep = RouteMatch {
            path: PathMatch::PathSeparatedPrefix("/sep".into()),
            ..prefix("")
        };
        let c = rc(
            vec![vhost(
                "v",
                &["*"],
                vec![
                    route("exact", exact),
                    route("regex", regex),
                    route("ci-exact", insensitive_exact),
                    route("ci", insensitive),
                    route("sep", sep),
                    route("prefix", prefix("/p")),
                ],
            )],
            false,
        );
        let at = |p: &str| first_route(&c, &Req::new("h", p)).map(str::to_string);
        assert_eq!(at("/exact").as_deref(), Some("exact"));
        // Exact ignores the query string; prefix of it does not match exact.
        assert_eq!(at("/exact?x=1").as_deref(), Some("exact"));
        assert_eq!(at("/exact/more"), None);
        assert_eq!(at("/Exact"), None);
        // Regex: full match on the path without query.
        assert_eq!(at("/re/12").as_deref(), Some("regex"));
        assert_eq!(at("/re/12?q").as_deref(), Some("regex"));
        assert_eq!(at("/re/12x"), None);
        assert_eq!(at("/x/re/12"), None);
        // Case-insensitive prefix and exact.
        assert_eq!(at("/CI/anything").as_deref(), Some("ci"));
        assert_eq!(at("/CIEXACT").as_deref(), Some("ci-exact"));
        // Case-sensitive prefix.
        assert_eq!(at("/page").as_deref(), Some("prefix"));
        assert_eq!(at("/Page"), None);
        // Path-separated prefix.
        assert_eq!(at("/sep").as_deref(), Some("sep"));
        assert_eq!(at("/sep/x").as_deref(), Some("sep"));
        assert_eq!(at("/sepx"), None);
    }

    fn hm(
        name: &'static str,
        rule: HeaderRule,
        invert: bool,
        missing_empty: bool,
    ) -> HeaderMatcher {
        HeaderMatcher {
            key: HeaderKey::Header(http::HeaderName::from_static(name)),
            rule,
            invert,
            treat_missing_as_empty: missing_empty,
        }
    }

    fn exact(s: &str) -> StringMatcher {
        StringMatcher {
            kind: StringMatchKind::Exact(s.into()),
            ignore_case: false,
        }
    }

    fn matches_headers(ms: Vec<HeaderMatcher>, r: &Req) -> bool {
        let m = RouteMatch {
            headers: ms,
            ..prefix("/")
        };
        route_matches(&m, &r.view())
    }

    #[test]
    fn header_present_invert_and_missing() {
        let none = Req::new("h", "/");
        let jason = Req::new("h", "/").header("end-user", "jason");
        let bob = Req::new("h", "/").header("end-user", "bob");
        let present = || hm("end-user", HeaderRule::Present(true), false, false);
        assert!(matches_headers(vec![present()], &jason));
        assert!(!matches_headers(vec![present()], &none));
        // present + invert = absent.
        let absent = || hm("end-user", HeaderRule::Present(true), true, false);
        assert!(matches_headers(vec![absent()], &none));
        assert!(!matches_headers(vec![absent()], &jason));
        // Inverted exact: a missing header does NOT match unless treated as empty.
        let not_jason = |empty| hm("end-user", HeaderRule::String(exact("jason")), true, empty);
        assert!(matches_headers(vec![not_jason(false)], &bob));
        assert!(!matches_headers(vec![not_jason(false)], &jason));
        assert!(!matches_headers(vec![not_jason(false)], &none));
        assert!(matches_headers(vec![not_jason(true)], &none));
        // Multiple values are joined with ','.
        let two = Req::new("h", "/").header("x-v", "a").header("x-v", "b");
        assert!(matches_headers(
            vec![hm("x-v", HeaderRule::String(exact("a,b")), false, false)],
            &two
        ));
        // Range.
        let n = Req::new("h", "/").header("x-n", "5");
        assert!(matches_headers(
            vec![hm(
                "x-n",
                HeaderRule::Range { start: 0, end: 10 },
                false,
                false
            )],
            &n
        ));
        assert!(!matches_headers(
            vec![hm(
                "x-n",
                HeaderRule::Range { start: 0, end: 5 },
                false,
                false
            )],
            &n
        ));
        // Pseudo-headers.
        let method = HeaderMatcher {
            key: HeaderKey::Method,
            rule: HeaderRule::String(exact("GET")),
            invert: false,
            treat_missing_as_empty: false,
        };
        assert!(matches_headers(vec![method], &none));
        let ci = StringMatcher {
            kind: StringMatchKind::Prefix("mob".into()),
            ignore_case: true,
        };
        let ua = Req::new("h", "/").header("user-agent", "MOBILE");
        assert!(matches_headers(
            vec![hm("user-agent", HeaderRule::String(ci), false, false)],
            &ua
        ));
    }

    #[test]
    fn query_parameters() {
        let m = |ms: Vec<QueryParameterMatcher>, p: &str| {
            let rm = RouteMatch {
                query_parameters: ms,
                ..prefix("/")
            };
            route_matches(&rm, &Req::new("h", p).view())
        };
        let q = |name: &str, v: Option<StringMatcher>| QueryParameterMatcher {
            name: name.into(),
            value: v,
        };
        assert!(m(vec![q("a", Some(exact("1")))], "/x?a=1"));
        assert!(m(vec![q("a", Some(exact("1")))], "/x?b=2&a=1"));
        // The first value counts.
        assert!(!m(vec![q("a", Some(exact("1")))], "/x?a=2&a=1"));
        assert!(!m(vec![q("a", Some(exact("1")))], "/x"));
        assert!(!m(vec![q("a", Some(exact("1")))], "/x?ab=1"));
        // Present, even empty.
        assert!(m(vec![q("a", None)], "/x?a"));
        assert!(m(vec![q("a", None)], "/x?a="));
        assert!(!m(vec![q("a", None)], "/x?b"));
        // Percent-decoded.
        assert!(m(vec![q("a b", Some(exact("c/d")))], "/x?a%20b=c%2Fd"));
        // All must match.
        assert!(!m(vec![q("a", None), q("b", None)], "/x?a=1"));
    }

    #[test]
    fn weighted_pick_and_mirror_sampling_are_deterministic_with_a_seeded_rng() {
        let w = WeightedClusters {
            clusters: ["a", "b", "c"]
                .iter()
                .zip([80u32, 0, 20])
                .map(|(n, w)| WeightedCluster {
                    name: n.to_string(),
                    weight: w,
                    request_headers: HeaderMutations::default(),
                    response_headers: HeaderMutations::default(),
                })
                .collect(),
            cumulative: vec![80, 80, 100],
            total: 100,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = HashMap::new();
        for _ in 0..10_000 {
            *counts.entry(w.pick(&mut rng).name.clone()).or_insert(0u32) += 1;
        }
        assert_eq!(counts.get("b"), None, "a zero weight is never picked");
        let a = counts["a"];
        assert!((7_700..8_300).contains(&a), "a picked {a} / 10000");

        let forward = Forward {
            clusters: ClusterTarget::Single("p".into()),
            timeout: None,
            max_grpc_timeout: None,
            retry: None,
            mirrors: vec![
                MirrorPolicy {
                    cluster: "all".into(),
                    fraction: Fraction::ALWAYS,
                    disable_shadow_host_suffix_append: false,
                    host_rewrite: None,
                },
                MirrorPolicy {
                    cluster: "tenth".into(),
                    fraction: Fraction {
                        numerator: 100_000,
                        denominator: 1_000_000,
                    },
                    disable_shadow_host_suffix_append: false,
                    host_rewrite: None,
                },
            ],
            rewrite: None,
            host_rewrite: None,
            hash_policy: vec![],
        };
        let mut tenth = 0;
        for _ in 0..10_000 {
            let picked = select_mirrors(&forward, &Method::GET, &mut rng);
            assert_eq!(picked[0].cluster, "all");
            tenth += picked.iter().filter(|m| m.cluster == "tenth").count();
        }
        assert!(
            (800..1_200).contains(&tenth),
            "tenth mirrored {tenth} / 10000"
        );
        assert!(select_mirrors(&forward, &Method::CONNECT, &mut rng).is_empty());
    }

    #[test]
    fn rewrites_and_redirects() {
        let r = route("r", prefix("/api/v1"));
        assert_eq!(
            rewrite_path(&r, &PathRewrite::Prefix("/v2".into()), "/api/v1/x?q=1"),
            "/v2/x?q=1"
        );
        let re = PathRewrite::Regex {
            pattern: regex::Regex::new("^/svc/([^/]+)/(.*)$").expect("literal"),
            substitution: "/${2}/instance/${1}".into(),
        };
        assert_eq!(rewrite_path(&r, &re, "/svc/a/b?z"), "/b/instance/a?z");

        let req = Req::new("calc:8080", "/old/x?q=1");
        let red = Redirect {
            scheme: None,
            host: Some("new.example".into()),
            port: None,
            path: Some(PathRedirect::Path("/new".into())),
            response_code: 301,
            strip_query: false,
        };
        assert_eq!(
            redirect_location(&r, &red, &req.view()),
            "http://new.example/new?q=1"
        );
        let red = Redirect {
            scheme: Some("https".into()),
            host: None,
            port: Some(8443),
            path: None,
            response_code: 302,
            strip_query: true,
        };
        assert_eq!(
            redirect_location(&r, &red, &req.view()),
            "https://calc:8443/old/x"
        );
        let req80 = Req::new("calc:80", "/p");
        let red = Redirect {
            scheme: Some("https".into()),
            host: None,
            port: None,
            path: None,
            response_code: 302,
            strip_query: false,
        };
        assert_eq!(redirect_location(&r, &red, &req80.view()), "https://calc/p");
        // Not the old scheme's default port: kept.
        let req443 = Req::new("calc:443", "/p");
        assert_eq!(
            redirect_location(&r, &red, &req443.view()),
            "https://calc:443/p"
        );
    }
}
