//! The browser client (`/ringcast.js`) and demo page (`/`) in a real browser: headless Chromium
//! loads the page through a TCP proxy of the test's own, a publisher streams to a few subjects,
//! the proxy cuts every connection mid-stream (a second time once the page is back, if the
//! stream still runs), the page reconnects and resumes (or, when the node keeps no sessions,
//! subscribes again and catches up); then the page's record
//! (`window.__ringcast`, read over the DevTools protocol) must hold every subject's seqs exactly
//! 1..=N, once each, in order. Over WebSocket and over SSE.
//!
//! Needs Debian's `chromium` at /usr/bin/chromium (`.ci/run` installs it; the browser and
//! DevTools helpers are in `tests/common/browser.rs`). All waits are bounded polls; nothing
//! here asserts on timing.

mod common;

use common::browser::{Browser, Page, DEADLINE};
use common::start;
use ringcast::config::DriverChoice;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Subjects the publisher writes to, round-robin; the page subscribes to `feed.>` (or one).
const SUBJECTS: [&str; 4] = ["feed.a", "feed.b", "feed.c", "feed.d"];

/// Messages per subject (within the node's default history of 1024, so a page whose session
/// expired can still catch up on everything).
const PER_SUBJECT: u64 = 250;

/// Pause between two publishes: a steady stream of a few seconds.
const PACE: Duration = Duration::from_millis(3);

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
