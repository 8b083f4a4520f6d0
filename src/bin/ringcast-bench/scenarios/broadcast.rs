//! `broadcast`: one subject (`bench.bcast.0`), every subscriber on it, one publisher, a sweep
//! over publish rates. Only the [`Plan`]; [`super::fanout`] runs it.

use super::plan::{self, Plan};
use crate::worker::Role;
use crate::Args;

/// Default `--subscribers`.
pub const SUBSCRIBERS: usize = 1000;
/// Default `--payload`, bytes.
const PAYLOAD: usize = 100;
/// Default `--rates`, publishes/s.
const RATES: [f64; 7] = [1000.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0, 10000.0];
const SUBJECT: &str = "bench.bcast.0";

pub fn plan(a: &Args) -> Plan {
    let subs = a.subscribers.unwrap_or(SUBSCRIBERS);
    Plan {
        subjects: vec![SUBJECT.to_string()],
        subscribers: subs,
        roles: (0..subs)
            .map(|_| Role::Sub {
                subjects: vec![SUBJECT.to_string()],
                dense: None,
            })
            .collect(),
        fanout: vec![subs as u64],
        wildcards: 0,
        payload: a.payload.unwrap_or(PAYLOAD),
        rates: plan::rates(a, &RATES),
        publishers: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::args;

    #[test]
    fn every_subscriber_is_on_the_one_subject() {
        let p = plan(&args("b broadcast --subscribers 3"));
        assert_eq!(
            (p.subscribers, p.roles.len(), p.fanout.as_slice()),
            (3, 3, &[3][..])
        );
        assert_eq!((p.payload, p.publishers, p.rates.len()), (100, 1, 7));
        assert!(p.roles.iter().all(|r| matches!(r,
            Role::Sub { subjects, dense: None } if subjects == &["bench.bcast.0"])));
    }
}
