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
}

impl One {
    fn new(cfg: CoreConfig) -> One {
        One {
            core: Core::new(ShardId(0), 1, cfg),
            store: MemStore::default(),
            frames: Vec::new(),
            reads: 0,
            now: 1_000,
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
    }
}

fn msg(cmid: &str, to: &str) -> ClientFrame {
    ClientFrame::Send(Send {
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
