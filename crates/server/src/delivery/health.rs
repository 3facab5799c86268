//! Whether the delivery loop is making progress, for `/readyz`.
//!
//! The claimer and the recorder each mark when a store call starts and clear the mark
//! when one succeeds. A mark older than [`STUCK_AFTER`] means that loop has been
//! failing (or waiting on the database) that long: the process still answers HTTP but
//! delivers nothing, so a load balancer or orchestrator should stop counting on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a store call of the delivery loop may fail or hang before the process
/// reports itself unready. Well above a healthy batch write (milliseconds) and a
/// short database failover.
pub const STUCK_AFTER: Duration = Duration::from_secs(15);

/// Which part of the delivery loop is stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuck {
    Claimer,
    Recorder,
}

impl Stuck {
    pub fn as_str(self) -> &'static str {
        match self {
            Stuck::Claimer => "delivery claimer stuck",
            Stuck::Recorder => "delivery recorder stuck",
        }
    }
}

/// When a pending store call began: milliseconds since the health's origin, plus one;
/// 0 when none is pending or the last one succeeded.
#[derive(Debug, Default)]
struct Mark(AtomicU64);

impl Mark {
    /// A call is starting; an earlier mark stays (a failing loop retries, it does
    /// not start afresh).
    fn start(&self, now: u64) {
        let _ = self
            .0
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn older_than(&self, now: u64, limit: u64) -> bool {
        let since = self.0.load(Ordering::Relaxed);
        since != 0 && now.saturating_sub(since) > limit
    }
}

#[derive(Debug)]
pub struct WorkerHealth {
    origin: Instant,
    claimer: Mark,
    recorder: Mark,
}

impl Default for WorkerHealth {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            claimer: Mark::default(),
            recorder: Mark::default(),
        }
    }
}

impl WorkerHealth {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// A claim is starting; the mark stays until one succeeds.
    pub fn claiming(&self) {
        self.claimer.start(self.now());
    }

    pub fn claimed(&self) {
        self.claimer.clear();
    }

    /// A batch write is starting; the mark stays until one succeeds.
    pub fn recording(&self) {
        self.recorder.start(self.now());
    }

    pub fn recorded(&self) {
        self.recorder.clear();
    }

    /// The part that has been failing or waiting longer than `limit`, if any.
    pub fn stuck(&self, limit: Duration) -> Option<Stuck> {
        let now = self.now();
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        if self.recorder.older_than(now, limit) {
            Some(Stuck::Recorder)
        } else if self.claimer.older_than(now, limit) {
            Some(Stuck::Claimer)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_call_is_stuck_only_after_the_limit_and_until_a_success() {
        let health = WorkerHealth::default();
        assert_eq!(health.stuck(Duration::ZERO), None);
        health.recording();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(health.stuck(Duration::from_secs(60)), None);
        assert_eq!(
            health.stuck(Duration::from_millis(5)),
            Some(Stuck::Recorder)
        );
        // A second start keeps the first mark: a failing loop retries, it does not
        // start afresh.
        health.recording();
        assert_eq!(
            health.stuck(Duration::from_millis(5)),
            Some(Stuck::Recorder)
        );
        health.recorded();
        assert_eq!(health.stuck(Duration::ZERO), None);
        health.claiming();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(health.stuck(Duration::from_millis(5)), Some(Stuck::Claimer));
        health.claimed();
        assert_eq!(health.stuck(Duration::ZERO), None);
    }
}
