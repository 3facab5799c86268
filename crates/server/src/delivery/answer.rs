//! What a receiver's answer asks of the sender, beyond success or failure.
//!
//! - `410 Gone`: the endpoint is gone for good, so the webhook is switched off at once
//!   and its pending deliveries cancelled (no other status does that).
//! - `429` or `503` with `Retry-After` (RFC 9110 §10.2.3: delay-seconds or an HTTP
//!   date): the next try waits at least that long, never less than the retry
//!   schedule says, and never more than `--max-retry-after`.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

use super::retry::RetrySchedule;

/// Default of `--max-retry-after`.
pub const DEFAULT_MAX_RETRY_AFTER: &str = "1h";

/// The error text of an attempt answered `410 Gone`.
pub const GONE_MESSAGE: &str = "receiver answered 410 Gone: webhook disabled";

/// What happens after one failed attempt, given the receiver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextStep {
    /// Wait before the next try; `None`: no more tries.
    pub retry_in: Option<Duration>,
    /// The receiver answered 410: switch the webhook off and cancel its deliveries.
    pub disable_webhook: bool,
    /// What the receiver asked for, for the attempt's `error_message`.
    pub message: Option<String>,
}

/// Decides the next step after a failed attempt number `attempt_number` that got
/// `status` (0 without a response) and this `Retry-After` header, if any.
pub fn next_step(
    schedule: &RetrySchedule,
    attempt_number: u32,
    status: u16,
    retry_after: Option<&str>,
    max_retry_after: Duration,
    now: DateTime<Utc>,
) -> NextStep {
    if status == 410 {
        return NextStep {
            retry_in: None,
            disable_webhook: true,
            message: Some(GONE_MESSAGE.to_owned()),
        };
    }
    let scheduled = schedule.next_delay(attempt_number);
    let asked = match (status, retry_after) {
        (429 | 503, Some(value)) => parse_retry_after(value, now),
        _ => None,
    };
    let Some(asked) = asked else {
        return NextStep {
            retry_in: scheduled,
            disable_webhook: false,
            message: None,
        };
    };
    let capped = asked.min(max_retry_after);
    let mut message = format!("receiver asked to retry after {}s", asked.as_secs());
    if asked > max_retry_after {
        message.push_str(&format!(
            ", cut to {}",
            crate::duration::format(max_retry_after)
        ));
    }
    NextStep {
        // The attempt still counts: with no tries left the delivery fails as usual.
        retry_in: scheduled.map(|delay| retry_delay(delay, capped)),
        disable_webhook: false,
        message: Some(message),
    }
}

/// The wait before the next try: the later of the schedule's and the receiver's
/// (already capped) wish, so a receiver can slow retries down but never speed them up.
pub fn retry_delay(scheduled: Duration, asked: Duration) -> Duration {
    scheduled.max(asked)
}

/// Reads a `Retry-After` value as a wait from `now`: delay-seconds (digits only, so a
/// negative or fractional value is refused) or an HTTP date in any of the three forms
/// RFC 9110 says a recipient accepts (a date in the past means no wait). `None` when
/// the value is neither, in which case the schedule alone decides.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "very long": the cap cuts it.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    // Whole seconds, rounded up, so the try is never earlier than the date.
    let millis = (at - now).num_milliseconds().max(0);
    Some(Duration::from_secs(
        u64::try_from(millis).unwrap_or(0).div_ceil(1000),
    ))
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), and the obsolete RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) forms.
fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    const FORMATS: [&str; 3] = [
        "%a, %d %b %Y %H:%M:%S GMT",
        "%A, %d-%b-%y %H:%M:%S GMT",
        "%a %b %e %H:%M:%S %Y",
    ];
    FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const NOW: &str = "2026-11-30T12:00:00Z";

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn delay_seconds() {
        let now = at(NOW);
        assert_eq!(parse_retry_after("120", now), Some(secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(secs(0)));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(secs(u64::MAX))
        );
    }

    #[test]
    fn http_dates_in_every_form() {
        let now = at(NOW);
        for future in [
            "Mon, 30 Nov 2026 12:02:00 GMT",
            "Monday, 30-Nov-26 12:02:00 GMT",
            "Mon Nov 30 12:02:00 2026",
        ] {
            assert_eq!(parse_retry_after(future, now), Some(secs(120)), "{future}");
        }
        // A fraction of a second is rounded up, never down.
        assert_eq!(
            parse_retry_after(
                "Mon, 30 Nov 2026 12:00:01 GMT",
                at("2026-11-30T12:00:00.2Z")
            ),
            Some(secs(1))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means no wait"
        );
    }

    #[test]
    fn garbage_and_negative_values_are_refused() {
        let now = at(NOW);
        for value in [
            "",
            "soon",
            "-5",
            "1.5",
            "+5",
            "5s",
            "Mon, 30 Nov 2026 12:02:00 CET",
            "2026-11-30T12:02:00Z",
        ] {
            assert_eq!(parse_retry_after(value, now), None, "{value:?}");
        }
    }

    fn schedule() -> RetrySchedule {
        RetrySchedule::new(vec![Duration::from_millis(100), secs(600)], 0.0).unwrap()
    }

    #[test]
    fn the_later_of_schedule_and_receiver_wins() {
        assert_eq!(retry_delay(secs(5), secs(120)), secs(120));
        assert_eq!(retry_delay(secs(300), secs(120)), secs(300));

        let now = at(NOW);
        let step = next_step(&schedule(), 1, 503, Some("2"), secs(3600), now);
        assert_eq!(step.retry_in, Some(secs(2)));
        assert_eq!(
            step.message.as_deref(),
            Some("receiver asked to retry after 2s")
        );
        let step = next_step(&schedule(), 2, 429, Some("120"), secs(3600), now);
        assert_eq!(step.retry_in, Some(secs(600)), "the schedule is later");
        assert!(!step.disable_webhook);
    }

    #[test]
    fn long_waits_are_cut_to_the_maximum() {
        let step = next_step(&schedule(), 1, 503, Some("999999"), secs(3600), at(NOW));
        assert_eq!(step.retry_in, Some(secs(3600)));
        assert_eq!(
            step.message.as_deref(),
            Some("receiver asked to retry after 999999s, cut to 1h")
        );
    }

    #[test]
    fn without_a_usable_header_or_tries_left_the_schedule_decides() {
        let now = at(NOW);
        let plain = NextStep {
            retry_in: Some(Duration::from_millis(100)),
            disable_webhook: false,
            message: None,
        };
        assert_eq!(next_step(&schedule(), 1, 503, None, secs(60), now), plain);
        assert_eq!(
            next_step(&schedule(), 1, 503, Some("later"), secs(60), now),
            plain
        );
        // Only 429 and 503 carry a wait the sender honours.
        assert_eq!(
            next_step(&schedule(), 1, 500, Some("30"), secs(60), now),
            plain
        );
        // Out of tries: the delivery fails, the wish is still recorded.
        let last = next_step(&schedule(), 3, 503, Some("30"), secs(60), now);
        assert_eq!(last.retry_in, None);
        assert_eq!(
            last.message.as_deref(),
            Some("receiver asked to retry after 30s")
        );
    }

    #[test]
    fn gone_disables_and_stops_retrying() {
        for header in [None, Some("30")] {
            let step = next_step(&schedule(), 1, 410, header, secs(60), at(NOW));
            assert_eq!(step.retry_in, None);
            assert!(step.disable_webhook);
            assert_eq!(step.message.as_deref(), Some(GONE_MESSAGE));
        }
        for status in [0, 301, 400, 404, 500, 503] {
            assert!(!next_step(&schedule(), 1, status, None, secs(60), at(NOW)).disable_webhook);
        }
    }
}
