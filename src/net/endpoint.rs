//! `Endpoint`: one side of a session — a transport, its receive and send buffers and the
//! readiness last reported for it. `fill` and `flush` move bytes between socket and buffers
//! and always end: on `WouldBlock`, a full/empty buffer, or the per-wakeup budget.

use super::buffer::Buf;
use super::transport::{Io, Transport};

/// Size of each receive and send buffer. A message larger than this is streamed through.
pub const BUF_SIZE: usize = 32 * 1024;

/// Socket calls per direction per wakeup before yielding to other connections.
const IO_BUDGET: usize = 16;

pub struct Endpoint {
    pub transport: Transport,
    pub rx: Buf,
    pub tx: Buf,
    /// Edge-triggered readiness: set by events, cleared when a call would block.
    pub readable: bool,
    pub writable: bool,
    /// The poller reported the peer's end of stream: read until it shows, however short.
    pub read_closed: bool,
}

/// Why an endpoint cannot go on.
#[derive(Debug)]
pub enum Broken {
    Closed,
    Error(String),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Closed => f.write_str("connection closed by peer"),
            Broken::Error(e) => f.write_str(e),
        }
    }
}

impl Endpoint {
    pub fn new(transport: Transport) -> Endpoint {
        Endpoint {
            transport,
            rx: Buf::new(BUF_SIZE),
            tx: Buf::new(BUF_SIZE),
            readable: false,
            writable: false,
            read_closed: false,
        }
    }

    /// Record readiness reported by the poller.
    pub fn set_ready(&mut self, readable: bool, writable: bool, read_closed: bool) {
        self.readable |= readable || read_closed;
        self.writable |= writable;
        self.read_closed |= read_closed;
    }

    /// Read while readable and there is room. Returns the number of bytes read.
    /// On `Err`, bytes read before the end of stream are still in `rx` for the caller.
    pub fn fill(&mut self) -> Result<usize, Broken> {
        let mut total = 0;
        for _ in 0..IO_BUDGET {
            if !(self.readable || self.transport.tls_pending()) || self.rx.is_full() {
                break;
            }
            // The contiguous space this read may fill (not `free()`, which counts bytes that
            // only compaction frees): a read shorter than this drained the socket.
            let room = self.rx.space().len();
            match self.transport.read_into(&mut self.rx) {
                Io::Done(n) => {
                    total += n;
                    // A short plain read drained the socket: with edge triggering a new event
                    // comes when more arrives, so skip the read that would return EAGAIN —
                    // unless the end of stream is already known, which brings no new event.
                    if n < room && !self.transport.is_tls() && !self.read_closed {
                        self.readable = false;
                    }
                }
                Io::WouldBlock => self.readable = false,
                Io::Closed => return Err(Broken::Closed),
                Io::Error(e) => return Err(Broken::Error(e)),
            }
        }
        Ok(total)
    }

    /// Write while writable and there is something to send. Returns bytes written.
    pub fn flush(&mut self) -> Result<usize, Broken> {
        let mut total = 0;
        for _ in 0..IO_BUDGET {
            if !self.writable || self.tx.is_empty() {
                break;
            }
            let len = self.tx.len();
            match self.transport.write_from(&mut self.tx) {
                Io::Done(n) => {
                    total += n;
                    if n < len && !self.transport.is_tls() {
                        self.writable = false;
                    }
                }
                Io::WouldBlock => self.writable = false,
                Io::Closed => return Err(Broken::Closed),
                Io::Error(e) => return Err(Broken::Error(e)),
            }
        }
        Ok(total)
    }

    /// Free buffer memory while both buffers are empty (an idle connection costs little).
    pub fn release_buffers(&mut self) {
        self.rx.release();
        self.tx.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::transport::Socket;
    use std::io::Write;

    fn pair() -> (Endpoint, mio::net::UnixStream) {
        let (a, b) = mio::net::UnixStream::pair().unwrap();
        (Endpoint::new(Transport::new(Socket::Unix(a))), b)
    }

    #[test]
    fn a_read_that_fills_the_space_before_compaction_keeps_reading() {
        let (mut ep, mut peer) = pair();
        peer.write_all(&[1u8; 20_000]).unwrap();
        ep.set_ready(true, true, false);
        assert_eq!(ep.fill().unwrap(), 20_000);
        assert!(!ep.readable, "a short read drained the socket");
        // Consumed bytes at the front: less contiguous room than free room.
        ep.rx.consume(10_000);
        peer.write_all(&[2u8; 30_000]).unwrap();
        ep.set_ready(true, false, false);
        ep.fill().unwrap();
        assert!(
            ep.rx.is_full(),
            "stopped reading with {} bytes",
            ep.rx.len()
        );
        assert!(ep.readable, "data is still waiting in the socket");
    }

    #[test]
    fn end_of_stream_with_data_is_seen() {
        let (mut ep, mut peer) = pair();
        peer.write_all(b"last words").unwrap();
        drop(peer);
        ep.set_ready(true, false, true);
        assert!(matches!(ep.fill(), Err(Broken::Closed)));
        assert_eq!(ep.rx.data(), b"last words");
    }
}
