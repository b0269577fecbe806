//! The load generator against the real gateway: a short `chat` run must report every
//! message delivered once, in order, with latencies.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn chat_scenario_reports_every_message_delivered_once() {
    let bench = env!("CARGO_BIN_EXE_switchboard-bench");
    let server_bin = std::path::Path::new(bench).with_file_name("switchboard");
    assert!(server_bin.exists(), "build the workspace first (cargo test --workspace builds {server_bin:?})");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("c.toml"), "send_rate = 0\nadmin_listen = \"127.0.0.1:0\"\n").unwrap();
    let secret = "bench-e2e-secret-0123456789";
    let mut server = Command::new(&server_bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--no-pin", "--config"])
        .arg(tmp.path().join("c.toml"))
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .env("SWITCHBOARD_JWT_SECRET", secret)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("ws://").nth(1).and_then(|r| r.split_whitespace().next()).expect("listening line").to_owned();
    let out = Command::new(bench)
        .args(["chat", "--addr", &addr, "--pairs", "10", "--rate", "500", "--secs", "2", "--server-pid"])
        .arg(server.id().to_string())
        .env("SWITCHBOARD_JWT_SECRET", secret)
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report on stdout");
    assert_eq!(report["sent"], 1000);
    assert_eq!(report["delivered"], 1000);
    assert_eq!(report["acked"], 1000);
    assert_eq!(
        (report["lost"].as_u64(), report["duplicates"].as_u64(), report["out_of_order"].as_u64()),
        (Some(0), Some(0), Some(0))
    );
    assert!(report["deliver_latency"]["p99_us"].as_u64().unwrap() > 0);
    assert!(report["server_cpu_us_per_msg"].as_f64().is_some());
}
