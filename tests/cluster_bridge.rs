//! Cluster mode's JetStream bridge against a real nats-server: two (or three) `Bridge`s on one
//! server act as the nodes of a cluster. Waits are bounded (a hung bridge fails the test); no
//! assertion depends on timing.

mod common;

use common::eventually;
use common::nats::NatsServer;
use crossbeam_channel::{unbounded, Receiver, Sender};
use ringcast::cluster::{
    Bridge, ClusterConfig, ClusterError, ClusterSink, Fetch, Fetched, Replicated,
};
use ringcast::proto::PubAck;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bound for any single wait: not a performance assertion.
const BOUND: Duration = Duration::from_secs(20);

type Answer<T> = (usize, u64, Result<T, ClusterError>);

struct ChanSink {
    rep: Sender<Replicated>,
    pubs: Sender<Answer<PubAck>>,
    fetches: Sender<Answer<Fetched>>,
}

impl ClusterSink for ChanSink {
    fn replicated(&self, msg: Replicated) {
        let _ = self.rep.send(msg);
    }
    fn published(
        &self,
        _subject: &str,
        from: usize,
        token: u64,
        result: Result<PubAck, ClusterError>,
    ) {
        let _ = self.pubs.send((from, token, result));
    }
    fn fetched(&self, from: usize, token: u64, result: Result<Fetched, ClusterError>) {
        let _ = self.fetches.send((from, token, result));
    }
}

/// One cluster node: a bridge and the channels behind its sink.
struct Node {
    bridge: Bridge,
    rep: Receiver<Replicated>,
    pubs: Receiver<Answer<PubAck>>,
    fetches: Receiver<Answer<Fetched>>,
    token: AtomicU64,
}

fn config(nats: &NatsServer) -> ClusterConfig {
    ClusterConfig {
        url: nats.url(),
        ..ClusterConfig::default()
    }
}

impl Node {
    fn start(cfg: ClusterConfig) -> Node {
        // RUST_LOG=ringcast=debug shows the bridge's reconnects and consumer recreations.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (rep_tx, rep) = unbounded();
        let (pub_tx, pubs) = unbounded();
        let (fetch_tx, fetches) = unbounded();
        let sink = Arc::new(ChanSink {
            rep: rep_tx,
            pubs: pub_tx,
            fetches: fetch_tx,
        });
        let bridge = Bridge::start(cfg, sink).expect("bridge starts");
        let node = Node {
            bridge,
            rep,
            pubs,
            fetches,
            token: AtomicU64::new(1),
        };
        eventually("caught up", || {
            node.bridge.status().caught_up.load(Ordering::Acquire)
        });
        node
    }

    /// Publishes and waits for the answer (one publish at a time per node in these helpers).
    fn publish(
        &self,
        subject: &str,
        data: &str,
        msg_id: Option<&str>,
    ) -> Result<PubAck, ClusterError> {
        let token = self.token.fetch_add(1, Ordering::Relaxed);
        self.bridge
            .publish(subject, data.as_bytes(), msg_id, 7, token);
        let (from, t, r) = self.pubs.recv_timeout(BOUND).expect("publish answered");
        assert_eq!((from, t), (7, token), "answer carries from and token");
        r
    }

    fn fetch(&self, what: Fetch) -> Result<Fetched, ClusterError> {
        let token = self.token.fetch_add(1, Ordering::Relaxed);
        self.bridge.fetch(what, 3, token);
        let (from, t, r) = self.fetches.recv_timeout(BOUND).expect("fetch answered");
        assert_eq!((from, t), (3, token));
        r
    }

    /// The next `n` replicated messages.
    fn replicated(&self, n: usize) -> Vec<Replicated> {
        (0..n)
            .map(|i| {
                self.rep
                    .recv_timeout(BOUND)
                    .unwrap_or_else(|_| panic!("replicated message {} of {n}", i + 1))
            })
            .collect()
    }
}

fn since(subject: &str, since: u64, limit: usize) -> Fetch {
    Fetch {
        subject: subject.into(),
        since,
        limit,
    }
}

fn seqs(msgs: &[Replicated]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

#[test]
fn publish_on_one_node_is_replicated_identically_to_both() {
    let nats = NatsServer::start();
    let (a, b) = (Node::start(config(&nats)), Node::start(config(&nats)));
    let ack = a
        .publish("prices.EURUSD", r#"{"bid":1.0842}"#, None)
        .unwrap();
    assert_eq!((ack.seq, ack.duplicate), (1, false));
    let on_a = a.replicated(1).remove(0);
    let on_b = b.replicated(1).remove(0);
    assert_eq!(on_a, on_b);
    assert_eq!(&*on_a.subject, "prices.EURUSD");
    assert_eq!((on_a.seq, on_a.ts), (ack.seq, ack.ts));
    assert_eq!(&*on_a.data, br#"{"bid":1.0842}"#);
    assert_eq!(on_a.msg_id, None);
    assert_eq!(a.bridge.status().published.load(Ordering::Relaxed), 1);
    assert_eq!(b.bridge.status().consumed.load(Ordering::Relaxed), 1);
}

#[test]
fn concurrent_publishers_on_two_nodes_get_contiguous_seqs_in_one_order() {
    const PER_NODE: u64 = 40;
    let nats = NatsServer::start();
    let (a, b) = (Node::start(config(&nats)), Node::start(config(&nats)));
    let run = |node: &'static str, n: &Node| {
        (0..PER_NODE)
            .map(|i| {
                let data = format!(r#"{{"node":"{node}","i":{i}}}"#);
                n.publish("race.one", &data, None).expect("publish")
            })
            .collect::<Vec<_>>()
    };
    let mut acks: Vec<PubAck> = std::thread::scope(|s| {
        let ta = s.spawn(|| run("a", &a));
        let tb = s.spawn(|| run("b", &b));
        let mut v = ta.join().unwrap();
        v.extend(tb.join().unwrap());
        v
    });
    acks.sort_by_key(|a| a.seq);
    assert_eq!(
        acks.iter().map(|a| a.seq).collect::<Vec<_>>(),
        (1..=2 * PER_NODE).collect::<Vec<_>>(),
        "every seq exactly once, no gap"
    );
    assert!(
        acks.windows(2).all(|w| w[0].ts <= w[1].ts),
        "ts never goes back"
    );
    eprintln!(
        "guard conflicts retried: a {} b {}",
        a.bridge.status().conflicts.load(Ordering::Relaxed),
        b.bridge.status().conflicts.load(Ordering::Relaxed)
    );
    let on_a = a.replicated(2 * PER_NODE as usize);
    let on_b = b.replicated(2 * PER_NODE as usize);
    assert_eq!(seqs(&on_a), (1..=2 * PER_NODE).collect::<Vec<_>>());
    assert_eq!(on_a, on_b, "same messages in the same order on both nodes");
    // Each node's own publishes keep their order.
    for node in ["a", "b"] {
        let is: Vec<u64> = on_a
            .iter()
            .filter(|m| {
                std::str::from_utf8(&m.data)
                    .unwrap()
                    .contains(&format!(r#""node":"{node}""#))
            })
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
                v["i"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(is, (0..PER_NODE).collect::<Vec<_>>());
    }
}

#[test]
fn repeated_msg_id_through_the_other_node_is_a_duplicate_of_the_original() {
    let nats = NatsServer::start();
    let (a, b) = (Node::start(config(&nats)), Node::start(config(&nats)));
    let first = a.publish("orders.1", r#"{"qty":1}"#, Some("m-1")).unwrap();
    assert!(!first.duplicate);
    // Both nodes have seen it: B's guard view is current, and A sees exactly one.
    assert_eq!(a.replicated(1)[0].msg_id.as_deref(), Some("m-1"));
    assert_eq!(b.replicated(1)[0].seq, 1);
    let again = b
        .publish("orders.1", r#"{"qty":999}"#, Some("m-1"))
        .unwrap();
    assert_eq!(
        again,
        PubAck {
            seq: first.seq,
            ts: first.ts,
            duplicate: true
        }
    );
    assert_eq!(b.bridge.status().duplicates.load(Ordering::Relaxed), 1);
    // Stream order: were the duplicate delivered, it would come before this one.
    let next = b.publish("orders.1", r#"{"qty":2}"#, None).unwrap();
    assert_eq!((next.seq, next.duplicate), (2, false));
    for n in [&a, &b] {
        let m = n.replicated(1).remove(0);
        assert_eq!((m.seq, &*m.data), (2, &br#"{"qty":2}"#[..]));
    }
}

#[test]
fn repeated_msg_id_answers_the_original_not_the_latest() {
    let nats = NatsServer::start();
    let a = Node::start(config(&nats));
    let first = a.publish("older.x", "1", Some("dup")).unwrap();
    let _ = a.publish("older.x", "2", None).unwrap();
    let b = Node::start(config(&nats));
    let _ = a.publish("older.x", "3", None).unwrap();
    let again = b.publish("older.x", "x", Some("dup")).unwrap();
    assert_eq!(
        again,
        PubAck {
            seq: first.seq,
            ts: first.ts,
            duplicate: true
        }
    );
    let next = b.publish("older.x", "4", None).unwrap();
    assert_eq!(next.seq, 4);
}

#[test]
fn same_msg_id_on_another_subject_is_not_a_duplicate() {
    let nats = NatsServer::start();
    let (a, b) = (Node::start(config(&nats)), Node::start(config(&nats)));
    let x = a.publish("left", "1", Some("same")).unwrap();
    let y = b.publish("right", "2", Some("same")).unwrap();
    assert_eq!((x.seq, x.duplicate), (1, false));
    assert_eq!((y.seq, y.duplicate), (1, false));
    let got = a.replicated(2);
    assert_eq!(
        got.iter()
            .map(|m| (&*m.subject, m.msg_id.as_deref()))
            .collect::<Vec<_>>(),
        [("left", Some("same")), ("right", Some("same"))]
    );
}

#[test]
fn fetch_since_returns_the_tail_and_the_retained_range() {
    let nats = NatsServer::start();
    let cfg = ClusterConfig {
        max_msgs_per_subject: 4,
        ..config(&nats)
    };
    let (a, b) = (Node::start(cfg.clone()), Node::start(cfg));
    for i in 1..=6 {
        a.publish("hist.x", &i.to_string(), None).unwrap();
    }
    b.publish("hist.y", "1", None).unwrap();
    // Retention keeps seqs 3..=6 of hist.x.
    let f = b.fetch(since("hist.x", 0, 100)).unwrap();
    assert_eq!(
        (f.first_seq, f.last_seq, seqs(&f.messages)),
        (3, 6, vec![3, 4, 5, 6])
    );
    assert!(f.messages.iter().all(|m| &*m.subject == "hist.x"));
    assert_eq!(&*f.messages[0].data, b"3");
    let f = b.fetch(since("hist.x", 3, 2)).unwrap();
    assert_eq!(seqs(&f.messages), vec![4, 5]);
    let f = b.fetch(since("hist.x", 5, 10)).unwrap();
    assert_eq!(seqs(&f.messages), vec![6]);
    let f = b.fetch(since("hist.x", 6, 10)).unwrap();
    assert_eq!((f.first_seq, f.last_seq, f.messages.len()), (3, 6, 0));
    let f = a.fetch(since("hist.none", 0, 10)).unwrap();
    assert_eq!((f.first_seq, f.last_seq, f.messages.len()), (1, 0, 0));
    assert_eq!(
        a.fetch(since("bad subject", 0, 10)),
        Err(ClusterError::Rejected)
    );
}

#[test]
fn a_node_started_later_learns_the_latest_per_subject_and_continues_the_seq() {
    let nats = NatsServer::start();
    let a = Node::start(config(&nats));
    for i in 1..=3 {
        a.publish("late.a", &i.to_string(), None).unwrap();
    }
    for i in 1..=2 {
        a.publish("late.b", &i.to_string(), None).unwrap();
    }
    let c = Node::start(config(&nats));
    // Caught up: everything the initial pass delivered is already in the channel.
    let learned: Vec<(String, u64)> = c
        .rep
        .try_iter()
        .map(|m| (m.subject.into(), m.seq))
        .collect();
    assert_eq!(
        learned,
        [("late.a".to_string(), 3), ("late.b".to_string(), 2)]
    );
    let ack = c.publish("late.a", "4", None).unwrap();
    assert_eq!((ack.seq, ack.duplicate), (4, false));
    assert_eq!(
        c.bridge.status().conflicts.load(Ordering::Relaxed),
        0,
        "its view was current"
    );
    let on_a: Vec<u64> = a.replicated(6).iter().map(|m| m.seq).collect();
    assert_eq!(on_a, [1, 2, 3, 1, 2, 4]);
}

#[test]
fn nats_restart_mid_stream_loses_and_repeats_nothing() {
    let mut nats = NatsServer::start();
    let (a, b) = (Node::start(config(&nats)), Node::start(config(&nats)));
    let mut stored = 0u64;
    for i in 0..5 {
        a.publish("up.a", &i.to_string(), None).unwrap();
        b.publish("up.b", &i.to_string(), None).unwrap();
        stored += 2;
    }
    nats.stop();
    eventually("A disconnected", || {
        !a.bridge.status().connected.load(Ordering::Acquire)
    });
    eventually("B disconnected", || {
        !b.bridge.status().connected.load(Ordering::Acquire)
    });
    assert_eq!(
        a.publish("up.a", "down", None),
        Err(ClusterError::Unavailable)
    );
    assert_eq!(
        b.publish("up.b", "down", Some("id")),
        Err(ClusterError::Unavailable)
    );
    nats.restart();
    eventually("A reconnected", || {
        a.bridge.status().connected.load(Ordering::Acquire)
    });
    eventually("B reconnected", || {
        b.bridge.status().connected.load(Ordering::Acquire)
    });
    // JetStream may need a moment after the listener is back: retry with a msg_id, which makes
    // a retry after an ambiguous failure safe.
    let publish = |n: &Node, subject: &str, i: u64| -> PubAck {
        let id = format!("{subject}-{i}");
        let deadline = Instant::now() + BOUND;
        loop {
            match n.publish(subject, &i.to_string(), Some(&id)) {
                Ok(ack) => return ack,
                Err(ClusterError::Unavailable) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("publish after restart: {e}"),
            }
        }
    };
    for i in 5..10 {
        let x = publish(&a, "up.a", i);
        let y = publish(&b, "up.b", i);
        assert_eq!(
            (x.seq, y.seq),
            (i + 1, i + 1),
            "seqs continue across the outage"
        );
        stored += 2;
    }
    for n in [&a, &b] {
        let got = n.replicated(stored as usize);
        let sseqs: Vec<u64> = got.iter().map(|m| m.stream_seq).collect();
        assert_eq!(
            sseqs,
            (1..=stored).collect::<Vec<_>>(),
            "every stream message once, no gap"
        );
        for subject in ["up.a", "up.b"] {
            let s: Vec<u64> = got
                .iter()
                .filter(|m| &*m.subject == subject)
                .map(|m| m.seq)
                .collect();
            assert_eq!(s, (1..=10).collect::<Vec<_>>());
        }
        assert!(n.bridge.status().reconnects.load(Ordering::Relaxed) >= 1);
        assert_eq!(
            n.bridge.status().last_stream_seq.load(Ordering::Relaxed),
            stored
        );
    }
    // Nothing more is pending on either sink: publish a marker and it must be the next message.
    a.publish("up.marker", "1", None).unwrap();
    for n in [&a, &b] {
        assert_eq!(n.replicated(1)[0].stream_seq, stored + 1);
    }
    a.bridge.shutdown();
    b.bridge.shutdown();
}

#[test]
fn start_fails_when_nats_is_not_there() {
    let nats = NatsServer::start();
    let cfg = ClusterConfig {
        connect_timeout: Duration::from_secs(2),
        ..config(&nats)
    };
    drop(nats);
    let (tx, _rx) = unbounded();
    let (ptx, _prx) = unbounded();
    let (ftx, _frx) = unbounded();
    let sink = Arc::new(ChanSink {
        rep: tx,
        pubs: ptx,
        fetches: ftx,
    });
    assert!(Bridge::start(cfg, sink).is_err());
}

/// What the bridge relies on, checked on the installed nats-server (2.9 on Debian) with
/// async-nats directly.
#[test]
fn nats_server_guard_and_dedup_behave_as_the_bridge_assumes() {
    use async_nats::jetstream::{self, context::PublishErrorKind, stream};
    use async_nats::HeaderMap;
    let nats = NatsServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        let s = js
            .create_stream(stream::Config {
                name: "FACTS".into(),
                subjects: vec!["f.>".into()],
                duplicate_window: Duration::from_secs(60),
                allow_direct: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let publish = |expect: u64, id: &str| {
            let mut h = HeaderMap::new();
            h.insert("Nats-Expected-Last-Subject-Sequence", expect.to_string());
            h.insert("Nats-Msg-Id", id);
            let js = js.clone();
            async move { js.publish_with_headers("f.a", h, "x".into()).await?.await }
        };
        // 0 means "no message on this subject yet".
        assert_eq!(publish(0, "one").await.unwrap().sequence, 1);
        let err = publish(0, "two").await.unwrap_err();
        assert_eq!(err.kind(), PublishErrorKind::WrongLastSequence);
        let code = std::error::Error::source(&err)
            .and_then(|e| e.downcast_ref::<jetstream::Error>())
            .map(|e| e.error_code().0);
        assert_eq!(code, Some(10071));
        assert_eq!(publish(1, "two").await.unwrap().sequence, 2);
        // The msg id is checked before the guard: a repeat with a stale guard is a duplicate.
        let dup = publish(1, "one").await.unwrap();
        assert_eq!((dup.sequence, dup.duplicate), (1, true));
        // Direct get last-by-subject ($JS.API.DIRECT.GET.<stream>.<subject>) is served.
        assert_eq!(
            s.direct_get_last_for_subject("f.a").await.unwrap().sequence,
            2
        );
    });
}

#[test]
fn oversized_or_malformed_publishes_are_rejected() {
    let nats = NatsServer::start();
    let a = Node::start(config(&nats));
    let big = format!("\"{}\"", "x".repeat(1024 * 1024));
    assert_eq!(
        a.publish("big.one", &big, None),
        Err(ClusterError::Rejected)
    );
    assert_eq!(
        a.publish("bad subject", "1", None),
        Err(ClusterError::Rejected)
    );
    assert_eq!(a.publish("wild.*", "1", None), Err(ClusterError::Rejected));
    // The connection survived: the next publish is stored as seq 1.
    assert_eq!(a.publish("big.one", "1", None).unwrap().seq, 1);
    assert!(a.bridge.status().connected.load(Ordering::Acquire));
}
