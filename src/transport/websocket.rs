//! One WebSocket connection after its upgrade: the 101 response, `hello`, then the reader,
//! which decodes frames ([`crate::ws`]) and hands text frames to [`super::ops`].
//!
//! Owns the connection's read half and its inbound bytes (a pooled read buffer only while data
//! is ready; a partial frame is kept until the rest arrives). Writing is the transport's
//! writer, started on demand. Runs on the connection's core thread for its whole life.

use super::admission::{Admitted, WsMode};
use super::Transport;
use crate::core::{Client, ConnKind, Core};
use crate::http::{self, Request};
use crate::metrics::CloseReason;
use crate::proto::{self, ErrorCode};
use crate::ws::{self, WsDecoder, WsError, WsEvent};
use monoio::io::{OwnedReadHalf, Splitable};
use monoio::net::TcpStream;
use std::os::fd::AsRawFd;
use std::rc::Rc;

/// The 101 response for a valid upgrade request, or the error response for a bad one.
pub fn upgrade_response(req: &Request) -> Result<Vec<u8>, Vec<u8>> {
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

/// Serves an upgraded WebSocket until it closes: `upgrade` is the 101 response, `leftover`
/// any frames the client sent with its upgrade request.
pub async fn run(
    t: Rc<Transport>,
    stream: TcpStream,
    upgrade: Vec<u8>,
    leftover: Vec<u8>,
    mode: WsMode,
    _admitted: Admitted,
) {
    let core = &t.core;
    let kind = if mode.echo {
        ConnKind::Echo
    } else {
        ConnKind::WebSocket
    };
    let c = core.register(kind);
    c.set_fd(stream.as_raw_fd());
    c.touch(core.now_ms());
    c.access.set_grant(mode.grant);
    if mode.must_auth {
        c.access
            .require_auth_by(core.now_ms() + core.cfg().auth_timeout_ms);
    }
    let mut first = upgrade;
    if !mode.echo {
        let mut hello = Vec::with_capacity(64);
        proto::hello(&mut hello, &c.session);
        ws::encode_frame(&mut first, ws::OP_TEXT, &hello);
    }
    let (rh, wh) = stream.into_split();
    t.attach(&c, wh);
    c.send_raw(core.metrics(), first.into());
    if core.is_draining() {
        // Upgraded just as its core began draining (the drain missed it): sent away too.
        core.send_away(&c);
    }
    read_loop(&t, &c, rh, leftover).await;
    t.release(&c);
}

/// Reads and handles client frames until EOF or a fatal error.
async fn read_loop(
    t: &Transport,
    c: &Rc<Client>,
    rh: OwnedReadHalf<TcpStream>,
    mut pending: Vec<u8>,
) {
    let core = &t.core;
    let mut decoder = WsDecoder::new(core.cfg().max_frame_bytes);
    if !pending.is_empty() {
        if let Err(e) = process_frames(core, c, &mut decoder, &mut pending) {
            fail(core, c, e);
        }
    }
    let fd = super::read_fd(&rh);
    loop {
        // Wait for readiness without holding a buffer; then read what is there into a pooled
        // buffer with a non-blocking recv (no second loop turn for a read operation).
        // SAFETY: readiness polling only inspects the fd; the write half never reads.
        let ready = unsafe { &*rh.0.get() }.readable(false).await;
        if ready.is_err() {
            break;
        }
        let mut buf = t.take_read_buf();
        let n = match super::recv_now(fd, &mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                t.put_read_buf(buf);
                continue;
            }
            Err(_) => 0,
        };
        if n == 0 {
            t.put_read_buf(buf);
            break;
        }
        c.touch(core.now_ms());
        if c.closing().is_some() {
            // Closing: discard input until the peer closes (or the grace period ends).
            t.put_read_buf(buf);
            continue;
        }
        let result = if pending.is_empty() {
            let r = process_frames(core, c, &mut decoder, &mut buf);
            if !buf.is_empty() {
                pending = buf.clone();
            }
            r
        } else {
            pending.extend_from_slice(&buf);
            let r = process_frames(core, c, &mut decoder, &mut pending);
            if pending.is_empty() {
                pending = Vec::new();
            }
            r
        };
        t.put_read_buf(buf);
        if let Err(e) = result {
            fail(core, c, e);
        }
    }
    if c.closing().is_none() {
        c.close(
            core.metrics(),
            CloseReason::ClientClosed,
            ws::close::NORMAL,
            "",
        );
    }
}

/// A protocol failure: close with its code.
fn fail(core: &Core, c: &Client, e: WsError) {
    let reason = match e {
        WsError::Protocol(_) => CloseReason::ProtocolError,
        WsError::TooBig => CloseReason::TooBig,
        WsError::BadUtf8 => CloseReason::BadUtf8,
    };
    c.close(core.metrics(), reason, e.close_code(), e.reason());
}

/// Decodes and handles every complete frame in `buf`, leaving a trailing partial frame in it.
fn process_frames(
    core: &Rc<Core>,
    c: &Rc<Client>,
    decoder: &mut WsDecoder,
    buf: &mut Vec<u8>,
) -> Result<(), WsError> {
    let mut off = 0;
    while off < buf.len() && c.closing().is_none() {
        let Some((event, used)) = decoder.decode(&mut buf[off..])? else {
            break;
        };
        if let Some(event) = event {
            let input = &buf[off..off + used];
            handle_event(core, c, event, input);
        }
        off += used;
    }
    if c.closing().is_some() {
        buf.clear();
    } else {
        buf.drain(..off);
    }
    Ok(())
}

fn handle_event(core: &Rc<Core>, c: &Rc<Client>, event: WsEvent, input: &[u8]) {
    let m = core.metrics();
    let echo = c.kind == ConnKind::Echo;
    match event {
        WsEvent::Text(p) if echo => send_frame(core, c, ws::OP_TEXT, p.bytes(input)),
        WsEvent::Binary(p) if echo => send_frame(core, c, ws::OP_BINARY, p.bytes(input)),
        WsEvent::Text(p) => super::ops::apply(core, c, p.bytes(input)),
        WsEvent::Binary(_) => {
            let why = "binary frames are not supported; send JSON text";
            c.send_err(m, None, ErrorCode::BadRequest, why)
        }
        WsEvent::Ping(p) => send_frame(core, c, ws::OP_PONG, p.bytes(input)),
        WsEvent::Pong => {}
        WsEvent::Close(code) => {
            let code = code.unwrap_or(ws::close::NORMAL);
            c.close(m, CloseReason::ClientClosed, code, "");
        }
    }
}

/// Sends one frame of `opcode` (echo replies, pongs).
fn send_frame(core: &Core, c: &Client, opcode: u8, payload: &[u8]) {
    let mut f = Vec::with_capacity(payload.len() + 10);
    ws::encode_frame(&mut f, opcode, payload);
    c.send_raw(core.metrics(), f.into());
}
