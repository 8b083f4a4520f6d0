//! The [`Bridge`] handle, the one part of cluster mode the cores hold; it queues
//! [`super::Request`]s for the bridge thread.
//!
//! Owns the sending end of the request channel, the stop signal and the join handle of thread
//! `ringcast-nats`. Its methods run on whichever thread calls them (the cores for `publish` and
//! `fetch`, the server for `start` and `shutdown`); none of them blocks except `start` (until the
//! bridge is connected or has failed) and `shutdown` (until the thread has ended). The requests
//! are received by the bridge thread's main loop (`super::bridge`).

use super::{bridge, ClusterConfig, ClusterSink, ClusterStatus, Fetch, PubReq, Request};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Handle to the bridge thread. Cheap calls from any thread; dropping it shuts the thread down.
pub struct Bridge {
    tx: mpsc::UnboundedSender<Request>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    status: Arc<ClusterStatus>,
}

impl Bridge {
    /// Spawns thread `ringcast-nats` running a current-thread tokio runtime with async-nats;
    /// connects (bounded by `connect_timeout`), creates or checks the stream (subjects
    /// `<prefix>.>`, file storage, `max_msgs_per_subject`, `duplicate_window`, `allow_direct`)
    /// and starts consuming. Fails when the first connection or the stream set-up fails.
    pub fn start(cfg: ClusterConfig, sink: Arc<dyn ClusterSink>) -> Result<Bridge, String> {
        let status = Arc::new(ClusterStatus::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let st = status.clone();
        let thread = std::thread::Builder::new()
            .name("ringcast-nats".into())
            .spawn(move || bridge::thread_main(cfg, sink, st, rx, stop_rx, ready_tx))
            .map_err(|e| format!("spawn ringcast-nats: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Bridge {
                tx,
                stop: Some(stop_tx),
                thread: Some(thread),
                status,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err("ringcast-nats thread died during start".into())
            }
        }
    }

    /// Non-blocking, callable from any thread: queue a publish of `data` (raw JSON) on ringcast
    /// subject `subject`; answered through [`ClusterSink::published`] with `from` and `token`.
    ///
    /// `Unavailable` comes at once when NATS is not connected or
    /// [`MAX_PENDING_PUBLISHES`](super::MAX_PENDING_PUBLISHES) are pending, and after
    /// [`REQUEST_TIMEOUT`](super::REQUEST_TIMEOUT) without an ack. After a timeout the message
    /// may still have been stored (it is then replicated like any other); its generated
    /// `Nats-Msg-Id` keeps a re-send of that same publish from being stored twice, and a client
    /// that retries with its own `msg_id` gets the original back as a duplicate.
    pub fn publish(
        &self,
        subject: &str,
        data: &[u8],
        msg_id: Option<&str>,
        from: usize,
        token: u64,
    ) {
        let req = PubReq {
            subject: subject.into(),
            data: Bytes::copy_from_slice(data),
            msg_id: msg_id.map(Into::into),
            from,
            token,
        };
        // A send error means the bridge thread is gone (shutdown): nobody would answer anyway.
        let _ = self.tx.send(Request::Publish(req));
    }

    /// Non-blocking, callable from any thread: queue a fetch; answered through
    /// [`ClusterSink::fetched`] with `from` and `token`.
    pub fn fetch(&self, what: Fetch, from: usize, token: u64) {
        let _ = self.tx.send(Request::Fetch { what, from, token });
    }

    /// Live counters and flags.
    pub fn status(&self) -> &Arc<ClusterStatus> {
        &self.status
    }

    /// Stops the thread and joins it. Queued publishes are answered `Unavailable`; publishes and
    /// fetches in flight at that moment, and requests made after it, get no answer.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
