//! One client connection, from accept to close: HTTP requests on a keep-alive connection, and
//! the WebSocket session after an upgrade (a reader task and a writer task).
//!
//! Owns the socket and the connection's inbound bytes. Runs entirely on the core that accepted
//! it (a connection never changes core). Parsing is delegated to [`crate::http`],
//! [`crate::ws`] and [`crate::proto`]; shard state is reached through [`Core`].
//!
//! Memory: an idle WebSocket holds no read buffer (it waits for readiness, then borrows a pooled
//! buffer for the read) and no write buffer (a pooled `WriteBatch` is borrowed per write).

use crate::auth::{self, Grant, Refusal};
use crate::bus::{CancelError, OwnerOp, OwnerReply};
use crate::http::{self, Method, Request};
use crate::metrics::{self, CloseReason};
use crate::proto::{self, ClientOp, ErrorCode};
use crate::shard::{Conn, Core, RateVerdict, SubError, WriteHalf};
use crate::ws::{self, WsDecoder, WsError, WsEvent};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, Splitable};
use monoio::net::TcpStream;
use std::borrow::Cow;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The browser client, an ES module served at `/ringcast.js` (source: `src/web/ringcast.js`).
const CLIENT_JS: &str = include_str!("web/ringcast.js");

/// The demo page served at `/` (source: `src/web/index.html`).
const DEMO_PAGE: &str = include_str!("web/index.html");

/// Bytes read per call while in the HTTP phase.
const HTTP_READ_CHUNK: usize = 512;

/// Default and maximum `limit` of `/history`.
const HISTORY_LIMIT_MAX: usize = 10_000;

/// Decrements the node's connection count when a connection ends.
struct Admission(Rc<Core>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.shared.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::sub(&self.0.metrics().connections, 1);
    }
}

/// Serves one accepted connection until it closes.
pub async fn serve(core: Rc<Core>, mut stream: TcpStream) {
    let shared = &core.shared;
    let open = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
    metrics::add(&core.metrics().connections, 1);
    let admission = Admission(core.clone());
    let _ = stream.set_nodelay(true);
    let refusal = if open > shared.cfg.max_connections {
        Some("connection limit reached")
    } else if !core.admit_connection() {
        Some("connection rate limit reached; retry later")
    } else {
        None
    };
    if let Some(why) = refusal {
        metrics::add(&core.metrics().rejected, 1);
        let _ = stream
            .write_all(http::error(ErrorCode::Overloaded, why, false))
            .await;
        return;
    }
    let limits = core.cfg().http_limits();
    let mut inbuf: Vec<u8> = Vec::new();
    loop {
        // Boxed for the same reason as the endpoints: the timer entry and read operation are
        // only needed while a request is being read.
        let read = Box::pin(monoio::time::timeout(
            core.cfg().handshake_timeout(),
            read_request(&mut stream, &mut inbuf, limits),
        ));
        let req = match read.await {
            Err(_) => {
                core.metrics().closed(CloseReason::Timeout);
                // The abandoned read may still be in flight (io_uring) and keeps the socket
                // open until it completes: shut the socket down so it completes now.
                // SAFETY: `stream` owns this fd for the whole call.
                unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR) };
                return;
            }
            Ok(Err(ReadError::Closed)) => return,
            Ok(Err(ReadError::Http(e))) => {
                core.metrics().closed(CloseReason::BadRequest);
                let code = match e.status() {
                    413 | 431 => ErrorCode::TooLarge,
                    _ => ErrorCode::BadRequest,
                };
                let mut resp = http::error(code, e.message(), false);
                if e.status() == 431 {
                    resp = http::response(
                        431,
                        "application/json",
                        &[],
                        &proto::http_error_body(code, e.message()),
                        false,
                    );
                }
                let _ = stream.write_all(resp).await;
                return;
            }
            Ok(Ok(req)) => req,
        };
        metrics::add(&core.metrics().http_requests, 1);
        let keep_alive = !req.headers.close && !core.is_shutting_down();
        if req.path == "/sse" && req.method == Method::Get {
            match sse_admission(&core, &req) {
                Ok(plan) => {
                    drop(req);
                    monoio::spawn(run_sse(core.clone(), stream, plan, admission));
                }
                Err(resp) => {
                    let _ = stream.write_all(resp).await;
                }
            }
            return;
        }
        let echo = req.path == "/ws/echo" && core.cfg().echo_endpoint;
        if (req.path == "/ws" || echo) && req.method == Method::Get {
            match upgrade_response(&req)
                .and_then(|resp| Ok((resp, ws_admission(&core, &req, echo)?)))
            {
                Ok((resp, mode)) => {
                    // Nothing from the HTTP phase may stay allocated for the WebSocket's life:
                    // keep leftover bytes only if the client already sent frames.
                    let leftover = std::mem::take(&mut inbuf);
                    let leftover = if leftover.is_empty() {
                        Vec::new()
                    } else {
                        leftover
                    };
                    drop(req);
                    // The WebSocket runs as its own (small) task; this HTTP-phase task ends, so
                    // its larger future is not kept for the connection's life.
                    monoio::spawn(run_websocket(
                        core.clone(),
                        stream,
                        resp,
                        leftover,
                        mode,
                        admission,
                    ));
                    return;
                }
                Err(resp) => {
                    core.metrics().closed(CloseReason::BadRequest);
                    let _ = stream.write_all(resp).await;
                    return;
                }
            }
        }
        // Boxed: endpoint futures are large and rare; the task of every connection would
        // otherwise be sized for them.
        let resp = Box::pin(route(&core, &req, keep_alive)).await;
        let (res, _) = stream.write_all(resp).await;
        if res.is_err() || !keep_alive {
            return;
        }
        if inbuf.is_empty() && inbuf.capacity() > HTTP_READ_CHUNK {
            inbuf = Vec::new();
        }
    }
}

enum ReadError {
    Closed,
    Http(http::HttpError),
}

async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: http::Limits,
) -> Result<Request, ReadError> {
    loop {
        if !buf.is_empty() {
            match http::parse_request(buf, limits) {
                Ok(Some((req, used))) => {
                    buf.drain(..used);
                    return Ok(req);
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Http(e)),
            }
        }
        buf.reserve(HTTP_READ_CHUNK);
        let len = buf.len();
        let (res, slice) = stream.read(std::mem::take(buf).slice_mut(len..)).await;
        *buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
    }
}

/// How a WebSocket starts, decided at upgrade.
struct WsMode {
    /// `/ws/echo`: echo messages, no protocol.
    echo: bool,
    /// The grant of a token given with the upgrade.
    grant: Option<Arc<Grant>>,
    /// Auth is on and no token came with the upgrade: an `auth` op must follow.
    must_auth: bool,
}

/// `--allowed-origins`: a browser request from another origin gets 403. Requests without an
/// `Origin` header (non-browser clients) pass.
fn check_origin(core: &Core, req: &Request) -> Result<(), Vec<u8>> {
    let origins = &core.cfg().allowed_origins;
    match &req.headers.origin {
        Some(origin) if !origins.is_empty() && !origins.iter().any(|o| o == origin) => Err(
            http::error(ErrorCode::Forbidden, "origin not allowed", false),
        ),
        _ => Ok(()),
    }
}

/// Origin and token checks of an upgrade; the error is the HTTP response to send.
fn ws_admission(core: &Core, req: &Request, echo: bool) -> Result<WsMode, Vec<u8>> {
    check_origin(core, req)?;
    let Some(verifier) = core.shared.verifier.as_ref().filter(|_| !echo) else {
        return Ok(WsMode {
            echo,
            grant: None,
            must_auth: false,
        });
    };
    match request_token(req) {
        None => Ok(WsMode {
            echo,
            grant: None,
            must_auth: true,
        }),
        Some(token) => match verifier.verify(&token) {
            Ok(g) => Ok(WsMode {
                echo,
                grant: Some(g),
                must_auth: false,
            }),
            Err(e) => Err(http::error(ErrorCode::Unauthorized, &e.0, false)),
        },
    }
}

/// The token of an HTTP request: `Authorization: Bearer`, else `?token=`.
fn request_token(req: &Request) -> Option<Cow<'_, str>> {
    auth::bearer(req.headers.authorization.as_deref())
        .map(Cow::Borrowed)
        .or_else(|| http::query_get(&req.query, "token"))
}

/// For HTTP endpoints: the grant of the request's token (`Ok(None)` when auth is off), or the
/// 401 response.
fn http_grant(core: &Core, req: &Request, keep_alive: bool) -> Result<Option<Arc<Grant>>, Vec<u8>> {
    let Some(verifier) = core.shared.verifier.as_ref() else {
        return Ok(None);
    };
    let Some(token) = request_token(req) else {
        return Err(http::error(
            ErrorCode::Unauthorized,
            "missing token (Authorization: Bearer)",
            keep_alive,
        ));
    };
    verifier
        .verify(&token)
        .map(Some)
        .map_err(|e| http::error(ErrorCode::Unauthorized, &e.0, keep_alive))
}

fn forbidden(r: Refusal, op: &str, keep_alive: bool) -> Vec<u8> {
    http::error(ErrorCode::Forbidden, &r.message(op), keep_alive)
}

/// What an SSE request asked for, checked.
struct SsePlan {
    patterns: Vec<String>,
    snapshot: bool,
    grant: Option<Arc<Grant>>,
    /// `Last-Event-ID: <session>.<k>`: resume that session after its k-th event.
    resume: Option<(String, u64)>,
}

/// Origin, token, subjects and permissions of `GET /sse`; the error is the HTTP response.
fn sse_admission(core: &Core, req: &Request) -> Result<SsePlan, Vec<u8>> {
    check_origin(core, req)?;
    let grant = http_grant(core, req, false)?;
    let mut patterns: Vec<String> = Vec::new();
    let mut snapshot = false;
    let mut last_event_id = req.headers.last_event_id.clone();
    for (k, v) in http::query_pairs(&req.query) {
        match &*k {
            "subject" => {
                crate::subject::validate_pattern(&v)
                    .map_err(|e| http::error(ErrorCode::BadRequest, &e.to_string(), false))?;
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
        return Err(http::error(
            ErrorCode::BadRequest,
            "give at least one 'subject' parameter",
            false,
        ));
    }
    if patterns.len() > core.cfg().max_subs_per_conn {
        return Err(http::error(
            ErrorCode::BadRequest,
            "too many subjects",
            false,
        ));
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

/// Serves one Server-Sent Events stream until the client goes away.
async fn run_sse(core: Rc<Core>, stream: TcpStream, plan: SsePlan, _admission: Admission) {
    let conn = core.register_kind(false, true);
    conn.set_fd(stream.as_raw_fd());
    conn.touch(core.now_ms());
    conn.set_grant(plan.grant);
    let (rh, wh) = stream.into_split();
    conn.park_writer(wh);
    let mut head = b"HTTP/1.1 200 OK\r\nServer: ringcast\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: keep-alive\r\nX-Accel-Buffering: no\r\n\r\nretry: 2000\n\n".to_vec();
    let mut hello = Vec::with_capacity(64);
    proto::hello(&mut hello, &conn.session);
    head.extend_from_slice(b"event: hello\ndata: ");
    head.extend_from_slice(&hello);
    head.extend_from_slice(b"\n\n");
    let m = core.metrics();
    conn.send_raw(m, head.into());
    let mut resumed = false;
    if let Some((session, k)) = &plan.resume {
        let announce = || {
            // Confirms the resume before the replayed events (the `hello` went out earlier).
            let mut b = Vec::with_capacity(96);
            b.extend_from_slice(br#"{"op":"resumed","session":"#);
            serde_json::to_writer(&mut b, session).expect("Vec write");
            b.extend_from_slice(format!(r#","received":{k}}}"#).as_bytes());
            conn.send_event(m, "resumed", &b);
        };
        resumed = core.resume(&conn, session, *k, announce).await.is_ok();
        if !resumed {
            let mut b = Vec::with_capacity(96);
            b.extend_from_slice(br#"{"op":"gap","session":"#);
            serde_json::to_writer(&mut b, session).expect("Vec write");
            b.extend_from_slice(br#","reason":"session_expired"}"#);
            conn.send_event(m, "gap", &b);
        }
    }
    for p in &plan.patterns {
        if resumed && conn.patterns().iter().any(|q| **q == **p) {
            continue;
        }
        let _ = core.subscribe(&conn, None, p, None, plan.snapshot && !resumed, false);
    }
    // Clients send nothing on an SSE stream: wait for EOF, discarding anything that arrives.
    let fd = conn_fd(&rh);
    loop {
        // SAFETY: readiness polling only inspects the fd; the write half never reads.
        if unsafe { &*rh.0.get() }.readable(false).await.is_err() {
            break;
        }
        let mut buf = core.take_read_buf();
        let n = recv_now(fd, &mut buf);
        core.put_read_buf(buf);
        match n {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    core.detach_or_unregister(&conn);
}

fn conn_fd(rh: &OwnedReadHalf<TcpStream>) -> i32 {
    // SAFETY: the read half keeps the socket open for as long as the caller holds it.
    unsafe { &*rh.0.get() }.as_raw_fd()
}

/// The 101 response for a valid upgrade request, or the error response for a bad one.
fn upgrade_response(req: &Request) -> Result<Vec<u8>, Vec<u8>> {
    let h = &req.headers;
    let bad = |m: &str| http::error(ErrorCode::BadRequest, m, false);
    if !h.upgrade_websocket || !h.connection_upgrade {
        return Err(bad(
            "WebSocket upgrade requires 'Upgrade: websocket' and 'Connection: Upgrade'",
        ));
    }
    if h.ws_version.as_deref() != Some("13") {
        let body =
            proto::http_error_body(ErrorCode::BadRequest, "Sec-WebSocket-Version must be 13");
        return Err(http::response(
            400,
            "application/json",
            &[("Sec-WebSocket-Version", "13")],
            &body,
            false,
        ));
    }
    let key = match &h.ws_key {
        Some(k) if k.len() == 24 && k.ends_with("==") => k,
        _ => return Err(bad("missing or malformed Sec-WebSocket-Key")),
    };
    let accept = ws::accept_key(key.as_bytes());
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nServer: ringcast\r\n\r\n"
    )
    .into_bytes())
}

/// Plain HTTP endpoints.
async fn route(core: &Core, req: &Request, keep_alive: bool) -> Vec<u8> {
    let path = req.path.as_str();
    let method = req.method;
    let not_allowed = || {
        http::error(
            ErrorCode::MethodNotAllowed,
            "method not allowed",
            keep_alive,
        )
    };
    match path {
        "/" | "/index.html" => match method {
            Method::Get | Method::Head => http::response(
                200,
                "text/html; charset=utf-8",
                &[],
                DEMO_PAGE.as_bytes(),
                keep_alive,
            ),
            _ => not_allowed(),
        },
        "/ringcast.js" => match method {
            Method::Get | Method::Head => http::response(
                200,
                "text/javascript; charset=utf-8",
                &[("Cache-Control", "no-cache")],
                CLIENT_JS.as_bytes(),
                keep_alive,
            ),
            _ => not_allowed(),
        },
        "/healthz" => match method {
            Method::Get | Method::Head => match core.shared.health() {
                Ok(()) => http::response(200, "text/plain", &[], b"ok", keep_alive),
                Err(why) => http::response(503, "text/plain", &[], why.as_bytes(), keep_alive),
            },
            _ => not_allowed(),
        },
        "/metrics" => match method {
            Method::Get
                if core.cfg().metrics_require_auth
                    && http_grant(core, req, keep_alive).is_err() =>
            {
                http::error(
                    ErrorCode::Unauthorized,
                    "metrics need a valid token",
                    keep_alive,
                )
            }
            Method::Get => {
                let bus = &core.shared.bus;
                let depth: Vec<usize> = (0..bus.cores()).map(|c| bus.depth(c)).collect();
                let node = core.shared.node_series();
                let text = crate::metrics::render(&core.shared.metrics, &depth, &node);
                http::response(
                    200,
                    "text/plain; version=0.0.4",
                    &[],
                    text.as_bytes(),
                    keep_alive,
                )
            }
            _ => not_allowed(),
        },
        "/publish" => match method {
            Method::Post => match http_grant(core, req, keep_alive) {
                Ok(grant) => http_publish(core, grant.as_deref(), &req.body, keep_alive).await,
                Err(resp) => resp,
            },
            _ => not_allowed(),
        },
        "/ws" => not_allowed(),
        "/schedule" => match method {
            Method::Get => match http_grant(core, req, keep_alive) {
                Ok(grant) => list_schedules(core, grant.as_deref(), &req.query, keep_alive).await,
                Err(resp) => resp,
            },
            _ => not_allowed(),
        },
        p if p.starts_with("/schedule/") => match method {
            Method::Delete => match http_grant(core, req, keep_alive) {
                Ok(grant) => {
                    cancel_schedule(core, grant, &p["/schedule/".len()..], keep_alive).await
                }
                Err(resp) => resp,
            },
            _ => not_allowed(),
        },
        p if p.starts_with("/history/") => match method {
            Method::Get => match http_grant(core, req, keep_alive) {
                Ok(grant) => {
                    http_history(
                        core,
                        grant.as_deref(),
                        &p["/history/".len()..],
                        &req.query,
                        keep_alive,
                    )
                    .await
                }
                Err(resp) => resp,
            },
            _ => not_allowed(),
        },
        _ => http::error(ErrorCode::NotFound, "no such endpoint", keep_alive),
    }
}

async fn http_publish(
    core: &Core,
    grant: Option<&Grant>,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let (p, at) = match proto::publish::parse_body(body) {
        Ok(v) => v,
        Err(m) => return http::error(ErrorCode::BadRequest, &m, keep_alive),
    };
    let (subject, data) = (&p.subject, p.data);
    if let Some(Err(r)) = grant.map(|g| g.check_publish(subject)) {
        return forbidden(r, "publish", keep_alive);
    }
    if data.get().len() > core.cfg().max_frame_bytes {
        return http::error(
            ErrorCode::TooLarge,
            "data larger than --max-frame-bytes",
            keep_alive,
        );
    }
    let b = &p;
    let now_ms = crate::os::now_ms();
    if let Some(at_ms) = at.filter(|at| *at > now_ms) {
        let s = crate::schedule::Scheduled {
            subject: subject.as_ref().into(),
            data: data.get().as_bytes().into(),
            msg_id: b.msg_id.as_deref().map(Into::into),
            at_ms,
        };
        let owner = crate::bus::owner_of(&subject, core.cores());
        return match core.call_owner(owner, OwnerOp::Schedule(s)).await {
            OwnerReply::Scheduled(Ok(id)) => {
                let mut out = Vec::with_capacity(96);
                out.extend_from_slice(
                    format!("{{\"schedule_id\":\"{id}\",\"subject\":").as_bytes(),
                );
                serde_json::to_writer(&mut out, &*subject).expect("Vec write");
                out.extend_from_slice(format!(",\"at\":{at_ms}}}").as_bytes());
                http::json(202, &out, keep_alive)
            }
            _ => http::error(
                ErrorCode::Overloaded,
                "too many pending scheduled publishes",
                keep_alive,
            ),
        };
    }
    let ack = match core
        .publish_http(&subject, data.get().as_bytes(), b.msg_id.as_deref())
        .await
    {
        Ok(ack) => ack,
        Err(e) => return http::error(ErrorCode::Overloaded, e.message(), keep_alive),
    };
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"subject\":");
    serde_json::to_writer(&mut out, &*subject).expect("Vec write");
    out.extend_from_slice(format!(",\"seq\":{},\"ts\":{}", ack.seq, ack.ts).as_bytes());
    if ack.duplicate {
        out.extend_from_slice(b",\"duplicate\":true");
    }
    out.push(b'}');
    http::json(200, &out, keep_alive)
}

/// `DELETE /schedule/{id}`.
async fn cancel_schedule(
    core: &Core,
    grant: Option<Arc<Grant>>,
    id: &str,
    keep_alive: bool,
) -> Vec<u8> {
    let not_found = || {
        http::error(
            ErrorCode::NotFound,
            "no such pending scheduled publish",
            keep_alive,
        )
    };
    let Some((owner, n)) = crate::schedule::parse_id(id).filter(|(o, _)| *o < core.cores()) else {
        return not_found();
    };
    match core.call_owner(owner, OwnerOp::Cancel { n, grant }).await {
        OwnerReply::Cancelled(Ok(())) => http::json(
            200,
            format!("{{\"schedule_id\":\"{id}\",\"cancelled\":true}}").as_bytes(),
            keep_alive,
        ),
        OwnerReply::Cancelled(Err(CancelError::Forbidden(r))) => {
            forbidden(r, "publish", keep_alive)
        }
        _ => not_found(),
    }
}

/// `GET /schedule?subject=S`.
async fn list_schedules(
    core: &Core,
    grant: Option<&Grant>,
    query: &str,
    keep_alive: bool,
) -> Vec<u8> {
    let Some(subject) = http::query_get(query, "subject") else {
        return http::error(
            ErrorCode::BadRequest,
            "give a 'subject' parameter",
            keep_alive,
        );
    };
    if let Err(e) = crate::subject::validate_subject(&subject) {
        return http::error(ErrorCode::BadRequest, &e.to_string(), keep_alive);
    }
    if let Some(Err(r)) = grant.map(|g| g.check_publish(&subject)) {
        return forbidden(r, "publish", keep_alive);
    }
    let owner = crate::bus::owner_of(&subject, core.cores());
    match core
        .call_owner(
            owner,
            OwnerOp::List {
                subject: subject.as_ref().into(),
            },
        )
        .await
    {
        OwnerReply::Listed(body) => http::json(200, &body, keep_alive),
        _ => http::error(ErrorCode::Internal, "unexpected owner reply", keep_alive),
    }
}

async fn http_history(
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
                http::error(
                    ErrorCode::BadRequest,
                    &format!("'{key}' must be a non-negative integer"),
                    keep_alive,
                )
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

// ---- WebSocket ----------------------------------------------------------------------------

async fn run_websocket(
    core: Rc<Core>,
    stream: TcpStream,
    upgrade: Vec<u8>,
    leftover: Vec<u8>,
    mode: WsMode,
    _admission: Admission,
) {
    let conn = core.register(true);
    conn.set_fd(stream.as_raw_fd());
    conn.touch(core.now_ms());
    conn.echo.set(mode.echo);
    conn.set_grant(mode.grant);
    if mode.must_auth {
        conn.require_auth_by(core.now_ms() + core.cfg().auth_timeout_ms);
    }
    let mut first = upgrade;
    if !mode.echo {
        let mut hello = Vec::with_capacity(64);
        proto::hello(&mut hello, &conn.session);
        ws::encode_frame(&mut first, ws::OP_TEXT, &hello);
    }
    let (rh, wh) = stream.into_split();
    conn.park_writer(wh);
    conn.send_raw(core.metrics(), first.into());
    read_loop(&core, &conn, rh, leftover).await;
    core.detach_or_unregister(&conn);
}

/// Writes everything queued, one coalesced `writev` at a time. Spawned when a connection gets
/// output; when the queue is empty it gives the write half back to the connection and ends
/// (or, once closing, shuts the socket's write side down).
pub(crate) async fn write_loop(core: Rc<Core>, conn: Rc<Conn>, mut wh: WriteHalf) {
    let m = core.metrics();
    loop {
        if !conn.has_output() {
            if conn.closing().is_some() {
                let _ = wh.shutdown().await;
            } else {
                conn.park_writer(wh);
            }
            return;
        }
        let mut batch = core.take_batch();
        conn.fill(&mut batch);
        let bytes = batch.remaining();
        while batch.remaining() > 0 {
            let (res, b) = wh.writev(batch).await;
            batch = b;
            match res {
                Ok(n) if n > 0 => batch.advance(n),
                _ => {
                    core.put_batch(batch);
                    conn.close(m, CloseReason::IoError, ws::close::INTERNAL, "write failed");
                    conn.force_shutdown();
                    return;
                }
            }
        }
        core.put_batch(batch);
        metrics::add(&m.writes, 1);
        metrics::add(&m.bytes_out, bytes as u64);
    }
}

/// Reads and handles client frames until EOF or a fatal error.
async fn read_loop(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    rh: OwnedReadHalf<TcpStream>,
    mut pending: Vec<u8>,
) {
    let m = core.metrics();
    let mut decoder = WsDecoder::new(core.cfg().max_frame_bytes);
    if !pending.is_empty() {
        if let Err(e) = process_frames(core, conn, &mut decoder, &mut pending) {
            fail(core, conn, e);
        }
    }
    let fd = rh.0.as_ref();
    // SAFETY: the read half keeps the socket open for as long as this function runs.
    let fd = unsafe { &*fd.get() }.as_raw_fd();
    loop {
        // Wait for readiness without holding a buffer; then read what is there into a pooled
        // buffer with a non-blocking recv (no second loop turn for a read operation).
        // SAFETY: readiness polling only inspects the fd; the write half never reads.
        let ready = unsafe { &*rh.0.get() }.readable(false).await;
        if ready.is_err() {
            break;
        }
        let mut buf = core.take_read_buf();
        let n = match recv_now(fd, &mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                core.put_read_buf(buf);
                continue;
            }
            Err(_) => 0,
        };
        if n == 0 {
            core.put_read_buf(buf);
            break;
        }
        conn.touch(core.now_ms());
        if conn.closing().is_some() {
            // Closing: discard input until the peer closes (or the grace period ends).
            core.put_read_buf(buf);
            continue;
        }
        let result = if pending.is_empty() {
            let r = process_frames(core, conn, &mut decoder, &mut buf);
            if !buf.is_empty() {
                pending = buf.clone();
            }
            r
        } else {
            pending.extend_from_slice(&buf);
            let r = process_frames(core, conn, &mut decoder, &mut pending);
            if pending.is_empty() {
                pending = Vec::new();
            }
            r
        };
        core.put_read_buf(buf);
        if let Err(e) = result {
            fail(core, conn, e);
        }
    }
    if conn.closing().is_none() {
        conn.close(m, CloseReason::ClientClosed, ws::close::NORMAL, "");
    }
}

/// One non-blocking `recv` into the spare capacity of `buf`; 0 means EOF.
fn recv_now(fd: i32, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        let spare = buf.spare_capacity_mut();
        // SAFETY: writes at most `spare.len()` bytes into memory `buf` owns.
        let n = unsafe {
            libc::recv(
                fd,
                spare.as_mut_ptr() as *mut libc::c_void,
                spare.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            // SAFETY: the kernel initialised `n` bytes.
            unsafe { buf.set_len(buf.len() + n as usize) };
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn fail(core: &Core, conn: &Conn, e: WsError) {
    let reason = match e {
        WsError::Protocol(_) => CloseReason::ProtocolError,
        WsError::TooBig => CloseReason::TooBig,
        WsError::BadUtf8 => CloseReason::BadUtf8,
    };
    conn.close(core.metrics(), reason, e.close_code(), e.reason());
}

/// Decodes and handles every complete frame in `buf`, leaving a trailing partial frame in it.
fn process_frames(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    decoder: &mut WsDecoder,
    buf: &mut Vec<u8>,
) -> Result<(), WsError> {
    let mut off = 0;
    while off < buf.len() && conn.closing().is_none() {
        let Some((event, used)) = decoder.decode(&mut buf[off..])? else {
            break;
        };
        if let Some(event) = event {
            let input = &buf[off..off + used];
            handle_event(core, conn, event, input);
        }
        off += used;
    }
    if conn.closing().is_some() {
        buf.clear();
    } else {
        buf.drain(..off);
    }
    Ok(())
}

fn handle_event(core: &Rc<Core>, conn: &Rc<Conn>, event: WsEvent, input: &[u8]) {
    let m = core.metrics();
    match event {
        WsEvent::Text(p) if conn.echo.get() => echo(conn, m, ws::OP_TEXT, p.bytes(input)),
        WsEvent::Binary(p) if conn.echo.get() => echo(conn, m, ws::OP_BINARY, p.bytes(input)),
        WsEvent::Text(p) => handle_op(core, conn, p.bytes(input)),
        WsEvent::Binary(_) => conn.send_err(
            m,
            None,
            ErrorCode::BadRequest,
            "binary frames are not supported; send JSON text",
        ),
        WsEvent::Ping(p) => {
            let mut f = Vec::with_capacity(2 + 125);
            ws::encode_frame(&mut f, ws::OP_PONG, p.bytes(input));
            conn.send_raw(m, f.into());
        }
        WsEvent::Pong => {}
        WsEvent::Close(code) => {
            let code = code.unwrap_or(ws::close::NORMAL);
            conn.close(m, CloseReason::ClientClosed, code, "");
        }
    }
}

/// `/ws/echo`: sends the message back as one frame of the same type.
fn echo(conn: &Conn, m: &crate::metrics::CoreMetrics, opcode: u8, payload: &[u8]) {
    let mut f = Vec::with_capacity(payload.len() + 10);
    ws::encode_frame(&mut f, opcode, payload);
    conn.send_raw(m, f.into());
}

/// Applies one client operation.
fn handle_op(core: &Rc<Core>, conn: &Rc<Conn>, text: &[u8]) {
    let m = core.metrics();
    let cfg = core.cfg();
    match conn.take_token(
        core.precise_ms(),
        cfg.max_msgs_per_sec,
        cfg.rate_abuse_limit,
    ) {
        RateVerdict::Ok => {}
        RateVerdict::Limited => {
            let id = proto::parse_op(text)
                .ok()
                .and_then(|r| r.id.map(|r| r.get().to_owned()));
            return conn.send_err(
                m,
                id.as_deref(),
                ErrorCode::RateLimited,
                "too many messages; slow down",
            );
        }
        RateVerdict::Abuse => {
            return conn.close(
                m,
                CloseReason::RateLimited,
                ws::close::RATE_LIMITED,
                "rate limited",
            );
        }
    }
    let req = match proto::parse_op(text) {
        Ok(r) => r,
        Err(e) => return conn.send_err(m, e.id.map(|r| r.get()), e.code, &e.message),
    };
    let id = req.id.map(|r| r.get());
    let ok = |conn: &Conn| {
        let mut b = Vec::with_capacity(32);
        proto::ok(&mut b, id);
        conn.send_json(m, &b);
    };
    if conn.awaiting_auth() && !matches!(req.op, ClientOp::Auth { .. } | ClientOp::Ping) {
        return conn.send_err(
            m,
            id,
            ErrorCode::Unauthorized,
            "authenticate first with an 'auth' op",
        );
    }
    let grant = conn.grant();
    let refused = |conn: &Conn, r: Refusal, op: &str| {
        conn.send_err(m, id, ErrorCode::Forbidden, &r.message(op))
    };
    match req.op {
        ClientOp::Sub {
            subject,
            since,
            snapshot,
            conflate,
        } => {
            if let Some(Err(r)) = grant.as_ref().map(|g| g.check_subscribe(&subject)) {
                return refused(conn, r, "subscribe");
            }
            if let Err(SubError::TooMany) =
                core.subscribe(conn, id, &subject, since, snapshot, conflate)
            {
                conn.send_err(
                    m,
                    id,
                    ErrorCode::BadRequest,
                    "too many subscriptions on this connection",
                );
            }
        }
        ClientOp::Unsub { subject } => {
            if core.unsubscribe(conn, &subject) {
                ok(conn);
            } else {
                conn.send_err(
                    m,
                    id,
                    ErrorCode::BadRequest,
                    "not subscribed to that pattern",
                );
            }
        }
        ClientOp::Pub(p) => {
            if let Some(Err(r)) = grant.as_ref().map(|g| g.check_publish(&p.subject)) {
                return refused(conn, r, "publish");
            }
            core.publish_ws(conn, id, &p.subject, p.data_bytes(), p.msg_id.as_deref());
        }
        ClientOp::Ping => {
            let mut b = Vec::with_capacity(32);
            proto::pong(&mut b, id);
            conn.send_json(m, &b);
        }
        ClientOp::Auth { token } => {
            let Some(verifier) = core.shared.verifier.as_ref() else {
                // Auth is off on this node (no key configured): any token is accepted.
                return ok(conn);
            };
            match verifier.verify(&token) {
                Err(e) => conn.send_err(m, id, ErrorCode::Unauthorized, &e.0),
                Ok(g) => {
                    // Subscriptions the new token no longer allows are dropped, one err each.
                    for p in conn.patterns() {
                        if let Err(r) = g.check_subscribe(&p) {
                            core.unsubscribe(conn, &p);
                            let msg =
                                format!("subscription '{p}' dropped: {}", r.message("subscribe"));
                            conn.send_err(m, None, ErrorCode::Forbidden, &msg);
                        }
                    }
                    conn.set_grant(Some(g));
                    ok(conn);
                }
            }
        }
        ClientOp::Resume { session, received } => {
            let (core, conn) = (core.clone(), conn.clone());
            let (session, id) = (session.into_owned(), id.map(str::to_owned));
            monoio::spawn(async move {
                let m = core.metrics();
                let ok = || {
                    let mut b = Vec::with_capacity(32);
                    proto::ok(&mut b, id.as_deref());
                    conn.send_json(m, &b);
                };
                if core.resume(&conn, &session, received, ok).await.is_err() {
                    let msg = "session unknown, expired, or no longer holding those messages";
                    conn.send_err(m, id.as_deref(), ErrorCode::SessionExpired, msg);
                }
            });
        }
    }
}
