//! `Outbox`: what this core sends to other cores during one loop turn, coalesced into one bus
//! message per destination.
//!
//! Every message a core sends to another core (a forwarded publish, its answer, a broadcast
//! frame, any request) is queued here and leaves when the loop turn's ready tasks have run:
//! the outbox task ([`Core::run_outbox`](super::Core::run_outbox)) is woken by the first
//! message of a turn and runs after them. A read of 500 `pub` ops for subjects of another
//! core thus crosses as one [`CoreMsg::Batch`], the owner's 500 answers come back as one, and
//! its frames reach each core as one: one channel operation and one doorbell per destination
//! per turn instead of one per message, which is what the bus costs under a feed.
//!
//! Order is kept: one queue per destination, sent whole, in push order, and every core-to-core
//! message goes through it (the bus is FIFO per sender and receiver; a batch is handled in
//! order). And causality is kept: before anything the core did reaches a socket (an ack, an
//! HTTP answer), the outbox is flushed ([`Core::flush_outbox`](super::Core::flush_outbox)),
//! so the frames a publish produced are on their way to every core before its publisher
//! hears it was accepted. Only this core's thread touches its outbox.

use super::msg::{CoreBus, CoreMsg};
use super::signal::LocalNotify;
use std::cell::RefCell;

/// Most messages queued for one destination before they leave without waiting for the end of
/// the turn: bounds a batch (the receiver handles a batch whole within its
/// [`BUS_BATCH`](super::BUS_BATCH) of a turn) and the delay of its first message behind a long
/// turn. 512 forwarded publishes are a few tens of microseconds of the owner's work.
pub const OUTBOX_MAX: usize = 512;

/// Messages for other cores, one queue per destination core.
pub struct Outbox {
    queues: RefCell<Vec<Vec<CoreMsg>>>,
    /// Wakes the outbox task when a turn's first message is queued.
    pending: LocalNotify,
}

impl Outbox {
    /// An empty outbox for a node of `cores` cores.
    pub fn new(cores: usize) -> Outbox {
        Outbox {
            queues: RefCell::new((0..cores).map(|_| Vec::new()).collect()),
            pending: LocalNotify::default(),
        }
    }

    /// Queues `msg` for `core`; it leaves at the end of this turn (or now, with a full queue).
    pub fn push(&self, bus: &CoreBus, core: usize, msg: CoreMsg) {
        let full = {
            let mut queues = self.queues.borrow_mut();
            let q = &mut queues[core];
            q.push(msg);
            (q.len() >= OUTBOX_MAX).then(|| std::mem::take(q))
        };
        match full {
            Some(batch) => send(bus, core, batch),
            None => self.pending.notify(),
        }
    }

    /// Sends everything queued: one bus message per destination.
    pub fn flush(&self, bus: &CoreBus) {
        let batches: Vec<(usize, Vec<CoreMsg>)> = {
            let mut queues = self.queues.borrow_mut();
            let busy = queues.iter_mut().enumerate().filter(|(_, q)| !q.is_empty());
            busy.map(|(core, q)| (core, std::mem::take(q))).collect()
        };
        for (core, batch) in batches {
            send(bus, core, batch);
        }
    }

    /// Waits until something is queued (the outbox task's loop).
    pub async fn wait(&self) {
        self.pending.wait().await
    }

    /// Messages queued and not yet sent (tests).
    pub fn queued(&self) -> usize {
        self.queues.borrow().iter().map(Vec::len).sum()
    }
}

/// One message as itself, several as one [`CoreMsg::Batch`].
fn send(bus: &CoreBus, core: usize, mut batch: Vec<CoreMsg>) {
    let msg = match batch.len() {
        0 => return,
        1 => batch.pop().expect("one message"),
        _ => CoreMsg::Batch(batch),
    };
    bus.send(core, msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;

    fn tags(msg: CoreMsg) -> Vec<u64> {
        match msg {
            CoreMsg::Batch(v) => v.into_iter().flat_map(tags).collect(),
            CoreMsg::Durable { upto, .. } => vec![upto],
            _ => unreachable!("only test messages"),
        }
    }

    fn msg(upto: u64) -> CoreMsg {
        CoreMsg::Durable { upto, ok: true }
    }

    #[test]
    fn a_turns_messages_leave_as_one_batch_per_destination_in_order() {
        let (bus, rx) = Bus::new(3);
        let out = Outbox::new(3);
        for i in 0..5 {
            out.push(&bus, 1 + (i as usize % 2), msg(i));
        }
        assert_eq!(
            bus.depth(1) + bus.depth(2),
            0,
            "nothing leaves before the flush"
        );
        out.flush(&bus);
        assert_eq!((bus.depth(1), bus.depth(2)), (1, 1));
        assert_eq!(tags(rx[1].try_recv().unwrap()), vec![0, 2, 4]);
        assert_eq!(tags(rx[2].try_recv().unwrap()), vec![1, 3]);
        assert_eq!(out.queued(), 0);
    }

    #[test]
    fn a_single_message_is_sent_as_itself() {
        let (bus, rx) = Bus::new(2);
        let out = Outbox::new(2);
        out.push(&bus, 1, msg(7));
        out.flush(&bus);
        assert!(matches!(
            rx[1].try_recv().unwrap(),
            CoreMsg::Durable { upto: 7, .. }
        ));
        out.flush(&bus);
        assert!(rx[1].try_recv().is_err(), "an empty flush sends nothing");
    }

    #[test]
    fn a_full_queue_leaves_at_once_and_order_is_kept_across_the_cut() {
        let (bus, rx) = Bus::new(2);
        let out = Outbox::new(2);
        let n = OUTBOX_MAX as u64 + 3;
        for i in 0..n {
            out.push(&bus, 1, msg(i));
        }
        assert_eq!(bus.depth(1), 1, "the full queue left without a flush");
        assert_eq!(out.queued(), 3);
        out.flush(&bus);
        let got: Vec<u64> = rx[1].try_iter().flat_map(tags).collect();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    }
}
