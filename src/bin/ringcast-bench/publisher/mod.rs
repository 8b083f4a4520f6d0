//! Publisher side: each publisher connection is paced by its own OS thread (sub-millisecond
//! `nanosleep` with 1 ns timer slack, unlike a 1 ms runtime timer wheel), open loop: message k
//! of a step is due at `start + k/rate` and carries that intended time in its payload, so a
//! late sender shows up as latency instead of silently lowering the offered load. A second
//! thread per connection reads the server's replies (ringcast `ok` acks with the subject index
//! as `id`, errors, pings).
//!
//! Against several cluster nodes a publisher holds one connection per node and picks the node
//! of each message by [`Spread`]: round-robin per subject (every subject is published through
//! every node in turn, so the nodes race on its seq) or sticky (a subject always goes through
//! the same node).
//!
//! The main thread connects the publishers and, for each step, lends each one to a scoped
//! pacer thread ([`Publisher::run_step`]); [`PubShared`] is what they and the reader threads
//! ([`conn`]) count into and the main thread reads between and after steps.

mod conn;

use crate::wire::{self, nats, rc, Endpoint, Target};
use conn::PubConn;
use hdrhistogram::Histogram;
use std::io::Write;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters shared by every publisher (indexed by subject index).
pub struct PubShared {
    pub sent: Vec<AtomicU64>,
    pub acked: Vec<AtomicU64>,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    /// Send lateness (actual write time - intended time), ns.
    pub lag: Mutex<Histogram<u64>>,
}

impl PubShared {
    pub fn new(n_subjects: usize) -> Arc<PubShared> {
        Arc::new(PubShared {
            sent: (0..n_subjects).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..n_subjects).map(|_| AtomicU64::new(0)).collect(),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            lag: Mutex::new(crate::worker::new_hist()),
        })
    }

    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().expect("lock");
        if f.is_none() {
            *f = Some(e.to_string());
        }
    }
}

/// How a publisher with connections to several nodes picks the node of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Spread {
    /// The k-th publish of the publisher's i-th subject goes to node (i + k) % nodes: every
    /// subject is published through every node in turn (cross-node sequencing on each subject).
    RoundRobin,
    /// The publisher's i-th subject always goes to node i % nodes (no cross-node contention).
    Sticky,
}

impl Spread {
    /// Node (connection index) of the `k`-th (0-based) publish of local subject `i`.
    pub fn node(self, i: usize, k: u64, nodes: usize) -> usize {
        let nodes = nodes.max(1) as u64;
        let n = match self {
            Spread::RoundRobin => (i as u64).wrapping_add(k) % nodes,
            Spread::Sticky => i as u64 % nodes,
        };
        n as usize
    }
}

pub struct Publisher {
    target: Target,
    /// One per node, in the order of the endpoints given to [`Publisher::connect`].
    conns: Vec<PubConn>,
    spread: Spread,
    subjects: Vec<(u32, String)>,
    counters: Vec<u64>,
    rr: usize,
    shared: Arc<PubShared>,
}

/// Open-loop schedule of one step: message `k` is due at `start_ns + k * iv`.
struct Pace {
    start_ns: u64,
    /// Interval between messages, ns.
    iv: f64,
    /// Messages in the step.
    total: u64,
}

impl Pace {
    fn new(start_ns: u64, duration_ns: u64, rate: f64) -> Pace {
        Pace {
            start_ns,
            iv: 1e9 / rate,
            total: (duration_ns as f64 * rate / 1e9).round() as u64,
        }
    }

    /// Intended send time of message `k`, mono ns.
    fn due(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * self.iv) as u64
    }

    /// One past the last message due at `now` (not before the start), at most `total`.
    fn due_by(&self, now: u64) -> u64 {
        self.total
            .min(((now - self.start_ns) as f64 / self.iv) as u64 + 1)
    }
}

/// Buffers one step reuses for every batch.
struct Scratch {
    /// ringcast: the op of one message; NATS: the `PUB`s of the whole batch.
    body: Vec<u8>,
    /// The payload of one message.
    data: Vec<u8>,
    /// Intended send times of the batch's messages.
    intended: Vec<u64>,
}

impl Publisher {
    /// Connects to every endpoint in `eps` (one connection each) and publishes `subjects`
    /// over them as `spread` says.
    pub fn connect(
        eps: &[Endpoint],
        spread: Spread,
        src: Option<Ipv4Addr>,
        subjects: Vec<String>,
        shared: Arc<PubShared>,
    ) -> std::io::Result<Publisher> {
        let conns = eps
            .iter()
            .map(|ep| PubConn::connect(ep, src, shared.clone()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let subjects: Vec<(u32, String)> = subjects
            .into_iter()
            .map(|s| (wire::subject_index(s.as_bytes()), s))
            .collect();
        let counters = vec![0; subjects.len()];
        Ok(Publisher {
            target: eps.first().map_or(Target::Ringcast, |e| e.target),
            conns,
            spread,
            subjects,
            counters,
            rr: 0,
            shared,
        })
    }

    /// Publishes `rate` msgs/s for `duration_ns` from `start_ns` (mono), round-robin over this
    /// publisher's subjects. Whatever is due when the thread wakes goes out as one batch per
    /// connection. Returns messages written.
    pub fn run_step(&mut self, start_ns: u64, duration_ns: u64, rate: f64, size: usize) -> u64 {
        // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        let pace = Pace::new(start_ns, duration_ns, rate);
        let mut s = Scratch {
            body: Vec::with_capacity(64 << 10),
            data: Vec::with_capacity(size + 64),
            intended: Vec::new(),
        };
        let mut lag = crate::worker::new_hist();
        let mut k = 0u64;
        while k < pace.total {
            let due = pace.due(k);
            let now = wire::mono_ns();
            if now < due {
                std::thread::sleep(Duration::from_nanos(due - now));
                continue;
            }
            let upto = pace.due_by(now);
            self.encode_batch(&pace, k..upto, size, &mut s);
            if let Err(e) = self.write_batches() {
                self.shared.error(format!("publish write: {e}"));
                return k;
            }
            let after = wire::mono_ns();
            for t in &s.intended {
                lag.saturating_record(after.saturating_sub(*t).max(1));
            }
            k = upto;
        }
        let _ = self.shared.lag.lock().expect("lock").add(&lag);
        pace.total
    }

    /// Fills every connection's batch with its pending pongs and messages `range` of the step.
    fn encode_batch(&mut self, pace: &Pace, range: Range<u64>, size: usize, s: &mut Scratch) {
        s.body.clear();
        s.intended.clear();
        for c in &mut self.conns {
            c.batch.clear();
            c.batch.append(&mut c.pongs.lock().expect("lock"));
        }
        for j in range {
            let t = pace.due(j);
            s.intended.push(t);
            self.encode_message(t, size, s);
        }
        if self.target == Target::Nats {
            // One connection (nats-server is never clustered here): one frame per batch.
            self.conns[0].batch.extend(wire::frame(0x2, &s.body));
        }
    }

    /// The next message (next subject in turn, intended time `t`): a frame in its node's batch
    /// (ringcast), or a `PUB` appended to the batch body (NATS).
    fn encode_message(&mut self, t: u64, size: usize, s: &mut Scratch) {
        let i = self.rr;
        self.rr = (self.rr + 1) % self.subjects.len();
        self.counters[i] += 1;
        let (idx, subject) = &self.subjects[i];
        let node = self.spread.node(i, self.counters[i] - 1, self.conns.len());
        s.data.clear();
        wire::payload(&mut s.data, t, self.counters[i], size);
        match self.target {
            Target::Ringcast => {
                s.body.clear();
                rc::encode_pub(&mut s.body, *idx, subject, &s.data);
                self.conns[node].batch.extend(wire::frame(0x1, &s.body));
            }
            Target::Nats => nats::encode_pub(&mut s.body, subject, &s.data),
        }
        self.shared.sent[*idx as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Writes each connection's batch; stops at the first failed write.
    fn write_batches(&mut self) -> std::io::Result<()> {
        for c in &mut self.conns {
            if !c.batch.is_empty() {
                c.w.write_all(&c.batch)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Pace, Spread};

    #[test]
    fn a_step_is_due_at_a_constant_interval_from_its_start() {
        let p = Pace::new(1_000, 2_000_000_000, 1000.0);
        assert_eq!(p.total, 2000);
        assert_eq!(
            (p.due(0), p.due(1), p.due(1999)),
            (1_000, 1_001_000, 1_999_001_000)
        );
        // Everything due by `now` goes in one batch, never more than the step holds.
        assert_eq!(p.due_by(1_000), 1);
        assert_eq!(p.due_by(3_501_000), 4);
        assert_eq!(p.due_by(u64::MAX / 2), 2000);
    }

    #[test]
    fn round_robin_sends_each_subject_through_every_node_in_turn() {
        for i in 0..5 {
            let nodes: Vec<usize> = (0..6).map(|k| Spread::RoundRobin.node(i, k, 3)).collect();
            for w in nodes.windows(3) {
                let mut seen = w.to_vec();
                seen.sort_unstable();
                assert_eq!(seen, [0, 1, 2], "subject {i}: {nodes:?}");
            }
        }
    }

    #[test]
    fn round_robin_starts_neighbouring_subjects_on_different_nodes() {
        // A publisher cycles its subjects: message j is subject j % n_subjects. With an even
        // number of subjects and 2 nodes, a plain "message j -> node j % 2" would pin every
        // subject to one node; the per-subject counter avoids that.
        let first: Vec<usize> = (0..4).map(|i| Spread::RoundRobin.node(i, 0, 2)).collect();
        assert_eq!(first, [0, 1, 0, 1]);
        let second: Vec<usize> = (0..4).map(|i| Spread::RoundRobin.node(i, 1, 2)).collect();
        assert_eq!(second, [1, 0, 1, 0]);
    }

    #[test]
    fn sticky_keeps_a_subject_on_one_node() {
        for i in 0..10 {
            let n = Spread::Sticky.node(i, 0, 3);
            assert!((1..50).all(|k| Spread::Sticky.node(i, k, 3) == n));
            assert_eq!(n, i % 3);
        }
    }

    #[test]
    fn a_single_node_gets_everything() {
        for spread in [Spread::RoundRobin, Spread::Sticky] {
            assert!((0..20).all(|k| spread.node(k as usize, k, 1) == 0));
            assert_eq!(spread.node(3, 5, 0), 0);
        }
    }
}
