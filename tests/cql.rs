//! End-to-end on a real Cassandra cluster (scripts/test starts one node and runs the
//! one-node test; storage/cql/fault-test.sh starts three and runs the three-node test).
//! The durability rule with nodes down: nothing is acknowledged that the configured
//! consistency did not store, refusals are retryable, and once the nodes are back every
//! acknowledged message is readable exactly once with dense seqs.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::*;
use wire::error::ErrorCode;
use wire::frame::{ConvId, ServerFrame};
use wire::Encoding;

/// Runs `storage/cql/cassandra.sh` with `args` (the nodes the test command started).
fn cassandra(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../storage/cql/cassandra.sh");
    let status = Command::new(script).args(args).status().expect("run cassandra.sh");
    assert!(status.success(), "cassandra.sh {args:?}: {status}");
}

/// Sends `cmid` to `to` until it is acknowledged (a refusal must be the retryable
/// `internal` or `unavailable`; anything else fails), within `deadline`.
fn send_until_acked(c: &mut Client, to: &str, cmid: &str, deadline: std::time::Duration) -> wire::frame::Ack {
    let end = Instant::now() + deadline;
    loop {
        c.send(&send_to(to, cmid, "m"));
        match c.recv() {
            ServerFrame::Ack(a) => return a,
            ServerFrame::Error(e) => {
                assert!(matches!(e.code, ErrorCode::Internal | ErrorCode::Unavailable), "{e:?}");
                assert!(Instant::now() < end, "{cmid} not acknowledged within {deadline:?}: {e:?}");
                // The driver reconnects on its own schedule: give it a moment.
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            other => panic!("expected an ack or a refusal, got {other:?}"),
        }
    }
}

/// Sends 20 messages `{prefix}0..` from `c` to bea, each acknowledged: their
/// conversation and `(seq, client_msg_id)`s.
fn send_acked(c: &mut Client, prefix: &str) -> (ConvId, Vec<(u64, String)>) {
    let acks: Vec<_> = (0..20).map(|i| send_until_acked(c, "bea", &format!("{prefix}{i}"), DEADLINE)).collect();
    (acks[0].conv, acks.into_iter().map(|a| (a.seq, a.client_msg_id)).collect())
}

/// Sends `cmid` once while too few replicas are up: it must be refused retryably.
fn send_refused(c: &mut Client, to: &str, cmid: &str) {
    c.send(&send_to(to, cmid, "m"));
    match c.recv() {
        ServerFrame::Error(e) => {
            assert!(matches!(e.code, ErrorCode::Internal | ErrorCode::Unavailable), "{e:?}");
            assert_eq!(e.ref_id.as_deref(), Some(cmid));
        }
        other => panic!("{cmid}: expected a retryable refusal with the replicas down, got {other:?}"),
    }
}

/// Every acked message once, in ack order, seqs dense from 1.
fn check_history(server: &Server, conv: ConvId, acked: &[(u64, String)]) {
    let mut reader = server.connect("bea", "check", Encoding::Json);
    let hist = history_all(&mut reader, conv);
    assert_eq!(hist.len(), acked.len(), "history {hist:?}\nacked {acked:?}");
    for (i, ((seq, cmid), (aseq, acmid))) in hist.iter().zip(acked).enumerate() {
        assert_eq!(*seq, i as u64 + 1, "dense seqs");
        assert_eq!((seq, cmid), (aseq, acmid));
    }
}

#[test]
#[ignore = "needs the CQL test node: scripts/test runs it with CQL_TEST_NODES"]
fn one_node_down_refuses_sends_retryably_and_loses_nothing_acked() {
    let nodes = cql_nodes().expect("CQL_TEST_NODES");
    assert_eq!(nodes.len(), 1, "a one-node cluster");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut server = Server::start_in(&dir, 2, "cql_request_timeout_ms = 2000\n");
    let mut a = server.connect("abe", "d", Encoding::FlatBuffers);
    let (conv, mut acked) = send_acked(&mut a, "up");
    // The messages went through the CQL driver, not the embedded store.
    let (_, metrics) = admin_request(&server, "GET", "/metrics");
    let stored = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_cql_requests_total{statement=\"insert_message\",outcome=\"ok\"} "))
        .expect("the CQL driver's metrics are exported");
    assert!(stored.parse::<u64>().unwrap() >= 1, "{stored}");
    // The driver's families pass promtool beside the gateway's (scripts/test installs it).
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    assert!(check.wait().unwrap().success(), "promtool check metrics failed on:\n{metrics}");

    cassandra(&["kill", "1"]);
    for i in 0..5 {
        send_refused(&mut a, "bea", &format!("down{i}"));
    }
    assert!(metric_total(&server, "switchboard_storage_errors_total") >= 5);
    cassandra(&["restart", "1"]);
    // The refused messages are resent and stored once each, after what was acked.
    for i in 0..5 {
        let ack = send_until_acked(&mut a, "bea", &format!("down{i}"), std::time::Duration::from_secs(90));
        assert!(!ack.duplicate, "{ack:?}");
        acked.push((ack.seq, ack.client_msg_id));
    }
    check_history(&server, conv, &acked);
    // And across a kill -9 of the gateway: the next start reads the seqs back from the
    // cluster (no gap, no reuse) and a resend is still a duplicate.
    server.kill9();
    let server = Server::start_in(&dir, 2, "cql_request_timeout_ms = 2000\n");
    let mut a = server.connect("abe", "d", Encoding::Json);
    let dup = send_until_acked(&mut a, "bea", "up3", DEADLINE);
    assert!(dup.duplicate && dup.seq == 4, "{dup:?}");
    let next = send_until_acked(&mut a, "bea", "after", DEADLINE);
    assert_eq!(next.seq, acked.len() as u64 + 1);
    acked.push((next.seq, next.client_msg_id));
    check_history(&server, conv, &acked);
}

#[test]
#[ignore = "needs a three-node CQL cluster: storage/cql/fault-test.sh runs it"]
fn three_nodes_at_local_quorum_survive_one_down_and_refuse_with_two_down() {
    let nodes = cql_nodes().expect("CQL_TEST_NODES");
    assert_eq!(nodes.len(), 3, "a three-node cluster (replication factor 3)");
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_in(&tmp.path().join("d"), 2, "cql_request_timeout_ms = 3000\n");
    let mut a = server.connect("abe", "d", Encoding::Json);
    let (conv, mut acked) = send_acked(&mut a, "all");
    // One node of three down: LOCAL_QUORUM (2 of 3) still acknowledges, history complete.
    cassandra(&["kill", "3"]);
    for i in 0..20 {
        let ack = send_until_acked(&mut a, "bea", &format!("one{i}"), DEADLINE);
        acked.push((ack.seq, ack.client_msg_id));
    }
    check_history(&server, conv, &acked);
    // Two down: every send is refused retryably and nothing is acknowledged.
    cassandra(&["kill", "2"]);
    for i in 0..5 {
        send_refused(&mut a, "bea", &format!("two{i}"));
    }
    // Back up: the refused ones are stored once each, seqs dense, nothing lost.
    cassandra(&["restart", "2"]);
    cassandra(&["restart", "3"]);
    for i in 0..5 {
        let ack = send_until_acked(&mut a, "bea", &format!("two{i}"), std::time::Duration::from_secs(90));
        acked.push((ack.seq, ack.client_msg_id));
    }
    check_history(&server, conv, &acked);
}
