//! Idle node connections kept for the next client (`max_pool_size` per key). A session
//! hands its node connections back when it ends quietly; the pool resets each one (Sync,
//! ROLLBACK, DISCARD ALL — as PgBouncer's server_reset_query) and keeps it idle; a later
//! session with the same node, database, user and startup parameters takes it instead of
//! connecting and logging in. An idle connection that the node closes, or that says
//! anything unexpected, is dropped. Pooled connections have tokens of their own
//! (`POOL_TOKEN_BASE + slot`); the loop passes their events here.

use std::collections::HashMap;

use mio::{Registry, Token};
use slab::Slab;

use crate::net::endpoint::Broken;
use crate::protocol::framing::message_header;
use crate::protocol::frontend;
use crate::reactor::token::POOL_TOKEN_BASE;
use crate::session::node::NodeConn;

/// Which clients a pooled connection can serve. It was logged in with user and database
/// only; a client's other startup parameters are SET when it takes the connection, and
/// DISCARD ALL undoes them when it is handed back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: u8,
    pub database: String,
    pub user: String,
}

enum State {
    /// ReadyForQuery answers still expected for the reset.
    Resetting(u8),
    Idle,
}

struct Pooled {
    key: PoolKey,
    conn: NodeConn,
    state: State,
    /// The client settings applied again after the reset (the last client's).
    settings: Vec<(String, String)>,
}

#[derive(Default)]
pub struct Pool {
    slots: Slab<Pooled>,
    idle: HashMap<PoolKey, Vec<usize>>,
    /// Connections being opened ahead of clients, per key.
    opening: HashMap<PoolKey, usize>,
    /// Connections handed out and taken back, for SHOW POOLS later and the tests' logs.
    pub reused: u64,
}

impl Pool {
    /// An idle connection for `key`, moved to `token`, preferably one already configured
    /// with `settings` (then `configured` is true and no SET is needed; else the session
    /// configures it).
    pub fn take(
        &mut self,
        key: &PoolKey,
        settings: &[(String, String)],
        registry: &Registry,
        token: Token,
    ) -> Option<NodeConn> {
        let list = self.idle.get_mut(key)?;
        while !list.is_empty() {
            let at = list
                .iter()
                .rposition(|&slot| self.slots[slot].settings == settings)
                .unwrap_or(list.len() - 1);
            let slot = list.remove(at);
            let mut p = self.slots.remove(slot);
            if p.conn.ep.transport.reregister(registry, token).is_ok() {
                self.reused += 1;
                p.conn.from_pool = true;
                p.conn.configured = p.settings == settings;
                return Some(p.conn);
            }
            p.conn.ep.transport.deregister(registry);
        }
        None
    }

    /// Take back a connection a session no longer needs. With `reset`, its reset starts at
    /// once and ends by applying the session's `settings` again, so that the next client
    /// with the same startup parameters needs no SET; without (`pool_mode = transaction`,
    /// between two transactions of a session) it is idle at once, as the session left it.
    /// If the key already has `max` connections, it is closed instead.
    pub fn put(
        &mut self,
        key: PoolKey,
        mut conn: NodeConn,
        settings: &[(String, String)],
        reset: bool,
        max: usize,
        registry: &Registry,
    ) {
        let kept = self.idle.get(&key).map_or(0, Vec::len)
            + self
                .slots
                .iter()
                .filter(|(_, p)| p.key == key && matches!(p.state, State::Resetting(_)))
                .count();
        if kept >= max {
            conn.terminate();
            return;
        }
        if !reset {
            conn.ep.release_buffers();
            if let Some(slot) = self.insert(key.clone(), conn, State::Idle, settings, registry) {
                self.idle.entry(key).or_default().push(slot);
            }
            return;
        }
        // Sync ends any unfinished extended-protocol batch; ROLLBACK any transaction.
        let mut reset = Vec::with_capacity(64);
        frontend::sync(&mut reset);
        frontend::query(&mut reset, "ROLLBACK");
        frontend::query(&mut reset, "DISCARD ALL");
        let mut answers = 3;
        if !settings.is_empty() {
            frontend::query(&mut reset, &crate::session::node::set_sql(settings));
            answers += 1;
        }
        conn.send(&reset);
        if let Some(slot) = self.insert(key, conn, State::Resetting(answers), settings, registry) {
            self.drive(slot, registry);
        }
    }

    /// A freshly logged-in connection (preconnect): idle at once, if there is room.
    pub fn adopt(&mut self, key: PoolKey, mut conn: NodeConn, max: usize, registry: &Registry) {
        if self.idle.get(&key).map_or(0, Vec::len) >= max {
            conn.terminate();
            return;
        }
        conn.ep.release_buffers();
        if let Some(slot) = self.insert(key.clone(), conn, State::Idle, &[], registry) {
            self.idle.entry(key).or_default().push(slot);
        }
    }

    /// Give `conn` a slot and its token; None (and the connection closed) if that fails.
    fn insert(
        &mut self,
        key: PoolKey,
        mut conn: NodeConn,
        state: State,
        settings: &[(String, String)],
        registry: &Registry,
    ) -> Option<usize> {
        let entry = self.slots.vacant_entry();
        let slot = entry.key();
        if conn
            .ep
            .transport
            .reregister(registry, Token(POOL_TOKEN_BASE + slot))
            .is_err()
        {
            conn.terminate();
            return None;
        }
        entry.insert(Pooled {
            key,
            conn,
            state,
            settings: settings.to_vec(),
        });
        Some(slot)
    }

    /// Count connections being opened for `key` (+1 started, -1 finished).
    pub fn opening(&mut self, key: &PoolKey, delta: isize) {
        let n = self.opening.entry(key.clone()).or_default();
        *n = n.saturating_add_signed(delta);
    }

    /// Whether `key` has fewer than `min` connections idle or on their way.
    pub fn wants(&self, key: &PoolKey, min: usize) -> bool {
        self.idle.get(key).map_or(0, Vec::len) + self.opening.get(key).copied().unwrap_or(0) < min
    }

    /// Readiness for a pooled connection's token.
    pub fn on_ready(
        &mut self,
        token: Token,
        readable: bool,
        writable: bool,
        read_closed: bool,
        registry: &Registry,
    ) {
        let slot = token.0 - POOL_TOKEN_BASE;
        if let Some(p) = self.slots.get_mut(slot) {
            p.conn.ep.set_ready(readable, writable, read_closed);
            self.drive(slot, registry);
        }
    }

    fn drive(&mut self, slot: usize, registry: &Registry) {
        let Some(p) = self.slots.get_mut(slot) else {
            return;
        };
        let healthy = p.conn.flush().is_ok() && read_replies(p);
        if !healthy {
            let mut p = self.slots.remove(slot);
            if let Some(list) = self.idle.get_mut(&p.key) {
                list.retain(|&s| s != slot);
            }
            log::debug!("pooled connection to node {} dropped", p.key.node);
            p.conn.ep.transport.deregister(registry);
            return;
        }
        if let State::Resetting(0) = p.state {
            p.state = State::Idle;
            p.conn.ep.release_buffers();
            self.idle.entry(p.key.clone()).or_default().push(slot);
        }
    }

    /// Rows of SHOW SERVERS for the pooled connections (node, key, state, backend pid).
    pub fn server_rows(&self, rows: &mut Vec<Vec<String>>) {
        for (_, p) in self.slots.iter() {
            rows.push(vec![
                p.key.node.to_string(),
                "-".into(),
                p.key.user.clone(),
                p.key.database.clone(),
                match p.state {
                    State::Resetting(_) => "resetting",
                    State::Idle => "pooled",
                }
                .into(),
                p.conn
                    .backend_key
                    .map_or(String::new(), |(pid, _)| pid.to_string()),
                p.conn.addr.to_string(),
            ]);
        }
    }

    /// Idle connections per key, for SHOW POOLS.
    pub fn idle_counts(&self) -> Vec<(PoolKey, usize)> {
        let mut v: Vec<_> = self
            .idle
            .iter()
            .map(|(k, s)| (k.clone(), s.len()))
            .collect();
        v.sort_by(|a, b| {
            (a.0.node, &a.0.database, &a.0.user).cmp(&(b.0.node, &b.0.database, &b.0.user))
        });
        v
    }
}

/// Read what the node sent; false when the connection must be dropped.
fn read_replies(p: &mut Pooled) -> bool {
    let filled = p.conn.ep.fill();
    loop {
        let data = p.conn.ep.rx.data();
        let (tag, len) = match message_header(data, p.conn.ep.rx.capacity()) {
            Ok(Some(h)) if data.len() >= h.1 => h,
            Ok(None) | Ok(Some(_)) => break,
            Err(_) => return false,
        };
        match (&mut p.state, tag) {
            (State::Resetting(n), b'Z') if *n > 0 => *n -= 1,
            // Notices (ROLLBACK outside a transaction warns) and parameter changes.
            (
                State::Resetting(_),
                b'N' | b'S' | b'C' | b'T' | b'D' | b'I' | b'1' | b'2' | b'3' | b'n' | b't',
            ) => {}
            (State::Idle, b'N' | b'S') => {}
            _ => return false,
        }
        p.conn.ep.rx.consume(len);
    }
    match filled {
        Ok(_) => true,
        Err(Broken::Closed) | Err(Broken::Error(_)) => false,
    }
}
