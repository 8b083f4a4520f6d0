//! The run's context ([`Bench`]), as the scenarios see it: the parsed command line, the
//! endpoints of the server(s) under test, the command channels of the generator threads and
//! the spawned servers; and what scenarios do with them — hand connections to the generator
//! threads and wait until they are up ([`Bench::connect`]), add up the threads' counters
//! ([`Bench::snapshot`]), read the servers' CPU and memory. Built by [`crate::setup`], owned by
//! the main thread for the whole run; the generator threads only see the commands it sends.

use crate::report::Row;
use crate::server::Servers;
use crate::wire::{mono_ns, Endpoint};
use crate::worker::{Cmd, ConnSpec, Role, Stats};
use crate::{Args, Scenario};
use crossbeam_channel::Sender;
use std::net::Ipv4Addr;
use std::time::Duration;

pub struct Bench {
    pub args: Args,
    pub scenario: Scenario,
    /// The first server's endpoint (target, path: the same for every node).
    pub ep: Endpoint,
    /// One per server (cluster node), in node order.
    pub eps: Vec<Endpoint>,
    pub workers: Vec<Sender<Cmd>>,
    pub server: Option<Servers>,
    pub srcs: Vec<Ipv4Addr>,
    pub nofile: u64,
    pub info: RunInfo,
}

/// What the result file says about the run besides its rows.
pub struct RunInfo {
    /// Output file stem: `<scenario>-<target>[-clusterN][-label]`.
    pub name: String,
    /// The run spawned its ringcast node(s) in cluster mode.
    pub clustered: bool,
    /// Generator I/O driver (`io_uring` / `epoll`).
    pub driver: &'static str,
    /// The spawned server command lines, or `external <url>`.
    pub server_desc: String,
}

/// Server (cluster node) of the `i`-th connection: round-robin.
pub fn node_of(i: usize, nodes: usize) -> usize {
    i % nodes.max(1)
}

impl Bench {
    /// Source address of the `i`-th connection (round-robin; `None`: the kernel's choice).
    pub fn src(&self, i: usize) -> Option<Ipv4Addr> {
        if self.srcs.is_empty() {
            None
        } else {
            Some(self.srcs[i % self.srcs.len()])
        }
    }

    /// The `i`-th connection of a scenario: its source address and node.
    pub fn spec(&self, i: usize, role: Role) -> ConnSpec {
        ConnSpec {
            role,
            src: self.src(i),
            node: node_of(i, self.eps.len()),
        }
    }

    /// A row with what every row of this run says: scenario, target, nodes, cluster mode, and
    /// the servers' peak RSS so far.
    pub fn row(&self) -> Row {
        Row {
            scenario: self.scenario.name().into(),
            target: self.ep.target.name().into(),
            server_peak_rss_mib: self
                .server
                .as_ref()
                .and_then(|x| x.peak_rss_kib())
                .map(|k| k as f64 / 1024.0),
            nodes: self.eps.len() as u64,
            cluster: self.server.as_ref().is_some_and(|s| s.jetstream.is_some()),
            ..Row::default()
        }
    }

    /// CPU seconds of the measured servers (spawned ones only).
    pub fn server_cpu(&self) -> Option<f64> {
        self.server.as_ref().and_then(|s| s.cpu_seconds())
    }

    /// RSS of the measured servers, KiB (spawned ones only).
    pub fn server_rss(&self) -> Option<u64> {
        self.server.as_ref().and_then(|s| s.rss_kib())
    }

    /// CPU seconds of the cluster's JetStream.
    pub fn jetstream_cpu(&self) -> Option<f64> {
        self.server.as_ref().and_then(|s| s.jetstream_cpu_seconds())
    }

    /// Which spawned servers have exited (crashed or were killed) during the run, if any.
    pub fn dead_servers(&mut self) -> Option<String> {
        let dead = self.server.as_mut()?.exited();
        (!dead.is_empty()).then(|| {
            format!(
                "server exited: {} (logs in {})",
                dead.join(", "),
                self.args.out_dir.display()
            )
        })
    }

    /// Cluster mode: publish attempts the per-subject seq guard refused so far, all nodes.
    pub fn cluster_conflicts(&self) -> Option<u64> {
        let s = self.server.as_ref().filter(|s| s.jetstream.is_some())?;
        s.metric_sum("ringcast_cluster_conflicts_total")
    }

    /// The generator threads' counters added up; with `hist`, the latencies since the last
    /// such snapshot (each thread's histogram starts over).
    pub fn snapshot(&self, hist: bool) -> Stats {
        let (tx, rx) = crossbeam_channel::unbounded();
        for w in &self.workers {
            let _ = w.send(Cmd::Snapshot {
                hist,
                reply: tx.clone(),
            });
        }
        drop(tx);
        let mut total = Stats::default();
        for s in rx.iter() {
            total.merge(&s);
        }
        total
    }

    /// Hands `specs` to the workers (round-robin) and waits until each connection is ready
    /// (hello / PONG) or failed. Returns (start mono ns, stats at the end).
    pub fn connect(
        &self,
        specs: Vec<ConnSpec>,
        concurrency: usize,
        read_buf: usize,
        want_subs: u64,
    ) -> Result<(u64, Stats), String> {
        let n = specs.len() as u64;
        let base = self.snapshot(false);
        let mut per: Vec<Vec<ConnSpec>> = (0..self.workers.len()).map(|_| Vec::new()).collect();
        for (i, s) in specs.into_iter().enumerate() {
            per[i % self.workers.len()].push(s);
        }
        let start = mono_ns();
        for (w, specs) in self.workers.iter().zip(per) {
            let timeout = Duration::from_secs_f64(self.args.connect_timeout);
            let _ = w.send(Cmd::Connect {
                specs,
                concurrency,
                read_buf,
                timeout,
            });
        }
        let deadline =
            start + ((self.args.connect_timeout + 30.0) * 1e9) as u64 + n / 200 * 1_000_000_000;
        let mut last_report = start;
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let s = self.snapshot(false);
            let done = (s.connected - base.connected) + (s.connect_failed - base.connect_failed);
            let subs = s.sub_ok - base.sub_ok;
            if done >= n && subs >= want_subs {
                return Ok((start, s));
            }
            if done >= n && s.connect_failed > base.connect_failed {
                // Failed connections never subscribe: nothing more to wait for.
                return Ok((start, s));
            }
            let now = mono_ns();
            if now - last_report > 5_000_000_000 {
                last_report = now;
                eprintln!(
                    "  connecting: {done}/{n} ready, {subs}/{want_subs} subscriptions acknowledged"
                );
            }
            if now > deadline {
                return Err(format!(
                    "connect timed out: {done}/{n} connections, {subs}/{want_subs} subscriptions; first error: {:?}",
                    s.first_error
                ));
            }
        }
    }

    /// Stops the generator threads, then the spawned servers.
    pub fn shutdown(&mut self) {
        for w in &self.workers {
            let _ = w.send(Cmd::Shutdown);
        }
        drop(self.server.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_are_spread_round_robin_over_nodes() {
        let mut per = [0usize; 3];
        for i in 0..1000 {
            per[node_of(i, 3)] += 1;
        }
        assert_eq!(per, [334, 333, 333]);
        assert_eq!(
            (0..5).map(|i| node_of(i, 2)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
    }

    #[test]
    fn one_node_gets_every_connection() {
        assert!((0..100).all(|i| node_of(i, 1) == 0));
        // 0 is treated as 1 rather than dividing by zero.
        assert_eq!(node_of(7, 0), 0);
    }
}
