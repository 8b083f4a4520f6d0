//! `Bridge`: cluster mode's link to NATS JetStream, which is the cluster's sequencer, log and
//! transport (no home-made consensus).
//!
//! Owns the thread `ringcast-nats`: a current-thread tokio runtime running the async-nats client,
//! one ordered consumer over the whole stream, the per-subject publish lanes and the fetches.
//! Core threads only touch the [`Bridge`] handle: [`Bridge::publish`] and [`Bridge::fetch`] are
//! non-blocking sends on an unbounded tokio channel, and every answer comes back through the
//! [`ClusterSink`] (called on the bridge thread). [`ClusterStatus`] is a set of atomics any thread
//! may read.
//!
//! This file holds the vocabulary every side shares: [`ClusterConfig`], the limits and header
//! names, the messages and answers ([`Replicated`], [`Fetch`], [`Fetched`], [`ClusterError`]),
//! the [`ClusterSink`] the bridge reports to and the [`ClusterStatus`] it keeps. The rest, by
//! the thread that runs it:
//!
//! - cores: `handle` — the [`Bridge`] handle (start, publish, fetch, status, shutdown) and the
//!   requests it queues for the bridge thread;
//! - bridge thread: `bridge` — the thread's runtime, connection and stream set-up, and the main
//!   loop; `lanes` — the per-subject publish queues of that loop; `publish` — the stream
//!   protocol of one publish (seq guard, retries, duplicates, read-your-writes); `consumer` — the
//!   ordered consumer feeding the sink; `fetch` — history reads; `state` — what those tasks
//!   share (NATS handles, per-subject views, generated msg ids);
//! - pure, used by the above: `wire` — subjects, `Nats-Msg-Id`s, the headers of a publish and
//!   the decoding of a stream message.
//!
//! # How a subject stays contiguous across nodes
//!
//! A ringcast subject `S` is the JetStream subject `<prefix>.S`. Each message carries the headers
//! `Ringcast-Seq` (per-subject seq), `Ringcast-Ts` (µs since the epoch, never below the subject's
//! previous ts) and `Nats-Expected-Last-Subject-Sequence`: the stream seq of the subject's last
//! message as this bridge knows it (0 while the subject is empty; nats-server 2.9 accepts 0 as
//! "no message yet"). A node whose view is stale is refused with "wrong last sequence" (10071),
//! refreshes the subject's last message (direct get last-by-subject) and retries with the next
//! seq, at most [`GUARD_TRIES`] times, then answers [`ClusterError::Conflict`]. Each node keeps at
//! most one publish in flight per subject (`Lanes`), so its own publishes on a subject never
//! race each other and keep their order.
//!
//! # De-duplication
//!
//! A client `msg_id` becomes `Nats-Msg-Id: <subject>/<msg_id>` (bytes outside `!`..`~`, `%`, and
//! `/` in the subject part are %-escaped), so dedup is cluster-wide and scoped to the subject.
//! nats-server checks the msg id *before* the expected-last-subject-sequence guard, so a repeat
//! is answered as a duplicate even by a node with a stale view; the bridge then reads the
//! original (direct get by stream seq) and answers its seq/ts with `duplicate: true`. Publishes
//! without a `msg_id` still carry a generated unique id (`rc-<node random>-<counter>`): the same
//! JetStream publish re-sent within the window (after an ambiguous ack timeout) is stored at most
//! once. A client that retries after a 503 with a *new* request gets a new generated id, so
//! end-to-end exactly-once across a 503 needs the client's own `msg_id`.
//!
//! # Consuming
//!
//! One ordered consumer over `<prefix>.>`: first `DeliverPolicy::LastPerSubject` (the node learns
//! every subject's latest value and seq without replaying history), then every new message in
//! stream order. The bridge remembers the last stream seq it consumed; after a reconnect or any
//! consumer error it recreates the consumer with `ByStartSequence(last + 1)`, and drops anything
//! at or below `last`, so the sink sees no gap and no duplicate.

mod bridge;
mod consumer;
mod fetch;
mod handle;
mod lanes;
mod publish;
mod state;
mod wire;

pub use handle::Bridge;
pub use wire::scoped_msg_id;

use crate::proto::PubAck;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Publishes queued or in flight on one bridge. Beyond it a publish is answered
/// [`ClusterError::Unavailable`] at once: a backlog this deep means NATS is not keeping up, and
/// the client is better served by a 503 than by waiting behind 8k others.
pub const MAX_PENDING_PUBLISHES: usize = 8192;
/// Attempts of one publish against the seq guard before [`ClusterError::Conflict`]. Each failed
/// attempt means another node published on the subject in between. Measured with two nodes
/// each publishing a backlog to one subject, 20 was not enough (a few 503s); 64 with a short
/// backoff keeps that case answered.
pub const GUARD_TRIES: u32 = 64;
/// Longest jittered pause between guard attempts (the cap on the pause grows 2, 4 .. ms up to
/// this; the first retry goes at once).
pub const GUARD_BACKOFF_MAX: Duration = Duration::from_millis(4);
/// Attempts to create-or-get the stream at start (nodes starting together race to create it).
pub const STREAM_CREATE_TRIES: u32 = 5;
/// Fetches running at once; beyond it a fetch is answered [`ClusterError::Unavailable`]. Each
/// holds an ephemeral consumer on the server.
pub const MAX_FETCHES: usize = 64;
/// Bound on every JetStream API request and publish ack; past it the answer is `Unavailable`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a whole fetch (consumer creation plus reading up to `history` messages).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between attempts to (re)create the stream consumer while NATS is unwell.
pub const RESUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Longest pause between reconnect attempts (the pause grows 2, 4, 8 .. ms up to this).
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_millis(500);
/// Room kept for the fixed headers of a publish (names, seqs, ts, generated id) when checking a
/// message against the server's `max_payload`; escaped subject and msg id are added on top.
pub const HEADER_ROOM: usize = 256;
/// Header carrying the per-subject ringcast seq.
pub const HDR_SEQ: &str = "Ringcast-Seq";
/// Header carrying the ringcast ts (µs since the Unix epoch).
pub const HDR_TS: &str = "Ringcast-Ts";

/// Cluster-mode settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URL. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// JetStream stream name. Default `RINGCAST`.
    pub stream: String,
    /// Subjects live under `<prefix>.`. Default `ringcast`.
    pub prefix: String,
    /// Stream replicas when the bridge creates the stream. Default 1.
    pub replicas: usize,
    /// Per-subject retention in the stream (ringcast `--history`). Default 1024.
    pub max_msgs_per_subject: i64,
    /// JetStream dedup window (ringcast `--dedup-secs`). Default 120 s.
    pub duplicate_window: Duration,
    /// Bound on the first connection at start. Default 5 s.
    pub connect_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream: "RINGCAST".into(),
            prefix: "ringcast".into(),
            replicas: 1,
            max_msgs_per_subject: 1024,
            duplicate_window: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// One message as the stream holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replicated {
    /// Ringcast subject (prefix stripped).
    pub subject: Box<str>,
    /// Per-subject seq (`Ringcast-Seq`).
    pub seq: u64,
    /// µs since the Unix epoch (`Ringcast-Ts`).
    pub ts: u64,
    /// Raw JSON data.
    pub data: Box<[u8]>,
    /// The publisher's `msg_id`, if it gave one.
    pub msg_id: Option<Box<str>>,
    /// Position in the JetStream stream.
    pub stream_seq: u64,
}

/// Why the bridge could not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterError {
    /// NATS not connected, or no answer in time: the client gets 503.
    Unavailable,
    /// The seq guard kept failing after [`GUARD_TRIES`] attempts.
    Conflict,
    /// JetStream refused (bad subject, too large, ...).
    Rejected,
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClusterError::Unavailable => "cluster unavailable",
            ClusterError::Conflict => "cluster sequence conflict",
            ClusterError::Rejected => "rejected by the cluster",
        })
    }
}

impl std::error::Error for ClusterError {}

/// What a fetch asks the stream for: messages of one subject with seq > `since`, oldest first,
/// at most `limit` (history older than a node's ring).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Concrete subject.
    pub subject: Box<str>,
    /// Messages after this seq.
    pub since: u64,
    /// At most this many.
    pub limit: usize,
}

/// The answer to a [`Fetch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// Oldest seq the stream still holds for the subject (`last_seq + 1` if none).
    pub first_seq: u64,
    /// The subject's last seq (0 if it never had a message).
    pub last_seq: u64,
    /// The messages, oldest first.
    pub messages: Vec<Replicated>,
}

/// Where the bridge reports; implemented by the server over its crossbeam bus, by a channel in
/// tests. Every method is called from the bridge thread and must not block for long.
pub trait ClusterSink: Send + Sync + 'static {
    /// Every message consumed from the stream, in stream order.
    fn replicated(&self, msg: Replicated);
    /// The answer to [`Bridge::publish`] of a message on `subject`. When it is `Ok`, this
    /// node's consumer has already given the message to [`ClusterSink::replicated`].
    fn published(
        &self,
        subject: &str,
        from: usize,
        token: u64,
        result: Result<PubAck, ClusterError>,
    );
    /// The answer to [`Bridge::fetch`].
    fn fetched(&self, from: usize, token: u64, result: Result<Fetched, ClusterError>);
}

/// A request from a core thread to the bridge thread.
pub(super) enum Request {
    Publish(PubReq),
    Fetch {
        what: Fetch,
        from: usize,
        token: u64,
    },
}

/// One publish as queued by [`Bridge::publish`]; answered with `from` and `token`.
pub(super) struct PubReq {
    pub(super) subject: Box<str>,
    pub(super) data: Bytes,
    pub(super) msg_id: Option<Box<str>>,
    pub(super) from: usize,
    pub(super) token: u64,
}

/// Live state of the bridge; written by the bridge thread, readable from any thread.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    /// The NATS connection is up (follows async-nats connection events).
    pub connected: AtomicBool,
    /// The initial consumer has delivered everything pending at start.
    pub caught_up: AtomicBool,
    /// Publishes stored (not counting duplicates).
    pub published: AtomicU64,
    /// Publishes answered as duplicates.
    pub duplicates: AtomicU64,
    /// Publish attempts refused by the seq guard (each one was retried).
    pub conflicts: AtomicU64,
    /// Messages consumed and handed to the sink.
    pub consumed: AtomicU64,
    /// Messages consumed without valid ringcast headers (not handed to the sink).
    pub skipped: AtomicU64,
    /// Reconnections after a lost connection.
    pub reconnects: AtomicU64,
    /// Stream seq of the last consumed message.
    pub last_stream_seq: AtomicU64,
}

impl ClusterStatus {
    /// The `/metrics` series of the bridge.
    pub fn series(&self) -> Vec<crate::metrics::NodeSeries> {
        use crate::metrics::NodeSeries;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            NodeSeries::gauge(
                "ringcast_cluster_connected",
                "1 while the NATS connection is up.",
                self.connected.load(Ordering::Relaxed) as u64,
            ),
            NodeSeries::gauge(
                "ringcast_cluster_caught_up",
                "1 once the stream consumer has delivered everything pending at start.",
                self.caught_up.load(Ordering::Relaxed) as u64,
            ),
            NodeSeries::counter(
                "ringcast_cluster_published_total",
                "Publishes this node wrote to the stream.",
                get(&self.published),
            ),
            NodeSeries::counter(
                "ringcast_cluster_duplicates_total",
                "Publishes answered as duplicates by the stream.",
                get(&self.duplicates),
            ),
            NodeSeries::counter(
                "ringcast_cluster_conflicts_total",
                "Publish attempts refused by the per-subject seq guard (then retried).",
                get(&self.conflicts),
            ),
            NodeSeries::counter(
                "ringcast_cluster_consumed_total",
                "Messages consumed from the stream.",
                get(&self.consumed),
            ),
            NodeSeries::counter(
                "ringcast_cluster_skipped_total",
                "Stream messages without valid ringcast headers (ignored).",
                get(&self.skipped),
            ),
            NodeSeries::counter(
                "ringcast_cluster_reconnects_total",
                "Reconnections to NATS.",
                get(&self.reconnects),
            ),
            NodeSeries::gauge(
                "ringcast_cluster_stream_seq",
                "Stream seq of the last consumed message.",
                get(&self.last_stream_seq),
            ),
        ]
    }
}
