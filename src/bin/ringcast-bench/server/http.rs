//! The little HTTP the generator speaks to a spawned ringcast, from the main thread: `GET
//! /healthz` while waiting for a node to come up, and `GET /metrics` (summing one Prometheus
//! series, e.g. the cluster's seq-guard conflicts) between steps. Plain HTTP/1.1 with
//! `Connection: close`, every step bounded by a second.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET /metrics` of a ringcast at `addr` (plain HTTP/1.1, `Connection: close`): the body, or
/// `None` when it cannot be read within a second.
pub fn fetch_metrics(addr: SocketAddr) -> Option<String> {
    http_get(addr, "/metrics").and_then(|(code, body)| (code == 200).then_some(body))
}

/// `GET path` (HTTP/1.1, `Connection: close`), bounded by a second per step: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let t = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&addr, t).ok()?;
    s.set_read_timeout(Some(t)).ok()?;
    s.set_write_timeout(Some(t)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_http_response(&out)
}

/// Status code and body of a complete HTTP/1.x response (no chunked encoding).
fn parse_http_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head
        .strip_prefix("HTTP/1.")?
        .get(2..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((code, body.to_string()))
}

/// Sum of every sample of the Prometheus series `name` in `text` (all label sets; `# ` comment
/// lines and other series, including ones `name` is a prefix of, are ignored).
pub fn metric_sum(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()) {
            if let Ok(x) = v.parse::<f64>() {
                *found.get_or_insert(0) += x as u64;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_every_label_set_of_one_series() {
        let text = "# HELP ringcast_cluster_conflicts_total x\n\
                    # TYPE ringcast_cluster_conflicts_total counter\n\
                    ringcast_cluster_conflicts_total 7\n\
                    ringcast_cluster_conflicts_total_other 100\n\
                    ringcast_published_total{core=\"0\"} 3\n\
                    ringcast_published_total{core=\"1\"} 4\n";
        assert_eq!(
            metric_sum(text, "ringcast_cluster_conflicts_total"),
            Some(7)
        );
        assert_eq!(metric_sum(text, "ringcast_published_total"), Some(7));
        assert_eq!(metric_sum(text, "ringcast_missing"), None);
    }

    #[test]
    fn http_status_and_body_are_read_from_a_response() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 11\r\n\r\ncatching up";
        assert_eq!(parse_http_response(raw), Some((503, "catching up".into())));
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\n\r\nok"),
            Some((200, "ok".into()))
        );
        assert_eq!(parse_http_response(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(parse_http_response(b"garbage\r\n\r\n"), None);
    }
}
