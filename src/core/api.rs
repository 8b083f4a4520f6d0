//! What the transport asks of its core: register a connection, subscribe, publish, read
//! history, resume a session, manage scheduled publishes, and let a connection go.
//!
//! Each call runs on the core's thread, answers at once or `await`s the owner core's answer,
//! and leaves the state in the rooms that own it (sessions, fan-out, sequencer). The
//! session hand-over between cores lives here too: it is the one operation that touches every
//! room (take on the old core, adopt with replay and catch-up on the new one).

use super::client::ClientInit;
use super::msg::{Reply, Request};
use super::scheduler::{ScheduleOp, ScheduleReply};
use super::sequencer::ReplayKind;
use super::sessions::{self, parse_session, session_id, ResumeError, SessionState, TakeError};
use super::subscription::{self, SubError, Subscription};
use super::{Client, ConnKind, Core, CoreMsg, Waiter};
use crate::auth::Grant;
use crate::bus::owner_of;
use crate::frame::Frame;
use crate::metrics::{self, Budget, CloseReason};
use crate::outbound::SessionLog;
use crate::proto::{ErrorCode, PubResult};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

impl Core {
    // ---- connections ------------------------------------------------------------------------

    /// Registers a new connection on this core, with a new session.
    pub fn register(&self, kind: ConnKind) -> Rc<Client> {
        let key = self.sessions.borrow().free_key();
        self.register_as(kind, key)
    }

    fn register_as(&self, kind: ConnKind, key: u64) -> Rc<Client> {
        let cfg = self.cfg();
        let init = ClientInit {
            key,
            session: session_id(self.id, key),
            kind,
            queue_limit: cfg.max_queue_bytes,
            session_retain: cfg.session_retain,
            now_ms: self.clock_ms.get(),
        };
        let c = Client::new(init, self.flush.clone());
        self.sessions.borrow_mut().insert(c.clone());
        if kind.is_websocket() {
            metrics::add(&self.metrics().websockets, 1);
        }
        c
    }

    /// Removes a finished connection and all its subscriptions.
    pub fn unregister(&self, c: &Rc<Client>) {
        if !self.sessions.borrow_mut().remove(c) {
            return;
        }
        c.mark_gone(self.metrics());
        c.clear_output();
        self.unsubscribe_all(c);
        if c.kind.is_websocket() {
            metrics::sub(&self.metrics().websockets, 1);
        }
    }

    /// Removes every subscription of `c`.
    fn unsubscribe_all(&self, c: &Rc<Client>) {
        let subs: Vec<Rc<Subscription>> = c.subs.borrow_mut().drain().map(|(_, s)| s).collect();
        for sub in subs {
            self.remove_sub(c, &sub);
        }
    }

    /// A connection's socket is gone. Its session is kept (subscribed, logging what it would
    /// have been sent) for `--session-ttl` so a new connection can resume it, when
    /// [`sessions::retains`] says so; otherwise it is unregistered.
    pub fn detach_or_unregister(&self, c: &Rc<Client>) {
        // A leaving node (shutdown, drain) keeps no session: nothing can resume here.
        let leaving = self.shutting_down.get() || self.draining.get();
        let keep = sessions::retains(c, self.cfg().session_ttl, leaving)
            && self.sessions.borrow().contains(c);
        if !keep {
            return self.unregister(c);
        }
        c.spill_queue_to_log();
        c.clear_output();
        c.set_fd(-1);
        c.mark_gone(self.metrics());
        self.keep_detached(c);
    }

    /// Detaches registered `c` and keeps this core's detached sessions within its share of
    /// `--max-detached-sessions`, dropping the longest-detached first (their bytes are held
    /// to `--max-detached-bytes` by the sweep).
    fn keep_detached(&self, c: &Rc<Client>) {
        c.detach(self.clock_ms.get());
        self.sessions.borrow_mut().note_detached(c);
        let share = self.cfg().max_detached_sessions.div_ceil(self.cores());
        while self.sessions.borrow().detached_count() > share {
            self.evict_oldest_detached();
        }
    }

    /// Drops the session detached longest (over a budget): the bytes it held
    /// ([`sessions::retained_bytes`]), or `None` when no session is detached.
    pub(super) fn evict_oldest_detached(&self) -> Option<usize> {
        let old = self.sessions.borrow_mut().oldest_detached()?;
        let bytes = sessions::retained_bytes(&old);
        metrics::add(&self.metrics().sessions_evicted, 1);
        self.unregister(&old);
        Some(bytes)
    }

    // ---- subscriptions ----------------------------------------------------------------------

    /// `sub`: adds (or updates) a subscription, answers `ok`, then starts any replay.
    pub fn subscribe(
        &self,
        c: &Rc<Client>,
        id: Option<&str>,
        pattern: &str,
        since: Option<u64>,
        snapshot: bool,
        conflate: bool,
    ) -> Result<(), SubError> {
        let existing = c.subs.borrow().get(pattern).cloned();
        let sub = match existing {
            Some(s) => {
                s.conflate.set(conflate);
                s
            }
            None => {
                self.admit_sub(c, pattern)?;
                self.add_sub(c, pattern, conflate)
            }
        };
        c.send_ok(self.metrics(), id);
        let kind = match (since, snapshot) {
            (Some(n), _) => ReplayKind::Since(n),
            (None, true) => ReplayKind::Snapshot,
            (None, false) => return Ok(()),
        };
        c.track_hwm();
        if let ReplayKind::Since(n) = kind {
            // Nothing at or below `since` is delivered, live or replayed.
            let mut hwm = c.hwm.borrow_mut();
            let h = hwm
                .as_mut()
                .expect("tracked")
                .entry_ref(pattern)
                .or_insert(0);
            *h = (*h).max(n);
        }
        let owners: Vec<usize> = match kind {
            ReplayKind::Snapshot if !crate::subject::is_literal(pattern) => {
                (0..self.cores()).collect()
            }
            _ => vec![owner_of(pattern, self.cores())],
        };
        let since = matches!(kind, ReplayKind::Since(_));
        for owner in owners {
            sub.await_cores(1 << owner);
            if since {
                // Live messages of this subject wait for the replay whichever of the
                // connection's subscriptions they match: the replay covers them.
                c.held.borrow_mut().push(pattern.into());
            }
            let w = Waiter::Replay {
                client: c.clone(),
                sub: sub.clone(),
                since,
            };
            let req = Request::Replay {
                pattern: pattern.into(),
                kind: kind.clone(),
            };
            self.ask(owner, req, w);
        }
        Ok(())
    }

    /// The per-connection budgets a new subscription must fit: its count and its bytes
    /// (counted in the refusal metrics when it does not).
    fn admit_sub(&self, c: &Client, pattern: &str) -> Result<(), SubError> {
        let cfg = self.cfg();
        let refusal = if c.subscription_count() >= cfg.max_subs_per_conn {
            (SubError::TooMany, Budget::Subscriptions)
        } else if c.sub_bytes.get() + subscription::cost(pattern) > cfg.max_sub_bytes_per_conn {
            (SubError::TooManyBytes, Budget::SubscriptionBytes)
        } else {
            return Ok(());
        };
        self.metrics().refused(refusal.1);
        Err(refusal.0)
    }

    /// Adds a new subscription of `c` (the one place that does).
    fn add_sub(&self, c: &Rc<Client>, pattern: &str, conflate: bool) -> Rc<Subscription> {
        let sub = self.fanout.borrow_mut().subscribe(c, pattern, conflate);
        let cost = subscription::cost(pattern);
        c.sub_bytes.set(c.sub_bytes.get() + cost);
        let m = self.metrics();
        metrics::add(&m.subscriptions, 1);
        metrics::add(&m.subscription_bytes, cost as u64);
        sub
    }

    fn remove_sub(&self, c: &Rc<Client>, sub: &Rc<Subscription>) {
        if self.fanout.borrow_mut().remove(c, sub) {
            let cost = subscription::cost(&sub.pattern);
            c.sub_bytes.set(c.sub_bytes.get().saturating_sub(cost));
            let m = self.metrics();
            metrics::sub(&m.subscriptions, 1);
            metrics::sub(&m.subscription_bytes, cost as u64);
        }
    }

    /// `unsub`: true if the connection had that subscription.
    pub fn unsubscribe(&self, c: &Rc<Client>, pattern: &str) -> bool {
        let sub = c.subs.borrow_mut().remove(pattern);
        match sub {
            Some(sub) => {
                self.remove_sub(c, &sub);
                true
            }
            None => false,
        }
    }

    /// Queues a replay to a subscription (its gap first, if any).
    pub(super) fn apply_replay(
        &self,
        c: &Rc<Client>,
        sub: &Subscription,
        replay: crate::owner::Replay,
    ) {
        if !sub.active.get() || c.closing().is_some() {
            return;
        }
        let m = self.metrics();
        if let Some((from, to)) = replay.gap {
            // Gaps only come from `since`, whose pattern is a concrete subject.
            let mut b = Vec::with_capacity(64);
            crate::proto::gap(&mut b, &sub.pattern, from, to);
            c.owe_event("gap", &b);
        }
        let n = replay
            .frames
            .into_iter()
            .filter(|f| c.owe_msg(&Rc::new(f.clone())))
            .count();
        metrics::add(&m.delivered, n as u64);
    }

    /// Owes frames of a session hand-over (never conflated: a resume is exact).
    pub(super) fn push_frames(&self, c: &Rc<Client>, frames: Vec<Arc<Frame>>) {
        let m = self.metrics();
        let grant = c.access.grant();
        let n = frames
            .into_iter()
            .filter(|f| grant.as_ref().is_none_or(|g| g.may_receive(f.subject())))
            .filter(|f| c.owe_msg(&Rc::new(f.clone())))
            .count();
        metrics::add(&m.delivered, n as u64);
    }

    // ---- publishing and reading -------------------------------------------------------------

    /// Publishes from a WebSocket `pub`; the `ok` reply is queued when the sequencer answers.
    pub fn publish_ws(
        &self,
        c: &Rc<Client>,
        id: Option<&str>,
        subject: &str,
        data: &[u8],
        msg_id: Option<&str>,
    ) {
        let w = Waiter::Ack {
            client: c.clone(),
            id: id.map(Into::into),
            ticket: c.acks.reserve(),
        };
        self.publish(subject, data, msg_id, w);
    }

    /// Publishes from HTTP (or the demo feed); resolves when the sequencer has answered (sync
    /// durability: once the message is durable).
    pub async fn publish_http(
        &self,
        subject: &str,
        data: &[u8],
        msg_id: Option<&str>,
    ) -> PubResult {
        let slot = Rc::new(super::Slot::default());
        self.publish(subject, data, msg_id, Waiter::Await(slot.clone()));
        match slot.wait().await {
            Reply::Published(r) => r,
            other => unreachable!("a publish answered with {other:?}"),
        }
    }

    /// The `/history/{subject}` body, from the subject's owner core.
    pub async fn history(&self, subject: &str, since: u64, limit: usize) -> Vec<u8> {
        let owner = owner_of(subject, self.cores());
        let req = Request::History {
            subject: subject.into(),
            since,
            limit,
        };
        match self.call(owner, req).await {
            Reply::History(body) => body,
            other => unreachable!("a history read answered with {other:?}"),
        }
    }

    /// Runs a scheduled-publish request on the subject's owner core.
    pub async fn schedule(&self, owner: usize, op: ScheduleOp) -> ScheduleReply {
        match self.call(owner, Request::Schedule(op)).await {
            Reply::Schedule(r) => r,
            other => unreachable!("a schedule request answered with {other:?}"),
        }
    }

    // ---- sessions ---------------------------------------------------------------------------

    /// Owner side of a resume: hands the session over to `requester` and returns what the
    /// new connection needs. Only the identity that made the session may take it (anyone else
    /// is told it is unknown: a session id proves nothing by itself). A session still attached
    /// to a socket (its link dropped without the server seeing it yet) is taken over at once:
    /// the old connection gets a close and ends, unsubscribed.
    pub(super) fn take_session(
        &self,
        session: &str,
        received: u64,
        requester: Option<&Grant>,
    ) -> Result<Box<SessionState>, TakeError> {
        let c = self
            .sessions
            .borrow()
            .get(session)
            .ok_or(TakeError::Unknown)?;
        if !crate::auth::same_identity(c.access.grant().as_deref(), requester) {
            metrics::add(&self.metrics().resumes_refused, 1);
            return Err(TakeError::Unknown);
        }
        c.spill_queue_to_log();
        if sessions::busy(&c) {
            return Err(TakeError::Busy);
        }
        // What this core has delivered from each owner, itself included (`deliver` records
        // its own frames too). Not the sequencer's counter: with sync durability that also
        // counts frames accepted but still waiting for their fsync, which the catch-up would
        // then skip.
        let cut = self.fanout.borrow().positions(self.cores());
        let state = sessions::hand_over(&c, received, cut)?;
        if c.is_detached() {
            self.unregister(&c);
        } else {
            // Replaced: it keeps its registration (so the sweep still ends it if the peer is
            // gone) but no subscription (so it is not retained when its socket ends).
            self.unsubscribe_all(&c);
            let code = crate::ws::close::NORMAL;
            c.close(
                self.metrics(),
                CloseReason::Replaced,
                code,
                "session resumed elsewhere",
            );
        }
        Ok(Box::new(state))
    }

    /// Resumes `session` on `c` (this core): the session's subscriptions are restored and
    /// every message after its `received`-th is delivered once, in order, then live ones, with
    /// nothing lost while it moves between cores. `on_adopt` runs first (the `ok` reply).
    pub async fn resume(
        self: &Rc<Self>,
        c: &Rc<Client>,
        session: &str,
        received: u64,
        on_adopt: impl FnOnce(),
    ) -> Result<(), ResumeError> {
        /// How long a resume waits for a session that is itself still catching up.
        const BUSY_RETRIES: usize = 500;
        let owner = parse_session(session)
            .map(|(core, _)| core)
            .filter(|o| *o < self.cores() && session != &*c.session)
            .ok_or(ResumeError::Expired)?;
        let mut tries = 0;
        let state = loop {
            let req = Request::TakeSession {
                session: session.into(),
                received,
                grant: c.access.grant(),
            };
            let r = match self.call(owner, req).await {
                Reply::Session(r) => r,
                other => unreachable!("a session hand-over answered with {other:?}"),
            };
            match r {
                Err(TakeError::Busy) if tries < BUSY_RETRIES => {
                    tries += 1;
                    monoio::time::sleep(Duration::from_millis(2)).await;
                }
                other => break other,
            }
        };
        let state = state.map_err(|_| ResumeError::Expired)?;
        if !self.sessions.borrow().contains(c) || c.closing().is_some() {
            // The new connection went away meanwhile: give the session back, detached and
            // under its old id, so the client's next attempt can still resume it exactly.
            if owner == self.id {
                self.restore(session, *state);
            } else {
                let session = session.into();
                self.send(owner, CoreMsg::Restore { session, state });
            }
            return Err(ResumeError::Expired);
        }
        on_adopt();
        self.adopt(c, *state);
        Ok(())
    }

    /// Re-creates a handed-over session as a detached one under its old id (this core is the
    /// one its id names). Adopting it into a detached client replays and catches up into the
    /// session log exactly as for a live one.
    pub(super) fn restore(&self, session: &str, st: SessionState) {
        let key = parse_session(session)
            .filter(|(core, key)| *core == self.id && !self.sessions.borrow().contains_key(*key));
        let Some((_, key)) = key else {
            tracing::warn!(
                session,
                "a handed-over session could not be restored; dropped"
            );
            return;
        };
        let c = self.register_as(ConnKind::WebSocket, key);
        self.keep_detached(&c);
        self.adopt(&c, st);
    }

    /// Installs a handed-over session into `c`: its subscriptions (those the current grant
    /// allows), the frames it was sent after `received`, then what each owner broadcast after
    /// the cut (this core's own at once, the others' by catch-up requests).
    fn adopt(&self, c: &Rc<Client>, st: SessionState) {
        let m = self.metrics();
        *c.log.borrow_mut() = SessionLog::new(self.cfg().session_retain, st.next_k);
        c.next_k.set(st.next_k);
        // Track per-subject seq from here on; the old session's marks are merged only after
        // its replay went out (the replayed frames are at or below them).
        c.track_hwm();
        let others: u64 = (0..self.cores())
            .filter(|core| *core != self.id)
            .fold(0, |a, core| a | 1 << core);
        let grant = c.access.grant();
        let mut subs = Vec::new();
        for (pattern, conflate) in &st.patterns {
            if let Some(Err(r)) = grant.as_ref().map(|g| g.check_subscribe(pattern)) {
                let why = r.message("subscribe");
                let msg = format!("subscription '{pattern}' not restored: {why}");
                c.send_err(m, None, ErrorCode::Forbidden, &msg);
                continue;
            }
            let existing = c.subs.borrow().get(&**pattern).cloned();
            let sub = existing.unwrap_or_else(|| self.add_sub(c, pattern, *conflate));
            sub.await_cores(others);
            subs.push(sub);
        }
        self.push_frames(c, st.frames);
        if let Some(hwm) = c.hwm.borrow_mut().as_mut() {
            for (subject, seq) in st.hwm {
                let h = hwm.entry(subject).or_insert(0);
                *h = (*h).max(seq);
            }
        }
        let patterns: Vec<Box<str>> = subs.iter().map(|s| s.pattern.clone()).collect();
        let local = self.sequencer.borrow().catch_up(&patterns, st.cut[self.id]);
        self.push_frames(c, local);
        for owner in (0..self.cores()).filter(|core| *core != self.id) {
            let w = Waiter::CatchUp {
                client: c.clone(),
                subs: subs.clone(),
            };
            let req = Request::CatchUp {
                patterns: patterns.clone(),
                after: st.cut[owner],
            };
            self.ask(owner, req, w);
        }
    }
}
