//! Operator events end to end: the project subscribes with an ordinary upsert, a
//! condition is caused with real receivers, and the signed operator event arrives with
//! the documented `data`. Every test runs on SQLite and, when `TEST_DATABASE_URL` is
//! set, on PostgreSQL.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::Method;
use serde_json::{json, Value};
use sonzai_webhooks_client::types;
use sonzai_webhooks_verify::Verifier;

use crate::delivery::{attempts, backend_note, publish, upsert, webhook, POLL, WAIT};
use crate::support::harness::Harness;
use crate::support::{self, Answer, Receiver, ServerProcess, TestServer};

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(800);

/// Subscribes the project to `event_type` (an operator event type) and answers the
/// signing secret.
async fn subscribe(server: &TestServer, event_type: &str, receiver: &Receiver) -> String {
    upsert(
        server,
        event_type,
        &receiver.url(&format!("/{event_type}")),
        None,
    )
    .await
    .expect("a new webhook answers its secret")
}

/// The bodies of what `receiver` got, each checked to be signed with `secret` (both
/// schemes) and to be an operator event of `event_type`.
fn verified_bodies(receiver: &Receiver, secret: &str, event_type: &str) -> Vec<Value> {
    let verifier = Verifier::new(secret).expect("secret");
    receiver
        .received()
        .iter()
        .map(|r| {
            verifier
                .verify(|name| r.header(name), &r.body)
                .unwrap_or_else(|e| panic!("operator event not verified: {e}"));
            let body = r.json();
            assert_eq!(body["event_type"], event_type, "{body}");
            body
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_switched_off_is_reported_with_its_reason() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let mut config = support::test_config(&db);
        config.disable_after_failures = 3;
        config.disable_after = Duration::ZERO;
        let server = TestServer::start_with(&db, config).await;
        let operator = Receiver::start().await;
        let secret = subscribe(&server, "sonzai.webhook.disabled", &operator).await;
        let gone = Receiver::start().await;
        gone.set_default(Answer::status(410));
        let failing = Receiver::start().await;
        failing.set_default(Answer::status(500));
        let gone_url = gone.url("/gone");
        let failing_url = failing.url("/failing");
        upsert(&server, "user.gone", &gone_url, None).await;
        upsert(&server, "billing.failing", &failing_url, None).await;

        publish(&server, "user.gone", json!({"n": 1})).await;
        publish(&server, "billing.failing", json!({"n": 1})).await;
        assert_eq!(operator.wait_for(2, WAIT).await, 2, "{on}");
        tokio::time::sleep(QUIET).await;
        let bodies = verified_bodies(&operator, &secret, "sonzai.webhook.disabled");
        assert_eq!(bodies.len(), 2, "{on}: one report per webhook");
        let data_of = |event_type: &str| {
            bodies
                .iter()
                .map(|b| &b["data"])
                .find(|d| d["event_type"] == event_type)
                .unwrap_or_else(|| panic!("{on}: no report for {event_type}: {bodies:?}"))
                .clone()
        };
        assert_eq!(
            data_of("user.gone"),
            json!({"event_type": "user.gone", "webhook_url": gone_url, "reason": "gone",
                   "consecutive_failures": 1, "last_response_code": 410}),
            "{on}"
        );
        assert_eq!(
            data_of("billing.failing"),
            json!({"event_type": "billing.failing", "webhook_url": failing_url,
                   "reason": "failing", "consecutive_failures": 3, "last_response_code": 500}),
            "{on}"
        );
        for body in &bodies {
            assert_eq!(body["project_id"], server.tenant.project_id.to_string());
        }
        // Delivered like any event: recorded as attempts of the operator webhook.
        let recorded = attempts(&server, "sonzai.webhook.disabled").await;
        assert_eq!(recorded.len(), 2, "{on}");
        assert!(recorded.iter().all(|a| a.response_code == 200), "{on}");
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_deliveries_are_reported_once_per_window_and_the_rest_counted() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let mut config = support::test_config(&db);
        config.exhausted_notice_every = Duration::from_secs(3);
        let server = TestServer::start_with(&db, config).await;
        let operator = Receiver::start().await;
        let secret = subscribe(&server, "sonzai.delivery.exhausted", &operator).await;
        let down = Receiver::start().await;
        down.set_default(Answer::status(503).body("down for maintenance"));
        let url = down.url("/down");
        upsert(&server, "order.paid", &url, None).await;

        // Three events run out of tries (four each) within the window: one report.
        let mut first_three = HashSet::new();
        for n in 0..3 {
            first_three.insert(
                publish(&server, "order.paid", json!({ "n": n }))
                    .await
                    .event_id,
            );
        }
        assert_eq!(down.wait_for(12, WAIT).await, 12, "{on}");
        assert_eq!(operator.wait_for(1, WAIT).await, 1, "{on}");
        let reported_at = Instant::now();
        tokio::time::sleep(QUIET).await;
        let first = verified_bodies(&operator, &secret, "sonzai.delivery.exhausted");
        assert_eq!(first.len(), 1, "{on}: one report in the window: {first:?}");
        let data = &first[0]["data"];
        assert_eq!(data["event_type"], "order.paid", "{on}");
        assert_eq!(data["webhook_url"], url.as_str(), "{on}");
        assert_eq!(data["attempts"], 4, "{on}");
        assert_eq!(data["last_response_code"], 503, "{on}");
        assert!(data["last_error"].is_string() || data["last_error"].is_null());
        assert_eq!(data["suppressed"], 0, "{on}");
        let event_id: uuid::Uuid = data["event_id"].as_str().unwrap().parse().unwrap();
        assert!(first_three.contains(&event_id), "{on}: {data}");

        // Once the window has passed, the next one is reported with the two held back.
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(reported_at.elapsed())).await;
        let fourth = publish(&server, "order.paid", json!({"n": 3})).await;
        assert_eq!(operator.wait_for(2, WAIT).await, 2, "{on}");
        let bodies = verified_bodies(&operator, &secret, "sonzai.delivery.exhausted");
        let data = &bodies[1]["data"];
        assert_eq!(data["event_id"], fourth.event_id.to_string(), "{on}");
        assert_eq!(data["suppressed"], 2, "{on}");
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_webhook_and_a_finished_recovery_are_reported() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let server = TestServer::start(&db).await;
        let operator = Receiver::start().await;
        let recovered_secret = subscribe(&server, "sonzai.webhook.recovered", &operator).await;
        let completed = Receiver::start().await;
        let completed_secret = subscribe(&server, "sonzai.recovery.completed", &completed).await;

        // Three failures in a row, then a success.
        let flaky = Receiver::start().await;
        flaky.script([
            Answer::status(500),
            Answer::status(500),
            Answer::status(500),
        ]);
        let url = flaky.url("/flaky");
        upsert(&server, "ticket.closed", &url, None).await;
        publish(&server, "ticket.closed", json!({"n": 1})).await;
        assert_eq!(flaky.wait_for(4, WAIT).await, 4, "{on}");
        assert_eq!(operator.wait_for(1, WAIT).await, 1, "{on}");
        tokio::time::sleep(QUIET).await;
        let bodies = verified_bodies(&operator, &recovered_secret, "sonzai.webhook.recovered");
        assert_eq!(bodies.len(), 1, "{on}");
        assert_eq!(
            bodies[0]["data"],
            json!({"event_type": "ticket.closed", "webhook_url": url, "failures": 3}),
            "{on}"
        );

        // An event published before its webhook existed, recovered: reported done.
        let since = Utc::now() - chrono::Duration::seconds(5);
        let early = publish(&server, "ticket.reopened", json!({"n": 1})).await;
        assert_eq!(early.deliveries_started, 0);
        let late = Receiver::start().await;
        upsert(&server, "ticket.reopened", &late.url("/late"), None).await;
        let recovery = server
            .client
            .recover_webhook_for_tenant()
            .event_type("ticket.reopened")
            .body(
                types::RecoverWebhookInputBody::builder()
                    .since(since)
                    .include(vec!["missed".to_owned()]),
            )
            .send()
            .await
            .expect("recover")
            .into_inner();
        assert_eq!(recovery.matched, 1, "{on}");
        assert_eq!(late.wait_for(1, WAIT).await, 1, "{on}");
        assert_eq!(completed.wait_for(1, WAIT).await, 1, "{on}");
        let bodies = verified_bodies(&completed, &completed_secret, "sonzai.recovery.completed");
        assert_eq!(
            bodies[0]["data"],
            json!({"recovery_id": recovery.recovery_id, "event_type": "ticket.reopened",
                   "status": "done", "matched": 1, "queued": 1}),
            "{on}"
        );
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_event_failing_to_arrive_causes_no_other() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let server = TestServer::start(&db).await;
        // The operator webhook's own receiver is gone too: its 410 switches it off,
        // which is not reported (to itself or anywhere).
        let operator = Receiver::start().await;
        operator.set_default(Answer::status(410));
        subscribe(&server, "sonzai.webhook.disabled", &operator).await;
        let gone = Receiver::start().await;
        gone.set_default(Answer::status(410));
        upsert(&server, "user.gone", &gone.url("/gone"), None).await;
        publish(&server, "user.gone", json!({"n": 1})).await;

        assert_eq!(operator.wait_for(1, WAIT).await, 1, "{on}");
        let off = support::poll_until(WAIT, POLL, || async {
            webhook(&server, "sonzai.webhook.disabled")
                .await
                .filter(|w| !w.is_active)
        })
        .await;
        assert!(off.is_some(), "{on}: the operator webhook answered 410");
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            operator.count(),
            1,
            "{on}: no report of its own switching off"
        );
        assert_eq!(attempts(&server, "sonzai.webhook.disabled").await.len(), 1);
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_may_not_publish_operator_events() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        for path in [
            "/events".to_owned(),
            format!("/projects/{}/events", h.project()),
        ] {
            let reply = h
                .call(
                    Method::POST,
                    &path,
                    Some(json!({"event_type": "sonzai.webhook.disabled", "data": {}})),
                )
                .await;
            reply.expect_invalid("body.event_type");
        }
        // A look-alike outside the reserved prefix is an ordinary event.
        h.call(
            Method::POST,
            "/events",
            Some(json!({"event_type": "sonzai_webhook.disabled", "data": {}})),
        )
        .await
        .expect(202);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_event_survives_a_kill_before_its_delivery() {
    for db in support::backends().await {
        let dir = tempfile::tempdir().unwrap();
        let store = db.open().await;
        let tenant = support::create_tenant(store.as_ref(), "operator").await;
        drop(store);
        let args = ["--disable-after-failures", "1", "--disable-after", "0s"];
        let mut first = ServerProcess::start(&db, dir.path(), &args).await;
        let client = support::client_for(first.addr, &tenant.key);
        // The operator receiver holds its first request until the process is dead.
        let operator = Receiver::start().await;
        operator.set_default(Answer::status(200).after(Duration::from_secs(30)));
        let failing = Receiver::start().await;
        failing.set_default(Answer::status(500));
        let mut secret = None;
        for (event_type, url) in [
            ("sonzai.webhook.disabled", operator.url("/operator")),
            ("job.failed", failing.url("/failing")),
        ] {
            let created = client
                .upsert_webhook_for_tenant()
                .event_type(event_type)
                .body(types::UpsertWebhookForTenantInputBody::builder().webhook_url(url))
                .send()
                .await
                .expect("upsert")
                .into_inner();
            secret = secret.or(created.signing_secret);
        }
        client
            .publish_event_for_tenant()
            .body(
                types::PublishEventForTenantInputBody::builder()
                    .event_type("job.failed")
                    .data(serde_json::Map::new()),
            )
            .send()
            .await
            .expect("publish");
        assert_eq!(
            operator.wait_for(1, WAIT).await,
            1,
            "the report is on its way"
        );
        first.kill().await;
        operator.set_default(Answer::status(200));

        let survivor = ServerProcess::start(&db, dir.path(), &args).await;
        // The lease of the killed process's attempt runs out (3 s), then it is sent again.
        assert!(
            operator.wait_for(2, Duration::from_secs(20)).await >= 2,
            "[{:?}] the report was not sent again",
            db.backend
        );
        let again = operator.received().remove(1);
        Verifier::new(secret.as_deref().expect("the operator webhook's secret"))
            .unwrap()
            .verify(|name| again.header(name), &again.body)
            .expect("signed");
        let body = again.json();
        assert_eq!(body["event_type"], "sonzai.webhook.disabled");
        assert_eq!(body["data"]["event_type"], "job.failed");
        assert_eq!(body["data"]["reason"], "failing");
        // The same report sent again, not a second one.
        assert_eq!(operator.received()[0].event_id(), again.event_id());
        drop(survivor);
    }
}
