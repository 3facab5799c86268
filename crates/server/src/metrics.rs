//! Prometheus metrics, rendered in the text exposition format at `GET /metrics`.
//!
//! A small hand-rolled registry: counters and histograms keyed by their label values,
//! behind one mutex each (updates are a hash lookup and an add; the hot paths touch
//! them once per request or attempt). Gauges that describe the queue are read from the
//! store when scraped, so they are true across processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::store::{AttemptStatus, QueueStats};

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
pub struct Metrics {
    /// (operation, status) → count
    http_requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// operation → latency
    http_latency: Mutex<BTreeMap<String, Histogram>>,
    events_published: AtomicU64,
    /// outcome → count
    attempts: Mutex<BTreeMap<&'static str, u64>>,
    /// time from the event's creation to this attempt's start
    delivery_latency: Mutex<Histogram>,
    /// attempt duration
    attempt_duration: Mutex<Histogram>,
    webhooks_disabled: AtomicU64,
    /// outcomes stored without their response body or error text (the store refused them)
    attempts_stripped: AtomicU64,
    /// outcomes the store refused even stripped; their deliveries are tried again
    /// when the lease runs out
    attempts_unrecorded: AtomicU64,
    /// deliveries handed back to wait for a rate-limited webhook's turn
    deliveries_throttled: AtomicU64,
    /// table → rows deleted by retention
    retention_purged: Mutex<BTreeMap<&'static str, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn record_request(&self, operation: &str, status: u16, elapsed: Duration) {
        *lock(&self.http_requests)
            .entry((operation.to_owned(), status))
            .or_default() += 1;
        lock(&self.http_latency)
            .entry(operation.to_owned())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    pub fn events_published(&self, n: u64) {
        self.events_published.fetch_add(n, Ordering::Relaxed);
    }

    pub fn record_attempt(
        &self,
        status: AttemptStatus,
        duration: Duration,
        attempt_number: i64,
        since_event: chrono::Duration,
    ) {
        *lock(&self.attempts).entry(status.as_str()).or_default() += 1;
        lock(&self.attempt_duration).observe(duration.as_secs_f64());
        // End-to-end latency is meaningful for first tries; retries wait on purpose.
        if attempt_number == 1 {
            let seconds = since_event.to_std().unwrap_or_default() + duration;
            lock(&self.delivery_latency).observe(seconds.as_secs_f64());
        }
    }

    pub fn webhooks_disabled(&self, n: usize) {
        self.webhooks_disabled
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn attempts_stripped(&self, n: u64) {
        self.attempts_stripped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn attempts_unrecorded(&self, n: u64) {
        self.attempts_unrecorded.fetch_add(n, Ordering::Relaxed);
    }

    pub fn deliveries_throttled(&self, n: u64) {
        self.deliveries_throttled.fetch_add(n, Ordering::Relaxed);
    }

    pub fn retention_purged(&self, table: &'static str, n: u64) {
        *lock(&self.retention_purged).entry(table).or_default() += n;
    }

    /// The exposition text; `queue` comes from the store at scrape time.
    pub fn render(&self, queue: Option<QueueStats>) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP sonzai_http_requests_total HTTP requests by operation and status.\n# TYPE sonzai_http_requests_total counter\n");
        for ((op, status), n) in lock(&self.http_requests).iter() {
            let _ = writeln!(
                out,
                "sonzai_http_requests_total{{operation=\"{op}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP sonzai_http_request_duration_seconds HTTP request latency by operation.\n# TYPE sonzai_http_request_duration_seconds histogram\n");
        for (op, h) in lock(&self.http_latency).iter() {
            h.render(
                &mut out,
                "sonzai_http_request_duration_seconds",
                &format!("operation=\"{op}\""),
            );
        }
        let _ = writeln!(
            out,
            "# HELP sonzai_events_published_total Events accepted for delivery.\n# TYPE sonzai_events_published_total counter\nsonzai_events_published_total {}",
            self.events_published.load(Ordering::Relaxed)
        );
        out.push_str("# HELP sonzai_delivery_attempts_total Delivery attempts by outcome.\n# TYPE sonzai_delivery_attempts_total counter\n");
        let attempts = lock(&self.attempts);
        for outcome in ["success", "failed"] {
            let _ = writeln!(
                out,
                "sonzai_delivery_attempts_total{{outcome=\"{outcome}\"}} {}",
                attempts.get(outcome).copied().unwrap_or(0)
            );
        }
        drop(attempts);
        out.push_str("# HELP sonzai_delivery_latency_seconds Time from publish to the end of the first attempt.\n# TYPE sonzai_delivery_latency_seconds histogram\n");
        lock(&self.delivery_latency).render(&mut out, "sonzai_delivery_latency_seconds", "");
        out.push_str("# HELP sonzai_delivery_attempt_duration_seconds Duration of one delivery attempt (the receiver's response time).\n# TYPE sonzai_delivery_attempt_duration_seconds histogram\n");
        lock(&self.attempt_duration).render(
            &mut out,
            "sonzai_delivery_attempt_duration_seconds",
            "",
        );
        let _ = writeln!(
            out,
            "# HELP sonzai_webhooks_disabled_total Webhooks disabled for failing.\n# TYPE sonzai_webhooks_disabled_total counter\nsonzai_webhooks_disabled_total {}",
            self.webhooks_disabled.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sonzai_attempts_stripped_total Attempts the store refused as given, recorded without response body and error text.\n# TYPE sonzai_attempts_stripped_total counter\nsonzai_attempts_stripped_total {}",
            self.attempts_stripped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sonzai_attempts_unrecorded_total Attempts the store refused even stripped (logged; the delivery is tried again after its lease).\n# TYPE sonzai_attempts_unrecorded_total counter\nsonzai_attempts_unrecorded_total {}",
            self.attempts_unrecorded.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sonzai_deliveries_throttled_total Deliveries put back to wait for their webhook's rate limit (no try used, no attempt recorded).\n# TYPE sonzai_deliveries_throttled_total counter\nsonzai_deliveries_throttled_total {}",
            self.deliveries_throttled.load(Ordering::Relaxed)
        );
        out.push_str("# HELP sonzai_retention_purged_total Rows deleted by retention, by table.\n# TYPE sonzai_retention_purged_total counter\n");
        let purged = lock(&self.retention_purged);
        for table in ["attempts", "deliveries", "events", "recoveries"] {
            let _ = writeln!(
                out,
                "sonzai_retention_purged_total{{table=\"{table}\"}} {}",
                purged.get(table).copied().unwrap_or(0)
            );
        }
        drop(purged);
        if let Some(q) = queue {
            let _ = writeln!(
                out,
                "# HELP sonzai_delivery_queue_depth Pending deliveries (due or waiting for a retry).\n# TYPE sonzai_delivery_queue_depth gauge\nsonzai_delivery_queue_depth {}",
                q.pending
            );
            let _ = writeln!(
                out,
                "# HELP sonzai_delivery_oldest_due_age_seconds Age of the oldest delivery that is due and not yet sent.\n# TYPE sonzai_delivery_oldest_due_age_seconds gauge\nsonzai_delivery_oldest_due_age_seconds {}",
                q.oldest_due_age.map(|d| d.as_secs_f64()).unwrap_or(0.0)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.record_request("listWebhooks", 200, Duration::from_millis(2));
        m.record_request("listWebhooks", 200, Duration::from_millis(20));
        m.events_published(3);
        m.record_attempt(
            AttemptStatus::Success,
            Duration::from_millis(1),
            1,
            chrono::Duration::milliseconds(1),
        );
        let text = m.render(Some(QueueStats {
            pending: 4,
            oldest_due_age: Some(Duration::from_secs(2)),
        }));
        assert!(text
            .contains("sonzai_http_requests_total{operation=\"listWebhooks\",status=\"200\"} 2"));
        assert!(text.contains(
            "sonzai_http_request_duration_seconds_bucket{operation=\"listWebhooks\",le=\"0.0025\"} 1"
        ));
        assert!(text.contains("sonzai_events_published_total 3"));
        assert!(text.contains("sonzai_delivery_attempts_total{outcome=\"success\"} 1"));
        assert!(text.contains("sonzai_delivery_queue_depth 4"));
        assert!(text.contains("sonzai_delivery_oldest_due_age_seconds 2"));
        m.retention_purged("attempts", 5);
        m.retention_purged("attempts", 2);
        let text = m.render(None);
        assert!(text.contains("sonzai_retention_purged_total{table=\"attempts\"} 7"));
        assert!(text.contains("sonzai_retention_purged_total{table=\"events\"} 0"));
    }
}
