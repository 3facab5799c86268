//! Per-webhook lanes: how many deliveries each webhook has in flight, and the claimed
//! deliveries waiting for a place in their webhook's lane.
//!
//! Every webhook may have at most `limit` deliveries in flight, so a receiver that
//! hangs holds at most that many of the process's slots. A claimed delivery whose lane
//! is full is parked here (it keeps its lease) and goes as soon as a place frees up, so
//! a busy but healthy webhook loses no throughput to the limit. Parking is bounded too
//! (`limit` per webhook); beyond it, deliveries are handed back to the store to be
//! claimed again a little later, and so is anything parked for longer than half a
//! lease, so a parked claim never outlives its lease.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::store::ClaimedDelivery;

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

pub struct Lanes {
    limit: usize,
    /// Parked longer than this, a claim is handed back rather than sent.
    max_park: Duration,
    lanes: Mutex<HashMap<Uuid, Lane>>,
}

impl Lanes {
    pub fn new(limit: usize, lease: Duration) -> Self {
        Self {
            limit: limit.max(1),
            max_park: lease / 2,
            lanes: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Lane>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn admit(&self, delivery: ClaimedDelivery) -> Admission {
        let mut lanes = self.lock();
        let lane = lanes.entry(delivery.webhook_id).or_default();
        if lane.in_flight < self.limit {
            lane.in_flight += 1;
            Admission::Go(delivery)
        } else if lane.parked.len() < self.limit {
            lane.parked.push_back((delivery, Instant::now()));
            Admission::Parked
        } else {
            Admission::HandBack(delivery)
        }
    }

    /// A delivery of `webhook` finished: its place is free again.
    pub fn finish(&self, webhook: Uuid) {
        let mut lanes = self.lock();
        if let Some(lane) = lanes.get_mut(&webhook) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if lane.in_flight == 0 && lane.parked.is_empty() {
                lanes.remove(&webhook);
            }
        }
    }

    /// Parked deliveries whose lane now has room, at most `max` of them (their places
    /// taken), and parked deliveries held too long (to hand back).
    pub fn ready(&self, max: usize) -> (Vec<ClaimedDelivery>, Vec<ClaimedDelivery>) {
        let mut go = Vec::new();
        let mut stale = Vec::new();
        let mut lanes = self.lock();
        for lane in lanes.values_mut() {
            while let Some((_, parked_at)) = lane.parked.front() {
                if parked_at.elapsed() > self.max_park {
                    if let Some((d, _)) = lane.parked.pop_front() {
                        stale.push(d);
                    }
                } else if lane.in_flight < self.limit && go.len() < max {
                    if let Some((d, _)) = lane.parked.pop_front() {
                        lane.in_flight += 1;
                        go.push(d);
                    }
                } else {
                    break;
                }
            }
        }
        lanes.retain(|_, lane| lane.in_flight > 0 || !lane.parked.is_empty());
        (go, stale)
    }

    pub fn parked(&self) -> usize {
        self.lock().values().map(|lane| lane.parked.len()).sum()
    }

    /// Everything parked (at shutdown, to hand back).
    pub fn drain_parked(&self) -> Vec<ClaimedDelivery> {
        let mut lanes = self.lock();
        let parked = lanes
            .values_mut()
            .flat_map(|lane| lane.parked.drain(..).map(|(d, _)| d))
            .collect();
        lanes.retain(|_, lane| lane.in_flight > 0);
        parked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SigningSecret;

    fn delivery(webhook: Uuid) -> ClaimedDelivery {
        ClaimedDelivery {
            delivery_id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            webhook_id: webhook,
            project_id: Uuid::nil(),
            event_type: "e".into(),
            event_created_at: chrono::Utc::now(),
            data: "{}".into(),
            webhook_url: "http://127.0.0.1:1/".into(),
            auth_header: None,
            secret: SigningSecret::generate(),
            previous_secret: None,
            attempts_made: 0,
            lease_token: Uuid::now_v7(),
        }
    }

    #[test]
    fn a_full_lane_parks_then_hands_back_and_frees_in_order() {
        let lanes = Lanes::new(2, Duration::from_secs(30));
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
        lanes.finish(hot);
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
    fn parking_longer_than_half_a_lease_hands_back() {
        let lanes = Lanes::new(1, Duration::from_millis(20));
        let hot = Uuid::now_v7();
        assert!(matches!(lanes.admit(delivery(hot)), Admission::Go(_)));
        assert!(matches!(lanes.admit(delivery(hot)), Admission::Parked));
        std::thread::sleep(Duration::from_millis(15));
        let (ready, stale) = lanes.ready(10);
        assert!(ready.is_empty());
        assert_eq!(stale.len(), 1);
    }
}
