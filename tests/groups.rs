//! End-to-end: groups. Creation, messages to every member across shards, the stored
//! `system` events, admin rights, leaving, limits, and membership surviving a restart.

mod common;

use common::*;
use wire::error::ErrorCode;
use wire::frame::{ClientFrame, ConvId, GroupAction, GroupInfo, GroupOp, Message, MsgKind, ServerFrame, Target};
use wire::Encoding;

fn op(action: GroupAction, req: &str, conv: Option<ConvId>, name: Option<&str>, members: &[&str]) -> ClientFrame {
    ClientFrame::Group(GroupOp {
        req_id: Some(req.into()),
        action,
        conv,
        name: name.map(str::to_owned),
        members: members.iter().map(|m| m.to_string()).collect(),
        description: None,
        avatar: None,
    })
}

fn send_conv(conv: ConvId, cmid: &str, body: &str) -> ClientFrame {
    ClientFrame::Send(wire::frame::Send {
        reply_to: None,
        target_seq: None,
        forward: None,
        client_msg_id: cmid.into(),
        target: Target::Conv(conv),
        body: body.as_bytes().to_vec(),
        kind: MsgKind::Text,
    })
}

fn expect_info(c: &mut Client, req: &str) -> GroupInfo {
    match c.recv() {
        ServerFrame::GroupInfo(i) if i.req_id.as_deref() == Some(req) => *i,
        other => panic!("{}: expected group_info for {req}, got {other:?}", c.user),
    }
}

fn expect_error(c: &mut Client, code: ErrorCode, req: &str) {
    match c.recv() {
        ServerFrame::Error(e) if e.code == code && e.ref_id.as_deref() == Some(req) => {}
        other => panic!("{}: expected {code:?} for {req}, got {other:?}", c.user),
    }
}

fn expect_msg(c: &mut Client) -> Message {
    match c.recv() {
        ServerFrame::Msg(m) => m,
        other => panic!("{}: expected msg, got {other:?}", c.user),
    }
}

/// The next message must be a group event; returns its parsed body.
fn expect_event(c: &mut Client, event: &str) -> (Message, serde_json::Value) {
    let m = expect_msg(c);
    assert_eq!(m.kind, MsgKind::System, "{}: expected a system event, got {m:?}", c.user);
    let body: serde_json::Value = serde_json::from_slice(&m.body).expect("event body is JSON");
    assert_eq!(body["event"], event, "{}: {body}", c.user);
    (m, body)
}

fn users(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_group_is_created_and_its_messages_reach_every_member_on_every_shard() {
    let server = Server::start(2);
    let mut alice = server.connect("alice", "phone", Encoding::Json);
    let mut bob = server.connect("bob", "phone", Encoding::FlatBuffers);
    let mut carol = server.connect("carol", "laptop", Encoding::Json);
    let mut dave = server.connect("dave", "phone", Encoding::Json);

    alice.send(&op(GroupAction::Create, "g1", None, Some("Lunch ✓"), &["carol", "bob", "bob"]));
    let info = expect_info(&mut alice, "g1");
    assert_eq!(info.conv.0 >> 127, 1, "group ids have the top bit set");
    assert_eq!((info.name.as_str(), info.seq), ("Lunch ✓", 1));
    assert_eq!(info.members, users(&["alice", "bob", "carol"]), "sorted, deduplicated, creator included");
    assert_eq!(info.admins, users(&["alice"]));
    for c in [&mut bob, &mut carol] {
        let (m, body) = expect_event(c, "create");
        assert_eq!((m.conv, m.seq, m.from.as_str()), (info.conv, 1, "alice"));
        assert_eq!(body["name"], "Lunch ✓");
        assert_eq!(body["by"], "alice");
    }

    // Messages: ordered, to every member but the sending device, which gets the ack.
    alice.send(&send_conv(info.conv, "a1", "hi all"));
    match alice.recv() {
        ServerFrame::Ack(a) => assert_eq!((a.conv, a.seq), (info.conv, 2)),
        other => panic!("expected ack, got {other:?}"),
    }
    assert_eq!(expect_msg(&mut bob).body, b"hi all");
    bob.send(&send_conv(info.conv, "b1", "hi alice"));
    match bob.recv() {
        ServerFrame::Ack(a) => assert_eq!(a.seq, 3),
        other => panic!("expected ack, got {other:?}"),
    }
    let got: Vec<(u64, String)> =
        (0..2).map(|_| expect_msg(&mut carol)).map(|m| (m.seq, String::from_utf8(m.body).unwrap())).collect();
    assert_eq!(got, vec![(2, "hi all".into()), (3, "hi alice".into())]);
    assert_eq!(expect_msg(&mut alice).seq, 3);

    // An outsider can neither send nor read nor ask.
    dave.send(&send_conv(info.conv, "d1", "let me in"));
    match dave.recv() {
        ServerFrame::Error(e) => assert_eq!((e.code, e.ref_id.as_deref()), (ErrorCode::NotMember, Some("d1"))),
        other => panic!("expected not_member, got {other:?}"),
    }
    dave.send(&op(GroupAction::Info, "d2", Some(info.conv), None, &[]));
    expect_error(&mut dave, ErrorCode::NotMember, "d2");

    // A member's history includes the event and the messages, in order.
    carol.send(&ClientFrame::History(wire::frame::History {
        req_id: Some("h".into()),
        conv: info.conv,
        before_seq: None,
        limit: None,
    }));
    match carol.recv() {
        ServerFrame::HistoryPage(p) => {
            let kinds: Vec<(u64, MsgKind)> = p.messages.iter().map(|m| (m.seq, m.kind)).collect();
            assert_eq!(kinds, vec![(1, MsgKind::System), (2, MsgKind::Text), (3, MsgKind::Text)]);
        }
        other => panic!("expected history, got {other:?}"),
    }
}

#[test]
fn only_admins_change_a_group_and_removed_members_lose_access() {
    let server = Server::start(2);
    let mut alice = server.connect("alice", "phone", Encoding::FlatBuffers);
    let mut bob = server.connect("bob", "phone", Encoding::Json);
    let mut carol = server.connect("carol", "phone", Encoding::Json);
    let mut dave = server.connect("dave", "phone", Encoding::FlatBuffers);
    alice.send(&op(GroupAction::Create, "c", None, None, &["bob", "carol"]));
    let g = expect_info(&mut alice, "c").conv;
    expect_event(&mut bob, "create");
    expect_event(&mut carol, "create");

    // Bob is not an admin.
    for (action, members, name) in [
        (GroupAction::Add, &["dave"][..], None),
        (GroupAction::Remove, &["carol"][..], None),
        (GroupAction::Rename, &[][..], Some("mine")),
        (GroupAction::Promote, &["bob"][..], None),
    ] {
        bob.send(&op(action, "nope", Some(g), name, members));
        expect_error(&mut bob, ErrorCode::Forbidden, "nope");
    }

    // Alice adds dave: every member (dave included) gets the event, then dave gets messages.
    alice.send(&op(GroupAction::Add, "add", Some(g), None, &["dave", "bob"]));
    let info = expect_info(&mut alice, "add");
    assert_eq!(info.members, users(&["alice", "bob", "carol", "dave"]));
    for c in [&mut bob, &mut carol, &mut dave] {
        let (m, body) = expect_event(c, "add");
        assert_eq!(m.seq, 2);
        assert_eq!(body["members"], serde_json::json!(["dave"]), "only the users actually added");
    }
    // Adding someone already there changes nothing and stores nothing.
    alice.send(&op(GroupAction::Add, "again", Some(g), None, &["dave"]));
    assert_eq!(expect_info(&mut alice, "again").seq, 0);

    // Promote bob; bob can now remove carol. Carol gets the removal, then is out.
    alice.send(&op(GroupAction::Promote, "p", Some(g), None, &["bob"]));
    assert_eq!(expect_info(&mut alice, "p").admins, users(&["alice", "bob"]));
    for c in [&mut bob, &mut carol, &mut dave] {
        expect_event(c, "promote");
    }
    alice.send(&op(GroupAction::Promote, "pe", Some(g), None, &["zed"]));
    expect_error(&mut alice, ErrorCode::BadValue, "pe");
    bob.send(&op(GroupAction::Remove, "rm", Some(g), None, &["carol"]));
    let info = expect_info(&mut bob, "rm");
    assert_eq!(info.members, users(&["alice", "bob", "dave"]));
    for c in [&mut alice, &mut carol, &mut dave] {
        let (m, body) = expect_event(c, "remove");
        assert_eq!((m.seq, m.from.as_str()), (4, "bob"));
        assert_eq!(body["members"], serde_json::json!(["carol"]));
    }
    carol.send(&send_conv(g, "c1", "still here?"));
    match carol.recv() {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::NotMember),
        other => panic!("expected not_member, got {other:?}"),
    }
    // Carol's sync and history end at her removal (seq 4); dave's go on.
    alice.send(&send_conv(g, "a1", "after carol"));
    let _ack = alice.recv();
    assert_eq!(expect_msg(&mut dave).seq, 5);
    assert_eq!(expect_msg(&mut bob).seq, 5);
    carol.send(&ClientFrame::Hello { sync: vec![], list_since: None });
    let mut synced_to = 0;
    loop {
        match carol.recv() {
            ServerFrame::SyncPage(p) if p.conv == g => synced_to = p.messages.iter().map(|m| m.seq).max().unwrap_or(0),
            ServerFrame::SyncPage(_) => {}
            ServerFrame::Synced { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(synced_to, 4, "a removed member syncs up to the removal, nothing after");
    carol.send(&ClientFrame::History(wire::frame::History { req_id: None, conv: g, before_seq: None, limit: None }));
    match carol.recv() {
        ServerFrame::HistoryPage(p) => assert_eq!(p.messages.last().map(|m| m.seq), Some(4)),
        other => panic!("expected her history up to the removal, got {other:?}"),
    }

    // Demoting every admin is refused; when the last admin leaves, a member takes over.
    alice.send(&op(GroupAction::Demote, "d", Some(g), None, &["alice", "bob"]));
    expect_error(&mut alice, ErrorCode::Forbidden, "d");
    alice.send(&op(GroupAction::Demote, "d2", Some(g), None, &["bob"]));
    assert_eq!(expect_info(&mut alice, "d2").admins, users(&["alice"]));
    alice.send(&op(GroupAction::Leave, "bye", Some(g), None, &[]));
    let info = expect_info(&mut alice, "bye");
    assert_eq!(info.members, users(&["bob", "dave"]));
    assert_eq!(info.admins, users(&["bob"]), "the first remaining member becomes admin");
    for c in [&mut bob, &mut dave] {
        expect_event(c, "demote");
        expect_event(c, "leave");
    }
}

#[test]
fn group_size_is_limited_and_bad_requests_get_clear_errors() {
    let server = Server::start_with(2, "max_group_members = 3");
    let mut alice = server.connect("alice", "phone", Encoding::Json);
    alice.send(&op(GroupAction::Create, "big", None, None, &["b", "c", "d"]));
    expect_error(&mut alice, ErrorCode::LimitExceeded, "big");
    alice.send(&op(GroupAction::Create, "ok", None, None, &["b", "c"]));
    let g = expect_info(&mut alice, "ok").conv;
    alice.send(&op(GroupAction::Add, "more", Some(g), None, &["d"]));
    expect_error(&mut alice, ErrorCode::LimitExceeded, "more");

    // Shape errors are decided by the codec, before any shard work.
    let raw = |text: &str| tungstenite::Message::text(text.to_owned());
    for (frame, code) in [
        (r#"{"op":"group","action":"add","req_id":"x"}"#, "missing_field"),
        (r#"{"op":"group","action":"explode","req_id":"x"}"#, "bad_value"),
        (r#"{"op":"group","action":"create","conv":"00000000000000000000000000000001"}"#, "bad_value"),
        (r#"{"op":"send","client_msg_id":"s","to":"b","kind":"system","body":"{}"}"#, "bad_value"),
    ] {
        alice.ws.send(raw(frame)).unwrap();
        match alice.recv() {
            ServerFrame::Error(e) => assert_eq!(e.code.name(), code, "{frame}: {}", e.message),
            other => panic!("{frame}: expected {code}, got {other:?}"),
        }
    }
    // A DM is not a group.
    let dm = shard::ids::dm_conv("alice", "b");
    alice.send(&send_to("b", "m", "hi"));
    let _ack = alice.recv();
    alice.send(&op(GroupAction::Info, "dm", Some(dm), None, &[]));
    expect_error(&mut alice, ErrorCode::NotMember, "dm");
}

#[test]
fn membership_and_events_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let g;
    {
        let mut server = Server::start_in(&dir, 2, "");
        let mut alice = server.connect("alice", "phone", Encoding::Json);
        alice.send(&op(GroupAction::Create, "c", None, Some("team"), &["bob", "carol"]));
        g = expect_info(&mut alice, "c").conv;
        alice.send(&op(GroupAction::Remove, "r", Some(g), None, &["carol"]));
        expect_info(&mut alice, "r");
        alice.send(&send_conv(g, "m", "durable"));
        let _ack = alice.recv();
        server.kill9();
    }
    let server = Server::start_in(&dir, 2, "");
    let mut bob = server.connect("bob", "phone", Encoding::FlatBuffers);
    bob.send(&op(GroupAction::Info, "i", Some(g), None, &[]));
    let info = expect_info(&mut bob, "i");
    assert_eq!((info.name.as_str(), info.members, info.admins), ("team", users(&["alice", "bob"]), users(&["alice"])));
    bob.send(&ClientFrame::Hello { sync: vec![], list_since: None });
    let mut seen = Vec::new();
    loop {
        match bob.recv() {
            ServerFrame::SyncPage(p) if p.conv == g => seen.extend(p.messages.iter().map(|m| (m.seq, m.kind))),
            ServerFrame::SyncPage(_) => {}
            ServerFrame::Synced { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec![(1, MsgKind::System), (2, MsgKind::System), (3, MsgKind::Text)]);
    let mut carol = server.connect("carol", "phone", Encoding::Json);
    carol.send(&send_conv(g, "x", "back?"));
    match carol.recv() {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::NotMember),
        other => panic!("expected not_member, got {other:?}"),
    }
}

/// A `describe` request.
fn describe(req: &str, conv: ConvId, description: Option<&str>, avatar: Option<&str>) -> ClientFrame {
    ClientFrame::Group(GroupOp {
        req_id: Some(req.into()),
        action: GroupAction::Describe,
        conv: Some(conv),
        name: None,
        members: Vec::new(),
        description: description.map(str::to_owned),
        avatar: avatar.map(str::to_owned),
    })
}

/// The `group_info` for `req`, or the error's code.
fn group_outcome(c: &mut Client, req: &str) -> Result<GroupInfo, ErrorCode> {
    c.until(|f| match f {
        ServerFrame::GroupInfo(i) if i.req_id.as_deref() == Some(req) => Some(Ok((**i).clone())),
        ServerFrame::Error(e) if e.ref_id.as_deref() == Some(req) => Some(Err(e.code)),
        _ => None,
    })
}

#[test]
fn owner_admin_and_member_each_may_do_exactly_their_part() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut server = Server::start_in(&dir, 2, "");
    let mut owner = server.connect("pm-owner", "d", Encoding::Json);
    let mut admin = server.connect("pm-admin", "d", Encoding::FlatBuffers);
    let mut member = server.connect("pm-member", "d", Encoding::Json);
    owner.send(&op(GroupAction::Create, "c", None, Some("Team"), &["pm-admin", "pm-member", "pm-x"]));
    let g = group_outcome(&mut owner, "c").unwrap();
    assert_eq!((g.owner.as_str(), g.admins.clone()), ("pm-owner", users(&["pm-owner"])));
    let conv = Some(g.conv);
    owner.send(&op(GroupAction::Promote, "p", conv, None, &["pm-admin"]));
    group_outcome(&mut owner, "p").unwrap();

    // Every operation, by member, admin and owner in turn: accepted (a change that
    // changes nothing is answered too), or refused with this code.
    let no = Err(ErrorCode::Forbidden);
    type Case = (&'static str, ClientFrame, [Result<(), ErrorCode>; 3]);
    let cases: Vec<Case> = vec![
        ("add", op(GroupAction::Add, "add", conv, None, &["pm-y"]), [no, Ok(()), Ok(())]),
        ("rm", op(GroupAction::Remove, "rm", conv, None, &["pm-y"]), [no, Ok(()), Ok(())]),
        ("ren", op(GroupAction::Rename, "ren", conv, Some("T2"), &[]), [no, Ok(()), Ok(())]),
        ("desc", describe("desc", g.conv, Some("our team"), Some("https://cdn.example/t.png")), [no, Ok(()), Ok(())]),
        ("pro", op(GroupAction::Promote, "pro", conv, None, &["pm-x"]), [no, Ok(()), Ok(())]),
        ("dem", op(GroupAction::Demote, "dem", conv, None, &["pm-owner"]), [no, no, no]),
        ("rmo", op(GroupAction::Remove, "rmo", conv, None, &["pm-owner"]), [no, no, no]),
        ("tr", op(GroupAction::Transfer, "tr", conv, None, &["pm-admin"]), [no, no, Ok(())]),
    ];
    for (name, frame, want) in cases {
        for (role, c) in [&mut member, &mut admin, &mut owner].into_iter().enumerate() {
            c.send(&frame);
            assert_eq!(group_outcome(c, name).map(|_| ()), want[role], "{name} by role {role}");
        }
    }
    // Ownership moved: the old owner is an admin, the new one may delete; the old one may not.
    owner.send(&op(GroupAction::Info, "i", conv, None, &[]));
    let info = group_outcome(&mut owner, "i").unwrap();
    assert_eq!(info.owner, "pm-admin");
    assert!(info.admins.contains(&"pm-owner".to_owned()));
    assert_eq!((info.description.as_str(), info.avatar.as_str()), ("our team", "https://cdn.example/t.png"));
    owner.send(&op(GroupAction::Delete, "d1", conv, None, &[]));
    assert_eq!(group_outcome(&mut owner, "d1").map(|_| ()), Err(ErrorCode::Forbidden));
    admin.send(&op(GroupAction::Delete, "d2", conv, None, &[]));
    assert!(group_outcome(&mut admin, "d2").unwrap().deleted);
    // Members are told; nothing more is accepted; history stays readable.
    let (_, ev) = expect_event_until(&mut member, "delete");
    assert_eq!(ev["by"], "pm-admin");
    member.send(&send_conv(g.conv, "late", "anyone?"));
    expect_error_until(&mut member, ErrorCode::Forbidden);
    owner.send(&op(GroupAction::Add, "late-add", conv, None, &["pm-z"]));
    assert_eq!(group_outcome(&mut owner, "late-add").map(|_| ()), Err(ErrorCode::Forbidden));
    server.kill9();
    let server = Server::start_in(&dir, 2, "");
    let mut member = server.connect("pm-member", "d", Encoding::Json);
    member.send(&op(GroupAction::Info, "i2", conv, None, &[]));
    let info = group_outcome(&mut member, "i2").unwrap();
    assert!(info.deleted && info.owner == "pm-admin" && info.description == "our team");
    member.send(&ClientFrame::History(wire::frame::History {
        req_id: None,
        conv: g.conv,
        before_seq: None,
        limit: None,
    }));
    let page = member.until(|f| if let ServerFrame::HistoryPage(p) = f { Some(p.clone()) } else { None });
    assert!(page.messages.len() > 5, "history stays readable after deletion");
}

#[test]
fn an_owner_who_leaves_hands_the_group_to_an_admin() {
    let server = Server::start_with(2, "");
    let mut owner = server.connect("lv-owner", "d", Encoding::Json);
    let mut other = server.connect("lv-b", "d", Encoding::Json);
    owner.send(&op(GroupAction::Create, "c", None, None, &["lv-b", "lv-a", "lv-z"]));
    let g = group_outcome(&mut owner, "c").unwrap();
    owner.send(&op(GroupAction::Promote, "p1", Some(g.conv), None, &["lv-z"]));
    group_outcome(&mut owner, "p1").unwrap();
    owner.send(&op(GroupAction::Promote, "p2", Some(g.conv), None, &["lv-b"]));
    group_outcome(&mut owner, "p2").unwrap();
    owner.send(&op(GroupAction::Leave, "l", Some(g.conv), None, &[]));
    group_outcome(&mut owner, "l").unwrap();
    let (_, ev) = expect_event_until(&mut other, "leave");
    assert_eq!(ev["owner"], "lv-z", "the oldest other admin, not the first by id (lv-b) or the first member (lv-a)");
    other.send(&op(GroupAction::Info, "i", Some(g.conv), None, &[]));
    let info = group_outcome(&mut other, "i").unwrap();
    assert_eq!((info.owner.as_str(), info.members.len()), ("lv-z", 3));
    assert_eq!(info.admins, users(&["lv-b", "lv-z"]), "group_info lists admins sorted");
}

/// Skips frames until the group event `event`.
fn expect_event_until(c: &mut Client, event: &str) -> (Message, serde_json::Value) {
    c.until(|f| match f {
        ServerFrame::Msg(m) if m.kind == MsgKind::System => {
            let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
            (v["event"] == event).then(|| (m.clone(), v))
        }
        _ => None,
    })
}

/// Skips frames until an error, which must have `code`.
fn expect_error_until(c: &mut Client, code: ErrorCode) {
    let got = c.until(|f| if let ServerFrame::Error(e) = f { Some(e.code) } else { None });
    assert_eq!(got, code);
}
