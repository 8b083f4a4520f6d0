//! Start-up: what the `ringcast` binary logs before it listens (the truth about auth, one line
//! per capped limit, no store chatter), and that a node refuses an address another process
//! already serves instead of silently sharing it through SO_REUSEPORT.

mod common;

use common::{http, ringcast_start_up, start, TempDir};
use ringcast::config::{Config, DriverChoice};
use ringcast::server::Server;
use std::net::SocketAddr;

/// Long enough for HS256 (32 bytes or more).
const SECRET: &str = "start-up-test-secret-0123456789abcdef";

/// The start-up log of a binary that is expected to listen (it is stopped right after).
fn log_of_a_start(args: &[&str], log: Option<&str>) -> Vec<String> {
    let (started, lines) = ringcast_start_up(args, log);
    assert!(
        started.is_ok(),
        "ringcast did not start:\n{}",
        lines.join("\n")
    );
    lines
}

/// The log of a binary that is expected to fail start-up, and its exit code.
fn log_of_a_failed_start(args: &[&str]) -> (Option<i32>, String) {
    match ringcast_start_up(args, Some("info")) {
        (Ok(s), lines) => panic!("ringcast started on {}:\n{}", s.addr, lines.join("\n")),
        (Err(status), lines) => (status.code(), lines.join("\n")),
    }
}

fn lines_with<'a>(log: &'a [String], needle: &str) -> Vec<&'a String> {
    log.iter().filter(|l| l.contains(needle)).collect()
}

#[test]
fn with_a_jwt_secret_the_log_names_hs256_and_the_required_claims() {
    let log = log_of_a_start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--jwt-secret",
            SECRET,
            "--jwt-issuer",
            "acme",
            "--jwt-audience",
            "feeds",
        ],
        Some("info"),
    );
    let on = lines_with(&log, "auth is on");
    assert_eq!(on.len(), 1, "{log:#?}");
    assert!(
        on[0].contains(r#"HS256 tokens, iss "acme", aud "feeds""#),
        "{}",
        on[0]
    );
    let text = log.join("\n").to_lowercase();
    assert!(!text.contains("auth is off"), "{log:#?}");
    assert!(!text.contains(SECRET), "the secret is never logged");
}

#[test]
fn with_a_public_key_the_log_names_its_algorithm() {
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ec_public.pem");
    let log = log_of_a_start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--jwt-public-key",
            key,
        ],
        Some("info"),
    );
    let on = lines_with(&log, "auth is on");
    assert_eq!(on.len(), 1, "{log:#?}");
    assert!(
        on[0].contains("ES256 tokens, any iss, any aud"),
        "{}",
        on[0]
    );
}

#[test]
fn without_a_key_on_loopback_the_log_says_auth_is_off_and_why_that_is_allowed() {
    let log = log_of_a_start(&["--listen", "127.0.0.1:0", "--cores", "1"], Some("info"));
    let off = lines_with(&log, "auth is off");
    assert_eq!(off.len(), 1, "{log:#?}");
    assert!(off[0].contains("127.0.0.1:0 is loopback"), "{}", off[0]);
    assert!(lines_with(&log, "auth is on").is_empty(), "{log:#?}");
}

#[test]
fn a_short_jwt_secret_fails_start_up_without_claiming_auth_is_off() {
    let (code, log) =
        log_of_a_failed_start(&["--listen", "127.0.0.1:0", "--jwt-secret", "too-short"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("--jwt-secret must be at least 32 bytes"),
        "{log}"
    );
    assert!(!log.to_lowercase().contains("auth is off"), "{log}");
}

#[test]
fn a_capped_open_file_limit_is_one_warning_with_the_command_that_lifts_it() {
    // More connections than any kernel lets a process have descriptors (fs.nr_open <= 2^30):
    // the warning is due whatever the machine's limits.
    let log = log_of_a_start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--max-connections",
            "10000000000",
        ],
        Some("info"),
    );
    let nofile = lines_with(&log, "open-file limit");
    assert_eq!(nofile.len(), 1, "said once: {log:#?}");
    assert!(
        nofile[0].contains("`sudo prlimit --pid $$ --nofile=10000000064`"),
        "{}",
        nofile[0]
    );
    assert!(
        nofile[0].contains("or pass --max-connections "),
        "{}",
        nofile[0]
    );
}

#[test]
fn the_default_log_leaves_out_the_stores_info_lines() {
    let dir = TempDir::new("startup-log");
    let data_dir = dir.0.to_str().unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--data-dir",
        data_dir,
    ];
    let log = log_of_a_start(&args, None);
    assert_eq!(lines_with(&log, "durable store open").len(), 1, "{log:#?}");
    assert!(lines_with(&log, "fjall").is_empty(), "{log:#?}");
    assert!(lines_with(&log, "lsm_tree").is_empty(), "{log:#?}");
}

#[test]
fn ringcast_log_still_shows_the_stores_info_lines_when_asked() {
    let dir = TempDir::new("startup-log");
    let data_dir = dir.0.to_str().unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--data-dir",
        data_dir,
    ];
    let log = log_of_a_start(&args, Some("info"));
    assert!(!lines_with(&log, "fjall").is_empty(), "{log:#?}");
}

// ---- one node per address ------------------------------------------------------------------

fn config(listen: SocketAddr, driver: DriverChoice) -> Config {
    Config {
        listen,
        cores: Some(2),
        driver,
        ..Config::default()
    }
}

/// The error of starting a node on `addr`, which must fail.
fn refusal(addr: SocketAddr, driver: DriverChoice) -> String {
    match Server::start(config(addr, driver)) {
        Ok(s) => {
            s.shutdown();
            s.join().unwrap();
            panic!("a second node started on {addr}");
        }
        Err(e) => e.to_string(),
    }
}

fn a_second_node_on_a_served_address_is_refused_and_the_first_keeps_it(d: DriverChoice) {
    let node = start(d, |_| {});
    let why = refusal(node.addr, d);
    assert!(why.contains("is already in use"), "{why}");
    assert!(why.contains(&format!("--listen {}", node.addr)), "{why}");
    // Every connection still reaches the one node: ten publishes, ten in its history.
    for i in 0..10 {
        assert_eq!(node.publish("one.node", &i.to_string())["seq"], i + 1);
    }
    let (status, _, body) = http(node.addr, "GET", "/history/one.node", &[], b"");
    assert_eq!(status, 200);
    let history: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(history["last_seq"], 10, "{history}");
}

fn a_reuseport_listener_of_another_program_keeps_its_port(d: DriverChoice) {
    use socket2::{Domain, Socket, Type};
    let other = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    other.bind(&any.into()).unwrap();
    other.listen(16).unwrap();
    let addr = other.local_addr().unwrap().as_socket().unwrap();
    let why = refusal(addr, d);
    assert!(why.contains("is already in use"), "{why}");
}

fn a_node_restarts_on_the_address_it_just_left(d: DriverChoice) {
    let mut node = start(d, |_| {});
    let addr = node.addr;
    // `Connection: close` requests: the node closes first, so they linger in TIME_WAIT on
    // its side of the address.
    for _ in 0..3 {
        assert_eq!(common::http_status(addr, "GET", "/healthz", &[]), 200);
    }
    node.stop();
    let again = Server::start(config(addr, d)).expect("restarts on the same address");
    assert_eq!(again.local_addr(), addr);
    again.shutdown();
    again.join().unwrap();
}

on_both_drivers!(
    a_second_node_on_a_served_address_is_refused_and_the_first_keeps_it,
    a_reuseport_listener_of_another_program_keeps_its_port,
    a_node_restarts_on_the_address_it_just_left,
);

#[test]
fn a_second_ringcast_binary_on_a_served_port_exits_1_and_says_why() {
    let (first, log) = ringcast_start_up(&["--listen", "127.0.0.1:0", "--cores", "2"], None);
    let first = first.unwrap_or_else(|s| panic!("first node: {s}\n{}", log.join("\n")));
    let listen = first.addr.to_string();
    let (code, log) = log_of_a_failed_start(&["--listen", &listen, "--cores", "2"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("--listen {listen}: the address is already in use")),
        "{log}"
    );
    assert_eq!(common::http_status(first.addr, "GET", "/healthz", &[]), 200);
}
