//! Group commit, the staging step: how one group of queued operations becomes one atomic
//! fjall batch.
//!
//! Owns [`Meta`] (per subject: oldest and newest stored seq) and count retention, which drops
//! what an append pushes out of a subject's window in the same batch. Everything here runs on
//! the storage thread (`ringcast-store`), between draining the channel and committing.

use super::codec::{id_value, msg_key, subject_value};
use super::keyspace::Op;
use super::keyspace::Partitions;
use super::{ReadReq, Retention};
use crate::frame::Frame;
use fjall::Batch;
use hashbrown::{HashMap, HashSet};
use std::ops::Range;

/// Per-subject bookkeeping of the storage thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Meta {
    /// Oldest stored seq (0: none stored).
    pub(super) first: u64,
    /// Highest seq ever stored.
    pub(super) last: u64,
    /// ts of that message.
    pub(super) last_ts: u64,
}

impl Meta {
    /// Notes a stored message `seq` at `ts` of a subject that keeps `keep` messages; returns
    /// the seqs that count retention drops (usually one, or none).
    pub(super) fn append(&mut self, seq: u64, ts: u64, keep: u64) -> Range<u64> {
        if self.first == 0 {
            self.first = seq;
        }
        self.last = self.last.max(seq);
        self.last_ts = self.last_ts.max(ts);
        let from = self.first;
        if self.first > 0 && self.last - self.first >= keep {
            self.first = self.last - keep + 1;
        }
        from..self.first
    }
}

/// The highest ticket of each core's appends in `group`, by core: what the group's commit
/// makes durable in sync mode.
pub(super) fn covered_tickets(group: &[Op]) -> Vec<(usize, u64)> {
    let mut upto: HashMap<usize, u64> = HashMap::new();
    for op in group {
        if let Op::Append { core, ticket, .. } = op {
            let t = upto.entry(*core).or_insert(0);
            *t = (*t).max(*ticket);
        }
    }
    let mut upto: Vec<_> = upto.into_iter().collect();
    upto.sort_unstable();
    upto
}

/// A group being staged: borrows the storage thread's partitions, rules and bookkeeping.
pub(super) struct Staging<'a> {
    parts: &'a Partitions,
    retention: &'a Retention,
    meta: &'a mut HashMap<Box<str>, Meta>,
    batch: Batch,
    /// Subjects whose `subjects` value changes.
    touched: HashSet<Box<str>>,
    reads: Vec<ReadReq>,
    appended: u64,
}

/// A staged group, ready to commit.
pub(super) struct Staged {
    /// Every write of the group.
    pub(super) batch: Batch,
    /// Deep reads, to answer after the commit (so they see the group).
    pub(super) reads: Vec<ReadReq>,
    /// Messages in the group.
    pub(super) appended: u64,
}

impl<'a> Staging<'a> {
    /// Starts staging into `batch`.
    pub(super) fn new(
        batch: Batch,
        parts: &'a Partitions,
        retention: &'a Retention,
        meta: &'a mut HashMap<Box<str>, Meta>,
    ) -> Self {
        Staging {
            parts,
            retention,
            meta,
            batch,
            touched: HashSet::new(),
            reads: Vec::new(),
            appended: 0,
        }
    }

    /// Adds one operation.
    pub(super) fn stage(&mut self, op: Op) {
        let schedules = &self.parts.schedules;
        match op {
            Op::Append { frame, fired, .. } => self.append(&frame, fired.as_deref()),
            Op::PutSchedule(id, v) => self.batch.insert(schedules, id.as_bytes(), v),
            Op::DeleteSchedule(id) => self.batch.remove(schedules, id.as_bytes()),
            Op::Read(r) => self.reads.push(r),
            Op::Close => {}
        }
    }

    /// A message, its dedup id, the schedule it fires and what count retention drops.
    fn append(&mut self, frame: &Frame, fired: Option<&str>) {
        let (subject, seq, ts) = (frame.subject(), frame.seq(), frame.ts());
        let (batch, parts) = (&mut self.batch, self.parts);
        let key = msg_key(subject, seq);
        if let Some(id) = frame.envelope().msg_id.as_ref() {
            batch.insert(&parts.ids, key.clone(), id_value(ts, id));
        }
        batch.insert(&parts.msgs, key, frame.stored_bytes());
        if let Some(id) = fired {
            batch.remove(&parts.schedules, id.as_bytes());
        }
        let keep = self.retention.rule(subject).count;
        let dropped = self
            .meta
            .entry_ref(subject)
            .or_default()
            .append(seq, ts, keep);
        for old in dropped {
            let k = msg_key(subject, old);
            batch.remove(&parts.ids, k.clone());
            batch.remove(&parts.msgs, k);
        }
        if !self.touched.contains(subject) {
            self.touched.insert(subject.into());
        }
        self.appended += 1;
    }

    /// Adds the new last seq and ts of every subject the group appended to.
    pub(super) fn finish(mut self) -> Staged {
        for subject in &self.touched {
            let m = self.meta[subject];
            let v = subject_value(m.last, m.last_ts);
            self.batch
                .insert(&self.parts.subjects, subject.as_bytes(), v);
        }
        Staged {
            batch: self.batch,
            reads: self.reads,
            appended: self.appended,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{decode_subject_value, key_seq};
    use super::super::keyspace::open_keyspace;
    use super::super::testing::{frame, TempDir};
    use super::*;

    fn append(core: usize, ticket: u64) -> Op {
        Op::Append {
            core,
            ticket,
            frame: frame("a", ticket, None),
            fired: None,
        }
    }

    #[test]
    fn a_first_append_starts_the_window_and_drops_nothing() {
        let mut m = Meta::default();
        assert!(m.append(7, 70, 3).is_empty());
        assert_eq!(
            m,
            Meta {
                first: 7,
                last: 7,
                last_ts: 70
            }
        );
    }

    #[test]
    fn appends_within_the_count_drop_nothing() {
        let mut m = Meta::default();
        for seq in 1..=3 {
            assert!(m.append(seq, seq, 3).is_empty());
        }
        assert_eq!((m.first, m.last), (1, 3));
    }

    #[test]
    fn count_retention_drops_the_oldest_message_that_falls_out_of_the_window() {
        let mut m = Meta::default();
        for seq in 1..=3 {
            m.append(seq, seq, 3);
        }
        assert_eq!(m.append(4, 4, 3), 1..2);
        assert_eq!((m.first, m.last), (2, 4));
    }

    #[test]
    fn a_lowered_count_drops_the_whole_excess_in_one_append() {
        let mut m = Meta {
            first: 1,
            last: 100,
            last_ts: 100,
        };
        assert_eq!(m.append(101, 101, 10), 1..92);
        assert_eq!((m.first, m.last), (92, 101));
    }

    #[test]
    fn an_append_after_everything_expired_restarts_the_window_at_its_seq() {
        let mut m = Meta {
            first: 0,
            last: 5,
            last_ts: 5,
        };
        assert!(m.append(6, 6, 10).is_empty());
        assert_eq!((m.first, m.last), (6, 6));
    }

    #[test]
    fn last_seq_and_ts_never_go_back() {
        let mut m = Meta::default();
        m.append(5, 50, 10);
        m.append(4, 40, 10);
        assert_eq!((m.last, m.last_ts), (5, 50));
    }

    #[test]
    fn a_group_covers_each_cores_highest_ticket() {
        let group = [append(0, 1), append(1, 4), append(0, 3), append(0, 2)];
        assert_eq!(covered_tickets(&group), vec![(0, 3), (1, 4)]);
    }

    #[test]
    fn a_group_without_appends_covers_no_ticket() {
        let group = [Op::DeleteSchedule("s".into()), Op::Close];
        assert!(covered_tickets(&group).is_empty());
    }

    /// Stages `ops` on a fresh keyspace with `retention` and commits them.
    fn staged_on_disk(
        dir: &TempDir,
        retention: &Retention,
        ops: Vec<Op>,
    ) -> (Partitions, HashMap<Box<str>, Meta>, u64) {
        let (keyspace, parts) = open_keyspace(dir.path()).unwrap();
        let mut meta = HashMap::new();
        let mut staging = Staging::new(keyspace.batch(), &parts, retention, &mut meta);
        for op in ops {
            staging.stage(op);
        }
        let staged = staging.finish();
        staged.batch.commit().unwrap();
        let appended = staged.appended;
        (parts, meta, appended)
    }

    #[test]
    fn a_staged_group_writes_messages_ids_and_the_subjects_last_seq() {
        let dir = TempDir::new("stage");
        let ops = vec![
            Op::Append {
                core: 0,
                ticket: 1,
                frame: frame("a", 1, Some("id-1")),
                fired: None,
            },
            append(0, 2),
        ];
        let (parts, _, appended) = staged_on_disk(&dir, &Retention::default(), ops);
        assert_eq!(appended, 2);
        assert_eq!(parts.msgs.len().unwrap(), 2);
        assert!(parts.ids.get(msg_key("a", 1)).unwrap().is_some());
        assert!(parts.ids.get(msg_key("a", 2)).unwrap().is_none());
        let v = parts.subjects.get("a").unwrap().unwrap();
        assert_eq!(decode_subject_value(&v), (2, 2));
    }

    #[test]
    fn count_retention_removes_the_dropped_messages_in_the_same_group() {
        let dir = TempDir::new("stage-count");
        let retention = Retention::parse(&["a=count:2".into()]).unwrap();
        let ops = (1..=5).map(|t| append(0, t)).collect();
        let (parts, meta, _) = staged_on_disk(&dir, &retention, ops);
        let keys: Vec<u64> = parts
            .msgs
            .iter()
            .map(|kv| key_seq(&kv.unwrap().0))
            .collect();
        assert_eq!(keys, vec![4, 5]);
        assert_eq!(meta["a"].first, 4);
    }

    #[test]
    fn a_fired_schedule_is_removed_with_the_message_it_published() {
        let dir = TempDir::new("stage-fired");
        let ops = vec![
            Op::PutSchedule("s1".into(), vec![1]),
            Op::PutSchedule("s2".into(), vec![2]),
            Op::Append {
                core: 0,
                ticket: 1,
                frame: frame("a", 1, None),
                fired: Some("s1".into()),
            },
        ];
        let (parts, _, _) = staged_on_disk(&dir, &Retention::default(), ops);
        assert!(parts.schedules.get("s1").unwrap().is_none());
        assert!(parts.schedules.get("s2").unwrap().is_some());
    }

    #[test]
    fn deep_reads_are_kept_for_after_the_commit() {
        let dir = TempDir::new("stage-read");
        let (keyspace, parts) = open_keyspace(dir.path()).unwrap();
        let (retention, mut meta) = (Retention::default(), HashMap::new());
        let mut staging = Staging::new(keyspace.batch(), &parts, &retention, &mut meta);
        staging.stage(Op::Read(ReadReq {
            subject: "a".into(),
            after: 0,
            before: 10,
            limit: 10,
            newest: false,
            core: 1,
            token: 7,
        }));
        let staged = staging.finish();
        assert!(staged.batch.is_empty());
        assert_eq!(staged.reads.len(), 1);
        assert_eq!(staged.reads[0].token, 7);
    }
}
