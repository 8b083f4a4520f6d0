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

use crate::wire::{self, Endpoint, NatsOp, RcFrame, Target};
use hdrhistogram::Histogram;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
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

/// One publisher connection: its write half, and frames its reader thread wants sent (pongs).
struct PubConn {
    w: TcpStream,
    pongs: Arc<Mutex<Vec<u8>>>,
    /// Frames of the current write batch.
    batch: Vec<u8>,
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
}

impl PubConn {
    /// Connects, upgrades, waits for `hello` / `INFO`, and starts the reply reader thread.
    fn connect(
        ep: &Endpoint,
        src: Option<Ipv4Addr>,
        shared: Arc<PubShared>,
    ) -> std::io::Result<PubConn> {
        let sock = wire::start_connect(ep.addr, src, false)?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&wire::upgrade_request(ep))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head = loop {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("closed during upgrade"));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = wire::parse_upgrade_response(&buf, false) {
                break r.map_err(std::io::Error::other)?;
            }
        };
        buf.drain(..head);
        // Wait for the greeting frame.
        loop {
            if let Some((_, _, hl, len, _)) = wire::frame_header(&buf) {
                if buf.len() >= hl + len {
                    buf.drain(..hl + len);
                    break;
                }
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("closed before greeting"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        s.set_read_timeout(None)?;
        let mut w = s.try_clone()?;
        if ep.target == Target::Nats {
            let mut connect =
                br#"CONNECT {"verbose":false,"pedantic":false,"protocol":1}"#.to_vec();
            connect.extend_from_slice(b"\r\n");
            w.write_all(&ringcast::ws::client_frame(0x2, true, &connect, wire::MASK))?;
        }
        let pongs = Arc::new(Mutex::new(Vec::new()));
        {
            let (target, pongs) = (ep.target, pongs.clone());
            std::thread::Builder::new()
                .name("bench-pub-rx".into())
                .spawn(move || reader(s, buf, target, pongs, shared))?;
        }
        Ok(PubConn {
            w,
            pongs,
            batch: Vec::with_capacity(64 << 10),
        })
    }
}

impl Publisher {
    /// Publishes `rate` msgs/s for `duration_ns` from `start_ns` (mono), round-robin over this
    /// publisher's subjects. Returns messages written.
    pub fn run_step(&mut self, start_ns: u64, duration_ns: u64, rate: f64, size: usize) -> u64 {
        // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        let total = (duration_ns as f64 * rate / 1e9).round() as u64;
        let iv = 1e9 / rate;
        let mut k = 0u64;
        let mut body = Vec::with_capacity(64 << 10);
        let mut data = Vec::with_capacity(size + 64);
        let mut lag = crate::worker::new_hist();
        let mut intended = Vec::new();
        while k < total {
            let due = start_ns + (k as f64 * iv) as u64;
            let now = wire::mono_ns();
            if now < due {
                std::thread::sleep(Duration::from_nanos(due - now));
                continue;
            }
            let upto = total.min(((now - start_ns) as f64 / iv) as u64 + 1);
            body.clear();
            intended.clear();
            for c in &mut self.conns {
                c.batch.clear();
                c.batch.append(&mut c.pongs.lock().expect("lock"));
            }
            for j in k..upto {
                let t = start_ns + (j as f64 * iv) as u64;
                intended.push(t);
                let i = self.rr;
                self.rr = (self.rr + 1) % self.subjects.len();
                self.counters[i] += 1;
                let (idx, subject) = &self.subjects[i];
                let node = self.spread.node(i, self.counters[i] - 1, self.conns.len());
                data.clear();
                wire::payload(&mut data, t, self.counters[i], size);
                match self.target {
                    Target::Ringcast => {
                        body.clear();
                        body.extend_from_slice(br#"{"op":"pub","id":"#);
                        body.extend_from_slice(itoa::Buffer::new().format(*idx).as_bytes());
                        body.extend_from_slice(br#","subject":""#);
                        body.extend_from_slice(subject.as_bytes());
                        body.extend_from_slice(br#"","data":"#);
                        body.extend_from_slice(&data);
                        body.push(b'}');
                        self.conns[node].batch.extend(ringcast::ws::client_frame(
                            0x1,
                            true,
                            &body,
                            wire::MASK,
                        ));
                    }
                    Target::Nats => {
                        body.extend_from_slice(b"PUB ");
                        body.extend_from_slice(subject.as_bytes());
                        body.push(b' ');
                        body.extend_from_slice(itoa::Buffer::new().format(data.len()).as_bytes());
                        body.extend_from_slice(b"\r\n");
                        body.extend_from_slice(&data);
                        body.extend_from_slice(b"\r\n");
                    }
                }
                self.shared.sent[*idx as usize].fetch_add(1, Ordering::Relaxed);
            }
            if self.target == Target::Nats {
                // One connection (nats-server is never clustered here): one frame per batch.
                self.conns[0].batch.extend(ringcast::ws::client_frame(
                    0x2,
                    true,
                    &body,
                    wire::MASK,
                ));
            }
            for c in &mut self.conns {
                if c.batch.is_empty() {
                    continue;
                }
                if let Err(e) = c.w.write_all(&c.batch) {
                    self.shared.error(format!("publish write: {e}"));
                    return k;
                }
            }
            let after = wire::mono_ns();
            for t in &intended {
                lag.saturating_record(after.saturating_sub(*t).max(1));
            }
            k = upto;
        }
        let _ = self.shared.lag.lock().expect("lock").add(&lag);
        total
    }
}

fn reader(
    mut s: TcpStream,
    mut buf: Vec<u8>,
    target: Target,
    pongs: Arc<Mutex<Vec<u8>>>,
    shared: Arc<PubShared>,
) {
    let mut chunk = vec![0u8; 64 << 10];
    let mut nats = Vec::new();
    loop {
        let mut off = 0;
        while let Some((op, _, hl, len, _)) = wire::frame_header(&buf[off..]) {
            if buf.len() - off < hl + len {
                break;
            }
            let p = &buf[off + hl..off + hl + len];
            match op {
                0x0..=0x2 if target == Target::Ringcast => match wire::parse_rc(p) {
                    RcFrame::Ok(id) => {
                        if let Some(a) = shared.acked.get(id as usize) {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    RcFrame::Err(e) => shared.error(String::from_utf8_lossy(e)),
                    _ => {}
                },
                0x0..=0x2 => {
                    nats.extend_from_slice(p);
                    let mut n_off = 0;
                    while let Some((op, n)) = wire::parse_nats(&nats[n_off..]) {
                        match op {
                            NatsOp::Ping => {
                                pongs
                                    .lock()
                                    .expect("lock")
                                    .extend(ringcast::ws::client_frame(
                                        0x2,
                                        true,
                                        b"PONG\r\n",
                                        wire::MASK,
                                    ))
                            }
                            NatsOp::Err(e) => shared.error(String::from_utf8_lossy(e)),
                            _ => {}
                        }
                        n_off += n;
                    }
                    nats.drain(..n_off);
                }
                0x8 => {
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    shared.error(format!("publisher got close {code}"));
                    return;
                }
                0x9 => pongs
                    .lock()
                    .expect("lock")
                    .extend(ringcast::ws::client_frame(0xA, true, p, wire::MASK)),
                _ => {}
            }
            off += hl + len;
        }
        buf.drain(..off);
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Spread;

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
