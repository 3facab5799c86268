//! Webhooks: upsert (create, update, reactivate, concurrent creates), list, delete,
//! the per-project limit, and the rules for webhook URLs.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_creates_then_updates_keeping_secret_and_created_at() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let client = h.client();
        let project = h.project();

        let secret = h.register("session.end", &receiver.url("/first")).await;
        assert_secret_shape(&secret);
        let before = client
            .list_webhooks()
            .project_id(project)
            .send()
            .await
            .expect("list")
            .into_inner()
            .webhooks
            .expect("webhooks");
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].webhook_url, receiver.url("/first"));
        assert_eq!(before[0].project_id, project);
        assert!(before[0].is_active);
        assert!(before[0].updated_at >= before[0].created_at);

        // Timestamps keep microseconds; make sure the clock moved.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let updated = client
            .upsert_webhook()
            .project_id(project)
            .event_type("session.end")
            .body(types::UpsertWebhookInputBody::builder().webhook_url(receiver.url("/second")))
            .send()
            .await
            .expect("update")
            .into_inner();
        assert!(updated.success);
        assert_eq!(
            updated.signing_secret, None,
            "an update must not answer a secret"
        );

        // The tenant route updates the same webhook; the raw answer has no secret field
        // at all (not even null).
        let raw = h
            .call(
                Method::PUT,
                "/webhooks/session.end",
                Some(json!({"webhook_url": receiver.url("/third"), "auth_header": "Bearer hook-token"})),
            )
            .await;
        let body = raw.expect(200);
        assert_eq!(body["success"], json!(true));
        assert!(body.get("signing_secret").is_none(), "{}", raw.text);

        let after = h
            .call(Method::GET, &format!("/projects/{project}/webhooks"), None)
            .await;
        let webhooks = after.expect(200)["webhooks"]
            .as_array()
            .expect("array")
            .clone();
        assert_eq!(webhooks.len(), 1, "{}", after.text);
        let w = &webhooks[0];
        assert_eq!(w["webhook_url"], json!(receiver.url("/third")));
        assert_eq!(w["auth_header"], json!("Bearer hook-token"));
        assert_eq!(w["is_active"], json!(true));
        assert_eq!(w["event_type"], json!("session.end"));
        assert_eq!(
            time(&w["created_at"]),
            before[0].created_at,
            "created_at must not change"
        );
        assert!(
            time(&w["updated_at"]) > before[0].updated_at,
            "updated_at must move: {} then {}",
            before[0].updated_at,
            w["updated_at"]
        );

        // The update kept the creation secret: a delivery to the new URL is signed with it.
        let published = h.publish("session.end", json!({"n": 1})).await;
        assert_eq!(published.deliveries_started, 1);
        let delivery = delivery_of(&receiver, published.event_id).await;
        let signature = delivery
            .header("sonzai-signature")
            .expect("Sonzai-Signature");
        Verifier::new(&secret)
            .expect("verifier")
            .verify_sonzai(signature, &delivery.body)
            .expect("the creation secret still signs after an update");
        assert_eq!(delivery.header("authorization"), Some("Bearer hook-token"));

        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_reactivates_a_webhook_disabled_for_failing() {
    for db in support::backends().await {
        // Disable after two failures, however young the streak.
        let mut config = support::test_config(&db);
        config.disable_after_failures = 2;
        config.disable_after = Duration::ZERO;
        eprintln!("contract: {:?}", db.backend);
        let server = TestServer::start_with(&db, config).await;
        let proxy = Proxy::start(server.addr).await;
        let h = Harness {
            backend: db.backend,
            server,
            proxy,
            http: support::http_client(),
        };
        let receiver = Receiver::start().await;
        receiver.set_default(Answer::status(503));
        let url = receiver.url("/flaky");
        let secret = h.register("session.end", &url).await;
        assert_eq!(
            h.publish("session.end", json!({"n": 1}))
                .await
                .deliveries_started,
            1
        );

        let deadline = Instant::now() + WAIT;
        let webhook = loop {
            let reply = h.call(Method::GET, "/webhooks", None).await;
            let webhook = reply.expect(200)["webhooks"][0].clone();
            if webhook["is_active"] == json!(false) || Instant::now() >= deadline {
                break webhook;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            webhook["is_active"],
            json!(false),
            "[{:?}] never disabled",
            h.backend
        );
        let disabled_at = time(&webhook["updated_at"]);
        // An inactive webhook gets no deliveries.
        assert_eq!(
            h.publish("session.end", json!({"n": 2}))
                .await
                .deliveries_started,
            0
        );

        // An update switches it back on and keeps the secret.
        receiver.set_default(Answer::status(200));
        let updated = h
            .call(
                Method::PUT,
                "/webhooks/session.end",
                Some(json!({"webhook_url": url})),
            )
            .await;
        assert!(
            updated.expect(200).get("signing_secret").is_none(),
            "{}",
            updated.text
        );
        let reply = h.call(Method::GET, "/webhooks", None).await;
        let webhook = &reply.expect(200)["webhooks"][0];
        assert_eq!(webhook["is_active"], json!(true), "{}", reply.text);
        assert!(time(&webhook["updated_at"]) >= disabled_at);
        let published = h.publish("session.end", json!({"n": 3})).await;
        assert_eq!(published.deliveries_started, 1);
        let delivery = delivery_of(&receiver, published.event_id).await;
        Verifier::new(&secret)
            .unwrap()
            .verify_sonzai(delivery.header("sonzai-signature").unwrap(), &delivery.body)
            .expect("the secret survives disabling and reactivation");
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_ordered_by_event_type_and_empty_is_an_array() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        for path in [
            format!("/projects/{project}/webhooks"),
            "/webhooks".to_owned(),
        ] {
            let reply = h.call(Method::GET, &path, None).await;
            assert_eq!(reply.expect(200)["webhooks"], json!([]), "{}", reply.text);
            assert!(reply.text.contains(r#""webhooks":[]"#), "{}", reply.text);
        }
        let typed = h
            .client()
            .list_webhooks_for_tenant()
            .send()
            .await
            .expect("list")
            .into_inner();
        assert_eq!(typed.webhooks, Some(Vec::new()));

        // Byte order: upper case before lower case, punctuation by code point.
        let event_types = [
            "session.end",
            "memory.created",
            "Zeta",
            "on_wakeup_ready",
            "a:b",
            "a-b",
            "a.b",
            "A",
            "0.start",
        ];
        for event_type in event_types {
            h.register(event_type, &format!("http://127.0.0.1:9/{event_type}"))
                .await;
        }
        let mut expected: Vec<&str> = event_types.to_vec();
        expected.sort_unstable();
        for path in [
            format!("/projects/{project}/webhooks"),
            "/webhooks".to_owned(),
        ] {
            let reply = h.call(Method::GET, &path, None).await;
            let listed: Vec<&str> = reply.expect(200)["webhooks"]
                .as_array()
                .expect("array")
                .iter()
                .map(|w| w["event_type"].as_str().expect("event_type"))
                .collect();
            assert_eq!(listed, expected, "[{:?}] {path}", h.backend);
        }
        let typed: Vec<String> = h
            .client()
            .list_webhooks()
            .project_id(project)
            .send()
            .await
            .expect("list")
            .into_inner()
            .webhooks
            .expect("webhooks")
            .into_iter()
            .map(|w| w.event_type)
            .collect();
        assert_eq!(typed, expected);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_answers_204_then_404_and_keeps_attempts() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let project = h.project();
        let attempts_path = format!("/projects/{project}/webhooks/session.end/attempts");
        h.register("session.end", &receiver.url("/hook")).await;
        h.register("memory.created", &receiver.url("/other")).await;

        let published = h.publish("session.end", json!({"bye": true})).await;
        assert_eq!(published.deliveries_started, 1);
        assert_eq!(
            receiver.wait_for(1, WAIT).await,
            1,
            "[{:?}] no delivery",
            h.backend
        );
        let before = h.attempts_until(&attempts_path, 1).await;
        assert_eq!(before.len(), 1);
        assert_eq!(before[0]["status"], json!("success"));
        assert_eq!(before[0]["response_code"], json!(200));
        assert_eq!(before[0]["attempt_number"], json!(1));
        assert_eq!(
            sent_body(&before[0])["event_id"],
            json!(published.event_id.to_string())
        );

        h.client()
            .delete_webhook()
            .project_id(project)
            .event_type("session.end")
            .send()
            .await
            .expect("delete");
        let again = h
            .call(
                Method::DELETE,
                &format!("/projects/{project}/webhooks/session.end"),
                None,
            )
            .await;
        again.expect(404);
        let (status, _) = problem_of(
            h.client()
                .delete_webhook_for_tenant()
                .event_type("session.end")
                .send()
                .await,
        );
        assert_eq!(status, 404);
        h.call(Method::DELETE, "/webhooks/never.registered", None)
            .await
            .expect(404);

        let listed = h.call(Method::GET, "/webhooks", None).await;
        let remaining: Vec<&Value> = listed.expect(200)["webhooks"]
            .as_array()
            .expect("array")
            .iter()
            .map(|w| &w["event_type"])
            .collect();
        assert_eq!(remaining, [&json!("memory.created")], "{}", listed.text);

        // The attempt history of the deleted webhook stays listable, on both routes.
        for path in [
            attempts_path.clone(),
            "/webhooks/session.end/attempts".to_owned(),
        ] {
            let after = h.call(Method::GET, &path, None).await;
            assert_eq!(
                ids(after.expect(200)["attempts"].as_array().expect("array")),
                ids(&before)
            );
        }
        let typed = h
            .client()
            .list_delivery_attempts_for_tenant()
            .event_type("session.end")
            .send()
            .await
            .expect("attempts")
            .into_inner();
        assert_eq!(typed.attempts.map(|a| a.len()), Some(1));

        // A deleted webhook cannot be rotated.
        h.call(Method::POST, "/webhooks/session.end/rotate-secret", None)
            .await
            .expect(404);

        // Deleting stops pending retries: the schedule would make four attempts
        // within a second; at most the one in flight at deletion time follows the first.
        let failing = Receiver::start().await;
        failing.set_default(Answer::status(500));
        h.register("retry.me", &failing.url("/down")).await;
        assert_eq!(h.publish("retry.me", json!({})).await.deliveries_started, 1);
        assert_eq!(failing.wait_for(1, WAIT).await, 1);
        h.call(Method::DELETE, "/webhooks/retry.me", None)
            .await
            .expect(204);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            failing.count() <= 2,
            "[{:?}] {} attempts after deletion",
            h.backend,
            failing.count()
        );
        let listed = h
            .call(Method::GET, "/webhooks/retry.me/attempts", None)
            .await;
        let recorded = listed.expect(200)["attempts"]
            .as_array()
            .map_or(0, Vec::len);
        assert!((1..=2).contains(&recorded), "{}", listed.text);

        // The tenant route deletes too; a deleted webhook gets no new events.
        h.call(Method::DELETE, "/webhooks/memory.created", None)
            .await
            .expect(204);
        assert_eq!(
            h.publish("session.end", json!({})).await.deliveries_started,
            0
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upserts_create_exactly_one_webhook() {
    const RACERS: usize = 16;
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut racers = tokio::task::JoinSet::new();
        for i in 0..RACERS {
            let client = h.client();
            let barrier = barrier.clone();
            racers.spawn(async move {
                let url = format!("http://127.0.0.1:9/racer-{i}");
                barrier.wait().await;
                let answer = client
                    .upsert_webhook()
                    .project_id(project)
                    .event_type("race.condition")
                    .body(types::UpsertWebhookInputBody::builder().webhook_url(url.as_str()))
                    .send()
                    .await;
                (url, answer.map(ResponseValue::into_inner))
            });
        }
        let mut secrets = Vec::new();
        let mut urls = BTreeSet::new();
        while let Some(joined) = racers.join_next().await {
            let (url, answer) = joined.expect("racer");
            let answer = answer
                .unwrap_or_else(|e| panic!("[{:?}] concurrent upsert failed: {e:?}", h.backend));
            assert!(answer.success);
            secrets.extend(answer.signing_secret);
            urls.insert(url);
        }
        assert_eq!(
            secrets.len(),
            1,
            "[{:?}] creation secrets handed out: {}",
            h.backend,
            secrets.len()
        );
        assert_secret_shape(&secrets[0]);

        let listed = h
            .client()
            .list_webhooks()
            .project_id(project)
            .send()
            .await
            .expect("list")
            .into_inner()
            .webhooks
            .expect("webhooks");
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(
            urls.contains(&listed[0].webhook_url),
            "{}",
            listed[0].webhook_url
        );

        let rotated = h
            .client()
            .rotate_webhook_signing_secret()
            .project_id(project)
            .event_type("race.condition")
            .send()
            .await
            .expect("rotate after the race")
            .into_inner();
        assert_secret_shape(&rotated.signing_secret);
        assert_ne!(rotated.signing_secret, secrets[0]);

        // Concurrent creations of different event types all succeed, each with its own
        // secret.
        let mut racers = tokio::task::JoinSet::new();
        for i in 0..RACERS {
            let client = h.client();
            let barrier = barrier.clone();
            racers.spawn(async move {
                barrier.wait().await;
                client
                    .upsert_webhook()
                    .project_id(project)
                    .event_type(format!("parallel.{i:02}").as_str())
                    .body(
                        types::UpsertWebhookInputBody::builder()
                            .webhook_url("http://127.0.0.1:9/p"),
                    )
                    .send()
                    .await
                    .map(ResponseValue::into_inner)
            });
        }
        let mut distinct = BTreeSet::new();
        while let Some(joined) = racers.join_next().await {
            let answer = joined
                .expect("racer")
                .unwrap_or_else(|e| panic!("[{:?}] concurrent create failed: {e:?}", h.backend));
            distinct.insert(answer.signing_secret.expect("each is a creation"));
        }
        assert_eq!(distinct.len(), RACERS);
        let listed = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(
            listed.expect(200)["webhooks"].as_array().map(Vec::len),
            Some(RACERS + 1)
        );

        // Concurrent publishes with one idempotency key make one event and one delivery.
        let receiver = Receiver::start().await;
        h.register("once.only", &receiver.url("/once")).await;
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..RACERS {
            let client = h.client();
            let barrier = barrier.clone();
            racers.spawn(async move {
                barrier.wait().await;
                let key =
                    types::PublishEventInputBodyIdempotencyKey::try_from("same-key").expect("key");
                client
                    .publish_event()
                    .project_id(project)
                    .body(
                        types::PublishEventInputBody::builder()
                            .event_type("once.only")
                            .data(json!({}))
                            .idempotency_key(Some(key)),
                    )
                    .send()
                    .await
                    .map(ResponseValue::into_inner)
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = racers.join_next().await {
            answers.push(
                joined.expect("racer").unwrap_or_else(|e| {
                    panic!("[{:?}] concurrent publish failed: {e:?}", h.backend)
                }),
            );
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "[{:?}] one idempotency key, several answers: {answers:?}",
            h.backend
        );
        assert_eq!(answers[0].deliveries_started, 1);
        delivery_of(&receiver, answers[0].event_id).await;
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            receiver.count(),
            1,
            "[{:?}] deliveries of one idempotent event",
            h.backend
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_per_project_are_limited_with_409() {
    const LIMIT: usize = 5;
    const RACERS: usize = 20;
    for db in support::backends().await {
        let mut config = support::test_config(&db);
        config.max_webhooks_per_project = LIMIT;
        let h = Harness::start_with(&db, config).await;
        let project = h.project();
        for n in 0..LIMIT {
            h.register(&format!("hook.{n}"), "http://127.0.0.1:9/hook")
                .await;
        }
        let body = json!({"webhook_url": "http://127.0.0.1:9/more"});
        for path in [
            format!("/projects/{project}/webhooks/hook.{LIMIT}"),
            format!("/webhooks/hook.{LIMIT}"),
        ] {
            let refused = h.call(Method::PUT, &path, Some(body.clone())).await;
            let problem = refused.expect(409);
            assert_eq!(problem["status"], json!(409), "{}", refused.text);
            let detail = problem["detail"].as_str().expect("detail");
            assert!(
                detail.contains("limit of 5 webhooks"),
                "[{:?}] {path}: {detail}",
                h.backend
            );
        }
        let (status, problem) = problem_of(
            h.client()
                .upsert_webhook()
                .project_id(project)
                .event_type("hook.extra")
                .body(types::UpsertWebhookInputBody::builder().webhook_url("http://127.0.0.1:9/x"))
                .send()
                .await,
        );
        assert_eq!(status, 409, "{problem:?}");

        // Updating a webhook at the limit is not a create.
        let updated = h
            .call(
                Method::PUT,
                "/webhooks/hook.2",
                Some(json!({"webhook_url": "http://127.0.0.1:9/updated"})),
            )
            .await;
        let updated = updated.expect(200);
        assert_eq!(updated["success"], json!(true));
        assert!(updated.get("signing_secret").is_none(), "{updated}");
        let listed = h.call(Method::GET, "/webhooks", None).await;
        let listed = listed.expect(200)["webhooks"]
            .as_array()
            .expect("array")
            .clone();
        let types: Vec<&str> = listed
            .iter()
            .map(|w| w["event_type"].as_str().expect("event_type"))
            .collect();
        assert_eq!(types, ["hook.0", "hook.1", "hook.2", "hook.3", "hook.4"]);
        assert_eq!(
            listed[2]["webhook_url"],
            json!("http://127.0.0.1:9/updated")
        );

        // A delete makes room again.
        h.call(Method::DELETE, "/webhooks/hook.0", None)
            .await
            .expect(204);
        h.call(
            Method::PUT,
            &format!("/webhooks/hook.{LIMIT}"),
            Some(body.clone()),
        )
        .await
        .expect(200);

        // Concurrent creates in a fresh project of the same tenant stop at the limit.
        let second = h
            .server
            .store
            .create_project(h.server.tenant.tenant_id, "second")
            .await
            .expect("project")
            .id;
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut racers = tokio::task::JoinSet::new();
        for i in 0..RACERS {
            let client = h.client();
            let barrier = barrier.clone();
            racers.spawn(async move {
                barrier.wait().await;
                client
                    .upsert_webhook()
                    .project_id(second)
                    .event_type(format!("race.{i}"))
                    .body(
                        types::UpsertWebhookInputBody::builder()
                            .webhook_url("http://127.0.0.1:9/race"),
                    )
                    .send()
                    .await
            });
        }
        let (mut created, mut refused) = (0, 0);
        while let Some(joined) = racers.join_next().await {
            match joined.expect("racer") {
                Ok(answer) => {
                    assert!(answer.into_inner().signing_secret.is_some());
                    created += 1;
                }
                Err(Error::ErrorResponse(answer)) if answer.status().as_u16() == 409 => {
                    refused += 1
                }
                Err(other) => panic!("[{:?}] unexpected answer {other:?}", h.backend),
            }
        }
        assert_eq!(
            (created, refused),
            (LIMIT, RACERS - LIMIT),
            "[{:?}] concurrent creates",
            h.backend
        );
        let listed = h
            .call(Method::GET, &format!("/projects/{second}/webhooks"), None)
            .await;
        assert_eq!(
            listed.expect(200)["webhooks"].as_array().map(Vec::len),
            Some(LIMIT)
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_stores_the_url_it_checked_in_normal_form() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let port = receiver.addr.port();
        for (event_type, typed, stored) in [
            (
                "norm.case",
                "HTTPS://Example.COM:443/hooks/./a/../sonzai".to_owned(),
                "https://example.com/hooks/sonzai".to_owned(),
            ),
            (
                "norm.space",
                "  http://example.com  ".to_owned(),
                "http://example.com/".to_owned(),
            ),
            (
                "norm.ip",
                format!("http://0x7f.1:{port}/in/../hook"),
                format!("http://127.0.0.1:{port}/hook"),
            ),
        ] {
            h.call(
                Method::PUT,
                &format!("/webhooks/{event_type}"),
                Some(json!({"webhook_url": typed})),
            )
            .await
            .expect(200);
            let list = h.call(Method::GET, "/webhooks", None).await;
            let found = list.expect(200)["webhooks"]
                .as_array()
                .expect("webhooks")
                .iter()
                .find(|w| w["event_type"] == json!(event_type))
                .cloned()
                .unwrap_or_else(|| panic!("{event_type} not listed: {}", list.text));
            assert_eq!(
                found["webhook_url"],
                json!(stored),
                "[{:?}] {typed:?}",
                h.backend
            );
        }
        // Deliveries and their attempts go to the stored form.
        let reply = h
            .call(
                Method::POST,
                "/events",
                Some(json!({"event_type": "norm.ip", "data": {"n": 1}})),
            )
            .await;
        reply.expect(202);
        assert_eq!(receiver.wait_for(1, WAIT).await, 1);
        let attempts = h.attempts_until("/webhooks/norm.ip/attempts", 1).await;
        assert_eq!(
            attempts[0]["webhook_url"],
            json!(format!("http://127.0.0.1:{port}/hook"))
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_webhook_url_are_refused() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        for url in [
            "https://hook-user:hook-password@example.com/hooks",
            "https://hook-user@example.com/hooks",
            "https://:hook-password@example.com/hooks",
        ] {
            for path in [
                "/webhooks/creds.test".to_owned(),
                format!("/projects/{project}/webhooks/creds.test"),
            ] {
                let reply = h
                    .call(Method::PUT, &path, Some(json!({"webhook_url": url})))
                    .await;
                reply.expect_invalid("body.webhook_url");
                assert!(
                    message_at(&reply, "body.webhook_url").contains("auth_header"),
                    "{}",
                    reply.text
                );
                assert!(
                    !reply.text.contains("hook-password"),
                    "the refusal echoes the password: {}",
                    reply.text
                );
            }
        }
        // An empty user part is no credential: `https://@host` is `https://host`.
        h.call(
            Method::PUT,
            "/webhooks/creds.empty",
            Some(json!({"webhook_url": "https://@example.com/hooks"})),
        )
        .await
        .expect(200);
        let list = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(
            list.expect(200)["webhooks"]
                .as_array()
                .expect("webhooks")
                .iter()
                .map(|w| w["webhook_url"].clone())
                .collect::<Vec<_>>(),
            [json!("https://example.com/hooks")],
            "[{:?}] {}",
            h.backend,
            list.text
        );
        h.finish().await;
    }
}

/// A list long enough to be kept in memory is answered from its kept encoding: the
/// same text each time, the one a fresh read answers, and never older than the last
/// change, on both routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_list_answers_as_a_fresh_read_and_follows_every_change() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        let scoped = format!("/projects/{project}/webhooks");
        for i in 0..40 {
            h.register(&format!("long.{i:02}"), &format!("https://example.com/{i}"))
                .await;
        }
        // One with every optional field a listing shows.
        h.call(
            Method::PUT,
            "/webhooks/long.07",
            Some(
                json!({"webhook_url": "https://example.com/seven", "auth_header": "Bearer t",
                        "rate_limit": 5, "ordered": true}),
            ),
        )
        .await
        .expect(200);

        let first = h.call(Method::GET, &scoped, None).await;
        let again = h.call(Method::GET, &scoped, None).await;
        let tenant = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(first.expect(200), again.expect(200));
        assert_eq!(again.text, first.text, "a kept answer is the same text");
        assert_eq!(tenant.text, first.text, "both routes answer the same");
        assert_eq!(
            first.headers["content-type"], "application/json",
            "[{:?}]",
            h.backend
        );
        let list = first.json["webhooks"].as_array().expect("webhooks");
        assert_eq!(list.len(), 40);
        assert_eq!(
            first.json["$schema"],
            json!("/api/v1/schemas/ListWebhooksOutputBody.json")
        );
        assert!(list.iter().all(|w| w.get("$schema").is_none()));
        let seven = &list[7];
        assert_eq!(seven["webhook_url"], json!("https://example.com/seven"));
        assert_eq!(seven["auth_header"], json!("Bearer t"));
        assert_eq!(seven["rate_limit"], json!(5));
        assert_eq!(seven["ordered"], json!(true));
        assert!(list[8].get("rate_limit").is_none() && list[8].get("ordered").is_none());

        // The typed client reads the kept answer as it reads any other.
        let typed = h
            .client()
            .list_webhooks()
            .project_id(project)
            .send()
            .await
            .expect("list")
            .into_inner()
            .webhooks
            .expect("webhooks");
        assert_eq!(typed.len(), 40);
        assert_eq!(typed[7].rate_limit, Some(5));

        // Every kind of change shows in the next answer.
        h.call(
            Method::PUT,
            "/webhooks/long.03",
            Some(json!({"webhook_url": "https://example.com/three"})),
        )
        .await
        .expect(200);
        let updated = h.call(Method::GET, &scoped, None).await;
        assert_eq!(
            updated.expect(200)["webhooks"][3]["webhook_url"],
            json!("https://example.com/three"),
            "[{:?}] the update shows",
            h.backend
        );
        h.call(Method::DELETE, "/webhooks/long.05", None)
            .await
            .expect(204);
        let deleted = h.call(Method::GET, "/webhooks", None).await;
        let names: Vec<&str> = deleted.expect(200)["webhooks"]
            .as_array()
            .expect("webhooks")
            .iter()
            .map(|w| w["event_type"].as_str().expect("event_type"))
            .collect();
        assert_eq!(names.len(), 39, "[{:?}] the delete shows", h.backend);
        assert!(!names.contains(&"long.05"));
        h.register("long.99", "https://example.com/99").await;
        let created = h.call(Method::GET, &scoped, None).await;
        assert_eq!(
            created.expect(200)["webhooks"][39]["event_type"],
            json!("long.99"),
            "[{:?}] the create shows",
            h.backend
        );
        h.finish().await;
    }
}
