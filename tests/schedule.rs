//! Scheduled publishes: `POST /publish` with `"at"` in the future is sequenced and delivered at
//! that time by the subject's owner core; pending ones can be listed and cancelled.

mod common;

use common::{http, http_status, start};
use ringcast::config::DriverChoice;
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn schedule(addr: std::net::SocketAddr, subject: &str, at: u64) -> (u16, Value) {
    let body = format!(r#"{{"subject":"{subject}","data":{{"at":{at}}},"at":{at}}}"#);
    let (status, _, resp) = http(addr, "POST", "/publish", &[], body.as_bytes());
    (status, json(&resp))
}

fn a_future_publish_is_sequenced_and_delivered_at_its_time(d: DriverChoice) {
    let node = start(d, |_| {});
    let mut c = node.ws();
    c.sub(1, "alerts.*");
    let at = now_ms() + 300;
    let (status, r) = schedule(node.addr, "alerts.open", at);
    assert_eq!(status, 202);
    let id = r["schedule_id"].as_str().unwrap().to_string();
    let (_, _, list) = http(node.addr, "GET", "/schedule?subject=alerts.open", &[], b"");
    let list = json(&list);
    assert_eq!(list["scheduled"][0]["schedule_id"], id.as_str());
    assert_eq!(list["scheduled"][0]["at"], at);
    let m = c.recv_msgs(1).remove(0);
    assert_eq!(
        (m["subject"].as_str(), m["seq"].as_u64()),
        (Some("alerts.open"), Some(1))
    );
    assert!(
        m["ts"].as_u64().unwrap() >= at * 1000,
        "sequenced no earlier than its time"
    );
    let (_, _, list) = http(node.addr, "GET", "/schedule?subject=alerts.open", &[], b"");
    assert_eq!(json(&list)["scheduled"].as_array().unwrap().len(), 0);
}

fn pending_publishes_can_be_cancelled(d: DriverChoice) {
    let node = start(d, |_| {});
    let (_, r) = schedule(node.addr, "alerts.x", now_ms() + 60_000);
    let id = r["schedule_id"].as_str().unwrap().to_string();
    let (status, _, body) = http(node.addr, "DELETE", &format!("/schedule/{id}"), &[], b"");
    assert_eq!(
        (status, json(&body)["cancelled"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(
        http_status(node.addr, "DELETE", &format!("/schedule/{id}"), &[]),
        404
    );
    assert_eq!(http_status(node.addr, "DELETE", "/schedule/zz", &[]), 404);
    assert_eq!(http_status(node.addr, "DELETE", "/schedule/7f01", &[]), 404);
    let (_, _, list) = http(node.addr, "GET", "/schedule?subject=alerts.x", &[], b"");
    assert_eq!(json(&list)["scheduled"].as_array().unwrap().len(), 0);
    assert_eq!(http_status(node.addr, "GET", "/schedule", &[]), 400);
}

fn a_time_in_the_past_publishes_now(d: DriverChoice) {
    let node = start(d, |_| {});
    let (status, r) = schedule(node.addr, "alerts.y", now_ms() - 1000);
    assert_eq!(status, 200);
    assert_eq!(r["seq"], 1);
}

on_both_drivers!(
    a_future_publish_is_sequenced_and_delivered_at_its_time,
    pending_publishes_can_be_cancelled,
    a_time_in_the_past_publishes_now,
    listing_pending_schedules_needs_subscribe_permission_too,
);

#[test]
fn scheduling_needs_publish_permission() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let secret = "test-secret-that-is-long-enough-0123456789";
    let node = start(DriverChoice::Auto, |c| c.jwt_secret = Some(secret.into()));
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = |allowed: &str| {
        let claims =
            serde_json::json!({"exp":exp,"permissions":["publish"],"allowed_subjects":[allowed]});
        format!(
            "Bearer {}",
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret.as_bytes())
            )
            .unwrap()
        )
    };
    let (owner, other) = (token("alerts.>"), token("news.>"));
    let body = format!(
        r#"{{"subject":"alerts.z","data":1,"at":{}}}"#,
        now_ms() + 60_000
    );
    let (status, _, resp) = http(
        node.addr,
        "POST",
        "/publish",
        &[("Authorization", &owner)],
        body.as_bytes(),
    );
    assert_eq!(status, 202);
    let id = json(&resp)["schedule_id"].as_str().unwrap().to_string();
    let path = format!("/schedule/{id}");
    assert_eq!(
        http(
            node.addr,
            "POST",
            "/publish",
            &[("Authorization", &other)],
            body.as_bytes()
        )
        .0,
        403
    );
    assert_eq!(http_status(node.addr, "DELETE", &path, &[]), 401);
    assert_eq!(
        http_status(node.addr, "DELETE", &path, &[("Authorization", &other)]),
        403
    );
    assert_eq!(
        http_status(
            node.addr,
            "GET",
            "/schedule?subject=alerts.z",
            &[("Authorization", &other)]
        ),
        403
    );
    assert_eq!(
        http_status(node.addr, "DELETE", &path, &[("Authorization", &owner)]),
        200
    );
}

/// `GET /schedule?subject=S` shows the data of publishes not yet delivered: reading it needs
/// `subscribe` on S as well as `publish`.
fn listing_pending_schedules_needs_subscribe_permission_too(d: DriverChoice) {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let secret = "test-secret-that-is-long-enough-0123456789";
    let node = start(d, |c| c.jwt_secret = Some(secret.into()));
    let exp = now_ms() / 1000 + 3600;
    let token = |permissions: &[&str]| {
        let claims = serde_json::json!({"exp":exp,"permissions":permissions,"allowed_subjects":["alerts.>"]});
        let key = EncodingKey::from_secret(secret.as_bytes());
        let t = encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        format!("Bearer {t}")
    };
    let (publisher, both, reader) = (
        token(&["publish"]),
        token(&["publish", "subscribe"]),
        token(&["subscribe"]),
    );
    let at = now_ms() + 60_000;
    let body = format!(r#"{{"subject":"alerts.s","data":{{"secret":1}},"at":{at}}}"#);
    let auth = [("Authorization", publisher.as_str())];
    let (status, _, _) = http(node.addr, "POST", "/publish", &auth, body.as_bytes());
    assert_eq!(status, 202);
    let list = |auth: &str| {
        let path = "/schedule?subject=alerts.s";
        http(node.addr, "GET", path, &[("Authorization", auth)], b"")
    };
    let (status, _, resp) = list(&publisher);
    assert_eq!(status, 403, "publish alone does not reveal future data");
    let message = json(&resp)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("subscribe"), "{message}");
    assert_eq!(list(&reader).0, 403, "subscribe alone does not either");
    let (status, _, resp) = list(&both);
    assert_eq!(status, 200);
    assert_eq!(json(&resp)["scheduled"][0]["data"]["secret"], 1);
}
