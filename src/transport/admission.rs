//! Who gets in, and with what: connection limits at accept, the `Origin` check, and the token
//! of a request turned into a [`Grant`] for WebSocket upgrades, SSE streams and HTTP endpoints.
//!
//! Owns the node-wide connection count guard ([`Admitted`]) and the per-core accept-rate
//! bucket. Everything it refuses is an HTTP response, ready to write. Runs on the
//! connection's core thread, with the core's verifier and limits in force (`Core::cfg`). While
//! its core drains, new WebSockets and SSE streams are refused here ([`draining`]).

use crate::auth::{self, Grant, Refusal};
use crate::core::{subscription, Core, RateBucket};
use crate::http::{self, Headers, Request, Route};
use crate::metrics;
use crate::proto::ErrorCode;
use std::borrow::Cow;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A connection counted against `--max-connections` until dropped.
pub struct Admitted(Rc<Core>);

impl Admitted {
    /// Counts a new connection on the node, and says why it must be refused, if it must: the
    /// node is full, or this core's share of `--max-accept-per-sec` is used up.
    pub fn count(core: &Rc<Core>, accepts: &Cell<RateBucket>) -> (Admitted, Option<&'static str>) {
        let node = &core.node;
        let open = node.connections.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::add(&core.metrics().connections, 1);
        let admitted = Admitted(core.clone());
        let refusal = if open > core.cfg().max_connections {
            Some("connection limit reached")
        } else if !accept_rate_allows(core, accepts) {
            Some("connection rate limit reached; retry later")
        } else {
            None
        };
        (admitted, refusal)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.node.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::sub(&self.0.metrics().connections, 1);
    }
}

/// Takes one new connection from this core's share of `--max-accept-per-sec` (one second of
/// burst); false when over the rate (0: unlimited).
fn accept_rate_allows(core: &Core, accepts: &Cell<RateBucket>) -> bool {
    let rate = core.cfg().max_accept_per_sec as u64;
    if rate == 0 {
        return true;
    }
    let share = rate.div_ceil(core.cores() as u64);
    let mut bucket = accepts.get();
    let ok = bucket.take(core.precise_ms(), share);
    accepts.set(bucket);
    ok
}

/// `--allowed-origins`: a browser request from another origin gets 403. Requests without an
/// `Origin` header (non-browser clients) pass.
pub fn check_origin(core: &Core, req: &Request) -> Result<(), Vec<u8>> {
    let cfg = core.cfg();
    let origins = &cfg.allowed_origins;
    match &req.headers.origin {
        Some(origin) if !origins.is_empty() && !origins.iter().any(|o| o == origin) => Err(
            http::error(ErrorCode::Forbidden, "origin not allowed", false),
        ),
        _ => Ok(()),
    }
}

/// The token of an HTTP request: `Authorization: Bearer`, else `?token=`.
pub fn request_token<'a>(headers: &'a Headers, query: &'a str) -> Option<Cow<'a, str>> {
    auth::bearer(headers.authorization.as_deref())
        .map(Cow::Borrowed)
        .or_else(|| http::query_get(query, "token"))
}

/// The grant of a request's token, from its head alone (`Ok(None)` when auth is off), or why
/// it has none (for a 401).
pub fn head_grant(core: &Core, headers: &Headers, query: &str) -> Granted {
    let Some(verifier) = core.verifier() else {
        return Ok(None);
    };
    let Some(token) = request_token(headers, query) else {
        return Err("missing token (Authorization: Bearer)".into());
    };
    verifier.verify(&token).map(Some).map_err(|e| e.0)
}

/// True when `route` is served only with a valid token (auth on): its token is checked from
/// the request's head, before its body is read.
pub fn needs_token(core: &Core, route: Route<'_>) -> bool {
    core.auth_on()
        && match route {
            Route::Publish | Route::ListSchedules | Route::CancelSchedule(_) => true,
            Route::History(_) | Route::Sse | Route::AdminDrain => true,
            Route::Connz | Route::Varz => true,
            Route::Metrics => core.cfg().metrics_require_auth,
            _ => false,
        }
}

/// The 503 a new WebSocket or SSE stream gets while its core drains: `Retry-After` (whole
/// seconds, rounded up) and `retry_after_ms` say when to connect again, to another node.
pub fn draining(core: &Core) -> Vec<u8> {
    metrics::add(&core.metrics().rejected, 1);
    let r = crate::proto::Refused::draining(core.retry_hint(crate::os::random_u64()));
    super::endpoints::refused(&r, false)
}

/// A request's grant (`Ok(None)`: auth is off), or why it has none.
pub type Granted = Result<Option<Arc<Grant>>, String>;

/// A request body's share of `--max-body-buffer-bytes`, taken from its head before the body
/// is read and given back when the request has been answered (dropped).
pub struct BodyPermit {
    core: Rc<Core>,
    bytes: usize,
}

impl BodyPermit {
    /// Takes `bytes` from the node's body budget, or says why not (counted in the refusal
    /// metrics).
    pub fn take(core: &Rc<Core>, bytes: usize) -> Result<BodyPermit, &'static str> {
        let node = &core.node;
        let held = node.body_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let permit = BodyPermit {
            core: core.clone(),
            bytes,
        };
        if held > core.cfg().max_body_buffer_bytes {
            drop(permit);
            core.metrics().refused(metrics::Budget::BodyBytes);
            return Err("too many request bodies in flight; retry (--max-body-buffer-bytes)");
        }
        Ok(permit)
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        let bodies = &self.core.node.body_bytes;
        bodies.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The 403 response for a refused operation.
pub fn forbidden(r: Refusal, op: &str, keep_alive: bool) -> Vec<u8> {
    http::error(ErrorCode::Forbidden, &r.message(op), keep_alive)
}

/// How a WebSocket starts, decided at upgrade.
pub struct WsMode {
    /// `/ws/echo`: echo messages, no protocol.
    pub echo: bool,
    /// The grant of a token given with the upgrade.
    pub grant: Option<Arc<Grant>>,
    /// Auth is on and no token came with the upgrade: an `auth` op must follow.
    pub must_auth: bool,
}

/// Origin and token checks of an upgrade; the error is the HTTP response to send.
pub fn websocket(core: &Core, req: &Request, echo: bool) -> Result<WsMode, Vec<u8>> {
    check_origin(core, req)?;
    let mode = |grant, must_auth| WsMode {
        echo,
        grant,
        must_auth,
    };
    let Some(verifier) = core.verifier().filter(|_| !echo) else {
        return Ok(mode(None, false));
    };
    match request_token(&req.headers, &req.query) {
        None => Ok(mode(None, true)),
        Some(token) => match verifier.verify(&token) {
            Ok(g) => Ok(mode(Some(g), false)),
            Err(e) => Err(http::error(ErrorCode::Unauthorized, &e.0, false)),
        },
    }
}

/// What an SSE request asked for, checked.
pub struct SsePlan {
    /// Patterns to subscribe, each once.
    pub patterns: Vec<String>,
    /// Deliver the latest value of each matching subject first.
    pub snapshot: bool,
    /// The grant of the request's token.
    pub grant: Option<Arc<Grant>>,
    /// `Last-Event-ID: <session>.<k>`: resume that session after its k-th event.
    pub resume: Option<(String, u64)>,
}

/// Origin, subjects and permissions of `GET /sse`, whose token (checked from the head, see
/// [`needs_token`]) gave `granted`; the error is the HTTP response.
pub fn sse(core: &Core, req: &Request, granted: Granted) -> Result<SsePlan, Vec<u8>> {
    check_origin(core, req)?;
    let grant = granted.map_err(|why| http::error(ErrorCode::Unauthorized, &why, false))?;
    let bad = |m: &str| http::error(ErrorCode::BadRequest, m, false);
    let mut patterns: Vec<String> = Vec::new();
    let mut snapshot = false;
    let mut last_event_id = req.headers.last_event_id.clone();
    for (k, v) in http::query_pairs(&req.query) {
        match &*k {
            "subject" => {
                crate::subject::validate_pattern(&v).map_err(|e| bad(&e.to_string()))?;
                if let Some(Err(r)) = grant.as_ref().map(|g| g.check_subscribe(&v)) {
                    return Err(forbidden(r, "subscribe", false));
                }
                if !patterns.iter().any(|p| *p == *v) {
                    patterns.push(v.into_owned());
                }
            }
            "snapshot" => snapshot = v == "1" || v == "true",
            // EventSource cannot set headers; polyfills pass the id as a parameter.
            "lastEventId" if last_event_id.is_none() => last_event_id = Some(v.into_owned()),
            _ => {}
        }
    }
    if patterns.is_empty() {
        return Err(bad("give at least one 'subject' parameter"));
    }
    if patterns.len() > core.cfg().max_subs_per_conn {
        core.metrics().refused(metrics::Budget::Subscriptions);
        return Err(bad("too many subjects"));
    }
    let bytes: usize = patterns.iter().map(|p| subscription::cost(p)).sum();
    if bytes > core.cfg().max_sub_bytes_per_conn {
        core.metrics().refused(metrics::Budget::SubscriptionBytes);
        let why = "subjects over their byte budget (--max-sub-bytes-per-conn)";
        return Err(http::error(ErrorCode::TooLarge, why, false));
    }
    let resume = last_event_id.and_then(|id| {
        let (session, k) = id.rsplit_once('.')?;
        Some((session.to_owned(), k.parse().ok()?))
    });
    Ok(SsePlan {
        patterns,
        snapshot,
        grant,
        resume,
    })
}
