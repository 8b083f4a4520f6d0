//! What the generator speaks on the wire, shared by the subscriber runtimes (`bench-<i>`
//! threads) and the publisher threads (`bench-pub-rx` and the per-step pacers): the target and
//! endpoint types, the clock every latency is measured with, socket set-up and the HTTP upgrade.
//! The submodules hold the framing and the two protocols: [`ws`] (server frames in, masked
//! client frames out), [`rc`] (ringcast JSON ops), [`nats`] (the NATS text protocol) and
//! [`mod@payload`] (the `data` every published message carries). Everything here is a pure
//! function of its arguments or reads only the clock; nothing is shared between threads.

pub mod nats;
mod payload;
pub mod rc;
mod ws;

pub use nats::{NatsOp, NATS_CONNECT};
pub use payload::{parse_payload, payload};
pub use rc::{parse_rc, RcFrame};
pub use ws::{close_code, frame, Frame, Frames};

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

/// Which server speaks on the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// ringcast's JSON protocol.
    Ringcast,
    /// The NATS text protocol over WebSocket.
    Nats,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Ringcast => "ringcast",
            Target::Nats => "nats",
        }
    }

    /// WebSocket path when a URL names none: ringcast serves `/ws`, nats-server `/`.
    pub fn default_path(self) -> &'static str {
        match self {
            Target::Ringcast => "/ws",
            Target::Nats => "/",
        }
    }
}

/// Where to connect.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub target: Target,
    /// Open SSE streams (`GET <path>`, 200 `text/event-stream`) instead of WebSockets
    /// (`idle` and `storm` only).
    pub sse: bool,
}

/// CLOCK_MONOTONIC in nanoseconds: one clock shared by every thread of this process, so a
/// publisher's intended send time and a subscriber's receive time are directly comparable.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A non-blocking TCP socket, bound to `src` (port chosen at connect time) when given, with a
/// connect already started. The caller waits for writability.
pub fn start_connect(
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
    nonblocking: bool,
) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = src {
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option value pointer/length. Failure is harmless (only makes
        // the source port be reserved at bind time).
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        s.bind(&SocketAddr::new(ip.into(), 0).into())?;
    }
    s.set_nodelay(true)?;
    s.set_nonblocking(nonblocking)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s)
}

/// The HTTP upgrade request (fixed key: the generator does not check the accept hash).
pub fn upgrade_request(ep: &Endpoint) -> Vec<u8> {
    if ep.sse {
        return format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            ep.path, ep.host
        )
        .into_bytes();
    }
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ep.path, ep.host
    )
    .into_bytes()
}

/// If `buf` holds a complete response head: Ok(head length) for a 101 (or, for SSE, a 200),
/// Err for anything else.
pub fn parse_upgrade_response(buf: &[u8], sse: bool) -> Option<Result<usize, String>> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    if buf.starts_with(if sse {
        b"HTTP/1.1 200"
    } else {
        b"HTTP/1.1 101"
    }) {
        Some(Ok(end))
    } else {
        let line = String::from_utf8_lossy(&buf[..end.min(200)])
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        Some(Err(format!("upgrade refused: {line}")))
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// Parses leading ASCII digits: (value, digits consumed).
#[inline]
pub fn digits(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    let mut n = 0;
    while n < b.len() && b[n].is_ascii_digit() {
        v = v.wrapping_mul(10).wrapping_add((b[n] - b'0') as u64);
        n += 1;
    }
    (v, n)
}

/// The numeric suffix of a subject (`prices.SYM0042` -> 42, `bench.bcast.0` -> 0): the index
/// every per-subject counter uses.
#[inline]
pub fn subject_index(s: &[u8]) -> u32 {
    let mut i = s.len();
    while i > 0 && s[i - 1].is_ascii_digit() {
        i -= 1;
    }
    digits(&s[i..]).0 as u32
}
