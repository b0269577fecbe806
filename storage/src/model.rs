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
    /// Append a message.
    Message {
        /// The conversation.
        conv: ConvId,
        /// Its sequence number. Invariant: dense per conversation, assigned by the home shard.
        seq: u64,
        /// The message.
        msg: StoredMessage,
    },
}
