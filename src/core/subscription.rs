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

/// The fixed part of what one subscription is charged: its `Subscription` (an `Rc`), its
/// entry in the connection's table and its trie value (two `Rc`s), rounded up. Measured
/// (`tests/memory.rs`): 361 B for a 3-token, 21-byte pattern whose first token is shared.
pub const SUB_FIXED_BYTES: usize = 160;

/// What each token of a pattern is charged: a trie level (`Box<Level>`) and its entry in the
/// level above, in the worst case that it shares no level with any other pattern. Measured:
/// 2,282 B for a 16-token, 250-byte pattern sharing nothing.
pub const SUB_TOKEN_BYTES: usize = 96;

/// The bytes a subscription to `pattern` is charged against `--max-sub-bytes-per-conn`: an
/// upper bound of the heap it holds (the pattern is kept three times: in the subscription,
/// as the key of the connection's table, and as trie tokens).
pub fn cost(pattern: &str) -> usize {
    let tokens = pattern.bytes().filter(|b| *b == b'.').count() + 1;
    SUB_FIXED_BYTES + 3 * pattern.len() + tokens * SUB_TOKEN_BYTES
}

/// Why a subscribe request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SubError {
    /// Too many subscriptions on this connection (`--max-subs-per-conn`).
    TooMany,
    /// The connection's subscriptions would hold too many bytes (`--max-sub-bytes-per-conn`).
    TooManyBytes,
}

impl SubError {
    /// The `err` message a client sees.
    pub fn message(&self) -> &'static str {
        match self {
            SubError::TooMany => "too many subscriptions on this connection (--max-subs-per-conn)",
            SubError::TooManyBytes => {
                "subscriptions on this connection over their byte budget (--max-sub-bytes-per-conn)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_is_charged_for_its_pattern_and_tokens() {
        assert_eq!(cost("a"), SUB_FIXED_BYTES + 3 + SUB_TOKEN_BYTES);
        assert_eq!(cost("a.bc.>"), SUB_FIXED_BYTES + 18 + 3 * SUB_TOKEN_BYTES);
        // The measured worst case (tests/memory.rs: 2,282 B) stays under its charge.
        let longest = vec!["t".repeat(14); 16].join(".");
        assert!(cost(&longest) >= 2_282);
    }
}
