//! `Core`: one core's shard of the node, and the event loop that runs it.
//!
//! A core owns, for itself only, a set of rooms, each a type that owns its state:
//!
//! ```text
//!  sessions   Sessions     every connection's session on this core, kept after a disconnect
//!  client     Client       the core-visible state of one connection (queue, log, grant, rate)
//!  flush_list FlushList    the clients with output, for the transport's flusher
//!  subscription             one pattern of one connection, shared with the trie
//!  fanout     Fanout       subscription trie + bounded match cache; delivery of each frame
//!  sequencer  Sequencer    subjects this core owns: seq, history ring, dedup, fsync queue
//!  scheduler  Scheduler    scheduled publishes of the subjects this core owns
//!  pending    Pending      requests in flight to other cores, the store or the cluster
//!  acks       Batch        publish answers: one `pub`'s, and a batch's collector (in order)
//!  msg        CoreMsg      what crosses cores: Deliver, Request/Reply, notices, Batch
//!  outbox     Outbox       this turn's messages to other cores, one batch per destination
//!  node       Node         what all cores share (config, bus, metrics, store, cluster)
//!  settings   LiveSettings this core's copy of the options and verifier in force (reloadable)
//!  drain                   how a node leaves: drain (rolling deploys), then shutdown
//! ```
//!
//! (and `access`, `rate`, `signal`: small parts of those). This file is the dispatcher
//! between them: the bus loop, the one request/answer path (`ask` -> `serve` -> `answer` ->
//! `resolve` -> `complete`: one shape for every exchange). [`api`] holds what the transport
//! asks of its core, `publishing` the publish path (route, sequence, broadcast, deliver),
//! [`sweep`] its periodic housekeeping, [`drain`] its end, [`connz`] the connection list of
//! `/connz`.
//!
//! Everything here runs on the core's own thread (`Rc`/`RefCell`, no locks; no `RefCell`
//! borrow is held across a call into another room); other cores are reached only through the
//! bus. The core never touches a socket: a client with output puts itself on the
//! [`FlushList`], which the transport drains.

pub mod access;
pub mod acks;
pub mod api;
pub mod backlog;
pub mod client;
pub mod connz;
pub mod drain;
pub mod fanout;
pub mod flush_list;
pub mod msg;
pub mod node;
pub mod outbox;
pub mod pending;
mod publishing;
pub mod rate;
pub mod scheduler;
pub mod sequencer;
pub mod sessions;
pub mod settings;
pub mod signal;
pub mod subscription;
pub mod sweep;

pub use client::{Client, ConnKind};
pub use flush_list::FlushList;
pub use msg::{CoreBus, CoreMsg, Reply, Request};
pub use node::Node;
pub use rate::{InboundLimit, PublishLimit, RateBucket, RateVerdict};
pub use sessions::{ResumeError, SessionState, TakeError};
pub use subscription::{SubError, Subscription};

use crate::cluster::Fetch;
use crate::config::Config;
use crate::metrics::CoreMetrics;
use crate::owner::SubjectLimits;
use crate::store::{ReadReq, StoredRange};
use crossbeam_channel::Receiver;
use fanout::Fanout;
use outbox::Outbox;
use pending::{Pending, Slot};
use scheduler::Scheduler;
use sequencer::{Backfill, Finished, Sequencer};
use sessions::Sessions;
use signal::LocalNotify;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bus messages handled per loop turn before the core yields to socket I/O.
pub const BUS_BATCH: usize = 4096;

/// How long a connection may take to flush its close frame before its socket is shut down.
pub const CLOSE_GRACE_MS: u64 = 2_000;

/// Period of the sweep (pings, half-open detection, close deadlines, session expiry).
pub const SWEEP_TICK: Duration = Duration::from_millis(250);

/// The token of a request nobody waits for (a scheduled publish firing in cluster mode):
/// [`Pending`] never hands it out, so its answer is dropped.
const NOBODY: u64 = 0;

/// Who waits on this core for an answer.
enum Waiter {
    /// A WebSocket `pub`: the `ok` (or `err`) goes to the client.
    Ack {
        client: Rc<Client>,
        id: Option<Box<str>>,
        /// Its place among the connection's publish replies ([`acks::AckOrder`]).
        ticket: u64,
    },
    /// An `async` caller on this core (an HTTP endpoint, a resume, the demo feed).
    Await(Rc<Slot<Reply>>),
    /// Message `index` of a batch (`pubs`, or an array `POST /publish`).
    Batch {
        batch: Rc<acks::Batch>,
        index: usize,
    },
    /// A subscription's replay from one owner (`since`: the subject is held meanwhile).
    Replay {
        client: Rc<Client>,
        sub: Rc<Subscription>,
        since: bool,
    },
    /// A resumed session's catch-up from one owner.
    CatchUp {
        client: Rc<Client>,
        subs: Vec<Rc<Subscription>>,
    },
    /// Owner side: an answer waiting for stored messages older than the ring (boxed: rare,
    /// and it holds a reply address, which may hold a waiter).
    Backfill(Box<Backfill<ReplyTo>>),
}

/// Where an answer goes.
enum ReplyTo {
    /// Another core, as a [`CoreMsg::Reply`].
    Core { core: usize, token: u64 },
    /// A waiter on this core.
    Local(Waiter),
    /// Nobody (a scheduled publish firing).
    Nobody,
}

/// One core's shard and event-loop state.
pub struct Core {
    /// This core's index.
    pub id: usize,
    /// Node-wide shared state.
    pub node: Arc<Node>,
    rx: Receiver<CoreMsg>,
    sessions: RefCell<Sessions>,
    fanout: RefCell<Fanout>,
    sequencer: RefCell<Sequencer<ReplyTo>>,
    scheduler: RefCell<Scheduler>,
    pending: RefCell<Pending<Waiter>>,
    outbox: Outbox,
    flush: Rc<FlushList>,
    live: settings::LiveSettings,
    /// Notified when shutdown begins (accept loop and connections watch it).
    pub shutdown: LocalNotify,
    shutting_down: Cell<bool>,
    /// Set when this core began draining ([`drain`]): core-local, so that every decision on
    /// this core (refuse an upgrade, close a new connection) agrees with its own drain.
    draining: Cell<bool>,
    clock_ms: Cell<u64>,
    started: Instant,
}

impl Core {
    /// Builds core `id`'s state from what the store recovered for it.
    pub fn new(id: usize, node: Arc<Node>, rx: Receiver<CoreMsg>) -> Rc<Core> {
        let cfg = &node.cfg;
        let limits = SubjectLimits {
            history: cfg.history,
            dedup_ids: cfg.dedup_window,
            dedup_ttl: Duration::from_secs(cfg.dedup_secs),
        };
        let store = node.store.clone();
        let mut recovered = store.recover(id, node.cores(), cfg.history, cfg.dedup_window);
        let schedule_share = cfg.max_schedule_bytes / node.cores();
        let scheduler = Scheduler::new(id, store.clone(), &mut recovered, schedule_share);
        let budgets = sequencer::Budgets {
            max_history_bytes: cfg.max_history_bytes / node.cores(),
            max_subjects: cfg.max_subjects.div_ceil(node.cores()),
            subject_ttl: (cfg.subject_ttl > 0).then(|| Duration::from_secs(cfg.subject_ttl)),
        };
        let sequencer = Sequencer::new(id, limits, store, node.has_store(), recovered.subjects)
            .with_budgets(budgets);
        let live = settings::LiveSettings::new(&node.settings());
        Rc::new(Core {
            id,
            rx,
            live,
            sessions: RefCell::default(),
            fanout: RefCell::default(),
            sequencer: RefCell::new(sequencer),
            scheduler: RefCell::new(scheduler),
            pending: RefCell::default(),
            outbox: Outbox::new(node.cores()),
            flush: Rc::default(),
            shutdown: LocalNotify::default(),
            shutting_down: Cell::new(false),
            draining: Cell::new(false),
            clock_ms: Cell::new(0),
            started: Instant::now(),
            node,
        })
    }

    /// This core's counters.
    #[inline]
    pub fn metrics(&self) -> &CoreMetrics {
        &self.node.metrics[self.id]
    }

    /// The configuration in force, for one operation (a reload replaces it for operations
    /// that start later; see [`settings`]).
    #[inline]
    pub fn cfg(&self) -> Rc<Config> {
        self.live.cfg()
    }

    /// The token verifier in force (`None`: auth is off), for one token check.
    pub fn verifier(&self) -> Option<Rc<crate::auth::Verifier>> {
        self.live.verifier()
    }

    /// True when auth is on.
    pub fn auth_on(&self) -> bool {
        self.live.auth_on()
    }

    /// Number of cores in the node.
    pub fn cores(&self) -> usize {
        self.node.cores()
    }

    /// True once shutdown began on this core.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Sessions registered on this core (connected, or retained for a resume).
    pub fn connection_count(&self) -> usize {
        self.sessions.borrow().len()
    }

    /// The clients waiting for their writer (drained by the transport's flusher).
    pub fn flush_list(&self) -> &Rc<FlushList> {
        &self.flush
    }

    /// Milliseconds since this core started, read now (for rate limiting).
    pub fn precise_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Core clock: ms since this core started, advanced by [`Core::sweep`].
    pub fn now_ms(&self) -> u64 {
        self.clock_ms.get()
    }

    // ---- the event loop ---------------------------------------------------------------------

    /// Drains the bus forever: one batch per loop turn, then yields to socket I/O.
    pub async fn run_bus(self: Rc<Self>) {
        let doorbell = self.node.bus.doorbell(self.id).clone();
        loop {
            doorbell.wait().await;
            let mut n = 0;
            while let Ok(msg) = self.rx.try_recv() {
                n += self.handle(msg);
                if n >= BUS_BATCH {
                    doorbell.ring();
                    break;
                }
            }
            if n >= BUS_BATCH {
                signal::yield_now().await;
            }
        }
    }

    /// Sends what this core queued for other cores, once the loop turn's ready tasks have run
    /// (see [`outbox`]), forever.
    pub async fn run_outbox(self: Rc<Self>) {
        loop {
            self.outbox.wait().await;
            self.flush_outbox();
        }
    }

    /// Sends what this core queued for other cores now. Called before anything this core did
    /// becomes visible on a socket (the flusher's pass, a writer's write, an HTTP answer): an
    /// ack must never reach a client before the frames it acknowledges reached the other
    /// cores, or a client that publishes after it could see its next message delivered first.
    pub fn flush_outbox(&self) {
        self.outbox.flush(&self.node.bus);
    }

    /// Queues `msg` for another core (it leaves with the turn's batch for that core).
    fn send(&self, core: usize, msg: CoreMsg) {
        self.outbox.push(&self.node.bus, core, msg);
    }

    /// Sweeps every [`SWEEP_TICK`], forever.
    pub async fn run_sweeper(self: Rc<Self>) {
        loop {
            monoio::time::sleep(SWEEP_TICK).await;
            self.sweep();
            self.sweep_subjects();
        }
    }

    /// Fires scheduled publishes when due (one task per core, for the subjects it owns).
    pub async fn run_schedules(self: Rc<Self>) {
        /// Longest sleep between checks: bounds the effect of wall-clock jumps.
        const MAX_SLEEP: Duration = Duration::from_secs(1);
        let wake = self.scheduler.borrow().wake();
        while !self.shutting_down.get() {
            let due = self.scheduler.borrow_mut().take_due(crate::os::now_ms());
            self.count_schedule_bytes();
            for (id, s) in due {
                let msg_id = s.msg_id.as_deref();
                match &self.node.cluster {
                    Some(b) => b.publish(&s.subject, &s.data, msg_id, self.id, NOBODY),
                    None => self.sequence(&s.subject, &s.data, msg_id, Some(&id), ReplyTo::Nobody),
                }
            }
            let next = self.scheduler.borrow().next_due();
            let wait = next.map_or(MAX_SLEEP, |at| {
                Duration::from_millis(at.saturating_sub(crate::os::now_ms())).min(MAX_SLEEP)
            });
            monoio::select! {
                _ = monoio::time::sleep(wait) => {}
                _ = wake.wait() => {}
            }
        }
    }

    /// Handles one message from another core (or from the store or the cluster bridge); how
    /// many messages that was (a batch counts its own).
    pub fn handle(&self, msg: CoreMsg) -> usize {
        match msg {
            CoreMsg::Batch(batch) => {
                let n = batch.len();
                for msg in batch {
                    self.handle(msg);
                }
                return n;
            }
            CoreMsg::Deliver { frame, from } => self.deliver(frame, from),
            CoreMsg::Request { from, token, req } => {
                self.serve(req, ReplyTo::Core { core: from, token })
            }
            CoreMsg::Reply { token, reply } => self.resolve(token, reply),
            CoreMsg::Relay { to, token, reply } => {
                self.answer(ReplyTo::Core { core: to, token }, reply)
            }
            CoreMsg::Durable { upto, ok } => {
                let ready = self.sequencer.borrow_mut().durable(upto, ok);
                for r in ready {
                    self.finish_publish(r);
                }
            }
            CoreMsg::Replicated(msg) => {
                let frame = self.sequencer.borrow_mut().replicated(self.metrics(), &msg);
                if let Some(frame) = frame {
                    self.broadcast(frame);
                }
            }
            CoreMsg::Restore { session, state } => self.restore(&session, *state),
            CoreMsg::Reload(settings) => {
                self.live.install(&settings);
                let installed = &self.node.settings_installed[self.id];
                installed.store(settings.generation, std::sync::atomic::Ordering::Release);
            }
            CoreMsg::Drain => self.begin_drain(),
            CoreMsg::Shutdown => self.begin_shutdown(),
        }
        1
    }

    // ---- requests and answers ---------------------------------------------------------------

    /// Asks core `owner` (this one included) to serve `req`; `w` gets the answer.
    fn ask(&self, owner: usize, req: Request, w: Waiter) {
        if owner == self.id {
            return self.serve(req, ReplyTo::Local(w));
        }
        let token = self.pending.borrow_mut().park(w);
        let msg = CoreMsg::Request {
            from: self.id,
            token,
            req,
        };
        self.send(owner, msg);
    }

    /// [`Core::ask`] for an `async` caller: waits for the answer.
    async fn call(&self, owner: usize, req: Request) -> Reply {
        let slot = Rc::new(Slot::default());
        self.ask(owner, req, Waiter::Await(slot.clone()));
        slot.wait().await
    }

    /// Serves a request as its owner; every request kind is answered with its reply kind,
    /// now or (store reads, fsyncs) later.
    fn serve(&self, req: Request, to: ReplyTo) {
        match req {
            Request::Publish {
                subject,
                data,
                msg_id,
            } => self.sequence(&subject, &data, msg_id.as_deref(), None, to),
            Request::Replay { pattern, kind } => {
                if let sequencer::ReplayKind::Since(since) = kind {
                    if self.sequencer.borrow().replay_needs_store(&pattern, since) {
                        let tries = 0;
                        let subject = pattern;
                        return self.backfill(Backfill::Replay {
                            subject,
                            since,
                            to,
                            tries,
                        });
                    }
                }
                let replay = self.sequencer.borrow().replay(&pattern, &kind);
                let owner = self.id;
                self.answer(to, Reply::Replayed { owner, replay });
            }
            Request::History {
                subject,
                since,
                limit,
            } => {
                if self.sequencer.borrow().history_needs_store(&subject) {
                    let backfill = Backfill::History {
                        subject,
                        since,
                        limit,
                        to,
                    };
                    return self.backfill(backfill);
                }
                let body = self
                    .sequencer
                    .borrow()
                    .history(&subject, since, limit, None);
                self.answer(to, Reply::History(body));
            }
            Request::TakeSession {
                session,
                received,
                grant,
            } => {
                let r = self.take_session(&session, received, grant.as_deref());
                self.answer(to, Reply::Session(r));
            }
            Request::CatchUp { patterns, after } => {
                let frames = self.sequencer.borrow().catch_up(&patterns, after);
                let owner = self.id;
                self.answer(to, Reply::CaughtUp { owner, frames });
            }
            Request::Schedule(op) => {
                let r = self.scheduler.borrow_mut().apply(op);
                self.count_schedule_bytes();
                self.answer(to, Reply::Schedule(r));
            }
            Request::Connz(q) => self.answer(to, Reply::Connz(self.connz_part(&q))),
        }
    }

    /// Sends an answer where it goes.
    fn answer(&self, to: ReplyTo, reply: Reply) {
        match to {
            ReplyTo::Core { core, token } if core == self.id => self.resolve(token, reply),
            ReplyTo::Core { core, token } => self.send(core, CoreMsg::Reply { token, reply }),
            ReplyTo::Local(w) => self.complete(w, reply),
            ReplyTo::Nobody => {}
        }
    }

    /// The answer to a request this core made: its waiter, parked under `token`, gets it (an
    /// unknown token, [`NOBODY`]'s, is dropped).
    fn resolve(&self, token: u64, reply: Reply) {
        let waiter = self.pending.borrow_mut().take(token);
        if let Some(w) = waiter {
            self.complete(w, reply);
        }
    }

    /// Gives a waiter on this core its answer.
    fn complete(&self, w: Waiter, reply: Reply) {
        let m = self.metrics();
        match (w, reply) {
            (Waiter::Await(slot), reply) => slot.fill(reply),
            (Waiter::Ack { client, id, ticket }, Reply::Published(result)) => {
                acks::reply_pub(m, &client, id.as_deref(), ticket, result)
            }
            (Waiter::Batch { batch, index }, Reply::Published(result)) => {
                batch.fill(m, index, result)
            }
            (Waiter::Replay { client, sub, since }, Reply::Replayed { owner, replay }) => {
                sub.arrived(owner);
                if since {
                    client.release(&sub.pattern);
                }
                self.apply_replay(&client, &sub, replay);
            }
            (Waiter::CatchUp { client, subs }, Reply::CaughtUp { owner, frames }) => {
                for sub in &subs {
                    sub.arrived(owner);
                }
                self.push_frames(&client, frames);
            }
            (Waiter::Backfill(backfill), Reply::Stored(range)) => {
                self.finish_backfill(*backfill, range)
            }
            (Waiter::Backfill(backfill), Reply::Fetched(result)) => {
                self.finish_backfill(*backfill, sequencer::fetched_range(result))
            }
            (_, reply) => {
                // Every request kind is answered with its own reply kind (see `serve`).
                tracing::error!(core = self.id, ?reply, "answer of the wrong kind; dropped");
            }
        }
    }

    // ---- history older than the ring --------------------------------------------------------

    /// Owner side: reads the part of `backfill` older than the ring, from the store (or, in
    /// cluster mode, the stream).
    fn backfill(&self, backfill: Backfill<ReplyTo>) {
        let plan = self.sequencer.borrow().read_plan(&backfill);
        let token = self
            .pending
            .borrow_mut()
            .park(Waiter::Backfill(Box::new(backfill)));
        if let Some(bridge) = &self.node.cluster {
            // Cluster mode: the stream is the store. Ask for exactly the hole below the ring.
            let limit = plan
                .limit
                .min(plan.before.saturating_sub(plan.after + 1) as usize);
            let what = Fetch {
                subject: plan.subject,
                since: plan.after,
                limit,
            };
            return bridge.fetch(what, self.id, token);
        }
        self.node.store.read(ReadReq {
            subject: plan.subject,
            after: plan.after,
            before: plan.before,
            limit: plan.limit,
            newest: plan.newest,
            core: self.id,
            token,
        });
    }

    /// Owner side: the store answered a backfill read; finish the replay or history request.
    fn finish_backfill(&self, backfill: Backfill<ReplyTo>, range: StoredRange) {
        let finished = self.sequencer.borrow().finish(backfill, range);
        match finished {
            Finished::Replay(to, replay) => {
                let owner = self.id;
                self.answer(to, Reply::Replayed { owner, replay })
            }
            Finished::History(to, body) => self.answer(to, Reply::History(body)),
            Finished::ReadAgain(backfill) => self.backfill(backfill),
        }
    }
}
