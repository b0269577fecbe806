//! The life of a message at its conversation's home, and fan-out on every shard.
//!
//! 1. A `send` arrives as [`SendReq`] at `home(conv)`. The conversation is loaded on
//!    first use (its metadata, newest seq and dedupe index; requests wait meanwhile,
//!    `max_waiters` of them); an id known not to exist is answered from the negative
//!    cache without a read.
//! 2. Membership is checked here, at the owner; a DM is created by its first message.
//! 3. A resend of a remembered `(sender, client_msg_id)` gets the original ack (only
//!    once the original is durable); a new message gets the next dense `seq` and a
//!    message id, and joins the commit queue ([`super::commit`]).
//! 4. One commit at a time: the gateway takes the batch ([`Core::take_commit`]) and
//!    reports ([`Core::commit_done`]). Only then: ack the sender, then one `Deliver` per
//!    destination shard carrying the recipients homed there.
//! 5. If the commit fails, nothing in it is acked; its conversations are dropped from
//!    memory (reloaded from storage on next use, so seqs stay dense) and every sender
//!    gets a retryable `internal` error, including those queued behind it.

use std::sync::Arc;

use storage::model::{dedupe_key, ConvKind, ConvMeta, MemberRow, StoredMessage, Write};
use storage::read::{ReadDone, ReadReq};
use storage::{Slice, StoreError};
use wire::error::ErrorCode;
use wire::frame::{Ack, ConvId, History, Message, MsgExtra, MsgKind, Page, ServerFrame};

use super::commit::{Pending, Side};
use super::convs::{by_home_shard, Conv, Slot};
use super::dedupe::Accepted;
use super::receipts::{Sent, RECENT_SENDERS};
use super::{busy, storage_failed, ConvReq, Core, Effect, MsgRoute, ReadFor, Route, SendReq};
use crate::ids::{dm_conv, home_of_user, ConnId, ConnRef, ShardId};

fn not_member() -> (ErrorCode, String) {
    (ErrorCode::NotMember, "no such conversation, or you are not a member".into())
}

fn message(conv: ConvId, seq: u64, s: StoredMessage) -> Message {
    Message {
        conv,
        seq,
        message_id: s.message_id,
        from: s.from,
        from_device: s.from_device,
        ts: s.ts,
        kind: MsgKind::from_tag(s.kind).unwrap_or(MsgKind::Data),
        body: s.body,
        client_msg_id: s.client_msg_id,
        extra: s.ext,
    }
}

fn page(conv: ConvId, req_id: Option<String>, slice: Slice) -> Page {
    Page {
        req_id,
        conv,
        messages: slice.messages.into_iter().map(|(seq, m)| message(conv, seq, m)).collect(),
        has_more: slice.has_more,
    }
}

impl ConvReq {
    /// Who asked, and the id their error carries.
    fn asker(&self) -> (ConnRef, Option<String>) {
        match self {
            ConvReq::Send(r) => (r.from, Some(r.send.client_msg_id.clone())),
            ConvReq::Forward(r) => (r.from, Some(r.send.client_msg_id.clone())),
            ConvReq::Group(r) => (r.from, r.op.req_id.clone()),
            ConvReq::History { from, req, .. } => (*from, req.req_id.clone()),
            ConvReq::Typing { from, .. } | ConvReq::Cursor { from, .. } | ConvReq::Hide { from, .. } => (*from, None),
            ConvReq::Receipts { from, req, .. } => (*from, req.req_id.clone()),
        }
    }

    /// Can this request bring conversation `conv` into being?
    fn creates(&self, conv: ConvId) -> bool {
        match self {
            ConvReq::Send(r) => r.dm_peer().is_some_and(|p| dm_conv(&r.user, p) == conv),
            ConvReq::Group(r) => r.op.action == wire::frame::GroupAction::Create,
            _ => false,
        }
    }
}

impl Core {
    pub(super) fn on_msg_route(&mut self, r: MsgRoute) {
        match r {
            MsgRoute::AtConv(req) => self.at_conv(req.conv(), req),
            MsgRoute::Sync { from, user, points } => {
                let req = ReadReq::Sync { user, points, per_conv: self.cfg.sync_per_conv as usize };
                if !self.read(req, ReadFor::Sync { from }) {
                    let (code, msg) = busy("storage reads");
                    self.reply_error(from, code, msg, None);
                    self.send_route(from.shard, Route::Conn(super::ConnRoute::SyncDone { to: from, convs: 0 }));
                }
            }
            MsgRoute::ReceiptDeliver { user, frame, except } => self.on_receipt_deliver(&user, *frame, except),
            MsgRoute::Deliver { conv, seq, msg, summary, recipients, except } => {
                self.inbox_deliver(conv, seq, &msg, &summary, &recipients);
                self.deliver(conv, seq, msg, &recipients, except)
            }
            MsgRoute::TypingDeliver { conv, from, typing, recipients } => {
                let frame = ServerFrame::Typing { conv, from, typing };
                for r in &recipients {
                    for id in self.users.conns_of(r).to_vec() {
                        self.frame(id, frame.clone());
                    }
                }
            }
        }
    }

    fn refuse(&mut self, w: &ConvReq, (code, msg): (ErrorCode, String)) {
        let (to, ref_id) = w.asker();
        self.reply_error(to, code, msg, ref_id);
    }

    /// Handles `w` once `conv` is in memory (loading it first if needed).
    fn at_conv(&mut self, conv: ConvId, w: ConvReq) {
        let max = self.cfg.max_waiters;
        match self.convs.slot_mut(conv) {
            Some(Slot::Ready(_)) => return self.handle(conv, w),
            Some(Slot::Loading(queue)) if queue.len() < max => return queue.push(w),
            Some(Slot::Loading(_)) => return self.refuse(&w, busy("conversation load queue")),
            None => {}
        }
        if self.convs.known_missing(conv) && !w.creates(conv) {
            return self.refuse(&w, not_member());
        }
        let dedupe = self.cfg.dedupe_window;
        if self.read(ReadReq::Conv { conv, dedupe }, ReadFor::Conv(conv)) {
            self.convs.start_loading(conv, vec![w]);
        } else {
            self.refuse(&w, busy("storage reads"));
        }
    }

    pub(super) fn on_conv_loaded(&mut self, conv: ConvId, r: Result<ReadDone, StoreError>) {
        let Some(queue) = self.convs.take_loading(conv) else { return };
        let (meta, tail) = match r {
            Ok(ReadDone::Conv { meta, tail, cursors, rows }) => (meta, (tail, cursors, rows)),
            Ok(_) => (None, Default::default()),
            Err(e) => {
                let err = storage_failed(&e);
                for w in &queue {
                    self.refuse(w, err.clone());
                }
                return;
            }
        };
        if meta.is_none() && !queue.iter().any(|w| w.creates(conv)) {
            self.convs.remember_missing(conv);
            for w in &queue {
                self.refuse(w, not_member());
            }
            return;
        }
        let (tail, cursors, rows) = tail;
        let mut c = Conv::new(Vec::new(), tail.last_seq, self.cfg.dedupe_window);
        c.cursors = cursors.into_iter().map(|(u, r)| (Box::from(u), r)).collect();
        if let Some(m) = meta.map(|m| *m) {
            c.exists = true;
            c.legacy_members = matches!(m.kind, ConvKind::Group(_)) && !m.members.is_empty();
            let mut members: Vec<Box<str>> = m.members.into_iter().map(Box::from).collect();
            for (user, row) in rows.into_iter().filter(|(_, r)| r.left == 0) {
                if row.joined > 0 {
                    c.joined.push((Box::from(user.as_str()), row.joined));
                }
                members.push(Box::from(user));
            }
            members.sort();
            members.dedup();
            c.members = members;
            c.created = m.created;
            c.group = match m.kind {
                ConvKind::Direct => None,
                ConvKind::Group(g) => Some(g),
            };
        }
        for (seq, e) in tail.recent {
            c.dedupe.insert(e.key, Accepted { seq, message_id: e.message_id, ts: e.ts });
        }
        self.convs.insert_ready(conv, c);
        for w in queue {
            self.handle(conv, w);
        }
        // A creation that was refused leaves nothing behind.
        if self.convs.ready(conv).is_some_and(|c| !c.exists && c.in_flight == 0) {
            self.convs.remove(conv);
            self.convs.remember_missing(conv);
        }
    }

    fn handle(&mut self, conv: ConvId, w: ConvReq) {
        match w {
            ConvReq::Send(req) => self.accept_send(req),
            ConvReq::Forward(req) => self.forward_from(*req),
            ConvReq::Group(req) => self.accept_group(*req),
            ConvReq::History { from, user, req } => {
                let (member, group, joined) = match self.convs.ready(conv).filter(|c| c.exists) {
                    Some(c) => (c.is_member(&user), c.group.is_some(), c.joined_at(&user)),
                    None => (false, false, 0),
                };
                if member {
                    self.history_page(from, conv, user, req, MemberRow { joined, left: 0 });
                } else if group {
                    // A former member reads what they could while a member: their row says.
                    let read = ReadReq::Member { conv, user: user.clone() };
                    let ref_id = req.req_id.clone();
                    if !self.read(read, ReadFor::FormerHistory { from, conv, user, req }) {
                        let (code, msg) = busy("storage reads");
                        self.reply_error(from, code, msg, ref_id);
                    }
                } else {
                    let (code, msg) = not_member();
                    self.reply_error(from, code, msg, req.req_id);
                }
            }
            ConvReq::Typing { from, user, typing, .. } => self.on_typing(from, &user, conv, typing),
            ConvReq::Cursor { from, user, seq, read, private, .. } => {
                self.on_cursor(from, &user, conv, seq, read, private)
            }
            ConvReq::Receipts { from, user, req } => self.receipt_list(from, &user, req),
            ConvReq::Hide { from, user, conv, seqs } => self.hide(from, user, conv, seqs),
        }
    }

    /// Reads a history page for `user`, within what their member `row` may see.
    fn history_page(&mut self, from: ConnRef, conv: ConvId, user: String, req: History, row: MemberRow) {
        let limit = req.limit.unwrap_or(self.cfg.history_default).clamp(1, self.cfg.history_max) as usize;
        let (after, before) = row.clamp(0, req.before_seq.unwrap_or(u64::MAX));
        let read = ReadReq::Page { conv, after, before, limit, viewer: user };
        if !self.read(read, ReadFor::History { from, conv, req_id: req.req_id.clone() }) {
            let (code, msg) = busy("storage reads");
            self.reply_error(from, code, msg, req.req_id);
        }
    }

    /// A former group member's history request, once their row is read.
    pub(super) fn on_former_history(
        &mut self,
        from: ConnRef,
        conv: ConvId,
        user: String,
        req: History,
        r: Result<ReadDone, StoreError>,
    ) {
        match r {
            Ok(ReadDone::Member(Some(row))) if row.left > 0 => self.history_page(from, conv, user, req, row),
            Ok(_) => {
                let (code, msg) = not_member();
                self.reply_error(from, code, msg, req.req_id);
            }
            Err(e) => {
                let (code, msg) = storage_failed(&e);
                self.reply_error(from, code, msg, req.req_id);
            }
        }
    }

    pub(super) fn accept_send(&mut self, mut req: SendReq) {
        let now = self.now;
        if self.commit.queued_len() >= self.cfg.max_commit_queue {
            let (code, msg) = busy("commit queue");
            return self.reply_error(req.from, code, msg, Some(req.send.client_msg_id));
        }
        let Some(c) = self.convs.ready(req.conv) else { return };
        let mut create = None;
        if !c.exists {
            // Only a DM can come into being by a send, and only between its two users.
            let is_dm = req.dm_peer().is_some_and(|p| dm_conv(&req.user, p) == req.conv);
            if let (true, Some(peer)) = (is_dm, req.dm_peer()) {
                let mut members = vec![req.user.to_string(), peer.to_owned()];
                members.sort();
                members.dedup();
                c.members = members.iter().map(|m| Box::from(m.as_str())).collect();
                c.members_changed();
                c.exists = true;
                c.created = now;
                create = Some(ConvMeta { kind: ConvKind::Direct, members, created: now });
            }
        }
        if !c.exists || !c.is_member(&req.user) {
            let (code, msg) = not_member();
            return self.reply_error(req.from, code, msg, Some(req.send.client_msg_id));
        }
        let key = dedupe_key(&req.user, &req.send.client_msg_id);
        if c.group.as_ref().is_some_and(|g| g.deleted) && c.dedupe.get(key).is_none() {
            let (code, msg) = super::groups::deleted();
            return self.reply_error(req.from, code, msg, Some(req.send.client_msg_id));
        }
        if let Some(a) = c.dedupe.get(key) {
            let ack = Ack {
                client_msg_id: req.send.client_msg_id,
                conv: req.conv,
                seq: a.seq,
                message_id: a.message_id,
                ts: a.ts,
                duplicate: true,
            };
            if a.seq <= c.durable_seq {
                self.reply(req.from, ServerFrame::Ack(ack));
            } else {
                self.commit.deferred.push((req.from, ack));
            }
            return;
        }
        if let Some(r) = req.send.reply_to.filter(|r| *r > c.last_seq) {
            let msg = format!("reply_to {r}: this conversation has no such message");
            return self.reply_error(req.from, ErrorCode::BadValue, msg, Some(req.send.client_msg_id));
        }
        if req.send.kind == MsgKind::Media {
            if let Err(msg) = self.media_allowed(&req.send.body) {
                return self.reply_error(req.from, ErrorCode::LimitExceeded, msg, Some(req.send.client_msg_id));
            }
        }
        if req.send.kind.is_event() {
            return self.queue_event(req);
        }
        let ext = match (req.send.reply_to, req.forwarded.take()) {
            (None, None) => None,
            (reply_to, forwarded) => {
                Some(Box::new(MsgExtra { reply_to, forwarded: forwarded.map(|f| *f), ..MsgExtra::default() }))
            }
        };
        self.store_message(req, key, ext, create, None);
    }

    /// Gives an accepted send its seq and queues it for the next commit (with `create`:
    /// the new DM's metadata; with `side`: an event's other write).
    pub(super) fn store_message(
        &mut self,
        req: SendReq,
        key: u128,
        ext: Option<Box<MsgExtra>>,
        create: Option<ConvMeta>,
        side: Option<Side>,
    ) {
        let now = self.now;
        let Some(c) = self.convs.ready(req.conv) else { return };
        // Sending a message ends the sender's typing indicator.
        let was_typing = c.typists.iter().position(|t| *t.0 == *req.user);
        if let Some(i) = was_typing {
            c.typists.swap_remove(i);
        }
        let message_id = self.ids.next(now);
        let Some(c) = self.convs.ready(req.conv) else { return };
        c.last_seq += 1;
        c.in_flight += 1;
        let seq = c.last_seq;
        c.dedupe.insert(key, Accepted { seq, message_id, ts: now });
        if let Some(Side::Rewrite(target, m)) = &side {
            c.rewrites.push((*target, m.clone()));
        }
        let msg = Arc::new(StoredMessage {
            ext,
            message_id,
            from: req.user.into(),
            from_device: req.device.into(),
            client_msg_id: req.send.client_msg_id,
            ts: now,
            kind: req.send.kind.tag(),
            body: req.send.body,
        });
        if create.is_some() {
            self.convs.created(req.conv);
        }
        if was_typing.is_some() {
            self.relay_typing(req.conv, &msg.from, false);
        }
        let p = Pending {
            from: req.from,
            conv: req.conv,
            seq,
            msg,
            meta: create,
            rows: Vec::new(),
            audience: Vec::new(),
            info: None,
            side,
        };
        self.commit.queued.push(p);
    }

    // ---- group commit ----

    /// Work waits for a commit and none is running.
    pub fn wants_commit(&self) -> bool {
        self.commit.wants_commit()
            || (self.commit.in_flight.is_none()
                && (!self.users.unsaved.is_empty()
                    || !self.convs.unsaved.is_empty()
                    || !self.lists.is_empty()
                    || !self.commit.hides.is_empty()))
    }

    /// Starts a commit: the writes of everything queued, to be made durable as one
    /// batch and reported with [`Core::commit_done`]. `None`: nothing to commit, or a
    /// commit is running.
    pub fn take_commit(&mut self) -> Option<Vec<Write>> {
        if self.commit.in_flight.is_some() {
            return None;
        }
        self.queue_user_records();
        let mut extra = self.cursor_writes();
        self.inbox_writes(&mut extra);
        self.hide_writes(&mut extra);
        let writes = self.commit.take(extra);
        if writes.is_none() {
            // Nothing was taken: the cursors, list parts and hides wait for the next commit.
            self.cursors_committed(false);
            self.inbox_committed(false);
            self.commit.hides.splice(0..0, std::mem::take(&mut self.commit.hides_in_flight));
        }
        writes
    }

    /// The commit started by [`Core::take_commit`] is durable (`Ok`) or failed.
    pub fn commit_done(&mut self, r: Result<(), StoreError>, now: u64) {
        self.now = now;
        let Some(batch) = self.commit.in_flight.take() else { return };
        self.cursors_committed(r.is_ok());
        self.inbox_committed(r.is_ok());
        self.hides_committed(r.as_ref().err());
        match r {
            Ok(()) => self.committed(batch),
            Err(e) => self.commit_failed(batch, &e),
        }
        self.release_deferred();
        self.settle();
    }

    fn committed(&mut self, batch: Vec<Pending>) {
        let shards = self.shards;
        for p in batch {
            let Some(c) = self.convs.ready(p.conv) else { continue };
            c.durable_seq = c.durable_seq.max(p.seq);
            c.in_flight = c.in_flight.saturating_sub(1);
            if let Some(Side::Rewrite(_, m)) = &p.side {
                // Durable: the next event on it reads the store.
                c.rewrites.retain(|(_, r)| !Arc::ptr_eq(r, m));
            }
            if c.group.is_some() && p.info.is_none() {
                // Its sender is told its receipt counts while it is recent.
                c.recent.push_back(Sent { seq: p.seq, from: Box::from(p.msg.from.as_str()), told: (0, 0) });
                while c.recent.len() > RECENT_SENDERS {
                    c.recent.pop_front();
                }
            }
            // A group event goes to the members when it was stored, which may differ
            // from the current ones (later changes are already applied in memory).
            let fanout: Vec<Arc<[Box<str>]>> = match p.info {
                Some(_) => by_home_shard(p.audience.iter().map(String::as_str), shards),
                None => c.fanout(shards).to_vec(),
            };
            let reply = match p.info {
                Some(mut info) => {
                    info.seq = p.seq;
                    ServerFrame::GroupInfo(Box::new(info))
                }
                None => ServerFrame::Ack(Ack {
                    client_msg_id: p.msg.client_msg_id.clone(),
                    conv: p.conv,
                    seq: p.seq,
                    message_id: p.msg.message_id,
                    ts: p.msg.ts,
                    duplicate: false,
                }),
            };
            let summary = c.summary();
            self.reply(p.from, reply);
            for (k, recipients) in fanout.into_iter().enumerate() {
                if !recipients.is_empty() {
                    let (conv, seq, msg, summary) = (p.conv, p.seq, p.msg.clone(), summary.clone());
                    let r = MsgRoute::Deliver { conv, seq, msg, summary, recipients, except: Some(p.from) };
                    self.send_route(ShardId(k as u16), Route::Msg(r));
                }
            }
        }
    }

    fn release_deferred(&mut self) {
        if self.commit.deferred.is_empty() {
            return;
        }
        for (to, ack) in std::mem::take(&mut self.commit.deferred) {
            match self.convs.ready(ack.conv) {
                Some(c) if ack.seq > c.durable_seq => self.commit.deferred.push((to, ack)),
                Some(_) => self.reply(to, ServerFrame::Ack(ack)),
                // The conversation was dropped after a failed commit: the original is
                // not stored; the client retries.
                None => {
                    let msg = "storage failed; retry".to_owned();
                    self.reply_error(to, ErrorCode::Internal, msg, Some(ack.client_msg_id));
                }
            }
        }
    }

    fn commit_failed(&mut self, batch: Vec<Pending>, e: &StoreError) {
        let (code, msg) = storage_failed(e);
        let mut failed: Vec<ConvId> = batch.iter().map(|p| p.conv).collect();
        failed.sort();
        failed.dedup();
        // Messages queued behind the failed ones in the same conversations hold seqs
        // past the gap: fail them too, and reload those conversations from storage.
        let queued = std::mem::take(&mut self.commit.queued);
        let (behind, keep): (Vec<_>, Vec<_>) = queued.into_iter().partition(|p| failed.binary_search(&p.conv).is_ok());
        self.commit.queued = keep;
        for conv in &failed {
            // Events waiting on a target in it go with it.
            for r in self.convs.ready(*conv).map(|c| std::mem::take(&mut c.events)).unwrap_or_default() {
                self.reply_error(r.from, code, msg.clone(), Some(r.send.client_msg_id));
            }
            self.convs.remove(*conv);
        }
        for p in batch.into_iter().chain(behind) {
            let ref_id = match p.info {
                Some(info) => info.req_id,
                None => Some(p.msg.client_msg_id.clone()),
            };
            self.reply_error(p.from, code, msg.clone(), ref_id);
        }
    }

    /// Refuses everything queued (retryable): nothing can be made durable now (the
    /// gateway's commit log cannot checkpoint).
    pub fn refuse_queued(&mut self, e: &StoreError, now: u64) {
        self.now = now;
        let queued = std::mem::take(&mut self.commit.queued);
        if !queued.is_empty() {
            self.commit_failed(queued, e);
        }
        self.release_deferred();
        self.settle();
    }

    /// Writes a stored message to every connected device of `recipients` (homed here).
    fn deliver(
        &mut self,
        conv: ConvId,
        seq: u64,
        msg: Arc<StoredMessage>,
        recipients: &[Box<str>],
        except: Option<ConnRef>,
    ) {
        let mut to = Vec::new();
        for user in recipients {
            for &id in self.users.conns_of(user) {
                if except.is_none_or(|e| e.shard != self.me || e.conn != id) {
                    to.push(id);
                }
            }
        }
        if !to.is_empty() {
            self.out.push(Effect::Deliver { conv, seq, msg, to });
        }
    }

    // ---- typing (ephemeral, never stored) ----

    /// At the conversation's home: relay a typing change to the other members, at most
    /// one `typing: true` per user per conversation per second.
    fn on_typing(&mut self, from: ConnRef, user: &str, conv: ConvId, typing: bool) {
        let (now, ttl) = (self.now, self.cfg.typing_ttl_ms);
        let Some(c) = self.convs.ready(conv) else { return };
        if !c.exists || !c.is_member(user) {
            let (code, msg) = not_member();
            return self.reply_error(from, code, msg, None);
        }
        let pos = c.typists.iter().position(|t| *t.0 == *user);
        let relay = match (typing, pos) {
            (true, Some(i)) => {
                let t = &mut c.typists[i];
                t.2 = now + ttl;
                if now.saturating_sub(t.1) >= 1000 {
                    t.1 = now;
                    true
                } else {
                    false
                }
            }
            (true, None) => {
                c.typists.push((Box::from(user), now, now + ttl));
                if !self.convs.typing.contains(&conv) {
                    self.convs.typing.push(conv);
                }
                true
            }
            (false, Some(i)) => {
                c.typists.swap_remove(i);
                true
            }
            (false, None) => false,
        };
        if relay {
            self.relay_typing(conv, user, typing);
        }
    }

    /// Sends a typing change to the other members, one route per destination shard.
    fn relay_typing(&mut self, conv: ConvId, user: &str, typing: bool) {
        let Some(c) = self.convs.ready(conv) else { return };
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); self.shards];
        for m in c.members.iter().filter(|m| ***m != *user) {
            by_shard[home_of_user(m, self.shards).index()].push(m.to_string());
        }
        for (k, recipients) in by_shard.into_iter().enumerate() {
            if !recipients.is_empty() {
                let r = MsgRoute::TypingDeliver { conv, from: user.to_owned(), typing, recipients };
                self.send_route(ShardId(k as u16), Route::Msg(r));
            }
        }
    }

    /// Ends typing indicators not refreshed within the TTL.
    pub(super) fn expire_typing(&mut self) {
        if self.convs.typing.is_empty() {
            return;
        }
        let now = self.now;
        let mut expired = Vec::new();
        for conv in std::mem::take(&mut self.convs.typing) {
            let Some(c) = self.convs.ready(conv) else { continue };
            c.typists.retain(|t| {
                let live = t.2 > now;
                if !live {
                    expired.push((conv, t.0.to_string()));
                }
                live
            });
            if !c.typists.is_empty() {
                self.convs.typing.push(conv);
            }
        }
        for (conv, user) in expired {
            self.relay_typing(conv, &user, false);
        }
    }

    // ---- history and sync ----

    pub(super) fn on_history_read(
        &mut self,
        from: ConnRef,
        conv: ConvId,
        req_id: Option<String>,
        r: Result<ReadDone, StoreError>,
    ) {
        match r {
            Ok(ReadDone::Page(slice)) => self.reply(from, ServerFrame::HistoryPage(page(conv, req_id, slice))),
            Ok(_) => {}
            Err(e) => {
                let (code, msg) = storage_failed(&e);
                self.reply_error(from, code, msg, req_id);
            }
        }
    }

    pub(super) fn on_sync_read(&mut self, from: ConnRef, r: Result<ReadDone, StoreError>) {
        let sent = match r {
            Ok(ReadDone::Sync(pages)) => {
                let n = pages.len() as u32;
                for (conv, slice) in pages {
                    self.reply(from, ServerFrame::SyncPage(page(conv, None, slice)));
                }
                n
            }
            Ok(_) => 0,
            Err(e) => {
                let (code, msg) = storage_failed(&e);
                self.reply_error(from, code, msg, None);
                0
            }
        };
        self.send_route(from.shard, Route::Conn(super::ConnRoute::SyncDone { to: from, convs: sent }));
    }

    pub(super) fn on_sync_done(&mut self, id: ConnId, convs: u32) {
        let Some((left, total)) = self.conns.sync_mut(id) else { return };
        *total += convs;
        *left = left.saturating_sub(1);
        if *left == 0 {
            let total = *total;
            self.conns.end_sync(id);
            self.frame(id, ServerFrame::Synced { convs: total });
        }
    }
}
