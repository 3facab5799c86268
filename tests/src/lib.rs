//! Support shared by the workspace-level tests in `tests/`: an in-memory implementation
//! of the generated [`WebhooksApi`](sonzai_webhooks_api::WebhooksApi) trait
//! ([`memory::MemoryApi`]) served on loopback ([`serve_memory`], a
//! [`Loopback`] from the test kit), and a plain HTTP client for requests the generated
//! client refuses to build ([`http_client`]).
//!
//! Everything binds to `127.0.0.1` only and every wait is bounded, so a broken server
//! fails a test instead of hanging it.

pub mod memory;

pub use sonzai_webhooks_testkit::Loopback;

/// A plain reqwest client with a request timeout, for requests that must be shaped by
/// hand (malformed bodies, wrong media types, missing credentials) because the
/// generated client validates its inputs before sending.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    sonzai_webhooks_testkit::net::try_http_client(REQUEST_TIMEOUT)
}

/// Per-request timeout of [`http_client`]: generous for a loaded CI machine, short
/// enough that a server that never answers fails the test instead of stalling it.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Starts the generated router over a fresh [`memory::MemoryApi`] and returns both, so
/// a test can drive the server and inspect what the implementation saw.
pub async fn serve_memory() -> std::io::Result<(std::sync::Arc<memory::MemoryApi>, Loopback)> {
    let api = std::sync::Arc::new(memory::MemoryApi::default());
    let server = Loopback::start(sonzai_webhooks_api::router(api.clone())).await?;
    Ok((api, server))
}
