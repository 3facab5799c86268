//! The retention task: in every process, every `--retention-every`, whichever process
//! holds the retention lock deletes what is older than `--retention`, a batch at a
//! time (see `store/retention.rs`). After each batch it rests three times as long as
//! the batch took, so retention never has more than a quarter of the database's write
//! time, and a publish waits behind at most one batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Retention;
use crate::metrics::Metrics;
use crate::store::{RetentionTable, StoreResult, WebhookStore};

/// Rows looked at per batch: a few milliseconds of work in one write transaction.
const BATCH: usize = 500;
/// Rest after a batch, in multiples of the time it took.
const REST: u32 = 3;

pub(crate) struct RetentionTask {
    pub store: Arc<dyn WebhookStore>,
    pub metrics: Arc<Metrics>,
    pub retention: Retention,
    pub every: Duration,
}

impl RetentionTask {
    pub async fn run(self, shutdown: CancellationToken) {
        if self.retention == Retention::Off {
            return;
        }
        loop {
            if let Err(e) = self.once(&shutdown).await {
                tracing::warn!(error = %e, "retention run failed; the next run goes on from there");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// One run, if this process gets the lock.
    async fn once(&self, shutdown: &CancellationToken) -> StoreResult<()> {
        let Some(horizon) = self.retention.horizon(chrono::Utc::now()) else {
            return Ok(());
        };
        let Some(lock) = self.store.retention_lock().await? else {
            return Ok(());
        };
        let started = Instant::now();
        let outcome = self.purge_all(horizon, shutdown).await;
        lock.release().await;
        let purged = outcome?;
        if purged.iter().any(|&(_, n)| n > 0) {
            let [attempts, deliveries, events, recoveries] = purged.map(|(_, n)| n);
            tracing::info!(
                %horizon,
                attempts,
                deliveries,
                events,
                recoveries,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "retention purged rows older than the horizon"
            );
        }
        Ok(())
    }

    async fn purge_all(
        &self,
        horizon: chrono::DateTime<chrono::Utc>,
        shutdown: &CancellationToken,
    ) -> StoreResult<[(RetentionTable, u64); 4]> {
        let mut purged = RetentionTable::ALL.map(|table| (table, 0u64));
        for (table, total) in &mut purged {
            let mut after = Uuid::nil();
            loop {
                if shutdown.is_cancelled() {
                    return Ok(purged);
                }
                let began = Instant::now();
                let step = self.store.purge(*table, horizon, after, BATCH).await?;
                *total += step.deleted;
                self.metrics.retention_purged(table.as_str(), step.deleted);
                let Some(next) = step.next else {
                    break;
                };
                after = next;
                tokio::time::sleep(began.elapsed() * REST).await;
            }
        }
        Ok(purged)
    }
}
