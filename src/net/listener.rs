//! Listening sockets: TCP on `listen_addresses`:`port` and PostgreSQL-style Unix sockets
//! `DIR/.s.PGSQL.PORT` in `unix_socket_directories`. Accepting is the reactor's job.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use mio::event::Source;
use mio::net::{TcpListener, UnixListener};

use super::transport::Socket;

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub fn source(&mut self) -> &mut dyn Source {
        match self {
            Listener::Tcp(l) => l,
            Listener::Unix(l, _) => l,
        }
    }

    /// Accept one connection and name its peer (from accept itself: no getpeername);
    /// `Ok(None)` when no more are waiting.
    pub fn accept(&self) -> io::Result<Option<(Socket, String)>> {
        let r = match self {
            Listener::Tcp(l) => l.accept().map(|(s, addr)| {
                let _ = s.set_nodelay(true);
                (Socket::Tcp(s), addr.to_string())
            }),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| (Socket::Unix(s), "unix".into())),
        };
        match r {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(_, p) => p.display().to_string(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Resolve `listen_addresses` (`*` = every IPv4 and IPv6 address, `localhost`, names, IPs).
pub fn tcp_addresses(names: &[String], port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for name in names {
        let found: Vec<SocketAddr> = match name.as_str() {
            "*" => vec![
                SocketAddr::from(([0, 0, 0, 0], port)),
                SocketAddr::from(([0u16; 8], port)),
            ],
            host => (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("listen_addresses: cannot resolve \"{host}\": {e}"))?
                .collect(),
        };
        for a in found {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// Bind every listener. An address that cannot be bound is an error, except an IPv6 address
/// when other addresses are listed (a machine without IPv6).
pub fn bind_all(
    names: &[String],
    port: u16,
    socket_dirs: &[PathBuf],
) -> Result<Vec<Listener>, String> {
    let mut listeners = Vec::new();
    let addrs = tcp_addresses(names, port)?;
    for addr in &addrs {
        match bind_tcp(*addr) {
            Ok(l) => listeners.push(Listener::Tcp(l)),
            // No IPv6 on this machine: PostgreSQL only warns, so do we.
            Err(e) if addr.is_ipv6() && addrs.len() > 1 => {
                log::warn!("could not listen on {addr}: {e}")
            }
            Err(e) => return Err(format!("could not listen on {addr}: {e}")),
        }
    }
    for dir in socket_dirs {
        let path = dir.join(format!(".s.PGSQL.{port}"));
        if path.exists() {
            // A live pgmulti would still answer on it; a stale file is removed.
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(format!("{} is in use by another server", path.display()));
            }
            let _ = std::fs::remove_file(&path);
        }
        let l = UnixListener::bind(&path)
            .map_err(|e| format!("could not create Unix socket {}: {e}", path.display()))?;
        set_mode_0777(&path);
        listeners.push(Listener::Unix(l, path));
    }
    if listeners.is_empty() {
        return Err(
            "no listen_addresses and no unix_socket_directories: nothing to listen on".into(),
        );
    }
    Ok(listeners)
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    // std's bind sets SO_REUSEADDR on Unix, so a restart does not wait for TIME_WAIT.
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(std_listener))
}

fn set_mode_0777(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777));
}
