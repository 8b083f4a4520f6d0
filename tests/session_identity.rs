//! A session belongs to the identity that made it (the token's `sub`, and `iss` when set):
//! nobody else resumes it, kicks it off or reads what it was sent; what a resume replays is
//! filtered by the resumer's *current* grant; an `auth` refresh cannot turn a connection into
//! someone else's; and a resume by the owner takes a still-attached session over at once.
//! (And, the door to all of it, an SSE stream needs a valid token.)

mod common;

use common::{http, start, Node, Sse, Ws};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ringcast::config::{Config, DriverChoice};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

fn token(sub: &str, allowed: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"sub":sub,"iss":"idp","exp":exp,"permissions":["subscribe","publish"],
        "allowed_subjects":allowed});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

/// Alice may read `secret.>` and `prices.>`; the publisher anything.
fn alice() -> String {
    token("alice", &["secret.>", "prices.>"])
}

fn node(d: DriverChoice) -> Node {
    start(d, |c: &mut Config| {
        c.jwt_secret = Some(SECRET.into());
        c.max_msgs_per_sec = 0;
        // Long enough that nothing in these tests can wait for a heartbeat to find a stream dead.
        c.sse_heartbeat_secs = 60;
    })
}

fn ws_as(node: &Node, token: &str) -> Ws {
    Ws::try_connect(node.addr, &format!("/ws?token={token}"), &[])
        .expect("upgrade accepted")
        .hello()
}

fn publish(node: &Node, subject: &str, data: u64) {
    let body = format!(r#"{{"subject":"{subject}","data":{data}}}"#);
    let auth = format!("Bearer {}", token("feed", &[">"]));
    let (status, _, body) = http(
        node.addr,
        "POST",
        "/publish",
        &[("Authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Alice subscribes to both, reads one message, and is sent `n` secret and `n` price messages
/// while away (her socket still open but unread, or gone: either way the session logs them).
fn alice_away_with_secrets(node: &Node, n: u64) -> (Ws, String) {
    let mut a = ws_as(node, &alice());
    a.sub(1, "secret.>");
    a.sub(2, "prices.>");
    publish(node, "prices.a", 0);
    assert_eq!(a.recv_msgs(1)[0]["seq"], 1);
    for i in 1..=n {
        publish(node, "secret.plans", i);
        publish(node, "prices.a", i);
    }
    let session = a.session.clone();
    (a, session)
}

fn resume(c: &mut Ws, session: &str, received: u64) -> Value {
    let (r, _) = c.request(&format!(
        r#"{{"op":"resume","id":"r","session":"{session}","received":{received}}}"#
    ));
    r
}

fn another_user_cannot_resume_a_session(d: DriverChoice) {
    let node = node(d);
    let (a, session) = alice_away_with_secrets(&node, 3);
    drop(a);
    let mut bob = ws_as(&node, &token("bob", &["prices.>", "secret.>"]));
    let r = resume(&mut bob, &session, 1);
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("err"), Some("session_expired")),
        "{r}"
    );
    // Bob got nothing of Alice's; his own connection still works.
    let (pong, before) = bob.request(r#"{"op":"ping","id":"p"}"#);
    assert_eq!(pong["op"], "pong");
    assert!(before.is_empty(), "bob was sent {before:?}");
    // The session is untouched: Alice herself resumes it exactly.
    let mut a2 = ws_as(&node, &alice());
    assert_eq!(resume(&mut a2, &session, 1)["op"], "ok");
    let got = a2.recv_msgs(6);
    let secrets: Vec<_> = got
        .iter()
        .filter(|m| m["subject"] == "secret.plans")
        .collect();
    assert_eq!(secrets.len(), 3);
}

fn another_user_cannot_take_over_a_live_session(d: DriverChoice) {
    let node = node(d);
    let (mut a, session) = alice_away_with_secrets(&node, 1);
    assert_eq!(a.recv_msgs(2).len(), 2);
    let mut bob = ws_as(&node, &token("bob", &[">"]));
    let r = resume(&mut bob, &session, 3);
    assert_eq!(r["code"], "session_expired", "{r}");
    // Alice was not kicked off.
    publish(&node, "prices.a", 9);
    assert_eq!(a.recv_msgs(1)[0]["data"], 9);
}

fn the_same_user_from_another_issuer_is_someone_else(d: DriverChoice) {
    let node = node(d);
    let (a, session) = alice_away_with_secrets(&node, 1);
    drop(a);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"sub":"alice","iss":"other-idp","exp":exp,"permissions":["subscribe"],
        "allowed_subjects":[">"]});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let forged = encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
    let mut c = ws_as(&node, &forged);
    assert_eq!(resume(&mut c, &session, 1)["code"], "session_expired");
}

fn a_resume_replays_only_what_the_current_token_allows(d: DriverChoice) {
    let node = node(d);
    let (a, session) = alice_away_with_secrets(&node, 3);
    drop(a);
    // Alice again, with a token narrowed to prices.
    let mut a2 = ws_as(&node, &token("alice", &["prices.>"]));
    let (ok, _) = a2.request(&format!(
        r#"{{"op":"resume","id":"r","session":"{session}","received":1}}"#
    ));
    assert_eq!(ok["op"], "ok", "{ok}");
    // The secret subscription is not restored (one `err` says so) and no secret frame is replayed:
    // the three price messages are the first `msg`s, and a marker published after them follows.
    publish(&node, "prices.a", 100);
    let mut seen = Vec::new();
    while seen.last().is_none_or(|m: &Value| m["data"] != 100) {
        let v = a2.recv_json();
        match v["op"].as_str() {
            Some("msg") => seen.push(v),
            Some("err") => assert!(v["message"].as_str().unwrap().contains("secret.>"), "{v}"),
            _ => panic!("unexpected {v}"),
        }
    }
    let subjects: Vec<&str> = seen
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["prices.a"; 4], "{seen:?}");
}

fn an_auth_refresh_cannot_change_the_user(d: DriverChoice) {
    let node = node(d);
    let mut a = ws_as(&node, &alice());
    a.sub(1, "secret.>");
    let (r, _) = a.request(&format!(
        r#"{{"op":"auth","id":2,"token":"{}"}}"#,
        token("bob", &[">"])
    ));
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("err"), Some("forbidden")),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().contains("sub"), "{r}");
    // Still Alice, with Alice's grant: a refresh of her own is fine.
    let (r, _) = a.request(&format!(r#"{{"op":"auth","id":3,"token":"{}"}}"#, alice()));
    assert_eq!(r["op"], "ok", "{r}");
    publish(&node, "secret.plans", 1);
    assert_eq!(a.recv_msgs(1)[0]["subject"], "secret.plans");
}

fn another_user_cannot_resume_an_sse_session(d: DriverChoice) {
    let node = node(d);
    let (a, session) = alice_away_with_secrets(&node, 2);
    drop(a);
    let bob = token("bob", &[">"]);
    let mut sse = Sse::connect(
        node.addr,
        &format!("/sse?subject=prices.>&token={bob}"),
        &[("Last-Event-ID", &format!("{session}.1"))],
    );
    sse.next_named("hello");
    let gap = sse.next_named("gap");
    assert!(gap.data.contains("session_expired"), "{}", gap.data);
    publish(&node, "prices.a", 77);
    let m = sse.next_named("msg");
    let v: Value = serde_json::from_str(&m.data).unwrap();
    assert_eq!(v["data"], 77, "a fresh stream, nothing of Alice's: {v}");
}

fn an_sse_stream_needs_a_valid_token(d: DriverChoice) {
    let node = node(d);
    assert_eq!(
        Sse::connect(node.addr, "/sse?subject=prices.a", &[]).status,
        401
    );
    let forged = format!("{}x", alice());
    let path = format!("/sse?subject=prices.a&token={forged}");
    assert_eq!(Sse::connect(node.addr, &path, &[]).status, 401);
    let path = format!("/sse?subject=prices.a&token={}", alice());
    let mut ok = Sse::connect(node.addr, &path, &[]);
    assert_eq!(ok.status, 200);
    ok.next_named("hello");
}

fn an_sse_resume_takes_over_a_live_stream_at_once(d: DriverChoice) {
    let node = node(d);
    let t = alice();
    let mut old = Sse::connect(node.addr, &format!("/sse?subject=prices.>&token={t}"), &[]);
    old.next_named("hello");
    publish(&node, "prices.a", 1);
    let first = old.next_named("msg");
    // The old stream stays open (a dropped link the server cannot see); the browser reconnects.
    publish(&node, "prices.a", 2);
    let mut new = Sse::connect(
        node.addr,
        &format!("/sse?subject=prices.>&token={t}"),
        &[("Last-Event-ID", first.id.as_deref().unwrap())],
    );
    new.next_named("hello");
    new.next_named("resumed");
    let m: Value = serde_json::from_str(&new.next_named("msg").data).unwrap();
    assert_eq!(m["data"], 2);
    // After the takeover only the new stream is fed; the old one ends (EOF, not a timeout:
    // the common client panics if nothing comes within its bound).
    publish(&node, "prices.a", 3);
    let m: Value = serde_json::from_str(&new.next_named("msg").data).unwrap();
    assert_eq!(m["data"], 3);
    while let Some(e) = old.next() {
        let fed = e.event == "msg" && serde_json::from_str::<Value>(&e.data).unwrap()["data"] == 3;
        assert!(!fed, "the old stream was still fed after the takeover");
    }
}

fn a_websocket_resume_takes_over_a_live_session_at_once(d: DriverChoice) {
    let node = node(d);
    let (mut old, session) = alice_away_with_secrets(&node, 1);
    let mut new = ws_as(&node, &alice());
    assert_eq!(resume(&mut new, &session, 1)["op"], "ok");
    assert_eq!(new.recv_msgs(2).len(), 2);
    assert_eq!(old.recv_close(), Some(1000), "closed by the takeover");
}

on_both_drivers!(
    another_user_cannot_resume_a_session,
    another_user_cannot_take_over_a_live_session,
    the_same_user_from_another_issuer_is_someone_else,
    a_resume_replays_only_what_the_current_token_allows,
    an_auth_refresh_cannot_change_the_user,
    another_user_cannot_resume_an_sse_session,
    an_sse_stream_needs_a_valid_token,
    an_sse_resume_takes_over_a_live_stream_at_once,
    a_websocket_resume_takes_over_a_live_session_at_once,
);
