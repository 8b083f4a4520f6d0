//! What client-made state costs in heap bytes, measured with a counting global allocator around
//! a real node in this process: per idle WebSocket, per subscription, per subject (with one
//! retained message), per dormant subject. Each test asserts an upper bound on bytes (never on
//! time) and prints what it measured (`cargo nextest run --test memory --no-capture`); the
//! numbers are in `benches/RESULTS.md`.
//!
//! The counter is process-wide, so every measurement is a difference of live bytes taken when
//! the node is quiet (every reply read), over many objects, after a warm-up that fills the
//! node's pools. The tests of this file run one at a time (`MEASURE` lock).

mod common;

use common::{http, start, Ws};
use ringcast::config::DriverChoice;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Mutex;

/// Live heap bytes of the whole process.
static LIVE: AtomicI64 = AtomicI64::new(0);

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - l.size() as i64, Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One measurement at a time: the counter is process-wide.
static MEASURE: Mutex<()> = Mutex::new(());

fn live() -> i64 {
    LIVE.load(Relaxed)
}

/// Sends every op of `ops` at once, then reads one reply per op (all `ok`).
fn pipeline(ws: &mut Ws, ops: &[String]) {
    let mut all = Vec::new();
    for op in ops {
        all.extend_from_slice(&ringcast::ws::client_frame(
            0x1,
            true,
            op.as_bytes(),
            [1, 2, 3, 4],
        ));
    }
    ws.stream.write_all(&all).unwrap();
    for _ in ops {
        let r = ws.recv_json();
        assert_eq!(r["op"], "ok", "{r}");
    }
}

fn subs(from: usize, n: usize, pattern: impl Fn(usize) -> String) -> Vec<String> {
    (from..from + n)
        .map(|i| format!(r#"{{"op":"sub","id":{i},"subject":"{}"}}"#, pattern(i)))
        .collect()
}

/// Live bytes per subscription of `pattern(i)`, over `n` subscriptions on one connection.
fn bytes_per_sub(n: usize, pattern: impl Fn(usize) -> String + Copy) -> i64 {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let node = start(DriverChoice::Auto, |c| {
        c.max_subs_per_conn = n + 100;
        c.max_sub_bytes_per_conn = usize::MAX;
    });
    let mut ws = node.ws();
    pipeline(&mut ws, &subs(0, 50, pattern));
    let before = live();
    pipeline(&mut ws, &subs(50, n, pattern));
    let per = (live() - before) / n as i64;
    drop(ws);
    per
}

/// A 16-token pattern of 250 bytes, distinct from the first token on: the largest a client
/// may send, and the one that shares no trie level with any other.
fn longest_pattern(i: usize) -> String {
    let mut p = format!("t{i:014}");
    for t in 1..16 {
        p.push_str(&format!(".tok{t:02}-{i:09}"));
    }
    assert!(p.len() <= 256);
    p
}

#[test]
fn a_short_subscription_costs_at_most_450_bytes() {
    // 593 B before the trie kept small levels as lists.
    let per = bytes_per_sub(2_000, |i| format!("prices.EURUSD{i}.bid"));
    println!("bytes per subscription (prices.EURUSD<i>.bid): {per}");
    assert!(per <= 450, "{per} B per subscription");
}

#[test]
fn the_largest_subscription_costs_at_most_2400_bytes() {
    // 5,029 B before the trie kept small levels as lists.
    let per = bytes_per_sub(1_000, longest_pattern);
    println!("bytes per subscription (16 tokens, 250 B, distinct): {per}");
    assert!(per <= 2_400, "{per} B per subscription");
    assert!(per as usize <= ringcast::core::subscription::cost(&longest_pattern(0)));
}

#[test]
fn an_idle_websocket_costs_at_most_two_kilobytes() {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let node = start(DriverChoice::Auto, |_| {});
    let warm: Vec<Ws> = (0..200).map(|_| node.ws()).collect();
    let n = 1_000;
    let mut conns: Vec<Ws> = Vec::with_capacity(n);
    let before = live();
    conns.extend((0..n).map(|_| node.ws()));
    // The client side of each connection (its buffer and session id) is counted too.
    let client = conns.iter().map(Ws::heap_bytes).sum::<usize>() as i64;
    let total = live() - before;
    println!("live bytes {total}, of which the clients' {client}");
    let per = (total - client) / n as i64;
    println!("bytes per idle WebSocket (server side): {per}");
    drop((conns, warm));
    assert!(per <= 2_048, "{per} B per connection");
}

#[test]
fn a_subject_with_one_small_message_costs_at_most_a_kilobyte() {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let node = start(DriverChoice::Auto, |c| {
        c.durability = Some(ringcast::store::Durability::None)
    });
    let publish = |i: usize| {
        let body = format!(r#"{{"subject":"orders.user{i}.new","data":{{"q":1}}}}"#);
        let (status, _, _) = http(node.addr, "POST", "/publish", &[], body.as_bytes());
        assert_eq!(status, 200);
    };
    (0..50).for_each(publish);
    let n = 2_000;
    let before = live();
    (50..50 + n).for_each(publish);
    let per = (live() - before) / n as i64;
    println!("bytes per subject (one 7-byte message retained): {per}");
    assert!(per <= 1_024, "{per} B per subject");
}

#[test]
fn a_dormant_subject_costs_at_most_700_bytes() {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let node = start(DriverChoice::Auto, |c| {
        c.durability = Some(ringcast::store::Durability::None);
        c.subject_ttl = 1;
        c.dedup_secs = 1;
    });
    let publish = |i: usize| {
        let body = format!(r#"{{"subject":"orders.user{i}.new","data":{{"q":1}}}}"#);
        let (status, _, _) = http(node.addr, "POST", "/publish", &[], body.as_bytes());
        assert_eq!(status, 200);
    };
    (0..50).for_each(publish);
    let n = 2_000;
    let before = live();
    (50..50 + n).for_each(publish);
    common::eventually("every subject went dormant", || {
        node.metric("ringcast_subjects_dormant") == 50 + n as u64
    });
    let per = (live() - before) / n as i64;
    // Includes what the publishes left in the match caches (bounded on their own).
    println!("bytes per dormant subject (its seq and ts kept): {per}");
    assert!(per <= 700, "{per} B per dormant subject");
}
