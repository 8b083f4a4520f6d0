//! Subscriber side: `--threads` generator threads (`bench-<i>`), each a pinned monoio runtime
//! (io_uring, legacy epoll fallback) owning a share of the client connections. The main thread
//! drives them through a command channel per thread ([`Cmd`]: connect a batch, snapshot the
//! counters, shut down); a control task on each runtime polls it. Every connection is one task
//! ([`conn`]) on its thread; it records into that thread's [`Stats`], which only that thread
//! touches (snapshots are copies sent back over a channel).
//!
//! Submodules: [`handshake`] (TCP connect and upgrade), [`conn`] (a connection's read / write
//! loop), [`session`] (what the protocol frames mean: subscribe on `hello`, acks, deliveries),
//! [`seq`] (per-subject sequence checks), [`stats`] (the counters).

mod conn;
mod handshake;
mod seq;
mod session;
mod stats;

pub use stats::{new_hist, Stats};

use crate::wire::Endpoint;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

/// What one client connection does after the handshake.
pub enum Role {
    /// Subscribes to `subjects`; `dense` = one of them is a wildcard covering `n_subjects`.
    Sub {
        subjects: Vec<String>,
        dense: Option<usize>,
    },
    /// Only holds the connection open (answers pings).
    Idle,
}

pub struct ConnSpec {
    pub role: Role,
    pub src: Option<Ipv4Addr>,
    /// Index of the server (cluster node) to connect to, into the endpoints given to [`start`].
    pub node: usize,
}

pub enum Cmd {
    Connect {
        specs: Vec<ConnSpec>,
        concurrency: usize,
        read_buf: usize,
        timeout: Duration,
    },
    Snapshot {
        hist: bool,
        reply: Sender<Stats>,
    },
    Shutdown,
}

/// What the tasks of one generator thread share.
struct Ctx {
    /// One per server (cluster node); a connection uses `eps[spec.node]`.
    eps: Vec<Endpoint>,
    stats: RefCell<Stats>,
}

/// Which I/O driver the generator's runtimes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    Auto,
    Uring,
    Legacy,
}

/// Starts `n` pinned runtime threads; returns their command senders and the driver used.
pub fn start(
    n: usize,
    eps: Vec<Endpoint>,
    driver: Driver,
    pin: bool,
) -> (Vec<Sender<Cmd>>, &'static str) {
    let uring = match driver {
        Driver::Uring => true,
        Driver::Legacy => false,
        Driver::Auto => monoio::utils::detect_uring(),
    };
    let cpus = ringcast::server::allowed_cpus();
    let mut senders = Vec::new();
    for i in 0..n {
        let (tx, rx) = crossbeam_channel::unbounded();
        senders.push(tx);
        let eps = eps.clone();
        let cpu = cpus.get(i % cpus.len().max(1)).copied().filter(|_| pin);
        std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    let _ = monoio::utils::bind_to_cpu_set([cpu]);
                }
                let ctx = Rc::new(Ctx {
                    eps,
                    stats: RefCell::new(Stats::default()),
                });
                run_thread(ctx, rx, uring);
            })
            .expect("spawn generator thread");
    }
    (senders, if uring { "io_uring" } else { "epoll" })
}

/// Body of one generator thread: a runtime of the chosen driver running [`control`].
fn run_thread(ctx: Rc<Ctx>, rx: Receiver<Cmd>, uring: bool) {
    if uring {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(4096)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => rt.block_on(control(ctx, rx)),
            Err(e) => eprintln!("io_uring runtime failed: {e}"),
        }
    } else {
        match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => rt.block_on(control(ctx, rx)),
            Err(e) => eprintln!("epoll runtime failed: {e}"),
        }
    }
}

async fn control(ctx: Rc<Ctx>, rx: Receiver<Cmd>) {
    loop {
        match rx.try_recv() {
            Ok(Cmd::Connect {
                specs,
                concurrency,
                read_buf,
                timeout,
            }) => {
                monoio::spawn(connect_all(
                    ctx.clone(),
                    specs,
                    concurrency.max(1),
                    read_buf,
                    timeout,
                ));
            }
            Ok(Cmd::Snapshot { hist, reply }) => {
                let snap = ctx.stats.borrow_mut().snapshot(hist);
                let _ = reply.send(snap);
            }
            Ok(Cmd::Shutdown) | Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => monoio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Starts one task per spec, at most `concurrency` of them not yet ready at a time.
async fn connect_all(
    ctx: Rc<Ctx>,
    specs: Vec<ConnSpec>,
    concurrency: usize,
    read_buf: usize,
    timeout: Duration,
) {
    let inflight = Rc::new(Cell::new(0usize));
    for spec in specs {
        while inflight.get() >= concurrency {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        inflight.set(inflight.get() + 1);
        monoio::spawn(conn::conn_task(
            ctx.clone(),
            spec,
            inflight.clone(),
            read_buf,
            timeout,
        ));
    }
}
