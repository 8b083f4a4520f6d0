//! Publisher side: each publisher connection is paced by its own OS thread (sub-millisecond
//! `nanosleep` with 1 ns timer slack, unlike a 1 ms runtime timer wheel), open loop: message k
//! of a step is due at `start + k/rate` and carries that intended time in its payload, so a
//! late sender shows up as latency instead of silently lowering the offered load. A second
//! thread per connection reads the server's replies (ringcast `ok` acks with the subject index
//! as `id`, errors, pings).

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

pub struct Publisher {
    target: Target,
    w: TcpStream,
    subjects: Vec<(u32, String)>,
    counters: Vec<u64>,
    rr: usize,
    pongs: Arc<Mutex<Vec<u8>>>,
    shared: Arc<PubShared>,
}

impl Publisher {
    /// Connects, upgrades, waits for `hello` / `INFO`, and starts the reply reader thread.
    pub fn connect(
        ep: &Endpoint,
        src: Option<Ipv4Addr>,
        subjects: Vec<String>,
        shared: Arc<PubShared>,
    ) -> std::io::Result<Publisher> {
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
            let (target, pongs, shared) = (ep.target, pongs.clone(), shared.clone());
            std::thread::Builder::new()
                .name("bench-pub-rx".into())
                .spawn(move || reader(s, buf, target, pongs, shared))?;
        }
        let subjects: Vec<(u32, String)> = subjects
            .into_iter()
            .map(|s| (wire::subject_index(s.as_bytes()), s))
            .collect();
        let counters = vec![0; subjects.len()];
        Ok(Publisher {
            target: ep.target,
            w,
            subjects,
            counters,
            rr: 0,
            pongs,
            shared,
        })
    }

    /// Publishes `rate` msgs/s for `duration_ns` from `start_ns` (mono), round-robin over this
    /// publisher's subjects. Returns messages written.
    pub fn run_step(&mut self, start_ns: u64, duration_ns: u64, rate: f64, size: usize) -> u64 {
        // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        let total = (duration_ns as f64 * rate / 1e9).round() as u64;
        let iv = 1e9 / rate;
        let mut k = 0u64;
        let mut batch = Vec::with_capacity(64 << 10);
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
            batch.clear();
            body.clear();
            intended.clear();
            {
                let mut p = self.pongs.lock().expect("lock");
                batch.append(&mut p);
            }
            for j in k..upto {
                let t = start_ns + (j as f64 * iv) as u64;
                intended.push(t);
                let i = self.rr;
                self.rr = (self.rr + 1) % self.subjects.len();
                self.counters[i] += 1;
                let (idx, subject) = &self.subjects[i];
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
                        batch.extend(ringcast::ws::client_frame(0x1, true, &body, wire::MASK));
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
                batch.extend(ringcast::ws::client_frame(0x2, true, &body, wire::MASK));
            }
            if let Err(e) = self.w.write_all(&batch) {
                self.shared.error(format!("publish write: {e}"));
                return k;
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
