//! The config file (`--config`), its precedence under env and flags, `--print-config`, and the
//! generated reference `docs/config.md`.

mod common;

use common::{run_ringcast, spawn_ringcast, TempDir, Ws};
use ringcast::config::DriverChoice;

fn file(toml: &str) -> TempDir {
    let f = TempDir::new("config.toml");
    std::fs::write(&f.0, toml).unwrap();
    f
}

/// `ringcast --print-config ARGS` (which must succeed), parsed.
fn effective(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let args: Vec<&str> = std::iter::once("--print-config")
        .chain(args.iter().copied())
        .collect();
    let (code, out, err) = run_ringcast(&args, env);
    assert_eq!(code, 0, "{err}");
    out.parse().expect("--print-config prints TOML")
}

#[test]
fn the_config_file_is_overridden_by_env_and_env_by_flags() {
    let f = file("history = 1\nmax-subjects = 2\nmax-connections = 3\n");
    let path = f.0.to_str().unwrap();
    let t = effective(
        &["--config", path, "--max-connections", "30"],
        &[
            ("RINGCAST_MAX_SUBJECTS", "20"),
            ("RINGCAST_MAX_CONNECTIONS", "300"),
        ],
    );
    assert_eq!(t["history"].as_integer(), Some(1), "from the file");
    assert_eq!(
        t["max-subjects"].as_integer(),
        Some(20),
        "env over the file"
    );
    assert_eq!(t["max-connections"].as_integer(), Some(30), "flag over env");
    let t = effective(&[], &[("RINGCAST_CONFIG", path)]);
    assert_eq!(
        t["history"].as_integer(),
        Some(1),
        "RINGCAST_CONFIG names the file"
    );
}

#[test]
fn lists_and_switches_in_the_config_file_take_toml_types() {
    let f = file("allowed-origins = [\"https://a.example\", \"https://b.example\"]\necho-endpoint = true\nwrite-pacing = 0.5\n");
    let t = effective(&["--config", f.0.to_str().unwrap()], &[]);
    let origins: Vec<&str> = t["allowed-origins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(origins, ["https://a.example", "https://b.example"]);
    assert_eq!(t["echo-endpoint"].as_bool(), Some(true));
    assert_eq!(t["write-pacing"].as_float(), Some(0.5));
}

#[test]
fn an_unknown_key_or_a_bad_value_in_the_config_file_is_an_error_naming_it() {
    for (toml, want) in [
        (
            "histroy = 5\n",
            "unknown key `histroy` (did you mean `history`?)",
        ),
        (
            "listen = \"nowhere\"\n",
            "key `listen`: invalid value 'nowhere'",
        ),
        ("history = \"many\"\n", "key `history`"),
        (
            "echo-endpoint = 1\n",
            "key `echo-endpoint`: expected true or false",
        ),
        ("history = \n", "TOML parse error"),
    ] {
        let f = file(toml);
        let (code, out, err) = run_ringcast(&["--config", f.0.to_str().unwrap()], &[]);
        assert_eq!(code, 2, "{toml:?}: {err}");
        assert!(out.is_empty(), "{toml:?}");
        assert!(err.contains(want), "{toml:?}: {err}");
    }
    let (code, _, err) = run_ringcast(&["--config", "/nonexistent/ringcast.toml"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("config file /nonexistent/ringcast.toml"),
        "{err}"
    );
}

#[test]
fn print_config_redacts_the_jwt_secret() {
    let secret = "print-config-secret-that-is-long-enough-01234";
    let f = file(&format!(
        "jwt-secret = \"{secret}\"\nnats-url = \"nats://u:pw@127.0.0.1:4222\"\n"
    ));
    let (code, out, _) = run_ringcast(&["--print-config", "--config", f.0.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(!out.contains(secret) && !out.contains("pw@"), "{out}");
    let t: toml::Table = out.parse().unwrap();
    assert_eq!(t["jwt-secret"].as_str(), Some("<redacted>"));
    assert_eq!(
        t["nats-url"].as_str(),
        Some("nats://<redacted>@127.0.0.1:4222")
    );
    let t = effective(&[], &[("RINGCAST_JWT_SECRET", secret)]);
    assert_eq!(t["jwt-secret"].as_str(), Some("<redacted>"));
}

#[test]
fn print_config_output_is_a_config_file_that_reproduces_itself() {
    let (_, first, _) = run_ringcast(
        &[
            "--print-config",
            "--history",
            "9",
            "--allowed-origins",
            "https://a.example",
            "--demo-feed",
        ],
        &[],
    );
    let f = file(&first);
    let (code, second, err) =
        run_ringcast(&["--print-config", "--config", f.0.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(first, second);
    assert!(
        first.contains("\n# Messages retained per subject"),
        "each option has its doc"
    );
}

#[test]
fn the_committed_config_reference_matches_the_binary() {
    let (code, generated, err) = run_ringcast(&["--print-config-reference"], &[]);
    assert_eq!(code, 0, "{err}");
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md"))
        .unwrap_or_default();
    assert!(
        committed == generated,
        "docs/config.md is out of date: cargo run --bin ringcast -- --print-config-reference > docs/config.md"
    );
}

fn a_node_started_with_a_config_file_serves_by_it(d: DriverChoice) {
    let f = file("allowed-origins = [\"https://a.example\"]\nmax-subs-per-conn = 1\n");
    let driver = if d == DriverChoice::Legacy {
        "legacy"
    } else {
        "auto"
    };
    let path = f.0.to_str().unwrap();
    let (mut child, addr, _) = spawn_ringcast(&[
        "--config",
        path,
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--driver",
        driver,
    ]);
    let refused = Ws::try_connect(addr, "/ws", &[("Origin", "https://b.example")]).err();
    assert_eq!(refused.map(|(status, _)| status), Some(403));
    let mut c = Ws::try_connect(addr, "/ws", &[("Origin", "https://a.example")])
        .unwrap()
        .hello();
    c.sub(1, "a");
    let (r, _) = c.request(r#"{"op":"sub","id":2,"subject":"b"}"#);
    assert_eq!(r["op"], "err", "max-subs-per-conn = 1 from the file: {r}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

on_both_drivers!(a_node_started_with_a_config_file_serves_by_it);
