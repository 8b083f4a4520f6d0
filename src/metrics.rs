//! Per-core counters and the Prometheus text rendering of `/metrics`.
//!
//! Each core owns one cache-line-aligned `CoreMetrics` and is its only writer (plain
//! load+store, no locked instructions on the hot path); any core may read all of them to render
//! `/metrics`. Why connections closed is a [`CloseReason`], counted per reason.

mod render;
pub use render::render;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a connection ended. Feeds the `ringcast_closes_total{reason}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed (EOF or close frame).
    ClientClosed,
    /// Node shutting down (close 1001).
    Shutdown,
    /// Outbound queue over its limit (close 4008).
    SlowConsumer,
    /// RFC 6455 violation (close 1002).
    ProtocolError,
    /// Message over `--max-frame-bytes` (close 1009).
    TooBig,
    /// Invalid UTF-8 text (close 1007).
    BadUtf8,
    /// Silent peer: no answer to our ping, or no request in time.
    Timeout,
    /// A socket error.
    IoError,
    /// A bad HTTP request or upgrade.
    BadRequest,
    /// No valid token in time, or the token expired (close 4001).
    Unauthorized,
    /// Too many messages for too long (close 4029).
    RateLimited,
    /// Its session was resumed by a new connection of the same identity (close 1000).
    Replaced,
    /// The node is draining for a restart (close 1012 with a `retry_ms` hint; an SSE stream's
    /// `drain` event).
    Draining,
}

impl CloseReason {
    /// All reasons, in metric order.
    pub const ALL: [CloseReason; 13] = [
        CloseReason::ClientClosed,
        CloseReason::Shutdown,
        CloseReason::SlowConsumer,
        CloseReason::ProtocolError,
        CloseReason::TooBig,
        CloseReason::BadUtf8,
        CloseReason::Timeout,
        CloseReason::IoError,
        CloseReason::BadRequest,
        CloseReason::Unauthorized,
        CloseReason::RateLimited,
        CloseReason::Replaced,
        CloseReason::Draining,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TooBig => "too_big",
            CloseReason::BadUtf8 => "bad_utf8",
            CloseReason::Timeout => "timeout",
            CloseReason::IoError => "io_error",
            CloseReason::BadRequest => "bad_request",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Replaced => "replaced",
            CloseReason::Draining => "draining",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).expect("listed")
    }
}

/// A budget a client ran into: what was refused, with a clear error, instead of growing.
/// Feeds the `ringcast_budget_refusals_total{budget}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// `--max-subs-per-conn`: a subscription past the count.
    Subscriptions,
    /// `--max-sub-bytes-per-conn`: a subscription past the connection's subscription bytes.
    SubscriptionBytes,
    /// `--max-body-buffer-bytes`: a request body past the node's buffered body bytes (503).
    BodyBytes,
    /// `--max-subjects`: a publish that would create a subject past the node's count (503).
    Subjects,
    /// `--max-schedule-bytes` or the per-core count: a scheduled publish past the budget.
    ScheduleBytes,
    /// `--max-schedule-horizon`: an `at` too far ahead (400).
    ScheduleHorizon,
}

impl Budget {
    /// All budgets, in metric order.
    pub const ALL: [Budget; 6] = [
        Budget::Subscriptions,
        Budget::SubscriptionBytes,
        Budget::BodyBytes,
        Budget::Subjects,
        Budget::ScheduleBytes,
        Budget::ScheduleHorizon,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Budget::Subscriptions => "subscriptions",
            Budget::SubscriptionBytes => "subscription_bytes",
            Budget::BodyBytes => "body_bytes",
            Budget::Subjects => "subjects",
            Budget::ScheduleBytes => "schedule_bytes",
            Budget::ScheduleHorizon => "schedule_horizon",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|b| *b == self).expect("listed")
    }
}

/// Why a publish was refused before reaching its sequencer. Feeds the
/// `ringcast_publishes_refused_total{reason}` metric (one count per message: a `pub`, one
/// message of a batch, one `POST /publish` item).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefusal {
    /// Over the connection's publish limit (`--max-publish-per-sec`, `max_publish_rate`).
    RateLimited,
    /// The token does not grant publishing on the subject.
    Forbidden,
    /// The node is draining: publish to a peer (HTTP 503 `draining`).
    Draining,
}

impl PublishRefusal {
    /// All reasons, in metric order.
    pub const ALL: [PublishRefusal; 3] = [
        PublishRefusal::RateLimited,
        PublishRefusal::Forbidden,
        PublishRefusal::Draining,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            PublishRefusal::RateLimited => "rate_limited",
            PublishRefusal::Forbidden => "forbidden",
            PublishRefusal::Draining => "draining",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).expect("listed")
    }
}

/// Counters of one core. Written only by that core's thread.
#[derive(Default)]
#[repr(align(128))]
pub struct CoreMetrics {
    /// Open connections (gauge).
    pub connections: AtomicU64,
    /// Open WebSocket connections (gauge).
    pub websockets: AtomicU64,
    /// Active subscriptions (gauge).
    pub subscriptions: AtomicU64,
    /// Publishes accepted and sequenced by this core as subject owner.
    pub published: AtomicU64,
    /// Publishes answered as duplicates by this core as subject owner.
    pub duplicates: AtomicU64,
    /// Messages queued to local connections.
    pub delivered: AtomicU64,
    /// Messages dropped: replaced by conflation or discarded with a slow consumer's queue.
    pub dropped: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Socket writes (each carries one or more frames).
    pub writes: AtomicU64,
    /// HTTP requests served.
    pub http_requests: AtomicU64,
    /// Connections refused because the node is full, or (a WebSocket or SSE stream) draining.
    pub rejected: AtomicU64,
    /// Resumes refused because the session belongs to another identity.
    pub resumes_refused: AtomicU64,
    /// Retained sessions without a socket (gauge, updated by the sweep).
    pub sessions_detached: AtomicU64,
    /// Bytes the detached sessions keep alive, an upper bound (gauge, updated by the sweep).
    pub detached_bytes: AtomicU64,
    /// Detached sessions dropped before their TTL: over a budget, or unable to serve any
    /// resume any more.
    pub sessions_evicted: AtomicU64,
    /// Bytes charged to the subscriptions of this core's connections (gauge; see
    /// `core::subscription::cost`).
    pub subscription_bytes: AtomicU64,
    /// Subjects this core owns, dormant ones included (gauge).
    pub subjects: AtomicU64,
    /// Owned subjects whose history and dedup window expired (gauge).
    pub subjects_dormant: AtomicU64,
    /// Bytes of the frames in this core's history rings (gauge).
    pub history_bytes: AtomicU64,
    /// Retained messages evicted to keep this core's share of `--max-history-bytes`.
    pub history_evicted: AtomicU64,
    /// Subjects that went dormant after `--subject-ttl` without a publish.
    pub subjects_expired: AtomicU64,
    /// Bytes of this core's pending scheduled publishes (gauge).
    pub schedule_bytes: AtomicU64,
    /// Bytes of this core's match cache (gauge).
    pub match_cache_bytes: AtomicU64,
    /// Bytes in the outbound queues of this core's connections (gauge, updated by the sweep).
    pub queue_bytes: AtomicU64,
    /// Age (ms) of the oldest message still queued to any of this core's connections (gauge,
    /// updated by the sweep; 0: every queue is empty).
    pub queue_lag_ms: AtomicU64,
    closes: [AtomicU64; CloseReason::ALL.len()],
    refusals: [AtomicU64; Budget::ALL.len()],
    publish_refusals: [AtomicU64; PublishRefusal::ALL.len()],
}

/// Adds `n` to a counter that only the calling thread writes (no locked instruction).
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Sets a single-writer gauge.
#[inline]
pub fn set(c: &AtomicU64, v: u64) {
    c.store(v, Relaxed);
}

/// Subtracts `n` from a single-writer gauge.
#[inline]
pub fn sub(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_sub(n), Relaxed);
}

impl CoreMetrics {
    /// Counts one close.
    pub fn closed(&self, reason: CloseReason) {
        add(&self.closes[reason.index()], 1);
    }

    /// Closes counted for a reason.
    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes[reason.index()].load(Relaxed)
    }

    /// Counts one request refused by `budget`.
    pub fn refused(&self, budget: Budget) {
        add(&self.refusals[budget.index()], 1);
    }

    /// Requests refused by a budget.
    pub fn refusals(&self, budget: Budget) -> u64 {
        self.refusals[budget.index()].load(Relaxed)
    }

    /// Counts one publish refused for `reason`.
    pub fn refused_publish(&self, reason: PublishRefusal) {
        add(&self.publish_refusals[reason.index()], 1);
    }

    /// Publishes refused for a reason.
    pub fn publish_refusals(&self, reason: PublishRefusal) -> u64 {
        self.publish_refusals[reason.index()].load(Relaxed)
    }
}

/// A per-core series of `/metrics`: name, type, help, and how to read it from a core.
pub type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&CoreMetrics) -> u64,
);

/// Every per-core series, in output order (`/metrics`, and the stats JSON of `/varz`).
pub const SERIES: [Series; 26] = [
    ("ringcast_connections", "gauge", "Open connections.", |m| {
        m.connections.load(Relaxed)
    }),
    (
        "ringcast_websockets",
        "gauge",
        "Open WebSocket connections.",
        |m| m.websockets.load(Relaxed),
    ),
    (
        "ringcast_subscriptions",
        "gauge",
        "Active subscriptions.",
        |m| m.subscriptions.load(Relaxed),
    ),
    (
        "ringcast_published_total",
        "counter",
        "Publishes sequenced (by owner core).",
        |m| m.published.load(Relaxed),
    ),
    (
        "ringcast_duplicates_total",
        "counter",
        "Publishes answered as duplicates.",
        |m| m.duplicates.load(Relaxed),
    ),
    (
        "ringcast_delivered_total",
        "counter",
        "Messages queued to connections.",
        |m| m.delivered.load(Relaxed),
    ),
    (
        "ringcast_dropped_total",
        "counter",
        "Messages conflated away or discarded.",
        |m| m.dropped.load(Relaxed),
    ),
    (
        "ringcast_bytes_out_total",
        "counter",
        "Bytes written to sockets.",
        |m| m.bytes_out.load(Relaxed),
    ),
    (
        "ringcast_writes_total",
        "counter",
        "Socket writes (coalesced frames).",
        |m| m.writes.load(Relaxed),
    ),
    (
        "ringcast_http_requests_total",
        "counter",
        "HTTP requests served.",
        |m| m.http_requests.load(Relaxed),
    ),
    (
        "ringcast_rejected_total",
        "counter",
        "Connections refused (node full or out of fds).",
        |m| m.rejected.load(Relaxed),
    ),
    (
        "ringcast_resumes_refused_total",
        "counter",
        "Resumes of a session by another identity, refused.",
        |m| m.resumes_refused.load(Relaxed),
    ),
    (
        "ringcast_sessions_detached",
        "gauge",
        "Retained sessions without a socket.",
        |m| m.sessions_detached.load(Relaxed),
    ),
    (
        "ringcast_detached_bytes",
        "gauge",
        "Bytes detached sessions keep alive (upper bound: shared frames counted in full).",
        |m| m.detached_bytes.load(Relaxed),
    ),
    (
        "ringcast_sessions_evicted_total",
        "counter",
        "Detached sessions dropped before their TTL (over a budget, or past resuming).",
        |m| m.sessions_evicted.load(Relaxed),
    ),
    (
        "ringcast_slow_consumer_closes_total",
        "counter",
        "Connections closed as slow consumers.",
        |m| m.closes(CloseReason::SlowConsumer),
    ),
    (
        "ringcast_subscription_bytes",
        "gauge",
        "Bytes charged to subscriptions (--max-sub-bytes-per-conn).",
        |m| m.subscription_bytes.load(Relaxed),
    ),
    (
        "ringcast_subjects",
        "gauge",
        "Subjects owned, dormant ones included (--max-subjects).",
        |m| m.subjects.load(Relaxed),
    ),
    (
        "ringcast_subjects_dormant",
        "gauge",
        "Owned subjects whose history expired (--subject-ttl); their seq is kept.",
        |m| m.subjects_dormant.load(Relaxed),
    ),
    (
        "ringcast_subjects_expired_total",
        "counter",
        "Subjects whose history expired after --subject-ttl without a publish.",
        |m| m.subjects_expired.load(Relaxed),
    ),
    (
        "ringcast_history_bytes",
        "gauge",
        "Bytes of retained history in memory (--max-history-bytes).",
        |m| m.history_bytes.load(Relaxed),
    ),
    (
        "ringcast_history_evicted_total",
        "counter",
        "Retained messages evicted to stay within --max-history-bytes.",
        |m| m.history_evicted.load(Relaxed),
    ),
    (
        "ringcast_schedule_bytes",
        "gauge",
        "Bytes of pending scheduled publishes (--max-schedule-bytes).",
        |m| m.schedule_bytes.load(Relaxed),
    ),
    (
        "ringcast_match_cache_bytes",
        "gauge",
        "Bytes of the subject match cache (MATCH_CACHE_BYTES per core).",
        |m| m.match_cache_bytes.load(Relaxed),
    ),
    (
        "ringcast_queue_bytes",
        "gauge",
        "Bytes queued to connections, not yet written (--max-queue-bytes each).",
        |m| m.queue_bytes.load(Relaxed),
    ),
    (
        "ringcast_queue_lag_ms",
        "gauge",
        "Age of the oldest message still queued to a connection, ms (0: queues empty).",
        |m| m.queue_lag_ms.load(Relaxed),
    ),
];

/// One node-wide series (no `core` label), e.g. of the store or the cluster bridge.
#[derive(Debug, Clone, Copy)]
pub struct NodeSeries {
    /// Metric name.
    pub name: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Current value.
    pub value: u64,
}

impl NodeSeries {
    /// A gauge.
    pub const fn gauge(name: &'static str, help: &'static str, value: u64) -> NodeSeries {
        NodeSeries {
            name,
            kind: "gauge",
            help,
            value,
        }
    }

    /// A counter.
    pub const fn counter(name: &'static str, help: &'static str, value: u64) -> NodeSeries {
        NodeSeries {
            name,
            kind: "counter",
            help,
            value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_core_in_prometheus_text() {
        let cores: Vec<CoreMetrics> = (0..2).map(|_| CoreMetrics::default()).collect();
        add(&cores[1].delivered, 5);
        cores[0].closed(CloseReason::SlowConsumer);
        cores[1].refused(Budget::Subjects);
        cores[0].refused_publish(PublishRefusal::RateLimited);
        let node = [NodeSeries {
            name: "ringcast_store_healthy",
            kind: "gauge",
            help: "h",
            value: 1,
        }];
        let text = render(&cores, &[3, 0], &node);
        assert!(text.contains("\nringcast_store_healthy 1\n"));
        assert!(text.contains("ringcast_delivered_total{core=\"1\"} 5"));
        assert!(text.contains("ringcast_slow_consumer_closes_total{core=\"0\"} 1"));
        assert!(text.contains("ringcast_closes_total{core=\"0\",reason=\"slow_consumer\"} 1"));
        assert!(text.contains("ringcast_bus_depth{core=\"0\"} 3"));
        assert!(text.contains("ringcast_budget_refusals_total{core=\"1\",budget=\"subjects\"} 1"));
        assert!(
            text.contains("ringcast_publishes_refused_total{core=\"0\",reason=\"rate_limited\"} 1")
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
        }
    }
}
