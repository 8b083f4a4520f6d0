//! `pricefeed`: `--subjects` subjects `prices.SYM0000`.., each subscriber on
//! `--subs-per-conn` random ones (seeded, so runs are comparable) or, for `--wildcard-pct` of
//! them spread evenly, on `prices.>`; `--publishers` publishers split the subjects. Only the
//! [`Plan`]; [`super::fanout`] runs it.

use super::plan::{self, Plan};
use crate::worker::Role;
use crate::Args;

/// Default `--subscribers`.
pub const SUBSCRIBERS: usize = 10_000;
/// Default `--payload`, bytes.
const PAYLOAD: usize = 150;
/// Default `--rates`, publishes/s.
const RATES: [f64; 1] = [20000.0];
/// Default `--publishers`.
const PUBLISHERS: usize = 2;
const WILDCARD: &str = "prices.>";

pub fn plan(a: &Args) -> Plan {
    let subs = a.subscribers.unwrap_or(SUBSCRIBERS);
    let n = a.subjects.max(1);
    let subjects: Vec<String> = (0..n).map(|i| format!("prices.SYM{i:04}")).collect();
    let wildcards = ((subs as f64) * a.wildcard_pct / 100.0).round() as usize;
    let mut fanout = vec![0u64; n];
    let mut rng = Rng(a.seed.max(1));
    let roles = (0..subs)
        .map(|i| {
            if on_wildcard(i, subs, wildcards) {
                fanout.iter_mut().for_each(|f| *f += 1);
                Role::Sub {
                    subjects: vec![WILDCARD.to_string()],
                    dense: Some(n),
                }
            } else {
                let chosen = rng.distinct(a.subs_per_conn.min(n), n);
                chosen.iter().for_each(|&s| fanout[s] += 1);
                Role::Sub {
                    subjects: chosen.into_iter().map(|s| subjects[s].clone()).collect(),
                    dense: None,
                }
            }
        })
        .collect();
    Plan {
        subscribers: subs,
        roles,
        fanout,
        wildcards,
        payload: a.payload.unwrap_or(PAYLOAD),
        rates: plan::rates(a, &RATES),
        publishers: a.publishers.unwrap_or(PUBLISHERS).clamp(1, n),
        subjects,
    }
}

/// Whether subscriber `i` of `subs` is one of the `wildcards` on `prices.>` (spread evenly).
fn on_wildcard(i: usize, subs: usize, wildcards: usize) -> bool {
    wildcards > 0 && (i * wildcards) / subs != ((i + 1) * wildcards) / subs
}

/// xorshift64*: deterministic subscriptions without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `k` distinct numbers below `n` (`k` <= `n`), in the order drawn.
    fn distinct(&mut self, k: usize, n: usize) -> Vec<usize> {
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        while chosen.len() < k {
            let s = (self.next() % n as u64) as usize;
            if !chosen.contains(&s) {
                chosen.push(s);
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::args;

    #[test]
    fn wildcard_subscribers_are_the_asked_share_spread_evenly() {
        let on: Vec<usize> = (0..100).filter(|&i| on_wildcard(i, 100, 5)).collect();
        assert_eq!(on, [19, 39, 59, 79, 99]);
        assert!(!(0..100).any(|i| on_wildcard(i, 100, 0)));
    }

    #[test]
    fn the_fanout_counts_every_subscription_and_the_wildcards_on_every_subject() {
        let p = plan(&args(
            "b pricefeed --subscribers 200 --subjects 50 --subs-per-conn 4",
        ));
        assert_eq!((p.subscribers, p.wildcards, p.publishers), (200, 10, 2));
        assert_eq!(p.fanout.iter().sum::<u64>(), 190 * 4 + 10 * 50);
        for r in &p.roles {
            let Role::Sub { subjects, dense } = r else {
                panic!("idle role")
            };
            if dense.is_some() {
                assert_eq!(subjects, &["prices.>"]);
            } else {
                let mut s = subjects.clone();
                s.sort();
                s.dedup();
                assert_eq!(s.len(), 4, "{subjects:?}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_subscriptions() {
        let subs = |cmd: &str| -> Vec<Vec<String>> {
            plan(&args(cmd))
                .roles
                .into_iter()
                .map(|r| match r {
                    Role::Sub { subjects, .. } => subjects,
                    Role::Idle => Vec::new(),
                })
                .collect()
        };
        let a = subs("b pricefeed --subscribers 50 --seed 7");
        assert_eq!(a, subs("b pricefeed --subscribers 50 --seed 7"));
        assert_ne!(a, subs("b pricefeed --subscribers 50 --seed 8"));
    }
}
