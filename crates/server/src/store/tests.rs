//! The store test suite. Every case is written once against `dyn WebhookStore` and runs
//! on both backends: SQLite on a fresh file, and PostgreSQL in a fresh schema of the
//! database named by `TEST_DATABASE_URL` (skipped, saying so, when it is not set).

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use sonzai_webhooks_testkit::{test_database_url, TestDb as FreshDb};
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

use super::postgres::{self, PgStore};
use super::rows::Micros;
use super::sqlite::SqliteStore;
use super::*;

/// Upper bound on one case, so a hang fails the test instead of stalling the run.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

const LEASE: Duration = Duration::from_secs(60);

/// A webhook limit no case reaches unless it is about the limit.
const NO_WEBHOOK_LIMIT: usize = usize::MAX;

/// A byte budget no attempts page reaches unless the case is about the budget.
const NO_PAGE_BUDGET: usize = usize::MAX;

/// A policy that never disables, for cases about something else.
const NEVER_DISABLE: DisablePolicy = DisablePolicy {
    failures: i64::MAX,
    min_age: Duration::ZERO,
    exhausted_window: Duration::from_secs(3600),
};

// --- harness --------------------------------------------------------------------------

enum Backend {
    Sqlite {
        url: String,
        _db: FreshDb,
    },
    Postgres {
        options: Box<PgConnectOptions>,
        opened: Arc<Mutex<Vec<PgStore>>>,
    },
}

struct TestDb {
    store: Arc<dyn WebhookStore>,
    backend: Backend,
}

impl TestDb {
    /// An independent handle on the same database, like a second server process.
    async fn open_another(&self) -> Arc<dyn WebhookStore> {
        match &self.backend {
            Backend::Sqlite { url, .. } => {
                Arc::new(SqliteStore::connect(url).await.expect("reopen sqlite"))
            }
            Backend::Postgres { options, opened } => {
                let store = PgStore::connect_with((**options).clone(), 4)
                    .await
                    .expect("reopen postgres");
                opened.lock().expect("lock").push(store.clone());
                Arc::new(store)
            }
        }
    }
}

async fn run_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = ()>,
{
    // In a directory that does not exist yet: connect must create it.
    let fresh = FreshDb::sqlite();
    let url = fresh.url.clone();
    let store = SqliteStore::connect(&url).await.expect("connect sqlite");
    let db = Arc::new(TestDb {
        store: Arc::new(store),
        backend: Backend::Sqlite { url, _db: fresh },
    });
    tokio::time::timeout(CASE_TIMEOUT, case(db))
        .await
        .expect("case timed out");
}

/// A fresh schema in the shared test database (the test kit's), dropped again however
/// the case ends.
struct PgSchema(FreshDb);

impl PgSchema {
    async fn create(url: &str) -> Self {
        Self(FreshDb::postgres_at(url, "store_test").expect("create schema"))
    }

    /// Connection options whose sessions see only this schema.
    fn options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.0.url).expect("schema URL")
    }

    /// Drops the schema (waiting at most a bounded time for locks a failed case left).
    async fn drop_schema(self) {
        drop(self.0);
    }
}

async fn run_postgres<F, Fut>(case: F)
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = test_database_url() else {
        return;
    };
    let schema = PgSchema::create(&url).await;
    let opened: Arc<Mutex<Vec<PgStore>>> = Arc::default();
    let result = AssertUnwindSafe(async {
        let store = PgStore::connect_with(schema.options(), 10)
            .await
            .expect("connect postgres");
        opened.lock().expect("lock").push(store.clone());
        let db = Arc::new(TestDb {
            store: Arc::new(store),
            backend: Backend::Postgres {
                options: Box::new(schema.options()),
                opened: opened.clone(),
            },
        });
        tokio::time::timeout(CASE_TIMEOUT, case(db))
            .await
            .expect("case timed out");
    })
    .catch_unwind()
    .await;

    let stores: Vec<PgStore> = std::mem::take(&mut *opened.lock().expect("lock"));
    for store in stores {
        // Bounded: a task the failed case left running may still hold a connection.
        let _ = tokio::time::timeout(Duration::from_secs(10), store.close()).await;
    }
    schema.drop_schema().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Generates one `#[tokio::test]` per backend for each case.
macro_rules! store_cases {
    ($($case:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::run_sqlite(super::$case).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::run_postgres(super::$case).await;
                }
            )*
        }
    };
}

store_cases!(
    tenants_projects_and_keys,
    upsert_creates_then_updates,
    concurrent_upserts_create_exactly_one_webhook,
    list_orders_by_event_type,
    delete_cancels_pending_deliveries_and_keeps_attempts,
    rotate_with_and_without_grace,
    publish_targets_active_webhooks_only,
    idempotency_key_within_and_after_window,
    claim_takes_due_deliveries_oldest_first_under_lease,
    claims_share_out_among_projects_and_skip_full_ones,
    claims_reach_projects_beyond_the_fair_scan,
    a_claim_says_whether_it_took_all_that_was_due,
    expired_lease_is_reclaimed_and_old_outcome_is_stale,
    concurrent_claimers_never_share_a_delivery,
    outcomes_finish_retry_and_number_attempts,
    failing_webhook_is_disabled_by_policy,
    gone_disables_at_once_and_a_late_gone_changes_nothing,
    success_resets_the_failure_streak,
    release_makes_claims_available_at_once,
    attempts_page_newest_first,
    attempts_page_ends_at_its_byte_budget,
    webhook_limit_refuses_creates_not_updates,
    concurrent_creates_stop_at_the_webhook_limit,
    projects_are_isolated,
    queue_stats_and_next_due,
    recording_the_same_batch_twice_counts_once,
    resend_queues_one_new_delivery_and_attempts_say_why,
    a_long_listing_follows_every_change_made_by_any_handle,
);

mod holding;

// --- fixtures -------------------------------------------------------------------------

async fn new_project(store: &dyn WebhookStore) -> Project {
    let tenant = store.create_tenant("tenant").await.expect("tenant");
    store
        .create_project(tenant.id, "project")
        .await
        .expect("project")
}

async fn upsert(
    store: &dyn WebhookStore,
    project_id: Uuid,
    event_type: &str,
    url: &str,
) -> (UpsertOutcome, SigningSecret) {
    let (outcome, secret) =
        upsert_limited(store, project_id, event_type, url, NO_WEBHOOK_LIMIT).await;
    (outcome.expect("upsert"), secret)
}

async fn upsert_limited(
    store: &dyn WebhookStore,
    project_id: Uuid,
    event_type: &str,
    url: &str,
    max_webhooks: usize,
) -> (StoreResult<UpsertOutcome>, SigningSecret) {
    let secret = SigningSecret::generate();
    let outcome = store
        .upsert_webhook(UpsertWebhook {
            rate_limit: None,
            ordered: false,
            project_id,
            event_type,
            webhook_url: url,
            auth_header: None,
            new_secret: &secret,
            max_webhooks,
        })
        .await;
    (outcome, secret)
}

/// Creates a webhook that must not exist yet; returns it and its secret.
async fn new_webhook(
    store: &dyn WebhookStore,
    project_id: Uuid,
    event_type: &str,
) -> (Webhook, SigningSecret) {
    match upsert(
        store,
        project_id,
        event_type,
        "https://receiver.example/hook",
    )
    .await
    {
        (UpsertOutcome::Created { webhook, secret }, offered) => {
            assert_eq!(secret, offered);
            (webhook, secret)
        }
        (other, _) => panic!("expected a new webhook, got {other:?}"),
    }
}

fn long_ago() -> DateTime<Utc> {
    Utc::now() - chrono::Duration::hours(24)
}

async fn publish(store: &dyn WebhookStore, project_id: Uuid, event_type: &str) -> Published {
    publish_with(store, project_id, event_type, "{\"n\":1}", None, long_ago()).await
}

async fn publish_with(
    store: &dyn WebhookStore,
    project_id: Uuid,
    event_type: &str,
    data: &str,
    idempotency_key: Option<&str>,
    idempotency_since: DateTime<Utc>,
) -> Published {
    store
        .publish_event(PublishEvent {
            project_id,
            event_type,
            data,
            idempotency_key,
            idempotency_since,
        })
        .await
        .expect("publish")
}

/// The attempt a worker would record for `claim`, made at `at`.
fn attempt_for(claim: &ClaimedDelivery, status: AttemptStatus, at: DateTime<Utc>) -> Attempt {
    let (code, error) = match status {
        AttemptStatus::Success => (200, None),
        AttemptStatus::Failed => (503, Some("service unavailable".to_owned())),
    };
    Attempt {
        id: Uuid::now_v7(),
        delivery_id: claim.delivery_id,
        event_id: claim.event_id,
        project_id: claim.project_id,
        event_type: claim.event_type.clone(),
        webhook_url: claim.webhook_url.clone(),
        response_code: code,
        duration_ms: 12,
        attempt_number: claim.attempts_made + 1,
        status,
        request_body: claim.data.as_bytes().to_vec(),
        response_body: Some(format!("answer {code}")),
        error_message: error,
        created_at: truncate_micros(at),
        trigger: Some(AttemptTrigger::of_attempt(
            claim.origin,
            claim.attempts_made + 1,
        )),
    }
}

fn outcome(
    claim: &ClaimedDelivery,
    status: AttemptStatus,
    at: DateTime<Utc>,
    retry_at: Option<DateTime<Utc>>,
) -> DeliveryOutcome {
    DeliveryOutcome {
        delivery_id: claim.delivery_id,
        webhook_id: claim.webhook_id,
        lease_token: claim.lease_token,
        attempt: attempt_for(claim, status, at),
        retry_at,
        disable_webhook: false,
        ordered: claim.ordered,
    }
}

async fn claim_one(store: &dyn WebhookStore) -> ClaimedDelivery {
    let mut claims = store.claim_due(10, LEASE).await.expect("claim");
    assert_eq!(claims.len(), 1, "expected exactly one due delivery");
    claims.remove(0)
}

async fn record(
    store: &dyn WebhookStore,
    outcomes: &[DeliveryOutcome],
    policy: DisablePolicy,
) -> Vec<Uuid> {
    store
        .record_outcomes(outcomes, policy)
        .await
        .expect("record outcomes")
        .disabled
}

/// Records a failure of `claim` made now, retried now; the webhooks it disabled.
async fn fail_now(
    store: &dyn WebhookStore,
    claim: &ClaimedDelivery,
    policy: DisablePolicy,
) -> Vec<Uuid> {
    let failed = outcome(
        claim,
        AttemptStatus::Failed,
        now_micros(),
        Some(now_micros()),
    );
    record(store, &[failed], policy).await
}

async fn all_attempts(
    store: &dyn WebhookStore,
    project_id: Uuid,
    event_type: &str,
) -> Vec<Attempt> {
    store
        .list_attempts(
            project_id,
            event_type,
            AttemptPage::Offset {
                limit: 500,
                offset: 0,
            },
            NO_PAGE_BUDGET,
        )
        .await
        .expect("attempts")
        .attempts
}

async fn pending(store: &dyn WebhookStore) -> i64 {
    store.queue_stats().await.expect("stats").pending
}

// --- cases ----------------------------------------------------------------------------

async fn tenants_projects_and_keys(db: Arc<TestDb>) {
    let s = &*db.store;
    assert!(s.is_empty().await.unwrap());
    assert_eq!(s.list_tenants().await.unwrap(), vec![]);

    let t1 = s.create_tenant("acme").await.unwrap();
    assert!(!s.is_empty().await.unwrap());
    let t2 = s.create_tenant("globex").await.unwrap();
    assert_eq!(
        s.list_tenants().await.unwrap(),
        vec![t1.clone(), t2.clone()]
    );

    let p1 = s.create_project(t1.id, "prod").await.unwrap();
    let p2 = s.create_project(t2.id, "staging").await.unwrap();
    assert_eq!((p1.tenant_id, p1.name.as_str()), (t1.id, "prod"));
    assert!(matches!(
        s.create_project(Uuid::new_v4(), "orphan").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.list_projects(Some(t1.id)).await.unwrap(),
        vec![p1.clone()]
    );
    assert_eq!(
        s.list_projects(None).await.unwrap(),
        vec![p1.clone(), p2.clone()]
    );
    assert_eq!(s.list_projects(Some(Uuid::new_v4())).await.unwrap(), vec![]);
    assert_eq!(s.get_project(p2.id).await.unwrap(), Some(p2.clone()));
    assert_eq!(s.get_project(Uuid::new_v4()).await.unwrap(), None);

    let key1 = ApiKeyRecord {
        id: Uuid::new_v4(),
        project_id: p1.id,
        lookup_id: "lk1".into(),
        secret_hash: "aa".repeat(32),
        created_at: now_micros(),
        revoked_at: None,
    };
    let key2 = ApiKeyRecord {
        id: Uuid::new_v4(),
        project_id: p2.id,
        lookup_id: "lk2".into(),
        secret_hash: "bb".repeat(32),
        created_at: now_micros(),
        revoked_at: None,
    };
    s.insert_api_key(&key1).await.unwrap();
    s.insert_api_key(&key2).await.unwrap();
    let same_lookup = ApiKeyRecord {
        id: Uuid::new_v4(),
        ..key1.clone()
    };
    assert!(matches!(
        s.insert_api_key(&same_lookup).await,
        Err(StoreError::Conflict(_))
    ));
    let no_project = ApiKeyRecord {
        id: Uuid::new_v4(),
        project_id: Uuid::new_v4(),
        lookup_id: "lk3".into(),
        ..key1.clone()
    };
    assert!(matches!(
        s.insert_api_key(&no_project).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.list_api_keys(Some(p1.id)).await.unwrap(),
        vec![key1.clone()]
    );
    assert_eq!(
        s.list_api_keys(None).await.unwrap(),
        vec![key1.clone(), key2.clone()]
    );

    assert_eq!(
        s.find_api_key("lk2").await.unwrap(),
        Some(KeyOwner {
            key_id: key2.id,
            tenant_id: t2.id,
            project_id: p2.id,
            secret_hash: key2.secret_hash.clone(),
            revoked: false,
        })
    );
    assert_eq!(s.find_api_key("unknown").await.unwrap(), None);

    s.revoke_api_key(key1.id).await.unwrap();
    let owner = s.find_api_key("lk1").await.unwrap().unwrap();
    assert!(owner.revoked);
    assert!(!s.find_api_key("lk2").await.unwrap().unwrap().revoked);
    let revoked_at = s.list_api_keys(Some(p1.id)).await.unwrap()[0].revoked_at;
    assert!(revoked_at.is_some());
    // Revoking again succeeds and keeps the original instant.
    s.revoke_api_key(key1.id).await.unwrap();
    assert_eq!(
        s.list_api_keys(Some(p1.id)).await.unwrap()[0].revoked_at,
        revoked_at
    );
    assert!(matches!(
        s.revoke_api_key(Uuid::new_v4()).await,
        Err(StoreError::NotFound)
    ));
}

async fn upsert_creates_then_updates(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    let secret = SigningSecret::generate();
    let created = s
        .upsert_webhook(UpsertWebhook {
            rate_limit: None,
            ordered: false,
            project_id: p.id,
            event_type: "session.end",
            webhook_url: "https://a.example/hook",
            auth_header: Some("Bearer first"),
            new_secret: &secret,
            max_webhooks: NO_WEBHOOK_LIMIT,
        })
        .await
        .unwrap();
    let UpsertOutcome::Created {
        webhook: first,
        secret: handed_back,
    } = created
    else {
        panic!("first upsert must create, got {created:?}");
    };
    assert_eq!(handed_back, secret);
    assert_eq!(first.project_id, p.id);
    assert_eq!(first.event_type, "session.end");
    assert_eq!(first.webhook_url, "https://a.example/hook");
    assert_eq!(first.auth_header.as_deref(), Some("Bearer first"));
    assert!(first.is_active);
    assert_eq!(first.created_at, first.updated_at);

    // Let the clock move so that the bump of updated_at is observable.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let offered = SigningSecret::generate();
    let updated = s
        .upsert_webhook(UpsertWebhook {
            rate_limit: None,
            ordered: false,
            project_id: p.id,
            event_type: "session.end",
            webhook_url: "https://b.example/hook",
            auth_header: None,
            new_secret: &offered,
            max_webhooks: NO_WEBHOOK_LIMIT,
        })
        .await
        .unwrap();
    let UpsertOutcome::Updated { webhook: second } = updated else {
        panic!("second upsert must update, got {updated:?}");
    };
    assert_eq!(second.id, first.id);
    assert_eq!(second.created_at, first.created_at);
    assert!(second.updated_at > first.updated_at);
    assert_eq!(second.webhook_url, "https://b.example/hook");
    assert_eq!(second.auth_header, None);
    assert_eq!(
        s.get_webhook(p.id, "session.end").await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(s.list_webhooks(p.id).await.unwrap(), vec![second]);

    // Deliveries are still signed with the secret handed out at creation.
    publish(s, p.id, "session.end").await;
    let claim = claim_one(s).await;
    assert_eq!(claim.secret, secret);
    assert_eq!(claim.webhook_url, "https://b.example/hook");
    assert_eq!(claim.auth_header, None);
}

async fn concurrent_upserts_create_exactly_one_webhook(db: Arc<TestDb>) {
    let p = new_project(&*db.store).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        // Half the racers use a second handle, as another process would.
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            db.open_another().await
        };
        tasks.spawn(async move {
            let url = format!("https://r{i}.example/hook");
            upsert(&*store, p.id, "memory.created", &url).await
        });
    }
    let mut created = Vec::new();
    let mut updated = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task") {
            (UpsertOutcome::Created { secret, .. }, offered) => {
                assert_eq!(secret, offered);
                created.push(secret);
            }
            (UpsertOutcome::Updated { .. }, _) => updated += 1,
        }
    }
    assert_eq!(created.len(), 1, "exactly one upsert creates");
    assert_eq!(updated, 15);
    let s = &*db.store;
    assert_eq!(s.list_webhooks(p.id).await.unwrap().len(), 1);

    // The secret that the creator handed out is the one in force.
    publish(s, p.id, "memory.created").await;
    assert_eq!(claim_one(s).await.secret, created[0]);
    let (again, _) = upsert(s, p.id, "memory.created", "https://last.example/").await;
    assert!(matches!(again, UpsertOutcome::Updated { .. }));
    publish(s, p.id, "memory.created").await;
    assert_eq!(claim_one(s).await.secret, created[0]);
}

async fn list_orders_by_event_type(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    assert_eq!(s.list_webhooks(p.id).await.unwrap(), vec![]);
    assert_eq!(s.get_webhook(p.id, "session.end").await.unwrap(), None);

    // Punctuation and case chosen so that a locale-aware collation would order them
    // differently from bytewise order.
    let types = [
        "session_end",
        "session.end",
        "Session.start",
        "on_wakeup_ready",
        "memory:created",
        "memory-created",
        "a",
    ];
    for t in types {
        new_webhook(s, p.id, t).await;
    }
    let mut expected: Vec<&str> = types.to_vec();
    expected.sort_unstable();
    let listed = s.list_webhooks(p.id).await.unwrap();
    let listed: Vec<&str> = listed.iter().map(|w| w.event_type.as_str()).collect();
    assert_eq!(listed, expected);
}

/// The listing as each webhook reads on its own, which no listing cache serves.
async fn listed_one_by_one(
    s: &dyn WebhookStore,
    project_id: Uuid,
    types: &[String],
) -> Vec<Webhook> {
    let mut each = Vec::new();
    for event_type in types {
        if let Some(w) = s.get_webhook(project_id, event_type).await.unwrap() {
            each.push(w);
        }
    }
    each
}

/// Each handle's listing is the one read webhook by webhook.
async fn listed_fresh(
    handles: [&dyn WebhookStore; 2],
    project_id: Uuid,
    types: &[String],
    label: &str,
) {
    for handle in handles {
        let listed = handle.list_webhooks(project_id).await.unwrap();
        assert_eq!(
            listed,
            listed_one_by_one(handle, project_id, types).await,
            "{label}"
        );
    }
}

/// Listings long enough to be kept in memory are never older than the database: every
/// change a listing shows, made through this handle or another (another process), by
/// the API or by the delivery engine, is in the next listing.
async fn a_long_listing_follows_every_change_made_by_any_handle(db: Arc<TestDb>) {
    let s = &*db.store;
    let other = db.open_another().await;
    let p = new_project(s).await;
    let types: Vec<String> = (0..40).map(|i| format!("type.{i:02}")).collect();
    for t in &types {
        new_webhook(s, p.id, t).await;
    }
    let o = &*other;
    listed_fresh([s, o], p.id, &types, "created").await;
    listed_fresh([s, o], p.id, &types, "listed again").await;

    upsert(o, p.id, "type.03", "https://moved.example/hook").await;
    listed_fresh([s, o], p.id, &types, "upserted elsewhere").await;
    assert_eq!(
        s.list_webhooks(p.id).await.unwrap()[3].webhook_url,
        "https://moved.example/hook"
    );
    assert!(other
        .rotate_secret(p.id, "type.04", &SigningSecret::generate(), Duration::ZERO)
        .await
        .unwrap());
    listed_fresh([s, o], p.id, &types, "rotated elsewhere").await;
    assert!(other.delete_webhook(p.id, "type.05").await.unwrap());
    listed_fresh([s, o], p.id, &types, "deleted elsewhere").await;
    assert_eq!(s.list_webhooks(p.id).await.unwrap().len(), 39);
    new_webhook(o, p.id, "type.05").await;
    listed_fresh([s, o], p.id, &types, "created elsewhere").await;

    // A failure that leaves the webhook on changes nothing a listing shows; the one
    // that disables it does.
    let policy = DisablePolicy {
        failures: 2,
        min_age: Duration::ZERO,
        exhausted_window: Duration::from_secs(3600),
    };
    publish(s, p.id, "type.06").await;
    let c = claim_one(s).await;
    let disabled = fail_now(o, &c, policy).await;
    assert!(disabled.is_empty());
    listed_fresh([s, o], p.id, &types, "one failure").await;
    let c = claim_one(s).await;
    let disabled = fail_now(o, &c, policy).await;
    assert_eq!(disabled.len(), 1);
    listed_fresh([s, o], p.id, &types, "disabled by the engine elsewhere").await;
    assert!(!s.list_webhooks(p.id).await.unwrap()[6].is_active);

    // Another project's listing is its own.
    let q = new_project(s).await;
    assert!(s.list_webhooks(q.id).await.unwrap().is_empty());
}

async fn delete_cancels_pending_deliveries_and_keeps_attempts(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    let (hook, _) = new_webhook(s, p.id, "session.end").await;
    publish(s, p.id, "session.end").await;
    publish(s, p.id, "session.end").await;
    publish(s, p.id, "session.end").await;

    let claims = s.claim_due(2, LEASE).await.unwrap();
    assert_eq!(claims.len(), 2);
    let now = now_micros();
    // One fails and waits for a retry; the other is still in flight at deletion.
    let retry = outcome(
        &claims[0],
        AttemptStatus::Failed,
        now,
        Some(now + chrono::Duration::hours(1)),
    );
    record(s, &[retry], NEVER_DISABLE).await;
    assert_eq!(pending(s).await, 3);

    assert!(s.delete_webhook(p.id, "session.end").await.unwrap());
    assert!(!s.delete_webhook(p.id, "session.end").await.unwrap());
    assert_eq!(s.get_webhook(p.id, "session.end").await.unwrap(), None);
    assert_eq!(pending(s).await, 0);
    assert_eq!(s.next_due().await.unwrap(), None);
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());

    // The in-flight outcome arrives after the deletion: its attempt is kept.
    let late = outcome(&claims[1], AttemptStatus::Success, now_micros(), None);
    assert_eq!(record(s, &[late], NEVER_DISABLE).await, Vec::<Uuid>::new());
    let attempts = all_attempts(s, p.id, "session.end").await;
    assert_eq!(attempts.len(), 2);
    assert!(attempts
        .iter()
        .all(|a| a.webhook_url == hook.webhook_url && a.project_id == p.id));

    // A new webhook for the same event type does not revive the cancelled deliveries.
    new_webhook(s, p.id, "session.end").await;
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());
    assert_eq!(pending(s).await, 0);
    assert_eq!(all_attempts(s, p.id, "session.end").await.len(), 2);
}

async fn rotate_with_and_without_grace(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    let (_, s0) = new_webhook(s, p.id, "session.end").await;
    let s1 = SigningSecret::generate();
    let s2 = SigningSecret::generate();
    let s3 = SigningSecret::generate();

    assert!(s
        .rotate_secret(p.id, "session.end", &s1, Duration::ZERO)
        .await
        .unwrap());
    publish(s, p.id, "session.end").await;
    let claim = claim_one(s).await;
    assert_eq!(claim.secret, s1);
    assert_eq!(claim.previous_secret, None);

    assert!(s
        .rotate_secret(p.id, "session.end", &s2, Duration::from_secs(3600))
        .await
        .unwrap());
    publish(s, p.id, "session.end").await;
    let claim = claim_one(s).await;
    assert_eq!(claim.secret, s2);
    assert_eq!(claim.previous_secret, Some(s1.clone()));

    // A grace period that is over no longer signs.
    assert!(s
        .rotate_secret(p.id, "session.end", &s3, Duration::from_millis(1))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(s, p.id, "session.end").await;
    let claim = claim_one(s).await;
    assert_eq!(claim.secret, s3);
    assert_eq!(claim.previous_secret, None);
    assert_ne!(claim.secret, s0);

    assert!(!s
        .rotate_secret(p.id, "other.type", &s1, Duration::ZERO)
        .await
        .unwrap());
    assert!(!s
        .rotate_secret(Uuid::new_v4(), "session.end", &s1, Duration::ZERO)
        .await
        .unwrap());
}

async fn publish_targets_active_webhooks_only(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    let (hook, _) = new_webhook(s, p.id, "session.end").await;

    let first = publish(s, p.id, "session.end").await;
    assert_eq!(first.deliveries, 1);
    assert!(!first.duplicate);
    let none = publish(s, p.id, "no.webhook").await;
    assert_eq!(none.deliveries, 0);
    assert_ne!(none.event_id, first.event_id);
    assert_eq!(pending(s).await, 1);

    // Disable the webhook (one failure is enough under this policy).
    let claim = claim_one(s).await;
    assert_eq!(claim.event_id, first.event_id);
    let now = now_micros();
    let disabled = record(
        s,
        &[outcome(&claim, AttemptStatus::Failed, now, Some(now))],
        DisablePolicy {
            failures: 1,
            min_age: Duration::ZERO,
            exhausted_window: Duration::from_secs(3600),
        },
    )
    .await;
    assert_eq!(disabled, vec![hook.id]);
    assert!(
        !s.get_webhook(p.id, "session.end")
            .await
            .unwrap()
            .unwrap()
            .is_active
    );

    let while_disabled = publish(s, p.id, "session.end").await;
    assert_eq!(while_disabled.deliveries, 0);
    assert_eq!(pending(s).await, 0);

    // An upsert turns it back on.
    let (again, _) = upsert(s, p.id, "session.end", "https://c.example/").await;
    let UpsertOutcome::Updated { webhook } = again else {
        panic!("expected update");
    };
    assert!(webhook.is_active);
    assert_eq!(publish(s, p.id, "session.end").await.deliveries, 1);
    assert_eq!(pending(s).await, 1);
}

async fn idempotency_key_within_and_after_window(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    let other = new_project(s).await;
    new_webhook(s, p.id, "session.end").await;

    let first = publish_with(s, p.id, "session.end", "{\"a\":1}", Some("k1"), long_ago()).await;
    assert!(!first.duplicate);
    assert_eq!(first.deliveries, 1);

    let repeat = publish_with(s, p.id, "session.end", "{\"a\":2}", Some("k1"), long_ago()).await;
    assert_eq!(
        repeat,
        Published {
            duplicate: true,
            ..first.clone()
        }
    );
    assert_eq!(pending(s).await, 1, "a duplicate creates no delivery");
    // The data kept is the first event's.
    assert_eq!(claim_one(s).await.data, "{\"a\":1}");

    // Keys are per project.
    let elsewhere = publish_with(s, other.id, "session.end", "{}", Some("k1"), long_ago()).await;
    assert!(!elsewhere.duplicate);
    assert_ne!(elsewhere.event_id, first.event_id);

    // Once the first use is older than the window, the key is free again...
    let window_start = Utc::now() + chrono::Duration::seconds(1);
    let later = publish_with(
        s,
        p.id,
        "session.end",
        "{\"a\":3}",
        Some("k1"),
        window_start,
    )
    .await;
    assert!(!later.duplicate);
    assert_ne!(later.event_id, first.event_id);
    assert_eq!(later.deliveries, 1);
    // ...and the new event is the one that now answers for it.
    let after = publish_with(s, p.id, "session.end", "{\"a\":4}", Some("k1"), long_ago()).await;
    assert!(after.duplicate);
    assert_eq!(after.event_id, later.event_id);
    assert_eq!(after.created_at, later.created_at);

    // Without a key nothing is deduplicated.
    let x = publish(s, p.id, "session.end").await;
    let y = publish(s, p.id, "session.end").await;
    assert_ne!(x.event_id, y.event_id);
    assert!(!x.duplicate && !y.duplicate);
}

/// Two projects: `noisy` with a backlog of 40 "backlog" events, `quiet` with a webhook
/// for "fresh" and nothing published yet.
async fn noisy_and_quiet(s: &dyn WebhookStore) -> (Project, Project) {
    let noisy = new_project(s).await;
    let quiet = new_project(s).await;
    upsert(s, noisy.id, "backlog", "https://noisy.example/hook").await;
    upsert(s, quiet.id, "fresh", "https://quiet.example/hook").await;
    for _ in 0..40 {
        publish(s, noisy.id, "backlog").await;
    }
    (noisy, quiet)
}

/// A project with a backlog gets no more than its part of a claim: another project's
/// later deliveries come in the same claim, and a project the worker has no room for
/// is left out altogether.
async fn claims_share_out_among_projects_and_skip_full_ones(db: Arc<TestDb>) {
    let s = &*db.store;
    let (noisy, quiet) = noisy_and_quiet(s).await;
    let mut fresh = HashSet::new();
    for _ in 0..3 {
        fresh.insert(publish(s, quiet.id, "fresh").await.event_id);
    }

    let claimed = s.claim_due(10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 8, "5 of the backlog and the 3 fresh ones");
    let quiet_claimed: HashSet<Uuid> = claimed
        .iter()
        .filter(|c| c.project_id == quiet.id)
        .map(|c| c.event_id)
        .collect();
    assert_eq!(
        quiet_claimed, fresh,
        "the backlog did not hold up the fresh events"
    );
    assert_eq!(
        claimed.iter().filter(|c| c.project_id == noisy.id).count(),
        5
    );

    for _ in 0..2 {
        publish(s, quiet.id, "fresh").await;
    }
    let claimed = s.claim_due_skipping(10, LEASE, &[noisy.id]).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|c| c.project_id == quiet.id));
    // Alone with due work, a project may take the whole claim.
    let claimed = s.claim_due(100, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 35);
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());
}

async fn a_claim_says_whether_it_took_all_that_was_due(db: Arc<TestDb>) {
    let s = &*db.store;
    let (noisy, quiet) = noisy_and_quiet(s).await;
    for _ in 0..3 {
        publish(s, quiet.id, "fresh").await;
    }

    // Short of the 10 asked for, but the backlog filled its share: more is due.
    let batch = s.claim_batch(10, LEASE, &[]).await.unwrap();
    assert_eq!(batch.deliveries.len(), 8);
    assert!(!batch.drained, "the backlog filled its share");
    // A full batch may have left more behind.
    let batch = s.claim_batch(5, LEASE, &[]).await.unwrap();
    assert_eq!(batch.deliveries.len(), 5);
    assert!(!batch.drained, "a full batch");
    // The rest, with room to spare: nothing is left.
    let batch = s.claim_batch(100, LEASE, &[]).await.unwrap();
    assert_eq!(batch.deliveries.len(), 30);
    assert!(batch.drained, "everything due was taken");
    let batch = s.claim_batch(10, LEASE, &[]).await.unwrap();
    assert!(batch.deliveries.is_empty() && batch.drained);
    // A skipped project's backlog does not count against the others.
    for _ in 0..4 {
        publish(s, noisy.id, "backlog").await;
    }
    publish(s, quiet.id, "fresh").await;
    let batch = s.claim_batch(10, LEASE, &[noisy.id]).await.unwrap();
    assert_eq!(batch.deliveries.len(), 1);
    assert!(batch.drained, "only the skipped project has more");
}

/// More projects with due work than one claim looks at one by one: the rest of the
/// claim goes oldest due first across all of them, so none is left out, and a skipped
/// project stays skipped there too.
async fn claims_reach_projects_beyond_the_fair_scan(db: Arc<TestDb>) {
    let s = &*db.store;
    let tenant = s.create_tenant("many").await.expect("tenant");
    let projects = FAIR_CLAIM_PROJECTS + 20;
    let mut skipped = None;
    for i in 0..projects {
        let project = s
            .create_project(tenant.id, &format!("p{i}"))
            .await
            .expect("project");
        upsert(s, project.id, "many.event", "https://many.example/hook").await;
        publish(s, project.id, "many.event").await;
        if i == projects / 2 {
            skipped = Some(project.id);
        }
    }
    let skipped = skipped.expect("a project to skip");
    let claimed = s
        .claim_due_skipping(projects * 2, LEASE, &[skipped])
        .await
        .unwrap();
    let distinct: HashSet<Uuid> = claimed.iter().map(|c| c.project_id).collect();
    assert_eq!(
        claimed.len(),
        projects - 1,
        "every due delivery but the skipped one"
    );
    assert_eq!(distinct.len(), projects - 1);
    assert!(!distinct.contains(&skipped));
    let rest = s.claim_due(10, LEASE).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].project_id, skipped);
}

async fn claim_takes_due_deliveries_oldest_first_under_lease(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    let secret = SigningSecret::generate();
    let UpsertOutcome::Created { webhook: hook, .. } = s
        .upsert_webhook(UpsertWebhook {
            rate_limit: None,
            ordered: false,
            project_id: p.id,
            event_type: "session.end",
            webhook_url: "https://a.example/hook",
            auth_header: Some("Bearer token"),
            new_secret: &secret,
            max_webhooks: NO_WEBHOOK_LIMIT,
        })
        .await
        .unwrap()
    else {
        panic!("expected create");
    };
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());

    let mut published = Vec::new();
    for i in 0..3 {
        let data = format!("{{\"i\":{i}}}");
        published.push(publish_with(s, p.id, "session.end", &data, None, long_ago()).await);
    }

    let first = s.claim_due(1, LEASE).await.unwrap();
    assert_eq!(first.len(), 1);
    let c = &first[0];
    assert_eq!(c.event_id, published[0].event_id, "oldest first");
    assert_eq!(c.event_created_at, published[0].created_at);
    assert_eq!(c.data, "{\"i\":0}");
    assert_eq!(c.webhook_id, hook.id);
    assert_eq!(c.project_id, p.id);
    assert_eq!(c.event_type, "session.end");
    assert_eq!(c.webhook_url, "https://a.example/hook");
    assert_eq!(c.auth_header.as_deref(), Some("Bearer token"));
    assert_eq!(c.secret, secret);
    assert_eq!(c.previous_secret, None);
    assert_eq!(c.attempts_made, 0);

    let rest = s.claim_due(10, LEASE).await.unwrap();
    let rest_events: HashSet<Uuid> = rest.iter().map(|c| c.event_id).collect();
    let expected: HashSet<Uuid> = published[1..].iter().map(|p| p.event_id).collect();
    assert_eq!(rest_events, expected);
    // Everything is leased now.
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());
    let next = s.next_due().await.unwrap().expect("pending deliveries");
    assert!(next > Utc::now() + chrono::Duration::seconds(30));

    // A retry scheduled in the future is not due before its time.
    let now = now_micros();
    let retry_at = now + chrono::Duration::hours(1);
    record(
        s,
        &[outcome(c, AttemptStatus::Failed, now, Some(retry_at))],
        NEVER_DISABLE,
    )
    .await;
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());
    assert_eq!(pending(s).await, 3);
}

async fn expired_lease_is_reclaimed_and_old_outcome_is_stale(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    new_webhook(s, p.id, "session.end").await;
    publish(s, p.id, "session.end").await;

    // A zero lease has expired as soon as it is granted: a crashed worker's claim.
    let lost = s.claim_due(10, Duration::ZERO).await.unwrap();
    assert_eq!(lost.len(), 1);
    let taken_over = claim_one(s).await;
    assert_eq!(taken_over.delivery_id, lost[0].delivery_id);
    assert_ne!(taken_over.lease_token, lost[0].lease_token);
    assert_eq!(taken_over.attempts_made, 0);

    // The first worker reports late: the attempt is kept, the delivery untouched.
    let stale = outcome(&lost[0], AttemptStatus::Success, now_micros(), None);
    assert_eq!(record(s, &[stale], NEVER_DISABLE).await, Vec::<Uuid>::new());
    assert_eq!(all_attempts(s, p.id, "session.end").await.len(), 1);
    assert_eq!(pending(s).await, 1);
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());

    // The current holder's outcome counts.
    let now = now_micros();
    record(
        s,
        &[outcome(&taken_over, AttemptStatus::Failed, now, Some(now))],
        NEVER_DISABLE,
    )
    .await;
    let again = claim_one(s).await;
    assert_eq!(again.attempts_made, 1);
    assert_eq!(all_attempts(s, p.id, "session.end").await.len(), 2);
}

async fn concurrent_claimers_never_share_a_delivery(db: Arc<TestDb>) {
    const DELIVERIES: usize = 200;
    let s = &*db.store;
    let p = new_project(s).await;
    new_webhook(s, p.id, "session.end").await;
    for _ in 0..DELIVERIES {
        publish(s, p.id, "session.end").await;
    }

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4 {
        // Two claimers per handle, two handles: in-process and cross-process races.
        let store = if i < 2 {
            db.store.clone()
        } else {
            db.open_another().await
        };
        tasks.spawn(async move {
            let mut mine = Vec::new();
            // Bounded: 200 deliveries in batches of 7 need at most 29 rounds each.
            for _ in 0..1000 {
                let claims = store.claim_due(7, LEASE).await.expect("claim");
                if claims.is_empty() {
                    break;
                }
                mine.extend(claims.into_iter().map(|c| c.delivery_id));
                tokio::task::yield_now().await;
            }
            mine
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.expect("task"));
    }
    let unique: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a delivery was claimed twice");
    assert_eq!(all.len(), DELIVERIES, "every delivery is claimed once");
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());
    assert_eq!(pending(s).await, DELIVERIES as i64);
}

async fn outcomes_finish_retry_and_number_attempts(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    new_webhook(s, p.id, "session.end").await;
    let event = publish(s, p.id, "session.end").await;
    let t0 = now_micros();

    let c1 = claim_one(s).await;
    assert_eq!(c1.attempts_made, 0);
    record(
        s,
        &[outcome(&c1, AttemptStatus::Failed, t0, Some(now_micros()))],
        NEVER_DISABLE,
    )
    .await;
    let c2 = claim_one(s).await;
    assert_eq!(c2.attempts_made, 1);
    assert_eq!(c2.delivery_id, c1.delivery_id);
    let t1 = t0 + chrono::Duration::milliseconds(1);
    record(
        s,
        &[outcome(&c2, AttemptStatus::Failed, t1, Some(now_micros()))],
        NEVER_DISABLE,
    )
    .await;
    let c3 = claim_one(s).await;
    assert_eq!(c3.attempts_made, 2);
    let t2 = t0 + chrono::Duration::milliseconds(2);
    record(
        s,
        &[outcome(&c3, AttemptStatus::Success, t2, None)],
        NEVER_DISABLE,
    )
    .await;
    // Succeeded: nothing left to do.
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());
    assert_eq!(pending(s).await, 0);
    assert_eq!(s.next_due().await.unwrap(), None);

    let attempts = all_attempts(s, p.id, "session.end").await;
    let numbers: Vec<i64> = attempts.iter().map(|a| a.attempt_number).collect();
    assert_eq!(numbers, vec![3, 2, 1]);
    let statuses: Vec<AttemptStatus> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        vec![
            AttemptStatus::Success,
            AttemptStatus::Failed,
            AttemptStatus::Failed
        ]
    );
    assert!(attempts.iter().all(|a| a.event_id == event.event_id));
    assert_eq!(attempts[0].response_code, 200);
    assert_eq!(attempts[2].response_code, 503);
    assert_eq!(
        attempts[2].error_message.as_deref(),
        Some("service unavailable")
    );
    assert_eq!(attempts[0].request_body, b"{\"n\":1}".to_vec());

    // A final failure also finishes the delivery.
    publish(s, p.id, "session.end").await;
    let c = claim_one(s).await;
    record(
        s,
        &[outcome(&c, AttemptStatus::Failed, now_micros(), None)],
        NEVER_DISABLE,
    )
    .await;
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());
    assert_eq!(pending(s).await, 0);
    assert_eq!(all_attempts(s, p.id, "session.end").await.len(), 4);
}

async fn failing_webhook_is_disabled_by_policy(db: Arc<TestDb>) {
    let s = &*db.store;
    let policy = DisablePolicy {
        failures: 3,
        min_age: Duration::from_secs(3600),
        exhausted_window: Duration::from_secs(3600),
    };
    let p = new_project(s).await;
    let (hook, _) = new_webhook(s, p.id, "session.end").await;
    publish(s, p.id, "session.end").await;
    let base = now_micros() - chrono::Duration::hours(3);

    // Three failures within 45 minutes: enough failures, not for long enough.
    for minutes in [0, 30, 45] {
        let c = claim_one(s).await;
        let at = base + chrono::Duration::minutes(minutes);
        let disabled = record(
            s,
            &[outcome(&c, AttemptStatus::Failed, at, Some(now_micros()))],
            policy,
        )
        .await;
        assert_eq!(disabled, Vec::<Uuid>::new());
    }
    assert!(
        s.get_webhook(p.id, "session.end")
            .await
            .unwrap()
            .unwrap()
            .is_active
    );

    // Another event waits in the queue when the streak reaches two hours.
    publish(s, p.id, "session.end").await;
    let claims = s.claim_due(1, LEASE).await.unwrap();
    let disabled = record(
        s,
        &[outcome(
            &claims[0],
            AttemptStatus::Failed,
            base + chrono::Duration::hours(2),
            Some(now_micros()),
        )],
        policy,
    )
    .await;
    assert_eq!(disabled, vec![hook.id]);
    let off = s.get_webhook(p.id, "session.end").await.unwrap().unwrap();
    assert!(!off.is_active);
    // Its pending deliveries are cancelled, including the retry just scheduled.
    assert_eq!(pending(s).await, 0);
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());
    assert_eq!(all_attempts(s, p.id, "session.end").await.len(), 4);

    // Re-enabled by an upsert, with a fresh streak: one failure does not disable it.
    let (again, _) = upsert(s, p.id, "session.end", "https://fixed.example/").await;
    assert!(matches!(again, UpsertOutcome::Updated { ref webhook } if webhook.is_active));
    publish(s, p.id, "session.end").await;
    let c = claim_one(s).await;
    let disabled = fail_now(s, &c, policy).await;
    assert_eq!(disabled, Vec::<Uuid>::new());
    assert!(
        s.get_webhook(p.id, "session.end")
            .await
            .unwrap()
            .unwrap()
            .is_active
    );
}

/// A 410 disables at once, whatever the policy, and cancels the other deliveries in
/// the same transaction. A 410 recorded after its delivery was cancelled (lease gone)
/// is stale like any other outcome: it does not disable the webhook re-enabled since.
async fn gone_disables_at_once_and_a_late_gone_changes_nothing(db: Arc<TestDb>) {
    let s = &*db.store;
    let policy = DisablePolicy {
        failures: 100,
        min_age: Duration::from_secs(3600),
        exhausted_window: Duration::from_secs(3600),
    };
    let p = new_project(s).await;
    let (hook, _) = new_webhook(s, p.id, "user.left").await;
    publish(s, p.id, "user.left").await;
    publish(s, p.id, "user.left").await;
    let claims = s.claim_due(10, LEASE).await.unwrap();
    assert_eq!(claims.len(), 2);
    let gone = |c: &ClaimedDelivery| DeliveryOutcome {
        disable_webhook: true,
        ..outcome(c, AttemptStatus::Failed, now_micros(), None)
    };

    assert_eq!(record(s, &[gone(&claims[0])], policy).await, vec![hook.id]);
    assert!(
        !s.get_webhook(p.id, "user.left")
            .await
            .unwrap()
            .unwrap()
            .is_active
    );
    assert_eq!(pending(s).await, 0, "the other delivery is cancelled");

    upsert(s, p.id, "user.left", "https://back.example/").await;
    assert_eq!(
        record(s, &[gone(&claims[1])], policy).await,
        Vec::<Uuid>::new()
    );
    assert!(
        s.get_webhook(p.id, "user.left")
            .await
            .unwrap()
            .unwrap()
            .is_active
    );
    assert_eq!(all_attempts(s, p.id, "user.left").await.len(), 2);
}

async fn success_resets_the_failure_streak(db: Arc<TestDb>) {
    let s = &*db.store;
    let policy = DisablePolicy {
        failures: 3,
        min_age: Duration::ZERO,
        exhausted_window: Duration::from_secs(3600),
    };
    let p = new_project(s).await;
    let (hook, _) = new_webhook(s, p.id, "session.end").await;
    let t = now_micros();

    let step = |i: i64| t + chrono::Duration::milliseconds(i);
    // Two failures, a success, two failures: never three in a row.
    for (i, status) in [
        AttemptStatus::Failed,
        AttemptStatus::Failed,
        AttemptStatus::Success,
        AttemptStatus::Failed,
        AttemptStatus::Failed,
    ]
    .into_iter()
    .enumerate()
    {
        // A success finishes its delivery; the next step needs a new event.
        if pending(s).await == 0 {
            publish(s, p.id, "session.end").await;
        }
        let c = claim_one(s).await;
        let at = step(i as i64);
        let retry = (status == AttemptStatus::Failed).then(now_micros);
        let disabled = record(s, &[outcome(&c, status, at, retry)], policy).await;
        assert_eq!(disabled, Vec::<Uuid>::new(), "step {i}");
    }
    assert!(
        s.get_webhook(p.id, "session.end")
            .await
            .unwrap()
            .unwrap()
            .is_active
    );

    // The third failure in a row disables it.
    let c = claim_one(s).await;
    let disabled = record(
        s,
        &[outcome(&c, AttemptStatus::Failed, step(10), None)],
        policy,
    )
    .await;
    assert_eq!(disabled, vec![hook.id]);
}

async fn release_makes_claims_available_at_once(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    new_webhook(s, p.id, "session.end").await;
    publish(s, p.id, "session.end").await;
    publish(s, p.id, "session.end").await;

    let claims = s.claim_due(10, LEASE).await.unwrap();
    assert_eq!(claims.len(), 2);
    s.release(&[], Utc::now()).await.unwrap();
    // A token that does not match releases nothing.
    s.release(&[(claims[0].delivery_id, Uuid::new_v4())], Utc::now())
        .await
        .unwrap();
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());

    let handed_back: Vec<(Uuid, Uuid)> = claims
        .iter()
        .map(|c| (c.delivery_id, c.lease_token))
        .collect();
    s.release(&handed_back, Utc::now()).await.unwrap();
    let reclaimed = s.claim_due(10, LEASE).await.unwrap();
    let before: HashSet<Uuid> = claims.iter().map(|c| c.delivery_id).collect();
    let after: HashSet<Uuid> = reclaimed.iter().map(|c| c.delivery_id).collect();
    assert_eq!(before, after);
    assert!(reclaimed.iter().all(|c| c.attempts_made == 0));

    // The old tokens are dead: their outcomes are stale.
    let stale = outcome(&claims[0], AttemptStatus::Success, now_micros(), None);
    record(s, &[stale], NEVER_DISABLE).await;
    assert_eq!(pending(s).await, 2);

    // Handed back due later (a deferral): not claimable before that, claimable after.
    let deferred: Vec<(Uuid, Uuid)> = reclaimed
        .iter()
        .map(|c| (c.delivery_id, c.lease_token))
        .collect();
    s.release(&deferred, Utc::now() + chrono::Duration::milliseconds(300))
        .await
        .unwrap();
    assert!(s.claim_due(10, LEASE).await.unwrap().is_empty());
    let due = s.next_due().await.unwrap().expect("pending deliveries");
    assert!(due > Utc::now());
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    assert_eq!(s.claim_due(10, LEASE).await.unwrap().len(), 2);
}

async fn attempts_page_newest_first(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    new_webhook(s, p.id, "session.end").await;
    new_webhook(s, p.id, "other.type").await;
    publish(s, p.id, "session.end").await;
    publish(s, p.id, "other.type").await;
    let claims = s.claim_due(10, LEASE).await.unwrap();
    let claim = claims
        .iter()
        .find(|c| c.event_type == "session.end")
        .expect("claim");
    let other = claims
        .iter()
        .find(|c| c.event_type == "other.type")
        .expect("claim");

    // Several attempts share a timestamp, so the id must break the tie. Outcomes with
    // a dead lease are a convenient way to store attempts without moving the delivery.
    let base = now_micros() - chrono::Duration::minutes(10);
    let mut stored = Vec::new();
    let mut outcomes = Vec::new();
    for (n, secs) in [0i64, 1, 2, 3, 3, 3, 5].into_iter().enumerate() {
        let mut o = outcome(
            claim,
            AttemptStatus::Failed,
            base + chrono::Duration::seconds(secs),
            None,
        );
        o.lease_token = Uuid::new_v4();
        o.attempt.id = Uuid::new_v4();
        o.attempt.attempt_number = n as i64 + 1;
        o.attempt.response_body = None;
        o.attempt.request_body = vec![0, 159, 146, 150, n as u8];
        // Listed as the store derives it: a published delivery's first try, then retries.
        o.attempt.trigger = Some(if n == 0 {
            AttemptTrigger::Publish
        } else {
            AttemptTrigger::Retry
        });
        stored.push(o.attempt.clone());
        outcomes.push(o);
    }
    let mut o = outcome(other, AttemptStatus::Success, base, None);
    o.lease_token = Uuid::new_v4();
    outcomes.push(o);
    record(s, &outcomes, NEVER_DISABLE).await;

    let mut expected = stored;
    expected.sort_by_key(|a| std::cmp::Reverse((a.created_at, a.id)));

    let page = |limit, offset| AttemptPage::Offset { limit, offset };
    let list = |pg: AttemptPage| async move {
        s.list_attempts(p.id, "session.end", pg, NO_PAGE_BUDGET)
            .await
            .map(|l| l.attempts)
    };
    let more = |pg: AttemptPage| async move {
        s.list_attempts(p.id, "session.end", pg, NO_PAGE_BUDGET)
            .await
            .map(|l| l.has_more)
    };
    assert_eq!(list(page(500, 0)).await.unwrap(), expected);
    assert_eq!(list(page(3, 0)).await.unwrap(), expected[0..3]);
    assert_eq!(list(page(3, 3)).await.unwrap(), expected[3..6]);
    assert_eq!(list(page(3, 6)).await.unwrap(), expected[6..7]);
    assert_eq!(list(page(3, 7)).await.unwrap(), vec![]);
    assert!(more(page(3, 3)).await.unwrap());
    assert!(
        !more(page(3, 4)).await.unwrap(),
        "the page ends at the last one"
    );
    assert!(!more(page(500, 0)).await.unwrap());

    // Keyset: walk the whole list three at a time.
    let mut walked = Vec::new();
    let mut cursor: Option<(DateTime<Utc>, Uuid)> = None;
    for _ in 0..10 {
        let batch = match cursor {
            None => list(page(3, 0)).await.unwrap(),
            Some((created_at, id)) => list(AttemptPage::After {
                limit: 3,
                created_at,
                id,
            })
            .await
            .unwrap(),
        };
        let Some(last) = batch.last() else { break };
        cursor = Some((last.created_at, last.id));
        walked.extend(batch);
    }
    assert_eq!(walked, expected);

    // Strictly after: starting at the middle of the tie skips exactly what precedes it.
    let mid = &expected[3];
    assert_eq!(
        list(AttemptPage::After {
            limit: 500,
            created_at: mid.created_at,
            id: mid.id
        })
        .await
        .unwrap(),
        expected[4..]
    );
    assert_eq!(all_attempts(s, p.id, "other.type").await.len(), 1);
}

async fn attempts_page_ends_at_its_byte_budget(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    new_webhook(s, p.id, "session.end").await;
    publish(s, p.id, "session.end").await;
    let claim = claim_one(s).await;

    // Attempts of 10 KiB to 40 KiB of request body and 2 KiB of answer, recorded
    // with a dead lease so the delivery stays as it is.
    let base = now_micros() - chrono::Duration::minutes(10);
    let mut outcomes = Vec::new();
    for n in 0..8i64 {
        let mut o = outcome(
            &claim,
            AttemptStatus::Failed,
            base + chrono::Duration::seconds(n),
            None,
        );
        o.lease_token = Uuid::new_v4();
        o.attempt.attempt_number = n + 1;
        o.attempt.request_body = vec![b'x'; 10_240 * (1 + n as usize % 4)];
        o.attempt.response_body = Some("r".repeat(2048));
        outcomes.push(o);
    }
    record(s, &outcomes, NEVER_DISABLE).await;
    let all = all_attempts(s, p.id, "session.end").await;
    assert_eq!(all.len(), 8);
    // The estimate of ATTEMPT_COST_SQL, written out.
    let cost = |a: &Attempt| {
        4 * a.request_body.len().div_ceil(3)
            + a.response_body.as_ref().map_or(0, String::len)
            + a.error_message.as_ref().map_or(0, String::len)
            + a.webhook_url.len()
            + a.event_type.len()
            + 400
    };
    let list = |page: AttemptPage, max_bytes: usize| async move {
        s.list_attempts(p.id, "session.end", page, max_bytes)
            .await
            .expect("list")
    };

    // A budget of the first three (and a bit): three attempts, more to come.
    let budget = all[..3].iter().map(cost).sum::<usize>() + 100;
    let first = list(
        AttemptPage::Offset {
            limit: 500,
            offset: 0,
        },
        budget,
    )
    .await;
    assert_eq!(first.attempts, all[..3]);
    assert!(first.has_more);
    // Exactly on the budget still fits.
    let exact = all[..3].iter().map(cost).sum::<usize>();
    let on_the_edge = list(
        AttemptPage::Offset {
            limit: 500,
            offset: 0,
        },
        exact,
    )
    .await;
    assert_eq!(on_the_edge.attempts, all[..3]);
    let short = list(
        AttemptPage::Offset {
            limit: 500,
            offset: 0,
        },
        exact - 1,
    )
    .await;
    assert_eq!(short.attempts, all[..2]);
    assert!(short.has_more);

    // Walking by keyset with that budget lists every attempt once, in order.
    let mut walked = first.attempts.clone();
    let mut pages = 1;
    let mut more = first.has_more;
    while more {
        assert!(pages < all.len(), "the walk does not end");
        let last = walked.last().expect("a page lists at least one attempt");
        let next = list(
            AttemptPage::After {
                limit: 500,
                created_at: last.created_at,
                id: last.id,
            },
            budget,
        )
        .await;
        assert!(!next.attempts.is_empty());
        let size: usize = next.attempts.iter().map(cost).sum();
        assert!(size <= budget, "page of {size} bytes over {budget}");
        more = next.has_more;
        walked.extend(next.attempts);
        pages += 1;
    }
    assert_eq!(walked, all);
    assert!(pages >= 3, "{pages} pages");

    // A budget smaller than any attempt: one attempt a page, never none.
    for (offset, expected) in all.iter().enumerate() {
        let one = list(
            AttemptPage::Offset {
                limit: 500,
                offset: offset as i64,
            },
            1,
        )
        .await;
        assert_eq!(one.attempts, std::slice::from_ref(expected));
        assert_eq!(one.has_more, offset + 1 < all.len(), "offset {offset}");
    }
    // The limit still applies within the budget, and says more follow.
    let limited = list(
        AttemptPage::Offset {
            limit: 2,
            offset: 5,
        },
        NO_PAGE_BUDGET,
    )
    .await;
    assert_eq!(limited.attempts, all[5..7]);
    assert!(limited.has_more);
    let empty = list(
        AttemptPage::Offset {
            limit: 500,
            offset: 8,
        },
        1,
    )
    .await;
    assert_eq!(empty, AttemptList::default());
}

async fn webhook_limit_refuses_creates_not_updates(db: Arc<TestDb>) {
    const LIMIT: usize = 3;
    let s = &*db.store;
    let p = new_project(s).await;
    let other = new_project(s).await;
    for n in 0..LIMIT {
        let (created, _) =
            upsert_limited(s, p.id, &format!("type.{n}"), "https://a.example/", LIMIT).await;
        assert!(
            matches!(created, Ok(UpsertOutcome::Created { .. })),
            "{created:?}"
        );
    }
    let (refused, _) = upsert_limited(s, p.id, "type.extra", "https://a.example/", LIMIT).await;
    match refused {
        Err(StoreError::Conflict(detail)) => {
            assert!(detail.contains("limit of 3 webhooks"), "{detail}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(s.get_webhook(p.id, "type.extra").await.unwrap(), None);
    assert_eq!(s.list_webhooks(p.id).await.unwrap().len(), LIMIT);

    // Updating one of them is not a create, even at the limit or above it.
    for limit in [LIMIT, 1] {
        let (updated, _) = upsert_limited(s, p.id, "type.0", "https://b.example/", limit).await;
        match updated {
            Ok(UpsertOutcome::Updated { webhook }) => {
                assert_eq!(webhook.webhook_url, "https://b.example/")
            }
            other => panic!("expected an update, got {other:?}"),
        }
    }
    // The limit is per project, and a delete makes room.
    let (elsewhere, _) =
        upsert_limited(s, other.id, "type.extra", "https://a.example/", LIMIT).await;
    assert!(matches!(elsewhere, Ok(UpsertOutcome::Created { .. })));
    assert!(s.delete_webhook(p.id, "type.1").await.unwrap());
    let (room, _) = upsert_limited(s, p.id, "type.extra", "https://a.example/", LIMIT).await;
    assert!(
        matches!(room, Ok(UpsertOutcome::Created { .. })),
        "{room:?}"
    );
    assert_eq!(s.list_webhooks(p.id).await.unwrap().len(), LIMIT);
}

async fn concurrent_creates_stop_at_the_webhook_limit(db: Arc<TestDb>) {
    const LIMIT: usize = 5;
    const RACERS: usize = 20;
    let p = new_project(&*db.store).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        // Half the racers use a second handle, as another process would.
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            db.open_another().await
        };
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let event_type = format!("race.{i}");
            upsert_limited(&*store, p.id, &event_type, "https://r.example/", LIMIT)
                .await
                .0
        });
    }
    let (mut created, mut refused) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task") {
            Ok(UpsertOutcome::Created { .. }) => created += 1,
            Err(StoreError::Conflict(_)) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((created, refused), (LIMIT, RACERS - LIMIT));
    assert_eq!(db.store.list_webhooks(p.id).await.unwrap().len(), LIMIT);
}

async fn projects_are_isolated(db: Arc<TestDb>) {
    let s = &*db.store;
    let p1 = new_project(s).await;
    let p2 = new_project(s).await;
    assert_ne!(p1.tenant_id, p2.tenant_id);
    let (_, _) = upsert(s, p1.id, "session.end", "https://one.example/").await;
    let (_, _) = upsert(s, p2.id, "session.end", "https://two.example/").await;
    let (created, _) = upsert(s, p2.id, "session.end", "https://two.example/v2").await;
    assert!(matches!(created, UpsertOutcome::Updated { .. }));

    let list1 = s.list_webhooks(p1.id).await.unwrap();
    let list2 = s.list_webhooks(p2.id).await.unwrap();
    assert_eq!(list1.len(), 1);
    assert_eq!(list2.len(), 1);
    assert_eq!(list1[0].webhook_url, "https://one.example/");
    assert_eq!(list2[0].webhook_url, "https://two.example/v2");
    assert_ne!(list1[0].id, list2[0].id);

    let published = publish(s, p1.id, "session.end").await;
    assert_eq!(published.deliveries, 1);
    let claim = claim_one(s).await;
    assert_eq!(claim.webhook_id, list1[0].id);
    assert_eq!(claim.project_id, p1.id);
    record(
        s,
        &[outcome(&claim, AttemptStatus::Success, now_micros(), None)],
        NEVER_DISABLE,
    )
    .await;
    assert_eq!(all_attempts(s, p1.id, "session.end").await.len(), 1);
    assert_eq!(all_attempts(s, p2.id, "session.end").await, vec![]);

    assert!(s.delete_webhook(p1.id, "session.end").await.unwrap());
    assert_eq!(s.list_webhooks(p1.id).await.unwrap(), vec![]);
    assert_eq!(s.list_webhooks(p2.id).await.unwrap(), list2);
    assert!(!s
        .rotate_secret(
            p1.id,
            "session.end",
            &SigningSecret::generate(),
            Duration::ZERO
        )
        .await
        .unwrap());
}

async fn queue_stats_and_next_due(db: Arc<TestDb>) {
    let s = &*db.store;
    s.ping().await.unwrap();
    assert_eq!(s.queue_stats().await.unwrap(), QueueStats::default());
    assert_eq!(s.next_due().await.unwrap(), None);

    let p = new_project(s).await;
    new_webhook(s, p.id, "session.end").await;
    publish(s, p.id, "session.end").await;
    let second = publish(s, p.id, "session.end").await;
    let stats = s.queue_stats().await.unwrap();
    assert_eq!(stats.pending, 2);
    assert!(stats.oldest_due_age.is_some());
    let due = s.next_due().await.unwrap().expect("due");
    assert!(due <= now_micros());

    let first = s.claim_due(1, LEASE).await.unwrap().remove(0);
    // Still pending while in flight; the other one is what is due next.
    assert_eq!(s.queue_stats().await.unwrap().pending, 2);
    assert_eq!(s.next_due().await.unwrap(), Some(second.created_at));

    let retry_at = now_micros() + chrono::Duration::hours(1);
    record(
        s,
        &[outcome(
            &first,
            AttemptStatus::Failed,
            now_micros(),
            Some(retry_at),
        )],
        NEVER_DISABLE,
    )
    .await;
    let other = claim_one(s).await;
    record(
        s,
        &[outcome(&other, AttemptStatus::Success, now_micros(), None)],
        NEVER_DISABLE,
    )
    .await;
    assert_eq!(
        s.queue_stats().await.unwrap(),
        QueueStats {
            pending: 1,
            oldest_due_age: None
        }
    );
    assert_eq!(s.next_due().await.unwrap(), Some(truncate_micros(retry_at)));
}

async fn resend_queues_one_new_delivery_and_attempts_say_why(db: Arc<TestDb>) {
    let s = &*db.store;
    let p = new_project(s).await;
    let other = new_project(s).await;
    let (hook, _) = new_webhook(s, p.id, "session.end").await;
    new_webhook(s, p.id, "memory.created").await;
    new_webhook(s, other.id, "session.end").await;
    let event = publish(s, p.id, "session.end").await.event_id;
    let theirs = publish(s, other.id, "session.end").await.event_id;
    let claims = s.claim_due(10, LEASE).await.unwrap();
    assert_eq!(claims.len(), 2);
    let ours = claims.iter().find(|c| c.event_id == event).unwrap();
    let first = outcome(ours, AttemptStatus::Success, now_micros(), None);
    record(s, &[first], NEVER_DISABLE).await;
    assert_eq!(
        pending(s).await,
        1,
        "the other project's delivery is still leased"
    );

    // Another project's event, another event type's webhook, no such event or webhook.
    for (project, event_type, id, expected) in [
        (p.id, "session.end", theirs, ResendOutcome::NoEvent),
        (p.id, "memory.created", event, ResendOutcome::NoEvent),
        (p.id, "session.end", Uuid::now_v7(), ResendOutcome::NoEvent),
        (p.id, "never.registered", event, ResendOutcome::NoWebhook),
        (other.id, "session.end", event, ResendOutcome::NoEvent),
    ] {
        let got = s.resend_event(project, event_type, id).await.unwrap();
        assert_eq!(got, expected, "{event_type} {id}");
    }
    assert_eq!(pending(s).await, 1, "refused resends queue nothing");

    // A succeeded event is delivered again: same event, data and webhook.
    let before = now_micros();
    let ResendOutcome::Queued {
        delivery_id,
        queued_at,
    } = s.resend_event(p.id, "session.end", event).await.unwrap()
    else {
        panic!("expected the resend to be queued");
    };
    assert!(queued_at >= before);
    let again = claim_one(s).await;
    assert_eq!(again.delivery_id, delivery_id);
    assert_eq!((again.event_id, again.webhook_id), (event, hook.id));
    assert_eq!(again.data, "{\"n\":1}");
    assert_eq!(again.attempts_made, 0);
    // It fails once and is retried.
    let failed = outcome(
        &again,
        AttemptStatus::Failed,
        now_micros(),
        Some(now_micros()),
    );
    record(s, &[failed], NEVER_DISABLE).await;
    let retried = claim_one(s).await;
    assert_eq!(retried.delivery_id, delivery_id);
    let ok = outcome(&retried, AttemptStatus::Success, now_micros(), None);
    record(s, &[ok], NEVER_DISABLE).await;

    let attempts = all_attempts(s, p.id, "session.end").await;
    let seen: Vec<(i64, Option<AttemptTrigger>)> = attempts
        .iter()
        .map(|a| (a.attempt_number, a.trigger))
        .collect();
    assert_eq!(
        seen,
        [
            (2, Some(AttemptTrigger::Retry)),
            (1, Some(AttemptTrigger::Resend)),
            (1, Some(AttemptTrigger::Publish)),
        ],
        "newest first"
    );
    assert!(attempts.iter().all(|a| a.event_id == event));

    // A disabled webhook refuses, and queues nothing.
    new_webhook(s, p.id, "disabled.soon").await;
    let doomed = publish(s, p.id, "disabled.soon").await.event_id;
    let c = claim_one(s).await;
    let disable_at_once = DisablePolicy {
        failures: 1,
        min_age: Duration::ZERO,
        exhausted_window: Duration::from_secs(3600),
    };
    let failed = outcome(&c, AttemptStatus::Failed, now_micros(), Some(now_micros()));
    assert_eq!(record(s, &[failed], disable_at_once).await.len(), 1);
    assert_eq!(
        s.resend_event(p.id, "disabled.soon", doomed).await.unwrap(),
        ResendOutcome::Inactive
    );
    assert_eq!(pending(s).await, 1, "only the other project's delivery");
}

async fn recording_the_same_batch_twice_counts_once(db: Arc<TestDb>) {
    let s = &*db.store;
    let policy = DisablePolicy {
        failures: 2,
        min_age: Duration::ZERO,
        exhausted_window: Duration::from_secs(3600),
    };
    let p = new_project(s).await;
    new_webhook(s, p.id, "session.end").await;
    publish(s, p.id, "session.end").await;
    let c = claim_one(s).await;
    let batch = [outcome(
        &c,
        AttemptStatus::Failed,
        now_micros(),
        Some(now_micros()),
    )];
    record(s, &batch, policy).await;
    // As after a commit whose acknowledgement was lost: the same batch again.
    assert_eq!(record(s, &batch, policy).await, Vec::<Uuid>::new());
    assert_eq!(all_attempts(s, p.id, "session.end").await.len(), 1);
    assert_eq!(claim_one(s).await.attempts_made, 1);
    assert!(
        s.get_webhook(p.id, "session.end")
            .await
            .unwrap()
            .unwrap()
            .is_active
    );
}

// --- backend-specific -----------------------------------------------------------------

#[tokio::test]
async fn sqlite_accepts_a_bare_path_and_keeps_data_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a/b/webhooks.db");
    let path = path.to_str().expect("utf-8 path");
    let store = SqliteStore::connect(path).await.expect("connect");
    let tenant = store.create_tenant("kept").await.unwrap();
    store.close().await;
    assert!(std::path::Path::new(path).is_file());

    let reopened = SqliteStore::connect(&format!("sqlite://{path}"))
        .await
        .expect("reopen");
    assert_eq!(reopened.list_tenants().await.unwrap(), vec![tenant]);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(
            &sqlx::SqlitePool::connect(&format!("sqlite://{path}"))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

/// [`claim_all_due`] on `store`: everything due, or nothing while more is due than
/// fits.
async fn a_claim_of_all_due_takes_all_or_nothing<B: common::BackendOps>(
    store: &B,
    s: &dyn WebhookStore,
) {
    let (noisy, quiet) = noisy_and_quiet(s).await;
    for _ in 0..3 {
        publish(s, quiet.id, "fresh").await;
    }
    // 43 due: a claim of 42 takes none of them.
    let none = claim_all_due(store, &[], 42, LEASE).await.unwrap();
    assert!(none.is_none(), "more were due than fit: {none:?}");
    // Skipping the backlog, the quiet project's three fit.
    let (claimed, next) = claim_all_due(store, &[noisy.id], 10, LEASE)
        .await
        .unwrap()
        .expect("the quiet project's deliveries fit");
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|c| c.project_id == quiet.id));
    assert!(next.is_some(), "it tells the next due time");
    // The backlog's 40 do not fit in 39; they fit in 40 (so the claims that did not
    // fit leased nothing), and then nothing is due.
    let none = claim_all_due(store, &[], 39, LEASE).await.unwrap();
    assert!(none.is_none(), "one more was due than fit");
    let (claimed, next) = claim_all_due(store, &[], 40, LEASE)
        .await
        .unwrap()
        .expect("all that is due fits");
    assert_eq!(claimed.len(), 40);
    let Some(NextDue(Some(after))) = next else {
        panic!("the leases come due again: {next:?}");
    };
    assert!(after > Utc::now(), "nothing is due now");
    let (claimed, next) = claim_all_due(store, &[], 10, LEASE)
        .await
        .unwrap()
        .expect("nothing due fits");
    assert!(claimed.is_empty());
    assert!(
        matches!(next, Some(NextDue(Some(at))) if at > Utc::now()),
        "with nothing due it tells when the leases run out: {next:?}"
    );
}

/// A store on a SQLite file of its own, with the file's keeper (which deletes it
/// when dropped).
async fn fresh_sqlite() -> (FreshDb, SqliteStore) {
    let fresh = FreshDb::sqlite();
    let store = SqliteStore::connect(&fresh.url)
        .await
        .expect("connect sqlite");
    (fresh, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_tries_all_due_only_when_nothing_is_left_out_and_it_was_quiet() {
    let (_fresh, store) = fresh_sqlite().await;
    let (noisy, quiet) = noisy_and_quiet(&store).await;
    let scans = std::sync::atomic::AtomicUsize::new(0);
    let claim = |skip: Vec<Uuid>| {
        let (store, scans) = (&store, &scans);
        async move {
            let scan = || async {
                scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                common::BackendOps::tables(store)
                    .pending_projects(Utc::now())
                    .await
            };
            let batch = claim_fairly(store, scan, 100, LEASE, &skip).await.unwrap();
            let scanned = scans.swap(0, std::sync::atomic::Ordering::Relaxed) > 0;
            (batch.deliveries.len(), scanned)
        }
    };
    // A project left out (at its share of the slots): its due backlog lies across the
    // oldest-first walk, so the fair claim reads the quiet project's own range.
    publish(&store, quiet.id, "fresh").await;
    assert_eq!(claim(vec![noisy.id]).await, (1, true));
    // Nothing left out, the last claim a quiet one: all 40 due fit, no scan.
    assert_eq!(claim(Vec::new()).await, (40, false));
    // That claim was a busy one (16 or more): the next goes through the fair scan.
    publish(&store, quiet.id, "fresh").await;
    assert_eq!(claim(Vec::new()).await, (1, true));
    // Which was quiet again.
    publish(&store, quiet.id, "fresh").await;
    assert_eq!(claim(Vec::new()).await, (1, false));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_claim_of_all_due_takes_all_or_nothing() {
    let (_fresh, store) = fresh_sqlite().await;
    a_claim_of_all_due_takes_all_or_nothing(&store, &store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_claim_of_all_due_takes_all_or_nothing() {
    in_pg_schema(|options| async move {
        let store = PgStore::connect_with(options, 2).await.unwrap();
        a_claim_of_all_due_takes_all_or_nothing(&store, &store).await;
    })
    .await;
}

/// The WAL's checkpoint sequence number (its header's fourth field), which goes up each
/// time the WAL starts over from its beginning.
fn wal_restarts(wal: &std::path::Path) -> u32 {
    let header = std::fs::read(wal).expect("read the WAL");
    u32::from_be_bytes(header[12..16].try_into().expect("a WAL header"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_wal_starts_over_under_steady_writes() {
    // Publishers that never pause keep a write in progress nearly all the time, so a
    // checkpoint's copy always ends with a commit running across it. The WAL must
    // still start over (not grow for as long as the writes go on).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("webhooks.db");
    let store = Arc::new(
        SqliteStore::connect(path.to_str().expect("utf-8 path"))
            .await
            .expect("connect"),
    );
    let project = new_project(store.as_ref()).await;
    new_webhook(store.as_ref(), project.id, "steady.write").await;
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    let publishers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut published = 0_u64;
                while tokio::time::Instant::now() < until {
                    publish(store.as_ref(), project.id, "steady.write").await;
                    published += 1;
                }
                published
            })
        })
        .collect();
    let mut published = 0;
    for publisher in publishers {
        published += publisher.await.expect("publisher");
    }
    let wal = dir.path().join("webhooks.db-wal");
    let restarts = wal_restarts(&wal);
    assert!(
        restarts > 0,
        "the WAL never started over in 3.5 s of {published} publishes ({} bytes)",
        std::fs::metadata(&wal).expect("WAL").len()
    );
    store.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_database_works() {
    let store = SqliteStore::connect("sqlite::memory:")
        .await
        .expect("connect");
    assert!(store.is_empty().await.unwrap());
    let tenant = store.create_tenant("mem").await.unwrap();
    assert_eq!(store.list_tenants().await.unwrap(), vec![tenant]);
}

/// Runs `case` on a fresh schema of the test PostgreSQL (when there is one), then
/// drops the schema however the case ends.
async fn in_pg_schema<F, Fut>(case: F)
where
    F: FnOnce(PgConnectOptions) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = test_database_url() else {
        return;
    };
    let schema = PgSchema::create(&url).await;
    let result = AssertUnwindSafe(case(schema.options()))
        .catch_unwind()
        .await;
    schema.drop_schema().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retention_runs_in_one_process_at_a_time() {
    in_pg_schema(|options| async move {
        let first = PgStore::connect_with(options.clone(), 2).await.unwrap();
        let second = PgStore::connect_with(options, 2).await.unwrap();
        let held = first
            .retention_lock()
            .await
            .unwrap()
            .expect("free at first");
        assert!(
            second.retention_lock().await.unwrap().is_none(),
            "held by the first"
        );
        held.release().await;
        let taken = second
            .retention_lock()
            .await
            .unwrap()
            .expect("free once let go");
        // A holder that goes away without letting go (a dead process) frees it too.
        drop(taken);
        let again = support_poll(|| async { first.retention_lock().await.unwrap() }).await;
        again.release().await;
        first.close().await;
        second.close().await;
    })
    .await;
}

/// Polls `f` for up to 5 s until it answers something.
async fn support_poll<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(found) = f().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still not there after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_lost_while_idle_are_replaced_before_use() {
    in_pg_schema(|options| async move {
        let name = format!("sonzai-idle-{}", Uuid::new_v4().simple());
        let store = PgStore::connect_with(options.clone().application_name(&name), 2)
            .await
            .unwrap();
        let project = new_project(&store).await;
        // Every backend of the store's pool goes, as in a restart of the database.
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect_with(&options).await.unwrap();
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1) AS k",
        )
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert!(killed >= 1, "the store has a connection to lose");
        tokio::time::sleep(postgres::CHECK_IDLE_AFTER + Duration::from_millis(200)).await;
        // Idle past the check: a lost connection is found and replaced, not used.
        for _ in 0..3 {
            let found = store
                .get_project(project.id)
                .await
                .expect("read after the loss");
            assert_eq!(found.map(|p| p.id), Some(project.id));
        }
        admin.close().await.unwrap();
        store.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_startups_migrate_once() {
    in_pg_schema(|options| async move {
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let options = options.clone();
            starts.spawn(async move { PgStore::connect_with(options, 2).await });
        }
        let mut stores = Vec::new();
        while let Some(joined) = starts.join_next().await {
            stores.push(joined.expect("task").expect("concurrent connect"));
        }
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(stores[0].pool())
            .await
            .unwrap();
        // Each migration once, not once per process.
        let migrations = sqlx::migrate!("./migrations/postgres").iter().count();
        assert_eq!(applied, i64::try_from(migrations).unwrap());
        assert!(migrations >= 11);
        for store in stores {
            store.close().await;
        }
    })
    .await;
}

// --- the failure-streak rule --------------------------------------------------------------

#[test]
fn streak_needs_both_enough_failures_and_enough_time() {
    let policy = DisablePolicy {
        failures: 3,
        min_age: Duration::from_secs(60),
        exhausted_window: Duration::from_secs(3600),
    };
    let t = now_micros();
    let at = |secs| t + chrono::Duration::seconds(secs);
    let mut streak = FailureStreak {
        consecutive_failures: 0,
        first_failure_at: None,
        is_active: true,
    };
    assert!(!streak.record(AttemptStatus::Failed, at(0), policy));
    assert_eq!(streak.first_failure_at, Some(at(0)));
    assert!(!streak.record(AttemptStatus::Failed, at(10), policy));
    // Three failures, but only 20 s apart.
    assert!(!streak.record(AttemptStatus::Failed, at(20), policy));
    assert_eq!(streak.consecutive_failures, 3);
    assert!(streak.is_active);
    // Old enough now.
    assert!(streak.record(AttemptStatus::Failed, at(60), policy));
    assert!(!streak.is_active);
    assert_eq!(streak.first_failure_at, Some(at(0)));
    // Already off: later failures do not disable it "again".
    assert!(!streak.record(AttemptStatus::Failed, at(90), policy));
}

#[test]
fn streak_is_reset_by_a_success() {
    let policy = DisablePolicy {
        failures: 2,
        min_age: Duration::ZERO,
        exhausted_window: Duration::from_secs(3600),
    };
    let t = now_micros();
    let mut streak = FailureStreak {
        consecutive_failures: 1,
        first_failure_at: Some(t),
        is_active: true,
    };
    assert!(!streak.record(AttemptStatus::Success, t, policy));
    assert_eq!(
        streak,
        FailureStreak {
            consecutive_failures: 0,
            first_failure_at: None,
            is_active: true,
        }
    );
    assert!(!streak.record(AttemptStatus::Failed, t, policy));
    assert!(streak.record(AttemptStatus::Failed, t, policy));
}

#[test]
fn durations_saturate_instead_of_overflowing() {
    let t = now_micros();
    assert_eq!(add_duration(t, Duration::ZERO), t);
    assert_eq!(
        add_duration(t, Duration::from_secs(90)),
        t + chrono::Duration::seconds(90)
    );
    let far = add_duration(t, Duration::MAX);
    assert!(far > t + chrono::Duration::days(365 * 99));
    assert!(far < t + chrono::Duration::days(365 * 101));
}

// --- migrating a database of the previous release -----------------------------------

/// `migrator` without the trigger migration and later ones: the schema the previous
/// release left behind.
fn before_trigger(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let old: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 3)
        .cloned()
        .collect();
    assert_eq!(old.len(), 2);
    migrator.migrations = old.into();
    migrator
}

/// Rows as the previous release stored them on `$pool`: a webhook, an event delivered
/// with one attempt, and an event still pending. Evaluates to the project id. A macro
/// because the statements are the same on both databases but the pools' types are not.
macro_rules! insert_old_rows {
    ($pool:expr) => {{
        let pool = $pool;
        let at = Micros(now_micros() - chrono::Duration::minutes(5));
        let (tenant, project, webhook) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, 'old', $2)")
            .bind(tenant)
            .bind(at)
            .execute(pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO projects (id, tenant_id, name, created_at) VALUES ($1, $2, 'old', $3)",
        )
        .bind(project)
        .bind(tenant)
        .bind(at)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO webhooks (id, project_id, event_type, webhook_url, signing_secret, \
                 is_active, consecutive_failures, created_at, updated_at) \
             VALUES ($1, $2, 'session.end', 'https://old.example/hook', 'whsec_old', true, 0, \
                 $3, $3)",
        )
        .bind(webhook)
        .bind(project)
        .bind(at)
        .execute(pool)
        .await
        .unwrap();
        for (status, made) in [("succeeded", 1i64), ("pending", 0)] {
            let (event, delivery) = (Uuid::now_v7(), Uuid::now_v7());
            sqlx::query(
                "INSERT INTO events (id, project_id, event_type, data, created_at) \
                 VALUES ($1, $2, 'session.end', '{\"old\":true}', $3)",
            )
            .bind(event)
            .bind(project)
            .bind(at)
            .execute(pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, \
                     status, attempts_made, next_attempt_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'session.end', $5, $6, $7, $7, $7)",
            )
            .bind(delivery)
            .bind(event)
            .bind(webhook)
            .bind(project)
            .bind(status)
            .bind(made)
            .bind(at)
            .execute(pool)
            .await
            .unwrap();
            if made > 0 {
                sqlx::query(
                    "INSERT INTO attempts (id, delivery_id, event_id, project_id, event_type, \
                         webhook_url, response_code, duration_ms, attempt_number, status, \
                         request_body, created_at) \
                     VALUES ($1, $2, $3, $4, 'session.end', 'https://old.example/hook', 200, 5, \
                         1, 'success', $5, $6)",
                )
                .bind(Uuid::now_v7())
                .bind(delivery)
                .bind(event)
                .bind(project)
                .bind(b"{\"old\":true}".to_vec())
                .bind(at)
                .execute(pool)
                .await
                .unwrap();
            }
        }
        project
    }};
}

/// What a store opened (and so migrated) on [`insert_old_rows`] must show: the old
/// attempt without a trigger, the old pending delivery tried as a publish, and the old
/// events resendable.
async fn old_rows_after_the_trigger_migration(s: &dyn WebhookStore, project: Uuid) {
    let old = all_attempts(s, project, "session.end").await;
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].trigger, None, "old attempts keep no trigger");

    let waiting = claim_one(s).await;
    let done = outcome(&waiting, AttemptStatus::Success, now_micros(), None);
    record(s, &[done], NEVER_DISABLE).await;
    let resent = s
        .resend_event(project, "session.end", old[0].event_id)
        .await
        .unwrap();
    assert!(matches!(resent, ResendOutcome::Queued { .. }), "{resent:?}");
    let again = claim_one(s).await;
    assert_eq!(again.event_id, old[0].event_id);
    let done = outcome(&again, AttemptStatus::Success, now_micros(), None);
    record(s, &[done], NEVER_DISABLE).await;

    let triggers: Vec<Option<AttemptTrigger>> = all_attempts(s, project, "session.end")
        .await
        .iter()
        .map(|a| a.trigger)
        .collect();
    assert_eq!(
        triggers,
        [
            Some(AttemptTrigger::Resend),
            Some(AttemptTrigger::Publish),
            None
        ]
    );
}

#[tokio::test]
async fn sqlite_database_of_the_previous_release_migrates() {
    let fresh = FreshDb::sqlite();
    std::fs::create_dir_all(fresh.dir().join("data")).expect("data dir");
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&fresh.url)
        .expect("sqlite URL")
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.expect("open");
    before_trigger(sqlx::migrate!("./migrations/sqlite"))
        .run(&pool)
        .await
        .expect("previous migrations");
    let project = insert_old_rows!(&pool);
    pool.close().await;

    let store = SqliteStore::connect(&fresh.url).await.expect("migrate");
    old_rows_after_the_trigger_migration(&store, project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_of_the_previous_release_migrates() {
    in_pg_schema(|options| async move {
        let pool = sqlx::PgPool::connect_with(options.clone())
            .await
            .expect("open");
        before_trigger(sqlx::migrate!("./migrations/postgres"))
            .run(&pool)
            .await
            .expect("previous migrations");
        let project = insert_old_rows!(&pool);
        pool.close().await;

        let store = PgStore::connect_with(options, 2).await.expect("migrate");
        old_rows_after_the_trigger_migration(&store, project).await;
        store.close().await;
    })
    .await;
}

// --- query plans -----------------------------------------------------------------

/// The hot queries as (name, SQL), shared by both backends; the claim is planned apart
/// (each backend builds its own).
fn hot_queries() -> Vec<(String, String)> {
    let include = super::RecoverInclude {
        failed: true,
        missed: true,
    };
    let mut queries = vec![
        ("next due".to_owned(), common::next_due_sql()),
        ("queue stats".to_owned(), common::queue_stats_sql()),
        ("attempts page".to_owned(), attempt_listing_sql(false)),
        (
            "attempts page after a cursor".to_owned(),
            attempt_listing_sql(true),
        ),
        ("recovery scan".to_owned(), recovery::scan_sql(include)),
        ("wake a held head".to_owned(), held::wake_head_sql()),
        (
            "wake an unordered queue".to_owned(),
            held::WAKE_UNORDERED.to_owned(),
        ),
        ("hold a queue's tail".to_owned(), held::hold_tail_sql()),
        (
            "sweep held heads".to_owned(),
            held::wake_sql(false).to_owned(),
        ),
    ];
    for table in RetentionTable::ALL {
        queries.push((
            format!("retention candidates of {}", table.as_str()),
            table.candidates_sql(),
        ));
    }
    queries
}

/// The tables a hot query must never read whole, by name and by the aliases the
/// store's SQL gives them.
const HOT_TABLES: &[&str] = &[
    "deliveries",
    "d",
    "h",
    "f",
    "events",
    "e",
    "attempts",
    "a",
    "webhooks",
    "w",
    "recoveries",
];

/// The lines of a SQLite plan that read a hot table whole: `SCAN <table>` without an
/// index (scans of common table expressions read what was already searched).
fn sqlite_full_scans(details: &[String]) -> Vec<String> {
    details
        .iter()
        .filter(|d| {
            d.strip_prefix("SCAN ").is_some_and(|rest| {
                let table = rest.split(' ').next().unwrap_or_default();
                HOT_TABLES.contains(&table) && !rest.contains(" USING ")
            })
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hot_queries_use_their_indexes() {
    let (_fresh, store) = fresh_sqlite().await;
    let pool = store.reader();
    let now = Micros(now_micros());
    let mut plans: Vec<(String, Vec<String>)> = Vec::new();
    for (name, sql) in hot_queries() {
        // Unbound parameters plan as NULL; the plan does not depend on their values.
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let details = rows
            .iter()
            .map(|row| sqlx::Row::get::<String, _>(row, 3))
            .collect();
        plans.push((name, details));
    }
    let project = [Uuid::now_v7()];
    for (name, from) in [
        ("claim by project", ClaimFrom::Projects(&project, 8)),
        ("claim oldest", ClaimFrom::Oldest(&project)),
        ("claim all due", ClaimFrom::AllDue(&project)),
    ] {
        let claim =
            sqlite::claim_query("EXPLAIN QUERY PLAN ", from, 16, (Uuid::new_v4(), now, now));
        let mut q = sqlx::query(&claim.text);
        for param in &claim.params {
            q = match param {
                rusqlite::types::Value::Integer(n) => q.bind(*n),
                rusqlite::types::Value::Blob(bytes) => q.bind(bytes.clone()),
                other => panic!("{name}: the claim binds {other:?}"),
            };
        }
        let rows = q.fetch_all(pool).await.expect(name);
        let details = rows
            .iter()
            .map(|row| sqlx::Row::get::<String, _>(row, 3))
            .collect();
        plans.push((name.to_owned(), details));
    }
    for (name, details) in &plans {
        assert!(!details.is_empty(), "{name}: no plan");
        let scans = sqlite_full_scans(details);
        assert!(
            scans.is_empty(),
            "{name} scans a whole table: {scans:?} in {details:#?}"
        );
        // What reads the queue takes it in index order and stops at its LIMIT; a sort
        // would read the whole due backlog first.
        if name.starts_with("claim") || name == "next due" || name == "queue stats" {
            let sorts: Vec<&String> = details
                .iter()
                .filter(|d| d.contains("TEMP B-TREE"))
                .collect();
            assert!(
                sorts.is_empty(),
                "{name} sorts the queue: {sorts:?} in {details:#?}"
            );
        }
        // A page deep into a busy webhook skips entries of the listing index, not rows.
        if name.starts_with("attempts page") {
            assert!(
                details
                    .iter()
                    .any(|d| d.contains("USING COVERING INDEX attempts_listing")),
                "{name} reads rows to find its page: {details:#?}"
            );
        }
    }
    store.close().await;
}

/// The plans of both PostgreSQL claims (per project and oldest first) from `projects`,
/// as (name, lines).
async fn postgres_claim_plans(
    conn: &mut sqlx::PgConnection,
    now: DateTime<Utc>,
    projects: &[Uuid],
) -> Vec<(String, Vec<String>)> {
    let mut plans = Vec::new();
    for form in postgres::ClaimForm::ALL {
        let per_project = form == postgres::ClaimForm::PerProject;
        let sql = format!("EXPLAIN {}", postgres::claim_sql(form));
        let mut query = sqlx::query(&sql)
            .bind(now)
            .bind(64_i64)
            .bind(Uuid::new_v4())
            .bind(now)
            .bind(projects);
        if per_project {
            query = query.bind(16_i64);
        }
        let rows = query.fetch_all(&mut *conn).await.expect("explain claim");
        plans.push((
            format!("claim ({form:?})"),
            rows.iter()
                .map(|r| sqlx::Row::get::<String, _>(r, 0))
                .collect(),
        ));
    }
    plans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hot_queries_use_their_indexes() {
    in_pg_schema(|options| async move {
        let store = PgStore::connect_with(options, 2).await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        // With sequential scans priced out, the planner still takes one wherever no
        // index applies: exactly what this looks for, whatever the tables hold.
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .unwrap();
        let now = now_micros();
        let project = vec![Uuid::now_v7()];
        let mut plans: Vec<(String, Vec<String>)> = Vec::new();
        let explain = |rows: Vec<sqlx::postgres::PgRow>| -> Vec<String> {
            rows.iter()
                .map(|row| sqlx::Row::get::<String, _>(row, 0))
                .collect()
        };
        for (name, sql) in hot_queries() {
            // Every parameter bound with a value of its type; the planner ignores the
            // values for the plan's shape.
            let explained = format!("EXPLAIN {sql}");
            let mut query = sqlx::query(&explained);
            query = match name.as_str() {
                "next due" => query.bind(now).bind(held::held()),
                "sweep held heads" => query.bind(now).bind(held::held()),
                "wake a held head" | "wake an unordered queue" | "hold a queue's tail" => {
                    query.bind(now).bind(Uuid::now_v7()).bind(held::held())
                }
                "queue stats" => query.bind(now),
                "attempts page" => query
                    .bind(project[0])
                    .bind("e")
                    .bind(10_i64)
                    .bind(0_i64)
                    .bind(1_000_000_i64),
                "attempts page after a cursor" => query
                    .bind(project[0])
                    .bind("e")
                    .bind(10_i64)
                    .bind(0_i64)
                    .bind(1_000_000_i64)
                    .bind(now)
                    .bind(Uuid::now_v7()),
                "recovery scan" => query
                    .bind(Uuid::now_v7())
                    .bind(project[0])
                    .bind("e")
                    .bind(now)
                    .bind(Uuid::nil())
                    .bind(now)
                    .bind(500_i64),
                _ => query.bind(Uuid::nil()).bind(Uuid::now_v7()).bind(500_i64),
            };
            let rows = query
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            plans.push((name, explain(rows)));
        }
        plans.extend(postgres_claim_plans(&mut conn, now, &project).await);
        for (name, lines) in &plans {
            assert!(!lines.is_empty(), "{name}: no plan");
            let scans: Vec<&String> = lines.iter().filter(|l| l.contains("Seq Scan")).collect();
            assert!(
                scans.is_empty(),
                "{name} scans a whole table: {scans:?} in {lines:#?}"
            );
            // A page deep into a busy webhook skips entries of the listing index, not
            // rows (after a vacuum, those old rows are all visible to an index-only scan).
            if name.starts_with("attempts page") {
                assert!(
                    lines
                        .iter()
                        .any(|l| l.contains("Index Only Scan using attempts_listing")),
                    "{name} reads rows to find its page: {lines:#?}"
                );
            }
        }
        drop(conn);
        store.close().await;
    })
    .await;
}

/// The queue's shape when autovacuum sampled it with nothing pending, then a backlog
/// came: the claim, the next-due and the queue-stats queries must still read the due
/// backlog in index order, stopping at their LIMIT, instead of joining it whole to the
/// webhooks and sorting it (which made every claim cost the size of the backlog), and an
/// ordered webhook's head must come from its queue index, not from a sort of every
/// pending delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_reads_stay_in_index_order_after_an_empty_queue_was_analyzed() {
    in_pg_schema(|options| async move {
        let store = PgStore::connect_with(options, 2).await.unwrap();
        let project = new_project(&store).await;
        let (plain, _) = new_webhook(&store, project.id, "plan.plain").await;
        let (ordered, _) = new_webhook(&store, project.id, "plan.ordered").await;
        let pool = store.pool();
        sqlx::query("UPDATE webhooks SET ordered = true WHERE id = $1")
            .bind(ordered.id)
            .execute(pool)
            .await
            .unwrap();
        // Rows of `status` for `webhook`, `count` of them, published an hour ago.
        let seed = |webhook: &Webhook, status: &'static str, count: i64| {
            let sql = "WITH e AS ( \
                     INSERT INTO events (id, project_id, event_type, data, created_at) \
                     SELECT gen_random_uuid(), $1, $2, '{}', now() - interval '1 hour' \
                     FROM generate_series(1, $4) RETURNING id, created_at) \
                 INSERT INTO deliveries (id, event_id, webhook_id, project_id, event_type, \
                     status, attempts_made, next_attempt_at, created_at, updated_at) \
                 SELECT gen_random_uuid(), e.id, $3, $1, $2, $5, 0, e.created_at, \
                     e.created_at, e.created_at FROM e";
            sqlx::query(sql)
                .bind(project.id)
                .bind(webhook.event_type.clone())
                .bind(webhook.id)
                .bind(count)
                .bind(status)
                .execute(pool)
        };
        for webhook in [&plain, &ordered] {
            seed(webhook, "succeeded", 2_000).await.unwrap();
        }
        sqlx::query("ANALYZE").execute(pool).await.unwrap();
        for webhook in [&plain, &ordered] {
            seed(webhook, "pending", 2_000).await.unwrap();
        }

        let now = now_micros();
        let projects = vec![project.id];
        let mut plans: Vec<(String, Vec<String>)> = Vec::new();
        let mut conn = pool.acquire().await.unwrap();
        for (name, sql) in hot_queries()
            .into_iter()
            .filter(|(name, _)| name == "next due" || name == "queue stats")
        {
            let explained = format!("EXPLAIN {sql}");
            let mut query = sqlx::query(&explained).bind(now);
            if name == "next due" {
                query = query.bind(held::held());
            }
            let rows = query
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            plans.push((
                name,
                rows.iter()
                    .map(|r| sqlx::Row::get::<String, _>(r, 0))
                    .collect(),
            ));
        }
        plans.extend(postgres_claim_plans(&mut conn, now, &projects).await);
        for (name, lines) in &plans {
            // Of a claim, the part that picks the rows; the claimed few are joined to
            // their webhooks and events afterwards, however the planner likes.
            let picking = lines
                .iter()
                .skip_while(|l| !l.contains("CTE due"))
                .take_while(|l| !l.contains("CTE claimed"));
            let picking: Vec<&String> = if lines.iter().any(|l| l.contains("CTE due")) {
                picking.collect()
            } else {
                lines.iter().collect()
            };
            let bad: Vec<&&String> = picking
                .iter()
                .filter(|l| {
                    l.contains("Hash Join")
                        || l.contains("Hash Semi Join")
                        || l.contains("Sort Key: d.")
                        || l.contains("Sort Key: h.")
                })
                .collect();
            assert!(
                bad.is_empty(),
                "{name} reads the backlog out of index order: {bad:?} in {lines:#?}"
            );
        }
        drop(conn);
        store.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_run_without_jit() {
    in_pg_schema(|options| async move {
        let store = PgStore::connect_with(options, 2).await.unwrap();
        let jit: String = sqlx::query_scalar("SHOW jit")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(jit, "off");
        store.close().await;
    })
    .await;
}
