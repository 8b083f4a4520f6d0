//! Subject trie (`ringcast::trie::SubjectTrie`): cost of matching one concrete subject against
//! 1k and 100k subscriptions for three mixes (all literal, with `*`, with `>`), the
//! subscribe/unsubscribe churn cost (insert + remove of one pattern) at those sizes, and the bulk
//! build cost. Run with `cargo bench --bench trie` (add `-- --quick` for a fast pass).
//!
//! Mixes (N subscriptions, symbols `SYMnnnnn`; every mix has a constant number of matches so the
//! curve shows the cost of the index size alone):
//! - `literal`: N x `prices.SYMnnnnn`; subject `prices.SYMk` matches 1.
//! - `star`: N/2 x `prices.SYMnnnnn` + N/2 x `*.SYMnnnnn`; subject `prices.SYMk` matches 2
//!   (walks the literal and the `*` branch).
//! - `fwc`: N/2 x `prices.SYMnnnnn.bid` + N/2 x `prices.SYMnnnnn.>`; subject `prices.SYMk.bid`
//!   matches 2 (walks three levels and the `>` slot).
//!
//! Throughput: `match` counts matched values (elements/s = values reported per second),
//! `churn` one subscribe + unsubscribe pair, `build` one insert.

/// The same allocator as the `ringcast` binary, so numbers match production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::trie::SubjectTrie;
use std::time::Duration;

const SIZES: [usize; 2] = [1_000, 100_000];

#[derive(Clone, Copy)]
enum Mix {
    Literal,
    Star,
    Fwc,
}

impl Mix {
    const ALL: [Mix; 3] = [Mix::Literal, Mix::Star, Mix::Fwc];

    fn name(self) -> &'static str {
        match self {
            Mix::Literal => "literal",
            Mix::Star => "star",
            Mix::Fwc => "fwc",
        }
    }

    /// The `i`-th pattern of a trie of `n` subscriptions.
    fn pattern(self, i: usize) -> String {
        match self {
            Mix::Literal => format!("prices.SYM{i:05}"),
            Mix::Star if i.is_multiple_of(2) => format!("prices.SYM{:05}", i / 2),
            Mix::Star => format!("*.SYM{:05}", i / 2),
            Mix::Fwc if i.is_multiple_of(2) => format!("prices.SYM{:05}.bid", i / 2),
            Mix::Fwc => format!("prices.SYM{:05}.>", i / 2),
        }
    }

    /// A subject in the middle of the index, and how many values it matches.
    fn subject(self, n: usize) -> (String, usize) {
        match self {
            Mix::Literal => (format!("prices.SYM{:05}", n / 2), 1),
            Mix::Star => (format!("prices.SYM{:05}", n / 4), 2),
            Mix::Fwc => (format!("prices.SYM{:05}.bid", n / 4), 2),
        }
    }

    /// A pattern of this mix that is not in a trie of `n` (for churn).
    fn fresh(self, n: usize) -> String {
        self.pattern(2 * n + 1)
    }
}

fn build(mix: Mix, n: usize) -> SubjectTrie<usize> {
    let mut t = SubjectTrie::new();
    for i in 0..n {
        t.insert(&mix.pattern(i), i);
    }
    assert_eq!(t.len(), n);
    t
}

fn bench_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("trie/match");
    for mix in Mix::ALL {
        for n in SIZES {
            let trie = build(mix, n);
            let (subject, expected) = mix.subject(n);
            let mut count = 0usize;
            trie.for_each_match(&subject, |_| count += 1);
            assert_eq!(count, expected, "{} {n}: {subject}", mix.name());
            g.throughput(Throughput::Elements(expected as u64));
            g.bench_with_input(BenchmarkId::new(mix.name(), n), &subject, |b, subject| {
                b.iter(|| {
                    let mut count = 0usize;
                    trie.for_each_match(black_box(subject), |v| {
                        black_box(v);
                        count += 1;
                    });
                    count
                })
            });
        }
    }
    g.finish();
}

fn bench_churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("trie/churn");
    g.throughput(Throughput::Elements(1));
    for mix in Mix::ALL {
        for n in SIZES {
            let mut trie = build(mix, n);
            let pattern = mix.fresh(n);
            g.bench_with_input(BenchmarkId::new(mix.name(), n), &pattern, |b, pattern| {
                b.iter(|| {
                    trie.insert(black_box(pattern), usize::MAX);
                    assert!(trie.remove(black_box(pattern), &usize::MAX));
                })
            });
            assert_eq!(trie.len(), n);
        }
    }
    g.finish();
}

fn bench_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("trie/build");
    g.sample_size(10);
    for n in SIZES {
        let patterns: Vec<String> = (0..n).map(|i| Mix::Literal.pattern(i)).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("literal", n), &patterns, |b, patterns| {
            b.iter_with_large_drop(|| {
                let mut t = SubjectTrie::new();
                for (i, p) in patterns.iter().enumerate() {
                    t.insert(p, i);
                }
                t
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
    targets = bench_match, bench_churn, bench_build
}
criterion_main!(benches);
