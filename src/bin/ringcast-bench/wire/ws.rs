//! WebSocket framing as a client sees it: splitting the server's unmasked frames out of a read
//! buffer ([`Frames`]), the code of a close frame, and building masked client frames (through
//! `ringcast::ws::client_frame`, the library's encoder, with one fixed mask). Used by the
//! subscriber connections on the `bench-<i>` runtime threads and by the publisher threads.

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

/// The mask of every client frame the generator sends (servers do not care which).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked, final client frame with opcode `op` around `payload`.
pub fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
    ringcast::ws::client_frame(op, true, payload, MASK)
}

/// One complete server frame inside a read buffer.
pub struct Frame<'a> {
    pub op: u8,
    pub fin: bool,
    /// The server masked it (it must not).
    pub masked: bool,
    pub payload: &'a [u8],
}

/// The complete frames at the start of a buffer, in order. Once it returns `None`,
/// [`Frames::consumed`] is how many bytes they took and [`Frames::pending`] the full length of
/// a frame whose header has arrived but not all of its payload.
pub struct Frames<'a> {
    buf: &'a [u8],
    off: usize,
    pending: Option<usize>,
}

impl<'a> Frames<'a> {
    pub fn new(buf: &'a [u8]) -> Frames<'a> {
        Frames {
            buf,
            off: 0,
            pending: None,
        }
    }

    /// Bytes of the frames returned so far (what the caller may drop from its buffer).
    pub fn consumed(&self) -> usize {
        self.off
    }

    /// Header + payload length of the incomplete frame that stopped the iteration, if any.
    pub fn pending(&self) -> Option<usize> {
        self.pending
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Frame<'a>;

    #[inline]
    fn next(&mut self) -> Option<Frame<'a>> {
        let rest = &self.buf[self.off..];
        let (op, fin, hl, len, masked) = frame_header(rest)?;
        if rest.len() < hl + len {
            self.pending = Some(hl + len);
            return None;
        }
        self.off += hl + len;
        Some(Frame {
            op,
            fin,
            masked,
            payload: &rest[hl..hl + len],
        })
    }
}

/// The status code of a close frame's payload (1005, "no status", when it has none).
pub fn close_code(p: &[u8]) -> u16 {
    if p.len() >= 2 {
        u16::from_be_bytes([p[0], p[1]])
    } else {
        1005
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked server frame (what ringcast sends), short lengths only.
    fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | op, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn frames_stop_at_an_incomplete_one_and_say_how_long_it_is() {
        let mut buf = server_frame(0x1, b"hello");
        buf.extend(server_frame(0x9, b""));
        let whole = buf.len();
        buf.extend(&server_frame(0x2, b"0123456789")[..5]);
        let mut frames = Frames::new(&buf);
        let got: Vec<(u8, Vec<u8>)> = frames
            .by_ref()
            .map(|f| (f.op, f.payload.to_vec()))
            .collect();
        assert_eq!(got, [(0x1, b"hello".to_vec()), (0x9, Vec::new())]);
        assert_eq!(frames.consumed(), whole);
        assert_eq!(frames.pending(), Some(12));
    }

    #[test]
    fn a_close_frame_without_a_status_is_1005() {
        assert_eq!(close_code(&4008u16.to_be_bytes()), 4008);
        assert_eq!(close_code(b"\x03\xe8bye"), 1000);
        assert_eq!(close_code(b""), 1005);
    }
}
