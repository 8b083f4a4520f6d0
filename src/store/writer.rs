//! The storage thread, `ringcast-store`: the only writer of the durable store's keyspace.
//!
//! Owns the channel's receiving end, the per-subject bookkeeping (`group::Meta`: oldest and
//! newest stored seq) and the store's counters ([`Stats`]). Each turn it drains the channel
//! into one group, stages it (`group.rs`), commits it as one atomic batch (fsynced first in
//! sync mode; fsynced every `--fsync-interval-ms` in batch mode), answers the cores through the
//! [`StoreSink`], and once a tick applies age retention. Built on the main thread by
//! `DurableStore::open` (which also loads the bookkeeping there); runs on its own thread until
//! `Op::Close`.

use super::codec::{decode_subject_value, key_seq, msg_key, subject_prefix};
use super::group::{covered_tickets, Meta, Staged, Staging};
use super::keyspace::{Op, Partitions};
use super::read::read_range;
use super::{Durability, ReadReq, Retention, StoreConfig, StoreSink, StoredRange};
use crate::frame::Frame;
use crate::os::now_us;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use fjall::{Batch, Keyspace, PersistMode};
use hashbrown::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most operations the storage thread folds into one commit. Bounds the latency of a group
/// and the memory of one batch; at this size one commit is well under a millisecond.
const MAX_GROUP: usize = 4_096;

/// How often age retention runs (count retention runs on every append).
const RETENTION_TICK: Duration = Duration::from_secs(1);

/// Most messages age retention deletes per tick (bounded work per turn of the storage thread).
const MAX_EXPIRE_PER_TICK: usize = 100_000;

/// Counters of the storage thread (its only writer), read by `/metrics`.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) appended: AtomicU64,
    pub(super) groups: AtomicU64,
    pub(super) fsyncs: AtomicU64,
    pub(super) expired: AtomicU64,
    /// Microseconds of the last group commit (incl. its fsync in sync mode).
    pub(super) last_commit_us: AtomicU64,
}

/// The storage thread's state.
pub(super) struct Writer {
    keyspace: Keyspace,
    parts: Arc<Partitions>,
    durability: Durability,
    fsync_interval: Duration,
    retention: Retention,
    sink: Arc<dyn StoreSink>,
    healthy: Arc<AtomicBool>,
    stats: Arc<Stats>,
    meta: HashMap<Box<str>, Meta>,
    /// Committed but not yet fsynced (batch mode).
    dirty: bool,
}

impl Writer {
    /// The storage thread's state for a freshly opened keyspace (bookkeeping not loaded yet).
    pub(super) fn new(
        keyspace: Keyspace,
        parts: Arc<Partitions>,
        cfg: StoreConfig,
        sink: Arc<dyn StoreSink>,
        healthy: Arc<AtomicBool>,
        stats: Arc<Stats>,
    ) -> Writer {
        Writer {
            keyspace,
            parts,
            durability: cfg.durability,
            fsync_interval: cfg.fsync_interval,
            retention: cfg.retention,
            sink,
            healthy,
            stats,
            meta: HashMap::new(),
            dirty: false,
        }
    }

    /// Loads the subjects' bookkeeping (on the calling thread), then starts `ringcast-store`.
    pub(super) fn spawn(mut self, rx: Receiver<Op>) -> std::io::Result<JoinHandle<()>> {
        self.load_meta();
        std::thread::Builder::new()
            .name("ringcast-store".into())
            .spawn(move || self.run(rx))
    }

    /// Per subject: the oldest stored seq (the first `msgs` key) and the last seq and ts.
    fn load_meta(&mut self) {
        for kv in self.parts.subjects.iter() {
            let Ok((k, v)) = kv else { break };
            let Ok(subject) = std::str::from_utf8(&k) else {
                continue;
            };
            let first = self
                .parts
                .msgs
                .prefix(subject_prefix(subject))
                .next()
                .and_then(Result::ok)
                .map_or(0, |(k, _)| key_seq(&k));
            let (last, last_ts) = decode_subject_value(&v);
            let meta = Meta {
                first,
                last,
                last_ts,
            };
            self.meta.insert(subject.into(), meta);
        }
    }

    fn run(mut self, rx: Receiver<Op>) {
        let mut last_fsync = Instant::now();
        let mut last_retention = Instant::now();
        let tick = match self.durability {
            Durability::Batch => self.fsync_interval.min(RETENTION_TICK),
            _ => RETENTION_TICK,
        };
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut closing = false;
        while !closing {
            closing = next_group(&rx, tick, &mut group);
            self.commit(&mut group);
            if self.durability == Durability::Batch
                && self.dirty
                && (closing || last_fsync.elapsed() >= self.fsync_interval)
            {
                self.fsync();
                last_fsync = Instant::now();
            }
            if last_retention.elapsed() >= RETENTION_TICK {
                self.expire_by_age();
                last_retention = Instant::now();
            }
        }
        if self.dirty {
            self.fsync();
        }
    }

    fn fsync(&mut self) {
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.keyspace.persist(PersistMode::SyncAll) {
            tracing::error!("store fsync failed: {e}");
            self.healthy.store(false, Ordering::Release);
        }
        self.dirty = false;
    }

    /// Writes one group atomically, makes it durable as promised, then answers.
    fn commit(&mut self, group: &mut Vec<Op>) {
        if group.is_empty() {
            return;
        }
        let covered = covered_tickets(group);
        let batch = self.keyspace.batch();
        let mut staging = Staging::new(batch, &self.parts, &self.retention, &mut self.meta);
        for op in group.drain(..) {
            staging.stage(op);
        }
        let Staged {
            batch,
            reads,
            appended,
        } = staging.finish();
        if !batch.is_empty() {
            let ok = self.write(batch, appended);
            if self.durability == Durability::Sync {
                for (core, upto) in covered {
                    self.sink.durable(core, upto, ok);
                }
            }
        }
        for r in reads {
            self.serve_read(r);
        }
    }

    /// Commits a group's batch (fsynced first in sync mode) and counts it; false if it failed.
    fn write(&mut self, batch: Batch, appended: u64) -> bool {
        let started = Instant::now();
        let mode = (self.durability == Durability::Sync).then_some(PersistMode::SyncAll);
        let ok = match batch.durability(mode).commit() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("store commit failed: {e}");
                self.healthy.store(false, Ordering::Release);
                false
            }
        };
        self.dirty |= ok && self.durability == Durability::Batch;
        let st = &self.stats;
        st.groups.fetch_add(1, Ordering::Relaxed);
        st.fsyncs
            .fetch_add(mode.is_some() as u64, Ordering::Relaxed);
        st.appended.fetch_add(appended, Ordering::Relaxed);
        st.last_commit_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        ok
    }

    /// Answers a deep read through the sink.
    fn serve_read(&self, r: ReadReq) {
        let first_seq = self.meta.get(&*r.subject).map_or(0, |m| m.first);
        let frames = read_range(&self.parts.msgs, &r);
        self.sink
            .read(r.core, r.token, StoredRange { first_seq, frames });
    }

    /// Age retention: removes messages older than their subject's `age`, bounded per tick.
    fn expire_by_age(&mut self) {
        let now = now_us();
        let mut batch = self.keyspace.batch();
        let mut budget = MAX_EXPIRE_PER_TICK;
        for (subject, m) in self.meta.iter_mut() {
            let Some(age) = self.retention.rule(subject).age else {
                continue;
            };
            let cutoff = now.saturating_sub(age.as_micros() as u64);
            while m.first > 0 && m.first <= m.last && budget > 0 {
                let k = msg_key(subject, m.first);
                let old = match self.parts.msgs.get(&k) {
                    Ok(Some(v)) => Frame::from_stored(&v).map_or(true, |f| f.ts() < cutoff),
                    Ok(None) => true,
                    Err(_) => false,
                };
                if !old {
                    break;
                }
                batch.remove(&self.parts.ids, k.clone());
                batch.remove(&self.parts.msgs, k);
                m.first += 1;
                budget -= 1;
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
            }
            if m.first > m.last {
                m.first = 0;
            }
        }
        if !batch.is_empty() {
            if let Err(e) = batch.commit() {
                tracing::error!("store retention commit failed: {e}");
                self.healthy.store(false, Ordering::Release);
            }
            self.dirty |= self.durability == Durability::Batch;
        }
    }
}

/// Waits up to `tick` for an operation, then takes what else is queued, up to [`MAX_GROUP`].
/// True when the store is closing (`Op::Close` in the group, or every sender gone).
fn next_group(rx: &Receiver<Op>, tick: Duration, group: &mut Vec<Op>) -> bool {
    let mut closing = false;
    match rx.recv_timeout(tick) {
        Ok(op) => group.push(op),
        Err(RecvTimeoutError::Timeout) => {}
        Err(RecvTimeoutError::Disconnected) => closing = true,
    }
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(op) => group.push(op),
            Err(_) => break,
        }
    }
    closing || group.iter().any(|op| matches!(op, Op::Close))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{frame, next, open, seqs, Answer, TempDir};
    use super::super::{DurableStore, HistoryStore};
    use super::*;

    fn delete(id: &str) -> Op {
        Op::DeleteSchedule(id.into())
    }

    #[test]
    fn a_group_takes_everything_queued() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for id in ["a", "b", "c"] {
            tx.send(delete(id)).unwrap();
        }
        let mut group = Vec::new();
        assert!(!next_group(&rx, Duration::ZERO, &mut group));
        assert_eq!(group.len(), 3);
    }

    #[test]
    fn a_group_holds_at_most_max_group_operations() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for _ in 0..MAX_GROUP + 1 {
            tx.send(delete("a")).unwrap();
        }
        let mut group = Vec::new();
        next_group(&rx, Duration::ZERO, &mut group);
        assert_eq!(group.len(), MAX_GROUP);
        assert_eq!(rx.len(), 1);
    }

    #[test]
    fn a_close_in_the_group_ends_the_run() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(delete("a")).unwrap();
        tx.send(Op::Close).unwrap();
        let mut group = Vec::new();
        assert!(next_group(&rx, Duration::ZERO, &mut group));
    }

    #[test]
    fn every_sender_gone_ends_the_run() {
        let (tx, rx) = crossbeam_channel::unbounded::<Op>();
        drop(tx);
        let mut group = Vec::new();
        assert!(next_group(&rx, Duration::ZERO, &mut group));
        assert!(group.is_empty());
    }

    #[test]
    fn an_empty_channel_gives_an_empty_group_after_the_tick() {
        let (_tx, rx) = crossbeam_channel::unbounded::<Op>();
        let mut group = Vec::new();
        assert!(!next_group(&rx, Duration::ZERO, &mut group));
        assert!(group.is_empty());
    }

    #[test]
    fn sync_mode_reports_each_cores_appends_durable_through_the_sink() {
        let dir = TempDir::new("sync");
        let (store, rx) = open(&dir, Durability::Sync, Retention::default(), 2);
        store.append(1, &frame("a", 1, None), None);
        let t = store.append(1, &frame("a", 2, None), None);
        let mut upto = 0;
        while upto < t {
            match next(&rx) {
                Answer::Durable { core, upto: u, ok } => {
                    assert_eq!(core, 1);
                    assert!(ok);
                    upto = u;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        store.close();
    }

    #[test]
    fn batch_mode_sends_no_durability_answers() {
        let dir = TempDir::new("batch");
        let (store, rx) = open(&dir, Durability::Batch, Retention::default(), 1);
        store.append(0, &frame("a", 1, None), None);
        store.close();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn close_commits_what_is_still_queued() {
        let dir = TempDir::new("close");
        let (store, _rx) = open(&dir, Durability::Batch, Retention::default(), 1);
        for seq in 1..=100 {
            store.append(0, &frame("a", seq, None), None);
        }
        store.close();
        drop(store);
        let (store, _rx) = open(&dir, Durability::Batch, Retention::default(), 1);
        let rec = store.recover(0, 1, 1_000, 0);
        assert_eq!(seqs(&rec.subjects[0].frames), (1..=100).collect::<Vec<_>>());
        store.close();
    }

    fn read(store: &DurableStore, after: u64, before: u64, limit: usize, newest: bool) {
        store.read(ReadReq {
            subject: "a".into(),
            after,
            before,
            limit,
            newest,
            core: 1,
            token: 42,
        });
    }

    fn answered_range(rx: &Receiver<Answer>) -> StoredRange {
        match next(rx) {
            Answer::Read { core, token, range } => {
                assert_eq!((core, token), (1, 42));
                range
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_deep_read_answers_the_requesting_core_and_token_with_the_range() {
        let dir = TempDir::new("read");
        let (store, rx) = open(&dir, Durability::Batch, Retention::default(), 2);
        for seq in 1..=5 {
            store.append(0, &frame("a", seq, None), None);
        }
        read(&store, 1, 5, 10, false);
        let range = answered_range(&rx);
        assert_eq!(range.first_seq, 1);
        assert_eq!(seqs(&range.frames), vec![2, 3, 4]);
        store.close();
    }

    #[test]
    fn a_deep_read_reports_the_oldest_seq_count_retention_kept() {
        let dir = TempDir::new("read-first");
        let retention = Retention::parse(&["a=count:2".into()]).unwrap();
        let (store, rx) = open(&dir, Durability::Batch, retention, 2);
        for seq in 1..=5 {
            store.append(0, &frame("a", seq, None), None);
        }
        read(&store, 0, 6, 10, false);
        let range = answered_range(&rx);
        assert_eq!(range.first_seq, 4);
        assert_eq!(seqs(&range.frames), vec![4, 5]);
        store.close();
    }
}
