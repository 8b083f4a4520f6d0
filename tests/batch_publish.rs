//! Batch publishing and the publish limit: a `pubs` op (and an array body of `POST /publish`)
//! is answered once, one entry per message in order; each message is validated, authorised,
//! de-duplicated and sequenced on its own; publishes count against their own per-connection
//! limit, so a feed is not stopped by `--max-msgs-per-sec`. Real servers over loopback, bounded
//! loops, no timing assertions.

mod common;

use common::nats::NatsServer;
use common::{http, read_response_buf, start, Node, Ws};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ringcast::config::{Config, DriverChoice};
use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

fn token(claims: Value) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut claims = claims;
    claims["exp"] = json!(exp);
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

/// A publisher on every subject, with `extra` claims.
fn publisher(extra: Value) -> String {
    let mut claims =
        json!({"sub":"feed","permissions":["publish","subscribe"],"allowed_subjects":[">"]});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    token(claims)
}

fn with_auth(c: &mut Config) {
    c.jwt_secret = Some(SECRET.into());
}

fn ws_with(node: &Node, token: &str) -> Ws {
    let bearer = format!("Bearer {token}");
    let mut ws =
        Ws::try_connect(node.addr, "/ws", &[("Authorization", &bearer)]).expect("upgrade accepted");
    assert_eq!(ws.recv_json()["op"], "hello");
    ws
}

/// Sends a `pubs` op with `msgs` and returns its `ok`'s `acks`.
fn pubs(c: &mut Ws, id: u64, msgs: Value) -> Vec<Value> {
    let op = json!({"op":"pubs","id":id,"msgs":msgs}).to_string();
    let (r, _) = c.request(&op);
    assert_eq!(r["op"], "ok", "{r}");
    r["acks"].as_array().expect("acks").clone()
}

fn seq(ack: &Value) -> u64 {
    ack["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("not an ack: {ack}"))
}

fn error_code(ack: &Value) -> &str {
    ack["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {ack}"))
}

fn a_batch_is_acked_in_order_with_each_subjects_seq(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut c = node.ws();
    let msgs = json!([
        {"subject":"b.one","data":1},
        {"subject":"b.two","data":2},
        {"subject":"b.one","data":3},
        {"subject":"b.one","data":4},
        {"subject":"b.two","data":5},
    ]);
    let acks = pubs(&mut c, 1, msgs);
    let seqs: Vec<u64> = acks.iter().map(seq).collect();
    assert_eq!(seqs, [1, 1, 2, 3, 2]);
    assert!(acks
        .iter()
        .all(|a| a["ts"].as_u64().is_some() && a.get("duplicate").is_none()));
}

fn a_bad_message_gets_its_own_error_and_its_neighbours_are_delivered(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut sub = node.ws();
    sub.sub(1, "feed.>");
    let mut c = node.ws();
    let msgs = json!([
        {"subject":"feed.a","data":"first"},
        {"subject":"feed.*","data":"wildcard"},
        {"subject":"feed.a"},
        {"subject":"feed.a","data":"last","msg_id":""},
        {"subject":"feed.a","data":"second"},
    ]);
    let acks = pubs(&mut c, 2, msgs);
    assert_eq!(seq(&acks[0]), 1);
    for bad in &acks[1..4] {
        assert_eq!(error_code(bad), "bad_request");
    }
    assert!(acks[2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("'data'"));
    assert_eq!(seq(&acks[4]), 2);
    let got: Vec<(u64, Value)> = sub
        .recv_msgs(2)
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["data"].clone()))
        .collect();
    assert_eq!(got, [(1, json!("first")), (2, json!("second"))]);
}

#[test]
fn a_forbidden_subject_in_a_batch_is_refused_alone() {
    let node = start(DriverChoice::Auto, with_auth);
    let t = token(json!({"sub":"user-1","permissions":["publish"],
        "pub":{"allow":["orders.user-1.>"]}}));
    let mut c = ws_with(&node, &t);
    let msgs = json!([
        {"subject":"orders.user-1.a","data":1},
        {"subject":"orders.user-2.a","data":2},
        {"subject":"orders.user-1.a","data":3},
    ]);
    let acks = pubs(&mut c, 3, msgs);
    assert_eq!(
        (seq(&acks[0]), error_code(&acks[1]), seq(&acks[2])),
        (1, "forbidden", 2)
    );
    let refused = node.metric_labelled("ringcast_publishes_refused_total", "forbidden");
    assert_eq!(refused, 1);
}

#[test]
fn a_repeated_msg_id_is_a_duplicate_within_a_batch_and_across_batches() {
    let node = start(DriverChoice::Auto, |_| {});
    let mut c = node.ws();
    let first = pubs(
        &mut c,
        1,
        json!([{"subject":"d.s","data":1,"msg_id":"m1"},{"subject":"d.s","data":1,"msg_id":"m1"}]),
    );
    assert_eq!((seq(&first[0]), first[0].get("duplicate")), (1, None));
    assert_eq!((seq(&first[1]), &first[1]["duplicate"]), (1, &json!(true)));
    assert_eq!(first[1]["ts"], first[0]["ts"], "the original's ts");
    let again = pubs(
        &mut c,
        2,
        json!([{"subject":"d.s","data":1,"msg_id":"m1"},{"subject":"d.s","data":2,"msg_id":"m2"}]),
    );
    assert_eq!((seq(&again[0]), &again[0]["duplicate"]), (1, &json!(true)));
    assert_eq!((seq(&again[1]), again[1].get("duplicate")), (2, None));
}

#[test]
fn a_batch_over_the_message_limit_is_refused_whole() {
    let node = start(DriverChoice::Auto, |_| {});
    let mut c = node.ws();
    let msgs: Vec<Value> = (0..ringcast::proto::MAX_BATCH_MSGS + 1)
        .map(|i| json!({"subject":"big.s","data":i}))
        .collect();
    let (r, _) = c.request(&json!({"op":"pubs","id":7,"msgs":msgs}).to_string());
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("err"), Some("bad_request"))
    );
    assert!(
        r["message"].as_str().unwrap().contains("at most 1000"),
        "{r}"
    );
    let acks = pubs(&mut c, 8, json!([{"subject":"big.s","data":0}]));
    assert_eq!(
        seq(&acks[0]),
        1,
        "nothing of the refused batch was published"
    );
}

#[test]
fn an_empty_batch_is_a_bad_request() {
    let node = start(DriverChoice::Auto, |_| {});
    let mut c = node.ws();
    for op in [
        r#"{"op":"pubs","id":9,"msgs":[]}"#,
        r#"{"op":"pubs","id":9}"#,
    ] {
        let (r, _) = c.request(op);
        assert_eq!(
            (r["op"].as_str(), r["code"].as_str()),
            (Some("err"), Some("bad_request"))
        );
    }
}

fn post(node: &Node, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let (status, _, resp) = http(node.addr, "POST", "/publish", headers, body.as_bytes());
    (status, serde_json::from_slice(&resp).unwrap())
}

fn an_array_body_gets_one_result_per_item_in_order(d: DriverChoice) {
    let node = start(d, |_| {});
    let items = json!([
        {"subject":"h.a","data":1},
        {"subject":"h.a","data":2,"at":1},
        {"subject":"h..a","data":3},
        {"subject":"h.a","data":4,"msg_id":"x"},
        {"subject":"h.a","data":4,"msg_id":"x"},
    ]);
    let (status, r) = post(&node, &[], &items);
    assert_eq!(status, 200, "{r}");
    let r = r.as_array().unwrap();
    assert_eq!(r.len(), 5);
    assert_eq!(seq(&r[0]), 1);
    assert_eq!(error_code(&r[1]), "bad_request");
    assert!(r[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("scheduled"));
    assert_eq!(error_code(&r[2]), "bad_request");
    assert_eq!(
        (seq(&r[3]), seq(&r[4]), &r[4]["duplicate"]),
        (2, 2, &json!(true))
    );
    let (status, r) = post(&node, &[], &json!([]));
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[test]
fn a_single_body_is_answered_as_before() {
    let node = start(DriverChoice::Auto, |_| {});
    let (status, r) = post(&node, &[], &json!({"subject":"one.s","data":{"p":1}}));
    assert_eq!(status, 200);
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["seq", "subject", "ts"]);
    assert_eq!(
        (r["subject"].as_str(), r["seq"].as_u64()),
        (Some("one.s"), Some(1))
    );
}

#[test]
fn an_array_body_needs_the_publish_permission_per_item() {
    let node = start(DriverChoice::Auto, with_auth);
    let t = token(json!({"permissions":["publish"],"allowed_subjects":["mine.>"]}));
    let bearer = format!("Bearer {t}");
    let items = json!([{"subject":"mine.a","data":1},{"subject":"theirs.a","data":2}]);
    let (status, r) = post(&node, &[("Authorization", &bearer)], &items);
    assert_eq!(
        (status, seq(&r[0]), error_code(&r[1])),
        (200, 1, "forbidden")
    );
    let (status, _) = post(&node, &[], &items);
    assert_eq!(status, 401, "the token is checked before the body");
}

#[test]
fn a_token_with_max_publish_rate_5_is_refused_from_its_6th_publish() {
    let node = start(DriverChoice::Auto, with_auth);
    let mut c = ws_with(&node, &publisher(json!({"max_publish_rate":5})));
    let msgs: Vec<Value> = (0..10).map(|i| json!({"subject":"r.s","data":i})).collect();
    let acks = pubs(&mut c, 1, json!(msgs));
    let seqs: Vec<u64> = acks[..5].iter().map(seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "one second of burst");
    for refused in &acks[5..] {
        assert_eq!(error_code(refused), "rate_limited");
        let wait = refused["error"]["retry_after_ms"]
            .as_u64()
            .expect("retry_after_ms");
        assert!(
            (1..=200).contains(&wait),
            "one token per 200 ms at 5/s: {wait}"
        );
    }
    let counted = node.metric_labelled("ringcast_publishes_refused_total", "rate_limited");
    assert_eq!(counted, 5);
}

#[test]
fn pipelined_pubs_over_the_rate_get_rate_limited_with_retry_after_ms_in_their_place() {
    let node = start(DriverChoice::Auto, with_auth);
    let mut c = ws_with(&node, &publisher(json!({"max_publish_rate":5})));
    // 5 fit the burst; at 5/s the other 195 could only all fit if reading them took 39 s,
    // past any bound of this suite.
    let replies = pipeline_pubs(&mut c, 200, 1);
    let ids: Vec<u64> = replies.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(
        ids,
        (0..200).collect::<Vec<u64>>(),
        "answered in the order sent"
    );
    assert!(replies[..5].iter().all(|r| r["op"] == "ok"), "{replies:?}");
    let limited: Vec<&Value> = replies.iter().filter(|r| r["op"] == "err").collect();
    assert!(!limited.is_empty());
    for r in limited {
        assert_eq!(r["code"], "rate_limited");
        assert!((1..=200).contains(&r["retry_after_ms"].as_u64().expect("retry_after_ms")));
    }
}

/// Sends `n` `pub` ops on `subjects` subjects (`burst.s0`..) in one burst from another thread
/// while this one reads their replies.
fn pipeline_pubs(c: &mut Ws, n: usize, subjects: usize) -> Vec<Value> {
    let mut burst = Vec::new();
    for i in 0..n {
        let subject = format!("burst.s{}", i % subjects);
        let op = json!({"op":"pub","id":i,"subject":subject,"data":i});
        let mask = [1, 2, 3, 4];
        burst.extend(ringcast::ws::client_frame(
            0x1,
            true,
            op.to_string().as_bytes(),
            mask,
        ));
    }
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&burst).unwrap());
    let replies = (0..n).map(|_| c.recv_json()).collect();
    writer.join().unwrap();
    replies
}

#[test]
fn pipelined_pubs_on_subjects_of_every_core_are_acked_in_the_order_sent() {
    let node = start(DriverChoice::Auto, |_| {});
    let mut c = node.ws();
    // Eight subjects spread over both cores: a subject owned by the connection's core is
    // sequenced at once, one owned by the other core a bus round trip later; the acks still
    // leave in the order of the pubs. 6,000: under the 8,192 publishes a cluster bridge queues
    // (`cluster::MAX_PENDING_PUBLISHES`), past which cluster mode refuses the rest at once.
    let replies = pipeline_pubs(&mut c, 6_000, 8);
    let refused: Vec<&Value> = replies.iter().filter(|r| r["op"] != "ok").collect();
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        refused.first()
    );
    let ids: Vec<u64> = replies.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..6_000).collect::<Vec<u64>>());
    let mut last_seq = [0u64; 8];
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(last_seq[i % 8] + 1), "{r}");
        last_seq[i % 8] += 1;
    }
}

#[test]
fn a_malformed_pub_in_a_pipeline_is_answered_in_its_place() {
    let node = start(DriverChoice::Auto, |_| {});
    let mut c = node.ws();
    let mut burst = String::new();
    for i in 0..300 {
        // Every tenth has a wildcard subject; the others alternate over both cores' subjects.
        let subject = if i % 10 == 5 {
            "bad.*".to_string()
        } else {
            format!("m.s{}", i % 4)
        };
        burst.push_str(&json!({"op":"pub","id":i,"subject":subject,"data":i}).to_string());
        c.send(&burst);
        burst.clear();
    }
    let replies: Vec<Value> = (0..300).map(|_| c.recv_json()).collect();
    let ids: Vec<u64> = replies.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..300).collect::<Vec<u64>>());
    for r in &replies {
        let bad = r["id"].as_u64().unwrap() % 10 == 5;
        assert_eq!(r["op"], if bad { "err" } else { "ok" }, "{r}");
    }
}

#[test]
fn pubs_do_not_count_against_max_msgs_per_sec_and_a_batch_counts_once() {
    let node = start(DriverChoice::Auto, |c| c.max_msgs_per_sec = 1);
    let mut c = node.ws();
    let replies = pipeline_pubs(&mut c, 500, 8);
    assert!(replies.iter().all(|r| r["op"] == "ok"));
    let msgs: Vec<Value> = (0..500)
        .map(|i| json!({"subject":"once.s","data":i}))
        .collect();
    let acks = pubs(&mut c, 1, json!(msgs));
    assert!(
        acks.iter().all(|a| a["seq"].is_u64()),
        "one message's worth of the limit"
    );
}

#[test]
fn http_publishes_over_the_rate_get_429_with_retry_after() {
    let node = start(DriverChoice::Auto, with_auth);
    let bearer = format!("Bearer {}", publisher(json!({"max_publish_rate":1})));
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(common::IO_BOUND)).unwrap();
    let mut buf = Vec::new();
    let mut send = |body: &str| {
        let req = format!(
            "POST /publish HTTP/1.1\r\nHost: t\r\nAuthorization: {bearer}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        read_response_buf(&mut s, &mut buf)
    };
    // One connection's limit, request after request; a batch reads the clock once.
    let (status, _, body) = send(r#"[{"subject":"q.s","data":1},{"subject":"q.s","data":2}]"#);
    let r: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, seq(&r[0]), error_code(&r[1])),
        (200, 1, "rate_limited")
    );
    let wait = r[1]["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=1000).contains(&wait), "{wait}");
    // The bucket is empty and refills one token a second: of 40 single publishes sent back to
    // back, some are refused (all passing would take 39 s, past any bound of this suite).
    let refused = (0..40)
        .map(|i| send(&format!(r#"{{"subject":"q.s","data":{i}}}"#)))
        .find(|(status, _, _)| *status != 200);
    let (status, head, body) = refused.expect("a publish over the limit");
    let r: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(r["error"]["retry_after_ms"]
        .as_u64()
        .is_some_and(|ms| (1..=1000).contains(&ms)));
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("retry-after: 1")),
        "{head}"
    );
}

#[test]
fn a_batch_in_cluster_mode_is_sequenced_in_order_by_the_stream() {
    let nats = NatsServer::start();
    let url = nats.url();
    let node = start(DriverChoice::Auto, move |c| c.nats_url = Some(url));
    common::eventually("the cluster is ready", || {
        common::http_status(node.addr, "GET", "/healthz", &[]) == 200
    });
    let mut sub = node.ws();
    sub.sub(1, "cl.>");
    let mut c = node.ws();
    let msgs = json!([
        {"subject":"cl.a","data":1,"msg_id":"c1"},
        {"subject":"cl.b","data":2},
        {"subject":"cl.a","data":3},
        {"subject":"cl.*","data":4},
        {"subject":"cl.a","data":1,"msg_id":"c1"},
    ]);
    let acks = pubs(&mut c, 1, msgs);
    assert_eq!((seq(&acks[0]), seq(&acks[1]), seq(&acks[2])), (1, 1, 2));
    assert_eq!(error_code(&acks[3]), "bad_request");
    assert_eq!((seq(&acks[4]), &acks[4]["duplicate"]), (1, &json!(true)));
    let on_a: Vec<u64> = sub
        .recv_msgs(3)
        .iter()
        .filter(|m| m["subject"] == "cl.a")
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        on_a,
        [1, 2],
        "in the batch's order, the duplicate not delivered again"
    );
}

on_both_drivers!(
    a_batch_is_acked_in_order_with_each_subjects_seq,
    a_bad_message_gets_its_own_error_and_its_neighbours_are_delivered,
    an_array_body_gets_one_result_per_item_in_order,
);
