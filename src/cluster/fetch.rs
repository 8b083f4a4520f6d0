//! History reads from the stream: the answer to a [`Fetch`] (a subject's messages after a seq,
//! older than a node's ring), from direct gets of the subject's first and last message and,
//! when more than the last one is wanted, an ephemeral ordered consumer filtered on the subject.
//!
//! Owns nothing but each fetch's task and its consumer (deleted afterwards). Runs on the bridge
//! thread, at most [`MAX_FETCHES`](super::MAX_FETCHES) at once (the main loop holds the permits).

use super::state::BridgeState;
use super::{ClusterError, Fetch, Fetched, Replicated, FETCH_TIMEOUT};
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetError, DirectGetErrorKind};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// Starts a fetch (bounded by [`FETCH_TIMEOUT`]); the sink gets the answer with `from` and
/// `token`, after `permit` is released.
pub(super) fn spawn(
    sh: &Arc<BridgeState>,
    permit: OwnedSemaphorePermit,
    what: Fetch,
    from: usize,
    token: u64,
) {
    let sh = sh.clone();
    tokio::spawn(async move {
        let r = tokio::time::timeout(FETCH_TIMEOUT, fetch_since(&sh, &what))
            .await
            .unwrap_or(Err(ClusterError::Unavailable));
        drop(permit);
        sh.sink.fetched(from, token, r);
    });
}

/// How a fetch is answered once the subject's last message is known.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Nothing newer than `since` is wanted or held: first and last seq only.
    Bounds,
    /// Exactly the last message is newer: it is the answer, no consumer needed.
    Last,
    /// Read the subject with a consumer.
    Read,
}

fn plan(since: u64, limit: usize, last_seq: u64) -> Plan {
    if since >= last_seq || limit == 0 {
        Plan::Bounds
    } else if since + 1 == last_seq {
        Plan::Last
    } else {
        Plan::Read
    }
}

async fn fetch_since(sh: &BridgeState, what: &Fetch) -> Result<Fetched, ClusterError> {
    let (subject, since, limit) = (&*what.subject, what.since, what.limit);
    if crate::subject::validate_subject(subject).is_err() {
        return Err(ClusterError::Rejected);
    }
    let full = sh.full_subject(subject);
    let Some(last) = direct(sh, sh.stream.direct_get_last_for_subject(&full).await)? else {
        let last_seq = sh.views.get(subject).seq;
        return Ok(Fetched {
            first_seq: last_seq + 1,
            last_seq,
            messages: Vec::new(),
        });
    };
    let first = direct(sh, sh.stream.direct_get_first_for_subject(&full).await)?
        .map_or(last.seq, |f| f.seq);
    let mut fetched = Fetched {
        first_seq: first,
        last_seq: last.seq,
        messages: Vec::new(),
    };
    match plan(since, limit, last.seq) {
        Plan::Bounds => {}
        Plan::Last => fetched.messages.push(last),
        Plan::Read => {
            // Everything up to `last` (messages published meanwhile are not part of this
            // answer).
            let stop_at = last.stream_seq;
            let out = &mut fetched.messages;
            read_filtered(sh, full, DeliverPolicy::All, stop_at, |r| {
                if r.seq > since && r.stream_seq <= stop_at {
                    out.push(r);
                }
                out.len() < limit
            })
            .await?;
        }
    }
    Ok(fetched)
}

/// Decodes a direct-get answer; `Ok(None)` when there is no such message.
fn direct(
    sh: &BridgeState,
    r: Result<StreamMessage, DirectGetError>,
) -> Result<Option<Replicated>, ClusterError> {
    match r {
        Ok(m) => Ok(sh.decode(&m.subject, Some(&m.headers), &m.payload, m.sequence)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => {
            tracing::debug!("direct get: {e}");
            Err(ClusterError::Unavailable)
        }
    }
}

/// Reads an ephemeral ordered consumer on `filter`, handing each decodable message to `take`,
/// until nothing is pending, a message at or past stream seq `stop_at` was handed over, or
/// `take` answers false. Deletes the consumer afterwards.
async fn read_filtered(
    sh: &BridgeState,
    filter: String,
    deliver_policy: DeliverPolicy,
    stop_at: u64,
    mut take: impl FnMut(Replicated) -> bool,
) -> Result<(), ClusterError> {
    if !sh.connected() {
        return Err(ClusterError::Unavailable);
    }
    let consumer = sh
        .stream
        .create_consumer(OrderedConfig {
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            tracing::debug!("fetch consumer: {e}");
            ClusterError::Unavailable
        })?;
    let name = consumer.cached_info().name.clone();
    let pending = consumer.cached_info().num_pending;
    let read = async {
        if pending == 0 {
            return Ok(());
        }
        let mut msgs = consumer
            .messages()
            .await
            .map_err(|_| ClusterError::Unavailable)?;
        loop {
            let Some(Ok(m)) = msgs.next().await else {
                return Err(ClusterError::Unavailable);
            };
            let Ok(info) = m.info() else {
                return Err(ClusterError::Unavailable);
            };
            let (sseq, pending) = (info.stream_sequence, info.pending);
            if let Some(r) = sh.decode(&m.subject, m.headers.as_ref(), &m.payload, sseq) {
                if !take(r) {
                    return Ok(());
                }
            }
            if pending == 0 || sseq >= stop_at {
                return Ok(());
            }
        }
    };
    let r = read.await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sh.stream.delete_consumer(&name)).await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_newer_than_since_is_answered_with_the_bounds_only() {
        assert_eq!(plan(10, 100, 10), Plan::Bounds);
        assert_eq!(plan(12, 100, 10), Plan::Bounds, "since past the last seq");
    }

    #[test]
    fn a_limit_of_zero_is_answered_with_the_bounds_only() {
        assert_eq!(plan(0, 0, 10), Plan::Bounds);
    }

    #[test]
    fn only_the_last_message_newer_needs_no_consumer() {
        assert_eq!(plan(9, 100, 10), Plan::Last);
        assert_eq!(plan(9, 1, 10), Plan::Last);
    }

    #[test]
    fn more_than_the_last_message_is_read_from_the_stream() {
        assert_eq!(plan(8, 100, 10), Plan::Read);
        assert_eq!(plan(0, 1, 10), Plan::Read);
    }
}
