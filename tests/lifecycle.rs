//! End-to-end: the message lifecycle on the real binary (2 shards, both encodings):
//! replies, edits (sender only, inside the window), deletes for everyone (sender inside
//! the window, or a group admin) leaving a tombstone that survives restart, reactions
//! that aggregate and converge under concurrent changes, and media references checked
//! against the configured limits.

mod common;

use common::*;
use wire::error::ErrorCode;
use wire::frame::{ClientFrame, ConvId, GroupAction, GroupOp, History, Message, MsgKind, Send, ServerFrame, Target};
use wire::Encoding;

fn send(
    cmid: &str,
    conv: ConvId,
    kind: MsgKind,
    body: &str,
    reply_to: Option<u64>,
    target: Option<u64>,
) -> ClientFrame {
    ClientFrame::Send(Send {
        client_msg_id: cmid.into(),
        target: Target::Conv(conv),
        body: body.as_bytes().to_vec(),
        kind,
        reply_to,
        target_seq: target,
        forward: None,
    })
}

/// The ack's seq, or the error's code.
fn outcome(c: &mut Client) -> Result<u64, ErrorCode> {
    c.until(|f| match f {
        ServerFrame::Ack(a) => Some(Ok(a.seq)),
        ServerFrame::Error(e) => Some(Err(e.code)),
        _ => None,
    })
}

/// The whole history of `conv`, oldest first.
fn history(c: &mut Client, conv: ConvId) -> Vec<Message> {
    c.send(&ClientFrame::History(History { req_id: Some("h".into()), conv, before_seq: None, limit: Some(200) }));
    let page = c.until(|f| if let ServerFrame::HistoryPage(p) = f { Some(p.clone()) } else { None });
    assert!(!page.has_more);
    page.messages
}

fn at(h: &[Message], seq: u64) -> &Message {
    h.iter().find(|m| m.seq == seq).unwrap_or_else(|| panic!("no seq {seq}"))
}

fn live(c: &mut Client, conv: ConvId, seq: u64) -> Message {
    c.until(|f| match f {
        ServerFrame::Msg(m) if m.conv == conv && m.seq == seq => Some(m.clone()),
        _ => None,
    })
}

#[test]
fn replies_edits_and_deletes_follow_their_rules_and_tombstones_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut server = Server::start_in(&dir, 2, "");
    let mut alice = server.connect("lc-alice", "d", Encoding::Json);
    let mut bob = server.connect("lc-bob", "d", Encoding::FlatBuffers);
    alice.send(&send_to("lc-bob", "a1", "helo"));
    let dm = alice.ack().conv;
    live(&mut bob, dm, 1);
    // A reply, and a reply to nothing.
    bob.send(&send("b1", dm, MsgKind::Text, "hi!", Some(1), None));
    assert_eq!(outcome(&mut bob), Ok(2));
    bob.send(&send("b2", dm, MsgKind::Text, "?", Some(99), None));
    assert_eq!(outcome(&mut bob), Err(ErrorCode::BadValue));
    // Alice fixes her typo; bob may not edit her message.
    alice.send(&send("a2", dm, MsgKind::Edit, "hello", None, Some(1)));
    assert_eq!(outcome(&mut alice), Ok(3));
    let ev = live(&mut bob, dm, 3);
    assert_eq!(
        (ev.kind, ev.body.as_slice(), ev.extra.as_ref().and_then(|x| x.target)),
        (MsgKind::Edit, &b"hello"[..], Some(1))
    );
    bob.send(&send("b3", dm, MsgKind::Edit, "hacked", None, Some(1)));
    assert_eq!(outcome(&mut bob), Err(ErrorCode::Forbidden));
    // Resending the edit is answered with the original ack, not stored twice.
    alice.send(&send("a2", dm, MsgKind::Edit, "hello", None, Some(1)));
    assert_eq!(outcome(&mut alice), Ok(3));
    // No event on an event; no edit of what does not exist.
    alice.send(&send("a3", dm, MsgKind::Edit, "x", None, Some(3)));
    assert_eq!(outcome(&mut alice), Err(ErrorCode::BadValue));
    alice.send(&send("a4", dm, MsgKind::Edit, "x", None, Some(50)));
    assert_eq!(outcome(&mut alice), Err(ErrorCode::BadValue));
    // Bob deletes his reply; alice may not delete it for him.
    alice.send(&send("a5", dm, MsgKind::Delete, "", None, Some(2)));
    assert_eq!(outcome(&mut alice), Err(ErrorCode::Forbidden));
    bob.send(&send("b4", dm, MsgKind::Delete, "", None, Some(2)));
    assert_eq!(outcome(&mut bob), Ok(4));
    assert_eq!(live(&mut alice, dm, 4).kind, MsgKind::Delete);
    bob.send(&send("b5", dm, MsgKind::Edit, "back", None, Some(2)));
    assert_eq!(outcome(&mut bob), Err(ErrorCode::BadValue), "a deleted message stays deleted");

    let check = |h: &[Message]| {
        let first = at(h, 1);
        let x = first.extra.as_ref().expect("edited");
        assert_eq!((first.body.as_slice(), x.edited_at.is_some()), (&b"hello"[..], true));
        let reply = at(h, 2);
        let x = reply.extra.as_ref().expect("tombstone");
        assert!(reply.body.is_empty(), "the deleted body is gone");
        assert_eq!((x.reply_to, x.deleted_by.as_deref(), x.deleted_at.is_some()), (Some(1), Some("lc-bob"), true));
        assert_eq!(h.len(), 4, "the events keep their seqs in history");
    };
    check(&history(&mut alice, dm));
    check(&history(&mut bob, dm));
    server.kill9();
    let server = Server::start_in(&dir, 2, "");
    let mut alice = server.connect("lc-alice", "d", Encoding::FlatBuffers);
    check(&history(&mut alice, dm));
}

#[test]
fn windows_and_admin_deletes() {
    // Windows of 0 s: anything older than the current millisecond is past them.
    let server = Server::start_with(2, "edit_window_secs = 0\ndelete_window_secs = 0");
    let mut owner = server.connect("lw-owner", "d", Encoding::Json);
    let mut member = server.connect("lw-member", "d", Encoding::Json);
    let create = GroupOp {
        req_id: None,
        action: GroupAction::Create,
        conv: None,
        name: Some("g".into()),
        members: vec!["lw-member".into()],
        description: None,
        avatar: None,
    };
    owner.send(&ClientFrame::Group(create));
    let g = owner.until(|f| if let ServerFrame::GroupInfo(i) = f { Some(i.conv) } else { None });
    member.send(&send("m1", g, MsgKind::Text, "spam", None, None));
    let seq = outcome(&mut member).unwrap();
    member.send(&send("m2", g, MsgKind::Text, "more", None, None));
    let seq2 = outcome(&mut member).unwrap();
    // The ack came after the commit, but make sure the clock moved past the send's ms.
    std::thread::sleep(std::time::Duration::from_millis(5));
    member.send(&send("m3", g, MsgKind::Edit, "x", None, Some(seq)));
    assert_eq!(outcome(&mut member), Err(ErrorCode::Forbidden), "past the edit window");
    member.send(&send("m4", g, MsgKind::Delete, "", None, Some(seq)));
    assert_eq!(outcome(&mut member), Err(ErrorCode::Forbidden), "past the delete window");
    // The admin deletes at any time.
    owner.send(&send("o1", g, MsgKind::Delete, "", None, Some(seq)));
    assert!(outcome(&mut owner).is_ok());
    let h = history(&mut member, g);
    assert_eq!(at(&h, seq).extra.as_ref().and_then(|x| x.deleted_by.as_deref()), Some("lw-owner"));
    assert_eq!(at(&h, seq2).body, b"more");
}

#[test]
fn reactions_aggregate_and_converge_under_concurrent_changes() {
    let server = Server::start_with(2, "send_rate = 0");
    let mut owner = server.connect("lr-owner", "d", Encoding::FlatBuffers);
    let names: Vec<String> = (0..20).map(|i| format!("lr-{i:02}")).collect();
    let create = GroupOp {
        req_id: None,
        action: GroupAction::Create,
        conv: None,
        name: Some("r".into()),
        members: names.clone(),
        description: None,
        avatar: None,
    };
    owner.send(&ClientFrame::Group(create));
    let g = owner.until(|f| if let ServerFrame::GroupInfo(i) = f { Some(i.conv) } else { None });
    owner.send(&send("o1", g, MsgKind::Text, "vote", None, None));
    let seq = outcome(&mut owner).unwrap();
    let mut members: Vec<Client> = names.iter().map(|n| server.connect(n, "d", Encoding::Json)).collect();
    // Everyone reacts at once; half change their mind at once; two take theirs back.
    for (i, m) in members.iter_mut().enumerate() {
        m.send(&send("r1", g, MsgKind::Reaction, if i % 2 == 0 { "👍" } else { "❤️" }, None, Some(seq)));
    }
    for m in members.iter_mut() {
        assert!(outcome(m).is_ok());
    }
    for (i, m) in members.iter_mut().enumerate().filter(|(i, _)| i % 4 == 0) {
        m.send(&send("r2", g, MsgKind::Reaction, if i < 8 { "🎉" } else { "" }, None, Some(seq)));
    }
    for (_, m) in members.iter_mut().enumerate().filter(|(i, _)| i % 4 == 0) {
        assert!(outcome(m).is_ok());
    }
    // 0, 4: 🎉; 8, 12, 16: removed; other evens 👍 (2, 6, 10, 14, 18); odds ❤️ (10).
    let (first, rest) = members.split_at_mut(4);
    for c in [&mut owner, &mut rest[0], &mut first[1]] {
        let h = history(c, g);
        let x = at(&h, seq).extra.clone().expect("reactions");
        let count = |e: &str| x.reactions.iter().find(|r| r.emoji == e).map_or(0, |r| r.count);
        assert_eq!((count("❤️"), count("👍"), count("🎉")), (10, 5, 2), "{:?}", x.reactions);
        assert_eq!(x.reactions[0].emoji, "❤️", "most first");
        let mine = c.user.clone();
        let want = match mine.as_str() {
            "lr-04" => Some("🎉"),
            "lr-01" => Some("❤️"),
            _ => None,
        };
        assert_eq!(x.my_reaction.as_deref(), want, "{mine}");
    }
    // Not an emoji: refused before anything is stored.
    owner.send(&send("o2", g, MsgKind::Reaction, "yes", None, Some(seq)));
    assert_eq!(outcome(&mut owner), Err(ErrorCode::BadValue));
}

#[test]
fn media_references_are_checked_against_the_limits() {
    let server = Server::start_with(2, "media_max_bytes = 1000000\nmedia_types = [\"image/\", \"application/pdf\"]");
    let mut a = server.connect("lm-a", "d", Encoding::Json);
    let mut b = server.connect("lm-b", "d", Encoding::FlatBuffers);
    a.send(&send_to("lm-b", "t", "hi"));
    let dm = a.ack().conv;
    let media = |mime: &str, size: u64| {
        format!(
            r#"{{"url":"https://cdn.example/x","mime":"{mime}","size":{size},"sha256":"{}","width":640,"caption":"look"}}"#,
            "ab".repeat(32)
        )
    };
    a.send(&send("m1", dm, MsgKind::Media, &media("image/jpeg", 5000), None, None));
    let seq = outcome(&mut a).unwrap();
    let m = live(&mut b, dm, seq);
    assert_eq!(m.kind, MsgKind::Media);
    let r = wire::frame::check::media(&m.body).unwrap();
    assert_eq!((r.width, r.caption.as_deref()), (Some(640), Some("look")));
    a.send(&send("m2", dm, MsgKind::Media, &media("image/jpeg", 2_000_000), None, None));
    assert_eq!(outcome(&mut a), Err(ErrorCode::LimitExceeded));
    a.send(&send("m3", dm, MsgKind::Media, &media("video/mp4", 10), None, None));
    assert_eq!(outcome(&mut a), Err(ErrorCode::LimitExceeded));
    a.send(&send("m4", dm, MsgKind::Media, r#"{"url":"ftp://x"}"#, None, None));
    assert_eq!(outcome(&mut a), Err(ErrorCode::BadValue));
    a.send(&send("m5", dm, MsgKind::Media, &media("application/pdf", 10), None, None));
    assert!(outcome(&mut a).is_ok());
    // An edited caption is checked like a new reference.
    a.send(&send("m6", dm, MsgKind::Edit, &media("video/mp4", 10), None, Some(seq)));
    assert_eq!(outcome(&mut a), Err(ErrorCode::BadValue));
    a.send(&send("m7", dm, MsgKind::Edit, &media("image/png", 10), None, Some(seq)));
    assert!(outcome(&mut a).is_ok());
}

#[test]
fn an_offline_device_catches_up_on_everything_exactly_once() {
    let server = Server::start_with(2, "");
    let mut alice = server.connect("oc-alice", "d", Encoding::Json);
    let mut phone = server.connect("oc-bob", "phone", Encoding::FlatBuffers);
    alice.send(&send_to("oc-bob", "a1", "one"));
    let dm = alice.ack().conv;
    live(&mut phone, dm, 1);
    // The tablet was here for message 1, and took the list's token.
    let mut tablet = server.connect("oc-bob", "tablet", Encoding::Json);
    tablet.send(&ClientFrame::Conversations(wire::frame::ConversationsReq {
        req_id: Some("l".into()),
        cursor: None,
        limit: None,
        since: None,
    }));
    let token = tablet.until(|f| if let ServerFrame::ConversationList(l) = f { Some(l.token) } else { None });
    drop(tablet);
    // While it is away: two messages, an edit, a reaction, a delete, a read, a pin.
    alice.send(&send("a2", dm, MsgKind::Text, "two", None, None));
    assert_eq!(outcome(&mut alice), Ok(2));
    alice.send(&send("a3", dm, MsgKind::Text, "three", None, None));
    assert_eq!(outcome(&mut alice), Ok(3));
    alice.send(&send("a4", dm, MsgKind::Edit, "ONE", None, Some(1)));
    assert_eq!(outcome(&mut alice), Ok(4));
    phone.send(&send("p1", dm, MsgKind::Reaction, "👍", None, Some(2)));
    assert_eq!(outcome(&mut phone), Ok(5));
    alice.send(&send("a5", dm, MsgKind::Delete, "", None, Some(3)));
    assert_eq!(outcome(&mut alice), Ok(6));
    live(&mut phone, dm, 6);
    phone.send(&ClientFrame::Read { conv: dm, seq: 6 });
    phone.until(|f| matches!(f, ServerFrame::Receipt { user, read: 6, .. } if user == "oc-bob").then_some(()));
    let pin = wire::frame::ConvSettings { conv: dm, muted_until: None, archived: None, pinned: Some(true) };
    phone.send(&ClientFrame::ConvSettings(pin));
    phone.until(|f| matches!(f, ServerFrame::ConvSettings(_)).then_some(()));

    let mut tablet = server.connect("oc-bob", "tablet", Encoding::Json);
    let sync = vec![wire::frame::SyncPoint { conv: dm, seq: 1 }];
    tablet.send(&ClientFrame::Hello { sync, list_since: Some(token) });
    let (mut got, mut list, mut synced) = (Vec::new(), None, false);
    while !(synced && list.is_some()) {
        match tablet.recv() {
            ServerFrame::SyncPage(p) => got.extend(p.messages),
            ServerFrame::Synced { .. } => synced = true,
            ServerFrame::ConversationList(l) => list = Some(l),
            _ => {}
        }
    }
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![2, 3, 4, 5, 6], "every event once, nothing it had");
    let two = at(&got, 2).extra.clone().expect("reactions");
    assert_eq!((two.reactions.len(), two.my_reaction.as_deref()), (1, Some("👍")));
    assert!(at(&got, 3).body.is_empty() && at(&got, 3).extra.as_ref().unwrap().deleted_by.is_some());
    assert_eq!(at(&got, 4).extra.as_ref().unwrap().target, Some(1), "the edit of message 1, to apply");
    let list = list.unwrap();
    let e = list.items.iter().find(|e| e.conv == dm).expect("the changed conversation");
    assert_eq!((e.read, e.unread, e.pinned, e.last_seq), (6, 0, true, 6));
    assert!(list.token >= token);
}

/// The conversation of the next ack (other frames are skipped).
fn acked_conv(c: &mut Client) -> ConvId {
    c.until(|f| if let ServerFrame::Ack(a) = f { Some(a.conv) } else { None })
}

fn forward(cmid: &str, to: ConvId, conv: ConvId, seq: u64) -> ClientFrame {
    ClientFrame::Send(Send {
        client_msg_id: cmid.into(),
        target: Target::Conv(to),
        body: Vec::new(),
        kind: MsgKind::Text,
        reply_to: None,
        target_seq: None,
        forward: Some(Box::new(wire::frame::ForwardOf { conv, seq })),
    })
}

#[test]
fn forwards_copy_a_readable_message_with_attribution_and_count() {
    let server = Server::start_with(2, "");
    let mut ann = server.connect("fw-ann", "d", Encoding::Json);
    let mut bob = server.connect("fw-bob", "d", Encoding::FlatBuffers);
    let mut cat = server.connect("fw-cat", "d", Encoding::Json);
    // Ann writes to bob; bob forwards it to cat; cat forwards bob's copy back to ann.
    ann.send(&send_to("fw-bob", "a1", "the plan"));
    let ab = ann.ack().conv;
    bob.send(&send_to("fw-cat", "b0", "hi"));
    let bc = acked_conv(&mut bob);
    bob.send(&forward("b1", bc, ab, 1));
    let seq = outcome(&mut bob).unwrap();
    let copy = live(&mut cat, bc, seq);
    let f = copy.extra.as_ref().and_then(|x| x.forwarded.clone()).expect("attributed");
    assert_eq!((copy.body.as_slice(), copy.from.as_str()), (&b"the plan"[..], "fw-bob"));
    assert_eq!((f.conv, f.seq, f.from.as_str(), f.times), (ab, 1, "fw-ann", 1));
    cat.send(&send_to("fw-ann", "c0", "hey"));
    let ca = acked_conv(&mut cat);
    cat.send(&forward("c1", ca, bc, seq));
    let seq2 = outcome(&mut cat).unwrap();
    let again = live(&mut ann, ca, seq2);
    let f = again.extra.as_ref().and_then(|x| x.forwarded.clone()).unwrap();
    assert_eq!((f.from.as_str(), f.times), ("fw-ann", 2), "the first author, forwarded twice");
    // Only from conversations the sender can read; nothing from events or deleted ones.
    cat.send(&forward("c2", ca, ab, 1));
    assert_eq!(outcome(&mut cat), Err(ErrorCode::NotMember));
    ann.send(&send("a2", ab, MsgKind::Delete, "", None, Some(1)));
    assert!(outcome(&mut ann).is_ok());
    bob.send(&forward("b2", bc, ab, 1));
    assert_eq!(outcome(&mut bob), Err(ErrorCode::BadValue));
    bob.send(&forward("b3", bc, ab, 2));
    assert_eq!(outcome(&mut bob), Err(ErrorCode::BadValue), "message 2 is the delete event");
    // History shows the copy with its attribution.
    let h = history(&mut cat, bc);
    assert_eq!(at(&h, seq).extra.as_ref().and_then(|x| x.forwarded.as_ref()).map(|f| f.times), Some(1));
}

#[test]
fn delete_for_me_hides_on_every_device_of_that_user_only() {
    let server = Server::start_with(2, "");
    let mut alice = server.connect("dm-alice", "d", Encoding::Json);
    let mut phone = server.connect("dm-bob", "phone", Encoding::FlatBuffers);
    let mut tablet = server.connect("dm-bob", "tablet", Encoding::Json);
    alice.send(&send_to("dm-bob", "a1", "one"));
    let dm = alice.ack().conv;
    for (i, body) in ["two", "three"].iter().enumerate() {
        alice.send(&send(&format!("a{}", i + 2), dm, MsgKind::Text, body, None, None));
        assert!(outcome(&mut alice).is_ok());
    }
    live(&mut phone, dm, 3);
    phone.send(&ClientFrame::Hide { conv: dm, seqs: vec![2] });
    let told =
        tablet.until(|f| if let ServerFrame::Hidden { conv, seqs } = f { Some((*conv, seqs.clone())) } else { None });
    assert_eq!(told, (dm, vec![2]), "the user's other device is told");
    phone.until(|f| matches!(f, ServerFrame::Hidden { .. }).then_some(()));
    let seqs = |h: Vec<Message>| h.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs(history(&mut tablet, dm)), vec![1, 3]);
    assert_eq!(seqs(history(&mut alice, dm)), vec![1, 2, 3], "only for the user who hid it");
    let mut fresh = server.connect("dm-bob", "new", Encoding::Json);
    fresh.send(&ClientFrame::Hello { sync: Vec::new(), list_since: None });
    let synced = fresh.until(|f| if let ServerFrame::SyncPage(p) = f { Some(p.messages.clone()) } else { None });
    assert_eq!(seqs(synced), vec![1, 3]);
    // Only messages the user can see; only conversations they are in.
    phone.send(&ClientFrame::Hide { conv: dm, seqs: vec![9] });
    assert_eq!(phone.until(|f| if let ServerFrame::Error(e) = f { Some(e.code) } else { None }), ErrorCode::BadValue);
    let mut eve = server.connect("dm-eve", "d", Encoding::Json);
    eve.send(&ClientFrame::Hide { conv: dm, seqs: vec![1] });
    assert_eq!(eve.until(|f| if let ServerFrame::Error(e) = f { Some(e.code) } else { None }), ErrorCode::NotMember);
}
