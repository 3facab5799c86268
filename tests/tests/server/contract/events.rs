//! Publishing events: delivery counts, idempotency keys, the body size cap, and NUL
//! inside event data.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_counts_deliveries_dedupes_and_caps_body_size() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let project = h.project();

        let nobody = h.publish("nobody.listens", json!({"x": 1})).await;
        assert_eq!(nobody.deliveries_started, 0);

        h.register("order.paid", &receiver.url("/paid")).await;
        let data = json!({"order": 42, "items": ["a", "b"], "nested": {"ok": true}});
        let reply = h
            .call(
                Method::POST,
                &format!("/projects/{project}/events"),
                Some(json!({"event_type": "order.paid", "data": data})),
            )
            .await;
        let first = reply.expect(202).clone();
        assert_eq!(first["deliveries_started"], json!(1));
        let first_id: Uuid = first["event_id"]
            .as_str()
            .unwrap()
            .parse()
            .expect("event_id is a UUID");
        let delivery = delivery_of(&receiver, first_id).await;
        let body = delivery.json();
        assert_eq!(body["event_type"], json!("order.paid"));
        assert_eq!(body["project_id"], json!(project.to_string()));
        assert_eq!(body["data"], data);
        assert!(delivery
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")));

        // The same idempotency key answers the first answer and delivers once, on
        // either route.
        let client = h.client();
        let a = publish_order_43(&client, project, false).await;
        let b = publish_order_43(&client, project, false).await;
        let c = publish_order_43(&client, project, true).await;
        assert_eq!(
            a, b,
            "a repeated idempotency key must answer the first answer"
        );
        assert_eq!(a, c);
        assert_eq!(a.deliveries_started, 1);
        assert_ne!(a.event_id, first_id);
        let raw = h
            .call(
                Method::POST,
                "/events",
                Some(json!({"event_type": "order.paid", "data": {"order": 43}, "idempotency_key": "order-43"})),
            )
            .await;
        assert_eq!(raw.expect(202)["event_id"], json!(a.event_id.to_string()));
        delivery_of(&receiver, a.event_id).await;
        // The first answer stays the answer, even once the webhook is gone.
        h.call(Method::DELETE, "/webhooks/order.paid", None)
            .await
            .expect(204);
        assert_eq!(publish_order_43(&client, project, false).await, a);
        h.register("order.paid", &receiver.url("/paid")).await;

        // Bodies over the limit (256 KiB by default) are refused, on both routes.
        let big = json!({"event_type": "order.paid", "data": {"blob": "x".repeat(300 * 1024)}});
        for path in [format!("/projects/{project}/events"), "/events".to_owned()] {
            h.call(Method::POST, &path, Some(big.clone()))
                .await
                .expect(413);
        }

        // Nothing more arrives: one delivery per event, none for the refused bodies.
        tokio::time::sleep(QUIET).await;
        let events: Vec<Value> = receiver
            .received()
            .iter()
            .map(|r| r.json()["event_id"].clone())
            .collect();
        assert_eq!(
            events,
            [json!(first_id.to_string()), json!(a.event_id.to_string())],
            "[{:?}] deliveries",
            h.backend
        );
        h.finish().await;
    }
}

/// Publishes order 43 under idempotency key `order-43` with the generated client, on
/// the project route or the tenant route.
async fn publish_order_43(
    client: &Client,
    project: Uuid,
    tenant_route: bool,
) -> types::PublishEventOutputBody {
    let key = types::PublishEventInputBodyIdempotencyKey::try_from("order-43").expect("key");
    let answer = if tenant_route {
        let key =
            types::PublishEventForTenantInputBodyIdempotencyKey::try_from("order-43").expect("key");
        client
            .publish_event_for_tenant()
            .body(
                types::PublishEventForTenantInputBody::builder()
                    .event_type("order.paid")
                    .data(json!({"order": 43}))
                    .idempotency_key(Some(key)),
            )
            .send()
            .await
    } else {
        client
            .publish_event()
            .project_id(project)
            .body(
                types::PublishEventInputBody::builder()
                    .event_type("order.paid")
                    .data(json!({"order": 43}))
                    .idempotency_key(Some(key)),
            )
            .send()
            .await
    };
    answer.expect("publish").into_inner()
}

/// `data` is arbitrary JSON kept as the serialized text it was published as, where a
/// NUL is the escape `\u0000`; so it is stored and delivered on every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_inside_event_data_is_stored_and_delivered() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        h.register("nul.data", &receiver.url("/nul")).await;
        let data = json!({"s": "a\u{0}b", "\u{0}key": ["\u{0}"]});
        let reply = h
            .call(
                Method::POST,
                "/events",
                Some(json!({"event_type": "nul.data", "data": data})),
            )
            .await;
        let published = reply.expect(202);
        assert_eq!(published["deliveries_started"], json!(1), "{}", reply.text);
        let event_id: Uuid = published["event_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("event_id");
        let delivered = delivery_of(&receiver, event_id).await;
        assert_eq!(delivered.json()["data"], data, "[{:?}]", h.backend);
        let attempts = h.attempts_until("/webhooks/nul.data/attempts", 1).await;
        assert_eq!(sent_body(&attempts[0])["data"], data, "[{:?}]", h.backend);
        h.finish().await;
    }
}
