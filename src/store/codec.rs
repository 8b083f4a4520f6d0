//! Keys and values as the durable store lays them out on disk (see the module docs of
//! `store` for the partitions).
//!
//! Owns the byte layout and nothing else: pure functions, no I/O, no state. Used by the storage
//! thread (`ringcast-store`, writes and deep reads) and by each core's thread during recovery.
//! Changing anything here changes the on-disk format.

use crate::schedule::Scheduled;

/// Key of message `seq` of `subject` in `msgs` and `ids`: `subject 0x00 seq(u64 BE)`, so keys
/// sort by subject, then by seq.
pub(super) fn msg_key(subject: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + 9);
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Prefix of every [`msg_key`] of `subject`.
pub(super) fn subject_prefix(subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + 1);
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k
}

/// The seq of a [`msg_key`].
pub(super) fn key_seq(key: &[u8]) -> u64 {
    let n = key.len();
    u64::from_be_bytes(key[n - 8..].try_into().expect("8 bytes"))
}

/// The big-endian u64 at `at` in `b` (0 when `b` is too short).
pub(super) fn be_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
}

/// Value in `ids`: the message's ts (u64 BE), then its `msg_id`.
pub(super) fn id_value(ts: u64, msg_id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + msg_id.len());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(msg_id.as_bytes());
    v
}

/// ts and `msg_id` of an [`id_value`] (`None`: the id is not UTF-8).
pub(super) fn decode_id_value(v: &[u8]) -> Option<(u64, &str)> {
    let id = std::str::from_utf8(v.get(8..).unwrap_or_default()).ok()?;
    Some((be_u64(v, 0), id))
}

/// Value in `subjects`: last seq, last ts (u64 BE each).
pub(super) fn subject_value(last_seq: u64, last_ts: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&last_seq.to_be_bytes());
    v.extend_from_slice(&last_ts.to_be_bytes());
    v
}

/// Last seq and last ts of a [`subject_value`] (0 for what is missing).
pub(super) fn decode_subject_value(v: &[u8]) -> (u64, u64) {
    (be_u64(v, 0), be_u64(v, 8))
}

/// Value in `schedules`: at_ms (u64 BE), subject length (u32 BE) and subject, msg_id length
/// (u32 BE, `u32::MAX`: none) and msg_id, then the data to the end.
pub(super) fn encode_schedule(s: &Scheduled) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + s.subject.len() + s.data.len());
    v.extend_from_slice(&s.at_ms.to_be_bytes());
    v.extend_from_slice(&(s.subject.len() as u32).to_be_bytes());
    v.extend_from_slice(s.subject.as_bytes());
    match &s.msg_id {
        Some(id) => {
            v.extend_from_slice(&(id.len() as u32).to_be_bytes());
            v.extend_from_slice(id.as_bytes());
        }
        None => v.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
    v.extend_from_slice(&s.data);
    v
}

/// The schedule of an [`encode_schedule`] value (`None`: truncated or not UTF-8).
pub(super) fn decode_schedule(b: &[u8]) -> Option<Scheduled> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (h, t) = (b.get(..n)?, b.get(n..)?);
        *b = t;
        Some(h)
    }
    fn u32_at(b: &mut &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?))
    }
    let mut b = b;
    let at_ms = u64::from_be_bytes(take(&mut b, 8)?.try_into().ok()?);
    let n = u32_at(&mut b)? as usize;
    let subject = std::str::from_utf8(take(&mut b, n)?).ok()?.into();
    let msg_id = match u32_at(&mut b)? {
        u32::MAX => None,
        n => Some(std::str::from_utf8(take(&mut b, n as usize)?).ok()?.into()),
    };
    Some(Scheduled {
        subject,
        data: b.into(),
        msg_id,
        at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_round_trip() {
        for msg_id in [None, Some("id-1".into())] {
            let s = Scheduled {
                subject: "a.b".into(),
                data: br#"{"x":1}"#.as_slice().into(),
                msg_id,
                at_ms: 1_700_000_000_000,
            };
            let d = decode_schedule(&encode_schedule(&s)).unwrap();
            assert_eq!(
                (d.subject, d.data, d.msg_id, d.at_ms),
                (s.subject, s.data, s.msg_id, s.at_ms)
            );
        }
    }

    #[test]
    fn a_truncated_schedule_does_not_decode() {
        assert!(decode_schedule(&[1, 2, 3]).is_none());
    }

    #[test]
    fn keys_sort_by_subject_then_seq() {
        let mut keys = vec![
            msg_key("a.b", 2),
            msg_key("a", 300),
            msg_key("a.b", 10),
            msg_key("a", 1),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                msg_key("a", 1),
                msg_key("a", 300),
                msg_key("a.b", 2),
                msg_key("a.b", 10)
            ]
        );
    }

    #[test]
    fn a_key_gives_back_its_seq() {
        assert_eq!(key_seq(&msg_key("x", 77)), 77);
    }

    #[test]
    fn a_subject_prefix_covers_its_keys_and_not_longer_subjects() {
        let p = subject_prefix("a");
        assert!(msg_key("a", 5).starts_with(&p));
        assert!(!msg_key("a.b", 5).starts_with(&p));
    }

    #[test]
    fn id_values_round_trip() {
        assert_eq!(
            decode_id_value(&id_value(1_700_000_000_000_000, "id-1")),
            Some((1_700_000_000_000_000, "id-1"))
        );
    }

    #[test]
    fn subject_values_round_trip() {
        assert_eq!(decode_subject_value(&subject_value(42, 7)), (42, 7));
    }

    #[test]
    fn a_short_subject_value_reads_as_zero() {
        assert_eq!(decode_subject_value(&[1, 2]), (0, 0));
    }
}
