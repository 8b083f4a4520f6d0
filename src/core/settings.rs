//! The options a core reads per operation, and how a reload (SIGHUP) replaces them.
//!
//! [`Settings`] is what the main thread builds at start-up and at each reload: the effective
//! [`Config`] and the token verifier made from its keys. It reaches every core as one
//! [`super::CoreMsg::Reload`] over the bus, and each core copies it into its own
//! [`LiveSettings`] (a core-owned `Rc` of each part, so that reading them per operation is a
//! non-atomic reference count on the core's own memory: no lock, no shared cache line written
//! on the hot path). An operation takes the settings once (`core.cfg()`, `core.verifier()`)
//! and keeps what it took to its end, so a reload never changes a limit half-way through one.
//!
//! What a reload may change is decided before it is sent (`config::live`): the options read
//! at start-up only (listeners, cores, store, cluster, ...) keep their start-up values here.

use crate::auth::Verifier;
use crate::config::Config;
use std::cell::RefCell;
use std::rc::Rc;

/// The options and verifier of a node at one moment (start-up, or after a reload).
#[derive(Debug)]
pub struct Settings {
    /// 0 at start-up, then one more at each reload (cores report the one they installed).
    pub generation: u64,
    /// The effective configuration (restart-only options as at start-up).
    pub cfg: Config,
    /// Token verifier; `None`: auth is off.
    pub verifier: Option<Verifier>,
}

/// One core's copy of the [`Settings`] in force. Core thread only.
pub struct LiveSettings {
    /// A `RefCell` only to be replaced whole: borrowed just long enough to clone the `Rc`.
    cfg: RefCell<Rc<Config>>,
    verifier: RefCell<Option<Rc<Verifier>>>,
}

impl LiveSettings {
    /// A core's copy of `s`.
    pub fn new(s: &Settings) -> LiveSettings {
        LiveSettings {
            cfg: RefCell::new(Rc::new(s.cfg.clone())),
            verifier: RefCell::new(s.verifier.clone().map(Rc::new)),
        }
    }

    /// The configuration in force, for one operation.
    #[inline]
    pub fn cfg(&self) -> Rc<Config> {
        self.cfg.borrow().clone()
    }

    /// The verifier in force (`None`: auth is off), for one token check.
    #[inline]
    pub fn verifier(&self) -> Option<Rc<Verifier>> {
        self.verifier.borrow().clone()
    }

    /// True when auth is on.
    pub fn auth_on(&self) -> bool {
        self.verifier.borrow().is_some()
    }

    /// Installs reloaded settings: operations that start from now on read them.
    pub fn install(&self, s: &Settings) {
        *self.cfg.borrow_mut() = Rc::new(s.cfg.clone());
        *self.verifier.borrow_mut() = s.verifier.clone().map(Rc::new);
    }
}
