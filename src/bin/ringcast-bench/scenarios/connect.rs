//! The connection scenarios: `idle` (many idle WebSockets or SSE streams: connect rate and the
//! server's RSS per connection, read after a 2 s settle) and `storm` (every client connecting
//! at once: connections/s until all have their `hello`). One [`Row`] each. Runs on the main
//! thread; the connections live on the generator threads.

use crate::bench::Bench;
use crate::procfs;
use crate::report::{self, Row};
use crate::worker::{Role, Stats};
use crate::Args;
use std::time::Duration;

/// Default `--conns` of `idle`.
pub const IDLE_CONNS: usize = 50_000;
/// Default `--conns` of `storm`.
pub const STORM_CONNS: usize = 10_000;

/// How a connection scenario connects.
pub struct Plan {
    /// Connections asked for.
    conns: usize,
    /// All at once (storm) instead of `--connect-concurrency` per thread.
    all_at_once: bool,
    /// Wait before the server's RSS is read (idle: let it settle).
    settle: Option<Duration>,
}

impl Plan {
    pub fn idle(args: &Args) -> Plan {
        Plan {
            conns: args.conns.unwrap_or(IDLE_CONNS),
            all_at_once: false,
            settle: Some(Duration::from_secs(2)),
        }
    }

    pub fn storm(args: &Args) -> Plan {
        Plan {
            conns: args.conns.unwrap_or(STORM_CONNS),
            all_at_once: true,
            settle: None,
        }
    }
}

/// What a connection scenario reads around its connects.
struct Readings {
    st: Stats,
    /// Seconds from the first connect to the last ready connection.
    secs: f64,
    rss: (Option<u64>, Option<u64>),
    server_cpu: Option<f64>,
    generator_cpu: Option<f64>,
    after: Stats,
}

pub fn run(b: &mut Bench, plan: Plan) -> Result<Vec<Row>, String> {
    let n = attempted(b, plan.conns);
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = b.server_rss();
    let cpu0 = b.server_cpu();
    let gen0 = procfs::generator_cpu_seconds();
    let specs = (0..n).map(|i| b.spec(i, Role::Idle)).collect();
    let conc = if plan.all_at_once {
        n
    } else {
        b.args.connect_concurrency
    };
    let (start, st) = b.connect(specs, conc, 256, 0)?;
    let gen1 = procfs::generator_cpu_seconds();
    let secs = (st.last_ready_ns.max(start) - start) as f64 / 1e9;
    if let Some(d) = plan.settle {
        std::thread::sleep(d);
    }
    let rss1 = b.server_rss();
    let cpu1 = b.server_cpu();
    let r = Readings {
        st,
        secs,
        rss: (rss0, rss1),
        server_cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
        generator_cpu: gen0.zip(gen1).map(|(a, b)| b - a),
        after: b.snapshot(false),
    };
    let row = row(b, &r);
    eprintln!(
        "  {} connected ({} failed) in {:.2} s = {}/s; server RSS {:?} -> {:?} KiB",
        r.st.connected,
        r.st.connect_failed,
        r.secs,
        report::fmt_rate(row.conns_per_s.unwrap_or(0.0)),
        rss0,
        rss1
    );
    Ok(vec![row])
}

/// Connections to attempt: those asked for, less what the open-file limit cannot hold. Keeps
/// descriptors for /proc reads: past the limit every connect fails with EMFILE and the RSS
/// readings would fail too.
fn attempted(b: &Bench, asked: usize) -> usize {
    let n = asked.min(b.nofile.saturating_sub(256) as usize);
    if n < asked {
        eprintln!(
            "warning: {asked} connections asked, {n} attempted: RLIMIT_NOFILE is {} and could not be raised (no CAP_SYS_RESOURCE?)",
            b.nofile
        );
    }
    n
}

fn row(b: &Bench, r: &Readings) -> Row {
    let (rss0, rss1) = r.rss;
    Row {
        conns: Some(r.st.connected),
        connect_failed: Some(r.st.connect_failed),
        connect_s: Some(r.secs),
        conns_per_s: Some(r.st.connected as f64 / r.secs.max(1e-9)),
        server_rss_before_kib: rss0,
        server_rss_after_kib: rss1,
        rss_per_conn_bytes: rss0
            .zip(rss1)
            .map(|(a, b)| (b as f64 - a as f64) * 1024.0 / r.st.connected.max(1) as f64),
        server_cpu_s: r.server_cpu,
        generator_cpu_s: r.generator_cpu,
        other_closes: r.after.other_closes,
        disconnects: r.after.disconnects,
        slow_closes: r.after.slow_closes,
        first_error: r.after.first_error.clone(),
        ..b.row()
    }
}
