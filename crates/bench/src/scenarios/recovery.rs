//! R1, recovery after an outage. Events of one type are published while their
//! webhook does not exist yet (so none is delivered: each is "missed"), the webhook
//! is registered and a recovery queues them all. While it runs, the same project
//! publishes at a modest pace to another webhook whose receiver answers at once. The
//! figures that matter: how fast the recovered events arrive, that every one arrives
//! once, and how far the recovery delays the ordinary deliveries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{drain, footer, server_usage, Fleet, Settings};
use crate::load::{self, Published, Target, EVENT_TYPE};
use crate::procfs::Usage;
use crate::receiver::Receiver;
use crate::report::{self, match_arrivals, Block, Percentiles};
use crate::server::Tenancy;

/// The event type whose webhook is recovered.
const RECOVERED_TYPE: &str = "bench.recovered";
/// Missed events the recovery queues (÷10 with `--quick`).
const RECOVERED_EVENTS: u64 = 100_000;
/// The ordinary load beside the recovery, and how long it lasts (÷5 with `--quick`).
const ORDINARY_PER_SECOND: u64 = 50;
const ORDINARY_SECONDS: u64 = 30;
/// Most unanswered ordinary publishes.
const MAX_IN_FLIGHT: usize = 1024;
/// How often the recovery's progress is read while it runs.
const POLL: Duration = Duration::from_millis(250);

pub(super) async fn recover_missed(settings: &Settings) -> anyhow::Result<Block> {
    let events = settings.scaled(RECOVERED_EVENTS);
    let seconds = if settings.quick {
        ORDINARY_SECONDS / 5
    } else {
        ORDINARY_SECONDS
    };
    let recovered_receiver = Receiver::start(Duration::ZERO).await?;
    let ordinary_receiver = Receiver::start(Duration::ZERO).await?;
    let fleet = Fleet::launch(settings, 1, Tenancy::Shared).await?;
    let client = load::client()?;
    let key = &fleet.projects[0].key;
    let first = Target::new(&fleet.servers[0].base, key);
    load::upsert_webhook(
        &client,
        &first,
        EVENT_TYPE,
        &ordinary_receiver.url("ordinary"),
    )
    .await
    .context("registering the ordinary webhook")?;

    // The window starts a second before the first publish, so clock granularity
    // cannot leave the first events out.
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let missed_targets: Vec<Target> = fleet
        .servers
        .iter()
        .map(|server| Target::new(&server.base, key).with_event_type(RECOVERED_TYPE))
        .collect();
    let missed = load::closed_loop(
        &client,
        Arc::new(missed_targets),
        events,
        settings.publishers,
        settings.payload_bytes,
        Instant::now() + settings.phase_timeout,
    )
    .await?;
    if missed.accepted.len() as u64 != events {
        bail!(
            "{} of {events} missed events accepted (first error: {})",
            missed.accepted.len(),
            missed.first_error.as_deref().unwrap_or("none")
        );
    }
    if missed.accepted.iter().any(|p| p.deliveries > 0) {
        bail!("an event of {RECOVERED_TYPE} was delivered before its webhook existed");
    }
    load::upsert_webhook(
        &client,
        &first,
        RECOVERED_TYPE,
        &recovered_receiver.url("recovered"),
    )
    .await
    .context("registering the recovered webhook")?;

    let ordinary_targets: Arc<Vec<Target>> = Arc::new(
        fleet
            .servers
            .iter()
            .map(|server| Target::new(&server.base, key))
            .collect(),
    );
    let before = fleet.usage()?;
    let bench_before = Usage::of("self")?;
    let measured_from = Instant::now();
    let deadline = measured_from + settings.phase_timeout;
    let started = load::recover(&client, &first, RECOVERED_TYPE, since).await?;
    let recover_answered = Instant::now();
    if started.matched != events {
        bail!(
            "the recovery matched {} events, {events} were missed",
            started.matched
        );
    }
    let ordinary = load::paced(
        &client,
        ordinary_targets,
        ORDINARY_PER_SECOND * seconds,
        Duration::from_secs(1) / u32::try_from(ORDINARY_PER_SECOND).unwrap_or(u32::MAX),
        MAX_IN_FLIGHT,
        settings.payload_bytes,
        deadline,
    );
    let watch = watch_recovery(
        &client,
        &first,
        &started.recovery_id,
        &recovered_receiver,
        events,
        recover_answered + settings.drain_timeout,
    );
    let (ordinary, watched) = tokio::join!(ordinary, watch);
    let (ordinary, watched) = (ordinary?, watched?);
    let ordinary_expecting = ordinary
        .accepted
        .iter()
        .filter(|p| p.deliveries > 0)
        .count();
    let ordinary_drained = drain(
        &ordinary_receiver,
        ordinary_expecting,
        Instant::now() + settings.drain_timeout,
    )
    .await;
    let after = fleet.usage()?;
    let metrics = fleet.scrape_metrics().await;
    let bench_after = Usage::of("self")?;
    let phase = measured_from.elapsed();
    let recovered_arrivals = recovered_receiver.arrivals();
    let ordinary_arrivals = ordinary_receiver.arrivals();
    let malformed = recovered_receiver.malformed() + ordinary_receiver.malformed();
    let servers = server_usage(&fleet, &before, &after, settings.ticks_per_second);
    let setup = fleet.setup_line();
    fleet.stop().await;

    let mut block = Block::new(format!(
        "R1 · recover {events} missed events → 1 webhook, ordinary load beside it · {}",
        settings.servers_context()
    ));
    block.line("setup", setup);
    block.line(
        "missed events published",
        format!(
            "{events} (no webhook yet) in {} = {}",
            report::secs(missed.wall()),
            report::rate(events, missed.wall())
        ),
    );
    block.line(
        "recover call",
        format!(
            "{} (matched {})",
            report::ms(recover_answered - measured_from),
            started.matched
        ),
    );
    // Every missed event promised one delivery, to the recovered webhook.
    let promised: Vec<Published> = missed
        .accepted
        .iter()
        .map(|p| Published {
            deliveries: 1,
            ..*p
        })
        .collect();
    let recovered = match_arrivals(&promised, &recovered_arrivals);
    let recovery_wall = recovered.last_arrival.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(measured_from)
    });
    block.line(
        "recovered deliveries",
        format!(
            "{} of {events} in {} = {}  (recover call → last arrival)",
            recovered.delivered,
            report::secs(recovery_wall),
            report::rate(recovered.delivered, recovery_wall)
        ),
    );
    let mut integrity = format!(
        "duplicates {}  missing {}",
        recovered.duplicates, recovered.missing
    );
    if recovered.unexpected > 0 || malformed > 0 {
        integrity.push_str(&format!(
            "  unexpected {}  malformed {malformed}",
            recovered.unexpected
        ));
    }
    if !watched.arrived {
        integrity.push_str(&format!(
            "  (stopped waiting at {} s)",
            settings.drain_timeout.as_secs()
        ));
    }
    block.line("recovered integrity", integrity);
    block.line(
        "recovery job",
        format!(
            "status {}  matched {}  queued {}  (done {} after the recover call)",
            watched.last.status,
            watched.last.matched,
            watched.last.queued,
            watched
                .done
                .map_or_else(|| "?".to_owned(), |done| report::secs(done - measured_from)),
        ),
    );

    let ordinary_matched = match_arrivals(&ordinary.accepted, &ordinary_arrivals);
    let mut calls = ordinary.call_latencies.clone();
    block.latency(
        &format!("ordinary publish call ({ORDINARY_PER_SECOND}/s for {seconds} s)"),
        Percentiles::of(&mut calls),
    );
    let mut all = ordinary_matched.since_accepted.clone();
    block.latency("ordinary e2e (202 → arrival)", Percentiles::of(&mut all));
    // The ordinary load may outlast the recovery; its figures while recovered events
    // were still arriving are the ones the recovery could colour.
    if let Some(last) = recovered.last_arrival {
        let during: Vec<Published> = ordinary
            .accepted
            .iter()
            .filter(|p| p.started < last)
            .copied()
            .collect();
        let mut during_e2e = match_arrivals(&during, &ordinary_arrivals).since_accepted;
        block.latency(
            &format!(
                "ordinary e2e while recovering ({} events)",
                during_e2e.len()
            ),
            Percentiles::of(&mut during_e2e),
        );
    }
    let mut ordinary_line = format!(
        "{} of {}  duplicates {}  missing {}",
        ordinary_matched.delivered,
        ordinary_matched.expected,
        ordinary_matched.duplicates,
        ordinary_matched.missing
    );
    if ordinary.failures > 0 {
        ordinary_line.push_str(&format!("  publish failures {}", ordinary.failures));
    }
    if !ordinary_drained {
        ordinary_line.push_str(&format!(
            "  (drain stopped at {} s)",
            settings.drain_timeout.as_secs()
        ));
    }
    block.line("ordinary delivered", ordinary_line);
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

/// What the watch of a recovery saw.
struct Watched {
    last: load::RecoveryState,
    /// When the job was first seen finished.
    done: Option<Instant>,
    /// Every recovered event reached the receiver before the deadline.
    arrived: bool,
}

/// Reads the recovery's progress until it has finished and `events` distinct events
/// reached the receiver, or `deadline` passes.
async fn watch_recovery(
    client: &reqwest::Client,
    target: &Target,
    recovery_id: &str,
    receiver: &Receiver,
    events: u64,
    deadline: Instant,
) -> anyhow::Result<Watched> {
    let mut done = None;
    loop {
        let last = load::recovery(client, target, recovery_id).await?;
        if done.is_none() && last.status != "running" {
            done = Some(Instant::now());
        }
        let arrived = receiver.distinct() as u64 >= events;
        if (done.is_some() && arrived) || Instant::now() >= deadline {
            return Ok(Watched {
                last,
                done,
                arrived,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
