//! Operator events: events the server publishes about itself into the project they
//! concern, under the reserved prefix `sonzai.`. Each is written by the transaction
//! that makes the change it reports (an event row and, when the project subscribes to
//! its type, a pending delivery), so a crash never loses one and never reports a
//! change that did not commit. From there it is delivered like any event. Nothing that
//! happens to an operator event's own delivery causes another one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{ColumnIndex, Encode, Executor, IntoArguments, Type};
use uuid::Uuid;

use super::common::{Column, Dialect, Tables};
use super::rows::Micros;
use super::{add_duration, StoreResult};

/// The prefix of every operator event type; clients may not publish under it.
pub const RESERVED_PREFIX: &str = "sonzai.";

/// Whether `event_type` is an operator event type (reserved for the server).
pub fn is_reserved(event_type: &str) -> bool {
    event_type.starts_with(RESERVED_PREFIX)
}

/// Why a webhook was switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisabledReason {
    /// Its failure streak reached the disable policy.
    Failing,
    /// The receiver answered `410 Gone`.
    Gone,
}

/// The webhook an operator event is about.
#[derive(Debug, Clone, Copy)]
pub struct About<'a> {
    pub project_id: Uuid,
    pub event_type: &'a str,
    pub webhook_url: &'a str,
}

/// One operator event, with what its `data` carries.
#[derive(Debug, Clone)]
pub enum Notice<'a> {
    WebhookDisabled {
        about: About<'a>,
        reason: DisabledReason,
        consecutive_failures: i64,
        /// The last answer's status (`None`: no HTTP answer).
        last_response_code: Option<i64>,
    },
    DeliveryExhausted {
        about: About<'a>,
        event_id: Uuid,
        attempts: i64,
        last_response_code: Option<i64>,
        last_error: Option<&'a str>,
        /// Exhausted deliveries of this webhook not reported since the last notice.
        suppressed: i64,
    },
    WebhookRecovered {
        about: About<'a>,
        failures: i64,
    },
    RecoveryCompleted {
        project_id: Uuid,
        recovery_id: Uuid,
        event_type: &'a str,
        /// `done` or `cancelled`.
        status: &'a str,
        matched: i64,
        queued: i64,
    },
}

impl Notice<'_> {
    pub fn event_type(&self) -> &'static str {
        match self {
            Notice::WebhookDisabled { .. } => "sonzai.webhook.disabled",
            Notice::DeliveryExhausted { .. } => "sonzai.delivery.exhausted",
            Notice::WebhookRecovered { .. } => "sonzai.webhook.recovered",
            Notice::RecoveryCompleted { .. } => "sonzai.recovery.completed",
        }
    }

    fn project_id(&self) -> Uuid {
        match self {
            Notice::WebhookDisabled { about, .. }
            | Notice::DeliveryExhausted { about, .. }
            | Notice::WebhookRecovered { about, .. } => about.project_id,
            Notice::RecoveryCompleted { project_id, .. } => *project_id,
        }
    }

    /// The event's `data`, as documented by the `OperatorEvent...Data` schemas of
    /// `openapi.json`.
    pub fn data(&self) -> Value {
        match self {
            Notice::WebhookDisabled {
                about,
                reason,
                consecutive_failures,
                last_response_code,
            } => json!({
                "event_type": about.event_type,
                "webhook_url": about.webhook_url,
                "reason": match reason {
                    DisabledReason::Failing => "failing",
                    DisabledReason::Gone => "gone",
                },
                "consecutive_failures": consecutive_failures,
                "last_response_code": last_response_code,
            }),
            Notice::DeliveryExhausted {
                about,
                event_id,
                attempts,
                last_response_code,
                last_error,
                suppressed,
            } => json!({
                "event_type": about.event_type,
                "webhook_url": about.webhook_url,
                "event_id": event_id,
                "attempts": attempts,
                "last_response_code": last_response_code,
                "last_error": last_error,
                "suppressed": suppressed,
            }),
            Notice::WebhookRecovered { about, failures } => json!({
                "event_type": about.event_type,
                "webhook_url": about.webhook_url,
                "failures": failures,
            }),
            Notice::RecoveryCompleted {
                recovery_id,
                event_type,
                status,
                matched,
                queued,
                ..
            } => json!({
                "recovery_id": recovery_id,
                "event_type": event_type,
                "status": status,
                "matched": matched,
                "queued": queued,
            }),
        }
    }

    /// Whether this notice is about an operator event's own webhook or recovery: those
    /// are never reported, so operator events cannot feed on each other.
    fn about_operator_events(&self) -> bool {
        match self {
            Notice::WebhookDisabled { about, .. }
            | Notice::DeliveryExhausted { about, .. }
            | Notice::WebhookRecovered { about, .. } => is_reserved(about.event_type),
            Notice::RecoveryCompleted { event_type, .. } => is_reserved(event_type),
        }
    }
}

/// A stored answer status as an operator event reports it (0 means no HTTP answer).
pub fn response_code(stored: i64) -> Option<i64> {
    (stored != 0).then_some(stored)
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
    /// Publishes `notice` inside the caller's transaction: the event, and a pending
    /// delivery to the project's webhook of its type if there is an active one.
    /// Returns whether a delivery was queued (the caller wakes the workers after its
    /// commit). A notice about an operator event's own delivery is dropped.
    pub async fn emit(
        tx: &mut DB::Connection,
        notice: &Notice<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        if notice.about_operator_events() {
            return Ok(false);
        }
        let event_id = super::v7_at(now);
        let event_type = notice.event_type();
        let project_id = notice.project_id();
        sqlx::query(
            "INSERT INTO events (id, project_id, event_type, data, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(event_id)
        .bind(project_id)
        .bind(event_type)
        .bind(notice.data().to_string())
        .bind(Micros(now))
        .execute(&mut *tx)
        .await?;
        let queued = sqlx::query(
            "INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, status, \
                 attempts_made, next_attempt_at, created_at, updated_at) \
             SELECT $1, $2, w.id, w.project_id, w.event_type, 'pending', 0, $3, $3, $3 \
             FROM webhooks w \
             WHERE w.project_id = $4 AND w.event_type = $5 AND w.is_active = true",
        )
        .bind(Uuid::now_v7())
        .bind(event_id)
        .bind(Micros(now))
        .bind(project_id)
        .bind(event_type)
        .execute(&mut *tx)
        .await?;
        Ok(DB::rows_affected(&queued) > 0)
    }

    /// A delivery to `webhook_id` ran out of tries: decides, inside the caller's
    /// transaction (which holds the webhook's row), whether this one is reported (the
    /// first within `window`) or counted for the next report. Returns the count of
    /// those held back since the last report when this one is to be reported.
    pub async fn exhausted_report(
        tx: &mut DB::Connection,
        webhook_id: Uuid,
        window: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<i64>> {
        let row: Option<(Option<Micros>, i64)> = sqlx::query_as(
            "SELECT exhausted_noticed_at, exhausted_suppressed FROM webhooks WHERE id = $1",
        )
        .bind(webhook_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((noticed_at, suppressed)) = row else {
            return Ok(None);
        };
        let due = noticed_at.is_none_or(|at| add_duration(at.0, window) <= now);
        if due {
            sqlx::query(
                "UPDATE webhooks SET exhausted_noticed_at = $1, exhausted_suppressed = 0 \
                 WHERE id = $2",
            )
            .bind(Micros(now))
            .bind(webhook_id)
            .execute(&mut *tx)
            .await?;
            Ok(Some(suppressed))
        } else {
            sqlx::query(
                "UPDATE webhooks SET exhausted_suppressed = exhausted_suppressed + 1 \
                 WHERE id = $1",
            )
            .bind(webhook_id)
            .execute(&mut *tx)
            .await?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn reserved_prefix() {
        assert!(is_reserved("sonzai.webhook.disabled"));
        assert!(is_reserved("sonzai."));
        assert!(!is_reserved("sonzai"));
        assert!(!is_reserved("order.sonzai.created"));
    }

    #[test]
    fn data_carries_the_documented_fields() {
        let about = About {
            project_id: Uuid::nil(),
            event_type: "order.created",
            webhook_url: "https://example.com/hook",
        };
        let disabled = Notice::WebhookDisabled {
            about,
            reason: DisabledReason::Gone,
            consecutive_failures: 1,
            last_response_code: Some(410),
        };
        assert_eq!(disabled.event_type(), "sonzai.webhook.disabled");
        assert_eq!(
            disabled.data(),
            json!({"event_type": "order.created", "webhook_url": "https://example.com/hook",
                   "reason": "gone", "consecutive_failures": 1, "last_response_code": 410})
        );
        let exhausted = Notice::DeliveryExhausted {
            about,
            event_id: Uuid::nil(),
            attempts: 4,
            last_response_code: None,
            last_error: Some("connection refused"),
            suppressed: 2,
        };
        assert_eq!(exhausted.data()["last_response_code"], Value::Null);
        assert_eq!(exhausted.data()["suppressed"], json!(2));
        let own = Notice::WebhookRecovered {
            about: About {
                event_type: "sonzai.webhook.disabled",
                ..about
            },
            failures: 3,
        };
        assert!(own.about_operator_events());
        assert!(!exhausted.about_operator_events());
        assert_eq!(response_code(0), None);
        assert_eq!(response_code(503), Some(503));
    }
}
