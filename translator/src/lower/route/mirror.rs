//! `mirror` / `mirrorPercentage` / `mirror_percent` / `mirrors[]` → request mirror policies
//! (istiod's `MirrorPercent`, `MirrorPercentByPolicy`, `TranslateRequestMirrorPolicy`).

use crate::diag::{Code, Diagnostic};
use crate::ir::Fraction;
use crate::istio::HttpRoute;
use crate::lower::route::action::{target, RefKind, Target};
use crate::lower::route::util::{fmt_number, hundred, percent_fraction, Cx, Reported};

/// One mirror policy whose cluster port may depend on the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MirrorSpec {
    pub target: Target,
    pub fraction: Fraction,
}

/// Validate a percentage in [0, 100]: `PercentageOutOfRange` with Istio's wording.
fn check_range(cx: &mut Cx<'_, '_>, name: &str, value: f64, field: &str) -> Result<(), Reported> {
    let problem = if value > 100.0 {
        Some(format!(
            "{name} must have a max value of 100 (it has {})",
            fmt_number(value)
        ))
    } else if value < 0.0 || value.is_nan() {
        Some(format!(
            "{name} must have a min value of 0 (it has {})",
            fmt_number(value)
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(msg) => {
            cx.emit(
                Diagnostic::error(Code::PercentageOutOfRange, msg)
                    .value(fmt_number(value))
                    .hint("use a percentage between 0 and 100 (the rule is dropped until then)"),
                field,
            );
            Err(Reported)
        }
    }
}

/// Validate and translate the mirrors of rule `http` at `field` (`spec.http[i]`), in order:
/// `mirror` first, then each `mirrors[]` item. Policies with a 0 percentage are left out.
/// `Err` drops the rule (mirror with mirrors, or a percentage out of range).
pub(crate) fn translate(
    cx: &mut Cx<'_, '_>,
    http: &HttpRoute,
    field: &str,
) -> Result<Vec<MirrorSpec>, Reported> {
    let mut failed = false;
    if http.mirror.is_some() && !http.mirrors.is_empty() {
        cx.emit(
            Diagnostic::error(
                Code::MirrorAndMirrors,
                "http route cannot contain both mirror and mirrors",
            )
            .hint("move the mirror into the mirrors list (the rule is dropped until then)"),
            &format!("{field}.mirrors"),
        );
        failed = true;
    }
    if let Some(n) = http.mirror_percent {
        cx.emit(
            Diagnostic::warning(
                Code::DeprecatedField,
                "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
            )
            .value(n.to_string())
            .hint(format!("write mirrorPercentage: {{value: {n}}}")),
            &format!("{field}.mirrorPercent"),
        );
        if n > 100 {
            cx.emit(
                Diagnostic::error(
                    Code::PercentageOutOfRange,
                    format!("mirror_percent must have a max value of 100 (it has {n})"),
                )
                .value(n.to_string())
                .hint("use a percentage between 0 and 100 (the rule is dropped until then)"),
                &format!("{field}.mirrorPercent"),
            );
            failed = true;
        } else if n < 0 {
            cx.emit(
                Diagnostic::error(
                    Code::PercentageOutOfRange,
                    format!("mirror_percent must have a min value of 0 (it has {n})"),
                )
                .value(n.to_string())
                .hint("use a percentage between 0 and 100 (the rule is dropped until then)"),
                &format!("{field}.mirrorPercent"),
            );
            failed = true;
        }
    }
    if let Some(p) = &http.mirror_percentage {
        if check_range(
            cx,
            "mirror_percentage",
            p.value,
            &format!("{field}.mirrorPercentage.value"),
        )
        .is_err()
        {
            failed = true;
        }
    }
    for (k, m) in http.mirrors.iter().enumerate() {
        if let Some(p) = &m.percentage {
            if check_range(
                cx,
                "mirror percentage",
                p.value,
                &format!("{field}.mirrors[{k}].percentage.value"),
            )
            .is_err()
            {
                failed = true;
            }
        }
    }

    let mut out = Vec::new();
    if let Some(dest) = &http.mirror {
        match target(cx, dest, &format!("{field}.mirror"), RefKind::Mirror) {
            Ok(t) => {
                // mirrorPercentage wins over the deprecated mirror_percent; absent → 100%.
                let fraction = match (&http.mirror_percentage, http.mirror_percent) {
                    (Some(p), _) if p.value > 0.0 => Some(percent_fraction(p.value)),
                    (Some(_), _) => None,
                    (None, Some(n)) if n > 0 => Some(hundred(u32::try_from(n).unwrap_or(100))),
                    (None, Some(_)) => None,
                    (None, None) => Some(hundred(100)),
                };
                if let Some(fraction) = fraction {
                    out.push(MirrorSpec {
                        target: t,
                        fraction,
                    });
                }
            }
            Err(Reported) => failed = true,
        }
    }
    for (k, m) in http.mirrors.iter().enumerate() {
        let f = format!("{field}.mirrors[{k}]");
        let Some(dest) = &m.destination else {
            cx.emit(
                Diagnostic::error(Code::MissingField, "destination is required for mirrors")
                    .hint("add destination.host (and subset) to the mirrors item; the item is ignored until then"),
                &f,
            );
            continue;
        };
        match target(cx, dest, &format!("{f}.destination"), RefKind::Mirror) {
            Ok(t) => {
                let fraction = match &m.percentage {
                    Some(p) if p.value > 0.0 => Some(percent_fraction(p.value)),
                    Some(_) => None,
                    None => Some(hundred(100)),
                };
                if let Some(fraction) = fraction {
                    out.push(MirrorSpec {
                        target: t,
                        fraction,
                    });
                }
            }
            Err(Reported) => failed = true,
        }
    }
    if failed {
        Err(Reported)
    } else {
        Ok(out)
    }
}
