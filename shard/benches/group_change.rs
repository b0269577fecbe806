//! Stored bytes per group change and per group message, by group size: what one `add`
//! of one member, and one message, write to storage (keys and values, before the
//! engine's own overhead, [`storage::model::Write::stored_bytes`]), summed over the 4
//! shards' commits. Membership is stored as one row per member, and a group's newest
//! message for the conversation list once per shard, so neither grows with the group.
//!
//! `cargo bench -p shard --bench group_change` prints one line per group size.

use std::collections::VecDeque;

use shard::core::{Core, CoreConfig, Effect};
use shard::ids::{home_of_user, ConnId, ShardId};
use storage::memory::MemStore;
use storage::read::execute;
use storage::Store;
use wire::frame::{ClientFrame, GroupAction, GroupOp, MsgKind, Send, ServerFrame, Target};

const SHARDS: usize = 4;

struct Host {
    cores: Vec<Core>,
    stores: Vec<MemStore>,
    stored: usize,
    infos: Vec<ServerFrame>,
}

impl Host {
    fn run(&mut self) {
        let mut pending: VecDeque<(usize, Effect)> = VecDeque::new();
        loop {
            for (k, c) in self.cores.iter_mut().enumerate() {
                pending.extend(c.effects().map(|e| (k, e)));
                if let Some(w) = c.take_commit() {
                    self.stored += w.iter().map(storage::model::Write::stored_bytes).sum::<usize>();
                    let r = self.stores[k].commit(&w);
                    c.commit_done(r, 2);
                    pending.extend(c.effects().map(|e| (k, e)));
                }
            }
            let Some((k, e)) = pending.pop_front() else { return };
            match e {
                Effect::Route { to, route } => self.cores[to.index()].route(route, 2),
                Effect::Read { id, req } => {
                    let r = execute(&self.stores[k], &req);
                    self.cores[k].read_done(id, r, 2);
                }
                Effect::Frame { frame, .. } => self.infos.push(frame),
                Effect::Deliver { .. } | Effect::Close { .. } => {}
            }
        }
    }
}

fn group(action: GroupAction, conv: Option<wire::frame::ConvId>, members: Vec<String>) -> ClientFrame {
    ClientFrame::Group(GroupOp {
        req_id: None,
        action,
        conv,
        name: Some("g".into()),
        members,
        description: None,
        avatar: None,
    })
}

fn main() {
    for size in [10usize, 1_000, 10_000] {
        let cfg = CoreConfig { send_rate: 0, max_group_members: 20_000, ..CoreConfig::default() };
        let mut h = Host {
            cores: (0..SHARDS).map(|k| Core::new(ShardId(k as u16), SHARDS, cfg.clone())).collect(),
            stores: (0..SHARDS).map(|_| MemStore::default()).collect(),
            stored: 0,
            infos: Vec::new(),
        };
        let owner = "owner";
        let home = home_of_user(owner, SHARDS).index();
        let conn = ConnId { slot: 0, gen: 1 };
        h.cores[home].conn_opened(conn, owner, "d", 1).unwrap();
        let names: Vec<String> = (0..size).map(|i| format!("member-{i:05}")).collect();
        let first = names.len().min(255);
        h.cores[home].client_frame(conn, group(GroupAction::Create, None, names[..first].to_vec()), 2);
        h.run();
        let conv = h
            .infos
            .iter()
            .find_map(|f| if let ServerFrame::GroupInfo(g) = f { Some(g.conv) } else { None })
            .expect("created");
        for chunk in names[first..].chunks(256) {
            h.cores[home].client_frame(conn, group(GroupAction::Add, Some(conv), chunk.to_vec()), 2);
            h.run();
        }
        h.stored = 0;
        h.cores[home].client_frame(conn, group(GroupAction::Add, Some(conv), vec!["newcomer".into()]), 2);
        h.run();
        let add = h.stored;
        h.stored = 0;
        let send = Send {
            client_msg_id: "m".into(),
            target: Target::Conv(conv),
            body: vec![b'x'; 64],
            kind: MsgKind::Text,
            reply_to: None,
            target_seq: None,
            forward: None,
        };
        h.cores[home].client_frame(conn, ClientFrame::Send(send), 2);
        h.run();
        println!(
            "group_change: {:>6} members: {:>5} bytes stored to add one member, {:>5} bytes per 64-byte message",
            size + 1,
            add,
            h.stored
        );
    }
}
