//! B6, growth: B1, B2, B4 and deep paging of a busy webhook's attempts on a database
//! holding months of traffic, against the same on an empty one, in one invocation.
//!
//! Both runs have the busy webhook: project 0's `bench.b6.busy`, with 150,000
//! attempts (÷10 with `--quick`), so the paging has something to page through. The
//! grown run adds, straight into the database, 999 projects with 10,000 webhooks, and
//! 2,000,000 finished events in all with a delivery each and 6,000,000 attempts, spread
//! over the last 90 days (the servers keep everything: `--retention off`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use reqwest::header::AUTHORIZATION;
use sqlx::Connection as _;

use super::{api_calls_on, measure, Fleet, Settings, Shape};
use crate::load::{self, Target, EVENT_TYPE};
use crate::receiver::Receiver;
use crate::report::{self, Block, Percentiles};
use crate::server::Tenancy;

/// The grown database (÷10 with `--quick`).
const EVENTS: u64 = 2_000_000;
const ATTEMPTS_PER_EVENT: u64 = 3;
const WEBHOOKS: u64 = 10_000;
/// Projects besides the bench's own.
const PROJECTS: u64 = 999;
/// The busy webhook's events (three attempts each); part of [`EVENTS`].
const BUSY_EVENTS: u64 = 50_000;
const BUSY_TYPE: &str = "bench.b6.busy";
/// How far back the seeded traffic goes.
const SPAN_DAYS: i64 = 90;
/// Events (with their deliveries and attempts) per seeding transaction.
const CHUNK: u64 = 50_000;
/// Samples of each fixed page.
const PAGE_SAMPLES: usize = 200;
const PAGE: u64 = 50;
const DEEP_OFFSET: u64 = 10_000;

/// What one run measured, for the comparison.
struct Figures {
    b1_rate: f64,
    b1_p99: Option<Duration>,
    b2_p99: Option<Duration>,
    /// Server plus database CPU per delivery in B2, in milliseconds.
    b2_cpu_ms: f64,
    upsert_p99: Option<Duration>,
    list_p99: Option<Duration>,
    first_page_p99: Option<Duration>,
    deep_page_p99: Option<Duration>,
    cursor_page_p99: Option<Duration>,
    cursor_pages: u64,
}

pub(super) async fn growth(settings: &Settings) -> anyhow::Result<Block> {
    let (empty, empty_blocks) = run(settings, false).await?;
    let (grown, grown_blocks) = run(settings, true).await?;
    let events = settings.scaled(EVENTS);
    let mut block = Block::new(format!(
        "B6 · B1, B2, B4 and attempt paging on an empty database and on one with {} projects, \
         {} webhooks, {events} events and {} attempts · {}",
        settings.scaled(PROJECTS) + 1,
        settings.scaled(WEBHOOKS),
        events * ATTEMPTS_PER_EVENT,
        settings.context()
    ));
    let mut within = true;
    let mut compare = |label: &str, a: f64, b: f64, higher_is_better: bool, unit: &str| {
        let change = (b / a.max(f64::EPSILON) - 1.0) * 100.0;
        let ok = if higher_is_better {
            b >= a * 0.8
        } else {
            b <= a * 1.2
        };
        within &= ok;
        block.line(
            label,
            format!(
                "{a:.3}{unit} empty, {b:.3}{unit} grown = {change:+.1} %{}",
                if ok { "" } else { "  (past 20 %)" }
            ),
        );
    };
    let millis = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    compare("B1 deliveries/s", empty.b1_rate, grown.b1_rate, true, "");
    compare(
        "B1 e2e p99",
        millis(empty.b1_p99),
        millis(grown.b1_p99),
        false,
        " ms",
    );
    compare(
        "B2 e2e p99",
        millis(empty.b2_p99),
        millis(grown.b2_p99),
        false,
        " ms",
    );
    compare(
        "B2 CPU per event",
        empty.b2_cpu_ms,
        grown.b2_cpu_ms,
        false,
        " ms",
    );
    compare(
        "B4 upsert p99",
        millis(empty.upsert_p99),
        millis(grown.upsert_p99),
        false,
        " ms",
    );
    compare(
        "B4 list p99",
        millis(empty.list_p99),
        millis(grown.list_p99),
        false,
        " ms",
    );
    compare(
        "attempts page 1 p99",
        millis(empty.first_page_p99),
        millis(grown.first_page_p99),
        false,
        " ms",
    );
    compare(
        &format!("attempts offset {DEEP_OFFSET} p99"),
        millis(empty.deep_page_p99),
        millis(grown.deep_page_p99),
        false,
        " ms",
    );
    compare(
        &format!("cursor pages p99 ({} pages)", grown.cursor_pages),
        millis(empty.cursor_page_p99),
        millis(grown.cursor_page_p99),
        false,
        " ms",
    );
    block.line(
        "goal",
        format!(
            "every figure within 20 % of the empty run: {}",
            if within { "met" } else { "not met" }
        ),
    );
    for (prefix, blocks) in [("empty ·", empty_blocks), ("grown ·", grown_blocks)] {
        for b in blocks {
            block.append(prefix, b);
        }
    }
    Ok(block)
}

/// One fleet on one database, seeded (`grown`) or not, through every phase.
async fn run(settings: &Settings, grown: bool) -> anyhow::Result<(Figures, Vec<Block>)> {
    let mut options = settings.server.clone();
    options
        .extra
        // B4's webhooks join the bench's two, past the default limit of 1,000.
        .extend(["--retention", "off", "--max-webhooks-per-project", "2000"].map(str::to_owned));
    let fleet = Fleet::launch_with(settings, &options, 1, Tenancy::Shared).await?;
    let client = load::client()?;
    let target = Target::new(&fleet.servers[0].base, &fleet.projects[0].key);
    load::upsert_webhook(&client, &target, BUSY_TYPE, "http://127.0.0.1:9/b6").await?;
    let seeding = Instant::now();
    let rows = seed(&fleet, settings, grown).await?;
    let mut blocks = Vec::new();
    let mut seeded = Block::new("seed");
    seeded.line(
        "seeded",
        format!(
            "{rows} rows in {} = {}",
            report::secs(seeding.elapsed()),
            report::rate(rows, seeding.elapsed())
        ),
    );
    blocks.push(seeded);

    let events = settings.scaled(20_000);
    let receiver = receiving(settings, &client, &target).await?;
    let title = format!("B1 · {events} events");
    let (b1_block, b1) = measure(
        settings,
        &fleet,
        &client,
        &receiver,
        Shape::Closed { events },
        title,
    )
    .await?;
    drop(receiver);
    blocks.push(b1_block);
    let seconds = settings.scaled(30);
    let receiver = receiving(settings, &client, &target).await?;
    let title = format!("B2 · 200 events/s for {seconds} s");
    let (b2_block, b2) = measure(
        settings,
        &fleet,
        &client,
        &receiver,
        Shape::Paced {
            per_second: 200,
            seconds,
        },
        title,
    )
    .await?;
    drop(receiver);
    blocks.push(b2_block);
    // The bench's two webhooks are there already.
    let (b4_block, b4) = api_calls_on(settings, &fleet, settings.scaled(1_000), 2).await?;
    blocks.push(b4_block);
    let (paging_block, paging) = paging(&client, &target).await?;
    blocks.push(paging_block);
    fleet.stop().await;
    Ok((
        Figures {
            b1_rate: b1.rate,
            b1_p99: b1.p99,
            b2_p99: b2.p99,
            b2_cpu_ms: b2.cpu_ms,
            upsert_p99: b4.upsert_p99,
            list_p99: b4.list_p99,
            first_page_p99: paging.first.map(|p| p.p99),
            deep_page_p99: paging.deep.map(|p| p.p99),
            cursor_page_p99: paging.cursor.map(|p| p.p99),
            cursor_pages: paging.pages,
        },
        blocks,
    ))
}

/// A fresh receiver, which the bench's webhook now points at: each phase counts only
/// its own deliveries.
async fn receiving(
    settings: &Settings,
    client: &reqwest::Client,
    target: &Target,
) -> anyhow::Result<Receiver> {
    let receiver = Receiver::start(settings.receiver_delay).await?;
    load::upsert_webhook(client, target, EVENT_TYPE, &receiver.url("p0")).await?;
    Ok(receiver)
}

struct Paging {
    first: Option<Percentiles>,
    deep: Option<Percentiles>,
    cursor: Option<Percentiles>,
    pages: u64,
}

/// One page of the busy webhook's attempts: how long it took, its cursor onwards.
async fn page(
    client: &reqwest::Client,
    target: &Target,
    query: &str,
) -> anyhow::Result<(Duration, Option<String>, usize)> {
    let started = Instant::now();
    let response = client
        .get(format!(
            "{}/api/v1/webhooks/{BUSY_TYPE}/attempts?{query}",
            target.base
        ))
        .header(AUTHORIZATION, &target.auth)
        .send()
        .await
        .context("listing attempts")?;
    let status = response.status();
    let body = response.bytes().await.context("reading attempts")?;
    let elapsed = started.elapsed();
    if !status.is_success() {
        bail!("attempts answered {status}");
    }
    let answer: serde_json::Value = serde_json::from_slice(&body).context("attempts JSON")?;
    let listed = answer["attempts"].as_array().map_or(0, Vec::len);
    let next = answer["next_cursor"].as_str().map(str::to_owned);
    Ok((elapsed, next, listed))
}

/// `attempts?limit=50` at offset 0 and at offset 10,000, then every page by cursor.
async fn paging(client: &reqwest::Client, target: &Target) -> anyhow::Result<(Block, Paging)> {
    let mut first = Vec::with_capacity(PAGE_SAMPLES);
    let mut deep = Vec::with_capacity(PAGE_SAMPLES);
    for _ in 0..PAGE_SAMPLES {
        first.push(page(client, target, &format!("limit={PAGE}")).await?.0);
        let (elapsed, _, listed) = page(
            client,
            target,
            &format!("limit={PAGE}&offset={DEEP_OFFSET}"),
        )
        .await?;
        if listed == 0 {
            bail!("no attempts at offset {DEEP_OFFSET}");
        }
        deep.push(elapsed);
    }
    let mut cursor_pages = Vec::new();
    let mut listed_total = 0usize;
    let mut query = format!("limit={PAGE}");
    let started = Instant::now();
    loop {
        let (elapsed, next, listed) = page(client, target, &query).await?;
        cursor_pages.push(elapsed);
        listed_total += listed;
        match next {
            Some(cursor) => query = format!("limit={PAGE}&cursor={cursor}"),
            None => break,
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("cursor paging did not reach the end within 600 s");
        }
    }
    let wall = started.elapsed();
    let paging = Paging {
        first: Percentiles::of(&mut first),
        deep: Percentiles::of(&mut deep),
        cursor: Percentiles::of(&mut cursor_pages),
        pages: cursor_pages.len() as u64,
    };
    let mut block = Block::new("paging");
    block.latency(&format!("attempts?limit={PAGE}"), paging.first);
    block.latency(&format!("offset {DEEP_OFFSET}"), paging.deep);
    block.latency(
        &format!(
            "cursor to the end ({} pages, {listed_total} attempts, {})",
            paging.pages,
            report::secs(wall)
        ),
        paging.cursor,
    );
    Ok((block, paging))
}

/// How each database spells the seeding statements.
struct Sql {
    postgres: bool,
}

impl Sql {
    /// A UUIDv7-shaped id: the millisecond `millis`, `7`, 3 hex digits `mid`, `8000`,
    /// then `n` in 12 hex digits.
    fn id(&self, millis: &str, mid: &str, n: &str) -> String {
        if self.postgres {
            format!(
                "(lpad(to_hex({millis}), 12, '0') || '7' || {mid} || '8000' || \
                 lpad(to_hex({n}), 12, '0'))::uuid"
            )
        } else {
            format!(
                "unhex(printf('%012X', {millis}) || '7' || {mid} || '8000' || printf('%012X', {n}))"
            )
        }
    }

    /// 3 hex digits of a small number.
    fn hex3(&self, n: &str) -> String {
        if self.postgres {
            format!("lpad(to_hex({n}), 3, '0')")
        } else {
            format!("printf('%03X', {n})")
        }
    }

    /// The instant `micros` microseconds after the epoch.
    fn at(&self, micros: &str) -> String {
        if self.postgres {
            format!("to_timestamp(({micros})::float8 / 1000000)")
        } else {
            format!("({micros})")
        }
    }

    /// `INSERT INTO ... SELECT <select> FROM <the numbers from..to as n>`.
    fn insert(&self, into: &str, select: &str, from: u64, to: u64) -> String {
        if self.postgres {
            format!(
                "INSERT INTO {into} SELECT {select} FROM generate_series({from}::int8, {}::int8) n",
                to - 1
            )
        } else {
            format!(
                "WITH RECURSIVE g(n) AS (SELECT {from} UNION ALL SELECT n + 1 FROM g WHERE n + 1 < {to}) \
                 INSERT INTO {into} SELECT {select} FROM g"
            )
        }
    }

    fn body(&self) -> &'static str {
        if self.postgres {
            "decode(repeat('78', 300), 'hex')"
        } else {
            "zeroblob(300)"
        }
    }
}

/// Seeds the busy webhook's traffic and, when `grown`, everything else; returns the
/// rows written.
async fn seed(fleet: &Fleet, settings: &Settings, grown: bool) -> anyhow::Result<u64> {
    let sql = Sql {
        postgres: !fleet.db.is_embedded(),
    };
    let project = uuid::Uuid::parse_str(&fleet.projects[0].project_id).context("project id")?;
    let now = chrono::Utc::now().timestamp_micros();
    let span = SPAN_DAYS * 86_400_000_000;
    let busy = settings.scaled(BUSY_EVENTS);
    let events = if grown { settings.scaled(EVENTS) } else { busy };
    let webhooks = settings.scaled(WEBHOOKS);
    let projects = settings.scaled(PROJECTS);
    let start = now - span;
    // Event n happens at start + n * step; the busy webhook's are the first `busy`.
    let step = span / i64::try_from(events).unwrap_or(i64::MAX).max(1);
    let base = start / 1000;
    let tenant_id = sql.id(&base.to_string(), "'B00'", "0");
    let project_id = |p: &str| sql.id(&base.to_string(), "'B01'", p);
    // Event e happens at start + e * step. Events `0..busy` are the busy webhook's (in
    // project 0, bound as $1); the rest go round the seeded webhooks: webhook k is in
    // project k % projects, of event type b6.e<k / projects>.
    let time = |e: &str| format!("({start} + {e} * {step})");
    let webhook_of = |e: &str| format!("(({e} - {busy}) % {webhooks})");
    let event_id = |e: &str| sql.id(&format!("({} / 1000)", time(e)), "'001'", e);
    let project_of = |e: &str| {
        format!(
            "CASE WHEN {e} < {busy} THEN $1 ELSE {} END",
            project_id(&format!("({} % {projects})", webhook_of(e)))
        )
    };
    let type_of = |e: &str| {
        format!(
            "CASE WHEN {e} < {busy} THEN '{BUSY_TYPE}' ELSE 'b6.e' || ({} / {projects}) END",
            webhook_of(e)
        )
    };
    let webhook_id = |e: &str| {
        format!(
            "CASE WHEN {e} < {busy} THEN {} ELSE {} END",
            sql.id(&base.to_string(), "'B03'", "0"),
            sql.id(&base.to_string(), "'B02'", &webhook_of(e))
        )
    };
    let mut rows = 0u64;

    let mut statements = Vec::new();
    if grown {
        statements.push(format!(
            "INSERT INTO tenants (id, name, created_at) VALUES ({}, 'b6', {})",
            tenant_id,
            sql.at(&start.to_string())
        ));
        statements.push(sql.insert(
            "projects (id, tenant_id, name, created_at)",
            &format!(
                "{}, {}, 'b6-' || n, {}",
                project_id("n"),
                tenant_id,
                sql.at(&start.to_string())
            ),
            0,
            projects,
        ));
        // Webhook k: project k % projects, event type b6.e<k / projects>.
        statements.push(sql.insert(
            "webhooks (id, project_id, event_type, webhook_url, signing_secret, created_at, updated_at)",
            &format!(
                "{}, {}, 'b6.e' || (n / {projects}), 'http://127.0.0.1:9/b6', \
                 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', {at}, {at}",
                sql.id(&base.to_string(), "'B02'", "n"),
                project_id(&format!("(n % {projects})")),
                at = sql.at(&start.to_string())
            ),
            0,
            webhooks,
        ));
        rows += 1 + projects + webhooks;
    }
    let mut conn = Conn::open(fleet).await?;
    for statement in &statements {
        conn.execute(statement, project).await?;
    }
    for from in (0..events).step_by(CHUNK as usize) {
        let to = (from + CHUNK).min(events);
        let per = ATTEMPTS_PER_EVENT;
        // Attempt m is try m % per of event m / per; the last try of nine events in
        // ten succeeds.
        let e = format!("(n / {per})");
        let succeeded = format!("n % {per} = {} AND {e} % 10 <> 0", per - 1);
        let attempt_at = format!("({} + (n % {per}) * 1000)", time(&e));
        let chunk = [
            sql.insert(
                "events (id, project_id, event_type, data, created_at)",
                &format!(
                    "{}, {}, {}, '{{\"n\": ' || n || '}}', {}",
                    event_id("n"),
                    project_of("n"),
                    type_of("n"),
                    sql.at(&time("n"))
                ),
                from,
                to,
            ),
            sql.insert(
                "deliveries (id, event_id, webhook_id, project_id, event_type, status, \
                 attempts_made, next_attempt_at, created_at, updated_at)",
                &format!(
                    "{id}, {id}, {}, {}, {}, \
                     CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'succeeded' END, \
                     {per}, {at}, {at}, {at}",
                    webhook_id("n"),
                    project_of("n"),
                    type_of("n"),
                    id = event_id("n"),
                    at = sql.at(&time("n"))
                ),
                from,
                to,
            ),
            sql.insert(
                "attempts (id, delivery_id, event_id, project_id, event_type, webhook_url, \
                 response_code, duration_ms, attempt_number, status, request_body, \
                 response_body, error_message, created_at)",
                &format!(
                    "{}, {event}, {event}, {}, {}, 'http://127.0.0.1:9/b6', \
                     CASE WHEN {succeeded} THEN 200 ELSE 500 END, 3, n % {per} + 1, \
                     CASE WHEN {succeeded} THEN 'success' ELSE 'failed' END, \
                     {}, NULL, NULL, {}",
                    sql.id(
                        &format!("({attempt_at} / 1000)"),
                        &sql.hex3(&format!("n % {per}")),
                        "n"
                    ),
                    project_of(&e),
                    type_of(&e),
                    sql.body(),
                    sql.at(&attempt_at),
                    event = event_id(&e),
                ),
                from * per,
                to * per,
            ),
        ];
        conn.chunk(&chunk, project).await?;
        rows += (to - from) * (2 + ATTEMPTS_PER_EVENT);
    }
    conn.analyze().await?;
    Ok(rows)
}

/// A connection to the fleet's database, either kind.
enum Conn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Conn {
    async fn open(fleet: &Fleet) -> anyhow::Result<Conn> {
        Ok(if fleet.db.is_embedded() {
            Conn::Sqlite(
                sqlx::SqliteConnection::connect(fleet.db.url())
                    .await
                    .context("opening the SQLite database")?,
            )
        } else {
            Conn::Postgres(
                sqlx::PgConnection::connect(fleet.db.url())
                    .await
                    .context("connecting to PostgreSQL")?,
            )
        })
    }

    async fn execute(&mut self, statement: &str, project: uuid::Uuid) -> anyhow::Result<()> {
        let bind_project = statement.contains("$1");
        match self {
            Conn::Sqlite(c) => {
                let mut q = sqlx::query(statement);
                if bind_project {
                    q = q.bind(project);
                }
                q.execute(&mut *c).await.map(drop)
            }
            Conn::Postgres(c) => {
                let mut q = sqlx::query(statement);
                if bind_project {
                    q = q.bind(project);
                }
                q.execute(&mut *c).await.map(drop)
            }
        }
        .with_context(|| format!("seeding: {}", &statement[..statement.len().min(120)]))
    }

    /// The statements of one chunk in one transaction.
    async fn chunk(&mut self, statements: &[String], project: uuid::Uuid) -> anyhow::Result<()> {
        self.execute("BEGIN", project).await?;
        for statement in statements {
            self.execute(statement, project).await?;
        }
        self.execute("COMMIT", project).await
    }

    /// Fresh planner statistics, as a database that grew this big would have, and
    /// the upkeep it has had: a vacuum on PostgreSQL (otherwise autovacuum takes on the
    /// freshly inserted millions of rows in the middle of the measurements) and a
    /// checkpoint on both, so the measurements do not pay for writing out gigabytes
    /// that a database grown over months wrote out long ago.
    async fn analyze(&mut self) -> anyhow::Result<()> {
        match self {
            Conn::Sqlite(_) => {
                self.execute("ANALYZE", uuid::Uuid::nil()).await?;
                self.execute("PRAGMA wal_checkpoint(TRUNCATE)", uuid::Uuid::nil())
                    .await
            }
            // VACUUM refuses a prepared statement's implicit transaction, and any
            // other statement in the same string.
            Conn::Postgres(c) => {
                for statement in ["VACUUM ANALYZE", "CHECKPOINT"] {
                    sqlx::raw_sql(statement)
                        .execute(&mut *c)
                        .await
                        .with_context(|| format!("seeding: {statement}"))?;
                }
                Ok(())
            }
        }
    }
}
