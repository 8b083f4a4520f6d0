//! Per-connection and per-node limits: each has a flag, a default, and a clear refusal.

mod common;

use common::{http_status, start, Ws};
use ringcast::config::DriverChoice;

#[test]
fn subscriptions_per_connection_are_capped() {
    let node = start(DriverChoice::Auto, |c| c.max_subs_per_conn = 3);
    let mut c = node.ws();
    for i in 0..3 {
        c.sub(i, &format!("s.{i}"));
    }
    let (r, _) = c.request(r#"{"op":"sub","id":9,"subject":"s.9"}"#);
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("err"), Some("bad_request"))
    );
    // Re-subscribing to an existing pattern is not a new subscription.
    c.sub(10, "s.0");
}

#[test]
fn floods_get_rate_limited_then_closed_with_4029() {
    let node = start(DriverChoice::Auto, |c| {
        c.max_msgs_per_sec = 5;
        c.rate_abuse_limit = 50;
    });
    let mut bystander = node.ws();
    let mut c = node.ws();
    for i in 0..200 {
        c.send(&format!(r#"{{"op":"ping","id":{i}}}"#));
    }
    let mut pongs = 0;
    let mut limited = 0;
    let code = loop {
        match c.recv_frame() {
            Some(common::Frame::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                match v["op"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("err") => {
                        assert_eq!(v["code"], "rate_limited");
                        limited += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
            Some(common::Frame::Close(code)) => break code,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(4029));
    assert!(
        (5..200).contains(&pongs),
        "the burst is served, the flood is not ({pongs} pongs)"
    );
    assert!(limited >= 1);
    let (r, _) = bystander.request(r#"{"op":"ping","id":"b"}"#);
    assert_eq!(r["op"], "pong", "others are unaffected");
}

#[test]
fn connection_rate_over_the_limit_gets_503() {
    let node = start(DriverChoice::Auto, |c| c.max_accept_per_sec = 1);
    let statuses: Vec<u16> = (0..20)
        .map(|_| http_status(node.addr, "GET", "/healthz", &[]))
        .collect();
    assert!(statuses.contains(&200));
    assert!(statuses.contains(&503), "{statuses:?}");
}

#[test]
fn browser_origins_can_be_restricted() {
    let node = start(DriverChoice::Auto, |c| {
        c.allowed_origins = vec!["https://app.example".into()]
    });
    let (status, body) = Ws::try_connect(node.addr, "/ws", &[("Origin", "https://evil.example")])
        .err()
        .unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("origin"));
    Ws::try_connect(node.addr, "/ws", &[("Origin", "https://app.example")])
        .unwrap()
        .hello();
    Ws::try_connect(node.addr, "/ws", &[]).unwrap().hello();
}

#[test]
fn out_of_file_descriptors_answers_503_instead_of_hanging() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.args(["--listen", "127.0.0.1:0", "--cores", "1"])
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit between fork and exec touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let line = lines.next().expect("ringcast logs").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..60 {
        match Ws::try_connect(addr, "/ws", &[]) {
            Ok(ws) => held.push(ws),
            Err((status, _)) => statuses.push(status),
        }
    }
    assert!(!held.is_empty());
    assert!(
        statuses.contains(&503),
        "clients beyond the fd limit get 503: {statuses:?}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    drop(held);
    assert!(child.wait().unwrap().success());
}
