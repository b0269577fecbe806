//! End-to-end: messaging between users and devices, in both encodings, across shards.

mod common;

use common::*;
use wire::frame::{ClientFrame, ServerFrame};
use wire::Encoding;

fn expect_ack(c: &mut Client, cmid: &str) -> wire::frame::Ack {
    match c.recv() {
        ServerFrame::Ack(a) if a.client_msg_id == cmid => a,
        other => panic!("{}: expected ack for {cmid}, got {other:?}", c.user),
    }
}

fn expect_msg(c: &mut Client) -> wire::frame::Message {
    match c.recv() {
        ServerFrame::Msg(m) => m,
        other => panic!("{}: expected msg, got {other:?}", c.user),
    }
}

#[test]
fn two_users_chat_in_each_encoding_and_across_encodings() {
    let server = Server::start(2);
    for (ea, eb) in [
        (Encoding::Json, Encoding::Json),
        (Encoding::FlatBuffers, Encoding::FlatBuffers),
        (Encoding::Json, Encoding::FlatBuffers),
    ] {
        let (ua, ub) = (format!("alice-{ea:?}-{eb:?}"), format!("bob-{ea:?}-{eb:?}"));
        let mut a = server.connect(&ua, "phone", ea);
        let mut b = server.connect(&ub, "laptop", eb);
        a.send(&send_to(&ub, "a1", "hello bob ✓"));
        let ack = expect_ack(&mut a, "a1");
        assert_eq!((ack.seq, ack.duplicate), (1, false));
        let m = expect_msg(&mut b);
        assert_eq!(
            (m.from.as_str(), m.from_device.as_str(), m.body.as_slice()),
            (ua.as_str(), "phone", "hello bob ✓".as_bytes())
        );
        assert_eq!((m.conv, m.seq, m.message_id), (ack.conv, 1, ack.message_id));
        b.send(&send_to(&ua, "b1", "hi alice"));
        let ack2 = expect_ack(&mut b, "b1");
        assert_eq!((ack2.conv, ack2.seq), (ack.conv, 2), "same DM, next seq");
        assert!(ack2.message_id > ack.message_id, "message ids are time-ordered");
        let m = expect_msg(&mut a);
        assert_eq!((m.from.as_str(), m.body.as_slice(), m.seq), (ub.as_str(), &b"hi alice"[..], 2));
    }
}

#[test]
fn every_device_of_both_users_sees_the_message() {
    let server = Server::start(2);
    let mut phone = server.connect("carol", "phone", Encoding::Json);
    let mut laptop = server.connect("carol", "laptop", Encoding::FlatBuffers);
    let mut dave = server.connect("dave", "phone", Encoding::Json);
    phone.send(&send_to("dave", "c1", "from my phone"));
    let ack = expect_ack(&mut phone, "c1");
    for c in [&mut laptop, &mut dave] {
        let m = expect_msg(c);
        assert_eq!((m.seq, m.from_device.as_str(), m.client_msg_id.as_str()), (ack.seq, "phone", "c1"));
    }
    // The sending device gets only its ack, not its own message back: the next frame
    // it sees is the reply.
    dave.send(&send_to("carol", "d1", "got it"));
    expect_ack(&mut dave, "d1");
    assert_eq!(expect_msg(&mut phone).client_msg_id, "d1");
    assert_eq!(expect_msg(&mut laptop).client_msg_id, "d1");
}

/// Picks user names so that the pair is homed on different shards.
fn users_on_different_shards(shards: usize) -> (String, String) {
    let a = "erin".to_owned();
    let ha = shard::ids::home_of_user(&a, shards);
    let b = (0..).map(|i| format!("frank{i}")).find(|b| shard::ids::home_of_user(b, shards) != ha).unwrap();
    (a, b)
}

#[test]
fn a_thousand_messages_across_shards_arrive_in_order_once() {
    let server = Server::start(2);
    let (ua, ub) = users_on_different_shards(2);
    let mut a = server.connect(&ua, "d", Encoding::FlatBuffers);
    let mut b = server.connect(&ub, "d", Encoding::Json);
    const N: usize = 1000;
    a.send_many((0..N).map(|i| send_to(&ub, &format!("m{i}"), &format!("{i}"))));
    let mut acked = 0;
    let mut got = Vec::with_capacity(N);
    while acked < N || got.len() < N {
        if acked < N {
            let ack = expect_ack(&mut a, &format!("m{acked}"));
            assert_eq!(ack.seq, acked as u64 + 1);
            acked += 1;
        }
        if got.len() < N {
            let m = expect_msg(&mut b);
            got.push((m.seq, String::from_utf8(m.body).unwrap()));
        }
    }
    for (i, (seq, body)) in got.iter().enumerate() {
        assert_eq!((*seq, body.as_str()), (i as u64 + 1, i.to_string().as_str()));
    }
}

#[test]
fn resending_a_client_msg_id_stores_once_and_returns_the_same_ack() {
    let server = Server::start(2);
    let mut a = server.connect("gina", "d", Encoding::Json);
    let mut b = server.connect("hank", "d", Encoding::Json);
    a.send(&send_to("hank", "same", "once"));
    let first = expect_ack(&mut a, "same");
    a.send(&send_to("hank", "same", "once"));
    let again = expect_ack(&mut a, "same");
    assert!(again.duplicate);
    assert_eq!(
        (again.seq, again.message_id, again.ts, again.conv),
        (first.seq, first.message_id, first.ts, first.conv)
    );
    a.send(&send_to("hank", "other", "twice?"));
    assert_eq!(expect_ack(&mut a, "other").seq, first.seq + 1, "no seq was used by the duplicate");
    assert_eq!(expect_msg(&mut b).client_msg_id, "same");
    assert_eq!(expect_msg(&mut b).client_msg_id, "other", "the duplicate was not delivered again");
    a.send(&ClientFrame::History(wire::frame::History {
        req_id: Some("h".into()),
        conv: first.conv,
        before_seq: None,
        limit: None,
    }));
    match a.recv() {
        ServerFrame::HistoryPage(p) => {
            let ids: Vec<_> = p.messages.iter().map(|m| m.client_msg_id.as_str()).collect();
            assert_eq!(ids, ["same", "other"]);
        }
        other => panic!("{other:?}"),
    }
}
