//! What receivers answer beyond success or failure, end to end: `410 Gone` switches
//! the webhook off and cancels its deliveries; `Retry-After` on a 429 or 503 delays
//! the next try (delta-seconds or an HTTP date), cut to `--max-retry-after`. Every
//! test runs on SQLite and, when `TEST_DATABASE_URL` is set, on PostgreSQL.

use std::time::{Duration, Instant};

use chrono::{DurationRound as _, Utc};
use serde_json::json;

use crate::delivery::{
    attempts, backend_note, publish, upsert, wait_attempts, webhook, PAST_SCHEDULE, POLL, WAIT,
};
use crate::support::{self, Answer, Receiver, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_webhook_at_once_and_cancels_its_deliveries() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let mut config = support::test_config(&db);
        // One in flight at a time, so the later events wait (parked or pending)
        // while the receiver takes its time to answer 410 to the first.
        config.max_in_flight_per_webhook = Some(1);
        let server = TestServer::start_with(&db, config).await;
        let receiver = Receiver::start().await;
        receiver.script([Answer::status(410).after(Duration::from_secs(1))]);
        upsert(&server, "user.gone", &receiver.url("/gone"), None).await;

        publish(&server, "user.gone", json!({"n": 0})).await;
        assert_eq!(receiver.wait_for(1, WAIT).await, 1, "{on}");
        for n in 1..4 {
            let started = publish(&server, "user.gone", json!({ "n": n })).await;
            assert_eq!(started.deliveries_started, 1, "{on}");
        }

        let disabled = support::poll_until(WAIT, POLL, || async {
            webhook(&server, "user.gone").await.filter(|w| !w.is_active)
        })
        .await;
        assert!(disabled.is_some(), "{on}: webhook still active after a 410");
        let recorded = wait_attempts(&server, "user.gone", 1).await;
        assert_eq!(recorded[0].response_code, 410, "{on}");
        assert_eq!(
            recorded[0].error_message.as_deref(),
            Some("receiver answered 410 Gone: webhook disabled"),
            "{on}"
        );

        // Neither the 410 delivery nor the three waiting ones are ever sent again.
        tokio::time::sleep(PAST_SCHEDULE).await;
        assert_eq!(receiver.count(), 1, "{on}: delivered after the 410");
        assert_eq!(attempts(&server, "user.gone").await.len(), 1, "{on}");
        server.shutdown().await;
    }
}

/// Sends one event whose first try the receiver answers with `first`, and returns
/// the two arrival times and the first attempt's error message.
async fn first_retry(
    server: &TestServer,
    event_type: &str,
    first: Answer,
) -> (Instant, Instant, Option<String>) {
    let receiver = Receiver::start().await;
    receiver.script([first]);
    upsert(server, event_type, &receiver.url("/busy"), None).await;
    publish(server, event_type, json!({"n": 1})).await;
    // The schedule alone would retry after 100 ms; the bound leaves room for the
    // longest wait asked for here (4 s).
    let bound = Duration::from_secs(4) + WAIT;
    assert_eq!(
        receiver.wait_for(2, bound).await,
        2,
        "no retry within {bound:?}"
    );
    let got = receiver.received();
    let recorded = wait_attempts(server, event_type, 2).await;
    (got[0].at, got[1].at, recorded[0].error_message.clone())
}

/// On every backend: a 503 with `Retry-After: <header>` (on a server whose
/// `--max-retry-after` is `max`) is retried no sooner than `at_least` after the first
/// try, and within a few seconds more; the attempt records `message`.
async fn retried_after(max: Option<Duration>, header: &str, at_least: Duration, message: &str) {
    for db in support::backends().await {
        let on = backend_note(&db);
        let mut config = support::test_config(&db);
        if let Some(max) = max {
            config.max_retry_after = max;
        }
        let server = TestServer::start_with(&db, config).await;
        let answer = Answer::status(503).header("retry-after", header);
        let (first, second, recorded) = first_retry(&server, "stock.busy", answer).await;
        let gap = second - first;
        assert!(gap >= at_least, "{on}: retried after {gap:?}");
        assert!(
            gap < at_least + Duration::from_secs(4),
            "{on}: retried after {gap:?}"
        );
        assert_eq!(recorded.as_deref(), Some(message), "{on}");
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_delays_the_next_try() {
    // The test schedule alone would retry after 100 ms.
    let message = "receiver asked to retry after 2s";
    retried_after(None, "2", Duration::from_secs(2), message).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_delays_the_next_try() {
    for db in support::backends().await {
        let on = backend_note(&db);
        let server = TestServer::start_with(&db, support::test_config(&db)).await;
        let (wall, clock) = (Utc::now(), Instant::now());
        let date = (wall + chrono::Duration::seconds(4))
            .duration_trunc(chrono::Duration::seconds(1))
            .expect("truncate to seconds");
        let earliest = clock + (date - wall).to_std().expect("a date ahead");
        let answer = Answer::status(429).header(
            "retry-after",
            date.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        );
        let (_, second, message) = first_retry(&server, "stock.limited", answer).await;
        // A little slack for the two clocks read one after the other.
        assert!(
            second + Duration::from_millis(50) >= earliest,
            "{on}: retried {:?} before the date",
            earliest - second
        );
        let message = message.unwrap_or_default();
        assert!(
            message.starts_with("receiver asked to retry after "),
            "{on}: {message}"
        );
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_past_the_maximum_is_cut_to_it() {
    let message = "receiver asked to retry after 999999s, cut to 3s";
    let max = Some(Duration::from_secs(3));
    retried_after(max, "999999", Duration::from_secs(3), message).await;
}
