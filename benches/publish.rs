//! The publish path on its owner core (`ringcast::transport::ops::apply`): from the text of
//! one `pub` op to its frame and its `ok` — rate limit, JSON parse and validation, routing,
//! sequencing, encode-once, history ring, de-duplication window, local fan-out (no
//! subscriber: fan-out is `dispatch`), and the ack queued to the publisher. One core (the
//! subject's owner), so no bus hop; 100 B `data` like the fanout probe's; subjects
//! `prices.SYM0000`.. round robin over 1 and 1,000 subjects, with and without `msg_id`.
//! Run with `cargo bench --bench publish` (add `-- --quick` for a fast pass).
//!
//! Throughput: publishes (elements/s = publishes/s per core; 1e9 / that = ns per publish).

/// The same allocator as the `ringcast` binary, so numbers match production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::config::Config;
use ringcast::core::{Client, ConnKind, Core};
use ringcast::outbound::WriteBatch;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const SUBJECTS: [usize; 2] = [1, 1_000];

/// Publishes timed back to back before the publisher's acks are drained (untimed).
const CHUNK: u64 = 256;

fn core() -> Rc<Core> {
    common::core(Config {
        max_msgs_per_sec: 0,
        max_publish_per_sec: 0,
        ..Config::default()
    })
}

/// The probe's op, number `i`: `{"op":"pub","id":i,"subject":S,"data":{"n":..,"t":..,"p":".."}}`
/// on subject `i % subjects`, with a fresh `msg_id` when asked (so it is never a duplicate).
fn op(out: &mut Vec<u8>, i: usize, subjects: usize, with_msg_id: bool) {
    use std::io::Write;
    out.clear();
    let s = i % subjects;
    let n = i % 1_000_000_000;
    let head = format!(r#"{{"n":{n},"t":1700000000000000000,"p":""#);
    let pad = "x".repeat(100 - head.len() - 2);
    write!(
        out,
        r#"{{"op":"pub","id":{i},"subject":"prices.SYM{s:04}","#
    )
    .unwrap();
    write!(out, r#""data":{head}{pad}"}}"#).unwrap();
    if with_msg_id {
        write!(out, r#","msg_id":"m-{i}""#).unwrap();
    }
    out.push(b'}');
}

/// Empties the publisher's queue (its acks); the bytes it held.
fn drain(c: &Client, batch: &mut WriteBatch) -> usize {
    let mut n = 0;
    while c.has_output() {
        c.fill(batch);
        n += batch.remaining();
        batch.clear();
    }
    n
}

fn bench_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish/op");
    for (subjects, msg_id) in SUBJECTS.iter().flat_map(|s| [(*s, false), (*s, true)]) {
        let core = core();
        let publisher = core.register(ConnKind::WebSocket);
        let mut ops: Vec<Vec<u8>> = vec![Vec::new(); CHUNK as usize];
        let mut batch = WriteBatch::default();
        drain(&publisher, &mut batch);
        // Every op is acked once (and this first pass creates every subject).
        for i in 0..subjects.max(CHUNK as usize) {
            op(&mut ops[0], i, subjects, msg_id);
            ringcast::transport::ops::apply(&core, &publisher, &ops[0]);
        }
        let mut next = subjects.max(CHUNK as usize);
        assert!(drain(&publisher, &mut batch) > 0);
        assert_eq!(core.metrics().published.load(Relaxed), next as u64);
        let name = format!("{subjects}_subjects{}", if msg_id { "_msg_id" } else { "" });
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let k = left.min(CHUNK) as usize;
                    for o in &mut ops[..k] {
                        op(o, next, subjects, msg_id);
                        next += 1;
                    }
                    let start = Instant::now();
                    for o in &ops[..k] {
                        ringcast::transport::ops::apply(&core, &publisher, black_box(o));
                    }
                    timed += start.elapsed();
                    left -= k as u64;
                    assert!(drain(&publisher, &mut batch) > 0);
                }
                timed
            })
        });
        let m = core.metrics();
        assert_eq!(m.duplicates.load(Relaxed), 0);
        assert!(publisher.closing().is_none());
        assert_eq!(m.published.load(Relaxed), next as u64);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench_publish
}
criterion_main!(benches);
