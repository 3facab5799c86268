//! The reference implementation of the generated [`WebhooksApi`] trait. Thin on
//! purpose: the router has already validated every input against the spec; here a
//! request is scoped to a project (tenancy, in [`Api::scope`] only), handed to the
//! store, and the answer shaped. Store errors become problems in one place
//! ([`store_problem`]).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sonzai_webhooks_api::models::{
    CreatePortalSessionInputBody, ListDeliveryAttemptsOutputBody, ListWebhooksOutputBody,
    PortalSession, PublishEventOutputBody, RecoverWebhookInputBody, Recovery,
    ResendEventOutputBody, RotateSigningSecretOutputBody, UpsertWebhookOutputBody, Webhook,
    WebhookDeliveryAttempt,
};
use sonzai_webhooks_api::reply::{Encoded, Reply};
use sonzai_webhooks_api::{
    ListDeliveryAttemptsForTenantQuery, ListDeliveryAttemptsQuery, Problem, WebhooksApi,
};
use uuid::Uuid;

use crate::auth::{self, Caller};
use crate::config::{Config, Retention};
use crate::delivery::guard::{self, TargetPolicy};
use crate::engine::Engine;
use crate::store::{
    self, AttemptPage, Listing, RecoverInclude, RecoverOutcome, RecoverRequest, ResendOutcome,
    SigningSecret, StoreError, UpsertOutcome, UpsertWebhook,
};

/// How much one caller can make the API take in, hold or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Bytes of JSON one page of attempts may take; the page ends early past it.
    pub max_attempts_page_bytes: usize,
    /// Most webhooks one project may have.
    pub max_webhooks_per_project: usize,
    /// How far back stored events go (what resend and recover can reach).
    pub retention: Retention,
}

impl From<&Config> for Limits {
    fn from(config: &Config) -> Self {
        Self {
            max_body_bytes: config.max_body_bytes,
            max_attempts_page_bytes: config.max_attempts_page_bytes,
            max_webhooks_per_project: config.max_webhooks_per_project,
            retention: config.retention,
        }
    }
}

/// What a page of attempts weighs besides its attempts: `$schema`, the keys,
/// `has_more` and a cursor, rounded up, so the whole answer stays within the budget.
const ATTEMPTS_PAGE_ENVELOPE_BYTES: usize = 256;

pub struct Api {
    engine: Arc<Engine>,
    policy: TargetPolicy,
    limits: Limits,
    /// Where the server is reached from outside (`--public-url`); without it, links
    /// point at the host each request was sent to.
    public_url: Option<String>,
    /// The listening address as an origin, for a request without a usable `Host`.
    fallback_origin: String,
}

/// An authenticated request: its caller, and the origin it was addressed to, where
/// the links the API hands out (portal sessions) point.
pub struct Ctx {
    caller: Caller,
    origin: String,
}

impl std::ops::Deref for Ctx {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.caller
    }
}

/// `scheme://host` of a request, from its `Host` header (and `X-Forwarded-Proto` of a
/// proxy that ends TLS), or `fallback` when the header is missing or not a host.
fn request_origin(parts: &http::request::Parts, fallback: &str) -> String {
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        });
    let Some(host) = host else {
        return fallback.to_owned();
    };
    let tls = parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!("{}://{host}", if tls { "https" } else { "http" })
}

impl Api {
    pub fn new(
        engine: Arc<Engine>,
        policy: TargetPolicy,
        limits: Limits,
        public_url: Option<String>,
        listen: std::net::SocketAddr,
    ) -> Self {
        Self {
            engine,
            policy,
            limits,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            fallback_origin: format!("http://{listen}"),
        }
    }

    fn store(&self) -> &dyn store::WebhookStore {
        self.engine.store.as_ref()
    }

    /// The project a request acts on. Tenant-scoped routes act on the key's own
    /// project; project routes on `{projectId}`, which must belong to the key's tenant.
    /// A project of another tenant answers exactly like one that does not exist.
    async fn scope(&self, caller: &Caller, project_id: Option<Uuid>) -> Result<Uuid, Problem> {
        let Some(project_id) = project_id else {
            return Ok(caller.project_id);
        };
        if project_id == caller.project_id {
            return Ok(project_id);
        }
        match self
            .store()
            .get_project(project_id)
            .await
            .map_err(store_problem)?
        {
            Some(project) if project.tenant_id == caller.tenant_id => Ok(project_id),
            _ => Err(Problem::not_found(format!(
                "project {project_id} not found"
            ))),
        }
    }

    /// A kept listing answers its encoding, made once while the listing is unchanged.
    async fn list(&self, project_id: Uuid) -> Result<Reply<ListWebhooksOutputBody>, Problem> {
        let body = |webhooks: Vec<Webhook>| ListWebhooksOutputBody {
            schema: None,
            webhooks: Some(webhooks),
        };
        match self
            .store()
            .list_webhooks(project_id)
            .await
            .map_err(store_problem)?
        {
            Listing::Read(webhooks) => Ok(Reply::Body(body(
                webhooks.into_iter().map(webhook_model).collect(),
            ))),
            Listing::Kept(kept) => kept
                .encoded(|webhooks| {
                    Encoded::new(body(webhooks.iter().cloned().map(webhook_model).collect()))
                })
                .map(Reply::Encoded),
        }
    }

    pub(crate) async fn upsert(
        &self,
        project_id: Uuid,
        event_type: &str,
        webhook_url: &str,
        auth_header: Option<&str>,
        controls: Controls,
    ) -> Result<UpsertWebhookOutputBody, Problem> {
        let url = reqwest::Url::parse(webhook_url)
            .map_err(|_| Problem::invalid("body.webhook_url", "expected an absolute URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Problem::invalid(
                "body.webhook_url",
                "expected an http or https URL with a host",
            ));
        }
        // Credentials in the URL would never be sent (deliveries authenticate with
        // `auth_header`) yet would be stored, listed and logged with the URL.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Problem::invalid(
                "body.webhook_url",
                "expected a URL without user:password@; send credentials with auth_header",
            ));
        }
        if let Err(blocked) = guard::check_url(&url, &self.policy) {
            return Err(Problem::invalid("body.webhook_url", blocked.to_string()));
        }
        if let Some(h) = auth_header {
            if http::HeaderValue::from_str(h).is_err() {
                return Err(Problem::invalid(
                    "body.auth_header",
                    "expected a value that can be sent as an HTTP header",
                ));
            }
        }
        let secret = SigningSecret::generate();
        let outcome = self
            .store()
            .upsert_webhook(UpsertWebhook {
                project_id,
                event_type,
                // The URL as parsed and checked, not as typed: what is stored and
                // listed is exactly what deliveries go to.
                webhook_url: url.as_str(),
                auth_header,
                rate_limit: controls.rate_limit,
                ordered: controls.ordered.unwrap_or(false),
                new_secret: &secret,
                max_webhooks: self.limits.max_webhooks_per_project,
            })
            .await
            .map_err(store_problem)?;
        Ok(match outcome {
            UpsertOutcome::Created { secret, .. } => UpsertWebhookOutputBody {
                schema: None,
                success: true,
                signing_secret: Some(secret.expose().to_owned()),
            },
            UpsertOutcome::Updated { .. } => UpsertWebhookOutputBody {
                schema: None,
                success: true,
                signing_secret: None,
            },
        })
    }

    pub(crate) async fn delete(&self, project_id: Uuid, event_type: &str) -> Result<(), Problem> {
        if self
            .store()
            .delete_webhook(project_id, event_type)
            .await
            .map_err(store_problem)?
        {
            Ok(())
        } else {
            Err(webhook_not_found(event_type))
        }
    }

    pub(crate) async fn rotate(
        &self,
        project_id: Uuid,
        event_type: &str,
        grace_seconds: i64,
    ) -> Result<RotateSigningSecretOutputBody, Problem> {
        let secret = SigningSecret::generate();
        let grace = Duration::from_secs(u64::try_from(grace_seconds).unwrap_or(0));
        if self
            .store()
            .rotate_secret(project_id, event_type, &secret, grace)
            .await
            .map_err(store_problem)?
        {
            Ok(RotateSigningSecretOutputBody {
                schema: None,
                success: true,
                signing_secret: secret.expose().to_owned(),
            })
        } else {
            Err(webhook_not_found(event_type))
        }
    }

    async fn attempts(
        &self,
        project_id: Uuid,
        event_type: &str,
        paging: Paging,
    ) -> Result<ListDeliveryAttemptsOutputBody, Problem> {
        let size = paging.page_size.unwrap_or(paging.limit);
        let page = match &paging.cursor {
            Some(cursor) => {
                if paging.offset != 0 {
                    return Err(Problem::invalid(
                        "query.cursor",
                        "use either offset or cursor, not both",
                    ));
                }
                let (created_at, id) = decode_cursor(cursor)
                    .ok_or_else(|| Problem::invalid("query.cursor", "unknown or damaged cursor"))?;
                AttemptPage::After {
                    limit: size,
                    created_at,
                    id,
                }
            }
            None => AttemptPage::Offset {
                limit: size,
                offset: paging.offset,
            },
        };
        let budget = self.limits.max_attempts_page_bytes;
        let listed = self
            .store()
            .list_attempts(project_id, event_type, page, budget)
            .await
            .map_err(store_problem)?;
        // The store sized the page from stored lengths; escaping can make the JSON
        // larger, so the page is measured exactly here and cut again if need be. The
        // first attempt stays whatever its size, so every page makes progress.
        let mut has_more = listed.has_more;
        let mut attempts = Vec::with_capacity(listed.attempts.len());
        let mut used = ATTEMPTS_PAGE_ENVELOPE_BYTES;
        for attempt in listed.attempts {
            let model = attempt_model(attempt);
            // One more for the comma between array items.
            let size = json_len(&model) + 1;
            if !attempts.is_empty() && used + size > budget {
                has_more = true;
                break;
            }
            used += size;
            attempts.push(model);
        }
        let next_cursor = has_more
            .then(|| {
                attempts
                    .last()
                    .map(|a| encode_cursor(a.created_at, a.attempt_id))
            })
            .flatten();
        Ok(ListDeliveryAttemptsOutputBody {
            schema: None,
            attempts: Some(attempts),
            has_more: Some(has_more),
            next_cursor,
        })
    }

    pub(crate) async fn publish(
        &self,
        project_id: Uuid,
        event_type: &str,
        data: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<PublishEventOutputBody, Problem> {
        if store::operator::is_reserved(event_type) {
            return Err(Problem::invalid(
                "body.event_type",
                "event types starting with `sonzai.` are the server's own operator events",
            ));
        }
        let published = self
            .engine
            .publish(project_id, event_type, data, idempotency_key)
            .await
            .map_err(store_problem)?;
        Ok(PublishEventOutputBody {
            schema: None,
            event_id: published.event_id,
            created_at: published.created_at,
            deliveries_started: published.deliveries,
        })
    }
}

impl Api {
    /// A portal link of the project: a single-use token, stored hashed, valid for
    /// `ttl_seconds` (the router has checked the range).
    async fn portal_link(
        &self,
        ctx: &Ctx,
        project_id: Uuid,
        body: CreatePortalSessionInputBody,
    ) -> Result<PortalSession, Problem> {
        let ttl = body.ttl_seconds.unwrap_or(3600).clamp(60, 86_400);
        let expires_at = store::now_micros() + chrono::Duration::seconds(ttl);
        let (token, hash) = store::portal::new_token("spl_");
        self.store()
            .portal()
            .create_link(project_id, hash, expires_at)
            .await
            .map_err(store_problem)?;
        let origin = self.public_url.as_deref().unwrap_or(&ctx.origin);
        Ok(PortalSession {
            schema: None,
            url: format!("{origin}/portal/enter?token={token}"),
            expires_at,
        })
    }
}

impl Api {
    pub(crate) async fn resend(
        &self,
        project_id: Uuid,
        event_type: &str,
        event_id: Uuid,
    ) -> Result<ResendEventOutputBody, Problem> {
        match self
            .engine
            .resend(project_id, event_type, event_id)
            .await
            .map_err(store_problem)?
        {
            ResendOutcome::Queued { queued_at, .. } => Ok(ResendEventOutputBody {
                schema: None,
                event_id,
                queued_at,
            }),
            ResendOutcome::NoWebhook => Err(webhook_not_found(event_type)),
            // The same answer whether the event does not exist or is another
            // project's or event type's: ids of other tenants are not confirmed.
            ResendOutcome::NoEvent => {
                // An id the server made before the horizon names an event retention
                // has removed (whatever project it was in: the answer confirms no
                // other tenant's ids).
                let horizon = self.limits.retention.horizon(store::now_micros());
                let removed = store::v7_time(event_id)
                    .zip(horizon)
                    .is_some_and(|(made, horizon)| made < horizon);
                if removed {
                    Err(Problem::new(
                        http::StatusCode::GONE,
                        "this event is older than the retention period and has been removed",
                    ))
                } else {
                    Err(Problem::not_found(format!(
                        "no such event of event type {event_type}"
                    )))
                }
            }
            ResendOutcome::Inactive => Err(webhook_disabled(event_type)),
        }
    }
}

impl Api {
    pub(crate) async fn recover(
        &self,
        project_id: Uuid,
        event_type: &str,
        body: RecoverWebhookInputBody,
    ) -> Result<(http::StatusCode, Recovery), Problem> {
        let now = store::now_micros();
        // Nothing is published later than now: a window reaching past it ends there.
        let until = body.until.map_or(now, |until| until.min(now));
        // No event is older than the epoch, and PostgreSQL cannot store every instant
        // the schema allows (a year before 4713 BC): a window reaching back further
        // starts there.
        let since = body.since.max(chrono::DateTime::UNIX_EPOCH);
        if let Some(horizon) = self.limits.retention.horizon(now) {
            if since < horizon {
                return Err(Problem::invalid(
                    "body.since",
                    format!(
                        "expected an instant within the retention period (not before {})",
                        horizon.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                ));
            }
        }
        if since >= until {
            return Err(Problem::invalid(
                "body.since",
                "expected an instant before `until` (default and at most now)",
            ));
        }
        let kinds = body.include.unwrap_or_else(|| vec!["failed".to_owned()]);
        if kinds.is_empty() {
            return Err(Problem::invalid(
                "body.include",
                "expected at least one of `failed`, `missed`",
            ));
        }
        if let Some(i) = kinds.iter().position(|k| k != "failed" && k != "missed") {
            return Err(Problem::invalid(
                &format!("body.include[{i}]"),
                "expected `failed` or `missed`",
            ));
        }
        let include = RecoverInclude {
            failed: kinds.iter().any(|k| k == "failed"),
            missed: kinds.iter().any(|k| k == "missed"),
        };
        let dry_run = body.dry_run.unwrap_or(false);
        let outcome = self
            .engine
            .recover(RecoverRequest {
                project_id,
                event_type,
                since,
                until,
                include,
                dry_run,
            })
            .await
            .map_err(store_problem)?;
        match outcome {
            RecoverOutcome::Started(recovery) => {
                let status = if dry_run {
                    http::StatusCode::OK
                } else {
                    http::StatusCode::ACCEPTED
                };
                Ok((status, recovery_model(recovery)))
            }
            RecoverOutcome::NoWebhook => Err(webhook_not_found(event_type)),
            RecoverOutcome::Inactive => Err(webhook_disabled(event_type)),
        }
    }

    async fn get_recovery(&self, project_id: Uuid, recovery_id: Uuid) -> Result<Recovery, Problem> {
        self.store()
            .get_recovery(project_id, recovery_id)
            .await
            .map_err(store_problem)?
            .map(recovery_model)
            .ok_or_else(recovery_not_found)
    }

    async fn cancel_recovery(&self, project_id: Uuid, recovery_id: Uuid) -> Result<(), Problem> {
        if self
            .store()
            .cancel_recovery(project_id, recovery_id)
            .await
            .map_err(store_problem)?
        {
            // The cancellation may have queued its sonzai.recovery.completed.
            self.engine.waker.announce();
            Ok(())
        } else {
            Err(recovery_not_found())
        }
    }
}

/// The same answer whether the recovery does not exist or is another project's.
fn recovery_not_found() -> Problem {
    Problem::not_found("no such recovery in this project")
}

fn webhook_disabled(event_type: &str) -> Problem {
    Problem::conflict(format!(
        "the webhook for event type {event_type} is disabled; an upsert turns it back on"
    ))
}

fn recovery_model(r: store::Recovery) -> Recovery {
    let include = [("failed", r.include.failed), ("missed", r.include.missed)]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name.to_owned())
        .collect();
    Recovery {
        schema: None,
        recovery_id: r.id,
        event_type: r.event_type,
        since: r.since,
        until: r.until,
        include,
        status: r.status.as_str().to_owned(),
        matched: r.matched,
        queued: r.queued,
        created_at: r.created_at,
        finished_at: r.finished_at,
    }
}

/// The attempts query of either route.
struct Paging {
    limit: i64,
    offset: i64,
    page_size: Option<i64>,
    cursor: Option<String>,
}

impl From<ListDeliveryAttemptsQuery> for Paging {
    fn from(q: ListDeliveryAttemptsQuery) -> Self {
        Self {
            limit: q.limit,
            offset: q.offset,
            page_size: q.page_size,
            cursor: q.cursor,
        }
    }
}

impl From<ListDeliveryAttemptsForTenantQuery> for Paging {
    fn from(q: ListDeliveryAttemptsForTenantQuery) -> Self {
        Self {
            limit: q.limit,
            offset: q.offset,
            page_size: q.page_size,
            cursor: q.cursor,
        }
    }
}

/// Cursors are opaque to clients: base64url of `<unix micros>.<attempt id>`, the
/// position of the last attempt of the page in (created_at desc, id desc) order.
fn encode_cursor(created_at: chrono::DateTime<chrono::Utc>, id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}.{}",
        created_at.timestamp_micros(),
        id
    ))
}

fn decode_cursor(cursor: &str) -> Option<(chrono::DateTime<chrono::Utc>, Uuid)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (micros, id) = text.split_once('.')?;
    Some((
        chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

/// The length of `value` as JSON, without keeping the text.
fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and the models always serialize.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn webhook_not_found(event_type: &str) -> Problem {
    Problem::not_found(format!("no webhook for event type {event_type}"))
}

/// The one place store errors become answers. Unexpected errors are logged here and
/// answered as an opaque 500.
pub fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::NotFound => Problem::not_found("not found"),
        StoreError::Conflict(detail) => Problem::conflict(detail),
        other => {
            tracing::error!(error = %other, "store error");
            Problem::internal()
        }
    }
}

/// The delivery controls of an upsert (both routes' bodies carry them).
pub(crate) struct Controls {
    pub rate_limit: Option<i64>,
    pub ordered: Option<bool>,
}

fn webhook_model(w: store::Webhook) -> Webhook {
    Webhook {
        schema: None,
        project_id: w.project_id,
        event_type: w.event_type,
        webhook_url: w.webhook_url,
        auth_header: w.auth_header,
        is_active: w.is_active,
        created_at: w.created_at,
        updated_at: w.updated_at,
        // Shown only when set, so a webhook without them reads as before.
        rate_limit: w.rate_limit,
        ordered: w.ordered.then_some(true),
    }
}

fn attempt_model(a: store::Attempt) -> WebhookDeliveryAttempt {
    WebhookDeliveryAttempt {
        schema: None,
        attempt_id: a.id,
        project_id: a.project_id,
        event_type: a.event_type,
        webhook_url: a.webhook_url,
        response_code: a.response_code,
        duration_ms: a.duration_ms,
        attempt_number: a.attempt_number,
        status: a.status.as_str().to_owned(),
        created_at: a.created_at,
        request_body: Some(base64::engine::general_purpose::STANDARD.encode(&a.request_body)),
        response_body: a.response_body,
        error_message: a.error_message,
        trigger: a.trigger.map(|t| t.as_str().to_owned()),
    }
}

impl WebhooksApi for Api {
    type Context = Ctx;

    async fn authenticate(&self, parts: &http::request::Parts) -> Result<Ctx, Problem> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = auth::authenticate(self.store(), header)
            .await
            .map_err(|e| {
                if e.is_unauthorized() {
                    tracing::debug!(reason = %e, "rejected API key");
                    Problem::unauthorized()
                } else {
                    tracing::error!(error = %e, "authentication failed");
                    Problem::internal()
                }
            })?;
        Ok(Ctx {
            caller,
            origin: request_origin(parts, &self.fallback_origin),
        })
    }

    fn max_body_bytes(&self) -> usize {
        self.limits.max_body_bytes
    }

    async fn list_webhooks(
        &self,
        ctx: Ctx,
        project_id: Uuid,
    ) -> Result<Reply<ListWebhooksOutputBody>, Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        self.list(project).await
    }

    async fn upsert_webhook(
        &self,
        ctx: Ctx,
        project_id: Uuid,
        event_type: String,
        body: sonzai_webhooks_api::models::UpsertWebhookInputBody,
    ) -> Result<UpsertWebhookOutputBody, Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        self.upsert(
            project,
            &event_type,
            &body.webhook_url,
            body.auth_header.as_deref(),
            Controls {
                rate_limit: body.rate_limit,
                ordered: body.ordered,
            },
        )
        .await
    }

    async fn delete_webhook(
        &self,
        ctx: Ctx,
        project_id: Uuid,
        event_type: String,
    ) -> Result<(), Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        self.delete(project, &event_type).await
    }

    async fn list_delivery_attempts(
        &self,
        ctx: Ctx,
        project_id: Uuid,
        event_type: String,
        query: ListDeliveryAttemptsQuery,
    ) -> Result<Reply<ListDeliveryAttemptsOutputBody>, Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        self.attempts(project, &event_type, query.into())
            .await
            .map(Reply::from)
    }

    async fn rotate_webhook_signing_secret(
        &self,
        ctx: Ctx,
        project_id: Uuid,
        event_type: String,
        query: sonzai_webhooks_api::RotateWebhookSigningSecretQuery,
    ) -> Result<RotateSigningSecretOutputBody, Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        self.rotate(project, &event_type, query.grace_seconds).await
    }

    async fn publish_event(
        &self,
        ctx: Ctx,
        project_id: Uuid,
        body: sonzai_webhooks_api::models::PublishEventInputBody,
    ) -> Result<PublishEventOutputBody, Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        self.publish(
            project,
            &body.event_type,
            &body.data,
            body.idempotency_key.as_deref(),
        )
        .await
    }

    async fn list_webhooks_for_tenant(
        &self,
        ctx: Ctx,
    ) -> Result<Reply<ListWebhooksOutputBody>, Problem> {
        let project = self.scope(&ctx, None).await?;
        self.list(project).await
    }

    async fn upsert_webhook_for_tenant(
        &self,
        ctx: Ctx,
        event_type: String,
        body: sonzai_webhooks_api::models::UpsertWebhookForTenantInputBody,
    ) -> Result<UpsertWebhookOutputBody, Problem> {
        let project = self.scope(&ctx, None).await?;
        self.upsert(
            project,
            &event_type,
            &body.webhook_url,
            body.auth_header.as_deref(),
            Controls {
                rate_limit: body.rate_limit,
                ordered: body.ordered,
            },
        )
        .await
    }

    async fn delete_webhook_for_tenant(&self, ctx: Ctx, event_type: String) -> Result<(), Problem> {
        let project = self.scope(&ctx, None).await?;
        self.delete(project, &event_type).await
    }

    async fn list_delivery_attempts_for_tenant(
        &self,
        ctx: Ctx,
        event_type: String,
        query: ListDeliveryAttemptsForTenantQuery,
    ) -> Result<Reply<ListDeliveryAttemptsOutputBody>, Problem> {
        let project = self.scope(&ctx, None).await?;
        self.attempts(project, &event_type, query.into())
            .await
            .map(Reply::from)
    }

    async fn rotate_webhook_signing_secret_for_tenant(
        &self,
        ctx: Ctx,
        event_type: String,
        query: sonzai_webhooks_api::RotateWebhookSigningSecretForTenantQuery,
    ) -> Result<RotateSigningSecretOutputBody, Problem> {
        let project = self.scope(&ctx, None).await?;
        self.rotate(project, &event_type, query.grace_seconds).await
    }

    async fn resend_event(
        &self,
        ctx: Ctx,
        project_id: Uuid,
        event_type: String,
        event_id: Uuid,
    ) -> Result<ResendEventOutputBody, Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        self.resend(project, &event_type, event_id).await
    }

    async fn resend_event_for_tenant(
        &self,
        ctx: Ctx,
        event_type: String,
        event_id: Uuid,
    ) -> Result<ResendEventOutputBody, Problem> {
        let project = self.scope(&ctx, None).await?;
        self.resend(project, &event_type, event_id).await
    }

    async fn recover_webhook(
        &self,
        ctx: Ctx,
        project_id: Uuid,
        event_type: String,
        body: RecoverWebhookInputBody,
    ) -> Result<(http::StatusCode, Recovery), Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        self.recover(project, &event_type, body).await
    }

    async fn recover_webhook_for_tenant(
        &self,
        ctx: Ctx,
        event_type: String,
        body: RecoverWebhookInputBody,
    ) -> Result<(http::StatusCode, Recovery), Problem> {
        let project = self.scope(&ctx, None).await?;
        self.recover(project, &event_type, body).await
    }

    async fn get_recovery(
        &self,
        ctx: Ctx,
        project_id: Uuid,
        recovery_id: Uuid,
    ) -> Result<Reply<Recovery>, Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        Api::get_recovery(self, project, recovery_id)
            .await
            .map(Reply::from)
    }

    async fn get_recovery_for_tenant(
        &self,
        ctx: Ctx,
        recovery_id: Uuid,
    ) -> Result<Reply<Recovery>, Problem> {
        let project = self.scope(&ctx, None).await?;
        Api::get_recovery(self, project, recovery_id)
            .await
            .map(Reply::from)
    }

    async fn cancel_recovery(
        &self,
        ctx: Ctx,
        project_id: Uuid,
        recovery_id: Uuid,
    ) -> Result<(), Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        Api::cancel_recovery(self, project, recovery_id).await
    }

    async fn cancel_recovery_for_tenant(&self, ctx: Ctx, recovery_id: Uuid) -> Result<(), Problem> {
        let project = self.scope(&ctx, None).await?;
        Api::cancel_recovery(self, project, recovery_id).await
    }

    async fn create_portal_session(
        &self,
        ctx: Ctx,
        project_id: Uuid,
        body: CreatePortalSessionInputBody,
    ) -> Result<PortalSession, Problem> {
        let project = self.scope(&ctx, Some(project_id)).await?;
        self.portal_link(&ctx, project, body).await
    }

    async fn create_portal_session_for_tenant(
        &self,
        ctx: Ctx,
        body: CreatePortalSessionInputBody,
    ) -> Result<PortalSession, Problem> {
        let project = self.scope(&ctx, None).await?;
        self.portal_link(&ctx, project, body).await
    }

    async fn publish_event_for_tenant(
        &self,
        ctx: Ctx,
        body: sonzai_webhooks_api::models::PublishEventForTenantInputBody,
    ) -> Result<PublishEventOutputBody, Problem> {
        let project = self.scope(&ctx, None).await?;
        self.publish(
            project,
            &body.event_type,
            &body.data,
            body.idempotency_key.as_deref(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        let cursor = encode_cursor(at, id);
        assert_eq!(decode_cursor(&cursor), Some((at, id)));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(""), None);
    }

    #[test]
    fn only_real_conflicts_are_409_and_internal_text_never_reaches_the_caller() {
        let conflict = store_problem(StoreError::Conflict("limit of 5 webhooks".into()));
        assert_eq!(conflict.status, http::StatusCode::CONFLICT);
        assert!(conflict.detail.contains("limit of 5 webhooks"));
        let internal = store_problem(StoreError::Internal("publish left unanswered".into()));
        assert_eq!(internal.status, http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !internal.detail.contains("unanswered"),
            "{}",
            internal.detail
        );
    }

    #[test]
    fn attempts_without_a_trigger_omit_the_field() {
        let attempt = store::Attempt {
            id: Uuid::now_v7(),
            delivery_id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            event_type: "session.end".into(),
            webhook_url: "https://example.com/h".into(),
            response_code: 200,
            duration_ms: 5,
            attempt_number: 1,
            status: store::AttemptStatus::Success,
            request_body: b"{}".to_vec(),
            response_body: None,
            error_message: None,
            created_at: chrono::Utc::now(),
            trigger: None,
        };
        let old = serde_json::to_value(attempt_model(attempt.clone())).unwrap();
        assert!(old.get("trigger").is_none(), "{old}");
        let resent = store::Attempt {
            trigger: Some(store::AttemptTrigger::Resend),
            ..attempt
        };
        let resent = serde_json::to_value(attempt_model(resent)).unwrap();
        assert_eq!(resent["trigger"], "resend");
    }
}
