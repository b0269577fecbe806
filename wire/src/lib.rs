//! Every frame Switchboard speaks, in two encodings with identical meaning.
//!
//! Clients pick an encoding with `Sec-WebSocket-Protocol`: `switchboard.v1.json` (text
//! frames, for humans and browsers) or `switchboard.v1.fb` (binary FlatBuffers frames,
//! the fast path). Both codecs convert to and from one set of plain Rust types in
//! [`frame`], so the gateway never branches on the encoding past decode and encode.
//! The FlatBuffers schema lives in `schema/switchboard.fbs`; its generated code is
//! committed under `generated/` and is never edited by hand (`regen.sh`).
//!
//! # Layout
//! - [`frame`]: the canonical frames ([`frame::ClientFrame`], [`frame::ServerFrame`]) and ids.
//! - [`error`]: [`error::ErrorCode`] (what clients see), [`error::DecodeError`], close codes.
//! - [`json`]: the JSON codec.
//! - [`fb`]: the FlatBuffers codec (verifier on every decode).
//! - [`generated`]: flatc output for `schema/switchboard.fbs`.
//! - [`fuzzing`]: entry points for fuzz targets.
// Only the flatc-generated module may use `unsafe` (its accessors; every buffer is
// verified before it is read, see `fb`). Hand-written code here has none.
#![deny(unsafe_code)]

pub mod error;
pub mod fb;
pub mod frame;
pub mod fuzzing;
#[allow(
    unsafe_code,
    clippy::all,
    unused_imports,
    dead_code,
    non_camel_case_types,
    mismatched_lifetime_syntaxes,
    unsafe_op_in_unsafe_fn
)]
#[rustfmt::skip]
pub mod generated;
pub mod json;

/// The two encodings a connection can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Text frames holding JSON objects.
    Json,
    /// Binary frames holding a FlatBuffers `Envelope`.
    FlatBuffers,
}

impl Encoding {
    /// The `Sec-WebSocket-Protocol` token for this encoding.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "switchboard.v1.json",
            Encoding::FlatBuffers => "switchboard.v1.fb",
        }
    }

    /// Parses one `Sec-WebSocket-Protocol` token.
    pub fn from_subprotocol(token: &str) -> Option<Encoding> {
        match token.trim() {
            "switchboard.v1.json" => Some(Encoding::Json),
            "switchboard.v1.fb" => Some(Encoding::FlatBuffers),
            _ => None,
        }
    }

    /// Decodes one client frame in this encoding.
    pub fn decode_client(self, payload: &[u8]) -> Result<frame::ClientFrame, error::DecodeError> {
        match self {
            Encoding::Json => json::decode_client(payload),
            Encoding::FlatBuffers => fb::decode_client(payload),
        }
    }

    /// The `client_msg_id` or `req_id` of a frame [`Encoding::decode_client`] refused,
    /// for the `ref_id` of its `error` frame (best effort: `None` when unreadable).
    pub fn ref_id(self, payload: &[u8]) -> Option<String> {
        match self {
            Encoding::Json => json::ref_id(payload),
            Encoding::FlatBuffers => fb::ref_id(payload),
        }
    }

    /// Appends the encoding of a `msg` frame to `out` (the same bytes as
    /// `encode_server(&ServerFrame::Msg(..))`, from a borrowed message).
    pub fn encode_msg(self, m: &frame::MsgRef<'_>, out: &mut Vec<u8>) {
        match self {
            Encoding::Json => json::encode_msg(m, out),
            Encoding::FlatBuffers => fb::encode_msg(m, out),
        }
    }

    /// Appends the encoding of one server frame to `out`.
    pub fn encode_server(self, frame: &frame::ServerFrame, out: &mut Vec<u8>) {
        match self {
            Encoding::Json => json::encode_server(frame, out),
            Encoding::FlatBuffers => fb::encode_server(frame, out),
        }
    }
}
