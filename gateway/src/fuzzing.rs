//! Entry points for fuzz targets (`fuzz/`): each takes arbitrary bytes from the network
//! and must never panic.

use std::sync::OnceLock;

/// The HTTP upgrade parser.
pub fn upgrade(data: &[u8]) {
    let _ = crate::upgrade::parse(data, 8192, 2048);
}

/// JWT parsing and verification (HS256 verifier with a fixed secret).
pub fn jwt(data: &[u8]) {
    static V: OnceLock<crate::auth::Verifier> = OnceLock::new();
    let v = V.get_or_init(|| crate::auth::Verifier::hs256(b"fuzzing-secret-0123456789", 0));
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = v.verify(token);
    }
}

/// WebSocket frame parsing, unmasking and partial-frame tracking.
pub fn ws_frames(data: &[u8]) {
    let mut buf = data.to_vec();
    let mut pos = 0;
    while let crate::ws::Next::Frame(f) = crate::ws::next(&buf[pos..], 1 << 16) {
        let range = pos + f.payload.start..pos + f.payload.end;
        crate::ws::unmask(&mut buf[range], f.mask);
        pos += f.len;
    }
    let _ = crate::ws::partial_after(data, 0, data.len() / 2);
}
