//! Results: one [`Row`] per measured step, and how rows are shown: the table printed at the
//! end, the progress line of a step, the CSV, and the SVG chart of latency percentiles against
//! offered load. Pure formatting (the SVG writes its file); the main thread calls it.

use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Serialize, Clone, Debug, Default)]
pub struct Row {
    pub scenario: String,
    pub target: String,
    /// Servers the load was spread over (ringcast cluster nodes); 1 for a single server.
    pub nodes: u64,
    /// The ringcast node(s) ran in cluster mode (NATS JetStream).
    pub cluster: bool,
    pub subscribers: u64,
    pub subjects: u64,
    pub payload_bytes: u64,
    /// Requested publishes per second (aggregate).
    pub pub_rate: f64,
    pub duration_s: f64,
    /// Publishes accepted (ringcast: acked; NATS: written) in this step.
    pub published: u64,
    /// Deliveries the step should produce (published x matching subscribers).
    pub expected: u64,
    pub delivered: u64,
    /// expected / duration.
    pub offered_msgs_s: f64,
    /// delivered / (start .. last delivery).
    pub delivered_msgs_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Generator-side send lateness p99 (included in the latencies above).
    pub pub_lag_p99_ms: f64,
    /// Cumulative expected - delivered after the drain (0 = nothing lost).
    pub lost: i64,
    /// Sequence numbers skipped inside a subject's stream.
    pub gaps: u64,
    /// Duplicate or out-of-order messages.
    pub reorders: u64,
    /// Close frames with code 4008 (slow consumer).
    pub slow_closes: u64,
    pub other_closes: u64,
    pub disconnects: u64,
    pub errors: u64,
    /// CPU seconds of the server, summed over all nodes in cluster mode.
    pub server_cpu_s: Option<f64>,
    /// server CPU seconds / wall seconds (2.0 = both cores busy).
    pub server_cpu_util: Option<f64>,
    /// Server CPU per accepted publish, in microseconds: everything the server spent in the
    /// step (ingest, sequencing, fan-out, writes) over `published`. With `--subscribers 0`
    /// that is the cost of ingest alone.
    pub server_us_per_publish: Option<f64>,
    /// Server CPU per delivered message, in nanoseconds (`delivered` > 0).
    pub server_ns_per_delivery: Option<f64>,
    /// Peak RSS of the server; in cluster mode the sum of each node's own peak.
    pub server_peak_rss_mib: Option<f64>,
    /// Generator CPU seconds in this step.
    pub generator_cpu_s: Option<f64>,
    /// Cluster mode: CPU seconds of the nats-server (JetStream) the nodes share, in this step.
    pub nats_cpu_s: Option<f64>,
    /// Cluster mode: publish attempts refused by the per-subject seq guard (another node had
    /// published on the subject in between) and retried, summed over the nodes' `/metrics`.
    pub cluster_conflicts: Option<u64>,
    /// Busy CPU seconds of everything else on the machine in this step (background load; the
    /// server, generator and JetStream are not in it).
    pub other_cpu_s: Option<f64>,
    pub conns: Option<u64>,
    pub connect_failed: Option<u64>,
    pub connect_s: Option<f64>,
    pub conns_per_s: Option<f64>,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub rss_per_conn_bytes: Option<f64>,
    pub first_error: Option<String>,
}

/// `cpu_s` spent on `n` things, in `unit`s of a second each (`None` without a CPU reading or
/// without any thing).
pub fn per(cpu_s: Option<f64>, n: u64, unit: f64) -> Option<f64> {
    cpu_s.filter(|_| n > 0).map(|s| s * unit / n as f64)
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

pub fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// The target column: `ringcast`, or e.g. `ringcast 2 nodes JS` in cluster mode.
pub fn target_label(r: &Row) -> String {
    if r.cluster {
        let n = r.nodes.max(1);
        format!("{} {n} node{} JS", r.target, if n == 1 { "" } else { "s" })
    } else {
        r.target.clone()
    }
}

/// The Markdown table printed at the end of a run: one layout for the connection scenarios
/// (idle, storm), another for the rate sweeps.
pub fn table(rows: &[Row]) -> String {
    if rows.iter().any(|r| r.conns.is_some()) {
        connect_table(rows)
    } else {
        fanout_table(rows)
    }
}

/// idle / storm: connections, connect rate and the server's memory per connection.
fn connect_table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario | target | conns | failed | connect s | conns/s | srv RSS before MiB | srv RSS after MiB | srv bytes/conn | srv CPU s | gen CPU s | srv peak RSS MiB |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            target_label(r),
            r.conns.unwrap_or(0),
            r.connect_failed.unwrap_or(0),
            opt(r.connect_s, 2),
            r.conns_per_s.map_or("-".into(), fmt_rate),
            opt(r.server_rss_before_kib.map(|k| k as f64 / 1024.0), 1),
            opt(r.server_rss_after_kib.map(|k| k as f64 / 1024.0), 1),
            opt(r.rss_per_conn_bytes, 0),
            opt(r.server_cpu_s, 2),
            opt(r.generator_cpu_s, 2),
            opt(r.server_peak_rss_mib, 1),
        );
    }
    s
}

/// broadcast / pricefeed: one line per rate step.
fn fanout_table(rows: &[Row]) -> String {
    let mut s = String::new();
    // The JetStream column only when some row ran in cluster mode.
    let js = rows.iter().any(|r| r.nats_cpu_s.is_some());
    let _ = writeln!(
        s,
        "| scenario | target | subs | pub/s | offered msg/s | delivered msg/s | p50 ms | p99 ms | p99.9 ms | max ms | pub lag p99 ms | lost | gaps | reorder | 4008 closes | other closes | srv CPU s (util) | srv µs/pub | srv ns/delivery |{} gen CPU s | other CPU s | srv peak RSS MiB |",
        if js { " nats CPU s | guard conflicts |" } else { "" }
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{}---:|---:|---:|",
        if js { "---:|---:|" } else { "" }
    );
    for r in rows {
        let js_cell = if js {
            format!(
                " {} | {} |",
                opt(r.nats_cpu_s, 2),
                r.cluster_conflicts.map_or("-".into(), |c| c.to_string())
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} ({}) | {} | {} |{} {} | {} | {} |",
            r.scenario,
            target_label(r),
            r.subscribers,
            fmt_rate(r.pub_rate),
            fmt_rate(r.offered_msgs_s),
            fmt_rate(r.delivered_msgs_s),
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.pub_lag_p99_ms,
            r.lost,
            r.gaps,
            r.reorders,
            r.slow_closes,
            r.other_closes + r.disconnects,
            opt(r.server_cpu_s, 2),
            opt(r.server_cpu_util, 2),
            opt(r.server_us_per_publish, 2),
            opt(r.server_ns_per_delivery, 0),
            js_cell,
            opt(r.generator_cpu_s, 2),
            opt(r.other_cpu_s, 2),
            opt(r.server_peak_rss_mib, 1),
        );
    }
    s
}

/// The progress line of one finished rate step (stderr); `pub_errors` are the publishers'
/// errors in the step.
pub fn step_line(rate: f64, row: &Row, pub_errors: u64) -> String {
    format!(
        "  pub {}/s: offered {}/s delivered {}/s p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms, lost {} gaps {} reorder {} 4008 {} other {} pub errors {} guard conflicts {}; CPU s server {} ({} µs/pub, {} ns/delivery) nats {} gen {} other {}",
        fmt_rate(rate),
        fmt_rate(row.offered_msgs_s),
        fmt_rate(row.delivered_msgs_s),
        row.p50_ms,
        row.p99_ms,
        row.p999_ms,
        row.max_ms,
        row.lost,
        row.gaps,
        row.reorders,
        row.slow_closes,
        row.other_closes + row.disconnects,
        pub_errors,
        row.cluster_conflicts.map_or("-".into(), |x| x.to_string()),
        opt(row.server_cpu_s, 2),
        opt(row.server_us_per_publish, 2),
        opt(row.server_ns_per_delivery, 0),
        opt(row.nats_cpu_s, 2),
        opt(row.generator_cpu_s, 2),
        opt(row.other_cpu_s, 2),
    )
}

pub fn csv(rows: &[Row]) -> String {
    let mut out = String::new();
    let header = serde_json::to_value(Row::default()).expect("row json");
    let keys: Vec<String> = header
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    out.push_str(&keys.join(","));
    out.push('\n');
    for r in rows {
        let v = serde_json::to_value(r).expect("row json");
        let cells: Vec<String> = keys
            .iter()
            .map(|k| match &v[k] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => format!("\"{}\"", s.replace('"', "\"\"")),
                x => x.to_string(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Latency percentiles (log scale) against offered deliveries per second.
pub fn svg(rows: &[Row], title: &str, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let rows: Vec<&Row> = rows.iter().filter(|r| r.delivered > 0).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let xmax = rows.iter().map(|r| r.offered_msgs_s).fold(0.0, f64::max) * 1.1;
    let ymin = rows
        .iter()
        .map(|r| r.p50_ms)
        .fold(f64::MAX, f64::min)
        .max(0.001)
        / 2.0;
    let ymax = rows
        .iter()
        .map(|r| r.max_ms)
        .fold(0.0, f64::max)
        .max(ymin * 10.0)
        * 2.0;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..xmax.max(1.0), (ymin..ymax).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("offered deliveries / s")
        .y_desc("latency ms (log)")
        .x_label_formatter(&|x| fmt_rate(*x))
        .draw()
        .map_err(|e| e.to_string())?;
    type Series = (&'static str, fn(&Row) -> f64, RGBColor);
    let series: [Series; 4] = [
        ("p50", |r| r.p50_ms, BLUE),
        ("p99", |r| r.p99_ms, GREEN),
        ("p99.9", |r| r.p999_ms, RGBColor(230, 140, 0)),
        ("max", |r| r.max_ms, RED),
    ];
    for (name, f, color) in series {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.offered_msgs_s, f(r).max(ymin)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cluster: bool, nodes: u64) -> Row {
        Row {
            scenario: "broadcast".into(),
            target: "ringcast".into(),
            nodes,
            cluster,
            nats_cpu_s: cluster.then_some(0.5),
            cluster_conflicts: cluster.then_some(3),
            ..Row::default()
        }
    }

    #[test]
    fn cpu_is_shown_per_publish_and_per_delivery() {
        assert_eq!(per(Some(2.0), 1_000_000, 1e6), Some(2.0));
        assert_eq!(per(Some(1.5), 3_000_000_000, 1e9), Some(0.5));
        assert_eq!(per(Some(1.0), 0, 1e6), None, "nothing published");
        assert_eq!(per(None, 10, 1e6), None, "no CPU reading");
        let r = Row {
            server_us_per_publish: Some(3.25),
            server_ns_per_delivery: Some(412.0),
            ..row(false, 1)
        };
        let t = table(&[r]);
        assert!(t.contains("| srv µs/pub | srv ns/delivery |"), "{t}");
        assert!(t.contains("| 3.25 | 412 |"), "{t}");
    }

    #[test]
    fn target_label_names_cluster_runs() {
        assert_eq!(target_label(&row(false, 1)), "ringcast");
        assert_eq!(target_label(&row(true, 1)), "ringcast 1 node JS");
        assert_eq!(target_label(&row(true, 3)), "ringcast 3 nodes JS");
    }

    #[test]
    fn the_jetstream_columns_appear_only_for_cluster_runs() {
        let plain = table(&[row(false, 1)]);
        assert!(!plain.contains("nats CPU s"));
        let cluster = table(&[row(true, 2)]);
        assert!(cluster.contains("| nats CPU s | guard conflicts |"));
        assert!(cluster.contains("| 0.50 | 3 |"));
        // Header, separator and row have the same number of cells.
        let cells: Vec<usize> = cluster.lines().map(|l| l.matches('|').count()).collect();
        assert!(cells.windows(2).all(|w| w[0] == w[1]), "{cells:?}");
    }
}
