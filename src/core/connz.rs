//! The core side of `/connz`: each core lists its own connections, and the core serving the
//! HTTP request gathers every core's list.
//!
//! No core reads another's clients: the serving core sends a [`Request::Connz`] to every core
//! (itself included) over the bus, each answers its [`ConnzPart`] (at most `offset + limit`
//! rows, already in order), and the serving core merges them ([`crate::connz::render`]). Runs
//! on the core's own thread; nothing here is on the message path.

use super::pending::Slot;
use super::{Client, ConnKind, Core, Reply, Request, Waiter};
use crate::connz::{self, ConnzPart, ConnzQuery, ConnzRow, CONNZ_ROW_PATTERNS};
use std::rc::Rc;

/// What a connection is sorted by, read before its row is built (rows are built only for the
/// connections within the window).
struct Probe {
    key: u64,
    client: Rc<Client>,
    queue_bytes: usize,
    behind_ms: u64,
    drops: u64,
}

impl Core {
    /// The `/connz` body: every core's rows for `q`, merged.
    pub async fn connz(&self, q: &ConnzQuery) -> Vec<u8> {
        let slots: Vec<Rc<Slot<Reply>>> = (0..self.cores())
            .map(|core| {
                let slot = Rc::new(Slot::default());
                let req = Request::Connz(Box::new(q.clone()));
                self.ask(core, req, Waiter::Await(slot.clone()));
                slot
            })
            .collect();
        let mut parts = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot.wait().await {
                Reply::Connz(part) => parts.push(part),
                other => unreachable!("a connz request answered with {other:?}"),
            }
        }
        connz::render(q, parts, crate::os::now_ms())
    }

    /// Serves [`Request::Connz`]: this core's connections (with a socket) that match `q`,
    /// counted, and the first `offset + limit` of them in `q`'s order.
    pub(super) fn connz_part(&self, q: &ConnzQuery) -> ConnzPart {
        let now_us = crate::os::now_us();
        let clients = self.sessions.borrow().all();
        let mut probes: Vec<Probe> = clients
            .into_iter()
            .filter(|c| !c.is_detached())
            .filter(|c| {
                let grant = c.access.grant();
                let sub = grant.as_ref().and_then(|g| g.subject.as_deref());
                q.matches(sub, c.subs.borrow().keys().map(|p| &**p))
            })
            .map(|client| {
                let (queue_bytes, oldest_us, drops) = client.output_view();
                let behind_ms = oldest_us.map_or(0, |ts| now_us.saturating_sub(ts) / 1000);
                let mut p = Probe {
                    key: 0,
                    queue_bytes,
                    behind_ms,
                    drops,
                    client,
                };
                p.key = probe_key(&p, q.sort);
                p
            })
            .collect();
        let total = probes.len();
        probes.sort_by(|a, b| connz::order(a.key, &a.client.session, b.key, &b.client.session));
        probes.truncate(q.window());
        let rows = probes.into_iter().map(|p| self.connz_row(p)).collect();
        ConnzPart { total, rows }
    }

    fn connz_row(&self, p: Probe) -> ConnzRow {
        let c = &p.client;
        let mut subjects: Vec<Box<str>> = c.subs.borrow().keys().cloned().collect();
        let subscriptions = subjects.len();
        subjects.sort_unstable();
        subjects.truncate(CONNZ_ROW_PATTERNS);
        let grant = c.access.grant();
        ConnzRow {
            id: c.session.clone(),
            core: self.id,
            kind: match c.kind {
                ConnKind::WebSocket => "ws",
                ConnKind::Sse => "sse",
                ConnKind::Echo => "echo",
            },
            remote: crate::os::peer_addr(c.fd()),
            token_sub: grant.and_then(|g| g.subject.clone()),
            state: if c.closing().is_some() {
                "closing"
            } else {
                "open"
            },
            subscriptions,
            subjects,
            queue_bytes: p.queue_bytes,
            behind_ms: p.behind_ms,
            drops: p.drops,
        }
    }
}

/// The sort key of a probe (as [`ConnzRow::key`] of its row).
fn probe_key(p: &Probe, sort: connz::Sort) -> u64 {
    use connz::Sort;
    match sort {
        Sort::Id => 0,
        Sort::QueueBytes => p.queue_bytes as u64,
        Sort::BehindMs => p.behind_ms,
        Sort::Drops => p.drops,
        Sort::Subscriptions => p.client.subscription_count() as u64,
    }
}
