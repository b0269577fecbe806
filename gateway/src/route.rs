//! What shards send each other over the mesh. Every variant is a plain `Send` value
//! with one owner; nothing in it points into another shard's memory.

use std::os::fd::RawFd;

use shard::ids::ConnRef;
use shard::ids::{ConnId, ShardId};
use wire::frame::{ConvId, GroupOp, History, Message, PresenceUpdate, Send, ServerFrame, SyncPoint};
use wire::Encoding;

/// A message between shards.
#[derive(Debug)]
pub enum Route {
    /// An upgraded, authenticated socket moving to its user's home shard.
    Handoff(Handoff),
    /// A new message for its conversation's home shard.
    Send(SendReq),
    /// A frame for one connection (acks, errors, pages).
    ToConn {
        /// The connection.
        to: ConnRef,
        /// The frame.
        frame: ServerFrame,
    },
    /// A stored message for the connected devices of `recipients` (all homed on the
    /// receiving shard): one route per destination shard, never one per recipient.
    Deliver {
        /// The message.
        msg: Message,
        /// User ids homed on the receiving shard (shared by the conversation's
        /// deliveries until its membership changes).
        recipients: std::sync::Arc<[Box<str>]>,
        /// The sending connection, which gets an ack instead.
        except: Option<ConnRef>,
    },
    /// A `group` request for the group's home shard.
    Group(GroupReq),
    /// A history request for the conversation's home shard.
    History {
        /// The asking connection.
        from: ConnRef,
        /// Its user (membership is checked at the conversation's home).
        user: String,
        /// The request.
        req: History,
    },
    /// A `hello` sync: sent to every shard, each replays the user's conversations it homes.
    Sync {
        /// The asking connection.
        from: ConnRef,
        /// Its user.
        user: String,
        /// The device's last seen seqs.
        points: Vec<SyncPoint>,
    },
    /// One shard finished its part of a sync, having sent `convs` pages.
    SyncDone {
        /// The asking connection.
        to: ConnRef,
        /// Pages sent by that shard.
        convs: u32,
    },
    /// Watch the presence of `users` (all homed on the receiving shard).
    PresenceSub {
        /// The watching connection.
        from: ConnRef,
        /// Watched users.
        users: Vec<String>,
    },
    /// Stop watching (also sent by a subscriber's shard when the connection is gone).
    PresenceUnsub {
        /// The watching connection.
        from: ConnRef,
        /// Users no longer watched.
        users: Vec<String>,
    },
    /// Presence updates for watching connections on the receiving shard.
    PresenceDeliver {
        /// The users' home shard (told about connections that are gone).
        home: ShardId,
        /// `(connection, update)`; several per connection are merged into one frame.
        items: Vec<(ConnId, PresenceUpdate)>,
    },
    /// A typing event for the conversation's home shard.
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
    /// A typing event for the online devices of `recipients` (homed on the receiving shard).
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

/// A socket after its upgrade, with what was already read or queued for it.
#[derive(Debug)]
pub struct Handoff {
    /// The socket (ownership moves with this value).
    pub fd: RawFd,
    /// Authenticated user id.
    pub user: String,
    /// Device id.
    pub device: String,
    /// Negotiated encoding.
    pub encoding: Encoding,
    /// Negotiated permessage-deflate.
    pub deflate: crate::deflate::Negotiated,
    /// Bytes read after the HTTP request (early WebSocket frames).
    pub pending_in: Vec<u8>,
    /// Bytes not yet written (the 101 response), as plaintext.
    pub pending_out: Vec<u8>,
    /// The TLS session, for WSS connections.
    pub tls: Option<Box<crate::tls::Session>>,
}

/// A `send` on its way to the conversation's home shard.
#[derive(Debug)]
pub struct SendReq {
    /// The sending connection (on the sender's home shard).
    pub from: ConnRef,
    /// Sender's user id (authenticated; never taken from the frame).
    pub user: String,
    /// Sender's device id.
    pub device: String,
    /// The conversation.
    pub conv: ConvId,
    /// For `to` sends: the other user, so the DM can be created on first use.
    pub dm_peer: Option<String>,
    /// The frame.
    pub send: Send,
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
