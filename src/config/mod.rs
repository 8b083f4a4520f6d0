//! `Config`: every tunable of a node, from flags, `RINGCAST_*` environment variables (clap) and
//! a TOML config file (`--config`), in that order of precedence over the defaults.
//!
//! The struct below is the one source of every option: its doc comments and defaults are what
//! `--help`, `--print-config` and `docs/config.md` show. Rooms: [`file`] merges a TOML file
//! under the flags and env, [`reference`] renders the options (the effective TOML, the
//! Markdown reference), [`live`] says which options a reload (SIGHUP) applies to a running
//! node. Built on the main thread (at start-up, and again at each reload); each core keeps its
//! own copy of the options it reads per operation (`core::settings`).
//! Defaults are documented next to each field and are what `ringcast` runs with when given no
//! flags: loopback only, auth off.

pub mod file;
pub mod live;
pub mod reference;

use clap::Parser;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// ringcast: realtime fanout gateway (WebSocket + SSE), thread-per-core on io_uring.
///
/// Serialized (kebab-case keys, as the flags are named) only to render the effective config.
#[derive(Parser, Debug, Clone, Serialize)]
#[command(name = "ringcast", version, about, long_about = None)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    /// Address to listen on (one SO_REUSEPORT listener per core).
    #[arg(long, env = "RINGCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Number of cores (event-loop threads); default: every CPU this process may run on.
    #[arg(long, env = "RINGCAST_CORES")]
    pub cores: Option<usize>,

    /// Messages retained per subject for `since`, `snapshot` and `/history`.
    #[arg(long, env = "RINGCAST_HISTORY", default_value_t = 1024)]
    pub history: usize,

    /// Outbound bytes queued per connection before it counts as a slow consumer (close 4008,
    /// or conflation for `conflate` subscriptions).
    #[arg(long, env = "RINGCAST_MAX_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub max_queue_bytes: usize,

    /// Unsent bytes the kernel may hold per connection (`TCP_NOTSENT_LOWAT`); beyond them
    /// output waits in ringcast's own queue, where the slow-consumer policy and conflation act
    /// on it. 0 leaves the kernel's default (several MB per loopback socket, which a slow
    /// reader sits behind: its close frame, or the newest value, only after all of it).
    #[arg(long, env = "RINGCAST_MAX_UNSENT_BYTES", default_value_t = 128 << 10)]
    pub max_unsent_bytes: u32,

    /// Write pacing: after a flush pass that took D and wrote small sends, the next waits
    /// K x D, so that under load each connection's frames leave in fewer, larger writes
    /// (throughput), at the cost of up to K x D of added latency. 0: write as soon as output
    /// is queued. Measured on 2 cores with the price-feed shape (5,000 connections, 1,000
    /// subjects, 100k publishes/s): 0.5 delivered 330k msgs/s, 1 delivered 470k, 2 500k.
    #[arg(long, env = "RINGCAST_WRITE_PACING", default_value_t = 1.0)]
    pub write_pacing: f64,

    /// Largest WebSocket message accepted from a client (bigger: close 1009).
    #[arg(long, env = "RINGCAST_MAX_FRAME_BYTES", default_value_t = 64 << 10)]
    pub max_frame_bytes: usize,

    /// Largest HTTP request body (bigger: 413).
    #[arg(long, env = "RINGCAST_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Request-body bytes the whole node may be buffering at once (each request counts its
    /// `Content-Length` from its head until it is answered). A request whose body does not
    /// fit gets 503 and its connection is closed. 64 MiB: 64 bodies of the largest size at
    /// once, far above what a few thousand publishes per second in flight need.
    #[arg(long, env = "RINGCAST_MAX_BODY_BUFFER_BYTES", default_value_t = 64 << 20)]
    pub max_body_buffer_bytes: usize,

    /// Largest HTTP request head: request line plus headers (bigger: 431).
    #[arg(long, env = "RINGCAST_MAX_HEADER_BYTES", default_value_t = 16 << 10)]
    pub max_header_bytes: usize,

    /// Seconds without a publish after which a subject's history ring and de-duplication
    /// window are freed (the subject goes dormant: its seq and ts stay, so seq continues and
    /// is never reused; with a durable store history stays readable from it). Never sooner
    /// than `--dedup-secs`, so a retry inside the window is still recognised. 0: never.
    #[arg(long, env = "RINGCAST_SUBJECT_TTL", default_value_t = 3_600)]
    pub subject_ttl: u64,

    /// Most subjects the node keeps (dormant ones included), shared equally by the cores. A
    /// publish that would create one more gets 503 (standalone nodes; in cluster mode the
    /// stream decides). A dormant subject costs ~640 B (`tests/memory.rs`), so the default
    /// bounds subject state at ~160 MB besides the history rings.
    #[arg(long, env = "RINGCAST_MAX_SUBJECTS", default_value_t = 250_000)]
    pub max_subjects: usize,

    /// Bytes of history the node keeps in memory (its history rings), shared equally by the
    /// cores. Over it the oldest messages are evicted: first of the subject just published if
    /// it holds more than its fair share, else the oldest the core retains. A `since` past
    /// evicted history gets a `gap` (with a durable store, it is read from the store).
    #[arg(long, env = "RINGCAST_MAX_HISTORY_BYTES", default_value_t = 512 << 20)]
    pub max_history_bytes: usize,

    /// Publish de-duplication window per subject: how many recent `msg_id`s are remembered.
    #[arg(long, env = "RINGCAST_DEDUP_WINDOW", default_value_t = 10_000)]
    pub dedup_window: usize,

    /// Publish de-duplication window per subject: how long a `msg_id` is remembered, seconds.
    #[arg(long, env = "RINGCAST_DEDUP_SECS", default_value_t = 120)]
    pub dedup_secs: u64,

    /// Time allowed for a new connection to send a complete HTTP request (slowloris guard),
    /// and for an idle keep-alive HTTP connection before it is closed, milliseconds.
    #[arg(long, env = "RINGCAST_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// A WebSocket that sends nothing for this long gets a ping; one that stays silent for
    /// another interval is closed (half-open peers), milliseconds.
    #[arg(long, env = "RINGCAST_PING_INTERVAL_MS", default_value_t = 30_000)]
    pub ping_interval_ms: u64,

    /// Most open connections on this node; more get HTTP 503.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Listen backlog per core.
    #[arg(long, env = "RINGCAST_BACKLOG", default_value_t = 4096)]
    pub backlog: u32,

    /// I/O driver: `auto` (io_uring when the kernel has it, else epoll), `uring`, or `legacy`.
    #[arg(long, env = "RINGCAST_DRIVER", default_value = "auto")]
    pub driver: DriverChoice,

    /// HS256 shared secret for JWTs (at least 32 bytes). With no key configured, auth is off.
    #[arg(long, env = "RINGCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Path of a PEM public key (RSA: RS256, EC P-256: ES256) for JWTs.
    #[arg(long, env = "RINGCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// Required JWT `iss`.
    #[arg(long, env = "RINGCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required JWT `aud`.
    #[arg(long, env = "RINGCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock-skew allowance for `exp`/`nbf`, seconds.
    #[arg(long, env = "RINGCAST_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,

    /// A WebSocket opened without a token must send an `auth` op within this time, ms.
    #[arg(long, env = "RINGCAST_AUTH_TIMEOUT_MS", default_value_t = 5_000)]
    pub auth_timeout_ms: u64,

    /// Allow running without auth on a non-loopback address.
    #[arg(long, env = "RINGCAST_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Require a valid token for `/metrics` (when auth is on). `/healthz` is always open.
    #[arg(long, env = "RINGCAST_METRICS_REQUIRE_AUTH")]
    pub metrics_require_auth: bool,

    /// Most subscriptions per connection.
    #[arg(long, env = "RINGCAST_MAX_SUBS_PER_CONN", default_value_t = 1_000)]
    pub max_subs_per_conn: usize,

    /// Bytes the subscriptions of one connection may hold, as charged by
    /// `core::subscription::cost` (a fixed part, the pattern three times, a trie level per
    /// token: an upper bound of the heap they take). Over it: `err too_large`. The default
    /// fits 1,000 subscriptions of typical patterns (about 500 B each) and ~420 of the
    /// longest (16 tokens, 256 B).
    #[arg(long, env = "RINGCAST_MAX_SUB_BYTES_PER_CONN", default_value_t = 1 << 20)]
    pub max_sub_bytes_per_conn: usize,

    /// Inbound WebSocket messages per second per connection (token bucket, one second of
    /// burst), `pub` ops excepted (they count against `--max-publish-per-sec`); a `pubs`
    /// batch counts one. Over it: `err rate_limited`; persistent abuse: close 4029.
    #[arg(long, env = "RINGCAST_MAX_MSGS_PER_SEC", default_value_t = 10_000)]
    pub max_msgs_per_sec: u32,

    /// Publishes per second per connection (WebSocket, or keep-alive HTTP connection) for
    /// tokens without a `max_publish_rate` claim and connections without a token (token
    /// bucket, one second of burst; 0: unlimited). Every message counts one: a `pub`, each
    /// message of a `pubs` batch, each item of an array `POST /publish`. Over it: `err
    /// rate_limited` / HTTP 429 with `retry_after_ms`. 100,000: a busy market-data feed (a
    /// few thousand instruments ticking several times a second) fits on one connection ten
    /// times over, while one connection still cannot take more than a fraction of what a
    /// core sequences.
    #[arg(long, env = "RINGCAST_MAX_PUBLISH_PER_SEC", default_value_t = 100_000)]
    pub max_publish_per_sec: u32,

    /// Rate-limited messages in a row after which the connection is closed with 4029.
    #[arg(long, env = "RINGCAST_RATE_ABUSE_LIMIT", default_value_t = 1_000)]
    pub rate_abuse_limit: u32,

    /// New connections accepted per second on the node (0: unlimited); more get HTTP 503.
    #[arg(long, env = "RINGCAST_MAX_ACCEPT_PER_SEC", default_value_t = 50_000)]
    pub max_accept_per_sec: u32,

    /// Browser origins allowed to open WebSockets (comma-separated, exact match). Empty: any.
    /// Requests without an `Origin` header (non-browser clients) are not affected.
    #[arg(long, env = "RINGCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Serve `GET /ws/echo`, an echo WebSocket on the same connection machinery, for RFC 6455
    /// conformance suites (Autobahn).
    #[arg(long, env = "RINGCAST_ECHO_ENDPOINT")]
    pub echo_endpoint: bool,

    /// How long a disconnected session is kept for `resume` / `Last-Event-ID`, seconds.
    #[arg(long, env = "RINGCAST_SESSION_TTL", default_value_t = 60)]
    pub session_ttl: u64,

    /// Messages a session keeps (as references to shared frames) for an exact resume.
    #[arg(long, env = "RINGCAST_SESSION_RETAIN", default_value_t = 1_000)]
    pub session_retain: usize,

    /// Sessions kept without a socket, node-wide (each core keeps its share); past it the
    /// longest-detached is dropped. Bounds what connect-subscribe-drop loops can pile up.
    #[arg(long, env = "RINGCAST_MAX_DETACHED_SESSIONS", default_value_t = 10_000)]
    pub max_detached_sessions: usize,

    /// Bytes detached sessions may keep alive, node-wide (each core keeps its share), counted
    /// as an upper bound (a logged frame in full for every session holding it); past it the
    /// longest-detached sessions are dropped.
    #[arg(long, env = "RINGCAST_MAX_DETACHED_BYTES", default_value_t = 1 << 30)]
    pub max_detached_bytes: usize,

    /// Seconds between SSE heartbeat comments (proxies close silent streams).
    #[arg(long, env = "RINGCAST_SSE_HEARTBEAT_SECS", default_value_t = 15)]
    pub sse_heartbeat_secs: u64,

    /// Start a built-in synthetic price publisher (`prices.<PAIR>`, a few ticks per second per
    /// instrument) so the demo page at `/` moves right away.
    #[arg(long, env = "RINGCAST_DEMO_FEED")]
    pub demo_feed: bool,

    /// Bytes of pending scheduled publishes the node keeps (subject, data and id, plus a
    /// fixed overhead each), shared equally by the cores. Over it: 503.
    #[arg(long, env = "RINGCAST_MAX_SCHEDULE_BYTES", default_value_t = 64 << 20)]
    pub max_schedule_bytes: usize,

    /// How far ahead a scheduled publish may be due, seconds (default 7 days). A later `at`
    /// gets 400.
    #[arg(long, env = "RINGCAST_MAX_SCHEDULE_HORIZON", default_value_t = 7 * 86_400)]
    pub max_schedule_horizon: u64,

    /// Directory of the durable store (history, seqs, dedup ids, pending schedules survive a
    /// restart). Unset: memory only.
    #[arg(long, env = "RINGCAST_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,

    /// What an acknowledged publish survives: `none` (memory only), `batch` (acknowledged
    /// before fsync; fsync every --fsync-interval-ms), `sync` (acknowledged and delivered after
    /// the fsync of its group). Default: `batch` with --data-dir, else `none`.
    #[arg(long, env = "RINGCAST_DURABILITY")]
    pub durability: Option<crate::store::Durability>,

    /// `batch` durability: most time between a commit and its fsync, milliseconds.
    #[arg(long, env = "RINGCAST_FSYNC_INTERVAL_MS", default_value_t = 5)]
    pub fsync_interval_ms: u64,

    /// Stored-history retention per subject pattern, `PATTERN=count:N,age:DUR` (DUR: 30s, 15m,
    /// 2h, 7d), repeatable; the first matching pattern wins; `>=...` sets the default
    /// (count:10000, no age limit).
    #[arg(long, env = "RINGCAST_RETENTION", value_delimiter = ';')]
    pub retention: Vec<String>,

    /// Store operations queued for the storage thread beyond which publishes get 503 instead
    /// of waiting (bounds the memory a slow disk can pin).
    #[arg(long, env = "RINGCAST_STORE_MAX_BACKLOG", default_value_t = crate::store::MAX_BACKLOG)]
    pub store_max_backlog: usize,

    /// Cluster mode: the NATS server (JetStream enabled) that nodes share, e.g.
    /// `nats://127.0.0.1:4222`. Every publish is sequenced and logged by JetStream and every
    /// node fans out the whole stream. Unset: a standalone node.
    #[arg(long, env = "RINGCAST_NATS_URL")]
    pub nats_url: Option<String>,

    /// Cluster mode: the JetStream stream (created when missing).
    #[arg(long, env = "RINGCAST_NATS_STREAM", default_value = "RINGCAST")]
    pub nats_stream: String,

    /// Cluster mode: ringcast subject S is the stream subject `<prefix>.S`.
    #[arg(long, env = "RINGCAST_NATS_PREFIX", default_value = "ringcast")]
    pub nats_prefix: String,

    /// Cluster mode: replicas of the stream when ringcast creates it (NATS cluster size).
    #[arg(long, env = "RINGCAST_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,

    /// Cluster mode: messages the stream keeps per subject (history beyond the ring is read
    /// from it).
    #[arg(
        long,
        env = "RINGCAST_NATS_MAX_MSGS_PER_SUBJECT",
        default_value_t = 10_000
    )]
    pub nats_max_msgs_per_subject: i64,

    /// How long shutdown waits for connections to flush their close frames, milliseconds.
    #[arg(long, env = "RINGCAST_SHUTDOWN_GRACE_MS", default_value_t = 2_000)]
    pub shutdown_grace_ms: u64,

    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or per-module directives
    /// (`info,ringcast::store=debug`, tracing-subscriber's `EnvFilter` syntax). The log goes to
    /// stderr. The default shows ringcast's own INFO lines and only warnings of the store's
    /// engine (fjall logs every journal and segment recovery at INFO); `info` shows those too.
    #[arg(long, env = "RINGCAST_LOG", default_value = "info,fjall=warn,lsm_tree=warn", value_parser = log_filter)]
    pub log: String,

    /// Drain (SIGUSR2 or `POST /admin/drain`): how long the node waits for its connections to
    /// go before it stops anyway, milliseconds. 30 s: long enough for every client to get its
    /// close and for requests in flight to be answered; an idle keep-alive HTTP connection
    /// ends within `--handshake-timeout-ms`.
    #[arg(long, env = "RINGCAST_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,

    /// Drain: the largest `retry_ms` hint a connection is given; each gets its own, spread
    /// evenly over 0..=this, so the reconnects of N clients spread over this long instead of
    /// landing on the peers at once. Milliseconds.
    #[arg(long, env = "RINGCAST_DRAIN_RETRY_MS", default_value_t = 5_000)]
    pub drain_retry_ms: u64,
}

/// `--log`: a valid `EnvFilter` directive string, kept as given.
fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a log filter: {e}"))
}

/// Which monoio driver the cores run on.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// io_uring if the kernel supports it, else the legacy epoll driver (logged).
    Auto,
    /// io_uring only (fails to start without it).
    Uring,
    /// The legacy epoll driver.
    Legacy,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["ringcast"])
    }
}

impl Config {
    /// Every option that has a value, by its key (the flag's name), as TOML values.
    pub fn as_table(&self) -> toml::Table {
        // Every field is a number, a string, a bool, a list of strings or a value enum; a
        // path that is not UTF-8 is the one thing TOML cannot hold: shown lossily instead.
        toml::Table::try_from(self).unwrap_or_else(|_| {
            let mut lossy = self.clone();
            let fix = |p: &mut Option<std::path::PathBuf>| {
                if let Some(q) = p {
                    *q = q.to_string_lossy().into_owned().into();
                }
            };
            fix(&mut lossy.jwt_public_key);
            fix(&mut lossy.data_dir);
            toml::Table::try_from(&lossy).unwrap_or_default()
        })
    }

    /// Number of cores to run: `--cores`, else the CPUs available to this process.
    pub fn core_count(&self) -> usize {
        self.cores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, crate::bus::MAX_CORES)
    }

    /// `--handshake-timeout-ms` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// `--ping-interval-ms` as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.max(1))
    }

    /// The auth settings (reads the public key file).
    pub fn auth_config(&self) -> std::io::Result<crate::auth::AuthConfig> {
        let public_key_pem = match &self.jwt_public_key {
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                std::io::Error::new(e.kind(), format!("--jwt-public-key {}: {e}", p.display()))
            })?),
            None => None,
        };
        Ok(crate::auth::AuthConfig {
            secret: self.jwt_secret.clone(),
            public_key_pem,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway_secs: self.jwt_leeway_secs,
        })
    }

    /// The effective durability: `--durability`, else `batch` with `--data-dir`, else `none`.
    pub fn effective_durability(&self) -> crate::store::Durability {
        use crate::store::Durability;
        match (self.durability, &self.data_dir) {
            (Some(d), _) => d,
            (None, Some(_)) => Durability::Batch,
            (None, None) => Durability::None,
        }
    }

    /// Cluster-mode settings, when `--nats-url` is set.
    pub fn cluster_config(&self) -> Option<crate::cluster::ClusterConfig> {
        Some(crate::cluster::ClusterConfig {
            url: self.nats_url.clone()?,
            stream: self.nats_stream.clone(),
            prefix: self.nats_prefix.clone(),
            replicas: self.nats_replicas.max(1),
            max_msgs_per_subject: self.nats_max_msgs_per_subject.max(1),
            duplicate_window: Duration::from_secs(self.dedup_secs.max(1)),
            ..Default::default()
        })
    }

    /// HTTP parse limits.
    pub fn http_limits(&self) -> crate::http::Limits {
        crate::http::Limits {
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
        }
    }
}
