//! Opening a pooled node connection ahead of any client (`preconnect`, `min_pool_size`):
//! a short-lived loop entry that connects and logs in as the pair's user with what
//! auth_file holds for it (a plaintext password or an MD5 hash; a SCRAM verifier alone
//! cannot log in), then hands the ready connection to the pool.

use super::own_connection::OwnConnection;
use super::pool::PoolKey;
use crate::reactor::context::Context;
use crate::session::node::{Credentials, LoginStep};

pub struct Preconnect {
    key: PoolKey,
    own: OwnConnection,
}

impl Preconnect {
    pub fn start(key: PoolKey, cx: &mut Context) -> Result<Preconnect, String> {
        let timeout = cx
            .shared
            .config
            .connect_timeout
            .max(std::time::Duration::from_secs(1));
        let credentials = Credentials::from_secret(cx.shared.users.get(&key.user));
        let prefix = format!("pool {}/{}@node{}", key.database, key.user, key.node);
        let own = OwnConnection::start(
            key.node,
            &key.user,
            &key.database,
            credentials,
            prefix,
            timeout,
            cx,
        )?;
        cx.shared.pool.opening(&key, 1);
        Ok(Preconnect { key, own })
    }

    pub fn set_ready(&mut self, readable: bool, writable: bool, read_closed: bool) {
        self.own.set_ready(readable, writable, read_closed);
    }

    /// Returns true when finished: the connection is in the pool, or the attempt failed.
    pub fn drive(&mut self, cx: &mut Context) -> bool {
        if self.own.conn.is_none() {
            return true;
        }
        match self.own.login(cx) {
            LoginStep::Pending => false,
            LoginStep::Ready => {
                log::debug!("{} opened", self.own.prefix());
                cx.shared.pool.opening(&self.key, -1);
                if let Some(conn) = self.own.conn.take() {
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
                    self.own.prefix()
                );
                self.close(cx);
                true
            }
        }
    }

    /// Give up (timeout or failure).
    pub fn close(&mut self, cx: &mut Context) {
        if self.own.conn.is_some() {
            cx.shared.pool.opening(&self.key, -1);
            self.own.close();
        }
    }
}
