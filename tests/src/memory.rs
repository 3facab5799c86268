//! An in-memory [`WebhooksApi`]: just enough behaviour to check, through real HTTP,
//! that the generated router hands every operation the parsed inputs it should (and
//! nothing when an input is invalid), and that the generated client reads every
//! answer back into its types.
//!
//! It records what it received: [`MemoryApi::calls`] counts operation calls (the
//! router must not call an operation for an invalid or unauthenticated request), and
//! the query types the router built are kept so tests can check parsing and defaults.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use chrono::Utc;
use sonzai_webhooks_api::models::{
    CreatePortalSessionInputBody, ListDeliveryAttemptsOutputBody, ListWebhooksOutputBody,
    PortalSession, PublishEventForTenantInputBody, PublishEventInputBody, PublishEventOutputBody,
    RecoverWebhookInputBody, Recovery, ResendEventOutputBody, RotateSigningSecretOutputBody,
    UpsertWebhookForTenantInputBody, UpsertWebhookInputBody, UpsertWebhookOutputBody, Webhook,
    WebhookDeliveryAttempt,
};
use sonzai_webhooks_api::reply::Reply;
use sonzai_webhooks_api::{
    ListDeliveryAttemptsForTenantQuery, ListDeliveryAttemptsQuery, Problem,
    RotateWebhookSigningSecretForTenantQuery, RotateWebhookSigningSecretQuery, WebhooksApi,
};
use uuid::Uuid;

/// The only API key [`MemoryApi`] accepts.
pub const API_KEY: &str = "sk_test_roundtrip";

/// The project [`API_KEY`] belongs to; the only project the project-scoped routes know.
pub const PROJECT_ID: Uuid = Uuid::from_u128(0x0190_8f7e_2a4c_7b1d_9e3f_5a6b_7c8d_9e0f);

/// The paging inputs of one attempts call, whichever route it came through: the
/// project-scoped and tenant-scoped query types are distinct but carry the same fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptsQuery {
    pub limit: i64,
    pub offset: i64,
    pub page_size: Option<i64>,
    pub cursor: Option<String>,
}

impl From<ListDeliveryAttemptsQuery> for AttemptsQuery {
    fn from(q: ListDeliveryAttemptsQuery) -> Self {
        Self {
            limit: q.limit,
            offset: q.offset,
            page_size: q.page_size,
            cursor: q.cursor,
        }
    }
}

impl From<ListDeliveryAttemptsForTenantQuery> for AttemptsQuery {
    fn from(q: ListDeliveryAttemptsForTenantQuery) -> Self {
        Self {
            limit: q.limit,
            offset: q.offset,
            page_size: q.page_size,
            cursor: q.cursor,
        }
    }
}

#[derive(Debug, Clone)]
struct Stored {
    webhook: Webhook,
    secret: String,
}

#[derive(Default)]
struct State {
    webhooks: HashMap<(Uuid, String), Stored>,
    /// Oldest first; listed newest first.
    attempts: Vec<WebhookDeliveryAttempt>,
    /// Published events: id to (project, event type).
    events: HashMap<Uuid, (Uuid, String)>,
    attempts_queries: Vec<AttemptsQuery>,
    grace_seconds: Vec<i64>,
    /// Started recoveries, with the project they belong to.
    recoveries: HashMap<Uuid, (Uuid, Recovery)>,
}

/// See the module documentation.
#[derive(Default)]
pub struct MemoryApi {
    state: Mutex<State>,
    calls: AtomicUsize,
}

impl MemoryApi {
    /// How many operation methods have been called (authentication is not counted).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Every attempts query the router handed over, oldest first.
    pub fn attempts_queries(&self) -> Vec<AttemptsQuery> {
        self.lock().attempts_queries.clone()
    }

    /// Every `grace_seconds` a rotation received (after defaults), oldest first.
    pub fn grace_seconds(&self) -> Vec<i64> {
        self.lock().grace_seconds.clone()
    }

    /// The secret currently stored for a webhook, to check rotations took effect.
    pub fn secret(&self, project_id: Uuid, event_type: &str) -> Option<String> {
        self.lock()
            .webhooks
            .get(&(project_id, event_type.to_owned()))
            .map(|stored| stored.secret.clone())
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide the state from
        // the assertions that explain why.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Unknown projects answer 404, like a project of another tenant would.
    fn project(ctx: Uuid, project_id: Uuid) -> Result<Uuid, Problem> {
        if project_id == ctx {
            Ok(project_id)
        } else {
            Err(Problem::not_found("project not found"))
        }
    }

    /// A link naming its project and lifetime, so a test sees what arrived.
    fn portal_link(project_id: Uuid, body: CreatePortalSessionInputBody) -> PortalSession {
        let ttl = body.ttl_seconds.unwrap_or(3600);
        PortalSession {
            schema: None,
            url: format!("http://memory.test/portal/enter?project={project_id}&ttl={ttl}"),
            expires_at: Utc::now() + chrono::Duration::seconds(ttl),
        }
    }

    fn new_secret() -> String {
        format!("whsec_{}", Uuid::new_v4().simple())
    }

    fn list(&self, project_id: Uuid) -> ListWebhooksOutputBody {
        let state = self.lock();
        let mut webhooks: Vec<Webhook> = state
            .webhooks
            .iter()
            .filter(|((project, _), _)| *project == project_id)
            .map(|(_, stored)| stored.webhook.clone())
            .collect();
        webhooks.sort_by(|a, b| a.event_type.cmp(&b.event_type));
        ListWebhooksOutputBody {
            schema: None,
            webhooks: Some(webhooks),
        }
    }

    fn upsert(
        &self,
        project_id: Uuid,
        event_type: String,
        webhook_url: String,
        auth_header: Option<String>,
        (rate_limit, ordered): (Option<i64>, Option<bool>),
    ) -> UpsertWebhookOutputBody {
        // Shown only when set, as the server does.
        let ordered = ordered.filter(|on| *on);
        let now = Utc::now();
        let mut state = self.lock();
        let key = (project_id, event_type.clone());
        if let Some(stored) = state.webhooks.get_mut(&key) {
            stored.webhook.webhook_url = webhook_url;
            stored.webhook.auth_header = auth_header;
            stored.webhook.rate_limit = rate_limit;
            stored.webhook.ordered = ordered;
            stored.webhook.is_active = true;
            stored.webhook.updated_at = now;
            return UpsertWebhookOutputBody {
                schema: None,
                signing_secret: None,
                success: true,
            };
        }
        let secret = Self::new_secret();
        let webhook = Webhook {
            schema: None,
            auth_header,
            created_at: now,
            event_type,
            is_active: true,
            project_id,
            updated_at: now,
            webhook_url,
            rate_limit,
            ordered,
        };
        state.webhooks.insert(
            key,
            Stored {
                webhook,
                secret: secret.clone(),
            },
        );
        UpsertWebhookOutputBody {
            schema: None,
            signing_secret: Some(secret),
            success: true,
        }
    }

    fn delete(&self, project_id: Uuid, event_type: String) -> Result<(), Problem> {
        match self.lock().webhooks.remove(&(project_id, event_type)) {
            Some(_) => Ok(()),
            None => Err(Problem::not_found("webhook not found")),
        }
    }

    /// Newest first. A cursor is the index of the first attempt of the page, which is
    /// enough to check the router passes it through untouched.
    fn attempts(
        &self,
        project_id: Uuid,
        event_type: &str,
        query: AttemptsQuery,
    ) -> Result<ListDeliveryAttemptsOutputBody, Problem> {
        let mut state = self.lock();
        state.attempts_queries.push(query.clone());
        let start = match &query.cursor {
            Some(cursor) => cursor
                .parse::<usize>()
                .map_err(|_| Problem::invalid("query.cursor", "unknown cursor"))?,
            None => usize::try_from(query.offset).unwrap_or(0),
        };
        let size = usize::try_from(query.page_size.unwrap_or(query.limit)).unwrap_or(0);
        let matching: Vec<&WebhookDeliveryAttempt> = state
            .attempts
            .iter()
            .rev()
            .filter(|a| a.project_id == project_id && a.event_type == event_type)
            .collect();
        let page: Vec<WebhookDeliveryAttempt> = matching
            .iter()
            .skip(start)
            .take(size)
            .map(|a| (*a).clone())
            .collect();
        let next = start + page.len();
        let has_more = next < matching.len();
        Ok(ListDeliveryAttemptsOutputBody {
            schema: None,
            attempts: Some(page),
            has_more: Some(has_more),
            next_cursor: has_more.then(|| next.to_string()),
        })
    }

    fn rotate(
        &self,
        project_id: Uuid,
        event_type: String,
        grace_seconds: i64,
    ) -> Result<RotateSigningSecretOutputBody, Problem> {
        let mut state = self.lock();
        state.grace_seconds.push(grace_seconds);
        let stored = state
            .webhooks
            .get_mut(&(project_id, event_type))
            .ok_or_else(|| Problem::not_found("webhook not found"))?;
        stored.secret = Self::new_secret();
        Ok(RotateSigningSecretOutputBody {
            schema: None,
            signing_secret: stored.secret.clone(),
            success: true,
        })
    }

    /// Records one successful resend attempt, with the server's answers for an
    /// unknown webhook or event (404) and a disabled webhook (409).
    fn resend(
        &self,
        project_id: Uuid,
        event_type: String,
        event_id: Uuid,
    ) -> Result<ResendEventOutputBody, Problem> {
        let now = Utc::now();
        let mut state = self.lock();
        let stored = state
            .webhooks
            .get(&(project_id, event_type.clone()))
            .ok_or_else(|| Problem::not_found("webhook not found"))?;
        let (active, webhook_url) = (stored.webhook.is_active, stored.webhook.webhook_url.clone());
        if state.events.get(&event_id) != Some(&(project_id, event_type.clone())) {
            return Err(Problem::not_found("event not found"));
        }
        if !active {
            return Err(Problem::conflict("webhook disabled"));
        }
        state.attempts.push(Self::attempt(
            project_id,
            &event_type,
            webhook_url,
            "resend",
            now,
        ));
        Ok(ResendEventOutputBody {
            schema: None,
            event_id,
            queued_at: now,
        })
    }

    /// A recovery as the server answers it, finished at once: every published event of
    /// the type "matches". A dry run (200) is not kept; a started one (202) is.
    fn recover(
        &self,
        project_id: Uuid,
        event_type: String,
        body: RecoverWebhookInputBody,
    ) -> Result<(StatusCode, Recovery), Problem> {
        let now = Utc::now();
        let mut state = self.lock();
        if !state
            .webhooks
            .contains_key(&(project_id, event_type.clone()))
        {
            return Err(Problem::not_found("webhook not found"));
        }
        let matched = state
            .events
            .values()
            .filter(|(p, t)| *p == project_id && *t == event_type)
            .count() as i64;
        let dry_run = body.dry_run.unwrap_or(false);
        let recovery = Recovery {
            schema: None,
            recovery_id: Uuid::now_v7(),
            event_type,
            since: body.since,
            until: body.until.unwrap_or(now),
            include: body.include.unwrap_or_else(|| vec!["failed".to_owned()]),
            status: if dry_run { "dry_run" } else { "done" }.to_owned(),
            matched,
            queued: if dry_run { 0 } else { matched },
            created_at: now,
            finished_at: Some(now),
        };
        if dry_run {
            return Ok((StatusCode::OK, recovery));
        }
        state
            .recoveries
            .insert(recovery.recovery_id, (project_id, recovery.clone()));
        Ok((StatusCode::ACCEPTED, recovery))
    }

    fn recovery(&self, project_id: Uuid, recovery_id: Uuid) -> Result<Recovery, Problem> {
        match self.lock().recoveries.get(&recovery_id) {
            Some((project, recovery)) if *project == project_id => Ok(recovery.clone()),
            _ => Err(Problem::not_found("recovery not found")),
        }
    }

    fn attempt(
        project_id: Uuid,
        event_type: &str,
        webhook_url: String,
        trigger: &str,
        now: chrono::DateTime<Utc>,
    ) -> WebhookDeliveryAttempt {
        WebhookDeliveryAttempt {
            schema: None,
            attempt_id: Uuid::new_v4(),
            attempt_number: 1,
            created_at: now,
            duration_ms: 3,
            error_message: None,
            event_type: event_type.to_owned(),
            project_id,
            request_body: None,
            response_body: Some("ok".to_owned()),
            response_code: 200,
            status: "success".to_owned(),
            trigger: Some(trigger.to_owned()),
            webhook_url,
        }
    }

    /// Records one successful attempt per active webhook subscribed to `event_type`,
    /// standing in for the delivery engine.
    fn publish(&self, project_id: Uuid, event_type: &str) -> PublishEventOutputBody {
        let now = Utc::now();
        let event_id = Uuid::new_v4();
        let mut state = self.lock();
        state
            .events
            .insert(event_id, (project_id, event_type.to_owned()));
        let targets: Vec<String> = state
            .webhooks
            .iter()
            .filter(|((project, event), stored)| {
                *project == project_id && event == event_type && stored.webhook.is_active
            })
            .map(|(_, stored)| stored.webhook.webhook_url.clone())
            .collect();
        for webhook_url in &targets {
            let attempt =
                Self::attempt(project_id, event_type, webhook_url.clone(), "publish", now);
            state.attempts.push(attempt);
        }
        PublishEventOutputBody {
            schema: None,
            event_id,
            created_at: now,
            deliveries_started: i64::try_from(targets.len()).unwrap_or(i64::MAX),
        }
    }
}

impl WebhooksApi for MemoryApi {
    /// The project of the API key.
    type Context = Uuid;

    async fn authenticate(&self, parts: &Parts) -> Result<Uuid, Problem> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match presented {
            Some(key) if key == API_KEY => Ok(PROJECT_ID),
            _ => Err(Problem::unauthorized()),
        }
    }

    async fn list_webhooks(
        &self,
        ctx: Uuid,
        project_id: Uuid,
    ) -> Result<Reply<ListWebhooksOutputBody>, Problem> {
        self.count();
        Ok(self.list(Self::project(ctx, project_id)?).into())
    }

    async fn upsert_webhook(
        &self,
        ctx: Uuid,
        project_id: Uuid,
        event_type: String,
        body: UpsertWebhookInputBody,
    ) -> Result<UpsertWebhookOutputBody, Problem> {
        self.count();
        let project_id = Self::project(ctx, project_id)?;
        Ok(self.upsert(
            project_id,
            event_type,
            body.webhook_url,
            body.auth_header,
            (body.rate_limit, body.ordered),
        ))
    }

    async fn delete_webhook(
        &self,
        ctx: Uuid,
        project_id: Uuid,
        event_type: String,
    ) -> Result<(), Problem> {
        self.count();
        self.delete(Self::project(ctx, project_id)?, event_type)
    }

    async fn list_delivery_attempts(
        &self,
        ctx: Uuid,
        project_id: Uuid,
        event_type: String,
        query: ListDeliveryAttemptsQuery,
    ) -> Result<Reply<ListDeliveryAttemptsOutputBody>, Problem> {
        self.count();
        let project_id = Self::project(ctx, project_id)?;
        self.attempts(project_id, &event_type, query.into())
            .map(Reply::from)
    }

    async fn rotate_webhook_signing_secret(
        &self,
        ctx: Uuid,
        project_id: Uuid,
        event_type: String,
        query: RotateWebhookSigningSecretQuery,
    ) -> Result<RotateSigningSecretOutputBody, Problem> {
        self.count();
        let project_id = Self::project(ctx, project_id)?;
        self.rotate(project_id, event_type, query.grace_seconds)
    }

    async fn publish_event(
        &self,
        ctx: Uuid,
        project_id: Uuid,
        body: PublishEventInputBody,
    ) -> Result<PublishEventOutputBody, Problem> {
        self.count();
        let project_id = Self::project(ctx, project_id)?;
        Ok(self.publish(project_id, &body.event_type))
    }

    async fn resend_event(
        &self,
        ctx: Uuid,
        project_id: Uuid,
        event_type: String,
        event_id: Uuid,
    ) -> Result<ResendEventOutputBody, Problem> {
        self.count();
        let project_id = Self::project(ctx, project_id)?;
        self.resend(project_id, event_type, event_id)
    }

    async fn list_webhooks_for_tenant(
        &self,
        ctx: Uuid,
    ) -> Result<Reply<ListWebhooksOutputBody>, Problem> {
        self.count();
        Ok(self.list(ctx).into())
    }

    async fn upsert_webhook_for_tenant(
        &self,
        ctx: Uuid,
        event_type: String,
        body: UpsertWebhookForTenantInputBody,
    ) -> Result<UpsertWebhookOutputBody, Problem> {
        self.count();
        Ok(self.upsert(
            ctx,
            event_type,
            body.webhook_url,
            body.auth_header,
            (body.rate_limit, body.ordered),
        ))
    }

    async fn delete_webhook_for_tenant(
        &self,
        ctx: Uuid,
        event_type: String,
    ) -> Result<(), Problem> {
        self.count();
        self.delete(ctx, event_type)
    }

    async fn list_delivery_attempts_for_tenant(
        &self,
        ctx: Uuid,
        event_type: String,
        query: ListDeliveryAttemptsForTenantQuery,
    ) -> Result<Reply<ListDeliveryAttemptsOutputBody>, Problem> {
        self.count();
        self.attempts(ctx, &event_type, query.into())
            .map(Reply::from)
    }

    async fn rotate_webhook_signing_secret_for_tenant(
        &self,
        ctx: Uuid,
        event_type: String,
        query: RotateWebhookSigningSecretForTenantQuery,
    ) -> Result<RotateSigningSecretOutputBody, Problem> {
        self.count();
        self.rotate(ctx, event_type, query.grace_seconds)
    }

    async fn create_portal_session(
        &self,
        ctx: Uuid,
        project_id: Uuid,
        body: CreatePortalSessionInputBody,
    ) -> Result<PortalSession, Problem> {
        self.count();
        let project_id = Self::project(ctx, project_id)?;
        Ok(Self::portal_link(project_id, body))
    }

    async fn create_portal_session_for_tenant(
        &self,
        ctx: Uuid,
        body: CreatePortalSessionInputBody,
    ) -> Result<PortalSession, Problem> {
        self.count();
        Ok(Self::portal_link(ctx, body))
    }

    async fn publish_event_for_tenant(
        &self,
        ctx: Uuid,
        body: PublishEventForTenantInputBody,
    ) -> Result<PublishEventOutputBody, Problem> {
        self.count();
        Ok(self.publish(ctx, &body.event_type))
    }

    async fn resend_event_for_tenant(
        &self,
        ctx: Uuid,
        event_type: String,
        event_id: Uuid,
    ) -> Result<ResendEventOutputBody, Problem> {
        self.count();
        self.resend(ctx, event_type, event_id)
    }

    async fn recover_webhook(
        &self,
        ctx: Uuid,
        project_id: Uuid,
        event_type: String,
        body: RecoverWebhookInputBody,
    ) -> Result<(StatusCode, Recovery), Problem> {
        self.count();
        let project_id = Self::project(ctx, project_id)?;
        self.recover(project_id, event_type, body)
    }

    async fn recover_webhook_for_tenant(
        &self,
        ctx: Uuid,
        event_type: String,
        body: RecoverWebhookInputBody,
    ) -> Result<(StatusCode, Recovery), Problem> {
        self.count();
        self.recover(ctx, event_type, body)
    }

    async fn get_recovery(
        &self,
        ctx: Uuid,
        project_id: Uuid,
        recovery_id: Uuid,
    ) -> Result<Reply<Recovery>, Problem> {
        self.count();
        let project_id = Self::project(ctx, project_id)?;
        self.recovery(project_id, recovery_id).map(Reply::from)
    }

    async fn get_recovery_for_tenant(
        &self,
        ctx: Uuid,
        recovery_id: Uuid,
    ) -> Result<Reply<Recovery>, Problem> {
        self.count();
        self.recovery(ctx, recovery_id).map(Reply::from)
    }

    async fn cancel_recovery(
        &self,
        ctx: Uuid,
        project_id: Uuid,
        recovery_id: Uuid,
    ) -> Result<(), Problem> {
        self.count();
        let project_id = Self::project(ctx, project_id)?;
        self.recovery(project_id, recovery_id).map(|_| ())
    }

    async fn cancel_recovery_for_tenant(
        &self,
        ctx: Uuid,
        recovery_id: Uuid,
    ) -> Result<(), Problem> {
        self.count();
        self.recovery(ctx, recovery_id).map(|_| ())
    }
}
