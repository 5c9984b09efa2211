//! Header operations (`headers.request/response.{set,add,remove}`) and the authority that
//! `:authority`/`host` header writes turn into (istiod's `TranslateHeadersOperations`).

use crate::diag::{Code, Diagnostic};
use crate::ir::{AppendAction, HeaderValueOption};
use crate::istio::{HeaderOperations, Headers};
use crate::lower::route::util::Cx;

/// Pseudo-headers and `host` cannot be written through header operations; istiod drops them.
pub(crate) fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

/// `:authority` or `host`: writing one of these rewrites the authority instead.
pub(crate) fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// Translated header operations of one `Headers` block.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HeaderOps {
    /// The `set` list (sorted by key), then the `add` list (sorted by key).
    pub request_add: Vec<HeaderValueOption>,
    pub request_remove: Vec<String>,
    pub response_add: Vec<HeaderValueOption>,
    pub response_remove: Vec<String>,
    /// From `request.set` (wins) or `request.add` on `:authority`/`host`.
    pub authority: Option<String>,
}

/// Translate a `Headers` block at `field` (e.g. `spec.http[0].headers`). Writes to internal
/// headers other than the authority get a warning, since Envoy cannot express them.
pub(crate) fn translate(cx: &mut Cx<'_, '_>, headers: Option<&Headers>, field: &str) -> HeaderOps {
    let mut out = HeaderOps::default();
    let Some(h) = headers else {
        return out;
    };
    if let Some(req) = &h.request {
        let (add, remove) = ops(cx, req, &format!("{field}.request"), true);
        out.request_add = add;
        out.request_remove = remove;
        out.authority = req
            .set
            .iter()
            .find(|(k, _)| is_authority_header(k))
            .or_else(|| req.add.iter().find(|(k, _)| is_authority_header(k)))
            .map(|(_, v)| v.clone());
    }
    if let Some(resp) = &h.response {
        let (add, remove) = ops(cx, resp, &format!("{field}.response"), false);
        out.response_add = add;
        out.response_remove = remove;
    }
    out
}

fn ops(
    cx: &mut Cx<'_, '_>,
    o: &HeaderOperations,
    field: &str,
    request: bool,
) -> (Vec<HeaderValueOption>, Vec<String>) {
    let mut add = Vec::new();
    for (list, action, name) in [
        (&o.set, AppendAction::OverwriteIfExistsOrAdd, "set"),
        (&o.add, AppendAction::AppendIfExistsOrAdd, "add"),
    ] {
        for (key, value) in list {
            if is_internal_header(key) {
                if !(request && is_authority_header(key)) {
                    cx.emit(
                        Diagnostic::warning(
                            Code::InvalidValue,
                            format!("header {key:?} cannot be written by a header operation and is ignored"),
                        )
                        .value(key.clone())
                        .hint("pseudo-headers and host cannot be changed this way; use rewrite.uri or rewrite.authority on the request"),
                        &format!("{field}.{name}.{key}"),
                    );
                }
                continue;
            }
            add.push(HeaderValueOption {
                key: key.clone(),
                value: value.clone(),
                append_action: action.clone(),
            });
        }
    }
    let mut remove = Vec::new();
    for (i, key) in o.remove.iter().enumerate() {
        if is_internal_header(key) {
            cx.emit(
                Diagnostic::warning(
                    Code::InvalidValue,
                    format!("header {key:?} cannot be removed and is ignored"),
                )
                .value(key.clone())
                .hint("pseudo-headers and host cannot be removed; drop the entry"),
                &format!("{field}.remove[{i}]"),
            );
            continue;
        }
        remove.push(key.clone());
    }
    (add, remove)
}

/// Every place a `Headers` block writes the authority, as (field, value), set before add.
pub(crate) fn authority_writes(headers: Option<&Headers>, field: &str) -> Vec<(String, String)> {
    let Some(req) = headers.and_then(|h| h.request.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (list, name) in [(&req.set, "set"), (&req.add, "add")] {
        for (k, v) in list {
            if is_authority_header(k) {
                out.push((format!("{field}.request.{name}.{k}"), v.clone()));
            }
        }
    }
    out
}
