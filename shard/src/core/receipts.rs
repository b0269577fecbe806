//! Receipts, at the conversation's home: each member's delivered and read cursors, who
//! is told about them, and the per-message member lists.
//!
//! - A device's `delivered{conv, seq}` / `read{conv, seq}` moves its user's cursors
//!   forward only (never back), and never past the highest seq the server has stored
//!   (so never past what it could have sent). Reading implies receiving.
//! - Cursors are durable: a change is written with the shard's next group commit (it
//!   never delays a message's ack) and read back with the conversation.
//! - Who is told, once the cursor is durable: every device of the reader (the one that
//!   sent it too: its acknowledgement), so unread state converges across devices. In a DM the peer gets them too. In a group, per-member
//!   updates would flood a large group: each sender of a recent message gets, once per
//!   presence window, how many of the other members have received and read their
//!   newest message (`receipt_count`), and can ask who (`receipts`, paginated).
//! - Privacy: a user with read receipts off (`settings{read_receipts: false}`) moves
//!   their read cursor as usual (their devices stay in sync) but it is not shown to
//!   anyone (the cursor is stored as private), and they are shown no one's read cursor.
//!   Turning it off applies to a conversation from the user's next `read` in it.

use storage::model::CursorRecord;
use wire::error::ErrorCode;
use wire::frame::{ConvId, ReceiptList, ReceiptsReq, ServerFrame};

use super::convs::Conv;
use super::users::Held;
use super::{Core, MsgRoute, Route};
use crate::ids::{home_of_user, ConnId, ConnRef};

/// Members per `receipt_list` page when the request names none.
const DEFAULT_PAGE: usize = 100;
/// Recent messages per conversation whose senders get `receipt_count`s.
pub const RECENT_SENDERS: usize = 64;

/// A recent message whose sender is told its receipt counts.
#[derive(Debug)]
pub struct Sent {
    /// Its seq.
    pub seq: u64,
    /// Its sender.
    pub from: Box<str>,
    /// The counts last sent for it: `(delivered, read)`.
    pub told: (u32, u32),
}

/// Moves `c`'s cursor of `user` to `seq` (delivered, or read too); `None` when nothing
/// moved.
pub fn advance(c: &mut Conv, user: &str, seq: u64, read: bool, private: bool) -> Option<CursorRecord> {
    let seq = seq.min(c.durable_seq);
    let cur = match c.cursors.get_mut(user) {
        Some(cur) => cur,
        None => c.cursors.entry(Box::from(user)).or_default(),
    };
    let before = *cur;
    cur.delivered = cur.delivered.max(seq);
    if read {
        cur.read = cur.read.max(seq);
        cur.private = private;
    }
    cur.delivered = cur.delivered.max(cur.read);
    (*cur != before).then_some(*cur)
}

/// Of the members other than `sender`, how many have received and (visibly) read `seq`.
pub fn counts(c: &Conv, sender: &str, seq: u64) -> (u32, u32, u32) {
    let (mut members, mut delivered, mut read) = (0, 0, 0);
    for m in c.members.iter().filter(|m| ***m != *sender) {
        members += 1;
        if let Some(cur) = c.cursors.get(m) {
            delivered += u32::from(cur.delivered >= seq);
            read += u32::from(cur.read >= seq && !cur.private);
        }
    }
    (members, delivered, read)
}

impl Core {
    /// At the conversation's home: a device's cursor. It is announced once durable
    /// ([`Core::cursors_committed`]).
    pub(super) fn on_cursor(&mut self, from: ConnRef, user: &str, conv: ConvId, seq: u64, read: bool, private: bool) {
        let Some(c) = self.convs.ready(conv) else { return };
        if !c.exists || !c.is_member(user) {
            let msg = "no such conversation, or you are not a member".to_owned();
            return self.reply_error(from, ErrorCode::NotMember, msg, None);
        }
        if advance(c, user, seq, read, private).is_none() {
            return;
        }
        let first = c.cursors_unsaved.is_empty();
        if !c.cursors_unsaved.iter().any(|u| **u == *user) {
            c.cursors_unsaved.push(Box::from(user));
        }
        if first {
            self.convs.unsaved.push(conv);
        }
    }

    /// Tells who must know that `user`'s cursors in `conv` are now `cur` (durable): the
    /// user's devices, and in a DM the peer (in a group, senders get counts instead).
    fn announce(&mut self, conv: ConvId, user: &str, cur: CursorRecord) {
        let Some(c) = self.convs.ready(conv) else { return };
        let dm_peer = match &c.group {
            None => c.members.iter().find(|m| ***m != *user).map(|m| m.to_string()),
            Some(_) => None,
        };
        let newly_dirty = c.group.is_some() && !c.receipts_dirty;
        c.receipts_dirty |= c.group.is_some();
        if newly_dirty {
            self.convs.receipts.push(conv);
        }
        // Every device of the reader, the one that moved it too (its acknowledgement).
        let own = ServerFrame::Receipt { conv, user: user.to_owned(), delivered: cur.delivered, read: cur.read };
        self.receipt_to(user, own, None);
        if let Some(peer) = dm_peer {
            let read = if cur.private { 0 } else { cur.read };
            let f = ServerFrame::Receipt { conv, user: user.to_owned(), delivered: cur.delivered, read };
            self.receipt_to(&peer, f, None);
        }
    }

    /// Routes a receipt frame to `user`'s home, for their devices (but `except`).
    fn receipt_to(&mut self, user: &str, frame: ServerFrame, except: Option<ConnRef>) {
        let home = home_of_user(user, self.shards);
        let r = MsgRoute::ReceiptDeliver { user: user.to_owned(), frame: Box::new(frame), except };
        self.send_route(home, Route::Msg(r));
    }

    /// At a user's home: a receipt for their devices. Read cursors of others are hidden
    /// from a user with read receipts off, so the user's record must be known first.
    pub(super) fn on_receipt_deliver(&mut self, user: &str, frame: ServerFrame, except: Option<ConnRef>) {
        if let ServerFrame::Receipt { conv, user: of, read, delivered } = &frame {
            if of == user {
                // The user's own durable read cursor: their list's unread count follows.
                self.inbox_read(user, *conv, *read);
            } else {
                // A DM peer's ticks, for the list (and so for a device that was away).
                self.inbox_peer(user, *conv, *delivered, *read);
            }
        }
        let Some(u) = self.users.get_mut(user) else { return };
        if u.conns.is_empty() {
            return;
        }
        // The user's own cursor and hides need no privacy check.
        let own = matches!(&frame, ServerFrame::Receipt { user: of, .. } if of == user)
            || matches!(frame, ServerFrame::Hidden { .. });
        if !own && !u.loaded() {
            if u.hold(Held::Deliver(frame, except)) {
                let key = self.users.key(user);
                if let Some(key) = key {
                    self.load_user(&key);
                }
            }
            return;
        }
        let hide_reads = !own && u.receipts_off();
        let frame = match frame {
            ServerFrame::Receipt { conv, user: of, delivered, .. } if hide_reads => {
                ServerFrame::Receipt { conv, user: of, delivered, read: 0 }
            }
            ServerFrame::ReceiptCount { conv, seq, members, delivered, .. } if hide_reads => {
                ServerFrame::ReceiptCount { conv, seq, members, delivered, read: 0 }
            }
            f => f,
        };
        let conns: Vec<ConnId> = u.conns.clone();
        for id in conns {
            if except.is_none_or(|e| e.shard != self.me || e.conn != id) {
                self.frame(id, frame.clone());
            }
        }
    }

    /// Once a presence window: each sender of a recent message in a group whose cursors
    /// moved gets its newest message's counts, if they changed.
    pub(super) fn publish_receipts(&mut self) {
        for conv in std::mem::take(&mut self.convs.receipts) {
            let Some(c) = self.convs.ready(conv) else { continue };
            c.receipts_dirty = false;
            let mut out = Vec::new();
            // Newest message per sender, newest first.
            let mut seen: Vec<&str> = Vec::new();
            let mut updates = Vec::new();
            for (i, s) in c.recent.iter().enumerate().rev() {
                if seen.contains(&&*s.from) {
                    continue;
                }
                seen.push(&s.from);
                let (members, delivered, read) = counts(c, &s.from, s.seq);
                if (delivered, read) != s.told {
                    updates.push((i, (delivered, read)));
                    let f = ServerFrame::ReceiptCount { conv, seq: s.seq, members, delivered, read };
                    out.push((s.from.to_string(), f));
                }
            }
            for (i, told) in updates {
                c.recent[i].told = told;
            }
            for (sender, f) in out {
                self.receipt_to(&sender, f, None);
            }
        }
    }

    /// At the conversation's home: a page of who has received / read `seq`.
    pub(super) fn receipt_list(&mut self, from: ConnRef, user: &str, req: ReceiptsReq) {
        let Some(c) = self.convs.ready(req.conv) else { return };
        if !c.exists || !c.is_member(user) {
            let msg = "no such conversation, or you are not a member".to_owned();
            return self.reply_error(from, ErrorCode::NotMember, msg, req.req_id);
        }
        let limit = req.limit.map_or(DEFAULT_PAGE, |l| l as usize);
        let start = match &req.after {
            None => 0,
            Some(a) => c.members.partition_point(|m| **m <= **a),
        };
        let page = &c.members[start..(start + limit).min(c.members.len())];
        let mut list = ReceiptList {
            req_id: req.req_id,
            conv: req.conv,
            seq: req.seq,
            delivered: Vec::new(),
            read: Vec::new(),
            next: None,
        };
        for m in page {
            let Some(cur) = c.cursors.get(m) else { continue };
            if cur.delivered >= req.seq {
                list.delivered.push(m.to_string());
            }
            if cur.read >= req.seq && !cur.private {
                list.read.push(m.to_string());
            }
        }
        if start + page.len() < c.members.len() {
            list.next = page.last().map(|m| m.to_string());
        }
        self.reply(from, ServerFrame::ReceiptList(list));
    }

    /// The cursor writes for the next commit (conversations stay loaded until it ends).
    pub(super) fn cursor_writes(&mut self) -> Vec<storage::model::Write> {
        let mut writes = Vec::new();
        for conv in std::mem::take(&mut self.convs.unsaved) {
            let Some(c) = self.convs.ready(conv) else { continue };
            let before = writes.len();
            for user in std::mem::take(&mut c.cursors_unsaved) {
                if let Some(cur) = c.cursors.get(&user).copied() {
                    writes.push(storage::model::Write::Cursor { conv, user: user.to_string(), cursor: cur });
                    c.cursors_writing.push((user, cur));
                }
            }
            if writes.len() > before {
                c.cursors_in_flight += 1;
                self.commit.cursor_convs.push(conv);
            }
        }
        writes
    }

    /// The commit holding cursor writes ended: announce them, or write them again.
    pub(super) fn cursors_committed(&mut self, ok: bool) {
        for conv in std::mem::take(&mut self.commit.cursor_convs) {
            let Some(c) = self.convs.ready(conv) else { continue };
            c.cursors_in_flight = c.cursors_in_flight.saturating_sub(1);
            let written = std::mem::take(&mut c.cursors_writing);
            if ok {
                for (user, cur) in written {
                    self.announce(conv, &user, cur);
                }
                continue;
            }
            // Written again with the next commit (announced then).
            let first = c.cursors_unsaved.is_empty();
            for (user, _) in written {
                if !c.cursors_unsaved.contains(&user) {
                    c.cursors_unsaved.push(user);
                }
            }
            if first && !c.cursors_unsaved.is_empty() {
                self.convs.unsaved.push(conv);
            }
        }
    }
}
