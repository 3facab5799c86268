//! Rate limits across processes: each webhook with a `rate_limit` keeps, in its row,
//! the earliest instant its next delivery may be sent (`rate_next`, the theoretical
//! arrival time of a generic cell rate algorithm without burst). A process that has
//! claimed deliveries for it takes send slots one interval apart from there, in one
//! write transaction holding the row, so the slots of all processes interleave and
//! never come closer than the interval. Only slots within `horizon` are taken; the
//! deliveries that get none go back to the queue, due when the next slot is.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Type};
use uuid::Uuid;

use super::common::{Column, Dialect, Tables};
use super::rows::{opt, Micros};
use super::{add_duration, now_micros, StoreResult};

/// The send slots one call took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSlots {
    /// One instant per delivery that may go, in order, the first no earlier than now.
    pub granted: Vec<DateTime<Utc>>,
    /// When the next slot is free, for the deliveries that got none.
    pub next_free: DateTime<Utc>,
}

/// The interval between two deliveries at `per_second`.
fn interval(per_second: i64) -> Duration {
    Duration::from_secs(1) / u32::try_from(per_second.clamp(1, 1_000_000)).unwrap_or(1)
}

/// Slots one `interval` apart from `next` (no earlier than `now`), as many as `wanted`
/// within `now + horizon`; returns them and the instant after the last.
fn slots(
    next: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    per_second: i64,
    wanted: usize,
    horizon: Duration,
) -> SendSlots {
    let step = interval(per_second);
    let until = add_duration(now, horizon);
    let mut at = next.map_or(now, |next| next.max(now));
    let mut granted = Vec::new();
    while granted.len() < wanted && at <= until {
        granted.push(at);
        at = add_duration(at, step);
    }
    SendSlots {
        granted,
        next_free: at,
    }
}

// The bounds are those of the impl of `Tables` in `common`.
impl<DB: Dialect> Tables<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    Uuid: Column<DB>,
    Micros: Column<DB>,
    for<'q> Option<Micros>: Encode<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    Option<Micros>: for<'r> sqlx::Decode<'r, DB> + Type<DB>,
{
    /// Takes up to `wanted` send slots of webhook `webhook_id` at `per_second`.
    pub async fn take_send_slots(
        &self,
        webhook_id: Uuid,
        per_second: i64,
        wanted: usize,
        horizon: Duration,
    ) -> StoreResult<SendSlots> {
        let now = now_micros();
        let mut tx = DB::begin_write(&self.write).await?;
        let next: Option<Option<Micros>> = sqlx::query_scalar(&format!(
            "SELECT rate_next FROM webhooks WHERE id = $1{}",
            DB::FOR_UPDATE
        ))
        .bind(webhook_id)
        .fetch_optional(&mut *tx)
        .await?;
        let taken = slots(
            next.flatten().map(|m| m.0),
            now,
            per_second,
            wanted,
            horizon,
        );
        if !taken.granted.is_empty() {
            sqlx::query("UPDATE webhooks SET rate_next = $1 WHERE id = $2")
                .bind(opt(Some(taken.next_free)))
                .bind(webhook_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(taken)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn slots_are_one_interval_apart_within_the_horizon() {
        let taken = slots(None, at(0), 20, 100, Duration::from_secs(1));
        // 0, 50, ..., 1000 ms: 21 slots reach the horizon.
        assert_eq!(taken.granted.len(), 21);
        assert_eq!(taken.granted[1], at(50));
        assert_eq!(taken.next_free, at(1050));
        let few = slots(None, at(0), 20, 3, Duration::from_secs(1));
        assert_eq!(few.granted, vec![at(0), at(50), at(100)]);
        assert_eq!(few.next_free, at(150));
    }

    #[test]
    fn slots_go_on_from_the_last_taken_and_never_before_now() {
        let later = slots(Some(at(400)), at(100), 10, 2, Duration::from_secs(1));
        assert_eq!(later.granted, vec![at(400), at(500)]);
        let stale = slots(Some(at(-5_000)), at(0), 10, 1, Duration::from_secs(1));
        assert_eq!(stale.granted, vec![at(0)]);
        let full = slots(Some(at(3_000)), at(0), 10, 5, Duration::from_secs(1));
        assert!(full.granted.is_empty());
        assert_eq!(full.next_free, at(3_000));
    }
}
