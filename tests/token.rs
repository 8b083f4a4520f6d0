//! `ringcast token`: a minted token is accepted by a node holding the matching secret or
//! public key and grants exactly what its flags say; a bad key is a clear error, exit code 2.

mod common;

use common::{fixture, http, mint, run_ringcast, start, Node, Ws};
use ringcast::config::{Config, DriverChoice};
use serde_json::Value;

const SECRET: &str = "token-test-secret-that-is-long-enough-0123";

fn secret_file() -> common::TempDir {
    let f = common::TempDir::new("secret");
    std::fs::write(&f.0, format!("{SECRET}\n")).unwrap();
    f
}

fn hs_node(d: DriverChoice) -> Node {
    start(d, |c: &mut Config| c.jwt_secret = Some(SECRET.into()))
}

fn ws_with(node: &Node, token: &str) -> Result<Ws, (u16, String)> {
    Ws::try_connect(node.addr, &format!("/ws?token={token}"), &[]).map(Ws::hello)
}

/// The status of a refused upgrade with `token` (panics if it was accepted).
fn refused(node: &Node, token: &str) -> u16 {
    match ws_with(node, token) {
        Ok(_) => panic!("the upgrade was accepted"),
        Err((status, _)) => status,
    }
}

fn sub_reply(c: &mut Ws, id: u64, pattern: &str) -> Value {
    let (r, _) = c.request(&format!(
        r#"{{"op":"sub","id":{id},"subject":"{pattern}"}}"#
    ));
    r
}

fn publish_status(node: &Node, token: &str, subject: &str) -> u16 {
    let body = format!(r#"{{"subject":"{subject}","data":1}}"#);
    let auth = format!("Bearer {token}");
    http(
        node.addr,
        "POST",
        "/publish",
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .0
}

fn a_minted_token_subscribes_where_allowed_and_nowhere_else(d: DriverChoice) {
    let node = hs_node(d);
    let f = secret_file();
    let path = f.0.to_str().unwrap();
    let token = mint(&[
        "--secret-file",
        path,
        "--sub",
        "alice",
        "--allow",
        "prices.>",
        "--deny",
        "prices.internal.>",
    ]);
    let mut c = ws_with(&node, &token).expect("the node accepts the minted token");
    assert_eq!(sub_reply(&mut c, 1, "prices.EURUSD")["op"], "ok");
    let denied = sub_reply(&mut c, 2, "prices.internal.x");
    assert_eq!(
        (denied["op"].as_str(), denied["code"].as_str()),
        (Some("err"), Some("forbidden")),
        "{denied}"
    );
    let outside = sub_reply(&mut c, 3, "news.x");
    assert_eq!(outside["code"], "forbidden", "{outside}");
    assert_eq!(
        publish_status(&node, &token, "prices.EURUSD"),
        403,
        "no --publish: no publishing"
    );
}

fn a_minted_token_publishes_only_where_publish_allows(d: DriverChoice) {
    let node = hs_node(d);
    let token = mint(&[
        "--secret",
        SECRET,
        "--publish",
        "orders.alice.*",
        "--deny",
        "orders.alice.admin",
    ]);
    assert_eq!(publish_status(&node, &token, "orders.alice.1"), 200);
    assert_eq!(publish_status(&node, &token, "orders.bob.1"), 403);
    assert_eq!(publish_status(&node, &token, "orders.alice.admin"), 403);
    let mut c = ws_with(&node, &token).unwrap();
    assert_eq!(
        sub_reply(&mut c, 1, "orders.alice.1")["code"],
        "forbidden",
        "no --allow: no subscribing"
    );
}

fn rs256_and_es256_tokens_from_private_keys_are_accepted(d: DriverChoice) {
    for (private, public) in [
        ("rsa_private.pem", "rsa_public.pem"),
        ("ec_private.pem", "ec_public.pem"),
    ] {
        let node = start(d, |c: &mut Config| {
            c.jwt_public_key = Some(fixture(public).into())
        });
        let token = mint(&[
            "--key-file",
            &fixture(private),
            "--sub",
            "u",
            "--allow",
            "a.>",
        ]);
        let mut c = ws_with(&node, &token).unwrap_or_else(|e| panic!("{private}: {e:?}"));
        assert_eq!(sub_reply(&mut c, 1, "a.b")["op"], "ok", "{private}");
        let hs = mint(&["--secret", SECRET, "--allow", "a.>"]);
        assert_eq!(
            refused(&node, &hs),
            401,
            "an HS256 token for a {public} node"
        );
    }
}

fn issuer_audience_and_publish_rate_are_minted_as_the_node_checks_them(d: DriverChoice) {
    let node = start(d, |c: &mut Config| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_issuer = Some("idp".into());
        c.jwt_audience = Some("ringcast".into());
    });
    let plain = mint(&["--secret", SECRET, "--allow", "a"]);
    assert_eq!(refused(&node, &plain), 401, "the node requires iss and aud");
    let token = mint(&[
        "--secret",
        SECRET,
        "--allow",
        "a",
        "--publish",
        "a",
        "--iss",
        "idp",
        "--aud",
        "ringcast",
        "--max-publish-rate",
        "1",
    ]);
    let mut c = ws_with(&node, &token).expect("iss and aud accepted");
    // A rate of 1/s with one second of burst: of 50 publishes sent at once, most are refused.
    for i in 0..50 {
        c.send(&format!(
            r#"{{"op":"pub","id":{i},"subject":"a","data":1}}"#
        ));
    }
    let replies: Vec<Value> = (0..50).map(|_| c.recv_json()).collect();
    let limited = replies
        .iter()
        .filter(|r| r["code"] == "rate_limited")
        .count();
    assert!(
        limited >= 40,
        "max_publish_rate 1 let through {} of 50",
        50 - limited
    );
}

/// The node's own secret and issuer come from its config file with `--config`.
fn the_nodes_config_file_supplies_the_secret_and_issuer(d: DriverChoice) {
    let node = start(d, |c: &mut Config| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_issuer = Some("idp".into());
    });
    let f = common::TempDir::new("node-config");
    std::fs::write(
        &f.0,
        format!("jwt-secret = \"{SECRET}\"\njwt-issuer = \"idp\"\n"),
    )
    .unwrap();
    let token = mint(&["--config", f.0.to_str().unwrap(), "--allow", "a"]);
    assert!(ws_with(&node, &token).is_ok());
}

on_both_drivers!(
    a_minted_token_subscribes_where_allowed_and_nowhere_else,
    a_minted_token_publishes_only_where_publish_allows,
    rs256_and_es256_tokens_from_private_keys_are_accepted,
    issuer_audience_and_publish_rate_are_minted_as_the_node_checks_them,
    the_nodes_config_file_supplies_the_secret_and_issuer,
);

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&json).unwrap()
}

#[test]
fn ttl_sets_exp_after_iat() {
    for (ttl, secs) in [("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 7 * 86_400)] {
        let c = claims(&mint(&["--secret", SECRET, "--ttl", ttl]));
        let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
        assert_eq!(exp - iat, secs, "--ttl {ttl}");
    }
}

#[test]
fn a_short_secret_or_a_bad_key_file_is_a_clear_error_with_exit_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--secret", "short"], "at least 32"),
        (
            &["--secret-file", "/nonexistent/secret"],
            "--secret-file /nonexistent/secret",
        ),
        (&["--key-file", &fixture("rsa_public.pem")], "public key"),
        (
            &["--key-file", &fixture("README.md")],
            "not a PEM private key",
        ),
        (
            &["--key-file", &fixture("ec_private.pem"), "--alg", "RS256"],
            "does not match the key",
        ),
        (&["--secret", SECRET, "--allow", "a..b"], "--allow \"a..b\""),
        (&["--secret", SECRET, "--ttl", "soon"], "--ttl"),
        (&[], "no signing key"),
    ];
    for (args, want) in cases {
        let argv: Vec<&str> = std::iter::once("token")
            .chain(args.iter().copied())
            .collect();
        let (code, out, err) = run_ringcast(&argv, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed a token");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
