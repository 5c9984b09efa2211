//! DestinationRule traffic policies: validation (with diagnostics) that leaves a clean policy,
//! istiod's precedence (subset port-level > subset > DR port-level > DR, each of
//! loadBalancer / connectionPool / outlierDetection / tls replacing whole) and the conversion
//! of an effective policy into cluster settings.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diag::{Code, Diagnostic};
use crate::ir::{self, CircuitBreakers, HttpOptions, LbPolicy, UpstreamTls};
use crate::istio::{
    ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, LoadBalancerSettings,
    OutlierDetection, PortTrafficPolicy, TrafficPolicy, Unsupported,
};
use crate::lower::duration::parse_duration;
use crate::lower::registry::Protocol;
use crate::source::Resource;

/// Istio's mesh default `connectTimeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's (and istiod's) default ring size for `RING_HASH`.
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;

const SIMPLE_LBS: &str = "UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST";
const TLS_MODES: &str = "DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL";
const H2_POLICIES: &str = "DEFAULT, DO_NOT_UPGRADE, UPGRADE";

// ===== precedence =====

/// The four parts of a traffic policy that apply to one cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Effective<'a> {
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    pub outlier_detection: Option<&'a OutlierDetection>,
    pub tls: Option<&'a ClientTlsSettings>,
}

/// A policy as it applies to `port`: the first `portLevelSettings` entry for the port replaces
/// all four parts (unset ones stay unset); otherwise the policy's own parts.
/// (istiod `GetPortLevelTrafficPolicy`.)
pub fn port_level(policy: &TrafficPolicy, port: u32) -> Effective<'_> {
    match policy
        .port_level_settings
        .iter()
        .find(|p| p.port.is_some_and(|sel| sel.number == port))
    {
        Some(p) => Effective {
            load_balancer: p.load_balancer.as_ref(),
            connection_pool: p.connection_pool.as_ref(),
            outlier_detection: p.outlier_detection.as_ref(),
            tls: p.tls.as_ref(),
        },
        None => Effective {
            load_balancer: policy.load_balancer.as_ref(),
            connection_pool: policy.connection_pool.as_ref(),
            outlier_detection: policy.outlier_detection.as_ref(),
            tls: policy.tls.as_ref(),
        },
    }
}

/// The effective policy of a (subset) cluster: each part from the subset's port-level or
/// subset-level policy when set there, else from the DR's port-level or top-level policy.
/// (istiod `MergeSubsetTrafficPolicy`.)
pub fn effective<'a>(
    rule: Option<&'a TrafficPolicy>,
    subset: Option<&'a TrafficPolicy>,
    port: u32,
) -> Effective<'a> {
    let base = rule.map(|p| port_level(p, port)).unwrap_or_default();
    let Some(subset) = subset else {
        return base;
    };
    let over = port_level(subset, port);
    Effective {
        load_balancer: over.load_balancer.or(base.load_balancer),
        connection_pool: over.connection_pool.or(base.connection_pool),
        outlier_detection: over.outlier_detection.or(base.outlier_detection),
        tls: over.tls.or(base.tls),
    }
}

// ===== conversion =====

/// Cluster settings derived from an effective (already validated) policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub circuit_breakers: CircuitBreakers,
    pub outlier_detection: Option<ir::OutlierDetection>,
    pub http_options: HttpOptions,
    pub tls: Option<UpstreamTls>,
    pub tcp_keepalive: Option<ir::TcpKeepalive>,
    pub healthy_panic_threshold: f64,
}

fn dur(s: &Option<String>) -> Option<Duration> {
    s.as_deref().and_then(|s| parse_duration(s).ok())
}

/// A positive int32-ish value as u32 (istiod treats 0 as unset).
fn positive(v: Option<i64>) -> Option<u32> {
    v.filter(|v| *v > 0).and_then(|v| u32::try_from(v).ok())
}

/// The load-balancing policy (istiod `applyLoadBalancer` + `ApplyRingHashLoadBalancer`).
pub fn lb_policy(lb: Option<&LoadBalancerSettings>) -> LbPolicy {
    let Some(lb) = lb else {
        return LbPolicy::LeastRequest;
    };
    if let Some(ch) = &lb.consistent_hash {
        if let Some(m) = &ch.maglev {
            return LbPolicy::Maglev {
                table_size: m.table_size.filter(|t| *t > 0),
            };
        }
        let size = match &ch.ring_hash {
            Some(r) => r.minimum_ring_size,
            None => ch.minimum_ring_size,
        };
        return LbPolicy::RingHash {
            minimum_ring_size: size.filter(|s| *s > 0).unwrap_or(DEFAULT_MINIMUM_RING_SIZE),
        };
    }
    match lb.simple.as_deref() {
        Some("ROUND_ROBIN") => LbPolicy::RoundRobin,
        Some("RANDOM") => LbPolicy::Random,
        _ => LbPolicy::LeastRequest,
    }
}

/// Convert an effective policy for a port of the given protocol.
pub fn cluster_settings(eff: &Effective<'_>, protocol: Protocol) -> ClusterSettings {
    let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
    let mut circuit_breakers = CircuitBreakers::default();
    let mut http_options = HttpOptions::default();
    let mut tcp_keepalive = None;
    let mut upgrade = false;
    if let Some(pool) = eff.connection_pool {
        if let Some(http) = &pool.http {
            if let Some(v) = positive(http.http2_max_requests) {
                circuit_breakers.max_requests = v;
            }
            if let Some(v) = positive(http.http1_max_pending_requests) {
                circuit_breakers.max_pending_requests = v;
            }
            if let Some(v) = positive(http.max_retries) {
                circuit_breakers.max_retries = v;
            }
            http_options.idle_timeout = dur(&http.idle_timeout);
            http_options.max_requests_per_connection = positive(http.max_requests_per_connection);
            http_options.max_concurrent_streams = positive(http.max_concurrent_streams);
            http_options.use_client_protocol = http.use_client_protocol.unwrap_or(false);
            upgrade = http.h2_upgrade_policy.as_deref() == Some("UPGRADE")
                && !http_options.use_client_protocol;
        }
        if let Some(tcp) = &pool.tcp {
            if let Some(t) = dur(&tcp.connect_timeout) {
                connect_timeout = t;
            }
            if let Some(v) = positive(tcp.max_connections) {
                circuit_breakers.max_connections = v;
            }
            http_options.max_connection_duration = dur(&tcp.max_connection_duration);
            if http_options.idle_timeout.is_none() {
                http_options.idle_timeout = dur(&tcp.idle_timeout);
            }
            tcp_keepalive = tcp.tcp_keepalive.as_ref().map(|k| ir::TcpKeepalive {
                probes: k.probes,
                time: dur(&k.time),
                interval: dur(&k.interval),
            });
        }
    }
    http_options.http2 = upgrade || matches!(protocol, Protocol::Http2 | Protocol::Grpc);

    let mut healthy_panic_threshold = 0.0;
    let outlier_detection = eff.outlier_detection.map(|o| {
        if let Some(p) = o.min_health_percent.filter(|p| *p >= 0) {
            // Sanitized to 0..=100.
            healthy_panic_threshold = p as f64;
        }
        let split = o.split_external_local_origin_errors.unwrap_or(false);
        ir::OutlierDetection {
            consecutive_5xx: o
                .consecutive_5xx_errors
                .or_else(|| positive(o.consecutive_errors)),
            consecutive_gateway_failure: o.consecutive_gateway_errors,
            consecutive_local_origin_failure: if split {
                o.consecutive_local_origin_failures.filter(|v| *v > 0)
            } else {
                None
            },
            split_external_local_origin_errors: split,
            interval: dur(&o.interval),
            base_ejection_time: dur(&o.base_ejection_time),
            max_ejection_percent: positive(o.max_ejection_percent),
        }
    });

    let tls = eff
        .tls
        .filter(|t| t.mode.as_deref() == Some("SIMPLE"))
        .map(|t| UpstreamTls {
            sni: t.sni.clone().filter(|s| !s.is_empty()),
            subject_alt_names: t.subject_alt_names.clone(),
            ca_certificates: t.ca_certificates.clone().filter(|s| !s.is_empty()),
            client_certificate: None,
            private_key: None,
            insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
        });

    ClusterSettings {
        lb_policy: lb_policy(eff.load_balancer),
        connect_timeout,
        circuit_breakers,
        outlier_detection,
        http_options,
        tls,
        tcp_keepalive,
        healthy_panic_threshold,
    }
}

// ===== validation =====

/// Reports problems of one resource's policies and returns cleaned copies in which every
/// invalid value is unset (or, for a mode Envoy cannot do, replaced by what we do instead).
pub struct Checker<'r, 'd> {
    pub res: &'r Resource,
    pub diags: &'d mut Vec<Diagnostic>,
}

impl Checker<'_, '_> {
    fn push(&mut self, d: Diagnostic, path: &str) {
        let d = self.res.diag(d, path);
        self.diags.push(d);
    }

    fn unsupported(&mut self, field: &Unsupported, path: &str, name: &str, hint: &str) {
        if field.is_some() {
            self.push(
                Diagnostic::warning(
                    Code::UnsupportedField,
                    format!("{name} is not supported and is ignored"),
                )
                .hint(hint.to_string()),
                path,
            );
        }
    }

    fn invalid(&mut self, path: &str, value: impl Into<String>, message: String, hint: &str) {
        self.push(
            Diagnostic::error(Code::InvalidValue, message)
                .value(value)
                .hint(hint.to_string()),
            path,
        );
    }

    /// A duration that must parse and be at least `min`; invalid → reported and unset.
    fn duration(&mut self, value: &Option<String>, path: &str, min: Duration) -> Option<String> {
        let raw = value.as_ref()?;
        match parse_duration(raw) {
            Ok(d) if d >= min => Some(raw.clone()),
            Ok(_) => {
                self.invalid(
                    path,
                    raw.clone(),
                    format!("duration {raw:?} is too short"),
                    &format!("use at least {min:?}; the setting is ignored"),
                );
                None
            }
            Err(e) => {
                self.invalid(
                    path,
                    raw.clone(),
                    e,
                    "write a duration such as 10s, 1.5s, 100ms or 1m; the setting is ignored",
                );
                None
            }
        }
    }

    /// An int32 count that must not be negative; invalid → reported and unset.
    fn count(&mut self, value: Option<i64>, path: &str) -> Option<i64> {
        let v = value?;
        if (0..=i64::from(i32::MAX)).contains(&v) {
            Some(v)
        } else {
            self.invalid(
                path,
                v.to_string(),
                format!("invalid value {v}: must be between 0 and {}", i32::MAX),
                "the setting is ignored (Envoy's default applies)",
            );
            None
        }
    }

    fn percent(&mut self, value: Option<i64>, path: &str) -> Option<i64> {
        let v = value?;
        if (0..=100).contains(&v) {
            Some(v)
        } else {
            self.invalid(
                path,
                v.to_string(),
                format!("invalid percentage {v}: must be between 0 and 100"),
                "the setting is ignored",
            );
            None
        }
    }

    /// Validate a whole traffic policy at `path` (`spec.trafficPolicy`,
    /// `spec.subsets[1].trafficPolicy`).
    pub fn traffic_policy(&mut self, p: &TrafficPolicy, path: &str) -> TrafficPolicy {
        self.unsupported(
            &p.tunnel,
            &format!("{path}.tunnel"),
            "tunnel",
            "shadowplane does not tunnel upstream connections; remove the field",
        );
        self.unsupported(
            &p.proxy_protocol,
            &format!("{path}.proxyProtocol"),
            "proxyProtocol",
            "upstream connections carry no PROXY protocol header; remove the field",
        );
        self.unsupported(
            &p.retry_budget,
            &format!("{path}.retryBudget"),
            "retryBudget",
            "use connectionPool.http.maxRetries to bound parallel retries",
        );
        let mut port_level_settings: Vec<PortTrafficPolicy> = Vec::new();
        let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, pl) in p.port_level_settings.iter().enumerate() {
            let pl_path = format!("{path}.portLevelSettings[{i}]");
            let number = match pl.port {
                None => {
                    self.push(
                        Diagnostic::error(
                            Code::MissingField,
                            "port-level traffic policy has no port",
                        )
                        .hint("set port.number to the service port it applies to; this entry is ignored"),
                        &format!("{pl_path}.port"),
                    );
                    continue;
                }
                Some(sel) if !(1..=65535).contains(&sel.number) => {
                    self.invalid(
                        &format!("{pl_path}.port.number"),
                        sel.number.to_string(),
                        format!("invalid port number {}", sel.number),
                        "a port number must be between 1 and 65535; this entry is ignored",
                    );
                    continue;
                }
                Some(sel) => sel.number,
            };
            if let Some(first) = seen.get(&number) {
                self.push(
                    Diagnostic::warning(
                        Code::DuplicateName,
                        format!("duplicate port-level traffic policy for port {number}"),
                    )
                    .value(number.to_string())
                    .hint(format!(
                        "{path}.portLevelSettings[{first}] already applies to port {number} and wins; merge the two entries"
                    )),
                    &format!("{pl_path}.port.number"),
                );
                continue;
            }
            seen.insert(number, i);
            if pl.load_balancer.is_none()
                && pl.connection_pool.is_none()
                && pl.outlier_detection.is_none()
                && pl.tls.is_none()
            {
                self.push(
                    Diagnostic::warning(
                        Code::MissingField,
                        format!("port-level traffic policy for port {number} sets nothing"),
                    )
                    .hint("it still replaces the rule's loadBalancer, connectionPool, outlierDetection and tls with defaults for this port; add settings or remove the entry"),
                    &pl_path,
                );
            }
            port_level_settings.push(PortTrafficPolicy {
                port: pl.port,
                load_balancer: pl
                    .load_balancer
                    .as_ref()
                    .map(|lb| self.load_balancer(lb, &format!("{pl_path}.loadBalancer"))),
                connection_pool: pl
                    .connection_pool
                    .as_ref()
                    .map(|c| self.connection_pool(c, &format!("{pl_path}.connectionPool"))),
                outlier_detection: pl
                    .outlier_detection
                    .as_ref()
                    .map(|o| self.outlier_detection(o, &format!("{pl_path}.outlierDetection"))),
                tls: pl
                    .tls
                    .as_ref()
                    .map(|t| self.tls(t, &format!("{pl_path}.tls"))),
            });
        }
        TrafficPolicy {
            load_balancer: p
                .load_balancer
                .as_ref()
                .map(|lb| self.load_balancer(lb, &format!("{path}.loadBalancer"))),
            connection_pool: p
                .connection_pool
                .as_ref()
                .map(|c| self.connection_pool(c, &format!("{path}.connectionPool"))),
            outlier_detection: p
                .outlier_detection
                .as_ref()
                .map(|o| self.outlier_detection(o, &format!("{path}.outlierDetection"))),
            tls: p.tls.as_ref().map(|t| self.tls(t, &format!("{path}.tls"))),
            port_level_settings,
            tunnel: None,
            proxy_protocol: None,
            retry_budget: None,
        }
    }

    fn load_balancer(&mut self, lb: &LoadBalancerSettings, path: &str) -> LoadBalancerSettings {
        self.unsupported(
            &lb.locality_lb_setting,
            &format!("{path}.localityLbSetting"),
            "localityLbSetting",
            "locality-aware load balancing is not implemented; endpoints are balanced as one group",
        );
        self.unsupported(
            &lb.warmup_duration_secs,
            &format!("{path}.warmupDurationSecs"),
            "warmupDurationSecs",
            "slow start is not implemented; remove the field",
        );
        self.unsupported(
            &lb.warmup,
            &format!("{path}.warmup"),
            "warmup",
            "slow start is not implemented; remove the field",
        );
        let simple = match lb.simple.as_deref() {
            None => None,
            Some(s @ ("UNSPECIFIED" | "RANDOM" | "ROUND_ROBIN" | "LEAST_REQUEST")) => {
                Some(s.to_string())
            }
            Some("LEAST_CONN") => {
                self.push(
                    Diagnostic::warning(
                        Code::DeprecatedField,
                        "load balancer LEAST_CONN is deprecated: it means LEAST_REQUEST",
                    )
                    .value("LEAST_CONN")
                    .hint("write simple: LEAST_REQUEST"),
                    &format!("{path}.simple"),
                );
                Some("LEAST_REQUEST".to_string())
            }
            Some("PASSTHROUGH") => {
                self.push(
                    Diagnostic::warning(
                        Code::UnsupportedField,
                        "load balancer PASSTHROUGH is not supported: the default (LEAST_REQUEST) is used",
                    )
                    .value("PASSTHROUGH")
                    .hint("PASSTHROUGH needs original-destination clusters behind iptables capture; use LEAST_REQUEST, ROUND_ROBIN or RANDOM"),
                    &format!("{path}.simple"),
                );
                None
            }
            Some(other) => {
                self.invalid(
                    &format!("{path}.simple"),
                    other,
                    format!("unknown load balancer {other:?}"),
                    &format!("use one of {SIMPLE_LBS}; the default (LEAST_REQUEST) is used"),
                );
                None
            }
        };
        let consistent_hash = match &lb.consistent_hash {
            Some(_) if lb.simple.is_some() => {
                self.invalid(
                    path,
                    "simple, consistentHash",
                    "only one of simple or consistentHash may be set".to_string(),
                    "remove one of them; consistentHash is ignored",
                );
                None
            }
            Some(ch) => self.consistent_hash(ch, &format!("{path}.consistentHash")),
            None => None,
        };
        LoadBalancerSettings {
            simple,
            consistent_hash,
            locality_lb_setting: None,
            warmup_duration_secs: None,
            warmup: None,
        }
    }

    /// `None` when no usable hash key is left (the load balancer falls back to the default).
    fn consistent_hash(&mut self, ch: &ConsistentHashLb, path: &str) -> Option<ConsistentHashLb> {
        // Hash keys in the order of the proto's oneof; exactly one must be set.
        let mut keys: Vec<&str> = Vec::new();
        if let Some(h) = &ch.http_header_name {
            keys.push("httpHeaderName");
            if h.is_empty() {
                self.invalid(
                    &format!("{path}.httpHeaderName"),
                    "",
                    "empty header name".to_string(),
                    "name the request header to hash on; consistent hashing is ignored",
                );
                return None;
            }
        }
        let mut cookie = None;
        if let Some(c) = &ch.http_cookie {
            keys.push("httpCookie");
            self.unsupported(
                &c.attributes,
                &format!("{path}.httpCookie.attributes"),
                "httpCookie.attributes",
                "cookie attributes are not set on generated cookies; remove the field",
            );
            if c.name.is_empty() {
                self.push(
                    Diagnostic::error(Code::MissingField, "hash cookie has no name")
                        .hint("set httpCookie.name; consistent hashing is ignored"),
                    &format!("{path}.httpCookie.name"),
                );
                return None;
            }
            let ttl = self.duration(&c.ttl, &format!("{path}.httpCookie.ttl"), Duration::ZERO);
            cookie = Some(crate::istio::HttpCookie {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl,
                attributes: None,
            });
        }
        if ch.use_source_ip == Some(true) {
            keys.push("useSourceIp");
        }
        if let Some(q) = &ch.http_query_parameter_name {
            keys.push("httpQueryParameterName");
            if q.is_empty() {
                self.invalid(
                    &format!("{path}.httpQueryParameterName"),
                    "",
                    "empty query parameter name".to_string(),
                    "name the query parameter to hash on; consistent hashing is ignored",
                );
                return None;
            }
        }
        let mut out = ConsistentHashLb::default();
        match keys.first().copied() {
            None => {
                self.invalid(
                    path,
                    "{}",
                    "consistentHash sets no hash key".to_string(),
                    "set one of httpHeaderName, httpCookie, useSourceIp: true or httpQueryParameterName; consistent hashing is ignored",
                );
                return None;
            }
            Some("httpHeaderName") => out.http_header_name = ch.http_header_name.clone(),
            Some("httpCookie") => out.http_cookie = cookie,
            Some("useSourceIp") => out.use_source_ip = Some(true),
            Some(_) => out.http_query_parameter_name = ch.http_query_parameter_name.clone(),
        }
        if keys.len() > 1 {
            self.invalid(
                path,
                keys.join(", "),
                format!(
                    "consistentHash sets more than one hash key: {}",
                    keys.join(", ")
                ),
                &format!("set only one of them; {} is used", keys[0]),
            );
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            self.invalid(
                path,
                "ringHash, maglev",
                "only one of ringHash or maglev may be set".to_string(),
                "remove one of them; maglev is used",
            );
        }
        if let Some(m) = &ch.maglev {
            let mut table_size = m.table_size;
            if let Some(t) = table_size.filter(|t| *t > 0) {
                if t > 5_000_011 || !is_prime(t) {
                    self.invalid(
                        &format!("{path}.maglev.tableSize"),
                        t.to_string(),
                        format!("maglev table size {t} is not a prime number up to 5000011"),
                        "Envoy needs a prime table size, e.g. 65537 (its default) or 131071; the default is used",
                    );
                    table_size = None;
                }
            }
            out.maglev = Some(crate::istio::Maglev { table_size });
        } else if let Some(r) = &ch.ring_hash {
            out.ring_hash = Some(crate::istio::RingHash {
                minimum_ring_size: self.ring_size(
                    r.minimum_ring_size,
                    &format!("{path}.ringHash.minimumRingSize"),
                ),
            });
        }
        if let Some(size) = ch.minimum_ring_size {
            self.push(
                Diagnostic::warning(
                    Code::DeprecatedField,
                    "minimumRingSize is deprecated: use ringHash.minimumRingSize",
                )
                .value(size.to_string())
                .hint("move the value to consistentHash.ringHash.minimumRingSize"),
                &format!("{path}.minimumRingSize"),
            );
            if out.maglev.is_none() && out.ring_hash.is_none() {
                out.minimum_ring_size =
                    self.ring_size(Some(size), &format!("{path}.minimumRingSize"));
            }
        }
        Some(out)
    }

    fn ring_size(&mut self, size: Option<u64>, path: &str) -> Option<u64> {
        let s = size?;
        if s > 8_388_608 {
            self.invalid(
                path,
                s.to_string(),
                format!("minimum ring size {s} is larger than Envoy's limit 8388608"),
                "use a smaller ring (the default is 1024); the default is used",
            );
            return None;
        }
        Some(s)
    }

    fn connection_pool(
        &mut self,
        c: &ConnectionPoolSettings,
        path: &str,
    ) -> ConnectionPoolSettings {
        let tcp = c.tcp.as_ref().map(|t| {
            let p = format!("{path}.tcp");
            crate::istio::TcpSettings {
                max_connections: self.count(t.max_connections, &format!("{p}.maxConnections")),
                connect_timeout: self.duration(
                    &t.connect_timeout,
                    &format!("{p}.connectTimeout"),
                    Duration::from_millis(1),
                ),
                tcp_keepalive: t
                    .tcp_keepalive
                    .as_ref()
                    .map(|k| crate::istio::TcpKeepalive {
                        probes: k.probes,
                        time: self.duration(
                            &k.time,
                            &format!("{p}.tcpKeepalive.time"),
                            Duration::from_secs(1),
                        ),
                        interval: self.duration(
                            &k.interval,
                            &format!("{p}.tcpKeepalive.interval"),
                            Duration::from_secs(1),
                        ),
                    }),
                max_connection_duration: self.duration(
                    &t.max_connection_duration,
                    &format!("{p}.maxConnectionDuration"),
                    Duration::from_millis(1),
                ),
                idle_timeout: self.duration(
                    &t.idle_timeout,
                    &format!("{p}.idleTimeout"),
                    Duration::ZERO,
                ),
            }
        });
        let http = c.http.as_ref().map(|h| {
            let p = format!("{path}.http");
            self.unsupported(
                &h.http2_keep_alive,
                &format!("{p}.http2KeepAlive"),
                "http2KeepAlive",
                "HTTP/2 keepalive pings are not configured; remove the field",
            );
            let h2_upgrade_policy = match h.h2_upgrade_policy.as_deref() {
                None => None,
                Some(v @ ("DEFAULT" | "DO_NOT_UPGRADE" | "UPGRADE")) => Some(v.to_string()),
                Some(other) => {
                    self.invalid(
                        &format!("{p}.h2UpgradePolicy"),
                        other,
                        format!("unknown h2UpgradePolicy {other:?}"),
                        &format!("use one of {H2_POLICIES}; DEFAULT is used"),
                    );
                    None
                }
            };
            crate::istio::HttpSettings {
                http1_max_pending_requests: self.count(
                    h.http1_max_pending_requests,
                    &format!("{p}.http1MaxPendingRequests"),
                ),
                http2_max_requests: self
                    .count(h.http2_max_requests, &format!("{p}.http2MaxRequests")),
                max_requests_per_connection: self.count(
                    h.max_requests_per_connection,
                    &format!("{p}.maxRequestsPerConnection"),
                ),
                max_retries: self.count(h.max_retries, &format!("{p}.maxRetries")),
                idle_timeout: self.duration(
                    &h.idle_timeout,
                    &format!("{p}.idleTimeout"),
                    Duration::ZERO,
                ),
                h2_upgrade_policy,
                use_client_protocol: h.use_client_protocol,
                max_concurrent_streams: self.count(
                    h.max_concurrent_streams,
                    &format!("{p}.maxConcurrentStreams"),
                ),
                http2_keep_alive: None,
            }
        });
        ConnectionPoolSettings { tcp, http }
    }

    fn outlier_detection(&mut self, o: &OutlierDetection, path: &str) -> OutlierDetection {
        let consecutive_errors = o.consecutive_errors.and_then(|v| {
            self.push(
                Diagnostic::warning(
                    Code::DeprecatedField,
                    "consecutiveErrors is deprecated: it is treated as consecutive5xxErrors",
                )
                .value(v.to_string())
                .hint("write consecutive5xxErrors instead"),
                &format!("{path}.consecutiveErrors"),
            );
            self.count(Some(v), &format!("{path}.consecutiveErrors"))
        });
        let min = Duration::from_millis(1);
        OutlierDetection {
            consecutive_errors,
            split_external_local_origin_errors: o.split_external_local_origin_errors,
            consecutive_local_origin_failures: o.consecutive_local_origin_failures,
            consecutive_gateway_errors: o.consecutive_gateway_errors,
            consecutive_5xx_errors: o.consecutive_5xx_errors,
            interval: self.duration(&o.interval, &format!("{path}.interval"), min),
            base_ejection_time: self.duration(
                &o.base_ejection_time,
                &format!("{path}.baseEjectionTime"),
                min,
            ),
            max_ejection_percent: self.percent(
                o.max_ejection_percent,
                &format!("{path}.maxEjectionPercent"),
            ),
            min_health_percent: self
                .percent(o.min_health_percent, &format!("{path}.minHealthPercent")),
        }
    }

    fn tls(&mut self, t: &ClientTlsSettings, path: &str) -> ClientTlsSettings {
        let mode = t.mode.as_deref().unwrap_or("DISABLE");
        let mode = match mode {
            "DISABLE" | "SIMPLE" => mode,
            "MUTUAL" | "ISTIO_MUTUAL" => {
                let hint = if mode == "MUTUAL" {
                    "client certificates are not supported yet; use SIMPLE for server-verified TLS, or DISABLE"
                } else {
                    "ISTIO_MUTUAL needs Istio's certificate authority; use SIMPLE with caCertificates, or DISABLE"
                };
                self.push(
                    Diagnostic::warning(
                        Code::UnsupportedField,
                        format!(
                            "tls mode {mode} is not supported: treated as DISABLE (plain text)"
                        ),
                    )
                    .value(mode)
                    .hint(hint),
                    &format!("{path}.mode"),
                );
                "DISABLE"
            }
            other => {
                self.invalid(
                    &format!("{path}.mode"),
                    other,
                    format!("unknown tls mode {other:?}"),
                    &format!("use one of {TLS_MODES}; treated as DISABLE (plain text)"),
                );
                "DISABLE"
            }
        };
        if t.credential_name.is_some() {
            self.push(
                Diagnostic::warning(
                    Code::UnsupportedField,
                    "credentialName is not supported and is ignored",
                )
                .hint("reference files instead: caCertificates for SIMPLE"),
                &format!("{path}.credentialName"),
            );
        }
        if t.ca_crl.is_some() {
            self.push(
                Diagnostic::warning(
                    Code::UnsupportedField,
                    "caCrl is not supported and is ignored",
                )
                .hint("certificate revocation lists are not checked; remove the field"),
                &format!("{path}.caCrl"),
            );
        }
        ClientTlsSettings {
            mode: Some(mode.to_string()),
            credential_name: None,
            ca_crl: None,
            ..t.clone()
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d.saturating_mul(d) <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}
