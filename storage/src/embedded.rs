//! The embedded backend: one fjall database per shard partition.
//!
//! Keyspaces:
//! - `msgs`: `conv (16 B, big-endian) ++ seq (8 B, big-endian)` -> postcard [`StoredMessage`];
//!   big-endian keys make a conversation one contiguous, seq-ordered range.
//! - `convs`: `conv` -> postcard [`ConvMeta`].
//! - `user_convs`: `user ++ 0xFF ++ conv` -> empty (0xFF never occurs in UTF-8, so a
//!   user's prefix never matches another user's).
//! - `dedupe`: `conv ++ seq` -> [`DedupeEntry`] (32 bytes), for each message with a client
//!   idempotency key: what loading a conversation reads instead of message bodies.
//! - `users`: `user` -> postcard [`UserRecord`] (last seen, privacy).
//! - `cursors`: `conv ++ user` -> delivered and read seqs and a private flag (17 bytes),
//!   a member's receipts.
//! - `members`: `conv ++ user` -> postcard [`MemberRow`], a group's current and former
//!   members (one row per change: adding one member to a large group writes one row).
//! - `group_last`: `conv` -> postcard `(at, InboxLast)`, a group's newest message as its
//!   members' lists on this partition show it (one record per group per partition).
//! - `hidden`: `conv ++ user ++ 0xFF ++ seq` -> empty: messages a user deleted for
//!   themselves.
//! - `reactions`: `conv ++ seq ++ user` -> the emoji (UTF-8), one per member per message.
//! - `inbox`: `user ++ 0xFF ++ conv ++ tag` -> postcard `(at, InboxValue)`, one record per
//!   part of a user's conversation-list entry (last message, read, own, muted, archived,
//!   pinned), so no write reads another first and a user's list is one prefix scan.
//!
//! A commit is one fjall write batch with `PersistMode::SyncData`: one fdatasync of the
//! journal per batch, whatever its size. With the commit log in front ([`crate::log`]),
//! batches are applied unsynced and `flush` persists the journal before the log is reused.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use wire::frame::ConvId;

use crate::model::{
    dedupe_key, is_group, ConvMeta, CursorRecord, DedupeEntry, InboxEntry, InboxLast, InboxValue, MemberRow,
    StoredMessage, Tail, UserRecord, Write,
};
use crate::{Slice, Store, StoreError};

/// One partition on local disk.
pub struct EmbeddedStore {
    db: Database,
    msgs: Keyspace,
    convs: Keyspace,
    user_convs: Keyspace,
    dedupe: Keyspace,
    users: Keyspace,
    cursors: Keyspace,
    inbox: Keyspace,
    reactions: Keyspace,
    members: Keyspace,
    group_last: Keyspace,
    hidden: Keyspace,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn msg_key(conv: ConvId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&conv.to_be_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `conv ++ user ++ 0xFF ++ seq`: a user's hidden messages of one conversation are one
/// seq-ordered range (0xFF never occurs in UTF-8).
fn hidden_key(conv: ConvId, user: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + user.len() + 9);
    k.extend_from_slice(&conv.to_be_bytes());
    k.extend_from_slice(user.as_bytes());
    k.push(0xFF);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn user_prefix(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 17);
    k.extend_from_slice(user.as_bytes());
    k.push(0xFF);
    k
}

impl EmbeddedStore {
    /// Opens (or creates) the partition at `dir`.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Database::builder(dir).worker_threads(1).open().map_err(unavailable)?;
        let msgs = db.keyspace("msgs", KeyspaceCreateOptions::default).map_err(unavailable)?;
        let convs = db.keyspace("convs", KeyspaceCreateOptions::default).map_err(unavailable)?;
        let user_convs = db.keyspace("user_convs", KeyspaceCreateOptions::default).map_err(unavailable)?;
        let dedupe = db.keyspace("dedupe", KeyspaceCreateOptions::default).map_err(unavailable)?;
        let users = db.keyspace("users", KeyspaceCreateOptions::default).map_err(unavailable)?;
        let cursors = db.keyspace("cursors", KeyspaceCreateOptions::default).map_err(unavailable)?;
        let inbox = db.keyspace("inbox", KeyspaceCreateOptions::default).map_err(unavailable)?;
        let reactions = db.keyspace("reactions", KeyspaceCreateOptions::default).map_err(unavailable)?;
        let members = db.keyspace("members", KeyspaceCreateOptions::default).map_err(unavailable)?;
        let group_last = db.keyspace("group_last", KeyspaceCreateOptions::default).map_err(unavailable)?;
        let hidden = db.keyspace("hidden", KeyspaceCreateOptions::default).map_err(unavailable)?;
        Ok(EmbeddedStore {
            db,
            msgs,
            convs,
            user_convs,
            dedupe,
            users,
            cursors,
            inbox,
            reactions,
            members,
            group_last,
            hidden,
        })
    }
}

impl EmbeddedStore {
    /// One fjall batch of `writes`, persisted as `durability` says.
    fn write_batch(&self, writes: &[Write], durability: Option<PersistMode>) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(durability);
        for w in writes {
            match w {
                Write::Conv { conv, meta } => {
                    let v = postcard::to_allocvec(meta).map_err(corrupt)?;
                    batch.insert(&self.convs, conv.to_be_bytes().to_vec(), v);
                    for user in &meta.members {
                        let mut k = user_prefix(user);
                        k.extend_from_slice(&conv.to_be_bytes());
                        batch.insert(&self.user_convs, k, Vec::new());
                    }
                }
                Write::Unindex { conv, user } => {
                    let mut k = user_prefix(user);
                    k.extend_from_slice(&conv.to_be_bytes());
                    batch.remove(&self.user_convs, k);
                }
                Write::Message { conv, seq, msg } => {
                    let v = postcard::to_allocvec(&**msg).map_err(corrupt)?;
                    batch.insert(&self.msgs, msg_key(*conv, *seq).to_vec(), v);
                    if !msg.client_msg_id.is_empty() {
                        let e = DedupeEntry {
                            key: dedupe_key(&msg.from, &msg.client_msg_id),
                            message_id: msg.message_id,
                            ts: msg.ts,
                        };
                        batch.insert(&self.dedupe, msg_key(*conv, *seq).to_vec(), encode_dedupe(&e).to_vec());
                    }
                }
                Write::User { user, record } => {
                    let v = postcard::to_allocvec(record).map_err(corrupt)?;
                    batch.insert(&self.users, user.as_bytes().to_vec(), v);
                }
                Write::Cursor { conv, user, cursor } => {
                    let mut k = conv.to_be_bytes().to_vec();
                    k.extend_from_slice(user.as_bytes());
                    let mut v = [0u8; 17];
                    v[..8].copy_from_slice(&cursor.delivered.to_be_bytes());
                    v[8..16].copy_from_slice(&cursor.read.to_be_bytes());
                    v[16] = u8::from(cursor.private);
                    batch.insert(&self.cursors, k, v.to_vec());
                }
                Write::Hide { conv, user, seq } => {
                    batch.insert(&self.hidden, hidden_key(*conv, user, *seq), Vec::new());
                }
                Write::GroupLast { conv, at, last } => {
                    let v = postcard::to_allocvec(&(*at, last)).map_err(corrupt)?;
                    batch.insert(&self.group_last, conv.to_be_bytes().to_vec(), v);
                }
                Write::Member { conv, user, row } => {
                    let mut k = user_prefix(user);
                    k.extend_from_slice(&conv.to_be_bytes());
                    batch.insert(&self.user_convs, k, Vec::new());
                    let mut k = conv.to_be_bytes().to_vec();
                    k.extend_from_slice(user.as_bytes());
                    batch.insert(&self.members, k, postcard::to_allocvec(row).map_err(corrupt)?);
                }
                Write::Reaction { conv, seq, user, emoji } => {
                    let mut k = msg_key(*conv, *seq).to_vec();
                    k.extend_from_slice(user.as_bytes());
                    if emoji.is_empty() {
                        batch.remove(&self.reactions, k);
                    } else {
                        batch.insert(&self.reactions, k, emoji.as_bytes().to_vec());
                    }
                }
                Write::Inbox { user, conv, at, value: v } => {
                    let mut k = user_prefix(user);
                    k.extend_from_slice(&conv.to_be_bytes());
                    k.push(v.tag());
                    batch.insert(&self.inbox, k, postcard::to_allocvec(&(*at, v)).map_err(corrupt)?);
                }
            }
        }
        batch.commit().map_err(unavailable)
    }
}

fn encode_dedupe(e: &DedupeEntry) -> [u8; 32] {
    let mut v = [0u8; 32];
    v[..16].copy_from_slice(&e.key.to_be_bytes());
    v[16..24].copy_from_slice(&e.message_id.to_be_bytes());
    v[24..].copy_from_slice(&e.ts.to_be_bytes());
    v
}

fn decode_dedupe(v: &[u8]) -> Result<DedupeEntry, StoreError> {
    let v: &[u8; 32] = v.try_into().map_err(|_| corrupt("dedupe entry is not 32 bytes"))?;
    let word = |r: std::ops::Range<usize>| u64::from_be_bytes(v[r].try_into().expect("8 bytes"));
    Ok(DedupeEntry {
        key: u128::from_be_bytes(v[..16].try_into().expect("16 bytes")),
        message_id: word(16..24),
        ts: word(24..32),
    })
}

fn seq_of(k: &[u8]) -> Result<u64, StoreError> {
    let b: [u8; 8] = k.get(16..24).and_then(|s| s.try_into().ok()).ok_or_else(|| corrupt("short key"))?;
    Ok(u64::from_be_bytes(b))
}

impl Store for EmbeddedStore {
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.write_batch(writes, Some(PersistMode::SyncData))
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.write_batch(writes, None)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll).map_err(unavailable)
    }

    fn conv_meta(&self, conv: ConvId) -> Result<Option<ConvMeta>, StoreError> {
        match self.convs.get(conv.to_be_bytes()).map_err(unavailable)? {
            None => Ok(None),
            Some(v) => ConvMeta::decode(&v).map(Some).map_err(corrupt),
        }
    }

    fn newest(&self, conv: ConvId, after: u64, before: u64, limit: usize) -> Result<Slice, StoreError> {
        if before <= after.saturating_add(1) {
            return Ok(Slice::default());
        }
        let lo = msg_key(conv, after.saturating_add(1));
        let hi = msg_key(conv, before);
        let mut messages = Vec::with_capacity(limit.min(256));
        let mut has_more = false;
        for item in self.msgs.range(lo..hi).rev() {
            let (k, v) = item.into_inner().map_err(unavailable)?;
            if messages.len() == limit {
                has_more = true;
                break;
            }
            let msg = StoredMessage::decode(&v).map_err(corrupt)?;
            messages.push((seq_of(&k)?, msg));
        }
        messages.reverse();
        Ok(Slice { messages, has_more })
    }

    fn user_convs(&self, user: &str) -> Result<Vec<ConvId>, StoreError> {
        let prefix = user_prefix(user);
        let mut out = Vec::new();
        for item in self.user_convs.prefix(&prefix) {
            let k = item.key().map_err(unavailable)?;
            let id: [u8; 16] =
                k.get(prefix.len()..).and_then(|s| s.try_into().ok()).ok_or_else(|| corrupt("bad user_convs key"))?;
            out.push(ConvId(u128::from_be_bytes(id)));
        }
        Ok(out)
    }

    fn members(&self, conv: ConvId) -> Result<Vec<(String, MemberRow)>, StoreError> {
        let prefix = conv.to_be_bytes();
        let mut out = Vec::new();
        for item in self.members.prefix(prefix) {
            let (k, v) = item.into_inner().map_err(unavailable)?;
            let user =
                k.get(16..).and_then(|u| std::str::from_utf8(u).ok()).ok_or_else(|| corrupt("bad members key"))?;
            out.push((user.to_owned(), postcard::from_bytes(&v).map_err(corrupt)?));
        }
        Ok(out)
    }

    fn member(&self, conv: ConvId, user: &str) -> Result<Option<MemberRow>, StoreError> {
        let mut k = conv.to_be_bytes().to_vec();
        k.extend_from_slice(user.as_bytes());
        match self.members.get(k).map_err(unavailable)? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(corrupt),
        }
    }

    fn reactions(&self, conv: ConvId, lo: u64, hi: u64) -> Result<Vec<(u64, String, String)>, StoreError> {
        let (from, to) = (msg_key(conv, lo), msg_key(conv, hi.saturating_add(1)));
        let mut out = Vec::new();
        for item in self.reactions.range(from..to) {
            let (k, v) = item.into_inner().map_err(unavailable)?;
            let seq = seq_of(&k)?;
            let user =
                k.get(24..).and_then(|u| std::str::from_utf8(u).ok()).ok_or_else(|| corrupt("bad reactions key"))?;
            let emoji = String::from_utf8(v.to_vec()).map_err(|_| corrupt("bad reaction"))?;
            out.push((seq, user.to_owned(), emoji));
        }
        Ok(out)
    }

    fn hidden(&self, conv: ConvId, user: &str, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for item in self.hidden.range(hidden_key(conv, user, lo)..=hidden_key(conv, user, hi)) {
            let k = item.key().map_err(unavailable)?;
            let tail: [u8; 8] = k
                .get(k.len().saturating_sub(8)..)
                .and_then(|t| t.try_into().ok())
                .ok_or_else(|| corrupt("bad hidden key"))?;
            out.push(u64::from_be_bytes(tail));
        }
        Ok(out)
    }

    fn group_last(&self, conv: ConvId) -> Result<Option<(u64, InboxLast)>, StoreError> {
        match self.group_last.get(conv.to_be_bytes()).map_err(unavailable)? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(corrupt),
        }
    }

    fn inbox(&self, user: &str) -> Result<Vec<InboxEntry>, StoreError> {
        let prefix = user_prefix(user);
        let mut out: Vec<InboxEntry> = Vec::new();
        for item in self.inbox.prefix(&prefix) {
            let (k, v) = item.into_inner().map_err(unavailable)?;
            let id: [u8; 16] = k
                .get(prefix.len()..prefix.len() + 16)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| corrupt("bad inbox key"))?;
            let conv = ConvId(u128::from_be_bytes(id));
            let (at, value): (u64, InboxValue) = postcard::from_bytes(&v).map_err(corrupt)?;
            if out.last().is_none_or(|e| e.conv != conv) {
                out.push(InboxEntry { conv, ..InboxEntry::default() });
            }
            if let Some(e) = out.last_mut() {
                e.apply(at, value);
            }
        }
        for e in out.iter_mut().filter(|e| is_group(e.conv) && e.in_group()) {
            if let Some((at, last)) = self.group_last(e.conv)? {
                e.with_group_last(at, &last);
            }
        }
        Ok(out)
    }

    fn conv_tail(&self, conv: ConvId, limit: usize) -> Result<Tail, StoreError> {
        let (lo, hi) = (msg_key(conv, 0), msg_key(conv, u64::MAX));
        let last_seq = match self.msgs.range(lo..=hi).next_back() {
            None => 0,
            Some(item) => seq_of(&item.key().map_err(unavailable)?)?,
        };
        let mut recent = Vec::with_capacity(limit.min(1024));
        for item in self.dedupe.range(lo..=hi).rev().take(limit) {
            let (k, v) = item.into_inner().map_err(unavailable)?;
            recent.push((seq_of(&k)?, decode_dedupe(&v)?));
        }
        recent.reverse();
        Ok(Tail { last_seq, recent })
    }

    fn cursors(&self, conv: ConvId) -> Result<Vec<(String, CursorRecord)>, StoreError> {
        let prefix = conv.to_be_bytes();
        let mut out = Vec::new();
        for item in self.cursors.prefix(prefix) {
            let (k, v) = item.into_inner().map_err(unavailable)?;
            let user = std::str::from_utf8(&k[16..]).map_err(corrupt)?.to_owned();
            let v: &[u8; 17] = (&*v).try_into().map_err(|_| corrupt("cursor is not 17 bytes"))?;
            let word = |r: std::ops::Range<usize>| u64::from_be_bytes(v[r].try_into().expect("8 bytes"));
            out.push((user, CursorRecord { delivered: word(0..8), read: word(8..16), private: v[16] != 0 }));
        }
        Ok(out)
    }

    fn user_record(&self, user: &str) -> Result<UserRecord, StoreError> {
        match self.users.get(user.as_bytes()).map_err(unavailable)? {
            None => Ok(UserRecord::default()),
            Some(v) => postcard::from_bytes(&v).map_err(corrupt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        crate::conformance::run(|dir| Box::new(EmbeddedStore::open(dir).unwrap()));
    }
}
