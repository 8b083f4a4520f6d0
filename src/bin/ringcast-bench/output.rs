//! The files a run leaves in `--out-dir`: `<scenario>-<target>[-clusterN][-label]` with
//! `.json` (the rows plus what ran where: server command lines, generator threads and driver,
//! the command, the machine), `.csv` (the rows) and, for the rate sweeps, `.svg` (latency
//! against offered load). Written by the main thread once the scenario is over.

use crate::bench::Bench;
use crate::report::{self, Row};
use crate::{procfs, Args, Scenario};

/// The file stem of a run.
pub fn run_name(args: &Args, scenario: Scenario, nodes: usize, clustered: bool) -> String {
    format!(
        "{}-{}{}{}",
        scenario.name(),
        args.target.name(),
        cluster_suffix(nodes, clustered),
        args.label
            .as_deref()
            .map(|l| format!("-{l}"))
            .unwrap_or_default()
    )
}

/// File-name part telling cluster runs apart: `-cluster2` for 2 nodes on JetStream, empty for
/// a plain single server.
pub fn cluster_suffix(nodes: usize, clustered: bool) -> String {
    if clustered {
        format!("-cluster{nodes}")
    } else {
        String::new()
    }
}

/// Writes the run's JSON, CSV and (unless `--no-svg`, and only for the rate sweeps) SVG; a
/// file that cannot be written is reported and skipped.
pub fn write(b: &Bench, rows: &[Row]) {
    let (scenario, name) = (b.scenario, &b.info.name);
    let json = serde_json::json!({
        "scenario": scenario.name(),
        "target": b.ep.target.name(),
        "server": b.info.server_desc,
        "nodes": b.eps.len(),
        "cluster": b.info.clustered,
        "generator": { "threads": b.workers.len(), "driver": b.info.driver, "source_ips": b.srcs.len() },
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": procfs::machine(),
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
    write(format!("{name}.csv"), report::csv(rows));
    if !b.args.no_svg && matches!(scenario, Scenario::Broadcast | Scenario::Pricefeed) {
        let title = format!(
            "{} vs {}: latency vs offered load",
            scenario.name(),
            b.ep.target.name()
        );
        if let Err(e) = report::svg(rows, &title, &dir.join(format!("{name}.svg"))) {
            eprintln!("svg: {e}");
        }
    }
    eprintln!(
        "ringcast-bench: wrote {}/{name}.{{json,csv{}}}",
        dir.display(),
        if b.args.no_svg { "" } else { ",svg" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_scenario_target_cluster_and_label() {
        let a = crate::tests::args("b broadcast --label smoke");
        assert_eq!(
            run_name(&a, Scenario::Broadcast, 1, false),
            "broadcast-ringcast-smoke"
        );
        let a = crate::tests::args("b pricefeed --target nats");
        assert_eq!(
            run_name(&a, Scenario::Pricefeed, 1, false),
            "pricefeed-nats"
        );
        assert_eq!(
            run_name(&a, Scenario::Pricefeed, 2, true),
            "pricefeed-nats-cluster2"
        );
    }

    #[test]
    fn plain_runs_keep_their_file_names() {
        assert_eq!(cluster_suffix(1, false), "");
        assert_eq!(cluster_suffix(3, true), "-cluster3");
    }
}
