//! `Config`: every tunable of a node, from flags and `RINGCAST_*` environment variables (clap).
//!
//! Built once on the main thread at start-up, then shared read-only (`Arc<Config>`) with every
//! core. Defaults are documented next to each field and are what `ringcast` runs with when given
//! no flags: loopback only, auth off.

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;

/// ringcast: realtime fanout gateway (WebSocket + SSE), thread-per-core on io_uring.
#[derive(Parser, Debug, Clone)]
#[command(name = "ringcast", version, about, long_about = None)]
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

    /// Largest WebSocket message accepted from a client (bigger: close 1009).
    #[arg(long, env = "RINGCAST_MAX_FRAME_BYTES", default_value_t = 64 << 10)]
    pub max_frame_bytes: usize,

    /// Largest HTTP request body (bigger: 413).
    #[arg(long, env = "RINGCAST_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Largest HTTP request head: request line plus headers (bigger: 431).
    #[arg(long, env = "RINGCAST_MAX_HEADER_BYTES", default_value_t = 16 << 10)]
    pub max_header_bytes: usize,

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

    /// How long shutdown waits for connections to flush their close frames, milliseconds.
    #[arg(long, env = "RINGCAST_SHUTDOWN_GRACE_MS", default_value_t = 2_000)]
    pub shutdown_grace_ms: u64,
}

/// Which monoio driver the cores run on.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
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

    /// HTTP parse limits.
    pub fn http_limits(&self) -> crate::http::Limits {
        crate::http::Limits {
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
        }
    }
}
