//! The servers under test when the generator starts them itself: one ringcast (release binary),
//! N ringcast nodes in cluster mode sharing one `nats-server -js`, or nats-server with a
//! temporary config enabling WebSocket; plus their CPU time and memory from /proc, and the
//! generator's own open-file limit.
//!
//! Every child is killed when its [`Spawned`] drops (normal exit, `?` error paths and panics
//! unwinding through `run`), and is also asked by the kernel to die with SIGTERM if this process
//! dies first (`PR_SET_PDEATHSIG`, for SIGKILL / Ctrl-C where no destructor runs; the signal
//! follows the *thread* that spawned the child, which is the main thread here). A JetStream
//! store left behind that way is removed by the next run.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Spawned {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    pub description: String,
    /// Temporary files and directories removed after the process is gone (nats config, store).
    cleanup: Vec<PathBuf>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// When a started server counts as up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ready {
    /// It accepts TCP connections (nats-server listens only once it is ready).
    Listening,
    /// `GET /healthz` answers 200. ringcast binds its listeners before it joins the cluster
    /// (NATS connect, stream set-up, catch-up), so an accepted connection proves nothing there.
    Healthz,
}

impl Ready {
    /// Longest wait: ringcast may spend up to 30 s catching up with the stream at start.
    fn bound(self) -> Duration {
        match self {
            Ready::Listening => Duration::from_secs(15),
            Ready::Healthz => Duration::from_secs(45),
        }
    }
}

fn wait_ready(addr: SocketAddr, child: &mut Child, ready: Ready) -> std::io::Result<()> {
    let bound = ready.bound();
    let deadline = Instant::now() + bound;
    loop {
        let up = match ready {
            Ready::Listening => {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }
            Ready::Healthz => http_get(addr, "/healthz").is_some_and(|(code, _)| code == 200),
        };
        if up {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            return Err(std::io::Error::other(format!(
                "server exited during start-up: {st}"
            )));
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "server not ready ({ready:?}) within {bound:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_file(out_dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(out_dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// Where a cluster node finds the bench's JetStream, and the stream it uses there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterLink {
    pub nats_url: String,
    /// Fresh per run (`BENCH<pid>`), so a run never reads another run's messages.
    pub stream: String,
    /// Subjects live under `<prefix>.`; fresh per run too, because two streams of one
    /// nats-server may not overlap in subjects.
    pub prefix: String,
}

impl ClusterLink {
    /// Stream and prefix named after this process.
    pub fn for_run(nats_url: String, pid: u32) -> ClusterLink {
        ClusterLink {
            nats_url,
            stream: format!("BENCH{pid}"),
            prefix: format!("bench{pid}"),
        }
    }
}

/// Command line of one spawned ringcast: listen address and cores, the cluster flags when
/// clustered, then the user's `--server-arg`s.
pub fn ringcast_args(
    addr: SocketAddr,
    cores: usize,
    cluster: Option<&ClusterLink>,
    extra: &[String],
) -> Vec<String> {
    let mut v = vec![
        "--listen".to_string(),
        addr.to_string(),
        "--cores".to_string(),
        cores.to_string(),
    ];
    if let Some(c) = cluster {
        v.extend([
            "--nats-url".to_string(),
            c.nats_url.clone(),
            "--nats-stream".to_string(),
            c.stream.clone(),
            "--nats-prefix".to_string(),
            c.prefix.clone(),
        ]);
    }
    v.extend(extra.iter().cloned());
    v
}

/// Starts one ringcast; its stderr goes to `out_dir/<log>`.
pub fn spawn_ringcast(
    bin: &Path,
    cores: usize,
    cluster: Option<&ClusterLink>,
    extra: &[String],
    out_dir: &Path,
    log: &str,
) -> std::io::Result<Spawned> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let args = ringcast_args(addr, cores, cluster, extra);
    let mut cmd = Command::new(bin);
    cmd.args(&args);
    cmd.env(
        "RINGCAST_LOG",
        std::env::var("RINGCAST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd.stdout(Stdio::null()).stderr(log_file(out_dir, log));
    let description = format!("{} {}", bin.display(), args.join(" "));
    let name = bin.display().to_string();
    launch(&mut cmd, addr, &name, Ready::Healthz, description, None)
}

/// Spawns `cmd` and waits until it is `ready` on `addr` (killed if it never is).
fn start(
    cmd: &mut Command,
    addr: SocketAddr,
    name: &str,
    ready: Ready,
) -> std::io::Result<std::process::Child> {
    // SAFETY: prctl is async-signal-safe and touches only the forked child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| std::io::Error::other(format!("spawn {name}: {e}")))?;
    if let Err(e) = wait_ready(addr, &mut child, ready) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}

pub fn spawn_nats(bin: &str, out_dir: &Path) -> std::io::Result<Spawned> {
    let port = free_port()?;
    let ws_port = free_port()?;
    let conf =
        std::env::temp_dir().join(format!("ringcast-bench-nats-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        format!(
            "host: 127.0.0.1\nport: {port}\nmax_payload: 1MB\nwebsocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
        ),
    )?;
    let addr: SocketAddr = format!("127.0.0.1:{ws_port}").parse().expect("addr");
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf);
    cmd.stdout(log_file(out_dir, "nats-server.out.log"))
        .stderr(log_file(out_dir, "nats-server.log"));
    let description = format!(
        "{bin} -c {} (websocket 127.0.0.1:{ws_port}, no_tls)",
        conf.display()
    );
    launch(
        &mut cmd,
        addr,
        bin,
        Ready::Listening,
        description,
        Some(conf),
    )
}

/// Starts `cmd`, waits until it is `ready`, and wraps it as a [`Spawned`]; `cleanup` (a config
/// file or store directory) is removed when that drops, or at once on failure.
fn launch(
    cmd: &mut Command,
    addr: SocketAddr,
    name: &str,
    ready: Ready,
    description: String,
    cleanup: Option<PathBuf>,
) -> std::io::Result<Spawned> {
    let child = match start(cmd, addr, name, ready) {
        Ok(c) => c,
        Err(e) => {
            if let Some(p) = &cleanup {
                let _ = std::fs::remove_file(p);
                let _ = std::fs::remove_dir_all(p);
            }
            return Err(e);
        }
    };
    Ok(Spawned {
        pid: child.id(),
        child,
        addr,
        description,
        cleanup: cleanup.into_iter().collect(),
    })
}

/// Starts `nats-server -js` on a free loopback port with a fresh store directory under the
/// system temp dir (removed when the returned [`Spawned`] drops). `addr` is the client port.
pub fn spawn_jetstream(bin: &str, out_dir: &Path, log: &str) -> std::io::Result<Spawned> {
    remove_orphan_stores(&std::env::temp_dir());
    let port = free_port()?;
    let store = std::env::temp_dir().join(format!("ringcast-bench-js-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store)?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut cmd = Command::new(bin);
    cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store);
    cmd.stdout(Stdio::null()).stderr(log_file(out_dir, log));
    let description = format!("{bin} -js -a 127.0.0.1 -p {port} -sd {}", store.display());
    launch(
        &mut cmd,
        addr,
        bin,
        Ready::Listening,
        description,
        Some(store),
    )
}

/// Store directories `ringcast-bench-js-<pid>` of generators that are gone (killed with
/// SIGKILL or Ctrl-C, so no destructor removed them).
fn remove_orphan_stores(tmp: &Path) {
    let Ok(dir) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ringcast-bench-js-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Spawned {
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid)
    }

    pub fn rss_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmRSS:")
    }

    pub fn peak_rss_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmHWM:")
    }

    /// How the process ended, if it has (non-blocking).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the process to stop (SIGTERM) without waiting.
    fn terminate(&self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in &self.cleanup {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

/// Everything the generator started: the servers it measures (one ringcast, N cluster nodes,
/// or nats-server as the target) and, in cluster mode, the JetStream they share.
pub struct Servers {
    /// Measured servers. Declared first so they drop first: cluster nodes shut down while
    /// NATS is still up.
    pub nodes: Vec<Spawned>,
    /// The cluster's `nats-server -js` (not counted as server CPU / RSS).
    pub jetstream: Option<Spawned>,
}

/// Sum of `f` over `items`; `None` if any is unknown (a process gone, /proc unreadable).
fn sum_all<T, V: std::iter::Sum<V>>(items: &[T], f: impl Fn(&T) -> Option<V>) -> Option<V> {
    items
        .iter()
        .map(f)
        .collect::<Option<Vec<V>>>()
        .map(|v| v.into_iter().sum())
}

impl Servers {
    /// Starts `nodes` ringcast processes one after the other, each ready (`/healthz` 200)
    /// before the next starts; with `cluster`, first a JetStream they all join. Cluster runs
    /// log to `<out_dir>/<run>.nats-js.log` and `<run>.node<i>.log`, a plain run to
    /// `ringcast-server.log`. A failure part way drops (kills) whatever was already started.
    #[allow(clippy::too_many_arguments)]
    pub fn ringcast(
        bin: &Path,
        nodes: usize,
        cores: usize,
        cluster: bool,
        nats_bin: &str,
        extra: &[String],
        out_dir: &Path,
        run: &str,
    ) -> std::io::Result<Servers> {
        let mut s = Servers {
            nodes: Vec::new(),
            jetstream: None,
        };
        let link = if cluster {
            let js = spawn_jetstream(nats_bin, out_dir, &format!("{run}.nats-js.log"))?;
            let link = ClusterLink::for_run(format!("nats://{}", js.addr), std::process::id());
            s.jetstream = Some(js);
            Some(link)
        } else {
            None
        };
        for i in 0..nodes.max(1) {
            let log = if cluster {
                format!("{run}.node{i}.log")
            } else {
                "ringcast-server.log".to_string()
            };
            let n = spawn_ringcast(bin, cores, link.as_ref(), extra, out_dir, &log)
                .map_err(|e| std::io::Error::other(format!("node {i}: {e} (see {log})")))?;
            s.nodes.push(n);
        }
        Ok(s)
    }

    /// One server, no JetStream (nats-server as the target).
    pub fn single(s: Spawned) -> Servers {
        Servers {
            nodes: vec![s],
            jetstream: None,
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    pub fn description(&self) -> String {
        let mut d: Vec<String> = Vec::new();
        if let Some(js) = &self.jetstream {
            d.push(js.description.clone());
        }
        for n in &self.nodes {
            d.push(n.description.clone());
        }
        d.join(" + ")
    }

    /// Measured servers that have exited, as `node <i> (pid): <status>`.
    pub fn exited(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, n)| {
                n.exited()
                    .map(|st| format!("node {i} (pid {}): {st}", n.pid))
            })
            .collect()
    }

    /// CPU seconds of all measured servers together.
    pub fn cpu_seconds(&self) -> Option<f64> {
        sum_all(&self.nodes, Spawned::cpu_seconds)
    }

    /// RSS of all measured servers together, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        sum_all(&self.nodes, Spawned::rss_kib)
    }

    /// Sum of each server's own peak RSS, KiB (an upper bound of the peak of the sum).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        sum_all(&self.nodes, Spawned::peak_rss_kib)
    }

    /// Sum over the nodes of the `/metrics` series `name`; `None` unless every node answered
    /// and has it.
    pub fn metric_sum(&self, name: &str) -> Option<u64> {
        sum_all(&self.nodes, |n| {
            fetch_metrics(n.addr).and_then(|t| metric_sum(&t, name))
        })
    }

    /// CPU seconds of the cluster's nats-server.
    pub fn jetstream_cpu_seconds(&self) -> Option<f64> {
        self.jetstream.as_ref().and_then(Spawned::cpu_seconds)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        // Signal every node first so their shutdown graces run in parallel; each Spawned then
        // waits for (or kills) its own process, nodes before JetStream.
        for n in &self.nodes {
            n.terminate();
        }
    }
}

/// `GET /metrics` of a ringcast at `addr` (plain HTTP/1.1, `Connection: close`): the body, or
/// `None` when it cannot be read within a second.
pub fn fetch_metrics(addr: SocketAddr) -> Option<String> {
    http_get(addr, "/metrics").and_then(|(code, body)| (code == 200).then_some(body))
}

/// `GET path` (HTTP/1.1, `Connection: close`), bounded by a second per step: status and body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let t = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&addr, t).ok()?;
    s.set_read_timeout(Some(t)).ok()?;
    s.set_write_timeout(Some(t)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_http_response(&out)
}

/// Status code and body of a complete HTTP/1.x response (no chunked encoding).
fn parse_http_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head
        .strip_prefix("HTTP/1.")?
        .get(2..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((code, body.to_string()))
}

/// Sum of every sample of the Prometheus series `name` in `text` (all label sets; `# ` comment
/// lines and other series, including ones `name` is a prefix of, are ignored).
pub fn metric_sum(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()) {
            if let Ok(x) = v.parse::<f64>() {
                *found.get_or_insert(0) += x as u64;
            }
        }
    }
    found
}

/// utime + stime of a process, seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: [0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / tck)
}

pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(key)).and_then(|l| {
        l[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// Raises RLIMIT_NOFILE so `need` descriptors fit: soft to the hard limit, and the hard limit
/// itself (up to /proc/sys/fs/nr_open) when privileged. Children (a spawned server) inherit it.
pub fn raise_nofile(need: u64) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 0;
    }
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(rl.rlim_max);
    if rl.rlim_max < need {
        let want = libc::rlimit {
            rlim_cur: need.min(nr_open),
            rlim_max: need.min(nr_open),
        };
        // SAFETY: valid rlimit; failure (unprivileged) just leaves the old limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    let want = libc::rlimit {
        rlim_cur: rl.rlim_max,
        rlim_max: rl.rlim_max,
    };
    // SAFETY: valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        rl.rlim_max
    } else {
        rl.rlim_cur
    }
}

/// Busy and total CPU seconds of the whole machine (from /proc/stat), for spotting background
/// load that competes with the server and the generator.
pub fn machine_cpu() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(((total - idle) / tck, total / tck))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    #[test]
    fn a_plain_node_gets_listen_and_cores_then_the_extra_args() {
        let extra = vec!["--driver=legacy".to_string()];
        assert_eq!(
            ringcast_args(addr(), 2, None, &extra),
            [
                "--listen",
                "127.0.0.1:4000",
                "--cores",
                "2",
                "--driver=legacy"
            ]
        );
    }

    #[test]
    fn a_cluster_node_gets_the_nats_url_and_the_run_stream() {
        let link = ClusterLink::for_run("nats://127.0.0.1:4222".into(), 77);
        assert_eq!(link.stream, "BENCH77");
        assert_eq!(link.prefix, "bench77");
        assert_eq!(
            ringcast_args(addr(), 1, Some(&link), &[]),
            [
                "--listen",
                "127.0.0.1:4000",
                "--cores",
                "1",
                "--nats-url",
                "nats://127.0.0.1:4222",
                "--nats-stream",
                "BENCH77",
                "--nats-prefix",
                "bench77"
            ]
        );
    }

    #[test]
    fn metric_sum_adds_every_label_set_of_one_series() {
        let text = "# HELP ringcast_cluster_conflicts_total x\n\
                    # TYPE ringcast_cluster_conflicts_total counter\n\
                    ringcast_cluster_conflicts_total 7\n\
                    ringcast_cluster_conflicts_total_other 100\n\
                    ringcast_published_total{core=\"0\"} 3\n\
                    ringcast_published_total{core=\"1\"} 4\n";
        assert_eq!(
            metric_sum(text, "ringcast_cluster_conflicts_total"),
            Some(7)
        );
        assert_eq!(metric_sum(text, "ringcast_published_total"), Some(7));
        assert_eq!(metric_sum(text, "ringcast_missing"), None);
    }

    #[test]
    fn http_status_and_body_are_read_from_a_response() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 11\r\n\r\ncatching up";
        assert_eq!(parse_http_response(raw), Some((503, "catching up".into())));
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\n\r\nok"),
            Some((200, "ok".into()))
        );
        assert_eq!(parse_http_response(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(parse_http_response(b"garbage\r\n\r\n"), None);
    }

    #[test]
    fn sums_over_servers_are_unknown_when_one_is_unknown() {
        assert_eq!(sum_all(&[1u64, 2, 3], |x| Some(*x)), Some(6));
        assert_eq!(sum_all(&[1u64, 2, 3], |x| (*x != 2).then_some(*x)), None);
    }

    fn nats_bin() -> String {
        if Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server".into()
        } else {
            "nats-server".into()
        }
    }

    #[test]
    fn spawned_jetstream_is_stopped_and_its_store_removed_on_drop() {
        let out = std::env::temp_dir().join(format!("ringcast-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let js = spawn_jetstream(&nats_bin(), &out, "js.log").expect("nats-server -js starts");
        let (pid, store) = (js.pid, js.cleanup[0].clone());
        assert!(store.is_dir());
        assert!(TcpStream::connect(js.addr).is_ok());
        drop(js);
        assert!(!store.exists(), "store dir left behind");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "nats-server still running"
        );
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn stores_of_dead_generators_are_removed_and_live_ones_kept() {
        let tmp =
            std::env::temp_dir().join(format!("ringcast-bench-orphans-{}", std::process::id()));
        // pid_max is at most 2^22, so this pid cannot be running.
        let dead = tmp.join("ringcast-bench-js-4294967");
        let live = tmp.join(format!("ringcast-bench-js-{}", std::process::id()));
        let other = tmp.join("something-else-1");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        remove_orphan_stores(&tmp);
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(other.exists());
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
