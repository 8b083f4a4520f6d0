//! The NATS text protocol over WebSocket (the comparison target): parsing server ops (`MSG`,
//! `PING`, `INFO`, `-ERR`, ...) out of the byte stream reassembled from WebSocket payloads, and
//! writing the client's `CONNECT`, `SUB` and `PUB`. Used by the subscriber connections on the
//! `bench-<i>` threads and by the publishers' pacer and `bench-pub-rx` threads.

use super::digits;

/// The client's `CONNECT` line: no `+OK` per op (`verbose: false`).
pub const NATS_CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n";

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

/// Hands every complete op at the start of `buf` to `f`, in order, then drops them from `buf`
/// (an incomplete op stays for the next read).
pub fn drain_ops(buf: &mut Vec<u8>, mut f: impl FnMut(NatsOp<'_>)) {
    let mut off = 0;
    while let Some((op, n)) = parse_nats(&buf[off..]) {
        f(op);
        off += n;
    }
    buf.drain(..off);
}

/// Appends what a subscriber sends once it has the server's `INFO`: `CONNECT`, one `SUB` per
/// subject (sids from 1) and a `PING`, whose `PONG` tells that all of them are in place.
pub fn encode_subscribe(out: &mut Vec<u8>, subjects: &[String]) {
    out.extend_from_slice(NATS_CONNECT);
    for (i, s) in subjects.iter().enumerate() {
        out.extend_from_slice(format!("SUB {s} {}\r\n", i + 1).as_bytes());
    }
    out.extend_from_slice(b"PING\r\n");
}

/// Appends `PUB <subject> <len>` and `data` to `out`.
pub fn encode_pub(out: &mut Vec<u8>, subject: &str, data: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(data.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn drained_ops_leave_an_incomplete_one_behind() {
        let mut buf = b"PING\r\nMSG a 1 5\r\nhello\r\nMSG a 1 5\r\nhe".to_vec();
        let mut seen = Vec::new();
        drain_ops(&mut buf, |op| {
            seen.push(match op {
                NatsOp::Ping => "ping",
                NatsOp::Msg { .. } => "msg",
                _ => "other",
            })
        });
        assert_eq!(seen, ["ping", "msg"]);
        assert_eq!(buf, b"MSG a 1 5\r\nhe");
    }

    #[test]
    fn a_subscriber_connects_subscribes_then_pings() {
        let mut out = Vec::new();
        encode_subscribe(&mut out, &["a.b".into(), "c.>".into()]);
        assert_eq!(
            out,
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nSUB a.b 1\r\nSUB c.> 2\r\nPING\r\n"
        );
        let mut p = Vec::new();
        encode_pub(&mut p, "a.b", b"hello");
        assert_eq!(p, b"PUB a.b 5\r\nhello\r\n");
    }
}
