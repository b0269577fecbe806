//! The shard core: every table a shard owns and every business rule, without I/O.
//!
//! The gateway turns bytes into events and calls the core ([`Core::client_frame`],
//! [`Core::route`], [`Core::read_done`], [`Core::commit_done`], [`Core::tick`], ...);
//! the core changes its tables and pushes [`Effect`]s (frames for connections, routes
//! for other shards, reads to run), which the gateway drains with [`Core::effects`] and
//! carries out. Group commits are pulled: when [`Core::wants_commit`] the gateway takes
//! the batch's writes with [`Core::take_commit`], makes them durable however it likes
//! (commit log, store, a simulated disk) and reports with [`Core::commit_done`]. Time
//! is passed in (ms since the epoch), so the core is deterministic: the simulation
//! (`shard/tests/sim.rs`) drives several cores in one thread.
//!
//! Ownership, one table per module:
//! - [`users`]: users homed here (devices, rate limits, presence facts, watchers) and
//!   the per-connection state of sockets on this shard;
//! - [`convs`]: conversations homed here (members, seq, dedupe, typing) with their
//!   eviction and negative cache; [`dedupe`]: one conversation's dedupe window;
//! - [`commit`]: the group-commit queue and acks waiting for durability;
//! - [`inbox`]: each user's conversation list, kept at the user's home;
//! - [`messaging`], [`groups`], [`presence`], [`receipts`], [`lifecycle`] (edits,
//!   deletes, reactions, forwards, delete for me): the rules, as `Core` methods;
//! - [`route`]: what cores send each other; [`limits`]: token buckets.
//!
//! Every table has a bound or an eviction rule ([`CoreConfig`] names them); what a
//! client can grow is capped per client or per user.

pub mod client;
pub mod commit;
pub mod convs;
pub mod dedupe;
pub mod groups;
pub mod inbox;
pub mod lifecycle;
pub mod limits;
pub mod messaging;
pub mod presence;
pub mod receipts;
pub mod route;
pub mod users;

use std::collections::{HashMap, VecDeque};

use storage::read::{ReadDone, ReadReq};
use storage::StoreError;
use wire::error::ErrorCode;
use wire::frame::{ClientFrame, ConvId, ErrorFrame, ServerFrame};

use crate::ids::{ConnId, ConnRef, MessageIdGen, ShardId};
use commit::CommitQueue;
use convs::ConvTable;
pub use route::{ConnRoute, ConvReq, GroupReq, MsgRoute, PresenceRoute, Route, SendReq};
use users::{ConnTable, UserTable};

/// The limits and windows the core enforces (all configurable, see the gateway's config).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This host's id (in message ids and connection references).
    pub host_id: u8,
    /// Largest message body.
    pub max_body: usize,
    /// Most conversations in one `hello` sync.
    pub max_sync_convs: usize,
    /// History page size when the request names none, and the largest allowed.
    pub history_default: u32,
    /// Largest history page.
    pub history_max: u32,
    /// Messages per conversation replayed by a sync.
    pub sync_per_conv: u32,
    /// Most members of a group.
    pub max_group_members: usize,
    /// Keys remembered per conversation for dedupe.
    pub dedupe_window: usize,
    /// Most connected devices per user.
    pub max_devices_per_user: usize,
    /// How long after sending its sender may edit a message (ms).
    pub edit_window_ms: u64,
    /// How long after sending its sender may delete a message for everyone (ms); a
    /// group admin may at any time.
    pub delete_window_ms: u64,
    /// Largest media `size` a reference may announce (bytes).
    pub media_max_bytes: u64,
    /// MIME types a media reference may name: exact (`application/pdf`) or a whole
    /// type (`image/`).
    pub media_types: Vec<String>,
    /// Per-user `send` (and group change) rate and burst.
    pub send_rate: u32,
    /// Burst of `send_rate`.
    pub send_burst: u32,
    /// Per-user `typing` rate and burst.
    pub typing_rate: u32,
    /// Burst of `typing_rate`.
    pub typing_burst: u32,
    /// Per-user `history` and `hello` sync rate and burst.
    pub history_rate: u32,
    /// Burst of `history_rate`.
    pub history_burst: u32,
    /// Per-user `presence_*` rate and burst.
    pub presence_rate: u32,
    /// Burst of `presence_rate`.
    pub presence_burst: u32,
    /// Most users one connection watches.
    pub max_presence_subs: usize,
    /// A typing indicator not refreshed within this ends.
    pub typing_ttl_ms: u64,
    /// Memory (bytes, estimated) for loaded conversations on this shard; idle ones
    /// past it are evicted on the beat.
    pub conv_memory: usize,
    /// Conversation ids remembered as missing (answered without a storage read).
    pub negative_cache: usize,
    /// Requests that may wait for one conversation to load.
    pub max_waiters: usize,
    /// Storage reads in flight on this shard (conversation loads, history, sync, users).
    pub max_reads: usize,
    /// Accepted messages waiting for a commit on this shard.
    pub max_commit_queue: usize,
    /// Seed of the hasher of the tables whose order the core walks (loaded
    /// conversations, users, reads). Random per process in the gateway, so a client
    /// cannot pick ids that collide; fixed in the simulation, so a seed replays exactly.
    pub hash_seed: u64,
}

/// The hasher of the core's walked tables (see `CoreConfig::hash_seed`).
pub type Hasher = foldhash::quality::FixedState;

/// A map hashed with the core's seed.
pub type Map<K, V> = HashMap<K, V, Hasher>;

impl Default for CoreConfig {
    fn default() -> CoreConfig {
        CoreConfig {
            host_id: 0,
            max_body: 64 * 1024,
            max_sync_convs: 1024,
            history_default: 50,
            history_max: 200,
            sync_per_conv: 50,
            max_group_members: 1024,
            dedupe_window: 1024,
            max_devices_per_user: 10,
            edit_window_ms: 15 * 60 * 1000,
            delete_window_ms: 48 * 3600 * 1000,
            media_max_bytes: 100 << 20,
            media_types: ["image/", "video/", "audio/", "application/pdf"].map(String::from).to_vec(),
            send_rate: 20,
            send_burst: 40,
            typing_rate: 5,
            typing_burst: 10,
            history_rate: 10,
            history_burst: 20,
            presence_rate: 5,
            presence_burst: 20,
            max_presence_subs: 1024,
            typing_ttl_ms: 6_000,
            conv_memory: 64 << 20,
            negative_cache: 65_536,
            max_waiters: 1024,
            max_reads: 4096,
            max_commit_queue: 16_384,
            hash_seed: 0,
        }
    }
}

/// Something the gateway must do.
#[derive(Debug)]
pub enum Effect {
    /// Write a frame to a connection on this shard.
    Frame {
        /// The connection.
        to: ConnId,
        /// The frame.
        frame: ServerFrame,
    },
    /// Write one stored message to several connections on this shard (encode its `msg`
    /// frame once per encoding).
    Deliver {
        /// The conversation.
        conv: ConvId,
        /// The message's seq.
        seq: u64,
        /// The message.
        msg: std::sync::Arc<storage::model::StoredMessage>,
        /// The connections.
        to: Vec<ConnId>,
    },
    /// Send a route to another shard.
    Route {
        /// The shard.
        to: ShardId,
        /// The route.
        route: Route,
    },
    /// Run a read on this shard's partition; answer with [`Core::read_done`]`(id, ..)`.
    /// Reads must see every write committed before they were asked for.
    Read {
        /// Names the read in the answer.
        id: u64,
        /// The read.
        req: ReadReq,
    },
    /// Close a connection with a WebSocket close code.
    Close {
        /// The connection.
        conn: ConnId,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
}

/// Why a device's connection was refused by the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The user has `max_devices_per_user` connected devices.
    DeviceLimit(usize),
}

/// What a read was for.
#[derive(Debug)]
enum ReadFor {
    /// Loading a conversation.
    Conv(ConvId),
    /// A history page for a member.
    History { from: ConnRef, conv: ConvId, req_id: Option<String> },
    /// This shard's part of a sync.
    Sync { from: ConnRef },
    /// Loading a user's record.
    User(std::rc::Rc<str>),
    /// A page of a user's conversation list (`token`: what the reply carries).
    List { conn: ConnId, req: wire::frame::ConversationsReq, token: u64, unsaved: Box<inbox::Unsaved> },
    /// A former group member's row, before their history page.
    FormerHistory { from: ConnRef, conv: ConvId, user: String, req: wire::frame::History },
    /// The message a forward copies (boxed: rare).
    Forward(Box<SendReq>),
    /// The message an edit, delete or reaction acts on.
    Target(ConvId),
    /// Checking a conversation is in the user's list before changing its settings.
    ConvSettings { conn: ConnId, settings: wire::frame::ConvSettings, unsaved: Box<inbox::Unsaved> },
}

/// Figures the gateway publishes.
#[derive(Debug, Default, Clone, Copy)]
pub struct CoreCounts {
    /// Conversations in memory (loaded or loading).
    pub convs: usize,
    /// Estimated bytes of loaded conversations, as of the last eviction sweep.
    pub conv_bytes: usize,
    /// If that sweep ended over budget, the bytes it could not release (busy or loading
    /// conversations); 0 otherwise.
    pub conv_busy_bytes: usize,
    /// Users in memory.
    pub users: usize,
    /// Conversation ids in the negative cache.
    pub negative: usize,
    /// Storage reads in flight.
    pub reads: usize,
    /// Messages waiting for a commit.
    pub queued: usize,
    /// Conversations evicted since start.
    pub evicted: u64,
    /// Conversation-list parts waiting for (or in) a commit.
    pub list_parts: usize,
}

/// One shard's core.
pub struct Core {
    /// This shard.
    me: ShardId,
    /// Number of shards.
    shards: usize,
    /// Limits.
    cfg: CoreConfig,
    /// Connections on this shard.
    conns: ConnTable,
    /// Users homed here.
    users: UserTable,
    /// Conversations homed here.
    convs: ConvTable,
    /// Group commits.
    commit: CommitQueue,
    /// Conversation-list parts of users homed here, on their way to storage.
    lists: inbox::InboxQueue,
    /// Reads in flight. Bound: `cfg.max_reads`.
    reads: Map<u64, ReadFor>,
    /// Id of the next read.
    next_read: u64,
    /// Message ids minted here.
    ids: MessageIdGen,
    /// Routes to this shard itself, handled before an event returns.
    inbox: VecDeque<Route>,
    /// Effects not yet taken by the gateway.
    out: Vec<Effect>,
    /// The time of the event being handled (ms since the epoch).
    now: u64,
    /// When the next eviction sweep may run, and when the last one ran (ms).
    next_sweep: u64,
    last_sweep: u64,
}

impl Core {
    /// The core of shard `me` of `shards`.
    pub fn new(me: ShardId, shards: usize, cfg: CoreConfig) -> Core {
        Core {
            me,
            shards,
            conns: ConnTable::default(),
            users: UserTable::new(Hasher::with_seed(cfg.hash_seed)),
            convs: ConvTable::new(cfg.negative_cache, Hasher::with_seed(cfg.hash_seed)),
            commit: CommitQueue::default(),
            lists: inbox::InboxQueue::new(Hasher::with_seed(cfg.hash_seed)),
            reads: Map::with_hasher(Hasher::with_seed(cfg.hash_seed)),
            next_read: 1,
            ids: MessageIdGen::new(cfg.host_id, me),
            inbox: VecDeque::new(),
            out: Vec::new(),
            now: 0,
            next_sweep: 0,
            last_sweep: 0,
            cfg,
        }
    }

    /// This shard.
    pub fn me(&self) -> ShardId {
        self.me
    }

    /// The effects produced so far, oldest first (the caller carries them out).
    pub fn effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.out.drain(..)
    }

    /// Moves the effects produced so far into `into` (which must be empty), giving the
    /// core `into`'s buffer: a caller that keeps one buffer allocates nothing per turn.
    pub fn take_effects(&mut self, into: &mut Vec<Effect>) {
        debug_assert!(into.is_empty());
        std::mem::swap(into, &mut self.out);
    }

    /// When the last eviction sweep ran (ms; it runs at most once a second, on the beat).
    pub fn last_sweep(&self) -> u64 {
        self.last_sweep
    }

    /// Effects wait to be taken.
    pub fn has_effects(&self) -> bool {
        !self.out.is_empty()
    }

    /// The user and device of connection `conn`, once it is registered (for logs).
    pub fn conn_identity(&self, conn: ConnId) -> Option<(&str, &str)> {
        self.conns.get(conn).map(|c| (&*c.user, &*c.device))
    }

    /// A reference to connection `conn` of this shard.
    pub fn conn_ref(&self, conn: ConnId) -> ConnRef {
        ConnRef { host: self.cfg.host_id, shard: self.me, conn }
    }

    /// Sizes of the tables.
    pub fn counts(&self) -> CoreCounts {
        CoreCounts {
            convs: self.convs.len(),
            conv_bytes: self.convs.swept_bytes,
            conv_busy_bytes: self.convs.busy_bytes,
            users: self.users.len(),
            negative: self.convs.negative_len(),
            reads: self.reads.len(),
            queued: self.commit.queued_len(),
            evicted: self.convs.evicted,
            list_parts: self.lists.len(),
        }
    }

    /// Nothing queued, committing or read (a drain waits for this).
    pub fn is_idle(&self) -> bool {
        self.commit.is_idle() && self.reads.is_empty() && self.inbox.is_empty() && self.lists.is_empty()
    }

    // ---- events ----

    /// A device's connection was upgraded and authenticated on this shard (its user's
    /// home). An older connection of the same device is closed (4000).
    pub fn conn_opened(&mut self, conn: ConnId, user: &str, device: &str, now: u64) -> Result<(), Refused> {
        self.now = now;
        let r = self.open_conn(conn, user, device);
        self.settle();
        r
    }

    /// A connection registered with [`Core::conn_opened`] is gone (closed, failed,
    /// timed out). Its presence subscriptions end; the user may go offline.
    pub fn conn_closed(&mut self, conn: ConnId, now: u64) {
        self.now = now;
        self.close_conn(conn);
        self.settle();
    }

    /// A decoded frame from a connection registered with [`Core::conn_opened`].
    pub fn client_frame(&mut self, conn: ConnId, frame: ClientFrame, now: u64) {
        self.now = now;
        self.on_client_frame(conn, frame);
        self.settle();
    }

    /// A route from another shard.
    pub fn route(&mut self, r: Route, now: u64) {
        self.now = now;
        self.on_route(r);
        self.settle();
    }

    /// The answer to [`Effect::Read`] `id`.
    pub fn read_done(&mut self, id: u64, r: Result<ReadDone, StoreError>, now: u64) {
        self.now = now;
        match self.reads.remove(&id) {
            Some(ReadFor::Conv(conv)) => self.on_conv_loaded(conv, r),
            Some(ReadFor::History { from, conv, req_id }) => self.on_history_read(from, conv, req_id, r),
            Some(ReadFor::Sync { from }) => self.on_sync_read(from, r),
            Some(ReadFor::User(name)) => self.on_user_loaded(name, r),
            Some(ReadFor::Target(conv)) => self.on_target_read(conv, r),
            Some(ReadFor::Forward(req)) => self.on_forward_read(*req, r),
            Some(ReadFor::FormerHistory { from, conv, user, req }) => self.on_former_history(from, conv, user, req, r),
            Some(ReadFor::List { conn, req, token, unsaved }) => self.on_list_read(conn, req, token, &unsaved, r),
            Some(ReadFor::ConvSettings { conn, settings, unsaved }) => {
                self.on_settings_read(conn, settings, &unsaved, r)
            }
            None => {}
        }
        self.settle();
    }

    /// The beat (a few times a second): presence windows, typing expiry, eviction.
    /// `publish`: a presence window ended.
    pub fn tick(&mut self, now: u64, publish: bool) {
        self.now = now;
        if publish {
            self.publish_presence();
            self.publish_receipts();
        }
        self.expire_typing();
        // The sweep walks every loaded conversation: once a second, whatever the beat.
        if now >= self.next_sweep {
            self.next_sweep = now + 1000;
            self.last_sweep = now;
            self.convs.evict(self.cfg.conv_memory);
            self.convs.compact();
            self.users.compact();
            if self.reads.capacity() > 64 && self.reads.len() < self.reads.capacity() / 4 {
                self.reads.shrink_to(self.reads.len() * 2);
            }
        }
        self.settle();
    }

    /// Closes (4003) the connections of `user`'s `device` on this shard.
    pub fn revoke(&mut self, user: &str, device: &str, now: u64) {
        self.now = now;
        for conn in self.conns.of_device(self.users.conns_of(user), device) {
            self.close_conn(conn);
            self.out.push(Effect::Close { conn, code: wire::error::close::REVOKED, reason: "device revoked" });
        }
        self.settle();
    }

    // ---- plumbing shared by the rule modules ----

    /// Sends a route (to this shard: handled before the current event returns).
    fn send_route(&mut self, to: ShardId, r: Route) {
        if to == self.me {
            self.inbox.push_back(r);
        } else {
            self.out.push(Effect::Route { to, route: r });
        }
    }

    /// A frame for a connection anywhere.
    fn reply(&mut self, to: ConnRef, frame: ServerFrame) {
        self.send_route(to.shard, Route::Conn(ConnRoute::Frame { to, frame }));
    }

    /// An `error` frame for a connection anywhere.
    fn reply_error(&mut self, to: ConnRef, code: ErrorCode, message: String, ref_id: Option<String>) {
        self.reply(to, error_frame(code, message, ref_id, None));
    }

    /// A frame for a connection on this shard.
    fn frame(&mut self, to: ConnId, frame: ServerFrame) {
        self.out.push(Effect::Frame { to, frame });
    }

    /// Issues a read unless `max_reads` are in flight (then `false`: refuse the request
    /// with a retryable error).
    fn read(&mut self, req: ReadReq, why: ReadFor) -> bool {
        if self.reads.len() >= self.cfg.max_reads {
            return false;
        }
        let id = self.next_read;
        self.next_read += 1;
        self.reads.insert(id, why);
        self.out.push(Effect::Read { id, req });
        true
    }

    /// Handles local routes until none is left.
    fn settle(&mut self) {
        while let Some(r) = self.inbox.pop_front() {
            self.on_route(r);
        }
    }

    fn on_route(&mut self, r: Route) {
        match r {
            Route::Msg(m) => self.on_msg_route(m),
            Route::Presence(p) => self.on_presence_route(p),
            Route::Conn(ConnRoute::Frame { to, frame }) => {
                if self.conns.get(to.conn).is_some() {
                    self.frame(to.conn, frame);
                }
            }
            Route::Conn(ConnRoute::SyncDone { to, convs }) => self.on_sync_done(to.conn, convs),
        }
    }
}

/// Builds an `error` frame.
pub fn error_frame(
    code: ErrorCode,
    message: String,
    ref_id: Option<String>,
    retry_after_ms: Option<u32>,
) -> ServerFrame {
    ServerFrame::Error(ErrorFrame { code, message, ref_id, retry_after_ms })
}

/// The refusal for a request that found a table or queue full: retryable.
fn busy(what: &str) -> (ErrorCode, String) {
    (ErrorCode::Unavailable, format!("server busy ({what} full); retry later"))
}

thread_local! {
    /// When this shard last logged a storage failure (ms), and how many it has not
    /// logged since: an outage logs one line a second, not one per request.
    static STORAGE_LOGGED: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

fn storage_failed(e: &StoreError) -> (ErrorCode, String) {
    let now = crate::ids::now_ms();
    STORAGE_LOGGED.with(|c| {
        let (last, skipped) = c.get();
        if now.saturating_sub(last) >= 1000 {
            tracing::error!(more_since_last_line = skipped, "storage: {e}");
            c.set((now, 0));
        } else {
            c.set((last, skipped + 1));
        }
    });
    (ErrorCode::Internal, "storage is unavailable; retry later (the message was not stored)".into())
}

#[cfg(test)]
mod tests;
