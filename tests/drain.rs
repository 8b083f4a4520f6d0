//! Drain for rolling deploys (SIGUSR2, `POST /admin/drain`): every WebSocket gets close 1012
//! with `{"reason":"draining","retry_ms":N}`, every SSE stream `retry: N` and a `drain` event
//! and then ends, and those closes count as `draining`; meanwhile `/healthz` answers 503
//! `draining`, new WebSockets and SSE streams get 503 with `Retry-After`, a publish is refused
//! with `draining`; once its connections are gone the node stops (the binary exits 0). In
//! cluster mode a subscriber of a drained node resumes on a peer with `since`: every message,
//! none twice. Waits are bounded; nothing asserts on timing.

mod common;

use common::nats::NatsServer;
use common::{eventually, http, read_response_buf, start, Frame, Node, Sse, Ws, IO_BOUND};
use ringcast::config::DriverChoice;
use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};

/// Raised in these tests so that an idle keep-alive connection ([`Held`]) outlasts them: the
/// node's drain waits for it, which keeps the node draining while the test looks at it.
const HANDSHAKE_TIMEOUT_MS: u64 = 120_000;

/// `--drain-retry-ms` of these tests: the largest hint a client may be given.
const RETRY_MS: u64 = 3_000;

/// A keep-alive HTTP connection opened before the drain: the node waits for it to close, so
/// the test can look at a draining node for as long as it holds it.
struct Held {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Held {
    fn open(addr: SocketAddr) -> Held {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_BOUND)).unwrap();
        let mut held = Held { s, buf: Vec::new() };
        let (status, head, _) = held.request("GET", "/healthz", b"");
        assert_eq!(status, 200, "{head}");
        assert!(!head.contains("Connection: close"), "{head}");
        held
    }

    /// One request on the held connection (keep-alive).
    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.s.write_all(req.as_bytes()).unwrap();
        self.s.write_all(body).unwrap();
        read_response_buf(&mut self.s, &mut self.buf)
    }
}

/// The spawned binary, killed if the test fails before it exits.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

/// The hint of a drain close reason or `drain` event, checked: `draining`, within bounds.
fn retry_ms(v: &Value, most: u64) -> u64 {
    assert_eq!(v["reason"], "draining", "{v}");
    let ms = v["retry_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retry_ms: {v}"));
    assert!(ms <= most, "retry_ms {ms} over --drain-retry-ms {most}");
    ms
}

/// Reads the close of a drained WebSocket: 1012 with the JSON reason; its `retry_ms`.
fn drained_close(c: &mut Ws, most: u64) -> u64 {
    assert_eq!(c.recv_close(), Some(1012), "close code");
    retry_ms(&json(c.close_reason.as_bytes()), most)
}

/// The status and body of a `draining` refusal: 503 with `retry_after_ms`.
fn assert_draining_body(status: u16, body: &[u8]) {
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(body));
    let v = json(body);
    assert_eq!(v["error"]["code"], "draining", "{v}");
    assert!(
        v["error"]["retry_after_ms"].as_u64().unwrap() <= RETRY_MS,
        "{v}"
    );
}

/// A whole `draining` refusal: also `Retry-After` in its head.
fn assert_draining_refusal(status: u16, head: &str, body: &[u8]) {
    assert_draining_body(status, body);
    assert!(head.contains("Retry-After: "), "{head}");
}

/// Sum of a series over cores, from Prometheus text.
fn series(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

fn sigusr2_drains_the_binary(driver: &str) {
    let (child, addr, _) = common::spawn_node(
        driver,
        &[
            "--drain-retry-ms",
            &RETRY_MS.to_string(),
            "--drain-timeout-ms",
            "120000",
            "--handshake-timeout-ms",
            &HANDSHAKE_TIMEOUT_MS.to_string(),
        ],
    );
    let mut child = Child(child);
    let mut clients: Vec<Ws> = (0..4)
        .map(|_| {
            let mut c = Ws::connect(addr);
            c.sub(1, "px.a");
            c
        })
        .collect();
    let mut sse = Sse::connect(addr, "/sse?subject=px.a", &[]);
    sse.next_named("hello");
    let mut held = Held::open(addr);
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGUSR2) };

    for c in &mut clients {
        drained_close(c, RETRY_MS);
    }
    drop(clients);
    let drain = sse.next_named("drain");
    let v = json(drain.data.as_bytes());
    assert_eq!(v["op"], "drain", "{v}");
    retry_ms(&v, RETRY_MS);
    assert_eq!(sse.next(), None, "the stream ends after its drain event");
    drop(sse);

    let (status, _, body) = http(addr, "GET", "/healthz", &[], b"");
    assert_eq!((status, &body[..]), (503, &b"draining\n"[..]));
    let (status, body) = Ws::try_connect(addr, "/ws", &[])
        .err()
        .expect("upgrade refused");
    assert_draining_body(status, body.as_bytes());
    let (status, head, body) = http(addr, "GET", "/sse?subject=px.a", &[], b"");
    assert_draining_refusal(status, &head, &body);
    let (_, _, metrics) = http(addr, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    let closes = "ringcast_closes_total{";
    let drained: u64 = metrics
        .lines()
        .filter(|l| l.starts_with(closes) && l.contains("reason=\"draining\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        drained, 5,
        "4 WebSockets and 1 SSE stream closed by the drain"
    );
    assert_eq!(series(&metrics, "ringcast_draining "), 1);

    let body = br#"{"subject":"px.a","data":1}"#;
    let (status, head, body) = held.request("POST", "/publish", body);
    assert_draining_refusal(status, &head, &body);
    assert!(head.contains("Connection: close"), "{head}");
    drop(held);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigusr2_sends_clients_away_refuses_newcomers_and_exits_0() {
    sigusr2_drains_the_binary("auto");
}

#[test]
fn sigusr2_sends_clients_away_refuses_newcomers_and_exits_0_on_epoll() {
    sigusr2_drains_the_binary("legacy");
}

fn post_admin_drain_from_loopback_drains_the_node_and_stops_it(d: DriverChoice) {
    let node = start(d, |c| {
        c.drain_retry_ms = 500;
        c.handshake_timeout_ms = HANDSHAKE_TIMEOUT_MS;
    });
    let mut ws = node.ws();
    ws.sub(1, "a.b");
    let mut held = Held::open(node.addr);
    let (status, head, body) = http(node.addr, "POST", "/admin/drain", &[], b"");
    assert_eq!(status, 202, "{head}");
    let v = json(&body);
    assert_eq!(
        (v["draining"].as_bool(), v["began"].as_bool()),
        (Some(true), Some(true))
    );
    let (status, _, body) = http(node.addr, "POST", "/admin/drain", &[], b"");
    assert_eq!(status, 202);
    assert_eq!(json(&body)["began"], false, "one drain at a time");
    drained_close(&mut ws, 500);
    drop(ws);
    let body = br#"[{"subject":"a.b","data":1}]"#;
    let (status, _, body) = held.request("POST", "/publish", body);
    assert_eq!(status, 200, "a batch answers per message");
    assert_eq!(json(&body)[0]["error"]["code"], "draining");
    drop(held);
    eventually("the drained node to stop", || {
        TcpStream::connect(node.addr).is_err()
    });
}

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

fn token(permissions: &[&str]) -> String {
    let exp = ringcast::os::now_ms() / 1000 + 3600;
    let claims = serde_json::json!({"sub":"ops","exp":exp,"permissions":permissions});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn with_auth_admin_drain_needs_the_admin_permission(d: DriverChoice) {
    let node = start(d, |c| c.jwt_secret = Some(SECRET.into()));
    let drain = |auth: Option<String>| {
        let header = auth.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Authorization", &h[..])).collect();
        http(node.addr, "POST", "/admin/drain", &headers, b"").0
    };
    assert_eq!(drain(None), 401, "no token");
    assert_eq!(drain(Some("not.a.token".into())), 401, "a bad token");
    assert_eq!(drain(Some(token(&["publish", "subscribe"]))), 403);
    assert_eq!(
        http(node.addr, "GET", "/healthz", &[], b"").0,
        200,
        "still serving"
    );
    assert_eq!(drain(Some(token(&["admin"]))), 202);
    eventually("the drained node to stop", || {
        TcpStream::connect(node.addr).is_err()
    });
}

fn cluster_node(d: DriverChoice, nats: &NatsServer) -> Node {
    let url = nats.url();
    start(d, move |c| {
        c.nats_url = Some(url);
        c.history = 1024;
        c.max_msgs_per_sec = 0;
    })
}

fn seq_data(msgs: &[Value]) -> Vec<(u64, Value)> {
    msgs.iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["data"].clone()))
        .collect()
}

/// The subscriber's story across a drain: what node A sent it up to its close, then what it
/// gets from node B after subscribing with `since` (the seq of the last message it saw).
fn a_subscriber_of_a_drained_node_resumes_on_a_peer_with_since(d: DriverChoice) {
    let nats = NatsServer::start();
    let (a, b) = (cluster_node(d, &nats), cluster_node(d, &nats));
    let mut client = a.ws();
    client.sub(1, "feed.d");
    for i in 1..=5 {
        a.publish("feed.d", &i.to_string()); // acknowledged before the drain
    }
    let mut seen = seq_data(&client.recv_msgs(2));
    let (status, _, _) = http(a.addr, "POST", "/admin/drain", &[], b"");
    assert_eq!(status, 202);
    for i in 6..=10 {
        b.publish("feed.d", &i.to_string()); // while the client is between nodes
    }
    loop {
        match client.recv_frame() {
            Some(Frame::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["op"] == "msg" {
                    seen.extend(seq_data(&[v]));
                }
            }
            Some(Frame::Close(code)) => {
                assert_eq!(code, Some(1012));
                break;
            }
            Some(_) => {}
            None => panic!("A ended the connection without a close frame"),
        }
    }
    retry_ms(&json(client.close_reason.as_bytes()), 5_000);
    drop(client);
    let last = seen.last().map_or(0, |(seq, _)| *seq);
    let mut again = b.ws();
    let sub = format!(r#"{{"op":"sub","id":1,"subject":"feed.d","since":{last}}}"#);
    assert_eq!(again.request(&sub).0["op"], "ok");
    for i in 11..=15 {
        b.publish("feed.d", &i.to_string()); // live on B
    }
    seen.extend(seq_data(&again.recv_msgs(15 - last as usize)));
    let (pong, extra) = again.request(r#"{"op":"ping","id":2}"#);
    assert_eq!(pong["op"], "pong");
    seen.extend(seq_data(&extra));
    let want: Vec<(u64, Value)> = (1..=15).map(|i| (i, Value::from(i))).collect();
    assert_eq!(
        seen, want,
        "every message once, in order, across the two nodes"
    );
}

on_both_drivers!(
    post_admin_drain_from_loopback_drains_the_node_and_stops_it,
    with_auth_admin_drain_needs_the_admin_permission,
    a_subscriber_of_a_drained_node_resumes_on_a_peer_with_since,
);
