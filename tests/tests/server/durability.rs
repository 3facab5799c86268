//! Crash and shutdown behaviour of real `sonzai-webhooks serve` processes: an event
//! answered 202 is delivered at least once even when the process is SIGKILLed right
//! after, SIGTERM drains in-flight deliveries and hands the rest back, and a delivery
//! claimed by a process that died is taken over once its lease expires.
//!
//! These tests print their numbers (accepted, delivered, duplicates, drain time); run
//! with `--nocapture` to see them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sonzai_webhooks_client::{types, Client};
use uuid::Uuid;

use crate::support::{self, Answer, Receiver, ServerProcess, Tenant, TestDb};

const EVENT_TYPE: &str = "order.created";

/// Lease of the processes started by [`ServerProcess::start`] (`--lease 3s`).
const LEASE: Duration = Duration::from_secs(3);

/// A fresh tenant in `db`, created through the store before any server runs. Also
/// makes sure the server binary is up to date with the code under test.
async fn tenant(db: &TestDb) -> Tenant {
    tokio::task::spawn_blocking(support::server_binary)
        .await
        .expect("server binary");
    let store = db.open().await;
    support::create_tenant(store.as_ref(), "durability").await
}

async fn subscribe(client: &Client, receiver: &Receiver) {
    client
        .upsert_webhook_for_tenant()
        .event_type(EVENT_TYPE)
        .body(types::UpsertWebhookForTenantInputBody::builder().webhook_url(receiver.url("/hook")))
        .send()
        .await
        .expect("upsert webhook");
}

async fn publish(client: &Client, data: serde_json::Value) -> Uuid {
    client
        .publish_event_for_tenant()
        .body(
            types::PublishEventForTenantInputBody::builder()
                .event_type(EVENT_TYPE)
                .data(data),
        )
        .send()
        .await
        .expect("publish event")
        .into_inner()
        .event_id
}

/// How often each event id arrived at `receiver`.
fn arrivals(receiver: &Receiver) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    for r in receiver.received() {
        let id = r.event_id().expect("delivery body has an event_id");
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Waits (at most `timeout`) until every id of `expected` arrived at least once;
/// answers the ids still missing then, and how long the wait took.
async fn wait_delivered(
    receiver: &Receiver,
    expected: &HashSet<Uuid>,
    timeout: Duration,
) -> (Vec<Uuid>, Duration) {
    let started = Instant::now();
    let done = support::poll_until(timeout, Duration::from_millis(100), || async {
        let seen = arrivals(receiver);
        expected
            .iter()
            .all(|id| seen.contains_key(id))
            .then_some(())
    })
    .await;
    let seen = arrivals(receiver);
    let missing: Vec<Uuid> = expected
        .iter()
        .filter(|id| !seen.contains_key(id))
        .copied()
        .collect();
    assert_eq!(done.is_some(), missing.is_empty());
    (missing, started.elapsed())
}

/// Arrivals beyond the first, counted over `ids`.
fn duplicates(receiver: &Receiver, ids: &HashSet<Uuid>) -> usize {
    arrivals(receiver)
        .iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(_, n)| n - 1)
        .sum()
}

// A ----------------------------------------------------------------------------------

/// Everything the publishers of the burst saw.
#[derive(Default)]
struct Burst {
    /// Ids answered 202: the server promised to deliver these.
    accepted: Mutex<Vec<Uuid>>,
    answered: AtomicUsize,
    /// Requests that got no 202 (in flight at the kill, or sent after it).
    failed: AtomicUsize,
    /// Requests that got no 202 while the server was up: should never happen.
    rejected_while_up: AtomicUsize,
    killed: AtomicBool,
}

/// Publishes up to `count` events one after the other with plain HTTP, recording the
/// id of every 202; stops at the first failure after the kill.
async fn publisher(base: String, key: String, task: usize, count: usize, burst: Arc<Burst>) {
    let http = support::http_client();
    let url = format!("{base}/api/v1/events");
    for seq in 0..count {
        let sent = http
            .post(&url)
            .bearer_auth(&key)
            .json(&json!({"event_type": EVENT_TYPE, "data": {"task": task, "seq": seq}}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let id = match sent {
            Ok(response) if response.status().as_u16() == 202 => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|body| body["event_id"].as_str()?.parse::<Uuid>().ok()),
            _ => None,
        };
        match id {
            Some(id) => {
                burst.accepted.lock().unwrap().push(id);
                burst.answered.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                burst.failed.fetch_add(1, Ordering::SeqCst);
                if burst.killed.load(Ordering::SeqCst) {
                    return;
                }
                burst.rejected_while_up.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_accepted_event() {
    const TASKS: usize = 4;
    const PER_TASK: usize = 600;
    const KILL_AFTER: usize = 1000;
    /// After the restart the burst goes on: 4 × 300 more.
    const RESUMED_PER_TASK: usize = 300;

    for db in support::backends().await {
        let on = format!("{:?}", db.backend);
        let tenant = tenant(&db).await;
        let data_dir = tempfile::tempdir().expect("data dir");
        let receiver = Receiver::start().await;
        let mut server = ServerProcess::start(&db, data_dir.path(), &[]).await;
        subscribe(&support::client_for(server.addr, &tenant.key), &receiver).await;

        let burst = Arc::new(Burst::default());
        let started = Instant::now();
        let publishers: Vec<_> = (0..TASKS)
            .map(|task| {
                tokio::spawn(publisher(
                    format!("http://{}", server.addr),
                    tenant.key.clone(),
                    task,
                    PER_TASK,
                    burst.clone(),
                ))
            })
            .collect();
        let reached =
            support::poll_until(Duration::from_secs(120), Duration::from_millis(5), || {
                let answered = burst.answered.load(Ordering::SeqCst);
                async move { (answered >= KILL_AFTER).then_some(()) }
            })
            .await;
        assert!(
            reached.is_some(),
            "{on}: only {} events accepted within 120 s",
            burst.answered.load(Ordering::SeqCst)
        );
        burst.killed.store(true, Ordering::SeqCst);
        server.kill().await;
        let delivered_before_kill = receiver.count();
        let burst_time = started.elapsed();
        for publisher in publishers {
            tokio::time::timeout(Duration::from_secs(30), publisher)
                .await
                .expect("publishers stop after the kill")
                .expect("publisher task");
        }
        let accepted: HashSet<Uuid> = burst.accepted.lock().unwrap().iter().copied().collect();
        assert_eq!(
            accepted.len(),
            burst.accepted.lock().unwrap().len(),
            "{on}: ids are unique"
        );
        assert!(accepted.len() >= KILL_AFTER, "{on}");

        // A new process on the same database (and data dir) delivers the rest, while
        // the burst resumes against it.
        let restarted = Instant::now();
        let mut server = ServerProcess::start(&db, data_dir.path(), &[]).await;
        let resumed = Arc::new(Burst::default());
        let publishers: Vec<_> = (0..TASKS)
            .map(|task| {
                tokio::spawn(publisher(
                    format!("http://{}", server.addr),
                    tenant.key.clone(),
                    TASKS + task,
                    RESUMED_PER_TASK,
                    resumed.clone(),
                ))
            })
            .collect();
        for publisher in publishers {
            tokio::time::timeout(Duration::from_secs(120), publisher)
                .await
                .expect("the resumed burst finishes")
                .expect("publisher task");
        }
        assert_eq!(
            resumed.rejected_while_up.load(Ordering::SeqCst),
            0,
            "{on}: publishes failed after the restart"
        );
        let mut accepted = accepted;
        accepted.extend(resumed.accepted.lock().unwrap().iter().copied());
        assert!(
            accepted.len() >= 2000,
            "{on}: the burst must hold at least 2,000 accepted events, got {}",
            accepted.len()
        );
        let (missing, drain) = wait_delivered(&receiver, &accepted, Duration::from_secs(60)).await;
        let dups = duplicates(&receiver, &accepted);
        let all = arrivals(&receiver);
        // Events committed while their 202 was lost to the kill are delivered too;
        // they are not counted as accepted.
        let unanswered = all.keys().filter(|id| !accepted.contains(id)).count();
        println!(
            "{on}: SIGKILL after {burst_time:?}: accepted {}, publishes without 202 {}, \
             delivered before the kill {delivered_before_kill}; after restart: all accepted \
             delivered in {drain:?} ({:?} after the restart began), requests {}, duplicates \
             {dups}, delivered but unanswered {unanswered}, missing {}",
            accepted.len(),
            burst.failed.load(Ordering::SeqCst),
            restarted.elapsed(),
            receiver.count(),
            missing.len(),
        );
        assert_eq!(
            burst.rejected_while_up.load(Ordering::SeqCst),
            0,
            "{on}: publishes failed while the server was up"
        );
        assert!(
            missing.is_empty(),
            "{on}: {} accepted events never delivered, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );

        server.kill().await;
    }
}

// B ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_deliveries_and_a_restart_delivers_the_rest() {
    const EVENTS: usize = 50;

    for db in support::backends().await {
        let on = format!("{:?}", db.backend);
        let tenant = tenant(&db).await;
        let data_dir = tempfile::tempdir().expect("data dir");
        let receiver = Receiver::start().await;
        receiver.set_default(Answer::status(200).after(Duration::from_millis(500)));
        // Four slots: 50 half-second deliveries need about 6 s, so most are still
        // queued when SIGTERM arrives.
        let mut server = ServerProcess::start(&db, data_dir.path(), &["--workers", "4"]).await;
        let client = support::client_for(server.addr, &tenant.key);
        subscribe(&client, &receiver).await;
        let mut accepted = HashSet::new();
        for n in 0..EVENTS {
            accepted.insert(publish(&client, json!({"n": n})).await);
        }

        assert!(
            receiver.wait_for(1, Duration::from_secs(10)).await >= 1,
            "{on}"
        );
        // SIGTERM while deliveries are in flight; `--shutdown-grace 2s` lets the
        // half-second ones finish.
        let exit = tokio::time::timeout(Duration::from_secs(20), server.terminate())
            .await
            .unwrap_or_else(|_| panic!("{on}: no exit within 20 s of SIGTERM"));
        let status = server.child.wait().await.expect("exit status");
        let before_restart = receiver.count();
        println!(
            "{on}: SIGTERM: exit after {exit:?} ({status}), {before_restart} of {EVENTS} delivered"
        );
        assert!(exit < Duration::from_secs(10), "{on}: exit took {exit:?}");
        assert!(
            status.success(),
            "{on}: graceful shutdown exits 0, got {status}"
        );
        assert!(
            before_restart < EVENTS,
            "{on}: everything was delivered before SIGTERM; the test proves nothing"
        );

        let restarted = Instant::now();
        let mut server = ServerProcess::start(&db, data_dir.path(), &[]).await;
        let (missing, _) = wait_delivered(&receiver, &accepted, Duration::from_secs(60)).await;
        let dups = duplicates(&receiver, &accepted);
        println!(
            "{on}: all {EVENTS} delivered {:?} after the restart began, duplicates {dups}, \
             missing {}",
            restarted.elapsed(),
            missing.len()
        );
        assert!(missing.is_empty(), "{on}: never delivered: {missing:?}");
        // Every delivery in flight at SIGTERM finished within the grace period and
        // was recorded before exit, so the restart had no reason to resend any.
        assert_eq!(dups, 0, "{on}: a graceful shutdown caused duplicates");
        server.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_back_deliveries_that_outlive_the_grace_period() {
    // A long lease: a delivery that was not handed back would wait this long.
    let timing = [
        "--lease",
        "30s",
        "--delivery-timeout",
        "10s",
        "--shutdown-grace",
        "300ms",
    ];

    for db in support::backends().await {
        let on = format!("{:?}", db.backend);
        let tenant = tenant(&db).await;
        let data_dir = tempfile::tempdir().expect("data dir");
        let receiver = Receiver::start().await;
        // The first request hangs past the grace period; later ones answer at once.
        receiver.script([Answer::status(200).after(Duration::from_secs(60))]);
        let mut server = ServerProcess::start_with_args(&db, data_dir.path(), &timing).await;
        let client = support::client_for(server.addr, &tenant.key);
        subscribe(&client, &receiver).await;
        let event_id = publish(&client, json!({"hangs": true})).await;
        assert_eq!(
            receiver.wait_for(1, Duration::from_secs(10)).await,
            1,
            "{on}"
        );

        let exit = tokio::time::timeout(Duration::from_secs(20), server.terminate())
            .await
            .unwrap_or_else(|_| panic!("{on}: no exit within 20 s of SIGTERM"));
        assert!(
            exit < Duration::from_secs(5),
            "{on}: exit took {exit:?} with a 300 ms grace"
        );

        let restarted = Instant::now();
        let mut server = ServerProcess::start_with_args(&db, data_dir.path(), &timing).await;
        let count = receiver.wait_for(2, Duration::from_secs(20)).await;
        let resent_after = restarted.elapsed();
        println!("{on}: SIGTERM exit after {exit:?}; handed-back delivery resent {resent_after:?} after the restart began");
        assert_eq!(count, 2, "{on}: the aborted delivery was not resent");
        assert_eq!(receiver.received()[1].event_id(), Some(event_id), "{on}");
        // Handed back, not left to its 30 s lease.
        assert!(
            resent_after < Duration::from_secs(10),
            "{on}: resent only after {resent_after:?}: the lease was not handed back"
        );
        server.kill().await;
    }
}

// C ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_claimed_by_a_dead_process_is_resent_after_its_lease() {
    for db in support::backends().await {
        let on = format!("{:?}", db.backend);
        let tenant = tenant(&db).await;
        let data_dir = tempfile::tempdir().expect("data dir");
        let receiver = Receiver::start().await;
        // The first request never gets an answer while the process lives.
        receiver.script([Answer::status(200).after(Duration::from_secs(60))]);
        let mut server = ServerProcess::start(&db, data_dir.path(), &[]).await;
        let client = support::client_for(server.addr, &tenant.key);
        subscribe(&client, &receiver).await;
        let event_id = publish(&client, json!({"claimed": "then killed"})).await;

        assert_eq!(
            receiver.wait_for(1, Duration::from_secs(10)).await,
            1,
            "{on}"
        );
        server.kill().await;
        let mut server = ServerProcess::start(&db, data_dir.path(), &[]).await;

        let count = receiver.wait_for(2, LEASE + Duration::from_secs(5)).await;
        assert_eq!(count, 2, "{on}: not resent within lease + 5 s");
        let got = receiver.received();
        let gap = got[1].at - got[0].at;
        println!("{on}: resent {gap:?} after the first send (lease {LEASE:?})");
        assert_eq!(got[1].event_id(), Some(event_id), "{on}");
        assert_eq!(
            got[1].header("webhook-id"),
            got[0].header("webhook-id"),
            "{on}"
        );
        // Not before the lease ran out (the claim was made just before the first
        // send), and not much after.
        assert!(
            gap >= LEASE - Duration::from_millis(500),
            "{on}: resent after {gap:?}"
        );
        assert!(
            gap <= LEASE + Duration::from_secs(5),
            "{on}: resent after {gap:?}"
        );

        // The attempt of the dead process was never recorded; the takeover's is,
        // as the first attempt.
        let client = support::client_for(server.addr, &tenant.key);
        let recorded = support::poll_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                let list = client
                    .list_delivery_attempts_for_tenant()
                    .event_type(EVENT_TYPE)
                    .send()
                    .await
                    .ok()?
                    .into_inner()
                    .attempts
                    .unwrap_or_default();
                (!list.is_empty()).then_some(list)
            },
        )
        .await
        .expect("the takeover's attempt is recorded");
        assert_eq!(recorded.len(), 1, "{on}");
        assert_eq!(
            (recorded[0].attempt_number, recorded[0].status.as_str()),
            (1, "success"),
            "{on}"
        );
        server.kill().await;
    }
}
