//! `Scheduler`: the owner core's side of scheduled publishes (`POST /publish` with `"at"`,
//! `GET /schedule`, `DELETE /schedule/{id}`).
//!
//! Owns the core's pending [`Schedules`] (subjects it owns), their persistence in the store,
//! and the wake-up of the core's scheduler task when an earlier one is added. Answers each
//! [`ScheduleOp`] with a [`ScheduleReply`]; firing a due publish is the core's job (through
//! its sequencer or the cluster). Core-local: touched only by the owning core's thread.

use super::signal::LocalNotify;
use crate::auth::{Grant, Refusal};
use crate::schedule::{parse_id, schedule_id, ScheduleError, Scheduled, Schedules};
use crate::store::{Durability, HistoryStore, Recovered};
use std::rc::Rc;
use std::sync::Arc;

/// Requests a subject's owner core serves for scheduled publishes.
#[derive(Debug)]
pub enum ScheduleOp {
    /// Publish at `at_ms` (ms since the Unix epoch).
    Add(Scheduled),
    /// Cancel schedule `n` if `grant` may publish its subject (`None`: auth off).
    Cancel {
        /// Core-local schedule number.
        n: u64,
        /// The caller's grant.
        grant: Option<Arc<Grant>>,
    },
    /// List pending schedules of a subject (JSON body).
    List {
        /// Concrete subject.
        subject: Box<str>,
    },
}

/// Answers of the owner core.
#[derive(Debug)]
pub enum ScheduleReply {
    /// The schedule id, or why not.
    Added(Result<String, ScheduleError>),
    /// Cancelled, or why not.
    Cancelled(Result<(), CancelError>),
    /// `GET /schedule` body.
    Listed(Vec<u8>),
}

/// Why a cancel failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelError {
    /// No such pending schedule.
    NotFound,
    /// The caller may not publish its subject.
    Forbidden(Refusal),
}

/// One core's scheduled publishes.
pub struct Scheduler {
    core: usize,
    pending: Schedules,
    store: Arc<dyn HistoryStore>,
    /// Wakes the core's scheduler task when a schedule is added (shared with that task, which
    /// waits on it without borrowing the scheduler).
    wake: Rc<LocalNotify>,
}

impl Scheduler {
    /// Core `core`'s scheduler, with the schedules the store recovered for it. A schedule
    /// recovered under another core's number (the core count changed) is renumbered, and
    /// stored again under its new id.
    /// `max_bytes`: this core's share of `--max-schedule-bytes` (what is recovered is kept
    /// even past it; new ones wait for room).
    pub fn new(
        core: usize,
        store: Arc<dyn HistoryStore>,
        recovered: &mut Recovered,
        max_bytes: usize,
    ) -> Scheduler {
        let mut pending = Schedules::with_max_bytes(max_bytes);
        for (old, sch) in std::mem::take(&mut recovered.schedules) {
            let n = parse_id(&old).filter(|(c, _)| *c == core).map(|(_, n)| n);
            let kept = pending.restore(n, sch.clone());
            if Some(kept) != n {
                store.delete_schedule(&old);
                let new = schedule_id(core, kept);
                store.put_schedule(&new, &sch);
                tracing::warn!(old, new, "scheduled publish renumbered after a restart");
            }
        }
        Scheduler {
            core,
            pending,
            store,
            wake: Rc::default(),
        }
    }

    /// What the scheduler task waits on to re-plan its sleep.
    pub fn wake(&self) -> Rc<LocalNotify> {
        self.wake.clone()
    }

    /// Serves one request.
    pub fn apply(&mut self, op: ScheduleOp) -> ScheduleReply {
        match op {
            ScheduleOp::Add(s) => ScheduleReply::Added(self.add(s)),
            ScheduleOp::Cancel { n, grant } => ScheduleReply::Cancelled(self.cancel(n, grant)),
            ScheduleOp::List { subject } => ScheduleReply::Listed(self.list(&subject)),
        }
    }

    fn add(&mut self, s: Scheduled) -> Result<String, ScheduleError> {
        let durable = self.store.durability() != Durability::None;
        let copy = durable.then(|| s.clone());
        let id = schedule_id(self.core, self.pending.add(s)?);
        if let Some(s) = copy {
            self.store.put_schedule(&id, &s);
        }
        self.wake.notify();
        Ok(id)
    }

    fn cancel(&mut self, n: u64, grant: Option<Arc<Grant>>) -> Result<(), CancelError> {
        let s = self.pending.get(n).ok_or(CancelError::NotFound)?;
        if let Some(Err(r)) = grant.map(|g| g.check_publish(&s.subject)) {
            return Err(CancelError::Forbidden(r));
        }
        self.pending.remove(n).map_err(|_| CancelError::NotFound)?;
        self.store.delete_schedule(&schedule_id(self.core, n));
        Ok(())
    }

    /// `{"subject":S,"scheduled":[{"schedule_id","at","msg_id"?,"data"}..]}`
    fn list(&self, subject: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"subject\":");
        serde_json::to_writer(&mut out, subject).expect("Vec write");
        out.extend_from_slice(b",\"scheduled\":[");
        for (i, (n, s)) in self.pending.of_subject(subject).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let id = schedule_id(self.core, n);
            out.extend_from_slice(
                format!("{{\"schedule_id\":\"{id}\",\"at\":{},", s.at_ms).as_bytes(),
            );
            if let Some(m) = &s.msg_id {
                out.extend_from_slice(b"\"msg_id\":");
                serde_json::to_writer(&mut out, &**m).expect("Vec write");
                out.push(b',');
            }
            out.extend_from_slice(b"\"data\":");
            out.extend_from_slice(&s.data);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// Takes the publishes due at `now_ms`, with the ids to delete when they are sequenced.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<(String, Scheduled)> {
        let due = self.pending.take_due(now_ms);
        due.into_iter()
            .map(|(n, s)| (schedule_id(self.core, n), s))
            .collect()
    }

    /// Bytes the pending publishes are charged (`--max-schedule-bytes`).
    pub fn bytes(&self) -> usize {
        self.pending.bytes()
    }

    /// When the next pending publish is due (ms since the Unix epoch).
    pub fn next_due(&self) -> Option<u64> {
        self.pending.next_due()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn scheduler() -> Scheduler {
        Scheduler::new(
            3,
            Arc::new(MemoryStore),
            &mut Recovered::default(),
            usize::MAX,
        )
    }

    fn at(subject: &str, at_ms: u64) -> Scheduled {
        Scheduled {
            subject: subject.into(),
            data: b"{\"p\":1}".to_vec().into(),
            msg_id: Some("m".into()),
            at_ms,
        }
    }

    fn added(r: ScheduleReply) -> String {
        match r {
            ScheduleReply::Added(Ok(id)) => id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_added_schedule_is_named_by_its_core_and_listed_under_its_subject() {
        let mut s = scheduler();
        let id = added(s.apply(ScheduleOp::Add(at("a", 50))));
        assert_eq!(parse_id(&id).map(|(c, _)| c), Some(3));
        assert!(s.wake.is_set(), "the scheduler task re-plans its sleep");
        let body = match s.apply(ScheduleOp::List {
            subject: "a".into(),
        }) {
            ScheduleReply::Listed(b) => b,
            other => panic!("{other:?}"),
        };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["scheduled"][0]["schedule_id"], id.as_str());
        assert_eq!(v["scheduled"][0]["at"], 50);
        assert_eq!(v["scheduled"][0]["msg_id"], "m");
        assert_eq!(v["scheduled"][0]["data"]["p"], 1);
        assert_eq!(s.next_due(), Some(50));
    }

    #[test]
    fn a_cancelled_schedule_never_fires_and_cannot_be_cancelled_twice() {
        let mut s = scheduler();
        let id = added(s.apply(ScheduleOp::Add(at("a", 50))));
        let (_, n) = parse_id(&id).unwrap();
        let cancel = |s: &mut Scheduler| match s.apply(ScheduleOp::Cancel { n, grant: None }) {
            ScheduleReply::Cancelled(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(cancel(&mut s), Ok(()));
        assert_eq!(cancel(&mut s), Err(CancelError::NotFound));
        assert!(s.take_due(1_000_000).is_empty());
    }

    #[test]
    fn due_publishes_come_out_in_time_order_with_their_ids() {
        let mut s = scheduler();
        let late = added(s.apply(ScheduleOp::Add(at("b", 90))));
        let early = added(s.apply(ScheduleOp::Add(at("a", 10))));
        assert!(s.take_due(5).is_empty());
        let due: Vec<(String, u64)> = s
            .take_due(100)
            .into_iter()
            .map(|(id, x)| (id, x.at_ms))
            .collect();
        assert_eq!(due, vec![(early, 10), (late, 90)]);
        assert_eq!(s.next_due(), None);
    }
}
