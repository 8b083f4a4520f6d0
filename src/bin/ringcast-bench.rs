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
//!
//! This file is the command line and the dispatch; the rest, by job: [`setup`] (servers,
//! endpoints, generator threads) builds the run's context [`bench::Bench`]; [`scenarios`] run
//! on it; [`worker`] (subscriber connections, on the generator threads) and [`publisher`]
//! (paced publishers, on threads of their own) make the load; [`wire`] is what they speak;
//! [`server`] spawns what is measured and [`procfs`] reads its CPU and memory; [`report`] and
//! [`output`] show and write the results.

#[path = "ringcast-bench/bench.rs"]
mod bench;
#[path = "ringcast-bench/output.rs"]
mod output;
#[path = "ringcast-bench/procfs.rs"]
mod procfs;
#[path = "ringcast-bench/publisher/mod.rs"]
mod publisher;
#[path = "ringcast-bench/report.rs"]
mod report;
#[path = "ringcast-bench/scenarios/mod.rs"]
mod scenarios;
#[path = "ringcast-bench/server/mod.rs"]
mod server;
#[path = "ringcast-bench/setup.rs"]
mod setup;
#[path = "ringcast-bench/wire/mod.rs"]
mod wire;
#[path = "ringcast-bench/worker/mod.rs"]
mod worker;

use bench::Bench;
use clap::Parser;
use publisher::Spread;
use std::path::PathBuf;
use wire::Target;
use worker::Driver;

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
    #[arg(value_enum, value_name = "SCENARIO")]
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

fn main() {
    let args = Args::parse();
    let Some(scenario) = args.scenario.or(args.scenario_pos) else {
        // Run bare, it says what it does; given options but no scenario, it is a usage error.
        let bare = std::env::args_os().len() <= 1;
        let mut cmd = <Args as clap::CommandFactory>::command();
        if bare {
            cmd.print_help().expect("stdout");
            std::process::exit(0);
        }
        eprintln!("{}", cmd.render_help());
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

/// Sets the run up, runs the scenario, prints the table and writes the result files.
fn run(args: Args, scenario: Scenario) -> Result<(), String> {
    let mut b = Bench::setup(args, scenario)?;
    let rows = scenarios::run(&mut b)?;
    let table = report::table(&rows);
    println!("{table}");
    output::write(&b, &rows);
    b.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line `cmd` (words split on whitespace), parsed; for every module's tests.
    pub(crate) fn args(cmd: &str) -> Args {
        Args::try_parse_from(cmd.split_whitespace()).expect("parses")
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
