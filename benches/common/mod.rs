//! What the in-process benches share: a one-core node (memory store, no cluster, no auth)
//! whose `Core` is driven directly on the bench thread.

use ringcast::config::Config;
use ringcast::core::{Core, CoreBus, Node};
use ringcast::metrics::CoreMetrics;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

/// Core 0 of a one-core node configured by `cfg`.
pub fn core(cfg: Config) -> Rc<Core> {
    let (bus, mut rxs) = CoreBus::new(1);
    let node = Arc::new(Node {
        cfg: Arc::new(cfg),
        bus,
        metrics: vec![CoreMetrics::default()].into_boxed_slice(),
        connections: AtomicUsize::new(0),
        body_bytes: AtomicUsize::new(0),
        shutting_down: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        driver: "bench",
        verifier: None,
        store: Arc::new(ringcast::store::MemoryStore),
        cluster: None,
    });
    Core::new(0, node, rxs.pop().expect("one core"))
}
