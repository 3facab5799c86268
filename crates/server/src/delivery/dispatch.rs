//! Sending one delivery over HTTP and describing what happened.
//!
//! The worker builds the body and the signature headers; [`Dispatcher::send`] POSTs
//! them and turns the outcome into a [`DispatchResult`] that maps one-to-one onto a
//! stored delivery attempt: status code (0 when no response came back), duration,
//! the receiver's response body (capped) and a short, human-readable error.
//!
//! One [`Dispatcher`] holds one pooled keep-alive client for the whole process: a
//! receiver that takes many events is reached over warm connections instead of a
//! new TCP (and TLS) handshake per delivery.

use std::error::Error as StdError;
use std::io;
use std::sync::Once;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Method};
use reqwest::redirect::Policy;
use reqwest::Url;

use super::guard::{check_url, GuardedResolver, ResolveError, TargetPolicy};

/// How long one delivery may take, from connecting to the last byte of the
/// response body, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long establishing a connection (DNS, TCP, TLS) may take at most; never
/// more than the overall timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many bytes of a receiver's response body are kept (64 KiB). Receivers answer
/// with anything from `ok` to a full HTML error page; the body is only there to help
/// debug a failing endpoint, and an attempt row must stay small.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Appended to a response body cut at the cap, so nobody mistakes it for the whole.
pub const TRUNCATION_MARKER: &str = "…[truncated]";

/// Longest `Location` value quoted in a redirect error message.
const MAX_LOCATION_CHARS: usize = 256;

/// Longest low-level error text quoted in a generic error message.
const MAX_CAUSE_CHARS: usize = 200;

/// Upper bound on the error source chain walked when classifying a failure, in
/// case a library ever builds a cyclic or absurdly deep chain.
const MAX_CHAIN_DEPTH: usize = 32;

/// Settings of the delivery HTTP client.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Deadline for a whole delivery: connect, send, and read the response body.
    pub timeout: Duration,
    /// Deadline for establishing a connection (capped at `timeout`).
    pub connect_timeout: Duration,
    /// Which targets may be connected to.
    pub policy: TargetPolicy,
    /// Idle keep-alive connections kept per receiver host. Enough for all workers
    /// to hit one busy receiver concurrently without reconnecting.
    pub max_idle_per_host: usize,
    /// How long an idle connection is kept before it is closed.
    pub pool_idle_timeout: Duration,
    /// Response body bytes kept; see [`MAX_RESPONSE_BODY`].
    pub max_response_body: usize,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            policy: TargetPolicy::default(),
            max_idle_per_host: 32,
            pool_idle_timeout: Duration::from_secs(90),
            max_response_body: MAX_RESPONSE_BODY,
        }
    }
}

/// One delivery to send.
#[derive(Debug, Clone)]
pub struct OutgoingRequest {
    pub url: String,
    /// The exact bytes to POST (and to store as the attempt's request body).
    pub body: Bytes,
    /// Signature and `Authorization` headers. `Content-Type: application/json` is
    /// always set by the dispatcher and replaces any given here.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What happened to one delivery, shaped like a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchResult {
    /// The HTTP status, or 0 when no response came back.
    pub status: u16,
    /// Time from the start of [`Dispatcher::send`] to the end of the response body
    /// (or the failure).
    pub duration: Duration,
    /// The response body, lossily decoded as UTF-8, at most
    /// [`DispatcherConfig::max_response_body`] bytes of it followed by
    /// [`TRUNCATION_MARKER`] when cut. `None` when no response came back or its body
    /// was empty.
    pub response_body: Option<String>,
    /// Why the attempt failed, when it failed for another reason than a non-2xx
    /// status: timeout, connection refused, DNS, TLS, blocked target, redirect. It
    /// never quotes request headers or the URL (either may carry credentials).
    pub error: Option<String>,
    /// A 2xx status arrived and the response was read completely within the
    /// deadline. A 2xx whose body stalls past the deadline counts as failed:
    /// delivery is at-least-once, and a duplicate is cheaper than a loss.
    pub success: bool,
    /// The receiver did not answer (or finish its answer) within the timeout: the
    /// worker gives such a webhook fewer slots until it answers again.
    pub timed_out: bool,
    /// The response's `Retry-After` header, as sent (see [`super::answer`]).
    pub retry_after: Option<String>,
}

impl DispatchResult {
    fn no_response(started: Instant, error: String) -> Self {
        Self {
            status: 0,
            duration: started.elapsed(),
            response_body: None,
            error: Some(error),
            success: false,
            timed_out: false,
            retry_after: None,
        }
    }

    fn timed_out(mut self, timed_out: bool) -> Self {
        self.timed_out = timed_out;
        self
    }
}

/// Why the delivery HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the delivery HTTP client: {0}")]
pub struct BuildError(#[source] reqwest::Error);

/// Sends deliveries over one shared, pooled HTTP client. Cheap to clone: clones
/// share the connection pool.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    client: reqwest::Client,
    timeout: Duration,
    connect_timeout: Duration,
    policy: TargetPolicy,
    max_response_body: usize,
}

/// Installs ring as the process-wide rustls crypto provider unless one is set.
///
/// reqwest is built with `rustls-no-provider` so that the workspace picks its own
/// crypto backend; without a provider its client builder panics.
fn ensure_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine: any provider will do.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

impl Dispatcher {
    /// Builds the client. Call once at start-up and share the result.
    pub(crate) fn new(config: DispatcherConfig) -> Result<Self, BuildError> {
        ensure_crypto_provider();
        let connect_timeout = config.connect_timeout.min(config.timeout);
        let client = reqwest::Client::builder()
            // A redirect is a failed attempt: following it would let a receiver
            // bounce the server onto a target the guard never saw, and re-POSTing
            // a signed body to a different URL is not what the owner configured.
            .redirect(Policy::none())
            // Proxy variables in the server's environment are meant for the
            // operator's own traffic, not for customer-chosen webhook targets.
            .no_proxy()
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(config.max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(60))
            .user_agent(concat!("sonzai-webhooks/", env!("CARGO_PKG_VERSION")))
            // Used under both policies, so DNS failures read the same either way;
            // under AllowAll it filters nothing.
            .dns_resolver(GuardedResolver::new(config.policy.clone()))
            .build()
            .map_err(BuildError)?;
        Ok(Self {
            client,
            timeout: config.timeout,
            connect_timeout,
            policy: config.policy,
            max_response_body: config.max_response_body,
        })
    }

    /// POSTs one delivery and reports the outcome. Never fails: every problem
    /// becomes a failed [`DispatchResult`] with a reason.
    pub async fn send(&self, req: &OutgoingRequest) -> DispatchResult {
        let started = Instant::now();
        let url = match Url::parse(&req.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            Ok(_) => {
                return DispatchResult::no_response(
                    started,
                    "invalid URL: scheme must be http or https".into(),
                )
            }
            Err(e) => return DispatchResult::no_response(started, format!("invalid URL: {e}")),
        };
        // Literal IP hosts never reach the guarded resolver, so check them here.
        if let Err(blocked) = check_url(&url, &self.policy) {
            return DispatchResult::no_response(started, blocked.to_string());
        }
        self.execute(url, req, started).await
    }

    /// Sends to an already validated URL; host names are still vetted by the
    /// resolver as the connection is made.
    async fn execute(&self, url: Url, req: &OutgoingRequest, started: Instant) -> DispatchResult {
        let mut request = reqwest::Request::new(Method::POST, url);
        let headers = request.headers_mut();
        headers.reserve(req.headers.len() + 1);
        for (name, value) in &req.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // `Bytes` clones share the buffer: the body is never copied.
        *request.body_mut() = Some(req.body.clone().into());

        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut response = match tokio::time::timeout_at(deadline, self.client.execute(request))
            .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                return DispatchResult::no_response(started, self.describe(&e))
                    .timed_out(e.is_timeout())
            }
            Err(_) => {
                return DispatchResult::no_response(started, self.timeout_message()).timed_out(true)
            }
        };

        let status = response.status();
        let location = status.is_redirection().then(|| {
            response
                .headers()
                .get(LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        });
        // Not valid text is not a valid Retry-After either: the schedule decides.
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);

        let mut body = Vec::with_capacity(
            response
                .content_length()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0)
                .min(self.max_response_body),
        );
        let mut truncated = false;
        let mut body_error = None;
        let mut body_timed_out = false;
        // Every chunk read is bounded by the deadline; the loop ends at the end of
        // the body, at the cap, at the deadline or on an error.
        loop {
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    let room = self.max_response_body - body.len();
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    body_error = Some(format!(
                        "reading the response body failed: {}",
                        self.describe(&e)
                    ));
                    break;
                }
                Err(_) => {
                    body_error = Some(format!(
                        "{} (reading the response body)",
                        self.timeout_message()
                    ));
                    body_timed_out = true;
                    break;
                }
            }
        }
        // Dropping the response here, possibly mid-body, closes that connection
        // instead of draining an unbounded body to return it to the pool.
        drop(response);

        let error = match location {
            Some(location) => Some(redirect_message(status.as_u16(), location.as_deref())),
            None => body_error,
        };
        let response_body = (!body.is_empty()).then(|| decode_body(body, truncated));
        DispatchResult {
            status: status.as_u16(),
            duration: started.elapsed(),
            response_body,
            success: status.is_success() && error.is_none(),
            error,
            timed_out: body_timed_out,
            retry_after,
        }
    }

    fn timeout_message(&self) -> String {
        format!("timeout after {}", crate::duration::format(self.timeout))
    }

    /// Turns a client error into one of the messages listed on
    /// [`DispatchResult::error`], looking through the whole source chain for the
    /// root cause.
    fn describe(&self, err: &reqwest::Error) -> String {
        let found = find_in_chain(err, |e| {
            if let Some(resolve) = e.downcast_ref::<ResolveError>() {
                // "blocked target: <host>" (the resolver has logged what it resolved
                // to) or "DNS resolution failed: ..."
                return Some(resolve.to_string());
            }
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Some(format!("TLS handshake failed: {tls}"));
            }
            let io = e.downcast_ref::<io::Error>()?;
            match io.kind() {
                io::ErrorKind::ConnectionRefused => Some("connection refused".to_owned()),
                io::ErrorKind::ConnectionReset => Some("connection reset by peer".to_owned()),
                io::ErrorKind::HostUnreachable => Some("host unreachable".to_owned()),
                io::ErrorKind::NetworkUnreachable => Some("network unreachable".to_owned()),
                _ => None,
            }
        });
        if let Some(message) = found {
            return message;
        }
        if err.is_timeout() {
            return if err.is_connect() {
                format!(
                    "connection timed out after {}",
                    crate::duration::format(self.connect_timeout)
                )
            } else {
                self.timeout_message()
            };
        }
        // The top-level text quotes the URL, which may hold credentials; describe the
        // request by its innermost cause instead.
        let cause = root_cause(err);
        if err.is_builder() {
            format!("invalid URL: {cause}")
        } else if err.is_connect() {
            format!("connection failed: {cause}")
        } else {
            format!("request failed: {cause}")
        }
    }
}

/// The next link of an error chain. `io::Error::source` skips the error it wraps
/// (it returns the wrapped error's own source), so custom I/O errors are opened
/// with `get_ref` instead; that is where rustls and resolver errors sit.
fn next_in_chain<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
        let inner: &(dyn StdError + 'static) = inner;
        return Some(inner);
    }
    e.source()
}

/// Applies `f` to each error of the chain, starting with `err`, and returns the
/// first answer.
fn find_in_chain<T>(
    err: &(dyn StdError + 'static),
    mut f: impl FnMut(&(dyn StdError + 'static)) -> Option<T>,
) -> Option<T> {
    let mut current = Some(err);
    for _ in 0..MAX_CHAIN_DEPTH {
        let e = current?;
        if let Some(found) = f(e) {
            return Some(found);
        }
        current = next_in_chain(e);
    }
    None
}

/// The text of the deepest error in the chain, shortened.
fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut last = err;
    let mut current = next_in_chain(err);
    for _ in 0..MAX_CHAIN_DEPTH {
        let Some(e) = current else { break };
        last = e;
        current = next_in_chain(e);
    }
    shorten(&last.to_string(), MAX_CAUSE_CHARS)
}

fn redirect_message(status: u16, location: Option<&str>) -> String {
    match location {
        Some(location) => format!(
            "redirect not followed ({status} to {})",
            shorten(location, MAX_LOCATION_CHARS)
        ),
        None => format!("redirect not followed ({status} without a Location header)"),
    }
}

/// Cuts `s` to at most `max` characters, marking the cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// Decodes a (possibly cut) body as UTF-8, replacing invalid bytes. A multi-byte
/// character split by the cap is dropped rather than shown as a replacement
/// character.
fn decode_body(bytes: Vec<u8>, truncated: bool) -> String {
    let mut text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let utf8 = e.utf8_error();
            let mut bytes = e.into_bytes();
            if truncated && utf8.error_len().is_none() {
                // The only problem is an incomplete character at the cut; what
                // precedes it is valid, so nothing else needs replacing.
                bytes.truncate(utf8.valid_up_to());
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    if truncated {
        text.push_str(TRUNCATION_MARKER);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use axum::body::Body;
    use axum::extract::{ConnectInfo, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use axum::Router;
    use tokio::sync::mpsc;

    /// What the test receiver saw of one request.
    #[derive(Debug)]
    struct Received {
        peer: SocketAddr,
        headers: HeaderMap,
        body: Bytes,
    }

    /// A real HTTP receiver on a loopback port.
    struct Receiver {
        addr: SocketAddr,
        seen: mpsc::UnboundedReceiver<Received>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Receiver {
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
    }

    async fn record(
        State(tx): State<mpsc::UnboundedSender<Received>>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        body: Bytes,
    ) -> impl IntoResponse {
        let _ = tx.send(Received {
            peer,
            headers,
            body,
        });
        (StatusCode::OK, "thanks")
    }

    async fn spawn_receiver() -> Receiver {
        let (tx, seen) = mpsc::unbounded_channel();
        let app = Router::new()
            .route("/ok", post(record))
            .route(
                "/fail",
                post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
            )
            .route("/empty", post(|| async { StatusCode::NO_CONTENT }))
            .route(
                "/hang",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/slow-body",
                post(|| async {
                    let chunks = futures::stream::unfold(0u8, |step| async move {
                        match step {
                            0 => Some((Ok::<_, Infallible>(Bytes::from_static(b"partial")), 1)),
                            1 => {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                Some((Ok(Bytes::from_static(b"rest")), 2))
                            }
                            _ => None,
                        }
                    });
                    Body::from_stream(chunks)
                }),
            )
            .route(
                "/redirect",
                post(|| async {
                    (
                        StatusCode::MOVED_PERMANENTLY,
                        [(LOCATION, "/ok")],
                        "moved permanently",
                    )
                }),
            )
            .route(
                "/redirect-bare",
                post(|| async { StatusCode::TEMPORARY_REDIRECT }),
            )
            .route("/huge", post(|| async { vec![b'a'; 1024 * 1024] }))
            .route(
                "/split-char",
                post(|| async {
                    // "é" is two bytes; put its first byte exactly at the cap.
                    let mut body = vec![b'x'; MAX_RESPONSE_BODY - 1];
                    body.extend_from_slice("é and more".as_bytes());
                    body
                }),
            )
            .route(
                "/latin1",
                post(|| async { (StatusCode::BAD_REQUEST, vec![b'c', b'a', 0xe9, b'!']) }),
            )
            .with_state(tx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Receiver { addr, seen, task }
    }

    fn dispatcher(policy: TargetPolicy, timeout: Duration) -> Dispatcher {
        Dispatcher::new(DispatcherConfig {
            timeout,
            policy,
            ..DispatcherConfig::default()
        })
        .expect("client builds")
    }

    fn open() -> Dispatcher {
        dispatcher(
            TargetPolicy::from_allow_private(true),
            Duration::from_secs(5),
        )
    }

    fn guarded() -> Dispatcher {
        dispatcher(
            TargetPolicy::from_allow_private(false),
            Duration::from_secs(5),
        )
    }

    fn request(url: String) -> OutgoingRequest {
        OutgoingRequest {
            url,
            body: Bytes::from_static(br#"{"event_type":"session.end","data":{}}"#),
            headers: vec![
                (
                    http::header::AUTHORIZATION,
                    HeaderValue::from_static("Bearer receiver-secret"),
                ),
                (
                    HeaderName::from_static("sonzai-signature"),
                    HeaderValue::from_static("t=1700000000,v1=abcdef"),
                ),
                // Replaced: the contract fixes the content type.
                (CONTENT_TYPE, HeaderValue::from_static("text/plain")),
            ],
        }
    }

    #[tokio::test]
    async fn delivers_body_and_headers_and_reads_the_answer() {
        let mut rx = spawn_receiver().await;
        let req = request(rx.url("/ok"));
        let result = open().send(&req).await;
        assert_eq!(result.status, 200);
        assert!(result.success);
        assert_eq!(result.error, None);
        assert_eq!(result.response_body.as_deref(), Some("thanks"));
        assert!(result.duration > Duration::ZERO);

        let got = rx.seen.recv().await.expect("receiver saw the request");
        assert_eq!(got.body, req.body);
        assert_eq!(got.headers["authorization"], "Bearer receiver-secret");
        assert_eq!(got.headers["sonzai-signature"], "t=1700000000,v1=abcdef");
        let content_types: Vec<_> = got.headers.get_all(CONTENT_TYPE).iter().collect();
        assert_eq!(content_types, ["application/json"]);
        assert_eq!(
            got.headers["user-agent"],
            concat!("sonzai-webhooks/", env!("CARGO_PKG_VERSION"))
        );
    }

    #[tokio::test]
    async fn reuses_the_pooled_connection() {
        let mut rx = spawn_receiver().await;
        let d = open();
        for _ in 0..3 {
            assert!(d.send(&request(rx.url("/ok"))).await.success);
        }
        let first = rx.seen.recv().await.unwrap().peer;
        for _ in 0..2 {
            assert_eq!(rx.seen.recv().await.unwrap().peer, first);
        }
    }

    #[tokio::test]
    async fn server_error_is_a_failure_with_status_and_body() {
        let rx = spawn_receiver().await;
        let result = open().send(&request(rx.url("/fail"))).await;
        assert_eq!(result.status, 500);
        assert!(!result.success);
        assert_eq!(result.response_body.as_deref(), Some("boom"));
        assert_eq!(result.error, None);
    }

    #[tokio::test]
    async fn empty_2xx_body_is_a_success_without_body() {
        let rx = spawn_receiver().await;
        let result = open().send(&request(rx.url("/empty"))).await;
        assert_eq!((result.status, result.success), (204, true));
        assert_eq!(result.response_body, None);
    }

    #[tokio::test]
    async fn a_hanging_receiver_times_out() {
        let rx = spawn_receiver().await;
        let d = dispatcher(
            TargetPolicy::from_allow_private(true),
            Duration::from_millis(300),
        );
        let result = d.send(&request(rx.url("/hang"))).await;
        assert_eq!(result.status, 0);
        assert!(!result.success);
        assert_eq!(result.error.as_deref(), Some("timeout after 300ms"));
        assert!(result.duration >= Duration::from_millis(300));
        assert!(result.duration < Duration::from_secs(4), "{result:?}");
    }

    #[tokio::test]
    async fn reading_the_body_counts_toward_the_timeout() {
        let rx = spawn_receiver().await;
        let d = dispatcher(
            TargetPolicy::from_allow_private(true),
            Duration::from_millis(300),
        );
        let result = d.send(&request(rx.url("/slow-body"))).await;
        assert_eq!(result.status, 200);
        assert!(!result.success, "an incomplete response is not a success");
        assert_eq!(
            result.error.as_deref(),
            Some("timeout after 300ms (reading the response body)")
        );
        assert_eq!(result.response_body.as_deref(), Some("partial"));
        assert!(result.duration < Duration::from_secs(4), "{result:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_connection_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let result = open()
            .send(&request(format!("http://127.0.0.1:{port}/hook")))
            .await;
        assert_eq!(result.status, 0);
        assert_eq!(result.error.as_deref(), Some("connection refused"));
        assert_eq!(result.response_body, None);
    }

    #[tokio::test]
    async fn a_receiver_that_hangs_up_is_a_failed_request() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            // Read (part of) the request, then close without answering.
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
        });
        let result = open().send(&request(format!("http://{addr}/hook"))).await;
        server.await.unwrap();
        assert_eq!(result.status, 0);
        let error = result.error.unwrap();
        assert!(error.starts_with("request failed: "), "{error}");
        assert!(!error.contains("receiver-secret"), "{error}");
        assert!(!error.contains(&addr.to_string()), "URL leaked: {error}");
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let mut rx = spawn_receiver().await;
        let result = open().send(&request(rx.url("/redirect"))).await;
        assert_eq!(result.status, 301);
        assert!(!result.success);
        assert_eq!(
            result.error.as_deref(),
            Some("redirect not followed (301 to /ok)")
        );
        assert_eq!(result.response_body.as_deref(), Some("moved permanently"));
        assert!(rx.seen.try_recv().is_err(), "the redirect target was hit");

        let result = open().send(&request(rx.url("/redirect-bare"))).await;
        assert_eq!(result.status, 307);
        assert_eq!(
            result.error.as_deref(),
            Some("redirect not followed (307 without a Location header)")
        );
    }

    #[tokio::test]
    async fn a_huge_response_is_capped() {
        let rx = spawn_receiver().await;
        let result = open().send(&request(rx.url("/huge"))).await;
        assert_eq!(result.status, 200);
        assert!(result.success);
        let body = result.response_body.expect("body kept");
        let kept = body
            .strip_suffix(TRUNCATION_MARKER)
            .expect("truncation marked");
        assert_eq!(kept.len(), MAX_RESPONSE_BODY);
        assert!(kept.bytes().all(|b| b == b'a'));
    }

    #[tokio::test]
    async fn a_character_split_by_the_cap_is_dropped_not_garbled() {
        let rx = spawn_receiver().await;
        let result = open().send(&request(rx.url("/split-char"))).await;
        let body = result.response_body.expect("body kept");
        let kept = body.strip_suffix(TRUNCATION_MARKER).unwrap();
        assert_eq!(kept.len(), MAX_RESPONSE_BODY - 1);
        assert!(!kept.contains('\u{fffd}'));
    }

    #[tokio::test]
    async fn non_utf8_bodies_are_decoded_lossily() {
        let rx = spawn_receiver().await;
        let result = open().send(&request(rx.url("/latin1"))).await;
        assert_eq!(result.status, 400);
        assert_eq!(result.response_body.as_deref(), Some("ca\u{fffd}!"));
    }

    #[tokio::test]
    async fn guard_refuses_literal_loopback_before_connecting() {
        let mut rx = spawn_receiver().await;
        let d = guarded();
        let result = d.send(&request(rx.url("/ok"))).await;
        assert_eq!(result.status, 0);
        assert!(!result.success);
        assert_eq!(result.error.as_deref(), Some("blocked target: 127.0.0.1"));
        let mapped = format!("http://[::ffff:127.0.0.1]:{}/ok", rx.addr.port());
        let result = d.send(&request(mapped)).await;
        assert!(
            result
                .error
                .as_deref()
                .unwrap()
                .starts_with("blocked target:"),
            "{result:?}"
        );
        assert!(rx.seen.try_recv().is_err(), "a blocked request got through");
    }

    #[tokio::test]
    async fn guard_refuses_host_names_that_resolve_to_loopback() {
        let mut rx = spawn_receiver().await;
        let d = guarded();
        let url = format!("http://localhost:{}/ok", rx.addr.port());
        let result = d.send(&request(url.clone())).await;
        assert_eq!(result.error.as_deref(), Some("blocked target: localhost"));
        // Past the URL check, the resolver is what refuses the name, at the moment
        // the connection is made.
        let result = d
            .execute(Url::parse(&url).unwrap(), &request(url), Instant::now())
            .await;
        assert_eq!(result.status, 0);
        // Only the name the tenant gave: what it resolves to stays in the server log.
        assert_eq!(result.error.as_deref(), Some("blocked target: localhost"));
        assert!(rx.seen.try_recv().is_err(), "a blocked request got through");
    }

    #[tokio::test]
    async fn unguarded_dispatcher_reaches_loopback_by_address_and_name() {
        let mut rx = spawn_receiver().await;
        let d = open();
        assert!(d.send(&request(rx.url("/ok"))).await.success);
        let by_name = format!("http://localhost:{}/ok", rx.addr.port());
        let result = d.send(&request(by_name)).await;
        assert!(result.success, "{result:?}");
        assert!(rx.seen.recv().await.is_some());
        assert!(rx.seen.recv().await.is_some());
    }

    #[tokio::test]
    async fn tls_to_a_plain_http_port_fails_the_handshake() {
        let rx = spawn_receiver().await;
        let url = format!("https://127.0.0.1:{}/ok", rx.addr.port());
        let result = open().send(&request(url)).await;
        assert_eq!(result.status, 0);
        let error = result.error.unwrap();
        assert!(error.starts_with("TLS handshake failed: "), "{error}");
    }

    #[tokio::test]
    async fn unknown_host_is_a_dns_failure() {
        let result = open()
            .send(&request("http://no-such-host.invalid/hook".into()))
            .await;
        assert_eq!(result.status, 0);
        let error = result.error.unwrap();
        assert!(
            error.starts_with("DNS resolution failed: no-such-host.invalid"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn invalid_urls_are_reported() {
        let d = open();
        let result = d.send(&request("not a url".into())).await;
        assert_eq!(
            result.error.as_deref(),
            Some("invalid URL: relative URL without a base")
        );
        let result = d.send(&request("ftp://example.com/hook".into())).await;
        assert_eq!(
            result.error.as_deref(),
            Some("invalid URL: scheme must be http or https")
        );
        assert_eq!(result.status, 0);
    }

    #[test]
    fn helpers_format_durations_and_shorten_text() {
        assert_eq!(crate::duration::format(Duration::from_secs(10)), "10s");
        assert_eq!(crate::duration::format(Duration::from_millis(300)), "300ms");
        assert_eq!(
            crate::duration::format(Duration::from_millis(1500)),
            "1s500ms"
        );
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("ééé", 2), "éé…");
        let long = format!("https://{}/", "a".repeat(500));
        let msg = redirect_message(302, Some(&long));
        assert!(msg.len() < 300, "{msg}");
        assert!(msg.ends_with("…)"), "{msg}");
    }

    #[test]
    fn decode_body_handles_complete_cut_and_invalid_input() {
        assert_eq!(decode_body(b"ok".to_vec(), false), "ok");
        assert_eq!(
            decode_body(vec![b'a', 0xc3], true),
            format!("a{TRUNCATION_MARKER}")
        );
        // An incomplete tail in an untruncated body is genuinely invalid.
        assert_eq!(decode_body(vec![b'a', 0xc3], false), "a\u{fffd}");
        assert_eq!(
            decode_body(vec![0xff, b'a', 0xc3], true),
            format!("\u{fffd}a\u{fffd}{TRUNCATION_MARKER}")
        );
    }
}
