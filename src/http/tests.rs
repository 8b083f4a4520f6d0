//! Unit tests of the HTTP parser, the route table, the query helpers and response encoding.

use super::*;

#[test]
fn the_route_table_names_every_endpoint() {
    use Method::*;
    let r = |m, p| Route::of(m, p, true);
    assert_eq!(r(Get, "/"), Route::DemoPage);
    assert_eq!(r(Head, "/index.html"), Route::DemoPage);
    assert_eq!(r(Get, "/ringcast.js"), Route::ClientJs);
    assert_eq!(r(Head, "/healthz"), Route::Healthz);
    assert_eq!(r(Get, "/metrics"), Route::Metrics);
    assert_eq!(r(Post, "/publish"), Route::Publish);
    assert_eq!(r(Get, "/ws"), Route::WebSocket);
    assert_eq!(r(Get, "/ws/echo"), Route::Echo);
    assert_eq!(r(Get, "/sse"), Route::Sse);
    assert_eq!(r(Get, "/schedule"), Route::ListSchedules);
    assert_eq!(r(Delete, "/schedule/01a"), Route::CancelSchedule("01a"));
    assert_eq!(
        r(Get, "/history/prices.EURUSD"),
        Route::History("prices.EURUSD")
    );
    assert_eq!(r(Get, "/history/"), Route::History(""));
    assert_eq!(r(Post, "/admin/drain"), Route::AdminDrain);
    assert_eq!(r(Get, "/admin"), Route::AdminPage);
    assert_eq!(r(Head, "/admin/"), Route::AdminPage);
    assert_eq!(r(Get, "/connz"), Route::Connz);
    assert_eq!(r(Get, "/varz"), Route::Varz);
}

#[test]
fn a_known_path_with_another_method_is_not_allowed_and_an_unknown_one_not_found() {
    use Method::*;
    let r = |m, p| Route::of(m, p, true);
    for (m, p) in [
        (Post, "/ws"),
        (Get, "/publish"),
        (Post, "/sse"),
        (Head, "/metrics"),
        (Get, "/schedule/01a"),
        (Delete, "/history/a"),
        (Get, "/admin/drain"),
        (Post, "/connz"),
        (Delete, "/varz"),
        (Other, "/"),
    ] {
        assert!(matches!(r(m, p), Route::MethodNotAllowed(_)), "{m:?} {p}");
    }
    assert_eq!(r(Get, "/nope"), Route::NotFound);
    assert_eq!(r(Get, "/ws/"), Route::NotFound);
    assert_eq!(r(Get, "/publishx"), Route::NotFound);
}

#[test]
fn a_refused_method_names_the_ones_the_path_takes() {
    let Route::MethodNotAllowed(m) = Route::of(Method::Post, "/healthz", false) else {
        panic!("not refused");
    };
    assert_eq!(allow(m), "GET, HEAD");
}

#[test]
fn the_echo_endpoint_exists_only_when_enabled() {
    assert_eq!(Route::of(Method::Get, "/ws/echo", false), Route::NotFound);
    assert_eq!(Route::of(Method::Post, "/ws/echo", false), Route::NotFound);
    assert_eq!(
        Route::of(Method::Post, "/ws/echo", true),
        Route::MethodNotAllowed(&[Method::Get])
    );
}

const L: Limits = Limits {
    max_header_bytes: 8192,
    max_body_bytes: 1024,
};

#[test]
fn parses_a_request_fed_one_byte_at_a_time() {
    let wire = b"POST /publish?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nAuthorization: Bearer t\r\n\r\nhelloGET";
    let mut got = None;
    for end in 1..=wire.len() {
        match parse_request(&wire[..end], L).unwrap() {
            Some(r) => {
                got = Some((r, end));
                break;
            }
            None => continue,
        }
    }
    let ((req, used), end) = got.unwrap();
    assert_eq!(end, wire.len() - 3);
    assert_eq!(used, end);
    assert_eq!(req.method, Method::Post);
    assert_eq!(req.path, "/publish");
    assert_eq!(req.query, "x=1");
    assert_eq!(req.body, b"hello");
    assert_eq!(req.headers.authorization.as_deref(), Some("Bearer t"));
    assert!(!req.headers.close);
}

#[test]
fn refuses_bad_and_oversized_requests() {
    assert_eq!(
        parse_request(b"\x01\x02 / HTTP/1.1\r\n\r\n", L)
            .unwrap_err()
            .status(),
        400
    );
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
    assert_eq!(parse_request(big.as_bytes(), L).unwrap_err().status(), 431);
    let body = b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
    assert_eq!(parse_request(body, L).unwrap_err().status(), 413);
    let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(parse_request(chunked, L).unwrap_err().status(), 400);
    let dup = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(parse_request(dup, L).unwrap_err().status(), 400);
}

/// The status of parsing a POST whose `Content-Length` header is `value` (body "hello").
fn with_content_length(value: &str) -> Result<usize, u16> {
    let wire = format!("POST / HTTP/1.1\r\nContent-Length:{value}\r\n\r\nhello");
    match parse_request(wire.as_bytes(), L) {
        Ok(Some((r, _))) => Ok(r.body.len()),
        Ok(None) => Ok(usize::MAX),
        Err(e) => Err(e.status()),
    }
}

#[test]
fn content_length_is_ascii_digits_with_optional_whitespace_around() {
    for ok in ["5", " 5", "5 ", "\t5\t", "  05  "] {
        assert_eq!(with_content_length(ok), Ok(5), "{ok:?}");
    }
    assert_eq!(with_content_length("0"), Ok(0));
    for bad in [
        "+5", "-5", " +5", "", " ", "\t", "5 5", "5,5", "5, 5", "0x5", "5.0", "5e0", "five",
        "\u{a0}5", "5\u{a0}", "\u{0665}", "\u{ff15}", "1_0",
    ] {
        assert_eq!(with_content_length(bad), Err(400), "{bad:?}");
    }
    // Larger than usize: malformed, not a wrapped or clamped length.
    assert_eq!(with_content_length(" 99999999999999999999999999"), Err(400));
    assert_eq!(
        with_content_length(&format!("{}0", usize::MAX)),
        Err(400),
        "one digit past usize::MAX"
    );
    // Fits in usize but over the body limit: 413, before any body is read.
    assert_eq!(with_content_length(&usize::MAX.to_string()), Err(413));
}

#[test]
fn content_length_and_transfer_encoding_leave_no_ambiguity() {
    let parse = |head: &str| {
        let wire = format!("POST / HTTP/1.1\r\n{head}\r\n\r\nhello");
        parse_request(wire.as_bytes(), L).map(|r| r.map(|(r, used)| (r.body, used)))
    };
    // The same length twice is one length; two different ones are refused.
    assert_eq!(
        parse("Content-Length: 5\r\ncontent-length: 5")
            .unwrap()
            .unwrap()
            .0,
        b"hello"
    );
    assert_eq!(
        parse("Content-Length: 5\r\nContent-Length: 4")
            .unwrap_err()
            .status(),
        400
    );
    // Transfer-Encoding in any form, alone or with Content-Length, is refused.
    for te in ["chunked", "identity", "gzip, chunked", "", "CHUNKED"] {
        let head = format!("Transfer-Encoding: {te}\r\nContent-Length: 5");
        assert_eq!(parse(&head).unwrap_err().status(), 400, "{te:?}");
    }
    // A name that is not exactly the header's (space before the colon, obs-fold) does not
    // parse at all, so it cannot be read as a request with no body.
    assert_eq!(parse("Content-Length : 5").unwrap_err().status(), 400);
    assert_eq!(
        parse("X: a\r\n Content-Length: 5").unwrap_err().status(),
        400
    );
    // No Content-Length: no body; the bytes after the head are the next request.
    let wire = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nhello";
    let (r, used) = parse_request(wire, L).unwrap().unwrap();
    assert!(r.body.is_empty());
    assert_eq!(used, wire.len() - 5);
}

#[test]
fn a_stripped_response_keeps_its_head_and_length() {
    let mut r = response(
        200,
        "application/octet-stream",
        &[("X-A", "1")],
        b"body\r\n\r\nmore",
        true,
    );
    let full = r.clone();
    strip_body(&mut r);
    assert!(full.starts_with(&r));
    let head = String::from_utf8(r).unwrap();
    assert!(head.ends_with("X-A: 1\r\n\r\n"), "{head}");
    assert!(head.contains("Content-Length: 12\r\n"), "{head}");
}

#[test]
fn json_and_plain_text_bodies_end_in_one_newline_counted_in_their_length() {
    let body = |r: Vec<u8>| {
        let end = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(r[..end].to_vec()).unwrap();
        (head, r[end + 4..].to_vec())
    };
    let (head, b) = body(json(200, b"{}", true));
    assert_eq!(
        (head.contains("Content-Length: 3"), &b[..]),
        (true, &b"{}\n"[..])
    );
    let (_, b) = body(response(200, "text/plain", &[], b"ok", true));
    assert_eq!(b, b"ok\n");
    let (_, b) = body(response(
        200,
        "text/plain; version=0.0.4",
        &[],
        b"m 1\n",
        true,
    ));
    assert_eq!(b, b"m 1\n", "already ends in one");
    let (_, b) = body(response(200, "text/html", &[], b"<p>", true));
    assert_eq!(b, b"<p>", "other types are sent as they are");
    let (_, b) = body(response(204, "application/json", &[], b"", true));
    assert!(b.is_empty());
}

#[test]
fn reads_upgrade_headers_case_insensitively() {
    let wire = b"GET /ws HTTP/1.1\r\nconnection: keep-alive, Upgrade\r\nUPGRADE: WebSocket\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (r, _) = parse_request(wire, L).unwrap().unwrap();
    assert!(r.headers.connection_upgrade && r.headers.upgrade_websocket);
    assert_eq!(r.headers.ws_key.as_deref(), Some("abc"));
}

#[test]
fn query_strings_are_percent_decoded() {
    let q = "subject=prices.%3E&subject=a.*&token=x+y&bad=%zz";
    let subs: Vec<_> = query_pairs(q)
        .filter(|(k, _)| k == "subject")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(subs, vec!["prices.>", "a.*"]);
    assert_eq!(query_get(q, "token").as_deref(), Some("x y"));
    assert_eq!(query_get(q, "bad").as_deref(), Some("%zz"));
    assert_eq!(percent_decode("%4"), "%4");
}
