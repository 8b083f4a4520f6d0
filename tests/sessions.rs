//! Sessions: a client that loses its connection resumes exactly where it stopped, on whichever
//! core the new connection lands: the union of what both connections received is every message
//! exactly once, in order. Over WebSocket (`resume`) and SSE (`Last-Event-ID`).

mod common;

use common::{start, Frame, Node, Sse, Ws};
use ringcast::config::DriverChoice;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const SUBJECTS: [&str; 3] = ["ticks.a", "ticks.b", "ticks.c"];

/// The steady publisher sends as fast as acks come back: no per-connection rate limit.
fn unlimited(c: &mut ringcast::config::Config) {
    c.max_msgs_per_sec = 0;
}

/// Publishes a steady stream round-robin over SUBJECTS until stopped; returns the count per subject.
fn steady_publisher(node: &Node, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let addr = node.addr;
    std::thread::spawn(move || {
        let mut p = Ws::connect(addr);
        let mut n = 0u64;
        // Bounded: stops by itself even if the test fails before telling it to.
        while (!stop.load(Ordering::Relaxed) || !n.is_multiple_of(3)) && n < 60_000 {
            let s = SUBJECTS[(n % 3) as usize];
            let (ack, _) = p.request(&format!(
                r#"{{"op":"pub","id":{n},"subject":"{s}","data":{n}}}"#
            ));
            assert_eq!(ack["op"], "ok");
            n += 1;
        }
        n / 3
    })
}

/// Asserts that `msgs` hold seqs 1..=per_subject of every subject, each once, in order.
fn assert_exactly_once_in_order(msgs: &[Value], per_subject: u64) {
    let mut next: BTreeMap<&str, u64> = BTreeMap::new();
    for m in msgs {
        let s = m["subject"].as_str().unwrap();
        let seq = m["seq"].as_u64().unwrap();
        let want = next.entry(s).or_insert(1);
        assert_eq!(
            seq, *want,
            "subject {s}: expected seq {want}, got {seq} (gap, duplicate or reorder)"
        );
        *want += 1;
    }
    for s in SUBJECTS {
        assert_eq!(
            next.get(s).copied().unwrap_or(1),
            per_subject + 1,
            "subject {s} complete"
        );
    }
}

/// A connection on a core other than (or the same as) `session`'s core.
fn ws_on_core(node: &Node, session: &str, same_core: bool) -> Ws {
    for _ in 0..64 {
        let c = node.ws();
        if (c.session[..2] == session[..2]) == same_core {
            return c;
        }
    }
    panic!("no connection landed on the wanted core in 64 tries");
}

fn ws_resume_is_exact(d: DriverChoice, same_core: bool) {
    let node = start(d, unlimited);
    let mut first = node.ws();
    first.sub(1, "ticks.*");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = steady_publisher(&node, stop.clone());
    let mut got = first.recv_msgs(300);
    let session = first.session.clone();
    // Kill the socket mid-stream: no close frame, unread bytes discarded.
    drop(first);
    let mut second = ws_on_core(&node, &session, same_core);
    let (ok, _) = second.request(&format!(
        r#"{{"op":"resume","id":"r","session":"{session}","received":{}}}"#,
        got.len()
    ));
    assert_eq!(ok["op"], "ok", "{ok}");
    // Let it run live for a while, then stop and drain.
    got.extend(second.recv_msgs(300));
    stop.store(true, Ordering::Relaxed);
    let per_subject = publisher.join().unwrap();
    let total = per_subject as usize * 3;
    got.extend(second.recv_msgs(total - got.len()));
    assert_exactly_once_in_order(&got, per_subject);
}

/// Reads frames up to the server's close frame (or EOF): the `msg` ops among them.
fn msgs_until_close(c: &mut Ws) -> Vec<Value> {
    let mut msgs = Vec::new();
    loop {
        match c.recv_frame() {
            Some(Frame::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["op"] == "msg" {
                    msgs.push(v);
                }
            }
            Some(Frame::Close(_)) | None => return msgs,
            Some(_) => {}
        }
    }
}

fn messages_routed_while_a_close_is_flushing_are_kept_for_the_resume(d: DriverChoice) {
    let node = start(d, unlimited);
    let mut first = node.ws();
    first.sub(1, "ticks.*");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = steady_publisher(&node, stop.clone());
    let mut got = first.recv_msgs(300);
    // The client closes; what the server routes to it until its socket is gone must not be
    // lost: the old socket stays open (half-closed by the close handshake) while the session
    // is resumed elsewhere, so that window is as long as the resume takes.
    first.send_frame(0x8, true, &1000u16.to_be_bytes());
    got.extend(msgs_until_close(&mut first));
    let session = first.session.clone();
    let mut second = node.ws();
    let (ok, _) = second.request(&format!(
        r#"{{"op":"resume","id":"r","session":"{session}","received":{}}}"#,
        got.len()
    ));
    assert_eq!(ok["op"], "ok", "{ok}");
    got.extend(second.recv_msgs(300));
    stop.store(true, Ordering::Relaxed);
    let per_subject = publisher.join().unwrap();
    let total = per_subject as usize * 3;
    got.extend(second.recv_msgs(total - got.len()));
    assert_exactly_once_in_order(&got, per_subject);
    drop(first);
}

/// 60 messages of 60 KiB: 3.5 MiB, over three times the default 1 MiB outbound queue.
const BIG: usize = 60;

fn publish_big(node: &Node, subject: &str) {
    let payload = "x".repeat(60 << 10);
    for i in 0..BIG {
        node.publish(subject, &format!("\"{i}{payload}\""));
    }
}

/// Reads `n` messages, failing on a close frame (a 4008 would be one).
fn recv_msgs_or_close(c: &mut Ws, n: usize) -> Vec<Value> {
    let mut msgs = Vec::with_capacity(n);
    while msgs.len() < n {
        match c.recv_frame() {
            Some(Frame::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["op"] == "msg" {
                    msgs.push(v);
                }
            }
            Some(Frame::Ping(p)) => c.send_frame(0xA, true, &p),
            other => panic!("after {} of {n} messages: {other:?}", msgs.len()),
        }
    }
    msgs
}

fn a_resume_larger_than_the_queue_is_paced_by_the_reader_not_closed(d: DriverChoice) {
    let node = start(d, unlimited);
    let mut first = node.ws();
    first.sub(1, "big");
    let session = first.session.clone();
    drop(first);
    // Every publish is acknowledged before the resume: whether the node has already seen the
    // old socket go (detached) or not (the resume takes the session over), the session owes
    // all of them.
    publish_big(&node, "big");
    let mut second = node.ws();
    second.send(&format!(
        r#"{{"op":"resume","id":"r","session":"{session}","received":0}}"#
    ));
    let msgs = recv_msgs_or_close(&mut second, BIG);
    let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=BIG as u64).collect::<Vec<_>>());
    assert_eq!(node.metric("ringcast_slow_consumer_closes_total"), 0);
}

fn a_since_replay_larger_than_the_queue_is_delivered_whole(d: DriverChoice) {
    let node = start(d, unlimited);
    publish_big(&node, "big");
    let mut c = node.ws();
    c.send(r#"{"op":"sub","id":1,"subject":"big","since":0}"#);
    let msgs = recv_msgs_or_close(&mut c, BIG);
    let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=BIG as u64).collect::<Vec<_>>());
    // Live messages follow the replay, in order.
    node.publish("big", "\"live\"");
    let live = recv_msgs_or_close(&mut c, 1);
    assert_eq!(live[0]["seq"], BIG as u64 + 1);
    assert_eq!(node.metric("ringcast_slow_consumer_closes_total"), 0);
}

fn websocket_resume_on_another_core_is_exact(d: DriverChoice) {
    ws_resume_is_exact(d, false);
}

fn websocket_resume_on_the_same_core_is_exact(d: DriverChoice) {
    ws_resume_is_exact(d, true);
}

fn resuming_an_unknown_session_is_session_expired(d: DriverChoice) {
    let node = start(d, unlimited);
    let mut c = node.ws();
    for session in ["nope", "00ffffffffffffffff", "zz0000000000000000"] {
        let (r, _) = c.request(&format!(
            r#"{{"op":"resume","id":1,"session":"{session}","received":0}}"#
        ));
        assert_eq!(
            (r["op"].as_str(), r["code"].as_str()),
            (Some("err"), Some("session_expired")),
            "{session}"
        );
    }
}

fn a_session_that_missed_more_than_it_retains_is_expired(d: DriverChoice) {
    let node = start(d, |c| {
        unlimited(c);
        c.session_retain = 10;
    });
    let mut first = node.ws();
    first.sub(1, "ticks.*");
    let session = first.session.clone();
    drop(first);
    // Wait (bounded) until the node noticed the disconnect, then overflow the session's log.
    let mut probe = node.ws();
    probe.sub(1, "ticks.*");
    for i in 0..100 {
        node.publish("ticks.a", &i.to_string());
    }
    probe.recv_msgs(100);
    let (r, _) = probe.request(&format!(
        r#"{{"op":"resume","id":1,"session":"{session}","received":0}}"#
    ));
    assert_eq!(r["code"], "session_expired");
    // Within what it retains, the same kind of session resumes.
    let mut third = node.ws();
    third.sub(1, "ticks.*");
    let s3 = third.session.clone();
    node.publish("ticks.a", "\"x\"");
    third.recv_msgs(1);
    drop(third);
    node.publish("ticks.a", "\"y\"");
    let mut fourth = node.ws();
    let (r, _) = fourth.request(&format!(
        r#"{{"op":"resume","id":2,"session":"{s3}","received":1}}"#
    ));
    assert_eq!(r["op"], "ok");
    assert_eq!(fourth.recv_msgs(1)[0]["data"], "y");
}

fn a_resume_whose_new_connection_dies_keeps_the_session(d: DriverChoice) {
    use std::io::Write;
    let node = start(d, unlimited);
    let mut first = node.ws();
    first.sub(1, "ticks.*");
    for i in 1..=5 {
        node.publish("ticks.a", &i.to_string());
    }
    first.recv_msgs(3);
    let session = first.session.clone();
    drop(first);
    // The resume and a close frame arrive together: the new connection is gone before the
    // hand-over completes. The session must survive under its old id.
    let mut second = node.ws();
    let mut wire = ringcast::ws::client_frame(
        0x1,
        true,
        format!(r#"{{"op":"resume","id":1,"session":"{session}","received":3}}"#).as_bytes(),
        [1, 2, 3, 4],
    );
    wire.extend(ringcast::ws::client_frame(
        0x8,
        true,
        &1000u16.to_be_bytes(),
        [1, 2, 3, 4],
    ));
    second.stream.write_all(&wire).unwrap();
    drop(second);
    node.publish("ticks.a", "6");
    for _ in 0..200 {
        let mut third = node.ws();
        let (r, _) = third.request(&format!(
            r#"{{"op":"resume","id":2,"session":"{session}","received":3}}"#
        ));
        if r["op"] == "ok" {
            let seqs: Vec<u64> = third
                .recv_msgs(3)
                .iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(seqs, vec![4, 5, 6]);
            return;
        }
        // The hand-back may still be on its way between cores: retry (bounded).
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the session was lost when the resuming connection died");
}

fn sessions_expire_after_their_ttl(d: DriverChoice) {
    let node = start(d, |c| c.session_ttl = 1);
    let mut first = node.ws();
    first.sub(1, "ticks.*");
    let session = first.session.clone();
    drop(first);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let mut c = node.ws();
    let (r, _) = c.request(&format!(
        r#"{{"op":"resume","id":1,"session":"{session}","received":0}}"#
    ));
    assert_eq!(r["code"], "session_expired");
}

fn sse_events(sse: &mut Sse, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let e = sse.next_named("msg");
        out.push((
            e.id.expect("msg events carry an id"),
            serde_json::from_str(&e.data).unwrap(),
        ));
    }
    out
}

fn sse_streams_the_shared_msg_body_with_session_ids(d: DriverChoice) {
    let node = start(d, unlimited);
    let mut sse = Sse::connect(node.addr, "/sse?subject=ticks.*", &[]);
    assert_eq!(sse.status, 200);
    assert!(sse.head.contains("text/event-stream"));
    let hello = sse.next_named("hello");
    let v: Value = serde_json::from_str(&hello.data).unwrap();
    let session = v["session"].as_str().unwrap().to_string();
    let mut ws = node.ws();
    ws.sub(1, "ticks.*");
    node.publish("ticks.a", r#"{"bid":1.5}"#);
    node.publish("ticks.b", "2");
    let events = sse_events(&mut sse, 2);
    assert_eq!(events[0].0, format!("{session}.1"));
    assert_eq!(events[1].0, format!("{session}.2"));
    // Byte for byte the WebSocket `msg` body.
    let ws_msgs = ws.recv_msgs(2);
    assert_eq!(events[0].1, ws_msgs[0]);
    assert_eq!(events[0].1["data"]["bid"], 1.5);
}

fn sse_last_event_id_resumes_exactly(d: DriverChoice) {
    let node = start(d, unlimited);
    let mut sse = Sse::connect(node.addr, "/sse?subject=ticks.*", &[]);
    sse.next_named("hello");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = steady_publisher(&node, stop.clone());
    let first = sse_events(&mut sse, 200);
    let last_id = first.last().unwrap().0.clone();
    drop(sse);
    let mut again = Sse::connect(
        node.addr,
        "/sse?subject=ticks.*",
        &[("Last-Event-ID", &last_id)],
    );
    let hello = again.next_named("hello");
    let resumed = again.next_named("resumed");
    assert!(resumed.data.contains(&last_id[..18]), "{}", resumed.data);
    let new_session = serde_json::from_str::<Value>(&hello.data).unwrap()["session"]
        .as_str()
        .unwrap()
        .to_string();
    let mut all: Vec<Value> = first.into_iter().map(|(_, v)| v).collect();
    let second = sse_events(&mut again, 200);
    // Ids continue the count under the new connection's session.
    assert_eq!(second[0].0, format!("{new_session}.201"));
    all.extend(second.into_iter().map(|(_, v)| v));
    stop.store(true, Ordering::Relaxed);
    let per_subject = publisher.join().unwrap();
    let rest = per_subject as usize * 3 - all.len();
    all.extend(sse_events(&mut again, rest).into_iter().map(|(_, v)| v));
    assert_exactly_once_in_order(&all, per_subject);
}

fn sse_with_an_unknown_last_event_id_gets_a_gap_and_starts_fresh(d: DriverChoice) {
    let node = start(d, unlimited);
    node.publish("ticks.a", "1");
    let mut sse = Sse::connect(
        node.addr,
        "/sse?subject=ticks.*&snapshot=1",
        &[("Last-Event-ID", "00deadbeefdeadbeef.7")],
    );
    sse.next_named("hello");
    let gap = sse.next_named("gap");
    assert!(gap.data.contains("session_expired"));
    let snap = sse_events(&mut sse, 1);
    assert_eq!(snap[0].1["seq"], 1);
}

fn sse_events_stay_whole_when_published_json_has_line_breaks(d: DriverChoice) {
    let node = start(d, unlimited);
    let mut sse = Sse::connect(node.addr, "/sse?subject=ticks.*", &[]);
    sse.next_named("hello");
    // Valid JSON: raw CR/LF only as whitespace between tokens; the string's newline is escaped.
    node.publish("ticks.a", "{\"a\":\r\n\n1,\r\"b\":\"x\\ny\"}");
    node.publish("ticks.b", "2");
    let first = sse.next_named("msg");
    assert!(!first.data.contains('\r'), "{:?}", first.data);
    let v: Value = serde_json::from_str(&first.data).expect("one whole event");
    assert_eq!(v["data"], serde_json::json!({"a":1,"b":"x\ny"}));
    let second: Value = serde_json::from_str(&sse.next_named("msg").data).unwrap();
    assert_eq!(
        (second["subject"].as_str(), second["seq"].as_u64()),
        (Some("ticks.b"), Some(1))
    );
}

fn sse_sends_heartbeats(d: DriverChoice) {
    let node = start(d, |c| c.sse_heartbeat_secs = 1);
    let mut sse = Sse::connect(node.addr, "/sse?subject=x", &[]);
    while !sse.next().expect("stream open").comment {}
}

fn sse_refuses_bad_requests(d: DriverChoice) {
    let node = start(d, unlimited);
    assert_eq!(Sse::connect(node.addr, "/sse", &[]).status, 400);
    assert_eq!(
        Sse::connect(node.addr, "/sse?subject=a..b", &[]).status,
        400
    );
}

on_both_drivers!(
    messages_routed_while_a_close_is_flushing_are_kept_for_the_resume,
    a_resume_larger_than_the_queue_is_paced_by_the_reader_not_closed,
    a_since_replay_larger_than_the_queue_is_delivered_whole,
    websocket_resume_on_another_core_is_exact,
    websocket_resume_on_the_same_core_is_exact,
    resuming_an_unknown_session_is_session_expired,
    a_session_that_missed_more_than_it_retains_is_expired,
    sessions_expire_after_their_ttl,
    a_resume_whose_new_connection_dies_keeps_the_session,
    sse_streams_the_shared_msg_body_with_session_ids,
    sse_last_event_id_resumes_exactly,
    sse_with_an_unknown_last_event_id_gets_a_gap_and_starts_fresh,
    sse_events_stay_whole_when_published_json_has_line_breaks,
    sse_sends_heartbeats,
    sse_refuses_bad_requests,
);
