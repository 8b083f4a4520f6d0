//! The `ringcast` binary run as a child process, for tests of what only the binary does (its
//! start-up log, signals, exit codes).

use std::net::SocketAddr;

/// [`spawn_ringcast`] of a two-core node on a port of the kernel's choosing, on `driver`
/// (`uring` or `legacy`), with `extra` flags.
pub fn spawn_node(driver: &str, extra: &[&str]) -> (std::process::Child, SocketAddr, String) {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "2",
        "--driver",
        driver,
    ];
    args.extend_from_slice(extra);
    spawn_ringcast(&args)
}

/// Runs the `ringcast` binary with `args` (logging at info) and waits for its "listening"
/// line: the child, its address, and that log line. The rest of its log is drained.
pub fn spawn_ringcast<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
) -> (std::process::Child, SocketAddr, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(args)
        .env("RINGCAST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (addr, line) = loop {
        let line = lines.next().expect("ringcast logs before exiting").unwrap();
        if line.contains("ringcast listening") {
            let a = line.split("addr=").nth(1).unwrap();
            break (a.split_whitespace().next().unwrap().parse().unwrap(), line);
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr, line)
}

/// A `ringcast` binary started by a test, listening on `addr`; killed and reaped on drop.
pub struct Spawned {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `ringcast` binary with `args`, `RINGCAST_LOG` set to `log` (`None`: unset, the
/// binary's default filter), and reads its log until it listens or exits. Returns the running
/// process, or how it exited; and every log line up to then (the "listening" line included).
/// Once it listens the rest of its log is drained.
pub fn ringcast_start_up<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    log: Option<&str>,
) -> (Result<Spawned, std::process::ExitStatus>, Vec<String>) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.args(args).stderr(std::process::Stdio::piped());
    match log {
        Some(filter) => cmd.env("RINGCAST_LOG", filter),
        None => cmd.env_remove("RINGCAST_LOG"),
    };
    let mut child = cmd.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let addr = line
            .contains("ringcast listening")
            .then(|| {
                line.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .flatten();
        log.push(line);
        if let Some(addr) = addr {
            std::thread::spawn(move || for _ in lines {});
            return (Ok(Spawned { child, addr }), log);
        }
    }
    (Err(child.wait().unwrap()), log)
}
