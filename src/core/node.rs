//! `Node`: what every core of a node shares, read-mostly: configuration, the bus, every core's
//! counters, the token verifier, the store and the cluster bridge.
//!
//! Built once by [`crate::server`] before the cores start; any core thread reads it. The only
//! fields written after start-up are atomics outside the message path (the node-wide
//! connection count, checked at accept; the shutdown flag).

use super::msg::CoreBus;
use crate::cluster::Bridge;
use crate::config::Config;
use crate::metrics::{CoreMetrics, NodeSeries};
use crate::store::{Durability, HistoryStore};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// State shared by all cores of a node.
pub struct Node {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// The cross-core bus.
    pub bus: Arc<CoreBus>,
    /// Per-core counters, indexed by core id.
    pub metrics: Box<[CoreMetrics]>,
    /// Open connections on the whole node (admission control at accept; not on the message path).
    pub connections: AtomicUsize,
    /// Request-body bytes being buffered on the whole node (`--max-body-buffer-bytes`; taken
    /// from a request's head, before its body is read; not on the message path).
    pub body_bytes: AtomicUsize,
    /// Set once shutdown has begun.
    pub shutting_down: AtomicBool,
    /// The I/O driver the cores run on (`io_uring` or `epoll`).
    pub driver: &'static str,
    /// Token verifier; `None`: auth is off.
    pub verifier: Option<crate::auth::Verifier>,
    /// Where history outlives memory (`MemoryStore` without `--data-dir`).
    pub store: Arc<dyn HistoryStore>,
    /// Cluster mode (`--nats-url`): the JetStream bridge, which sequences every publish.
    pub cluster: Option<Bridge>,
}

impl Node {
    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.bus.cores()
    }

    /// `/healthz`: `Ok` while the node can accept publishes, else why not. A degraded node
    /// keeps serving its subscribers.
    pub fn health(&self) -> Result<(), String> {
        if !self.store.healthy() {
            return Err("degraded: the durable store failed to write (see the log)".into());
        }
        if let Some(status) = self.cluster.as_ref().map(|b| b.status()) {
            if !status.connected.load(Ordering::Acquire) {
                return Err(
                    "degraded: NATS unreachable; serving what this node has, publishes are refused"
                        .into(),
                );
            }
            if !status.caught_up.load(Ordering::Acquire) {
                return Err("degraded: catching up with the cluster stream".into());
            }
        }
        Ok(())
    }

    /// True when history outlives the rings: a durable store, or the cluster's stream.
    pub fn has_store(&self) -> bool {
        self.store.durability() != Durability::None || self.cluster.is_some()
    }

    /// True in cluster mode while NATS is unreachable or the stream consumer catches up.
    pub fn cluster_degraded(&self) -> bool {
        self.cluster.as_ref().is_some_and(|b| {
            let s = b.status();
            !s.connected.load(Ordering::Acquire) || !s.caught_up.load(Ordering::Acquire)
        })
    }

    /// Node-wide `/metrics` series (health, store, cluster bridge). The health gauges are
    /// exported on every node, so that alert rules on them need no mode of their own.
    pub fn node_series(&self) -> Vec<NodeSeries> {
        let mut v = vec![
            NodeSeries::gauge(
                "ringcast_healthy",
                "1 while /healthz answers ok (the node accepts publishes).",
                self.health().is_ok() as u64,
            ),
            NodeSeries::gauge(
                "ringcast_store_healthy",
                "1 while the store writes successfully (always 1 without --data-dir).",
                self.store.healthy() as u64,
            ),
            NodeSeries::gauge(
                "ringcast_cluster_degraded",
                "1 in cluster mode while NATS is unreachable or being caught up with (0 standalone).",
                self.cluster_degraded() as u64,
            ),
        ];
        v.extend(self.store.series());
        v.push(NodeSeries::gauge(
            "ringcast_http_body_bytes",
            "Request-body bytes being buffered (--max-body-buffer-bytes).",
            self.body_bytes.load(Ordering::Relaxed) as u64,
        ));
        if let Some(b) = &self.cluster {
            v.extend(b.status().series());
        }
        v
    }

    /// `/metrics`: every core's series, the bus depths and the node series, as Prometheus text.
    pub fn render_metrics(&self) -> String {
        let depth: Vec<usize> = (0..self.cores()).map(|c| self.bus.depth(c)).collect();
        crate::metrics::render(&self.metrics, &depth, &self.node_series())
    }
}
