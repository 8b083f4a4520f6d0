//! `Frame`: one published message, encoded once and shared by reference with every subscriber.
//!
//! Owns the single buffer of a message: the ready-to-send WebSocket text frame (header + the
//! `msg` JSON body, which SSE reuses as its `data:` line) followed by an rkyv-archived
//! [`Envelope`] describing it (subject, seq, ts, msg id, offsets). The subject's owner core builds
//! it (once per accepted publish) and wraps it in an `Arc`; other cores receive the `Arc` over the
//! bus, and connections hold references. Nothing in here is ever copied per subscriber, and
//! the whole buffer is self-describing so it can be stored or shipped as bytes.

use rkyv::util::AlignedVec;

/// The archived description of a message (rkyv); lives at the end of the frame buffer.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub struct Envelope {
    /// Concrete subject.
    pub subject: String,
    /// Per-subject sequence number, from 1.
    pub seq: u64,
    /// Microseconds since the Unix epoch, stamped by the owner core.
    pub ts: u64,
    /// The publisher's de-duplication id, if any.
    pub msg_id: Option<String>,
    /// Length of the WebSocket frame at the start of the buffer.
    pub ws_len: u32,
    /// Offset of the `msg` JSON body (after the WebSocket header).
    pub json_off: u32,
    /// Offset of the raw `data` JSON inside the buffer.
    pub data_off: u32,
    /// Length of the raw `data` JSON.
    pub data_len: u32,
}

/// A fully encoded message. Immutable once built.
pub struct Frame {
    buf: AlignedVec,
    ws_len: u32,
    json_off: u32,
    subject_off: u32,
    subject_len: u32,
    data_off: u32,
    data_len: u32,
    seq: u64,
    ts: u64,
    /// Position in the owner core's broadcast stream (see [`Frame::xseq`]).
    xseq: u64,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("subject", &self.subject())
            .field("seq", &self.seq)
            .finish()
    }
}

/// Length of the WebSocket header for a server (unmasked) frame with this payload length.
pub fn ws_header_len(payload: usize) -> usize {
    match payload {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// A server (unmasked) WebSocket header, FIN set, with the given opcode: bytes and length.
pub fn ws_header(opcode: u8, payload: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    match payload {
        0..=125 => {
            h[1] = payload as u8;
            (h, 2)
        }
        126..=65535 => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
            (h, 4)
        }
        _ => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
            (h, 10)
        }
    }
}

const MSG_PREFIX: &[u8] = br#"{"op":"msg","subject":""#;
const SEQ_KEY: &[u8] = br#"","seq":"#;
const TS_KEY: &[u8] = br#","ts":"#;
const DATA_KEY: &[u8] = br#","data":"#;

impl Frame {
    /// Encodes a message. `data` must already be valid JSON (it is embedded verbatim, with raw
    /// CR/LF whitespace turned into spaces) and `subject` a valid concrete subject (its bytes
    /// never need JSON escaping).
    pub fn encode(subject: &str, seq: u64, ts: u64, data: &[u8], msg_id: Option<&str>) -> Frame {
        let mut seq_buf = itoa::Buffer::new();
        let mut ts_buf = itoa::Buffer::new();
        let seq_s = seq_buf.format(seq).as_bytes();
        let ts_s = ts_buf.format(ts).as_bytes();
        let json_len = MSG_PREFIX.len()
            + subject.len()
            + SEQ_KEY.len()
            + seq_s.len()
            + TS_KEY.len()
            + ts_s.len()
            + DATA_KEY.len()
            + data.len()
            + 1;
        let hdr = ws_header_len(json_len);
        let mut buf = AlignedVec::with_capacity(hdr + json_len + 96 + subject.len());
        let (h, hl) = ws_header(0x1, json_len);
        buf.extend_from_slice(&h[..hl]);
        buf.extend_from_slice(MSG_PREFIX);
        let subject_off = buf.len();
        buf.extend_from_slice(subject.as_bytes());
        buf.extend_from_slice(SEQ_KEY);
        buf.extend_from_slice(seq_s);
        buf.extend_from_slice(TS_KEY);
        buf.extend_from_slice(ts_s);
        buf.extend_from_slice(DATA_KEY);
        let data_off = buf.len();
        buf.extend_from_slice(data);
        // SSE carries the JSON as one `data:` line. Raw CR and LF, which valid JSON holds only
        // as insignificant whitespace (strings must escape them), become spaces: the same
        // value, the same length, one pass over bytes just copied.
        for b in &mut buf[data_off..] {
            if matches!(*b, b'\r' | b'\n') {
                *b = b' ';
            }
        }
        buf.push(b'}');
        let ws_len = buf.len();
        debug_assert_eq!(ws_len, hdr + json_len);
        let env = Envelope {
            subject: subject.to_owned(),
            seq,
            ts,
            msg_id: msg_id.map(str::to_owned),
            ws_len: ws_len as u32,
            json_off: hdr as u32,
            data_off: data_off as u32,
            data_len: data.len() as u32,
        };
        let buf = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&env, buf)
            .expect("serialising an envelope into memory cannot fail");
        Frame {
            buf,
            ws_len: ws_len as u32,
            json_off: hdr as u32,
            subject_off: subject_off as u32,
            subject_len: subject.len() as u32,
            data_off: data_off as u32,
            data_len: data.len() as u32,
            seq,
            ts,
            xseq: 0,
        }
    }

    /// Sets the owner core's broadcast position (before the frame is shared).
    pub fn with_xseq(mut self, xseq: u64) -> Frame {
        self.xseq = xseq;
        self
    }

    /// Position of this frame in its owner core's broadcast stream: every frame an owner sends
    /// gets the next number. Session hand-over between cores cuts each owner's stream at a
    /// known position with it. Not part of the stored envelope.
    #[inline]
    pub fn xseq(&self) -> u64 {
        self.xseq
    }

    /// Rebuilds a frame from bytes produced by [`Frame::stored_bytes`] (validated; cold path).
    pub fn from_stored(bytes: &[u8]) -> Result<Frame, FrameDecodeError> {
        let mut buf = AlignedVec::with_capacity(bytes.len());
        buf.extend_from_slice(bytes);
        let env = rkyv::access::<ArchivedEnvelope, rkyv::rancor::Error>(&buf)
            .map_err(|_| FrameDecodeError)?;
        let (ws_len, json_off) = (env.ws_len.to_native(), env.json_off.to_native());
        let (data_off, data_len) = (env.data_off.to_native(), env.data_len.to_native());
        let subject_len = env.subject.len() as u32;
        let subject_off = json_off + MSG_PREFIX.len() as u32;
        let (seq, ts) = (env.seq.to_native(), env.ts.to_native());
        if ws_len as usize > buf.len()
            || json_off > ws_len
            || data_off.checked_add(data_len).is_none_or(|e| e > ws_len)
            || subject_off + subject_len > ws_len
            || buf[subject_off as usize..(subject_off + subject_len) as usize]
                != *env.subject.as_bytes()
        {
            return Err(FrameDecodeError);
        }
        Ok(Frame {
            buf,
            ws_len,
            json_off,
            subject_off,
            subject_len,
            data_off,
            data_len,
            seq,
            ts,
            xseq: 0,
        })
    }

    /// The whole self-describing buffer (WebSocket frame + archived envelope).
    pub fn stored_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The archived envelope.
    pub fn envelope(&self) -> &ArchivedEnvelope {
        // SAFETY: `buf` was produced by `to_bytes_in` for an `Envelope` (or validated by
        // `rkyv::access` in `from_stored`) and is never mutated afterwards.
        unsafe { rkyv::access_unchecked::<ArchivedEnvelope>(&self.buf) }
    }

    /// The ready WebSocket text frame (header + `msg` JSON).
    #[inline]
    pub fn ws_bytes(&self) -> &[u8] {
        &self.buf[..self.ws_len as usize]
    }

    /// The `msg` JSON body alone (what SSE sends as `data:`).
    #[inline]
    pub fn json(&self) -> &[u8] {
        &self.buf[self.json_off as usize..self.ws_len as usize]
    }

    /// The published `data` JSON, verbatim.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.data_off as usize..(self.data_off + self.data_len) as usize]
    }

    /// The concrete subject.
    #[inline]
    pub fn subject(&self) -> &str {
        let b =
            &self.buf[self.subject_off as usize..(self.subject_off + self.subject_len) as usize];
        // SAFETY: copied from a `&str` in `encode`, or checked equal to the archived
        // (validated UTF-8) subject in `from_stored`.
        unsafe { std::str::from_utf8_unchecked(b) }
    }

    /// Per-subject sequence number.
    #[inline]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Acceptance time, microseconds since the Unix epoch.
    #[inline]
    pub fn ts(&self) -> u64 {
        self.ts
    }

    /// Heap bytes this frame holds while shared by `Arc`: its buffer, itself and the `Arc`'s
    /// counts (what a history ring is charged for it).
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity() + std::mem::size_of::<Frame>() + 16
    }

    /// Bytes this frame accounts for in an outbound queue.
    #[inline]
    pub fn wire_len(&self) -> usize {
        self.ws_len as usize
    }
}

/// Stored bytes that do not hold a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecodeError;

impl std::fmt::Display for FrameDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stored bytes are not a valid ringcast frame")
    }
}

impl std::error::Error for FrameDecodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_line_breaks_in_data_become_spaces_of_the_same_length() {
        let data = b"{\"a\":\r\n1,\n\"b\":\"x\\ny\"}";
        let f = Frame::encode("s", 1, 2, data, None);
        assert_eq!(f.data(), b"{\"a\":  1, \"b\":\"x\\ny\"}");
        assert!(!f.json().iter().any(|b| matches!(b, b'\r' | b'\n')));
    }

    #[test]
    fn encodes_the_msg_body_and_a_websocket_text_frame() {
        let f = Frame::encode(
            "prices.EURUSD",
            7,
            1_700_000_000_000_000,
            br#"{"bid":1.1}"#,
            None,
        );
        let json = br#"{"op":"msg","subject":"prices.EURUSD","seq":7,"ts":1700000000000000,"data":{"bid":1.1}}"#;
        assert_eq!(f.json(), json);
        assert_eq!(f.ws_bytes()[0], 0x81);
        assert_eq!(f.ws_bytes()[1] as usize, json.len());
        assert_eq!(&f.ws_bytes()[2..], json);
        assert_eq!(f.data(), br#"{"bid":1.1}"#);
        assert_eq!(f.subject(), "prices.EURUSD");
        let v: serde_json::Value = serde_json::from_slice(f.json()).unwrap();
        assert_eq!(v["seq"], 7);
    }

    #[test]
    fn long_payloads_use_extended_lengths() {
        for n in [200usize, 70_000] {
            let data = format!("\"{}\"", "x".repeat(n));
            let f = Frame::encode("a", 1, 2, data.as_bytes(), None);
            let ws = f.ws_bytes();
            let (len, hdr) = match ws[1] {
                126 => (u16::from_be_bytes([ws[2], ws[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(ws[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                l => (l as usize, 2),
            };
            assert_eq!(len, ws.len() - hdr);
            assert_eq!(&ws[hdr..], f.json());
        }
    }

    #[test]
    fn the_envelope_round_trips_through_stored_bytes() {
        let f = Frame::encode("a.b", 3, 4, b"[1,2]", Some("id-1"));
        assert_eq!(f.envelope().seq, 3);
        assert_eq!(f.envelope().msg_id.as_deref(), Some("id-1"));
        let g = Frame::from_stored(f.stored_bytes()).unwrap();
        assert_eq!(g.ws_bytes(), f.ws_bytes());
        assert_eq!(
            (g.subject(), g.seq(), g.ts(), g.data()),
            ("a.b", 3, 4, &b"[1,2]"[..])
        );
        assert!(Frame::from_stored(&f.stored_bytes()[..10]).is_err());
    }
}
