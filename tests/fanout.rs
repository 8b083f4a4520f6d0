//! Delivery semantics over real WebSocket connections: fanout, wildcards, ordering, once per
//! connection, replay (`since`, `gap`, `snapshot`), de-duplication, slow consumers, conflation.
//! Every test runs on io_uring and on the legacy epoll driver.

mod common;

use common::{eventually, start, Ws};
use ringcast::config::DriverChoice;
use ringcast::store::Durability;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

/// Asserts `msgs` carry exactly the seqs `first..=last`, reporting the first difference only.
fn assert_range(msgs: &[Value], first: u64, last: u64, ctx: &str) {
    let got = seqs(msgs);
    let want: Vec<u64> = (first..=last).collect();
    if let Some(i) = (0..got.len().max(want.len())).find(|i| got.get(*i) != want.get(*i)) {
        panic!(
            "{ctx}: at index {i} got {:?}, want {:?} ({} msgs, want {}..={last})",
            got.get(i),
            want.get(i),
            got.len(),
            first
        );
    }
}

fn fanout_reaches_every_subscriber_on_both_cores(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut subs: Vec<Ws> = (0..40).map(|_| node.ws()).collect();
    for s in &mut subs {
        s.sub(1, "prices.EURUSD");
    }
    let per_core = node.metric_per_core("ringcast_websockets");
    assert!(
        per_core.iter().all(|n| *n > 0),
        "subscribers spread over both cores: {per_core:?}"
    );
    let mut publisher = node.ws();
    for i in 0..50 {
        let (ack, _) = publisher.request(&format!(
            r#"{{"op":"pub","id":{i},"subject":"prices.EURUSD","data":{{"bid":{i}}}}}"#
        ));
        assert_eq!(ack["op"], "ok");
        assert_eq!(ack["seq"], i + 1);
    }
    for s in &mut subs {
        let msgs = s.recv_msgs(50);
        assert_range(&msgs, 1, 50, "subscriber");
        assert_eq!(msgs[7]["data"]["bid"], 7);
        assert_eq!(msgs[7]["subject"], "prices.EURUSD");
        assert!(
            msgs[7]["ts"].as_u64().unwrap() > 1_600_000_000_000_000,
            "ts is microseconds since the epoch"
        );
    }
    assert_eq!(node.metric("ringcast_delivered_total"), 40 * 50);
}

fn wildcards_match_exactly_as_specified(d: DriverChoice) {
    let node = start(d, |_| {});
    let patterns = [
        "prices.*",
        "prices.>",
        "*.EURUSD",
        "prices.EURUSD",
        "prices.*.bid",
        ">",
    ];
    let mut clients: Vec<(&str, Ws)> = patterns.iter().map(|p| (*p, node.ws())).collect();
    for (p, c) in &mut clients {
        c.sub(1, p);
        // A marker subject after which each client stops reading.
        c.sub(2, "end");
    }
    let subjects = [
        "prices.EURUSD",
        "prices.EURUSD.bid",
        "prices",
        "news.EURUSD",
        "prices.GBPUSD",
    ];
    for s in subjects {
        node.publish(s, "1");
    }
    node.publish("end", "0");
    let expected: BTreeMap<&str, Vec<&str>> = [
        ("prices.*", vec!["prices.EURUSD", "prices.GBPUSD"]),
        (
            "prices.>",
            vec!["prices.EURUSD", "prices.EURUSD.bid", "prices.GBPUSD"],
        ),
        ("*.EURUSD", vec!["prices.EURUSD", "news.EURUSD"]),
        ("prices.EURUSD", vec!["prices.EURUSD"]),
        ("prices.*.bid", vec!["prices.EURUSD.bid"]),
        (
            ">",
            vec![
                "prices.EURUSD",
                "prices.EURUSD.bid",
                "prices",
                "news.EURUSD",
                "prices.GBPUSD",
            ],
        ),
    ]
    .into_iter()
    .collect();
    for (p, c) in &mut clients {
        let mut got = Vec::new();
        loop {
            let m = c.recv_msgs(1).remove(0);
            let s = m["subject"].as_str().unwrap().to_string();
            if s == "end" {
                break;
            }
            got.push(s);
        }
        let want: Vec<String> = expected[p].iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "pattern {p}");
    }
}

fn per_subject_order_holds_under_concurrent_publishers(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut sub = node.ws();
    sub.sub(1, "orders.*");
    let addr = node.addr;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            std::thread::spawn(move || {
                let mut c = Ws::connect(addr);
                for i in 0..200 {
                    c.send(&format!(r#"{{"op":"pub","id":{i},"subject":"orders.{}","data":{{"p":{p},"i":{i}}}}}"#, i % 3));
                }
                let mut acks = 0;
                while acks < 200 {
                    if c.recv_json()["op"] == "ok" {
                        acks += 1;
                    }
                }
            })
        })
        .collect();
    let msgs = sub.recv_msgs(800);
    for p in publishers {
        p.join().unwrap();
    }
    let mut last_seq: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_i: BTreeMap<(u64, String), i64> = BTreeMap::new();
    for m in &msgs {
        let subject = m["subject"].as_str().unwrap().to_string();
        let seq = m["seq"].as_u64().unwrap();
        let prev = last_seq.insert(subject.clone(), seq).unwrap_or(0);
        assert_eq!(seq, prev + 1, "contiguous, increasing seq per subject");
        let key = (m["data"]["p"].as_u64().unwrap(), subject);
        let i = m["data"]["i"].as_i64().unwrap();
        let before = last_i.insert(key, i).unwrap_or(-1);
        assert!(i > before, "each publisher's messages keep their order");
    }
    assert_eq!(last_seq.values().sum::<u64>(), 800);
}

/// Causal order across subjects and cores: a message published after another was
/// acknowledged is delivered after it, to every subscriber, whichever cores own the two
/// subjects (the owner's frames leave for the other cores before its ack leaves for the
/// publisher, over HTTP and over WebSocket alike).
fn a_publish_after_an_ack_is_delivered_after_the_acknowledged_one(d: DriverChoice) {
    let node = start(d, |_| {});
    let subject_of = |core| {
        (0..)
            .map(|i| format!("causal.s{i}"))
            .find(|s| ringcast::bus::owner_of(s, 2) == core)
            .unwrap()
    };
    let (a, b) = (subject_of(0), subject_of(1));
    let mut subs: Vec<Ws> = (0..6).map(|_| node.ws()).collect();
    for s in &mut subs {
        s.sub(1, "causal.>");
    }
    let mut publisher = node.ws();
    const N: usize = 200;
    for i in 0..N {
        let subject = if i % 2 == 0 { &a } else { &b };
        if i % 4 < 2 {
            node.publish(subject, &i.to_string());
        } else {
            let (ack, _) = publisher.request(&format!(
                r#"{{"op":"pub","id":{i},"subject":"{subject}","data":{i}}}"#
            ));
            assert_eq!(ack["op"], "ok", "{ack}");
        }
    }
    for (k, s) in subs.iter_mut().enumerate() {
        let got: Vec<u64> = s
            .recv_msgs(N)
            .iter()
            .map(|m| m["data"].as_u64().unwrap())
            .collect();
        assert_eq!(got, (0..N as u64).collect::<Vec<_>>(), "subscriber {k}");
    }
}

fn overlapping_subscriptions_deliver_once(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut c = node.ws();
    for (i, p) in ["a.b.c", "a.*.c", "a.>", ">", "*.b.*"].iter().enumerate() {
        c.sub(i as u64, p);
    }
    for i in 0..20 {
        node.publish("a.b.c", &i.to_string());
    }
    node.publish("z", "0");
    let msgs = c.recv_msgs(21);
    assert_eq!(seqs(&msgs[..20]), (1..=20).collect::<Vec<_>>());
    assert_eq!(msgs[20]["subject"], "z");
}

fn since_replays_history_and_reports_the_gap(d: DriverChoice) {
    let node = start(d, |c| {
        c.history = 5;
        // The gap comes from the ring alone (a store would still hold the older messages).
        c.durability = Some(Durability::None);
    });
    for i in 1..=10 {
        node.publish("ticks.X", &i.to_string());
    }
    let mut c = node.ws();
    let (ok, _) = c.request(r#"{"op":"sub","id":"s","subject":"ticks.X","since":2}"#);
    assert_eq!(ok["op"], "ok");
    let gap = c.recv_json();
    assert_eq!(
        gap,
        serde_json::json!({"op":"gap","subject":"ticks.X","from":3,"to":5})
    );
    assert_eq!(seqs(&c.recv_msgs(5)), vec![6, 7, 8, 9, 10]);
    node.publish("ticks.X", "11");
    assert_eq!(seqs(&c.recv_msgs(1)), vec![11]);

    // Within history: no gap, exactly the missing ones.
    let mut d2 = node.ws();
    d2.request(r#"{"op":"sub","id":1,"subject":"ticks.X","since":9}"#);
    node.publish("ticks.X", "12");
    let msgs = d2.recv_msgs(3);
    assert_eq!(seqs(&msgs), vec![10, 11, 12]);
}

fn since_is_exact_while_publishing_continues(d: DriverChoice) {
    let node = start(d, |c| c.history = 10_000);
    let addr = node.addr;
    let publisher = std::thread::spawn(move || {
        let mut p = Ws::connect(addr);
        for i in 0..2000 {
            p.send(&format!(
                r#"{{"op":"pub","id":{i},"subject":"live.s","data":{i}}}"#
            ));
        }
        let mut n = 0;
        while n < 2000 {
            if p.recv_json()["op"] == "ok" {
                n += 1;
            }
        }
    });
    let mut clients: Vec<Ws> = (0..6).map(|_| node.ws()).collect();
    for (k, c) in clients.iter_mut().enumerate() {
        c.send(&format!(
            r#"{{"op":"sub","id":1,"subject":"live.s","since":{}}}"#,
            k * 10
        ));
    }
    publisher.join().unwrap();
    for (k, c) in clients.iter_mut().enumerate() {
        let first = (k * 10 + 1) as u64;
        let msgs = c.recv_msgs(2000 - k * 10);
        assert_range(
            &msgs,
            first,
            2000,
            &format!("client {k}: every seq after since, once, in order"),
        );
    }
}

fn since_is_exact_even_when_a_wildcard_subscription_covers_the_subject(d: DriverChoice) {
    let node = start(d, |c| c.max_msgs_per_sec = 0);
    let subjects: Vec<String> = (0..8).map(|i| format!("r.s{i}")).collect();
    for s in &subjects {
        for i in 0..20 {
            node.publish(s, &i.to_string());
        }
    }
    let addr = node.addr;
    let subs = subjects.clone();
    let publisher = std::thread::spawn(move || {
        // Pipelined, as fast as the node takes them, so live messages race the replays.
        let mut p = Ws::connect(addr);
        publish_pipelined(&mut p, 0..4000, |i| {
            let s = &subs[i % 8];
            format!(r#"{{"op":"pub","id":{i},"subject":"{s}","data":{i}}}"#)
        });
    });
    let mut clients: Vec<Ws> = (0..6).map(|_| node.ws()).collect();
    for c in &mut clients {
        for s in &subjects {
            c.send(&format!(
                r#"{{"op":"sub","id":"{s}","subject":"{s}","since":10}}"#
            ));
        }
        c.send(r#"{"op":"sub","id":"all","subject":"r.>"}"#);
    }
    publisher.join().unwrap();
    // 20 + 500 messages per subject; each connection gets 11..=520 of each, once, in order.
    for (k, c) in clients.iter_mut().enumerate() {
        let mut next: BTreeMap<String, u64> = subjects.iter().map(|s| (s.clone(), 11)).collect();
        for _ in 0..8 * 510 {
            let m = c.recv_msgs(1).remove(0);
            let s = m["subject"].as_str().unwrap().to_string();
            let seq = m["seq"].as_u64().unwrap();
            let want = next.get_mut(&s).unwrap();
            assert_eq!(
                seq, *want,
                "client {k}, subject {s}: the since replay must not be lost"
            );
            *want += 1;
        }
    }
}

fn snapshot_sends_the_latest_of_each_subject_then_live(d: DriverChoice) {
    let node = start(d, |_| {});
    for s in ["fx.EURUSD", "fx.GBPUSD", "fx.USDJPY", "other.X"] {
        node.publish(s, "1");
        node.publish(s, "2");
    }
    let mut c = node.ws();
    c.request(r#"{"op":"sub","id":1,"subject":"fx.*","snapshot":true}"#);
    let snap = c.recv_msgs(3);
    let got: BTreeSet<(String, u64)> = snap
        .iter()
        .map(|m| {
            (
                m["subject"].as_str().unwrap().to_string(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: BTreeSet<(String, u64)> = ["fx.EURUSD", "fx.GBPUSD", "fx.USDJPY"]
        .iter()
        .map(|s| (s.to_string(), 2))
        .collect();
    assert_eq!(got, want);
    node.publish("fx.EURUSD", "3");
    let live = c.recv_msgs(1);
    assert_eq!(
        (live[0]["subject"].as_str(), live[0]["seq"].as_u64()),
        (Some("fx.EURUSD"), Some(3))
    );
}

fn duplicate_msg_ids_return_the_original_and_are_not_redelivered(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut sub = node.ws();
    sub.sub(1, "orders.>");
    let mut p = node.ws();
    let (a, _) = p.request(r#"{"op":"pub","id":1,"subject":"orders.1","data":"x","msg_id":"m-1"}"#);
    let (b, _) = p.request(r#"{"op":"pub","id":2,"subject":"orders.1","data":"y","msg_id":"m-1"}"#);
    assert_eq!(a["seq"], 1);
    assert!(a.get("duplicate").is_none());
    assert_eq!(
        (b["seq"].clone(), b["ts"].clone(), b["duplicate"].clone()),
        (a["seq"].clone(), a["ts"].clone(), Value::Bool(true))
    );
    // The same id on another subject is a different message.
    let (c, _) = p.request(r#"{"op":"pub","id":3,"subject":"orders.2","data":"z","msg_id":"m-1"}"#);
    assert!(c.get("duplicate").is_none());
    // Over HTTP too.
    let body = br#"{"subject":"orders.1","data":"w","msg_id":"m-1"}"#;
    let (status, _, resp) = common::http(node.addr, "POST", "/publish", &[], body);
    assert_eq!(status, 200);
    let r: Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!(
        (r["seq"].as_u64(), r["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    node.publish("orders.end", "0");
    let msgs = sub.recv_msgs(3);
    let subjects: Vec<&str> = msgs
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, vec!["orders.1", "orders.2", "orders.end"]);
    assert_eq!(msgs[0]["data"], "x");
}

fn small_rcvbuf(s: &socket2::Socket) {
    s.set_recv_buffer_size(4096).unwrap();
}

fn slow_consumer_is_closed_with_4008_while_a_fast_one_keeps_receiving(d: DriverChoice) {
    // Memory only: an fsync per ack would make the publisher crawl.
    let node = start(d, |c| c.durability = Some(Durability::None));
    let mut slow = Ws::connect_raw(node.addr, small_rcvbuf);
    slow.recv_json();
    slow.sub(1, "big");
    let mut fast = node.ws();
    fast.sub(1, "big");
    let payload = format!("\"{}\"", "x".repeat(4000));
    let total = 3000;
    // In lockstep with the fast reader (each message read before the next is published), so
    // that it keeps up however the test's threads are scheduled; the slow one never reads.
    let mut p = node.ws();
    for i in 0..total {
        let (ack, _) = p.request(&format!(
            r#"{{"op":"pub","id":{i},"subject":"big","data":{payload}}}"#
        ));
        assert_eq!(ack["op"], "ok");
        let msg = fast.recv_msgs(1);
        assert_range(&msg, i as u64 + 1, i as u64 + 1, "fast consumer");
    }
    // The slow one never read. Once the server has given up on it, it reads what the kernel
    // kept, then the close frame (at once: its socket is shut if the close cannot be flushed
    // within the grace period, whatever the publisher is still doing).
    eventually("the slow consumer is closed", || {
        node.metric("ringcast_slow_consumer_closes_total") == 1
    });
    assert_eq!(slow.recv_close(), Some(4008));
    assert_eq!(node.metric("ringcast_slow_consumer_closes_total"), 1);
}

/// Bytes of the messages read before the close frame, and its code.
fn bytes_until_close(c: &mut Ws) -> (usize, Option<u16>) {
    let mut bytes = 0;
    loop {
        match c.recv_frame() {
            Some(common::Frame::Text(t)) => bytes += t.len(),
            Some(common::Frame::Close(code)) => return (bytes, code),
            Some(_) => {}
            None => return (bytes, None),
        }
    }
}

fn a_slow_reader_gets_its_close_frame_behind_little_kernel_buffer(d: DriverChoice) {
    let node = start(d, |c| {
        c.durability = Some(Durability::None);
        c.max_queue_bytes = 64 << 10;
    });
    let mut slow = Ws::connect_raw(node.addr, small_rcvbuf);
    slow.recv_json();
    slow.sub(1, "big");
    let payload = format!("\"{}\"", "x".repeat(4000));
    let mut p = node.ws();
    // Bounded: at most 5,000 messages (20 MB) to make the reader a slow consumer.
    for i in 0..5000 {
        p.send(&format!(
            r#"{{"op":"pub","id":{i},"subject":"big","data":{payload}}}"#
        ));
        p.recv_json();
        if i % 50 == 49 && node.metric("ringcast_slow_consumer_closes_total") == 1 {
            break;
        }
    }
    assert_eq!(node.metric("ringcast_slow_consumer_closes_total"), 1);
    // What stands between the reader and its close frame is what the kernel was allowed to
    // hold (128 KiB unsent by default) and the write in flight (about 140 KB in all, measured),
    // not the kernel's megabytes (2.8 MB measured without the bound).
    let (bytes, code) = bytes_until_close(&mut slow);
    assert_eq!(code, Some(4008));
    assert!(
        bytes < 512 << 10,
        "{bytes} bytes went out ahead of the close frame"
    );
}

fn conflation_replaces_pending_messages_with_the_newest(d: DriverChoice) {
    let node = start(d, |c| {
        c.max_queue_bytes = 16 << 10;
        // Memory only: the publisher below reads its 2,000 acks only at the end; with sync
        // durability they come in group-sized bursts that overflow its 16 KiB queue.
        c.durability = Some(Durability::None);
    });
    let mut slow = Ws::connect_raw(node.addr, small_rcvbuf);
    slow.recv_json();
    let (ok, _) = slow.request(r#"{"op":"sub","id":1,"subject":"q.*","conflate":true}"#);
    assert_eq!(ok["op"], "ok");
    let payload = format!("\"{}\"", "y".repeat(2000));
    let mut p = node.ws();
    let n = 2000;
    // In rounds of 100 pipelined pubs, each round's acks read before the next (acks leave in
    // order, so a round's come out together: 2,000 unread would overflow the 16 KiB queue).
    for round in 0..n / 100 {
        publish_pipelined(&mut p, round * 100..(round + 1) * 100, |i| {
            let subject = if i % 2 == 0 { "q.a" } else { "q.b" };
            format!(r#"{{"op":"pub","id":{i},"subject":"{subject}","data":{payload}}}"#)
        });
    }
    node.publish("q.end", "0");
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut received = 0;
    loop {
        let m = slow.recv_msgs(1).remove(0);
        let s = m["subject"].as_str().unwrap().to_string();
        let seq = m["seq"].as_u64().unwrap();
        if s == "q.end" {
            break;
        }
        received += 1;
        let prev = last.insert(s, seq).unwrap_or(0);
        assert!(seq > prev, "seq only moves forward");
    }
    assert_eq!(
        last.get("q.a"),
        Some(&1000),
        "latest value of q.a delivered"
    );
    assert_eq!(
        last.get("q.b"),
        Some(&1000),
        "latest value of q.b delivered"
    );
    assert!(
        received < n,
        "some messages were conflated away ({received} of {n} delivered)"
    );
    // Conflation acts on what ringcast holds, not behind the kernel's buffer: with unsent
    // kernel bytes bounded (128 KiB), the reader gets well under a quarter of the 4 MB
    // published before the newest values (14-74 of 2,000 measured; about 1,360 without it).
    assert!(
        received < n / 4,
        "{received} of {n} stale values reached the reader before the newest"
    );
    assert!(node.metric("ringcast_dropped_total") > 0);
    assert_eq!(node.metric("ringcast_slow_consumer_closes_total"), 0);
}

fn unsub_stops_delivery(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut c = node.ws();
    c.sub(1, "a.*");
    c.sub(2, "end");
    node.publish("a.x", "1");
    assert_eq!(c.recv_msgs(1)[0]["subject"], "a.x");
    let (r, _) = c.request(r#"{"op":"unsub","id":3,"subject":"a.*"}"#);
    assert_eq!(r["op"], "ok");
    let (r, _) = c.request(r#"{"op":"unsub","id":4,"subject":"a.*"}"#);
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("err"), Some("bad_request"))
    );
    node.publish("a.x", "2");
    node.publish("end", "0");
    assert_eq!(c.recv_msgs(1)[0]["subject"], "end");
}

/// Sends the `pub` op `op(i)` for every `i` of `ids` back to back, then reads until each got
/// its `ok`.
fn publish_pipelined(p: &mut Ws, ids: std::ops::Range<usize>, op: impl Fn(usize) -> String) {
    let n = ids.len();
    for i in ids {
        p.send(&op(i));
    }
    let mut acks = 0;
    while acks < n {
        if p.recv_json()["op"] == "ok" {
            acks += 1;
        }
    }
}

on_both_drivers!(
    a_publish_after_an_ack_is_delivered_after_the_acknowledged_one,
    a_slow_reader_gets_its_close_frame_behind_little_kernel_buffer,
    fanout_reaches_every_subscriber_on_both_cores,
    wildcards_match_exactly_as_specified,
    per_subject_order_holds_under_concurrent_publishers,
    overlapping_subscriptions_deliver_once,
    since_replays_history_and_reports_the_gap,
    since_is_exact_while_publishing_continues,
    since_is_exact_even_when_a_wildcard_subscription_covers_the_subject,
    snapshot_sends_the_latest_of_each_subject_then_live,
    duplicate_msg_ids_return_the_original_and_are_not_redelivered,
    slow_consumer_is_closed_with_4008_while_a_fast_one_keeps_receiving,
    conflation_replaces_pending_messages_with_the_newest,
    unsub_stops_delivery,
);
