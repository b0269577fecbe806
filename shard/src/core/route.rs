//! What shard cores send each other, split by the service that handles it. Every route
//! is plain data with one owner: no descriptor, no pointer into another shard's memory,
//! user ids as strings. So a route can later cross hosts over a bus unchanged (a
//! connection reference carries its host). The socket handoff after an upgrade is not a
//! core route: the gateway carries it beside these.

use std::sync::Arc;

use storage::model::{ConvSummary, StoredMessage};
use wire::frame::{ConvId, GroupOp, History, PresenceUpdate, Send, ServerFrame, SyncPoint};

use crate::ids::{ConnId, ConnRef, ShardId};

/// A message between shard cores.
#[derive(Debug)]
pub enum Route {
    /// For a conversation's home, or fan-out from it.
    Msg(MsgRoute),
    /// For a user's home (subscriptions), or presence updates from it.
    Presence(PresenceRoute),
    /// For the shard that owns a connection.
    Conn(ConnRoute),
}

/// The message path.
#[derive(Debug)]
pub enum MsgRoute {
    /// A request for a conversation's home (it waits there while the conversation loads).
    AtConv(ConvReq),
    /// A `hello` sync: sent to every shard, each replays the user's conversations it homes.
    Sync {
        /// The asking connection.
        from: ConnRef,
        /// Its user.
        user: String,
        /// The device's last seen seqs.
        points: Vec<SyncPoint>,
    },
    /// A stored message for the connected devices of `recipients` (all homed on the
    /// receiving shard): one route per destination shard, never one per recipient.
    Deliver {
        /// The conversation.
        conv: ConvId,
        /// The message's seq.
        seq: u64,
        /// The message (shared by every destination shard: never copied).
        msg: Arc<StoredMessage>,
        /// The conversation as the members' lists show it (shared until it changes).
        summary: Arc<ConvSummary>,
        /// User ids homed on the receiving shard (shared by the conversation's
        /// deliveries until its membership changes).
        recipients: Arc<[Box<str>]>,
        /// The sending connection, which gets an ack instead.
        except: Option<ConnRef>,
    },
    /// A receipt for `user`'s devices (at the user's home).
    ReceiptDeliver {
        /// The user.
        user: String,
        /// `receipt` or `receipt_count` (boxed: rare, and routes stay small).
        frame: Box<ServerFrame>,
        /// A connection of the user that is not told (the one that sent the cursor).
        except: Option<ConnRef>,
    },
    /// A typing change for the online devices of `recipients` (homed on the receiving shard).
    TypingDeliver {
        /// The conversation.
        conv: ConvId,
        /// Who is typing.
        from: String,
        /// Started (true) or stopped.
        typing: bool,
        /// Members homed on the receiving shard (not the typist).
        recipients: Vec<String>,
    },
}

/// Presence.
#[derive(Debug)]
pub enum PresenceRoute {
    /// Watch `users` (all homed on the receiving shard).
    Sub {
        /// The watching connection.
        from: ConnRef,
        /// Watched users.
        users: Vec<String>,
    },
    /// Stop watching (also sent when the watching connection closes).
    Unsub {
        /// The watching connection.
        from: ConnRef,
        /// Users no longer watched.
        users: Vec<String>,
    },
    /// Presence updates for watching connections on the receiving shard.
    Deliver {
        /// The users' home shard (told about connections that are gone).
        home: ShardId,
        /// `(connection, update)`; several per connection are merged into one frame.
        items: Vec<(ConnId, PresenceUpdate)>,
    },
}

/// Answers for one connection.
#[derive(Debug)]
pub enum ConnRoute {
    /// A frame (acks, errors, pages).
    Frame {
        /// The connection.
        to: ConnRef,
        /// The frame.
        frame: ServerFrame,
    },
    /// One shard finished its part of a sync, having sent `convs` pages.
    SyncDone {
        /// The asking connection.
        to: ConnRef,
        /// Pages sent by that shard.
        convs: u32,
    },
}

/// A request handled at its conversation's home shard, once the conversation is loaded.
#[derive(Debug)]
pub enum ConvReq {
    /// A new message.
    Send(SendReq),
    /// A forward, at the home of the conversation it copies from (boxed: rare).
    Forward(Box<SendReq>),
    /// A `group` request (boxed: rare and large, so the routes of every message stay small).
    Group(Box<GroupReq>),
    /// A history request (membership is checked at the home).
    History {
        /// The asking connection.
        from: ConnRef,
        /// Its user.
        user: String,
        /// The request.
        req: History,
    },
    /// A typing change.
    Typing {
        /// The typing connection.
        from: ConnRef,
        /// Its user.
        user: String,
        /// The conversation.
        conv: ConvId,
        /// Started (true) or stopped.
        typing: bool,
    },
    /// A device's delivered or read cursor.
    Cursor {
        /// The device's connection.
        from: ConnRef,
        /// Its user.
        user: String,
        /// The conversation.
        conv: ConvId,
        /// Up to this seq.
        seq: u64,
        /// Read (true) or delivered.
        read: bool,
        /// The user has read receipts off (their read is not shown).
        private: bool,
    },
    /// Delete for me.
    Hide {
        /// The asking connection.
        from: ConnRef,
        /// Its user.
        user: String,
        /// The conversation.
        conv: ConvId,
        /// The messages.
        seqs: Vec<u64>,
    },
    /// A `receipts` request.
    Receipts {
        /// The asking connection.
        from: ConnRef,
        /// Its user.
        user: String,
        /// The request.
        req: wire::frame::ReceiptsReq,
    },
}

impl ConvReq {
    /// The conversation it concerns (which decides its home shard).
    pub fn conv(&self) -> ConvId {
        match self {
            ConvReq::Send(r) => r.conv,
            ConvReq::Forward(r) => r.send.forward.as_ref().map_or(r.conv, |f| f.conv),
            ConvReq::Group(r) => r.conv,
            ConvReq::History { req, .. } => req.conv,
            ConvReq::Typing { conv, .. } | ConvReq::Cursor { conv, .. } | ConvReq::Hide { conv, .. } => *conv,
            ConvReq::Receipts { req, .. } => req.conv,
        }
    }
}

/// A `send` on its way to the conversation's home shard.
#[derive(Debug)]
pub struct SendReq {
    /// The sending connection (on the sender's home shard).
    pub from: ConnRef,
    /// Sender's user id (authenticated; never taken from the frame).
    pub user: Box<str>,
    /// Sender's device id.
    pub device: Box<str>,
    /// The conversation.
    pub conv: ConvId,
    /// The frame (for `to` sends, its target names the other user, so the DM can be
    /// created on first use).
    pub send: Send,
    /// A forwarded copy: where from (set at the source's home).
    pub forwarded: Option<Box<wire::frame::Forwarded>>,
}

impl SendReq {
    /// For `to` sends: the other user.
    pub fn dm_peer(&self) -> Option<&str> {
        match &self.send.target {
            wire::frame::Target::User(peer) => Some(peer),
            wire::frame::Target::Conv(_) => None,
        }
    }
}

/// A `group` request on its way to the group's home shard.
#[derive(Debug)]
pub struct GroupReq {
    /// The asking connection.
    pub from: ConnRef,
    /// Its user (authenticated).
    pub user: String,
    /// Its device.
    pub device: String,
    /// The group (for `create`: the id chosen by the asking shard).
    pub conv: ConvId,
    /// The request.
    pub op: GroupOp,
}
