//! Groups, on the group's home shard: create, add, remove, leave, rename, promote, demote.
//!
//! A group is a conversation whose id has the top bit set, chosen by the shard that
//! received the `create` (the bit, then that shard's next message id: unique on the
//! host). Every change is checked and applied in memory at the home, then stored as a
//! `system` message in the group's order together with the new metadata, in the same
//! group commit as messages (one atomic batch). Once durable, the requester gets
//! `group_info` and everyone who was a member when the event was written (plus those it
//! removed) gets the event as a `msg`, live or by sync. So a client learns of its own
//! membership changes in the conversation's order, and a message sent after an `add`
//! reaches the new member.

use serde::Serialize;
use shard::ids::now_ms;
use storage::model::{ConvKind, ConvMeta, GroupMeta};
use wire::error::ErrorCode;
use wire::frame::{GroupAction, GroupInfo, Message, MsgKind, ServerFrame};

use crate::messaging::{Pending, Slot};
use crate::route::GroupReq;
use crate::service::Shard;

/// The body of a stored group event (`kind: "system"`), as JSON.
#[derive(Serialize)]
struct Event<'a> {
    /// The action's name.
    event: &'static str,
    /// Who made the change.
    by: &'a str,
    /// Users it concerns (for `create`: every initial member).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    members: &'a [String],
    /// The name (`create`, `rename`).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// Why a request was refused.
type Refusal = (ErrorCode, String);

fn not_member() -> Refusal {
    (ErrorCode::NotMember, "no such group, or you are not a member".into())
}

fn admins_only(action: GroupAction) -> Refusal {
    (ErrorCode::Forbidden, format!("only a group admin may {}", action.name()))
}

fn sorted_insert(list: &mut Vec<Box<str>>, user: &str) -> bool {
    match list.binary_search_by(|m| (**m).cmp(user)) {
        Ok(_) => false,
        Err(i) => {
            list.insert(i, Box::from(user));
            true
        }
    }
}

fn sorted_remove<T: AsRef<str>>(list: &mut Vec<T>, user: &str) -> bool {
    match list.binary_search_by(|m| m.as_ref().cmp(user)) {
        Ok(i) => {
            list.remove(i);
            true
        }
        Err(_) => false,
    }
}

/// What a change did: the users it concerns, and those it removed.
struct Change {
    members: Vec<String>,
    removed: Vec<String>,
}

impl Shard {
    /// Checks and applies a group request at the group's home (its state is loaded).
    pub(crate) fn accept_group(&mut self, req: GroupReq) {
        let max_members = self.cfg.max_group_members;
        let Some(Slot::Ready(c)) = self.convs.slots.get_mut(&req.conv) else { return };
        let action = req.op.action;
        let user = req.user.as_str();
        let is_group = c.exists && c.group.is_some();
        let change: Result<Option<Change>, Refusal> = match action {
            GroupAction::Create if c.exists => Err((ErrorCode::BadValue, "this group already exists".into())),
            GroupAction::Create => {
                let mut members: Vec<Box<str>> = vec![Box::from(user)];
                for m in &req.op.members {
                    sorted_insert(&mut members, m);
                }
                if members.len() > max_members {
                    Err((ErrorCode::LimitExceeded, format!("a group has at most {max_members} members")))
                } else {
                    let all = members.iter().map(|m| m.to_string()).collect();
                    c.state.members = members;
                    c.group =
                        Some(GroupMeta { name: req.op.name.clone().unwrap_or_default(), admins: vec![user.into()] });
                    c.exists = true;
                    Ok(Some(Change { members: all, removed: Vec::new() }))
                }
            }
            _ if !is_group || !c.state.is_member(user) => Err(not_member()),
            GroupAction::Info => Ok(None),
            GroupAction::Leave => {
                sorted_remove(&mut c.state.members, user);
                Ok(Some(Change { members: vec![user.into()], removed: vec![user.into()] }))
            }
            _ => {
                let g = c.group.as_mut().expect("is_group checked above");
                if g.admins.binary_search_by(|a| a.as_str().cmp(user)).is_err() {
                    Err(admins_only(action))
                } else {
                    match action {
                        GroupAction::Add => {
                            let new: Vec<String> =
                                req.op.members.iter().filter(|m| !c.state.is_member(m)).cloned().collect();
                            let mut new_sorted = new.clone();
                            new_sorted.sort();
                            new_sorted.dedup();
                            if c.state.members.len() + new_sorted.len() > max_members {
                                Err((ErrorCode::LimitExceeded, format!("a group has at most {max_members} members")))
                            } else {
                                for m in &new_sorted {
                                    sorted_insert(&mut c.state.members, m);
                                }
                                Ok((!new_sorted.is_empty())
                                    .then_some(Change { members: new_sorted, removed: Vec::new() }))
                            }
                        }
                        GroupAction::Remove => {
                            let mut gone = Vec::new();
                            for m in &req.op.members {
                                if sorted_remove(&mut c.state.members, m) {
                                    gone.push(m.clone());
                                }
                            }
                            Ok((!gone.is_empty()).then(|| Change { members: gone.clone(), removed: gone }))
                        }
                        GroupAction::Rename => {
                            g.name = req.op.name.clone().unwrap_or_default();
                            Ok(Some(Change { members: Vec::new(), removed: Vec::new() }))
                        }
                        GroupAction::Promote => {
                            if let Some(m) = req.op.members.iter().find(|m| !c.state.is_member(m)) {
                                Err((ErrorCode::BadValue, format!("{m} is not a member of this group")))
                            } else {
                                let mut new = Vec::new();
                                for m in &req.op.members {
                                    if let Err(i) = g.admins.binary_search(m) {
                                        g.admins.insert(i, m.clone());
                                        new.push(m.clone());
                                    }
                                }
                                Ok((!new.is_empty()).then_some(Change { members: new, removed: Vec::new() }))
                            }
                        }
                        GroupAction::Demote => {
                            let left = g.admins.iter().filter(|a| !req.op.members.contains(a)).count();
                            if left == 0 {
                                Err((ErrorCode::Forbidden, "a group keeps at least one admin".into()))
                            } else {
                                let mut gone = Vec::new();
                                for m in &req.op.members {
                                    if sorted_remove(&mut g.admins, m) {
                                        gone.push(m.clone());
                                    }
                                }
                                Ok((!gone.is_empty()).then_some(Change { members: gone, removed: Vec::new() }))
                            }
                        }
                        GroupAction::Create | GroupAction::Info | GroupAction::Leave => {
                            unreachable!("handled above")
                        }
                    }
                }
            }
        };
        let change = match change {
            Err((code, msg)) => return self.reply_error(req.from, code, msg, req.op.req_id),
            Ok(change) => change,
        };
        // Removed members are no longer admins; a group with members keeps an admin
        // (the first member by id when the last admin left or was removed).
        if let Some(ch) = &change {
            let g = c.group.as_mut().expect("a group");
            for r in &ch.removed {
                sorted_remove(&mut g.admins, r);
            }
            if g.admins.is_empty() {
                if let Some(first) = c.state.members.first() {
                    g.admins.push(first.to_string());
                }
            }
            c.members_changed();
        }
        let g = c.group.clone().expect("a group");
        let members: Vec<String> = c.state.members.iter().map(|m| m.to_string()).collect();
        let info = GroupInfo {
            req_id: req.op.req_id.clone(),
            conv: req.conv,
            name: g.name.clone(),
            members: members.clone(),
            admins: g.admins.clone(),
            seq: 0,
        };
        let Some(ch) = change else {
            // Nothing to store (`info`, or a change that changes nothing).
            return self.reply(req.from, ServerFrame::GroupInfo(info));
        };
        let seq = c.state.accept_event();
        let message_id = self.ids.next(now_ms());
        let name = matches!(action, GroupAction::Create | GroupAction::Rename).then_some(g.name.as_str());
        let body = serde_json::to_vec(&Event { event: action.name(), by: user, members: &ch.members, name })
            .expect("JSON encoding of a group event is infallible");
        let ts = now_ms();
        let Some(Slot::Ready(c)) = self.convs.slots.get_mut(&req.conv) else { return };
        let msg = Message {
            conv: req.conv,
            seq,
            message_id,
            from: req.user.clone(),
            from_device: req.device,
            ts,
            kind: MsgKind::System,
            body,
            client_msg_id: String::new(),
        };
        if action == GroupAction::Create {
            c.created = ts;
        }
        let meta = ConvMeta { kind: ConvKind::Group(g), members, created: c.created };
        self.convs.queued.push(Pending {
            from: req.from,
            msg,
            meta: Some(meta),
            removed: ch.removed,
            info: Some(info),
        });
    }
}
