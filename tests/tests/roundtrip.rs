//! The generated client against the generated router, over real loopback HTTP, with
//! the in-memory implementation behind the router: every operation once through the
//! client (typed results back), then malformed requests by hand, which the router must
//! answer as problem details without ever calling the implementation.

use std::collections::BTreeSet;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sonzai_webhooks_api::models;
use sonzai_webhooks_client::{types, Client, Error};
use sonzai_webhooks_tests::memory::{AttemptsQuery, MemoryApi, API_KEY, PROJECT_ID};
use sonzai_webhooks_tests::{http_client, serve_memory, Loopback};
use uuid::Uuid;

const PROBLEM_JSON: &str = "application/problem+json";

fn client(server: &Loopback) -> Client {
    Client::with_api_key(&server.api_base(), API_KEY).expect("client builds")
}

fn query(limit: i64, offset: i64, page_size: Option<i64>, cursor: Option<&str>) -> AttemptsQuery {
    AttemptsQuery {
        limit,
        offset,
        page_size,
        cursor: cursor.map(str::to_owned),
    }
}

/// The problem details of a failed client call, checked to be a 404 both on the wire
/// and in the body.
fn expect_not_found<T: std::fmt::Debug>(result: Result<T, Error<types::ErrorModel>>) {
    match result {
        Err(Error::ErrorResponse(response)) => {
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
            assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
            let problem = response.into_inner();
            assert_eq!(problem.status, Some(404));
            assert_eq!(problem.title.as_deref(), Some("Not Found"));
            assert_eq!(
                problem.schema.as_deref(),
                Some("/api/v1/schemas/ErrorModel.json")
            );
        }
        other => panic!("expected a 404 ErrorResponse, got {other:?}"),
    }
}

#[tokio::test]
async fn project_scoped_operations_round_trip() {
    let (api, server) = serve_memory().await.expect("server starts");
    let client = client(&server);

    let created = client
        .upsert_webhook()
        .project_id(PROJECT_ID)
        .event_type("session.end")
        .body(
            types::UpsertWebhookInputBody::builder()
                .webhook_url("https://receiver.test/first")
                .auth_header(Some(
                    "Bearer receiver-token"
                        .parse::<types::UpsertWebhookInputBodyAuthHeader>()
                        .expect("a valid auth header"),
                )),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::OK);
    let created = created.into_inner();
    assert!(created.success);
    let first_secret = created.signing_secret.expect("a new webhook has a secret");
    assert!(first_secret.starts_with("whsec_"), "{first_secret}");
    assert_eq!(
        api.secret(PROJECT_ID, "session.end").as_deref(),
        Some(first_secret.as_str())
    );
    assert_eq!(
        created.schema.as_deref(),
        Some("/api/v1/schemas/UpsertWebhookOutputBody.json")
    );

    let updated = client
        .upsert_webhook()
        .project_id(PROJECT_ID)
        .event_type("session.end")
        .body(types::UpsertWebhookInputBody::builder().webhook_url("https://receiver.test/second"))
        .send()
        .await
        .expect("update")
        .into_inner();
    assert!(updated.success);
    assert_eq!(
        updated.signing_secret, None,
        "an update never returns the secret"
    );

    client
        .upsert_webhook()
        .project_id(PROJECT_ID)
        .event_type("memory.created")
        .body(types::UpsertWebhookInputBody::builder().webhook_url("https://receiver.test/memory"))
        .send()
        .await
        .expect("create a second webhook");

    let listed = client
        .list_webhooks()
        .project_id(PROJECT_ID)
        .send()
        .await
        .expect("list")
        .into_inner();
    let webhooks = listed.webhooks.expect("webhooks is an array");
    let event_types: Vec<&str> = webhooks.iter().map(|w| w.event_type.as_str()).collect();
    assert_eq!(event_types, ["memory.created", "session.end"]);
    let session = &webhooks[1];
    assert_eq!(session.webhook_url, "https://receiver.test/second");
    assert_eq!(
        session.auth_header, None,
        "the update replaced the auth header"
    );
    assert_eq!(session.project_id, PROJECT_ID);
    assert!(session.is_active);
    assert!(session.created_at <= session.updated_at);

    for _ in 0..3 {
        let published = client
            .publish_event()
            .project_id(PROJECT_ID)
            .body(
                types::PublishEventInputBody::builder()
                    .event_type("session.end")
                    .data(json!({"session_id": "s-1", "turns": 3})),
            )
            .send()
            .await
            .expect("publish");
        assert_eq!(published.status(), StatusCode::ACCEPTED);
        assert_eq!(published.deliveries_started, 1);
        assert_ne!(published.event_id, Uuid::nil());
    }

    let all = client
        .list_delivery_attempts()
        .project_id(PROJECT_ID)
        .event_type("session.end")
        .send()
        .await
        .expect("attempts with defaults")
        .into_inner();
    let attempts = all.attempts.expect("attempts is an array");
    assert_eq!(attempts.len(), 3);
    assert_eq!(all.has_more, Some(false));
    assert_eq!(all.next_cursor, None);
    let attempt = &attempts[0];
    assert_eq!(attempt.project_id, PROJECT_ID);
    assert_eq!(attempt.event_type, "session.end");
    assert_eq!(attempt.webhook_url, "https://receiver.test/second");
    assert_eq!(attempt.response_code, 200);
    assert_eq!(attempt.status, "success");
    assert_eq!(attempt.attempt_number, 1);
    assert_eq!(attempt.response_body.as_deref(), Some("ok"));

    let paged = client
        .list_delivery_attempts()
        .project_id(PROJECT_ID)
        .event_type("session.end")
        .limit(std::num::NonZeroU64::new(2).expect("non-zero"))
        .offset(1)
        .send()
        .await
        .expect("attempts with limit and offset")
        .into_inner();
    let paged = paged.attempts.expect("attempts is an array");
    assert_eq!(paged.len(), 2);
    assert_eq!(paged[0].attempt_id, attempts[1].attempt_id);

    let cursor_page = client
        .list_delivery_attempts()
        .project_id(PROJECT_ID)
        .event_type("session.end")
        .page_size(std::num::NonZeroU64::new(1).expect("non-zero"))
        .cursor("1")
        .send()
        .await
        .expect("attempts with page_size and cursor")
        .into_inner();
    assert_eq!(cursor_page.attempts.as_ref().map(Vec::len), Some(1));
    assert_eq!(cursor_page.has_more, Some(true));
    assert_eq!(cursor_page.next_cursor.as_deref(), Some("2"));

    assert_eq!(
        api.attempts_queries(),
        [
            query(50, 0, None, None),
            query(2, 1, None, None),
            query(50, 0, Some(1), Some("1")),
        ],
        "the router parsed the paging inputs and applied the defaults"
    );

    let rotated = client
        .rotate_webhook_signing_secret()
        .project_id(PROJECT_ID)
        .event_type("session.end")
        .send()
        .await
        .expect("rotate")
        .into_inner();
    assert!(rotated.success);
    assert_ne!(rotated.signing_secret, first_secret);
    assert_eq!(
        api.secret(PROJECT_ID, "session.end").as_deref(),
        Some(rotated.signing_secret.as_str())
    );
    let graced = client
        .rotate_webhook_signing_secret()
        .project_id(PROJECT_ID)
        .event_type("session.end")
        .grace_seconds(3600)
        .send()
        .await
        .expect("rotate with a grace period")
        .into_inner();
    assert_ne!(graced.signing_secret, rotated.signing_secret);
    assert_eq!(api.grace_seconds(), [0, 3600]);

    let deleted = client
        .delete_webhook()
        .project_id(PROJECT_ID)
        .event_type("session.end")
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let () = deleted.into_inner();
    let remaining = client
        .list_webhooks()
        .project_id(PROJECT_ID)
        .send()
        .await
        .expect("list after delete")
        .into_inner();
    assert_eq!(remaining.webhooks.map(|w| w.len()), Some(1));

    expect_not_found(
        client
            .delete_webhook()
            .project_id(PROJECT_ID)
            .event_type("session.end")
            .send()
            .await,
    );

    // 3 upserts, 2 lists, 3 publishes, 3 attempt lists, 2 rotations, 2 deletes.
    assert_eq!(api.calls(), 15);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn tenant_scoped_operations_round_trip() {
    let (api, server) = serve_memory().await.expect("server starts");
    let client = client(&server);

    let created = client
        .upsert_webhook_for_tenant()
        .event_type("on_wakeup_ready")
        .body(
            types::UpsertWebhookForTenantInputBody::builder()
                .webhook_url("https://receiver.test/wakeup"),
        )
        .send()
        .await
        .expect("create")
        .into_inner();
    assert!(created.success);
    let first_secret = created.signing_secret.expect("a new webhook has a secret");

    let updated = client
        .upsert_webhook_for_tenant()
        .event_type("on_wakeup_ready")
        .body(
            types::UpsertWebhookForTenantInputBody::builder()
                .webhook_url("https://receiver.test/wakeup2")
                .auth_header(Some(
                    "Basic dTpw"
                        .parse::<types::UpsertWebhookForTenantInputBodyAuthHeader>()
                        .expect("a valid auth header"),
                )),
        )
        .send()
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.signing_secret, None);

    let listed = client
        .list_webhooks_for_tenant()
        .send()
        .await
        .expect("list")
        .into_inner();
    let webhooks = listed.webhooks.expect("webhooks is an array");
    assert_eq!(webhooks.len(), 1);
    assert_eq!(webhooks[0].event_type, "on_wakeup_ready");
    assert_eq!(webhooks[0].webhook_url, "https://receiver.test/wakeup2");
    assert_eq!(webhooks[0].auth_header.as_deref(), Some("Basic dTpw"));
    assert_eq!(
        webhooks[0].project_id, PROJECT_ID,
        "tenant routes act on the key's project"
    );

    let published = client
        .publish_event_for_tenant()
        .body(
            types::PublishEventForTenantInputBody::builder()
                .event_type("on_wakeup_ready")
                .data(json!(["any", "json", 1]))
                .idempotency_key(Some(
                    "evt-1"
                        .parse::<types::PublishEventForTenantInputBodyIdempotencyKey>()
                        .expect("a valid idempotency key"),
                )),
        )
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    assert_eq!(published.deliveries_started, 1);
    let nobody = client
        .publish_event_for_tenant()
        .body(
            types::PublishEventForTenantInputBody::builder()
                .event_type("memory.created")
                .data(json!(null)),
        )
        .send()
        .await
        .expect("publish to an event type nobody subscribed to")
        .into_inner();
    assert_eq!(nobody.deliveries_started, 0);

    let attempts = client
        .list_delivery_attempts_for_tenant()
        .event_type("on_wakeup_ready")
        .send()
        .await
        .expect("attempts")
        .into_inner();
    assert_eq!(attempts.attempts.map(|a| a.len()), Some(1));
    client
        .list_delivery_attempts_for_tenant()
        .event_type("on_wakeup_ready")
        .limit(std::num::NonZeroU64::new(500).expect("non-zero"))
        .offset(7)
        .page_size(std::num::NonZeroU64::new(25).expect("non-zero"))
        .cursor("0")
        .send()
        .await
        .expect("attempts with every paging input");
    assert_eq!(
        api.attempts_queries(),
        [query(50, 0, None, None), query(500, 7, Some(25), Some("0"))]
    );

    let rotated = client
        .rotate_webhook_signing_secret_for_tenant()
        .event_type("on_wakeup_ready")
        .grace_seconds(86_400)
        .send()
        .await
        .expect("rotate")
        .into_inner();
    assert_ne!(rotated.signing_secret, first_secret);
    client
        .rotate_webhook_signing_secret_for_tenant()
        .event_type("on_wakeup_ready")
        .send()
        .await
        .expect("rotate without a grace period");
    assert_eq!(api.grace_seconds(), [86_400, 0]);

    // Both route families reach the same project.
    let via_project = client
        .list_webhooks()
        .project_id(PROJECT_ID)
        .send()
        .await
        .expect("list through the project route")
        .into_inner();
    assert_eq!(via_project.webhooks.map(|w| w.len()), Some(1));

    let deleted = client
        .delete_webhook_for_tenant()
        .event_type("on_wakeup_ready")
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    expect_not_found(
        client
            .delete_webhook_for_tenant()
            .event_type("on_wakeup_ready")
            .send()
            .await,
    );
    expect_not_found(
        client
            .rotate_webhook_signing_secret_for_tenant()
            .event_type("on_wakeup_ready")
            .send()
            .await,
    );

    // 2 upserts, 2 lists, 2 publishes, 2 attempt lists, 3 rotations, 2 deletes.
    assert_eq!(api.calls(), 13);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn unknown_projects_and_webhooks_are_404_error_responses() {
    let (api, server) = serve_memory().await.expect("server starts");
    let client = client(&server);
    let other = Uuid::from_u128(42);

    expect_not_found(client.list_webhooks().project_id(other).send().await);
    expect_not_found(
        client
            .upsert_webhook()
            .project_id(other)
            .event_type("session.end")
            .body(types::UpsertWebhookInputBody::builder().webhook_url("https://receiver.test/x"))
            .send()
            .await,
    );
    expect_not_found(
        client
            .list_delivery_attempts()
            .project_id(other)
            .event_type("session.end")
            .send()
            .await,
    );
    expect_not_found(
        client
            .publish_event()
            .project_id(other)
            .body(
                types::PublishEventInputBody::builder()
                    .event_type("session.end")
                    .data(json!({})),
            )
            .send()
            .await,
    );
    expect_not_found(
        client
            .rotate_webhook_signing_secret()
            .project_id(PROJECT_ID)
            .event_type("never.registered")
            .send()
            .await,
    );
    assert_eq!(
        api.calls(),
        5,
        "these reached the implementation, which said 404"
    );
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn an_unknown_key_is_an_error_response_from_the_client_too() {
    let (api, server) = serve_memory().await.expect("server starts");
    let client = Client::with_api_key(&server.api_base(), "sk_test_wrong").expect("client");
    match client.list_webhooks_for_tenant().send().await {
        Err(Error::ErrorResponse(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
            assert_eq!(response.into_inner().status, Some(401));
        }
        other => panic!("expected a 401 ErrorResponse, got {other:?}"),
    }
    assert_eq!(api.calls(), 0);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn the_client_refuses_invalid_inputs_before_sending() {
    let (api, server) = serve_memory().await.expect("server starts");
    let client = client(&server);
    let long = "a".repeat(129);
    for event_type in ["bad type", "", long.as_str()] {
        match client
            .delete_webhook()
            .project_id(PROJECT_ID)
            .event_type(event_type)
            .send()
            .await
        {
            Err(Error::InvalidRequest(_)) => {}
            other => panic!("{event_type:?}: expected InvalidRequest, got {other:?}"),
        }
    }
    match client
        .upsert_webhook_for_tenant()
        .event_type("session.end")
        .body(types::UpsertWebhookForTenantInputBody::builder())
        .send()
        .await
    {
        Err(Error::InvalidRequest(message)) => {
            assert!(message.contains("webhook_url"), "{message}");
        }
        other => panic!("expected InvalidRequest for a missing webhook_url, got {other:?}"),
    }
    assert_eq!(api.calls(), 0, "nothing was sent");
    server.stop().await.expect("server stops");
}

// ---------------------------------------------------------------------------------
// Requests the generated client would refuse to build, sent by hand.
// ---------------------------------------------------------------------------------

/// What came back for one hand-made request.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    /// Checks the answer is problem details with `status`, that the body is an
    /// `ErrorModel` (strictly: unknown fields are refused) agreeing on the status, and
    /// returns the distinct `errors[].location`s.
    fn problem(&self, status: u16, case: &str) -> BTreeSet<String> {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{case}: status; body: {}",
            self.text()
        );
        assert_eq!(
            self.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            Some(PROBLEM_JSON),
            "{case}: content-type"
        );
        let model: models::ErrorModel = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{case}: not an ErrorModel ({e}): {}", self.text()));
        assert_eq!(model.status, Some(i64::from(status)), "{case}: body status");
        assert_eq!(
            model.schema.as_deref(),
            Some(models::ErrorModel::SCHEMA_LINK),
            "{case}"
        );
        model
            .errors
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.location.unwrap_or_default())
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Raw {
    http: reqwest::Client,
    server: Loopback,
}

impl Raw {
    async fn start() -> (std::sync::Arc<MemoryApi>, Raw) {
        let (api, server) = serve_memory().await.expect("server starts");
        let http = http_client().expect("http client");
        (api, Raw { http, server })
    }

    /// Sends `body` (if any) with `content_type` (if any) and the valid key (if
    /// `authorized`).
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
        authorized: bool,
    ) -> Answer {
        let mut request = self.http.request(method, self.server.url(path));
        if authorized {
            request = request.header(AUTHORIZATION, format!("Bearer {API_KEY}"));
        }
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("request completes");
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await.expect("response body").to_vec(),
        }
    }

    async fn put_json(&self, path: &str, body: &str) -> Answer {
        self.send(
            Method::PUT,
            path,
            Some("application/json"),
            Some(body.as_bytes().to_vec()),
            true,
        )
        .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None, None, true).await
    }
}

fn locations(expected: &[&str]) -> BTreeSet<String> {
    expected.iter().map(|s| s.to_string()).collect()
}

fn upsert_path() -> String {
    format!("/api/v1/projects/{PROJECT_ID}/webhooks/session.end")
}

fn attempts_path(query: &str) -> String {
    format!("/api/v1/projects/{PROJECT_ID}/webhooks/session.end/attempts?{query}")
}

#[tokio::test]
async fn invalid_bodies_are_422_naming_the_field() {
    let (api, raw) = Raw::start().await;
    let path = upsert_path();

    let cases: &[(&str, &str, &[&str])] = &[
        ("missing webhook_url", "{}", &["body.webhook_url"]),
        (
            "unknown field",
            r#"{"webhook_url":"https://x.test/h","bogus":1}"#,
            &["body.bogus"],
        ),
        (
            "webhook_url not a URI",
            r#"{"webhook_url":"not a url"}"#,
            &["body.webhook_url"],
        ),
        (
            "webhook_url of the wrong type",
            r#"{"webhook_url":17}"#,
            &["body.webhook_url"],
        ),
        ("not an object", r#"["https://x.test/h"]"#, &["body"]),
        (
            "webhook_url: null",
            r#"{"webhook_url":null}"#,
            &["body.webhook_url"],
        ),
        (
            "empty webhook_url",
            r#"{"webhook_url":""}"#,
            &["body.webhook_url"],
        ),
        (
            "auth_header of the wrong type",
            r#"{"webhook_url":"https://x.test/h","auth_header":false}"#,
            &["body.auth_header"],
        ),
    ];
    let too_long = format!(r#"{{"webhook_url":"https://x.test/{}"}}"#, "a".repeat(2048));
    let answer = raw.put_json(&path, &too_long).await;
    assert_eq!(
        answer.problem(422, "webhook_url over 2048 characters"),
        locations(&["body.webhook_url"])
    );
    for (case, body, expected) in cases {
        let answer = raw.put_json(&path, body).await;
        assert_eq!(answer.problem(422, case), locations(expected), "{case}");
    }

    // The tenant route and the publish route validate their bodies the same way.
    let tenant = raw.put_json("/api/v1/webhooks/session.end", "{}").await;
    assert_eq!(
        tenant.problem(422, "tenant upsert"),
        locations(&["body.webhook_url"])
    );
    let publish = raw
        .send(
            Method::POST,
            &format!("/api/v1/projects/{PROJECT_ID}/events"),
            Some("application/json"),
            Some(br#"{"event_type":"bad type","data":{}}"#.to_vec()),
            true,
        )
        .await;
    assert_eq!(
        publish.problem(422, "publish with a bad event_type"),
        locations(&["body.event_type"])
    );
    let no_data = raw
        .send(
            Method::POST,
            "/api/v1/events",
            Some("application/json"),
            Some(br#"{"event_type":"session.end"}"#.to_vec()),
            true,
        )
        .await;
    assert_eq!(
        no_data.problem(422, "publish without data"),
        locations(&["body.data"])
    );

    assert_eq!(api.calls(), 0, "no invalid body reached the implementation");
    raw.server.stop().await.expect("server stops");
}

#[tokio::test]
async fn secrets_in_invalid_bodies_are_not_echoed() {
    let (api, raw) = Raw::start().await;
    let answer = raw
        .put_json(
            &upsert_path(),
            &format!(
                r#"{{"webhook_url":"https://x.test/h","auth_header":"Bearer {}"}}"#,
                "s3cr3t".repeat(700)
            ),
        )
        .await;
    assert_eq!(
        answer.problem(422, "auth_header too long"),
        locations(&["body.auth_header"])
    );
    assert!(!answer.text().contains("s3cr3t"), "{}", answer.text());
    assert_eq!(api.calls(), 0);
    raw.server.stop().await.expect("server stops");
}

#[tokio::test]
async fn invalid_query_parameters_are_422_naming_the_parameter() {
    let (api, raw) = Raw::start().await;
    let cases: &[(&str, &[&str])] = &[
        ("limit=0", &["query.limit"]),
        ("limit=501", &["query.limit"]),
        ("limit=abc", &["query.limit"]),
        ("limit=1.5", &["query.limit"]),
        ("offset=-1", &["query.offset"]),
        ("page_size=0", &["query.page_size"]),
        ("page_size=501", &["query.page_size"]),
        ("cursor=", &["query.cursor"]),
        ("limit=0&offset=-1", &["query.limit", "query.offset"]),
    ];
    for (query, expected) in cases {
        let answer = raw.get(&attempts_path(query)).await;
        assert_eq!(answer.problem(422, query), locations(expected), "{query}");
    }
    let rotate = raw
        .send(
            Method::POST,
            "/api/v1/webhooks/session.end/rotate-secret?grace_seconds=86401",
            None,
            None,
            true,
        )
        .await;
    assert_eq!(
        rotate.problem(422, "grace_seconds above the maximum"),
        locations(&["query.grace_seconds"])
    );

    // The bounds themselves are accepted.
    let ok = raw.get(&attempts_path("limit=500&offset=0")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let ok = raw.get(&attempts_path("limit=1")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(
        api.attempts_queries(),
        [query(500, 0, None, None), query(1, 0, None, None)]
    );
    assert_eq!(api.calls(), 2, "only the two valid requests were passed on");
    raw.server.stop().await.expect("server stops");
}

#[tokio::test]
async fn invalid_path_parameters_are_422_naming_the_parameter() {
    let (api, raw) = Raw::start().await;
    let long = "a".repeat(129);
    let cases: Vec<(String, &[&str])> = vec![
        (
            "/api/v1/projects/not-a-uuid/webhooks".to_owned(),
            &["path.projectId"],
        ),
        (
            "/api/v1/projects/not-a-uuid/webhooks/session.end/attempts".to_owned(),
            &["path.projectId"],
        ),
        (
            format!("/api/v1/projects/{PROJECT_ID}/webhooks/bad%20type/attempts"),
            &["path.eventType"],
        ),
        (
            format!("/api/v1/projects/{PROJECT_ID}/webhooks/{long}/attempts"),
            &["path.eventType"],
        ),
        (
            "/api/v1/webhooks/bad%2Ftype/attempts".to_owned(),
            &["path.eventType"],
        ),
        (
            // `$` must not match before a trailing newline.
            "/api/v1/webhooks/session.end%0A/attempts".to_owned(),
            &["path.eventType"],
        ),
        (
            "/api/v1/projects/not-a-uuid/webhooks/bad!type/attempts".to_owned(),
            &["path.projectId", "path.eventType"],
        ),
    ];
    for (path, expected) in &cases {
        let answer = raw.get(path).await;
        assert_eq!(answer.problem(422, path), locations(expected), "{path}");
    }
    // A 128-character event type is still valid.
    let longest = raw
        .get(&format!(
            "/api/v1/projects/{PROJECT_ID}/webhooks/{}/attempts",
            "a".repeat(128)
        ))
        .await;
    assert_eq!(longest.status, StatusCode::OK, "{}", longest.text());
    assert_eq!(api.calls(), 1);
    raw.server.stop().await.expect("server stops");
}

#[tokio::test]
async fn several_problems_are_reported_at_once() {
    let (api, raw) = Raw::start().await;
    let answer = raw
        .put_json("/api/v1/projects/not-a-uuid/webhooks/session.end", "{}")
        .await;
    assert_eq!(
        answer.problem(422, "bad projectId and empty body"),
        locations(&["path.projectId", "body.webhook_url"])
    );
    let answer = raw
        .put_json(
            "/api/v1/projects/not-a-uuid/webhooks/bad%20type",
            r#"{"bogus":true}"#,
        )
        .await;
    assert_eq!(
        answer.problem(422, "every part wrong"),
        locations(&[
            "path.projectId",
            "path.eventType",
            "body.webhook_url",
            "body.bogus"
        ])
    );
    assert_eq!(api.calls(), 0);
    raw.server.stop().await.expect("server stops");
}

#[tokio::test]
async fn unreadable_bodies_are_400_413_415() {
    let (api, raw) = Raw::start().await;
    let path = upsert_path();

    let malformed = raw.put_json(&path, r#"{"webhook_url":"#).await;
    assert!(malformed.problem(400, "malformed JSON").is_empty());
    let empty = raw.put_json(&path, "").await;
    assert!(empty.problem(400, "empty body").is_empty());

    let text = raw
        .send(
            Method::PUT,
            &path,
            Some("text/plain"),
            Some(br#"{"webhook_url":"https://x.test/h"}"#.to_vec()),
            true,
        )
        .await;
    assert!(text.problem(415, "text/plain").is_empty());

    let padding = "a".repeat(300 * 1024);
    let oversized = raw
        .put_json(
            &path,
            &format!(r#"{{"webhook_url":"https://x.test/h","auth_header":"{padding}"}}"#),
        )
        .await;
    assert!(oversized.problem(413, "300 KiB body").is_empty());

    // A JSON media type with parameters, or a `+json` one, is JSON.
    let charset = raw
        .send(
            Method::PUT,
            &path,
            Some("application/json; charset=utf-8"),
            Some(br#"{"webhook_url":"https://x.test/h"}"#.to_vec()),
            true,
        )
        .await;
    assert_eq!(charset.status, StatusCode::OK, "{}", charset.text());
    assert_eq!(api.calls(), 1, "only the well-formed request was passed on");
    raw.server.stop().await.expect("server stops");
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_401_before_validation() {
    let (api, raw) = Raw::start().await;
    let checks = [
        (Method::GET, "/api/v1/webhooks".to_owned()),
        // Invalid inputs too: authentication comes first, so nothing is validated
        // (or revealed) for an anonymous caller.
        (
            Method::PUT,
            "/api/v1/projects/not-a-uuid/webhooks/bad%20type".to_owned(),
        ),
        (Method::GET, attempts_path("limit=0")),
    ];
    for (method, path) in &checks {
        let answer = raw
            .send(
                method.clone(),
                path,
                Some("application/json"),
                Some(b"{}".to_vec()),
                false,
            )
            .await;
        assert!(answer.problem(401, path).is_empty(), "{path}");
        assert_eq!(answer.headers[WWW_AUTHENTICATE], "Bearer", "{path}");
    }
    for wrong in [
        "Bearer sk_test_other",
        "Basic c2s6",
        "sk_test_roundtrip",
        "Bearer ",
    ] {
        let response = raw
            .http
            .get(raw.server.url("/api/v1/webhooks"))
            .header(AUTHORIZATION, wrong)
            .send()
            .await
            .expect("request completes");
        let answer = Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await.expect("body").to_vec(),
        };
        assert!(answer.problem(401, wrong).is_empty(), "{wrong}");
        assert_eq!(answer.headers[WWW_AUTHENTICATE], "Bearer", "{wrong}");
    }
    assert_eq!(api.calls(), 0);
    raw.server.stop().await.expect("server stops");
}

#[tokio::test]
async fn success_bodies_link_their_schema() {
    let (api, raw) = Raw::start().await;
    let created = raw
        .put_json(&upsert_path(), r#"{"webhook_url":"https://x.test/h"}"#)
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    assert_eq!(created.headers[CONTENT_TYPE], "application/json");
    let body = created.json();
    assert_eq!(
        body["$schema"],
        "/api/v1/schemas/UpsertWebhookOutputBody.json"
    );
    assert_eq!(body["success"], true);
    let parsed: models::UpsertWebhookOutputBody =
        serde_json::from_value(body).expect("an UpsertWebhookOutputBody");
    assert!(parsed.signing_secret.is_some());

    let listed = raw.get("/api/v1/webhooks").await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.headers[CONTENT_TYPE], "application/json");
    let body = listed.json();
    assert_eq!(
        body["$schema"],
        "/api/v1/schemas/ListWebhooksOutputBody.json"
    );
    let parsed: models::ListWebhooksOutputBody =
        serde_json::from_value(body).expect("a ListWebhooksOutputBody");
    assert_eq!(parsed.webhooks.map(|w| w.len()), Some(1));

    let attempts = raw.get(&attempts_path("")).await;
    assert_eq!(
        attempts.json()["$schema"],
        "/api/v1/schemas/ListDeliveryAttemptsOutputBody.json"
    );
    let rotated = raw
        .send(
            Method::POST,
            "/api/v1/webhooks/session.end/rotate-secret",
            None,
            None,
            true,
        )
        .await;
    assert_eq!(
        rotated.json()["$schema"],
        "/api/v1/schemas/RotateSigningSecretOutputBody.json"
    );
    let published = raw
        .send(
            Method::POST,
            "/api/v1/events",
            Some("application/json"),
            Some(br#"{"event_type":"session.end","data":{"k":1}}"#.to_vec()),
            true,
        )
        .await;
    assert_eq!(published.status, StatusCode::ACCEPTED);
    assert_eq!(
        published.json()["$schema"],
        "/api/v1/schemas/PublishEventOutputBody.json"
    );

    let deleted = raw
        .send(
            Method::DELETE,
            "/api/v1/webhooks/session.end",
            None,
            None,
            true,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(
        deleted.body.is_empty(),
        "204 has no body: {}",
        deleted.text()
    );

    let missing = raw
        .send(
            Method::DELETE,
            "/api/v1/webhooks/session.end",
            None,
            None,
            true,
        )
        .await;
    assert!(missing.problem(404, "delete twice").is_empty());
    assert_eq!(api.calls(), 7);
    raw.server.stop().await.expect("server stops");
}

/// Input bodies accept and ignore `$schema` (as `openapi.json` says), including the relative link
/// the API itself writes into the bodies it serves.
#[tokio::test]
async fn input_bodies_accept_a_schema_link() {
    let (api, raw) = Raw::start().await;
    for link in [
        "https://api.example.test/api/v1/schemas/UpsertWebhookInputBody.json",
        "/api/v1/schemas/UpsertWebhookInputBody.json",
    ] {
        let answer = raw
            .put_json(
                &upsert_path(),
                &json!({"$schema": link, "webhook_url": "https://x.test/h"}).to_string(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{link}: {}", answer.text());
    }
    assert_eq!(api.calls(), 2);
    raw.server.stop().await.expect("server stops");
}

#[tokio::test]
async fn resend_round_trips_on_both_routes() {
    let (api, server) = serve_memory().await.expect("server starts");
    let client = client(&server);
    client
        .upsert_webhook_for_tenant()
        .event_type("session.end")
        .body(types::UpsertWebhookForTenantInputBody::builder().webhook_url("https://r.test/h"))
        .send()
        .await
        .expect("upsert");
    let published = client
        .publish_event_for_tenant()
        .body(
            types::PublishEventForTenantInputBody::builder()
                .event_type("session.end")
                .data(json!({"n": 1})),
        )
        .send()
        .await
        .expect("publish")
        .into_inner();

    let resent = client
        .resend_event()
        .project_id(PROJECT_ID)
        .event_type("session.end")
        .event_id(published.event_id)
        .send()
        .await
        .expect("resend");
    assert_eq!(resent.status(), StatusCode::ACCEPTED);
    assert_eq!(resent.event_id, published.event_id);
    let resent = client
        .resend_event_for_tenant()
        .event_type("session.end")
        .event_id(published.event_id)
        .send()
        .await
        .expect("resend for tenant");
    assert_eq!(resent.status(), StatusCode::ACCEPTED);
    assert_eq!(resent.event_id, published.event_id);

    let attempts = client
        .list_delivery_attempts_for_tenant()
        .event_type("session.end")
        .send()
        .await
        .expect("attempts")
        .into_inner()
        .attempts
        .expect("attempts is an array");
    let triggers: Vec<Option<&str>> = attempts.iter().map(|a| a.trigger.as_deref()).collect();
    assert_eq!(
        triggers,
        [Some("resend"), Some("resend"), Some("publish")],
        "newest first"
    );

    expect_not_found(
        client
            .resend_event_for_tenant()
            .event_type("session.end")
            .event_id(Uuid::from_u128(7))
            .send()
            .await,
    );
    expect_not_found(
        client
            .resend_event()
            .project_id(PROJECT_ID)
            .event_type("never.registered")
            .event_id(published.event_id)
            .send()
            .await,
    );
    assert_eq!(api.calls(), 7);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn resend_with_an_invalid_event_id_is_422() {
    let (api, raw) = Raw::start().await;
    let cases: Vec<(String, &[&str])> = vec![
        (
            "/api/v1/webhooks/session.end/events/not-a-uuid/resend".to_owned(),
            &["path.eventId"],
        ),
        (
            format!("/api/v1/projects/{PROJECT_ID}/webhooks/bad!type/events/x/resend"),
            &["path.eventType", "path.eventId"],
        ),
    ];
    for (path, expected) in &cases {
        let answer = raw.send(Method::POST, path, None, None, true).await;
        assert_eq!(answer.problem(422, path), locations(expected), "{path}");
    }
    assert_eq!(
        api.calls(),
        0,
        "invalid requests never reach the implementation"
    );
    raw.server.stop().await.expect("server stops");
}

#[tokio::test]
async fn resend_answers_202_linking_its_schema() {
    let (_api, raw) = Raw::start().await;
    raw.put_json(
        "/api/v1/webhooks/session.end",
        r#"{"webhook_url":"https://x.test/h"}"#,
    )
    .await;
    let published = raw
        .send(
            Method::POST,
            "/api/v1/events",
            Some("application/json"),
            Some(br#"{"event_type":"session.end","data":{}}"#.to_vec()),
            true,
        )
        .await
        .json();
    let event_id = published["event_id"].as_str().expect("event_id");
    let resent = raw
        .send(
            Method::POST,
            &format!("/api/v1/webhooks/session.end/events/{event_id}/resend"),
            None,
            None,
            true,
        )
        .await;
    assert_eq!(resent.status, StatusCode::ACCEPTED, "{}", resent.text());
    assert_eq!(resent.headers[CONTENT_TYPE], "application/json");
    let body = resent.json();
    assert_eq!(body["$schema"], models::ResendEventOutputBody::SCHEMA_LINK);
    assert_eq!(body["event_id"], event_id);
    let _: models::ResendEventOutputBody =
        serde_json::from_value(body).expect("a ResendEventOutputBody");
    raw.server.stop().await.expect("server stops");
}

#[tokio::test]
async fn recovery_round_trips_on_both_routes_with_both_success_statuses() {
    let (api, server) = serve_memory().await.expect("server starts");
    let client = client(&server);
    client
        .upsert_webhook_for_tenant()
        .event_type("session.end")
        .body(types::UpsertWebhookForTenantInputBody::builder().webhook_url("https://r.test/h"))
        .send()
        .await
        .expect("upsert");
    for n in 0..2 {
        client
            .publish_event_for_tenant()
            .body(
                types::PublishEventForTenantInputBody::builder()
                    .event_type("session.end")
                    .data(json!({"n": n})),
            )
            .send()
            .await
            .expect("publish");
    }
    let since = chrono::Utc::now() - chrono::Duration::hours(1);

    // A dry run answers 200, a recovery 202: the router writes the status the
    // implementation chose, and the client reads either into `Recovery`.
    let dry = client
        .recover_webhook()
        .project_id(PROJECT_ID)
        .event_type("session.end")
        .body(
            types::RecoverWebhookInputBody::builder()
                .since(since)
                .dry_run(true),
        )
        .send()
        .await
        .expect("dry run");
    assert_eq!(dry.status(), StatusCode::OK);
    assert_eq!((dry.status.as_str(), dry.matched), ("dry_run", 2));
    let include: Vec<&str> = dry.include.iter().map(|k| k.as_str()).collect();
    assert_eq!(include, ["failed"], "the default");
    let started = client
        .recover_webhook_for_tenant()
        .event_type("session.end")
        .body(
            types::RecoverWebhookInputBody::builder()
                .since(since)
                .include(vec!["missed".parse().unwrap(), "failed".parse().unwrap()]),
        )
        .send()
        .await
        .expect("recover");
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    assert_eq!(
        started.schema.as_deref(),
        Some("/api/v1/schemas/Recovery.json")
    );
    let id = started.recovery_id;
    assert_eq!(started.include.len(), 2);

    let got = client
        .get_recovery()
        .project_id(PROJECT_ID)
        .recovery_id(id)
        .send()
        .await
        .expect("get");
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.recovery_id, id);
    let got = client
        .get_recovery_for_tenant()
        .recovery_id(id)
        .send()
        .await
        .expect("get for tenant");
    assert_eq!(got.queued, 2);
    let cancelled = client
        .cancel_recovery()
        .project_id(PROJECT_ID)
        .recovery_id(id)
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    let cancelled = client
        .cancel_recovery_for_tenant()
        .recovery_id(id)
        .send()
        .await
        .expect("cancel for tenant");
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    expect_not_found(
        client
            .get_recovery_for_tenant()
            .recovery_id(Uuid::from_u128(9))
            .send()
            .await,
    );
    expect_not_found(
        client
            .recover_webhook()
            .project_id(PROJECT_ID)
            .event_type("never.registered")
            .body(types::RecoverWebhookInputBody::builder().since(since))
            .send()
            .await,
    );
    assert_eq!(api.calls(), 11);
    server.stop().await.expect("server stops");
}

#[tokio::test]
async fn portal_sessions_round_trip_with_and_without_a_body() {
    let (_api, server) = serve_memory().await.expect("server starts");
    let client = client(&server);
    let made = client
        .create_portal_session()
        .project_id(PROJECT_ID)
        .body(types::CreatePortalSessionInputBody::builder().ttl_seconds(120))
        .send()
        .await
        .expect("create");
    assert_eq!(made.status(), StatusCode::CREATED);
    assert_eq!(
        made.schema.as_deref(),
        Some("/api/v1/schemas/PortalSession.json")
    );
    assert!(made.url.ends_with("ttl=120"), "{}", made.url);
    let made = client
        .create_portal_session_for_tenant()
        .body(types::CreatePortalSessionInputBody::builder())
        .send()
        .await
        .expect("create for tenant");
    assert!(made.url.ends_with("ttl=3600"), "the default: {}", made.url);

    // The body may be left out entirely: an empty POST reads as `{}`.
    let empty = http_client()
        .expect("http client")
        .post(server.url("/api/v1/portal-sessions"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(empty.status(), reqwest::StatusCode::CREATED);
    let body: Value = empty.json().await.expect("json");
    assert!(
        body["url"].as_str().unwrap().ends_with("ttl=3600"),
        "{body}"
    );

    let too_long = client
        .create_portal_session_for_tenant()
        .body(types::CreatePortalSessionInputBody::builder().ttl_seconds(86_401))
        .send()
        .await;
    match too_long {
        Err(Error::ErrorResponse(problem)) => {
            assert_eq!(problem.status(), StatusCode::UNPROCESSABLE_ENTITY);
            let locations: Vec<_> = problem
                .errors
                .iter()
                .flatten()
                .filter_map(|e| e.location.clone())
                .collect();
            assert_eq!(locations, ["body.ttl_seconds"]);
        }
        other => panic!("expected 422, got {other:?}"),
    }
    expect_not_found(
        client
            .create_portal_session()
            .project_id(Uuid::from_u128(9))
            .body(types::CreatePortalSessionInputBody::builder())
            .send()
            .await,
    );
}
