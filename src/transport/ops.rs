//! Applies one client operation (a WebSocket text frame of protocol v1) to the connection's
//! core: `sub`, `unsub`, `pub`, `pubs`, `ping`, `auth`, `resume`.
//!
//! The `frame -> op` step is [`crate::proto`]; this is the `op -> apply` step: rate limit,
//! auth gate, permission checks, then the core call, and the reply (`ok`, `err`, `pong`) on
//! the client's queue. Every op counts one message against `--max-msgs-per-sec` (a `pubs`
//! batch too), except an authenticated `pub`, which counts against the publish limit instead
//! (see [`super::publish`]; so does each message of a batch). Runs on the connection's core
//! thread; no socket in sight.

use crate::auth::Refusal;
use crate::core::{Client, Core, RateVerdict, SubError};
use crate::metrics::{CloseReason, CoreMetrics};
use crate::proto::{self, ClientOp, ErrorCode};
use std::rc::Rc;

/// Applies one client operation.
pub fn apply(core: &Rc<Core>, c: &Rc<Client>, text: &[u8]) {
    let m = core.metrics();
    let parsed = proto::parse_op(text);
    let publish_only =
        matches!(&parsed, Ok(r) if matches!(r.op, ClientOp::Pub(_))) && !c.access.awaiting_auth();
    if !publish_only {
        let id = match &parsed {
            Ok(r) => r.id,
            Err(e) => e.id,
        };
        if !within_rate(core, c, id.map(|r| r.get())) {
            return;
        }
    }
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            // Behind any publish reply still outstanding: a malformed `pub` in a pipeline is
            // answered in its place.
            let mut b = Vec::with_capacity(64 + e.message.len());
            proto::err(&mut b, e.id.map(|r| r.get()), e.code, &e.message);
            return c.send_publish_reply(m, &b);
        }
    };
    let id = req.id.map(|r| r.get());
    if c.access.awaiting_auth() && !matches!(req.op, ClientOp::Auth { .. } | ClientOp::Ping) {
        let why = "authenticate first with an 'auth' op";
        return c.send_err(m, id, ErrorCode::Unauthorized, why);
    }
    let refused = |r: Refusal, op: &str| c.send_err(m, id, ErrorCode::Forbidden, &r.message(op));
    let grant = c.access.grant();
    match req.op {
        ClientOp::Sub {
            subject,
            since,
            snapshot,
            conflate,
        } => {
            if let Some(Err(r)) = grant.as_ref().map(|g| g.check_subscribe(&subject)) {
                return refused(r, "subscribe");
            }
            if let Err(e) = core.subscribe(c, id, &subject, since, snapshot, conflate) {
                let code = match e {
                    SubError::TooMany => ErrorCode::BadRequest,
                    SubError::TooManyBytes => ErrorCode::TooLarge,
                };
                c.send_err(m, id, code, e.message());
            }
        }
        ClientOp::Unsub { subject } => {
            if core.unsubscribe(c, &subject) {
                c.send_ok(m, id);
            } else {
                let why = "not subscribed to that pattern";
                c.send_err(m, id, ErrorCode::BadRequest, why);
            }
        }
        ClientOp::Pub(p) => super::publish::pub_op(core, c, id, &p),
        ClientOp::Pubs(items) => super::publish::pubs_op(core, c, id, items),
        ClientOp::Ping => {
            let mut b = Vec::with_capacity(32);
            proto::pong(&mut b, id);
            c.send_json(m, &b);
        }
        ClientOp::Auth { token } => authenticate(core, c, id, &token),
        ClientOp::Resume { session, received } => resume(
            core,
            c,
            id.map(str::to_owned),
            session.into_owned(),
            received,
        ),
    }
}

/// The inbound rate limit: false when the message (whose request id is `id`) is refused
/// (answered `rate_limited`, or the connection closed 4029 after too many in a row).
fn within_rate(core: &Core, c: &Client, id: Option<&str>) -> bool {
    let m = core.metrics();
    let cfg = core.cfg();
    match c.inbound.take(
        core.precise_ms(),
        cfg.max_msgs_per_sec,
        cfg.rate_abuse_limit,
    ) {
        RateVerdict::Ok => true,
        RateVerdict::Limited => {
            let why = "too many messages; slow down";
            c.send_err(m, id, ErrorCode::RateLimited, why);
            false
        }
        RateVerdict::Abuse => {
            let code = crate::ws::close::RATE_LIMITED;
            c.close(m, CloseReason::RateLimited, code, "rate limited");
            false
        }
    }
}

/// `auth`: installs the grant of a new token; subscriptions it no longer allows are dropped,
/// one `err` each.
fn authenticate(core: &Core, c: &Rc<Client>, id: Option<&str>, token: &str) {
    let m = core.metrics();
    let Some(verifier) = core.verifier() else {
        // Auth is off on this node (no key configured): any token is accepted.
        return c.send_ok(m, id);
    };
    match verifier.verify(token) {
        Err(e) => c.send_err(m, id, ErrorCode::Unauthorized, &e.0),
        Ok(g)
            if c.access
                .grant()
                .is_some_and(|old| old.identity() != g.identity()) =>
        {
            // A refresh renews this identity's token; it cannot make the connection (and its
            // session) someone else's.
            let why = "a refreshed token must name the connection's user (same sub and iss)";
            c.send_err(m, id, ErrorCode::Forbidden, why);
        }
        Ok(g) => {
            for p in c.patterns() {
                if let Err(r) = g.check_subscribe(&p) {
                    core.unsubscribe(c, &p);
                    drop_notice(m, c, &p, r);
                }
            }
            c.access.set_grant(Some(g));
            c.send_ok(m, id);
        }
    }
}

fn drop_notice(m: &CoreMetrics, c: &Client, pattern: &str, r: Refusal) {
    let msg = format!(
        "subscription '{pattern}' dropped: {}",
        r.message("subscribe")
    );
    c.send_err(m, None, ErrorCode::Forbidden, &msg);
}

/// `resume`: hands the session over to this connection (a task: the session may live on
/// another core); `ok` first, then the replay, or `session_expired`.
fn resume(core: &Rc<Core>, c: &Rc<Client>, id: Option<String>, session: String, received: u64) {
    let (core, c) = (core.clone(), c.clone());
    monoio::spawn(async move {
        let m = core.metrics();
        let ok = || c.send_ok(m, id.as_deref());
        if core.resume(&c, &session, received, ok).await.is_err() {
            let why = "session unknown, expired, or no longer holding those messages";
            c.send_err(m, id.as_deref(), ErrorCode::SessionExpired, why);
        }
    });
}
