//! `Node`: what every core of a node shares, read-mostly: configuration, the bus, every core's
//! counters, the store and the cluster bridge.
//!
//! Built once by [`crate::server`] before the cores start; any core thread reads it. The only
//! fields written after start-up are atomics outside the message path (the node-wide
//! connection count, checked at accept; the shutdown and drain flags; the reload counters) and
//! the settings in force, behind a mutex that only start-up and reloads take (cores read their
//! own copy, `core::settings`).

use super::msg::CoreBus;
use super::settings::Settings;
use crate::cluster::Bridge;
use crate::config::Config;
use crate::metrics::{CoreMetrics, NodeSeries};
use crate::store::{Durability, HistoryStore};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// State shared by all cores of a node.
pub struct Node {
    /// Configuration as the node started. Options a reload can change are read from the
    /// core's settings instead (`Core::cfg`); this copy is for the restart-only ones.
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
    /// The settings in force: what each core was last handed. A std mutex (never held across
    /// an await or on the message path): taken at start-up, by each core once as it starts,
    /// and by a reload.
    pub settings: Mutex<Arc<Settings>>,
    /// Per core, the [`Settings::generation`] it has installed (a reload waits for all).
    pub settings_installed: Box<[AtomicU64]>,
    /// Reloads applied (`ringcast_config_reloads_total`).
    pub reloads: AtomicU64,
    /// Reloads refused: the old settings stayed (`ringcast_config_reload_errors_total`).
    pub reload_errors: AtomicU64,
    /// Where history outlives memory (`MemoryStore` without `--data-dir`).
    pub store: Arc<dyn HistoryStore>,
    /// Cluster mode (`--nats-url`): the JetStream bridge, which sequences every publish.
    pub cluster: Option<Bridge>,
}

impl Node {
    /// A node of `cores` cores (the bus's) about to start with `settings`.
    pub fn new(
        settings: Settings,
        bus: Arc<CoreBus>,
        driver: &'static str,
        store: Arc<dyn HistoryStore>,
        cluster: Option<Bridge>,
    ) -> Node {
        Node {
            cfg: Arc::new(settings.cfg.clone()),
            metrics: (0..bus.cores()).map(|_| CoreMetrics::default()).collect(),
            connections: AtomicUsize::new(0),
            body_bytes: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            driver,
            settings_installed: (0..bus.cores()).map(|_| AtomicU64::new(0)).collect(),
            settings: Mutex::new(Arc::new(settings)),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
            bus,
            store,
            cluster,
        }
    }

    /// The settings in force (cold path: start-up, reloads, admin pages).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

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
        v.push(NodeSeries::counter(
            "ringcast_config_reloads_total",
            "Config reloads (SIGHUP) applied.",
            self.reloads.load(Ordering::Relaxed),
        ));
        v.push(NodeSeries::counter(
            "ringcast_config_reload_errors_total",
            "Config reloads (SIGHUP) refused; the node kept its settings (see the log).",
            self.reload_errors.load(Ordering::Relaxed),
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
