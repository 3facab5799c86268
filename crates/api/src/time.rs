//! How the models write their `date-time` properties: the text chrono's own `Serialize`
//! writes (RFC 3339 in UTC, `Z`, the fraction in 0, 3, 6 or 9 digits), formatted into a
//! buffer and handed over as one string. chrono hands the serializer its text a piece at
//! a time through `Display`, and serde_json escapes each piece on its own; a listing of
//! a thousand webhooks spent a fifth of its time there.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` at most.
const LONGEST: usize = 30;

/// Writes `value` as `width` decimal digits, zero-padded, at `out[at..]`.
fn digits(out: &mut [u8; LONGEST], at: usize, width: usize, mut value: u32) {
    for i in (at..at + width).rev() {
        out[i] = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The text of `at`, when it is in the years 0 to 9999 and not a leap second (chrono
/// writes the others in forms of their own, and [`serialize`] leaves them to it).
fn format(at: &DateTime<Utc>) -> Option<([u8; LONGEST], usize)> {
    // Once: each accessor of a `DateTime` works out its naive local time again.
    let at = at.naive_utc();
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    digits(&mut out, 0, 4, year);
    digits(&mut out, 5, 2, at.month());
    digits(&mut out, 8, 2, at.day());
    digits(&mut out, 11, 2, at.hour());
    digits(&mut out, 14, 2, at.minute());
    digits(&mut out, 17, 2, at.second());
    let fraction = match nanos {
        0 => 0,
        n if n % 1_000_000 == 0 => {
            digits(&mut out, 20, 3, n / 1_000_000);
            3
        }
        n if n % 1_000 == 0 => {
            digits(&mut out, 20, 6, n / 1_000);
            6
        }
        n => {
            digits(&mut out, 20, 9, n);
            9
        }
    };
    let mut len = 19;
    if fraction > 0 {
        len += 1 + fraction;
    }
    out[len] = b'Z';
    Some((out, len + 1))
}

/// Serializes a `date-time` property.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    match format(at) {
        Some((text, len)) => match std::str::from_utf8(&text[..len]) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => at.serialize(serializer),
        },
        None => at.serialize(serializer),
    }
}

/// Serializes an optional or nullable `date-time` property.
pub fn serialize_option<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Ours(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    fn same_as_chrono(at: DateTime<Utc>) {
        assert_eq!(
            serde_json::to_string(&Ours(at)).unwrap(),
            serde_json::to_string(&at).unwrap(),
            "{at:?}"
        );
    }

    #[test]
    fn writes_what_chrono_writes() {
        let base = DateTime::parse_from_rfc3339("2026-12-04T01:05:42Z")
            .unwrap()
            .to_utc();
        for nanos in [
            0,
            1,
            999,
            1_000,
            770_719_000,
            5_000_000,
            100_000_000,
            123_456_789,
            999_999_999,
        ] {
            same_as_chrono(base + chrono::Duration::nanoseconds(nanos));
        }
        for text in [
            "0000-01-01T00:00:00Z",
            "0001-02-03T04:05:06.007Z",
            "1969-12-31T23:59:59.999999Z",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "+10000-01-01T00:00:00Z",
            "-0001-06-30T12:00:00Z",
        ] {
            let at = text.parse::<DateTime<Utc>>().unwrap();
            same_as_chrono(at);
        }
        // A spread of instants over four centuries, with micro- and millisecond parts.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let micros =
                (seed % (400 * 365 * 86_400 * 1_000_000)) as i64 - 200 * 365 * 86_400 * 1_000_000;
            let at = DateTime::from_timestamp_micros(micros).unwrap();
            same_as_chrono(at);
            same_as_chrono(DateTime::from_timestamp_millis(micros / 1_000).unwrap());
        }
        // A leap second is left to chrono.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        same_as_chrono(leap);
    }

    #[test]
    fn optional_values_write_null_or_the_same_text() {
        #[derive(Serialize)]
        struct Maybe(#[serde(serialize_with = "serialize_option")] Option<DateTime<Utc>>);
        assert_eq!(serde_json::to_string(&Maybe(None)).unwrap(), "null");
        let at = DateTime::from_timestamp_micros(1_764_810_342_770_719).unwrap();
        assert_eq!(
            serde_json::to_string(&Maybe(Some(at))).unwrap(),
            serde_json::to_string(&at).unwrap()
        );
    }
}
