//! Small helpers shared by route translation: the diagnostic context, percentages, regex
//! validation, base64 and RFC 3339 timestamps.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diag::Diagnostic;
use crate::ir::{Denominator, Fraction};
use crate::lower::destination_rule::RuleIndex;
use crate::lower::registry::Registry;
use crate::source::Resource;
use crate::Options;

/// A problem was found and already reported as a diagnostic; the caller drops what it was
/// building (a rule, a match, a field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reported;

/// Everything needed while validating one VirtualService: the resource (for diagnostic
/// locations), the registry and DestinationRules (for reference checks) and the sink.
pub(crate) struct Cx<'a, 'd> {
    pub res: &'a Resource,
    pub registry: &'a Registry,
    pub rules: &'a RuleIndex,
    pub options: &'a Options,
    pub diags: &'d mut Vec<Diagnostic>,
    /// Regular expressions already checked in this translation, with the verdict: a mesh
    /// repeats the same few (`.*Mobile.*`), and parsing one is costly.
    pub regexes: &'d mut RegexVerdicts,
}

/// Regular expression → [`validate_regex`]'s verdict.
pub(crate) type RegexVerdicts = BTreeMap<String, Result<(), String>>;

impl Cx<'_, '_> {
    /// Report a diagnostic about `field` of this resource.
    pub fn emit(&mut self, d: Diagnostic, field: &str) {
        let d = self.res.diag(d, field);
        self.diags.push(d);
    }

    /// The resource's namespace (short names resolve here).
    pub fn namespace(&self) -> &str {
        self.res.namespace()
    }

    /// [`validate_regex`], once per distinct expression.
    pub fn validate_regex(&mut self, re: &str) -> Result<(), String> {
        if let Some(verdict) = self.regexes.get(re) {
            return verdict.clone();
        }
        let verdict = validate_regex(re);
        self.regexes.insert(re.to_string(), verdict.clone());
        verdict
    }

    /// Parse an Istio duration, reporting an `InvalidValue` error (the field is then ignored).
    pub fn duration(&mut self, s: &str, field: &str) -> Option<Duration> {
        match crate::lower::duration::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.emit(
                    Diagnostic::error(crate::diag::Code::InvalidValue, e)
                        .value(s)
                        .hint("write a duration such as \"10s\", \"1.5s\" or \"250ms\"; the field is ignored until then"),
                    field,
                );
                None
            }
        }
    }
}

/// Istio `Percent` → Envoy `FractionalPercent` over MILLION, truncating like Go's
/// `uint32(value * 10000)` (0.57 → 5699).
pub(crate) fn percent_fraction(value: f64) -> Fraction {
    Fraction {
        // `as` truncates toward zero and saturates, as Go's conversion does for in-range
        // values; callers validate the range first.
        numerator: (value * 10000.0) as u32,
        denominator: Denominator::Million,
    }
}

/// An integer percentage → `n/HUNDRED`.
pub(crate) fn hundred(n: u32) -> Fraction {
    Fraction {
        numerator: n,
        denominator: Denominator::Hundred,
    }
}

/// A percentage for messages: `101`, `-1`, `0.5`.
pub(crate) fn fmt_number(v: f64) -> String {
    format!("{v}")
}

/// Check a regular expression the way Envoy's RE2 would accept it (no backreferences, no
/// lookaround). The error is the parser's reason.
pub(crate) fn validate_regex(re: &str) -> Result<(), String> {
    match regex_syntax::Parser::new().parse(re) {
        Ok(_) => Ok(()),
        Err(regex_syntax::Error::Parse(e)) => Err(e.kind().to_string()),
        Err(regex_syntax::Error::Translate(e)) => Err(e.kind().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Decode base64 as the protobuf JSON mapping of `bytes` accepts it: standard or URL-safe
/// alphabet, padding optional.
pub(crate) fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    let trimmed = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for (i, c) in trimmed.chars().enumerate() {
        let v = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '+' | '-' => 62,
            '/' | '_' => 63,
            _ => return Err(format!("invalid base64 character {c:?} at position {i}")),
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    if trimmed.len() % 4 == 1 {
        return Err("truncated base64 input".to_string());
    }
    Ok(out)
}

/// An RFC 3339 timestamp as (seconds since the epoch, nanoseconds), for ordering
/// VirtualServices by `metadata.creationTimestamp`.
pub(crate) fn parse_timestamp(s: &str) -> Option<(i64, u32)> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let mut scale = 100_000_000u32;
        for d in &b[start..i] {
            nanos += u32::from(d - b'0') * scale;
            scale /= 10;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            let off = h * 3600 + m * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3600 + min * 60 + sec - offset, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_truncates_like_go() {
        assert_eq!(percent_fraction(0.57).numerator, 5699);
        assert_eq!(percent_fraction(100.0).numerator, 1_000_000);
        assert_eq!(percent_fraction(0.0001).numerator, 1);
        assert_eq!(percent_fraction(0.00001).numerator, 0);
        assert_eq!(percent_fraction(33.3333333).numerator, 333_333);
    }

    #[test]
    fn regexes_are_checked_like_re2() {
        assert!(validate_regex(".*Mobile.*").is_ok());
        assert!(validate_regex(r"\/(.?)\/status").is_ok());
        assert!(validate_regex("(a").is_err());
        assert!(validate_regex(r"(a)\1").is_err());
        assert!(validate_regex("a(?=b)").is_err());
    }

    #[test]
    fn base64_standard_and_url_safe() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("-_8=").unwrap(), vec![0xfb, 0xff]);
        assert!(decode_base64("a$b=").is_err());
        assert!(decode_base64("a").is_err());
    }

    #[test]
    fn timestamps_order_correctly() {
        let a = parse_timestamp("2024-01-02T03:04:05Z").unwrap();
        let b = parse_timestamp("2024-01-02T03:04:05.5Z").unwrap();
        let c = parse_timestamp("2024-01-02T05:04:04+02:00").unwrap();
        assert!(a < b);
        assert!(c < a);
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2024-13-02T03:04:05Z"), None);
    }
}
