//! The reads a shard core asks for, as plain data ([`ReadReq`]), and what they come back
//! as ([`ReadDone`]). The core never calls a store: it emits a request, and whoever
//! owns the store (the gateway's blocking pool, or the simulation) runs [`execute`] and
//! hands the answer back as an event. Every backend answers the same requests.

use wire::frame::{ConvId, ReactionCount, SyncPoint};

use crate::model::{ConvMeta, CursorRecord, InboxEntry, MemberRow, Tail, UserRecord};
use crate::{Slice, Store, StoreError};

/// A read for a shard's own partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadReq {
    /// A conversation's metadata, newest seq and dedupe index (no bodies).
    Conv {
        /// The conversation.
        conv: ConvId,
        /// Dedupe entries to read.
        dedupe: usize,
    },
    /// A page of a conversation, newest first: `limit` messages with seq below `before`.
    Page {
        /// The conversation.
        conv: ConvId,
        /// Exclusive lower bound (a member added later sees from their join on).
        after: u64,
        /// Exclusive upper bound.
        before: u64,
        /// At most this many.
        limit: usize,
        /// Who asks (their own reactions are marked).
        viewer: String,
    },
    /// A device's sync: for each of `user`'s conversations in this partition, the
    /// newest `per_conv` messages after the device's last seen seq.
    Sync {
        /// The user.
        user: String,
        /// The device's last seen seqs.
        points: Vec<SyncPoint>,
        /// Messages per conversation.
        per_conv: usize,
    },
    /// A user's durable presence facts.
    User {
        /// The user.
        user: String,
    },
    /// A group member row (for a former member's history).
    Member {
        /// The group.
        conv: ConvId,
        /// The user.
        user: String,
    },
    /// A user's conversation-list entries (at the user's home).
    Inbox {
        /// The user.
        user: String,
    },
}

/// What a [`ReadReq`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadDone {
    /// For [`ReadReq::Conv`].
    Conv {
        /// Metadata (`None`: no such conversation; boxed: it is large and most answers
        /// are small).
        meta: Option<Box<ConvMeta>>,
        /// Newest seq and dedupe index.
        tail: Tail,
        /// The members' receipt cursors.
        cursors: Vec<(String, CursorRecord)>,
        /// A group's member rows (current and former; empty for DMs and groups stored
        /// before rows existed, whose members are in `meta`).
        rows: Vec<(String, MemberRow)>,
    },
    /// For [`ReadReq::Page`].
    Page(Slice),
    /// For [`ReadReq::Sync`]: one slice per conversation with newer messages.
    Sync(Vec<(ConvId, Slice)>),
    /// For [`ReadReq::User`].
    User(UserRecord),
    /// For [`ReadReq::Member`].
    Member(Option<MemberRow>),
    /// For [`ReadReq::Inbox`].
    Inbox(Vec<InboxEntry>),
}

/// Answers `req` from `store` (blocking: run it off a shard's reactor).
pub fn execute(store: &dyn Store, req: &ReadReq) -> Result<ReadDone, StoreError> {
    Ok(match req {
        ReadReq::Conv { conv, dedupe } => {
            let meta = store.conv_meta(*conv)?;
            let (tail, cursors, rows) = match &meta {
                Some(m) if matches!(m.kind, crate::model::ConvKind::Group(_)) => {
                    (store.conv_tail(*conv, *dedupe)?, store.cursors(*conv)?, store.members(*conv)?)
                }
                Some(_) => (store.conv_tail(*conv, *dedupe)?, store.cursors(*conv)?, Vec::new()),
                None => (Tail::default(), Vec::new(), Vec::new()),
            };
            ReadDone::Conv { meta: meta.map(Box::new), tail, cursors, rows }
        }
        ReadReq::Page { conv, after, before, limit, viewer } => {
            let mut slice = store.newest(*conv, *after, *before, *limit)?;
            without_hidden(store, *conv, &mut slice, viewer)?;
            with_reactions(store, *conv, &mut slice, viewer)?;
            ReadDone::Page(slice)
        }
        ReadReq::Sync { user, points, per_conv } => {
            let mut pages = Vec::new();
            for conv in store.user_convs(user)? {
                let after = points.iter().find(|p| p.conv == conv).map_or(0, |p| p.seq);
                // A group member sees from their join, a former one up to their leaving.
                let (after, before) = match store.member(conv, user)? {
                    Some(row) => row.clamp(after, u64::MAX),
                    None => (after, u64::MAX),
                };
                let mut slice = store.newest(conv, after, before, *per_conv)?;
                without_hidden(store, conv, &mut slice, user)?;
                with_reactions(store, conv, &mut slice, user)?;
                if !slice.messages.is_empty() {
                    pages.push((conv, slice));
                }
            }
            ReadDone::Sync(pages)
        }
        ReadReq::User { user } => ReadDone::User(store.user_record(user)?),
        ReadReq::Inbox { user } => ReadDone::Inbox(store.inbox(user)?),
        ReadReq::Member { conv, user } => ReadDone::Member(store.member(*conv, user)?),
    })
}

/// Drops from `slice` the messages `viewer` hid (delete for me). A page may then hold
/// fewer than asked; `has_more` still tells whether older ones exist.
fn without_hidden(store: &dyn Store, conv: ConvId, slice: &mut Slice, viewer: &str) -> Result<(), StoreError> {
    let Some((lo, hi)) = bounds(slice) else { return Ok(()) };
    if viewer.is_empty() {
        return Ok(());
    }
    drop_hidden(slice, &store.hidden(conv, viewer, lo, hi)?);
    Ok(())
}

/// The lowest and highest seq of a page (`None`: empty).
pub fn bounds(slice: &Slice) -> Option<(u64, u64)> {
    Some((slice.messages.first()?.0, slice.messages.last()?.0))
}

/// Removes the messages whose seq is in `hidden` (ascending) from `slice`.
pub fn drop_hidden(slice: &mut Slice, hidden: &[u64]) {
    if !hidden.is_empty() {
        slice.messages.retain(|(s, _)| hidden.binary_search(s).is_err());
    }
}

/// Adds each message's reactions (counts per emoji, most first, and `viewer`'s own) to
/// the messages of `slice`.
fn with_reactions(store: &dyn Store, conv: ConvId, slice: &mut Slice, viewer: &str) -> Result<(), StoreError> {
    let Some((lo, hi)) = bounds(slice) else { return Ok(()) };
    add_reactions(slice, &store.reactions(conv, lo, hi)?, viewer);
    Ok(())
}

/// Adds to the messages of `slice` the reactions in `all` (`(seq, user, emoji)`): counts
/// per emoji, most first, and `viewer`'s own.
pub fn add_reactions(slice: &mut Slice, all: &[(u64, String, String)], viewer: &str) {
    if all.is_empty() {
        return;
    }
    for (seq, m) in &mut slice.messages {
        let mine: Vec<&(u64, String, String)> = all.iter().filter(|r| r.0 == *seq).collect();
        if mine.is_empty() {
            continue;
        }
        let mut counts: Vec<ReactionCount> = Vec::new();
        for (_, _, emoji) in &mine {
            match counts.iter_mut().find(|c| c.emoji == *emoji) {
                Some(c) => c.count += 1,
                None => counts.push(ReactionCount { emoji: emoji.clone(), count: 1 }),
            }
        }
        counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.emoji.cmp(&b.emoji)));
        let ext = m.ext.get_or_insert_with(Default::default);
        ext.reactions = counts;
        ext.my_reaction = mine.iter().find(|r| r.1 == viewer).map(|r| r.2.clone());
    }
}
