//! `/ws/echo`: the WebSocket layer alone, for RFC 6455 conformance suites (Autobahn). It runs on
//! the same connection machinery as `/ws`.

mod common;

use common::{start, Frame, Ws};
use ringcast::config::DriverChoice;

fn echo_node(d: DriverChoice) -> common::Node {
    start(d, |c| c.echo_endpoint = true)
}

fn is_off_unless_enabled(d: DriverChoice) {
    let node = start(d, |_| {});
    let (status, _) = Ws::try_connect(node.addr, "/ws/echo", &[]).err().unwrap();
    assert_eq!(status, 404);
}

fn echoes_text_and_binary(d: DriverChoice) {
    let node = echo_node(d);
    let mut c = Ws::try_connect(node.addr, "/ws/echo", &[]).unwrap();
    c.send_frame(0x1, true, "héllo".as_bytes());
    assert!(matches!(c.recv_frame(), Some(Frame::Text(t)) if t == "héllo"));
    c.send_frame(0x2, true, &[0, 1, 2, 255]);
    assert!(matches!(c.recv_frame(), Some(Frame::Binary(b)) if b == [0, 1, 2, 255]));
    c.send_frame(0x1, true, b"");
    assert!(matches!(c.recv_frame(), Some(Frame::Text(t)) if t.is_empty()));
}

fn reassembles_fragments_with_pings_between(d: DriverChoice) {
    let node = echo_node(d);
    let mut c = Ws::try_connect(node.addr, "/ws/echo", &[]).unwrap();
    c.send_frame(0x1, false, b"frag");
    c.send_frame(0x9, true, b"p");
    c.send_frame(0x0, false, b"men");
    c.send_frame(0x0, true, b"ted");
    assert!(matches!(c.recv_frame(), Some(Frame::Pong(p)) if p == b"p"));
    assert!(matches!(c.recv_frame(), Some(Frame::Text(t)) if t == "fragmented"));
}

fn utf8_split_across_fragments_is_valid(d: DriverChoice) {
    let node = echo_node(d);
    let mut c = Ws::try_connect(node.addr, "/ws/echo", &[]).unwrap();
    let s = "κόσμε".as_bytes();
    c.send_frame(0x1, false, &s[..3]);
    c.send_frame(0x0, true, &s[3..]);
    assert!(matches!(c.recv_frame(), Some(Frame::Text(t)) if t == "κόσμε"));
    c.send_frame(0x1, false, &s[..3]);
    c.send_frame(0x0, true, &[0xff]);
    assert_eq!(c.recv_close(), Some(1007));
}

fn close_handshake_codes(d: DriverChoice) {
    let node = echo_node(d);
    for (payload, want) in [
        (vec![0x0f, 0xa0], Some(4000)),
        (vec![], Some(1000)),
        (vec![0x03, 0xed], Some(1002)),
        (vec![0x03, 0xe8, 0xc3], Some(1007)),
    ] {
        let mut c = Ws::try_connect(node.addr, "/ws/echo", &[]).unwrap();
        c.send_frame(0x8, true, &payload);
        assert_eq!(c.recv_close(), want, "close payload {payload:?}");
    }
}

on_both_drivers!(
    is_off_unless_enabled,
    echoes_text_and_binary,
    reassembles_fragments_with_pings_between,
    utf8_split_across_fragments_is_valid,
    close_handshake_codes,
);
