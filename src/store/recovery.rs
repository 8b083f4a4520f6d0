//! Recovery: what each owner core reads back from the durable store at start-up.
//!
//! Owns no state: reads the keyspace's partitions for the subjects and pending schedules one
//! core owns (`bus::owner_of`, so a restart with another core count still finds everything).
//! Runs on each core's thread before the core serves anything, and only reads (the storage
//! thread does every write).

use super::codec::{
    decode_id_value, decode_schedule, decode_subject_value, key_seq, subject_prefix,
};
use super::keyspace::Partitions;
use super::{Recovered, RecoveredSubject};
use crate::frame::Frame;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Everything core `core` of `cores` owns: the newest `history` messages and `dedup_ids` ids
/// of each subject, and the pending schedules. A failed read marks the store unhealthy and
/// starts the core empty.
pub(super) fn recover(
    parts: &Partitions,
    healthy: &AtomicBool,
    core: usize,
    cores: usize,
    history: usize,
    dedup_ids: usize,
) -> Recovered {
    let started = Instant::now();
    match try_recover(parts, core, cores, history, dedup_ids) {
        Ok(r) => {
            tracing::info!(
                core,
                subjects = r.subjects.len(),
                schedules = r.schedules.len(),
                ms = started.elapsed().as_millis() as u64,
                "recovered from the store"
            );
            r
        }
        Err(e) => {
            tracing::error!(core, "recovery read failed: {e}; starting this core empty");
            healthy.store(false, Ordering::Release);
            Recovered::default()
        }
    }
}

fn try_recover(
    parts: &Partitions,
    core: usize,
    cores: usize,
    history: usize,
    dedup_ids: usize,
) -> fjall::Result<Recovered> {
    let mut out = Recovered::default();
    for kv in parts.subjects.iter() {
        let (k, v) = kv?;
        let Ok(subject) = std::str::from_utf8(&k) else {
            continue;
        };
        if crate::bus::owner_of(subject, cores) == core {
            let s = recover_subject(parts, subject, &v, history, dedup_ids)?;
            out.subjects.push(s);
        }
    }
    for kv in parts.schedules.iter() {
        let (k, v) = kv?;
        let (Ok(id), Some(s)) = (std::str::from_utf8(&k), decode_schedule(&v)) else {
            continue;
        };
        if crate::bus::owner_of(&s.subject, cores) == core {
            out.schedules.push((id.to_owned(), s));
        }
    }
    Ok(out)
}

/// One subject: its `subjects` value `meta`, the newest `history` frames and the newest
/// `dedup_ids` ids, oldest first.
fn recover_subject(
    parts: &Partitions,
    subject: &str,
    meta: &[u8],
    history: usize,
    dedup_ids: usize,
) -> fjall::Result<RecoveredSubject> {
    let prefix = subject_prefix(subject);
    let mut frames = Vec::new();
    for kv in parts.msgs.prefix(&prefix).rev().take(history) {
        let (_, v) = kv?;
        match Frame::from_stored(&v) {
            Ok(f) => frames.push(Arc::new(f)),
            Err(e) => tracing::warn!(subject, "skipping an unreadable stored message: {e}"),
        }
    }
    frames.reverse();
    let mut ids = Vec::new();
    for kv in parts.ids.prefix(&prefix).rev().take(dedup_ids) {
        let (k, v) = kv?;
        if let Some((ts, id)) = decode_id_value(&v) {
            ids.push((id.into(), key_seq(&k), ts));
        }
    }
    ids.reverse();
    let (last_seq, last_ts) = decode_subject_value(meta);
    Ok(RecoveredSubject {
        subject: subject.into(),
        last_seq,
        last_ts,
        frames,
        ids,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{frame, open, seqs, TempDir};
    use super::super::{Durability, DurableStore, HistoryStore, Retention};
    use crate::schedule::Scheduled;

    /// Opens `dir` again after `fill` wrote to it and closed it.
    fn reopened(
        dir: &TempDir,
        retention: Retention,
        fill: impl FnOnce(&DurableStore),
    ) -> DurableStore {
        let (store, _rx) = open(dir, Durability::Sync, retention.clone(), 1);
        fill(&store);
        store.close();
        drop(store);
        open(dir, Durability::Sync, retention, 1).0
    }

    fn schedule(subject: &str) -> Scheduled {
        Scheduled {
            subject: subject.into(),
            data: b"1".as_slice().into(),
            msg_id: None,
            at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_subject_comes_back_with_its_last_seq_and_newest_messages_oldest_first() {
        let dir = TempDir::new("rec-history");
        let store = reopened(&dir, Retention::default(), |s| {
            for seq in 1..=5 {
                s.append(0, &frame("a", seq, None), None);
            }
        });
        let rec = store.recover(0, 1, 3, 0);
        assert_eq!(rec.subjects.len(), 1);
        let a = &rec.subjects[0];
        assert_eq!((&*a.subject, a.last_seq, a.last_ts), ("a", 5, 5));
        assert_eq!(seqs(&a.frames), vec![3, 4, 5]);
        store.close();
    }

    #[test]
    fn the_newest_dedup_ids_come_back_with_their_seq_and_ts() {
        let dir = TempDir::new("rec-ids");
        let store = reopened(&dir, Retention::default(), |s| {
            s.append(0, &frame("a", 1, Some("x")), None);
            s.append(0, &frame("a", 2, None), None);
            s.append(0, &frame("a", 3, Some("y")), None);
            s.append(0, &frame("a", 4, Some("z")), None);
        });
        let ids = &store.recover(0, 1, 10, 2).subjects[0].ids;
        assert_eq!(ids, &[("y".into(), 3, 3), ("z".into(), 4, 4)]);
        store.close();
    }

    #[test]
    fn the_last_seq_survives_count_retention_removing_older_messages() {
        let dir = TempDir::new("rec-count");
        let retention = Retention::parse(&["a=count:2".into()]).unwrap();
        let store = reopened(&dir, retention, |s| {
            for seq in 1..=5 {
                s.append(0, &frame("a", seq, None), None);
            }
        });
        let a = &store.recover(0, 1, 10, 0).subjects[0];
        assert_eq!(a.last_seq, 5);
        assert_eq!(seqs(&a.frames), vec![4, 5]);
        store.close();
    }

    #[test]
    fn each_core_gets_only_the_subjects_and_schedules_it_owns() {
        let dir = TempDir::new("rec-owner");
        let subjects: Vec<String> = (0..16).map(|i| format!("s.{i}")).collect();
        let store = reopened(&dir, Retention::default(), |s| {
            for (i, subject) in subjects.iter().enumerate() {
                s.append(0, &frame(subject, 1, None), None);
                s.put_schedule(&format!("id-{i}"), &schedule(subject));
            }
        });
        let mut seen = Vec::new();
        for core in 0..4 {
            let rec = store.recover(core, 4, 10, 0);
            for s in &rec.subjects {
                assert_eq!(crate::bus::owner_of(&s.subject, 4), core);
                seen.push(s.subject.to_string());
            }
            for (_, s) in &rec.schedules {
                assert_eq!(crate::bus::owner_of(&s.subject, 4), core);
            }
            assert_eq!(rec.schedules.len(), rec.subjects.len());
        }
        seen.sort();
        let mut all = subjects.clone();
        all.sort();
        assert_eq!(seen, all);
        store.close();
    }

    #[test]
    fn pending_schedules_come_back_and_fired_or_deleted_ones_do_not() {
        let dir = TempDir::new("rec-sched");
        let store = reopened(&dir, Retention::default(), |s| {
            s.put_schedule("kept", &schedule("a"));
            s.put_schedule("fired", &schedule("a"));
            s.put_schedule("deleted", &schedule("a"));
            s.append(0, &frame("a", 1, None), Some("fired"));
            s.delete_schedule("deleted");
        });
        let ids: Vec<String> = store
            .recover(0, 1, 10, 0)
            .schedules
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, vec!["kept".to_string()]);
        store.close();
    }

    #[test]
    fn an_empty_store_recovers_nothing() {
        let dir = TempDir::new("rec-empty");
        let store = reopened(&dir, Retention::default(), |_| {});
        let rec = store.recover(0, 1, 10, 10);
        assert!(rec.subjects.is_empty() && rec.schedules.is_empty());
        store.close();
    }
}
