//! HTTP/1.1 request parsing and response encoding: the `bytes -> request` step for the port's
//! plain-HTTP side (health, metrics, publish, history, upgrades).
//!
//! Owns nothing beyond the values it returns; httparse does the header parsing. Pure code: never
//! touches a socket; called on the connection's core thread. Incomplete input is `Ok(None)`.

use std::borrow::Cow;

/// Most headers accepted in one request.
pub const MAX_HEADERS: usize = 48;

/// Request method, as far as ringcast cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// DELETE
    Delete,
    /// Anything else.
    Other,
}

impl Method {
    /// The method's name (`OTHER` for any other).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }
}

/// The value of an `Allow` header for `methods`: `GET, HEAD`.
pub fn allow(methods: &[Method]) -> String {
    let names: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
    names.join(", ")
}

/// The headers ringcast reads; everything else is skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Headers {
    /// `Content-Length`.
    pub content_length: Option<usize>,
    /// `Transfer-Encoding` present (chunked bodies are refused).
    pub transfer_encoding: bool,
    /// `Connection: close` (or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// `Connection` contains `upgrade`.
    pub connection_upgrade: bool,
    /// `Upgrade: websocket`.
    pub upgrade_websocket: bool,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub ws_version: Option<String>,
    /// `Authorization`.
    pub authorization: Option<String>,
    /// `Origin`.
    pub origin: Option<String>,
    /// `Last-Event-ID` (SSE resume).
    pub last_event_id: Option<String>,
}

/// A parsed request with its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path without the query, still percent-encoded.
    pub path: String,
    /// Raw query string (after `?`), may be empty.
    pub query: String,
    /// Headers of interest.
    pub headers: Headers,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

/// A request that cannot be served; answered with the given status, then the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed request line or headers (400).
    Malformed(&'static str),
    /// Header block over the limit (431).
    HeadersTooLarge,
    /// Body over the limit (413).
    BodyTooLarge,
}

impl HttpError {
    /// Status code.
    pub fn status(self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadersTooLarge => 431,
            HttpError::BodyTooLarge => 413,
        }
    }

    /// Message for the JSON error body.
    pub fn message(self) -> &'static str {
        match self {
            HttpError::Malformed(m) => m,
            HttpError::HeadersTooLarge => "request headers too large",
            HttpError::BodyTooLarge => "request body too large",
        }
    }
}

/// Size limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest header block (request line + headers), bytes.
    pub max_header_bytes: usize,
    /// Largest body, bytes.
    pub max_body_bytes: usize,
}

fn contains_token(v: &str, token: &str) -> bool {
    v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The value of a `Content-Length` header: ASCII digits only (RFC 9110 8.6), with optional
/// whitespace (SP, HTAB) around them. A sign, an empty value, a list, any other character, or
/// a number over `usize` is malformed: `str::parse` alone would take `+5`.
fn content_length(v: &str) -> Result<usize, HttpError> {
    let digits = v.trim_matches([' ', '\t']);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::Malformed("bad Content-Length"));
    }
    digits
        .parse::<usize>()
        .map_err(|_| HttpError::Malformed("Content-Length too large"))
}

impl Headers {
    /// The headers of interest among `raw`; `http10`: the request is HTTP/1.0 (which closes
    /// after one response unless it asks for keep-alive).
    fn read(raw: &[httparse::Header<'_>], http10: bool) -> Result<Headers, HttpError> {
        let mut h = Headers {
            close: http10,
            ..Headers::default()
        };
        for hd in raw {
            let Ok(v) = std::str::from_utf8(hd.value) else {
                return Err(HttpError::Malformed("non-UTF-8 header value"));
            };
            let name = hd.name;
            let text = || Some(v.trim().to_owned());
            if name.eq_ignore_ascii_case("content-length") {
                let n = content_length(v)?;
                if h.content_length.is_some_and(|m| m != n) {
                    return Err(HttpError::Malformed("conflicting Content-Length"));
                }
                h.content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                h.transfer_encoding = true;
            } else if name.eq_ignore_ascii_case("connection") {
                if contains_token(v, "close") {
                    h.close = true;
                }
                if contains_token(v, "keep-alive") {
                    h.close = false;
                }
                h.connection_upgrade |= contains_token(v, "upgrade");
            } else if name.eq_ignore_ascii_case("upgrade") {
                h.upgrade_websocket |= contains_token(v, "websocket");
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                h.ws_key = text();
            } else if name.eq_ignore_ascii_case("sec-websocket-version") {
                h.ws_version = text();
            } else if name.eq_ignore_ascii_case("authorization") {
                h.authorization = text();
            } else if name.eq_ignore_ascii_case("origin") {
                h.origin = text();
            } else if name.eq_ignore_ascii_case("last-event-id") {
                h.last_event_id = text();
            }
        }
        Ok(h)
    }
}

/// A request's head, parsed before its body is read, so that the transport can decide whether
/// the body may be read at all (its token, the node's body budget) before buffering it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The request, its body still empty.
    pub request: Request,
    /// Bytes of the head (request line, headers, blank line).
    pub len: usize,
    /// Bytes of the body that follows (`Content-Length`, at most the limit).
    pub body_len: usize,
}

/// Parses one request head from the start of `buf` (`Ok(None)`: incomplete). A body over the
/// limit is refused here, before any of it is read.
pub fn parse_head(buf: &[u8], limits: Limits) -> Result<Option<Head>, HttpError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_header_bytes {
                Err(HttpError::HeadersTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(_) => return Err(HttpError::Malformed("malformed HTTP request")),
    };
    if head_len > limits.max_header_bytes {
        return Err(HttpError::HeadersTooLarge);
    }
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let h = Headers::read(req.headers, req.version == Some(0))?;
    if h.transfer_encoding {
        return Err(HttpError::Malformed(
            "Transfer-Encoding is not supported; send Content-Length",
        ));
    }
    let body_len = h.content_length.unwrap_or(0);
    if body_len > limits.max_body_bytes {
        return Err(HttpError::BodyTooLarge);
    }
    let request = Request {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        headers: h,
        body: Vec::new(),
    };
    Ok(Some(Head {
        request,
        len: head_len,
        body_len,
    }))
}

/// Parses one request from the start of `buf`. Returns the request and bytes consumed.
pub fn parse_request(buf: &[u8], limits: Limits) -> Result<Option<(Request, usize)>, HttpError> {
    let Some(head) = parse_head(buf, limits)? else {
        return Ok(None);
    };
    let end = head.len + head.body_len;
    if buf.len() < end {
        return Ok(None);
    }
    let mut request = head.request;
    request.body = buf[head.len..end].to_vec();
    Ok(Some((request, end)))
}

/// What a request asks for: the port's route table, in one place. Pure: the transport
/// dispatches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET|HEAD /` (and `/index.html`): the demo page.
    DemoPage,
    /// `GET|HEAD /ringcast.js`: the browser client.
    ClientJs,
    /// `GET|HEAD /healthz`.
    Healthz,
    /// `GET /metrics`.
    Metrics,
    /// `POST /publish`.
    Publish,
    /// `GET /ws`: the WebSocket upgrade.
    WebSocket,
    /// `GET /ws/echo` (only with `--echo-endpoint`).
    Echo,
    /// `GET /sse`: a Server-Sent Events stream.
    Sse,
    /// `GET /schedule?subject=S`.
    ListSchedules,
    /// `DELETE /schedule/{id}`.
    CancelSchedule(&'a str),
    /// `GET /history/{subject}` (subject still percent-encoded).
    History(&'a str),
    /// `POST /admin/drain`: begin the node's drain.
    AdminDrain,
    /// `GET|HEAD /admin`: the operator page.
    AdminPage,
    /// `GET /connz`: the connection list.
    Connz,
    /// `GET /varz`: the node's counters as JSON.
    Varz,
    /// A known path, but not this method (405); the methods it takes (the `Allow` header).
    MethodNotAllowed(&'static [Method]),
    /// No such endpoint (404).
    NotFound,
}

impl<'a> Route<'a> {
    /// The route of `method` on `path`; `echo`: whether `/ws/echo` exists on this node.
    pub fn of(method: Method, path: &'a str, echo: bool) -> Route<'a> {
        use Method::{Delete, Get, Head, Post};
        let (route, methods): (Route<'a>, &'static [Method]) = match path {
            "/" | "/index.html" => (Route::DemoPage, &[Get, Head]),
            "/ringcast.js" => (Route::ClientJs, &[Get, Head]),
            "/healthz" => (Route::Healthz, &[Get, Head]),
            "/metrics" => (Route::Metrics, &[Get]),
            "/publish" => (Route::Publish, &[Post]),
            "/ws" => (Route::WebSocket, &[Get]),
            "/ws/echo" if echo => (Route::Echo, &[Get]),
            "/sse" => (Route::Sse, &[Get]),
            "/schedule" => (Route::ListSchedules, &[Get]),
            "/admin/drain" => (Route::AdminDrain, &[Post]),
            "/admin" | "/admin/" => (Route::AdminPage, &[Get, Head]),
            "/connz" => (Route::Connz, &[Get]),
            "/varz" => (Route::Varz, &[Get]),
            p => match (p.strip_prefix("/schedule/"), p.strip_prefix("/history/")) {
                (Some(id), _) => (Route::CancelSchedule(id), &[Delete]),
                (_, Some(subject)) => (Route::History(subject), &[Get]),
                _ => return Route::NotFound,
            },
        };
        if methods.contains(&method) {
            route
        } else {
            Route::MethodNotAllowed(methods)
        }
    }
}

/// Decodes `%XX` escapes and `+` (as space). Invalid escapes are kept literally.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
                match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Iterates `key=value` pairs of a query string, percent-decoded.
pub fn query_pairs(q: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    q.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// The first value of `key` in a query string.
pub fn query_get<'a>(q: &'a str, key: &str) -> Option<Cow<'a, str>> {
    query_pairs(q).find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Reason phrase for a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Whether a body of `content_type` gets a newline after it: a JSON or plain-text body that
/// lacks one, so that `curl` output ends its line and line-based tools see a whole line.
/// (WebSocket and SSE messages never pass through here: their bytes are the wire contract.)
fn needs_newline(content_type: &str, body: &[u8]) -> bool {
    let text =
        content_type.starts_with("application/json") || content_type.starts_with("text/plain");
    text && !body.is_empty() && !body.ends_with(b"\n")
}

/// Encodes a complete response with a body; a JSON or plain-text body ends in a newline (one
/// is added when it lacks it, counted in `Content-Length`).
pub fn response(
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let newline = needs_newline(content_type, body);
    let body_len = body.len() + usize::from(newline);
    let mut out = Vec::with_capacity(160 + body_len);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nServer: ringcast\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    out.extend_from_slice(if keep_alive {
        b"\r\nConnection: keep-alive" as &[u8]
    } else {
        b"\r\nConnection: close"
    });
    for (k, v) in extra {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    if newline {
        out.push(b'\n');
    }
    out
}

/// Cuts a complete response (as [`response`] encodes it) down to its head, for `HEAD`: the
/// same status and headers, `Content-Length` still the body's, and no body (RFC 9110 9.3.2).
pub fn strip_body(resp: &mut Vec<u8>) {
    if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
        resp.truncate(end + 4);
    }
}

/// A JSON response.
pub fn json(status: u16, body: &[u8], keep_alive: bool) -> Vec<u8> {
    response(status, "application/json", &[], body, keep_alive)
}

/// A JSON error response `{"error":{"code","message"}}`.
pub fn error(code: crate::proto::ErrorCode, message: &str, keep_alive: bool) -> Vec<u8> {
    let body = crate::proto::http_error_body(code, message);
    response(
        code.http_status(),
        "application/json",
        &[],
        &body,
        keep_alive,
    )
}

#[cfg(test)]
mod tests;
