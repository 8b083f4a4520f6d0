//! ringcast: a realtime fanout gateway. Publishers push JSON messages onto subjects; ringcast
//! sequences each one, encodes it once, and delivers it to every subscriber over WebSocket,
//! in order, with history, snapshots and de-duplication.
//!
//! # Layout
//!
//! ```text
//!  server   start-up: one pinned thread per core, each a monoio runtime (io_uring or epoll),
//!           one SO_REUSEPORT listener per core; shutdown on SIGINT/SIGTERM
//!  conn     a connection's life on its core: HTTP keep-alive, then WebSocket or SSE
//!           (reader + on-demand writer), endpoints, auth at the door
//!  http     bytes -> HTTP request; responses            (pure, no sockets)
//!  ws       bytes -> WebSocket frames -> messages       (pure, no sockets)
//!  proto    message -> ClientOp; control replies        (pure, no sockets)
//!  shard    Core: a core's subscriptions (trie + cache), connections and sessions (resume
//!           hand-over between cores), owned subjects, scheduled publishes
//!  owner    SubjectState: seq, history ring, dedup window of one subject (owner core only)
//!  frame    Frame: one message encoded once (WebSocket bytes + rkyv envelope), shared by Arc
//!  outbound OutboundQueue/WriteBatch/SessionLog: bounded per-connection queue, coalesced
//!           writev (WebSocket or SSE framing), the session's sent-message log
//!  bus      the only cross-core path: crossbeam channels + doorbells
//!  trie     SubjectTrie: one level per token, `*` and `>` slots
//!  subject  subject/pattern syntax, matching, coverage
//!  metrics  per-core counters, close reasons, Prometheus text
//!  config   flags and RINGCAST_* env vars
//!  limits   start-up checks of OS limits (nofile, memlock, somaxconn)
//!  auth     JWT verification and subject ACLs (grants compiled into tries)
//!  schedule Schedules: publishes due later, kept and fired by the owner core
//!  store    HistoryStore: memory, or durable (fjall) written by the ringcast-store thread
//!           with group commit; recovery at start-up; retention by count and age
//!  cluster  Bridge: cluster mode over NATS JetStream (the stream sequences, logs and carries
//!           messages between nodes); its own thread `ringcast-nats` with a tokio runtime
//!  demo     --demo-feed: synthetic price publisher for the demo page
//!  web/     the browser client (ringcast.js) and demo page, served at /ringcast.js and /
//! ```
//!
//! # Data flow of one publish
//!
//! ```text
//!  client --pub--> core A (conn) --BusMsg::Publish--> core O = owner_of(subject)
//!     core O: seq+1, ts, Frame::encode once, history ring, dedup   --PubDone--> core A --ok--> client
//!     core O: Arc<Frame> --BusMsg::Deliver--> every core C (FIFO per core pair: seq order kept)
//!        core C: trie match (cached) -> each matching conn once -> OutboundQueue (Rc ref)
//!        conn writer: everything queued -> one writev
//!
//!  --data-dir:  core O --append (channel)--> ringcast-store thread: group commit to fjall
//!               (--durability sync: delivery and ack wait for BusMsg::Durable)
//!  --nats-url:  core A --Bridge::publish--> ringcast-nats thread --JetStream (seq guard)-->
//!               every node's consumer --BusMsg::Replicated--> core O --Deliver--> every core
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod demo;
pub mod frame;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod os;
pub mod outbound;
pub mod owner;
pub mod proto;
pub mod schedule;
pub mod server;
pub mod shard;
pub mod store;
pub mod subject;
pub mod trie;
pub mod ws;
