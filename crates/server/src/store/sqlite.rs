//! The embedded backend: one SQLite file, created on first start.
//!
//! SQLite admits one writer at a time. Rather than letting several pooled connections
//! race for the write lock (and spin in the busy handler), every write goes through a
//! pool holding exactly one connection, and each write transaction starts with
//! `BEGIN IMMEDIATE`, which takes the write lock up front. The writes every event takes
//! run on a connection of the store's own ([`direct`]), which never waits in the busy
//! handler for a write through that pool but for the pool's connection. Reads use a
//! separate small
//! pool; in WAL mode they never block the writer nor wait for it. `busy_timeout` covers
//! the remaining case of another process (the CLI creating a key while the server runs)
//! holding the lock for a moment.
//!
//! Instants are stored as INTEGER microseconds since the Unix epoch (UTC) and ids as
//! 16-byte BLOBs; see the migration for the reasoning and [`super::rows`] for the
//! decoding. The statements both backends share are in [`super::common`]; this file
//! holds the ones that differ.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::OptionalExtension;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
};
use sqlx::{Connection, FromRow, Pool, QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::common::{
    next_due_query, BackendOps, Dialect, Tables, ORDER_ALLOWS_HEAD, ORDER_ALLOWS_TAIL,
};
use super::group_commit::{Committer, GroupCommit, PublishJob};
use super::held::{self, held, Incoming, Queue};
use super::rows::{opt, ClaimedRow, Micros, StreakRow, ATTEMPT_COLUMNS};
use super::{
    add_duration, batch_event_ids, now_micros, status_after, truncate_micros, v7_at, AttemptStatus,
    AttemptTrigger, ClaimFrom, ClaimedDelivery, DeliveryOutcome, DisablePolicy, FailureStreak,
    NextDue, PublishEvent, Published, Recorded, StoreError, StoreResult, UpsertOutcome,
    UpsertWebhook, Webhook,
};

mod batched;
mod direct;
mod file;

use batched::Batched;
use direct::{Direct, Sql};
pub(crate) use file::create_private_dir;
use file::{checkpoint_loop, prepare_private_file};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Read connections. Reads are short index lookups; a handful covers the API's
/// concurrency without holding many file descriptors.
const READERS: u32 = 4;

/// The size, in bytes, a WAL file is cut back to when it starts over (see
/// `file::checkpoint_loop`).
const WAL_SIZE_LIMIT: &str = "67108864";

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a caller waits for the single write connection. Writes are short, so a
/// long wait means the database is stuck, and an error is more useful than a hang.
const WRITER_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Outcomes per multi-row statement in `record_outcomes` (14 values per attempt row;
/// SQLite accepts 32,766 bound values per statement).
const RECORD_CHUNK: usize = 128;

/// The SQLite implementation of [`super::WebhookStore`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// `write`: exactly one connection, so writes are serialized here rather than in
    /// SQLite's busy handler. `read`: read-only traffic; for an in-memory database the
    /// writer pool itself, since separate connections would not share the data.
    tables: Tables<Sqlite>,
    /// Publishes go through the group commit ([`super::group_commit`]).
    publisher: GroupCommit,
    /// The connection of the writes every event takes ([`direct`]).
    direct: Direct,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database at `url`, which is
    /// `sqlite://path`, `sqlite:path` or a bare path, and runs the embedded migrations.
    ///
    /// Durability: the journal is WAL with `synchronous = NORMAL`. A transaction is
    /// durable against a crash or SIGKILL of the process as soon as it commits (the
    /// WAL is in the OS page cache, which survives the process), which is the guarantee
    /// behind answering 202 to a published event. Only a power loss or kernel crash can
    /// lose the last transactions before the next checkpoint; `FULL` would close that
    /// window at the price of an fsync per commit, i.e. a few hundred publishes per
    /// second instead of thousands. Operators who need power-loss durability should run
    /// on PostgreSQL, which is the scale-out backend anyway.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let base = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        if !in_memory {
            let file = base.get_filename().to_owned();
            tokio::task::spawn_blocking(move || prepare_private_file(&file))
                .await
                .map_err(|e| StoreError::Database(sqlx::Error::Io(io::Error::other(e))))?
                .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }

        // WAL is a property of the file: set it on the writer, which opens first.
        // Changing journal mode needs an exclusive lock that busy_timeout does not
        // wait for, so the readers must not try.
        let writer_options = writer_pragmas(in_memory).into_iter().fold(
            base.clone()
                .journal_mode(SqliteJournalMode::Wal)
                .optimize_on_close(true, None),
            |options, (name, value)| options.pragma(name, value),
        );
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(WRITER_ACQUIRE_TIMEOUT)
            // A local file handle does not go stale; pinging it per acquire is wasted
            // work on the hot path.
            .test_before_acquire(false)
            // Keep the one writer open for the life of the store: closing it would
            // needlessly checkpoint and reopen.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(writer_options)
            .await?;

        MIGRATOR.run(&writer).await?;

        let readers = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(READERS)
                .test_before_acquire(false)
                .connect_with(base.clone())
                .await?
        };
        let direct = Direct::open(
            &base,
            in_memory,
            writer.clone(),
            BUSY_TIMEOUT,
            &writer_pragmas(in_memory),
        )?;
        if !in_memory {
            let checkpointer = sqlx::SqliteConnection::connect_with(&base).await?;
            tokio::spawn(checkpoint_loop(
                checkpointer,
                writer.clone(),
                direct.clone(),
            ));
        }
        let publisher = GroupCommit::spawn(SqliteCommitter(direct.clone()));
        Ok(Self {
            tables: Tables::new(writer, readers),
            publisher,
            direct,
        })
    }

    /// Closes both pools, waiting for connections in use to come back. The writer
    /// checkpoints the WAL when it closes.
    #[cfg(test)]
    pub async fn close(&self) {
        self.tables.read.close().await;
        self.tables.write.close().await;
    }

    /// The read pool, for the plan tests.
    #[cfg(test)]
    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.tables.read
    }

    fn writer(&self) -> &SqlitePool {
        &self.tables.write
    }
}

/// The per-connection settings of the connections that write: the writer pool's and
/// the direct one.
fn writer_pragmas(in_memory: bool) -> [(&'static str, &'static str); 3] {
    [
        ("synchronous", "NORMAL"),
        // Checkpoints run on their own connection (checkpoint_loop), not inside
        // whichever commit happens to cross the WAL size threshold, where they would
        // stall the writer for milliseconds.
        ("wal_autocheckpoint", if in_memory { "1000" } else { "0" }),
        // A WAL that a burst grew past this is cut back to it when it starts over, so
        // the file stays near what one checkpoint interval writes.
        ("journal_size_limit", WAL_SIZE_LIMIT),
    ]
}

// SQLite types its parameters from their values, and takes the write lock up front.
impl Dialect for Sqlite {
    const UUID_1_IS_NULL: &'static str = "$1 IS NULL";
    const FOR_UPDATE: &'static str = "";
    const FOR_SHARE: &'static str = "";
    const SKIP_LOCKED: &'static str = "";

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    /// A write transaction holding SQLite's write lock from its first statement, so a
    /// read-then-write sequence inside it cannot be invalidated by another writer.
    async fn begin_write(pool: &Pool<Sqlite>) -> sqlx::Result<Transaction<'static, Sqlite>> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BackendOps for SqliteStore {
    type Db = Sqlite;

    fn tables(&self) -> &Tables<Sqlite> {
        &self.tables
    }

    /// Leases up to `max` due deliveries, from `from`, in one statement of a direct
    /// write ([`direct`]), returning everything needed to send
    /// them through correlated subqueries in RETURNING. next_attempt_at moves to the
    /// lease expiry: the row drops out of the due range while leased and comes back by
    /// itself if the lease runs out.
    async fn claim_from(
        &self,
        from: ClaimFrom<'_>,
        max: usize,
        lease: Duration,
    ) -> StoreResult<(Vec<ClaimedDelivery>, Option<NextDue>)> {
        let now = Micros(now_micros());
        let expires = Micros(add_duration(now.0, lease));
        let token = Uuid::new_v4();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let claim = claim_query("", from, max, (token, now, expires));
        // The next due time as the claim leaves the queue, in the same transaction: the
        // worker would otherwise ask right after.
        let next_due = next_due_query("?1", &held().timestamp_micros().to_string(), "");
        let (claimed, next) = self
            .direct
            .write(|tx| {
                let claimed = tx
                    .prepare_cached(&claim.text)?
                    .query_map(rusqlite::params_from_iter(&claim.params), |row| {
                        ClaimedRow::from_direct(row).map(ClaimedDelivery::from)
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let next: Option<i64> = tx
                    .prepare_cached(&next_due)?
                    .query_row([now.0.timestamp_micros()], |row| row.get(0))
                    .optional()?;
                Ok(Some((claimed, next)))
            })
            .await?
            .ok_or_else(|| StoreError::Internal("a claim was not written".into()))?;
        let next = next
            .map(|at| {
                DateTime::from_timestamp_micros(at)
                    .ok_or_else(|| StoreError::Internal(format!("due time {at} out of range")))
            })
            .transpose()?;
        let told = Some(NextDue(next));
        // All due (guarded to take nothing unless everything due outside the skipped
        // projects fits): having taken nothing while something is still due, it
        // cannot tell whether that is more than fit or only the skipped projects'.
        let due_left = matches!(told, Some(NextDue(Some(at))) if at <= DateTime::from(now));
        if matches!(from, ClaimFrom::AllDue(_)) && claimed.is_empty() && due_left {
            return Ok((claimed, None));
        }
        Ok((claimed, told))
    }

    async fn upsert_webhook(&self, input: UpsertWebhook<'_>) -> StoreResult<UpsertOutcome> {
        // No lock of its own: the one writer runs the statement start to end, so the
        // count in it cannot be overtaken by another create.
        let outcome = Tables::<Sqlite>::upsert_webhook(self.writer(), input).await?;
        // An existing webhook's queue follows its ordering (a new one has none). In a
        // statement of its own: whatever the writer ran in between went by the
        // ordering already stored, and a process stopped in between is followed by
        // the thorough sweep when it starts again.
        if let UpsertOutcome::Updated { webhook } = &outcome {
            let mut conn = self.writer().acquire().await?;
            Queue::<Sqlite>::settle(&mut conn, webhook.id, webhook.ordered, now_micros()).await?;
        }
        Ok(outcome)
    }

    async fn list_webhooks(&self, project_id: Uuid) -> StoreResult<Vec<Webhook>> {
        // The whole list comes back as one JSON value in one row: sqlx hands SQLite rows
        // over one by one from its connection thread, copying every value, which for a
        // project with a thousand webhooks costs several times more than the query.
        let json: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(hex(id), hex(project_id), event_type, \
                 webhook_url, auth_header, is_active, created_at, updated_at, rate_limit, \
                 ordered) \
                 ORDER BY event_type) \
             FROM webhooks WHERE project_id = $1",
        )
        .bind(project_id)
        .fetch_one(&self.tables.read)
        .await?;
        /// One webhook as the JSON array above holds it.
        #[derive(serde::Deserialize)]
        struct Listed(
            String,
            String,
            String,
            String,
            Option<String>,
            i64,
            i64,
            i64,
            Option<i64>,
            i64,
        );
        let decode = |e: String| StoreError::Database(sqlx::Error::Decode(e.into()));
        let uuid = |hex: &str| Uuid::parse_str(hex).map_err(|e| decode(format!("webhook id: {e}")));
        let at = |micros: i64| {
            DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| decode(format!("timestamp {micros} out of range")))
        };
        let rows: Vec<Listed> =
            serde_json::from_str(&json).map_err(|e| decode(format!("webhook list: {e}")))?;
        rows.into_iter()
            .map(
                |Listed(
                    id,
                    project,
                    event_type,
                    url,
                    auth,
                    active,
                    created,
                    updated,
                    rate,
                    ordered,
                )| {
                    Ok(Webhook {
                        id: uuid(&id)?,
                        project_id: uuid(&project)?,
                        event_type,
                        webhook_url: url,
                        auth_header: auth,
                        is_active: active != 0,
                        created_at: at(created)?,
                        updated_at: at(updated)?,
                        rate_limit: rate,
                        ordered: ordered != 0,
                    })
                },
            )
            .collect()
    }

    async fn publish_event(&self, event: PublishEvent<'_>) -> StoreResult<Published> {
        self.publisher.publish(event).await
    }

    fn order_claims(claimed: &mut [ClaimedDelivery]) {
        // RETURNING order is unspecified; hand them out oldest event first.
        claimed.sort_by_key(|c| (c.event_created_at, c.delivery_id));
    }

    /// A batch of successes whose webhooks have no failure streak to end and deliver
    /// in any order (the usual batch) is recorded in a direct write ([`direct`]); any
    /// other batch in two commands to the writer's thread: everything up to the
    /// streaks, then whatever the streaks call for and the commit. A batch with a delivery
    /// claimed in order goes the long way at once: it always would.
    async fn record_outcomes(
        &self,
        outcomes: &[DeliveryOutcome],
        policy: DisablePolicy,
    ) -> StoreResult<Recorded> {
        let now = now_micros();
        let webhooks: BTreeSet<Uuid> = outcomes.iter().map(|o| o.webhook_id).collect();
        let plain = outcomes.iter().all(|o| {
            o.attempt.status == AttemptStatus::Success && !o.disable_webhook && !o.ordered
        });
        if plain && record_plain(&self.direct, outcomes, &webhooks, now).await? {
            return Ok(Recorded::default());
        }
        let mut tx = Batched::acquire(self.writer()).await?;

        // One command for the connection's thread: the transaction's start, then
        // multi-row statements a chunk at a time, then the streaks of the webhooks.
        let mut q = QueryBuilder::<Sqlite>::new(batched::BEGIN);
        for chunk in outcomes.chunks(RECORD_CHUNK) {
            // Ignoring an attempt id already stored makes a retried batch (after a
            // commit whose acknowledgement was lost) harmless: its leases are gone by
            // then, so nothing is counted twice either.
            q.push(format!(
                "INSERT INTO attempts ({ATTEMPT_COLUMNS}, \"trigger\") "
            ));
            q.push_values(chunk, |mut row, outcome| {
                let a = &outcome.attempt;
                row.push_bind(a.id)
                    .push_bind(a.delivery_id)
                    .push_bind(a.event_id)
                    .push_bind(a.project_id)
                    .push_bind(a.event_type.as_str())
                    .push_bind(a.webhook_url.as_str())
                    .push_bind(a.response_code)
                    .push_bind(a.duration_ms)
                    .push_bind(a.attempt_number)
                    .push_bind(a.status.as_str())
                    .push_bind(a.request_body.as_slice())
                    .push_bind(a.response_body.as_deref())
                    .push_bind(a.error_message.as_deref())
                    .push_bind(Micros(truncate_micros(a.created_at)))
                    .push_bind(a.trigger.map(AttemptTrigger::as_str));
            });
            q.push(" ON CONFLICT (id) DO NOTHING; ");

            // Finish or reschedule the deliveries whose lease still holds.
            q.push(
                "UPDATE deliveries SET status = u.status, \
                     next_attempt_at = COALESCE(u.retry_at, deliveries.next_attempt_at), \
                     attempts_made = attempts_made + 1, \
                     lease_token = NULL, lease_expires_at = NULL, updated_at = ",
            );
            q.push_bind(Micros(now)).push(
                " FROM (SELECT column1 AS id, column2 AS token, column3 AS status, \
                     column4 AS retry_at FROM (",
            );
            q.push_values(chunk, |mut row, outcome| {
                row.push_bind(outcome.delivery_id)
                    .push_bind(outcome.lease_token)
                    .push_bind(status_after(outcome))
                    .push_bind(opt(outcome.retry_at.map(truncate_micros)));
            });
            q.push(
                ")) AS u \
                 WHERE deliveries.id = u.id AND deliveries.lease_token = u.token \
                   AND deliveries.status = 'pending' \
                 RETURNING deliveries.id, deliveries.webhook_id; ",
            );
        }
        // Read after the updates, in the same transaction: the writer's transaction
        // serializes recorders, so no lock of their own is needed.
        q.push(
            "SELECT id, consecutive_failures, first_failure_at, is_active, ordered \
             FROM webhooks WHERE id IN (",
        );
        let mut ids = q.separated(", ");
        for id in &webhooks {
            ids.push_bind(*id);
        }
        q.push(")");

        // The updates' rows (delivery, webhook) and the streaks' rows come back in turn.
        let mut live: BTreeMap<Uuid, Uuid> = BTreeMap::new();
        let mut rows: Vec<StreakRow> = Vec::new();
        for row in q.build().fetch_all(tx.conn()).await? {
            if row.len() == 2 {
                live.insert(row.try_get(0)?, row.try_get(1)?);
            } else {
                rows.push(StreakRow::from_row(&row)?);
            }
        }
        // Only the webhooks of outcomes that still held their lease count.
        let counted: BTreeSet<Uuid> = live.values().copied().collect();
        rows.retain(|r| counted.contains(&r.id));
        let ordered: BTreeSet<Uuid> = rows.iter().filter(|r| r.ordered).map(|r| r.id).collect();
        let streaks: BTreeMap<Uuid, FailureStreak> = rows
            .into_iter()
            .map(|r| (r.id, FailureStreak::from(r)))
            .collect();
        // The one writer sees every committed publish: the next head is woken here.
        for webhook in held::finished_heads(outcomes, &live, &ordered) {
            Queue::<Sqlite>::wake_head(tx.conn(), webhook, now).await?;
        }

        let recorded =
            Tables::<Sqlite>::replay_streaks(tx.conn(), outcomes, &live, &streaks, policy, now)
                .await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// All in one write transaction: the writer is the only lock there is.
    async fn release(&self, claims: &[(Uuid, Uuid)], due: DateTime<Utc>) -> StoreResult<()> {
        let (now, due) = (now_micros(), truncate_micros(due));
        let mut tx = Sqlite::begin_write(self.writer()).await?;
        for claim in claims {
            Tables::<Sqlite>::release_one(&mut *tx, *claim, now, due).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Records a batch of successes (none answering 410) in one direct write, provided
/// none of `webhooks` has a failure streak (which a success ends, perhaps with a
/// notice) or delivers in order (a finished head wakes the next): then the streaks
/// replay to what they are, and nothing but the writes is left to do. Answers false,
/// having written nothing, when one of them has either; the caller records the batch
/// the long way. The check is read inside the write transaction, so no other write can
/// come between it and the writes.
async fn record_plain(
    direct: &Direct,
    outcomes: &[DeliveryOutcome],
    webhooks: &BTreeSet<Uuid>,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let now = now.timestamp_micros();
    let written = direct
        .write(|tx| {
            let mut streak_or_order = tx.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM webhooks WHERE id = ?1 \
                   AND (consecutive_failures <> 0 OR first_failure_at IS NOT NULL OR ordered))",
            )?;
            for webhook in webhooks {
                if streak_or_order.query_row([webhook.as_bytes()], |row| row.get::<_, bool>(0))? {
                    return Ok(None);
                }
            }
            // Ignoring an attempt id already stored makes a retried batch (after a
            // commit whose acknowledgement was lost) harmless: its leases are gone by
            // then, so nothing is counted twice either.
            let mut attempt = tx.prepare_cached(&format!(
                "INSERT INTO attempts ({ATTEMPT_COLUMNS}, \"trigger\") \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
                 ON CONFLICT (id) DO NOTHING"
            ))?;
            // Finished where the lease still holds (a plain outcome never retries).
            let mut finish = tx.prepare_cached(
                "UPDATE deliveries SET status = ?1, attempts_made = attempts_made + 1, \
                     lease_token = NULL, lease_expires_at = NULL, updated_at = ?2 \
                 WHERE id = ?3 AND lease_token = ?4 AND status = 'pending'",
            )?;
            for outcome in outcomes {
                let a = &outcome.attempt;
                attempt.execute(rusqlite::params![
                    a.id.as_bytes(),
                    a.delivery_id.as_bytes(),
                    a.event_id.as_bytes(),
                    a.project_id.as_bytes(),
                    a.event_type,
                    a.webhook_url,
                    a.response_code,
                    a.duration_ms,
                    a.attempt_number,
                    a.status.as_str(),
                    a.request_body,
                    a.response_body,
                    a.error_message,
                    truncate_micros(a.created_at).timestamp_micros(),
                    a.trigger.map(AttemptTrigger::as_str),
                ])?;
                finish.execute(rusqlite::params![
                    status_after(outcome),
                    now,
                    outcome.delivery_id.as_bytes(),
                    outcome.lease_token.as_bytes(),
                ])?;
            }
            Ok(Some(()))
        })
        .await?;
    Ok(written.is_some())
}

/// One publish inside the write transaction `tx`, its event id `event_id`: the
/// idempotency check, the event, and its delivery.
fn publish_one(
    tx: &rusqlite::Transaction<'_>,
    event: PublishEvent<'_>,
    event_id: Uuid,
    now: DateTime<Utc>,
) -> rusqlite::Result<Published> {
    let project = event.project_id.as_bytes();
    if let Some(key) = event.idempotency_key {
        let seen = tx
            .prepare_cached(
                "SELECT id, created_at FROM events \
                 WHERE project_id = ?1 AND idempotency_key = ?2",
            )?
            .query_row(rusqlite::params![project, key], |row| {
                Ok((row.get::<_, [u8; 16]>(0)?, row.get::<_, i64>(1)?))
            })
            .optional()?;
        if let Some((first_id, first_at)) = seen {
            let first_id = Uuid::from_bytes(first_id);
            if first_at >= truncate_micros(event.idempotency_since).timestamp_micros() {
                let deliveries: i64 = tx
                    .prepare_cached("SELECT COUNT(*) FROM deliveries WHERE event_id = ?1")?
                    .query_row([first_id.as_bytes()], |row| row.get(0))?;
                let created_at = DateTime::from_timestamp_micros(first_at)
                    .ok_or(rusqlite::Error::IntegralValueOutOfRange(1, first_at))?;
                return Ok(Published {
                    event_id: first_id,
                    deliveries,
                    created_at,
                    duplicate: true,
                });
            }
            // The earlier use of the key is past its retention window: it no
            // longer deduplicates, and must not block the unique index.
            tx.prepare_cached("UPDATE events SET idempotency_key = NULL WHERE id = ?1")?
                .execute([first_id.as_bytes()])?;
        }
    }

    let at = now.timestamp_micros();
    tx.prepare_cached(
        "INSERT INTO events (id, project_id, event_type, data, idempotency_key, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(rusqlite::params![
        event_id.as_bytes(),
        project,
        event.event_type,
        event.data,
        event.idempotency_key,
        at,
    ])?;

    // (project, event type) names at most one webhook, so one pre-generated id
    // covers the at most one row this inserts. Publishes earlier in the transaction
    // are in the table already, so an ordered webhook's first_due sees them.
    let due = Incoming::from_webhook("?2", "?1", "?3", "?6").first_due();
    let deliveries = tx
        .prepare_cached(&format!(
            "INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, \
                 status, attempts_made, next_attempt_at, created_at, updated_at) \
             SELECT ?1, ?2, w.id, w.project_id, w.event_type, 'pending', 0, {due}, ?3, ?3 \
             FROM webhooks w \
             WHERE w.project_id = ?4 AND w.event_type = ?5 AND w.is_active = 1"
        ))?
        .execute(rusqlite::params![
            Uuid::now_v7().as_bytes(),
            event_id.as_bytes(),
            at,
            project,
            event.event_type,
            held().timestamp_micros(),
        ])?;

    Ok(Published {
        event_id,
        deliveries: i64::try_from(deliveries).unwrap_or(i64::MAX),
        created_at: now,
        duplicate: false,
    })
}

/// The SQLite side of the group commit: direct writes (see [`direct`]).
struct SqliteCommitter(Direct);

#[async_trait]
impl Committer for SqliteCommitter {
    async fn commit_batch(&self, jobs: &[PublishJob]) -> StoreResult<Vec<Published>> {
        let now = now_micros();
        // Inserted one by one, so an ordered webhook's held deliveries must come in
        // id order: a later one with a smaller id would see no head before it.
        let ids = batch_event_ids(jobs.len(), now);
        let published = self
            .0
            .write(|tx| {
                jobs.iter()
                    .zip(&ids)
                    .map(|(job, id)| publish_one(tx, job.event(), *id, now))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map(Some)
            })
            .await?;
        published.ok_or_else(|| StoreError::Internal("a publish batch was not written".into()))
    }

    async fn commit_one(&self, job: &PublishJob) -> StoreResult<Published> {
        let now = now_micros();
        let published = self
            .0
            .write(|tx| publish_one(tx, job.event(), v7_at(now), now).map(Some))
            .await?;
        published.ok_or_else(|| StoreError::Internal("a publish was not written".into()))
    }
}

/// The claim statement of [`SqliteStore::claim_from`], after `prefix` (empty, or
/// `EXPLAIN QUERY PLAN ` for the plan tests): at most `max` due deliveries from
/// `from` leased with `token` until `expires`, as of `now`.
pub(crate) fn claim_query(
    prefix: &str,
    from: ClaimFrom<'_>,
    max: i64,
    (token, now, expires): (Uuid, Micros, Micros),
) -> Sql {
    let mut q = Sql::new(format!("{prefix}UPDATE deliveries SET lease_token = "));
    q.bind_id(token)
        .push(", lease_expires_at = ")
        .bind_at(expires)
        .push(", next_attempt_at = ")
        .bind_at(expires)
        .push(", updated_at = ")
        .bind_at(now)
        .push(" WHERE id IN (SELECT id FROM (");
    let due = |q: &mut Sql| {
        q.push(
            "SELECT d.id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.status = 'pending' AND w.is_active = 1 AND d.next_attempt_at <= ",
        )
        .bind_at(now)
        .push(" AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= ")
        .bind_at(now)
        .push(") AND ")
        .push(ORDER_ALLOWS_HEAD)
        .bind_at(now)
        .push(ORDER_ALLOWS_TAIL);
    };
    // The oldest `limit` due, oldest first, outside `skip`.
    let oldest = |q: &mut Sql, skip: &[Uuid], limit: i64| {
        due(q);
        if !skip.is_empty() {
            q.push(" AND d.project_id NOT IN (")
                .bind_ids(skip)
                .push(")");
        }
        q.push(" ORDER BY d.next_attempt_at, d.id LIMIT ")
            .bind(limit);
    };
    match from {
        // A part for each project: one index range per project, in due order.
        ClaimFrom::Projects(projects, share) => {
            for (i, project) in projects.iter().enumerate() {
                if i > 0 {
                    q.push(" UNION ALL ");
                }
                q.push("SELECT id FROM (");
                due(&mut q);
                q.push(" AND d.project_id = ")
                    .bind_id(*project)
                    .push(" ORDER BY d.next_attempt_at, d.id LIMIT ")
                    .bind(i64::try_from(share).unwrap_or(i64::MAX))
                    .push(")");
            }
        }
        ClaimFrom::Oldest(skip) | ClaimFrom::AllDue(skip) => oldest(&mut q, skip, max),
    }
    q.push(") LIMIT ").bind(max);
    if let ClaimFrom::AllDue(skip) = from {
        // Nothing unless all that is due fits: one more than fits is counted at most.
        // (The parenthesis opened here is closed with the IN list's, below.)
        q.push(") AND ((SELECT count(*) FROM (");
        oldest(&mut q, skip, max + 1);
        q.push(")) <= ").bind(max);
    }
    q.push(
        ") RETURNING id, event_id, webhook_id, project_id, event_type, attempts_made, \
             lease_token, origin, \
             (SELECT e.created_at FROM events e WHERE e.id = event_id) AS event_created_at, \
             (SELECT e.data FROM events e WHERE e.id = event_id) AS data, \
             (SELECT w.webhook_url FROM webhooks w WHERE w.id = webhook_id) AS webhook_url, \
             (SELECT w.auth_header FROM webhooks w WHERE w.id = webhook_id) AS auth_header, \
             (SELECT w.signing_secret FROM webhooks w WHERE w.id = webhook_id) \
                 AS signing_secret, \
             (SELECT w.rate_limit FROM webhooks w WHERE w.id = webhook_id) AS rate_limit, \
             (SELECT w.ordered FROM webhooks w WHERE w.id = webhook_id) AS ordered, \
             (SELECT CASE WHEN w.previous_secret_expires_at > ",
    )
    .bind_at(now)
    .push(
        " THEN w.previous_secret END FROM webhooks w WHERE w.id = webhook_id) AS previous_secret",
    );
    q
}

#[cfg(test)]
mod unit {
    use crate::store::delivery_status;

    #[test]
    fn delivery_status_names_match_the_schema() {
        // The CHECK constraint in the migration lists these; a typo would only show up
        // as a constraint failure at run time.
        let schema = include_str!("../../migrations/sqlite/0001_initial.sql");
        for status in [
            delivery_status::PENDING,
            delivery_status::SUCCEEDED,
            delivery_status::FAILED,
        ] {
            assert!(schema.contains(&format!("'{status}'")), "{status}");
        }
    }
}
