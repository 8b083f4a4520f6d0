//! One measured step of a rate sweep: read the counters and CPU clocks, let every publisher
//! publish its share of the rate for `--duration` on a scoped pacer thread of its own, wait
//! for the deliveries in flight (until all are in, 1 s without progress, or `--drain-secs`),
//! read everything again, and turn the differences into a [`Row`]. The main thread runs it.

use super::plan::Plan;
use crate::bench::Bench;
use crate::procfs;
use crate::publisher::{PubShared, Publisher};
use crate::report::Row;
use crate::wire::{mono_ns, Target};
use crate::worker::Stats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// CPU clocks read at one moment.
struct CpuSample {
    /// Measured servers (summed over the nodes).
    server: Option<f64>,
    /// The cluster's JetStream.
    jetstream: Option<f64>,
    /// This process.
    generator: Option<f64>,
    /// The whole machine: (busy, total) seconds.
    machine: Option<(f64, f64)>,
    /// Cluster seq-guard conflicts so far.
    conflicts: Option<u64>,
}

impl CpuSample {
    fn take(b: &Bench) -> CpuSample {
        CpuSample {
            server: b.server_cpu(),
            jetstream: b.jetstream_cpu(),
            generator: procfs::generator_cpu_seconds(),
            machine: procfs::machine_cpu(),
            conflicts: b.cluster_conflicts(),
        }
    }
}

/// CPU seconds (and conflicts) between two samples.
struct CpuUsage {
    server: Option<f64>,
    jetstream: Option<f64>,
    generator: Option<f64>,
    /// Busy seconds of everything else on the machine (may come out slightly negative).
    other: Option<f64>,
    conflicts: Option<u64>,
}

impl CpuUsage {
    fn between(a: &CpuSample, b: &CpuSample) -> CpuUsage {
        let d = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(a, b)| b - a);
        let generator = d(a.generator, b.generator);
        let jetstream = d(a.jetstream, b.jetstream);
        let server = d(a.server, b.server);
        let other = a.machine.zip(b.machine).map(|(a, b)| {
            (b.0 - a.0)
                - generator.unwrap_or(0.0)
                - jetstream.unwrap_or(0.0)
                - server.unwrap_or(0.0)
        });
        CpuUsage {
            server,
            jetstream,
            generator,
            other,
            conflicts: a
                .conflicts
                .zip(b.conflicts)
                .map(|(a, b)| b.saturating_sub(a)),
        }
    }
}

/// What is read just before a step publishes.
struct Before {
    stats: Stats,
    /// Accepted publishes per subject.
    counts: Vec<u64>,
    pub_errors: u64,
    cpu: CpuSample,
}

/// One step at `rate` publishes/s of a sweep's plan.
pub struct Step<'a> {
    b: &'a Bench,
    plan: &'a Plan,
    shared: &'a PubShared,
    rate: f64,
}

impl<'a> Step<'a> {
    pub fn new(b: &'a Bench, plan: &'a Plan, shared: &'a PubShared, rate: f64) -> Step<'a> {
        Step {
            b,
            plan,
            shared,
            rate,
        }
    }

    /// Runs the step; returns its row and the publisher error count it started from.
    pub fn run(&self, pubs: &mut [Publisher]) -> (Row, u64) {
        let before = Before {
            stats: self.b.snapshot(true),
            counts: self.counts(),
            pub_errors: self.shared.errors.load(Ordering::Relaxed),
            cpu: CpuSample::take(self.b),
        };
        let start = mono_ns() + 50_000_000;
        self.publish(pubs, start);
        let pub_end = mono_ns();
        self.drain(pub_end);
        let after = self.b.snapshot(true);
        let cpu = CpuUsage::between(&before.cpu, &CpuSample::take(self.b));
        let wall = (after.last_msg_ns.max(pub_end) - start) as f64 / 1e9;
        let row = self.row(&before, &after, cpu, wall);
        (row, before.pub_errors)
    }

    /// Accepted publishes per subject: `ok` acks from ringcast, writes for NATS.
    fn counts(&self) -> Vec<u64> {
        let v = if self.b.ep.target == Target::Ringcast {
            &self.shared.acked
        } else {
            &self.shared.sent
        };
        load_all(v)
    }

    /// Every publisher publishes `rate / publishers` msgs/s on its own thread from `start`.
    fn publish(&self, pubs: &mut [Publisher], start: u64) {
        let dur_ns = (self.b.args.duration * 1e9) as u64;
        let r = self.rate / pubs.len() as f64;
        let payload = self.plan.payload;
        std::thread::scope(|sc| {
            for p in pubs.iter_mut() {
                sc.spawn(move || p.run_step(start, dur_ns, r, payload));
            }
        });
    }

    /// Waits after publishing ended at `pub_end` until every accepted publish is delivered
    /// (and, for ringcast, every publish acked or refused), deliveries stall for 1 s, or
    /// `--drain-secs` pass.
    fn drain(&self, pub_end: u64) {
        let mut last_delivered = u64::MAX;
        let mut last_progress = pub_end;
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let s = self.b.snapshot(false);
            let now = mono_ns();
            let c = self.counts();
            let acked_all = self.b.ep.target == Target::Nats
                || c.iter().sum::<u64>() + self.shared.errors.load(Ordering::Relaxed)
                    >= load_all(&self.shared.sent).iter().sum::<u64>();
            if acked_all && s.delivered >= self.plan.expected(&c) {
                break;
            }
            if s.delivered != last_delivered {
                last_delivered = s.delivered;
                last_progress = now;
            }
            if now - last_progress > 1_000_000_000
                || now - pub_end > (self.b.args.drain_secs * 1e9) as u64
            {
                break;
            }
        }
    }

    /// The step's row: `wall` is from the start to the last delivery (or the end of
    /// publishing, if later).
    fn row(&self, before: &Before, after: &Stats, cpu: CpuUsage, wall: f64) -> Row {
        let duration = self.b.args.duration;
        let c1 = self.counts();
        let lag = {
            let mut l = self.shared.lag.lock().expect("lock");
            let v = l.value_at_quantile(0.99);
            l.reset();
            v
        };
        let published: u64 = c1.iter().sum::<u64>() - before.counts.iter().sum::<u64>();
        let expected = self.plan.expected(&c1) - self.plan.expected(&before.counts);
        let delivered = after.delivered - before.stats.delivered;
        let h = &after.hist;
        let ms = |ns: u64| ns as f64 / 1e6;
        let pub_errors = self.shared.errors.load(Ordering::Relaxed) - before.pub_errors;
        Row {
            subscribers: self.plan.subscribers as u64,
            subjects: self.plan.subjects.len() as u64,
            payload_bytes: self.plan.payload as u64,
            pub_rate: self.rate,
            duration_s: duration,
            published,
            expected,
            delivered,
            offered_msgs_s: expected as f64 / duration,
            delivered_msgs_s: delivered as f64 / wall.max(duration),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            pub_lag_p99_ms: ms(lag),
            lost: self.plan.expected(&c1) as i64 - after.delivered as i64,
            gaps: after.gaps - before.stats.gaps,
            reorders: after.reorders - before.stats.reorders,
            slow_closes: after.slow_closes - before.stats.slow_closes,
            other_closes: after.other_closes - before.stats.other_closes,
            disconnects: after.disconnects - before.stats.disconnects,
            errors: (after.errors - before.stats.errors) + pub_errors,
            server_cpu_s: cpu.server,
            server_cpu_util: cpu.server.map(|s| s / wall.max(duration)),
            server_us_per_publish: crate::report::per(cpu.server, published, 1e6),
            server_ns_per_delivery: crate::report::per(cpu.server, delivered, 1e9),
            generator_cpu_s: cpu.generator,
            nats_cpu_s: cpu.jetstream,
            cluster_conflicts: cpu.conflicts,
            other_cpu_s: cpu.other.map(|x| x.max(0.0)),
            first_error: after
                .first_error
                .clone()
                .or_else(|| self.shared.first_error.lock().expect("lock").clone()),
            ..self.b.row()
        }
    }
}

fn load_all(v: &[AtomicU64]) -> Vec<u64> {
    v.iter().map(|x| x.load(Ordering::Relaxed)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(server: f64, js: f64, generator: f64, busy: f64, conflicts: u64) -> CpuSample {
        CpuSample {
            server: Some(server),
            jetstream: Some(js),
            generator: Some(generator),
            machine: Some((busy, 0.0)),
            conflicts: Some(conflicts),
        }
    }

    #[test]
    fn other_cpu_is_the_machines_busy_time_less_the_measured_processes() {
        let u = CpuUsage::between(
            &sample(1.0, 0.5, 2.0, 10.0, 3),
            &sample(2.5, 1.0, 3.0, 14.0, 7),
        );
        assert_eq!(
            (u.server, u.jetstream, u.generator),
            (Some(1.5), Some(0.5), Some(1.0))
        );
        assert_eq!(u.other, Some(4.0 - 1.0 - 0.5 - 1.5));
        assert_eq!(u.conflicts, Some(4));
    }

    #[test]
    fn an_unknown_reading_leaves_its_share_unknown_but_not_the_rest() {
        let mut a = sample(1.0, 0.0, 2.0, 10.0, 0);
        a.jetstream = None;
        a.conflicts = None;
        let u = CpuUsage::between(&a, &sample(2.0, 1.0, 3.0, 14.0, 5));
        assert_eq!((u.jetstream, u.conflicts), (None, None));
        assert_eq!(u.other, Some(4.0 - 1.0 - 1.0));
    }
}
