//! `Core`: one core's shard of the node, and everything that runs on its event loop.
//!
//! Owns, for this core only: the subject trie of local subscriptions (and its match cache), the
//! registry of local connections, the `SubjectState` of every subject this core owns
//! (sequencing, history, dedup), and the table of requests waiting for another core's answer.
//! Everything here is touched only by this core's thread (`Rc`/`RefCell`, no locks); other cores
//! are reached only through [`crate::bus`].
//!
//! Data flow of a publish: the receiving core forwards it to the subject's owner (or handles it
//! itself); the owner sequences it, encodes the frame once, and sends the `Arc<Frame>` to every
//! core; each core matches the subject against its trie and queues one reference per matching
//! connection, each connection at most once.

use crate::auth::Grant;
use crate::bus::{
    owner_of, Bus, BusMsg, CancelError, HistoryReq, OwnerOp, OwnerReply, ReplayKind, SessionState,
    MAX_CORES,
};
use crate::config::Config;
use crate::frame::Frame;
use crate::metrics::{self, CloseReason, CoreMetrics};
use crate::os::now_us;
use crate::outbound::{
    Framing, LocalFrame, LocalNotify, Out, OutboundQueue, Pushed, SessionLog, WriteBatch,
};
use crate::owner::{Accepted, Replay, Stamp, SubjectLimits, SubjectState};
use crate::proto::{self, ErrorCode};
use crate::proto::{PubAck, PubError, PubResult};
use crate::store::{Durability, HistoryStore, ReadReq, StoredRange};
use crate::trie::SubjectTrie;
use crossbeam_channel::Receiver;
use hashbrown::HashMap;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Subjects whose match result is cached per core. The cache is dropped whole when any local
/// subscription changes or when it reaches this size; 8192 covers a few thousand instruments.
pub const MATCH_CACHE_ENTRIES: usize = 8192;

/// Bus messages handled per loop turn before the core yields to socket I/O.
pub const BUS_BATCH: usize = 4096;

/// Spare write batches kept per core for reuse.
const BATCH_POOL: usize = 256;

/// Spare read buffers kept per core; a connection borrows one only while data is ready.
const READ_POOL: usize = 64;

/// Size of a pooled read buffer.
pub const READ_BUF_BYTES: usize = 16 << 10;

/// State shared by all cores of a node (read-mostly).
pub struct Shared {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// The cross-core bus.
    pub bus: Arc<Bus>,
    /// Per-core counters, indexed by core id.
    pub metrics: Box<[CoreMetrics]>,
    /// Open connections on the whole node (admission control at accept; not on the message path).
    pub connections: AtomicUsize,
    /// Set once shutdown has begun.
    pub shutting_down: AtomicBool,
    /// The I/O driver the cores run on (`io_uring` or `epoll`).
    pub driver: &'static str,
    /// Token verifier; `None`: auth is off.
    pub verifier: Option<crate::auth::Verifier>,
    /// Where history outlives memory (`MemoryStore` without `--data-dir`).
    pub store: Arc<dyn HistoryStore>,
    /// Cluster mode (`--nats-url`): the JetStream bridge, which sequences every publish.
    pub cluster: Option<crate::cluster::Bridge>,
}

impl Shared {
    /// `/healthz`: `Ok` while the node can accept publishes, else why not. A degraded node
    /// keeps serving its subscribers.
    pub fn health(&self) -> Result<(), String> {
        if !self.store.healthy() {
            return Err("degraded: the durable store failed to write (see the log)".into());
        }
        if let Some(status) = self.cluster.as_ref().map(|b| b.status()) {
            if !status.connected.load(Ordering::Acquire) {
                return Err(
                    "degraded: NATS unreachable; serving what this node has, publishes are refused"
                        .into(),
                );
            }
            if !status.caught_up.load(Ordering::Acquire) {
                return Err("degraded: catching up with the cluster stream".into());
            }
        }
        Ok(())
    }

    /// True when history outlives the rings: a durable store, or the cluster's stream.
    pub fn has_store(&self) -> bool {
        self.store.durability() != Durability::None || self.cluster.is_some()
    }

    /// Node-wide `/metrics` series (store, cluster bridge).
    pub fn node_series(&self) -> Vec<crate::metrics::NodeSeries> {
        let mut v = self.store.series();
        if let Some(b) = &self.cluster {
            v.extend(b.status().series());
        }
        v
    }
}

/// One subscription of one connection.
pub struct SubState {
    /// The pattern.
    pub pattern: Box<str>,
    /// Conflate instead of disconnecting when behind.
    pub conflate: Cell<bool>,
    /// Cores whose replay (`since`/`snapshot`) has not arrived yet: their live messages are
    /// skipped, the replay covers them.
    pending: Cell<u64>,
    /// False once unsubscribed or closed.
    active: Cell<bool>,
}

/// A trie entry: which connection, through which subscription.
#[derive(Clone)]
pub struct SubEntry {
    conn: Rc<Conn>,
    sub: Rc<SubState>,
}

impl PartialEq for SubEntry {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.sub, &other.sub)
    }
}

/// The core-visible state of one connection (WebSocket or HTTP); the socket itself lives in the
/// connection's tasks (see [`crate::conn`]).
pub struct Conn {
    /// Node-unique id (core in the top bits).
    pub id: u64,
    /// Session id sent in `hello`.
    pub session: Box<str>,
    /// Pending outbound bytes.
    out: RefCell<OutboundQueue>,
    /// The socket's write half while no writer task runs. A writer task is spawned only when
    /// there is something to send and gives the half back when the queue is empty, so an idle
    /// connection costs no task (see [`crate::conn::write_loop`]).
    writer: RefCell<Option<WriteHalf>>,
    /// This connection, for spawning its writer.
    me: Weak<Conn>,
    /// Its core, for spawning its writer.
    core: Weak<Core>,
    /// Delivery stamp: equal to the core's current stamp when this message was already queued.
    stamp: Cell<u64>,
    closing: Cell<Option<CloseReason>>,
    subs: RefCell<HashMap<Box<str>, Rc<SubState>>>,
    /// Highest seq queued per subject; only tracked once the connection used `since`/`snapshot`,
    /// so replays and live messages never duplicate or reorder.
    hwm: RefCell<Option<HashMap<Box<str>, u64>>>,
    queue_limit: usize,
    websocket: bool,
    sse: bool,
    /// The `msg` frames this session was sent, for exact resume.
    log: RefCell<SessionLog>,
    /// Index `k` the next message of this session gets.
    next_k: Cell<u64>,
    /// Core clock (ms) when the socket went away while the session is retained.
    detached_at: Cell<Option<u64>>,
    /// The socket, for a forced shutdown when a close cannot be flushed in time.
    fd: Cell<i32>,
    /// Core clock (ms) of the last bytes received.
    last_rx: Cell<u64>,
    /// A keep-alive ping is outstanding.
    ping_sent: Cell<bool>,
    /// Core clock (ms) when the close was decided.
    closed_at: Cell<u64>,
    /// Subjects whose `since` replay is on its way from their owner core: their live messages
    /// are held back (the replay includes them). Empty, and unallocated, almost always.
    held: RefCell<Vec<Box<str>>>,
    /// What the connection's token allows (`None`: auth off, or not authenticated yet).
    grant: RefCell<Option<Arc<Grant>>>,
    /// Per-subject delivery verdicts when the grant denies some subjects (bounded cache).
    verdicts: RefCell<Option<HashMap<Box<str>, bool>>>,
    /// Core clock (ms) by which an `auth` op must arrive; 0 when not waiting for one.
    auth_deadline: Cell<u64>,
    /// Inbound rate limiter: milli-tokens, last refill (ms), rate-limited messages in a row.
    bucket: Cell<(u64, u64, u32)>,
    /// An echo connection (`/ws/echo`): messages are echoed, not parsed.
    pub echo: Cell<bool>,
}

/// Subjects whose deny verdict a connection caches (cleared whole when full).
pub const VERDICT_CACHE_ENTRIES: usize = 4096;

/// Outcome of the inbound rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the rate.
    Ok,
    /// Over the rate: answer `rate_limited`, drop the message.
    Limited,
    /// Over the rate for too long: close 4029.
    Abuse,
}

/// The write half of a connection's socket.
pub type WriteHalf = monoio::io::OwnedWriteHalf<monoio::net::TcpStream>;

#[inline]
fn frame_subject(f: &LocalFrame) -> &str {
    f.subject()
}

impl Conn {
    /// True while a `since` replay of `subject` is pending.
    #[inline]
    fn holds(&self, subject: &str) -> bool {
        let held = self.held.borrow();
        !held.is_empty() && held.iter().any(|s| &**s == subject)
    }

    /// Installs the grant of a verified token (or `None` when auth is off).
    pub fn set_grant(&self, grant: Option<Arc<Grant>>) {
        *self.verdicts.borrow_mut() = grant
            .as_ref()
            .filter(|g| g.filters_delivery())
            .map(|_| HashMap::new());
        *self.grant.borrow_mut() = grant;
        self.auth_deadline.set(0);
    }

    /// The current grant.
    pub fn grant(&self) -> Option<Arc<Grant>> {
        self.grant.borrow().clone()
    }

    /// Waits for an `auth` op until the core clock reaches `deadline_ms`.
    pub fn require_auth_by(&self, deadline_ms: u64) {
        self.auth_deadline.set(deadline_ms.max(1));
    }

    /// True while the connection must still authenticate.
    pub fn awaiting_auth(&self) -> bool {
        self.auth_deadline.get() != 0
    }

    /// Takes one inbound message from the token bucket (`rate` per second, one second of burst).
    pub fn take_token(&self, now_ms: u64, rate: u32, abuse_limit: u32) -> RateVerdict {
        if rate == 0 {
            return RateVerdict::Ok;
        }
        let cap = rate as u64 * 1000;
        let (tokens, last, streak) = self.bucket.get();
        let tokens = if last == 0 {
            cap
        } else {
            (tokens + now_ms.saturating_sub(last) * rate as u64).min(cap)
        };
        if tokens >= 1000 {
            self.bucket.set((tokens - 1000, now_ms, 0));
            RateVerdict::Ok
        } else if streak + 1 >= abuse_limit {
            self.bucket.set((tokens, now_ms, streak + 1));
            RateVerdict::Abuse
        } else {
            self.bucket.set((tokens, now_ms, streak + 1));
            RateVerdict::Limited
        }
    }

    /// True when the grant denies delivery of `subject` (cached per subject).
    #[inline]
    fn delivery_denied(&self, subject: &str) -> bool {
        let mut v = self.verdicts.borrow_mut();
        let Some(cache) = v.as_mut() else {
            return false;
        };
        if let Some(d) = cache.get(subject) {
            return *d;
        }
        let denied = self
            .grant
            .borrow()
            .as_ref()
            .is_none_or(|g| g.denies_delivery(subject));
        if cache.len() >= VERDICT_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(subject.into(), denied);
        denied
    }

    /// Makes sure a writer task is running if there is anything to send or a close to finish.
    #[inline]
    fn kick(&self) {
        let Some(wh) = self.writer.borrow_mut().take() else {
            return;
        };
        match (self.core.upgrade(), self.me.upgrade()) {
            (Some(core), Some(me)) => {
                monoio::spawn(crate::conn::write_loop(core, me, wh));
            }
            _ => *self.writer.borrow_mut() = Some(wh),
        }
    }

    /// Hands the write half to the connection (at upgrade, or when a writer task finishes).
    pub fn park_writer(&self, wh: WriteHalf) {
        *self.writer.borrow_mut() = Some(wh);
        if self.has_output() || self.closing.get().is_some() {
            self.kick();
        }
    }

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
            // SAFETY: the fd stays open while the connection is registered (its reader holds it).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    /// True once a close has been decided; nothing new is queued after that.
    pub fn closing(&self) -> Option<CloseReason> {
        self.closing.get()
    }

    /// True when the writer has something to send.
    pub fn has_output(&self) -> bool {
        !self.out.borrow().is_empty()
    }

    /// Moves pending output into `batch`.
    pub fn fill(&self, batch: &mut WriteBatch) {
        let framing = if self.sse {
            Framing::Sse(&self.session)
        } else {
            Framing::WebSocket
        };
        self.out.borrow_mut().fill(batch, framing);
        // From here the frames count as sent: the batch is shared with the session log.
        let items = batch.share();
        self.log.borrow_mut().add(items);
    }

    /// Moves messages still queued into the session log (the socket is going away; a resume
    /// must replay them) and drops them from the queue. Returns how many there were.
    fn spill_queue_to_log(&self) -> usize {
        let mut spilled = Vec::new();
        self.out
            .borrow_mut()
            .drain_messages(|frame, k| spilled.push(Out::Msg(frame, k)));
        let n = spilled.len();
        self.log.borrow_mut().add(Rc::new(spilled));
        n
    }

    /// Queues a named event: an SSE `event:` block, or a WebSocket text frame of the JSON.
    pub fn send_event(&self, m: &CoreMetrics, name: &str, json: &[u8]) {
        if !self.sse {
            return self.send_json(m, json);
        }
        if self.closing.get().is_some() {
            return;
        }
        let mut b = Vec::with_capacity(json.len() + 24);
        b.extend_from_slice(b"event: ");
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(b"\ndata: ");
        b.extend_from_slice(json);
        b.extend_from_slice(b"\n\n");
        self.send_raw(m, b.into());
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subs.borrow().len()
    }

    /// The patterns this connection is subscribed to.
    pub fn patterns(&self) -> Vec<Box<str>> {
        self.subs.borrow().keys().cloned().collect()
    }

    /// Queues a control reply (JSON); WebSocket connections get it as a text frame. SSE streams
    /// carry no replies (they have no requests).
    pub fn send_json(&self, m: &CoreMetrics, json: &[u8]) {
        if self.closing.get().is_some() || self.sse {
            return;
        }
        let bytes: Box<[u8]> = if self.websocket {
            let mut v = Vec::with_capacity(json.len() + 4);
            crate::ws::encode_frame(&mut v, crate::ws::OP_TEXT, json);
            v.into()
        } else {
            json.into()
        };
        self.send_raw(m, bytes);
    }

    /// Queues raw bytes (already framed).
    pub fn send_raw(&self, m: &CoreMetrics, bytes: Box<[u8]>) {
        if self.closing.get().is_some() {
            return;
        }
        let was_empty = self.out.borrow().is_empty();
        if !self.out.borrow_mut().push_raw(bytes, self.queue_limit) {
            self.close(
                m,
                CloseReason::SlowConsumer,
                crate::ws::close::SLOW_CONSUMER,
                "slow consumer",
            );
        } else if was_empty {
            self.kick();
        }
    }

    /// Queues an `err` reply.
    pub fn send_err(&self, m: &CoreMetrics, id: Option<&str>, code: ErrorCode, message: &str) {
        let mut b = Vec::with_capacity(64 + message.len());
        proto::err(&mut b, id, code, message);
        self.send_json(m, &b);
    }

    /// Decides to close: discards pending messages, queues the close frame (WebSocket), wakes the
    /// writer, which flushes it and shuts the socket down. Idempotent.
    pub fn close(&self, m: &CoreMetrics, reason: CloseReason, code: u16, text: &str) {
        if self.closing.get().is_some() {
            return;
        }
        // Queued messages will not reach this socket; the session log keeps them for a resume.
        let dropped = self.spill_queue_to_log();
        metrics::add(&m.dropped, dropped as u64);
        if self.websocket {
            // Past the limit on purpose: the close frame must go out even for a slow consumer.
            self.out
                .borrow_mut()
                .push_raw(crate::ws::close_frame(code, text).into(), usize::MAX / 8);
        }
        self.closing.set(Some(reason));
        m.closed(reason);
        self.kick();
        self.closed_at.set(CLOCK_MS.with(|c| c.get()));
    }

    /// Queues a message frame unless already queued for this delivery (`stamp`) or older than
    /// what this connection already got. Returns true if queued.
    #[inline]
    fn push_msg(&self, m: &CoreMetrics, frame: &LocalFrame, conflate: bool) -> bool {
        let detached = self.detached_at.get().is_some();
        if (!detached && self.closing.get().is_some()) || self.delivery_denied(frame.subject()) {
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
        let k = self.next_k.get();
        if detached {
            // No socket: the session only records what it would have been sent, for resume.
            self.next_k.set(k + 1);
            self.log.borrow_mut().put(k, frame.clone());
            return true;
        }
        let was_empty = self.out.borrow().is_empty();
        let pushed = self
            .out
            .borrow_mut()
            .push_msg(frame, k, conflate, self.queue_limit);
        match pushed {
            Pushed::Queued => {
                // Logged for resume when it is taken for writing (see `fill`), not here: that
                // keeps the per-delivery path to one queue push.
                self.next_k.set(k + 1);
                if was_empty {
                    self.kick();
                }
                true
            }
            Pushed::Conflated(_) => {
                metrics::add(&m.dropped, 1);
                true
            }
            Pushed::Overflow => {
                metrics::add(&m.dropped, 1);
                self.close(
                    m,
                    CloseReason::SlowConsumer,
                    crate::ws::close::SLOW_CONSUMER,
                    "slow consumer",
                );
                false
            }
        }
    }
}

/// A one-shot, core-local answer for an HTTP request waiting on another core.
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
    fn fill(&self, v: T) {
        *self.value.borrow_mut() = Some(v);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Waits for the value.
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

/// Who is waiting for another core's answer.
enum Waiter {
    /// A publish sequenced elsewhere (owner core, or the cluster): who gets the answer.
    Pub(AckTo),
    /// An owner's answer waiting for older messages from the store.
    Deep(Deep),
    /// A `since`/`snapshot` replay for a subscription (`since`: the subject is held meanwhile).
    Replay {
        conn: Rc<Conn>,
        sub: Rc<SubState>,
        since: bool,
    },
    /// An HTTP `/history` request.
    History(Rc<Slot<Vec<u8>>>),
    /// A resume waiting for the session's owner core to hand it over.
    Resume(Rc<Slot<Result<SessionState, TakeError>>>),
    /// A call to an owner core (scheduled publishes).
    Call(Rc<Slot<OwnerReply>>),
    /// A resumed session waiting for one owner's catch-up frames.
    CatchUp {
        conn: Rc<Conn>,
        subs: Vec<Rc<SubState>>,
    },
}

/// Who gets a publish's outcome.
enum AckTo {
    /// A WebSocket `pub` on this core.
    Ws {
        conn: Rc<Conn>,
        id: Option<Box<str>>,
    },
    /// An HTTP publish on this core.
    Http(Rc<Slot<PubResult>>),
    /// A publish forwarded by another core (`PubDone`).
    Core { core: usize, token: u64 },
    /// A scheduled publish firing.
    Nobody,
}

/// Sync durability: an accepted message (or a duplicate's answer) waiting for the fsync of
/// the store group holding everything before it.
struct Unsynced {
    ticket: u64,
    frame: Option<Arc<Frame>>,
    ack: PubAck,
    to: AckTo,
}

/// An owner-side answer that needs stored messages older than the history ring.
enum Deep {
    /// A `since` replay.
    Replay {
        subject: Box<str>,
        since: u64,
        from: usize,
        token: u64,
        tries: u8,
    },
    /// A `/history` request.
    History(HistoryReq),
}

/// Re-reads allowed when the ring moved past the store read while it was in flight.
const DEEP_READ_TRIES: u8 = 3;

/// Why a session could not be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// Unknown, expired, or no longer holding the messages asked for.
    Unknown,
    /// Still receiving a replay or catch-up: ask again shortly.
    Busy,
}

/// Why a resume failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// Unknown, expired, or no longer holding the messages after `received`.
    Expired,
}

/// Outcome of a subscribe request.
#[derive(Debug, PartialEq, Eq)]
pub enum SubError {
    /// Too many subscriptions on this connection.
    TooMany,
}

/// One core's shard and event-loop state.
pub struct Core {
    /// This core's index.
    pub id: usize,
    /// Node-wide shared state.
    pub shared: Arc<Shared>,
    rx: Receiver<BusMsg>,
    trie: RefCell<SubjectTrie<SubEntry>>,
    cache: RefCell<HashMap<Box<str>, Rc<[SubEntry]>>>,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    owned: RefCell<HashMap<Box<str>, SubjectState>>,
    waiters: RefCell<HashMap<u64, Waiter>>,
    next_token: Cell<u64>,
    next_conn: Cell<u64>,
    stamp: Cell<u64>,
    limits: SubjectLimits,
    batches: RefCell<Vec<WriteBatch>>,
    read_bufs: RefCell<Vec<Vec<u8>>>,
    /// Notified when shutdown begins (accept loop and connections watch it).
    pub shutdown: LocalNotify,
    shutting_down: Cell<bool>,
    clock_ms: Cell<u64>,
    started: Instant,
    /// Accept-rate token bucket: milli-tokens and last refill (ms).
    accepts: Cell<(u64, u64)>,
    /// Scheduled publishes of subjects this core owns.
    schedules: RefCell<crate::schedule::Schedules>,
    /// Wakes the scheduler task when a schedule is added.
    schedule_wake: LocalNotify,
    /// This core's broadcast counter as a subject owner (see `Frame::xseq`).
    xseq: Cell<u64>,
    /// Per owner core: the last broadcast position this core has processed.
    seen: Box<[Cell<u64>]>,
    /// Sync durability: accepted messages waiting for their fsync, in acceptance order.
    unsynced: RefCell<VecDeque<Unsynced>>,
    /// Ticket of this core's last store append.
    ticket: Cell<u64>,
}

thread_local! {
    /// This core's coarse clock (ms since the core started), advanced by the sweeper.
    static CLOCK_MS: Cell<u64> = const { Cell::new(0) };
}

/// How long a connection may take to flush its close frame before its socket is shut down.
pub const CLOSE_GRACE_MS: u64 = 2_000;

impl Core {
    /// Builds core `id`'s state.
    pub fn new(id: usize, shared: Arc<Shared>, rx: Receiver<BusMsg>) -> Rc<Core> {
        let cfg = &shared.cfg;
        let limits = SubjectLimits {
            history: cfg.history,
            dedup_ids: cfg.dedup_window,
            dedup_ttl: Duration::from_secs(cfg.dedup_secs),
        };
        let recovered = shared
            .store
            .recover(id, shared.bus.cores(), cfg.history, cfg.dedup_window);
        let owned: HashMap<Box<str>, SubjectState> = recovered
            .subjects
            .into_iter()
            .map(|r| (r.subject.clone(), SubjectState::restore(r, &limits)))
            .collect();
        let mut schedules = crate::schedule::Schedules::default();
        for (old, sch) in recovered.schedules {
            let n = crate::schedule::parse_id(&old)
                .filter(|(core, _)| *core == id)
                .map(|(_, n)| n);
            let kept = schedules.restore(n, sch.clone());
            if Some(kept) != n {
                // Renumbered (the core count changed): store it under its new id.
                shared.store.delete_schedule(&old);
                let new = crate::schedule::schedule_id(id, kept);
                shared.store.put_schedule(&new, &sch);
                tracing::warn!(old, new, "scheduled publish renumbered after a restart");
            }
        }
        Rc::new(Core {
            id,
            shared,
            rx,
            trie: RefCell::new(SubjectTrie::new()),
            cache: RefCell::new(HashMap::new()),
            conns: RefCell::new(HashMap::new()),
            owned: RefCell::new(owned),
            waiters: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            next_conn: Cell::new(1),
            stamp: Cell::new(0),
            limits,
            batches: RefCell::new(Vec::new()),
            read_bufs: RefCell::new(Vec::new()),
            shutdown: LocalNotify::default(),
            shutting_down: Cell::new(false),
            clock_ms: Cell::new(0),
            started: Instant::now(),
            accepts: Cell::new((0, 0)),
            schedules: RefCell::new(schedules),
            schedule_wake: LocalNotify::default(),
            xseq: Cell::new(0),
            seen: (0..MAX_CORES).map(|_| Cell::new(0)).collect(),
            unsynced: RefCell::new(VecDeque::new()),
            ticket: Cell::new(0),
        })
    }

    /// This core's counters.
    #[inline]
    pub fn metrics(&self) -> &CoreMetrics {
        &self.shared.metrics[self.id]
    }

    /// The node configuration.
    pub fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    /// True once shutdown began on this core.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Number of cores in the node.
    pub fn cores(&self) -> usize {
        self.shared.bus.cores()
    }

    /// Open connections on this core.
    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Registers a new connection on this core.
    pub fn register(self: &Rc<Self>, websocket: bool) -> Rc<Conn> {
        self.register_kind(websocket, false)
    }

    /// Registers a new connection: a WebSocket, or an SSE stream (`sse`).
    pub fn register_kind(self: &Rc<Self>, websocket: bool, sse: bool) -> Rc<Conn> {
        self.register_conn(websocket, sse, None)
    }

    /// Registers a connection, with a new session id unless `session` is given (restore).
    fn register_conn(
        self: &Rc<Self>,
        websocket: bool,
        sse: bool,
        session: Option<Box<str>>,
    ) -> Rc<Conn> {
        let n = self.next_conn.get();
        self.next_conn.set(n + 1);
        let id = ((self.id as u64) << 48) | n;
        // Session ids are unguessable (resume hands over a session): core + 64 random bits.
        let session = session.unwrap_or_else(|| {
            format!("{:02x}{:016x}", self.id, crate::os::random_u64()).into_boxed_str()
        });
        let conn = Rc::new_cyclic(|me| Conn {
            id,
            session,
            out: RefCell::new(OutboundQueue::default()),
            writer: RefCell::new(None),
            me: me.clone(),
            core: Rc::downgrade(self),
            stamp: Cell::new(0),
            closing: Cell::new(None),
            subs: RefCell::new(HashMap::new()),
            hwm: RefCell::new(None),
            queue_limit: self.cfg().max_queue_bytes,
            websocket,
            sse,
            log: RefCell::new(SessionLog::new(self.cfg().session_retain, 1)),
            next_k: Cell::new(1),
            detached_at: Cell::new(None),
            fd: Cell::new(-1),
            last_rx: Cell::new(self.clock_ms.get()),
            ping_sent: Cell::new(false),
            closed_at: Cell::new(0),
            held: RefCell::new(Vec::new()),
            grant: RefCell::new(None),
            verdicts: RefCell::new(None),
            auth_deadline: Cell::new(0),
            bucket: Cell::new((0, 0, 0)),
            echo: Cell::new(false),
        });
        self.conns.borrow_mut().insert(id, conn.clone());
        if websocket {
            metrics::add(&self.metrics().websockets, 1);
        }
        conn
    }

    /// Removes a finished connection and all its subscriptions.
    pub fn unregister(&self, conn: &Rc<Conn>) {
        if self.conns.borrow_mut().remove(&conn.id).is_none() {
            return;
        }
        if conn.closing.get().is_none() {
            conn.closing.set(Some(CloseReason::ClientClosed));
            self.metrics().closed(CloseReason::ClientClosed);
        }
        conn.out.borrow_mut().clear();
        let subs: Vec<Rc<SubState>> = conn.subs.borrow_mut().drain().map(|(_, s)| s).collect();
        for sub in subs {
            self.remove_sub(conn, &sub);
        }
        if conn.websocket {
            metrics::sub(&self.metrics().websockets, 1);
        }
    }

    fn remove_sub(&self, conn: &Rc<Conn>, sub: &Rc<SubState>) {
        sub.active.set(false);
        let entry = SubEntry {
            conn: conn.clone(),
            sub: sub.clone(),
        };
        if self.trie.borrow_mut().remove(&sub.pattern, &entry) {
            self.cache.borrow_mut().clear();
            metrics::sub(&self.metrics().subscriptions, 1);
        }
    }

    fn park(&self, w: Waiter) -> u64 {
        let t = self.next_token.get();
        self.next_token.set(t + 1);
        self.waiters.borrow_mut().insert(t, w);
        t
    }

    // ---- subscriptions -------------------------------------------------------------------

    /// `sub`: adds (or updates) a subscription, answers `ok`, then starts any replay.
    pub fn subscribe(
        &self,
        conn: &Rc<Conn>,
        id: Option<&str>,
        pattern: &str,
        since: Option<u64>,
        snapshot: bool,
        conflate: bool,
    ) -> Result<(), SubError> {
        let existing = conn.subs.borrow().get(pattern).cloned();
        let sub = match existing {
            Some(s) => {
                s.conflate.set(conflate);
                s
            }
            None => {
                if conn.subs.borrow().len() >= self.cfg().max_subs_per_conn {
                    return Err(SubError::TooMany);
                }
                self.add_sub(conn, pattern, conflate)
            }
        };
        let mut b = Vec::with_capacity(32);
        proto::ok(&mut b, id);
        conn.send_json(self.metrics(), &b);
        let kind = match (since, snapshot) {
            (Some(n), _) => ReplayKind::Since(n),
            (None, true) => ReplayKind::Snapshot,
            (None, false) => return Ok(()),
        };
        {
            let mut hwm = conn.hwm.borrow_mut();
            let hwm = hwm.get_or_insert_with(HashMap::new);
            if let ReplayKind::Since(n) = kind {
                // Nothing at or below `since` is delivered, live or replayed.
                let h = hwm.entry_ref(pattern).or_insert(0);
                *h = (*h).max(n);
            }
        }
        let owners: Vec<usize> = match kind {
            ReplayKind::Since(_) => vec![owner_of(pattern, self.cores())],
            ReplayKind::Snapshot if crate::subject::is_literal(pattern) => {
                vec![owner_of(pattern, self.cores())]
            }
            ReplayKind::Snapshot => (0..self.cores()).collect(),
        };
        for owner in owners {
            let deep = matches!(kind, ReplayKind::Since(n) if self.needs_store(pattern, n));
            if owner == self.id && !deep {
                let replay = self.replay_owned(pattern, &kind);
                self.apply_replay(conn, &sub, replay);
            } else {
                sub.pending.set(sub.pending.get() | 1 << owner);
                let since = matches!(kind, ReplayKind::Since(_));
                if since {
                    // Live messages of this subject wait for the replay whichever of the
                    // connection's subscriptions they match: the replay covers them.
                    conn.held.borrow_mut().push(pattern.into());
                }
                let token = self.park(Waiter::Replay {
                    conn: conn.clone(),
                    sub: sub.clone(),
                    since,
                });
                let msg = BusMsg::Replay {
                    pattern: pattern.into(),
                    kind: kind.clone(),
                    from: self.id,
                    token,
                };
                self.shared.bus.send(owner, msg);
            }
        }
        Ok(())
    }

    /// Adds a new subscription of `conn` to the trie (the one place that does).
    fn add_sub(&self, conn: &Rc<Conn>, pattern: &str, conflate: bool) -> Rc<SubState> {
        let s = Rc::new(SubState {
            pattern: pattern.into(),
            conflate: Cell::new(conflate),
            pending: Cell::new(0),
            active: Cell::new(true),
        });
        conn.subs.borrow_mut().insert(pattern.into(), s.clone());
        let entry = SubEntry {
            conn: conn.clone(),
            sub: s.clone(),
        };
        self.trie.borrow_mut().insert(pattern, entry);
        self.cache.borrow_mut().clear();
        metrics::add(&self.metrics().subscriptions, 1);
        s
    }

    /// `unsub`: true if the connection had that subscription.
    pub fn unsubscribe(&self, conn: &Rc<Conn>, pattern: &str) -> bool {
        let sub = conn.subs.borrow_mut().remove(pattern);
        match sub {
            Some(sub) => {
                self.remove_sub(conn, &sub);
                true
            }
            None => false,
        }
    }

    fn replay_owned(&self, pattern: &str, kind: &ReplayKind) -> Replay {
        let owned = self.owned.borrow();
        match kind {
            ReplayKind::Since(n) => owned
                .get(pattern)
                .map(|s| s.replay_since(*n))
                .unwrap_or_default(),
            ReplayKind::Snapshot => {
                let mut frames: Vec<Arc<Frame>> = if crate::subject::is_literal(pattern) {
                    owned
                        .get(pattern)
                        .and_then(|s| s.latest())
                        .cloned()
                        .into_iter()
                        .collect()
                } else {
                    owned
                        .iter()
                        .filter(|(subj, _)| crate::subject::matches(pattern, subj))
                        .filter_map(|(_, s)| s.latest().cloned())
                        .collect()
                };
                frames.sort_by(|a, b| a.subject().cmp(b.subject()));
                Replay { gap: None, frames }
            }
        }
    }

    fn apply_replay(&self, conn: &Rc<Conn>, sub: &Rc<SubState>, replay: Replay) {
        if !sub.active.get() || conn.closing.get().is_some() {
            return;
        }
        let m = self.metrics();
        if let Some((from, to)) = replay.gap {
            // Gaps only come from `since`, whose pattern is a concrete subject.
            let mut b = Vec::with_capacity(64);
            proto::gap(&mut b, &sub.pattern, from, to);
            conn.send_event(m, "gap", &b);
        }
        let mut n = 0;
        for f in replay.frames {
            if conn.push_msg(m, &Rc::new(f), sub.conflate.get()) {
                n += 1;
            }
        }
        metrics::add(&m.delivered, n);
    }

    // ---- publishing ----------------------------------------------------------------------

    /// Publishes from a WebSocket `pub`; the `ok` reply is queued when the owner answers.
    pub fn publish_ws(
        &self,
        conn: &Rc<Conn>,
        id: Option<&str>,
        subject: &str,
        data: &[u8],
        msg_id: Option<&str>,
    ) {
        let to = AckTo::Ws {
            conn: conn.clone(),
            id: id.map(Into::into),
        };
        self.publish(subject, data, msg_id, to);
    }

    /// Publishes from HTTP; resolves when the owner has sequenced it (sync durability: and
    /// made it durable).
    pub async fn publish_http(
        &self,
        subject: &str,
        data: &[u8],
        msg_id: Option<&str>,
    ) -> PubResult {
        let slot = Rc::new(Slot::default());
        self.publish(subject, data, msg_id, AckTo::Http(slot.clone()));
        slot.wait().await
    }

    /// Routes a publish to its sequencer: the cluster's stream in cluster mode, else this
    /// core when it owns the subject, else the owner core over the bus; the answer goes to
    /// `to`.
    fn publish(&self, subject: &str, data: &[u8], msg_id: Option<&str>, to: AckTo) {
        if let Some(bridge) = &self.shared.cluster {
            let token = self.park(Waiter::Pub(to));
            return bridge.publish(subject, data, msg_id, self.id, token);
        }
        let owner = owner_of(subject, self.cores());
        if owner == self.id {
            return self.sequence(subject, data, msg_id, to, None);
        }
        let token = self.park(Waiter::Pub(to));
        let msg = BusMsg::Publish {
            subject: subject.into(),
            data: data.into(),
            msg_id: msg_id.map(Into::into),
            from: self.id,
            token,
        };
        self.shared.bus.send(owner, msg);
    }

    /// Delivers a publish's outcome to whoever asked.
    fn answer(&self, to: AckTo, result: PubResult) {
        match to {
            AckTo::Ws { conn, id } => reply_pub(self.metrics(), &conn, id.as_deref(), result),
            AckTo::Http(slot) => slot.fill(result),
            AckTo::Core { core, token } => self
                .shared
                .bus
                .send(core, BusMsg::PubDone { token, result }),
            AckTo::Nobody => {}
        }
    }

    /// Owner side: sequence, encode once, store, then (at once, or after the fsync with sync
    /// durability) retain, fan out to every core and answer. `fired`: the schedule this fires.
    fn sequence(
        &self,
        subject: &str,
        data: &[u8],
        msg_id: Option<&str>,
        to: AckTo,
        fired: Option<u64>,
    ) {
        if fired.is_none() && self.shared.store.saturated() {
            // Refuse rather than queue without bound (a fired schedule still goes through:
            // it has no one to retry it).
            return self.answer(to, Err(PubError::StoreBehind));
        }
        let accepted = {
            let mut owned = self.owned.borrow_mut();
            let state = owned.entry_ref(subject).or_default();
            state.accept(
                subject,
                data,
                msg_id,
                Stamp {
                    now_us: now_us(),
                    now: Instant::now(),
                    xseq: self.xseq.get() + 1,
                },
                &self.limits,
            )
        };
        let store = &self.shared.store;
        let fired = fired.map(|n| crate::schedule::schedule_id(self.id, n));
        let sync = store.durability() == Durability::Sync;
        match accepted {
            Accepted::Duplicate { seq, ts } => {
                metrics::add(&self.metrics().duplicates, 1);
                if let Some(id) = &fired {
                    store.delete_schedule(id);
                }
                let ack = PubAck {
                    seq,
                    ts,
                    duplicate: true,
                };
                if sync && !self.unsynced.borrow().is_empty() {
                    // The original may still be waiting for its fsync: answer after it.
                    self.unsynced.borrow_mut().push_back(Unsynced {
                        ticket: self.ticket.get(),
                        frame: None,
                        ack,
                        to,
                    });
                } else {
                    self.answer(to, Ok(ack));
                }
            }
            Accepted::New(frame) => {
                self.xseq.set(frame.xseq());
                metrics::add(&self.metrics().published, 1);
                let ack = PubAck {
                    seq: frame.seq(),
                    ts: frame.ts(),
                    duplicate: false,
                };
                if store.durability() != Durability::None {
                    self.ticket
                        .set(store.append(self.id, &frame, fired.as_deref()));
                }
                if sync {
                    self.unsynced.borrow_mut().push_back(Unsynced {
                        ticket: self.ticket.get(),
                        frame: Some(frame),
                        ack,
                        to,
                    });
                } else {
                    self.publish_frame(frame);
                    self.answer(to, Ok(ack));
                }
            }
        }
    }

    /// Cluster mode, owner side: a message the stream sequenced; encode once and fan out like
    /// a local publish (repeats after a reconnect are dropped by seq).
    fn replicated(&self, msg: crate::cluster::Replicated) {
        let frame = {
            let mut owned = self.owned.borrow_mut();
            let state = owned.entry_ref(&*msg.subject).or_default();
            let at = Stamp {
                now_us: msg.ts,
                now: Instant::now(),
                xseq: self.xseq.get() + 1,
            };
            state.accept_replicated(&msg, at, &self.limits)
        };
        if let Some(frame) = frame {
            self.xseq.set(frame.xseq());
            metrics::add(&self.metrics().published, 1);
            self.publish_frame(frame);
        }
    }

    /// Retains an accepted frame in its subject's ring and fans it out to every core.
    fn publish_frame(&self, frame: Arc<Frame>) {
        if let Some(state) = self.owned.borrow_mut().get_mut(frame.subject()) {
            state.retain(frame.clone(), &self.limits);
        }
        for core in 0..self.cores() {
            if core != self.id {
                self.shared.bus.send(
                    core,
                    BusMsg::Deliver {
                        frame: frame.clone(),
                        from: self.id,
                    },
                );
            }
        }
        self.deliver(frame, self.id);
    }

    /// Sync durability: the store made this core's appends up to `upto` durable (or failed
    /// to): deliver and answer everything waiting for them, in order.
    fn durable(&self, upto: u64, ok: bool) {
        loop {
            let next = {
                let mut q = self.unsynced.borrow_mut();
                match q.front() {
                    Some(u) if u.ticket <= upto => q.pop_front(),
                    _ => None,
                }
            };
            let Some(u) = next else { break };
            if let Some(frame) = u.frame {
                // A failed write is still delivered (memory stays consistent and seqs stay
                // contiguous); the publisher is told it is not durable.
                self.publish_frame(frame);
            }
            let result = if ok {
                Ok(u.ack)
            } else {
                Err(PubError::NotDurable)
            };
            self.answer(u.to, result);
        }
    }

    /// Queues `frame` to every matching local connection, once per connection.
    pub fn deliver(&self, frame: Arc<Frame>, from: usize) {
        self.seen[from].set(frame.xseq());
        let entries = self.matches(frame.subject());
        if entries.is_empty() {
            return;
        }
        let stamp = self.stamp.get() + 1;
        self.stamp.set(stamp);
        let m = self.metrics();
        let local: LocalFrame = Rc::new(frame);
        let bit = 1u64 << from;
        let mut n = 0;
        for e in entries.iter() {
            if e.sub.pending.get() & bit != 0 || e.conn.stamp.get() == stamp {
                continue;
            }
            e.conn.stamp.set(stamp);
            if e.conn.holds(frame_subject(&local)) {
                continue;
            }
            if e.conn.push_msg(m, &local, e.sub.conflate.get()) {
                n += 1;
            }
        }
        metrics::add(&m.delivered, n);
    }

    fn matches(&self, subject: &str) -> Rc<[SubEntry]> {
        if let Some(hit) = self.cache.borrow().get(subject) {
            return hit.clone();
        }
        let mut v = Vec::new();
        self.trie
            .borrow()
            .for_each_match(subject, |e| v.push(e.clone()));
        let v: Rc<[SubEntry]> = v.into();
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= MATCH_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(subject.into(), v.clone());
        v
    }

    // ---- history -------------------------------------------------------------------------

    /// `/history/{subject}` body, from the owner core.
    pub async fn history(&self, subject: &str, since: u64, limit: usize) -> Vec<u8> {
        let owner = owner_of(subject, self.cores());
        if owner == self.id && !self.backed(subject) {
            return self.history_body(subject, since, limit, None);
        }
        let slot = Rc::new(Slot::default());
        let token = self.park(Waiter::History(slot.clone()));
        let msg = BusMsg::History(HistoryReq {
            subject: subject.into(),
            since,
            limit,
            from: self.id,
            token,
        });
        self.shared.bus.send(owner, msg);
        slot.wait().await
    }

    /// The `/history` body: `stored` (messages older than the ring, read from the store)
    /// first, then the ring.
    fn history_body(
        &self,
        subject: &str,
        since: u64,
        limit: usize,
        stored: Option<StoredRange>,
    ) -> Vec<u8> {
        let owned = self.owned.borrow();
        let (mut first, last) = owned
            .get(subject)
            .map_or((1, 0), |s| (s.first_retained(), s.last_seq()));
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
        let ring = owned
            .get(subject)
            .into_iter()
            .flat_map(|s| s.after(from_ring, limit));
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

    /// Owner side: true when the subject has history in a store (durable store or the
    /// cluster's stream) besides the ring. `/history` then always asks the store, so that
    /// `first_seq` names the oldest message the store holds, whatever `since` is.
    fn backed(&self, subject: &str) -> bool {
        self.shared.has_store() && self.owned.borrow().contains_key(subject)
    }

    /// Owner side: true when messages after `since` are older than the ring and the store
    /// may hold them.
    fn needs_store(&self, subject: &str, since: u64) -> bool {
        self.shared.has_store()
            && self
                .owned
                .borrow()
                .get(subject)
                .is_some_and(|s| since + 1 < s.first_retained() && since < s.last_seq())
    }

    /// Owner side: asks the store for the part of `deep` that is older than the ring.
    fn read_store(&self, deep: Deep) {
        let (subject, since, limit, newest) = match &deep {
            Deep::Replay { subject, since, .. } => {
                (subject.clone(), *since, crate::store::MAX_READ, true)
            }
            Deep::History(r) => (r.subject.clone(), r.since, r.limit, false),
        };
        let before = self
            .owned
            .borrow()
            .get(&*subject)
            .map_or(u64::MAX, |s| s.first_retained());
        let token = self.park(Waiter::Deep(deep));
        if let Some(bridge) = &self.shared.cluster {
            // Cluster mode: the stream is the store. Ask for exactly the hole below the ring.
            let limit = limit.min(before.saturating_sub(since + 1) as usize);
            let what = crate::cluster::Fetch {
                subject,
                since,
                limit,
            };
            return bridge.fetch(what, self.id, token);
        }
        self.shared.store.read(ReadReq {
            subject,
            after: since,
            before,
            limit,
            newest,
            core: self.id,
            token,
        });
    }

    /// Owner side: sends a replay to the core that asked for it.
    fn answer_replay(&self, from: usize, token: u64, replay: Replay) {
        let owner = self.id;
        let msg = BusMsg::ReplayDone {
            token,
            owner,
            replay,
        };
        self.shared.bus.send(from, msg);
    }

    /// The request parked under `token`, if it is still waiting.
    fn take_waiter(&self, token: u64) -> Option<Waiter> {
        self.waiters.borrow_mut().remove(&token)
    }

    /// Owner side: the store answered a deep read; finish the replay or history request.
    fn finish_deep(&self, deep: Deep, range: StoredRange) {
        match deep {
            Deep::History(HistoryReq {
                subject,
                since,
                limit,
                from,
                token,
            }) => {
                let body = self.history_body(&subject, since, limit, Some(range));
                self.shared
                    .bus
                    .send(from, BusMsg::HistoryDone { token, body });
            }
            Deep::Replay {
                subject,
                since,
                from,
                token,
                tries,
            } => {
                let (ring_first, mut replay) = {
                    let owned = self.owned.borrow();
                    let s = owned.get(&*subject);
                    (
                        s.map_or(u64::MAX, |s| s.first_retained()),
                        s.map(|s| s.replay_since(since)).unwrap_or_default(),
                    )
                };
                if let (Some(first), Some(last)) = (range.frames.first(), range.frames.last()) {
                    if ring_first > last.seq() + 1 && tries < DEEP_READ_TRIES {
                        // The ring moved on while the read was in flight: read again.
                        return self.read_store(Deep::Replay {
                            subject,
                            since,
                            from,
                            token,
                            tries: tries + 1,
                        });
                    }
                    replay.gap = (first.seq() > since + 1).then(|| (since + 1, first.seq() - 1));
                    let newer = replay.frames.into_iter().filter(|f| f.seq() > last.seq());
                    replay.frames = range.frames.iter().cloned().chain(newer).collect();
                }
                self.answer_replay(from, token, replay);
            }
        }
    }

    // ---- sessions --------------------------------------------------------------------------

    /// A connection's socket is gone. Its session is kept (subscribed, logging what it would
    /// have been sent) for `--session-ttl` so a new connection can resume it, unless the node is
    /// shutting down or the connection ended for a reason that rules resuming out.
    pub fn detach_or_unregister(&self, conn: &Rc<Conn>) {
        let keep = self.cfg().session_ttl > 0
            && !self.shutting_down.get()
            && !conn.echo.get()
            && conn.subscription_count() > 0
            && !matches!(
                conn.closing.get(),
                Some(CloseReason::Shutdown | CloseReason::Unauthorized | CloseReason::RateLimited)
            )
            && self.conns.borrow().contains_key(&conn.id);
        if !keep {
            return self.unregister(conn);
        }
        conn.spill_queue_to_log();
        conn.out.borrow_mut().clear();
        conn.fd.set(-1);
        if conn.closing.get().is_none() {
            conn.closing.set(Some(CloseReason::ClientClosed));
            self.metrics().closed(CloseReason::ClientClosed);
        }
        conn.detached_at.set(Some(self.clock_ms.get()));
        // Turn on per-subject tracking so the hand-over can deduplicate.
        conn.hwm.borrow_mut().get_or_insert_with(HashMap::new);
    }

    /// Owner side of a resume: removes the session and returns what the new connection needs.
    fn take_session(&self, session: &str, received: u64) -> Result<SessionState, TakeError> {
        let conn = self
            .conns
            .borrow()
            .values()
            .find(|c| &*c.session == session)
            .cloned()
            .ok_or(TakeError::Unknown)?;
        conn.spill_queue_to_log();
        // A session still waiting for a replay or catch-up (just resumed or subscribed with
        // `since`) has frames in flight to it that neither its log nor a cut would cover:
        // hand it over once they arrived.
        let waiting = conn.subs.borrow().values().any(|s| s.pending.get() != 0)
            || !conn.held.borrow().is_empty();
        if waiting {
            return Err(TakeError::Busy);
        }
        let frames = conn
            .log
            .borrow()
            .after(received)
            .ok_or(TakeError::Unknown)?;
        if conn.detached_at.get().is_none() {
            // Still attached (the old socket is not known dead yet): it is being replaced.
            conn.close(
                self.metrics(),
                CloseReason::ClientClosed,
                crate::ws::close::NORMAL,
                "session resumed elsewhere",
            );
        }
        let patterns = conn
            .subs
            .borrow()
            .values()
            .map(|s| (s.pattern.clone(), s.conflate.get()))
            .collect();
        let hwm = conn
            .hwm
            .borrow()
            .as_ref()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        // What this core has delivered from each owner, itself included (`deliver` records
        // its own frames too). Not `self.xseq`: with sync durability that also counts frames
        // accepted but still waiting for their fsync, which the catch-up would then skip.
        let cut: Vec<u64> = self.seen.iter().take(self.cores()).map(Cell::get).collect();
        self.unregister(&conn);
        Ok(SessionState {
            patterns,
            frames: frames.into_iter().map(|f| Arc::clone(&f)).collect(),
            hwm,
            cut,
            next_k: received + 1,
        })
    }

    /// Resumes `session` on `conn` (this core): the session's subscriptions are restored and
    /// every message after its `received`-th is delivered once, in order, then live ones, with
    /// nothing lost while it moves between cores. `on_adopt` runs first (the `ok` reply).
    pub async fn resume(
        self: &Rc<Self>,
        conn: &Rc<Conn>,
        session: &str,
        received: u64,
        on_adopt: impl FnOnce(),
    ) -> Result<(), ResumeError> {
        let owner = session
            .get(..2)
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .filter(|o| *o < self.cores() && session.len() == 18 && session != &*conn.session)
            .ok_or(ResumeError::Expired)?;
        /// How long a resume waits for a session that is itself still catching up.
        const BUSY_RETRIES: usize = 500;
        let mut tries = 0;
        let state = loop {
            let r = if owner == self.id {
                self.take_session(session, received)
            } else {
                let slot = Rc::new(Slot::default());
                let token = self.park(Waiter::Resume(slot.clone()));
                let msg = BusMsg::Resume {
                    session: session.into(),
                    received,
                    from: self.id,
                    token,
                };
                self.shared.bus.send(owner, msg);
                slot.wait().await
            };
            match r {
                Err(TakeError::Busy) if tries < BUSY_RETRIES => {
                    tries += 1;
                    monoio::time::sleep(Duration::from_millis(2)).await;
                }
                other => break other,
            }
        };
        let state = state.map_err(|_| ResumeError::Expired)?;
        if !self.conns.borrow().contains_key(&conn.id) || conn.closing().is_some() {
            // The new connection went away meanwhile: give the session back, detached and
            // under its old id, so the client's next attempt can still resume it exactly.
            if owner == self.id {
                self.restore(session, state);
            } else {
                self.shared.bus.send(
                    owner,
                    BusMsg::Restore {
                        session: session.into(),
                        state,
                    },
                );
            }
            return Err(ResumeError::Expired);
        }
        on_adopt();
        self.adopt(conn, state);
        Ok(())
    }

    /// Re-creates a handed-over session as a detached one under its old id (this core is the
    /// one its id names). Adopting it into a detached connection replays and catches up into
    /// the session log exactly as for a live one.
    fn restore(self: &Rc<Self>, session: &str, st: SessionState) {
        let conn = self.register_conn(true, false, Some(session.into()));
        conn.closing.set(Some(CloseReason::ClientClosed));
        conn.detached_at.set(Some(self.clock_ms.get()));
        conn.hwm.borrow_mut().get_or_insert_with(HashMap::new);
        self.adopt(&conn, st);
    }

    fn adopt(&self, conn: &Rc<Conn>, st: SessionState) {
        let m = self.metrics();
        *conn.log.borrow_mut() = SessionLog::new(self.cfg().session_retain, st.next_k);
        conn.next_k.set(st.next_k);
        // Track per-subject seq from here on; the old session's marks are merged only after its
        // replay went out (the replayed frames are at or below them).
        conn.hwm.borrow_mut().get_or_insert_with(HashMap::new);
        let others: u64 = (0..self.cores())
            .filter(|c| *c != self.id)
            .fold(0, |a, c| a | 1 << c);
        let grant = conn.grant();
        let mut subs = Vec::new();
        for (pattern, conflate) in &st.patterns {
            if let Some(Err(r)) = grant.as_ref().map(|g| g.check_subscribe(pattern)) {
                let msg = format!(
                    "subscription '{pattern}' not restored: {}",
                    r.message("subscribe")
                );
                conn.send_err(m, None, ErrorCode::Forbidden, &msg);
                continue;
            }
            let existing = conn.subs.borrow().get(&**pattern).cloned();
            let sub = match existing {
                Some(s) => s,
                None => self.add_sub(conn, pattern, *conflate),
            };
            sub.pending.set(sub.pending.get() | others);
            subs.push(sub);
        }
        self.cache.borrow_mut().clear();
        // What the old connection had been sent after `received`, then what this core owns and
        // broadcast after the cut, then each other owner's catch-up.
        self.push_frames(conn, st.frames);
        if let Some(hwm) = conn.hwm.borrow_mut().as_mut() {
            for (subject, seq) in st.hwm {
                let h = hwm.entry(subject).or_insert(0);
                *h = (*h).max(seq);
            }
        }
        let patterns: Vec<Box<str>> = subs.iter().map(|s| s.pattern.clone()).collect();
        let local = self.catch_up_frames(&patterns, st.cut[self.id]);
        self.push_frames(conn, local);
        for owner in (0..self.cores()).filter(|c| *c != self.id) {
            let token = self.park(Waiter::CatchUp {
                conn: conn.clone(),
                subs: subs.clone(),
            });
            let msg = BusMsg::CatchUp {
                patterns: patterns.clone(),
                after: st.cut[owner],
                from: self.id,
                token,
            };
            self.shared.bus.send(owner, msg);
        }
    }

    /// Owner side of a hand-over: retained frames of owned subjects matching any pattern that
    /// were broadcast after stream position `after`, in broadcast order.
    fn catch_up_frames(&self, patterns: &[Box<str>], after: u64) -> Vec<Arc<Frame>> {
        let owned = self.owned.borrow();
        let mut frames: Vec<Arc<Frame>> = owned
            .iter()
            .filter(|(subject, _)| patterns.iter().any(|p| crate::subject::matches(p, subject)))
            .flat_map(|(_, s)| s.after_xseq(after).cloned())
            .collect();
        frames.sort_by_key(|f| f.xseq());
        frames
    }

    fn push_frames(&self, conn: &Rc<Conn>, frames: Vec<Arc<Frame>>) {
        let m = self.metrics();
        let n = frames
            .into_iter()
            .filter(|f| conn.push_msg(m, &Rc::new(f.clone()), false))
            .count();
        metrics::add(&m.delivered, n as u64);
    }

    // ---- scheduled publishes ----------------------------------------------------------------

    /// Runs `op` on core `owner` (here when it is this core) and returns its answer.
    pub async fn call_owner(&self, owner: usize, op: OwnerOp) -> OwnerReply {
        if owner == self.id {
            return self.owner_op(op);
        }
        let slot = Rc::new(Slot::default());
        let token = self.park(Waiter::Call(slot.clone()));
        self.shared.bus.send(
            owner,
            BusMsg::Call {
                op,
                from: self.id,
                token,
            },
        );
        slot.wait().await
    }

    fn owner_op(&self, op: OwnerOp) -> OwnerReply {
        match op {
            OwnerOp::Schedule(s) => {
                let durable = self.shared.store.durability() != Durability::None;
                let copy = durable.then(|| s.clone());
                let r = self
                    .schedules
                    .borrow_mut()
                    .add(s)
                    .map(|n| crate::schedule::schedule_id(self.id, n));
                if let (Ok(id), Some(s)) = (&r, copy) {
                    self.shared.store.put_schedule(id, &s);
                }
                self.schedule_wake.notify();
                OwnerReply::Scheduled(r)
            }
            OwnerOp::Cancel { n, grant } => {
                let mut q = self.schedules.borrow_mut();
                let r = match q.get(n) {
                    None => Err(CancelError::NotFound),
                    Some(s) => match grant.map(|g| g.check_publish(&s.subject)) {
                        Some(Err(r)) => Err(CancelError::Forbidden(r)),
                        _ => q.remove(n).map(|_| ()).map_err(|_| CancelError::NotFound),
                    },
                };
                if r.is_ok() {
                    let id = crate::schedule::schedule_id(self.id, n);
                    self.shared.store.delete_schedule(&id);
                }
                OwnerReply::Cancelled(r)
            }
            OwnerOp::List { subject } => {
                let q = self.schedules.borrow();
                let mut out = Vec::with_capacity(128);
                out.extend_from_slice(b"{\"subject\":");
                serde_json::to_writer(&mut out, &*subject).expect("Vec write");
                out.extend_from_slice(b",\"scheduled\":[");
                for (i, (n, s)) in q.of_subject(&subject).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let id = crate::schedule::schedule_id(self.id, n);
                    out.extend_from_slice(
                        format!("{{\"schedule_id\":\"{id}\",\"at\":{},", s.at_ms).as_bytes(),
                    );
                    if let Some(m) = &s.msg_id {
                        out.extend_from_slice(b"\"msg_id\":");
                        serde_json::to_writer(&mut out, &**m).expect("Vec write");
                        out.push(b',');
                    }
                    out.extend_from_slice(b"\"data\":");
                    out.extend_from_slice(&s.data);
                    out.push(b'}');
                }
                out.extend_from_slice(b"]}");
                OwnerReply::Listed(out)
            }
        }
    }

    /// Fires scheduled publishes when due (one task per core, for the subjects it owns).
    pub async fn run_schedules(self: Rc<Self>) {
        /// Longest sleep between checks: bounds the effect of wall-clock jumps.
        const MAX_SLEEP: Duration = Duration::from_secs(1);
        while !self.shutting_down.get() {
            let now = now_us() / 1000;
            let due = self.schedules.borrow_mut().take_due(now);
            for (n, s) in due {
                if self.shared.cluster.is_some() {
                    self.publish(&s.subject, &s.data, s.msg_id.as_deref(), AckTo::Nobody);
                } else {
                    let id = s.msg_id.as_deref();
                    self.sequence(&s.subject, &s.data, id, AckTo::Nobody, Some(n));
                }
            }
            let wait = match self.schedules.borrow().next_due() {
                Some(at) => {
                    Duration::from_millis(at.saturating_sub(now_us() / 1000)).min(MAX_SLEEP)
                }
                None => MAX_SLEEP,
            };
            monoio::select! {
                _ = monoio::time::sleep(wait) => {}
                _ = self.schedule_wake.wait() => {}
            }
        }
    }

    // ---- the bus -------------------------------------------------------------------------

    /// Handles one message from another core.
    pub fn handle_bus(self: &Rc<Self>, msg: BusMsg) {
        match msg {
            BusMsg::Deliver { frame, from } => self.deliver(frame, from),
            BusMsg::Publish {
                subject,
                data,
                msg_id,
                from,
                token,
            } => {
                let to = AckTo::Core { core: from, token };
                self.sequence(&subject, &data, msg_id.as_deref(), to, None);
            }
            BusMsg::PubDone { token, result } => {
                let waiter = self.take_waiter(token);
                if let Some(Waiter::Pub(to)) = waiter {
                    self.answer(to, result);
                }
            }
            BusMsg::Durable { upto, ok } => self.durable(upto, ok),
            BusMsg::Replicated(msg) => self.replicated(msg),
            BusMsg::Fetched { token, result } => {
                let waiter = self.take_waiter(token);
                if let Some(Waiter::Deep(deep)) = waiter {
                    let range = match result {
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
                    };
                    self.finish_deep(deep, range);
                }
            }
            BusMsg::StoreRead { token, range } => {
                let waiter = self.take_waiter(token);
                if let Some(Waiter::Deep(deep)) = waiter {
                    self.finish_deep(deep, range);
                }
            }
            BusMsg::Replay {
                pattern,
                kind,
                from,
                token,
            } => {
                if let ReplayKind::Since(since) = kind {
                    if self.needs_store(&pattern, since) {
                        return self.read_store(Deep::Replay {
                            subject: pattern,
                            since,
                            from,
                            token,
                            tries: 0,
                        });
                    }
                }
                let replay = self.replay_owned(&pattern, &kind);
                self.answer_replay(from, token, replay);
            }
            BusMsg::ReplayDone {
                token,
                owner,
                replay,
            } => {
                let waiter = self.take_waiter(token);
                if let Some(Waiter::Replay { conn, sub, since }) = waiter {
                    sub.pending.set(sub.pending.get() & !(1 << owner));
                    if since {
                        let mut held = conn.held.borrow_mut();
                        if let Some(i) = held.iter().position(|s| *s == sub.pattern) {
                            held.swap_remove(i);
                        }
                    }
                    self.apply_replay(&conn, &sub, replay);
                }
            }
            BusMsg::History(req) => {
                if self.backed(&req.subject) {
                    return self.read_store(Deep::History(req));
                }
                let HistoryReq {
                    subject,
                    since,
                    limit,
                    from,
                    token,
                } = req;
                let body = self.history_body(&subject, since, limit, None);
                self.shared
                    .bus
                    .send(from, BusMsg::HistoryDone { token, body });
            }
            BusMsg::HistoryDone { token, body } => {
                if let Some(Waiter::History(slot)) = self.take_waiter(token) {
                    slot.fill(body);
                }
            }
            BusMsg::Resume {
                session,
                received,
                from,
                token,
            } => {
                let result = self.take_session(&session, received);
                self.shared.bus.send(from, BusMsg::Adopt { token, result });
            }
            BusMsg::Adopt { token, result } => {
                if let Some(Waiter::Resume(slot)) = self.take_waiter(token) {
                    slot.fill(result);
                }
            }
            BusMsg::CatchUp {
                patterns,
                after,
                from,
                token,
            } => {
                let frames = self.catch_up_frames(&patterns, after);
                self.shared.bus.send(
                    from,
                    BusMsg::CatchUpDone {
                        token,
                        owner: self.id,
                        frames,
                    },
                );
            }
            BusMsg::CatchUpDone {
                token,
                owner,
                frames,
            } => {
                if let Some(Waiter::CatchUp { conn, subs }) = self.take_waiter(token) {
                    for sub in &subs {
                        sub.pending.set(sub.pending.get() & !(1 << owner));
                    }
                    self.push_frames(&conn, frames);
                }
            }
            BusMsg::Call { op, from, token } => {
                let reply = self.owner_op(op);
                self.shared
                    .bus
                    .send(from, BusMsg::CallDone { token, reply });
            }
            BusMsg::CallDone { token, reply } => {
                if let Some(Waiter::Call(slot)) = self.take_waiter(token) {
                    slot.fill(reply);
                }
            }
            BusMsg::Restore { session, state } => self.restore(&session, state),
            BusMsg::Shutdown => self.begin_shutdown(),
        }
    }

    /// Drains the bus forever: one batch per loop turn, then yields to socket I/O.
    pub async fn run_bus(self: Rc<Self>) {
        let doorbell = self.shared.bus.doorbell(self.id).clone();
        loop {
            doorbell.wait().await;
            let mut n = 0;
            while let Ok(msg) = self.rx.try_recv() {
                self.handle_bus(msg);
                n += 1;
                if n == BUS_BATCH {
                    doorbell.ring();
                    break;
                }
            }
            if n == BUS_BATCH {
                yield_now().await;
            }
        }
    }

    /// Starts shutdown on this core: every connection gets close 1001.
    pub fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        for c in conns {
            if c.detached_at.get().is_some() {
                self.unregister(&c);
            } else {
                c.close(
                    self.metrics(),
                    CloseReason::Shutdown,
                    crate::ws::close::GOING_AWAY,
                    "server shutting down",
                );
            }
        }
        self.shutdown.notify();
    }

    /// Takes one new connection from this core's share of `--max-accept-per-sec` (one second of
    /// burst); false when over the rate.
    pub fn admit_connection(&self) -> bool {
        let rate = self.cfg().max_accept_per_sec as u64;
        if rate == 0 {
            return true;
        }
        let share = rate.div_ceil(self.cores() as u64);
        let cap = share * 1000;
        let now = self.precise_ms();
        let (tokens, last) = self.accepts.get();
        let tokens = if last == 0 {
            cap
        } else {
            (tokens + now.saturating_sub(last) * share).min(cap)
        };
        if tokens >= 1000 {
            self.accepts.set((tokens - 1000, now));
            true
        } else {
            self.accepts.set((tokens, now));
            false
        }
    }

    /// Milliseconds since this core started, read now (for rate limiting).
    pub fn precise_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Core clock: ms since this core started, advanced by [`Core::sweep`].
    pub fn now_ms(&self) -> u64 {
        self.clock_ms.get()
    }

    /// Periodic housekeeping (called every tick by the sweeper task): pings silent WebSockets,
    /// closes those that stay silent (half-open peers), and shuts down sockets whose close did
    /// not flush within [`CLOSE_GRACE_MS`] (a peer that stopped reading).
    pub fn sweep(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.clock_ms.set(now);
        CLOCK_MS.with(|c| c.set(now));
        let interval = self.cfg().ping_interval_ms.max(1);
        let unix_secs = now_us() / 1_000_000;
        let m = self.metrics();
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        let ttl_ms = self.cfg().session_ttl.saturating_mul(1000);
        let heartbeat_ms = self.cfg().sse_heartbeat_secs.max(1).saturating_mul(1000);
        for c in conns {
            if let Some(at) = c.detached_at.get() {
                if now.saturating_sub(at) >= ttl_ms {
                    self.unregister(&c);
                }
                continue;
            }
            if c.closing.get().is_some() {
                if now.saturating_sub(c.closed_at.get()) >= CLOSE_GRACE_MS {
                    c.force_shutdown();
                }
                continue;
            }
            if c.sse && now.saturating_sub(c.last_rx.get()) >= heartbeat_ms {
                // A comment line keeps proxies from closing an idle stream.
                c.last_rx.set(now);
                c.send_raw(m, b":\n\n".to_vec().into());
            }
            if !c.websocket && !c.sse {
                continue;
            }
            if c.auth_deadline.get() != 0 && now >= c.auth_deadline.get() {
                c.send_err(
                    m,
                    None,
                    ErrorCode::Unauthorized,
                    "authentication timeout: send an 'auth' op first",
                );
                c.close(
                    m,
                    CloseReason::Unauthorized,
                    crate::ws::close::UNAUTHORIZED,
                    "unauthorized",
                );
                continue;
            }
            let expired = c
                .grant
                .borrow()
                .as_ref()
                .is_some_and(|g| g.exp <= unix_secs);
            if expired {
                c.send_err(m, None, ErrorCode::Unauthorized, "token expired");
                c.close(
                    m,
                    CloseReason::Unauthorized,
                    crate::ws::close::UNAUTHORIZED,
                    "token expired",
                );
                continue;
            }
            let silent = now.saturating_sub(c.last_rx.get());
            if c.ping_sent.get() && silent >= 2 * interval {
                c.close(
                    m,
                    CloseReason::Timeout,
                    crate::ws::close::POLICY,
                    "no response to ping",
                );
            } else if !c.ping_sent.get() && silent >= interval {
                c.ping_sent.set(true);
                let mut f = Vec::with_capacity(2);
                crate::ws::encode_frame(&mut f, crate::ws::OP_PING, b"");
                c.send_raw(m, f.into());
            }
        }
    }

    // ---- buffer pools --------------------------------------------------------------------

    /// Takes a write batch from the pool.
    pub fn take_batch(&self) -> WriteBatch {
        self.batches.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a write batch to the pool.
    pub fn put_batch(&self, mut b: WriteBatch) {
        b.clear();
        let mut pool = self.batches.borrow_mut();
        if pool.len() < BATCH_POOL {
            pool.push(b);
        }
    }

    /// Takes an empty read buffer of [`READ_BUF_BYTES`] capacity.
    pub fn take_read_buf(&self) -> Vec<u8> {
        self.read_bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(READ_BUF_BYTES))
    }

    /// Returns a read buffer to the pool.
    pub fn put_read_buf(&self, mut b: Vec<u8>) {
        b.clear();
        let mut pool = self.read_bufs.borrow_mut();
        if pool.len() < READ_POOL && b.capacity() == READ_BUF_BYTES {
            pool.push(b);
        }
    }
}

fn reply_pub(m: &CoreMetrics, conn: &Conn, id: Option<&str>, result: PubResult) {
    match result {
        Ok(ack) => {
            let mut b = Vec::with_capacity(80);
            proto::ok_pub(&mut b, id, ack.seq, ack.ts, ack.duplicate);
            conn.send_json(m, &b);
        }
        Err(e) => conn.send_err(m, id, ErrorCode::Overloaded, e.message()),
    }
}

/// Yields once to the scheduler so other tasks (socket I/O) run.
pub async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
