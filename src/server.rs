//! Start-up and shutdown of a node: one named, pinned thread per core, each running its own
//! monoio runtime (io_uring when the kernel has it, else the legacy epoll driver, logged), each
//! with its own SO_REUSEPORT listener and its own shard of the node. An address another process
//! already listens on is refused at start-up (SO_REUSEPORT would otherwise share it).
//!
//! Owns the core threads, and wires the node together: the bus between cores, the store and
//! the cluster bridge answering through it (`CoreSink`), and on each core its [`Core`] and
//! its [`Transport`]. [`Server::start`] runs on the caller's thread; everything after runs on
//! the core threads. Shutdown is a [`CoreMsg::Shutdown`] to every core: stop accepting, close
//! WebSockets with 1001, wait (bounded) for them to flush, exit. A drain
//! ([`crate::core::drain`]) comes before it: clients are sent elsewhere, then it shuts down.

use crate::bus::owner_of;
use crate::cluster::{ClusterError, ClusterSink, Fetched, Replicated};
use crate::config::{Config, DriverChoice};
use crate::core::settings::Settings;
use crate::core::{Core, CoreBus, CoreMsg, Node, Reply};
use crate::proto::{PubAck, PubError};
use crate::store::{
    Durability, DurableStore, HistoryStore, MemoryStore, Retention, StoreConfig, StoreSink,
    StoredRange,
};
use crate::transport::Transport;
use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// io_uring submission queue entries per core.
const URING_ENTRIES: u32 = 4096;

/// A running node.
pub struct Server {
    addr: SocketAddr,
    node: Arc<Node>,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

/// A non-blocking TCP socket for `addr` with SO_REUSEADDR (a restart is not blocked by the
/// previous run's connections in TIME_WAIT), and SO_REUSEPORT if `reuse_port`.
fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(reuse_port)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn listen(s: Socket, backlog: u32) -> io::Result<std::net::TcpListener> {
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(s.into())
}

/// One SO_REUSEPORT listener per core on the same address, refusing an address another
/// process already serves.
///
/// SO_REUSEPORT alone would let a second ringcast (of the same user) bind the port of a running
/// one, and the kernel would split new connections between the two nodes. So the first
/// listener is bound and listening *without* SO_REUSEPORT: that fails if any other socket
/// listens on the address (reuseport or not; for port 0 the kernel picks a port nobody
/// holds). Only then is SO_REUSEPORT turned on for it (the kernel looks at it on each later
/// bind), and the other cores' listeners join it. Of two nodes started at the same instant,
/// only the first to listen gets past that: there is no window in which both pass the check.
fn bind_all(
    addr: SocketAddr,
    backlog: u32,
    cores: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let first = socket(addr, false)?;
    first.bind(&addr.into()).map_err(|e| in_use(e, addr))?;
    let first = listen(first, backlog).map_err(|e| in_use(e, addr))?;
    socket2::SockRef::from(&first).set_reuse_port(true)?;
    let target = first.local_addr()?;
    let mut listeners = Vec::with_capacity(cores);
    listeners.push(first);
    for _ in 1..cores {
        let s = socket(target, true)?;
        s.bind(&target.into()).map_err(|e| in_use(e, addr))?;
        listeners.push(listen(s, backlog)?);
    }
    Ok(listeners)
}

/// A clearer error for an address that is taken.
fn in_use(e: io::Error, addr: SocketAddr) -> io::Error {
    if e.kind() != io::ErrorKind::AddrInUse {
        return io::Error::new(e.kind(), format!("--listen {addr}: {e}"));
    }
    io::Error::new(
        e.kind(),
        format!(
            "--listen {addr}: the address is already in use (another ringcast, or another program, listens on it): stop that, or choose another --listen ({e})"
        ),
    )
}

/// The CPUs this process may run on, in order (for pinning core i to the i-th allowed CPU).
/// Shared with the load generator, which pins its threads the same way.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

impl Server {
    /// Binds the listeners and starts one thread per core. Returns once every core is serving.
    pub fn start(cfg: Config) -> io::Result<Server> {
        let cores = cfg.core_count();
        let uring = choose_driver(cfg.driver);
        let verifier = verifier(&cfg)?;
        if cfg.data_dir.is_some() && cfg.nats_url.is_some() {
            return Err(io::Error::other(
                "--data-dir and --nats-url exclude each other: in cluster mode the JetStream stream is the durable log",
            ));
        }
        let listeners = bind_all(cfg.listen, cfg.backlog, cores)?;
        let addr = listeners[0].local_addr()?;
        let (bus, receivers) = CoreBus::new(cores);
        let store = open_store(&cfg, cores, &bus)?;
        let cluster = start_cluster(&cfg, &bus).inspect_err(|_| store.close())?;
        let driver = if uring { "io_uring" } else { "epoll" };
        let settings = Settings {
            generation: 0,
            cfg,
            verifier,
        };
        let node = Arc::new(Node::new(settings, bus, driver, store, cluster));
        let cpus = allowed_cpus();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<io::Result<()>>(cores);
        let mut threads = Vec::with_capacity(cores);
        for (id, (rx, listener)) in receivers.into_iter().zip(listeners).enumerate() {
            let core = CoreThread {
                id,
                node: node.clone(),
                rx,
                listener,
                cpu: cpus.get(id % cpus.len().max(1)).copied(),
                uring,
                ready: ready_tx.clone(),
            };
            threads.push(core.spawn()?);
        }
        drop(ready_tx);
        for _ in 0..cores {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a core thread exited during start-up")),
            }
        }
        Ok(Server {
            addr,
            node,
            threads,
        })
    }

    /// The bound address (the real port when `--listen` used port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `io_uring` or `epoll`.
    pub fn driver(&self) -> &'static str {
        self.node.driver
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.threads.len()
    }

    /// The node's shared state (for a [`crate::reload::Reloader`], admin pages).
    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// A handle that can stop the node from any thread (e.g. a signal handler thread).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.node.clone())
    }

    /// Begins graceful shutdown (idempotent).
    pub fn shutdown(&self) {
        self.stopper().stop();
    }

    /// Begins a drain (idempotent); [`Server::join`] returns once it is over.
    pub fn drain(&self) {
        self.stopper().drain();
    }

    /// Waits for every core to finish, then flushes and closes the store.
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("a core thread panicked")),
            }
        }
        self.node.store.close();
        result
    }
}

/// io_uring when asked for or, by default, when the kernel has it; else the legacy epoll
/// driver, logged (`#[monoio::main]` would fall back silently). True: io_uring.
fn choose_driver(choice: DriverChoice) -> bool {
    match choice {
        DriverChoice::Legacy => false,
        DriverChoice::Uring => true,
        DriverChoice::Auto => {
            let ok = monoio::utils::detect_uring();
            if !ok {
                tracing::warn!(
                    "io_uring is not available in this kernel; using the legacy epoll driver"
                );
            }
            ok
        }
    }
}

/// The token verifier (`None`: auth off), refusing to serve a non-loopback address without
/// auth unless told to. Logs which it is, and why no auth is allowed when it is off.
fn verifier(cfg: &Config) -> io::Result<Option<crate::auth::Verifier>> {
    let verifier = crate::auth::Verifier::new(&cfg.auth_config()?).map_err(io::Error::other)?;
    let listen = cfg.listen;
    match &verifier {
        Some(v) => tracing::info!("auth is on: clients need a JWT ({})", v.describe()),
        None if listen.ip().is_loopback() => tracing::info!(
            "auth is off (no --jwt-secret or --jwt-public-key): allowed because {listen} is loopback; anyone on this machine can read and publish"
        ),
        None if cfg.insecure_no_auth => tracing::warn!(
            "auth is off on {listen}, allowed by --insecure-no-auth: anyone who can reach it can read and publish"
        ),
        None => {
            return Err(io::Error::other(format!(
                "refusing to listen on {listen} without auth: configure --jwt-secret or --jwt-public-key, or pass --insecure-no-auth"
            )))
        }
    }
    Ok(verifier)
}

/// What one core thread starts with.
struct CoreThread {
    id: usize,
    node: Arc<Node>,
    rx: crossbeam_channel::Receiver<CoreMsg>,
    listener: std::net::TcpListener,
    /// The CPU to pin to, if any is known.
    cpu: Option<usize>,
    uring: bool,
    /// Told once the core serves (or why it could not start).
    ready: crossbeam_channel::Sender<io::Result<()>>,
}

impl CoreThread {
    /// Starts the thread `ringcast-core-<id>`: pinned, with its own monoio runtime.
    fn spawn(self) -> io::Result<JoinHandle<io::Result<()>>> {
        std::thread::Builder::new()
            .name(format!("ringcast-core-{}", self.id))
            .spawn(move || {
                let (id, ready) = (self.id, self.ready.clone());
                if let Some(cpu) = self.cpu {
                    if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
                        tracing::warn!(core = id, cpu, "could not pin core thread: {e:?}");
                    }
                }
                let uring = self.uring;
                let run = run_core(id, self.node, self.rx, self.listener, self.ready);
                let res = if uring {
                    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .with_entries(URING_ENTRIES)
                        .enable_timer()
                        .build()
                        .map(|mut rt| rt.block_on(run))
                } else {
                    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .map(|mut rt| rt.block_on(run))
                };
                res.unwrap_or_else(|e| {
                    let _ = ready.send(Err(io::Error::new(e.kind(), format!("runtime: {e}"))));
                    Err(e)
                })
            })
    }
}

/// The node's history store: durable under `--data-dir`, else memory only.
fn open_store(cfg: &Config, cores: usize, bus: &Arc<CoreBus>) -> io::Result<Arc<dyn HistoryStore>> {
    let durability = cfg.effective_durability();
    let Some(dir) = &cfg.data_dir else {
        if durability != Durability::None {
            return Err(io::Error::other(format!(
                "--durability {durability:?} needs --data-dir"
            )));
        }
        return Ok(Arc::new(MemoryStore));
    };
    if durability == Durability::None {
        tracing::warn!(
            "--durability none: --data-dir {} is not used",
            dir.display()
        );
        return Ok(Arc::new(MemoryStore));
    }
    let store_cfg = StoreConfig {
        durability,
        fsync_interval: Duration::from_millis(cfg.fsync_interval_ms.max(1)),
        retention: Retention::parse(&cfg.retention).map_err(io::Error::other)?,
        max_backlog: cfg.store_max_backlog.max(1),
    };
    let sink = Arc::new(CoreSink(bus.clone()));
    let store = DurableStore::open(dir, store_cfg, cores, sink)?;
    tracing::info!(dir = %dir.display(), ?durability, "durable store open");
    Ok(Arc::new(store))
}

/// Cluster mode: connects the JetStream bridge and waits (bounded) until it has consumed what
/// the stream held at start, so the node starts with every subject's latest value and seq.
fn start_cluster(cfg: &Config, bus: &Arc<CoreBus>) -> io::Result<Option<crate::cluster::Bridge>> {
    /// Longest start-up wait for the initial catch-up; after it the node serves anyway and
    /// `/healthz` says it is still catching up.
    const CATCH_UP_WAIT: Duration = Duration::from_secs(30);
    let Some(cc) = cfg.cluster_config() else {
        return Ok(None);
    };
    let url = cc.url.clone();
    let sink = Arc::new(CoreSink(bus.clone()));
    let bridge = crate::cluster::Bridge::start(cc, sink)
        .map_err(|e| io::Error::other(format!("--nats-url {url}: {e}")))?;
    let deadline = Instant::now() + CATCH_UP_WAIT;
    while !bridge
        .status()
        .caught_up
        .load(std::sync::atomic::Ordering::Acquire)
    {
        if Instant::now() >= deadline {
            tracing::warn!("still catching up with the cluster stream; serving anyway");
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    tracing::info!(%url, "cluster mode: JetStream bridge up");
    Ok(Some(bridge))
}

/// Stops a node from any thread.
#[derive(Clone)]
pub struct Stopper(Arc<Node>);

impl Stopper {
    /// Begins graceful shutdown (idempotent).
    pub fn stop(&self) {
        self.0.stop();
    }

    /// Begins a drain for a rolling deploy (idempotent): clients are sent elsewhere with a
    /// retry hint, then the node stops (see [`crate::core::drain`]).
    pub fn drain(&self) {
        crate::core::drain::begin(&self.0);
    }
}

async fn run_core(
    id: usize,
    node: Arc<Node>,
    rx: crossbeam_channel::Receiver<CoreMsg>,
    listener: std::net::TcpListener,
    ready: crossbeam_channel::Sender<io::Result<()>>,
) -> io::Result<()> {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(e.kind(), format!("listener: {e}"))));
            return Err(e);
        }
    };
    let grace = Duration::from_millis(node.cfg.shutdown_grace_ms);
    let core = Core::new(id, node, rx);
    let transport = Transport::new(core.clone());
    monoio::spawn(core.clone().run_bus());
    monoio::spawn(core.clone().run_outbox());
    monoio::spawn(core.clone().run_sweeper());
    monoio::spawn(core.clone().run_schedules());
    monoio::spawn(transport.clone().run_flusher());
    if id == 0 && core.cfg().demo_feed {
        monoio::spawn(crate::demo::run(core.clone()));
    }
    let _ = ready.send(Ok(()));
    drop(ready);
    let mut spare = SpareFd::open();
    let mut last_warn: Option<Instant> = None;
    loop {
        monoio::select! {
            _ = core.shutdown.wait() => break,
            r = listener.accept() => match r {
                Ok((stream, _peer)) => {
                    monoio::spawn(transport.clone().serve(stream));
                }
                Err(e) => {
                    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(core = id, "accept failed: {e}");
                        last_warn = Some(Instant::now());
                    }
                    if out_of_fds {
                        // Out of descriptors: answer the waiting client 503 with the spare fd
                        // instead of leaving it hanging in the backlog.
                        if spare.shed(listener.as_raw_fd()) {
                            crate::metrics::add(&core.metrics().rejected, 1);
                            continue;
                        }
                    }
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    // Stop listening now, not when the last reference goes: an accept still in flight on
    // io_uring holds the socket until the ring is torn down, asynchronously, after this thread
    // ends; until then the address stays taken (a restart would be refused) and connections
    // could queue where no one accepts them.
    // SAFETY: shutdown(2) of our own listening descriptor, still open here.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    drop(listener);
    let deadline = Instant::now() + grace;
    while core.connection_count() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// One descriptor held in reserve so that, when the process runs out of descriptors, a waiting
/// connection can still be accepted and told 503 rather than left hanging (the libev/nginx
/// trick).
struct SpareFd(i32);

impl SpareFd {
    fn open() -> SpareFd {
        // SAFETY: plain open(2) of a constant path.
        SpareFd(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })
    }

    /// Frees the spare, accepts one connection, answers 503, closes it, takes the spare back.
    fn shed(&mut self, listener: i32) -> bool {
        if self.0 < 0 {
            *self = SpareFd::open();
            return false;
        }
        // SAFETY: closing our own descriptor; accept4/send/close on the fds we own.
        let shed = unsafe {
            libc::close(self.0);
            let fd = libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if fd >= 0 {
                let resp = crate::http::error(
                    crate::proto::ErrorCode::Overloaded,
                    "server out of file descriptors",
                    false,
                );
                libc::send(
                    fd,
                    resp.as_ptr() as *const libc::c_void,
                    resp.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                );
                libc::close(fd);
            }
            fd >= 0
        };
        *self = SpareFd::open();
        shed
    }
}

/// The store's and the cluster bridge's answers, delivered to the cores over the bus:
/// replicated messages to the subject's owner core, answers to the core that asked.
struct CoreSink(Arc<CoreBus>);

impl StoreSink for CoreSink {
    fn durable(&self, core: usize, upto: u64, ok: bool) {
        self.0.send(core, CoreMsg::Durable { upto, ok });
    }

    fn read(&self, core: usize, token: u64, range: StoredRange) {
        let reply = Reply::Stored(range);
        self.0.send(core, CoreMsg::Reply { token, reply });
    }
}

impl ClusterSink for CoreSink {
    fn replicated(&self, msg: Replicated) {
        let owner = owner_of(&msg.subject, self.0.cores());
        self.0.send(owner, CoreMsg::Replicated(msg));
    }

    /// Read your writes: the ack goes through the subject's owner core, behind the replicated
    /// message the consumer queued there first, so whatever the client asks after the ack (a
    /// `/history` served by the owner itself included) sees the message.
    fn published(
        &self,
        subject: &str,
        from: usize,
        token: u64,
        result: Result<PubAck, ClusterError>,
    ) {
        let result = result.map_err(|e| match e {
            ClusterError::Unavailable => PubError::ClusterUnavailable,
            ClusterError::Conflict => PubError::ClusterConflict,
            ClusterError::Rejected => PubError::ClusterRejected,
        });
        let reply = Reply::Published(result);
        let owner = owner_of(subject, self.0.cores());
        if owner == from {
            self.0.send(from, CoreMsg::Reply { token, reply });
        } else {
            self.0.send(
                owner,
                CoreMsg::Relay {
                    to: from,
                    token,
                    reply,
                },
            );
        }
    }

    fn fetched(&self, from: usize, token: u64, result: Result<Fetched, ClusterError>) {
        let reply = Reply::Fetched(result);
        self.0.send(from, CoreMsg::Reply { token, reply });
    }
}
