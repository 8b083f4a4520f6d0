//! The servers under test when the generator starts them itself ([`Servers`]): one ringcast
//! (release binary), N ringcast nodes in cluster mode sharing one `nats-server -js`, or
//! nats-server with WebSocket enabled as the comparison target; and the sums over them the
//! report needs (CPU time, memory, a `/metrics` series). Only the main thread starts, reads
//! and stops them.
//!
//! Submodules follow what is spawned: [`spawned`] (one child process: start, readiness, stop
//! and clean-up), [`ringcast`] (a ringcast node), [`nats`] (nats-server as the target or as
//! the cluster's JetStream), [`http`] (`/healthz` and `/metrics`). A JetStream store left
//! behind by a generator that was killed is removed by the next run.

mod http;
mod nats;
mod ringcast;
mod spawned;

pub use nats::spawn_nats;
pub use spawned::Spawned;

use http::{fetch_metrics, metric_sum};
use nats::spawn_jetstream;
use ringcast::{spawn_ringcast, ClusterLink};
use std::net::SocketAddr;
use std::path::Path;

/// Everything the generator started: the servers it measures (one ringcast, N cluster nodes,
/// or nats-server as the target) and, in cluster mode, the JetStream they share.
pub struct Servers {
    /// Measured servers. Declared first so they drop first: cluster nodes shut down while
    /// NATS is still up.
    pub nodes: Vec<Spawned>,
    /// The cluster's `nats-server -js` (not counted as server CPU / RSS).
    pub jetstream: Option<Spawned>,
}

/// Sum of `f` over `items`; `None` if any is unknown (a process gone, /proc unreadable).
fn sum_all<T, V: std::iter::Sum<V>>(items: &[T], f: impl Fn(&T) -> Option<V>) -> Option<V> {
    items
        .iter()
        .map(f)
        .collect::<Option<Vec<V>>>()
        .map(|v| v.into_iter().sum())
}

impl Servers {
    /// Starts `nodes` ringcast processes one after the other, each ready (`/healthz` 200)
    /// before the next starts; with `cluster`, first a JetStream they all join. Cluster runs
    /// log to `<out_dir>/<run>.nats-js.log` and `<run>.node<i>.log`, a plain run to
    /// `ringcast-server.log`. A failure part way drops (kills) whatever was already started.
    #[allow(clippy::too_many_arguments)]
    pub fn ringcast(
        bin: &Path,
        nodes: usize,
        cores: usize,
        cluster: bool,
        nats_bin: &str,
        extra: &[String],
        out_dir: &Path,
        run: &str,
    ) -> std::io::Result<Servers> {
        let mut s = Servers {
            nodes: Vec::new(),
            jetstream: None,
        };
        let link = if cluster {
            let js = spawn_jetstream(nats_bin, out_dir, &format!("{run}.nats-js.log"))?;
            let link = ClusterLink::for_run(format!("nats://{}", js.addr), std::process::id());
            s.jetstream = Some(js);
            Some(link)
        } else {
            None
        };
        for i in 0..nodes.max(1) {
            let log = if cluster {
                format!("{run}.node{i}.log")
            } else {
                "ringcast-server.log".to_string()
            };
            let n = spawn_ringcast(bin, cores, link.as_ref(), extra, out_dir, &log)
                .map_err(|e| std::io::Error::other(format!("node {i}: {e} (see {log})")))?;
            s.nodes.push(n);
        }
        Ok(s)
    }

    /// One server, no JetStream (nats-server as the target).
    pub fn single(s: Spawned) -> Servers {
        Servers {
            nodes: vec![s],
            jetstream: None,
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    pub fn description(&self) -> String {
        let mut d: Vec<String> = Vec::new();
        if let Some(js) = &self.jetstream {
            d.push(js.description.clone());
        }
        for n in &self.nodes {
            d.push(n.description.clone());
        }
        d.join(" + ")
    }

    /// Measured servers that have exited, as `node <i> (pid): <status>`.
    pub fn exited(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, n)| {
                n.exited()
                    .map(|st| format!("node {i} (pid {}): {st}", n.pid))
            })
            .collect()
    }

    /// CPU seconds of all measured servers together.
    pub fn cpu_seconds(&self) -> Option<f64> {
        sum_all(&self.nodes, Spawned::cpu_seconds)
    }

    /// RSS of all measured servers together, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        sum_all(&self.nodes, Spawned::rss_kib)
    }

    /// Sum of each server's own peak RSS, KiB (an upper bound of the peak of the sum).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        sum_all(&self.nodes, Spawned::peak_rss_kib)
    }

    /// Sum over the nodes of the `/metrics` series `name`; `None` unless every node answered
    /// and has it.
    pub fn metric_sum(&self, name: &str) -> Option<u64> {
        sum_all(&self.nodes, |n| {
            fetch_metrics(n.addr).and_then(|t| metric_sum(&t, name))
        })
    }

    /// CPU seconds of the cluster's nats-server.
    pub fn jetstream_cpu_seconds(&self) -> Option<f64> {
        self.jetstream.as_ref().and_then(Spawned::cpu_seconds)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        // Signal every node first so their shutdown graces run in parallel; each Spawned then
        // waits for (or kills) its own process, nodes before JetStream.
        for n in &self.nodes {
            n.terminate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_servers_are_unknown_when_one_is_unknown() {
        assert_eq!(sum_all(&[1u64, 2, 3], |x| Some(*x)), Some(6));
        assert_eq!(sum_all(&[1u64, 2, 3], |x| (*x != 2).then_some(*x)), None);
    }
}
