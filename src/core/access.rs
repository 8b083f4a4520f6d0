//! `Access`: what one connection is allowed (its token's [`Grant`]), until when it must still
//! authenticate, and a bounded cache of per-subject delivery verdicts so that a grant with
//! deny rules costs one hash lookup per delivery, not a trie walk.
//!
//! Part of a [`super::Client`]; core-local (`Cell`/`RefCell`): touched only by the owning
//! core's thread.

use crate::auth::Grant;
use hashbrown::HashMap;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// Subjects whose deny verdict a connection caches (cleared whole when full).
pub const VERDICT_CACHE_ENTRIES: usize = 4096;

/// One connection's authorisation state.
#[derive(Default)]
pub struct Access {
    /// What the connection's token allows (`None`: auth off, or not authenticated yet).
    grant: RefCell<Option<Arc<Grant>>>,
    /// Per-subject delivery verdicts when the grant denies some subjects (bounded cache).
    verdicts: RefCell<Option<HashMap<Box<str>, bool>>>,
    /// Core clock (ms) by which an `auth` op must arrive; 0 when not waiting for one.
    auth_deadline: Cell<u64>,
}

impl Access {
    /// Installs the grant of a verified token (or `None` when auth is off); no `auth` op is
    /// awaited any more.
    pub fn set_grant(&self, grant: Option<Arc<Grant>>) {
        *self.verdicts.borrow_mut() = grant
            .as_ref()
            .filter(|g| g.filters_delivery())
            .map(|_| HashMap::new());
        *self.grant.borrow_mut() = grant;
        self.auth_deadline.set(0);
    }

    /// The current grant.
    pub fn grant(&self) -> Option<Arc<Grant>> {
        self.grant.borrow().clone()
    }

    /// True when the grant has expired by `unix_secs`.
    pub fn expired(&self, unix_secs: u64) -> bool {
        self.grant
            .borrow()
            .as_ref()
            .is_some_and(|g| g.exp <= unix_secs)
    }

    /// Waits for an `auth` op until the core clock reaches `deadline_ms`.
    pub fn require_auth_by(&self, deadline_ms: u64) {
        self.auth_deadline.set(deadline_ms.max(1));
    }

    /// True while the connection must still authenticate.
    pub fn awaiting_auth(&self) -> bool {
        self.auth_deadline.get() != 0
    }

    /// True when the `auth` op is overdue at core clock `now_ms`.
    pub fn auth_overdue(&self, now_ms: u64) -> bool {
        let deadline = self.auth_deadline.get();
        deadline != 0 && now_ms >= deadline
    }

    /// True when the grant denies delivery of `subject` (cached per subject).
    #[inline]
    pub fn denies_delivery(&self, subject: &str) -> bool {
        let mut v = self.verdicts.borrow_mut();
        let Some(cache) = v.as_mut() else {
            return false;
        };
        if let Some(d) = cache.get(subject) {
            return *d;
        }
        let denied = self
            .grant
            .borrow()
            .as_ref()
            .is_none_or(|g| g.denies_delivery(subject));
        if cache.len() >= VERDICT_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(subject.into(), denied);
        denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_grant_nothing_is_denied_and_no_auth_is_awaited() {
        let a = Access::default();
        assert!(!a.denies_delivery("anything"));
        assert!(!a.awaiting_auth());
        assert!(!a.auth_overdue(u64::MAX));
        assert!(!a.expired(u64::MAX));
    }

    #[test]
    fn an_auth_deadline_is_overdue_once_reached_and_cleared_by_a_grant() {
        let a = Access::default();
        a.require_auth_by(100);
        assert!(a.awaiting_auth());
        assert!(!a.auth_overdue(99));
        assert!(a.auth_overdue(100));
        a.set_grant(None);
        assert!(!a.awaiting_auth());
        assert!(!a.auth_overdue(1000));
    }
}
