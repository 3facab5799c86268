//! The floor under the server's cost per event: a relay that does the server's network
//! work for each event and nothing else (scenarios F1 and F2).
//!
//! `sonzai-webhooks-bench serve --listen ADDR` answers what the bench asks of a server:
//! `PUT /api/v1/webhooks/{event_type}` records where events go; `POST /api/v1/events`
//! reads the event as JSON, answers `202` with its id, and sends it on the way the
//! server delivers: the same body layout, signed with both signatures by the verify
//! crate, from a reqwest client with the server's redirect, proxy and `TCP_NODELAY`
//! settings, the answer read. It runs on as many runtime threads as the server's
//! default (half the CPUs). It stores nothing, checks no key and logs nothing, so
//! what it costs per event is what the server's own network path costs before any
//! storage, on the same machine, under the same load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use uuid::Uuid;

/// Where a webhook's events go, and the secret that signs them.
struct Webhook {
    event_type: String,
    url: String,
    secret: String,
}

#[derive(Default)]
struct Counts {
    published: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

#[derive(Clone)]
struct Relay {
    webhooks: Arc<RwLock<Vec<Arc<Webhook>>>>,
    client: reqwest::Client,
    counts: Arc<Counts>,
}

#[derive(Deserialize)]
struct WebhookInput {
    webhook_url: String,
}

#[derive(Deserialize)]
struct PublishInput {
    event_type: String,
    data: serde_json::Map<String, serde_json::Value>,
}

/// Runs the relay until the process is killed: `args` is what follows `serve`
/// (`--listen ADDR`).
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let listen: SocketAddr = match args {
        [flag, addr] if flag == "--listen" => addr.parse().context("--listen")?,
        _ => anyhow::bail!("usage: sonzai-webhooks-bench serve --listen ADDR"),
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus.div_ceil(2))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        serve(listener).await
    })
}

async fn serve(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .build()
        .context("building the delivery client")?;
    let relay = Relay {
        webhooks: Arc::default(),
        client,
        counts: Arc::default(),
    };
    let app = Router::new()
        .route("/readyz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/webhooks/{event_type}", put(upsert))
        .route("/api/v1/events", post(publish))
        .with_state(relay);
    axum::serve(listener, app).await.context("serving")
}

async fn upsert(
    State(relay): State<Relay>,
    Path(event_type): Path<String>,
    Json(input): Json<WebhookInput>,
) -> Json<serde_json::Value> {
    // 32 random bytes, as the server's secrets have.
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let webhook = Arc::new(Webhook {
        event_type: event_type.clone(),
        url: input.webhook_url.clone(),
        secret: secret.clone(),
    });
    let mut webhooks = relay.webhooks.write().unwrap_or_else(|e| e.into_inner());
    webhooks.retain(|w| w.event_type != event_type);
    webhooks.push(webhook);
    Json(serde_json::json!({
        "event_type": event_type,
        "webhook_url": input.webhook_url,
        "secret": secret,
    }))
}

async fn publish(
    State(relay): State<Relay>,
    Json(input): Json<PublishInput>,
) -> (StatusCode, Json<serde_json::Value>) {
    let event_id = Uuid::now_v7();
    let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let webhook = relay
        .webhooks
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|w| w.event_type == input.event_type)
        .cloned();
    relay.counts.published.fetch_add(1, Ordering::Relaxed);
    if let Some(webhook) = &webhook {
        // The server keeps `data` as the publisher's JSON and puts it in the body as is.
        let data = serde_json::Value::Object(input.data).to_string();
        let event_type = serde_json::Value::String(input.event_type).to_string();
        let body = format!(
            "{{\"event_id\":\"{event_id}\",\"event_type\":{event_type},\"project_id\":\"{}\",\
             \"created_at\":\"{created_at}\",\"data\":{data}}}",
            Uuid::nil()
        );
        tokio::spawn(deliver(relay.clone(), webhook.clone(), event_id, body));
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "event_id": event_id,
            "created_at": created_at,
            "deliveries_started": u64::from(webhook.is_some()),
        })),
    )
}

/// Sends one event as the server sends a delivery, and reads the answer.
async fn deliver(relay: Relay, webhook: Arc<Webhook>, event_id: Uuid, body: String) {
    let timestamp = chrono::Utc::now().timestamp();
    let id = event_id.to_string();
    let secrets = [webhook.secret.as_str()];
    let mut request = relay
        .client
        .post(&webhook.url)
        .header("content-type", "application/json")
        .header(
            HeaderName::from_static("sonzai-signature"),
            sonzai_webhooks_verify::sonzai_signature_header(&secrets, timestamp, body.as_bytes()),
        )
        .header(HeaderName::from_static("webhook-id"), &id)
        .header(
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(timestamp),
        );
    if let Ok(standard) =
        sonzai_webhooks_verify::standard_signature_header(&secrets, &id, timestamp, body.as_bytes())
    {
        request = request.header(HeaderName::from_static("webhook-signature"), standard);
    }
    let ok = match request.body(body).send().await {
        Ok(response) => {
            let success = response.status().is_success();
            success && response.bytes().await.is_ok()
        }
        Err(_) => false,
    };
    let count = if ok {
        &relay.counts.succeeded
    } else {
        &relay.counts.failed
    };
    count.fetch_add(1, Ordering::Relaxed);
}

/// The counters the bench reads from a server's `/metrics`.
async fn metrics(State(relay): State<Relay>) -> String {
    let c = &relay.counts;
    format!(
        "sonzai_events_published_total {}\n\
         sonzai_delivery_attempts_total{{outcome=\"success\"}} {}\n\
         sonzai_delivery_attempts_total{{outcome=\"failed\"}} {}\n\
         sonzai_delivery_queue_depth 0\n",
        c.published.load(Ordering::Relaxed),
        c.succeeded.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    use sonzai_webhooks_verify::Verifier;
    use tokio::sync::mpsc;

    use super::*;

    async fn listener() -> tokio::net::TcpListener {
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
        request.send().await.unwrap().json().await.unwrap()
    }

    #[tokio::test]
    async fn the_relay_answers_a_publish_and_sends_the_event_signed_as_the_server_does() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (got_tx, mut got) = mpsc::unbounded_channel::<(HeaderMap, Bytes)>();
        let receiver = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let got_tx = got_tx.clone();
                async move {
                    let _ = got_tx.send((headers, body));
                    StatusCode::OK
                }
            }),
        );
        let receiver_listener = listener().await;
        let receiver_addr = receiver_listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(receiver_listener, receiver).await });
        let relay_listener = listener().await;
        let relay = format!("http://{}", relay_listener.local_addr().unwrap());
        tokio::spawn(serve(relay_listener));

        let client = reqwest::Client::new();
        let webhook = json_of(
            client
                .put(format!("{relay}/api/v1/webhooks/order.paid"))
                .json(
                    &serde_json::json!({ "webhook_url": format!("http://{receiver_addr}/hook") }),
                ),
        )
        .await;
        let secret = webhook["secret"].as_str().unwrap().to_owned();
        let answer = client
            .post(format!("{relay}/api/v1/events"))
            .json(&serde_json::json!({ "event_type": "order.paid", "data": { "n": 7 } }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        let answer: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(answer["deliveries_started"], 1);
        let event_id: Uuid = answer["event_id"].as_str().unwrap().parse().unwrap();

        let (headers, body) = tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .expect("the event arrives")
            .unwrap();
        assert_eq!(crate::receiver::event_id(&body), Some(event_id));
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["event_type"], "order.paid");
        assert_eq!(json["data"], serde_json::json!({ "n": 7 }));
        let verifier = Verifier::new(&secret).unwrap();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        verifier
            .verify_sonzai(header("sonzai-signature").unwrap(), &body)
            .expect("the Sonzai signature verifies");
        verifier
            .verify_standard(
                header("webhook-id").unwrap(),
                header("webhook-timestamp").unwrap(),
                header("webhook-signature").unwrap(),
                &body,
            )
            .expect("the Standard Webhooks signature verifies");

        // Nothing is sent for an event type without a webhook.
        let answer = json_of(
            client
                .post(format!("{relay}/api/v1/events"))
                .json(&serde_json::json!({ "event_type": "other", "data": {} })),
        )
        .await;
        assert_eq!(answer["deliveries_started"], 0);
        let metrics = client
            .get(format!("{relay}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("sonzai_events_published_total 2\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("sonzai_delivery_attempts_total{outcome=\"success\"} 1\n"),
            "{metrics}"
        );
    }
}
