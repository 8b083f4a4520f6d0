//! One child process the generator started and measures or depends on ([`Spawned`]): starting
//! it, waiting until it is ready, and stopping it. Every child is killed when its `Spawned`
//! drops (normal exit, `?` error paths and panics unwinding through the run), and is also
//! asked by the kernel to die with SIGTERM if this process dies first (`PR_SET_PDEATHSIG`, for
//! SIGKILL / Ctrl-C where no destructor runs; the signal follows the *thread* that spawned the
//! child, which is the main thread here: only the main thread starts servers).

use super::http::http_get;
use crate::procfs;
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
    pub(super) cleanup: Vec<PathBuf>,
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A file in `out_dir` for a child's output (discarded if it cannot be created).
pub fn log_file(out_dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(out_dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// When a started server counts as up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
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

/// Starts `cmd`, waits until it is `ready`, and wraps it as a [`Spawned`]; `cleanup` (a config
/// file or store directory) is removed when that drops, or at once on failure.
pub fn launch(
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

impl Spawned {
    pub fn cpu_seconds(&self) -> Option<f64> {
        procfs::cpu_seconds(self.pid)
    }

    pub fn rss_kib(&self) -> Option<u64> {
        procfs::status_kib(self.pid, "VmRSS:")
    }

    pub fn peak_rss_kib(&self) -> Option<u64> {
        procfs::status_kib(self.pid, "VmHWM:")
    }

    /// How the process ended, if it has (non-blocking).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the process to stop (SIGTERM) without waiting.
    pub fn terminate(&self) {
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
