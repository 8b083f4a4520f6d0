//! ringcast: a realtime fanout gateway. Publishers push JSON messages onto subjects; ringcast
//! sequences each one, encodes it once, and delivers it to every subscriber over WebSocket,
//! in order, with history, snapshots and de-duplication.
//!
//! # Layout
//!
//! ```text
//!  main / server   start-up, drain and shutdown: one pinned thread per core, each a monoio runtime
//!                  (io_uring or epoll) with its own SO_REUSEPORT listener; wires the bus,
//!                  the store and the cluster bridge together (CoreSink)
//!  transport/      the socket side of a connection, the only code that touches client sockets:
//!    mod           accept -> HTTP phase -> hand-off; flusher + coalesced writev; buffer pools
//!    admission     connection limits, Origin, token -> Grant
//!    endpoints     plain HTTP: /, /ringcast.js, /healthz, /metrics, /publish, /history, /schedule,
//!                  /admin/drain
//!    admin         operator endpoints: /admin (page), /connz, /varz; admin token or loopback
//!    websocket     an upgraded WebSocket (hello, reader); sse: a Server-Sent Events stream
//!    ops           one protocol op (sub, unsub, pub, pubs, ping, auth, resume) applied to the core
//!    publish       admission of publishes: the connection's publish limit, then permission
//!  core/           one core's shard, a room per concern (see its module doc):
//!    mod           Core: the bus loop and the one request/answer path between cores
//!    api           what the transport asks of its core; session hand-over between cores
//!    client        Client: a connection as the core sees it (queue, log, Access, limits);
//!                  flush_list: FlushList, the clients with output for the flusher
//!    connz         the connection list: each core's rows, asked of every core, merged
//!    fanout        Fanout: subscription trie + bounded MatchCache; delivery, once per client
//!    sequencer/    Sequencer: owned subjects (seq, ring, dedup), fsync queue, history reads
//!    sessions      Sessions: the registry by session id; retention and hand-over state
//!    scheduler     Scheduler: scheduled publishes of owned subjects
//!    pending       Pending: requests in flight (slab of waiters by token); Slot
//!    acks          publish answers: one `pub`'s; Batch, a `pubs` / array body's collector
//!    msg           CoreMsg: what crosses cores (Deliver, Request/Reply, notices, Batch)
//!    outbox        Outbox: a loop turn's messages to each other core, sent as one Batch
//!    node          Node: what all cores share (config, bus, metrics, store, cluster)
//!    settings      LiveSettings: the core's copy of the options and verifier in force
//!    drain         how a node leaves: drain for rolling deploys (SIGUSR2, POST /admin/drain:
//!                  clients sent elsewhere with close 1012 + retry hint), then shutdown
//!  bus             the cross-core mechanism: crossbeam channels + doorbells; owner_of
//!  proto/          bytes -> ClientOp; publish validation (Publish, PubAck), batches of them;
//!                  control replies
//!  http            bytes -> HTTP request; the route table (Route::of); responses (pure)
//!  ws              bytes -> WebSocket frames -> messages (pure)
//!  frame           Frame: one message encoded once (WebSocket bytes + rkyv envelope), by Arc
//!  outbound        OutboundQueue/WriteBatch: bounded queue, writev batch; outbound/log:
//!                  SessionLog; outbound/run: Run, a subject's frames end to end, per core
//!  owner           SubjectState: seq, history ring and dedup window of one subject
//!  trie            SubjectTrie: one level per token, `*` and `>` slots
//!  subject         subject/pattern syntax, matching, coverage
//!  auth            JWT verification and subject ACLs (grants compiled into tries, with the
//!                  token's identity); auth/token: one JWT's header, signature and claim checks;
//!                  auth/mint: making a token (`ringcast token`)
//!  schedule        Schedules: publishes due later (the data structure)
//!  store           HistoryStore: memory, or durable (fjall) written by the ringcast-store
//!                  thread with group commit; recovery; retention. Answers through StoreSink
//!  cluster         Bridge: cluster mode over NATS JetStream on the ringcast-nats thread
//!                  (tokio); answers through ClusterSink
//!  metrics         per-core counters, close reasons, Prometheus text
//!  cli             the command line: serve, --print-config, `ringcast token` (cli/token)
//!  config          Config: every option (flags, RINGCAST_* env vars, the --config TOML file:
//!                  config/file); config/reference: --print-config and docs/config.md;
//!                  config/live: what a reload applies
//!  reload          Reloader: SIGHUP re-reads the config, hands the live options to each core
//!                  (CoreMsg::Reload -> core/settings);  logging: the log and its filter
//!  varz            the same counters as JSON (`/varz`, polled by the operator page)
//!  connz           /connz query (filter, sort, window), rows, merge of the cores' parts
//!  limits          start-up checks of OS limits
//!  os              wall clock, kernel randomness, a socket's peer address
//!  demo            --demo-feed: synthetic price publisher for the demo page
//!  web/            the browser client (ringcast.js) and demo page, served at /ringcast.js and /;
//!                  admin.html, the operator page at /admin (canvas charts, no build step)
//! ```
//!
//! Dependencies point down this list (transport -> core -> leaf modules; store and cluster
//! know nothing of the cores: they answer through sink traits that `server` implements).
//!
//! # Data flow of one publish
//!
//! ```text
//!  client --pub--> core A: transport::ops --Request::Publish--> core O = owner_of(subject)
//!     core O: Sequencer: seq+1, ts, Frame::encode once, ring, dedup
//!             --Reply::Published--> core A --ok--> client
//!     core O: Arc<Frame> --CoreMsg::Deliver--> every core C (FIFO per core pair: seq order)
//!        core C: Fanout: trie match (cached) -> each matching client once -> its queue (Rc)
//!        client -> FlushList -> transport flusher -> writer: everything queued, one writev
//!  (every core-to-core message of a loop turn leaves through the core's Outbox: one bus
//!   message per destination; it is flushed before any ack or answer reaches a socket)
//!
//!  --data-dir:  core O --append (channel)--> ringcast-store thread: group commit to fjall
//!               (--durability sync: delivery and ack wait for CoreMsg::Durable)
//!  --nats-url:  core A --Bridge::publish--> ringcast-nats thread --JetStream (seq guard)-->
//!               every node's consumer --CoreMsg::Replicated--> core O --Deliver--> every core
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connz;
pub mod core;
pub mod demo;
pub mod frame;
pub mod http;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod os;
pub mod outbound;
pub mod owner;
pub mod proto;
pub mod reload;
pub mod schedule;
pub mod server;
pub mod store;
pub mod subject;
pub mod transport;
pub mod trie;
pub mod varz;
pub mod ws;
