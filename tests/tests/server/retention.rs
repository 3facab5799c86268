//! Retention end to end, on both backends: rows back-dated in the database (with the
//! UUIDv7 ids the server would have given them then) go once they are past the
//! horizon, pending deliveries and their events stay, the metric counts what went, and
//! resend and recover answer for what is gone.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::json;
use sonzai_webhooks_server::config::Retention;
use sqlx::Connection as _;
use uuid::Uuid;

use crate::delivery::{POLL, WAIT};
use crate::support::harness::Harness;
use crate::support::{self, Backend, Receiver, TestDb};

/// A UUIDv7 made at `at`, as the server would have made it then.
fn id_at(at: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(at.timestamp()).unwrap();
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        secs,
        at.timestamp_subsec_nanos(),
    ))
}

/// A seeded delivery: (id, event_id, webhook_id, status, created_at, updated_at).
type DeliveryRow = (Uuid, Uuid, Uuid, &'static str, DateTime<Utc>, DateTime<Utc>);

/// The rows of one test, by table: (id, created or updated when) and links.
#[derive(Default)]
struct Rows {
    /// (id, created_at)
    events: Vec<(Uuid, DateTime<Utc>)>,
    deliveries: Vec<DeliveryRow>,
    /// (id, delivery_id, event_id, created_at)
    attempts: Vec<(Uuid, Uuid, Uuid, DateTime<Utc>)>,
}

impl Rows {
    fn event(&mut self, at: DateTime<Utc>) -> Uuid {
        let id = id_at(at);
        self.events.push((id, at));
        id
    }

    fn delivery(
        &mut self,
        event: Uuid,
        webhook: Uuid,
        status: &'static str,
        created: DateTime<Utc>,
        updated: DateTime<Utc>,
    ) -> Uuid {
        let id = id_at(created);
        self.deliveries
            .push((id, event, webhook, status, created, updated));
        id
    }

    fn attempt(&mut self, delivery: Uuid, event: Uuid, at: DateTime<Utc>) -> Uuid {
        let id = id_at(at);
        self.attempts.push((id, delivery, event, at));
        id
    }
}

/// Inserts `rows` (all of event type `event_type` in `project`) in one transaction, so a
/// retention run between two statements never sees an event without its deliveries; a
/// pending delivery is due only in a day, so the workers leave it alone.
async fn insert(db: &TestDb, project: Uuid, event_type: &str, rows: &Rows) {
    let later = Utc::now() + chrono::Duration::days(1);
    macro_rules! seed {
        ($conn:expr, $time:expr) => {{
            let mut tx = $conn.begin().await.expect("begin the seed");
            let conn = &mut *tx;
            for (id, at) in &rows.events {
                sqlx::query(
                    "INSERT INTO events (id, project_id, event_type, data, created_at) \
                     VALUES ($1, $2, $3, '{}', $4)",
                )
                .bind(id)
                .bind(project)
                .bind(event_type)
                .bind($time(*at))
                .execute(&mut *conn)
                .await
                .expect("seed event");
            }
            for (id, event, webhook, status, created, updated) in &rows.deliveries {
                let due = if *status == "pending" {
                    later
                } else {
                    *updated
                };
                sqlx::query(
                    "INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, \
                         status, attempts_made, next_attempt_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9)",
                )
                .bind(id)
                .bind(event)
                .bind(webhook)
                .bind(project)
                .bind(event_type)
                .bind(*status)
                .bind($time(due))
                .bind($time(*created))
                .bind($time(*updated))
                .execute(&mut *conn)
                .await
                .expect("seed delivery");
            }
            for (id, delivery, event, at) in &rows.attempts {
                sqlx::query(
                    "INSERT INTO attempts (id, delivery_id, event_id, project_id, event_type, \
                         webhook_url, response_code, duration_ms, attempt_number, status, \
                         request_body, response_body, error_message, created_at) \
                     VALUES ($1, $2, $3, $4, $5, 'http://127.0.0.1:9/old', 200, 3, 1, \
                         'success', $6, NULL, NULL, $7)",
                )
                .bind(id)
                .bind(delivery)
                .bind(event)
                .bind(project)
                .bind(event_type)
                .bind(b"{}".as_slice())
                .bind($time(*at))
                .execute(&mut *conn)
                .await
                .expect("seed attempt");
            }
            tx.commit().await.expect("commit the seed");
        }};
    }
    match db.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            seed!(conn, |t: DateTime<Utc>| t);
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect");
            seed!(conn, |t: DateTime<Utc>| t.timestamp_micros());
        }
    }
}

/// The ids left in `table`.
async fn ids(db: &TestDb, table: &str) -> BTreeSet<Uuid> {
    let sql = format!("SELECT id FROM {table}");
    let found: Vec<Uuid> = match db.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query_scalar(&sql).fetch_all(&mut conn).await
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect");
            sqlx::query_scalar(&sql).fetch_all(&mut conn).await
        }
    }
    .expect("list ids");
    found.into_iter().collect()
}

fn purged(metrics: &str, table: &str) -> Option<f64> {
    let prefix = format!("sonzai_retention_purged_total{{table=\"{table}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_the_horizon_go_and_pending_work_stays() {
    for db in support::backends().await {
        let on = format!("{:?}", db.backend);
        let mut config = support::test_config(&db);
        config.retention = Retention::For(Duration::from_secs(86_400));
        // Runs start before the rows are seeded; the next ones find them.
        config.retention_every = Duration::from_millis(200);
        let h = Harness::start_with(&db, config).await;
        let receiver = Receiver::start().await;
        h.register("order.paid", &receiver.url("/paid")).await;
        let webhook = *ids(&db, "webhooks")
            .await
            .first()
            .expect("the webhook's row");

        let now = Utc::now();
        let old = now - chrono::Duration::days(2);
        let mut rows = Rows::default();
        // Delivered long ago: all three rows go.
        let gone_event = rows.event(old);
        let gone_delivery = rows.delivery(gone_event, webhook, "succeeded", old, old);
        rows.attempt(gone_delivery, gone_event, old);
        rows.attempt(
            gone_delivery,
            gone_event,
            old + chrono::Duration::minutes(5),
        );
        // Still pending (waiting for a retry): its old attempt goes, it and its event stay.
        let pending_event = rows.event(old);
        let pending = rows.delivery(pending_event, webhook, "pending", old, old);
        rows.attempt(pending, pending_event, old);
        // An old event resent an hour ago: the new delivery and its attempt stay, and so
        // does the event they point at.
        let hour_ago = now - chrono::Duration::hours(1);
        let resent_event = rows.event(old);
        let resent = rows.delivery(resent_event, webhook, "succeeded", hour_ago, hour_ago);
        let resent_attempt = rows.attempt(resent, resent_event, hour_ago);
        // A webhook deleted since: its old history goes the same way.
        let orphan_event = rows.event(old);
        let orphan = rows.delivery(orphan_event, Uuid::now_v7(), "failed", old, old);
        rows.attempt(orphan, orphan_event, old);
        // An event of today whose id is no UUIDv7 and sorts before every old one
        // (imported, say): the time stored with it decides, so it stays.
        let imported = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0001);
        rows.events.push((imported, now));
        insert(&db, h.project(), "order.paid", &rows).await;
        // And today's traffic, delivered by the server.
        let fresh = h.publish("order.paid", json!({"n": 1})).await;
        assert_eq!(receiver.wait_for(1, WAIT).await, 1, "{on}");

        let metrics_url = format!("http://{}/metrics", h.server.addr);
        let done = support::poll_until(WAIT, POLL, || async {
            let text = h
                .http
                .get(&metrics_url)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (purged(&text, "events") == Some(2.0)).then_some(text)
        })
        .await
        .unwrap_or_else(|| panic!("{on}: retention did not purge the two old events"));
        assert_eq!(purged(&done, "attempts"), Some(4.0), "{on}");
        assert_eq!(purged(&done, "deliveries"), Some(2.0), "{on}");
        assert_eq!(purged(&done, "recoveries"), Some(0.0), "{on}");

        let events = ids(&db, "events").await;
        assert_eq!(
            events,
            BTreeSet::from([pending_event, resent_event, imported, fresh.event_id]),
            "{on}"
        );
        let deliveries = ids(&db, "deliveries").await;
        assert!(
            deliveries.contains(&pending) && deliveries.contains(&resent),
            "{on}"
        );
        assert_eq!(deliveries.len(), 3, "{on}: the two kept and today's");
        let attempts = ids(&db, "attempts").await;
        assert!(attempts.contains(&resent_attempt), "{on}");
        assert_eq!(attempts.len(), 2, "{on}: the resent one and today's");

        // What is gone answers for itself.
        let resend = |event: Uuid| format!("/webhooks/order.paid/events/{event}/resend");
        h.call(Method::POST, &resend(gone_event), None)
            .await
            .expect(410);
        h.call(Method::POST, &resend(resent_event), None)
            .await
            .expect(202);
        h.call(Method::POST, &resend(Uuid::new_v4()), None)
            .await
            .expect(404);
        let too_old = json!({"since": now - chrono::Duration::days(3)});
        h.call(Method::POST, "/webhooks/order.paid/recover", Some(too_old))
            .await
            .expect_invalid("body.since");
        let within = json!({"since": now - chrono::Duration::hours(2), "dry_run": true});
        h.call(Method::POST, "/webhooks/order.paid/recover", Some(within))
            .await
            .expect(200);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_off_keeps_everything() {
    for db in support::backends().await {
        let mut config = support::test_config(&db);
        config.retention = Retention::Off;
        config.retention_every = Duration::from_millis(100);
        let h = Harness::start_with(&db, config).await;
        let old = Utc::now() - chrono::Duration::days(400);
        let mut rows = Rows::default();
        let event = rows.event(old);
        let delivery = rows.delivery(event, Uuid::now_v7(), "succeeded", old, old);
        rows.attempt(delivery, event, old);
        insert(&db, h.project(), "order.paid", &rows).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(ids(&db, "events").await, BTreeSet::from([event]));
        assert_eq!(ids(&db, "attempts").await.len(), 1);
        // No horizon: a recovery may reach back as far as it likes.
        h.register("order.paid", "http://127.0.0.1:9/paid").await;
        let since = json!({"since": old - chrono::Duration::days(1), "dry_run": true});
        let counted = h
            .call(Method::POST, "/webhooks/order.paid/recover", Some(since))
            .await;
        assert_eq!(
            counted.expect(200)["matched"],
            json!(0),
            "delivered, not failed"
        );
        h.finish().await;
    }
}
