//! End-to-end: after a scripted burst of traffic the admin endpoint's counters and
//! histograms moved by exactly the expected amounts, the exposition passes
//! `promtool check metrics`, and the committed alert rules and Grafana dashboard are
//! valid and use only series the gateway exports. scripts/test installs promtool
//! (Debian's prometheus package) and runs this.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use wire::frame::{ClientFrame, ConvId, History, ServerFrame};
use wire::Encoding;

/// The value of one exact series line (`name{labels}`), 0 when absent.
fn series(metrics: &str, key: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// The sum of every series of a family.
fn family_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
#[ignore = "needs promtool: scripts/test installs it and runs this"]
fn a_burst_moves_the_metrics_by_what_happened_and_the_exposition_passes_promtool() {
    let server = Server::start(2);
    let (_, before) = admin_request(&server, "GET", "/metrics");
    // The burst: 3 upgrades with a bad token, 40 DMs, one history request for a
    // conversation the user is not in.
    for _ in 0..3 {
        assert!(upgrade_response(server.addr, "not-a-jwt").starts_with("HTTP/1.1 401"));
    }
    let mut a = server.connect("obs-a", "d", Encoding::Json);
    let mut b = server.connect("obs-b", "d", Encoding::FlatBuffers);
    for i in 0..40 {
        a.send(&send_to("obs-b", &format!("m{i}"), "hello"));
        a.ack();
    }
    let mut got = 0;
    while got < 40 {
        if let ServerFrame::Msg(_) = b.recv() {
            got += 1;
        }
    }
    a.send(&ClientFrame::History(History {
        req_id: Some("h".into()),
        conv: ConvId(0x1234),
        before_seq: None,
        limit: None,
    }));
    let code = a.until(|f| match f {
        ServerFrame::Error(e) => Some(e.code),
        _ => None,
    });
    // The error's code as /metrics labels it.
    let code = code.name();
    // Commits end just after their acks, and gauges are published on the shards' beat:
    // wait until both settle.
    let metrics = {
        let mut last = String::new();
        for _ in 0..200 {
            let (_, m) = admin_request(&server, "GET", "/metrics");
            if family_sum(&m, "switchboard_messages_stored_total") >= 40.0
                && family_sum(&m, "switchboard_commits_total")
                    == family_sum(&m, "switchboard_commit_duration_seconds_count")
                && family_sum(&m, "switchboard_connections") == 2.0
            {
                last = m;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        assert!(!last.is_empty(), "the commit counters never settled");
        last
    };
    let moved = |name: &str| family_sum(&metrics, name) - family_sum(&before, name);
    assert_eq!(moved("switchboard_messages_stored_total"), 40.0);
    assert_eq!(moved("switchboard_deliveries_total"), 40.0);
    // Send→ack and send→deliver latency histograms: one observation per ack and at
    // least one per delivered message.
    assert_eq!(moved("switchboard_send_ack_seconds_count"), 40.0);
    assert!(moved("switchboard_send_deliver_seconds_count") >= 40.0);
    assert_eq!(moved("switchboard_accepted_total"), 5.0, "3 refused + 2 clients");
    let refused = |m: &str| {
        (0..2)
            .map(|k| {
                series(
                    m,
                    &format!("switchboard_upgrades_refused_by_reason_total{{shard=\"{k}\",reason=\"unauthorized\"}}"),
                )
            })
            .sum::<f64>()
    };
    assert_eq!(refused(&metrics) - refused(&before), 3.0);
    let errors = |m: &str| {
        (0..2)
            .map(|k| series(m, &format!("switchboard_error_frames_total{{shard=\"{k}\",code=\"{code}\"}}")))
            .sum::<f64>()
    };
    assert_eq!(errors(&metrics) - errors(&before), 1.0, "one {code} error frame");
    assert_eq!(moved("switchboard_connections"), 2.0, "two clients connected (gauge), the refused ones never counted");
    // The exposition format.
    let (ok, out) = promtool(&["check", "metrics"], Some(&metrics));
    assert!(ok, "promtool check metrics:\n{out}\n{metrics}");
    // The alert rules and the dashboard: valid, and every series they name is exported.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let rules = format!("{root}/ops/prometheus/switchboard-alerts.yml");
    let (ok, out) = promtool(&["check", "rules", &rules], None);
    assert!(ok, "promtool check rules:\n{out}");
    let dashboard = std::fs::read_to_string(format!("{root}/ops/grafana/switchboard-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    let used = |text: &str| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("switchboard_") {
            let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[i + name.len()..];
            let family = ["_bucket", "_sum", "_count"].iter().fold(name.clone(), |n, s| {
                if exported.contains(&n) {
                    n
                } else {
                    n.strip_suffix(s).map_or(n.clone(), str::to_owned)
                }
            });
            out.insert(family);
        }
        out
    };
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let exprs: Vec<String> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    for name in used(&rules_text).union(&used(&exprs.join("\n"))) {
        assert!(exported.contains(name), "{name} is used by the rules or the dashboard but not exported");
    }
}
