//! Subscriber side: one pinned monoio runtime per generator thread (io_uring, legacy epoll
//! fallback), each owning a share of the client connections. A control task polls a command
//! channel; every connection is one task reading frames into a reusable buffer and recording
//! latency, per-subject sequence gaps and close codes into the thread's [`Stats`].

use crate::wire::{self, Endpoint, NatsOp, RcFrame, Target};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// What one client connection does after the handshake.
pub enum Role {
    /// Subscribes to `subjects`; `dense` = one of them is a wildcard covering `n_subjects`.
    Sub {
        subjects: Vec<String>,
        dense: Option<usize>,
    },
    /// Only holds the connection open (answers pings).
    Idle,
}

pub struct ConnSpec {
    pub role: Role,
    pub src: Option<Ipv4Addr>,
    /// Index of the server (cluster node) to connect to, into the endpoints given to [`start`].
    pub node: usize,
}

pub enum Cmd {
    Connect {
        specs: Vec<ConnSpec>,
        concurrency: usize,
        read_buf: usize,
        timeout: Duration,
    },
    Snapshot {
        hist: bool,
        reply: Sender<Stats>,
    },
    Shutdown,
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds")
}

/// Counters of one generator thread (or their sum).
#[derive(Clone)]
pub struct Stats {
    /// End-to-end latency, ns, from the intended send time.
    pub hist: Histogram<u64>,
    pub delivered: u64,
    /// Messages missing inside a subject's stream (seq jumped forward).
    pub gaps: u64,
    /// Messages whose seq was not above the last one seen (duplicate or out of order).
    pub reorders: u64,
    /// Close frames with code 4008.
    pub slow_closes: u64,
    /// Close frames with any other code.
    pub other_closes: u64,
    /// Connections that ended without a close frame.
    pub disconnects: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub sub_ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Time the last connection became ready (hello / PONG), mono ns.
    pub last_ready_ns: u64,
    /// Time the last message was received, mono ns.
    pub last_msg_ns: u64,
    pub unparsed: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hist: new_hist(),
            delivered: 0,
            gaps: 0,
            reorders: 0,
            slow_closes: 0,
            other_closes: 0,
            disconnects: 0,
            connected: 0,
            connect_failed: 0,
            sub_ok: 0,
            errors: 0,
            first_error: None,
            last_ready_ns: 0,
            last_msg_ns: 0,
            unparsed: 0,
        }
    }
}

impl Stats {
    pub fn merge(&mut self, o: &Stats) {
        let _ = self.hist.add(&o.hist);
        self.delivered += o.delivered;
        self.gaps += o.gaps;
        self.reorders += o.reorders;
        self.slow_closes += o.slow_closes;
        self.other_closes += o.other_closes;
        self.disconnects += o.disconnects;
        self.connected += o.connected;
        self.connect_failed += o.connect_failed;
        self.sub_ok += o.sub_ok;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.last_ready_ns = self.last_ready_ns.max(o.last_ready_ns);
        self.last_msg_ns = self.last_msg_ns.max(o.last_msg_ns);
        self.unparsed += o.unparsed;
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

struct Ctx {
    /// One per server (cluster node); a connection uses `eps[spec.node]`.
    eps: Vec<Endpoint>,
    stats: RefCell<Stats>,
}

/// Which I/O driver the generator's runtimes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    Auto,
    Uring,
    Legacy,
}

/// Starts `n` pinned runtime threads; returns their command senders and the driver used.
pub fn start(
    n: usize,
    eps: Vec<Endpoint>,
    driver: Driver,
    pin: bool,
) -> (Vec<Sender<Cmd>>, &'static str) {
    let uring = match driver {
        Driver::Uring => true,
        Driver::Legacy => false,
        Driver::Auto => monoio::utils::detect_uring(),
    };
    let cpus = ringcast::server::allowed_cpus();
    let eps = Arc::new(eps);
    let mut senders = Vec::new();
    for i in 0..n {
        let (tx, rx) = crossbeam_channel::unbounded();
        senders.push(tx);
        let eps = (*eps).clone();
        let cpu = cpus.get(i % cpus.len().max(1)).copied().filter(|_| pin);
        std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    let _ = monoio::utils::bind_to_cpu_set([cpu]);
                }
                let ctx = Rc::new(Ctx {
                    eps,
                    stats: RefCell::new(Stats::default()),
                });
                if uring {
                    match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .with_entries(4096)
                        .enable_timer()
                        .build()
                    {
                        Ok(mut rt) => rt.block_on(control(ctx, rx)),
                        Err(e) => eprintln!("io_uring runtime failed: {e}"),
                    }
                } else {
                    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .enable_timer()
                        .build()
                    {
                        Ok(mut rt) => rt.block_on(control(ctx, rx)),
                        Err(e) => eprintln!("epoll runtime failed: {e}"),
                    }
                }
            })
            .expect("spawn generator thread");
    }
    (senders, if uring { "io_uring" } else { "epoll" })
}

async fn control(ctx: Rc<Ctx>, rx: Receiver<Cmd>) {
    loop {
        match rx.try_recv() {
            Ok(Cmd::Connect {
                specs,
                concurrency,
                read_buf,
                timeout,
            }) => {
                monoio::spawn(connect_all(
                    ctx.clone(),
                    specs,
                    concurrency.max(1),
                    read_buf,
                    timeout,
                ));
            }
            Ok(Cmd::Snapshot { hist, reply }) => {
                let mut st = ctx.stats.borrow_mut();
                let snap = if hist {
                    let s = st.clone();
                    st.hist.reset();
                    s
                } else {
                    let h = std::mem::replace(&mut st.hist, Histogram::new(1).expect("hist"));
                    let s = st.clone();
                    st.hist = h;
                    s
                };
                let _ = reply.send(snap);
            }
            Ok(Cmd::Shutdown) | Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => monoio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn connect_all(
    ctx: Rc<Ctx>,
    specs: Vec<ConnSpec>,
    concurrency: usize,
    read_buf: usize,
    timeout: Duration,
) {
    let inflight = Rc::new(Cell::new(0usize));
    for spec in specs {
        while inflight.get() >= concurrency {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        inflight.set(inflight.get() + 1);
        monoio::spawn(conn_task(
            ctx.clone(),
            spec,
            inflight.clone(),
            read_buf,
            timeout,
        ));
    }
}

/// Per-subject last seq of one connection.
enum SeqTrack {
    Small(Vec<(u32, u64)>),
    Dense(Vec<u64>),
}

impl SeqTrack {
    #[inline]
    fn check(&mut self, subject: u32, seq: u64, st: &mut Stats) {
        let last = match self {
            SeqTrack::Dense(v) => {
                let i = subject as usize;
                if i >= v.len() {
                    v.resize(i + 1, 0);
                }
                &mut v[i]
            }
            SeqTrack::Small(v) => match v.iter().position(|(s, _)| *s == subject) {
                Some(p) => &mut v[p].1,
                None => {
                    v.push((subject, 0));
                    &mut v.last_mut().expect("pushed").1
                }
            },
        };
        if *last == 0 || seq == *last + 1 {
            *last = seq;
        } else if seq > *last + 1 {
            st.gaps += seq - *last - 1;
            *last = seq;
        } else {
            st.reorders += 1;
        }
    }
}

struct Conn {
    ready: bool,
    n_subs: u64,
    subjects: Vec<String>,
    track: SeqTrack,
    /// NATS: the protocol byte stream reassembled from WebSocket payloads.
    nats: Vec<u8>,
}

async fn conn_task(
    ctx: Rc<Ctx>,
    spec: ConnSpec,
    inflight: Rc<Cell<usize>>,
    read_buf: usize,
    timeout: Duration,
) {
    let mut released = false;
    let release = |released: &mut bool| {
        if !*released {
            *released = true;
            inflight.set(inflight.get() - 1);
        }
    };
    let ep = &ctx.eps[spec.node % ctx.eps.len()];
    let hs = monoio::time::timeout(timeout, handshake(ep, spec.src, read_buf)).await;
    let hs = hs.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect + upgrade timed out",
        ))
    });
    let (mut stream, mut buf) = match hs {
        Ok(x) => x,
        Err(e) => {
            let mut st = ctx.stats.borrow_mut();
            st.connect_failed += 1;
            st.error(e);
            drop(st);
            release(&mut released);
            return;
        }
    };
    let (subjects, track) = match spec.role {
        Role::Sub {
            subjects,
            dense: Some(n),
        } => (subjects, SeqTrack::Dense(vec![0; n])),
        Role::Sub {
            subjects,
            dense: None,
        } => (subjects, SeqTrack::Small(Vec::with_capacity(4))),
        Role::Idle => (Vec::new(), SeqTrack::Small(Vec::new())),
    };
    let mut c = Conn {
        ready: false,
        n_subs: subjects.len() as u64,
        subjects,
        track,
        nats: Vec::new(),
    };
    let (target, sse) = (ep.target, ep.sse);
    let mut out = Vec::new();
    loop {
        if sse {
            // SSE streams only need to come up and stay open: wait for the hello event, then
            // discard whatever arrives (heartbeats).
            if !c.ready && wire::find(&buf, b"event: hello").is_some() {
                c.ready = true;
                let mut st = ctx.stats.borrow_mut();
                st.connected += 1;
                st.last_ready_ns = wire::mono_ns();
                drop(st);
                release(&mut released);
            }
            if c.ready {
                buf.clear();
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(read_buf.max(4096));
            }
            let len = buf.len();
            let (r, slice) = stream.read(std::mem::take(&mut buf).slice_mut(len..)).await;
            buf = slice.into_inner();
            if !matches!(r, Ok(n) if n > 0) {
                let mut st = ctx.stats.borrow_mut();
                st.disconnects += 1;
                if !c.ready {
                    st.connect_failed += 1;
                }
                drop(st);
                release(&mut released);
                return;
            }
            continue;
        }
        // Process everything buffered.
        let now = wire::mono_ns();
        let mut off = 0;
        let mut closed = false;
        {
            let mut st = ctx.stats.borrow_mut();
            while let Some((op, fin, hl, len, masked)) = wire::frame_header(&buf[off..]) {
                if buf.len() - off < hl + len {
                    if hl + len > buf.capacity() {
                        buf.reserve(hl + len);
                    }
                    break;
                }
                let p = &buf[off + hl..off + hl + len];
                if masked {
                    st.error("server sent a masked frame");
                }
                match op {
                    0x0..=0x2 => {
                        if target == Target::Nats {
                            c.nats.extend_from_slice(p);
                            nats_ops(&mut c, &mut st, &mut out, now);
                        } else {
                            if !fin || op == 0 {
                                st.unparsed += 1;
                            }
                            rc_text(&mut c, &mut st, &mut out, p, now);
                        }
                    }
                    0x8 => {
                        let code = if p.len() >= 2 {
                            u16::from_be_bytes([p[0], p[1]])
                        } else {
                            1005
                        };
                        if code == 4008 {
                            st.slow_closes += 1;
                        } else {
                            st.other_closes += 1;
                            st.error(format!(
                                "close {code}: {}",
                                String::from_utf8_lossy(&p[2.min(p.len())..])
                            ));
                        }
                        closed = true;
                    }
                    0x9 => out.extend(ringcast::ws::client_frame(0xA, true, p, wire::MASK)),
                    _ => {}
                }
                off += hl + len;
                if closed {
                    break;
                }
            }
        }
        if c.ready && !released {
            release(&mut released);
        }
        if closed {
            return;
        }
        if off > 0 {
            buf.copy_within(off.., 0);
            buf.truncate(buf.len() - off);
        }
        if !out.is_empty() {
            let (r, b) = stream.write_all(std::mem::take(&mut out)).await;
            out = b;
            out.clear();
            if let Err(e) = r {
                let mut st = ctx.stats.borrow_mut();
                st.disconnects += 1;
                st.error(e);
                return;
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(read_buf.max(4096));
        }
        let len = buf.len();
        let (r, slice) = stream.read(std::mem::take(&mut buf).slice_mut(len..)).await;
        buf = slice.into_inner();
        match r {
            Ok(0) | Err(_) => {
                let mut st = ctx.stats.borrow_mut();
                st.disconnects += 1;
                if !c.ready {
                    st.connect_failed += 1;
                }
                if let Err(e) = r {
                    st.error(e);
                }
                drop(st);
                release(&mut released);
                return;
            }
            Ok(_) => {}
        }
    }
}

#[inline]
fn rc_text(c: &mut Conn, st: &mut Stats, out: &mut Vec<u8>, p: &[u8], now: u64) {
    match wire::parse_rc(p) {
        RcFrame::Msg(m) => {
            st.delivered += 1;
            st.last_msg_ns = now;
            if m.t != 0 {
                st.hist.saturating_record(now.saturating_sub(m.t).max(1));
            }
            c.track.check(m.subject, m.seq, st);
        }
        RcFrame::Ok(_) => st.sub_ok += 1,
        RcFrame::Hello if !c.ready => {
            c.ready = true;
            st.connected += 1;
            st.last_ready_ns = now;
            for (i, s) in c.subjects.iter().enumerate() {
                let op = format!(r#"{{"op":"sub","id":{i},"subject":"{s}"}}"#);
                out.extend(ringcast::ws::client_frame(
                    0x1,
                    true,
                    op.as_bytes(),
                    wire::MASK,
                ));
            }
        }
        RcFrame::Hello => {}
        RcFrame::Err(e) => st.error(String::from_utf8_lossy(e)),
        RcFrame::Other => st.unparsed += 1,
    }
}

fn nats_ops(c: &mut Conn, st: &mut Stats, out: &mut Vec<u8>, now: u64) {
    let mut off = 0;
    let mut reply = Vec::new();
    while let Some((op, n)) = wire::parse_nats(&c.nats[off..]) {
        match op {
            NatsOp::Msg { subject, payload } => {
                st.delivered += 1;
                st.last_msg_ns = now;
                let (t, cnt) = wire::parse_payload(payload);
                if t != 0 {
                    st.hist.saturating_record(now.saturating_sub(t).max(1));
                }
                c.track.check(wire::subject_index(subject), cnt, st);
            }
            NatsOp::Ping => reply.extend_from_slice(b"PONG\r\n"),
            NatsOp::Pong if !c.ready => {
                c.ready = true;
                st.connected += 1;
                st.sub_ok += c.n_subs;
                st.last_ready_ns = now;
            }
            NatsOp::Info if !c.ready => {
                reply.extend_from_slice(
                    br#"CONNECT {"verbose":false,"pedantic":false,"protocol":1}"#,
                );
                reply.extend_from_slice(b"\r\n");
                for (i, s) in c.subjects.iter().enumerate() {
                    reply.extend_from_slice(format!("SUB {s} {}\r\n", i + 1).as_bytes());
                }
                reply.extend_from_slice(b"PING\r\n");
            }
            NatsOp::Err(e) => st.error(String::from_utf8_lossy(e)),
            _ => {}
        }
        off += n;
    }
    c.nats.drain(..off);
    if !reply.is_empty() {
        out.extend(ringcast::ws::client_frame(0x2, true, &reply, wire::MASK));
    }
}

/// Connects (bound to `src`), upgrades, and returns the stream with any bytes read past the
/// 101 response head.
async fn handshake(
    ep: &Endpoint,
    src: Option<Ipv4Addr>,
    read_buf: usize,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let sock = wire::start_connect(ep.addr, src, true)?;
    let std: std::net::TcpStream = sock.into();
    let mut stream = TcpStream::from_std(std)?;
    stream.writable(false).await?;
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd; `err`/`len` are valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err));
    }
    let (r, _) = stream.write_all(wire::upgrade_request(ep)).await;
    r?;
    let mut buf: Vec<u8> = Vec::with_capacity(read_buf.max(512));
    loop {
        let len = buf.len();
        if buf.capacity() - len < 256 {
            buf.reserve(4096);
        }
        let (r, slice) = stream.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        if r? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed during upgrade",
            ));
        }
        if let Some(res) = wire::parse_upgrade_response(&buf, ep.sse) {
            let head = res.map_err(std::io::Error::other)?;
            buf.drain(..head);
            return Ok((stream, buf));
        }
    }
}
