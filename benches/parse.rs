//! Inbound parsing: `ringcast::proto::parse_op` of client ops (`sub`, `pub` with 150 B `data`,
//! `ping`, and a malformed frame), `ringcast::ws::WsDecoder::decode` of masked client text frames
//! of 16 B, 150 B and 4 KiB (unmasked in place, UTF-8 checked), and
//! `ringcast::http::parse_request` of a typical `POST /publish` and a WebSocket upgrade request.
//! Run with `cargo bench --bench parse` (add `-- --quick` for a fast pass).
//!
//! Throughput: one op / frame / request per iteration (elements/s = items parsed per second).

/// The same allocator as the `ringcast` binary, so numbers match production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use ringcast::config::Config;
use ringcast::http::{self, Method};
use ringcast::proto::{self, ClientOp};
use ringcast::ws::{self, WsDecoder, WsEvent};
use std::time::Duration;

/// 150 bytes of JSON `data`.
const DATA_150: &str = r#"{"bid":1.08432,"ask":1.08435,"bid_size":1000000,"ask_size":750000,"venue":"LD4","ts_exchange":1700000000123456,"flags":["firm","streaming"],"pad":"x"}"#;

fn pub_op() -> String {
    format!(
        r#"{{"op":"pub","id":42,"subject":"prices.EURUSD","data":{DATA_150},"msg_id":"order-8f14e45f"}}"#
    )
}

fn bench_parse_op(c: &mut Criterion) {
    assert_eq!(DATA_150.len(), 150);
    let mut g = c.benchmark_group("parse/op");
    g.throughput(Throughput::Elements(1));
    let ops: [(&str, String, bool); 4] = [
        (
            "sub",
            r#"{"op":"sub","id":1,"subject":"prices.EURUSD","snapshot":true}"#.into(),
            true,
        ),
        ("pub_150B", pub_op(), true),
        ("ping", r#"{"op":"ping","id":3}"#.into(), true),
        (
            "malformed",
            r#"{"op":"pub","id":7,"subject":"prices.EURUSD" "data":{"bid":1.1}}"#.into(),
            false,
        ),
    ];
    for (name, text, valid) in &ops {
        let r = proto::parse_op(text.as_bytes());
        assert_eq!(r.is_ok(), *valid, "{name}: {r:?}");
        if let Ok(req) = &r {
            match (&**name, &req.op) {
                ("sub", ClientOp::Sub { .. }) | ("ping", ClientOp::Ping) => {}
                ("pub_150B", ClientOp::Pub(proto::Publish { data, .. })) => {
                    assert_eq!(data.get(), DATA_150)
                }
                (n, op) => panic!("{n}: {op:?}"),
            }
        }
        g.bench_with_input(BenchmarkId::from_parameter(name), text, |b, text| {
            b.iter(|| proto::parse_op(black_box(text.as_bytes())).is_ok())
        });
    }
    g.finish();
}

/// A text payload of exactly `n` bytes: the start of a `pub` op padded with `x` (valid UTF-8,
/// which is all the decoder checks).
fn text_payload(n: usize) -> Vec<u8> {
    let head = br#"{"op":"pub","subject":"prices.EURUSD","data":""#;
    let mut v = Vec::with_capacity(n);
    v.extend_from_slice(&head[..head.len().min(n.saturating_sub(2))]);
    v.resize(n.saturating_sub(2), b'x');
    v.extend_from_slice(&br#""}"#[..2.min(n)]);
    assert_eq!(v.len(), n);
    v
}

fn bench_ws_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse/ws_decode");
    g.throughput(Throughput::Elements(1));
    let max = Config::default().max_frame_bytes;
    for n in [16usize, 150, 4096] {
        let payload = text_payload(n);
        let wire = ws::client_frame(ws::OP_TEXT, true, &payload, [0x37, 0xfa, 0x21, 0x3d]);
        {
            let mut input = wire.clone();
            let (ev, used) = WsDecoder::new(max).decode(&mut input).unwrap().unwrap();
            assert_eq!(used, wire.len());
            match ev {
                Some(WsEvent::Text(p)) => assert_eq!(p.bytes(&input), &payload[..]),
                other => panic!("{other:?}"),
            }
        }
        let mut dec = WsDecoder::new(max);
        g.bench_with_input(BenchmarkId::from_parameter(n), &wire, |b, wire| {
            // `decode` unmasks in place: every iteration gets a fresh masked copy (untimed).
            b.iter_batched_ref(
                || wire.clone(),
                |input| {
                    dec.decode(black_box(input))
                        .map(|r| r.map(|(_, used)| used))
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_http(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse/http");
    g.throughput(Throughput::Elements(1));
    let limits = Config::default().http_limits();
    let publish = format!(
        "POST /publish/prices.EURUSD HTTP/1.1\r\n\
         Host: ringcast.internal:8080\r\n\
         User-Agent: pricefeed/2.3.1\r\n\
         Accept: application/json\r\n\
         Content-Type: application/json\r\n\
         Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmZWVkIn0.c2lnbmF0dXJlLW5vdC1jaGVja2Vk\r\n\
         Idempotency-Key: order-8f14e45f\r\n\
         Content-Length: {}\r\n\
         \r\n\
         {DATA_150}",
        DATA_150.len()
    );
    let upgrade = "GET /ws HTTP/1.1\r\n\
         Host: ringcast.example.com\r\n\
         Connection: Upgrade\r\n\
         Pragma: no-cache\r\n\
         Cache-Control: no-cache\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
         Upgrade: websocket\r\n\
         Origin: https://app.example.com\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Accept-Encoding: gzip, deflate, br\r\n\
         Accept-Language: en-US,en;q=0.9\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         \r\n"
        .to_string();

    let (req, used) = http::parse_request(publish.as_bytes(), limits)
        .unwrap()
        .unwrap();
    assert_eq!(
        (req.method, used, req.body.len()),
        (Method::Post, publish.len(), 150)
    );
    let (req, used) = http::parse_request(upgrade.as_bytes(), limits)
        .unwrap()
        .unwrap();
    assert_eq!((req.method, used), (Method::Get, upgrade.len()));
    assert!(
        req.headers.connection_upgrade
            && req.headers.upgrade_websocket
            && req.headers.ws_key.is_some()
    );

    for (name, text) in [("post_publish", &publish), ("ws_upgrade", &upgrade)] {
        g.bench_with_input(BenchmarkId::from_parameter(name), text, |b, text| {
            b.iter(|| http::parse_request(black_box(text.as_bytes()), limits))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench_parse_op, bench_ws_decode, bench_http
}
criterion_main!(benches);
