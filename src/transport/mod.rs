//! The transport: the socket side of a connection's life on its core, and the only code that
//! reads or writes client sockets.
//!
//! ```text
//!  mod.rs        Transport: accept -> HTTP phase (keep-alive, route table) -> hand-off;
//!                the flusher and the coalesced writer; read/write buffer pools
//!  admission     connection limits, Origin, token -> Grant (upgrade, SSE, HTTP)
//!  endpoints     plain HTTP: /, /ringcast.js, /healthz, /metrics, /publish, /history, /schedule,
//!                /admin/drain
//!  admin         the operator endpoints: /admin (page), /connz, /varz; who may read them
//!  websocket     an upgraded WebSocket: hello, the reader (frames -> ops)
//!  sse           a Server-Sent Events stream
//!  ops           one protocol op applied to the core (sub, unsub, pub, pubs, ping, auth,
//!                resume)
//!  publish       admission of publishes: the connection's publish limit, then permission
//! ```
//!
//! One [`Transport`] per core, on that core's thread (`Rc`/`RefCell`). It owns what only the
//! socket side needs: the write halves of connections with nothing to send (an idle
//! connection holds no task and no buffer), the pools of read buffers and write batches, and
//! the accept-rate bucket. Output flows core -> [`FlushList`] -> flusher -> one writer task per
//! connection with output, which sends everything queued in one `writev` per turn.
//!
//! Memory: an idle WebSocket holds no read buffer (it waits for readiness, then borrows a
//! pooled buffer for the read) and no write buffer (a pooled `WriteBatch` per write).

pub mod admin;
pub mod admission;
pub mod endpoints;
mod flush;
pub mod ops;
pub mod publish;
pub mod sse;
pub mod websocket;

use crate::core::{Client, Core, PublishLimit, RateBucket};
use crate::http::{self, Request, Route};
use crate::metrics::{self, CloseReason};
use crate::outbound::WriteBatch;
use crate::proto::{self, ErrorCode};
use admission::{Admitted, BodyPermit, Granted};
use hashbrown::HashMap;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf};
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;

/// Bytes read per call while in the HTTP phase.
const HTTP_READ_CHUNK: usize = 512;

/// Spare write batches kept per core for reuse.
const BATCH_POOL: usize = 256;

/// Spare read buffers kept per core; a connection borrows one only while data is ready.
const READ_POOL: usize = 64;

/// Size of a pooled read buffer.
pub const READ_BUF_BYTES: usize = 16 << 10;

/// The write half of a connection's socket.
pub type WriteHalf = monoio::io::OwnedWriteHalf<TcpStream>;

/// The socket side of one core.
pub struct Transport {
    /// The core this transport serves.
    pub core: Rc<Core>,
    /// Write halves of connections whose writer is not running, by client key.
    parked: RefCell<HashMap<u64, WriteHalf>>,
    batches: RefCell<Vec<WriteBatch>>,
    read_bufs: RefCell<Vec<Vec<u8>>>,
    /// This core's share of `--max-accept-per-sec`.
    accepts: Cell<RateBucket>,
}

impl Transport {
    /// The transport of `core`.
    pub fn new(core: Rc<Core>) -> Rc<Transport> {
        Rc::new(Transport {
            core,
            parked: RefCell::default(),
            batches: RefCell::default(),
            read_bufs: RefCell::default(),
            accepts: Cell::default(),
        })
    }

    // ---- output -----------------------------------------------------------------------------

    /// Gives `c`'s write half to the transport (at upgrade); a writer starts once `c` has
    /// output.
    fn attach(&self, c: &Client, wh: WriteHalf) {
        self.parked.borrow_mut().insert(c.key, wh);
    }

    /// The connection's socket is gone (its reader ended): its session is detached or
    /// dropped by the core, and a parked write half is dropped here.
    fn release(&self, c: &Rc<Client>) {
        self.core.detach_or_unregister(c);
        self.parked.borrow_mut().remove(&c.key);
    }

    // ---- buffer pools -----------------------------------------------------------------------

    /// Takes a write batch from the pool.
    pub fn take_batch(&self) -> WriteBatch {
        self.batches.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a write batch to the pool.
    pub fn put_batch(&self, mut b: WriteBatch) {
        b.clear();
        let mut pool = self.batches.borrow_mut();
        if pool.len() < BATCH_POOL {
            pool.push(b);
        }
    }

    /// Takes an empty read buffer of [`READ_BUF_BYTES`] capacity.
    pub fn take_read_buf(&self) -> Vec<u8> {
        self.read_bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(READ_BUF_BYTES))
    }

    /// Returns a read buffer to the pool.
    pub fn put_read_buf(&self, mut b: Vec<u8>) {
        b.clear();
        let mut pool = self.read_bufs.borrow_mut();
        if pool.len() < READ_POOL && b.capacity() == READ_BUF_BYTES {
            pool.push(b);
        }
    }

    // ---- the HTTP phase ---------------------------------------------------------------------

    /// Serves one accepted connection: HTTP requests on a keep-alive connection until it
    /// closes, or until it becomes a WebSocket or an SSE stream (which then run as their own
    /// small task, so this larger future is not kept for the connection's life).
    pub async fn serve(self: Rc<Self>, mut stream: TcpStream) {
        let core = self.core.clone();
        let (admitted, refusal) = Admitted::count(&core, &self.accepts);
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        limit_unsent(stream.as_raw_fd(), core.cfg().max_unsent_bytes);
        if let Some(why) = refusal {
            metrics::add(&core.metrics().rejected, 1);
            let _ = stream
                .write_all(http::error(ErrorCode::Overloaded, why, false))
                .await;
            return;
        }
        let mut inbuf: Vec<u8> = Vec::new();
        // `POST /publish` counts against this connection's publish limit (request after
        // request on a keep-alive connection, as on a WebSocket).
        let publishes = PublishLimit::default();
        loop {
            let incoming = match read_request_in_time(&core, &mut stream, &mut inbuf).await {
                Ok(r) => r,
                Err(None) => return,
                Err(Some(resp)) => {
                    let _ = stream.write_all(resp).await;
                    return linger_close(stream).await;
                }
            };
            // Held until the request is answered: its body's share of the node's budget.
            let Incoming {
                req,
                granted,
                permit,
            } = incoming;
            metrics::add(&core.metrics().http_requests, 1);
            let leaving = core.is_shutting_down() || core.is_draining();
            let keep_alive = !req.headers.close && !leaving;
            let route = Route::of(req.method, &req.path, core.cfg().echo_endpoint);
            let refused = match route {
                Route::Sse | Route::WebSocket | Route::Echo if core.is_draining() => {
                    Some((stream, admission::draining(&core)))
                }
                Route::Sse => self.start_sse(stream, req, granted, admitted),
                Route::WebSocket | Route::Echo => {
                    let echo = route == Route::Echo;
                    self.start_websocket(stream, req, inbuf, echo, admitted)
                }
                _ => {
                    // Boxed: endpoint futures are large and rare; the task of every connection
                    // would otherwise be sized for them.
                    let conn = endpoints::Conn {
                        keep_alive,
                        publishes: &publishes,
                        peer,
                    };
                    let answer = endpoints::respond(&core, &req, route, conn, granted);
                    let resp = Box::pin(answer).await;
                    // Answered: the body's bytes are given back before the client can read
                    // the answer (and, say, look at `ringcast_http_body_bytes`).
                    drop(permit);
                    core.flush_outbox();
                    let (res, _) = stream.write_all(resp).await;
                    if res.is_err() || !keep_alive {
                        return;
                    }
                    if inbuf.is_empty() && inbuf.capacity() > HTTP_READ_CHUNK {
                        inbuf = Vec::new();
                    }
                    continue;
                }
            };
            // The stream moved into its own task, or was refused: answer the refusal.
            if let Some((mut stream, resp)) = refused {
                let _ = stream.write_all(resp).await;
            }
            return;
        }
    }

    /// Hands an SSE request over to its own task; a refused one comes back with its response.
    fn start_sse(
        self: Rc<Self>,
        stream: TcpStream,
        req: Request,
        granted: Granted,
        admitted: Admitted,
    ) -> Option<(TcpStream, Vec<u8>)> {
        match admission::sse(&self.core, &req, granted) {
            Ok(plan) => {
                drop(req);
                monoio::spawn(sse::run(self, stream, plan, admitted));
                None
            }
            Err(resp) => Some((stream, resp)),
        }
    }

    /// Upgrades to a WebSocket on its own task; a refused upgrade comes back with its response.
    fn start_websocket(
        self: Rc<Self>,
        stream: TcpStream,
        req: Request,
        inbuf: Vec<u8>,
        echo: bool,
        admitted: Admitted,
    ) -> Option<(TcpStream, Vec<u8>)> {
        let checked = websocket::upgrade_response(&req)
            .and_then(|resp| Ok((resp, admission::websocket(&self.core, &req, echo)?)));
        match checked {
            Ok((resp, mode)) => {
                // Nothing from the HTTP phase may stay allocated for the WebSocket's life:
                // keep leftover bytes only if the client already sent frames.
                let leftover = if inbuf.is_empty() { Vec::new() } else { inbuf };
                drop(req);
                monoio::spawn(websocket::run(self, stream, resp, leftover, mode, admitted));
                None
            }
            Err(resp) => {
                self.core.metrics().closed(CloseReason::BadRequest);
                Some((stream, resp))
            }
        }
    }
}

/// A request read in full, with what its head decided before its body was read: the grant of
/// its token (for routes that need one, see [`admission::needs_token`]) and its body's share
/// of `--max-body-buffer-bytes`.
struct Incoming {
    req: Request,
    granted: Granted,
    permit: Option<BodyPermit>,
}

/// Reads the next request within the handshake timeout. `Err(None)`: the connection is over
/// (closed, or late: its socket is shut); `Err(Some(response))`: a request to refuse, to
/// answer and close.
async fn read_request_in_time(
    core: &Rc<Core>,
    stream: &mut TcpStream,
    inbuf: &mut Vec<u8>,
) -> Result<Incoming, Option<Vec<u8>>> {
    // Boxed for the same reason as the endpoints: the timer entry and read operation are only
    // needed while a request is being read.
    let read = Box::pin(monoio::time::timeout(
        core.cfg().handshake_timeout(),
        read_request(core, stream, inbuf),
    ));
    match read.await {
        Ok(Ok(req)) => Ok(req),
        Ok(Err(ReadError::Closed)) => Err(None),
        Ok(Err(ReadError::Refused(resp))) => Err(Some(resp)),
        Err(_) => {
            core.metrics().closed(CloseReason::Timeout);
            // The abandoned read may still be in flight (io_uring) and keeps the socket open
            // until it completes: shut the socket down so it completes now.
            // SAFETY: `stream` owns this fd for the whole call.
            unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR) };
            Err(None)
        }
        Ok(Err(ReadError::Http(e))) => {
            core.metrics().closed(CloseReason::BadRequest);
            let code = match e.status() {
                413 | 431 => ErrorCode::TooLarge,
                _ => ErrorCode::BadRequest,
            };
            Err(Some(if e.status() == 431 {
                let body = proto::http_error_body(code, e.message());
                http::response(431, "application/json", &[], &body, false)
            } else {
                http::error(code, e.message(), false)
            }))
        }
    }
}

enum ReadError {
    Closed,
    Http(http::HttpError),
    /// Refused from its head, before its body was read (the response to send).
    Refused(Vec<u8>),
}

/// Reads a request: its head, then (once its token and the node's body budget allow it) its
/// body. A request whose route needs a token and whose token is missing or bad gets its 401
/// before a byte of its body is read; so does a body the budget has no room for (503).
async fn read_request(
    core: &Rc<Core>,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Incoming, ReadError> {
    let head = read_head(stream, buf, core.cfg().http_limits()).await?;
    let route = Route::of(
        head.request.method,
        &head.request.path,
        core.cfg().echo_endpoint,
    );
    let granted = if admission::needs_token(core, route) {
        admission::head_grant(core, &head.request.headers, &head.request.query)
    } else {
        Ok(None)
    };
    if head.body_len == 0 {
        buf.drain(..head.len);
        let (req, permit) = (head.request, None);
        return Ok(Incoming {
            req,
            granted,
            permit,
        });
    }
    if let Err(why) = &granted {
        core.metrics().closed(CloseReason::Unauthorized);
        let resp = http::error(ErrorCode::Unauthorized, why, false);
        return Err(ReadError::Refused(resp));
    }
    let permit = BodyPermit::take(core, head.body_len)
        .map_err(|why| ReadError::Refused(http::error(ErrorCode::Overloaded, why, false)))?;
    let body = read_body(stream, buf, &head).await?;
    let mut req = head.request;
    req.body = body;
    Ok(Incoming {
        req,
        granted,
        permit: Some(permit),
    })
}

/// Reads until `buf` starts with a complete request head.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: http::Limits,
) -> Result<http::Head, ReadError> {
    loop {
        if !buf.is_empty() {
            match http::parse_head(buf, limits) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Http(e)),
            }
        }
        buf.reserve(HTTP_READ_CHUNK);
        read_more(stream, buf).await?;
    }
}

/// Reads the body of `head` (at the start of `buf`) and returns it; what follows it
/// (pipelined requests) stays in `buf`. Space for exactly the body is reserved, once.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &http::Head,
) -> Result<Vec<u8>, ReadError> {
    let end = head.len + head.body_len;
    buf.reserve_exact(end.saturating_sub(buf.len()));
    while buf.len() < end {
        read_more(stream, buf).await?;
    }
    let rest = buf.split_off(end);
    let mut body = std::mem::replace(buf, rest);
    body.drain(..head.len);
    Ok(body)
}

/// One read into the spare capacity of `buf` (which must have some).
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let len = buf.len();
    let (res, slice) = stream.read(std::mem::take(buf).slice_mut(len..)).await;
    *buf = slice.into_inner();
    match res {
        Ok(0) | Err(_) => Err(ReadError::Closed),
        Ok(_) => Ok(()),
    }
}

/// Bytes a refused connection may still send us before it is closed: what is read (and
/// dropped) after the refusal, so that the close does not reset the connection (and lose the
/// refusal) while the client still sends a body we did not want. 64 KiB: a little more than
/// a socket's default receive buffer holds.
const LINGER_BYTES: usize = 64 << 10;

/// How long a refused connection is read (and dropped) before it is closed.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends a connection after a refusal: our side is shut down (the client reads the response,
/// then EOF), and at most [`LINGER_BYTES`] of what the client still sends are read for at most
/// [`LINGER`], so the close does not reset the connection before the response was read.
async fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut seen = 0;
        let mut buf = Vec::with_capacity(4096);
        while seen < LINGER_BYTES {
            buf.clear();
            let (res, b) = stream.read(buf).await;
            buf = b;
            match res {
                Ok(n) if n > 0 => seen += n,
                _ => return,
            }
        }
    };
    if monoio::time::timeout(LINGER, drain).await.is_err() {
        // As for a late request: the abandoned read completes once the socket is shut.
        // SAFETY: `stream` owns this fd until the end of this function.
        unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// Bounds the bytes the kernel holds unsent for this socket (`TCP_NOTSENT_LOWAT`; 0: leave
/// the kernel's default). A failure is harmless (the kernel's default stays) and not logged
/// per connection.
fn limit_unsent(fd: i32, bytes: u32) {
    if bytes == 0 {
        return;
    }
    let v = bytes as libc::c_int;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `v`, which lives across the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The descriptor of a read half, for readiness polling and non-blocking `recv`.
fn read_fd(rh: &OwnedReadHalf<TcpStream>) -> i32 {
    // SAFETY: the read half keeps the socket open for as long as the caller holds it.
    unsafe { &*rh.0.get() }.as_raw_fd()
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
