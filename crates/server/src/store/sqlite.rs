//! The embedded backend: one SQLite file, created on first start.
//!
//! SQLite admits one writer at a time. Rather than letting several pooled connections
//! race for the write lock (and spin in the busy handler), every write goes through a
//! pool holding exactly one connection, and each write transaction starts with
//! `BEGIN IMMEDIATE`, which takes the write lock up front. Reads use a separate small
//! pool; in WAL mode they never block the writer nor wait for it. `busy_timeout` covers
//! the remaining case of another process (the CLI creating a key while the server runs)
//! holding the lock for a moment.
//!
//! Instants are stored as INTEGER microseconds since the Unix epoch (UTC) and ids as
//! 16-byte BLOBs; see the migration for the reasoning.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::group_commit::{Committer, GroupCommit, PublishJob};
use super::{
    add_duration, attempt_list, attempt_listing_sql, claim_fairly, now_micros, status_after,
    truncate_micros, webhook_limit_reached, ApiKeyRecord, Attempt, AttemptList, AttemptPage,
    AttemptStatus, ClaimFrom, ClaimedDelivery, DeliveryOutcome, DisablePolicy, FailureStreak,
    FairClaim, KeyCache, KeyOwner, Project, PublishEvent, Published, QueueStats, SigningSecret,
    StoreError, StoreResult, Tenant, UpsertOutcome, UpsertWebhook, Webhook, WebhookStore,
    FAIR_CLAIM_PROJECTS,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Read connections. Reads are short index lookups; a handful covers the API's
/// concurrency without holding many file descriptors.
const READERS: u32 = 4;

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a caller waits for the single write connection. Writes are short, so a
/// long wait means the database is stuck, and an error is more useful than a hang.
const WRITER_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Outcomes per multi-row statement in `record_outcomes` (14 values per attempt row;
/// SQLite accepts 32,766 bound values per statement).
const RECORD_CHUNK: usize = 128;

/// How often the WAL is checkpointed (see [`checkpoint_loop`]).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

const WEBHOOK_COLUMNS: &str =
    "id, project_id, event_type, webhook_url, auth_header, is_active, created_at, updated_at";

const ATTEMPT_COLUMNS: &str = "id, delivery_id, event_id, project_id, event_type, webhook_url, \
     response_code, duration_ms, attempt_number, status, request_body, response_body, \
     error_message, created_at";

/// The SQLite implementation of [`WebhookStore`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: writes are serialized here rather than in SQLite's
    /// busy handler.
    writer: SqlitePool,
    /// Read-only traffic. For an in-memory database this is the writer pool itself,
    /// since separate connections would not share the data.
    readers: SqlitePool,
    /// Publishes go through the group commit ([`super::group_commit`]).
    publisher: GroupCommit,
    keys: std::sync::Arc<KeyCache>,
}

/// Rows per multi-row INSERT (5 or 4 bound values each; well under SQLite's limit).
const ROWS_PER_INSERT: usize = 128;

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
        let writer_options = base
            .clone()
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // Checkpoints run on their own connection (checkpoint_loop), not inside
            // whichever commit happens to cross the WAL size threshold, where they
            // would stall the one writer for milliseconds.
            .pragma("wal_autocheckpoint", if in_memory { "1000" } else { "0" })
            .optimize_on_close(true, None);
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
        if !in_memory {
            let checkpointer = sqlx::SqliteConnection::connect_with(&base).await?;
            tokio::spawn(checkpoint_loop(checkpointer, writer.clone()));
        }
        let publisher = GroupCommit::spawn(SqliteCommitter(writer.clone()));
        Ok(Self {
            writer,
            readers,
            publisher,
            keys: std::sync::Arc::default(),
        })
    }

    /// Closes both pools, waiting for connections in use to come back. The writer
    /// checkpoints the WAL when it closes.
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    /// A write transaction holding SQLite's write lock from its first statement, so a
    /// read-then-write sequence inside it cannot be invalidated by another writer.
    async fn write_tx(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Creates a directory and its missing parents, readable only by the server's user
/// (0700 on Unix). An existing directory keeps its mode: it may be the operator's.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The database holds signing secrets and `auth_header` values, so only the server's
/// user may read it. Creates the parent directory (0700) and the file (0600) before
/// SQLite opens it; SQLite gives the `-wal` and `-shm` files it creates later the
/// database file's permissions. Files left readable to others (by an older version)
/// are tightened.
fn prepare_private_file(file: &Path) -> io::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut path = file.as_os_str().to_owned();
            path.push(suffix);
            let path = std::path::PathBuf::from(path);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                if let Err(e) =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))
                {
                    tracing::warn!(
                        file = %path.display(),
                        error = %e,
                        "database file is readable by other users and cannot be restricted"
                    );
                }
            }
        }
    }
    Ok(())
}

// --- value conversions --------------------------------------------------------------

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn instant(value: i64, column: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(value).ok_or_else(|| {
        StoreError::Database(sqlx::Error::Decode(
            format!("column {column}: timestamp {value} out of range").into(),
        ))
    })
}

fn get_time(row: &SqliteRow, column: &str) -> StoreResult<DateTime<Utc>> {
    instant(row.try_get(column)?, column)
}

fn get_opt_time(row: &SqliteRow, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
    row.try_get::<Option<i64>, _>(column)?
        .map(|v| instant(v, column))
        .transpose()
}

fn attempt_status(value: &str) -> StoreResult<AttemptStatus> {
    match value {
        "success" => Ok(AttemptStatus::Success),
        "failed" => Ok(AttemptStatus::Failed),
        other => Err(StoreError::Database(sqlx::Error::Decode(
            format!("unknown attempt status {other:?}").into(),
        ))),
    }
}

fn tenant_from(row: &SqliteRow) -> StoreResult<Tenant> {
    Ok(Tenant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: get_time(row, "created_at")?,
    })
}

fn project_from(row: &SqliteRow) -> StoreResult<Project> {
    Ok(Project {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        created_at: get_time(row, "created_at")?,
    })
}

fn api_key_from(row: &SqliteRow) -> StoreResult<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        lookup_id: row.try_get("lookup_id")?,
        secret_hash: row.try_get("secret_hash")?,
        created_at: get_time(row, "created_at")?,
        revoked_at: get_opt_time(row, "revoked_at")?,
    })
}

fn webhook_from(row: &SqliteRow) -> StoreResult<Webhook> {
    Ok(Webhook {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        event_type: row.try_get("event_type")?,
        webhook_url: row.try_get("webhook_url")?,
        auth_header: row.try_get("auth_header")?,
        is_active: row.try_get("is_active")?,
        created_at: get_time(row, "created_at")?,
        updated_at: get_time(row, "updated_at")?,
    })
}

fn attempt_from(row: &SqliteRow) -> StoreResult<Attempt> {
    Ok(Attempt {
        id: row.try_get("id")?,
        delivery_id: row.try_get("delivery_id")?,
        event_id: row.try_get("event_id")?,
        project_id: row.try_get("project_id")?,
        event_type: row.try_get("event_type")?,
        webhook_url: row.try_get("webhook_url")?,
        response_code: row.try_get("response_code")?,
        duration_ms: row.try_get("duration_ms")?,
        attempt_number: row.try_get("attempt_number")?,
        status: attempt_status(row.try_get("status")?)?,
        request_body: row.try_get("request_body")?,
        response_body: row.try_get("response_body")?,
        error_message: row.try_get("error_message")?,
        created_at: get_time(row, "created_at")?,
    })
}

fn claimed_from(row: &SqliteRow, lease_token: Uuid) -> StoreResult<ClaimedDelivery> {
    Ok(ClaimedDelivery {
        delivery_id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        webhook_id: row.try_get("webhook_id")?,
        project_id: row.try_get("project_id")?,
        event_type: row.try_get("event_type")?,
        event_created_at: get_time(row, "event_created_at")?,
        data: row.try_get("data")?,
        webhook_url: row.try_get("webhook_url")?,
        auth_header: row.try_get("auth_header")?,
        secret: SigningSecret::from_stored(row.try_get("signing_secret")?),
        previous_secret: row
            .try_get::<Option<String>, _>("previous_secret")?
            .map(SigningSecret::from_stored),
        attempts_made: row.try_get("attempts_made")?,
        lease_token,
    })
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Cancels a webhook's pending deliveries (deleted or disabled webhook), releasing any
/// lease so that an in-flight outcome for them is recognised as stale.
async fn cancel_pending(
    tx: &mut Transaction<'static, Sqlite>,
    webhook_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE deliveries SET status = 'cancelled', lease_token = NULL, \
         lease_expires_at = NULL, updated_at = ?1 \
         WHERE webhook_id = ?2 AND status = 'pending'",
    )
    .bind(micros(now))
    .bind(webhook_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl FairClaim for SqliteStore {
    async fn pending_projects(&self, now: DateTime<Utc>) -> StoreResult<Vec<(Uuid, bool)>> {
        // A skip scan over deliveries_project_due: one probe to the next project, one
        // for its oldest pending delivery, reading nothing else, locking nothing.
        Ok(sqlx::query_as(
            "WITH RECURSIVE p(pid, n) AS ( \
                 SELECT (SELECT project_id FROM deliveries WHERE status = 'pending' \
                         ORDER BY project_id LIMIT 1), 1 \
                 UNION ALL \
                 SELECT (SELECT d.project_id FROM deliveries d \
                         WHERE d.status = 'pending' AND d.project_id > p.pid \
                         ORDER BY d.project_id LIMIT 1), p.n + 1 \
                 FROM p WHERE p.pid IS NOT NULL AND p.n <= ?2 \
             ) \
             SELECT p.pid, (SELECT min(d.next_attempt_at) FROM deliveries d \
                     WHERE d.status = 'pending' AND d.project_id = p.pid) <= ?1 \
             FROM p WHERE p.pid IS NOT NULL",
        )
        .bind(micros(now))
        .bind(i64::try_from(FAIR_CLAIM_PROJECTS).unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await?)
    }

    /// Leases up to `max` due deliveries, from `from`, in one statement (one implicit
    /// transaction, one round trip to the writer), returning everything needed to send
    /// them through correlated subqueries in RETURNING. next_attempt_at moves to the
    /// lease expiry: the row drops out of the due range while leased and comes back by
    /// itself if the lease runs out.
    async fn claim_from(
        &self,
        from: ClaimFrom<'_>,
        max: usize,
        lease: Duration,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let start = now_micros();
        let now = micros(start);
        let expires = micros(add_duration(start, lease));
        let token = Uuid::new_v4();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let mut q = QueryBuilder::<Sqlite>::new("UPDATE deliveries SET lease_token = ");
        q.push_bind(token)
            .push(", lease_expires_at = ")
            .push_bind(expires)
            .push(", next_attempt_at = ")
            .push_bind(expires)
            .push(", updated_at = ")
            .push_bind(now)
            .push(" WHERE id IN (SELECT id FROM (");
        let due = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push(
                "SELECT d.id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
                 WHERE d.status = 'pending' AND w.is_active = 1 AND d.next_attempt_at <= ",
            )
            .push_bind(now)
            .push(" AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= ")
            .push_bind(now)
            .push(")");
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
                        .push_bind(*project)
                        .push(" ORDER BY d.next_attempt_at, d.id LIMIT ")
                        .push_bind(i64::try_from(share).unwrap_or(i64::MAX))
                        .push(")");
                }
            }
            ClaimFrom::Oldest(skip) => {
                due(&mut q);
                if !skip.is_empty() {
                    q.push(" AND d.project_id NOT IN (");
                    let mut list = q.separated(", ");
                    for project in skip {
                        list.push_bind(*project);
                    }
                    q.push(")");
                }
                q.push(" ORDER BY d.next_attempt_at, d.id LIMIT ")
                    .push_bind(max);
            }
        }
        q.push(") LIMIT ")
            .push_bind(max)
            .push(
                ") RETURNING id, event_id, webhook_id, project_id, event_type, attempts_made, \
                 (SELECT e.created_at FROM events e WHERE e.id = event_id) AS event_created_at, \
                 (SELECT e.data FROM events e WHERE e.id = event_id) AS data, \
                 (SELECT w.webhook_url FROM webhooks w WHERE w.id = webhook_id) AS webhook_url, \
                 (SELECT w.auth_header FROM webhooks w WHERE w.id = webhook_id) AS auth_header, \
                 (SELECT w.signing_secret FROM webhooks w WHERE w.id = webhook_id) \
                     AS signing_secret, \
                 (SELECT CASE WHEN w.previous_secret_expires_at > ",
            )
            .push_bind(now)
            .push(" THEN w.previous_secret END FROM webhooks w WHERE w.id = webhook_id) AS previous_secret");
        let rows = q.build().fetch_all(&self.writer).await?;
        rows.iter().map(|row| claimed_from(row, token)).collect()
    }
}

impl SqliteStore {
    async fn find_api_key_uncached(&self, lookup_id: &str) -> StoreResult<Option<KeyOwner>> {
        let row = sqlx::query(
            "SELECT k.id, p.tenant_id, k.project_id, k.secret_hash, \
                    k.revoked_at IS NOT NULL AS revoked \
             FROM api_keys k JOIN projects p ON p.id = k.project_id \
             WHERE k.lookup_id = ?1",
        )
        .bind(lookup_id)
        .fetch_optional(&self.readers)
        .await?;
        row.map(|row| {
            Ok(KeyOwner {
                key_id: row.try_get("id")?,
                tenant_id: row.try_get("tenant_id")?,
                project_id: row.try_get("project_id")?,
                secret_hash: row.try_get("secret_hash")?,
                revoked: row.try_get("revoked")?,
            })
        })
        .transpose()
    }
}

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn create_tenant(&self, name: &str) -> StoreResult<Tenant> {
        let tenant = Tenant {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            created_at: now_micros(),
        };
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES (?1, ?2, ?3)")
            .bind(tenant.id)
            .bind(&tenant.name)
            .bind(micros(tenant.created_at))
            .execute(&self.writer)
            .await?;
        Ok(tenant)
    }

    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY created_at, id")
            .fetch_all(&self.readers)
            .await?
            .iter()
            .map(tenant_from)
            .collect()
    }

    async fn create_project(&self, tenant_id: Uuid, name: &str) -> StoreResult<Project> {
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
             SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = ?2)",
        )
        .bind(project.id)
        .bind(tenant_id)
        .bind(&project.name)
        .bind(micros(project.created_at))
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(project)
    }

    async fn list_projects(&self, tenant_id: Option<Uuid>) -> StoreResult<Vec<Project>> {
        sqlx::query(
            "SELECT id, tenant_id, name, created_at FROM projects \
             WHERE ?1 IS NULL OR tenant_id = ?1 ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(project_from)
        .collect()
    }

    async fn get_project(&self, project_id: Uuid) -> StoreResult<Option<Project>> {
        sqlx::query("SELECT id, tenant_id, name, created_at FROM projects WHERE id = ?1")
            .bind(project_id)
            .fetch_optional(&self.readers)
            .await?
            .as_ref()
            .map(project_from)
            .transpose()
    }

    async fn insert_api_key(&self, record: &ApiKeyRecord) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO api_keys (id, project_id, lookup_id, secret_hash, created_at, revoked_at) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM projects WHERE id = ?2)",
        )
        .bind(record.id)
        .bind(record.project_id)
        .bind(&record.lookup_id)
        .bind(&record.secret_hash)
        .bind(micros(record.created_at))
        .bind(record.revoked_at.map(micros))
        .execute(&self.writer)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict("an API key with this id or lookup id exists".into())
            } else {
                e.into()
            }
        })?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn list_api_keys(&self, project_id: Option<Uuid>) -> StoreResult<Vec<ApiKeyRecord>> {
        sqlx::query(
            "SELECT id, project_id, lookup_id, secret_hash, created_at, revoked_at \
             FROM api_keys WHERE ?1 IS NULL OR project_id = ?1 ORDER BY created_at, id",
        )
        .bind(project_id)
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(api_key_from)
        .collect()
    }

    async fn revoke_api_key(&self, key_id: Uuid) -> StoreResult<()> {
        // Revoking twice keeps the first instant: it is when the key stopped working.
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2")
                .bind(micros(now_micros()))
                .bind(key_id)
                .execute(&self.writer)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.keys.forget(key_id);
        Ok(())
    }

    async fn find_api_key(&self, lookup_id: &str) -> StoreResult<Option<KeyOwner>> {
        self.keys
            .get_or_fetch(lookup_id, self.find_api_key_uncached(lookup_id))
            .await
    }

    async fn is_empty(&self) -> StoreResult<bool> {
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants)")
            .fetch_one(&self.readers)
            .await?;
        Ok(!any)
    }

    async fn upsert_webhook(&self, input: UpsertWebhook<'_>) -> StoreResult<UpsertOutcome> {
        let now = micros(now_micros());
        // One statement, so it is atomic however many callers race: the one writer
        // runs it start to end, so the count cannot be overtaken by another create.
        // It inserts only when the webhook exists (then the conflict branch updates
        // it) or the project is below its limit; no row back means the limit held.
        // The stored secret is never overwritten by the update branch; comparing it
        // with the one offered tells which branch ran (two random 32-byte secrets do
        // not collide).
        let row = sqlx::query(&format!(
            "INSERT INTO webhooks (id, project_id, event_type, webhook_url, auth_header, \
                 signing_secret, is_active, consecutive_failures, created_at, updated_at) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, 1, 0, ?7, ?7 \
             WHERE EXISTS (SELECT 1 FROM webhooks WHERE project_id = ?2 AND event_type = ?3) \
                OR (SELECT count(*) FROM webhooks WHERE project_id = ?2) < ?8 \
             ON CONFLICT (project_id, event_type) DO UPDATE SET \
                 webhook_url = excluded.webhook_url, \
                 auth_header = excluded.auth_header, \
                 is_active = 1, \
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
        .bind(now)
        .bind(i64::try_from(input.max_webhooks).unwrap_or(i64::MAX))
        .fetch_optional(&self.writer)
        .await?
        .ok_or_else(|| webhook_limit_reached(input.max_webhooks))?;
        let webhook = webhook_from(&row)?;
        let stored: String = row.try_get("signing_secret")?;
        if stored == input.new_secret.expose() {
            Ok(UpsertOutcome::Created {
                webhook,
                secret: SigningSecret::from_stored(stored),
            })
        } else {
            Ok(UpsertOutcome::Updated { webhook })
        }
    }

    async fn list_webhooks(&self, project_id: Uuid) -> StoreResult<Vec<Webhook>> {
        // The whole list comes back as one JSON value in one row: sqlx hands SQLite rows
        // over one by one from its connection thread, copying every value, which for a
        // project with a thousand webhooks costs several times more than the query.
        let json: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(hex(id), hex(project_id), event_type, \
                 webhook_url, auth_header, is_active, created_at, updated_at) \
                 ORDER BY event_type) \
             FROM webhooks WHERE project_id = ?1",
        )
        .bind(project_id)
        .fetch_one(&self.readers)
        .await?;
        type Columns = (
            String,
            String,
            String,
            String,
            Option<String>,
            i64,
            i64,
            i64,
        );
        let rows: Vec<Columns> = serde_json::from_str(&json).map_err(|e| {
            StoreError::Database(sqlx::Error::Decode(format!("webhook list: {e}").into()))
        })?;
        rows.into_iter()
            .map(
                |(id, project, event_type, url, auth, active, created, updated)| {
                    let uuid = |hex: &str| {
                        Uuid::parse_str(hex).map_err(|e| {
                            StoreError::Database(sqlx::Error::Decode(
                                format!("webhook id: {e}").into(),
                            ))
                        })
                    };
                    Ok(Webhook {
                        id: uuid(&id)?,
                        project_id: uuid(&project)?,
                        event_type,
                        webhook_url: url,
                        auth_header: auth,
                        is_active: active != 0,
                        created_at: instant(created, "created_at")?,
                        updated_at: instant(updated, "updated_at")?,
                    })
                },
            )
            .collect()
    }

    async fn get_webhook(
        &self,
        project_id: Uuid,
        event_type: &str,
    ) -> StoreResult<Option<Webhook>> {
        sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE project_id = ?1 AND event_type = ?2"
        ))
        .bind(project_id)
        .bind(event_type)
        .fetch_optional(&self.readers)
        .await?
        .as_ref()
        .map(webhook_from)
        .transpose()
    }

    async fn delete_webhook(&self, project_id: Uuid, event_type: &str) -> StoreResult<bool> {
        let now = now_micros();
        let mut tx = self.write_tx().await?;
        let deleted: Option<Uuid> = sqlx::query_scalar(
            "DELETE FROM webhooks WHERE project_id = ?1 AND event_type = ?2 RETURNING id",
        )
        .bind(project_id)
        .bind(event_type)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(webhook_id) = deleted else {
            return Ok(false);
        };
        cancel_pending(&mut tx, webhook_id, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn rotate_secret(
        &self,
        project_id: Uuid,
        event_type: &str,
        new_secret: &SigningSecret,
        grace: Duration,
    ) -> StoreResult<bool> {
        let now = now_micros();
        let keep_previous = !grace.is_zero();
        let previous_expires = keep_previous.then(|| micros(add_duration(now, grace)));
        // SET expressions read the row as it was before the update, so
        // previous_secret receives the secret being replaced.
        let done = sqlx::query(
            "UPDATE webhooks SET \
                 previous_secret = CASE WHEN ?1 THEN signing_secret END, \
                 previous_secret_expires_at = ?2, \
                 signing_secret = ?3, \
                 updated_at = ?4 \
             WHERE project_id = ?5 AND event_type = ?6",
        )
        .bind(keep_previous)
        .bind(previous_expires)
        .bind(new_secret.expose())
        .bind(micros(now))
        .bind(project_id)
        .bind(event_type)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_attempts(
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
        let sql = attempt_listing_sql(|n| format!("?{n}"), after.is_some());
        let mut query = sqlx::query(&sql)
            .bind(project_id)
            .bind(event_type)
            .bind(limit.saturating_add(1))
            .bind(offset.max(0))
            .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX));
        if let Some((created_at, id)) = after {
            query = query.bind(micros(truncate_micros(created_at))).bind(id);
        }
        let rows = query.fetch_all(&self.readers).await?;
        attempt_list(&rows, limit, |row| Ok(row.try_get("fits")?), attempt_from)
    }

    async fn publish_event(&self, event: PublishEvent<'_>) -> StoreResult<Published> {
        self.publisher.publish(event).await
    }

    async fn claim_due_skipping(
        &self,
        max: usize,
        lease: Duration,
        skip: &[Uuid],
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let mut claimed = claim_fairly(self, max, lease, skip).await?;
        // RETURNING order is unspecified; hand them out oldest event first.
        claimed.sort_by_key(|c| (c.event_created_at, c.delivery_id));
        Ok(claimed)
    }

    async fn record_outcomes(
        &self,
        outcomes: &[DeliveryOutcome],
        policy: DisablePolicy,
    ) -> StoreResult<Vec<Uuid>> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_micros();
        let mut tx = self.write_tx().await?;

        // Multi-row statements, a chunk at a time: one round trip to SQLite's
        // connection thread per chunk instead of two per outcome.
        let mut live: BTreeMap<Uuid, Uuid> = BTreeMap::new();
        for chunk in outcomes.chunks(RECORD_CHUNK) {
            // Ignoring an attempt id already stored makes a retried batch (after a
            // commit whose acknowledgement was lost) harmless: its leases are gone by
            // then, so nothing is counted twice either.
            let mut attempts =
                QueryBuilder::<Sqlite>::new(format!("INSERT INTO attempts ({ATTEMPT_COLUMNS}) "));
            attempts.push_values(chunk, |mut row, outcome| {
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
                    .push_bind(micros(truncate_micros(a.created_at)));
            });
            attempts.push(" ON CONFLICT (id) DO NOTHING");
            attempts.build().execute(&mut *tx).await?;

            // Finish or reschedule the deliveries whose lease still holds.
            let mut update = QueryBuilder::<Sqlite>::new(
                "UPDATE deliveries SET status = u.status, \
                     next_attempt_at = COALESCE(u.retry_at, deliveries.next_attempt_at), \
                     attempts_made = attempts_made + 1, \
                     lease_token = NULL, lease_expires_at = NULL, updated_at = ",
            );
            update.push_bind(micros(now)).push(
                " FROM (SELECT column1 AS id, column2 AS token, column3 AS status, \
                     column4 AS retry_at FROM (",
            );
            update.push_values(chunk, |mut row, outcome| {
                row.push_bind(outcome.delivery_id)
                    .push_bind(outcome.lease_token)
                    .push_bind(status_after(outcome))
                    .push_bind(outcome.retry_at.map(|t| micros(truncate_micros(t))));
            });
            update.push(
                ")) AS u \
                 WHERE deliveries.id = u.id AND deliveries.lease_token = u.token \
                   AND deliveries.status = 'pending' \
                 RETURNING deliveries.id, deliveries.webhook_id",
            );
            for row in update.build().fetch_all(&mut *tx).await? {
                live.insert(row.try_get("id")?, row.try_get("webhook_id")?);
            }
        }

        // Webhook id -> the applied attempts (time, status), to replay into its streak.
        let mut applied: BTreeMap<Uuid, Vec<(DateTime<Utc>, AttemptStatus)>> = BTreeMap::new();
        for outcome in outcomes {
            if let Some(webhook) = live.get(&outcome.delivery_id) {
                applied.entry(*webhook).or_default().push((
                    truncate_micros(outcome.attempt.created_at),
                    outcome.attempt.status,
                ));
            }
        }
        let mut streaks: BTreeMap<Uuid, FailureStreak> = BTreeMap::new();
        if !applied.is_empty() {
            let mut select = QueryBuilder::<Sqlite>::new(
                "SELECT id, consecutive_failures, first_failure_at, is_active \
                 FROM webhooks WHERE id IN (",
            );
            let mut ids = select.separated(", ");
            for id in applied.keys() {
                ids.push_bind(*id);
            }
            select.push(")");
            for row in select.build().fetch_all(&mut *tx).await? {
                streaks.insert(
                    row.try_get("id")?,
                    FailureStreak {
                        consecutive_failures: row.try_get("consecutive_failures")?,
                        first_failure_at: get_opt_time(&row, "first_failure_at")?,
                        is_active: row.try_get("is_active")?,
                    },
                );
            }
        }

        let mut disabled = Vec::new();
        for (webhook_id, mut attempts) in applied {
            // A webhook deleted meanwhile has no streak left to keep.
            let Some(mut streak) = streaks.get(&webhook_id).copied() else {
                continue;
            };
            let before = streak;
            attempts.sort_by_key(|(at, _)| *at);
            let mut disables = false;
            for (at, status) in attempts {
                disables |= streak.record(status, at, policy);
            }
            if streak == before {
                continue;
            }
            sqlx::query(
                "UPDATE webhooks SET consecutive_failures = ?1, first_failure_at = ?2, \
                     is_active = ?3, updated_at = CASE WHEN ?4 THEN ?5 ELSE updated_at END \
                 WHERE id = ?6",
            )
            .bind(streak.consecutive_failures)
            .bind(streak.first_failure_at.map(micros))
            .bind(streak.is_active)
            .bind(disables)
            .bind(micros(now))
            .bind(webhook_id)
            .execute(&mut *tx)
            .await?;
            if disables {
                cancel_pending(&mut tx, webhook_id, now).await?;
                disabled.push(webhook_id);
            }
        }
        tx.commit().await?;
        Ok(disabled)
    }

    async fn release(&self, claims: &[(Uuid, Uuid)], due: DateTime<Utc>) -> StoreResult<()> {
        if claims.is_empty() {
            return Ok(());
        }
        let now = micros(now_micros());
        let due = micros(truncate_micros(due));
        let mut tx = self.write_tx().await?;
        for (delivery_id, lease_token) in claims {
            sqlx::query(
                "UPDATE deliveries SET lease_token = NULL, lease_expires_at = NULL, \
                     next_attempt_at = ?4, updated_at = ?1 \
                 WHERE id = ?2 AND lease_token = ?3 AND status = 'pending'",
            )
            .bind(now)
            .bind(delivery_id)
            .bind(lease_token)
            .bind(due)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        // Walks the due index and stops at the first delivery that can actually be
        // claimed, so a pending row of a webhook that is gone cannot keep a worker
        // awake.
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT d.next_attempt_at FROM deliveries d \
             WHERE d.status = 'pending' \
               AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.webhook_id AND w.is_active = 1) \
             ORDER BY d.next_attempt_at, d.id LIMIT 1",
        )
        .fetch_optional(&self.readers)
        .await?;
        next.map(|v| instant(v, "next_attempt_at")).transpose()
    }

    async fn queue_stats(&self) -> StoreResult<QueueStats> {
        let now = now_micros();
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
                .fetch_one(&self.readers)
                .await?;
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT d.next_attempt_at FROM deliveries d \
             WHERE d.status = 'pending' AND d.next_attempt_at <= ?1 \
               AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.webhook_id AND w.is_active = 1) \
             ORDER BY d.next_attempt_at, d.id LIMIT 1",
        )
        .bind(micros(now))
        .fetch_optional(&self.readers)
        .await?;
        let oldest_due_age = oldest
            .map(|v| instant(v, "next_attempt_at"))
            .transpose()?
            .map(|due| (now - due).to_std().unwrap_or_default());
        Ok(QueueStats {
            pending,
            oldest_due_age,
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }
}

/// One publish inside the batch transaction `tx`: the idempotency check, the event,
/// and its delivery.
async fn publish_one(
    tx: &mut Transaction<'static, Sqlite>,
    event: PublishEvent<'_>,
    now: DateTime<Utc>,
) -> StoreResult<Published> {
    if let Some(key) = event.idempotency_key {
        let seen = sqlx::query(
            "SELECT id, created_at FROM events WHERE project_id = ?1 AND idempotency_key = ?2",
        )
        .bind(event.project_id)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = seen {
            let first_id: Uuid = row.try_get("id")?;
            let first_at = get_time(&row, "created_at")?;
            if first_at >= truncate_micros(event.idempotency_since) {
                let deliveries: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE event_id = ?1")
                        .bind(first_id)
                        .fetch_one(&mut **tx)
                        .await?;
                return Ok(Published {
                    event_id: first_id,
                    deliveries,
                    created_at: first_at,
                    duplicate: true,
                });
            }
            // The earlier use of the key is past its retention window: it no
            // longer deduplicates, and must not block the unique index.
            sqlx::query("UPDATE events SET idempotency_key = NULL WHERE id = ?1")
                .bind(first_id)
                .execute(&mut **tx)
                .await?;
        }
    }

    let event_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (id, project_id, event_type, data, idempotency_key, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(event_id)
    .bind(event.project_id)
    .bind(event.event_type)
    .bind(event.data)
    .bind(event.idempotency_key)
    .bind(micros(now))
    .execute(&mut **tx)
    .await?;

    // (project, event type) names at most one webhook, so one pre-generated id
    // covers the at most one row this inserts.
    let deliveries = sqlx::query(
        "INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, status, \
             attempts_made, next_attempt_at, created_at, updated_at) \
         SELECT ?1, ?2, w.id, w.project_id, w.event_type, 'pending', 0, ?3, ?3, ?3 \
         FROM webhooks w \
         WHERE w.project_id = ?4 AND w.event_type = ?5 AND w.is_active = 1",
    )
    .bind(Uuid::now_v7())
    .bind(event_id)
    .bind(micros(now))
    .bind(event.project_id)
    .bind(event.event_type)
    .execute(&mut **tx)
    .await?
    .rows_affected();

    Ok(Published {
        event_id,
        deliveries: i64::try_from(deliveries).unwrap_or(i64::MAX),
        created_at: now,
        duplicate: false,
    })
}

/// The SQLite side of the group commit, on the one writer connection.
struct SqliteCommitter(SqlitePool);

#[async_trait]
impl Committer for SqliteCommitter {
    async fn commit_batch(&self, jobs: &[PublishJob]) -> StoreResult<Vec<Published>> {
        publish_batch(&self.0, jobs).await
    }

    async fn commit_one(&self, job: &PublishJob) -> StoreResult<Published> {
        let mut tx = self.0.begin_with("BEGIN IMMEDIATE").await?;
        let published = publish_one(&mut tx, job.event(), now_micros()).await?;
        tx.commit().await?;
        Ok(published)
    }
}

async fn publish_batch(writer: &SqlitePool, jobs: &[PublishJob]) -> StoreResult<Vec<Published>> {
    let now = now_micros();
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let mut results: Vec<Option<Published>> = vec![None; jobs.len()];

    // Publishes with an idempotency key need their check; they go one at a time (in
    // order, so two with the same key in one batch still dedupe).
    for (i, job) in jobs.iter().enumerate() {
        if job.idempotency_key.is_some() {
            results[i] = Some(publish_one(&mut tx, job.event(), now).await?);
        }
    }

    // The rest in multi-row statements: the events, then one delivery per event whose
    // (project, event type) has an active webhook.
    let plain: Vec<(usize, Uuid, Uuid)> = jobs
        .iter()
        .enumerate()
        .filter(|(_, job)| job.idempotency_key.is_none())
        .map(|(i, _)| (i, Uuid::now_v7(), Uuid::now_v7()))
        .collect();
    let mut delivered = std::collections::HashSet::new();
    for chunk in plain.chunks(ROWS_PER_INSERT) {
        let mut events = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (id, project_id, event_type, data, idempotency_key, created_at) ",
        );
        events.push_values(chunk, |mut row, (i, event_id, _)| {
            let job = &jobs[*i];
            row.push_bind(*event_id)
                .push_bind(job.project_id)
                .push_bind(job.event_type.as_str())
                .push_bind(job.data.as_str())
                .push_bind(None::<String>)
                .push_bind(micros(now));
        });
        events.build().execute(&mut *tx).await?;

        let mut deliveries = QueryBuilder::<Sqlite>::new("WITH v(did, eid, pid, et) AS (");
        deliveries.push_values(chunk, |mut row, (i, event_id, delivery_id)| {
            let job = &jobs[*i];
            row.push_bind(*delivery_id)
                .push_bind(*event_id)
                .push_bind(job.project_id)
                .push_bind(job.event_type.as_str());
        });
        deliveries
            .push(
                ") INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, \
                     status, attempts_made, next_attempt_at, created_at, updated_at) \
                 SELECT v.did, v.eid, w.id, w.project_id, w.event_type, 'pending', 0, ",
            )
            .push_bind(micros(now))
            .push(", ")
            .push_bind(micros(now))
            .push(", ")
            .push_bind(micros(now))
            .push(
                " FROM v JOIN webhooks w \
                   ON w.project_id = v.pid AND w.event_type = v.et AND w.is_active = 1 \
                 RETURNING event_id",
            );
        for row in deliveries.build().fetch_all(&mut *tx).await? {
            let event_id: Uuid = row.try_get("event_id")?;
            delivered.insert(event_id);
        }
    }
    tx.commit().await?;

    for (i, event_id, _) in plain {
        results[i] = Some(Published {
            event_id,
            deliveries: i64::from(delivered.contains(&event_id)),
            created_at: now,
            duplicate: false,
        });
    }
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| StoreError::Internal("publish left unanswered".into())))
        .collect()
}

/// Checkpoints the WAL into the database file every [`CHECKPOINT_EVERY`], in PASSIVE
/// mode: it copies what no reader still needs and never waits for (nor blocks) the
/// writer, so the WAL stays small without a commit ever paying for it. Stops when the
/// store's writer pool closes.
async fn checkpoint_loop(mut conn: sqlx::SqliteConnection, writer: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !writer.is_closed() {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::store::delivery_status;

    #[test]
    fn instants_round_trip_at_microsecond_precision() {
        let t = now_micros();
        assert_eq!(instant(micros(t), "t").unwrap(), t);
        assert!(instant(i64::MAX, "t").is_err());
    }

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
