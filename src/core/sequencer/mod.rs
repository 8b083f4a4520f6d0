//! `Sequencer`: the subjects one core owns, and everything it answers for them.
//!
//! Owns the [`SubjectState`] (seq, history ring, dedup window) of every subject
//! [`crate::bus::owner_of`] gives this core, this core's broadcast counter (`Frame::xseq`),
//! the store ticket of its last append and, with sync durability, the accepted messages
//! waiting for their fsync. Answers history reads (ring first, then the store for what is
//! older). Returns values (frames to broadcast, answers to give); sending them is the core's
//! job. Core-local: touched only by the owning core's thread.
//!
//! [`history`] holds the reads that go past the ring to the store.
//!
//! Generic over `T`, whoever waits for an answer (the core uses its reply address), so it can
//! be driven and tested on its own.

use crate::frame::Frame;
use crate::metrics::{self, CoreMetrics};
use crate::os::now_us;
use crate::owner::{Accepted, Replay, Stamp, SubjectLimits, SubjectState};
use crate::proto::{PubAck, PubError, PubResult};
use crate::store::{Durability, HistoryStore, RecoveredSubject};
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

pub mod budget;
pub mod history;
pub use budget::{Budgets, SubjectGauges};
pub use history::{fetched_range, Backfill, Finished, ReadPlan, BACKFILL_TRIES};

/// What a replay request asks the owner for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayKind {
    /// Retained messages of one concrete subject with seq > N.
    Since(u64),
    /// The latest retained message of every owned subject matching the pattern.
    Snapshot,
}

/// A publish the sequencer is done with: deliver `frame` (already retained) if there is one,
/// then give `to` its `result`.
#[derive(Debug)]
pub struct Ready<T> {
    /// The new message to broadcast (`None`: a duplicate, or refused).
    pub frame: Option<Arc<Frame>>,
    /// Who waits for the outcome.
    pub to: T,
    /// The outcome.
    pub result: PubResult,
}

/// Sync durability: an accepted message (or a duplicate's answer) waiting for the fsync of
/// the store group holding everything before it.
struct Unsynced<T> {
    ticket: u64,
    frame: Option<Arc<Frame>>,
    ack: PubAck,
    to: T,
}

/// The subjects one core owns.
pub struct Sequencer<T> {
    core: usize,
    /// Keyed by `Rc<str>`: the ledger's retention order names subjects by the same key.
    owned: HashMap<Rc<str>, SubjectState>,
    limits: SubjectLimits,
    /// What the rings hold against this core's budgets (see [`budget`]).
    ledger: budget::Ledger,
    store: Arc<dyn HistoryStore>,
    /// True when history outlives the rings (a durable store, or the cluster's stream).
    backed: bool,
    /// This core's broadcast counter as a subject owner (see `Frame::xseq`).
    xseq: u64,
    /// Sync durability: accepted messages waiting for their fsync, in acceptance order.
    unsynced: VecDeque<Unsynced<T>>,
    /// Ticket of this core's last store append.
    ticket: u64,
}

impl<T> Sequencer<T> {
    /// The sequencer of core `core`, starting from what the store recovered. `backed`: history
    /// outlives the rings (durable store or cluster stream), so reads past the ring go there.
    pub fn new(
        core: usize,
        limits: SubjectLimits,
        store: Arc<dyn HistoryStore>,
        backed: bool,
        recovered: Vec<RecoveredSubject>,
    ) -> Sequencer<T> {
        let owned = recovered
            .into_iter()
            .map(|r| (Rc::from(&*r.subject), SubjectState::restore(r, &limits)))
            .collect();
        let mut s = Sequencer {
            core,
            owned,
            limits,
            ledger: budget::Ledger::default(),
            store,
            backed,
            xseq: 0,
            unsynced: VecDeque::new(),
            ticket: 0,
        };
        s.account_restored();
        s
    }

    /// Subjects owned.
    pub fn len(&self) -> usize {
        self.owned.len()
    }

    /// True when this core owns no subject yet.
    pub fn is_empty(&self) -> bool {
        self.owned.is_empty()
    }

    /// Sequences a publish: seq, ts, one encoding, the store append. `fired`: the id of the
    /// schedule this publish fires (deleted with it). Returns what is ready now; with sync
    /// durability a new message waits for its fsync (see [`Sequencer::durable`]). Counts it
    /// in `m` (published or duplicate) when it is accepted.
    pub fn publish(
        &mut self,
        m: &CoreMetrics,
        subject: &str,
        data: &[u8],
        msg_id: Option<&str>,
        fired: Option<&str>,
        to: T,
    ) -> Option<Ready<T>> {
        if fired.is_none() && self.store.saturated() {
            // Refuse rather than queue without bound (a fired schedule still goes through:
            // it has no one to retry it).
            return Some(Ready {
                frame: None,
                to,
                result: Err(PubError::StoreBehind),
            });
        }
        let at = Stamp {
            now_us: now_us(),
            now: Instant::now(),
            xseq: self.xseq + 1,
        };
        if fired.is_none() && !self.has_room_for(subject) {
            // A fired schedule still goes through: it has no one to retry it.
            m.refused(crate::metrics::Budget::Subjects);
            return Some(Ready {
                frame: None,
                to,
                result: Err(PubError::TooManySubjects),
            });
        }
        let state = self.owned.entry_ref(subject).or_default();
        self.ledger.woke(state);
        match state.accept(subject, data, msg_id, at, &self.limits) {
            Accepted::Duplicate { seq, ts } => {
                metrics::add(&m.duplicates, 1);
                self.duplicate(seq, ts, fired, to)
            }
            Accepted::New(frame) => {
                metrics::add(&m.published, 1);
                self.accepted(frame, fired, to)
            }
        }
    }

    fn sync(&self) -> bool {
        self.store.durability() == Durability::Sync
    }

    fn duplicate(&mut self, seq: u64, ts: u64, fired: Option<&str>, to: T) -> Option<Ready<T>> {
        if let Some(id) = fired {
            self.store.delete_schedule(id);
        }
        let ack = PubAck {
            seq,
            ts,
            duplicate: true,
        };
        if self.sync() && !self.unsynced.is_empty() {
            // The original may still be waiting for its fsync: answer after it.
            let ticket = self.ticket;
            self.unsynced.push_back(Unsynced {
                ticket,
                frame: None,
                ack,
                to,
            });
            return None;
        }
        Some(Ready {
            frame: None,
            to,
            result: Ok(ack),
        })
    }

    fn accepted(&mut self, frame: Arc<Frame>, fired: Option<&str>, to: T) -> Option<Ready<T>> {
        self.xseq = frame.xseq();
        let ack = PubAck {
            seq: frame.seq(),
            ts: frame.ts(),
            duplicate: false,
        };
        if self.store.durability() != Durability::None {
            self.ticket = self.store.append(self.core, &frame, fired);
        }
        if self.sync() {
            let ticket = self.ticket;
            self.unsynced.push_back(Unsynced {
                ticket,
                frame: Some(frame),
                ack,
                to,
            });
            return None;
        }
        self.retain(&frame);
        Some(Ready {
            frame: Some(frame),
            to,
            result: Ok(ack),
        })
    }

    /// Cluster mode: a message the stream sequenced; encoded once and retained, to broadcast
    /// like a local publish (counted in `m`). `None` for a repeat after a reconnect.
    pub fn replicated(
        &mut self,
        m: &CoreMetrics,
        msg: &crate::cluster::Replicated,
    ) -> Option<Arc<Frame>> {
        let at = Stamp {
            now_us: msg.ts,
            now: Instant::now(),
            xseq: self.xseq + 1,
        };
        let state = self.owned.entry_ref(&*msg.subject).or_default();
        self.ledger.woke(state);
        let before = budget::Held::of(state);
        let frame = state.accept_replicated(msg, at, &self.limits);
        self.ledger.account(before, state);
        let frame = frame?;
        self.xseq = frame.xseq();
        metrics::add(&m.published, 1);
        self.retain(&frame);
        Some(frame)
    }

    /// Sync durability: the store made this core's appends up to `upto` durable (or failed to):
    /// everything waiting for them, in order. A failed write is still delivered (memory stays
    /// consistent and seqs contiguous); its publisher is told it is not durable.
    pub fn durable(&mut self, upto: u64, ok: bool) -> Vec<Ready<T>> {
        let mut ready = Vec::new();
        while self.unsynced.front().is_some_and(|u| u.ticket <= upto) {
            let u = self.unsynced.pop_front().expect("front exists");
            if let Some(f) = &u.frame {
                self.retain(f);
            }
            let result = if ok {
                Ok(u.ack)
            } else {
                Err(PubError::NotDurable)
            };
            ready.push(Ready {
                frame: u.frame,
                to: u.to,
                result,
            });
        }
        ready
    }

    /// Messages accepted and waiting for their fsync.
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    // ---- reads ----------------------------------------------------------------------------

    /// What the ring holds for a replay (`since` of a concrete subject, or the latest value of
    /// every owned subject matching a pattern, sorted by subject).
    pub fn replay(&self, pattern: &str, kind: &ReplayKind) -> Replay {
        match kind {
            ReplayKind::Since(n) => self
                .owned
                .get(pattern)
                .map(|s| s.replay_since(*n))
                .unwrap_or_default(),
            ReplayKind::Snapshot => {
                let mut frames: Vec<Arc<Frame>> = if crate::subject::is_literal(pattern) {
                    let latest = self.owned.get(pattern).and_then(|s| s.latest());
                    latest.cloned().into_iter().collect()
                } else {
                    self.owned
                        .iter()
                        .filter(|(subj, _)| crate::subject::matches(pattern, subj))
                        .filter_map(|(_, s)| s.latest().cloned())
                        .collect()
                };
                frames.sort_by(|a, b| a.subject().cmp(b.subject()));
                Replay { gap: None, frames }
            }
        }
    }

    /// Session hand-over: retained frames of owned subjects matching any of `patterns` that
    /// were broadcast after stream position `after`, in broadcast order.
    pub fn catch_up(&self, patterns: &[Box<str>], after: u64) -> Vec<Arc<Frame>> {
        let mut frames: Vec<Arc<Frame>> = self
            .owned
            .iter()
            .filter(|(subject, _)| patterns.iter().any(|p| crate::subject::matches(p, subject)))
            .flat_map(|(_, s)| s.after_xseq(after).cloned())
            .collect();
        frames.sort_by_key(|f| f.xseq());
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::time::Duration;

    pub(super) fn limits(history: usize) -> SubjectLimits {
        SubjectLimits {
            history,
            dedup_ids: 16,
            dedup_ttl: Duration::from_secs(60),
        }
    }

    pub(super) fn sequencer(history: usize) -> Sequencer<&'static str> {
        Sequencer::new(0, limits(history), Arc::new(MemoryStore), false, Vec::new())
    }

    pub(super) fn publish(
        s: &mut Sequencer<&'static str>,
        subject: &str,
        id: Option<&str>,
    ) -> Ready<&'static str> {
        let m = CoreMetrics::default();
        s.publish(&m, subject, b"1", id, None, "me")
            .expect("memory store answers at once")
    }

    #[test]
    fn each_subject_counts_its_own_seq_and_the_broadcast_counter_spans_them() {
        let mut s = sequencer(8);
        let a1 = publish(&mut s, "a", None);
        let b1 = publish(&mut s, "b", None);
        let a2 = publish(&mut s, "a", None);
        let seqs: Vec<u64> = [&a1, &b1, &a2]
            .iter()
            .map(|r| r.result.unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![1, 1, 2]);
        let xseqs: Vec<u64> = [&a1, &b1, &a2]
            .iter()
            .map(|r| r.frame.as_ref().unwrap().xseq())
            .collect();
        assert_eq!(xseqs, vec![1, 2, 3]);
        assert_eq!(a2.to, "me");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_repeated_msg_id_is_answered_with_the_original_and_not_broadcast() {
        let mut s = sequencer(8);
        let first = publish(&mut s, "a", Some("x"));
        let again = publish(&mut s, "a", Some("x"));
        assert!(again.frame.is_none());
        let (f, a) = (first.result.unwrap(), again.result.unwrap());
        assert_eq!((a.seq, a.ts, a.duplicate), (f.seq, f.ts, true));
    }

    #[test]
    fn a_since_replay_and_a_snapshot_come_from_the_ring() {
        let mut s = sequencer(3);
        for _ in 0..5 {
            publish(&mut s, "p.a", None);
        }
        publish(&mut s, "p.b", None);
        let r = s.replay("p.a", &ReplayKind::Since(1));
        assert_eq!(r.gap, Some((2, 2)), "seq 2 fell out of the ring");
        assert_eq!(
            r.frames.iter().map(|f| f.seq()).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let snap = s.replay("p.*", &ReplayKind::Snapshot);
        let latest: Vec<(&str, u64)> = snap.frames.iter().map(|f| (f.subject(), f.seq())).collect();
        assert_eq!(latest, vec![("p.a", 5), ("p.b", 1)]);
    }

    #[test]
    fn catch_up_gives_what_was_broadcast_after_a_position_in_broadcast_order() {
        let mut s = sequencer(8);
        for subject in ["a", "b", "a", "c"] {
            publish(&mut s, subject, None);
        }
        let patterns: Vec<Box<str>> = vec!["a".into(), "b".into()];
        let frames = s.catch_up(&patterns, 1);
        let got: Vec<(&str, u64)> = frames.iter().map(|f| (f.subject(), f.xseq())).collect();
        assert_eq!(got, vec![("b", 2), ("a", 3)]);
    }
}
