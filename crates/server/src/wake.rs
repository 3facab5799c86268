//! The wake-up signal shared by publishing (which pokes it), the delivery workers
//! (which wait on it) and the PostgreSQL relay (which carries it to the other
//! processes). On its own so that neither the store nor delivery imports the other.

use std::sync::Arc;

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
    saturated: std::sync::atomic::AtomicBool,
}

impl Waker {
    /// Wakes this process's workers.
    pub fn wake(&self) {
        self.local.notify_one();
    }

    /// Wakes this process's workers and, when a relay is attached, every other
    /// process's.
    pub fn announce(&self) {
        self.wake();
        if self.saturated.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(remote) = self.remote.get() {
                remote.notify_one();
            }
        }
    }

    pub(crate) fn set_saturated(&self, saturated: bool) {
        self.saturated
            .store(saturated, std::sync::atomic::Ordering::Relaxed);
    }

    /// Attaches the cross-process relay (done once, at start).
    pub fn attach_remote(&self, remote: Arc<Notify>) {
        let _ = self.remote.set(remote);
    }

    pub(crate) async fn woken(&self) {
        self.local.notified().await;
    }
}
