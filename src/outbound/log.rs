//! `SessionLog`: the `msg` frames a session was sent, by index, kept for exact resume.
//!
//! Part of a connection's state (`core::Client`); core-local: touched only by the owning
//! core's thread.

use super::{LocalFrame, Out};
use std::collections::VecDeque;
use std::rc::Rc;

/// What one logged item costs besides its frame or reply bytes: its slot.
const SLOT_BYTES: usize = std::mem::size_of::<Out>();

/// Messages [`SessionLog::put`] gathers into one chunk at most: small enough that dropping the
/// oldest chunk keeps the log close to `retain`, big enough to amortise the chunk.
const PUT_CHUNK_MSGS: usize = 64;

/// The `msg` frames a session was sent, by index `k` (1-based), kept for exact resume: at least
/// the newest `retain` ones, as references to the shared frames.
///
/// The log is fed whole write batches: a batch's items are moved into an `Rc` shared by the
/// in-flight write and the log, so logging costs one reference per write, not per message.
pub struct SessionLog {
    chunks: VecDeque<Chunk>,
    /// Index the next message gets.
    next_k: u64,
    /// Messages held in `chunks`.
    msgs: usize,
    /// Bytes held in `chunks` (see [`SessionLog::bytes`]).
    bytes: usize,
    retain: usize,
}

/// A run of consecutive messages (and the control replies written with them).
struct Chunk {
    first_k: u64,
    msgs: usize,
    bytes: usize,
    items: Rc<Vec<Out>>,
}

impl SessionLog {
    /// An empty log keeping at least `retain` messages, whose next message gets index `next_k`.
    pub fn new(retain: usize, next_k: u64) -> Self {
        SessionLog {
            chunks: VecDeque::new(),
            next_k,
            msgs: 0,
            bytes: 0,
            retain,
        }
    }

    /// Index the next message gets.
    pub fn next_k(&self) -> u64 {
        self.next_k
    }

    /// Index of the oldest message held (`next_k` when none is).
    pub fn first_k(&self) -> u64 {
        self.chunks.front().map_or(self.next_k, |c| c.first_k)
    }

    /// Bytes the log keeps alive, counted as an upper bound: every item's slot and its frame
    /// or reply in full (frames are shared with other sessions and the history, so the memory
    /// really held is often far less).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records message `k` alone (detached or closing sessions, tests). Consecutive ones share
    /// a chunk of up to [`PUT_CHUNK_MSGS`] while no write shares it: a detached session then
    /// costs one item slot per logged message, not a chunk and two allocations.
    pub fn put(&mut self, k: u64, frame: LocalFrame) {
        if k == self.next_k && self.retain > 0 {
            let back = self.chunks.back_mut().filter(|c| c.msgs < PUT_CHUNK_MSGS);
            if let Some(chunk) = back {
                if let Some(items) = Rc::get_mut(&mut chunk.items) {
                    let bytes = SLOT_BYTES + frame.wire_len();
                    items.push(Out::Msg(frame, k));
                    chunk.msgs += 1;
                    chunk.bytes += bytes;
                    self.msgs += 1;
                    self.bytes += bytes;
                    self.next_k += 1;
                    return self.trim();
                }
            }
        }
        self.add(Rc::new(vec![Out::Msg(frame, k)]));
    }

    /// Drops the oldest chunks while the rest still holds `retain` messages.
    fn trim(&mut self) {
        while let Some(front) = self.chunks.front() {
            if self.msgs - front.msgs < self.retain {
                break;
            }
            self.msgs -= front.msgs;
            self.bytes -= front.bytes;
            self.chunks.pop_front();
        }
    }

    /// Records the messages of `items` (a written batch or a spilled queue), in order. Their
    /// indexes continue the log; a jump (never expected) restarts the log, so a resume from
    /// before it fails instead of skipping messages; anything already logged is ignored.
    pub fn add(&mut self, items: Rc<Vec<Out>>) {
        let (mut first, mut msgs, mut bytes) = (None, 0, 0);
        for o in items.iter() {
            bytes += SLOT_BYTES + o.weight();
            match o {
                Out::Msg(_, k) | Out::Run(_, _, _, k) => {
                    first.get_or_insert(*k);
                    msgs += o.messages();
                }
                Out::Raw(_) => {}
            }
        }
        let Some(first_k) = first else { return };
        if first_k < self.next_k {
            return;
        }
        if first_k > self.next_k {
            self.chunks.clear();
            self.msgs = 0;
            self.bytes = 0;
        }
        self.next_k = first_k + msgs as u64;
        if self.retain == 0 {
            return;
        }
        self.chunks.push_back(Chunk {
            first_k,
            msgs,
            bytes,
            items,
        });
        self.msgs += msgs;
        self.bytes += bytes;
        self.trim();
    }

    /// Messages after the first `received` ones, or `None` if some of them are no longer
    /// retained (or `received` is beyond what was sent).
    pub fn after(&self, received: u64) -> Option<Vec<LocalFrame>> {
        if received + 1 < self.first_k() || received + 1 > self.next_k {
            return None;
        }
        let mut out = Vec::new();
        for c in &self.chunks {
            for item in c.items.iter() {
                item.each_message(|f, k| {
                    if k > received {
                        out.push(f);
                    }
                });
            }
        }
        Some(out)
    }

    /// Messages retained (for memory accounting and tests).
    pub fn len(&self) -> usize {
        self.msgs
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.msgs == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use std::sync::Arc;

    fn frame(subject: &str, seq: u64) -> LocalFrame {
        Rc::new(Arc::new(Frame::encode(subject, seq, 0, b"0", None)))
    }

    #[test]
    fn the_session_log_keeps_the_newest_frames_by_index() {
        let mut log = SessionLog::new(3, 1);
        let seqs = |v: Vec<LocalFrame>| v.iter().map(|f| f.seq()).collect::<Vec<_>>();
        for i in 1..=5 {
            log.put(i, frame("a", i));
        }
        assert_eq!(log.next_k(), 6);
        assert_eq!(seqs(log.after(2).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(log.after(5).unwrap()), Vec::<u64>::new());
        assert!(log.after(6).is_none(), "more than was sent");
        // Consecutive puts share chunks of 64; the oldest chunk goes once the rest holds 3.
        for i in 6..=(PUT_CHUNK_MSGS as u64 + 3) {
            log.put(i, frame("a", i));
        }
        let last = PUT_CHUNK_MSGS as u64 + 3;
        assert!(
            log.after(PUT_CHUNK_MSGS as u64 - 1).is_none(),
            "the first chunk is gone"
        );
        assert_eq!(log.len(), 3);
        assert_eq!(seqs(log.after(last - 1).unwrap()), vec![last]);
        log.put(last + 4, frame("a", last + 4));
        assert_eq!(log.next_k(), last + 5);
        assert!(log.after(last).is_none(), "a jump in k restarts the log");
        assert_eq!(seqs(log.after(last + 3).unwrap()), vec![last + 4]);
    }

    #[test]
    fn puts_cost_an_item_slot_each_not_a_chunk() {
        let mut log = SessionLog::new(1000, 1);
        let f = frame("a", 1);
        for i in 1..=640 {
            log.put(i, f.clone());
        }
        assert_eq!(log.chunks.len(), 10);
        assert_eq!(log.bytes(), 640 * (SLOT_BYTES + f.wire_len()));
    }
}
