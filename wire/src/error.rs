//! Errors: the stable codes clients see, decode failures, and WebSocket close codes.
//!
//! Exactly one place in the gateway turns internal failures into these.

use std::fmt;

/// A stable error code carried by the `error` frame. The number (FlatBuffers) and the
/// name (JSON) never change meaning; new codes are only added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame could not be parsed (bad JSON, failed FlatBuffers verification).
    BadFrame,
    /// The frame's `op` is not one the server accepts from clients.
    UnknownOp,
    /// A required field is missing.
    MissingField,
    /// A field has an invalid value (bad conversation id, both `to` and `conv`, ...).
    BadValue,
    /// The message body is larger than the configured limit.
    BodyTooLarge,
    /// The conversation does not exist or the user is not a member.
    NotMember,
    /// The server failed to store or read; retry later (the message was not stored).
    Internal,
    /// The server is shutting down or overloaded; retry later.
    Unavailable,
    /// Too many requests: the sender's rate limit is exhausted; retry after
    /// `retry_after_ms`. The message was not stored.
    RateLimited,
    /// The user may not do this (a group change by a non-admin, demoting the last admin).
    Forbidden,
    /// The request would exceed a configured size limit (members per group).
    LimitExceeded,
}

impl ErrorCode {
    /// Every code, for documentation and round-trip tests.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadFrame,
        ErrorCode::UnknownOp,
        ErrorCode::MissingField,
        ErrorCode::BadValue,
        ErrorCode::BodyTooLarge,
        ErrorCode::NotMember,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::RateLimited,
        ErrorCode::Forbidden,
        ErrorCode::LimitExceeded,
    ];

    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::BadValue => "bad_value",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::NotMember => "not_member",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::LimitExceeded => "limit_exceeded",
        }
    }

    /// The FlatBuffers number.
    pub fn number(self) -> u16 {
        match self {
            ErrorCode::BadFrame => 1,
            ErrorCode::UnknownOp => 2,
            ErrorCode::MissingField => 3,
            ErrorCode::BadValue => 4,
            ErrorCode::BodyTooLarge => 5,
            ErrorCode::NotMember => 6,
            ErrorCode::Internal => 7,
            ErrorCode::Unavailable => 8,
            ErrorCode::RateLimited => 9,
            ErrorCode::Forbidden => 10,
            ErrorCode::LimitExceeded => 11,
        }
    }

    /// True when the same request may succeed later.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::Internal | ErrorCode::Unavailable | ErrorCode::RateLimited)
    }

    /// Inverse of [`ErrorCode::name`].
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Inverse of [`ErrorCode::number`].
    pub fn from_number(n: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.number() == n)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a frame could not be decoded. Each maps to one [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON / not a verifiable FlatBuffer.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The `op` (or union type) is not a client frame.
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field is present but invalid.
    #[error("invalid `{field}`: {reason}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl DecodeError {
    /// The code the client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Malformed(_) => ErrorCode::BadFrame,
            DecodeError::UnknownOp(_) => ErrorCode::UnknownOp,
            DecodeError::MissingField(_) => ErrorCode::MissingField,
            DecodeError::BadValue { .. } => ErrorCode::BadValue,
        }
    }
}

/// WebSocket close codes the server uses (RFC 6455 section 7.4).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away (server shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: bad framing, unmasked client frame, bad fragment sequence.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Unsupported data: a binary frame on a JSON connection or text on a FlatBuffers one.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Invalid payload: a text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation.
    pub const POLICY: u16 = 1008;
    /// Message too big: a frame or reassembled message over the configured limit.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Service restart (graceful drain).
    pub const RESTART: u16 = 1012;
    /// Application: an older connection of a device that connected again.
    pub const REPLACED: u16 = 4000;
    /// Application: the device was revoked (`POST /revoke`); sign in again.
    pub const REVOKED: u16 = 4003;
    /// Application: no frame or pong within `idle_timeout_secs`.
    pub const IDLE: u16 = 4408;

    /// Whether a peer may send `code` in a close frame (RFC 6455 7.4 and the IANA
    /// registry): the defined codes 1000-1003 and 1007-1014, and 3000-4999 for
    /// libraries and applications. 1004 is reserved; 1005, 1006 and 1015 must never be
    /// sent; 1016-2999 are reserved for future revisions; the rest are not codes.
    pub fn valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(c.name()), Some(c));
            assert_eq!(ErrorCode::from_number(c.number()), Some(c));
        }
        let mut nums: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.number()).collect();
        nums.sort();
        nums.dedup();
        assert_eq!(nums.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn close_codes_valid_on_the_wire() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] {
            assert!(close::valid_on_wire(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!close::valid_on_wire(bad), "{bad}");
        }
    }
}
