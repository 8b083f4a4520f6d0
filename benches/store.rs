//! The durable store (`ringcast::store::DurableStore`, fjall): what one message costs on its way
//! to disk, as the owner core sees it with `--durability sync` (append, group commit, fsync,
//! `StoreSink::durable` answer) and `batch` (append, group commit; fsync every 5 ms off the
//! path), for bursts of 1, 64 and 1,024 messages of 150 B. A burst of 1 is the latency of one
//! acked publish on an idle node; bigger bursts show group commit sharing one fsync.
//! Run with `cargo bench --bench store` (add `-- --quick` for a fast pass). Uses a directory
//! under the system temp dir, on whatever disk that is: the fsync numbers are the disk's.
//!
//! Throughput: messages per second (elements/s).

/// The same allocator as the `ringcast` binary, so numbers match production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::frame::Frame;
use ringcast::store::{
    Durability, DurableStore, HistoryStore, Retention, StoreConfig, StoreSink, StoredRange,
};
use std::sync::Arc;
use std::time::Duration;

const BURSTS: [u64; 3] = [1, 64, 1_024];

/// The storage thread's sync answers (`upto` of each `durable` call), as an owner core would
/// get them over the bus.
struct ChanSink(crossbeam_channel::Sender<u64>);

impl StoreSink for ChanSink {
    fn durable(&self, _core: usize, upto: u64, _ok: bool) {
        let _ = self.0.send(upto);
    }

    fn read(&self, _core: usize, _token: u64, _range: StoredRange) {}
}

fn store(
    durability: Durability,
    name: &str,
) -> (
    DurableStore,
    crossbeam_channel::Receiver<u64>,
    std::path::PathBuf,
) {
    let dir = std::env::temp_dir().join(format!(
        "ringcast-bench-store-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let (tx, rx) = crossbeam_channel::unbounded();
    let cfg = StoreConfig {
        durability,
        fsync_interval: Duration::from_millis(5),
        retention: Retention::default(),
        max_backlog: ringcast::store::MAX_BACKLOG,
    };
    let s = DurableStore::open(&dir, cfg, 1, Arc::new(ChanSink(tx))).expect("store opens");
    (s, rx, dir)
}

fn bench_store(c: &mut Criterion) {
    let data = format!(
        r#"{{"bid":1.0842,"ask":1.0844,"pad":"{}"}}"#,
        "x".repeat(100)
    );
    for (durability, name) in [(Durability::Sync, "sync"), (Durability::Batch, "batch")] {
        let (s, rx, dir) = store(durability, name);
        let mut g = c.benchmark_group(format!("store_{name}"));
        let mut seq = 0u64;
        for burst in BURSTS {
            g.throughput(Throughput::Elements(burst));
            g.bench_with_input(BenchmarkId::from_parameter(burst), &burst, |b, &burst| {
                b.iter(|| {
                    let mut last = 0;
                    for _ in 0..burst {
                        seq += 1;
                        let f = Arc::new(Frame::encode(
                            "prices.EURUSD",
                            seq,
                            seq,
                            data.as_bytes(),
                            None,
                        ));
                        last = s.append(0, &f, None);
                    }
                    if durability == Durability::Sync {
                        // Wait for the fsync of the group holding the burst's last message.
                        while rx.recv().expect("store answers") < last {}
                    } else {
                        // Batch: acked at once; bound the backlog so the measurement is the
                        // store's sustained rate, not the channel's.
                        while s
                            .series()
                            .iter()
                            .any(|m| m.name == "ringcast_store_backlog" && m.value > 4096)
                        {
                            std::thread::yield_now();
                        }
                    }
                })
            });
        }
        g.finish();
        s.close();
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench_store
}
criterion_main!(benches);
