//! End-to-end: `switchboard plan` turns measured reports and a target into a fleet,
//! showing each step with the figure it came from.

mod common;

use std::process::Command;

fn plan(args: &[&str]) -> (bool, String, String) {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/plan");
    let out = Command::new(common::BIN)
        .arg("plan")
        .args(["--report", &format!("{fixtures}/storm.json"), "--report", &format!("{fixtures}/chat.json")])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_plan_shows_each_step_from_the_measured_figures() {
    // 86,400 msg/day = 1 msg/s average; x2 peak = 2 msg/s; 1,000,000 connections at
    // 1,000 B + 3,096 B kernel = 4,096 B each = 3.81 GiB; hosts of 4 GiB at 100%.
    let (ok, text, err) = plan(&[
        "--connections",
        "1000000",
        "--messages-per-day",
        "86400",
        "--peak-factor",
        "2",
        "--fanout",
        "1",
        "--kernel-per-socket",
        "3096",
        "--host-ram-gib",
        "4",
        "--host-cores",
        "8",
        "--utilisation",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(text.contains("storm.json (storm: server.bytes_per_conn)"), "M1 names its source:\n{text}");
    assert!(text.contains("chat.json (chat: server.cpu_us_per_msg)"), "M2 names its source:\n{text}");
    assert!(text.contains("= 1.00 msg/s"), "average rate:\n{text}");
    assert!(text.contains("= 2.00 msg/s"), "peak rate:\n{text}");
    assert!(text.contains("= 4096 B"), "RAM per connection:\n{text}");
    assert!(text.contains("= 3.81 GiB"), "RAM:\n{text}");
    assert!(text.contains("gateway hosts = max(step 5, step 8)            = 1"), "{text}");
    // Twice the connections need two hosts of 4 GiB.
    let (_, text, _) = plan(&[
        "--connections",
        "2000000",
        "--messages-per-day",
        "86400",
        "--kernel-per-socket",
        "3096",
        "--host-ram-gib",
        "4",
        "--utilisation",
        "1",
    ]);
    assert!(text.contains("hosts for RAM = 7.63 GiB / (4 GiB x 1)             = 2"), "{text}");
}

#[test]
fn a_missing_measurement_is_a_clear_error() {
    let out = Command::new(common::BIN)
        .args(["plan", "--report", concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/plan/storm.json")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no report gives server CPU per message"), "{err}");
}
