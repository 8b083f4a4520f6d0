//! The admission of publishes: the connection's publish limit, then the grant's publish
//! permission, for a WebSocket `pub`, each message of a `pubs` batch, and each item of an
//! array `POST /publish`; what passes goes to the core's one publish path, what does not is
//! answered (`err`, or its batch entry) and counted in `ringcast_publishes_refused_total`.
//!
//! Every publish that is valid counts one against the limit, before its permission is checked
//! (so a flood of forbidden publishes is bounded too): a `pub`, each message of a batch (a
//! batch reads the clock once, so of N messages over a limit with room for K exactly K pass).
//! Runs on the connection's core thread; the limit belongs to the connection (a WebSocket's
//! [`Client`], a keep-alive HTTP connection's serve loop).

use crate::auth::Grant;
use crate::core::{Client, Core, PublishLimit, RateVerdict};
use crate::metrics::{CloseReason, PublishRefusal};
use crate::proto::{self, ErrorCode, Item, Publish, Refused};
use std::rc::Rc;

/// The publish rate of a connection holding `grant`: its token's `max_publish_rate`, else
/// `--max-publish-per-sec` (also without a token); 0 is unlimited.
pub fn rate(core: &Core, grant: Option<&Grant>) -> u32 {
    let default = core.cfg().max_publish_per_sec;
    grant.map_or(default, |g| g.publish_rate(default))
}

/// Admits one valid publish on `subject` at core time `now_ms`: not while the core drains
/// (`draining`, retry on a peer), within `limit` (at `rate`), then allowed by `grant`
/// (`None`: auth off).
pub fn admit(
    core: &Core,
    grant: Option<&Grant>,
    limit: &PublishLimit,
    now_ms: u64,
    subject: &str,
) -> Result<(), Refused> {
    let m = core.metrics();
    if core.is_draining() {
        // The node is leaving: every ack it gives was given before the drain.
        m.refused_publish(PublishRefusal::Draining);
        return Err(Refused::draining(core.retry_hint(crate::os::random_u64())));
    }
    if let Err(retry_after_ms) = limit.take(now_ms, rate(core, grant)) {
        m.refused_publish(PublishRefusal::RateLimited);
        return Err(Refused::rate_limited(retry_after_ms));
    }
    if let Some(Err(r)) = grant.map(|g| g.check_publish(subject)) {
        m.refused_publish(PublishRefusal::Forbidden);
        return Err(Refused::new(ErrorCode::Forbidden, r.message("publish")));
    }
    Ok(())
}

/// Admits each message of a batch on its own, in order, as a single `POST /publish` is: its
/// validation, the limit, the permission, then data over `--max-frame-bytes` (an HTTP body
/// may hold more than a frame).
pub fn admit_batch<'a>(
    core: &Core,
    grant: Option<&Grant>,
    limit: &PublishLimit,
    items: Vec<Item<'a>>,
) -> Vec<Result<Publish<'a>, Refused>> {
    let now_ms = core.precise_ms();
    let max_data = core.cfg().max_frame_bytes;
    let admit_one = |item: Item<'a>| {
        let p = item.map_err(|why| Refused::new(ErrorCode::BadRequest, why))?;
        admit(core, grant, limit, now_ms, &p.subject)?;
        if p.data.get().len() > max_data {
            let why = "data larger than --max-frame-bytes";
            return Err(Refused::new(ErrorCode::TooLarge, why));
        }
        Ok(p)
    };
    items.into_iter().map(admit_one).collect()
}

/// A WebSocket `pub`: admitted, then published (the `ok` comes with the sequencer's answer).
/// A publish over the limit counts as a refused message towards `--rate-abuse-limit` (close
/// 4029), one within it ends the run, as for any other op under `--max-msgs-per-sec`.
pub fn pub_op(core: &Core, c: &Rc<Client>, id: Option<&str>, p: &Publish<'_>) {
    let m = core.metrics();
    let grant = c.access.grant();
    match admit(
        core,
        grant.as_deref(),
        &c.publishes,
        core.precise_ms(),
        &p.subject,
    ) {
        Ok(()) => {
            c.inbound.passed();
            core.publish_ws(c, id, &p.subject, p.data_bytes(), p.msg_id.as_deref());
        }
        Err(r) if r.code == ErrorCode::RateLimited => {
            if c.inbound.refused(core.cfg().rate_abuse_limit) == RateVerdict::Abuse {
                let code = crate::ws::close::RATE_LIMITED;
                return c.close(m, CloseReason::RateLimited, code, "rate limited");
            }
            send_refused(core, c, id, &r);
        }
        Err(r) => {
            c.inbound.passed();
            send_refused(core, c, id, &r);
        }
    }
}

/// A WebSocket `pubs`: each message admitted and published on its own; one `ok` with `acks`.
pub fn pubs_op(core: &Core, c: &Rc<Client>, id: Option<&str>, items: Vec<Item<'_>>) {
    let grant = c.access.grant();
    let admitted = admit_batch(core, grant.as_deref(), &c.publishes, items);
    core.publish_batch_ws(c, id, admitted);
}

fn send_refused(core: &Core, c: &Client, id: Option<&str>, r: &Refused) {
    let mut b = Vec::with_capacity(96 + r.message.len());
    proto::reply::refused(&mut b, id, r);
    c.send_publish_reply(core.metrics(), &b);
}
