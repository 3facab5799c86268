//! The scenarios. Each runs on servers and a database of its own, so one scenario's
//! leftovers (a backlog, a grown table) never colour the next one's figures.

mod growth;
mod noisy;
mod purge;
mod recovery;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::load::{self, Target, EVENT_TYPE};
use crate::procfs::{self, Usage};
use crate::receiver::Receiver;
use crate::report::{self, match_arrivals, Block, Percentiles, ServerUsage};
use crate::server::{
    Backend, Credentials, Database, ServerBinary, ServerOptions, ServerProcess, Tenancy,
};

/// The scenarios, in the order `all` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// 20,000 events to one webhook from 64 concurrent publishers: throughput.
    #[value(name = "B1")]
    B1,
    /// 200 events per second for 30 seconds, paced: latency at a steady load.
    #[value(name = "B2")]
    B2,
    /// 20,000 events spread over 50 projects with a webhook each: many tenants.
    #[value(name = "B3")]
    B3,
    /// 1,000 sequential webhook upserts, then 1,000 list calls: API latency.
    #[value(name = "B4")]
    B4,
    /// Noisy neighbour: one project's receivers hang while another publishes.
    #[value(name = "B5a")]
    B5a,
    /// Noisy neighbour: one project's backlog drains while another publishes.
    #[value(name = "B5b")]
    B5b,
    /// Noisy neighbour: one project's ordered backlog waits behind its head while
    /// another publishes.
    #[value(name = "B5c")]
    B5c,
    /// Recovery: 100,000 missed events recovered while ordinary deliveries go on.
    #[value(name = "R1")]
    R1,
    /// Retention: B1 while 1,000,000 old attempts are purged, against B1 alone.
    #[value(name = "P1")]
    P1,
    /// Growth: B1, B2, B4 and deep attempt paging on a database holding 2,000,000
    /// events and 6,000,000 attempts, against an empty one.
    #[value(name = "B6")]
    B6,
    /// Floor: B1's traffic through a relay that does the server's network work per
    /// event and stores nothing.
    #[value(name = "F1")]
    F1,
    /// Floor: B2's traffic through that relay.
    #[value(name = "F2")]
    F2,
}

impl Scenario {
    /// What `all` runs. B5, B6, R1 and P1 are left out: they take minutes.
    pub const ALL: [Scenario; 4] = [Scenario::B1, Scenario::B2, Scenario::B3, Scenario::B4];
    /// What `B5` runs.
    pub const B5: [Scenario; 3] = [Scenario::B5a, Scenario::B5b, Scenario::B5c];
}

/// Everything the scenarios share.
pub struct Settings {
    pub backend: Backend,
    pub bin: ServerBinary,
    pub server: ServerOptions,
    pub processes: usize,
    /// Divides every count by 10 (a smoke run).
    pub quick: bool,
    pub publishers: usize,
    pub payload_bytes: usize,
    pub receiver_delay: Duration,
    /// Bound of each publishing (or API-call) phase.
    pub phase_timeout: Duration,
    /// Bound of the wait for outstanding deliveries after publishing.
    pub drain_timeout: Duration,
    pub ticks_per_second: u64,
}

impl Settings {
    fn scaled(&self, full: u64) -> u64 {
        if self.quick {
            (full / 10).max(1)
        } else {
            full
        }
    }

    fn backend_label(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// What every block title ends with: where and how it ran.
    fn context(&self) -> String {
        format!(
            "{} · receiver delay {} ms",
            self.servers_context(),
            self.receiver_delay.as_millis()
        )
    }

    /// The backend and the servers, for scenarios whose receivers have delays of their
    /// own.
    fn servers_context(&self) -> String {
        let workers = self
            .server
            .workers
            .map_or_else(|| "default".to_owned(), |w| w.to_string());
        format!(
            "{} · {} server process{} · workers {workers}",
            self.backend_label(),
            self.processes,
            if self.processes == 1 { "" } else { "es" },
        )
    }
}

/// Runs one scenario and returns its result block.
pub async fn run(scenario: Scenario, settings: &Settings) -> anyhow::Result<Block> {
    match scenario {
        Scenario::B1 => {
            let events = settings.scaled(20_000);
            let title = format!(
                "B1 · {events} events → 1 webhook · {} publishers",
                settings.publishers
            );
            deliveries(settings, title, 1, Shape::Closed { events }).await
        }
        Scenario::B2 => {
            let seconds = settings.scaled(30);
            let title = format!("B2 · 200 events/s for {seconds} s (paced) → 1 webhook");
            deliveries(settings, title, 1, b2_shape(seconds)).await
        }
        Scenario::B3 => {
            let events = settings.scaled(20_000);
            let title = format!(
                "B3 · {events} events round-robin over 50 projects × 1 webhook · {} publishers",
                settings.publishers
            );
            deliveries(settings, title, 50, Shape::Closed { events }).await
        }
        Scenario::B4 => {
            let calls = settings.scaled(1_000);
            api_calls(settings, calls).await
        }
        Scenario::B5a => noisy::hanging_receivers(settings).await,
        Scenario::B5b => noisy::slow_backlog(settings, noisy::NoisyWebhooks::Mixed).await,
        Scenario::B5c => noisy::slow_backlog(settings, noisy::NoisyWebhooks::Ordered).await,
        Scenario::R1 => recovery::recover_missed(settings).await,
        Scenario::P1 => purge::b1_while_purging(settings).await,
        Scenario::B6 => growth::growth(settings).await,
        Scenario::F1 => {
            let events = settings.scaled(20_000);
            let title = format!(
                "F1 · B1's traffic ({events} events, {} publishers) through a relay that stores nothing",
                settings.publishers
            );
            through_relay(settings, title, Shape::Closed { events }).await
        }
        Scenario::F2 => {
            let seconds = settings.scaled(30);
            let title = format!(
                "F2 · B2's traffic (200 events/s for {seconds} s) through a relay that stores nothing"
            );
            through_relay(settings, title, b2_shape(seconds)).await
        }
    }
}

/// `shape` through the relay (see `relay.rs`) instead of a server.
async fn through_relay(settings: &Settings, title: String, shape: Shape) -> anyhow::Result<Block> {
    let receiver = Receiver::start(settings.receiver_delay).await?;
    let fleet = Fleet::relay().await?;
    let (block, _) = deliveries_on(settings, receiver, fleet, title, shape, None).await?;
    Ok(block)
}

/// B2's load: 200 events a second for `seconds`.
fn b2_shape(seconds: u64) -> Shape {
    Shape::Paced {
        per_second: 200,
        seconds,
    }
}

enum Shape {
    /// As fast as `publishers` concurrent callers get answers.
    Closed { events: u64 },
    /// `per_second` events a second, on a fixed schedule.
    Paced { per_second: u64, seconds: u64 },
}

/// Servers, their database and the projects provisioned in it. Servers are listed
/// first so that, when dropped, they are killed before the database goes away.
struct Fleet {
    servers: Vec<ServerProcess>,
    projects: Vec<Credentials>,
    db: Database,
    setup: Duration,
    /// The largest server's resident set once started, before any load: what an idle
    /// server holds.
    idle_rss_kib: u64,
    /// The one "server" is the relay of F1 and F2, which stores nothing.
    relay: bool,
}

impl Fleet {
    /// A fresh database with `projects` projects, and the server processes on it.
    async fn launch(
        settings: &Settings,
        projects: usize,
        tenancy: Tenancy,
    ) -> anyhow::Result<Self> {
        Self::launch_with(settings, &settings.server, projects, tenancy).await
    }

    /// Like [`Fleet::launch`], the servers started with `options`.
    async fn launch_with(
        settings: &Settings,
        options: &ServerOptions,
        projects: usize,
        tenancy: Tenancy,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let db = Database::create(&settings.backend)?;
        let mut servers = Vec::with_capacity(settings.processes);
        // One project on the embedded database: take the credentials the server
        // prints on first start, the path a newcomer takes. Otherwise provision with
        // the admin CLI (PostgreSQL has no banner; SQLite must be provisioned before
        // the server opens it, and then the database is not empty any more).
        let use_banner = db.is_embedded() && projects == 1 && settings.processes == 1;
        let projects = if use_banner {
            let (server, credentials) =
                ServerProcess::start(&settings.bin, &db, 0, options, true).await?;
            servers.push(server);
            vec![credentials.context("no credentials in the banner")?]
        } else {
            settings
                .bin
                .provision(&db, projects, tenancy)
                .await
                .context("provisioning projects and keys")?
        };
        for index in servers.len()..settings.processes {
            let (server, _) = ServerProcess::start(&settings.bin, &db, index, options, false)
                .await
                .with_context(|| format!("starting server process {index}"))?;
            servers.push(server);
        }
        let idle_rss_kib = servers
            .iter()
            .map(|s| s.usage().map(|u| u.rss_kib))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or_default();
        Ok(Self {
            servers,
            projects,
            db,
            setup: started.elapsed(),
            idle_rss_kib,
            relay: false,
        })
    }

    /// The relay of F1 and F2 in place of a server, with one project whose key it ignores;
    /// the database is only a working directory for its log.
    async fn relay() -> anyhow::Result<Self> {
        let started = Instant::now();
        let db = Database::create(&Backend::Sqlite)?;
        let relay = ServerProcess::start_relay(&db).await?;
        let idle_rss_kib = relay.usage()?.rss_kib;
        Ok(Self {
            servers: vec![relay],
            projects: vec![Credentials {
                project_id: "relay".to_owned(),
                key: "relay".to_owned(),
            }],
            db,
            setup: started.elapsed(),
            idle_rss_kib,
            relay: true,
        })
    }

    /// Where and how the fleet runs, for block titles.
    fn context(&self, settings: &Settings) -> String {
        if self.relay {
            format!(
                "relay, nothing stored · receiver delay {} ms",
                settings.receiver_delay.as_millis()
            )
        } else {
            settings.context()
        }
    }

    /// The "setup" line of a block: how long the fleet took to start and what an idle
    /// server held.
    fn setup_line(&self) -> String {
        format!(
            "{}  idle RSS {}",
            report::secs(self.setup),
            report::mib(self.idle_rss_kib)
        )
    }

    fn usage(&self) -> anyhow::Result<Vec<Usage>> {
        self.servers.iter().map(ServerProcess::usage).collect()
    }

    /// Scrapes `/metrics` of every server and sums a few counters, so a run shows the
    /// server's own account of what happened next to the benchmark's.
    async fn scrape_metrics(&self) -> String {
        const SHOWN: [(&str, &str); 4] = [
            ("sonzai_events_published_total ", "published"),
            (
                "sonzai_delivery_attempts_total{outcome=\"success\"} ",
                "attempts ok",
            ),
            (
                "sonzai_delivery_attempts_total{outcome=\"failed\"} ",
                "failed",
            ),
            ("sonzai_delivery_queue_depth ", "queue depth"),
        ];
        let Ok(client) = load::client() else {
            return "unavailable".to_owned();
        };
        let mut totals = [0.0f64; SHOWN.len()];
        for server in &self.servers {
            let Ok(response) = client.get(format!("{}/metrics", server.base)).send().await else {
                return "unavailable".to_owned();
            };
            let text = response.text().await.unwrap_or_default();
            for line in text.lines() {
                for (i, (prefix, _)) in SHOWN.iter().enumerate() {
                    if let Some(value) = line.strip_prefix(prefix) {
                        totals[i] += value.trim().parse::<f64>().unwrap_or(0.0);
                    }
                }
            }
        }
        SHOWN
            .iter()
            .zip(totals)
            .map(|((_, label), total)| format!("{label} {total}"))
            .collect::<Vec<_>>()
            .join(" · ")
    }

    /// Every (project, server) pair, interleaved so that consecutive events go to
    /// different servers and, over a full cycle, every project reaches every server.
    fn targets(&self) -> Vec<Target> {
        self.projects
            .iter()
            .flat_map(|project| {
                self.servers
                    .iter()
                    .map(|server| Target::new(&server.base, &project.key))
            })
            .collect()
    }

    async fn stop(self) {
        for server in self.servers {
            server.stop().await;
        }
        drop(self.db);
    }
}

fn server_usage(
    fleet: &Fleet,
    before: &[Usage],
    after: &[Usage],
    ticks_per_second: u64,
) -> Vec<ServerUsage> {
    fleet
        .servers
        .iter()
        .zip(before.iter().zip(after))
        .map(|(server, (before, after))| ServerUsage {
            pid: server.pid(),
            peak_rss_kib: after.peak_rss_kib,
            cpu: after.cpu_since(before, ticks_per_second),
        })
        .collect()
}

/// Waits until `receiver` has seen `expecting` distinct events or `deadline` passes;
/// true if they all arrived.
async fn drain(receiver: &Receiver, expecting: usize, deadline: Instant) -> bool {
    loop {
        if receiver.distinct() >= expecting {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a publishing scenario measured, for scenarios that compare two runs.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// Deliveries per second, first publish to last arrival.
    rate: f64,
    /// End-to-end p99.
    p99: Option<Duration>,
    /// Server plus (on PostgreSQL) database CPU per delivery, in milliseconds.
    cpu_ms: f64,
}

/// A publishing scenario: register one webhook per project, publish, wait for the
/// deliveries, and report.
async fn deliveries(
    settings: &Settings,
    title: String,
    projects: usize,
    shape: Shape,
) -> anyhow::Result<Block> {
    let (block, _) =
        deliveries_with(settings, &settings.server, title, projects, shape, None).await?;
    Ok(block)
}

/// [`deliveries`] on servers started with `options`; with `backlog`, old rows are
/// seeded for retention to purge while the events are published.
async fn deliveries_with(
    settings: &Settings,
    options: &ServerOptions,
    title: String,
    projects: usize,
    shape: Shape,
    backlog: Option<&purge::Backlog>,
) -> anyhow::Result<(Block, Figures)> {
    let receiver = Receiver::start(settings.receiver_delay).await?;
    let fleet = Fleet::launch_with(settings, options, projects, Tenancy::Shared).await?;
    deliveries_on(settings, receiver, fleet, title, shape, backlog).await
}

/// [`deliveries_with`] on a fleet already started, with its receiver.
async fn deliveries_on(
    settings: &Settings,
    receiver: Receiver,
    fleet: Fleet,
    title: String,
    shape: Shape,
    backlog: Option<&purge::Backlog>,
) -> anyhow::Result<(Block, Figures)> {
    let client = load::client()?;
    for (index, project) in fleet.projects.iter().enumerate() {
        let target = Target::new(&fleet.servers[0].base, &project.key);
        load::upsert_webhook(
            &client,
            &target,
            EVENT_TYPE,
            &receiver.url(&format!("p{index}")),
        )
        .await
        .with_context(|| format!("registering the webhook of project {}", project.project_id))?;
    }
    let purging = match backlog {
        Some(backlog) => Some(backlog.seed(&fleet, &client).await?),
        None => None,
    };
    let (mut block, figures) = measure(settings, &fleet, &client, &receiver, shape, title).await?;
    let purged = match (backlog, purging) {
        (Some(backlog), Some(purging)) => Some(backlog.finish(&fleet, &client, purging).await?),
        _ => None,
    };
    fleet.stop().await;
    drop(receiver);
    if let Some(purged) = purged {
        purged.report(&mut block);
    }
    Ok((block, figures))
}

/// Publishes `shape` through every server of `fleet` to its projects' webhooks, which
/// point at `receiver`, waits for the deliveries and reports.
async fn measure(
    settings: &Settings,
    fleet: &Fleet,
    client: &reqwest::Client,
    receiver: &Receiver,
    shape: Shape,
    title: String,
) -> anyhow::Result<(Block, Figures)> {
    let targets = Arc::new(fleet.targets());
    let before = fleet.usage()?;
    let database_before = procfs::postgres_ticks();
    let bench_before = Usage::of("self")?;
    let measured_from = Instant::now();
    let deadline = measured_from + settings.phase_timeout;
    let run = match shape {
        Shape::Closed { events } => {
            load::closed_loop(
                client,
                targets,
                events,
                settings.publishers,
                settings.payload_bytes,
                deadline,
            )
            .await?
        }
        Shape::Paced {
            per_second,
            seconds,
        } => {
            load::paced(
                client,
                targets,
                per_second * seconds,
                Duration::from_secs(1) / u32::try_from(per_second).unwrap_or(u32::MAX),
                // Far more than a healthy server ever has unanswered at this rate, few
                // enough that a stalled one cannot make the bench pile up sockets.
                1024,
                settings.payload_bytes,
                deadline,
            )
            .await?
        }
    };

    let expecting = run.accepted.iter().filter(|p| p.deliveries > 0).count();
    let drained = drain(receiver, expecting, Instant::now() + settings.drain_timeout).await;
    let after = fleet.usage()?;
    let database_after = procfs::postgres_ticks();
    let metrics = fleet.scrape_metrics().await;
    let bench_after = Usage::of("self")?;
    let phase = measured_from.elapsed();
    let arrivals = receiver.arrivals();
    let malformed = receiver.malformed();
    let servers = server_usage(fleet, &before, &after, settings.ticks_per_second);
    let setup = fleet.setup_line();

    let matched = match_arrivals(&run.accepted, &arrivals);
    let mut block = Block::new(format!("{title} · {}", fleet.context(settings)));
    block.line("setup", setup);
    let accepted = run.accepted.len() as u64;
    block.line(
        "events accepted",
        format!(
            "{accepted} of {} in {} = {}",
            run.attempted,
            report::secs(run.wall()),
            report::rate(accepted, run.wall())
        ),
    );
    if run.failures > 0 {
        block.line(
            "publish failures",
            format!(
                "{} (first: {})",
                run.failures,
                run.first_error.as_deref().unwrap_or("?")
            ),
        );
    }
    if run.timed_out {
        block.line(
            "publish phase",
            format!(
                "stopped at the {} s phase timeout",
                settings.phase_timeout.as_secs()
            ),
        );
    }
    let mut call_latencies = run.call_latencies.clone();
    block.latency("publish call", Percentiles::of(&mut call_latencies));
    if let Some(lag) = run.max_lag {
        block.line("send lag (max)", report::ms(lag));
    }
    let delivery_wall = match (run.first_start, matched.last_arrival) {
        (Some(start), Some(end)) => end.saturating_duration_since(start),
        _ => Duration::ZERO,
    };
    block.line(
        "deliveries completed",
        format!(
            "{} of {} in {} = {}  (first publish → last arrival)",
            matched.delivered,
            matched.expected,
            report::secs(delivery_wall),
            report::rate(matched.delivered, delivery_wall)
        ),
    );
    let mut latencies = matched.latencies.clone();
    let e2e = Percentiles::of(&mut latencies);
    block.latency("end-to-end latency", e2e);
    if run.max_lag.is_some() {
        // Open loop: the above counts from each event's scheduled instant, so it
        // includes how late the bench's own timer sent it.
        let mut since_sent = matched.since_sent.clone();
        block.latency("end-to-end from send", Percentiles::of(&mut since_sent));
    }
    let mut figures = Figures {
        rate: matched.delivered as f64 / delivery_wall.as_secs_f64().max(f64::EPSILON),
        p99: e2e.map(|p| p.p99),
        cpu_ms: 0.0,
    };
    let mut integrity = format!(
        "duplicates {}  missing {}",
        matched.duplicates, matched.missing
    );
    if matched.unexpected > 0 || malformed > 0 {
        integrity.push_str(&format!(
            "  unexpected {}  malformed {malformed}",
            matched.unexpected
        ));
    }
    if !drained {
        integrity.push_str(&format!(
            "  (drain stopped at {} s)",
            settings.drain_timeout.as_secs()
        ));
    }
    block.line("delivery integrity", integrity);
    block.servers(&servers, phase);
    // CPU per delivery: the servers' (with SQLite inside them), and on PostgreSQL the
    // database's own processes.
    let server_cpu: f64 = servers.iter().map(|s| s.cpu.as_secs_f64()).sum();
    let per_delivery = |cpu: f64| cpu * 1000.0 / matched.delivered.max(1) as f64;
    let mut cpu_line = format!("server {:.3} ms", per_delivery(server_cpu));
    figures.cpu_ms = per_delivery(server_cpu);
    if matches!(settings.backend, Backend::Postgres(_)) && !fleet.relay {
        let database =
            procfs::cpu_ticks_since(&database_before, &database_after, settings.ticks_per_second)
                .as_secs_f64();
        figures.cpu_ms += per_delivery(database);
        cpu_line.push_str(&format!(
            "  database {:.3} ms  (all postgres processes: {database:.2} s)",
            per_delivery(database)
        ));
    }
    block.line("CPU per delivery", cpu_line);
    block.line("server /metrics", metrics);
    let bench_cpu = bench_after.cpu_since(&bench_before, settings.ticks_per_second);
    block.line(
        "bench process",
        format!(
            "CPU {:.2} s (publishers and receiver share the machine)",
            bench_cpu.as_secs_f64()
        ),
    );
    Ok((block, figures))
}

/// B4: sequential upserts of distinct event types, then sequential list calls.
async fn api_calls(settings: &Settings, calls: u64) -> anyhow::Result<Block> {
    let fleet = Fleet::launch(settings, 1, Tenancy::Shared).await?;
    let measured = api_calls_on(settings, &fleet, calls, 0).await;
    fleet.stop().await;
    Ok(measured?.0)
}

/// What B4 measured, for scenarios that compare two runs.
struct ApiFigures {
    upsert_p99: Option<Duration>,
    list_p99: Option<Duration>,
}

/// B4 on `fleet`, whose project has `existing` webhooks already.
async fn api_calls_on(
    settings: &Settings,
    fleet: &Fleet,
    calls: u64,
    existing: usize,
) -> anyhow::Result<(Block, ApiFigures)> {
    let client = load::client()?;
    let targets = fleet.targets();
    let before = fleet.usage()?;
    let measured_from = Instant::now();
    let deadline = measured_from + settings.phase_timeout;
    // No event is published, so the URL is never called; it only has to be valid.
    let url = "http://127.0.0.1:9/b4";

    let mut upserts = Vec::new();
    let upsert_started = Instant::now();
    for index in 0..calls {
        if Instant::now() >= deadline {
            bail!("upserts did not finish within the phase timeout");
        }
        let target = &targets[(index % targets.len() as u64) as usize];
        let event_type = format!("bench.b4.{index:05}");
        upserts.push(load::upsert_webhook(&client, target, &event_type, url).await?);
    }
    let upsert_wall = upsert_started.elapsed();

    let mut lists = Vec::new();
    let mut listed = (0, 0);
    let list_started = Instant::now();
    for index in 0..calls {
        if Instant::now() >= deadline {
            bail!("list calls did not finish within the phase timeout");
        }
        let target = &targets[(index % targets.len() as u64) as usize];
        let (elapsed, bytes, count) = load::list_webhooks(&client, target).await?;
        lists.push(elapsed);
        listed = (bytes, count);
    }
    let list_wall = list_started.elapsed();
    let after = fleet.usage()?;
    let metrics = fleet.scrape_metrics().await;
    let phase = measured_from.elapsed();
    let servers = server_usage(fleet, &before, &after, settings.ticks_per_second);
    let setup = fleet.setup_line();

    if listed.1 as u64 != calls + existing as u64 {
        bail!(
            "the list returned {} webhooks after {calls} upserts to {existing}",
            listed.1
        );
    }
    let mut block = Block::new(format!(
        "B4 · {calls} sequential upserts, then {calls} sequential lists · {}",
        settings.context()
    ));
    block.line("setup", setup);
    let upsert = Percentiles::of(&mut upserts);
    let list = Percentiles::of(&mut lists);
    block.latency("upsert", upsert);
    block.line("upsert rate", report::rate(calls, upsert_wall));
    block.latency(
        &format!(
            "list ({} webhooks, {:.0} KiB)",
            listed.1,
            listed.0 as f64 / 1024.0
        ),
        list,
    );
    block.line("list rate", report::rate(calls, list_wall));
    block.servers(&servers, phase);
    block.line("server /metrics", metrics);
    Ok((
        block,
        ApiFigures {
            upsert_p99: upsert.map(|p| p.p99),
            list_p99: list.map(|p| p.p99),
        },
    ))
}

/// Server resources and counters, and the bench's own CPU.
pub(super) fn footer(
    block: &mut Block,
    servers: &[report::ServerUsage],
    phase: Duration,
    metrics: String,
    bench_before: &Usage,
    bench_after: &Usage,
    settings: &Settings,
) {
    block.servers(servers, phase);
    block.line("server /metrics", metrics);
    let bench_cpu = bench_after.cpu_since(bench_before, settings.ticks_per_second);
    block.line(
        "bench process",
        format!(
            "CPU {:.2} s (publishers and receivers share the machine)",
            bench_cpu.as_secs_f64()
        ),
    );
}
