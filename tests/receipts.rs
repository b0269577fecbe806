//! End-to-end: delivered and read receipts on the real binary (2 shards): the DM flow to
//! the sender and across the reader's devices, cursors that never move back, durability
//! across `kill -9`, aggregates for a 1,000-member group coalesced per window, and the
//! read-receipts privacy setting.

mod common;

use common::*;
use wire::frame::{ClientFrame, ConvId, GroupAction, GroupOp, MsgKind, ReceiptsReq, Send, ServerFrame, Target};
use wire::Encoding;

/// The next `receipt` about `user` whose cursors are at least `(delivered, read)`.
fn receipt_at_least(c: &mut Client, user: &str, delivered: u64, read: u64) -> (u64, u64) {
    c.until(|f| match f {
        ServerFrame::Receipt { user: u, delivered: d, read: r, .. } if u == user && *d >= delivered && *r >= read => {
            Some((*d, *r))
        }
        _ => None,
    })
}

fn receipts_req(conv: ConvId, seq: u64) -> ClientFrame {
    ClientFrame::Receipts(ReceiptsReq { req_id: Some("who".into()), conv, seq, after: None, limit: None })
}

#[test]
fn dm_receipts_flow_to_the_sender_and_the_readers_devices_and_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut server = Server::start_in(&dir, 2, "");
    let mut alice = server.connect("rc-alice", "phone", Encoding::Json);
    let mut bob = server.connect("rc-bob", "phone", Encoding::FlatBuffers);
    let mut tablet = server.connect("rc-bob", "tablet", Encoding::Json);
    let mut conv = None;
    for i in 0..3 {
        alice.send(&send_to("rc-bob", &format!("m{i}"), "hi"));
        conv = Some(alice.ack().conv);
    }
    let conv = conv.unwrap();
    bob.send(&ClientFrame::Delivered { conv, seq: 3 });
    assert_eq!(receipt_at_least(&mut alice, "rc-bob", 3, 0), (3, 0), "the delivered tick");
    bob.send(&ClientFrame::Read { conv, seq: 2 });
    assert_eq!(receipt_at_least(&mut alice, "rc-bob", 3, 2), (3, 2), "the read tick");
    // The reader's other device converges; the reading device gets its acknowledgement.
    assert_eq!(receipt_at_least(&mut tablet, "rc-bob", 3, 2), (3, 2));
    assert_eq!(receipt_at_least(&mut bob, "rc-bob", 3, 2), (3, 2));
    // Never backwards: a stale read changes nothing; the next real change shows 3/3.
    tablet.send(&ClientFrame::Read { conv, seq: 1 });
    tablet.send(&ClientFrame::Read { conv, seq: 3 });
    let (d, r) = alice.until(|f| match f {
        ServerFrame::Receipt { delivered, read, .. } => Some((*delivered, *read)),
        _ => None,
    });
    assert_eq!((d, r), (3, 3), "the stale read produced nothing; the next one is 3/3");
    // Acknowledged (bob's devices were told), so it survives kill -9.
    receipt_at_least(&mut bob, "rc-bob", 3, 3);
    server.kill9();
    let server = Server::start_in(&dir, 2, "");
    let mut alice = server.connect("rc-alice", "phone", Encoding::Json);
    alice.send(&receipts_req(conv, 3));
    let list = alice.until(|f| if let ServerFrame::ReceiptList(l) = f { Some(l.clone()) } else { None });
    assert_eq!((list.delivered, list.read, list.next), (vec!["rc-bob".to_owned()], vec!["rc-bob".to_owned()], None));
}

#[test]
fn a_thousand_member_group_gives_its_sender_coalesced_counts() {
    let server = Server::start_with(2, "presence_window_ms = 300");
    let mut owner = server.connect("big-owner", "d", Encoding::FlatBuffers);
    let members: Vec<String> = (0..999).map(|i| format!("big-{i:03}")).collect();
    // At most 256 users per request: create, then add the rest.
    let op = |action, conv, members: &[String]| GroupOp {
        req_id: None,
        action,
        conv,
        name: None,
        members: members.to_vec(),
        description: None,
        avatar: None,
    };
    owner.send(&ClientFrame::Group(op(GroupAction::Create, None, &members[..249])));
    let conv = owner.until(|f| if let ServerFrame::GroupInfo(g) = f { Some(g.conv) } else { None });
    for chunk in members[249..].chunks(250) {
        owner.send(&ClientFrame::Group(op(GroupAction::Add, Some(conv), chunk)));
        owner.until(|f| matches!(f, ServerFrame::GroupInfo(_)).then_some(()));
    }
    let mut conns: Vec<Client> = members.iter().map(|m| server.connect(m, "d", Encoding::FlatBuffers)).collect();
    let send = Send {
        reply_to: None,
        target_seq: None,
        forward: None,
        client_msg_id: "all".into(),
        target: Target::Conv(conv),
        body: b"hello".to_vec(),
        kind: MsgKind::Text,
    };
    owner.send(&ClientFrame::Send(send));
    let seq = owner.until(|f| if let ServerFrame::Ack(a) = f { Some(a.seq) } else { None });
    // Every member receives the message, says so, and every other one reads it.
    for (i, c) in conns.iter_mut().enumerate() {
        c.until(|f| matches!(f, ServerFrame::Msg(m) if m.seq == seq).then_some(()));
        let mut frames = vec![ClientFrame::Delivered { conv, seq }];
        if i % 2 == 0 {
            frames.push(ClientFrame::Read { conv, seq });
        }
        c.send_many(frames);
    }
    // The sender sees the counts rise to 999 received, 500 read, in few frames.
    let mut frames = 0;
    let last = owner.until(|f| match f {
        ServerFrame::ReceiptCount { seq: s, members, delivered, read, .. } if *s == seq => {
            frames += 1;
            assert_eq!(*members, 999);
            (*delivered == 999 && *read == 500).then_some((*delivered, *read))
        }
        _ => None,
    });
    assert_eq!(last, (999, 500));
    assert!(frames <= 30, "1,499 cursor changes reached the sender as {frames} receipt_count frames");
    // Who read it, page by page.
    let mut readers = 0;
    let mut after = None;
    loop {
        let req = ReceiptsReq { req_id: None, conv, seq, after: after.clone(), limit: Some(400) };
        owner.send(&ClientFrame::Receipts(req));
        let l = owner.until(|f| if let ServerFrame::ReceiptList(l) = f { Some(l.clone()) } else { None });
        readers += l.read.len();
        match l.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(readers, 500);
}

#[test]
fn read_receipts_off_hides_reads_both_ways() {
    let server = Server::start_with(2, "");
    let mut alice = server.connect("priv-alice", "d", Encoding::Json);
    let mut bob = server.connect("priv-bob", "d", Encoding::Json);
    bob.send(&ClientFrame::Settings { read_receipts: Some(false) });
    alice.send(&send_to("priv-bob", "a1", "hi"));
    let conv = alice.ack().conv;
    bob.send(&send_to("priv-alice", "b1", "hey"));
    bob.send(&ClientFrame::Read { conv, seq: 1 });
    // Alice sees bob's delivered tick, never his read.
    assert_eq!(receipt_at_least(&mut alice, "priv-bob", 1, 0), (1, 0));
    // Bob's own devices still know what he read.
    assert_eq!(receipt_at_least(&mut bob, "priv-bob", 1, 1), (1, 1));
    // And bob sees no one's reads.
    alice.send(&ClientFrame::Read { conv, seq: 2 });
    assert_eq!(receipt_at_least(&mut bob, "priv-alice", 2, 0), (2, 0));
}
