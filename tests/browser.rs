//! The browser client (`/ringcast.js`) and demo page (`/`) in a real browser: headless Chromium
//! loads the page through a TCP proxy of the test's own, a publisher streams to a few subjects,
//! the proxy cuts every connection mid-stream (a second time once the page is back, if the
//! stream still runs), the page reconnects and resumes (or, when the node keeps no sessions,
//! subscribes again and catches up); then the page's record
//! (`window.__ringcast`, read over the DevTools protocol) must hold every subject's seqs exactly
//! 1..=N, once each, in order. Over WebSocket and over SSE. Likewise across a drain in
//! cluster mode: the page leaves the draining node for a peer (behind the same URL, or the
//! next of its `urls`) and recovers everything there. And a page given a malformed pattern
//! says so on its badge instead of showing `connecting` for ever.
//!
//! Needs Debian's `chromium` at /usr/bin/chromium (`.ci/run` installs it). All waits are
//! bounded polls; nothing here asserts on timing.

mod common;
#[path = "common/browser.rs"]
mod harness;

use common::nats::NatsServer;
use common::{start, Node};
use harness::{Browser, Page, Proxy, DEADLINE};
use ringcast::config::DriverChoice;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// Cluster mode, two nodes behind one URL (the page's origin, a proxy playing the load
/// balancer): once the stream runs the proxy sends new connections to node B and node A
/// drains; the page is closed with 1012, comes back through the same URL after its hint, lands
/// on B and recovers every message there (`since`, `/history`).
#[test]
fn websocket_page_moves_to_a_peer_when_its_node_drains() {
    run_drain("ws", "feed.>", false);
}

#[test]
fn sse_page_moves_to_a_peer_when_its_node_drains() {
    run_drain("sse", "feed.>", false);
}

/// With `urls` (one proxy per node): the drained page moves on to the next URL, and resumes
/// its subject there with `since`.
#[test]
fn websocket_page_with_urls_moves_to_the_next_url_when_its_node_drains() {
    run_drain("ws", "feed.b", true);
}

fn cluster_node(nats: &NatsServer) -> Node {
    let url = nats.url();
    start(DriverChoice::Auto, move |c| {
        c.nats_url = Some(url);
        c.max_msgs_per_sec = 0;
        c.drain_retry_ms = 1_000;
    })
}

fn run_drain(transport: &str, pattern: &str, with_urls: bool) {
    let expected: Vec<&str> = SUBJECTS
        .into_iter()
        .filter(|s| pattern == "feed.>" || *s == pattern)
        .collect();
    let nats = NatsServer::start();
    let (a, b) = (cluster_node(&nats), cluster_node(&nats));
    let front = Proxy::start(a.addr);
    let second = Proxy::start(b.addr);
    let origin = format!("http://{}", front.addr);
    let mut query = format!(
        "pattern={}&transport={transport}",
        pattern.replace('>', "%3E")
    );
    if with_urls {
        query += &format!("&urls={origin},http://{}", second.addr);
    }
    let mut browser = Browser::launch(&format!("{origin}/?{query}"));
    let mut page = Page::attach(&mut browser, &origin);
    wait_for(&mut page, "the page to open its connection", |r| {
        r["status"] == "open"
    });
    // Published on B throughout: A refuses publishes once it drains.
    let published = Arc::new(AtomicU64::new(0));
    let publisher = publish_stream(b.addr, published.clone());
    let total = PER_SUBJECT * SUBJECTS.len() as u64;
    let deadline = Instant::now() + DEADLINE;
    while published.load(Ordering::SeqCst) < total / 5 {
        assert!(Instant::now() < deadline, "the publisher is stuck");
        std::thread::sleep(Duration::from_millis(2));
    }
    if !with_urls {
        front.retarget(b.addr);
    }
    let (status, _, _) = common::http(a.addr, "POST", "/admin/drain", &[], b"");
    assert_eq!(status, 202);
    if let Err(e) = publisher.join() {
        std::panic::resume_unwind(e);
    }
    let rec = wait_for(&mut page, "every message to reach the page", |r| {
        expected
            .iter()
            .all(|s| r["subjects"][s]["last"].as_u64() == Some(PER_SUBJECT))
    });
    eprintln!(
        "{transport} drain, pattern {pattern}, urls {with_urls}: {}",
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
        assert!(got == want, "{s}: {}\n{}", describe(&got), summary(&rec));
    }
    assert_eq!(rec["drains"], 1, "one drain seen: {}", summary(&rec));
    assert_eq!(rec["duplicates"], 0, "duplicates: {}", summary(&rec));
    assert_eq!(rec["gaps"], 0, "gaps: {}", summary(&rec));
    assert_eq!(rec["errors"], json!([]), "errors: {}", summary(&rec));
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
