//! Users homed on this shard, and the state of each connection on it.
//!
//! A user's entry exists while the user has a connected device or a watcher (a
//! presence subscription), and until their durable record (last seen, privacy) has been
//! read and any change written: then it is evicted. So the table holds at most the
//! users with a connection here plus those watched by some connection, and watchers are
//! capped per connection (`max_presence_subs`).
//!
//! A connection's entry holds its user, device, away flag and the users it watches; it
//! lives exactly as long as the gateway's socket ([`super::Core::conn_opened`] to
//! [`super::Core::conn_closed`]).

use std::collections::HashMap;
use std::rc::Rc;

use storage::model::UserRecord;
use wire::frame::PresenceState;

use super::limits::TokenBucket;
use super::{Hasher, Map};
use crate::ids::{ConnId, ConnRef};

/// One connection's core state.
#[derive(Debug)]
pub struct ConnState {
    /// Generation of the gateway's slot.
    pub gen: u32,
    /// The user (shared with the user table's key).
    pub user: Rc<str>,
    /// The device id.
    pub device: Box<str>,
    /// The device set itself away.
    pub away: bool,
    /// Users this connection watches (`None`: none). Bound: `max_presence_subs`.
    pub subs: Option<Box<Vec<Box<str>>>>,
}

/// Connections on this shard, indexed by the gateway's slot (slots are dense, so a
/// vector costs one entry per slot and no hashing).
#[derive(Debug, Default)]
pub struct ConnTable {
    slots: Vec<Option<ConnState>>,
    /// Connections with a `hello` sync running: shards still to answer, pages so far.
    syncs: HashMap<ConnId, (u16, u32)>,
    live: usize,
}

impl ConnTable {
    /// The state of `id`, if registered (and not a stale reference to its slot).
    pub fn get(&self, id: ConnId) -> Option<&ConnState> {
        self.slots.get(id.slot as usize)?.as_ref().filter(|c| c.gen == id.gen)
    }

    /// Mutable state of `id`.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut ConnState> {
        self.slots.get_mut(id.slot as usize)?.as_mut().filter(|c| c.gen == id.gen)
    }

    /// Registers `id`.
    pub fn insert(&mut self, id: ConnId, state: ConnState) {
        let i = id.slot as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(state).is_none() {
            self.live += 1;
        }
    }

    /// Unregisters `id`, returning its state.
    pub fn remove(&mut self, id: ConnId) -> Option<ConnState> {
        self.get(id)?;
        self.syncs.remove(&id);
        self.live -= 1;
        let c = self.slots[id.slot as usize].take();
        // Give back the tail of the table after a large churn.
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to(self.slots.len() * 2);
        }
        c
    }

    /// Registered connections.
    pub fn len(&self) -> usize {
        self.live
    }

    /// None registered.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Of `ids`, those of `device`.
    pub fn of_device(&self, ids: &[ConnId], device: &str) -> Vec<ConnId> {
        ids.iter().copied().filter(|&id| self.get(id).is_some_and(|c| &*c.device == device)).collect()
    }

    /// The running sync of `id`.
    pub fn sync_mut(&mut self, id: ConnId) -> Option<&mut (u16, u32)> {
        self.syncs.get_mut(&id)
    }

    /// Starts a sync of `id` expecting `shards` answers (false: one is running).
    pub fn start_sync(&mut self, id: ConnId, shards: u16) -> bool {
        if self.syncs.contains_key(&id) {
            return false;
        }
        self.syncs.insert(id, (shards, 0));
        true
    }

    /// Ends the sync of `id`.
    pub fn end_sync(&mut self, id: ConnId) {
        self.syncs.remove(&id);
    }
}

/// The rarer per-user rate limits, allocated on first use (most users never type,
/// page history or watch anyone in a given connection).
#[derive(Debug, Clone, Copy)]
pub struct MoreBuckets {
    /// `typing`.
    pub typing: TokenBucket,
    /// `history` and `hello` syncs.
    pub history: TokenBucket,
    /// `presence_*`.
    pub presence: TokenBucket,
}

/// Who watches a user, and work waiting for the user's record.
#[derive(Debug, Default)]
pub struct Watchers {
    /// Connections watching this user.
    pub subscribers: Vec<ConnRef>,
    /// Watchers that subscribed before the record was read: answered when it is.
    pub waiting: Vec<ConnRef>,
    /// Frames and deliveries that need the record (the receipts setting), in arrival
    /// order. Bound: [`MAX_HELD`].
    pub held: Vec<Held>,
}

/// Work that waits for a user's record.
#[derive(Debug)]
pub enum Held {
    /// A frame from one of the user's connections (`read`, `settings`).
    Frame(ConnId, wire::frame::ClientFrame),
    /// A receipt for the user's devices (filtered by their setting once known).
    Deliver(wire::frame::ServerFrame, Option<ConnRef>),
}

/// Most frames and deliveries held per user while the record loads.
pub const MAX_HELD: usize = 64;

const HIDE: u16 = 1;
const LOADED: u16 = 2;
const UNSAVED: u16 = 4;
const DIRTY: u16 = 8;
const READING: u16 = 16;
const PENDING: u16 = 32;
const PENDING_HIDE: u16 = 64;
const RECEIPTS_OFF: u16 = 128;
const PENDING_RECEIPTS: u16 = 256;
const PENDING_RECEIPTS_OFF: u16 = 512;

/// A user homed on this shard. Kept small (72 bytes): one exists per connected user.
#[derive(Debug)]
pub struct User {
    /// Open connections. Invariant: each is registered in the [`ConnTable`] for this user.
    pub conns: Vec<ConnId>,
    /// `send` and group changes (meaningful while connected).
    pub send: TokenBucket,
    /// The other rate limits, once used.
    pub more: Option<Box<MoreBuckets>>,
    /// When the last device went offline (ms since the epoch; 0: never). Valid once loaded.
    last_seen: u64,
    /// Watchers, while there are any.
    watchers: Option<Box<Watchers>>,
    /// `HIDE`, `LOADED`, `UNSAVED`, `DIRTY`, `READING`, `RECEIPTS_OFF` and the pending
    /// changes made before the record was read.
    flags: u16,
    /// The state watchers were last told.
    pub published: PresenceState,
}

impl User {
    fn new(send: TokenBucket) -> User {
        User {
            conns: Vec::new(),
            send,
            more: None,
            last_seen: 0,
            watchers: None,
            flags: 0,
            published: PresenceState::Offline,
        }
    }

    fn flag(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    fn set(&mut self, f: u16, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }

    /// The durable facts as known here (valid once [`User::loaded`]).
    pub fn record(&self) -> UserRecord {
        UserRecord {
            last_seen: (self.last_seen > 0).then_some(self.last_seen),
            hide_last_seen: self.flag(HIDE),
            receipts_off: self.flag(RECEIPTS_OFF),
        }
    }

    /// The user turned read receipts off (valid once loaded).
    pub fn receipts_off(&self) -> bool {
        self.flag(RECEIPTS_OFF)
    }

    /// The stored record has been read (or there was none).
    pub fn loaded(&self) -> bool {
        self.flag(LOADED)
    }

    /// Records that the last device left at `now`.
    pub fn went_offline(&mut self, now: u64) {
        self.last_seen = self.last_seen.max(now);
    }

    /// A privacy change; `true` when the record changed (known) or will (not loaded yet).
    pub fn set_hide(&mut self, hide: bool) -> bool {
        self.set_setting(HIDE, PENDING, PENDING_HIDE, hide)
    }

    /// A change of the read-receipts setting (as [`User::set_hide`]).
    pub fn set_receipts_off(&mut self, off: bool) -> bool {
        self.set_setting(RECEIPTS_OFF, PENDING_RECEIPTS, PENDING_RECEIPTS_OFF, off)
    }

    /// Sets a flag of the record; before the record is read, the change waits in the
    /// `pending`/`pending_value` flags and [`User::merge_loaded`] applies it.
    fn set_setting(&mut self, flag: u16, pending: u16, pending_value: u16, on: bool) -> bool {
        if !self.loaded() {
            self.set(pending, true);
            self.set(pending_value, on);
            return true;
        }
        let changed = self.flag(flag) != on;
        self.set(flag, on);
        changed
    }

    /// Holds work until the record is read; `false` when [`MAX_HELD`] are held already.
    pub fn hold(&mut self, h: Held) -> bool {
        let w = self.watchers.get_or_insert_with(Default::default);
        if w.held.len() >= MAX_HELD {
            return false;
        }
        w.held.push(h);
        true
    }

    /// Takes the held work.
    pub fn take_held(&mut self) -> Vec<Held> {
        let held = self.watchers.as_mut().map(|w| std::mem::take(&mut w.held)).unwrap_or_default();
        if self.watchers.as_ref().is_some_and(|w| w.subscribers.is_empty() && w.waiting.is_empty()) {
            self.watchers = None;
        }
        held
    }

    /// Merges the stored record in; `true` when what is known here differs from it (so
    /// it must be written).
    pub fn merge_loaded(&mut self, stored: UserRecord) -> bool {
        let stored_seen = stored.last_seen.unwrap_or(0);
        let mut changed = self.last_seen > stored_seen;
        self.last_seen = self.last_seen.max(stored_seen);
        let hide = if self.flag(PENDING) { self.flag(PENDING_HIDE) } else { stored.hide_last_seen };
        changed |= hide != stored.hide_last_seen;
        self.set(HIDE, hide);
        let off = if self.flag(PENDING_RECEIPTS) { self.flag(PENDING_RECEIPTS_OFF) } else { stored.receipts_off };
        changed |= off != stored.receipts_off;
        self.set(RECEIPTS_OFF, off);
        self.set(PENDING | PENDING_HIDE | PENDING_RECEIPTS | PENDING_RECEIPTS_OFF | READING, false);
        self.set(LOADED, true);
        changed
    }

    /// A read of the record is under way.
    pub fn reading(&self) -> bool {
        self.flag(READING)
    }

    /// Marks a read of the record as under way (or given up: loaded as never seen).
    pub fn set_reading(&mut self, on: bool) {
        self.set(READING, on);
    }

    /// Watchers (empty when none).
    pub fn subscribers(&self) -> &[ConnRef] {
        self.watchers.as_ref().map_or(&[], |w| &w.subscribers)
    }

    /// Adds a watcher (once).
    pub fn watch(&mut self, by: ConnRef) {
        let w = self.watchers.get_or_insert_with(Default::default);
        if !w.subscribers.contains(&by) {
            w.subscribers.push(by);
        }
    }

    /// Queues a watcher's first answer until the record is read.
    pub fn wait(&mut self, by: ConnRef) {
        self.watchers.get_or_insert_with(Default::default).waiting.push(by);
    }

    /// Takes the watchers waiting for the record.
    pub fn take_waiting(&mut self) -> Vec<ConnRef> {
        self.watchers.as_mut().map(|w| std::mem::take(&mut w.waiting)).unwrap_or_default()
    }

    /// Removes a watcher.
    pub fn unwatch(&mut self, by: ConnRef) {
        if let Some(w) = self.watchers.as_mut() {
            w.subscribers.retain(|s| *s != by);
            w.waiting.retain(|s| *s != by);
            if w.subscribers.is_empty() && w.waiting.is_empty() && w.held.is_empty() {
                self.watchers = None;
            }
        }
    }

    /// Nothing keeps this entry: no connection, no watcher, no read or write of its
    /// record under way, no presence change to publish.
    pub fn evictable(&self) -> bool {
        self.conns.is_empty()
            && self.watchers.is_none()
            && self.flags & (UNSAVED | DIRTY | READING | PENDING | PENDING_RECEIPTS) == 0
    }
}

/// Users homed on this shard.
#[derive(Debug)]
pub struct UserTable {
    users: Map<Rc<str>, User>,
    /// Users whose presence may have changed since the last window.
    pub dirty: Vec<Rc<str>>,
    /// Users whose record must be written at the next commit.
    pub unsaved: Vec<Rc<str>>,
}

impl UserTable {
    /// An empty table.
    pub fn new(hasher: Hasher) -> UserTable {
        UserTable { users: Map::with_hasher(hasher), dirty: Vec::new(), unsaved: Vec::new() }
    }

    /// The entry of `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The mutable entry of `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut User> {
        self.users.get_mut(name)
    }

    /// The shared key of `name`, creating the entry (`true`: it is new and its record
    /// must be read).
    pub fn entry(&mut self, name: &str, send: TokenBucket) -> (Rc<str>, bool) {
        if let Some((k, _)) = self.users.get_key_value(name) {
            return (k.clone(), false);
        }
        let k: Rc<str> = Rc::from(name);
        self.users.insert(k.clone(), User::new(send));
        (k, true)
    }

    /// The shared key of `name`, if in memory.
    pub fn key(&self, name: &str) -> Option<Rc<str>> {
        self.users.get_key_value(name).map(|(k, _)| k.clone())
    }

    /// The connections of `name` (empty when unknown).
    pub fn conns_of(&self, name: &str) -> &[ConnId] {
        self.users.get(name).map_or(&[], |u| &u.conns)
    }

    /// Lists `name` for the next presence window.
    pub fn mark_dirty(&mut self, name: &Rc<str>) {
        if let Some(u) = self.users.get_mut(&**name) {
            if !u.flag(DIRTY) {
                u.set(DIRTY, true);
                self.dirty.push(name.clone());
            }
        }
    }

    /// Lists `name`'s record for the next commit.
    pub fn mark_unsaved(&mut self, name: &Rc<str>) {
        if let Some(u) = self.users.get_mut(&**name) {
            if !u.flag(UNSAVED) {
                u.set(UNSAVED, true);
                self.unsaved.push(name.clone());
            }
        }
    }

    /// Clears `name`'s presence mark (its window is being published).
    pub fn clean(&mut self, name: &str) {
        if let Some(u) = self.users.get_mut(name) {
            u.set(DIRTY, false);
        }
    }

    /// Clears `name`'s record mark (its record is being written).
    pub fn saved(&mut self, name: &str) {
        if let Some(u) = self.users.get_mut(name) {
            u.set(UNSAVED, false);
        }
    }

    /// Drops `name` if nothing keeps it.
    pub fn evict_if_idle(&mut self, name: &str) {
        if self.users.get(name).is_some_and(User::evictable) {
            self.users.remove(name);
        }
    }

    /// Gives back the memory of a table that shrank a lot (after a burst of watched
    /// names or a connection storm): a hash map keeps its largest capacity otherwise.
    pub fn compact(&mut self) {
        if self.users.capacity() > 64 && self.users.len() < self.users.capacity() / 4 {
            self.users.shrink_to(self.users.len() * 2);
        }
        for list in [&mut self.dirty, &mut self.unsaved] {
            if list.capacity() > 64 && list.len() < list.capacity() / 4 {
                list.shrink_to(list.len() * 2);
            }
        }
    }

    /// Users in memory.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// No user in memory.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_entry_stays_small() {
        // One per connected user: the idle-connection budget counts it.
        assert!(std::mem::size_of::<User>() <= 72, "{}", std::mem::size_of::<User>());
    }

    #[test]
    fn a_record_merges_what_happened_before_it_was_read() {
        let mut u = User::new(TokenBucket::full(1, 0));
        u.went_offline(50);
        assert!(u.set_hide(true), "a change before the read is kept");
        assert!(u.merge_loaded(UserRecord { last_seen: Some(40), hide_last_seen: false, receipts_off: true }));
        assert_eq!(u.record(), UserRecord { last_seen: Some(50), hide_last_seen: true, receipts_off: true });
        let mut v = User::new(TokenBucket::full(1, 0));
        let stored = UserRecord { last_seen: Some(40), hide_last_seen: true, receipts_off: false };
        assert!(!v.merge_loaded(stored), "nothing new to write");
        assert!(!v.set_hide(true));
    }

    #[test]
    fn conn_table_checks_generations_and_shrinks() {
        let mut t = ConnTable::default();
        let state = |gen| ConnState { gen, user: Rc::from("u"), device: "d".into(), away: false, subs: None };
        for slot in 0..1000 {
            t.insert(ConnId { slot, gen: 1 }, state(1));
        }
        assert_eq!(t.len(), 1000);
        assert!(t.get(ConnId { slot: 5, gen: 2 }).is_none(), "stale generation");
        assert!(t.remove(ConnId { slot: 5, gen: 2 }).is_none());
        for slot in 0..1000 {
            assert!(t.remove(ConnId { slot, gen: 1 }).is_some());
        }
        assert!(t.is_empty());
        assert!(t.slots.capacity() <= 64, "table gave its memory back: {}", t.slots.capacity());
    }
}
