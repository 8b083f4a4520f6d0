//! `OutboundQueue` and `WriteBatch`: what a connection has still to send, and one coalesced
//! write of it.
//!
//! The queue holds references to shared frames (`Rc<Arc<Frame>>`: the `Arc` crossed cores once,
//! the `Rc` is this core's non-atomic handle) and small owned control replies. It is bounded in
//! bytes: past its limit a connection is a slow consumer, or, for `conflate` subscriptions,
//! older pending messages of the same subject are replaced by the newest. A writer takes
//! everything queued into one `WriteBatch` (an iovec array over those references) for a single
//! `writev`. Core-local: touched only by the owning core's thread.

use crate::frame::Frame;
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// A frame shared by every subscriber on this core.
pub type LocalFrame = Rc<Arc<Frame>>;

/// At most this many iovecs per write (Linux `IOV_MAX` is 1024).
pub const MAX_IOVECS: usize = 1024;

/// A queue may exceed its limit by this factor with control replies and conflated subjects
/// before the connection is closed anyway: conflation bounds the queue by the number of
/// distinct subjects, this bounds it absolutely.
pub const HARD_LIMIT_FACTOR: usize = 4;

/// One item waiting to be written.
pub enum Out {
    /// A shared message frame.
    Msg(LocalFrame),
    /// A control reply (`ok`, `err`, pong, close frame, HTTP bytes...).
    Raw(Box<[u8]>),
}

impl Out {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Out::Msg(f) => f.ws_bytes(),
            Out::Raw(b) => b,
        }
    }
}

/// What happened to a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Appended.
    Queued,
    /// Replaced an older pending message of the same subject.
    Conflated,
    /// Over the limit: the connection is a slow consumer.
    Overflow,
}

/// Bytes and items waiting for one connection.
#[derive(Default)]
pub struct OutboundQueue {
    items: VecDeque<Out>,
    bytes: usize,
}

impl OutboundQueue {
    /// Queued bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues a message frame under the byte `limit`, conflating by subject when asked.
    pub fn push_msg(&mut self, frame: &LocalFrame, conflate: bool, limit: usize) -> Pushed {
        let len = frame.wire_len();
        if self.bytes + len > limit {
            if conflate {
                let subject = frame.subject();
                let slot = self
                    .items
                    .iter_mut()
                    .rev()
                    .find(|o| matches!(o, Out::Msg(f) if f.subject() == subject));
                if let Some(slot) = slot {
                    let old = std::mem::replace(slot, Out::Msg(frame.clone()));
                    self.bytes = self.bytes - old.bytes().len() + len;
                    return Pushed::Conflated;
                }
                if self.bytes + len <= limit.saturating_mul(HARD_LIMIT_FACTOR) {
                    self.items.push_back(Out::Msg(frame.clone()));
                    self.bytes += len;
                    return Pushed::Queued;
                }
            }
            return Pushed::Overflow;
        }
        self.items.push_back(Out::Msg(frame.clone()));
        self.bytes += len;
        Pushed::Queued
    }

    /// Queues control bytes; refused only past the hard limit (a peer that never reads).
    pub fn push_raw(&mut self, bytes: Box<[u8]>, limit: usize) -> bool {
        if self.bytes + bytes.len() > limit.saturating_mul(HARD_LIMIT_FACTOR) {
            return false;
        }
        self.bytes += bytes.len();
        self.items.push_back(Out::Raw(bytes));
        true
    }

    /// Drops queued message frames, keeping control replies (an `err` before a close must still
    /// go out); returns how many were discarded.
    pub fn clear_messages(&mut self) -> usize {
        let before = self.items.len();
        self.items.retain(|o| matches!(o, Out::Raw(_)));
        self.bytes = self.items.iter().map(|o| o.bytes().len()).sum();
        before - self.items.len()
    }

    /// Drops everything queued; returns how many message frames were discarded.
    pub fn clear(&mut self) -> usize {
        let msgs = self
            .items
            .iter()
            .filter(|o| matches!(o, Out::Msg(_)))
            .count();
        self.items.clear();
        self.items.shrink_to(0);
        self.bytes = 0;
        msgs
    }

    /// Moves up to [`MAX_IOVECS`] items into `batch` for one write.
    pub fn fill(&mut self, batch: &mut WriteBatch) {
        batch.clear();
        while batch.items.len() < MAX_IOVECS {
            let Some(item) = self.items.pop_front() else {
                break;
            };
            let b = item.bytes();
            self.bytes -= b.len();
            batch.iov.push(libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            });
            batch.total += b.len();
            batch.items.push(item);
        }
        if self.items.is_empty() && self.items.capacity() > 64 {
            // Give back memory a burst left behind; idle connections stay small.
            self.items.shrink_to(0);
        }
    }
}

/// One coalesced write: the items it carries and the iovecs pointing into them. The items own
/// the memory the iovecs point at, so the batch may be handed to the kernel (io_uring) as is.
#[derive(Default)]
pub struct WriteBatch {
    items: Vec<Out>,
    iov: Vec<libc::iovec>,
    start: usize,
    total: usize,
}

impl WriteBatch {
    /// Releases the references of a finished write (keeps the allocations for reuse).
    pub fn clear(&mut self) {
        self.items.clear();
        self.iov.clear();
        self.start = 0;
        self.total = 0;
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        self.total
    }

    /// Message frames carried.
    pub fn messages(&self) -> usize {
        self.items
            .iter()
            .filter(|o| matches!(o, Out::Msg(_)))
            .count()
    }

    /// Records that the kernel took `n` bytes; the batch then describes the rest.
    pub fn advance(&mut self, mut n: usize) {
        self.total -= n;
        while n > 0 {
            let v = &mut self.iov[self.start];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.start += 1;
            } else {
                // SAFETY: stays inside the same buffer: n < iov_len.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
    }

    /// True when the backing allocations are large enough to be worth pooling.
    pub fn capacity(&self) -> usize {
        self.iov.capacity()
    }
}

// SAFETY: `iov[start..]` points into buffers owned by `items` (heap allocations that do not move
// while the batch is alive, even if the batch itself moves), and neither is modified while the
// runtime owns the batch.
unsafe impl monoio::buf::IoVecBuf for WriteBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.start..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.start
    }
}

/// A single-waiter, core-local wake-up flag (the connection writer waits on it).
#[derive(Default)]
pub struct LocalNotify {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl LocalNotify {
    /// Wakes the waiter (or makes its next wait return at once).
    #[inline]
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Waits for the next `notify`.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
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

    fn frame(subject: &str, seq: u64) -> LocalFrame {
        Rc::new(Arc::new(Frame::encode(subject, seq, 0, b"0", None)))
    }

    #[test]
    fn overflow_is_reported_past_the_byte_limit() {
        let mut q = OutboundQueue::default();
        let f = frame("a", 1);
        let limit = f.wire_len() * 3;
        for _ in 0..3 {
            assert_eq!(q.push_msg(&f, false, limit), Pushed::Queued);
        }
        assert_eq!(q.push_msg(&f, false, limit), Pushed::Overflow);
        assert_eq!(q.bytes(), limit);
        assert_eq!(q.clear(), 3);
        assert!(q.is_empty());
    }

    #[test]
    fn conflation_replaces_the_pending_message_of_the_same_subject() {
        let mut q = OutboundQueue::default();
        let limit = frame("a", 1).wire_len() * 2;
        q.push_msg(&frame("a", 1), true, limit);
        q.push_msg(&frame("b", 1), true, limit);
        assert_eq!(q.push_msg(&frame("a", 2), true, limit), Pushed::Conflated);
        assert_eq!(q.push_msg(&frame("a", 3), true, limit), Pushed::Conflated);
        let mut b = WriteBatch::default();
        q.fill(&mut b);
        let seqs: Vec<_> = b
            .items
            .iter()
            .map(|o| match o {
                Out::Msg(f) => (f.subject().to_string(), f.seq()),
                Out::Raw(_) => unreachable!(),
            })
            .collect();
        assert_eq!(seqs, vec![("a".to_string(), 3), ("b".to_string(), 1)]);
    }

    #[test]
    fn a_batch_advances_across_partial_writes() {
        let mut q = OutboundQueue::default();
        q.push_raw(b"hello".to_vec().into(), 100);
        q.push_raw(b"world".to_vec().into(), 100);
        let mut b = WriteBatch::default();
        q.fill(&mut b);
        assert_eq!(b.remaining(), 10);
        b.advance(3);
        assert_eq!(b.start, 0);
        assert_eq!(b.iov[0].iov_len, 2);
        b.advance(4);
        assert_eq!((b.start, b.iov[1].iov_len, b.remaining()), (1, 3, 3));
        b.advance(3);
        assert_eq!(b.remaining(), 0);
    }
}
