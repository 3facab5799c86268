//! The one duration grammar of the service, read by every duration flag (and each
//! entry of `--retry-schedule`) and written by every message that echoes one.
//!
//! `500ms`, `10s`, `2m`, `1h30m`, `7d`: number-unit pairs that add up, units `ms`, `s`,
//! `m`, `h`, `d`. A bare number other than `0` is refused rather than guessed at:
//! `--lease 30` could mean seconds or milliseconds, and a wrong guess is a silent
//! misconfiguration.

use std::time::Duration;

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration written in the grammar of this module. The error says what is
/// wrong with the text, without repeating it (callers add where it came from).
pub fn parse(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty duration; expected e.g. 500ms, 10s, 2m, 1h".to_owned());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(
                "expected a whole number followed by a unit (ms, s, m, h, d), such as 30s or 1h30m"
                    .to_owned(),
            );
        }
        let (digits, after) = rest.split_at(digits_end);
        let too_large = || format!("{text} is too large");
        let value: u64 = digits.parse().map_err(|_| too_large())?;
        // The unit runs to the next digit, so `1.5s` names the unit `.` rather than
        // passing for `1s`.
        let unit_end = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let unit_millis = match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, millis)) => *millis,
            None if unit.is_empty() => {
                return Err(format!(
                    "missing unit after {value} (write e.g. {value}s or {value}ms)"
                ))
            }
            None => {
                return Err(format!(
                    "unknown unit {unit:?} (use ms, s, m, h or d, and whole numbers)"
                ))
            }
        };
        let millis = value.checked_mul(unit_millis).ok_or_else(too_large)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(too_large)?;
        rest = next;
    }
    Ok(total)
}

/// Writes a duration the way [`parse`] reads it, in the largest units that divide it
/// exactly (`90s` becomes `1m30s`); below a millisecond is dropped.
pub fn format(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        let size = u128::from(size);
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    out
}

/// [`parse`] with the text in the error, for clap's value parsers.
pub(crate) fn parse_flag(input: &str) -> Result<Duration, String> {
    parse(input).map_err(|reason| format!("invalid duration {input:?}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("5h"), Ok(Duration::from_secs(5 * 3600)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 3s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn compound_durations_add_up() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1d2h"), Ok(Duration::from_secs(26 * 3600)));
        assert_eq!(parse("1m1s500ms"), Ok(Duration::from_millis(61_500)));
    }

    #[test]
    fn bad_durations_are_refused_with_a_reason() {
        let missing_unit = parse("30").unwrap_err();
        assert!(missing_unit.contains("missing unit"), "{missing_unit}");
        let unknown_unit = parse("3weeks").unwrap_err();
        assert!(unknown_unit.contains("unknown unit"), "{unknown_unit}");
        for bad in ["", "  ", "s", "-5s", "1.5s", "5 s", "5s,", "ms10"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let huge = parse("99999999999999999999s").unwrap_err();
        assert!(huge.contains("too large"), "{huge}");
        let overflow = parse("18446744073709551615d").unwrap_err();
        assert!(overflow.contains("too large"), "{overflow}");
    }

    #[test]
    fn each_refusal_names_what_is_wrong() {
        for (bad, reason) in [
            ("", "empty"),
            ("  ", "empty"),
            ("s", "whole number"),
            ("-5s", "whole number"),
            ("5", "missing unit"),
            ("1.5s", "unknown unit \".\""),
            ("5 s", "unknown unit"),
            ("5x", "unknown unit \"x\""),
            ("ms10", "whole number"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615h", "too large"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
        assert!(parse_flag("5")
            .unwrap_err()
            .starts_with("invalid duration \"5\""));
    }

    #[test]
    fn formatted_durations_parse_back() {
        for text in ["0s", "250ms", "10s", "1m30s", "2h", "1d2h3m4s5ms"] {
            let parsed = parse(text).unwrap();
            assert_eq!(format(parsed), text);
            assert_eq!(parse(&format(parsed)), Ok(parsed));
        }
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format(Duration::from_millis(1500)), "1s500ms");
    }
}
