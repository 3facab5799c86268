//! What the machine is and what a process used, read from `/proc` (Linux only).
//!
//! Benchmark figures mean little without the machine they came from, and a server's
//! CPU seconds per delivered event is the number that predicts its cost in production,
//! so both are read directly from the kernel rather than estimated.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context as _};

/// The machine a run happened on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub mem_total_kib: Option<u64>,
    /// `/proc/loadavg` at the start: on a shared machine, a high load explains noisy
    /// figures.
    pub load_average: Option<String>,
}

impl Machine {
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model(&text))
            .unwrap_or_else(|| "unknown".to_owned());
        let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| kib_field(&text, "MemTotal:"));
        let load_average = std::fs::read_to_string("/proc/loadavg").ok().map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        });
        Self {
            cpus,
            model,
            mem_total_kib,
            load_average,
        }
    }
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// A `Name:   1234 kB` field of `/proc/meminfo` or `/proc/<pid>/status`, in KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// Resource use of one process so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Peak resident set size (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

impl Usage {
    /// Reads the usage of `pid` (`"self"` for this process).
    pub fn of(pid: &str) -> anyhow::Result<Self> {
        let dir = Path::new("/proc").join(pid);
        let status = std::fs::read_to_string(dir.join("status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let stat = std::fs::read_to_string(dir.join("stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        Ok(Self {
            peak_rss_kib: kib_field(&status, "VmHWM:")
                .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))?,
            rss_kib: kib_field(&status, "VmRSS:")
                .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?,
            cpu_ticks: stat_cpu_ticks(&stat)
                .ok_or_else(|| anyhow!("cannot parse /proc/{pid}/stat"))?,
        })
    }

    /// CPU time used between `earlier` and `self`.
    pub fn cpu_since(&self, earlier: &Usage, ticks_per_second: u64) -> Duration {
        ticks_to_duration(
            self.cpu_ticks.saturating_sub(earlier.cpu_ticks),
            ticks_per_second,
        )
    }
}

/// CPU ticks so far of every PostgreSQL process on the machine (the `postgres` command
/// name), by pid: the database's side of a run on PostgreSQL is the difference of two
/// readings (see [`cpu_ticks_since`]).
pub fn postgres_ticks() -> HashMap<u32, u64> {
    let mut ticks = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != "postgres" {
            continue;
        }
        if let Some(t) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(stat_cpu_ticks)
        {
            ticks.insert(pid, t);
        }
    }
    ticks
}

/// CPU time the processes of `after` used since `before` (a process that started in
/// between counts from zero; one that ended in between is not seen).
pub fn cpu_ticks_since(
    before: &HashMap<u32, u64>,
    after: &HashMap<u32, u64>,
    ticks_per_second: u64,
) -> Duration {
    let ticks = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks_to_duration(ticks, ticks_per_second)
}

/// `utime + stime` of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted
/// from the last `)`: after it come `state` (field 3), ..., `utime` (14), `stime` (15).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_to_duration(ticks: u64, ticks_per_second: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / ticks_per_second.max(1) as f64)
}

/// Clock ticks per second (`getconf CLK_TCK`), the unit of `/proc/<pid>/stat` times.
/// It is 100 on every mainstream Linux configuration, which is the fallback when
/// `getconf` is unavailable.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks: &u64| ticks > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\
                       processor\t: 1\nmodel name\t: Other\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor\t: 0\n"), None);
    }

    #[test]
    fn kib_fields_are_found_by_name() {
        let status = "Name:\tsonzai\nVmPeak:\t  900 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(kib_field(status, "VmHWM:"), Some(12_345));
        assert_eq!(kib_field(status, "VmRSS:"), Some(1000));
        assert_eq!(kib_field(status, "VmSwap:"), None);
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 27 0 0 20 0 9 0 \
                    100 2000000 3000 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(177));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert_eq!(stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_has_a_readable_usage() {
        let first = Usage::of("self").unwrap();
        assert!(first.peak_rss_kib > 0);
        // Burn CPU until the tick counter moves (bounded: a loaded machine may take a
        // while to give this thread the time).
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut latest = first;
        while latest.cpu_ticks < first.cpu_ticks + 2 && started.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            latest = Usage::of("self").unwrap();
        }
        assert!(
            latest.cpu_ticks >= first.cpu_ticks + 2,
            "CPU time did not advance"
        );
        assert!(latest.cpu_since(&first, 100) >= Duration::from_millis(20));
        assert_eq!(
            first.cpu_since(&latest, 100),
            Duration::ZERO,
            "saturates backwards"
        );
    }

    #[test]
    fn ticks_convert_to_seconds() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(5, 0), Duration::from_secs(5));
    }
}
