//! `/connz`: the connection list of the operator page, like nats-server's `connz`. This module
//! is its pure part: the query (`?subject=`, `?sort=`, `?offset=`, `?limit=`), one
//! connection's [`ConnzRow`], the bounded [`ConnzPart`] each core answers with its own
//! connections' rows, and the merge of every core's part into the reply body.
//!
//! Owns no state. The rows are gathered by [`crate::core`] (each core reads its own clients,
//! answering a request that came over the bus); the HTTP side is `transport::admin`. Any thread
//! may call it (in practice the core serving the request).

use serde::Serialize;
use std::cmp::Ordering;
use std::net::SocketAddr;

/// Default and largest `?limit=`: rows in one reply.
pub const CONNZ_LIMIT_MAX: usize = 1024;

/// Largest `offset + limit`. Each core answers at most this many rows (its top rows in the
/// order asked for), so one request holds at most `cores x CONNZ_WINDOW_MAX` rows in memory
/// whatever the node's connection count; deeper pages are reached by narrowing with
/// `?subject=`. 16,384 rows of a few hundred bytes: a few MB per core at worst.
pub const CONNZ_WINDOW_MAX: usize = 16_384;

/// Subscription patterns listed per row (`subscriptions` counts them all; the filter looks at
/// all of them): a connection may hold `--max-subs-per-conn` (1,000) of them.
pub const CONNZ_ROW_PATTERNS: usize = 32;

/// The order of the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// By session id, ascending (the default).
    Id,
    /// Most queued bytes first.
    QueueBytes,
    /// Furthest behind first.
    BehindMs,
    /// Most dropped messages first.
    Drops,
    /// Most subscriptions first.
    Subscriptions,
}

impl Sort {
    /// Every order, with its `?sort=` name.
    pub const ALL: [(&'static str, Sort); 5] = [
        ("id", Sort::Id),
        ("queue_bytes", Sort::QueueBytes),
        ("behind_ms", Sort::BehindMs),
        ("drops", Sort::Drops),
        ("subscriptions", Sort::Subscriptions),
    ];
}

/// What `GET /connz` asked for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnzQuery {
    /// `?subject=`: only connections whose token `sub`, or one of whose subscription
    /// patterns, contains this (ASCII case-insensitive; stored lowercased).
    pub filter: Option<Box<str>>,
    /// `?sort=`.
    pub sort: Sort,
    /// `?offset=`: rows skipped.
    pub offset: usize,
    /// `?limit=`: rows returned at most.
    pub limit: usize,
}

impl ConnzQuery {
    /// Parses a query string; the error is the message of a 400.
    pub fn parse(query: &str) -> Result<ConnzQuery, String> {
        let mut q = ConnzQuery {
            filter: None,
            sort: Sort::Id,
            offset: 0,
            limit: CONNZ_LIMIT_MAX,
        };
        let count = |k: &str, v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("'{k}' must be a non-negative integer"))
        };
        for (k, v) in crate::http::query_pairs(query) {
            match &*k {
                "subject" if !v.is_empty() => q.filter = Some(v.to_ascii_lowercase().into()),
                "subject" => {}
                "sort" => {
                    let found = Sort::ALL.iter().find(|(name, _)| *name == v);
                    q.sort = found.map(|(_, s)| *s).ok_or_else(|| {
                        let names: Vec<&str> = Sort::ALL.iter().map(|(n, _)| *n).collect();
                        format!("'sort' must be one of {}", names.join(", "))
                    })?;
                }
                "offset" => q.offset = count("offset", &v)?,
                "limit" => q.limit = count("limit", &v)?.min(CONNZ_LIMIT_MAX),
                _ => {}
            }
        }
        if q.window() > CONNZ_WINDOW_MAX {
            return Err(format!(
                "'offset' + 'limit' must be at most {CONNZ_WINDOW_MAX}; narrow the list with 'subject'"
            ));
        }
        Ok(q)
    }

    /// Rows each core must answer: `offset + limit`.
    pub fn window(&self) -> usize {
        self.offset.saturating_add(self.limit)
    }

    /// True when a connection with token `sub` and these subscription patterns is listed.
    pub fn matches<'a>(
        &self,
        token_sub: Option<&str>,
        mut patterns: impl Iterator<Item = &'a str>,
    ) -> bool {
        let Some(f) = self.filter.as_deref() else {
            return true;
        };
        let has = |s: &str| s.to_ascii_lowercase().contains(f);
        token_sub.is_some_and(has) || patterns.any(has)
    }
}

/// One connection, as `/connz` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnzRow {
    /// Its session id (what `hello` told the client).
    pub id: Box<str>,
    /// The core it lives on.
    pub core: usize,
    /// `ws`, `sse` or `echo`.
    pub kind: &'static str,
    /// The peer's address (`None` when the socket is already gone).
    pub remote: Option<SocketAddr>,
    /// The `sub` claim of its token, when a string (`None`: auth off, no token yet, or none).
    pub token_sub: Option<Box<str>>,
    /// `open`, or `closing` once a close was decided.
    pub state: &'static str,
    /// How many subscriptions it holds.
    pub subscriptions: usize,
    /// Its subscription patterns, sorted, at most [`CONNZ_ROW_PATTERNS`].
    pub subjects: Vec<Box<str>>,
    /// Bytes in its outbound queue.
    pub queue_bytes: usize,
    /// Now minus the publish time of the oldest message still queued or owed to it, ms (0:
    /// nothing queued).
    pub behind_ms: u64,
    /// Messages it did not get: conflated away, or discarded at its close.
    pub drops: u64,
}

impl ConnzRow {
    /// The value ordered by `sort` (greatest first; `Id` orders by id alone).
    pub fn key(&self, sort: Sort) -> u64 {
        match sort {
            Sort::Id => 0,
            Sort::QueueBytes => self.queue_bytes as u64,
            Sort::BehindMs => self.behind_ms,
            Sort::Drops => self.drops,
            Sort::Subscriptions => self.subscriptions as u64,
        }
    }
}

/// The order of `/connz`: by the sort key, greatest first, then by id ascending (so any
/// order is total and pages do not overlap; under `Sort::Id` every key is 0).
pub fn order(a_key: u64, a_id: &str, b_key: u64, b_id: &str) -> Ordering {
    b_key.cmp(&a_key).then_with(|| a_id.cmp(b_id))
}

/// One core's answer: how many of its connections matched, and its first
/// `min(matched, offset + limit)` rows in the order asked for.
#[derive(Debug, Default)]
pub struct ConnzPart {
    /// Connections of the core that matched the filter.
    pub total: usize,
    /// The core's top rows.
    pub rows: Vec<ConnzRow>,
}

/// The reply body of `/connz`: every core's part merged, the page of rows `offset..` cut out.
pub fn render(q: &ConnzQuery, parts: Vec<ConnzPart>, now_ms: u64) -> Vec<u8> {
    #[derive(Serialize)]
    struct Reply<'a> {
        now_ms: u64,
        total: usize,
        offset: usize,
        limit: usize,
        sort: Sort,
        subject: Option<&'a str>,
        connections: Vec<ConnzRow>,
    }
    let total = parts.iter().map(|p| p.total).sum();
    let mut rows: Vec<ConnzRow> = parts.into_iter().flat_map(|p| p.rows).collect();
    rows.sort_by(|a, b| order(a.key(q.sort), &a.id, b.key(q.sort), &b.id));
    let connections = rows.into_iter().skip(q.offset).take(q.limit).collect();
    let reply = Reply {
        now_ms,
        total,
        offset: q.offset,
        limit: q.limit,
        sort: q.sort,
        subject: q.filter.as_deref(),
        connections,
    };
    serde_json::to_vec(&reply).expect("serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, queue_bytes: usize) -> ConnzRow {
        ConnzRow {
            id: id.into(),
            core: 0,
            kind: "ws",
            remote: None,
            token_sub: None,
            state: "open",
            subscriptions: 0,
            subjects: Vec::new(),
            queue_bytes,
            behind_ms: 0,
            drops: 0,
        }
    }

    #[test]
    fn a_query_is_bounded_and_bad_values_are_refused() {
        let q = ConnzQuery::parse("").unwrap();
        assert_eq!(
            (q.sort, q.offset, q.limit, q.filter),
            (Sort::Id, 0, 1024, None)
        );
        let q = ConnzQuery::parse("limit=5000&sort=behind_ms&subject=Prices.").unwrap();
        assert_eq!(q.limit, CONNZ_LIMIT_MAX, "limit is capped");
        assert_eq!(q.sort, Sort::BehindMs);
        assert_eq!(q.filter.as_deref(), Some("prices."));
        for bad in [
            "limit=-1",
            "offset=x",
            "sort=name",
            "offset=16000&limit=1000",
        ] {
            assert!(ConnzQuery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_filter_is_a_substring_of_the_token_sub_or_of_a_pattern() {
        let q = ConnzQuery::parse("subject=eur").unwrap();
        assert!(q.matches(Some("trader-EUR"), std::iter::empty()));
        assert!(q.matches(None, ["news.x", "prices.EURUSD"].into_iter()));
        assert!(!q.matches(Some("bob"), ["prices.GBPUSD"].into_iter()));
        let all = ConnzQuery::parse("").unwrap();
        assert!(all.matches(None, std::iter::empty()));
    }

    #[test]
    fn parts_merge_into_one_ordered_page_with_the_total() {
        let q = ConnzQuery::parse("sort=queue_bytes&offset=1&limit=2").unwrap();
        let parts = vec![
            ConnzPart {
                total: 3,
                rows: vec![row("00a", 30), row("00b", 10), row("00c", 10)],
            },
            ConnzPart {
                total: 5,
                rows: vec![row("01a", 20), row("01b", 10), row("01c", 5)],
            },
        ];
        let v: serde_json::Value = serde_json::from_slice(&render(&q, parts, 7)).unwrap();
        assert_eq!(v["total"], 8);
        let ids: Vec<&str> = v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["01a", "00b"], "30, [20, 10 (00b before 01b)], ...");
        assert_eq!(v["sort"], "queue_bytes");
        assert_eq!(v["connections"][0]["remote"], serde_json::Value::Null);
    }
}
