//! Each user's conversation list, kept at the user's home.
//!
//! Every message reaches each member's home anyway (the delivery route), so the home
//! records the conversation's newest message for each recipient there, without asking
//! anyone: the list is served from the user's own partition, never by asking every
//! shard. A user's entry for a conversation is stored as separate parts (last message,
//! read cursor, own newest seq, muted, archived, pinned), each written blind, so no
//! write waits for a read. Parts wait in [`InboxQueue`] for the shard's next group
//! commit, coalesced per user and conversation (a busy group writes one `last` per
//! member per commit, not one per message); they never delay a message's ack.
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

use std::sync::Arc;

use storage::model::{ConvSummary, InboxEntry, InboxPart, StoredMessage, Write};
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
    }

    /// Each part as the stored value it becomes.
    fn values(&self) -> impl Iterator<Item = InboxPart> + '_ {
        let last = self.last.as_ref().map(|(seq, msg, summary)| InboxPart::Last {
            seq: *seq,
            msg: msg.clone(),
            summary: summary.clone(),
        });
        last.into_iter()
            .chain(self.read.map(InboxPart::Read))
            .chain(self.own.map(InboxPart::Own))
            .chain(self.muted.map(InboxPart::Muted))
            .chain(self.archived.map(InboxPart::Archived))
            .chain(self.pinned.map(InboxPart::Pinned))
    }

    /// Applies these to `entry` (what a list read sees before they are durable).
    fn apply(&self, user: &str, entry: &mut InboxEntry) {
        for part in self.values() {
            entry.apply(self.at, part.value(user));
        }
    }
}

/// A user's parts waiting for a commit, per conversation.
type UserParts = Vec<(ConvId, Parts)>;

/// A copy of a user's parts not yet durable, kept with a read of their list.
pub type Unsaved = Vec<(ConvId, Parts)>;

/// The conversation-list parts of a shard's users on their way to storage.
#[derive(Debug)]
pub struct InboxQueue {
    /// Waiting for the next commit.
    pending: Map<Box<str>, UserParts>,
    /// In the commit running now (seen by list reads until durable).
    writing: Map<Box<str>, UserParts>,
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
            writing: Map::with_hasher(hasher),
            announce: Vec::new(),
            announcing: Vec::new(),
        }
    }

    /// Records `parts` of `user`'s entry for `conv`.
    fn add(&mut self, user: &str, conv: ConvId, parts: Parts) {
        let list = match self.pending.get_mut(user) {
            Some(l) => l,
            None => self.pending.entry(Box::from(user)).or_default(),
        };
        match list.iter_mut().find(|(c, _)| *c == conv) {
            Some((_, p)) => p.absorb(parts),
            None => list.push((conv, parts)),
        }
    }

    /// Parts waiting or being written.
    pub fn len(&self) -> usize {
        self.pending.values().chain(self.writing.values()).map(Vec::len).sum()
    }

    /// Nothing waits for a commit.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.announce.is_empty()
    }

    /// `user`'s parts not yet durable, oldest first.
    fn unsaved_of<'a>(&'a self, user: &str) -> impl Iterator<Item = &'a (ConvId, Parts)> + 'a {
        let writing = self.writing.get(user).into_iter().flatten();
        writing.chain(self.pending.get(user).into_iter().flatten())
    }
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

fn conv_entry(e: &InboxEntry) -> ConvEntry {
    let mut out = ConvEntry {
        conv: e.conv,
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
pub fn page(mut entries: Vec<InboxEntry>, req: &ConversationsReq, token: u64) -> Result<ConversationList, String> {
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
    Ok(ConversationList { req_id: req.req_id.clone(), items: entries.iter().map(conv_entry).collect(), next, token })
}

impl Core {
    /// At a member's home: `msg` (seq `seq` of `conv`) reached `user`.
    pub(super) fn inbox_message(
        &mut self,
        user: &str,
        conv: ConvId,
        seq: u64,
        msg: &Arc<StoredMessage>,
        summary: &Arc<ConvSummary>,
    ) {
        let own = (msg.from == user).then_some(seq);
        let parts = Parts { at: self.now, last: Some((seq, msg.clone(), summary.clone())), own, ..Parts::default() };
        self.lists.add(user, conv, parts);
    }

    /// At the user's home: their read cursor in `conv` is durable at `read`.
    pub(super) fn inbox_read(&mut self, user: &str, conv: ConvId, read: u64) {
        if read > 0 {
            self.lists.add(user, conv, Parts { at: self.now, read: Some(read), ..Parts::default() });
        }
    }

    /// A `conversations` request from connection `id` (on the user's home).
    pub(super) fn list_conversations(&mut self, id: ConnId, user: &str, req: ConversationsReq) {
        let ref_id = req.req_id.clone();
        let why = ReadFor::List { conn: id, req, token: self.now, unsaved: self.unsaved_snapshot(user) };
        if !self.read(ReadReq::Inbox { user: user.to_owned() }, why) {
            let (code, msg) = busy("storage reads");
            self.frame(id, error_frame(code, msg, ref_id, None));
        }
    }

    /// A `conv_settings` from connection `id`: applied once the conversation is known
    /// to be in the user's list.
    pub(super) fn change_conv_settings(&mut self, id: ConnId, user: &str, settings: ConvSettings) {
        let why = ReadFor::ConvSettings { conn: id, settings, unsaved: self.unsaved_snapshot(user) };
        if !self.read(ReadReq::Inbox { user: user.to_owned() }, why) {
            let (code, msg) = busy("storage reads");
            self.frame(id, error_frame(code, msg, None, None));
        }
    }

    /// `user`'s parts not yet durable now. A store read issued now sees every commit
    /// acknowledged before it, but maybe not the one running or the next: the read's
    /// answer is merged with this copy, so it reflects everything up to now.
    fn unsaved_snapshot(&self, user: &str) -> Unsaved {
        self.lists.unsaved_of(user).cloned().collect()
    }

    /// The user's entries: what storage returned, then `snapshot` (parts not durable
    /// when the read was issued), then the parts not durable now.
    fn merged_inbox(&self, user: &str, mut entries: Vec<InboxEntry>, snapshot: &Unsaved) -> Vec<InboxEntry> {
        for (conv, parts) in snapshot.iter().chain(self.lists.unsaved_of(user)) {
            let i = match entries.iter().position(|e| e.conv == *conv) {
                Some(i) => i,
                None => {
                    entries.push(InboxEntry { conv: *conv, ..InboxEntry::default() });
                    entries.len() - 1
                }
            };
            parts.apply(user, &mut entries[i]);
        }
        entries
    }

    pub(super) fn on_list_read(
        &mut self,
        id: ConnId,
        req: ConversationsReq,
        token: u64,
        unsaved: Unsaved,
        r: Result<ReadDone, StoreError>,
    ) {
        let Some(user) = self.conns.get(id).map(|c| c.user.clone()) else { return };
        let frame = match r {
            Ok(ReadDone::Inbox(entries)) => match page(self.merged_inbox(&user, entries, &unsaved), &req, token) {
                Ok(list) => ServerFrame::ConversationList(list),
                Err(msg) => error_frame(ErrorCode::BadValue, msg, req.req_id, None),
            },
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
        unsaved: Unsaved,
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
            || unsaved.iter().chain(self.lists.unsaved_of(&user)).any(|(c, _)| *c == s.conv);
        if !known {
            let msg = "that conversation is not in your list".to_owned();
            return self.frame(id, error_frame(ErrorCode::NotMember, msg, None, None));
        }
        let parts =
            Parts { at: self.now, muted: s.muted_until, archived: s.archived, pinned: s.pinned, ..Parts::default() };
        self.lists.add(&user, s.conv, parts);
        self.lists.announce.push((Box::from(&*user), s));
    }

    /// The parts for the next commit (they stay visible to list reads until durable).
    pub(super) fn inbox_writes(&mut self) -> Vec<Write> {
        let mut writes = Vec::new();
        let pending = std::mem::replace(&mut self.lists.pending, Map::with_hasher(self.lists.writing.hasher().clone()));
        for (user, list) in &pending {
            for (conv, parts) in list {
                for part in parts.values() {
                    let value = part.value(user);
                    writes.push(Write::Inbox { user: user.to_string(), conv: *conv, at: parts.at, value });
                }
            }
        }
        self.lists.writing = pending;
        self.lists.announcing = std::mem::take(&mut self.lists.announce);
        writes
    }

    /// The commit holding the parts ended: tell the devices, or write them again.
    pub(super) fn inbox_committed(&mut self, ok: bool) {
        let hasher = self.lists.pending.hasher().clone();
        let written = std::mem::replace(&mut self.lists.writing, Map::with_hasher(hasher));
        let announcing = std::mem::take(&mut self.lists.announcing);
        if ok {
            for (user, s) in announcing {
                for conn in self.users.conns_of(&user).to_vec() {
                    self.frame(conn, ServerFrame::ConvSettings(s.clone()));
                }
            }
            return;
        }
        // Written again with the next commit, under anything newer.
        for (user, list) in written {
            for (conv, mut parts) in list {
                if let Some(newer) = self.lists.pending.get_mut(&*user).and_then(|l| l.iter_mut().find(|x| x.0 == conv))
                {
                    parts.absorb(std::mem::take(&mut newer.1));
                    newer.1 = parts;
                } else {
                    self.lists.add(&user, conv, parts);
                }
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
            let p = page(all.clone(), &req(cursor, 3, None), 0).unwrap();
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
        let p = page(all.clone(), &req(None, 10, Some(9)), 0).unwrap();
        assert_eq!(p.items.iter().map(|e| e.conv).collect::<Vec<_>>(), vec![ConvId(2)]);
        assert!(page(all, &req(Some("zz".into()), 10, None), 0).is_err());
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
