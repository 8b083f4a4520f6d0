//! Deep reads: a subject's stored messages in a seq range, for history older than the owner
//! cores' rings (`since` replays and `/history` requests that reach past them).
//!
//! Owns no state: reads the `msgs` partition. Runs on the storage thread (`ringcast-store`),
//! which answers the asking core through the store's sink after the group that held the request
//! is committed, so a read sees every append queued before it.

use super::codec::msg_key;
use super::ReadReq;
use crate::frame::Frame;
use fjall::PartitionHandle;
use std::sync::Arc;

/// The stored messages of `r.subject` with `r.after < seq < r.before`, at most `r.limit` of
/// them (the newest when `r.newest`, else the oldest), oldest first. Unreadable messages are
/// skipped; a failed read ends the range early.
pub(super) fn read_range(msgs: &PartitionHandle, r: &ReadReq) -> Vec<Arc<Frame>> {
    let mut frames = Vec::new();
    if r.after.saturating_add(1) >= r.before {
        return frames;
    }
    let lo = msg_key(&r.subject, r.after.saturating_add(1));
    let hi = msg_key(&r.subject, r.before);
    let mut push = |kv: fjall::Result<fjall::KvPair>| match kv {
        Ok((_, v)) => {
            if let Ok(f) = Frame::from_stored(&v) {
                frames.push(Arc::new(f));
            }
        }
        Err(e) => tracing::warn!("store read failed: {e}"),
    };
    let range = msgs.range(lo..hi);
    if r.newest {
        range.rev().take(r.limit).for_each(&mut push);
        frames.reverse();
    } else {
        range.take(r.limit).for_each(&mut push);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::super::keyspace::{open_keyspace, Partitions};
    use super::super::testing::{frame, seqs, TempDir};
    use super::*;

    /// A keyspace holding messages 1..=5 of `a` and 1..=5 of `a.b`.
    fn stored(dir: &TempDir) -> Partitions {
        let (keyspace, parts) = open_keyspace(dir.path()).unwrap();
        let mut batch = keyspace.batch();
        for subject in ["a", "a.b"] {
            for seq in 1..=5 {
                let f = frame(subject, seq, None);
                batch.insert(&parts.msgs, msg_key(subject, seq), f.stored_bytes());
            }
        }
        batch.commit().unwrap();
        parts
    }

    fn req(after: u64, before: u64, limit: usize, newest: bool) -> ReadReq {
        ReadReq {
            subject: "a".into(),
            after,
            before,
            limit,
            newest,
            core: 0,
            token: 0,
        }
    }

    #[test]
    fn a_range_excludes_both_of_its_bounds() {
        let dir = TempDir::new("range-bounds");
        let parts = stored(&dir);
        assert_eq!(
            seqs(&read_range(&parts.msgs, &req(1, 5, 10, false))),
            vec![2, 3, 4]
        );
    }

    #[test]
    fn a_range_holds_only_its_own_subject() {
        let dir = TempDir::new("range-subject");
        let parts = stored(&dir);
        let frames = read_range(&parts.msgs, &req(0, u64::MAX, 100, false));
        assert_eq!(seqs(&frames), vec![1, 2, 3, 4, 5]);
        assert!(frames.iter().all(|f| f.subject() == "a"));
    }

    #[test]
    fn over_its_limit_a_range_takes_the_oldest() {
        let dir = TempDir::new("range-oldest");
        let parts = stored(&dir);
        assert_eq!(
            seqs(&read_range(&parts.msgs, &req(0, 6, 2, false))),
            vec![1, 2]
        );
    }

    #[test]
    fn over_its_limit_a_newest_range_takes_the_newest_oldest_first() {
        let dir = TempDir::new("range-newest");
        let parts = stored(&dir);
        assert_eq!(
            seqs(&read_range(&parts.msgs, &req(0, 6, 2, true))),
            vec![4, 5]
        );
    }

    #[test]
    fn a_range_with_no_seq_between_its_bounds_is_empty() {
        let dir = TempDir::new("range-empty");
        let parts = stored(&dir);
        assert!(read_range(&parts.msgs, &req(3, 4, 10, false)).is_empty());
        assert!(read_range(&parts.msgs, &req(u64::MAX, u64::MAX, 10, false)).is_empty());
    }
}
