//! The ringcast JSON protocol, as much of it as the generator needs: classifying the server's
//! text frames (`msg`, `ok`, `hello`, `err`) with prefix checks instead of a JSON parse (this
//! runs for every delivery on the `bench-<i>` subscriber threads), and writing the client's
//! `sub` and `pub` ops.

use super::{digits, find, subject_index};

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

/// Appends the `pub` op of one message to `out`: `id` is the subject index (its `ok` ack carries
/// it back), `data` the JSON payload.
pub fn encode_pub(out: &mut Vec<u8>, id: u32, subject: &str, data: &[u8]) {
    out.extend_from_slice(br#"{"op":"pub","id":"#);
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.extend_from_slice(br#","subject":""#);
    out.extend_from_slice(subject.as_bytes());
    out.extend_from_slice(br#"","data":"#);
    out.extend_from_slice(data);
    out.push(b'}');
}

/// The `sub` op for the connection's `id`-th subscription.
pub fn encode_sub(id: usize, subject: &str) -> String {
    format!(r#"{{"op":"sub","id":{id},"subject":"{subject}"}}"#)
}

#[cfg(test)]
mod tests {
    use super::super::{parse_payload, payload};
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
    fn a_pub_op_is_the_json_ringcast_expects() {
        let mut out = Vec::new();
        encode_pub(&mut out, 42, "prices.SYM0042", br#"{"t":1}"#);
        assert_eq!(
            out,
            br#"{"op":"pub","id":42,"subject":"prices.SYM0042","data":{"t":1}}"#
        );
        assert_eq!(
            encode_sub(3, "prices.>"),
            r#"{"op":"sub","id":3,"subject":"prices.>"}"#
        );
    }
}
