//! The life of a message on a conversation's home shard, and fan-out on every shard.
//!
//! 1. A `send` arrives as [`SendReq`] at `home(conv)`. The conversation's state is
//!    loaded from storage on first use (sends queue meanwhile).
//! 2. Membership is checked here, at the owner; a DM is created on its first message.
//! 3. A resend of a remembered `(sender, client_msg_id)` gets the original ack (only
//!    once that original is durable); a new message gets the next dense `seq` and a
//!    message id, and joins the shard's group-commit queue.
//! 4. One commit at a time per shard: the queue becomes one record of the shard's commit
//!    log written with one durable write (`commitlog`), or with the log off one storage
//!    batch with one durable sync. Only after it completes: ack the sender, then one
//!    `Deliver` per destination shard carrying the recipients homed there.
//! 5. If the commit fails, nothing in it is acked; its conversations are dropped from
//!    memory (reloaded from storage on next use, so seqs stay dense) and every sender
//!    gets a retryable `internal` error, including those queued behind it.

use std::collections::HashMap;
use std::sync::Arc;

use shard::conv::{Accepted, ConvState};
use shard::ids::{home_of_user, now_ms, ConnId, ConnRef, ShardId};
use storage::model::{ConvKind, ConvMeta, GroupMeta, StoredMessage, Write};
use storage::{Slice, StoreError};
use wire::error::ErrorCode;
use wire::frame::{Ack, ConvId, GroupInfo, History, Message, MsgKind, Page, ServerFrame, SyncPoint};
use wire::Encoding;

use crate::conn::Phase;
use crate::route::{GroupReq, Route, SendReq};
use crate::service::{data_opcode, error_frame, Shard};
use crate::ws;

/// A batch this large commits without waiting for the commit window.
const COMMIT_BATCH_MAX: usize = 1024;

/// The conversations homed on a shard, and its group-commit queue.
#[derive(Default)]
pub struct Conversations {
    /// Loaded (or loading) conversations.
    pub(crate) slots: HashMap<ConvId, Slot>,
    /// Accepted messages waiting for the next commit, in acceptance order.
    pub(crate) queued: Vec<Pending>,
    /// A commit is running (at most one at a time, so commits finish in order).
    pub(crate) in_flight: bool,
    /// Duplicate acks waiting for their original to become durable.
    deferred: Vec<(ConnRef, Ack)>,
    /// Conversations with someone typing (checked for expiry every second).
    typing: Vec<ConvId>,
    /// When the last commit started (the commit window counts from here).
    last_commit: Option<std::time::Instant>,
    /// A timer will start the next commit when the window has passed.
    commit_timer: bool,
}

impl Conversations {
    /// Nothing queued or being written (drain waits for this).
    pub fn is_idle(&self) -> bool {
        self.queued.is_empty() && !self.in_flight
    }
}

pub(crate) enum Slot {
    /// Reading state from storage; requests wait here in arrival order.
    Loading(Vec<Waiting>),
    /// In memory.
    Ready(Box<Conv>),
}

/// A request waiting for its conversation to load.
pub(crate) enum Waiting {
    /// A message.
    Send(SendReq),
    /// A group request.
    Group(GroupReq),
}

pub(crate) struct Conv {
    /// Seq, members and dedupe window.
    pub(crate) state: ConvState,
    /// Highest seq known durable. Invariant: `durable_seq <= state.last_seq()`.
    pub(crate) durable_seq: u64,
    /// False until the conversation exists (stored, or created by a queued write).
    pub(crate) exists: bool,
    /// A group's name and admins (`None` for a DM).
    pub(crate) group: Option<GroupMeta>,
    /// Creation time (ms since the epoch), kept in the metadata.
    pub(crate) created: u64,
    /// Members typing now: `(user, last relayed ms, expires ms)`. Never stored.
    typists: Vec<(Box<str>, u64, u64)>,
    /// Members grouped by home shard, shared by every `Deliver` until membership
    /// changes (empty: rebuild on next use).
    fanout: Vec<Arc<[Box<str>]>>,
}

impl Conv {
    /// Membership changed: rebuild the fan-out lists on next use.
    pub(crate) fn members_changed(&mut self) {
        self.fanout.clear();
    }

    fn fanout(&mut self, shards: usize) -> &[Arc<[Box<str>]>] {
        if self.fanout.is_empty() {
            self.fanout = by_home_shard(self.state.members.iter().map(|m| &**m), shards);
        }
        &self.fanout
    }
}

/// `users` grouped by home shard: one shared list per shard (empty where none lives).
fn by_home_shard<'a>(users: impl Iterator<Item = &'a str>, shards: usize) -> Vec<Arc<[Box<str>]>> {
    let mut by_shard: Vec<Vec<Box<str>>> = vec![Vec::new(); shards];
    for user in users {
        by_shard[home_of_user(user, shards).index()].push(Box::from(user));
    }
    by_shard.into_iter().map(Arc::from).collect()
}

/// An accepted message (or group event) on its way to storage.
pub(crate) struct Pending {
    pub(crate) from: ConnRef,
    pub(crate) msg: Message,
    /// Metadata to write first (a DM's first message, a group event).
    pub(crate) meta: Option<ConvMeta>,
    /// Former members to drop from the user index, and who get this event although no
    /// longer members.
    pub(crate) removed: Vec<String>,
    /// For a group event: the `group_info` the requester gets instead of an ack.
    pub(crate) info: Option<GroupInfo>,
}

fn stored(m: &Message) -> StoredMessage {
    StoredMessage {
        message_id: m.message_id,
        from: m.from.clone(),
        from_device: m.from_device.clone(),
        client_msg_id: m.client_msg_id.clone(),
        ts: m.ts,
        kind: m.kind.tag(),
        body: m.body.clone(),
    }
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

fn internal(e: &StoreError) -> (ErrorCode, String) {
    tracing::error!("storage: {e}");
    (ErrorCode::Internal, "storage is unavailable; retry later (the message was not stored)".into())
}

impl Shard {
    pub(crate) fn reply(&mut self, to: ConnRef, frame: ServerFrame) {
        self.route(to.shard, Route::ToConn { to, frame });
    }

    pub(crate) fn reply_error(&mut self, to: ConnRef, code: ErrorCode, message: String, ref_id: Option<String>) {
        self.reply(to, error_frame(code, message, ref_id));
    }

    // ---- on the conversation's home shard ----

    pub(crate) fn on_send(&mut self, req: SendReq) {
        self.when_loaded(req.conv, Waiting::Send(req));
    }

    /// Handles `w` once its conversation is in memory (loading it first if needed).
    pub(crate) fn when_loaded(&mut self, conv: ConvId, w: Waiting) {
        match self.convs.slots.get_mut(&conv) {
            Some(Slot::Ready(_)) => self.handle_waiting(w),
            Some(Slot::Loading(queue)) => queue.push(w),
            None => self.load_conv(conv, vec![w]),
        }
    }

    fn handle_waiting(&mut self, w: Waiting) {
        match w {
            Waiting::Send(req) => self.accept_send(req),
            Waiting::Group(req) => self.accept_group(req),
        }
    }

    /// Reads a conversation's state from storage (off the reactor); `waiting` requests
    /// are handled, in order, once it is in memory.
    fn load_conv(&mut self, conv: ConvId, waiting: Vec<Waiting>) {
        self.convs.slots.insert(conv, Slot::Loading(waiting));
        let (store, window) = (self.store.clone(), self.cfg.dedupe_window);
        self.read_store(
            move || -> Result<_, StoreError> { Ok((store.conv_meta(conv)?, store.newest(conv, 0, u64::MAX, window)?)) },
            move |s, r| s.on_conv_loaded(conv, r),
        );
    }

    fn on_conv_loaded(&mut self, conv: ConvId, r: Result<(Option<ConvMeta>, Slice), StoreError>) {
        let Some(Slot::Loading(queue)) = self.convs.slots.remove(&conv) else { return };
        match r {
            Err(e) => {
                let (code, msg) = internal(&e);
                for w in queue {
                    let (to, ref_id) = match w {
                        Waiting::Send(req) => (req.from, Some(req.send.client_msg_id)),
                        Waiting::Group(req) => (req.from, req.op.req_id),
                    };
                    self.reply_error(to, code, msg.clone(), ref_id);
                }
            }
            Ok((meta, tail)) => {
                let last_seq = tail.messages.last().map_or(0, |m| m.0);
                let exists = meta.is_some();
                let (members, group, created) = match meta {
                    None => (Vec::new(), None, 0),
                    Some(m) => {
                        let group = match m.kind {
                            ConvKind::Direct => None,
                            ConvKind::Group(g) => Some(g),
                        };
                        (m.members.into_iter().map(Box::from).collect(), group, m.created)
                    }
                };
                let mut state = ConvState::new(members, last_seq, self.cfg.dedupe_window);
                for (seq, m) in tail.messages.iter().filter(|m| m.1.kind != MsgKind::System.tag()) {
                    state.remember(
                        &m.from,
                        &m.client_msg_id,
                        Accepted { seq: *seq, message_id: m.message_id, ts: m.ts },
                    );
                }
                let c = Conv {
                    state,
                    durable_seq: last_seq,
                    exists,
                    group,
                    created,
                    typists: Vec::new(),
                    fanout: Vec::new(),
                };
                self.convs.slots.insert(conv, Slot::Ready(Box::new(c)));
                for w in queue {
                    self.handle_waiting(w);
                }
            }
        }
    }

    fn accept_send(&mut self, req: SendReq) {
        let Some(Slot::Ready(c)) = self.convs.slots.get_mut(&req.conv) else { return };
        let mut create = None;
        if !c.exists {
            // Only a DM can come into being by a send, and only between its two users.
            let is_dm = req.dm_peer.as_deref().is_some_and(|p| shard::ids::dm_conv(&req.user, p) == req.conv);
            if let (true, Some(peer)) = (is_dm, &req.dm_peer) {
                let mut members = vec![req.user.clone(), peer.clone()];
                members.sort();
                members.dedup();
                c.state.members = members.iter().map(|m| Box::from(m.as_str())).collect();
                c.members_changed();
                c.exists = true;
                c.created = now_ms();
                create = Some(ConvMeta { kind: ConvKind::Direct, members, created: c.created });
            }
        }
        if !c.exists || !c.state.is_member(&req.user) {
            let msg = "no such conversation, or you are not a member".to_owned();
            return self.reply_error(req.from, ErrorCode::NotMember, msg, Some(req.send.client_msg_id));
        }
        if let Some(a) = c.state.duplicate(&req.user, &req.send.client_msg_id) {
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
                self.convs.deferred.push((req.from, ack));
            }
            return;
        }
        // Sending a message ends the sender's typing indicator.
        let was_typing = c.typists.iter().position(|t| *t.0 == *req.user);
        if let Some(i) = was_typing {
            c.typists.swap_remove(i);
        }
        let ts = now_ms();
        let message_id = self.ids.next(ts);
        let c = match self.convs.slots.get_mut(&req.conv) {
            Some(Slot::Ready(c)) => c,
            _ => return,
        };
        let a = c.state.accept(&req.user, &req.send.client_msg_id, message_id, ts);
        let msg = Message {
            conv: req.conv,
            seq: a.seq,
            message_id,
            from: req.user,
            from_device: req.device,
            ts,
            kind: req.send.kind,
            body: req.send.body,
            client_msg_id: req.send.client_msg_id,
        };
        if was_typing.is_some() {
            self.relay_typing(msg.conv, &msg.from, false);
        }
        self.convs.queued.push(Pending { from: req.from, msg, meta: create, removed: Vec::new(), info: None });
    }

    /// Starts a group commit of everything queued, unless one is running or the commit
    /// window since the last start has not passed (then a timer starts it). Measured
    /// (docs/BENCHMARKS.md): a 1 ms window raised messages per fdatasync from 1.5 to 2.7
    /// at 5,000 msg/s but left server CPU per message unchanged, so it is off by default.
    pub(crate) fn kick_commit(&mut self) {
        if self.convs.in_flight || self.convs.queued.is_empty() || self.convs.commit_timer {
            return;
        }
        let window = std::time::Duration::from_micros(self.cfg.commit_window_us);
        let wait = self.convs.last_commit.map_or(std::time::Duration::ZERO, |t| window.saturating_sub(t.elapsed()));
        if !wait.is_zero() && self.convs.queued.len() < COMMIT_BATCH_MAX {
            self.convs.commit_timer = true;
            self.after(glommio::timer::sleep(wait), |s, ()| {
                s.convs.commit_timer = false;
                s.kick_commit();
            });
            return;
        }
        if self.log_blocked() {
            return;
        }
        self.convs.last_commit = Some(std::time::Instant::now());
        let batch = std::mem::take(&mut self.convs.queued);
        let mut writes = Vec::with_capacity(batch.len() + 1);
        for p in &batch {
            if let Some(meta) = &p.meta {
                writes.push(Write::Conv { conv: p.msg.conv, meta: meta.clone() });
            }
            for user in &p.removed {
                writes.push(Write::Unindex { conv: p.msg.conv, user: user.clone() });
            }
            writes.push(Write::Message { conv: p.msg.conv, seq: p.msg.seq, msg: stored(&p.msg) });
        }
        if self.log.is_some() {
            return self.log_commit(batch, writes);
        }
        self.convs.in_flight = true;
        let store = self.store.clone();
        self.blocking(move || store.commit(&writes), move |s, r| s.on_committed(batch, r));
    }

    pub(crate) fn on_committed(&mut self, batch: Vec<Pending>, r: Result<(), StoreError>) {
        self.convs.in_flight = false;
        if let Some(started) = self.convs.last_commit {
            self.stats().observe_commit(started.elapsed());
        }
        if let Err(e) = r {
            return self.on_commit_failed(batch, &e);
        }
        let stats = self.stats();
        stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.messages_stored.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let shards = self.shards;
        for p in batch {
            let Some(Slot::Ready(c)) = self.convs.slots.get_mut(&p.msg.conv) else { continue };
            c.durable_seq = c.durable_seq.max(p.msg.seq);
            // A group event goes to the members when it was stored, which may differ from
            // the current ones (later changes are already applied in memory).
            let fanout: Vec<Arc<[Box<str>]>> = match &p.meta {
                Some(meta) if p.info.is_some() => {
                    by_home_shard(meta.members.iter().chain(&p.removed).map(String::as_str), shards)
                }
                _ => c.fanout(shards).to_vec(),
            };
            let reply = match p.info {
                Some(mut info) => {
                    info.seq = p.msg.seq;
                    ServerFrame::GroupInfo(info)
                }
                None => ServerFrame::Ack(Ack {
                    client_msg_id: p.msg.client_msg_id.clone(),
                    conv: p.msg.conv,
                    seq: p.msg.seq,
                    message_id: p.msg.message_id,
                    ts: p.msg.ts,
                    duplicate: false,
                }),
            };
            self.reply(p.from, reply);
            for (k, recipients) in fanout.into_iter().enumerate() {
                if !recipients.is_empty() {
                    let r = Route::Deliver { msg: p.msg.clone(), recipients, except: Some(p.from) };
                    self.route(ShardId(k as u16), r);
                }
            }
        }
        self.release_deferred();
    }

    fn release_deferred(&mut self) {
        if self.convs.deferred.is_empty() {
            return;
        }
        let deferred = std::mem::take(&mut self.convs.deferred);
        for (to, ack) in deferred {
            match self.convs.slots.get(&ack.conv) {
                Some(Slot::Ready(c)) if ack.seq > c.durable_seq => self.convs.deferred.push((to, ack)),
                Some(Slot::Ready(_)) => self.reply(to, ServerFrame::Ack(ack)),
                // The conversation was dropped after a failed commit: the original is
                // not stored; the client retries.
                _ => {
                    let msg = "storage failed; retry".to_owned();
                    self.reply_error(to, ErrorCode::Internal, msg, Some(ack.client_msg_id));
                }
            }
        }
    }

    pub(crate) fn on_commit_failed(&mut self, batch: Vec<Pending>, e: &StoreError) {
        let (code, msg) = internal(e);
        let mut failed: Vec<ConvId> = batch.iter().map(|p| p.msg.conv).collect();
        failed.sort();
        failed.dedup();
        // Messages queued behind the failed ones in the same conversations hold seqs
        // past the gap: fail them too, and reload those conversations from storage.
        let queued = std::mem::take(&mut self.convs.queued);
        let (behind, keep): (Vec<_>, Vec<_>) =
            queued.into_iter().partition(|p| failed.binary_search(&p.msg.conv).is_ok());
        self.convs.queued = keep;
        for conv in &failed {
            self.convs.slots.remove(conv);
        }
        for p in batch.into_iter().chain(behind) {
            let ref_id = match p.info {
                Some(info) => info.req_id,
                None => Some(p.msg.client_msg_id),
            };
            self.reply_error(p.from, code, msg.clone(), ref_id);
        }
        self.release_deferred();
    }

    /// Writes a stored message to every connected device of `recipients` (homed here),
    /// encoding it at most once per encoding.
    pub(crate) fn deliver(&mut self, msg: Message, recipients: &[Box<str>], except: Option<ConnRef>) {
        let frame = ServerFrame::Msg(msg);
        let mut encoded: [Option<Vec<u8>>; 2] = [None, None];
        // The same frame compressed (permessage-deflate), also at most once per encoding:
        // each message is compressed on its own, so every such connection gets the same bytes.
        let mut deflated: [Option<Vec<u8>>; 2] = [None, None];
        let mut overflowed = Vec::new();
        let mut delivered = 0u64;
        for user in recipients {
            let Some(u) = self.users.get(&**user) else { continue };
            for &id in &u.conns {
                if except == Some(ConnRef { shard: self.me, conn: id }) {
                    continue;
                }
                let Some(conn) = self.conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else { continue };
                if conn.phase != Phase::Open {
                    continue;
                }
                let enc = conn.encoding;
                let bytes = encoded[enc as usize].get_or_insert_with(|| {
                    let mut out = Vec::with_capacity(128);
                    ws::write_frame_with(&mut out, data_opcode(enc), |o| enc.encode_server(&frame, o));
                    out
                });
                // Connections without compression never look past the encoded frame.
                let payload = if conn.deflate.on() { ws::own_payload(bytes) } else { &[] };
                if conn.deflate.compresses(payload.len()) {
                    let codec = &mut self.deflate;
                    let z = deflated[enc as usize].get_or_insert_with(|| {
                        let mut out = Vec::with_capacity(payload.len() / 2 + 26);
                        codec.write_frame(&mut out, data_opcode(enc), payload);
                        out
                    });
                    conn.out.extend_from_slice(z);
                } else {
                    conn.out.extend_from_slice(bytes);
                }
                delivered += 1;
                if conn.write_armed && conn.backlog() > self.cfg.max_outbound {
                    overflowed.push(id);
                }
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(id);
                }
            }
        }
        self.stats().deliveries.fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
        for id in overflowed {
            self.overflow(id);
        }
    }

    // ---- typing (ephemeral, never stored) ----

    /// At the conversation's home: relay a typing change to the other members,
    /// at most one `typing: true` per user per conversation per second.
    pub(crate) fn on_typing(&mut self, from: ConnRef, user: String, conv: ConvId, typing: bool) {
        let now = now_ms();
        let ttl = self.cfg.typing_ttl_secs as u64 * 1000;
        let c = match self.convs.slots.get_mut(&conv) {
            Some(Slot::Ready(c)) => c,
            Some(Slot::Loading(_)) => return, // best effort: the client refreshes typing
            None => {
                // Load the conversation (for its members) and drop this event: typing is
                // refreshed by clients every few seconds, so the next one is relayed.
                self.load_conv(conv, Vec::new());
                return;
            }
        };
        if !c.exists || !c.state.is_member(&user) {
            let msg = "no such conversation, or you are not a member".to_owned();
            return self.reply_error(from, ErrorCode::NotMember, msg, None);
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
                c.typists.push((Box::from(user.as_str()), now, now + ttl));
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
            self.relay_typing(conv, &user, typing);
        }
    }

    /// Sends a typing change to the other members, one route per destination shard.
    fn relay_typing(&mut self, conv: ConvId, user: &str, typing: bool) {
        let Some(Slot::Ready(c)) = self.convs.slots.get(&conv) else { return };
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); self.shards];
        for m in c.state.members.iter().filter(|m| ***m != *user) {
            by_shard[home_of_user(m, self.shards).index()].push(m.to_string());
        }
        for (k, recipients) in by_shard.into_iter().enumerate() {
            if !recipients.is_empty() {
                let r = Route::TypingDeliver { conv, from: user.to_owned(), typing, recipients };
                self.route(ShardId(k as u16), r);
            }
        }
    }

    /// Ends typing indicators not refreshed within `typing_ttl_secs` (once a second).
    pub(crate) fn expire_typing(&mut self) {
        if self.convs.typing.is_empty() {
            return;
        }
        let now = now_ms();
        let mut expired = Vec::new();
        let convs = std::mem::take(&mut self.convs.typing);
        for conv in convs {
            let Some(Slot::Ready(c)) = self.convs.slots.get_mut(&conv) else { continue };
            c.typists.retain(|t| {
                if t.2 <= now {
                    expired.push((conv, t.0.to_string()));
                    false
                } else {
                    true
                }
            });
            if !c.typists.is_empty() {
                self.convs.typing.push(conv);
            }
        }
        for (conv, user) in expired {
            self.relay_typing(conv, &user, false);
        }
    }

    /// On a member's home shard: tell the recipients' online devices.
    pub(crate) fn on_typing_deliver(&mut self, conv: ConvId, from: &str, typing: bool, recipients: &[String]) {
        let frame = ServerFrame::Typing { conv, from: from.to_owned(), typing };
        let ids: Vec<ConnId> = recipients
            .iter()
            .filter_map(|r| self.users.get(r.as_str()))
            .flat_map(|u| u.conns.iter().copied())
            .collect();
        for id in ids {
            self.send_frame(id, &frame);
        }
    }

    pub(crate) fn on_history(&mut self, from: ConnRef, user: String, req: History) {
        let limit = req.limit.unwrap_or(self.cfg.history_default).clamp(1, self.cfg.history_max) as usize;
        let store = self.store.clone();
        self.read_store(
            move || -> Result<Result<Page, ()>, StoreError> {
                let member = store.conv_meta(req.conv)?.is_some_and(|m| m.members.contains(&user));
                if !member {
                    return Ok(Err(()));
                }
                let slice = store.newest(req.conv, 0, req.before_seq.unwrap_or(u64::MAX), limit)?;
                Ok(Ok(page(req.conv, req.req_id, slice)))
            },
            move |s, r| match r {
                Ok(Ok(p)) => s.reply(from, ServerFrame::HistoryPage(p)),
                Ok(Err(())) => {
                    let msg = "no such conversation, or you are not a member".to_owned();
                    s.reply_error(from, ErrorCode::NotMember, msg, None)
                }
                Err(e) => {
                    let (code, msg) = internal(&e);
                    s.reply_error(from, code, msg, None)
                }
            },
        );
    }

    /// This shard's part of a `hello` sync: for each of the user's conversations homed
    /// here, the newest messages after the device's last seen seq.
    pub(crate) fn on_sync(&mut self, from: ConnRef, user: String, points: Vec<SyncPoint>) {
        let per_conv = self.cfg.sync_per_conv as usize;
        let store = self.store.clone();
        self.read_store(
            move || -> Result<Vec<Page>, StoreError> {
                let mut pages = Vec::new();
                for conv in store.user_convs(&user)? {
                    let after = points.iter().find(|p| p.conv == conv).map_or(0, |p| p.seq);
                    let slice = store.newest(conv, after, u64::MAX, per_conv)?;
                    if !slice.messages.is_empty() {
                        pages.push(page(conv, None, slice));
                    }
                }
                Ok(pages)
            },
            move |s, r| {
                let sent = match r {
                    Ok(pages) => {
                        let n = pages.len() as u32;
                        for p in pages {
                            s.reply(from, ServerFrame::SyncPage(p));
                        }
                        n
                    }
                    Err(e) => {
                        let (code, msg) = internal(&e);
                        s.reply_error(from, code, msg, None);
                        0
                    }
                };
                s.route(from.shard, Route::SyncDone { to: from, convs: sent });
            },
        );
    }
}

// `Encoding as usize` indexes the per-encoding cache in `deliver`.
const _: () = assert!(Encoding::Json as usize == 0 && Encoding::FlatBuffers as usize == 1);
