//! Durable history (`--data-dir`): a restart keeps every subject's seq, history, latest value,
//! dedup ids and pending scheduled publishes; history older than the ring is read from the
//! store; retention drops the oldest; and with `--durability sync` a `kill -9` loses nothing
//! that was acknowledged.

mod common;

use common::{http, start, Node, TempDir};
use ringcast::config::DriverChoice;
use ringcast::store::Durability;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn durable_node(
    d: DriverChoice,
    dir: &Path,
    durability: Durability,
    history: usize,
    retention: &[&str],
) -> Node {
    start(d, |c| {
        c.data_dir = Some(dir.to_path_buf());
        c.durability = Some(durability);
        c.history = history;
        c.retention = retention.iter().map(|s| s.to_string()).collect();
    })
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn publish_id(addr: SocketAddr, subject: &str, data: &str, msg_id: &str) -> Value {
    let body = format!(r#"{{"subject":"{subject}","data":{data},"msg_id":"{msg_id}"}}"#);
    let (status, _, resp) = http(addr, "POST", "/publish", &[], body.as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    json(&resp)
}

fn history(addr: SocketAddr, subject: &str, since: u64) -> Value {
    let (status, _, body) = http(
        addr,
        "GET",
        &format!("/history/{subject}?since={since}&limit=10000"),
        &[],
        b"",
    );
    assert_eq!(status, 200);
    json(&body)
}

fn seqs(h: &Value) -> Vec<u64> {
    h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn seq_history_latest_and_dedup_survive_a_restart(d: DriverChoice, durability: Durability) {
    let dir = TempDir::new("restart");
    {
        let node = durable_node(d, &dir.0, durability, 1024, &[]);
        assert_eq!(publish_id(node.addr, "fx.eur", "1", "first")["seq"], 1);
        for i in 2..=5 {
            assert_eq!(node.publish("fx.eur", &i.to_string())["seq"], i);
        }
        node.publish("fx.gbp", "10");
    }
    let node = durable_node(d, &dir.0, durability, 1024, &[]);
    assert_eq!(
        node.publish("fx.eur", "6")["seq"],
        6,
        "seq continues after the restart"
    );
    let dup = publish_id(node.addr, "fx.eur", "99", "first");
    assert_eq!(
        (dup["seq"].as_u64(), dup["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    let h = history(node.addr, "fx.eur", 0);
    assert_eq!(seqs(&h), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(h["messages"][0]["data"], 1);
    let mut c = node.ws();
    let (r, _) = c.request(r#"{"op":"sub","id":1,"subject":"fx.*","snapshot":true}"#);
    assert_eq!(r["op"], "ok");
    let mut latest: Vec<(String, u64)> = c
        .recv_msgs(2)
        .iter()
        .map(|m| {
            (
                m["subject"].as_str().unwrap().to_string(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    latest.sort();
    assert_eq!(latest, vec![("fx.eur".into(), 6), ("fx.gbp".into(), 1)]);
}

fn seq_history_latest_and_dedup_survive_a_restart_with_sync(d: DriverChoice) {
    seq_history_latest_and_dedup_survive_a_restart(d, Durability::Sync);
}

fn seq_history_latest_and_dedup_survive_a_restart_with_batch(d: DriverChoice) {
    seq_history_latest_and_dedup_survive_a_restart(d, Durability::Batch);
}

fn history_older_than_the_ring_is_read_from_the_store(d: DriverChoice) {
    let dir = TempDir::new("deep");
    let node = durable_node(d, &dir.0, Durability::Sync, 4, &[]);
    for i in 1..=30 {
        node.publish("deep.s", &i.to_string());
    }
    assert_eq!(
        node.node_metric("ringcast_store_appended_total"),
        Some(30),
        "sync: every acked publish is written before its ack"
    );
    assert_eq!(node.node_metric("ringcast_store_healthy"), Some(1));
    assert_eq!(node.node_metric("ringcast_store_backlog"), Some(0));
    let h = history(node.addr, "deep.s", 0);
    assert_eq!(h["first_seq"], 1);
    assert_eq!(h["last_seq"], 30);
    assert_eq!(seqs(&h), (1..=30).collect::<Vec<_>>());
    let recent = history(node.addr, "deep.s", 20);
    assert_eq!(seqs(&recent), (21..=30).collect::<Vec<_>>());
    assert_eq!(
        recent["first_seq"], 1,
        "first_seq names the oldest stored message"
    );
    // A `since` subscriber gets every message after N, no gap, then live ones.
    let mut c = node.ws();
    let (r, _) = c.request(r#"{"op":"sub","id":1,"subject":"deep.s","since":2}"#);
    assert_eq!(r["op"], "ok");
    node.publish("deep.s", "31");
    let got: Vec<u64> = c
        .recv_msgs(29)
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (3..=31).collect::<Vec<_>>());
}

fn a_since_replay_from_the_store_works_across_cores(d: DriverChoice) {
    let dir = TempDir::new("deep-cores");
    let node = durable_node(d, &dir.0, Durability::Batch, 2, &[]);
    // Several subjects so that both cores own some; each subscriber asks from seq 0.
    let subjects: Vec<String> = (0..6).map(|i| format!("multi.s{i}")).collect();
    for s in &subjects {
        for i in 1..=10 {
            node.publish(s, &i.to_string());
        }
    }
    for s in &subjects {
        let mut c = node.ws();
        let (r, _) = c.request(&format!(
            r#"{{"op":"sub","id":1,"subject":"{s}","since":0}}"#
        ));
        assert_eq!(r["op"], "ok");
        let got: Vec<u64> = c
            .recv_msgs(10)
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(got, (1..=10).collect::<Vec<_>>(), "{s}");
    }
}

fn retention_by_count_keeps_the_newest_and_reports_the_gap(d: DriverChoice) {
    let dir = TempDir::new("retention");
    let node = durable_node(d, &dir.0, Durability::Sync, 2, &["keep.>=count:5"]);
    for i in 1..=12 {
        node.publish("keep.a", &i.to_string());
        node.publish("other.a", &i.to_string());
    }
    let h = history(node.addr, "keep.a", 0);
    assert_eq!(
        (h["first_seq"].as_u64(), h["last_seq"].as_u64()),
        (Some(8), Some(12))
    );
    assert_eq!(seqs(&h), vec![8, 9, 10, 11, 12]);
    // Subjects no rule names keep the default (10,000).
    assert_eq!(seqs(&history(node.addr, "other.a", 0)).len(), 12);
    let mut c = node.ws();
    let (r, _) = c.request(r#"{"op":"sub","id":1,"subject":"keep.a","since":0}"#);
    assert_eq!(r["op"], "ok");
    let gap = c.recv_json();
    assert_eq!(
        (gap["op"].as_str(), gap["from"].as_u64(), gap["to"].as_u64()),
        (Some("gap"), Some(1), Some(7))
    );
    let got: Vec<u64> = c
        .recv_msgs(5)
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![8, 9, 10, 11, 12]);
}

fn retention_by_age_drops_old_messages(d: DriverChoice) {
    let dir = TempDir::new("age");
    let node = durable_node(d, &dir.0, Durability::Batch, 1, &["old.>=age:1s"]);
    for i in 1..=5 {
        node.publish("old.a", &i.to_string());
    }
    // Age retention runs about once a second; poll (bounded) until it has.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = history(node.addr, "old.a", 0);
        if h["first_seq"] == 5 {
            assert_eq!(seqs(&h), vec![5], "the ring still holds the latest");
            break;
        }
        assert!(Instant::now() < deadline, "never expired: {h}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(node.publish("old.a", "6")["seq"], 6);
    // 1-4 are gone from the store; 5 may be too (only the ring still holds it).
    let expired = node.node_metric("ringcast_store_expired_total").unwrap();
    assert!((4..=5).contains(&expired), "{expired}");
    // Batch durability: the groups written over a second ago have been fsynced since.
    assert!(node.node_metric("ringcast_store_fsyncs_total").unwrap() >= 1);
}

fn scheduled_publishes_survive_a_restart(d: DriverChoice) {
    let dir = TempDir::new("sched");
    let at = now_ms() + 2_000;
    let (keep, cancelled) = {
        let node = durable_node(d, &dir.0, Durability::Sync, 16, &[]);
        let mut ids = Vec::new();
        for _ in 0..2 {
            let body = format!(r#"{{"subject":"later.x","data":"due","at":{at}}}"#);
            let (status, _, r) = http(node.addr, "POST", "/publish", &[], body.as_bytes());
            assert_eq!(status, 202);
            ids.push(json(&r)["schedule_id"].as_str().unwrap().to_string());
        }
        let (status, _, _) = http(
            node.addr,
            "DELETE",
            &format!("/schedule/{}", ids[1]),
            &[],
            b"",
        );
        assert_eq!(status, 200);
        (ids[0].clone(), ids[1].clone())
    };
    let node = durable_node(d, &dir.0, Durability::Sync, 16, &[]);
    let (_, _, list) = http(node.addr, "GET", "/schedule?subject=later.x", &[], b"");
    let list = json(&list);
    let pending: Vec<&str> = list["scheduled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["schedule_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        pending,
        vec![keep.as_str()],
        "cancelled {cancelled} stays cancelled"
    );
    let mut c = node.ws();
    c.sub(1, "later.x");
    let m = c.recv_msgs(1).remove(0);
    assert_eq!(
        (m["seq"].as_u64(), m["data"].as_str()),
        (Some(1), Some("due"))
    );
    // Fired: gone from the store too.
    drop(c);
    drop(node);
    let node = durable_node(d, &dir.0, Durability::Sync, 16, &[]);
    let (_, _, list) = http(node.addr, "GET", "/schedule?subject=later.x", &[], b"");
    assert_eq!(json(&list)["scheduled"].as_array().unwrap().len(), 0);
    assert_eq!(seqs(&history(node.addr, "later.x", 0)), vec![1]);
}

#[test]
fn durability_sync_or_batch_needs_a_data_dir() {
    let cfg = ringcast::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        durability: Some(Durability::Sync),
        ..Default::default()
    };
    let err = ringcast::server::Server::start(cfg).err().expect("refused");
    assert!(err.to_string().contains("--data-dir"), "{err}");
}

#[test]
fn a_data_dir_is_used_by_one_process_at_a_time() {
    let dir = TempDir::new("lock");
    let first = durable_node(DriverChoice::Auto, &dir.0, Durability::Batch, 16, &[]);
    let cfg = ringcast::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.0.clone()),
        ..Default::default()
    };
    let err = ringcast::server::Server::start(cfg.clone())
        .err()
        .expect("a second node on the same data dir is refused");
    assert!(err.to_string().contains("in use"), "{err}");
    first.publish("lock.a", "1");
    drop(first);
    let again = ringcast::server::Server::start(cfg).expect("free again once the first stopped");
    again.shutdown();
    again.join().unwrap();
}

#[test]
fn publishes_are_refused_not_queued_without_bound_when_the_store_falls_behind() {
    const N: u64 = 300;
    let dir = TempDir::new("backlog");
    // A backlog bound of one operation: pipelined publishes overtake the storage thread (each
    // of its groups waits for an fsync) and the ones past the bound must be refused.
    let node = start(DriverChoice::Auto, |c| {
        c.data_dir = Some(dir.0.clone());
        c.durability = Some(Durability::Sync);
        c.store_max_backlog = 1;
        c.max_msgs_per_sec = 0;
    });
    let mut p = node.ws();
    for i in 1..=N {
        p.send(&format!(
            r#"{{"op":"pub","id":{i},"subject":"full.s","data":{i}}}"#
        ));
    }
    let (mut acked, mut refused) = (Vec::new(), 0);
    while acked.len() as u64 + refused < N {
        let v = p.recv_json();
        match v["op"].as_str() {
            Some("ok") => acked.push((v["id"].as_u64().unwrap(), v["seq"].as_u64().unwrap())),
            Some("err") => {
                assert_eq!(v["code"], "overloaded", "{v}");
                assert!(v["message"].as_str().unwrap().contains("behind"), "{v}");
                refused += 1;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(refused > 0, "the bound was never reached");
    assert!(!acked.is_empty());
    // What was accepted is all there, in order, with contiguous seqs.
    let h = history(node.addr, "full.s", 0);
    let stored: Vec<(u64, u64)> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["data"].as_u64().unwrap(), m["seq"].as_u64().unwrap()))
        .collect();
    acked.sort_by_key(|(_, seq)| *seq);
    assert_eq!(stored, acked);
    assert_eq!(seqs(&h), (1..=acked.len() as u64).collect::<Vec<_>>());
}

// ---- kill -9 -------------------------------------------------------------------------------

fn spawn_binary(dir: &Path) -> (Child, SocketAddr) {
    let dir = dir.as_os_str();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "2",
        "--durability",
        "sync",
    ];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    args.extend(["--data-dir".as_ref(), dir]);
    let (child, addr, _) = common::spawn_ringcast(&args);
    (child, addr)
}

#[test]
fn with_sync_durability_kill_9_loses_no_acknowledged_message_and_never_reuses_a_seq() {
    const MAX_PUBLISHES: u64 = 20_000;
    let dir = TempDir::new("kill9");
    let (mut child, addr) = spawn_binary(&dir.0);
    let acked: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    // Steady publishers with acks (two subjects, so both cores sequence), until the node dies.
    let publishers: Vec<_> = ["crash.a", "crash.b"]
        .into_iter()
        .map(|subject| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 1..=MAX_PUBLISHES {
                    let body = format!(r#"{{"subject":"{subject}","data":{i}}}"#);
                    let r = std::panic::catch_unwind(|| {
                        http(addr, "POST", "/publish", &[], body.as_bytes())
                    });
                    match r {
                        Ok((200, _, b)) => {
                            let v: Value = serde_json::from_slice(&b).unwrap();
                            mine.push((i, v["seq"].as_u64().unwrap()));
                            if subject == "crash.a" {
                                acked.lock().unwrap().push((i, v["seq"].as_u64().unwrap()));
                            }
                        }
                        _ => break,
                    }
                }
                (subject, mine)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "publishing never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL, mid-stream
    child.wait().unwrap();
    let results: Vec<(&str, Vec<(u64, u64)>)> =
        publishers.into_iter().map(|p| p.join().unwrap()).collect();

    let (mut child, addr) = spawn_binary(&dir.0);
    for (subject, mine) in &results {
        assert!(!mine.is_empty());
        let h = history(addr, subject, 0);
        let stored: Vec<(u64, u64)> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["data"].as_u64().unwrap(), m["seq"].as_u64().unwrap()))
            .collect();
        // Contiguous seqs from 1, each publish at most once, in publish order.
        for (k, (data, seq)) in stored.iter().enumerate() {
            assert_eq!(*seq, k as u64 + 1, "{subject}: seqs are contiguous");
            assert_eq!(*data, k as u64 + 1, "{subject}: publish order kept");
        }
        // Every acknowledged publish is there with its acknowledged seq.
        for (i, seq) in mine {
            assert_eq!(
                stored.get(*seq as usize - 1),
                Some(&(*i, *seq)),
                "{subject}: acknowledged publish {i} (seq {seq}) survived"
            );
        }
        let last = stored.last().unwrap().1;
        let body = format!(r#"{{"subject":"{subject}","data":0}}"#);
        let (status, _, b) = http(addr, "POST", "/publish", &[], body.as_bytes());
        assert_eq!(status, 200);
        assert_eq!(
            json(&b)["seq"].as_u64(),
            Some(last + 1),
            "{subject}: seq continues, no reuse"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_restart_with_another_core_count_keeps_seqs_and_schedules() {
    let dir = TempDir::new("cores");
    let subjects: Vec<String> = (0..8).map(|i| format!("move.s{i}")).collect();
    let at = now_ms() + 60_000;
    let id = {
        let node = durable_node(DriverChoice::Auto, &dir.0, Durability::Sync, 16, &[]);
        for s in &subjects {
            node.publish(s, "1");
            node.publish(s, "2");
        }
        let body = format!(r#"{{"subject":"move.s3","data":"later","at":{at}}}"#);
        let (status, _, r) = http(node.addr, "POST", "/publish", &[], body.as_bytes());
        assert_eq!(status, 202);
        json(&r)["schedule_id"].as_str().unwrap().to_string()
    };
    let node = start(DriverChoice::Auto, |c| {
        c.data_dir = Some(dir.0.clone());
        c.durability = Some(Durability::Sync);
        c.cores = Some(1);
    });
    for s in &subjects {
        assert_eq!(
            node.publish(s, "3")["seq"],
            3,
            "{s}: seq continues on its new owner"
        );
        assert_eq!(seqs(&history(node.addr, s, 0)), vec![1, 2, 3]);
    }
    let (_, _, list) = http(node.addr, "GET", "/schedule?subject=move.s3", &[], b"");
    let list = json(&list);
    let pending = list["scheduled"].as_array().unwrap();
    assert_eq!(
        pending.len(),
        1,
        "the pending publish survived ({id} may be renumbered)"
    );
    assert_eq!(pending[0]["at"], at);
    let new_id = pending[0]["schedule_id"].as_str().unwrap();
    let (status, _, _) = http(
        node.addr,
        "DELETE",
        &format!("/schedule/{new_id}"),
        &[],
        b"",
    );
    assert_eq!(
        status, 200,
        "and can be cancelled under the id it is listed with"
    );
}

on_both_drivers!(
    seq_history_latest_and_dedup_survive_a_restart_with_sync,
    seq_history_latest_and_dedup_survive_a_restart_with_batch,
    history_older_than_the_ring_is_read_from_the_store,
    a_since_replay_from_the_store_works_across_cores,
    retention_by_count_keeps_the_newest_and_reports_the_gap,
    retention_by_age_drops_old_messages,
    scheduled_publishes_survive_a_restart,
);
