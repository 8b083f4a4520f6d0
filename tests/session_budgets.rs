//! Detached sessions are bounded: a node keeps at most `--max-detached-sessions` of them and
//! `--max-detached-bytes` of what they hold, dropping the longest-detached first, and drops at
//! once a session that can no longer serve any resume. Connect-subscribe-drop loops cannot grow
//! a node without bound.

mod common;

use common::{eventually, start, Node, Ws};
use ringcast::config::DriverChoice;

/// A connection that subscribes to `x` and is dropped; returns its session id once the node
/// holds it detached (so that the order of detachment is the order of the calls).
fn dropped_session(node: &Node) -> String {
    let before =
        node.metric("ringcast_sessions_detached") + node.metric("ringcast_sessions_evicted_total");
    let mut c = node.ws();
    c.sub(1, "x");
    let id = c.session.clone();
    drop(c);
    eventually("the dropped connection is detached", || {
        node.metric("ringcast_sessions_detached") + node.metric("ringcast_sessions_evicted_total")
            > before
    });
    id
}

fn try_resume(node: &Node, session: &str) -> String {
    let mut c = node.ws();
    let (r, _) = c.request(&format!(
        r#"{{"op":"resume","id":"r","session":"{session}","received":0}}"#
    ));
    let answer = r["code"]
        .as_str()
        .unwrap_or(r["op"].as_str().unwrap())
        .to_string();
    // Give the session back: the resuming connection ends without subscriptions to keep.
    drop(c);
    answer
}

fn detached_sessions_past_the_budget_are_dropped_oldest_first(d: DriverChoice) {
    // Two cores: each keeps its share, 2 sessions.
    let node = start(d, |c| c.max_detached_sessions = 4);
    let first = dropped_session(&node);
    let mut later_on_its_core = 0;
    let mut newest = String::new();
    for _ in 0..64 {
        newest = dropped_session(&node);
        later_on_its_core += usize::from(newest[..2] == first[..2]);
        if later_on_its_core >= 2 && node.metric("ringcast_sessions_evicted_total") >= 3 {
            break;
        }
    }
    assert!(
        later_on_its_core >= 2,
        "sessions never landed on the first one's core"
    );
    eventually("the gauge is within the budget", || {
        node.metric("ringcast_sessions_detached") <= 4
    });
    assert_eq!(
        try_resume(&node, &first),
        "session_expired",
        "the oldest was dropped"
    );
    assert_eq!(try_resume(&node, &newest), "ok", "the newest is kept");
}

fn a_detached_session_that_can_serve_no_resume_is_dropped_at_once(d: DriverChoice) {
    let node = start(d, |c| c.session_retain = 2);
    let s = dropped_session(&node);
    assert_eq!(node.metric("ringcast_sessions_evicted_total"), 0);
    // Messages while away: the log keeps at least two (in whole chunks of up to 64), so after
    // a hundred, message 1 (never received) is gone.
    for i in 0..100 {
        node.publish("x", &i.to_string());
    }
    eventually("the lapsed session is dropped before its TTL", || {
        node.metric("ringcast_sessions_evicted_total") == 1
            && node.metric("ringcast_sessions_detached") == 0
    });
    assert_eq!(try_resume(&node, &s), "session_expired");
}

fn detached_sessions_are_held_to_their_byte_budget(d: DriverChoice) {
    let budget = 96 * 1024;
    let node = start(d, |c| c.max_detached_bytes = budget);
    let sessions: Vec<String> = (0..8).map(|_| dropped_session(&node)).collect();
    // 16 messages of 1 KiB: each session then holds more than 16 KiB, all of them 130+ KiB.
    let kib = format!("\"{}\"", "p".repeat(1024));
    for _ in 0..16 {
        node.publish("x", &kib);
    }
    eventually(
        "the longest-detached are dropped until within the budget",
        || {
            node.metric("ringcast_sessions_evicted_total") >= 1
                && node.metric("ringcast_detached_bytes") <= budget as u64
        },
    );
    let kept = node.metric("ringcast_sessions_detached");
    assert!((1..8).contains(&kept), "kept {kept}");
    assert_eq!(
        try_resume(&node, sessions.last().unwrap()),
        "ok",
        "the newest is kept"
    );
    let mut w: Ws = node.ws();
    let (pong, _) = w.request(r#"{"op":"ping","id":1}"#);
    assert_eq!(pong["op"], "pong", "the node serves on");
}

on_both_drivers!(
    detached_sessions_past_the_budget_are_dropped_oldest_first,
    a_detached_session_that_can_serve_no_resume_is_dropped_at_once,
    detached_sessions_are_held_to_their_byte_budget,
);
