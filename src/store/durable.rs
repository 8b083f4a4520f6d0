//! [`DurableStore`] (`--data-dir`): the handle the owner cores hold on the fjall keyspace.
//!
//! Owns the keyspace's lifetime (open, the data directory's lock, close), the channel into the
//! storage thread and the per-core tickets. Opened and closed on the main thread; the
//! [`HistoryStore`] methods run on the owner cores' threads and only enqueue (a channel push
//! and an atomic add), except [`HistoryStore::recover`], which reads the keyspace on the core's
//! thread at start-up. The writes themselves happen on the storage thread (`writer.rs`).

use super::codec::encode_schedule;
use super::keyspace::{open_keyspace, Op, Partitions};
use super::writer::{Stats, Writer};
use super::{Durability, HistoryStore, ReadReq, Recovered, StoreConfig, StoreSink};
use crate::frame::Frame;
use crate::metrics::NodeSeries;
use crate::schedule::Scheduled;
use crossbeam_channel::Sender;
use fjall::{Keyspace, PersistMode};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

/// `--data-dir`: fjall keyspace written by the `ringcast-store` thread.
pub struct DurableStore {
    durability: Durability,
    max_backlog: usize,
    /// The keyspace, for recovery reads at start-up; taken (and so closed, with its
    /// background threads and the directory lock) by `close`.
    open: RwLock<Option<Open>>,
    tx: Sender<Op>,
    /// Next ticket per core (each core only touches its own slot).
    tickets: Box<[AtomicU64]>,
    healthy: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What an open store holds besides its storage thread.
struct Open {
    keyspace: Keyspace,
    parts: Arc<Partitions>,
    /// `<data-dir>/ringcast.lock` (flock) while the store is open: two processes writing one
    /// keyspace would corrupt it. The kernel drops the lock when the process dies.
    _lock: std::fs::File,
}

/// Takes the exclusive lock of a data directory (created if missing), or says who has it.
fn lock_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("--data-dir {}: {e}", dir.display())))?;
    let path = dir.join("ringcast.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::other(format!(
            "--data-dir {} is in use by another ringcast process",
            dir.display()
        )));
    }
    Ok(file)
}

impl DurableStore {
    /// Opens (or creates) the store in `dir` and starts the storage thread, which answers
    /// through `sink`.
    pub fn open(
        dir: &Path,
        cfg: StoreConfig,
        cores: usize,
        sink: Arc<dyn StoreSink>,
    ) -> std::io::Result<DurableStore> {
        let (durability, max_backlog) = (cfg.durability, cfg.max_backlog);
        let lock = lock_dir(dir)?;
        let (keyspace, parts) = open_keyspace(dir)?;
        let parts = Arc::new(parts);
        let (tx, rx) = crossbeam_channel::unbounded();
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(Stats::default());
        let writer = Writer::new(
            keyspace.clone(),
            parts.clone(),
            cfg,
            sink,
            healthy.clone(),
            stats.clone(),
        );
        let thread = writer.spawn(rx)?;
        Ok(DurableStore {
            durability,
            max_backlog,
            open: RwLock::new(Some(Open {
                keyspace,
                parts,
                _lock: lock,
            })),
            tx,
            tickets: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            healthy,
            stats,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl HistoryStore for DurableStore {
    fn durability(&self) -> Durability {
        self.durability
    }

    fn append(&self, core: usize, frame: &Arc<Frame>, fired: Option<&str>) -> u64 {
        let ticket = self.tickets[core].fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.tx.send(Op::Append {
            core,
            ticket,
            frame: frame.clone(),
            fired: fired.map(Into::into),
        });
        ticket
    }

    fn put_schedule(&self, id: &str, s: &Scheduled) {
        let _ = self.tx.send(Op::PutSchedule(id.into(), encode_schedule(s)));
    }

    fn delete_schedule(&self, id: &str) {
        let _ = self.tx.send(Op::DeleteSchedule(id.into()));
    }

    fn read(&self, req: ReadReq) {
        let _ = self.tx.send(Op::Read(req));
    }

    fn recover(&self, core: usize, cores: usize, history: usize, dedup_ids: usize) -> Recovered {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        let Some(open) = open.as_ref() else {
            return Recovered::default();
        };
        super::recovery::recover(&open.parts, &self.healthy, core, cores, history, dedup_ids)
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn saturated(&self) -> bool {
        self.tx.len() >= self.max_backlog
    }

    fn series(&self) -> Vec<NodeSeries> {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            NodeSeries::counter(
                "ringcast_store_appended_total",
                "Messages written to the durable store.",
                get(&s.appended),
            ),
            NodeSeries::counter(
                "ringcast_store_groups_total",
                "Group commits (one batch each).",
                get(&s.groups),
            ),
            NodeSeries::counter(
                "ringcast_store_fsyncs_total",
                "fsyncs of the store journal.",
                get(&s.fsyncs),
            ),
            NodeSeries::counter(
                "ringcast_store_expired_total",
                "Messages removed by age retention.",
                get(&s.expired),
            ),
            NodeSeries::gauge(
                "ringcast_store_last_commit_microseconds",
                "Duration of the last group commit (with its fsync in sync mode).",
                get(&s.last_commit_us),
            ),
            NodeSeries::gauge(
                "ringcast_store_backlog",
                "Store operations queued for the storage thread.",
                self.tx.len() as u64,
            ),
        ]
    }

    fn close(&self) {
        let _ = self.tx.send(Op::Close);
        if let Some(t) = self.thread.lock().expect("not poisoned").take() {
            let _ = t.join();
        }
        let open = self.open.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(open) = open {
            let _ = open.keyspace.persist(PersistMode::SyncAll);
            // Dropping the last keyspace handles stops fjall's threads; then the lock goes.
            drop(open);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{frame, open, TempDir};
    use super::super::Retention;
    use super::*;

    #[test]
    fn tickets_count_up_from_one_per_core() {
        let dir = TempDir::new("tickets");
        let (store, _rx) = open(&dir, Durability::Batch, Retention::default(), 2);
        let f = frame("a", 1, None);
        assert_eq!(store.append(0, &f, None), 1);
        assert_eq!(store.append(1, &f, None), 1);
        assert_eq!(store.append(0, &f, None), 2);
        store.close();
    }

    #[test]
    fn a_second_open_of_one_data_dir_is_refused() {
        let dir = TempDir::new("lock");
        let (store, _rx) = open(&dir, Durability::Batch, Retention::default(), 1);
        let err = lock_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        store.close();
    }

    #[test]
    fn close_releases_the_data_dir() {
        let dir = TempDir::new("relock");
        let (store, _rx) = open(&dir, Durability::Batch, Retention::default(), 1);
        store.close();
        assert!(lock_dir(dir.path()).is_ok());
    }

    #[test]
    fn the_metrics_count_what_the_storage_thread_wrote() {
        let dir = TempDir::new("series");
        let (store, _rx) = open(&dir, Durability::Sync, Retention::default(), 1);
        for seq in 1..=3 {
            store.append(0, &frame("a", seq, None), None);
        }
        store.close();
        let series = store.series();
        let value = |name: &str| series.iter().find(|s| s.name == name).unwrap().value;
        assert_eq!(value("ringcast_store_appended_total"), 3);
        assert!(
            store.healthy(),
            "ringcast_store_healthy comes from healthy() (Node::node_series)"
        );
        assert_eq!(value("ringcast_store_backlog"), 0);
        assert!(value("ringcast_store_groups_total") >= 1);
        assert!(value("ringcast_store_fsyncs_total") >= 1);
    }

    #[test]
    fn recovery_after_close_finds_nothing() {
        let dir = TempDir::new("recover-closed");
        let (store, _rx) = open(&dir, Durability::Batch, Retention::default(), 1);
        store.append(0, &frame("a", 1, None), None);
        store.close();
        assert!(store.recover(0, 1, 10, 10).subjects.is_empty());
    }
}
