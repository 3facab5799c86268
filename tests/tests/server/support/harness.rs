//! The contract harness: a server on one backend, the generated client talking to it
//! through a proxy that checks every answer against `openapi.json`, and raw calls whose
//! answers are checked on the spot (see `sonzai_webhooks_testkit::spec` for what is
//! checked).

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use sonzai_webhooks_client::{types, Client};
use sonzai_webhooks_server::config::Config;
use sonzai_webhooks_testkit::spec::{contract, Exchange, Proxy, BASE};
use uuid::Uuid;

use super::{Backend, TestDb, TestServer};

/// Upper bound of every wait for asynchronous work (deliveries, attempts).
pub const WAIT: Duration = Duration::from_secs(5);

/// An answer to a raw call, already checked against the spec.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text);
        &self.json
    }

    /// The `location` of each `errors[]` entry.
    pub fn locations(&self) -> Vec<String> {
        self.json["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["location"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[track_caller]
    pub fn expect_invalid(&self, location: &str) {
        self.expect(422);
        assert!(
            self.locations().iter().any(|l| l == location),
            "expected an error at {location}: {}",
            self.text
        );
    }
}

/// A server on one backend with its checking proxy.
pub struct Harness {
    pub backend: Backend,
    pub server: TestServer,
    pub proxy: Proxy,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn start(db: &TestDb) -> Harness {
        Self::start_with(db, super::test_config(db)).await
    }

    pub async fn start_with(db: &TestDb, config: Config) -> Harness {
        eprintln!("contract: {:?}", db.backend);
        let server = TestServer::start_with(db, config).await;
        let proxy = Proxy::start(server.addr).await;
        Harness {
            backend: db.backend,
            server,
            proxy,
            http: super::http_client(),
        }
    }

    pub fn project(&self) -> Uuid {
        self.server.tenant.project_id
    }

    pub fn key(&self) -> &str {
        &self.server.tenant.key
    }

    /// The generated client with tenant A's key, through the checking proxy.
    pub fn client(&self) -> Client {
        super::client_for(self.proxy.addr, self.key())
    }

    /// The generated client with another key, through the checking proxy.
    pub fn client_for(&self, key: &str) -> Client {
        super::client_for(self.proxy.addr, key)
    }

    /// A call with tenant A's key.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call_as(self.key(), method, path, body).await
    }

    /// A call with `key`.
    pub async fn call_as(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let body = body.map(|b| serde_json::to_vec(&b).expect("serialize body"));
        self.raw(Some(&format!("Bearer {key}")), method, path, body)
            .await
    }

    /// A call with exactly this `Authorization` header (or none) and body bytes sent
    /// as JSON. The answer is checked against the spec before it is returned.
    pub async fn raw(
        &self,
        authorization: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let body = body.map(|b| ("application/json", b));
        self.raw_typed(authorization, method, path, body).await
    }

    /// Like [`Harness::raw`] with the body's content type chosen by the caller.
    pub async fn raw_typed(
        &self,
        authorization: Option<&str>,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        let target = format!("{BASE}{path}");
        let mut request = self.http.request(
            method.clone(),
            format!("http://{}{target}", self.server.addr),
        );
        if let Some(authorization) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        if let Some((content_type, body)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        let answer = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        let status = answer.status().as_u16();
        let headers = answer.headers().clone();
        let bytes = answer.bytes().await.expect("read answer");
        let (json, problems) = contract().check(&Exchange {
            method: &method,
            target: &target,
            authorization,
            status,
            headers: &headers,
            body: &bytes,
        });
        assert!(
            problems.is_empty(),
            "[{:?}] the answer breaks openapi.json:\n{}\nbody: {}",
            self.backend,
            problems.join("\n"),
            String::from_utf8_lossy(&bytes)
        );
        Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            json,
        }
    }

    /// Polls an attempts path until at least `n` attempts are listed (at most
    /// [`WAIT`]), and returns them all.
    pub async fn attempts_until(&self, attempts_path: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let reply = self
                .call(Method::GET, &format!("{attempts_path}?limit=500"), None)
                .await;
            let attempts = reply.expect(200)["attempts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if attempts.len() >= n || Instant::now() >= deadline {
                assert!(
                    attempts.len() >= n,
                    "[{:?}] {attempts_path}: {} attempts after {WAIT:?}, expected {n}",
                    self.backend,
                    attempts.len()
                );
                return attempts;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Registers `event_type` on tenant A's project with the generated client and
    /// returns the creation secret.
    pub async fn register(&self, event_type: &str, url: &str) -> String {
        let created = self
            .client()
            .upsert_webhook()
            .project_id(self.project())
            .event_type(event_type)
            .body(types::UpsertWebhookInputBody::builder().webhook_url(url))
            .send()
            .await
            .expect("upsert")
            .into_inner();
        assert!(created.success);
        created
            .signing_secret
            .expect("a created webhook answers its secret")
    }

    /// Publishes on tenant A's project with the generated client.
    pub async fn publish(&self, event_type: &str, data: Value) -> types::PublishEventOutputBody {
        self.client()
            .publish_event()
            .project_id(self.project())
            .body(
                types::PublishEventInputBody::builder()
                    .event_type(event_type)
                    .data(data),
            )
            .send()
            .await
            .expect("publish")
            .into_inner()
    }

    pub async fn finish(self) {
        let checked = self.proxy.assert_clean();
        eprintln!(
            "contract: {:?}: {checked} client answers checked",
            self.backend
        );
        self.server.shutdown().await;
    }
}
