//! Spawning nats-server, in its two roles: the comparison target (`--target nats`, a temporary
//! config that enables WebSocket without TLS) and the JetStream a cluster run's ringcast nodes
//! share (`-js` with a fresh store directory). Both count as ready once they accept TCP. Also
//! removes the stores that generators killed without a chance to clean up left behind. Called
//! from the main thread only.

use super::spawned::{free_addr, launch, log_file, Ready, Spawned};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A nats-server `cmd` that is up once `addr` accepts; `temp` (its config or store) is
/// removed with it.
fn launch_nats(
    cmd: &mut Command,
    addr: SocketAddr,
    bin: &str,
    description: String,
    temp: PathBuf,
) -> std::io::Result<Spawned> {
    launch(cmd, addr, bin, Ready::Listening, description, Some(temp))
}

/// nats-server as the target: client port and a WebSocket listener (`addr`), both loopback.
pub fn spawn_nats(bin: &str, out_dir: &Path) -> std::io::Result<Spawned> {
    let port = free_addr()?.port();
    let addr = free_addr()?;
    let ws_port = addr.port();
    let conf =
        std::env::temp_dir().join(format!("ringcast-bench-nats-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        format!(
            "host: 127.0.0.1\nport: {port}\nmax_payload: 1MB\nwebsocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf);
    cmd.stdout(log_file(out_dir, "nats-server.out.log"))
        .stderr(log_file(out_dir, "nats-server.log"));
    let description = format!(
        "{bin} -c {} (websocket 127.0.0.1:{ws_port}, no_tls)",
        conf.display()
    );
    launch_nats(&mut cmd, addr, bin, description, conf)
}

/// Starts `nats-server -js` on a free loopback port with a fresh store directory under the
/// system temp dir (removed when the returned [`Spawned`] drops). `addr` is the client port.
pub fn spawn_jetstream(bin: &str, out_dir: &Path, log: &str) -> std::io::Result<Spawned> {
    remove_orphan_stores(&std::env::temp_dir());
    let addr = free_addr()?;
    let port = addr.port();
    let store = std::env::temp_dir().join(format!("ringcast-bench-js-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store)?;
    let mut cmd = Command::new(bin);
    cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store);
    cmd.stdout(Stdio::null()).stderr(log_file(out_dir, log));
    let description = format!("{bin} -js -a 127.0.0.1 -p {port} -sd {}", store.display());
    launch_nats(&mut cmd, addr, bin, description, store)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

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
