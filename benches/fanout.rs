//! End-to-end fanout benchmark (`harness = false`): runs the `ringcast-bench` load generator's
//! `broadcast` and `pricefeed` scenarios at modest settings against a spawned release
//! `ringcast`, and against `nats-server` (WebSocket, loopback) when it is on PATH, then prints
//! one comparison table with ratios.
//!
//! `cargo bench --bench fanout` builds the release binaries first (`cargo build --release
//! --bins` into the same target directory). Scale with `FANOUT_SUBSCRIBERS`, `FANOUT_RATES`
//! (broadcast publishes/s, comma separated), `FANOUT_DURATION` (seconds per step).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // <target>/release/deps/fanout-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|e| {
            e.parent()
                .and_then(Path::parent)
                .and_then(Path::parent)
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

struct Run {
    scenario: &'static str,
    target: &'static str,
    rows: Vec<Value>,
}

fn run(
    bench: &Path,
    out: &Path,
    scenario: &'static str,
    target: &'static str,
    extra: &[String],
) -> Option<Run> {
    let mut cmd = Command::new(bench);
    cmd.arg(scenario)
        .arg("--target")
        .arg(target)
        .arg("--out-dir")
        .arg(out)
        .arg("--label")
        .arg("fanout")
        .args(extra);
    if target == "ringcast" {
        cmd.arg("--spawn-server")
            .arg(bench.with_file_name("ringcast"));
    }
    let line = format!("{cmd:?}").replace('"', "");
    eprintln!("fanout: {line}");
    let status = cmd.status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("fanout: {scenario} against {target} failed: {status:?}");
        return None;
    }
    let file = out.join(format!("{scenario}-{target}-fanout.json"));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&file).ok()?).ok()?;
    Some(Run {
        scenario,
        target,
        rows: json["rows"].as_array().cloned().unwrap_or_default(),
    })
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

fn clean(v: &Value) -> bool {
    v["lost"].as_i64() == Some(0)
        && v["gaps"].as_u64() == Some(0)
        && v["reorders"].as_u64() == Some(0)
        && v["slow_closes"].as_u64() == Some(0)
        && v["other_closes"].as_u64().unwrap_or(0) + v["disconnects"].as_u64().unwrap_or(0) == 0
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.2}")
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours means "not me".
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "fanout".contains(a.as_str())) {
        return;
    }
    let started = std::time::Instant::now();
    let target = target_dir();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bins"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("fanout: cargo build --release --bins failed: {status:?}");
        std::process::exit(1);
    }
    let bench = target.join("release").join("ringcast-bench");
    let out = target.join("ringcast-bench");
    let subs = env_or("FANOUT_SUBSCRIBERS", "500");
    let rates = env_or("FANOUT_RATES", "500,1000,2000,4000");
    let duration = env_or("FANOUT_DURATION", "3");
    let broadcast: Vec<String> = [
        "--subscribers",
        &subs,
        "--rates",
        &rates,
        "--duration",
        &duration,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pricefeed: Vec<String> = [
        "--subscribers",
        "2000",
        "--subjects",
        "200",
        "--subs-per-conn",
        "10",
        "--wildcard-pct",
        "5",
        "--rates",
        "2000",
        "--payload",
        "150",
        "--duration",
        &duration,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut targets = vec!["ringcast"];
    if on_path("nats-server") {
        targets.push("nats");
    } else {
        eprintln!(
            "fanout: nats-server not on PATH; ringcast only (apt-get install -y nats-server)"
        );
    }
    let mut runs = Vec::new();
    for t in &targets {
        runs.extend(run(&bench, &out, "broadcast", t, &broadcast));
        runs.extend(run(&bench, &out, "pricefeed", t, &pricefeed));
    }
    let get = |s: &str, t: &str| runs.iter().find(|r| r.scenario == s && r.target == t);
    println!();
    println!("| scenario | metric | ringcast | nats | ringcast / nats |");
    println!("|---|---|---:|---:|---:|");
    for s in ["broadcast", "pricefeed"] {
        let (Some(rc), nats) = (get(s, "ringcast"), get(s, "nats")) else {
            continue;
        };
        let best = |r: &Run| {
            r.rows
                .iter()
                .filter(|v| clean(v))
                .map(|v| f(v, "delivered_msgs_s"))
                .fold(0.0, f64::max)
        };
        let row = |metric: &str, a: f64, b: Option<f64>, higher_better: bool| {
            let ratio = b
                .filter(|b| *b > 0.0 && a > 0.0)
                .map_or("-".to_string(), |b| {
                    let r = a / b;
                    format!(
                        "{r:.2}x{}",
                        if higher_better {
                            ""
                        } else {
                            " (lower is better)"
                        }
                    )
                });
            println!(
                "| {s} | {metric} | {} | {} | {ratio} |",
                rate(a),
                b.map_or("-".into(), rate)
            );
        };
        row(
            "best delivered msg/s with 0 loss",
            best(rc),
            nats.map(best),
            true,
        );
        for v in &rc.rows {
            let pr = f(v, "pub_rate");
            let other = nats.and_then(|n| n.rows.iter().find(|w| f(w, "pub_rate") == pr));
            let tag = format!("{pr:.0} pub/s");
            for (k, name) in [
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("p999_ms", "p99.9 ms"),
            ] {
                row(
                    &format!("{tag}: {name}"),
                    f(v, k),
                    other.map(|w| f(w, k)),
                    false,
                );
            }
            let cpu = |w: &Value| {
                w["server_cpu_s"].as_f64().unwrap_or(0.0) / f(w, "duration_s").max(1e-9)
            };
            row(
                &format!("{tag}: server CPU (cores)"),
                cpu(v),
                other.map(cpu),
                false,
            );
            let loss = |w: &Value| {
                (w["lost"].as_i64().unwrap_or(0) + w["slow_closes"].as_i64().unwrap_or(0)) as f64
            };
            row(
                &format!("{tag}: lost + 4008 closes"),
                loss(v),
                other.map(loss),
                false,
            );
        }
    }
    println!();
    println!(
        "fanout: done in {:.0} s; JSON/CSV/SVG in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
}
