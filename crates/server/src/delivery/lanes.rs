//! Lanes: how many deliveries each webhook and each project has in flight, and the
//! claimed deliveries waiting for a place.
//!
//! - Every webhook may have at most `limit` deliveries in flight, so a receiver that
//!   hangs holds at most that many of the process's slots. A webhook whose attempts
//!   time out gets half its places for each timeout in a row (down to one), until it
//!   answers again: a dead receiver then holds one slot, not hundreds.
//! - Every project may have at most its share of the slots in flight: the slots
//!   divided by the projects with deliveries in flight (counting a newcomer), and
//!   never more than all but an eighth of them, so a project with a backlog or many
//!   hanging webhooks leaves room for the others. A project at its share is left out of the next claim
//!   ([`Lanes::full_projects`]).
//!
//! A claimed delivery whose webhook or project is full is parked here (it keeps its
//! lease) and goes as soon as a place frees up, so a busy but healthy webhook loses no
//! throughput to the limits. Parking is bounded too (`limit` per webhook); beyond it,
//! deliveries are handed back to the store to be claimed again a little later, and so
//! is anything parked for longer than half a lease, so a parked claim never outlives
//! its lease, or parked for a webhook whose receiver just answered 410 Gone.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::store::ClaimedDelivery;

/// How long a webhook still counts as gone after its 410 is recorded.
const GONE_AFTER_RECORD: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Lane {
    in_flight: usize,
    parked: VecDeque<(ClaimedDelivery, Instant)>,
}

/// What to do with a claimed delivery.
pub enum Admission {
    /// Send it now; its place in the lane is taken.
    Go(ClaimedDelivery),
    /// Parked until its lane has room.
    Parked,
    /// Lane and parking are full: hand it back to the store.
    HandBack(ClaimedDelivery),
}

#[derive(Default)]
struct State {
    lanes: HashMap<Uuid, Lane>,
    /// project → deliveries in flight
    projects: HashMap<Uuid, usize>,
    /// webhook → its reduced limit while its attempts time out
    slowed: HashMap<Uuid, usize>,
    /// webhook → until when it counts as gone: its receiver answered 410 and the
    /// outcome that disables it may not be recorded yet.
    gone: HashMap<Uuid, Instant>,
}

impl State {
    fn webhook_limit(&self, base: usize, webhook: Uuid) -> usize {
        self.slowed.get(&webhook).copied().unwrap_or(base)
    }

    /// The most a project may have in flight: an equal share of the slots among the
    /// projects with deliveries in flight (this one included), capped at `cap`.
    fn project_limit(&self, slots: usize, project: Uuid) -> usize {
        let busy = self.projects.len() + usize::from(!self.projects.contains_key(&project));
        // Alone, a project may take all but an eighth of the slots: those stay free for
        // a project that shows up while it is busy.
        let cap = slots.saturating_sub(slots.div_ceil(8)).max(1);
        slots.div_ceil(busy.max(1)).clamp(1, cap)
    }

    fn has_room(&self, slots: usize, limit: usize, webhook: Uuid, project: Uuid) -> bool {
        let lane_in_flight = self.lanes.get(&webhook).map_or(0, |l| l.in_flight);
        let project_in_flight = self.projects.get(&project).copied().unwrap_or(0);
        lane_in_flight < self.webhook_limit(limit, webhook)
            && project_in_flight < self.project_limit(slots, project)
    }

    fn is_gone(&self, webhook: Uuid) -> bool {
        self.gone
            .get(&webhook)
            .is_some_and(|until| *until > Instant::now())
    }

    fn take(&mut self, webhook: Uuid, project: Uuid) {
        self.lanes.entry(webhook).or_default().in_flight += 1;
        *self.projects.entry(project).or_default() += 1;
    }
}

pub struct Lanes {
    limit: usize,
    /// The process's delivery slots, shared out among projects.
    slots: usize,
    /// Parked longer than this, a claim is handed back rather than sent.
    max_park: Duration,
    state: Mutex<State>,
}

impl Lanes {
    pub fn new(limit: usize, slots: usize, lease: Duration) -> Self {
        Self {
            limit: limit.max(1),
            slots: slots.max(1),
            max_park: lease / 2,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn admit(&self, delivery: ClaimedDelivery) -> Admission {
        let mut state = self.lock();
        let (webhook, project) = (delivery.webhook_id, delivery.project_id);
        if state.is_gone(webhook) {
            return Admission::HandBack(delivery);
        }
        if state.has_room(self.slots, self.limit, webhook, project) {
            state.take(webhook, project);
            return Admission::Go(delivery);
        }
        let lane = state.lanes.entry(webhook).or_default();
        if lane.parked.len() < self.limit {
            lane.parked.push_back((delivery, Instant::now()));
            Admission::Parked
        } else {
            if lane.in_flight == 0 && lane.parked.is_empty() {
                state.lanes.remove(&webhook);
            }
            Admission::HandBack(delivery)
        }
    }

    /// A delivery's request finished: its place in the webhook's lane is free again.
    /// `timed_out` says whether the receiver failed to answer in time; any answer
    /// lifts the webhook's slowdown.
    pub fn finish(&self, webhook: Uuid, timed_out: bool) {
        let mut state = self.lock();
        if timed_out {
            let limit = state.webhook_limit(self.limit, webhook);
            state.slowed.insert(webhook, (limit / 2).max(1));
        } else {
            state.slowed.remove(&webhook);
        }
        if let Some(lane) = state.lanes.get_mut(&webhook) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if lane.in_flight == 0 && lane.parked.is_empty() {
                state.lanes.remove(&webhook);
            }
        }
    }

    /// The webhook's receiver answered 410 Gone. Until the outcome is recorded (which
    /// disables the webhook and cancels its deliveries) nothing more is sent to it
    /// from here: its parked deliveries and new claims of it are handed back. The
    /// mark lasts at most a lease, so a write that never happens cannot stop the
    /// webhook for good.
    pub fn gone(&self, webhook: Uuid) {
        let mut state = self.lock();
        let now = Instant::now();
        state.gone.retain(|_, until| *until > now);
        state.gone.insert(webhook, now + self.max_park * 2);
    }

    /// The 410 outcome is recorded: from now on the store has the webhook off and its
    /// deliveries cancelled. The mark stays a moment longer for a claim read just
    /// before that commit.
    pub fn gone_recorded(&self, webhook: Uuid) {
        let mut state = self.lock();
        let soon = Instant::now() + GONE_AFTER_RECORD;
        if let Some(until) = state.gone.get_mut(&webhook) {
            *until = (*until).min(soon);
        }
    }

    /// A delivery's outcome is recorded (or given up): it no longer counts against
    /// its project's share. Later than [`Lanes::finish`], because until then it holds
    /// one of the process's slots.
    pub fn release(&self, project: Uuid) {
        let mut state = self.lock();
        if let Some(n) = state.projects.get_mut(&project) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.projects.remove(&project);
            }
        }
    }

    /// True while the webhook's attempts time out (its deliveries then wait longer
    /// before they are claimed again).
    pub fn is_slowed(&self, webhook: Uuid) -> bool {
        self.lock().slowed.contains_key(&webhook)
    }

    /// Projects at their share of the slots: the next claim leaves them out, so their
    /// backlog is not claimed only to be parked or handed back.
    pub fn full_projects(&self) -> Vec<Uuid> {
        let state = self.lock();
        state
            .projects
            .iter()
            .filter(|(project, n)| **n >= state.project_limit(self.slots, **project))
            .map(|(project, _)| *project)
            .collect()
    }

    /// Parked deliveries whose webhook and project now have room, at most `max` of
    /// them (their places taken), and parked deliveries held too long (to hand back).
    pub fn ready(&self, max: usize) -> (Vec<ClaimedDelivery>, Vec<ClaimedDelivery>) {
        let mut go = Vec::new();
        let mut stale = Vec::new();
        let mut state = self.lock();
        let webhooks: Vec<Uuid> = state
            .lanes
            .iter()
            .filter(|(_, lane)| !lane.parked.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for webhook in webhooks {
            while let Some((front, parked_at)) =
                state.lanes.get(&webhook).and_then(|l| l.parked.front())
            {
                let project = front.project_id;
                if parked_at.elapsed() > self.max_park || state.is_gone(webhook) {
                    if let Some((d, _)) = state
                        .lanes
                        .get_mut(&webhook)
                        .and_then(|l| l.parked.pop_front())
                    {
                        stale.push(d);
                    }
                } else if go.len() < max && state.has_room(self.slots, self.limit, webhook, project)
                {
                    if let Some((d, _)) = state
                        .lanes
                        .get_mut(&webhook)
                        .and_then(|l| l.parked.pop_front())
                    {
                        state.take(webhook, project);
                        go.push(d);
                    }
                } else {
                    break;
                }
            }
        }
        state
            .lanes
            .retain(|_, lane| lane.in_flight > 0 || !lane.parked.is_empty());
        (go, stale)
    }

    pub fn parked(&self) -> usize {
        self.lock()
            .lanes
            .values()
            .map(|lane| lane.parked.len())
            .sum()
    }

    /// Everything parked (at shutdown, to hand back).
    pub fn drain_parked(&self) -> Vec<ClaimedDelivery> {
        let mut state = self.lock();
        let parked = state
            .lanes
            .values_mut()
            .flat_map(|lane| lane.parked.drain(..).map(|(d, _)| d))
            .collect();
        state.lanes.retain(|_, lane| lane.in_flight > 0);
        parked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SigningSecret;

    fn delivery(webhook: Uuid) -> ClaimedDelivery {
        delivery_of(webhook, Uuid::nil())
    }

    fn delivery_of(webhook: Uuid, project: Uuid) -> ClaimedDelivery {
        ClaimedDelivery {
            rate_limit: None,
            ordered: false,
            send_at: None,
            delivery_id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            webhook_id: webhook,
            project_id: project,
            event_type: "e".into(),
            event_created_at: chrono::Utc::now(),
            data: "{}".into(),
            webhook_url: "http://127.0.0.1:1/".into(),
            auth_header: None,
            secret: SigningSecret::generate(),
            previous_secret: None,
            attempts_made: 0,
            lease_token: Uuid::now_v7(),
            origin: crate::store::AttemptTrigger::Publish,
        }
    }

    #[test]
    fn a_full_lane_parks_then_hands_back_and_frees_in_order() {
        let lanes = Lanes::new(2, 100, Duration::from_secs(30));
        let (hot, other) = (Uuid::now_v7(), Uuid::now_v7());
        let go = |a: Admission| matches!(a, Admission::Go(_));
        assert!(go(lanes.admit(delivery(hot))));
        assert!(go(lanes.admit(delivery(hot))));
        let first_parked = delivery(hot);
        let first_id = first_parked.delivery_id;
        assert!(matches!(lanes.admit(first_parked), Admission::Parked));
        assert!(matches!(lanes.admit(delivery(hot)), Admission::Parked));
        assert!(matches!(lanes.admit(delivery(hot)), Admission::HandBack(_)));
        // Another webhook is not affected.
        assert!(go(lanes.admit(delivery(other))));
        assert_eq!(lanes.parked(), 2);

        let (ready, stale) = lanes.ready(10);
        assert!(
            ready.is_empty() && stale.is_empty(),
            "the lane is still full"
        );
        lanes.finish(hot, false);
        lanes.release(Uuid::nil());
        let (ready, stale) = lanes.ready(10);
        assert_eq!(ready.len(), 1);
        assert_eq!(
            ready[0].delivery_id, first_id,
            "parked deliveries go in order"
        );
        assert!(stale.is_empty());
        assert_eq!(lanes.parked(), 1);
        assert_eq!(lanes.drain_parked().len(), 1);
        assert_eq!(lanes.parked(), 0);
    }

    #[test]
    fn nothing_more_goes_to_a_gone_webhook_until_shortly_after_it_is_recorded() {
        let lanes = Lanes::new(1, 100, Duration::from_secs(30));
        let (gone, other) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(matches!(lanes.admit(delivery(gone)), Admission::Go(_)));
        assert!(matches!(lanes.admit(delivery(gone)), Admission::Parked));
        // The 410 is marked before its place frees up: the parked one goes back.
        lanes.gone(gone);
        lanes.finish(gone, false);
        let (ready, stale) = lanes.ready(10);
        assert!(ready.is_empty());
        assert_eq!(stale.len(), 1);
        assert!(matches!(
            lanes.admit(delivery(gone)),
            Admission::HandBack(_)
        ));
        assert!(matches!(lanes.admit(delivery(other)), Admission::Go(_)));
        // Once recorded, the store decides again after a short grace.
        lanes.gone_recorded(gone);
        assert!(lanes.lock().gone[&gone] <= Instant::now() + GONE_AFTER_RECORD);
    }

    #[test]
    fn parking_longer_than_half_a_lease_hands_back() {
        let lanes = Lanes::new(1, 100, Duration::from_millis(20));
        let hot = Uuid::now_v7();
        assert!(matches!(lanes.admit(delivery(hot)), Admission::Go(_)));
        assert!(matches!(lanes.admit(delivery(hot)), Admission::Parked));
        std::thread::sleep(Duration::from_millis(15));
        let (ready, stale) = lanes.ready(10);
        assert!(ready.is_empty());
        assert_eq!(stale.len(), 1);
    }

    #[test]
    fn a_project_gets_its_share_of_the_slots_while_another_has_work() {
        // 8 slots, per-webhook limit 4: alone, a project may take 7.
        let lanes = Lanes::new(4, 8, Duration::from_secs(30));
        let (noisy, quiet) = (Uuid::now_v7(), Uuid::now_v7());
        let hooks: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        let mut went = 0;
        for i in 0..12 {
            if let Admission::Go(_) = lanes.admit(delivery_of(hooks[i % 4], noisy)) {
                went += 1;
            }
        }
        assert_eq!(
            went, 7,
            "alone, a project takes all but an eighth of the slots"
        );
        assert_eq!(lanes.full_projects(), vec![noisy]);
        // A second project gets in at once, up to its half.
        for _ in 0..4 {
            assert!(matches!(
                lanes.admit(delivery_of(Uuid::now_v7(), quiet)),
                Admission::Go(_)
            ));
        }
        assert!(!matches!(
            lanes.admit(delivery_of(Uuid::now_v7(), quiet)),
            Admission::Go(_)
        ));
        // The noisy project, now over its half (4 of 8), gets nothing more until it
        // drops below it.
        lanes.finish(hooks[0], false);
        lanes.release(noisy);
        let (ready, _) = lanes.ready(10);
        assert!(
            ready.iter().all(|d| d.project_id != noisy),
            "over its share"
        );
        lanes.finish(hooks[1], false);
        lanes.release(noisy);
        lanes.finish(hooks[2], false);
        lanes.release(noisy);
        lanes.finish(hooks[3], false);
        lanes.release(noisy);
        let (ready, _) = lanes.ready(10);
        assert!(ready.iter().any(|d| d.project_id == noisy));
    }

    #[test]
    fn timeouts_halve_a_webhooks_places_until_it_answers() {
        let lanes = Lanes::new(8, 100, Duration::from_secs(30));
        let (hook, project) = (Uuid::now_v7(), Uuid::now_v7());
        for _ in 0..8 {
            assert!(matches!(
                lanes.admit(delivery_of(hook, project)),
                Admission::Go(_)
            ));
        }
        for _ in 0..8 {
            lanes.finish(hook, true);
            lanes.release(project);
        }
        assert!(lanes.is_slowed(hook));
        assert!(matches!(
            lanes.admit(delivery_of(hook, project)),
            Admission::Go(_)
        ));
        assert!(
            matches!(lanes.admit(delivery_of(hook, project)), Admission::Parked),
            "down to one place after repeated timeouts"
        );
        lanes.finish(hook, false);
        lanes.release(project);
        assert!(!lanes.is_slowed(hook));
        let (ready, _) = lanes.ready(10);
        assert_eq!(ready.len(), 1);
        assert!(matches!(
            lanes.admit(delivery_of(hook, project)),
            Admission::Go(_)
        ));
    }
}
