//! `ringcast-bench`: load generator for ringcast (and NATS over WebSocket for comparison).
//!
//! Thread-per-core like the gateway: `--threads` pinned monoio runtimes (io_uring, epoll
//! fallback) hold the subscriber connections, spread over 127.0.0.2..  source addresses so
//! loopback can pass 28k connections. Publishers are open loop at a constant rate: each message
//! carries its intended send time (CLOCK_MONOTONIC ns) and latency is measured from it, so a
//! stalled server or sender cannot hide its queueing (no coordinated omission).
//!
//! Scenarios: `broadcast` (1 subject, N subscribers, rate sweep), `pricefeed` (many subjects,
//! random subscriptions plus `prices.>`), `idle` (server RSS per idle WebSocket), `storm`
//! (connections/s). Results: a table on stdout, JSON + CSV + SVG under `--out-dir`.
//!
//! Cluster mode: `--nodes N` (N > 1) or `--cluster` starts one `nats-server -js` and N ringcast
//! nodes joined to it (`--nats-url`, a fresh stream per run). Subscribers are spread over the
//! nodes round-robin; each publisher connects to every node and spreads its publishes over them
//! (`--pub-spread`). Server CPU / RSS are the sum over the nodes; the nats-server's CPU is its
//! own column.

#[path = "ringcast-bench/publisher.rs"]
mod publisher;
#[path = "ringcast-bench/report.rs"]
mod report;
#[path = "ringcast-bench/server.rs"]
mod server;
#[path = "ringcast-bench/wire.rs"]
mod wire;
#[path = "ringcast-bench/worker.rs"]
mod worker;

use clap::Parser;
use publisher::{PubShared, Publisher, Spread};
use report::Row;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;
use wire::{mono_ns, Endpoint, Target};
use worker::{Cmd, ConnSpec, Driver, Role, Stats};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// 1 subject, N subscribers, publish-rate sweep.
    Broadcast,
    /// Many subjects, each subscriber on a few random ones, some on `prices.>`.
    Pricefeed,
    /// N idle WebSockets: server RSS per connection, connect rate.
    Idle,
    /// N clients connecting at once: connections/s until all have their `hello`.
    Storm,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Broadcast => "broadcast",
            Scenario::Pricefeed => "pricefeed",
            Scenario::Idle => "idle",
            Scenario::Storm => "storm",
        }
    }
}

/// Load generator for ringcast (and NATS over WebSocket).
#[derive(Parser, Debug)]
#[command(name = "ringcast-bench", version)]
struct Args {
    /// Scenario (same as --scenario).
    #[arg(value_enum)]
    scenario_pos: Option<Scenario>,
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Server protocol.
    #[arg(long, value_enum, default_value = "ringcast")]
    target: Target,
    /// Server to test, e.g. ws://127.0.0.1:8080 (default: spawn one).
    #[arg(long)]
    url: Option<String>,
    /// ringcast binary to spawn (default: `ringcast` next to this binary, else target/release/ringcast).
    #[arg(long)]
    spawn_server: Option<PathBuf>,
    /// nats-server binary (for --target nats without --url).
    #[arg(long, default_value = "nats-server")]
    nats_server: String,
    /// --cores of a spawned ringcast (of each node with --nodes).
    #[arg(long, default_value_t = 2)]
    server_cores: usize,
    /// ringcast nodes to spawn; more than 1 runs them in cluster mode on a spawned
    /// `nats-server -js` (--nats-server names the binary).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Run the spawned node(s) in cluster mode even with --nodes 1 (one node through JetStream).
    #[arg(long)]
    cluster: bool,
    /// Cluster mode: how publishers spread their messages over the nodes. round-robin: every
    /// subject is published through every node in turn (the nodes race on its seq); sticky: a
    /// subject always goes through one node.
    #[arg(long, value_enum, default_value = "round-robin")]
    pub_spread: Spread,
    /// Extra argument for a spawned ringcast (repeatable), e.g. --server-arg=--driver=legacy.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Generator threads (one pinned monoio runtime each).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Do not pin the generator threads to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Generator I/O driver.
    #[arg(long, value_enum, default_value = "auto")]
    driver: Driver,
    /// Source addresses 127.0.0.2..=127.0.0.(1+N) for loopback targets (0: let the kernel pick).
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
    /// Subscriber connections (broadcast: 1000, pricefeed: 10000).
    #[arg(long)]
    subscribers: Option<usize>,
    /// pricefeed: number of subjects prices.SYM0000...
    #[arg(long, default_value_t = 1000)]
    subjects: usize,
    /// pricefeed: random subjects per (non-wildcard) subscriber.
    #[arg(long, default_value_t = 10)]
    subs_per_conn: usize,
    /// pricefeed: percent of subscribers on `prices.>` instead.
    #[arg(long, default_value_t = 5.0)]
    wildcard_pct: f64,
    /// Payload bytes (the `data` JSON): broadcast 100, pricefeed 150.
    #[arg(long)]
    payload: Option<usize>,
    /// Aggregate publishes/s per step (broadcast default 1000,2000,3000,4000,6000,8000,10000;
    /// pricefeed 20000).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Seconds of publishing per step.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Publisher connections (broadcast: always 1; pricefeed default 2, subjects split).
    #[arg(long)]
    publishers: Option<usize>,
    /// Stop the sweep after a step with p99 above this (ms).
    #[arg(long, default_value_t = 100.0)]
    p99_limit_ms: f64,
    /// Do not stop the sweep on loss / slow-consumer closes / p99 limit.
    #[arg(long)]
    keep_going: bool,
    /// idle / storm: open SSE streams (`GET /sse?subject=bench.idle`) instead of WebSockets.
    #[arg(long)]
    sse: bool,
    /// idle: connections (50000); storm: clients (10000).
    #[arg(long)]
    conns: Option<usize>,
    /// Connects in flight per generator thread (storm: all at once regardless).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Per-connection limit for TCP connect + upgrade, seconds.
    #[arg(long, default_value_t = 20.0)]
    connect_timeout: f64,
    /// Read buffer bytes per subscriber connection.
    #[arg(long, default_value_t = 32 << 10)]
    read_buf: usize,
    /// Longest wait after a step for in-flight deliveries, seconds.
    #[arg(long, default_value_t = 10.0)]
    drain_secs: f64,
    /// Output directory for JSON / CSV / SVG.
    #[arg(long, default_value = "target/ringcast-bench")]
    out_dir: PathBuf,
    /// Suffix for output file names.
    #[arg(long)]
    label: Option<String>,
    /// Seed for the pricefeed subscriptions.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Skip the SVG chart.
    #[arg(long)]
    no_svg: bool,
}

struct Bench {
    args: Args,
    scenario: Scenario,
    /// The first server's endpoint (target, path: the same for every node).
    ep: Endpoint,
    /// One per server (cluster node), in node order.
    eps: Vec<Endpoint>,
    workers: Vec<crossbeam_channel::Sender<Cmd>>,
    server: Option<server::Servers>,
    srcs: Vec<Ipv4Addr>,
    nofile: u64,
}

fn main() {
    let args = Args::parse();
    let Some(scenario) = args.scenario.or(args.scenario_pos) else {
        eprintln!("ringcast-bench: give a scenario: broadcast | pricefeed | idle | storm");
        std::process::exit(2);
    };
    match run(args, scenario) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("ringcast-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn parse_url(url: &str, target: Target) -> Result<Endpoint, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("only ws:// URLs are supported: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (
            rest,
            if target == Target::Ringcast {
                "/ws".to_string()
            } else {
                "/".to_string()
            },
        ),
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

fn run(args: Args, scenario: Scenario) -> Result<(), String> {
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("create {}: {e}", args.out_dir.display()))?;
    let conns_needed = match scenario {
        Scenario::Idle => args.conns.unwrap_or(50_000),
        Scenario::Storm => args.conns.unwrap_or(10_000),
        Scenario::Broadcast => args.subscribers.unwrap_or(1000),
        Scenario::Pricefeed => args.subscribers.unwrap_or(10_000),
    };
    let nofile = server::raise_nofile(conns_needed as u64 * 2 + 4096);
    if nofile < conns_needed as u64 + 1024 {
        eprintln!(
            "warning: open-file limit {nofile} is below the {conns_needed} connections asked for"
        );
    }
    let clustered = cluster_mode(&args)?;
    let n_nodes = if args.url.is_some() { 1 } else { args.nodes };
    let name = format!(
        "{}-{}{}{}",
        scenario.name(),
        args.target.name(),
        cluster_suffix(n_nodes, clustered),
        args.label
            .as_deref()
            .map(|l| format!("-{l}"))
            .unwrap_or_default()
    );
    let (mut eps, srv) = match &args.url {
        Some(u) => (vec![parse_url(u, args.target)?], None),
        None => {
            let s = match args.target {
                Target::Ringcast => {
                    let bin = args.spawn_server.clone().or_else(default_ringcast).ok_or(
                        "no ringcast binary found (build with `cargo build --release`, or give --spawn-server / --url)",
                    )?;
                    server::Servers::ringcast(
                        &bin,
                        args.nodes,
                        args.server_cores,
                        clustered,
                        &args.nats_server,
                        &args.server_args,
                        &args.out_dir,
                        &name,
                    )
                    .map_err(|e| e.to_string())?
                }
                Target::Nats => server::Servers::single(
                    server::spawn_nats(&args.nats_server, &args.out_dir)
                        .map_err(|e| e.to_string())?,
                ),
            };
            let path = if args.target == Target::Ringcast {
                "/ws"
            } else {
                "/"
            };
            let eps = s
                .addrs()
                .into_iter()
                .map(|addr| Endpoint {
                    addr,
                    host: addr.to_string(),
                    path: path.into(),
                    target: args.target,
                    sse: false,
                })
                .collect();
            (eps, Some(s))
        }
    };
    if args.sse {
        if args.target != Target::Ringcast || !matches!(scenario, Scenario::Idle | Scenario::Storm)
        {
            return Err("--sse is for the idle and storm scenarios against ringcast".into());
        }
        for ep in &mut eps {
            ep.sse = true;
            ep.path = "/sse?subject=bench.idle".into();
        }
    }
    let ep = eps[0].clone();
    let srcs: Vec<Ipv4Addr> = match ep.addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => (0..args.source_ips)
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i))
            .collect(),
        _ => Vec::new(),
    };
    let (workers, driver) =
        worker::start(args.threads.max(1), eps.clone(), args.driver, !args.no_pin);
    let server_desc = srv.as_ref().map_or_else(
        || format!("external {}", args.url.as_deref().unwrap_or("")),
        server::Servers::description,
    );
    eprintln!(
        "ringcast-bench: {} against {} ({}), {} generator threads ({driver}), nofile {nofile}",
        scenario.name(),
        ep.target.name(),
        server_desc,
        workers.len()
    );
    let mut b = Bench {
        args,
        scenario,
        ep,
        eps,
        workers,
        server: srv,
        srcs,
        nofile,
    };
    let rows = match scenario {
        Scenario::Broadcast | Scenario::Pricefeed => b.fanout()?,
        Scenario::Idle | Scenario::Storm => b.connect_scenario()?,
    };
    let table = report::table(&rows);
    println!("{table}");
    let json = serde_json::json!({
        "scenario": scenario.name(),
        "target": b.ep.target.name(),
        "server": server_desc,
        "nodes": b.eps.len(),
        "cluster": clustered,
        "generator": { "threads": b.workers.len(), "driver": driver, "source_ips": b.srcs.len() },
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
        "rows": rows,
    });
    let dir = &b.args.out_dir;
    let write = |file: String, body: String| {
        let p = dir.join(file);
        if let Err(e) = std::fs::write(&p, body) {
            eprintln!("write {}: {e}", p.display());
        }
    };
    write(
        format!("{name}.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    );
    write(format!("{name}.csv"), report::csv(&rows));
    if !b.args.no_svg && matches!(scenario, Scenario::Broadcast | Scenario::Pricefeed) {
        let title = format!(
            "{} vs {}: latency vs offered load",
            scenario.name(),
            b.ep.target.name()
        );
        if let Err(e) = report::svg(&rows, &title, &dir.join(format!("{name}.svg"))) {
            eprintln!("svg: {e}");
        }
    }
    eprintln!(
        "ringcast-bench: wrote {}/{name}.{{json,csv{}}}",
        dir.display(),
        if b.args.no_svg { "" } else { ",svg" }
    );
    for w in &b.workers {
        let _ = w.send(Cmd::Shutdown);
    }
    drop(b.server.take());
    Ok(())
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

/// File-name part telling cluster runs apart: `-cluster2` for 2 nodes on JetStream, empty for
/// a plain single server.
fn cluster_suffix(nodes: usize, clustered: bool) -> String {
    if clustered {
        format!("-cluster{nodes}")
    } else {
        String::new()
    }
}

/// Server (cluster node) of the `i`-th connection: round-robin.
fn node_of(i: usize, nodes: usize) -> usize {
    i % nodes.max(1)
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({ "cpu": cpu, "cores": cores, "kernel": kernel })
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
}

impl Bench {
    fn src(&self, i: usize) -> Option<Ipv4Addr> {
        if self.srcs.is_empty() {
            None
        } else {
            Some(self.srcs[i % self.srcs.len()])
        }
    }

    /// Which spawned servers have exited (crashed or were killed) during the run, if any.
    fn dead_servers(&mut self) -> Option<String> {
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
    fn cluster_conflicts(&self) -> Option<u64> {
        let s = self.server.as_ref().filter(|s| s.jetstream.is_some())?;
        s.metric_sum("ringcast_cluster_conflicts_total")
    }

    fn snapshot(&self, hist: bool) -> Stats {
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
    fn connect(
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

    fn fanout(&mut self) -> Result<Vec<Row>, String> {
        let a = &self.args;
        let broadcast = self.scenario == Scenario::Broadcast;
        let subs = a
            .subscribers
            .unwrap_or(if broadcast { 1000 } else { 10_000 });
        let payload = a.payload.unwrap_or(if broadcast { 100 } else { 150 });
        let rates: Vec<f64> = if !a.rates.is_empty() {
            a.rates.clone()
        } else if broadcast {
            vec![1000.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0, 10000.0]
        } else {
            vec![20000.0]
        };
        let n_subjects = if broadcast { 1 } else { a.subjects.max(1) };
        let subject = |i: usize| {
            if broadcast {
                "bench.bcast.0".to_string()
            } else {
                format!("prices.SYM{i:04}")
            }
        };
        let mut fanout = vec![0u64; n_subjects];
        let mut specs = Vec::with_capacity(subs);
        let mut rng = Rng(a.seed.max(1));
        let wildcards = if broadcast {
            0
        } else {
            ((subs as f64) * a.wildcard_pct / 100.0).round() as usize
        };
        let mut total_subs = 0u64;
        for i in 0..subs {
            let role = if broadcast {
                fanout[0] += 1;
                Role::Sub {
                    subjects: vec![subject(0)],
                    dense: None,
                }
            } else if wildcards > 0 && (i * wildcards) / subs != ((i + 1) * wildcards) / subs {
                fanout.iter_mut().for_each(|f| *f += 1);
                Role::Sub {
                    subjects: vec!["prices.>".to_string()],
                    dense: Some(n_subjects),
                }
            } else {
                let k = a.subs_per_conn.min(n_subjects);
                let mut chosen: Vec<usize> = Vec::with_capacity(k);
                while chosen.len() < k {
                    let s = (rng.next() % n_subjects as u64) as usize;
                    if !chosen.contains(&s) {
                        chosen.push(s);
                    }
                }
                chosen.iter().for_each(|&s| fanout[s] += 1);
                Role::Sub {
                    subjects: chosen.into_iter().map(subject).collect(),
                    dense: None,
                }
            };
            if let Role::Sub { subjects, .. } = &role {
                total_subs += subjects.len() as u64;
            }
            specs.push(ConnSpec {
                role,
                src: self.src(i),
                node: node_of(i, self.eps.len()),
            });
        }
        let t0 = mono_ns();
        let (_, st) = self.connect(specs, a.connect_concurrency, a.read_buf, total_subs)?;
        eprintln!(
            "  {} subscribers ({} subscriptions, {} wildcard) ready in {:.2} s; {} failed",
            st.connected,
            total_subs,
            wildcards,
            (mono_ns() - t0) as f64 / 1e9,
            st.connect_failed
        );
        if st.connect_failed > 0 {
            return Err(format!(
                "{} subscriber connections failed: {:?}{}",
                st.connect_failed,
                st.first_error,
                self.dead_servers()
                    .map(|d| format!("; {d}"))
                    .unwrap_or_default()
            ));
        }
        let n_pubs = if broadcast {
            1
        } else {
            a.publishers.unwrap_or(2).clamp(1, n_subjects)
        };
        let shared = PubShared::new(n_subjects);
        let mut pubs = Vec::new();
        for p in 0..n_pubs {
            let mine: Vec<String> = (0..n_subjects)
                .filter(|s| s % n_pubs == p)
                .map(subject)
                .collect();
            pubs.push(
                Publisher::connect(
                    &self.eps,
                    self.args.pub_spread,
                    self.src(subs + p),
                    mine,
                    shared.clone(),
                )
                .map_err(|e| format!("publisher connect: {e}"))?,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        let target = self.ep.target;
        let counts = |shared: &PubShared| -> Vec<u64> {
            let v = if target == Target::Ringcast {
                &shared.acked
            } else {
                &shared.sent
            };
            v.iter().map(|x| x.load(Ordering::Relaxed)).collect()
        };
        let expected_of = |c: &[u64]| -> u64 { c.iter().zip(&fanout).map(|(n, f)| n * f).sum() };
        let sent_total = |shared: &PubShared| -> u64 {
            shared.sent.iter().map(|x| x.load(Ordering::Relaxed)).sum()
        };
        let mut rows = Vec::new();
        let dur_ns = (self.args.duration * 1e9) as u64;
        for rate in rates {
            let before = self.snapshot(true);
            let c0 = counts(&shared);
            let errs0 = shared.errors.load(Ordering::Relaxed);
            let cpu0 = self.server.as_ref().and_then(|s| s.cpu_seconds());
            let js0 = self.server.as_ref().and_then(|s| s.jetstream_cpu_seconds());
            let gen0 = server::cpu_seconds(std::process::id());
            let m0 = server::machine_cpu();
            let conflicts0 = self.cluster_conflicts();
            let start = mono_ns() + 50_000_000;
            std::thread::scope(|sc| {
                for p in pubs.iter_mut() {
                    let r = rate / n_pubs as f64;
                    sc.spawn(move || p.run_step(start, dur_ns, r, payload));
                }
            });
            let pub_end = mono_ns();
            let mut last_delivered = u64::MAX;
            let mut last_progress = pub_end;
            let mut s;
            loop {
                std::thread::sleep(Duration::from_millis(10));
                s = self.snapshot(false);
                let now = mono_ns();
                let c = counts(&shared);
                let acked_all = target == Target::Nats
                    || c.iter().sum::<u64>() + shared.errors.load(Ordering::Relaxed)
                        >= sent_total(&shared);
                if acked_all && s.delivered >= expected_of(&c) {
                    break;
                }
                if s.delivered != last_delivered {
                    last_delivered = s.delivered;
                    last_progress = now;
                }
                if now - last_progress > 1_000_000_000
                    || now - pub_end > (self.args.drain_secs * 1e9) as u64
                {
                    break;
                }
            }
            let after = self.snapshot(true);
            let cpu1 = self.server.as_ref().and_then(|x| x.cpu_seconds());
            let js1 = self.server.as_ref().and_then(|s| s.jetstream_cpu_seconds());
            let gen1 = server::cpu_seconds(std::process::id());
            let m1 = server::machine_cpu();
            let conflicts = conflicts0
                .zip(self.cluster_conflicts())
                .map(|(a, b)| b.saturating_sub(a));
            let gen_cpu = gen0.zip(gen1).map(|(a, b)| b - a);
            let js_cpu = js0.zip(js1).map(|(a, b)| b - a);
            let other_cpu = m0.zip(m1).map(|(a, b)| {
                (b.0 - a.0)
                    - gen_cpu.unwrap_or(0.0)
                    - js_cpu.unwrap_or(0.0)
                    - cpu0.zip(cpu1).map_or(0.0, |(x, y)| y - x)
            });
            let c1 = counts(&shared);
            let lag = {
                let mut l = shared.lag.lock().expect("lock");
                let v = l.value_at_quantile(0.99);
                l.reset();
                v
            };
            let published: u64 = c1.iter().sum::<u64>() - c0.iter().sum::<u64>();
            let expected = expected_of(&c1) - expected_of(&c0);
            let delivered = after.delivered - before.delivered;
            let h = &after.hist;
            let ms = |ns: u64| ns as f64 / 1e6;
            let wall = (after.last_msg_ns.max(pub_end) - start) as f64 / 1e9;
            let row = Row {
                scenario: self.scenario.name().into(),
                target: target.name().into(),
                subscribers: subs as u64,
                subjects: n_subjects as u64,
                payload_bytes: payload as u64,
                pub_rate: rate,
                duration_s: self.args.duration,
                published,
                expected,
                delivered,
                offered_msgs_s: expected as f64 / self.args.duration,
                delivered_msgs_s: delivered as f64 / wall.max(self.args.duration),
                p50_ms: ms(h.value_at_quantile(0.5)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                p999_ms: ms(h.value_at_quantile(0.999)),
                max_ms: ms(h.max()),
                pub_lag_p99_ms: ms(lag),
                lost: expected_of(&c1) as i64 - after.delivered as i64,
                gaps: after.gaps - before.gaps,
                reorders: after.reorders - before.reorders,
                slow_closes: after.slow_closes - before.slow_closes,
                other_closes: after.other_closes - before.other_closes,
                disconnects: after.disconnects - before.disconnects,
                errors: (after.errors - before.errors)
                    + (shared.errors.load(Ordering::Relaxed) - errs0),
                server_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
                server_cpu_util: cpu0
                    .zip(cpu1)
                    .map(|(a, b)| (b - a) / wall.max(self.args.duration)),
                server_peak_rss_mib: self
                    .server
                    .as_ref()
                    .and_then(|x| x.peak_rss_kib())
                    .map(|k| k as f64 / 1024.0),
                generator_cpu_s: gen_cpu,
                nats_cpu_s: js_cpu,
                cluster_conflicts: conflicts,
                other_cpu_s: other_cpu.map(|x| x.max(0.0)),
                nodes: self.eps.len() as u64,
                cluster: self.server.as_ref().is_some_and(|s| s.jetstream.is_some()),
                first_error: after
                    .first_error
                    .clone()
                    .or_else(|| shared.first_error.lock().expect("lock").clone()),
                ..Row::default()
            };
            eprintln!(
                "  pub {}/s: offered {}/s delivered {}/s p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms, lost {} gaps {} reorder {} 4008 {} other {} pub errors {} guard conflicts {}; CPU s server {} nats {} gen {} other {}",
                report::fmt_rate(rate),
                report::fmt_rate(row.offered_msgs_s),
                report::fmt_rate(row.delivered_msgs_s),
                row.p50_ms,
                row.p99_ms,
                row.p999_ms,
                row.max_ms,
                row.lost,
                row.gaps,
                row.reorders,
                row.slow_closes,
                row.other_closes + row.disconnects,
                shared.errors.load(Ordering::Relaxed) - errs0,
                row.cluster_conflicts.map_or("-".into(), |x| x.to_string()),
                row.server_cpu_s.map_or("-".into(), |x| format!("{x:.2}")),
                row.nats_cpu_s.map_or("-".into(), |x| format!("{x:.2}")),
                row.generator_cpu_s.map_or("-".into(), |x| format!("{x:.2}")),
                row.other_cpu_s.map_or("-".into(), |x| format!("{x:.2}")),
            );
            if let Some(e) = &row.first_error {
                eprintln!("    first error: {e}");
            }
            if let Some(e) = shared.first_error.lock().expect("lock").as_ref() {
                if row.first_error.as_ref() != Some(e) {
                    eprintln!("    first publisher error: {e}");
                }
            }
            let bad = row.lost != 0
                || row.gaps > 0
                || row.reorders > 0
                || row.slow_closes > 0
                || row.other_closes + row.disconnects > 0
                || row.p99_ms > self.args.p99_limit_ms;
            rows.push(row);
            if let Some(dead) = self.dead_servers() {
                eprintln!("  stopping the sweep: {dead}");
                break;
            }
            if bad && !self.args.keep_going {
                eprintln!(
                    "  stopping the sweep: loss, closes or p99 above {} ms",
                    self.args.p99_limit_ms
                );
                break;
            }
        }
        Ok(rows)
    }

    fn connect_scenario(&mut self) -> Result<Vec<Row>, String> {
        let storm = self.scenario == Scenario::Storm;
        let asked = self
            .args
            .conns
            .unwrap_or(if storm { 10_000 } else { 50_000 });
        // Keep descriptors for /proc reads: past the limit every connect fails with EMFILE
        // and the RSS readings would fail too.
        let n = asked.min(self.nofile.saturating_sub(256) as usize);
        if n < asked {
            eprintln!(
                "warning: {asked} connections asked, {n} attempted: RLIMIT_NOFILE is {} and could not be raised (no CAP_SYS_RESOURCE?)",
                self.nofile
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        let rss0 = self.server.as_ref().and_then(|s| s.rss_kib());
        let cpu0 = self.server.as_ref().and_then(|s| s.cpu_seconds());
        let gen0 = server::cpu_seconds(std::process::id());
        let specs: Vec<ConnSpec> = (0..n)
            .map(|i| ConnSpec {
                role: Role::Idle,
                src: self.src(i),
                node: node_of(i, self.eps.len()),
            })
            .collect();
        let conc = if storm {
            n
        } else {
            self.args.connect_concurrency
        };
        let (start, st) = self.connect(specs, conc, 256, 0)?;
        let gen1 = server::cpu_seconds(std::process::id());
        let secs = (st.last_ready_ns.max(start) - start) as f64 / 1e9;
        if !storm {
            std::thread::sleep(Duration::from_secs(2));
        }
        let rss1 = self.server.as_ref().and_then(|s| s.rss_kib());
        let cpu1 = self.server.as_ref().and_then(|s| s.cpu_seconds());
        let after = self.snapshot(false);
        let row = Row {
            scenario: self.scenario.name().into(),
            target: self.ep.target.name().into(),
            conns: Some(st.connected),
            connect_failed: Some(st.connect_failed),
            connect_s: Some(secs),
            conns_per_s: Some(st.connected as f64 / secs.max(1e-9)),
            server_rss_before_kib: rss0,
            server_rss_after_kib: rss1,
            rss_per_conn_bytes: rss0
                .zip(rss1)
                .map(|(a, b)| (b as f64 - a as f64) * 1024.0 / st.connected.max(1) as f64),
            server_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
            server_peak_rss_mib: self
                .server
                .as_ref()
                .and_then(|x| x.peak_rss_kib())
                .map(|k| k as f64 / 1024.0),
            generator_cpu_s: gen0.zip(gen1).map(|(a, b)| b - a),
            other_closes: after.other_closes,
            disconnects: after.disconnects,
            slow_closes: after.slow_closes,
            first_error: after.first_error.clone(),
            nodes: self.eps.len() as u64,
            cluster: self.server.as_ref().is_some_and(|s| s.jetstream.is_some()),
            ..Row::default()
        };
        eprintln!(
            "  {} connected ({} failed) in {:.2} s = {}/s; server RSS {:?} -> {:?} KiB",
            st.connected,
            st.connect_failed,
            secs,
            report::fmt_rate(row.conns_per_s.unwrap_or(0.0)),
            rss0,
            rss1
        );
        Ok(vec![row])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &str) -> Args {
        Args::try_parse_from(cmd.split_whitespace()).expect("parses")
    }

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
    fn plain_runs_keep_their_file_names() {
        assert_eq!(cluster_suffix(1, false), "");
        assert_eq!(cluster_suffix(3, true), "-cluster3");
    }

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

    #[test]
    fn pub_spread_defaults_to_round_robin() {
        assert_eq!(args("b pricefeed").pub_spread, Spread::RoundRobin);
        assert_eq!(
            args("b pricefeed --pub-spread sticky").pub_spread,
            Spread::Sticky
        );
    }
}
