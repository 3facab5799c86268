//! What a hostile or broken receiver can do to the delivery engine, end to end: bytes
//! that are not text, rows the database refuses, a database that stops answering, and
//! receivers that hang or crawl with a backlog. None of it may stop or slow delivery
//! for anyone else, make `/readyz` lie, or keep shutdown from finishing.

use std::time::{Duration, Instant};

use serde_json::json;
use sonzai_webhooks_client::types;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, Answer, Backend, Receiver, TestDb, TestServer};

const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

fn on(db: &TestDb) -> &'static str {
    match db.backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    }
}

async fn upsert(server: &TestServer, key: &str, event_type: &str, url: &str) {
    server
        .client_for(key)
        .upsert_webhook_for_tenant()
        .event_type(event_type)
        .body(types::UpsertWebhookForTenantInputBody {
            auth_header: None,
            schema: None,
            webhook_url: url.try_into().expect("webhook url"),
            rate_limit: None,
            ordered: false,
        })
        .send()
        .await
        .expect("upsert webhook");
}

async fn publish(server: &TestServer, key: &str, event_type: &str, data: serde_json::Value) {
    server
        .client_for(key)
        .publish_event_for_tenant()
        .body(
            types::PublishEventForTenantInputBody::builder()
                .event_type(event_type)
                .data(data),
        )
        .send()
        .await
        .expect("publish event");
}

async fn attempts(
    server: &TestServer,
    key: &str,
    event_type: &str,
) -> Vec<types::WebhookDeliveryAttempt> {
    server
        .client_for(key)
        .list_delivery_attempts_for_tenant()
        .event_type(event_type)
        .limit(500u64)
        .send()
        .await
        .expect("list attempts")
        .into_inner()
        .attempts
        .unwrap_or_default()
}

async fn wait_attempts(
    server: &TestServer,
    key: &str,
    event_type: &str,
    n: usize,
) -> Vec<types::WebhookDeliveryAttempt> {
    support::poll_until(WAIT, POLL, || async {
        let list = attempts(server, key, event_type).await;
        (list.len() >= n).then_some(list)
    })
    .await
    .unwrap_or_else(|| panic!("fewer than {n} attempts of {event_type} within {WAIT:?}"))
}

async fn get_text(server: &TestServer, path: &str) -> (u16, String) {
    let response = server
        .http()
        .get(format!("http://{}{path}", server.addr))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// An HTTP receiver that answers every request with the same raw bytes, whatever
/// they are (a NUL, bytes that are not UTF-8), which a well-behaved server library
/// would not let a test send.
async fn raw_receiver(answer: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw receiver");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                // Read until the end of the request (headers and a Content-Length body).
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket.write_all(&answer).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}/hook")
}

fn raw_response(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A NUL and bytes that are not UTF-8 in a receiver's answer are stored (as U+FFFD)
/// on both backends, and the other tenants' deliveries go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_nul_and_invalid_utf8_cannot_stop_delivery() {
    for db in support::backends().await {
        let on = on(&db);
        let server = TestServer::start(&db).await;
        let other = support::create_tenant(server.store.as_ref(), "tenant-b").await;
        let hostile = server.tenant.key.clone();

        let bad_url = raw_receiver(raw_response(
            "500 Internal Server Error",
            b"ok\0nul\xff\xfe!",
        ))
        .await;
        upsert(&server, &hostile, "poison.nul", &bad_url).await;
        let good = Receiver::start().await;
        upsert(&server, &other.key, "quiet.event", &good.url("/quiet")).await;

        publish(&server, &hostile, "poison.nul", json!({})).await;
        for i in 0..20 {
            publish(&server, &other.key, "quiet.event", json!({ "i": i })).await;
        }
        assert_eq!(
            good.wait_for(20, WAIT).await,
            20,
            "{on}: the other tenant's deliveries stopped"
        );
        wait_attempts(&server, &other.key, "quiet.event", 20).await;
        let bad = wait_attempts(&server, &hostile, "poison.nul", 2).await;
        for attempt in &bad {
            assert_eq!(attempt.response_code, 500, "{on}");
            assert_eq!(
                attempt.response_body.as_deref(),
                Some("ok\u{fffd}nul\u{fffd}\u{fffd}!"),
                "{on}: NUL and invalid bytes are stored as U+FFFD"
            );
        }
        let (status, text) = get_text(&server, "/readyz").await;
        assert_eq!(status, 200, "{on}: {text}");
        let shutdown = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), server.shutdown())
            .await
            .unwrap_or_else(|_| panic!("{on}: shutdown did not finish"));
        println!("{on}: shutdown took {:?}", shutdown.elapsed());
    }
}

/// Makes the database refuse some attempts for good: those whose response body holds
/// `refuse-body` (the stripped attempt is then accepted), and every attempt of the
/// event type `refused.always`.
async fn refuse_some_attempts(db: &TestDb) {
    use sqlx::Connection;
    match db.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query(
                "ALTER TABLE attempts ADD CONSTRAINT refuse_some CHECK \
                 ((response_body IS NULL OR response_body NOT LIKE '%refuse-body%') \
                  AND event_type <> 'refused.always')",
            )
            .execute(&mut conn)
            .await
            .expect("add constraint");
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect");
            sqlx::query(
                "CREATE TRIGGER refuse_some BEFORE INSERT ON attempts \
                 WHEN NEW.response_body LIKE '%refuse-body%' OR NEW.event_type = 'refused.always' \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .execute(&mut conn)
            .await
            .expect("create trigger");
        }
    }
}

/// A batch the store refuses is split up: the good rows are written, a refused row is
/// written without the receiver's text, a row refused even then is counted, and the
/// loop goes on (nothing stuck, `/readyz` ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_store_refuses_are_isolated_and_counted() {
    for db in support::backends().await {
        let on = on(&db);
        let mut config = support::test_config(&db);
        config.retry_schedule = "100ms".parse().unwrap();
        let server = TestServer::start_with(&db, config).await;
        refuse_some_attempts(&db).await;
        let key = server.tenant.key.clone();

        let refusing = Receiver::start().await;
        refusing.set_default(Answer::status(200).body("please refuse-body this"));
        upsert(&server, &key, "refused.body", &refusing.url("/body")).await;
        let always = Receiver::start().await;
        upsert(&server, &key, "refused.always", &always.url("/always")).await;
        let good = Receiver::start().await;
        upsert(&server, &key, "fine.event", &good.url("/fine")).await;

        // Interleaved, so the refused rows share batches with good ones.
        for i in 0..10 {
            publish(&server, &key, "refused.body", json!({ "i": i })).await;
            publish(&server, &key, "refused.always", json!({ "i": i })).await;
            publish(&server, &key, "fine.event", json!({ "i": i })).await;
        }
        assert_eq!(good.wait_for(10, WAIT).await, 10, "{on}");
        let fine = wait_attempts(&server, &key, "fine.event", 10).await;
        assert!(fine.iter().all(|a| a.status == "success"), "{on}");
        let stripped = wait_attempts(&server, &key, "refused.body", 10).await;
        for attempt in &stripped {
            assert_eq!(attempt.response_code, 200, "{on}");
            assert_eq!(attempt.response_body, None, "{on}");
            assert!(
                attempt
                    .error_message
                    .as_deref()
                    .is_some_and(|m| m.contains("could not be stored")),
                "{on}: {:?}",
                attempt.error_message
            );
        }
        assert!(always.wait_for(10, WAIT).await >= 10, "{on}");
        let metrics = support::poll_until(WAIT, POLL, || async {
            let (_, text) = get_text(&server, "/metrics").await;
            (sample(&text, "sonzai_attempts_unrecorded_total") >= 10.0).then_some(text)
        })
        .await
        .unwrap_or_else(|| panic!("{on}: unrecorded attempts were not counted"));
        assert!(
            sample(&metrics, "sonzai_attempts_stripped_total") >= 10.0,
            "{on}: {metrics}"
        );
        assert!(
            attempts(&server, &key, "refused.always").await.is_empty(),
            "{on}"
        );
        // Still delivering after all that.
        publish(&server, &key, "fine.event", json!({ "after": true })).await;
        assert_eq!(good.wait_for(11, WAIT).await, 11, "{on}");
        let (status, text) = get_text(&server, "/readyz").await;
        assert_eq!(status, 200, "{on}: {text}");
        tokio::time::timeout(Duration::from_secs(10), server.shutdown())
            .await
            .unwrap_or_else(|_| panic!("{on}: shutdown did not finish"));
    }
}

/// A recorder that cannot write (the attempts table locked by someone else) turns
/// `/readyz` unready, and shutdown still ends within the grace (plus the short final
/// write), handing the delivery back for another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_recorder_makes_readyz_unready_and_shutdown_stays_bounded() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    use sqlx::Connection;
    let mut config = support::test_config(&db);
    config.shutdown_grace = Duration::from_secs(1);
    let server = TestServer::start_with(&db, config).await;
    let key = server.tenant.key.clone();
    let receiver = Receiver::start().await;
    upsert(&server, &key, "locked.out", &receiver.url("/hook")).await;
    let (status, _) = get_text(&server, "/readyz").await;
    assert_eq!(status, 200);

    let mut locker = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut locker)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("lock");
    publish(&server, &key, "locked.out", json!({})).await;
    assert_eq!(receiver.wait_for(1, WAIT).await, 1);

    let unready = support::poll_until(
        Duration::from_secs(25),
        Duration::from_millis(250),
        || async {
            let (status, text) = get_text(&server, "/readyz").await;
            (status == 503).then_some(text)
        },
    )
    .await
    .expect("/readyz stayed ready while the recorder could not write");
    assert!(unready.contains("recorder"), "{unready}");

    let started = Instant::now();
    let finished = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
    let took = started.elapsed();
    let _ = sqlx::query("ROLLBACK").execute(&mut locker).await;
    assert!(finished.is_ok(), "shutdown hung behind the stuck recorder");
    // Grace (1 s) + the final write's allowance (1 s) + the hand-back's (1 s) + slack.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}

/// Publishes one event of `event_type` for `key` and waits until the receiver has one
/// more request; answers how long that took.
async fn publish_and_time(
    server: &TestServer,
    key: &str,
    event_type: &str,
    receiver: &Receiver,
    i: usize,
) -> Duration {
    let before = receiver.count();
    let started = Instant::now();
    publish(server, key, event_type, json!({ "i": i })).await;
    receiver.wait_for(before + 1, Duration::from_secs(10)).await;
    started.elapsed()
}

/// A project whose four webhooks hang, fed faster than its receivers time out, may
/// hold its share of the slots and no more: another project's deliveries go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_with_hanging_receivers_does_not_delay_another() {
    for db in support::backends().await {
        let on = on(&db);
        let mut config = support::test_config(&db);
        config.workers = 16;
        config.delivery_timeout = Duration::from_secs(3);
        let server = TestServer::start_with(&db, config).await;
        let noisy = server.tenant.key.clone();
        let quiet = support::create_tenant(server.store.as_ref(), "quiet").await;
        let hanging = Receiver::start().await;
        hanging.set_default(Answer::status(200).after(Duration::from_secs(30)));
        for i in 0..4 {
            upsert(&server, &noisy, &format!("hang.{i}"), &hanging.url("/hang")).await;
        }
        let fine = Receiver::start().await;
        upsert(&server, &quiet.key, "quiet.event", &fine.url("/quiet")).await;

        for i in 0..80 {
            publish(
                &server,
                &noisy,
                &format!("hang.{}", i % 4),
                json!({ "i": i }),
            )
            .await;
        }
        hanging.wait_for(8, Duration::from_secs(5)).await;
        let mut waited = Vec::new();
        for i in 0..10 {
            waited.push(publish_and_time(&server, &quiet.key, "quiet.event", &fine, i).await);
        }
        waited.sort();
        println!("{on}: quiet project's deliveries while another's receivers hang: {waited:?}");
        assert_eq!(fine.count(), 10, "{on}");
        assert!(
            waited[9] < Duration::from_secs(1),
            "{on}: the quiet project waited behind the hanging one: {waited:?}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(15), server.shutdown()).await;
    }
}

/// A project with a backlog of due deliveries to a slow receiver does not queue
/// another project's fresh events behind that backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_in_one_project_does_not_queue_another_projects_fresh_events() {
    for db in support::backends().await {
        let on = on(&db);
        let mut config = support::test_config(&db);
        config.workers = 8;
        let server = TestServer::start_with(&db, config).await;
        let noisy = server.tenant.key.clone();
        let quiet = support::create_tenant(server.store.as_ref(), "quiet").await;
        let slow = Receiver::start().await;
        slow.set_default(Answer::status(200).after(Duration::from_millis(50)));
        upsert(&server, &noisy, "backlog.event", &slow.url("/slow")).await;
        let fine = Receiver::start().await;
        upsert(&server, &quiet.key, "quiet.event", &fine.url("/quiet")).await;

        // At most 6 of 8 slots at 50 ms each: 120 deliveries a second, so this
        // backlog takes about 8 s to drain.
        let publishers: Vec<_> = (0..4)
            .map(|p| {
                let client = server.client_for(&noisy);
                tokio::spawn(async move {
                    for i in 0..250 {
                        client
                            .publish_event_for_tenant()
                            .body(
                                types::PublishEventForTenantInputBody::builder()
                                    .event_type("backlog.event")
                                    .data(json!({ "p": p, "i": i })),
                            )
                            .send()
                            .await
                            .expect("publish backlog");
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.await.expect("publisher");
        }
        let mut waited = Vec::new();
        for i in 0..10 {
            waited.push(publish_and_time(&server, &quiet.key, "quiet.event", &fine, i).await);
        }
        waited.sort();
        let backlog_left = 1000usize.saturating_sub(slow.count());
        println!(
            "{on}: quiet project's deliveries behind a backlog ({backlog_left} left): {waited:?}"
        );
        assert_eq!(fine.count(), 10, "{on}");
        assert!(
            backlog_left > 100,
            "{on}: the backlog was gone too soon to tell"
        );
        assert!(
            waited[9] < Duration::from_millis(500),
            "{on}: the quiet project's events waited behind the backlog: {waited:?}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(15), server.shutdown()).await;
    }
}

/// A rate-limited webhook's deliveries are paced in the store, by a write that holds the
/// webhook's row. Another project's delivery goes without waiting for that write:
/// neither one claimed in the same batch nor one published while the pacing hangs. The
/// throttled project's new deliveries stay in the queue until its pacing is done, so a
/// hanging pacing holds one batch, not the whole backlog. On PostgreSQL the throttled
/// webhook's row is held locked from outside while a server starts on a queue holding
/// both, so its pacing cannot finish until the test lets it. On SQLite every write waits for the one writer anyway; there
/// the B5b benchmark measures the quiet project's latency beside a throttled backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_projects_delivery_does_not_wait_for_a_throttled_webhooks_pacing() {
    use sqlx::Connection as _;
    for db in support::backends().await {
        if db.backend != Backend::Postgres {
            println!("SQLite: one writer, no row to hold; see the B5b benchmark");
            continue;
        }
        let first = TestServer::start(&db).await;
        let throttled = Receiver::start().await;
        let fine = Receiver::start().await;
        let quiet = support::create_tenant(first.store.as_ref(), "quiet").await;
        first
            .client
            .upsert_webhook_for_tenant()
            .event_type("throttled")
            .body(types::UpsertWebhookForTenantInputBody {
                auth_header: None,
                schema: None,
                webhook_url: throttled.url("/slow").as_str().try_into().expect("url"),
                rate_limit: std::num::NonZeroU64::new(1),
                ordered: false,
            })
            .send()
            .await
            .expect("upsert the throttled webhook");
        upsert(&first, &quiet.key, "quiet.event", &fine.url("/quiet")).await;
        let noisy = first.tenant.project_id;
        let noisy_key = first.tenant.key.clone();
        let webhook = first
            .store
            .get_webhook(noisy, "throttled")
            .await
            .expect("read webhook")
            .expect("the throttled webhook")
            .id;
        first.shutdown().await;

        // Queued while no server runs, so the next server's first claim takes both.
        let store = db.open().await;
        for (project, event_type, n) in
            (0..20)
                .map(|i| (noisy, "throttled", i))
                .chain([(quiet.project_id, "quiet.event", 0)])
        {
            store
                .publish_event(sonzai_webhooks_server::store::PublishEvent {
                    project_id: project,
                    event_type,
                    data: &json!({ "n": n }).to_string(),
                    idempotency_key: None,
                    idempotency_since: chrono::Utc::now(),
                })
                .await
                .expect("publish");
        }
        let mut holder = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
        sqlx::query("SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE")
            .bind(webhook)
            .execute(&mut holder)
            .await
            .unwrap();

        let second = TestServer::start(&db).await;
        assert_eq!(
            fine.wait_for(1, Duration::from_secs(10)).await,
            1,
            "the quiet project's delivery waited for the throttled webhook's pacing"
        );
        // Published while the pacing of the first claim still hangs.
        let later: Vec<uuid::Uuid> = {
            let mut ids = Vec::new();
            for n in 20..25 {
                let published = second
                    .client_for(&noisy_key)
                    .publish_event_for_tenant()
                    .body(
                        types::PublishEventForTenantInputBody::builder()
                            .event_type("throttled")
                            .data(json!({ "n": n })),
                    )
                    .send()
                    .await
                    .expect("publish throttled")
                    .into_inner();
                ids.push(published.event_id);
            }
            ids
        };
        publish(&second, &quiet.key, "quiet.event", json!({"n": 1})).await;
        assert_eq!(
            fine.wait_for(2, Duration::from_secs(10)).await,
            2,
            "a delivery published while a throttled webhook's pacing hung waited for it"
        );
        assert_eq!(
            throttled.count(),
            0,
            "nothing throttled goes without its slot"
        );
        let (queued, leased): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE lease_token IS NOT NULL) \
             FROM deliveries WHERE event_id = ANY($1) AND status = 'pending'",
        )
        .bind(&later)
        .fetch_one(&mut holder)
        .await
        .unwrap();
        assert_eq!(queued, 5, "the later throttled events are queued");
        assert_eq!(
            leased, 0,
            "the throttled project's new deliveries were claimed while its pacing hung"
        );
        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        assert!(
            throttled.wait_for(1, WAIT).await >= 1,
            "the throttled webhook is served once its row is free"
        );
        let _ = holder.close().await;
        let _ = tokio::time::timeout(Duration::from_secs(15), second.shutdown()).await;
    }
}
