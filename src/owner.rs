//! `SubjectState`: what a subject's owner core keeps for it: the sequence counter, the bounded
//! history ring (which also gives the latest value), and the publish de-duplication window.
//!
//! Every subject has exactly one owner core (`bus::owner_of`); only that core's thread touches
//! its `SubjectState`, so sequencing needs no lock and seq is strictly increasing.

use crate::frame::Frame;
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits of one subject's state.
#[derive(Debug, Clone, Copy)]
pub struct SubjectLimits {
    /// Messages kept in the history ring (`--history`).
    pub history: usize,
    /// Most `msg_id`s remembered (`--dedup-window`).
    pub dedup_ids: usize,
    /// How long a `msg_id` is remembered (`--dedup-secs`).
    pub dedup_ttl: Duration,
}

/// When (and where in the owner's broadcast stream) a publish is accepted.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// Acceptance time, microseconds since the Unix epoch (becomes `ts`).
    pub now_us: u64,
    /// Acceptance time, monotonic (dedup window ages).
    pub now: Instant,
    /// Broadcast position the frame gets if it is new.
    pub xseq: u64,
}

/// The outcome of offering a publish to the owner.
#[derive(Debug)]
pub enum Accepted {
    /// A new message: sequenced, retained, to be delivered.
    New(Arc<Frame>),
    /// A repeated `msg_id`: the original seq/ts; nothing is delivered.
    Duplicate {
        /// Original seq.
        seq: u64,
        /// Original ts.
        ts: u64,
    },
}

/// Replay of retained messages after a given seq.
#[derive(Debug, Default)]
pub struct Replay {
    /// Missing range `(from, to)` that history no longer holds.
    pub gap: Option<(u64, u64)>,
    /// Retained frames with seq > since, oldest first.
    pub frames: Vec<Arc<Frame>>,
}

/// Recently seen `msg_id`s of one subject, bounded by count and age.
#[derive(Default)]
struct Dedup {
    seen: HashMap<Rc<str>, (u64, u64)>,
    order: VecDeque<(Rc<str>, Instant)>,
}

impl Dedup {
    fn remember(&mut self, id: &str, seq: u64, ts: u64, at: Instant, limits: &SubjectLimits) {
        let id: Rc<str> = Rc::from(id);
        self.seen.insert(id.clone(), (seq, ts));
        self.order.push_back((id, at));
        self.expire(at, limits);
    }

    fn expire(&mut self, now: Instant, limits: &SubjectLimits) {
        while let Some((id, at)) = self.order.front() {
            if self.order.len() > limits.dedup_ids || now.duration_since(*at) > limits.dedup_ttl {
                self.seen.remove(id);
                self.order.pop_front();
            } else {
                break;
            }
        }
    }
}

/// State of one subject on its owner core.
pub struct SubjectState {
    /// Highest seq assigned (accepted, maybe still waiting to be durable).
    assigned: u64,
    last_ts: u64,
    /// Highest seq retained (delivered); trails `assigned` while frames wait to be durable.
    visible: u64,
    history: VecDeque<Arc<Frame>>,
    /// What `history` holds, as [`Frame::heap_bytes`] counts it.
    bytes: usize,
    dedup: Dedup,
    /// When it last accepted a publish (or was created).
    last_active: Instant,
    /// Its history and dedup window expired (`--subject-ttl`); seq and ts are kept.
    dormant: bool,
}

impl Default for SubjectState {
    fn default() -> Self {
        SubjectState {
            assigned: 0,
            last_ts: 0,
            visible: 0,
            history: VecDeque::new(),
            bytes: 0,
            dedup: Dedup::default(),
            last_active: Instant::now(),
            dormant: false,
        }
    }
}

impl SubjectState {
    /// Sequences a publish: assigns seq and ts, encodes the frame once, retains it.
    /// ts never goes backwards within a subject.
    pub fn accept(
        &mut self,
        subject: &str,
        data: &[u8],
        msg_id: Option<&str>,
        at: Stamp,
        limits: &SubjectLimits,
    ) -> Accepted {
        let Stamp { now_us, now, xseq } = at;
        if let Some(id) = msg_id {
            self.dedup.expire(now, limits);
            if let Some(&(seq, ts)) = self.dedup.seen.get(id) {
                return Accepted::Duplicate { seq, ts };
            }
        }
        self.last_active = now;
        let seq = self.assigned + 1;
        let ts = now_us.max(self.last_ts);
        let frame = Arc::new(Frame::encode(subject, seq, ts, data, msg_id).with_xseq(xseq));
        self.assigned = seq;
        self.last_ts = ts;
        if let Some(id) = msg_id {
            self.dedup.remember(id, seq, ts, now, limits);
        }
        Accepted::New(frame)
    }

    /// Cluster mode: takes a message as the cluster's stream sequenced it. `None` when this
    /// subject already has that seq (a repeat after a reconnect). A jump in seq (the node
    /// started late, or the stream's retention dropped what it had not consumed) restarts the
    /// ring, which must stay contiguous.
    pub fn accept_replicated(
        &mut self,
        msg: &crate::cluster::Replicated,
        at: Stamp,
        limits: &SubjectLimits,
    ) -> Option<Arc<Frame>> {
        if msg.seq <= self.assigned {
            return None;
        }
        self.last_active = at.now;
        if msg.seq != self.assigned + 1 {
            self.history.clear();
            self.bytes = 0;
        }
        let msg_id = msg.msg_id.as_deref();
        let frame = Frame::encode(&msg.subject, msg.seq, msg.ts, &msg.data, msg_id);
        let frame = Arc::new(frame.with_xseq(at.xseq));
        self.assigned = msg.seq;
        self.last_ts = self.last_ts.max(msg.ts);
        if let Some(id) = msg_id {
            self.dedup.remember(id, msg.seq, msg.ts, at.now, limits);
        }
        Some(frame)
    }

    /// Adds an accepted frame to the history ring (at once, or once it is durable: frames are
    /// retained in seq order either way, so the ring stays contiguous).
    pub fn retain(&mut self, frame: Arc<Frame>, limits: &SubjectLimits) {
        self.visible = frame.seq();
        if limits.history > 0 {
            if self.history.len() >= limits.history {
                self.pop_oldest();
            }
            self.bytes += frame.heap_bytes();
            self.history.push_back(frame);
        }
    }

    /// Drops the oldest retained message (to stay within a byte budget, or the count);
    /// returns its bytes (0 when nothing is retained).
    pub fn pop_oldest(&mut self) -> usize {
        let freed = self.history.pop_front().map_or(0, |f| f.heap_bytes());
        self.bytes -= freed;
        freed
    }

    /// Bytes of the retained messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages retained.
    pub fn retained(&self) -> usize {
        self.history.len()
    }

    /// True when it has accepted nothing since `cutoff`, is not dormant yet, and has nothing
    /// accepted that still waits to become visible (sync durability).
    pub fn idle_since(&self, cutoff: Instant) -> bool {
        !self.dormant && self.last_active <= cutoff && self.assigned == self.visible
    }

    /// Its history expired: frees the ring (all of it, or all but the latest message when
    /// `keep_latest`: a store holds the rest) and the dedup window; seq and ts stay. Returns
    /// the bytes freed.
    pub fn make_dormant(&mut self, keep_latest: bool) -> usize {
        let keep = usize::from(keep_latest);
        let before = self.bytes;
        while self.history.len() > keep {
            self.pop_oldest();
        }
        self.history.shrink_to_fit();
        self.dedup = Dedup::default();
        self.dormant = true;
        before - self.bytes
    }

    /// True while its history is expired (until its next publish).
    pub fn is_dormant(&self) -> bool {
        self.dormant
    }

    /// It was published to again: no longer dormant.
    pub fn wake(&mut self) {
        self.dormant = false;
    }

    /// Rebuilds a subject's state from the store (start-up): seq and ts continue, the newest
    /// stored messages fill the ring, and ids still inside the dedup window are remembered.
    pub fn restore(rec: crate::store::RecoveredSubject, limits: &SubjectLimits) -> SubjectState {
        let now = Instant::now();
        let now_us = crate::os::now_us();
        let mut s = SubjectState {
            assigned: rec.last_seq,
            last_ts: rec.last_ts,
            visible: rec.last_seq,
            ..SubjectState::default()
        };
        let skip = rec.frames.len().saturating_sub(limits.history);
        for f in rec.frames.into_iter().skip(skip) {
            s.bytes += f.heap_bytes();
            s.history.push_back(f);
        }
        for (id, seq, ts) in rec.ids {
            let age = Duration::from_micros(now_us.saturating_sub(ts));
            if age > limits.dedup_ttl {
                continue;
            }
            let at = now.checked_sub(age).unwrap_or(now);
            s.dedup.remember(&id, seq, ts, at, limits);
        }
        s
    }

    /// Highest seq delivered so far (0: never published). Sync durability: seqs assigned
    /// to messages still waiting for their fsync are not counted.
    pub fn last_seq(&self) -> u64 {
        self.visible
    }

    /// Seq of the oldest retained message (`last_seq() + 1` when none is retained).
    pub fn first_retained(&self) -> u64 {
        self.history.front().map_or(self.visible + 1, |f| f.seq())
    }

    /// The latest retained message.
    pub fn latest(&self) -> Option<&Arc<Frame>> {
        self.history.back()
    }

    /// Retained frames with seq > `since`, at most `limit`, oldest first.
    pub fn after(&self, since: u64, limit: usize) -> impl Iterator<Item = &Arc<Frame>> {
        // seqs in the ring are contiguous, so the start index is arithmetic.
        let first = self.first_retained();
        let skip = since.saturating_add(1).saturating_sub(first) as usize;
        self.history.iter().skip(skip).take(limit)
    }

    /// Retained frames the owner broadcast after stream position `xseq`, oldest first.
    pub fn after_xseq(&self, xseq: u64) -> impl Iterator<Item = &Arc<Frame>> {
        let start = self.history.partition_point(|f| f.xseq() <= xseq);
        self.history.iter().skip(start)
    }

    /// Everything a `since` subscriber needs: the gap (if history no longer reaches back) and
    /// the retained frames after `since`.
    pub fn replay_since(&self, since: u64) -> Replay {
        let first = self.first_retained();
        let gap = (since + 1 < first && since < self.visible).then(|| (since + 1, first - 1));
        Replay {
            gap,
            frames: self.after(since, usize::MAX).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(history: usize) -> SubjectLimits {
        SubjectLimits {
            history,
            dedup_ids: 3,
            dedup_ttl: Duration::from_secs(60),
        }
    }

    fn publish(
        s: &mut SubjectState,
        l: &SubjectLimits,
        id: Option<&str>,
        now: Instant,
    ) -> (u64, bool) {
        match s.accept(
            "a",
            b"1",
            id,
            Stamp {
                now_us: 10,
                now,
                xseq: 0,
            },
            l,
        ) {
            Accepted::New(f) => {
                let seq = f.seq();
                s.retain(f, l);
                (seq, false)
            }
            Accepted::Duplicate { seq, .. } => (seq, true),
        }
    }

    #[test]
    fn seq_starts_at_one_and_increments() {
        let l = limits(4);
        let mut s = SubjectState::default();
        let now = Instant::now();
        let seqs: Vec<_> = (0..6).map(|_| publish(&mut s, &l, None, now).0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(s.first_retained(), 3);
        assert_eq!(s.latest().unwrap().seq(), 6);
    }

    #[test]
    fn replay_reports_the_gap_history_cannot_fill() {
        let l = limits(4);
        let mut s = SubjectState::default();
        let now = Instant::now();
        for _ in 0..10 {
            publish(&mut s, &l, None, now);
        }
        let r = s.replay_since(2);
        assert_eq!(r.gap, Some((3, 6)));
        assert_eq!(
            r.frames.iter().map(|f| f.seq()).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        let r = s.replay_since(8);
        assert_eq!((r.gap, r.frames.len()), (None, 2));
        let r = s.replay_since(10);
        assert_eq!((r.gap, r.frames.len()), (None, 0));
        assert_eq!(
            s.after(0, 2).map(|f| f.seq()).collect::<Vec<_>>(),
            vec![7, 8]
        );
    }

    #[test]
    fn duplicate_ids_return_the_original_within_the_window() {
        let l = limits(4);
        let mut s = SubjectState::default();
        let now = Instant::now();
        assert_eq!(publish(&mut s, &l, Some("x"), now), (1, false));
        assert_eq!(publish(&mut s, &l, Some("x"), now), (1, true));
        // Window by count: three newer ids push "x" out.
        for id in ["a", "b", "c"] {
            publish(&mut s, &l, Some(id), now);
        }
        assert_eq!(publish(&mut s, &l, Some("x"), now), (5, false));
        // Window by age.
        let later = now + Duration::from_secs(61);
        assert_eq!(publish(&mut s, &l, Some("c"), later), (6, false));
    }
}
