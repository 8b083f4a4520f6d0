//! Core dispatch (`ringcast::core::Core::deliver`, through its `Fanout`): cost of queueing one published frame
//! (150 B `data`) to every local subscriber of its subject, with 10, 100, 1,000 and 10,000
//! WebSocket connections each subscribed to `prices.EURUSD`. Measures the steady state: the
//! match result is cached (as it is on a live core) and outbound queues are drained between
//! timed chunks (untimed), so no connection ever becomes a slow consumer.
//! Run with `cargo bench --bench dispatch` (add `-- --quick` for a fast pass).
//!
//! Throughput: deliveries (elements = connections per frame; elements/s = deliveries/s).

/// The same allocator as the `ringcast` binary, so numbers match production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::config::Config;
use ringcast::core::{Client, ConnKind, Core};
use ringcast::frame::Frame;
use ringcast::metrics::CloseReason;
use ringcast::outbound::WriteBatch;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
const SUBJECT: &str = "prices.EURUSD";

/// Deliveries timed back to back before the queues are drained (untimed). Small enough that a
/// queue never nears `max_queue_bytes` and its ring buffer keeps its capacity between chunks.
const CHUNK: u64 = 32;

fn core() -> Rc<Core> {
    common::core(Config::default())
}

fn drain(conns: &[Rc<Client>], batch: &mut WriteBatch) -> usize {
    let mut n = 0;
    for c in conns {
        while c.has_output() {
            c.fill(batch);
            n += batch.messages();
            batch.clear();
        }
    }
    n
}

fn bench_deliver(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch/deliver");
    let data = br#"{"bid":1.08432,"ask":1.08435,"bid_size":1000000,"ask_size":750000,"venue":"LD4","ts_exchange":1700000000123456,"flags":["firm","streaming"],"pad":"x"}"#;
    assert_eq!(data.len(), 150);
    let frame = Arc::new(Frame::encode(SUBJECT, 1, 1_700_000_000_000_000, data, None));
    for n in SIZES {
        let core = core();
        let conns: Vec<Rc<Client>> = (0..n).map(|_| core.register(ConnKind::WebSocket)).collect();
        for conn in &conns {
            core.subscribe(conn, None, SUBJECT, None, false, false)
                .expect("subscribe");
        }
        let mut batch = WriteBatch::default();
        // Drain the `ok` replies, then warm the match cache and check that every connection
        // gets the frame exactly once.
        drain(&conns, &mut batch);
        core.deliver(frame.clone(), core.id);
        assert_eq!(drain(&conns, &mut batch), n);

        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let k = left.min(CHUNK);
                    let start = Instant::now();
                    for _ in 0..k {
                        core.deliver(black_box(frame.clone()), core.id);
                    }
                    timed += start.elapsed();
                    left -= k;
                    drain(&conns, &mut batch);
                }
                timed
            })
        });

        let m = core.metrics();
        assert_eq!(
            m.closes(CloseReason::SlowConsumer),
            0,
            "a queue overflowed at {n}"
        );
        assert_eq!(m.dropped.load(Relaxed), 0);
        assert!(conns.iter().all(|c| c.closing().is_none()));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench_deliver
}
criterion_main!(benches);
