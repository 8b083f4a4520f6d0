//! The `ringcast` binary: logs its address and driver, and on SIGTERM/SIGINT stops accepting,
//! closes WebSockets with 1001 and exits 0.

mod common;

fn run_and_signal(signal: i32, driver: &str) {
    let (mut child, addr, line) = common::spawn_node(driver, &[]);
    assert!(line.contains("driver="), "{line}");
    let mut clients: Vec<common::Ws> = (0..4).map(|_| common::Ws::connect(addr)).collect();
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    for c in &mut clients {
        assert_eq!(c.recv_close(), Some(1001));
    }
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
