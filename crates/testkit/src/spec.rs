//! Checks HTTP answers against `openapi.json`, the source of truth: success bodies
//! must match the operation's declared schema, errors must be
//! `application/problem+json` `ErrorModel`s whose `status` is the HTTP status, 401s
//! must carry a Bearer `WWW-Authenticate` challenge, top-level `$schema` links must name
//! the right schema, and no error body may carry a signing secret or the credentials
//! of the request. [`Proxy`] applies the check to every answer a client gets through
//! it, so a body a typed client would silently accept cannot slip through.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use reqwest::header::{HeaderMap, HeaderName};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The source of truth every answer is checked against.
pub const OPENAPI: &str = include_str!("../../../openapi.json");
/// Where the API is mounted.
pub const BASE: &str = "/api/v1";

// ---------------------------------------------------------------------------------
// The spec: operations and one validator per component schema.
// ---------------------------------------------------------------------------------

/// One operation of the spec, as far as checking its answers needs.
pub struct Operation {
    pub id: String,
    pub method: Method,
    /// Path segments after the base path; `{name}` matches any one segment.
    pub segments: Vec<String>,
    /// Declared non-default answers: status and, when it has a JSON body, its schema.
    pub answers: Vec<(u16, Option<String>)>,
    /// The schema of the `default` (error) answer.
    pub error_schema: String,
}

impl Operation {
    pub fn matches(&self, method: &Method, segments: &[&str]) -> bool {
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
pub struct Contract {
    operations: Vec<Operation>,
    validators: HashMap<String, jsonschema::Validator>,
}

/// One HTTP exchange as seen on the wire.
pub struct Exchange<'a> {
    pub method: &'a Method,
    /// Path and query as sent, including the base path.
    pub target: &'a str,
    pub authorization: Option<&'a str>,
    pub status: u16,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The spec, loaded and compiled once per process.
pub fn contract() -> &'static Contract {
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
    pub fn violations(&self, name: &str, value: &Value) -> Vec<String> {
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

    pub fn operation(&self, method: &Method, target: &str) -> Option<&Operation> {
        let path = target.split('?').next().unwrap_or_default();
        let path = path.strip_prefix(BASE)?;
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.operations
            .iter()
            .find(|op| op.matches(method, &segments))
    }

    /// Checks one answer against the spec. Returns the body as JSON (`Null` when
    /// empty) and every way in which the answer breaks the contract.
    pub fn check(&self, x: &Exchange<'_>) -> (Value, Vec<String>) {
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
pub struct Proxy {
    pub addr: SocketAddr,
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
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let state = Arc::new(ProxyState {
            upstream,
            http: crate::net::http_client(),
            log: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let addr = crate::net::serve_detached(app).await;
        Proxy { addr, state }
    }

    /// Panics with every recorded violation; returns how many answers were checked.
    pub fn assert_clean(&self) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

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
}
