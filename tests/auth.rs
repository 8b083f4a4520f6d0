//! JWT authentication and subject ACLs: every way in needs a valid token for the configured key
//! and algorithm, and nobody reads or publishes a subject they were not granted.

mod common;

use common::{http, http_status, start, Node, Ws};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ringcast::config::{Config, DriverChoice};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn reader(allowed: &[&str], deny: &[&str]) -> String {
    hs(
        &json!({"sub":"user-1","exp":now()+3600,"permissions":["subscribe"],"allowed_subjects":allowed,"deny_subjects":deny}),
    )
}

fn admin() -> String {
    hs(
        &json!({"sub":"admin","exp":now()+3600,"permissions":["publish","subscribe"],"allowed_subjects":[">"]}),
    )
}

fn b64url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, b)| a | (*b as u32) << (16 - 8 * i));
        for i in 0..=c.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn with_secret(c: &mut Config) {
    c.jwt_secret = Some(SECRET.into());
    c.jwt_leeway_secs = 0;
}

fn node() -> Node {
    start(DriverChoice::Auto, with_secret)
}

fn ws_with(node: &Node, token: &str) -> Ws {
    Ws::try_connect(
        node.addr,
        "/ws",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .expect("upgrade accepted")
    .hello()
}

fn refused_upgrade(node: &Node, token: &str) -> (u16, String) {
    match Ws::try_connect(node.addr, &format!("/ws?token={token}"), &[]) {
        Ok(_) => panic!("upgrade with a bad token was accepted"),
        Err((status, body)) => {
            let v: Value = serde_json::from_str(&body).unwrap();
            (status, v["error"]["message"].as_str().unwrap().to_string())
        }
    }
}

#[test]
fn tokens_are_accepted_from_header_query_or_auth_op() {
    let node = node();
    let t = admin();
    ws_with(&node, &t);
    Ws::try_connect(node.addr, &format!("/ws?token={t}"), &[])
        .unwrap()
        .hello();
    let mut c = Ws::try_connect(node.addr, "/ws", &[]).unwrap().hello();
    let (r, _) = c.request(&format!(r#"{{"op":"auth","id":1,"token":"{t}"}}"#));
    assert_eq!(r["op"], "ok");
    c.sub(2, "prices.>");
}

#[test]
fn forged_and_broken_tokens_are_refused_at_upgrade() {
    let node = node();
    let header_none = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64url(
        json!({"exp":now()+3600,"permissions":["subscribe"],"allowed_subjects":[">"]})
            .to_string()
            .as_bytes(),
    );
    let cases: Vec<(&str, String)> = vec![
        ("alg none", format!("{header_none}.{claims}.")),
        ("bad signature", {
            let t = admin();
            let (head, _) = t.rsplit_once('.').unwrap();
            format!("{head}.{}", b64url(b"not the signature at all, not at all"))
        }),
        (
            "expired",
            hs(&json!({"exp":now()-100,"permissions":["subscribe"],"allowed_subjects":[">"]})),
        ),
        (
            "nbf in the future",
            hs(
                &json!({"exp":now()+3600,"nbf":now()+600,"permissions":["subscribe"],"allowed_subjects":[">"]}),
            ),
        ),
        (
            "missing exp",
            hs(&json!({"permissions":["subscribe"],"allowed_subjects":[">"]})),
        ),
        ("garbage", "not.a.jwt".to_string()),
        ("oversized", "a".repeat(9000)),
        (
            "permissions of the wrong type",
            hs(&json!({"exp":now()+3600,"permissions":"subscribe"})),
        ),
        (
            "exp of the wrong type",
            hs(&json!({"exp":"tomorrow","permissions":["subscribe"]})),
        ),
        (
            "invalid pattern",
            hs(&json!({"exp":now()+3600,"permissions":["subscribe"],"allowed_subjects":["a..b"]})),
        ),
    ];
    for (what, token) in cases {
        let (status, _) = refused_upgrade(&node, &token);
        assert_eq!(status, 401, "{what}");
    }
    let (_, msg) = refused_upgrade(&node, &hs(&json!({"exp":now()-100})));
    assert!(msg.contains("expired"), "{msg}");
}

#[test]
fn algorithm_confusion_is_refused() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let public_pem = std::fs::read(format!("{dir}/tests/fixtures/rsa_public.pem")).unwrap();
    let node = start(DriverChoice::Auto, |c| {
        c.jwt_public_key = Some(format!("{dir}/tests/fixtures/rsa_public.pem").into())
    });
    let claims = json!({"exp":now()+3600,"permissions":["subscribe"],"allowed_subjects":[">"]});
    // HS256 signed with the RSA public key as the HMAC secret: the classic confusion attack.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let (status, msg) = refused_upgrade(&node, &forged);
    assert_eq!(status, 401);
    assert!(msg.contains("algorithm"), "{msg}");
    // The genuine RS256 token works.
    let private = std::fs::read(format!("{dir}/tests/fixtures/rsa_private.pem")).unwrap();
    let good = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    ws_with(&node, &good).sub(1, "x.y");
}

#[test]
fn es256_keys_work() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let node = start(DriverChoice::Auto, |c| {
        c.jwt_public_key = Some(format!("{dir}/tests/fixtures/ec_public.pem").into())
    });
    let private = std::fs::read(format!("{dir}/tests/fixtures/ec_private.pem")).unwrap();
    let claims = json!({"exp":now()+3600,"permissions":["subscribe"],"allowed_subjects":[">"]});
    let good = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&private).unwrap(),
    )
    .unwrap();
    ws_with(&node, &good).sub(1, "x.y");
    let hs_token = hs(&claims);
    assert_eq!(refused_upgrade(&node, &hs_token).0, 401);
}

#[test]
fn unauthenticated_connections_may_only_authenticate_then_time_out_with_4001() {
    let node = start(DriverChoice::Auto, |c| {
        with_secret(c);
        c.auth_timeout_ms = 300;
    });
    let mut c = Ws::try_connect(node.addr, "/ws", &[]).unwrap().hello();
    let (r, _) = c.request(r#"{"op":"sub","id":1,"subject":"a"}"#);
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("err"), Some("unauthorized"))
    );
    let (r, _) = c.request(r#"{"op":"ping","id":2}"#);
    assert_eq!(r["op"], "pong");
    let (r, _) = c.request(r#"{"op":"auth","id":3,"token":"garbage"}"#);
    assert_eq!(r["code"], "unauthorized");
    let e = c.recv_json();
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("err"), Some("unauthorized"))
    );
    assert_eq!(c.recv_close(), Some(4001));
}

#[test]
fn an_expiring_token_ends_the_connection_with_4001_unless_refreshed() {
    let node = node();
    let short = hs(
        &json!({"sub":"admin","exp":now()+2,"permissions":["subscribe"],"allowed_subjects":[">"]}),
    );
    let mut refreshed = ws_with(&node, &short);
    let (r, _) = refreshed.request(&format!(r#"{{"op":"auth","id":1,"token":"{}"}}"#, admin()));
    assert_eq!(r["op"], "ok");
    let mut expiring = ws_with(&node, &short);
    let e = expiring.recv_json();
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("err"), Some("unauthorized"))
    );
    assert_eq!(expiring.recv_close(), Some(4001));
    let (r, _) = refreshed.request(r#"{"op":"ping","id":2}"#);
    assert_eq!(r["op"], "pong", "the refreshed connection is still served");
}

#[test]
fn refreshing_to_a_narrower_token_drops_subscriptions_it_no_longer_allows() {
    let node = node();
    let mut c = ws_with(&node, &reader(&["prices.>", "news.>"], &[]));
    c.sub(1, "prices.>");
    c.sub(2, "news.x");
    c.send(&format!(
        r#"{{"op":"auth","id":3,"token":"{}"}}"#,
        reader(&["news.>"], &[])
    ));
    let e = c.recv_json();
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("err"), Some("forbidden"))
    );
    assert!(e["message"].as_str().unwrap().contains("prices.>"));
    assert_eq!(c.recv_json()["op"], "ok");
    node_publish(&node, "prices.a");
    node_publish(&node, "news.x");
    assert_eq!(c.recv_msgs(1)[0]["subject"], "news.x");
}

fn node_publish(node: &Node, subject: &str) -> Value {
    let body = format!(r#"{{"subject":"{subject}","data":1}}"#);
    let (status, _, body) = http(
        node.addr,
        "POST",
        "/publish",
        &[("Authorization", &format!("Bearer {}", admin()))],
        body.as_bytes(),
    );
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn wildcard_escalation_is_forbidden() {
    let node = node();
    let mut c = ws_with(&node, &reader(&["prices.*"], &[]));
    for p in ["prices.>", "*.EURUSD", ">", "news.x"] {
        let (r, _) = c.request(&format!(r#"{{"op":"sub","id":"{p}","subject":"{p}"}}"#));
        assert_eq!(r["code"], "forbidden", "{p}");
    }
    c.sub(1, "prices.*");
    c.sub(2, "prices.EURUSD");
}

#[test]
fn denied_subjects_are_never_delivered() {
    let node = node();
    let mut c = ws_with(&node, &reader(&["prices.>"], &["prices.internal.>"]));
    let (r, _) = c.request(r#"{"op":"sub","id":1,"subject":"prices.internal.*"}"#);
    assert_eq!(r["code"], "forbidden");
    node_publish(&node, "prices.internal.x");
    c.request(r#"{"op":"sub","id":2,"subject":"prices.>","snapshot":true}"#);
    node_publish(&node, "prices.internal.y");
    node_publish(&node, "prices.EURUSD");
    let m = c.recv_msgs(1);
    assert_eq!(
        m[0]["subject"], "prices.EURUSD",
        "neither the snapshot nor live messages leak denied subjects"
    );
    // `since` on a denied subject is refused outright.
    let (r, _) = c.request(r#"{"op":"sub","id":3,"subject":"prices.internal.x","since":0}"#);
    assert_eq!(r["code"], "forbidden");
}

#[test]
fn publishing_needs_permission_and_an_allowed_subject() {
    let node = node();
    let publisher = hs(
        &json!({"exp":now()+3600,"permissions":["publish"],"pub":{"allow":["orders.>"],"deny":["orders.admin.>"]}}),
    );
    let mut c = ws_with(&node, &publisher);
    let (r, _) = c.request(r#"{"op":"pub","id":1,"subject":"orders.1","data":1}"#);
    assert_eq!(r["seq"], 1);
    for s in ["orders.admin.x", "prices.x"] {
        let (r, _) = c.request(&format!(
            r#"{{"op":"pub","id":2,"subject":"{s}","data":1}}"#
        ));
        assert_eq!(r["code"], "forbidden", "{s}");
    }
    let (r, _) = c.request(r#"{"op":"sub","id":3,"subject":"orders.1"}"#);
    assert_eq!(r["code"], "forbidden", "no subscribe permission");
    let body = br#"{"subject":"orders.admin.x","data":1}"#;
    let auth = format!("Bearer {publisher}");
    assert_eq!(
        http(
            node.addr,
            "POST",
            "/publish",
            &[("Authorization", &auth)],
            body
        )
        .0,
        403
    );
    assert_eq!(http(node.addr, "POST", "/publish", &[], body).0, 401);
    let bad = format!("Bearer {}x", publisher);
    assert_eq!(
        http(
            node.addr,
            "POST",
            "/publish",
            &[("Authorization", &bad)],
            body
        )
        .0,
        401
    );
}

#[test]
fn history_needs_subscribe_permission_and_metrics_stay_open() {
    let node = node();
    node_publish(&node, "prices.a");
    assert_eq!(http_status(node.addr, "GET", "/history/prices.a", &[]), 401);
    let t = reader(&["news.>"], &[]);
    assert_eq!(
        http_status(
            node.addr,
            "GET",
            &format!("/history/prices.a?token={t}"),
            &[]
        ),
        403
    );
    let t = reader(&["prices.>"], &[]);
    assert_eq!(
        http_status(
            node.addr,
            "GET",
            &format!("/history/prices.a?token={t}"),
            &[]
        ),
        200
    );
    assert_eq!(http_status(node.addr, "GET", "/metrics", &[]), 200);
    assert_eq!(http_status(node.addr, "GET", "/healthz", &[]), 200);
}

#[test]
fn metrics_can_require_a_token() {
    let node = start(DriverChoice::Auto, |c| {
        with_secret(c);
        c.metrics_require_auth = true;
    });
    assert_eq!(http_status(node.addr, "GET", "/metrics", &[]), 401);
    let auth = format!("Bearer {}", reader(&["x"], &[]));
    assert_eq!(
        http_status(node.addr, "GET", "/metrics", &[("Authorization", &auth)]),
        200
    );
    assert_eq!(http_status(node.addr, "GET", "/healthz", &[]), 200);
}

#[test]
fn no_auth_on_a_public_address_is_refused_unless_insecure() {
    let mut cfg = Config {
        listen: "0.0.0.0:0".parse().unwrap(),
        cores: Some(1),
        ..Config::default()
    };
    let err = ringcast::server::Server::start(cfg.clone())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
    cfg.insecure_no_auth = true;
    let s = ringcast::server::Server::start(cfg).unwrap();
    s.shutdown();
    s.join().unwrap();
}

#[test]
fn tokens_never_appear_in_logs() {
    use std::io::Read;
    let token = admin();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--jwt-secret",
            SECRET,
        ])
        .env("RINGCAST_LOG", "trace")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut log = Vec::new();
    let addr: std::net::SocketAddr = loop {
        let mut b = [0u8; 1];
        assert_eq!(stderr.read(&mut b).unwrap(), 1, "ringcast exited early");
        log.push(b[0]);
        let text = String::from_utf8_lossy(&log);
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("ringcast listening") && text.ends_with('\n'))
        {
            break line
                .split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    ws_with_addr(addr, &token);
    let _ = Ws::try_connect(addr, &format!("/ws?token={token}x"), &[]);
    let _ = http(
        addr,
        "POST",
        "/publish",
        &[("Authorization", &format!("Bearer {token}"))],
        br#"{"subject":"a","data":1}"#,
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    stderr.read_to_end(&mut log).unwrap();
    assert!(child.wait().unwrap().success());
    let text = String::from_utf8_lossy(&log);
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !text.contains(signature),
        "token leaked into the log:\n{text}"
    );
    assert!(!text.contains(SECRET), "secret leaked into the log");
}

fn ws_with_addr(addr: std::net::SocketAddr, token: &str) {
    Ws::try_connect(
        addr,
        "/ws",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .unwrap()
    .hello();
}

/// An HS256 token with this exact header JSON (for headers `jsonwebtoken::Header` cannot
/// express, such as a `crit` that is not a list of names).
fn hs_with_header(header: &Value, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

fn a_token_with_a_crit_header_is_refused_with_401(d: DriverChoice) {
    let node = start(d, with_secret);
    let claims =
        json!({"sub":"u","exp":now()+3600,"permissions":["subscribe"],"allowed_subjects":[">"]});
    // The same header without `crit` is fine: only `crit` is refused.
    let plain = hs_with_header(&json!({"alg":"HS256","typ":"JWT"}), &claims);
    ws_with(&node, &plain).sub(1, "x");
    let cases = [
        ("an unknown extension", json!(["ext"])),
        ("a registered name", json!(["exp"])),
        ("an empty list", json!([])),
        ("a string", json!("ext")),
        ("null", Value::Null),
        ("a list of non-names", json!([1])),
        ("an object", json!({"ext":true})),
    ];
    for (what, crit) in cases {
        let header = json!({"alg":"HS256","typ":"JWT","crit":crit,"ext":true});
        let token = hs_with_header(&header, &claims);
        let (status, msg) = refused_upgrade(&node, &token);
        assert_eq!(status, 401, "crit {what}");
        assert!(msg.contains("crit"), "crit {what}: {msg}");
        let auth = format!("Bearer {token}");
        let (status, _, _) = http(
            node.addr,
            "GET",
            "/history/x",
            &[("Authorization", &auth)],
            b"",
        );
        assert_eq!(status, 401, "crit {what} over HTTP");
    }
    // jsonwebtoken's own header type, as an issuer using the crate would write it.
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["ext".into()]);
    let token = encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, msg) = refused_upgrade(&node, &token);
    assert_eq!(status, 401);
    assert!(msg.contains("crit"), "{msg}");
}

fn sub_may_be_a_user_id_or_a_subscribe_permission_object(d: DriverChoice) {
    let node = start(d, with_secret);
    let exp = now() + 3600;
    // `sub` as a string: the user id; the flat lists grant subscribing.
    let user = hs(
        &json!({"sub":"user-1","exp":exp,"permissions":["subscribe"],"allowed_subjects":["prices.>"]}),
    );
    let mut c = ws_with(&node, &user);
    c.sub(1, "prices.>");
    // `sub` as an object replaces the flat lists for subscribing, as `pub` does for publishing.
    let perm = hs(&json!({"exp":exp,"permissions":["publish","subscribe"],
        "allowed_subjects":["news.>"],
        "sub":{"allow":["prices.*"],"deny":["prices.secret"]},
        "pub":{"allow":["orders.*"],"deny":["orders.admin"]}}));
    let mut c = ws_with(&node, &perm);
    c.sub(1, "prices.EURUSD");
    c.sub(2, "prices.*");
    for p in ["news.x", "prices.secret", "prices.>", "orders.x", ">"] {
        let (r, _) = c.request(&format!(r#"{{"op":"sub","id":"{p}","subject":"{p}"}}"#));
        assert_eq!(r["code"], "forbidden", "sub {p}");
    }
    let (r, _) = c.request(r#"{"op":"pub","id":3,"subject":"orders.1","data":1}"#);
    assert_eq!(r["seq"], 1, "{r}");
    for s in ["orders.admin", "news.x", "prices.EURUSD"] {
        let (r, _) = c.request(&format!(
            r#"{{"op":"pub","id":"{s}","subject":"{s}","data":1}}"#
        ));
        assert_eq!(r["code"], "forbidden", "pub {s}");
    }
    // The same narrowing on the HTTP and SSE ways of reading.
    let t = |path: &str| http_status(node.addr, "GET", &format!("{path}token={perm}"), &[]);
    assert_eq!(t("/history/prices.EURUSD?"), 200);
    assert_eq!(t("/history/news.x?"), 403);
    assert_eq!(t("/history/prices.secret?"), 403);
    assert_eq!(t("/sse?subject=news.x&"), 403);
    // A `sub` object without the `subscribe` permission grants nothing.
    let no_perm = hs(&json!({"exp":exp,"permissions":["publish"],"sub":{"allow":[">"]}}));
    let mut c = ws_with(&node, &no_perm);
    let (r, _) = c.request(r#"{"op":"sub","id":1,"subject":"prices.x"}"#);
    assert_eq!(r["code"], "forbidden");
    // A `sub` of another shape is refused like any malformed claim.
    for bad in [
        json!(5),
        json!({"allow":"x"}),
        json!({"allow":[],"extra":1}),
    ] {
        let token = hs(&json!({"exp":exp,"permissions":["subscribe"],"sub":bad}));
        assert_eq!(refused_upgrade(&node, &token).0, 401, "sub {bad}");
    }
}

on_both_drivers!(
    a_token_with_a_crit_header_is_refused_with_401,
    sub_may_be_a_user_id_or_a_subscribe_permission_object,
);
