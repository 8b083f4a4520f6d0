//! The browser client (`/ringcast.js`) and demo page (`/`) in a real browser: headless Chromium
//! loads the page through a TCP proxy of the test's own, a publisher streams to a few subjects,
//! the proxy cuts every connection mid-stream (a second time once the page is back, if the
//! stream still runs), the page reconnects and resumes (or, when the node keeps no sessions,
//! subscribes again and catches up); then the page's record
//! (`window.__ringcast`, read over the DevTools protocol) must hold every subject's seqs exactly
//! 1..=N, once each, in order. Over WebSocket and over SSE. And a page given a malformed
//! pattern says so on its badge instead of showing `connecting` for ever.
//!
//! Needs Debian's `chromium` at /usr/bin/chromium (`.ci/run` installs it). All waits are
//! bounded polls; nothing here asserts on timing.

mod common;

use common::start;
use ringcast::config::DriverChoice;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Subjects the publisher writes to, round-robin; the page subscribes to `feed.>` (or one).
const SUBJECTS: [&str; 4] = ["feed.a", "feed.b", "feed.c", "feed.d"];

/// Messages per subject (within the node's default history of 1024, so a page whose session
/// expired can still catch up on everything).
const PER_SUBJECT: u64 = 250;

/// Pause between two publishes: a steady stream of a few seconds.
const PACE: Duration = Duration::from_millis(3);

/// Bound of every wait (browser start, page state, reconnects).
const DEADLINE: Duration = Duration::from_secs(40);

#[test]
fn websocket_page_resumes_after_connections_drop() {
    run("ws", 60, "feed.>");
}

#[test]
fn sse_page_resumes_after_connections_drop() {
    run("sse", 60, "feed.>");
}

/// `--session-ttl 0`: the node keeps no session, so every resume fails and the page must
/// subscribe again and catch up from history.
#[test]
fn websocket_page_catches_up_when_its_session_expired() {
    run("ws", 0, "feed.>");
}

/// As above, on a concrete subject: the page subscribes again with `since` (no history fetch).
#[test]
fn websocket_page_on_one_subject_resubscribes_since_when_its_session_expired() {
    run("ws", 0, "feed.b");
}

#[test]
fn sse_page_catches_up_when_its_session_expired() {
    run("sse", 0, "feed.>");
}

#[test]
fn websocket_page_with_a_bad_pattern_says_so_instead_of_connecting() {
    bad_pattern("ws");
}

#[test]
fn sse_page_with_a_bad_pattern_says_so_instead_of_connecting() {
    bad_pattern("sse");
}

/// A malformed pattern in the page's URL: the badge says `bad pattern` (not `connecting`, nor
/// `open` on a connection that subscribes to nothing) and the error line says why.
fn bad_pattern(transport: &str) {
    let node = start(DriverChoice::Auto, |_| {});
    let origin = format!("http://{}", node.addr);
    let mut browser = Browser::launch(&format!("{origin}/?pattern=feed..a&transport={transport}"));
    let mut page = Page::attach(&mut browser, &origin);
    let rec = wait_for(&mut page, "the page to settle on a status", |r| {
        !r.is_null() && r["status"] != "connecting"
    });
    assert_eq!(rec["status"], "bad pattern", "{}", summary(&rec));
    let badge = page.eval("document.getElementById('status').textContent");
    assert_eq!(badge, "bad pattern");
    let error =
        page.eval("(e => e.hidden ? null : e.textContent)(document.getElementById('error'))");
    let error = error
        .as_str()
        .unwrap_or_else(|| panic!("no error shown: {error}"));
    assert!(
        error.contains("not a subject pattern: 'feed..a'"),
        "{error}"
    );
}

fn run(transport: &str, session_ttl: u64, pattern: &str) {
    let expected: Vec<&str> = SUBJECTS
        .into_iter()
        .filter(|s| pattern == "feed.>" || *s == pattern)
        .collect();
    let node = start(DriverChoice::Auto, |c| c.session_ttl = session_ttl);
    let proxy = Proxy::start(node.addr);
    let origin = format!("http://{}", proxy.addr);
    let query = format!(
        "pattern={}&transport={transport}",
        pattern.replace('>', "%3E")
    );
    let mut browser = Browser::launch(&format!("{origin}/?{query}"));
    let mut page = Page::attach(&mut browser, &origin);
    let first = wait_for(&mut page, "the page to open its connection", |r| {
        r["status"] == "open"
    });
    assert_eq!(first["transport"], transport, "{}", summary(&first));
    assert_eq!(first["pattern"], pattern, "{}", summary(&first));

    let published = Arc::new(AtomicU64::new(0));
    let publisher = publish_stream(node.addr, published.clone());
    let total = PER_SUBJECT * SUBJECTS.len() as u64;
    // First cut: a fifth into the stream (so it is mid-stream by construction).
    let deadline = Instant::now() + DEADLINE;
    while published.load(Ordering::SeqCst) < total / 5 {
        assert!(Instant::now() < deadline, "the publisher is stuck");
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut cut = proxy.cut();
    let at_cut = page.record()["messages"].as_u64().unwrap();
    // Second cut, while the stream still runs: once the page is back and receiving again.
    wait_for(&mut page, "the page to reconnect and receive again", |r| {
        r["reconnects"].as_u64() >= Some(1) && r["messages"].as_u64() > Some(at_cut + 20)
    });
    if published.load(Ordering::SeqCst) < total * 9 / 10 {
        cut += proxy.cut();
    }
    if let Err(e) = publisher.join() {
        std::panic::resume_unwind(e);
    }
    let rec = wait_for(&mut page, "every message to reach the page", |r| {
        expected
            .iter()
            .all(|s| r["subjects"][s]["last"].as_u64() == Some(PER_SUBJECT))
    });

    eprintln!(
        "{transport}, session ttl {session_ttl}, pattern {pattern}: {cut} connections cut; page: {}",
        summary(&rec)
    );
    let want: Vec<u64> = (1..=PER_SUBJECT).collect();
    for s in &expected {
        let got: Vec<u64> = rec["subjects"][s]["seqs"]
            .as_array()
            .unwrap_or_else(|| panic!("no record of {s}: {}", summary(&rec)))
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(
            got == want,
            "{s}: expected seqs 1..={PER_SUBJECT} once each, in order; {}\n{}",
            describe(&got),
            summary(&rec)
        );
    }
    let names: Vec<&String> = rec["subjects"].as_object().unwrap().keys().collect();
    assert_eq!(names, expected, "subjects seen: {}", summary(&rec));
    assert_eq!(rec["duplicates"], 0, "duplicates: {}", summary(&rec));
    assert_eq!(rec["gaps"], 0, "gaps: {}", summary(&rec));
    assert_eq!(rec["errors"], json!([]), "errors: {}", summary(&rec));
    assert!(
        cut >= 1,
        "the proxy had no connection to cut: {}",
        summary(&rec)
    );
    assert!(
        rec["reconnects"].as_u64() >= Some(1),
        "the page never reconnected: {}",
        summary(&rec)
    );
    if session_ttl > 0 {
        assert!(
            rec["resumes"].as_u64() >= Some(1),
            "the page never resumed its session: {}",
            summary(&rec)
        );
    } else {
        assert!(
            rec["resumes"] == 0 && rec["expired"].as_u64() >= Some(1),
            "without sessions every resume must fail: {}",
            summary(&rec)
        );
    }
}

/// Publishes PER_SUBJECT messages to each subject, round-robin over HTTP straight to the node
/// (not through the proxy), counting them in `published`.
fn publish_stream(node: SocketAddr, published: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for i in 0..PER_SUBJECT * SUBJECTS.len() as u64 {
            let s = SUBJECTS[(i % SUBJECTS.len() as u64) as usize];
            let body = format!(r#"{{"subject":"{s}","data":{{"n":{i}}}}}"#);
            let (status, _, reply) = common::http(node, "POST", "/publish", &[], body.as_bytes());
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
            published.store(i + 1, Ordering::SeqCst);
            std::thread::sleep(PACE);
        }
    })
}

/// What is wrong with a subject's seqs: missing, repeated and out-of-order ones.
fn describe(got: &[u64]) -> String {
    let mut seen = std::collections::BTreeMap::new();
    for s in got {
        *seen.entry(*s).or_insert(0) += 1;
    }
    let missing: Vec<u64> = (1..=PER_SUBJECT)
        .filter(|s| !seen.contains_key(s))
        .collect();
    let repeated: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    let backwards = got.windows(2).filter(|w| w[1] <= w[0]).count();
    format!(
        "got {} messages; missing {:?}; repeated {:?}; {} steps backwards",
        got.len(),
        missing,
        repeated,
        backwards
    )
}

/// The page record without the seq lists, for failure messages.
fn summary(rec: &Value) -> String {
    let mut r = rec.clone();
    if let Some(subjects) = r["subjects"].as_object_mut() {
        for v in subjects.values_mut() {
            let n = v["seqs"].as_array().map_or(0, Vec::len);
            v["seqs"] = json!(format!("<{n} seqs>"));
        }
    }
    r.to_string()
}

/// Polls the page's record until `done` holds; fails after DEADLINE.
fn wait_for(page: &mut Page, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let rec = page.record();
        if done(&rec) {
            return rec;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}; page record: {}",
            summary(&rec)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- the proxy -------------------------------------------------------------------------------

/// A TCP proxy in front of the node that can cut every connection at once (both sockets shut
/// down, as when a network path dies: the browser and the node each see the connection end).
struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
}

#[derive(Default)]
struct ProxyShared {
    /// Both sockets of every open proxied connection, by connection number.
    live: Mutex<HashMap<u64, [TcpStream; 2]>>,
    next: AtomicU64,
    stop: AtomicBool,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared::default());
        let sh = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let id = sh.next.fetch_add(1, Ordering::SeqCst);
                let clone = |s: &TcpStream| s.try_clone().expect("socket clone");
                sh.live
                    .lock()
                    .unwrap()
                    .insert(id, [clone(&client), clone(&server)]);
                pump(clone(&client), clone(&server), &sh, id);
                pump(server, client, &sh, id);
            }
        });
        Proxy { addr, shared }
    }

    /// Shuts down every open proxied connection; returns how many there were.
    fn cut(&self) -> usize {
        let mut live = self.shared.live.lock().unwrap();
        for s in live.values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let n = live.len();
        live.clear();
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        self.cut();
    }
}

/// Copies `from` to `to` until either side ends, then ends both.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Arc<ProxyShared>, id: u64) {
    let shared = shared.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        shared.live.lock().unwrap().remove(&id);
    });
}

// ---- the browser -----------------------------------------------------------------------------

/// Headless Chromium on a fresh profile, killed (its whole process group) on drop.
struct Browser {
    child: Child,
    dir: PathBuf,
}

impl Browser {
    fn launch(url: &str) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: this test needs Debian's chromium (`apt-get install -y chromium`; .ci/run installs it)"
        );
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringcast-browser-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("profile")).unwrap();
        let log = File::create(dir.join("chromium.log")).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
        Browser { child, dir }
    }

    /// The DevTools port, from `<profile>/DevToolsActivePort` once Chromium wrote it.
    fn devtools_port(&mut self) -> u16 {
        let file = self.dir.join("profile/DevToolsActivePort");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let port = fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok());
            if let Some(port) = port {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromium exited ({status}) before it listened:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort within {DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of Chromium's output.
    fn log(&self) -> String {
        let text = fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser leads its own process group (renderers, GPU and utility processes too).
        // SAFETY: kill(2) on a process group this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A DevTools protocol connection to the page.
struct Page {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Page {
    /// Finds the tab showing a URL under `origin` and connects to it.
    fn attach(browser: &mut Browser, origin: &str) -> Page {
        let port = browser.devtools_port();
        let deadline = Instant::now() + DEADLINE;
        let ws_url = loop {
            let list = devtools_get(port, "/json/list");
            let found = serde_json::from_str::<Value>(&list).ok().and_then(|v| {
                v.as_array()?
                    .iter()
                    .find(|t| {
                        t["type"] == "page"
                            && t["url"].as_str().is_some_and(|u| u.starts_with(origin))
                    })
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            if let Some(url) = found {
                break url;
            }
            assert!(
                Instant::now() < deadline,
                "no tab on {origin} within {DEADLINE:?}; /json/list: {list}\n{}",
                browser.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(common::IO_BOUND)).unwrap();
        stream.set_write_timeout(Some(common::IO_BOUND)).unwrap();
        // The URL names 127.0.0.1:<port>, which becomes the Host header DevTools checks.
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream)
            .unwrap_or_else(|e| panic!("DevTools WebSocket {ws_url}: {e}"));
        Page { ws, next_id: 0 }
    }

    /// `Runtime.evaluate` of `expression`, its value returned by value.
    fn eval(&mut self, expression: &str) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let call = json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true}});
        self.ws
            .send(tungstenite::Message::text(call.to_string()))
            .expect("DevTools send");
        loop {
            let msg = self.ws.read().expect("DevTools read");
            let Ok(text) = msg.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if v["id"] != id {
                continue; // an event
            }
            assert!(v["error"].is_null(), "Runtime.evaluate failed: {v}");
            assert!(
                v["result"]["exceptionDetails"].is_null(),
                "{expression} threw: {v}"
            );
            return v["result"]["result"]["value"].clone();
        }
    }

    /// `window.__ringcast` (null until the page's script ran).
    fn record(&mut self) -> Value {
        let text = self.eval("JSON.stringify(window.__ringcast ?? null)");
        serde_json::from_str(text.as_str().expect("a string")).expect("record JSON")
    }
}

/// GET on the DevTools HTTP endpoint, which answers only to a `Host` of an IP or localhost
/// (and keeps the connection open: the body is read by its Content-Length).
fn devtools_get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(common::IO_BOUND)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).expect("DevTools HTTP request");
    let (_, _, body) = common::read_response(&mut s);
    String::from_utf8_lossy(&body).into_owned()
}
