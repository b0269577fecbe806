//! Presence, owned by each user's home shard.
//!
//! A user is online while any device is connected and not away, away when every
//! connected device set itself away, offline when the last device closes or times out
//! (last seen is recorded then). Subscribers (connections on any shard) ask the home
//! shard; changes are coalesced: the home publishes at most once per
//! `presence_window_ms`, one `Route::PresenceDeliver` per destination shard, and each
//! destination sends one `presence` frame per connection per window, however many users
//! changed. A flapping device that ends the window in its starting state publishes nothing.
//!
//! Last seen and the privacy setting live in memory on the home shard (not persisted yet).

use std::collections::HashMap;
use std::rc::Rc;

use shard::ids::{home_of_user, now_ms, ConnId, ConnRef, ShardId};
use wire::frame::{PresenceState, PresenceUpdate, ServerFrame};

use crate::conn::Phase;
use crate::limits::TokenBucket;
use crate::route::Route;
use crate::service::Shard;

/// A user homed on this shard: connections, send budget and presence.
pub struct User {
    /// Open connections. Invariant: each is an `Open` connection of this user.
    pub conns: Vec<ConnId>,
    /// Send rate limit.
    pub bucket: TokenBucket,
    /// When the last device went offline (ms); `None` if never seen offline.
    pub last_seen: Option<u64>,
    /// Hide `last_seen` from others.
    pub hide_last_seen: bool,
    /// Connections watching this user. Dead ones are removed when a delivery finds them gone.
    pub subscribers: Vec<ConnRef>,
    /// The state subscribers were last told.
    pub published: PresenceState,
    /// Listed in `Shard::presence_dirty`.
    pub dirty: bool,
}

impl User {
    /// A user with no connection yet.
    pub fn new(burst: u32) -> User {
        User {
            conns: Vec::new(),
            bucket: TokenBucket::full(burst, now_ms()),
            last_seen: None,
            hide_last_seen: false,
            subscribers: Vec::new(),
            published: PresenceState::Offline,
            dirty: false,
        }
    }

    /// Nothing worth keeping: no connection, no watcher, never seen.
    fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.subscribers.is_empty() && self.last_seen.is_none()
    }
}

impl Shard {
    /// The shared id of a user homed here, creating the entry if needed.
    pub(crate) fn user_entry(&mut self, user: &str) -> Rc<str> {
        if let Some((k, _)) = self.users.get_key_value(user) {
            return k.clone();
        }
        let k: Rc<str> = Rc::from(user);
        self.users.insert(k.clone(), User::new(self.cfg.send_burst));
        k
    }

    /// The user's current state, from their connections.
    fn presence_state(&self, user: &User) -> PresenceState {
        let mut any = false;
        for id in &user.conns {
            if let Some(c) = self.conns.get(id.slot as usize).filter(|c| c.gen == id.gen && c.phase == Phase::Open) {
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

    fn update_of(&self, name: &str, user: &User) -> PresenceUpdate {
        let state = self.presence_state(user);
        let last_seen = if state == PresenceState::Offline && !user.hide_last_seen { user.last_seen } else { None };
        PresenceUpdate { user: name.to_owned(), state, last_seen }
    }

    /// Notes that a user's connections changed; published at the next window.
    pub(crate) fn presence_changed(&mut self, user: &Rc<str>) {
        let Some(u) = self.users.get_mut(&**user) else { return };
        if !u.dirty {
            u.dirty = true;
            self.presence_dirty.push(user.clone());
        }
    }

    /// Publishes every change since the last window (called once per window).
    pub(crate) fn publish_presence(&mut self) {
        let dirty = std::mem::take(&mut self.presence_dirty);
        let mut by_shard: Vec<Vec<(ConnId, PresenceUpdate)>> = vec![Vec::new(); self.shards];
        for name in dirty {
            let Some(u) = self.users.get(&*name) else { continue };
            let update = self.update_of(&name, u);
            let Some(u) = self.users.get_mut(&*name) else { continue };
            u.dirty = false;
            if update.state == u.published {
                continue;
            }
            u.published = update.state;
            for sub in &u.subscribers {
                by_shard[sub.shard.index()].push((sub.conn, update.clone()));
            }
        }
        for (k, items) in by_shard.into_iter().enumerate() {
            if !items.is_empty() {
                self.route(ShardId(k as u16), Route::PresenceDeliver { home: self.me, items });
            }
        }
    }

    /// At a user's home: `from` watches `users` (all homed here); answer at once.
    pub(crate) fn on_presence_sub(&mut self, from: ConnRef, users: Vec<String>) {
        let mut updates = Vec::with_capacity(users.len());
        for name in users {
            let key = self.user_entry(&name);
            let u = &self.users[&key];
            updates.push(self.update_of(&name, u));
            let u = self.users.get_mut(&key).expect("entry created above");
            if !u.subscribers.contains(&from) {
                u.subscribers.push(from);
            }
        }
        self.route(from.shard, Route::ToConn { to: from, frame: ServerFrame::Presence { updates } });
    }

    /// At a user's home: `from` stops watching `users`.
    pub(crate) fn on_presence_unsub(&mut self, from: ConnRef, users: Vec<String>) {
        for name in users {
            if let Some(u) = self.users.get_mut(name.as_str()) {
                u.subscribers.retain(|s| *s != from);
                if u.is_empty() {
                    self.users.remove(name.as_str());
                }
            }
        }
    }

    /// On a subscriber's shard: one `presence` frame per connection; tell the home
    /// about connections that are gone.
    pub(crate) fn on_presence_deliver(&mut self, home: ShardId, items: Vec<(ConnId, PresenceUpdate)>) {
        let mut per_conn: HashMap<ConnId, Vec<PresenceUpdate>> = HashMap::new();
        for (conn, update) in items {
            per_conn.entry(conn).or_default().push(update);
        }
        for (conn, updates) in per_conn {
            let alive = self.conns.get(conn.slot as usize).is_some_and(|c| c.gen == conn.gen && c.phase == Phase::Open);
            if alive {
                self.send_frame(conn, &ServerFrame::Presence { updates });
            } else {
                let users = updates.into_iter().map(|u| u.user).collect();
                self.route(home, Route::PresenceUnsub { from: ConnRef { shard: self.me, conn }, users });
            }
        }
    }

    /// Routes a subscription change to each watched user's home shard.
    pub(crate) fn route_presence_request(&mut self, from: ConnRef, users: Vec<String>, subscribe: bool) {
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); self.shards];
        for u in users {
            by_shard[home_of_user(&u, self.shards).index()].push(u);
        }
        for (k, users) in by_shard.into_iter().enumerate() {
            if !users.is_empty() {
                let r =
                    if subscribe { Route::PresenceSub { from, users } } else { Route::PresenceUnsub { from, users } };
                self.route(ShardId(k as u16), r);
            }
        }
    }
}
