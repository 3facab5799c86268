//! Contract tests: the generated client and plain HTTP against the reference server on
//! every backend, checking what `openapi.json` and README promise.
//!
//! Every answer these tests see is checked against `openapi.json`: raw calls
//! ([`Harness::call`]) check their answer on the spot, and the generated client talks
//! through a [`Proxy`] that checks each answer on its way back, so a body the typed
//! client would silently accept (or a field it does not model) cannot slip through.
//! Success bodies must match the operation's declared schema, errors must be
//! `application/problem+json` `ErrorModel`s, 401s must carry `WWW-Authenticate`, and no
//! error body may carry a signing secret or the credentials of the request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sonzai_webhooks_client::{types, Client, Error, ResponseValue};
use sonzai_webhooks_server::config::Config;
use sonzai_webhooks_server::store::AttemptPage;
use sonzai_webhooks_verify::Verifier;
use uuid::Uuid;

use crate::support::{self, Answer, Backend, Receiver, TestDb, TestServer};

/// The source of truth every answer is checked against.
const OPENAPI: &str = include_str!("../../../openapi.json");
/// Where the API is mounted.
const BASE: &str = "/api/v1";
/// Upper bound of every wait for asynchronous work (deliveries, attempts).
const WAIT: Duration = Duration::from_secs(5);
/// How long to keep watching for something that must NOT happen (a duplicate delivery).
const QUIET: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------
// The spec: operations and one validator per component schema.
// ---------------------------------------------------------------------------------

/// One operation of the spec, as far as checking its answers needs.
struct Operation {
    id: String,
    method: Method,
    /// Path segments after the base path; `{name}` matches any one segment.
    segments: Vec<String>,
    /// Declared non-default answers: status and, when it has a JSON body, its schema.
    answers: Vec<(u16, Option<String>)>,
    /// The schema of the `default` (error) answer.
    error_schema: String,
}

impl Operation {
    fn matches(&self, method: &Method, segments: &[&str]) -> bool {
        self.method == *method
            && self.segments.len() == segments.len()
            && self
                .segments
                .iter()
                .zip(segments)
                .all(|(want, got)| want.starts_with('{') || want == got)
    }
}

/// What a response is checked against: the operations of `openapi.json` and a
/// validator per component schema.
struct Contract {
    operations: Vec<Operation>,
    validators: HashMap<String, jsonschema::Validator>,
}

/// One HTTP exchange as seen on the wire.
struct Exchange<'a> {
    method: &'a Method,
    /// Path and query as sent, including the base path.
    target: &'a str,
    authorization: Option<&'a str>,
    status: u16,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(Contract::load)
}

fn schema_name(reference: &Value) -> Option<String> {
    reference
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .map(str::to_owned)
}

impl Contract {
    fn load() -> Contract {
        let spec: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        // Checked as written, every format strict: the `$schema` links the server
        // answers are paths, which the spec declares as `uri-reference`.
        let components = spec["components"].clone();
        let names: Vec<String> = components["schemas"]
            .as_object()
            .expect("components.schemas")
            .keys()
            .cloned()
            .collect();
        // Each validator's root is a document holding all components and pointing at
        // one of them, so the spec's own `#/components/schemas/...` refs resolve as they
        // are written, with no rewriting and no network.
        let validators = names
            .iter()
            .map(|name| {
                let document = json!({
                    "$ref": format!("#/components/schemas/{name}"),
                    "components": components,
                });
                let validator = jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(&document)
                    .unwrap_or_else(|e| panic!("schema {name} does not compile: {e}"));
                (name.clone(), validator)
            })
            .collect();

        let mut operations = Vec::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let Ok(method) = method.to_ascii_uppercase().parse::<Method>() else {
                    continue;
                };
                let Some(id) = op["operationId"].as_str() else {
                    continue;
                };
                let mut answers = Vec::new();
                let mut error_schema = None;
                for (code, answer) in op["responses"].as_object().expect("responses") {
                    if code == "default" {
                        error_schema = schema_name(
                            &answer["content"]["application/problem+json"]["schema"]["$ref"],
                        );
                    } else {
                        let status: u16 = code.parse().expect("numeric status");
                        answers.push((
                            status,
                            schema_name(&answer["content"]["application/json"]["schema"]["$ref"]),
                        ));
                    }
                }
                operations.push(Operation {
                    id: id.to_owned(),
                    method,
                    segments: path
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    answers,
                    error_schema: error_schema
                        .unwrap_or_else(|| panic!("{id} declares no problem+json default answer")),
                });
            }
        }
        assert!(!operations.is_empty(), "openapi.json has no operations");
        Contract {
            operations,
            validators,
        }
    }

    /// The schema violations of `value` against component `name`, one line each.
    fn violations(&self, name: &str, value: &Value) -> Vec<String> {
        let Some(validator) = self.validators.get(name) else {
            return vec![format!("the spec has no schema named {name}")];
        };
        validator
            .iter_errors(value)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_owned() } else { at };
                format!("{name} at {at}: {e}")
            })
            .collect()
    }

    fn operation(&self, method: &Method, target: &str) -> Option<&Operation> {
        let path = target.split('?').next().unwrap_or_default();
        let path = path.strip_prefix(BASE)?;
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.operations
            .iter()
            .find(|op| op.matches(method, &segments))
    }

    /// Checks one answer against the spec. Returns the body as JSON (`Null` when
    /// empty) and every way in which the answer breaks the contract.
    fn check(&self, x: &Exchange<'_>) -> (Value, Vec<String>) {
        let mut problems = Vec::new();
        let op = self.operation(x.method, x.target);
        let content_type = x
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let parse = |problems: &mut Vec<String>| -> Value {
            if x.body.is_empty() {
                problems.push("the body is empty".to_owned());
                return Value::Null;
            }
            serde_json::from_slice(x.body).unwrap_or_else(|e| {
                problems.push(format!("the body is not JSON: {e}"));
                Value::Null
            })
        };

        let mut json = Value::Null;
        if (200..300).contains(&x.status) {
            match op {
                None => problems.push("a success from a path no operation declares".to_owned()),
                Some(op) => match op.answers.iter().find(|(s, _)| *s == x.status) {
                    None => problems.push(format!(
                        "{} declares {:?}, not {}",
                        op.id,
                        op.answers.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                        x.status
                    )),
                    Some((_, None)) => {
                        if !x.body.is_empty() {
                            problems.push(format!(
                                "{} answers {} without a body, got {} bytes",
                                op.id,
                                x.status,
                                x.body.len()
                            ));
                        }
                    }
                    Some((_, Some(schema))) => {
                        if !content_type.starts_with("application/json") {
                            problems.push(format!(
                                "content type {content_type:?}, expected application/json"
                            ));
                        }
                        json = parse(&mut problems);
                        problems.extend(self.violations(schema, &json));
                        check_schema_link(&json, schema, &mut problems);
                    }
                },
            }
        } else {
            let schema = op.map_or("ErrorModel", |op| op.error_schema.as_str());
            if !content_type.starts_with("application/problem+json") {
                problems.push(format!(
                    "content type {content_type:?}, expected application/problem+json"
                ));
            }
            json = parse(&mut problems);
            problems.extend(self.violations(schema, &json));
            check_schema_link(&json, schema, &mut problems);
            if json.get("status").and_then(Value::as_u64) != Some(u64::from(x.status)) {
                problems.push(format!(
                    "problem `status` is {}, the HTTP status {}",
                    json.get("status").unwrap_or(&Value::Null),
                    x.status
                ));
            }
            if x.status == 401 {
                let challenge = x
                    .headers
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !challenge.to_ascii_lowercase().starts_with("bearer") {
                    problems.push(format!(
                        "401 without a Bearer WWW-Authenticate challenge (got {challenge:?})"
                    ));
                }
            }
            let text = String::from_utf8_lossy(x.body);
            if text.contains("whsec_") {
                problems.push("the error body carries a signing secret".to_owned());
            }
            if let Some(credentials) = x.authorization.and_then(credentials_of) {
                if text.contains(credentials) {
                    problems.push("the error body echoes the request's credentials".to_owned());
                }
            }
        }
        let problems = problems
            .into_iter()
            .map(|p| {
                format!(
                    "{} {} -> {} ({}): {p}",
                    x.method,
                    x.target,
                    x.status,
                    op.map_or("no operation", |op| op.id.as_str())
                )
            })
            .collect();
        (json, problems)
    }
}

/// The credentials part of an `Authorization` value, when it is long enough that
/// finding it in a body cannot be a coincidence.
fn credentials_of(authorization: &str) -> Option<&str> {
    let credentials = authorization
        .trim()
        .split_once(' ')
        .map_or(authorization, |(_, c)| c)
        .trim();
    (credentials.len() >= 8).then_some(credentials)
}

/// Top-level bodies may name their schema; when they do it must be the right one.
fn check_schema_link(json: &Value, schema: &str, problems: &mut Vec<String>) {
    if let Some(link) = json.get("$schema") {
        let want = format!("{BASE}/schemas/{schema}.json");
        if link.as_str() != Some(want.as_str()) {
            problems.push(format!("`$schema` is {link}, expected {want:?}"));
        }
    }
}

// ---------------------------------------------------------------------------------
// A checking proxy for the generated client.
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct ProxyLog {
    checked: usize,
    violations: Vec<String>,
}

struct ProxyState {
    upstream: SocketAddr,
    http: reqwest::Client,
    log: Mutex<ProxyLog>,
}

/// Forwards every request to the server and checks every answer against the spec on
/// its way back, recording what breaks it.
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
}

/// Connection-level headers, which belong to one hop and must not be forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive"
    )
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let state = Arc::new(ProxyState {
            upstream,
            http: support::http_client(),
            log: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy { addr, state }
    }

    /// Panics with every recorded violation; returns how many answers were checked.
    fn assert_clean(&self) -> usize {
        let log = self.state.log.lock().unwrap();
        assert!(
            log.violations.is_empty(),
            "answers to the generated client break openapi.json:\n{}",
            log.violations.join("\n")
        );
        log.checked
    }
}

async fn forward(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let fail = |state: &ProxyState, why: String| {
        state.log.lock().unwrap().violations.push(why.clone());
        (StatusCode::BAD_GATEWAY, why).into_response()
    };
    let body = match axum::body::to_bytes(body, 16 << 20).await {
        Ok(body) => body,
        Err(e) => return fail(&state, format!("proxy: reading the request body: {e}")),
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let mut upstream = state.http.request(
        parts.method.clone(),
        format!("http://{}{target}", state.upstream),
    );
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.body(body).send().await {
        Ok(answer) => answer,
        Err(e) => return fail(&state, format!("proxy: {} {target}: {e}", parts.method)),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes: Bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => {
            return fail(
                &state,
                format!("proxy: reading the answer to {target}: {e}"),
            )
        }
    };
    let authorization = parts
        .headers
        .get(reqwest::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (_, problems) = contract().check(&Exchange {
        method: &parts.method,
        target: &target,
        authorization,
        status: status.as_u16(),
        headers: &headers,
        body: &bytes,
    });
    {
        let mut log = state.log.lock().unwrap();
        log.checked += 1;
        log.violations.extend(problems);
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !hop_by_hop(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

// ---------------------------------------------------------------------------------
// The harness: a server, its checking proxy, raw calls.
// ---------------------------------------------------------------------------------

/// An answer to a raw call, already checked against the spec.
struct Reply {
    status: u16,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Reply {
    #[track_caller]
    fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text);
        &self.json
    }

    /// The `location` of each `errors[]` entry.
    fn locations(&self) -> Vec<String> {
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
    fn expect_invalid(&self, location: &str) {
        self.expect(422);
        assert!(
            self.locations().iter().any(|l| l == location),
            "expected an error at {location}: {}",
            self.text
        );
    }
}

/// A server on one backend with its checking proxy.
struct Harness {
    backend: Backend,
    server: TestServer,
    proxy: Proxy,
    http: reqwest::Client,
}

impl Harness {
    async fn start(db: &TestDb) -> Harness {
        Self::start_with(db, support::test_config(db)).await
    }

    async fn start_with(db: &TestDb, config: Config) -> Harness {
        eprintln!("contract: {:?}", db.backend);
        let server = TestServer::start_with(db, config).await;
        let proxy = Proxy::start(server.addr).await;
        Harness {
            backend: db.backend,
            server,
            proxy,
            http: support::http_client(),
        }
    }

    fn project(&self) -> Uuid {
        self.server.tenant.project_id
    }

    fn key(&self) -> &str {
        &self.server.tenant.key
    }

    /// The generated client with tenant A's key, through the checking proxy.
    fn client(&self) -> Client {
        support::client_for(self.proxy.addr, self.key())
    }

    /// The generated client with another key, through the checking proxy.
    fn client_for(&self, key: &str) -> Client {
        support::client_for(self.proxy.addr, key)
    }

    /// A call with tenant A's key.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call_as(self.key(), method, path, body).await
    }

    /// A call with `key`.
    async fn call_as(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| serde_json::to_vec(&b).expect("serialize body"));
        self.raw(Some(&format!("Bearer {key}")), method, path, body)
            .await
    }

    /// A call with exactly this `Authorization` header (or none) and body bytes sent
    /// as JSON. The answer is checked against the spec before it is returned.
    async fn raw(
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
    async fn raw_typed(
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
    async fn attempts_until(&self, attempts_path: &str, n: usize) -> Vec<Value> {
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
    async fn register(&self, event_type: &str, url: &str) -> String {
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
    async fn publish(&self, event_type: &str, data: Value) -> types::PublishEventOutputBody {
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

    async fn finish(self) {
        let checked = self.proxy.assert_clean();
        eprintln!(
            "contract: {:?}: {checked} client answers checked",
            self.backend
        );
        self.server.shutdown().await;
    }
}

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

// ---------------------------------------------------------------------------------
// The checker itself: it must reject what breaks the spec.
// ---------------------------------------------------------------------------------

#[test]
fn the_checker_rejects_answers_that_break_the_spec() {
    let c = contract();
    assert!(c
        .violations("ListWebhooksOutputBody", &json!({"webhooks": []}))
        .is_empty());
    assert!(c
        .violations("ListWebhooksOutputBody", &json!({"webhooks": null}))
        .is_empty());
    let webhook = json!({
        "project_id": Uuid::new_v4(),
        "event_type": "session.end",
        "webhook_url": "https://example.com/hook",
        "is_active": true,
        "created_at": "2024-01-02T03:04:05.123456Z",
        "updated_at": "2024-01-02T03:04:05Z",
    });
    assert!(c
        .violations("ListWebhooksOutputBody", &json!({"webhooks": [webhook]}))
        .is_empty());

    let mut missing = webhook.clone();
    missing.as_object_mut().unwrap().remove("is_active");
    let mut bad_time = webhook.clone();
    bad_time["created_at"] = json!("yesterday");
    let mut extra = webhook.clone();
    extra["secret"] = json!("x");
    for broken in [missing, bad_time, extra] {
        let problems = c.violations("ListWebhooksOutputBody", &json!({"webhooks": [broken]}));
        assert!(!problems.is_empty(), "accepted {broken}");
    }
    assert!(!c
        .violations("ListWebhooksOutputBody", &json!({}))
        .is_empty());
    assert!(!c
        .violations("ErrorModel", &json!({"status": "404"}))
        .is_empty());
    assert!(!c
        .violations(
            "UpsertWebhookOutputBody",
            &json!({"signing_secret": "whsec_x"})
        )
        .is_empty());

    let headers = |pairs: &[(&'static str, &str)]| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    };
    let check = |method: Method, target: &str, status: u16, h: &HeaderMap, body: &str| {
        c.check(&Exchange {
            method: &method,
            target,
            authorization: Some("Bearer sk_abcdefghijkl_0123456789"),
            status,
            headers: h,
            body: body.as_bytes(),
        })
        .1
    };
    let json_type = headers(&[("content-type", "application/json")]);
    let problem_type = headers(&[("content-type", "application/problem+json")]);
    let challenge = headers(&[
        ("content-type", "application/problem+json"),
        ("www-authenticate", "Bearer"),
    ]);
    // Well-formed answers pass.
    assert_eq!(
        check(
            Method::GET,
            "/api/v1/webhooks",
            200,
            &json_type,
            r#"{"webhooks":[]}"#
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        check(
            Method::GET,
            "/api/v1/webhooks",
            401,
            &challenge,
            r#"{"status":401}"#
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        check(
            Method::DELETE,
            "/api/v1/webhooks/a.b",
            204,
            &HeaderMap::new(),
            ""
        ),
        Vec::<String>::new()
    );
    // Each of these breaks one rule.
    let broken = [
        check(
            Method::GET,
            "/api/v1/webhooks",
            200,
            &problem_type,
            r#"{"webhooks":[]}"#,
        ),
        check(
            Method::GET,
            "/api/v1/webhooks",
            200,
            &json_type,
            r#"{"webhooks":{}}"#,
        ),
        check(
            Method::GET,
            "/api/v1/webhooks",
            201,
            &json_type,
            r#"{"webhooks":[]}"#,
        ),
        check(
            Method::GET,
            "/api/v1/webhooks",
            200,
            &json_type,
            r#"{"$schema":"/api/v1/schemas/Webhook.json","webhooks":[]}"#,
        ),
        check(
            Method::GET,
            "/api/v1/webhooks",
            401,
            &problem_type,
            r#"{"status":401}"#,
        ),
        check(
            Method::GET,
            "/api/v1/webhooks",
            404,
            &problem_type,
            r#"{"status":400}"#,
        ),
        check(
            Method::GET,
            "/api/v1/webhooks",
            404,
            &json_type,
            r#"{"status":404}"#,
        ),
        check(
            Method::GET,
            "/api/v1/webhooks",
            404,
            &problem_type,
            r#"{"status":404,"detail":"whsec_abc"}"#,
        ),
        check(
            Method::GET,
            "/api/v1/webhooks",
            404,
            &problem_type,
            r#"{"status":404,"detail":"sk_abcdefghijkl_0123456789"}"#,
        ),
        check(
            Method::DELETE,
            "/api/v1/webhooks/a.b",
            204,
            &HeaderMap::new(),
            "{}",
        ),
    ];
    for (i, problems) in broken.iter().enumerate() {
        assert!(!problems.is_empty(), "broken answer {i} passed the checker");
    }
}

// ---------------------------------------------------------------------------------
// 1. Upsert
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_creates_then_updates_keeping_secret_and_created_at() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let client = h.client();
        let project = h.project();

        let secret = h.register("session.end", &receiver.url("/first")).await;
        assert_secret_shape(&secret);
        let before = client
            .list_webhooks()
            .project_id(project)
            .send()
            .await
            .expect("list")
            .into_inner()
            .webhooks
            .expect("webhooks");
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].webhook_url, receiver.url("/first"));
        assert_eq!(before[0].project_id, project);
        assert!(before[0].is_active);
        assert!(before[0].updated_at >= before[0].created_at);

        // Timestamps keep microseconds; make sure the clock moved.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let updated = client
            .upsert_webhook()
            .project_id(project)
            .event_type("session.end")
            .body(types::UpsertWebhookInputBody::builder().webhook_url(receiver.url("/second")))
            .send()
            .await
            .expect("update")
            .into_inner();
        assert!(updated.success);
        assert_eq!(
            updated.signing_secret, None,
            "an update must not answer a secret"
        );

        // The tenant route updates the same webhook; the raw answer has no secret field
        // at all (not even null).
        let raw = h
            .call(
                Method::PUT,
                "/webhooks/session.end",
                Some(json!({"webhook_url": receiver.url("/third"), "auth_header": "Bearer hook-token"})),
            )
            .await;
        let body = raw.expect(200);
        assert_eq!(body["success"], json!(true));
        assert!(body.get("signing_secret").is_none(), "{}", raw.text);

        let after = h
            .call(Method::GET, &format!("/projects/{project}/webhooks"), None)
            .await;
        let webhooks = after.expect(200)["webhooks"]
            .as_array()
            .expect("array")
            .clone();
        assert_eq!(webhooks.len(), 1, "{}", after.text);
        let w = &webhooks[0];
        assert_eq!(w["webhook_url"], json!(receiver.url("/third")));
        assert_eq!(w["auth_header"], json!("Bearer hook-token"));
        assert_eq!(w["is_active"], json!(true));
        assert_eq!(w["event_type"], json!("session.end"));
        assert_eq!(
            time(&w["created_at"]),
            before[0].created_at,
            "created_at must not change"
        );
        assert!(
            time(&w["updated_at"]) > before[0].updated_at,
            "updated_at must move: {} then {}",
            before[0].updated_at,
            w["updated_at"]
        );

        // The update kept the creation secret: a delivery to the new URL is signed with it.
        let published = h.publish("session.end", json!({"n": 1})).await;
        assert_eq!(published.deliveries_started, 1);
        let delivery = delivery_of(&receiver, published.event_id).await;
        let signature = delivery
            .header("sonzai-signature")
            .expect("Sonzai-Signature");
        Verifier::new(&secret)
            .expect("verifier")
            .verify_sonzai(signature, &delivery.body)
            .expect("the creation secret still signs after an update");
        assert_eq!(delivery.header("authorization"), Some("Bearer hook-token"));

        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_reactivates_a_webhook_disabled_for_failing() {
    for db in support::backends().await {
        // Disable after two failures, however young the streak.
        let mut config = support::test_config(&db);
        config.disable_after_failures = 2;
        config.disable_after = Duration::ZERO;
        eprintln!("contract: {:?}", db.backend);
        let server = TestServer::start_with(&db, config).await;
        let proxy = Proxy::start(server.addr).await;
        let h = Harness {
            backend: db.backend,
            server,
            proxy,
            http: support::http_client(),
        };
        let receiver = Receiver::start().await;
        receiver.set_default(Answer::status(503));
        let url = receiver.url("/flaky");
        let secret = h.register("session.end", &url).await;
        assert_eq!(
            h.publish("session.end", json!({"n": 1}))
                .await
                .deliveries_started,
            1
        );

        let deadline = Instant::now() + WAIT;
        let webhook = loop {
            let reply = h.call(Method::GET, "/webhooks", None).await;
            let webhook = reply.expect(200)["webhooks"][0].clone();
            if webhook["is_active"] == json!(false) || Instant::now() >= deadline {
                break webhook;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            webhook["is_active"],
            json!(false),
            "[{:?}] never disabled",
            h.backend
        );
        let disabled_at = time(&webhook["updated_at"]);
        // An inactive webhook gets no deliveries.
        assert_eq!(
            h.publish("session.end", json!({"n": 2}))
                .await
                .deliveries_started,
            0
        );

        // An update switches it back on and keeps the secret.
        receiver.set_default(Answer::status(200));
        let updated = h
            .call(
                Method::PUT,
                "/webhooks/session.end",
                Some(json!({"webhook_url": url})),
            )
            .await;
        assert!(
            updated.expect(200).get("signing_secret").is_none(),
            "{}",
            updated.text
        );
        let reply = h.call(Method::GET, "/webhooks", None).await;
        let webhook = &reply.expect(200)["webhooks"][0];
        assert_eq!(webhook["is_active"], json!(true), "{}", reply.text);
        assert!(time(&webhook["updated_at"]) >= disabled_at);
        let published = h.publish("session.end", json!({"n": 3})).await;
        assert_eq!(published.deliveries_started, 1);
        let delivery = delivery_of(&receiver, published.event_id).await;
        Verifier::new(&secret)
            .unwrap()
            .verify_sonzai(delivery.header("sonzai-signature").unwrap(), &delivery.body)
            .expect("the secret survives disabling and reactivation");
        h.finish().await;
    }
}

// ---------------------------------------------------------------------------------
// 2. List
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_ordered_by_event_type_and_empty_is_an_array() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        for path in [
            format!("/projects/{project}/webhooks"),
            "/webhooks".to_owned(),
        ] {
            let reply = h.call(Method::GET, &path, None).await;
            assert_eq!(reply.expect(200)["webhooks"], json!([]), "{}", reply.text);
            assert!(reply.text.contains(r#""webhooks":[]"#), "{}", reply.text);
        }
        let typed = h
            .client()
            .list_webhooks_for_tenant()
            .send()
            .await
            .expect("list")
            .into_inner();
        assert_eq!(typed.webhooks, Some(Vec::new()));

        // Byte order: upper case before lower case, punctuation by code point.
        let event_types = [
            "session.end",
            "memory.created",
            "Zeta",
            "on_wakeup_ready",
            "a:b",
            "a-b",
            "a.b",
            "A",
            "0.start",
        ];
        for event_type in event_types {
            h.register(event_type, &format!("http://127.0.0.1:9/{event_type}"))
                .await;
        }
        let mut expected: Vec<&str> = event_types.to_vec();
        expected.sort_unstable();
        for path in [
            format!("/projects/{project}/webhooks"),
            "/webhooks".to_owned(),
        ] {
            let reply = h.call(Method::GET, &path, None).await;
            let listed: Vec<&str> = reply.expect(200)["webhooks"]
                .as_array()
                .expect("array")
                .iter()
                .map(|w| w["event_type"].as_str().expect("event_type"))
                .collect();
            assert_eq!(listed, expected, "[{:?}] {path}", h.backend);
        }
        let typed: Vec<String> = h
            .client()
            .list_webhooks()
            .project_id(project)
            .send()
            .await
            .expect("list")
            .into_inner()
            .webhooks
            .expect("webhooks")
            .into_iter()
            .map(|w| w.event_type)
            .collect();
        assert_eq!(typed, expected);
        h.finish().await;
    }
}

// ---------------------------------------------------------------------------------
// 3. Delete
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_answers_204_then_404_and_keeps_attempts() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let project = h.project();
        let attempts_path = format!("/projects/{project}/webhooks/session.end/attempts");
        h.register("session.end", &receiver.url("/hook")).await;
        h.register("memory.created", &receiver.url("/other")).await;

        let published = h.publish("session.end", json!({"bye": true})).await;
        assert_eq!(published.deliveries_started, 1);
        assert_eq!(
            receiver.wait_for(1, WAIT).await,
            1,
            "[{:?}] no delivery",
            h.backend
        );
        let before = h.attempts_until(&attempts_path, 1).await;
        assert_eq!(before.len(), 1);
        assert_eq!(before[0]["status"], json!("success"));
        assert_eq!(before[0]["response_code"], json!(200));
        assert_eq!(before[0]["attempt_number"], json!(1));
        assert_eq!(
            sent_body(&before[0])["event_id"],
            json!(published.event_id.to_string())
        );

        h.client()
            .delete_webhook()
            .project_id(project)
            .event_type("session.end")
            .send()
            .await
            .expect("delete");
        let again = h
            .call(
                Method::DELETE,
                &format!("/projects/{project}/webhooks/session.end"),
                None,
            )
            .await;
        again.expect(404);
        let (status, _) = problem_of(
            h.client()
                .delete_webhook_for_tenant()
                .event_type("session.end")
                .send()
                .await,
        );
        assert_eq!(status, 404);
        h.call(Method::DELETE, "/webhooks/never.registered", None)
            .await
            .expect(404);

        let listed = h.call(Method::GET, "/webhooks", None).await;
        let remaining: Vec<&Value> = listed.expect(200)["webhooks"]
            .as_array()
            .expect("array")
            .iter()
            .map(|w| &w["event_type"])
            .collect();
        assert_eq!(remaining, [&json!("memory.created")], "{}", listed.text);

        // The attempt history of the deleted webhook stays listable, on both routes.
        for path in [
            attempts_path.clone(),
            "/webhooks/session.end/attempts".to_owned(),
        ] {
            let after = h.call(Method::GET, &path, None).await;
            assert_eq!(
                ids(after.expect(200)["attempts"].as_array().expect("array")),
                ids(&before)
            );
        }
        let typed = h
            .client()
            .list_delivery_attempts_for_tenant()
            .event_type("session.end")
            .send()
            .await
            .expect("attempts")
            .into_inner();
        assert_eq!(typed.attempts.map(|a| a.len()), Some(1));

        // A deleted webhook cannot be rotated.
        h.call(Method::POST, "/webhooks/session.end/rotate-secret", None)
            .await
            .expect(404);

        // Deleting stops pending retries: the schedule would make four attempts
        // within a second; at most the one in flight at deletion time follows the first.
        let failing = Receiver::start().await;
        failing.set_default(Answer::status(500));
        h.register("retry.me", &failing.url("/down")).await;
        assert_eq!(h.publish("retry.me", json!({})).await.deliveries_started, 1);
        assert_eq!(failing.wait_for(1, WAIT).await, 1);
        h.call(Method::DELETE, "/webhooks/retry.me", None)
            .await
            .expect(204);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            failing.count() <= 2,
            "[{:?}] {} attempts after deletion",
            h.backend,
            failing.count()
        );
        let listed = h
            .call(Method::GET, "/webhooks/retry.me/attempts", None)
            .await;
        let recorded = listed.expect(200)["attempts"]
            .as_array()
            .map_or(0, Vec::len);
        assert!((1..=2).contains(&recorded), "{}", listed.text);

        // The tenant route deletes too; a deleted webhook gets no new events.
        h.call(Method::DELETE, "/webhooks/memory.created", None)
            .await
            .expect(204);
        assert_eq!(
            h.publish("session.end", json!({})).await.deliveries_started,
            0
        );
        h.finish().await;
    }
}

// ---------------------------------------------------------------------------------
// 4. Rotate
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_answers_a_new_secret_that_signs_from_then_on() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let project = h.project();
        let created = h.register("session.end", &receiver.url("/hook")).await;

        let rotated = h
            .client()
            .rotate_webhook_signing_secret()
            .project_id(project)
            .event_type("session.end")
            .send()
            .await
            .expect("rotate")
            .into_inner();
        assert!(rotated.success);
        assert_secret_shape(&rotated.signing_secret);
        assert_ne!(rotated.signing_secret, created);

        let reply = h
            .call(Method::POST, "/webhooks/session.end/rotate-secret", None)
            .await;
        let current = reply.expect(200)["signing_secret"]
            .as_str()
            .expect("signing_secret")
            .to_owned();
        assert_secret_shape(&current);
        assert_ne!(current, rotated.signing_secret);
        assert_ne!(current, created);

        // The old secrets stop signing at once.
        let published = h.publish("session.end", json!({"after": "rotation"})).await;
        let delivery = delivery_of(&receiver, published.event_id).await;
        let signature = delivery
            .header("sonzai-signature")
            .expect("Sonzai-Signature");
        assert_eq!(signature.matches("v1=").count(), 1, "{signature}");
        Verifier::new(&current)
            .unwrap()
            .verify_sonzai(signature, &delivery.body)
            .expect("the new secret signs");
        for old in [&created, &rotated.signing_secret] {
            assert!(
                Verifier::new(old)
                    .unwrap()
                    .verify_sonzai(signature, &delivery.body)
                    .is_err(),
                "an old secret still signs after a rotation without grace"
            );
        }

        // With a grace period both secrets sign (extension).
        let graced = h
            .client()
            .rotate_webhook_signing_secret_for_tenant()
            .event_type("session.end")
            .grace_seconds(60)
            .send()
            .await
            .expect("rotate with grace")
            .into_inner();
        let published = h.publish("session.end", json!({"during": "grace"})).await;
        let delivery = delivery_of(&receiver, published.event_id).await;
        let signature = delivery
            .header("sonzai-signature")
            .expect("Sonzai-Signature");
        for secret in [&graced.signing_secret, &current] {
            Verifier::new(secret)
                .unwrap()
                .verify_sonzai(signature, &delivery.body)
                .unwrap_or_else(|e| panic!("during grace every secret signs: {e}"));
        }

        // Unknown webhook: 404 on both routes.
        let (status, problem) = problem_of(
            h.client()
                .rotate_webhook_signing_secret()
                .project_id(project)
                .event_type("never.registered")
                .send()
                .await,
        );
        assert_eq!((status, problem.status), (404, Some(404)));
        h.call(
            Method::POST,
            "/webhooks/never.registered/rotate-secret",
            None,
        )
        .await
        .expect(404);

        // grace_seconds is bounded to 0..=86400.
        for bad in ["86401", "-1", "soon"] {
            h.call(
                Method::POST,
                &format!(
                    "/projects/{project}/webhooks/session.end/rotate-secret?grace_seconds={bad}"
                ),
                None,
            )
            .await
            .expect_invalid("query.grace_seconds");
        }
        let (status, problem) = problem_of(
            h.client()
                .rotate_webhook_signing_secret()
                .project_id(project)
                .event_type("session.end")
                .grace_seconds(86_401)
                .send()
                .await,
        );
        assert_eq!(status, 422);
        assert!(problem
            .errors
            .iter()
            .flatten()
            .any(|e| e.location.as_deref() == Some("query.grace_seconds")));
        h.call(
            Method::POST,
            "/webhooks/session.end/rotate-secret?grace_seconds=86400",
            None,
        )
        .await
        .expect(200);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_record_what_each_try_sent_and_got() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        let receiver = Receiver::start().await;
        receiver.script([
            Answer::status(500).body("try later"),
            Answer::status(200).body("thanks"),
        ]);
        let url = receiver.url("/ok");
        h.register("order.paid", &url).await;
        let published = h.publish("order.paid", json!({"n": 1})).await;
        assert_eq!(receiver.wait_for(2, WAIT).await, 2);
        let attempts = h.attempts_until("/webhooks/order.paid/attempts", 2).await;
        assert_eq!(attempts.len(), 2);
        let received = receiver.received();
        // Newest first: the successful retry, then the failed first try.
        for (attempt, number, status, code, answer, sent) in [
            (&attempts[0], 2, "success", 200, "thanks", &received[1]),
            (&attempts[1], 1, "failed", 500, "try later", &received[0]),
        ] {
            assert_eq!(attempt["attempt_number"], json!(number), "{attempt}");
            assert_eq!(attempt["status"], json!(status), "{attempt}");
            assert_eq!(attempt["response_code"], json!(code), "{attempt}");
            assert_eq!(attempt["response_body"], json!(answer), "{attempt}");
            assert_eq!(attempt["webhook_url"], json!(url));
            assert_eq!(attempt["event_type"], json!("order.paid"));
            assert_eq!(attempt["project_id"], json!(project.to_string()));
            assert!(attempt["duration_ms"].as_i64().is_some_and(|d| d >= 0));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(attempt["request_body"].as_str().expect("request_body"))
                .expect("base64");
            assert_eq!(bytes, sent.body, "request_body is not the exact bytes sent");
            assert_eq!(
                sent_body(attempt)["event_id"],
                json!(published.event_id.to_string())
            );
        }

        // No HTTP response at all: code 0 and a reason.
        let closed = format!("http://127.0.0.1:{}/gone", support::free_port());
        h.register("nobody.home", &closed).await;
        assert_eq!(
            h.publish("nobody.home", json!({})).await.deliveries_started,
            1
        );
        let refused = h.attempts_until("/webhooks/nobody.home/attempts", 1).await;
        let first = refused.last().expect("an attempt");
        assert_eq!(first["attempt_number"], json!(1));
        assert_eq!(first["response_code"], json!(0), "{first}");
        assert_eq!(first["status"], json!("failed"));
        assert!(
            first["error_message"]
                .as_str()
                .is_some_and(|m| !m.trim().is_empty()),
            "a failure without a response must say why: {first}"
        );
        h.finish().await;
    }
}

// ---------------------------------------------------------------------------------
// 5. Attempts paging
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_page_by_offset_and_by_cursor() {
    /// 13 events of 4 attempts each: more than the default page of 50.
    const EVENTS: usize = 13;
    const ATTEMPTS_PER_EVENT: usize = 4;
    const TOTAL: usize = EVENTS * ATTEMPTS_PER_EVENT;

    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        receiver.set_default(Answer::status(500).body("nope"));
        let project = h.project();
        let path = format!("/projects/{project}/webhooks/order.paid/attempts");
        h.register("order.paid", &receiver.url("/failing")).await;
        let mut events = BTreeSet::new();
        for n in 0..EVENTS {
            events.insert(
                h.publish("order.paid", json!({"n": n}))
                    .await
                    .event_id
                    .to_string(),
            );
        }
        assert_eq!(
            receiver.wait_for(TOTAL, WAIT).await,
            TOTAL,
            "[{:?}] deliveries with retries",
            h.backend
        );
        let all = h.attempts_until(&path, TOTAL).await;
        // The schedule allows exactly four attempts per event; nothing more arrives.
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            receiver.count(),
            TOTAL,
            "more attempts than the schedule allows"
        );
        let all = {
            let again = h.attempts_until(&path, TOTAL).await;
            assert_eq!(ids(&again), ids(&all), "the history changed while idle");
            again
        };
        assert_eq!(all.len(), TOTAL);

        // Newest first, each event numbered 1..=4, all failed with the receiver's 500.
        for pair in all.windows(2) {
            assert!(
                time(&pair[0]["created_at"]) >= time(&pair[1]["created_at"]),
                "not newest first: {} then {}",
                pair[0]["created_at"],
                pair[1]["created_at"]
            );
        }
        let mut numbers: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for attempt in &all {
            assert_eq!(attempt["status"], json!("failed"));
            assert_eq!(attempt["response_code"], json!(500));
            assert_eq!(attempt["project_id"], json!(project.to_string()));
            assert_eq!(attempt["event_type"], json!("order.paid"));
            let event = sent_body(attempt)["event_id"]
                .as_str()
                .expect("event_id")
                .to_owned();
            numbers
                .entry(event)
                .or_default()
                .push(attempt["attempt_number"].as_i64().expect("attempt_number"));
        }
        assert_eq!(numbers.keys().cloned().collect::<BTreeSet<_>>(), events);
        for (event, mut got) in numbers {
            got.sort_unstable();
            assert_eq!(got, [1, 2, 3, 4], "attempt numbers of event {event}");
        }
        let all_ids = ids(&all);

        // Default limit is 50.
        let first = h.call(Method::GET, &path, None).await;
        let first_page = first.expect(200)["attempts"].as_array().expect("array");
        assert_eq!(ids(first_page), all_ids[..50], "default page");
        let typed = h
            .client()
            .list_delivery_attempts()
            .project_id(project)
            .event_type("order.paid")
            .send()
            .await
            .expect("attempts")
            .into_inner();
        assert_eq!(typed.attempts.map(|a| a.len()), Some(50));

        // limit/offset windows tile the whole list.
        let mut tiled = Vec::new();
        for offset in (0..TOTAL + 10).step_by(10) {
            let window = h
                .call(
                    Method::GET,
                    &format!("{path}?limit=10&offset={offset}"),
                    None,
                )
                .await;
            let window = window.expect(200)["attempts"]
                .as_array()
                .expect("array")
                .clone();
            assert_eq!(
                window.len(),
                TOTAL.saturating_sub(offset).min(10),
                "offset {offset}"
            );
            tiled.extend(ids(&window));
        }
        assert_eq!(tiled, all_ids);
        let past = h
            .call(Method::GET, &format!("{path}?offset={}", TOTAL + 100), None)
            .await;
        assert_eq!(past.expect(200)["attempts"], json!([]), "{}", past.text);

        // Cursor walks: every attempt exactly once, in order; `has_more` false and no
        // `next_cursor` on the last page. 13 divides 52, the edge where a last full page
        // must not claim more.
        for page_size in [7usize, 13, 500] {
            let mut walked = Vec::new();
            let mut cursor: Option<String> = None;
            for page in 0.. {
                assert!(page <= TOTAL, "cursor walk does not end");
                let query = match &cursor {
                    Some(c) => format!("?page_size={page_size}&cursor={c}"),
                    None => format!("?page_size={page_size}"),
                };
                let reply = h.call(Method::GET, &format!("{path}{query}"), None).await;
                let body = reply.expect(200);
                let attempts = body["attempts"].as_array().expect("array");
                walked.extend(ids(attempts));
                if body["has_more"] == json!(true) {
                    assert_eq!(attempts.len(), page_size, "a page before the last is full");
                    cursor = Some(
                        body["next_cursor"]
                            .as_str()
                            .unwrap_or_else(|| {
                                panic!("has_more without next_cursor: {}", reply.text)
                            })
                            .to_owned(),
                    );
                } else {
                    assert_eq!(body["has_more"], json!(false), "{}", reply.text);
                    assert!(body.get("next_cursor").is_none(), "{}", reply.text);
                    break;
                }
            }
            assert_eq!(walked, all_ids, "cursor walk with page_size {page_size}");
        }

        // The same walk with the generated client on the tenant route.
        let client = h.client();
        let mut walked = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0.. {
            assert!(page <= TOTAL, "cursor walk does not end");
            let mut request = client
                .list_delivery_attempts_for_tenant()
                .event_type("order.paid")
                .page_size(NonZeroU64::new(11).unwrap());
            if let Some(c) = &cursor {
                request = request.cursor(c.as_str());
            }
            let body = request.send().await.expect("page").into_inner();
            walked.extend(
                body.attempts
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| a.attempt_id.to_string()),
            );
            match (body.has_more, body.next_cursor) {
                (Some(true), Some(next)) => cursor = Some(next),
                (Some(false), None) => break,
                other => panic!("inconsistent paging fields {other:?}"),
            }
        }
        assert_eq!(walked, all_ids);

        // An offset page's cursor continues right after it; without page_size the
        // cursor pages by limit.
        let window = h
            .call(Method::GET, &format!("{path}?limit=10&offset=20"), None)
            .await;
        let next = window.expect(200)["next_cursor"]
            .as_str()
            .expect("an offset page with more after it has a cursor")
            .to_owned();
        let after = h
            .call(Method::GET, &format!("{path}?limit=10&cursor={next}"), None)
            .await;
        let after = after.expect(200)["attempts"]
            .as_array()
            .expect("array")
            .clone();
        assert_eq!(ids(&after), all_ids[30..40]);

        // page_size wins over limit.
        let both = h
            .call(Method::GET, &format!("{path}?limit=2&page_size=5"), None)
            .await;
        assert_eq!(
            both.expect(200)["attempts"].as_array().map(Vec::len),
            Some(5)
        );

        // A cursor cannot be combined with an offset, and must be one the server made.
        let first = h
            .call(Method::GET, &format!("{path}?page_size=5"), None)
            .await;
        let cursor = first.expect(200)["next_cursor"]
            .as_str()
            .expect("next_cursor")
            .to_owned();
        h.call(
            Method::GET,
            &format!("{path}?cursor={cursor}&offset=3"),
            None,
        )
        .await
        .expect_invalid("query.cursor");
        h.call(
            Method::GET,
            &format!("{path}?cursor={cursor}&offset=0"),
            None,
        )
        .await
        .expect(200);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("12.not-a-uuid");
        for garbage in ["not-a-cursor", "%21%21%21", forged.as_str()] {
            h.call(Method::GET, &format!("{path}?cursor={garbage}"), None)
                .await
                .expect_invalid("query.cursor");
        }
        let (status, _) = problem_of(
            client
                .list_delivery_attempts()
                .project_id(project)
                .event_type("order.paid")
                .cursor("garbage")
                .send()
                .await,
        );
        assert_eq!(status, 422);

        // Parameter bounds.
        for (query, location) in [
            ("limit=0", "query.limit"),
            ("limit=501", "query.limit"),
            ("offset=-1", "query.offset"),
            ("page_size=0", "query.page_size"),
            ("page_size=501", "query.page_size"),
        ] {
            h.call(Method::GET, &format!("{path}?{query}"), None)
                .await
                .expect_invalid(location);
        }
        let max = h
            .call(Method::GET, &format!("{path}?limit=500"), None)
            .await;
        assert_eq!(
            max.expect(200)["attempts"].as_array().map(Vec::len),
            Some(TOTAL)
        );

        // An event type without attempts lists an empty array.
        let none = h
            .call(Method::GET, "/webhooks/never.registered/attempts", None)
            .await;
        assert_eq!(none.expect(200)["attempts"], json!([]));
        h.finish().await;
    }
}

// ---------------------------------------------------------------------------------
// 6. Tenancy
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_projects() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let store = h.server.store.clone();
        let tenant_b = support::create_tenant(store.as_ref(), "tenant-b").await;
        let project_a = h.project();
        let project_b = tenant_b.project_id;
        let client_a = h.client();
        let client_b = h.client_for(&tenant_b.key);
        let receiver_a = Receiver::start().await;
        let receiver_b = Receiver::start().await;

        // The same event type in both tenants, one on each route style.
        let secret_a = h.register("session.end", &receiver_a.url("/a")).await;
        let secret_b = client_b
            .upsert_webhook_for_tenant()
            .event_type("session.end")
            .body(
                types::UpsertWebhookForTenantInputBody::builder().webhook_url(receiver_b.url("/b")),
            )
            .send()
            .await
            .expect("upsert b")
            .into_inner()
            .signing_secret
            .expect("b's webhook is new");
        assert_ne!(secret_a, secret_b);

        let only = |reply: &Reply, project: Uuid, url: String| {
            let webhooks = reply.expect(200)["webhooks"]
                .as_array()
                .expect("array")
                .clone();
            assert_eq!(webhooks.len(), 1, "{}", reply.text);
            assert_eq!(webhooks[0]["project_id"], json!(project.to_string()));
            assert_eq!(webhooks[0]["webhook_url"], json!(url));
        };
        only(
            &h.call(Method::GET, "/webhooks", None).await,
            project_a,
            receiver_a.url("/a"),
        );
        only(
            &h.call(
                Method::GET,
                &format!("/projects/{project_a}/webhooks"),
                None,
            )
            .await,
            project_a,
            receiver_a.url("/a"),
        );
        only(
            &h.call_as(&tenant_b.key, Method::GET, "/webhooks", None)
                .await,
            project_b,
            receiver_b.url("/b"),
        );
        only(
            &h.call_as(
                &tenant_b.key,
                Method::GET,
                &format!("/projects/{project_b}/webhooks"),
                None,
            )
            .await,
            project_b,
            receiver_b.url("/b"),
        );

        // Deliveries and attempts stay with their tenant.
        let event_a = h.publish("session.end", json!({"who": "a"})).await;
        let event_b = client_b
            .publish_event_for_tenant()
            .body(
                types::PublishEventForTenantInputBody::builder()
                    .event_type("session.end")
                    .data(json!({"who": "b"})),
            )
            .send()
            .await
            .expect("publish b")
            .into_inner();
        assert_eq!(
            (event_a.deliveries_started, event_b.deliveries_started),
            (1, 1)
        );
        let delivery_a = delivery_of(&receiver_a, event_a.event_id).await;
        delivery_of(&receiver_b, event_b.event_id).await;
        Verifier::new(&secret_a)
            .unwrap()
            .verify_sonzai(
                delivery_a.header("sonzai-signature").unwrap(),
                &delivery_a.body,
            )
            .expect("a's secret signs a's delivery");
        assert!(Verifier::new(&secret_b)
            .unwrap()
            .verify_sonzai(
                delivery_a.header("sonzai-signature").unwrap(),
                &delivery_a.body
            )
            .is_err());
        let attempts_a = h.attempts_until("/webhooks/session.end/attempts", 1).await;
        let attempts_b = {
            let deadline = Instant::now() + WAIT;
            loop {
                let reply = h
                    .call_as(
                        &tenant_b.key,
                        Method::GET,
                        "/webhooks/session.end/attempts",
                        None,
                    )
                    .await;
                let attempts = reply.expect(200)["attempts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !attempts.is_empty() || Instant::now() >= deadline {
                    break attempts;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert_eq!((attempts_a.len(), attempts_b.len()), (1, 1));
        assert_eq!(attempts_a[0]["project_id"], json!(project_a.to_string()));
        assert_eq!(attempts_a[0]["webhook_url"], json!(receiver_a.url("/a")));
        assert_eq!(attempts_b[0]["project_id"], json!(project_b.to_string()));
        assert_eq!(attempts_b[0]["webhook_url"], json!(receiver_b.url("/b")));
        assert_ne!(ids(&attempts_a), ids(&attempts_b));

        // Tenant B on tenant A's project answers exactly like on a project that does not
        // exist, for every project-scoped operation.
        let random = Uuid::new_v4();
        let operations: Vec<(Method, &str, Option<Value>)> = vec![
            (Method::GET, "/projects/{p}/webhooks", None),
            (
                Method::PUT,
                "/projects/{p}/webhooks/session.end",
                Some(json!({"webhook_url": receiver_b.url("/stolen")})),
            ),
            (Method::DELETE, "/projects/{p}/webhooks/session.end", None),
            (
                Method::GET,
                "/projects/{p}/webhooks/session.end/attempts",
                None,
            ),
            (
                Method::GET,
                "/projects/{p}/webhooks/session.end/attempts?limit=1",
                None,
            ),
            (
                Method::POST,
                "/projects/{p}/webhooks/session.end/rotate-secret",
                None,
            ),
            (
                Method::POST,
                "/projects/{p}/events",
                Some(json!({"event_type": "session.end", "data": {"who": "intruder"}})),
            ),
        ];
        for (method, template, body) in &operations {
            let foreign = h
                .call_as(
                    &tenant_b.key,
                    method.clone(),
                    &template.replace("{p}", &project_a.to_string()),
                    body.clone(),
                )
                .await;
            let missing = h
                .call_as(
                    &tenant_b.key,
                    method.clone(),
                    &template.replace("{p}", &random.to_string()),
                    body.clone(),
                )
                .await;
            foreign.expect(404);
            missing.expect(404);
            assert_eq!(
                foreign.text.replace(&project_a.to_string(), "<id>"),
                missing.text.replace(&random.to_string(), "<id>"),
                "{method} {template}: a foreign project is distinguishable from a missing one"
            );
            assert_eq!(
                foreign.headers.get(reqwest::header::CONTENT_TYPE),
                missing.headers.get(reqwest::header::CONTENT_TYPE)
            );
        }
        let (status, _) = problem_of(client_b.list_webhooks().project_id(project_a).send().await);
        assert_eq!(status, 404);
        let (status, _) = problem_of(
            client_b
                .rotate_webhook_signing_secret()
                .project_id(project_a)
                .event_type("session.end")
                .send()
                .await,
        );
        assert_eq!(status, 404);

        // Idempotency keys belong to a project: the same key in another tenant is
        // another event, delivered to that tenant.
        let keyed = |key: &str| json!({"event_type": "session.end", "data": {"who": "b"}, "idempotency_key": key});
        let from_a = h
            .call(Method::POST, "/events", Some(keyed("shared-key")))
            .await;
        let from_b = h
            .call_as(
                &tenant_b.key,
                Method::POST,
                "/events",
                Some(keyed("shared-key")),
            )
            .await;
        let event_b2 = from_b.expect(202)["event_id"].clone();
        assert_ne!(from_a.expect(202)["event_id"], event_b2);
        delivery_of(&receiver_b, event_b2.as_str().unwrap().parse().unwrap()).await;

        // None of that touched tenant A: same webhook, same secret, no intruder event.
        only(
            &h.call(Method::GET, "/webhooks", None).await,
            project_a,
            receiver_a.url("/a"),
        );
        let check = h.publish("session.end", json!({"who": "a again"})).await;
        let delivery = delivery_of(&receiver_a, check.event_id).await;
        Verifier::new(&secret_a)
            .unwrap()
            .verify_sonzai(delivery.header("sonzai-signature").unwrap(), &delivery.body)
            .expect("a's secret was not rotated by b");
        assert!(
            receiver_a
                .received()
                .iter()
                .all(|r| r.json()["data"]["who"] != json!("intruder")),
            "tenant B published into tenant A's project"
        );
        assert!(receiver_b
            .received()
            .iter()
            .all(|r| r.json()["data"]["who"] == json!("b")));

        // A second project of the same tenant is reachable with tenant A's key.
        let second = store
            .create_project(h.server.tenant.tenant_id, "second")
            .await
            .expect("second project")
            .id;
        let created = client_a
            .upsert_webhook()
            .project_id(second)
            .event_type("session.end")
            .body(types::UpsertWebhookInputBody::builder().webhook_url(receiver_a.url("/second")))
            .send()
            .await
            .expect("upsert in the second project")
            .into_inner();
        let second_secret = created
            .signing_secret
            .expect("a new webhook in the second project");
        assert_ne!(second_secret, secret_a);
        only(
            &h.call(Method::GET, &format!("/projects/{second}/webhooks"), None)
                .await,
            second,
            receiver_a.url("/second"),
        );
        only(
            &h.call(Method::GET, "/webhooks", None).await,
            project_a,
            receiver_a.url("/a"),
        );
        let none = h
            .call(
                Method::GET,
                &format!("/projects/{second}/webhooks/session.end/attempts"),
                None,
            )
            .await;
        assert_eq!(none.expect(200)["attempts"], json!([]));
        h.call(
            Method::POST,
            &format!("/projects/{second}/webhooks/session.end/rotate-secret"),
            None,
        )
        .await
        .expect(200);
        let published = h
            .call(
                Method::POST,
                &format!("/projects/{second}/events"),
                Some(json!({"event_type": "session.end", "data": {}})),
            )
            .await;
        assert_eq!(published.expect(202)["deliveries_started"], json!(1));
        h.call_as(
            &tenant_b.key,
            Method::GET,
            &format!("/projects/{second}/webhooks"),
            None,
        )
        .await
        .expect(404);
        h.call(
            Method::DELETE,
            &format!("/projects/{second}/webhooks/session.end"),
            None,
        )
        .await
        .expect(204);
        h.finish().await;
    }
}

// ---------------------------------------------------------------------------------
// 7. Authentication
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_401_and_indistinguishable() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        let store = h.server.store.clone();

        let (revoked, record) =
            sonzai_webhooks_server::auth::issue_api_key(store.as_ref(), project)
                .await
                .expect("second key");
        h.call_as(revoked.expose(), Method::GET, "/webhooks", None)
            .await
            .expect(200);
        store.revoke_api_key(record.id).await.expect("revoke");

        let real = h.key().to_owned();
        // The scheme is case-insensitive (RFC 9110).
        h.raw(
            Some(&format!("bearer {real}")),
            Method::GET,
            "/webhooks",
            None,
        )
        .await
        .expect(200);
        let lookup = &real[..3 + 12];
        let wrong_secret = format!("{lookup}_{}", "Z".repeat(40));
        let unknown = format!("sk_{}_{}", "q".repeat(12), "A1".repeat(20));
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("user:password")
        );
        let credentials: Vec<(&str, Option<String>)> = vec![
            ("missing", None),
            ("empty", Some(String::new())),
            ("scheme only", Some("Bearer".to_owned())),
            ("garbage", Some("Bearer garbage".to_owned())),
            ("unknown key", Some(format!("Bearer {unknown}"))),
            ("wrong secret", Some(format!("Bearer {wrong_secret}"))),
            ("revoked key", Some(format!("Bearer {}", revoked.expose()))),
            ("basic", Some(basic)),
            ("valid key, basic scheme", Some(format!("Basic {real}"))),
            ("valid key, no scheme", Some(real.clone())),
        ];
        let requests: Vec<(Method, String, Option<Value>)> = vec![
            (Method::GET, "/webhooks".to_owned(), None),
            (Method::GET, format!("/projects/{project}/webhooks"), None),
            (
                Method::PUT,
                "/webhooks/session.end".to_owned(),
                Some(json!({"webhook_url": "http://127.0.0.1:9/x"})),
            ),
            (
                Method::DELETE,
                format!("/projects/{project}/webhooks/session.end"),
                None,
            ),
            (
                Method::GET,
                "/webhooks/session.end/attempts".to_owned(),
                None,
            ),
            (
                Method::POST,
                "/webhooks/session.end/rotate-secret".to_owned(),
                None,
            ),
            (
                Method::POST,
                "/events".to_owned(),
                Some(json!({"event_type": "session.end", "data": {}})),
            ),
        ];
        let mut bodies = BTreeSet::new();
        for (what, authorization) in &credentials {
            for (method, path, body) in &requests {
                let reply = h
                    .raw(
                        authorization.as_deref(),
                        method.clone(),
                        path,
                        body.as_ref().map(|b| serde_json::to_vec(b).unwrap()),
                    )
                    .await;
                assert_eq!(reply.status, 401, "{what}: {method} {path}: {}", reply.text);
                assert!(reply
                    .headers
                    .contains_key(reqwest::header::WWW_AUTHENTICATE));
                assert!(!reply.text.contains(&real) && !reply.text.contains(revoked.expose()));
                bodies.insert(reply.text);
            }
        }
        assert_eq!(
            bodies.len(),
            1,
            "401 bodies tell the reasons apart: {bodies:?}"
        );

        // The generated client with a revoked key sees the same problem.
        let (status, problem) = problem_of(
            h.client_for(revoked.expose())
                .list_webhooks_for_tenant()
                .send()
                .await,
        );
        assert_eq!((status, problem.status), (401, Some(401)));

        // Nothing was created by the rejected requests.
        let list = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(list.expect(200)["webhooks"], json!([]));
        h.finish().await;
    }
}

// ---------------------------------------------------------------------------------
// 8. Concurrency
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upserts_create_exactly_one_webhook() {
    const RACERS: usize = 16;
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut racers = tokio::task::JoinSet::new();
        for i in 0..RACERS {
            let client = h.client();
            let barrier = barrier.clone();
            racers.spawn(async move {
                let url = format!("http://127.0.0.1:9/racer-{i}");
                barrier.wait().await;
                let answer = client
                    .upsert_webhook()
                    .project_id(project)
                    .event_type("race.condition")
                    .body(types::UpsertWebhookInputBody::builder().webhook_url(url.as_str()))
                    .send()
                    .await;
                (url, answer.map(ResponseValue::into_inner))
            });
        }
        let mut secrets = Vec::new();
        let mut urls = BTreeSet::new();
        while let Some(joined) = racers.join_next().await {
            let (url, answer) = joined.expect("racer");
            let answer = answer
                .unwrap_or_else(|e| panic!("[{:?}] concurrent upsert failed: {e:?}", h.backend));
            assert!(answer.success);
            secrets.extend(answer.signing_secret);
            urls.insert(url);
        }
        assert_eq!(
            secrets.len(),
            1,
            "[{:?}] creation secrets handed out: {}",
            h.backend,
            secrets.len()
        );
        assert_secret_shape(&secrets[0]);

        let listed = h
            .client()
            .list_webhooks()
            .project_id(project)
            .send()
            .await
            .expect("list")
            .into_inner()
            .webhooks
            .expect("webhooks");
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(
            urls.contains(&listed[0].webhook_url),
            "{}",
            listed[0].webhook_url
        );

        let rotated = h
            .client()
            .rotate_webhook_signing_secret()
            .project_id(project)
            .event_type("race.condition")
            .send()
            .await
            .expect("rotate after the race")
            .into_inner();
        assert_secret_shape(&rotated.signing_secret);
        assert_ne!(rotated.signing_secret, secrets[0]);

        // Concurrent creations of different event types all succeed, each with its own
        // secret.
        let mut racers = tokio::task::JoinSet::new();
        for i in 0..RACERS {
            let client = h.client();
            let barrier = barrier.clone();
            racers.spawn(async move {
                barrier.wait().await;
                client
                    .upsert_webhook()
                    .project_id(project)
                    .event_type(format!("parallel.{i:02}").as_str())
                    .body(
                        types::UpsertWebhookInputBody::builder()
                            .webhook_url("http://127.0.0.1:9/p"),
                    )
                    .send()
                    .await
                    .map(ResponseValue::into_inner)
            });
        }
        let mut distinct = BTreeSet::new();
        while let Some(joined) = racers.join_next().await {
            let answer = joined
                .expect("racer")
                .unwrap_or_else(|e| panic!("[{:?}] concurrent create failed: {e:?}", h.backend));
            distinct.insert(answer.signing_secret.expect("each is a creation"));
        }
        assert_eq!(distinct.len(), RACERS);
        let listed = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(
            listed.expect(200)["webhooks"].as_array().map(Vec::len),
            Some(RACERS + 1)
        );

        // Concurrent publishes with one idempotency key make one event and one delivery.
        let receiver = Receiver::start().await;
        h.register("once.only", &receiver.url("/once")).await;
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..RACERS {
            let client = h.client();
            let barrier = barrier.clone();
            racers.spawn(async move {
                barrier.wait().await;
                let key =
                    types::PublishEventInputBodyIdempotencyKey::try_from("same-key").expect("key");
                client
                    .publish_event()
                    .project_id(project)
                    .body(
                        types::PublishEventInputBody::builder()
                            .event_type("once.only")
                            .data(json!({}))
                            .idempotency_key(Some(key)),
                    )
                    .send()
                    .await
                    .map(ResponseValue::into_inner)
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = racers.join_next().await {
            answers.push(
                joined.expect("racer").unwrap_or_else(|e| {
                    panic!("[{:?}] concurrent publish failed: {e:?}", h.backend)
                }),
            );
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "[{:?}] one idempotency key, several answers: {answers:?}",
            h.backend
        );
        assert_eq!(answers[0].deliveries_started, 1);
        delivery_of(&receiver, answers[0].event_id).await;
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            receiver.count(),
            1,
            "[{:?}] deliveries of one idempotent event",
            h.backend
        );
        h.finish().await;
    }
}

// ---------------------------------------------------------------------------------
// 9. Publish
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_counts_deliveries_dedupes_and_caps_body_size() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let project = h.project();

        let nobody = h.publish("nobody.listens", json!({"x": 1})).await;
        assert_eq!(nobody.deliveries_started, 0);

        h.register("order.paid", &receiver.url("/paid")).await;
        let data = json!({"order": 42, "items": ["a", "b"], "nested": {"ok": true}});
        let reply = h
            .call(
                Method::POST,
                &format!("/projects/{project}/events"),
                Some(json!({"event_type": "order.paid", "data": data})),
            )
            .await;
        let first = reply.expect(202).clone();
        assert_eq!(first["deliveries_started"], json!(1));
        let first_id: Uuid = first["event_id"]
            .as_str()
            .unwrap()
            .parse()
            .expect("event_id is a UUID");
        let delivery = delivery_of(&receiver, first_id).await;
        let body = delivery.json();
        assert_eq!(body["event_type"], json!("order.paid"));
        assert_eq!(body["project_id"], json!(project.to_string()));
        assert_eq!(body["data"], data);
        assert!(delivery
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")));

        // The same idempotency key answers the first answer and delivers once, on
        // either route.
        let client = h.client();
        let a = publish_order_43(&client, project, false).await;
        let b = publish_order_43(&client, project, false).await;
        let c = publish_order_43(&client, project, true).await;
        assert_eq!(
            a, b,
            "a repeated idempotency key must answer the first answer"
        );
        assert_eq!(a, c);
        assert_eq!(a.deliveries_started, 1);
        assert_ne!(a.event_id, first_id);
        let raw = h
            .call(
                Method::POST,
                "/events",
                Some(json!({"event_type": "order.paid", "data": {"order": 43}, "idempotency_key": "order-43"})),
            )
            .await;
        assert_eq!(raw.expect(202)["event_id"], json!(a.event_id.to_string()));
        delivery_of(&receiver, a.event_id).await;
        // The first answer stays the answer, even once the webhook is gone.
        h.call(Method::DELETE, "/webhooks/order.paid", None)
            .await
            .expect(204);
        assert_eq!(publish_order_43(&client, project, false).await, a);
        h.register("order.paid", &receiver.url("/paid")).await;

        // Bodies over the limit (256 KiB by default) are refused, on both routes.
        let big = json!({"event_type": "order.paid", "data": {"blob": "x".repeat(300 * 1024)}});
        for path in [format!("/projects/{project}/events"), "/events".to_owned()] {
            h.call(Method::POST, &path, Some(big.clone()))
                .await
                .expect(413);
        }

        // Nothing more arrives: one delivery per event, none for the refused bodies.
        tokio::time::sleep(QUIET).await;
        let events: Vec<Value> = receiver
            .received()
            .iter()
            .map(|r| r.json()["event_id"].clone())
            .collect();
        assert_eq!(
            events,
            [json!(first_id.to_string()), json!(a.event_id.to_string())],
            "[{:?}] deliveries",
            h.backend
        );
        h.finish().await;
    }
}

/// Publishes order 43 under idempotency key `order-43` with the generated client, on
/// the project route or the tenant route.
async fn publish_order_43(
    client: &Client,
    project: Uuid,
    tenant_route: bool,
) -> types::PublishEventOutputBody {
    let key = types::PublishEventInputBodyIdempotencyKey::try_from("order-43").expect("key");
    let answer = if tenant_route {
        let key =
            types::PublishEventForTenantInputBodyIdempotencyKey::try_from("order-43").expect("key");
        client
            .publish_event_for_tenant()
            .body(
                types::PublishEventForTenantInputBody::builder()
                    .event_type("order.paid")
                    .data(json!({"order": 43}))
                    .idempotency_key(Some(key)),
            )
            .send()
            .await
    } else {
        client
            .publish_event()
            .project_id(project)
            .body(
                types::PublishEventInputBody::builder()
                    .event_type("order.paid")
                    .data(json!({"order": 43}))
                    .idempotency_key(Some(key)),
            )
            .send()
            .await
    };
    answer.expect("publish").into_inner()
}

// ---------------------------------------------------------------------------------
// 10. Validation errors (their bodies are checked like every other answer)
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_problems_naming_each_field() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let auth = format!("Bearer {}", h.key());
        let (harness, authorization) = (&h, auth.as_str());
        let put = move |path: &'static str, body: &'static str| {
            harness.raw(
                Some(authorization),
                Method::PUT,
                path,
                Some(body.as_bytes().to_vec()),
            )
        };
        put("/webhooks/a.b", r#"{"webhook_url": "#)
            .await
            .expect(400);
        put("/webhooks/a.b", "{}")
            .await
            .expect_invalid("body.webhook_url");
        put("/webhooks/a.b", r#"{"webhook_url": 5}"#)
            .await
            .expect_invalid("body.webhook_url");
        let too_long = format!("http://127.0.0.1:9/{}", "u".repeat(2048));
        for url in [
            "ftp://127.0.0.1/x",
            "not a url",
            "/relative",
            "",
            too_long.as_str(),
        ] {
            h.call(
                Method::PUT,
                "/webhooks/a.b",
                Some(json!({"webhook_url": url})),
            )
            .await
            .expect_invalid("body.webhook_url");
        }
        let unknown = put(
            "/webhooks/a.b",
            r#"{"webhook_url": "http://127.0.0.1:9/x", "nope": 1}"#,
        )
        .await;
        unknown.expect(422);
        assert!(
            unknown.locations().iter().any(|l| l.contains("nope")),
            "{}",
            unknown.text
        );

        // The delivery credentials are a secret: not echoed when refused.
        let long_secret = "Bearer hook-credential-".to_owned() + &"s".repeat(4096);
        let refused = h
            .call(
                Method::PUT,
                "/webhooks/a.b",
                Some(json!({"webhook_url": "http://127.0.0.1:9/x", "auth_header": long_secret})),
            )
            .await;
        refused.expect_invalid("body.auth_header");
        assert!(
            !refused.text.contains("hook-credential"),
            "{}",
            refused.text
        );
        let refused = h
            .call(
                Method::PUT,
                "/webhooks/a.b",
                Some(json!({"webhook_url": "http://127.0.0.1:9/x", "auth_header": "Bearer hook-credential\n"})),
            )
            .await;
        refused.expect_invalid("body.auth_header");
        assert!(
            !refused.text.contains("hook-credential"),
            "{}",
            refused.text
        );

        put("/webhooks/a.b", "").await.expect(400);
        h.raw_typed(
            Some(authorization),
            Method::PUT,
            "/webhooks/a.b",
            Some((
                "text/plain",
                br#"{"webhook_url": "http://127.0.0.1:9/x"}"#.to_vec(),
            )),
        )
        .await
        .expect(415);

        h.call(Method::GET, "/projects/not-a-uuid/webhooks", None)
            .await
            .expect_invalid("path.projectId");
        for (query, location) in [
            ("limit=abc", "query.limit"),
            ("limit=1.5", "query.limit"),
            ("offset=9223372036854775808", "query.offset"),
            ("cursor=", "query.cursor"),
        ] {
            h.call(
                Method::GET,
                &format!("/webhooks/a.b/attempts?{query}"),
                None,
            )
            .await
            .expect_invalid(location);
        }
        let far = h
            .call(
                Method::GET,
                "/webhooks/a.b/attempts?offset=9223372036854775807",
                None,
            )
            .await;
        assert_eq!(far.expect(200)["attempts"], json!([]), "{}", far.text);
        let too_long = "e".repeat(129);
        for event_type in ["bad%20event", "bad%2Fslash", too_long.as_str()] {
            h.call(
                Method::GET,
                &format!("/webhooks/{event_type}/attempts"),
                None,
            )
            .await
            .expect_invalid("path.eventType");
        }
        h.call(
            Method::GET,
            &format!("/webhooks/{}/attempts", "e".repeat(128)),
            None,
        )
        .await
        .expect(200);

        // One entry per problem.
        let many = h
            .raw(
                Some(&auth),
                Method::PUT,
                "/projects/not-a-uuid/webhooks/bad%20event",
                Some(b"{}".to_vec()),
            )
            .await;
        many.expect(422);
        let locations: BTreeSet<String> = many.locations().into_iter().collect();
        for location in ["path.projectId", "path.eventType", "body.webhook_url"] {
            assert!(
                locations.contains(location),
                "{location} missing: {}",
                many.text
            );
        }

        let published = h
            .call(Method::POST, "/events", Some(json!({"data": {}})))
            .await;
        published.expect_invalid("body.event_type");
        h.call(Method::POST, "/events", Some(json!({"event_type": "a.b"})))
            .await
            .expect_invalid("body.data");
        h.call(
            Method::POST,
            "/events",
            Some(json!({"event_type": "a.b", "data": {}, "idempotency_key": "k".repeat(256)})),
        )
        .await
        .expect_invalid("body.idempotency_key");
        h.call(
            Method::POST,
            "/events",
            Some(json!({"event_type": "bad event", "data": {}})),
        )
        .await
        .expect_invalid("body.event_type");
        let unknown = h
            .call(
                Method::POST,
                "/events",
                Some(json!({"event_type": "a.b", "data": {}, "extra": 1})),
            )
            .await;
        unknown.expect(422);
        assert!(
            unknown.locations().iter().any(|l| l.contains("extra")),
            "{}",
            unknown.text
        );
        h.call(Method::GET, "/no/such/route", None)
            .await
            .expect(404);

        // Input bodies accept and ignore a `$schema` link, relative or absolute.
        for link in [
            "/api/v1/schemas/UpsertWebhookForTenantInputBody.json",
            "https://example.com/schemas/UpsertWebhookForTenantInputBody.json",
        ] {
            h.call(
                Method::PUT,
                "/webhooks/with.schema",
                Some(json!({"$schema": link, "webhook_url": "http://127.0.0.1:9/x"})),
            )
            .await
            .expect(200);
        }
        h.call(
            Method::POST,
            "/events",
            Some(json!({"$schema": "/api/v1/schemas/PublishEventForTenantInputBody.json", "event_type": "a.b", "data": null})),
        )
        .await
        .expect(202);
        h.call(Method::DELETE, "/webhooks/with.schema", None)
            .await
            .expect(204);

        let list = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(
            list.expect(200)["webhooks"],
            json!([]),
            "a refused request created something"
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_path_does_not_have_is_a_problem() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        // `raw` checks that each answer is a problem+json ErrorModel, as every error is;
        // RFC 9110 also requires a 405 to list what the path allows.
        for (method, path, body, allowed) in [
            (Method::PATCH, "/webhooks", None, "GET"),
            (Method::POST, "/webhooks/a.b", Some(json!({})), "PUT"),
        ] {
            let reply = h.call(method, path, body).await;
            reply.expect(405);
            let allow = reply
                .headers
                .get(reqwest::header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(allow.contains(allowed), "{path}: Allow is {allow:?}");
        }
        h.finish().await;
    }
}

// ---------------------------------------------------------------------------------
// 11. Limits: what one caller can make the server hold
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_pages_stop_at_the_byte_budget() {
    const EVENTS: usize = 12;
    const BUDGET: usize = 1_000_000;
    /// What a page may take besides its attempts, as the server reckons it.
    const ENVELOPE: usize = 256;
    for db in support::backends().await {
        let mut config = support::test_config(&db);
        config.max_attempts_page_bytes = BUDGET;
        let h = Harness::start_with(&db, config).await;
        let receiver = Receiver::start().await;
        // 32 KiB of quotes and backslashes, stored as they are and escaped to twice
        // that in a listing: the page must be measured as JSON, not as stored.
        receiver.set_default(Answer::status(200).body("\"\\".repeat(16 * 1024)));
        h.register("big.event", &receiver.url("/big")).await;
        for n in 0..EVENTS {
            // 40 to 160 KB of request body, so pages end at different places.
            let filler = "x".repeat(40_000 * (1 + n % 4));
            h.publish("big.event", json!({"n": n, "filler": filler}))
                .await;
        }
        assert_eq!(receiver.wait_for(EVENTS, WAIT).await, EVENTS);

        // The truth, from the store without a budget, once every attempt is recorded.
        let project = h.project();
        let deadline = Instant::now() + WAIT;
        let expected = loop {
            let listed = h
                .server
                .store
                .list_attempts(
                    project,
                    "big.event",
                    AttemptPage::Offset {
                        limit: 500,
                        offset: 0,
                    },
                    usize::MAX,
                )
                .await
                .expect("store listing");
            if listed.attempts.len() >= EVENTS || Instant::now() >= deadline {
                assert_eq!(listed.attempts.len(), EVENTS, "[{:?}]", h.backend);
                break listed
                    .attempts
                    .iter()
                    .map(|a| a.id.to_string())
                    .collect::<Vec<_>>();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        let path = format!("/projects/{project}/webhooks/big.event/attempts");
        let json_len = |v: &Value| serde_json::to_string(v).expect("serialize").len();
        // One page: within the budget, and cut only where the next attempt would not
        // have fitted.
        let page = |query: String| {
            let (h, path) = (&h, &path);
            async move {
                let reply = h.call(Method::GET, &format!("{path}?{query}"), None).await;
                reply.expect(200);
                assert!(
                    reply.text.len() <= BUDGET,
                    "[{:?}] {query}: an answer of {} bytes",
                    h.backend,
                    reply.text.len()
                );
                let attempts = reply.json["attempts"].as_array().expect("array").clone();
                assert!(!attempts.is_empty(), "{query}: an empty page");
                let next_cursor = match reply.json["has_more"].as_bool() {
                    Some(true) => Some(
                        reply.json["next_cursor"]
                            .as_str()
                            .expect("has_more comes with next_cursor")
                            .to_owned(),
                    ),
                    Some(false) => {
                        assert!(reply.json.get("next_cursor").is_none(), "{}", reply.text);
                        None
                    }
                    None => panic!("no has_more: {}", reply.text),
                };
                (reply.text.len(), attempts, next_cursor)
            }
        };

        let (first_len, first, cursor) = page("limit=500".to_owned()).await;
        assert!(
            first.len() < EVENTS,
            "[{:?}] {} attempts in {first_len} bytes",
            h.backend,
            first.len()
        );
        let mut cursor = cursor.expect("a page cut by its budget says more follow");
        assert_eq!(ids(&first), expected[..first.len()]);

        // Following the cursor lists every attempt exactly once, in order, each page
        // filled as far as the budget allows.
        let mut walked = ids(&first);
        let mut previous_len = first_len;
        let mut pages = 1;
        loop {
            assert!(pages <= EVENTS, "the cursor walk does not end");
            let (len, attempts, next) = page(format!("limit=500&cursor={cursor}")).await;
            assert!(
                previous_len + json_len(&attempts[0]) + 1 > BUDGET - ENVELOPE,
                "[{:?}] a page of {previous_len} bytes ended with room for {} more",
                h.backend,
                json_len(&attempts[0])
            );
            walked.extend(ids(&attempts));
            pages += 1;
            match next {
                Some(next) => {
                    cursor = next;
                    previous_len = len;
                }
                None => break,
            }
        }
        assert_eq!(walked, expected, "[{:?}] the cursor walk", h.backend);
        assert!(pages >= 3, "[{:?}] {pages} pages", h.backend);

        // An offset page cut by the budget can be followed by cursor.
        let (_, from_one, cursor) = page("limit=500&offset=1".to_owned()).await;
        let mut walked = ids(&from_one);
        let mut cursor = cursor.expect("the offset page is cut by its budget");
        for _ in 0..EVENTS {
            let (_, attempts, next) = page(format!("page_size=500&cursor={cursor}")).await;
            walked.extend(ids(&attempts));
            match next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        assert_eq!(walked, expected[1..], "[{:?}] from offset 1", h.backend);

        // The tenant route and the generated client see the same first page.
        let (_, tenant_first, _) = {
            let reply = h
                .call(Method::GET, "/webhooks/big.event/attempts?limit=500", None)
                .await;
            let attempts = reply.expect(200)["attempts"]
                .as_array()
                .expect("array")
                .clone();
            (reply.text.len(), attempts, ())
        };
        assert_eq!(ids(&tenant_first), ids(&first));
        let typed = h
            .client()
            .list_delivery_attempts()
            .project_id(project)
            .event_type("big.event")
            .limit(NonZeroU64::new(500).unwrap())
            .send()
            .await
            .expect("attempts")
            .into_inner();
        assert_eq!(typed.has_more, Some(true));
        assert_eq!(typed.attempts.map(|a| a.len()), Some(first.len()));
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_per_project_are_limited_with_409() {
    const LIMIT: usize = 5;
    const RACERS: usize = 20;
    for db in support::backends().await {
        let mut config = support::test_config(&db);
        config.max_webhooks_per_project = LIMIT;
        let h = Harness::start_with(&db, config).await;
        let project = h.project();
        for n in 0..LIMIT {
            h.register(&format!("hook.{n}"), "http://127.0.0.1:9/hook")
                .await;
        }
        let body = json!({"webhook_url": "http://127.0.0.1:9/more"});
        for path in [
            format!("/projects/{project}/webhooks/hook.{LIMIT}"),
            format!("/webhooks/hook.{LIMIT}"),
        ] {
            let refused = h.call(Method::PUT, &path, Some(body.clone())).await;
            let problem = refused.expect(409);
            assert_eq!(problem["status"], json!(409), "{}", refused.text);
            let detail = problem["detail"].as_str().expect("detail");
            assert!(
                detail.contains("limit of 5 webhooks"),
                "[{:?}] {path}: {detail}",
                h.backend
            );
        }
        let (status, problem) = problem_of(
            h.client()
                .upsert_webhook()
                .project_id(project)
                .event_type("hook.extra")
                .body(types::UpsertWebhookInputBody::builder().webhook_url("http://127.0.0.1:9/x"))
                .send()
                .await,
        );
        assert_eq!(status, 409, "{problem:?}");

        // Updating a webhook at the limit is not a create.
        let updated = h
            .call(
                Method::PUT,
                "/webhooks/hook.2",
                Some(json!({"webhook_url": "http://127.0.0.1:9/updated"})),
            )
            .await;
        let updated = updated.expect(200);
        assert_eq!(updated["success"], json!(true));
        assert!(updated.get("signing_secret").is_none(), "{updated}");
        let listed = h.call(Method::GET, "/webhooks", None).await;
        let listed = listed.expect(200)["webhooks"]
            .as_array()
            .expect("array")
            .clone();
        let types: Vec<&str> = listed
            .iter()
            .map(|w| w["event_type"].as_str().expect("event_type"))
            .collect();
        assert_eq!(types, ["hook.0", "hook.1", "hook.2", "hook.3", "hook.4"]);
        assert_eq!(
            listed[2]["webhook_url"],
            json!("http://127.0.0.1:9/updated")
        );

        // A delete makes room again.
        h.call(Method::DELETE, "/webhooks/hook.0", None)
            .await
            .expect(204);
        h.call(
            Method::PUT,
            &format!("/webhooks/hook.{LIMIT}"),
            Some(body.clone()),
        )
        .await
        .expect(200);

        // Concurrent creates in a fresh project of the same tenant stop at the limit.
        let second = h
            .server
            .store
            .create_project(h.server.tenant.tenant_id, "second")
            .await
            .expect("project")
            .id;
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut racers = tokio::task::JoinSet::new();
        for i in 0..RACERS {
            let client = h.client();
            let barrier = barrier.clone();
            racers.spawn(async move {
                barrier.wait().await;
                client
                    .upsert_webhook()
                    .project_id(second)
                    .event_type(format!("race.{i}"))
                    .body(
                        types::UpsertWebhookInputBody::builder()
                            .webhook_url("http://127.0.0.1:9/race"),
                    )
                    .send()
                    .await
            });
        }
        let (mut created, mut refused) = (0, 0);
        while let Some(joined) = racers.join_next().await {
            match joined.expect("racer") {
                Ok(answer) => {
                    assert!(answer.into_inner().signing_secret.is_some());
                    created += 1;
                }
                Err(Error::ErrorResponse(answer)) if answer.status().as_u16() == 409 => {
                    refused += 1
                }
                Err(other) => panic!("[{:?}] unexpected answer {other:?}", h.backend),
            }
        }
        assert_eq!(
            (created, refused),
            (LIMIT, RACERS - LIMIT),
            "[{:?}] concurrent creates",
            h.backend
        );
        let listed = h
            .call(Method::GET, &format!("/projects/{second}/webhooks"), None)
            .await;
        assert_eq!(
            listed.expect(200)["webhooks"].as_array().map(Vec::len),
            Some(LIMIT)
        );
        h.finish().await;
    }
}

// ---------------------------------------------------------------------------------
// 12. Hardening: NUL characters, stored URLs, credentials in URLs, `$schema` links
// ---------------------------------------------------------------------------------

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

#[test]
fn schema_links_are_uri_references_checked_strictly() {
    let c = contract();
    // What every answer carries: a path on the server, not an absolute URI.
    assert!(c
        .violations(
            "ListWebhooksOutputBody",
            &json!({"$schema": "/api/v1/schemas/ListWebhooksOutputBody.json", "webhooks": []})
        )
        .is_empty());
    assert!(c
        .violations(
            "ErrorModel",
            &json!({"$schema": "/api/v1/schemas/ErrorModel.json", "status": 404})
        )
        .is_empty());
    // The format is still checked: a value that is no URI reference at all breaks it.
    assert!(!c
        .violations(
            "ListWebhooksOutputBody",
            &json!({"$schema": "not a \\ reference", "webhooks": []})
        )
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_any_string_input_is_422_on_every_backend() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let url = "http://127.0.0.1:9/x";
        for (body, location) in [
            (
                json!({"webhook_url": "http://127.0.0.1:9/a\u{0}b"}),
                "body.webhook_url",
            ),
            (
                json!({"webhook_url": url, "auth_header": "Bearer a\u{0}b"}),
                "body.auth_header",
            ),
            (
                json!({"$schema": "x\u{0}", "webhook_url": url}),
                "body.$schema",
            ),
        ] {
            let reply = h.call(Method::PUT, "/webhooks/nul.test", Some(body)).await;
            reply.expect_invalid(location);
            assert!(
                message_at(&reply, location).contains("U+0000"),
                "[{:?}] {}",
                h.backend,
                reply.text
            );
        }
        let project = h.project();
        for path in [
            format!("/projects/{project}/webhooks/nul.test"),
            "/webhooks/nul.test".to_owned(),
        ] {
            h.call(
                Method::PUT,
                &path,
                Some(json!({"webhook_url": "http://127.0.0.1:9/a\u{0}"})),
            )
            .await
            .expect_invalid("body.webhook_url");
        }
        for body in [
            json!({"event_type": "nul.test", "data": {}, "idempotency_key": "k\u{0}"}),
            json!({"event_type": "nul.test", "data": {}, "idempotency_key": "\u{0}"}),
        ] {
            for path in ["/events".to_owned(), format!("/projects/{project}/events")] {
                h.call(Method::POST, &path, Some(body.clone()))
                    .await
                    .expect_invalid("body.idempotency_key");
            }
        }
        h.call(
            Method::POST,
            "/events",
            Some(json!({"event_type": "nul\u{0}", "data": {}})),
        )
        .await
        .expect_invalid("body.event_type");
        for (method, path, body) in [
            (
                Method::PUT,
                "/webhooks/a%00b",
                Some(json!({"webhook_url": url})),
            ),
            (Method::DELETE, "/webhooks/a%00b", None),
            (Method::GET, "/webhooks/a%00b/attempts", None),
            (Method::GET, "/webhooks/%00/attempts", None),
            (Method::POST, "/webhooks/a%00b/rotate-secret", None),
        ] {
            h.call(method, path, body)
                .await
                .expect_invalid("path.eventType");
        }
        let reply = h
            .call(
                Method::GET,
                "/webhooks/nul.test/attempts?cursor=a%00b",
                None,
            )
            .await;
        reply.expect_invalid("query.cursor");
        assert!(message_at(&reply, "query.cursor").contains("U+0000"));

        let list = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(
            list.expect(200)["webhooks"],
            json!([]),
            "[{:?}] a refused request created something",
            h.backend
        );
        h.finish().await;
    }
}

/// `data` is arbitrary JSON kept as the serialized text it was published as, where a
/// NUL is the escape `\u0000`; so it is stored and delivered on every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_inside_event_data_is_stored_and_delivered() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        h.register("nul.data", &receiver.url("/nul")).await;
        let data = json!({"s": "a\u{0}b", "\u{0}key": ["\u{0}"]});
        let reply = h
            .call(
                Method::POST,
                "/events",
                Some(json!({"event_type": "nul.data", "data": data})),
            )
            .await;
        let published = reply.expect(202);
        assert_eq!(published["deliveries_started"], json!(1), "{}", reply.text);
        let event_id: Uuid = published["event_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("event_id");
        let delivered = delivery_of(&receiver, event_id).await;
        assert_eq!(delivered.json()["data"], data, "[{:?}]", h.backend);
        let attempts = h.attempts_until("/webhooks/nul.data/attempts", 1).await;
        assert_eq!(sent_body(&attempts[0])["data"], data, "[{:?}]", h.backend);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_stores_the_url_it_checked_in_normal_form() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let receiver = Receiver::start().await;
        let port = receiver.addr.port();
        for (event_type, typed, stored) in [
            (
                "norm.case",
                "HTTPS://Example.COM:443/hooks/./a/../sonzai".to_owned(),
                "https://example.com/hooks/sonzai".to_owned(),
            ),
            (
                "norm.space",
                "  http://example.com  ".to_owned(),
                "http://example.com/".to_owned(),
            ),
            (
                "norm.ip",
                format!("http://0x7f.1:{port}/in/../hook"),
                format!("http://127.0.0.1:{port}/hook"),
            ),
        ] {
            h.call(
                Method::PUT,
                &format!("/webhooks/{event_type}"),
                Some(json!({"webhook_url": typed})),
            )
            .await
            .expect(200);
            let list = h.call(Method::GET, "/webhooks", None).await;
            let found = list.expect(200)["webhooks"]
                .as_array()
                .expect("webhooks")
                .iter()
                .find(|w| w["event_type"] == json!(event_type))
                .cloned()
                .unwrap_or_else(|| panic!("{event_type} not listed: {}", list.text));
            assert_eq!(
                found["webhook_url"],
                json!(stored),
                "[{:?}] {typed:?}",
                h.backend
            );
        }
        // Deliveries and their attempts go to the stored form.
        let reply = h
            .call(
                Method::POST,
                "/events",
                Some(json!({"event_type": "norm.ip", "data": {"n": 1}})),
            )
            .await;
        reply.expect(202);
        assert_eq!(receiver.wait_for(1, WAIT).await, 1);
        let attempts = h.attempts_until("/webhooks/norm.ip/attempts", 1).await;
        assert_eq!(
            attempts[0]["webhook_url"],
            json!(format!("http://127.0.0.1:{port}/hook"))
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_webhook_url_are_refused() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        for url in [
            "https://hook-user:hook-password@example.com/hooks",
            "https://hook-user@example.com/hooks",
            "https://:hook-password@example.com/hooks",
        ] {
            for path in [
                "/webhooks/creds.test".to_owned(),
                format!("/projects/{project}/webhooks/creds.test"),
            ] {
                let reply = h
                    .call(Method::PUT, &path, Some(json!({"webhook_url": url})))
                    .await;
                reply.expect_invalid("body.webhook_url");
                assert!(
                    message_at(&reply, "body.webhook_url").contains("auth_header"),
                    "{}",
                    reply.text
                );
                assert!(
                    !reply.text.contains("hook-password"),
                    "the refusal echoes the password: {}",
                    reply.text
                );
            }
        }
        // An empty user part is no credential: `https://@host` is `https://host`.
        h.call(
            Method::PUT,
            "/webhooks/creds.empty",
            Some(json!({"webhook_url": "https://@example.com/hooks"})),
        )
        .await
        .expect(200);
        let list = h.call(Method::GET, "/webhooks", None).await;
        assert_eq!(
            list.expect(200)["webhooks"]
                .as_array()
                .expect("webhooks")
                .iter()
                .map(|w| w["webhook_url"].clone())
                .collect::<Vec<_>>(),
            [json!("https://example.com/hooks")],
            "[{:?}] {}",
            h.backend,
            list.text
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_and_repeated_query_parameters_are_422() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let project = h.project();
        for (method, path, location) in [
            (Method::GET, "/webhooks?limit=5".to_owned(), "query.limit"),
            (
                Method::GET,
                format!("/projects/{project}/webhooks?x=1"),
                "query.x",
            ),
            (
                Method::GET,
                "/webhooks/a.b/attempts?limt=5".to_owned(),
                "query.limt",
            ),
            (
                Method::GET,
                "/webhooks/a.b/attempts?limit=5&limit=500".to_owned(),
                "query.limit",
            ),
            (
                Method::GET,
                "/webhooks/a.b/attempts?cursor=a&cursor=b".to_owned(),
                "query.cursor",
            ),
            (
                Method::POST,
                "/webhooks/a.b/rotate-secret?grace_seconds=1&grace_seconds=2".to_owned(),
                "query.grace_seconds",
            ),
            (
                Method::DELETE,
                "/webhooks/a.b?force=true".to_owned(),
                "query.force",
            ),
        ] {
            let reply = h.call(method, &path, None).await;
            reply.expect_invalid(location);
            assert_eq!(
                reply.locations().len(),
                1,
                "[{:?}] one entry per problem: {}",
                h.backend,
                reply.text
            );
        }
        // Declared parameters, once each, are fine.
        h.call(
            Method::GET,
            "/webhooks/a.b/attempts?limit=5&offset=0&page_size=5",
            None,
        )
        .await
        .expect(200);
        h.finish().await;
    }
}

/// Found by contract fuzzing: a client that guesses the charset of a problem body
/// (`application/problem+json` has no UTF-8 default in Python `requests`) misread an
/// echoed non-ASCII value. Problem bodies are ASCII, with `\u` escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_bodies_echo_non_ascii_values_as_ascii_escapes() {
    for db in support::backends().await {
        let h = Harness::start(&db).await;
        let value = "Ä\t\u{19}\u{8f895}竈£\u{2fb0a}\u{92}\\\u{91}";
        let reply = h
            .call(
                Method::POST,
                "/events",
                Some(json!({"event_type": value, "data": null})),
            )
            .await;
        reply.expect_invalid("body.event_type");
        assert!(reply.text.is_ascii(), "[{:?}] {}", h.backend, reply.text);
        assert_eq!(reply.json["errors"][0]["value"], json!(value));
        h.finish().await;
    }
}
