//! Delivery end to end: a server in this process, real receivers on loopback, and for
//! each way a delivery can go (success, retries, timeout, refused connection,
//! redirect, receiver credentials, auto-disable, rotation, deletion, the SSRF guard)
//! what the receiver saw and what the attempts API recorded. Every test runs on
//! SQLite and, when `TEST_DATABASE_URL` is set, on PostgreSQL.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::Method;
use base64::Engine as _;
use serde_json::json;
use sonzai_webhooks_client::{types, Error as ClientError};
use sonzai_webhooks_verify::Verifier;

use crate::support::{self, Answer, Received, Receiver, TestDb, TestServer};

/// Upper bound for anything that should happen within a retry schedule or two.
pub(super) const WAIT: Duration = Duration::from_secs(10);
pub(super) const POLL: Duration = Duration::from_millis(25);

/// Sum of the test retry schedule (`100ms,200ms,400ms`) plus slack: after this long
/// without a new request, none is coming.
pub(super) const PAST_SCHEDULE: Duration = Duration::from_millis(1500);

type Attempt = types::WebhookDeliveryAttempt;

/// Creates or replaces the webhook of `event_type`; answers the signing secret when
/// the webhook was created.
pub(super) async fn upsert(
    server: &TestServer,
    event_type: &str,
    url: &str,
    auth_header: Option<&str>,
) -> Option<String> {
    server
        .client
        .upsert_webhook_for_tenant()
        .event_type(event_type)
        .body(upsert_body(url, auth_header))
        .send()
        .await
        .expect("upsert webhook")
        .into_inner()
        .signing_secret
}

fn upsert_body(url: &str, auth_header: Option<&str>) -> types::UpsertWebhookForTenantInputBody {
    types::UpsertWebhookForTenantInputBody {
        auth_header: auth_header.map(|h| h.try_into().expect("auth header")),
        schema: None,
        webhook_url: url.try_into().expect("webhook url"),
        rate_limit: None,
        ordered: false,
    }
}

pub(super) async fn publish(
    server: &TestServer,
    event_type: &str,
    data: serde_json::Value,
) -> types::PublishEventOutputBody {
    server
        .client
        .publish_event_for_tenant()
        .body(
            types::PublishEventForTenantInputBody::builder()
                .event_type(event_type)
                .data(data),
        )
        .send()
        .await
        .expect("publish event")
        .into_inner()
}

async fn rotate(server: &TestServer, event_type: &str, grace_seconds: Option<i64>) -> String {
    let mut request = server
        .client
        .rotate_webhook_signing_secret_for_tenant()
        .event_type(event_type);
    if let Some(grace) = grace_seconds {
        request = request.grace_seconds(grace);
    }
    let answer = request.send().await.expect("rotate secret").into_inner();
    assert!(answer.success);
    answer.signing_secret
}

/// The recorded attempts of `event_type`, oldest first.
pub(super) async fn attempts(server: &TestServer, event_type: &str) -> Vec<Attempt> {
    let mut list = server
        .client
        .list_delivery_attempts_for_tenant()
        .event_type(event_type)
        .limit(500u64)
        .send()
        .await
        .expect("list attempts")
        .into_inner()
        .attempts
        .unwrap_or_default();
    // The API lists newest first.
    list.reverse();
    list
}

/// Waits until at least `n` attempts of `event_type` are recorded (they are written
/// in batches after the receiver answered) and returns them, oldest first.
pub(super) async fn wait_attempts(server: &TestServer, event_type: &str, n: usize) -> Vec<Attempt> {
    let found = support::poll_until(WAIT, POLL, move || async move {
        let list = attempts(server, event_type).await;
        (list.len() >= n).then_some(list)
    })
    .await;
    match found {
        Some(list) => list,
        None => panic!(
            "fewer than {n} attempts of {event_type} recorded within {WAIT:?}: {:#?}",
            attempts(server, event_type).await
        ),
    }
}

pub(super) async fn webhook(server: &TestServer, event_type: &str) -> Option<types::Webhook> {
    server
        .client
        .list_webhooks_for_tenant()
        .send()
        .await
        .expect("list webhooks")
        .into_inner()
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .find(|w| w.event_type == event_type)
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.header(name)
        .unwrap_or_else(|| panic!("delivery without a {name} header: {:?}", r.headers))
}

/// The `v1=` entries of a `Sonzai-Signature` value, in order, and its timestamp.
fn sonzai_entries(value: &str) -> (String, Vec<String>) {
    let mut timestamp = None;
    let mut entries = Vec::new();
    for part in value.split(',') {
        if let Some(t) = part.strip_prefix("t=") {
            timestamp = Some(t.to_owned());
        } else if let Some(v1) = part.strip_prefix("v1=") {
            entries.push(v1.to_owned());
        }
    }
    (timestamp.expect("t= in Sonzai-Signature"), entries)
}

/// A valid secret that the server never issued, for negative controls.
fn unrelated_secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    )
}

fn verifier(secret: &str) -> Verifier {
    Verifier::new(secret).expect("secret accepted by the verify crate")
}

/// Checks both signature schemes of a delivery against `secret`.
pub(super) fn verifies_with(r: &Received, secret: &str) -> bool {
    let v = verifier(secret);
    let sonzai = v
        .verify_sonzai(header(r, "sonzai-signature"), &r.body)
        .is_ok();
    let standard = v
        .verify_standard(
            header(r, "webhook-id"),
            header(r, "webhook-timestamp"),
            header(r, "webhook-signature"),
            &r.body,
        )
        .is_ok();
    assert_eq!(
        sonzai, standard,
        "the two signature schemes disagree about secret validity"
    );
    sonzai
}

pub(super) fn backend_note(db: &TestDb) -> String {
    format!("{:?}", db.backend)
}

// 1 ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_signed_and_its_attempt_records_the_exact_bytes() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let server = TestServer::start(&db).await;
        let (receiver, log) = Receiver::start_logging().await;
        let secret = upsert(&server, "session.end", &receiver.url("/hooks/sonzai"), None)
            .await
            .expect("a new webhook answers its signing secret");
        let data =
            json!({"user_id": "u_1", "score": 42, "nested": {"ok": true, "list": [1, 2, 3]}});
        let published = publish(&server, "session.end", data.clone()).await;
        assert_eq!(published.deliveries_started, 1, "{on}");

        assert_eq!(
            receiver.wait_for(1, WAIT).await,
            1,
            "{on}: no delivery arrived"
        );
        let r = receiver.received().remove(0);
        assert_eq!(
            *log.lock().unwrap(),
            vec![(Method::POST, "/hooks/sonzai".to_owned())],
            "{on}: one POST to the webhook's path"
        );
        assert_eq!(header(&r, "content-type"), "application/json", "{on}");
        let agent = header(&r, "user-agent");
        assert!(
            agent.starts_with("sonzai-webhooks/"),
            "{on}: user-agent {agent}"
        );
        assert!(
            r.header("authorization").is_none(),
            "{on}: no auth_header, no Authorization"
        );

        // The body: exactly the contract's fields, describing the published event.
        let body = r.json();
        let keys: BTreeSet<&str> = body
            .as_object()
            .expect("body is a JSON object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["event_id", "event_type", "project_id", "created_at", "data"]),
            "{on}"
        );
        assert_eq!(body["event_id"], published.event_id.to_string(), "{on}");
        assert_eq!(body["event_type"], "session.end", "{on}");
        assert_eq!(
            body["project_id"],
            server.tenant.project_id.to_string(),
            "{on}"
        );
        assert_eq!(body["data"], data, "{on}");
        let created_at: chrono::DateTime<chrono::Utc> = body["created_at"]
            .as_str()
            .expect("created_at is a string")
            .parse()
            .expect("created_at is RFC 3339");
        assert_eq!(
            created_at, published.created_at,
            "{on}: the event's own created_at"
        );

        // Both signature schemes verify with the secret from the upsert, and only with it.
        let v = verifier(&secret);
        v.verify_sonzai(header(&r, "sonzai-signature"), &r.body)
            .unwrap_or_else(|e| panic!("{on}: Sonzai-Signature rejected: {e}"));
        assert_eq!(
            header(&r, "webhook-id"),
            published.event_id.to_string(),
            "{on}"
        );
        v.verify_standard(
            header(&r, "webhook-id"),
            header(&r, "webhook-timestamp"),
            header(&r, "webhook-signature"),
            &r.body,
        )
        .unwrap_or_else(|e| panic!("{on}: Standard Webhooks signature rejected: {e}"));
        let (t, entries) = sonzai_entries(header(&r, "sonzai-signature"));
        assert_eq!(entries.len(), 1, "{on}: one secret, one signature");
        assert_eq!(t, header(&r, "webhook-timestamp"), "{on}: one signing time");
        assert!(
            !verifies_with(&r, &unrelated_secret()),
            "{on}: another secret must fail"
        );
        let mut tampered = r.body.to_vec();
        tampered.extend_from_slice(b" ");
        assert!(
            v.verify_sonzai(header(&r, "sonzai-signature"), &tampered)
                .is_err(),
            "{on}: a changed body must fail"
        );

        // The attempts API: one successful first attempt holding the bytes sent.
        let recorded = wait_attempts(&server, "session.end", 1).await;
        let a = &recorded[0];
        assert_eq!(a.attempt_number, 1, "{on}");
        assert_eq!(a.status, "success", "{on}");
        assert_eq!(a.response_code, 200, "{on}");
        assert_eq!(a.error_message, None, "{on}");
        assert_eq!(a.event_type, "session.end", "{on}");
        assert_eq!(a.project_id, server.tenant.project_id, "{on}");
        assert_eq!(a.webhook_url, receiver.url("/hooks/sonzai"), "{on}");
        assert!(a.duration_ms >= 0, "{on}");
        let sent = base64::engine::general_purpose::STANDARD
            .decode(a.request_body.as_deref().expect("request_body is recorded"))
            .expect("request_body is base64");
        assert_eq!(
            sent,
            r.body.to_vec(),
            "{on}: request_body is the exact bytes received"
        );

        // A success is final: nothing more arrives and nothing more is recorded.
        tokio::time::sleep(PAST_SCHEDULE).await;
        assert_eq!(receiver.count(), 1, "{on}");
        assert_eq!(attempts(&server, "session.end").await.len(), 1, "{on}");
        server.shutdown().await;
    }
}

// 2 ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_on_schedule_with_the_same_id_until_success() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let server = TestServer::start(&db).await;
        let receiver = Receiver::start().await;
        receiver.script([Answer::status(500), Answer::status(500)]);
        upsert(&server, "memory.created", &receiver.url("/hook"), None).await;
        let published = publish(&server, "memory.created", json!({"memory": "m1"})).await;

        assert_eq!(
            receiver.wait_for(3, WAIT).await,
            3,
            "{on}: expected 3 requests"
        );
        let recorded = wait_attempts(&server, "memory.created", 3).await;
        let summary: Vec<(i64, &str, i64)> = recorded
            .iter()
            .map(|a| (a.attempt_number, a.status.as_str(), a.response_code))
            .collect();
        assert_eq!(
            summary,
            vec![(1, "failed", 500), (2, "failed", 500), (3, "success", 200)],
            "{on}"
        );

        let got = receiver.received();
        let event_id = published.event_id.to_string();
        for r in &got {
            assert_eq!(
                header(r, "webhook-id"),
                event_id,
                "{on}: retries keep the id"
            );
            assert_eq!(r.body, got[0].body, "{on}: retries resend the same body");
        }
        // The schedule (100 ms, then 200 ms) with its ±20 % jitter; the receiver
        // answered at once, so the gaps are the waits. A few ms of slack below for the
        // clock readings, 400 ms above for claiming and recording on a busy machine:
        // a retry must not wait for the worker's idle poll (1 s).
        let gaps = [got[1].at - got[0].at, got[2].at - got[1].at];
        for (gap, wait) in gaps.iter().zip([100u64, 200]) {
            let low = Duration::from_millis(wait * 8 / 10 - 5);
            let high = Duration::from_millis(wait * 12 / 10 + 400);
            assert!(
                (low..=high).contains(gap),
                "{on}: a {wait} ms retry came after {gap:?} (all gaps {gaps:?})"
            );
        }
        println!("{on}: retry gaps {gaps:?}");

        tokio::time::sleep(PAST_SCHEDULE).await;
        assert_eq!(receiver.count(), 3, "{on}: nothing after the success");
        assert_eq!(attempts(&server, "memory.created").await.len(), 3, "{on}");
        server.shutdown().await;
    }
}

// 3 ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_slower_than_the_timeout_is_a_failed_attempt_with_code_0() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let mut config = support::test_config(&db);
        config.delivery_timeout = Duration::from_millis(300);
        let server = TestServer::start_with(&db, config).await;
        let receiver = Receiver::start().await;
        receiver.script([Answer::status(200).after(Duration::from_secs(3))]);
        upsert(&server, "session.end", &receiver.url("/slow"), None).await;
        publish(&server, "session.end", json!({})).await;

        let recorded = wait_attempts(&server, "session.end", 2).await;
        let first = &recorded[0];
        assert_eq!(first.attempt_number, 1, "{on}");
        assert_eq!(first.status, "failed", "{on}");
        assert_eq!(first.response_code, 0, "{on}");
        let message = first.error_message.as_deref().unwrap_or_default();
        assert!(
            message.contains("timeout"),
            "{on}: error_message {message:?}"
        );
        assert!(
            (300..2000).contains(&first.duration_ms),
            "{on}: the attempt took {} ms with a 300 ms timeout",
            first.duration_ms
        );
        // The retry reaches a receiver that now answers at once.
        let second = &recorded[1];
        assert_eq!(
            (
                second.attempt_number,
                second.status.as_str(),
                second.response_code
            ),
            (2, "success", 200),
            "{on}"
        );
        server.shutdown().await;
    }
}

// 4 ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_connection_refused_and_retries_stop_after_the_schedule() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let server = TestServer::start(&db).await;
        // Bound and released: nothing listens there any more.
        let port = support::free_port();
        upsert(
            &server,
            "session.end",
            &format!("http://127.0.0.1:{port}/hook"),
            None,
        )
        .await;
        publish(&server, "session.end", json!({"n": 1})).await;

        // The test schedule has three retries: four attempts in all, then give up.
        wait_attempts(&server, "session.end", 4).await;
        tokio::time::sleep(PAST_SCHEDULE).await;
        let recorded = attempts(&server, "session.end").await;
        assert_eq!(
            recorded.len(),
            4,
            "{on}: 1 attempt + 3 retries, then no more"
        );
        for (i, a) in recorded.iter().enumerate() {
            assert_eq!(a.attempt_number, i as i64 + 1, "{on}");
            assert_eq!(a.status, "failed", "{on}");
            assert_eq!(a.response_code, 0, "{on}");
            assert_eq!(
                a.error_message.as_deref(),
                Some("connection refused"),
                "{on}"
            );
            assert_eq!(a.response_body, None, "{on}");
        }
        server.shutdown().await;
    }
}

// 5 ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let server = TestServer::start(&db).await;
        let target = Receiver::start().await;
        let redirector = Receiver::start().await;
        redirector.set_default(Answer::status(301).header("location", target.url("/landing")));
        upsert(&server, "session.end", &redirector.url("/old"), None).await;
        publish(&server, "session.end", json!({})).await;

        let recorded = wait_attempts(&server, "session.end", 4).await;
        for a in &recorded {
            assert_eq!(a.status, "failed", "{on}");
            assert_eq!(a.response_code, 301, "{on}");
            let message = a.error_message.as_deref().unwrap_or_default();
            assert!(
                message.contains("redirect"),
                "{on}: error_message {message:?}"
            );
        }
        tokio::time::sleep(PAST_SCHEDULE).await;
        assert_eq!(redirector.count(), 4, "{on}");
        assert_eq!(
            target.count(),
            0,
            "{on}: the Location target must get nothing"
        );
        server.shutdown().await;
    }
}

// 6 ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_header_is_sent_verbatim_and_only_when_set() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let server = TestServer::start(&db).await;
        let with = Receiver::start().await;
        let without = Receiver::start().await;
        let credential = "Bearer rcv_9f8e7d6c5b4a, realm=\"hooks\"";
        upsert(&server, "auth.with", &with.url("/a"), Some(credential)).await;
        upsert(&server, "auth.without", &without.url("/b"), None).await;
        publish(&server, "auth.with", json!({})).await;
        publish(&server, "auth.without", json!({})).await;

        assert_eq!(with.wait_for(1, WAIT).await, 1, "{on}");
        assert_eq!(without.wait_for(1, WAIT).await, 1, "{on}");
        assert_eq!(
            header(&with.received()[0], "authorization"),
            credential,
            "{on}"
        );
        assert!(
            without.received()[0].header("authorization").is_none(),
            "{on}: no auth_header, no Authorization"
        );
        // The header does not leak into the other scheme's headers or the body.
        assert!(
            !String::from_utf8_lossy(&with.received()[0].body).contains("rcv_9f8e7d6c5b4a"),
            "{on}"
        );

        // An update without auth_header removes it from later deliveries.
        upsert(&server, "auth.with", &with.url("/a"), None).await;
        publish(&server, "auth.with", json!({})).await;
        assert_eq!(with.wait_for(2, WAIT).await, 2, "{on}");
        assert!(
            with.received()[1].header("authorization").is_none(),
            "{on}: auth_header cleared by the update"
        );
        server.shutdown().await;
    }
}

// 7 ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_disabled_and_an_upsert_reactivates_it() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let mut config = support::test_config(&db);
        config.disable_after_failures = 3;
        config.disable_after = Duration::ZERO;
        let server = TestServer::start_with(&db, config).await;
        let receiver = Receiver::start().await;
        receiver.set_default(Answer::status(500));
        let url = receiver.url("/failing");
        upsert(&server, "billing.failed", &url, None).await;
        publish(&server, "billing.failed", json!({"n": 1})).await;

        wait_attempts(&server, "billing.failed", 3).await;
        let disabled = support::poll_until(WAIT, POLL, || async {
            webhook(&server, "billing.failed")
                .await
                .filter(|w| !w.is_active)
        })
        .await;
        assert!(
            disabled.is_some(),
            "{on}: webhook still active after 3 failures"
        );
        // The third failure disabled it and cancelled the retry that was scheduled.
        tokio::time::sleep(PAST_SCHEDULE).await;
        assert_eq!(
            receiver.count(),
            3,
            "{on}: no attempt after the disabling one"
        );
        assert_eq!(attempts(&server, "billing.failed").await.len(), 3, "{on}");

        // Disabled: publishing starts nothing.
        let ignored = publish(&server, "billing.failed", json!({"n": 2})).await;
        assert_eq!(ignored.deliveries_started, 0, "{on}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(receiver.count(), 3, "{on}: a disabled webhook gets nothing");

        // An upsert switches it back on; the next event is delivered.
        let secret = upsert(&server, "billing.failed", &url, None).await;
        assert_eq!(secret, None, "{on}: an update answers no secret");
        let active = webhook(&server, "billing.failed")
            .await
            .expect("webhook listed");
        assert!(active.is_active, "{on}: upsert re-activates");
        receiver.set_default(Answer::status(200));
        let delivered = publish(&server, "billing.failed", json!({"n": 3})).await;
        assert_eq!(delivered.deliveries_started, 1, "{on}");
        assert_eq!(receiver.wait_for(4, WAIT).await, 4, "{on}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = receiver.received();
        assert_eq!(got.len(), 4, "{on}: only the new event arrives");
        assert_eq!(got[3].event_id(), Some(delivered.event_id), "{on}");
        assert_ne!(got[3].event_id(), Some(ignored.event_id), "{on}");
        server.shutdown().await;
    }
}

// 8 ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_switches_secrets_at_once_or_signs_with_both_during_grace() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let server = TestServer::start(&db).await;
        let receiver = Receiver::start().await;
        let first = upsert(&server, "session.end", &receiver.url("/hook"), None)
            .await
            .expect("secret");

        // Without grace: the old secret stops signing at once.
        let second = rotate(&server, "session.end", None).await;
        assert_ne!(second, first, "{on}");
        assert!(second.starts_with("whsec_"), "{on}");
        publish(&server, "session.end", json!({"after": "rotate"})).await;
        assert_eq!(receiver.wait_for(1, WAIT).await, 1, "{on}");
        let r = receiver.received().remove(0);
        assert!(verifies_with(&r, &second), "{on}: the new secret verifies");
        assert!(
            !verifies_with(&r, &first),
            "{on}: the old secret no longer verifies"
        );
        let (_, entries) = sonzai_entries(header(&r, "sonzai-signature"));
        assert_eq!(entries.len(), 1, "{on}: one v1 entry without grace");
        assert_eq!(
            header(&r, "webhook-signature").split_whitespace().count(),
            1,
            "{on}"
        );

        // With grace: both sign, the new one first.
        let third = rotate(&server, "session.end", Some(3600)).await;
        publish(&server, "session.end", json!({"after": "grace"})).await;
        assert_eq!(receiver.wait_for(2, WAIT).await, 2, "{on}");
        let r = receiver.received().remove(1);
        assert!(verifies_with(&r, &third), "{on}: the new secret verifies");
        assert!(
            verifies_with(&r, &second),
            "{on}: the old secret verifies during grace"
        );
        assert!(
            !verifies_with(&r, &first),
            "{on}: the secret before that does not"
        );

        let (t, entries) = sonzai_entries(header(&r, "sonzai-signature"));
        assert_eq!(entries.len(), 2, "{on}: two v1 entries during grace");
        let alone = |entry: &str| format!("t={t},v1={entry}");
        let new_v = verifier(&third);
        let old_v = verifier(&second);
        assert!(
            new_v.verify_sonzai(&alone(&entries[0]), &r.body).is_ok(),
            "{on}: new first"
        );
        assert!(
            old_v.verify_sonzai(&alone(&entries[0]), &r.body).is_err(),
            "{on}"
        );
        assert!(
            old_v.verify_sonzai(&alone(&entries[1]), &r.body).is_ok(),
            "{on}: old second"
        );

        let standard: Vec<&str> = header(&r, "webhook-signature").split_whitespace().collect();
        assert_eq!(standard.len(), 2, "{on}: two Standard Webhooks signatures");
        let (id, ts) = (header(&r, "webhook-id"), header(&r, "webhook-timestamp"));
        assert!(
            new_v.verify_standard(id, ts, standard[0], &r.body).is_ok(),
            "{on}"
        );
        assert!(
            old_v.verify_standard(id, ts, standard[1], &r.body).is_ok(),
            "{on}"
        );
        server.shutdown().await;
    }
}

// 9 ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_webhook_stops_its_pending_retries() {
    for db in support::backends().await {
        let on = backend_note(&db);
        // Slow retries, so the deletion lands well before the first retry is due.
        let mut config = support::test_config(&db);
        config.retry_schedule = "1s,1s,1s".parse().unwrap();
        let server = TestServer::start_with(&db, config).await;
        let receiver = Receiver::start().await;
        // Slow failures: the deletion happens while the first attempt is in flight,
        // so its outcome (which would schedule a retry) is recorded after the delete.
        receiver.set_default(Answer::status(500).after(Duration::from_millis(300)));
        upsert(&server, "session.end", &receiver.url("/hook"), None).await;
        publish(&server, "session.end", json!({})).await;

        assert_eq!(receiver.wait_for(1, WAIT).await, 1, "{on}");
        server
            .client
            .delete_webhook_for_tenant()
            .event_type("session.end")
            .send()
            .await
            .expect("delete webhook");
        assert!(webhook(&server, "session.end").await.is_none(), "{on}");

        // The whole schedule (1s + 1s + 1s) passes without another request.
        tokio::time::sleep(Duration::from_millis(3800)).await;
        assert_eq!(receiver.count(), 1, "{on}: a deleted webhook got a retry");
        // Its history stays listable, including the attempt that was in flight.
        let recorded = wait_attempts(&server, "session.end", 1).await;
        assert_eq!(recorded.len(), 1, "{on}");
        assert_eq!(recorded[0].response_code, 500, "{on}");
        server.shutdown().await;
    }
}

// 10 ---------------------------------------------------------------------------------

/// A host name other than `localhost` that the system resolver maps only to loopback
/// (from /etc/hosts), if there is one: it passes the upsert-time name check and must
/// be caught when the delivery resolves it.
async fn loopback_alias() -> Option<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    let names: Vec<String> = hosts
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let ip: std::net::IpAddr = fields.next()?.parse().ok()?;
            ip.is_loopback()
                .then(|| fields.map(str::to_owned).collect::<Vec<_>>())
        })
        .flatten()
        .filter(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name != "localhost" && !name.ends_with(".localhost") && !name.contains(':')
        })
        .collect();
    for name in names {
        let Ok(resolved) = tokio::net::lookup_host((name.as_str(), 0)).await else {
            continue;
        };
        let addrs: Vec<_> = resolved.collect();
        if !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) {
            return Some(name);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_guard_refuses_loopback_at_upsert_and_at_connect() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let mut config = support::test_config(&db);
        config.allow_private_targets = false;
        let server = TestServer::start_with(&db, config).await;
        let receiver = Receiver::start().await;
        let port = receiver.addr.port();

        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            format!("http://[::1]:{port}/"),
        ] {
            let refused = server
                .client
                .upsert_webhook_for_tenant()
                .event_type("session.end")
                .body(upsert_body(&url, None))
                .send()
                .await;
            let Err(ClientError::ErrorResponse(problem)) = refused else {
                panic!("{on}: upsert of {url} was not refused: {refused:?}");
            };
            assert_eq!(problem.status().as_u16(), 422, "{on}: {url}");
            let errors = problem.into_inner().errors.unwrap_or_default();
            assert_eq!(errors.len(), 1, "{on}: {url}: {errors:?}");
            assert_eq!(
                errors[0].location.as_deref(),
                Some("body.webhook_url"),
                "{on}"
            );
            let message = errors[0].message.as_deref().unwrap_or_default();
            assert!(
                message.starts_with("blocked target"),
                "{on}: {url}: {message}"
            );
        }
        assert!(webhook(&server, "session.end").await.is_none(), "{on}");

        // A name that only resolves to loopback passes the upsert (names are checked
        // when resolved) and is refused when the delivery connects.
        let Some(alias) = loopback_alias().await else {
            eprintln!("{on}: skipping the connect-time case: no loopback alias in /etc/hosts");
            server.shutdown().await;
            continue;
        };
        upsert(
            &server,
            "session.end",
            &format!("http://{alias}:{port}/hook"),
            None,
        )
        .await;
        publish(&server, "session.end", json!({})).await;
        let recorded = wait_attempts(&server, "session.end", 1).await;
        let a = &recorded[0];
        assert_eq!((a.status.as_str(), a.response_code), ("failed", 0), "{on}");
        let message = a.error_message.as_deref().unwrap_or_default();
        assert!(
            message.starts_with("blocked target"),
            "{on}: {alias}: error_message {message:?}"
        );
        assert_eq!(receiver.count(), 0, "{on}: the guard let a request through");
        server.shutdown().await;
    }
}

// 11 ---------------------------------------------------------------------------------

/// The value of the sample `name` (labels included, exactly as rendered).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_deliveries_and_health_endpoints_answer() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let server = TestServer::start(&db).await;
        let http = server.http();
        let base = format!("http://{}", server.addr);
        for path in ["/healthz", "/readyz"] {
            let status = http
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("health request")
                .status();
            assert_eq!(status.as_u16(), 200, "{on}: {path}");
        }

        let receiver = Receiver::start().await;
        receiver.script([Answer::status(503)]);
        upsert(&server, "session.end", &receiver.url("/hook"), None).await;
        publish(&server, "session.end", json!({})).await;
        wait_attempts(&server, "session.end", 2).await;

        let response = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics request");
        assert_eq!(response.status().as_u16(), 200, "{on}");
        let text = response.text().await.expect("metrics body");
        let success = sample(&text, "sonzai_delivery_attempts_total{outcome=\"success\"}");
        let failed = sample(&text, "sonzai_delivery_attempts_total{outcome=\"failed\"}");
        let published = sample(&text, "sonzai_events_published_total");
        assert!(
            success.is_some_and(|n| n >= 1.0),
            "{on}: success {success:?}\n{text}"
        );
        assert!(
            failed.is_some_and(|n| n >= 1.0),
            "{on}: failed {failed:?}\n{text}"
        );
        assert!(
            published.is_some_and(|n| n >= 1.0),
            "{on}: published {published:?}\n{text}"
        );
        server.shutdown().await;
    }
}

/// A receiver that hangs, with a backlog bigger than all the worker slots, must not hold
/// up deliveries to another webhook: it may occupy at most its per-webhook share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_with_a_backlog_does_not_hold_up_the_others() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let mut config = support::test_config(&db);
        config.workers = 8;
        config.max_in_flight_per_webhook = Some(2);
        config.delivery_timeout = Duration::from_secs(5);
        let server = TestServer::start_with(&db, config).await;
        let slow = Receiver::start().await;
        slow.set_default(Answer::status(200).after(Duration::from_secs(4)));
        let fast = Receiver::start().await;
        upsert(&server, "slow.backlog", &slow.url("/slow"), None).await;
        upsert(&server, "fast.lane", &fast.url("/fast"), None).await;

        // Four times the worker slots for the hanging receiver, then one for the other.
        for i in 0..32 {
            publish(&server, "slow.backlog", json!({ "i": i })).await;
        }
        assert!(
            slow.wait_for(2, Duration::from_secs(3)).await >= 2,
            "{on}: the slow receiver got its first deliveries"
        );
        let published = std::time::Instant::now();
        publish(&server, "fast.lane", json!({})).await;
        assert_eq!(
            fast.wait_for(1, Duration::from_secs(2)).await,
            1,
            "{on}: the other webhook's delivery waited behind the hanging receiver"
        );
        let waited = published.elapsed();
        // The hanging receiver never holds more than its share of the slots.
        assert!(
            slow.count() <= 2,
            "{on}: {} deliveries in flight to one webhook with a limit of 2",
            slow.count()
        );
        println!("{on}: other webhook delivered {waited:?} after publish while one receiver hangs");
        server.shutdown().await;
    }
}
