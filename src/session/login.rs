//! The session while its node connection logs in: start it on entering `NodeLogin`, drive it
//! on node I/O, and watch the client (which may hang up) meanwhile.

use super::node::{LoginContext, LoginStep, NodeConn};
use super::{Session, State, Transition};
use crate::net::endpoint::Broken;
use crate::reactor::context::{Context, TimerKind};
use crate::reactor::token::{token, Side};

impl Session {
    pub(super) fn start_node_login(&mut self, cx: &mut Context) -> Transition {
        let Some(target) = cx.shared.nodes.first() else {
            return Transition::Close("no node configured".into());
        };
        let mut node = match NodeConn::connect(0, &target.host.clone(), target.addr) {
            Ok(n) => n,
            Err(e) => {
                self.fatal(cx, "08006", &e);
                return Transition::Close(e);
            }
        };
        if let Err(e) = node
            .ep
            .transport
            .register(cx.registry, token(cx.key, Side::Node(0)))
        {
            return Transition::Close(format!("register node socket: {e}"));
        }
        self.node = Some(node);
        self.cancel_key = cx.shared.new_cancel_key();
        let timeout = cx.shared.config.connect_timeout;
        if !timeout.is_zero() {
            self.connect_timer = Some(cx.schedule(timeout, TimerKind::Connect));
        }
        Transition::Stay
    }

    pub(super) fn on_node_login(&mut self, cx: &mut Context) -> Transition {
        let Some(node) = self.node.as_mut() else {
            return Transition::Close("no node connection".into());
        };
        let mut lc = LoginContext {
            prefix: &self.prefix,
            user: &self.user,
            params: &self.params,
            credentials: &self.credentials,
            client_tx: &mut self.client.tx,
            cancel_key: self.cancel_key,
        };
        let step = node.login(&mut lc, cx);
        // Parameters, notices and errors may have been queued for the client.
        let _ = self.client.flush();
        match step {
            LoginStep::Pending => Transition::Stay,
            LoginStep::Ready => Transition::Goto(State::Relaying),
            LoginStep::Failed { reason, forwarded } => {
                if !forwarded {
                    self.fatal(cx, "08006", &reason);
                }
                Transition::Close(reason)
            }
        }
    }

    /// The client should be waiting; read only to notice it hanging up (bytes it pipelined
    /// stay buffered for `Relaying`).
    pub(super) fn on_client_during_login(&mut self, _cx: &mut Context) -> Transition {
        if let Err(e) = self.client.flush() {
            return Transition::Close(format!("client: {e}"));
        }
        match self.client.fill() {
            Ok(_) => Transition::Stay,
            Err(Broken::Closed) => {
                Transition::Close("client closed the connection during node login".into())
            }
            Err(Broken::Error(e)) => Transition::Close(format!("client read error: {e}")),
        }
    }
}
