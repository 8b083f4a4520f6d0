//! Test harness: starts real nodes on loopback port 0 and speaks raw wire bytes to them.
#![allow(dead_code)]

pub mod nats;
mod process;

#[allow(unused_imports)] // each test crate uses some of the harness
pub use process::{ringcast_start_up, spawn_node, spawn_ringcast, Spawned};

use ringcast::config::{Config, DriverChoice};
use ringcast::server::Server;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Upper bound for any single blocking read in tests: a hung server fails the test instead of
/// hanging CI. Not a performance assertion.
pub const IO_BOUND: Duration = Duration::from_secs(20);

/// A node with test defaults (2 cores, port 0), adjusted by `f`.
///
/// `RINGCAST_TEST_DURABILITY=batch|sync` runs every node that sets no durability, data dir or
/// NATS URL of its own on a fresh durable store (removed when the node drops), so the whole
/// suite can be run against the store path: `RINGCAST_TEST_DURABILITY=sync cargo nextest run`.
/// (Tests of memory-only behaviour say `durability = Some(None)`.)
///
/// `RINGCAST_TEST_NATS_URL=nats://...` likewise runs every such node in cluster mode, each a
/// cluster of one on its own stream of that (JetStream-enabled) server.
pub fn start(driver: DriverChoice, f: impl FnOnce(&mut Config)) -> Node {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: Some(2),
        driver,
        ..Config::default()
    };
    f(&mut cfg);
    let mut scratch = None;
    let own_choice = cfg.durability.is_some() || cfg.data_dir.is_some() || cfg.nats_url.is_some();
    if let (Ok(mode), false) = (std::env::var("RINGCAST_TEST_DURABILITY"), own_choice) {
        use clap::ValueEnum;
        let dir = TempDir::new("store");
        cfg.durability = Some(ValueEnum::from_str(&mode, true).expect("batch or sync"));
        cfg.data_dir = Some(dir.0.clone());
        scratch = Some(dir);
    } else if let (Ok(url), false) = (std::env::var("RINGCAST_TEST_NATS_URL"), own_choice) {
        let n = unique();
        cfg.nats_url = Some(url);
        cfg.nats_stream = format!("T{}N{n}", std::process::id());
        cfg.nats_prefix = format!("t{}n{n}", std::process::id());
    }
    let server = Server::start(cfg).expect("server starts");
    Node {
        addr: server.local_addr(),
        server: Some(server),
        scratch,
    }
}

/// A running node, stopped on drop.
/// Upper bound of any wait for the server to do something: a hung server fails the test
/// instead of hanging it. Never a performance assertion.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

/// Waits (bounded by [`EVENTUALLY`]) until `f` holds.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENTUALLY;
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Node {
    pub addr: SocketAddr,
    server: Option<Server>,
    /// A store directory made for this node (`RINGCAST_TEST_DURABILITY`), removed on drop
    /// (after the node: fields drop after `Drop::drop` has stopped it).
    scratch: Option<TempDir>,
}

/// A number no other call in this test process gets.
pub fn unique() -> usize {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A fresh directory path under the system temp dir (not created), removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "ringcast-test-{name}-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Node {
    pub fn ws(&self) -> Ws {
        Ws::connect(self.addr)
    }

    /// Values of a metric's series (one per core) whose labels contain `label`.
    pub fn metric_values(&self, name: &str, label: &str) -> Vec<u64> {
        let (_, _, body) = http(self.addr, "GET", "/metrics", &[], b"");
        let text = String::from_utf8(body).unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label)
            })
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .collect()
    }

    /// A node-wide series (no `core` label, e.g. `ringcast_store_*`, `ringcast_cluster_*`);
    /// `None` when the node does not export it.
    pub fn node_metric(&self, name: &str) -> Option<u64> {
        let (_, _, body) = http(self.addr, "GET", "/metrics", &[], b"");
        let text = String::from_utf8(body).unwrap();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?;
        Some(value.parse().unwrap())
    }

    /// A metric summed over cores.
    pub fn metric(&self, name: &str) -> u64 {
        self.metric_values(name, "").iter().sum()
    }

    /// Sum of a metric's series whose labels contain `label`.
    pub fn metric_labelled(&self, name: &str, label: &str) -> u64 {
        self.metric_values(name, label).iter().sum()
    }

    /// A metric per core.
    pub fn metric_per_core(&self, name: &str) -> Vec<u64> {
        self.metric_values(name, "")
    }

    pub fn publish(&self, subject: &str, data: &str) -> Value {
        let body = format!(r#"{{"subject":"{subject}","data":{data}}}"#);
        let (status, _, body) = http(self.addr, "POST", "/publish", &[], body.as_bytes());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Begins the node's drain (as SIGUSR2 does); the node stops by itself once drained.
    pub fn drain(&self) {
        self.server.as_ref().expect("running").drain();
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            s.join().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status of a body-less HTTP/1.1 request on a fresh connection.
pub fn http_status(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    http(addr, method, path, headers, b"").0
}

/// One HTTP/1.1 request on a fresh connection: (status, head, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_BOUND)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut s)
}

/// Reads one response (Content-Length framed) from `s`.
pub fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    read_response_buf(s, &mut Vec::new())
}

/// Reads one response from `s`, keeping bytes of later (pipelined) responses in `buf`.
pub fn read_response_buf(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = read_some(s, &mut chunk).expect("response body");
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return (status, head, body);
        }
        let n = read_some(s, &mut chunk).expect("response head");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `read` that retries when a signal interrupts it.
pub fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Appends what the socket has to `buf`; false at EOF (a reset counts as EOF).
fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 65536];
    match read_some(s, &mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
        Err(e) => panic!("read: {e}"),
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A frame from the server.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
}

/// A blocking WebSocket client speaking raw frames.
pub struct Ws {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub session: String,
    /// The reason text of the last close frame received.
    pub close_reason: String,
}

impl Ws {
    pub fn connect(addr: SocketAddr) -> Ws {
        let mut ws = Self::connect_raw(addr, |_| {});
        let hello = ws.recv_json();
        assert_eq!(hello["op"], "hello");
        assert_eq!(hello["version"], 1);
        ws.session = hello["session"].as_str().unwrap().to_string();
        ws
    }

    /// Upgrades at `target` (path and query) with extra headers; on refusal returns the HTTP
    /// status and body. Does not read `hello`.
    pub fn try_connect(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, (u16, String)> {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(IO_BOUND)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut req = format!("GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let (status, _, body) = {
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
                    if status == 101 {
                        buf.drain(..end + 4);
                        return Ok(Ws {
                            stream,
                            buf,
                            session: String::new(),
                            close_reason: String::new(),
                        });
                    }
                    break read_response_buf(&mut stream, &mut buf);
                }
                let n = read_some(&mut stream, &mut chunk).unwrap();
                assert!(n > 0, "closed during upgrade");
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        Err((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Heap bytes this client holds (its read buffer and session id).
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity() + self.session.capacity()
    }

    /// Reads the `hello` op and remembers the session.
    pub fn hello(mut self) -> Ws {
        let hello = self.recv_json();
        assert_eq!(hello["op"], "hello", "{hello}");
        self.session = hello["session"].as_str().unwrap().to_string();
        self
    }

    /// Connects with socket options set by `f` before the handshake; does not read `hello`.
    pub fn connect_raw(addr: SocketAddr, f: impl FnOnce(&socket2::Socket)) -> Ws {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        f(&sock);
        sock.connect(&addr.into()).unwrap();
        let mut stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(IO_BOUND)).unwrap();
        stream.set_nodelay(true).unwrap();
        let req = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        stream.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            let n = read_some(&mut stream, &mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        buf.drain(..end + 4);
        Ws {
            stream,
            buf,
            session: String::new(),
            close_reason: String::new(),
        }
    }

    pub fn send_frame(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        let f = ringcast::ws::client_frame(opcode, fin, payload, [0x11, 0x22, 0x33, 0x44]);
        self.stream.write_all(&f).unwrap();
    }

    pub fn send(&mut self, json: &str) {
        self.send_frame(0x1, true, json.as_bytes());
    }

    /// Next frame; `None` on EOF.
    pub fn recv_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let b0 = self.buf[0];
                let (len, hl) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    l => (l as usize, 2),
                };
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                if len != usize::MAX && self.buf.len() >= hl + len {
                    assert_eq!(b0 & 0x80, 0x80, "server frames are final");
                    let payload = self.buf[hl..hl + len].to_vec();
                    self.buf.drain(..hl + len);
                    return Some(match b0 & 0x0f {
                        1 => Frame::Text(String::from_utf8(payload).unwrap()),
                        2 => Frame::Binary(payload),
                        8 => {
                            let reason = payload.get(2..).unwrap_or_default();
                            self.close_reason = String::from_utf8_lossy(reason).into_owned();
                            Frame::Close(
                                (payload.len() >= 2)
                                    .then(|| u16::from_be_bytes([payload[0], payload[1]])),
                            )
                        }
                        9 => Frame::Ping(payload),
                        10 => Frame::Pong(payload),
                        op => panic!("unexpected opcode {op}"),
                    });
                }
            }
            if !read_more(&mut self.stream, &mut self.buf) {
                return None;
            }
        }
    }

    /// Next text frame as JSON (answers pings, fails on close).
    pub fn recv_json(&mut self) -> Value {
        loop {
            match self.recv_frame() {
                Some(Frame::Text(t)) => return serde_json::from_str(&t).unwrap(),
                Some(Frame::Ping(p)) => self.send_frame(0xA, true, &p),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends an op and returns the reply with the same id (messages before it are returned too).
    pub fn request(&mut self, json: &str) -> (Value, Vec<Value>) {
        let id = serde_json::from_str::<Value>(json).unwrap()["id"].clone();
        self.send(json);
        let mut before = Vec::new();
        loop {
            let v = self.recv_json();
            if v["id"] == id && v["op"] != "msg" {
                return (v, before);
            }
            before.push(v);
        }
    }

    pub fn sub(&mut self, id: u64, pattern: &str) {
        let (r, _) = self.request(&format!(
            r#"{{"op":"sub","id":{id},"subject":"{pattern}"}}"#
        ));
        assert_eq!(r["op"], "ok", "{r}");
    }

    /// Waits for the close frame, skipping anything before it; returns its code.
    pub fn recv_close(&mut self) -> Option<u16> {
        loop {
            match self.recv_frame() {
                Some(Frame::Close(code)) => return code,
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Reads `n` `msg` ops (skipping other ops).
    pub fn recv_msgs(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.recv_json();
            if v["op"] == "msg" {
                out.push(v);
            }
        }
        out
    }
}

/// Defines each listed test once per I/O driver: `auto` (io_uring here) and `legacy` (epoll).
#[macro_export]
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {
        mod io_uring {
            $( #[test] fn $name() { super::$name(ringcast::config::DriverChoice::Auto) } )*
        }
        mod epoll {
            $( #[test] fn $name() { super::$name(ringcast::config::DriverChoice::Legacy) } )*
        }
    };
}

/// A Server-Sent Events client over a raw socket.
pub struct Sse {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub status: u16,
    pub head: String,
}

/// One SSE event (or a comment, with `comment` set).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
    pub comment: bool,
}

impl Sse {
    pub fn connect(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(IO_BOUND)).unwrap();
        let mut req = format!("GET {target} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            let n = read_some(&mut stream, &mut chunk).unwrap();
            assert!(n > 0, "closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        buf.drain(..end + 4);
        Sse {
            stream,
            buf,
            status,
            head,
        }
    }

    /// Next event or comment; `None` at EOF.
    pub fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let block = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 2);
                let mut ev = Event {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                    comment: false,
                };
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        let _ = c;
                        ev.comment = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data = v.to_string();
                    } else if line.starts_with("retry: ") {
                        ev.event = "retry".into();
                    }
                }
                return Some(ev);
            }
            if !read_more(&mut self.stream, &mut self.buf) {
                return None;
            }
        }
    }

    /// Next event named `name`, skipping others and comments. Bounded by [`IO_BOUND`] in
    /// total: heartbeat comments must not keep a test waiting for an event that never comes.
    pub fn next_named(&mut self, name: &str) -> Event {
        let deadline = std::time::Instant::now() + IO_BOUND;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no `{name}` event within {IO_BOUND:?}"
            );
            let e = self.next().expect("stream ended");
            if !e.comment && e.event == name {
                return e;
            }
        }
    }
}

/// Runs the `ringcast` binary to completion with `args` (no `RINGCAST_*` variables but those
/// in `env`): its exit code, stdout and stderr.
pub fn run_ringcast(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RINGCAST_")) {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Mints a token with `ringcast token ARGS` (which must succeed).
pub fn mint(args: &[&str]) -> String {
    let args: Vec<&str> = std::iter::once("token")
        .chain(args.iter().copied())
        .collect();
    let (code, out, err) = run_ringcast(&args, &[]);
    assert_eq!(code, 0, "ringcast token failed: {err}");
    out.trim_end().to_string()
}

/// The path of a file in `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}
