//! `/varz`: the node's counters as JSON, for the operator page (`/admin`) to poll. Built from
//! the very tables `/metrics` renders ([`crate::metrics::SERIES`], the close reasons, the
//! budgets, the node series): a key here is the Prometheus name without its `ringcast_`
//! prefix, per core where `/metrics` has a `core` label, so both always say the same.
//!
//! Pure over its inputs (every core's counters are atomics any core may read); called on the
//! core serving the request.

use crate::metrics::{Budget, CloseReason, CoreMetrics, NodeSeries, PublishRefusal, SERIES};
use serde_json::{json, Map, Value};

/// What `/varz` says about the node besides its counters.
#[derive(Debug, Clone)]
pub struct NodeInfo<'a> {
    /// ringcast's version.
    pub version: &'static str,
    /// The I/O driver (`io_uring` or `epoll`).
    pub driver: &'static str,
    /// True when tokens are checked.
    pub auth: bool,
    /// Milliseconds since the serving core started.
    pub uptime_ms: u64,
    /// Wall clock, ms since the Unix epoch.
    pub now_ms: u64,
    /// `Ok` or why `/healthz` answers 503.
    pub health: Result<(), String>,
    /// `standalone`, `durable` (`--data-dir`) or `cluster` (`--nats-url`).
    pub mode: &'a str,
}

/// The name of a series in `/varz`: its Prometheus name without `ringcast_`.
pub fn key(metric: &str) -> &str {
    metric.strip_prefix("ringcast_").unwrap_or(metric)
}

/// The `/varz` body: `{"server":{..},"node":{..},"cores":[{..}, ..]}`.
pub fn render(
    info: &NodeInfo<'_>,
    cores: &[CoreMetrics],
    bus_depth: &[usize],
    node: &[NodeSeries],
) -> Vec<u8> {
    let server = json!({
        "version": info.version,
        "driver": info.driver,
        "auth": info.auth,
        "mode": info.mode,
        "cores": cores.len(),
        "uptime_ms": info.uptime_ms,
        "now_ms": info.now_ms,
        "health": match &info.health {
            Ok(()) => "ok".to_string(),
            Err(why) => why.clone(),
        },
    });
    let node: Map<String, Value> = node
        .iter()
        .map(|n| (key(n.name).to_string(), n.value.into()))
        .collect();
    let cores: Vec<Value> = cores
        .iter()
        .enumerate()
        .map(|(i, m)| core_entry(i, m, bus_depth.get(i).copied().unwrap_or(0)))
        .collect();
    let body = json!({"server": server, "node": node, "cores": cores});
    serde_json::to_vec(&body).expect("serialisable")
}

/// One core's counters: every per-core series, its bus depth, and the labelled counters as
/// objects by label.
fn core_entry(i: usize, m: &CoreMetrics, bus_depth: usize) -> Value {
    let mut o = Map::new();
    o.insert("core".into(), i.into());
    for (name, _, _, get) in SERIES {
        o.insert(key(name).into(), get(m).into());
    }
    o.insert("bus_depth".into(), bus_depth.into());
    let closes: Map<String, Value> = CloseReason::ALL
        .iter()
        .map(|r| (r.label().to_string(), m.closes(*r).into()))
        .collect();
    o.insert("closes_total".into(), closes.into());
    let refusals: Map<String, Value> = Budget::ALL
        .iter()
        .map(|b| (b.label().to_string(), m.refusals(*b).into()))
        .collect();
    o.insert("budget_refusals_total".into(), refusals.into());
    let refused: Map<String, Value> = PublishRefusal::ALL
        .iter()
        .map(|r| (r.label().to_string(), m.publish_refusals(*r).into()))
        .collect();
    o.insert("publishes_refused_total".into(), refused.into());
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metrics_series_is_in_the_json_under_its_short_name() {
        let cores: Vec<CoreMetrics> = (0..2).map(|_| CoreMetrics::default()).collect();
        crate::metrics::add(&cores[1].published, 7);
        cores[0].closed(CloseReason::SlowConsumer);
        let node = [NodeSeries::gauge("ringcast_store_healthy", "h", 1)];
        let info = NodeInfo {
            version: "v",
            driver: "epoll",
            auth: false,
            uptime_ms: 1,
            now_ms: 2,
            health: Ok(()),
            mode: "standalone",
        };
        let v: Value = serde_json::from_slice(&render(&info, &cores, &[4, 0], &node)).unwrap();
        assert_eq!(v["cores"][1]["published_total"], 7);
        assert_eq!(v["cores"][0]["slow_consumer_closes_total"], 1);
        assert_eq!(v["cores"][0]["closes_total"]["slow_consumer"], 1);
        assert_eq!(v["cores"][0]["bus_depth"], 4);
        assert_eq!(v["node"]["store_healthy"], 1);
        assert_eq!(v["server"]["health"], "ok");
        for (name, ..) in SERIES {
            assert!(v["cores"][0][key(name)].is_u64(), "{name}");
        }
    }
}
