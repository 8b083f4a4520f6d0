//! The server under test when the generator starts it itself: ringcast (release binary) or
//! nats-server with a temporary config enabling WebSocket, plus its CPU time and memory from
//! /proc, and the generator's own open-file limit.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Spawned {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    pub description: String,
    conf: Option<PathBuf>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(addr: SocketAddr, child: &mut Child) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            return Err(std::io::Error::other(format!(
                "server exited during start-up: {st}"
            )));
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(
                "server did not start listening within 15 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_file(out_dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(out_dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

pub fn spawn_ringcast(
    bin: &Path,
    cores: usize,
    extra: &[String],
    out_dir: &Path,
) -> std::io::Result<Spawned> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--cores")
        .arg(cores.to_string())
        .args(extra);
    cmd.env(
        "RINGCAST_LOG",
        std::env::var("RINGCAST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd.stdout(Stdio::null())
        .stderr(log_file(out_dir, "ringcast-server.log"));
    let description = format!(
        "{} --listen {addr} --cores {cores} {}",
        bin.display(),
        extra.join(" ")
    );
    let child = start_listening(&mut cmd, addr, &bin.display().to_string())?;
    let pid = child.id();
    Ok(Spawned {
        child,
        addr,
        pid,
        description: description.trim().to_string(),
        conf: None,
    })
}

/// Spawns `cmd` and waits until it accepts connections on `addr` (killed if it never does).
fn start_listening(
    cmd: &mut Command,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<std::process::Child> {
    let mut child = cmd
        .spawn()
        .map_err(|e| std::io::Error::other(format!("spawn {name}: {e}")))?;
    if let Err(e) = wait_listening(addr, &mut child) {
        let _ = child.kill();
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
    let child = start_listening(&mut cmd, addr, bin)?;
    let pid = child.id();
    Ok(Spawned {
        child,
        addr,
        pid,
        description: format!(
            "{bin} -c {} (websocket 127.0.0.1:{ws_port}, no_tls)",
            conf.display()
        ),
        conf: Some(conf),
    })
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
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(c) = &self.conf {
            let _ = std::fs::remove_file(c);
        }
    }
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
