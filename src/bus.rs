//! The cross-core bus: the only way state crosses cores.
//!
//! Owns one crossbeam channel per core (any core may send; only the owning core receives) and a
//! doorbell per core that wakes its event loop from another thread (monoio's `sync` feature makes
//! the waker thread-safe). Messages are moves of owned data or `Arc<Frame>` references, never
//! copies of message bodies per subscriber. Per (sender, receiver) pair the channel is FIFO, which
//! is what keeps each subject's messages in seq order on every core.

use crate::frame::Frame;
use crate::owner::Replay;
use crate::proto::{PubAck, PubError, PubResult};
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

/// What a replay request asks the owner for.
#[derive(Debug, Clone)]
pub enum ReplayKind {
    /// Retained messages of one concrete subject with seq > N.
    Since(u64),
    /// The latest retained message of every owned subject matching the pattern.
    Snapshot,
}

/// A message between cores. `token` values are chosen by the requesting core and returned
/// unchanged so it can find the waiting connection or request.
pub enum BusMsg {
    /// Sequence this publish (sent to the subject's owner).
    Publish {
        /// Concrete subject.
        subject: Box<str>,
        /// Raw JSON data.
        data: Box<[u8]>,
        /// De-duplication id.
        msg_id: Option<Box<str>>,
        /// Requesting core.
        from: usize,
        /// Request token.
        token: u64,
    },
    /// The owner's answer to `Publish`.
    PubDone {
        /// Request token.
        token: u64,
        /// The outcome.
        result: PubResult,
    },
    /// From the storage thread (sync durability): this core's appends up to ticket `upto`
    /// are on disk (`ok`), or failed to be written.
    Durable {
        /// Highest ticket of the group.
        upto: u64,
        /// False when the group's commit failed.
        ok: bool,
    },
    /// From the storage thread: the answer to a deep read.
    StoreRead {
        /// Request token.
        token: u64,
        /// The stored messages.
        range: crate::store::StoredRange,
    },
    /// A sequenced message from its owner core, for local subscribers.
    Deliver {
        /// The shared frame.
        frame: Arc<Frame>,
        /// Owner core.
        from: usize,
    },
    /// Ask an owner for retained messages (sub `since` / `snapshot`).
    Replay {
        /// Subject (since) or pattern (snapshot).
        pattern: Box<str>,
        /// What to replay.
        kind: ReplayKind,
        /// Requesting core.
        from: usize,
        /// Request token.
        token: u64,
    },
    /// The owner's answer to `Replay`.
    ReplayDone {
        /// Request token.
        token: u64,
        /// Owner core that answered.
        owner: usize,
        /// Gap and frames.
        replay: Replay,
    },
    /// Ask the owner for `/history/{subject}`.
    History(HistoryReq),
    /// The owner's answer to `History`: the complete JSON body.
    HistoryDone {
        /// Request token.
        token: u64,
        /// JSON body.
        body: Vec<u8>,
    },
    /// Hand over a session to the requesting core (sent to the session's core).
    Resume {
        /// Session id.
        session: Box<str>,
        /// `msg` ops the client received on that session.
        received: u64,
        /// Requesting core.
        from: usize,
        /// Request token.
        token: u64,
    },
    /// The session's state, or `Err` when it is unknown or expired.
    Adopt {
        /// Request token.
        token: u64,
        /// The session.
        result: Result<SessionState, crate::shard::TakeError>,
    },
    /// Ask an owner for frames of matching subjects it broadcast after a stream position.
    CatchUp {
        /// The resumed session's patterns.
        patterns: Vec<Box<str>>,
        /// Broadcast position (`Frame::xseq`) already covered.
        after: u64,
        /// Requesting core.
        from: usize,
        /// Request token.
        token: u64,
    },
    /// The owner's answer to `CatchUp`, in broadcast order.
    CatchUpDone {
        /// Request token.
        token: u64,
        /// Owner core that answered.
        owner: usize,
        /// Frames after the position.
        frames: Vec<Arc<Frame>>,
    },
    /// A request to a subject's owner core (scheduled publishes).
    Call {
        /// What to do.
        op: OwnerOp,
        /// Requesting core.
        from: usize,
        /// Request token.
        token: u64,
    },
    /// The owner's answer to `Call`.
    CallDone {
        /// Request token.
        token: u64,
        /// The answer.
        reply: OwnerReply,
    },
    /// A handed-over session whose new connection died: keep it detached under its old id
    /// (sent to the core that id names).
    Restore {
        /// The old session id.
        session: Box<str>,
        /// The session.
        state: SessionState,
    },
    /// Cluster mode: a message consumed from the JetStream stream (sent to its owner core).
    Replicated(crate::cluster::Replicated),
    /// Cluster mode: the answer to a fetch from the stream.
    Fetched {
        /// Request token.
        token: u64,
        /// The messages, or why not.
        result: Result<crate::cluster::Fetched, crate::cluster::ClusterError>,
    },
    /// Stop accepting, close connections with 1001, finish.
    Shutdown,
}

/// Cluster mode: the bridge thread's answers, delivered over the bus (replicated messages to
/// the subject's owner core, answers to the core that asked).
pub struct BusSink(pub Arc<Bus>);

impl crate::cluster::ClusterSink for BusSink {
    fn replicated(&self, msg: crate::cluster::Replicated) {
        let owner = owner_of(&msg.subject, self.0.cores());
        self.0.send(owner, BusMsg::Replicated(msg));
    }

    fn published(
        &self,
        from: usize,
        token: u64,
        result: Result<PubAck, crate::cluster::ClusterError>,
    ) {
        use crate::cluster::ClusterError;
        let result = result.map_err(|e| match e {
            ClusterError::Unavailable => PubError::ClusterUnavailable,
            ClusterError::Conflict => PubError::ClusterConflict,
            ClusterError::Rejected => PubError::ClusterRejected,
        });
        self.0.send(from, BusMsg::PubDone { token, result });
    }

    fn fetched(
        &self,
        from: usize,
        token: u64,
        result: Result<crate::cluster::Fetched, crate::cluster::ClusterError>,
    ) {
        self.0.send(from, BusMsg::Fetched { token, result });
    }
}

impl crate::store::StoreSink for BusSink {
    fn durable(&self, core: usize, upto: u64, ok: bool) {
        self.0.send(core, BusMsg::Durable { upto, ok });
    }

    fn read(&self, core: usize, token: u64, range: crate::store::StoredRange) {
        self.0.send(core, BusMsg::StoreRead { token, range });
    }
}

/// A `/history/{subject}` request to the subject's owner core.
#[derive(Debug)]
pub struct HistoryReq {
    /// Concrete subject.
    pub subject: Box<str>,
    /// Messages with seq > since.
    pub since: u64,
    /// At most this many.
    pub limit: usize,
    /// Requesting core.
    pub from: usize,
    /// Request token.
    pub token: u64,
}

/// Requests served by a subject's owner core.
#[derive(Debug)]
pub enum OwnerOp {
    /// Publish at `at_ms` (ms since the Unix epoch).
    Schedule(crate::schedule::Scheduled),
    /// Cancel schedule `n` if `grant` may publish its subject (`None`: auth off).
    Cancel {
        /// Core-local schedule number.
        n: u64,
        /// The caller's grant.
        grant: Option<Arc<crate::auth::Grant>>,
    },
    /// List pending schedules of a subject (JSON body).
    List {
        /// Concrete subject.
        subject: Box<str>,
    },
}

/// Answers of the owner core.
#[derive(Debug)]
pub enum OwnerReply {
    /// The schedule id, or why not.
    Scheduled(Result<String, crate::schedule::ScheduleError>),
    /// Cancelled, or why not.
    Cancelled(Result<(), CancelError>),
    /// `GET /schedule` body.
    Listed(Vec<u8>),
}

/// Why a cancel failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelError {
    /// No such pending schedule.
    NotFound,
    /// The caller may not publish its subject.
    Forbidden(crate::auth::Refusal),
}

/// A session moving between cores.
#[derive(Debug)]
pub struct SessionState {
    /// Subscriptions: pattern and `conflate`.
    pub patterns: Vec<(Box<str>, bool)>,
    /// Messages sent to the session after the client's `received`, in order.
    pub frames: Vec<Arc<Frame>>,
    /// Highest seq per subject the session was sent.
    pub hwm: Vec<(Box<str>, u64)>,
    /// Per owner core, the broadcast position up to which the old core handled deliveries.
    pub cut: Vec<u64>,
    /// Index of the first message after `received`.
    pub next_k: u64,
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
pub struct Bus {
    senders: Vec<Sender<BusMsg>>,
    doorbells: Vec<Arc<Doorbell>>,
}

impl Bus {
    /// A bus for `cores` cores, and each core's receiver.
    ///
    /// The channels are unbounded on purpose: a core must never block on another (two cores
    /// blocked on each other's full queue would deadlock). What bounds them is upstream: each
    /// core reads a bounded batch per loop turn and every connection's inbound rate is bounded.
    pub fn new(cores: usize) -> (Arc<Bus>, Vec<Receiver<BusMsg>>) {
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
    pub fn send(&self, core: usize, msg: BusMsg) {
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
