//! End-to-end: what was acknowledged survives `kill -9`, and reconnecting devices sync
//! exactly what they missed.

mod common;

use common::*;
use wire::frame::{ClientFrame, History, ServerFrame, SyncPoint};
use wire::Encoding;

#[test]
fn acked_messages_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(&tmp.path().join("d"), 2, "");
    let mut a = server.connect("ivy", "d", Encoding::FlatBuffers);
    const N: usize = 500;
    a.send_many((0..N).map(|i| send_to("jack", &format!("k{i}"), "durable?")));
    let mut conv = None;
    for i in 0..N {
        let ack = a.ack();
        assert_eq!(ack.client_msg_id, format!("k{i}"));
        conv = Some(ack.conv);
    }
    // Every ack is in: kill without any chance to flush.
    server.kill9();
    let server = Server::start_in(&tmp.path().join("d"), 2, "");
    let mut j = server.connect("jack", "d", Encoding::Json);
    let hist = history_all(&mut j, conv.unwrap());
    assert_eq!(hist.len(), N);
    for (i, (seq, cmid)) in hist.iter().enumerate() {
        assert_eq!((*seq, cmid.as_str()), (i as u64 + 1, format!("k{i}").as_str()));
    }
    // The dedupe window was rebuilt from storage: a resend after restart is not stored again.
    let mut a = server.connect("ivy", "d", Encoding::Json);
    a.send(&send_to("jack", "k7", "durable?"));
    let ack = a.ack();
    assert!(ack.duplicate && ack.seq == 8);
}

#[test]
fn restarting_with_another_shard_count_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Server::start_in(&tmp.path().join("d"), 2, ""));
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "3", "--data-dir"])
        .arg(tmp.path().join("d"))
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("created with 2 shards") && err.contains("--shards 2"), "{err}");
}

#[test]
fn reconnecting_device_syncs_exactly_what_it_missed() {
    let server = Server::start(2);
    let mut a = server.connect("kate", "d", Encoding::Json);
    let send = |a: &mut Client, to: &str, cmid: &str| {
        a.send(&send_to(to, cmid, cmid));
        a.ack()
    };
    // Bob's phone sees messages 1-3 live, then goes offline.
    let mut b = server.connect("leo", "phone", Encoding::FlatBuffers);
    let dm = (1..=3).map(|i| send(&mut a, "leo", &format!("x{i}"))).last().unwrap().conv;
    for _ in 0..3 {
        assert!(matches!(b.recv(), ServerFrame::Msg(_)));
    }
    drop(b);
    for i in 4..=7 {
        send(&mut a, "leo", &format!("x{i}"));
    }
    // A second conversation leo has never seen on this device.
    let mut m = server.connect("mia", "d", Encoding::Json);
    let other = send(&mut m, "leo", "y1").conv;
    // Reconnect with the last seen seq: exactly 4..=7 of the DM, and the new DM in full.
    let mut b = server.connect("leo", "phone", Encoding::FlatBuffers);
    b.send(&ClientFrame::Hello { sync: vec![SyncPoint { conv: dm, seq: 3 }], list_since: None });
    let mut pages = Vec::new();
    let total = loop {
        match b.recv() {
            ServerFrame::SyncPage(p) => pages.push(p),
            ServerFrame::Synced { convs } => break convs,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(total, 2);
    pages.sort_by_key(|p| p.conv != dm);
    let seqs: Vec<_> = pages[0].messages.iter().map(|m| (m.seq, m.client_msg_id.clone())).collect();
    assert_eq!(seqs, (4..=7).map(|i| (i, format!("x{i}"))).collect::<Vec<_>>());
    assert!(!pages[0].has_more);
    assert_eq!((pages[1].conv, pages[1].messages.len()), (other, 1));
    // Nothing new: an up-to-date device gets an empty sync.
    b.send(&ClientFrame::Hello {
        sync: vec![SyncPoint { conv: dm, seq: 7 }, SyncPoint { conv: other, seq: 1 }],
        list_since: None,
    });
    assert!(matches!(b.recv(), ServerFrame::Synced { convs: 0 }));
}

#[test]
fn sync_is_bounded_per_conversation_and_history_pages_the_rest() {
    let server = Server::start_with(1, "sync_per_conv = 5\nhistory_max = 4\nhistory_default = 4");
    let mut a = server.connect("nia", "d", Encoding::Json);
    a.send_many((1..=12).map(|i| send_to("otto", &format!("z{i}"), "z")));
    let mut conv = None;
    for _ in 0..12 {
        if let ServerFrame::Ack(ack) = a.recv() {
            conv = Some(ack.conv);
        }
    }
    let mut o = server.connect("otto", "new-device", Encoding::Json);
    o.send(&ClientFrame::Hello { sync: vec![], list_since: None });
    let page = match o.recv() {
        ServerFrame::SyncPage(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![8, 9, 10, 11, 12]);
    assert!(page.has_more);
    assert!(matches!(o.recv(), ServerFrame::Synced { convs: 1 }));
    // History pages backwards from the oldest synced message, capped at history_max.
    let hist = history_all(&mut o, conv.unwrap());
    assert_eq!(hist.len(), 12);
    o.send(&ClientFrame::History(History {
        req_id: Some("r".into()),
        conv: conv.unwrap(),
        before_seq: Some(8),
        limit: Some(50),
    }));
    match o.recv() {
        ServerFrame::HistoryPage(p) => {
            assert_eq!(p.req_id.as_deref(), Some("r"));
            assert_eq!(p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5, 6, 7]);
            assert!(p.has_more);
        }
        other => panic!("{other:?}"),
    }
}

/// Sets or clears the immutable attribute: writes through already-open descriptors then
/// fail with EPERM (ext4, XFS), a real disk-write failure under a running server.
fn chattr(flag: &str, path: &std::path::Path) {
    let out = std::process::Command::new("chattr").arg(flag).arg(path).output().expect("run chattr (e2fsprogs)");
    assert!(out.status.success(), "chattr {flag} {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_failed_commit_log_write_is_refused_retryably_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let log = dir.join("shard-0").join("commit.log");
    let mut server = Server::start_in(&dir, 1, "");
    let mut a = server.connect("fay", "d", Encoding::Json);
    let mut b = server.connect("gus", "d", Encoding::Json);
    let expect_ack = |a: &mut Client, cmid: &str, seq: u64| {
        let ack = a.ack();
        assert_eq!((ack.client_msg_id.as_str(), ack.seq), (cmid, seq));
        ack.conv
    };
    a.send(&send_to("gus", "m1", "before"));
    let conv = expect_ack(&mut a, "m1", 1);
    chattr("+i", &log);
    // The append fails, then (still failing) so does the checkpoint that must precede
    // the next append: both answer `internal` for this message, nothing is acked.
    for attempt in 0..2 {
        a.send(&send_to("gus", "m2", "during"));
        match a.recv() {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, wire::error::ErrorCode::Internal, "attempt {attempt}: {e:?}");
                assert_eq!(e.ref_id.as_deref(), Some("m2"));
            }
            other => panic!("attempt {attempt}: expected an internal error, got {other:?}"),
        }
    }
    chattr("-i", &log);
    a.send(&send_to("gus", "m2", "during"));
    expect_ack(&mut a, "m2", 2);
    a.send(&send_to("gus", "m3", "after"));
    expect_ack(&mut a, "m3", 3);
    assert!(metric_total(&server, "switchboard_log_checkpoints_total") >= 1, "a new generation was started");
    // The recipient saw each message once, in order: nothing of the failed attempts.
    for (cmid, seq) in [("m1", 1), ("m2", 2), ("m3", 3)] {
        match b.recv() {
            ServerFrame::Msg(m) => assert_eq!((m.client_msg_id.as_str(), m.seq), (cmid, seq)),
            other => panic!("expected {cmid}, got {other:?}"),
        }
    }
    let want: Vec<(u64, String)> = [(1, "m1"), (2, "m2"), (3, "m3")].map(|(s, c)| (s, c.to_owned())).to_vec();
    assert_eq!(history_all(&mut b, conv), want);
    // And after a crash, from the log of the new generation.
    server.kill9();
    let server = Server::start_in(&dir, 1, "");
    let mut b = server.connect("gus", "d", Encoding::Json);
    assert_eq!(history_all(&mut b, conv), want);
}

#[test]
fn a_batch_larger_than_the_commit_log_is_stored_after_everything_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    // 1 MiB of log; 60 messages of 40 KB queue behind the first commit as one batch of
    // ~2.4 MB, which no log record can hold. The half-second commit window makes them
    // one batch however slowly a busy machine lets the client send them.
    let mut server = Server::start_in(&dir, 1, "commit_log_mib = 1\ncommit_window_us = 500000");
    let mut a = server.connect("hal", "d", Encoding::FlatBuffers);
    let body = "x".repeat(40_000);
    const N: usize = 60;
    a.send_many((0..N).map(|i| send_to("ida", &format!("big{i}"), &body)));
    let mut conv = None;
    for i in 0..N {
        let ack = a.ack();
        assert_eq!((ack.client_msg_id.clone(), ack.seq), (format!("big{i}"), i as u64 + 1));
        conv = Some(ack.conv);
    }
    assert!(
        metric_total(&server, "switchboard_log_bypasses_total") >= 1,
        "a batch went past the log: {}",
        admin_request(&server, "GET", "/metrics").1
    );
    a.send(&send_to("ida", "small", "after"));
    assert_eq!(a.ack().seq, N as u64 + 1);
    server.kill9();
    let server = Server::start_in(&dir, 1, "commit_log_mib = 1");
    let mut i = server.connect("ida", "d", Encoding::Json);
    let hist = history_all(&mut i, conv.unwrap());
    let want: Vec<(u64, String)> =
        (0..N).map(|k| (k as u64 + 1, format!("big{k}"))).chain([(N as u64 + 1, "small".to_owned())]).collect();
    assert_eq!(hist, want);
}

#[test]
fn a_store_failing_behind_the_commit_log_refuses_reads_and_loses_nothing_acked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut server = Server::start_in(&dir, 1, "commit_log_mib = 1");
    let mut a = server.connect("kim", "d", Encoding::FlatBuffers);
    a.send(&send_to("lou", "first", "before"));
    let conv = a.ack().conv;
    // fjall's journal made immutable: its next write fails and fjall stops accepting
    // writes until restarted. The commit log, in front of it, still takes commits.
    let journals: Vec<_> = std::fs::read_dir(dir.join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .collect();
    assert!(!journals.is_empty(), "fjall keeps its journal in shard-0/*.jnl");
    for j in &journals {
        chattr("+i", j);
    }
    let body = "y".repeat(8 * 1024);
    let (mut acked, mut refused) = (vec!["first".to_owned()], 0);
    // Until the 1 MiB log is full (~120 records), sends are acked from the log; then the
    // checkpoint needs the store, so they are refused, retryably, instead of waiting.
    for i in 0..400 {
        let cmid = format!("m{i}");
        a.send(&send_to("lou", &cmid, &body));
        match a.recv() {
            ServerFrame::Ack(ack) => {
                assert_eq!(ack.seq, acked.len() as u64 + 1, "dense seqs");
                acked.push(cmid);
            }
            ServerFrame::Error(e) => {
                assert_eq!(e.code, wire::error::ErrorCode::Internal, "{e:?}");
                refused += 1;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(acked.len() > 10 && refused == 1, "acked {} then refused", acked.len());
    // Reads need the store: refused too, not left waiting.
    a.send(&ClientFrame::History(History { req_id: Some("h".into()), conv, before_seq: None, limit: Some(10) }));
    match a.recv() {
        ServerFrame::Error(e) => assert_eq!(e.code, wire::error::ErrorCode::Internal, "{e:?}"),
        other => panic!("history answered {other:?} while the store is failing"),
    }
    for j in &journals {
        chattr("-i", j);
    }
    // A restart replays the log into the repaired store: every acked message is there.
    server.kill9();
    let server = Server::start_in(&dir, 1, "commit_log_mib = 1");
    let mut l = server.connect("lou", "d", Encoding::Json);
    let want: Vec<(u64, String)> = acked.iter().enumerate().map(|(k, c)| (k as u64 + 1, c.clone())).collect();
    assert_eq!(history_all(&mut l, conv), want);
}
