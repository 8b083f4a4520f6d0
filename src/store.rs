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
//! over the cross-core bus: [`BusMsg::Durable`] (sync mode: which appends are on disk) and
//! [`BusMsg::StoreRead`] (history older than the rings). Recovery ([`HistoryStore::recover`])
//! runs on each core's thread at start-up, before the core serves anything.
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
//! Layout on disk (partitions of one keyspace):
//! - `msgs`: `subject 0x00 seq(u64 BE)` -> the frame's self-describing bytes
//!   ([`Frame::stored_bytes`]).
//! - `ids`: same key -> ts (u64 BE) and the message's `msg_id` (only messages that have one;
//!   dedup recovery reads these without touching message bodies).
//! - `subjects`: `subject` -> last seq, last ts (u64 BE each): seq continues even when
//!   retention has removed every message of a subject.
//! - `schedules`: schedule id -> the pending publish.

use crate::frame::Frame;
use crate::metrics::NodeSeries;
use crate::os::now_us;
use crate::schedule::Scheduled;
use crossbeam_channel::{Receiver, Sender};
use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use hashbrown::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most operations the storage thread folds into one commit. Bounds the latency of a group
/// and the memory of one batch; at this size one commit is well under a millisecond.
const MAX_GROUP: usize = 4_096;

/// Default of `--store-max-backlog`: store operations queued for the storage thread beyond
/// which new publishes are refused (503) instead of queued; about 1.5 s of the storage
/// thread's sustained rate. Bounds the memory a slow or stalled disk can pin.
pub const MAX_BACKLOG: usize = 262_144;

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

/// How often age retention runs (count retention runs on every append).
const RETENTION_TICK: Duration = Duration::from_secs(1);

/// Most messages age retention deletes per tick (bounded work per turn of the storage thread).
const MAX_EXPIRE_PER_TICK: usize = 100_000;

/// Most messages one deep history read returns (a `since` replay that reaches further back
/// than this gets a `gap` for the older part).
pub const MAX_READ: usize = 65_536;

/// How durable an acknowledged publish is (`--durability`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Memory only.
    None,
    /// Acknowledged before fsync; fsync every `--fsync-interval-ms`.
    Batch,
    /// Acknowledged after the fsync of its group.
    Sync,
}

/// Retention of one subject's stored messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Keep at most this many of the newest messages.
    pub count: u64,
    /// Drop messages older than this (`None`: no age limit).
    pub age: Option<Duration>,
}

/// Retention rules by subject pattern (`--retention PATTERN=count:N,age:DUR`); the first
/// matching pattern wins, else the default.
#[derive(Debug, Clone)]
pub struct Retention {
    rules: Vec<(Box<str>, Rule)>,
    default: Rule,
}

/// Default stored messages per subject when no `--retention` rule matches.
pub const DEFAULT_RETAIN_COUNT: u64 = 10_000;

impl Default for Retention {
    fn default() -> Self {
        Retention {
            rules: Vec::new(),
            default: Rule {
                count: DEFAULT_RETAIN_COUNT,
                age: None,
            },
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h, d)")),
    };
    Ok(Duration::from_secs(secs))
}

impl Retention {
    /// Parses `PATTERN=count:N,age:DUR` specs (either part may be omitted; a pattern of `>`
    /// replaces the default).
    pub fn parse(specs: &[String]) -> Result<Retention, String> {
        let mut r = Retention::default();
        for spec in specs {
            let (pattern, rule) = spec
                .split_once('=')
                .ok_or_else(|| format!("--retention {spec:?}: expected PATTERN=count:N,age:DUR"))?;
            crate::subject::validate_pattern(pattern)
                .map_err(|e| format!("--retention {spec:?}: {e}"))?;
            let mut parsed = Rule {
                count: u64::MAX,
                age: None,
            };
            for part in rule.split(',') {
                match part.split_once(':') {
                    Some(("count", n)) => {
                        parsed.count = n
                            .parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("--retention {spec:?}: bad count"))?
                    }
                    Some(("age", d)) => {
                        parsed.age = Some(
                            parse_duration(d).map_err(|e| format!("--retention {spec:?}: {e}"))?,
                        )
                    }
                    _ => return Err(format!("--retention {spec:?}: unknown part {part:?}")),
                }
            }
            if pattern == ">" {
                r.default = parsed;
            } else {
                r.rules.push((pattern.into(), parsed));
            }
        }
        Ok(r)
    }

    /// The rule for `subject`.
    pub fn rule(&self, subject: &str) -> Rule {
        self.rules
            .iter()
            .find(|(p, _)| crate::subject::matches(p, subject))
            .map_or(self.default, |(_, r)| *r)
    }
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
    /// Core to answer (with [`BusMsg::StoreRead`]).
    pub core: usize,
    /// Its request token.
    pub token: u64,
}

/// Where the storage thread's answers go (the node wires it to the cores' bus).
pub trait StoreSink: Send + Sync + 'static {
    /// Sync durability: core `core`'s appends up to ticket `upto` are on disk (`ok`), or their
    /// group failed.
    fn durable(&self, core: usize, upto: u64, ok: bool);
    /// The answer to a deep read: `ReadReq::core` and `ReadReq::token` of the request.
    fn read(&self, core: usize, token: u64, range: StoredRange);
}

/// The persistence backend of a node's owner cores (see the module docs).
pub trait HistoryStore: Send + Sync {
    /// What acknowledged publishes survive.
    fn durability(&self) -> Durability;
    /// Stores a sequenced message; returns its ticket (per core, increasing). In sync mode the
    /// core learns that tickets up to N are on disk from [`BusMsg::Durable`]. `fired`: the
    /// schedule this message fires, deleted in the same atomic group.
    fn append(&self, core: usize, frame: &Arc<Frame>, fired: Option<&str>) -> u64;
    /// Stores a pending scheduled publish.
    fn put_schedule(&self, id: &str, s: &Scheduled);
    /// Forgets a pending scheduled publish (cancelled).
    fn delete_schedule(&self, id: &str);
    /// Reads stored messages older than the rings; answered with [`BusMsg::StoreRead`].
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

enum Op {
    Append {
        core: usize,
        ticket: u64,
        frame: Arc<Frame>,
        fired: Option<Box<str>>,
    },
    PutSchedule(Box<str>, Vec<u8>),
    DeleteSchedule(Box<str>),
    Read(ReadReq),
    Close,
}

struct Partitions {
    msgs: PartitionHandle,
    ids: PartitionHandle,
    subjects: PartitionHandle,
    schedules: PartitionHandle,
}

/// `--data-dir`: fjall keyspace written by the `ringcast-store` thread.
pub struct DurableStore {
    durability: Durability,
    max_backlog: usize,
    /// The keyspace, for recovery reads at start-up; taken (and so closed, with its
    /// background threads and the directory lock) by `close`.
    open: std::sync::RwLock<Option<Open>>,
    tx: Sender<Op>,
    /// Next ticket per core (each core only touches its own slot).
    tickets: Box<[AtomicU64]>,
    healthy: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
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

/// Counters of the storage thread (its only writer), read by `/metrics`.
#[derive(Debug, Default)]
struct Stats {
    appended: AtomicU64,
    groups: AtomicU64,
    fsyncs: AtomicU64,
    expired: AtomicU64,
    /// Microseconds of the last group commit (incl. its fsync in sync mode).
    last_commit_us: AtomicU64,
}

fn msg_key(subject: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + 9);
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn subject_prefix(subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + 1);
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k
}

fn key_seq(key: &[u8]) -> u64 {
    let n = key.len();
    u64::from_be_bytes(key[n - 8..].try_into().expect("8 bytes"))
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
}

fn encode_schedule(s: &Scheduled) -> Vec<u8> {
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

fn decode_schedule(b: &[u8]) -> Option<Scheduled> {
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

impl DurableStore {
    /// Opens (or creates) the store in `dir` and starts the storage thread.
    pub fn open(
        dir: &Path,
        cfg: StoreConfig,
        cores: usize,
        sink: Arc<dyn StoreSink>,
    ) -> std::io::Result<DurableStore> {
        let StoreConfig {
            durability,
            fsync_interval,
            retention,
            max_backlog,
        } = cfg;
        let lock = lock_dir(dir)?;
        // One background flush and one compaction thread: the cores own the CPUs, and this
        // workload (append, rarely read, delete from the front) needs little compaction.
        let keyspace = fjall::Config::new(dir)
            .flush_workers(1)
            .compaction_workers(1)
            .open()
            .map_err(|e| std::io::Error::other(format!("--data-dir {}: {e}", dir.display())))?;
        let open = |name: &str| {
            keyspace
                .open_partition(name, PartitionCreateOptions::default())
                .map_err(|e| std::io::Error::other(format!("--data-dir {}: {e}", dir.display())))
        };
        let parts = Arc::new(Partitions {
            msgs: open("msgs")?,
            ids: open("ids")?,
            subjects: open("subjects")?,
            schedules: open("schedules")?,
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(Stats::default());
        let mut writer = Writer {
            stats: stats.clone(),
            keyspace: keyspace.clone(),
            parts: parts.clone(),
            durability,
            fsync_interval,
            retention,
            sink,
            healthy: healthy.clone(),
            meta: HashMap::new(),
            dirty: false,
        };
        writer.load_meta();
        let thread = std::thread::Builder::new()
            .name("ringcast-store".into())
            .spawn(move || writer.run(rx))?;
        Ok(DurableStore {
            durability,
            max_backlog,
            open: std::sync::RwLock::new(Some(Open {
                keyspace,
                parts,
                _lock: lock,
            })),
            tx,
            tickets: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            healthy,
            stats,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

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
            if let Ok(id) = std::str::from_utf8(v.get(8..).unwrap_or_default()) {
                ids.push((id.into(), key_seq(&k), be_u64(&v, 0)));
            }
        }
        ids.reverse();
        Ok(RecoveredSubject {
            subject: subject.into(),
            last_seq: be_u64(meta, 0),
            last_ts: be_u64(meta, 8),
            frames,
            ids,
        })
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
                let s = Self::recover_subject(parts, subject, &v, history, dedup_ids)?;
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
        let started = Instant::now();
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        let Some(open) = open.as_ref() else {
            return Recovered::default();
        };
        match Self::try_recover(&open.parts, core, cores, history, dedup_ids) {
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
                self.healthy.store(false, Ordering::Release);
                Recovered::default()
            }
        }
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
            NodeSeries::gauge(
                "ringcast_store_healthy",
                "1 while the durable store writes successfully.",
                self.healthy() as u64,
            ),
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

/// Per-subject bookkeeping of the storage thread.
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// Oldest stored seq (0: none stored).
    first: u64,
    last: u64,
    last_ts: u64,
}

/// The storage thread's state.
struct Writer {
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
            self.meta.insert(
                subject.into(),
                Meta {
                    first,
                    last: be_u64(&v, 0),
                    last_ts: be_u64(&v, 8),
                },
            );
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
            match rx.recv_timeout(tick) {
                Ok(op) => group.push(op),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => closing = true,
            }
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            closing |= group.iter().any(|op| matches!(op, Op::Close));
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
        let mut batch = self.keyspace.batch();
        let mut touched: HashMap<Box<str>, ()> = HashMap::new();
        let mut done: HashMap<usize, u64> = HashMap::new();
        let mut reads = Vec::new();
        let mut appended = 0;
        for op in group.drain(..) {
            match op {
                Op::Append {
                    core,
                    ticket,
                    frame,
                    fired,
                } => {
                    let subject = frame.subject();
                    let seq = frame.seq();
                    let key = msg_key(subject, seq);
                    if let Some(id) = frame.envelope().msg_id.as_ref() {
                        let mut v = Vec::with_capacity(8 + id.len());
                        v.extend_from_slice(&frame.ts().to_be_bytes());
                        v.extend_from_slice(id.as_bytes());
                        batch.insert(&self.parts.ids, key.clone(), v);
                    }
                    batch.insert(&self.parts.msgs, key, frame.stored_bytes());
                    if let Some(id) = fired {
                        batch.remove(&self.parts.schedules, id.as_bytes());
                    }
                    let rule = self.retention.rule(subject);
                    let m = self.meta.entry_ref(subject).or_insert(Meta {
                        first: seq,
                        last: 0,
                        last_ts: 0,
                    });
                    if m.first == 0 {
                        m.first = seq;
                    }
                    m.last = m.last.max(seq);
                    m.last_ts = m.last_ts.max(frame.ts());
                    // Count retention: drop what falls out of the window (usually one key).
                    while m.first > 0 && m.last - m.first >= rule.count {
                        let k = msg_key(subject, m.first);
                        batch.remove(&self.parts.ids, k.clone());
                        batch.remove(&self.parts.msgs, k);
                        m.first += 1;
                    }
                    touched.entry_ref(subject).or_insert(());
                    appended += 1;
                    let d = done.entry(core).or_insert(0);
                    *d = (*d).max(ticket);
                }
                Op::PutSchedule(id, v) => batch.insert(&self.parts.schedules, id.as_bytes(), v),
                Op::DeleteSchedule(id) => batch.remove(&self.parts.schedules, id.as_bytes()),
                Op::Read(r) => reads.push(r),
                Op::Close => {}
            }
        }
        for subject in touched.keys() {
            let m = self.meta[subject];
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&m.last.to_be_bytes());
            v[8..].copy_from_slice(&m.last_ts.to_be_bytes());
            batch.insert(&self.parts.subjects, subject.as_bytes(), v.to_vec());
        }
        if !batch.is_empty() {
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
            if self.durability == Durability::Sync {
                for (core, upto) in done {
                    self.sink.durable(core, upto, ok);
                }
            }
        }
        for r in reads {
            self.serve_read(r);
        }
    }

    fn serve_read(&self, r: ReadReq) {
        let first_seq = self.meta.get(&*r.subject).map_or(0, |m| m.first);
        let lo = msg_key(&r.subject, r.after.saturating_add(1));
        let hi = msg_key(&r.subject, r.before);
        let mut frames = Vec::new();
        let mut push = |kv: fjall::Result<fjall::KvPair>| match kv {
            Ok((_, v)) => {
                if let Ok(f) = Frame::from_stored(&v) {
                    frames.push(Arc::new(f));
                }
            }
            Err(e) => tracing::warn!("store read failed: {e}"),
        };
        if r.after.saturating_add(1) < r.before {
            let range = self.parts.msgs.range(lo..hi);
            if r.newest {
                range.rev().take(r.limit).for_each(&mut push);
                frames.reverse();
            } else {
                range.take(r.limit).for_each(&mut push);
            }
        }
        let range = StoredRange { first_seq, frames };
        self.sink.read(r.core, r.token, range);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_rules_pick_the_first_matching_pattern() {
        let r = Retention::parse(&[
            "prices.>=count:100,age:1h".into(),
            "news.*=age:30m".into(),
            ">=count:5".into(),
        ])
        .unwrap();
        assert_eq!(
            r.rule("prices.EURUSD"),
            Rule {
                count: 100,
                age: Some(Duration::from_secs(3600))
            }
        );
        assert_eq!(r.rule("news.x").age, Some(Duration::from_secs(1800)));
        assert_eq!(r.rule("news.x").count, u64::MAX);
        assert_eq!(
            r.rule("other"),
            Rule {
                count: 5,
                age: None
            }
        );
        assert!(Retention::parse(&["prices.>".into()]).is_err());
        assert!(Retention::parse(&["a=count:0".into()]).is_err());
        assert!(Retention::parse(&["a=age:3w".into()]).is_err());
        assert!(Retention::parse(&["a..b=count:1".into()]).is_err());
    }

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
        assert_eq!(key_seq(&msg_key("x", 77)), 77);
    }
}
