//! The cores' vocabulary: every message that crosses cores (or reaches a core from the store
//! or the cluster bridge) is a [`CoreMsg`].
//!
//! Three kinds: the hot-path delivery of a sequenced frame; a [`Request`] to another core,
//! answered by a [`Reply`] carrying the same token back (one shape for every exchange: the
//! requesting core parks its waiter under the token, the serving core answers once); and
//! one-way notices (durable, replicated, restore, reload, drain, shutdown). Messages move owned data or
//! `Arc` references, never copies of message bodies per subscriber.

use super::scheduler::{ScheduleOp, ScheduleReply};
use super::sequencer::ReplayKind;
use super::sessions::{SessionState, TakeError};
use crate::auth::Grant;
use crate::bus::Bus;
use crate::cluster::{ClusterError, Fetched, Replicated};
use crate::connz::{ConnzPart, ConnzQuery};
use crate::frame::Frame;
use crate::owner::Replay;
use crate::proto::PubResult;
use crate::store::StoredRange;
use std::sync::Arc;

/// The bus between cores.
pub type CoreBus = Bus<CoreMsg>;

/// A message to one core.
pub enum CoreMsg {
    /// A sequenced message from its owner core, for local subscribers.
    Deliver {
        /// The shared frame.
        frame: Arc<Frame>,
        /// Owner core.
        from: usize,
    },
    /// A request to this core; answer `from` with a [`CoreMsg::Reply`] carrying `token`.
    Request {
        /// Requesting core.
        from: usize,
        /// Chosen by the requesting core; returned unchanged.
        token: u64,
        /// What is asked.
        req: Request,
    },
    /// The answer to a request this core made (of a core, the store or the cluster).
    Reply {
        /// The request's token.
        token: u64,
        /// The answer.
        reply: Reply,
    },
    /// An answer for core `to`, passed through this core so that it arrives after everything
    /// queued here before it (cluster mode: a publish's ack follows its replicated message
    /// through the subject's owner).
    Relay {
        /// The core that asked.
        to: usize,
        /// Its request's token.
        token: u64,
        /// The answer.
        reply: Reply,
    },
    /// From the storage thread (sync durability): this core's appends up to ticket `upto`
    /// are on disk (`ok`), or failed to be written.
    Durable {
        /// Highest ticket of the group.
        upto: u64,
        /// False when the group's commit failed.
        ok: bool,
    },
    /// Cluster mode: a message consumed from the JetStream stream (sent to its owner core).
    Replicated(Replicated),
    /// A handed-over session whose new connection died: keep it detached under its old id
    /// (sent to the core that id names).
    Restore {
        /// The old session id.
        session: Box<str>,
        /// The session (boxed: rare, and every message on the bus is as large as the largest).
        state: Box<SessionState>,
    },
    /// A reload (SIGHUP): operations that start from now on read these settings; connections
    /// keep what they were admitted with.
    Reload(Arc<super::settings::Settings>),
    /// Drain: send every connection elsewhere with a retry hint, refuse new ones (see
    /// [`super::drain`]).
    Drain,
    /// Stop accepting, close connections with 1001, finish.
    Shutdown,
    /// Several of the above from one core, in the order sent (its [`super::outbox::Outbox`]:
    /// one bus message per destination per loop turn).
    Batch(Vec<CoreMsg>),
}

/// What one core asks of another.
#[derive(Debug)]
pub enum Request {
    /// Sequence this publish (to the subject's owner).
    Publish {
        /// Concrete subject.
        subject: Box<str>,
        /// Raw JSON data.
        data: Box<[u8]>,
        /// De-duplication id.
        msg_id: Option<Box<str>>,
    },
    /// Retained messages for a subscription (`since` / `snapshot`), from an owner.
    Replay {
        /// Subject (since) or pattern (snapshot).
        pattern: Box<str>,
        /// What to replay.
        kind: ReplayKind,
    },
    /// The `/history/{subject}` body, from the subject's owner.
    History {
        /// Concrete subject.
        subject: Box<str>,
        /// Messages with seq > since.
        since: u64,
        /// At most this many.
        limit: usize,
    },
    /// Hand a session over to the requesting core (sent to the session's core).
    TakeSession {
        /// Session id.
        session: Box<str>,
        /// `msg` ops the client received on that session.
        received: u64,
        /// The requester's grant: a session is handed over only to the identity that made it.
        grant: Option<Arc<Grant>>,
    },
    /// Frames of matching subjects an owner broadcast after a stream position.
    CatchUp {
        /// The resumed session's patterns.
        patterns: Vec<Box<str>>,
        /// Broadcast position (`Frame::xseq`) already covered.
        after: u64,
    },
    /// Scheduled publishes of a subject (to its owner).
    Schedule(ScheduleOp),
    /// `/connz`: the connections of the core asked (every core is asked).
    Connz(Box<ConnzQuery>),
}

/// Answers, each to one [`Request`] kind (or to a read of the store or the cluster).
#[derive(Debug)]
pub enum Reply {
    /// To `Publish`: the outcome.
    Published(PubResult),
    /// To `Replay`: the owner that answered, and the gap and frames.
    Replayed {
        /// Owner core that answered.
        owner: usize,
        /// Gap and frames.
        replay: Replay,
    },
    /// To `History`: the complete JSON body.
    History(Vec<u8>),
    /// To `TakeSession`: the session, or why not (boxed: see `CoreMsg::Restore`).
    Session(Result<Box<SessionState>, TakeError>),
    /// To `CatchUp`: the owner that answered and its frames, in broadcast order.
    CaughtUp {
        /// Owner core that answered.
        owner: usize,
        /// Frames after the position.
        frames: Vec<Arc<Frame>>,
    },
    /// To `Schedule`.
    Schedule(ScheduleReply),
    /// To `Connz`: the core's rows.
    Connz(ConnzPart),
    /// From the storage thread: stored messages older than the ring.
    Stored(StoredRange),
    /// From the cluster bridge: messages read from the stream, or why not.
    Fetched(Result<Fetched, ClusterError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bus_message_stays_small() {
        // Every channel slot is as large as the largest message: a delivery (16 bytes of
        // payload) should not pay for the rare ones (sessions are boxed). The largest left is
        // a replicated message or a forwarded publish, each a few boxed fields.
        let size = std::mem::size_of::<CoreMsg>();
        assert!(size <= 80, "{size}");
    }
}
