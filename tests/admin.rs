//! The operator endpoints over real sockets: `/connz` lists every core's connections (gathered
//! over the bus) with what each is subscribed to, how much is queued for it, how far behind it
//! is and what it lost; it filters, sorts and pages within its bounds; `/varz` says what
//! `/metrics` says; with auth on they need a token with the `admin` permission, and without
//! auth they are served to loopback clients (every client here is one).

mod common;

use common::{eventually, http, start, Node, Sse, Ws};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ringcast::config::{Config, DriverChoice};
use ringcast::store::Durability;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

fn get(node: &Node, target: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, head, body) = http(node.addr, "GET", target, headers, b"");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{target}: {head}"
    );
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{target}: {e}: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

/// `GET /connz?query` on loopback without a token: its body.
fn connz(node: &Node, query: &str) -> Value {
    let (status, v) = get(node, &format!("/connz?{query}"), &[]);
    assert_eq!(status, 200, "{v}");
    v
}

fn rows(v: &Value) -> &Vec<Value> {
    v["connections"].as_array().expect("a connections list")
}

fn row<'a>(v: &'a Value, id: &str) -> &'a Value {
    rows(v)
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no row {id} in {v}"))
}

fn ids(v: &Value) -> Vec<String> {
    rows(v)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn small_rcvbuf(s: &socket2::Socket) {
    s.set_recv_buffer_size(4096).unwrap();
}

fn connz_lists_every_connection_of_every_core(d: DriverChoice) {
    let node = start(d, |_| {});
    // 24 connections: SO_REUSEPORT spreads them over both cores (all on one: 2^-23).
    let mut clients: Vec<Ws> = (0..24).map(|_| node.ws()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.sub(1, &format!("room.{i}"));
    }
    let mut sse = Sse::connect(node.addr, "/sse?subject=feed.>", &[]);
    let hello: Value = serde_json::from_str(&sse.next_named("hello").data).unwrap();
    let sse_session = hello["session"].as_str().unwrap().to_string();

    let v = connz(&node, "");
    assert_eq!(v["total"], 25, "{v}");
    let mut want: BTreeSet<String> = clients.iter().map(|c| c.session.clone()).collect();
    want.insert(sse_session.clone());
    let got: BTreeSet<String> = ids(&v).into_iter().collect();
    assert_eq!(got, want, "every session, once");
    assert_eq!(ids(&v), want.iter().cloned().collect::<Vec<_>>(), "by id");
    let cores: BTreeSet<u64> = rows(&v)
        .iter()
        .map(|r| r["core"].as_u64().unwrap())
        .collect();
    assert_eq!(cores, BTreeSet::from([0, 1]), "rows of both cores");
    for (i, c) in clients.iter().enumerate() {
        let r = row(&v, &c.session);
        let core = u64::from_str_radix(&c.session[..2], 16).unwrap();
        assert_eq!(r["core"], core, "the core its session id names: {r}");
        assert_eq!(r["kind"], "ws");
        assert_eq!(r["state"], "open");
        assert_eq!(r["remote"], c.stream.local_addr().unwrap().to_string());
        assert_eq!(r["subscriptions"], 1);
        assert_eq!(r["subjects"], json!([format!("room.{i}")]));
        assert_eq!(r["token_sub"], Value::Null, "auth is off");
        assert_eq!(
            (r["queue_bytes"].as_u64(), r["drops"].as_u64()),
            (Some(0), Some(0))
        );
    }
    let r = row(&v, &sse_session);
    assert_eq!(
        (&r["kind"], &r["subjects"]),
        (&json!("sse"), &json!(["feed.>"]))
    );
    assert_eq!(r["remote"], sse.stream.local_addr().unwrap().to_string());

    drop(clients.pop());
    eventually("a closed connection leaves the list", || {
        connz(&node, "")["total"] == 24
    });
}

fn connz_filters_sorts_and_pages_within_its_bounds(d: DriverChoice) {
    let node = start(d, |_| {});
    let patterns: [&[&str]; 5] = [
        &["prices.EURUSD"],
        &["prices.GBPUSD", "news.a"],
        &["news.b", "news.c", "news.d"],
        &["orders.1", "orders.2", "orders.3", "orders.4"],
        &["x.1", "x.2", "x.3", "x.4", "x.5"],
    ];
    let mut clients: Vec<Ws> = (0..patterns.len()).map(|_| node.ws()).collect();
    for (c, ps) in clients.iter_mut().zip(patterns) {
        for (i, p) in ps.iter().enumerate() {
            c.sub(i as u64 + 1, p);
        }
    }
    let session = |i: usize| clients[i].session.clone();
    let v = connz(&node, "subject=eur");
    assert_eq!((v["total"].as_u64(), ids(&v)), (Some(1), vec![session(0)]));
    let v = connz(&node, "subject=PRICES.");
    let want: BTreeSet<String> = [session(0), session(1)].into();
    assert_eq!(ids(&v).into_iter().collect::<BTreeSet<_>>(), want);
    assert_eq!(v["subject"], "prices.", "{v}");
    assert_eq!(connz(&node, "subject=nothing-matches")["total"], 0);

    let v = connz(&node, "sort=subscriptions");
    let by_subs: Vec<String> = (0..5).rev().map(session).collect();
    assert_eq!(ids(&v), by_subs, "most subscriptions first");
    let mut paged = Vec::new();
    for offset in [0, 2, 4] {
        let page = connz(
            &node,
            &format!("sort=subscriptions&limit=2&offset={offset}"),
        );
        assert_eq!(
            (page["total"].as_u64(), page["limit"].as_u64()),
            (Some(5), Some(2))
        );
        paged.extend(ids(&page));
    }
    assert_eq!(paged, by_subs, "pages follow each other without overlap");
    assert_eq!(
        connz(&node, "limit=100000")["limit"],
        1024,
        "limit is capped"
    );
}

fn connz_refuses_bad_queries_with_400_and_keeps_serving(d: DriverChoice) {
    let node = start(d, |_| {});
    let _c = node.ws();
    for q in [
        "sort=name",
        "limit=-1",
        "offset=x",
        "offset=16000&limit=1000",
    ] {
        let (status, v) = get(&node, &format!("/connz?{q}"), &[]);
        assert_eq!(status, 400, "{q}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{q}: {v}");
    }
    let (status, _, _) = http(node.addr, "POST", "/connz", &[], b"");
    assert_eq!(status, 405);
    assert_eq!(connz(&node, "")["total"], 1);
}

fn a_reader_that_stops_reading_shows_its_queued_bytes_and_how_far_behind_it_is(d: DriverChoice) {
    let node = start(d, |c| {
        c.durability = Some(Durability::None);
        c.max_unsent_bytes = 4096;
    });
    let mut slow = Ws::connect_raw(node.addr, small_rcvbuf).hello();
    slow.sub(1, "big");
    let mut fast = node.ws();
    fast.sub(1, "big");
    let mut p = node.ws();
    let payload = format!("\"{}\"", "x".repeat(4000));
    // 150 x 4 KB: far past what the kernel holds for the slow reader (a few KB), far below
    // its 1 MiB queue limit (it is not closed).
    let n = 150;
    for i in 0..n {
        let (ack, _) = p.request(&format!(
            r#"{{"op":"pub","id":{i},"subject":"big","data":{payload}}}"#
        ));
        assert_eq!(ack["op"], "ok", "{ack}");
    }
    fast.recv_msgs(n);
    eventually("the slow reader's queue is seen, and its age", || {
        let v = connz(&node, "sort=queue_bytes");
        let r = &rows(&v)[0];
        r["id"] == slow.session.as_str()
            && r["queue_bytes"].as_u64() > Some(100_000)
            && r["behind_ms"].as_u64() > Some(0)
    });
    let v = connz(&node, "sort=behind_ms");
    assert_eq!(
        rows(&v)[0]["id"],
        slow.session.as_str(),
        "furthest behind first"
    );
    let f = row(&v, &fast.session);
    assert_eq!(
        (f["queue_bytes"].as_u64(), f["behind_ms"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(row(&v, &slow.session)["state"], "open", "within its limit");
    eventually("the sweep publishes the queue gauges", || {
        node.metric("ringcast_queue_bytes") > 100_000 && node.metric("ringcast_queue_lag_ms") > 0
    });
    assert_eq!(node.metric("ringcast_slow_consumer_closes_total"), 0);
}

fn conflated_messages_count_as_drops_of_their_connection(d: DriverChoice) {
    let node = start(d, |c| {
        c.durability = Some(Durability::None);
        c.max_queue_bytes = 16 << 10;
        c.max_unsent_bytes = 4096;
    });
    let mut slow = Ws::connect_raw(node.addr, small_rcvbuf).hello();
    let (ok, _) = slow.request(r#"{"op":"sub","id":1,"subject":"q.*","conflate":true}"#);
    assert_eq!(ok["op"], "ok");
    let other = node.ws();
    let mut p = node.ws();
    let payload = format!("\"{}\"", "y".repeat(2000));
    for i in 0..400 {
        let subject = if i % 2 == 0 { "q.a" } else { "q.b" };
        let (ack, _) = p.request(&format!(
            r#"{{"op":"pub","id":{i},"subject":"{subject}","data":{payload}}}"#
        ));
        assert_eq!(ack["op"], "ok", "{ack}");
    }
    let v = connz(&node, "sort=drops");
    let r = &rows(&v)[0];
    assert_eq!(r["id"], slow.session.as_str(), "{v}");
    assert!(r["drops"].as_u64() > Some(0), "{r}");
    assert_eq!(r["state"], "open", "conflation keeps it open: {r}");
    assert_eq!(row(&v, &other.session)["drops"], 0);
    assert_eq!(
        r["drops"].as_u64(),
        Some(node.metric("ringcast_dropped_total")),
        "the node's drops are this connection's"
    );
}

fn varz_reports_the_counters_metrics_exports(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut sub = node.ws();
    sub.sub(1, "v.>");
    for i in 0..10 {
        node.publish(&format!("v.{i}"), "1");
    }
    sub.recv_msgs(10);
    // Series that a request of this test moves by itself, or the sweep may move meanwhile.
    let moving = [
        "connections",
        "http_requests_total",
        "bytes_out_total",
        "writes_total",
        "match_cache_bytes",
        "queue_bytes",
        "queue_lag_ms",
    ];
    let mut last = String::new();
    let same = (0..50).any(|_| {
        let (_, v) = get(&node, "/varz", &[]);
        let (_, _, text) = http(node.addr, "GET", "/metrics", &[], b"");
        let text = String::from_utf8(text).unwrap();
        let mut compared = 0;
        let mut differ = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: u64 = value.parse().unwrap();
            let name = series
                .split('{')
                .next()
                .unwrap()
                .strip_prefix("ringcast_")
                .unwrap();
            let got = match series.split_once("{core=\"") {
                None => &v["node"][name],
                Some((_, labels)) => {
                    let core: usize = labels.split('"').next().unwrap().parse().unwrap();
                    let c = &v["cores"][core];
                    match labels
                        .split_once(",")
                        .map(|(_, l)| l.split('"').nth(1).unwrap())
                    {
                        Some(label) => &c[name][label],
                        None => &c[name],
                    }
                }
            };
            if moving.contains(&name) {
                continue;
            }
            compared += 1;
            if got.as_u64() != Some(value) {
                differ.push(format!("{line} vs {got}"));
            }
        }
        // 84 when written: every per-core, labelled and node series but the moving ones.
        assert!(compared > 60, "only {compared} series compared");
        last = differ.join("; ");
        differ.is_empty()
    });
    assert!(same, "/varz and /metrics differ: {last}");
    let (_, v) = get(&node, "/varz", &[]);
    assert_eq!(v["server"]["cores"], 2);
    assert_eq!(v["server"]["health"], "ok");
    assert_eq!(v["server"]["auth"], false);
    let published: u64 = (0..2)
        .map(|c| v["cores"][c]["published_total"].as_u64().unwrap())
        .sum();
    assert_eq!(published, 10);
}

fn hs(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

fn token(sub: &str, permissions: &[&str]) -> String {
    let exp = ringcast::os::now_ms() / 1000 + 3600;
    hs(&json!({"sub":sub,"exp":exp,"permissions":permissions,"allowed_subjects":[">"]}))
}

fn with_secret(c: &mut Config) {
    c.jwt_secret = Some(SECRET.into());
}

fn with_auth_the_operator_endpoints_need_an_admin_token(d: DriverChoice) {
    let node = start(d, with_secret);
    let user = token("user-7", &["subscribe"]);
    let mut ws = Ws::try_connect(node.addr, &format!("/ws?token={user}"), &[])
        .unwrap()
        .hello();
    ws.sub(1, "prices.>");
    for path in ["/connz", "/varz"] {
        let (status, v) = get(&node, path, &[]);
        assert_eq!(
            (status, &v["error"]["code"]),
            (401, &json!("unauthorized")),
            "{path}"
        );
        let bearer = format!("Bearer {user}");
        let (status, v) = get(&node, path, &[("Authorization", &bearer)]);
        assert_eq!(
            (status, &v["error"]["code"]),
            (403, &json!("forbidden")),
            "{path}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains("admin"),
            "{v}"
        );
    }
    let admin = format!("Bearer {}", token("ops", &["admin"]));
    let auth = [("Authorization", admin.as_str())];
    let (status, v) = get(&node, "/connz?subject=user-7", &auth);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        ids(&v),
        vec![ws.session.clone()],
        "found by its token's sub"
    );
    assert_eq!(rows(&v)[0]["token_sub"], "user-7");
    let (status, v) = get(&node, "/varz", &auth);
    assert_eq!((status, &v["server"]["auth"]), (200, &json!(true)), "{v}");
    // The page holds no data: served to anyone, it asks for a token for its JSON calls.
    let (status, head, body) = http(node.addr, "GET", "/admin", &[], b"");
    assert_eq!(status, 200);
    assert!(head.contains("text/html"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("/connz"));
}

on_both_drivers!(
    connz_lists_every_connection_of_every_core,
    connz_filters_sorts_and_pages_within_its_bounds,
    connz_refuses_bad_queries_with_400_and_keeps_serving,
    a_reader_that_stops_reading_shows_its_queued_bytes_and_how_far_behind_it_is,
    conflated_messages_count_as_drops_of_their_connection,
    varz_reports_the_counters_metrics_exports,
    with_auth_the_operator_endpoints_need_an_admin_token,
);
