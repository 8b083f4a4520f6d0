//! One subscriber connection as a task on its generator thread's runtime: open it (handshake
//! under the connect timeout), then loop — take every complete frame out of the read buffer
//! and hand it to the [`Session`], send what that queued (subscriptions, pongs), read more —
//! until the server closes it or the socket fails. SSE streams only wait for their `hello`
//! event and then discard what arrives. The task owns its socket and buffers; it counts into
//! its thread's [`super::stats::Stats`] and gives back its connect-concurrency [`Slot`] once it is ready or
//! has failed.

use super::handshake::handshake;
use super::session::Session;
use super::{ConnSpec, Ctx};
use crate::wire::{self, Endpoint, Frames};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::cell::Cell;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

/// A place among the connects in flight of one batch, given back at most once.
struct Slot {
    inflight: Rc<Cell<usize>>,
    held: bool,
}

impl Slot {
    fn new(inflight: Rc<Cell<usize>>) -> Slot {
        Slot {
            inflight,
            held: true,
        }
    }

    fn release(&mut self) {
        if self.held {
            self.held = false;
            self.inflight.set(self.inflight.get() - 1);
        }
    }
}

/// An open connection and what its loop threads through.
struct Conn {
    ctx: Rc<Ctx>,
    stream: TcpStream,
    /// Bytes read and not yet taken as frames.
    buf: Vec<u8>,
    /// Frames to send before the next read.
    out: Vec<u8>,
    read_buf: usize,
    slot: Slot,
    session: Session,
}

/// The task of one connection, from connect to close.
pub(super) async fn conn_task(
    ctx: Rc<Ctx>,
    spec: ConnSpec,
    inflight: Rc<Cell<usize>>,
    read_buf: usize,
    timeout: Duration,
) {
    let mut slot = Slot::new(inflight);
    let ep = &ctx.eps[spec.node % ctx.eps.len()];
    let (target, sse) = (ep.target, ep.sse);
    let Some((stream, buf)) = open(&ctx, ep, spec.src, read_buf, timeout).await else {
        slot.release();
        return;
    };
    let mut c = Conn {
        ctx,
        stream,
        buf,
        out: Vec::new(),
        read_buf,
        slot,
        session: Session::new(spec.role, target),
    };
    if sse {
        c.run_sse().await;
    } else {
        c.run_ws().await;
    }
}

/// The handshake within `timeout`; a failure is counted (connect failed, first error).
async fn open(
    ctx: &Ctx,
    ep: &Endpoint,
    src: Option<Ipv4Addr>,
    read_buf: usize,
    timeout: Duration,
) -> Option<(TcpStream, Vec<u8>)> {
    let hs = monoio::time::timeout(timeout, handshake(ep, src, read_buf)).await;
    let hs = hs.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect + upgrade timed out",
        ))
    });
    match hs {
        Ok(x) => Some(x),
        Err(e) => {
            let mut st = ctx.stats.borrow_mut();
            st.connect_failed += 1;
            st.error(e);
            None
        }
    }
}

impl Conn {
    /// WebSocket: frames in, replies out, until a close frame or the socket ends.
    async fn run_ws(&mut self) {
        loop {
            let closed = self.take_frames();
            if self.session.ready {
                self.slot.release();
            }
            if closed || !self.flush().await {
                return;
            }
            match self.read_more().await {
                Ok(0) => return self.ended(None),
                Err(e) => return self.ended(Some(e)),
                Ok(_) => {}
            }
        }
    }

    /// SSE: only needs to come up and stay open. Waits for the hello event, then discards
    /// whatever arrives (heartbeats).
    async fn run_sse(&mut self) {
        loop {
            if !self.session.ready && wire::find(&self.buf, b"event: hello").is_some() {
                self.session.ready = true;
                let mut st = self.ctx.stats.borrow_mut();
                st.connected += 1;
                st.last_ready_ns = wire::mono_ns();
                drop(st);
                self.slot.release();
            }
            if self.session.ready {
                self.buf.clear();
            }
            if !matches!(self.read_more().await, Ok(n) if n > 0) {
                return self.ended(None);
            }
        }
    }

    /// Hands every complete frame in the buffer to the session and drops them from it. True
    /// when one was a close frame.
    fn take_frames(&mut self) -> bool {
        let now = wire::mono_ns();
        let Conn {
            ctx,
            buf,
            out,
            session,
            ..
        } = self;
        let mut st = ctx.stats.borrow_mut();
        let mut frames = Frames::new(buf);
        let closed = frames
            .by_ref()
            .any(|f| session.on_frame(&f, &mut st, out, now));
        let (used, pending) = (frames.consumed(), frames.pending());
        drop(st);
        if closed {
            return true;
        }
        if let Some(need) = pending.filter(|&n| n > buf.capacity()) {
            buf.reserve(need);
        }
        if used > 0 {
            buf.copy_within(used.., 0);
            buf.truncate(buf.len() - used);
        }
        false
    }

    /// Sends what the session queued; false (counted as a disconnect) if the write failed.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let (r, b) = self.stream.write_all(std::mem::take(&mut self.out)).await;
        self.out = b;
        self.out.clear();
        if let Err(e) = r {
            let mut st = self.ctx.stats.borrow_mut();
            st.disconnects += 1;
            st.error(e);
            return false;
        }
        true
    }

    /// One read appended to the buffer (grown first when nearly full).
    async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(self.read_buf.max(4096));
        }
        let len = self.buf.len();
        let buf = std::mem::take(&mut self.buf);
        let (r, slice) = self.stream.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        r
    }

    /// The socket ended without a close frame (`err`, if given, is counted as an error).
    fn ended(&mut self, err: Option<std::io::Error>) {
        let mut st = self.ctx.stats.borrow_mut();
        st.disconnects += 1;
        if !self.session.ready {
            st.connect_failed += 1;
        }
        if let Some(e) = err {
            st.error(e);
        }
        drop(st);
        self.slot.release();
    }
}
