//! The validated intermediate model between Istio input and Envoy output.
//!
//! Plain data with public fields. Lowering (`lower/`) builds it from Istio resources and has
//! already applied every Istio semantic (short names, defaults, precedence, percentages, the
//! catch-all short-circuit); emitting (`xds/`) maps it 1:1 onto Envoy v3 protos and makes no
//! decisions of its own. All collections are in output order; nothing here is a hash map.

use std::time::Duration;

/// Everything the translation produces, before it becomes Envoy protos.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// Sorted by name.
    pub listeners: Vec<Listener>,
    /// Sorted by name.
    pub route_configs: Vec<RouteConfig>,
    /// Sorted by name.
    pub clusters: Vec<Cluster>,
}

// ===== listeners =====

/// An HTTP listener: `0.0.0.0_<port>` for a service port, or a Gateway server.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// `<bind>_<port>`, e.g. `0.0.0.0_8080`.
    pub name: String,
    pub address: String,
    pub port: u32,
    /// RDS name: `"<port>"` for sidecar-style listeners, `http.<port>` for gateways.
    pub route_config_name: String,
    /// HTTP connection manager stat prefix (`outbound_0.0.0.0_8080`, `http.8080`).
    pub stat_prefix: String,
    /// Install `envoy.filters.http.fault` (some route on this listener uses fault injection).
    pub fault_filter: bool,
    /// Install `envoy.filters.http.cors` (some route on this listener uses a CORS policy).
    pub cors_filter: bool,
}

// ===== routes =====

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// `"<port>"` or `http.<port>`.
    pub name: String,
    /// Sorted by name, the catch-all virtual host (if any) last.
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// `<fqdn>:<port>`, or `allow_any` / `blackhole:<port>` for catch-alls.
    pub name: String,
    /// Envoy domain patterns, unique within the route config.
    pub domains: Vec<String>,
    /// In the user's order.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `HTTPRoute.name`, `name.matchName`, `default` for a service without a VirtualService,
    /// or empty.
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    /// Route-level request header operations (already stable-sorted: set list, then add list).
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_remove: Vec<String>,
    pub fault: Option<Fault>,
    pub cors: Option<Cors>,
    /// `/apis/networking.istio.io/v1/namespaces/<ns>/virtual-service/<name>`; `None` for
    /// generated default routes.
    pub config_path: Option<String>,
    /// Decorator operation, as istiod computes it.
    pub decorator: String,
    pub stat_prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// `None` for a match-less rule (no `case_sensitive` field), else `Some(!ignoreUriCase)`.
    pub case_sensitive: Option<bool>,
    /// Sorted by name (headers and withoutHeaders together), then `:method`, `:authority`,
    /// `:scheme`, as istiod orders them.
    pub headers: Vec<HeaderMatcher>,
    /// Sorted by name (istiod's order is random; ours is deterministic).
    pub query_parameters: Vec<QueryParameterMatcher>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderMatch {
    String(StringMatcher),
    Present,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatcher {
    pub name: String,
    pub matcher: HeaderMatch,
    pub invert: bool,
    /// Set for inverted (withoutHeaders) string matches, as istiod does.
    pub treat_missing_header_as_empty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParameterMatcher {
    pub name: String,
    pub matcher: HeaderMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendAction {
    /// `set`: `OVERWRITE_IF_EXISTS_OR_ADD`.
    OverwriteIfExistsOrAdd,
    /// `add`: `APPEND_IF_EXISTS_OR_ADD`.
    AppendIfExistsOrAdd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderValueOption {
    pub key: String,
    pub value: String,
    pub append_action: AppendAction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    Forward(Box<Forward>),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub destination: ClusterSpecifier,
    /// Always set; `Duration::ZERO` disables Envoy's 15 s default, as istiod does.
    pub timeout: Duration,
    pub retry: Option<RetryPolicy>,
    pub mirrors: Vec<MirrorPolicy>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite_literal: Option<String>,
    pub hash_policy: Vec<HashPolicy>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClusterSpecifier {
    Cluster(String),
    /// Weight-0 entries already dropped; no total weight.
    Weighted(Vec<WeightedCluster>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_remove: Vec<String>,
    pub host_rewrite_literal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denominator {
    Hundred,
    Million,
}

/// Envoy `FractionalPercent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: Denominator,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPolicy {
    /// `outbound|<port>|<subset>|<fqdn>`; may name a cluster that does not exist (undefined
    /// subset), as istiod emits it.
    pub cluster: String,
    pub fraction: Fraction,
    /// `false` keeps Envoy's `-shadow` Host suffix (our default).
    pub disable_shadow_host_suffix_append: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub num_retries: u32,
    /// Comma-separated Envoy retry-on tokens.
    pub retry_on: String,
    pub retriable_status_codes: Vec<u32>,
    pub per_try_timeout: Option<Duration>,
    pub host_selection_retry_max_attempts: u32,
    /// Add `envoy.retry_host_predicates.previous_hosts`.
    pub previous_hosts_predicate: bool,
    /// `retryRemoteLocalities`: `envoy.retry_priorities.previous_priorities`, update_frequency 2.
    pub previous_priorities: bool,
    pub backoff_base_interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPolicy {
    Header(String),
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub host_redirect: Option<String>,
    pub path_redirect: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub scheme_redirect: Option<String>,
    pub port_redirect: Option<u32>,
    /// 301, 302, 303, 307 or 308.
    pub response_code: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: u32,
    pub body: Option<Body>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    String(String),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultDelay {
    pub fixed_delay: Duration,
    /// `None` when the user gave no percentage (Envoy then uses its proto default).
    pub percentage: Option<Fraction>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    pub status: AbortStatus,
    pub percentage: Option<Fraction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortStatus {
    Http(u32),
    /// gRPC status code number (`UNAVAILABLE` → 14).
    Grpc(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cors {
    pub allow_origin_string_match: Vec<StringMatcher>,
    /// `"GET,POST"`; empty → unset.
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    /// Seconds as a string (`"86400"`); `None` → unset.
    pub max_age: Option<String>,
    pub allow_credentials: Option<bool>,
    /// `None` → unset; `Some(false)` only for `unmatchedPreflights: IGNORE`.
    pub forward_not_matching_preflights: Option<bool>,
}

// ===== clusters and endpoints =====

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// `outbound|<port>|<subset>|<fqdn>`.
    pub name: String,
    pub service: String,
    pub port: u32,
    pub subset: Option<String>,
    pub discovery: Discovery,
    /// The cluster's endpoints, already filtered by subset labels. For `Eds` they are served
    /// as a ClusterLoadAssignment named like the cluster; for `StrictDns`/`Static` inline.
    pub endpoints: Vec<Endpoint>,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub circuit_breakers: CircuitBreakers,
    pub outlier_detection: Option<OutlierDetection>,
    /// `HttpProtocolOptions` pieces; `None` everywhere means no typed extension.
    pub http_options: HttpOptions,
    pub tls: Option<UpstreamTls>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `healthy_panic_threshold` (istiod: `minHealthPercent`, 0 by default).
    pub healthy_panic_threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// EDS over ADS (`STATIC` ServiceEntries and Kubernetes services).
    Eds,
    /// `DNS` / `DNS_ROUND_ROBIN` ServiceEntries: `STRICT_DNS` / `LOGICAL_DNS` with inline endpoints.
    StrictDns,
    LogicalDns,
}

/// One upstream endpoint. (Its labels stay in the registry: they select the subsets' endpoints
/// during lowering, and Envoy is not sent them.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub port: u32,
    pub weight: Option<u32>,
    pub locality: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    LeastRequest,
    RoundRobin,
    Random,
    RingHash { minimum_ring_size: u64 },
    Maglev { table_size: Option<u64> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    /// istiod raises Envoy's defaults to the maximum.
    fn default() -> Self {
        CircuitBreakers {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_failure: Option<u32>,
    pub consecutive_local_origin_failure: Option<u32>,
    pub split_external_local_origin_errors: bool,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpOptions {
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub max_connection_duration: Option<Duration>,
    pub max_concurrent_streams: Option<u32>,
    /// Upstream protocol: HTTP/2 (`h2UpgradePolicy: UPGRADE` or an HTTP2/GRPC port).
    pub http2: bool,
    pub use_client_protocol: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub ca_certificates: Option<String>,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}
