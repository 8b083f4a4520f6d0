//! The cross-core bus: the only way anything crosses cores.
//!
//! Pure mechanism, generic over the message type (the cores' vocabulary is
//! [`crate::core::CoreMsg`]): one crossbeam channel per core (any thread may send; only the
//! owning core receives) and a doorbell per core that wakes its event loop from another thread
//! (monoio's `sync` feature makes the waker thread-safe). Messages are moves of owned data or
//! `Arc` references, never copies of message bodies per subscriber. Per (sender, receiver) pair
//! the channel is FIFO, which is what keeps each subject's messages in seq order on every core.
//! Also here: [`owner_of`], the routing rule that names each subject's owner core.

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

/// Most cores a node runs (pending-replay masks are `u64` bit sets).
pub const MAX_CORES: usize = 64;

/// Which core owns `subject` (sequencing, history, dedup): FNV-1a of its bytes.
#[inline]
pub fn owner_of(subject: &str, cores: usize) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in subject.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % cores as u64) as usize
}

/// Wakes one core's event loop from any thread.
#[derive(Default)]
pub struct Doorbell {
    rung: AtomicBool,
    waker: AtomicWaker,
}

impl Doorbell {
    /// Rings: the core's bus task runs on its next loop turn. Cheap when already rung.
    #[inline]
    pub fn ring(&self) {
        if !self.rung.load(Ordering::Acquire) && !self.rung.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Waits until rung, then clears it (call from the owning core only).
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.rung.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.rung.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Senders and doorbells of every core; shared by all cores.
pub struct Bus<M> {
    senders: Vec<Sender<M>>,
    doorbells: Vec<Arc<Doorbell>>,
}

impl<M> Bus<M> {
    /// A bus for `cores` cores, and each core's receiver.
    ///
    /// The channels are unbounded on purpose: a core must never block on another (two cores
    /// blocked on each other's full queue would deadlock). What bounds them is upstream: each
    /// core reads a bounded batch per loop turn and every connection's inbound rate is bounded.
    pub fn new(cores: usize) -> (Arc<Bus<M>>, Vec<Receiver<M>>) {
        let (senders, receivers) = (0..cores).map(|_| crossbeam_channel::unbounded()).unzip();
        let doorbells = (0..cores).map(|_| Arc::new(Doorbell::default())).collect();
        (Arc::new(Bus { senders, doorbells }), receivers)
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.senders.len()
    }

    /// Sends to `core` and rings its doorbell.
    #[inline]
    pub fn send(&self, core: usize, msg: M) {
        // A send fails only when the receiving core has exited (shutdown); dropping is correct.
        let _ = self.senders[core].send(msg);
        self.doorbells[core].ring();
    }

    /// The doorbell of `core`.
    pub fn doorbell(&self, core: usize) -> &Arc<Doorbell> {
        &self.doorbells[core]
    }

    /// Messages waiting for `core` (metrics).
    pub fn depth(&self, core: usize) -> usize {
        self.senders[core].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reaches_its_core_in_order_and_rings_its_doorbell() {
        let (bus, rx) = Bus::<u32>::new(2);
        assert_eq!(bus.cores(), 2);
        for i in 0..3 {
            bus.send(1, i);
        }
        assert_eq!(bus.depth(1), 3);
        assert_eq!(bus.depth(0), 0);
        assert_eq!(rx[1].try_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(bus.doorbell(1).rung.load(Ordering::Acquire));
        assert!(!bus.doorbell(0).rung.load(Ordering::Acquire));
    }

    #[test]
    fn ownership_is_stable_and_spread() {
        let mut counts = [0usize; 4];
        for i in 0..1000 {
            let s = format!("prices.SYM{i:04}");
            let o = owner_of(&s, 4);
            assert_eq!(o, owner_of(&s, 4));
            counts[o] += 1;
        }
        assert!(counts.iter().all(|c| *c > 150), "{counts:?}");
        assert_eq!(owner_of("anything", 1), 0);
    }
}
