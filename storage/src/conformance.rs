//! The behaviour every [`Store`] backend must show. Each backend's tests call [`run`]
//! with a constructor that opens a store at a directory (reopening the same directory
//! must see what was committed before).

use std::path::Path;

use wire::frame::ConvId;

use crate::model::{dedupe_key, ConvKind, ConvMeta, GroupMeta, StoredMessage, UserRecord, Write};
use crate::Store;

fn msg(i: u64) -> StoredMessage {
    StoredMessage {
        ext: None,
        message_id: 1000 + i,
        from: "alice".into(),
        from_device: "d".into(),
        client_msg_id: format!("c{i}"),
        ts: i,
        kind: 0,
        body: format!("m{i}").into_bytes(),
    }
}

/// Runs every conformance check against stores made by `open`.
pub fn run(open: impl Fn(&Path) -> Box<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = ConvId(5);
    let b = ConvId(6);
    {
        let s = open(dir.path());
        assert_eq!(s.conv_meta(a).unwrap(), None);
        let meta = ConvMeta { kind: ConvKind::Direct, members: vec!["alice".into(), "bob".into()], created: 1 };
        let mut writes = vec![Write::Conv { conv: a, meta: meta.clone() }];
        writes.extend((1..=10).map(|i| Write::Message { conv: a, seq: i, msg: msg(i).into() }));
        writes.push(Write::Message { conv: b, seq: 1, msg: msg(99).into() });
        s.commit(&writes).unwrap();
        assert_eq!(s.conv_meta(a).unwrap(), Some(meta));
    }
    // Reopen: everything committed is there.
    let s = open(dir.path());
    assert!(s.conv_meta(a).unwrap().is_some());
    // Newest 3 of all: 8, 9, 10, more before.
    let page = s.newest(a, 0, u64::MAX, 3).unwrap();
    assert_eq!(page.messages.iter().map(|m| m.0).collect::<Vec<_>>(), vec![8, 9, 10]);
    assert!(page.has_more);
    assert_eq!(page.messages[0].1, msg(8));
    // Page backwards before 8.
    let page = s.newest(a, 0, 8, 5).unwrap();
    assert_eq!(page.messages.iter().map(|m| m.0).collect::<Vec<_>>(), vec![3, 4, 5, 6, 7]);
    assert!(page.has_more);
    let page = s.newest(a, 0, 3, 5).unwrap();
    assert_eq!(page.messages.iter().map(|m| m.0).collect::<Vec<_>>(), vec![1, 2]);
    assert!(!page.has_more);
    // After a seq (sync): exactly the newer ones.
    let page = s.newest(a, 7, u64::MAX, 50).unwrap();
    assert_eq!(page.messages.iter().map(|m| m.0).collect::<Vec<_>>(), vec![8, 9, 10]);
    assert!(!page.has_more);
    assert!(s.newest(a, 10, u64::MAX, 5).unwrap().messages.is_empty());
    // Conversations do not bleed into each other.
    assert_eq!(s.newest(b, 0, u64::MAX, 50).unwrap().messages.len(), 1);
    // The user index.
    assert_eq!(s.user_convs("alice").unwrap(), vec![a]);
    assert_eq!(s.user_convs("bob").unwrap(), vec![a]);
    assert!(s.user_convs("ali").unwrap().is_empty());

    // A group: metadata round-trips, and a removed member leaves the user index.
    let g = ConvId(1 << 127 | 7);
    let group = |members: &[&str]| ConvMeta {
        kind: ConvKind::Group(GroupMeta {
            name: "team".into(),
            admins: vec!["alice".into()],
            owner: "alice".into(),
            description: "d".into(),
            ..GroupMeta::default()
        }),
        members: members.iter().map(|m| m.to_string()).collect(),
        created: 2,
    };
    s.commit(&[Write::Conv { conv: g, meta: group(&["alice", "bob", "carol"]) }]).unwrap();
    assert_eq!(s.user_convs("carol").unwrap(), vec![g]);
    s.commit(&[
        Write::Conv { conv: g, meta: group(&["alice", "bob"]) },
        Write::Unindex { conv: g, user: "carol".into() },
    ])
    .unwrap();
    assert!(s.user_convs("carol").unwrap().is_empty());
    assert_eq!(s.user_convs("bob").unwrap(), vec![a, g]);
    assert_eq!(s.conv_meta(g).unwrap(), Some(group(&["alice", "bob"])));

    // The dedupe index: newest seq and (sender, client_msg_id) keys, no bodies; group
    // events (no client key) are not in it.
    let t = s.conv_tail(a, 4).unwrap();
    assert_eq!(t.last_seq, 10);
    assert_eq!(t.recent.iter().map(|e| e.0).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
    assert_eq!(t.recent[3].1.key, dedupe_key("alice", "c10"));
    assert_eq!((t.recent[3].1.message_id, t.recent[3].1.ts), (1010, 10));
    let mut event = msg(11);
    event.client_msg_id.clear();
    s.commit(&[Write::Message { conv: a, seq: 11, msg: event.into() }]).unwrap();
    let t = s.conv_tail(a, 2).unwrap();
    assert_eq!((t.last_seq, t.recent.iter().map(|e| e.0).collect::<Vec<_>>()), (11, vec![9, 10]));
    assert_eq!(s.conv_tail(ConvId(77), 5).unwrap(), crate::model::Tail::default());
    // User records.
    assert_eq!(s.user_record("alice").unwrap(), UserRecord::default());
    let r = UserRecord { last_seen: Some(5), hide_last_seen: true, receipts_off: true };
    s.commit(&[Write::User { user: "alice".into(), record: r }]).unwrap();
    assert_eq!(s.user_record("alice").unwrap(), r);
    assert_eq!(s.user_record("alic").unwrap(), UserRecord::default());

    // Receipt cursors: per member, overwritten, listed per conversation.
    use crate::model::CursorRecord;
    assert!(s.cursors(a).unwrap().is_empty());
    let c = |d, r| CursorRecord { delivered: d, read: r, private: r == 4 };
    s.commit(&[
        Write::Cursor { conv: a, user: "bob".into(), cursor: c(3, 1) },
        Write::Cursor { conv: a, user: "alice".into(), cursor: c(2, 2) },
        Write::Cursor { conv: b, user: "bob".into(), cursor: c(9, 9) },
    ])
    .unwrap();
    s.commit(&[Write::Cursor { conv: a, user: "bob".into(), cursor: c(5, 4) }]).unwrap();
    let mut got = s.cursors(a).unwrap();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got, vec![("alice".to_owned(), c(2, 2)), ("bob".to_owned(), c(5, 4))]);

    // Conversation-list parts: each its own record, put together per conversation,
    // ordered by conversation, one user's never another's.
    use crate::model::{ConvSummary, InboxValue, LastOf};
    assert!(s.inbox("bob").unwrap().is_empty());
    let summary = std::sync::Arc::new(ConvSummary {
        group: false,
        name: String::new(),
        pair: vec!["alice".into(), "bob".into()],
        members: 2,
    });
    let last = |seq: u64| InboxValue::Last(LastOf::shared(seq, msg(seq).into(), summary.clone(), "bob"));
    let part = |user: &str, conv, at, value| Write::Inbox { user: user.into(), conv, at, value };
    s.commit(&[
        part("bob", b, 10, last(1)),
        part("bob", a, 11, last(9)),
        part("bob", a, 12, InboxValue::Read(7)),
        part("bob", a, 13, InboxValue::Pinned(true)),
        part("bo", a, 14, InboxValue::Archived(true)),
    ])
    .unwrap();
    s.commit(&[part("bob", a, 15, last(10)), part("bob", a, 16, InboxValue::Own(8))]).unwrap();
    let got = s.inbox("bob").unwrap();
    assert_eq!(got.iter().map(|e| e.conv).collect::<Vec<_>>(), vec![a, b]);
    let e = &got[0];
    let l = e.last.as_ref().unwrap();
    assert_eq!((l.seq, l.title.as_str(), l.preview.as_str(), l.from.as_str()), (10, "alice", "m10", "alice"));
    assert_eq!((e.read, e.own, e.pinned, e.archived, e.changed), (7, 8, true, false, 16));
    assert_eq!(e.unread(), 2);
    assert_eq!(s.inbox("bo").unwrap().len(), 1);

    // Reactions: one per member per message, replaced, removed, listed by seq.
    let r = |seq, user: &str, emoji: &str| Write::Reaction { conv: a, seq, user: user.into(), emoji: emoji.into() };
    s.commit(&[r(3, "bob", "👍"), r(3, "carol", "❤️"), r(4, "bob", "😂"), r(9, "bob", "👍")]).unwrap();
    s.commit(&[r(3, "bob", "🎉"), r(4, "bob", "")]).unwrap();
    let got = s.reactions(a, 3, 4).unwrap();
    assert_eq!(got, vec![(3, "bob".into(), "🎉".into()), (3, "carol".into(), "❤️".into())]);
    assert!(s.reactions(b, 0, u64::MAX).unwrap().is_empty());
    // A page carries counts per emoji and the viewer's own.
    let page = crate::read::execute(
        &*s,
        &crate::read::ReadReq::Page { conv: a, after: 0, before: 4, limit: 1, viewer: "carol".into() },
    )
    .unwrap();
    let crate::read::ReadDone::Page(page) = page else { panic!("a page") };
    let ext = page.messages[0].1.ext.as_ref().unwrap();
    assert_eq!(ext.reactions.len(), 2);
    assert_eq!(ext.my_reaction.as_deref(), Some("❤️"));
    // An edit or delete replaces the stored message at its seq.
    let mut edited = msg(5);
    edited.body = b"edited".to_vec();
    s.commit(&[Write::Message { conv: a, seq: 5, msg: edited.clone().into() }]).unwrap();
    assert_eq!(s.newest(a, 4, 6, 5).unwrap().messages, vec![(5, edited)]);

    // Member rows: one per change, listed per group, indexing the group under the user.
    use crate::model::MemberRow;
    let h = ConvId(1 << 127 | 9);
    let row = |joined, left| MemberRow { joined, left };
    s.commit(&[
        Write::Member { conv: h, user: "dan".into(), row: row(0, 0) },
        Write::Member { conv: h, user: "eve".into(), row: row(5, 0) },
    ])
    .unwrap();
    s.commit(&[Write::Member { conv: h, user: "eve".into(), row: row(5, 9) }]).unwrap();
    assert_eq!(s.members(h).unwrap(), vec![("dan".into(), row(0, 0)), ("eve".into(), row(5, 9))]);
    assert_eq!(s.member(h, "eve").unwrap(), Some(row(5, 9)));
    assert_eq!(s.member(h, "ev").unwrap(), None);
    assert!(s.user_convs("eve").unwrap().contains(&h), "a former member keeps the group for sync");
    assert_eq!(row(5, 9).clamp(0, u64::MAX), (4, 10));
    assert_eq!(row(5, 0).clamp(7, 20), (7, 20));

    // A group's last message is one record per partition, joined into each member's
    // entry; a member who left keeps their own.
    use crate::model::InboxLast;
    let gl =
        |seq| InboxLast { seq, ts: seq, from: "dan".into(), group: true, title: "G".into(), ..InboxLast::default() };
    s.commit(&[
        part("fay", h, 1, InboxValue::Joined(1)),
        part("gus", h, 1, InboxValue::Joined(1)),
        part("gus", h, 2, InboxValue::Left(3)),
        part("gus", h, 2, InboxValue::Last(gl(3).into())),
        Write::GroupLast { conv: h, at: 5, last: gl(7).into() },
    ])
    .unwrap();
    let fay = s.inbox("fay").unwrap();
    assert_eq!((fay[0].last.as_ref().map(|l| l.seq), fay[0].changed), (Some(7), 5));
    let gus = s.inbox("gus").unwrap();
    assert_eq!((gus[0].last.as_ref().map(|l| l.seq), gus[0].left), (Some(3), 3));
    assert_eq!(s.group_last(h).unwrap().map(|(at, l)| (at, l.seq)), Some((5, 7)));

    // Delete for me: per user, per conversation, by seq; pages skip them for that user.
    s.commit(&[
        Write::Hide { conv: a, user: "bob".into(), seq: 8 },
        Write::Hide { conv: a, user: "bob".into(), seq: 9 },
        Write::Hide { conv: a, user: "bo".into(), seq: 7 },
    ])
    .unwrap();
    assert_eq!(s.hidden(a, "bob", 0, u64::MAX).unwrap(), vec![8, 9]);
    assert_eq!(s.hidden(a, "bob", 9, 9).unwrap(), vec![9]);
    assert!(s.hidden(b, "bob", 0, u64::MAX).unwrap().is_empty());
    let page = |viewer: &str| {
        let req = crate::read::ReadReq::Page { conv: a, after: 6, before: 11, limit: 10, viewer: viewer.into() };
        match crate::read::execute(&*s, &req).unwrap() {
            crate::read::ReadDone::Page(p) => p.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            _ => panic!("a page"),
        }
    };
    assert_eq!(page("bob"), vec![7, 10]);
    assert_eq!(page("carol"), vec![7, 8, 9, 10]);
}
