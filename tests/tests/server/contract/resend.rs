//! Resending one stored event to a webhook (extension), and the `trigger` of each
//! attempt: `publish`, `retry`, `resend`.

use super::*;

/// The same config as the other contract tests, except that a webhook is disabled
/// after two failures in a row however young the streak, so a 409 is quick to reach.
async fn start(db: &support::TestDb) -> Harness {
    let mut config = support::test_config(db);
    config.disable_after_failures = 2;
    config.disable_after = Duration::ZERO;
    Harness::start_with(db, config).await
}

/// The deliveries `receiver` got of `event_id`, waiting (at most [`WAIT`]) for `n`.
async fn deliveries_of(receiver: &Receiver, event_id: Uuid, n: usize) -> Vec<support::Received> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found: Vec<_> = receiver
            .received()
            .into_iter()
            .filter(|r| r.event_id() == Some(event_id))
            .collect();
        if found.len() >= n || Instant::now() >= deadline {
            assert_eq!(found.len(), n, "deliveries of {event_id}");
            return found;
        }
        receiver
            .wait_for(receiver.count() + 1, Duration::from_millis(100))
            .await;
    }
}

fn triggers(attempts: &[Value]) -> Vec<(i64, Option<&str>)> {
    attempts
        .iter()
        .map(|a| (a["attempt_number"].as_i64().unwrap(), a["trigger"].as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_delivers_the_same_event_again_and_attempts_say_why() {
    for db in support::backends().await {
        let h = start(&db).await;
        let project = h.project();
        let receiver = Receiver::start().await;
        // The first try fails, the retry succeeds.
        receiver.script([Answer::status(503)]);
        let secret = h.register("order.paid", &receiver.url("/paid")).await;
        let event = h.publish("order.paid", json!({"order": 7})).await.event_id;
        let attempts_path = format!("/projects/{project}/webhooks/order.paid/attempts");
        let attempts = h.attempts_until(&attempts_path, 2).await;
        assert_eq!(
            triggers(&attempts),
            [(2, Some("retry")), (1, Some("publish"))],
            "[{:?}] newest first",
            h.backend
        );

        // The event succeeded; a resend delivers it once more, on either route.
        let before = Utc::now();
        let resent = h
            .client()
            .resend_event()
            .project_id(project)
            .event_type("order.paid")
            .event_id(event)
            .send()
            .await
            .expect("resend");
        assert_eq!(resent.status().as_u16(), 202);
        let resent = resent.into_inner();
        assert_eq!(resent.event_id, event);
        assert!(resent.queued_at >= before - chrono::Duration::seconds(1));
        let attempts = h.attempts_until(&attempts_path, 3).await;
        assert_eq!(attempts[0]["trigger"], json!("resend"));
        assert_eq!(attempts[0]["attempt_number"], json!(1));
        assert_eq!(attempts[0]["status"], json!("success"));

        let resent = h
            .client()
            .resend_event_for_tenant()
            .event_type("order.paid")
            .event_id(event)
            .send()
            .await
            .expect("resend on the tenant route")
            .into_inner();
        assert_eq!(resent.event_id, event);
        let attempts = h.attempts_until(&attempts_path, 4).await;
        assert_eq!(
            triggers(&attempts),
            [
                (1, Some("resend")),
                (1, Some("resend")),
                (2, Some("retry")),
                (1, Some("publish"))
            ],
            "[{:?}]",
            h.backend
        );

        // The receiver sees the same event each time: same webhook-id and body, signed
        // the same way.
        let deliveries = deliveries_of(&receiver, event, 4).await;
        let verifier = Verifier::new(&secret).unwrap();
        for delivery in &deliveries {
            assert_eq!(
                delivery.header("webhook-id"),
                Some(event.to_string().as_str())
            );
            assert_eq!(delivery.json()["event_id"], json!(event.to_string()));
            assert_eq!(delivery.json()["data"], json!({"order": 7}));
            verifier
                .verify(|name| delivery.header(name), &delivery.body)
                .expect("a resent delivery verifies like the original");
        }
        assert!(deliveries.windows(2).all(|w| w[0].body == w[1].body));

        // Nothing more arrives: one delivery per resend.
        tokio::time::sleep(QUIET).await;
        assert_eq!(deliveries_of(&receiver, event, 4).await.len(), 4);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_refuses_other_events_unknown_and_disabled_webhooks() {
    for db in support::backends().await {
        let h = start(&db).await;
        let project = h.project();
        let store = h.server.store.clone();
        let tenant_b = support::create_tenant(store.as_ref(), "tenant-b").await;
        let receiver = Receiver::start().await;
        h.register("order.paid", &receiver.url("/paid")).await;
        h.register("order.shipped", &receiver.url("/shipped")).await;
        let ours = h.publish("order.paid", json!({"n": 1})).await.event_id;

        // Tenant B has the same event type; its event is not A's to resend.
        let receiver_b = Receiver::start().await;
        let client_b = h.client_for(&tenant_b.key);
        client_b
            .upsert_webhook_for_tenant()
            .event_type("order.paid")
            .body(
                types::UpsertWebhookForTenantInputBody::builder().webhook_url(receiver_b.url("/b")),
            )
            .send()
            .await
            .expect("tenant B upsert");
        let theirs = client_b
            .publish_event_for_tenant()
            .body(
                types::PublishEventForTenantInputBody::builder()
                    .event_type("order.paid")
                    .data(json!({"n": 2})),
            )
            .send()
            .await
            .expect("tenant B publish")
            .into_inner()
            .event_id;

        let resend = |event_type: &str, event: &str| {
            format!("/projects/{project}/webhooks/{event_type}/events/{event}/resend")
        };
        let theirs_reply = h
            .call(
                Method::POST,
                &resend("order.paid", &theirs.to_string()),
                None,
            )
            .await;
        theirs_reply.expect(404);
        let missing = h
            .call(
                Method::POST,
                &resend("order.paid", &Uuid::now_v7().to_string()),
                None,
            )
            .await;
        missing.expect(404);
        assert_eq!(
            theirs_reply.json, missing.json,
            "another tenant's event answers exactly like one that does not exist"
        );
        // On the tenant route, and with the typed client.
        let (status, _) = problem_of(
            h.client()
                .resend_event_for_tenant()
                .event_type("order.paid")
                .event_id(theirs)
                .send()
                .await,
        );
        assert_eq!(status, 404);
        // B cannot resend A's event either, on B's routes or A's project.
        let (status, _) = problem_of(
            client_b
                .resend_event_for_tenant()
                .event_type("order.paid")
                .event_id(ours)
                .send()
                .await,
        );
        assert_eq!(status, 404);
        let (status, _) = problem_of(
            client_b
                .resend_event()
                .project_id(project)
                .event_type("order.paid")
                .event_id(ours)
                .send()
                .await,
        );
        assert_eq!(status, 404);

        // An event of another event type, and a webhook that does not exist.
        h.call(
            Method::POST,
            &resend("order.shipped", &ours.to_string()),
            None,
        )
        .await
        .expect(404);
        let (status, problem) = problem_of(
            h.client()
                .resend_event()
                .project_id(project)
                .event_type("never.registered")
                .event_id(ours)
                .send()
                .await,
        );
        assert_eq!(status, 404);
        assert_eq!(problem.status, Some(404));

        // Not a UUID: refused by the generated validation.
        h.call(Method::POST, &resend("order.paid", "not-a-uuid"), None)
            .await
            .expect_invalid("path.eventId");
        h.call(Method::POST, "/webhooks/order.paid/events/42/resend", None)
            .await
            .expect_invalid("path.eventId");

        // A disabled webhook: 409, and nothing is queued.
        let failing = Receiver::start().await;
        failing.set_default(Answer::status(503));
        h.register("flaky", &failing.url("/flaky")).await;
        let doomed = h.publish("flaky", json!({})).await.event_id;
        let deadline = Instant::now() + WAIT;
        loop {
            let webhooks = h.call(Method::GET, "/webhooks", None).await;
            let flaky = webhooks.expect(200)["webhooks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["event_type"] == json!("flaky"))
                .cloned()
                .unwrap();
            if flaky["is_active"] == json!(false) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "[{:?}] never disabled",
                h.backend
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = failing.count();
        let (status, problem) = problem_of(
            h.client()
                .resend_event_for_tenant()
                .event_type("flaky")
                .event_id(doomed)
                .send()
                .await,
        );
        assert_eq!(status, 409, "{problem:?}");
        h.call(Method::POST, &resend("flaky", &doomed.to_string()), None)
            .await
            .expect(409);
        tokio::time::sleep(QUIET).await;
        assert_eq!(failing.count(), before, "a refused resend delivers nothing");

        // Refused resends deliver nothing: A's receiver got only the one publish.
        assert_eq!(receiver.count(), 1);
        h.finish().await;
    }
}
