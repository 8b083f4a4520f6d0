//! The stream protocol of one publish: the seq guard (`Nats-Expected-Last-Subject-Sequence`
//! from this node's view of the subject), its retries after "wrong last sequence" (refresh the
//! view, pause with jitter, at most [`GUARD_TRIES`]), the answer to a duplicate (the original's
//! seq/ts), read-your-writes (the answer waits until this node's consumer has delivered the
//! message) and the mapping of failures to [`ClusterError`].
//!
//! Owns nothing beyond the task of each publish; it reads and updates the per-subject views in
//! [`BridgeState`]. Runs on the bridge thread, one task per publish, at most one per subject at a
//! time (the main loop's lanes).

use super::state::{BridgeState, View};
use super::PubReq;
use super::{wire, ClusterError, GUARD_BACKOFF_MAX, GUARD_TRIES, REQUEST_TIMEOUT};
use crate::os::{now_us, random_u64};
use crate::proto::PubAck;
use async_nats::header::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::DirectGetErrorKind;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Starts the publish at the head of its subject's lane. `done` gets the subject as soon as
/// the stream has it (or refused it); the sink gets the answer once it is also consumed here.
pub(super) fn spawn(sh: &Arc<BridgeState>, p: PubReq, done: &mpsc::UnboundedSender<Box<str>>) {
    let (sh, done) = (sh.clone(), done.clone());
    tokio::spawn(async move {
        let r = publish_one(&sh, &p).await;
        // The stream has it (or refused it): the subject's next publish may go.
        let _ = done.send(p.subject.clone());
        if let Ok((_, stream_seq)) = &r {
            // Read your writes: answer once this node's consumer has handed the message to
            // its owner core, so a `/history` or `since` right after the ack sees it. Only the
            // answer waits, not the subject's lane.
            wait_consumed(&sh, *stream_seq).await;
        }
        sh.sink
            .published(&p.subject, p.from, p.token, r.map(|(ack, _)| ack));
    });
}

/// One publish, with guard retries; the answer and the message's stream seq.
async fn publish_one(sh: &BridgeState, p: &PubReq) -> Result<(PubAck, u64), ClusterError> {
    admit(p, sh.client.server_info().max_payload)?;
    let full = sh.full_subject(&p.subject);
    let nats_id = match &p.msg_id {
        Some(id) => wire::scoped_msg_id(&p.subject, id),
        None => sh.ids.next(),
    };
    for attempt in 0..GUARD_TRIES {
        if !sh.connected() {
            return Err(ClusterError::Unavailable);
        }
        let view = sh.views.get(&p.subject);
        let seq = view.seq + 1;
        let ts = now_us().max(view.ts);
        let headers = wire::publish_headers(seq, ts, view.stream_seq, &nats_id);
        match send(sh, &full, headers, p.data.clone()).await {
            Ok(a) if a.duplicate => {
                sh.status.duplicates.fetch_add(1, Ordering::Relaxed);
                return original(sh, a.sequence).await.map(|ack| (ack, a.sequence));
            }
            Ok(a) => {
                let stored = View {
                    seq,
                    stream_seq: a.sequence,
                    ts,
                };
                sh.views.observe(&p.subject, stored);
                sh.status.published.fetch_add(1, Ordering::Relaxed);
                let ack = PubAck {
                    seq,
                    ts,
                    duplicate: false,
                };
                return Ok((ack, a.sequence));
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                sh.status.conflicts.fetch_add(1, Ordering::Relaxed);
                refresh(sh, &p.subject, &full).await?;
                // The first retry goes at once: the refresh just told us the subject's last
                // message, and a node that paused here would keep losing to a node publishing
                // a backlog back to back. Later retries pause (jittered) to break ties.
                if attempt > 0 {
                    tokio::time::sleep(guard_pause(attempt, random_u64())).await;
                }
            }
            Err(e) => return Err(classify(&e)),
        }
    }
    Err(ClusterError::Conflict)
}

/// Refuses what the stream would refuse anyway: an invalid subject, or a message over the
/// server's limit, which covers headers and payload (a client exceeding it is disconnected).
fn admit(p: &PubReq, max_payload: usize) -> Result<(), ClusterError> {
    if crate::subject::validate_subject(&p.subject).is_err() {
        return Err(ClusterError::Rejected);
    }
    if p.data.len() + wire::header_bytes(&p.subject, p.msg_id.as_deref()) > max_payload {
        return Err(ClusterError::Rejected);
    }
    Ok(())
}

/// One attempt: publish and wait for the ack (bounded by the context's ack timeout).
async fn send(
    sh: &BridgeState,
    full: &str,
    headers: HeaderMap,
    data: Bytes,
) -> Result<PublishAck, PublishError> {
    match sh
        .js
        .publish_with_headers(full.to_string(), headers, data)
        .await
    {
        Ok(fut) => fut.await,
        Err(e) => Err(e),
    }
}

/// The pause before guard retry `attempt` (1 and up): `random` spread over 1 µs ..= a cap that
/// grows 2, 4 .. ms up to [`GUARD_BACKOFF_MAX`].
fn guard_pause(attempt: u32, random: u64) -> Duration {
    let cap = (1u64 << attempt.min(5)).min(GUARD_BACKOFF_MAX.as_millis() as u64);
    Duration::from_micros(random % (cap * 1000) + 1)
}

/// Waits (bounded by [`REQUEST_TIMEOUT`]) until the stream consumer has delivered stream seq
/// `seq`. Past the bound the publish is still answered as stored: it is, and this node will
/// deliver it when its consumer catches up.
async fn wait_consumed(sh: &BridgeState, seq: u64) {
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        // Created before the check: `notify_waiters` reaches a `Notified` from its creation.
        let notified = sh.consumed.notified();
        if sh.status.last_stream_seq.load(Ordering::Acquire) >= seq {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}

/// Maps a publish failure: no answer or no stream is `Unavailable`; a JetStream API error is
/// `Rejected`.
fn classify(e: &PublishError) -> ClusterError {
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => ClusterError::Unavailable,
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            ClusterError::Rejected
        }
        PublishErrorKind::Other => {
            let api = std::error::Error::source(e)
                .is_some_and(|s| s.downcast_ref::<async_nats::jetstream::Error>().is_some());
            if api {
                ClusterError::Rejected
            } else {
                ClusterError::Unavailable
            }
        }
    }
}

/// Re-reads the subject's last message after the guard refused (direct get last-by-subject).
async fn refresh(sh: &BridgeState, subject: &str, full: &str) -> Result<(), ClusterError> {
    match sh.stream.direct_get_last_for_subject(full).await {
        Ok(m) => {
            let last = match sh.decode(&m.subject, Some(&m.headers), &m.payload, m.sequence) {
                Some(r) => View {
                    seq: r.seq,
                    stream_seq: r.stream_seq,
                    ts: r.ts,
                },
                // A foreign message on our subject: expect it, keep our seq.
                None => View {
                    stream_seq: m.sequence,
                    ..sh.views.get(subject)
                },
            };
            sh.views.observe(subject, last);
            Ok(())
        }
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
            sh.views.forget(subject);
            Ok(())
        }
        Err(e) => {
            tracing::debug!("refresh {full}: {e}");
            Err(ClusterError::Unavailable)
        }
    }
}

/// The original of a duplicate publish: its seq/ts, `duplicate: true`. When the stream no longer
/// holds it (per-subject retention dropped it inside the dedup window) seq and ts are 0.
async fn original(sh: &BridgeState, stream_seq: u64) -> Result<PubAck, ClusterError> {
    let gone = PubAck {
        seq: 0,
        ts: 0,
        duplicate: true,
    };
    match sh.stream.direct_get(stream_seq).await {
        Ok(m) => Ok(
            match sh.decode(&m.subject, Some(&m.headers), &m.payload, m.sequence) {
                Some(r) => PubAck {
                    seq: r.seq,
                    ts: r.ts,
                    duplicate: true,
                },
                None => gone,
            },
        ),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(gone),
        Err(e) => {
            tracing::debug!("original {stream_seq}: {e}");
            Err(ClusterError::Unavailable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(subject: &str, data: &[u8], msg_id: Option<&str>) -> PubReq {
        PubReq {
            subject: subject.into(),
            data: Bytes::copy_from_slice(data),
            msg_id: msg_id.map(Into::into),
            from: 0,
            token: 0,
        }
    }

    fn api_error(err_code: u64) -> async_nats::jetstream::Error {
        let json = format!(r#"{{"code":400,"err_code":{err_code},"description":"refused"}}"#);
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn an_invalid_subject_is_rejected_before_it_reaches_nats() {
        for subject in ["", "a.*", "a.>", "a..b"] {
            let p = req(subject, b"1", None);
            assert_eq!(
                admit(&p, 1 << 20),
                Err(ClusterError::Rejected),
                "{subject:?}"
            );
        }
        assert_eq!(admit(&req("a.b", b"1", None), 1 << 20), Ok(()));
    }

    #[test]
    fn a_message_over_the_server_limit_with_its_headers_is_rejected() {
        let p = req("ab", &[b'1'; 100], Some("id"));
        let exact = 100 + wire::header_bytes("ab", Some("id"));
        assert_eq!(admit(&p, exact), Ok(()));
        assert_eq!(admit(&p, exact - 1), Err(ClusterError::Rejected));
    }

    #[test]
    fn no_answer_is_unavailable_and_a_refusal_is_rejected() {
        let unavailable = [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::MaxAckPending,
        ];
        for kind in unavailable {
            let e = PublishError::new(kind);
            assert_eq!(classify(&e), ClusterError::Unavailable, "{kind:?}");
        }
        let e = PublishError::new(PublishErrorKind::WrongLastMessageId);
        assert_eq!(classify(&e), ClusterError::Rejected);
    }

    #[test]
    fn other_failures_are_rejected_only_when_jetstream_answered() {
        let refused = PublishError::with_source(PublishErrorKind::Other, api_error(10054));
        assert_eq!(classify(&refused), ClusterError::Rejected);
        let lost = PublishError::with_source(
            PublishErrorKind::Other,
            std::io::Error::other("connection reset"),
        );
        assert_eq!(classify(&lost), ClusterError::Unavailable);
        let bare = PublishError::new(PublishErrorKind::Other);
        assert_eq!(classify(&bare), ClusterError::Unavailable);
    }

    #[test]
    fn guard_pauses_are_jittered_and_never_exceed_the_backoff_max() {
        let max = GUARD_BACKOFF_MAX;
        for attempt in 1..GUARD_TRIES {
            for random in [0, 1, 999, 1_999, 3_999, u64::MAX] {
                let pause = guard_pause(attempt, random);
                assert!(pause >= Duration::from_micros(1), "{attempt} {random}");
                assert!(pause <= max, "{attempt} {random}: {pause:?}");
            }
        }
        assert_eq!(
            guard_pause(1, 1_999),
            Duration::from_millis(2),
            "cap of the first retry"
        );
        assert_eq!(
            guard_pause(2, 3_999),
            Duration::from_millis(4),
            "then it doubles"
        );
        assert_eq!(guard_pause(9, 3_999), max, "up to the max");
    }
}
