//! What the shards store, behind one interface, and the embedded backend.
//!
//! Each shard owns one storage partition holding the durable data of its slice of
//! conversations and users. The interface ([`Store`]) is synchronous on purpose: a shard
//! never calls it on its reactor; it hands a whole batch to its executor's blocking pool
//! (`spawn_blocking`) and awaits the result, so one durable sync covers every write of
//! the batch (group commit) and the reactor keeps serving sockets meanwhile.
//!
//! # Layout
//! - [`model`]: the records ([`model::StoredMessage`], [`model::ConvMeta`]) and writes.
//! - [`embedded`]: the default backend, one fjall database per shard partition.
//! - [`memory`]: a backend in memory, for the shard core's deterministic simulation.
//! - [`read`]: the reads a shard core asks for, as data, and how a store answers them.
//! - [`layout`]: the data directory: partition paths and the recorded shard count.
//! - [`log`]: the commit log's format and its replay at start-up.
//! - [`conformance`]: the behaviour every backend must show, run against each one.
#![forbid(unsafe_code)]

pub mod conformance;
pub mod embedded;
pub mod layout;
pub mod log;
pub mod memory;
pub mod model;
pub mod read;

use wire::frame::ConvId;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine or the disk failed; the same call may succeed later. Nothing in the
    /// failed batch is acknowledged.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes could not be decoded: a bug or corruption; retrying will not help.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The data directory does not fit this configuration (e.g. another shard count).
    #[error("{0}")]
    Layout(String),
}

impl StoreError {
    /// True when retrying the same call may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A page read from a conversation: messages in ascending `seq`, and whether older
/// messages exist in the requested range before the first one returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Slice {
    /// `(seq, message)`, ascending.
    pub messages: Vec<(u64, model::StoredMessage)>,
    /// True when the range holds more (older) messages than were returned.
    pub has_more: bool,
}

/// One shard's storage partition. Calls block; run them off the reactor.
pub trait Store: Send + Sync + 'static {
    /// Applies every write atomically and durably: when this returns `Ok`, all of them
    /// survive a crash (fsync'd); on `Err`, none may be assumed stored.
    fn commit(&self, writes: &[model::Write]) -> Result<(), StoreError>;

    /// Applies every write atomically without waiting for the disk: a commit log made
    /// them durable already. Reads see them when this returns; [`Store::flush`] makes
    /// them durable here. A backend without a cheaper path commits.
    fn apply(&self, writes: &[model::Write]) -> Result<(), StoreError> {
        self.commit(writes)
    }

    /// Makes everything applied so far durable (before the commit log is reused).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The conversation's metadata, if it exists.
    fn conv_meta(&self, conv: ConvId) -> Result<Option<model::ConvMeta>, StoreError>;

    /// The newest `limit` messages with `after < seq < before`, ascending.
    fn newest(&self, conv: ConvId, after: u64, before: u64, limit: usize) -> Result<Slice, StoreError>;

    /// The conversations (homed on this partition) that `user` is a member of.
    fn user_convs(&self, user: &str) -> Result<Vec<ConvId>, StoreError>;

    /// The conversation's newest seq and the dedupe index of (up to) its newest `limit`
    /// messages with a client idempotency key. Reads no message body.
    fn conv_tail(&self, conv: ConvId, limit: usize) -> Result<model::Tail, StoreError>;

    /// The members' receipt cursors of a conversation (members never written: absent).
    fn cursors(&self, conv: ConvId) -> Result<Vec<(String, model::CursorRecord)>, StoreError>;

    /// What the user's home keeps about `user` (default when never written).
    fn user_record(&self, user: &str) -> Result<model::UserRecord, StoreError>;

    /// A group's member rows (current and former members), by user id.
    fn members(&self, conv: ConvId) -> Result<Vec<(String, model::MemberRow)>, StoreError>;

    /// One member row of a group, if the user ever was a member (by row).
    fn member(&self, conv: ConvId, user: &str) -> Result<Option<model::MemberRow>, StoreError>;

    /// Reactions to messages `lo..=hi` of a conversation: `(seq, user, emoji)`, by seq.
    fn reactions(&self, conv: ConvId, lo: u64, hi: u64) -> Result<Vec<(u64, String, String)>, StoreError>;

    /// The messages `lo..=hi` of a conversation `user` hid (delete for me), ascending.
    fn hidden(&self, conv: ConvId, user: &str, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError>;

    /// A group's last message as recorded on this partition.
    fn group_last(&self, conv: ConvId) -> Result<Option<(u64, model::InboxLast)>, StoreError>;

    /// The user's conversation-list entries (at the user's home), ordered by conversation
    /// (groups the user is in carry the group's last message, see [`Store::group_last`]).
    fn inbox(&self, user: &str) -> Result<Vec<model::InboxEntry>, StoreError>;
}
