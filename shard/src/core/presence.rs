//! Connections, users and presence, at each user's home shard.
//!
//! A user is online while any device is connected and not away, away when every
//! connected device set itself away, offline when the last device closes (last seen is
//! recorded then, durably, with the privacy flag). Watchers (connections on any shard)
//! subscribe at the home; a subscription belongs to the watching connection and ends
//! with it. Changes are coalesced: the home publishes at most once per presence
//! window, one route per destination shard, and each destination sends one `presence`
//! frame per connection per window. A device that flaps within a window and ends it in
//! its starting state publishes nothing. A new watcher is answered with the published
//! state (the live one reaches it with the next window), so every watcher sees the
//! same sequence of states.

use std::rc::Rc;

use storage::model::{UserRecord, Write};
use storage::read::{ReadDone, ReadReq};
use storage::StoreError;
use wire::frame::{PresenceState, PresenceUpdate, ServerFrame};

use super::limits::TokenBucket;
use super::users::{ConnState, Held, User};
use super::{Core, Effect, PresenceRoute, ReadFor, Refused, Route};
use crate::ids::{ConnId, ConnRef, ShardId};

impl Core {
    /// The entry of a user homed here, created if needed. Its record is read only when
    /// needed ([`Core::load_user`]): a connecting user costs no read.
    fn user_entry(&mut self, name: &str) -> Rc<str> {
        let send = TokenBucket::full(self.cfg.send_burst, self.now);
        self.users.entry(name, send).0
    }

    /// Starts reading `key`'s record unless it is read or being read.
    pub(super) fn load_user(&mut self, key: &Rc<str>) {
        match self.users.get(key) {
            Some(u) if !u.loaded() && !u.reading() => {}
            _ => return,
        }
        let read = self.read(ReadReq::User { user: key.to_string() }, ReadFor::User(key.clone()));
        let Some(u) = self.users.get_mut(key) else { return };
        if read {
            u.set_reading(true);
        } else {
            // No read slot: taken as never seen and not hidden, rather than holding
            // the entry (presence is best effort; a later entry reads it again).
            u.merge_loaded(UserRecord::default());
        }
    }

    pub(super) fn open_conn(&mut self, id: ConnId, user: &str, device: &str) -> Result<(), Refused> {
        let key = self.user_entry(user);
        let older = self.conns.of_device(self.users.conns_of(user), device);
        for old in older {
            self.close_conn(old);
            let reason = "replaced by a newer connection of this device";
            self.out.push(Effect::Close { conn: old, code: wire::error::close::REPLACED, reason });
        }
        let max = self.cfg.max_devices_per_user;
        if self.users.conns_of(user).len() >= max {
            self.users.evict_if_idle(user);
            return Err(Refused::DeviceLimit(max));
        }
        let state = ConnState { gen: id.gen, user: key.clone(), device: device.into(), away: false, subs: None };
        self.conns.insert(id, state);
        if let Some(u) = self.users.get_mut(user) {
            u.conns.push(id);
        }
        self.users.mark_dirty(&key);
        Ok(())
    }

    pub(super) fn close_conn(&mut self, id: ConnId) {
        let Some(c) = self.conns.remove(id) else { return };
        if let Some(subs) = c.subs {
            let names = subs.into_iter().map(String::from).collect();
            self.route_presence(id, names, false);
        }
        let now = self.now;
        let Some(u) = self.users.get_mut(&c.user) else { return };
        u.conns.retain(|x| *x != id);
        if u.conns.is_empty() {
            u.went_offline(now);
            self.users.mark_unsaved(&c.user);
            self.load_user(&c.user);
        }
        self.users.mark_dirty(&c.user);
    }

    pub(super) fn set_presence(&mut self, id: ConnId, away: bool, hide: Option<bool>) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.away = away;
        let key = conn.user.clone();
        if let (Some(hide), Some(u)) = (hide, self.users.get_mut(&key)) {
            if u.set_hide(hide) {
                self.users.mark_unsaved(&key);
                self.load_user(&key);
            }
        }
        self.users.mark_dirty(&key);
    }

    pub(super) fn on_user_loaded(&mut self, key: Rc<str>, r: Result<ReadDone, StoreError>) {
        let Some(u) = self.users.get_mut(&key) else { return };
        let record = match r {
            Ok(ReadDone::User(rec)) => rec,
            // Unknown: answered as never seen (presence is best effort).
            _ => UserRecord::default(),
        };
        // What happened before the read (a disconnect, a privacy change) is newer.
        let changed = u.merge_loaded(record);
        let waiting = u.take_waiting();
        if changed {
            self.users.mark_unsaved(&key);
        }
        let held = self.users.get_mut(&key).map(|u| u.take_held()).unwrap_or_default();
        let update = self.update_of(&key, false);
        for w in waiting {
            self.reply(w, ServerFrame::Presence { updates: vec![update.clone()] });
        }
        // What waited for the record, in arrival order.
        for h in held {
            match h {
                Held::Frame(conn, frame) => {
                    if self.conns.get(conn).is_some() {
                        self.on_client_frame(conn, frame);
                    }
                }
                Held::Deliver(frame, except) => self.on_receipt_deliver(&key, frame, except),
            }
        }
        self.users.evict_if_idle(&key);
    }

    /// The user's current state, from their connections.
    fn presence_state(&self, u: &User) -> PresenceState {
        let mut any = false;
        for id in &u.conns {
            if let Some(c) = self.conns.get(*id) {
                if !c.away {
                    return PresenceState::Online;
                }
                any = true;
            }
        }
        if any {
            PresenceState::Away
        } else {
            PresenceState::Offline
        }
    }

    /// The user's state now (`live`), or as watchers were last told (`!live`).
    fn update_of(&self, name: &str, live: bool) -> PresenceUpdate {
        let Some(u) = self.users.get(name) else {
            return PresenceUpdate { user: name.to_owned(), state: PresenceState::Offline, last_seen: None };
        };
        let state = if live { self.presence_state(u) } else { u.published };
        let record = u.record();
        let shown = state == PresenceState::Offline && !record.hide_last_seen;
        PresenceUpdate { user: name.to_owned(), state, last_seen: if shown { record.last_seen } else { None } }
    }

    /// Publishes every change since the last window; queues changed records.
    pub(super) fn publish_presence(&mut self) {
        let dirty = std::mem::take(&mut self.users.dirty);
        let mut by_shard: Vec<Vec<(ConnId, PresenceUpdate)>> = vec![Vec::new(); self.shards];
        for name in dirty {
            let update = self.update_of(&name, true);
            self.users.clean(&name);
            let Some(u) = self.users.get_mut(&name) else { continue };
            if update.state != u.published {
                u.published = update.state;
                for sub in u.subscribers() {
                    by_shard[sub.shard.index()].push((sub.conn, update.clone()));
                }
            }
            self.users.evict_if_idle(&name);
        }
        for (k, items) in by_shard.into_iter().enumerate() {
            if !items.is_empty() {
                let r = PresenceRoute::Deliver { home: self.me, items };
                self.send_route(ShardId(k as u16), Route::Presence(r));
            }
        }
        self.queue_user_records();
    }

    /// Queues the records changed since the last commit (written with the next one).
    pub(super) fn queue_user_records(&mut self) {
        for name in std::mem::take(&mut self.users.unsaved) {
            let Some(u) = self.users.get(&name) else { continue };
            if !u.loaded() {
                // Written once the stored record has been merged in (its read is under way).
                self.users.unsaved.push(name);
                continue;
            }
            let record = u.record();
            self.users.saved(&name);
            self.commit.user_writes.push(Write::User { user: name.to_string(), record });
            self.users.evict_if_idle(&name);
        }
    }

    pub(super) fn on_presence_route(&mut self, r: PresenceRoute) {
        match r {
            PresenceRoute::Sub { from, users } => {
                let mut updates = Vec::with_capacity(users.len());
                for name in users {
                    let key = self.user_entry(&name);
                    let Some(u) = self.users.get_mut(&key) else { continue };
                    u.watch(from);
                    // A new watcher is told the published state, not the live one: it
                    // then sees exactly what every watcher sees at each window. (Told a
                    // change the window has not published yet, it would miss the change
                    // back if the window ends where it began.)
                    if u.loaded() {
                        updates.push(self.update_of(&key, false));
                    } else {
                        u.wait(from);
                        self.load_user(&key);
                    }
                }
                if !updates.is_empty() {
                    self.reply(from, ServerFrame::Presence { updates });
                }
            }
            PresenceRoute::Unsub { from, users } => {
                for name in users {
                    if let Some(u) = self.users.get_mut(name.as_str()) {
                        u.unwatch(from);
                        self.users.evict_if_idle(&name);
                    }
                }
            }
            PresenceRoute::Deliver { home, mut items } => {
                // One frame per connection, connections in a fixed order (the sort is
                // stable, so each connection's updates keep theirs).
                items.sort_by_key(|(conn, _)| *conn);
                let mut items = items.into_iter().peekable();
                while let Some((conn, first)) = items.next() {
                    let mut updates = vec![first];
                    while let Some((_, u)) = items.next_if(|(c, _)| *c == conn) {
                        updates.push(u);
                    }
                    if self.conns.get(conn).is_some() {
                        self.frame(conn, ServerFrame::Presence { updates });
                    } else {
                        let users = updates.into_iter().map(|u| u.user).collect();
                        let from = ConnRef { host: self.cfg.host_id, shard: self.me, conn };
                        self.send_route(home, Route::Presence(PresenceRoute::Unsub { from, users }));
                    }
                }
            }
        }
    }
}
