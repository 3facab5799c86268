//! Waking workers across processes on PostgreSQL. Every server process LISTENs on
//! [`CHANNEL`] and pokes its own workers when a notification arrives; a process that
//! accepted new deliveries sends one.
//!
//! The NOTIFY is sent by a relay task after the publish has committed, not inside the
//! publishing transaction: PostgreSQL serializes the commits of all transactions that
//! NOTIFY (a database-wide lock held through the commit's WAL flush), which would cap
//! publishing at the rate of one fsync at a time. The relay coalesces: however many
//! publishes happen while one NOTIFY is on its way, one more follows. Nothing is lost by
//! this: the publishing process has already woken its own workers, and the others poll
//! at least once a second anyway.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::wake::Waker;

pub const CHANNEL: &str = "sonzai_deliveries";

/// Starts the listener (wakes `waker` on notifications from any process) and the relay
/// that turns [`Waker::announce`] into NOTIFYs. Both stop with `shutdown`.
pub async fn spawn_pg_waker(
    url: &str,
    waker: Arc<Waker>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    let listen_waker = waker.clone();
    let listen_shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = listen_shutdown.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => listen_waker.wake(),
                    // The connection dropped; sqlx reconnects on the next call. Wake the
                    // workers in case a notification was lost meanwhile.
                    Ok(None) => listen_waker.wake(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
            }
        }
    });

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    let relay = Arc::new(Notify::new());
    waker.attach_remote(relay.clone());
    tokio::spawn(relay_loop(pool, relay, shutdown));
    Ok(())
}

async fn relay_loop(pool: PgPool, relay: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = relay.notified() => {}
        }
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "NOTIFY failed; other processes will poll");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
