//! The scale-out backend: several server processes share one PostgreSQL database.
//!
//! Correctness under concurrency rests on three things:
//! - claiming is one statement that picks rows with `FOR NO KEY UPDATE SKIP LOCKED` and
//!   leases them, so no delivery is handed to two live workers, and claimers never
//!   wait for each other;
//! - every transaction that touches both a webhook and its deliveries locks the webhook
//!   row first (and several webhooks in id order), so they cannot deadlock;
//! - instants come from the server's clock, like the retry times the workers compute,
//!   so one clock decides both when a delivery is due and when a lease expires.
//!
//! Migrations run at connect under sqlx's migrator, which holds a session-level
//! `pg_advisory_lock` (keyed on the database name) for the whole run: processes that
//! start together apply them one at a time, and the later ones find nothing to do.
//!
//! The statements both backends share are in [`super::common`]; this file holds the
//! ones that differ.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgQueryResult};
use sqlx::{FromRow, Pool, Postgres, Row, Transaction};
use uuid::Uuid;

use super::common::{claimable, next_due_query, BackendOps, Dialect, Tables};
use super::group_commit::{Committer, GroupCommit, PublishJob};
use super::held::{self, held, Incoming, Queue, Wake};
use super::rows::{ClaimedRow, StreakRow, WebhookRow, ATTEMPT_COLUMNS, WEBHOOK_COLUMNS};
use super::{
    add_duration, batch_event_ids, now_micros, status_after, truncate_micros, v7_at, Attempt,
    AttemptTrigger, ClaimFrom, ClaimedDelivery, DeliveryOutcome, DisablePolicy, FailureStreak,
    NextDue, PublishEvent, Published, Recorded, RetentionLock, StoreError, StoreResult,
    UpsertOutcome, UpsertWebhook, Webhook,
};

/// The advisory lock of retention, so one process at a time purges: this key ("sonz")
/// with the schema's name hashed as the second, so deployments in separate schemas of
/// one database do not wait on each other.
pub(crate) const RETENTION_LOCK: i32 = 0x736f_6e7a;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Default pool size: enough for the API handlers and the delivery workers of one
/// process, small enough that a few processes stay well under PostgreSQL's default
/// `max_connections` (100).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// How many times publishing retries when a concurrent publish with the same
/// idempotency key interferes (each retry follows a committed change by another
/// caller, so more than a couple means something is badly wrong).
const PUBLISH_ATTEMPTS: usize = 3;

/// The PostgreSQL implementation of [`super::WebhookStore`].
#[derive(Debug, Clone)]
pub struct PgStore {
    /// One pool, for reads and writes alike.
    tables: Tables<Postgres>,
    /// Publishes without an idempotency key go through the group commit
    /// ([`super::group_commit`]).
    publisher: GroupCommit,
}

/// A pooled connection idle this long is checked before it is used again.
pub(crate) const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

impl PgStore {
    /// Connects to `url` (`postgres://...`) with [`DEFAULT_MAX_CONNECTIONS`] and runs
    /// the embedded migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?, DEFAULT_MAX_CONNECTIONS).await
    }

    /// Connects with explicit options (e.g. a `search_path`, which is how the tests
    /// isolate themselves in one database) and pool size, and runs the migrations.
    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> StoreResult<Self> {
        // Migrate through a dedicated one-connection pool that is closed afterwards:
        // if a migration fails half-way, the migrator's session-level advisory lock
        // goes away with the session instead of staying held by a connection in the
        // main pool. (A pool rather than a bare connection keeps this future `Send`, so
        // connecting can happen inside a spawned task.)
        let migration_pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let migrated = MIGRATOR.run(&migration_pool).await;
        migration_pool.close().await;
        migrated?;

        // No JIT: every statement here is short, and once a big table's estimates push
        // one past jit_above_cost, compiling it costs more than running it.
        let options = options.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            // sqlx checks every connection it hands out with a round trip to its
            // backend: one more per publish batch, claim and outcome. A connection in
            // use a moment ago is alive as far as any check can tell; one that sat
            // idle (through a database restart, say) is still checked, and replaced
            // if it is gone.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    use sqlx::Connection as _;
                    if meta.idle_for >= CHECK_IDLE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        let publisher = GroupCommit::spawn(PgCommitter(pool.clone()));
        Ok(Self {
            tables: Tables::new(pool.clone(), pool),
            publisher,
        })
    }

    /// The underlying pool, for features that need their own connection to the same
    /// database (LISTEN/NOTIFY wake-ups).
    pub fn pool(&self) -> &PgPool {
        &self.tables.write
    }

    /// Closes the pool, waiting for connections in use to come back.
    #[cfg(test)]
    pub async fn close(&self) {
        self.tables.write.close().await;
    }
}

// PostgreSQL must be told an untyped parameter's type; BEGIN is enough, since
// transactions lock the rows they need.
impl Dialect for Postgres {
    const UUID_1_IS_NULL: &'static str = "$1::uuid IS NULL";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const FOR_SHARE: &'static str = " FOR SHARE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn begin_write(pool: &Pool<Postgres>) -> sqlx::Result<Transaction<'static, Postgres>> {
        pool.begin().await
    }
}

impl BackendOps for PgStore {
    type Db = Postgres;

    /// A session lock on a connection taken out of the pool: held while the run
    /// lasts, and let go with the connection if the process dies.
    async fn retention_lock(&self) -> StoreResult<Option<RetentionLock>> {
        let mut connection = self.pool().acquire().await?.detach();
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext(current_schema()))")
                .bind(RETENTION_LOCK)
                .fetch_one(&mut connection)
                .await?;
        if got {
            Ok(Some(RetentionLock {
                connection: Some(connection),
            }))
        } else {
            use sqlx::Connection as _;
            let _ = connection.close().await;
            Ok(None)
        }
    }

    fn tables(&self) -> &Tables<Postgres> {
        &self.tables
    }

    /// Leases up to `max` due deliveries, from `from`, and returns everything needed
    /// to send them.
    async fn claim_from(
        &self,
        from: ClaimFrom<'_>,
        max: usize,
        lease: Duration,
    ) -> StoreResult<(Vec<ClaimedDelivery>, Option<NextDue>)> {
        let now = now_micros();
        let expires = add_duration(now, lease);
        // SKIP LOCKED: rows another claimer is leasing right now are passed over, not
        // waited for. Under READ COMMITTED, a row leased and committed by another
        // claimer after this statement's snapshot is re-checked against the WHERE
        // clause once locked, and dropped because it is no longer due. NO KEY UPDATE
        // (the key is not changed) does not conflict with the key-share locks that
        // inserting attempts takes on the delivery. The EXISTS sub-select locks
        // nothing, so claimers never queue behind a webhook row either.
        // next_attempt_at moves to the lease expiry: the row drops out of the due
        // range while leased and comes back by itself if the lease runs out.
        let (form, projects, share): (_, &[Uuid], _) = match from {
            ClaimFrom::Projects(projects, share) => (ClaimForm::PerProject, projects, Some(share)),
            ClaimFrom::Oldest(skip) => (ClaimForm::Oldest, skip, None),
            ClaimFrom::AllDue(skip) => (ClaimForm::AllDue, skip, None),
        };
        let sql = claim_sql(form);
        let mut query = sqlx::query(&sql)
            .bind(now)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .bind(Uuid::new_v4())
            .bind(expires)
            .bind(projects);
        if let Some(share) = share {
            query = query.bind(i64::try_from(share).unwrap_or(i64::MAX));
        }
        let rows = query.fetch_all(self.pool()).await?;
        // Every row carries the next due time as the claim leaves the queue (the
        // statement's snapshot still has the claimed rows due, so it leaves them out
        // and counts their lease's expiry instead); with no row, nothing is told.
        let mut told = match rows.first() {
            Some(row) => Some(NextDue(
                row.try_get::<Option<DateTime<Utc>>, _>("next_due")?,
            )),
            None => None,
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<Uuid>, _>("id")?.is_some() {
                claimed.push(ClaimedRow::from_row(row)?.into());
            } else if row.try_get::<i64, _>("due_count")? > 0 {
                // None claimed because more were due than fit: what it would tell
                // leaves those out.
                told = None;
            }
        }
        Ok((claimed, told))
    }

    async fn upsert_webhook(&self, input: UpsertWebhook<'_>) -> StoreResult<UpsertOutcome> {
        let mut tx = self.pool().begin().await?;
        // Upserts into one project queue on the project's row, so the count in the
        // statement is not overtaken by a concurrent create (the next statement's
        // snapshot is taken after the lock is granted). NO KEY UPDATE leaves alone the
        // key-share locks that rows referencing the project take, so publishing is never
        // held up.
        sqlx::query("SELECT 1 FROM projects WHERE id = $1 FOR NO KEY UPDATE")
            .bind(input.project_id)
            .execute(&mut *tx)
            .await?;
        let outcome = Tables::<Postgres>::upsert_webhook(&mut *tx, input).await?;
        // An existing webhook's queue follows its ordering; a new one has none, and no
        // publish saw it before this commit.
        let UpsertOutcome::Updated { webhook } = &outcome else {
            tx.commit().await?;
            return Ok(outcome);
        };
        let (webhook, ordered) = (webhook.id, webhook.ordered);
        Queue::<Postgres>::settle(&mut tx, webhook, ordered, now_micros()).await?;
        tx.commit().await?;
        // After the commit, for what a concurrent publish or recorder did meanwhile
        // with the ordering as it was (store/held.rs).
        Queue::<Postgres>::after_commit(self.pool(), [webhook], now_micros(), Wake::All).await;
        Ok(outcome)
    }

    async fn list_webhooks(&self, project_id: Uuid) -> StoreResult<Vec<Webhook>> {
        let rows: Vec<WebhookRow> = sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE project_id = $1 ORDER BY event_type"
        ))
        .bind(project_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(Webhook::from).collect())
    }

    async fn publish_event(&self, event: PublishEvent<'_>) -> StoreResult<Published> {
        if event.idempotency_key.is_none() {
            return self.publisher.publish(event).await;
        }
        publish_one(self.pool(), event).await
    }

    /// Locks the webhooks first, in id order, so recorders cannot deadlock with each
    /// other nor with deletions; attempts and deliveries go in as arrays.
    async fn record_outcomes(
        &self,
        outcomes: &[DeliveryOutcome],
        policy: DisablePolicy,
    ) -> StoreResult<Recorded> {
        let now = now_micros();
        let delivery_ids: Vec<Uuid> = outcomes.iter().map(|o| o.delivery_id).collect();
        let mut tx = self.pool().begin().await?;

        // 1. Lock the webhooks concerned, in id order (ORDER BY runs before the row
        //    locks are taken), before touching any delivery: the same order as
        //    delete_webhook and every other recorder, so recorders cannot deadlock.
        //    By their ids: found through the deliveries, the statement took several
        //    times longer to plan than to run, on every execution.
        let webhook_ids: Vec<Uuid> = outcomes
            .iter()
            .map(|o| o.webhook_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let rows: Vec<StreakRow> = sqlx::query_as(
            "SELECT id, consecutive_failures, first_failure_at, is_active, ordered \
             FROM webhooks WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(&webhook_ids)
        .fetch_all(&mut *tx)
        .await?;
        let ordered: BTreeSet<Uuid> = rows.iter().filter(|r| r.ordered).map(|r| r.id).collect();
        let streaks: BTreeMap<Uuid, FailureStreak> = rows
            .into_iter()
            .map(|r| (r.id, FailureStreak::from(r)))
            .collect();

        // 2. Every attempt is recorded, stale or not. An attempt id already stored is
        //    ignored, so a batch retried after a lost commit acknowledgement is
        //    harmless: its leases are gone by then, so nothing is counted twice either.
        //    One array per column, in ATTEMPT_COLUMNS order.
        // 3. Finish or reschedule the deliveries whose lease still holds.
        //    Both in one statement, one round trip: they write different tables, and
        //    the attempts' foreign keys are checked at its end.
        fn col<'a, T>(o: &'a [DeliveryOutcome], f: impl Fn(&'a Attempt) -> T) -> Vec<T> {
            o.iter().map(|o| f(&o.attempt)).collect()
        }
        let tokens: Vec<Uuid> = outcomes.iter().map(|o| o.lease_token).collect();
        let next_statuses: Vec<&str> = outcomes.iter().map(status_after).collect();
        let retry_at: Vec<Option<DateTime<Utc>>> = outcomes
            .iter()
            .map(|o| o.retry_at.map(truncate_micros))
            .collect();
        let live: Vec<(Uuid, Uuid)> = sqlx::query_as(&format!(
            "WITH recorded AS ( \
                 INSERT INTO attempts ({ATTEMPT_COLUMNS}, \"trigger\") \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], \
                     $5::text[], $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::text[], \
                     $11::bytea[], $12::text[], $13::text[], $14::timestamptz[], $15::text[]) \
                 ON CONFLICT (id) DO NOTHING \
             ) \
             UPDATE deliveries d SET status = u.status, \
                 next_attempt_at = COALESCE(u.retry_at, d.next_attempt_at), \
                 attempts_made = d.attempts_made + 1, \
                 lease_token = NULL, lease_expires_at = NULL, updated_at = $20 \
             FROM UNNEST($16::uuid[], $17::uuid[], $18::text[], $19::timestamptz[]) \
                 AS u(id, lease_token, status, retry_at) \
             WHERE d.id = u.id AND d.lease_token = u.lease_token AND d.status = 'pending' \
             RETURNING d.id, d.webhook_id"
        ))
        .bind(col(outcomes, |a| a.id))
        .bind(col(outcomes, |a| a.delivery_id))
        .bind(col(outcomes, |a| a.event_id))
        .bind(col(outcomes, |a| a.project_id))
        .bind(col(outcomes, |a| a.event_type.as_str()))
        .bind(col(outcomes, |a| a.webhook_url.as_str()))
        .bind(col(outcomes, |a| a.response_code))
        .bind(col(outcomes, |a| a.duration_ms))
        .bind(col(outcomes, |a| a.attempt_number))
        .bind(col(outcomes, |a| a.status.as_str()))
        .bind(col(outcomes, |a| a.request_body.as_slice()))
        .bind(col(outcomes, |a| a.response_body.as_deref()))
        .bind(col(outcomes, |a| a.error_message.as_deref()))
        .bind(col(outcomes, |a| truncate_micros(a.created_at)))
        .bind(col(outcomes, |a| a.trigger.map(AttemptTrigger::as_str)))
        .bind(&delivery_ids)
        .bind(&tokens)
        .bind(&next_statuses)
        .bind(&retry_at)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;

        // 4. Replay the applied attempts into each webhook's streak, in time order.
        let live: BTreeMap<Uuid, Uuid> = live.into_iter().collect();
        let recorded =
            Tables::<Postgres>::replay_streaks(&mut tx, outcomes, &live, &streaks, policy, now)
                .await?;
        tx.commit().await?;
        // After the commit, so a delivery a concurrent publish held behind the head
        // just finished is seen (store/held.rs).
        let heads = held::finished_heads(outcomes, &live, &ordered);
        Queue::<Postgres>::after_commit(self.pool(), heads, now, Wake::Head).await;
        Ok(recorded)
    }

    async fn release(&self, claims: &[(Uuid, Uuid)], due: DateTime<Utc>) -> StoreResult<()> {
        // One autocommit statement per delivery: a release never holds more than one
        // row lock, so it cannot deadlock with a cancellation that updates the same
        // deliveries in another order. Releases are rare (shutdown, a webhook at its
        // in-flight limit), off the hot path.
        let (now, due) = (now_micros(), truncate_micros(due));
        for claim in claims {
            Tables::<Postgres>::release_one(self.pool(), *claim, now, due).await?;
        }
        if due <= now {
            // Tell the other processes the handed-back deliveries are claimable now,
            // instead of at their next idle poll.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(super::notify::CHANNEL)
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }
}

/// One publish in its own statement: the path for publishes with an idempotency key,
/// which need their check, and the fallback when a group commit fails.
async fn publish_one(pool: &PgPool, event: PublishEvent<'_>) -> StoreResult<Published> {
    let since = truncate_micros(event.idempotency_since);
    for _ in 0..PUBLISH_ATTEMPTS {
        let now = now_micros();
        let event_id = v7_at(now);
        // One statement, hence one transaction and one round trip on the hot path.
        // A conflicting idempotency key inserts nothing (and so no delivery); the
        // unique index makes a concurrent publisher with the same key wait for
        // this one and then see the conflict. (project, event type) names at most
        // one webhook, so one pre-generated delivery id suffices.
        let due = Incoming::from_webhook("ev.id", "$7", "$6", "$8").first_due();
        let row = sqlx::query(&format!(
            "WITH ev AS ( \
                 INSERT INTO events (id, project_id, event_type, data, idempotency_key, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
                 DO NOTHING \
                 RETURNING id \
             ), d AS ( \
                 INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, \
                     status, attempts_made, next_attempt_at, created_at, updated_at) \
                 SELECT $7, ev.id, w.id, w.project_id, w.event_type, 'pending', 0, {due}, $6, $6 \
                 FROM ev JOIN webhooks w \
                   ON w.project_id = $2 AND w.event_type = $3 AND w.is_active \
                 RETURNING webhook_id, next_attempt_at = $8 AS held \
             ) \
             SELECT (SELECT count(*) FROM ev) AS inserted, (SELECT count(*) FROM d) AS deliveries, \
                 (SELECT webhook_id FROM d WHERE held) AS held_by"
        ))
        .bind(event_id)
        .bind(event.project_id)
        .bind(event.event_type)
        .bind(event.data)
        .bind(event.idempotency_key)
        .bind(now)
        .bind(Uuid::now_v7())
        .bind(held())
        .fetch_one(pool)
        .await?;
        let inserted: i64 = row.try_get("inserted")?;
        if let Some(webhook) = row.try_get::<Option<Uuid>, _>("held_by")? {
            // A head a recorder finished meanwhile did not see this one.
            Queue::<Postgres>::after_commit(pool, [webhook], now, Wake::All).await;
        }
        if inserted > 0 {
            return Ok(Published {
                event_id,
                deliveries: row.try_get("deliveries")?,
                created_at: now,
                duplicate: false,
            });
        }

        // Only a key can conflict; it is present here.
        let Some(key) = event.idempotency_key else {
            return Err(StoreError::Internal(
                "event insert conflicted without a key".into(),
            ));
        };
        let seen = sqlx::query(
            "SELECT e.id, e.created_at, \
                 (SELECT count(*) FROM deliveries d WHERE d.event_id = e.id) AS deliveries \
             FROM events e WHERE e.project_id = $1 AND e.idempotency_key = $2",
        )
        .bind(event.project_id)
        .bind(key)
        .fetch_optional(pool)
        .await?;
        // No row means a concurrent publisher cleared the key in between: go round.
        if let Some(row) = seen {
            let created_at: DateTime<Utc> = row.try_get("created_at")?;
            if created_at >= since {
                return Ok(Published {
                    event_id: row.try_get("id")?,
                    deliveries: row.try_get("deliveries")?,
                    created_at,
                    duplicate: true,
                });
            }
            // The earlier use of the key is past its retention window: it no
            // longer deduplicates, and must not block the unique index.
            sqlx::query(
                "UPDATE events SET idempotency_key = NULL \
                 WHERE project_id = $1 AND idempotency_key = $2 AND created_at < $3",
            )
            .bind(event.project_id)
            .bind(key)
            .bind(since)
            .execute(pool)
            .await?;
        }
    }
    Err(StoreError::Conflict(
        "idempotency key kept changing under concurrent publishes".into(),
    ))
}

/// The PostgreSQL side of the group commit: keyless publishes only (publishes with an
/// idempotency key take [`publish_one`], which checks the key), all in one statement,
/// hence one transaction and one WAL flush.
struct PgCommitter(PgPool);

#[async_trait]
impl Committer for PgCommitter {
    async fn commit_batch(&self, jobs: &[PublishJob]) -> StoreResult<Vec<Published>> {
        publish_batch(&self.0, jobs).await
    }

    async fn commit_one(&self, job: &PublishJob) -> StoreResult<Published> {
        publish_one(&self.0, job.event()).await
    }
}

async fn publish_batch(pool: &PgPool, jobs: &[PublishJob]) -> StoreResult<Vec<Published>> {
    let now = now_micros();
    let event_ids = batch_event_ids(jobs.len(), now);
    let delivery_ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::now_v7()).collect();
    let projects: Vec<Uuid> = jobs.iter().map(|j| j.project_id).collect();
    let types: Vec<&str> = jobs.iter().map(|j| j.event_type.as_str()).collect();
    let data: Vec<&str> = jobs.iter().map(|j| j.data.as_str()).collect();
    // Both inserts run in one statement; the delivery insert reads the batch from `v`,
    // and foreign keys are checked at the end of the statement.
    let due = Incoming::batch("$6", "$7").first_due();
    let delivered: Vec<(Uuid, Uuid, bool)> = sqlx::query_as(&format!(
        "WITH v(eid, did, pid, et, data) AS ( \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[]) \
         ), ev AS ( \
             INSERT INTO events (id, project_id, event_type, data, idempotency_key, created_at) \
             SELECT eid, pid, et, data, NULL, $6 FROM v \
             RETURNING id \
         ), d AS ( \
             INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, \
                 status, attempts_made, next_attempt_at, created_at, updated_at) \
             SELECT v.did, ev.id, w.id, w.project_id, w.event_type, 'pending', 0, {due}, $6, $6 \
             FROM ev JOIN v ON v.eid = ev.id \
             JOIN webhooks w ON w.project_id = v.pid AND w.event_type = v.et AND w.is_active \
             RETURNING event_id, webhook_id, next_attempt_at = $7 \
         ) \
         SELECT * FROM d"
    ))
    .bind(&event_ids)
    .bind(&delivery_ids)
    .bind(&projects)
    .bind(&types)
    .bind(&data)
    .bind(now)
    .bind(held())
    .fetch_all(pool)
    .await?;
    let holding: BTreeSet<Uuid> = delivered
        .iter()
        .filter(|(_, _, held)| *held)
        .map(|(_, webhook, _)| *webhook)
        .collect();
    if !holding.is_empty() {
        // A head a recorder finished meanwhile did not see these.
        Queue::<Postgres>::after_commit(pool, holding, now, Wake::All).await;
    }
    let delivered: std::collections::HashSet<Uuid> =
        delivered.into_iter().map(|(event, _, _)| event).collect();
    Ok(event_ids
        .into_iter()
        .map(|event_id| Published {
            event_id,
            deliveries: i64::from(delivered.contains(&event_id)),
            created_at: now,
            duplicate: false,
        })
        .collect())
}

/// [`held`] as a PostgreSQL literal, for a statement whose parameters are all taken.
pub(crate) const HELD: &str = "'9999-01-01 00:00:00+00'::timestamptz";

/// The forms of the claim statement, as [`ClaimFrom`] names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimForm {
    PerProject,
    Oldest,
    AllDue,
}

impl ClaimForm {
    #[cfg(test)]
    pub const ALL: [ClaimForm; 3] = [ClaimForm::PerProject, ClaimForm::Oldest, ClaimForm::AllDue];
}

/// The claim statement (see [`PgStore::claim_from`]). `$1` now, `$2` the most rows,
/// `$3` the lease token, `$4` its expiry, `$5` projects:
/// - [`ClaimForm::PerProject`]: a part for each project of `$5` (one index range per
///   project, in due order, `$6` each);
/// - [`ClaimForm::Oldest`]: the oldest due across all but the projects of `$5`;
/// - [`ClaimForm::AllDue`]: as `Oldest`, but nothing unless all that is due fits in
///   `$2`; every row has `due_count`, how many were due (one more than fits at most),
///   and a row with a NULL id stands for none claimed, with the next due time.
pub(crate) fn claim_sql(form: ClaimForm) -> String {
    let claimable = claimable("$1");
    let due_now = format!(
        "d.status = 'pending' AND d.next_attempt_at <= $1 \
         AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= $1) AND {claimable}"
    );
    let oldest = |limit: &str| {
        format!(
            "SELECT d.id FROM deliveries d WHERE {due_now} \
               AND NOT (d.project_id = ANY($5)) \
             ORDER BY d.next_attempt_at, d.id LIMIT {limit} \
             FOR NO KEY UPDATE OF d SKIP LOCKED"
        )
    };
    let (due, fits, count, none_claimed) = match form {
        ClaimForm::PerProject => (
            format!(
                "SELECT x.id FROM unnest($5::uuid[]) AS p(pid) CROSS JOIN LATERAL ( \
                     SELECT d.id FROM deliveries d WHERE d.project_id = p.pid AND {due_now} \
                     ORDER BY d.next_attempt_at, d.id LIMIT $6 \
                     FOR NO KEY UPDATE OF d SKIP LOCKED) x \
                 LIMIT $2"
            ),
            "",
            "",
            "",
        ),
        ClaimForm::Oldest => (oldest("$2"), "", "", ""),
        // One past what fits is read (and locked until the statement ends) at most.
        ClaimForm::AllDue => (
            oldest("$2 + 1"),
            "AND (SELECT count(*) FROM due) <= $2",
            ", (SELECT count(*) FROM due) AS due_count",
            " UNION ALL \
             SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
                 NULL, NULL, NULL, NULL, NULL, (SELECT next_attempt_at FROM after), \
                 (SELECT count(*) FROM due) \
             FROM no_wait WHERE NOT EXISTS (SELECT 1 FROM claimed)",
        ),
    };
    // The next due time as the claim leaves the queue: its snapshot still has the
    // claimed rows due, so they are left out.
    let after = next_due_query("$1", HELD, "AND NOT (d.id IN (SELECT id FROM due))");
    // The claim commits without waiting for its WAL to reach the disk (set_config
    // with is_local lasts until this statement's own transaction ends): a claim lost
    // to a database crash only makes its deliveries due again, and the outcome's
    // commit, which waits, flushes the WAL written before it, claim included.
    format!(
        "WITH no_wait AS MATERIALIZED ( \
             SELECT set_config('synchronous_commit', 'off', true) AS commit_mode \
         ), due AS MATERIALIZED ({due}), claimed AS ( \
             UPDATE deliveries d SET lease_token = $3, lease_expires_at = $4, \
                 next_attempt_at = $4, updated_at = $1 \
             FROM due WHERE d.id = due.id {fits} \
             RETURNING d.id, d.event_id, d.webhook_id, d.project_id, d.event_type, \
                 d.attempts_made, d.lease_token, d.origin \
         ), after AS MATERIALIZED ({after}) \
         SELECT c.id, c.event_id, c.webhook_id, c.project_id, c.event_type, \
             c.attempts_made, c.lease_token, c.origin, \
             e.created_at AS event_created_at, e.data, \
             w.webhook_url, w.auth_header, w.signing_secret, w.rate_limit, w.ordered, \
             CASE WHEN w.previous_secret_expires_at > $1 THEN w.previous_secret END \
                 AS previous_secret, \
             LEAST((SELECT next_attempt_at FROM after), $4) AS next_due{count} \
         FROM claimed c \
         JOIN events e ON e.id = c.event_id \
         JOIN webhooks w ON w.id = c.webhook_id \
         CROSS JOIN no_wait{none_claimed} \
         ORDER BY 1"
    )
}
