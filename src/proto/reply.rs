//! Encoders of the server's small control replies (`hello`, `ok`, `err`, `pong`, `gap`), of a
//! batch's answer (`ok` with `acks`, and the array of `POST /publish`) and of HTTP error
//! bodies, written straight into a caller's buffer.
//!
//! Pure functions, no state; called on the core thread that owns the connection. `msg` bodies
//! are not built here but once per message in [`crate::frame`].

use super::{Ack, ErrorCode, PubAck, Refused};

fn put_id(out: &mut Vec<u8>, id: Option<&str>) {
    out.extend_from_slice(id.unwrap_or("null").as_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// `{"op":"hello","session":ID,"version":1}`
pub fn hello(out: &mut Vec<u8>, session: &str) {
    out.extend_from_slice(br#"{"op":"hello","session":"#);
    put_str(out, session);
    out.extend_from_slice(br#","version":1}"#);
}

/// `{"op":"ok","id":I}`; `id` is the client's raw JSON id (`None`: `null`).
pub fn ok(out: &mut Vec<u8>, id: Option<&str>) {
    out.extend_from_slice(br#"{"op":"ok","id":"#);
    put_id(out, id);
    out.push(b'}');
}

/// `{"op":"ok","id":I,"seq":N,"ts":T}` (+ `"duplicate":true`)
pub fn ok_pub(out: &mut Vec<u8>, id: Option<&str>, seq: u64, ts: u64, duplicate: bool) {
    out.extend_from_slice(br#"{"op":"ok","id":"#);
    put_id(out, id);
    out.extend_from_slice(br#","seq":"#);
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(br#","ts":"#);
    out.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
    if duplicate {
        out.extend_from_slice(br#","duplicate":true"#);
    }
    out.push(b'}');
}

/// `{"op":"pong","id":I}`
pub fn pong(out: &mut Vec<u8>, id: Option<&str>) {
    out.extend_from_slice(br#"{"op":"pong","id":"#);
    put_id(out, id);
    out.push(b'}');
}

/// `{"op":"err","id":I,"code":C,"message":M}`
pub fn err(out: &mut Vec<u8>, id: Option<&str>, code: ErrorCode, message: &str) {
    out.extend_from_slice(br#"{"op":"err","id":"#);
    put_id(out, id);
    out.push(b',');
    put_error_fields(out, code, message, None);
    out.push(b'}');
}

/// `{"op":"err","id":I,"code":C,"message":M}` (+ `"retry_after_ms":N` when it has one)
pub fn refused(out: &mut Vec<u8>, id: Option<&str>, r: &Refused) {
    out.extend_from_slice(br#"{"op":"err","id":"#);
    put_id(out, id);
    out.push(b',');
    put_refusal_fields(out, r);
    out.push(b'}');
}

/// `"code":C,"message":M` (+ `,"retry_after_ms":N`)
fn put_refusal_fields(out: &mut Vec<u8>, r: &Refused) {
    put_error_fields(out, r.code, &r.message, r.retry_after_ms);
}

fn put_error_fields(out: &mut Vec<u8>, code: ErrorCode, message: &str, retry_ms: Option<u64>) {
    out.extend_from_slice(br#""code":""#);
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(br#"","message":"#);
    put_str(out, message);
    if let Some(ms) = retry_ms {
        out.extend_from_slice(br#","retry_after_ms":"#);
        out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
    }
}

/// `"seq":N,"ts":T` (+ `,"duplicate":true`)
fn put_ack_fields(out: &mut Vec<u8>, ack: &PubAck) {
    out.extend_from_slice(br#""seq":"#);
    out.extend_from_slice(itoa::Buffer::new().format(ack.seq).as_bytes());
    out.extend_from_slice(br#","ts":"#);
    out.extend_from_slice(itoa::Buffer::new().format(ack.ts).as_bytes());
    if ack.duplicate {
        out.extend_from_slice(br#","duplicate":true"#);
    }
}

/// `[{"seq":N,"ts":T} | {"seq":N,"ts":T,"duplicate":true} | {"error":{"code":C,"message":M}}, ..]`:
/// one entry per message of a batch, in its order.
pub fn acks(out: &mut Vec<u8>, acks: &[Ack]) {
    out.push(b'[');
    for (i, a) in acks.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match a {
            Ok(ack) => {
                out.push(b'{');
                put_ack_fields(out, ack);
                out.push(b'}');
            }
            Err(r) => {
                out.extend_from_slice(br#"{"error":{"#);
                put_refusal_fields(out, r);
                out.extend_from_slice(b"}}");
            }
        }
    }
    out.push(b']');
}

/// `{"op":"ok","id":I,"acks":[..]}`: the answer to a `pubs` op (see [`acks`]).
pub fn ok_pubs(out: &mut Vec<u8>, id: Option<&str>, entries: &[Ack]) {
    out.extend_from_slice(br#"{"op":"ok","id":"#);
    put_id(out, id);
    out.extend_from_slice(br#","acks":"#);
    acks(out, entries);
    out.push(b'}');
}

/// `{"op":"gap","subject":S,"from":F,"to":T}`
pub fn gap(out: &mut Vec<u8>, subject: &str, from: u64, to: u64) {
    out.extend_from_slice(br#"{"op":"gap","subject":"#);
    put_str(out, subject);
    out.extend_from_slice(br#","from":"#);
    out.extend_from_slice(itoa::Buffer::new().format(from).as_bytes());
    out.extend_from_slice(br#","to":"#);
    out.extend_from_slice(itoa::Buffer::new().format(to).as_bytes());
    out.push(b'}');
}

/// HTTP error body: `{"error":{"code":C,"message":M}}`
pub fn http_error_body(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + message.len());
    out.extend_from_slice(br#"{"error":{"code":""#);
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(br#"","message":"#);
    put_str(&mut out, message);
    out.extend_from_slice(b"}}");
    out
}

/// HTTP error body of a refused publish: `{"error":{"code":C,"message":M}}` (+
/// `"retry_after_ms":N` inside `error` when it has one).
pub fn http_refused_body(r: &Refused) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + r.message.len());
    out.extend_from_slice(br#"{"error":{"#);
    put_refusal_fields(&mut out, r);
    out.extend_from_slice(b"}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_echoed_raw() {
        let r = crate::proto::parse_op(br#"{"op":"ping","id":"abc"}"#).unwrap();
        let mut out = Vec::new();
        pong(&mut out, r.id.map(|r| r.get()));
        assert_eq!(out, br#"{"op":"pong","id":"abc"}"#);
    }

    #[test]
    fn replies_are_valid_json() {
        let mut out = Vec::new();
        err(&mut out, None, ErrorCode::Forbidden, "no \"way\"");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["code"], "forbidden");
        assert_eq!(v["message"], "no \"way\"");
        out.clear();
        ok_pub(&mut out, None, 5, 6, true);
        assert_eq!(
            out,
            br#"{"op":"ok","id":null,"seq":5,"ts":6,"duplicate":true}"#
        );
        out.clear();
        refused(&mut out, Some("3"), &Refused::rate_limited(200));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["code"].as_str(), v["retry_after_ms"].as_u64()),
            (Some("rate_limited"), Some(200))
        );
        out.clear();
        gap(&mut out, "a", 2, 9);
        assert_eq!(out, br#"{"op":"gap","subject":"a","from":2,"to":9}"#);
    }

    #[test]
    fn a_batch_answer_lists_each_outcome_in_order() {
        let ack = |seq, duplicate| {
            Ok(PubAck {
                seq,
                ts: 7,
                duplicate,
            })
        };
        let entries = [
            ack(1, false),
            Err(Refused::new(ErrorCode::Forbidden, "no")),
            ack(2, true),
            Err(Refused::rate_limited(50)),
        ];
        let mut out = Vec::new();
        ok_pubs(&mut out, Some("9"), &entries);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            concat!(
                r#"{"op":"ok","id":9,"acks":[{"seq":1,"ts":7},"#,
                r#"{"error":{"code":"forbidden","message":"no"}},"#,
                r#"{"seq":2,"ts":7,"duplicate":true},"#,
                r#"{"error":{"code":"rate_limited","message":"too many publishes; slow down","retry_after_ms":50}}]}"#
            )
        );
    }
}
