//! Publish acknowledgements: the answer to one WebSocket `pub` ([`reply_pub`]), and a batch's
//! collector ([`Batch`]), which gathers the outcome of each of its messages and answers once,
//! in the batch's order, when the last one is in.
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
use crate::proto::{self, Ack, ErrorCode, PubResult, Publish, Refused};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Where a batch's answer goes.
enum BatchTo {
    /// A WebSocket `pubs`: one `ok` with `acks` to the client.
    Ws {
        client: Rc<Client>,
        id: Option<Box<str>>,
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
            BatchTo::Ws { client, id } => {
                let mut b = Vec::with_capacity(16 + 48 * entries.len());
                proto::reply::ok_pubs(&mut b, id.as_deref(), &entries);
                client.send_json(m, &b);
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
pub(super) fn reply_pub(m: &CoreMetrics, client: &Client, id: Option<&str>, result: PubResult) {
    match result {
        Ok(ack) => {
            let mut b = Vec::with_capacity(80);
            proto::ok_pub(&mut b, id, ack.seq, ack.ts, ack.duplicate);
            client.send_json(m, &b);
        }
        Err(e) => client.send_err(m, id, ErrorCode::Overloaded, e.message()),
    }
}
