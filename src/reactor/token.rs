//! Connection keys and mio tokens. A token carries the slab index, a generation and the side
//! (client socket or node socket n), so an event or timer for a connection that has been
//! closed — even if its slab slot was reused — is recognised as stale and ignored.

use mio::Token;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub index: u32,
    pub generation: u32,
}

/// Which socket of a session an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Node(u8),
}

/// Tokens at the top of the range belong to listeners and the signal pipe.
pub const SIGNAL_TOKEN: Token = Token(usize::MAX);
/// Threads (recovery stages, consistency checks) wake the loop with this token.
pub const WAKER_TOKEN: Token = Token(usize::MAX - 1);
/// The `/metrics` listeners: this base minus their index.
pub const METRICS_TOKEN_BASE: usize = usize::MAX - 2;
/// Listeners of each kind at most.
pub const MAX_LISTENERS: usize = 64;
pub const LISTENER_TOKEN_BASE: usize = usize::MAX - 1024;
/// Pooled (idle) node connections: this base plus their pool slot. Connection generations
/// are 31 bits, so session tokens stay below it.
pub const POOL_TOKEN_BASE: usize = 1 << 63;

pub fn token(key: ConnKey, side: Side) -> Token {
    let side = match side {
        Side::Client => 0usize,
        Side::Node(n) => 1 + n as usize,
    };
    Token(((key.generation as usize) << 32) | ((key.index as usize) << 8) | side)
}

/// The key and side a token names; `None` for listener and signal tokens.
pub fn decode(t: Token) -> Option<(ConnKey, Side)> {
    if t.0 >= POOL_TOKEN_BASE {
        return None;
    }
    let key = ConnKey {
        generation: (t.0 >> 32) as u32,
        index: ((t.0 >> 8) & 0x00ff_ffff) as u32,
    };
    let side = match t.0 & 0xff {
        0 => Side::Client,
        n => Side::Node((n - 1) as u8),
    };
    Some((key, side))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = ConnKey {
            index: 0x12_3456,
            generation: 0x5ead_beef,
        };
        for side in [Side::Client, Side::Node(0), Side::Node(7)] {
            assert_eq!(decode(token(key, side)), Some((key, side)));
        }
        assert_eq!(decode(SIGNAL_TOKEN), None);
        assert_eq!(decode(Token(LISTENER_TOKEN_BASE + 3)), None);
        assert_eq!(decode(Token(POOL_TOKEN_BASE + 3)), None);
    }
}
