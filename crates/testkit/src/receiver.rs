//! An HTTP receiver for deliveries: records every request and answers as scripted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::net::serve_detached;

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("delivery body is JSON")
    }

    /// The `event_id` of a delivery body, if it has one.
    pub fn event_id(&self) -> Option<Uuid> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        body.get("event_id")?.as_str()?.parse().ok()
    }
}

/// How a [`Receiver`] answers: a queue of scripted answers, then the default.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).expect("status"),
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Answer {
        self.body = body.into();
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Answer>>,
    default: Mutex<Option<Answer>>,
    notify: tokio::sync::Notify,
}

/// Method and path of each request a logging [`Receiver`] got, in arrival order.
pub type RequestLog = Arc<Mutex<Vec<(Method, String)>>>;

/// An HTTP server on `127.0.0.1:0` that records every request and answers as told
/// (200 by default). It runs for the rest of the process.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let addr = serve_detached(app).await;
        Receiver { addr, state }
    }

    /// Like [`Receiver::start`], and also logs each request's method and path, which
    /// [`Received`] does not keep.
    pub async fn start_logging() -> (Receiver, RequestLog) {
        let state = Arc::new(ReceiverState::default());
        let log = RequestLog::default();
        let layer_log = log.clone();
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone())
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    layer_log
                        .lock()
                        .unwrap()
                        .push((request.method().clone(), request.uri().path().to_owned()));
                    next.run(request)
                },
            ));
        let addr = serve_detached(app).await;
        (Receiver { addr, state }, log)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Answers the next requests with these, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.script.lock().unwrap().extend(answers);
    }

    /// Answers with this once the script is used up.
    pub fn set_default(&self, answer: Answer) {
        *self.state.default.lock().unwrap() = Some(answer);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived, or `timeout` passed; returns the count.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            let count = self.count();
            if count >= n {
                return count;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return count;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let next = state.script.lock().unwrap().pop_front();
        next.or_else(|| state.default.lock().unwrap().clone())
            .unwrap_or_else(|| Answer::status(200))
    };
    state.received.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    state.notify.notify_waiters();
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = (answer.status, answer.body).into_response();
    for (name, value) in answer.headers {
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::http_client;

    #[tokio::test]
    async fn receiver_records_and_answers_its_script_then_the_default() {
        let (receiver, log) = Receiver::start_logging().await;
        receiver.script([Answer::status(503).header("retry-after", "1").body("busy")]);
        receiver.set_default(Answer::status(204));
        let http = http_client();
        let url = receiver.url("/hook");
        let body = r#"{"event_id":"0190f1a2-0000-7000-8000-000000000001"}"#;
        let first = http.post(&url).body(body).send().await.unwrap();
        assert_eq!(first.status().as_u16(), 503);
        assert_eq!(first.headers()["retry-after"], "1");
        assert_eq!(first.text().await.unwrap(), "busy");
        let second = http.post(&url).body("x").send().await.unwrap();
        assert_eq!(second.status().as_u16(), 204);
        assert_eq!(receiver.wait_for(2, Duration::from_secs(5)).await, 2);
        let got = receiver.received();
        assert_eq!(
            got[0].event_id(),
            Some("0190f1a2-0000-7000-8000-000000000001".parse().unwrap())
        );
        assert_eq!(got[1].event_id(), None);
        assert_eq!(log.lock().unwrap()[1], (Method::POST, "/hook".to_owned()));
        // Bounded: nothing more arrives.
        assert_eq!(receiver.wait_for(3, Duration::from_millis(50)).await, 2);
    }
}
