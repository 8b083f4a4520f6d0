//! The plain HTTP endpoints: the demo page and browser client, `/healthz`, `/metrics`,
//! `POST /publish` (one message now or scheduled, or an array of them now),
//! `/history/{subject}`, `/schedule` and `POST /admin/drain`; the operator endpoints
//! (`/admin`, `/connz`, `/varz`) are [`super::admin`]'s.
//!
//! Each takes the parsed request and returns the complete response bytes; none touches a
//! socket. Runs on the connection's core thread; what another core owns is asked of it
//! through the core (and awaited).

use super::admission::{forbidden, Granted};
use crate::auth::Grant;
use crate::core::scheduler::{CancelError, ScheduleOp, ScheduleReply};
use crate::core::{Core, PublishLimit};
use crate::http::{self, Method, Request, Route};
use crate::metrics::Budget;
use crate::proto::{self, ErrorCode, PubAck, Refused};
use crate::schedule::ScheduleError;
use std::net::SocketAddr;
use std::sync::Arc;

/// The browser client, an ES module served at `/ringcast.js` (source: `src/web/ringcast.js`).
const CLIENT_JS: &str = include_str!("../web/ringcast.js");

/// The demo page served at `/` (source: `src/web/index.html`).
const DEMO_PAGE: &str = include_str!("../web/index.html");

/// Default and maximum `limit` of `/history`.
pub const HISTORY_LIMIT_MAX: usize = 10_000;

/// What a request's answer needs of its connection.
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    /// The connection stays open after the answer.
    pub keep_alive: bool,
    /// The connection's publish limit (`POST /publish`).
    pub publishes: &'a PublishLimit,
    /// The peer's address, when the socket has one (the operator endpoints' loopback rule).
    pub peer: Option<SocketAddr>,
}

/// The response to a plain HTTP request on `route` (upgrades and SSE are not plain), whose
/// token, checked from its head before its body was read, gave `granted`. The answer to
/// `HEAD` is the one `GET` would get (a refusal included) without its body: the head still
/// gives the body's `Content-Length`, and the connection stays in step.
pub async fn respond(
    core: &Core,
    req: &Request,
    route: Route<'_>,
    conn: Conn<'_>,
    granted: Granted,
) -> Vec<u8> {
    let mut resp = route_response(core, req, route, conn, granted).await;
    if req.method == Method::Head {
        http::strip_body(&mut resp);
    }
    resp
}

/// The full response (head and body) to a request on `route`.
async fn route_response(
    core: &Core,
    req: &Request,
    route: Route<'_>,
    conn: Conn<'_>,
    granted: Granted,
) -> Vec<u8> {
    let ka = conn.keep_alive;
    let grant = || {
        granted
            .clone()
            .map_err(|why| http::error(ErrorCode::Unauthorized, &why, ka))
    };
    match route {
        Route::DemoPage => static_page("text/html; charset=utf-8", DEMO_PAGE, &[], ka),
        Route::ClientJs => {
            let no_cache = [("Cache-Control", "no-cache")];
            static_page("text/javascript; charset=utf-8", CLIENT_JS, &no_cache, ka)
        }
        Route::Healthz => match core.node.health() {
            Ok(()) => http::response(200, "text/plain", &[], b"ok", ka),
            Err(why) => http::response(503, "text/plain", &[], why.as_bytes(), ka),
        },
        Route::Metrics => metrics(core, granted.is_ok(), ka),
        Route::Publish => match grant() {
            Ok(grant) if proto::batch::is_array(&req.body) => {
                publish_batch(core, grant.as_deref(), &req.body, conn).await
            }
            Ok(grant) => publish(core, grant.as_deref(), &req.body, conn).await,
            Err(resp) => resp,
        },
        Route::ListSchedules => match grant() {
            Ok(grant) => list_schedules(core, grant.as_deref(), &req.query, ka).await,
            Err(resp) => resp,
        },
        Route::CancelSchedule(id) => match grant() {
            Ok(grant) => cancel_schedule(core, grant, id, ka).await,
            Err(resp) => resp,
        },
        Route::History(subject) => match grant() {
            Ok(grant) => history(core, grant.as_deref(), subject, &req.query, ka).await,
            Err(resp) => resp,
        },
        Route::AdminDrain => admin_drain(core, granted, conn),
        Route::AdminPage => super::admin::page(ka),
        Route::Connz | Route::Varz => {
            super::admin::respond(core, route, &req.query, conn, &granted).await
        }
        Route::MethodNotAllowed(methods) => {
            let code = ErrorCode::MethodNotAllowed;
            let body = proto::http_error_body(code, "method not allowed");
            let allow = http::allow(methods);
            http::response(405, "application/json", &[("Allow", &allow)], &body, ka)
        }
        // The socket-taking routes are served before this; reaching here means not found.
        Route::WebSocket | Route::Echo | Route::Sse | Route::NotFound => {
            http::error(ErrorCode::NotFound, "no such endpoint", ka)
        }
    }
}

fn static_page(
    content_type: &str,
    body: &str,
    headers: &[(&str, &str)],
    keep_alive: bool,
) -> Vec<u8> {
    http::response(200, content_type, headers, body.as_bytes(), keep_alive)
}

fn metrics(core: &Core, authorized: bool, keep_alive: bool) -> Vec<u8> {
    if core.cfg().metrics_require_auth && !authorized {
        let why = "metrics need a valid token";
        return http::error(ErrorCode::Unauthorized, why, keep_alive);
    }
    let text = core.node.render_metrics();
    let content_type = "text/plain; version=0.0.4";
    http::response(200, content_type, &[], text.as_bytes(), keep_alive)
}

/// `POST /publish {"subject","data","msg_id"?,"at"?}`.
async fn publish(core: &Core, grant: Option<&Grant>, body: &[u8], conn: Conn<'_>) -> Vec<u8> {
    let keep_alive = conn.keep_alive;
    let (p, at) = match proto::publish::parse_body(body) {
        Ok(v) => v,
        Err(m) => return http::error(ErrorCode::BadRequest, &m, keep_alive),
    };
    let now = core.precise_ms();
    if let Err(r) = super::publish::admit(core, grant, conn.publishes, now, &p.subject) {
        return refused(&r, keep_alive);
    }
    if p.data.get().len() > core.cfg().max_frame_bytes {
        let why = "data larger than --max-frame-bytes";
        return http::error(ErrorCode::TooLarge, why, keep_alive);
    }
    let now_ms = crate::os::now_ms();
    if let Some(at_ms) = at.filter(|at| *at > now_ms) {
        let horizon_ms = core.cfg().max_schedule_horizon.saturating_mul(1000);
        if horizon_ms > 0 && at_ms - now_ms > horizon_ms {
            core.metrics().refused(Budget::ScheduleHorizon);
            let why = format!(
                "'at' is more than --max-schedule-horizon ({} s) ahead",
                core.cfg().max_schedule_horizon
            );
            return http::error(ErrorCode::BadRequest, &why, keep_alive);
        }
        return schedule(core, &p, at_ms, keep_alive).await;
    }
    let msg_id = p.msg_id.as_deref();
    match core.publish_http(&p.subject, p.data_bytes(), msg_id).await {
        Ok(ack) => http::json(200, &ack_body(&p.subject, &ack), keep_alive),
        Err(e) => http::error(ErrorCode::Overloaded, e.message(), keep_alive),
    }
}

/// `POST /publish [{"subject","data","msg_id"?}, ..]`: 200 with one entry per message, in
/// order (`{"seq","ts"}`, + `"duplicate":true`, or `{"error":{..}}`), each admitted and
/// published on its own; 400 for a body that is no batch (not an array, empty, too long).
async fn publish_batch(core: &Core, grant: Option<&Grant>, body: &[u8], conn: Conn<'_>) -> Vec<u8> {
    let items = match proto::batch::parse_array(body) {
        Ok(items) => items,
        Err(m) => return http::error(ErrorCode::BadRequest, &m, conn.keep_alive),
    };
    let admitted = super::publish::admit_batch(core, grant, conn.publishes, items);
    let acks = core.publish_batch_http(admitted).await;
    let mut out = Vec::with_capacity(2 + 48 * acks.len());
    proto::reply::acks(&mut out, &acks);
    http::json(200, &out, conn.keep_alive)
}

/// The error response of a refused publish; `rate_limited` (429) and `draining` (503) carry
/// `Retry-After`, in whole seconds rounded up, and `retry_after_ms` in their body.
pub(super) fn refused(r: &Refused, keep_alive: bool) -> Vec<u8> {
    let body = proto::reply::http_refused_body(r);
    let retry_after = r.retry_after_ms.map(|ms| ms.div_ceil(1000).to_string());
    let headers: Vec<(&str, &str)> = retry_after
        .iter()
        .map(|secs| ("Retry-After", secs.as_str()))
        .collect();
    let status = r.code.http_status();
    http::response(status, "application/json", &headers, &body, keep_alive)
}

/// `POST /admin/drain`: begins the node's drain (see [`crate::core::drain`]) and answers 202
/// `{"draining":true,"began":B,"timeout_ms":N}` (`began` false: one was under way already).
/// With auth on it needs a valid token (401) with the `admin` permission (403); with auth
/// off only a loopback peer may ask (403).
fn admin_drain(core: &Core, granted: Granted, conn: Conn<'_>) -> Vec<u8> {
    let ka = conn.keep_alive;
    match granted {
        Err(why) => return http::error(ErrorCode::Unauthorized, &why, ka),
        Ok(Some(g)) if !g.admin => {
            let why = "token lacks the 'admin' permission";
            return http::error(ErrorCode::Forbidden, why, ka);
        }
        Ok(None) if !conn.peer.is_some_and(|p| crate::os::is_loopback(&p)) => {
            let why = "with auth off only a loopback peer may drain the node";
            return http::error(ErrorCode::Forbidden, why, ka);
        }
        Ok(_) => {}
    }
    let began = crate::core::drain::begin(&core.node);
    let body = format!(
        r#"{{"draining":true,"began":{began},"timeout_ms":{}}}"#,
        core.cfg().drain_timeout_ms
    );
    // The node is leaving: this connection closes after the answer.
    http::json(202, body.as_bytes(), false)
}

/// `{"subject":S,"seq":N,"ts":T}` (+ `"duplicate":true`).
fn ack_body(subject: &str, ack: &PubAck) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"subject\":");
    serde_json::to_writer(&mut out, subject).expect("Vec write");
    out.extend_from_slice(format!(",\"seq\":{},\"ts\":{}", ack.seq, ack.ts).as_bytes());
    if ack.duplicate {
        out.extend_from_slice(b",\"duplicate\":true");
    }
    out.push(b'}');
    out
}

/// A publish with a future `at`: 202 with its schedule id, kept by the subject's owner.
async fn schedule(core: &Core, p: &proto::Publish<'_>, at_ms: u64, keep_alive: bool) -> Vec<u8> {
    let s = crate::schedule::Scheduled {
        subject: p.subject.as_ref().into(),
        data: p.data_bytes().into(),
        msg_id: p.msg_id.as_deref().map(Into::into),
        at_ms,
    };
    let owner = crate::bus::owner_of(&p.subject, core.cores());
    match core.schedule(owner, ScheduleOp::Add(s)).await {
        ScheduleReply::Added(Ok(id)) => {
            let mut out = Vec::with_capacity(96);
            out.extend_from_slice(format!("{{\"schedule_id\":\"{id}\",\"subject\":").as_bytes());
            serde_json::to_writer(&mut out, &*p.subject).expect("Vec write");
            out.extend_from_slice(format!(",\"at\":{at_ms}}}").as_bytes());
            http::json(202, &out, keep_alive)
        }
        other => {
            core.metrics().refused(Budget::ScheduleBytes);
            let why = match other {
                ScheduleReply::Added(Err(ScheduleError::TooManyBytes)) => {
                    "pending scheduled publishes over their byte budget (--max-schedule-bytes)"
                }
                _ => "too many pending scheduled publishes",
            };
            http::error(ErrorCode::Overloaded, why, keep_alive)
        }
    }
}

/// `DELETE /schedule/{id}`.
async fn cancel_schedule(
    core: &Core,
    grant: Option<Arc<Grant>>,
    id: &str,
    keep_alive: bool,
) -> Vec<u8> {
    let not_found = || {
        let why = "no such pending scheduled publish";
        http::error(ErrorCode::NotFound, why, keep_alive)
    };
    let Some((owner, n)) = crate::schedule::parse_id(id).filter(|(o, _)| *o < core.cores()) else {
        return not_found();
    };
    match core.schedule(owner, ScheduleOp::Cancel { n, grant }).await {
        ScheduleReply::Cancelled(Ok(())) => {
            let body = format!("{{\"schedule_id\":\"{id}\",\"cancelled\":true}}");
            http::json(200, body.as_bytes(), keep_alive)
        }
        ScheduleReply::Cancelled(Err(CancelError::Forbidden(r))) => {
            forbidden(r, "publish", keep_alive)
        }
        _ => not_found(),
    }
}

/// `GET /schedule?subject=S`: the pending publishes on S, data included. With auth on it
/// needs both `publish` and `subscribe` on S: the data is not delivered yet, so a publisher
/// who may not read S must not see what other publishers scheduled on it.
async fn list_schedules(
    core: &Core,
    grant: Option<&Grant>,
    query: &str,
    keep_alive: bool,
) -> Vec<u8> {
    let Some(subject) = http::query_get(query, "subject") else {
        let why = "give a 'subject' parameter";
        return http::error(ErrorCode::BadRequest, why, keep_alive);
    };
    if let Err(e) = crate::subject::validate_subject(&subject) {
        return http::error(ErrorCode::BadRequest, &e.to_string(), keep_alive);
    }
    if let Some(g) = grant {
        // Pending publishes are future data: reading them is reading S ahead of time.
        if let Err(r) = g.check_publish(&subject) {
            return forbidden(r, "publish", keep_alive);
        }
        if let Err(r) = g.check_subscribe(&subject) {
            return forbidden(r, "subscribe", keep_alive);
        }
    }
    let owner = crate::bus::owner_of(&subject, core.cores());
    let subject = subject.as_ref().into();
    match core.schedule(owner, ScheduleOp::List { subject }).await {
        ScheduleReply::Listed(body) => http::json(200, &body, keep_alive),
        _ => http::error(ErrorCode::Internal, "unexpected owner reply", keep_alive),
    }
}

/// `GET /history/{subject}?since=N&limit=L`.
async fn history(
    core: &Core,
    grant: Option<&Grant>,
    raw_subject: &str,
    query: &str,
    keep_alive: bool,
) -> Vec<u8> {
    let subject = http::percent_decode(raw_subject);
    if let Err(e) = crate::subject::validate_subject(&subject) {
        return http::error(ErrorCode::BadRequest, &e.to_string(), keep_alive);
    }
    if let Some(Err(r)) = grant.map(|g| g.check_subscribe(&subject)) {
        return forbidden(r, "subscribe", keep_alive);
    }
    let num = |key: &str| -> Result<Option<u64>, Vec<u8>> {
        match http::query_get(query, key) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                let why = format!("'{key}' must be a non-negative integer");
                http::error(ErrorCode::BadRequest, &why, keep_alive)
            }),
        }
    };
    let since = match num("since") {
        Ok(v) => v.unwrap_or(0),
        Err(r) => return r,
    };
    let limit = match num("limit") {
        Ok(v) => (v.unwrap_or(HISTORY_LIMIT_MAX as u64) as usize).min(HISTORY_LIMIT_MAX),
        Err(r) => return r,
    };
    let body = core.history(&subject, since, limit).await;
    http::json(200, &body, keep_alive)
}
