//! One Server-Sent Events stream (`GET /sse?subject=..`): the response head and `hello`, an
//! optional resume (`Last-Event-ID: <session>.<k>`), the subscriptions, then nothing but
//! waiting for the client to go away (SSE clients send nothing).
//!
//! Events are framed by the writer from the same shared frames as WebSocket messages: only
//! the `id:` line is per connection. Runs on the connection's core thread for its whole life.

use super::admission::{Admitted, SsePlan};
use super::Transport;
use crate::core::{Client, ConnKind, Core};
use crate::proto;
use monoio::io::{OwnedReadHalf, Splitable};
use monoio::net::TcpStream;
use std::os::fd::AsRawFd;
use std::rc::Rc;

/// The response head: no caching, no proxy buffering, reconnect after 2 s.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: ringcast\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: keep-alive\r\nX-Accel-Buffering: no\r\n\r\nretry: 2000\n\n";

/// Serves one stream until the client goes away.
pub async fn run(t: Rc<Transport>, stream: TcpStream, plan: SsePlan, _admitted: Admitted) {
    let core = t.core.clone();
    let c = core.register(ConnKind::Sse);
    c.set_fd(stream.as_raw_fd());
    c.touch(core.now_ms());
    c.access.set_grant(plan.grant.clone());
    let (rh, wh) = stream.into_split();
    t.attach(&c, wh);
    let mut head = HEAD.to_vec();
    let mut hello = Vec::with_capacity(64);
    proto::hello(&mut hello, &c.session);
    head.extend_from_slice(b"event: hello\ndata: ");
    head.extend_from_slice(&hello);
    head.extend_from_slice(b"\n\n");
    c.send_raw(core.metrics(), head.into());
    if core.is_draining() {
        // Started just as its core began draining (the drain missed it): sent away too.
        core.send_away(&c);
        drain_until_eof(&t, &rh).await;
        return t.release(&c);
    }
    let resumed = match &plan.resume {
        Some((session, k)) => resume(&core, &c, session, *k).await,
        None => false,
    };
    for p in &plan.patterns {
        if resumed && c.patterns().iter().any(|q| **q == **p) {
            continue;
        }
        let snapshot = plan.snapshot && !resumed;
        let _ = core.subscribe(&c, None, p, None, snapshot, false);
    }
    drain_until_eof(&t, &rh).await;
    t.release(&c);
}

/// Resumes `session` after its `k`-th event: `resumed` before the replayed events, or a `gap`
/// with `session_expired`. True when resumed.
async fn resume(core: &Rc<Core>, c: &Rc<Client>, session: &str, k: u64) -> bool {
    let m = core.metrics();
    let announce = || {
        // Confirms the resume before the replayed events (the `hello` went out earlier).
        let mut b = Vec::with_capacity(96);
        b.extend_from_slice(br#"{"op":"resumed","session":"#);
        serde_json::to_writer(&mut b, session).expect("Vec write");
        b.extend_from_slice(format!(r#","received":{k}}}"#).as_bytes());
        c.send_event(m, "resumed", &b);
    };
    if core.resume(c, session, k, announce).await.is_ok() {
        return true;
    }
    let mut b = Vec::with_capacity(96);
    b.extend_from_slice(br#"{"op":"gap","session":"#);
    serde_json::to_writer(&mut b, session).expect("Vec write");
    b.extend_from_slice(br#","reason":"session_expired"}"#);
    c.send_event(m, "gap", &b);
    false
}

/// Clients send nothing on an SSE stream: waits for EOF, discarding anything that arrives.
async fn drain_until_eof(t: &Transport, rh: &OwnedReadHalf<TcpStream>) {
    let fd = super::read_fd(rh);
    loop {
        // SAFETY: readiness polling only inspects the fd; the write half never reads.
        if unsafe { &*rh.0.get() }.readable(false).await.is_err() {
            break;
        }
        let mut buf = t.take_read_buf();
        let n = super::recv_now(fd, &mut buf);
        t.put_read_buf(buf);
        match n {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
}
