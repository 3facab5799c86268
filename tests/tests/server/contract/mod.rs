//! Contract tests: the generated client and plain HTTP against the reference server on
//! every backend, checking what `openapi.json` and README promise, one module per
//! resource.
//!
//! Every answer these tests see is checked against `openapi.json`: raw calls
//! ([`Harness::call`]) check their answer on the spot, and the generated client talks
//! through a [`Proxy`] that checks each answer on its way back, so a body the typed
//! client would silently accept (or a field it does not model) cannot slip through.
//! Success bodies must match the operation's declared schema, errors must be
//! `application/problem+json` `ErrorModel`s, 401s must carry `WWW-Authenticate`, and no
//! error body may carry a signing secret or the credentials of the request.

mod attempts;
mod errors;
mod events;
mod resend;
mod rotation;
mod tenancy;
mod webhooks;

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use sonzai_webhooks_client::{types, Client, Error, ResponseValue};
use sonzai_webhooks_server::store::AttemptPage;
use sonzai_webhooks_testkit::spec::{contract, Proxy};
use sonzai_webhooks_verify::Verifier;
use uuid::Uuid;

use crate::support::harness::{Harness, Reply, WAIT};
use crate::support::{self, Answer, Receiver, TestServer};

/// How long to keep watching for something that must NOT happen (a duplicate delivery).
const QUIET: Duration = Duration::from_millis(500);

/// The status and problem of a typed call that must fail.
#[track_caller]
fn problem_of<T: std::fmt::Debug>(
    result: Result<ResponseValue<T>, Error<types::ErrorModel>>,
) -> (u16, types::ErrorModel) {
    match result {
        Err(Error::ErrorResponse(answer)) => (answer.status().as_u16(), answer.into_inner()),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// `whsec_` + standard padded base64 of 32 bytes.
#[track_caller]
fn assert_secret_shape(secret: &str) {
    let encoded = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("{secret:?} lacks the whsec_ prefix"));
    assert_eq!(encoded.len(), 44, "{secret:?}");
    assert!(
        encoded.ends_with('=') && !encoded.ends_with("=="),
        "{secret:?}"
    );
    assert!(
        encoded[..43]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'),
        "{secret:?}"
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("secret is base64");
    assert_eq!(raw.len(), 32, "{secret:?}");
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("{value} is not an RFC 3339 time"))
        .with_timezone(&Utc)
}

/// The delivery body an attempt sent, decoded from its base64 `request_body`.
fn sent_body(attempt: &Value) -> Value {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(attempt["request_body"].as_str().expect("request_body"))
        .expect("request_body is base64");
    serde_json::from_slice(&raw).expect("request_body is the JSON sent")
}

fn ids(attempts: &[Value]) -> Vec<String> {
    attempts
        .iter()
        .map(|a| a["attempt_id"].as_str().expect("attempt_id").to_owned())
        .collect()
}

/// Waits until `receiver` got a delivery of `event_id` (at most [`WAIT`]).
async fn delivery_of(receiver: &Receiver, event_id: Uuid) -> support::Received {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = receiver
            .received()
            .into_iter()
            .find(|r| r.json()["event_id"] == json!(event_id.to_string()))
        {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery of event {event_id} within {WAIT:?}"
        );
        receiver
            .wait_for(receiver.count() + 1, Duration::from_millis(100))
            .await;
    }
}

/// The `message` of the first `errors[]` entry at `location`.
fn message_at(reply: &Reply, location: &str) -> String {
    reply.json["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["location"] == json!(location))
        .and_then(|e| e["message"].as_str())
        .unwrap_or_else(|| panic!("no error at {location}: {}", reply.text))
        .to_owned()
}
