//! One publisher connection (blocking std socket): connect, upgrade, wait for the greeting
//! (`hello` / `INFO`), and a reader thread (`bench-pub-rx`) for what the server sends back:
//! ringcast `ok` acks (the subject index is the op `id`) and errors go to the shared
//! [`PubShared`] counters; pings are answered through `pongs`, which the pacer thread sends
//! with its next batch. The write half belongs to the pacer thread of the running step.

use super::PubShared;
use crate::wire::{self, nats, Endpoint, Frames, NatsOp, RcFrame, Target};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One publisher connection: its write half, and frames its reader thread wants sent (pongs).
pub(super) struct PubConn {
    pub w: TcpStream,
    pub pongs: Arc<Mutex<Vec<u8>>>,
    /// Frames of the current write batch.
    pub batch: Vec<u8>,
}

impl PubConn {
    /// Connects, upgrades, waits for `hello` / `INFO`, and starts the reply reader thread.
    pub fn connect(
        ep: &Endpoint,
        src: Option<Ipv4Addr>,
        shared: Arc<PubShared>,
    ) -> std::io::Result<PubConn> {
        let sock = wire::start_connect(ep.addr, src, false)?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let buf = upgrade(&mut s, ep)?;
        s.set_read_timeout(None)?;
        let mut w = s.try_clone()?;
        if ep.target == Target::Nats {
            w.write_all(&wire::frame(0x2, wire::NATS_CONNECT))?;
        }
        let pongs = Arc::new(Mutex::new(Vec::new()));
        let reader = Reader {
            s,
            buf,
            target: ep.target,
            pongs: pongs.clone(),
            shared,
            nats: Vec::new(),
        };
        std::thread::Builder::new()
            .name("bench-pub-rx".into())
            .spawn(move || reader.run())?;
        Ok(PubConn {
            w,
            pongs,
            batch: Vec::with_capacity(64 << 10),
        })
    }
}

/// Sends the upgrade request, reads the 101 and the greeting frame; returns what was read
/// past them.
fn upgrade(s: &mut TcpStream, ep: &Endpoint) -> std::io::Result<Vec<u8>> {
    s.write_all(&wire::upgrade_request(ep))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head = loop {
        read_into(s, &mut buf, &mut chunk, "closed during upgrade")?;
        if let Some(r) = wire::parse_upgrade_response(&buf, false) {
            break r.map_err(std::io::Error::other)?;
        }
    };
    buf.drain(..head);
    // Wait for the greeting frame.
    loop {
        let mut frames = Frames::new(&buf);
        if frames.next().is_some() {
            let n = frames.consumed();
            buf.drain(..n);
            return Ok(buf);
        }
        read_into(s, &mut buf, &mut chunk, "closed before greeting")?;
    }
}

/// One blocking read appended to `buf`; end of stream is an error saying `eof`.
fn read_into(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    eof: &str,
) -> std::io::Result<()> {
    let n = s.read(chunk)?;
    if n == 0 {
        return Err(std::io::Error::other(eof.to_string()));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// The read half of a publisher connection, on its own thread.
struct Reader {
    s: TcpStream,
    /// Bytes read and not yet taken as frames.
    buf: Vec<u8>,
    target: Target,
    pongs: Arc<Mutex<Vec<u8>>>,
    shared: Arc<PubShared>,
    /// NATS: the protocol byte stream reassembled from WebSocket payloads.
    nats: Vec<u8>,
}

impl Reader {
    /// Until the server closes the connection or it fails.
    fn run(mut self) {
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let buf = std::mem::take(&mut self.buf);
            let mut frames = Frames::new(&buf);
            let closed = frames.by_ref().any(|f| self.on_frame(f.op, f.payload));
            let used = frames.consumed();
            self.buf = buf;
            if closed {
                return;
            }
            self.buf.drain(..used);
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// One server frame; true when it closed the connection.
    fn on_frame(&mut self, op: u8, p: &[u8]) -> bool {
        match op {
            0x0..=0x2 if self.target == Target::Ringcast => self.rc_text(p),
            0x0..=0x2 => {
                self.nats.extend_from_slice(p);
                let (pongs, shared) = (&self.pongs, &self.shared);
                nats::drain_ops(&mut self.nats, |op| match op {
                    NatsOp::Ping => pongs
                        .lock()
                        .expect("lock")
                        .extend(wire::frame(0x2, b"PONG\r\n")),
                    NatsOp::Err(e) => shared.error(String::from_utf8_lossy(e)),
                    _ => {}
                });
            }
            0x8 => {
                let code = wire::close_code(p);
                self.shared.error(format!("publisher got close {code}"));
                return true;
            }
            0x9 => self.pongs.lock().expect("lock").extend(wire::frame(0xA, p)),
            _ => {}
        }
        false
    }

    /// A ringcast text frame: an `ok` ack counts for its subject, an `err` as an error.
    fn rc_text(&self, p: &[u8]) {
        match wire::parse_rc(p) {
            RcFrame::Ok(id) => {
                if let Some(a) = self.shared.acked.get(id as usize) {
                    a.fetch_add(1, Ordering::Relaxed);
                }
            }
            RcFrame::Err(e) => self.shared.error(String::from_utf8_lossy(e)),
            _ => {}
        }
    }
}
