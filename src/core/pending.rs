//! Requests in flight: [`Pending`], the table of who waits for an answer from another core (or
//! from the store or the cluster bridge), and [`Slot`], the one-shot cell an `async` caller on
//! this core awaits.
//!
//! A request's token is its key in `Pending`; the answer carries the token back and
//! [`Pending::take`] hands out the waiter exactly once. Tokens carry a generation, so an answer
//! that arrives for a slot already reused (it cannot happen, but a bug must not deliver a reply
//! to the wrong waiter) is ignored. Core-local: touched only by the owning core's thread.
//!
//! What bounds it: every waiter belongs to a live request of a connection on this core (a
//! publish awaiting its ack, each message of a batch, a replay, a catch-up, an HTTP call) or
//! to an owner-side read of the store; connections are bounded by `--max-connections` and
//! their requests by the inbound rate limits (`--max-msgs-per-sec`, and for publishes
//! `--max-publish-per-sec` or the token's rate), and every answer comes back (the bus never
//! drops a message while both cores run; the store and the bridge answer every read, with an
//! error if need be).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// One entry of the table: the waiter while in flight, and the slot's generation.
struct Entry<W> {
    generation: u32,
    waiter: Option<W>,
}

/// Waiters by token, in a slab: parking and taking are O(1) and allocation-free once warm.
pub struct Pending<W> {
    entries: Vec<Entry<W>>,
    free: Vec<u32>,
    live: usize,
}

impl<W> Default for Pending<W> {
    fn default() -> Self {
        Pending {
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

impl<W> Pending<W> {
    /// Parks `w`; the returned token (never 0) finds it again.
    pub fn park(&mut self, w: W) -> u64 {
        self.live += 1;
        let index = match self.free.pop() {
            Some(i) => {
                let e = &mut self.entries[i as usize];
                e.waiter = Some(w);
                i
            }
            None => {
                self.entries.push(Entry {
                    generation: 1,
                    waiter: Some(w),
                });
                (self.entries.len() - 1) as u32
            }
        };
        let generation = self.entries[index as usize].generation;
        (generation as u64) << 32 | index as u64
    }

    /// The waiter parked under `token`, once; `None` for an unknown or already used token.
    pub fn take(&mut self, token: u64) -> Option<W> {
        let (generation, index) = ((token >> 32) as u32, token as u32);
        let e = self.entries.get_mut(index as usize)?;
        if e.generation != generation {
            return None;
        }
        let w = e.waiter.take()?;
        // A new generation per use: a stale token never matches the slot's next waiter.
        e.generation = e.generation.wrapping_add(1).max(1);
        self.free.push(index);
        self.live -= 1;
        Some(w)
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

/// A one-shot, core-local answer for an `async` caller waiting on another core.
pub struct Slot<T> {
    value: RefCell<Option<T>>,
    waker: Cell<Option<Waker>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            value: RefCell::new(None),
            waker: Cell::new(None),
        }
    }
}

impl<T> Slot<T> {
    /// Stores the answer and wakes the waiting task.
    pub fn fill(&self, v: T) {
        *self.value.borrow_mut() = Some(v);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Waits for the answer.
    pub async fn wait(&self) -> T {
        poll_fn(|cx| match self.value.borrow_mut().take() {
            Some(v) => Poll::Ready(v),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_waiter_is_taken_once_by_its_token() {
        let mut p = Pending::default();
        let a = p.park("a");
        let b = p.park("b");
        assert_ne!(a, b);
        assert_eq!(p.len(), 2);
        assert_eq!(p.take(b), Some("b"));
        assert_eq!(p.take(b), None, "an answer is delivered once");
        assert_eq!(p.take(a), Some("a"));
        assert!(p.is_empty());
    }

    #[test]
    fn a_stale_token_does_not_reach_the_next_waiter_of_its_slot() {
        let mut p = Pending::default();
        let old = p.park(1);
        assert_eq!(p.take(old), Some(1));
        let new = p.park(2);
        assert_eq!(new as u32, old as u32, "the slot is reused");
        assert_eq!(p.take(old), None);
        assert_eq!(p.take(new), Some(2));
    }

    #[test]
    fn tokens_are_never_zero_and_unknown_tokens_find_nothing() {
        let mut p: Pending<u8> = Pending::default();
        assert_eq!(p.take(0), None);
        assert_eq!(p.take(u64::MAX), None);
        let t = p.park(7);
        assert_ne!(t, 0);
    }

    #[test]
    fn the_table_reuses_its_slots_instead_of_growing() {
        let mut p = Pending::default();
        for i in 0..1000 {
            let t = p.park(i);
            assert_eq!(p.take(t), Some(i));
        }
        assert_eq!(p.entries.len(), 1);
    }

    #[test]
    fn a_slot_filled_before_the_wait_answers_at_once() {
        use std::future::Future;
        let slot = Slot::default();
        slot.fill(5);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(slot.wait());
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(5));
    }
}
