//! `HTTPRetry` → Envoy `RetryPolicy` (istiod's `retry.ConvertPolicy`).

use crate::ir::RetryPolicy;
use crate::istio::HttpRetry;
use crate::lower::route::util::Cx;

/// The retry_on string of istiod's default policy.
pub(crate) const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// istiod's default policy (a VirtualService without `retries`, and every default route).
/// Under consistent hashing the caller clears `previous_hosts_predicate`.
pub(crate) fn default_policy() -> RetryPolicy {
    RetryPolicy {
        num_retries: 2,
        retry_on: DEFAULT_RETRY_ON.to_string(),
        retriable_status_codes: Vec::new(),
        per_try_timeout: None,
        host_selection_retry_max_attempts: 5,
        previous_hosts_predicate: true,
        previous_priorities: false,
        backoff_base_interval: None,
    }
}

/// Translate `retries` at `field`. `None` = no retry policy (`attempts <= 0`).
pub(crate) fn translate(
    cx: &mut Cx<'_, '_>,
    r: Option<&HttpRetry>,
    field: &str,
) -> Option<RetryPolicy> {
    let Some(r) = r else {
        return Some(default_policy());
    };
    let attempts = r.attempts.unwrap_or(0);
    if attempts <= 0 {
        return None;
    }
    let mut out = default_policy();
    out.num_retries = u32::try_from(attempts).unwrap_or(u32::MAX);
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.is_empty()) {
        let (tokens, codes) = parse_retry_on(on);
        out.retry_on = tokens;
        if !codes.is_empty() && !out.retry_on.contains("retriable-status-codes") {
            if out.retry_on.is_empty() {
                out.retry_on = "retriable-status-codes".to_string();
            } else {
                out.retry_on.push_str(",retriable-status-codes");
            }
        }
        out.retriable_status_codes = codes;
    }
    if let Some(t) = &r.per_try_timeout {
        out.per_try_timeout = cx.duration(t, &format!("{field}.perTryTimeout"));
    }
    if r.retry_remote_localities == Some(true) {
        out.previous_priorities = true;
    }
    if r.retry_ignore_previous_hosts == Some(false) {
        out.previous_hosts_predicate = false;
    }
    if let Some(b) = &r.backoff {
        out.backoff_base_interval = cx.duration(b, &format!("{field}.backoff"));
    }
    Some(out)
}

/// Split `retryOn`: integer tokens that are known HTTP status codes become retriable status
/// codes, the rest stay Envoy retry-on tokens (istiod's `parseRetryOn`).
fn parse_retry_on(on: &str) -> (String, Vec<u32>) {
    let mut tokens = Vec::new();
    let mut codes = Vec::new();
    for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(code) if is_known_status(code) => codes.push(code),
            _ => tokens.push(part),
        }
    }
    (tokens.join(","), codes)
}

/// The status codes Go's `http.StatusText` knows (istiod accepts exactly these).
fn is_known_status(code: u32) -> bool {
    matches!(
        code,
        100..=103
            | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=426
            | 428
            | 429
            | 431
            | 451
            | 500..=508
            | 510
            | 511
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_tokens_become_status_codes() {
        assert_eq!(parse_retry_on("5xx,503"), ("5xx".to_string(), vec![503]));
        assert_eq!(
            parse_retry_on(" gateway-error , 502,999"),
            ("gateway-error,999".to_string(), vec![502])
        );
    }
}
