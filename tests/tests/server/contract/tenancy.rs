//! Tenancy and authentication: tenants see only their own projects, keys, and bad
//! credentials answered as indistinguishable 401s.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_projects() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let store = h.server.store.clone();
        let tenant_b = support::create_tenant(store.as_ref(), "tenant-b").await;
        let project_a = h.project();
        let project_b = tenant_b.project_id;
        let client_a = h.client();
        let client_b = h.client_for(&tenant_b.key);
        let receiver_a = Receiver::start().await;
        let receiver_b = Receiver::start().await;

        // The same event type in both tenants, one on each route style.
        let secret_a = h.register("session.end", &receiver_a.url("/a")).await;
        let secret_b = client_b
            .upsert_webhook_for_tenant()
            .event_type("session.end")
            .body(
                types::UpsertWebhookForTenantInputBody::builder().webhook_url(receiver_b.url("/b")),
            )
            .send()
            .await
            .expect("upsert b")
            .into_inner()
            .signing_secret
            .expect("b's webhook is new");
        assert_ne!(secret_a, secret_b);

        let only = |reply: &Reply, project: Uuid, url: String| {
            let webhooks = reply.expect(200)["webhooks"]
                .as_array()
                .expect("array")
                .clone();
            assert_eq!(webhooks.len(), 1, "{}", reply.text);
            assert_eq!(webhooks[0]["project_id"], json!(project.to_string()));
            assert_eq!(webhooks[0]["webhook_url"], json!(url));
        };
        only(
            &h.call(Method::GET, "/webhooks", None).await,
            project_a,
            receiver_a.url("/a"),
        );
        only(
            &h.call(
                Method::GET,
                &format!("/projects/{project_a}/webhooks"),
                None,
            )
            .await,
            project_a,
            receiver_a.url("/a"),
        );
        only(
            &h.call_as(&tenant_b.key, Method::GET, "/webhooks", None)
                .await,
            project_b,
            receiver_b.url("/b"),
        );
        only(
            &h.call_as(
                &tenant_b.key,
                Method::GET,
                &format!("/projects/{project_b}/webhooks"),
                None,
            )
            .await,
            project_b,
            receiver_b.url("/b"),
        );

        // Deliveries and attempts stay with their tenant.
        let event_a = h.publish("session.end", json!({"who": "a"})).await;
        let event_b = client_b
            .publish_event_for_tenant()
            .body(
                types::PublishEventForTenantInputBody::builder()
                    .event_type("session.end")
                    .data(json!({"who": "b"})),
            )
            .send()
            .await
            .expect("publish b")
            .into_inner();
        assert_eq!(
            (event_a.deliveries_started, event_b.deliveries_started),
            (1, 1)
        );
        let delivery_a = delivery_of(&receiver_a, event_a.event_id).await;
        delivery_of(&receiver_b, event_b.event_id).await;
        Verifier::new(&secret_a)
            .unwrap()
            .verify_sonzai(
                delivery_a.header("sonzai-signature").unwrap(),
                &delivery_a.body,
            )
            .expect("a's secret signs a's delivery");
        assert!(Verifier::new(&secret_b)
            .unwrap()
            .verify_sonzai(
                delivery_a.header("sonzai-signature").unwrap(),
                &delivery_a.body
            )
            .is_err());
        let attempts_a = h.attempts_until("/webhooks/session.end/attempts", 1).await;
        let attempts_b = {
            let deadline = Instant::now() + WAIT;
            loop {
                let reply = h
                    .call_as(
                        &tenant_b.key,
                        Method::GET,
                        "/webhooks/session.end/attempts",
                        None,
                    )
                    .await;
                let attempts = reply.expect(200)["attempts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !attempts.is_empty() || Instant::now() >= deadline {
                    break attempts;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert_eq!((attempts_a.len(), attempts_b.len()), (1, 1));
        assert_eq!(attempts_a[0]["project_id"], json!(project_a.to_string()));
        assert_eq!(attempts_a[0]["webhook_url"], json!(receiver_a.url("/a")));
        assert_eq!(attempts_b[0]["project_id"], json!(project_b.to_string()));
        assert_eq!(attempts_b[0]["webhook_url"], json!(receiver_b.url("/b")));
        assert_ne!(ids(&attempts_a), ids(&attempts_b));

        // Tenant B on tenant A's project answers exactly like on a project that does not
        // exist, for every project-scoped operation.
        let random = Uuid::new_v4();
        let operations: Vec<(Method, &str, Option<Value>)> = vec![
            (Method::GET, "/projects/{p}/webhooks", None),
            (
                Method::PUT,
                "/projects/{p}/webhooks/session.end",
                Some(json!({"webhook_url": receiver_b.url("/stolen")})),
            ),
            (Method::DELETE, "/projects/{p}/webhooks/session.end", None),
            (
                Method::GET,
                "/projects/{p}/webhooks/session.end/attempts",
                None,
            ),
            (
                Method::GET,
                "/projects/{p}/webhooks/session.end/attempts?limit=1",
                None,
            ),
            (
                Method::POST,
                "/projects/{p}/webhooks/session.end/rotate-secret",
                None,
            ),
            (
                Method::POST,
                "/projects/{p}/events",
                Some(json!({"event_type": "session.end", "data": {"who": "intruder"}})),
            ),
        ];
        for (method, template, body) in &operations {
            let foreign = h
                .call_as(
                    &tenant_b.key,
                    method.clone(),
                    &template.replace("{p}", &project_a.to_string()),
                    body.clone(),
                )
                .await;
            let missing = h
                .call_as(
                    &tenant_b.key,
                    method.clone(),
                    &template.replace("{p}", &random.to_string()),
                    body.clone(),
                )
                .await;
            foreign.expect(404);
            missing.expect(404);
            assert_eq!(
                foreign.text.replace(&project_a.to_string(), "<id>"),
                missing.text.replace(&random.to_string(), "<id>"),
                "{method} {template}: a foreign project is distinguishable from a missing one"
            );
            assert_eq!(
                foreign.headers.get(reqwest::header::CONTENT_TYPE),
                missing.headers.get(reqwest::header::CONTENT_TYPE)
            );
        }
        let (status, _) = problem_of(client_b.list_webhooks().project_id(project_a).send().await);
        assert_eq!(status, 404);
        let (status, _) = problem_of(
            client_b
                .rotate_webhook_signing_secret()
                .project_id(project_a)
                .event_type("session.end")
                .send()
                .await,
        );
        assert_eq!(status, 404);

        // Idempotency keys belong to a project: the same key in another tenant is
        // another event, delivered to that tenant.
        let keyed = |key: &str| json!({"event_type": "session.end", "data": {"who": "b"}, "idempotency_key": key});
        let from_a = h
            .call(Method::POST, "/events", Some(keyed("shared-key")))
            .await;
        let from_b = h
            .call_as(
                &tenant_b.key,
                Method::POST,
                "/events",
                Some(keyed("shared-key")),
            )
            .await;
        let event_b2 = from_b.expect(202)["event_id"].clone();
        assert_ne!(from_a.expect(202)["event_id"], event_b2);
        delivery_of(&receiver_b, event_b2.as_str().unwrap().parse().unwrap()).await;

        // None of that touched tenant A: same webhook, same secret, no intruder event.
        only(
            &h.call(Method::GET, "/webhooks", None).await,
            project_a,
            receiver_a.url("/a"),
        );
        let check = h.publish("session.end", json!({"who": "a again"})).await;
        let delivery = delivery_of(&receiver_a, check.event_id).await;
        Verifier::new(&secret_a)
            .unwrap()
            .verify_sonzai(delivery.header("sonzai-signature").unwrap(), &delivery.body)
            .expect("a's secret was not rotated by b");
        assert!(
            receiver_a
                .received()
                .iter()
                .all(|r| r.json()["data"]["who"] != json!("intruder")),
            "tenant B published into tenant A's project"
        );
        assert!(receiver_b
            .received()
            .iter()
            .all(|r| r.json()["data"]["who"] == json!("b")));

        // A second project of the same tenant is reachable with tenant A's key.
        let second = store
            .create_project(h.server.tenant.tenant_id, "second")
            .await
            .expect("second project")
            .id;
        let created = client_a
            .upsert_webhook()
            .project_id(second)
            .event_type("session.end")
            .body(types::UpsertWebhookInputBody::builder().webhook_url(receiver_a.url("/second")))
            .send()
            .await
            .expect("upsert in the second project")
            .into_inner();
        let second_secret = created
            .signing_secret
            .expect("a new webhook in the second project");
        assert_ne!(second_secret, secret_a);
        only(
            &h.call(Method::GET, &format!("/projects/{second}/webhooks"), None)
                .await,
            second,
            receiver_a.url("/second"),
        );
        only(
            &h.call(Method::GET, "/webhooks", None).await,
            project_a,
            receiver_a.url("/a"),
        );
        let none = h
            .call(
                Method::GET,
                &format!("/projects/{second}/webhooks/session.end/attempts"),
                None,
            )
            .await;
        assert_eq!(none.expect(200)["attempts"], json!([]));
        h.call(
            Method::POST,
            &format!("/projects/{second}/webhooks/session.end/rotate-secret"),
            None,
        )
        .await
        .expect(200);
        let published = h
            .call(
                Method::POST,
                &format!("/projects/{second}/events"),
                Some(json!({"event_type": "session.end", "data": {}})),
            )
            .await;
        assert_eq!(published.expect(202)["deliveries_started"], json!(1));
        h.call_as(
            &tenant_b.key,
            Method::GET,
            &format!("/projects/{second}/webhooks"),
            None,
        )
        .await
        .expect(404);
        h.call(
            Method::DELETE,
            &format!("/projects/{second}/webhooks/session.end"),
            None,
        )
        .await
        .expect(204);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_401_and_indistinguishable() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        let store = h.server.store.clone();

        let (revoked, record) =
            sonzai_webhooks_server::auth::issue_api_key(store.as_ref(), project)
                .await
                .expect("second key");
        h.call_as(revoked.expose(), Method::GET, "/webhooks", None)
            .await
            .expect(200);
        store.revoke_api_key(record.id).await.expect("revoke");

        let real = h.key().to_owned();
        // The scheme is case-insensitive (RFC 9110).
        h.raw(
            Some(&format!("bearer {real}")),
            Method::GET,
            "/webhooks",
            None,
        )
        .await
        .expect(200);
        let lookup = &real[..3 + 12];
        let wrong_secret = format!("{lookup}_{}", "Z".repeat(40));
        let unknown = format!("sk_{}_{}", "q".repeat(12), "A1".repeat(20));
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("user:password")
        );
        let credentials: Vec<(&str, Option<String>)> = vec![
            ("missing", None),
            ("empty", Some(String::new())),
            ("scheme only", Some("Bearer".to_owned())),
            ("garbage", Some("Bearer garbage".to_owned())),
            ("unknown key", Some(format!("Bearer {unknown}"))),
            ("wrong secret", Some(format!("Bearer {wrong_secret}"))),
            ("revoked key", Some(format!("Bearer {}", revoked.expose()))),
            ("basic", Some(basic)),
            ("valid key, basic scheme", Some(format!("Basic {real}"))),
            ("valid key, no scheme", Some(real.clone())),
        ];
        let requests: Vec<(Method, String, Option<Value>)> = vec![
            (Method::GET, "/webhooks".to_owned(), None),
            (Method::GET, format!("/projects/{project}/webhooks"), None),
            (
                Method::PUT,
                "/webhooks/session.end".to_owned(),
                Some(json!({"webhook_url": "http://127.0.0.1:9/x"})),
            ),
            (
                Method::DELETE,
                format!("/projects/{project}/webhooks/session.end"),
                None,
            ),
            (
                Method::GET,
                "/webhooks/session.end/attempts".to_owned(),
                None,
            ),
            (
                Method::POST,
                "/webhooks/session.end/rotate-secret".to_owned(),
                None,
            ),
            (
                Method::POST,
                "/events".to_owned(),
                Some(json!({"event_type": "session.end", "data": {}})),
            ),
        ];
        let mut bodies = BTreeSet::new();
        for (what, authorization) in &credentials {
            for (method, path, body) in &requests {
                let reply = h
                    .raw(
                        authorization.as_deref(),
                        method.clone(),
                        path,
                        body.as_ref().map(|b| serde_json::to_vec(b).unwrap()),
                    )
                    .await;
                assert_eq!(reply.status, 401, "{what}: {method} {path}: {}", reply.text);
                assert!(reply
                    .headers
                    .contains_key(reqwest::header::WWW_AUTHENTICATE));
                assert!(!reply.text.contains(&real) && !reply.text.contains(revoked.expose()));
                bodies.insert(reply.text);
            }
        }
        assert_eq!(
            bodies.len(),
            1,
            "401 bodies tell the reasons apart: {bodies:?}"
        );

        // The generated client with a revoked key sees the same problem.
        let (status, problem) = problem_of(
            h.client_for(revoked.expose())
                .list_webhooks_for_tenant()
                .send()
                .await,
        );
        assert_eq!((status, problem.status), (401, Some(401)));

        // Nothing was created by the rejected requests.
        let list = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(list.expect(200)["webhooks"], json!([]));
        h.finish().await;
    }
}
