//! Unit tests of the core's rules through its event interface: one or two cores, an
//! in-memory store, no sockets.

use std::collections::VecDeque;

use storage::memory::MemStore;
use storage::read::execute;
use storage::Store;
use wire::error::ErrorCode;
use wire::frame::{ClientFrame, ConvId, MsgKind, PresenceState, Send, ServerFrame, Target};

use super::{Core, CoreConfig, Effect, Route};
use crate::ids::{ConnId, ShardId};

/// One core with its store; reads and commits are answered at once, in order.
struct One {
    core: Core,
    store: MemStore,
    frames: Vec<(ConnId, ServerFrame)>,
    reads: usize,
    now: u64,
    /// Bytes each commit stored ([`storage::model::Write::stored_bytes`]).
    committed_bytes: Vec<usize>,
}

impl One {
    fn new(cfg: CoreConfig) -> One {
        One {
            core: Core::new(ShardId(0), 1, cfg),
            store: MemStore::default(),
            frames: Vec::new(),
            reads: 0,
            now: 1_000,
            committed_bytes: Vec::new(),
        }
    }

    fn run(&mut self) {
        loop {
            let effects: Vec<Effect> = self.core.effects().collect();
            if effects.is_empty() && !self.core.wants_commit() {
                return;
            }
            let mut reads = VecDeque::new();
            for e in effects {
                match e {
                    Effect::Frame { to, frame } => self.frames.push((to, frame)),
                    Effect::Deliver { conv, seq, msg, to } => {
                        let frame = ServerFrame::Msg(message(conv, seq, &msg));
                        self.frames.extend(to.into_iter().map(|c| (c, frame.clone())));
                    }
                    Effect::Read { id, req } => reads.push_back((id, req)),
                    Effect::Route { .. } => panic!("one shard routes nothing"),
                    Effect::Close { .. } => {}
                }
            }
            for (id, req) in reads {
                self.reads += 1;
                let r = execute(&self.store, &req);
                self.core.read_done(id, r, self.now);
            }
            if let Some(w) = self.core.take_commit() {
                self.committed_bytes.push(w.iter().map(storage::model::Write::stored_bytes).sum());
                let r = self.store.commit(&w);
                self.core.commit_done(r, self.now);
            }
        }
    }

    fn open(&mut self, slot: u32, user: &str) -> ConnId {
        let id = ConnId { slot, gen: 1 };
        self.core.conn_opened(id, user, "d", self.now).unwrap();
        self.run();
        id
    }

    fn send(&mut self, id: ConnId, f: ClientFrame) {
        self.core.client_frame(id, f, self.now);
        self.run();
    }

    fn take(&mut self, id: ConnId) -> Vec<ServerFrame> {
        let (mine, rest) = std::mem::take(&mut self.frames).into_iter().partition(|(c, _)| *c == id);
        self.frames = rest;
        mine.into_iter().map(|(_, f)| f).collect()
    }
}

fn message(conv: ConvId, seq: u64, m: &storage::model::StoredMessage) -> wire::frame::Message {
    let r = m.msg_ref(conv, seq);
    wire::frame::Message {
        conv,
        seq,
        message_id: r.message_id,
        from: r.from.into(),
        from_device: r.from_device.into(),
        ts: r.ts,
        kind: r.kind,
        body: r.body.to_vec(),
        client_msg_id: r.client_msg_id.into(),
        extra: m.ext.clone(),
    }
}

fn msg(cmid: &str, to: &str) -> ClientFrame {
    ClientFrame::Send(Send {
        reply_to: None,
        target_seq: None,
        forward: None,
        client_msg_id: cmid.into(),
        target: Target::User(to.into()),
        body: b"x".to_vec(),
        kind: MsgKind::Text,
    })
}

#[test]
fn a_watcher_sees_an_online_user_go_offline_and_its_subscription_ends_with_it() {
    let mut s = One::new(CoreConfig::default());
    let alice = s.open(0, "alice");
    s.core.tick(s.now, true); // alice's online state is published before bob watches
    s.run();
    let bob = s.open(1, "bob");
    s.send(bob, ClientFrame::PresenceSub { users: vec!["alice".into()] });
    let got = s.take(bob);
    assert!(
        got.iter().any(|f| matches!(f, ServerFrame::Presence { updates } if updates[0].state == PresenceState::Online)),
        "{got:?}"
    );
    s.core.conn_closed(alice, s.now);
    s.core.tick(s.now, true);
    s.run();
    let got = s.take(bob);
    assert!(
        got.iter()
            .any(|f| matches!(f, ServerFrame::Presence { updates } if updates[0].state == PresenceState::Offline)),
        "alice's disconnect reached her watcher: {got:?}"
    );
    // Bob leaves: alice (offline, unwatched, record saved) is evicted, and so is bob.
    s.core.conn_closed(bob, s.now);
    s.core.tick(s.now, true);
    s.run();
    assert_eq!(s.core.counts().users, 0, "nothing keeps users who left");
    assert_eq!(s.store.user_record("alice").unwrap().last_seen, Some(s.now), "last seen is durable");
}

#[test]
fn watching_invented_users_leaves_nothing_once_the_watcher_closes() {
    let cfg = CoreConfig { max_presence_subs: 300, presence_rate: 0, ..CoreConfig::default() };
    let mut s = One::new(cfg);
    let eve = s.open(0, "eve");
    for i in 0..3 {
        let users = (0..100).map(|j| format!("ghost-{i}-{j}")).collect();
        s.send(eve, ClientFrame::PresenceSub { users });
    }
    assert_eq!(s.core.counts().users, 301, "watched while the watcher lives");
    s.send(eve, ClientFrame::PresenceSub { users: vec!["one-too-many".into()] });
    let refused = s.take(eve);
    assert!(refused.iter().any(|f| matches!(f, ServerFrame::Error(e) if e.code == ErrorCode::LimitExceeded)));
    s.core.conn_closed(eve, s.now);
    s.core.tick(s.now, true);
    s.run();
    assert_eq!(s.core.counts().users, 0);
}

#[test]
fn invented_conversations_cost_one_read_then_none() {
    let cfg = CoreConfig { typing_rate: 0, ..CoreConfig::default() };
    let mut s = One::new(cfg);
    let eve = s.open(0, "eve");
    let before = s.reads;
    for _ in 0..5 {
        s.send(eve, ClientFrame::Typing { conv: ConvId(42), typing: true });
    }
    assert_eq!(s.reads - before, 1, "the negative cache answers the rest");
    assert_eq!(s.core.counts().convs, 0, "nothing loaded is kept");
    let errors =
        s.take(eve).into_iter().filter(|f| matches!(f, ServerFrame::Error(e) if e.code == ErrorCode::NotMember));
    assert_eq!(errors.count(), 5);
}

#[test]
fn the_commit_queue_refuses_past_its_bound_and_resends_are_deduplicated_after_eviction() {
    let cfg = CoreConfig { max_commit_queue: 2, conv_memory: 1, ..CoreConfig::default() };
    let mut s = One::new(cfg);
    let a = s.open(0, "alice");
    // Three sends while the conversation loads: once it is in memory, two are queued
    // and the third finds the queue full.
    for i in 0..3 {
        s.core.client_frame(a, msg(&format!("m{i}"), "bob"), s.now);
    }
    s.run();
    let frames = s.take(a);
    let busy = frames.iter().filter(|f| matches!(f, ServerFrame::Error(e) if e.code == ErrorCode::Unavailable));
    assert_eq!(busy.count(), 1, "{frames:?}");
    s.frames.extend(frames.into_iter().map(|f| (a, f)));
    let acks: Vec<_> =
        s.take(a).into_iter().filter_map(|f| if let ServerFrame::Ack(k) = f { Some(k) } else { None }).collect();
    assert_eq!(acks.len(), 2);
    // A tiny budget evicts the idle conversation on the beat...
    s.core.tick(s.now, false);
    assert_eq!(s.core.counts().convs, 0);
    // ...and a resend reloads its dedupe index: the original ack, nothing stored twice.
    s.send(a, msg("m0", "bob"));
    let again: Vec<_> =
        s.take(a).into_iter().filter_map(|f| if let ServerFrame::Ack(k) = f { Some(k) } else { None }).collect();
    assert_eq!((again[0].seq, again[0].duplicate), (acks[0].seq, true));
    assert_eq!(s.store.messages(acks[0].conv).len(), 2);
}

#[test]
fn routes_between_shards_are_plain_data() {
    fn plain<T: std::marker::Send + 'static>() {}
    plain::<Route>();
}

fn receipts_of(frames: Vec<ServerFrame>) -> Vec<(String, u64, u64)> {
    frames
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Receipt { user, delivered, read, .. } => Some((user, delivered, read)),
            _ => None,
        })
        .collect()
}

#[test]
fn dm_receipts_reach_the_sender_and_the_readers_devices_once_durable_and_never_go_back() {
    let mut s = One::new(CoreConfig::default());
    let alice = s.open(0, "alice");
    let bob = s.open(1, "bob");
    let bob2 = s.core.conn_ref(ConnId { slot: 2, gen: 1 }).conn;
    s.core.conn_opened(bob2, "bob", "tablet", s.now).unwrap();
    for i in 0..3 {
        s.send(alice, msg(&format!("m{i}"), "bob"));
    }
    let conv = match s.take(alice).into_iter().find_map(|f| if let ServerFrame::Ack(a) = f { Some(a) } else { None }) {
        Some(a) => a.conv,
        None => panic!("no ack"),
    };
    s.take(bob);
    s.take(bob2);
    s.send(bob, ClientFrame::Delivered { conv, seq: 3 });
    assert_eq!(receipts_of(s.take(alice)), vec![("bob".into(), 3, 0)]);
    s.send(bob, ClientFrame::Read { conv, seq: 2 });
    assert_eq!(receipts_of(s.take(alice)), vec![("bob".into(), 3, 2)]);
    // Bob's devices converge (the reading device is told too: its acknowledgement).
    assert_eq!(receipts_of(s.take(bob2)).last(), Some(&("bob".into(), 3, 2)));
    assert_eq!(receipts_of(s.take(bob)).last(), Some(&("bob".into(), 3, 2)));
    // Never backwards, never past what is stored.
    s.send(bob, ClientFrame::Read { conv, seq: 1 });
    assert!(receipts_of(s.take(alice)).is_empty(), "a cursor does not move back");
    s.send(bob2, ClientFrame::Delivered { conv, seq: 99 });
    assert!(receipts_of(s.take(alice)).is_empty(), "capped at the last stored seq (3)");
    // Durable: in the store.
    let stored = s.store.cursors(conv).unwrap();
    assert_eq!(
        stored,
        vec![("bob".to_owned(), storage::model::CursorRecord { delivered: 3, read: 2, private: false })]
    );
}

#[test]
fn group_senders_get_coalesced_counts_and_members_pages() {
    let cfg = CoreConfig { presence_rate: 0, history_rate: 0, ..CoreConfig::default() };
    let mut s = One::new(cfg);
    let owner = s.open(0, "owner");
    let members: Vec<String> = (0..9).map(|i| format!("m{i}")).collect();
    let op = wire::frame::GroupOp {
        req_id: None,
        action: wire::frame::GroupAction::Create,
        conv: None,
        name: None,
        members: members.clone(),
        description: None,
        avatar: None,
    };
    s.send(owner, ClientFrame::Group(op));
    let conv = s
        .take(owner)
        .into_iter()
        .find_map(|f| if let ServerFrame::GroupInfo(g) = f { Some(g.conv) } else { None })
        .expect("group created");
    s.send(
        owner,
        ClientFrame::Send(Send {
            reply_to: None,
            target_seq: None,
            forward: None,
            client_msg_id: "hello".into(),
            target: Target::Conv(conv),
            body: b"hi".to_vec(),
            kind: MsgKind::Text,
        }),
    );
    s.take(owner);
    let conns: Vec<ConnId> = (0..9).map(|i| s.open(10 + i, &members[i as usize])).collect();
    // Every member receives; six read; all in one window.
    for (i, c) in conns.iter().enumerate() {
        s.send(*c, ClientFrame::Delivered { conv, seq: 2 });
        if i < 6 {
            s.send(*c, ClientFrame::Read { conv, seq: 2 });
        }
    }
    s.core.tick(s.now, true);
    s.run();
    let counts: Vec<_> = s
        .take(owner)
        .into_iter()
        .filter_map(|f| {
            if let ServerFrame::ReceiptCount { seq, members, delivered, read, .. } = f {
                Some((seq, members, delivered, read))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(counts, vec![(2, 9, 9, 6)], "one coalesced count for the window");
    // Nothing new: nothing sent at the next window.
    s.core.tick(s.now, true);
    s.run();
    assert!(s.take(owner).iter().all(|f| !matches!(f, ServerFrame::ReceiptCount { .. })));
    // Who: pages of 4 members.
    let mut readers = Vec::new();
    let mut after = None;
    loop {
        let req =
            wire::frame::ReceiptsReq { req_id: Some("r".into()), conv, seq: 2, after: after.clone(), limit: Some(4) };
        s.send(owner, ClientFrame::Receipts(req));
        let Some(ServerFrame::ReceiptList(l)) =
            s.take(owner).into_iter().find(|f| matches!(f, ServerFrame::ReceiptList(_)))
        else {
            panic!("no list")
        };
        readers.extend(l.read);
        match l.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(readers, members[..6].to_vec());
}

#[test]
fn a_user_with_read_receipts_off_shows_and_sees_no_reads() {
    let cfg = CoreConfig { presence_rate: 0, ..CoreConfig::default() };
    let mut s = One::new(cfg);
    let alice = s.open(0, "alice");
    let bob = s.open(1, "bob");
    s.send(bob, ClientFrame::Settings { read_receipts: Some(false) });
    s.send(alice, msg("a1", "bob"));
    s.send(bob, msg("b1", "alice"));
    let conv = dm(&mut s, alice);
    s.take(bob);
    s.send(bob, ClientFrame::Read { conv, seq: 1 });
    assert_eq!(receipts_of(s.take(alice)), vec![("bob".into(), 1, 0)], "bob's read is not shown");
    assert_eq!(receipts_of(s.take(bob)), vec![("bob".into(), 1, 1)], "bob's own devices still sync");
    s.send(alice, ClientFrame::Read { conv, seq: 2 });
    assert_eq!(receipts_of(s.take(bob)), vec![("alice".into(), 2, 0)], "bob sees no one's reads");
    assert!(s.store.user_record("bob").unwrap().receipts_off, "the setting is durable");
}

fn dm(s: &mut One, a: ConnId) -> ConvId {
    s.take(a).into_iter().find_map(|f| if let ServerFrame::Ack(k) = f { Some(k.conv) } else { None }).expect("an ack")
}

#[test]
fn frames_waiting_for_a_users_settings_are_capped() {
    let mut s = One::new(CoreConfig::default());
    let a = s.open(0, "alice");
    // The user's record is read on the first `read`; until it is answered, at most
    // MAX_HELD frames wait and the rest are refused (retryable).
    for seq in 0..100 {
        s.core.client_frame(a, ClientFrame::Read { conv: ConvId(7), seq }, s.now);
    }
    let effects: Vec<Effect> = s.core.effects().collect();
    let reads = effects.iter().filter(|e| matches!(e, Effect::Read { .. })).count();
    let refused = effects
        .iter()
        .filter(|e| matches!(e, Effect::Frame { frame: ServerFrame::Error(e), .. } if e.code == ErrorCode::Unavailable))
        .count();
    assert_eq!((reads, refused), (1, 100 - super::users::MAX_HELD), "one read, the excess refused");
}

#[test]
fn adding_one_member_to_a_large_group_stores_one_row_not_the_list() {
    let mut s = One::new(CoreConfig { send_rate: 0, max_group_members: 5000, ..CoreConfig::default() });
    let owner = s.open(1, "owner");
    let group = |action, conv, members: Vec<String>| {
        ClientFrame::Group(wire::frame::GroupOp {
            req_id: None,
            action,
            conv,
            name: None,
            members,
            description: None,
            avatar: None,
        })
    };
    let names = |lo: usize, hi: usize| (lo..hi).map(|i| format!("member-{i:05}")).collect::<Vec<_>>();
    s.send(owner, group(wire::frame::GroupAction::Create, None, names(0, 200)));
    let conv = s
        .take(owner)
        .into_iter()
        .find_map(|f| if let ServerFrame::GroupInfo(g) = f { Some(g.conv) } else { None })
        .expect("created");
    for lo in (200..3000).step_by(200) {
        s.send(owner, group(wire::frame::GroupAction::Add, Some(conv), names(lo, lo + 200)));
    }
    s.send(owner, group(wire::frame::GroupAction::Add, Some(conv), names(3000, 3001)));
    let one = *s.committed_bytes.last().unwrap();
    assert!(one < 600, "adding one member to a 3,000-member group stored {one} bytes");
    // The member who joined last sees the group from their join on.
    let late = s.open(2, "member-03000");
    s.send(late, ClientFrame::History(wire::frame::History { req_id: None, conv, before_seq: None, limit: None }));
    let page = s
        .take(late)
        .into_iter()
        .find_map(|f| if let ServerFrame::HistoryPage(p) = f { Some(p) } else { None })
        .expect("a page");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![16], "only the event that added them: {seqs:?}");
}
