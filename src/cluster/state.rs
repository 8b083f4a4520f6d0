//! [`BridgeState`]: what the bridge thread's tasks share — the NATS client, JetStream context
//! and stream, the sink and status, the per-subject [`Views`] feeding the seq guard, the
//! [`MsgIds`] of publishes without a client `msg_id`, and the wake-up of publishes waiting for
//! the consumer.
//!
//! Touched only on the bridge thread: every task (main loop, consumer, publishes, fetches) runs
//! on its one current-thread runtime, behind an `Arc`.

use super::{wire, ClusterSink, ClusterStatus, Replicated};
use async_nats::connection::State;
use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, stream};
use hashbrown::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What the bridge knows about a subject's last message (from consumed messages and own acks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct View {
    pub(super) seq: u64,
    pub(super) stream_seq: u64,
    pub(super) ts: u64,
}

/// Per-subject view feeding the guard: one entry per subject the stream has held while this
/// bridge ran (the stream's subject count is the bound). A std Mutex, not an async one: it is
/// never held across an `.await`, and every task runs on the one bridge thread, so it never
/// contends.
#[derive(Default)]
pub(super) struct Views(Mutex<HashMap<Box<str>, View>>);

impl Views {
    /// The subject's last message as known; all zero for a subject never seen.
    pub(super) fn get(&self, subject: &str) -> View {
        let views = self.0.lock().unwrap_or_else(|e| e.into_inner());
        views.get(subject).copied().unwrap_or_default()
    }

    /// Records a subject's message if it is newer (by stream seq) than what is known.
    pub(super) fn observe(&self, subject: &str, v: View) {
        let mut views = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match views.get_mut(subject) {
            Some(cur) if cur.stream_seq >= v.stream_seq => {}
            Some(cur) => *cur = v,
            None => {
                views.insert(subject.into(), v);
            }
        }
    }

    /// The subject has no message in the stream (purged): the guard must expect 0 again.
    pub(super) fn forget(&self, subject: &str) {
        let mut views = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cur) = views.get_mut(subject) {
            cur.stream_seq = 0;
            cur.seq = 0;
        }
    }
}

/// Generated `Nats-Msg-Id`s, `rc-<node random>-<counter>`: unique per node and across nodes.
pub(super) struct MsgIds {
    node: u64,
    next: AtomicU64,
}

impl MsgIds {
    pub(super) fn new(node: u64) -> Self {
        MsgIds {
            node,
            next: AtomicU64::new(1),
        }
    }

    pub(super) fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("rc-{:016x}-{n}", self.node)
    }
}

/// State shared by the bridge thread's tasks (all on that one thread).
pub(super) struct BridgeState {
    pub(super) prefix: String,
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
    pub(super) stream: stream::Stream,
    pub(super) sink: Arc<dyn ClusterSink>,
    pub(super) status: Arc<ClusterStatus>,
    pub(super) views: Views,
    pub(super) ids: MsgIds,
    /// Woken whenever the stream consumer has handed messages to the sink.
    pub(super) consumed: Notify,
}

impl BridgeState {
    pub(super) fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    pub(super) fn full_subject(&self, subject: &str) -> String {
        wire::full_subject(&self.prefix, subject)
    }

    /// Decodes a stream message; `None` when it lacks valid ringcast headers or prefix.
    pub(super) fn decode(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        stream_seq: u64,
    ) -> Option<Replicated> {
        wire::decode(&self.prefix, subject, headers, payload, stream_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(seq: u64, stream_seq: u64, ts: u64) -> View {
        View {
            seq,
            stream_seq,
            ts,
        }
    }

    #[test]
    fn a_subject_never_seen_is_expected_empty() {
        assert_eq!(Views::default().get("a"), View::default());
    }

    #[test]
    fn a_view_only_moves_forward_in_the_stream() {
        let views = Views::default();
        views.observe("a", view(2, 20, 200));
        views.observe("a", view(1, 10, 100));
        assert_eq!(views.get("a"), view(2, 20, 200), "older stream seq ignored");
        views.observe("a", view(2, 20, 999));
        assert_eq!(views.get("a"), view(2, 20, 200), "same stream seq ignored");
        views.observe("a", view(3, 25, 300));
        assert_eq!(views.get("a"), view(3, 25, 300));
    }

    #[test]
    fn subjects_have_their_own_views() {
        let views = Views::default();
        views.observe("a", view(5, 50, 500));
        views.observe("b", view(1, 3, 30));
        assert_eq!(views.get("a"), view(5, 50, 500));
        assert_eq!(views.get("b"), view(1, 3, 30));
    }

    #[test]
    fn a_purged_subject_starts_over_but_its_ts_never_goes_back() {
        let views = Views::default();
        views.observe("a", view(5, 50, 500));
        views.forget("a");
        assert_eq!(views.get("a"), view(0, 0, 500));
        views.observe("a", view(1, 60, 600));
        assert_eq!(views.get("a"), view(1, 60, 600));
        views.forget("never-seen");
        assert_eq!(views.get("never-seen"), View::default());
    }

    #[test]
    fn generated_ids_name_the_node_and_count_from_one() {
        let ids = MsgIds::new(0xab);
        assert_eq!(ids.next(), "rc-00000000000000ab-1");
        assert_eq!(ids.next(), "rc-00000000000000ab-2");
        assert_ne!(MsgIds::new(0xac).next(), MsgIds::new(0xab).next());
    }
}
