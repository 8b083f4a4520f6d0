//! What the in-process benches share: a one-core node (memory store, no cluster, no auth)
//! whose `Core` is driven directly on the bench thread.

use ringcast::config::Config;
use ringcast::core::settings::Settings;
use ringcast::core::{Core, CoreBus, Node};
use std::rc::Rc;
use std::sync::Arc;

/// Core 0 of a one-core node configured by `cfg`.
pub fn core(cfg: Config) -> Rc<Core> {
    let (bus, mut rxs) = CoreBus::new(1);
    let settings = Settings {
        generation: 0,
        cfg,
        verifier: None,
    };
    let store = Arc::new(ringcast::store::MemoryStore);
    let node = Arc::new(Node::new(settings, bus, "bench", store, None));
    Core::new(0, node, rxs.pop().expect("one core"))
}
