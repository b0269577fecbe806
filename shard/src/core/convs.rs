//! Conversations homed on this shard: members, seq, dedupe window and typing, loaded
//! from storage on first use and evicted when idle.
//!
//! Bounds:
//! - loaded conversations: their estimated memory ([`Conv::bytes`]) is kept under
//!   `conv_memory` per shard by a CLOCK sweep on the beat: a conversation with nothing
//!   queued, in flight or typing, and not used since the last pass, is dropped (it is
//!   reloaded from storage, dedupe index included, on next use);
//! - a conversation that does not exist leaves no entry: its id goes to a negative cache
//!   of `negative_cache` ids (oldest forgotten first), so asking again costs no read;
//! - requests waiting for a load: `max_waiters` per conversation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use storage::model::{ConvSummary, CursorRecord, GroupMeta};
use wire::frame::ConvId;

use super::dedupe::Dedupe;
use super::route::ConvReq;
use super::{Hasher, Map};
use crate::ids::home_of_user;

/// A conversation's entry.
#[derive(Debug)]
pub enum Slot {
    /// Reading state from storage; requests wait here in arrival order.
    Loading(Vec<ConvReq>),
    /// In memory.
    Ready(Box<Conv>),
}

/// Someone typing: `(user, last relayed ms, expires ms)`.
pub type Typist = (Box<str>, u64, u64);

/// A loaded conversation.
#[derive(Debug)]
pub struct Conv {
    /// Member user ids. Invariant: sorted, no duplicates.
    pub members: Vec<Box<str>>,
    /// Highest seq assigned (stored or in flight). Invariant: dense from 1.
    pub last_seq: u64,
    /// Highest seq known durable. Invariant: `durable_seq <= last_seq`.
    pub durable_seq: u64,
    /// Recent `(sender, client_msg_id)` keys.
    pub dedupe: Dedupe,
    /// False until the conversation exists (stored, or created by a queued write).
    pub exists: bool,
    /// A group's name and admins (`None` for a DM).
    pub group: Option<GroupMeta>,
    /// Creation time (ms since the epoch).
    pub created: u64,
    /// Members typing now. Never stored.
    pub typists: Vec<Typist>,
    /// Members grouped by home shard, shared by every delivery until membership
    /// changes (empty: rebuild on next use).
    fanout: Vec<Arc<[Box<str>]>>,
    /// What the members' lists show of it, shared by every delivery until membership or
    /// name changes (`None`: rebuild on next use).
    summary: Option<Arc<ConvSummary>>,
    /// Messages of this conversation queued or being committed (it stays loaded).
    pub in_flight: u32,
    /// Used since the eviction sweep last passed (CLOCK reference bit).
    pub referenced: bool,
    /// Members' receipt cursors (members who never sent one: absent).
    pub cursors: HashMap<Box<str>, CursorRecord>,
    /// Members whose cursor changed since the last commit took them.
    pub cursors_unsaved: Vec<Box<str>>,
    /// The cursors the commit in flight writes, as written: announced when it is durable.
    pub cursors_writing: Vec<(Box<str>, CursorRecord)>,
    /// Commits holding this conversation's cursors (it stays loaded meanwhile).
    pub cursors_in_flight: u32,
    /// Cursors moved since the senders were last told their counts (groups).
    pub receipts_dirty: bool,
    /// Recent messages whose senders are told their receipt counts (groups). Bound:
    /// [`super::receipts::RECENT_SENDERS`].
    pub recent: VecDeque<super::receipts::Sent>,
    /// Edits, deletes and reactions waiting for their target to be read, one at a time
    /// (the first is being read when `event_reading`). Bound: `max_waiters`.
    pub events: VecDeque<super::route::SendReq>,
    /// The first of `events` is reading its target.
    pub event_reading: bool,
    /// Messages rewritten by an edit or delete not yet durable, newest last: what the
    /// next event on them starts from instead of storage.
    pub rewrites: Vec<(u64, Arc<storage::model::StoredMessage>)>,
    /// Group members added after the start, with the seq they joined at (they see
    /// history from there), sorted by user id.
    pub joined: Vec<(Box<str>, u64)>,
    /// A group stored before member rows existed (its members are in its metadata):
    /// its next change writes every member's row once.
    pub legacy_members: bool,
}

impl Conv {
    /// A conversation as loaded (or empty, to be created).
    pub fn new(members: Vec<Box<str>>, last_seq: u64, window: usize) -> Conv {
        Conv {
            members,
            last_seq,
            durable_seq: last_seq,
            dedupe: Dedupe::new(window),
            exists: false,
            group: None,
            created: 0,
            typists: Vec::new(),
            fanout: Vec::new(),
            summary: None,
            in_flight: 0,
            referenced: true,
            cursors: HashMap::new(),
            cursors_unsaved: Vec::new(),
            cursors_writing: Vec::new(),
            cursors_in_flight: 0,
            receipts_dirty: false,
            recent: VecDeque::new(),
            events: VecDeque::new(),
            event_reading: false,
            rewrites: Vec::new(),
            joined: Vec::new(),
            legacy_members: false,
        }
    }

    /// Is `user` a member?
    pub fn is_member(&self, user: &str) -> bool {
        self.members.binary_search_by(|m| (**m).cmp(user)).is_ok()
    }

    /// The seq member `user` joined at (0: from the start).
    pub fn joined_at(&self, user: &str) -> u64 {
        self.joined.binary_search_by(|(m, _)| (**m).cmp(user)).map_or(0, |i| self.joined[i].1)
    }

    /// Membership (or a group's name) changed: rebuild the fan-out lists and the
    /// summary on next use.
    pub fn members_changed(&mut self) {
        self.fanout.clear();
        self.summary = None;
    }

    /// What the members' conversation lists show of it.
    pub fn summary(&mut self) -> Arc<ConvSummary> {
        let (group, members) = (&self.group, &self.members);
        self.summary
            .get_or_insert_with(|| {
                Arc::new(ConvSummary {
                    group: group.is_some(),
                    name: group.as_ref().map(|g| g.name.clone()).unwrap_or_default(),
                    pair: if group.is_some() { Vec::new() } else { members.iter().map(|m| m.to_string()).collect() },
                    members: members.len() as u32,
                })
            })
            .clone()
    }

    /// Members grouped by home shard.
    pub fn fanout(&mut self, shards: usize) -> &[Arc<[Box<str>]>] {
        if self.fanout.is_empty() {
            self.fanout = by_home_shard(self.members.iter().map(|m| &**m), shards);
        }
        &self.fanout
    }

    /// Nothing would be lost by dropping it now.
    pub fn idle(&self) -> bool {
        self.in_flight == 0
            && self.typists.is_empty()
            && self.cursors_unsaved.is_empty()
            && self.cursors_in_flight == 0
            && !self.receipts_dirty
            && self.events.is_empty()
    }

    /// Estimated bytes held (the entry, member ids, dedupe window, fan-out lists).
    pub fn bytes(&self) -> usize {
        let members: usize = self.members.iter().map(|m| 16 + m.len().max(8)).sum();
        let fanout = if self.fanout.is_empty() { 0 } else { members + self.fanout.len() * 32 };
        let group =
            self.group.as_ref().map_or(0, |g| g.name.len() + g.admins.iter().map(|a| 24 + a.len()).sum::<usize>());
        let cursors: usize = self.cursors.keys().map(|k| 48 + k.len().max(8)).sum();
        let recent = self.recent.len() * (40 + 16);
        let joined: usize = self.joined.iter().map(|(m, _)| 24 + m.len().max(8)).sum();
        std::mem::size_of::<Conv>()
            + 64
            + members
            + fanout
            + group
            + self.dedupe.heap_bytes()
            + cursors
            + recent
            + joined
    }
}

/// `users` grouped by home shard: one shared list per shard (empty where none lives).
pub fn by_home_shard<'a>(users: impl Iterator<Item = &'a str>, shards: usize) -> Vec<Arc<[Box<str>]>> {
    let mut by_shard: Vec<Vec<Box<str>>> = vec![Vec::new(); shards];
    for user in users {
        by_shard[home_of_user(user, shards).index()].push(Box::from(user));
    }
    by_shard.into_iter().map(Arc::from).collect()
}

/// Conversation ids known not to exist, oldest first out.
#[derive(Debug)]
struct Negative {
    set: HashSet<ConvId, Hasher>,
    order: VecDeque<ConvId>,
    cap: usize,
}

impl Negative {
    fn insert(&mut self, conv: ConvId) {
        if self.cap == 0 || !self.set.insert(conv) {
            return;
        }
        self.order.push_back(conv);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn remove(&mut self, conv: ConvId) {
        if self.set.remove(&conv) {
            self.order.retain(|c| *c != conv);
        }
    }
}

/// The conversations homed on a shard.
#[derive(Debug)]
pub struct ConvTable {
    slots: Map<ConvId, Slot>,
    negative: Negative,
    /// Conversations with someone typing (checked for expiry on the beat).
    pub typing: Vec<ConvId>,
    /// Groups whose receipt counts may have changed (published each window).
    pub receipts: Vec<ConvId>,
    /// Conversations with cursors to write at the next commit.
    pub unsaved: Vec<ConvId>,
    /// Conversations evicted since start.
    pub evicted: u64,
    /// Estimated bytes of loaded conversations after the last sweep.
    pub swept_bytes: usize,
    /// If the last sweep ended over budget, the bytes it could not release (busy or
    /// loading conversations and the table itself); 0 otherwise.
    pub busy_bytes: usize,
}

impl ConvTable {
    /// An empty table remembering `negative` missing ids.
    pub fn new(negative: usize, hasher: Hasher) -> ConvTable {
        ConvTable {
            slots: Map::with_hasher(hasher.clone()),
            negative: Negative { set: HashSet::with_hasher(hasher), order: VecDeque::new(), cap: negative },
            typing: Vec::new(),
            receipts: Vec::new(),
            unsaved: Vec::new(),
            evicted: 0,
            swept_bytes: 0,
            busy_bytes: 0,
        }
    }

    /// The entry of `conv`.
    pub fn slot_mut(&mut self, conv: ConvId) -> Option<&mut Slot> {
        self.slots.get_mut(&conv)
    }

    /// The loaded conversation `conv` (marked as used).
    pub fn ready(&mut self, conv: ConvId) -> Option<&mut Conv> {
        match self.slots.get_mut(&conv) {
            Some(Slot::Ready(c)) => {
                c.referenced = true;
                Some(c)
            }
            _ => None,
        }
    }

    /// Starts loading `conv` with `waiting` queued.
    pub fn start_loading(&mut self, conv: ConvId, waiting: Vec<ConvReq>) {
        self.slots.insert(conv, Slot::Loading(waiting));
    }

    /// Takes the queue of a loading conversation (removing its entry).
    pub fn take_loading(&mut self, conv: ConvId) -> Option<Vec<ConvReq>> {
        match self.slots.remove(&conv) {
            Some(Slot::Loading(q)) => Some(q),
            Some(other) => {
                self.slots.insert(conv, other);
                None
            }
            None => None,
        }
    }

    /// Installs a loaded conversation.
    pub fn insert_ready(&mut self, conv: ConvId, c: Conv) {
        if c.exists {
            self.negative.remove(conv);
        }
        self.slots.insert(conv, Slot::Ready(Box::new(c)));
    }

    /// Drops `conv` from memory (after a failed commit: reloaded from storage on next use).
    pub fn remove(&mut self, conv: ConvId) {
        self.slots.remove(&conv);
    }

    /// Is `conv` known not to exist?
    pub fn known_missing(&self, conv: ConvId) -> bool {
        self.negative.set.contains(&conv)
    }

    /// Remembers that `conv` does not exist.
    pub fn remember_missing(&mut self, conv: ConvId) {
        self.negative.insert(conv);
    }

    /// A conversation was created: forget that it was missing.
    pub fn created(&mut self, conv: ConvId) {
        self.negative.remove(conv);
    }

    /// Entries (loaded or loading).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// No entry.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Ids in the negative cache.
    pub fn negative_len(&self) -> usize {
        self.negative.set.len()
    }

    /// Estimated bytes of loaded conversations.
    pub fn bytes(&self) -> usize {
        self.slots.values().map(|s| if let Slot::Ready(c) = s { c.bytes() } else { 64 }).sum::<usize>()
            + self.slots.capacity() * 24
    }

    /// Estimated bytes of the busy and loading conversations and of the table.
    fn busy_bytes(&self) -> usize {
        let busy = |s: &Slot| match s {
            Slot::Ready(c) if c.idle() => 0,
            Slot::Ready(c) => c.bytes(),
            _ => 64,
        };
        self.slots.values().map(busy).sum::<usize>() + self.slots.capacity() * 24
    }

    /// One CLOCK pass: while the loaded conversations' memory is over `budget`, drop
    /// idle ones not used since the previous pass (clearing the reference bit of the
    /// others); a second pass takes idle ones regardless of use. Returns how many left.
    pub fn evict(&mut self, budget: usize) -> usize {
        let mut total = self.bytes();
        self.swept_bytes = total;
        self.busy_bytes = 0;
        if total <= budget {
            return 0;
        }
        let mut gone = 0;
        for second_chance in [true, false] {
            let mut victims = Vec::new();
            for (id, s) in self.slots.iter_mut() {
                if total <= budget {
                    break;
                }
                let Slot::Ready(c) = s else { continue };
                if !c.idle() {
                    continue;
                }
                if second_chance && c.referenced {
                    c.referenced = false;
                    continue;
                }
                total = total.saturating_sub(c.bytes());
                victims.push(*id);
            }
            gone += victims.len();
            for id in victims {
                self.slots.remove(&id);
            }
            if total <= budget {
                break;
            }
        }
        self.evicted += gone as u64;
        self.swept_bytes = total;
        if total > budget {
            self.busy_bytes = self.busy_bytes();
        }
        gone
    }

    /// Gives back the memory of a table that shrank a lot.
    pub fn compact(&mut self) {
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to(self.slots.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(members: &[&str]) -> Conv {
        let mut c = Conv::new(members.iter().map(|m| Box::from(*m)).collect(), 0, 16);
        c.exists = true;
        c
    }

    #[test]
    fn eviction_keeps_busy_and_recently_used_conversations() {
        let mut t = ConvTable::new(4, Hasher::default());
        for i in 0..100u128 {
            t.insert_ready(ConvId(i), conv(&["a", "b"]));
        }
        t.ready(ConvId(1)).unwrap().in_flight = 1;
        t.ready(ConvId(2)).unwrap().typists.push(("a".into(), 0, 1));
        let one = t.ready(ConvId(3)).unwrap().bytes();
        // Room for about ten: the busy ones stay whatever their age.
        let gone = t.evict(one * 10);
        assert!(gone >= 85, "{gone}");
        assert!(t.bytes() <= one * 10 + t.slots.capacity() * 24, "{}", t.bytes());
        assert!(t.ready(ConvId(1)).is_some() && t.ready(ConvId(2)).is_some());
        assert_eq!(t.evicted, gone as u64);
        // Under budget: nothing happens.
        assert_eq!(t.evict(usize::MAX), 0);
    }

    #[test]
    fn negative_cache_is_bounded_and_forgets_created_ids() {
        let mut t = ConvTable::new(3, Hasher::default());
        for i in 0..10u128 {
            t.remember_missing(ConvId(i));
        }
        assert_eq!(t.negative_len(), 3);
        assert!(t.known_missing(ConvId(9)) && !t.known_missing(ConvId(0)));
        t.created(ConvId(9));
        assert!(!t.known_missing(ConvId(9)));
    }
}
