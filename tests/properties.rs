//! Property tests: arbitrary bytes never panic any parser and always end in a value or a clear
//! error; valid input decodes the same however it is split.

use proptest::prelude::*;
use ringcast::frame::Frame;
use ringcast::http::{parse_request, Limits};
use ringcast::proto::{parse_op, ErrorCode};
use ringcast::subject::{covers, matches, validate_pattern, validate_subject};
use ringcast::ws::{client_frame, WsDecoder, WsEvent};

const LIMITS: Limits = Limits {
    max_header_bytes: 4096,
    max_body_bytes: 4096,
};

fn token() -> impl Strategy<Value = String> {
    prop_oneof![Just("*".to_string()), Just(">".to_string()), "[a-c]{1,2}"]
}

fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..5).prop_map(|t| t.join("."))
}

fn subject() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-c]{1,2}", 1..5).prop_map(|t| t.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn subject_validation_never_panics(s in ".{0,300}") {
        let _ = validate_subject(&s);
        let _ = validate_pattern(&s);
    }

    #[test]
    fn a_valid_subject_has_no_wildcards_and_matches_itself(s in subject()) {
        prop_assert!(validate_subject(&s).is_ok());
        prop_assert!(matches(&s, &s));
        prop_assert!(covers(&s, &s));
    }

    #[test]
    fn coverage_implies_matching(outer in pattern(), inner in pattern(), s in subject()) {
        prop_assume!(validate_pattern(&outer).is_ok() && validate_pattern(&inner).is_ok());
        if covers(&outer, &inner) && matches(&inner, &s) {
            prop_assert!(matches(&outer, &s), "{outer} covers {inner}, which matches {s}");
        }
    }

    #[test]
    fn client_ops_never_panic_and_errors_are_bad_request(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_op(&bytes) {
            prop_assert_eq!(e.code, ErrorCode::BadRequest);
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn json_shaped_ops_never_panic(op in "(sub|pub|unsub|ping|auth|resume|x)", subject in ".{0,20}", extra in "[a-z0-9\"{}:,\\[\\]]{0,40}") {
        let text = format!(r#"{{"op":"{op}","id":1,"subject":{},"data":{extra},"since":{extra}}}"#, serde_json::to_string(&subject).unwrap());
        let _ = parse_op(text.as_bytes());
    }

    #[test]
    fn http_requests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_request(&bytes, LIMITS);
    }

    #[test]
    fn a_request_parses_the_same_however_it_is_split(split in 0usize..120, body in "[a-z]{0,40}") {
        let wire = format!("POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let split = split.min(wire.len());
        let partial = parse_request(&wire.as_bytes()[..split], LIMITS).unwrap();
        if split < wire.len() {
            prop_assert!(partial.is_none());
        }
        let (req, used) = parse_request(wire.as_bytes(), LIMITS).unwrap().unwrap();
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(req.body, body.as_bytes());
    }

    #[test]
    fn websocket_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let mut d = WsDecoder::new(256);
        let mut buf = bytes;
        // Ends in "need more input" or a protocol error; every step consumes bytes.
        while let Ok(Some((_, n))) = d.decode(&mut buf) {
            prop_assert!(n > 0 && n <= buf.len());
            buf.drain(..n);
        }
    }

    #[test]
    fn frames_decode_the_same_however_the_stream_is_split(
        msgs in prop::collection::vec("[a-zé]{0,200}", 1..6),
        chunk in 1usize..64,
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            // Fragment long messages in two, to cover reassembly.
            let b = m.as_bytes();
            if b.len() > 10 {
                let cut = b.len() / 2;
                let cut = (0..=cut).rev().find(|i| m.is_char_boundary(*i)).unwrap();
                wire.extend(client_frame(0x1, false, &b[..cut], [1, 2, 3, 4]));
                wire.extend(client_frame(0x0, true, &b[cut..], [5, 6, 7, 8]));
            } else {
                wire.extend(client_frame(0x1, true, b, [9, 9, 9, 9]));
            }
        }
        let mut d = WsDecoder::new(1 << 16);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for c in wire.chunks(chunk) {
            buf.extend_from_slice(c);
            while let Some((ev, n)) = d.decode(&mut buf).unwrap() {
                if let Some(WsEvent::Text(p)) = &ev {
                    got.push(String::from_utf8(p.bytes(&buf).to_vec()).unwrap());
                }
                buf.drain(..n);
            }
        }
        prop_assert_eq!(got, msgs);
    }

    // The durable store and recovery read frames back from disk: damaged bytes must give an
    // error or a frame whose every accessor stays in bounds, never a panic.
    #[test]
    fn stored_frames_round_trip(
        s in subject(),
        seq in 1u64..u64::MAX,
        ts in any::<u64>(),
        text in "[a-z0-9 ]{0,300}",
        msg_id in proptest::option::of("[a-zA-Z0-9-]{1,40}"),
    ) {
        let data = serde_json::to_vec(&text).unwrap();
        let f = Frame::encode(&s, seq, ts, &data, msg_id.as_deref());
        let g = Frame::from_stored(f.stored_bytes()).unwrap();
        prop_assert_eq!((g.subject(), g.seq(), g.ts(), g.data()), (s.as_str(), seq, ts, data.as_slice()));
        prop_assert_eq!(g.ws_bytes(), f.ws_bytes());
        prop_assert_eq!(g.envelope().msg_id.as_deref(), msg_id.as_deref());
    }

    #[test]
    fn damaged_stored_frames_are_refused_or_stay_in_bounds(
        s in subject(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let f = Frame::encode(&s, 7, 8, br#"{"x":[1,2,3]}"#, Some("id"));
        let mut bytes = f.stored_bytes().to_vec();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= b | 1;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Ok(g) = Frame::from_stored(&bytes) {
            let _ = (g.subject().len(), g.data().len(), g.json().len(), g.ws_bytes().len());
        }
    }

    #[test]
    fn arbitrary_bytes_are_never_a_panic_as_a_stored_frame(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(g) = Frame::from_stored(&bytes) {
            let _ = (g.subject().len(), g.data().len(), g.json().len());
        }
    }
}
