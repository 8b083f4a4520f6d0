//! `Schedules`: publishes accepted now and sequenced later (`POST /publish` with `"at"`).
//!
//! Owned by the subject's owner core (the one that will sequence the message): a time-ordered
//! map of pending publishes plus an index by id. The core's scheduler task sleeps until the
//! next due time and fires due entries through the normal publish path. Core-local, no locks.
//! Schedule ids name their core (`<core:02x><n:x>`) so a cancel reaches the right one.

use std::collections::BTreeMap;

/// Most pending scheduled publishes per core (bounded: each holds its data until due).
pub const MAX_PENDING_PER_CORE: usize = 100_000;

/// What a pending publish is charged besides its subject, data and id: its entries in the
/// time-ordered map (key and `Scheduled`, with the B-tree's slack) and in the index by id.
pub const SCHEDULE_FIXED_BYTES: usize = 128;

/// One pending publish.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// Concrete subject.
    pub subject: Box<str>,
    /// Raw JSON data.
    pub data: Box<[u8]>,
    /// De-duplication id, applied when it is sequenced.
    pub msg_id: Option<Box<str>>,
    /// Due time, ms since the Unix epoch.
    pub at_ms: u64,
}

impl Scheduled {
    /// The bytes it is charged against `--max-schedule-bytes`.
    pub fn cost(&self) -> usize {
        let id = self.msg_id.as_ref().map_or(0, |m| m.len());
        SCHEDULE_FIXED_BYTES + self.subject.len() + self.data.len() + id
    }
}

/// Why a schedule request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleError {
    /// Too many pending on this core.
    Full,
    /// The pending publishes of this core would hold too many bytes (`--max-schedule-bytes`).
    TooManyBytes,
    /// No such pending schedule (unknown, fired or cancelled).
    NotFound,
}

/// Pending scheduled publishes of one core, bounded by count and by bytes.
pub struct Schedules {
    by_time: BTreeMap<(u64, u64), Scheduled>,
    by_id: hashbrown::HashMap<u64, u64>,
    next: u64,
    /// What the pending publishes are charged ([`Scheduled::cost`]).
    bytes: usize,
    max_bytes: usize,
}

impl Default for Schedules {
    fn default() -> Self {
        Schedules::with_max_bytes(usize::MAX)
    }
}

impl Schedules {
    /// No pending publishes; at most `max_bytes` of them (as [`Scheduled::cost`] counts).
    pub fn with_max_bytes(max_bytes: usize) -> Schedules {
        Schedules {
            by_time: BTreeMap::new(),
            by_id: hashbrown::HashMap::new(),
            next: 0,
            bytes: 0,
            max_bytes,
        }
    }

    /// Bytes the pending publishes are charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a publish due at `at_ms`; returns its number (the id's core-local part).
    pub fn add(&mut self, s: Scheduled) -> Result<u64, ScheduleError> {
        if self.by_time.len() >= MAX_PENDING_PER_CORE {
            return Err(ScheduleError::Full);
        }
        if self.bytes.saturating_add(s.cost()) > self.max_bytes {
            return Err(ScheduleError::TooManyBytes);
        }
        self.bytes += s.cost();
        self.next += 1;
        let n = self.next;
        self.by_id.insert(n, s.at_ms);
        self.by_time.insert((s.at_ms, n), s);
        Ok(n)
    }

    /// Re-adds a publish recovered from the store under its old number when that is free
    /// (same core count as before the restart), else under a new one; returns the number.
    pub fn restore(&mut self, n: Option<u64>, s: Scheduled) -> u64 {
        let n = match n {
            Some(n) if n > 0 && !self.by_id.contains_key(&n) => n,
            _ => self.next + 1,
        };
        self.next = self.next.max(n);
        self.bytes += s.cost();
        self.by_id.insert(n, s.at_ms);
        self.by_time.insert((s.at_ms, n), s);
        n
    }

    /// The pending publish `n`.
    pub fn get(&self, n: u64) -> Option<&Scheduled> {
        let at = self.by_id.get(&n)?;
        self.by_time.get(&(*at, n))
    }

    /// Cancels `n`.
    pub fn remove(&mut self, n: u64) -> Result<Scheduled, ScheduleError> {
        let at = self.by_id.remove(&n).ok_or(ScheduleError::NotFound)?;
        let s = self
            .by_time
            .remove(&(at, n))
            .ok_or(ScheduleError::NotFound)?;
        self.bytes -= s.cost();
        Ok(s)
    }

    /// Removes and returns everything due at or before `now_ms`, in due order, with numbers.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<(u64, Scheduled)> {
        let later = self.by_time.split_off(&(now_ms.saturating_add(1), 0));
        let due = std::mem::replace(&mut self.by_time, later);
        due.into_iter()
            .map(|((_, n), s)| {
                self.by_id.remove(&n);
                self.bytes -= s.cost();
                (n, s)
            })
            .collect()
    }

    /// When the next publish is due.
    pub fn next_due(&self) -> Option<u64> {
        self.by_time.keys().next().map(|(at, _)| *at)
    }

    /// Pending publishes of `subject`, in due order, with their numbers.
    pub fn of_subject<'a>(
        &'a self,
        subject: &'a str,
    ) -> impl Iterator<Item = (u64, &'a Scheduled)> + 'a {
        self.by_time
            .iter()
            .filter(move |(_, s)| &*s.subject == subject)
            .map(|((_, n), s)| (*n, s))
    }

    /// Number pending.
    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }
}

/// The public id of schedule `n` on `core`.
pub fn schedule_id(core: usize, n: u64) -> String {
    format!("{core:02x}{n:x}")
}

/// Splits a public id into (core, n).
pub fn parse_id(id: &str) -> Option<(usize, u64)> {
    if id.len() < 3 || id.len() > 18 {
        return None;
    }
    let core = usize::from_str_radix(id.get(..2)?, 16).ok()?;
    let n = u64::from_str_radix(id.get(2..)?, 16).ok()?;
    Some((core, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(subject: &str, at_ms: u64) -> Scheduled {
        Scheduled {
            subject: subject.into(),
            data: b"1".to_vec().into(),
            msg_id: None,
            at_ms,
        }
    }

    #[test]
    fn due_publishes_come_out_in_time_order() {
        let mut q = Schedules::default();
        let b = q.add(s("b", 20)).unwrap();
        let a = q.add(s("a", 10)).unwrap();
        q.add(s("c", 30)).unwrap();
        assert_eq!(q.next_due(), Some(10));
        let due: Vec<_> = q.take_due(20).into_iter().map(|x| x.1.subject).collect();
        assert_eq!(due, vec!["a".into(), "b".into()] as Vec<Box<str>>);
        assert!(q.get(a).is_none() && q.get(b).is_none());
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn pending_publishes_are_bounded_by_their_bytes() {
        let one = s("a", 10).cost();
        let mut q = Schedules::with_max_bytes(2 * one);
        let n = q.add(s("a", 10)).unwrap();
        q.add(s("b", 20)).unwrap();
        assert_eq!(q.bytes(), 2 * one);
        assert_eq!(q.add(s("c", 30)).unwrap_err(), ScheduleError::TooManyBytes);
        q.remove(n).unwrap();
        q.add(s("c", 30)).unwrap();
        q.take_due(100);
        assert_eq!(
            q.bytes(),
            0,
            "fired and cancelled ones give their bytes back"
        );
    }

    #[test]
    fn cancel_removes_and_ids_round_trip() {
        let mut q = Schedules::default();
        let n = q.add(s("a", 10)).unwrap();
        assert_eq!(q.of_subject("a").count(), 1);
        assert!(q.remove(n).is_ok());
        assert_eq!(q.remove(n).unwrap_err(), ScheduleError::NotFound);
        assert!(q.take_due(100).is_empty());
        assert_eq!(q.restore(Some(7), s("r", 5)), 7);
        assert_eq!(
            q.restore(Some(7), s("r", 5)),
            8,
            "a taken number gets a new one"
        );
        assert!(q.add(s("x", 1)).unwrap() > 8);
        let id = schedule_id(1, 255);
        assert_eq!(parse_id(&id), Some((1, 255)));
        assert_eq!(parse_id("zz1"), None);
        assert_eq!(parse_id(""), None);
    }
}
