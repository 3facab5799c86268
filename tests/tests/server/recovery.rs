//! Recovering a webhook after an outage (extension): `failed` and `missed` events of a
//! window queued again, oldest first and once each; dry runs; cancelling; refusals;
//! and a recovery that survives the SIGKILL of the process running it. Every answer
//! of the contract tests is checked against `openapi.json` by the harness.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use sonzai_webhooks_client::types;
use sqlx::Connection as _;
use uuid::Uuid;

use crate::support::harness::{Harness, WAIT};
use crate::support::{self, Answer, Backend, Receiver, ServerProcess, TestDb};

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(600);

fn recover_body(since: DateTime<Utc>, include: &[&str], dry_run: bool) -> Value {
    json!({"since": since, "include": include, "dry_run": dry_run})
}

/// Polls the recovery at `path` until its status is not `running` (at most `wait`).
async fn finished(h: &Harness, path: &str, wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let reply = h.call(Method::GET, path, None).await;
        let recovery = reply.expect(200).clone();
        if recovery["status"] != json!("running") {
            return recovery;
        }
        assert!(
            Instant::now() < deadline,
            "[{:?}] recovery still running after {wait:?}: {recovery}",
            h.backend
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a recovery of the `missed` events of `event_type` since `since`, on the
/// tenant route, with the generated client.
async fn recover_missed(
    client: &sonzai_webhooks_client::Client,
    event_type: &str,
    since: DateTime<Utc>,
) -> types::Recovery {
    client
        .recover_webhook_for_tenant()
        .event_type(event_type)
        .body(
            types::RecoverWebhookInputBody::builder()
                .since(since)
                .include(vec!["missed".to_owned()]),
        )
        .send()
        .await
        .expect("recover")
        .into_inner()
}

/// Whether the webhook of `event_type` is active, as listed.
async fn is_active(h: &Harness, event_type: &str) -> bool {
    let webhooks = h.call(Method::GET, "/webhooks", None).await;
    webhooks.expect(200)["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["event_type"] == json!(event_type))
        .map(|w| w["is_active"] == json!(true))
        .expect("the webhook is listed")
}

/// Event ids of what `receiver` got from index `from` on, in arrival order.
fn arrived_from(receiver: &Receiver, from: usize) -> Vec<Uuid> {
    receiver.received()[from..]
        .iter()
        .map(|r| r.event_id().expect("a delivery names its event"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_failed_delivers_exactly_the_failed_events_of_the_window_once_oldest_first() {
    for db in support::backends().await {
        // One worker: deliveries go out one at a time, in the order they are claimed.
        let mut config = support::test_config(&db);
        config.workers = 1;
        let h = Harness::start_with(&db, config).await;
        let project = h.project();
        let receiver = Receiver::start().await;
        h.register("order.paid", &receiver.url("/paid")).await;
        let attempts_path = format!("/projects/{project}/webhooks/order.paid/attempts");

        for n in 0..3 {
            h.publish("order.paid", json!({"before": n})).await;
        }
        assert_eq!(receiver.wait_for(3, WAIT).await, 3);
        let since = Utc::now();
        // The outage: every try of these fails until the schedule (4 tries) runs out.
        receiver.set_default(Answer::status(500));
        let mut window = Vec::new();
        for n in 0..6 {
            window.push(h.publish("order.paid", json!({"down": n})).await.event_id);
        }
        h.attempts_until(&attempts_path, 3 + 6 * 4).await;
        receiver.set_default(Answer::status(200));
        for n in 0..2 {
            h.publish("order.paid", json!({"after": n})).await;
        }
        assert_eq!(receiver.wait_for(3 + 24 + 2, WAIT).await, 29);
        let mark = receiver.count();

        // A dry run counts and queues nothing.
        let recover_path = format!("/projects/{project}/webhooks/order.paid/recover");
        let dry = h
            .call(
                Method::POST,
                &recover_path,
                Some(recover_body(since, &["failed"], true)),
            )
            .await;
        let dry = dry.expect(200).clone();
        assert_eq!(dry["status"], json!("dry_run"), "{dry}");
        assert_eq!(
            (dry["matched"].clone(), dry["queued"].clone()),
            (json!(6), json!(0))
        );
        assert_eq!(dry["include"], json!(["failed"]));
        let dry_path = format!(
            "/projects/{project}/recoveries/{}",
            dry["recovery_id"].as_str().unwrap()
        );
        h.call(Method::GET, &dry_path, None).await.expect(404);
        tokio::time::sleep(QUIET).await;
        assert_eq!(receiver.count(), mark, "a dry run delivers nothing");

        // The recovery itself, with the generated client.
        let started = h
            .client()
            .recover_webhook()
            .project_id(project)
            .event_type("order.paid")
            .body(
                types::RecoverWebhookInputBody::builder()
                    .since(since)
                    .include(vec!["failed".parse().unwrap()]),
            )
            .send()
            .await
            .expect("recover");
        assert_eq!(started.status().as_u16(), 202);
        let started = started.into_inner();
        assert_eq!(started.matched, 6);
        assert_eq!(started.event_type, "order.paid");
        assert!(started.until >= since);
        let path = format!("/projects/{project}/recoveries/{}", started.recovery_id);
        let done = finished(&h, &path, WAIT).await;
        assert_eq!(done["status"], json!("done"), "{done}");
        assert_eq!(
            (done["matched"].clone(), done["queued"].clone()),
            (json!(6), json!(6))
        );
        assert!(done["finished_at"].is_string(), "{done}");

        // Exactly the failed events of the window, once each, oldest first.
        receiver.wait_for(mark + 6, WAIT).await;
        tokio::time::sleep(QUIET).await;
        assert_eq!(arrived_from(&receiver, mark), window, "[{:?}]", h.backend);
        let attempts = h.attempts_until(&attempts_path, 29 + 6).await;
        for a in &attempts[..6] {
            assert_eq!(a["trigger"], json!("recover"), "{a}");
            assert_eq!(a["attempt_number"], json!(1));
            assert_eq!(a["status"], json!("success"));
        }
        // The same recovery again finds nothing: they were delivered.
        let again = h
            .call(
                Method::POST,
                "/webhooks/order.paid/recover",
                Some(recover_body(since, &["failed"], false)),
            )
            .await;
        let again = again.expect(202).clone();
        assert_eq!(again["matched"], json!(0));
        let again_path = format!("/recoveries/{}", again["recovery_id"].as_str().unwrap());
        assert_eq!(finished(&h, &again_path, WAIT).await["queued"], json!(0));
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_missed_finds_the_events_published_while_the_webhook_was_disabled() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let url = receiver.url("/gone");
        h.register("user.left", &url).await;
        let since = Utc::now();
        // A 410 switches the webhook off at once.
        receiver.script([Answer::status(410)]);
        let gone = h.publish("user.left", json!({"n": 0})).await.event_id;
        support::poll_until(WAIT, Duration::from_millis(50), || async {
            (!is_active(&h, "user.left").await).then_some(())
        })
        .await
        .expect("a 410 disables the webhook");
        let mut missed = Vec::new();
        for n in 1..=3 {
            let published = h.publish("user.left", json!({"n": n})).await;
            assert_eq!(published.deliveries_started, 0);
            missed.push(published.event_id);
        }
        // A disabled webhook cannot be recovered.
        let recover = "/webhooks/user.left/recover";
        h.call(
            Method::POST,
            recover,
            Some(recover_body(since, &["missed"], true)),
        )
        .await
        .expect(409);
        // An upsert turns it back on.
        h.call(
            Method::PUT,
            "/webhooks/user.left",
            Some(json!({"webhook_url": url})),
        )
        .await
        .expect(200);
        h.publish("user.left", json!({"n": 4})).await;
        assert_eq!(receiver.wait_for(2, WAIT).await, 2);

        let count = |include: &'static [&'static str]| {
            let h = &h;
            async move {
                h.call(
                    Method::POST,
                    recover,
                    Some(recover_body(since, include, true)),
                )
                .await
                .expect(200)["matched"]
                    .clone()
            }
        };
        assert_eq!(count(&["missed"]).await, json!(3));
        assert_eq!(
            count(&["failed"]).await,
            json!(1),
            "the 410'd delivery failed"
        );
        assert_eq!(count(&["missed", "failed"]).await, json!(4));
        assert_eq!(count(&["failed", "failed"]).await, json!(1));

        let started = recover_missed(&h.client(), "user.left", since).await;
        assert_eq!(started.include.len(), 1);
        let path = format!("/recoveries/{}", started.recovery_id);
        let done = finished(&h, &path, WAIT).await;
        assert_eq!(
            (done["status"].clone(), done["queued"].clone()),
            (json!("done"), json!(3))
        );
        let got = h
            .client()
            .get_recovery_for_tenant()
            .recovery_id(started.recovery_id)
            .send()
            .await
            .expect("get recovery")
            .into_inner();
        assert_eq!(got.queued, 3);
        receiver.wait_for(5, WAIT).await;
        tokio::time::sleep(QUIET).await;
        let mut got = arrived_from(&receiver, 2);
        got.sort();
        let mut want = missed.clone();
        want.sort();
        assert_eq!(got, want, "[{:?}] the missed events, once each", h.backend);
        assert!(!got.contains(&gone));
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_refuses_bad_windows_unknown_webhooks_and_other_tenants_recoveries() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        let receiver = Receiver::start().await;
        h.register("order.paid", &receiver.url("/paid")).await;
        let recover = format!("/projects/{project}/webhooks/order.paid/recover");
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);

        let invalid = [
            (json!({"since": now + hour}), "body.since"),
            (
                json!({"since": now - hour, "until": now - hour}),
                "body.since",
            ),
            (json!({"since": now - hour, "include": []}), "body.include"),
            (
                json!({"since": now - hour, "include": ["bogus"]}),
                "body.include[0]",
            ),
            (json!({"until": now}), "body.since"),
            (json!({"since": "yesterday"}), "body.since"),
            (
                json!({"since": now - hour, "dry_run": "yes"}),
                "body.dry_run",
            ),
            (json!({"since": now - hour, "limit": 5}), "body.limit"),
        ];
        for (body, location) in invalid {
            h.call(Method::POST, &recover, Some(body.clone()))
                .await
                .expect_invalid(location);
        }
        h.call(
            Method::POST,
            "/webhooks/never.registered/recover",
            Some(json!({"since": now - hour})),
        )
        .await
        .expect(404);

        // Another tenant's recovery answers exactly like one that does not exist.
        let started = h
            .call(Method::POST, &recover, Some(json!({"since": now - hour})))
            .await;
        let id = started.expect(202)["recovery_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let tenant_b = support::create_tenant(h.server.store.as_ref(), "tenant-b").await;
        let theirs = h
            .call_as(
                &tenant_b.key,
                Method::GET,
                &format!("/recoveries/{id}"),
                None,
            )
            .await;
        theirs.expect(404);
        let unknown = h
            .call_as(
                &tenant_b.key,
                Method::GET,
                &format!("/recoveries/{}", Uuid::now_v7()),
                None,
            )
            .await;
        unknown.expect(404);
        assert_eq!(theirs.json, unknown.json);
        h.call_as(
            &tenant_b.key,
            Method::DELETE,
            &format!("/recoveries/{id}"),
            None,
        )
        .await
        .expect(404);
        h.call_as(
            &tenant_b.key,
            Method::GET,
            &format!("/projects/{project}/recoveries/{id}"),
            None,
        )
        .await
        .expect(404);
        h.call(Method::GET, &format!("/recoveries/{id}"), None)
            .await
            .expect(200);
        h.call(Method::GET, "/recoveries/not-a-uuid", None)
            .await
            .expect_invalid("path.recoveryId");
        // Cancelling a finished recovery leaves it as it is.
        let done = finished(&h, &format!("/recoveries/{id}"), WAIT).await;
        assert_eq!(done["status"], json!("done"));
        h.call(Method::DELETE, &format!("/recoveries/{id}"), None)
            .await
            .expect(204);
        let after = h
            .call(Method::GET, &format!("/recoveries/{id}"), None)
            .await;
        assert_eq!(after.expect(200)["status"], json!("done"));
        h.finish().await;
    }
}

/// Adds `n` events of `event_type` to `project` straight into the database, published
/// one microsecond apart from `at` on: events no webhook got (`missed`), without
/// publishing them one by one.
async fn seed_missed(db: &TestDb, project: Uuid, event_type: &str, n: i64, at: DateTime<Utc>) {
    match db.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query(
                "INSERT INTO events (id, project_id, event_type, data, created_at) \
                 SELECT gen_random_uuid(), $1, $2, '{\"n\": ' || g || '}', \
                     $3 + g * interval '1 microsecond' \
                 FROM generate_series(1, $4) g",
            )
            .bind(project)
            .bind(event_type)
            .bind(at)
            .bind(n)
            .execute(&mut conn)
            .await
            .expect("seed events");
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect");
            sqlx::query(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?4) \
                 INSERT INTO events (id, project_id, event_type, data, created_at) \
                 SELECT randomblob(16), ?1, ?2, '{\"n\": ' || n || '}', ?3 + n FROM g",
            )
            .bind(project)
            .bind(event_type)
            .bind(at.timestamp_micros())
            .bind(n)
            .execute(&mut conn)
            .await
            .expect("seed events");
        }
    }
}

/// Deliveries queued by recoveries, and how many distinct events they carry.
async fn recovered_deliveries(db: &TestDb) -> (i64, i64) {
    const SQL: &str =
        "SELECT count(*), count(DISTINCT event_id) FROM deliveries WHERE origin = 'recover'";
    match db.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query_as(SQL)
                .fetch_one(&mut conn)
                .await
                .expect("count")
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect");
            sqlx::query_as(SQL)
                .fetch_one(&mut conn)
                .await
                .expect("count")
        }
    }
}

/// Most pending deliveries a recovery leaves its webhook with (the server's bound).
const RECOVERY_QUEUE_BOUND: i64 = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_recovery_from_queueing_more() {
    for db in support::backends().await {
        // Few workers and a slow receiver: the recovery fills the webhook's queue to
        // its bound and waits there.
        let mut config = support::test_config(&db);
        config.workers = 2;
        let h = Harness::start_with(&db, config).await;
        let receiver = Receiver::start().await;
        receiver.set_default(Answer::status(200).after(Duration::from_millis(200)));
        h.register("bulk", &receiver.url("/bulk")).await;
        let since = Utc::now() - chrono::Duration::minutes(10);
        seed_missed(&db, h.project(), "bulk", 3_000, since).await;

        let started = h
            .call(
                Method::POST,
                "/webhooks/bulk/recover",
                Some(recover_body(since, &["missed"], false)),
            )
            .await;
        let started = started.expect(202).clone();
        assert_eq!(started["matched"], json!(3_000));
        let path = format!("/recoveries/{}", started["recovery_id"].as_str().unwrap());
        let deadline = Instant::now() + WAIT;
        loop {
            let now = h.call(Method::GET, &path, None).await.expect(200).clone();
            if now["queued"].as_i64().unwrap() >= 200 {
                break;
            }
            assert!(Instant::now() < deadline, "[{:?}] {now}", h.backend);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Queued but not yet answered by the receiver: at least the webhook's pending
        // deliveries, which the recovery keeps within its bound however many match.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = h.call(Method::GET, &path, None).await.expect(200).clone();
            let queued = now["queued"].as_i64().unwrap();
            let answered = i64::try_from(receiver.count()).unwrap();
            assert!(
                queued - answered <= RECOVERY_QUEUE_BOUND,
                "[{:?}] {queued} queued, {answered} answered",
                h.backend
            );
        }
        h.call(Method::DELETE, &path, None).await.expect(204);
        let cancelled = h.call(Method::GET, &path, None).await.expect(200).clone();
        assert_eq!(cancelled["status"], json!("cancelled"), "{cancelled}");
        assert!(cancelled["finished_at"].is_string());
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let later = h.call(Method::GET, &path, None).await.expect(200).clone();
        assert_eq!(
            later["queued"], cancelled["queued"],
            "nothing queued after the cancel"
        );
        let (deliveries, _) = recovered_deliveries(&db).await;
        assert_eq!(json!(deliveries), cancelled["queued"]);
        // Cancelling again changes nothing.
        h.call(Method::DELETE, &path, None).await.expect(204);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_killed_midway_is_finished_by_another_process() {
    const EVENTS: i64 = 20_000;
    for db in support::backends().await {
        let dir = tempfile::tempdir().unwrap();
        let store = db.open().await;
        let tenant = support::create_tenant(store.as_ref(), "recovery").await;
        drop(store);
        let receiver = Receiver::start().await;
        let mut first = ServerProcess::start(&db, dir.path(), &[]).await;
        // PostgreSQL: a second process shares the work and takes the job over.
        // SQLite: the survivor is the process started again on the same file.
        let mut second = match db.backend {
            Backend::Postgres => Some(ServerProcess::start(&db, dir.path(), &[]).await),
            Backend::Sqlite => None,
        };
        let client = support::client_for(first.addr, &tenant.key);
        client
            .upsert_webhook_for_tenant()
            .event_type("bulk")
            .body(
                types::UpsertWebhookForTenantInputBody::builder()
                    .webhook_url(receiver.url("/bulk")),
            )
            .send()
            .await
            .expect("upsert");
        let since = Utc::now() - chrono::Duration::minutes(10);
        seed_missed(&db, tenant.project_id, "bulk", EVENTS, since).await;
        let started = recover_missed(&client, "bulk", since).await;
        assert_eq!(started.matched, EVENTS);

        // Killed once it is under way.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = client
                .get_recovery_for_tenant()
                .recovery_id(started.recovery_id)
                .send()
                .await
                .expect("get recovery")
                .into_inner();
            if now.queued > 0 {
                assert!(now.queued < EVENTS, "killed midway: {now:?}");
                break;
            }
            assert!(Instant::now() < deadline, "the recovery never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.kill().await;
        let survivor = match second.take() {
            Some(second) => second,
            None => ServerProcess::start(&db, dir.path(), &[]).await,
        };
        let client = support::client_for(survivor.addr, &tenant.key);
        let deadline = Instant::now() + Duration::from_secs(180);
        let done = loop {
            let now = client
                .get_recovery_for_tenant()
                .recovery_id(started.recovery_id)
                .send()
                .await
                .expect("get recovery")
                .into_inner();
            if now.status != "running" {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "[{:?}] not finished: {now:?}",
                db.backend
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!((done.status.as_str(), done.queued), ("done", EVENTS));
        assert_eq!(
            recovered_deliveries(&db).await,
            (EVENTS, EVENTS),
            "[{:?}] every event queued once by the recovery",
            db.backend
        );
        // Every event arrives (a delivery in flight when the process died may arrive
        // twice: at least once, as always).
        let deadline = Instant::now() + Duration::from_secs(180);
        let distinct = loop {
            receiver
                .wait_for(EVENTS as usize, Duration::from_secs(1))
                .await;
            let seen: HashSet<Uuid> = receiver
                .received()
                .iter()
                .filter_map(|r| r.event_id())
                .collect();
            if seen.len() as i64 >= EVENTS || Instant::now() >= deadline {
                break seen.len() as i64;
            }
        };
        assert_eq!(distinct, EVENTS, "[{:?}] all delivered", db.backend);
        eprintln!(
            "recovery: {:?}: {EVENTS} events recovered across a SIGKILL, {} arrivals",
            db.backend,
            receiver.count()
        );
        let mut survivor = survivor;
        survivor.terminate().await;
    }
}
