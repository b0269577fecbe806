//! The group-commit queue of a shard: accepted messages and group events wait here for
//! the next commit; at most one commit is in flight, so commits finish in order, and
//! nothing is acknowledged before the commit holding it is durable.
//!
//! Bounds: `max_commit_queue` accepted messages wait (a send past it is refused with a
//! retryable `unavailable`); duplicate acks waiting for their original to become
//! durable are bounded by the same count (each waits on a queued original).

use std::sync::Arc;

use storage::model::{ConvMeta, MemberRow, StoredMessage, Write};
use wire::frame::{Ack, ConvId, GroupInfo};

use crate::ids::ConnRef;

/// An accepted message (or group event) on its way to storage.
#[derive(Debug)]
pub struct Pending {
    /// Who gets the ack (or `group_info`).
    pub from: ConnRef,
    /// The conversation.
    pub conv: ConvId,
    /// The message's seq.
    pub seq: u64,
    /// The message: one copy, shared by the write, the ack and every delivery.
    pub msg: Arc<StoredMessage>,
    /// Metadata to write first (a DM's first message, a group event).
    pub meta: Option<ConvMeta>,
    /// For a group event: the member rows it writes (joined or left).
    pub rows: Vec<(String, MemberRow)>,
    /// For a group event: who gets it (the members after it, and those it removed).
    pub audience: Vec<String>,
    /// For a group event: the `group_info` the requester gets instead of an ack.
    pub info: Option<GroupInfo>,
    /// For an edit, delete or reaction: what else it writes, in the same batch.
    pub side: Option<Side>,
}

/// What an edit, a delete or a reaction writes besides its own event.
#[derive(Debug)]
pub enum Side {
    /// The message at `.0` in its new state (new body, or the tombstone).
    Rewrite(u64, Arc<StoredMessage>),
    /// A member's reaction to message `seq` (empty: removed).
    Reaction {
        /// The message.
        seq: u64,
        /// The member.
        user: String,
        /// The emoji.
        emoji: String,
    },
}

/// A shard's group commits.
#[derive(Debug, Default)]
pub struct CommitQueue {
    /// Accepted, waiting for the next commit, in acceptance order.
    pub queued: Vec<Pending>,
    /// The batch being committed.
    pub in_flight: Option<Vec<Pending>>,
    /// Duplicate acks waiting for their original to become durable.
    pub deferred: Vec<(ConnRef, Ack)>,
    /// User records to write with the next commit.
    pub user_writes: Vec<Write>,
    /// Conversations whose cursors the commit in flight writes.
    pub cursor_convs: Vec<ConvId>,
    /// Delete-for-me requests waiting for the next commit (counted in
    /// `max_commit_queue` with the messages).
    pub hides: Vec<HideReq>,
    /// Those the commit in flight writes.
    pub hides_in_flight: Vec<HideReq>,
}

/// A delete-for-me request on its way to storage.
#[derive(Debug)]
pub struct HideReq {
    /// Who asked (told if it fails).
    pub from: ConnRef,
    /// The user.
    pub user: String,
    /// The conversation.
    pub conv: ConvId,
    /// The messages.
    pub seqs: Vec<u64>,
}

impl CommitQueue {
    /// Nothing queued or being written.
    pub fn is_idle(&self) -> bool {
        self.queued.is_empty()
            && self.in_flight.is_none()
            && self.user_writes.is_empty()
            && self.hides.is_empty()
            && self.hides_in_flight.is_empty()
    }

    /// Messages (and delete-for-me requests) waiting.
    pub fn queued_len(&self) -> usize {
        self.queued.len() + self.hides.len()
    }

    /// Work waits and no commit runs.
    pub fn wants_commit(&self) -> bool {
        self.in_flight.is_none() && (!self.queued.is_empty() || !self.user_writes.is_empty())
    }

    /// Moves everything queued into the in-flight batch and returns its writes (in
    /// acceptance order: metadata before the message that needs it), then `extra`.
    pub fn take(&mut self, extra: Vec<Write>) -> Option<Vec<Write>> {
        if self.in_flight.is_some() || (!self.wants_commit() && extra.is_empty()) {
            return None;
        }
        let batch = std::mem::take(&mut self.queued);
        let mut writes = Vec::with_capacity(batch.len() + self.user_writes.len());
        for p in &batch {
            if let Some(meta) = &p.meta {
                writes.push(Write::Conv { conv: p.conv, meta: meta.clone() });
            }
            for (user, row) in &p.rows {
                writes.push(Write::Member { conv: p.conv, user: user.clone(), row: *row });
            }
            writes.push(Write::Message { conv: p.conv, seq: p.seq, msg: p.msg.clone() });
            match &p.side {
                Some(Side::Rewrite(seq, msg)) => {
                    writes.push(Write::Message { conv: p.conv, seq: *seq, msg: msg.clone() })
                }
                Some(Side::Reaction { seq, user, emoji }) => {
                    writes.push(Write::Reaction { conv: p.conv, seq: *seq, user: user.clone(), emoji: emoji.clone() })
                }
                None => {}
            }
        }
        writes.append(&mut self.user_writes);
        writes.extend(extra);
        self.in_flight = Some(batch);
        Some(writes)
    }
}
