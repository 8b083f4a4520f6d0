//! `Sessions`: every connection's session on this core, kept after its socket is gone for
//! `--session-ttl`, and what a session hands over when a new connection resumes it.
//!
//! Owns the core's registry of clients by session key (a WebSocket or SSE connection *is* a
//! session; a detached one stays registered, logging what it would have been sent), the rule
//! of which sessions are retained, and [`SessionState`], the value that moves between cores
//! on a resume. The moves themselves (asking the session's core, re-subscribing, catching up)
//! are the core's. Core-local: touched only by the owning core's thread.
//!
//! Session ids are `<core:02x><key:016x>`: the core that holds the session, and 64 bits from
//! the kernel's CSPRNG (presenting an id resumes the session, so it must be unguessable).

use super::client::Client;
use crate::frame::Frame;
use crate::metrics::CloseReason;
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

/// Length of a session id: 2 hex digits of core, 16 of key.
pub const SESSION_ID_LEN: usize = 18;

/// A session moving between cores.
#[derive(Debug)]
pub struct SessionState {
    /// Subscriptions: pattern and `conflate`.
    pub patterns: Vec<(Box<str>, bool)>,
    /// Messages sent to the session after the client's `received`, in order.
    pub frames: Vec<Arc<Frame>>,
    /// Highest seq per subject the session was sent.
    pub hwm: Vec<(Box<str>, u64)>,
    /// Per owner core, the broadcast position up to which the old core handled deliveries.
    pub cut: Vec<u64>,
    /// Index of the first message after `received`.
    pub next_k: u64,
}

/// Why a session could not be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// Unknown, expired, or no longer holding the messages asked for.
    Unknown,
    /// Still receiving a replay or catch-up: ask again shortly.
    Busy,
}

/// Why a resume failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// Unknown, expired, or no longer holding the messages after `received`.
    Expired,
}

/// The session id of key `key` on core `core`.
pub fn session_id(core: usize, key: u64) -> Box<str> {
    format!("{core:02x}{key:016x}").into_boxed_str()
}

/// The core and key a session id names, if it is well-formed.
pub fn parse_session(id: &str) -> Option<(usize, u64)> {
    if id.len() != SESSION_ID_LEN || !id.is_ascii() {
        return None;
    }
    let core = usize::from_str_radix(&id[..2], 16).ok()?;
    let key = u64::from_str_radix(&id[2..], 16).ok()?;
    Some((core, key))
}

/// What a per-subject high-water mark costs besides its subject's bytes: the map slot, the
/// boxed subject's header and its allocation rounding.
const HWM_ENTRY_BYTES: usize = 48;

/// The clients of one core, by session key, and the detached ones in the order they lost their
/// sockets (the oldest is evicted first when a budget is exceeded).
#[derive(Default)]
pub struct Sessions {
    by_key: HashMap<u64, Rc<Client>>,
    /// `(key, detached_at)` per detachment, oldest first; entries whose session was resumed or
    /// has ended are skipped (and compacted away) lazily.
    detached: VecDeque<(u64, u64)>,
    /// Registered sessions without a socket.
    detached_count: usize,
}

impl Sessions {
    /// A key no session of this core uses (the CSPRNG makes a repeat all but impossible; a
    /// repeat would resume the wrong session, so it is ruled out anyway).
    pub fn free_key(&self) -> u64 {
        loop {
            let key = crate::os::random_u64();
            if !self.by_key.contains_key(&key) {
                return key;
            }
        }
    }

    /// True when `key` is taken.
    pub fn contains_key(&self, key: u64) -> bool {
        self.by_key.contains_key(&key)
    }

    /// Registers a client under its key.
    pub fn insert(&mut self, c: Rc<Client>) {
        self.by_key.insert(c.key, c);
    }

    /// Unregisters `c`; false if it was not registered (already gone).
    pub fn remove(&mut self, c: &Client) -> bool {
        match self.by_key.get(&c.key) {
            Some(r) if std::ptr::eq(&**r, c) => {
                self.by_key.remove(&c.key);
                if c.is_detached() {
                    self.detached_count -= 1;
                }
                true
            }
            _ => false,
        }
    }

    /// Records that registered `c` has just been detached (after [`Client::detach`]).
    pub fn note_detached(&mut self, c: &Client) {
        let at = c.detached_at.get().expect("detached");
        self.detached.push_back((c.key, at));
        self.detached_count += 1;
        if self.detached.len() > 2 * self.detached_count + 64 {
            // Mostly resumed or ended sessions: drop their entries.
            let by_key = &self.by_key;
            self.detached.retain(|(key, at)| {
                by_key
                    .get(key)
                    .is_some_and(|c| c.detached_at.get() == Some(*at))
            });
        }
    }

    /// Registered sessions without a socket.
    pub fn detached_count(&self) -> usize {
        self.detached_count
    }

    /// The session that has been detached longest, if any.
    pub fn oldest_detached(&mut self) -> Option<Rc<Client>> {
        while let Some(&(key, at)) = self.detached.front() {
            match self.by_key.get(&key) {
                Some(c) if c.detached_at.get() == Some(at) => return Some(c.clone()),
                _ => {
                    self.detached.pop_front();
                }
            }
        }
        None
    }

    /// True while `c` is registered.
    pub fn contains(&self, c: &Client) -> bool {
        self.by_key
            .get(&c.key)
            .is_some_and(|r| std::ptr::eq(&**r, c))
    }

    /// The session with id `id`, attached or detached.
    pub fn get(&self, id: &str) -> Option<Rc<Client>> {
        let (_, key) = parse_session(id)?;
        self.by_key.get(&key).filter(|c| &*c.session == id).cloned()
    }

    /// Registered sessions (connected or not).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no session is registered.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Every registered client (a snapshot, for sweeping and shutdown).
    pub fn all(&self) -> Vec<Rc<Client>> {
        self.by_key.values().cloned().collect()
    }
}

/// Whether the session of a connection whose socket is gone is retained for a resume: sessions
/// are kept (`ttl_secs > 0`) unless the node is shutting down, the connection was an echo
/// socket or had no subscription, or it ended for a reason that rules resuming out.
pub fn retains(c: &Client, ttl_secs: u64, shutting_down: bool) -> bool {
    ttl_secs > 0
        && !shutting_down
        && c.kind != super::client::ConnKind::Echo
        && c.subscription_count() > 0
        && !matches!(
            c.closing(),
            Some(CloseReason::Shutdown | CloseReason::Unauthorized | CloseReason::RateLimited)
        )
}

/// True when detached `c` can serve no resume any more: its log has dropped a message sent
/// after the socket went away, which the client never received (`--session-retain` smaller
/// than what arrived since; with 0, the first message).
pub fn lapsed(c: &Client) -> bool {
    c.is_detached() && c.log.borrow().first_k() > c.detached_k.get()
}

/// Bytes a retained session keeps alive, as an upper bound: its log ([`SessionLog::bytes`]:
/// frames counted in full even when shared), its per-subject seq marks and its subscriptions
/// (as charged against `--max-sub-bytes-per-conn`, `subscription::cost`).
///
/// [`SessionLog::bytes`]: crate::outbound::SessionLog::bytes
pub fn retained_bytes(c: &Client) -> usize {
    let hwm = c.hwm.borrow().as_ref().map_or(0, |h| {
        h.keys().map(|s| s.len() + HWM_ENTRY_BYTES).sum::<usize>()
    });
    c.log.borrow().bytes() + hwm + c.sub_bytes.get()
}

/// Stops tracking per-subject seqs on an attached connection that has no replay or catch-up
/// in flight: the marks only keep a replay and the live stream from overlapping, and once
/// every replay is in, all further frames come from the live stream alone, each once. Without
/// this the map would grow by one entry per subject ever delivered, for the connection's life.
pub fn settle_hwm(c: &Client) {
    if !c.is_detached() && c.hwm.borrow().is_some() && !busy(c) {
        *c.hwm.borrow_mut() = None;
    }
}

/// True while the session still receives a replay or catch-up: frames are in flight to it
/// that neither its log nor a cut would cover, so it cannot be handed over yet.
pub fn busy(c: &Client) -> bool {
    c.subs.borrow().values().any(|s| s.pending.get() != 0) || !c.held.borrow().is_empty()
}

/// The state `c` hands over to a connection that received its first `received` messages, with
/// `cut` the broadcast positions this core had delivered from each owner; `Unknown` when the
/// log no longer holds every message after `received`.
pub fn hand_over(c: &Client, received: u64, cut: Vec<u64>) -> Result<SessionState, TakeError> {
    let frames = c.log.borrow().after(received).ok_or(TakeError::Unknown)?;
    let patterns = c
        .subs
        .borrow()
        .values()
        .map(|s| (s.pattern.clone(), s.conflate.get()))
        .collect();
    let hwm = c
        .hwm
        .borrow()
        .as_ref()
        .map(|h| h.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default();
    Ok(SessionState {
        patterns,
        frames: frames.into_iter().map(|f| Arc::clone(&f)).collect(),
        hwm,
        cut,
        next_k: received + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::super::client::{ClientInit, ConnKind};
    use super::super::FlushList;
    use super::*;
    use crate::metrics::CoreMetrics;
    use crate::outbound::WriteBatch;

    fn client(sessions: &Sessions, kind: ConnKind) -> Rc<Client> {
        let key = sessions.free_key();
        let init = ClientInit {
            key,
            session: session_id(1, key),
            kind,
            queue_limit: 1 << 20,
            session_retain: 4,
            now_ms: 0,
        };
        Client::new(init, Rc::new(FlushList::default()))
    }

    #[test]
    fn a_session_id_names_its_core_and_key() {
        let id = session_id(0x2a, 0xdead_beef);
        assert_eq!(&*id, "2a00000000deadbeef");
        assert_eq!(parse_session(&id), Some((0x2a, 0xdead_beef)));
        assert_eq!(parse_session("2a00000000deadbee"), None, "too short");
        assert_eq!(parse_session("zz00000000deadbeef"), None);
        assert_eq!(parse_session("2a00000000deadbeé"), None);
    }

    #[test]
    fn a_registered_session_is_found_by_its_id_only() {
        let mut s = Sessions::default();
        let c = client(&s, ConnKind::WebSocket);
        s.insert(c.clone());
        assert!(Rc::ptr_eq(&s.get(&c.session).unwrap(), &c));
        let other_core = format!("02{}", &c.session[2..]);
        assert!(
            s.get(&other_core).is_none(),
            "the core digits are part of the id"
        );
        assert!(s.remove(&c));
        assert!(!s.remove(&c));
        assert!(s.get(&c.session).is_none());
    }

    #[test]
    fn only_subscribed_sessions_that_ended_plainly_are_retained() {
        let s = Sessions::default();
        let m = CoreMetrics::default();
        let c = client(&s, ConnKind::WebSocket);
        assert!(
            !retains(&c, 60, false),
            "no subscription: nothing to resume"
        );
        c.subs.borrow_mut().insert(
            "a".into(),
            Rc::new(super::super::subscription::Subscription::new("a", false)),
        );
        assert!(retains(&c, 60, false));
        assert!(!retains(&c, 0, false), "--session-ttl 0");
        assert!(!retains(&c, 60, true), "shutting down");
        c.close(&m, CloseReason::Unauthorized, 4001, "");
        assert!(!retains(&c, 60, false));
    }

    #[test]
    fn seq_marks_are_dropped_once_no_replay_is_in_flight() {
        let s = Sessions::default();
        let c = client(&s, ConnKind::WebSocket);
        c.track_hwm();
        c.held.borrow_mut().push("a".into());
        settle_hwm(&c);
        assert!(
            c.hwm.borrow().is_some(),
            "a `since` replay is still on its way"
        );
        c.held.borrow_mut().clear();
        settle_hwm(&c);
        assert!(c.hwm.borrow().is_none());
        c.track_hwm();
        c.detach(0);
        settle_hwm(&c);
        assert!(
            c.hwm.borrow().is_some(),
            "a detached session keeps them for its hand-over"
        );
    }

    #[test]
    fn a_detached_session_lapses_when_its_log_drops_an_unsent_message() {
        let s = Sessions::default();
        let c = client(&s, ConnKind::WebSocket);
        let f = |seq| Rc::new(Arc::new(Frame::encode("a", seq, 0, b"1", None)));
        c.detach(0);
        for seq in 1..=4 {
            assert!(c.push_msg(&CoreMetrics::default(), &f(seq), false, None));
            assert!(!lapsed(&c), "retains 4: message {seq} kept");
        }
        // The log keeps at least 4 (whole chunks of them): message 1 goes within a chunk's
        // worth of messages, and with it any resume.
        for seq in 5..=100 {
            assert!(c.push_msg(&CoreMetrics::default(), &f(seq), false, None));
        }
        assert!(lapsed(&c), "message 1 is gone and was never received");
        assert!(retained_bytes(&c) >= 4 * f(1).wire_len());
    }

    #[test]
    fn a_hand_over_carries_what_was_sent_after_received() {
        let s = Sessions::default();
        let m = CoreMetrics::default();
        let c = client(&s, ConnKind::WebSocket);
        let f = |seq| Rc::new(Arc::new(Frame::encode("a", seq, 0, b"1", None)));
        for seq in 1..=3 {
            assert!(c.push_msg(&m, &f(seq), false, None));
        }
        c.fill(&mut WriteBatch::default());
        let st = hand_over(&c, 1, vec![7, 9]).unwrap();
        assert_eq!(
            st.frames.iter().map(|f| f.seq()).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!((st.next_k, st.cut), (2, vec![7, 9]));
        assert_eq!(hand_over(&c, 4, vec![]).unwrap_err(), TakeError::Unknown);
        assert!(!busy(&c));
    }
}
