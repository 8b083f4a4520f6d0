//! Cluster mode end to end: real `nats-server -js` on loopback and two or three ringcast nodes
//! (`--nats-url`). A publish on any node reaches subscribers on every node with the same seq;
//! concurrent publishers on different nodes still give one contiguous seq; dedup holds across
//! nodes; a client of a dead node resumes on another with `since`; a NATS restart loses
//! nothing acknowledged and leaves no gap. Waits are bounded; nothing asserts on timing.

mod common;

use common::nats::NatsServer;
use common::{eventually, http, http_status, start, Node, Ws};
use ringcast::config::DriverChoice;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Upper bound for any wait on the cluster (not a performance assertion).
const BOUND: Duration = Duration::from_secs(30);

fn node(d: DriverChoice, nats: &NatsServer, history: usize) -> Node {
    let url = nats.url();
    start(d, move |c| {
        c.nats_url = Some(url);
        c.history = history;
        c.max_msgs_per_sec = 0;
    })
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn try_publish(addr: SocketAddr, subject: &str, data: &str, msg_id: Option<&str>) -> (u16, Value) {
    let body = match msg_id {
        Some(id) => format!(r#"{{"subject":"{subject}","data":{data},"msg_id":"{id}"}}"#),
        None => format!(r#"{{"subject":"{subject}","data":{data}}}"#),
    };
    let (status, _, resp) = http(addr, "POST", "/publish", &[], body.as_bytes());
    (status, json(&resp))
}

fn sub(node: &Node, pattern: &str) -> Ws {
    let mut c = node.ws();
    c.sub(1, pattern);
    c
}

fn seq_data(msgs: &[Value]) -> Vec<(u64, Value)> {
    msgs.iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["data"].clone()))
        .collect()
}

fn healthz(addr: SocketAddr) -> u16 {
    http_status(addr, "GET", "/healthz", &[])
}

fn a_publish_on_one_node_reaches_every_node_with_the_same_seq(d: DriverChoice) {
    let nats = NatsServer::start();
    let (a, b) = (node(d, &nats, 64), node(d, &nats, 64));
    let mut on_a = sub(&a, "px.>");
    let mut on_b = sub(&b, "px.>");
    assert_eq!(a.publish("px.eur", r#"{"bid":1}"#)["seq"], 1);
    let mut pubber = b.ws();
    let (ok, _) = pubber.request(r#"{"op":"pub","id":7,"subject":"px.eur","data":{"bid":2}}"#);
    assert_eq!(
        (ok["op"].as_str(), ok["seq"].as_u64()),
        (Some("ok"), Some(2))
    );
    let got_a = on_a.recv_msgs(2);
    let got_b = on_b.recv_msgs(2);
    assert_eq!(seq_data(&got_a), seq_data(&got_b));
    assert_eq!(
        seq_data(&got_a),
        vec![
            (1, serde_json::json!({"bid":1})),
            (2, serde_json::json!({"bid":2}))
        ]
    );
    assert_eq!(
        got_a[0]["ts"], got_b[0]["ts"],
        "ts is stamped once, cluster-wide"
    );
    assert_eq!(healthz(a.addr), 200);
    assert_eq!(a.node_metric("ringcast_cluster_connected"), Some(1));
    assert_eq!(a.node_metric("ringcast_cluster_published_total"), Some(1));
    assert_eq!(b.node_metric("ringcast_cluster_published_total"), Some(1));
    assert_eq!(b.node_metric("ringcast_cluster_consumed_total"), Some(2));
}

fn concurrent_publishers_on_different_nodes_get_one_contiguous_seq(d: DriverChoice) {
    const EACH: u64 = 60;
    let nats = NatsServer::start();
    let nodes = [node(d, &nats, 1024), node(d, &nats, 1024)];
    let mut watchers: Vec<Ws> = nodes.iter().map(|n| sub(n, "race.s")).collect();
    let acks: Vec<Vec<(u64, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let addr = n.addr;
                s.spawn(move || {
                    (1..=EACH)
                        .map(|i| {
                            let data = (k as u64 * 1000 + i).to_string();
                            let (status, v) = try_publish(addr, "race.s", &data, None);
                            assert_eq!(status, 200, "{v}");
                            (k as u64 * 1000 + i, v["seq"].as_u64().unwrap())
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seqs: Vec<u64> = acks.iter().flatten().map(|(_, s)| *s).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=2 * EACH).collect::<Vec<_>>(),
        "contiguous, none twice"
    );
    let first = seq_data(&watchers[0].recv_msgs(2 * EACH as usize));
    let second = seq_data(&watchers[1].recv_msgs(2 * EACH as usize));
    assert_eq!(first, second, "every node delivers the same order");
    for (seq, data) in &first {
        let acked = acks.iter().flatten().find(|(_, s)| s == seq).unwrap();
        assert_eq!(
            data.as_u64(),
            Some(acked.0),
            "seq {seq} carries what was acked"
        );
    }
    // Each node's own publishes keep their order.
    for mine in &acks {
        assert!(mine.windows(2).all(|w| w[0].1 < w[1].1));
    }
}

fn msg_id_dedup_holds_across_nodes(d: DriverChoice) {
    let nats = NatsServer::start();
    let (a, b) = (node(d, &nats, 64), node(d, &nats, 64));
    let mut watcher = sub(&b, "orders.>");
    let (_, first) = try_publish(a.addr, "orders.1", "1", Some("ord-77"));
    assert_eq!(first["seq"], 1);
    let (status, again) = try_publish(b.addr, "orders.1", "2", Some("ord-77"));
    assert_eq!(status, 200);
    assert_eq!(
        (
            again["seq"].as_u64(),
            again["duplicate"].as_bool(),
            &again["ts"]
        ),
        (Some(1), Some(true), &first["ts"])
    );
    let (_, other) = try_publish(b.addr, "orders.2", "3", Some("ord-77"));
    assert_eq!(
        other.get("duplicate"),
        None,
        "same id, other subject: not a duplicate"
    );
    let (_, marker) = try_publish(a.addr, "orders.1", "4", None);
    assert_eq!(marker["seq"], 2);
    let got: Vec<(String, u64, Value)> = watcher
        .recv_msgs(3)
        .iter()
        .map(|m| {
            let s = m["subject"].as_str().unwrap().to_string();
            (s, m["seq"].as_u64().unwrap(), m["data"].clone())
        })
        .collect();
    let mut got = got;
    got.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
    assert_eq!(
        got,
        vec![
            ("orders.1".into(), 1, Value::from(1)),
            ("orders.1".into(), 2, Value::from(4)),
            ("orders.2".into(), 1, Value::from(3)),
        ],
        "the duplicate was never delivered"
    );
}

fn a_node_started_later_has_every_latest_value_and_reads_older_history_from_the_stream(
    d: DriverChoice,
) {
    let nats = NatsServer::start();
    let a = node(d, &nats, 4);
    for i in 1..=20 {
        a.publish("hist.x", &i.to_string());
    }
    a.publish("hist.y", "100");
    let b = node(d, &nats, 4);
    // Snapshot: the latest of every subject, learned at start-up.
    let mut c = b.ws();
    let (r, _) = c.request(r#"{"op":"sub","id":1,"subject":"hist.*","snapshot":true}"#);
    assert_eq!(r["op"], "ok");
    let mut latest: Vec<(String, u64)> = c
        .recv_msgs(2)
        .iter()
        .map(|m| {
            (
                m["subject"].as_str().unwrap().into(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    latest.sort();
    assert_eq!(latest, vec![("hist.x".into(), 20), ("hist.y".into(), 1)]);
    // History older than the node's ring comes from the stream.
    let (status, _, body) = http(b.addr, "GET", "/history/hist.x?since=0", &[], b"");
    assert_eq!(status, 200);
    let h = json(&body);
    let seqs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert_eq!(
        (h["first_seq"].as_u64(), h["last_seq"].as_u64()),
        (Some(1), Some(20))
    );
    let (_, _, recent) = http(b.addr, "GET", "/history/hist.x?since=19", &[], b"");
    let recent = json(&recent);
    assert_eq!(
        recent["first_seq"], 1,
        "first_seq names the oldest message in the stream"
    );
    assert_eq!(recent["messages"].as_array().unwrap().len(), 1);
    // A `since` subscriber on the new node gets everything after N, then live messages.
    let mut s = b.ws();
    let (r, _) = s.request(r#"{"op":"sub","id":2,"subject":"hist.x","since":5}"#);
    assert_eq!(r["op"], "ok");
    a.publish("hist.x", "21");
    let got: Vec<u64> = s
        .recv_msgs(16)
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (6..=21).collect::<Vec<_>>());
    // And the next publish through the new node continues the seq.
    assert_eq!(b.publish("hist.x", "22")["seq"], 22);
}

fn a_client_of_a_dead_node_resumes_on_another_with_since(d: DriverChoice) {
    let nats = NatsServer::start();
    let mut a = node(d, &nats, 1024);
    let b = node(d, &nats, 1024);
    let mut client = sub(&a, "feed.q");
    for i in 1..=10 {
        b.publish("feed.q", &i.to_string());
    }
    let seen: Vec<u64> = client
        .recv_msgs(5)
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    a.stop();
    drop(client);
    for i in 11..=15 {
        b.publish("feed.q", &i.to_string());
    }
    let mut again = b.ws();
    let (r, _) = again.request(r#"{"op":"sub","id":1,"subject":"feed.q","since":5}"#);
    assert_eq!(r["op"], "ok");
    let rest: Vec<(u64, Value)> = seq_data(&again.recv_msgs(10));
    assert_eq!(
        rest,
        (6..=15).map(|i| (i, Value::from(i))).collect::<Vec<_>>(),
        "every message after the last one seen, once, in order"
    );
}

fn a_nats_restart_mid_stream_loses_nothing_acknowledged_and_leaves_no_gap(d: DriverChoice) {
    let mut nats = NatsServer::start();
    let (a, b) = (node(d, &nats, 4096), node(d, &nats, 4096));
    let mut watcher = sub(&b, "live.t");
    let mut acked = Vec::new();
    let mut refused = 0;
    let publish = |i: u64, acked: &mut Vec<u64>, refused: &mut u32| {
        let (status, v) = try_publish(a.addr, "live.t", &i.to_string(), None);
        match status {
            200 => acked.push(v["seq"].as_u64().unwrap()),
            503 => {
                assert_eq!(v["error"]["code"], "overloaded", "{v}");
                *refused += 1;
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    };
    for i in 1..=20 {
        publish(i, &mut acked, &mut refused);
    }
    nats.stop();
    eventually("the node notices NATS is gone", || healthz(a.addr) == 503);
    assert_eq!(
        a.node_metric("ringcast_cluster_connected"),
        Some(0),
        "metrics say so too"
    );
    for i in 21..=25 {
        publish(i, &mut acked, &mut refused);
    }
    assert!(
        refused >= 5,
        "publishes while NATS is down are refused, not queued"
    );
    let mut ws_pub = a.ws();
    let (err, _) = ws_pub.request(r#"{"op":"pub","id":3,"subject":"live.t","data":0}"#);
    assert_eq!(
        (err["op"].as_str(), err["code"].as_str()),
        (Some("err"), Some("overloaded"))
    );
    // Subscribers are still served what the node has.
    let mut late = b.ws();
    let (r, _) = late.request(r#"{"op":"sub","id":1,"subject":"live.t","since":18}"#);
    assert_eq!(r["op"], "ok");
    assert_eq!(late.recv_msgs(2)[1]["seq"], 20);
    nats.restart();
    eventually("both nodes are healthy again", || {
        healthz(a.addr) == 200 && healthz(b.addr) == 200
    });
    // Publishes right after the restart may still meet a reconnecting client: retry (bounded).
    for i in 26..=40 {
        let deadline = Instant::now() + BOUND;
        loop {
            let before = acked.len();
            publish(i, &mut acked, &mut refused);
            if acked.len() > before {
                break;
            }
            assert!(Instant::now() < deadline, "publishing never resumed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let last = *acked.last().unwrap();
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        got.push(watcher.recv_msgs(1)[0]["seq"].as_u64().unwrap());
    }
    assert_eq!(got, (1..=last).collect::<Vec<_>>(), "no gap, no repeat");
    for s in &acked {
        assert!(got.contains(s), "acknowledged seq {s} delivered");
    }
    assert!(b.node_metric("ringcast_cluster_reconnects_total").unwrap() >= 1);
    assert_eq!(b.node_metric("ringcast_cluster_connected"), Some(1));
}

fn a_scheduled_publish_on_one_node_reaches_every_node(d: DriverChoice) {
    let nats = NatsServer::start();
    let (a, b) = (node(d, &nats, 64), node(d, &nats, 64));
    let mut on_b = sub(&b, "alerts.>");
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 300;
    let body = format!(r#"{{"subject":"alerts.open","data":"bell","at":{at}}}"#);
    let (status, _, _) = http(a.addr, "POST", "/publish", &[], body.as_bytes());
    assert_eq!(status, 202);
    let m = on_b.recv_msgs(1).remove(0);
    assert_eq!(
        (m["seq"].as_u64(), m["data"].as_str()),
        (Some(1), Some("bell"))
    );
    assert!(m["ts"].as_u64().unwrap() >= at * 1000);
}

fn a_publish_is_in_the_history_of_its_node_when_it_is_acked(d: DriverChoice) {
    let nats = NatsServer::start();
    let (a, _b) = (node(d, &nats, 64), node(d, &nats, 64));
    // Several publishers at once (each on its own subject), so that acks and the stream's
    // deliveries interleave.
    std::thread::scope(|s| {
        for t in 0..6 {
            let addr = a.addr;
            s.spawn(move || {
                let subject = format!("ryw.s{t}");
                for i in 1..=40u64 {
                    let (status, v) = try_publish(addr, &subject, &i.to_string(), None);
                    assert_eq!(status, 200, "{v}");
                    let seq = v["seq"].as_u64().unwrap();
                    let path = format!("/history/{subject}?since={}", seq - 1);
                    let h = json(&http(addr, "GET", &path, &[], b"").2);
                    assert_eq!(h["messages"][0]["seq"], seq, "read your writes: {h}");
                    assert_eq!(h["messages"][0]["data"], i);
                }
            });
        }
    });
}

#[test]
fn cluster_mode_refuses_a_data_dir_and_an_unreachable_nats() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ringcast::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        nats_url: Some(format!("nats://127.0.0.1:{port}")),
        ..Default::default()
    };
    let err = ringcast::server::Server::start(cfg.clone())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("--nats-url"), "{err}");
    let dir = std::env::temp_dir().join(format!("ringcast-never-created-{}", std::process::id()));
    let cfg = ringcast::config::Config {
        data_dir: Some(dir.clone()),
        ..cfg
    };
    let err = ringcast::server::Server::start(cfg).err().expect("refused");
    assert!(err.to_string().contains("exclude each other"), "{err}");
    assert!(!dir.exists(), "refused before anything was opened");
}

#[test]
fn nodes_starting_together_on_a_new_stream_all_join() {
    let nats = NatsServer::start();
    for round in 0..8 {
        std::thread::scope(|s| {
            let starts: Vec<_> = (0..3)
                .map(|_| {
                    let url = nats.url();
                    s.spawn(move || {
                        let cfg = ringcast::config::Config {
                            listen: "127.0.0.1:0".parse().unwrap(),
                            cores: Some(1),
                            nats_url: Some(url),
                            nats_stream: format!("RACE{round}"),
                            nats_prefix: format!("race{round}"),
                            ..Default::default()
                        };
                        let server = ringcast::server::Server::start(cfg)
                            .unwrap_or_else(|e| panic!("round {round}: {e}"));
                        server.shutdown();
                        server.join().unwrap();
                    })
                })
                .collect();
            for h in starts {
                h.join().unwrap();
            }
        });
    }
}

on_both_drivers!(
    a_publish_on_one_node_reaches_every_node_with_the_same_seq,
    concurrent_publishers_on_different_nodes_get_one_contiguous_seq,
    msg_id_dedup_holds_across_nodes,
    a_node_started_later_has_every_latest_value_and_reads_older_history_from_the_stream,
    a_client_of_a_dead_node_resumes_on_another_with_since,
    a_nats_restart_mid_stream_loses_nothing_acknowledged_and_leaves_no_gap,
    a_scheduled_publish_on_one_node_reaches_every_node,
    a_publish_is_in_the_history_of_its_node_when_it_is_acked,
);
