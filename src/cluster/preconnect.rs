//! Opening a pooled node connection ahead of any client (`preconnect`, `min_pool_size`):
//! a short-lived loop entry that connects and logs in as the pair's user with what
//! auth_file holds for it (a plaintext password or an MD5 hash; a SCRAM verifier alone
//! cannot log in), then hands the ready connection to the pool.

use super::pool::PoolKey;
use crate::net::buffer::Buf;
use crate::reactor::context::{Context, TimerKind};
use crate::reactor::token::{token, Side};
use crate::session::node::{Credentials, LoginContext, LoginStep, NodeConn};

pub struct Preconnect {
    key: PoolKey,
    conn: Option<NodeConn>,
    params: Vec<(String, String)>,
    credentials: Credentials,
    prefix: String,
}

impl Preconnect {
    pub fn start(key: PoolKey, cx: &mut Context) -> Result<Preconnect, String> {
        let node = cx
            .shared
            .cluster
            .nodes
            .get(key.node as usize)
            .ok_or("no such node")?;
        let mut conn = NodeConn::connect(key.node, &node.host.clone(), node.addr)?;
        conn.ep
            .transport
            .register(cx.registry, token(cx.key, Side::Node(key.node)))
            .map_err(|e| e.to_string())?;
        conn.configured = true; // user and database only, as every pooled connection
        let timeout = cx
            .shared
            .config
            .connect_timeout
            .max(std::time::Duration::from_secs(1));
        cx.schedule(timeout, TimerKind::Connect);
        cx.shared.pool.opening(&key, 1);
        Ok(Preconnect {
            params: vec![
                ("user".into(), key.user.clone()),
                ("database".into(), key.database.clone()),
            ],
            credentials: Credentials::from_secret(cx.shared.users.get(&key.user)),
            prefix: format!("pool {}/{}@node{}", key.database, key.user, key.node),
            key,
            conn: Some(conn),
        })
    }

    pub fn set_ready(&mut self, readable: bool, writable: bool, read_closed: bool) {
        if let Some(c) = self.conn.as_mut() {
            c.ep.set_ready(readable, writable, read_closed);
        }
    }

    /// Returns true when finished: the connection is in the pool, or the attempt failed.
    pub fn drive(&mut self, cx: &mut Context) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return true;
        };
        let mut sink = Buf::new(4096);
        let mut lc = LoginContext {
            prefix: &self.prefix,
            user: &self.key.user,
            params: &self.params,
            credentials: &self.credentials,
            client_tx: &mut sink,
            voice: false,
        };
        match conn.login(&mut lc, cx) {
            LoginStep::Pending => false,
            LoginStep::Ready => {
                log::debug!("{} opened", self.prefix);
                cx.shared.pool.opening(&self.key, -1);
                if let Some(conn) = self.conn.take() {
                    let max = cx.shared.config.max_pool_size.max(1);
                    cx.shared
                        .pool
                        .adopt(self.key.clone(), conn, max, cx.registry);
                }
                true
            }
            LoginStep::Failed { reason, .. } => {
                log::warn!(
                    "{}: could not open a pooled connection: {reason}",
                    self.prefix
                );
                self.close(cx);
                true
            }
        }
    }

    /// Give up (timeout or failure).
    pub fn close(&mut self, cx: &mut Context) {
        if let Some(mut c) = self.conn.take() {
            cx.shared.pool.opening(&self.key, -1);
            c.terminate(cx.registry);
        }
    }
}
