//! `Node`: what every core of a node shares, read-mostly: configuration, the bus, every core's
//! counters, the token verifier, the store and the cluster bridge.
//!
//! Built once by [`crate::server`] before the cores start; any core thread reads it. The only
//! fields written after start-up are atomics outside the message path (the node-wide
//! connection count, checked at accept; the shutdown and drain flags).

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
    /// Set once a drain has begun (see [`super::drain`]).
    pub draining: AtomicBool,
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
        if self.draining.load(Ordering::Acquire) {
            // A load balancer takes the node out; its clients are told to go elsewhere.
            return Err("draining".into());
        }
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

    /// Begins graceful shutdown (idempotent): every core stops accepting, closes its
    /// connections with 1001 and finishes.
    pub fn stop(&self) {
        if !self.shutting_down.swap(true, Ordering::AcqRel) {
            for core in 0..self.cores() {
                self.bus.send(core, super::CoreMsg::Shutdown);
            }
        }
    }

    /// True when history outlives the rings: a durable store, or the cluster's stream.
    pub fn has_store(&self) -> bool {
        self.store.durability() != Durability::None || self.cluster.is_some()
    }

    /// Node-wide `/metrics` series (store, cluster bridge).
    pub fn node_series(&self) -> Vec<NodeSeries> {
        let mut v = self.store.series();
        v.push(NodeSeries::gauge(
            "ringcast_http_body_bytes",
            "Request-body bytes being buffered (--max-body-buffer-bytes).",
            self.body_bytes.load(Ordering::Relaxed) as u64,
        ));
        v.push(NodeSeries::gauge(
            "ringcast_draining",
            "1 while the node drains for a restart (SIGUSR2, POST /admin/drain), else 0.",
            self.draining.load(Ordering::Relaxed) as u64,
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
