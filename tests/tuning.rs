//! The monitoring files in `tuning/`: the Grafana dashboard (`grafana-dashboard.json`) and the
//! Prometheus alert rules (`alerts.yml`) are parsed as what they are (JSON; YAML with
//! yaml-rust2), and every `ringcast_*` series they name must be exported by a live node's
//! `/metrics`, with the type its use needs: a counter inside `rate()`/`increase()`, a gauge
//! anywhere else. The node runs on a durable store so that the store's series exist (the
//! health gauges exist on every node).

mod common;

use common::{http, start, TempDir};
use ringcast::config::DriverChoice;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use yaml_rust2::{Yaml, YamlLoader};

fn tuning_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tuning")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every series name `# TYPE` announces on a durable node's `/metrics`, with its type.
fn exported_series() -> BTreeMap<String, String> {
    let dir = TempDir::new("tuning");
    let node = start(DriverChoice::Auto, |c| c.data_dir = Some(dir.0.clone()));
    let (status, _, body) = http(node.addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_string(), kind.to_string())
        })
        .collect()
}

/// The `ringcast_*` names in a PromQL expression, each with whether it is the argument of
/// `rate(` or `increase(` (a counter's use).
fn series_in(expr: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ringcast_") {
        let before = &rest[..at];
        let len = rest[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at);
        let name = &rest[at..at + len];
        let in_rate = before.ends_with("rate(") || before.ends_with("increase(");
        out.push((name.to_string(), in_rate));
        rest = &rest[at + len..];
    }
    out
}

/// Checks every use against the node's series; returns the names used.
fn check_uses(file: &str, exprs: &[String]) -> BTreeSet<String> {
    let exported = exported_series();
    let mut used = BTreeSet::new();
    let mut wrong = Vec::new();
    for expr in exprs {
        let uses = series_in(expr);
        assert!(!uses.is_empty(), "{file}: no ringcast series in `{expr}`");
        for (name, in_rate) in uses {
            match exported.get(&name).map(String::as_str) {
                None => wrong.push(format!("{name} is not exported (`{expr}`)")),
                Some("counter") if !in_rate => wrong.push(format!(
                    "counter {name} used without rate/increase (`{expr}`)"
                )),
                Some("gauge") if in_rate => {
                    wrong.push(format!("gauge {name} used in rate/increase (`{expr}`)"))
                }
                Some(_) => {}
            }
            used.insert(name);
        }
    }
    assert!(wrong.is_empty(), "{file}:\n{}", wrong.join("\n"));
    used
}

/// Every panel of a dashboard, those inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

#[test]
fn every_series_the_grafana_dashboard_names_is_exported() {
    let dash: Value = serde_json::from_str(&tuning_file("grafana-dashboard.json"))
        .expect("the dashboard is JSON");
    assert_eq!(dash["title"], "ringcast");
    let mut exprs = Vec::new();
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("a panel id")),
            "{title}: id reused"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: no expr"));
            exprs.push(expr.to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    // (A label_values() query of the variables names a gauge, which it may use as is.)
    let used = check_uses("grafana-dashboard.json", &exprs);
    for want in [
        "ringcast_published_total",
        "ringcast_delivered_total",
        "ringcast_connections",
        "ringcast_queue_bytes",
        "ringcast_slow_consumer_closes_total",
        "ringcast_bus_depth",
        "ringcast_store_healthy",
        "ringcast_cluster_degraded",
    ] {
        assert!(used.contains(want), "the dashboard shows no {want}");
    }
}

#[test]
fn every_series_the_alert_rules_name_is_exported() {
    let docs = YamlLoader::load_from_str(&tuning_file("alerts.yml")).expect("alerts.yml is YAML");
    let groups = docs[0]["groups"]
        .as_vec()
        .expect("a Prometheus rule file: groups");
    let mut exprs = Vec::new();
    let mut names = BTreeSet::new();
    for g in groups {
        assert!(g["name"].as_str().is_some(), "a group without a name");
        for r in g["rules"].as_vec().expect("a group's rules") {
            let alert = r["alert"]
                .as_str()
                .expect("every rule is an alert with a name");
            assert!(names.insert(alert.to_string()), "{alert} twice");
            let expr = r["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: no expr"));
            exprs.push(expr.to_string());
            if let Yaml::String(d) = &r["for"] {
                let unit = d.trim_start_matches(|c: char| c.is_ascii_digit());
                assert!(["s", "m", "h"].contains(&unit), "{alert}: for {d}");
            }
            let severity = r["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("warning" | "critical")),
                "{alert}: severity {severity:?}"
            );
            assert!(
                r["annotations"]["summary"].as_str().is_some(),
                "{alert}: summary"
            );
        }
    }
    let used = check_uses("alerts.yml", &exprs);
    for want in [
        "ringcast_slow_consumer_closes_total",
        "ringcast_bus_depth",
        "ringcast_store_healthy",
        "ringcast_cluster_degraded",
    ] {
        assert!(used.contains(want), "no alert on {want}");
    }
}

#[test]
fn series_are_found_with_how_they_are_used() {
    let uses = series_in("sum(rate(ringcast_a_total[1m])) / max(ringcast_b) > ringcast_c");
    let want = [
        ("ringcast_a_total", true),
        ("ringcast_b", false),
        ("ringcast_c", false),
    ];
    let want: Vec<(String, bool)> = want.iter().map(|(n, r)| (n.to_string(), *r)).collect();
    assert_eq!(uses, want);
}
