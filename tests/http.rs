//! The HTTP side of the port: health, metrics, publish, history, errors, limits, keep-alive.

mod common;

use common::{http, http_status, read_response, start};
use ringcast::config::DriverChoice;
use ringcast::store::Durability;
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap()
}

fn error_code(status_body: (u16, String, Vec<u8>)) -> (u16, String) {
    let (status, _, body) = status_body;
    let v = json(&body);
    (status, v["error"]["code"].as_str().unwrap().to_string())
}

fn healthz_and_metrics_answer(d: DriverChoice) {
    let node = start(d, |_| {});
    let (status, _, body) = http(node.addr, "GET", "/healthz", &[], b"");
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    node.publish("m.x", "1");
    let (status, head, body) = http(node.addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert!(head.contains("text/plain"));
    let text = String::from_utf8(body).unwrap();
    for name in [
        "ringcast_connections",
        "ringcast_subscriptions",
        "ringcast_published_total",
        "ringcast_delivered_total",
        "ringcast_dropped_total",
        "ringcast_slow_consumer_closes_total",
        "ringcast_bus_depth",
    ] {
        assert!(
            text.contains(&format!("{name}{{core=\"0\"}}")),
            "{name} per core"
        );
        assert!(
            text.contains(&format!("{name}{{core=\"1\"}}")),
            "{name} per core"
        );
    }
    assert_eq!(node.metric("ringcast_published_total"), 1);
}

fn publish_then_history(d: DriverChoice) {
    let node = start(d, |c| {
        c.history = 3;
        // first_seq is the ring's (a store would report its own, older one).
        c.durability = Some(Durability::None);
    });
    for i in 1..=5 {
        let r = node.publish("h.s", &format!(r#"{{"n":{i}}}"#));
        assert_eq!(r["seq"], i);
        assert_eq!(r["subject"], "h.s");
    }
    let (status, _, body) = http(node.addr, "GET", "/history/h.s", &[], b"");
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(
        (
            v["subject"].as_str(),
            v["first_seq"].as_u64(),
            v["last_seq"].as_u64()
        ),
        (Some("h.s"), Some(3), Some(5))
    );
    let seqs: Vec<u64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    assert_eq!(v["messages"][0]["data"]["n"], 3);
    let (_, _, body) = http(node.addr, "GET", "/history/h.s?since=3&limit=1", &[], b"");
    let v = json(&body);
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    assert_eq!(v["messages"][0]["seq"], 4);
    let (_, _, body) = http(node.addr, "GET", "/history/never.published", &[], b"");
    assert_eq!(json(&body)["messages"].as_array().unwrap().len(), 0);
}

fn http_errors_have_status_and_json_body(d: DriverChoice) {
    let node = start(d, |c| {
        c.max_body_bytes = 1024;
        c.max_header_bytes = 2048;
    });
    let a = node.addr;
    assert_eq!(
        error_code(http(a, "GET", "/nope", &[], b"")),
        (404, "not_found".into())
    );
    assert_eq!(
        error_code(http(a, "GET", "/publish", &[], b"")),
        (405, "method_not_allowed".into())
    );
    assert_eq!(
        error_code(http(a, "POST", "/healthz", &[], b"")),
        (405, "method_not_allowed".into())
    );
    assert_eq!(
        error_code(http(a, "POST", "/publish", &[], b"{oops")),
        (400, "bad_request".into())
    );
    assert_eq!(
        error_code(http(
            a,
            "POST",
            "/publish",
            &[],
            br#"{"subject":"a.>","data":1}"#
        )),
        (400, "bad_request".into())
    );
    assert_eq!(
        error_code(http(a, "POST", "/publish", &[], br#"{"subject":"a"}"#)),
        (400, "bad_request".into())
    );
    assert_eq!(
        error_code(http(a, "GET", "/history/a.*", &[], b"")),
        (400, "bad_request".into())
    );
    assert_eq!(
        error_code(http(a, "GET", "/history/a?since=-1", &[], b"")),
        (400, "bad_request".into())
    );
    let big = vec![b'x'; 2000];
    assert_eq!(
        error_code(http(a, "POST", "/publish", &[], &big)),
        (413, "too_large".into())
    );
    let long = "y".repeat(3000);
    assert_eq!(
        error_code(http(a, "GET", "/healthz", &[("X-Long", &long)], b"")),
        (431, "too_large".into())
    );
    let (status, _, _) = {
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(b"GARBAGE\x01\x02\r\n\r\n").unwrap();
        read_response(&mut s)
    };
    assert_eq!(status, 400);
    // Still serving.
    assert_eq!(http_status(a, "GET", "/healthz", &[]), 200);
}

fn keep_alive_serves_several_requests_on_one_connection(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(common::IO_BOUND)).unwrap();
    // Two pipelined requests, then a third after the answers.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nPOST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 27\r\n\r\n{\"subject\":\"k\",\"data\":true}").unwrap();
    let mut buf = Vec::new();
    assert_eq!(common::read_response_buf(&mut s, &mut buf).0, 200);
    let (status, head, body) = common::read_response_buf(&mut s, &mut buf);
    assert_eq!(status, 200);
    assert!(head.contains("Connection: keep-alive"));
    assert_eq!(json(&body)["seq"], 1);
    s.write_all(b"GET /history/k HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (status, _, body) = common::read_response_buf(&mut s, &mut buf);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["messages"][0]["data"], true);
}

fn connections_over_the_limit_get_503(d: DriverChoice) {
    let node = start(d, |c| c.max_connections = 3);
    let held: Vec<_> = (0..3).map(|_| node.ws()).collect();
    let (status, _, body) = http(node.addr, "GET", "/healthz", &[], b"");
    assert_eq!(status, 503);
    assert_eq!(json(&body)["error"]["code"], "overloaded");
    // Free the slots; the node notices the closes and admits again (bounded wait).
    drop(held);
    let admitted = (0..500).any(|_| {
        let ok = http_status(node.addr, "GET", "/healthz", &[]) == 200;
        if !ok {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        ok
    });
    assert!(admitted, "admits again once connections closed");
    assert!(node.metric("ringcast_rejected_total") >= 1);
}

/// Reads a response head only (through the blank line), leaving what follows in `buf`: the
/// way a client reads the answer to `HEAD`, which has no body whatever its Content-Length.
fn read_head_only(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = common::find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return head;
        }
        let n = common::read_some(s, &mut chunk).expect("response head");
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A header's value in a response head (first match, name case-insensitive).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The next response on `s` starts right where the previous one ended.
fn next_response_starts_here(s: &mut TcpStream, buf: &mut Vec<u8>, after: &str) {
    let mut chunk = [0u8; 4096];
    while buf.len() < 9 {
        let n = common::read_some(s, &mut chunk).expect("next response");
        assert!(n > 0, "connection closed after {after}");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 "),
        "bytes after the {after} head are not the next response: {:?}",
        String::from_utf8_lossy(&buf[..buf.len().min(60)])
    );
}

fn head_is_answered_with_get_headers_and_no_body_on_a_kept_alive_connection(d: DriverChoice) {
    let node = start(d, |_| {});
    let (status, get_head, get_body) = http(node.addr, "GET", "/", &[], b"");
    assert_eq!(status, 200);
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(common::IO_BOUND)).unwrap();
    let mut buf = Vec::new();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let head = read_head_only(&mut s, &mut buf);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len = get_body.len().to_string();
    assert_eq!(header(&head, "content-length"), Some(len.as_str()));
    assert_eq!(
        header(&head, "content-type"),
        header(&get_head, "content-type")
    );
    assert_eq!(header(&head, "connection"), Some("keep-alive"));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    next_response_starts_here(&mut s, &mut buf, "HEAD /");
    let (status, _, body) = common::read_response_buf(&mut s, &mut buf);
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    // A refused HEAD (405) has no body either; the connection still serves.
    s.write_all(
        b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    let head = read_head_only(&mut s, &mut buf);
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert_eq!(header(&head, "allow"), Some("GET"));
    next_response_starts_here(&mut s, &mut buf, "HEAD /metrics");
    let (status, _, body) = common::read_response_buf(&mut s, &mut buf);
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
}

/// A publish of `{"subject":"cl","data":1}` sent with `Content-Length: <value>`.
fn publish_with_content_length(addr: std::net::SocketAddr, value: &str) -> (u16, Vec<u8>) {
    let body = br#"{"subject":"cl","data":1}"#;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::IO_BOUND)).unwrap();
    let head = format!("POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length:{value}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let (status, _, body) = read_response(&mut s);
    (status, body)
}

fn a_content_length_that_is_not_only_digits_is_refused_with_400(d: DriverChoice) {
    let node = start(d, |_| {});
    let n = br#"{"subject":"cl","data":1}"#.len();
    for value in [
        format!(" +{n}"),
        format!(" -{n}"),
        format!(" {n} {n}"),
        format!(" {n},{n}"),
        format!(" 0x{n:x}"),
        format!(" {n}.0"),
        " \u{a0}25".into(),
        String::new(),
        " ".into(),
        " 99999999999999999999999999".into(),
    ] {
        let (status, body) = publish_with_content_length(node.addr, &value);
        assert_eq!(status, 400, "Content-Length:{value:?}");
        let v = json(&body);
        assert_eq!(v["error"]["code"], "bad_request", "{value:?}");
    }
    // Whitespace around the digits is not part of the value (RFC 9110 5.5): accepted.
    for value in [
        format!("{n}"),
        format!(" {n}"),
        format!("\t{n} \t"),
        format!(" 0{n}"),
    ] {
        assert_eq!(
            publish_with_content_length(node.addr, &value).0,
            200,
            "Content-Length:{value:?}"
        );
    }
}

/// Every JSON or plain-text HTTP body ends in exactly one newline, counted in its
/// Content-Length (so `curl` leaves the prompt on a line of its own).
fn http_text_and_json_bodies_end_in_one_newline(d: DriverChoice) {
    let node = start(d, |_| {});
    let publish = br#"{"subject":"nl.a","data":{"x":1}}"#;
    let batch = br#"[{"subject":"nl.a","data":2},{"subject":"nl.b","data":3}]"#;
    let answers = [
        ("GET", "/healthz", &b""[..]),
        ("POST", "/publish", publish),
        ("POST", "/publish", batch),
        ("GET", "/history/nl.a", b""),
        ("GET", "/schedule?subject=nl.a", b""),
        ("GET", "/history/bad..subject", b""),
        ("GET", "/no-such-endpoint", b""),
        ("POST", "/healthz", b""),
    ];
    for (method, path, body) in answers {
        let (status, head, body) = http(node.addr, method, path, &[], body);
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.ends_with('\n') && text.trim_end().len() == text.len() - 1,
            "{method} {path} ({status}): {text:?}"
        );
        if head.contains("application/json") {
            serde_json::from_str::<Value>(&text).expect("still one JSON value");
        }
    }
}

/// The newline is HTTP's only: WebSocket replies and messages are the same bytes as before.
fn websocket_frames_carry_no_trailing_newline(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut ws = node.ws();
    ws.sub(1, "nl.ws");
    ws.send(r#"{"op":"pub","id":2,"subject":"nl.ws","data":{"x":1}}"#);
    let mut frames = Vec::new();
    while frames.len() < 2 {
        match ws.recv_frame() {
            Some(common::Frame::Text(t)) => frames.push(t),
            other => panic!("expected the ok and the msg, got {other:?}"),
        }
    }
    for f in &frames {
        assert!(f.ends_with('}'), "{f:?}");
    }
    assert!(
        frames.iter().any(|f| f.starts_with(r#"{"op":"msg""#)),
        "{frames:?}"
    );
}

on_both_drivers!(
    http_text_and_json_bodies_end_in_one_newline,
    websocket_frames_carry_no_trailing_newline,
    healthz_and_metrics_answer,
    publish_then_history,
    http_errors_have_status_and_json_body,
    keep_alive_serves_several_requests_on_one_connection,
    connections_over_the_limit_get_503,
    head_is_answered_with_get_headers_and_no_body_on_a_kept_alive_connection,
    a_content_length_that_is_not_only_digits_is_refused_with_400,
);
