//! An ordered webhook's queue held out of the due range behind its head
//! (store/held.rs), on both backends.

use sqlx::{PgPool, SqlitePool};

use super::super::held::held;
use super::*;

/// A second, plain connection to a case's database, to look at what the store API
/// does not show: when each delivery is due.
enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Raw {
    async fn open(db: &TestDb) -> Raw {
        match &db.backend {
            Backend::Sqlite { url, .. } => {
                Raw::Sqlite(SqlitePool::connect(url).await.expect("sqlite"))
            }
            Backend::Postgres { options, .. } => Raw::Postgres(
                PgPool::connect_with((**options).clone())
                    .await
                    .expect("postgres"),
            ),
        }
    }

    /// Runs `sql` with `$1` the webhook and `$2` an instant; the count it selects,
    /// or the rows it changed.
    async fn run(&self, sql: &str, webhook: Uuid, at: DateTime<Utc>) -> i64 {
        match self {
            Raw::Sqlite(pool) => run_on(pool, sql, webhook, at).await,
            Raw::Postgres(pool) => run_on(pool, sql, webhook, at).await,
        }
    }

    /// Of `webhook`'s pending deliveries: (due now, held).
    async fn due_and_held(&self, webhook: Uuid) -> (i64, i64) {
        let due = self
            .run(
                "SELECT count(*) FROM deliveries WHERE webhook_id = $1 \
                 AND status = 'pending' AND next_attempt_at <= $2",
                webhook,
                now_micros(),
            )
            .await;
        let held = self
            .run(
                "SELECT count(*) FROM deliveries WHERE webhook_id = $1 \
                 AND status = 'pending' AND next_attempt_at >= $2",
                webhook,
                held(),
            )
            .await;
        (due, held)
    }
}

async fn run_on<DB>(pool: &sqlx::Pool<DB>, sql: &str, webhook: Uuid, at: DateTime<Utc>) -> i64
where
    DB: common::Dialect,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    Uuid: common::Column<DB>,
    Micros: common::Column<DB>,
    i64: common::Column<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    if sql.trim_start().starts_with("SELECT") {
        let q = sqlx::query_scalar::<_, i64>(sql)
            .bind(webhook)
            .bind(Micros(at));
        q.fetch_one(pool).await.expect(sql)
    } else {
        let q = sqlx::query(sql).bind(webhook).bind(Micros(at));
        let done = q.execute(pool).await.expect(sql);
        i64::try_from(DB::rows_affected(&done)).unwrap_or(i64::MAX)
    }
}

async fn upsert_ordered(store: &dyn WebhookStore, project_id: Uuid, ordered: bool) -> Webhook {
    let secret = SigningSecret::generate();
    store
        .upsert_webhook(UpsertWebhook {
            rate_limit: None,
            ordered,
            project_id,
            event_type: "ordered.thing",
            webhook_url: "http://127.0.0.1:9/ordered",
            auth_header: None,
            new_secret: &secret,
            max_webhooks: NO_WEBHOOK_LIMIT,
        })
        .await
        .expect("upsert")
        .webhook()
        .clone()
}

/// Claims the one delivery that may go and records `status` for it.
async fn deliver_next(store: &dyn WebhookStore, status: AttemptStatus) -> ClaimedDelivery {
    let claim = claim_one(store).await;
    let retry = (status == AttemptStatus::Failed).then(now_micros);
    record(
        store,
        &[outcome(&claim, status, now_micros(), retry)],
        NEVER_DISABLE,
    )
    .await;
    claim
}

async fn an_ordered_queue_is_held_behind_its_head_and_woken_in_turn(db: Arc<TestDb>) {
    let s = db.store.as_ref();
    let raw = Raw::open(&db).await;
    let project = new_project(s).await;
    let webhook = upsert_ordered(s, project.id, true).await;

    // Five keyless publishes (the group commit's batch) and one with a key (the
    // single-publish path): the first is the head, the rest are held.
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(publish(s, project.id, "ordered.thing").await.event_id);
    }
    let keyed = publish_with(
        s,
        project.id,
        "ordered.thing",
        "{}",
        Some("k-1"),
        long_ago(),
    )
    .await;
    events.push(keyed.event_id);
    assert_eq!(raw.due_and_held(webhook.id).await, (1, 5));
    assert_eq!(
        s.next_due()
            .await
            .expect("next due")
            .map(|t| t <= now_micros()),
        Some(true)
    );

    // A success wakes the next one; a failure keeps the head, due at its retry.
    let first = deliver_next(s, AttemptStatus::Success).await;
    assert_eq!(first.event_id, events[0]);
    assert_eq!(raw.due_and_held(webhook.id).await, (1, 4));
    let second = deliver_next(s, AttemptStatus::Failed).await;
    assert_eq!(second.event_id, events[1]);
    assert_eq!(raw.due_and_held(webhook.id).await, (1, 4));

    // A resent earlier event goes in ahead of the head: due, not held.
    match s
        .resend_event(project.id, "ordered.thing", events[0])
        .await
        .expect("resend")
    {
        ResendOutcome::Queued { .. } => {}
        other => panic!("resend: {other:?}"),
    }
    assert_eq!(raw.due_and_held(webhook.id).await, (2, 4));
    let resent = deliver_next(s, AttemptStatus::Success).await;
    assert_eq!(resent.event_id, events[0], "the resent event goes first");
    assert_eq!(raw.due_and_held(webhook.id).await, (1, 4));

    // Ordering off: nothing is held. On again: all but the head, which is the
    // delivery already tried (it keeps its retry time).
    upsert_ordered(s, project.id, false).await;
    assert_eq!(raw.due_and_held(webhook.id).await, (5, 0));
    upsert_ordered(s, project.id, true).await;
    assert_eq!(raw.due_and_held(webhook.id).await, (1, 4));

    // A head left held (a process stopped between a commit and its wake) is found
    // by the sweep, and only then.
    assert_eq!(s.wake_held(true).await.expect("sweep"), 0);
    let head_held = raw
        .run(
            "UPDATE deliveries SET next_attempt_at = $2 WHERE webhook_id = $1 \
             AND status = 'pending' AND next_attempt_at < $2",
            webhook.id,
            held(),
        )
        .await;
    assert_eq!(head_held, 1);
    assert!(s.claim_due(10, LEASE).await.expect("claim").is_empty());
    assert_eq!(s.next_due().await.expect("next due"), None);
    assert_eq!(s.wake_held(false).await.expect("sweep"), 1);

    // The rest go one by one, in publish order.
    let mut order = vec![second.event_id];
    let last = deliver_next(s, AttemptStatus::Success).await;
    assert_eq!(last.event_id, second.event_id);
    for _ in 0..4 {
        order.push(deliver_next(s, AttemptStatus::Success).await.event_id);
    }
    assert_eq!(order, events[1..].to_vec());
    assert_eq!(raw.due_and_held(webhook.id).await, (0, 0));
    assert_eq!(pending(s).await, 0);
}

/// Publishes from several tasks race with a deliverer finishing heads as fast as it
/// can: every delivery still goes, without the sweep (which a
/// head left held would need).
async fn racing_publishes_and_outcomes_leave_no_head_held(db: Arc<TestDb>) {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 60;
    let store = db.store.clone();
    let project = new_project(store.as_ref()).await;
    upsert_ordered(store.as_ref(), project.id, true).await;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..EACH {
                    publish(store.as_ref(), project.id, "ordered.thing").await;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut delivered: Vec<Uuid> = Vec::new();
    let mut idle_since = tokio::time::Instant::now();
    while delivered.len() < PUBLISHERS * EACH {
        let claims = store.claim_due(10, LEASE).await.expect("claim");
        if claims.is_empty() {
            assert!(
                idle_since.elapsed() < Duration::from_secs(10),
                "nothing claimable for 10 s with {} of {} delivered: a head is held",
                delivered.len(),
                PUBLISHERS * EACH
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        idle_since = tokio::time::Instant::now();
        assert_eq!(claims.len(), 1, "an ordered webhook goes one at a time");
        let outcomes: Vec<DeliveryOutcome> = claims
            .iter()
            .map(|c| outcome(c, AttemptStatus::Success, now_micros(), None))
            .collect();
        record(store.as_ref(), &outcomes, NEVER_DISABLE).await;
        delivered.extend(claims.iter().map(|c| c.event_id));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    // (Not in event order: a publish can take its event id before another and commit
    // after it.)
    let distinct: HashSet<Uuid> = delivered.iter().copied().collect();
    assert_eq!(distinct.len(), PUBLISHERS * EACH, "each delivered once");
    assert_eq!(pending(store.as_ref()).await, 0);
}

/// Publishes committed together (the group commit's batch) to an ordered webhook:
/// one head, the rest held, and they go in the order they were published.
async fn a_batch_of_publishes_goes_in_publish_order(db: Arc<TestDb>) {
    const EVENTS: usize = 12;
    let s = db.store.as_ref();
    let raw = Raw::open(&db).await;
    let project = new_project(s).await;
    let webhook = upsert_ordered(s, project.id, true).await;
    // Queued in this order at their first poll, before the group commit takes them.
    let published: Vec<Uuid> = futures::future::join_all(
        (0..EVENTS).map(|_| async { publish(s, project.id, "ordered.thing").await.event_id }),
    )
    .await;
    assert_eq!(raw.due_and_held(webhook.id).await, (1, EVENTS as i64 - 1));
    let mut sent = Vec::new();
    for _ in 0..EVENTS {
        sent.push(deliver_next(s, AttemptStatus::Success).await.event_id);
    }
    assert_eq!(sent, published);
}

/// A webhook made ordered while one of its deliveries is out: what is published
/// meanwhile is held behind that delivery, and its success (claimed as unordered)
/// wakes the next head all the same.
async fn a_head_claimed_before_ordering_was_switched_on_wakes_the_next(db: Arc<TestDb>) {
    let s = db.store.as_ref();
    let raw = Raw::open(&db).await;
    let project = new_project(s).await;
    let webhook = upsert_ordered(s, project.id, false).await;
    let first = publish(s, project.id, "ordered.thing").await.event_id;
    let out = claim_one(s).await;
    assert_eq!((out.event_id, out.ordered), (first, false));

    upsert_ordered(s, project.id, true).await;
    let second = publish(s, project.id, "ordered.thing").await.event_id;
    assert_eq!(
        raw.due_and_held(webhook.id).await,
        (0, 1),
        "held behind the one out"
    );

    record(
        s,
        &[outcome(&out, AttemptStatus::Success, now_micros(), None)],
        NEVER_DISABLE,
    )
    .await;
    assert_eq!(raw.due_and_held(webhook.id).await, (1, 0));
    let next = claim_one(s).await;
    assert_eq!((next.event_id, next.ordered), (second, true));
}

store_cases!(
    a_batch_of_publishes_goes_in_publish_order,
    a_head_claimed_before_ordering_was_switched_on_wakes_the_next,
    an_ordered_queue_is_held_behind_its_head_and_woken_in_turn,
    racing_publishes_and_outcomes_leave_no_head_held,
    a_claim_tells_the_next_due_time_next_due_would,
);

/// The race the wake after a publish's commit is for, made certain: a publish takes
/// its snapshot while the head is pending, then waits (on an uncommitted event with
/// the same idempotency key); meanwhile the head finishes and its recorder wakes
/// what it can see, which is not the waiting publish's delivery. That delivery goes
/// in held behind a head that is gone, and only the publish's own wake frees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_publish_that_waited_behind_a_finishing_head_wakes_what_it_held() {
    in_pg_schema(|options| async move {
        let store = Arc::new(PgStore::connect_with(options.clone(), 4).await.unwrap());
        let s: &dyn WebhookStore = store.as_ref();
        let project = new_project(s).await;
        let webhook = upsert_ordered(s, project.id, true).await;
        publish(s, project.id, "ordered.thing").await;

        let raw = PgPool::connect_with(options).await.unwrap();
        let mut blocker = raw.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO events (id, project_id, event_type, data, idempotency_key, created_at) \
             VALUES ($1, $2, 'ordered.thing', '{}', 'same-key', now())",
        )
        .bind(Uuid::now_v7())
        .bind(project.id)
        .execute(&mut *blocker)
        .await
        .unwrap();
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move {
                publish_with(
                    store.as_ref(),
                    project.id,
                    "ordered.thing",
                    "{}",
                    Some("same-key"),
                    long_ago(),
                )
                .await
            })
        };
        // The publish is waiting on the key once PostgreSQL says so.
        support_poll(|| {
            let raw = raw.clone();
            async move {
                let waits: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND query LIKE '%idempotency_key%'",
                )
                .fetch_one(&raw)
                .await
                .unwrap();
                (waits > 0).then_some(())
            }
        })
        .await;

        deliver_next(s, AttemptStatus::Success).await;
        blocker.rollback().await.unwrap();
        let published = waiting.await.unwrap();
        assert_eq!(published.deliveries, 1);
        let raw = Raw::Postgres(raw);
        assert_eq!(raw.due_and_held(webhook.id).await, (1, 0));
        assert_eq!(
            deliver_next(s, AttemptStatus::Success).await.event_id,
            published.event_id
        );
        store.close().await;
    })
    .await;
}

/// The rows each node of a PostgreSQL `EXPLAIN ANALYZE` read: what it returned and
/// what its filter removed, times its loops, summed over the plan.
fn rows_read(plan: &[String]) -> u64 {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let mut total = 0;
    let mut loops = 1;
    for line in plan {
        if line.contains("actual time=") {
            let rows = number_after(line, " rows=").unwrap_or(0);
            loops = number_after(line, " loops=").unwrap_or(1);
            total += rows * loops;
        } else if line.contains("Rows Removed by Filter:") {
            total += number_after(line, "Rows Removed by Filter: ").unwrap_or(0) * loops;
        }
    }
    total
}

/// One tenant's ordered webhook has a backlog and its head in flight; another
/// tenant's delivery is due behind that backlog. Finding it (the next-due read and
/// both forms of the claim) reads a handful of rows, not the backlog: held, the
/// backlog is out of the range they walk. Before, each of them read it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_an_ordered_backlog_is_not_read_by_another_tenants_claim() {
    const BACKLOG: usize = 400;
    in_pg_schema(|options| async move {
        let store = Arc::new(PgStore::connect_with(options.clone(), 4).await.unwrap());
        let s: &dyn WebhookStore = store.as_ref();
        let busy = new_project(s).await;
        upsert_ordered(s, busy.id, true).await;
        let publishes = (0..BACKLOG).map(|_| publish(s, busy.id, "ordered.thing"));
        futures::future::join_all(publishes).await;
        let head = claim_one(s).await;
        assert_eq!(head.project_id, busy.id);
        let other = new_project(s).await;
        new_webhook(s, other.id, "other.thing").await;
        publish(s, other.id, "other.thing").await;
        sqlx::query("ANALYZE").execute(store.pool()).await.unwrap();
        // The claim's literal for the held instant is the instant itself.
        let same: bool = sqlx::query_scalar(&format!("SELECT {} = $1", postgres::HELD))
            .bind(held())
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert!(same);

        let now = now_micros();
        let mut conn = store.pool().acquire().await.unwrap();
        let explain = |rows: Vec<sqlx::postgres::PgRow>| -> Vec<String> {
            rows.iter()
                .map(|r| sqlx::Row::get::<String, _>(r, 0))
                .collect()
        };
        let mut plans = Vec::new();
        let next_due = format!("EXPLAIN ANALYZE {}", common::next_due_sql());
        let rows = sqlx::query(&next_due)
            .bind(now)
            .bind(held())
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        plans.push(("next due".to_owned(), explain(rows)));
        for form in postgres::ClaimForm::ALL {
            let per_project = form == postgres::ClaimForm::PerProject;
            // EXPLAIN ANALYZE runs the claim: in a transaction rolled back after.
            let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
            let sql = format!("EXPLAIN ANALYZE {}", postgres::claim_sql(form));
            let projects: Vec<Uuid> = if per_project { vec![other.id] } else { vec![] };
            let mut query = sqlx::query(&sql)
                .bind(now)
                .bind(64_i64)
                .bind(Uuid::new_v4())
                .bind(now + chrono::Duration::seconds(60))
                .bind(projects);
            if per_project {
                query = query.bind(16_i64);
            }
            let rows = query.fetch_all(&mut *tx).await.unwrap();
            tx.rollback().await.unwrap();
            plans.push((format!("claim ({form:?})"), explain(rows)));
        }
        for (name, plan) in &plans {
            let read = rows_read(plan);
            assert!(
                read < 50,
                "{name} read {read} rows behind a backlog of {BACKLOG}: {plan:#?}"
            );
        }
        drop(conn);
        store.close().await;
    })
    .await;
}

/// The next due time a claim tells (in the claim's own command on SQLite, in its own
/// statement on PostgreSQL) is the one [`WebhookStore::next_due`] answers right after:
/// a delivery left due, a retry scheduled, an ordered head in flight with its queue
/// behind it.
async fn a_claim_tells_the_next_due_time_next_due_would(db: Arc<TestDb>) {
    let s = db.store.as_ref();
    let check = |batch: ClaimBatch| async move {
        let asked = s.next_due().await.expect("next due");
        match batch.next_due {
            Some(told) => assert_eq!(told, NextDue(asked)),
            // With nothing due no claim runs, and nothing is told.
            None => assert!(
                batch.deliveries.is_empty(),
                "a claim that took something tells the next due time"
            ),
        }
        batch.deliveries
    };
    check(s.claim_batch(10, LEASE, &[]).await.expect("claim")).await;

    let project = new_project(s).await;
    new_webhook(s, project.id, "plain.thing").await;
    publish(s, project.id, "plain.thing").await;
    publish(s, project.id, "plain.thing").await;
    let first = check(s.claim_batch(1, LEASE, &[]).await.expect("claim")).await;
    assert_eq!(first.len(), 1);
    let retry_at = truncate_micros(now_micros() + chrono::Duration::seconds(5));
    record(
        s,
        &[outcome(
            &first[0],
            AttemptStatus::Failed,
            now_micros(),
            Some(retry_at),
        )],
        NEVER_DISABLE,
    )
    .await;
    let second = check(s.claim_batch(10, LEASE, &[]).await.expect("claim")).await;
    assert_eq!(second.len(), 1);
    assert_eq!(s.next_due().await.expect("next due"), Some(retry_at));

    let other = new_project(s).await;
    upsert_ordered(s, other.id, true).await;
    for _ in 0..3 {
        publish(s, other.id, "ordered.thing").await;
    }
    let head = check(s.claim_batch(10, LEASE, &[]).await.expect("claim")).await;
    assert_eq!(head.len(), 1, "the ordered head only");
}
