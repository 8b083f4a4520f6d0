//! Bad input gets a clear answer (an `err` frame, a close code, an HTTP status) and the node
//! keeps serving everyone else. Runs on io_uring and on the legacy epoll driver.

mod common;

use common::{start, Frame, Ws};
use ringcast::config::DriverChoice;
use std::io::{Read, Write};
use std::net::TcpStream;

/// After an error the connection still works: a ping gets its pong.
fn still_serves(c: &mut Ws) {
    let (r, _) = c.request(r#"{"op":"ping","id":"alive"}"#);
    assert_eq!(r["op"], "pong");
}

fn malformed_ops_get_err_frames_and_the_connection_stays_open(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut c = node.ws();
    let cases = [
        ("{not json", None, "malformed JSON"),
        (r#"{"op":"fly","id":1}"#, Some("1"), "unknown op"),
        (
            r#"{"op":"sub","id":2,"subject":"a..b"}"#,
            Some("2"),
            "empty token",
        ),
        (r#"{"op":"sub","id":3}"#, Some("3"), "'subject'"),
        (
            r#"{"op":"pub","id":4,"subject":"a.*","data":1}"#,
            Some("4"),
            "wildcard",
        ),
        (r#"{"op":"pub","id":5,"subject":"a"}"#, Some("5"), "'data'"),
        (
            r#"{"op":"sub","id":6,"subject":"a","since":"x"}"#,
            Some("6"),
            "invalid field",
        ),
        (r#"{"id":7}"#, Some("7"), "'op'"),
        ("[]", None, "invalid"),
    ];
    for (input, id, needle) in cases {
        c.send(input);
        let e = c.recv_json();
        assert_eq!(e["op"], "err", "{input}");
        assert_eq!(e["code"], "bad_request", "{input}");
        assert_eq!(e["id"].to_string(), id.unwrap_or("null"), "{input}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{input}: {}",
            e["message"]
        );
    }
    c.send_frame(0x2, true, b"\x00\x01");
    assert_eq!(c.recv_json()["code"], "bad_request");
    still_serves(&mut c);
}

fn close_code_after(
    d: DriverChoice,
    cfg: impl FnOnce(&mut ringcast::config::Config),
    send: impl FnOnce(&mut Ws),
) -> Option<u16> {
    let node = start(d, cfg);
    let mut bystander = node.ws();
    let mut c = node.ws();
    send(&mut c);
    let code = c.recv_close();
    // Everyone else is still served.
    still_serves(&mut bystander);
    code
}

fn oversized_frames_close_with_1009(d: DriverChoice) {
    let code = close_code_after(
        d,
        |c| c.max_frame_bytes = 1024,
        |c| c.send(&format!(r#"{{"op":"ping","id":"{}"}}"#, "x".repeat(2000))),
    );
    assert_eq!(code, Some(1009));
}

fn invalid_utf8_text_closes_with_1007(d: DriverChoice) {
    let code = close_code_after(
        d,
        |_| {},
        |c| c.send_frame(0x1, true, b"{\"op\":\"\xff\xfe\"}"),
    );
    assert_eq!(code, Some(1007));
}

fn unmasked_client_frames_close_with_1002(d: DriverChoice) {
    let code = close_code_after(d, |_| {}, |c| c.stream.write_all(b"\x81\x05hello").unwrap());
    assert_eq!(code, Some(1002));
}

fn reserved_opcodes_close_with_1002(d: DriverChoice) {
    let code = close_code_after(d, |_| {}, |c| c.send_frame(0x3, true, b"x"));
    assert_eq!(code, Some(1002));
}

fn client_close_is_echoed(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut c = node.ws();
    c.send_frame(0x8, true, &1000u16.to_be_bytes());
    assert_eq!(c.recv_close(), Some(1000));
    assert!(
        c.recv_frame().is_none(),
        "server closes the TCP connection after the close handshake"
    );
}

fn ping_frames_get_pongs_with_the_same_payload(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut c = node.ws();
    c.send_frame(0x9, true, b"are you there");
    match c.recv_frame() {
        Some(Frame::Pong(p)) => assert_eq!(p, b"are you there"),
        other => panic!("{other:?}"),
    }
}

fn bad_upgrade_requests_get_400(d: DriverChoice) {
    let node = start(d, |_| {});
    let base = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for drop in 0..base.len() {
        let headers: Vec<(&str, &str)> = base
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != drop)
            .map(|(_, h)| *h)
            .collect();
        let (status, _, body) = common::http(node.addr, "GET", "/ws", &headers, b"");
        assert_eq!(status, 400, "without {}", base[drop].0);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
    }
    let mut h = base.to_vec();
    h[2] = ("Sec-WebSocket-Version", "8");
    let (status, head, _) = common::http(node.addr, "GET", "/ws", &h, b"");
    assert_eq!(status, 400);
    assert!(head.contains("Sec-WebSocket-Version: 13"));
}

fn a_silent_half_open_handshake_is_dropped(d: DriverChoice) {
    let node = start(d, |c| c.handshake_timeout_ms = 200);
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(common::IO_BOUND)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut buf = [0u8; 64];
    // The server gives up on the incomplete request and closes: EOF, not a hang.
    let n = loop {
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.unwrap(),
        }
    };
    assert_eq!(n, 0);
    assert_eq!(
        node.metric_labelled("ringcast_closes_total", "reason=\"timeout\""),
        1
    );
    let mut c = node.ws();
    still_serves(&mut c);
}

fn a_silent_websocket_is_pinged_then_closed(d: DriverChoice) {
    let node = start(d, |c| c.ping_interval_ms = 100);
    let mut c = node.ws();
    // Never answer: first a ping arrives, then the close.
    let mut saw_ping = false;
    let code = loop {
        match c.recv_frame() {
            Some(Frame::Ping(_)) => saw_ping = true,
            Some(Frame::Close(code)) => break code,
            other => panic!("{other:?}"),
        }
    };
    assert!(saw_ping);
    assert_eq!(code, Some(1008));
}

fn a_websocket_that_answers_pings_stays_open(d: DriverChoice) {
    let node = start(d, |c| c.ping_interval_ms = 50);
    let mut c = node.ws();
    let mut pings = 0;
    while pings < 5 {
        match c.recv_frame() {
            Some(Frame::Ping(p)) => {
                pings += 1;
                c.send_frame(0xA, true, &p);
            }
            other => panic!("{other:?}"),
        }
    }
    still_serves(&mut c);
}

on_both_drivers!(
    malformed_ops_get_err_frames_and_the_connection_stays_open,
    oversized_frames_close_with_1009,
    invalid_utf8_text_closes_with_1007,
    unmasked_client_frames_close_with_1002,
    reserved_opcodes_close_with_1002,
    client_close_is_echoed,
    ping_frames_get_pongs_with_the_same_payload,
    bad_upgrade_requests_get_400,
    a_silent_half_open_handshake_is_dropped,
    a_silent_websocket_is_pinged_then_closed,
    a_websocket_that_answers_pings_stays_open,
);
