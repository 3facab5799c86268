//! Rotating a signing secret: the new secret signs from then on.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_answers_a_new_secret_that_signs_from_then_on() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let project = h.project();
        let created = h.register("session.end", &receiver.url("/hook")).await;

        let rotated = h
            .client()
            .rotate_webhook_signing_secret()
            .project_id(project)
            .event_type("session.end")
            .send()
            .await
            .expect("rotate")
            .into_inner();
        assert!(rotated.success);
        assert_secret_shape(&rotated.signing_secret);
        assert_ne!(rotated.signing_secret, created);

        let reply = h
            .call(Method::POST, "/webhooks/session.end/rotate-secret", None)
            .await;
        let current = reply.expect(200)["signing_secret"]
            .as_str()
            .expect("signing_secret")
            .to_owned();
        assert_secret_shape(&current);
        assert_ne!(current, rotated.signing_secret);
        assert_ne!(current, created);

        // The old secrets stop signing at once.
        let published = h.publish("session.end", json!({"after": "rotation"})).await;
        let delivery = delivery_of(&receiver, published.event_id).await;
        let signature = delivery
            .header("sonzai-signature")
            .expect("Sonzai-Signature");
        assert_eq!(signature.matches("v1=").count(), 1, "{signature}");
        Verifier::new(&current)
            .unwrap()
            .verify_sonzai(signature, &delivery.body)
            .expect("the new secret signs");
        for old in [&created, &rotated.signing_secret] {
            assert!(
                Verifier::new(old)
                    .unwrap()
                    .verify_sonzai(signature, &delivery.body)
                    .is_err(),
                "an old secret still signs after a rotation without grace"
            );
        }

        // With a grace period both secrets sign (extension).
        let graced = h
            .client()
            .rotate_webhook_signing_secret_for_tenant()
            .event_type("session.end")
            .grace_seconds(60)
            .send()
            .await
            .expect("rotate with grace")
            .into_inner();
        let published = h.publish("session.end", json!({"during": "grace"})).await;
        let delivery = delivery_of(&receiver, published.event_id).await;
        let signature = delivery
            .header("sonzai-signature")
            .expect("Sonzai-Signature");
        for secret in [&graced.signing_secret, &current] {
            Verifier::new(secret)
                .unwrap()
                .verify_sonzai(signature, &delivery.body)
                .unwrap_or_else(|e| panic!("during grace every secret signs: {e}"));
        }

        // Unknown webhook: 404 on both routes.
        let (status, problem) = problem_of(
            h.client()
                .rotate_webhook_signing_secret()
                .project_id(project)
                .event_type("never.registered")
                .send()
                .await,
        );
        assert_eq!((status, problem.status), (404, Some(404)));
        h.call(
            Method::POST,
            "/webhooks/never.registered/rotate-secret",
            None,
        )
        .await
        .expect(404);

        // grace_seconds is bounded to 0..=86400.
        for bad in ["86401", "-1", "soon"] {
            h.call(
                Method::POST,
                &format!(
                    "/projects/{project}/webhooks/session.end/rotate-secret?grace_seconds={bad}"
                ),
                None,
            )
            .await
            .expect_invalid("query.grace_seconds");
        }
        let (status, problem) = problem_of(
            h.client()
                .rotate_webhook_signing_secret()
                .project_id(project)
                .event_type("session.end")
                .grace_seconds(86_401)
                .send()
                .await,
        );
        assert_eq!(status, 422);
        assert!(problem
            .errors
            .iter()
            .flatten()
            .any(|e| e.location.as_deref() == Some("query.grace_seconds")));
        h.call(
            Method::POST,
            "/webhooks/session.end/rotate-secret?grace_seconds=86400",
            None,
        )
        .await
        .expect(200);
        h.finish().await;
    }
}
