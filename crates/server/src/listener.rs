//! The HTTP/1 listener under the API. It replaces `axum::serve` so that no client can
//! hold a connection, and the file descriptor behind it, for longer than the limits:
//!
//! - **Header timeout**: a request's headers must be complete within this long of its
//!   first byte (of the accept, for a new connection). Slowloris-style clients that
//!   trickle a header, or connect and send nothing, are closed.
//! - **Idle timeout**: a keep-alive connection may wait this long between requests.
//! - **Body timeout**: a request body must have arrived this long after its headers;
//!   otherwise the request is answered 408 and the connection closed
//!   ([`body_deadline`]).
//! - **Connection cap**: at most this many connections are open. A connection that
//!   arrives at the cap takes the place of the one idle the longest (no request in
//!   progress: waiting between requests, or headers not finished), so health checks
//!   and API calls are still served while the cap is full of idle or half-open
//!   connections. Only when every connection has a request in progress is the
//!   newcomer answered 503 and closed.
//!
//! Shutdown stops accepting, lets requests in progress finish (idle connections close
//! at once), and drops whatever is left after the shutdown grace.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use sonzai_webhooks_api::Problem;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request head (request line and headers; 431 beyond) and read buffer of a
/// connection, which bounds the memory a connection that never finishes its headers
/// can pin. hyper's default buffer (about 400 KiB) times thousands of connections is
/// gigabytes.
const MAX_HEAD: usize = 64 * 1024;

/// The limits of [the module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains the
/// connections for at most the shutdown grace.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let table = Arc::new(Table::new(limits.max_connections));
    let hard_stop = CancellationToken::new();
    let warned = Throttle::default();
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or memory: accepting again at once would
                    // spin. Connections closing (timeouts) free room meanwhile.
                    if warned.ready() {
                        tracing::error!(error = %e, "accept failed; retrying");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Some(conn) = table.admit() else {
            if warned.ready() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached with a request in progress on every \
                     connection; answering 503"
                );
            }
            // A fresh socket's send buffer is empty, so this never blocks or truncates.
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
                  retry-after: 1\r\ncontent-length: 0\r\n\r\n",
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(run_connection(
            stream,
            conn,
            app.clone(),
            limits,
            shutdown.clone(),
            hard_stop.clone(),
        ));
    }
    drop(listener);

    let deadline = Instant::now() + limits.shutdown_grace;
    while table.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = table.open();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "shutdown grace over; closing connections with requests still in progress"
        );
        hard_stop.cancel();
    }
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Lets a repeated warning through at most once every ten seconds, so a flood of
/// connections cannot flood the log too.
#[derive(Default)]
struct Throttle(AtomicU64);

impl Throttle {
    fn ready(&self) -> bool {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 10;
        let last = self.0.load(Ordering::Relaxed);
        now >= last + 10
            && self
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Why a connection task ended, for the debug log.
#[derive(Debug)]
enum End {
    Closed(Result<(), hyper::Error>),
    TimedOut,
    Evicted,
    GraceOver,
}

async fn run_connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    // Frees the connection's place however the task ends, a panicking handler included.
    let _closing = Closing(conn.clone());
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
    });
    let service = ConnService {
        app: TowerToHyperService::new(app),
        conn: conn.clone(),
    };
    let mut connection = pin!(hyper::server::conn::http1::Builder::new()
        // Headers are written with the body in one write; waiting for a flush is
        // only latency.
        .writev(true)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .serve_connection(io, service));
    let mut evicted = pin!(conn.evict.clone().cancelled_owned());
    let mut hard_stop = pin!(hard_stop.cancelled_owned());
    let mut shutdown = pin!(shutdown.cancelled_owned());
    let mut shutting_down = false;
    let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
    let mut timer_at = None;

    // One hand-written poll so the deadline is recomputed after every step of the
    // connection: requests start and end (and first bytes arrive) only inside
    // `connection.poll`.
    let end = std::future::poll_fn(|cx| {
        if evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Evicted);
        }
        if hard_stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::GraceOver);
        }
        if !shutting_down && shutdown.as_mut().poll(cx).is_ready() {
            shutting_down = true;
            // Closes an idle connection at once, otherwise after the current request.
            connection.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(End::Closed(result));
        }
        if let Some(at) = conn.deadline(&limits) {
            if timer_at != Some(at) {
                timer.as_mut().reset(at.into());
                timer_at = Some(at);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::TimedOut);
            }
        }
        Poll::Pending
    })
    .await;
    match end {
        End::Closed(Err(e)) => tracing::debug!(error = %e, "connection failed"),
        other => tracing::debug!(end = ?other, "connection closed"),
    }
}

struct Closing(Arc<Conn>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// All open connections: their number, and the idle ones oldest first.
struct Table {
    cap: usize,
    inner: Mutex<TableInner>,
}

struct TableInner {
    next_id: u64,
    /// Connections counted against the cap. An evicted connection hands its place to
    /// the newcomer at once, before its task has closed the socket.
    open: usize,
    /// Connections with no request in progress, by when they became idle.
    idle: BTreeMap<(Instant, u64), CancellationToken>,
}

impl Table {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Mutex::new(TableInner {
                next_id: 0,
                open: 0,
                idle: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> usize {
        self.lock().open
    }

    /// A place for a new connection, evicting the longest-idle one at the cap; `None`
    /// when the cap is reached and every connection has a request in progress.
    fn admit(self: &Arc<Self>) -> Option<Arc<Conn>> {
        let mut inner = self.lock();
        if inner.open >= self.cap {
            let (_, victim) = inner.idle.pop_first()?;
            victim.cancel();
            tracing::debug!("connection limit reached; closed the longest-idle connection");
        } else {
            inner.open += 1;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let now = Instant::now();
        let evict = CancellationToken::new();
        inner.idle.insert((now, id), evict.clone());
        Some(Arc::new(Conn {
            id,
            table: self.clone(),
            evict,
            activity: Mutex::new(Activity {
                busy: false,
                idle_since: now,
                // Nothing sent yet counts as a header in progress: a client connects
                // to send a request.
                header_started: Some(now),
            }),
        }))
    }
}

/// One connection's place in the [`Table`] and its timing state.
struct Conn {
    id: u64,
    table: Arc<Table>,
    /// Cancelled when the connection is evicted; while idle and not cancelled, the
    /// connection is in the table's idle map.
    evict: CancellationToken,
    activity: Mutex<Activity>,
}

struct Activity {
    /// A request is being handled (headers read, response not yet produced).
    busy: bool,
    idle_since: Instant,
    /// When the first byte of the next request arrived.
    header_started: Option<Instant>,
}

impl Conn {
    fn activity(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection must be closed if nothing changes; `None` while a
    /// request is in progress (its body has its own deadline).
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let activity = self.activity();
        if activity.busy {
            return None;
        }
        Some(match activity.header_started {
            Some(at) => at + limits.header_timeout,
            None => activity.idle_since + limits.idle_timeout,
        })
    }

    fn bytes_arrived(&self) {
        let mut activity = self.activity();
        if !activity.busy && activity.header_started.is_none() {
            activity.header_started = Some(Instant::now());
        }
    }

    /// Marks a request in progress, so the connection cannot be evicted or timed out;
    /// `None` when it has just been evicted.
    fn start_request(self: &Arc<Self>) -> Option<Busy> {
        let mut table = self.table.lock();
        if self.evict.is_cancelled() {
            return None;
        }
        let mut activity = self.activity();
        table.idle.remove(&(activity.idle_since, self.id));
        activity.busy = true;
        Some(Busy(self.clone()))
    }

    fn end_request(&self) {
        let mut table = self.table.lock();
        let mut activity = self.activity();
        let now = Instant::now();
        activity.busy = false;
        activity.idle_since = now;
        activity.header_started = None;
        if !self.evict.is_cancelled() {
            table.idle.insert((now, self.id), self.evict.clone());
        }
    }

    fn close(&self) {
        let mut table = self.table.lock();
        let activity = self.activity();
        if !activity.busy {
            table.idle.remove(&(activity.idle_since, self.id));
        }
        if !self.evict.is_cancelled() {
            table.open -= 1;
        }
    }
}

/// A request in progress on a connection; dropping it (also when the request is
/// abandoned) makes the connection idle again.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// The API as a hyper service that tracks requests in progress.
#[derive(Clone)]
struct ConnService {
    app: TowerToHyperService<Router>,
    conn: Arc<Conn>,
}

type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let Some(busy) = self.conn.start_request() else {
            // Evicted between reading these headers and this call: the request has
            // not been handled, so the client may safely retry it.
            let mut response =
                Problem::service_unavailable("the server is at its connection limit")
                    .into_response();
            close_after(&mut response);
            return Box::pin(std::future::ready(Ok(response)));
        };
        let response = hyper::service::Service::call(&self.app, request);
        Box::pin(async move {
            let response = response.await;
            drop(busy);
            response
        })
    }
}

fn close_after(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// The TCP stream, noting when the first byte of a request arrives.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Middleware: the request body must arrive within `limit` of the headers. A body
/// still incomplete then fails for the handler (which has persisted nothing without
/// its body) and the request is answered 408, closing the connection.
pub(crate) async fn body_deadline(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(TimedBody {
            inner: body,
            timer: Box::pin(tokio::time::sleep(limit)),
            expired: expired.clone(),
        })
    });
    let response = next.run(request).await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    let mut response = Problem::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {}",
            crate::duration::format(limit)
        ),
    )
    .into_response();
    close_after(&mut response);
    response
}

/// A request body that fails once its timer runs out.
struct TimedBody {
    inner: Body,
    timer: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new("request body timed out"))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let table = Arc::new(Table::new(2));
        let first = table.admit().unwrap();
        let second = table.admit().unwrap();
        let busy = second.start_request().unwrap();
        let third = table.admit().expect("the idle one makes room");
        assert!(first.evict.is_cancelled());
        assert!(!second.evict.is_cancelled() && !third.evict.is_cancelled());
        assert_eq!(table.open(), 2);
        // An evicted connection cannot start a request, and closing it frees nothing
        // (its place went to the newcomer).
        assert!(first.start_request().is_none());
        first.close();
        assert_eq!(table.open(), 2);

        let _also_busy = third.start_request().unwrap();
        assert!(table.admit().is_none(), "every connection is busy");
        drop(busy);
        let fourth = table.admit().expect("idle again after its request");
        assert!(second.evict.is_cancelled());
        second.close();
        fourth.close();
        assert_eq!(table.open(), 1);
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10,
            shutdown_grace: Duration::from_secs(1),
        };
        let table = Arc::new(Table::new(10));
        let conn = table.admit().unwrap();
        let opened = conn.activity().idle_since;
        assert_eq!(conn.deadline(&limits), Some(opened + limits.header_timeout));
        let busy = conn.start_request().unwrap();
        assert_eq!(conn.deadline(&limits), None);
        conn.bytes_arrived();
        drop(busy);
        let idle = conn.activity().idle_since;
        assert_eq!(conn.deadline(&limits), Some(idle + limits.idle_timeout));
        conn.bytes_arrived();
        let started = conn.activity().header_started.unwrap();
        assert_eq!(
            conn.deadline(&limits),
            Some(started + limits.header_timeout)
        );
    }

    #[test]
    fn throttle_lets_one_warning_through_per_interval() {
        let throttle = Throttle::default();
        assert!(throttle.ready());
        assert!(!throttle.ready());
    }
}
