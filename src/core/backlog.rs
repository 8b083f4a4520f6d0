//! `Backlog`: what a connection is owed beyond its live queue. Replays (a resume, `since`,
//! `snapshot`, a hand-over's catch-up) land here, and so do the live messages that arrive
//! behind them; the connection feeds them into its bounded outbound queue as the socket takes
//! bytes. A replay larger than the queue is thereby paced by the reader instead of closing it
//! (4008), and the slow-consumer limit applies to *live* lag only: the live bytes waiting here.
//!
//! Owns the owed items (references to shared frames, and framed events such as `gap`) and the
//! count of live bytes among them. Nothing here has an index `k` yet: a message gets its place
//! in the session when it moves to the queue (or, on a close, to the session log). Part of a
//! [`super::Client`]; core-local.

use crate::outbound::{LocalFrame, HARD_LIMIT_FACTOR};
use std::collections::VecDeque;

/// One thing owed to the connection, in the order it must go out.
pub enum Owed {
    /// A message; `live` when it arrived behind a replay rather than in one.
    Msg {
        /// The shared frame.
        frame: LocalFrame,
        /// Counted in the live lag.
        live: bool,
    },
    /// An event already framed for the connection (a replay's `gap`).
    Event(Box<[u8]>),
}

/// What happened to a live message put behind a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// Appended.
    Queued,
    /// Replaced an older live message of the same subject (`conflate`).
    Conflated,
    /// The live lag is over the limit: the connection is a slow consumer.
    Overflow,
}

/// Owed items, oldest first.
#[derive(Default)]
pub struct Backlog {
    items: VecDeque<Owed>,
    live_bytes: usize,
}

impl Backlog {
    /// True when nothing is owed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items owed.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Bytes of the live messages owed (the live lag behind the replay).
    pub fn live_bytes(&self) -> usize {
        self.live_bytes
    }

    /// Publish time (`ts`, µs) of the oldest message owed, if any (`/connz`).
    pub fn oldest_ts(&self) -> Option<u64> {
        self.items.iter().find_map(|o| match o {
            Owed::Msg { frame, .. } => Some(frame.ts()),
            Owed::Event(_) => None,
        })
    }

    /// Owes a replayed message.
    pub fn push_replayed(&mut self, frame: LocalFrame) {
        self.items.push_back(Owed::Msg { frame, live: false });
    }

    /// Owes a framed event.
    pub fn push_event(&mut self, bytes: Box<[u8]>) {
        self.items.push_back(Owed::Event(bytes));
    }

    /// Owes a live message behind the replay, within `limit` live bytes. Over it, a
    /// `conflate` subscription replaces the newest live message of the same subject, and may
    /// exceed the limit by [`HARD_LIMIT_FACTOR`] with new subjects (as the queue does);
    /// anything else is an overflow.
    pub fn push_live(&mut self, frame: &LocalFrame, conflate: bool, limit: usize) -> Behind {
        let len = frame.wire_len();
        if self.live_bytes + len > limit {
            if !conflate {
                return Behind::Overflow;
            }
            let subject = frame.subject();
            let older = self.items.iter_mut().rev().find_map(|o| match o {
                Owed::Msg {
                    frame: f,
                    live: true,
                } if f.subject() == subject => Some(f),
                _ => None,
            });
            if let Some(f) = older {
                self.live_bytes = self.live_bytes - f.wire_len() + len;
                *f = frame.clone();
                return Behind::Conflated;
            }
            if self.live_bytes + len > limit.saturating_mul(HARD_LIMIT_FACTOR) {
                return Behind::Overflow;
            }
        }
        self.live_bytes += len;
        self.items.push_back(Owed::Msg {
            frame: frame.clone(),
            live: true,
        });
        Behind::Queued
    }

    /// Takes the oldest owed item.
    pub fn pop(&mut self) -> Option<Owed> {
        let item = self.items.pop_front()?;
        if let Owed::Msg { frame, live: true } = &item {
            self.live_bytes -= frame.wire_len();
        }
        if self.items.is_empty() && self.items.capacity() > 64 {
            // Give back what a large replay left behind.
            self.items.shrink_to(0);
        }
        Some(item)
    }

    /// Takes every owed message, oldest first (the socket is going away: they go to the
    /// session log); events are dropped.
    pub fn take_messages(&mut self) -> Vec<LocalFrame> {
        self.live_bytes = 0;
        let items = std::mem::take(&mut self.items);
        items
            .into_iter()
            .filter_map(|o| match o {
                Owed::Msg { frame, .. } => Some(frame),
                Owed::Event(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use std::rc::Rc;
    use std::sync::Arc;

    fn frame(subject: &str, seq: u64) -> LocalFrame {
        Rc::new(Arc::new(Frame::encode(subject, seq, 0, b"1", None)))
    }

    fn seqs(b: &mut Backlog) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        while let Some(o) = b.pop() {
            if let Owed::Msg { frame, .. } = o {
                v.push((frame.subject().to_string(), frame.seq()));
            }
        }
        v
    }

    #[test]
    fn owed_items_go_out_in_the_order_they_were_owed() {
        let mut b = Backlog::default();
        b.push_event(b"gap".to_vec().into());
        b.push_replayed(frame("a", 1));
        b.push_replayed(frame("a", 2));
        assert_eq!(b.push_live(&frame("a", 3), false, 1 << 20), Behind::Queued);
        assert!(matches!(b.pop(), Some(Owed::Event(_))));
        assert_eq!(
            seqs(&mut b),
            vec![("a".into(), 1), ("a".into(), 2), ("a".into(), 3)]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn only_live_bytes_count_against_the_limit() {
        let mut b = Backlog::default();
        let f = frame("a", 101);
        let limit = f.wire_len() * 2;
        for seq in 1..=100 {
            b.push_replayed(frame("a", seq));
        }
        assert_eq!(b.live_bytes(), 0, "a replay of any size is not lag");
        assert_eq!(b.push_live(&frame("a", 101), false, limit), Behind::Queued);
        assert_eq!(b.push_live(&frame("a", 102), false, limit), Behind::Queued);
        assert_eq!(
            b.push_live(&frame("a", 103), false, limit),
            Behind::Overflow
        );
        assert_eq!(b.live_bytes(), limit);
        while b.len() > 1 {
            b.pop();
        }
        assert_eq!(
            b.live_bytes(),
            f.wire_len(),
            "popping live messages lowers the lag"
        );
    }

    #[test]
    fn a_conflated_subscription_replaces_its_newest_live_message() {
        let mut b = Backlog::default();
        let limit = frame("a", 1).wire_len() * 2;
        b.push_replayed(frame("a", 1));
        assert_eq!(b.push_live(&frame("a", 2), true, limit), Behind::Queued);
        assert_eq!(b.push_live(&frame("b", 1), true, limit), Behind::Queued);
        assert_eq!(b.push_live(&frame("a", 3), true, limit), Behind::Conflated);
        assert_eq!(
            seqs(&mut b),
            vec![("a".into(), 1), ("a".into(), 3), ("b".into(), 1)],
            "the replayed seq 1 is never replaced"
        );
    }

    #[test]
    fn taking_the_messages_keeps_their_order_and_drops_events() {
        let mut b = Backlog::default();
        b.push_replayed(frame("a", 1));
        b.push_event(b"gap".to_vec().into());
        b.push_live(&frame("a", 2), false, 1 << 20);
        let taken: Vec<u64> = b.take_messages().iter().map(|f| f.seq()).collect();
        assert_eq!(taken, vec![1, 2]);
        assert_eq!((b.len(), b.live_bytes()), (0, 0));
    }
}
