//! Groups, at the group's home shard: create, add, remove, leave, rename, promote,
//! demote, describe, transfer, delete.
//!
//! Roles: one owner, admins (the owner is one), members. Admins add, remove, rename,
//! promote, demote and describe (description, avatar); only the owner transfers
//! ownership or deletes the group, and no one removes or demotes the owner. A group
//! keeps exactly one owner: when the owner leaves, ownership passes to the oldest other
//! admin (admins are kept in the order they became admins), or else to the first member
//! by id (who becomes an admin). A
//! deleted group takes no more messages or changes (`forbidden`); its members keep
//! reading its history.
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
use storage::model::{ConvKind, ConvMeta, GroupMeta, MemberRow, StoredMessage};
use wire::error::ErrorCode;
use wire::frame::{GroupAction, GroupInfo, GroupOp, MsgKind, ServerFrame};

use super::commit::Pending;
use super::convs::Conv;
use super::{busy, Core, GroupReq};

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
    /// The description (`create`, `describe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    /// The avatar (`create`, `describe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar: Option<&'a str>,
    /// The owner, when it changed (`transfer`, or the owner leaving).
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
}

/// Why a request was refused.
pub type Refusal = (ErrorCode, String);

fn not_member() -> Refusal {
    (ErrorCode::NotMember, "no such group, or you are not a member".into())
}

fn admins_only(action: GroupAction) -> Refusal {
    (ErrorCode::Forbidden, format!("only a group admin may {}", action.name()))
}

fn owner_only(action: GroupAction) -> Refusal {
    (ErrorCode::Forbidden, format!("only the group's owner may {}", action.name()))
}

/// Refusal of anything but `info` in a deleted group.
pub fn deleted() -> Refusal {
    (ErrorCode::Forbidden, "the group was deleted".into())
}

fn too_many(max: usize) -> Refusal {
    (ErrorCode::LimitExceeded, format!("a group has at most {max} members"))
}

/// Makes `user` an admin (the newest), unless they are one.
fn admin_add(admins: &mut Vec<String>, user: &str) -> bool {
    let new = !admins.iter().any(|a| a == user);
    if new {
        admins.push(user.to_owned());
    }
    new
}

/// `user` is no longer an admin.
fn admin_remove(admins: &mut Vec<String>, user: &str) -> bool {
    let before = admins.len();
    admins.retain(|a| a != user);
    admins.len() != before
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
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    /// Users the event names.
    pub members: Vec<String>,
    /// Users it removed (they get the event too, and leave the user index).
    pub removed: Vec<String>,
}

/// Checks `op` by `user` against the group's state and applies it in memory. `Ok(None)`:
/// nothing to store (`info`, or a change that changes nothing).
pub fn apply(c: &mut Conv, user: &str, op: &GroupOp, max: usize) -> Result<Option<Change>, Refusal> {
    if op.action == GroupAction::Create {
        if c.exists {
            return Err((ErrorCode::BadValue, "this group already exists".into()));
        }
        let mut members: Vec<Box<str>> = vec![Box::from(user)];
        for m in &op.members {
            sorted_insert(&mut members, m);
        }
        if members.len() > max {
            return Err(too_many(max));
        }
        let all = members.iter().map(|m| m.to_string()).collect();
        c.members = members;
        c.group = Some(GroupMeta {
            name: op.name.clone().unwrap_or_default(),
            admins: vec![user.into()],
            owner: user.into(),
            description: op.description.clone().unwrap_or_default(),
            avatar: op.avatar.clone().unwrap_or_default(),
            deleted: false,
        });
        c.exists = true;
        return Ok(Some(Change { members: all, removed: Vec::new() }));
    }
    let is_member = c.exists && c.is_member(user);
    let Conv { members: list, group, .. } = c;
    let Some(g) = group.as_mut().filter(|_| is_member) else { return Err(not_member()) };
    let is_admin = g.admins.iter().any(|a| a == user);
    let is_owner = g.owner == user;
    let has = |list: &[Box<str>], m: &str| list.binary_search_by(|x| (**x).cmp(m)).is_ok();
    let change =
        |members: Vec<String>, removed: Vec<String>| (!members.is_empty()).then_some(Change { members, removed });
    match op.action {
        GroupAction::Info => Ok(None),
        _ if g.deleted => Err(deleted()),
        GroupAction::Leave => {
            sorted_remove(list, user);
            if is_owner {
                // Exactly one owner: the oldest other admin, else the first member.
                admin_remove(&mut g.admins, user);
                let next = g.admins.first().cloned().or_else(|| list.first().map(|m| m.to_string()));
                if let Some(next) = next {
                    admin_add(&mut g.admins, &next);
                    g.owner = next;
                }
            }
            Ok(change(vec![user.into()], vec![user.into()]))
        }
        action @ (GroupAction::Transfer | GroupAction::Delete) if !is_owner => Err(owner_only(action)),
        GroupAction::Transfer => {
            let to = &op.members[0];
            if !has(list, to) {
                return Err((ErrorCode::BadValue, format!("{to} is not a member of this group")));
            }
            if *to == g.owner {
                return Ok(None);
            }
            admin_add(&mut g.admins, to);
            g.owner = to.clone();
            Ok(change(vec![to.clone()], Vec::new()))
        }
        GroupAction::Delete => {
            g.deleted = true;
            Ok(Some(Change { members: Vec::new(), removed: Vec::new() }))
        }
        action if !is_admin => Err(admins_only(action)),
        GroupAction::Describe => {
            if let Some(d) = &op.description {
                g.description = d.clone();
            }
            if let Some(a) = &op.avatar {
                g.avatar = a.clone();
            }
            Ok(Some(Change { members: Vec::new(), removed: Vec::new() }))
        }
        GroupAction::Add => {
            let mut new: Vec<String> = op.members.iter().filter(|m| !has(list, m)).cloned().collect();
            new.sort();
            new.dedup();
            if list.len() + new.len() > max {
                return Err(too_many(max));
            }
            for m in &new {
                sorted_insert(list, m);
            }
            Ok(change(new, Vec::new()))
        }
        GroupAction::Remove => {
            if op.members.contains(&g.owner) {
                return Err((ErrorCode::Forbidden, "no one removes the group's owner".into()));
            }
            let gone: Vec<String> = op.members.iter().filter(|m| sorted_remove(list, m)).cloned().collect();
            Ok(change(gone.clone(), gone))
        }
        GroupAction::Rename => {
            g.name = op.name.clone().unwrap_or_default();
            Ok(Some(Change { members: Vec::new(), removed: Vec::new() }))
        }
        GroupAction::Promote => {
            if let Some(m) = op.members.iter().find(|m| !has(list, m)) {
                return Err((ErrorCode::BadValue, format!("{m} is not a member of this group")));
            }
            let mut new = Vec::new();
            for m in &op.members {
                if admin_add(&mut g.admins, m) {
                    new.push(m.clone());
                }
            }
            Ok(change(new, Vec::new()))
        }
        GroupAction::Demote => {
            if op.members.contains(&g.owner) {
                return Err((ErrorCode::Forbidden, "the owner stays an admin (transfer ownership first)".into()));
            }
            if g.admins.iter().all(|a| op.members.contains(a)) {
                return Err((ErrorCode::Forbidden, "a group keeps at least one admin".into()));
            }
            let gone: Vec<String> = op.members.iter().filter(|m| admin_remove(&mut g.admins, m)).cloned().collect();
            Ok(change(gone, Vec::new()))
        }
        // Handled above; an existing group cannot be created again.
        GroupAction::Create => Err((ErrorCode::BadValue, "this group already exists".into())),
    }
}

impl Core {
    /// Checks and applies a group request at the group's home (its state is loaded),
    /// then queues its event and metadata for the next group commit.
    pub(super) fn accept_group(&mut self, req: GroupReq) {
        let (max_members, now) = (self.cfg.max_group_members, self.now);
        if req.op.action != GroupAction::Info && self.commit.queued_len() >= self.cfg.max_commit_queue {
            let (code, msg) = busy("commit queue");
            return self.reply_error(req.from, code, msg, req.op.req_id);
        }
        let Some(c) = self.convs.ready(req.conv) else { return };
        let owner_before = c.group.as_ref().map(|g| g.owner.clone()).unwrap_or_default();
        let change = match apply(c, &req.user, &req.op, max_members) {
            Err((code, msg)) => return self.reply_error(req.from, code, msg, req.op.req_id),
            Ok(change) => change,
        };
        let Conv { members: list, group: Some(g), created, .. } = &mut *c else {
            let (code, msg) = not_member();
            return self.reply_error(req.from, code, msg, req.op.req_id);
        };
        // Removed members are no longer admins; a group with members keeps an admin
        // (the first member by id when the last admin left or was removed).
        if let Some(ch) = &change {
            for r in &ch.removed {
                admin_remove(&mut g.admins, r);
            }
            if g.admins.is_empty() {
                if let Some(first) = list.first() {
                    g.admins.push(first.to_string());
                }
            }
        }
        let members: Vec<String> = list.iter().map(|m| m.to_string()).collect();
        let info = GroupInfo {
            req_id: req.op.req_id.clone(),
            conv: req.conv,
            name: g.name.clone(),
            members: members.clone(),
            admins: {
                let mut sorted = g.admins.clone();
                sorted.sort();
                sorted
            },
            seq: 0,
            owner: g.owner.clone(),
            description: g.description.clone(),
            avatar: g.avatar.clone(),
            deleted: g.deleted,
        };
        let Some(ch) = change else {
            return self.reply(req.from, ServerFrame::GroupInfo(Box::new(info)));
        };
        let action = req.op.action;
        let name = matches!(action, GroupAction::Create | GroupAction::Rename).then_some(g.name.as_str());
        let describes = matches!(action, GroupAction::Create | GroupAction::Describe);
        let description = describes.then_some(g.description.as_str()).filter(|d| !d.is_empty());
        let avatar = describes.then_some(g.avatar.as_str()).filter(|a| !a.is_empty());
        let owner = (action != GroupAction::Create && g.owner != owner_before).then_some(g.owner.as_str());
        let event =
            Event { event: action.name(), by: &req.user, members: &ch.members, name, description, avatar, owner };
        let body = serde_json::to_vec(&event).expect("JSON encoding of a group event is infallible");
        if action == GroupAction::Create {
            *created = now;
        }
        // Members are rows of their own: the metadata carries none, so a change writes
        // only the rows it changes (one per added or removed member).
        let meta = ConvMeta { kind: ConvKind::Group(g.clone()), members: Vec::new(), created: *created };
        c.last_seq += 1;
        c.in_flight += 1;
        let seq = c.last_seq;
        c.members_changed();
        let mut rows: Vec<(String, MemberRow)> = Vec::new();
        if std::mem::take(&mut c.legacy_members) {
            // Stored before rows existed: every member's row, once.
            rows.extend(members.iter().map(|m| (m.clone(), MemberRow { joined: c.joined_at(m), left: 0 })));
        } else if action == GroupAction::Create {
            rows.extend(members.iter().map(|m| (m.clone(), MemberRow::default())));
        }
        if action == GroupAction::Add {
            for m in &ch.members {
                if let Err(i) = c.joined.binary_search_by(|(x, _)| (**x).cmp(m.as_str())) {
                    c.joined.insert(i, (Box::from(m.as_str()), seq));
                }
                rows.retain(|(x, _)| x != m);
                rows.push((m.clone(), MemberRow { joined: seq, left: 0 }));
            }
        }
        for r in &ch.removed {
            let joined = c.joined_at(r);
            if let Ok(i) = c.joined.binary_search_by(|(x, _)| (**x).cmp(r.as_str())) {
                c.joined.remove(i);
            }
            rows.push((r.clone(), MemberRow { joined, left: seq }));
        }
        let mut audience = members;
        audience.extend(ch.removed.iter().cloned());
        if action == GroupAction::Create {
            self.convs.created(req.conv);
        }
        let msg = std::sync::Arc::new(StoredMessage {
            ext: None,
            message_id: self.ids.next(now),
            from: req.user,
            from_device: req.device,
            client_msg_id: String::new(),
            ts: now,
            kind: MsgKind::System.tag(),
            body,
        });
        let (conv, info) = (req.conv, Some(info));
        self.commit.queued.push(Pending {
            from: req.from,
            conv,
            seq,
            msg,
            meta: Some(meta),
            rows,
            audience,
            info,
            side: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(action: GroupAction, members: &[&str]) -> GroupOp {
        GroupOp {
            req_id: None,
            action,
            conv: None,
            name: Some("g".into()),
            members: members.iter().map(|m| m.to_string()).collect(),
            description: None,
            avatar: None,
        }
    }

    #[test]
    fn only_admins_change_a_group_and_it_keeps_an_admin() {
        let mut c = Conv::new(Vec::new(), 0, 8);
        let created = apply(&mut c, "alice", &op(GroupAction::Create, &["bob", "carol"]), 10).unwrap().unwrap();
        assert_eq!(created.members, vec!["alice", "bob", "carol"]);
        assert_eq!(apply(&mut c, "bob", &op(GroupAction::Add, &["dave"]), 10).unwrap_err().0, ErrorCode::Forbidden);
        assert_eq!(apply(&mut c, "eve", &op(GroupAction::Info, &[]), 10).unwrap_err().0, ErrorCode::NotMember);
        assert_eq!(
            apply(&mut c, "alice", &op(GroupAction::Add, &["d", "e", "f", "g", "h", "i", "j", "k"]), 10).unwrap_err().0,
            ErrorCode::LimitExceeded
        );
        assert_eq!(
            apply(&mut c, "alice", &op(GroupAction::Demote, &["alice"]), 10).unwrap_err().0,
            ErrorCode::Forbidden
        );
        let removed = apply(&mut c, "alice", &op(GroupAction::Remove, &["carol", "zed"]), 10).unwrap().unwrap();
        assert_eq!(removed, Change { members: vec!["carol".into()], removed: vec!["carol".into()] });
        assert!(!c.is_member("carol"));
        assert_eq!(
            apply(&mut c, "alice", &op(GroupAction::Add, &["bob"]), 10).unwrap(),
            None,
            "no change, nothing stored"
        );
        assert_eq!(apply(&mut c, "alice", &op(GroupAction::Create, &[]), 10).unwrap_err().0, ErrorCode::BadValue);
    }

    #[test]
    fn a_group_keeps_exactly_one_owner() {
        let mut c = Conv::new(Vec::new(), 0, 8);
        apply(&mut c, "ann", &op(GroupAction::Create, &["bob", "cat"]), 10).unwrap();
        let owner = |c: &Conv| c.group.as_ref().map(|g| (g.owner.clone(), g.admins.clone())).unwrap();
        // Leaving with no other admin: the first member by id takes over, as an admin.
        apply(&mut c, "ann", &op(GroupAction::Leave, &[]), 10).unwrap();
        assert_eq!(owner(&c), ("bob".into(), vec!["bob".into()]));
        assert_eq!(apply(&mut c, "cat", &op(GroupAction::Transfer, &["cat"]), 10).unwrap_err().0, ErrorCode::Forbidden);
        apply(&mut c, "bob", &op(GroupAction::Transfer, &["cat"]), 10).unwrap().unwrap();
        assert_eq!(owner(&c), ("cat".into(), vec!["bob".into(), "cat".into()]));
        assert_eq!(apply(&mut c, "bob", &op(GroupAction::Delete, &[]), 10).unwrap_err().0, ErrorCode::Forbidden);
        apply(&mut c, "cat", &op(GroupAction::Delete, &[]), 10).unwrap().unwrap();
        assert_eq!(apply(&mut c, "cat", &op(GroupAction::Rename, &[]), 10).unwrap_err(), deleted());
        assert_eq!(apply(&mut c, "bob", &op(GroupAction::Info, &[]), 10).unwrap(), None);
    }
}
