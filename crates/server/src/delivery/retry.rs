//! When to try a failed delivery again.
//!
//! A [`RetrySchedule`] is a list of waits: entry `i` is how long to wait after
//! attempt `i + 1` failed before making attempt `i + 2`. The first attempt is always
//! immediate, so a schedule of `n` waits allows `n + 1` attempts in all.
//!
//! # Text format
//!
//! Operators set the schedule with one comma-separated string (the
//! `SONZAI_RETRY_SCHEDULE` setting), for example
//!
//! ```text
//! 5s,5m,30m,2h,5h,10h,10h
//! immediately,5s,5m,30m,2h,5h,10h,10h
//! 0s,10ms,20ms
//! ```
//!
//! - Each entry is a duration in the grammar every duration flag reads
//!   ([`crate::duration`]: `500ms`, `30s`, `5m`, `1h30m`, `1d`; a bare `0` is also
//!   accepted). Spaces around entries are ignored.
//! - The entries are the waits before each *retry*. So that the schedule can be
//!   written as a full timeline ("immediately, then 5 s later, ..."), a first entry of
//!   `immediately` or zero stands for the first attempt and is dropped: the first two
//!   lines above are the same schedule (eight attempts). Zero entries after the first
//!   mean "retry at once".
//! - `immediately` alone means a single attempt and no retries.
//! - At most [`MAX_ENTRIES`] waits, each at most [`MAX_DELAY`]: the limits catch typos
//!   such as `5000h` before they park a delivery for months.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

/// The most waits a schedule may hold.
pub const MAX_ENTRIES: usize = 100;

/// The longest single wait a schedule may hold (7 days).
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Default retry schedule: seven retries spread over about 28 hours ride out a
/// receiver's deploy, an outage of an afternoon, or a long weekend-night incident.
pub const DEFAULT_RETRY_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";

/// Default jitter: each wait is moved by up to ±20 %.
pub const DEFAULT_JITTER: f64 = 0.2;

/// The waits between delivery attempts, plus random jitter.
///
/// Jitter exists because failures are correlated: when a receiver is down for an
/// hour, every delivery that failed during that hour would otherwise be retried on
/// the same fixed offsets and arrive in one burst the moment it comes back (a
/// thundering herd that can knock it over again). Spreading each wait by a random
/// ±`jitter` fraction smooths that burst out across the retry window.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    jitter: f64,
}

/// Why a retry schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryScheduleError {
    #[error("retry schedule is empty (expected a comma-separated list such as \"5s,5m,30m,2h\")")]
    Empty,
    #[error("retry schedule entry {position} ({entry:?}): {reason}")]
    InvalidEntry {
        /// 1-based position of the entry in the comma-separated list.
        position: usize,
        entry: String,
        reason: String,
    },
    #[error("retry schedule has {count} waits; at most {MAX_ENTRIES} are allowed")]
    TooManyEntries { count: usize },
    #[error("retry jitter must be a number in 0.0..1.0, got {0}")]
    InvalidJitter(String),
}

impl Default for RetrySchedule {
    /// [`DEFAULT_RETRY_SCHEDULE`]: eight attempts spread over about 28 hours, so a
    /// receiver that is down for a day still gets its events.
    fn default() -> Self {
        DEFAULT_RETRY_SCHEDULE
            .parse()
            .expect("the default schedule is valid")
    }
}

// Jitter is checked to be a finite number in 0.0..1.0, never NaN, so equality is total.
impl Eq for RetrySchedule {}

impl RetrySchedule {
    /// A schedule with the given waits (entry `i` is the wait before attempt `i + 2`)
    /// and jitter fraction (`0.2` moves each wait by up to ±20 %).
    pub(crate) fn new(delays: Vec<Duration>, jitter: f64) -> Result<Self, RetryScheduleError> {
        if delays.len() > MAX_ENTRIES {
            return Err(RetryScheduleError::TooManyEntries {
                count: delays.len(),
            });
        }
        if let Some((index, delay)) = delays.iter().enumerate().find(|(_, d)| **d > MAX_DELAY) {
            return Err(RetryScheduleError::InvalidEntry {
                position: index + 1,
                entry: crate::duration::format(*delay),
                reason: format!(
                    "longer than the maximum of {}",
                    crate::duration::format(MAX_DELAY)
                ),
            });
        }
        check_jitter(jitter)?;
        Ok(Self { delays, jitter })
    }

    /// The same waits with another jitter fraction (`0.0` disables jitter).
    #[cfg(test)]
    pub(crate) fn with_jitter(mut self, jitter: f64) -> Result<Self, RetryScheduleError> {
        check_jitter(jitter)?;
        self.jitter = jitter;
        Ok(self)
    }

    /// How many attempts a delivery gets in all, the first one included.
    #[cfg(test)]
    pub(crate) fn max_attempts(&self) -> u32 {
        // `new` caps the length at MAX_ENTRIES, so this cannot truncate.
        u32::try_from(self.delays.len()).map_or(u32::MAX, |n| n.saturating_add(1))
    }

    /// The waits without jitter.
    #[cfg(test)]
    pub(crate) fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// The jitter fraction.
    #[cfg(test)]
    pub(crate) fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The wait before the next attempt, once `attempts_made` attempts have failed,
    /// with jitter applied; `None` when no tries remain. Zero attempts made means the
    /// first attempt, which is due at once.
    pub(crate) fn next_delay(&self, attempts_made: u32) -> Option<Duration> {
        self.next_delay_with_rng(attempts_made, &mut rand::thread_rng())
    }

    /// [`next_delay`](Self::next_delay) drawing the jitter from `rng`, so tests can
    /// seed it and get reproducible waits.
    pub(crate) fn next_delay_with_rng<R: Rng + ?Sized>(
        &self,
        attempts_made: u32,
        rng: &mut R,
    ) -> Option<Duration> {
        let base = self.base_delay(attempts_made)?;
        if self.jitter == 0.0 || base.is_zero() {
            return Some(base);
        }
        Some(apply_jitter(base, self.jitter, rng.gen_range(-1.0..=1.0)))
    }

    /// The wait before the next attempt without jitter; `None` when no tries remain.
    pub(crate) fn base_delay(&self, attempts_made: u32) -> Option<Duration> {
        match attempts_made {
            0 => Some(Duration::ZERO),
            n => self.delays.get(usize::try_from(n - 1).ok()?).copied(),
        }
    }
}

fn check_jitter(jitter: f64) -> Result<(), RetryScheduleError> {
    // Below 1.0 so that a jittered wait can never reach zero and collapse the
    // schedule into an immediate retry.
    if jitter.is_finite() && (0.0..1.0).contains(&jitter) {
        Ok(())
    } else {
        Err(RetryScheduleError::InvalidJitter(jitter.to_string()))
    }
}

/// Scales `base` by `1 + unit * jitter`, where `unit` is in `-1.0..=1.0`.
fn apply_jitter(base: Duration, jitter: f64, unit: f64) -> Duration {
    let factor = 1.0 + unit.clamp(-1.0, 1.0) * jitter;
    // `base` is at most MAX_DELAY and `factor` below 2, so this stays far inside
    // the range `Duration::from_secs_f64` accepts.
    Duration::from_secs_f64(base.as_secs_f64() * factor)
}

impl FromStr for RetrySchedule {
    type Err = RetryScheduleError;

    /// Parses the comma-separated format described in the module documentation.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(RetryScheduleError::Empty);
        }
        let mut delays = Vec::new();
        for (index, raw) in s.split(',').enumerate() {
            let entry = raw.trim();
            let invalid = |reason: String| RetryScheduleError::InvalidEntry {
                position: index + 1,
                entry: entry.to_owned(),
                reason,
            };
            let delay = if entry.eq_ignore_ascii_case("immediately") {
                if index != 0 {
                    return Err(invalid(
                        "\"immediately\" may only stand first, for the first attempt".into(),
                    ));
                }
                Duration::ZERO
            } else {
                if entry.is_empty() {
                    return Err(invalid(
                        "empty entry (two commas in a row, or a trailing comma?)".into(),
                    ));
                }
                crate::duration::parse(entry).map_err(invalid)?
            };
            if delay > MAX_DELAY {
                return Err(invalid(format!(
                    "longer than the maximum of {}",
                    crate::duration::format(MAX_DELAY)
                )));
            }
            // A leading zero is the first attempt, which is always immediate.
            if index == 0 && delay.is_zero() {
                continue;
            }
            delays.push(delay);
            if delays.len() > MAX_ENTRIES {
                return Err(RetryScheduleError::TooManyEntries {
                    count: s.split(',').count(),
                });
            }
        }
        Self::new(delays, DEFAULT_JITTER)
    }
}

impl fmt::Display for RetrySchedule {
    /// The schedule in the text format, so configuration can be logged and parsed
    /// back. Jitter is not part of the text format and is not written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.delays.is_empty() {
            return f.write_str("immediately");
        }
        for (i, delay) in self.delays.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&crate::duration::format(*delay))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_schedule_has_eight_attempts() {
        let s = RetrySchedule::default();
        assert_eq!(s.max_attempts(), 8);
        assert_eq!(s.base_delay(0), Some(Duration::ZERO));
        assert_eq!(s.base_delay(1), Some(secs(5)));
        assert_eq!(s.base_delay(2), Some(secs(300)));
        assert_eq!(s.base_delay(3), Some(secs(1800)));
        assert_eq!(s.base_delay(4), Some(secs(7200)));
        assert_eq!(s.base_delay(5), Some(secs(18000)));
        assert_eq!(s.base_delay(6), Some(secs(36000)));
        assert_eq!(s.base_delay(7), Some(secs(36000)));
        assert_eq!(s.base_delay(8), None);
        assert_eq!(s.next_delay(8), None);
        assert_eq!(s.base_delay(u32::MAX), None);
        assert_eq!(s.jitter(), DEFAULT_JITTER);
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let s = RetrySchedule::default();
        let mut rng = StdRng::seed_from_u64(7);
        let base = secs(1800);
        let (lo, hi) = (base.mul_f64(0.8), base.mul_f64(1.2));
        let mut below = 0;
        let mut above = 0;
        for _ in 0..1000 {
            let d = s.next_delay_with_rng(3, &mut rng).expect("attempts remain");
            assert!(d >= lo && d <= hi, "{d:?} outside {lo:?}..={hi:?}");
            if d < base {
                below += 1;
            } else if d > base {
                above += 1;
            }
        }
        // A uniform draw lands on each side roughly half the time.
        assert!(below > 300 && above > 300, "below={below} above={above}");
    }

    #[test]
    fn seeded_rng_gives_reproducible_delays() {
        let s = RetrySchedule::default();
        let a: Vec<_> = {
            let mut rng = StdRng::seed_from_u64(42);
            (1..8).map(|n| s.next_delay_with_rng(n, &mut rng)).collect()
        };
        let b: Vec<_> = {
            let mut rng = StdRng::seed_from_u64(42);
            (1..8).map(|n| s.next_delay_with_rng(n, &mut rng)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().all(Option::is_some));
    }

    #[test]
    fn apply_jitter_extremes() {
        let base = secs(100);
        assert_eq!(apply_jitter(base, 0.2, -1.0), secs(80));
        assert_eq!(apply_jitter(base, 0.2, 1.0), secs(120));
        assert_eq!(apply_jitter(base, 0.2, 0.0), secs(100));
        // Out-of-range units are clamped rather than stretching the window.
        assert_eq!(apply_jitter(base, 0.2, 5.0), secs(120));
    }

    #[test]
    fn first_attempt_and_zero_jitter_are_exact() {
        let s = RetrySchedule::default();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(s.next_delay_with_rng(0, &mut rng), Some(Duration::ZERO));
        let fast =
            RetrySchedule::new([50, 100, 200].map(Duration::from_millis).to_vec(), 0.0).unwrap();
        assert_eq!(fast.max_attempts(), 4);
        assert_eq!(fast.next_delay(1), Some(Duration::from_millis(50)));
        assert_eq!(fast.next_delay(2), Some(Duration::from_millis(100)));
        assert_eq!(fast.next_delay(3), Some(Duration::from_millis(200)));
        assert_eq!(fast.next_delay(4), None);
    }

    #[test]
    fn parses_full_timeline_and_retry_only_forms_alike() {
        let a: RetrySchedule = "0s,5s,5m,30m,2h,5h,10h,10h".parse().unwrap();
        let b: RetrySchedule = "5s,5m,30m,2h,5h,10h,10h".parse().unwrap();
        let c: RetrySchedule = " immediately , 5s ,5m,30m,2h,5h,10h,10h ".parse().unwrap();
        let d: RetrySchedule = "0,5s,5m,30m,2h,5h,10h,10h".parse().unwrap();
        assert_eq!(a, RetrySchedule::default());
        assert_eq!(b, RetrySchedule::default());
        assert_eq!(c, RetrySchedule::default());
        assert_eq!(d, RetrySchedule::default());
    }

    #[test]
    fn parses_milliseconds_and_inner_zeros() {
        let s: RetrySchedule = "10ms,20ms".parse().unwrap();
        assert_eq!(
            s.delays(),
            &[Duration::from_millis(10), Duration::from_millis(20)]
        );
        assert_eq!(s.max_attempts(), 3);
        let s: RetrySchedule = "0s,0s,1s".parse().unwrap();
        assert_eq!(s.delays(), &[Duration::ZERO, secs(1)]);
        let single: RetrySchedule = "immediately".parse().unwrap();
        assert_eq!(single.max_attempts(), 1);
        assert_eq!(single.next_delay(1), None);
    }

    #[test]
    fn entries_read_the_grammar_of_every_duration_flag() {
        let s: RetrySchedule = "1h30m,1d".parse().unwrap();
        assert_eq!(s.delays(), &[secs(5400), secs(86_400)]);
        assert_eq!(s.to_string(), "1h30m,1d");
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "5s,5m,30m,2h,5h,10h,10h",
            "10ms,1s500ms,1m30s",
            "immediately",
        ] {
            let s: RetrySchedule = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
            assert_eq!(s.to_string().parse::<RetrySchedule>().unwrap(), s);
        }
        let fast = RetrySchedule::new([50, 100, 200].map(Duration::from_millis).to_vec(), 0.0);
        assert_eq!(fast.unwrap().to_string(), "50ms,100ms,200ms");
    }

    #[test]
    fn parse_errors_name_the_entry_and_the_problem() {
        let err = |s: &str| s.parse::<RetrySchedule>().unwrap_err().to_string();
        assert!(err("").contains("empty"), "{}", err(""));
        assert!(err("  ").contains("empty"));
        let e = err("5s,5x");
        assert!(
            e.contains("entry 2") && e.contains("unknown unit \"x\""),
            "{e}"
        );
        let e = err("5s,,5m");
        assert!(e.contains("entry 2") && e.contains("empty entry"), "{e}");
        let e = err("5");
        assert!(e.contains("missing unit"), "{e}");
        let e = err("-5s");
        assert!(e.contains("whole number"), "{e}");
        let e = err("1.5s");
        assert!(e.contains("unknown unit"), "{e}");
        let e = err("5s,immediately");
        assert!(e.contains("may only stand first"), "{e}");
        let e = err("99999999999999999999s");
        assert!(e.contains("too large"), "{e}");
        let e = err("18446744073709551615h");
        assert!(e.contains("too large"), "{e}");
        let e = err("5s,200h");
        assert!(e.contains("entry 2") && e.contains("maximum of 7d"), "{e}");
        let long = vec!["1s"; MAX_ENTRIES + 1].join(",");
        assert!(err(&long).contains("at most 100"), "{}", err(&long));
        let max = vec!["1s"; MAX_ENTRIES].join(",");
        assert_eq!(max.parse::<RetrySchedule>().unwrap().delays().len(), 100);
    }

    #[test]
    fn constructor_validates_jitter_and_delays() {
        assert!(RetrySchedule::new(vec![secs(1)], 0.5).is_ok());
        assert!(RetrySchedule::new(vec![secs(1)], 1.0).is_err());
        assert!(RetrySchedule::new(vec![secs(1)], -0.1).is_err());
        assert!(RetrySchedule::new(vec![secs(1)], f64::NAN).is_err());
        assert!(RetrySchedule::new(vec![MAX_DELAY + secs(1)], 0.0).is_err());
        let s = RetrySchedule::default().with_jitter(0.0).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(s.next_delay_with_rng(1, &mut rng), Some(secs(5)));
        assert!(RetrySchedule::default().with_jitter(2.0).is_err());
    }
}
