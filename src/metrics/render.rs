//! Rendering the counters of [`super::CoreMetrics`] and the node's series as Prometheus text
//! (`/metrics`). Cold path: runs on the core serving the request, reading every core's atomics.

use super::*;

/// Renders all cores' counters in the Prometheus text exposition format, plus each core's
/// cross-core bus backlog (`bus_depth[i]`: messages waiting for core i) and node-wide series.
pub fn render(cores: &[CoreMetrics], bus_depth: &[usize], node: &[NodeSeries]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(4096);
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    for (name, kind, help, get) in SERIES {
        head(&mut out, name, kind, help);
        for (i, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", get(m));
        }
    }
    head(
        &mut out,
        "ringcast_bus_depth",
        "gauge",
        "Cross-core messages waiting for each core.",
    );
    for (i, d) in bus_depth.iter().enumerate() {
        let _ = writeln!(out, "ringcast_bus_depth{{core=\"{i}\"}} {d}");
    }
    for n in node {
        head(&mut out, n.name, n.kind, n.help);
        let _ = writeln!(out, "{} {}", n.name, n.value);
    }
    render_refusals(&mut out, cores);
    render_publish_refusals(&mut out, cores);
    head(
        &mut out,
        "ringcast_closes_total",
        "counter",
        "Connections closed, by reason.",
    );
    for (i, m) in cores.iter().enumerate() {
        for r in CloseReason::ALL {
            let _ = writeln!(
                out,
                "ringcast_closes_total{{core=\"{i}\",reason=\"{}\"}} {}",
                r.label(),
                m.closes(r)
            );
        }
    }
    out
}

/// `ringcast_budget_refusals_total{core,budget}`.
fn render_refusals(out: &mut String, cores: &[CoreMetrics]) {
    let help = "Requests refused with an error by a budget, by budget.";
    let counts = Budget::ALL.map(|b| (b.label(), b));
    render_labelled(
        out,
        "ringcast_budget_refusals_total",
        help,
        "budget",
        cores,
        &counts,
        |m, b| m.refusals(*b),
    );
}

/// `ringcast_publishes_refused_total{core,reason}`.
fn render_publish_refusals(out: &mut String, cores: &[CoreMetrics]) {
    let help = "Publishes refused before sequencing, by reason (one per message).";
    let counts = PublishRefusal::ALL.map(|r| (r.label(), r));
    render_labelled(
        out,
        "ringcast_publishes_refused_total",
        help,
        "reason",
        cores,
        &counts,
        |m, r| m.publish_refusals(*r),
    );
}

/// A per-core counter with one more label: `name{core="i",key="label"} n` for each of
/// `labels`, read from a core by `read`.
fn render_labelled<L>(
    out: &mut String,
    name: &str,
    help: &str,
    key: &str,
    cores: &[CoreMetrics],
    labels: &[(&str, L)],
    read: impl Fn(&CoreMetrics, &L) -> u64,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (i, m) in cores.iter().enumerate() {
        for (label, l) in labels {
            let n = read(m, l);
            let _ = writeln!(out, "{name}{{core=\"{i}\",{key}=\"{label}\"}} {n}");
        }
    }
}
