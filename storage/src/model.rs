//! Stored records and the writes a shard commits.

use serde::{Deserialize, Serialize};
use wire::frame::ConvId;

/// A message as stored (its `conv` and `seq` are the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Globally unique, time-ordered id.
    pub message_id: u64,
    /// Sender's user id.
    pub from: String,
    /// Sender's device id.
    pub from_device: String,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Acceptance time, ms since the Unix epoch.
    pub ts: u64,
    /// `wire::frame::MsgKind` tag.
    pub kind: u8,
    /// Opaque body.
    pub body: Vec<u8>,
}

impl StoredMessage {
    /// This message as the `msg` frame of `(conv, seq)` is encoded from.
    pub fn msg_ref(&self, conv: ConvId, seq: u64) -> wire::frame::MsgRef<'_> {
        wire::frame::MsgRef {
            conv,
            seq,
            message_id: self.message_id,
            from: &self.from,
            from_device: &self.from_device,
            ts: self.ts,
            kind: wire::frame::MsgKind::from_tag(self.kind).unwrap_or(wire::frame::MsgKind::Data),
            body: &self.body,
            client_msg_id: &self.client_msg_id,
        }
    }
}

/// What kind of conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvKind {
    /// Two users (or one user's notes to self).
    Direct,
    /// A group (its id has the top bit set; members are in [`ConvMeta::members`]).
    Group(GroupMeta),
}

/// What a group has beyond its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// Display name (may be empty).
    pub name: String,
    /// Admins. Invariant: sorted, no duplicates, each a member.
    pub admins: Vec<String>,
}

/// A conversation's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvMeta {
    /// Its kind.
    pub kind: ConvKind,
    /// Member user ids. Invariant: sorted, no duplicates.
    pub members: Vec<String>,
    /// Creation time, ms since the epoch.
    pub created: u64,
}

/// One durable write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Create (or overwrite) a conversation's metadata and index it under each member.
    Conv {
        /// The conversation.
        conv: ConvId,
        /// Its metadata.
        meta: ConvMeta,
    },
    /// Remove a former member from the user's conversation list (after a `Conv` write
    /// without them, in the same batch).
    Unindex {
        /// The conversation.
        conv: ConvId,
        /// The former member.
        user: String,
    },
    /// A member's receipt cursors in a conversation, at the conversation's home.
    Cursor {
        /// The conversation.
        conv: ConvId,
        /// The member.
        user: String,
        /// The cursors.
        cursor: CursorRecord,
    },
    /// Record a user's durable presence facts (last seen, privacy), at the user's home.
    User {
        /// The user id.
        user: String,
        /// What to keep.
        record: UserRecord,
    },
    /// Append a message.
    Message {
        /// The conversation.
        conv: ConvId,
        /// Its sequence number. Invariant: dense per conversation, assigned by the home shard.
        seq: u64,
        /// The message (shared with its deliveries: never copied to be stored).
        msg: std::sync::Arc<StoredMessage>,
    },
}

/// What a user's home keeps about them across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserRecord {
    /// When the last device went offline (ms since the epoch); `None`: never seen.
    pub last_seen: Option<u64>,
    /// The user hides `last_seen` from others.
    pub hide_last_seen: bool,
    /// The user turned read receipts off: their reads are not shown to others, and
    /// they see no one's.
    pub receipts_off: bool,
}

/// A member's receipt cursors in a conversation: every message up to `delivered` reached
/// one of their devices, every message up to `read` was shown. Invariant: `read <= delivered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CursorRecord {
    /// Highest seq received.
    pub delivered: u64,
    /// Highest seq read.
    pub read: u64,
    /// The member had read receipts off when `read` last moved: it is not shown to others.
    pub private: bool,
}

/// One entry of a conversation's dedupe index: enough to answer a resend with the
/// original ack, without the message body (32 bytes stored, beside the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeEntry {
    /// [`dedupe_key`] of the sender and the client's idempotency key.
    pub key: u128,
    /// The stored message's id.
    pub message_id: u64,
    /// Its acceptance time.
    pub ts: u64,
}

/// The dedupe key of `(sender, client_msg_id)`: a 128-bit hash, so two different keys
/// of one conversation collide with probability about 2^-128 per pair (user ids never
/// contain NUL, so the concatenation is unambiguous).
pub fn dedupe_key(sender: &str, client_msg_id: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(sender.as_bytes());
    h.update(&[0]);
    h.update(client_msg_id.as_bytes());
    h.digest128()
}

/// A conversation's newest seq and the dedupe index of its newest messages (what a
/// home shard loads; no message bodies).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tail {
    /// The highest stored seq (0: none).
    pub last_seq: u64,
    /// `(seq, entry)` of the newest messages that carry a client idempotency key,
    /// ascending.
    pub recent: Vec<(u64, DedupeEntry)>,
}
