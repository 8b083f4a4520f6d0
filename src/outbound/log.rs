//! `SessionLog`: the `msg` frames a session was sent, by index, kept for exact resume.
//!
//! Part of a connection's state (`core::Client`); core-local: touched only by the owning
//! core's thread.

use super::{LocalFrame, Out};
use std::collections::VecDeque;
use std::rc::Rc;

/// What one logged item costs besides its frame or reply bytes: its slot.
const SLOT_BYTES: usize = std::mem::size_of::<Out>();

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

    /// Records message `k` alone (detached sessions, tests).
    pub fn put(&mut self, k: u64, frame: LocalFrame) {
        self.add(Rc::new(vec![Out::Msg(frame, k)]));
    }

    /// Records the messages of `items` (a written batch or a spilled queue), in order. Their
    /// indexes continue the log; a jump (never expected) restarts the log, so a resume from
    /// before it fails instead of skipping messages; anything already logged is ignored.
    pub fn add(&mut self, items: Rc<Vec<Out>>) {
        let (mut first, mut msgs, mut bytes) = (None, 0, 0);
        for o in items.iter() {
            bytes += SLOT_BYTES + o.weight();
            if let Out::Msg(_, k) = o {
                first.get_or_insert(*k);
                msgs += 1;
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
        while let Some(front) = self.chunks.front() {
            if self.msgs - front.msgs < self.retain {
                break;
            }
            self.msgs -= front.msgs;
            self.bytes -= front.bytes;
            self.chunks.pop_front();
        }
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
                if let Out::Msg(f, k) = item {
                    if *k > received {
                        out.push(f.clone());
                    }
                }
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
        for i in 1..=5 {
            log.put(i, frame("a", i));
        }
        assert_eq!(log.next_k(), 6);
        assert!(log.after(1).is_none(), "messages 2 is no longer retained");
        let seqs = |v: Vec<LocalFrame>| v.iter().map(|f| f.seq()).collect::<Vec<_>>();
        assert_eq!(seqs(log.after(2).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(log.after(5).unwrap()), Vec::<u64>::new());
        assert!(log.after(6).is_none(), "more than was sent");
        log.put(9, frame("a", 9));
        assert_eq!(log.next_k(), 10);
        assert!(log.after(5).is_none(), "a jump in k restarts the log");
        assert_eq!(seqs(log.after(8).unwrap()), vec![9]);
    }
}
