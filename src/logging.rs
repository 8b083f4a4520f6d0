//! The log: `tracing` events to stderr, through a filter that a reload can replace (`log`).
//!
//! Owns the process's one subscriber, installed once by the binary before the node starts,
//! and the handle that swaps its filter. The filter sits in tracing-subscriber's reload layer:
//! events that the filter disables are never built (their callsites are cached as disabled,
//! and the cache is rebuilt on a swap), so the layer's lock is taken only by events that are
//! logged anyway. Any thread logs; the handle is used on the signal thread.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Replaces the log filter of the running process.
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

/// Installs the subscriber (stderr, colours on a terminal) with `filter` (`--log`; already
/// validated by the config parser, else `info`).
pub fn init(filter: &str) -> LogHandle {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .init();
    LogHandle(handle)
}

impl LogHandle {
    /// Logs through `filter` from now on.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let f = EnvFilter::try_new(filter).map_err(|e| format!("log filter {filter:?}: {e}"))?;
        self.0.reload(f).map_err(|e| format!("log filter: {e}"))
    }
}
