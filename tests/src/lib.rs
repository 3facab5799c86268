//! Support shared by the workspace-level tests in `tests/`: a loopback server harness
//! ([`TestServer`]), a plain HTTP client for requests the generated client refuses to
//! build ([`http_client`]), and an in-memory implementation of the generated
//! [`WebhooksApi`](sonzai_webhooks_api::WebhooksApi) trait ([`memory::MemoryApi`]).
//!
//! Everything binds to `127.0.0.1` only and every wait is bounded, so a broken server
//! fails a test instead of hanging it.

pub mod memory;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for the server to drain after shutdown is requested.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-request timeout of [`http_client`]: generous for a loaded CI machine, short
/// enough that a server that never answers fails the test instead of stalling it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// An axum [`Router`](axum::Router) served on an ephemeral loopback port. Dropping it
/// stops the server; [`TestServer::stop`] additionally waits for it and reports how it
/// ended.
pub struct TestServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` (so parallel tests never race for a port) and serves `app`
    /// on a spawned task until stopped.
    pub async fn start(app: axum::Router) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // A dropped sender means the harness is gone: stop as well.
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The API base the generated client expects: `http://127.0.0.1:<port>/api/v1`.
    pub fn api_base(&self) -> String {
        self.url("/api/v1")
    }

    /// Requests a graceful shutdown and waits (bounded) for the server task to end.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "server did not shut down in time",
            )),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A plain reqwest client with a request timeout, for requests that must be shaped by
/// hand (malformed bodies, wrong media types, missing credentials) because the
/// generated client validates its inputs before sending.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    // reqwest is built without a default TLS crypto provider and refuses to build a
    // client without one; another test may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .build()
}

/// Starts the generated router over a fresh [`memory::MemoryApi`] and returns both, so
/// a test can drive the server and inspect what the implementation saw.
pub async fn serve_memory() -> std::io::Result<(std::sync::Arc<memory::MemoryApi>, TestServer)> {
    let api = std::sync::Arc::new(memory::MemoryApi::default());
    let server = TestServer::start(sonzai_webhooks_api::router(api.clone())).await?;
    Ok((api, server))
}
