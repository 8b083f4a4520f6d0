//! `FlushList`: the clients of one core with output to write or a close to finish, each
//! once, and the publish time of the oldest frame queued since the transport last drained it.
//!
//! A client puts itself on the list when it gets something to send; the transport's flusher
//! drains it every loop turn and starts one writer per client. Core-local: touched only by the
//! owning core's thread (`Cell`/`RefCell`, no locks).

use super::client::Client;
use super::signal::LocalNotify;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// The clients of one core that have output to write or a close to finish, each once (the
/// transport drains it every loop turn: one writer per client, however many messages were
/// queued to it; nats-server's `pcd` set).
#[derive(Default)]
pub struct FlushList {
    clients: RefCell<Vec<Rc<Client>>>,
    /// Publish time (µs since the Unix epoch) of the oldest frame queued since the last
    /// drain; 0: none. Tells the flusher how far behind its writes run.
    oldest_us: Cell<u64>,
    /// Wakes the transport's flusher.
    pub ready: LocalNotify,
}

impl FlushList {
    /// Notes that a frame published at `ts_us` was queued to a connection.
    #[inline]
    pub fn note_frame(&self, ts_us: u64) {
        if self.oldest_us.get() == 0 {
            self.oldest_us.set(ts_us);
        }
    }

    /// The publish time of the oldest frame queued since the last call (0: none), and resets
    /// it.
    pub fn take_oldest(&self) -> u64 {
        self.oldest_us.replace(0)
    }

    /// Lists `c` and wakes the flusher (the client marked itself listed already).
    pub(super) fn push(&self, c: Rc<Client>) {
        self.clients.borrow_mut().push(c);
        self.ready.notify();
    }

    /// Takes every listed client (and clears their mark, so they list themselves again).
    pub fn drain(&self) -> Vec<Rc<Client>> {
        let clients = std::mem::take(&mut *self.clients.borrow_mut());
        for c in &clients {
            c.listed.set(false);
        }
        clients
    }
}
