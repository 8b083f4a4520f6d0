//! The `ringcast` binary: logs its address and driver, and on SIGTERM/SIGINT stops accepting,
//! closes WebSockets with 1001 and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn run_and_signal(signal: i32, driver: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "2",
            "--driver",
            driver,
        ])
        .env("RINGCAST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("ringcast logs before exiting").unwrap();
        if line.contains("ringcast listening") {
            assert!(line.contains("driver="), "{line}");
            let a = line
                .split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            break a.parse().unwrap();
        }
    };
    let mut clients: Vec<common::Ws> = (0..4).map(|_| common::Ws::connect(addr)).collect();
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    for c in &mut clients {
        assert_eq!(c.recv_close(), Some(1001));
    }
    std::thread::spawn(move || for _ in lines {});
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigterm_closes_websockets_with_1001_and_exits_0() {
    run_and_signal(libc::SIGTERM, "auto");
}

#[test]
fn sigint_closes_websockets_with_1001_and_exits_0_on_epoll() {
    run_and_signal(libc::SIGINT, "legacy");
}
