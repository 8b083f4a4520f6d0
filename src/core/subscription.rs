//! `Subscription`: one pattern one connection subscribed to, shared by the connection's table
//! and the core's trie entry, so that an unsubscribe or a pending replay is seen by delivery
//! at once. Core-local (`Cell`s): touched only by the owning core's thread.

use std::cell::Cell;

/// One subscription of one connection.
pub struct Subscription {
    /// The pattern.
    pub pattern: Box<str>,
    /// Conflate instead of disconnecting when behind.
    pub conflate: Cell<bool>,
    /// Cores whose replay (`since`/`snapshot`) or catch-up has not arrived yet (a bit per
    /// core): their live messages are skipped, the replay covers them.
    pub pending: Cell<u64>,
    /// False once unsubscribed or closed.
    pub active: Cell<bool>,
}

impl Subscription {
    /// A new, active subscription with nothing pending.
    pub fn new(pattern: &str, conflate: bool) -> Subscription {
        Subscription {
            pattern: pattern.into(),
            conflate: Cell::new(conflate),
            pending: Cell::new(0),
            active: Cell::new(true),
        }
    }

    /// Marks the answers of the cores in `mask` as awaited.
    pub fn await_cores(&self, mask: u64) {
        self.pending.set(self.pending.get() | mask);
    }

    /// Core `core` answered.
    pub fn arrived(&self, core: usize) {
        self.pending.set(self.pending.get() & !(1 << core));
    }
}

/// Why a subscribe request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SubError {
    /// Too many subscriptions on this connection.
    TooMany,
}
