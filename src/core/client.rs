//! `Client`: the core-visible state of one connection (WebSocket or SSE stream), and its
//! [`ConnKind`].
//!
//! Owns what the core needs to deliver to a connection and to resume its session: the bounded
//! outbound queue, the session log of sent messages, per-subject high-water marks, its
//! [`Access`] (grant), [`InboundLimit`] and [`PublishLimit`], keep-alive state. The socket itself is the transport's (see
//! [`crate::transport`]); the core never names it. When a client gets something to send (or a
//! close to finish) it puts itself on its core's [`FlushList`] once, and the transport's
//! flusher starts a writer for it. Core-local: touched only by the owning core's thread
//! (`Cell`/`RefCell`, no locks).

use super::access::Access;
use super::backlog::{Backlog, Behind, Owed};
use super::flush_list::FlushList;
use super::rate::{InboundLimit, PublishLimit};
use super::subscription::Subscription;
use crate::metrics::{self, CloseReason, CoreMetrics};
use crate::outbound::{
    Framing, LocalFrame, Out, OutboundQueue, Pushed, RunSlot, SessionLog, WriteBatch,
};
use crate::proto::{self, ErrorCode};
use hashbrown::HashMap;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

/// What kind of connection a client is; decides how its output is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// A WebSocket speaking protocol v1.
    WebSocket,
    /// `/ws/echo`: a WebSocket whose messages are echoed, not parsed.
    Echo,
    /// A Server-Sent Events stream (output only).
    Sse,
}

impl ConnKind {
    /// True for WebSocket framing (protocol and echo sockets).
    pub fn is_websocket(self) -> bool {
        matches!(self, ConnKind::WebSocket | ConnKind::Echo)
    }
}

/// The core-visible state of one connection.
pub struct Client {
    /// Node-unique key: the random part of the session id (the core is its first byte).
    pub key: u64,
    /// Session id sent in `hello`: the core (2 hex digits) and `key` (16).
    pub session: Box<str>,
    /// How output is framed.
    pub kind: ConnKind,
    /// Pending outbound bytes.
    out: RefCell<OutboundQueue>,
    /// Replays, and what arrived behind them, waiting for room in `out`.
    backlog: RefCell<Backlog>,
    /// This client, for putting itself on the flush list.
    me: Weak<Client>,
    flush: Rc<FlushList>,
    /// On the flush list now.
    pub(super) listed: Cell<bool>,
    /// Delivery stamp: equal to the fan-out's current stamp when this message was queued.
    pub(super) stamp: Cell<u64>,
    closing: Cell<Option<CloseReason>>,
    /// Subscriptions by pattern.
    pub(super) subs: RefCell<HashMap<Box<str>, Rc<Subscription>>>,
    /// What `subs` is charged against `--max-sub-bytes-per-conn` (`subscription::cost`).
    pub(super) sub_bytes: Cell<usize>,
    /// Highest seq queued per subject; only tracked once the connection used `since`,
    /// `snapshot` or resume, so replays and live messages never duplicate or reorder.
    pub(super) hwm: RefCell<Option<HashMap<Box<str>, u64>>>,
    queue_limit: usize,
    /// The `msg` frames this session was sent, for exact resume.
    pub(super) log: RefCell<SessionLog>,
    /// Index `k` the next message of this session gets.
    pub(super) next_k: Cell<u64>,
    /// Core clock (ms) when the socket went away while the session is retained.
    pub(super) detached_at: Cell<Option<u64>>,
    /// Index `k` the next message had when the socket went away: the client cannot have
    /// received it or anything after it, so a log that no longer starts at or before it
    /// cannot serve any resume.
    pub(super) detached_k: Cell<u64>,
    /// The socket's descriptor, for a forced shutdown when a close cannot be flushed in time
    /// (-1: none). The transport owns the socket; this is only its OS handle.
    fd: Cell<i32>,
    /// Messages this connection did not get: conflated away, or discarded at its close
    /// (`/connz`; the core's `ringcast_dropped_total` counts the same).
    drops: Cell<u64>,
    /// Core clock (ms) of the last bytes received.
    pub(super) last_rx: Cell<u64>,
    /// A keep-alive ping is outstanding.
    pub(super) ping_sent: Cell<bool>,
    /// Core clock (ms) of the first sweep after the close was decided.
    pub(super) closed_at: Cell<Option<u64>>,
    /// Subjects whose `since` replay is on its way from their owner core: their live messages
    /// are held back (the replay includes them). Empty, and unallocated, almost always.
    pub(super) held: RefCell<Vec<Box<str>>>,
    /// What the connection's token allows, and until when it must authenticate.
    pub access: Access,
    /// The inbound rate limit of its messages.
    pub inbound: InboundLimit,
    /// The limit of its publishes (`--max-publish-per-sec`, or its token's).
    pub publishes: PublishLimit,
    /// Replies to its `pub` and `pubs` ops, sent in the order of the ops.
    pub acks: super::acks::AckOrder,
}

/// What a new client starts with.
pub(super) struct ClientInit {
    pub key: u64,
    pub session: Box<str>,
    pub kind: ConnKind,
    pub queue_limit: usize,
    pub session_retain: usize,
    pub now_ms: u64,
}

impl Client {
    /// A new client that lists itself on `flush` when it has output.
    pub(super) fn new(init: ClientInit, flush: Rc<FlushList>) -> Rc<Client> {
        Rc::new_cyclic(|me| Client {
            key: init.key,
            session: init.session,
            kind: init.kind,
            out: RefCell::new(OutboundQueue::default()),
            backlog: RefCell::default(),
            me: me.clone(),
            flush,
            listed: Cell::new(false),
            stamp: Cell::new(0),
            closing: Cell::new(None),
            subs: RefCell::new(HashMap::new()),
            sub_bytes: Cell::new(0),
            hwm: RefCell::new(None),
            queue_limit: init.queue_limit,
            log: RefCell::new(SessionLog::new(init.session_retain, 1)),
            next_k: Cell::new(1),
            detached_at: Cell::new(None),
            detached_k: Cell::new(0),
            fd: Cell::new(-1),
            drops: Cell::new(0),
            last_rx: Cell::new(init.now_ms),
            ping_sent: Cell::new(false),
            closed_at: Cell::new(None),
            held: RefCell::new(Vec::new()),
            access: Access::default(),
            inbound: InboundLimit::default(),
            publishes: PublishLimit::default(),
            acks: Default::default(),
        })
    }

    // ---- the socket side ------------------------------------------------------------------

    /// Records that the peer sent something (it is alive).
    pub fn touch(&self, now_ms: u64) {
        self.last_rx.set(now_ms);
        self.ping_sent.set(false);
    }

    /// Sets the socket descriptor used for forced shutdown.
    pub fn set_fd(&self, fd: i32) {
        self.fd.set(fd);
    }

    /// Shuts the socket down in both directions: in-flight reads and writes fail, so the
    /// connection's tasks end. Used when a close could not be flushed within its grace period.
    pub fn force_shutdown(&self) {
        let fd = self.fd.get();
        if fd >= 0 {
            // SAFETY: the fd stays open while the connection is registered (its reader holds
            // it); shutdown(2) neither closes nor frees it.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    /// Why the connection is closing, once a close has been decided; nothing new is queued
    /// after that.
    pub fn closing(&self) -> Option<CloseReason> {
        self.closing.get()
    }

    /// True while the session has no socket (retained for a resume).
    pub fn is_detached(&self) -> bool {
        self.detached_at.get().is_some()
    }

    /// True when the writer has something to send.
    pub fn has_output(&self) -> bool {
        !self.out.borrow().is_empty()
    }

    /// What `/connz` shows of the output: bytes queued, the publish time (µs) of the oldest
    /// message still queued or owed, and the messages dropped so far.
    pub fn output_view(&self) -> (usize, Option<u64>, u64) {
        let out = self.out.borrow();
        let oldest = out
            .oldest_ts()
            .or_else(|| self.backlog.borrow().oldest_ts());
        (out.bytes(), oldest, self.drops.get())
    }

    /// The socket's descriptor (-1: none, the session is detached).
    pub fn fd(&self) -> i32 {
        self.fd.get()
    }

    /// Counts `n` messages this connection will not get.
    fn count_drops(&self, m: &CoreMetrics, n: u64) {
        self.drops.set(self.drops.get() + n);
        metrics::add(&m.dropped, n);
    }

    /// Moves pending output into `batch`, then refills the queue from the backlog.
    pub fn fill(&self, batch: &mut WriteBatch) {
        let framing = match self.kind {
            ConnKind::Sse => Framing::Sse(&self.session),
            ConnKind::WebSocket | ConnKind::Echo => Framing::WebSocket,
        };
        self.out.borrow_mut().fill(batch, framing);
        // From here the frames count as sent: the batch is shared with the session log.
        let items = batch.share();
        self.log.borrow_mut().add(items);
        self.top_up();
    }

    /// Moves owed items from the backlog into the queue until it holds half its limit (at
    /// least one item), giving each message its index `k` in the session.
    fn top_up(&self) {
        if self.backlog.borrow().is_empty() || self.closing.get().is_some() {
            return;
        }
        let target = (self.queue_limit / 2).max(1);
        let mut out = self.out.borrow_mut();
        let mut backlog = self.backlog.borrow_mut();
        let was_empty = out.is_empty();
        while out.bytes() < target {
            match backlog.pop() {
                Some(Owed::Msg { frame, .. }) => {
                    let k = self.next_k.get();
                    self.next_k.set(k + 1);
                    out.push_msg(&frame, k, false, usize::MAX / 8);
                }
                Some(Owed::Event(bytes)) => {
                    out.push_raw(bytes, usize::MAX / 8);
                }
                None => break,
            }
        }
        if was_empty && !out.is_empty() {
            drop((out, backlog));
            self.wake_writer();
        }
    }

    /// Puts this client on its core's flush list (once until the transport takes it).
    #[inline]
    fn wake_writer(&self) {
        if self.listed.replace(true) {
            return;
        }
        if let Some(me) = self.me.upgrade() {
            self.flush.push(me);
        }
    }

    // ---- output ---------------------------------------------------------------------------

    /// Moves messages still queued, then those still owed, into the session log (the socket
    /// is going away; a resume must replay them) and drops them from the queue and backlog.
    /// Returns how many there were.
    pub(super) fn spill_queue_to_log(&self) -> usize {
        let mut spilled = Vec::new();
        self.out
            .borrow_mut()
            .drain_messages(|frame, k| spilled.push(Out::Msg(frame, k)));
        for frame in self.backlog.borrow_mut().take_messages() {
            let k = self.next_k.get();
            self.next_k.set(k + 1);
            spilled.push(Out::Msg(frame, k));
        }
        let n = spilled.len();
        self.log.borrow_mut().add(Rc::new(spilled));
        n
    }

    /// Drops everything still queued or owed (the socket is gone).
    pub(super) fn clear_output(&self) {
        self.out.borrow_mut().clear();
        self.backlog.borrow_mut().take_messages();
    }

    /// Queues a named event: an SSE `event:` block, or a WebSocket text frame of the JSON.
    pub fn send_event(&self, m: &CoreMetrics, name: &str, json: &[u8]) {
        if self.closing.get().is_some() {
            return;
        }
        self.send_raw(m, self.event_bytes(name, json));
    }

    /// Owes a named event behind what is already owed (a replay's `gap` goes out right before
    /// the replayed messages).
    pub(super) fn owe_event(&self, name: &str, json: &[u8]) {
        if self.closing.get().is_some() {
            return;
        }
        let bytes = self.event_bytes(name, json);
        self.backlog.borrow_mut().push_event(bytes);
        self.top_up();
    }

    /// The framed bytes of a named event.
    fn event_bytes(&self, name: &str, json: &[u8]) -> Box<[u8]> {
        let mut b = Vec::with_capacity(json.len() + 24);
        if self.kind == ConnKind::Sse {
            b.extend_from_slice(b"event: ");
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(b"\ndata: ");
            b.extend_from_slice(json);
            b.extend_from_slice(b"\n\n");
        } else {
            crate::ws::encode_frame(&mut b, crate::ws::OP_TEXT, json);
        }
        b.into()
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subs.borrow().len()
    }

    /// The patterns this connection is subscribed to.
    pub fn patterns(&self) -> Vec<Box<str>> {
        self.subs.borrow().keys().cloned().collect()
    }

    /// Queues a control reply (JSON) as a WebSocket text frame. SSE streams carry no replies
    /// (they have no requests).
    pub fn send_json(&self, m: &CoreMetrics, json: &[u8]) {
        if self.closing.get().is_some() || self.kind == ConnKind::Sse {
            return;
        }
        let mut v = Vec::with_capacity(json.len() + 4);
        crate::ws::encode_frame(&mut v, crate::ws::OP_TEXT, json);
        self.send_raw(m, v.into());
    }

    /// Queues raw bytes (already framed).
    pub fn send_raw(&self, m: &CoreMetrics, bytes: Box<[u8]>) {
        if self.closing.get().is_some() {
            return;
        }
        let was_empty = self.out.borrow().is_empty();
        if !self.out.borrow_mut().push_raw(bytes, self.queue_limit) {
            self.close_slow(m);
        } else if was_empty {
            self.wake_writer();
        }
    }

    /// Queues an `err` reply.
    pub fn send_err(&self, m: &CoreMetrics, id: Option<&str>, code: ErrorCode, message: &str) {
        let mut b = Vec::with_capacity(64 + message.len());
        proto::err(&mut b, id, code, message);
        self.send_json(m, &b);
    }

    /// Queues an `ok` reply.
    pub fn send_ok(&self, m: &CoreMetrics, id: Option<&str>) {
        let mut b = Vec::with_capacity(32);
        proto::ok(&mut b, id);
        self.send_json(m, &b);
    }

    /// Decides to close: discards pending messages, queues the close frame (WebSocket), wakes
    /// the writer, which flushes it and shuts the socket down. Idempotent.
    pub fn close(&self, m: &CoreMetrics, reason: CloseReason, code: u16, text: &str) {
        let frame = self.kind.is_websocket();
        let last = frame.then(|| crate::ws::close_frame(code, text).into());
        self.close_with(m, reason, last);
    }

    /// [`Client::close`] whose connection is sent `last` as its final bytes (a WebSocket's
    /// close frame, an SSE stream's last event), after replies already queued. Idempotent.
    pub fn close_with(&self, m: &CoreMetrics, reason: CloseReason, last: Option<Box<[u8]>>) {
        if self.closing.get().is_some() {
            return;
        }
        // Queued messages will not reach this socket; the session log keeps them for a resume.
        let dropped = self.spill_queue_to_log();
        self.count_drops(m, dropped as u64);
        if let Some(bytes) = last {
            // Past the limit on purpose: the close must go out even for a slow consumer.
            self.out.borrow_mut().push_raw(bytes, usize::MAX / 8);
        }
        self.closing.set(Some(reason));
        m.closed(reason);
        self.wake_writer();
    }

    fn close_slow(&self, m: &CoreMetrics) {
        self.close(
            m,
            CloseReason::SlowConsumer,
            crate::ws::close::SLOW_CONSUMER,
            "slow consumer",
        );
    }

    /// Marks the connection closed without a close frame (its socket is already gone), counting
    /// it as closed by the client unless a reason was decided before.
    pub(super) fn mark_gone(&self, m: &CoreMetrics) {
        if self.closing.get().is_none() {
            self.closing.set(Some(CloseReason::ClientClosed));
            m.closed(CloseReason::ClientClosed);
        }
    }

    /// Keeps the session without a socket from core clock `now_ms` on (its close, if none was
    /// decided, counts as already done by the client), tracking per-subject seqs so that a
    /// hand-over can de-duplicate.
    pub(super) fn detach(&self, now_ms: u64) {
        if self.closing.get().is_none() {
            self.closing.set(Some(CloseReason::ClientClosed));
        }
        self.detached_at.set(Some(now_ms));
        self.detached_k.set(self.next_k.get());
        self.track_hwm();
    }

    /// Makes sure the session tracks the highest seq per subject from now on.
    pub(super) fn track_hwm(&self) {
        self.hwm.borrow_mut().get_or_insert_with(HashMap::new);
    }

    /// True while a `since` replay of `subject` is pending.
    #[inline]
    pub(super) fn holds(&self, subject: &str) -> bool {
        let held = self.held.borrow();
        !held.is_empty() && held.iter().any(|s| &**s == subject)
    }

    /// The `since` replay of `pattern` arrived: its live messages flow again.
    pub(super) fn release(&self, pattern: &str) {
        let mut held = self.held.borrow_mut();
        if let Some(i) = held.iter().position(|s| &**s == pattern) {
            held.swap_remove(i);
        }
    }

    /// True when `frame` may go to this connection: its grant allows the subject, and it is
    /// newer than what the connection already got of it (which it then becomes).
    #[inline]
    fn admits(&self, frame: &LocalFrame) -> bool {
        if self.access.denies_delivery(frame.subject()) {
            return false;
        }
        if let Some(hwm) = self.hwm.borrow_mut().as_mut() {
            let seq = frame.seq();
            match hwm.get_mut(frame.subject()) {
                Some(h) if *h >= seq => return false,
                Some(h) => *h = seq,
                None => {
                    hwm.insert(frame.subject().into(), seq);
                }
            }
        }
        true
    }

    /// Logs a message the socket will not get (detached, or closing) for a resume.
    fn log_unsent(&self, frame: &LocalFrame) {
        let k = self.next_k.get();
        self.next_k.set(k + 1);
        self.log.borrow_mut().put(k, frame.clone());
    }

    /// Queues a live message frame unless this connection must not or need not get it.
    /// Returns true if queued, or logged for a resume: a session without a socket (detached),
    /// or whose socket is closing, still records everything routed to it, so that nothing
    /// between the decision to close and a resume is lost. Behind a replay, the message waits
    /// in the backlog, where the slow-consumer limit applies to the live bytes.
    ///
    /// `at` is the frame's place in its subject's shared run, when it has one: a connection
    /// that takes it without conflation queues a stretch of the run (one item for consecutive
    /// frames; one iovec on WebSocket) instead of the frame alone.
    #[inline]
    pub(super) fn push_msg(
        &self,
        m: &CoreMetrics,
        frame: &LocalFrame,
        conflate: bool,
        at: Option<&RunSlot>,
    ) -> bool {
        if !self.admits(frame) {
            return false;
        }
        if self.closing.get().is_none() {
            let overflow = if self.backlog.borrow().is_empty() {
                let at = at.filter(|_| !conflate);
                self.queue(m, frame, conflate, at)
            } else {
                let behind = self
                    .backlog
                    .borrow_mut()
                    .push_live(frame, conflate, self.queue_limit);
                if behind == Behind::Conflated {
                    self.count_drops(m, 1);
                }
                behind == Behind::Overflow
            };
            if !overflow {
                return true;
            }
            // It does not reach this socket, which closes: logged below, after what the
            // close moves from the queue and backlog to the log.
            self.count_drops(m, 1);
            self.close_slow(m);
        }
        self.log_unsent(frame);
        true
    }

    /// Puts a live message on the queue; true when the queue is over its limit.
    #[inline]
    fn queue(
        &self,
        m: &CoreMetrics,
        frame: &LocalFrame,
        conflate: bool,
        at: Option<&RunSlot>,
    ) -> bool {
        let k = self.next_k.get();
        let mut out = self.out.borrow_mut();
        let was_empty = out.is_empty();
        let pushed = match at {
            Some(at) => out.push_run(at, k, self.queue_limit),
            None => out.push_msg(frame, k, conflate, self.queue_limit),
        };
        drop(out);
        match pushed {
            Pushed::Queued => {
                // Logged for resume when it is taken for writing (see `fill`), not here: that
                // keeps the per-delivery path to one queue push.
                self.next_k.set(k + 1);
                if was_empty {
                    self.wake_writer();
                }
                false
            }
            Pushed::Conflated(_) => {
                self.count_drops(m, 1);
                false
            }
            Pushed::Overflow => true,
        }
    }

    /// Owes a replayed message (resume, `since`, `snapshot`, catch-up): it goes out as the
    /// socket drains, however large the replay, and is logged if the socket is closing.
    /// Returns true if owed or logged.
    pub(super) fn owe_msg(&self, frame: &LocalFrame) -> bool {
        if !self.admits(frame) {
            return false;
        }
        if self.closing.get().is_some() {
            self.log_unsent(frame);
            return true;
        }
        self.backlog.borrow_mut().push_replayed(frame.clone());
        self.top_up();
        true
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
