//! The fjall keyspace of a data dir and its four partitions (`msgs`, `ids`, `subjects`,
//! `schedules`; the module docs of `store` say what each holds), and [`Op`], what the cores
//! queue for the storage thread. Opened once per process (the data dir is locked by
//! [`super::durable`]); the partitions are shared by the storage thread and, at start-up, the
//! cores' recovery.

use super::ReadReq;
use crate::frame::Frame;
use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle};
use std::path::Path;
use std::sync::Arc;

/// The partitions of the keyspace (see the module docs of `store` for what each holds).
pub(super) struct Partitions {
    pub(super) msgs: PartitionHandle,
    pub(super) ids: PartitionHandle,
    pub(super) subjects: PartitionHandle,
    pub(super) schedules: PartitionHandle,
}

/// Opens the keyspace in `dir` and its partitions.
pub(super) fn open_keyspace(dir: &Path) -> std::io::Result<(Keyspace, Partitions)> {
    let err = |e: fjall::Error| std::io::Error::other(format!("--data-dir {}: {e}", dir.display()));
    // One background flush and one compaction thread: the cores own the CPUs, and this
    // workload (append, rarely read, delete from the front) needs little compaction.
    let keyspace = fjall::Config::new(dir)
        .flush_workers(1)
        .compaction_workers(1)
        .open()
        .map_err(err)?;
    let open = |name: &str| {
        keyspace
            .open_partition(name, PartitionCreateOptions::default())
            .map_err(err)
    };
    let parts = Partitions {
        msgs: open("msgs")?,
        ids: open("ids")?,
        subjects: open("subjects")?,
        schedules: open("schedules")?,
    };
    Ok((keyspace, parts))
}

/// What the cores ask of the storage thread.
pub(super) enum Op {
    /// Store a sequenced message; `ticket` is the core's, `fired` the schedule it fires.
    Append {
        core: usize,
        ticket: u64,
        frame: Arc<Frame>,
        fired: Option<Box<str>>,
    },
    /// Store a pending schedule (id, [`super::codec::encode_schedule`] bytes).
    PutSchedule(Box<str>, Vec<u8>),
    /// Forget a pending schedule.
    DeleteSchedule(Box<str>),
    /// Answer a deep read after this group's writes.
    Read(ReadReq),
    /// Commit what is queued, fsync, stop.
    Close,
}
