//! Budgets on what clients can make a node hold: each has a flag with a documented default, a
//! clear error when it is exceeded (never a silent drop), and a metric.

mod common;

use common::{http, start, Ws};
use ringcast::config::DriverChoice;
use ringcast::core::subscription::cost;
use std::io::{Read, Write};
use std::net::TcpStream;

#[test]
fn a_connections_subscriptions_are_capped_by_their_bytes() {
    let (small, big) = (
        "prices.EURUSD",
        "news.a-very-long-token-of-sixty-bytes-that-costs-a-lot.x.y",
    );
    let budget = 2 * cost(small) + cost(big) - 1;
    let node = start(DriverChoice::Auto, |c| c.max_sub_bytes_per_conn = budget);
    let mut c = node.ws();
    c.sub(1, small);
    c.sub(2, "prices.GBPUSD");
    let sub_big = format!(r#"{{"op":"sub","id":3,"subject":"{big}"}}"#);
    let (r, _) = c.request(&sub_big);
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("err"), Some("too_large")),
        "{r}"
    );
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("--max-sub-bytes-per-conn"),
        "{r}"
    );
    assert_eq!(
        node.metric_labelled("ringcast_budget_refusals_total", "subscription_bytes"),
        1
    );
    let charged = node.metric("ringcast_subscription_bytes");
    assert_eq!(charged, 2 * cost(small) as u64);
    // Unsubscribing gives the bytes back.
    let (r, _) = c.request(r#"{"op":"unsub","id":4,"subject":"prices.GBPUSD"}"#);
    assert_eq!(r["op"], "ok");
    let (r, _) = c.request(&sub_big);
    assert_eq!(r["op"], "ok", "{r}");
}

#[test]
fn an_sse_stream_over_the_subscription_byte_budget_is_refused() {
    let node = start(DriverChoice::Auto, |c| {
        c.max_sub_bytes_per_conn = cost("a.b")
    });
    let (status, _, body) = http(node.addr, "GET", "/sse?subject=a.b&subject=a.c", &[], b"");
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("--max-sub-bytes-per-conn"));
}

#[test]
fn the_default_byte_budget_holds_a_thousand_typical_subscriptions() {
    let node = start(DriverChoice::Auto, |_| {});
    let mut c = Ws::connect(node.addr);
    for i in 0..1_000 {
        c.send(&format!(
            r#"{{"op":"sub","id":{i},"subject":"prices.FX{i:04}.bid"}}"#
        ));
    }
    for _ in 0..1_000 {
        let r = c.recv_json();
        assert_eq!(r["op"], "ok", "{r}");
    }
}

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

fn publisher_token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub":"pub","exp":exp,"permissions":["publish"],"allowed_subjects":[">"]});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// Sends a request head (and `body_part`), without the rest of its body.
fn send_head(
    node: &common::Node,
    path: &str,
    len: usize,
    extra: &str,
    body_part: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(common::IO_BOUND)).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n{extra}\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body_part).unwrap();
    s
}

#[test]
fn a_tokenless_body_gets_401_before_it_is_sent_and_is_never_buffered() {
    let node = start(DriverChoice::Auto, |c| c.jwt_secret = Some(SECRET.into()));
    // The body is never sent: the answer comes from the head alone.
    let mut s = send_head(&node, "/publish", 1_000_000, "", b"");
    let (status, head, body) = common::read_response(&mut s);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert!(head.contains("Connection: close"), "{head}");
    let mut rest = [0u8; 16];
    assert_eq!(
        s.read(&mut rest).unwrap(),
        0,
        "closed: the body is not read"
    );
    // A bad token too; a good one publishes.
    let mut s = send_head(
        &node,
        "/publish",
        1_000_000,
        "Authorization: Bearer nope\r\n",
        b"",
    );
    assert_eq!(common::read_response(&mut s).0, 401);
    assert_eq!(node.node_metric("ringcast_http_body_bytes"), Some(0));
    let bearer = format!("Bearer {}", publisher_token());
    let body = br#"{"subject":"a","data":1}"#;
    let (status, _, _) = http(
        node.addr,
        "POST",
        "/publish",
        &[("Authorization", &bearer)],
        body,
    );
    assert_eq!(status, 200);
}

#[test]
fn bodies_past_the_node_wide_buffer_budget_get_503_until_room_is_made() {
    let node = start(DriverChoice::Auto, |c| c.max_body_buffer_bytes = 1_000);
    let body = br#"{"subject":"a","data":1}"#;
    let mut pad = body.to_vec();
    pad.resize(800, b' ');
    // 800 bytes announced, 10 sent: held for as long as the body is on its way.
    let mut slow = send_head(&node, "/publish", pad.len(), "", &pad[..10]);
    common::eventually("the slow body is counted", || {
        node.node_metric("ringcast_http_body_bytes") == Some(800)
    });
    let mut other = pad.clone();
    other.truncate(300);
    let (status, _, resp) = http(node.addr, "POST", "/publish", &[], &other);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&resp));
    assert!(String::from_utf8_lossy(&resp).contains("--max-body-buffer-bytes"));
    assert_eq!(
        node.metric_labelled("ringcast_budget_refusals_total", "body_bytes"),
        1
    );
    slow.write_all(&pad[10..]).unwrap();
    assert_eq!(common::read_response(&mut slow).0, 200);
    let (status, _, _) = http(node.addr, "POST", "/publish", &[], &other);
    assert_eq!(status, 200);
    assert_eq!(node.node_metric("ringcast_http_body_bytes"), Some(0));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn schedule(node: &common::Node, subject: &str, data: &str, at: u64) -> (u16, String) {
    let body = format!(r#"{{"subject":"{subject}","data":{data},"at":{at}}}"#);
    let (status, _, resp) = http(node.addr, "POST", "/publish", &[], body.as_bytes());
    (status, String::from_utf8_lossy(&resp).into_owned())
}

#[test]
fn a_publish_scheduled_past_the_horizon_is_refused() {
    let node = start(DriverChoice::Auto, |c| c.max_schedule_horizon = 3_600);
    let year_3000 = 32_503_680_000_000;
    let (status, body) = schedule(&node, "a", "1", year_3000);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("--max-schedule-horizon"), "{body}");
    assert_eq!(
        node.metric_labelled("ringcast_budget_refusals_total", "schedule_horizon"),
        1
    );
    let (status, body) = schedule(&node, "a", "1", now_ms() + 3_000_000);
    assert_eq!(status, 202, "within the hour: {body}");
}

#[test]
fn pending_scheduled_publishes_are_bounded_by_their_bytes() {
    let data = format!("\"{}\"", "x".repeat(1_000));
    // Two cores: each holds half the node's budget, room for two such publishes on one core.
    let node = start(DriverChoice::Auto, |c| c.max_schedule_bytes = 2 * 2 * 1_300);
    let at = now_ms() + 3_600_000;
    // One subject: one owner core.
    assert_eq!(schedule(&node, "big", &data, at).0, 202);
    assert_eq!(schedule(&node, "big", &data, at).0, 202);
    let (status, body) = schedule(&node, "big", &data, at);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--max-schedule-bytes"), "{body}");
    assert_eq!(
        node.metric_labelled("ringcast_budget_refusals_total", "schedule_bytes"),
        1
    );
    let held = node.metric("ringcast_schedule_bytes");
    assert!((2_000..=2 * 1_300).contains(&held), "{held}");
}

fn memory_only(c: &mut ringcast::config::Config) {
    c.durability = Some(ringcast::store::Durability::None);
}

fn history(node: &common::Node, subject: &str) -> serde_json::Value {
    let (status, _, body) = http(node.addr, "GET", &format!("/history/{subject}"), &[], b"");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

fn seqs(h: &serde_json::Value) -> Vec<u64> {
    let msgs = h["messages"].as_array().unwrap();
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

#[test]
fn history_is_bounded_by_bytes_and_a_since_past_it_gets_a_gap() {
    // Two cores: 50 KB each, room for two messages of 20 KB on the subject's owner.
    let node = start(DriverChoice::Auto, |c| {
        memory_only(c);
        c.max_history_bytes = 100_000;
    });
    let data = format!("\"{}\"", "x".repeat(20_000));
    for _ in 0..10 {
        node.publish("big", &data);
    }
    let h = history(&node, "big");
    assert_eq!(
        (h["first_seq"].as_u64(), h["last_seq"].as_u64()),
        (Some(9), Some(10))
    );
    assert_eq!(seqs(&h), vec![9, 10]);
    let mut ws = node.ws();
    ws.send(r#"{"op":"sub","id":1,"subject":"big","since":0}"#);
    let ok = ws.recv_json();
    assert_eq!(ok["op"], "ok");
    let gap = ws.recv_json();
    assert_eq!(
        (gap["op"].as_str(), gap["from"].as_u64(), gap["to"].as_u64()),
        (Some("gap"), Some(1), Some(8))
    );
    let got: Vec<u64> = ws
        .recv_msgs(2)
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![9, 10]);
    common::eventually("the gauges count what is held and evicted", || {
        node.metric("ringcast_history_evicted_total") == 8
    });
    assert!(node.metric("ringcast_history_bytes") <= 100_000);
}

#[test]
fn an_idle_subjects_history_expires_and_its_seq_continues() {
    let node = start(DriverChoice::Auto, |c| {
        memory_only(c);
        c.subject_ttl = 1;
        c.dedup_secs = 1;
    });
    for _ in 0..3 {
        node.publish("idle", "1");
    }
    assert_eq!(seqs(&history(&node, "idle")), vec![1, 2, 3]);
    common::eventually("the idle subject expires", || {
        node.metric("ringcast_subjects_dormant") == 1
    });
    let h = history(&node, "idle");
    assert_eq!(
        (h["first_seq"].as_u64(), h["last_seq"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(node.metric("ringcast_subjects_expired_total"), 1);
    assert_eq!(node.publish("idle", "1")["seq"], 4, "no seq is reused");
    common::eventually("published again: no longer dormant", || {
        node.metric("ringcast_subjects_dormant") == 0
    });
}

#[test]
fn with_a_durable_store_an_expired_subject_keeps_its_latest_and_its_stored_history() {
    let dir = common::TempDir::new("budget-ttl");
    let node = start(DriverChoice::Auto, |c| {
        c.data_dir = Some(dir.0.clone());
        c.durability = Some(ringcast::store::Durability::Sync);
        c.subject_ttl = 1;
        c.dedup_secs = 1;
    });
    for _ in 0..3 {
        node.publish("kept", "1");
    }
    common::eventually("the idle subject expires", || {
        node.metric("ringcast_subjects_dormant") == 1
    });
    assert_eq!(
        seqs(&history(&node, "kept")),
        vec![1, 2, 3],
        "read from the store"
    );
    let mut ws = node.ws();
    let (ok, _) = ws.request(r#"{"op":"sub","id":1,"subject":"kept","snapshot":true}"#);
    assert_eq!(ok["op"], "ok");
    assert_eq!(
        ws.recv_msgs(1)[0]["seq"],
        3,
        "the latest value stays for snapshots"
    );
    assert_eq!(node.publish("kept", "1")["seq"], 4);
}

#[test]
fn a_publish_that_would_create_a_subject_past_the_limit_gets_503() {
    // Two cores: one subject each. A standalone node: in cluster mode the stream sequences
    // publishes and the cap is not applied (documented with the flag).
    let node = start(DriverChoice::Auto, |c| {
        c.max_subjects = 2;
        c.durability = Some(ringcast::store::Durability::None);
    });
    let mut refused = 0;
    let mut created = Vec::new();
    for i in 0..10 {
        let body = format!(r#"{{"subject":"s{i}","data":1}}"#);
        let (status, _, resp) = http(node.addr, "POST", "/publish", &[], body.as_bytes());
        match status {
            200 => created.push(format!("s{i}")),
            503 => {
                assert!(String::from_utf8_lossy(&resp).contains("--max-subjects"));
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert!(created.len() <= 2 && refused >= 8, "{created:?}");
    assert_eq!(
        node.metric_labelled("ringcast_budget_refusals_total", "\"subjects\""),
        refused
    );
    assert_eq!(
        node.publish(&created[0], "2")["seq"],
        2,
        "existing subjects go on"
    );
}
