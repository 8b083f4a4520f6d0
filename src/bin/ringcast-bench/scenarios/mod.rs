//! The scenarios, each a function of the run's [`Bench`] returning its result rows. The rate
//! sweeps share one runner ([`fanout`], with [`step`] measuring one rate) and differ in their
//! [`plan::Plan`]: [`broadcast`] (one subject, every subscriber on it) and [`pricefeed`]
//! (many subjects, random subscriptions plus `prices.>`). [`connect`] holds `idle` and `storm`.
//! All of it runs on the main thread, which drives the generator threads and the publishers.

pub mod broadcast;
pub mod connect;
pub mod fanout;
pub mod plan;
pub mod pricefeed;
mod step;

use crate::bench::Bench;
use crate::report::Row;
use crate::{Args, Scenario};

/// Runs `b.scenario`.
pub fn run(b: &mut Bench) -> Result<Vec<Row>, String> {
    match b.scenario {
        Scenario::Broadcast => {
            let plan = broadcast::plan(&b.args);
            fanout::run(b, plan)
        }
        Scenario::Pricefeed => {
            let plan = pricefeed::plan(&b.args);
            fanout::run(b, plan)
        }
        Scenario::Idle => connect::run(b, connect::Plan::idle(&b.args)),
        Scenario::Storm => connect::run(b, connect::Plan::storm(&b.args)),
    }
}

/// Connections the scenario asks for (what the open-file limit must allow).
pub fn connections(args: &Args, scenario: Scenario) -> usize {
    match scenario {
        Scenario::Broadcast => args.subscribers.unwrap_or(broadcast::SUBSCRIBERS),
        Scenario::Pricefeed => args.subscribers.unwrap_or(pricefeed::SUBSCRIBERS),
        Scenario::Idle => args.conns.unwrap_or(connect::IDLE_CONNS),
        Scenario::Storm => args.conns.unwrap_or(connect::STORM_CONNS),
    }
}
