//! The output side of the transport: the paced flusher and the per-connection writer.
//!
//! Output flows core -> [`FlushList`] -> flusher -> socket. One flush pass takes every listed
//! connection and writes what it has queued with one non-blocking `sendmsg` each, right in
//! the pass (no task, no io_uring round trip). Only a connection whose socket is full (or
//! that is closing) gets a writer task, which finishes through the ring and then hands its
//! write half back.
//!
//! Flushes are **paced** (`--write-pacing K`) once writes run behind (the oldest frame of a
//! pass was published more than [`BEHIND_US`] ago): after a pass that took `D` and whose
//! sends were small (below [`COALESCED_BYTES`] on average), the next pass waits `K * D`. A
//! core that keeps up is never paused. Behind, the core spends at most
//! `1 / (1 + K)` of its time in the kernel's send path and the rest reading publishes and
//! routing frames, while each connection's frames of the interval pile up and leave in one
//! write: frames per write grow with load instead of the core drowning in one `send` per
//! frame. The loopback send path costs microseconds per call whatever its size, so under a
//! price feed's load (many subjects, few frames per connection per pass) this is where the
//! throughput comes from; a wide broadcast already writes many frames per send and is not
//! paused.
//!
//! Runs on the core's thread; `Transport` owns the parked write halves.

use super::{Transport, WriteHalf};
use crate::core::{signal, Client, FlushList};
use crate::metrics::{self, CloseReason};
use crate::outbound::WriteBatch;
use monoio::io::AsyncWriteRent;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Passes whose sends averaged at least this many bytes are not followed by a pause: their
/// writes are already coalesced (a wide broadcast of one busy subject), and a pause would
/// only add latency and leave the core idle.
const COALESCED_BYTES: usize = 4096;

/// Pacing engages only once writes run behind: when the oldest frame of a pass was published
/// longer ago than this. Below it (a core keeping up, however wide its fan-out) every pass
/// follows the last at once, for latency; above it the core is past what it can write one
/// `send` per frame, and pausing is what lets it catch up. Measured with
/// `benches/probe-one.sh` (5,000 subscribers, 1,000 subjects): at 100,000 publishes/s, 10 ms
/// delivers all 500k/s with p99 0.19 s, where 20 ms and 30 ms fall behind (390k and 350k/s,
/// p99 4-6 s: pacing starts too late to catch up); the cost is at 20,000/s, where a hiccup
/// past 10 ms sometimes starts a pause that keeps itself going (p99 50-60 ms in some runs,
/// 5-11 ms in the others).
const BEHIND_US: u64 = 10_000;

/// Longest pause between two passes, whatever the last one took: bounds the latency pacing
/// adds after an exceptional pass (a snapshot to every connection at once).
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Pauses shorter than this are a yield (one turn of the other tasks), not a timer: the
/// runtime's timers have millisecond resolution.
const TIMER_MIN: Duration = Duration::from_millis(1);

impl Transport {
    /// Drains the core's flush list forever, one paced pass at a time.
    pub async fn run_flusher(self: Rc<Self>) {
        let list: Rc<FlushList> = self.core.flush_list().clone();
        let pacing = self.core.cfg().write_pacing.max(0.0);
        let mut next = Instant::now();
        loop {
            list.ready.wait().await;
            let now = Instant::now();
            if next > now {
                let pause = next - now;
                if pause < TIMER_MIN {
                    signal::yield_now().await;
                } else {
                    monoio::time::sleep(pause).await;
                }
            }
            let start = Instant::now();
            self.core.flush_outbox();
            let oldest = list.take_oldest();
            let behind = oldest != 0 && crate::os::now_us().saturating_sub(oldest) > BEHIND_US;
            let (mut sends, mut bytes) = (0, 0);
            for c in list.drain() {
                if let Some(n) = self.flush(c) {
                    sends += 1;
                    bytes += n;
                }
            }
            let took = start.elapsed();
            next = start + took;
            if behind && sends > 0 && bytes / sends < COALESCED_BYTES {
                next += took.mul_f64(pacing).min(MAX_PAUSE);
            }
        }
    }

    /// Writes what `c` has queued with one direct send, or starts its writer task when the
    /// socket does not take it all; the bytes of the send. A client whose writer runs is
    /// picked up by that writer.
    fn flush(self: &Rc<Self>, c: Rc<Client>) -> Option<usize> {
        let wh = self.parked.borrow_mut().remove(&c.key)?;
        if c.closing().is_some() || !c.has_output() {
            // Closing (its writer shuts the socket down when done) or nothing left to write.
            monoio::spawn(self.clone().write_loop(c, wh, None));
            return None;
        }
        let mut batch = self.take_batch();
        c.fill(&mut batch);
        let bytes = batch.remaining();
        // An error (socket full, or broken: the ring reports that, and the connection closes)
        // leaves the batch as it is, for the writer.
        if let Ok(n) = send_now(write_fd(&wh), &batch) {
            batch.advance(n);
        }
        let m = self.core.metrics();
        if batch.remaining() > 0 {
            // The writer counts the write and the rest of its bytes.
            metrics::add(&m.bytes_out, (bytes - batch.remaining()) as u64);
            monoio::spawn(self.clone().write_loop(c, wh, Some(batch)));
            return Some(bytes);
        }
        self.put_batch(batch);
        metrics::add(&m.writes, 1);
        metrics::add(&m.bytes_out, bytes as u64);
        if c.has_output() {
            // More than one write's worth of iovecs was queued.
            monoio::spawn(self.clone().write_loop(c, wh, None));
        } else {
            self.parked.borrow_mut().insert(c.key, wh);
        }
        Some(bytes)
    }

    /// Writes until the queue is empty, starting with `first` (what a full socket left over:
    /// through the ring); then parks the write half and ends (or, once closing, shuts the
    /// socket's write side down).
    async fn write_loop(
        self: Rc<Self>,
        c: Rc<Client>,
        mut wh: WriteHalf,
        first: Option<WriteBatch>,
    ) {
        let m = self.core.metrics();
        // A socket not found full yet gets a direct try first; once found full, this writer's
        // further writes go straight to the ring (the direct try would only fail again).
        let mut direct = first.is_none();
        let mut pending = first;
        loop {
            let mut batch = match pending.take() {
                Some(b) => b,
                None if !c.has_output() => {
                    if c.closing().is_some() {
                        let _ = wh.shutdown().await;
                    } else {
                        self.parked.borrow_mut().insert(c.key, wh);
                    }
                    return;
                }
                None => {
                    self.core.flush_outbox();
                    let mut b = self.take_batch();
                    c.fill(&mut b);
                    b
                }
            };
            let bytes = batch.remaining();
            if direct {
                if let Ok(n) = send_now(write_fd(&wh), &batch) {
                    batch.advance(n);
                }
                direct = batch.remaining() == 0;
            }
            while batch.remaining() > 0 {
                let (res, b) = wh.writev(batch).await;
                batch = b;
                match res {
                    Ok(n) if n > 0 => batch.advance(n),
                    _ => {
                        self.put_batch(batch);
                        let code = crate::ws::close::INTERNAL;
                        c.close(m, CloseReason::IoError, code, "write failed");
                        c.force_shutdown();
                        return;
                    }
                }
            }
            self.put_batch(batch);
            metrics::add(&m.writes, 1);
            metrics::add(&m.bytes_out, bytes as u64);
        }
    }
}

fn write_fd(wh: &WriteHalf) -> i32 {
    // SAFETY: the write half keeps the socket open for as long as the caller holds it.
    unsafe { &*wh.0.get() }.as_raw_fd()
}

/// One non-blocking `sendmsg` of what `batch` still holds; the bytes the kernel took.
fn send_now(fd: i32, batch: &WriteBatch) -> std::io::Result<usize> {
    use monoio::buf::IoVecBuf;
    if batch.remaining() == 0 {
        return Ok(0);
    }
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = batch.read_iovec_ptr() as *mut libc::iovec;
    msg.msg_iovlen = batch.read_iovec_len() as _;
    loop {
        // SAFETY: the iovecs point into memory `batch` keeps alive and unchanged (see
        // `WriteBatch`); the kernel only reads them.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
