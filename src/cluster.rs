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

use crate::os::{now_us, random_u64};
use crate::proto::PubAck;
use async_nats::connection::State;
use async_nats::header::{HeaderMap, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{DirectGetErrorKind, StorageType};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

/// Publishes queued or in flight on one bridge. Beyond it a publish is answered
/// [`ClusterError::Unavailable`] at once: a backlog this deep means NATS is not keeping up, and
/// the client is better served by a 503 than by waiting behind 8k others.
pub const MAX_PENDING_PUBLISHES: usize = 8192;
/// Attempts of one publish against the seq guard before [`ClusterError::Conflict`]. Each failed
/// attempt means another node published on the subject in between. Measured with two nodes
/// each publishing a backlog to one subject, 20 was not enough (a few 503s); 64 with a short
/// backoff keeps that case answered.
pub const GUARD_TRIES: u32 = 64;
/// Longest jittered pause between guard attempts (the pause grows 1, 2, 4 .. ms up to this).
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
/// Longest pause between reconnect attempts (async-nats backs off 0, 2, 4 .. ms up to this).
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
    /// The answer to [`Bridge::publish`].
    fn published(&self, from: usize, token: u64, result: Result<PubAck, ClusterError>);
    /// The answer to [`Bridge::fetch`].
    fn fetched(&self, from: usize, token: u64, result: Result<Fetched, ClusterError>);
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

/// A request from a core thread to the bridge thread.
enum Request {
    Publish(PubReq),
    Fetch {
        what: Fetch,
        from: usize,
        token: u64,
    },
}

struct PubReq {
    subject: Box<str>,
    data: Bytes,
    msg_id: Option<Box<str>>,
    from: usize,
    token: u64,
}

/// Handle to the bridge thread. Cheap calls from any thread; dropping it shuts the thread down.
pub struct Bridge {
    tx: mpsc::UnboundedSender<Request>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    status: Arc<ClusterStatus>,
}

impl Bridge {
    /// Spawns thread `ringcast-nats` running a current-thread tokio runtime with async-nats;
    /// connects (bounded by `connect_timeout`), creates or checks the stream (subjects
    /// `<prefix>.>`, file storage, `max_msgs_per_subject`, `duplicate_window`, `allow_direct`)
    /// and starts consuming. Fails when the first connection or the stream set-up fails.
    pub fn start(cfg: ClusterConfig, sink: Arc<dyn ClusterSink>) -> Result<Bridge, String> {
        let status = Arc::new(ClusterStatus::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let st = status.clone();
        let thread = std::thread::Builder::new()
            .name("ringcast-nats".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let shared = match connect(cfg, sink, st).await {
                        Ok(s) => {
                            let _ = ready_tx.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    run(shared, rx, stop_rx).await;
                });
            })
            .map_err(|e| format!("spawn ringcast-nats: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Bridge {
                tx,
                stop: Some(stop_tx),
                thread: Some(thread),
                status,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err("ringcast-nats thread died during start".into())
            }
        }
    }

    /// Non-blocking, callable from any thread: queue a publish of `data` (raw JSON) on ringcast
    /// subject `subject`; answered through [`ClusterSink::published`] with `from` and `token`.
    ///
    /// `Unavailable` comes at once when NATS is not connected or [`MAX_PENDING_PUBLISHES`] are
    /// pending, and after [`REQUEST_TIMEOUT`] without an ack. After a timeout the message may
    /// still have been stored (it is then replicated like any other); its generated
    /// `Nats-Msg-Id` keeps a re-send of that same publish from being stored twice, and a client
    /// that retries with its own `msg_id` gets the original back as a duplicate.
    pub fn publish(
        &self,
        subject: &str,
        data: &[u8],
        msg_id: Option<&str>,
        from: usize,
        token: u64,
    ) {
        let req = PubReq {
            subject: subject.into(),
            data: Bytes::copy_from_slice(data),
            msg_id: msg_id.map(Into::into),
            from,
            token,
        };
        // A send error means the bridge thread is gone (shutdown): nobody would answer anyway.
        let _ = self.tx.send(Request::Publish(req));
    }

    /// Non-blocking, callable from any thread: queue a fetch; answered through
    /// [`ClusterSink::fetched`] with `from` and `token`.
    pub fn fetch(&self, what: Fetch, from: usize, token: u64) {
        let _ = self.tx.send(Request::Fetch { what, from, token });
    }

    /// Live counters and flags.
    pub fn status(&self) -> &Arc<ClusterStatus> {
        &self.status
    }

    /// Stops the thread and joins it. Queued publishes are answered `Unavailable`; publishes and
    /// fetches in flight at that moment, and requests made after it, get no answer.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What the bridge knows about a subject's last message (from consumed messages and own acks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct View {
    seq: u64,
    stream_seq: u64,
    ts: u64,
}

/// State shared by the bridge thread's tasks (all on that one thread).
struct Shared {
    prefix: String,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    sink: Arc<dyn ClusterSink>,
    status: Arc<ClusterStatus>,
    /// Per-subject view feeding the guard: one entry per subject the stream has held while this
    /// bridge ran (the stream's subject count is the bound). A std Mutex, not an async one: it
    /// is never held across an `.await`, and every task runs on the one bridge thread, so it
    /// never contends.
    views: Mutex<HashMap<Box<str>, View>>,
    /// Generated `Nats-Msg-Id`s: node-random part and counter.
    node_id: u64,
    next_id: AtomicU64,
    /// Woken whenever the stream consumer has handed messages to the sink.
    consumed: Notify,
}

impl Shared {
    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn full_subject(&self, subject: &str) -> String {
        format!("{}.{subject}", self.prefix)
    }

    fn view(&self, subject: &str) -> View {
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        views.get(subject).copied().unwrap_or_default()
    }

    /// Records a subject's message if it is newer (by stream seq) than what is known.
    fn observe(&self, subject: &str, v: View) {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        match views.get_mut(subject) {
            Some(cur) if cur.stream_seq >= v.stream_seq => {}
            Some(cur) => *cur = v,
            None => {
                views.insert(subject.into(), v);
            }
        }
    }

    /// The subject has no message in the stream (purged): the guard must expect 0 again.
    fn forget(&self, subject: &str) {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cur) = views.get_mut(subject) {
            cur.stream_seq = 0;
            cur.seq = 0;
        }
    }

    fn generated_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("rc-{:016x}-{n}", self.node_id)
    }

    /// Decodes a stream message; `None` when it lacks valid ringcast headers or prefix.
    fn decode(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        stream_seq: u64,
    ) -> Option<Replicated> {
        let subject = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let h = headers?;
        let seq: u64 = h.get(HDR_SEQ)?.as_str().parse().ok().filter(|s| *s > 0)?;
        let ts: u64 = h.get(HDR_TS)?.as_str().parse().ok()?;
        let msg_id = h
            .get(NATS_MESSAGE_ID)
            .and_then(|v| v.as_str().split_once('/'))
            .and_then(|(_, id)| unescape(id))
            .map(String::into_boxed_str);
        Some(Replicated {
            subject: subject.into(),
            seq,
            ts,
            data: payload.into(),
            msg_id,
            stream_seq,
        })
    }
}

/// Connects, sets up the stream and returns the shared state (bridge thread, at start).
async fn connect(
    cfg: ClusterConfig,
    sink: Arc<dyn ClusterSink>,
    status: Arc<ClusterStatus>,
) -> Result<Arc<Shared>, String> {
    let (gen_tx, gen_rx) = watch::channel(0u64);
    let gen_tx = Arc::new(gen_tx);
    let lost = Arc::new(AtomicBool::new(false));
    let st = status.clone();
    let opts = async_nats::ConnectOptions::new()
        .name("ringcast")
        .connection_timeout(cfg.connect_timeout)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let ms = 1u64 << attempts.min(16);
            Duration::from_millis(ms).min(RECONNECT_DELAY_MAX)
        })
        .event_callback(move |event| {
            let (st, gen_tx, lost) = (st.clone(), gen_tx.clone(), lost.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        st.connected.store(true, Ordering::Release);
                        if lost.swap(false, Ordering::AcqRel) {
                            st.reconnects.fetch_add(1, Ordering::Relaxed);
                            gen_tx.send_modify(|g| *g += 1);
                        }
                        tracing::info!("nats: connected");
                    }
                    async_nats::Event::Disconnected => {
                        st.connected.store(false, Ordering::Release);
                        lost.store(true, Ordering::Release);
                        tracing::warn!("nats: disconnected");
                    }
                    other => tracing::debug!("nats: {other}"),
                }
            }
        });
    let client = tokio::time::timeout(cfg.connect_timeout, opts.connect(cfg.url.as_str()))
        .await
        .map_err(|_| {
            format!(
                "nats {}: no connection within {:?}",
                cfg.url, cfg.connect_timeout
            )
        })?
        .map_err(|e| format!("nats {}: {e}", cfg.url))?;
    status.connected.store(true, Ordering::Release);
    let js = jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .ack_timeout(REQUEST_TIMEOUT)
        .build(client.clone());
    let wanted = format!("{}.>", cfg.prefix);
    let config = stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![wanted.clone()],
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        max_messages_per_subject: cfg.max_msgs_per_subject,
        duplicate_window: cfg.duplicate_window,
        allow_direct: true,
        ..Default::default()
    };
    // Nodes starting together race to create the stream: the losers' create fails ("subjects
    // overlap" / "name in use") although the stream now exists, so ask again (bounded).
    let mut tries = 0;
    let stream = loop {
        tries += 1;
        let r = tokio::time::timeout(REQUEST_TIMEOUT, js.get_or_create_stream(config.clone()))
            .await
            .map_err(|_| {
                format!(
                    "stream {}: no answer within {REQUEST_TIMEOUT:?}",
                    cfg.stream
                )
            })?;
        match r {
            Ok(s) => break s,
            Err(e) if tries < STREAM_CREATE_TRIES => {
                tracing::debug!("stream {}: {e}; asking again", cfg.stream);
                tokio::time::sleep(Duration::from_millis(20 * tries as u64)).await;
            }
            Err(e) => return Err(format!("stream {}: {e}", cfg.stream)),
        }
    };
    let have = &stream.cached_info().config;
    if !have.subjects.contains(&wanted) {
        return Err(format!(
            "stream {} exists with subjects {:?}, not {wanted:?}",
            cfg.stream, have.subjects
        ));
    }
    if !have.allow_direct {
        return Err(format!("stream {} exists without allow_direct", cfg.stream));
    }
    if have.max_messages_per_subject != cfg.max_msgs_per_subject
        || have.duplicate_window != cfg.duplicate_window
    {
        tracing::warn!(
            "stream {} keeps {} msgs/subject and dedups {:?} (this node asked {} and {:?}); the stream wins",
            cfg.stream,
            have.max_messages_per_subject,
            have.duplicate_window,
            cfg.max_msgs_per_subject,
            cfg.duplicate_window
        );
    }
    let shared = Arc::new(Shared {
        prefix: cfg.prefix,
        client,
        js,
        stream,
        sink,
        status,
        views: Mutex::new(HashMap::new()),
        node_id: random_u64(),
        next_id: AtomicU64::new(1),
        consumed: Notify::new(),
    });
    tokio::spawn(consume(shared.clone(), gen_rx));
    Ok(shared)
}

/// Per-subject FIFO of publishes: the head of each lane is in flight, the rest wait. Touched
/// only by the bridge's main loop.
#[derive(Default)]
struct Lanes {
    lanes: HashMap<Box<str>, VecDeque<PubReq>>,
    /// Publishes queued or in flight, all lanes.
    pending: usize,
}

/// The bridge's main loop: requests in, lanes advanced as publishes finish, until stopped.
async fn run(
    sh: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    mut stop: oneshot::Receiver<()>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Box<str>>();
    let fetches = Arc::new(Semaphore::new(MAX_FETCHES));
    let mut lanes = Lanes::default();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            req = rx.recv() => match req {
                None => break,
                Some(Request::Publish(p)) => {
                    if !sh.connected() || lanes.pending >= MAX_PENDING_PUBLISHES {
                        sh.sink.published(p.from, p.token, Err(ClusterError::Unavailable));
                        continue;
                    }
                    lanes.pending += 1;
                    match lanes.lanes.get_mut(&p.subject) {
                        Some(lane) => lane.push_back(p),
                        None => {
                            lanes.lanes.insert(p.subject.clone(), VecDeque::new());
                            spawn_publish(&sh, p, &done_tx);
                        }
                    }
                }
                Some(Request::Fetch { what, from, token }) => {
                    let Ok(permit) = fetches.clone().try_acquire_owned() else {
                        sh.sink.fetched(from, token, Err(ClusterError::Unavailable));
                        continue;
                    };
                    let sh = sh.clone();
                    tokio::spawn(async move {
                        let r = tokio::time::timeout(FETCH_TIMEOUT, fetch_one(&sh, what))
                            .await
                            .unwrap_or(Err(ClusterError::Unavailable));
                        drop(permit);
                        sh.sink.fetched(from, token, r);
                    });
                }
            },
            Some(subject) = done_rx.recv() => {
                lanes.pending -= 1;
                let next = lanes.lanes.get_mut(&subject).and_then(VecDeque::pop_front);
                match next {
                    Some(p) => spawn_publish(&sh, p, &done_tx),
                    None => {
                        lanes.lanes.remove(&subject);
                    }
                }
            }
        }
    }
    // Stopping: whatever is still queued will not be sent.
    for (_, lane) in lanes.lanes.drain() {
        for p in lane {
            sh.sink
                .published(p.from, p.token, Err(ClusterError::Unavailable));
        }
    }
}

fn spawn_publish(sh: &Arc<Shared>, p: PubReq, done: &mpsc::UnboundedSender<Box<str>>) {
    let (sh, done) = (sh.clone(), done.clone());
    tokio::spawn(async move {
        let r = publish_one(&sh, &p).await;
        // The stream has it (or refused it): the subject's next publish may go.
        let _ = done.send(p.subject.clone());
        if let Ok((_, stream_seq)) = &r {
            // Read your writes: answer once this node's consumer has handed the message to
            // its owner core, so a `/history` or `since` right after the ack sees it. Only the
            // answer waits, not the subject's lane.
            wait_consumed(&sh, *stream_seq).await;
        }
        sh.sink.published(p.from, p.token, r.map(|(ack, _)| ack));
    });
}

/// One publish, with guard retries. Runs on the bridge thread; one per subject at a time.
async fn publish_one(sh: &Shared, p: &PubReq) -> Result<(PubAck, u64), ClusterError> {
    if crate::subject::validate_subject(&p.subject).is_err() {
        return Err(ClusterError::Rejected);
    }
    // The server's limit covers headers and payload, and a client exceeding it is disconnected:
    // refuse here, leaving room for the headers.
    let headers =
        HEADER_ROOM + p.subject.len() * 3 + p.msg_id.as_ref().map_or(0, |id| id.len() * 3);
    if p.data.len() + headers > sh.client.server_info().max_payload {
        return Err(ClusterError::Rejected);
    }
    let full = sh.full_subject(&p.subject);
    let nats_id = match &p.msg_id {
        Some(id) => scoped_msg_id(&p.subject, id),
        None => sh.generated_id(),
    };
    for attempt in 0..GUARD_TRIES {
        if !sh.connected() {
            return Err(ClusterError::Unavailable);
        }
        let view = sh.view(&p.subject);
        let seq = view.seq + 1;
        let ts = now_us().max(view.ts);
        let mut h = HeaderMap::new();
        h.insert(HDR_SEQ, seq.to_string());
        h.insert(HDR_TS, ts.to_string());
        h.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            view.stream_seq.to_string(),
        );
        h.insert(NATS_MESSAGE_ID, nats_id.as_str());
        let ack = match sh
            .js
            .publish_with_headers(full.clone(), h, p.data.clone())
            .await
        {
            Ok(fut) => fut.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(a) if a.duplicate => {
                sh.status.duplicates.fetch_add(1, Ordering::Relaxed);
                return original(sh, a.sequence).await.map(|ack| (ack, a.sequence));
            }
            Ok(a) => {
                sh.observe(
                    &p.subject,
                    View {
                        seq,
                        stream_seq: a.sequence,
                        ts,
                    },
                );
                sh.status.published.fetch_add(1, Ordering::Relaxed);
                let ack = PubAck {
                    seq,
                    ts,
                    duplicate: false,
                };
                return Ok((ack, a.sequence));
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                sh.status.conflicts.fetch_add(1, Ordering::Relaxed);
                refresh(sh, &p.subject, &full).await?;
                // The first retry goes at once: the refresh just told us the subject's last
                // message, and a node that paused here would keep losing to a node publishing
                // a backlog back to back. Later retries pause (jittered) to break ties.
                if attempt > 0 {
                    let cap = (1u64 << attempt.min(5)).min(GUARD_BACKOFF_MAX.as_millis() as u64);
                    let pause_us = random_u64() % (cap * 1000) + 1;
                    tokio::time::sleep(Duration::from_micros(pause_us)).await;
                }
            }
            Err(e) => return Err(classify(&e)),
        }
    }
    Err(ClusterError::Conflict)
}

/// Waits (bounded by [`REQUEST_TIMEOUT`]) until the stream consumer has delivered stream seq
/// `seq`. Past the bound the publish is still answered as stored: it is, and this node will
/// deliver it when its consumer catches up.
async fn wait_consumed(sh: &Shared, seq: u64) {
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        // Created before the check: `notify_waiters` reaches a `Notified` from its creation.
        let notified = sh.consumed.notified();
        if sh.status.last_stream_seq.load(Ordering::Acquire) >= seq {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}

/// Maps a publish failure: no answer or no stream is `Unavailable`; a JetStream API error is
/// `Rejected`.
fn classify(e: &async_nats::jetstream::context::PublishError) -> ClusterError {
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => ClusterError::Unavailable,
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            ClusterError::Rejected
        }
        PublishErrorKind::Other => {
            let api = std::error::Error::source(e)
                .is_some_and(|s| s.downcast_ref::<async_nats::jetstream::Error>().is_some());
            if api {
                ClusterError::Rejected
            } else {
                ClusterError::Unavailable
            }
        }
    }
}

/// Re-reads the subject's last message after the guard refused (direct get last-by-subject).
async fn refresh(sh: &Shared, subject: &str, full: &str) -> Result<(), ClusterError> {
    match sh.stream.direct_get_last_for_subject(full).await {
        Ok(m) => {
            match sh.decode(&m.subject, Some(&m.headers), &m.payload, m.sequence) {
                Some(r) => sh.observe(
                    subject,
                    View {
                        seq: r.seq,
                        stream_seq: r.stream_seq,
                        ts: r.ts,
                    },
                ),
                // A foreign message on our subject: expect it, keep our seq.
                None => {
                    let v = sh.view(subject);
                    sh.observe(
                        subject,
                        View {
                            stream_seq: m.sequence,
                            ..v
                        },
                    );
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
            sh.forget(subject);
            Ok(())
        }
        Err(e) => {
            tracing::debug!("refresh {full}: {e}");
            Err(ClusterError::Unavailable)
        }
    }
}

/// The original of a duplicate publish: its seq/ts, `duplicate: true`. When the stream no longer
/// holds it (per-subject retention dropped it inside the dedup window) seq and ts are 0.
async fn original(sh: &Shared, stream_seq: u64) -> Result<PubAck, ClusterError> {
    match sh.stream.direct_get(stream_seq).await {
        Ok(m) => Ok(
            match sh.decode(&m.subject, Some(&m.headers), &m.payload, m.sequence) {
                Some(r) => PubAck {
                    seq: r.seq,
                    ts: r.ts,
                    duplicate: true,
                },
                None => PubAck {
                    seq: 0,
                    ts: 0,
                    duplicate: true,
                },
            },
        ),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(PubAck {
            seq: 0,
            ts: 0,
            duplicate: true,
        }),
        Err(e) => {
            tracing::debug!("original {stream_seq}: {e}");
            Err(ClusterError::Unavailable)
        }
    }
}

/// Where the stream consumer stands.
struct Cursor {
    /// Stream seq of the last message consumed (delivered or skipped).
    last_seen: u64,
    /// Still in the initial `LastPerSubject` pass.
    initial: bool,
}

/// The stream consumer: runs for the bridge's life, recreating its ordered consumer after any
/// error or reconnect, resuming after `last_seen`.
async fn consume(sh: Arc<Shared>, mut reconnected: watch::Receiver<u64>) {
    let mut cur = Cursor {
        last_seen: 0,
        initial: true,
    };
    let mut failures = 0u32;
    loop {
        reconnected.borrow_and_update();
        if failures > 0 {
            let ms = (50u64 << failures.min(5)).min(RESUBSCRIBE_BACKOFF_MAX.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let (consumer, floor) =
            match tokio::time::timeout(REQUEST_TIMEOUT, subscribe(&sh, &cur)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!("stream consumer: {e}");
                    failures += 1;
                    continue;
                }
                Err(_) => {
                    failures += 1;
                    continue;
                }
            };
        let name = consumer.cached_info().name.clone();
        if cur.initial && consumer.cached_info().num_pending == 0 {
            // Nothing under the prefix when the consumer was made: caught up, and everything
            // after the stream's last seq at that moment is new.
            cur.initial = false;
            cur.last_seen = cur.last_seen.max(floor);
            sh.status.caught_up.store(true, Ordering::Release);
        }
        let mut msgs = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("stream consumer messages: {e}");
                failures += 1;
                continue;
            }
        };
        failures = 0;
        loop {
            tokio::select! {
                m = msgs.next() => match m {
                    Some(Ok(m)) => handle(&sh, &mut cur, &m),
                    Some(Err(e)) => {
                        tracing::debug!("stream consumer error, resuming after {}: {e}", cur.last_seen);
                        break;
                    }
                    None => break,
                },
                changed = reconnected.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tracing::debug!("reconnected: resuming stream after {}", cur.last_seen);
                    break;
                }
            }
        }
        drop(msgs);
        // Best effort: an ordered consumer is ephemeral and the server drops it when idle anyway.
        let _ =
            tokio::time::timeout(Duration::from_secs(1), sh.stream.delete_consumer(&name)).await;
    }
}

/// Creates the ordered stream consumer where `cur` stands; also returns the stream's last seq
/// before creation (used when the initial consumer finds nothing pending).
async fn subscribe(
    sh: &Shared,
    cur: &Cursor,
) -> Result<(jetstream::consumer::Consumer<OrderedConfig>, u64), String> {
    let (deliver_policy, floor) = if cur.initial {
        let info = sh.stream.get_info().await.map_err(|e| e.to_string())?;
        (DeliverPolicy::LastPerSubject, info.state.last_sequence)
    } else {
        (
            DeliverPolicy::ByStartSequence {
                start_sequence: cur.last_seen + 1,
            },
            0,
        )
    };
    let consumer = sh
        .stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{}.>", sh.prefix),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok((consumer, floor))
}

fn handle(sh: &Shared, cur: &mut Cursor, m: &jetstream::Message) {
    let Ok(info) = m.info() else { return };
    let (sseq, pending) = (info.stream_sequence, info.pending);
    if sseq > cur.last_seen {
        if !cur.initial && sseq != cur.last_seen + 1 {
            // Only retention can do this (a subject overflowed while this node was away).
            tracing::debug!("stream gap: {} -> {sseq}", cur.last_seen);
        }
        cur.last_seen = sseq;
        match sh.decode(&m.subject, m.headers.as_ref(), &m.payload, sseq) {
            Some(r) => {
                sh.observe(
                    &r.subject,
                    View {
                        seq: r.seq,
                        stream_seq: sseq,
                        ts: r.ts,
                    },
                );
                sh.status.consumed.fetch_add(1, Ordering::Relaxed);
                sh.sink.replicated(r);
            }
            None => {
                sh.status.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        // After the hand-off to the sink: a publish waiting for this seq may now be answered.
        sh.status.last_stream_seq.store(sseq, Ordering::Release);
        sh.consumed.notify_waiters();
    }
    if cur.initial && pending == 0 {
        cur.initial = false;
        sh.status.caught_up.store(true, Ordering::Release);
    }
}

async fn fetch_one(sh: &Shared, what: Fetch) -> Result<Fetched, ClusterError> {
    fetch_since(sh, &what.subject, what.since, what.limit).await
}

async fn fetch_since(
    sh: &Shared,
    subject: &str,
    since: u64,
    limit: usize,
) -> Result<Fetched, ClusterError> {
    if crate::subject::validate_subject(subject).is_err() {
        return Err(ClusterError::Rejected);
    }
    let full = sh.full_subject(subject);
    let Some(last) = direct(
        sh,
        sh.stream.direct_get_last_for_subject(full.as_str()).await,
    )?
    else {
        let last_seq = sh.view(subject).seq;
        return Ok(Fetched {
            first_seq: last_seq + 1,
            last_seq,
            messages: Vec::new(),
        });
    };
    let first = direct(
        sh,
        sh.stream.direct_get_first_for_subject(full.as_str()).await,
    )?
    .map_or(last.seq, |f| f.seq);
    let mut fetched = Fetched {
        first_seq: first,
        last_seq: last.seq,
        messages: Vec::new(),
    };
    if since >= last.seq || limit == 0 {
        return Ok(fetched);
    }
    if since + 1 == last.seq {
        fetched.messages.push(last);
        return Ok(fetched);
    }
    // Everything up to `last` (messages published meanwhile are not part of this answer).
    let stop_at = last.stream_seq;
    let out = &mut fetched.messages;
    read_filtered(sh, full, DeliverPolicy::All, stop_at, |r| {
        if r.seq > since && r.stream_seq <= stop_at {
            out.push(r);
        }
        out.len() < limit
    })
    .await?;
    Ok(fetched)
}

/// Decodes a direct-get answer; `Ok(None)` when there is no such message.
fn direct(
    sh: &Shared,
    r: Result<async_nats::jetstream::message::StreamMessage, stream::DirectGetError>,
) -> Result<Option<Replicated>, ClusterError> {
    match r {
        Ok(m) => Ok(sh.decode(&m.subject, Some(&m.headers), &m.payload, m.sequence)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => {
            tracing::debug!("direct get: {e}");
            Err(ClusterError::Unavailable)
        }
    }
}

/// Reads an ephemeral ordered consumer on `filter`, handing each decodable message to `take`,
/// until nothing is pending, a message at or past stream seq `stop_at` was handed over, or
/// `take` answers false. Deletes the consumer afterwards.
async fn read_filtered(
    sh: &Shared,
    filter: String,
    deliver_policy: DeliverPolicy,
    stop_at: u64,
    mut take: impl FnMut(Replicated) -> bool,
) -> Result<(), ClusterError> {
    if !sh.connected() {
        return Err(ClusterError::Unavailable);
    }
    let consumer = sh
        .stream
        .create_consumer(OrderedConfig {
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            tracing::debug!("fetch consumer: {e}");
            ClusterError::Unavailable
        })?;
    let name = consumer.cached_info().name.clone();
    let pending = consumer.cached_info().num_pending;
    let read = async {
        if pending == 0 {
            return Ok(());
        }
        let mut msgs = consumer
            .messages()
            .await
            .map_err(|_| ClusterError::Unavailable)?;
        loop {
            let Some(Ok(m)) = msgs.next().await else {
                return Err(ClusterError::Unavailable);
            };
            let Ok(info) = m.info() else {
                return Err(ClusterError::Unavailable);
            };
            let (sseq, pending) = (info.stream_sequence, info.pending);
            if let Some(r) = sh.decode(&m.subject, m.headers.as_ref(), &m.payload, sseq) {
                if !take(r) {
                    return Ok(());
                }
            }
            if pending == 0 || sseq >= stop_at {
                return Ok(());
            }
        }
    };
    let r = read.await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sh.stream.delete_consumer(&name)).await;
    r
}

/// `Nats-Msg-Id` of a client `msg_id`: `<subject>/<msg_id>`, escaped so that it is a valid
/// header value and the first `/` separates the two.
pub fn scoped_msg_id(subject: &str, msg_id: &str) -> String {
    let mut s = String::with_capacity(subject.len() + msg_id.len() + 1);
    escape_into(&mut s, subject, true);
    s.push('/');
    escape_into(&mut s, msg_id, false);
    s
}

fn escape_into(out: &mut String, s: &str, slash: bool) {
    for b in s.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' && !(slash && b == b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_msg_id_escapes_and_round_trips() {
        let id = scoped_msg_id("prices.EURUSD", "a b/%\r\né");
        assert_eq!(id, "prices.EURUSD/a%20b/%25%0D%0A%C3%A9");
        assert_eq!(
            unescape(id.split_once('/').unwrap().1).as_deref(),
            Some("a b/%\r\né")
        );
    }

    #[test]
    fn same_msg_id_on_two_subjects_gives_two_ids() {
        assert_ne!(scoped_msg_id("a", "x"), scoped_msg_id("b", "x"));
        assert_ne!(scoped_msg_id("a/b", "c"), scoped_msg_id("a", "b/c"));
    }
}
