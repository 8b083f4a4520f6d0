//! The sweep: what a core does every [`super::SWEEP_TICK`] without being asked. It advances the
//! core clock, expires retained sessions (at their TTL, when they can no longer serve a resume,
//! or the longest-detached first past the detached-bytes budget), stops seq tracking on
//! connections whose replays are all in, sends SSE heartbeats, pings silent WebSockets and
//! closes those that stay silent (half-open peers), enforces auth deadlines and token expiry,
//! and shuts down sockets whose close did not flush within [`CLOSE_GRACE_MS`] (a peer that
//! stopped reading). It refreshes the queue gauges (`ringcast_queue_bytes`,
//! `ringcast_queue_lag_ms`), expires idle subjects' history and refreshes the subject and
//! schedule gauges (`sweep_subjects`, `count_schedule_bytes`). Runs on the core's thread, from
//! its sweeper task.

use super::{sessions, Client, ConnKind, Core, CLOSE_GRACE_MS};
use crate::metrics::{self, CloseReason, CoreMetrics};
use crate::proto::ErrorCode;
use std::rc::Rc;

impl Core {
    /// Periodic housekeeping: advances the core clock, expires retained sessions, pings silent
    /// WebSockets and closes those that stay silent (half-open peers), enforces auth deadlines
    /// and token expiry, and shuts down sockets whose close did not flush within
    /// [`CLOSE_GRACE_MS`] (a peer that stopped reading).
    pub fn sweep(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.clock_ms.set(now);
        let now_us = crate::os::now_us();
        let cfg = self.cfg();
        let tick = SweepTick {
            now,
            unix_secs: now_us / 1_000_000,
            now_us,
            ping_ms: cfg.ping_interval_ms.max(1),
            session_ttl_ms: cfg.session_ttl.saturating_mul(1000),
            heartbeat_ms: cfg.sse_heartbeat_secs.max(1).saturating_mul(1000),
        };
        let clients = self.sessions.borrow().all();
        let mut detached_bytes = 0;
        let mut queues = QueueGauges::default();
        for c in &clients {
            self.sweep_client(c, &tick);
            if c.is_detached() && self.sessions.borrow().contains(c) {
                detached_bytes += sessions::retained_bytes(c);
            } else {
                queues.add(c, tick.now_us);
            }
        }
        self.bound_detached_bytes(detached_bytes);
        let m = self.metrics();
        metrics::set(&m.queue_bytes, queues.bytes);
        metrics::set(&m.queue_lag_ms, queues.lag_ms);
    }

    /// Drops the longest-detached sessions while this core's detached sessions hold more than
    /// its share of `--max-detached-bytes`; publishes the detached and match-cache gauges.
    fn bound_detached_bytes(&self, mut bytes: usize) {
        let share = self.cfg().max_detached_bytes.div_ceil(self.cores());
        while bytes > share {
            let Some(freed) = self.evict_oldest_detached() else {
                break;
            };
            bytes = bytes.saturating_sub(freed);
        }
        let m = self.metrics();
        let count = self.sessions.borrow().detached_count();
        metrics::set(&m.sessions_detached, count as u64);
        metrics::set(&m.detached_bytes, bytes as u64);
        metrics::set(
            &m.match_cache_bytes,
            self.fanout.borrow().cache_bytes() as u64,
        );
    }

    fn sweep_client(&self, c: &Rc<Client>, t: &SweepTick) {
        let m = self.metrics();
        let now = t.now;
        if let Some(at) = c.detached_at.get() {
            if now.saturating_sub(at) >= t.session_ttl_ms {
                self.unregister(c);
            } else if sessions::lapsed(c) {
                metrics::add(&m.sessions_evicted, 1);
                self.unregister(c);
            }
            return;
        }
        sessions::settle_hwm(c);
        if c.closing().is_some() {
            match c.closed_at.get() {
                None => c.closed_at.set(Some(now)),
                Some(at) if now.saturating_sub(at) >= CLOSE_GRACE_MS => c.force_shutdown(),
                Some(_) => {}
            }
            return;
        }
        if c.kind == ConnKind::Sse && now.saturating_sub(c.last_rx.get()) >= t.heartbeat_ms {
            // A comment line keeps proxies from closing an idle stream.
            c.last_rx.set(now);
            c.send_raw(m, b":\n\n".to_vec().into());
        }
        if c.access.auth_overdue(now) {
            let why = "authentication timeout: send an 'auth' op first";
            return close_unauthorized(m, c, why, "unauthorized");
        }
        if c.access.expired(t.unix_secs) {
            return close_unauthorized(m, c, "token expired", "token expired");
        }
        let silent = now.saturating_sub(c.last_rx.get());
        if c.ping_sent.get() && silent >= 2 * t.ping_ms {
            let code = crate::ws::close::POLICY;
            c.close(m, CloseReason::Timeout, code, "no response to ping");
        } else if !c.ping_sent.get() && silent >= t.ping_ms {
            c.ping_sent.set(true);
            let mut f = Vec::with_capacity(2);
            crate::ws::encode_frame(&mut f, crate::ws::OP_PING, b"");
            c.send_raw(m, f.into());
        }
    }
}

/// The subjects' and schedules' budgets (see `sequencer::budget`): their periodic part.
impl Core {
    /// Expires idle subjects' history (`--subject-ttl`) and updates the subject gauges.
    pub(super) fn sweep_subjects(&self) {
        let mut seq = self.sequencer.borrow_mut();
        seq.expire_idle(std::time::Instant::now());
        let g = seq.gauges();
        let m = self.metrics();
        crate::metrics::set(&m.subjects, g.subjects);
        crate::metrics::set(&m.subjects_dormant, g.dormant);
        crate::metrics::set(&m.history_bytes, g.history_bytes);
        crate::metrics::set(&m.history_evicted, g.evicted);
        crate::metrics::set(&m.subjects_expired, g.expired);
    }

    pub(super) fn count_schedule_bytes(&self) {
        let bytes = self.scheduler.borrow().bytes() as u64;
        crate::metrics::set(&self.metrics().schedule_bytes, bytes);
    }
}

/// What one sweep compares against.
struct SweepTick {
    now: u64,
    unix_secs: u64,
    /// Wall clock, µs since the Unix epoch (what message `ts` values are).
    now_us: u64,
    ping_ms: u64,
    session_ttl_ms: u64,
    heartbeat_ms: u64,
}

/// The queue gauges of one core: `ringcast_queue_bytes` and `ringcast_queue_lag_ms`.
#[derive(Default)]
struct QueueGauges {
    bytes: u64,
    lag_ms: u64,
}

impl QueueGauges {
    /// Adds connection `c`'s queue, read at wall clock `now_us`.
    fn add(&mut self, c: &Client, now_us: u64) {
        let (bytes, oldest_us, _) = c.output_view();
        self.bytes += bytes as u64;
        if let Some(ts) = oldest_us {
            self.lag_ms = self.lag_ms.max(now_us.saturating_sub(ts) / 1000);
        }
    }
}

fn close_unauthorized(m: &CoreMetrics, c: &Client, message: &str, reason: &str) {
    c.send_err(m, None, ErrorCode::Unauthorized, message);
    let code = crate::ws::close::UNAUTHORIZED;
    c.close(m, CloseReason::Unauthorized, code, reason);
}
