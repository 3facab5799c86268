//! Recoveries: durable jobs that queue again, oldest first, the events of a window that
//! a webhook did not get (`failed`: its deliveries to the webhook all ended failed or
//! cancelled; `missed`: it has none). The same SQL on both backends.
//!
//! A job is a row. The recovery runners lease it like a delivery and advance
//! it one batch at a time: each batch is one write transaction that checks the lease
//! still holds, looks at the next [`RecoveryStep::scan`] events after the job's cursor,
//! queues the matching ones and moves the cursor past them. A runner that dies loses
//! its lease and another takes the job over at the cursor, so no event is skipped and
//! none is queued twice by the job. A batch queues no more than the webhook's
//! [`RecoveryStep::max_pending`] pending deliveries have room for, so a recovery of any
//! size never floods the queue ahead of fresh events.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Type};
use uuid::Uuid;

use super::common::{Column, Dialect, Tables};
use super::held::{held, Incoming, Queue, Wake};
use super::operator::Notice;
use super::rows::{opt, Micros};
use super::{add_duration, now_micros, truncate_micros, StoreError, StoreResult};

/// Which events a recovery queues again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverInclude {
    /// Delivered to the webhook without success (every delivery failed or cancelled).
    pub failed: bool,
    /// Never delivered to the webhook.
    pub missed: bool,
}

/// A request to recover the webhook of (project, event type).
#[derive(Debug, Clone)]
pub struct RecoverRequest<'a> {
    pub project_id: Uuid,
    pub event_type: &'a str,
    /// The window, by the events' publish time: `[since, until)`.
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub include: RecoverInclude,
    /// Count only: nothing is stored or queued.
    pub dry_run: bool,
}

/// Where a recovery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryStatus {
    Running,
    Done,
    Cancelled,
    /// Counted, not stored.
    DryRun,
}

impl RecoveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryStatus::Running => "running",
            RecoveryStatus::Done => "done",
            RecoveryStatus::Cancelled => "cancelled",
            RecoveryStatus::DryRun => "dry_run",
        }
    }

    fn parse(s: &str) -> StoreResult<Self> {
        [Self::Running, Self::Done, Self::Cancelled]
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| StoreError::Internal(format!("unknown recovery status {s}")))
    }
}

/// A recovery as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub id: Uuid,
    pub project_id: Uuid,
    pub webhook_id: Uuid,
    pub event_type: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub include: RecoverInclude,
    pub status: RecoveryStatus,
    /// Events that matched when it started.
    pub matched: i64,
    /// Events queued so far.
    pub queued: i64,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What [`super::WebhookStore::start_recovery`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoverOutcome {
    /// Stored and running (or, for a dry run, counted).
    Started(Recovery),
    /// No webhook for (project, event type).
    NoWebhook,
    /// The webhook is disabled.
    Inactive,
}

/// A recovery a runner holds under a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryClaim {
    pub id: Uuid,
    pub lease_token: Uuid,
}

/// How much one batch of a recovery does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryStep {
    /// Events looked at per batch (matching or not), which bounds the batch's time in
    /// the write transaction.
    pub scan: usize,
    /// A batch leaves the webhook with at most this many pending deliveries.
    pub max_pending: usize,
    /// The lease a batch renews.
    pub lease: Duration,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryProgress {
    /// Queued this many deliveries; more batches follow.
    Queued(u64),
    /// The webhook has `max_pending` pending deliveries: nothing done, lease renewed.
    Waiting,
    /// The job is over (done now, or cancelled); the lease is let go.
    Finished(RecoveryStatus),
    /// The lease no longer holds (another runner took the job over).
    Lost,
}

/// The test that event `e` matches: `$1` is the webhook's id.
/// The next events of a recovery's window after its cursor, each with whether it
/// matches (`$1` webhook, `$2` project, `$3` event type, `$4`/`$5` cursor, `$6` until,
/// `$7` how many). The range on created_at alone keeps the scan on events_type_time.
pub(crate) fn scan_sql(include: RecoverInclude) -> String {
    format!(
        "SELECT e.id, e.created_at, {} AS hit FROM events e \
         WHERE e.project_id = $2 AND e.event_type = $3 \
           AND e.created_at >= $4 AND (e.created_at > $4 OR e.id > $5) \
           AND e.created_at < $6 \
         ORDER BY e.created_at, e.id LIMIT $7",
        matches_sql(include)
    )
}

fn matches_sql(include: RecoverInclude) -> String {
    let to_webhook = "FROM deliveries d WHERE d.event_id = e.id AND d.webhook_id = $1";
    let mut parts = Vec::new();
    if include.failed {
        parts.push(format!(
            "(EXISTS (SELECT 1 {to_webhook} AND d.status IN ('failed', 'cancelled')) \
             AND NOT EXISTS (SELECT 1 {to_webhook} AND d.status IN ('succeeded', 'pending')))"
        ));
    }
    if include.missed {
        parts.push(format!("NOT EXISTS (SELECT 1 {to_webhook})"));
    }
    if parts.is_empty() {
        "false".to_owned()
    } else {
        format!("({})", parts.join(" OR "))
    }
}

#[derive(sqlx::FromRow)]
struct RecoveryRow {
    id: Uuid,
    project_id: Uuid,
    webhook_id: Uuid,
    event_type: String,
    since: Micros,
    until: Micros,
    include_failed: bool,
    include_missed: bool,
    status: String,
    matched: i64,
    queued: i64,
    created_at: Micros,
    finished_at: Option<Micros>,
}

const RECOVERY_COLUMNS: &str = "id, project_id, webhook_id, event_type, since, until, \
     include_failed, include_missed, status, matched, queued, created_at, finished_at";

impl TryFrom<RecoveryRow> for Recovery {
    type Error = StoreError;
    fn try_from(r: RecoveryRow) -> StoreResult<Self> {
        Ok(Recovery {
            id: r.id,
            project_id: r.project_id,
            webhook_id: r.webhook_id,
            event_type: r.event_type,
            since: r.since.0,
            until: r.until.0,
            include: RecoverInclude {
                failed: r.include_failed,
                missed: r.include_missed,
            },
            status: RecoveryStatus::parse(&r.status)?,
            matched: r.matched,
            queued: r.queued,
            created_at: r.created_at.0,
            finished_at: r.finished_at.map(|t| t.0),
        })
    }
}

/// The job's state as a batch reads it.
#[derive(sqlx::FromRow)]
struct JobRow {
    webhook_id: Uuid,
    project_id: Uuid,
    event_type: String,
    until: Micros,
    include_failed: bool,
    include_missed: bool,
    status: String,
    lease_token: Option<Uuid>,
    cursor_at: Micros,
    cursor_id: Uuid,
}

// The bounds are those of the impl of `Tables` in `common`.
impl<DB: Dialect> Tables<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    Uuid: Column<DB>,
    Micros: Column<DB>,
    String: Column<DB>,
    i64: Column<DB>,
    bool: Column<DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<Micros>: Encode<'q, DB>,
{
    /// How many events of the window match, for webhook `webhook_id`.
    async fn count_matching(&self, webhook_id: Uuid, req: &RecoverRequest<'_>) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT count(*) FROM events e \
             WHERE e.project_id = $2 AND e.event_type = $3 \
               AND e.created_at >= $4 AND e.created_at < $5 AND {}",
            matches_sql(req.include)
        ))
        .bind(webhook_id)
        .bind(req.project_id)
        .bind(req.event_type)
        .bind(Micros(truncate_micros(req.since)))
        .bind(Micros(truncate_micros(req.until)))
        .fetch_one(&self.read)
        .await?)
    }

    /// See [`super::WebhookStore::start_recovery`]. The count is made on the read side
    /// (a large window takes a while, and must not hold SQLite's writer); the job is
    /// stored after checking, in the write transaction, that the webhook counted is
    /// still the one there and active.
    pub async fn start_recovery(&self, req: RecoverRequest<'_>) -> StoreResult<RecoverOutcome> {
        const WEBHOOK: &str =
            "SELECT id, is_active FROM webhooks WHERE project_id = $1 AND event_type = $2";
        let webhook: Option<(Uuid, bool)> = sqlx::query_as(WEBHOOK)
            .bind(req.project_id)
            .bind(req.event_type)
            .fetch_optional(&self.read)
            .await?;
        let Some((webhook_id, active)) = webhook else {
            return Ok(RecoverOutcome::NoWebhook);
        };
        if !active {
            return Ok(RecoverOutcome::Inactive);
        }
        let matched = self.count_matching(webhook_id, &req).await?;
        let now = now_micros();
        let mut recovery = Recovery {
            id: Uuid::now_v7(),
            project_id: req.project_id,
            webhook_id,
            event_type: req.event_type.to_owned(),
            since: truncate_micros(req.since),
            until: truncate_micros(req.until),
            include: req.include,
            status: RecoveryStatus::DryRun,
            matched,
            queued: 0,
            created_at: now,
            finished_at: Some(now),
        };
        if req.dry_run {
            return Ok(RecoverOutcome::Started(recovery));
        }
        recovery.status = RecoveryStatus::Running;
        recovery.finished_at = None;
        let mut tx = DB::begin_write(&self.write).await?;
        let now_there: Option<(Uuid, bool)> = sqlx::query_as(WEBHOOK)
            .bind(req.project_id)
            .bind(req.event_type)
            .fetch_optional(&mut *tx)
            .await?;
        match now_there {
            Some((id, true)) if id == webhook_id => {}
            Some((id, false)) if id == webhook_id => return Ok(RecoverOutcome::Inactive),
            // Deleted (perhaps re-created) since it was counted.
            _ => return Ok(RecoverOutcome::NoWebhook),
        }
        sqlx::query(
            "INSERT INTO recoveries (id, project_id, webhook_id, event_type, since, until, \
                 include_failed, include_missed, status, matched, queued, cursor_at, cursor_id, \
                 created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9, 0, $5, $10, $11, $11)",
        )
        .bind(recovery.id)
        .bind(recovery.project_id)
        .bind(webhook_id)
        .bind(recovery.event_type.as_str())
        .bind(Micros(recovery.since))
        .bind(Micros(recovery.until))
        .bind(req.include.failed)
        .bind(req.include.missed)
        .bind(matched)
        // Before every id: the first batch starts at the first event at `since`.
        .bind(Uuid::nil())
        .bind(Micros(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RecoverOutcome::Started(recovery))
    }

    pub async fn get_recovery(
        &self,
        project_id: Uuid,
        recovery_id: Uuid,
    ) -> StoreResult<Option<Recovery>> {
        let row: Option<RecoveryRow> = sqlx::query_as(&format!(
            "SELECT {RECOVERY_COLUMNS} FROM recoveries WHERE id = $1 AND project_id = $2"
        ))
        .bind(recovery_id)
        .bind(project_id)
        .fetch_optional(&self.read)
        .await?;
        row.map(Recovery::try_from).transpose()
    }

    /// Stops a running recovery; one already finished stays as it is. False when the
    /// project has no such recovery.
    pub async fn cancel_recovery(&self, project_id: Uuid, recovery_id: Uuid) -> StoreResult<bool> {
        let now = Micros(now_micros());
        let mut tx = DB::begin_write(&self.write).await?;
        let found: Option<Uuid> = sqlx::query_scalar(&format!(
            "SELECT id FROM recoveries WHERE id = $1 AND project_id = $2{}",
            DB::FOR_UPDATE
        ))
        .bind(recovery_id)
        .bind(project_id)
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Ok(false);
        }
        Self::finish_recovery(&mut tx, recovery_id, RecoveryStatus::Cancelled, now.0).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Leases up to `max` running recoveries that no live runner holds, oldest first.
    pub async fn claim_recoveries(
        &self,
        max: usize,
        lease: Duration,
    ) -> StoreResult<Vec<RecoveryClaim>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = now_micros();
        let token = Uuid::new_v4();
        let ids: Vec<Uuid> = sqlx::query_scalar(&format!(
            "UPDATE recoveries SET lease_token = $1, lease_expires_at = $2, updated_at = $3 \
             WHERE id IN (SELECT id FROM recoveries WHERE status = 'running' \
                 AND (lease_expires_at IS NULL OR lease_expires_at <= $3) \
                 ORDER BY created_at, id LIMIT $4{}) \
             RETURNING id",
            DB::SKIP_LOCKED
        ))
        .bind(token)
        .bind(Micros(add_duration(now, lease)))
        .bind(Micros(now))
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.write)
        .await?;
        Ok(ids
            .into_iter()
            .map(|id| RecoveryClaim {
                id,
                lease_token: token,
            })
            .collect())
    }

    /// Lets a lease go (a runner shutting down), so another runner takes the job at once.
    pub async fn release_recovery(&self, claim: RecoveryClaim) -> StoreResult<()> {
        sqlx::query(
            "UPDATE recoveries SET lease_token = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(claim.id)
        .bind(claim.lease_token)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// One batch of a leased recovery (see the module documentation).
    pub async fn advance_recovery(
        &self,
        claim: RecoveryClaim,
        step: RecoveryStep,
    ) -> StoreResult<RecoveryProgress> {
        let now = now_micros();
        let mut tx = DB::begin_write(&self.write).await?;
        // The job's row first, then the webhook's (shared, so a deletion waits for the
        // batch and then cancels what it queued), then deliveries: recorders lock
        // webhooks before deliveries too, and no one else locks recoveries.
        let job: Option<JobRow> = sqlx::query_as(&format!(
            "SELECT webhook_id, project_id, event_type, until, include_failed, include_missed, \
                 status, lease_token, cursor_at, cursor_id \
             FROM recoveries WHERE id = $1{}",
            DB::FOR_UPDATE
        ))
        .bind(claim.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = job else {
            return Ok(RecoveryProgress::Lost);
        };
        if job.lease_token != Some(claim.lease_token) {
            return Ok(match RecoveryStatus::parse(&job.status)? {
                RecoveryStatus::Running => RecoveryProgress::Lost,
                finished => RecoveryProgress::Finished(finished),
            });
        }
        let active: Option<bool> = sqlx::query_scalar(&format!(
            "SELECT is_active FROM webhooks WHERE id = $1{}",
            DB::FOR_SHARE
        ))
        .bind(job.webhook_id)
        .fetch_optional(&mut *tx)
        .await?;
        if active != Some(true) {
            // Deleted or switched off meanwhile: there is nothing to deliver to.
            Self::finish_recovery(&mut tx, claim.id, RecoveryStatus::Cancelled, now).await?;
            tx.commit().await?;
            return Ok(RecoveryProgress::Finished(RecoveryStatus::Cancelled));
        }
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM deliveries \
                 WHERE webhook_id = $1 AND status = 'pending' LIMIT $2) p",
        )
        .bind(job.webhook_id)
        .bind(i64::try_from(step.max_pending).unwrap_or(i64::MAX))
        .fetch_one(&mut *tx)
        .await?;
        let expires = Micros(add_duration(now, step.lease));
        // Every event looked at may match, so a batch looks at no more than the queue
        // has room for: fresh events of the project never wait behind more than
        // max_pending recovered ones.
        let room = step
            .max_pending
            .saturating_sub(usize::try_from(pending).unwrap_or(usize::MAX));
        let limit = step.scan.min(room);
        if limit == 0 {
            sqlx::query("UPDATE recoveries SET lease_expires_at = $1 WHERE id = $2")
                .bind(expires)
                .bind(claim.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(RecoveryProgress::Waiting);
        }

        // The next events after the cursor, each with whether it matches. The range
        // on created_at alone keeps the scan on events_type_time.
        let include = RecoverInclude {
            failed: job.include_failed,
            missed: job.include_missed,
        };
        let scanned: Vec<(Uuid, Micros, bool)> = sqlx::query_as(&scan_sql(include))
            .bind(job.webhook_id)
            .bind(job.project_id)
            .bind(job.event_type.as_str())
            .bind(job.cursor_at)
            .bind(job.cursor_id)
            .bind(job.until)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        let hits: Vec<Uuid> = scanned
            .iter()
            .filter(|(_, _, hit)| *hit)
            .map(|(id, _, _)| *id)
            .collect();
        // Each one due a microsecond after the one before, so they are claimed in
        // publish order; held behind an earlier pending one if the webhook is ordered.
        let ordered = "EXISTS (SELECT 1 FROM webhooks o WHERE o.id = $1 AND o.ordered)";
        for (n, chunk) in hits.chunks(ROWS_PER_INSERT).enumerate() {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = 6 + 3 * i;
                    let (event, due) = (format!("${}", p + 1), format!("${}", p + 2));
                    let first_due = Incoming {
                        ordered,
                        webhook: "$1",
                        event: &event,
                        delivery: &format!("${p}"),
                        now: &due,
                        held: "$5",
                        batch: false,
                    }
                    .first_due();
                    format!(
                        "(${p}, {event}, $1, $2, $3, 'pending', 0, {first_due}, $4, $4, 'recover')"
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, \
                     status, attempts_made, next_attempt_at, created_at, updated_at, origin) \
                 VALUES {}",
                rows.join(", ")
            );
            let mut insert = sqlx::query(&sql)
                .bind(job.webhook_id)
                .bind(job.project_id)
                .bind(job.event_type.as_str())
                .bind(Micros(now))
                .bind(Micros(held()));
            for (i, event_id) in chunk.iter().enumerate() {
                let offset = Duration::from_micros((n * ROWS_PER_INSERT + i) as u64);
                insert = insert
                    .bind(Uuid::now_v7())
                    .bind(*event_id)
                    .bind(Micros(add_duration(now, offset)));
            }
            insert.execute(&mut *tx).await?;
        }
        let queued = i64::try_from(hits.len()).unwrap_or(i64::MAX);
        let progress = match scanned.last() {
            Some((id, at, _)) if scanned.len() >= limit => {
                sqlx::query(
                    "UPDATE recoveries SET cursor_at = $1, cursor_id = $2, queued = queued + $3, \
                         lease_expires_at = $4, updated_at = $5 WHERE id = $6",
                )
                .bind(*at)
                .bind(*id)
                .bind(queued)
                .bind(expires)
                .bind(Micros(now))
                .bind(claim.id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                RecoveryProgress::Queued(hits.len() as u64)
            }
            // A short batch reached the end of the window.
            _ => {
                sqlx::query("UPDATE recoveries SET queued = queued + $1 WHERE id = $2")
                    .bind(queued)
                    .bind(claim.id)
                    .execute(&mut *tx)
                    .await?;
                Self::finish_recovery(&mut tx, claim.id, RecoveryStatus::Done, now).await?;
                tx.commit().await?;
                RecoveryProgress::Finished(RecoveryStatus::Done)
            }
        };
        if !hits.is_empty() {
            // A head a recorder finished meanwhile did not see these.
            Queue::<DB>::after_commit(&self.write, [job.webhook_id], now, Wake::Head).await;
        }
        Ok(progress)
    }

    async fn finish_recovery(
        tx: &mut DB::Connection,
        id: Uuid,
        status: RecoveryStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let finished: Option<(Uuid, String, i64, i64)> = sqlx::query_as(
            "UPDATE recoveries SET status = $1, finished_at = $2, updated_at = $2, \
                 lease_token = NULL, lease_expires_at = NULL \
             WHERE id = $3 AND status = 'running' \
             RETURNING project_id, event_type, matched, queued",
        )
        .bind(status.as_str())
        .bind(opt(Some(now)))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((project_id, event_type, matched, queued)) = finished {
            let notice = Notice::RecoveryCompleted {
                project_id,
                recovery_id: id,
                event_type: &event_type,
                status: status.as_str(),
                matched,
                queued,
            };
            Self::emit(tx, &notice, now).await?;
        }
        Ok(())
    }
}

/// Deliveries per multi-row INSERT (3 bound values each; well under either
/// database's limit on bound values).
const ROWS_PER_INSERT: usize = 256;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_match_names_each_kind_asked_for() {
        let failed = matches_sql(RecoverInclude {
            failed: true,
            missed: false,
        });
        assert!(failed.contains("'failed', 'cancelled'") && !failed.contains(" OR "));
        let both = matches_sql(RecoverInclude {
            failed: true,
            missed: true,
        });
        assert!(both.contains(" OR NOT EXISTS"), "{both}");
        let none = matches_sql(RecoverInclude {
            failed: false,
            missed: false,
        });
        assert_eq!(none, "false");
    }
}
