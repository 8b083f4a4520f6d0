//! Wire helpers shared by the subscriber runtimes and the publisher threads: clock, socket
//! set-up, the WebSocket client handshake, server-frame splitting, and the minimal parsers for
//! ringcast `msg`/`ok` frames and NATS `MSG` lines (no full JSON parse on the hot path).

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

/// One server frame header: (opcode, fin, header length, payload length), or None if the
/// header is incomplete. Masked server frames are reported with `masked`.
#[inline]
pub fn frame_header(b: &[u8]) -> Option<(u8, bool, usize, usize, bool)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0f;
    let fin = b[0] & 0x80 != 0;
    let masked = b[1] & 0x80 != 0;
    let (len, mut hl) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if masked {
        hl += 4;
    }
    Some((op, fin, hl, len, masked))
}

pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Fields of a ringcast `msg` frame the generator needs.
pub struct RcMsg {
    pub subject: u32,
    pub seq: u64,
    /// Intended send time from the payload (0 if absent).
    pub t: u64,
}

/// What a ringcast server text frame is.
pub enum RcFrame<'a> {
    Msg(RcMsg),
    Hello,
    /// `ok` with the raw id digits parsed (u64::MAX when not numeric) and whether it had a seq.
    Ok(u64),
    Err(&'a [u8]),
    Other,
}

const MSG_PREFIX: &[u8] = br#"{"op":"msg","subject":""#;

/// Classifies a ringcast text frame with a handful of prefix checks.
#[inline]
pub fn parse_rc(p: &[u8]) -> RcFrame<'_> {
    if let Some(rest) = p.strip_prefix(MSG_PREFIX) {
        let Some(q) = rest.iter().position(|&b| b == b'"') else {
            return RcFrame::Other;
        };
        let subject = subject_index(&rest[..q]);
        let Some(r) = rest[q..].strip_prefix(br#"","seq":"#) else {
            return RcFrame::Other;
        };
        let (seq, n) = digits(r);
        let r = &r[n..];
        // Fast path: `,"ts":T,"data":{"t":`, as ringcast encodes it and the generator publishes it.
        let t = r
            .strip_prefix(br#","ts":"#)
            .and_then(|x| x[digits(x).1..].strip_prefix(br#","data":{"t":"#))
            .map(|x| digits(x).0)
            .or_else(|| find(r, br#""t":"#).map(|i| digits(&r[i + 4..]).0))
            .unwrap_or(0);
        return RcFrame::Msg(RcMsg { subject, seq, t });
    }
    if let Some(r) = p.strip_prefix(br#"{"op":"ok","id":"#) {
        let (id, n) = digits(r);
        return RcFrame::Ok(if n == 0 { u64::MAX } else { id });
    }
    if p.starts_with(br#"{"op":"hello""#) {
        return RcFrame::Hello;
    }
    if p.starts_with(br#"{"op":"err""#) {
        return RcFrame::Err(p);
    }
    RcFrame::Other
}

/// `{"t":T,"c":C,"p":"xxx"}` padded to exactly `size` bytes (or the minimum if smaller).
pub fn payload(out: &mut Vec<u8>, t: u64, c: u64, size: usize) {
    let start = out.len();
    out.extend_from_slice(br#"{"t":"#);
    out.extend_from_slice(itoa::Buffer::new().format(t).as_bytes());
    out.extend_from_slice(br#","c":"#);
    out.extend_from_slice(itoa::Buffer::new().format(c).as_bytes());
    out.extend_from_slice(br#","p":""#);
    let used = out.len() - start + 2;
    out.resize(out.len() + size.saturating_sub(used), b'x');
    out.extend_from_slice(br#""}"#);
}

/// Parses the `t` and `c` of a payload built by [`payload`].
#[inline]
pub fn parse_payload(p: &[u8]) -> (u64, u64) {
    if let Some(r) = p.strip_prefix(br#"{"t":"#) {
        let (t, n) = digits(r);
        if let Some(r) = r[n..].strip_prefix(br#","c":"#) {
            return (t, digits(r).0);
        }
        return (t, 0);
    }
    (0, 0)
}

/// One complete NATS protocol unit at the start of `b`, with its length.
pub enum NatsOp<'a> {
    Msg {
        subject: &'a [u8],
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Info,
    Ok,
    Err(&'a [u8]),
    Other,
}

/// Parses one NATS server op from `b`; None when incomplete.
#[inline]
pub fn parse_nats(b: &[u8]) -> Option<(NatsOp<'_>, usize)> {
    let nl = b.iter().position(|&c| c == b'\n')?;
    let line = &b[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(args) = line.strip_prefix(b"MSG ") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let subject_end = args.iter().position(|&c| c == b' ').unwrap_or(args.len());
        let subject = &args[..subject_end];
        let last = args.iter().rposition(|&c| c == b' ').map_or(0, |i| i + 1);
        let (len, _) = digits(&args[last..]);
        let len = len as usize;
        let start = nl + 1;
        if b.len() < start + len + 2 {
            return None;
        }
        return Some((
            NatsOp::Msg {
                subject,
                payload: &b[start..start + len],
            },
            start + len + 2,
        ));
    }
    let op = if line == b"PING" {
        NatsOp::Ping
    } else if line == b"PONG" {
        NatsOp::Pong
    } else if line.starts_with(b"INFO") {
        NatsOp::Info
    } else if line == b"+OK" {
        NatsOp::Ok
    } else if line.starts_with(b"-ERR") {
        NatsOp::Err(line)
    } else {
        NatsOp::Other
    };
    Some((op, nl + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_msg_fast_path() {
        let mut data = Vec::new();
        payload(&mut data, 123456789, 7, 100);
        assert_eq!(data.len(), 100);
        let mut m = br#"{"op":"msg","subject":"prices.SYM0042","seq":17,"ts":99,"data":"#.to_vec();
        m.extend_from_slice(&data);
        m.push(b'}');
        match parse_rc(&m) {
            RcFrame::Msg(x) => assert_eq!((x.subject, x.seq, x.t), (42, 17, 123456789)),
            _ => panic!(),
        }
        assert_eq!(parse_payload(&data), (123456789, 7));
    }

    #[test]
    fn parses_nats_msg() {
        let b = b"MSG a.b 1 5\r\nhello\r\nPING\r\n";
        let (op, n) = parse_nats(b).unwrap();
        assert!(matches!(
            op,
            NatsOp::Msg {
                payload: b"hello",
                ..
            }
        ));
        assert!(matches!(parse_nats(&b[n..]).unwrap().0, NatsOp::Ping));
        assert!(parse_nats(b"MSG a 1 5\r\nhel").is_none());
    }
}
