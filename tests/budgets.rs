//! Budgets on what clients can make a node hold: each has a flag with a documented default, a
//! clear error when it is exceeded (never a silent drop), and a metric.

mod common;

use common::{http, start, Ws};
use ringcast::config::DriverChoice;
use ringcast::core::subscription::cost;

#[test]
fn a_connections_subscriptions_are_capped_by_their_bytes() {
    let (small, big) = (
        "prices.EURUSD",
        "news.a-very-long-token-of-sixty-bytes-that-costs-a-lot.x.y",
    );
    let budget = 2 * cost(small) + cost(big) - 1;
    let node = start(DriverChoice::Auto, |c| c.max_sub_bytes_per_conn = budget);
    let mut c = node.ws();
    c.sub(1, small);
    c.sub(2, "prices.GBPUSD");
    let sub_big = format!(r#"{{"op":"sub","id":3,"subject":"{big}"}}"#);
    let (r, _) = c.request(&sub_big);
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("err"), Some("too_large")),
        "{r}"
    );
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("--max-sub-bytes-per-conn"),
        "{r}"
    );
    assert_eq!(
        node.metric_labelled("ringcast_budget_refusals_total", "subscription_bytes"),
        1
    );
    let charged = node.metric("ringcast_subscription_bytes");
    assert_eq!(charged, 2 * cost(small) as u64);
    // Unsubscribing gives the bytes back.
    let (r, _) = c.request(r#"{"op":"unsub","id":4,"subject":"prices.GBPUSD"}"#);
    assert_eq!(r["op"], "ok");
    let (r, _) = c.request(&sub_big);
    assert_eq!(r["op"], "ok", "{r}");
}

#[test]
fn an_sse_stream_over_the_subscription_byte_budget_is_refused() {
    let node = start(DriverChoice::Auto, |c| {
        c.max_sub_bytes_per_conn = cost("a.b")
    });
    let (status, _, body) = http(node.addr, "GET", "/sse?subject=a.b&subject=a.c", &[], b"");
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("--max-sub-bytes-per-conn"));
}

#[test]
fn the_default_byte_budget_holds_a_thousand_typical_subscriptions() {
    let node = start(DriverChoice::Auto, |_| {});
    let mut c = Ws::connect(node.addr);
    for i in 0..1_000 {
        c.send(&format!(
            r#"{{"op":"sub","id":{i},"subject":"prices.FX{i:04}.bid"}}"#
        ));
    }
    for _ in 0..1_000 {
        let r = c.recv_json();
        assert_eq!(r["op"], "ok", "{r}");
    }
}
