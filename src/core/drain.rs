//! How a node leaves: the drain of a rolling deploy, then shutdown.
//!
//! ```text
//!  SIGUSR2 / POST /admin/drain -> begin(node): Node::draining (/healthz 503 `draining`),
//!        CoreMsg::Drain to every core, the ringcast-drain watcher thread
//!  each core, Core::begin_drain: retained sessions end (nothing resumes here any more);
//!        every WebSocket: close 1012 {"reason":"draining","retry_ms":N}; every SSE stream:
//!        `retry: N`, `event: drain` with the same JSON, then it ends. From then on the
//!        core's transport answers new upgrades and streams 503 + Retry-After, publishes
//!        `draining`, and every HTTP answer closes its connection
//!  watcher: once the node has no connection open (or after --drain-timeout-ms) ->
//!        Node::stop -> CoreMsg::Shutdown -> Core::begin_shutdown: 1001 for whatever is
//!        left, the cores finish, the store is flushed, the process exits 0
//! ```
//!
//! N is each connection's own, spread evenly over `0..=--drain-retry-ms`, so clients do not
//! all reconnect to the peers at once. Nothing acknowledged is lost: a publish acknowledged
//! before the drain is delivered and stored as ever (in cluster mode it is in the stream, and
//! a client resumes on a peer with `since`); an HTTP request in flight is answered before the
//! node stops (its connection counts until then); a publish that arrives after the drain
//! began is refused with `draining`, to be retried on a peer.
//!
//! Threads: [`begin`] runs on any thread (the signal thread, a core serving the admin call);
//! the `Core` methods on the core's own thread; the watcher reads only the node's atomics.

use super::{Client, ConnKind, Core, CoreMsg, Node};
use crate::metrics::CloseReason;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the watcher reads the node's connection count. A drain happens once in a
/// process's life; this adds at most 10 ms to its end.
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// Begins a drain of `node`; true when this call began it (false: a drain or shutdown is
/// already under way).
pub fn begin(node: &Arc<Node>) -> bool {
    if node.shutting_down.load(Ordering::Acquire) || node.draining.swap(true, Ordering::AcqRel) {
        return false;
    }
    let timeout_ms = node.cfg.drain_timeout_ms;
    let retry_ms = node.cfg.drain_retry_ms;
    tracing::info!(
        timeout_ms,
        retry_ms,
        "draining: sending every client elsewhere"
    );
    for core in 0..node.cores() {
        node.bus.send(core, CoreMsg::Drain);
    }
    let watched = node.clone();
    let watcher = std::thread::Builder::new()
        .name("ringcast-drain".into())
        .spawn(move || watch(&watched));
    if let Err(e) = watcher {
        tracing::error!("could not start the drain watcher ({e}); stopping now");
        node.stop();
    }
    true
}

/// Stops the node once its last connection is gone, or at the drain's deadline.
fn watch(node: &Node) {
    let deadline = Instant::now() + Duration::from_millis(node.cfg.drain_timeout_ms);
    loop {
        if node.shutting_down.load(Ordering::Acquire) {
            return; // stopped meanwhile (SIGTERM, or the owner of an embedded node)
        }
        let open = node.connections.load(Ordering::Relaxed);
        if open == 0 {
            tracing::info!("drained: no connection left; stopping");
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(open, "drain timeout (--drain-timeout-ms): stopping anyway");
            break;
        }
        std::thread::sleep(WATCH_EVERY);
    }
    node.stop();
}

/// `{"reason":"draining","retry_ms":N}`: the close reason of a drained WebSocket (and the
/// data of an SSE stream's `drain` event, with `"op":"drain"` in front).
fn reason_json(out: &mut Vec<u8>, retry_ms: u64) {
    out.extend_from_slice(br#""reason":"draining","retry_ms":"#);
    out.extend_from_slice(itoa::Buffer::new().format(retry_ms).as_bytes());
    out.push(b'}');
}

impl Core {
    /// True once this core began draining.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// A retry hint in `0..=--drain-retry-ms`, picked by `salt` (random: a session key, or
    /// kernel randomness), so that many clients' hints spread evenly over the range.
    pub fn retry_hint(&self, salt: u64) -> u64 {
        salt % self.cfg().drain_retry_ms.saturating_add(1)
    }

    /// Core side of a drain: retained sessions end; every open connection is sent away.
    pub(super) fn begin_drain(&self) {
        if self.shutting_down.get() || self.draining.replace(true) {
            return;
        }
        self.end_every_session(|c| self.send_away(c));
    }

    /// Tells one connection to reconnect elsewhere after its retry hint, and closes it: a
    /// WebSocket with close 1012 and the reason JSON; an SSE stream with `retry:` (which an
    /// `EventSource` obeys by itself) and a `drain` event, then it ends. Also for a
    /// connection that registered after its core began draining.
    pub fn send_away(&self, c: &Client) {
        let retry_ms = self.retry_hint(c.key);
        let mut last = Vec::with_capacity(96);
        if c.kind == ConnKind::Sse {
            last.extend_from_slice(b"retry: ");
            last.extend_from_slice(itoa::Buffer::new().format(retry_ms).as_bytes());
            last.extend_from_slice(b"\n\nevent: drain\ndata: {\"op\":\"drain\",");
            reason_json(&mut last, retry_ms);
            last.extend_from_slice(b"\n\n");
        } else {
            let mut reason = Vec::with_capacity(48);
            reason.push(b'{');
            reason_json(&mut reason, retry_ms);
            let text = std::str::from_utf8(&reason).expect("ASCII");
            last = crate::ws::close_frame(crate::ws::close::SERVICE_RESTART, text);
        }
        c.close_with(self.metrics(), CloseReason::Draining, Some(last.into()));
    }

    /// Starts shutdown on this core: every connection gets close 1001.
    pub fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        self.end_every_session(|c| {
            let code = crate::ws::close::GOING_AWAY;
            let why = "server shutting down";
            c.close(self.metrics(), CloseReason::Shutdown, code, why);
        });
        self.shutdown.notify();
    }

    /// The node is leaving: retained sessions are dropped (nothing can resume them here) and
    /// every connected one gets `close_one`.
    fn end_every_session(&self, close_one: impl Fn(&Client)) {
        let clients = self.sessions.borrow().all();
        for c in clients {
            if c.is_detached() {
                self.unregister(&c);
            } else {
                close_one(&c);
            }
        }
    }
}
