//! `CorsPolicy` → the route's `envoy.filters.http.cors` config (istiod's
//! `TranslateCORSPolicy`).

use crate::diag::{Code, Diagnostic};
use crate::ir::{Cors, StringMatcher};
use crate::istio::CorsPolicy;
use crate::lower::route::matcher::check_regex;
use crate::lower::route::util::{Cx, Reported};

/// Translate `corsPolicy` at `field`. Origins come from `allowOrigins`, or, only when that is
/// empty, from the deprecated exact `allowOrigin` list (istiod uses one or the other).
/// `Err` drops the rule (a bad origin match).
pub(crate) fn translate(
    cx: &mut Cx<'_, '_>,
    cors: Option<&CorsPolicy>,
    field: &str,
) -> Result<Option<Cors>, Reported> {
    let Some(c) = cors else { return Ok(None) };
    let mut failed = false;
    let mut origins = Vec::new();
    for (i, o) in c.allow_origins.iter().enumerate() {
        let f = format!("{field}.allowOrigins[{i}]");
        let set = [o.exact.is_some(), o.prefix.is_some(), o.regex.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if set != 1 {
            cx.emit(
                Diagnostic::error(
                    Code::InvalidValue,
                    "allowOrigins entry needs exactly one of exact, prefix or regex",
                )
                .hint(
                    "write e.g. {exact: \"https://example.com\"} (the rule is dropped until then)",
                ),
                &f,
            );
            failed = true;
            continue;
        }
        if let Some(x) = &o.exact {
            origins.push(StringMatcher::Exact(x.clone()));
        } else if let Some(x) = &o.prefix {
            origins.push(StringMatcher::Prefix(x.clone()));
        } else if let Some(re) = &o.regex {
            if check_regex(cx, re, &format!("{f}.regex")).is_err() {
                failed = true;
                continue;
            }
            origins.push(StringMatcher::Regex(re.clone()));
        }
    }
    if !c.allow_origin.is_empty() {
        cx.emit(
            Diagnostic::warning(
                Code::DeprecatedField,
                "using deprecated setting \"allowOrigin\", use \"allowOrigins\" instead",
            )
            .hint("write allowOrigins: [{exact: \"https://example.com\"}]"),
            &format!("{field}.allowOrigin"),
        );
        if c.allow_origins.is_empty() {
            origins.extend(c.allow_origin.iter().cloned().map(StringMatcher::Exact));
        }
    }
    let max_age = match &c.max_age {
        None => None,
        Some(s) => cx
            .duration(s, &format!("{field}.maxAge"))
            .map(|d| d.as_secs().to_string()),
    };
    let forward_not_matching_preflights = match c.unmatched_preflights.as_deref() {
        // istiod always sets the field: true unless the user asked to ignore them.
        None | Some("UNSPECIFIED") | Some("FORWARD") => Some(true),
        Some("IGNORE") => Some(false),
        Some(other) => {
            cx.emit(
                Diagnostic::error(
                    Code::InvalidValue,
                    format!("unknown unmatchedPreflights {other:?}"),
                )
                .value(other)
                .hint("use FORWARD or IGNORE; the field is ignored until then"),
                &format!("{field}.unmatchedPreflights"),
            );
            None
        }
    };
    if failed {
        return Err(Reported);
    }
    Ok(Some(Cors {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age,
        allow_credentials: c.allow_credentials,
        forward_not_matching_preflights,
    }))
}
