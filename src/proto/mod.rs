//! The client protocol (v1): `bytes -> ClientOp`, and the wire vocabulary shared by every
//! transport (error codes, publish validation, control replies).
//!
//! Pure: no sockets, no core state; called on the core thread that owns the connection.
//!
//! - this file: [`ErrorCode`], [`ClientOp`] and [`parse_op`] (one WebSocket text frame);
//! - [`publish`]: the one validation of a publish (WebSocket `pub` and `POST /publish`) and its
//!   outcome ([`PubAck`], [`PubError`], and as the client sees it [`Ack`], [`Refused`]);
//! - [`batch`]: the messages of a `pubs` op or of an array body, each validated on its own;
//! - [`reply`]: encoders of the control replies (`hello`, `ok`, `err`, `pong`, `gap`).
//!
//! `msg` bodies are not built here but once per message in [`crate::frame`].

pub mod batch;
pub mod publish;
pub mod reply;

pub use batch::{Item, MAX_BATCH_MSGS};
pub use publish::{Ack, PubAck, PubError, PubResult, Publish, Refused, MAX_MSG_ID_BYTES};
pub use reply::{err, gap, hello, http_error_body, ok, ok_pub, pong};

use publish::raw_present;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Error codes of the protocol (`err` ops and HTTP error bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed input, bad subject, missing field.
    BadRequest,
    /// Missing, invalid or expired token.
    Unauthorized,
    /// Token valid but the operation is not permitted.
    Forbidden,
    /// Unknown path (HTTP only).
    NotFound,
    /// Wrong method (HTTP only).
    MethodNotAllowed,
    /// Body, frame or header over its limit.
    TooLarge,
    /// Too many requests.
    RateLimited,
    /// A `resume` for a session that is unknown or expired.
    SessionExpired,
    /// Node overloaded or a required backend unavailable.
    Overloaded,
    /// The node is draining for a restart: go to a peer (HTTP 503 with `Retry-After`).
    Draining,
    /// A bug or an internal failure.
    Internal,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Draining => "draining",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::SessionExpired => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Overloaded | ErrorCode::Draining => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// A parsed client operation. Borrows from the frame it was parsed from.
#[derive(Debug)]
pub enum ClientOp<'a> {
    /// `auth`: present or refresh a token.
    Auth {
        /// The JWT.
        token: Cow<'a, str>,
    },
    /// `sub`: subscribe to a pattern.
    Sub {
        /// Subject pattern (validated).
        subject: Cow<'a, str>,
        /// Replay retained messages with seq > since (concrete subjects only).
        since: Option<u64>,
        /// First deliver the latest retained message of every matching subject.
        snapshot: bool,
        /// Conflate per subject instead of disconnecting when behind.
        conflate: bool,
    },
    /// `unsub`: drop a subscription.
    Unsub {
        /// The pattern given to `sub`.
        subject: Cow<'a, str>,
    },
    /// `pub`: publish `data` on a concrete subject.
    Pub(Publish<'a>),
    /// `pubs`: publish a batch, each message validated on its own (in `msgs` order).
    Pubs(Vec<Item<'a>>),
    /// `ping`.
    Ping,
    /// `resume`: restore a disconnected session.
    Resume {
        /// Session id from `hello`.
        session: Cow<'a, str>,
        /// Number of `msg` ops received on that session.
        received: u64,
    },
}

/// A parsed operation and its request id (raw JSON, echoed verbatim; `None` means `null`).
#[derive(Debug)]
pub struct Request<'a> {
    /// The client's `id`, raw.
    pub id: Option<&'a RawValue>,
    /// The operation.
    pub op: ClientOp<'a>,
}

/// Why an operation was refused, with the id to answer to (when it could be read).
#[derive(Debug)]
pub struct OpError<'a> {
    /// The client's `id`, if the frame was a JSON object with one.
    pub id: Option<&'a RawValue>,
    /// Error code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: Cow<'static, str>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "raw_present")]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    msg_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    msgs: Option<batch::RawItems<'a>>,
    since: Option<u64>,
    snapshot: Option<bool>,
    conflate: Option<bool>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session: Option<Cow<'a, str>>,
    received: Option<u64>,
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

fn bad<'a>(id: Option<&'a RawValue>, message: impl Into<Cow<'static, str>>) -> OpError<'a> {
    OpError {
        id,
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

/// Parses one client text frame into a [`Request`].
pub fn parse_op(text: &[u8]) -> Result<Request<'_>, OpError<'_>> {
    let w: Wire<'_> = match serde_json::from_slice(text) {
        Ok(w) => w,
        Err(e) => {
            // Keep the id if the frame is at least an object with a readable `id`.
            let id = serde_json::from_slice::<IdOnly<'_>>(text)
                .ok()
                .and_then(|o| o.id);
            let msg = if e.is_syntax() || e.is_eof() {
                format!("malformed JSON: {e}")
            } else {
                format!("invalid field: {e}")
            };
            return Err(bad(id, msg));
        }
    };
    let id = w.id.filter(|r| r.get() != "null");
    let op = w.op.clone().ok_or_else(|| bad(id, "missing field 'op'"))?;
    Ok(Request {
        id,
        op: w.into_op(&op, id)?,
    })
}

impl<'a> Wire<'a> {
    /// The validated pattern (`sub`, `unsub`) of the frame.
    fn pattern(&self, id: Option<&'a RawValue>) -> Result<Cow<'a, str>, OpError<'a>> {
        let s = self
            .subject
            .clone()
            .ok_or_else(|| bad(id, "missing field 'subject'"))?;
        crate::subject::validate_pattern(&s).map_err(|e| bad(id, e.to_string()))?;
        Ok(s)
    }

    fn into_op(self, op: &str, id: Option<&'a RawValue>) -> Result<ClientOp<'a>, OpError<'a>> {
        Ok(match op {
            "sub" => {
                let s = self.pattern(id)?;
                if self.since.is_some() && !crate::subject::is_literal(&s) {
                    return Err(bad(id, "'since' needs a concrete subject"));
                }
                ClientOp::Sub {
                    subject: s,
                    since: self.since,
                    snapshot: self.snapshot.unwrap_or(false),
                    conflate: self.conflate.unwrap_or(false),
                }
            }
            "unsub" => ClientOp::Unsub {
                subject: self.pattern(id)?,
            },
            "pub" => ClientOp::Pub(
                Publish::validate(self.subject, self.data, self.msg_id).map_err(|m| bad(id, m))?,
            ),
            "pubs" => {
                let msgs = self.msgs.ok_or_else(|| bad(id, "missing field 'msgs'"))?;
                ClientOp::Pubs(batch::parse_items(msgs).map_err(|m| bad(id, m))?)
            }
            "ping" => ClientOp::Ping,
            "auth" => ClientOp::Auth {
                token: self.token.ok_or_else(|| bad(id, "missing field 'token'"))?,
            },
            "resume" => ClientOp::Resume {
                session: self
                    .session
                    .ok_or_else(|| bad(id, "missing field 'session'"))?,
                received: self
                    .received
                    .ok_or_else(|| bad(id, "missing field 'received'"))?,
            },
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(bad(id, format!("unknown op '{shown}'")));
            }
        })
    }
}

#[cfg(test)]
impl PartialEq for ClientOp<'_> {
    /// Raw JSON values compare by their text; enough for tests.
    fn eq(&self, other: &Self) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(s: &str) -> ClientOp<'_> {
        parse_op(s.as_bytes()).unwrap().op
    }

    fn err_of(s: &str) -> (Option<String>, ErrorCode, String) {
        let e = parse_op(s.as_bytes()).unwrap_err();
        (
            e.id.map(|r| r.get().to_string()),
            e.code,
            e.message.into_owned(),
        )
    }

    #[test]
    fn parses_every_op() {
        assert_eq!(
            op(r#"{"op":"sub","id":1,"subject":"prices.*","snapshot":true}"#),
            ClientOp::Sub {
                subject: "prices.*".into(),
                since: None,
                snapshot: true,
                conflate: false
            }
        );
        assert_eq!(
            op(r#"{"op":"sub","id":1,"subject":"a.b","since":5,"conflate":true}"#),
            ClientOp::Sub {
                subject: "a.b".into(),
                since: Some(5),
                snapshot: false,
                conflate: true
            }
        );
        assert_eq!(
            op(r#"{"op":"unsub","id":2,"subject":"a.>"}"#),
            ClientOp::Unsub {
                subject: "a.>".into()
            }
        );
        match op(r#"{"op":"pub","id":"x","subject":"a.b","data":{"p":[1,2]},"msg_id":"m1"}"#) {
            ClientOp::Pub(Publish {
                subject,
                data,
                msg_id,
            }) => {
                assert_eq!(
                    (&*subject, data.get(), msg_id.as_deref()),
                    ("a.b", r#"{"p":[1,2]}"#, Some("m1"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(op(r#"{"op":"ping","id":3}"#), ClientOp::Ping);
        assert_eq!(
            op(r#"{"op":"auth","id":3,"token":"t"}"#),
            ClientOp::Auth { token: "t".into() }
        );
        assert_eq!(
            op(r#"{"op":"resume","id":3,"session":"s","received":9}"#),
            ClientOp::Resume {
                session: "s".into(),
                received: 9
            }
        );
    }

    #[test]
    fn pubs_gives_each_message_or_its_own_error_in_order() {
        let ops = r#"{"op":"pubs","id":4,"msgs":[{"subject":"a","data":1},{"subject":"a.>","data":2},
            {"subject":"b","data":[3],"msg_id":"m"}]}"#;
        let ClientOp::Pubs(items) = op(ops) else {
            panic!("not a pubs op")
        };
        let shown: Vec<_> = items
            .iter()
            .map(|i| i.as_ref().map(|p| (&*p.subject, p.data.get())))
            .collect();
        assert_eq!(shown[0], Ok(("a", "1")));
        assert!(shown[1].as_ref().unwrap_err().contains("wildcard"));
        assert_eq!(shown[2], Ok(("b", "[3]")));
    }

    #[test]
    fn pubs_without_messages_is_a_bad_request_with_its_id() {
        for frame in [
            r#"{"op":"pubs","id":5}"#,
            r#"{"op":"pubs","id":5,"msgs":[]}"#,
            r#"{"op":"pubs","id":5,"msgs":{"subject":"a","data":1}}"#,
        ] {
            let (id, code, _) = err_of(frame);
            assert_eq!(
                (id.as_deref(), code),
                (Some("5"), ErrorCode::BadRequest),
                "{frame}"
            );
        }
        assert!(err_of(r#"{"op":"pubs","id":5}"#).2.contains("'msgs'"));
    }

    #[test]
    fn pubs_over_the_batch_limit_is_refused_whole() {
        let msgs = vec![r#"{"subject":"a","data":1}"#; MAX_BATCH_MSGS + 1].join(",");
        let (id, code, message) = err_of(&format!(r#"{{"op":"pubs","id":6,"msgs":[{msgs}]}}"#));
        assert_eq!((id.as_deref(), code), (Some("6"), ErrorCode::BadRequest));
        assert!(message.contains("at most 1000"), "{message}");
    }

    #[test]
    fn null_data_is_data() {
        match op(r#"{"op":"pub","subject":"a","data":null}"#) {
            ClientOp::Pub(Publish { data, .. }) => assert_eq!(data.get(), "null"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_is_bad_request_with_the_id_when_readable() {
        assert_eq!(err_of("{nope").1, ErrorCode::BadRequest);
        assert_eq!(err_of("{nope").0, None);
        assert_eq!(
            err_of(r#"{"op":"sub","id":7,"subject":"a..b"}"#)
                .0
                .as_deref(),
            Some("7")
        );
        assert_eq!(
            err_of(r#"{"op":"sub","id":7,"since":"x","subject":"a"}"#)
                .0
                .as_deref(),
            Some("7")
        );
        assert!(err_of(r#"{"op":"fly","id":1}"#).2.contains("unknown op"));
        assert!(err_of(r#"{"id":1}"#).2.contains("'op'"));
        assert!(err_of(r#"{"op":"pub","id":1,"subject":"a"}"#)
            .2
            .contains("'data'"));
        assert!(err_of(r#"{"op":"pub","id":1,"subject":"a.*","data":1}"#)
            .2
            .contains("wildcard"));
        assert!(err_of(r#"{"op":"sub","id":1,"subject":"a.*","since":1}"#)
            .2
            .contains("since"));
        assert!(err_of("[1,2]").2.contains("invalid"));
        assert!(err_of("").2.contains("malformed"));
    }
}
