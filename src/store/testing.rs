//! Helpers of the store's unit tests: a data directory removed on drop, a sink that records the
//! storage thread's answers on a channel, and frames to append.

use super::{Durability, DurableStore, Retention, StoreConfig, StoreSink, StoredRange};
use crate::frame::Frame;
use crossbeam_channel::{Receiver, Sender};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "ringcast-store-unit-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One answer of the storage thread.
#[derive(Debug)]
pub(super) enum Answer {
    Durable {
        core: usize,
        upto: u64,
        ok: bool,
    },
    Read {
        core: usize,
        token: u64,
        range: StoredRange,
    },
}

/// Records answers on a channel.
pub(super) struct ChanSink(Sender<Answer>);

impl StoreSink for ChanSink {
    fn durable(&self, core: usize, upto: u64, ok: bool) {
        let _ = self.0.send(Answer::Durable { core, upto, ok });
    }

    fn read(&self, core: usize, token: u64, range: StoredRange) {
        let _ = self.0.send(Answer::Read { core, token, range });
    }
}

/// Opens a store of `cores` cores in `dir`, with its answers on the returned channel.
pub(super) fn open(
    dir: &TempDir,
    durability: Durability,
    retention: Retention,
    cores: usize,
) -> (DurableStore, Receiver<Answer>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let cfg = StoreConfig {
        durability,
        fsync_interval: Duration::from_millis(5),
        retention,
        max_backlog: super::MAX_BACKLOG,
    };
    let store =
        DurableStore::open(dir.path(), cfg, cores, Arc::new(ChanSink(tx))).expect("store opens");
    (store, rx)
}

/// The next answer (a hang guard, not a timing expectation).
pub(super) fn next(rx: &Receiver<Answer>) -> Answer {
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the storage thread answers")
}

/// Message `seq` of `subject`, with ts = seq and an optional `msg_id`.
pub(super) fn frame(subject: &str, seq: u64, msg_id: Option<&str>) -> Arc<Frame> {
    Arc::new(Frame::encode(subject, seq, seq, b"1", msg_id))
}

/// The seqs of `frames`.
pub(super) fn seqs(frames: &[Arc<Frame>]) -> Vec<u64> {
    frames.iter().map(|f| f.seq()).collect()
}
