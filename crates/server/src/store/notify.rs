//! Waking workers across processes on PostgreSQL: publishing a delivery sends
//! `NOTIFY sonzai_deliveries` in the publishing transaction (so it is delivered only on
//! commit), and every server process LISTENs and pokes its workers. In-process wake-ups
//! cover SQLite, which has one process by design.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::delivery::worker::Waker;

pub const CHANNEL: &str = "sonzai_deliveries";

/// Listens on [`CHANNEL`] until `shutdown`, waking `waker` on each notification.
/// Reconnects after connection loss; while disconnected, workers fall back to their
/// idle poll, so nothing is missed, only delayed.
pub async fn spawn_pg_waker(
    url: &str,
    waker: Arc<Waker>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => waker.wake(),
                    // The connection dropped; sqlx reconnects on the next call. Wake the
                    // workers in case a notification was lost meanwhile.
                    Ok(None) => waker.wake(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
            }
        }
    });
    Ok(())
}
