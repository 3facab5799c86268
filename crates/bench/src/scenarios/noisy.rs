//! B5, the noisy neighbour. One tenant's project (the noisy one) has webhooks whose
//! receivers are in trouble: they hang (B5a), or they answer slowly behind a large
//! backlog (B5b: four webhooks; B5c: one ordered webhook, one delivery at a time). Meanwhile another tenant's project (the quiet one) publishes at
//! a modest pace to a receiver that answers at once. The figure that matters is the
//! quiet project's end-to-end latency: how far one tenant's trouble delays another's
//! deliveries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use super::{drain, footer, server_usage, Fleet, Settings};
use crate::load::{self, PublishRun, Published, Target, EVENT_TYPE};
use crate::procfs::Usage;
use crate::receiver::{Receiver, Reply};
use crate::report::{self, match_arrivals, Block, Percentiles};
use crate::server::Tenancy;

/// Webhooks of the noisy project. A project has one webhook per event type, so these
/// are four event types.
const NOISY_WEBHOOKS: usize = 4;
/// The first noisy webhook's `rate_limit` (deliveries per second).
const NOISY_RATE_LIMIT: u64 = 10;

/// B5a: the noisy project's rate, spread over its webhooks. With the server's default
/// 10 s delivery timeout that asks for 400 deliveries in flight, more than the
/// default 256 workers.
const HANGING_NOISY_PER_SECOND: u64 = 40;
const HANGING_QUIET_PER_SECOND: u64 = 10;
/// The quiet project's p99 a fair server should stay under in B5a.
const HANGING_GOAL: Duration = Duration::from_secs(1);

/// B5b: the noisy project's backlog (÷10 with `--quick`) and its receiver's pace.
const BACKLOG_EVENTS: u64 = 50_000;
const BACKLOG_RECEIVER_DELAY: Duration = Duration::from_millis(50);
const BACKLOG_QUIET_PER_SECOND: u64 = 20;
/// The quiet project's p99 a fair server should stay under in B5b.
const BACKLOG_GOAL: Duration = Duration::from_millis(50);

/// B5c: the noisy project's one ordered webhook and its backlog (÷10 with `--quick`),
/// to the B5b receiver. One delivery at a time, 50 ms each: the backlog stays for the
/// whole run, its head in flight.
const ORDERED_BACKLOG_EVENTS: u64 = 20_000;

/// The noisy project's webhooks in B5a and B5b, or in B5c.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoisyWebhooks {
    /// Four webhooks, the first rate-limited.
    Mixed,
    /// One ordered webhook.
    Ordered,
}

impl NoisyWebhooks {
    fn event_types(self) -> Vec<String> {
        match self {
            NoisyWebhooks::Mixed => (0..NOISY_WEBHOOKS)
                .map(|index| format!("bench.noisy.{index}"))
                .collect(),
            NoisyWebhooks::Ordered => vec!["bench.noisy.ordered".to_owned()],
        }
    }

    /// The upsert body of the webhook of event type `index`.
    fn body(self, index: usize, url: String) -> serde_json::Value {
        let mut body = json!({ "webhook_url": url });
        match self {
            // Its deliveries keep coming due and going back to wait for their turn.
            NoisyWebhooks::Mixed if index == 0 => body["rate_limit"] = json!(NOISY_RATE_LIMIT),
            NoisyWebhooks::Mixed => {}
            NoisyWebhooks::Ordered => body["ordered"] = json!(true),
        }
        body
    }

    fn described(self) -> String {
        match self {
            NoisyWebhooks::Mixed => {
                format!("over {NOISY_WEBHOOKS} webhooks (one limited to {NOISY_RATE_LIMIT}/s)")
            }
            NoisyWebhooks::Ordered => "to 1 ordered webhook".to_owned(),
        }
    }
}

/// Most unanswered publishes of one paced publisher: far more than a healthy server
/// has at these rates, few enough that a stalled one cannot pile up sockets.
const MAX_IN_FLIGHT: usize = 1024;

/// B5a: the noisy project's receivers accept each delivery and never answer.
pub(super) async fn hanging_receivers(settings: &Settings) -> anyhow::Result<Block> {
    // Shorter than the default 10 s delivery timeout the workers never fill up, so
    // even the smoke run keeps 10 s.
    let seconds = if settings.quick { 10 } else { 30 };
    let neighbours = Neighbours::start(settings, Reply::Never, NoisyWebhooks::Mixed).await?;
    let before = neighbours.fleet.usage()?;
    let bench_before = Usage::of("self")?;
    let measured_from = Instant::now();
    let deadline = measured_from + settings.phase_timeout;
    let (noisy, quiet) = tokio::join!(
        neighbours.paced(
            &neighbours.noisy,
            HANGING_NOISY_PER_SECOND,
            seconds,
            settings,
            deadline
        ),
        neighbours.paced(
            &neighbours.quiet,
            HANGING_QUIET_PER_SECOND,
            seconds,
            settings,
            deadline
        ),
    );
    let (noisy, quiet) = (noisy?, quiet?);
    let load_end = Instant::now();
    let drained = drain(
        &neighbours.quiet_receiver,
        expecting(&quiet),
        load_end + settings.drain_timeout,
    )
    .await;
    let drain_wall = load_end.elapsed();
    let after = neighbours.fleet.usage()?;
    let metrics = neighbours.fleet.scrape_metrics().await;
    let bench_after = Usage::of("self")?;
    let phase = measured_from.elapsed();
    let noisy_requests = neighbours.noisy_receiver.requests();
    let noisy_events = neighbours.noisy_receiver.distinct();
    let noisy_answered = neighbours.noisy_receiver.answered();
    let servers = server_usage(
        &neighbours.fleet,
        &before,
        &after,
        settings.ticks_per_second,
    );
    let setup = neighbours.fleet.setup_line();
    let quiet_outcome = neighbours.stop().await;

    let mut block = Block::new(format!(
        "B5a · noisy neighbour, hanging receivers · {}",
        settings.servers_context()
    ));
    block.line("setup", setup);
    publish_lines(
        &mut block,
        "noisy load",
        &noisy,
        format!(
            "{HANGING_NOISY_PER_SECOND} events/s over {NOISY_WEBHOOKS} webhooks (one limited to \
             {NOISY_RATE_LIMIT}/s) for {seconds} s (receivers accept and never answer)"
        ),
        HANGING_NOISY_PER_SECOND * seconds,
    );
    publish_lines(
        &mut block,
        "quiet load",
        &quiet,
        format!(
            "{HANGING_QUIET_PER_SECOND} events/s to 1 webhook for {seconds} s, alongside \
             (receiver answers at once)"
        ),
        HANGING_QUIET_PER_SECOND * seconds,
    );
    quiet_outcome.report(
        &mut block,
        &quiet,
        drained,
        drain_wall,
        settings,
        HANGING_GOAL,
    );
    block.line(
        "noisy receivers",
        format!("{noisy_requests} requests for {noisy_events} events, {noisy_answered} answered"),
    );
    footer(
        &mut block,
        &servers,
        phase,
        metrics,
        &bench_before,
        &bench_after,
        settings,
    );
    Ok(block)
}

/// B5b: the noisy project has a large backlog to a receiver that takes 50 ms per
/// delivery; the quiet project publishes while it drains. B5c: the same, the backlog
/// going to one ordered webhook, which sends one delivery at a time.
pub(super) async fn slow_backlog(
    settings: &Settings,
    webhooks: NoisyWebhooks,
) -> anyhow::Result<Block> {
    let (backlog, title) = match webhooks {
        NoisyWebhooks::Mixed => (
            settings.scaled(BACKLOG_EVENTS),
            "B5b · noisy neighbour, slow backlog",
        ),
        NoisyWebhooks::Ordered => (
            settings.scaled(ORDERED_BACKLOG_EVENTS),
            "B5c · noisy neighbour, ordered backlog",
        ),
    };
    let seconds = if settings.quick { 5 } else { 20 };
    let neighbours =
        Neighbours::start(settings, Reply::After(BACKLOG_RECEIVER_DELAY), webhooks).await?;
    let before = neighbours.fleet.usage()?;
    let bench_before = Usage::of("self")?;
    let measured_from = Instant::now();
    let noisy = load::closed_loop(
        &neighbours.client,
        neighbours.noisy.clone(),
        backlog,
        settings.publishers,
        settings.payload_bytes,
        measured_from + settings.phase_timeout,
    )
    .await?;
    let answered_at_backlog = neighbours.noisy_receiver.answered();
    let quiet_from = Instant::now();
    let quiet = neighbours
        .paced(
            &neighbours.quiet,
            BACKLOG_QUIET_PER_SECOND,
            seconds,
            settings,
            quiet_from + settings.phase_timeout,
        )
        .await?;
    let answered_at_quiet_end = neighbours.noisy_receiver.answered();
    let noisy_last_answer = neighbours.noisy_receiver.last_answer();
    let load_end = Instant::now();
    let drained = drain(
        &neighbours.quiet_receiver,
        expecting(&quiet),
        load_end + settings.drain_timeout,
    )
    .await;
    let drain_wall = load_end.elapsed();
    let after = neighbours.fleet.usage()?;
    let metrics = neighbours.fleet.scrape_metrics().await;
    let bench_after = Usage::of("self")?;
    let phase = measured_from.elapsed();
    let answered_at_end = neighbours.noisy_receiver.answered();
    let servers = server_usage(
        &neighbours.fleet,
        &before,
        &after,
        settings.ticks_per_second,
    );
    let setup = neighbours.fleet.setup_line();
    let quiet_outcome = neighbours.stop().await;

    let mut block = Block::new(format!("{title} · {}", settings.servers_context()));
    block.line("setup", setup);
    publish_lines(
        &mut block,
        "noisy backlog",
        &noisy,
        format!(
            "{backlog} events {}, {} publishers, in {} (receiver answers after {} ms)",
            webhooks.described(),
            settings.publishers,
            report::secs(noisy.wall()),
            BACKLOG_RECEIVER_DELAY.as_millis()
        ),
        backlog,
    );
    publish_lines(
        &mut block,
        "quiet load",
        &quiet,
        format!(
            "{BACKLOG_QUIET_PER_SECOND} events/s to 1 webhook for {seconds} s, once the backlog \
             was in (receiver answers at once)"
        ),
        BACKLOG_QUIET_PER_SECOND * seconds,
    );
    quiet_outcome.report(
        &mut block,
        &quiet,
        drained,
        drain_wall,
        settings,
        BACKLOG_GOAL,
    );
    let promised: u64 = noisy.accepted.iter().map(|p| p.deliveries).sum();
    // A backlog that empties early leaves the rest of the quiet load uncontended, so
    // the events sent while it was still due are also shown on their own.
    let backlog_done = noisy_last_answer.filter(|_| answered_at_quiet_end >= promised);
    if let Some(done) = backlog_done.filter(|&done| done > quiet_from) {
        let during: Vec<Published> = quiet
            .accepted
            .iter()
            .filter(|p| p.started < done)
            .copied()
            .collect();
        let mut since_accepted = match_arrivals(&during, &quiet_outcome.arrivals).since_accepted;
        block.latency(
            &format!(
                "quiet e2e, first {:.1} s (backlog due)",
                (done - quiet_from).as_secs_f64()
            ),
            Percentiles::of(&mut since_accepted),
        );
    }
    block.line(
        "noisy delivered",
        format!(
            "{answered_at_backlog} when the backlog was in, {answered_at_quiet_end} when the \
             quiet load ended, {answered_at_end} at the end, of {promised}"
        ),
    );
    footer(
        &mut block,
        &servers,
        phase,
        metrics,
        &bench_before,
        &bench_after,
        settings,
    );
    Ok(block)
}

/// The two projects (each in a tenant of its own), their receivers and publish targets.
struct Neighbours {
    fleet: Fleet,
    quiet_receiver: Receiver,
    noisy_receiver: Receiver,
    /// The quiet project on every server.
    quiet: Arc<Vec<Target>>,
    /// Every (noisy event type, server) pair, so consecutive events go to different
    /// webhooks.
    noisy: Arc<Vec<Target>>,
    client: reqwest::Client,
}

impl Neighbours {
    async fn start(
        settings: &Settings,
        noisy_reply: Reply,
        webhooks: NoisyWebhooks,
    ) -> anyhow::Result<Self> {
        let quiet_receiver = Receiver::start(Duration::ZERO).await?;
        let noisy_receiver = Receiver::replying(noisy_reply).await?;
        let fleet = Fleet::launch(settings, 2, Tenancy::OnePerProject).await?;
        let client = load::client()?;
        let (quiet_key, noisy_key) = (&fleet.projects[0].key, &fleet.projects[1].key);
        let first = &fleet.servers[0].base;
        load::upsert_webhook(
            &client,
            &Target::new(first, quiet_key),
            EVENT_TYPE,
            &quiet_receiver.url("quiet"),
        )
        .await
        .context("registering the quiet project's webhook")?;
        let event_types = webhooks.event_types();
        for (index, event_type) in event_types.iter().enumerate() {
            let body = webhooks.body(index, noisy_receiver.url(&format!("noisy-{index}")));
            load::upsert_webhook_as(&client, &Target::new(first, noisy_key), event_type, &body)
                .await
                .context("registering the noisy project's webhooks")?;
        }
        let quiet = fleet
            .servers
            .iter()
            .map(|server| Target::new(&server.base, quiet_key))
            .collect();
        let noisy = fleet
            .servers
            .iter()
            .flat_map(|server| {
                event_types.iter().map(|event_type| {
                    Target::new(&server.base, noisy_key).with_event_type(event_type)
                })
            })
            .collect();
        Ok(Self {
            quiet: Arc::new(quiet),
            noisy: Arc::new(noisy),
            fleet,
            quiet_receiver,
            noisy_receiver,
            client,
        })
    }

    /// `per_second` events a second for `seconds` seconds, open loop.
    async fn paced(
        &self,
        targets: &Arc<Vec<Target>>,
        per_second: u64,
        seconds: u64,
        settings: &Settings,
        deadline: Instant,
    ) -> anyhow::Result<PublishRun> {
        load::paced(
            &self.client,
            targets.clone(),
            per_second * seconds,
            Duration::from_secs(1) / u32::try_from(per_second).unwrap_or(u32::MAX),
            MAX_IN_FLIGHT,
            settings.payload_bytes,
            deadline,
        )
        .await
    }

    /// Stops the servers and the receivers; returns what reached the quiet receiver.
    async fn stop(self) -> QuietOutcome {
        let outcome = QuietOutcome {
            arrivals: self.quiet_receiver.arrivals(),
            malformed: self.quiet_receiver.malformed(),
        };
        self.fleet.stop().await;
        outcome
    }
}

/// What reached the quiet project's receiver.
struct QuietOutcome {
    arrivals: std::collections::HashMap<uuid::Uuid, crate::receiver::Arrival>,
    malformed: u64,
}

impl QuietOutcome {
    fn report(
        &self,
        block: &mut Block,
        quiet: &PublishRun,
        drained: bool,
        drain_wall: Duration,
        settings: &Settings,
        goal: Duration,
    ) {
        let matched = match_arrivals(&quiet.accepted, &self.arrivals);
        let mut calls = quiet.call_latencies.clone();
        block.latency("quiet publish call", Percentiles::of(&mut calls));
        let mut since_accepted = matched.since_accepted.clone();
        let e2e = Percentiles::of(&mut since_accepted);
        block.latency("quiet e2e (202 → arrival)", e2e);
        let mut since_sent = matched.latencies.clone();
        block.latency(
            "quiet e2e (send → arrival)",
            Percentiles::of(&mut since_sent),
        );
        let mut delivered = format!(
            "{} of {}  duplicates {}  missing {}",
            matched.delivered, matched.expected, matched.duplicates, matched.missing
        );
        if matched.unexpected > 0 || self.malformed > 0 {
            delivered.push_str(&format!(
                "  unexpected {}  malformed {}",
                matched.unexpected, self.malformed
            ));
        }
        if drained {
            delivered.push_str(&format!(
                "  (the last {} after the load ended)",
                report::secs(drain_wall)
            ));
        } else {
            delivered.push_str(&format!(
                "  (drain stopped at {} s; the missing are not in the percentiles)",
                settings.drain_timeout.as_secs()
            ));
        }
        block.line("quiet delivered", delivered);
        let verdict = match e2e {
            Some(p) if drained && p.p99 <= goal => "met",
            Some(_) => "not met",
            None => "no samples",
        };
        block.line(
            "quiet goal",
            format!("e2e (202 → arrival) p99 ≤ {}: {verdict}", report::ms(goal)),
        );
    }
}

/// How many of a run's events promised a delivery.
fn expecting(run: &PublishRun) -> usize {
    run.accepted.iter().filter(|p| p.deliveries > 0).count()
}

/// The accepted count of a publishing phase, and its failures if any.
fn publish_lines(block: &mut Block, label: &str, run: &PublishRun, what: String, planned: u64) {
    block.line(
        label,
        format!("{what}: {} of {planned} accepted", run.accepted.len()),
    );
    if run.failures > 0 {
        block.line(
            format!("{label} failures"),
            format!(
                "{} (first: {})",
                run.failures,
                run.first_error.as_deref().unwrap_or("?")
            ),
        );
    }
    if run.timed_out {
        block.line(
            format!("{label} phase"),
            format!(
                "stopped at the phase timeout, {} of {planned} sent",
                run.attempted
            ),
        );
    }
}
