//! Batch publishing: the `msgs` of a WebSocket `pubs` op and the array body of
//! `POST /publish`, taken apart one message at a time.
//!
//! A batch is refused as a whole only when it is empty or longer than [`MAX_BATCH_MSGS`];
//! otherwise every message is validated on its own ([`Item`]): one bad message is its own
//! `bad_request` and does not fail its neighbours. Pure: no sockets, no core state; the
//! transport parses with it on the connection's core thread.

use super::publish::{Body, Publish};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// Most messages in one batch (`pubs` or an array body of `POST /publish`). A batch is
/// answered in one reply with one entry per message (at most ~90 bytes each: under 100 KB
/// for a full batch) and all its messages are in flight at once: 1,000 keeps both small and
/// far below the cluster bridge's 8,192 publishes in flight, while a feed of 100,000
/// messages per second needs only 100 batches a second.
pub const MAX_BATCH_MSGS: usize = 1_000;

/// One message of a batch: the validated publish, or why it is a `bad_request`.
pub type Item<'a> = Result<Publish<'a>, Cow<'static, str>>;

/// The raw messages of a batch: at most [`MAX_BATCH_MSGS`] kept (the rest only counted, so
/// an oversized batch costs no memory), and how many there were.
#[derive(Debug, Default)]
pub struct RawItems<'a> {
    items: Vec<&'a RawValue>,
    total: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawItems<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(ItemsVisitor(PhantomData))
    }
}

struct ItemsVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ItemsVisitor<'a> {
    type Value = RawItems<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = RawItems::default();
        while out.items.len() < MAX_BATCH_MSGS {
            match seq.next_element::<&'de RawValue>()? {
                Some(raw) => out.items.push(raw),
                None => break,
            }
        }
        out.total = out.items.len();
        while seq.next_element::<IgnoredAny>()?.is_some() {
            out.total += 1;
        }
        Ok(out)
    }
}

/// Validates the messages of a batch, each on its own; the error (the whole batch refused:
/// empty, or over [`MAX_BATCH_MSGS`]) is the message of its `bad_request`.
pub fn parse_items(raw: RawItems<'_>) -> Result<Vec<Item<'_>>, Cow<'static, str>> {
    if raw.total == 0 {
        return Err("a batch needs at least one message".into());
    }
    if raw.total > MAX_BATCH_MSGS {
        let why = format!(
            "{} messages in one batch; at most {MAX_BATCH_MSGS} (MAX_BATCH_MSGS)",
            raw.total
        );
        return Err(why.into());
    }
    Ok(raw.items.into_iter().map(parse_item).collect())
}

/// One message of a batch, `{"subject","data","msg_id"?}`, validated as a single publish is.
/// A batch is published now: a message with `at` is refused (publish it on its own to
/// schedule it).
fn parse_item(raw: &RawValue) -> Item<'_> {
    let b: Body<'_> =
        serde_json::from_str(raw.get()).map_err(|e| format!("invalid message: {e}"))?;
    if b.at.is_some() {
        return Err("a batch cannot be scheduled: publish a message with 'at' on its own".into());
    }
    Publish::validate(b.subject, b.data, b.msg_id)
}

/// True when a `POST /publish` body is a JSON array (a batch) rather than one object.
pub fn is_array(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[')
}

/// Parses the array body of `POST /publish`; the error is the message of its 400.
pub fn parse_array(body: &[u8]) -> Result<Vec<Item<'_>>, Cow<'static, str>> {
    let raw: RawItems<'_> =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    parse_items(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Subject of each valid message, the error of each invalid one.
    fn items(body: &str) -> Result<Vec<Result<String, String>>, String> {
        parse_array(body.as_bytes())
            .map(|v| {
                v.into_iter()
                    .map(|i| i.map(|p| p.subject.into_owned()).map_err(Cow::into_owned))
                    .collect()
            })
            .map_err(Cow::into_owned)
    }

    #[test]
    fn each_message_of_a_batch_is_validated_on_its_own() {
        let r = items(
            r#"[{"subject":"a","data":1},{"subject":"a.*","data":1},{"data":2},
                {"subject":"b"},7,{"subject":"c","data":null,"msg_id":"m"}]"#,
        )
        .unwrap();
        assert_eq!(r.len(), 6);
        assert_eq!(r[0], Ok("a".into()));
        assert!(r[1].as_ref().unwrap_err().contains("wildcard"));
        assert_eq!(r[2], Err("missing field 'subject'".into()));
        assert_eq!(r[3], Err("missing field 'data'".into()));
        assert!(r[4].as_ref().unwrap_err().starts_with("invalid message"));
        assert_eq!(r[5], Ok("c".into()));
    }

    #[test]
    fn a_message_with_at_is_refused_alone() {
        let r = items(r#"[{"subject":"a","data":1,"at":5},{"subject":"b","data":2}]"#).unwrap();
        assert!(r[0].as_ref().unwrap_err().contains("cannot be scheduled"));
        assert_eq!(r[1], Ok("b".into()));
    }

    #[test]
    fn an_empty_batch_is_refused_whole() {
        assert!(items("[]").unwrap_err().contains("at least one"));
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_whole_naming_the_limit() {
        let ok = vec![r#"{"subject":"a","data":1}"#; MAX_BATCH_MSGS].join(",");
        assert_eq!(items(&format!("[{ok}]")).unwrap().len(), MAX_BATCH_MSGS);
        let e = items(&format!("[{ok},1]")).unwrap_err();
        assert!(
            e.contains("1001 messages") && e.contains("at most 1000"),
            "{e}"
        );
    }

    #[test]
    fn only_a_json_array_is_a_batch() {
        assert!(is_array(b" \r\n[{}]"));
        assert!(!is_array(br#"{"subject":"a","data":[1]}"#));
        assert!(!is_array(b""));
        assert!(items(r#"[{"subject":"a","data":1}"#)
            .unwrap_err()
            .starts_with("invalid JSON body"));
    }
}
