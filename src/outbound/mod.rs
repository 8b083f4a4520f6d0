//! `OutboundQueue` and `WriteBatch`: what a connection has still to send, and one coalesced
//! write of it.
//!
//! The queue holds references to shared frames (`Rc<Arc<Frame>>`: the `Arc` crossed cores once,
//! the `Rc` is this core's non-atomic handle), stretches of shared [`Run`]s (a subject's
//! consecutive frames copied once per core end to end: one item and one iovec however many
//! frames a caught-up subscriber got of them) and small owned control replies. It is bounded in
//! bytes: past its limit a connection is a slow consumer, or, for `conflate` subscriptions,
//! older pending messages of the same subject are replaced by the newest. A writer takes
//! everything queued into one `WriteBatch` (an iovec array over those references) for a single
//! `writev`. Core-local: touched only by the owning core's thread.

mod log;
mod run;

pub use log::SessionLog;
pub use run::{next_capacity, Run, RunSlot, RUN_FRAME_MAX, RUN_MIN_BYTES};

use crate::frame::Frame;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

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
    /// A shared message frame, and its index `k` among the `msg` events of the session.
    Msg(LocalFrame, u64),
    /// A control reply (`ok`, `err`, pong, close frame, SSE comment...), already framed.
    Raw(Box<[u8]>),
    /// Frames `from..to` of a shared [`Run`], the first of them message `k` of the session and
    /// the rest the next ones in order.
    Run(Rc<Run>, u16, u16, u64),
}

impl Out {
    /// Bytes this item accounts for in the queue (the WebSocket frame for messages; SSE adds a
    /// few bytes of framing that are not counted).
    #[inline]
    pub(crate) fn weight(&self) -> usize {
        match self {
            Out::Msg(f, _) => f.wire_len(),
            Out::Raw(b) => b.len(),
            Out::Run(r, from, to, _) => r.bytes(*from, *to).len(),
        }
    }

    /// Message frames carried.
    #[inline]
    pub(crate) fn messages(&self) -> usize {
        match self {
            Out::Msg(..) => 1,
            Out::Raw(_) => 0,
            Out::Run(_, from, to, _) => usize::from(to - from),
        }
    }

    /// Hands each message carried, with its index `k`, to `f` in order.
    pub(crate) fn each_message(&self, mut f: impl FnMut(LocalFrame, u64)) {
        match self {
            Out::Msg(frame, k) => f(frame.clone(), *k),
            Out::Raw(_) => {}
            Out::Run(r, from, to, k) => {
                for i in *from..*to {
                    f(r.frame(i), k + u64::from(i - from));
                }
            }
        }
    }
}

/// How messages are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing<'a> {
    /// The shared WebSocket frame as is.
    WebSocket,
    /// Server-Sent Events: `id: <session>.<k>`, `event: msg`, `data: <msg JSON>`.
    Sse(&'a str),
}

/// SSE framing around the shared `msg` JSON; only the `id:` line is per connection.
const SSE_EVENT: &[u8] = b"event: msg\ndata: ";
const SSE_END: &[u8] = b"\n\n";

/// What happened to a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Appended.
    Queued,
    /// Replaced an older pending message of the same subject, taking over its index `k`.
    Conflated(u64),
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

    /// Publish time (`ts`, µs) of the oldest message still queued, if any (`/connz`).
    pub fn oldest_ts(&self) -> Option<u64> {
        self.items.iter().find_map(|item| match item {
            Out::Msg(f, _) => Some(f.ts()),
            Out::Run(r, from, _, _) => Some(r.frame(*from).ts()),
            Out::Raw(_) => None,
        })
    }

    /// Queues frame `at` of a shared run as message `k` under the byte `limit`: the queue's
    /// last item grows by it when that item ends just before it in the same run (one iovec
    /// for the stretch), else a new item starts.
    #[inline]
    pub fn push_run(&mut self, at: &RunSlot, k: u64, limit: usize) -> Pushed {
        let (run, i, len) = (&at.run, &at.index, at.len);
        if self.bytes + len > limit {
            return Pushed::Overflow;
        }
        self.bytes += len;
        if let Some(Out::Run(r, from, to, k0)) = self.items.back_mut() {
            if *to == *i && Rc::ptr_eq(r, run) && *k0 + u64::from(*to - *from) == k {
                *to += 1;
                return Pushed::Queued;
            }
        }
        self.items.push_back(Out::Run(run.clone(), *i, i + 1, k));
        Pushed::Queued
    }

    /// Queues message `k` under the byte `limit`, conflating by subject when asked.
    pub fn push_msg(&mut self, frame: &LocalFrame, k: u64, conflate: bool, limit: usize) -> Pushed {
        let len = frame.wire_len();
        if self.bytes + len > limit {
            if conflate {
                let subject = frame.subject();
                let slot = self
                    .items
                    .iter_mut()
                    .rev()
                    .find(|o| matches!(o, Out::Msg(f, _) if f.subject() == subject));
                if let Some(slot) = slot {
                    let old_k = match slot {
                        Out::Msg(_, k) => *k,
                        Out::Raw(_) | Out::Run(..) => unreachable!("found a Msg"),
                    };
                    let old = std::mem::replace(slot, Out::Msg(frame.clone(), old_k));
                    self.bytes = self.bytes - old.weight() + len;
                    return Pushed::Conflated(old_k);
                }
                if self.bytes + len <= limit.saturating_mul(HARD_LIMIT_FACTOR) {
                    self.items.push_back(Out::Msg(frame.clone(), k));
                    self.bytes += len;
                    return Pushed::Queued;
                }
            }
            return Pushed::Overflow;
        }
        self.items.push_back(Out::Msg(frame.clone(), k));
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

    /// Removes queued message frames (keeping control replies), handing each to `f` in order.
    pub fn drain_messages(&mut self, mut f: impl FnMut(LocalFrame, u64)) {
        let items = std::mem::take(&mut self.items);
        for item in items {
            match item {
                Out::Raw(_) => self.items.push_back(item),
                msgs => msgs.each_message(&mut f),
            }
        }
        self.bytes = self.items.iter().map(Out::weight).sum();
    }

    /// Drops everything queued; returns how many message frames were discarded.
    pub fn clear(&mut self) -> usize {
        let msgs = self.items.iter().map(Out::messages).sum();
        self.items.clear();
        self.items.shrink_to(0);
        self.bytes = 0;
        msgs
    }

    /// Moves queued items into `batch` for one write, framed as asked.
    pub fn fill(&mut self, batch: &mut WriteBatch, framing: Framing<'_>) {
        batch.clear();
        batch.items.reserve(self.items.len().min(MAX_IOVECS));
        match framing {
            Framing::WebSocket => {
                while batch.iov.len() < MAX_IOVECS {
                    let Some(item) = self.pop() else { break };
                    let b = match &item {
                        Out::Msg(f, _) => f.ws_bytes(),
                        Out::Raw(b) => b,
                        Out::Run(r, from, to, _) => r.bytes(*from, *to),
                    };
                    push_iov(&mut batch.iov, &mut batch.total, b);
                    batch.items.push(item);
                }
            }
            Framing::Sse(session) => self.fill_sse(batch, session),
        }
        if self.items.is_empty() && self.items.capacity() > 64 {
            // Give back memory a burst left behind; idle connections stay small.
            self.items.shrink_to(0);
        }
    }

    /// SSE framing, in two passes so that no iovec points into a buffer still growing: first
    /// the items are taken and their `id:` lines written to the batch's scratch buffer, then
    /// the iovecs are laid over the finished items and lines.
    fn fill_sse(&mut self, batch: &mut WriteBatch, session: &str) {
        let mut iovs = 0;
        loop {
            let room = MAX_IOVECS - iovs;
            let need = match self.items.front() {
                Some(Out::Raw(_)) => 1,
                Some(item) => SSE_IOVS_PER_MSG * item.messages(),
                None => break,
            };
            // A stretch of a run longer than the room left is split: its first messages go
            // now, the rest stays at the front of the queue.
            let fits = room / SSE_IOVS_PER_MSG;
            if need > room && (fits == 0 || !self.split_front(fits)) {
                break;
            }
            let item = self.pop().expect("front exists");
            iovs += match &item {
                Out::Raw(_) => 1,
                msgs => SSE_IOVS_PER_MSG * msgs.messages(),
            };
            item.each_message(|_, k| {
                batch.scratch.extend_from_slice(b"id: ");
                batch.scratch.extend_from_slice(session.as_bytes());
                batch.scratch.push(b'.');
                let mut digits = itoa::Buffer::new();
                batch.scratch.extend_from_slice(digits.format(k).as_bytes());
                batch.scratch.push(b'\n');
                batch.id_ends.push(batch.scratch.len());
            });
            batch.items.push(item);
        }
        let (mut line, mut start) = (0, 0);
        let WriteBatch {
            items,
            iov,
            total,
            scratch,
            id_ends,
            ..
        } = batch;
        for item in items.iter() {
            if let Out::Raw(b) = item {
                push_iov(iov, total, b);
                continue;
            }
            let mut sse_msg = |json: &[u8]| {
                let end = id_ends[line];
                let id = &scratch[start..end];
                (line, start) = (line + 1, end);
                for part in [id, SSE_EVENT, json, SSE_END] {
                    push_iov(iov, total, part);
                }
            };
            match item {
                Out::Msg(f, _) => sse_msg(f.json()),
                Out::Run(r, from, to, _) => {
                    for i in *from..*to {
                        sse_msg(r.json(i));
                    }
                }
                Out::Raw(_) => unreachable!("handled above"),
            }
        }
    }

    /// Splits the front item, a stretch of a run, after its first `n` messages (the rest
    /// stays next in the queue); false when the front item is not a stretch longer than `n`.
    fn split_front(&mut self, n: usize) -> bool {
        let Some(Out::Run(run, from, to, k)) = self.items.front_mut() else {
            return false;
        };
        let n = n as u16;
        if *to - *from <= n {
            return false;
        }
        let head = Out::Run(run.clone(), *from, *from + n, *k);
        *k += u64::from(n);
        *from += n;
        self.items.push_front(head);
        true
    }

    fn pop(&mut self) -> Option<Out> {
        let item = self.items.pop_front()?;
        self.bytes -= item.weight();
        Some(item)
    }
}

/// iovecs per SSE message: the `id:` line, `event: msg` + `data: `, the JSON, the blank line.
const SSE_IOVS_PER_MSG: usize = 4;

/// Appends an iovec over `b` (which must outlive the write: see [`WriteBatch`]).
#[inline]
fn push_iov(iov: &mut Vec<libc::iovec>, total: &mut usize, b: &[u8]) {
    iov.push(libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    });
    *total += b.len();
}

/// One coalesced write: the items it carries and the iovecs pointing into them. The items own
/// the memory the iovecs point at (or `scratch`, or static bytes), so the batch may be handed
/// to the kernel (io_uring) as is.
#[derive(Default)]
pub struct WriteBatch {
    items: Vec<Out>,
    /// The items after [`WriteBatch::share`]: shared with the session log while in flight.
    shared: Option<Rc<Vec<Out>>>,
    iov: Vec<libc::iovec>,
    /// SSE `id:` lines of this write, and where each ends; complete before any iovec points
    /// into them.
    scratch: Vec<u8>,
    id_ends: Vec<usize>,
    start: usize,
    total: usize,
}

impl WriteBatch {
    /// Moves the items into an `Rc` (kept by the batch until the write finishes) and returns
    /// another reference for the session log. The iovecs stay valid: they point into the
    /// items' heap buffers, which do not move.
    pub fn share(&mut self) -> Rc<Vec<Out>> {
        let items = Rc::new(std::mem::take(&mut self.items));
        self.shared = Some(items.clone());
        items
    }

    /// Releases the references of a finished write (keeps the allocations for reuse).
    pub fn clear(&mut self) {
        self.items.clear();
        self.shared = None;
        self.iov.clear();
        self.scratch.clear();
        self.id_ends.clear();
        self.start = 0;
        self.total = 0;
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        self.total
    }

    /// iovec segments of the write (what the kernel's send path pays for per write).
    pub fn segments(&self) -> usize {
        self.iov.len() - self.start
    }

    /// Message frames carried.
    pub fn messages(&self) -> usize {
        let items = self.shared.as_deref().unwrap_or(&self.items);
        items.iter().map(Out::messages).sum()
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
}

// SAFETY: `iov[start..]` points into buffers owned by `items` (or `shared`), into `scratch`
// (written completely before the first iovec into it was taken, in `fill_sse`, and untouched
// until `clear`, which also drops the iovecs) or into static bytes; none of them is modified or
// moved while the runtime owns the batch (moving the batch moves only the Vec headers, not
// their heap buffers).
unsafe impl monoio::buf::IoVecBuf for WriteBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.start..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.start
    }
}

#[cfg(test)]
mod tests;
