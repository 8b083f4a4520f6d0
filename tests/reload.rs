//! SIGHUP: a running node reads its config file again and applies what can change live (JWT
//! keys, limits, allowed origins), while existing WebSocket connections stay open and keep
//! receiving; a file that cannot be applied changes nothing.

mod common;

use common::{eventually, http, mint, spawn_node, TempDir, Ws};
use ringcast::config::DriverChoice;
use serde_json::Value;
use std::net::SocketAddr;

const SECRET_A: &str = "reload-test-secret-a-long-enough-0123456789";
const SECRET_B: &str = "reload-test-secret-b-long-enough-0123456789";

/// A `ringcast` process started with `--config FILE`; stopped (SIGTERM) on drop.
struct Spawned {
    child: std::process::Child,
    addr: SocketAddr,
    file: TempDir,
}

impl Spawned {
    fn start(d: DriverChoice, toml: &str) -> Spawned {
        let file = TempDir::new("reload.toml");
        std::fs::write(&file.0, toml).unwrap();
        let driver = if d == DriverChoice::Legacy {
            "legacy"
        } else {
            "auto"
        };
        let path = file.0.to_str().unwrap();
        let (child, addr, _) = spawn_node(driver, &["--config", path]);
        Spawned { child, addr, file }
    }

    fn metric(&self, name: &str) -> u64 {
        let (_, _, body) = http(self.addr, "GET", "/metrics", &[], b"");
        let text = String::from_utf8(body).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
        line.expect("the node exports the reload counters")
            .parse()
            .unwrap()
    }

    /// Writes `toml` as the config file, sends SIGHUP, and waits until the node counted the
    /// reload under `counter` (applied, or refused).
    fn reload(&self, toml: &str, counter: &str) {
        let before = self.metric(counter);
        std::fs::write(&self.file.0, toml).unwrap();
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        eventually(counter, || self.metric(counter) > before);
    }

    fn applied(&self, toml: &str) {
        self.reload(toml, "ringcast_config_reloads_total");
    }

    fn refused(&self, toml: &str) {
        self.reload(toml, "ringcast_config_reload_errors_total");
    }

    fn ws(&self, target: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
        Ws::try_connect(self.addr, target, headers)
            .map(Ws::hello)
            .map_err(|(status, _)| status)
    }

    fn with_token(&self, token: &str) -> Result<Ws, u16> {
        self.ws(&format!("/ws?token={token}"), &[])
    }

    fn publish(&self, token: Option<&str>, subject: &str, n: u64) {
        let body = format!(r#"{{"subject":"{subject}","data":{n}}}"#);
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let (status, _, body) = http(self.addr, "POST", "/publish", &headers, body.as_bytes());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn token(secret: &str) -> String {
    mint(&[
        "--secret",
        secret,
        "--sub",
        "u",
        "--allow",
        "prices.>",
        "--publish",
        "prices.>",
    ])
}

fn secret_file(secret: &str) -> String {
    format!("jwt-secret = \"{secret}\"\n")
}

fn receives(c: &mut Ws, n: u64) {
    let m = c.recv_msgs(1);
    assert_eq!(m[0]["data"], Value::from(n), "{}", m[0]);
}

fn sighup_applies_a_new_jwt_secret_and_keeps_existing_connections(d: DriverChoice) {
    let node = Spawned::start(d, &secret_file(SECRET_A));
    let (a, b) = (token(SECRET_A), token(SECRET_B));
    let mut old = node.with_token(&a).expect("token A before the reload");
    old.sub(1, "prices.x");
    assert_eq!(node.with_token(&b).err(), Some(401));
    node.applied(&secret_file(SECRET_B));
    assert_eq!(
        node.with_token(&a).err(),
        Some(401),
        "new connections need the new key"
    );
    let mut new = node.with_token(&b).expect("token B after the reload");
    new.sub(1, "prices.x");
    node.publish(Some(&b), "prices.x", 7);
    receives(&mut old, 7);
    receives(&mut new, 7);
    let (r, _) = old.request(&format!(r#"{{"op":"auth","id":2,"token":"{a}"}}"#));
    assert_eq!(
        r["code"], "unauthorized",
        "a refresh is checked with the new key: {r}"
    );
    node.publish(Some(&b), "prices.x", 8);
    receives(&mut old, 8);
}

fn sighup_applies_new_allowed_origins(d: DriverChoice) {
    let node = Spawned::start(d, "allowed-origins = [\"https://a.example\"]\n");
    let origin = |o: &'static str| [("Origin", o)];
    let mut old = node
        .ws("/ws", &origin("https://a.example"))
        .expect("origin a");
    old.sub(1, "prices.x");
    assert_eq!(
        node.ws("/ws", &origin("https://b.example")).err(),
        Some(403)
    );
    node.applied("allowed-origins = [\"https://b.example\"]\n");
    assert!(node.ws("/ws", &origin("https://b.example")).is_ok());
    assert_eq!(
        node.ws("/ws", &origin("https://a.example")).err(),
        Some(403)
    );
    node.publish(None, "prices.x", 1);
    receives(&mut old, 1);
}

fn sighup_applies_a_new_subscription_limit_to_existing_connections(d: DriverChoice) {
    let node = Spawned::start(d, "max-subs-per-conn = 1\n");
    let mut c = node.ws("/ws", &[]).unwrap();
    c.sub(1, "a");
    let (r, _) = c.request(r#"{"op":"sub","id":2,"subject":"b"}"#);
    assert_eq!(r["op"], "err", "{r}");
    node.applied("max-subs-per-conn = 3\n");
    c.sub(3, "b");
    c.sub(4, "c");
    let (r, _) = c.request(r#"{"op":"sub","id":5,"subject":"d"}"#);
    assert_eq!(r["op"], "err", "the new limit, 3: {r}");
    node.publish(None, "a", 1);
    receives(&mut c, 1);
}

fn a_config_file_that_cannot_be_applied_keeps_the_running_config(d: DriverChoice) {
    let node = Spawned::start(d, &secret_file(SECRET_A));
    let (a, b) = (token(SECRET_A), token(SECRET_B));
    let mut old = node.with_token(&a).unwrap();
    old.sub(1, "prices.x");
    for broken in [
        format!("jwt-secret = \"{SECRET_B}"),              // not TOML
        format!("{}histroy = 5\n", secret_file(SECRET_B)), // an unknown key
        "jwt-secret = \"short\"\n".to_string(),            // a secret the verifier refuses
        "history = 5\n".to_string(),                       // turns auth off: needs a restart
    ] {
        node.refused(&broken);
        assert!(
            node.with_token(&a).is_ok(),
            "token A still accepted after {broken:?}"
        );
        assert_eq!(
            node.with_token(&b).err(),
            Some(401),
            "secret B not taken: {broken:?}"
        );
        let anonymous = http(
            node.addr,
            "POST",
            "/publish",
            &[],
            br#"{"subject":"a","data":1}"#,
        );
        assert_eq!(anonymous.0, 401, "auth still on after {broken:?}");
    }
    node.publish(Some(&a), "prices.x", 3);
    receives(&mut old, 3);
}

on_both_drivers!(
    sighup_applies_a_new_jwt_secret_and_keeps_existing_connections,
    sighup_applies_new_allowed_origins,
    sighup_applies_a_new_subscription_limit_to_existing_connections,
    a_config_file_that_cannot_be_applied_keeps_the_running_config,
);
