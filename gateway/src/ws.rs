//! WebSocket framing (RFC 6455) over bytes the shard already read.
//!
//! Frames are parsed with tungstenite's `FrameHeader` straight out of the shard's
//! scratch buffer; a connection keeps bytes only while a frame is split across reads.
//! Payloads are unmasked in place. Server frames are never masked.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use wire::error::close;

/// One complete frame found at the start of a buffer.
#[derive(Debug)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: OpCode,
    /// Range of the (still masked) payload in the buffer.
    pub payload: std::ops::Range<usize>,
    /// Client mask.
    pub mask: [u8; 4],
    /// Total frame length (header + payload).
    pub len: usize,
}

/// Result of looking for a frame.
#[derive(Debug)]
pub enum Next {
    /// A whole frame.
    Frame(RawFrame),
    /// Not enough bytes yet.
    Incomplete,
    /// A protocol violation: close with this code and reason.
    Violation(u16, &'static str),
}

/// Parses the frame at the start of `buf`, enforcing the client rules: masked,
/// no reserved bits, control frames short and final, payload within `max`.
pub fn next(buf: &[u8], max: usize) -> Next {
    let mut cur = Cursor::new(buf);
    let (header, len) = match FrameHeader::parse(&mut cur) {
        Ok(Some(h)) => h,
        Ok(None) => return Next::Incomplete,
        Err(_) => return Next::Violation(close::PROTOCOL_ERROR, "malformed frame header"),
    };
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Next::Violation(close::PROTOCOL_ERROR, "reserved bits set (no extensions negotiated)");
    }
    let Some(mask) = header.mask else {
        return Next::Violation(close::PROTOCOL_ERROR, "client frames must be masked");
    };
    match header.opcode {
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            return Next::Violation(close::PROTOCOL_ERROR, "reserved opcode")
        }
        OpCode::Control(_) if len > 125 || !header.is_final => {
            return Next::Violation(close::PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
        }
        _ => {}
    }
    if len > max as u64 {
        return Next::Violation(close::TOO_BIG, "frame exceeds max_frame");
    }
    let start = cur.position() as usize;
    let end = start + len as usize;
    if buf.len() < end {
        return Next::Incomplete;
    }
    Next::Frame(RawFrame { fin: header.is_final, opcode: header.opcode, payload: start..end, mask, len: end })
}

/// Unmasks a payload in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends a server frame (unmasked, final) to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader { opcode, ..FrameHeader::default() };
    header.format(payload.len() as u64, out).expect("writing a frame header into a Vec cannot fail");
    out.extend_from_slice(payload);
}

/// Appends a frame whose payload the caller writes after the header: reserves the
/// largest header, lets `fill` append the payload, then moves the payload down so the
/// header is exact. Saves a copy of every encoded server frame.
pub fn write_frame_with(out: &mut Vec<u8>, opcode: OpCode, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 10]);
    fill(out);
    let len = out.len() - start - 10;
    let mut header = Vec::with_capacity(10);
    FrameHeader { opcode, ..FrameHeader::default() }
        .format(len as u64, &mut header)
        .expect("writing a frame header into a Vec cannot fail");
    let hl = header.len();
    out.copy_within(start + 10.., start + hl);
    out[start..start + hl].copy_from_slice(&header);
    out.truncate(start + hl + len);
}

/// After `sent` bytes of `out` went out (`out` started `partial` bytes before a frame
/// boundary), how many bytes at the new head still belong to a partly sent frame.
/// `out` holds only whole server frames behind `partial`.
pub fn partial_after(out: &[u8], partial: usize, sent: usize) -> usize {
    if sent < partial {
        return partial - sent;
    }
    let mut pos = partial;
    while pos < sent {
        let Some(rest) = out.get(pos..) else { return 0 };
        let mut cur = Cursor::new(rest);
        let Ok(Some((_, len))) = FrameHeader::parse(&mut cur) else { return 0 };
        // `out` holds our own frames, but never trust a length: a wrapped sum would
        // walk backwards forever (found by the ws_frames fuzz target).
        let Some(end) = usize::try_from(len).ok().and_then(|l| (pos + cur.position() as usize).checked_add(l)) else {
            return 0;
        };
        if end > sent {
            return end - sent;
        }
        pos = end;
    }
    0
}

/// Appends a close frame with a code and reason.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    write_frame(out, OpCode::Control(Control::Close), &p);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: u8, fin: bool, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        if payload.len() < 126 {
            v.push(m | payload.len() as u8);
        } else {
            v.push(m | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        let mask = [1, 2, 3, 4];
        if masked {
            v.extend_from_slice(&mask);
        }
        let start = v.len();
        v.extend_from_slice(payload);
        if masked {
            unmask(&mut v[start..], mask);
        }
        v
    }

    #[test]
    fn parses_masked_frames_and_rejects_violations() {
        let f = client_frame(1, true, b"hello", true);
        for cut in 0..f.len() {
            assert!(matches!(next(&f[..cut], 1000), Next::Incomplete));
        }
        let Next::Frame(raw) = next(&f, 1000) else { panic!() };
        let mut p = f[raw.payload.clone()].to_vec();
        unmask(&mut p, raw.mask);
        assert_eq!((&p[..], raw.len, raw.fin), (&b"hello"[..], f.len(), true));
        assert!(matches!(next(&client_frame(1, true, b"x", false), 1000), Next::Violation(1002, _)));
        assert!(matches!(next(&client_frame(2, true, &[0; 300], true), 100), Next::Violation(1009, _)));
        assert!(matches!(next(&client_frame(9, false, b"", true), 100), Next::Violation(1002, _)));
        assert!(matches!(next(&client_frame(3, true, b"", true), 100), Next::Violation(1002, _)));
    }

    #[test]
    fn partial_frames_are_tracked_across_sends() {
        let mut out = Vec::new();
        write_frame(&mut out, OpCode::Data(Data::Text), &[1; 10]); // 12 bytes
        write_frame(&mut out, OpCode::Data(Data::Text), &[2; 200]); // 204 bytes
        assert_eq!(partial_after(&out, 0, 0), 0);
        assert_eq!(partial_after(&out, 0, 5), 7);
        assert_eq!(partial_after(&out, 0, 12), 0);
        assert_eq!(partial_after(&out, 0, 20), 196);
        assert_eq!(partial_after(&out, 0, 216), 0);
        assert_eq!(partial_after(&out[5..], 7, 3), 4);
        assert_eq!(partial_after(&out[5..], 7, 10), 201);
        // A hostile length (2^64 - 1) must not loop or panic.
        let mut evil = vec![0x82, 0x7f];
        evil.extend_from_slice(&u64::MAX.to_be_bytes());
        evil.extend_from_slice(&[0; 16]);
        assert_eq!(partial_after(&evil, 0, 20), 0);
    }

    #[test]
    fn write_frame_with_matches_write_frame() {
        for n in [0usize, 5, 125, 126, 300, 70_000] {
            let payload = vec![7u8; n];
            let (mut a, mut b) = (vec![9u8], vec![9u8]);
            write_frame(&mut a, OpCode::Data(Data::Binary), &payload);
            write_frame_with(&mut b, OpCode::Data(Data::Binary), |o| o.extend_from_slice(&payload));
            assert_eq!(a, b);
        }
    }
}
