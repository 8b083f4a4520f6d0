//! Publish acknowledgements: the answer to one WebSocket `pub` ([`reply_pub`]); a batch's
//! collector ([`Batch`]), which gathers the outcome of each of its messages and answers once,
//! in the batch's order, when the last one is in; and a connection's [`AckOrder`], which puts
//! the replies to its `pub` and `pubs` ops on the wire in the order of the ops, whichever
//! owner core (or the cluster's stream) answers first.
//!
//! Each message of a batch takes the one publish path ([`Core::publish`]: the subject's owner
//! core, or the cluster's stream) with its own waiter, [`super::Waiter::Batch`], naming the
//! batch and the message's place in it: outcomes may arrive in any order across owner cores,
//! the answer lists them in the batch's. Messages on one subject keep their order (the bus is
//! FIFO per core pair; the cluster bridge keeps one lane per subject). Core-local: a batch lives
//! on the core of the connection (or HTTP request) that sent it.

use super::pending::Slot;
use super::{Client, Core, Waiter};
use crate::metrics::CoreMetrics;
use crate::proto::{self, Ack, PubResult, Publish, Refused};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

/// A connection's publish replies, held back until every earlier one is out: a ticket per
/// `pub` or `pubs` op, taken when the op is read; a reply waits in its ticket's slot until
/// the slots before it are sent. Bounded by the publishes in flight, which the publish limit
/// and the pending-request bound cap. Core-local, one per [`Client`].
#[derive(Default)]
pub struct AckOrder {
    /// Ticket of the front slot.
    front: Cell<u64>,
    /// Replies by ticket from `front` on; `None`: still waiting for its sequencer.
    slots: RefCell<VecDeque<Option<Box<[u8]>>>>,
}

impl AckOrder {
    /// A ticket for the next publish reply.
    pub fn reserve(&self) -> u64 {
        let mut slots = self.slots.borrow_mut();
        slots.push_back(None);
        self.front.get() + slots.len() as u64 - 1
    }

    /// Sends `reply` (of the publish holding `ticket`) through `send` once every earlier reply
    /// is out, and with it the later ones it held back. In order (the common case) it goes out
    /// at once, uncopied; only a reply that must wait is copied into its slot.
    fn complete(&self, ticket: u64, reply: &[u8], mut send: impl FnMut(&[u8])) {
        let Some(at) = ticket.checked_sub(self.front.get()) else {
            return;
        };
        if at > 0 {
            if let Some(slot) = self.slots.borrow_mut().get_mut(at as usize) {
                *slot = Some(reply.into());
            }
            return;
        }
        self.pop_front();
        send(reply);
        while let Some(held) = self.pop_filled() {
            send(&held);
        }
    }

    /// Drops the front slot (its reply is being sent).
    fn pop_front(&self) {
        if self.slots.borrow_mut().pop_front().is_some() {
            self.front.set(self.front.get() + 1);
        }
    }

    /// The front slot's reply, if it has arrived.
    fn pop_filled(&self) -> Option<Box<[u8]>> {
        let mut slots = self.slots.borrow_mut();
        if !matches!(slots.front(), Some(Some(_))) {
            return None;
        }
        self.front.set(self.front.get() + 1);
        slots.pop_front().flatten()
    }

    /// True when no publish reply is outstanding.
    pub fn is_idle(&self) -> bool {
        self.slots.borrow().is_empty()
    }
}

impl Client {
    /// Sends the JSON reply of the publish holding `ticket` once every earlier publish reply
    /// is out.
    pub fn send_ack(&self, m: &CoreMetrics, ticket: u64, json: &[u8]) {
        self.acks
            .complete(ticket, json, |reply| self.send_json(m, reply));
    }

    /// Sends a publish reply decided at once (a refusal), behind any reply still outstanding.
    pub fn send_publish_reply(&self, m: &CoreMetrics, json: &[u8]) {
        if self.acks.is_idle() {
            self.send_json(m, json);
        } else {
            let ticket = self.acks.reserve();
            self.send_ack(m, ticket, json);
        }
    }
}

/// Where a batch's answer goes.
enum BatchTo {
    /// A WebSocket `pubs`: one `ok` with `acks` to the client.
    Ws {
        client: Rc<Client>,
        id: Option<Box<str>>,
        ticket: u64,
    },
    /// `POST /publish` with an array body: the awaiting request.
    Await(Rc<Slot<Vec<Ack>>>),
}

/// The outcomes of a batch's messages as they arrive, one slot per message.
pub(super) struct Batch {
    to: BatchTo,
    entries: RefCell<Vec<Option<Ack>>>,
    /// Messages still waiting for their sequencer's answer.
    missing: Cell<usize>,
}

impl Batch {
    /// The outcome of message `index`; the answer goes out with the last one.
    pub(super) fn fill(&self, m: &CoreMetrics, index: usize, result: PubResult) {
        self.entries.borrow_mut()[index] = Some(result.map_err(Refused::from));
        let left = self.missing.get() - 1;
        self.missing.set(left);
        if left == 0 {
            self.answer(m);
        }
    }

    fn answer(&self, m: &CoreMetrics) {
        let entries: Vec<Ack> = self
            .entries
            .take()
            .into_iter()
            .map(|e| e.expect("every message of a batch has its outcome"))
            .collect();
        match &self.to {
            BatchTo::Ws { client, id, ticket } => {
                let mut b = Vec::with_capacity(16 + 48 * entries.len());
                proto::reply::ok_pubs(&mut b, id.as_deref(), &entries);
                client.send_ack(m, *ticket, &b);
            }
            BatchTo::Await(slot) => slot.fill(entries),
        }
    }
}

impl Core {
    /// Publishes a WebSocket `pubs` batch: each admitted message on its own (its refusal, if
    /// the transport refused it, is its entry as is); one `ok` with `acks` when all are in.
    pub fn publish_batch_ws(
        &self,
        c: &Rc<Client>,
        id: Option<&str>,
        items: Vec<Result<Publish<'_>, Refused>>,
    ) {
        let to = BatchTo::Ws {
            client: c.clone(),
            id: id.map(Into::into),
            ticket: c.acks.reserve(),
        };
        self.publish_batch(items, to);
    }

    /// Publishes the array body of `POST /publish` as [`Core::publish_batch_ws`] does; resolves
    /// with the outcome of every message, in the batch's order.
    pub async fn publish_batch_http(&self, items: Vec<Result<Publish<'_>, Refused>>) -> Vec<Ack> {
        let slot = Rc::new(Slot::default());
        self.publish_batch(items, BatchTo::Await(slot.clone()));
        slot.wait().await
    }

    fn publish_batch(&self, items: Vec<Result<Publish<'_>, Refused>>, to: BatchTo) {
        let mut entries = Vec::with_capacity(items.len());
        let mut admitted = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match item {
                Ok(p) => {
                    entries.push(None);
                    admitted.push((index, p));
                }
                Err(r) => entries.push(Some(Err(r))),
            }
        }
        let batch = Rc::new(Batch {
            to,
            entries: RefCell::new(entries),
            missing: Cell::new(admitted.len()),
        });
        if admitted.is_empty() {
            return batch.answer(self.metrics());
        }
        // `missing` counts every admitted message, so the answer cannot go out before the
        // last one is on its way, even when owners on this core answer at once.
        for (index, p) in admitted {
            let w = Waiter::Batch {
                batch: batch.clone(),
                index,
            };
            self.publish(&p.subject, p.data_bytes(), p.msg_id.as_deref(), w);
        }
    }
}

/// Answers one WebSocket `pub`: `ok` with its seq and ts, or `err overloaded`.
pub(super) fn reply_pub(
    m: &CoreMetrics,
    client: &Client,
    id: Option<&str>,
    ticket: u64,
    result: PubResult,
) {
    let mut b = Vec::with_capacity(80);
    match result {
        Ok(ack) => proto::ok_pub(&mut b, id, ack.seq, ack.ts, ack.duplicate),
        Err(e) => proto::reply::refused(&mut b, id, &Refused::from(e)),
    }
    client.send_ack(m, ticket, &b);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(order: &AckOrder, ticket: u64, reply: &str) -> Vec<String> {
        let mut out = Vec::new();
        order.complete(ticket, reply.as_bytes(), |r| {
            out.push(String::from_utf8(r.to_vec()).unwrap())
        });
        out
    }

    #[test]
    fn a_reply_waits_for_every_earlier_one_then_they_leave_in_ticket_order() {
        let order = AckOrder::default();
        let t: Vec<u64> = (0..4).map(|_| order.reserve()).collect();
        assert_eq!(sent(&order, t[2], "c"), Vec::<String>::new());
        assert_eq!(sent(&order, t[1], "b"), Vec::<String>::new());
        assert_eq!(sent(&order, t[0], "a"), ["a", "b", "c"]);
        assert!(!order.is_idle());
        assert_eq!(sent(&order, t[3], "d"), ["d"]);
        assert!(order.is_idle());
    }

    #[test]
    fn tickets_keep_counting_after_the_queue_empties() {
        let order = AckOrder::default();
        let first = order.reserve();
        assert_eq!(sent(&order, first, "a"), ["a"]);
        let (x, y) = (order.reserve(), order.reserve());
        assert_eq!((x, y), (first + 1, first + 2));
        assert_eq!(sent(&order, y, "y"), Vec::<String>::new());
        assert_eq!(sent(&order, x, "x"), ["x", "y"]);
        assert!(order.is_idle());
    }
}
