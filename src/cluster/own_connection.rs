//! A node connection pgmulti opens for itself, with no client behind it (health checks,
//! preconnected pool connections): nonblocking connect on the entry's token, a timer for
//! giving up, and a login as one user with user and database only.

use std::time::Duration;

use crate::net::buffer::Buf;
use crate::reactor::context::{Context, TimerKind};
use crate::reactor::token::{token, Side};
use crate::session::node::{Credentials, LoginContext, LoginStep, NodeConn};

pub struct OwnConnection {
    pub conn: Option<NodeConn>,
    user: String,
    params: Vec<crate::session::node::Param>,
    credentials: Credentials,
    prefix: String,
}

impl OwnConnection {
    /// Connect to `node`; the loop gives up after `timeout` (none when zero).
    pub fn start(
        node: u8,
        user: &str,
        database: &str,
        credentials: Credentials,
        prefix: String,
        timeout: Duration,
        cx: &mut Context,
    ) -> Result<OwnConnection, String> {
        let n = cx
            .shared
            .cluster
            .nodes
            .get(node as usize)
            .ok_or("no such node")?;
        let mut conn = NodeConn::connect(node, &n.host.clone(), n.addr)?;
        conn.ep
            .transport
            .register(cx.registry, token(cx.key, Side::Node(node)))
            .map_err(|e| e.to_string())?;
        conn.configured = true; // user and database only: nothing to SET
        if !timeout.is_zero() {
            cx.schedule(timeout, TimerKind::Connect);
        }
        Ok(OwnConnection {
            conn: Some(conn),
            user: user.to_string(),
            params: vec![
                ("user".into(), user.to_string()),
                ("database".into(), database.to_string()),
            ],
            credentials,
            prefix,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn set_ready(&mut self, readable: bool, writable: bool, read_closed: bool) {
        if let Some(c) = self.conn.as_mut() {
            c.ep.set_ready(readable, writable, read_closed);
        }
    }

    /// Advance the login (`Ready` at once when it is done already).
    pub fn login(&mut self, cx: &mut Context) -> LoginStep {
        let Some(conn) = self.conn.as_mut() else {
            return LoginStep::Failed {
                reason: "closed".into(),
                refused: None,
            };
        };
        let mut sink = Buf::new(4096);
        let mut lc = LoginContext {
            prefix: &self.prefix,
            user: &self.user,
            params: &self.params,
            credentials: &self.credentials,
            client_tx: &mut sink,
            voice: false,
        };
        conn.login(&mut lc, cx)
    }

    /// Say Terminate (if not handed on already).
    pub fn close(&mut self) {
        if let Some(mut c) = self.conn.take() {
            c.terminate();
        }
    }
}
