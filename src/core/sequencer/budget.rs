//! The owner core's budgets for the subjects it owns: how many subjects (`--max-subjects`),
//! how many bytes their history rings hold (`--max-history-bytes`), and when an idle subject's
//! history expires (`--subject-ttl`). Methods of [`Sequencer`], on the owner core's thread.
//!
//! The [`Ledger`] counts what the rings hold and remembers, in the order they were retained,
//! which message of which subject each retained frame is: over the byte budget, the subject
//! just published gives up its oldest messages first if it holds more than its fair share,
//! else the oldest message this core retains goes. Either way a ring only loses its oldest
//! messages, so it stays contiguous and a `since` past what was evicted gets its `gap` (or,
//! with a store, is read from it).
//!
//! An expired subject goes dormant: its ring (all of it in memory-only mode; all but the
//! latest message when a store or the cluster's stream holds the rest) and its dedup window
//! are freed, its seq and ts stay, so a later publish continues its seq: no seq is reused.

use super::Sequencer;
use crate::owner::SubjectState;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Entries of the retention order beyond twice the retained messages before it is compacted
/// (stale entries are those of messages a ring already dropped by its count): the compaction
/// is a pass over the order, so it runs at most once per this many retained messages.
const ORDER_SLACK: usize = 4096;

/// Shortest and longest time between two scans for idle subjects: a scan visits every owned
/// subject, so it runs at most once per second, and a subject expires at most a minute (or an
/// eighth of its TTL) late.
const SCAN_EVERY_MIN: Duration = Duration::from_secs(1);
const SCAN_EVERY_MAX: Duration = Duration::from_secs(60);

/// This core's share of the node's subject budgets.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// Bytes the history rings may hold (`--max-history-bytes` / cores).
    pub max_history_bytes: usize,
    /// Subjects, dormant ones included (`--max-subjects` / cores).
    pub max_subjects: usize,
    /// Idle time after which a subject's history expires (`--subject-ttl`; `None`: never).
    pub subject_ttl: Option<Duration>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            max_history_bytes: usize::MAX,
            max_subjects: usize::MAX,
            subject_ttl: None,
        }
    }
}

/// What the subjects of one core hold, for its gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectGauges {
    /// Subjects owned, dormant ones included.
    pub subjects: u64,
    /// Subjects whose history expired.
    pub dormant: u64,
    /// Bytes of the history rings.
    pub history_bytes: u64,
    /// Messages evicted for the byte budget so far.
    pub evicted: u64,
    /// Subjects that expired so far.
    pub expired: u64,
}

/// The accounting of the rings against the budgets.
#[derive(Debug)]
pub(super) struct Ledger {
    pub(super) budgets: Budgets,
    /// Bytes the rings hold.
    bytes: usize,
    /// Messages the rings hold.
    retained: usize,
    /// (subject, seq) of retained messages, oldest first; may hold stale entries.
    order: VecDeque<(Rc<str>, u64)>,
    evicted: u64,
    expired: u64,
    dormant: u64,
    next_scan: Instant,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            budgets: Budgets::default(),
            bytes: 0,
            retained: 0,
            order: VecDeque::new(),
            evicted: 0,
            expired: 0,
            dormant: 0,
            next_scan: Instant::now(),
        }
    }
}

/// What a subject held before a change, to account the difference.
#[derive(Clone, Copy)]
pub(super) struct Held(usize, usize);

impl Held {
    pub(super) fn of(s: &SubjectState) -> Held {
        Held(s.bytes(), s.retained())
    }
}

impl Ledger {
    /// Accounts the change of one subject from `before` to `now`.
    pub(super) fn account(&mut self, before: Held, now: &SubjectState) {
        self.bytes = self.bytes + now.bytes() - before.0;
        self.retained = self.retained + now.retained() - before.1;
    }

    /// A dormant subject was published to again.
    pub(super) fn woke(&mut self, s: &mut SubjectState) {
        if s.is_dormant() {
            s.wake();
            self.dormant -= 1;
        }
    }
}

impl<T> Sequencer<T> {
    /// Applies this core's share of the node's budgets (the history restored from a store is
    /// trimmed to fit at once).
    pub fn with_budgets(mut self, budgets: Budgets) -> Self {
        self.ledger.budgets = budgets;
        let subjects: Vec<Rc<str>> = self.owned.keys().cloned().collect();
        for s in subjects {
            self.enforce(&s);
        }
        self
    }

    /// Starts the ledger with what the store restored (start-up; the order between subjects
    /// is arbitrary).
    pub(super) fn account_restored(&mut self) {
        for (subject, s) in &self.owned {
            self.ledger.bytes += s.bytes();
            self.ledger.retained += s.retained();
            let first = s.first_retained();
            let seqs = first..first + s.retained() as u64;
            self.ledger
                .order
                .extend(seqs.map(|seq| (subject.clone(), seq)));
        }
    }

    /// True when a publish to `subject` may go ahead: it exists, or there is room for one
    /// more subject.
    pub(super) fn has_room_for(&self, subject: &str) -> bool {
        self.owned.len() < self.ledger.budgets.max_subjects || self.owned.contains_key(subject)
    }

    /// Adds a frame to its subject's ring as it becomes visible, then keeps the rings within
    /// their byte budget.
    pub(super) fn retain(&mut self, frame: &std::sync::Arc<crate::frame::Frame>) {
        let Some((key, state)) = self.owned.get_key_value_mut(frame.subject()) else {
            return;
        };
        let before = Held::of(state);
        state.retain(frame.clone(), &self.limits);
        self.ledger.account(before, state);
        if state.retained() == 0 {
            return;
        }
        let key = key.clone();
        self.ledger.order.push_back((key.clone(), frame.seq()));
        self.enforce(&key);
    }

    /// Evicts the oldest messages until the rings fit their byte budget: first of `subject`
    /// (keeping its latest) while it holds more than its fair share, then the oldest retained.
    fn enforce(&mut self, subject: &Rc<str>) {
        let max = self.ledger.budgets.max_history_bytes;
        while self.ledger.bytes > max {
            let share = max / self.owned.len().max(1);
            let own = self
                .owned
                .get_mut(&**subject)
                .filter(|s| s.bytes() > share && s.retained() > 1);
            let freed = match own {
                Some(s) => s.pop_oldest(),
                None => match self.pop_oldest_retained() {
                    Some(freed) => freed,
                    None => break,
                },
            };
            self.ledger.bytes -= freed;
            self.ledger.retained -= 1;
            self.ledger.evicted += 1;
        }
        self.compact_order();
    }

    /// Drops the oldest message this core retains; its bytes, or `None` when none is.
    fn pop_oldest_retained(&mut self) -> Option<usize> {
        while let Some((key, seq)) = self.ledger.order.pop_front() {
            // Stale (the ring dropped it already) unless it is still its ring's oldest.
            let live = |(k, s): &(&Rc<str>, &mut SubjectState)| {
                Rc::ptr_eq(k, &key) && s.retained() > 0 && s.first_retained() == seq
            };
            if let Some((_, s)) = self.owned.get_key_value_mut(&*key).filter(live) {
                return Some(s.pop_oldest());
            }
        }
        None
    }

    /// Drops the stale entries of the retention order once they are many.
    fn compact_order(&mut self) {
        if self.ledger.order.len() <= 2 * self.ledger.retained + ORDER_SLACK {
            return;
        }
        let owned = &self.owned;
        self.ledger.order.retain(|(k, seq)| {
            owned
                .get(&**k)
                .is_some_and(|s| s.retained() > 0 && *seq >= s.first_retained())
        });
    }

    /// Expires the history of subjects idle for `--subject-ttl` (never sooner than the dedup
    /// window, so a retry inside it is still recognised). Scans at most once per
    /// [`SCAN_EVERY_MIN`]; cheap to call every sweep.
    pub fn expire_idle(&mut self, now: Instant) {
        let Some(ttl) = self.ledger.budgets.subject_ttl else {
            return;
        };
        if now < self.ledger.next_scan {
            return;
        }
        self.ledger.next_scan = now + (ttl / 8).clamp(SCAN_EVERY_MIN, SCAN_EVERY_MAX);
        let Some(cutoff) = now.checked_sub(ttl.max(self.limits.dedup_ttl)) else {
            return;
        };
        let keep_latest = self.backed;
        for s in self.owned.values_mut() {
            if s.idle_since(cutoff) {
                let before = Held::of(s);
                s.make_dormant(keep_latest);
                self.ledger.account(before, s);
                self.ledger.dormant += 1;
                self.ledger.expired += 1;
            }
        }
        self.compact_order();
    }

    /// What this core's subjects hold now.
    pub fn gauges(&self) -> SubjectGauges {
        let l = &self.ledger;
        SubjectGauges {
            subjects: self.owned.len() as u64,
            dormant: l.dormant,
            history_bytes: l.bytes as u64,
            evicted: l.evicted,
            expired: l.expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{limits, publish};
    use super::*;
    use crate::metrics::CoreMetrics;
    use crate::proto::PubError;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    fn budgeted(b: Budgets) -> Sequencer<&'static str> {
        Sequencer::new(0, limits(100), Arc::new(MemoryStore), false, Vec::new()).with_budgets(b)
    }

    /// The bytes of a frame of a one-digit seq on a subject of `len` bytes (what these tests
    /// publish: equal sizes).
    fn frame_bytes(len: usize) -> usize {
        let subject = "s".repeat(len);
        let ts = crate::os::now_us();
        crate::frame::Frame::encode(&subject, 1, ts, b"1", None).heap_bytes()
    }

    fn seqs(s: &Sequencer<&'static str>, subject: &str) -> Vec<u64> {
        let r = s.replay(subject, &super::super::ReplayKind::Since(0));
        r.frames.iter().map(|f| f.seq()).collect()
    }

    #[test]
    fn the_rings_stay_within_their_bytes_losing_their_oldest_messages() {
        let max = 3 * frame_bytes(1) + 10;
        let mut s = budgeted(Budgets {
            max_history_bytes: max,
            ..Budgets::default()
        });
        for _ in 0..9 {
            publish(&mut s, "a", None);
        }
        assert_eq!(seqs(&s, "a"), vec![7, 8, 9]);
        let r = s.replay("a", &super::super::ReplayKind::Since(2));
        assert_eq!(r.gap, Some((3, 6)), "evicted history is announced");
        let g = s.gauges();
        assert!(g.history_bytes as usize <= max);
        assert_eq!(g.evicted, 6);
    }

    #[test]
    fn a_subject_over_its_share_gives_up_its_own_history_first() {
        let mut s = budgeted(Budgets {
            max_history_bytes: 6 * frame_bytes(5),
            ..Budgets::default()
        });
        publish(&mut s, "quiet", None);
        publish(&mut s, "quiet", None);
        for _ in 0..9 {
            publish(&mut s, "hot00", None);
        }
        assert_eq!(
            seqs(&s, "quiet"),
            vec![1, 2],
            "the quiet subject keeps its history"
        );
        assert_eq!(seqs(&s, "hot00"), vec![6, 7, 8, 9]);
        // Subjects each within their share: the oldest retained message goes.
        for subject in ["bbbbb", "ccccc", "ddddd"] {
            publish(&mut s, subject, None);
        }
        assert_eq!(seqs(&s, "quiet"), Vec::<u64>::new(), "oldest first");
        assert_eq!(seqs(&s, "hot00"), vec![7, 8, 9]);
        assert_eq!(s.gauges().history_bytes as usize, 6 * frame_bytes(5));
    }

    #[test]
    fn an_idle_subject_goes_dormant_and_its_seq_continues() {
        let mut s = budgeted(Budgets {
            subject_ttl: Some(Duration::from_secs(1)),
            ..Budgets::default()
        });
        publish(&mut s, "a", Some("id-1"));
        publish(&mut s, "a", None);
        s.expire_idle(Instant::now());
        assert_eq!(s.gauges().dormant, 0, "not idle yet");
        // Never sooner than the dedup window (60 s in these limits).
        s.ledger.next_scan = Instant::now();
        s.expire_idle(Instant::now() + Duration::from_secs(30));
        assert_eq!(s.gauges().dormant, 0);
        s.ledger.next_scan = Instant::now();
        s.expire_idle(Instant::now() + Duration::from_secs(61));
        let g = s.gauges();
        assert_eq!(
            (g.subjects, g.dormant, g.expired, g.history_bytes),
            (1, 1, 1, 0)
        );
        assert!(seqs(&s, "a").is_empty());
        let r = publish(&mut s, "a", Some("id-1"));
        let ack = r.result.unwrap();
        assert_eq!(
            (ack.seq, ack.duplicate),
            (3, false),
            "seq continues; ids expired"
        );
        assert_eq!(s.gauges().dormant, 0);
    }

    #[test]
    fn a_publish_that_would_create_a_subject_past_the_limit_is_refused() {
        let mut s = budgeted(Budgets {
            max_subjects: 2,
            ..Budgets::default()
        });
        publish(&mut s, "a", None);
        publish(&mut s, "b", None);
        let m = CoreMetrics::default();
        let r = s.publish(&m, "c", b"1", None, None, "me").unwrap();
        assert_eq!(r.result.unwrap_err(), PubError::TooManySubjects);
        assert_eq!(m.refusals(crate::metrics::Budget::Subjects), 1);
        assert_eq!(publish(&mut s, "a", None).result.unwrap().seq, 2);
    }
}
