//! The `data` of every message the generator publishes: `{"t":T,"c":C,"p":"xxx"}`, with the
//! intended send time `t` (mono ns, the latency reference), the publisher's per-subject
//! counter `c` (the NATS sequence check) and padding to the asked payload size. Written by the
//! publisher threads, read back by the subscriber threads.

use super::digits;

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
