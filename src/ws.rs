//! WebSocket framing (RFC 6455) for the server side: the `bytes -> frame -> message` step.
//!
//! Owns the per-connection decoder state (a partially assembled fragmented message). Header
//! parsing is tungstenite's `FrameHeader`; assembly, masking, control-frame rules, size limits
//! and UTF-8 validation are here so a connection holds no buffer while idle. Pure code: never
//! touches a socket; called on the connection's core thread. Incomplete input is `Ok(None)`.

use std::io::Cursor;
use std::ops::Range;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// Close codes ringcast sends.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol violation.
    pub const PROTOCOL: u16 = 1002;
    /// Data not consistent with the message type (bad UTF-8 in text).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (e.g. idle peer that does not answer pings).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server condition.
    pub const INTERNAL: u16 = 1011;
    /// Service restart: the node is draining; reconnect (elsewhere) after the reason's
    /// `retry_ms`.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Unauthorised / token expired.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Forbidden.
    pub const FORBIDDEN: u16 = 4003;
    /// Slow consumer.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Rate limited.
    pub const RATE_LIMITED: u16 = 4029;
}

/// A protocol failure that ends the connection with a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// RFC 6455 violation (close 1002).
    Protocol(&'static str),
    /// Message larger than the configured limit (close 1009).
    TooBig,
    /// Text that is not UTF-8 (close 1007).
    BadUtf8,
}

impl WsError {
    /// The close code to send.
    pub fn close_code(self) -> u16 {
        match self {
            WsError::Protocol(_) => close::PROTOCOL,
            WsError::TooBig => close::TOO_BIG,
            WsError::BadUtf8 => close::INVALID_DATA,
        }
    }

    /// The close reason to send.
    pub fn reason(self) -> &'static str {
        match self {
            WsError::Protocol(r) => r,
            WsError::TooBig => "message too big",
            WsError::BadUtf8 => "invalid UTF-8 in text message",
        }
    }
}

/// Where a decoded payload is: unmasked in place in the caller's input, or assembled from
/// fragments.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    /// A range of the input slice given to [`WsDecoder::decode`].
    InPlace(Range<usize>),
    /// An assembled fragmented message.
    Assembled(Vec<u8>),
}

impl Payload {
    /// The bytes, given the input slice the decoder was called with.
    pub fn bytes<'a>(&'a self, input: &'a [u8]) -> &'a [u8] {
        match self {
            Payload::InPlace(r) => &input[r.clone()],
            Payload::Assembled(v) => v,
        }
    }
}

/// One complete message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// A text message (UTF-8 checked).
    Text(Payload),
    /// A binary message.
    Binary(Payload),
    /// A ping with its payload (to echo in a pong).
    Ping(Payload),
    /// A pong.
    Pong,
    /// A close frame: code (if any) to echo back.
    Close(Option<u16>),
}

/// Per-connection decoder state.
pub struct WsDecoder {
    max_message: usize,
    /// The message being assembled from fragments: (is text, bytes so far).
    fragment: Option<(bool, Vec<u8>)>,
}

fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

impl WsDecoder {
    /// A decoder refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        WsDecoder {
            max_message,
            fragment: None,
        }
    }

    /// Decodes the next frame from `input` (unmasking it in place). Returns the event and the
    /// bytes consumed, `Ok(None)` when more input is needed. Data frames that continue a
    /// fragmented message are consumed and reported as `Ok(Some((None, n)))`.
    #[allow(clippy::type_complexity)]
    pub fn decode(
        &mut self,
        input: &mut [u8],
    ) -> Result<Option<(Option<WsEvent>, usize)>, WsError> {
        let mut cur = Cursor::new(&*input);
        let (hdr, len) = match FrameHeader::parse(&mut cur) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(None),
            Err(_) => return Err(WsError::Protocol("malformed frame header")),
        };
        let hlen = cur.position() as usize;
        let mask = self.check_header(&hdr, len)?;
        let len = len as usize;
        if input.len() - hlen < len {
            return Ok(None);
        }
        let range = hlen..hlen + len;
        unmask(&mut input[range.clone()], mask);
        let event = match hdr.opcode {
            OpCode::Control(Control::Ping) => Some(WsEvent::Ping(Payload::InPlace(range))),
            OpCode::Control(Control::Pong) => Some(WsEvent::Pong),
            OpCode::Control(Control::Close) => Some(WsEvent::Close(parse_close(&input[range])?)),
            OpCode::Data(Data::Text | Data::Binary) => {
                let text = hdr.opcode == OpCode::Data(Data::Text);
                if !hdr.is_final {
                    self.fragment = Some((text, input[range].to_vec()));
                    None
                } else {
                    check_utf8(text, &input[range.clone()])?;
                    Some(data_event(text, Payload::InPlace(range)))
                }
            }
            OpCode::Data(Data::Continue) => self.continue_message(&input[range], hdr.is_final)?,
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                unreachable!("refused by check_header")
            }
        };
        Ok(Some((event, hlen + len)))
    }

    /// The checks a frame header must pass before its payload is even awaited, so violations
    /// fail fast; returns the client's mask.
    fn check_header(&self, hdr: &FrameHeader, len: u64) -> Result<[u8; 4], WsError> {
        if hdr.rsv1 || hdr.rsv2 || hdr.rsv3 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let Some(mask) = hdr.mask else {
            return Err(WsError::Protocol("client frame not masked"));
        };
        let is_control = matches!(hdr.opcode, OpCode::Control(_));
        if is_control && (len > 125 || !hdr.is_final) {
            return Err(WsError::Protocol("control frame too long or fragmented"));
        }
        let already = self.fragment.as_ref().map_or(0, |(_, v)| v.len());
        if !is_control && len.saturating_add(already as u64) > self.max_message as u64 {
            return Err(WsError::TooBig);
        }
        match hdr.opcode {
            OpCode::Data(Data::Continue) if self.fragment.is_none() => Err(WsError::Protocol(
                "continuation without a message to continue",
            )),
            OpCode::Data(Data::Text | Data::Binary) if self.fragment.is_some() => {
                Err(WsError::Protocol("new message inside a fragmented one"))
            }
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                Err(WsError::Protocol("reserved opcode"))
            }
            _ => Ok(mask),
        }
    }

    /// A continuation frame: appended to the message being assembled, which is complete (and
    /// returned) with the final fragment.
    fn continue_message(&mut self, payload: &[u8], last: bool) -> Result<Option<WsEvent>, WsError> {
        let (_, buf) = self.fragment.as_mut().expect("checked by check_header");
        buf.extend_from_slice(payload);
        if !last {
            return Ok(None);
        }
        let (text, buf) = self.fragment.take().expect("checked by check_header");
        check_utf8(text, &buf)?;
        Ok(Some(data_event(text, Payload::Assembled(buf))))
    }
}

/// A text message must be valid UTF-8 (close 1007 otherwise).
fn check_utf8(text: bool, payload: &[u8]) -> Result<(), WsError> {
    if text && std::str::from_utf8(payload).is_err() {
        return Err(WsError::BadUtf8);
    }
    Ok(())
}

fn data_event(text: bool, p: Payload) -> WsEvent {
    if text {
        WsEvent::Text(p)
    } else {
        WsEvent::Binary(p)
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(WsError::BadUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// XORs `data` with the 4-byte mask, 8 bytes at a time.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ m8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    for (i, b) in rest.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends a complete server frame (unmasked, FIN) with `payload`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let (h, hl) = crate::frame::ws_header(opcode, payload.len());
    out.extend_from_slice(&h[..hl]);
    out.extend_from_slice(payload);
}

/// A complete server close frame with `code` and a reason (truncated to fit 125 bytes).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut r = reason.as_bytes();
    if r.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        r = &r[..end];
    }
    let mut payload = Vec::with_capacity(2 + r.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(r);
    let mut out = Vec::with_capacity(4 + payload.len());
    encode_frame(&mut out, OP_CLOSE, &payload);
    out
}

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &[u8]) -> String {
    tungstenite::handshake::derive_accept_key(key)
}

/// Builds a masked client frame (used by tests and the load generator).
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    let b0 = if fin { 0x80 } else { 0 } | opcode;
    match payload.len() {
        n @ 0..=125 => out.extend([b0, 0x80 | n as u8]),
        n @ 126..=65535 => {
            out.extend([b0, 0x80 | 126]);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.extend([b0, 0x80 | 127]);
            out.extend((n as u64).to_be_bytes());
        }
    }
    out.extend(mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    /// Feeds `bytes` one at a time, returning the events decoded.
    fn feed_bytewise(d: &mut WsDecoder, bytes: &[u8]) -> Result<Vec<Vec<u8>>, WsError> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for b in bytes {
            buf.push(*b);
            while let Some((ev, n)) = d.decode(&mut buf)? {
                if let Some(WsEvent::Text(p) | WsEvent::Binary(p)) = &ev {
                    out.push(p.bytes(&buf).to_vec());
                }
                buf.drain(..n);
            }
        }
        assert!(buf.is_empty());
        Ok(out)
    }

    #[test]
    fn decodes_masked_text_fed_one_byte_at_a_time() {
        let mut d = WsDecoder::new(1 << 16);
        let mut wire = client_frame(OP_TEXT, true, b"hello", MASK);
        wire.extend(client_frame(OP_TEXT, true, &[b'x'; 300], MASK));
        let msgs = feed_bytewise(&mut d, &wire).unwrap();
        assert_eq!(msgs, vec![b"hello".to_vec(), vec![b'x'; 300]]);
    }

    #[test]
    fn assembles_fragments_with_control_frames_between() {
        let mut d = WsDecoder::new(1 << 16);
        let mut wire = client_frame(OP_TEXT, false, b"hel", MASK);
        wire.extend(client_frame(OP_PING, true, b"p", MASK));
        wire.extend(client_frame(0, false, b"l", MASK));
        wire.extend(client_frame(0, true, b"o", MASK));
        assert_eq!(
            feed_bytewise(&mut d, &wire).unwrap(),
            vec![b"hello".to_vec()]
        );
    }

    #[test]
    fn protocol_violations_map_to_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (
                {
                    let mut f = client_frame(OP_TEXT, true, b"x", MASK);
                    f[1] &= 0x7f;
                    f.truncate(2);
                    f.push(b'x');
                    f
                },
                1002,
            ),
            (client_frame(0, true, b"x", MASK), 1002),
            (client_frame(0x3, true, b"x", MASK), 1002),
            (client_frame(OP_PING, false, b"x", MASK), 1002),
            (client_frame(OP_PING, true, &[0; 126], MASK), 1002),
            (
                {
                    let mut f = client_frame(OP_TEXT, true, b"x", MASK);
                    f[0] |= 0x40;
                    f
                },
                1002,
            ),
            (client_frame(OP_TEXT, true, &[0xff, 0xfe], MASK), 1007),
            (client_frame(OP_TEXT, true, &[b'a'; 2000], MASK), 1009),
            (client_frame(OP_CLOSE, true, &[3], MASK), 1002),
            (client_frame(OP_CLOSE, true, &[0x03, 0xe7], MASK), 1002),
            (
                client_frame(OP_CLOSE, true, &[0x03, 0xe8, 0xff], MASK),
                1007,
            ),
            (
                {
                    let mut f = client_frame(OP_TEXT, false, b"a", MASK);
                    f.extend(client_frame(OP_TEXT, true, b"b", MASK));
                    f
                },
                1002,
            ),
        ];
        for (i, (wire, code)) in cases.into_iter().enumerate() {
            let mut d = WsDecoder::new(1024);
            let mut buf = wire.clone();
            let mut got = None;
            loop {
                match d.decode(&mut buf) {
                    Ok(Some((_, n))) => {
                        buf.drain(..n);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        got = Some(e.close_code());
                        break;
                    }
                }
            }
            assert_eq!(got, Some(code), "case {i}");
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut d = WsDecoder::new(100);
        let wire = client_frame(OP_TEXT, true, &[b'a'; 1000], MASK);
        assert_eq!(d.decode(&mut wire[..8].to_vec()), Err(WsError::TooBig));
    }

    #[test]
    fn close_frames_report_their_code() {
        let mut d = WsDecoder::new(100);
        let mut f = client_frame(OP_CLOSE, true, &[0x03, 0xe8, b'b', b'y', b'e'], MASK);
        assert_eq!(
            d.decode(&mut f).unwrap().unwrap().0,
            Some(WsEvent::Close(Some(1000)))
        );
        let f = close_frame(4008, "slow consumer");
        assert_eq!(&f[..4], &[0x88, 15, 0x0f, 0xa8]);
    }

    #[test]
    fn unmask_matches_bytewise_xor() {
        let data: Vec<u8> = (0..=255).collect();
        let mut a = data.clone();
        unmask(&mut a, [9, 8, 7, 6]);
        let b: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ [9, 8, 7, 6][i % 4])
            .collect();
        assert_eq!(a, b);
    }
}
