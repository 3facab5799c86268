//! P1, retention under load: B1 on servers whose retention is purging a backlog of
//! old attempts (with their deliveries and events), against B1 without one in the
//! same invocation. The backlog is seeded straight into the database, back-dated two
//! days, with the UUIDv7 ids the server would have given the rows then; the servers
//! keep one day, so every seeded row is past the horizon.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sqlx::Connection as _;

use super::{deliveries_with, Fleet, Settings, Shape};
use crate::report::{self, Block};

/// Attempts in the backlog (÷10 with `--quick`), ten per delivery, one delivery per
/// event.
const BACKLOG_ATTEMPTS: u64 = 1_000_000;
const ATTEMPTS_PER_DELIVERY: u64 = 10;
/// Deliveries (and events) per seeding transaction, with their attempts: the
/// database is never locked for long.
const SEED_CHUNK: u64 = 10_000;
/// B1's size (÷10 with `--quick`).
const EVENTS: u64 = 20_000;
/// Longest wait for the purge to start, and to finish after B1.
const START_WAIT: Duration = Duration::from_secs(60);
const FINISH_WAIT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(100);

pub(super) async fn b1_while_purging(settings: &Settings) -> anyhow::Result<Block> {
    let events = settings.scaled(EVENTS);
    let attempts = settings.scaled(BACKLOG_ATTEMPTS);
    let b1 = |what: &str| format!("B1 · {events} events → 1 webhook · {what}");
    let (plain_block, plain) = deliveries_with(
        settings,
        &settings.server,
        b1("no purge"),
        1,
        Shape::Closed { events },
        None,
    )
    .await?;
    let mut options = settings.server.clone();
    options
        .extra
        .extend(["--retention", "1d", "--retention-every", "1s"].map(str::to_owned));
    let backlog = Backlog { attempts };
    let (purging_block, purging) = deliveries_with(
        settings,
        &options,
        b1("while purging"),
        1,
        Shape::Closed { events },
        Some(&backlog),
    )
    .await?;

    let mut block = Block::new(format!(
        "P1 · B1 ({events} events) while retention purges {attempts} old attempts · {}",
        settings.context()
    ));
    block.line(
        "deliveries/s",
        format!(
            "{:.1} without purge, {:.1} while purging = {:+.1} %",
            plain.rate,
            purging.rate,
            (purging.rate / plain.rate - 1.0) * 100.0
        ),
    );
    if let (Some(a), Some(b)) = (plain.p99, purging.p99) {
        block.line(
            "e2e p99",
            format!(
                "{} without purge, {} while purging = {:+.1} %",
                report::ms(a),
                report::ms(b),
                (b.as_secs_f64() / a.as_secs_f64() - 1.0) * 100.0
            ),
        );
    }
    let within = purging.rate >= plain.rate * 0.8
        && matches!((plain.p99, purging.p99), (Some(a), Some(b)) if b.as_secs_f64() <= a.as_secs_f64() * 1.2);
    block.line(
        "goal",
        format!(
            "deliveries/s and p99 within 20 % of B1 without purge: {}",
            if within { "met" } else { "not met" }
        ),
    );
    block.append("without purge ·", plain_block);
    block.append("while purging ·", purging_block);
    Ok(block)
}

/// Old rows to seed for retention.
pub(super) struct Backlog {
    attempts: u64,
}

/// A purge under way.
pub(super) struct Purging {
    /// Rows seeded (attempts, deliveries and events).
    expected: u64,
    /// When seeding ended and the purge was seen under way.
    started: Instant,
    /// Rows already purged then (retention starts on the first chunks while the
    /// later ones are seeded); the rate counts only what went after.
    before: u64,
}

/// What the purge did by the end.
pub(super) struct Purged {
    expected: u64,
    /// Purged before the rate's clock started.
    before: u64,
    by_table: [(String, u64); 3],
    wall: Duration,
    finished: bool,
}

impl Backlog {
    /// Seeds the backlog into the fleet's database and waits until retention is
    /// deleting it.
    pub(super) async fn seed(
        &self,
        fleet: &Fleet,
        client: &reqwest::Client,
    ) -> anyhow::Result<Purging> {
        let project = &fleet.projects[0].project_id;
        let seeding = Instant::now();
        let expected = if fleet.db.is_embedded() {
            seed_sqlite(fleet.db.url(), project, self.attempts).await?
        } else {
            seed_postgres(fleet.db.url(), project, self.attempts).await?
        };
        eprintln!(
            "P1: seeded {expected} old rows in {}",
            report::secs(seeding.elapsed())
        );
        let deadline = Instant::now() + START_WAIT;
        loop {
            let purged: u64 = purged(fleet, client).await?.iter().map(|(_, n)| n).sum();
            if purged > 0 {
                return Ok(Purging {
                    expected,
                    started: Instant::now(),
                    before: purged,
                });
            }
            if Instant::now() >= deadline {
                bail!("retention had not started purging {START_WAIT:?} after seeding");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the whole backlog is purged (or the wait runs out).
    pub(super) async fn finish(
        &self,
        fleet: &Fleet,
        client: &reqwest::Client,
        purging: Purging,
    ) -> anyhow::Result<Purged> {
        let deadline = Instant::now() + FINISH_WAIT;
        loop {
            let by_table = purged(fleet, client).await?;
            let total: u64 = by_table.iter().map(|(_, n)| n).sum();
            let finished = total >= purging.expected;
            if finished || Instant::now() >= deadline {
                return Ok(Purged {
                    expected: purging.expected,
                    before: purging.before,
                    by_table,
                    wall: purging.started.elapsed(),
                    finished,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Purged {
    pub(super) fn report(&self, block: &mut Block) {
        let total: u64 = self.by_table.iter().map(|(_, n)| n).sum();
        let tables = self
            .by_table
            .iter()
            .map(|(table, n)| format!("{table} {n}"))
            .collect::<Vec<_>>()
            .join(" · ");
        block.line(
            "retention purged",
            format!(
                "{total} of {} rows ({tables}){}",
                self.expected,
                if self.finished {
                    ""
                } else {
                    "  (stopped waiting)"
                }
            ),
        );
        let after = total.saturating_sub(self.before);
        block.line(
            "purge rate",
            format!(
                "{after} rows in {} = {}  (from the end of seeding, {} purged before)",
                report::secs(self.wall),
                report::rate(after, self.wall),
                self.before
            ),
        );
    }
}

/// `sonzai_retention_purged_total` of the attempts, deliveries and events tables,
/// summed over the servers.
async fn purged(fleet: &Fleet, client: &reqwest::Client) -> anyhow::Result<[(String, u64); 3]> {
    let mut totals = ["attempts", "deliveries", "events"].map(|t| (t.to_owned(), 0u64));
    for server in &fleet.servers {
        let text = client
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .context("scraping /metrics")?
            .text()
            .await
            .context("reading /metrics")?;
        for (table, total) in &mut totals {
            let prefix = format!("sonzai_retention_purged_total{{table=\"{table}\"}} ");
            if let Some(value) = text.lines().find_map(|l| l.strip_prefix(&prefix)) {
                *total += value.trim().parse::<f64>().unwrap_or(0.0) as u64;
            }
        }
    }
    Ok(totals)
}

/// Two days ago, in milliseconds since the epoch: every seeded row is this old (plus
/// its number in milliseconds).
fn old_millis() -> i64 {
    (chrono::Utc::now() - chrono::Duration::days(2)).timestamp_millis()
}

/// Seeds `attempts` attempts, a tenth as many deliveries and events; returns the
/// rows seeded. Ids are UUIDv7 strings of 32 hex digits: the millisecond, then `7`,
/// 3 digits, `8`, 3 digits, and the row number.
async fn seed_sqlite(url: &str, project: &str, attempts: u64) -> anyhow::Result<u64> {
    let mut conn = sqlx::SqliteConnection::connect(url)
        .await
        .context("opening the SQLite database")?;
    let project = uuid::Uuid::parse_str(project).context("project id")?;
    let base = old_millis();
    let per = ATTEMPTS_PER_DELIVERY;
    let deliveries = attempts.div_ceil(per);
    let id = |millis: &str, mid: &str, n: &str| {
        format!(
            "unhex(printf('%012X', {millis}) || '7' || {mid} || '8000' || printf('%012X', {n}))"
        )
    };
    // The event and delivery of number n share an id (in different tables).
    let row_id = id("?2 + n", "'000'", "n");
    let delivery_of = id(&format!("?2 + n / {per}"), "'000'", &format!("n / {per}"));
    let attempt_id = id(
        &format!("?2 + n / {per}"),
        &format!("printf('%03X', n % {per})"),
        "n",
    );
    let series = |from: u64, to: u64| {
        format!("WITH RECURSIVE g(n) AS (SELECT {from} UNION ALL SELECT n + 1 FROM g WHERE n + 1 < {to})")
    };
    for from in (0..deliveries).step_by(SEED_CHUNK as usize) {
        let to = (from + SEED_CHUNK).min(deliveries);
        // One transaction per chunk: retention, already running, must never see an
        // event without its delivery or a delivery without its attempts.
        let mut tx = conn.begin().await.context("seeding")?;
        sqlx::query(&format!(
            "{} INSERT INTO events (id, project_id, event_type, data, created_at) \
             SELECT {row_id}, ?1, 'bench.old', '{{\"n\": ' || n || '}}', (?2 + n) * 1000 FROM g",
            series(from, to)
        ))
        .bind(project)
        .bind(base)
        .execute(&mut *tx)
        .await
        .context("seeding events")?;
        sqlx::query(&format!(
            "{} INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, \
                 status, attempts_made, next_attempt_at, created_at, updated_at) \
             SELECT {row_id}, {row_id}, randomblob(16), ?1, 'bench.old', 'succeeded', {per}, \
                 (?2 + n) * 1000, (?2 + n) * 1000, (?2 + n) * 1000 FROM g",
            series(from, to)
        ))
        .bind(project)
        .bind(base)
        .execute(&mut *tx)
        .await
        .context("seeding deliveries")?;
        sqlx::query(&format!(
            "{} INSERT INTO attempts (id, delivery_id, event_id, project_id, event_type, \
                 webhook_url, response_code, duration_ms, attempt_number, status, request_body, \
                 response_body, error_message, created_at) \
             SELECT {attempt_id}, {delivery_of}, {delivery_of}, ?1, 'bench.old', \
                 'http://127.0.0.1:9/old', 500, 3, n % {per} + 1, 'failed', zeroblob(300), \
                 'upstream unavailable', NULL, (?2 + n / {per}) * 1000 FROM g",
            series(from * per, (to * per).min(attempts))
        ))
        .bind(project)
        .bind(base)
        .execute(&mut *tx)
        .await
        .context("seeding attempts")?;
        tx.commit().await.context("seeding")?;
    }
    conn.close().await.ok();
    Ok(attempts + 2 * deliveries)
}

/// Like [`seed_sqlite`], on PostgreSQL.
async fn seed_postgres(url: &str, project: &str, attempts: u64) -> anyhow::Result<u64> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    let project = uuid::Uuid::parse_str(project).context("project id")?;
    let base = old_millis();
    let per = ATTEMPTS_PER_DELIVERY;
    let deliveries = attempts.div_ceil(per);
    let id = |millis: &str, mid: &str, n: &str| {
        format!("(lpad(to_hex({millis}), 12, '0') || '7' || {mid} || '8000' || lpad(to_hex({n}), 12, '0'))::uuid")
    };
    let row_id = id("$2 + n", "'000'", "n");
    let delivery_of = id(&format!("$2 + n / {per}"), "'000'", &format!("n / {per}"));
    let attempt_id = id(
        &format!("$2 + n / {per}"),
        &format!("lpad(to_hex(n % {per}), 3, '0')"),
        "n",
    );
    let at = |millis: &str| format!("to_timestamp(({millis})::float8 / 1000)");
    let (row_at, attempt_at) = (at("$2 + n"), at(&format!("$2 + n / {per}")));
    let series =
        |from: u64, to: u64| format!("FROM generate_series({from}::int8, {}::int8) n", to - 1);
    for from in (0..deliveries).step_by(SEED_CHUNK as usize) {
        let to = (from + SEED_CHUNK).min(deliveries);
        // One transaction per chunk, as on SQLite.
        let mut tx = conn.begin().await.context("seeding")?;
        sqlx::query(&format!(
            "INSERT INTO events (id, project_id, event_type, data, created_at) \
             SELECT {row_id}, $1, 'bench.old', '{{\"n\": ' || n || '}}', {row_at} {}",
            series(from, to)
        ))
        .bind(project)
        .bind(base)
        .execute(&mut *tx)
        .await
        .context("seeding events")?;
        sqlx::query(&format!(
            "INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, status, \
                 attempts_made, next_attempt_at, created_at, updated_at) \
             SELECT {row_id}, {row_id}, gen_random_uuid(), $1, 'bench.old', 'succeeded', {per}, \
                 {row_at}, {row_at}, {row_at} {}",
            series(from, to)
        ))
        .bind(project)
        .bind(base)
        .execute(&mut *tx)
        .await
        .context("seeding deliveries")?;
        sqlx::query(&format!(
            "INSERT INTO attempts (id, delivery_id, event_id, project_id, event_type, webhook_url, \
                 response_code, duration_ms, attempt_number, status, request_body, response_body, \
                 error_message, created_at) \
             SELECT {attempt_id}, {delivery_of}, {delivery_of}, $1, 'bench.old', \
                 'http://127.0.0.1:9/old', 500, 3, n % {per} + 1, 'failed', \
                 convert_to(repeat('x', 300), 'UTF8'), 'upstream unavailable', NULL, {attempt_at} {}",
            series(from * per, (to * per).min(attempts))
        ))
        .bind(project)
        .bind(base)
        .execute(&mut *tx)
        .await
        .context("seeding attempts")?;
        tx.commit().await.context("seeding")?;
    }
    conn.close().await.ok();
    Ok(attempts + 2 * deliveries)
}
