//! permessage-deflate (RFC 7692): offer negotiation and a per-shard codec.
//!
//! The per-connection memory budget rules this module: a connection that negotiated
//! compression holds one byte of state ([`Negotiated`]), never a compressor or a
//! window. That is possible because the answer to every offer carries both
//! `server_no_context_takeover` and `client_no_context_takeover`, so every message, in
//! either direction, is a deflate stream of its own: the shard owns one compressor and
//! one decompressor ([`Codec`], created on first use) and resets them per message.
//!
//! A client that asks for `server_max_window_bits=N` gets it. Instead of a compressor
//! per window size, the shard compresses only messages of at most 2^N bytes (no
//! back-reference of an independent stream can then reach further than the window) and
//! sends longer ones uncompressed, which RFC 7692 allows message by message.
//!
//! Decompression is bounded by `max_frame`: a message that inflates past it closes the
//! connection with 1009 however small it was on the wire.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What a connection negotiated: the window (in bits) the client's inflater has for
/// our messages. `0` means no compression was negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Negotiated(pub u8);

impl Negotiated {
    /// No permessage-deflate on this connection.
    pub const OFF: Negotiated = Negotiated(0);

    /// Whether compression is on.
    pub fn on(self) -> bool {
        self.0 != 0
    }

    /// Whether a message of `len` bytes may go compressed: an independent deflate
    /// stream never refers further back than its own length.
    pub fn compresses(self, len: usize) -> bool {
        self.on() && (self.0 >= 15 || len <= 1usize << self.0)
    }
}

/// Picks the first acceptable `permessage-deflate` offer among the values of the
/// `Sec-WebSocket-Extensions` headers. Returns what was negotiated and the response
/// header value, or `None` when no offer is acceptable (then no extension is used).
pub fn negotiate<'a>(headers: impl Iterator<Item = &'a [u8]>) -> Option<(Negotiated, String)> {
    for value in headers {
        let Ok(value) = std::str::from_utf8(value) else { continue };
        for offer in value.split(',') {
            if let Some(n) = accept_offer(offer) {
                return Some(n);
            }
        }
    }
    None
}

/// One offer (`permessage-deflate; param; param=value`): accepted if every parameter
/// is known, given once and valid (RFC 7692 7.1).
fn accept_offer(offer: &str) -> Option<(Negotiated, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let (mut server_nct, mut client_nct, mut server_bits, mut client_bits) = (false, false, None, false);
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok()).filter(|b| (8..=15).contains(b));
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if !server_nct && value.is_none() => server_nct = true,
            "client_no_context_takeover" if !client_nct && value.is_none() => client_nct = true,
            "server_max_window_bits" if server_bits.is_none() => server_bits = Some(bits(value)?),
            "client_max_window_bits" if !client_bits => {
                // Without a value: the client merely supports the parameter. With one,
                // it must be valid; either way our inflater (32 KiB window) reads it.
                if value.is_some() {
                    bits(value)?;
                }
                client_bits = true;
            }
            _ => return None,
        }
    }
    let mut answer = String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if let Some(b) = server_bits {
        answer.push_str(&format!("; server_max_window_bits={b}"));
    }
    Some((Negotiated(server_bits.unwrap_or(15)), answer))
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit (a decompression bomb, or just too large): close 1009.
    TooBig,
    /// It is not a valid deflate stream: close 1007.
    Corrupt,
}

/// A shard's compressor and decompressor, each reset per message. Created on first use,
/// so a shard whose clients never negotiate compression holds neither.
#[derive(Default)]
pub struct Codec {
    compress: Option<Box<Compress>>,
    decompress: Option<Box<Decompress>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("compress", &self.compress.is_some())
            .field("decompress", &self.decompress.is_some())
            .finish()
    }
}

/// The four bytes every flushed deflate block ends with, which RFC 7692 strips from
/// the wire (7.2.1) and the receiver appends again (7.2.2).
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

impl Codec {
    /// Appends `payload` to `out` as one compressed final frame (RSV1 set).
    pub fn write_frame(
        &mut self,
        out: &mut Vec<u8>,
        opcode: tungstenite::protocol::frame::coding::OpCode,
        payload: &[u8],
    ) {
        let mut z = Vec::with_capacity(payload.len() / 2 + 16);
        self.compress(payload, &mut z);
        crate::ws::write_deflated_frame(out, opcode, &z);
    }

    /// Compresses `data` as one message and appends the result to `out`.
    pub fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let c = self.compress.get_or_insert_with(|| Box::new(Compress::new(Compression::fast(), false)));
        c.reset();
        out.reserve(data.len() / 2 + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let before = c.total_in();
            // Cannot fail: flate2 reports an error only for a stream in a state that a
            // compressor driven this way never reaches.
            let _ = c.compress_vec(&data[pos..], out, FlushCompress::Sync);
            pos += (c.total_in() - before) as usize;
            // A sync flush that left room unused has written everything.
            if pos == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
    }

    /// Inflates one compressed message into `out` (cleared first), at most `max` bytes:
    /// `out` never grows past `max + 1` bytes, whatever the input claims.
    pub fn inflate(&mut self, data: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let d = self.decompress.get_or_insert_with(|| Box::new(Decompress::new(false)));
        d.reset(false);
        out.clear();
        for input in [data, &TAIL[..]] {
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    let room = max + 1 - out.len();
                    out.reserve_exact(out.capacity().clamp(1024, 64 * 1024).min(room));
                }
                let (in_before, out_before) = (d.total_in(), out.len());
                let status =
                    d.decompress_vec(&input[pos..], out, FlushDecompress::Sync).map_err(|_| InflateError::Corrupt)?;
                let consumed = (d.total_in() - in_before) as usize;
                pos += consumed;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block (BFINAL) ends the message (RFC 7692 7.2.3.4).
                    return Ok(());
                }
                if out.len() < out.capacity() {
                    if pos == input.len() {
                        break;
                    }
                    if consumed == 0 && out.len() == out_before {
                        return Err(InflateError::Corrupt);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(s: &str) -> Option<(Negotiated, String)> {
        negotiate(std::iter::once(s.as_bytes()))
    }

    #[test]
    fn negotiates_the_first_acceptable_offer() {
        let (n, answer) = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(n, Negotiated(15));
        assert_eq!(answer, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        let (n, answer) = offer("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=9").unwrap();
        assert_eq!(n, Negotiated(9));
        assert!(answer.ends_with("; server_max_window_bits=9"), "{answer}");
        // An unacceptable offer is skipped, the next one taken.
        let (n, _) = offer("permessage-deflate; server_max_window_bits=7, permessage-deflate").unwrap();
        assert_eq!(n, Negotiated(15));
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=3",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; unknown",
            "deflate-frame",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        assert_eq!(offer("permessage-deflate; server_max_window_bits=\"10\"").unwrap().0, Negotiated(10));
    }

    #[test]
    fn windows_limit_what_is_compressed() {
        assert!(!Negotiated::OFF.compresses(1));
        assert!(Negotiated(15).compresses(10_000_000));
        assert!(Negotiated(8).compresses(256) && !Negotiated(8).compresses(257));
    }

    #[test]
    fn round_trips_and_bounds_inflation() {
        let mut codec = Codec::default();
        let mut out = Vec::new();
        for msg in [&b""[..], b"Hello", &[b'a'; 100_000], &(0..=255u8).cycle().take(70_000).collect::<Vec<_>>()] {
            let mut z = Vec::new();
            codec.compress(msg, &mut z);
            assert!(!z.ends_with(&TAIL));
            codec.inflate(&z, msg.len(), &mut out).unwrap();
            assert_eq!(out, msg);
        }
        // A bomb: 10 MB of zeros compress to ~45 KB; inflating past the limit stops early.
        let mut z = Vec::new();
        codec.compress(&vec![0; 10_000_000], &mut z);
        assert!(z.len() < 100_000, "{}", z.len());
        assert_eq!(codec.inflate(&z, 65_536, &mut out), Err(InflateError::TooBig));
        assert!(out.capacity() < 1 << 20, "inflating a bomb must not allocate its size: {}", out.capacity());
        assert_eq!(codec.inflate(&[0xff, 0xff, 0xff], 1000, &mut out), Err(InflateError::Corrupt));
        // The codec is reset per message: the next one is fine.
        let mut z = Vec::new();
        codec.compress(b"after", &mut z);
        codec.inflate(&z, 100, &mut out).unwrap();
        assert_eq!(out, b"after");
    }
}
