//! Turning raw timings into the printed result blocks.
//!
//! Publishes and arrivals are matched only after the drain, never while the load runs:
//! a delivery can reach the receiver before its publisher has even read the 202, so
//! matching on arrival would misfile fast deliveries as unexpected.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::load::Published;
use crate::receiver::Arrival;

/// Nearest-rank percentiles of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    /// `None` for an empty sample: "p99 of nothing" would print as a misleading zero.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Self {
            count: samples.len(),
            p50: nearest_rank(samples, 50),
            p99: nearest_rank(samples, 99),
            max: samples[samples.len() - 1],
        })
    }

    fn render(&self) -> String {
        format!(
            "p50 {}  p99 {}  max {}  (n={})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }
}

/// The smallest sample with at least `percent`% of the sample at or below it.
fn nearest_rank(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Publishes matched against arrivals.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Matched {
    /// Publish start to first arrival, one per delivered event.
    pub latencies: Vec<Duration>,
    /// The publish's actual send to first arrival, one per delivered event: without
    /// the lag of the open loop's timer.
    pub since_sent: Vec<Duration>,
    /// The publish's `202` to first arrival, one per delivered event; zero when the
    /// delivery beat the answer to the publisher.
    pub since_accepted: Vec<Duration>,
    /// Deliveries the server promised (sum of `deliveries_started`).
    pub expected: u64,
    /// Promised deliveries that arrived.
    pub delivered: u64,
    /// Arrivals beyond what an event promised.
    pub duplicates: u64,
    /// Promised deliveries that never arrived.
    pub missing: u64,
    /// Arrivals for an event id no accepted publish returned.
    pub unexpected: u64,
    /// Last first-arrival among the matched events.
    pub last_arrival: Option<Instant>,
}

pub fn match_arrivals(published: &[Published], arrivals: &HashMap<Uuid, Arrival>) -> Matched {
    let mut matched = Matched::default();
    let mut known = 0u64;
    for event in published {
        matched.expected += event.deliveries;
        let Some(arrival) = arrivals.get(&event.event_id) else {
            matched.missing += event.deliveries;
            continue;
        };
        known += 1;
        let count = u64::from(arrival.count);
        matched.delivered += count.min(event.deliveries);
        matched.missing += event.deliveries.saturating_sub(count);
        matched.duplicates += count.saturating_sub(event.deliveries);
        if event.deliveries > 0 {
            matched
                .latencies
                .push(arrival.first.saturating_duration_since(event.started));
            matched
                .since_sent
                .push(arrival.first.saturating_duration_since(event.sent));
            matched
                .since_accepted
                .push(arrival.first.saturating_duration_since(event.accepted));
            matched.last_arrival = matched.last_arrival.max(Some(arrival.first));
        }
    }
    let seen = u64::try_from(arrivals.len()).unwrap_or(u64::MAX);
    matched.unexpected = seen.saturating_sub(known);
    matched
}

/// Resource use of one server process over the measured phase.
#[derive(Debug, Clone)]
pub struct ServerUsage {
    pub pid: u32,
    pub peak_rss_kib: u64,
    pub cpu: Duration,
}

/// A titled block of aligned `label  value` lines.
#[derive(Debug, Default)]
pub struct Block {
    title: String,
    lines: Vec<(String, String)>,
}

impl Block {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            lines: Vec::new(),
        }
    }

    pub fn line(&mut self, label: impl Into<String>, value: impl Into<String>) {
        self.lines.push((label.into(), value.into()));
    }

    pub fn latency(&mut self, label: &str, sample: Option<Percentiles>) {
        self.line(
            label,
            sample.map_or_else(|| "no samples".to_owned(), |p| p.render()),
        );
    }

    /// One line per server process and, with several, their total; CPU is also given
    /// per second of the phase so runs of different lengths compare.
    pub fn servers(&mut self, servers: &[ServerUsage], phase: Duration) {
        for server in servers {
            self.line(
                format!("server pid {}", server.pid),
                format!(
                    "peak RSS {}  CPU {:.2} s ({:.2} cores)",
                    mib(server.peak_rss_kib),
                    server.cpu.as_secs_f64(),
                    per_second(server.cpu.as_secs_f64(), phase)
                ),
            );
        }
        if servers.len() > 1 {
            let cpu: f64 = servers.iter().map(|s| s.cpu.as_secs_f64()).sum();
            let rss: u64 = servers.iter().map(|s| s.peak_rss_kib).sum();
            self.line(
                "servers total",
                format!(
                    "peak RSS {}  CPU {cpu:.2} s ({:.2} cores)",
                    mib(rss),
                    per_second(cpu, phase)
                ),
            );
        }
    }

    /// Appends `other`'s lines, each label prefixed with `prefix`.
    pub fn append(&mut self, prefix: &str, other: Block) {
        for (label, value) in other.lines {
            self.lines.push((format!("{prefix} {label}"), value));
        }
    }

    pub fn render(&self) -> String {
        let width = self.lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let mut out = format!("=== {}\n", self.title);
        for (label, value) in &self.lines {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "  {label:<width$}  {value}");
        }
        out
    }
}

/// Events (or calls) per second over `wall`, `0` when nothing was measured.
pub fn rate(count: u64, wall: Duration) -> String {
    format!("{:.1} /s", per_second(count as f64, wall))
}

fn per_second(amount: f64, wall: Duration) -> f64 {
    let secs = wall.as_secs_f64();
    if secs > 0.0 {
        amount / secs
    } else {
        0.0
    }
}

pub fn ms(d: Duration) -> String {
    let millis = d.as_secs_f64() * 1000.0;
    if millis < 10.0 {
        format!("{millis:.2} ms")
    } else {
        format!("{millis:.1} ms")
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut sample: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut sample).unwrap();
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));

        let mut one = millis(&[7]);
        let p = Percentiles::of(&mut one).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (one[0], one[0], one[0]));

        // With fewer than 100 samples p99 is the maximum, not an interpolation.
        let mut few = millis(&[5, 1, 3, 2, 4]);
        let p = Percentiles::of(&mut few).unwrap();
        assert_eq!(p.p50, Duration::from_millis(3));
        assert_eq!(p.p99, Duration::from_millis(5));

        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn arrivals_are_matched_per_event() {
        let t0 = Instant::now();
        let id = |n: u128| Uuid::from_u128(n);
        let published = vec![
            Published {
                event_id: id(1),
                started: t0,
                sent: t0 + Duration::from_millis(1),
                accepted: t0 + Duration::from_millis(2),
                deliveries: 1,
            },
            Published {
                event_id: id(2),
                started: t0 + Duration::from_millis(10),
                sent: t0 + Duration::from_millis(10) + Duration::from_millis(1),
                accepted: t0 + Duration::from_millis(12),
                deliveries: 1,
            },
            // Never arrives.
            Published {
                event_id: id(3),
                started: t0,
                sent: t0 + Duration::from_millis(1),
                accepted: t0 + Duration::from_millis(2),
                deliveries: 1,
            },
            // Promised two, got one.
            Published {
                event_id: id(4),
                started: t0,
                sent: t0 + Duration::from_millis(1),
                accepted: t0 + Duration::from_millis(2),
                deliveries: 2,
            },
            // No webhook matched: nothing expected.
            Published {
                event_id: id(5),
                started: t0,
                sent: t0 + Duration::from_millis(1),
                accepted: t0 + Duration::from_millis(2),
                deliveries: 0,
            },
        ];
        let arrivals: HashMap<Uuid, Arrival> = [
            (id(1), t0 + Duration::from_millis(30), 1),
            // Delivered three times: two duplicates.
            (id(2), t0 + Duration::from_millis(50), 3),
            (id(4), t0 + Duration::from_millis(20), 1),
            // Nobody published this one.
            (id(9), t0, 1),
        ]
        .into_iter()
        .map(|(id, first, count)| (id, Arrival { first, count }))
        .collect();

        let mut m = match_arrivals(&published, &arrivals);
        assert_eq!(m.expected, 5);
        assert_eq!(m.delivered, 3);
        assert_eq!(m.duplicates, 2);
        assert_eq!(m.missing, 2);
        assert_eq!(m.unexpected, 1);
        assert_eq!(m.last_arrival, Some(t0 + Duration::from_millis(50)));
        m.latencies.sort();
        assert_eq!(m.latencies, millis(&[20, 30, 40]));
        m.since_accepted.sort();
        assert_eq!(m.since_accepted, millis(&[18, 28, 38]));
        m.since_sent.sort();
        assert_eq!(m.since_sent, millis(&[19, 29, 39]));
    }

    #[test]
    fn blocks_align_their_labels() {
        let mut block = Block::new("B1");
        block.line("a", "1");
        block.line("longer label", "2");
        assert_eq!(
            block.render(),
            "=== B1\n  a             1\n  longer label  2\n"
        );
    }

    #[test]
    fn server_lines_add_up_several_processes() {
        let mut block = Block::new("x");
        let usage = |pid, cpu| ServerUsage {
            pid,
            peak_rss_kib: 2048,
            cpu: Duration::from_secs(cpu),
        };
        block.servers(&[usage(1, 2), usage(2, 4)], Duration::from_secs(2));
        let text = block.render();
        assert!(
            text.contains("server pid 1   peak RSS 2.0 MiB  CPU 2.00 s (1.00 cores)"),
            "{text}"
        );
        assert!(
            text.contains("servers total  peak RSS 4.0 MiB  CPU 6.00 s (3.00 cores)"),
            "{text}"
        );
    }

    #[test]
    fn rates_and_units() {
        assert_eq!(rate(500, Duration::from_millis(250)), "2000.0 /s");
        assert_eq!(rate(5, Duration::ZERO), "0.0 /s");
        assert_eq!(ms(Duration::from_micros(1234)), "1.23 ms");
        assert_eq!(ms(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(mib(1536), "1.5 MiB");
        assert_eq!(secs(Duration::from_millis(1500)), "1.50 s");
    }
}
