//! The load generator against the real gateway: every scenario, small and bounded,
//! must report what it measured (and no loss where nothing may be lost); reports of two
//! processes merge.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const SECRET: &str = "bench-e2e-secret-0123456789";

struct Gateway {
    child: Child,
    addr: String,
    admin: String,
    dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway() -> Gateway {
    gateway_with(&[])
}

fn gateway_with(extra: &[&str]) -> Gateway {
    let bench = env!("CARGO_BIN_EXE_switchboard-bench");
    let server_bin = std::path::Path::new(bench).with_file_name("switchboard");
    assert!(server_bin.exists(), "build the workspace first (cargo test --workspace builds {server_bin:?})");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "send_rate = 0\nmax_frames_per_sec = 65535\nadmin_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(&server_bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--no-pin", "--config"])
        .arg(dir.path().join("c.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .args(extra)
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let after = |marker: &str| {
        line.split(marker).nth(1).and_then(|r| r.split([' ', ')']).next()).expect("listening line").to_owned()
    };
    let (addr, admin) = (after("s://"), after("admin http://"));
    Gateway { child, addr, admin, dir }
}

/// The sum over shards of one series of the gateway's Prometheus metrics.
fn metric(gw: &Gateway, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&gw.admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn bench(gw: &Gateway, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(args)
        .args(["--addr", &gw.addr, "--json", "--server-pid", &gw.child.id().to_string()])
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("conns"), "a progress line was printed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON report on stdout");
    assert_eq!(report["schema"], "switchboard-bench/1");
    report
}

#[test]
fn chat_with_groups_reports_every_message_delivered_once_in_order() {
    let gw = gateway();
    let r = bench(
        &gw,
        &[
            "chat",
            "--users",
            "40",
            "--rate",
            "400",
            "--secs",
            "2",
            "--groups",
            "4",
            "--group-size",
            "10",
            "--group-share",
            "0.5",
            "--body",
            "24-300",
            "--threads",
            "2",
            "--tag",
            "e2e",
        ],
    );
    let m = &r["messages"];
    assert_eq!(m["sent"], 800);
    assert_eq!(m["acked"], 800);
    assert!(m["group_sent"].as_u64().unwrap() > 0, "the mix sent group messages: {m}");
    assert!(m["expected_deliveries"].as_u64().unwrap() > 800, "group messages fan out: {m}");
    assert_eq!(m["delivered"], m["expected_deliveries"]);
    assert_eq!((m["lost"].as_u64(), m["duplicates"].as_u64(), m["out_of_order"].as_u64()), (Some(0), Some(0), Some(0)));
    assert!(r["latency"]["deliver"]["p99_us"].as_u64().unwrap() > 0);
    assert!(r["server"]["cpu_us_per_msg"].as_f64().is_some());
    assert!(!r["timeline"].as_array().unwrap().is_empty(), "a per-second timeline");
}

#[test]
fn chat_and_idle_with_permessage_deflate() {
    let gw = gateway_with(&["--permessage-deflate"]);
    // The client refuses to run unless the gateway accepted its offer; every frame
    // it then gets is inflated before it is decoded, every frame it sends compressed.
    let args = ["chat", "--users", "20", "--rate", "200", "--secs", "2", "--body", "24-300", "--deflate"];
    let r = bench(&gw, &[&args[..], &["--encoding", "json", "--tag", "zj"]].concat());
    let m = &r["messages"];
    assert_eq!((m["sent"].as_u64(), m["acked"].as_u64()), (Some(400), Some(400)), "{m}");
    assert_eq!(m["delivered"], m["expected_deliveries"]);
    assert_eq!((m["lost"].as_u64(), m["duplicates"].as_u64(), m["out_of_order"].as_u64()), (Some(0), Some(0), Some(0)));
    let r = bench(&gw, &[&args[..], &["--encoding", "fb", "--tag", "zf"]].concat());
    assert_eq!(r["messages"]["delivered"], r["messages"]["expected_deliveries"]);
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["idle", "--addr", &gw.addr, "--connections", "50", "--deflate", "--server-pid"])
        .arg(gw.child.id().to_string())
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((line["deflate"].as_bool(), line["connections"].as_u64()), (Some(true), Some(50)));
}

#[test]
fn storm_from_several_sources_merges_across_processes() {
    let gw = gateway();
    let a = bench(
        &gw,
        &[
            "storm",
            "--connections",
            "300",
            "--rate",
            "1000",
            "--hold",
            "3",
            "--sources",
            "127.0.0.2-127.0.0.4",
            "--tag",
            "a",
        ],
    );
    // A hold longer than the 2 s settle: the connections are really held (and counted
    // as closed if the server dropped any) before they are released.
    let b = bench(&gw, &["storm", "--connections", "200", "--rate", "1000", "--hold", "3", "--tag", "b"]);
    for (r, n) in [(&a, 300), (&b, 200)] {
        assert_eq!(r["connections"]["opened"], n, "{r}");
        assert_eq!(r["connections"]["failed"], 0);
        assert_eq!(r["connections"]["closed_during_hold"], 0);
        assert_eq!(r["latency"]["upgrade"]["count"], n);
        assert!(r["server"]["rss_after"].as_u64().unwrap() > 0);
    }
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (dir.path().join("a.json"), dir.path().join("b.json"));
    std::fs::write(&fa, a.to_string()).unwrap();
    std::fs::write(&fb, b.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-bench")).arg("merge").arg(&fa).arg(&fb).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((m["processes"].as_u64(), m["connections"]["opened"].as_u64()), (Some(2), Some(500)));
    assert_eq!(m["latency"]["upgrade"]["count"], 500, "histograms merge exactly");
}

#[test]
fn wss_storm_resumes_every_device_after_a_priming_pass() {
    let gw = gateway_with(&["--tls-dev"]);
    let ca = gw.dir.path().join("d").join("dev-cert.pem");
    let ca = ca.to_str().unwrap();
    let full = bench(
        &gw,
        &["storm", "--connections", "60", "--rate", "500", "--hold", "0", "--tls-ca", ca, "--no-resume", "--tag", "f"],
    );
    assert_eq!(
        (full["connections"]["opened"].as_u64(), full["connections"]["tls_resumed"].as_u64()),
        (Some(60), Some(0))
    );
    assert_eq!(metric(&gw, "switchboard_tls_handshakes_total"), 60);
    assert_eq!(metric(&gw, "switchboard_tls_resumed_total"), 0);
    // The client offers AES-128-GCM first, as browsers do, and the gateway follows the
    // client's order; rustls's own order puts AES-256-GCM first.
    assert_eq!(full["connections"]["tls_suites"], serde_json::json!({"TLS13_AES_128_GCM_SHA256": 60}), "{full}");
    let args = ["storm", "--connections", "10", "--rate", "500", "--hold", "0", "--tls-ca", ca, "--no-resume"];
    let rustls_order = bench(&gw, &[&args[..], &["--rustls-suite-order", "--tag", "o"]].concat());
    assert_eq!(rustls_order["connections"]["tls_suites"], serde_json::json!({"TLS13_AES_256_GCM_SHA384": 10}));
    // With resumption each device first connects once (unmeasured), then reconnects.
    let r = bench(&gw, &["storm", "--connections", "80", "--rate", "500", "--hold", "0", "--tls-ca", ca, "--tag", "r"]);
    assert_eq!(r["args"]["resume"], true);
    assert_eq!(r["connections"]["opened"], 80, "{r}");
    assert_eq!(r["connections"]["prime_failed"], 0);
    assert_eq!(r["connections"]["tls_resumed"], 80, "every measured handshake resumed: {r}");
    assert_eq!(metric(&gw, "switchboard_tls_handshakes_total"), 60 + 10 + 160);
    assert_eq!(metric(&gw, "switchboard_tls_resumed_total"), 80);
}

#[test]
fn storm_counts_refusals_by_reason() {
    let gw = gateway();
    // A wrong secret: every upgrade is refused with 401, and the report says so.
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["storm", "--connections", "20", "--rate", "1000", "--hold", "0", "--tag", "bad", "--json"])
        .args(["--addr", &gw.addr, "--secret", "not-the-secret-0123456789"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["connections"]["opened"], 0);
    assert_eq!(r["connections"]["failures"]["http_401"], 20, "{r}");
}

#[test]
fn fanout_reaches_every_member_and_reconnect_resyncs_everyone() {
    let gw = gateway();
    let f = bench(&gw, &["fanout", "--members", "300", "--rate", "20", "--secs", "2", "--tag", "fan"]);
    let m = &f["messages"];
    assert_eq!(m["sent"], 40);
    assert_eq!(m["expected_deliveries"], 40 * 299);
    assert_eq!((m["delivered"].as_u64(), m["lost"].as_u64()), (Some(40 * 299), Some(0)));
    assert_eq!(m["messages_reaching_every_member"], 40);
    assert_eq!(f["latency"]["last_member"]["count"], 40);

    let r =
        bench(&gw, &["reconnect", "--users", "100", "--before", "3", "--missed", "4", "--threads", "2", "--tag", "rc"]);
    assert_eq!(r["connections"]["resynced"], 100, "{r}");
    let m = &r["messages"];
    assert_eq!((m["replayed"].as_u64(), m["lost"].as_u64(), m["duplicates"].as_u64()), (Some(400), Some(0), Some(0)));
    assert_eq!(r["latency"]["resync"]["count"], 100);
}

#[test]
fn chat_with_receipts_acknowledges_what_it_receives() {
    let gw = gateway();
    let args = ["chat", "--users", "20", "--rate", "400", "--secs", "2", "--receipts", "--tag", "rcpt"];
    let r = bench(&gw, &args);
    let m = &r["messages"];
    assert_eq!((m["sent"].as_u64(), m["acked"].as_u64()), (Some(800), Some(800)), "{m}");
    assert_eq!(m["delivered"], m["expected_deliveries"]);
    // A delivered for every message and a read for every other one, and none refused.
    let receipts = m["receipts_sent"].as_u64().unwrap();
    assert!((1_150..=1_250).contains(&receipts), "{receipts} receipts for 800 messages");
    assert_eq!(m["errors"], serde_json::json!({}), "{m}");
    assert_eq!(r["args"]["receipts"], true);
}
