//! Istio durations as users write them in YAML: Go `time.ParseDuration` forms (`10s`, `1.5s`,
//! `100ms`, `1m`, `2h45m`, `0s`, `0`), which also cover protobuf JSON's `<seconds>s`.

use std::time::Duration;

/// Parse an Istio duration string.
///
/// Accepts a sequence of decimal numbers, each with an optional fraction and a unit
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `1h30m`, `1.5s`, `250ms`; a lone `0`; and
/// surrounding whitespace. Negative durations are rejected (Istio has no use for them).
/// The error is a lowercase sentence naming the bad value, ready to be used as a diagnostic
/// message.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let bad = |why: &str| format!("invalid duration {s:?}: {why}");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(bad("durations cannot be negative"));
    }
    if rest.is_empty() {
        return Err(bad("empty duration, write e.g. \"10s\" or \"100ms\""));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0; // nanoseconds
    while !rest.is_empty() {
        // Integer part.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        // Fraction part.
        let (frac_digits, after_frac) = match after_int.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(bad("expected a number, write e.g. \"10s\" or \"1.5s\""));
        }
        // Unit.
        let unit_len = after_frac
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_frac.len(), |(i, _)| i);
        let (unit, after_unit) = after_frac.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(bad("missing unit, use one of ns, us, ms, s, m, h")),
            other => {
                return Err(bad(&format!(
                    "unknown unit {other:?}, use one of ns, us, ms, s, m, h"
                )))
            }
        };
        let too_large = || bad("value too large");
        let int: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| too_large())?
        };
        let mut value = int.checked_mul(unit_nanos).ok_or_else(too_large)?;
        // Fraction: keep at most as many digits as can matter (nanosecond precision).
        let mut scale = unit_nanos;
        for d in frac_digits.bytes().take(30) {
            scale /= 10;
            if scale == 0 {
                break;
            }
            value += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(value).ok_or_else(too_large)?;
        rest = after_unit;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("value too large"))?;
    // The remainder is below 1e9 and fits a u32.
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| bad("value too large"))?;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_and_protobuf_forms() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("2h45m"), Duration::from_secs(2 * 3600 + 45 * 60));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0.001s"), Duration::from_millis(1));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.000000001s"), Duration::new(1, 1));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("250µs"), Duration::from_micros(250));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("1m30.5s"), Duration::from_millis(90_500));
        assert_eq!(ok(" 3s "), Duration::from_secs(3));
        assert_eq!(ok("+3s"), Duration::from_secs(3));
    }

    #[test]
    fn rejects_bad_forms_with_the_value_in_the_message() {
        for bad in [
            "", "s", "10", "1.5", "-1s", "10x", "1 s", "abc", "1..5s", ".",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert!(parse_duration("99999999999999999999999999999999999999999h").is_err());
    }
}
