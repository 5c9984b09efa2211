//! Route actions: destinations (with reference checks), redirects, direct responses and
//! consistent-hash policies (istiod's `TranslateRoute`, `applyHTTPRouteDestination`,
//! `GetDestinationCluster`, `ApplyRedirect`, `ApplyDirectResponse`).

use crate::diag::{Code, Diagnostic};
use crate::ir::{Body, DirectResponse, HashPolicy, Redirect};
use crate::istio::{ConsistentHashLb, Destination, HttpDirectResponse, HttpRedirect};
use crate::lower::route::util::{decode_base64, Cx, Reported};
use crate::lower::{cluster_name, resolve_short_name};

/// A resolved route or mirror destination. The port may depend on the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Fully qualified host.
    pub host: String,
    pub subset: Option<String>,
    /// `port.number`, else the service's only port; `None` → the listener port.
    pub port: Option<u32>,
}

impl Target {
    pub fn port(&self, listener_port: u32) -> u32 {
        self.port.unwrap_or(listener_port)
    }

    /// `outbound|<port>|<subset>|<fqdn>`.
    pub fn cluster(&self, listener_port: u32) -> String {
        cluster_name(self.port(listener_port), self.subset.as_deref(), &self.host)
    }
}

/// Whether a destination is a route destination or a mirror (changes the IST0101 wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefKind {
    Route,
    Mirror,
}

impl RefKind {
    fn consequence(self) -> &'static str {
        match self {
            RefKind::Route => "until then Envoy answers 503 NC for this route",
            RefKind::Mirror => "until then the mirror is silently dropped by Envoy",
        }
    }
}

/// Resolve a `Destination` at `field` (`spec.http[0].route[1].destination`,
/// `spec.http[0].mirror`, `spec.http[0].mirrors[2].destination`). Unknown hosts, ports and
/// subsets are reported but the destination is still returned (istiod emits the cluster
/// name anyway); only a missing host is fatal.
pub(crate) fn target(
    cx: &mut Cx<'_, '_>,
    dest: &Destination,
    field: &str,
    kind: RefKind,
) -> Result<Target, Reported> {
    if dest.host.is_empty() {
        cx.emit(
            Diagnostic::error(Code::MissingField, "destination host is required")
                .hint("set host to the service's name (the rule is dropped until then)"),
            &format!("{field}.host"),
        );
        return Err(Reported);
    }
    let host = resolve_short_name(&dest.host, cx.namespace(), &cx.options.domain_suffix);
    let subset = dest.subset.clone().filter(|s| !s.is_empty());
    let explicit_port = dest.port.map(|p| p.number);
    let registry = cx.registry;
    let Some(service) = registry.get(&host) else {
        let reftype = match kind {
            RefKind::Route => "host",
            RefKind::Mirror => "mirror host",
        };
        cx.emit(
            Diagnostic::error(
                Code::ReferencedResourceNotFound,
                format!("referenced {reftype} not found: {:?}", dest.host),
            )
            .value(dest.host.clone())
            .hint(format!(
                "no ServiceEntry defines {host}; add a ServiceEntry for it or fix the name; {}",
                kind.consequence()
            )),
            &format!("{field}.host"),
        );
        return Ok(Target {
            host,
            subset,
            port: explicit_port,
        });
    };
    // For the hints only: built when one is written.
    let ports = || -> Vec<String> { service.ports.iter().map(|p| p.number.to_string()).collect() };
    let port = match explicit_port {
        Some(n) => {
            if !service.ports.iter().any(|p| p.number == n) {
                cx.emit(
                    Diagnostic::error(
                        Code::ReferencedResourceNotFound,
                        format!("referenced host:port not found: \"{host}:{n}\""),
                    )
                    .value(n.to_string())
                    .hint(format!(
                        "{host} exposes port(s) {}; use one of them or add the port to the ServiceEntry; {}",
                        ports().join(", "),
                        kind.consequence()
                    )),
                    &format!("{field}.port.number"),
                );
            }
            Some(n)
        }
        None if service.ports.len() == 1 => Some(service.ports[0].number),
        None => {
            if service.ports.len() > 1 {
                cx.emit(
                    Diagnostic::error(
                        Code::DestinationPortSelectorRequired,
                        format!(
                            "this virtual service routes to a service {host:?} that exposes multiple ports [{}]; specifying a port in the destination is required to disambiguate",
                            ports().join(" ")
                        ),
                    )
                    .value(dest.host.clone())
                    .hint("set port.number on the destination; until then the listener's port is used"),
                    field,
                );
            }
            None
        }
    };
    if let Some(s) = &subset {
        if !cx.rules.has_subset(&host, s) {
            let reftype = match kind {
                RefKind::Route => "host+subset in destinationrule",
                RefKind::Mirror => "mirror+subset in destinationrule",
            };
            let defined = cx.rules.subset_names(&host);
            let known = if defined.is_empty() {
                format!("no DestinationRule defines subsets for {host}")
            } else {
                format!("subsets defined for {host}: {}", defined.join(", "))
            };
            cx.emit(
                Diagnostic::error(
                    Code::ReferencedResourceNotFound,
                    format!("referenced {reftype} not found: \"{}+{s}\"", dest.host),
                )
                .value(s.clone())
                .hint(format!(
                    "{known}; add the subset to the DestinationRule or fix the name; {}",
                    kind.consequence()
                )),
                &format!("{field}.subset"),
            );
        }
    }
    Ok(Target { host, subset, port })
}

/// A redirect whose port may come from the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedirectSpec {
    pub redirect: Redirect,
    /// `derivePort: FROM_REQUEST_PORT`: use the listener port.
    pub from_request_port: bool,
}

impl RedirectSpec {
    pub fn at_port(&self, listener_port: u32) -> Redirect {
        let mut r = self.redirect.clone();
        if self.from_request_port {
            r.port_redirect = Some(listener_port);
        }
        // Do not name the scheme's default port.
        let default = match r.scheme_redirect.as_deref() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        };
        if r.port_redirect.is_some() && r.port_redirect == default {
            r.port_redirect = None;
        }
        r
    }
}

/// istiod's `ApplyRedirect`. A redirect code Envoy cannot express is an error and drops the
/// rule: istiod emits the route without an action, which makes Envoy reject the whole route
/// configuration ("action: is required"), taking every other route down with it.
pub(crate) fn redirect(
    cx: &mut Cx<'_, '_>,
    r: &HttpRedirect,
    field: &str,
) -> Result<RedirectSpec, Reported> {
    let mut failed = false;
    if r.uri.is_some() && r.prefix_rewrite.is_some() {
        cx.emit(
            Diagnostic::error(
                Code::InvalidValue,
                "redirect sets both uri and prefixRewrite; only one is allowed",
            )
            .hint("keep uri (replace the whole path) or prefixRewrite (replace the matched prefix); the rule is dropped until then"),
            &format!("{field}.prefixRewrite"),
        );
        failed = true;
    }
    let mut from_request_port = false;
    match r.derive_port.as_deref() {
        None | Some("FROM_PROTOCOL_DEFAULT") => {}
        Some("FROM_REQUEST_PORT") => from_request_port = true,
        Some(other) => {
            cx.emit(
                Diagnostic::error(
                    Code::InvalidValue,
                    format!("unknown derivePort {other:?}"),
                )
                .value(other)
                .hint("use FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT (the rule is dropped until then)"),
                &format!("{field}.derivePort"),
            );
            failed = true;
        }
    }
    if r.port.is_some() && r.derive_port.is_some() {
        cx.emit(
            Diagnostic::error(
                Code::InvalidValue,
                "redirect sets both port and derivePort; only one is allowed",
            )
            .hint("keep port or derivePort (the rule is dropped until then)"),
            &format!("{field}.derivePort"),
        );
        failed = true;
    }
    if failed {
        return Err(Reported);
    }
    let code = match r.redirect_code.unwrap_or(0) {
        0 | 301 => 301,
        c @ (302 | 303 | 307 | 308) => c,
        other => {
            cx.emit(
                Diagnostic::error(
                    Code::InvalidRedirectCode,
                    format!("redirect code {other} is not supported; envoy redirects only with 301, 302, 303, 307 or 308"),
                )
                .value(other.to_string())
                .hint("use 301, 302, 303, 307 or 308 (the rule is dropped until then: istiod would emit a route without an action, which makes Envoy reject the whole route configuration)"),
                &format!("{field}.redirectCode"),
            );
            return Err(Reported);
        }
    };
    Ok(RedirectSpec {
        redirect: Redirect {
            host_redirect: r.authority.clone().filter(|s| !s.is_empty()),
            path_redirect: r.uri.clone().filter(|s| !s.is_empty()),
            prefix_rewrite: r.prefix_rewrite.clone().filter(|s| !s.is_empty()),
            scheme_redirect: r.scheme.clone().filter(|s| !s.is_empty()),
            port_redirect: r.port.filter(|p| *p != 0),
            response_code: code,
        },
        from_request_port,
    })
}

/// istiod's `ApplyDirectResponse`.
pub(crate) fn direct_response(
    cx: &mut Cx<'_, '_>,
    d: &HttpDirectResponse,
    field: &str,
) -> Result<DirectResponse, Reported> {
    let mut failed = false;
    if !(200..=599).contains(&d.status) {
        cx.emit(
            Diagnostic::error(
                Code::InvalidValue,
                format!(
                    "direct response status {} is not a valid HTTP status",
                    d.status
                ),
            )
            .value(d.status.to_string())
            .hint("use a status between 200 and 599 (the rule is dropped until then)"),
            &format!("{field}.status"),
        );
        failed = true;
    }
    let body = match &d.body {
        None => None,
        Some(b) => match (&b.string, &b.bytes) {
            (Some(_), Some(_)) => {
                cx.emit(
                    Diagnostic::error(
                        Code::InvalidValue,
                        "direct response body sets both string and bytes; only one is allowed",
                    )
                    .hint("keep body.string or body.bytes (the rule is dropped until then)"),
                    &format!("{field}.body"),
                );
                failed = true;
                None
            }
            (Some(s), None) => Some(Body::String(s.clone())),
            (None, Some(b64)) => match decode_base64(b64) {
                Ok(bytes) => Some(Body::Bytes(bytes)),
                Err(why) => {
                    cx.emit(
                        Diagnostic::error(
                            Code::InvalidValue,
                            format!("direct response body.bytes is not valid base64: {why}"),
                        )
                        .value(b64.clone())
                        .hint("encode the body with base64, or use body.string for text (the rule is dropped until then)"),
                        &format!("{field}.body.bytes"),
                    );
                    failed = true;
                    None
                }
            },
            (None, None) => None,
        },
    };
    if failed {
        return Err(Reported);
    }
    Ok(DirectResponse {
        status: d.status,
        body,
    })
}

/// istiod's `ConsistentHashToHashPolicy`.
pub(crate) fn hash_policy(ch: &ConsistentHashLb) -> Vec<HashPolicy> {
    if let Some(h) = ch.http_header_name.as_ref().filter(|h| !h.is_empty()) {
        return vec![HashPolicy::Header(h.clone())];
    }
    if let Some(c) = &ch.http_cookie {
        return vec![HashPolicy::Cookie {
            name: c.name.clone(),
            path: c.path.clone().filter(|p| !p.is_empty()),
            ttl: c
                .ttl
                .as_deref()
                .and_then(|t| crate::lower::duration::parse_duration(t).ok()),
        }];
    }
    if ch.use_source_ip == Some(true) {
        return vec![HashPolicy::SourceIp];
    }
    if let Some(q) = ch
        .http_query_parameter_name
        .as_ref()
        .filter(|q| !q.is_empty())
    {
        return vec![HashPolicy::QueryParameter(q.clone())];
    }
    Vec::new()
}
