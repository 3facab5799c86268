//! The delivery loop, separate from the HTTP handlers.
//!
//! One claimer task takes due deliveries from the store in batches (under a lease) as
//! long as it has free slots; each delivery is sent on its own task, bounded by a
//! semaphore, and each webhook has at most its lane's share of the slots
//! ([`super::lanes`]), so a slow or dead receiver cannot hold up the others. Outcomes go
//! to one recorder task that writes them in batches (one transaction per batch), which
//! is what lets SQLite keep up with thousands of deliveries a second.
//!
//! Shutdown: the claimer stops claiming; in-flight deliveries get the grace period to
//! finish and be recorded; whatever is still running then is aborted and its lease
//! handed back so another worker (or the next start) takes it at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::answer;
use super::dispatch::{Dispatcher, OutgoingRequest};
use super::health::WorkerHealth;
use super::lanes::{Admission, Lanes};
use super::retry::RetrySchedule;
use super::sign;
use crate::metrics::Metrics;
use crate::store::{
    storable_text, Attempt, AttemptStatus, AttemptTrigger, ClaimedDelivery, DeliveryOutcome,
    DisablePolicy, NextDue, Recorded, WebhookStore,
};
use crate::wake::Waker;

/// Settings of a [`DeliveryWorker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How long a claim is exclusive. Longer than the delivery timeout plus the time to
    /// record, so a live worker never loses a claim it is still working on.
    pub lease: Duration,
    pub schedule: RetrySchedule,
    pub disable: DisablePolicy,
    /// Longest sleep between claims when nothing wakes the worker: new events wake it
    /// at once in-process (and through the database on PostgreSQL); this bounds the
    /// delay for retries coming due and for work published by a process that died.
    pub idle_poll: Duration,
    /// How long shutdown waits for in-flight deliveries.
    pub shutdown_grace: Duration,
    /// Most deliveries in flight to one webhook (see [`super::lanes`]), so a hanging
    /// receiver with a backlog cannot take every slot.
    pub per_webhook_limit: usize,
    /// Longest wait a receiver's `Retry-After` can impose (see [`super::answer`]).
    pub max_retry_after: Duration,
}

/// How long a delivery handed back because its webhook's lane and parking are full
/// waits before it can be claimed again.
pub const DEFER_AT_LIMIT: Duration = Duration::from_millis(100);

/// The same for a webhook whose attempts time out: its few places free up only as
/// slowly as its receiver fails, so its backlog need not be looked at more often.
pub const DEFER_SLOWED: Duration = Duration::from_secs(1);

/// How far ahead a process takes a rate-limited webhook's send slots: its deliveries
/// wait at most this long, holding a worker slot, for their turn.
const PACING_HORIZON: Duration = Duration::from_millis(500);

pub struct DeliveryWorker {
    store: Arc<dyn WebhookStore>,
    dispatcher: Arc<Dispatcher>,
    config: WorkerConfig,
    waker: Arc<Waker>,
    metrics: Arc<Metrics>,
    health: Arc<WorkerHealth>,
}

/// Claims being worked on: delivery id → lease token.
type InFlight = Arc<Mutex<HashMap<Uuid, Uuid>>>;

/// A finished attempt on its way to the recorder, with the slot it occupies.
type Finished = (DeliveryOutcome, Slot);

/// One of the process's delivery slots, counted against its project's share until the
/// outcome is recorded: a project's finished but unrecorded deliveries still hold
/// slots, so they count towards what it may hold.
struct Slot {
    _permit: OwnedSemaphorePermit,
    project: Uuid,
    lanes: Arc<Lanes>,
    /// Poked when the slot comes back, so a claimer waiting for room wakes up.
    freed: Arc<Notify>,
    /// The webhook whose receiver answered 410 Gone with this delivery.
    gone: Option<Uuid>,
    /// The delivery's webhook is ordered: its next delivery can go once this one is
    /// recorded.
    ordered: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(webhook) = self.gone {
            self.lanes.gone_recorded(webhook);
        }
        self.lanes.release(self.project);
        self.freed.notify_one();
    }
}

const MAX_RECORD_BATCH: usize = 512;

/// After the shutdown grace, how long the last writes (outcomes of deliveries that
/// finished in time, then the hand-back of the rest) may still take.
const RECORD_AFTER_GRACE: Duration = Duration::from_secs(1);

impl DeliveryWorker {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        dispatcher: Arc<Dispatcher>,
        config: WorkerConfig,
        waker: Arc<Waker>,
        metrics: Arc<Metrics>,
        health: Arc<WorkerHealth>,
    ) -> Self {
        Self {
            store,
            dispatcher,
            config,
            waker,
            metrics,
            health,
        }
    }

    /// Runs until `shutdown` is cancelled, then drains as described in the module docs.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let in_flight: InFlight = Arc::default();
        let lanes = Arc::new(Lanes::new(
            self.config.per_webhook_limit,
            self.config.concurrency.max(1),
            self.config.lease,
        ));
        // Poked when a delivery finishes or its slot comes back, so parked deliveries
        // and projects at their share can go.
        let lane_freed = Arc::new(Notify::new());
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel::<Finished>();
        // Set when shutdown starts: past it, the recorder stops retrying writes.
        let deadline = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
        let recorder = tokio::spawn(record_loop(
            Recorder {
                store: self.store.clone(),
                policy: self.config.disable,
                metrics: self.metrics.clone(),
                health: self.health.clone(),
                deadline: deadline.clone(),
            },
            outcomes_rx,
            in_flight.clone(),
            self.waker.clone(),
        ));
        let sweep = tokio::spawn(sweep_held(self.store.clone(), shutdown.clone()));
        let mut tasks = JoinSet::new();
        // Rate-limited deliveries are paced off the claim loop: pacing writes to the
        // store, and nothing else may wait for those writes. While a project's pacing
        // runs, its deliveries are left out of the claims, so a pacing that hangs holds
        // one batch of that project, not its whole backlog.
        let mut pacing: JoinSet<Vec<ClaimedDelivery>> = JoinSet::new();
        let mut pacing_projects: HashMap<tokio::task::Id, Vec<Uuid>> = HashMap::new();
        let mut paced: Vec<ClaimedDelivery> = Vec::new();
        let mut backoff = Duration::from_millis(50);
        let start =
            |delivery: ClaimedDelivery, permit: OwnedSemaphorePermit, tasks: &mut JoinSet<()>| {
                in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(delivery.delivery_id, delivery.lease_token);
                let dispatcher = self.dispatcher.clone();
                let schedule = self.config.schedule.clone();
                let max_retry_after = self.config.max_retry_after;
                let tx = outcomes_tx.clone();
                let metrics = self.metrics.clone();
                let lanes = lanes.clone();
                let lane_freed = lane_freed.clone();
                let mut slot = Slot {
                    _permit: permit,
                    project: delivery.project_id,
                    lanes: lanes.clone(),
                    freed: lane_freed.clone(),
                    gone: None,
                    ordered: delivery.ordered,
                };
                tasks.spawn(async move {
                    // A rate-limited webhook's slot, at most the pacing horizon away.
                    if let Some(wait) = delivery
                        .send_at
                        .and_then(|at| (at - Utc::now()).to_std().ok())
                    {
                        tokio::time::sleep(wait).await;
                    }
                    let (outcome, timed_out) =
                        deliver(&dispatcher, &schedule, max_retry_after, &delivery, &metrics).await;
                    if outcome.disable_webhook {
                        // Before its place frees up, so no parked delivery of it goes.
                        lanes.gone(delivery.webhook_id);
                        slot.gone = Some(delivery.webhook_id);
                    }
                    lanes.finish(delivery.webhook_id, timed_out);
                    lane_freed.notify_one();
                    // The recorder outlives every delivery task; a send can only fail after
                    // an abort, and then the lease is handed back instead. The slot is
                    // freed only once the outcome is recorded, so a process never holds
                    // more unrecorded claims than it has slots: that bounds the duplicates
                    // a crash can cause to `concurrency`.
                    let _ = tx.send((outcome, slot));
                });
            };
        // Starts what the lanes let go now; answers whether anything went or was
        // parked, and what goes back: at its limit, or slowed.
        let admit = |batch: Vec<ClaimedDelivery>, tasks: &mut JoinSet<()>| {
            let mut progressed = false;
            let (mut full, mut slowed) = (Vec::new(), Vec::new());
            for delivery in batch {
                match lanes.admit(delivery) {
                    Admission::Go(delivery) => match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            progressed = true;
                            start(delivery, permit, tasks)
                        }
                        Err(_) => {
                            lanes.finish(delivery.webhook_id, false);
                            lanes.release(delivery.project_id);
                            full.push(delivery);
                        }
                    },
                    Admission::Parked => progressed = true,
                    Admission::HandBack(delivery) if lanes.is_slowed(delivery.webhook_id) => {
                        slowed.push(delivery)
                    }
                    Admission::HandBack(delivery) => full.push(delivery),
                }
            }
            (progressed, full, slowed)
        };

        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}

            // Parked deliveries whose webhook has room go first; overdue ones go back.
            let (ready, stale) = lanes.ready(slots.available_permits());
            for delivery in ready {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => start(delivery, permit, &mut tasks),
                    // Cannot happen (at most the free slots are ready); hand it back.
                    Err(_) => self.hand_back(&[delivery], Utc::now()).await,
                }
            }
            self.hand_back(&stale, Utc::now()).await;

            while let Some(done) = pacing.try_join_next_with_id() {
                paced.extend(pacing_done(&mut pacing_projects, done));
            }
            if !paced.is_empty() {
                let (_, full, slowed) = admit(std::mem::take(&mut paced), &mut tasks);
                self.hand_back_refused(&full, &slowed).await;
            }

            let free = slots.available_permits();
            self.waker.set_saturated(free == 0);
            if free == 0 {
                // Slots come back when outcomes are recorded, not when tasks end.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = slots.clone().acquire_owned() => {
                        drop(permit);
                        continue;
                    }
                }
            }
            self.health.claiming();
            let full_projects = lanes.full_projects();
            let mut skip = full_projects.clone();
            skip.extend(pacing_projects.values().flatten().copied());
            skip.sort_unstable();
            skip.dedup();
            self.waker.claim_started();
            let claim = self.store.claim_batch(free, self.config.lease, &skip).await;
            // A full batch suggests more is due than this process can take.
            self.waker
                .claim_finished(claim.as_ref().is_ok_and(|c| c.deliveries.len() == free));
            let (claimed, drained, next_due) = match claim {
                Ok(batch) => {
                    self.health.claimed();
                    backoff = Duration::from_millis(50);
                    (batch.deliveries, batch.drained, batch.next_due)
                }
                Err(e) => {
                    tracing::error!(error = %e, "claiming deliveries failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let claimed_any = !claimed.is_empty();
            let (limited, batch): (Vec<_>, Vec<_>) =
                claimed.into_iter().partition(|d| d.rate_limit.is_some());
            let (mut progressed, full, slowed) = admit(batch, &mut tasks);
            if !limited.is_empty() {
                let mut projects: Vec<Uuid> = limited.iter().map(|d| d.project_id).collect();
                projects.sort_unstable();
                projects.dedup();
                let task = pacing.spawn(pace(self.store.clone(), self.metrics.clone(), limited));
                pacing_projects.insert(task.id(), projects);
                progressed = true;
            }
            // What goes back comes due again, which the claim's next due time did not
            // know of.
            let next_due = next_due.filter(|_| full.is_empty() && slowed.is_empty());
            self.hand_back_refused(&full, &slowed).await;
            // After progress, claim again at once, unless the claim took all that was
            // due: asking again would only find that out a second time (queries per
            // event at a moderate rate), and what is published meanwhile has poked the
            // waker, which answers at once below.
            if progressed && !drained {
                continue;
            }
            // Nothing claimed, only what had to go back, or all that was due: wait for
            // news rather than claim the same full webhooks again at once.
            let mut sleep = self.idle_sleep(next_due).await;
            if !progressed && (!full_projects.is_empty() || claimed_any) {
                // What is due may be only what was left out or handed back; a
                // finished delivery (lane_freed) is what makes room for it.
                sleep = sleep.max(DEFER_AT_LIMIT);
            }
            let waiting = lanes.parked() > 0 || !full_projects.is_empty();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.waker.woken() => {}
                _ = lane_freed.notified(), if waiting => {}
                Some(done) = pacing.join_next_with_id(), if !pacing.is_empty() => {
                    paced.extend(pacing_done(&mut pacing_projects, done));
                }
                _ = tokio::time::sleep(sleep) => {}
            }
        }

        sweep.abort();
        // Drain: let in-flight deliveries finish within the grace period.
        let end = tokio::time::Instant::now() + self.config.shutdown_grace;
        let _ = deadline.set(end);
        let drained =
            tokio::time::timeout_at(end, async { while tasks.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // What pacing still lets go by the end of the grace goes back unsent, as does
        // what it let go that was not started.
        let paced_all = tokio::time::timeout_at(end, async {
            while let Some(done) = pacing.join_next_with_id().await {
                paced.extend(pacing_done(&mut pacing_projects, done));
            }
        })
        .await;
        if paced_all.is_err() {
            pacing.abort_all();
        }
        drop(outcomes_tx);
        // The recorder writes what was sent to it and exits when the channel closes.
        // A write still failing or hanging at the end of the grace is given up: those
        // deliveries stay leased and are sent again once the lease runs out.
        let mut recorder = recorder;
        if tokio::time::timeout_at(end + RECORD_AFTER_GRACE, &mut recorder)
            .await
            .is_err()
        {
            tracing::error!("recording the last outcomes did not finish within the shutdown grace; their deliveries will be sent again after the lease");
            recorder.abort();
        }
        let mut unfinished: Vec<(Uuid, Uuid)> = in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        unfinished.extend(
            lanes
                .drain_parked()
                .iter()
                .chain(&paced)
                .map(|d| (d.delivery_id, d.lease_token)),
        );
        if !unfinished.is_empty() {
            tracing::info!(
                count = unfinished.len(),
                "handing back unfinished deliveries"
            );
            match tokio::time::timeout(
                RECORD_AFTER_GRACE,
                self.store.release(&unfinished, Utc::now()),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "handing back deliveries failed; their leases will expire")
                }
                Err(_) => {
                    tracing::error!("handing back deliveries timed out; their leases will expire")
                }
            }
        }
    }

    async fn hand_back(&self, deliveries: &[ClaimedDelivery], due: chrono::DateTime<Utc>) {
        hand_back(self.store.as_ref(), deliveries, due).await
    }

    /// Hands back what the lanes refused: `full` (its webhook at its limit) due a
    /// little later, `slowed` (its receiver timing out) later still.
    async fn hand_back_refused(&self, full: &[ClaimedDelivery], slowed: &[ClaimedDelivery]) {
        let now = Utc::now();
        let defer = |d: Duration| now + chrono::Duration::from_std(d).unwrap_or_default();
        self.hand_back(full, defer(DEFER_AT_LIMIT)).await;
        self.hand_back(slowed, defer(DEFER_SLOWED)).await;
    }

    /// How long to sleep when there is nothing due: until the next retry comes due,
    /// at most `idle_poll`. `known`: the next due time as the claim just left it, when
    /// the store told.
    async fn idle_sleep(&self, known: Option<NextDue>) -> Duration {
        let cap = self.config.idle_poll;
        let next = match known {
            Some(NextDue(next)) => Ok(next),
            None => self.store.next_due().await,
        };
        match next {
            Ok(Some(due)) => (due - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(1), cap),
            _ => cap,
        }
    }
}

/// How often the sweep of held deliveries runs (see `store/held.rs`).
const SWEEP_HELD_EVERY: Duration = Duration::from_secs(30);

/// Wakes what an ordered webhook's queue holds that it no longer may: a head left
/// held by a process that stopped between a commit and the wake it owed. Thorough
/// once at start (what this process may have left), then the heads only, which is
/// one index probe per ordered webhook.
async fn sweep_held(store: Arc<dyn WebhookStore>, shutdown: CancellationToken) {
    let mut thorough = true;
    while !shutdown.is_cancelled() {
        match store.wake_held(thorough).await {
            Ok(0) => {}
            Ok(woken) => tracing::info!(woken, "woke held deliveries"),
            Err(e) => tracing::warn!(error = %e, "waking held deliveries failed"),
        }
        thorough = false;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(SWEEP_HELD_EVERY) => {}
        }
    }
}

/// Gives each claimed delivery of a rate-limited webhook its send slot (see
/// `store/pacing.rs`); those that get none go back to the queue, each due at its
/// turn behind those already waiting, without using up a try or recording an
/// attempt. Returns the deliveries that may go (any without a limit among
/// `claimed` go as they are).
async fn pace(
    store: Arc<dyn WebhookStore>,
    metrics: Arc<Metrics>,
    claimed: Vec<ClaimedDelivery>,
) -> Vec<ClaimedDelivery> {
    let mut go = Vec::with_capacity(claimed.len());
    let mut limited: HashMap<Uuid, (i64, Vec<ClaimedDelivery>)> = HashMap::new();
    for delivery in claimed {
        match delivery.rate_limit {
            Some(rate) => limited
                .entry(delivery.webhook_id)
                .or_insert_with(|| (rate, Vec::new()))
                .1
                .push(delivery),
            None => go.push(delivery),
        }
    }
    for (webhook_id, (rate, deliveries)) in limited {
        let slots = match store
            .take_send_slots(webhook_id, rate, deliveries.len(), PACING_HORIZON)
            .await
        {
            Ok(slots) => slots,
            Err(e) => {
                tracing::warn!(error = %e, %webhook_id, "taking send slots failed; the deliveries wait");
                hand_back(
                    store.as_ref(),
                    &deliveries,
                    Utc::now() + chrono::Duration::seconds(1),
                )
                .await;
                continue;
            }
        };
        let mut deliveries = deliveries.into_iter();
        for (at, mut delivery) in slots.granted.iter().zip(deliveries.by_ref()) {
            delivery.send_at = Some(*at);
            go.push(delivery);
        }
        // The rest wait in the queue, each due at its turn behind those already
        // waiting, so they come due about when they can go.
        let waiting: Vec<(Uuid, Uuid, chrono::DateTime<Utc>)> = deliveries
            .zip(&slots.turns)
            .map(|(d, due)| (d.delivery_id, d.lease_token, *due))
            .collect();
        metrics.deliveries_throttled(waiting.len() as u64);
        if let Err(e) = store.release_each(&waiting).await {
            tracing::warn!(error = %e, count = waiting.len(), "handing back throttled deliveries failed; their leases will expire");
        }
    }
    go
}

/// Hands claimed deliveries back to the store, due at `due`. On failure their leases
/// simply expire and they are claimed again then.
async fn hand_back(
    store: &dyn WebhookStore,
    deliveries: &[ClaimedDelivery],
    due: chrono::DateTime<Utc>,
) {
    if deliveries.is_empty() {
        return;
    }
    let claims: Vec<(Uuid, Uuid)> = deliveries
        .iter()
        .map(|d| (d.delivery_id, d.lease_token))
        .collect();
    if let Err(e) = store.release(&claims, due).await {
        tracing::warn!(error = %e, count = claims.len(), "handing back deliveries failed; their leases will expire");
    }
}

/// What a finished pacing let go; its projects are claimed from again.
fn pacing_done(
    projects: &mut HashMap<tokio::task::Id, Vec<Uuid>>,
    done: Result<(tokio::task::Id, Vec<ClaimedDelivery>), tokio::task::JoinError>,
) -> Vec<ClaimedDelivery> {
    match done {
        Ok((id, go)) => {
            projects.remove(&id);
            go
        }
        // Its deliveries' leases expire and they are claimed again then.
        Err(e) => {
            projects.remove(&e.id());
            if e.is_panic() {
                tracing::error!(error = %e, "pacing deliveries failed");
            }
            Vec::new()
        }
    }
}

/// Sends one delivery and decides what happens next; also says whether the receiver
/// timed out.
pub async fn deliver(
    dispatcher: &Dispatcher,
    schedule: &RetrySchedule,
    max_retry_after: Duration,
    d: &ClaimedDelivery,
    metrics: &Metrics,
) -> (DeliveryOutcome, bool) {
    let body = sign::delivery_body(d);
    let headers = sign::delivery_headers(d, &body, Utc::now().timestamp());
    let started_at = Utc::now();
    let result = dispatcher
        .send(&OutgoingRequest {
            url: d.webhook_url.clone(),
            body: body.clone(),
            headers,
        })
        .await;
    let attempt_number = d.attempts_made + 1;
    let now = Utc::now();
    let step = match u32::try_from(attempt_number) {
        Ok(n) if !result.success => Some(answer::next_step(
            schedule,
            n,
            result.status,
            result.retry_after.as_deref(),
            max_retry_after,
            now,
        )),
        _ => None,
    };
    let retry_at = step
        .as_ref()
        .and_then(|step| step.retry_in)
        .and_then(|delay| chrono::Duration::from_std(delay).ok())
        .map(|delay| now + delay);
    let disable_webhook = step.as_ref().is_some_and(|step| step.disable_webhook);
    // What the receiver asked for comes first; a failure of its own (a body that
    // stalled, say) is kept after it.
    let error = match (step.and_then(|step| step.message), result.error) {
        (Some(asked), Some(error)) => Some(format!("{asked}; {error}")),
        (asked, error) => asked.or(error),
    };
    let status = if result.success {
        AttemptStatus::Success
    } else {
        AttemptStatus::Failed
    };
    metrics.record_attempt(
        status,
        result.duration,
        attempt_number,
        started_at - d.event_created_at,
    );
    tracing::info!(
        delivery_id = %d.delivery_id,
        event_id = %d.event_id,
        project_id = %d.project_id,
        event_type = %d.event_type,
        attempt = attempt_number,
        status = status.as_str(),
        response_code = result.status,
        duration_ms = result.duration.as_millis() as u64,
        error = error.as_deref().unwrap_or(""),
        retry = retry_at.is_some(),
        "delivery attempt"
    );
    let timed_out = result.timed_out;
    let outcome = DeliveryOutcome {
        delivery_id: d.delivery_id,
        webhook_id: d.webhook_id,
        lease_token: d.lease_token,
        attempt: Attempt {
            id: Uuid::now_v7(),
            delivery_id: d.delivery_id,
            event_id: d.event_id,
            project_id: d.project_id,
            event_type: d.event_type.clone(),
            webhook_url: d.webhook_url.clone(),
            response_code: i64::from(result.status),
            duration_ms: i64::try_from(result.duration.as_millis()).unwrap_or(i64::MAX),
            attempt_number,
            status,
            request_body: body.to_vec(),
            response_body: result.response_body.map(storable_text),
            error_message: error.map(storable_text),
            created_at: started_at,
            trigger: Some(AttemptTrigger::of_attempt(d.origin, attempt_number)),
        },
        retry_at,
        disable_webhook,
        ordered: d.ordered,
    };
    (outcome, timed_out)
}

/// What the recorder needs besides its channel.
struct Recorder {
    store: Arc<dyn WebhookStore>,
    policy: DisablePolicy,
    metrics: Arc<Metrics>,
    health: Arc<WorkerHealth>,
    /// Set when shutdown starts; transient failures are retried until then.
    deadline: Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

/// Why a write was given up.
enum GaveUp {
    /// The store refuses this data whatever happens (bad bytes, a broken constraint).
    Permanent(crate::store::StoreError),
    /// Shutdown's deadline passed while the database was failing.
    Deadline,
}

impl Recorder {
    /// Writes `batch`, retrying transient failures (with backoff) until shutdown's
    /// deadline. A permanent failure is returned at once: retrying it would block
    /// every slot behind one bad row.
    async fn write(&self, batch: &[DeliveryOutcome]) -> Result<Recorded, GaveUp> {
        let mut backoff = Duration::from_millis(20);
        loop {
            self.health.recording();
            match self.store.record_outcomes(batch, self.policy).await {
                Ok(recorded) => {
                    self.health.recorded();
                    return Ok(recorded);
                }
                Err(e) if !e.is_transient() => return Err(GaveUp::Permanent(e)),
                Err(e) => {
                    tracing::error!(error = %e, batch = batch.len(), "recording attempts failed; retrying");
                    if let Some(deadline) = self.deadline.get() {
                        if tokio::time::Instant::now() + backoff > *deadline {
                            return Err(GaveUp::Deadline);
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Writes a batch; when the store refuses it for good, writes its outcomes one by
    /// one, so one bad row costs only itself. A row refused alone is written again
    /// without the receiver's text (response body, error message); one refused even
    /// then is logged and counted, and its delivery is sent again when its lease runs
    /// out. Returns what recording did and the outcomes that were written.
    async fn record(&self, batch: Vec<DeliveryOutcome>) -> (Recorded, Vec<Uuid>) {
        let error = match self.write(&batch).await {
            Ok(recorded) => {
                return (recorded, batch.iter().map(|o| o.delivery_id).collect());
            }
            Err(GaveUp::Deadline) => return (Recorded::default(), Vec::new()),
            Err(GaveUp::Permanent(e)) => e,
        };
        tracing::error!(error = %error, batch = batch.len(), "the store refused a batch of attempts; recording them one by one");
        let mut recorded = Recorded::default();
        let mut written = Vec::new();
        for outcome in batch {
            let error = match self.write(std::slice::from_ref(&outcome)).await {
                Ok(one) => {
                    recorded.absorb(one);
                    written.push(outcome.delivery_id);
                    continue;
                }
                Err(GaveUp::Deadline) => continue,
                Err(GaveUp::Permanent(e)) => e,
            };
            let mut stripped = outcome;
            stripped.attempt.response_body = None;
            stripped.attempt.error_message = Some(format!(
                "the receiver's answer could not be stored ({})",
                if stripped.attempt.response_code == 0 {
                    "error text refused by the database"
                } else {
                    "response body refused by the database"
                }
            ));
            match self.write(std::slice::from_ref(&stripped)).await {
                Ok(d) => {
                    tracing::warn!(error = %error, delivery_id = %stripped.delivery_id, "attempt recorded without the receiver's text, which the store refused");
                    self.metrics.attempts_stripped(1);
                    recorded.absorb(d);
                    written.push(stripped.delivery_id);
                }
                Err(GaveUp::Deadline) => {}
                Err(GaveUp::Permanent(e)) => {
                    tracing::error!(error = %e, delivery_id = %stripped.delivery_id, event_id = %stripped.attempt.event_id, "attempt could not be recorded; the delivery will be sent again after its lease");
                    self.metrics.attempts_unrecorded(1);
                    // The claim is dropped from the books: the row is refused, not
                    // pending, so the loop must not wait on it.
                    written.push(stripped.delivery_id);
                }
            }
        }
        // A batch refused as a whole still made progress: the loop is not stuck.
        self.health.recorded();
        (recorded, written)
    }
}

/// Writes outcomes in batches: whatever has arrived since the last write goes into
/// the next transaction. A transient failure is retried (with backoff) so no attempt
/// that was made is lost while the process lives; if it dies first, the lease expires
/// and the delivery is sent again (at-least-once). A batch the store refuses for good
/// is split up ([`Recorder::record`]), so a receiver's answer can never stop the loop.
///
/// A batch that schedules retries wakes the claimer: it went to sleep while those
/// deliveries were leased (due only at lease expiry), so without the wake-up a retry
/// due sooner would wait for the next idle poll instead of its schedule.
async fn record_loop(
    recorder: Recorder,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    in_flight: InFlight,
    waker: Arc<Waker>,
) {
    let mut received = Vec::with_capacity(MAX_RECORD_BATCH);
    while rx.recv_many(&mut received, MAX_RECORD_BATCH).await > 0 {
        // As the group commit does: the outcomes of the deliveries that are ready to
        // finish go in the same write.
        tokio::task::yield_now().await;
        while received.len() < MAX_RECORD_BATCH {
            match rx.try_recv() {
                Ok(finished) => received.push(finished),
                Err(_) => break,
            }
        }
        let (batch, permits): (Vec<_>, Vec<_>) = received.drain(..).unzip();
        let retries = batch.iter().any(|outcome| outcome.retry_at.is_some());
        // An ordered webhook's next delivery becomes claimable once this is recorded.
        let ordered = permits.iter().any(|slot: &Slot| slot.ordered);
        let (recorded, written) = recorder.record(batch).await;
        for webhook_id in &recorded.disabled {
            tracing::warn!(%webhook_id, "webhook disabled (repeated failures or 410 Gone)");
        }
        recorder.metrics.webhooks_disabled(recorded.disabled.len());
        {
            // Outcomes not written (shutdown's deadline passed) stay in flight, so
            // shutdown hands their claims back.
            let mut map = in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for delivery_id in written {
                map.remove(&delivery_id);
            }
        }
        drop(permits);
        if recorded.notices > 0 {
            // Operator events are queued like publishes.
            waker.announce();
        } else if retries || ordered {
            waker.wake();
        }
    }
}
