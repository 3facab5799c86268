//! Test harness for the reference server: databases (a fresh SQLite file, or a fresh
//! schema on the PostgreSQL named by `TEST_DATABASE_URL`), a server started on
//! `127.0.0.1:0` with a tenant, project and key, the generated client pointed at it,
//! HTTP receivers that record what they get, and the server binary for tests that run
//! (and kill) real processes.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sonzai_webhooks_client::Client;
use sonzai_webhooks_server::config::Config;
use sonzai_webhooks_server::server::{start_with_store, Running};
use sonzai_webhooks_server::store::{self, WebhookStore};
use uuid::Uuid;

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test: dropped (file removed, schema dropped) with the value.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    schema: Option<(String, String)>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        TestDb {
            url,
            backend: Backend::Sqlite,
            _dir: Some(dir),
            schema: None,
        }
    }

    /// A fresh schema on the PostgreSQL of `TEST_DATABASE_URL`, or `None` (with a note
    /// on stderr) when it is not set.
    pub async fn postgres() -> Option<TestDb> {
        let Some(base) = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty())
        else {
            eprintln!("skipping PostgreSQL: TEST_DATABASE_URL not set");
            return None;
        };
        let schema = format!("t_{}", Uuid::new_v4().simple());
        psql(&base, &format!("CREATE SCHEMA {schema}")).await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Some(TestDb {
            url,
            backend: Backend::Postgres,
            _dir: None,
            schema: Some((base, schema)),
        })
    }

    pub async fn open(&self) -> Arc<dyn WebhookStore> {
        store::connect(&self.url).await.expect("open store")
    }
}

async fn psql(base: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to TEST_DATABASE_URL");
    sqlx::query(sql).execute(&mut conn).await.expect(sql);
    let _ = conn.close().await;
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((base, schema)) = self.schema.take() {
            // Drop runs outside async context; a short-lived thread with its own runtime
            // keeps the shared database clean even when a test fails.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(psql(
                        &base,
                        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                    ));
                }
            })
            .join();
        }
    }
}

/// The backends a test should run on: SQLite always, PostgreSQL when configured.
pub async fn backends() -> Vec<TestDb> {
    let mut dbs = vec![TestDb::sqlite()];
    if let Some(pg) = TestDb::postgres().await {
        dbs.push(pg);
    }
    dbs
}

/// Settings for servers under test: private targets allowed (receivers are on
/// loopback), a fast retry schedule, short timeouts.
pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::for_tests(db.url.clone());
    config.allow_private_targets = true;
    config
}

/// A tenant with one project and one API key.
pub struct Tenant {
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub key: String,
}

pub async fn create_tenant(store: &dyn WebhookStore, name: &str) -> Tenant {
    let tenant = store.create_tenant(name).await.expect("tenant");
    let project = store
        .create_project(tenant.id, "default")
        .await
        .expect("project");
    let (key, _) = sonzai_webhooks_server::auth::issue_api_key(store, project.id)
        .await
        .expect("key");
    Tenant {
        tenant_id: tenant.id,
        project_id: project.id,
        key: key.expose().to_owned(),
    }
}

/// A server running in this process on a loopback port, with one tenant.
pub struct TestServer {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub store: Arc<dyn WebhookStore>,
    pub tenant: Tenant,
    pub client: Client,
}

impl TestServer {
    pub async fn start(db: &TestDb) -> TestServer {
        Self::start_with(db, test_config(db)).await
    }

    pub async fn start_with(db: &TestDb, config: Config) -> TestServer {
        let store = db.open().await;
        let tenant = create_tenant(store.as_ref(), "tenant-a").await;
        let running = start_with_store(&config, store.clone())
            .await
            .expect("start server");
        let addr = running.addr;
        let client = client_for(addr, &tenant.key);
        TestServer {
            running: Some(running),
            addr,
            store,
            tenant,
            client,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    pub fn client_for(&self, key: &str) -> Client {
        client_for(self.addr, key)
    }

    /// Plain HTTP with this server's key, for what the typed client cannot send.
    pub fn http(&self) -> reqwest::Client {
        http_client()
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

pub fn client_for(addr: SocketAddr, key: &str) -> Client {
    Client::with_api_key(&format!("http://{addr}/api/v1"), key).expect("client")
}

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
}

/// How a [`Receiver`] answers: a queue of scripted answers, then `default`.
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

/// An HTTP server on `127.0.0.1:0` that records every request and answers as told
/// (200 by default).
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state }
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

/// The `sonzai-webhooks` binary, (re)built once per test run: `cargo test` of this
/// package does not rebuild another package's binary, and a stale one would test old
/// code.
pub fn server_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test exe");
            // target/<profile>/deps/<test> -> target/<profile>/sonzai-webhooks
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target dir")
                .to_path_buf();
            let mut build = std::process::Command::new(env!("CARGO"));
            build.args([
                "build",
                "--quiet",
                "-p",
                "sonzai-webhooks-server",
                "--bin",
                "sonzai-webhooks",
            ]);
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build.status().expect("cargo build");
            assert!(status.success(), "building the server binary failed");
            profile_dir.join("sonzai-webhooks")
        })
        .clone()
}

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `sonzai-webhooks serve` process on a loopback port.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `serve` on `db` with test settings plus `extra` arguments, and waits until
    /// `/readyz` answers.
    pub async fn start(db: &TestDb, data_dir: &std::path::Path, extra: &[&str]) -> ServerProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = tokio::process::Command::new(server_binary())
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(["--database-url", &db.url])
            .args(["--data-dir", &data_dir.display().to_string()])
            .args(["--allow-private-targets", "true"])
            .args(["--retry-schedule", "100ms,200ms,400ms,800ms"])
            .args([
                "--lease",
                "3s",
                "--delivery-timeout",
                "2s",
                "--shutdown-grace",
                "2s",
            ])
            .args(extra)
            .env("SONZAI_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn server");
        let process = ServerProcess { child, addr };
        process.wait_ready(Duration::from_secs(30)).await;
        process
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let http = http_client();
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/readyz", self.addr);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server at {} not ready within {timeout:?}", self.addr);
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }

    /// SIGTERM and wait for exit; returns how long it took.
    pub async fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait().await;
        started.elapsed()
    }
}

// -------------------------------------------------------------------------------------
// Helpers of the delivery and durability tests (delivery.rs, durability.rs).
// -------------------------------------------------------------------------------------

/// Method and path of each request a logging [`Receiver`] got, in arrival order.
pub type RequestLog = Arc<Mutex<Vec<(axum::http::Method, String)>>>;

impl Receiver {
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (Receiver { addr, state }, log)
    }
}

impl Received {
    /// The `event_id` of a delivery body, if it has one.
    pub fn event_id(&self) -> Option<Uuid> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        body.get("event_id")?.as_str()?.parse().ok()
    }
}

/// Calls `check` every `every` until it answers `Some`, for at most `timeout`.
pub async fn poll_until<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

impl ServerProcess {
    /// Starts `serve` on `db` with only the loopback essentials (listen address,
    /// database, data dir, private targets allowed) plus `args`, for tests that need
    /// timings other than [`ServerProcess::start`]'s (the CLI refuses a flag given
    /// twice), and waits until `/readyz` answers.
    pub async fn start_with_args(
        db: &TestDb,
        data_dir: &std::path::Path,
        args: &[&str],
    ) -> ServerProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = tokio::process::Command::new(server_binary())
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(["--database-url", &db.url])
            .args(["--data-dir", &data_dir.display().to_string()])
            .args(["--allow-private-targets", "true"])
            .args(args)
            .env("SONZAI_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn server");
        let process = ServerProcess { child, addr };
        process.wait_ready(Duration::from_secs(30)).await;
        process
    }
}
