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
    /// RSV1 bit: the message starting with this frame is compressed (permessage-deflate).
    pub rsv1: bool,
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
/// no reserved bits (RSV1 only on a data frame, and only if `deflate` was negotiated),
/// control frames short and final, payload within `max`.
pub fn next(buf: &[u8], max: usize, deflate: bool) -> Next {
    let mut cur = Cursor::new(buf);
    let (header, len) = match FrameHeader::parse(&mut cur) {
        Ok(Some(h)) => h,
        Ok(None) => return Next::Incomplete,
        Err(_) => return Next::Violation(close::PROTOCOL_ERROR, "malformed frame header"),
    };
    if header.rsv2 || header.rsv3 {
        return Next::Violation(close::PROTOCOL_ERROR, "reserved bits set (no extension uses them)");
    }
    if header.rsv1 && !(deflate && matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary))) {
        return Next::Violation(close::PROTOCOL_ERROR, "RSV1 set (permessage-deflate: first data frame only)");
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
    Next::Frame(RawFrame {
        fin: header.is_final,
        rsv1: header.rsv1,
        opcode: header.opcode,
        payload: start..end,
        mask,
        len: end,
    })
}

/// The header of an incomplete frame at the start of `buf`, if it is all there: its
/// opcode, mask and where its payload starts.
pub fn partial_header(buf: &[u8]) -> Option<(OpCode, bool, [u8; 4], usize)> {
    let mut cur = Cursor::new(buf);
    let (header, _) = FrameHeader::parse(&mut cur).ok()??;
    Some((header.opcode, header.rsv1, header.mask?, cur.position() as usize))
}

/// A close frame's payload checked (RFC 6455 5.5.1, 7.1.6, 7.4): the code to answer
/// with, or the violation to fail with. No payload is a close without a code (answered
/// with 1000); a code must be one a peer may send, and a reason must be UTF-8.
pub fn close_code(payload: &[u8]) -> Result<u16, (u16, &'static str)> {
    match payload {
        [] => Ok(close::NORMAL),
        [_] => Err((close::PROTOCOL_ERROR, "close payload of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !close::valid_on_wire(code) {
                return Err((close::PROTOCOL_ERROR, "close code not allowed on the wire"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err((close::INVALID_PAYLOAD, "close reason is not UTF-8"));
            }
            Ok(code)
        }
    }
}

/// Whether `bytes` can still begin valid UTF-8 text: valid, except that it may end in
/// the middle of a character that later bytes complete.
pub fn utf8_prefix_ok(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// Where the last (possibly incomplete) character of `bytes` starts, at most 4 bytes
/// back: validating again from there covers a character split across pieces.
pub fn char_start(bytes: &[u8]) -> usize {
    let floor = bytes.len().saturating_sub(4);
    (floor..bytes.len()).rev().find(|&i| bytes[i] & 0xc0 != 0x80).unwrap_or(floor)
}

/// Checks the payload received so far of a text frame that is not complete yet (RFC
/// 6455 8.1: fail as soon as the text cannot be valid). `buf` starts with the frame;
/// its bytes before `seen` were checked by an earlier call. `carry` is the unfinished
/// character that ends the message's earlier fragments. Unmasks into a small stack
/// buffer: costs the new bytes, never the whole frame again.
pub fn partial_text_ok(buf: &[u8], seen: usize, carry: &[u8]) -> bool {
    let Some((_, _, mask, start)) = partial_header(buf) else { return true };
    let payload = buf.get(start..).unwrap_or_default();
    // Back up to the start of a character that may have been cut by the last read.
    let from = seen.saturating_sub(start).min(payload.len()).saturating_sub(3);
    let mut chunk = [0u8; 512];
    let carry = &carry[..carry.len().min(4)];
    let mut n = 0;
    if from == 0 {
        chunk[..carry.len()].copy_from_slice(carry);
        n = carry.len();
    }
    // Bytes right after `from` that continue a character begun before it were checked
    // with that character: start at the next character.
    let mut skipping = from > 0;
    for (i, &b) in payload.iter().enumerate().skip(from) {
        let b = b ^ mask[i & 3];
        if skipping && b & 0xc0 == 0x80 && i - from < 3 {
            continue;
        }
        skipping = false;
        chunk[n] = b;
        n += 1;
        if n == chunk.len() {
            if !utf8_prefix_ok(&chunk[..n]) {
                return false;
            }
            // Keep the unfinished character for the next chunk.
            let keep = char_start(&chunk[..n]);
            chunk.copy_within(keep..n, 0);
            n -= keep;
        }
    }
    utf8_prefix_ok(&chunk[..n])
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

/// Appends a final data frame whose payload is compressed (RSV1 set, RFC 7692 6).
pub fn write_deflated_frame(out: &mut Vec<u8>, opcode: OpCode, compressed: &[u8]) {
    let header = FrameHeader { opcode, rsv1: true, ..FrameHeader::default() };
    header.format(compressed.len() as u64, out).expect("writing a frame header into a Vec cannot fail");
    out.extend_from_slice(compressed);
}

/// The payload of one of our own (unmasked, whole) frames.
pub fn own_payload(frame: &[u8]) -> &[u8] {
    let mut cur = Cursor::new(frame);
    match FrameHeader::parse(&mut cur) {
        Ok(Some(_)) => frame.get(cur.position() as usize..).unwrap_or_default(),
        _ => &[],
    }
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
            assert!(matches!(next(&f[..cut], 1000, false), Next::Incomplete));
        }
        let Next::Frame(raw) = next(&f, 1000, false) else { panic!() };
        let mut p = f[raw.payload.clone()].to_vec();
        unmask(&mut p, raw.mask);
        assert_eq!((&p[..], raw.len, raw.fin), (&b"hello"[..], f.len(), true));
        assert!(matches!(next(&client_frame(1, true, b"x", false), 1000, false), Next::Violation(1002, _)));
        assert!(matches!(next(&client_frame(2, true, &[0; 300], true), 100, false), Next::Violation(1009, _)));
        assert!(matches!(next(&client_frame(9, false, b"", true), 100, false), Next::Violation(1002, _)));
        assert!(matches!(next(&client_frame(3, true, b"", true), 100, false), Next::Violation(1002, _)));
        // RSV1: only with permessage-deflate, and only on a data frame.
        assert!(matches!(next(&client_frame(0x41, true, b"x", true), 100, false), Next::Violation(1002, _)));
        assert!(matches!(
            next(&client_frame(0x41, true, b"x", true), 100, true),
            Next::Frame(RawFrame { rsv1: true, .. })
        ));
        assert!(matches!(next(&client_frame(0x49, true, b"", true), 100, true), Next::Violation(1002, _)));
        assert!(matches!(next(&client_frame(0x40, true, b"", true), 100, true), Next::Violation(1002, _)));
        assert!(matches!(next(&client_frame(0x21, true, b"x", true), 100, true), Next::Violation(1002, _)));
    }

    #[test]
    fn close_payloads_are_validated() {
        let close = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
        assert_eq!(close_code(b""), Ok(1000));
        assert_eq!(close_code(&close(1001, b"bye")), Ok(1001));
        assert_eq!(close_code(&close(4321, b"")), Ok(4321));
        assert_eq!(close_code(&[3]), Err((1002, "close payload of one byte")));
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert_eq!(close_code(&close(bad, b"")).map_err(|e| e.0), Err(1002), "{bad}");
        }
        assert_eq!(
            close_code(&close(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")).map_err(|e| e.0),
            Err(1007)
        );
    }

    #[test]
    fn utf8_is_checked_as_it_arrives() {
        // "κόσμε" then U+110000 encoded as if it were valid (f4 90 80 80): invalid at once.
        let text = "κόσμε".as_bytes();
        assert!(utf8_prefix_ok(text) && utf8_prefix_ok(&text[..3]));
        assert!(!utf8_prefix_ok(&[0xf4, 0x90]));
        assert_eq!(char_start(&text[..3]), 2);
        assert_eq!(char_start(b"abc"), 2);
        // A frame arriving in pieces: every prefix of a valid text is fine, and a frame
        // whose prefix holds a bad sequence is refused before the frame is complete.
        let mut bad = text.to_vec();
        bad.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]);
        bad.extend_from_slice(&[b'x'; 1200]);
        let good = client_frame(1, true, &"é".repeat(700).into_bytes(), true);
        let evil = client_frame(1, true, &bad, true);
        for cut in 1..good.len() {
            for seen in [0, cut / 2, cut.saturating_sub(1)] {
                assert!(partial_text_ok(&good[..cut], seen, b""), "cut {cut} seen {seen}");
            }
        }
        let header = 4 + 4; // 16-bit length, mask
        assert!(partial_text_ok(&evil[..header + text.len() + 1], 0, b""));
        assert!(!partial_text_ok(&evil[..header + text.len() + 2], header + text.len(), b""));
        assert!(!partial_text_ok(&evil[..evil.len() - 1], 0, b""));
        // A continuation that completes (or breaks) a character begun in the last fragment.
        let cont = client_frame(0, true, &[0xbc, b'a'], true);
        assert!(partial_text_ok(&cont[..cont.len() - 1], 0, &[0xce]));
        assert!(!partial_text_ok(&cont[..cont.len() - 1], 0, &[0x61]));
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
