//! The webhook receiver: an in-process HTTP server on loopback that answers every
//! delivery (after an optional delay, or never: a hanging receiver) and records, per
//! event id, when it first arrived and how often.
//!
//! It does as little as possible per request, so that on a small machine the numbers
//! describe the webhooks server and not the receiver: the event id is read from the
//! fixed prefix of the body instead of parsing the JSON, and signatures are not
//! verified (the integration tests cover signing).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// When an event first reached the receiver, and how many times it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub first: Instant,
    pub count: u32,
}

/// How the receiver answers a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `200` after this long (zero: at once).
    After(Duration),
    /// Accept the request and never answer, like a receiver that hangs: the server's
    /// delivery timeout is what ends each attempt.
    Never,
}

/// Upper bound on how long a hanging request is held, in case the server never
/// closes the connection and the receiver is never dropped.
const HANG_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Shared {
    reply: Reply,
    arrivals: Mutex<HashMap<Uuid, Arrival>>,
    /// Deliveries whose body carried no readable event id.
    malformed: AtomicU64,
    /// Requests (with or without an event id) that got their `200`.
    answered: AtomicU64,
    /// When the receiver started; `last_answer` counts from here.
    started: Instant,
    /// Nanoseconds from `started` to the latest `200` (zero: none yet).
    last_answer: AtomicU64,
    /// Set when the receiver stops, releasing hanging requests.
    stopped: watch::Sender<bool>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Listens on an ephemeral loopback port. Each delivery is answered `200` after
    /// `delay` (zero: at once); its arrival is recorded before the delay, so the
    /// latency measured is the server's, not the receiver's.
    pub async fn start(delay: Duration) -> anyhow::Result<Self> {
        Self::replying(Reply::After(delay)).await
    }

    /// Like [`Receiver::start`], answering as `reply` says.
    pub async fn replying(reply: Reply) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            reply,
            arrivals: Mutex::default(),
            malformed: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            started: Instant::now(),
            last_answer: AtomicU64::new(0),
            stopped: watch::Sender::new(false),
        });
        let app = Router::new().fallback(receive).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the receiver")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("receiver stopped: {e}");
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The URL to register as a webhook; `tag` only makes the URL tell which project
    /// it belongs to in the server's logs.
    pub fn url(&self, tag: &str) -> String {
        format!("http://{}/hook/{tag}", self.addr)
    }

    /// How many distinct events have arrived so far.
    pub fn distinct(&self) -> usize {
        self.lock().len()
    }

    /// Everything recorded so far.
    pub fn arrivals(&self) -> HashMap<Uuid, Arrival> {
        self.lock().clone()
    }

    pub fn malformed(&self) -> u64 {
        self.shared.malformed.load(Ordering::Relaxed)
    }

    /// Requests answered `200` so far (a hanging receiver answers none).
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// When the latest `200` was sent, if any.
    pub fn last_answer(&self) -> Option<Instant> {
        match self.shared.last_answer.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.shared.started + Duration::from_nanos(nanos)),
        }
    }

    /// Requests received so far, repeats included.
    pub fn requests(&self) -> u64 {
        let arrivals: u64 = self.lock().values().map(|a| u64::from(a.count)).sum();
        arrivals + self.malformed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arrival>> {
        // A panic while holding the lock cannot leave the map half-updated (one
        // insert or increment), so the data is still good.
        self.shared
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Connection tasks outlive the accept loop; this ends the hanging ones.
        self.shared.stopped.send_replace(true);
        self.task.abort();
    }
}

async fn receive(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let now = Instant::now();
    match event_id(&body) {
        Some(id) => {
            let mut arrivals = shared.arrivals.lock().unwrap_or_else(|e| e.into_inner());
            arrivals
                .entry(id)
                .and_modify(|a| a.count = a.count.saturating_add(1))
                .or_insert(Arrival {
                    first: now,
                    count: 1,
                });
        }
        None => {
            shared.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }
    match shared.reply {
        Reply::After(delay) => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        Reply::Never => {
            // The server's timeout usually ends this by closing the connection (which
            // drops the future); the stop signal and the limit cover the rest.
            let mut stopped = shared.stopped.subscribe();
            let _ = tokio::time::timeout(HANG_LIMIT, stopped.wait_for(|stopped| *stopped)).await;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let nanos = u64::try_from(shared.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    shared
        .last_answer
        .fetch_max(nanos.max(1), Ordering::Relaxed);
    shared.answered.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

/// The event id of a delivery body. The server writes `event_id` first, so the id is
/// sliced out of the prefix; any other layout falls back to a full JSON parse, so a
/// change in field order costs speed, not correctness.
pub fn event_id(body: &[u8]) -> Option<Uuid> {
    const PREFIX: &[u8] = br#"{"event_id":""#;
    const UUID_LEN: usize = 36;
    if let Some(rest) = body.strip_prefix(PREFIX) {
        if rest.get(UUID_LEN) == Some(&b'"') {
            if let Ok(id) = Uuid::try_parse_ascii(&rest[..UUID_LEN]) {
                return Some(id);
            }
        }
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("event_id")?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_from_the_prefix_or_the_json() {
        let id = Uuid::new_v4();
        let fast = format!(r#"{{"event_id":"{id}","event_type":"x","data":{{}}}}"#);
        assert_eq!(event_id(fast.as_bytes()), Some(id));
        let reordered = format!(r#"{{"event_type":"x", "event_id": "{id}"}}"#);
        assert_eq!(event_id(reordered.as_bytes()), Some(id));
        assert_eq!(event_id(br#"{"event_id":"not-a-uuid"}"#), None);
        assert_eq!(event_id(br#"{"event_id":"#), None);
        assert_eq!(event_id(b""), None);
        assert_eq!(event_id(br#"{"other":1}"#), None);
    }

    #[tokio::test]
    async fn records_first_arrival_and_duplicates() {
        rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
        let receiver = Receiver::start(Duration::ZERO).await.unwrap();
        let client = reqwest::Client::new();
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let url = receiver.url("p0");
        for id in [a, b, a] {
            let response = client
                .post(&url)
                .body(format!(r#"{{"event_id":"{id}","data":{{}}}}"#))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        let garbage = client.post(&url).body("nope").send().await.unwrap();
        assert_eq!(garbage.status(), 200);

        assert_eq!(receiver.distinct(), 2);
        assert_eq!(receiver.malformed(), 1);
        let arrivals = receiver.arrivals();
        assert_eq!(arrivals[&a].count, 2);
        assert_eq!(arrivals[&b].count, 1);
        assert!(arrivals[&a].first <= arrivals[&b].first);
    }

    #[tokio::test]
    async fn delay_holds_the_answer_back() {
        rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
        let receiver = Receiver::start(Duration::from_millis(150)).await.unwrap();
        let started = Instant::now();
        let response = reqwest::Client::new()
            .post(receiver.url("p0"))
            .body(format!(r#"{{"event_id":"{}"}}"#, Uuid::new_v4()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(150));
        // Recorded on arrival, not after the delay.
        let arrival = receiver.arrivals().into_values().next().unwrap();
        assert!(arrival.first.duration_since(started) < Duration::from_millis(150));
        assert_eq!(receiver.answered(), 1);
        let answered = receiver.last_answer().unwrap();
        assert!(answered.duration_since(arrival.first) >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_hanging_receiver_records_but_never_answers() {
        rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
        let receiver = Receiver::replying(Reply::Never).await.unwrap();
        let url = receiver.url("p0");
        let body = || format!(r#"{{"event_id":"{}"}}"#, Uuid::new_v4());
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = impatient.post(&url).body(body()).send().await.unwrap_err();
        assert!(err.is_timeout(), "{err}");

        let held = tokio::spawn(reqwest::Client::new().post(&url).body(body()).send());
        let deadline = Instant::now() + Duration::from_secs(5);
        while receiver.requests() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(receiver.distinct(), 2);
        assert_eq!(receiver.requests(), 2);
        assert_eq!(receiver.answered(), 0);
        assert_eq!(receiver.last_answer(), None);
        // Stopping the receiver releases what it still holds.
        drop(receiver);
        let released = tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("released when the receiver stops")
            .unwrap()
            .unwrap();
        assert_eq!(released.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
