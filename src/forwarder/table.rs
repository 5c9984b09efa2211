//! The forwarder's compiled routing table: what the data plane reads on every request.
//!
//! A [`Table`] is built once per xDS update by [`crate::forwarder::compile::compile`] from the
//! Envoy protos and is immutable afterwards. The data plane holds it behind an
//! `ArcSwap<Table>`: a request loads the current `Arc<Table>` once, at its start, and finishes
//! on it even if a newer table is swapped in meanwhile. No Envoy proto is reachable from here.
//!
//! Semantics are Envoy's for everything the translator emits; where a field has an Envoy
//! default, the default is already applied (e.g. [`RetryPolicy::num_retries`] is 1 when the
//! proto left it unset, a route without `timeout` gets Envoy's 15 s). The compiler rejects
//! (NACKs) any field it cannot honour, so every field below is meant to be honoured by the
//! data plane; the doc comment says how.
//!
//! Lookup: [`crate::forwarder::matcher::route_request`] picks listener → route config →
//! virtual host → route; [`Forward::pick_cluster`] and [`MirrorPolicy::should_mirror`] take an
//! injected random source so tests are deterministic.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use regex::Regex;
use serde::Serialize;

/// Envoy's route timeout when a route action sets none (`RouteAction.timeout` default).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's retry back-off base interval (`RetryPolicy.retry_back_off` default).
pub const DEFAULT_RETRY_BASE_INTERVAL: Duration = Duration::from_millis(25);
/// Envoy's default circuit-breaker thresholds (per cluster, default priority).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// See [`DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;
/// See [`DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;
/// See [`DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_RETRIES: u32 = 3;

// ===================================================================================== table

/// The whole compiled configuration. Cheap to share (`Arc<Table>`); never mutated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Table {
    /// `version_info` / system version of the resources each type was compiled from.
    pub versions: Versions,
    /// Listeners by name (istiod names: `0.0.0.0_<port>`), sorted.
    #[serde(serialize_with = "ser::arc_btree")]
    pub listeners: BTreeMap<ListenerKey, Arc<Listener>>,
    /// Route configurations by name (RDS names: `"<port>"`). A name a listener references but
    /// that is missing here is "not ready": the listener answers 404 NR (see
    /// [`crate::forwarder::matcher::NoMatch::RouteConfigNotReady`]).
    #[serde(serialize_with = "ser::sorted_arc_map")]
    pub route_configs: HashMap<String, Arc<RouteConfig>>,
    /// Clusters by name (`outbound|80|v1|host`). A route to a name missing here → 503 NC.
    #[serde(serialize_with = "ser::sorted_arc_map")]
    pub clusters: HashMap<String, Arc<Cluster>>,
}

impl Table {
    /// A JSON view of the whole table for the admin's `/debug/config` (maps sorted by key,
    /// regexes as their pattern).
    pub fn debug_json(&self) -> serde_json::Value {
        // Serializing plain data (strings, numbers, sorted maps) cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The listener bound to `port` (any address), if one. istiod emits one listener per port.
    pub fn listener_for_port(&self, port: u16) -> Option<&Arc<Listener>> {
        self.listeners.values().find(|l| l.port == port)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }
}

/// The version of each resource type a table was compiled from (empty when unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Versions {
    pub listeners: String,
    pub route_configs: String,
    pub clusters: String,
    pub endpoints: String,
}

/// A listener's name (`0.0.0.0_8080`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ListenerKey(pub String);

impl ListenerKey {
    pub fn new(name: impl Into<String>) -> ListenerKey {
        ListenerKey(name.into())
    }
}

impl std::fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// ================================================================================= listeners

/// One HTTP listener: a socket to bind and the route configuration it serves.
#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    pub name: ListenerKey,
    /// IP literal to bind (`0.0.0.0`, `::`, `127.0.0.1`).
    pub address: String,
    pub port: u16,
    /// `address:port` parsed, ready for `TcpListener::bind`.
    pub socket_addr: SocketAddr,
    /// HCM `stat_prefix` (for metrics labels).
    pub stat_prefix: String,
    /// RDS name (`"8080"`), looked up in [`Table::route_configs`].
    pub route_config_name: String,
    /// The HCM has `envoy.filters.http.fault`: routes' [`Route::fault`] applies. Without the
    /// filter, Envoy ignores per-route fault config; a route configuration may be shared by
    /// several listeners, so the route keeps it and the data plane checks this flag (or uses
    /// [`crate::forwarder::matcher::Matched::fault`]).
    pub fault_filter: bool,
    /// The HCM has `envoy.filters.http.cors`: routes' [`Route::cors`] applies (same rule).
    pub cors_filter: bool,
    /// HCM `use_remote_address` (Envoy default false): when true, the forwarder appends the
    /// peer address to `x-forwarded-for` and treats it as the trusted client address; when
    /// false it leaves `x-forwarded-for` as received.
    pub use_remote_address: bool,
}

// ============================================================================ route configs

/// A compiled `RouteConfiguration`.
#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Precompiled domain → virtual-host index (into `virtual_hosts`).
    pub domains: DomainIndex,
    /// Strip `:port` from Host/:authority before domain matching.
    pub ignore_port_in_host_matching: bool,
    /// `max_direct_response_body_size_bytes` (Envoy default 4096); bodies are checked at
    /// compile time, so the data plane needs nothing from this.
    pub max_direct_response_body_size_bytes: u32,
}

/// Envoy's virtual-host lookup, precompiled. Order of precedence (Envoy
/// `RouteMatcher::findVirtualHost`): exact domain, then suffix wildcards (`*.foo.com`,
/// `*-bar.foo.com`) longest suffix first, then prefix wildcards (`foo.*`) longest prefix first,
/// then `*`. Domains and the request host are compared lowercased. A wildcard never matches
/// the empty string (`*.foo.com` does not match `.foo.com`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DomainIndex {
    /// Lowercased exact domain → vhost index.
    #[serde(serialize_with = "ser::sorted_map")]
    pub exact: HashMap<String, usize>,
    /// (lowercased suffix without the `*`, vhost index), longest suffix first; ties keep
    /// config order (first vhost wins, Envoy rejects duplicates anyway).
    pub suffixes: Vec<(String, usize)>,
    /// (lowercased prefix without the `*`, vhost index), longest prefix first.
    pub prefixes: Vec<(String, usize)>,
    /// The vhost that has `*`.
    pub any: Option<usize>,
}

/// A compiled virtual host. Vhost-level settings (headers, retry policy, mirror policies) are
/// already folded into each [`Route`] with Envoy's precedence, so the data plane only reads
/// the route.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    /// In config order: the first route that matches wins.
    pub routes: Vec<Route>,
}

/// One route: a match and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// `Route.name` (may be empty).
    pub name: String,
    /// `decorator.operation` when set (for logs/tracing only).
    pub operation: Option<String>,
    pub matcher: RouteMatch,
    pub action: Action,
    /// Request header mutations to apply before forwarding, in application order: the route's,
    /// then the virtual host's, then the route configuration's (Envoy's default,
    /// `most_specific_header_mutations_wins: false`). Apply to the primary request; mirrors
    /// get a copy of the request after these ran (Envoy §4.6).
    pub request_headers: HeaderMutations,
    /// Response header mutations, same order, applied to the response sent downstream
    /// (including local replies of redirects and direct responses, like Envoy).
    pub response_headers: HeaderMutations,
    /// Fault injection; applies only when the listener has the fault filter
    /// ([`Listener::fault_filter`], [`crate::forwarder::matcher::Matched::fault`]).
    pub fault: Option<Fault>,
    /// CORS; applies only when the listener has the cors filter
    /// ([`crate::forwarder::matcher::Matched::cors`]).
    pub cors: Option<Cors>,
}

// ================================================================================== matching

/// Path, header and query-parameter match of a route (all must match).
#[derive(Debug, Clone, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// `case_sensitive` (Envoy default true). Applies to `Prefix` and `Exact`; Envoy ignores it
    /// for regexes (the regex itself decides).
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// `grpc: {}`: only requests with `content-type: application/grpc*` match.
    pub grpc_only: bool,
}

/// How a route matches the path.
#[derive(Debug, Clone, Serialize)]
pub enum PathMatch {
    /// `prefix`: compared with the whole `:path` including the query string (Envoy). Stored
    /// lowercased when the route is case-insensitive.
    Prefix(String),
    /// `path`: compared with the path without query string and fragment. Stored lowercased
    /// when the route is case-insensitive.
    Exact(String),
    /// `safe_regex`: must match the whole path without query string and fragment (the regex
    /// is compiled anchored: `^(?:re)$`).
    Regex(#[serde(serialize_with = "ser::regex")] Regex),
    /// `path_separated_prefix`: the path (without query) equals the prefix or continues with
    /// `/` after it.
    PathSeparatedPrefix(String),
}

/// Which request header a matcher reads. Pseudo-headers come from the request line, not the
/// header map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HeaderKey {
    /// `:method`
    Method,
    /// `:authority` (the Host header for HTTP/1).
    Authority,
    /// `:scheme`
    Scheme,
    /// `:path` (with query string)
    Path,
    /// A regular header, lowercase.
    Header(#[serde(serialize_with = "ser::header_name")] HeaderName),
}

/// A compiled `HeaderMatcher`. Multiple values of one header are joined with `,` before
/// matching (Envoy `getAllOfHeaderAsString`).
#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatcher {
    pub key: HeaderKey,
    pub rule: HeaderRule,
    /// `invert_match`: the result is negated (a missing header then matches, unless
    /// `treat_missing_header_as_empty` made it present).
    pub invert: bool,
    /// `treat_missing_header_as_empty`: a missing header is matched as `""`.
    pub treat_missing_as_empty: bool,
}

/// What a header matcher checks on the header value.
#[derive(Debug, Clone, Serialize)]
pub enum HeaderRule {
    /// `present_match: true` → the header is present; `false` → absent.
    Present(bool),
    /// `string_match` (or the deprecated `exact_match`/`prefix_match`/… fields).
    String(StringMatcher),
    /// `range_match`: the value parses as an i64 in `[start, end)`.
    Range { start: i64, end: i64 },
}

/// A compiled `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone, Serialize)]
pub struct StringMatcher {
    pub kind: StringMatchKind,
    /// `ignore_case` (not applicable to regexes, which Envoy rejects with it... the compiler
    /// NACKs that combination).
    pub ignore_case: bool,
}

/// The pattern of a [`StringMatcher`]. With `ignore_case`, the stored string is lowercased.
#[derive(Debug, Clone, Serialize)]
pub enum StringMatchKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Anchored for a full match.
    Regex(#[serde(serialize_with = "ser::regex")] Regex),
}

impl StringMatcher {
    /// Envoy `StringMatcherImpl::match`.
    pub fn matches(&self, value: &str) -> bool {
        if self.ignore_case {
            let lower = value.to_ascii_lowercase();
            self.matches_exact_case(&lower)
        } else {
            self.matches_exact_case(value)
        }
    }

    fn matches_exact_case(&self, value: &str) -> bool {
        match &self.kind {
            StringMatchKind::Exact(s) => value == s,
            StringMatchKind::Prefix(s) => value.starts_with(s.as_str()),
            StringMatchKind::Suffix(s) => value.ends_with(s.as_str()),
            StringMatchKind::Contains(s) => value.contains(s.as_str()),
            StringMatchKind::Regex(r) => r.is_match(value),
        }
    }
}

/// A compiled `QueryParameterMatcher`: looks at the first value of the (percent-decoded)
/// parameter `name`; a missing parameter never matches.
#[derive(Debug, Clone, Serialize)]
pub struct QueryParameterMatcher {
    pub name: String,
    /// `None`: `present_match: true` (any value, even empty).
    pub value: Option<StringMatcher>,
}

// =================================================================================== actions

/// What a matched route does.
#[derive(Debug, Clone, Serialize)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
}

/// `route:` — forward upstream.
#[derive(Debug, Clone, Serialize)]
pub struct Forward {
    pub clusters: ClusterTarget,
    /// Whole-request timeout (Envoy `timeout`): `None` = no timeout (proto `0s`); unset in
    /// the proto = [`DEFAULT_ROUTE_TIMEOUT`]. Covers all retries; on expiry → 504
    /// `upstream request timeout`. Envoy also sets `x-envoy-expected-rq-timeout-ms` on the
    /// upstream request when a timeout applies.
    pub timeout: Option<Duration>,
    /// `max_grpc_timeout`: `Some(_)` → for gRPC requests, a `grpc-timeout` header overrides
    /// `timeout`, capped at the inner value (`None` inside = no cap, proto `0s`).
    pub max_grpc_timeout: Option<Option<Duration>>,
    /// Route's retry policy, or the virtual host's when the route has none.
    pub retry: Option<RetryPolicy>,
    /// Route's `request_mirror_policies`, or the virtual host's, or the route
    /// configuration's when the more specific level has none (Envoy: most specific non-empty
    /// list wins, not merged). Each is an independent coin flip per request. Envoy never
    /// mirrors CONNECT requests and sends no shadow when the primary cluster is missing.
    pub mirrors: Vec<MirrorPolicy>,
    pub rewrite: Option<PathRewrite>,
    /// `host_rewrite_literal`: set Host/:authority on the upstream request (mirrors then get
    /// this host + `-shadow`).
    pub host_rewrite: Option<String>,
    /// `hash_policy` (used by [`LbPolicy::ConsistentHash`] clusters; ignored by others, like
    /// Envoy).
    pub hash_policy: Vec<HashPolicy>,
}

/// Where a [`Forward`] sends the request.
#[derive(Debug, Clone, Serialize)]
pub enum ClusterTarget {
    Single(String),
    Weighted(WeightedClusters),
}

/// `weighted_clusters`, with cumulative weights for an O(log n) pick.
#[derive(Debug, Clone, Serialize)]
pub struct WeightedClusters {
    pub clusters: Vec<WeightedCluster>,
    /// `cumulative[i]` = sum of weights of `clusters[..=i]`. Strictly positive total.
    pub cumulative: Vec<u64>,
    pub total: u64,
}

/// One entry of `weighted_clusters.clusters`. Its header mutations apply (before the
/// route's) when this entry is picked.
#[derive(Debug, Clone, Serialize)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
}

impl WeightedClusters {
    /// Envoy's pick: a random value in `[0, total)`, the first entry whose cumulative weight
    /// exceeds it.
    pub fn pick(&self, rng: &mut impl rand::Rng) -> &WeightedCluster {
        let r = rng.random_range(0..self.total.max(1));
        let i = self.cumulative.partition_point(|&c| c <= r);
        // cumulative is non-empty with last == total > r, so i < len.
        &self.clusters[i.min(self.clusters.len() - 1)]
    }
}

impl Forward {
    /// The primary cluster for one request and, for a weighted entry, its header mutations.
    pub fn pick_cluster(&self, rng: &mut impl rand::Rng) -> (&str, Option<&WeightedCluster>) {
        match &self.clusters {
            ClusterTarget::Single(name) => (name.as_str(), None),
            ClusterTarget::Weighted(w) => {
                let c = w.pick(rng);
                (c.name.as_str(), Some(c))
            }
        }
    }
}

/// A path rewrite applied before forwarding (the mirror sees the rewritten path).
#[derive(Debug, Clone, Serialize)]
pub enum PathRewrite {
    /// `prefix_rewrite`: replace the part of the path the route's `Prefix`/`Exact` match
    /// matched (its length; case-insensitively when the route is) with this string. The query
    /// string is kept.
    Prefix(String),
    /// `regex_rewrite`: replace every match of `pattern` in the path (without the query string,
    /// which is kept) with `substitution` (`\1` already converted to `${1}`).
    Regex {
        #[serde(serialize_with = "ser::regex")]
        pattern: Regex,
        substitution: String,
    },
}

/// A compiled `RetryPolicy`.
#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    /// Parsed `retry_on`.
    pub retry_on: RetryOn,
    /// `retriable_status_codes` (used with [`RetryOn::RETRIABLE_STATUS_CODES`]).
    pub retriable_status_codes: Vec<u16>,
    /// `num_retries` (Envoy default 1).
    pub num_retries: u32,
    /// `per_try_timeout`: `None` = each try is bounded only by the route timeout. On expiry
    /// the try counts as a 504 for retry purposes.
    pub per_try_timeout: Option<Duration>,
    /// `envoy.retry_host_predicates.previous_hosts`: a retry avoids hosts already tried,
    /// re-picking up to `host_selection_retry_max_attempts` times.
    pub previous_hosts: bool,
    /// `host_selection_retry_max_attempts` (Envoy default 1).
    pub host_selection_retry_max_attempts: u32,
    /// Back-off between tries: Envoy's fully jittered exponential back-off, starting at
    /// `base_interval` (default 25 ms), capped at `max_interval` (default 10 × base).
    pub base_interval: Duration,
    pub max_interval: Duration,
}

/// `retry_on` tokens as a bitset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RetryOn(pub u32);

impl RetryOn {
    /// `5xx`: any 5xx response, or a connect failure / reset / timeout of the try.
    pub const FIVE_XX: RetryOn = RetryOn(1 << 0);
    /// `gateway-error`: 502, 503, 504 (and the same transport failures as 5xx).
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    /// `connect-failure`: the TCP connect failed or timed out.
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 2);
    /// `refused-stream`: the upstream refused the stream (HTTP/2 REFUSED_STREAM).
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 3);
    /// `reset`: the upstream reset/closed the connection before a response header.
    pub const RESET: RetryOn = RetryOn(1 << 4);
    /// `retriable-status-codes`: the response status is in `retriable_status_codes`.
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 5);
    /// `retriable-4xx`: 409.
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 6);
    /// gRPC-only (response `grpc-status`): `cancelled` (1).
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 7);
    /// gRPC-only: `deadline-exceeded` (4).
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 8);
    /// gRPC-only: `internal` (13).
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 9);
    /// gRPC-only: `resource-exhausted` (8).
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 10);
    /// gRPC-only: `unavailable` (14).
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 11);

    /// `reset-before-request`: the upstream reset/refused the connection before the request
    /// headers were sent (safe to retry any method).
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 12);
    /// `envoy-ratelimited`: the response carries `x-envoy-ratelimited`.
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 13);

    /// Every token the compiler accepts, with its bit.
    pub const TOKENS: &'static [(&'static str, RetryOn)] = &[
        ("5xx", RetryOn::FIVE_XX),
        ("gateway-error", RetryOn::GATEWAY_ERROR),
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("refused-stream", RetryOn::REFUSED_STREAM),
        ("reset", RetryOn::RESET),
        ("reset-before-request", RetryOn::RESET_BEFORE_REQUEST),
        ("envoy-ratelimited", RetryOn::ENVOY_RATELIMITED),
        ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
        ("retriable-4xx", RetryOn::RETRIABLE_4XX),
        ("cancelled", RetryOn::GRPC_CANCELLED),
        ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED),
        ("internal", RetryOn::GRPC_INTERNAL),
        ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED),
        ("unavailable", RetryOn::GRPC_UNAVAILABLE),
    ];

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for RetryOn {
    fn bitor_assign(&mut self, rhs: RetryOn) {
        self.0 |= rhs.0;
    }
}

/// One `request_mirror_policies` entry.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorPolicy {
    pub cluster: String,
    /// `runtime_fraction.default_value` (absent → 100/100).
    pub fraction: Fraction,
    /// Don't append `-shadow` to the mirrored Host (Envoy: `foo:8080` → `foo-shadow:8080`).
    pub disable_shadow_host_suffix_append: bool,
    /// `host_rewrite_literal` of the policy: the mirrored Host is this, no suffix.
    pub host_rewrite: Option<String>,
}

impl MirrorPolicy {
    /// One independent draw per policy per request (Envoy `shouldShadow`).
    pub fn should_mirror(&self, rng: &mut impl rand::Rng) -> bool {
        self.fraction.sample(rng)
    }

    /// The Host/:authority of the mirrored request given the primary's (after
    /// `host_rewrite`), Envoy `shadowAppendedHost`: `-shadow` goes before the port.
    pub fn shadow_host(&self, primary_host: &str) -> String {
        if let Some(h) = &self.host_rewrite {
            return h.clone();
        }
        if self.disable_shadow_host_suffix_append {
            return primary_host.to_string();
        }
        match port_start(primary_host) {
            Some(i) => format!("{}-shadow{}", &primary_host[..i], &primary_host[i..]),
            None => format!("{primary_host}-shadow"),
        }
    }
}

/// Index of the `:port` part of a host (Envoy `HeaderUtility::getPortStart`): the last `:`
/// followed only by digits, not inside IPv6 brackets.
pub fn port_start(host: &str) -> Option<usize> {
    let colon = host.rfind(':')?;
    if host[colon..].contains(']') {
        return None;
    }
    if host.starts_with('[') {
        // Bracketed IPv6: the port colon follows the closing bracket.
        if !host[..colon].ends_with(']') {
            return None;
        }
    } else if host[..colon].contains(':') {
        // Unbracketed IPv6 literal: no port.
        return None;
    }
    let port = &host[colon + 1..];
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(colon)
}

/// `FractionalPercent`: hits when `random % denominator < numerator` (Envoy
/// `evaluateFractionalPercent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fraction {
    pub numerator: u32,
    /// 100, 10 000 or 1 000 000.
    pub denominator: u32,
}

impl Fraction {
    pub const ALWAYS: Fraction = Fraction {
        numerator: 100,
        denominator: 100,
    };

    pub fn sample(&self, rng: &mut impl rand::Rng) -> bool {
        if self.numerator == 0 {
            return false;
        }
        if self.numerator >= self.denominator {
            return true;
        }
        rng.random_range(0..self.denominator) < self.numerator
    }
}

/// A `hash_policy` entry (Envoy evaluates them in order, combining hashes; `terminal` stops
/// at the first one that produced a hash).
#[derive(Debug, Clone, Serialize)]
pub struct HashPolicy {
    pub kind: HashPolicyKind,
    pub terminal: bool,
}

#[derive(Debug, Clone, Serialize)]
pub enum HashPolicyKind {
    /// Hash the value of this request header (none → no hash from this entry).
    Header(#[serde(serialize_with = "ser::header_name")] HeaderName),
    /// Hash this cookie's value; when absent and `ttl` is set, Envoy generates a cookie
    /// (`name`, `path`, `ttl`) and sets it on the response.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: Option<String>,
    },
    /// Hash the downstream peer IP.
    SourceIp,
    /// Hash the first value of this query parameter.
    QueryParameter(String),
}

/// `redirect:` — a local 3xx reply.
#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    /// `scheme_redirect` / `https_redirect`.
    pub scheme: Option<String>,
    /// `host_redirect`.
    pub host: Option<String>,
    /// `port_redirect` (0 = keep).
    pub port: Option<u16>,
    pub path: Option<PathRedirect>,
    /// `response_code` mapped: 301, 302 (default), 303, 307, 308.
    pub response_code: u16,
    /// `strip_query`.
    pub strip_query: bool,
}

/// How a redirect rewrites the path.
#[derive(Debug, Clone, Serialize)]
pub enum PathRedirect {
    /// `path_redirect`: the whole path (the original query string is kept unless the new path
    /// has one or `strip_query`).
    Path(String),
    /// `prefix_rewrite`: like [`PathRewrite::Prefix`].
    Prefix(String),
    /// `regex_rewrite`.
    Regex {
        #[serde(serialize_with = "ser::regex")]
        pattern: Regex,
        substitution: String,
    },
}

/// `direct_response:` — a local reply.
#[derive(Debug, Clone, Serialize)]
pub struct DirectResponse {
    pub status: u16,
    /// `body` (inline string or bytes), `None` = empty body.
    #[serde(serialize_with = "ser::opt_bytes")]
    pub body: Option<bytes::Bytes>,
}

/// Header mutations at one point (request or response).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderMutations {
    /// Applied in order, after `remove`.
    pub add: Vec<HeaderAdd>,
    /// Removed first (Envoy applies removals before additions).
    #[serde(serialize_with = "ser::header_names")]
    pub remove: Vec<HeaderName>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// A header to add.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderAdd {
    #[serde(serialize_with = "ser::header_name")]
    pub name: HeaderName,
    #[serde(serialize_with = "ser::header_value")]
    pub value: http::HeaderValue,
    pub action: AppendAction,
}

/// `HeaderValueOption.append_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AppendAction {
    /// Append a value (the header may end up with several values).
    AppendIfExistsOrAdd,
    /// Add only when absent.
    AddIfAbsent,
    /// Replace all existing values.
    OverwriteIfExistsOrAdd,
    /// Replace when present, do nothing when absent.
    OverwriteIfExists,
}

// ================================================================================ fault/cors

/// Per-route `envoy.filters.http.fault` config (`HTTPFault`). Delay first, then abort, each
/// with its own independent draw.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultDelay {
    pub fixed: Duration,
    pub fraction: Fraction,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultAbort {
    pub kind: AbortKind,
    pub fraction: Fraction,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub enum AbortKind {
    /// Local reply with this HTTP status (body `fault filter abort`).
    Http(u16),
    /// gRPC trailers-only reply, HTTP 200 with `grpc-status: N`.
    Grpc(u32),
}

/// Per-route `envoy.filters.http.cors` config (`CorsPolicy`), Envoy cors filter semantics:
/// a preflight (OPTIONS with `origin` and `access-control-request-method`) whose origin
/// matches gets a local 200 with the allow headers; a non-matching preflight is forwarded when
/// `forward_not_matching_preflights` (default true), else answered 200 without CORS headers;
/// a simple request with a matching origin gets `access-control-allow-origin` (and
/// `-allow-credentials`, `-expose-headers`) added to the response.
#[derive(Debug, Clone, Serialize)]
pub struct Cors {
    pub allow_origin: Vec<StringMatcher>,
    pub allow_methods: Option<String>,
    pub allow_headers: Option<String>,
    pub expose_headers: Option<String>,
    pub max_age: Option<String>,
    pub allow_credentials: bool,
    pub forward_not_matching_preflights: bool,
    /// `filter_enabled` (absent → always). When the draw fails the policy is not applied.
    pub filter_enabled: Fraction,
}

impl Cors {
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allow_origin.iter().any(|m| m.matches(origin))
    }
}

// ================================================================================== clusters

/// A compiled `Cluster` with its endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub circuit_breakers: CircuitBreakers,
    pub protocol: UpstreamProtocol,
    /// `common_http_protocol_options.idle_timeout` (Envoy default 1 h).
    pub idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_requests_per_connection` (None = unlimited).
    pub max_requests_per_connection: Option<u32>,
    /// `common_http_protocol_options.max_connection_duration`.
    pub max_connection_duration: Option<Duration>,
    /// `upstream_connection_options.tcp_keepalive` (None = OS default, no keepalive).
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `outlier_detection`: passive ejection the data plane may apply (carried as
    /// configured; the data plane documents what it implements).
    pub outlier_detection: Option<OutlierDetection>,
    /// `common_lb_config.healthy_panic_threshold` in percent (Envoy default 50).
    pub healthy_panic_threshold: f64,
    /// Endpoints: from the ClusterLoadAssignment (EDS, or inline `load_assignment` for
    /// STATIC / STRICT_DNS / LOGICAL_DNS). Empty → every request → 503 UH ("no healthy
    /// upstream"). Endpoints with health status UNHEALTHY/DRAINING/TIMEOUT are left out, like
    /// Envoy.
    pub endpoints: Vec<Endpoint>,
    /// EDS cluster whose ClusterLoadAssignment has not arrived: no endpoints yet (503).
    pub endpoints_pending: bool,
}

/// How the cluster's endpoints are discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Discovery {
    /// EDS, with its service name (the CLA's `cluster_name`).
    Eds { service_name: String },
    /// STATIC: endpoint addresses are IP literals.
    Static,
    /// STRICT_DNS: endpoint `host` may be a DNS name; the data plane resolves it (with tokio,
    /// periodically, every `dns_refresh_rate`, default 5 s) and balances over all resolved
    /// addresses. The compiler does no I/O.
    StrictDns { refresh: Duration },
    /// LOGICAL_DNS: resolve and use the first address only.
    LogicalDns { refresh: Duration },
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LbPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// Power of `choice_count` (default 2) random choices, fewest active requests wins
    /// (weighted when weights differ, like Envoy).
    LeastRequest { choice_count: u32 },
    /// Uniform (weighted) random.
    Random,
    /// RING_HASH and MAGLEV: approximated as consistent hashing over the endpoints with the
    /// route's [`Forward::hash_policy`] (e.g. rendezvous hashing on the request hash); a
    /// request without a hash (no policy / missing header) is balanced at random, like Envoy.
    /// The exact ring/table layout is not Envoy's, so which endpoint a key lands on differs
    /// from Envoy's choice; stickiness per key is preserved.
    ConsistentHash { kind: HashLbKind },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HashLbKind {
    RingHash,
    Maglev,
}

/// Default-priority `circuit_breakers.thresholds` (Envoy defaults 1024/1024/1024/3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreakers {
    /// Over this many upstream connections, new ones are not opened (request queues/pends).
    pub max_connections: u32,
    /// Requests waiting for a connection; over it → 503 with `x-envoy-overloaded`.
    pub max_pending_requests: u32,
    /// Active requests to the cluster; over it → 503 `x-envoy-overloaded`.
    pub max_requests: u32,
    /// Active retries to the cluster; over it → the retry is not attempted.
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    fn default() -> CircuitBreakers {
        CircuitBreakers {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

/// Which HTTP version to speak upstream (`HttpProtocolOptions.explicit_http_config`; none →
/// HTTP/1.1, Envoy's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 over cleartext (prior knowledge, h2c).
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

/// `outlier_detection` as configured (Envoy defaults applied).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub split_external_local_origin_errors: bool,
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The address as configured: an IP literal (EDS/STATIC) or a DNS name (STRICT_DNS /
    /// LOGICAL_DNS).
    pub host: String,
    pub port: u16,
    /// Parsed when `host` is an IP literal; `None` → the data plane resolves `host`.
    pub socket_addr: Option<SocketAddr>,
    /// `load_balancing_weight` (default 1). Locality weights are ignored, as Envoy does
    /// without `locality_weighted_lb_config`.
    pub weight: u32,
    /// Locality (`region/zone/sub_zone`), informational.
    pub locality: Option<String>,
}

impl Endpoint {
    /// `host:port` (IPv6 bracketed), e.g. for an upstream URI authority.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

// =================================================================================== serde

mod ser {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;

    use serde::{Serialize, Serializer};

    pub fn sorted_map<S: Serializer, V: Serialize>(
        m: &HashMap<String, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<&String, &V> = m.iter().collect();
        sorted.serialize(s)
    }

    pub fn sorted_arc_map<S: Serializer, T: Serialize>(
        m: &HashMap<String, Arc<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<&String, &T> = m.iter().map(|(k, v)| (k, &**v)).collect();
        sorted.serialize(s)
    }

    pub fn arc_btree<S: Serializer, K: Serialize + Ord, T: Serialize>(
        m: &BTreeMap<K, Arc<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let view: BTreeMap<&K, &T> = m.iter().map(|(k, v)| (k, &**v)).collect();
        view.serialize(s)
    }

    pub fn regex<S: Serializer>(r: &regex::Regex, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.as_str())
    }

    pub fn header_name<S: Serializer>(h: &http::HeaderName, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(h.as_str())
    }

    pub fn header_names<S: Serializer>(h: &[http::HeaderName], s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<&str> = h.iter().map(|h| h.as_str()).collect();
        v.serialize(s)
    }

    pub fn header_value<S: Serializer>(h: &http::HeaderValue, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(h.as_bytes()))
    }

    pub fn opt_bytes<S: Serializer>(b: &Option<bytes::Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_some(&String::from_utf8_lossy(b)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_goes_before_the_port() {
        let m = MirrorPolicy {
            cluster: "c".into(),
            fraction: Fraction::ALWAYS,
            disable_shadow_host_suffix_append: false,
            host_rewrite: None,
        };
        assert_eq!(m.shadow_host("foo"), "foo-shadow");
        assert_eq!(m.shadow_host("foo:8080"), "foo-shadow:8080");
        assert_eq!(m.shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(m.shadow_host("[::1]"), "[::1]-shadow");
        let off = MirrorPolicy {
            disable_shadow_host_suffix_append: true,
            ..m.clone()
        };
        assert_eq!(off.shadow_host("foo:8080"), "foo:8080");
        let lit = MirrorPolicy {
            host_rewrite: Some("bar".into()),
            ..m
        };
        assert_eq!(lit.shadow_host("foo:8080"), "bar");
    }

    #[test]
    fn fraction_zero_never_and_full_always() {
        let mut rng = rand::rng();
        let zero = Fraction {
            numerator: 0,
            denominator: 100,
        };
        assert!((0..1000).all(|_| !zero.sample(&mut rng)));
        assert!((0..1000).all(|_| Fraction::ALWAYS.sample(&mut rng)));
    }
}
