//! A connection's entry in its shard's slab, and the tokens that name its operations.
//!
//! This struct is the per-connection memory budget: it holds no buffer while idle
//! (`inbuf`, `frag` and `out` are empty `Vec`s, which own no heap memory) and no
//! strings; the user and device live in the shard core's connection table.

use std::os::fd::OwnedFd;

use shard::ids::ConnId;
use tungstenite::protocol::frame::coding::Data;
use wire::Encoding;

/// What stage a connection is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake,
    /// WebSocket frames flow.
    Open,
    /// A close or refusal is being flushed; input is ignored.
    Closing,
}

/// One connection.
pub struct Conn {
    /// The socket (closed when the entry is dropped, unless handed off).
    pub fd: OwnedFd,
    /// Generation: tokens and ConnRefs carrying another generation are stale.
    pub gen: u32,
    /// Stage.
    pub phase: Phase,
    /// Negotiated encoding.
    pub encoding: Encoding,
    /// Bytes of an incomplete request or frame. Empty (no allocation) when idle.
    pub inbuf: Vec<u8>,
    /// A fragmented message being reassembled, and its opcode.
    pub frag: Vec<u8>,
    /// Opcode of the message in `frag`.
    pub frag_op: Option<Data>,
    /// The message in `frag` is compressed (permessage-deflate): it is inflated, and its
    /// text checked, once whole.
    pub frag_deflated: bool,
    /// permessage-deflate as negotiated on upgrade (one byte: no codec state here).
    pub deflate: crate::deflate::Negotiated,
    /// Bytes waiting to be sent. Empty (no allocation) when idle.
    pub out: Vec<u8>,
    /// Bytes at the head of `out` that finish a frame already partly sent (0: `out`
    /// starts on a frame boundary). Lets a close frame be queued cleanly behind it.
    pub out_partial: u32,
    /// `out` is queued in the shard's flush list.
    pub dirty: bool,
    /// A POLLOUT is armed because the socket buffer was full.
    pub write_armed: bool,
    /// A multishot POLLIN is armed (open connections).
    pub read_armed: bool,
    /// Close once `out` is flushed.
    pub close_after_flush: bool,
    /// Shard clock (s) of the last bytes received (handshake: of the accept; closing:
    /// of the start of the close). Drives heartbeats and timeouts in the sweep.
    pub last_seen: u32,
    /// Shard clock (s) of the last ping sent since `last_seen` (0: none).
    pub pinged_at: u32,
    /// Counted in the host's connections (`max_connections`) until closed.
    pub counted: bool,
    /// Listed in the shard's paused reads (mesh back-pressure).
    pub paused: bool,
    /// Frames received in the second `frames_at` (frame-rate limit).
    pub frames: u16,
    /// Shard clock second `frames` counts for.
    pub frames_at: u32,
    /// Fragments of the message in `frag` so far.
    pub fragments: u16,
    /// The TLS session of a WSS connection (`None`: plain WS). Boxed: its ~1.1 KB
    /// (plus ~2.4 KB of keys and state on the heap) exists only for WSS.
    pub tls: Option<Box<crate::tls::Session>>,
}

impl Conn {
    /// Bytes queued for the socket: `out`, and for WSS the ciphertext the socket has
    /// not taken yet. The slow-reader bound (`max_outbound`) applies to this.
    pub fn backlog(&self) -> usize {
        self.out.len() + self.tls.as_ref().map_or(0, |t| t.unsent.len())
    }

    /// A freshly accepted socket.
    pub fn accepted(fd: OwnedFd, gen: u32, now: u32) -> Conn {
        Conn {
            fd,
            gen,
            phase: Phase::Handshake,
            encoding: Encoding::Json,
            inbuf: Vec::new(),
            frag: Vec::new(),
            frag_op: None,
            frag_deflated: false,
            deflate: crate::deflate::Negotiated::OFF,
            out: Vec::new(),
            out_partial: 0,
            dirty: false,
            write_armed: false,
            read_armed: false,
            close_after_flush: false,
            last_seen: now,
            pinged_at: 0,
            counted: false,
            paused: false,
            frames: 0,
            frames_at: 0,
            fragments: 0,
            tls: None,
        }
    }
}

/// What a ring operation was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The listener's multishot accept.
    Accept,
    /// Readiness to read.
    Read,
    /// Readiness to write.
    Write,
}

/// Packs an operation on a connection into a ring token: slot (32 bits) | generation
/// (24 bits) | op (8 bits). Token 0 is reserved for fire-and-forget cancels.
pub fn token(op: Op, conn: ConnId) -> u64 {
    let op = match op {
        Op::Accept => 1,
        Op::Read => 2,
        Op::Write => 3,
    };
    ((conn.slot as u64) << 32) | (((conn.gen & 0xff_ffff) as u64) << 8) | op
}

/// Inverse of [`token`]; `None` for token 0 or an unknown op. The generation comes back
/// truncated to 24 bits (compare with [`same_gen`]).
pub fn untoken(t: u64) -> Option<(Op, ConnId)> {
    let op = match t & 0xff {
        1 => Op::Accept,
        2 => Op::Read,
        3 => Op::Write,
        _ => return None,
    };
    Some((op, ConnId { slot: (t >> 32) as u32, gen: ((t >> 8) & 0xff_ffff) as u32 }))
}

/// Do a full generation and a token's 24-bit generation match?
pub fn same_gen(full: u32, from_token: u32) -> bool {
    full & 0xff_ffff == from_token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_idle_conn_is_small() {
        let c = ConnId { slot: 123_456, gen: 0x0123_4567 };
        let (op, back) = untoken(token(Op::Write, c)).unwrap();
        assert_eq!((op, back.slot), (Op::Write, c.slot));
        assert!(same_gen(c.gen, back.gen));
        assert_eq!(untoken(0), None);
        // The slab entry is most of a connection's user-space memory: keep it small.
        assert!(std::mem::size_of::<Conn>() <= 192, "{}", std::mem::size_of::<Conn>());
    }
}
