//! Entry points for fuzz targets: each takes arbitrary bytes and must never panic.

/// Decodes arbitrary bytes as a JSON client frame.
pub fn json_client(data: &[u8]) {
    let _ = crate::json::decode_client(data);
}

/// Verifies and decodes arbitrary bytes as a FlatBuffers client frame.
pub fn fb_client(data: &[u8]) {
    let _ = crate::fb::decode_client(data);
}
