//! The wake-up signal shared by publishing (which pokes it), the delivery workers
//! (which wait on it) and the PostgreSQL relay (which carries it to the other
//! processes). On its own so that neither the store nor delivery imports the other.

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// The engine's shared wake-up signal: publishing pokes it so workers claim at once.
/// [`Waker::announce`] also tells the other server processes (PostgreSQL), through a
/// coalescing relay so a burst of publishes costs one cross-process signal.
#[derive(Debug, Default)]
pub struct Waker {
    local: Notify,
    remote: std::sync::OnceLock<Arc<Notify>>,
    /// Set while this process's workers have no free slot: only then is help from the
    /// other processes worth a cross-process signal. A worker with free slots claims
    /// new deliveries itself within a millisecond of the local wake-up.
    saturated: AtomicBool,
    /// A claim is running: what it returns may fill the last free slots, so work
    /// announced meanwhile may be left for the other processes.
    claiming: AtomicBool,
    /// A local wake-up is waiting for the claimer: an announcement behind it may find
    /// the slots taken by the work announced first.
    pending: AtomicBool,
}

impl Waker {
    /// Wakes this process's workers.
    pub fn wake(&self) {
        self.local.notify_one();
    }

    /// Wakes this process's workers and, when a relay is attached and this process
    /// may not take the work itself (no free slot, or a claim or an earlier wake-up
    /// that may use the last ones), every other process's.
    pub fn announce(&self) {
        let queued_behind = self.pending.swap(true, Ordering::AcqRel);
        self.wake();
        let busy = self.saturated.load(Ordering::Acquire) || self.claiming.load(Ordering::Acquire);
        if busy || queued_behind {
            if let Some(remote) = self.remote.get() {
                remote.notify_one();
            }
        }
    }

    /// The claimer starts a claim: the wake-ups so far are being served.
    pub(crate) fn claim_started(&self) {
        self.claiming.store(true, Ordering::Release);
        self.pending.store(false, Ordering::Release);
    }

    /// The claim is over; `saturated` says whether it left no free slot.
    pub(crate) fn claim_finished(&self, saturated: bool) {
        self.saturated.store(saturated, Ordering::Release);
        self.claiming.store(false, Ordering::Release);
    }

    pub(crate) fn set_saturated(&self, saturated: bool) {
        self.saturated.store(saturated, Ordering::Release);
    }

    /// Attaches the cross-process relay (done once, at start).
    pub fn attach_remote(&self, remote: Arc<Notify>) {
        let _ = self.remote.set(remote);
    }

    pub(crate) async fn woken(&self) {
        self.local.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the relay was poked since the last call.
    async fn relayed(remote: &Notify) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(20), remote.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn announcements_go_to_other_processes_only_when_this_one_may_not_take_them() {
        let waker = Waker::default();
        let remote = Arc::new(Notify::new());
        waker.attach_remote(remote.clone());

        // An idle process with free slots takes the work itself.
        waker.announce();
        assert!(!relayed(&remote).await);
        // A second announcement before the claimer got to the first.
        waker.announce();
        assert!(relayed(&remote).await);

        // While a claim runs, its result may use the last free slots.
        waker.claim_started();
        waker.announce();
        assert!(relayed(&remote).await);
        waker.claim_finished(false);

        // The claim served the wake-ups; free slots left: local only again.
        waker.claim_started();
        waker.claim_finished(false);
        waker.announce();
        assert!(!relayed(&remote).await);

        // No free slot: the others must help.
        waker.claim_started();
        waker.claim_finished(true);
        waker.announce();
        assert!(relayed(&remote).await);
    }
}
