//! The recovery runner: a task in every server process that takes running recoveries
//! (durable jobs in the database, see `store/recovery.rs`) under a lease and advances
//! them a batch at a time, waking the delivery workers after each batch. Any process
//! finishes a job another one started: a process that dies loses its leases, and the
//! jobs go on from their cursors once the leases run out.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{RecoveryClaim, RecoveryProgress, RecoveryStep, WebhookStore};
use crate::wake::Waker;

/// Recoveries one process advances at a time; the others wait for a free runner (in
/// this or another process).
const MAX_HELD: usize = 8;

/// How one batch is sized: 500 events looked at per write transaction keeps it to a
/// few milliseconds, so publishes never wait long behind it. Fresh events of the
/// project queue behind the recovered deliveries still pending, so the webhook keeps
/// no more than 256 of them: as many as the default workers have in flight, which
/// the engine drains in tens of milliseconds when the receiver is fast.
const SCAN: usize = 500;
const MAX_PENDING: usize = 256;

/// How long the runner waits when every job it holds waits for its webhook's queue to
/// drain: well under the time a fast receiver takes to drain it, so the queue does
/// not run dry between batches.
const BACKOFF: Duration = Duration::from_millis(10);

/// How often an idle runner looks for jobs: a job started in this process wakes it at
/// once, one started in another process (or left by a dead one) is found this late.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub(crate) struct RecoveryRunner {
    pub store: Arc<dyn WebhookStore>,
    /// Woken after each batch, like a publish wakes it.
    pub waker: Arc<Waker>,
    /// Poked when a recovery starts in this process.
    pub kick: Arc<Notify>,
    /// The lease on a job, renewed by every batch.
    pub lease: Duration,
}

impl RecoveryRunner {
    pub async fn run(self, shutdown: CancellationToken) {
        let step = RecoveryStep {
            scan: SCAN,
            max_pending: MAX_PENDING,
            lease: self.lease,
        };
        let mut held: Vec<RecoveryClaim> = Vec::new();
        let mut last_claim: Option<tokio::time::Instant> = None;
        while !shutdown.is_cancelled() {
            let claim_due = last_claim.is_none_or(|at| at.elapsed() >= IDLE_POLL);
            if held.len() < MAX_HELD && (held.is_empty() || claim_due) {
                last_claim = Some(tokio::time::Instant::now());
                match self
                    .store
                    .claim_recoveries(MAX_HELD - held.len(), self.lease)
                    .await
                {
                    Ok(claims) => held.extend(claims),
                    Err(e) => tracing::warn!(error = %e, "claiming recoveries failed"),
                }
            }
            let mut queued = false;
            let mut kept = Vec::with_capacity(held.len());
            for claim in held.drain(..) {
                match self.store.advance_recovery(claim, step).await {
                    Ok(RecoveryProgress::Queued(n)) => {
                        if n > 0 {
                            self.waker.announce();
                        }
                        queued = true;
                        kept.push(claim);
                    }
                    Ok(RecoveryProgress::Waiting) => kept.push(claim),
                    Ok(RecoveryProgress::Finished(status)) => {
                        tracing::info!(recovery = %claim.id, status = status.as_str(), "recovery finished");
                        self.waker.announce();
                    }
                    Ok(RecoveryProgress::Lost) => {
                        tracing::info!(recovery = %claim.id, "recovery taken over by another runner");
                    }
                    Err(e) => {
                        // The batch rolled back; the next round tries it again (and the
                        // lease runs out if the database stays away).
                        tracing::warn!(recovery = %claim.id, error = %e, "recovery batch failed");
                        kept.push(claim);
                    }
                }
            }
            held = kept;
            if queued {
                tokio::task::yield_now().await;
                continue;
            }
            let pause = if held.is_empty() { IDLE_POLL } else { BACKOFF };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // Hand the jobs back so another process goes on at once rather than after
        // the lease.
        for claim in held {
            if let Err(e) = self.store.release_recovery(claim).await {
                tracing::warn!(recovery = %claim.id, error = %e, "handing a recovery back failed");
            }
        }
    }
}
