//! The load generator: publishes events to the server(s) and times every call.
//!
//! Two shapes. Closed loop (B1, B3): a fixed number of publishers, each sending its
//! next event as soon as the previous one is answered, which finds the highest rate
//! the server accepts. Open loop (B2): events are sent on a fixed schedule whatever
//! the answers, and latency is measured from the *scheduled* time, so a server (or a
//! bench) that falls behind shows up as latency instead of silently lowering the rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

/// Longest wait for one API call. Far above any healthy answer; reaching it means the
/// server is stuck, and the call counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The event type every publishing scenario uses.
pub const EVENT_TYPE: &str = "bench.event";

/// An HTTP client for the API. Keep-alive connections are reused, as a real
/// publisher's would be.
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

/// One project on one server process: where a publish goes, with which key, and the
/// event type it publishes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of the server, e.g. `http://127.0.0.1:4000`.
    pub base: String,
    /// The `Authorization` header value.
    pub auth: String,
    pub event_type: String,
}

impl Target {
    /// A target publishing [`EVENT_TYPE`].
    pub fn new(base: &str, key: &str) -> Self {
        Self {
            base: base.to_owned(),
            auth: format!("Bearer {key}"),
            event_type: EVENT_TYPE.to_owned(),
        }
    }

    pub fn with_event_type(mut self, event_type: &str) -> Self {
        self.event_type = event_type.to_owned();
        self
    }
}

/// An event the server accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub event_id: Uuid,
    /// When the publish was sent (open loop: when it was scheduled to be sent).
    pub started: Instant,
    /// When it was sent (open loop: a timer tick or so after `started`).
    pub sent: Instant,
    /// When its `202` was read.
    pub accepted: Instant,
    /// `deliveries_started` of the answer.
    pub deliveries: u64,
}

/// Everything a publishing phase produced.
#[derive(Debug, Default)]
pub struct PublishRun {
    pub attempted: u64,
    pub accepted: Vec<Published>,
    /// Send to answer of each accepted publish.
    pub call_latencies: Vec<Duration>,
    pub failures: u64,
    pub first_error: Option<String>,
    pub first_start: Option<Instant>,
    pub last_end: Option<Instant>,
    /// Open loop only: the worst delay between an event's scheduled and actual send.
    pub max_lag: Option<Duration>,
    /// The phase hit its deadline before sending everything.
    pub timed_out: bool,
}

impl PublishRun {
    /// First send to last answer.
    pub fn wall(&self) -> Duration {
        match (self.first_start, self.last_end) {
            (Some(start), Some(end)) => end.saturating_duration_since(start),
            _ => Duration::ZERO,
        }
    }

    fn record(&mut self, started: Instant, sent: Instant, result: anyhow::Result<(Uuid, u64)>) {
        let now = Instant::now();
        self.attempted += 1;
        self.first_start = Some(self.first_start.map_or(started, |s| s.min(started)));
        self.last_end = self.last_end.max(Some(now));
        match result {
            Ok((event_id, deliveries)) => {
                self.accepted.push(Published {
                    event_id,
                    started,
                    sent,
                    accepted: now,
                    deliveries,
                });
                self.call_latencies
                    .push(now.saturating_duration_since(sent));
            }
            Err(e) => {
                self.failures += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }

    fn merge(&mut self, other: PublishRun) {
        self.attempted += other.attempted;
        self.accepted.extend(other.accepted);
        self.call_latencies.extend(other.call_latencies);
        self.failures += other.failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.first_start = match (self.first_start, other.first_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_end = self.last_end.max(other.last_end);
        self.max_lag = self.max_lag.max(other.max_lag);
        self.timed_out |= other.timed_out;
    }
}

/// The body of event number `seq`, padded to roughly `payload_bytes` of `data`.
pub fn event_body(event_type: &str, seq: u64, payload_bytes: usize) -> String {
    serde_json::json!({
        "event_type": event_type,
        "data": { "seq": seq, "pad": "x".repeat(payload_bytes) },
    })
    .to_string()
}

/// Publishes one event through the tenant-scoped route and returns its id and how
/// many deliveries it started.
async fn publish(
    client: &reqwest::Client,
    target: &Target,
    body: String,
) -> anyhow::Result<(Uuid, u64)> {
    let response = client
        .post(format!("{}/api/v1/events", target.base))
        .header(AUTHORIZATION, &target.auth)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .context("publishing")?;
    let status = response.status();
    let text = response
        .text()
        .await
        .context("reading the publish answer")?;
    if status != StatusCode::ACCEPTED {
        bail!("publish answered {status}: {}", snippet(&text));
    }
    let answer: serde_json::Value =
        serde_json::from_str(&text).context("publish answer is not JSON")?;
    let event_id = answer
        .get("event_id")
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("publish answer has no event_id: {}", snippet(&text)))?;
    let deliveries = answer
        .get("deliveries_started")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            anyhow!(
                "publish answer has no deliveries_started: {}",
                snippet(&text)
            )
        })?;
    Ok((event_id, deliveries))
}

/// Closed loop: `publishers` tasks send `total` events between them, event `i` to
/// `targets[i % targets.len()]`, until done or `deadline`.
pub async fn closed_loop(
    client: &reqwest::Client,
    targets: Arc<Vec<Target>>,
    total: u64,
    publishers: usize,
    payload_bytes: usize,
    deadline: Instant,
) -> anyhow::Result<PublishRun> {
    if targets.is_empty() {
        bail!("no publish targets");
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..publishers.max(1) {
        let client = client.clone();
        let targets = targets.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut run = PublishRun::default();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    break;
                }
                if Instant::now() >= deadline {
                    run.timed_out = true;
                    break;
                }
                let target = &targets[(seq % targets.len() as u64) as usize];
                let body = event_body(&target.event_type, seq, payload_bytes);
                let started = Instant::now();
                let result = publish(&client, target, body).await;
                run.record(started, started, result);
            }
            run
        });
    }
    join_runs(tasks, deadline).await
}

/// Open loop: `total` events, one every `interval`, with at most `max_in_flight`
/// unanswered (beyond that, sending waits, which shows as lag and latency).
pub async fn paced(
    client: &reqwest::Client,
    targets: Arc<Vec<Target>>,
    total: u64,
    interval: Duration,
    max_in_flight: usize,
    payload_bytes: usize,
    deadline: Instant,
) -> anyhow::Result<PublishRun> {
    if targets.is_empty() {
        bail!("no publish targets");
    }
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let mut own = PublishRun::default();
    let mut finished = PublishRun::default();
    // A short lead so the first send is not already late.
    let start = Instant::now() + Duration::from_millis(20);
    // The schedule is kept by a thread of its own: the runtime's timer fires on
    // millisecond ticks, which would add most of a millisecond to every event's
    // latency as measured from its scheduled instant.
    let (ticks_tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for seq in 0..total {
            let scheduled = start + interval.saturating_mul(u32::try_from(seq).unwrap_or(u32::MAX));
            if scheduled >= deadline {
                break;
            }
            std::thread::sleep(scheduled.saturating_duration_since(Instant::now()));
            if ticks_tx.send((seq, scheduled)).is_err() {
                break;
            }
        }
    });
    let mut ticked = 0;
    while let Some((seq, scheduled)) = ticks.recv().await {
        ticked += 1;
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .context("publish slots closed")?;
        let sent = Instant::now();
        let lag = sent.saturating_duration_since(scheduled);
        own.max_lag = own.max_lag.max(Some(lag));
        let client = client.clone();
        let target = targets[(seq % targets.len() as u64) as usize].clone();
        tasks.spawn(async move {
            let body = event_body(&target.event_type, seq, payload_bytes);
            let result = publish(&client, &target, body).await;
            let mut run = PublishRun::default();
            run.record(scheduled, sent, result);
            drop(permit);
            run
        });
        // Fold in what has finished, so the set stays small over a long run.
        while let Some(done) = tasks.try_join_next() {
            finished.merge(done.context("publisher task failed")?);
        }
    }
    own.timed_out = ticked < total;
    let mut rest = join_runs(tasks, deadline).await?;
    rest.merge(finished);
    rest.merge(own);
    Ok(rest)
}

/// Waits for every publisher, but not past `deadline` plus one call timeout (the
/// longest a publisher can legitimately still be inside a call).
async fn join_runs(
    mut tasks: JoinSet<PublishRun>,
    deadline: Instant,
) -> anyhow::Result<PublishRun> {
    let mut total = PublishRun::default();
    let limit = deadline + CALL_TIMEOUT + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(limit.into(), tasks.join_next()).await {
            Ok(Some(done)) => total.merge(done.context("publisher task failed")?),
            Ok(None) => return Ok(total),
            Err(_) => {
                tasks.abort_all();
                total.timed_out = true;
                return Ok(total);
            }
        }
    }
}

/// Creates or replaces the webhook of `event_type` in the key's project; returns how
/// long the call took.
pub async fn upsert_webhook(
    client: &reqwest::Client,
    target: &Target,
    event_type: &str,
    webhook_url: &str,
) -> anyhow::Result<Duration> {
    let body = serde_json::json!({ "webhook_url": webhook_url });
    upsert_webhook_as(client, target, event_type, &body).await
}

/// Like [`upsert_webhook`] with a whole body (delivery controls and all).
pub async fn upsert_webhook_as(
    client: &reqwest::Client,
    target: &Target,
    event_type: &str,
    body: &serde_json::Value,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = client
        .put(format!("{}/api/v1/webhooks/{event_type}", target.base))
        .header(AUTHORIZATION, &target.auth)
        .json(body)
        .send()
        .await
        .with_context(|| format!("upserting webhook {event_type}"))?;
    let status = response.status();
    let text = response.text().await.context("reading the upsert answer")?;
    let elapsed = started.elapsed();
    if status != StatusCode::OK {
        bail!(
            "upsert of {event_type} answered {status}: {}",
            snippet(&text)
        );
    }
    Ok(elapsed)
}

/// Lists the key's project's webhooks; returns how long the call took, the size of the
/// answer and how many webhooks it held.
pub async fn list_webhooks(
    client: &reqwest::Client,
    target: &Target,
) -> anyhow::Result<(Duration, usize, usize)> {
    let started = Instant::now();
    let response = client
        .get(format!("{}/api/v1/webhooks", target.base))
        .header(AUTHORIZATION, &target.auth)
        .send()
        .await
        .context("listing webhooks")?;
    let status = response.status();
    let bytes = response.bytes().await.context("reading the list answer")?;
    let elapsed = started.elapsed();
    if status != StatusCode::OK {
        bail!(
            "list answered {status}: {}",
            snippet(&String::from_utf8_lossy(&bytes))
        );
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&bytes).context("list answer is not JSON")?;
    let count = answer
        .get("webhooks")
        .and_then(serde_json::Value::as_array)
        .map_or(0, Vec::len);
    Ok((elapsed, bytes.len(), count))
}

/// A recovery's state, as `recoverWebhook` and `getRecovery` answer it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RecoveryState {
    pub recovery_id: String,
    pub status: String,
    pub matched: u64,
    pub queued: u64,
}

/// Starts a recovery of the events of `event_type` published since `since` that never
/// reached its webhook ("missed").
pub async fn recover(
    client: &reqwest::Client,
    target: &Target,
    event_type: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<RecoveryState> {
    let response = client
        .post(format!(
            "{}/api/v1/webhooks/{event_type}/recover",
            target.base
        ))
        .header(AUTHORIZATION, &target.auth)
        .json(&serde_json::json!({
            "since": since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "include": ["missed"],
        }))
        .send()
        .await
        .with_context(|| format!("recovering webhook {event_type}"))?;
    recovery_answer(response, StatusCode::ACCEPTED, "recover").await
}

/// Reads a recovery's progress.
pub async fn recovery(
    client: &reqwest::Client,
    target: &Target,
    recovery_id: &str,
) -> anyhow::Result<RecoveryState> {
    let response = client
        .get(format!("{}/api/v1/recoveries/{recovery_id}", target.base))
        .header(AUTHORIZATION, &target.auth)
        .send()
        .await
        .context("reading a recovery")?;
    recovery_answer(response, StatusCode::OK, "getRecovery").await
}

async fn recovery_answer(
    response: reqwest::Response,
    expected: StatusCode,
    operation: &str,
) -> anyhow::Result<RecoveryState> {
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("reading the {operation} answer"))?;
    if status != expected {
        bail!("{operation} answered {status}: {}", snippet(&text));
    }
    serde_json::from_str(&text).with_context(|| format!("{operation} answer: {}", snippet(&text)))
}

/// The start of an error body, enough to recognise the problem without flooding the
/// terminal.
fn snippet(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use axum::routing::post;
    use axum::Router;
    use std::sync::Mutex;

    #[test]
    fn event_bodies_are_valid_publish_requests() {
        let body: serde_json::Value =
            serde_json::from_str(&event_body("bench.other", 7, 10)).unwrap();
        assert_eq!(body["event_type"], "bench.other");
        assert_eq!(body["data"]["seq"], 7);
        assert_eq!(body["data"]["pad"].as_str().unwrap().len(), 10);
    }

    #[test]
    fn snippets_are_bounded() {
        assert_eq!(snippet("short"), "short");
        let long = "é".repeat(400);
        let cut = snippet(&long);
        assert!(cut.ends_with("..."));
        assert_eq!(cut.chars().count(), 303);
    }

    #[test]
    fn runs_merge_their_extremes() {
        let t0 = Instant::now();
        let mut a = PublishRun {
            attempted: 2,
            first_start: Some(t0 + Duration::from_millis(5)),
            last_end: Some(t0 + Duration::from_millis(10)),
            ..PublishRun::default()
        };
        let b = PublishRun {
            attempted: 3,
            failures: 1,
            first_error: Some("boom".to_owned()),
            first_start: Some(t0),
            last_end: Some(t0 + Duration::from_millis(8)),
            max_lag: Some(Duration::from_millis(2)),
            ..PublishRun::default()
        };
        a.merge(b);
        assert_eq!(a.attempted, 5);
        assert_eq!(a.failures, 1);
        assert_eq!(a.first_error.as_deref(), Some("boom"));
        assert_eq!(a.wall(), Duration::from_millis(10));
        assert_eq!(a.max_lag, Some(Duration::from_millis(2)));
        assert_eq!(PublishRun::default().wall(), Duration::ZERO);
    }

    /// A stand-in for the server's publish route that records which key each publish
    /// used and answers 202, except every fifth request, which fails.
    async fn fake_server() -> (String, Arc<Mutex<Vec<String>>>) {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let calls = Arc::new(AtomicU64::new(0));
        let app = Router::new().route(
            "/api/v1/events",
            post({
                let seen = seen.clone();
                move |headers: HeaderMap| async move {
                    let auth = headers[AUTHORIZATION].to_str().unwrap().to_owned();
                    seen.lock().unwrap().push(auth);
                    if calls.fetch_add(1, Ordering::SeqCst) % 5 == 4 {
                        return (StatusCode::INTERNAL_SERVER_ERROR, "oops".to_owned());
                    }
                    let answer = serde_json::json!({
                        "event_id": Uuid::new_v4(),
                        "created_at": "2024-01-01T00:00:00Z",
                        "deliveries_started": 1,
                    });
                    (StatusCode::ACCEPTED, answer.to_string())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, seen)
    }

    fn install_crypto() {
        rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
    }

    #[tokio::test]
    async fn closed_loop_spreads_events_over_targets() {
        install_crypto();
        let (base, seen) = fake_server().await;
        let targets = Arc::new(vec![Target::new(&base, "k1"), Target::new(&base, "k2")]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let run = closed_loop(&client().unwrap(), targets, 20, 4, 16, deadline)
            .await
            .unwrap();
        assert_eq!(run.attempted, 20);
        assert_eq!(run.failures, 4);
        assert_eq!(run.accepted.len(), 16);
        assert_eq!(run.call_latencies.len(), 16);
        assert!(run.first_error.unwrap().contains("500"));
        assert!(!run.timed_out);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.iter().filter(|a| *a == "Bearer k1").count(), 10);
        assert_eq!(seen.iter().filter(|a| *a == "Bearer k2").count(), 10);
    }

    #[tokio::test]
    async fn paced_sends_on_schedule() {
        install_crypto();
        let (base, _) = fake_server().await;
        let targets = Arc::new(vec![Target::new(&base, "k")]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let started = Instant::now();
        let run = paced(
            &client().unwrap(),
            targets,
            10,
            Duration::from_millis(30),
            8,
            0,
            deadline,
        )
        .await
        .unwrap();
        assert_eq!(run.attempted, 10);
        assert_eq!(run.accepted.len(), 8);
        // Nine intervals between ten sends: the schedule, not the answers, sets the pace.
        assert!(started.elapsed() >= Duration::from_millis(270));
        let mut starts: Vec<Instant> = run.accepted.iter().map(|p| p.started).collect();
        starts.sort();
        for pair in starts.windows(2) {
            let gap = pair[1] - pair[0];
            assert_eq!(gap.as_millis() % 30, 0, "scheduled on the 30 ms grid");
        }
        assert!(run.max_lag.is_some());
    }

    #[tokio::test]
    async fn deadline_stops_the_paced_schedule() {
        install_crypto();
        let (base, _) = fake_server().await;
        let targets = Arc::new(vec![Target::new(&base, "k")]);
        let deadline = Instant::now() + Duration::from_millis(200);
        let run = paced(
            &client().unwrap(),
            targets,
            1000,
            Duration::from_millis(50),
            8,
            0,
            deadline,
        )
        .await
        .unwrap();
        assert!(run.timed_out);
        assert!(run.attempted < 10, "{}", run.attempted);
    }
}
