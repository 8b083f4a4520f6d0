//! History past the ring: which reads must ask the store (or, in cluster mode, the stream),
//! what to read, how a store read's answer completes a `since` replay or a `/history` body,
//! and the `/history` body itself. Methods of [`Sequencer`], on the owner core's thread.

use super::Sequencer;
use crate::frame::Frame;
use crate::owner::Replay;
use crate::store::StoredRange;
use std::sync::Arc;

/// Re-reads allowed when the ring moved past a store read while it was in flight.
pub const BACKFILL_TRIES: u8 = 3;

/// A backfill: an answer that needs stored messages older than the history ring, waiting for
/// the store's (or the stream's) read.
#[derive(Debug)]
pub enum Backfill<T> {
    /// A `since` replay of a subscription.
    Replay {
        /// Concrete subject.
        subject: Box<str>,
        /// Messages with seq > since.
        since: u64,
        /// Who waits for the replay.
        to: T,
        /// Reads so far.
        tries: u8,
    },
    /// A `/history` request.
    History {
        /// Concrete subject.
        subject: Box<str>,
        /// Messages with seq > since.
        since: u64,
        /// At most this many.
        limit: usize,
        /// Who waits for the body.
        to: T,
    },
}

/// The part of a backfill to read from the store: messages of `subject` with
/// `after < seq < before`, at most `limit`, the newest ones if `newest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// Concrete subject.
    pub subject: Box<str>,
    /// Lower bound (exclusive).
    pub after: u64,
    /// Upper bound (exclusive): the ring's first seq.
    pub before: u64,
    /// Most messages.
    pub limit: usize,
    /// Keep the newest when the range holds more.
    pub newest: bool,
}

/// What to do with a store read's answer.
#[derive(Debug)]
pub enum Finished<T> {
    /// The replay is complete.
    Replay(T, Replay),
    /// The `/history` body is complete.
    History(T, Vec<u8>),
    /// The ring moved on while the read was in flight: read again.
    ReadAgain(Backfill<T>),
}

impl<T> Sequencer<T> {
    /// True when `/history` of `subject` must ask the store as well as the ring: history
    /// outlives the rings and the subject exists, so `first_seq` names the oldest message the
    /// store holds, whatever `since` is.
    pub fn history_needs_store(&self, subject: &str) -> bool {
        self.backed && self.owned.contains_key(subject)
    }

    /// True when messages of `subject` after `since` are older than the ring and the store may
    /// hold them.
    pub fn replay_needs_store(&self, subject: &str, since: u64) -> bool {
        self.backed
            && self
                .owned
                .get(subject)
                .is_some_and(|s| since + 1 < s.first_retained() && since < s.last_seq())
    }

    /// What to read from the store for `backfill`.
    pub fn read_plan(&self, backfill: &Backfill<T>) -> ReadPlan {
        let (subject, after, limit, newest) = match backfill {
            Backfill::Replay { subject, since, .. } => {
                (subject.clone(), *since, crate::store::MAX_READ, true)
            }
            Backfill::History {
                subject,
                since,
                limit,
                ..
            } => (subject.clone(), *since, *limit, false),
        };
        let before = self
            .owned
            .get(&*subject)
            .map_or(u64::MAX, |s| s.first_retained());
        ReadPlan {
            subject,
            after,
            before,
            limit,
            newest,
        }
    }

    /// Completes `backfill` with what the store read.
    pub fn finish(&self, backfill: Backfill<T>, range: StoredRange) -> Finished<T> {
        match backfill {
            Backfill::History {
                subject,
                since,
                limit,
                to,
            } => Finished::History(to, self.history(&subject, since, limit, Some(range))),
            Backfill::Replay {
                subject,
                since,
                to,
                tries,
            } => {
                let state = self.owned.get(&*subject);
                let ring_first = state.map_or(u64::MAX, |s| s.first_retained());
                let mut replay = state.map(|s| s.replay_since(since)).unwrap_or_default();
                let (Some(first), Some(last)) = (range.frames.first(), range.frames.last()) else {
                    return Finished::Replay(to, replay);
                };
                if ring_first > last.seq() + 1 && tries < BACKFILL_TRIES {
                    let tries = tries + 1;
                    return Finished::ReadAgain(Backfill::Replay {
                        subject,
                        since,
                        to,
                        tries,
                    });
                }
                replay.gap = (first.seq() > since + 1).then(|| (since + 1, first.seq() - 1));
                let newer = replay.frames.into_iter().filter(|f| f.seq() > last.seq());
                replay.frames = range.frames.iter().cloned().chain(newer).collect();
                Finished::Replay(to, replay)
            }
        }
    }

    /// The `/history` body: `stored` (messages older than the ring, read from the store)
    /// first, then the ring.
    pub fn history(
        &self,
        subject: &str,
        since: u64,
        limit: usize,
        stored: Option<StoredRange>,
    ) -> Vec<u8> {
        let state = self.owned.get(subject);
        let (mut first, last) = state.map_or((1, 0), |s| (s.first_retained(), s.last_seq()));
        let stored = stored.unwrap_or_default();
        if stored.first_seq > 0 {
            first = first.min(stored.first_seq);
        }
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"subject\":");
        serde_json::to_writer(&mut out, subject).expect("Vec write");
        out.extend_from_slice(
            format!(",\"first_seq\":{first},\"last_seq\":{last},\"messages\":[").as_bytes(),
        );
        let from_ring = stored.frames.last().map_or(since, |f| f.seq().max(since));
        let ring = state.into_iter().flat_map(|s| s.after(from_ring, limit));
        for (i, f) in stored.frames.iter().chain(ring).take(limit).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(
                format!("{{\"seq\":{},\"ts\":{},\"data\":", f.seq(), f.ts()).as_bytes(),
            );
            out.extend_from_slice(f.data());
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// A cluster read's answer as a store read's (a failed read is logged and reads as empty:
/// the replay then reports the gap, the history shows what the ring has).
pub fn fetched_range(
    result: Result<crate::cluster::Fetched, crate::cluster::ClusterError>,
) -> StoredRange {
    match result {
        Ok(f) => StoredRange {
            first_seq: f.first_seq,
            frames: f
                .messages
                .iter()
                .map(|m| {
                    let id = m.msg_id.as_deref();
                    Arc::new(Frame::encode(&m.subject, m.seq, m.ts, &m.data, id))
                })
                .collect(),
        },
        Err(e) => {
            tracing::warn!("history read from the cluster stream failed: {e}");
            StoredRange::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{limits, publish, sequencer};
    use super::*;
    use crate::frame::Frame;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    #[test]
    fn the_history_body_lists_retained_messages_after_since() {
        let mut s = sequencer(8);
        for _ in 0..3 {
            publish(&mut s, "a", None);
        }
        let body: serde_json::Value = serde_json::from_slice(&s.history("a", 1, 10, None)).unwrap();
        assert_eq!(body["first_seq"], 1);
        assert_eq!(body["last_seq"], 3);
        let seqs: Vec<u64> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, vec![2, 3]);
        let empty: serde_json::Value =
            serde_json::from_slice(&s.history("zz", 0, 10, None)).unwrap();
        assert_eq!(
            (empty["first_seq"].as_u64(), empty["last_seq"].as_u64()),
            (Some(1), Some(0))
        );
    }

    #[test]
    fn without_a_store_nothing_is_read_past_the_ring() {
        let mut s = sequencer(2);
        for _ in 0..5 {
            publish(&mut s, "a", None);
        }
        assert!(!s.replay_needs_store("a", 0));
        assert!(!s.history_needs_store("a"));
    }

    #[test]
    fn a_store_read_fills_the_hole_below_the_ring_and_reports_what_it_lacks() {
        let mut s: Sequencer<&str> =
            Sequencer::new(0, limits(2), Arc::new(MemoryStore), true, Vec::new());
        for _ in 0..6 {
            publish(&mut s, "a", None);
        }
        assert!(s.replay_needs_store("a", 0));
        let backfill = Backfill::Replay {
            subject: "a".into(),
            since: 0,
            to: "me",
            tries: 0,
        };
        let plan = s.read_plan(&backfill);
        assert_eq!((plan.after, plan.before, plan.newest), (0, 5, true));
        // The store still holds seq 2..=4: seq 1 is announced as a gap.
        let stored = (2..=4)
            .map(|n| Arc::new(Frame::encode("a", n, 0, b"1", None)))
            .collect();
        let range = StoredRange {
            first_seq: 2,
            frames: stored,
        };
        match s.finish(backfill, range) {
            Finished::Replay(to, r) => {
                assert_eq!(to, "me");
                assert_eq!(r.gap, Some((1, 1)));
                let seqs: Vec<u64> = r.frames.iter().map(|f| f.seq()).collect();
                assert_eq!(seqs, vec![2, 3, 4, 5, 6]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_store_read_overtaken_by_the_ring_is_read_again() {
        let mut s: Sequencer<&str> =
            Sequencer::new(0, limits(2), Arc::new(MemoryStore), true, Vec::new());
        for _ in 0..9 {
            publish(&mut s, "a", None);
        }
        let backfill = Backfill::Replay {
            subject: "a".into(),
            since: 0,
            to: "me",
            tries: 0,
        };
        // The read returned 1..=3 but the ring now starts at 8: 4..=7 would be missing.
        let range = StoredRange {
            first_seq: 1,
            frames: (1..=3)
                .map(|n| Arc::new(Frame::encode("a", n, 0, b"1", None)))
                .collect(),
        };
        assert!(matches!(
            s.finish(backfill, range),
            Finished::ReadAgain(Backfill::Replay { tries: 1, .. })
        ));
    }
}
