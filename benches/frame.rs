//! Message frames (`ringcast::frame::Frame`): cost of `Frame::encode` (WebSocket frame + `msg`
//! JSON + rkyv envelope, built once per publish) for `data` payloads of 16 B, 150 B, 1 KiB and
//! 16 KiB, and of `Frame::from_stored` (validated rebuild from the stored bytes) and the full
//! encode -> stored bytes -> `from_stored` round trip at the same sizes.
//! Run with `cargo bench --bench frame` (add `-- --quick` for a fast pass).
//!
//! Throughput: one frame per iteration (elements/s = frames per second).

/// The same allocator as the `ringcast` binary, so numbers match production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::frame::Frame;
use std::time::Duration;

const SIZES: [usize; 4] = [16, 150, 1024, 16 * 1024];
const SUBJECT: &str = "prices.EURUSD";
const SEQ: u64 = 1_234_567;
const TS: u64 = 1_700_000_000_000_000;

/// A valid JSON object of exactly `n` bytes (`n > 8`): `{"p":"xxx…"}`.
fn payload(n: usize) -> Vec<u8> {
    let overhead = br#"{"p":""}"#.len();
    assert!(n > overhead);
    let mut v = Vec::with_capacity(n);
    v.extend_from_slice(br#"{"p":""#);
    v.resize(n - 2, b'x');
    v.extend_from_slice(br#""}"#);
    assert_eq!(v.len(), n);
    serde_json::from_slice::<serde_json::Value>(&v).expect("valid JSON");
    v
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/encode");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let data = payload(n);
        g.bench_with_input(BenchmarkId::new("no_msg_id", n), &data, |b, data| {
            b.iter(|| {
                Frame::encode(
                    black_box(SUBJECT),
                    black_box(SEQ),
                    TS,
                    black_box(data),
                    None,
                )
            })
        });
    }
    let data = payload(150);
    g.bench_with_input(BenchmarkId::new("msg_id", 150), &data, |b, data| {
        b.iter(|| {
            Frame::encode(
                black_box(SUBJECT),
                black_box(SEQ),
                TS,
                black_box(data),
                Some("order-8f14e45f"),
            )
        })
    });
    g.finish();
}

fn bench_from_stored(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/from_stored");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let frame = Frame::encode(SUBJECT, SEQ, TS, &payload(n), None);
        let stored = frame.stored_bytes().to_vec();
        let back = Frame::from_stored(&stored).expect("round trip");
        assert_eq!(back.ws_bytes(), frame.ws_bytes());
        g.bench_with_input(BenchmarkId::from_parameter(n), &stored, |b, stored| {
            b.iter(|| Frame::from_stored(black_box(stored)).expect("valid"))
        });
    }
    g.finish();
}

fn bench_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame/round_trip");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        let data = payload(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &data, |b, data| {
            b.iter(|| {
                let f = Frame::encode(
                    black_box(SUBJECT),
                    black_box(SEQ),
                    TS,
                    black_box(data),
                    None,
                );
                Frame::from_stored(f.stored_bytes()).expect("valid")
            })
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
    targets = bench_encode, bench_from_stored, bench_round_trip
}
criterion_main!(benches);
