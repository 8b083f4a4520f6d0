//! `HistoryStore`: where sequenced messages, dedup ids and pending schedules live beyond the
//! owner cores' memory.
//!
//! Two implementations behind one trait:
//! - [`MemoryStore`] (`--durability none`, the default without `--data-dir`): nothing outlives
//!   the process; the owner cores' history rings are the whole history.
//! - [`DurableStore`] (`--data-dir`): an embedded LSM store (fjall: journal + sorted tables,
//!   crash-safe recovery, batch commits) written by one storage thread, `ringcast-store`.
//!
//! Threading contract: owner cores call [`HistoryStore::append`] and friends, which only push
//! onto a crossbeam channel (never a syscall, never a lock held across I/O), so a core's event
//! loop never waits for the disk. The storage thread drains the channel into one batch per
//! turn (group commit), commits it, makes it as durable as `--durability` promises, and answers
//! through the [`StoreSink`] it was opened with (the node wires it to the cores' bus):
//! [`StoreSink::durable`] (sync mode: which appends are on disk) and [`StoreSink::read`]
//! (history older than the rings). Recovery ([`HistoryStore::recover`]) runs on each core's
//! thread at start-up, before the core serves anything.
//!
//! What `--durability` promises:
//! - `none`: nothing is written; a restart starts every subject at seq 1.
//! - `batch`: a publish is acknowledged and delivered before its group is fsynced; groups are
//!   handed to the OS at once and fsynced every `--fsync-interval-ms`. A crash of the process
//!   loses what was still queued for the storage thread (normally well under a millisecond of
//!   publishes); a power loss or kernel crash may also lose the last interval, whose seqs may
//!   then be reused.
//! - `sync`: a publish is acknowledged, delivered to subscribers and visible in history only
//!   after the fsync of the group that holds it. Nothing acknowledged or delivered is lost,
//!   and no seq that was acknowledged or delivered is ever given to another message.
//!
//! Layout on disk (partitions of one keyspace; encoded in `codec`):
//! - `msgs`: `subject 0x00 seq(u64 BE)` -> the frame's self-describing bytes
//!   ([`Frame::stored_bytes`]).
//! - `ids`: same key -> ts (u64 BE) and the message's `msg_id` (only messages that have one;
//!   dedup recovery reads these without touching message bodies).
//! - `subjects`: `subject` -> last seq, last ts (u64 BE each): seq continues even when
//!   retention has removed every message of a subject.
//! - `schedules`: schedule id -> the pending publish.
//!
//! Files of this module:
//! - `mod.rs` (here): the traits, [`MemoryStore`] and the types the cores exchange with a store.
//! - `retention.rs`: `--retention` rules ([`Retention`], [`Rule`]).
//! - `durable.rs`: [`DurableStore`], the handle the cores hold (open, enqueue, recover, close).
//! - `keyspace.rs`: the fjall keyspace and its partitions; `Op`, what the cores queue.
//! - `writer.rs`: the `ringcast-store` thread (group commit, fsync, deep reads, age retention).
//! - `group.rs`: staging one group into one batch (per-subject bookkeeping, count retention).
//! - `read.rs`: deep reads of a subject's stored messages in a seq range.
//! - `recovery.rs`: what each core reads back at start-up.
//! - `codec.rs`: keys and values as laid out on disk.

mod codec;
mod durable;
mod group;
mod keyspace;
mod read;
mod recovery;
mod retention;
mod writer;

pub use durable::DurableStore;
pub use retention::{parse_duration, Retention, Rule, DEFAULT_RETAIN_COUNT};

use crate::frame::Frame;
use crate::metrics::NodeSeries;
use crate::schedule::Scheduled;
use std::sync::Arc;
use std::time::Duration;

/// Default of `--store-max-backlog`: store operations queued for the storage thread beyond
/// which new publishes are refused (503) instead of queued; about 1.5 s of the storage
/// thread's sustained rate. Bounds the memory a slow or stalled disk can pin.
pub const MAX_BACKLOG: usize = 262_144;

/// Most messages one deep history read returns (a `since` replay that reaches further back
/// than this gets a `gap` for the older part).
pub const MAX_READ: usize = 65_536;

/// How a durable store behaves (from the `--durability`, `--fsync-interval-ms`,
/// `--retention` and `--store-max-backlog` flags).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `batch` or `sync`.
    pub durability: Durability,
    /// `batch`: most time between a commit and its fsync.
    pub fsync_interval: Duration,
    /// Stored history per subject pattern.
    pub retention: Retention,
    /// Queued operations beyond which publishes are refused.
    pub max_backlog: usize,
}

/// How durable an acknowledged publish is (`--durability`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Memory only.
    None,
    /// Acknowledged before fsync; fsync every `--fsync-interval-ms`.
    Batch,
    /// Acknowledged after the fsync of its group.
    Sync,
}

/// One subject as recovered from the store, for its owner core.
#[derive(Debug)]
pub struct RecoveredSubject {
    /// The subject.
    pub subject: Box<str>,
    /// Highest seq ever assigned.
    pub last_seq: u64,
    /// ts of that message.
    pub last_ts: u64,
    /// The newest stored messages (at most `--history`), oldest first.
    pub frames: Vec<Arc<Frame>>,
    /// `msg_id`, seq, ts of the newest messages that had one, oldest first.
    pub ids: Vec<(Box<str>, u64, u64)>,
}

/// What one core gets back at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Subjects the core owns.
    pub subjects: Vec<RecoveredSubject>,
    /// Pending scheduled publishes of subjects the core owns, with their ids.
    pub schedules: Vec<(String, Scheduled)>,
}

/// A deep read's answer: stored messages of one subject in a seq range.
#[derive(Debug, Default)]
pub struct StoredRange {
    /// Oldest seq the store still holds for the subject (0: none).
    pub first_seq: u64,
    /// The messages, oldest first.
    pub frames: Vec<Arc<Frame>>,
}

/// A deep read request.
#[derive(Debug, Clone)]
pub struct ReadReq {
    /// Concrete subject.
    pub subject: Box<str>,
    /// Messages with seq > after ...
    pub after: u64,
    /// ... and seq < before.
    pub before: u64,
    /// At most this many ...
    pub limit: usize,
    /// ... the newest ones when the range holds more (else the oldest).
    pub newest: bool,
    /// Core to answer (through [`StoreSink::read`]).
    pub core: usize,
    /// Its request token.
    pub token: u64,
}

/// The persistence backend of a node's owner cores (see the module docs).
pub trait HistoryStore: Send + Sync {
    /// What acknowledged publishes survive.
    fn durability(&self) -> Durability;
    /// Stores a sequenced message; returns its ticket (per core, increasing). In sync mode the
    /// core learns that tickets up to N are on disk from [`StoreSink::durable`]. `fired`: the
    /// schedule this message fires, deleted in the same atomic group.
    fn append(&self, core: usize, frame: &Arc<Frame>, fired: Option<&str>) -> u64;
    /// Stores a pending scheduled publish.
    fn put_schedule(&self, id: &str, s: &Scheduled);
    /// Forgets a pending scheduled publish (cancelled).
    fn delete_schedule(&self, id: &str);
    /// Reads stored messages older than the rings; answered through [`StoreSink::read`].
    /// Only called when [`HistoryStore::durability`] is not `None`.
    fn read(&self, req: ReadReq);
    /// Everything core `core` of `cores` owns (start-up, on the core's thread).
    fn recover(&self, core: usize, cores: usize, history: usize, dedup_ids: usize) -> Recovered;
    /// True while the store accepts writes (false after an I/O error).
    fn healthy(&self) -> bool;
    /// True when the storage thread is too far behind (`--store-max-backlog`): refuse
    /// publishes.
    fn saturated(&self) -> bool {
        false
    }
    /// Writes, fsyncs and stops (after the cores have stopped).
    fn close(&self);
    /// Node-wide metrics of the store.
    fn series(&self) -> Vec<NodeSeries> {
        Vec::new()
    }
}

/// Where the storage thread's answers go (the node wires it to the cores' bus).
pub trait StoreSink: Send + Sync + 'static {
    /// Sync durability: core `core`'s appends up to ticket `upto` are on disk (`ok`), or their
    /// group failed.
    fn durable(&self, core: usize, upto: u64, ok: bool);
    /// The answer to a deep read: `ReadReq::core` and `ReadReq::token` of the request.
    fn read(&self, core: usize, token: u64, range: StoredRange);
}

/// `--durability none`: the rings are the history.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl HistoryStore for MemoryStore {
    fn durability(&self) -> Durability {
        Durability::None
    }
    fn append(&self, _: usize, _: &Arc<Frame>, _: Option<&str>) -> u64 {
        0
    }
    fn put_schedule(&self, _: &str, _: &Scheduled) {}
    fn delete_schedule(&self, _: &str) {}
    fn read(&self, _: ReadReq) {}
    fn recover(&self, _: usize, _: usize, _: usize, _: usize) -> Recovered {
        Recovered::default()
    }
    fn healthy(&self) -> bool {
        true
    }
    fn close(&self) {}
}

#[cfg(test)]
mod testing;
