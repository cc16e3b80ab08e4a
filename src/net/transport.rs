//! `Transport`: one nonblocking socket (TCP or Unix), plain or TLS, with the TLS handshake
//! done in place. Reads and writes report `WouldBlock` instead of blocking; the caller turns
//! that into interest. This file owns socket I/O and nothing about the protocol.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use openssl::ssl::{ErrorCode, Ssl, SslStream};

use super::buffer::Buf;

/// A connected nonblocking socket.
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Socket::Tcp(s) => s,
            Socket::Unix(s) => s,
        }
    }
}

/// What one I/O call achieved.
#[derive(Debug)]
pub enum Io {
    /// Moved this many bytes (never 0).
    Done(usize),
    /// The socket (or TLS) cannot go on until the next readiness event.
    WouldBlock,
    /// The peer closed the connection.
    Closed,
    Error(String),
}

/// Progress of a TLS handshake.
pub enum Handshake {
    Done,
    WouldBlock,
    Failed(String),
}

enum Layer {
    Plain(Socket),
    Tls(Box<SslStream<Socket>>),
    /// Transient state while switching layers.
    Empty,
}

pub struct Transport {
    layer: Layer,
}

impl Transport {
    pub fn new(socket: Socket) -> Transport {
        Transport {
            layer: Layer::Plain(socket),
        }
    }

    /// Start a nonblocking TCP connect (mio step 1); completion is learnt from `connected()`.
    /// The connection gets TCP keepalive and a user timeout (`keep_alive`).
    pub fn connect(addr: SocketAddr) -> io::Result<Transport> {
        let stream = TcpStream::connect(addr)?;
        keep_alive(std::os::fd::AsRawFd::as_raw_fd(&stream));
        Ok(Transport::new(Socket::Tcp(stream)))
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            self.socket_mut().source(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Move the socket to another token (a pooled connection changing hands).
    pub fn reregister(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.reregister(
            self.socket_mut().source(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(self.socket_mut().source());
    }

    fn socket_mut(&mut self) -> &mut Socket {
        match &mut self.layer {
            Layer::Plain(s) => s,
            Layer::Tls(t) => t.get_mut(),
            Layer::Empty => unreachable!("transport used while switching layers"),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.layer, Layer::Tls(_))
    }

    /// mio's connect steps 3–5: after a writable event, has the connect finished?
    /// Ok(true) connected, Ok(false) still in progress, Err refused/unreachable.
    pub fn connected(&mut self) -> Result<bool, String> {
        let Socket::Tcp(s) = self.socket_mut() else {
            return Ok(true);
        };
        if let Ok(Some(e)) | Err(e) = s.take_error() {
            return Err(e.to_string());
        }
        match s.peer_addr() {
            Ok(_) => {
                let _ = s.set_nodelay(true);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Wrap the socket in TLS; the handshake then runs through `handshake()`.
    pub fn start_tls(&mut self, ssl: Ssl) -> Result<(), String> {
        let Layer::Plain(socket) = std::mem::replace(&mut self.layer, Layer::Empty) else {
            return Err("TLS already started".into());
        };
        match SslStream::new(ssl, socket) {
            Ok(stream) => {
                self.layer = Layer::Tls(Box::new(stream));
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Drive the TLS handshake (either side; the `Ssl` knows which).
    pub fn handshake(&mut self) -> Handshake {
        let Layer::Tls(tls) = &mut self.layer else {
            return Handshake::Done;
        };
        match tls.do_handshake() {
            Ok(()) => Handshake::Done,
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                Handshake::WouldBlock
            }
            Err(e) => Handshake::Failed(tls_error_text(&e)),
        }
    }

    /// Read once into `buf`'s free space.
    pub fn read_into(&mut self, buf: &mut Buf) -> Io {
        let space = buf.space();
        if space.is_empty() {
            return Io::WouldBlock;
        }
        let result = match &mut self.layer {
            Layer::Plain(s) => map_io(s.read(space)),
            Layer::Tls(t) => map_tls(t.ssl_read(space)),
            Layer::Empty => Io::Error("transport has no socket".into()),
        };
        if let Io::Done(n) = result {
            buf.commit(n);
        }
        result
    }

    /// Read once into a plain slice (used for the single-byte SSLRequest answer).
    pub fn read_bytes(&mut self, out: &mut [u8]) -> Io {
        match &mut self.layer {
            Layer::Plain(s) => map_io(s.read(out)),
            Layer::Tls(t) => map_tls(t.ssl_read(out)),
            Layer::Empty => Io::Error("transport has no socket".into()),
        }
    }

    /// Write once from the front of `buf`, consuming what was written.
    pub fn write_from(&mut self, buf: &mut Buf) -> Io {
        if buf.is_empty() {
            return Io::WouldBlock;
        }
        let data = buf.data();
        let result = match &mut self.layer {
            Layer::Plain(s) => map_io(s.write(data)),
            Layer::Tls(t) => map_tls(t.ssl_write(data)),
            Layer::Empty => Io::Error("transport has no socket".into()),
        };
        if let Io::Done(n) = result {
            buf.consume(n);
        }
        result
    }

    /// Bytes already decrypted by TLS and waiting to be read: epoll will not report them.
    pub fn tls_pending(&self) -> bool {
        match &self.layer {
            Layer::Tls(t) => t.ssl().pending() > 0,
            _ => false,
        }
    }

    /// Best-effort TLS close_notify; never blocks.
    pub fn shutdown(&mut self) {
        if let Layer::Tls(t) = &mut self.layer {
            let _ = t.shutdown();
        }
    }
}

fn map_io(r: io::Result<usize>) -> Io {
    match r {
        Ok(0) => Io::Closed,
        Ok(n) => Io::Done(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::WouldBlock,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Io::WouldBlock,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            Io::Closed
        }
        Err(e) => Io::Error(e.to_string()),
    }
}

fn map_tls(r: Result<usize, openssl::ssl::Error>) -> Io {
    match r {
        Ok(0) => Io::Closed,
        Ok(n) => Io::Done(n),
        Err(e) => match e.code() {
            ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => Io::WouldBlock,
            ErrorCode::ZERO_RETURN => Io::Closed,
            ErrorCode::SYSCALL if e.io_error().is_none() => Io::Closed,
            _ => match e.io_error() {
                Some(io) if io.kind() == io::ErrorKind::WouldBlock => Io::WouldBlock,
                Some(io)
                    if matches!(
                        io.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    Io::Closed
                }
                _ => Io::Error(tls_error_text(&e)),
            },
        },
    }
}

fn tls_error_text(e: &openssl::ssl::Error) -> String {
    match e.ssl_error() {
        Some(stack) => format!("TLS error: {stack}"),
        None => format!("TLS error: {e}"),
    }
}

/// Probe an idle connection after this long without traffic …
pub const KEEPALIVE_IDLE_S: i32 = 10;
/// … every this many seconds, this many times, before the kernel gives up on it.
pub const KEEPALIVE_INTERVAL_S: i32 = 5;
pub const KEEPALIVE_PROBES: i32 = 3;
/// Data unacknowledged this long (a peer gone without a word) breaks the connection.
pub const USER_TIMEOUT_MS: i32 = 30_000;

/// TCP keepalive and TCP_USER_TIMEOUT on a socket to a node: a node host that vanishes
/// (power, network) breaks the connection within about 25 s idle or 30 s busy, instead of
/// the kernel's two hours. Best effort: a failing setsockopt leaves the defaults.
fn keep_alive(fd: std::os::fd::RawFd) {
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: `fd` is an open socket owned by the caller; the value is a c_int on the
        // stack, passed with its size, as setsockopt expects.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_S);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES);
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, USER_TIMEOUT_MS);
}

#[cfg(test)]
mod keep_alive_tests {
    use super::*;

    fn get(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as in `keep_alive`, reading into a c_int of the given size.
        unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        value
    }

    #[test]
    fn node_sockets_detect_a_vanished_peer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let t = Transport::connect(listener.local_addr().unwrap()).unwrap();
        let Layer::Plain(Socket::Tcp(stream)) = &t.layer else {
            panic!("a TCP socket");
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
        assert_eq!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(
            get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            KEEPALIVE_IDLE_S
        );
        assert_eq!(
            get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
            KEEPALIVE_PROBES
        );
        assert_eq!(
            get(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
            USER_TIMEOUT_MS
        );
    }
}
