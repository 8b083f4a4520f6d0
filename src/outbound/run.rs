//! `Run`: consecutive frames of one subject, their WebSocket bytes copied once per core into
//! one contiguous, append-only buffer, so that every subscriber that got a stretch of them is
//! written that stretch with one iovec over memory all of them share.
//!
//! The kernel's send path costs per iovec segment, and a buffer sent to a thousand sockets in
//! a row stays in cache: one segment over a shared run is what lets a loopback fan-out carry
//! twice the messages of one segment per frame. The run also keeps the frames themselves, so a
//! queue item or a session-log entry `(run, from, to)` still names every message it carries
//! (for resume, spilling and counting).
//!
//! Bytes are only ever appended past the end, and the buffer never moves: a slice handed out
//! stays valid and unchanged while the run is alive, also under a write in flight.
//! Core-local (`Rc`, `Cell`): touched only by the owning core's thread.

use super::LocalFrame;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Frames up to this size go into runs; bigger ones are written from their own buffer (a copy
/// would cost more than the segment saves).
pub const RUN_FRAME_MAX: usize = 2048;

/// Capacity of the first run of a subject, and the least any run gets.
pub const RUN_MIN_BYTES: usize = 1024;

/// Capacity runs grow to for a busy subject: a write's worth (64 KiB of frames is hundreds
/// of 100-byte ticks) without pinning much when a session log holds a few frames of it.
pub(super) const RUN_MAX_BYTES: usize = 32 << 10;

/// Indexes of frames within a run are `u16`: a run holds at most this many.
const RUN_MAX_FRAMES: usize = u16::MAX as usize;

/// A frame's place in a run: the run, its index there, and its length (so that queueing it
/// on a thousand connections does not look it up a thousand times).
pub struct RunSlot {
    /// The run.
    pub run: Rc<Run>,
    /// The frame's index in it.
    pub index: u16,
    /// The frame's bytes.
    pub len: usize,
}

impl RunSlot {
    /// The place of frame `index` of `run`.
    pub fn new(run: Rc<Run>, index: u16) -> RunSlot {
        let len = run.bytes(index, index + 1).len();
        RunSlot { run, index, len }
    }
}

/// One subject's consecutive frames on one core, and their bytes end to end.
pub struct Run {
    /// `cap` bytes, of which the first `len` are written and never change again.
    buf: Box<[Cell<u8>]>,
    len: Cell<usize>,
    /// The frames, in order, and where each one's bytes end in `buf`.
    frames: RefCell<Vec<(LocalFrame, u32)>>,
}

impl Run {
    /// An empty run of `cap` bytes.
    pub fn new(cap: usize) -> Rc<Run> {
        Rc::new(Run {
            buf: (0..cap).map(|_| Cell::new(0)).collect(),
            len: Cell::new(0),
            frames: RefCell::new(Vec::new()),
        })
    }

    /// Bytes this run can hold.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Frames appended.
    pub fn len(&self) -> usize {
        self.frames.borrow().len()
    }

    /// True when nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `frame`'s WebSocket bytes; its index in the run, or `None` when it does not fit
    /// (the caller starts a new run).
    pub fn push(&self, frame: &LocalFrame) -> Option<u16> {
        let bytes = frame.ws_bytes();
        let at = self.len.get();
        let mut frames = self.frames.borrow_mut();
        if at + bytes.len() > self.buf.len() || frames.len() >= RUN_MAX_FRAMES {
            return None;
        }
        let dst = &self.buf[at..at + bytes.len()];
        // SAFETY: `dst` is `bytes.len()` cells (the layout of `u8`) past `len`, which nothing
        // has read or handed out yet; a `Cell` may be written through a shared reference.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.as_ptr() as *mut u8, bytes.len())
        };
        self.len.set(at + bytes.len());
        frames.push((frame.clone(), (at + bytes.len()) as u32));
        Some((frames.len() - 1) as u16)
    }

    /// The bytes of frames `from..to`, end to end.
    pub fn bytes(&self, from: u16, to: u16) -> &[u8] {
        let frames = self.frames.borrow();
        let start = match from {
            0 => 0,
            i => frames[i as usize - 1].1 as usize,
        };
        let end = frames[to as usize - 1].1 as usize;
        debug_assert!(start <= end && end <= self.len.get());
        let cells = &self.buf[start..end];
        // SAFETY: `Cell<u8>` has the layout of `u8`, and these bytes are never written again
        // (appends only go past `len`, and `end <= len`), so reading them as `&[u8]` for as
        // long as `self` is borrowed aliases no write.
        unsafe { std::slice::from_raw_parts(cells.as_ptr() as *const u8, cells.len()) }
    }

    /// The `msg` JSON of frame `i` (SSE writes it with its own framing).
    pub fn json(&self, i: u16) -> &[u8] {
        let frames = self.frames.borrow();
        let json = frames[i as usize].0.json();
        // SAFETY: the bytes live in the frame's own heap buffer, which never moves or changes
        // and which this run keeps alive for its whole life (frames are never removed); only
        // the `Vec` of handles may grow, which does not move what they point at.
        unsafe { std::slice::from_raw_parts(json.as_ptr(), json.len()) }
    }

    /// Frame `i`.
    pub fn frame(&self, i: u16) -> LocalFrame {
        self.frames.borrow()[i as usize].0.clone()
    }
}

/// The capacity of the run that follows one of `prev_cap` bytes: double when it filled
/// within one tick of the core clock (a busy subject: fewer, larger runs), else half (a quiet
/// subject keeps small runs, so what session logs pin of it stays small).
pub fn next_capacity(prev_cap: usize, filled_fast: bool) -> usize {
    let cap = if filled_fast {
        prev_cap.saturating_mul(2)
    } else {
        prev_cap / 2
    };
    cap.clamp(RUN_MIN_BYTES, RUN_MAX_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use std::sync::Arc;

    fn frame(seq: u64) -> LocalFrame {
        Rc::new(Arc::new(Frame::encode("a", seq, 0, b"12345", None)))
    }

    #[test]
    fn frames_are_laid_end_to_end_and_stay_put_while_more_are_appended() {
        let run = Run::new(1024);
        let fs: Vec<_> = (1..=3).map(frame).collect();
        assert_eq!(run.push(&fs[0]), Some(0));
        let first = run.bytes(0, 1);
        let (ptr, want) = (first.as_ptr(), first.to_vec());
        assert_eq!(run.push(&fs[1]), Some(1));
        assert_eq!(run.push(&fs[2]), Some(2));
        assert_eq!(run.bytes(0, 1).as_ptr(), ptr, "the buffer never moves");
        assert_eq!(run.bytes(0, 1), &want[..]);
        let all = [fs[0].ws_bytes(), fs[1].ws_bytes(), fs[2].ws_bytes()].concat();
        assert_eq!(run.bytes(0, 3), &all[..]);
        assert_eq!(run.bytes(1, 3), &all[fs[0].wire_len()..]);
        assert_eq!(run.frame(2).seq(), 3);
    }

    #[test]
    fn a_frame_that_does_not_fit_is_refused() {
        let f = frame(1);
        let run = Run::new(f.wire_len() * 2);
        assert!(run.push(&f).is_some() && run.push(&f).is_some());
        assert_eq!(run.push(&f), None);
        assert_eq!(run.len(), 2);
    }

    #[test]
    fn busy_subjects_get_larger_runs_and_quiet_ones_smaller() {
        assert_eq!(next_capacity(RUN_MIN_BYTES, true), 2 * RUN_MIN_BYTES);
        assert_eq!(next_capacity(RUN_MAX_BYTES, true), RUN_MAX_BYTES);
        assert_eq!(next_capacity(8192, false), 4096);
        assert_eq!(next_capacity(RUN_MIN_BYTES, false), RUN_MIN_BYTES);
    }
}
