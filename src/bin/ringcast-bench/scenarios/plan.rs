//! [`Plan`]: what one rate sweep publishes and who receives it (broadcast and pricefeed each
//! build one; [`super::fanout`] runs it and [`super::step`] measures each rate of it). Plain
//! data, built and read on the main thread.

use crate::worker::Role;
use crate::Args;

/// What a sweep publishes and who receives it.
pub struct Plan {
    /// Subject names by subject index (the index is their numeric suffix).
    pub subjects: Vec<String>,
    /// Subscriber connections.
    pub subscribers: usize,
    /// What each subscriber subscribes to (taken when they connect).
    pub roles: Vec<Role>,
    /// How many subscribers receive each subject, by subject index.
    pub fanout: Vec<u64>,
    /// Subscribers on a wildcard (reported only).
    pub wildcards: usize,
    /// Payload bytes per message.
    pub payload: usize,
    /// Aggregate publishes/s of each step.
    pub rates: Vec<f64>,
    /// Publisher connections (each publishes its share of the subjects).
    pub publishers: usize,
}

impl Plan {
    /// Deliveries due for `published[i]` messages on each subject `i`.
    pub fn expected(&self, published: &[u64]) -> u64 {
        published.iter().zip(&self.fanout).map(|(n, f)| n * f).sum()
    }

    /// Subjects of publisher `p`: every `publishers`-th one.
    pub fn subjects_of(&self, p: usize) -> Vec<String> {
        self.subjects
            .iter()
            .enumerate()
            .filter(|(s, _)| s % self.publishers == p)
            .map(|(_, name)| name.clone())
            .collect()
    }
}

/// `--rates`, or the scenario's `default` when none are given.
pub fn rates(args: &Args, default: &[f64]) -> Vec<f64> {
    if args.rates.is_empty() {
        default.to_vec()
    } else {
        args.rates.clone()
    }
}
