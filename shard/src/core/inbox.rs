//! Each user's conversation list, kept at the user's home.
//!
//! Every message reaches each member's home anyway (the delivery route), so the home
//! records it there, without asking anyone: the list is served from the user's own
//! partition, never by asking every shard. A user's entry for a conversation is stored
//! as separate parts (for a DM its last message; read cursor, own newest seq, joined
//! and left for a group; muted, archived, pinned), each written blind, so no write
//! waits for a read. A group's newest message is recorded once per shard (`GroupLast`),
//! not once per member, and joined into each member's entry when the list is read: a
//! message to a 10,000-member group writes one record per shard, and a member's own
//! parts change only when they send, read, join or leave. Parts wait in [`InboxQueue`]
//! for the shard's next group commit, coalesced per user and conversation (and per
//! group); they never delay a message's ack.
//!
//! Unread: messages after both the read cursor and the user's own newest message
//! (sending in a conversation means having seen it).
//!
//! Paging is by `(last message time, conversation)`, newest first, with an opaque
//! cursor: a page never repeats an entry of an earlier page. An entry that gets a new
//! message while a client pages moves to the top instead of appearing later; every
//! reply carries a `token` (the time of its read: the reply holds every change before
//! it), and `conversations{since: token}` returns every entry changed at or after it, so
//! a client that pages and then asks with the first page's token misses nothing.
//!
//! Bounds: parts waiting for a commit are at most one per (user, conversation, part)
//! with a change in one commit window, and are taken by the next commit; a list read
//! is one of the shard's `max_reads`. `conv_settings` only applies to conversations in
//! the user's list (else `not_member`), so a client cannot grow its list with invented ids.

use std::collections::hash_map::Entry;
use std::rc::Rc;
use std::sync::Arc;

use storage::model::{is_group, ConvSummary, InboxEntry, InboxValue, LastOf, StoredMessage, Write};
use storage::read::{ReadDone, ReadReq};
use storage::StoreError;
use wire::error::ErrorCode;
use wire::frame::{ConvEntry, ConvId, ConvSettings, ConversationList, ConversationsReq, MsgKind, ServerFrame};

use super::{busy, error_frame, storage_failed, Core, Map, ReadFor};
use crate::ids::ConnId;

/// Entries in a page when the request names no limit.
pub const DEFAULT_PAGE: usize = 50;

/// One user's changed parts of one conversation, not yet durable.
#[derive(Debug, Default, Clone)]
pub struct Parts {
    /// When the newest of them changed (ms).
    at: u64,
    /// The newest message: its seq, the message, the conversation as of it.
    last: Option<(u64, Arc<StoredMessage>, Arc<ConvSummary>)>,
    read: Option<u64>,
    own: Option<u64>,
    muted: Option<u64>,
    archived: Option<bool>,
    pinned: Option<bool>,
    joined: Option<u64>,
    left: Option<u64>,
    peer: Option<(u64, u64)>,
}

impl Parts {
    /// `other` (newer) on top of these.
    fn absorb(&mut self, other: Parts) {
        self.at = self.at.max(other.at);
        if let Some(l) = other.last {
            if self.last.as_ref().is_none_or(|x| x.0 <= l.0) {
                self.last = Some(l);
            }
        }
        self.read = self.read.max(other.read);
        self.own = self.own.max(other.own);
        self.muted = other.muted.or(self.muted);
        self.archived = other.archived.or(self.archived);
        self.pinned = other.pinned.or(self.pinned);
        self.joined = self.joined.max(other.joined);
        self.left = self.left.max(other.left);
        self.peer = match (self.peer, other.peer) {
            (Some(a), Some(b)) => Some((a.0.max(b.0), a.1.max(b.1))),
            (a, b) => a.or(b),
        };
    }

    /// Each part as the stored value it becomes.
    /// Each part as the value stored for `user` (a last message still shared with its
    /// delivery, its title resolved for `user`).
    fn values<'a>(&'a self, user: &'a str) -> impl Iterator<Item = InboxValue> + 'a {
        let last = self
            .last
            .as_ref()
            .map(|(seq, msg, summary)| InboxValue::Last(LastOf::shared(*seq, msg.clone(), summary.clone(), user)));
        last.into_iter()
            .chain(self.read.map(InboxValue::Read))
            .chain(self.own.map(InboxValue::Own))
            .chain(self.muted.map(InboxValue::Muted))
            .chain(self.archived.map(InboxValue::Archived))
            .chain(self.pinned.map(InboxValue::Pinned))
            .chain(self.joined.map(InboxValue::Joined))
            .chain(self.left.map(InboxValue::Left))
            .chain(self.peer.map(|(d, r)| InboxValue::Peer(d, r)))
    }

    /// Applies these to `entry` (what a list read sees before they are durable).
    fn apply(&self, user: &str, entry: &mut InboxEntry) {
        for value in self.values(user) {
            entry.apply(self.at, value);
        }
    }
}

/// A group's newest message on this shard: when recorded, its seq, the message, the
/// group as of it.
#[derive(Debug, Clone)]
pub struct Shared {
    at: u64,
    seq: u64,
    msg: Arc<StoredMessage>,
    summary: Arc<ConvSummary>,
}

impl Shared {
    /// The message as lists show it, still shared with the delivery.
    fn last(&self) -> LastOf {
        LastOf::shared(self.seq, self.msg.clone(), self.summary.clone(), "")
    }
}

/// A copy of what was not yet durable when a read of a user's list was issued: their
/// parts, and the groups' shared last messages.
#[derive(Debug, Default)]
pub struct Unsaved {
    parts: Vec<(ConvId, Parts)>,
    groups: Vec<(ConvId, Shared)>,
}

/// The conversation-list parts of a shard's users on their way to storage.
#[derive(Debug)]
pub struct InboxQueue {
    /// Waiting for the next commit. Keys share the user table's name when the user is
    /// loaded, so recording a part allocates nothing for a connected user.
    pending: Map<(Rc<str>, ConvId), Parts>,
    /// In the commit running now (seen by list reads until durable). Emptied, not
    /// dropped, when it ends: the two tables swap and keep their room.
    writing: Map<(Rc<str>, ConvId), Parts>,
    /// Groups' newest messages waiting for the next commit (one per group, however
    /// many members live here).
    groups: Map<ConvId, Shared>,
    /// Those in the commit running now.
    groups_writing: Map<ConvId, Shared>,
    /// `conv_settings` changes to tell the user's devices once durable.
    announce: Vec<(Box<str>, ConvSettings)>,
    /// Those the commit running now holds.
    announcing: Vec<(Box<str>, ConvSettings)>,
}

impl InboxQueue {
    /// An empty queue.
    pub fn new(hasher: super::Hasher) -> InboxQueue {
        InboxQueue {
            pending: Map::with_hasher(hasher.clone()),
            writing: Map::with_hasher(hasher.clone()),
            groups: Map::with_hasher(hasher.clone()),
            groups_writing: Map::with_hasher(hasher),
            announce: Vec::new(),
            announcing: Vec::new(),
        }
    }

    /// Records `parts` of `user`'s (`key`) entry for `conv`.
    fn add(&mut self, key: Rc<str>, conv: ConvId, parts: Parts) {
        match self.pending.entry((key, conv)) {
            Entry::Occupied(mut e) => e.get_mut().absorb(parts),
            Entry::Vacant(e) => {
                e.insert(parts);
            }
        }
    }

    /// Parts waiting or being written (a group's shared last message counts one).
    pub fn len(&self) -> usize {
        self.pending.len() + self.writing.len() + self.groups.len() + self.groups_writing.len()
    }

    /// Nothing waits for a commit.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.groups.is_empty() && self.announce.is_empty()
    }

    /// Records `s` as `conv`'s newest message unless a newer one is recorded.
    fn add_group(&mut self, conv: ConvId, s: Shared) {
        match self.groups.get_mut(&conv) {
            Some(x) if x.seq >= s.seq => x.at = x.at.max(s.at),
            Some(x) => *x = s,
            None => {
                self.groups.insert(conv, s);
            }
        }
    }

    /// `conv`'s shared last message not yet durable, newest of waiting and writing.
    fn group_unsaved(&self, conv: ConvId) -> Option<&Shared> {
        match (self.groups.get(&conv), self.groups_writing.get(&conv)) {
            (Some(a), Some(b)) => Some(if a.seq >= b.seq { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// `user`'s parts not yet durable, oldest first (a walk of what one or two commit
    /// windows recorded: list reads are rare).
    fn unsaved_of<'a>(&'a self, user: &'a str) -> impl Iterator<Item = (ConvId, &'a Parts)> + 'a {
        let mine = move |((u, c), p): (&'a (Rc<str>, ConvId), &'a Parts)| (**u == *user).then_some((*c, p));
        self.writing.iter().filter_map(mine).chain(self.pending.iter().filter_map(mine))
    }
}

/// Whom a group event names (its body's `event` and `members`).
#[derive(serde::Deserialize)]
struct NamedIn {
    event: String,
    #[serde(default)]
    members: Vec<String>,
}

/// A page's cursor: the last entry's `(time, conversation)`, as opaque text.
fn cursor_of(ts: u64, conv: ConvId) -> String {
    format!("{ts:x}.{conv}")
}

fn parse_cursor(s: &str) -> Option<(u64, ConvId)> {
    let (ts, conv) = s.split_once('.')?;
    Some((u64::from_str_radix(ts, 16).ok()?, ConvId::parse_hex(conv)?))
}

/// The list order: newest message first, then by conversation id.
fn order_key(e: &InboxEntry) -> (u64, ConvId) {
    (e.last.as_ref().map_or(0, |l| l.ts), e.conv)
}

fn conv_entry(e: &InboxEntry, hide_reads: bool) -> ConvEntry {
    let mut out = ConvEntry {
        conv: e.conv,
        peer_delivered: e.peer_delivered,
        peer_read: if hide_reads { 0 } else { e.peer_read },
        read: e.read,
        unread: e.unread(),
        muted_until: e.muted_until,
        archived: e.archived,
        pinned: e.pinned,
        ..ConvEntry::default()
    };
    if let Some(l) = &e.last {
        out.group = l.group;
        out.title = l.title.clone();
        out.members = l.members;
        out.last_seq = l.seq;
        out.last_ts = l.ts;
        out.last_from = l.from.clone();
        out.last_kind = MsgKind::from_tag(l.kind).unwrap_or(MsgKind::Data);
        out.preview = l.preview.clone();
    }
    out
}

/// One page of `entries` for `req` (entries in any order).
/// `hide_reads`: the user has read receipts off, so sees no one's reads.
pub fn page(
    mut entries: Vec<InboxEntry>,
    req: &ConversationsReq,
    token: u64,
    hide_reads: bool,
) -> Result<ConversationList, String> {
    let after = match req.cursor.as_deref() {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| "cursor is not a `next` from an earlier reply".to_owned())?),
    };
    if let Some(since) = req.since {
        entries.retain(|e| e.changed >= since);
    }
    if let Some(after) = after {
        entries.retain(|e| order_key(e) < after);
    }
    entries.sort_unstable_by_key(|e| std::cmp::Reverse(order_key(e)));
    let limit = req.limit.map_or(DEFAULT_PAGE, |l| l as usize);
    let next = (entries.len() > limit).then(|| {
        let (ts, conv) = order_key(&entries[limit - 1]);
        cursor_of(ts, conv)
    });
    entries.truncate(limit);
    Ok(ConversationList {
        req_id: req.req_id.clone(),
        items: entries.iter().map(|e| conv_entry(e, hide_reads)).collect(),
        next,
        token,
    })
}

impl Core {
    /// `user`'s name, shared with the user table when loaded (no copy).
    fn user_key(&self, user: &str) -> Rc<str> {
        self.users.key(user).unwrap_or_else(|| Rc::from(user))
    }

    /// At the members' home: `msg` (seq `seq` of `conv`) reached `recipients`. A DM's
    /// entry is per user; a group's newest message is recorded once for the shard, and a
    /// member's own entry only changes when they sent it or a group event names them
    /// (joined, or left: then their entry keeps that event as its last message).
    pub(super) fn inbox_deliver(
        &mut self,
        conv: ConvId,
        seq: u64,
        msg: &Arc<StoredMessage>,
        summary: &Arc<ConvSummary>,
        recipients: &[Box<str>],
    ) {
        let at = self.now;
        let last = Some((seq, msg.clone(), summary.clone()));
        if !summary.group {
            for user in recipients {
                let own = (msg.from == **user).then_some(seq);
                let key = self.user_key(user);
                self.lists.add(key, conv, Parts { at, last: last.clone(), own, ..Parts::default() });
            }
            return;
        }
        self.lists.add_group(conv, Shared { at, seq, msg: msg.clone(), summary: summary.clone() });
        let named =
            (msg.kind == MsgKind::System.tag()).then(|| serde_json::from_slice::<NamedIn>(&msg.body).ok()).flatten();
        for user in recipients {
            let mut parts = Parts { at, ..Parts::default() };
            if msg.from == **user {
                parts.own = Some(seq);
            }
            if let Some(e) = named.as_ref().filter(|e| e.members.iter().any(|m| *m == **user)) {
                match e.event.as_str() {
                    "create" | "add" => parts.joined = Some(seq),
                    "remove" | "leave" => {
                        parts.left = Some(seq);
                        parts.last = last.clone();
                    }
                    _ => {}
                }
            }
            if parts.own.is_some() || parts.joined.is_some() || parts.left.is_some() {
                let key = self.user_key(user);
                self.lists.add(key, conv, parts);
            }
        }
    }

    /// At the user's home: a DM peer's cursors in `conv`, as the peer shows them.
    pub(super) fn inbox_peer(&mut self, user: &str, conv: ConvId, delivered: u64, read: u64) {
        let key = self.user_key(user);
        self.lists.add(key, conv, Parts { at: self.now, peer: Some((delivered, read)), ..Parts::default() });
    }

    /// At the user's home: their read cursor in `conv` is durable at `read`.
    pub(super) fn inbox_read(&mut self, user: &str, conv: ConvId, read: u64) {
        if read > 0 {
            let key = self.user_key(user);
            self.lists.add(key, conv, Parts { at: self.now, read: Some(read), ..Parts::default() });
        }
    }

    /// A `conversations` request from connection `id` (on the user's home).
    pub(super) fn list_conversations(&mut self, id: ConnId, user: &str, req: ConversationsReq) {
        let ref_id = req.req_id.clone();
        let why = ReadFor::List { conn: id, req, token: self.now, unsaved: Box::new(self.unsaved_snapshot(user)) };
        if !self.read(ReadReq::Inbox { user: user.to_owned() }, why) {
            let (code, msg) = busy("storage reads");
            self.frame(id, error_frame(code, msg, ref_id, None));
        }
    }

    /// A `conv_settings` from connection `id`: applied once the conversation is known
    /// to be in the user's list.
    pub(super) fn change_conv_settings(&mut self, id: ConnId, user: &str, settings: ConvSettings) {
        let why = ReadFor::ConvSettings { conn: id, settings, unsaved: Box::new(self.unsaved_snapshot(user)) };
        if !self.read(ReadReq::Inbox { user: user.to_owned() }, why) {
            let (code, msg) = busy("storage reads");
            self.frame(id, error_frame(code, msg, None, None));
        }
    }

    /// `user`'s parts not yet durable now. A store read issued now sees every commit
    /// acknowledged before it, but maybe not the one running or the next: the read's
    /// answer is merged with this copy, so it reflects everything up to now.
    fn unsaved_snapshot(&self, user: &str) -> Unsaved {
        let groups = self.lists.groups.iter().chain(self.lists.groups_writing.iter());
        Unsaved {
            parts: self.lists.unsaved_of(user).map(|(c, p)| (c, p.clone())).collect(),
            groups: groups.map(|(c, s)| (*c, s.clone())).collect(),
        }
    }

    /// The user's entries: what storage returned, then `snapshot` (parts not durable
    /// when the read was issued), then the parts not durable now.
    fn merged_inbox(&self, user: &str, mut entries: Vec<InboxEntry>, snapshot: &Unsaved) -> Vec<InboxEntry> {
        let snap = snapshot.parts.iter().map(|(c, p)| (*c, p));
        for (conv, parts) in snap.chain(self.lists.unsaved_of(user)) {
            let i = match entries.iter().position(|e| e.conv == conv) {
                Some(i) => i,
                None => {
                    entries.push(InboxEntry { conv, ..InboxEntry::default() });
                    entries.len() - 1
                }
            };
            parts.apply(user, &mut entries[i]);
        }
        for e in entries.iter_mut().filter(|e| is_group(e.conv)) {
            let conv = e.conv;
            let snap = snapshot.groups.iter().filter(|(c, _)| *c == conv).map(|(_, s)| s);
            for s in snap.chain(self.lists.group_unsaved(conv)) {
                e.with_group_last(s.at, &s.last().to_owned());
            }
        }
        entries
    }

    pub(super) fn on_list_read(
        &mut self,
        id: ConnId,
        req: ConversationsReq,
        token: u64,
        unsaved: &Unsaved,
        r: Result<ReadDone, StoreError>,
    ) {
        let Some(user) = self.conns.get(id).map(|c| c.user.clone()) else { return };
        // The user's record is loaded before a list is asked for (client frame rules).
        let hide_reads = self.users.get(&user).is_none_or(|u| !u.loaded() || u.receipts_off());
        let frame = match r {
            Ok(ReadDone::Inbox(entries)) => {
                match page(self.merged_inbox(&user, entries, unsaved), &req, token, hide_reads) {
                    Ok(list) => ServerFrame::ConversationList(list),
                    Err(msg) => error_frame(ErrorCode::BadValue, msg, req.req_id, None),
                }
            }
            Ok(_) => return,
            Err(e) => {
                let (code, msg) = storage_failed(&e);
                error_frame(code, msg, req.req_id, None)
            }
        };
        self.frame(id, frame);
    }

    pub(super) fn on_settings_read(
        &mut self,
        id: ConnId,
        s: ConvSettings,
        unsaved: &Unsaved,
        r: Result<ReadDone, StoreError>,
    ) {
        let Some(user) = self.conns.get(id).map(|c| c.user.clone()) else { return };
        let entries = match r {
            Ok(ReadDone::Inbox(entries)) => entries,
            Ok(_) => return,
            Err(e) => {
                let (code, msg) = storage_failed(&e);
                return self.frame(id, error_frame(code, msg, None, None));
            }
        };
        let known = entries.iter().any(|e| e.conv == s.conv)
            || unsaved.parts.iter().any(|(c, _)| *c == s.conv)
            || self.lists.unsaved_of(&user).any(|(c, _)| c == s.conv);
        if !known {
            let msg = "that conversation is not in your list".to_owned();
            return self.frame(id, error_frame(ErrorCode::NotMember, msg, None, None));
        }
        let parts =
            Parts { at: self.now, muted: s.muted_until, archived: s.archived, pinned: s.pinned, ..Parts::default() };
        self.lists.add(user.clone(), s.conv, parts);
        self.lists.announce.push((Box::from(&*user), s));
    }

    /// Adds the parts for the next commit to `writes` (they stay visible to list reads
    /// until durable).
    pub(super) fn inbox_writes(&mut self, writes: &mut Vec<Write>) {
        let l = &mut self.lists;
        // The tables of the last commit are empty: they take this one's, and keep room.
        std::mem::swap(&mut l.pending, &mut l.writing);
        std::mem::swap(&mut l.groups, &mut l.groups_writing);
        writes.reserve(l.writing.len() * 2 + l.groups_writing.len());
        for ((user, conv), parts) in &l.writing {
            for value in parts.values(user) {
                writes.push(Write::Inbox { user: user.to_string(), conv: *conv, at: parts.at, value });
            }
        }
        for (conv, s) in &l.groups_writing {
            writes.push(Write::GroupLast { conv: *conv, at: s.at, last: s.last() });
        }
        l.announcing = std::mem::take(&mut l.announce);
    }

    /// The commit holding the parts ended: tell the devices, or write them again.
    pub(super) fn inbox_committed(&mut self, ok: bool) {
        let announcing = std::mem::take(&mut self.lists.announcing);
        if ok {
            self.lists.writing.clear();
            self.lists.groups_writing.clear();
            for (user, s) in announcing {
                for conn in self.users.conns_of(&user).to_vec() {
                    self.frame(conn, ServerFrame::ConvSettings(s.clone()));
                }
            }
            return;
        }
        // Written again with the next commit, under anything newer.
        let l = &mut self.lists;
        let groups: Vec<(ConvId, Shared)> = l.groups_writing.drain().collect();
        for (conv, s) in groups {
            l.add_group(conv, s);
        }
        let written: Vec<((Rc<str>, ConvId), Parts)> = l.writing.drain().collect();
        for (key, mut parts) in written {
            if let Some(newer) = l.pending.get_mut(&key) {
                parts.absorb(std::mem::take(newer));
                *newer = parts;
            } else {
                l.pending.insert(key, parts);
            }
        }
        self.lists.announce.splice(0..0, announcing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::model::InboxLast;

    fn entry(conv: u128, ts: u64, seq: u64, changed: u64) -> InboxEntry {
        InboxEntry {
            conv: ConvId(conv),
            last: Some(InboxLast { seq, ts, ..InboxLast::default() }),
            changed,
            ..InboxEntry::default()
        }
    }

    fn req(cursor: Option<String>, limit: u32, since: Option<u64>) -> ConversationsReq {
        ConversationsReq { req_id: None, cursor, limit: Some(limit), since }
    }

    #[test]
    fn pages_are_newest_first_and_never_repeat() {
        let all: Vec<InboxEntry> = (0..7).map(|i| entry(i, 100 + (i as u64 % 3), 1, 0)).collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = page(all.clone(), &req(cursor, 3, None), 0, false).unwrap();
            seen.extend(p.items.iter().map(|e| (e.last_ts, e.conv)));
            match p.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let mut want: Vec<(u64, ConvId)> = all.iter().map(order_key).collect();
        want.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, want);
    }

    #[test]
    fn since_keeps_what_changed_and_a_bad_cursor_is_refused() {
        let all = vec![entry(1, 10, 1, 5), entry(2, 20, 1, 9)];
        let p = page(all.clone(), &req(None, 10, Some(9)), 0, false).unwrap();
        assert_eq!(p.items.iter().map(|e| e.conv).collect::<Vec<_>>(), vec![ConvId(2)]);
        assert!(page(all, &req(Some("zz".into()), 10, None), 0, false).is_err());
    }

    #[test]
    fn newer_parts_win_when_merged() {
        let stored = StoredMessage {
            ext: None,
            message_id: 1,
            from: "a".into(),
            from_device: "d".into(),
            client_msg_id: "c".into(),
            ts: 1,
            kind: 0,
            body: Vec::new(),
        };
        let msg = |seq| (seq, Arc::new(stored.clone()), Arc::new(ConvSummary::default()));
        let mut a = Parts { at: 1, last: Some(msg(5)), read: Some(3), pinned: Some(true), ..Parts::default() };
        a.absorb(Parts { at: 2, last: Some(msg(4)), read: Some(2), pinned: Some(false), ..Parts::default() });
        assert_eq!((a.at, a.last.as_ref().map(|l| l.0), a.read, a.pinned), (2, Some(5), Some(3), Some(false)));
    }
}
