//! `HTTPFaultInjection` → the route's `envoy.filters.http.fault` config (istiod's
//! `TranslateFault`).

use crate::diag::{Code, Diagnostic};
use crate::ir::{AbortStatus, Fault, FaultAbort, FaultDelay, Fraction};
use crate::istio::{HttpFaultInjection, Percent};
use crate::lower::route::util::{fmt_number, hundred, percent_fraction, Cx, Reported};

/// gRPC status names as Istio spells them, with their codes.
const GRPC_STATUS: [(&str, u32); 17] = [
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

fn percentage(
    cx: &mut Cx<'_, '_>,
    p: Option<&Percent>,
    field: &str,
) -> Result<Option<Fraction>, Reported> {
    let Some(p) = p else { return Ok(None) };
    if !(0.0..=100.0).contains(&p.value) {
        cx.emit(
            Diagnostic::error(
                Code::PercentageOutOfRange,
                format!(
                    "fault percentage must be between 0 and 100 (it has {})",
                    fmt_number(p.value)
                ),
            )
            .value(fmt_number(p.value))
            .hint("use a percentage between 0 and 100 (the rule is dropped until then)"),
            field,
        );
        return Err(Reported);
    }
    Ok(Some(percent_fraction(p.value)))
}

/// Translate `fault` at `field` (`spec.http[i].fault`). `Ok(None)` when nothing survives;
/// `Err` drops the rule (a percentage out of range).
pub(crate) fn translate(
    cx: &mut Cx<'_, '_>,
    fault: Option<&HttpFaultInjection>,
    field: &str,
) -> Result<Option<Fault>, Reported> {
    let Some(f) = fault else { return Ok(None) };
    let mut failed = false;
    let mut delay = None;
    if let Some(d) = &f.delay {
        let df = format!("{field}.delay");
        let pct = match percentage(cx, d.percentage.as_ref(), &format!("{df}.percentage.value")) {
            Ok(p) => p,
            Err(Reported) => {
                failed = true;
                None
            }
        };
        let pct = match (pct, d.percent) {
            (Some(p), _) => Some(p),
            (None, Some(n)) => {
                cx.emit(
                    Diagnostic::warning(
                        Code::DeprecatedField,
                        "using deprecated setting \"percent\", use \"percentage\" instead",
                    )
                    .value(n.to_string())
                    .hint(format!("write percentage: {{value: {n}}}")),
                    &format!("{df}.percent"),
                );
                if !(0..=100).contains(&n) {
                    cx.emit(
                        Diagnostic::error(
                            Code::PercentageOutOfRange,
                            format!("fault delay percent must be between 0 and 100 (it has {n})"),
                        )
                        .value(n.to_string())
                        .hint(
                            "use a percentage between 0 and 100 (the rule is dropped until then)",
                        ),
                        &format!("{df}.percent"),
                    );
                    failed = true;
                }
                Some(hundred(u32::try_from(n).unwrap_or(0)))
            }
            (None, None) => None,
        };
        if d.exponential_delay.is_some() {
            cx.emit(
                Diagnostic::warning(
                    Code::UnsupportedField,
                    "exponentialDelay is not supported and the delay is dropped, as istiod does",
                )
                .hint("use fixedDelay"),
                &format!("{df}.exponentialDelay"),
            );
        } else if let Some(fixed) = &d.fixed_delay {
            if let Some(fixed) = cx.duration(fixed, &format!("{df}.fixedDelay")) {
                delay = Some(FaultDelay {
                    fixed_delay: fixed,
                    percentage: pct,
                });
            }
        } else {
            cx.emit(
                Diagnostic::error(Code::MissingField, "fault delay needs fixedDelay")
                    .hint("set fixedDelay, e.g. \"5s\"; the delay is ignored until then"),
                &df,
            );
        }
    }
    let mut abort = None;
    if let Some(a) = &f.abort {
        let af = format!("{field}.abort");
        let pct = match percentage(cx, a.percentage.as_ref(), &format!("{af}.percentage.value")) {
            Ok(p) => p,
            Err(Reported) => {
                failed = true;
                None
            }
        };
        let status = if a.http2_error.is_some() {
            cx.emit(
                Diagnostic::warning(
                    Code::UnsupportedField,
                    "http2Error is not supported and the abort is dropped",
                )
                .hint("use httpStatus or grpcStatus"),
                &format!("{af}.http2Error"),
            );
            None
        } else if let Some(code) = a.http_status {
            if (200..=599).contains(&code) {
                Some(AbortStatus::Http(code))
            } else {
                cx.emit(
                    Diagnostic::error(
                        Code::InvalidValue,
                        format!("invalid abort http status {code}"),
                    )
                    .value(code.to_string())
                    .hint("use a status between 200 and 599; the abort is ignored until then"),
                    &format!("{af}.httpStatus"),
                );
                None
            }
        } else if let Some(name) = &a.grpc_status {
            match GRPC_STATUS.iter().find(|(n, _)| n == name) {
                Some((_, code)) => Some(AbortStatus::Grpc(*code)),
                None => {
                    cx.emit(
                        Diagnostic::error(
                            Code::InvalidValue,
                            format!("unknown grpc status {name:?}"),
                        )
                        .value(name.clone())
                        .hint("use a gRPC status name such as UNAVAILABLE or DEADLINE_EXCEEDED; the abort is ignored until then"),
                        &format!("{af}.grpcStatus"),
                    );
                    None
                }
            }
        } else {
            cx.emit(
                Diagnostic::error(
                    Code::MissingField,
                    "fault abort needs httpStatus or grpcStatus",
                )
                .hint("set httpStatus, e.g. 503; the abort is ignored until then"),
                &af,
            );
            None
        };
        abort = status.map(|status| FaultAbort {
            status,
            percentage: pct,
        });
    }
    if failed {
        return Err(Reported);
    }
    if delay.is_none() && abort.is_none() {
        return Ok(None);
    }
    Ok(Some(Fault { delay, abort }))
}
