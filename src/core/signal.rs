//! Core-local wake-ups: [`LocalNotify`] (a flag one task waits on) and [`yield_now`].
//!
//! Single-threaded by construction (`Cell`, no atomics): only tasks of the owning core touch
//! them. Waking a core from another thread is the bus's doorbell, not this.

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A single-waiter, core-local wake-up flag (the flusher, the scheduler and the accept loop
/// wait on one each).
#[derive(Default)]
pub struct LocalNotify {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl LocalNotify {
    /// Wakes the waiter (or makes its next wait return at once).
    #[inline]
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// True when notified and not yet waited for.
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Waits for the next `notify`.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Yields once to the scheduler so other tasks (socket I/O) run.
pub async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
