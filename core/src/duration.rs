//! Go duration strings (`time.ParseDuration`'s grammar: `"300ms"`, `"1.5h"`, `"2h45m"`), as SPIRE's and
//! spire-controller-manager's configs and CRDs write them. One parser for the operator's CRDs and the
//! agent's SPIRE plugin keys (`poll_retry_interval`, `reload_interval`).

use std::time::Duration;

/// Why a Go duration string (`time.ParseDuration` grammar) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("duration is empty; expected a Go duration such as \"1h\", \"90m\" or \"1h30m0s\"")]
    Empty,
    /// A leading `-`.
    #[error("duration {0:?} is negative; only positive durations such as \"1h\" are allowed")]
    Negative(String),
    /// A unit without a number before it (`"h"`, `".s"`, `"+"`).
    #[error("duration {0:?}: expected a number before each unit, e.g. \"1h\" or \"1.5h\"")]
    MissingNumber(String),
    /// A number without a unit (`"10"`, `"1h30"`).
    #[error("duration {0:?}: a number has no unit; units are ns, us, µs, ms, s, m, h")]
    MissingUnit(String),
    /// A unit that Go does not know (`"1d"`, `"5sec"`).
    #[error("duration {input:?}: unknown unit {unit:?}; units are ns, us, µs, ms, s, m, h")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit that was not recognised.
        unit: String,
    },
    /// Longer than Go's maximum (about 292 years).
    #[error("duration {0:?} is longer than the maximum of 2562047h47m16.854775807s")]
    Overflow(String),
}

/// Parses a Go duration string with the grammar of Go's `time.ParseDuration` (`"300ms"`, `"1.5h"`, `"2h45m"`,
/// units ns, us, µs, ms, s, m, h; `"0"` needs no unit). Negative durations are refused; fractions below one
/// nanosecond are truncated.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    const MAX_NANOS: u128 = i64::MAX as u128;
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    if input.starts_with('-') {
        return Err(DurationError::Negative(input.to_owned()));
    }
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::MissingNumber(input.to_owned()));
    }
    let overflow = || DurationError::Overflow(input.to_owned());
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        rest = after_int;
        let mut frac_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            let (digits, after_frac) = after_dot.split_at(frac_len);
            frac_digits = digits;
            rest = after_frac;
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(DurationError::MissingNumber(input.to_owned()));
        }
        let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(input.to_owned()));
        }
        let (unit, after_unit) = rest.split_at(unit_len);
        rest = after_unit;
        let unit_nanos: u64 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(DurationError::UnknownUnit { input: input.to_owned(), unit: unit.to_owned() }),
        };
        let mut whole: u128 = 0;
        for digit in int_digits.bytes() {
            whole = whole * 10 + u128::from(digit - b'0');
            if whole > MAX_NANOS {
                return Err(overflow());
            }
        }
        total += whole * u128::from(unit_nanos);
        total += fraction_nanos(frac_digits, unit_nanos);
        if total > MAX_NANOS {
            return Err(overflow());
        }
    }
    let nanos = u64::try_from(total).map_err(|_| overflow())?;
    Ok(Duration::from_nanos(nanos))
}

/// The nanoseconds of a fraction (`digits` after the '.') of `unit_nanos`, computed the way Go's
/// `time.ParseDuration` does: at most the digits that fit in 63 bits, scaled in floating point, truncated.
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn fraction_nanos(digits: &str, unit_nanos: u64) -> u128 {
    const LIMIT: u64 = 1 << 63;
    let mut fraction: u64 = 0;
    let mut scale: f64 = 1.0;
    for digit in digits.bytes() {
        if fraction > (LIMIT - 1) / 10 {
            break;
        }
        let next = fraction * 10 + u64::from(digit - b'0');
        if next > LIMIT {
            break;
        }
        fraction = next;
        scale *= 10.0;
    }
    if fraction == 0 {
        return 0;
    }
    // Same expression as Go: float64(f) * (float64(unit) / scale), converted back to an integer.
    u128::from((fraction as f64 * (unit_nanos as f64 / scale)) as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn parse_go_duration_accepts_go_grammar() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("+0", 0),
            ("5s", 5 * S),
            ("30s", 30 * S),
            ("1478s", 1478 * S),
            ("+5s", 5 * S),
            ("5.0s", 5 * S),
            ("5.6s", 5 * S + 600_000_000),
            ("5.s", 5 * S),
            (".5s", S / 2),
            ("1.0s", S),
            ("1.00s", S),
            ("1.004s", S + 4_000_000),
            ("1.0040s", S + 4_000_000),
            ("100.00100s", 100 * S + 1_000_000),
            ("10ns", 10),
            ("11us", 11_000),
            ("12µs", 12_000),
            ("12μs", 12_000),
            ("13ms", 13_000_000),
            ("300ms", 300_000_000),
            ("14s", 14 * S),
            ("15m", 15 * 60 * S),
            ("90m", 90 * 60 * S),
            ("16h", 16 * 3600 * S),
            ("1.5h", 5400 * S),
            ("2h45m", (2 * 3600 + 45 * 60) * S),
            ("1h30m0s", 5400 * S),
            ("3h30m", 12_600 * S),
            ("10.5s4m", 4 * 60 * S + 10 * S + S / 2),
            ("39h9m14.425s", 39 * 3600 * S + 9 * 60 * S + 14 * S + 425_000_000),
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 1_200 * S),
            ("0.100000000000000000000h", 360 * S),
            ("0.830103483285477580700h", 49 * 60 * S + 48 * S + 372_539_827),
            ("9223372036854ms775us807ns", 9_223_372_036_854_775_807),
            ("9007199254740993ns", 9_007_199_254_740_993),
            ("9223372036854775807ns", 9_223_372_036_854_775_807),
            ("9223372036854775.807us", 9_223_372_036_854_775_807),
            ("2562047h47m16.854775807s", 9_223_372_036_854_775_807),
            ("1.000000000000000000001s", S),
        ];
        for (input, nanos) in cases {
            assert_eq!(parse_go_duration(input), Ok(Duration::from_nanos(*nanos)), "{input}");
        }
    }

    #[test]
    fn parse_go_duration_refuses_what_go_refuses() {
        let cases: &[(&str, DurationError)] = &[
            ("", DurationError::Empty),
            ("-", DurationError::Negative("-".into())),
            ("-5s", DurationError::Negative("-5s".into())),
            ("-0", DurationError::Negative("-0".into())),
            ("+", DurationError::MissingNumber("+".into())),
            ("s", DurationError::MissingNumber("s".into())),
            (".", DurationError::MissingNumber(".".into())),
            (".s", DurationError::MissingNumber(".s".into())),
            ("+.s", DurationError::MissingNumber("+.s".into())),
            ("1h s", DurationError::UnknownUnit { input: "1h s".into(), unit: "h s".into() }),
            ("3", DurationError::MissingUnit("3".into())),
            ("1h30", DurationError::MissingUnit("1h30".into())),
            ("1d", DurationError::UnknownUnit { input: "1d".into(), unit: "d".into() }),
            ("5sec", DurationError::UnknownUnit { input: "5sec".into(), unit: "sec".into() }),
            ("1H", DurationError::UnknownUnit { input: "1H".into(), unit: "H".into() }),
            ("9223372036854775808ns", DurationError::Overflow("9223372036854775808ns".into())),
            ("9223372036854775.808us", DurationError::Overflow("9223372036854775.808us".into())),
            ("9223372036854ms775us808ns", DurationError::Overflow("9223372036854ms775us808ns".into())),
            ("9223372036854775808ns", DurationError::Overflow("9223372036854775808ns".into())),
            ("2562047h47m16.854775808s", DurationError::Overflow("2562047h47m16.854775808s".into())),
            ("3000000h", DurationError::Overflow("3000000h".into())),
            ("99999999999999999999999s", DurationError::Overflow("99999999999999999999999s".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_go_duration(input).as_ref(), Err(expected), "{input}");
        }
    }

    #[test]
    fn duration_errors_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("-1h", "negative"),
            ("1d", "unknown unit \"d\""),
            ("10", "has no unit"),
            ("h", "expected a number"),
            ("3000000h", "longer than the maximum"),
        ];
        for (input, needle) in cases {
            let message = parse_go_duration(input).map(|d| format!("{d:?}")).unwrap_or_else(|e| e.to_string());
            assert!(message.contains(needle), "{input}: {message}");
        }
    }
}
