//! Storage: one trait, [`WebhookStore`], with a SQLite implementation (the embedded
//! default) and a PostgreSQL one (scale-out). Both run the same test suite.
//!
//! What the two do alike is written once: `rows` decodes rows for either database,
//! `common` holds the shared statements and implements [`WebhookStore`] for any
//! backend; `sqlite` and `postgres` keep only the SQL and locking that differ.
//!
//! Tenancy is not decided here: callers pass the project id that the auth layer has
//! already resolved for the request.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

mod common;
mod group_commit;
mod held;
mod list_cache;
pub(crate) mod notify;
pub(crate) mod operator;
mod pacing;
pub(crate) mod portal;
pub(crate) mod postgres;
mod recovery;
pub(crate) mod retention;
mod rows;
pub(crate) mod sqlite;

#[cfg(test)]
mod tests;

pub use list_cache::{Kept, Listing};
pub use pacing::SendSlots;
pub use retention::{v7_time, PurgeStep, RetentionTable};

/// The right to run retention, held while a run lasts. On PostgreSQL it is a session
/// advisory lock on a connection of its own (outside the pool), so a process that
/// dies lets it go with its connection; SQLite has one process and needs none.
#[derive(Debug, Default)]
pub struct RetentionLock {
    pub(crate) connection: Option<sqlx::PgConnection>,
}

impl RetentionLock {
    /// Lets the lock go (and closes its connection).
    pub async fn release(self) {
        use sqlx::Connection as _;
        if let Some(mut connection) = self.connection {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, hashtext(current_schema()))")
                .bind(postgres::RETENTION_LOCK)
                .execute(&mut connection)
                .await;
            if let Err(e) = unlocked {
                tracing::warn!(error = %e, "releasing the retention lock failed; closing its connection lets it go");
            }
            let _ = connection.close().await;
        }
    }
}

pub use recovery::{
    RecoverInclude, RecoverOutcome, RecoverRequest, Recovery, RecoveryClaim, RecoveryProgress,
    RecoveryStatus, RecoveryStep,
};

/// Errors a store reports. Everything unexpected is `Database`; callers turn it into an
/// opaque 500 and log it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A real conflict with the data as it stands (a duplicate, a limit reached);
    /// callers may show the text.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A broken invariant inside the store: logged, never shown to a caller.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// True when the same statement may succeed if tried again: the connection or
    /// the pool failed, the transaction lost a conflict, or the server is busy or
    /// shutting down. Everything else (bad data, a broken constraint) fails the same
    /// way every time, so retrying it would only wedge the caller.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                // PostgreSQL SQLSTATE classes: 08 connection, 40 rollback (serialization,
                // deadlock), 53 insufficient resources, 57 operator intervention, 58
                // system error. SQLite primary codes: 5 BUSY, 6 LOCKED (extended codes
                // keep the primary one in their low byte).
                let sqlstate_transient =
                    code.len() == 5 && ["08", "40", "53", "57", "58"].contains(&&code[..2]);
                let sqlite_transient = code.len() < 5
                    && code
                        .parse::<u32>()
                        .map(|c| matches!(c & 0xff, 5 | 6))
                        .unwrap_or(false);
                sqlstate_transient || sqlite_transient
            }
            _ => false,
        }
    }
}

/// A webhook signing secret (`whsec_` + base64 of 32 random bytes). Its `Debug` never
/// shows the value, so it cannot end up in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(String);

impl SigningSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        Self(format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The full secret, `whsec_` prefix included. Only for the API answer that hands
    /// it to its owner, for storage, and for signing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("whsec_***")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// An API key as stored: never the key itself, only its lookup id and a hash of its
/// secret part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub project_id: Uuid,
    /// Public part of the key, unique, used to find the row (`sk_<lookup_id>_<secret>`).
    pub lookup_id: String,
    /// SHA-256 of the secret part, hex.
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What an API key resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    pub key_id: Uuid,
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub secret_hash: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: Uuid,
    pub project_id: Uuid,
    pub event_type: String,
    pub webhook_url: String,
    pub auth_header: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Deliveries per second, across all processes; `None`: unlimited.
    pub rate_limit: Option<i64>,
    /// One delivery at a time, in publish order.
    pub ordered: bool,
}

#[derive(Debug, Clone)]
pub struct UpsertWebhook<'a> {
    pub project_id: Uuid,
    pub event_type: &'a str,
    pub webhook_url: &'a str,
    pub auth_header: Option<&'a str>,
    pub rate_limit: Option<i64>,
    pub ordered: bool,
    /// Used only when the webhook is created; an update keeps the stored secret.
    pub new_secret: &'a SigningSecret,
    /// The most webhooks the project may have: creating one more fails with
    /// [`StoreError::Conflict`]; replacing an existing one is always allowed.
    pub max_webhooks: usize,
}

#[derive(Debug, Clone)]
pub enum UpsertOutcome {
    /// The webhook did not exist; `secret` is the one to hand back once.
    Created {
        webhook: Webhook,
        secret: SigningSecret,
    },
    /// The webhook existed: url and auth header replaced, re-activated, secret kept.
    Updated { webhook: Webhook },
}

impl UpsertOutcome {
    /// The webhook as it now is.
    pub fn webhook(&self) -> &Webhook {
        match self {
            UpsertOutcome::Created { webhook, .. } | UpsertOutcome::Updated { webhook } => webhook,
        }
    }
}

/// One recorded delivery attempt, as the attempts API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub project_id: Uuid,
    pub event_type: String,
    pub webhook_url: String,
    /// 0 when no HTTP response came back.
    pub response_code: i64,
    pub duration_ms: i64,
    /// Counts from 1 per event (per delivery).
    pub attempt_number: i64,
    pub status: AttemptStatus,
    /// The exact bytes sent.
    pub request_body: Vec<u8>,
    /// Capped by the caller before it reaches the store.
    pub response_body: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Why the attempt happened, as listed; `None` for attempts recorded before
    /// triggers were kept. Recording stores it as given
    /// ([`AttemptTrigger::of_attempt`]).
    pub trigger: Option<AttemptTrigger>,
}

/// Why an attempt happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptTrigger {
    /// The first try of a published event.
    Publish,
    /// A later try of any delivery.
    Retry,
    /// The first try of a resent event.
    Resend,
    /// Reserved for deliveries restarted by recovery.
    Recover,
}

impl AttemptTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptTrigger::Publish => "publish",
            AttemptTrigger::Retry => "retry",
            AttemptTrigger::Resend => "resend",
            AttemptTrigger::Recover => "recover",
        }
    }

    /// The trigger of attempt `attempt_number` of a delivery started by `origin`: a
    /// later try is a retry, a first try is whatever started the delivery.
    pub(crate) fn of_attempt(origin: AttemptTrigger, attempt_number: i64) -> Self {
        if attempt_number > 1 {
            AttemptTrigger::Retry
        } else {
            origin
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Publish, Self::Retry, Self::Resend, Self::Recover]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// What [`WebhookStore::resend_event`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResendOutcome {
    /// A new delivery is pending, due at `queued_at`.
    Queued {
        delivery_id: Uuid,
        queued_at: DateTime<Utc>,
    },
    /// No webhook for (project, event type).
    NoWebhook,
    /// No event with that id of (project, event type).
    NoEvent,
    /// The webhook is disabled.
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStatus {
    Success,
    Failed,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Success => "success",
            AttemptStatus::Failed => "failed",
        }
    }
}

/// Where a page of attempts starts and how many it holds at most. Attempts are listed
/// newest first, ordered by (`created_at` desc, `id` desc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptPage {
    Offset {
        limit: i64,
        offset: i64,
    },
    /// Keyset paging: the attempts strictly older than `(created_at, id)`.
    After {
        limit: i64,
        created_at: DateTime<Utc>,
        id: Uuid,
    },
}

/// A page of attempts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptList {
    pub attempts: Vec<Attempt>,
    /// More attempts follow this page: it was cut by its limit or by its byte budget.
    pub has_more: bool,
}

/// What one attempt is estimated to weigh in a listing, in bytes of JSON: the request
/// body as base64, the texts as stored, and an allowance for the other fields. Both
/// backends compute it in SQL from stored lengths (`octet_length` reads no body), so
/// only the bodies of the attempts that fit the budget are ever loaded.
pub(crate) const ATTEMPT_COST_SQL: &str = "(4 * ((octet_length(request_body) + 2) / 3) \
     + COALESCE(octet_length(response_body), 0) + COALESCE(octet_length(error_message), 0) \
     + octet_length(webhook_url) + octet_length(event_type) + 400)";

/// The attempts listing, one query for both backends. Parameters: 1 project, 2 event
/// type, 3 rows to read (the limit plus one, to tell whether more follow), 4 offset, 5
/// byte budget and, with `after`, 6 and 7 the keyset position. The rows of the page
/// are found in the listing index alone (`ids`), so an offset deep into a busy
/// webhook skips index entries rather than reading the rows it skips. They are then
/// sized from their stored lengths alone; the answer holds the rows that fit the
/// budget (`fits`; the first one always does) and at most one that does not, with its
/// bodies left NULL, so bodies are read only for the rows that are listed.
pub(crate) fn attempt_listing_sql(after: bool) -> String {
    let after = if after {
        "AND (created_at, id) < ($6, $7)"
    } else {
        ""
    };
    let fits = "(s.n = 1 OR s.running <= $5)";
    format!(
        "WITH ids AS ( \
             SELECT id, created_at FROM attempts \
             WHERE project_id = $1 AND event_type = $2 {after} \
             ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4 \
         ), page AS ( \
             SELECT i.id, i.created_at, {ATTEMPT_COST_SQL} AS cost \
             FROM ids i JOIN attempts a ON a.id = i.id \
         ), sized AS ( \
             SELECT id, created_at, cost, row_number() OVER w AS n, sum(cost) OVER w AS running \
             FROM page \
             WINDOW w AS (ORDER BY created_at DESC, id DESC ROWS UNBOUNDED PRECEDING) \
         ) \
         SELECT a.id, a.delivery_id, a.event_id, a.project_id, a.event_type, a.webhook_url, \
             a.response_code, a.duration_ms, a.attempt_number, a.status, a.error_message, \
             a.created_at, a.\"trigger\", {fits} AS fits, \
             CASE WHEN {fits} THEN a.request_body END AS request_body, \
             CASE WHEN {fits} THEN a.response_body END AS response_body \
         FROM sized s JOIN attempts a ON a.id = s.id \
         WHERE s.n <= 2 OR s.running - s.cost <= $5 \
         ORDER BY s.created_at DESC, s.id DESC"
    )
}

/// Turns the rows of [`attempt_listing_sql`] into a page of at most `limit` attempts.
pub(crate) fn attempt_list<R>(
    rows: &[R],
    limit: i64,
    fits: impl Fn(&R) -> StoreResult<bool>,
    attempt: impl Fn(&R) -> StoreResult<Attempt>,
) -> StoreResult<AttemptList> {
    let mut list = AttemptList::default();
    for row in rows {
        if list.attempts.len() as i64 >= limit || !fits(row)? {
            list.has_more = true;
            break;
        }
        list.attempts.push(attempt(row)?);
    }
    Ok(list)
}

/// The refusal of a create that would take a project past its webhook limit.
pub(crate) fn webhook_limit_reached(max_webhooks: usize) -> StoreError {
    StoreError::Conflict(format!(
        "the project has reached its limit of {max_webhooks} webhooks: \
         delete one or update an existing event type"
    ))
}

#[derive(Debug, Clone)]
pub struct PublishEvent<'a> {
    pub project_id: Uuid,
    pub event_type: &'a str,
    /// Serialized JSON of the event's `data`, stored as given.
    pub data: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// An earlier event of this project with the same idempotency key and created after
    /// this instant is answered instead of creating a new one.
    pub idempotency_since: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub event_id: Uuid,
    pub deliveries: i64,
    pub created_at: DateTime<Utc>,
    /// True when an earlier event with the same idempotency key was found and nothing
    /// was created.
    pub duplicate: bool,
}

/// A delivery a worker has claimed under a lease, with everything needed to send it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub webhook_id: Uuid,
    pub project_id: Uuid,
    pub event_type: String,
    pub event_created_at: DateTime<Utc>,
    /// The event's `data`, serialized JSON.
    pub data: String,
    pub webhook_url: String,
    pub auth_header: Option<String>,
    pub secret: SigningSecret,
    /// The previous secret while a rotation grace period runs.
    pub previous_secret: Option<SigningSecret>,
    /// Attempts already made (0 on the first try).
    pub attempts_made: i64,
    /// The lease this claim holds; recording an outcome checks it still holds.
    pub lease_token: Uuid,
    /// What started the delivery (`Publish`, `Resend` or `Recover`): the trigger of
    /// its first attempt.
    pub origin: AttemptTrigger,
    /// The webhook's rate limit (deliveries per second), if it has one.
    pub rate_limit: Option<i64>,
    /// The webhook delivers in order: the next one is claimable once this one ends.
    pub ordered: bool,
    /// Not before this instant (a rate-limited webhook's slot).
    pub send_at: Option<DateTime<Utc>>,
}

/// What a worker reports about one claimed delivery.
#[derive(Debug, Clone)]
pub struct DeliveryOutcome {
    pub delivery_id: Uuid,
    /// The delivery's webhook, as claimed (a delivery never changes webhook).
    pub webhook_id: Uuid,
    pub lease_token: Uuid,
    pub attempt: Attempt,
    /// `None`: the delivery is finished (succeeded, or failed for good).
    /// `Some(t)`: try again at `t`.
    pub retry_at: Option<DateTime<Utc>>,
    /// The receiver answered `410 Gone`: recording this outcome also switches the
    /// webhook off and cancels its pending deliveries, in the same transaction.
    pub disable_webhook: bool,
    /// The webhook delivered in order when the delivery was claimed
    /// ([`ClaimedDelivery::ordered`]): its finish wakes the next head.
    pub ordered: bool,
}

/// When a webhook is switched off for failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisablePolicy {
    /// Consecutive failed attempts (across events) needed...
    pub failures: i64,
    /// ...spanning at least this long since the first of them.
    pub min_age: Duration,
    /// At most one `sonzai.delivery.exhausted` per webhook per this long; the ones in
    /// between are counted in the next one's `suppressed`.
    pub exhausted_window: Duration,
}

/// What recording a batch of outcomes did besides storing them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Webhooks it switched off.
    pub disabled: Vec<Uuid>,
    /// Operator events it queued a delivery for.
    pub notices: usize,
}

impl Recorded {
    /// Adds what another batch did.
    pub fn absorb(&mut self, other: Recorded) {
        self.disabled.extend(other.disabled);
        self.notices += other.notices;
    }
}

/// The store behind the API and the delivery workers.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    // --- tenants, projects, keys -------------------------------------------------
    async fn create_tenant(&self, name: &str) -> StoreResult<Tenant>;
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>>;
    /// `NotFound` when the tenant does not exist.
    async fn create_project(&self, tenant_id: Uuid, name: &str) -> StoreResult<Project>;
    async fn list_projects(&self, tenant_id: Option<Uuid>) -> StoreResult<Vec<Project>>;
    async fn get_project(&self, project_id: Uuid) -> StoreResult<Option<Project>>;
    /// `NotFound` when the project does not exist.
    async fn insert_api_key(&self, record: &ApiKeyRecord) -> StoreResult<()>;
    async fn list_api_keys(&self, project_id: Option<Uuid>) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Sets `revoked_at`; `NotFound` when no such key.
    async fn revoke_api_key(&self, key_id: Uuid) -> StoreResult<()>;
    /// The key with this lookup id, revoked or not.
    async fn find_api_key(&self, lookup_id: &str) -> StoreResult<Option<KeyOwner>>;
    /// True when nothing at all has been created yet (first start).
    async fn is_empty(&self) -> StoreResult<bool>;

    // --- webhooks ----------------------------------------------------------------
    /// Atomic create-or-update of the webhook of (project, event type). Concurrent
    /// upserts never make two webhooks nor lose the secret of the one that exists, and
    /// concurrent creates never take the project past `input.max_webhooks`
    /// ([`StoreError::Conflict`] for the ones that would).
    async fn upsert_webhook(&self, input: UpsertWebhook<'_>) -> StoreResult<UpsertOutcome>;
    /// Ordered by event type; a long listing is kept in memory and shared (see
    /// [`Listing`]).
    async fn list_webhooks(&self, project_id: Uuid) -> StoreResult<Listing>;
    async fn get_webhook(&self, project_id: Uuid, event_type: &str)
        -> StoreResult<Option<Webhook>>;
    /// Deletes the webhook and cancels its pending deliveries; attempts stay.
    /// Returns false when there was none.
    async fn delete_webhook(&self, project_id: Uuid, event_type: &str) -> StoreResult<bool>;
    /// Replaces the secret. With `grace`, the old secret keeps signing (as the second
    /// signature) until now + grace. Returns false when there is no such webhook.
    async fn rotate_secret(
        &self,
        project_id: Uuid,
        event_type: &str,
        new_secret: &SigningSecret,
        grace: Duration,
    ) -> StoreResult<bool>;

    // --- attempts ------------------------------------------------------------------
    /// Attempts of (project, event type), newest first. Includes attempts of webhooks
    /// since deleted. The page ends early, with `has_more`, once the attempts'
    /// estimated size (`ATTEMPT_COST_SQL`) would pass `max_bytes`; its first attempt
    /// is listed whatever its size. Bodies past the budget are not read.
    async fn list_attempts(
        &self,
        project_id: Uuid,
        event_type: &str,
        page: AttemptPage,
        max_bytes: usize,
    ) -> StoreResult<AttemptList>;

    // --- delivery ------------------------------------------------------------------
    /// One transaction: the event and one pending delivery (due now) per active webhook
    /// of (project, event type). With an idempotency key seen since
    /// `idempotency_since`, returns the first answer with `duplicate: true`.
    async fn publish_event(&self, event: PublishEvent<'_>) -> StoreResult<Published>;
    /// One transaction: checks that the event is of (project, event type) and that
    /// webhook exists and is active, then queues one new pending delivery of the event
    /// to it, due now and with origin `resend`, whatever became of the earlier ones.
    async fn resend_event(
        &self,
        project_id: Uuid,
        event_type: &str,
        event_id: Uuid,
    ) -> StoreResult<ResendOutcome>;
    /// Starts a recovery of the webhook of (project, event type): counts the events of
    /// the window that match and, unless it is a dry run, stores the job, which
    /// runners then advance ([`WebhookStore::advance_recovery`]).
    async fn start_recovery(&self, request: RecoverRequest<'_>) -> StoreResult<RecoverOutcome>;
    /// The recovery with this id of the project, if any.
    async fn get_recovery(
        &self,
        project_id: Uuid,
        recovery_id: Uuid,
    ) -> StoreResult<Option<Recovery>>;
    /// Cancels a running recovery of the project (a finished one stays as it is).
    /// Returns false when the project has no such recovery.
    async fn cancel_recovery(&self, project_id: Uuid, recovery_id: Uuid) -> StoreResult<bool>;
    /// Leases up to `max` running recoveries that no live runner holds, oldest first.
    async fn claim_recoveries(
        &self,
        max: usize,
        lease: Duration,
    ) -> StoreResult<Vec<RecoveryClaim>>;
    /// One batch of a leased recovery, in one transaction: queues the matching events
    /// among the next `step.scan` and moves the job's cursor past them, renewing the
    /// lease; nothing while the webhook has `step.max_pending` pending deliveries.
    async fn advance_recovery(
        &self,
        claim: RecoveryClaim,
        step: RecoveryStep,
    ) -> StoreResult<RecoveryProgress>;
    /// Lets a recovery's lease go, so any runner may take it at once.
    async fn release_recovery(&self, claim: RecoveryClaim) -> StoreResult<()>;
    /// Claims up to `max` pending deliveries that are due and not leased by a live
    /// claim (or whose lease has expired), oldest due first, leasing them for `lease`.
    async fn claim_due(&self, max: usize, lease: Duration) -> StoreResult<Vec<ClaimedDelivery>> {
        self.claim_due_skipping(max, lease, &[]).await
    }
    /// [`WebhookStore::claim_due`], shared fairly among projects and leaving out
    /// `skip` (projects this process has no room for): each project with due work (the
    /// first [`FAIR_CLAIM_PROJECTS`] found) gets an equal part of `max`, oldest due
    /// first within it, so one project's backlog cannot keep another's fresh events
    /// waiting. When more projects have pending work than that, the rest of `max` goes
    /// oldest due first across all of them, so none is starved.
    async fn claim_due_skipping(
        &self,
        max: usize,
        lease: Duration,
        skip: &[Uuid],
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        Ok(self.claim_batch(max, lease, skip).await?.deliveries)
    }
    /// [`WebhookStore::claim_due_skipping`], also saying whether the claim took all
    /// that was due.
    async fn claim_batch(
        &self,
        max: usize,
        lease: Duration,
        skip: &[Uuid],
    ) -> StoreResult<ClaimBatch>;
    /// Records a batch of outcomes in one transaction: inserts each attempt, finishes or
    /// reschedules the delivery and releases its lease, and updates the webhook's
    /// failure streak, disabling it (and cancelling its pending deliveries) when the
    /// streak passes `policy`. An outcome whose lease no longer holds (taken over after
    /// expiry) still records its attempt but leaves the delivery alone. The operator
    /// events this calls for are published in the same transaction.
    async fn record_outcomes(
        &self,
        outcomes: &[DeliveryOutcome],
        policy: DisablePolicy,
    ) -> StoreResult<Recorded>;

    /// Takes up to `wanted` send slots of a rate-limited webhook (see
    /// `store/pacing.rs`): instants one 1/`per_second` apart, across all processes,
    /// within `horizon` from now.
    async fn take_send_slots(
        &self,
        webhook_id: Uuid,
        per_second: i64,
        wanted: usize,
        horizon: Duration,
    ) -> StoreResult<SendSlots>;
    /// Hands claimed deliveries back like [`WebhookStore::release`], each (delivery,
    /// lease token, due) due at its own instant: a rate-limited webhook's waiting
    /// deliveries at their turns.
    async fn release_each(&self, claims: &[(Uuid, Uuid, DateTime<Utc>)]) -> StoreResult<()>;

    // --- retention ------------------------------------------------------------------
    /// Takes the right to purge (one process at a time): `None` while another process
    /// holds it. Hand it back with [`RetentionLock::release`].
    async fn retention_lock(&self) -> StoreResult<Option<RetentionLock>>;
    /// One batch of retention (see `store/retention.rs`): looks at the next `batch`
    /// rows of `table` after `after` created before `horizon`, and deletes those that
    /// may go.
    async fn purge(
        &self,
        table: RetentionTable,
        horizon: DateTime<Utc>,
        after: Uuid,
        batch: usize,
    ) -> StoreResult<PurgeStep>;
    /// Hands claimed deliveries back, due again at `due` (graceful shutdown hands them
    /// back due now; a worker deferring deliveries to a webhook at its in-flight limit
    /// hands them back due a moment later). Clears their leases; an attempt is not
    /// counted.
    async fn release(&self, claims: &[(Uuid, Uuid)], due: DateTime<Utc>) -> StoreResult<()>;
    /// The earliest `next_attempt_at` among pending deliveries, if any, so a worker
    /// knows how long it may sleep.
    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>>;
    /// Wakes the deliveries held out of the due range that no longer may be (see
    /// store/held.rs): every held head, and with `thorough` whatever an unordered
    /// webhook still holds. Answers how many it woke.
    async fn wake_held(&self, thorough: bool) -> StoreResult<u64>;
    /// Pending deliveries and the age of the oldest due one (for metrics).
    async fn queue_stats(&self) -> StoreResult<QueueStats>;
    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> StoreResult<()>;

    /// What the delivery-log portal reads and writes besides the operations above.
    fn portal(&self) -> &dyn portal::PortalStore;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub pending: i64,
    pub oldest_due_age: Option<Duration>,
}

// --- helpers shared by the backends ----------------------------------------------------

/// A UUIDv7 for an event published at `at`, carrying the microsecond within the
/// millisecond in its 12 `rand_a` bits (RFC 9562, method 3): events published a
/// microsecond apart sort in publish order by id, in any process, which is the order an
/// ordered webhook delivers them in.
pub(crate) fn v7_at(at: DateTime<Utc>) -> Uuid {
    let micros = at.timestamp_micros();
    let millis = u64::try_from(micros.div_euclid(1000)).unwrap_or(0);
    let sub_ms = u16::try_from(micros.rem_euclid(1000) * 4096 / 1000).unwrap_or(0);
    let mut bytes = *Uuid::new_v4().as_bytes();
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70 | (sub_ms >> 8) as u8;
    bytes[7] = (sub_ms & 0xff) as u8;
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    Uuid::from_bytes(bytes)
}

/// Event ids for `count` publishes committed together at `at`, rising in the order of
/// the publishes: ids drawn in one instant differ only in their random bits, and an
/// ordered webhook sends its smallest first.
pub(crate) fn batch_event_ids(count: usize, at: DateTime<Utc>) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = (0..count).map(|_| v7_at(at)).collect();
    ids.sort_unstable();
    ids
}

/// The current instant at the precision both backends store (microseconds), so that a
/// value handed back to a caller equals the one read back later.
pub(crate) fn now_micros() -> DateTime<Utc> {
    truncate_micros(Utc::now())
}

/// Drops sub-microsecond digits. PostgreSQL's `timestamptz` and the SQLite encoding
/// (integer microseconds) both truncate; doing it up front keeps comparisons exact.
pub(crate) fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// `t + d`, saturating at a century so that an absurd duration (a misconfigured
/// lease or grace) cannot overflow the timestamp types.
pub(crate) fn add_duration(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let d = chrono::Duration::from_std(d.min(CENTURY)).unwrap_or(chrono::Duration::zero());
    truncate_micros(t + d)
}

/// Text from a receiver (a response body, an error naming what it sent) as both
/// backends can store it: PostgreSQL's `text` refuses NUL, so each NUL becomes
/// U+FFFD, the same replacement character that stands for bytes that are not UTF-8
/// (the body was decoded lossily before it got here). Everything else is kept as is.
pub(crate) fn storable_text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{fffd}")
    } else {
        text
    }
}

/// How many projects with pending deliveries a claim looks at one by one (see
/// [`WebhookStore::claim_due_skipping`]). Each costs two index probes.
pub(crate) const FAIR_CLAIM_PROJECTS: usize = 256;

/// Where a claim takes deliveries from.
#[derive(Debug, Clone, Copy)]
pub enum ClaimFrom<'a> {
    /// Up to `share` from each of these projects, oldest due first within each.
    Projects(&'a [Uuid], usize),
    /// Oldest due first across all projects but these.
    Oldest(&'a [Uuid]),
    /// Every due delivery outside these projects, or none if more are due than the
    /// claim may take (see [`claim_all_due`]).
    AllDue(&'a [Uuid]),
}

/// What a claim took.
#[derive(Debug, Default)]
pub struct ClaimBatch {
    pub deliveries: Vec<ClaimedDelivery>,
    /// Nothing else was due outside the skipped projects when the claim ran: claiming
    /// again at once would find nothing, so the claimer can wait for news instead.
    pub drained: bool,
    /// When the claim ran, [`WebhookStore::next_due`] as it stood right after, if the
    /// backend could tell in the same round trip; the claimer need not ask.
    pub next_due: Option<NextDue>,
}

/// What [`WebhookStore::next_due`] answers: the next instant a delivery can be
/// claimed, if any is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextDue(pub Option<DateTime<Utc>>);

/// Leases every due delivery outside `skip` in one round trip, if no more than `max`
/// are due: such a claim is as fair as any (each project gets all it has due), so no
/// scan of the projects has to come first. `None` when more were due, or when it
/// cannot tell: the fair claim follows.
pub(crate) async fn claim_all_due<B: common::BackendOps>(
    store: &B,
    skip: &[Uuid],
    max: usize,
    lease: Duration,
) -> StoreResult<Option<(Vec<ClaimedDelivery>, Option<NextDue>)>> {
    let (claimed, told) = store
        .claim_from(ClaimFrom::AllDue(skip), max, lease)
        .await?;
    Ok((!claimed.is_empty() || told.is_some()).then_some((claimed, told)))
}

/// A claim of this many deliveries or more counts as busy (see [`claim_fairly`]).
const BUSY_CLAIM: usize = 16;

/// [`WebhookStore::claim_due_skipping`] on either backend: an equal part of `max` for
/// each project with due work, then, when more projects have pending work than were
/// looked at, the rest oldest due first across all of them. `scan` lists the first
/// [`FAIR_CLAIM_PROJECTS`] + 1 projects with pending deliveries, in id order, each with
/// whether its oldest pending delivery is due now.
pub(crate) async fn claim_fairly<B: common::BackendOps, F>(
    store: &B,
    scan: impl FnOnce() -> F,
    max: usize,
    lease: Duration,
    skip: &[Uuid],
) -> StoreResult<ClaimBatch>
where
    F: std::future::Future<Output = StoreResult<Vec<(Uuid, bool)>>>,
{
    if max == 0 {
        return Ok(ClaimBatch::default());
    }
    // At a moderate rate everything due fits in one claim: then the scan is a round
    // trip for nothing. After a busy claim (one that left more due, or took many) it
    // is not tried: behind a backlog it would not fit, and under heavy traffic the
    // scan's cost is spread over a large batch anyway. Nor while a project is left
    // out: its due rows lie across the oldest-first walk, which would read past them
    // all, where the fair claim reads each other project's own range.
    let busy = &store.tables().busy;
    if skip.is_empty() && !busy.load(Ordering::Relaxed) {
        if let Some((deliveries, next_due)) = claim_all_due(store, skip, max, lease).await? {
            busy.store(deliveries.len() >= BUSY_CLAIM, Ordering::Relaxed);
            return Ok(ClaimBatch {
                drained: deliveries.len() < max,
                deliveries,
                next_due,
            });
        }
    }
    let scanned = scan().await?;
    let truncated = scanned.len() > FAIR_CLAIM_PROJECTS;
    let due: Vec<Uuid> = scanned
        .into_iter()
        .take(FAIR_CLAIM_PROJECTS)
        .filter_map(|(project, due)| (due && !skip.contains(&project)).then_some(project))
        .collect();
    let mut claimed = Vec::new();
    let mut next_due = None;
    // A project that filled its share may have more due.
    let mut share_filled = false;
    if !due.is_empty() {
        let share = max.div_ceil(due.len());
        (claimed, next_due) = store
            .claim_from(ClaimFrom::Projects(&due, share), max, lease)
            .await?;
        share_filled = due
            .iter()
            .any(|p| claimed.iter().filter(|c| c.project_id == *p).count() >= share);
    }
    if truncated && claimed.len() < max {
        // Across every project: short of what it asked for means none is left.
        let rest;
        (rest, next_due) = store
            .claim_from(ClaimFrom::Oldest(skip), max - claimed.len(), lease)
            .await?;
        claimed.extend(rest);
        share_filled = false;
    }
    let drained = claimed.len() < max && !share_filled;
    busy.store(!drained || claimed.len() >= BUSY_CLAIM, Ordering::Relaxed);
    Ok(ClaimBatch {
        deliveries: claimed,
        drained,
        next_due,
    })
}

/// Delivery states as stored (`deliveries.status`).
pub(crate) mod delivery_status {
    pub const PENDING: &str = "pending";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
}

/// The delivery state an outcome leads to: still pending when a retry is scheduled,
/// otherwise finished according to the attempt.
pub(crate) fn status_after(outcome: &DeliveryOutcome) -> &'static str {
    match (outcome.retry_at, outcome.attempt.status) {
        (Some(_), _) => delivery_status::PENDING,
        (None, AttemptStatus::Success) => delivery_status::SUCCEEDED,
        (None, AttemptStatus::Failed) => delivery_status::FAILED,
    }
}

/// A webhook's failure streak, and the rule that advances it. Both backends load the
/// stored streak inside the recording transaction, replay the batch's attempts through
/// [`FailureStreak::record`] in time order, and write the result back, so the rule
/// exists once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureStreak {
    pub consecutive_failures: i64,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub is_active: bool,
}

impl FailureStreak {
    /// Folds in one attempt made at `at`. Returns true when this attempt is the one that
    /// disables the webhook: the streak has reached `policy.failures` failures and has
    /// lasted at least `policy.min_age`. Measuring the span between attempt times
    /// (rather than against the clock at recording time) keeps the rule independent of
    /// how late a batch is recorded.
    pub(crate) fn record(
        &mut self,
        status: AttemptStatus,
        at: DateTime<Utc>,
        policy: DisablePolicy,
    ) -> bool {
        match status {
            AttemptStatus::Success => {
                self.consecutive_failures = 0;
                self.first_failure_at = None;
                false
            }
            AttemptStatus::Failed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let first = *self.first_failure_at.get_or_insert(at);
                let old_enough = (at - first)
                    .to_std()
                    .map(|age| age >= policy.min_age)
                    .unwrap_or(policy.min_age.is_zero());
                if self.is_active && self.consecutive_failures >= policy.failures && old_enough {
                    self.is_active = false;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The receiver answered `410 Gone`: switches the webhook off. Returns true when
    /// this is what disables it (false if it is off already).
    pub(crate) fn gone(&mut self) -> bool {
        std::mem::replace(&mut self.is_active, false)
    }
}

/// The database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `postgres://` and `postgresql://` name PostgreSQL; anything else (`sqlite://path`,
    /// `sqlite:path`, a bare path) is a SQLite file.
    pub fn of_url(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// Opens the store a URL names (see [`Backend::of_url`]), creating a SQLite file if
/// missing, and runs the embedded migrations.
pub async fn connect(url: &str) -> StoreResult<std::sync::Arc<dyn WebhookStore>> {
    Ok(match Backend::of_url(url) {
        Backend::Postgres => std::sync::Arc::new(postgres::PgStore::connect(url).await?),
        Backend::Sqlite => std::sync::Arc::new(sqlite::SqliteStore::connect(url).await?),
    })
}

#[cfg(test)]
mod backend_tests {
    use super::Backend;

    #[test]
    fn the_url_scheme_decides_the_backend() {
        for url in ["postgres://u@h/db", "postgresql://h/db?sslmode=require"] {
            assert_eq!(Backend::of_url(url), Backend::Postgres, "{url}");
        }
        for url in [
            "sqlite://data/hooks.db",
            "sqlite::memory:",
            "hooks.db",
            "postgres.db",
            "/var/lib/postgres-hooks.db",
        ] {
            assert_eq!(Backend::of_url(url), Backend::Sqlite, "{url}");
        }
    }
}
