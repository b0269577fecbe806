//! End-to-end: what a hostile client can make the server remember, against the real
//! binary at its default bounds (rate limits lifted for the attacker so the test is
//! quick: the bounds must hold without them).
//!
//! - 200,000 invented conversation ids (typing, sends, history): each answered with an
//!   error, nothing kept but a bounded negative cache (65,536 ids per shard);
//! - 204,800 invented presence names, watched from 200 connections (1,024 each, the
//!   `max_presence_subs` cap): kept only while watched, gone when the watchers close;
//! - 2,000 users who connect once and leave: nothing kept but their durable record.
//!
//! RSS is read from `/proc`; the figures the server reports on `/metrics` (users,
//! conversations, negative cache) must return to their baseline.

mod common;

use std::time::Instant;

use common::*;
use wire::frame::{ClientFrame, ConvId, History, MsgKind, Send, ServerFrame, Target};
use wire::Encoding;

const MIB: u64 = 1 << 20;

/// Waits (bounded) until the sum over shards of a gauge satisfies `ok`.
fn wait_metric(server: &Server, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let v = metric_total(server, name);
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} stuck at {v}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn rss(server: &Server) -> u64 {
    rss_bytes(server.pid())
}

#[test]
fn hostile_clients_cannot_grow_the_servers_memory_past_its_bounds() {
    let server = Server::start_with(2, "");
    // Warm up the paths (allocator pages, first reads) before the baseline.
    let mut warm = server.connect("warm", "d", Encoding::Json);
    warm.send(&send_to("warm-peer", "w1", "hello"));
    assert!(matches!(warm.recv(), ServerFrame::Ack(_)));
    drop(warm);
    wait_metric(&server, "switchboard_users", |u| u == 0);
    let base = rss(&server);

    // 1. Invented conversation ids. The attacker's own limits are lifted by the config
    // of this user only through the test defaults (no send limit); typing and history
    // are paced by their per-user limits, so the attacker uses many users.
    let invented = 200_000u128;
    let per_user = 2_000u128;
    let mut errors = 0u64;
    for u in 0..invented / per_user {
        let mut c = server.connect(&format!("attacker-{u}"), "d", Encoding::FlatBuffers);
        let frames = (0..per_user).map(|i| {
            let conv = ConvId(0xdead_0000_0000 + u * per_user + i);
            match i % 3 {
                0 => ClientFrame::Send(Send {
                    reply_to: None,
                    target_seq: None,
                    forward: None,
                    client_msg_id: format!("x{i}"),
                    target: Target::Conv(conv),
                    body: b"?".to_vec(),
                    kind: MsgKind::Text,
                }),
                1 => ClientFrame::Typing { conv, typing: true },
                _ => ClientFrame::History(History { req_id: None, conv, before_seq: None, limit: None }),
            }
        });
        c.send_many(frames);
        // Every request is answered: not a member, or (typing, history) rate limited,
        // or (reads full) unavailable. None is answered with data.
        for _ in 0..per_user {
            match c.recv() {
                ServerFrame::Error(_) => errors += 1,
                other => panic!("an invented conversation answered {other:?}"),
            }
        }
    }
    assert_eq!(errors, invented as u64);
    // The gauge is refreshed on the beat: wait for it to show only the warm-up DM.
    wait_metric(&server, "switchboard_conversations", |n| n == 1);
    let negative = wait_metric(&server, "switchboard_negative_cache", |_| true);
    assert!(negative <= 2 * 65_536, "negative cache within its bound: {negative}");
    wait_metric(&server, "switchboard_users", |u| u == 0);
    let after_convs = rss(&server);
    let per_item = after_convs.saturating_sub(base) / invented as u64;
    eprintln!("invented conversations: RSS {} -> {} MiB, {per_item} B each", base / MIB, after_convs / MIB);
    // The negative cache is the only thing kept (~60 B an id, 65,536 ids a shard).
    assert!(after_convs <= base + 16 * MIB, "RSS grew {} MiB", (after_convs - base) / MIB);

    // 2. Invented presence names, 1,024 per connection from 200 connections.
    let mut watchers = Vec::new();
    for w in 0..200 {
        let mut c = server.connect(&format!("watcher-{w}"), "d", Encoding::FlatBuffers);
        let frames = (0..4)
            .map(|f| ClientFrame::PresenceSub { users: (0..256).map(|i| format!("ghost-{w}-{f}-{i}")).collect() });
        c.send_many(frames);
        watchers.push(c);
    }
    let names = 200 * 1024;
    let watched = wait_metric(&server, "switchboard_users", |u| u >= names);
    let peak = rss(&server);
    let per_name = peak.saturating_sub(after_convs) / names;
    eprintln!("{watched} users in memory while watched: RSS {} MiB, {per_name} B a name", peak / MIB);
    assert!(per_name <= 1_024, "{per_name} B per watched name");
    // One more name than the cap is refused, and nothing is kept for it.
    let c = &mut watchers[0];
    c.send(&ClientFrame::PresenceSub { users: vec!["one-too-many".into()] });
    loop {
        match c.recv() {
            ServerFrame::Presence { .. } => continue,
            ServerFrame::Error(e) => {
                assert_eq!(e.code, wire::error::ErrorCode::LimitExceeded);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    drop(watchers);
    wait_metric(&server, "switchboard_users", |u| u == 0);

    // 3. Churn: 2,000 users connect once and leave.
    for u in 0..2_000 {
        let c = server.connect(&format!("passer-{u}"), "d", Encoding::Json);
        drop(c);
    }
    wait_metric(&server, "switchboard_users", |u| u == 0);
    assert_eq!(metric_total(&server, "switchboard_connections"), 0);
    // Freed memory goes back to the system on the beat after churn.
    let deadline = Instant::now() + DEADLINE;
    let end = loop {
        let now = rss(&server);
        if now <= after_convs + 24 * MIB || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    eprintln!("after the watchers and 2,000 passers-by left: RSS {} MiB", end / MIB);
    assert!(end <= after_convs + 24 * MIB, "RSS returned toward its baseline: {} MiB above", (end - after_convs) / MIB);
}
