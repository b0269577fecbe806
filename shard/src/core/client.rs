//! A client's frames on its connection's shard (its user's home): rate limits and
//! shape checks, then a route to the home of what the frame concerns.

use wire::error::ErrorCode;
use wire::frame::{ClientFrame, ConvId, GroupAction, PresenceState, Target};

use super::limits::TokenBucket;
use super::users::MoreBuckets;
use super::{error_frame, ConvReq, Core, GroupReq, MsgRoute, PresenceRoute, Route, SendReq};
use crate::ids::{dm_conv, home_of_conv, home_of_user, ConnId, ShardId};

/// Which per-user limit a frame counts against.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Send,
    Typing,
    History,
    Presence,
}

impl Core {
    pub(super) fn on_client_frame(&mut self, id: ConnId, frame: ClientFrame) {
        let Some(conn) = self.conns.get(id) else { return };
        let user = conn.user.clone();
        let from = self.conn_ref(id);
        let shards = self.shards;
        match frame {
            ClientFrame::Hello { sync, list_since } => {
                if sync.len() > self.cfg.max_sync_convs {
                    let msg = format!("at most {} conversations per hello", self.cfg.max_sync_convs);
                    return self.frame(id, error_frame(ErrorCode::BadValue, msg, None, None));
                }
                if self.limited(id, &user, Limit::History, None) {
                    return;
                }
                if !self.conns.start_sync(id, shards as u16) {
                    let msg = "a sync is already running".to_owned();
                    return self.frame(id, error_frame(ErrorCode::BadValue, msg, None, None));
                }
                for k in 0..shards {
                    let r = MsgRoute::Sync { from, user: user.to_string(), points: sync.clone() };
                    self.send_route(ShardId(k as u16), Route::Msg(r));
                }
                if let Some(since) = list_since {
                    // The list's half: what changed since the device's last token.
                    let limit = Some(wire::frame::check::MAX_LIST_PAGE);
                    let req = wire::frame::ConversationsReq { req_id: None, cursor: None, limit, since: Some(since) };
                    self.list_for(id, &user, req);
                }
            }
            ClientFrame::Send(send) => {
                if self.limited(id, &user, Limit::Send, Some(&send.client_msg_id)) {
                    return;
                }
                let max_body = self.cfg.max_body;
                if send.body.len() > max_body {
                    let msg = format!("body of {} bytes exceeds max_body ({max_body})", send.body.len());
                    let ref_id = Some(send.client_msg_id);
                    return self.frame(id, error_frame(ErrorCode::BodyTooLarge, msg, ref_id, None));
                }
                let conv = match &send.target {
                    Target::User(peer) => dm_conv(&user, peer),
                    Target::Conv(c) => *c,
                };
                let forward = send.forward.is_some();
                let req = SendReq {
                    from,
                    user: Box::from(&*user),
                    device: self.device_of(id).into(),
                    conv,
                    send,
                    forwarded: None,
                };
                // A forward goes to the home of the conversation it copies from first.
                self.route_to_conv_home(if forward { ConvReq::Forward(Box::new(req)) } else { ConvReq::Send(req) });
            }
            ClientFrame::History(req) => {
                if self.limited(id, &user, Limit::History, req.req_id.as_deref()) {
                    return;
                }
                self.route_to_conv_home(ConvReq::History { from, user: user.to_string(), req });
            }
            ClientFrame::PresenceSub { users } => {
                if self.limited(id, &user, Limit::Presence, None) {
                    return;
                }
                self.subscribe(id, users);
            }
            ClientFrame::PresenceUnsub { users } => {
                if self.limited(id, &user, Limit::Presence, None) {
                    return;
                }
                self.unsubscribe(id, users);
            }
            ClientFrame::PresenceSet { state, hide_last_seen } => {
                if self.limited(id, &user, Limit::Presence, None) {
                    return;
                }
                self.set_presence(id, state == PresenceState::Away, hide_last_seen);
            }
            ClientFrame::Typing { conv, typing } => {
                if self.limited(id, &user, Limit::Typing, None) {
                    return;
                }
                self.route_to_conv_home(ConvReq::Typing { from, user: user.to_string(), conv, typing });
            }
            ClientFrame::Delivered { conv, seq } => {
                self.route_to_conv_home(ConvReq::Cursor {
                    from,
                    user: user.to_string(),
                    conv,
                    seq,
                    read: false,
                    private: false,
                });
            }
            ClientFrame::Read { conv, seq } => {
                // Whether the read is shown to others depends on the user's setting.
                let Some(u) = self.users.get_mut(&user) else { return };
                if !u.loaded() {
                    return self.hold_for_record(id, &user, ClientFrame::Read { conv, seq });
                }
                let private = u.receipts_off();
                self.route_to_conv_home(ConvReq::Cursor {
                    from,
                    user: user.to_string(),
                    conv,
                    seq,
                    read: true,
                    private,
                });
            }
            ClientFrame::Receipts(req) => {
                if self.limited(id, &user, Limit::History, req.req_id.as_deref()) {
                    return;
                }
                self.route_to_conv_home(ConvReq::Receipts { from, user: user.to_string(), req });
            }
            ClientFrame::Settings { read_receipts } => {
                if self.limited(id, &user, Limit::Presence, None) {
                    return;
                }
                if let (Some(on), Some(u)) = (read_receipts, self.users.get_mut(&user)) {
                    if u.set_receipts_off(!on) {
                        self.users.mark_unsaved(&user);
                        self.load_user(&user);
                    }
                }
            }
            ClientFrame::Conversations(req) => {
                // Held (uncounted) until the user's record is known, then counted once.
                if !self.users.get(&user).is_some_and(|u| u.loaded()) {
                    return self.hold_for_record(id, &user, ClientFrame::Conversations(req));
                }
                if self.limited(id, &user, Limit::History, req.req_id.as_deref()) {
                    return;
                }
                self.list_conversations(id, &user, req);
            }
            ClientFrame::Hide { conv, seqs } => {
                if self.limited(id, &user, Limit::Send, None) {
                    return;
                }
                self.route_to_conv_home(ConvReq::Hide { from, user: user.to_string(), conv, seqs });
            }
            ClientFrame::ConvSettings(settings) => {
                if self.limited(id, &user, Limit::Presence, None) {
                    return;
                }
                self.change_conv_settings(id, &user, settings);
            }
            ClientFrame::Group(op) => {
                // Group changes are stored like messages and share the send budget.
                if op.action != GroupAction::Info && self.limited(id, &user, Limit::Send, op.req_id.as_deref()) {
                    return;
                }
                let conv = match op.conv {
                    Some(c) => c,
                    None => ConvId(1 << 127 | self.ids.next(self.now) as u128),
                };
                let req = GroupReq { from, user: user.to_string(), device: self.device_of(id), conv, op };
                self.route_to_conv_home(ConvReq::Group(Box::new(req)));
            }
        }
    }

    /// The device id of connection `id`, copied only for the frames that carry it
    /// (send, group).
    fn device_of(&self, id: ConnId) -> String {
        self.conns.get(id).map(|c| c.device.to_string()).unwrap_or_default()
    }

    /// Routes a request to its conversation's home.
    fn route_to_conv_home(&mut self, req: ConvReq) {
        let home = home_of_conv(req.conv(), self.shards);
        self.send_route(home, Route::Msg(MsgRoute::AtConv(req)));
    }

    /// Takes one token from the user's `limit`; when none is left, answers the
    /// connection with `rate_limited` (and the wait) and returns true.
    fn limited(&mut self, id: ConnId, user: &str, limit: Limit, ref_id: Option<&str>) -> bool {
        let c = &self.cfg;
        let (rate, burst, what) = match limit {
            Limit::Send => (c.send_rate, c.send_burst, "messages"),
            Limit::Typing => (c.typing_rate, c.typing_burst, "typing frames"),
            Limit::History => (c.history_rate, c.history_burst, "history or sync requests"),
            Limit::Presence => (c.presence_rate, c.presence_burst, "presence frames"),
        };
        let now = self.now;
        let Some(u) = self.users.get_mut(user) else { return false };
        let b: &mut TokenBucket = match limit {
            Limit::Send => &mut u.send,
            _ => {
                let more = u.more.get_or_insert_with(|| {
                    Box::new(MoreBuckets {
                        typing: TokenBucket::full(c.typing_burst, now),
                        history: TokenBucket::full(c.history_burst, now),
                        presence: TokenBucket::full(c.presence_burst, now),
                    })
                });
                match limit {
                    Limit::Typing => &mut more.typing,
                    Limit::History => &mut more.history,
                    _ => &mut more.presence,
                }
            }
        };
        match b.take(rate, burst, now) {
            Ok(()) => false,
            Err(wait_ms) => {
                let msg = format!("more than {rate} {what} per second; retry in {wait_ms} ms");
                let ref_id = ref_id.map(str::to_owned);
                self.frame(id, error_frame(ErrorCode::RateLimited, msg, ref_id, Some(wait_ms)));
                true
            }
        }
    }

    /// Holds a frame until `user`'s record is read (it needs their settings); refused
    /// with `unavailable` when too many wait.
    /// A list request, once the user's record (read-receipt privacy) is known: held
    /// until it loads, then answered.
    fn list_for(&mut self, id: ConnId, user: &std::rc::Rc<str>, req: wire::frame::ConversationsReq) {
        if self.users.get(user).is_some_and(|u| u.loaded()) {
            return self.list_conversations(id, user, req);
        }
        self.hold_for_record(id, user, ClientFrame::Conversations(req));
    }

    fn hold_for_record(&mut self, id: ConnId, user: &std::rc::Rc<str>, frame: ClientFrame) {
        let held = self.users.get_mut(user).is_some_and(|u| u.hold(super::users::Held::Frame(id, frame)));
        if !held {
            let (code, msg) = super::busy("frames waiting for the user's settings");
            return self.frame(id, error_frame(code, msg, None, None));
        }
        self.load_user(user);
    }

    /// Watch `users` from connection `id`: at most `max_presence_subs` per connection.
    fn subscribe(&mut self, id: ConnId, users: Vec<String>) {
        let max = self.cfg.max_presence_subs;
        let Some(conn) = self.conns.get_mut(id) else { return };
        let subs = conn.subs.get_or_insert_with(Default::default);
        let mut new = Vec::new();
        for u in users {
            if !subs.iter().any(|s| **s == *u) && !new.contains(&u) {
                new.push(u);
            }
        }
        if subs.len() + new.len() > max {
            let msg = format!("a connection watches at most {max} users (max_presence_subs)");
            return self.frame(id, error_frame(ErrorCode::LimitExceeded, msg, None, None));
        }
        subs.extend(new.iter().map(|u| Box::from(u.as_str())));
        self.route_presence(id, new, true);
    }

    /// Stop watching `users` from connection `id`.
    fn unsubscribe(&mut self, id: ConnId, users: Vec<String>) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Some(subs) = conn.subs.as_mut() else { return };
        let gone: Vec<String> = users.into_iter().filter(|u| subs.iter().any(|s| **s == **u)).collect();
        subs.retain(|s| !gone.iter().any(|g| **g == **s));
        if subs.is_empty() {
            conn.subs = None;
        }
        self.route_presence(id, gone, false);
    }

    /// A subscription change to each watched user's home shard.
    pub(super) fn route_presence(&mut self, id: ConnId, users: Vec<String>, subscribe: bool) {
        let from = self.conn_ref(id);
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); self.shards];
        for u in users {
            by_shard[home_of_user(&u, self.shards).index()].push(u);
        }
        for (k, users) in by_shard.into_iter().enumerate() {
            if !users.is_empty() {
                let r =
                    if subscribe { PresenceRoute::Sub { from, users } } else { PresenceRoute::Unsub { from, users } };
                self.send_route(ShardId(k as u16), Route::Presence(r));
            }
        }
    }
}
