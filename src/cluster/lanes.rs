//! [`Lanes`]: the per-subject FIFO of publishes that keeps at most one publish per subject in
//! flight on this node, so that a node's own publishes on a subject never race each other on
//! the seq guard and keep their order.
//!
//! Owns the queued publishes and the count of pending ones (queued or in flight, bounded by
//! [`MAX_PENDING_PUBLISHES`](super::MAX_PENDING_PUBLISHES)). Pure bookkeeping: touched only by
//! the bridge's main loop on the bridge thread, which starts the publishes it hands back.

use super::PubReq;
use hashbrown::HashMap;
use std::collections::VecDeque;

/// The head of each lane is in flight (not held here), the rest wait in order.
pub(super) struct Lanes {
    lanes: HashMap<Box<str>, VecDeque<PubReq>>,
    /// Publishes queued or in flight, all lanes.
    pending: usize,
    /// Bound on `pending`.
    max: usize,
}

impl Lanes {
    pub(super) fn new(max_pending: usize) -> Self {
        Lanes {
            lanes: HashMap::new(),
            pending: 0,
            max: max_pending,
        }
    }

    /// No room for another publish: it is to be answered `Unavailable` at once.
    pub(super) fn is_full(&self) -> bool {
        self.pending >= self.max
    }

    /// Takes a publish in. It comes back when its subject had nothing in flight: it is then
    /// the lane's head and is to be started now. Otherwise it waits behind the head.
    pub(super) fn push(&mut self, p: PubReq) -> Option<PubReq> {
        self.pending += 1;
        match self.lanes.get_mut(&p.subject) {
            Some(lane) => {
                lane.push_back(p);
                None
            }
            None => {
                self.lanes.insert(p.subject.clone(), VecDeque::new());
                Some(p)
            }
        }
    }

    /// The publish in flight on `subject` is finished; returns the lane's next publish, to be
    /// started now. A lane left empty is dropped.
    pub(super) fn done(&mut self, subject: &str) -> Option<PubReq> {
        self.pending -= 1;
        let next = self.lanes.get_mut(subject).and_then(VecDeque::pop_front);
        if next.is_none() {
            self.lanes.remove(subject);
        }
        next
    }

    /// Stopping: the publishes still waiting (not the heads in flight), to be answered.
    pub(super) fn into_queued(self) -> impl Iterator<Item = PubReq> {
        self.lanes.into_values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn req(subject: &str, token: u64) -> PubReq {
        PubReq {
            subject: subject.into(),
            data: Bytes::from_static(b"1"),
            msg_id: None,
            from: 0,
            token,
        }
    }

    fn token(p: Option<PubReq>) -> Option<u64> {
        p.map(|p| p.token)
    }

    #[test]
    fn the_first_publish_on_a_subject_goes_at_once_the_next_waits_for_it() {
        let mut lanes = Lanes::new(16);
        assert_eq!(token(lanes.push(req("a", 1))), Some(1));
        assert_eq!(token(lanes.push(req("a", 2))), None);
        assert_eq!(token(lanes.push(req("a", 3))), None);
        assert_eq!(token(lanes.done("a")), Some(2));
        assert_eq!(token(lanes.done("a")), Some(3));
        assert_eq!(token(lanes.done("a")), None);
    }

    #[test]
    fn subjects_do_not_wait_for_each_other() {
        let mut lanes = Lanes::new(16);
        assert_eq!(token(lanes.push(req("a", 1))), Some(1));
        assert_eq!(token(lanes.push(req("b", 2))), Some(2));
        assert_eq!(token(lanes.push(req("a", 3))), None);
        assert_eq!(token(lanes.done("b")), None);
        assert_eq!(token(lanes.done("a")), Some(3));
    }

    #[test]
    fn an_idle_subject_goes_at_once_again() {
        let mut lanes = Lanes::new(16);
        lanes.push(req("a", 1));
        assert_eq!(token(lanes.done("a")), None);
        assert_eq!(token(lanes.push(req("a", 2))), Some(2));
    }

    #[test]
    fn the_bound_counts_queued_and_in_flight_publishes() {
        let mut lanes = Lanes::new(2);
        lanes.push(req("a", 1));
        assert!(!lanes.is_full());
        lanes.push(req("a", 2));
        assert!(lanes.is_full(), "one in flight, one queued");
        lanes.done("a");
        assert!(!lanes.is_full(), "the queued one is in flight now");
        lanes.done("a");
        lanes.push(req("b", 3));
        lanes.push(req("c", 4));
        assert!(lanes.is_full(), "two in flight on two subjects");
    }

    #[test]
    fn stopping_hands_back_the_waiting_publishes_not_those_in_flight() {
        let mut lanes = Lanes::new(16);
        lanes.push(req("a", 1));
        lanes.push(req("a", 2));
        lanes.push(req("a", 3));
        lanes.push(req("b", 4));
        let mut left: Vec<u64> = lanes.into_queued().map(|p| p.token).collect();
        left.sort_unstable();
        assert_eq!(left, [2, 3]);
    }
}
