//! Running the service: the HTTP API (the generated router around [`crate::api::Api`],
//! plus `/healthz`, `/readyz` and `/metrics`, served by [`crate::listener`] under its
//! timeouts and connection cap), the delivery workers, and graceful shutdown of both
//! on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sonzai_webhooks_api::Problem;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::config::Config;
use crate::delivery::dispatch::{Dispatcher, DispatcherConfig};
use crate::delivery::guard::TargetPolicy;
use crate::delivery::worker::{DeliveryWorker, WorkerConfig};
use crate::engine::Engine;
use crate::listener::Limits;
use crate::recovery::RecoveryRunner;
use crate::retention::RetentionTask;
use crate::store::WebhookStore;

/// A started server: its address and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    workers: JoinHandle<()>,
    recoveries: JoinHandle<()>,
    retention: JoinHandle<()>,
}

impl Running {
    /// Stops accepting requests and claiming deliveries, lets in-flight work finish
    /// within the shutdown grace, hands back the rest, and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the server stops (after [`Running::shutdown`] or a signal).
    pub async fn wait(self) {
        let _ = self.http.await;
        let _ = self.workers.await;
        let _ = self.recoveries.await;
        let _ = self.retention.await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

#[derive(Clone)]
struct Shared {
    engine: Arc<Engine>,
    workers_running: Arc<AtomicBool>,
}

/// Opens the store, prints development credentials on first start of an empty
/// database, and serves until SIGTERM/Ctrl-C.
pub(crate) async fn serve(config: Config) -> anyhow::Result<()> {
    raise_open_file_limit();
    let store = config.database.connect().await?;
    // Only on the embedded database: several processes starting together on an empty
    // PostgreSQL could each mint development credentials.
    if config.database.is_embedded() {
        if let Some(banner) =
            crate::bootstrap::bootstrap_dev_credentials(store.as_ref(), &config.listen.to_string())
                .await?
        {
            println!("{banner}");
        }
    }
    let running = start_with_store(&config, store).await?;
    tracing::info!(addr = %running.addr, database = %config.database.url_redacted(), "listening");
    let token = running.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    running.wait().await;
    Ok(())
}

/// Raises the soft open-file limit to the hard one: every client connection is a
/// file descriptor, and the common soft default (1024) is far below
/// `--max-connections`.
fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                    tracing::debug!("cannot raise the open-file limit");
                }
            }
        }
    }
}

/// `--max-connections`, lowered to fit the open-file limit with room left for the
/// database, the delivery connections (two per worker: one in use, one pooled) and
/// the process's own files, so the cap is reached (and idle connections make way)
/// before accepting fails for want of descriptors.
fn connection_cap(max_connections: usize, workers: usize) -> usize {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed in.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            let files = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
            let room = files.saturating_sub(64 + 2 * workers).max(16);
            if room < max_connections {
                tracing::warn!(
                    max_connections,
                    open_file_limit = files,
                    using = room,
                    "--max-connections lowered to fit the open-file limit"
                );
                return room;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = workers;
    max_connections
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Starts the API and the workers on an opened store (from
/// [`crate::config::DatabaseArgs::connect`], which puts the API key cache in front).
pub async fn start_with_store(
    config: &Config,
    store: Arc<dyn WebhookStore>,
) -> anyhow::Result<Running> {
    let schedule = config.retry_schedule.clone();
    let policy = TargetPolicy::from_allow_private(config.allow_private_targets)
        .with_denied(config.deny_targets.iter().copied());
    let engine = Arc::new(Engine::new(store.clone(), config.idempotency_window));
    let dispatcher = Arc::new(
        Dispatcher::new(DispatcherConfig {
            timeout: config.delivery_timeout,
            connect_timeout: config.delivery_timeout.min(Duration::from_secs(5)),
            policy: policy.clone(),
            max_idle_per_host: config.workers.clamp(8, 1024),
            ..DispatcherConfig::default()
        })
        .context("building the delivery HTTP client")?,
    );
    let shutdown = CancellationToken::new();
    let workers_running = Arc::new(AtomicBool::new(true));

    let worker = DeliveryWorker::new(
        store.clone(),
        dispatcher,
        WorkerConfig {
            concurrency: config.workers,
            lease: config.lease,
            schedule,
            disable: config.disable_policy(),
            idle_poll: Duration::from_secs(1),
            shutdown_grace: config.shutdown_grace,
            per_webhook_limit: config.per_webhook_limit(),
            max_retry_after: config.max_retry_after,
        },
        engine.waker.clone(),
        engine.metrics.clone(),
        engine.health.clone(),
    );
    if let Some(url) = config.database.database_url.as_deref() {
        if crate::store::Backend::of_url(url) == crate::store::Backend::Postgres {
            crate::store::notify::spawn_pg_waker(url, engine.waker.clone(), shutdown.clone())
                .await?;
        }
    }
    let workers = {
        let token = shutdown.clone();
        let running = workers_running.clone();
        tokio::spawn(async move {
            worker.run(token).await;
            running.store(false, Ordering::SeqCst);
        })
    };

    let recoveries = tokio::spawn(
        RecoveryRunner {
            store: store.clone(),
            waker: engine.waker.clone(),
            kick: engine.recoveries.clone(),
            lease: config.lease,
        }
        .run(shutdown.clone()),
    );

    let retention = tokio::spawn(
        RetentionTask {
            store: store.clone(),
            metrics: engine.metrics.clone(),
            retention: config.retention,
            every: config.retention_every,
        }
        .run(shutdown.clone()),
    );

    let api = Arc::new(Api::new(
        engine.clone(),
        policy,
        config.into(),
        config.public_url.clone(),
        config.listen,
    ));
    let portal = crate::portal::router(api.clone(), store.clone(), config.public_url.as_deref());
    let app = app(
        api,
        portal,
        Shared {
            engine: engine.clone(),
            workers_running,
        },
        config.http_body_timeout,
    );
    let limits = Limits {
        header_timeout: config.http_header_timeout,
        idle_timeout: config.http_idle_timeout,
        max_connections: connection_cap(config.max_connections, config.workers),
        shutdown_grace: config.shutdown_grace,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let http = {
        let token = shutdown.clone();
        tokio::spawn(crate::listener::serve(listener, app, limits, token))
    };
    Ok(Running {
        addr,
        shutdown,
        http,
        workers,
        recoveries,
        retention,
    })
}

fn app(api: Arc<Api>, portal: Router, shared: Shared, body_timeout: Duration) -> Router {
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared.clone());
    sonzai_webhooks_api::router(api)
        .merge(ops)
        .merge(portal)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            body_timeout,
            crate::listener::body_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(shared, track))
}

async fn method_not_allowed() -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not support that method",
    )
    .into_response()
}

async fn not_found() -> Response {
    Problem::not_found("no such route").into_response()
}

/// One log line and one metrics sample per request, labelled by operationId.
async fn track(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let operation = route
        .as_deref()
        .and_then(|route| {
            sonzai_webhooks_api::OPERATIONS
                .iter()
                .find(|(m, r, _)| *m == method.as_str() && *r == route)
                .map(|(_, _, id)| *id)
        })
        .or(route.as_deref())
        .unwrap_or("unmatched");
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    shared
        .engine
        .metrics
        .record_request(operation, status, elapsed);
    tracing::info!(
        %method,
        path = %path,
        operation,
        status,
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Shared>) -> Response {
    if !shared.workers_running.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "workers stopped\n").into_response();
    }
    if let Some(stuck) = shared
        .engine
        .health
        .stuck(crate::delivery::health::STUCK_AFTER)
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", stuck.as_str()),
        )
            .into_response();
    }
    match shared.engine.store.ping().await {
        Ok(()) => "ready\n".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let queue = shared.engine.store.queue_stats().await.ok();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.engine.metrics.render(queue),
    )
        .into_response()
}
