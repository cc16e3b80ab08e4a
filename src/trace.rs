//! The protocol trace (PgAnalyzer's idea): at `log_level = trace` every message in either
//! direction becomes one decoded line, `C-7 db/user@peer client > node0 Parse ...`, naming
//! where it came from and where it went (`client`, `pgmulti`, `node0`, …). Secrets are
//! masked by the decoder. Nothing is formatted unless the trace level is on.

use std::fmt;

use crate::protocol::describe::describe;
use crate::protocol::framing::message_header;
use crate::protocol::{Direction, MAX_MESSAGE_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Pgmulti,
    Node(u8),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Client => f.write_str("client"),
            Peer::Pgmulti => f.write_str("pgmulti"),
            Peer::Node(n) => write!(f, "node{n}"),
        }
    }
}

pub fn direction(from: Peer, to: Peer) -> Direction {
    if matches!(from, Peer::Node(_)) || to == Peer::Client {
        Direction::ToClient
    } else {
        Direction::ToBackend
    }
}

/// One trace line for one message (`body` may be a prefix of a streamed message).
pub fn trace_message(
    prefix: &str,
    from: Peer,
    to: Peer,
    tag: u8,
    body: &[u8],
    total_len: usize,
    scratch: &mut String,
) {
    if !log::log_enabled!(log::Level::Trace) {
        return;
    }
    scratch.clear();
    describe(direction(from, to), tag, body, total_len, scratch);
    log::trace!("{prefix} {from} > {to} {scratch}");
}

/// Trace every whole message in `bytes` (messages pgmulti built itself).
pub fn trace_built(prefix: &str, from: Peer, to: Peer, mut bytes: &[u8], scratch: &mut String) {
    if !log::log_enabled!(log::Level::Trace) {
        return;
    }
    while let Ok(Some((tag, len))) = message_header(bytes, MAX_MESSAGE_LEN) {
        let Some(msg) = bytes.get(..len) else { break };
        trace_message(prefix, from, to, tag, &msg[5..], len, scratch);
        bytes = &bytes[len..];
    }
}
