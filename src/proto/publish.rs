//! A publish: the one validation shared by WebSocket `pub` ops, `POST /publish` bodies and the
//! messages of a batch, the outcome the subject's sequencer gives back (`PubAck` or
//! `PubError`), and what the client is told ([`Ack`]: the ack, or a [`Refused`]).
//!
//! Pure and leaf-level: the transport validates with it, the owner core and the cluster bridge
//! answer with its outcome types; any thread may use it.

use super::ErrorCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Longest accepted `msg_id`, in bytes: ids are kept in the dedup window, so they are bounded.
pub const MAX_MSG_ID_BYTES: usize = 256;

/// A validated publish. Borrows from the bytes it was parsed from.
#[derive(Debug)]
pub struct Publish<'a> {
    /// Concrete subject (no wildcards).
    pub subject: Cow<'a, str>,
    /// Raw JSON, published verbatim.
    pub data: &'a RawValue,
    /// Publisher's de-duplication id, 1..=[`MAX_MSG_ID_BYTES`] bytes.
    pub msg_id: Option<Cow<'a, str>>,
}

impl<'a> Publish<'a> {
    /// Checks the fields of a publish, in this order: `subject` present and concrete, `data`
    /// present (`null` counts), `msg_id` within bounds. The error is the message for the
    /// client's `bad_request`.
    pub fn validate(
        subject: Option<Cow<'a, str>>,
        data: Option<&'a RawValue>,
        msg_id: Option<Cow<'a, str>>,
    ) -> Result<Publish<'a>, Cow<'static, str>> {
        let subject = subject.ok_or("missing field 'subject'")?;
        crate::subject::validate_subject(&subject).map_err(|e| e.to_string())?;
        let data = data.ok_or("missing field 'data'")?;
        if let Some(m) = &msg_id {
            if m.is_empty() || m.len() > MAX_MSG_ID_BYTES {
                return Err("'msg_id' must be 1..=256 bytes".into());
            }
        }
        Ok(Publish {
            subject,
            data,
            msg_id,
        })
    }

    /// The raw JSON bytes of `data`.
    pub fn data_bytes(&self) -> &'a [u8] {
        self.data.get().as_bytes()
    }
}

/// Deserializes a JSON value that is present (even `null`) as `Some(raw)`.
pub(crate) fn raw_present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// One publish as a JSON object: a `POST /publish` body, or one message of a batch.
#[derive(Deserialize)]
pub(crate) struct Body<'a> {
    #[serde(borrow)]
    pub(crate) subject: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "raw_present")]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(crate) msg_id: Option<Cow<'a, str>>,
    /// Publish at this time (ms since the Unix epoch) instead of now.
    pub(crate) at: Option<u64>,
}

/// Parses and validates a `POST /publish` body: the publish, and its `at` (ms since the Unix
/// epoch) when it asks to be published later.
pub fn parse_body(body: &[u8]) -> Result<(Publish<'_>, Option<u64>), Cow<'static, str>> {
    let b: Body<'_> =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    Ok((Publish::validate(b.subject, b.data, b.msg_id)?, b.at))
}

/// Result of a publish, as its sequencer (owner core, or the cluster's stream) gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// Assigned (or original, for duplicates) seq.
    pub seq: u64,
    /// Assigned (or original) ts.
    pub ts: u64,
    /// True when `msg_id` was seen before.
    pub duplicate: bool,
}

/// Why a publish was not accepted (the client gets 503 `overloaded` and may retry; with a
/// `msg_id` a retry is never applied twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubError {
    /// Sync durability: the store failed to write the message's group.
    NotDurable,
    /// The durable store is too far behind (slow or stalled disk).
    StoreBehind,
    /// Cluster mode: NATS is unreachable (or did not answer in time).
    ClusterUnavailable,
    /// Cluster mode: other nodes kept winning the race for this subject's next seq.
    ClusterConflict,
    /// Cluster mode: JetStream refused the message.
    ClusterRejected,
    /// The publish would create a subject past this node's `--max-subjects`.
    TooManySubjects,
}

impl PubError {
    /// The message clients see.
    pub fn message(self) -> &'static str {
        match self {
            PubError::NotDurable => "the store could not make the message durable",
            PubError::StoreBehind => "the durable store is behind; retry shortly",
            PubError::ClusterUnavailable => "cluster unavailable (NATS unreachable)",
            PubError::ClusterConflict => "too many concurrent publishers on this subject",
            PubError::ClusterRejected => "rejected by the cluster log",
            PubError::TooManySubjects => "subject limit reached (--max-subjects); no new subjects",
        }
    }
}

/// The outcome of a publish.
pub type PubResult = Result<PubAck, PubError>;

/// Why one publish was refused, as its client is told: the code and message of its `err` (of
/// its entry, in a batch's answer), and for `rate_limited` and `draining` how long until it
/// may be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: Cow<'static, str>,
    /// `rate_limited`: milliseconds until the publish limit has room again; `draining`: the
    /// node's hint for when to retry (on a peer).
    pub retry_after_ms: Option<u64>,
}

impl Refused {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Refused {
        Refused {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Over the connection's publish limit; it has room again in `retry_after_ms`.
    pub fn rate_limited(retry_after_ms: u64) -> Refused {
        Refused {
            code: ErrorCode::RateLimited,
            message: "too many publishes; slow down".into(),
            retry_after_ms: Some(retry_after_ms),
        }
    }

    /// The node is draining: publish to a peer, after `retry_after_ms`.
    pub fn draining(retry_after_ms: u64) -> Refused {
        Refused {
            code: ErrorCode::Draining,
            message: "node draining for a restart; publish to another node".into(),
            retry_after_ms: Some(retry_after_ms),
        }
    }
}

impl From<PubError> for Refused {
    /// The sequencer could not take it now: `overloaded`, retry (with the same `msg_id`).
    fn from(e: PubError) -> Refused {
        Refused::new(ErrorCode::Overloaded, e.message())
    }
}

/// The outcome of one publish as its client sees it: the sequencer's ack, or a refusal (by
/// validation, permission, rate limit, or the sequencer).
pub type Ack = Result<PubAck, Refused>;

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Result<(String, String, Option<String>, Option<u64>), String> {
        parse_body(s.as_bytes())
            .map(|(p, at)| {
                let data = p.data.get().to_string();
                (
                    p.subject.into_owned(),
                    data,
                    p.msg_id.map(Cow::into_owned),
                    at,
                )
            })
            .map_err(Cow::into_owned)
    }

    #[test]
    fn a_body_gives_subject_raw_data_msg_id_and_at() {
        assert_eq!(
            body(r#"{"subject":"a.b","data":{"p":[1, 2]},"msg_id":"m","at":5}"#),
            Ok((
                "a.b".into(),
                r#"{"p":[1, 2]}"#.into(),
                Some("m".into()),
                Some(5)
            ))
        );
        assert_eq!(
            body(r#"{"subject":"a","data":null}"#),
            Ok(("a".into(), "null".into(), None, None))
        );
    }

    #[test]
    fn each_invalid_field_is_named() {
        let e = |s: &str| body(s).unwrap_err();
        assert!(e("{").starts_with("invalid JSON body"));
        assert_eq!(e(r#"{"data":1}"#), "missing field 'subject'");
        assert!(e(r#"{"subject":"a.*","data":1}"#).contains("wildcard"));
        assert_eq!(e(r#"{"subject":"a"}"#), "missing field 'data'");
        assert_eq!(
            e(r#"{"subject":"a","data":1,"msg_id":""}"#),
            "'msg_id' must be 1..=256 bytes"
        );
        let long = format!(
            r#"{{"subject":"a","data":1,"msg_id":"{}"}}"#,
            "x".repeat(257)
        );
        assert_eq!(e(&long), "'msg_id' must be 1..=256 bytes");
    }
}
