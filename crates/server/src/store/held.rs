//! An ordered webhook's queue behind its head, held out of the due range.
//!
//! Of an ordered webhook's pending deliveries only the head (the first by event id)
//! can be claimed. Left due, the rest sit among the due rows that every claim and
//! every next-due read walks in due order, each one rejected by the ordering rule
//! in turn: one tenant's ordered backlog of 20,000 made every claim of every tenant
//! read 20,000 rows. So a delivery that goes in behind an earlier pending one of an
//! ordered webhook is due at [`held`], past every real instant, and the claim's
//! range never reaches it; whoever lets a new head through wakes it.
//!
//! Holding is only ever an optimisation, never what keeps the order (the claim's
//! ordering rule does that): a held delivery is one nobody may claim anyway, and a
//! delivery left due that could have been held costs one row of a walk. What must
//! never happen is a head left held. Heads change when a head finishes (the
//! recorder wakes the next), when a delivery goes in ahead of the head (it is not
//! held, having nothing earlier), and when ordering is switched off (the upsert
//! wakes them all). On PostgreSQL two writers can miss each other's uncommitted
//! rows (a publish holds a delivery behind a head that a recorder is finishing), so
//! there every writer that held or finished something wakes again after its commit:
//! of any two, the later to commit sees both. What a crash between a commit and
//! that wake leaves held, the worker's sweep ([`wake_sql`]) wakes.
//!
//! Operator events (store/operator.rs) go in due, never held: they are few, and
//! they go in inside other writers' transactions, each of which would then owe a
//! wake after its commit.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Database, Executor, IntoArguments, Pool};
use uuid::Uuid;

use super::common::Column;
use super::rows::Micros;
use super::{DeliveryOutcome, StoreResult};

/// The instant a held delivery is due at: later than any real one, so every range
/// that ends at "now" leaves it out.
pub(crate) fn held() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Where a delivery goes in: the SQL expressions for whether its webhook is ordered,
/// the webhook's id, the event's id, the delivery's id, and the instants "now" and
/// [`held`].
pub(crate) struct Incoming<'a> {
    pub ordered: &'a str,
    pub webhook: &'a str,
    pub event: &'a str,
    pub delivery: &'a str,
    pub now: &'a str,
    pub held: &'a str,
    /// Of a multi-row insert selecting from the rows `v` (columns `eid`, `did`, `pid`,
    /// `et`): whether to look for earlier rows of the same webhook among them too,
    /// which the statement's own reads of the table do not see.
    pub batch: bool,
}

impl Incoming<'_> {
    /// The delivery's first `next_attempt_at`: `held` behind an earlier pending
    /// delivery of an ordered webhook, else `now`. The earlier one is found in the
    /// webhook's queue index, from its start.
    pub fn first_due(&self) -> String {
        let Incoming {
            ordered,
            webhook,
            event,
            delivery,
            now,
            held,
            batch,
        } = self;
        let sibling = if *batch {
            " OR EXISTS (SELECT 1 FROM v s WHERE s.pid = v.pid AND s.et = v.et \
                 AND (s.eid < v.eid OR (s.eid = v.eid AND s.did < v.did)))"
        } else {
            ""
        };
        format!(
            "CASE WHEN {ordered} AND (EXISTS (SELECT 1 FROM deliveries p \
                 WHERE p.webhook_id = {webhook} AND p.status = 'pending' \
                   AND (p.event_id < {event} OR (p.event_id = {event} AND p.id < {delivery}))){sibling}) \
             THEN {held} ELSE {now} END"
        )
    }

    /// For one delivery selected from the webhooks table as `w`.
    pub fn from_webhook<'a>(
        event: &'a str,
        delivery: &'a str,
        now: &'a str,
        held: &'a str,
    ) -> Incoming<'a> {
        Incoming {
            ordered: "w.ordered",
            webhook: "w.id",
            event,
            delivery,
            now,
            held,
            batch: false,
        }
    }

    /// For the deliveries of a batch of rows `v` joined to the webhooks table as `w`.
    pub fn batch<'a>(now: &'a str, held: &'a str) -> Incoming<'a> {
        Incoming {
            batch: true,
            ..Incoming::from_webhook("v.eid", "v.did", now, held)
        }
    }
}

/// The id of the head of the webhook whose id is `webhook` (an SQL expression),
/// whatever its due time.
fn head_of(webhook: &str) -> String {
    format!(
        "(SELECT h.id FROM deliveries h WHERE h.webhook_id = {webhook} \
             AND h.status = 'pending' ORDER BY h.event_id, h.id LIMIT 1)"
    )
}

/// Wakes webhook `$2`'s head if it is held (`$1` now, `$3` [`held`]).
pub(crate) fn wake_head_sql() -> String {
    format!(
        "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1 \
         WHERE id = {} AND status = 'pending' AND next_attempt_at >= $3",
        head_of("$2")
    )
}

/// Wakes everything webhook `$2` holds if it is no longer ordered. When it is, the
/// subquery is empty and nothing is read.
pub(crate) const WAKE_UNORDERED: &str =
    "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1 \
     WHERE webhook_id IN (SELECT id FROM webhooks WHERE id = $2 AND NOT ordered) \
       AND status = 'pending' AND next_attempt_at >= $3";

/// Holds what ordered webhook `$2` has due now behind its head (`$1` now, `$3`
/// [`held`]): what was queued before ordering was switched on. Deliveries already
/// tried keep their retry time, and leased ones (due at their lease expiry) are left
/// alone.
pub(crate) fn hold_tail_sql() -> String {
    format!(
        "UPDATE deliveries SET next_attempt_at = $3, updated_at = $1 \
         WHERE webhook_id = $2 AND status = 'pending' AND next_attempt_at <= $1 \
           AND attempts_made = 0 AND id <> {} \
           AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = $2 AND w.ordered)",
        head_of("$2")
    )
}

/// The sweep (`$1` now, `$2` [`held`]): wakes the head of every ordered webhook if it
/// is held; `thorough` also wakes whatever an unordered webhook still holds, which
/// reads every held delivery, so it runs once at start.
pub(crate) fn wake_sql(thorough: bool) -> String {
    let heads = format!("SELECT {} FROM webhooks w WHERE w.ordered", head_of("w.id"));
    if thorough {
        format!(
            "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1 \
             WHERE status = 'pending' AND next_attempt_at >= $2 \
               AND (webhook_id IN (SELECT id FROM webhooks WHERE NOT ordered) \
                 OR id IN ({heads}))"
        )
    } else {
        format!(
            "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1 \
             WHERE id IN ({heads}) AND status = 'pending' AND next_attempt_at >= $2"
        )
    }
}

/// Of the webhooks of recorded `outcomes` (`live`: delivery to webhook, for those
/// whose lease still held), the ordered ones whose head just finished: their next
/// delivery, if held, is the one to wake.
pub(crate) fn finished_heads(
    outcomes: &[DeliveryOutcome],
    live: &BTreeMap<Uuid, Uuid>,
    ordered: &BTreeSet<Uuid>,
) -> BTreeSet<Uuid> {
    outcomes
        .iter()
        .filter(|o| o.retry_at.is_none())
        .filter_map(|o| live.get(&o.delivery_id))
        .filter(|webhook| ordered.contains(webhook))
        .copied()
        .collect()
}

/// What a wake after a commit wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The webhook's head, if held.
    Head,
    /// The head, and everything if the webhook is no longer ordered.
    All,
}

/// The writes of this module, on either backend: `Queue::<Sqlite>::wake_head(..)`.
pub(crate) struct Queue<DB>(PhantomData<DB>);

impl<DB> Queue<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    Uuid: Column<DB>,
    Micros: Column<DB>,
{
    /// The wake a PostgreSQL writer owes after its commit (see the module docs), for
    /// each of `webhooks`. What it wrote is committed whatever this does, so a
    /// failure is logged and left to the sweep rather than reported: a caller would
    /// retry a write that is already stored.
    pub async fn after_commit(
        pool: &Pool<DB>,
        webhooks: impl IntoIterator<Item = Uuid>,
        now: DateTime<Utc>,
        wake_what: Wake,
    ) {
        let mut webhooks = webhooks.into_iter().peekable();
        if webhooks.peek().is_none() {
            return;
        }
        let woken = async {
            let mut conn = pool.acquire().await?;
            for webhook in webhooks {
                match wake_what {
                    Wake::Head => Self::wake_head(&mut conn, webhook, now).await?,
                    Wake::All => Self::wake(&mut conn, webhook, now).await?,
                }
            }
            StoreResult::Ok(())
        };
        if let Err(e) = woken.await {
            tracing::warn!(error = %e, "waking held deliveries after a commit failed; the sweep will");
        }
    }

    /// Wakes what `webhook` must not hold: its head, and everything if it is no
    /// longer ordered.
    pub async fn wake(
        conn: &mut DB::Connection,
        webhook: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        Self::wake_head(conn, webhook, now).await?;
        Self::run(conn, WAKE_UNORDERED, webhook, now).await
    }

    /// Wakes `webhook`'s head if it is held.
    pub async fn wake_head(
        conn: &mut DB::Connection,
        webhook: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        Self::run(conn, &wake_head_sql(), webhook, now).await
    }

    /// After an upsert of `webhook`: an ordered one holds its tail, an unordered one
    /// holds nothing.
    pub async fn settle(
        conn: &mut DB::Connection,
        webhook: Uuid,
        ordered: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        if ordered {
            Self::run(conn, &hold_tail_sql(), webhook, now).await
        } else {
            Self::run(conn, WAKE_UNORDERED, webhook, now).await
        }
    }

    async fn run(
        conn: &mut DB::Connection,
        sql: &str,
        webhook: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(sql)
            .bind(Micros(now))
            .bind(webhook)
            .bind(Micros(held()))
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_is_past_every_instant_the_service_writes() {
        let held = held();
        assert_eq!(held.to_rfc3339(), "9999-01-01T00:00:00+00:00");
        // The furthest a retry or a lease is ever scheduled is years, not millennia.
        assert!(held > Utc::now() + chrono::Duration::days(365 * 1000));
    }
}
