//! The stream consumer: one ordered consumer over `<prefix>.>` that hands every message, in
//! stream order, to the sink as a [`Replicated`](super::Replicated) and keeps the per-subject
//! views current.
//!
//! Owns the [`Cursor`] (the last stream seq consumed, and whether the initial
//! `LastPerSubject` pass is still running); after any consumer error or reconnect it recreates
//! the consumer after that seq and drops replays, so the sink sees no gap and no duplicate.
//! Runs on the bridge thread as one task for the bridge's life.

use super::state::{BridgeState, View};
use super::{wire, REQUEST_TIMEOUT, RESUBSCRIBE_BACKOFF_MAX};
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{Consumer, DeliverPolicy};
use async_nats::jetstream::Message;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where the stream consumer stands.
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    /// Stream seq of the last message consumed (delivered or skipped).
    last_seen: u64,
    /// Still in the initial `LastPerSubject` pass.
    initial: bool,
}

impl Cursor {
    fn new() -> Self {
        Cursor {
            last_seen: 0,
            initial: true,
        }
    }

    /// A consumer was just created with `num_pending` messages for it; `floor` is the stream's
    /// last seq before creation. True when this ends the initial pass: nothing was under the
    /// prefix, so everything after `floor` is new.
    fn created(&mut self, num_pending: u64, floor: u64) -> bool {
        if self.initial && num_pending == 0 {
            self.initial = false;
            self.last_seen = self.last_seen.max(floor);
            return true;
        }
        false
    }

    /// Message `sseq` arrived: true when it is new (past `last_seen`), which it then becomes;
    /// false for a replay after a resubscribe.
    fn take(&mut self, sseq: u64) -> bool {
        if sseq <= self.last_seen {
            return false;
        }
        if !self.initial && sseq != self.last_seen + 1 {
            // Only retention can do this (a subject overflowed while this node was away).
            tracing::debug!("stream gap: {} -> {sseq}", self.last_seen);
        }
        self.last_seen = sseq;
        true
    }

    /// The consumer reports `pending` messages left after this one: true when this ends the
    /// initial pass.
    fn caught_up(&mut self, pending: u64) -> bool {
        if self.initial && pending == 0 {
            self.initial = false;
            return true;
        }
        false
    }
}

/// The stream consumer: runs for the bridge's life, recreating its ordered consumer after any
/// error or reconnect, resuming after `last_seen`.
pub(super) async fn consume(sh: Arc<BridgeState>, mut reconnected: watch::Receiver<u64>) {
    let mut cur = Cursor::new();
    let mut failures = 0u32;
    loop {
        reconnected.borrow_and_update();
        if failures > 0 {
            tokio::time::sleep(resubscribe_pause(failures)).await;
        }
        let (consumer, floor) =
            match tokio::time::timeout(REQUEST_TIMEOUT, subscribe(&sh, &cur)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!("stream consumer: {e}");
                    failures += 1;
                    continue;
                }
                Err(_) => {
                    failures += 1;
                    continue;
                }
            };
        let name = consumer.cached_info().name.clone();
        if cur.created(consumer.cached_info().num_pending, floor) {
            sh.status.caught_up.store(true, Ordering::Release);
        }
        let mut msgs = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("stream consumer messages: {e}");
                failures += 1;
                continue;
            }
        };
        failures = 0;
        if follow(&sh, &mut cur, &mut msgs, &mut reconnected).await == Follow::Stop {
            return;
        }
        drop(msgs);
        // Best effort: an ordered consumer is ephemeral and the server drops it when idle anyway.
        let _ =
            tokio::time::timeout(Duration::from_secs(1), sh.stream.delete_consumer(&name)).await;
    }
}

/// The pause before the next consumer after `failures` failed attempts in a row: 100, 200 ..
/// ms up to [`RESUBSCRIBE_BACKOFF_MAX`].
fn resubscribe_pause(failures: u32) -> Duration {
    let ms = (50u64 << failures.min(5)).min(RESUBSCRIBE_BACKOFF_MAX.as_millis() as u64);
    Duration::from_millis(ms)
}

/// Creates the ordered stream consumer where `cur` stands; also returns the stream's last seq
/// before creation (used when the initial consumer finds nothing pending).
async fn subscribe(
    sh: &BridgeState,
    cur: &Cursor,
) -> Result<(Consumer<OrderedConfig>, u64), String> {
    let (deliver_policy, floor) = if cur.initial {
        let info = sh.stream.get_info().await.map_err(|e| e.to_string())?;
        (DeliverPolicy::LastPerSubject, info.state.last_sequence)
    } else {
        (
            DeliverPolicy::ByStartSequence {
                start_sequence: cur.last_seen + 1,
            },
            0,
        )
    };
    let consumer = sh
        .stream
        .create_consumer(OrderedConfig {
            filter_subject: wire::all_subjects(&sh.prefix),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok((consumer, floor))
}

/// Why [`follow`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Follow {
    /// The consumer failed or the connection came back: make a new one.
    Resubscribe,
    /// The bridge is going away.
    Stop,
}

/// Hands the consumer's messages over until it fails or the connection is re-established.
async fn follow(
    sh: &BridgeState,
    cur: &mut Cursor,
    msgs: &mut Ordered,
    reconnected: &mut watch::Receiver<u64>,
) -> Follow {
    loop {
        tokio::select! {
            m = msgs.next() => match m {
                Some(Ok(m)) => handle(sh, cur, &m),
                Some(Err(e)) => {
                    tracing::debug!("stream consumer error, resuming after {}: {e}", cur.last_seen);
                    return Follow::Resubscribe;
                }
                None => return Follow::Resubscribe,
            },
            changed = reconnected.changed() => {
                if changed.is_err() {
                    return Follow::Stop;
                }
                tracing::debug!("reconnected: resuming stream after {}", cur.last_seen);
                return Follow::Resubscribe;
            }
        }
    }
}

/// One consumed message: decoded and handed to the sink (or counted as skipped), then made
/// visible to the publishes waiting for it.
fn handle(sh: &BridgeState, cur: &mut Cursor, m: &Message) {
    let Ok(info) = m.info() else { return };
    let (sseq, pending) = (info.stream_sequence, info.pending);
    if cur.take(sseq) {
        match sh.decode(&m.subject, m.headers.as_ref(), &m.payload, sseq) {
            Some(r) => {
                let last = View {
                    seq: r.seq,
                    stream_seq: sseq,
                    ts: r.ts,
                };
                sh.views.observe(&r.subject, last);
                sh.status.consumed.fetch_add(1, Ordering::Relaxed);
                sh.sink.replicated(r);
            }
            None => {
                sh.status.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        // After the hand-off to the sink: a publish waiting for this seq may now be answered.
        sh.status.last_stream_seq.store(sseq, Ordering::Release);
        sh.consumed.notify_waiters();
    }
    if cur.caught_up(pending) {
        sh.status.caught_up.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_stream_at_start_is_caught_up_at_once_and_resumes_after_its_last_seq() {
        let mut cur = Cursor::new();
        assert!(cur.created(0, 42));
        assert!(!cur.initial);
        assert_eq!(cur.last_seen, 42, "the next consumer starts at 43");
        assert!(!cur.created(0, 99), "only the initial pass ends");
        assert_eq!(cur.last_seen, 42);
    }

    #[test]
    fn a_stream_with_messages_at_start_is_caught_up_after_the_last_pending_one() {
        let mut cur = Cursor::new();
        assert!(!cur.created(3, 40));
        assert!(cur.take(7));
        assert!(!cur.caught_up(2));
        assert!(cur.take(20));
        assert!(!cur.caught_up(1));
        assert!(cur.take(40));
        assert!(cur.caught_up(0));
        assert!(!cur.caught_up(0), "once");
        assert_eq!(cur.last_seen, 40);
    }

    #[test]
    fn a_replay_after_resubscribing_is_dropped() {
        let mut cur = Cursor::new();
        cur.created(0, 0);
        assert!(cur.take(1));
        assert!(cur.take(2));
        assert!(!cur.take(2));
        assert!(!cur.take(1));
        assert!(cur.take(3));
        assert_eq!(cur.last_seen, 3);
    }

    #[test]
    fn a_gap_left_by_retention_is_passed_over() {
        let mut cur = Cursor::new();
        cur.created(0, 5);
        assert!(cur.take(9));
        assert_eq!(cur.last_seen, 9);
    }

    #[test]
    fn resubscribing_backs_off_up_to_the_max() {
        assert_eq!(resubscribe_pause(1), Duration::from_millis(100));
        assert_eq!(resubscribe_pause(2), Duration::from_millis(200));
        assert_eq!(resubscribe_pause(4), Duration::from_millis(800));
        assert_eq!(resubscribe_pause(5), RESUBSCRIBE_BACKOFF_MAX);
        assert_eq!(resubscribe_pause(1000), RESUBSCRIBE_BACKOFF_MAX);
    }
}
