//! What travels on a host's mesh: the shard core's routes, and the one thing only the
//! edge carries, an upgraded socket moving to its user's home shard.

use std::os::fd::OwnedFd;

use wire::Encoding;

/// A message between shards on this host.
#[derive(Debug)]
pub enum Envelope {
    /// An upgraded, authenticated socket moving to its user's home shard (never leaves
    /// the host: it owns a descriptor).
    Handoff(Box<Handoff>),
    /// A route between shard cores (plain data).
    Core(shard::core::Route),
}

/// A socket after its upgrade, with what was already read or queued for it.
#[derive(Debug)]
pub struct Handoff {
    /// The socket (closed if the handoff is dropped).
    pub fd: OwnedFd,
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
    /// The client asked for refusals as close codes (`?refusals=close`).
    pub close_refusals: bool,
}
