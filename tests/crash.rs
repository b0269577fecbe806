//! End-to-end crash safety: clients send at full speed, the server is killed (-9) at a
//! random moment, restarted on the same data, and clients resend what was not acked.
//! Afterwards every acked message is stored exactly once, and so is every resent one.
//! Run with the default commit log, with a tiny one that fills and checkpoints during
//! the blast, and switching the log off and on between crashes (what one run logged is
//! replayed by the next whatever its setting).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::Rng;
use wire::frame::{ClientFrame, ConvId, History, ServerFrame};
use wire::Encoding;

const SENDERS: usize = 3;
const ITERATIONS: usize = 4;
const WINDOW: usize = 20;

#[derive(Default)]
struct Ledger {
    /// Every client_msg_id ever sent, per sender.
    sent: Vec<Vec<String>>,
    /// Acked ids and the conversation they landed in.
    acked: HashMap<String, ConvId>,
}

/// Sends new messages (ids `prefix-n`) with a window in flight until the connection
/// breaks, recording what was sent and acked.
fn blast(mut c: Client, sender: usize, prefix: String, body_len: usize, ledger: Arc<Mutex<Ledger>>) {
    let mut n = 0usize;
    let send = |c: &mut Client, n: &mut usize| -> bool {
        let id = format!("{prefix}-{n}");
        ledger.lock().unwrap().sent[sender].push(id.clone());
        *n += 1;
        let f = wire::fb::encode_client(&send_to("crash-recv", &id, &format!("{id:.<body_len$}")));
        c.ws.send(tungstenite::Message::binary(f)).is_ok()
    };
    for _ in 0..WINDOW {
        if !send(&mut c, &mut n) {
            return;
        }
    }
    loop {
        match c.ws.read() {
            Ok(tungstenite::Message::Binary(b)) => {
                if let Ok(ServerFrame::Ack(a)) = wire::fb::decode_server(&b) {
                    ledger.lock().unwrap().acked.insert(a.client_msg_id, a.conv);
                    if !send(&mut c, &mut n) {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => return, // the server died
        }
    }
}

#[test]
fn kill_9_at_random_moments_loses_nothing_acked_and_stores_resends_once() {
    let checkpoints = crash_and_audit(&[""], 0, false);
    assert_eq!(checkpoints, 0, "the default log does not fill in this test");
}

#[test]
fn a_commit_log_that_fills_during_the_blast_loses_nothing_acked() {
    // 1 MiB of log and 16 KiB bodies: a checkpoint every ~60 messages. Each crash comes
    // after the log has wrapped at least once in that run.
    crash_and_audit(&["commit_log_mib = 1"], 16 * 1024, true);
}

#[test]
fn a_log_left_by_a_crash_is_replayed_whether_the_log_is_on_or_off() {
    crash_and_audit(&["commit_log_mib = 1", "commit_log_mib = 0"], 2048, false);
}

/// Crashes a server [`ITERATIONS`] times in mid-blast (iteration `i` runs with config
/// `tomls[i % len]`; with `after_checkpoint`, only once its commit log has been
/// checkpointed), then audits every conversation; returns the log checkpoints seen.
fn crash_and_audit(tomls: &[&str], body_len: usize, after_checkpoint: bool) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let ledger = Arc::new(Mutex::new(Ledger { sent: vec![Vec::new(); SENDERS], acked: HashMap::new() }));
    let mut rng = rand::rng();
    let mut checkpoints = 0;
    for iteration in 0..ITERATIONS {
        let mut server = Server::start_in(&dir, 2, tomls[iteration % tomls.len()]);
        // Resend everything sent but never acked (from the previous crash) first.
        let pending: Vec<Vec<String>> = {
            let l = ledger.lock().unwrap();
            l.sent.iter().map(|ids| ids.iter().filter(|id| !l.acked.contains_key(*id)).cloned().collect()).collect()
        };
        for (s, ids) in pending.into_iter().enumerate() {
            let mut c = server.connect(&format!("crash-s{s}"), "d", Encoding::FlatBuffers);
            c.send_many(ids.iter().map(|id| send_to("crash-recv", id, id)));
            for _ in 0..ids.len() {
                match c.recv() {
                    ServerFrame::Ack(a) => {
                        ledger.lock().unwrap().acked.insert(a.client_msg_id, a.conv);
                    }
                    other => panic!("resend answered with {other:?}"),
                }
            }
        }
        // Then blast new messages and kill the server at a random moment.
        let threads: Vec<_> = (0..SENDERS)
            .map(|s| {
                let c = server.connect(&format!("crash-s{s}"), "d", Encoding::FlatBuffers);
                let ledger = ledger.clone();
                std::thread::spawn(move || blast(c, s, format!("i{iteration}-s{s}"), body_len, ledger))
            })
            .collect();
        if after_checkpoint {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while metric_total(&server, "switchboard_log_checkpoints_total") == 0 {
                assert!(std::time::Instant::now() < deadline, "no checkpoint within 20 s of traffic");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(30..300)));
        checkpoints += metric_total(&server, "switchboard_log_checkpoints_total");
        server.kill9();
        for t in threads {
            t.join().unwrap();
        }
    }
    // Final round: resend what is still unacked, then audit every conversation.
    // The audit pages through every conversation as fast as it can: no history limit.
    let server = Server::start_in(&dir, 2, &format!("{}\nhistory_rate = 0", tomls[0]));
    let l = ledger.lock().unwrap();
    let mut convs = HashSet::new();
    for (s, ids) in l.sent.iter().enumerate() {
        let unacked: Vec<&String> = ids.iter().filter(|id| !l.acked.contains_key(*id)).collect();
        let mut c = server.connect(&format!("crash-s{s}"), "d", Encoding::Json);
        c.send_many(unacked.iter().map(|id| send_to("crash-recv", id, id)));
        for _ in 0..unacked.len() {
            match c.recv() {
                ServerFrame::Ack(a) => {
                    convs.insert(a.conv);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    convs.extend(l.acked.values().copied());
    let mut r = server.connect("crash-recv", "d", Encoding::Json);
    let mut stored: HashMap<String, u32> = HashMap::new();
    for conv in convs {
        let mut before = None;
        let mut last_seq = None;
        loop {
            r.send(&ClientFrame::History(History { req_id: None, conv, before_seq: before, limit: Some(100) }));
            let ServerFrame::HistoryPage(p) = r.recv() else { panic!("expected a history page") };
            // Dense seqs, no gaps: pages chain exactly.
            if let (Some(first), Some(prev_first)) = (p.messages.last().map(|m| m.seq), last_seq) {
                assert_eq!(first + 1, prev_first, "a gap in seq");
            }
            last_seq = p.messages.first().map(|m| m.seq);
            before = last_seq;
            for m in p.messages {
                *stored.entry(m.client_msg_id).or_insert(0) += 1;
            }
            if !p.has_more {
                assert_eq!(last_seq, Some(1), "history reaches seq 1");
                break;
            }
        }
    }
    let total_sent: usize = l.sent.iter().map(Vec::len).sum();
    assert!(l.acked.len() > 100, "the test must actually have run traffic: {} acked", l.acked.len());
    for ids in &l.sent {
        for id in ids {
            assert_eq!(stored.get(id), Some(&1), "{id} stored exactly once");
        }
    }
    assert_eq!(stored.len(), total_sent, "nothing stored that was not sent");
    checkpoints
}
