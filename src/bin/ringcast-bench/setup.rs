//! From the command line to a running [`Bench`], on the main thread: the output directory and
//! the open-file limit, whether the run is clustered, the server(s) — an external `--url`, or
//! ringcast node(s) / nats-server spawned for the run — and their endpoints, the source
//! addresses for loopback, and the generator threads. Prints the banner line.

use crate::bench::{Bench, RunInfo};
use crate::server::{self, Servers};
use crate::wire::{Endpoint, Target};
use crate::{output, procfs, scenarios, worker, Args, Scenario};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

impl Bench {
    /// Everything a scenario needs, started; the servers stop when the result drops.
    pub fn setup(args: Args, scenario: Scenario) -> Result<Bench, String> {
        std::fs::create_dir_all(&args.out_dir)
            .map_err(|e| format!("create {}: {e}", args.out_dir.display()))?;
        let nofile = open_file_limit(scenarios::connections(&args, scenario));
        let clustered = cluster_mode(&args)?;
        let n_nodes = if args.url.is_some() { 1 } else { args.nodes };
        let name = output::run_name(&args, scenario, n_nodes, clustered);
        let (mut eps, server) = servers(&args, clustered, &name)?;
        if args.sse {
            sse_endpoints(&args, scenario, &mut eps)?;
        }
        let ep = eps[0].clone();
        let srcs = source_ips(&ep, args.source_ips);
        let (workers, driver) =
            worker::start(args.threads.max(1), eps.clone(), args.driver, !args.no_pin);
        let server_desc = server.as_ref().map_or_else(
            || format!("external {}", args.url.as_deref().unwrap_or("")),
            Servers::description,
        );
        eprintln!(
            "ringcast-bench: {} against {} ({}), {} generator threads ({driver}), nofile {nofile}",
            scenario.name(),
            ep.target.name(),
            server_desc,
            workers.len()
        );
        Ok(Bench {
            args,
            scenario,
            ep,
            eps,
            workers,
            server,
            srcs,
            nofile,
            info: RunInfo {
                name,
                clustered,
                driver,
                server_desc,
            },
        })
    }
}

/// Raises the open-file limit for `conns` connections (and the spawned servers, which inherit
/// it); warns when it stays too low. Returns the limit.
fn open_file_limit(conns: usize) -> u64 {
    let nofile = procfs::raise_nofile(conns as u64 * 2 + 4096);
    if nofile < conns as u64 + 1024 {
        eprintln!("warning: open-file limit {nofile} is below the {conns} connections asked for");
    }
    nofile
}

/// Whether the run spawns its ringcast node(s) in cluster mode (`--nodes` > 1 or `--cluster`),
/// or why the flags do not fit together.
fn cluster_mode(args: &Args) -> Result<bool, String> {
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let clustered = args.nodes > 1 || args.cluster;
    if clustered && (args.url.is_some() || args.target != Target::Ringcast) {
        return Err(
            "--nodes > 1 / --cluster spawn ringcast nodes: not with --url or --target nats".into(),
        );
    }
    Ok(clustered)
}

/// The endpoints under test: `--url`, or one per server spawned for the run (returned too).
fn servers(
    args: &Args,
    clustered: bool,
    name: &str,
) -> Result<(Vec<Endpoint>, Option<Servers>), String> {
    if let Some(u) = &args.url {
        return Ok((vec![parse_url(u, args.target)?], None));
    }
    let s = spawn(args, clustered, name)?;
    let eps = s
        .addrs()
        .into_iter()
        .map(|addr| Endpoint {
            addr,
            host: addr.to_string(),
            path: args.target.default_path().into(),
            target: args.target,
            sse: false,
        })
        .collect();
    Ok((eps, Some(s)))
}

/// Starts the `--target` server(s): ringcast node(s) (on a JetStream when clustered) or
/// nats-server.
fn spawn(args: &Args, clustered: bool, name: &str) -> Result<Servers, String> {
    match args.target {
        Target::Ringcast => {
            let bin = args.spawn_server.clone().or_else(default_ringcast).ok_or(
                "no ringcast binary found (build with `cargo build --release`, or give --spawn-server / --url)",
            )?;
            Servers::ringcast(
                &bin,
                args.nodes,
                args.server_cores,
                clustered,
                &args.nats_server,
                &args.server_args,
                &args.out_dir,
                name,
            )
            .map_err(|e| e.to_string())
        }
        Target::Nats => Ok(Servers::single(
            server::spawn_nats(&args.nats_server, &args.out_dir).map_err(|e| e.to_string())?,
        )),
    }
}

/// `ringcast` next to this binary, else `target/release/ringcast`.
fn default_ringcast() -> Option<PathBuf> {
    let mut c = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            c.push(dir.join("ringcast"));
        }
    }
    c.push(PathBuf::from("target/release/ringcast"));
    c.into_iter().find(|p| p.is_file())
}

fn parse_url(url: &str, target: Target) -> Result<Endpoint, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("only ws:// URLs are supported: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, target.default_path().to_string()),
    };
    let hp = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = hp
        .to_socket_addrs()
        .map_err(|e| format!("resolve {hp}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("no IPv4 address for {hp}"))?;
    Ok(Endpoint {
        addr,
        host: hostport.to_string(),
        path,
        target,
        sse: false,
    })
}

/// `--sse`: the endpoints open `GET /sse?subject=bench.idle` streams instead of WebSockets.
fn sse_endpoints(args: &Args, scenario: Scenario, eps: &mut [Endpoint]) -> Result<(), String> {
    if args.target != Target::Ringcast || !matches!(scenario, Scenario::Idle | Scenario::Storm) {
        return Err("--sse is for the idle and storm scenarios against ringcast".into());
    }
    for ep in eps {
        ep.sse = true;
        ep.path = "/sse?subject=bench.idle".into();
    }
    Ok(())
}

/// 127.0.0.2..=127.0.0.(1+n) when the server is on loopback (more source ports), else none.
fn source_ips(ep: &Endpoint, n: u8) -> Vec<Ipv4Addr> {
    match ep.addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => {
            (0..n).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::cluster_suffix;
    use crate::tests::args;

    #[test]
    fn one_plain_node_by_default() {
        let a = args("ringcast-bench broadcast");
        assert_eq!(a.nodes, 1);
        assert_eq!(cluster_mode(&a), Ok(false));
    }

    #[test]
    fn more_than_one_node_means_cluster_mode() {
        assert_eq!(cluster_mode(&args("b broadcast --nodes 2")), Ok(true));
    }

    #[test]
    fn cluster_flag_runs_one_node_through_jetstream() {
        let a = args("b broadcast --nodes 1 --cluster");
        assert_eq!(cluster_mode(&a), Ok(true));
        assert_eq!(cluster_suffix(a.nodes, true), "-cluster1");
    }

    #[test]
    fn cluster_mode_refuses_external_url_nats_target_and_zero_nodes() {
        assert!(cluster_mode(&args("b broadcast --nodes 2 --url ws://127.0.0.1:1")).is_err());
        assert!(cluster_mode(&args("b broadcast --cluster --target nats")).is_err());
        assert!(cluster_mode(&args("b broadcast --nodes 0")).is_err());
        // Plain runs keep working with both.
        assert_eq!(
            cluster_mode(&args("b broadcast --url ws://127.0.0.1:1")),
            Ok(false)
        );
        assert_eq!(cluster_mode(&args("b broadcast --target nats")), Ok(false));
    }

    #[test]
    fn a_url_without_a_path_gets_the_targets_default() {
        let ep = parse_url("ws://127.0.0.1:9000", Target::Ringcast).unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.path.as_str()),
            ("127.0.0.1:9000", "/ws")
        );
        assert_eq!(
            parse_url("ws://127.0.0.1:9000", Target::Nats).unwrap().path,
            "/"
        );
        assert_eq!(
            parse_url("ws://127.0.0.1/x", Target::Nats)
                .unwrap()
                .addr
                .port(),
            80
        );
        assert!(parse_url("wss://127.0.0.1", Target::Ringcast).is_err());
    }
}
