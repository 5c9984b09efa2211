//! `HTTPMatchRequest` → Envoy `RouteMatch` (istiod's `TranslateRouteMatch`).

use crate::diag::{Code, Diagnostic};
use crate::ir::{
    HeaderMatch, HeaderMatcher, PathMatch, QueryParameterMatcher, RouteMatch, StringMatcher,
};
use crate::istio::{HttpMatchRequest, StringMatch};
use crate::lower::route::util::{Cx, Reported};

/// The match of a rule without `match`: prefix `/`, no `case_sensitive` field.
pub(crate) fn match_all() -> RouteMatch {
    RouteMatch {
        path: PathMatch::Prefix("/".to_string()),
        case_sensitive: None,
        headers: Vec::new(),
        query_parameters: Vec::new(),
    }
}

/// istiod's `IsCatchAllRoute`: prefix `/` or regex `.*`, and no header or query matchers.
pub(crate) fn is_catch_all(m: &RouteMatch) -> bool {
    let path = match &m.path {
        PathMatch::Prefix(p) => p == "/",
        PathMatch::Regex(r) => r == ".*",
        PathMatch::Exact(_) => false,
    };
    path && m.headers.is_empty() && m.query_parameters.is_empty()
}

/// The path part of istiod's decorator operation: `prefix*`, the exact path, or the regex.
pub(crate) fn decorator_path(p: &PathMatch) -> String {
    match p {
        PathMatch::Prefix(p) => format!("{p}*"),
        PathMatch::Exact(p) => p.clone(),
        PathMatch::Regex(r) => r.clone(),
    }
}

/// Check a regex, reporting `InvalidRegex` at `field`.
pub(crate) fn check_regex(cx: &mut Cx<'_, '_>, re: &str, field: &str) -> Result<(), Reported> {
    cx.validate_regex(re).map_err(|why| {
        cx.emit(
            Diagnostic::error(
                Code::InvalidRegex,
                format!("invalid regular expression {re:?}: {why}"),
            )
            .value(re)
            .hint("Envoy uses RE2: no backreferences or lookaround; fix the expression (the rule is dropped until then)"),
            field,
        );
        Reported
    })
}

/// A `StringMatch` with exactly one of exact/prefix/regex (regex validated). `Ok(None)` when
/// none is set; the caller decides whether that is allowed.
fn string_match(
    cx: &mut Cx<'_, '_>,
    sm: &StringMatch,
    field: &str,
) -> Result<Option<StringMatcher>, Reported> {
    let set: Vec<&str> = [
        ("exact", sm.exact.is_some()),
        ("prefix", sm.prefix.is_some()),
        ("regex", sm.regex.is_some()),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| *n)
    .collect();
    if set.len() > 1 {
        cx.emit(
            Diagnostic::error(
                Code::InvalidValue,
                format!(
                    "string match sets {} at once; only one of exact, prefix and regex is allowed",
                    set.join(" and ")
                ),
            )
            .value(set.join(","))
            .hint("keep exactly one of exact, prefix or regex (the rule is dropped until then)"),
            field,
        );
        return Err(Reported);
    }
    if let Some(x) = &sm.exact {
        return Ok(Some(StringMatcher::Exact(x.clone())));
    }
    if let Some(x) = &sm.prefix {
        return Ok(Some(StringMatcher::Prefix(x.clone())));
    }
    if let Some(re) = &sm.regex {
        check_regex(cx, re, &format!("{field}.regex"))?;
        return Ok(Some(StringMatcher::Regex(re.clone())));
    }
    Ok(None)
}

/// A required `StringMatch` (`uri`, `method`, `authority`, `scheme`).
fn required_match(
    cx: &mut Cx<'_, '_>,
    sm: &StringMatch,
    field: &str,
    what: &str,
) -> Result<StringMatcher, Reported> {
    match string_match(cx, sm, field)? {
        Some(m) => Ok(m),
        None => {
            cx.emit(
                Diagnostic::error(
                    Code::InvalidValue,
                    format!("{what} match is empty; it needs one of exact, prefix or regex"),
                )
                .hint(format!("set {what}.exact, {what}.prefix or {what}.regex, or remove {what} (the rule is dropped until then)")),
                field,
            );
            Err(Reported)
        }
    }
}

/// istiod's `canBeConvertedToPresentMatch`: `{}` or `regex: "*"`.
fn is_present_match(sm: &StringMatch) -> bool {
    let none = sm.exact.is_none() && sm.prefix.is_none() && sm.regex.is_none();
    let star = sm.exact.is_none() && sm.prefix.is_none() && sm.regex.as_deref() == Some("*");
    none || star
}

/// A header or query-parameter `StringMatch`: present match for `{}`/`regex: "*"`.
fn header_match(
    cx: &mut Cx<'_, '_>,
    sm: &StringMatch,
    field: &str,
) -> Result<HeaderMatch, Reported> {
    if is_present_match(sm) {
        return Ok(HeaderMatch::Present);
    }
    match string_match(cx, sm, field)? {
        Some(m) => Ok(HeaderMatch::String(m)),
        // Unreachable: the empty case is a present match; keep a total function anyway.
        None => Ok(HeaderMatch::Present),
    }
}

fn header_matcher(
    cx: &mut Cx<'_, '_>,
    name: &str,
    sm: &StringMatch,
    field: &str,
    invert: bool,
) -> Result<HeaderMatcher, Reported> {
    let matcher = header_match(cx, sm, field)?;
    let treat_missing = invert && matches!(matcher, HeaderMatch::String(_));
    Ok(HeaderMatcher {
        name: name.to_string(),
        matcher,
        invert,
        treat_missing_header_as_empty: treat_missing,
    })
}

/// Translate one match block at `field` (`spec.http[i].match[j]`). Every problem is reported
/// before returning `Err`.
pub(crate) fn translate(
    cx: &mut Cx<'_, '_>,
    m: &HttpMatchRequest,
    field: &str,
) -> Result<RouteMatch, Reported> {
    let mut failed = false;
    let path = match &m.uri {
        None => Some(PathMatch::Prefix("/".to_string())),
        Some(sm) => match required_match(cx, sm, &format!("{field}.uri"), "uri") {
            Ok(StringMatcher::Exact(p)) => Some(PathMatch::Exact(p)),
            Ok(StringMatcher::Prefix(p)) => Some(PathMatch::Prefix(p)),
            Ok(StringMatcher::Regex(r)) => Some(PathMatch::Regex(r)),
            Err(Reported) => None,
        },
    };

    let mut headers = Vec::new();
    for (name, sm) in &m.headers {
        match header_matcher(cx, name, sm, &format!("{field}.headers.{name}"), false) {
            Ok(h) => headers.push(h),
            Err(Reported) => failed = true,
        }
    }
    for (name, sm) in &m.without_headers {
        match header_matcher(
            cx,
            name,
            sm,
            &format!("{field}.withoutHeaders.{name}"),
            true,
        ) {
            Ok(h) => headers.push(h),
            Err(Reported) => failed = true,
        }
    }
    // Stable: for one name, the `headers` entry comes before the `withoutHeaders` one.
    headers.sort_by(|a, b| a.name.cmp(&b.name));

    for (pseudo, sm, what) in [
        (":method", &m.method, "method"),
        (":authority", &m.authority, "authority"),
        (":scheme", &m.scheme, "scheme"),
    ] {
        let Some(sm) = sm else { continue };
        let f = format!("{field}.{what}");
        // istiod turns `regex: "*"` into a present match for these too.
        let matcher = if is_present_match(sm) && sm.regex.is_some() {
            Ok(HeaderMatch::Present)
        } else {
            required_match(cx, sm, &f, what).map(HeaderMatch::String)
        };
        match matcher {
            Ok(matcher) => headers.push(HeaderMatcher {
                name: pseudo.to_string(),
                matcher,
                invert: false,
                treat_missing_header_as_empty: false,
            }),
            Err(Reported) => failed = true,
        }
    }

    let mut query_parameters = Vec::new();
    for (name, sm) in &m.query_params {
        match header_match(cx, sm, &format!("{field}.queryParams.{name}")) {
            Ok(matcher) => query_parameters.push(QueryParameterMatcher {
                name: name.clone(),
                matcher,
            }),
            Err(Reported) => failed = true,
        }
    }

    match path {
        Some(path) if !failed => Ok(RouteMatch {
            path,
            case_sensitive: Some(!m.ignore_uri_case.unwrap_or(false)),
            headers,
            query_parameters,
        }),
        _ => Err(Reported),
    }
}
