//! What the delivery-log portal reads and writes beyond the API's own operations: its
//! links and sessions (kept as SHA-256 hashes only), the webhooks with their failure
//! streak and last attempt, attempts filtered by status and time, and one attempt.
//! The same SQL on both backends.

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{ColumnIndex, Encode, Executor, FromRow, IntoArguments, Type};
use uuid::Uuid;

use super::common::{Column, Dialect, Tables};
use super::rows::{AttemptRow, Micros, WebhookRow, WEBHOOK_COLUMNS};
use super::{now_micros, truncate_micros, Attempt, AttemptStatus, StoreResult, Webhook};

/// A new secret token and its hash, as stored.
pub fn new_token(prefix: &str) -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let token = format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = token_hash(&token);
    (token, hash)
}

/// How tokens are stored: a copy of the database opens nothing.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A webhook as the portal lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalWebhook {
    pub webhook: Webhook,
    /// Failed attempts in a row, across events (what disables a webhook).
    pub consecutive_failures: i64,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub last_attempt: Option<LastAttempt>,
}

/// The newest attempt of a webhook's event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastAttempt {
    pub at: DateTime<Utc>,
    pub status: AttemptStatus,
    /// 0 when no HTTP response came back.
    pub response_code: i64,
}

/// What a portal link's token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortalEntry {
    /// The link is (or, for [`PortalStore::enter`], was until now) unused and valid.
    Open {
        project_id: Uuid,
        expires_at: DateTime<Utc>,
    },
    /// The link was used already; it opens the portal once.
    Used,
    Expired,
    /// No link has this token.
    Unknown,
}

/// Which attempts a portal page lists: newest first, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFilter {
    pub status: Option<AttemptStatus>,
    /// Attempts at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Attempts before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Keyset paging: the attempts strictly older than `(created_at, id)`.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// The portal's own reads and writes (see the module documentation).
#[async_trait]
pub trait PortalStore: Send + Sync {
    /// Stores a link's token hash, valid until `expires_at`, and deletes a few links
    /// that expired a day ago or more.
    async fn create_link(
        &self,
        project_id: Uuid,
        token_hash: Vec<u8>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// What the link opens, without using it.
    async fn peek_link(&self, token_hash: Vec<u8>) -> StoreResult<PortalEntry>;
    /// Uses the link: when it is open, marks it used and stores the hash of the
    /// session it becomes, at most once whatever the concurrency.
    async fn enter(&self, token_hash: Vec<u8>, session_hash: Vec<u8>) -> StoreResult<PortalEntry>;
    /// The project and expiry of an unexpired session.
    async fn session(&self, session_hash: Vec<u8>) -> StoreResult<Option<(Uuid, DateTime<Utc>)>>;
    /// Ends a session now (signing out), so its cookie opens nothing even where a
    /// copy of it outlives the browser's.
    async fn end_session(&self, session_hash: Vec<u8>) -> StoreResult<()>;
    /// The project's webhooks, by event type.
    async fn webhooks(&self, project_id: Uuid) -> StoreResult<Vec<PortalWebhook>>;
    /// The project's webhook of `event_type`, if any.
    async fn webhook(
        &self,
        project_id: Uuid,
        event_type: &str,
    ) -> StoreResult<Option<PortalWebhook>>;
    /// Attempts of (project, event type), without their bodies.
    async fn attempts(
        &self,
        project_id: Uuid,
        event_type: &str,
        filter: &AttemptFilter,
    ) -> StoreResult<Vec<Attempt>>;
    /// One attempt of the project, with its bodies.
    async fn attempt(&self, project_id: Uuid, attempt_id: Uuid) -> StoreResult<Option<Attempt>>;
}

#[derive(FromRow)]
struct PortalWebhookRow {
    #[sqlx(flatten)]
    webhook: WebhookRow,
    consecutive_failures: i64,
    first_failure_at: Option<Micros>,
    last_at: Option<Micros>,
    last_status: Option<String>,
    last_code: Option<i64>,
}

impl From<PortalWebhookRow> for PortalWebhook {
    fn from(r: PortalWebhookRow) -> Self {
        PortalWebhook {
            webhook: r.webhook.into(),
            consecutive_failures: r.consecutive_failures,
            first_failure_at: r.first_failure_at.map(|t| t.0),
            last_attempt: match (r.last_at, r.last_status.as_deref().and_then(parse_status)) {
                (Some(at), Some(status)) => Some(LastAttempt {
                    at: at.0,
                    status,
                    response_code: r.last_code.unwrap_or(0),
                }),
                _ => None,
            },
        }
    }
}

#[derive(FromRow)]
struct LinkRow {
    project_id: Uuid,
    expires_at: Micros,
    used_at: Option<Micros>,
}

impl LinkRow {
    fn entry(self, now: DateTime<Utc>) -> PortalEntry {
        if self.expires_at.0 <= now {
            PortalEntry::Expired
        } else if self.used_at.is_some() {
            PortalEntry::Used
        } else {
            PortalEntry::Open {
                project_id: self.project_id,
                expires_at: self.expires_at.0,
            }
        }
    }
}

/// The listed columns of an attempt without its bodies (the portal's lists show
/// neither).
const ATTEMPT_SUMMARY_COLUMNS: &str = "id, delivery_id, event_id, project_id, event_type, \
     webhook_url, response_code, duration_ms, attempt_number, status, \
     substr(request_body, 1, 0) AS request_body, NULL AS response_body, error_message, \
     created_at, \"trigger\"";

const ATTEMPT_ALL_COLUMNS: &str = "id, delivery_id, event_id, project_id, event_type, \
     webhook_url, response_code, duration_ms, attempt_number, status, request_body, \
     response_body, error_message, created_at, \"trigger\"";

/// The portal's attempts query for a filter: parameters 1 project, 2 event type, then
/// those of the filter's conditions in the order they are written.
pub(crate) fn portal_attempts_sql(filter: &AttemptFilter) -> String {
    let mut sql = format!(
        "SELECT {ATTEMPT_SUMMARY_COLUMNS} FROM attempts WHERE project_id = $1 AND event_type = $2"
    );
    let mut n = 2;
    let mut next = || {
        n += 1;
        n
    };
    if filter.status.is_some() {
        sql += &format!(" AND status = ${}", next());
    }
    if filter.since.is_some() {
        sql += &format!(" AND created_at >= ${}", next());
    }
    if filter.until.is_some() {
        sql += &format!(" AND created_at < ${}", next());
    }
    if filter.before.is_some() {
        let (at, id) = (next(), next());
        sql += &format!(" AND (created_at, id) < (${at}, ${id})");
    }
    sql += &format!(" ORDER BY created_at DESC, id DESC LIMIT ${}", next());
    sql
}

/// The portal's webhooks query: each webhook with the newest attempt of its event type,
/// found by one probe of the attempts listing index; with `one`, only the webhook of
/// event type `$2`.
pub(crate) fn portal_webhooks_sql(one: bool) -> String {
    let columns: Vec<String> = WEBHOOK_COLUMNS
        .split(',')
        .map(|c| format!("w.{}", c.trim()))
        .collect();
    format!(
        "SELECT {}, w.consecutive_failures, w.first_failure_at, \
             a.created_at AS last_at, a.status AS last_status, a.response_code AS last_code \
         FROM webhooks w LEFT JOIN attempts a ON a.id = ( \
             SELECT x.id FROM attempts x \
             WHERE x.project_id = w.project_id AND x.event_type = w.event_type \
             ORDER BY x.created_at DESC, x.id DESC LIMIT 1) \
         WHERE w.project_id = $1 {} ORDER BY w.event_type",
        columns.join(", "),
        if one { "AND w.event_type = $2" } else { "" }
    )
}

fn parse_status(s: &str) -> Option<AttemptStatus> {
    match s {
        "success" => Some(AttemptStatus::Success),
        "failed" => Some(AttemptStatus::Failed),
        _ => None,
    }
}

// The bounds are those of the impl of `Tables` in `common`.
#[async_trait]
impl<DB: Dialect> PortalStore for Tables<DB>
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
    for<'q> Option<Micros>: Encode<'q, DB>,
{
    async fn create_link(
        &self,
        project_id: Uuid,
        token_hash: Vec<u8>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let now = now_micros();
        let mut tx = DB::begin_write(&self.write).await?;
        sqlx::query(
            "DELETE FROM portal_sessions WHERE id IN ( \
                 SELECT id FROM portal_sessions WHERE expires_at < $1 \
                 ORDER BY expires_at LIMIT 100)",
        )
        .bind(Micros(now - chrono::Duration::days(1)))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO portal_sessions (id, project_id, token_hash, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(Uuid::now_v7())
        .bind(project_id)
        .bind(token_hash)
        .bind(Micros(truncate_micros(expires_at)))
        .bind(Micros(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn peek_link(&self, token_hash: Vec<u8>) -> StoreResult<PortalEntry> {
        let row: Option<LinkRow> = sqlx::query_as(
            "SELECT project_id, expires_at, used_at FROM portal_sessions WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map_or(PortalEntry::Unknown, |r| r.entry(now_micros())))
    }

    async fn enter(&self, token_hash: Vec<u8>, session_hash: Vec<u8>) -> StoreResult<PortalEntry> {
        let now = now_micros();
        let mut tx = DB::begin_write(&self.write).await?;
        // The condition and the change are one statement, so two tabs opening the same
        // link get one session between them.
        let opened: Option<(Uuid, Micros)> = sqlx::query_as(
            "UPDATE portal_sessions SET used_at = $1, session_hash = $2 \
             WHERE token_hash = $3 AND used_at IS NULL AND expires_at > $1 \
             RETURNING project_id, expires_at",
        )
        .bind(Micros(now))
        .bind(session_hash)
        .bind(token_hash.clone())
        .fetch_optional(&mut *tx)
        .await?;
        let entry = match opened {
            Some((project_id, expires_at)) => PortalEntry::Open {
                project_id,
                expires_at: expires_at.0,
            },
            None => {
                let row: Option<LinkRow> = sqlx::query_as(
                    "SELECT project_id, expires_at, used_at FROM portal_sessions \
                     WHERE token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?;
                match row.map(|r| r.entry(now)) {
                    None => PortalEntry::Unknown,
                    // Unused and unexpired, yet not updated: it expired in between.
                    Some(PortalEntry::Open { .. }) => PortalEntry::Expired,
                    Some(other) => other,
                }
            }
        };
        tx.commit().await?;
        Ok(entry)
    }

    async fn session(&self, session_hash: Vec<u8>) -> StoreResult<Option<(Uuid, DateTime<Utc>)>> {
        let row: Option<(Uuid, Micros)> = sqlx::query_as(
            "SELECT project_id, expires_at FROM portal_sessions \
             WHERE session_hash = $1 AND expires_at > $2",
        )
        .bind(session_hash)
        .bind(Micros(now_micros()))
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|(project, expires)| (project, expires.0)))
    }

    async fn end_session(&self, session_hash: Vec<u8>) -> StoreResult<()> {
        let now = Micros(now_micros());
        sqlx::query(
            "UPDATE portal_sessions SET expires_at = $1 \
             WHERE session_hash = $2 AND expires_at > $1",
        )
        .bind(now)
        .bind(session_hash)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn webhooks(&self, project_id: Uuid) -> StoreResult<Vec<PortalWebhook>> {
        let rows: Vec<PortalWebhookRow> = sqlx::query_as(&portal_webhooks_sql(false))
            .bind(project_id)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(PortalWebhook::from).collect())
    }

    async fn webhook(
        &self,
        project_id: Uuid,
        event_type: &str,
    ) -> StoreResult<Option<PortalWebhook>> {
        let row: Option<PortalWebhookRow> = sqlx::query_as(&portal_webhooks_sql(true))
            .bind(project_id)
            .bind(event_type)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(PortalWebhook::from))
    }

    async fn attempts(
        &self,
        project_id: Uuid,
        event_type: &str,
        filter: &AttemptFilter,
    ) -> StoreResult<Vec<Attempt>> {
        let sql = portal_attempts_sql(filter);
        let mut query = sqlx::query_as::<_, AttemptRow>(&sql)
            .bind(project_id)
            .bind(event_type);
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(since) = filter.since {
            query = query.bind(Micros(truncate_micros(since)));
        }
        if let Some(until) = filter.until {
            query = query.bind(Micros(truncate_micros(until)));
        }
        if let Some((at, id)) = filter.before {
            query = query.bind(Micros(truncate_micros(at))).bind(id);
        }
        let rows = query
            .bind(filter.limit.max(0))
            .fetch_all(&self.read)
            .await?;
        rows.into_iter().map(Attempt::try_from).collect()
    }

    async fn attempt(&self, project_id: Uuid, attempt_id: Uuid) -> StoreResult<Option<Attempt>> {
        let row: Option<AttemptRow> = sqlx::query_as(&format!(
            "SELECT {ATTEMPT_ALL_COLUMNS} FROM attempts WHERE id = $1 AND project_id = $2"
        ))
        .bind(attempt_id)
        .bind(project_id)
        .fetch_optional(&self.read)
        .await?;
        row.map(Attempt::try_from).transpose()
    }
}
