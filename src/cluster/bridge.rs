//! The bridge thread `ringcast-nats`: its current-thread tokio runtime, the set-up at start
//! (connect, create or verify the stream, start the consumer) and the main loop that turns the
//! cores' requests into publish and fetch tasks.
//!
//! Owns the request receiver, the publish [`Lanes`], the fetch permits and the connection's
//! event handler ([`ConnEvents`]); everything here runs on the bridge thread (the event handler
//! on async-nats' tasks, which run on that same runtime).

use super::lanes::Lanes;
use super::state::{BridgeState, MsgIds, Views};
use super::Request;
use super::{consumer, fetch, publish, wire};
use super::{ClusterConfig, ClusterError, ClusterSink, ClusterStatus};
use super::{MAX_FETCHES, MAX_PENDING_PUBLISHES, RECONNECT_DELAY_MAX};
use super::{REQUEST_TIMEOUT, STREAM_CREATE_TRIES};
use crate::os::random_u64;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, Context};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

/// The body of thread `ringcast-nats`: reports on `ready` whether the set-up worked, then runs
/// the main loop until `stop` (or the handle's channel closing).
pub(super) fn thread_main(
    cfg: ClusterConfig,
    sink: Arc<dyn ClusterSink>,
    status: Arc<ClusterStatus>,
    rx: mpsc::UnboundedReceiver<Request>,
    stop: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("tokio runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let state = match connect(cfg, sink, status).await {
            Ok(s) => {
                let _ = ready.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        run(state, rx, stop).await;
    });
}

/// Connects, sets up the stream, starts the consumer and returns the shared state (bridge
/// thread, at start).
async fn connect(
    cfg: ClusterConfig,
    sink: Arc<dyn ClusterSink>,
    status: Arc<ClusterStatus>,
) -> Result<Arc<BridgeState>, String> {
    let (generation, reconnected) = watch::channel(0u64);
    let events = Arc::new(ConnEvents {
        status: status.clone(),
        generation,
        lost: AtomicBool::new(false),
    });
    let client = connect_client(&cfg, connect_options(&cfg, events)).await?;
    status.connected.store(true, Ordering::Release);
    let js = jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .ack_timeout(REQUEST_TIMEOUT)
        .build(client.clone());
    let stream = get_or_create_stream(&js, stream_config(&cfg)).await?;
    check_stream(&cfg, &stream.cached_info().config)?;
    let state = Arc::new(BridgeState {
        prefix: cfg.prefix,
        client,
        js,
        stream,
        sink,
        status,
        views: Views::default(),
        ids: MsgIds::new(random_u64()),
        consumed: Notify::new(),
    });
    tokio::spawn(consumer::consume(state.clone(), reconnected));
    Ok(state)
}

/// Follows the connection's events into [`ClusterStatus`], and tells the stream consumer about
/// every reconnection by bumping `generation` (the consumer then resumes on a new consumer).
struct ConnEvents {
    status: Arc<ClusterStatus>,
    generation: watch::Sender<u64>,
    /// Disconnected since the last `Connected`: the next one is a reconnection.
    lost: AtomicBool,
}

impl ConnEvents {
    fn on(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                self.status.connected.store(true, Ordering::Release);
                if self.lost.swap(false, Ordering::AcqRel) {
                    self.status.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.generation.send_modify(|g| *g += 1);
                }
                tracing::info!("nats: connected");
            }
            async_nats::Event::Disconnected => {
                self.status.connected.store(false, Ordering::Release);
                self.lost.store(true, Ordering::Release);
                tracing::warn!("nats: disconnected");
            }
            other => tracing::debug!("nats: {other}"),
        }
    }
}

/// The client's options: bounded connect and requests, reconnecting for ever.
fn connect_options(cfg: &ClusterConfig, events: Arc<ConnEvents>) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name("ringcast")
        .connection_timeout(cfg.connect_timeout)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let events = events.clone();
            async move { events.on(event) }
        })
}

/// The pause before reconnect attempt `attempts` (async-nats counts from 1): 2, 4 .. ms up to
/// [`RECONNECT_DELAY_MAX`].
fn reconnect_delay(attempts: usize) -> Duration {
    let ms = 1u64 << attempts.min(16);
    Duration::from_millis(ms).min(RECONNECT_DELAY_MAX)
}

/// The first connection, bounded by `connect_timeout`.
async fn connect_client(
    cfg: &ClusterConfig,
    opts: async_nats::ConnectOptions,
) -> Result<async_nats::Client, String> {
    tokio::time::timeout(cfg.connect_timeout, opts.connect(cfg.url.as_str()))
        .await
        .map_err(|_| {
            format!(
                "nats {}: no connection within {:?}",
                cfg.url, cfg.connect_timeout
            )
        })?
        .map_err(|e| format!("nats {}: {e}", cfg.url))
}

/// The stream the bridge creates when there is none.
fn stream_config(cfg: &ClusterConfig) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![wire::all_subjects(&cfg.prefix)],
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        max_messages_per_subject: cfg.max_msgs_per_subject,
        duplicate_window: cfg.duplicate_window,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates the stream or gets the existing one, asking up to [`STREAM_CREATE_TRIES`] times.
async fn get_or_create_stream(
    js: &Context,
    config: stream::Config,
) -> Result<stream::Stream, String> {
    // Nodes starting together race to create the stream: the losers' create fails ("subjects
    // overlap" / "name in use") although the stream now exists, so ask again (bounded).
    let name = config.name.clone();
    let mut tries = 0;
    loop {
        tries += 1;
        let r = tokio::time::timeout(REQUEST_TIMEOUT, js.get_or_create_stream(config.clone()))
            .await
            .map_err(|_| format!("stream {name}: no answer within {REQUEST_TIMEOUT:?}"))?;
        match r {
            Ok(s) => return Ok(s),
            Err(e) if tries < STREAM_CREATE_TRIES => {
                tracing::debug!("stream {name}: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(20 * tries as u64)).await;
            }
            Err(e) => return Err(format!("stream {name}: {e}")),
        }
    }
}

/// Refuses a stream the bridge cannot work with (other subjects, no direct get); a stream that
/// keeps or dedups differently from this node's settings is used as it is, with a warning.
fn check_stream(cfg: &ClusterConfig, have: &stream::Config) -> Result<(), String> {
    let wanted = wire::all_subjects(&cfg.prefix);
    if !have.subjects.contains(&wanted) {
        return Err(format!(
            "stream {} exists with subjects {:?}, not {wanted:?}",
            cfg.stream, have.subjects
        ));
    }
    if !have.allow_direct {
        return Err(format!("stream {} exists without allow_direct", cfg.stream));
    }
    if have.max_messages_per_subject != cfg.max_msgs_per_subject
        || have.duplicate_window != cfg.duplicate_window
    {
        tracing::warn!(
            "stream {} keeps {} msgs/subject and dedups {:?} (this node asked {} and {:?}); the stream wins",
            cfg.stream,
            have.max_messages_per_subject,
            have.duplicate_window,
            cfg.max_msgs_per_subject,
            cfg.duplicate_window
        );
    }
    Ok(())
}

/// The bridge's main loop: requests in, lanes advanced as publishes finish, until stopped.
async fn run(
    sh: Arc<BridgeState>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    mut stop: oneshot::Receiver<()>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Box<str>>();
    let fetches = Arc::new(Semaphore::new(MAX_FETCHES));
    let mut lanes = Lanes::new(MAX_PENDING_PUBLISHES);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            req = rx.recv() => match req {
                None => break,
                Some(Request::Publish(p)) => {
                    if !sh.connected() || lanes.is_full() {
                        let err = Err(ClusterError::Unavailable);
                        sh.sink.published(&p.subject, p.from, p.token, err);
                    } else if let Some(head) = lanes.push(p) {
                        publish::spawn(&sh, head, &done_tx);
                    }
                }
                Some(Request::Fetch { what, from, token }) => {
                    match fetches.clone().try_acquire_owned() {
                        Ok(permit) => fetch::spawn(&sh, permit, what, from, token),
                        Err(_) => sh.sink.fetched(from, token, Err(ClusterError::Unavailable)),
                    }
                }
            },
            Some(subject) = done_rx.recv() => {
                if let Some(next) = lanes.done(&subject) {
                    publish::spawn(&sh, next, &done_tx);
                }
            }
        }
    }
    // Stopping: whatever is still queued will not be sent.
    for p in lanes.into_queued() {
        let err = Err(ClusterError::Unavailable);
        sh.sink.published(&p.subject, p.from, p.token, err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ClusterConfig {
        ClusterConfig {
            stream: "RC".into(),
            prefix: "rc".into(),
            replicas: 3,
            max_msgs_per_subject: 100,
            duplicate_window: Duration::from_secs(30),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn the_stream_holds_every_subject_on_file_with_direct_get() {
        let c = stream_config(&cfg());
        assert_eq!(c.name, "RC");
        assert_eq!(c.subjects, ["rc.>"]);
        assert_eq!(c.storage, StorageType::File);
        assert_eq!(c.num_replicas, 3);
        assert_eq!(c.max_messages_per_subject, 100);
        assert_eq!(c.duplicate_window, Duration::from_secs(30));
        assert!(c.allow_direct);
    }

    #[test]
    fn the_stream_the_bridge_creates_is_one_it_accepts() {
        assert_eq!(check_stream(&cfg(), &stream_config(&cfg())), Ok(()));
    }

    #[test]
    fn a_stream_without_our_subjects_or_direct_get_is_refused() {
        let other = stream::Config {
            subjects: vec!["other.>".into()],
            ..stream_config(&cfg())
        };
        let e = check_stream(&cfg(), &other).unwrap_err();
        assert!(e.contains("subjects"), "{e}");
        let no_direct = stream::Config {
            allow_direct: false,
            ..stream_config(&cfg())
        };
        let e = check_stream(&cfg(), &no_direct).unwrap_err();
        assert!(e.contains("allow_direct"), "{e}");
    }

    #[test]
    fn a_stream_with_other_retention_or_dedup_window_is_used_as_it_is() {
        let more = stream::Config {
            subjects: vec!["audit.>".into(), "rc.>".into()],
            max_messages_per_subject: 5,
            duplicate_window: Duration::from_secs(1),
            ..stream_config(&cfg())
        };
        assert_eq!(check_stream(&cfg(), &more), Ok(()));
    }

    fn events() -> (ConnEvents, watch::Receiver<u64>) {
        let (generation, rx) = watch::channel(0);
        let ev = ConnEvents {
            status: Arc::new(ClusterStatus::default()),
            generation,
            lost: AtomicBool::new(false),
        };
        (ev, rx)
    }

    #[test]
    fn the_first_connection_is_not_a_reconnection() {
        let (ev, rx) = events();
        ev.on(async_nats::Event::Connected);
        assert!(ev.status.connected.load(Ordering::Relaxed));
        assert_eq!(ev.status.reconnects.load(Ordering::Relaxed), 0);
        assert_eq!(*rx.borrow(), 0);
    }

    #[test]
    fn a_connection_after_a_loss_counts_and_wakes_the_consumer() {
        let (ev, rx) = events();
        ev.on(async_nats::Event::Connected);
        ev.on(async_nats::Event::Disconnected);
        assert!(!ev.status.connected.load(Ordering::Relaxed));
        ev.on(async_nats::Event::Connected);
        assert!(ev.status.connected.load(Ordering::Relaxed));
        assert_eq!(ev.status.reconnects.load(Ordering::Relaxed), 1);
        assert_eq!(*rx.borrow(), 1);
        ev.on(async_nats::Event::Connected);
        assert_eq!(*rx.borrow(), 1, "a repeated Connected is not another one");
    }

    #[test]
    fn other_events_change_nothing() {
        let (ev, rx) = events();
        ev.on(async_nats::Event::Connected);
        ev.on(async_nats::Event::SlowConsumer(1));
        ev.on(async_nats::Event::LameDuckMode);
        assert!(ev.status.connected.load(Ordering::Relaxed));
        assert_eq!(*rx.borrow(), 0);
    }

    #[test]
    fn reconnecting_backs_off_up_to_the_max() {
        assert_eq!(reconnect_delay(1), Duration::from_millis(2));
        assert_eq!(reconnect_delay(2), Duration::from_millis(4));
        assert_eq!(reconnect_delay(8), Duration::from_millis(256));
        assert_eq!(reconnect_delay(9), RECONNECT_DELAY_MAX);
        assert_eq!(reconnect_delay(usize::MAX), RECONNECT_DELAY_MAX);
    }
}
