//! The `ringcast-bench` command line: run bare it prints its help; options without a
//! scenario are a usage error. (Nothing here generates load.)

use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_ringcast-bench");

#[test]
fn ringcast_bench_without_arguments_prints_its_help_and_exits_0() {
    let out = Command::new(BENCH).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Usage: ringcast-bench"), "{stdout}");
    for scenario in ["broadcast", "pricefeed", "idle", "storm"] {
        assert!(stdout.contains(scenario), "help names {scenario}: {stdout}");
    }
}

#[test]
fn ringcast_bench_with_options_but_no_scenario_exits_2_and_says_what_is_missing() {
    let out = Command::new(BENCH)
        .args(["--threads", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Usage: ringcast-bench"), "{stderr}");
    assert!(stderr.contains("give a scenario"), "{stderr}");
}
