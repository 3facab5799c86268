//! How rows decode, once for both backends. The only column type the two databases
//! store differently is the instant: PostgreSQL has `timestamptz`, SQLite keeps INTEGER
//! microseconds since the Unix epoch (see its first migration). [`Micros`] speaks both,
//! so the row structs below derive [`sqlx::FromRow`] for either database's rows. Ids
//! need nothing: sqlx stores a [`Uuid`] as `uuid` on PostgreSQL and as the 16-byte
//! BLOB the SQLite schema uses.

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Postgres, Sqlite, Type};
use uuid::Uuid;

use super::{
    ApiKeyRecord, Attempt, AttemptStatus, AttemptTrigger, ClaimedDelivery, FailureStreak, Project,
    SigningSecret, StoreError, Tenant, Webhook,
};

/// An instant as both backends store it, at microsecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Micros(pub DateTime<Utc>);

impl From<Micros> for DateTime<Utc> {
    fn from(value: Micros) -> Self {
        value.0
    }
}

/// Optional instants, as columns hold them.
pub(crate) fn opt(t: Option<DateTime<Utc>>) -> Option<Micros> {
    t.map(Micros)
}

impl Type<Sqlite> for Micros {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &<Sqlite as Database>::TypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for Micros {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<'q, Sqlite>>::encode(self.0.timestamp_micros(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Micros {
    fn decode(value: <Sqlite as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let micros = <i64 as Decode<'r, Sqlite>>::decode(value)?;
        DateTime::from_timestamp_micros(micros)
            .map(Micros)
            .ok_or_else(|| format!("timestamp {micros} out of range").into())
    }
}

impl Type<Postgres> for Micros {
    fn type_info() -> <Postgres as Database>::TypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &<Postgres as Database>::TypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Postgres> for Micros {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Micros {
    fn decode(value: <Postgres as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<'r, Postgres>>::decode(value).map(Micros)
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TenantRow {
    id: Uuid,
    name: String,
    created_at: Micros,
}

impl From<TenantRow> for Tenant {
    fn from(r: TenantRow) -> Self {
        Tenant {
            id: r.id,
            name: r.name,
            created_at: r.created_at.0,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ProjectRow {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    created_at: Micros,
}

impl From<ProjectRow> for Project {
    fn from(r: ProjectRow) -> Self {
        Project {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            created_at: r.created_at.0,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    id: Uuid,
    project_id: Uuid,
    lookup_id: String,
    secret_hash: String,
    created_at: Micros,
    revoked_at: Option<Micros>,
}

impl From<ApiKeyRow> for ApiKeyRecord {
    fn from(r: ApiKeyRow) -> Self {
        ApiKeyRecord {
            id: r.id,
            project_id: r.project_id,
            lookup_id: r.lookup_id,
            secret_hash: r.secret_hash,
            created_at: r.created_at.0,
            revoked_at: r.revoked_at.map(DateTime::from),
        }
    }
}

/// A webhook's columns as [`WEBHOOK_COLUMNS`] lists them.
#[derive(sqlx::FromRow)]
pub(crate) struct WebhookRow {
    id: Uuid,
    project_id: Uuid,
    event_type: String,
    webhook_url: String,
    auth_header: Option<String>,
    is_active: bool,
    created_at: Micros,
    updated_at: Micros,
    rate_limit: Option<i64>,
    ordered: bool,
}

pub(crate) const WEBHOOK_COLUMNS: &str = "id, project_id, event_type, webhook_url, auth_header, \
     is_active, created_at, updated_at, rate_limit, ordered";

impl From<WebhookRow> for Webhook {
    fn from(r: WebhookRow) -> Self {
        Webhook {
            id: r.id,
            project_id: r.project_id,
            event_type: r.event_type,
            webhook_url: r.webhook_url,
            auth_header: r.auth_header,
            is_active: r.is_active,
            created_at: r.created_at.0,
            updated_at: r.updated_at.0,
            rate_limit: r.rate_limit,
            ordered: r.ordered,
        }
    }
}

/// What an upsert returns: the webhook and the secret it keeps.
#[derive(sqlx::FromRow)]
pub(crate) struct UpsertedRow {
    #[sqlx(flatten)]
    pub webhook: WebhookRow,
    pub signing_secret: String,
}

/// An attempt's columns in the order the attempts table declares them.
pub(crate) const ATTEMPT_COLUMNS: &str = "id, delivery_id, event_id, project_id, event_type, \
     webhook_url, response_code, duration_ms, attempt_number, status, request_body, \
     response_body, error_message, created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    id: Uuid,
    delivery_id: Uuid,
    event_id: Uuid,
    project_id: Uuid,
    event_type: String,
    webhook_url: String,
    response_code: i64,
    duration_ms: i64,
    attempt_number: i64,
    status: String,
    request_body: Vec<u8>,
    response_body: Option<String>,
    error_message: Option<String>,
    created_at: Micros,
    trigger: Option<String>,
}

impl TryFrom<AttemptRow> for Attempt {
    type Error = StoreError;

    fn try_from(r: AttemptRow) -> Result<Self, StoreError> {
        let status = match r.status.as_str() {
            "success" => AttemptStatus::Success,
            "failed" => AttemptStatus::Failed,
            other => {
                return Err(StoreError::Database(sqlx::Error::Decode(
                    format!("unknown attempt status {other:?}").into(),
                )))
            }
        };
        let trigger = match r.trigger.as_deref() {
            None => None,
            Some(t) => Some(AttemptTrigger::parse(t).ok_or_else(|| {
                StoreError::Database(sqlx::Error::Decode(
                    format!("unknown attempt trigger {t:?}").into(),
                ))
            })?),
        };
        Ok(Attempt {
            id: r.id,
            delivery_id: r.delivery_id,
            event_id: r.event_id,
            project_id: r.project_id,
            event_type: r.event_type,
            webhook_url: r.webhook_url,
            response_code: r.response_code,
            duration_ms: r.duration_ms,
            attempt_number: r.attempt_number,
            status,
            request_body: r.request_body,
            response_body: r.response_body,
            error_message: r.error_message,
            created_at: r.created_at.0,
            trigger,
        })
    }
}

/// A claimed delivery as both backends' claim statements return it.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimedRow {
    id: Uuid,
    event_id: Uuid,
    webhook_id: Uuid,
    project_id: Uuid,
    event_type: String,
    event_created_at: Micros,
    data: String,
    webhook_url: String,
    auth_header: Option<String>,
    signing_secret: String,
    previous_secret: Option<String>,
    attempts_made: i64,
    lease_token: Uuid,
    origin: String,
    rate_limit: Option<i64>,
    ordered: bool,
}

impl ClaimedRow {
    /// The row as a direct SQLite write returns it (`store::sqlite::direct`), by the
    /// same column names.
    pub fn from_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<ClaimedRow> {
        let id = |name: &str| row.get::<_, [u8; 16]>(name).map(Uuid::from_bytes);
        let created: i64 = row.get("event_created_at")?;
        Ok(ClaimedRow {
            id: id("id")?,
            event_id: id("event_id")?,
            webhook_id: id("webhook_id")?,
            project_id: id("project_id")?,
            event_type: row.get("event_type")?,
            event_created_at: DateTime::from_timestamp_micros(created)
                .map(Micros)
                .ok_or(rusqlite::Error::IntegralValueOutOfRange(0, created))?,
            data: row.get("data")?,
            webhook_url: row.get("webhook_url")?,
            auth_header: row.get("auth_header")?,
            signing_secret: row.get("signing_secret")?,
            previous_secret: row.get("previous_secret")?,
            attempts_made: row.get("attempts_made")?,
            lease_token: id("lease_token")?,
            origin: row.get("origin")?,
            rate_limit: row.get("rate_limit")?,
            ordered: row.get("ordered")?,
        })
    }
}

impl From<ClaimedRow> for ClaimedDelivery {
    fn from(r: ClaimedRow) -> Self {
        ClaimedDelivery {
            delivery_id: r.id,
            event_id: r.event_id,
            webhook_id: r.webhook_id,
            project_id: r.project_id,
            event_type: r.event_type,
            event_created_at: r.event_created_at.0,
            data: r.data,
            webhook_url: r.webhook_url,
            auth_header: r.auth_header,
            secret: SigningSecret::from_stored(r.signing_secret),
            previous_secret: r.previous_secret.map(SigningSecret::from_stored),
            attempts_made: r.attempts_made,
            lease_token: r.lease_token,
            // The column's CHECK allows only known origins.
            origin: AttemptTrigger::parse(&r.origin).unwrap_or(AttemptTrigger::Publish),
            rate_limit: r.rate_limit,
            ordered: r.ordered,
            send_at: None,
        }
    }
}

/// A webhook's failure streak as stored, with its id.
#[derive(sqlx::FromRow)]
pub(crate) struct StreakRow {
    pub id: Uuid,
    consecutive_failures: i64,
    first_failure_at: Option<Micros>,
    is_active: bool,
    pub ordered: bool,
}

impl From<StreakRow> for FailureStreak {
    fn from(r: StreakRow) -> Self {
        FailureStreak {
            consecutive_failures: r.consecutive_failures,
            first_failure_at: r.first_failure_at.map(DateTime::from),
            is_active: r.is_active,
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::store::now_micros;

    #[tokio::test]
    async fn instants_round_trip_at_microsecond_precision_on_sqlite() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let t = now_micros();
        let stored: i64 = sqlx::query_scalar("SELECT $1")
            .bind(Micros(t))
            .fetch_one(&pool)
            .await
            .unwrap();
        // The on-disk encoding: integer microseconds since the Unix epoch.
        assert_eq!(stored, t.timestamp_micros());
        let back: Micros = sqlx::query_scalar("SELECT $1")
            .bind(stored)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(back, Micros(t));
        let out_of_range = sqlx::query_scalar::<_, Micros>("SELECT $1")
            .bind(i64::MAX)
            .fetch_one(&pool)
            .await;
        assert!(out_of_range.is_err());
    }
}
