//! Forwarding a CancelRequest: a short-lived nonblocking connection to the node that sends
//! PostgreSQL's own (process id, secret key) and closes. PostgreSQL answers nothing.

use std::net::SocketAddr;

use crate::net::endpoint::Endpoint;
use crate::net::transport::Transport;
use crate::protocol::frontend;
use crate::reactor::context::{Context, TimerKind};
use crate::reactor::token::{token, Side};

pub struct CancelConn {
    ep: Endpoint,
    connected: bool,
}

impl CancelConn {
    pub fn start(
        addr: SocketAddr,
        process_id: u32,
        secret_key: u32,
        cx: &mut Context,
    ) -> Result<CancelConn, String> {
        let mut ep = Endpoint::new(Transport::connect(addr).map_err(|e| e.to_string())?);
        ep.transport
            .register(cx.registry, token(cx.key, Side::Client))
            .map_err(|e| e.to_string())?;
        let mut msg = Vec::with_capacity(16);
        frontend::cancel_request(&mut msg, process_id, secret_key);
        ep.tx.extend(&msg);
        cx.schedule(
            cx.shared
                .config
                .connect_timeout
                .max(std::time::Duration::from_secs(1)),
            TimerKind::Connect,
        );
        log::debug!("forwarding cancel request to {addr} for backend pid {process_id}");
        Ok(CancelConn {
            ep,
            connected: false,
        })
    }

    pub fn set_ready(&mut self, readable: bool, writable: bool) {
        self.ep.set_ready(readable, writable, false);
    }

    /// Returns true when finished (sent, or failed).
    pub fn drive(&mut self, cx: &mut Context) -> bool {
        if !self.connected {
            match self.ep.transport.connected() {
                Ok(true) => self.connected = true,
                Ok(false) => return false,
                Err(e) => {
                    log::warn!("cancel request: could not connect: {e}");
                    self.close(cx.registry);
                    return true;
                }
            }
        }
        match self.ep.flush() {
            Ok(_) if self.ep.tx.is_empty() => {
                self.close(cx.registry);
                true
            }
            Ok(_) => false,
            Err(e) => {
                log::warn!("cancel request: {e}");
                self.close(cx.registry);
                true
            }
        }
    }

    pub fn close(&mut self, registry: &mio::Registry) {
        self.ep.transport.deregister(registry);
    }
}
