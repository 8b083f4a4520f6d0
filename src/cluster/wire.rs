//! What a ringcast message looks like on the stream: the subject mapping (`S` is
//! `<prefix>.S`), the `Nats-Msg-Id` of a client `msg_id`, the headers of a publish, and the
//! decoding of a stream message back into a [`Replicated`].
//!
//! Pure functions, no state; called on the bridge thread (and [`scoped_msg_id`] from anywhere).
//! Building and parsing sit side by side so that one can be checked against the other.

use super::{Replicated, HDR_SEQ, HDR_TS, HEADER_ROOM};
use async_nats::header::{HeaderMap, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
use std::fmt::Write as _;

/// The JetStream subject of ringcast subject `subject`.
pub(super) fn full_subject(prefix: &str, subject: &str) -> String {
    format!("{prefix}.{subject}")
}

/// Every ringcast subject: the stream's subjects and the consumer's filter.
pub(super) fn all_subjects(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// The ringcast subject of JetStream subject `full`; `None` outside `<prefix>.`.
pub(super) fn ringcast_subject<'a>(prefix: &str, full: &'a str) -> Option<&'a str> {
    full.strip_prefix(prefix)?.strip_prefix('.')
}

/// `Nats-Msg-Id` of a client `msg_id`: `<subject>/<msg_id>`, escaped so that it is a valid
/// header value and the first `/` separates the two.
pub fn scoped_msg_id(subject: &str, msg_id: &str) -> String {
    let mut s = String::with_capacity(subject.len() + msg_id.len() + 1);
    escape_into(&mut s, subject, true);
    s.push('/');
    escape_into(&mut s, msg_id, false);
    s
}

/// The client `msg_id` inside a `Nats-Msg-Id`; `None` for a generated id (it has no `/`).
pub(super) fn client_msg_id(nats_id: &str) -> Option<Box<str>> {
    let (_, id) = nats_id.split_once('/')?;
    unescape(id).map(String::into_boxed_str)
}

fn escape_into(out: &mut String, s: &str, slash: bool) {
    for b in s.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' && !(slash && b == b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Bytes a publish may take on the wire beyond its payload, at worst: the fixed headers plus
/// subject and msg id fully %-escaped. Checked against the server's `max_payload`.
pub(super) fn header_bytes(subject: &str, msg_id: Option<&str>) -> usize {
    HEADER_ROOM + subject.len() * 3 + msg_id.map_or(0, |id| id.len() * 3)
}

/// The headers of one publish attempt: ringcast seq and ts, the seq guard (the stream seq of
/// the subject's last message as this bridge knows it, 0 for none) and the dedup id.
pub(super) fn publish_headers(
    seq: u64,
    ts: u64,
    expected_last_subject_seq: u64,
    nats_id: &str,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HDR_SEQ, seq.to_string());
    h.insert(HDR_TS, ts.to_string());
    h.insert(
        NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected_last_subject_seq.to_string(),
    );
    h.insert(NATS_MESSAGE_ID, nats_id);
    h
}

/// Decodes a stream message; `None` when it lacks valid ringcast headers (a seq above 0 and a
/// ts) or is outside `<prefix>.`.
pub(super) fn decode(
    prefix: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    stream_seq: u64,
) -> Option<Replicated> {
    let subject = ringcast_subject(prefix, subject)?;
    let h = headers?;
    let seq: u64 = h.get(HDR_SEQ)?.as_str().parse().ok().filter(|s| *s > 0)?;
    let ts: u64 = h.get(HDR_TS)?.as_str().parse().ok()?;
    let msg_id = h
        .get(NATS_MESSAGE_ID)
        .and_then(|v| client_msg_id(v.as_str()));
    Some(Replicated {
        subject: subject.into(),
        seq,
        ts,
        data: payload.into(),
        msg_id,
        stream_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::header::HeaderName;

    #[test]
    fn scoped_msg_id_escapes_and_round_trips() {
        let id = scoped_msg_id("prices.EURUSD", "a b/%\r\né");
        assert_eq!(id, "prices.EURUSD/a%20b/%25%0D%0A%C3%A9");
        assert_eq!(
            unescape(id.split_once('/').unwrap().1).as_deref(),
            Some("a b/%\r\né")
        );
    }

    #[test]
    fn same_msg_id_on_two_subjects_gives_two_ids() {
        assert_ne!(scoped_msg_id("a", "x"), scoped_msg_id("b", "x"));
        assert_ne!(scoped_msg_id("a/b", "c"), scoped_msg_id("a", "b/c"));
    }

    #[test]
    fn the_client_msg_id_is_read_back_from_a_scoped_id_and_a_generated_id_has_none() {
        let id = scoped_msg_id("a/b", "c/d e");
        assert_eq!(id, "a%2Fb/c/d%20e");
        assert_eq!(client_msg_id(&id).as_deref(), Some("c/d e"));
        assert_eq!(client_msg_id("rc-00000000000000ff-7"), None);
    }

    #[test]
    fn a_broken_escape_is_not_a_msg_id() {
        assert_eq!(unescape("ab%4"), None, "truncated");
        assert_eq!(unescape("ab%zz"), None, "not hex");
        assert_eq!(unescape("%FF"), None, "not UTF-8");
        assert_eq!(unescape("").as_deref(), Some(""));
    }

    #[test]
    fn a_ringcast_subject_lives_under_the_prefix_and_a_dot() {
        assert_eq!(
            full_subject("ringcast", "prices.EURUSD"),
            "ringcast.prices.EURUSD"
        );
        assert_eq!(all_subjects("ringcast"), "ringcast.>");
        assert_eq!(
            ringcast_subject("ringcast", "ringcast.prices.EURUSD"),
            Some("prices.EURUSD")
        );
        assert_eq!(ringcast_subject("ringcast", "ringcastx.a"), None);
        assert_eq!(ringcast_subject("ringcast", "other.a"), None);
        assert_eq!(ringcast_subject("ringcast", "ringcast"), None);
    }

    /// The value of header `name` as it is spelled on the wire.
    fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        let name: HeaderName = name.parse().unwrap();
        h.get(name).map(|v| v.as_str())
    }

    #[test]
    fn a_publish_carries_seq_ts_guard_and_dedup_id() {
        let h = publish_headers(7, 1_700_000_000_000_001, 41, "a/x");
        assert_eq!(header(&h, "Ringcast-Seq"), Some("7"));
        assert_eq!(header(&h, "Ringcast-Ts"), Some("1700000000000001"));
        assert_eq!(
            header(&h, "Nats-Expected-Last-Subject-Sequence"),
            Some("41")
        );
        assert_eq!(header(&h, "Nats-Msg-Id"), Some("a/x"));
        assert_eq!(h.iter().count(), 4, "nothing else");
    }

    #[test]
    fn an_empty_subject_is_guarded_with_zero() {
        let h = publish_headers(1, 5, 0, "rc-1-1");
        assert_eq!(header(&h, "Nats-Expected-Last-Subject-Sequence"), Some("0"));
    }

    #[test]
    fn a_published_message_decodes_into_what_was_sent() {
        let h = publish_headers(3, 99, 10, &scoped_msg_id("a.b", "m1"));
        let r = decode("rc", "rc.a.b", Some(&h), br#"{"x":1}"#, 11).unwrap();
        let want = Replicated {
            subject: "a.b".into(),
            seq: 3,
            ts: 99,
            data: br#"{"x":1}"#.to_vec().into(),
            msg_id: Some("m1".into()),
            stream_seq: 11,
        };
        assert_eq!(r, want);
    }

    #[test]
    fn a_message_without_a_client_msg_id_decodes_with_none() {
        let h = publish_headers(1, 2, 0, "rc-00000000000000ff-1");
        let r = decode("rc", "rc.a", Some(&h), b"1", 1).unwrap();
        assert_eq!(r.msg_id, None);
    }

    #[test]
    fn foreign_messages_do_not_decode() {
        let good = publish_headers(1, 2, 0, "rc-1-1");
        assert!(
            decode("rc", "other.a", Some(&good), b"1", 1).is_none(),
            "outside prefix"
        );
        assert!(decode("rc", "rc.a", None, b"1", 1).is_none(), "no headers");

        let mut no_ts = HeaderMap::new();
        no_ts.insert(HDR_SEQ, "1");
        assert!(
            decode("rc", "rc.a", Some(&no_ts), b"1", 1).is_none(),
            "no ts"
        );

        let mut no_seq = HeaderMap::new();
        no_seq.insert(HDR_TS, "2");
        assert!(
            decode("rc", "rc.a", Some(&no_seq), b"1", 1).is_none(),
            "no seq"
        );

        let zero = publish_headers(0, 2, 0, "rc-1-1");
        assert!(
            decode("rc", "rc.a", Some(&zero), b"1", 1).is_none(),
            "seq 0"
        );

        let mut bad_ts = HeaderMap::new();
        bad_ts.insert(HDR_SEQ, "1");
        bad_ts.insert(HDR_TS, "soon");
        assert!(
            decode("rc", "rc.a", Some(&bad_ts), b"1", 1).is_none(),
            "ts not a number"
        );
    }

    #[test]
    fn header_room_assumes_subject_and_msg_id_fully_escaped() {
        assert_eq!(header_bytes("ab", None), HEADER_ROOM + 6);
        assert_eq!(header_bytes("ab", Some("xyz")), HEADER_ROOM + 6 + 9);
        // Every byte escaped takes three: the bound holds for the worst msg id.
        assert_eq!(scoped_msg_id("a", "\r\n\t").len(), 1 + 1 + 3 * 3);
    }
}
