//! `Fanout`: one core's subscriptions and the delivery of each sequenced frame to them.
//!
//! Owns the core's [`SubjectTrie`] of local subscriptions, the bounded [`MatchCache`] of
//! subject -> matching subscriptions in front of it, the delivery stamp that makes a message
//! reach each connection once however many of its patterns match, and the broadcast position
//! delivered from every owner core (what a session hand-over cuts at). Core-local: touched only
//! by the owning core's thread.
//!
//! Delivery queues one `Rc` reference to the shared frame per matching connection: never a
//! copy, never a re-encoding. Small frames are also appended, once per core, to their
//! subject's current [`Run`]; a connection that takes consecutive frames of it without
//! conflation then holds one growing stretch of the run instead of one item per frame, and a
//! WebSocket is written it with one iovec (the runs per subject are bounded like the match cache).

use super::client::Client;
use super::subscription::Subscription;
use crate::bus::MAX_CORES;
use crate::frame::Frame;
use crate::metrics::CoreMetrics;
use crate::outbound::{next_capacity, LocalFrame, Run, RunSlot, RUN_FRAME_MAX, RUN_MIN_BYTES};
use crate::trie::SubjectTrie;
use hashbrown::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// Subjects whose match result is cached per core. The cache is dropped whole when any local
/// subscription changes or when it reaches this size; 8192 covers a few thousand instruments.
pub const MATCH_CACHE_ENTRIES: usize = 8192;

/// Bytes the match cache of one core may hold (keys, entry slices, table slots; see
/// [`MatchCache::entry_bytes`]). An entry costs 16 B per matching subscription, so a subject
/// that 10,000 local subscriptions match costs 160 KB: by entries alone the cache could reach
/// 1.3 GB. 16 MiB holds a thousand subjects of a thousand matching subscriptions each; a
/// result larger than the whole budget is not cached at all.
pub const MATCH_CACHE_BYTES: usize = 16 << 20;

/// A trie entry: which connection, through which subscription.
#[derive(Clone)]
pub struct SubEntry {
    /// The subscribed connection.
    pub client: Rc<Client>,
    /// Its subscription.
    pub sub: Rc<Subscription>,
}

impl PartialEq for SubEntry {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.sub, &other.sub)
    }
}

/// Subject -> the subscriptions matching it, bounded by entries and by bytes: dropped whole
/// when full (a hot set of a few thousand instruments refills it at once; anything smarter
/// costs on every hit) and on every change of the subscriptions.
pub struct MatchCache {
    map: HashMap<Box<str>, Rc<[SubEntry]>>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
}

impl MatchCache {
    /// An empty cache of at most `capacity` subjects and `max_bytes` bytes.
    pub fn new(capacity: usize, max_bytes: usize) -> MatchCache {
        MatchCache {
            map: HashMap::new(),
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
        }
    }

    /// What caching `entries` under `subject` costs: the key, the slice with its `Rc`
    /// counts, and the table slot (key and value pointers).
    pub fn entry_bytes(subject: &str, entries: &[SubEntry]) -> usize {
        subject.len() + 2 * 8 + std::mem::size_of_val(entries) + 2 * 16
    }

    /// The cached matches of `subject`.
    #[inline]
    pub fn get(&self, subject: &str) -> Option<Rc<[SubEntry]>> {
        self.map.get(subject).cloned()
    }

    /// Caches the matches of `subject`, first dropping everything if the cache is full (by
    /// entries or bytes); a result larger than the whole byte budget is not cached.
    pub fn insert(&mut self, subject: &str, entries: Rc<[SubEntry]>) {
        let cost = Self::entry_bytes(subject, &entries);
        if cost > self.max_bytes {
            return;
        }
        if self.map.len() >= self.capacity || self.bytes + cost > self.max_bytes {
            self.invalidate();
        }
        self.bytes += cost;
        self.map.insert(subject.into(), entries);
    }

    /// Forgets every result (the subscriptions changed).
    pub fn invalidate(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// Subjects cached.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes cached (as [`MatchCache::entry_bytes`] counts them).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One core's subscriptions and delivery state.
pub struct Fanout {
    trie: SubjectTrie<SubEntry>,
    cache: MatchCache,
    /// Incremented per delivered frame; a connection stamped with it already got the frame.
    stamp: u64,
    /// Per owner core: the broadcast position (`Frame::xseq`) of the last frame delivered.
    delivered: [u64; MAX_CORES],
    /// Per subject, the run its next frames are appended to (bounded like the match cache:
    /// dropped whole when full; a dropped run lives on in the queues and logs that use it).
    runs: HashMap<Box<str>, OpenRun>,
}

/// A subject's current run and when it was started (µs), to size the next one.
struct OpenRun {
    run: Rc<Run>,
    born_us: u64,
}

/// A run filled within this long is a busy subject's: the next one is twice as big.
const RUN_FAST_US: u64 = 50_000;

impl Default for Fanout {
    fn default() -> Self {
        Fanout {
            trie: SubjectTrie::new(),
            cache: MatchCache::new(MATCH_CACHE_ENTRIES, MATCH_CACHE_BYTES),
            stamp: 0,
            delivered: [0; MAX_CORES],
            runs: HashMap::new(),
        }
    }
}

impl Fanout {
    /// Adds a subscription of `client` to `pattern` (the one place that does): in the client's
    /// table and in the trie.
    pub fn subscribe(
        &mut self,
        client: &Rc<Client>,
        pattern: &str,
        conflate: bool,
    ) -> Rc<Subscription> {
        let sub = Rc::new(Subscription::new(pattern, conflate));
        client.subs.borrow_mut().insert(pattern.into(), sub.clone());
        let entry = SubEntry {
            client: client.clone(),
            sub: sub.clone(),
        };
        self.trie.insert(pattern, entry);
        self.cache.invalidate();
        sub
    }

    /// Removes `sub` of `client` from the trie; true if it was there.
    pub fn remove(&mut self, client: &Rc<Client>, sub: &Rc<Subscription>) -> bool {
        sub.active.set(false);
        let entry = SubEntry {
            client: client.clone(),
            sub: sub.clone(),
        };
        let removed = self.trie.remove(&sub.pattern, &entry);
        if removed {
            self.cache.invalidate();
        }
        removed
    }

    /// Bytes the match cache holds (its gauge is published by the sweep).
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Subscriptions in the trie.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    /// True when this core has no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// The broadcast position delivered from each of the first `cores` owner cores.
    pub fn positions(&self, cores: usize) -> Vec<u64> {
        self.delivered[..cores].to_vec()
    }

    /// The subscriptions matching `subject` (cached).
    pub fn matches(&mut self, subject: &str) -> Rc<[SubEntry]> {
        if let Some(hit) = self.cache.get(subject) {
            return hit;
        }
        let mut v = Vec::new();
        self.trie.for_each_match(subject, |e| v.push(e.clone()));
        let v: Rc<[SubEntry]> = v.into();
        self.cache.insert(subject, v.clone());
        v
    }

    /// Queues `frame`, broadcast by core `from`, to every matching local connection, once per
    /// connection. Returns how many connections it was queued to.
    pub fn deliver(&mut self, frame: Arc<Frame>, from: usize, m: &CoreMetrics) -> u64 {
        self.delivered[from] = frame.xseq();
        let entries = self.matches(frame.subject());
        if entries.is_empty() {
            return 0;
        }
        self.stamp += 1;
        let stamp = self.stamp;
        let local: LocalFrame = Rc::new(frame);
        let at = (local.wire_len() <= RUN_FRAME_MAX).then(|| self.append_to_run(&local));
        let bit = 1u64 << from;
        let mut n = 0;
        for e in entries.iter() {
            if e.sub.pending.get() & bit != 0 || e.client.stamp.get() == stamp {
                continue;
            }
            e.client.stamp.set(stamp);
            if e.client.holds(local.subject()) {
                continue;
            }
            if e.client
                .push_msg(m, &local, e.sub.conflate.get(), at.as_ref())
            {
                n += 1;
            }
        }
        n
    }

    /// Appends `frame` to its subject's run (starting a new one when it is full); the run and
    /// the frame's index in it.
    fn append_to_run(&mut self, frame: &LocalFrame) -> RunSlot {
        let open = self.runs.get(frame.subject());
        if let Some(i) = open.and_then(|o| o.run.push(frame)) {
            return RunSlot::new(open.expect("pushed").run.clone(), i);
        }
        let now = crate::os::now_us();
        let cap = open.map_or(RUN_MIN_BYTES, |o| {
            let fast = now.saturating_sub(o.born_us) < RUN_FAST_US;
            next_capacity(o.run.capacity(), fast)
        });
        let run = Run::new(cap.max(frame.wire_len()));
        let i = run.push(frame).expect("a new run holds one frame");
        if self.runs.len() >= MATCH_CACHE_ENTRIES {
            self.runs.clear();
        }
        let open = OpenRun {
            run: run.clone(),
            born_us: now,
        };
        self.runs.insert(frame.subject().into(), open);
        RunSlot::new(run, i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::{ClientInit, ConnKind};
    use super::super::FlushList;
    use super::*;
    use crate::outbound::WriteBatch;

    fn client(key: u64) -> Rc<Client> {
        let init = ClientInit {
            key,
            session: format!("00{key:016x}").into(),
            kind: ConnKind::WebSocket,
            queue_limit: 1 << 20,
            session_retain: 0,
            now_ms: 0,
        };
        Client::new(init, Rc::new(FlushList::default()))
    }

    fn frame(subject: &str, seq: u64, xseq: u64) -> Arc<Frame> {
        Arc::new(Frame::encode(subject, seq, 0, b"1", None).with_xseq(xseq))
    }

    fn queued(c: &Client) -> usize {
        let mut b = WriteBatch::default();
        c.fill(&mut b);
        b.messages()
    }

    #[test]
    fn consecutive_frames_go_out_as_one_segment_of_a_shared_run_except_conflated() {
        let mut f = Fanout::default();
        let m = CoreMetrics::default();
        let (a, b, c) = (client(1), client(2), client(3));
        f.subscribe(&a, "t", false);
        f.subscribe(&b, "t", false);
        f.subscribe(&c, "t", true);
        for seq in 1..=5 {
            assert_eq!(f.deliver(frame("t", seq, seq), 0, &m), 3);
        }
        let (mut wa, mut wb, mut wc) = Default::default();
        a.fill(&mut wa);
        b.fill(&mut wb);
        c.fill(&mut wc);
        let segs = |w: &WriteBatch| (w.messages(), w.segments());
        assert_eq!(segs(&wa), (5, 1), "five frames, one iovec");
        assert_eq!(segs(&wb), (5, 1));
        assert_eq!(
            segs(&wc),
            (5, 5),
            "conflate keeps frames apart (it may replace them)"
        );
        assert_eq!(f.runs.len(), 1, "one run per subject");
    }

    #[test]
    fn a_frame_reaches_each_connection_once_whatever_matches() {
        let mut f = Fanout::default();
        let m = CoreMetrics::default();
        let (a, b) = (client(1), client(2));
        f.subscribe(&a, "prices.>", false);
        f.subscribe(&a, "prices.EURUSD", false);
        f.subscribe(&b, "prices.*", false);
        f.subscribe(&b, "news.>", false);
        assert_eq!(f.deliver(frame("prices.EURUSD", 1, 1), 0, &m), 2);
        assert_eq!((queued(&a), queued(&b)), (1, 1));
        assert_eq!(f.deliver(frame("news.x", 1, 2), 0, &m), 1);
        assert_eq!((queued(&a), queued(&b)), (0, 1));
        assert_eq!(f.deliver(frame("other", 1, 3), 0, &m), 0);
    }

    #[test]
    fn a_removed_subscription_gets_nothing_even_from_a_warm_cache() {
        let mut f = Fanout::default();
        let m = CoreMetrics::default();
        let a = client(1);
        let sub = f.subscribe(&a, "a.*", false);
        assert_eq!(f.deliver(frame("a.b", 1, 1), 0, &m), 1);
        assert!(f.remove(&a, &sub));
        assert!(!sub.active.get());
        assert!(!f.remove(&a, &sub), "removing twice finds nothing");
        assert_eq!(f.deliver(frame("a.b", 2, 2), 0, &m), 0);
        assert!(f.is_empty());
    }

    #[test]
    fn live_frames_of_a_core_whose_replay_is_pending_are_skipped() {
        let mut f = Fanout::default();
        let m = CoreMetrics::default();
        let a = client(1);
        let sub = f.subscribe(&a, "a", false);
        sub.await_cores(1 << 1);
        assert_eq!(
            f.deliver(frame("a", 1, 1), 1, &m),
            0,
            "core 1's replay covers it"
        );
        assert_eq!(f.deliver(frame("b", 1, 1), 0, &m), 0);
        sub.arrived(1);
        assert_eq!(f.deliver(frame("a", 2, 2), 1, &m), 1);
    }

    #[test]
    fn the_positions_delivered_from_each_owner_are_recorded() {
        let mut f = Fanout::default();
        let m = CoreMetrics::default();
        f.deliver(frame("x", 1, 7), 0, &m);
        f.deliver(frame("y", 1, 3), 1, &m);
        f.deliver(frame("x", 2, 8), 0, &m);
        assert_eq!(f.positions(2), vec![8, 3]);
    }

    #[test]
    fn the_match_cache_is_bounded_and_dropped_when_full() {
        let mut c = MatchCache::new(2, usize::MAX);
        let none: Rc<[SubEntry]> = Vec::new().into();
        c.insert("a", none.clone());
        c.insert("b", none.clone());
        assert_eq!(c.len(), 2);
        c.insert("c", none.clone());
        assert_eq!(c.len(), 1, "full: dropped whole, then the new subject");
        assert!(c.get("a").is_none() && c.get("c").is_some());
        c.invalidate();
        assert!(c.is_empty());
    }

    #[test]
    fn the_match_cache_is_bounded_by_bytes_too() {
        let (a, b) = (client(1), client(2));
        let sub = Rc::new(Subscription::new(">", false));
        let two: Rc<[SubEntry]> = vec![
            SubEntry {
                client: a,
                sub: sub.clone(),
            },
            SubEntry { client: b, sub },
        ]
        .into();
        let cost = MatchCache::entry_bytes("s.1", &two);
        let mut c = MatchCache::new(1_000, 2 * cost);
        c.insert("s.1", two.clone());
        c.insert("s.2", two.clone());
        assert_eq!((c.len(), c.bytes()), (2, 2 * cost));
        c.insert("s.3", two.clone());
        assert_eq!(
            (c.len(), c.bytes()),
            (1, cost),
            "over its bytes: dropped whole"
        );
        let mut tiny = MatchCache::new(1_000, cost - 1);
        tiny.insert("s.1", two);
        assert!(
            tiny.is_empty(),
            "a result over the whole budget is not cached"
        );
    }

    #[test]
    fn a_new_subscription_invalidates_cached_matches() {
        let mut f = Fanout::default();
        let m = CoreMetrics::default();
        let (a, b) = (client(1), client(2));
        f.subscribe(&a, "a", false);
        assert_eq!(f.matches("a").len(), 1);
        f.subscribe(&b, "a", false);
        assert_eq!(f.deliver(frame("a", 1, 1), 0, &m), 2);
    }
}
