//! Spawning one ringcast node: its command line (listen address, cores, the cluster flags
//! that join it to the run's JetStream stream, the user's `--server-arg`s), its log file, and
//! readiness by `GET /healthz`. Called from the main thread only.

use super::spawned::{free_addr, launch, log_file, Ready, Spawned};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// Where a cluster node finds the bench's JetStream, and the stream it uses there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterLink {
    pub nats_url: String,
    /// Fresh per run (`BENCH<pid>`), so a run never reads another run's messages.
    pub stream: String,
    /// Subjects live under `<prefix>.`; fresh per run too, because two streams of one
    /// nats-server may not overlap in subjects.
    pub prefix: String,
}

impl ClusterLink {
    /// Stream and prefix named after this process.
    pub fn for_run(nats_url: String, pid: u32) -> ClusterLink {
        ClusterLink {
            nats_url,
            stream: format!("BENCH{pid}"),
            prefix: format!("bench{pid}"),
        }
    }
}

/// Command line of one spawned ringcast: listen address and cores, the cluster flags when
/// clustered, then the user's `--server-arg`s.
pub fn ringcast_args(
    addr: SocketAddr,
    cores: usize,
    cluster: Option<&ClusterLink>,
    extra: &[String],
) -> Vec<String> {
    let mut v = vec![
        "--listen".to_string(),
        addr.to_string(),
        "--cores".to_string(),
        cores.to_string(),
    ];
    if let Some(c) = cluster {
        v.extend([
            "--nats-url".to_string(),
            c.nats_url.clone(),
            "--nats-stream".to_string(),
            c.stream.clone(),
            "--nats-prefix".to_string(),
            c.prefix.clone(),
        ]);
    }
    v.extend(extra.iter().cloned());
    v
}

/// Starts one ringcast; its stderr goes to `out_dir/<log>`.
pub fn spawn_ringcast(
    bin: &Path,
    cores: usize,
    cluster: Option<&ClusterLink>,
    extra: &[String],
    out_dir: &Path,
    log: &str,
) -> std::io::Result<Spawned> {
    let addr = free_addr()?;
    let args = ringcast_args(addr, cores, cluster, extra);
    let mut cmd = Command::new(bin);
    cmd.args(&args);
    cmd.env(
        "RINGCAST_LOG",
        std::env::var("RINGCAST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd.stdout(Stdio::null()).stderr(log_file(out_dir, log));
    let description = format!("{} {}", bin.display(), args.join(" "));
    let name = bin.display().to_string();
    launch(&mut cmd, addr, &name, Ready::Healthz, description, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    #[test]
    fn a_plain_node_gets_listen_and_cores_then_the_extra_args() {
        let extra = vec!["--driver=legacy".to_string()];
        assert_eq!(
            ringcast_args(addr(), 2, None, &extra),
            [
                "--listen",
                "127.0.0.1:4000",
                "--cores",
                "2",
                "--driver=legacy"
            ]
        );
    }

    #[test]
    fn a_cluster_node_gets_the_nats_url_and_the_run_stream() {
        let link = ClusterLink::for_run("nats://127.0.0.1:4222".into(), 77);
        assert_eq!(link.stream, "BENCH77");
        assert_eq!(link.prefix, "bench77");
        assert_eq!(
            ringcast_args(addr(), 1, Some(&link), &[]),
            [
                "--listen",
                "127.0.0.1:4000",
                "--cores",
                "1",
                "--nats-url",
                "nats://127.0.0.1:4222",
                "--nats-stream",
                "BENCH77",
                "--nats-prefix",
                "bench77"
            ]
        );
    }
}
