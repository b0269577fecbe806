//! The embedded backend: one fjall database per shard partition.
//!
//! Keyspaces:
//! - `msgs`: `conv (16 B, big-endian) ++ seq (8 B, big-endian)` -> postcard [`StoredMessage`];
//!   big-endian keys make a conversation one contiguous, seq-ordered range.
//! - `convs`: `conv` -> postcard [`ConvMeta`].
//! - `user_convs`: `user ++ 0xFF ++ conv` -> empty (0xFF never occurs in UTF-8, so a
//!   user's prefix never matches another user's).
//!
//! A commit is one fjall write batch with `PersistMode::SyncData`: one fdatasync of the
//! journal per batch, whatever its size. With the commit log in front ([`crate::log`]),
//! batches are applied unsynced and `flush` persists the journal before the log is reused.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use wire::frame::ConvId;

use crate::model::{ConvMeta, StoredMessage, Write};
use crate::{Slice, Store, StoreError};

/// One partition on local disk.
pub struct EmbeddedStore {
    db: Database,
    msgs: Keyspace,
    convs: Keyspace,
    user_convs: Keyspace,
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
        Ok(EmbeddedStore { db, msgs, convs, user_convs })
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
                    let v = postcard::to_allocvec(msg).map_err(corrupt)?;
                    batch.insert(&self.msgs, msg_key(*conv, *seq).to_vec(), v);
                }
            }
        }
        batch.commit().map_err(unavailable)
    }
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
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(corrupt),
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
            let seq_bytes: [u8; 8] =
                k.get(16..24).and_then(|s| s.try_into().ok()).ok_or_else(|| corrupt("short key"))?;
            let msg: StoredMessage = postcard::from_bytes(&v).map_err(corrupt)?;
            messages.push((u64::from_be_bytes(seq_bytes), msg));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        crate::conformance::run(|dir| Box::new(EmbeddedStore::open(dir).unwrap()));
    }
}
