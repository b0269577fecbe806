//! End-to-end: the conversation list on the real binary (2 shards): newest activity
//! first with titles, previews and unread counts, read cursors and settings synced to
//! the user's other devices, durability across `kill -9`, pages that never repeat while
//! messages arrive with the `since` token covering what moved, and refusals.

mod common;

use common::*;
use wire::error::ErrorCode;
use wire::frame::{
    ClientFrame, ConvEntry, ConvId, ConvSettings, ConversationList, ConversationsReq, GroupAction, GroupOp, MsgKind,
    Send, ServerFrame, Target,
};
use wire::Encoding;

fn list_req(cursor: Option<String>, limit: Option<u32>, since: Option<u64>) -> ClientFrame {
    ClientFrame::Conversations(ConversationsReq { req_id: Some("list".into()), cursor, limit, since })
}

fn list(c: &mut Client, cursor: Option<String>, limit: Option<u32>, since: Option<u64>) -> ConversationList {
    c.send(&list_req(cursor, limit, since));
    c.until(|f| if let ServerFrame::ConversationList(l) = f { Some(l.clone()) } else { None })
}

fn entry(l: &ConversationList, conv: ConvId) -> ConvEntry {
    l.items.iter().find(|e| e.conv == conv).cloned().unwrap_or_else(|| panic!("{conv} not in {l:?}"))
}

/// Waits for the live `msg` of `conv` with `seq`.
fn got_msg(c: &mut Client, conv: ConvId, seq: u64) {
    c.until(|f| matches!(f, ServerFrame::Msg(m) if m.conv == conv && m.seq == seq).then_some(()));
}

fn error_code(c: &mut Client) -> ErrorCode {
    c.until(|f| if let ServerFrame::Error(e) = f { Some(e.code) } else { None })
}

#[test]
fn the_list_orders_by_activity_counts_unread_syncs_devices_and_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut server = Server::start_in(&dir, 2, "");
    let mut alice = server.connect("cl-alice", "phone", Encoding::Json);
    let mut bob = server.connect("cl-bob", "phone", Encoding::FlatBuffers);
    let mut tablet = server.connect("cl-bob", "tablet", Encoding::Json);
    // A DM: two messages from alice to bob.
    alice.send(&send_to("cl-bob", "d1", "hello bob"));
    let dm = alice.ack().conv;
    alice.send(&send_to("cl-bob", "d2", "are you there?"));
    alice.ack();
    got_msg(&mut bob, dm, 2);
    // A group, then bob writes in it: the newest activity, and his own.
    let create = GroupOp {
        req_id: None,
        action: GroupAction::Create,
        conv: None,
        name: Some("Team".into()),
        members: vec!["cl-bob".into(), "cl-carol".into()],
        description: None,
        avatar: None,
    };
    alice.send(&ClientFrame::Group(create));
    let group = alice.until(|f| if let ServerFrame::GroupInfo(g) = f { Some(g.conv) } else { None });
    got_msg(&mut bob, group, 1);
    let body = "x".repeat(300);
    let send = Send {
        reply_to: None,
        target_seq: None,
        forward: None,
        client_msg_id: "g1".into(),
        target: Target::Conv(group),
        body: body.into(),
        kind: MsgKind::Text,
    };
    bob.send(&ClientFrame::Send(send));
    bob.until(|f| matches!(f, ServerFrame::Ack(_)).then_some(()));
    got_msg(&mut tablet, group, 2);

    let l = list(&mut bob, None, None, None);
    assert_eq!(l.items.iter().map(|e| e.conv).collect::<Vec<_>>(), vec![group, dm], "newest activity first");
    let (g, d) = (entry(&l, group), entry(&l, dm));
    assert!(g.group && g.title == "Team" && g.members == 3, "{g:?}");
    assert_eq!((g.last_seq, g.last_from.as_str(), g.unread), (2, "cl-bob", 0), "his own message leaves nothing unread");
    assert_eq!(g.preview.len(), 100, "the preview is the body's first 100 bytes");
    assert!(!d.group && d.title == "cl-alice" && d.members == 2, "a DM's title is the peer: {d:?}");
    assert_eq!((d.last_seq, d.preview.as_str(), d.unread, d.read), (2, "are you there?", 2, 0));
    assert!(l.next.is_none());

    // Reading on the phone clears the count on every device.
    bob.send(&ClientFrame::Read { conv: dm, seq: 2 });
    tablet.until(|f| matches!(f, ServerFrame::Receipt { user, read: 2, .. } if user == "cl-bob").then_some(()));
    let d = entry(&list(&mut tablet, None, None, None), dm);
    assert_eq!((d.read, d.unread), (2, 0));
    // The sender's list carries the peer's ticks (what a device away meanwhile needs).
    alice.until(|f| matches!(f, ServerFrame::Receipt { user, read: 2, .. } if user == "cl-bob").then_some(()));
    let a = entry(&list(&mut alice, None, None, None), dm);
    assert_eq!((a.peer_delivered, a.peer_read, a.title.as_str()), (2, 2, "cl-bob"));

    // Settings from the phone reach the tablet once durable.
    let pin = ConvSettings { conv: dm, muted_until: Some(4_000_000_000_000), archived: None, pinned: Some(true) };
    bob.send(&ClientFrame::ConvSettings(pin.clone()));
    let told = tablet.until(|f| if let ServerFrame::ConvSettings(s) = f { Some(s.clone()) } else { None });
    assert_eq!(told, pin);
    bob.until(|f| matches!(f, ServerFrame::ConvSettings(_)).then_some(()));
    let before = list(&mut bob, None, None, None);
    let d = entry(&before, dm);
    assert!(d.pinned && !d.archived && d.muted_until == 4_000_000_000_000, "{d:?}");

    // Durable: told to the devices, so it survives kill -9 unchanged.
    server.kill9();
    let server = Server::start_in(&dir, 2, "");
    let mut bob = server.connect("cl-bob", "phone", Encoding::Json);
    let after = list(&mut bob, None, None, None);
    assert_eq!(after.items, before.items);
}

#[test]
fn pages_never_repeat_while_messages_arrive_and_the_token_finds_what_moved() {
    let server = Server::start_with(2, "");
    let mut me = server.connect("pg-me", "d", Encoding::Json);
    let mut peers: Vec<Client> = (0..7).map(|i| server.connect(&format!("pg-peer{i}"), "d", Encoding::Json)).collect();
    let mut convs = Vec::new();
    for (i, p) in peers.iter_mut().enumerate() {
        p.send(&send_to("pg-me", &format!("m{i}"), &format!("from peer {i}")));
        let conv = p.ack().conv;
        got_msg(&mut me, conv, 1);
        convs.push(conv);
    }
    let first = list(&mut me, None, Some(3), None);
    assert_eq!(first.items.len(), 3);
    // The oldest conversation (on the last page) gets a new message meanwhile.
    peers[0].send(&send_to("pg-me", "again", "new"));
    peers[0].ack();
    got_msg(&mut me, convs[0], 2);
    let mut seen: Vec<ConvId> = first.items.iter().map(|e| e.conv).collect();
    let mut next = first.next.clone();
    while let Some(cursor) = next {
        let page = list(&mut me, Some(cursor), Some(3), None);
        seen.extend(page.items.iter().map(|e| e.conv));
        next = page.next;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no conversation repeated across pages: {seen:?}");
    // What moved to the top after the first page is in the changes since its token.
    let delta = list(&mut me, None, None, Some(first.token));
    let moved = entry(&delta, convs[0]);
    assert_eq!((moved.last_seq, moved.unread, moved.preview.as_str()), (2, 2, "new"));
    seen.extend(delta.items.iter().map(|e| e.conv));
    for c in &convs {
        assert!(seen.contains(c), "{c} was neither paged nor in the changes");
    }
    // Every page is newest first.
    let all = list(&mut me, None, None, None);
    assert_eq!(all.items[0].conv, convs[0]);
    assert!(all.items.windows(2).all(|w| (w[0].last_ts, w[0].conv) >= (w[1].last_ts, w[1].conv)));
}

#[test]
fn settings_for_a_conversation_not_in_the_list_and_bad_cursors_are_refused() {
    let server = Server::start_with(2, "");
    let mut c = server.connect("cl-lonely", "d", Encoding::FlatBuffers);
    for i in 0..20u128 {
        let s = ConvSettings { conv: ConvId(i), muted_until: None, archived: Some(true), pinned: None };
        c.send(&ClientFrame::ConvSettings(s));
        assert_eq!(error_code(&mut c), ErrorCode::NotMember);
    }
    assert!(list(&mut c, None, None, None).items.is_empty(), "invented conversations never enter the list");
    c.send(&list_req(Some("not-a-cursor".into()), None, None));
    assert_eq!(error_code(&mut c), ErrorCode::BadValue);
    c.send(&list_req(None, Some(501), None));
    assert_eq!(error_code(&mut c), ErrorCode::BadValue);
}
