//! Edits, deletes for everyone and reactions, at the conversation's home.
//!
//! Each is a message of its own (kinds `edit`, `delete`, `reaction`) in the
//! conversation's order, acknowledged, deduplicated and delivered like any send, that
//! acts on an earlier message (`target`). The rules need the target (its sender, time,
//! kind, whether it is deleted), which the home does not keep in memory: the event
//! waits in the conversation's `events` queue while the target is read, one event at a
//! time per conversation, so two events on one message never start from the same
//! state. An edit or delete also rewrites the target in the same group commit (new
//! body and `edited_at`; or an empty body and `deleted_by`/`deleted_at`: the body is
//! gone from the stored record), and the rewritten target stays in memory until that
//! commit is durable, for the next event on it. A reaction writes the member's reaction
//! record (one per member per message; empty removes it).
//!
//! Rules: only a message's sender edits it, within `edit_window_ms`, and not `data`
//! messages (opaque bytes a client would re-send); its sender deletes it within
//! `delete_window_ms`, a group admin at any time; nothing acts on an event, a group
//! event or a deleted message. Refusals: `forbidden` (who or when), `bad_value` (what).

use std::sync::Arc;

use storage::model::{dedupe_key, StoredMessage};
use storage::read::{ReadDone, ReadReq};
use storage::StoreError;
use wire::error::ErrorCode;
use wire::frame::{ConvId, Forwarded, MsgExtra, MsgKind, ServerFrame};

use super::commit::{HideReq, Side};
use super::{busy, storage_failed, Core, ReadFor, SendReq};
use crate::ids::ConnRef;

impl Core {
    /// Delete for me, at the conversation's home: a member hides messages they can see;
    /// once durable every device of theirs is told (`hidden`), and history and sync
    /// skip them for that user.
    pub(super) fn hide(&mut self, from: ConnRef, user: String, conv: ConvId, seqs: Vec<u64>) {
        let Some(c) = self.convs.ready(conv).filter(|c| c.exists && c.is_member(&user)) else {
            let msg = "no such conversation, or you are not a member".to_owned();
            return self.reply_error(from, ErrorCode::NotMember, msg, None);
        };
        let (joined, durable) = (c.joined_at(&user), c.durable_seq);
        if let Some(s) = seqs.iter().find(|s| **s < joined || **s > durable) {
            let msg = format!("message {s}: not one you can see in this conversation");
            return self.reply_error(from, ErrorCode::BadValue, msg, None);
        }
        if self.commit.queued_len() >= self.cfg.max_commit_queue {
            let (code, msg) = busy("commit queue");
            return self.reply_error(from, code, msg, None);
        }
        self.commit.hides.push(HideReq { from, user, conv, seqs });
    }

    /// Adds the waiting hides to the next commit's `writes`.
    pub(super) fn hide_writes(&mut self, writes: &mut Vec<storage::model::Write>) {
        let hides = std::mem::take(&mut self.commit.hides);
        for h in &hides {
            for seq in &h.seqs {
                writes.push(storage::model::Write::Hide { conv: h.conv, user: h.user.clone(), seq: *seq });
            }
        }
        self.commit.hides_in_flight = hides;
    }

    /// The commit holding the hides ended: tell the user's devices, or the asker.
    pub(super) fn hides_committed(&mut self, failed: Option<&StoreError>) {
        for h in std::mem::take(&mut self.commit.hides_in_flight) {
            match failed {
                None => {
                    let frame = ServerFrame::Hidden { conv: h.conv, seqs: h.seqs };
                    let home = crate::ids::home_of_user(&h.user, self.shards);
                    let r = super::MsgRoute::ReceiptDeliver { user: h.user, frame: Box::new(frame), except: None };
                    self.send_route(home, super::Route::Msg(r));
                }
                Some(e) => {
                    let (code, msg) = storage_failed(e);
                    self.reply_error(h.from, code, msg, None);
                }
            }
        }
    }

    /// At the home of the conversation a forward copies from: the sender must be able to
    /// read the message (a member who joined before it); then it is read, copied, and
    /// the copy goes to the target conversation's home as a send.
    pub(super) fn forward_from(&mut self, req: SendReq) {
        let Some(f) = req.send.forward.as_deref().copied() else { return };
        let readable = self.convs.ready(f.conv).is_some_and(|c| {
            c.exists && c.is_member(&req.user) && f.seq >= c.joined_at(&req.user) && f.seq <= c.durable_seq
        });
        if !readable {
            let msg = "forward: no such message in a conversation you can read".to_owned();
            return self.reply_error(req.from, ErrorCode::NotMember, msg, Some(req.send.client_msg_id));
        }
        let read = ReadReq::Page { conv: f.conv, after: f.seq - 1, before: f.seq + 1, limit: 1, viewer: String::new() };
        let cmid = req.send.client_msg_id.clone();
        let from = req.from;
        if !self.read(read, ReadFor::Forward(Box::new(req))) {
            let (code, msg) = busy("storage reads");
            self.reply_error(from, code, msg, Some(cmid));
        }
    }

    pub(super) fn on_forward_read(&mut self, mut req: SendReq, r: Result<ReadDone, StoreError>) {
        let Some(f) = req.send.forward.take() else { return };
        let src = match r {
            Ok(ReadDone::Page(slice)) => slice.messages.into_iter().find(|(s, _)| *s == f.seq).map(|(_, m)| m),
            Ok(_) => None,
            Err(e) => {
                let (code, msg) = storage_failed(&e);
                return self.reply_error(req.from, code, msg, Some(req.send.client_msg_id));
            }
        };
        let kind = src.as_ref().and_then(|m| MsgKind::from_tag(m.kind));
        let Some((src, kind)) = src.zip(kind).filter(|(m, k)| {
            !k.is_event() && *k != MsgKind::System && m.ext.as_ref().is_none_or(|x| x.deleted_by.is_none())
        }) else {
            let msg = format!("forward: message {} is an event or deleted", f.seq);
            return self.reply_error(req.from, ErrorCode::BadValue, msg, Some(req.send.client_msg_id));
        };
        // Attribution: this message, its first author, and one more forward.
        let before = src.ext.as_ref().and_then(|x| x.forwarded.as_ref());
        req.forwarded = Some(Box::new(Forwarded {
            conv: f.conv,
            seq: f.seq,
            from: before.map_or_else(|| src.from.clone(), |b| b.from.clone()),
            times: before.map_or(0, |b| b.times).saturating_add(1),
        }));
        req.send.body = src.body;
        req.send.kind = kind;
        let home = crate::ids::home_of_conv(req.conv, self.shards);
        self.send_route(home, super::Route::Msg(super::MsgRoute::AtConv(super::ConvReq::Send(req))));
    }

    /// Checks a media reference against the configured limits.
    pub(super) fn media_allowed(&self, body: &[u8]) -> Result<(), String> {
        let m = wire::frame::check::media(body).map_err(|e| e.to_string())?;
        if m.size > self.cfg.media_max_bytes {
            return Err(format!("media of {} bytes exceeds media_max_bytes ({})", m.size, self.cfg.media_max_bytes));
        }
        let allowed = self.cfg.media_types.iter().any(|t| {
            if t.ends_with('/') {
                m.mime.starts_with(t.as_str())
            } else {
                *t == m.mime
            }
        });
        if !allowed {
            return Err(format!(
                "media type {} is not allowed (media_types: {})",
                m.mime,
                self.cfg.media_types.join(", ")
            ));
        }
        Ok(())
    }

    /// An edit, delete or reaction from a member: waits its turn, then reads its target.
    pub(super) fn queue_event(&mut self, req: SendReq) {
        let conv = req.conv;
        let max = self.cfg.max_waiters;
        let Some(c) = self.convs.ready(conv) else { return };
        let target = req.send.target_seq.unwrap_or(0);
        if target == 0 || target > c.durable_seq {
            let msg = format!("target {target}: no stored message of this conversation has that seq");
            return self.reply_error(req.from, ErrorCode::BadValue, msg, Some(req.send.client_msg_id));
        }
        if c.events.len() >= max {
            let (code, msg) = busy("edits, deletes and reactions waiting in this conversation");
            return self.reply_error(req.from, code, msg, Some(req.send.client_msg_id));
        }
        c.events.push_back(req);
        if !c.event_reading {
            self.next_event(conv);
        }
    }

    /// Starts the first waiting event of `conv`: from a rewrite still in memory, or by
    /// reading its target.
    fn next_event(&mut self, conv: ConvId) {
        loop {
            let Some(c) = self.convs.ready(conv) else { return };
            let Some(target) = c.events.front().map(|r| r.send.target_seq.unwrap_or(0)) else { return };
            if let Some(m) = c.rewrites.iter().rev().find(|(s, _)| *s == target).map(|(_, m)| m.clone()) {
                let Some(req) = c.events.pop_front() else { return };
                self.apply_event(req, &m);
                continue;
            }
            let read = ReadReq::Page { conv, after: target - 1, before: target + 1, limit: 1, viewer: String::new() };
            if self.read(read, ReadFor::Target(conv)) {
                if let Some(c) = self.convs.ready(conv) {
                    c.event_reading = true;
                }
                return;
            }
            let Some(req) = self.convs.ready(conv).and_then(|c| c.events.pop_front()) else { return };
            let (code, msg) = busy("storage reads");
            self.reply_error(req.from, code, msg, Some(req.send.client_msg_id));
        }
    }

    pub(super) fn on_target_read(&mut self, conv: ConvId, r: Result<ReadDone, StoreError>) {
        let Some(c) = self.convs.ready(conv) else { return };
        c.event_reading = false;
        let Some(req) = c.events.pop_front() else { return };
        let target = req.send.target_seq.unwrap_or(0);
        match r {
            Ok(ReadDone::Page(slice)) => match slice.messages.into_iter().find(|(s, _)| *s == target) {
                Some((_, m)) => self.apply_event(req, &m),
                None => {
                    let msg = format!("target {target}: no stored message of this conversation has that seq");
                    self.reply_error(req.from, ErrorCode::BadValue, msg, Some(req.send.client_msg_id));
                }
            },
            Ok(_) => {}
            Err(e) => {
                let (code, msg) = storage_failed(&e);
                self.reply_error(req.from, code, msg, Some(req.send.client_msg_id));
            }
        }
        self.next_event(conv);
    }

    /// Checks `req` against its target `orig` and, if allowed, stores it.
    fn apply_event(&mut self, req: SendReq, orig: &StoredMessage) {
        let now = self.now;
        if self.commit.queued_len() >= self.cfg.max_commit_queue {
            let (code, msg) = busy("commit queue");
            return self.reply_error(req.from, code, msg, Some(req.send.client_msg_id));
        }
        let Some(c) = self.convs.ready(req.conv) else { return };
        // A resend of an event accepted while this one waited: the original ack.
        let key = dedupe_key(&req.user, &req.send.client_msg_id);
        if c.dedupe.get(key).is_some() {
            return self.accept_send(req);
        }
        let target = req.send.target_seq.unwrap_or(0);
        let kind = MsgKind::from_tag(orig.kind).unwrap_or(MsgKind::Data);
        let is_admin = c.group.as_ref().is_some_and(|g| g.admins.iter().any(|a| **a == *req.user));
        let refuse = |code, msg: String| Err((code, msg));
        let verdict = if kind.is_event() || kind == MsgKind::System {
            refuse(ErrorCode::BadValue, format!("message {target} is an event; act on a message"))
        } else if orig.ext.as_ref().is_some_and(|x| x.deleted_by.is_some()) {
            refuse(ErrorCode::BadValue, format!("message {target} was deleted"))
        } else {
            match req.send.kind {
                MsgKind::Edit if *orig.from != *req.user => {
                    refuse(ErrorCode::Forbidden, "only its sender edits a message".to_owned())
                }
                MsgKind::Edit if now.saturating_sub(orig.ts) > self.cfg.edit_window_ms => refuse(
                    ErrorCode::Forbidden,
                    format!("the edit window ({} s) has passed", self.cfg.edit_window_ms / 1000),
                ),
                MsgKind::Edit if kind == MsgKind::Data => {
                    refuse(ErrorCode::BadValue, "data messages are not edited: send a new one".to_owned())
                }
                MsgKind::Edit if kind == MsgKind::Media => {
                    self.media_allowed(&req.send.body).map_err(|m| (ErrorCode::BadValue, m))
                }
                MsgKind::Delete
                    if !is_admin
                        && (*orig.from != *req.user || now.saturating_sub(orig.ts) > self.cfg.delete_window_ms) =>
                {
                    let msg = format!(
                        "a message is deleted for everyone by its sender within {} s, or by a group admin",
                        self.cfg.delete_window_ms / 1000
                    );
                    refuse(ErrorCode::Forbidden, msg)
                }
                _ => Ok(()),
            }
        };
        if let Err((code, msg)) = verdict {
            return self.reply_error(req.from, code, msg, Some(req.send.client_msg_id));
        }
        let side = match req.send.kind {
            MsgKind::Edit => {
                let mut m = orig.clone();
                m.body = req.send.body.clone();
                m.ext.get_or_insert_with(Default::default).edited_at = Some(now);
                Side::Rewrite(target, Arc::new(m))
            }
            MsgKind::Delete => {
                let mut m = orig.clone();
                m.body = Vec::new();
                let x = m.ext.get_or_insert_with(Default::default);
                x.deleted_by = Some(req.user.to_string());
                x.deleted_at = Some(now);
                Side::Rewrite(target, Arc::new(m))
            }
            _ => Side::Reaction {
                seq: target,
                user: req.user.to_string(),
                emoji: String::from_utf8_lossy(&req.send.body).into_owned(),
            },
        };
        let ext = Some(Box::new(MsgExtra { target: Some(target), ..MsgExtra::default() }));
        self.store_message(req, key, ext, None, Some(side));
    }
}
