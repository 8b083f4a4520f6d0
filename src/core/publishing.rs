//! The publish path of a core: routing a publish to its sequencer (the cluster's stream, this
//! core, or the owner core over the bus), sequencing on the owner, broadcasting the frame to
//! every core and delivering it to this core's subscribers.
//!
//! Runs on the core's own thread, like the rest of [`Core`]; frames reach other cores only
//! through the core's outbox.

use super::sequencer::Ready;
use super::CoreMsg;
use super::{Core, Reply, ReplyTo, Request, Waiter, BUS_BATCH};
use crate::bus::owner_of;
use crate::frame::Frame;
use crate::metrics;
use std::sync::Arc;

impl Core {
    /// Routes a publish to its sequencer: the cluster's stream in cluster mode, else the
    /// subject's owner core (this one, or over the bus); `w` gets the outcome.
    pub(super) fn publish(&self, subject: &str, data: &[u8], msg_id: Option<&str>, w: Waiter) {
        if let Some(bridge) = &self.node.cluster {
            let token = self.pending.borrow_mut().park(w);
            return bridge.publish(subject, data, msg_id, self.id, token);
        }
        let owner = owner_of(subject, self.cores());
        if owner == self.id {
            self.catch_up_with_bus();
            return self.sequence(subject, data, msg_id, None, ReplyTo::Local(w));
        }
        let req = Request::Publish {
            subject: subject.into(),
            data: data.into(),
            msg_id: msg_id.map(Into::into),
        };
        self.ask(owner, req, w);
    }

    /// Owner side: sequences a publish and, unless it waits for its fsync, broadcasts it and
    /// answers. `fired`: the schedule id this publish fires.
    pub(super) fn sequence(
        &self,
        subject: &str,
        data: &[u8],
        msg_id: Option<&str>,
        fired: Option<&str>,
        to: ReplyTo,
    ) {
        let m = self.metrics();
        let ready = self
            .sequencer
            .borrow_mut()
            .publish(m, subject, data, msg_id, fired, to);
        if let Some(r) = ready {
            self.finish_publish(r);
        }
    }

    /// A publish the sequencer is done with: broadcast its frame, then answer.
    pub(super) fn finish_publish(&self, r: Ready<ReplyTo>) {
        if let Some(frame) = r.frame {
            self.broadcast(frame);
        }
        self.answer(r.to, Reply::Published(r.result));
    }

    /// Sends a frame this core owns to every core, itself included (FIFO per core pair, so
    /// each subject's frames arrive in seq order everywhere).
    pub(super) fn broadcast(&self, frame: Arc<Frame>) {
        for core in (0..self.cores()).filter(|c| *c != self.id) {
            let from = self.id;
            let frame = frame.clone();
            self.send(core, CoreMsg::Deliver { frame, from });
        }
        self.deliver(frame, self.id);
    }

    /// Queues `frame` (broadcast by core `from`) to every matching local connection, once per
    /// connection.
    pub fn deliver(&self, frame: Arc<Frame>, from: usize) {
        let m = self.metrics();
        let ts = frame.ts();
        let n = self.fanout.borrow_mut().deliver(frame, from, m);
        if n > 0 {
            self.flush.note_frame(ts);
        }
        metrics::add(&m.delivered, n);
    }

    /// Handles what other cores already sent (at most [`BUS_BATCH`] messages) before this core
    /// sequences a publish of its own: a frame another core broadcast before acknowledging a
    /// publish must reach this core's subscribers before a message published after that ack
    /// (causal order across subjects; the bus task would handle it on its next turn, after).
    pub(super) fn catch_up_with_bus(&self) {
        if self.rx.is_empty() {
            return;
        }
        let mut n = 0;
        while let Ok(msg) = self.rx.try_recv() {
            n += self.handle(msg);
            if n >= BUS_BATCH {
                break;
            }
        }
    }
}
