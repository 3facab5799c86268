//! Rate limits across processes: each webhook with a `rate_limit` keeps, in its row,
//! the earliest instant its next delivery may be sent (`rate_next`, the theoretical
//! arrival time of a generic cell rate algorithm without burst). A process that has
//! claimed deliveries for it takes send slots one interval apart from there, in one
//! write transaction holding the row, so the slots of all processes interleave and
//! never come closer than the interval. Only slots within `horizon` are taken. The
//! deliveries that get none go back to the queue each due at its expected turn: the
//! row also keeps where the queue of waiting deliveries ends (`rate_wait`), so they
//! come due about one interval apart rather than all at once, to be claimed and put
//! back again and again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Type};
use uuid::Uuid;

use super::common::{Column, Dialect, Tables};
use super::rows::{opt, Micros};
#[cfg(doc)]
use super::WebhookStore;
use super::{add_duration, now_micros, StoreResult};

/// The send slots one call took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSlots {
    /// One instant per delivery that may go, in order, the first no earlier than now.
    pub granted: Vec<DateTime<Utc>>,
    /// When the next slot is free.
    pub next_free: DateTime<Utc>,
    /// For each delivery that got no slot, in order, when it is due again: its turn
    /// behind those already waiting.
    pub turns: Vec<DateTime<Utc>>,
}

/// The interval between two deliveries at `per_second`.
fn interval(per_second: i64) -> Duration {
    Duration::from_secs(1) / u32::try_from(per_second.clamp(1, 1_000_000)).unwrap_or(1)
}

/// Slots one `interval` apart from `next` (no earlier than `now`), as many as `wanted`
/// within `now + horizon`; the rest get turns one interval apart from the end of the
/// waiting queue `wait` (no earlier than the next free slot).
fn slots(
    (next, wait): (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
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
    let mut turn = wait.map_or(at, |wait| wait.max(at));
    let turns = (granted.len()..wanted)
        .map(|_| {
            let this = turn;
            turn = add_duration(turn, step);
            this
        })
        .collect();
    SendSlots {
        granted,
        next_free: at,
        turns,
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
        let row: Option<(Option<Micros>, Option<Micros>)> = sqlx::query_as(&format!(
            "SELECT rate_next, rate_wait FROM webhooks WHERE id = $1{}",
            DB::FOR_UPDATE
        ))
        .bind(webhook_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (next, wait) = row.unwrap_or((None, None));
        let taken = slots(
            (next.map(|m| m.0), wait.map(|m| m.0)),
            now,
            per_second,
            wanted,
            horizon,
        );
        let wait_end = taken
            .turns
            .last()
            .map(|last| add_duration(*last, interval(per_second)));
        sqlx::query(
            "UPDATE webhooks SET rate_next = $1, rate_wait = COALESCE($2, rate_wait) WHERE id = $3",
        )
        .bind(opt(Some(taken.next_free)))
        .bind(opt(wait_end))
        .bind(webhook_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(taken)
    }
}

/// Claims handed back per statement (three bound values each).
const RELEASE_CHUNK: usize = 256;

// The bounds are those of the impl of `Tables` in `common`.
impl<DB: Dialect> Tables<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    Uuid: Column<DB>,
    Micros: Column<DB>,
{
    /// Hands claimed deliveries back, each due at its own instant, a multi-row
    /// statement at a time (see [`WebhookStore::release_each`]).
    pub async fn release_each(&self, claims: &[(Uuid, Uuid, DateTime<Utc>)]) -> StoreResult<()> {
        let now = Micros(now_micros());
        for chunk in claims.chunks(RELEASE_CHUNK) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${}, ${})", 2 + 3 * i, 3 + 3 * i, 4 + 3 * i))
                .collect();
            let sql = format!(
                "UPDATE deliveries SET lease_token = NULL, lease_expires_at = NULL, \
                     next_attempt_at = u.column3, updated_at = $1 \
                 FROM (VALUES {}) AS u \
                 WHERE deliveries.id = u.column1 AND deliveries.lease_token = u.column2 \
                   AND deliveries.status = 'pending'",
                rows.join(", ")
            );
            let mut update = sqlx::query(&sql).bind(now);
            for (delivery, token, due) in chunk {
                update = update.bind(*delivery).bind(*token).bind(Micros(*due));
            }
            update.execute(&self.write).await?;
        }
        Ok(())
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
        let taken = slots((None, None), at(0), 20, 100, Duration::from_secs(1));
        // 0, 50, ..., 1000 ms: 21 slots reach the horizon; the other 79 wait their turn.
        assert_eq!(taken.granted.len(), 21);
        assert_eq!(taken.granted[1], at(50));
        assert_eq!(taken.next_free, at(1050));
        assert_eq!(taken.turns.len(), 79);
        assert_eq!(taken.turns[0], at(1050));
        assert_eq!(taken.turns[1], at(1100));
        let few = slots((None, None), at(0), 20, 3, Duration::from_secs(1));
        assert_eq!(few.granted, vec![at(0), at(50), at(100)]);
        assert_eq!(few.next_free, at(150));
        assert!(few.turns.is_empty());
    }

    #[test]
    fn slots_go_on_from_the_last_taken_and_never_before_now() {
        let second = Duration::from_secs(1);
        let later = slots((Some(at(400)), None), at(100), 10, 2, second);
        assert_eq!(later.granted, vec![at(400), at(500)]);
        let stale = slots((Some(at(-5_000)), None), at(0), 10, 1, second);
        assert_eq!(stale.granted, vec![at(0)]);
        let full = slots((Some(at(3_000)), None), at(0), 10, 2, second);
        assert!(full.granted.is_empty());
        assert_eq!(full.next_free, at(3_000));
        assert_eq!(full.turns, vec![at(3_000), at(3_100)]);
    }

    #[test]
    fn waiting_deliveries_queue_behind_those_already_waiting() {
        let second = Duration::from_secs(1);
        // 40 s of deliveries already wait: the next ones come after them.
        let taken = slots((Some(at(2_000)), Some(at(40_000))), at(0), 10, 2, second);
        assert!(taken.granted.is_empty());
        assert_eq!(taken.turns, vec![at(40_000), at(40_100)]);
        // A queue that has drained since counts from the next free slot.
        let drained = slots((Some(at(2_000)), Some(at(-9_000))), at(0), 10, 1, second);
        assert_eq!(drained.turns, vec![at(2_000)]);
    }
}
