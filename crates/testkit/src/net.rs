//! Loopback plumbing: a router served on an ephemeral port, a plain HTTP client, and a
//! bounded poll.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`Loopback::stop`] waits for the server to drain.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-request timeout of [`http_client`]: generous for a loaded CI machine, short
/// enough that a server that never answers fails the test instead of stalling it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An axum [`Router`](axum::Router) served on `127.0.0.1:0`. Dropping it stops the
/// server; [`Loopback::stop`] additionally waits for it and reports how it ended.
pub struct Loopback {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Loopback {
    /// Binds `127.0.0.1:0` (so parallel tests never race for a port) and serves `app`
    /// on a spawned task until stopped.
    pub async fn start(app: axum::Router) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // A dropped sender means the owner is gone: stop as well.
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

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Serves `app` on `127.0.0.1:0` for the rest of the process and returns its address
/// (for receivers and proxies, which live as long as any test holds their address).
pub async fn serve_detached(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A plain reqwest client with connect and request timeouts, for requests shaped by
/// hand (malformed bodies, wrong media types, missing credentials) and for readiness
/// probes.
pub fn http_client() -> reqwest::Client {
    try_http_client(REQUEST_TIMEOUT).expect("http client")
}

/// Like [`http_client`] with another request timeout, reporting instead of panicking.
pub fn try_http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    // reqwest is built without a default TLS crypto provider and refuses to build a
    // client without one; another caller may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5).min(timeout))
        .timeout(timeout)
        .build()
}

/// Calls `check` every `every` until it answers `Some`, for at most `timeout`.
pub async fn poll_until<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poll_until_gives_up_after_its_timeout() {
        let started = Instant::now();
        let mut calls = 0;
        let found: Option<()> = poll_until(
            Duration::from_millis(100),
            Duration::from_millis(10),
            || {
                calls += 1;
                async { None }
            },
        )
        .await;
        assert!(found.is_none());
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(calls >= 2, "{calls}");
        let mut n = 0;
        let found = poll_until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            let now = n;
            async move { (now == 3).then_some(now) }
        })
        .await;
        assert_eq!(found, Some(3));
    }

    #[tokio::test]
    async fn loopback_serves_until_stopped() {
        let app = axum::Router::new().fallback(|| async { "hello" });
        let server = Loopback::start(app).await.unwrap();
        let url = server.url("/x");
        let text = http_client().get(&url).send().await.unwrap().text().await;
        assert_eq!(text.unwrap(), "hello");
        server.stop().await.unwrap();
        assert!(http_client().get(&url).send().await.is_err());
    }
}
