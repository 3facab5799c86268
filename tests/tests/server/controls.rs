//! Per-webhook delivery controls across real server processes: a rate limit holds at
//! the receiver whatever the number of processes, and an ordered webhook's first
//! successes arrive in publish order, also when a process is killed midway. On
//! PostgreSQL three processes share the work; on SQLite one process does.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Router;
use serde_json::json;
use sonzai_webhooks_client::{types, Client};
use uuid::Uuid;

use crate::support::{self, Backend, Receiver, ServerProcess, TestDb};

/// Starts the processes of a test: three on PostgreSQL, one on SQLite.
async fn processes(db: &TestDb, dir: &std::path::Path) -> Vec<ServerProcess> {
    let count = match db.backend {
        Backend::Postgres => 3,
        Backend::Sqlite => 1,
    };
    let mut started = Vec::new();
    for _ in 0..count {
        started.push(ServerProcess::start(db, dir, &[]).await);
    }
    started
}

async fn upsert(client: &Client, event_type: &str, url: String, rate: Option<u64>, ordered: bool) {
    let mut body = types::UpsertWebhookForTenantInputBody::builder()
        .webhook_url(url)
        .ordered(ordered);
    if let Some(rate) = rate {
        body = body.rate_limit(std::num::NonZeroU64::new(rate));
    }
    client
        .upsert_webhook_for_tenant()
        .event_type(event_type)
        .body(body)
        .send()
        .await
        .expect("upsert");
}

async fn publish(client: &Client, event_type: &str, n: usize) -> Uuid {
    let data = json!({ "n": n }).as_object().unwrap().clone();
    client
        .publish_event_for_tenant()
        .body(
            types::PublishEventForTenantInputBody::builder()
                .event_type(event_type)
                .data(data),
        )
        .send()
        .await
        .expect("publish")
        .into_inner()
        .event_id
}

/// Every attempt of `event_type`, page by page.
async fn all_attempts(client: &Client, event_type: &str) -> Vec<types::WebhookDeliveryAttempt> {
    let mut all = Vec::new();
    loop {
        let page = client
            .list_delivery_attempts_for_tenant()
            .event_type(event_type)
            .limit(100)
            .offset(all.len() as i64)
            .send()
            .await
            .expect("attempts")
            .into_inner();
        let attempts = page.attempts.unwrap_or_default();
        let last = attempts.len() < 100;
        all.extend(attempts);
        if last {
            return all;
        }
    }
}

/// The most arrivals within any one second.
fn busiest_second(arrivals: &[Instant]) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|at| at.duration_since(sorted[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_processes_without_using_tries() {
    for db in support::backends().await {
        let on = format!("{:?}", db.backend);
        // 400 events at 20/s on PostgreSQL (three processes); fewer on SQLite, where
        // one process has nothing to share.
        let events = match db.backend {
            Backend::Postgres => 400,
            Backend::Sqlite => 100,
        };
        let dir = tempfile::tempdir().unwrap();
        let store = db.open().await;
        let tenant = support::create_tenant(store.as_ref(), "paced").await;
        drop(store);
        let servers = processes(&db, dir.path()).await;
        let clients: Vec<Client> = servers
            .iter()
            .map(|s| support::client_for(s.addr, &tenant.key))
            .collect();
        let receiver = Receiver::start().await;
        upsert(
            &clients[0],
            "meter.tick",
            receiver.url("/paced"),
            Some(20),
            false,
        )
        .await;
        for n in 0..events {
            publish(&clients[n % clients.len()], "meter.tick", n).await;
        }
        let bound = Duration::from_secs(events as u64 / 20 + 30);
        assert_eq!(receiver.wait_for(events, bound).await, events, "{on}");

        let arrivals: Vec<Instant> = receiver.received().iter().map(|r| r.at).collect();
        let busiest = busiest_second(&arrivals);
        assert!(
            busiest <= 21,
            "{on}: {busiest} deliveries within one second"
        );
        let span = *arrivals.iter().max().unwrap() - *arrivals.iter().min().unwrap();
        let least = Duration::from_millis(50) * (events as u32 - 1) - Duration::from_millis(500);
        assert!(span >= least, "{on}: {events} deliveries in {span:?}");
        // Waiting is not a try: one attempt per event, each a first try (recording
        // may lag the last arrivals a little).
        let attempts =
            support::poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
                let client = &clients[0];
                async move {
                    let all = all_attempts(client, "meter.tick").await;
                    (all.len() >= events).then_some(all)
                }
            })
            .await
            .unwrap_or_else(|| panic!("{on}: fewer attempts than events"));
        assert_eq!(attempts.len(), events, "{on}: one attempt per delivery");
        assert!(attempts.iter().all(|a| a.attempt_number == 1), "{on}");
        let mut throttled = 0.0;
        for server in &servers {
            let text = reqwest::get(format!("http://{}/metrics", server.addr))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            throttled += metric_sum(&text, "sonzai_deliveries_throttled_total ");
        }
        assert!(throttled > 0.0, "{on}: deliveries waited for their turn");
        eprintln!("{on}: {events} paced deliveries in {span:?}, busiest second {busiest}, throttled {throttled}");
    }
}

/// A receiver that fails the first try of the events `fails_first` picks (given the
/// event and how many distinct events came before it) and records, in order, the
/// events it has seen and the event of each success.
struct FirstTries {
    fails_first: fn(Uuid, usize) -> bool,
    seen: Mutex<Vec<Uuid>>,
    successes: Mutex<Vec<Uuid>>,
}

async fn first_tries_receiver(
    fails_first: fn(Uuid, usize) -> bool,
) -> (SocketAddr, Arc<FirstTries>) {
    let state = Arc::new(FirstTries {
        fails_first,
        seen: Mutex::default(),
        successes: Mutex::default(),
    });
    let app = Router::new()
        .fallback(
            |State(state): State<Arc<FirstTries>>, body: axum::body::Bytes| async move {
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let Some(id) = value["event_id"]
                    .as_str()
                    .and_then(|s| s.parse::<Uuid>().ok())
                else {
                    return StatusCode::BAD_REQUEST;
                };
                {
                    let mut seen = state.seen.lock().unwrap();
                    if !seen.contains(&id) {
                        seen.push(id);
                        if (state.fails_first)(id, seen.len() - 1) {
                            return StatusCode::INTERNAL_SERVER_ERROR;
                        }
                    }
                }
                state.successes.lock().unwrap().push(id);
                StatusCode::OK
            },
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_webhook_delivers_in_publish_order_through_failures_and_a_kill() {
    const EVENTS: usize = 100;
    for db in support::backends().await {
        let on = format!("{:?}", db.backend);
        let dir = tempfile::tempdir().unwrap();
        let store = db.open().await;
        let tenant = support::create_tenant(store.as_ref(), "ordered").await;
        drop(store);
        let mut servers = processes(&db, dir.path()).await;
        let clients: Vec<Client> = servers
            .iter()
            .map(|s| support::client_for(s.addr, &tenant.key))
            .collect();
        // About one event in five, chosen by the random bits of its id.
        let (addr, flaky) = first_tries_receiver(|id, _| id.as_u128() % 5 == 0).await;
        upsert(
            &clients[0],
            "ledger.entry",
            format!("http://{addr}/ordered"),
            None,
            true,
        )
        .await;
        let mut published = Vec::with_capacity(EVENTS);
        for n in 0..EVENTS {
            published.push(publish(&clients[n % clients.len()], "ledger.entry", n).await);
        }
        let first_successes = || {
            let mut seen = HashSet::new();
            flaky
                .successes
                .lock()
                .unwrap()
                .iter()
                .filter(|id| seen.insert(**id))
                .copied()
                .collect::<Vec<Uuid>>()
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        if servers.len() > 1 {
            // One of the processes dies midway; the others go on with its queue.
            while first_successes().len() < EVENTS / 3 {
                assert!(Instant::now() < deadline, "{on}: stuck before the kill");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            servers[0].kill().await;
        }
        while first_successes().len() < EVENTS {
            assert!(
                Instant::now() < deadline,
                "{on}: {} of {EVENTS} delivered",
                first_successes().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            first_successes(),
            published,
            "{on}: first successes in publish order"
        );
        let failed_first = published.iter().filter(|id| id.as_u128() % 5 == 0).count();
        assert!(failed_first > 0, "{on}: some first tries failed");
        drop(servers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_event_takes_its_publish_order_place_in_an_ordered_queue() {
    for db in support::backends().await {
        let on = format!("{:?}", db.backend);
        let mut config = support::test_config(&db);
        // Time to resend while the failed head waits for its retry.
        config.retry_schedule = "1s,1s".parse().unwrap();
        let server = support::TestServer::start_with(&db, config).await;
        // The second event to arrive.
        let (addr, receiver) = first_tries_receiver(|_, before| before == 1).await;
        upsert(
            &server.client,
            "ledger.entry",
            format!("http://{addr}/ordered"),
            None,
            true,
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let successes = || receiver.successes.lock().unwrap().clone();

        let first = publish(&server.client, "ledger.entry", 0).await;
        while successes() != [first] {
            assert!(Instant::now() < deadline, "{on}: {:?}", successes());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The second fails its first try and becomes the blocked head; a third waits
        // behind it; then the first, older than both, is resent.
        let second = publish(&server.client, "ledger.entry", 1).await;
        while !receiver.seen.lock().unwrap().contains(&second) {
            assert!(Instant::now() < deadline, "{on}: the second never tried");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let third = publish(&server.client, "ledger.entry", 2).await;
        server
            .client
            .resend_event_for_tenant()
            .event_type("ledger.entry")
            .event_id(first)
            .send()
            .await
            .expect("resend");
        while successes().len() < 4 {
            assert!(Instant::now() < deadline, "{on}: {:?}", successes());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            successes(),
            vec![first, first, second, third],
            "{on}: the resent event goes first, in its publish order place"
        );
        server.shutdown().await;
    }
}
