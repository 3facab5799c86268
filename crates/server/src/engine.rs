//! The service core shared by the HTTP API and Rust programs that embed the server:
//! the store, the workers' wake-up signal and the metrics, plus the operations that
//! are more than one store call (publishing).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use crate::delivery::health::WorkerHealth;
use crate::metrics::Metrics;
use crate::store::{
    PublishEvent, Published, RecoverOutcome, RecoverRequest, ResendOutcome, StoreResult,
    WebhookStore,
};
use crate::wake::Waker;

pub struct Engine {
    pub store: Arc<dyn WebhookStore>,
    pub waker: Arc<Waker>,
    /// Wakes this process's recovery runner when a recovery starts.
    pub recoveries: Arc<tokio::sync::Notify>,
    pub metrics: Arc<Metrics>,
    /// Whether the delivery loop is making progress (for `/readyz`).
    pub health: Arc<WorkerHealth>,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
}

impl Engine {
    pub fn new(store: Arc<dyn WebhookStore>, idempotency_window: Duration) -> Self {
        Self {
            store,
            waker: Arc::default(),
            recoveries: Arc::default(),
            metrics: Arc::default(),
            health: Arc::default(),
            idempotency_window,
        }
    }

    /// Records an event and one delivery per active webhook of `project_id` subscribed
    /// to `event_type`, in one transaction, then wakes the workers. When this returns
    /// `Ok`, the event is durable and will be delivered at least once.
    ///
    /// `event_type` is not checked here: the HTTP layer validates it against the spec.
    pub async fn publish(
        &self,
        project_id: Uuid,
        event_type: &str,
        data: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> StoreResult<Published> {
        let data = data.to_string();
        let window = chrono::Duration::from_std(self.idempotency_window)
            .unwrap_or_else(|_| chrono::Duration::days(1));
        let published = self
            .store
            .publish_event(PublishEvent {
                project_id,
                event_type,
                data: &data,
                idempotency_key,
                idempotency_since: Utc::now() - window,
            })
            .await?;
        if !published.duplicate {
            self.metrics.events_published(1);
            if published.deliveries > 0 {
                self.waker.announce();
            }
        }
        Ok(published)
    }

    /// Queues one new delivery of a stored event (see
    /// [`WebhookStore::resend_event`]), then wakes the workers like a publish does.
    pub async fn resend(
        &self,
        project_id: Uuid,
        event_type: &str,
        event_id: Uuid,
    ) -> StoreResult<ResendOutcome> {
        let outcome = self
            .store
            .resend_event(project_id, event_type, event_id)
            .await?;
        if matches!(outcome, ResendOutcome::Queued { .. }) {
            self.waker.announce();
        }
        Ok(outcome)
    }

    /// Starts a recovery (see [`WebhookStore::start_recovery`]) and wakes this
    /// process's runner to work on it.
    pub async fn recover(&self, request: RecoverRequest<'_>) -> StoreResult<RecoverOutcome> {
        let dry_run = request.dry_run;
        let outcome = self.store.start_recovery(request).await?;
        if !dry_run && matches!(outcome, RecoverOutcome::Started(_)) {
            self.recoveries.notify_one();
        }
        Ok(outcome)
    }
}
