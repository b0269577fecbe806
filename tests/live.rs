//! End-to-end: presence and typing.

mod common;

use common::*;
use wire::frame::{ClientFrame, PresenceState, PresenceUpdate, ServerFrame};
use wire::Encoding;

fn presence(c: &mut Client) -> Vec<PresenceUpdate> {
    match c.recv() {
        ServerFrame::Presence { updates } => updates,
        other => panic!("expected presence, got {other:?}"),
    }
}

fn watch(server: &Server, watcher: &str, users: &[&str]) -> Client {
    let mut w = server.connect(watcher, "d", Encoding::Json);
    w.send(&ClientFrame::PresenceSub { users: users.iter().map(|u| u.to_string()).collect() });
    w
}

/// Reads presence frames until `user` reaches `state`; returns that update and how many
/// frames it took.
fn until_state(c: &mut Client, user: &str, state: PresenceState) -> (PresenceUpdate, usize) {
    let mut frames = 0;
    loop {
        frames += 1;
        if let Some(u) = presence(c).into_iter().rev().find(|u| u.user == user) {
            if u.state == state {
                return (u, frames);
            }
        }
    }
}

const FAST: &str = "presence_window_ms = 100";

#[test]
fn online_on_connect_offline_with_last_seen_on_close() {
    let server = Server::start_with(2, FAST);
    let mut w = watch(&server, "watcher", &["bob"]);
    assert_eq!(
        presence(&mut w),
        vec![PresenceUpdate { user: "bob".into(), state: PresenceState::Offline, last_seen: None }]
    );
    let before = shard::ids::now_ms();
    let bob = server.connect("bob", "phone", Encoding::FlatBuffers);
    let (u, _) = until_state(&mut w, "bob", PresenceState::Online);
    assert_eq!(u.last_seen, None);
    drop(bob);
    let (u, _) = until_state(&mut w, "bob", PresenceState::Offline);
    let seen = u.last_seen.expect("last seen is public by default");
    assert!(seen >= before && seen <= shard::ids::now_ms(), "{seen}");
    // A new subscriber gets the current state at once, with last seen.
    let mut w2 = watch(&server, "watcher2", &["bob"]);
    assert_eq!(presence(&mut w2)[0].last_seen, Some(seen));
}

#[test]
fn devices_aggregate_and_away_needs_every_device() {
    let server = Server::start_with(2, FAST);
    let mut w = watch(&server, "w", &["carl"]);
    presence(&mut w);
    let mut phone = server.connect("carl", "phone", Encoding::Json);
    let laptop = server.connect("carl", "laptop", Encoding::Json);
    until_state(&mut w, "carl", PresenceState::Online);
    // Phone away, laptop still online: carl stays online. Then the laptop leaves: only
    // the away phone is left, so carl becomes away (not offline).
    phone.send(&ClientFrame::PresenceSet { state: PresenceState::Away, hide_last_seen: None });
    drop(laptop);
    let (u, _) = until_state(&mut w, "carl", PresenceState::Away);
    assert_eq!(u.last_seen, None);
    phone.send(&ClientFrame::PresenceSet { state: PresenceState::Online, hide_last_seen: None });
    until_state(&mut w, "carl", PresenceState::Online);
    drop(phone);
    until_state(&mut w, "carl", PresenceState::Offline);
}

#[test]
fn a_burst_is_coalesced_into_few_updates() {
    let server = Server::start_with(2, "presence_window_ms = 1500");
    let names: Vec<String> = (0..40).map(|i| format!("joiner{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut w = watch(&server, "w", &refs);
    // The first answer comes from each watched user's home shard: one frame per shard.
    let mut initial = 0;
    while initial < 40 {
        initial += presence(&mut w).len();
    }
    assert_eq!(initial, 40);
    // A flapping phone: 10 connects and disconnects, ending offline.
    for _ in 0..10 {
        drop(server.connect("flapper", "phone", Encoding::Json));
    }
    let mut f = watch(&server, "wf", &["flapper"]);
    presence(&mut f);
    for _ in 0..10 {
        drop(server.connect("flapper", "phone", Encoding::Json));
    }
    // 40 users join at once: the watcher gets them in one or two frames, not 40.
    let conns: Vec<Client> = names.iter().map(|n| server.connect(n, "d", Encoding::Json)).collect();
    let mut online = std::collections::HashSet::new();
    let mut frames = 0;
    while online.len() < 40 {
        frames += 1;
        for u in presence(&mut w) {
            assert_eq!(u.state, PresenceState::Online);
            online.insert(u.user);
        }
    }
    assert!(frames <= 2, "40 joins took {frames} presence frames");
    // The flapper ended where it started (offline): at most one update per window,
    // and never 20. Prove the stream is quiet by forcing a real change next.
    let keep = server.connect("flapper", "phone", Encoding::Json);
    let (_, frames) = until_state(&mut f, "flapper", PresenceState::Online);
    assert!(frames <= 2, "20 flaps + 1 connect took {frames} frames");
    drop((keep, conns));
}

#[test]
fn privacy_hides_last_seen() {
    let server = Server::start_with(1, FAST);
    let mut w = watch(&server, "w", &["dina"]);
    presence(&mut w);
    let mut d = server.connect("dina", "d", Encoding::Json);
    until_state(&mut w, "dina", PresenceState::Online);
    d.send(&ClientFrame::PresenceSet { state: PresenceState::Online, hide_last_seen: Some(true) });
    drop(d);
    let (u, _) = until_state(&mut w, "dina", PresenceState::Offline);
    assert_eq!(u.last_seen, None, "hidden");
}

#[test]
fn heartbeat_timeout_makes_a_silent_client_offline() {
    let server = Server::start_with(2, "presence_window_ms = 100\nping_interval_secs = 1\nidle_timeout_secs = 2");
    let mut w = watch(&server, "w", &["ghost"]);
    presence(&mut w);
    // A client that upgrades and then never answers (no pong, no frames).
    let mut ghost = raw_upgrade(server.addr, &server.token("ghost", Some("d")));
    until_state(&mut w, "ghost", PresenceState::Online);
    let (u, _) = until_state(&mut w, "ghost", PresenceState::Offline);
    assert!(u.last_seen.is_some());
    wait_for_eof(&mut ghost);
}

fn dm(server: &Server, a: &str, b: &str) -> (Client, Client, wire::frame::ConvId) {
    let mut ca = server.connect(a, "d", Encoding::Json);
    let mut cb = server.connect(b, "d", Encoding::FlatBuffers);
    ca.send(&send_to(b, "first", "hi"));
    let conv = match ca.recv() {
        ServerFrame::Ack(a) => a.conv,
        other => panic!("{other:?}"),
    };
    assert!(matches!(cb.recv(), ServerFrame::Msg(_)));
    (ca, cb, conv)
}

fn typing(c: &mut Client) -> (String, bool) {
    match c.recv() {
        ServerFrame::Typing { from, typing, .. } => (from, typing),
        other => panic!("expected typing, got {other:?}"),
    }
}

#[test]
fn typing_is_relayed_throttled_and_stopped_by_a_message() {
    let server = Server::start(2);
    let (mut a, mut b, conv) = dm(&server, "tina", "tom");
    for _ in 0..5 {
        a.send(&ClientFrame::Typing { conv, typing: true });
    }
    a.send(&send_to("tom", "after-typing", "done typing"));
    // Tom sees one start (the other four are throttled), the stop caused by the
    // message, then the message.
    assert_eq!(typing(&mut b), ("tina".into(), true));
    assert_eq!(typing(&mut b), ("tina".into(), false));
    assert!(matches!(b.recv(), ServerFrame::Msg(m) if m.client_msg_id == "after-typing"));
    // Tina got only her ack: typing is not echoed to the typist.
    assert!(matches!(a.recv(), ServerFrame::Ack(_)));
    // An explicit stop is relayed too.
    b.send(&ClientFrame::Typing { conv, typing: true });
    b.send(&ClientFrame::Typing { conv, typing: false });
    assert_eq!(typing(&mut a), ("tom".into(), true));
    assert_eq!(typing(&mut a), ("tom".into(), false));
    // Never stored: history holds the two messages only.
    a.send(&ClientFrame::History(wire::frame::History { req_id: None, conv, before_seq: None, limit: None }));
    match a.recv() {
        ServerFrame::HistoryPage(p) => assert_eq!(p.messages.len(), 2),
        other => panic!("{other:?}"),
    }
    // Outsiders cannot type into the conversation.
    let mut x = server.connect("outsider", "d", Encoding::Json);
    x.send(&ClientFrame::Typing { conv, typing: true });
    assert!(matches!(x.recv(), ServerFrame::Error(e) if e.code == wire::error::ErrorCode::NotMember));
}

#[test]
fn typing_expires_without_a_refresh() {
    let server = Server::start_with(1, "typing_ttl_secs = 1");
    let (a, mut b, conv) = dm(&server, "uma", "ulf");
    let mut a = a;
    a.send(&ClientFrame::Typing { conv, typing: true });
    assert_eq!(typing(&mut b), ("uma".into(), true));
    let t0 = std::time::Instant::now();
    assert_eq!(typing(&mut b), ("uma".into(), false));
    assert!(t0.elapsed() >= std::time::Duration::from_millis(500), "expired too early: {:?}", t0.elapsed());
}

/// Found by an independent client: a user already online when someone starts watching
/// must still go offline for that watcher when they disconnect.
#[test]
fn a_user_online_before_the_watch_goes_offline_for_the_watcher() {
    let server = Server::start_with(2, FAST);
    let mut users = Vec::new();
    // Several users, so both shards' homes are covered.
    for u in ["early-a", "early-b", "early-c", "early-d"] {
        users.push(server.connect(u, "d", Encoding::Json));
    }
    // The homes publish "online" (seen by a first watcher) before the late one watches.
    let mut first = watch(&server, "first-watcher", &["early-a", "early-b", "early-c", "early-d"]);
    until_all(&mut first, PresenceState::Online);
    let mut w = watch(&server, "late-watcher", &["early-a", "early-b", "early-c", "early-d"]);
    until_all(&mut w, PresenceState::Online);
    drop(users);
    let offline = until_all(&mut w, PresenceState::Offline);
    assert!(offline.iter().all(|u| u.last_seen.is_some()), "{offline:?}");
}

/// Reads presence frames until each of the four `early-*` users was last reported in
/// `state`; returns those updates.
fn until_all(c: &mut Client, state: PresenceState) -> Vec<PresenceUpdate> {
    let mut last = std::collections::HashMap::new();
    while last.len() < 4 || last.values().any(|u: &PresenceUpdate| u.state != state) {
        for u in presence(c) {
            last.insert(u.user.clone(), u);
        }
    }
    last.into_values().collect()
}
