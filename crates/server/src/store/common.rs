//! What both backends do with the same SQL, written once and generic over the database:
//! tenants, projects, keys and webhooks, the attempts listing, the fair claim's project
//! scan, the queue reads, cancelling a webhook's pending deliveries, and the
//! failure-streak replay of `record_outcomes`. Every statement here uses `$n`
//! placeholders, which SQLite accepts as well.
//!
//! A backend implements [`BackendOps`]: its pools (as [`Tables`]), its transaction start,
//! and the operations whose SQL or locking genuinely differs; [`WebhookStore`] follows
//! for it from the blanket impl at the end of this file.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Transaction,
    Type,
};
use uuid::Uuid;

use super::held::{self, held, Incoming, Queue, Wake};
use super::list_cache::{ListCache, Listing};
use super::operator::{is_reserved, response_code, About, DisabledReason, Notice};
use super::rows::{
    opt, ApiKeyRow, AttemptRow, Micros, ProjectRow, TenantRow, UpsertedRow, WebhookRow,
    WEBHOOK_COLUMNS,
};
use super::{
    add_duration, attempt_list, attempt_listing_sql, claim_fairly, now_micros, truncate_micros,
    webhook_limit_reached, ApiKeyRecord, AttemptList, AttemptPage, AttemptStatus, ClaimBatch,
    ClaimFrom, ClaimedDelivery, DeliveryOutcome, DisablePolicy, FailureStreak, KeyOwner, NextDue,
    Project, PublishEvent, Published, PurgeStep, QueueStats, Recorded, RecoverOutcome,
    RecoverRequest, Recovery, RecoveryClaim, RecoveryProgress, RecoveryStep, ResendOutcome,
    RetentionLock, RetentionTable, SendSlots, SigningSecret, StoreError, StoreResult, Tenant,
    UpsertOutcome, UpsertWebhook, Webhook, WebhookStore, FAIR_CLAIM_PROJECTS,
};

/// Of a pending delivery `d` of an active webhook `w`, whether the ordering rule lets
/// it be claimed: always for an unordered webhook; for an ordered one only the head of
/// its queue (the first by event id, which orders by publish time, then by id) and only
/// while none of the webhook's deliveries is leased. Written around the instant "now",
/// which goes between the two parts.
pub(crate) const ORDER_ALLOWS_HEAD: &str =
    "(NOT w.ordered OR (d.id = (SELECT h.id FROM deliveries h \
     WHERE h.webhook_id = d.webhook_id AND h.status = 'pending' ORDER BY h.event_id, h.id LIMIT 1) \
     AND NOT EXISTS (SELECT 1 FROM deliveries f WHERE f.webhook_id = d.webhook_id \
     AND f.status = 'pending' AND f.lease_expires_at > ";
pub(crate) const ORDER_ALLOWS_TAIL: &str = ")))";

/// [`ORDER_ALLOWS_HEAD`] and [`ORDER_ALLOWS_TAIL`] around the placeholder `now`.
pub(crate) fn order_allows(now: &str) -> String {
    format!("{ORDER_ALLOWS_HEAD}{now}{ORDER_ALLOWS_TAIL}")
}

/// Of a pending delivery `d`, whether its webhook is active and [`order_allows`] it,
/// around the instant `now`. A scalar subquery rather than an EXISTS on purpose:
/// PostgreSQL turns an EXISTS into a join, which loses the due index's order, so every
/// claim would read and sort the whole due backlog; a scalar subquery stays a filter on
/// the ordered index scan, which stops as soon as it has its LIMIT.
pub(crate) fn claimable(now: &str) -> String {
    format!(
        "(SELECT w.is_active AND {} FROM webhooks w WHERE w.id = d.webhook_id)",
        order_allows(now)
    )
}

/// The next instant a delivery can be claimed (`$1`: now, `$2`: [`held`]), for the
/// idle workers. The walk ends before the held deliveries, which cannot be.
pub(crate) fn next_due_sql() -> String {
    next_due_query("$1", "$2", "")
}

/// [`next_due_sql`] around the SQL of its instants `now` and `held`, leaving out also
/// what `except` (a condition on `d`, starting with AND, or empty) says: what a claim
/// running the query in its own statement or command just took.
pub(crate) fn next_due_query(now: &str, held: &str, except: &str) -> String {
    format!(
        "SELECT d.next_attempt_at FROM deliveries d \
         WHERE d.status = 'pending' AND d.next_attempt_at < {held} {except} \
           AND {} \
         ORDER BY d.next_attempt_at, d.id LIMIT 1",
        claimable(now)
    )
}

/// Pending deliveries, and the oldest due one that can be claimed (`$1`: now).
pub(crate) fn queue_stats_sql() -> String {
    format!(
        "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending'), \
             (SELECT d.next_attempt_at FROM deliveries d \
              WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
                AND {} \
              ORDER BY d.next_attempt_at, d.id LIMIT 1)",
        claimable("$1")
    )
}

/// The little that differs between the databases inside otherwise shared statements.
pub(crate) trait Dialect: Database {
    /// A test that the optional uuid parameter `$1` is NULL (PostgreSQL must be told
    /// the parameter's type when nothing else in the statement says it).
    const UUID_1_IS_NULL: &'static str;
    /// Row locks, appended to a SELECT: nothing on SQLite, whose write transaction
    /// already excludes every other writer.
    const FOR_UPDATE: &'static str;
    const FOR_SHARE: &'static str;
    /// Appended to a sub-select picking rows to lease: locked ones are passed over.
    const SKIP_LOCKED: &'static str;

    /// Rows a statement changed (each database's result type has the count, but not
    /// through a common trait).
    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// Starts a write transaction (SQLite takes its write lock up front).
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = sqlx::Result<Transaction<'static, Self>>> + Send;
}

/// Column types a shared statement binds and reads back.
pub(crate) trait Column<DB: Database>:
    for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

impl<DB: Database, T> Column<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

/// A backend's pools, which the shared statements run on.
#[derive(Debug)]
pub(crate) struct Tables<DB: Database> {
    /// Where writes go (on SQLite, its one writer connection).
    pub write: Pool<DB>,
    /// Where reads go (the same pool on PostgreSQL).
    pub read: Pool<DB>,
    /// Long webhook listings, by project.
    pub lists: Arc<ListCache>,
    /// The last claim was a busy one (see [`super::claim_fairly`]): the next goes
    /// straight to the fair claim.
    pub busy: Arc<AtomicBool>,
}

impl<DB: Database> Tables<DB> {
    pub fn new(write: Pool<DB>, read: Pool<DB>) -> Self {
        Self {
            write,
            read,
            lists: Arc::default(),
            busy: Arc::default(),
        }
    }
}

impl<DB: Database> Clone for Tables<DB> {
    fn clone(&self) -> Self {
        Self {
            write: self.write.clone(),
            read: self.read.clone(),
            lists: self.lists.clone(),
            busy: self.busy.clone(),
        }
    }
}

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
    Vec<u8>: Column<DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<Micros>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
{
    pub async fn create_tenant(&self, name: &str) -> StoreResult<Tenant> {
        let tenant = Tenant {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            created_at: now_micros(),
        };
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(tenant.id)
            .bind(tenant.name.as_str())
            .bind(Micros(tenant.created_at))
            .execute(&self.write)
            .await?;
        Ok(tenant)
    }

    pub async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        let rows: Vec<TenantRow> =
            sqlx::query_as("SELECT id, name, created_at FROM tenants ORDER BY created_at, id")
                .fetch_all(&self.read)
                .await?;
        Ok(rows.into_iter().map(Tenant::from).collect())
    }

    pub async fn create_project(&self, tenant_id: Uuid, name: &str) -> StoreResult<Project> {
        let project = Project {
            id: Uuid::now_v7(),
            tenant_id,
            name: name.to_owned(),
            created_at: now_micros(),
        };
        // Checking the tenant in the same statement turns a missing tenant into
        // "no row inserted" instead of a foreign-key error to decode.
        let done = sqlx::query(
            "INSERT INTO projects (id, tenant_id, name, created_at) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $2)",
        )
        .bind(project.id)
        .bind(tenant_id)
        .bind(project.name.as_str())
        .bind(Micros(project.created_at))
        .execute(&self.write)
        .await?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(project)
    }

    pub async fn list_projects(&self, tenant_id: Option<Uuid>) -> StoreResult<Vec<Project>> {
        let rows: Vec<ProjectRow> = sqlx::query_as(&format!(
            "SELECT id, tenant_id, name, created_at FROM projects \
             WHERE {} OR tenant_id = $1 ORDER BY created_at, id",
            DB::UUID_1_IS_NULL
        ))
        .bind(tenant_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(Project::from).collect())
    }

    pub async fn get_project(&self, project_id: Uuid) -> StoreResult<Option<Project>> {
        let row: Option<ProjectRow> =
            sqlx::query_as("SELECT id, tenant_id, name, created_at FROM projects WHERE id = $1")
                .bind(project_id)
                .fetch_optional(&self.read)
                .await?;
        Ok(row.map(Project::from))
    }

    pub async fn insert_api_key(&self, record: &ApiKeyRecord) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO api_keys (id, project_id, lookup_id, secret_hash, created_at, revoked_at) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM projects WHERE id = $2)",
        )
        .bind(record.id)
        .bind(record.project_id)
        .bind(record.lookup_id.as_str())
        .bind(record.secret_hash.as_str())
        .bind(Micros(truncate_micros(record.created_at)))
        .bind(opt(record.revoked_at.map(truncate_micros)))
        .execute(&self.write)
        .await
        .map_err(|e| {
            if matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation()) {
                StoreError::Conflict("an API key with this id or lookup id exists".into())
            } else {
                e.into()
            }
        })?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn list_api_keys(&self, project_id: Option<Uuid>) -> StoreResult<Vec<ApiKeyRecord>> {
        let rows: Vec<ApiKeyRow> = sqlx::query_as(&format!(
            "SELECT id, project_id, lookup_id, secret_hash, created_at, revoked_at \
             FROM api_keys WHERE {} OR project_id = $1 ORDER BY created_at, id",
            DB::UUID_1_IS_NULL
        ))
        .bind(project_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(ApiKeyRecord::from).collect())
    }

    pub async fn revoke_api_key(&self, key_id: Uuid) -> StoreResult<()> {
        // Revoking twice keeps the first instant: it is when the key stopped working.
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(Micros(now_micros()))
                .bind(key_id)
                .execute(&self.write)
                .await?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn find_api_key(&self, lookup_id: &str) -> StoreResult<Option<KeyOwner>> {
        let row: Option<(Uuid, Uuid, Uuid, String, bool)> = sqlx::query_as(
            "SELECT k.id, p.tenant_id, k.project_id, k.secret_hash, \
                    k.revoked_at IS NOT NULL AS revoked \
             FROM api_keys k JOIN projects p ON p.id = k.project_id \
             WHERE k.lookup_id = $1",
        )
        .bind(lookup_id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(
            |(key_id, tenant_id, project_id, secret_hash, revoked)| KeyOwner {
                key_id,
                tenant_id,
                project_id,
                secret_hash,
                revoked,
            },
        ))
    }

    pub async fn is_empty(&self) -> StoreResult<bool> {
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants)")
            .fetch_one(&self.read)
            .await?;
        Ok(!any)
    }

    /// The create-or-update statement of [`WebhookStore::upsert_webhook`], on `conn`
    /// (the backend decides the transaction and locking around it). It inserts only
    /// when the webhook exists (then the conflict branch updates it) or the project is
    /// below its limit; no row back means the limit held. The update branch never
    /// touches the secret, so comparing the returned secret with the one offered tells
    /// which branch ran (two random 32-byte secrets do not collide).
    pub async fn upsert_webhook<'c, E>(
        conn: E,
        input: UpsertWebhook<'_>,
    ) -> StoreResult<UpsertOutcome>
    where
        E: Executor<'c, Database = DB>,
    {
        let row: Option<UpsertedRow> = sqlx::query_as(&format!(
            "INSERT INTO webhooks (id, project_id, event_type, webhook_url, auth_header, \
                 signing_secret, is_active, consecutive_failures, created_at, updated_at, \
                 rate_limit, ordered) \
             SELECT $1, $2, $3, $4, $5, $6, true, 0, $7, $7, $9, $10 \
             WHERE EXISTS (SELECT 1 FROM webhooks WHERE project_id = $2 AND event_type = $3) \
                OR (SELECT count(*) FROM webhooks WHERE project_id = $2) < $8 \
             ON CONFLICT (project_id, event_type) DO UPDATE SET \
                 webhook_url = excluded.webhook_url, \
                 auth_header = excluded.auth_header, \
                 rate_limit = excluded.rate_limit, \
                 ordered = excluded.ordered, \
                 is_active = true, \
                 consecutive_failures = 0, \
                 first_failure_at = NULL, \
                 updated_at = excluded.updated_at \
             RETURNING {WEBHOOK_COLUMNS}, signing_secret"
        ))
        .bind(Uuid::now_v7())
        .bind(input.project_id)
        .bind(input.event_type)
        .bind(input.webhook_url)
        .bind(input.auth_header)
        .bind(input.new_secret.expose())
        .bind(Micros(now_micros()))
        .bind(i64::try_from(input.max_webhooks).unwrap_or(i64::MAX))
        .bind(input.rate_limit)
        .bind(input.ordered)
        .fetch_optional(conn)
        .await?;
        let row = row.ok_or_else(|| webhook_limit_reached(input.max_webhooks))?;
        let webhook = Webhook::from(row.webhook);
        Ok(if row.signing_secret == input.new_secret.expose() {
            UpsertOutcome::Created {
                webhook,
                secret: SigningSecret::from_stored(row.signing_secret),
            }
        } else {
            UpsertOutcome::Updated { webhook }
        })
    }

    pub async fn get_webhook(
        &self,
        project_id: Uuid,
        event_type: &str,
    ) -> StoreResult<Option<Webhook>> {
        let row: Option<WebhookRow> = sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE project_id = $1 AND event_type = $2"
        ))
        .bind(project_id)
        .bind(event_type)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(Webhook::from))
    }

    pub async fn delete_webhook(&self, project_id: Uuid, event_type: &str) -> StoreResult<bool> {
        let now = now_micros();
        let mut tx = DB::begin_write(&self.write).await?;
        // The DELETE takes the webhook's row lock (on PostgreSQL) before any delivery is
        // touched, the same order record_outcomes uses.
        let deleted: Option<Uuid> = sqlx::query_scalar(
            "DELETE FROM webhooks WHERE project_id = $1 AND event_type = $2 RETURNING id",
        )
        .bind(project_id)
        .bind(event_type)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(webhook_id) = deleted else {
            return Ok(false);
        };
        Self::cancel_pending(&mut tx, webhook_id, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// See [`WebhookStore::resend_event`]. The webhook's row is read in the write
    /// transaction, so a concurrent delete either comes first (no webhook) or cancels
    /// the new delivery after it.
    pub async fn resend_event(
        &self,
        project_id: Uuid,
        event_type: &str,
        event_id: Uuid,
    ) -> StoreResult<ResendOutcome> {
        let now = now_micros();
        let mut tx = DB::begin_write(&self.write).await?;
        let webhook: Option<WebhookRow> = sqlx::query_as(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE project_id = $1 AND event_type = $2"
        ))
        .bind(project_id)
        .bind(event_type)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(webhook) = webhook.map(Webhook::from) else {
            return Ok(ResendOutcome::NoWebhook);
        };
        let event: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM events WHERE id = $1 AND project_id = $2 AND event_type = $3",
        )
        .bind(event_id)
        .bind(project_id)
        .bind(event_type)
        .fetch_optional(&mut *tx)
        .await?;
        if event.is_none() {
            return Ok(ResendOutcome::NoEvent);
        }
        if !webhook.is_active {
            return Ok(ResendOutcome::Inactive);
        }
        let delivery_id = Uuid::now_v7();
        let due = Incoming {
            ordered: "$7",
            webhook: "$3",
            event: "$2",
            delivery: "$1",
            now: "$6",
            held: "$8",
            batch: false,
        }
        .first_due();
        sqlx::query(&format!(
            "INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, status, \
                 attempts_made, next_attempt_at, created_at, updated_at, origin) \
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, {due}, $6, $6, 'resend')"
        ))
        .bind(delivery_id)
        .bind(event_id)
        .bind(webhook.id)
        .bind(project_id)
        .bind(event_type)
        .bind(Micros(now))
        .bind(webhook.ordered)
        .bind(Micros(held()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if webhook.ordered {
            // A head a recorder finished meanwhile did not see this one.
            Queue::<DB>::after_commit(&self.write, [webhook.id], now, Wake::Head).await;
        }
        Ok(ResendOutcome::Queued {
            delivery_id,
            queued_at: now,
        })
    }

    pub async fn rotate_secret(
        &self,
        project_id: Uuid,
        event_type: &str,
        new_secret: &SigningSecret,
        grace: Duration,
    ) -> StoreResult<bool> {
        let now = now_micros();
        let keep_previous = !grace.is_zero();
        let previous_expires = keep_previous.then(|| Micros(add_duration(now, grace)));
        // SET expressions read the row as it was before the update, so
        // previous_secret receives the secret being replaced.
        let done = sqlx::query(
            "UPDATE webhooks SET \
                 previous_secret = CASE WHEN $1 THEN signing_secret END, \
                 previous_secret_expires_at = $2, \
                 signing_secret = $3, \
                 updated_at = $4 \
             WHERE project_id = $5 AND event_type = $6",
        )
        .bind(keep_previous)
        .bind(previous_expires)
        .bind(new_secret.expose())
        .bind(Micros(now))
        .bind(project_id)
        .bind(event_type)
        .execute(&self.write)
        .await?;
        Ok(DB::rows_affected(&done) > 0)
    }

    pub async fn list_attempts(
        &self,
        project_id: Uuid,
        event_type: &str,
        page: AttemptPage,
        max_bytes: usize,
    ) -> StoreResult<AttemptList> {
        let (limit, offset, after) = match page {
            AttemptPage::Offset { limit, offset } => (limit, offset, None),
            AttemptPage::After {
                limit,
                created_at,
                id,
            } => (limit, 0, Some((created_at, id))),
        };
        let limit = limit.max(0);
        let sql = attempt_listing_sql(after.is_some());
        let mut query = sqlx::query(&sql)
            .bind(project_id)
            .bind(event_type)
            .bind(limit.saturating_add(1))
            .bind(offset.max(0))
            .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX));
        if let Some((created_at, id)) = after {
            query = query.bind(Micros(truncate_micros(created_at))).bind(id);
        }
        let rows = query.fetch_all(&self.read).await?;
        attempt_list(
            &rows,
            limit,
            |row| Ok(sqlx::Row::try_get(row, "fits")?),
            |row| AttemptRow::from_row(row)?.try_into(),
        )
    }

    /// The first [`FAIR_CLAIM_PROJECTS`] + 1 projects with pending deliveries (see
    /// [`super::claim_fairly`]). A skip scan over deliveries_project_due:
    /// one probe to the next project, one for its oldest pending delivery, reading
    /// nothing else, locking nothing.
    pub async fn pending_projects(&self, now: DateTime<Utc>) -> StoreResult<Vec<(Uuid, bool)>> {
        Ok(sqlx::query_as(
            "WITH RECURSIVE p(pid, n) AS ( \
                 SELECT (SELECT project_id FROM deliveries WHERE status = 'pending' \
                         ORDER BY project_id LIMIT 1), 1 \
                 UNION ALL \
                 SELECT (SELECT d.project_id FROM deliveries d \
                         WHERE d.status = 'pending' AND d.project_id > p.pid \
                         ORDER BY d.project_id LIMIT 1), p.n + 1 \
                 FROM p WHERE p.pid IS NOT NULL AND p.n <= $2 \
             ) \
             SELECT p.pid, (SELECT min(d.next_attempt_at) FROM deliveries d \
                     WHERE d.status = 'pending' AND d.project_id = p.pid) <= $1 \
             FROM p WHERE p.pid IS NOT NULL",
        )
        .bind(Micros(now))
        .bind(i64::try_from(FAIR_CLAIM_PROJECTS).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await?)
    }

    pub async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        // Walks the due index and stops at the first delivery that can actually be
        // claimed. A publish racing with a webhook's deletion can leave a pending row
        // whose webhook is gone; it must not keep a worker awake.
        // Deliveries an ordered webhook holds back behind its head cannot be claimed
        // either; most are held out of the range, the rest are passed over.
        let next: Option<Micros> = sqlx::query_scalar(&next_due_sql())
            .bind(Micros(now_micros()))
            .bind(Micros(held()))
            .fetch_optional(&self.read)
            .await?;
        Ok(next.map(DateTime::from))
    }

    pub async fn queue_stats(&self) -> StoreResult<QueueStats> {
        let now = now_micros();
        // Deliveries an ordered webhook holds back behind its head wait on purpose,
        // like retries: they do not make the queue look late.
        let (pending, oldest): (i64, Option<Micros>) = sqlx::query_as(&queue_stats_sql())
            .bind(Micros(now))
            .fetch_one(&self.read)
            .await?;
        Ok(QueueStats {
            pending,
            oldest_due_age: oldest.map(|due| (now - due.0).to_std().unwrap_or_default()),
        })
    }

    /// The sweep of store/held.rs: wakes every held head (`thorough`: and whatever an
    /// unordered webhook holds). Answers how many it woke.
    pub async fn wake_held(&self, thorough: bool) -> StoreResult<u64> {
        let done = sqlx::query(&held::wake_sql(thorough))
            .bind(Micros(now_micros()))
            .bind(Micros(held()))
            .execute(&self.write)
            .await?;
        Ok(DB::rows_affected(&done))
    }

    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    /// Hands one claimed delivery back at `now`, due again at `due`
    /// ([`WebhookStore::release`]); the backend decides the transaction.
    pub async fn release_one<'c, E>(
        conn: E,
        claim: (Uuid, Uuid),
        now: DateTime<Utc>,
        due: DateTime<Utc>,
    ) -> StoreResult<()>
    where
        E: Executor<'c, Database = DB>,
    {
        let (delivery_id, lease_token) = claim;
        sqlx::query(
            "UPDATE deliveries SET lease_token = NULL, lease_expires_at = NULL, \
                 next_attempt_at = $4, updated_at = $1 \
             WHERE id = $2 AND lease_token = $3 AND status = 'pending'",
        )
        .bind(Micros(now))
        .bind(delivery_id)
        .bind(lease_token)
        .bind(Micros(due))
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Cancels a webhook's pending deliveries (deleted or disabled webhook), releasing
    /// any lease so that an in-flight outcome for them is recognised as stale. On
    /// PostgreSQL the caller holds the webhook's row lock.
    pub async fn cancel_pending(
        tx: &mut DB::Connection,
        webhook_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE deliveries SET status = 'cancelled', lease_token = NULL, \
             lease_expires_at = NULL, updated_at = $1 \
             WHERE webhook_id = $2 AND status = 'pending'",
        )
        .bind(Micros(now))
        .bind(webhook_id)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// The end of `record_outcomes`: `live` maps each delivery whose lease still held
    /// to its webhook, and `streaks` holds those webhooks' streaks as loaded inside the
    /// same transaction. Replays the applied attempts into each streak in time order,
    /// writes back the streaks that changed, cancels the pending deliveries of the
    /// webhooks this disables, and publishes the operator events all this calls for,
    /// in the same transaction.
    pub async fn replay_streaks(
        tx: &mut DB::Connection,
        outcomes: &[DeliveryOutcome],
        live: &BTreeMap<Uuid, Uuid>,
        streaks: &BTreeMap<Uuid, FailureStreak>,
        policy: DisablePolicy,
        now: DateTime<Utc>,
    ) -> StoreResult<Recorded> {
        // Webhook id -> the applied outcomes (time, outcome). Like a failure streak, a
        // 410 counts only while its delivery's lease still held: a late answer to a
        // delivery that was cancelled meanwhile (its webhook deleted, or disabled and
        // perhaps re-enabled by an upsert since) changes nothing.
        let mut applied: BTreeMap<Uuid, Vec<(DateTime<Utc>, &DeliveryOutcome)>> = BTreeMap::new();
        for o in outcomes {
            if let Some(webhook) = live.get(&o.delivery_id) {
                applied
                    .entry(*webhook)
                    .or_default()
                    .push((truncate_micros(o.attempt.created_at), o));
            }
        }
        let mut recorded = Recorded::default();
        for (webhook_id, mut attempts) in applied {
            // A webhook deleted meanwhile has no streak left to keep.
            let Some(before) = streaks.get(&webhook_id).copied() else {
                continue;
            };
            let mut streak = before;
            attempts.sort_by_key(|(at, _)| *at);
            let mut disabled_by: Option<(&DeliveryOutcome, DisabledReason)> = None;
            let mut notices = Vec::new();
            for (at, outcome) in &attempts {
                let a = &outcome.attempt;
                let about = About {
                    project_id: a.project_id,
                    event_type: &a.event_type,
                    webhook_url: &a.webhook_url,
                };
                if a.status == AttemptStatus::Success && streak.consecutive_failures >= 3 {
                    notices.push(Notice::WebhookRecovered {
                        about,
                        failures: streak.consecutive_failures,
                    });
                }
                if streak.record(a.status, *at, policy) {
                    disabled_by = Some((outcome, DisabledReason::Failing));
                }
                if outcome.disable_webhook && streak.gone() {
                    disabled_by = Some((outcome, DisabledReason::Gone));
                }
                // Out of tries (a 410 is reported as the webhook's switching off).
                if outcome.retry_at.is_none()
                    && a.status == AttemptStatus::Failed
                    && !outcome.disable_webhook
                    && !is_reserved(&a.event_type)
                {
                    if let Some(suppressed) =
                        Self::exhausted_report(&mut *tx, webhook_id, policy.exhausted_window, now)
                            .await?
                    {
                        notices.push(Notice::DeliveryExhausted {
                            about,
                            event_id: a.event_id,
                            attempts: a.attempt_number,
                            last_response_code: response_code(a.response_code),
                            last_error: a.error_message.as_deref(),
                            suppressed,
                        });
                    }
                }
            }
            if let Some((outcome, reason)) = disabled_by {
                let a = &outcome.attempt;
                notices.push(Notice::WebhookDisabled {
                    about: About {
                        project_id: a.project_id,
                        event_type: &a.event_type,
                        webhook_url: &a.webhook_url,
                    },
                    reason,
                    consecutive_failures: streak.consecutive_failures,
                    last_response_code: response_code(a.response_code),
                });
            }
            if streak != before {
                let disables = disabled_by.is_some();
                sqlx::query(
                    "UPDATE webhooks SET consecutive_failures = $1, first_failure_at = $2, \
                         is_active = $3, updated_at = CASE WHEN $4 THEN $5 ELSE updated_at END \
                     WHERE id = $6",
                )
                .bind(streak.consecutive_failures)
                .bind(opt(streak.first_failure_at))
                .bind(streak.is_active)
                .bind(disables)
                .bind(Micros(now))
                .bind(webhook_id)
                .execute(&mut *tx)
                .await?;
                if disables {
                    Self::cancel_pending(&mut *tx, webhook_id, now).await?;
                    recorded.disabled.push(webhook_id);
                }
            }
            for notice in &notices {
                if Self::emit(&mut *tx, notice, now).await? {
                    recorded.notices += 1;
                }
            }
        }
        Ok(recorded)
    }
}

/// A backend: its pools and the operations whose SQL or locking differs between the
/// databases. Each is documented on [`WebhookStore`].
pub(crate) trait BackendOps: Send + Sync + 'static {
    type Db: Dialect;

    fn tables(&self) -> &Tables<Self::Db>;

    fn upsert_webhook(
        &self,
        input: UpsertWebhook<'_>,
    ) -> impl Future<Output = StoreResult<UpsertOutcome>> + Send;
    fn list_webhooks(
        &self,
        project_id: Uuid,
    ) -> impl Future<Output = StoreResult<Vec<Webhook>>> + Send;
    fn publish_event(
        &self,
        event: PublishEvent<'_>,
    ) -> impl Future<Output = StoreResult<Published>> + Send;
    /// Leases up to `max` due deliveries from `from` (see [`super::claim_fairly`]),
    /// and, if it costs nothing more, tells when the next one comes due
    /// ([`ClaimBatch::next_due`]). From [`ClaimFrom::AllDue`], a claim that took
    /// nothing tells nothing unless nothing was due.
    fn claim_from(
        &self,
        from: ClaimFrom<'_>,
        max: usize,
        lease: Duration,
    ) -> impl Future<Output = StoreResult<(Vec<ClaimedDelivery>, Option<NextDue>)>> + Send;
    /// Puts what one [`WebhookStore::claim_due_skipping`] claimed in the order it is
    /// handed out.
    fn order_claims(_claimed: &mut [ClaimedDelivery]) {}
    /// Called with at least one outcome.
    fn record_outcomes(
        &self,
        outcomes: &[DeliveryOutcome],
        policy: DisablePolicy,
    ) -> impl Future<Output = StoreResult<Recorded>> + Send;
    /// Called with at least one claim.
    fn release(
        &self,
        claims: &[(Uuid, Uuid)],
        due: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// One process owns the database (SQLite): the right to purge is always free.
    fn retention_lock(&self) -> impl Future<Output = StoreResult<Option<RetentionLock>>> + Send {
        async { Ok(Some(RetentionLock::default())) }
    }
}

// The bounds are those of the impl of `Tables` (the column types both databases bind
// and decode); Rust does not carry them over from there.
#[async_trait]
impl<B: BackendOps> WebhookStore for B
where
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'r> &'r str: ColumnIndex<<B::Db as Database>::Row>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    Uuid: Column<B::Db>,
    Micros: Column<B::Db>,
    String: Column<B::Db>,
    i64: Column<B::Db>,
    bool: Column<B::Db>,
    Vec<u8>: Column<B::Db>,
    for<'q> Option<Uuid>: Encode<'q, B::Db>,
    for<'q> Option<Micros>: Encode<'q, B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db>,
    for<'q> Option<i64>: Encode<'q, B::Db>,
{
    fn portal(&self) -> &dyn super::portal::PortalStore {
        self.tables()
    }
    async fn create_tenant(&self, name: &str) -> StoreResult<Tenant> {
        self.tables().create_tenant(name).await
    }
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.tables().list_tenants().await
    }
    async fn create_project(&self, tenant_id: Uuid, name: &str) -> StoreResult<Project> {
        self.tables().create_project(tenant_id, name).await
    }
    async fn list_projects(&self, tenant_id: Option<Uuid>) -> StoreResult<Vec<Project>> {
        self.tables().list_projects(tenant_id).await
    }
    async fn get_project(&self, project_id: Uuid) -> StoreResult<Option<Project>> {
        self.tables().get_project(project_id).await
    }
    async fn insert_api_key(&self, record: &ApiKeyRecord) -> StoreResult<()> {
        self.tables().insert_api_key(record).await
    }
    async fn list_api_keys(&self, project_id: Option<Uuid>) -> StoreResult<Vec<ApiKeyRecord>> {
        self.tables().list_api_keys(project_id).await
    }
    async fn revoke_api_key(&self, key_id: Uuid) -> StoreResult<()> {
        self.tables().revoke_api_key(key_id).await
    }
    async fn find_api_key(&self, lookup_id: &str) -> StoreResult<Option<KeyOwner>> {
        self.tables().find_api_key(lookup_id).await
    }
    async fn is_empty(&self) -> StoreResult<bool> {
        self.tables().is_empty().await
    }
    async fn upsert_webhook(&self, input: UpsertWebhook<'_>) -> StoreResult<UpsertOutcome> {
        BackendOps::upsert_webhook(self, input).await
    }
    async fn list_webhooks(&self, project_id: Uuid) -> StoreResult<Listing> {
        let tables = self.tables();
        // The version is read before the list: a change committed in between moves
        // it past the one the list is kept at, so the next listing reads again.
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM webhook_list_versions WHERE project_id = $1")
                .bind(project_id)
                .fetch_optional(&tables.read)
                .await?;
        let Some(version) = version else {
            return BackendOps::list_webhooks(self, project_id)
                .await
                .map(Listing::Read);
        };
        if let Some(kept) = tables.lists.get(project_id, version) {
            return Ok(Listing::Kept(kept));
        }
        let list = BackendOps::list_webhooks(self, project_id).await?;
        Ok(tables.lists.put(project_id, version, list))
    }
    async fn get_webhook(
        &self,
        project_id: Uuid,
        event_type: &str,
    ) -> StoreResult<Option<Webhook>> {
        self.tables().get_webhook(project_id, event_type).await
    }
    async fn delete_webhook(&self, project_id: Uuid, event_type: &str) -> StoreResult<bool> {
        self.tables().delete_webhook(project_id, event_type).await
    }
    async fn rotate_secret(
        &self,
        project_id: Uuid,
        event_type: &str,
        new_secret: &SigningSecret,
        grace: Duration,
    ) -> StoreResult<bool> {
        self.tables()
            .rotate_secret(project_id, event_type, new_secret, grace)
            .await
    }
    async fn list_attempts(
        &self,
        project_id: Uuid,
        event_type: &str,
        page: AttemptPage,
        max_bytes: usize,
    ) -> StoreResult<AttemptList> {
        self.tables()
            .list_attempts(project_id, event_type, page, max_bytes)
            .await
    }
    async fn publish_event(&self, event: PublishEvent<'_>) -> StoreResult<Published> {
        BackendOps::publish_event(self, event).await
    }
    async fn resend_event(
        &self,
        project_id: Uuid,
        event_type: &str,
        event_id: Uuid,
    ) -> StoreResult<ResendOutcome> {
        self.tables()
            .resend_event(project_id, event_type, event_id)
            .await
    }
    async fn start_recovery(&self, request: RecoverRequest<'_>) -> StoreResult<RecoverOutcome> {
        self.tables().start_recovery(request).await
    }
    async fn get_recovery(
        &self,
        project_id: Uuid,
        recovery_id: Uuid,
    ) -> StoreResult<Option<Recovery>> {
        self.tables().get_recovery(project_id, recovery_id).await
    }
    async fn cancel_recovery(&self, project_id: Uuid, recovery_id: Uuid) -> StoreResult<bool> {
        self.tables().cancel_recovery(project_id, recovery_id).await
    }
    async fn claim_recoveries(
        &self,
        max: usize,
        lease: Duration,
    ) -> StoreResult<Vec<RecoveryClaim>> {
        self.tables().claim_recoveries(max, lease).await
    }
    async fn advance_recovery(
        &self,
        claim: RecoveryClaim,
        step: RecoveryStep,
    ) -> StoreResult<RecoveryProgress> {
        self.tables().advance_recovery(claim, step).await
    }
    async fn release_recovery(&self, claim: RecoveryClaim) -> StoreResult<()> {
        self.tables().release_recovery(claim).await
    }
    async fn claim_batch(
        &self,
        max: usize,
        lease: Duration,
        skip: &[Uuid],
    ) -> StoreResult<ClaimBatch> {
        let scan = || self.tables().pending_projects(now_micros());
        let mut batch = claim_fairly(self, scan, max, lease, skip).await?;
        B::order_claims(&mut batch.deliveries);
        Ok(batch)
    }
    async fn record_outcomes(
        &self,
        outcomes: &[DeliveryOutcome],
        policy: DisablePolicy,
    ) -> StoreResult<Recorded> {
        if outcomes.is_empty() {
            return Ok(Recorded::default());
        }
        BackendOps::record_outcomes(self, outcomes, policy).await
    }
    async fn retention_lock(&self) -> StoreResult<Option<RetentionLock>> {
        BackendOps::retention_lock(self).await
    }
    async fn take_send_slots(
        &self,
        webhook_id: Uuid,
        per_second: i64,
        wanted: usize,
        horizon: Duration,
    ) -> StoreResult<SendSlots> {
        self.tables()
            .take_send_slots(webhook_id, per_second, wanted, horizon)
            .await
    }
    async fn release_each(&self, claims: &[(Uuid, Uuid, DateTime<Utc>)]) -> StoreResult<()> {
        self.tables().release_each(claims).await
    }
    async fn purge(
        &self,
        table: RetentionTable,
        horizon: DateTime<Utc>,
        after: Uuid,
        batch: usize,
    ) -> StoreResult<PurgeStep> {
        self.tables().purge(table, horizon, after, batch).await
    }
    async fn release(&self, claims: &[(Uuid, Uuid)], due: DateTime<Utc>) -> StoreResult<()> {
        if claims.is_empty() {
            return Ok(());
        }
        BackendOps::release(self, claims, due).await
    }
    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        self.tables().next_due().await
    }
    async fn wake_held(&self, thorough: bool) -> StoreResult<u64> {
        self.tables().wake_held(thorough).await
    }
    async fn queue_stats(&self) -> StoreResult<QueueStats> {
        self.tables().queue_stats().await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.tables().ping().await
    }
}
