//! `sonzai-webhooks-bench`: the delivery benchmark, usually run as `cargo xtask bench`.
//!
//! It starts the release server binary on a fresh database, publishes events to it
//! from an in-process load generator, receives the deliveries on an in-process
//! receiver, and prints throughput, end-to-end latency, delivery integrity and the
//! server's CPU and memory for each scenario.

mod load;
mod procfs;
mod receiver;
mod relay;
mod report;
mod scenarios;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::procfs::Machine;
use crate::scenarios::{Scenario, Settings};
use crate::server::{Backend, ServerBinary, ServerOptions};

const AFTER_HELP: &str = "\
Scenarios:
  B1  20,000 events to one webhook, 64 concurrent publishers (throughput)
  B2  200 events/s for 30 s, paced open loop (latency at steady load)
  B3  20,000 events round-robin over 50 projects with one webhook each
  B4  1,000 sequential webhook upserts, then 1,000 sequential list calls
  B5  noisy neighbour (not part of `all`; B5a, B5b and B5c run one case). Two
      projects in separate tenants: a noisy one with 4 webhooks (4 event types; the
      first with rate_limit 10) and a quiet one with 1 webhook to a receiver that
      answers at once. Reports the quiet project's
      end-to-end latency (publish answered → arrival) against a goal, and how much of
      the noisy project's load was delivered.
      B5a  the noisy receivers accept and never answer (the server's delivery timeout
           ends each attempt); noisy 40 events/s and quiet 10 events/s, together for
           30 s (--quick: 10 s). Goal: quiet p99 ≤ 1 s.
      B5b  a backlog of 50,000 noisy events (--quick: 5,000) to a receiver that answers
           after 50 ms; once published, quiet 20 events/s for 20 s (--quick: 5 s) while
           it drains (also shown: the quiet latency while the backlog was still due,
           if it emptied during the quiet phase). Goal: quiet p99 ≤ 50 ms.
      B5c  as B5b, the noisy project having one ordered webhook instead, with a
           backlog of 20,000 (--quick: 2,000): one delivery at a time, so the
           backlog waits behind its head all along. Goal: quiet p99 ≤ 50 ms.
      --receiver-delay-ms does not apply to B5.
  R1  recovery after an outage (not part of `all`): 100,000 events (--quick: 10,000)
      published before their webhook exists, then the webhook is registered and
      recovered (include missed); meanwhile 50 ordinary events/s for 30 s (--quick:
      6 s) go to another webhook of the project. Reports the recovered deliveries/s,
      duplicates and missing, the job's matched and queued, and the ordinary
      end-to-end latency while the recovery ran. --receiver-delay-ms does not apply.
  P1  retention under load (not part of `all`): B1 on fresh servers, then B1 again
      on servers keeping one day (--retention 1d) while they purge 1,000,000 attempts
      (--quick: 100,000), with 100,000 deliveries and events, seeded two days old.
      Reports both runs, the change in deliveries/s and e2e p99 (goal: within 20 %)
      and the purge rate (rows/s, from the first row purged to the last).

  F1  the floor under B1 (not part of `all`): B1's traffic through a relay, this
      executable as `serve`, that does the server's network work per event (reads
      the publish, answers 202, sends the event signed as the server does, on as
      many runtime threads as the server's default) and stores and logs nothing.
      Its rate is what the machine allows with publishers, relay and receiver
      sharing it, before any storage.
  F2  the floor under B2 (not part of `all`): B2's traffic through that relay. Its
      CPU per delivery and latency are what a server built this way spends and
      takes before storage.

Examples:
  cargo xtask bench --quick
  cargo xtask bench --scenario B1
  cargo xtask bench --postgres postgres://postgres@127.0.0.1:5432/test
  cargo xtask bench --postgres postgres://... --processes 2 --scenario B1
  cargo xtask bench --receiver-delay-ms 50 --workers 1024 --scenario B1
  cargo xtask bench --scenario B5 --postgres postgres://...
  cargo xtask bench --scenario R1 --postgres postgres://...
  cargo xtask bench --scenario P1 --postgres postgres://...
  cargo xtask bench --scenario B6 --postgres postgres://...

Each scenario gets a fresh database (SQLite in a temporary directory, or a schema of
its own on PostgreSQL, dropped afterwards) and fresh server processes.";

/// The server's default `--workers`, for the throughput ceiling printed when the
/// receiver is slow and `--workers` is not given.
const SERVER_DEFAULT_WORKERS: usize = 256;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "sonzai-webhooks-bench",
    about = "Delivery benchmark for the sonzai-webhooks server.",
    after_help = AFTER_HELP
)]
struct Args {
    /// Which scenario to run (`all`: B1 to B4; `B5`: B5a, B5b and B5c; R1: recovery; P1:
    /// retention; B6: growth; F1, F2: the floors under B1 and B2).
    #[arg(long, value_name = "B1|B2|B3|B4|B5|B5a|B5b|B5c|R1|P1|B6|F1|F2|all", default_value = "all",
          value_parser = parse_scenarios)]
    scenario: ScenarioChoice,

    /// Divide every count by 10: a smoke run of a few seconds per scenario.
    #[arg(long)]
    quick: bool,

    /// Run on PostgreSQL: URL of an existing database (each scenario creates and drops
    /// a schema of its own in it). Without it: SQLite.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,

    /// Server processes sharing the database; publishes go round-robin to all of
    /// them. More than one needs --postgres.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=32))]
    processes: usize,

    /// `--workers` of each server process (deliveries in flight); default: the
    /// server's own default.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

    /// The receiver answers each delivery after this many milliseconds (a slow
    /// receiver). Deliveries then need enough --workers to keep up.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    receiver_delay_ms: u64,

    /// Concurrent publishers of the closed-loop scenarios (B1, B3, the B5b backlog).
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    publishers: usize,

    /// Size of the padding in each event's data, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    payload_bytes: usize,

    /// Longest wait for outstanding deliveries once publishing is over, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    drain_timeout: u64,

    /// Longest publishing (or API-call) phase, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    phase_timeout: u64,

    /// The servers' `--log` filter (their logs go to a temporary file). The default is
    /// the server's own, so the figures include the cost of its request logging.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    server_log: String,

    /// An extra flag for `serve`, e.g. `--server-arg=--lease=60s` (repeatable).
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// The server binary; default: `sonzai-webhooks` next to this executable.
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
}

/// The scenarios to run, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScenarioChoice(Vec<Scenario>);

fn parse_scenarios(input: &str) -> Result<ScenarioChoice, String> {
    if input.eq_ignore_ascii_case("all") {
        return Ok(ScenarioChoice(Scenario::ALL.to_vec()));
    }
    if input.eq_ignore_ascii_case("B5") {
        return Ok(ScenarioChoice(Scenario::B5.to_vec()));
    }
    <Scenario as clap::ValueEnum>::from_str(input, true)
        .map(|one| ScenarioChoice(vec![one]))
        .map_err(|_| {
            format!(
                "unknown scenario {input:?}; expected B1, B2, B3, B4, B5, B5a, B5b, B5c, R1, P1, B6, F1, F2 or all"
            )
        })
}

fn main() -> ExitCode {
    // This executable is also the relay of F1 and F2, started by the bench as its
    // server.
    let argv: Vec<String> = std::env::args().collect();
    let relay = argv.get(1).is_some_and(|a| a == "serve");
    let args = (!relay).then(Args::parse);
    // reqwest is built without a default TLS provider; the bench speaks plain HTTP,
    // but the client will not build without one installed.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("error: cannot install the TLS crypto provider");
        return ExitCode::FAILURE;
    }
    let Some(args) = args else {
        return match relay::main(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    };
    if args.processes > 1 && args.postgres.is_none() {
        eprintln!("error: --processes above 1 needs --postgres (SQLite serves one process)");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        tokio::select! {
            code = run(args) => code,
            // Dropping `run` kills the servers (kill_on_drop) and drops the schemas.
            () = interrupted() => {
                eprintln!("interrupted: stopping the servers");
                ExitCode::from(130)
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

async fn run(args: Args) -> ExitCode {
    let bin = match ServerBinary::locate(args.server_bin.clone()) {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let settings = Settings {
        backend: args
            .postgres
            .clone()
            .map_or(Backend::Sqlite, Backend::Postgres),
        bin,
        server: ServerOptions {
            workers: args.workers,
            log: args.server_log.clone(),
            extra: args.server_args.clone(),
        },
        processes: args.processes,
        quick: args.quick,
        publishers: args.publishers,
        payload_bytes: args.payload_bytes,
        receiver_delay: Duration::from_millis(args.receiver_delay_ms),
        phase_timeout: Duration::from_secs(args.phase_timeout),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        ticks_per_second: procfs::clock_ticks_per_second(),
    };
    print!("{}", header(&args, &settings, &Machine::detect()));

    let mut failed = 0;
    for scenario in args.scenario.0 {
        println!();
        match scenarios::run(scenario, &settings).await {
            Ok(block) => print!("{}", block.render()),
            Err(e) => {
                failed += 1;
                println!("=== {scenario:?} FAILED: {e:#}");
            }
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What the run is about to measure, and on what.
fn header(args: &Args, settings: &Settings, machine: &Machine) -> String {
    let memory = machine.mem_total_kib.map_or_else(
        || "? GiB".to_owned(),
        |kib| format!("{:.1} GiB", kib as f64 / 1048576.0),
    );
    let mut out = String::from("sonzai-webhooks delivery benchmark\n");
    out.push_str(&format!(
        "  machine    {} CPUs · {} · {memory} RAM · load average {}\n",
        machine.cpus,
        machine.model,
        machine.load_average.as_deref().unwrap_or("?")
    ));
    out.push_str(&format!("  server     {}\n", settings.bin.path().display()));
    let backend = match &args.postgres {
        Some(url) => format!(
            "postgres {} (a fresh schema per scenario)",
            redact_password(url)
        ),
        None => "sqlite (a fresh database per scenario)".to_owned(),
    };
    out.push_str(&format!("  backend    {backend}\n"));
    out.push_str(&format!(
        "  load       {} server process{} · workers {} · receiver delay {} ms · {} publishers · {} B payload{}\n",
        settings.processes,
        if settings.processes == 1 { "" } else { "es" },
        settings
            .server
            .workers
            .map_or_else(|| "default".to_owned(), |w| w.to_string()),
        args.receiver_delay_ms,
        settings.publishers,
        settings.payload_bytes,
        if settings.quick { " · quick (counts ÷10)" } else { "" }
    ));
    if args.receiver_delay_ms > 0 {
        // Each delivery holds a worker for the receiver's delay: a hard ceiling.
        let workers = settings.server.workers.unwrap_or(SERVER_DEFAULT_WORKERS) as f64;
        let ceiling = workers * 1000.0 / args.receiver_delay_ms as f64 * settings.processes as f64;
        out.push_str(&format!(
            "  ceiling    at most {ceiling:.0} deliveries/s (workers × processes / receiver delay)\n"
        ));
    }
    out
}

/// `scheme://user:password@host...` with the password replaced, for printing.
fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

/// Resolves on Ctrl-C or SIGTERM, so the bench can stop its servers instead of
/// leaving them running.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn scenarios_parse_in_either_case() {
        let parsed = |input| parse_scenarios(input).map(|choice| choice.0);
        assert_eq!(parsed("all"), Ok(Scenario::ALL.to_vec()));
        assert_eq!(parsed("ALL"), Ok(Scenario::ALL.to_vec()));
        assert_eq!(parsed("B3"), Ok(vec![Scenario::B3]));
        assert_eq!(parsed("b1"), Ok(vec![Scenario::B1]));
        assert_eq!(
            parsed("B5"),
            Ok(vec![Scenario::B5a, Scenario::B5b, Scenario::B5c])
        );
        assert_eq!(parsed("b5c"), Ok(vec![Scenario::B5c]));
        assert_eq!(parsed("b5b"), Ok(vec![Scenario::B5b]));
        assert_eq!(parsed("r1"), Ok(vec![Scenario::R1]));
        assert_eq!(parsed("P1"), Ok(vec![Scenario::P1]));
        assert_eq!(parsed("b6"), Ok(vec![Scenario::B6]));
        assert_eq!(parsed("F2"), Ok(vec![Scenario::F2]));
        assert_eq!(parsed("f1"), Ok(vec![Scenario::F1]));
        assert!(parsed("B7").is_err());
        assert!(!Scenario::ALL.contains(&Scenario::F1));
        assert!(!Scenario::ALL.contains(&Scenario::F2));
        assert!(!Scenario::ALL.contains(&Scenario::R1));
        assert!(!Scenario::ALL.contains(&Scenario::B6));
        assert!(!Scenario::ALL.contains(&Scenario::B5a));
    }

    #[test]
    fn flags_parse() {
        let args = Args::try_parse_from([
            "bench",
            "--quick",
            "--scenario",
            "B2",
            "--postgres",
            "postgres://u@h/db",
            "--processes",
            "3",
            "--workers",
            "512",
            "--receiver-delay-ms",
            "25",
            "--server-arg=--lease=60s",
            "--server-arg",
            "--delivery-timeout=5s",
        ])
        .unwrap();
        assert!(args.quick);
        assert_eq!(args.scenario.0, [Scenario::B2]);
        assert_eq!(args.processes, 3);
        assert_eq!(args.workers, Some(512));
        assert_eq!(args.receiver_delay_ms, 25);
        assert_eq!(args.server_args, ["--lease=60s", "--delivery-timeout=5s"]);
        assert!(Args::try_parse_from(["bench", "--processes", "0"]).is_err());
        assert!(Args::try_parse_from(["bench", "--scenario", "B9"]).is_err());
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact_password("postgres://app:hunter2@db:5432/x?sslmode=require"),
            "postgres://app:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_password("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(redact_password("nonsense"), "nonsense");
    }
}
