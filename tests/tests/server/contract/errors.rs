//! Error answers: problem bodies naming each invalid field, NUL in string inputs,
//! undeclared query parameters, methods a path lacks, `$schema` links, ASCII-only
//! problem bodies.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_problems_naming_each_field() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let auth = format!("Bearer {}", h.key());
        let (harness, authorization) = (&h, auth.as_str());
        let put = move |path: &'static str, body: &'static str| {
            harness.raw(
                Some(authorization),
                Method::PUT,
                path,
                Some(body.as_bytes().to_vec()),
            )
        };
        put("/webhooks/a.b", r#"{"webhook_url": "#)
            .await
            .expect(400);
        put("/webhooks/a.b", "{}")
            .await
            .expect_invalid("body.webhook_url");
        put("/webhooks/a.b", r#"{"webhook_url": 5}"#)
            .await
            .expect_invalid("body.webhook_url");
        let too_long = format!("http://127.0.0.1:9/{}", "u".repeat(2048));
        for url in [
            "ftp://127.0.0.1/x",
            "not a url",
            "/relative",
            "",
            too_long.as_str(),
        ] {
            h.call(
                Method::PUT,
                "/webhooks/a.b",
                Some(json!({"webhook_url": url})),
            )
            .await
            .expect_invalid("body.webhook_url");
        }
        let unknown = put(
            "/webhooks/a.b",
            r#"{"webhook_url": "http://127.0.0.1:9/x", "nope": 1}"#,
        )
        .await;
        unknown.expect(422);
        assert!(
            unknown.locations().iter().any(|l| l.contains("nope")),
            "{}",
            unknown.text
        );

        // The delivery credentials are a secret: not echoed when refused.
        let long_secret = "Bearer hook-credential-".to_owned() + &"s".repeat(4096);
        let refused = h
            .call(
                Method::PUT,
                "/webhooks/a.b",
                Some(json!({"webhook_url": "http://127.0.0.1:9/x", "auth_header": long_secret})),
            )
            .await;
        refused.expect_invalid("body.auth_header");
        assert!(
            !refused.text.contains("hook-credential"),
            "{}",
            refused.text
        );
        let refused = h
            .call(
                Method::PUT,
                "/webhooks/a.b",
                Some(json!({"webhook_url": "http://127.0.0.1:9/x", "auth_header": "Bearer hook-credential\n"})),
            )
            .await;
        refused.expect_invalid("body.auth_header");
        assert!(
            !refused.text.contains("hook-credential"),
            "{}",
            refused.text
        );

        put("/webhooks/a.b", "").await.expect(400);
        h.raw_typed(
            Some(authorization),
            Method::PUT,
            "/webhooks/a.b",
            Some((
                "text/plain",
                br#"{"webhook_url": "http://127.0.0.1:9/x"}"#.to_vec(),
            )),
        )
        .await
        .expect(415);

        h.call(Method::GET, "/projects/not-a-uuid/webhooks", None)
            .await
            .expect_invalid("path.projectId");
        for (query, location) in [
            ("limit=abc", "query.limit"),
            ("limit=1.5", "query.limit"),
            ("offset=9223372036854775808", "query.offset"),
            ("cursor=", "query.cursor"),
        ] {
            h.call(
                Method::GET,
                &format!("/webhooks/a.b/attempts?{query}"),
                None,
            )
            .await
            .expect_invalid(location);
        }
        let far = h
            .call(
                Method::GET,
                "/webhooks/a.b/attempts?offset=9223372036854775807",
                None,
            )
            .await;
        assert_eq!(far.expect(200)["attempts"], json!([]), "{}", far.text);
        let too_long = "e".repeat(129);
        for event_type in ["bad%20event", "bad%2Fslash", too_long.as_str()] {
            h.call(
                Method::GET,
                &format!("/webhooks/{event_type}/attempts"),
                None,
            )
            .await
            .expect_invalid("path.eventType");
        }
        h.call(
            Method::GET,
            &format!("/webhooks/{}/attempts", "e".repeat(128)),
            None,
        )
        .await
        .expect(200);

        // One entry per problem.
        let many = h
            .raw(
                Some(&auth),
                Method::PUT,
                "/projects/not-a-uuid/webhooks/bad%20event",
                Some(b"{}".to_vec()),
            )
            .await;
        many.expect(422);
        let locations: BTreeSet<String> = many.locations().into_iter().collect();
        for location in ["path.projectId", "path.eventType", "body.webhook_url"] {
            assert!(
                locations.contains(location),
                "{location} missing: {}",
                many.text
            );
        }

        let published = h
            .call(Method::POST, "/events", Some(json!({"data": {}})))
            .await;
        published.expect_invalid("body.event_type");
        h.call(Method::POST, "/events", Some(json!({"event_type": "a.b"})))
            .await
            .expect_invalid("body.data");
        h.call(
            Method::POST,
            "/events",
            Some(json!({"event_type": "a.b", "data": {}, "idempotency_key": "k".repeat(256)})),
        )
        .await
        .expect_invalid("body.idempotency_key");
        h.call(
            Method::POST,
            "/events",
            Some(json!({"event_type": "bad event", "data": {}})),
        )
        .await
        .expect_invalid("body.event_type");
        let unknown = h
            .call(
                Method::POST,
                "/events",
                Some(json!({"event_type": "a.b", "data": {}, "extra": 1})),
            )
            .await;
        unknown.expect(422);
        assert!(
            unknown.locations().iter().any(|l| l.contains("extra")),
            "{}",
            unknown.text
        );
        h.call(Method::GET, "/no/such/route", None)
            .await
            .expect(404);

        // Input bodies accept and ignore a `$schema` link, relative or absolute.
        for link in [
            "/api/v1/schemas/UpsertWebhookForTenantInputBody.json",
            "https://example.com/schemas/UpsertWebhookForTenantInputBody.json",
        ] {
            h.call(
                Method::PUT,
                "/webhooks/with.schema",
                Some(json!({"$schema": link, "webhook_url": "http://127.0.0.1:9/x"})),
            )
            .await
            .expect(200);
        }
        h.call(
            Method::POST,
            "/events",
            Some(json!({"$schema": "/api/v1/schemas/PublishEventForTenantInputBody.json", "event_type": "a.b", "data": null})),
        )
        .await
        .expect(202);
        h.call(Method::DELETE, "/webhooks/with.schema", None)
            .await
            .expect(204);

        let list = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(
            list.expect(200)["webhooks"],
            json!([]),
            "a refused request created something"
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_path_does_not_have_is_a_problem() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        // `raw` checks that each answer is a problem+json ErrorModel, as every error is;
        // RFC 9110 also requires a 405 to list what the path allows.
        for (method, path, body, allowed) in [
            (Method::PATCH, "/webhooks", None, "GET"),
            (Method::POST, "/webhooks/a.b", Some(json!({})), "PUT"),
        ] {
            let reply = h.call(method, path, body).await;
            reply.expect(405);
            let allow = reply
                .headers
                .get(reqwest::header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(allow.contains(allowed), "{path}: Allow is {allow:?}");
        }
        h.finish().await;
    }
}

#[test]
fn schema_links_are_uri_references_checked_strictly() {
    let c = contract();
    // What every answer carries: a path on the server, not an absolute URI.
    assert!(c
        .violations(
            "ListWebhooksOutputBody",
            &json!({"$schema": "/api/v1/schemas/ListWebhooksOutputBody.json", "webhooks": []})
        )
        .is_empty());
    assert!(c
        .violations(
            "ErrorModel",
            &json!({"$schema": "/api/v1/schemas/ErrorModel.json", "status": 404})
        )
        .is_empty());
    // The format is still checked: a value that is no URI reference at all breaks it.
    assert!(!c
        .violations(
            "ListWebhooksOutputBody",
            &json!({"$schema": "not a \\ reference", "webhooks": []})
        )
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_any_string_input_is_422_on_every_backend() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let url = "http://127.0.0.1:9/x";
        for (body, location) in [
            (
                json!({"webhook_url": "http://127.0.0.1:9/a\u{0}b"}),
                "body.webhook_url",
            ),
            (
                json!({"webhook_url": url, "auth_header": "Bearer a\u{0}b"}),
                "body.auth_header",
            ),
            (
                json!({"$schema": "x\u{0}", "webhook_url": url}),
                "body.$schema",
            ),
        ] {
            let reply = h.call(Method::PUT, "/webhooks/nul.test", Some(body)).await;
            reply.expect_invalid(location);
            assert!(
                message_at(&reply, location).contains("U+0000"),
                "[{:?}] {}",
                h.backend,
                reply.text
            );
        }
        let project = h.project();
        for path in [
            format!("/projects/{project}/webhooks/nul.test"),
            "/webhooks/nul.test".to_owned(),
        ] {
            h.call(
                Method::PUT,
                &path,
                Some(json!({"webhook_url": "http://127.0.0.1:9/a\u{0}"})),
            )
            .await
            .expect_invalid("body.webhook_url");
        }
        for body in [
            json!({"event_type": "nul.test", "data": {}, "idempotency_key": "k\u{0}"}),
            json!({"event_type": "nul.test", "data": {}, "idempotency_key": "\u{0}"}),
        ] {
            for path in ["/events".to_owned(), format!("/projects/{project}/events")] {
                h.call(Method::POST, &path, Some(body.clone()))
                    .await
                    .expect_invalid("body.idempotency_key");
            }
        }
        h.call(
            Method::POST,
            "/events",
            Some(json!({"event_type": "nul\u{0}", "data": {}})),
        )
        .await
        .expect_invalid("body.event_type");
        for (method, path, body) in [
            (
                Method::PUT,
                "/webhooks/a%00b",
                Some(json!({"webhook_url": url})),
            ),
            (Method::DELETE, "/webhooks/a%00b", None),
            (Method::GET, "/webhooks/a%00b/attempts", None),
            (Method::GET, "/webhooks/%00/attempts", None),
            (Method::POST, "/webhooks/a%00b/rotate-secret", None),
        ] {
            h.call(method, path, body)
                .await
                .expect_invalid("path.eventType");
        }
        let reply = h
            .call(
                Method::GET,
                "/webhooks/nul.test/attempts?cursor=a%00b",
                None,
            )
            .await;
        reply.expect_invalid("query.cursor");
        assert!(message_at(&reply, "query.cursor").contains("U+0000"));

        let list = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(
            list.expect(200)["webhooks"],
            json!([]),
            "[{:?}] a refused request created something",
            h.backend
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_and_repeated_query_parameters_are_422() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        for (method, path, location) in [
            (Method::GET, "/webhooks?limit=5".to_owned(), "query.limit"),
            (
                Method::GET,
                format!("/projects/{project}/webhooks?x=1"),
                "query.x",
            ),
            (
                Method::GET,
                "/webhooks/a.b/attempts?limt=5".to_owned(),
                "query.limt",
            ),
            (
                Method::GET,
                "/webhooks/a.b/attempts?limit=5&limit=500".to_owned(),
                "query.limit",
            ),
            (
                Method::GET,
                "/webhooks/a.b/attempts?cursor=a&cursor=b".to_owned(),
                "query.cursor",
            ),
            (
                Method::POST,
                "/webhooks/a.b/rotate-secret?grace_seconds=1&grace_seconds=2".to_owned(),
                "query.grace_seconds",
            ),
            (
                Method::DELETE,
                "/webhooks/a.b?force=true".to_owned(),
                "query.force",
            ),
        ] {
            let reply = h.call(method, &path, None).await;
            reply.expect_invalid(location);
            assert_eq!(
                reply.locations().len(),
                1,
                "[{:?}] one entry per problem: {}",
                h.backend,
                reply.text
            );
        }
        // Declared parameters, once each, are fine.
        h.call(
            Method::GET,
            "/webhooks/a.b/attempts?limit=5&offset=0&page_size=5",
            None,
        )
        .await
        .expect(200);
        h.finish().await;
    }
}

/// Found by contract fuzzing: a client that guesses the charset of a problem body
/// (`application/problem+json` has no UTF-8 default in Python `requests`) misread an
/// echoed non-ASCII value. Problem bodies are ASCII, with `\u` escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_bodies_echo_non_ascii_values_as_ascii_escapes() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let value = "Ä\t\u{19}\u{8f895}竈£\u{2fb0a}\u{92}\\\u{91}";
        let reply = h
            .call(
                Method::POST,
                "/events",
                Some(json!({"event_type": value, "data": null})),
            )
            .await;
        reply.expect_invalid("body.event_type");
        assert!(reply.text.is_ascii(), "[{:?}] {}", h.backend, reply.text);
        assert_eq!(reply.json["errors"][0]["value"], json!(value));
        h.finish().await;
    }
}
