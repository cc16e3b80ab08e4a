//! PostgreSQL v3 frontend/backend protocol codec: pure logic over byte slices, no sockets.
//!
//! `framing` finds message boundaries and decodes the untagged startup packet, `frontend` and
//! `backend` build and parse the messages each side sends, `describe` turns a message into one
//! trace line. Nothing here panics on network input, and the hot path does not allocate:
//! parsers borrow from the caller's buffer and builders append to the caller's `Vec<u8>`.

pub mod backend;
pub mod describe;
pub mod framing;
pub mod frontend;

use std::fmt;

/// Largest startup packet accepted, as PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Upper bound on a message's length field (PostgreSQL's `MaxAllocSize - 1`).
pub const MAX_MESSAGE_LEN: usize = 0x3fff_ffff;
/// Protocol version 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: u32 = 196_608;
/// Request code of an SSLRequest.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Request code of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Request code of a CancelRequest.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A violation of the protocol found while decoding; the string is meant for a log line or an
/// ErrorResponse.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A frontend message: client → server.
    ToBackend,
    /// A backend message: server → client.
    ToClient,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_error_displays_its_text() {
        let e = ProtocolError("invalid message length 3".to_string());
        assert_eq!(e.to_string(), "invalid message length 3");
    }

    #[test]
    fn request_codes_match_postgresql() {
        assert_eq!(PROTOCOL_3_0, 3 << 16);
        assert_eq!(SSL_REQUEST_CODE, (1234 << 16) | 5679);
        assert_eq!(GSSENC_REQUEST_CODE, (1234 << 16) | 5680);
        assert_eq!(CANCEL_REQUEST_CODE, (1234 << 16) | 5678);
    }
}
