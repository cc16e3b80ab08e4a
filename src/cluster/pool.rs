//! Idle node connections kept for the next client (`max_pool_size` per key). A session
//! hands its node connections back when it ends quietly; the pool resets each one (Sync,
//! ROLLBACK, DISCARD ALL — as PgBouncer's server_reset_query) and keeps it idle; a later
//! session with the same node, database, user and startup parameters takes it instead of
//! connecting and logging in. An idle connection that the node closes, or that says
//! anything unexpected, is dropped. Pooled connections have tokens of their own
//! (`POOL_TOKEN_BASE + slot`); the loop passes their events here.
//!
//! With `pool_mode = transaction` the pool also lends: it counts the connections sessions
//! hold per key, keeps the total at `max_pool_size`, and queues the sessions that find no
//! room (`lend`, `give_back`, `wait`); a connection coming back wakes the head of the line
//! through `woken`, which the loop runs in the same pass.

use std::collections::{HashMap, VecDeque};

use mio::{Registry, Token};
use slab::Slab;

use crate::net::endpoint::Broken;
use crate::protocol::framing::message_header;
use crate::protocol::frontend;
use crate::reactor::token::ConnKey;
use crate::reactor::token::POOL_TOKEN_BASE;
use crate::session::node::{NodeConn, Param};

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
    settings: Vec<Param>,
}

#[derive(Default)]
struct Lending {
    lent: usize,
    waiting: VecDeque<ConnKey>,
}

#[derive(Default)]
pub struct Pool {
    slots: Slab<Pooled>,
    idle: HashMap<PoolKey, Vec<usize>>,
    /// Connections being opened ahead of clients, per key.
    opening: HashMap<PoolKey, usize>,
    /// Connections being reset, per key.
    resetting: HashMap<PoolKey, usize>,
    /// `pool_mode = transaction`: connections sessions hold, and sessions waiting for one.
    lending: HashMap<PoolKey, Lending>,
    /// Waiting sessions to run again: a connection of their key came back or went away.
    pub woken: Vec<ConnKey>,
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
        settings: &[Param],
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
        settings: &[Param],
        reset: bool,
        max: usize,
        registry: &Registry,
    ) {
        if self.total(&key) >= max {
            conn.terminate();
            return;
        }
        if !reset {
            // Buffers kept: between transactions the connection is taken again at once.
            if let Some(slot) = self.insert(key, conn, State::Idle, settings, registry) {
                let key = &self.slots[slot].key;
                match self.idle.get_mut(key) {
                    Some(list) => list.push(slot),
                    None => {
                        self.idle.insert(key.clone(), vec![slot]);
                    }
                }
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
        if let Some(slot) = self.insert(
            key.clone(),
            conn,
            State::Resetting(answers),
            settings,
            registry,
        ) {
            *self.resetting.entry(key).or_default() += 1;
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
        settings: &[Param],
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

    fn reset_done(&mut self, key: &PoolKey) {
        if let Some(n) = self.resetting.get_mut(key) {
            *n = n.saturating_sub(1);
        }
    }

    /// Connections of `key` idle, being reset, being opened ahead of clients, and (in
    /// transaction pooling) held by sessions.
    fn total(&self, key: &PoolKey) -> usize {
        self.idle.get(key).map_or(0, Vec::len)
            + self.resetting.get(key).copied().unwrap_or(0)
            + self.opening.get(key).copied().unwrap_or(0)
            + self.lending.get(key).map_or(0, |l| l.lent)
    }

    /// `pool_mode = transaction`: whether a session may take a connection of `key` now — one
    /// is idle, or fewer than `max` exist — without jumping the queue (a session the pool
    /// `woken` is at its head). If so it is counted as lent until `give_back`.
    pub fn lend(&mut self, key: &PoolKey, max: usize, woken: bool) -> bool {
        let queue_empty = self.lending.get(key).is_none_or(|l| l.waiting.is_empty());
        let room = self.idle.get(key).is_some_and(|l| !l.is_empty()) || self.total(key) < max;
        if room && (woken || queue_empty) {
            self.lending_mut(key).lent += 1;
            return true;
        }
        false
    }

    /// The key's lending state, made on first use (no key copy once it exists: this runs
    /// per transaction).
    fn lending_mut(&mut self, key: &PoolKey) -> &mut Lending {
        if !self.lending.contains_key(key) {
            self.lending.insert(key.clone(), Lending::default());
        }
        self.lending.get_mut(key).expect("just inserted")
    }

    /// A lent connection is no longer held (it is about to be `put` back, or closed).
    pub fn give_back(&mut self, key: &PoolKey) {
        if let Some(l) = self.lending.get_mut(key) {
            l.lent = l.lent.saturating_sub(1);
        }
        self.wake_one(key);
    }

    /// Queue `session` for a connection of `key`: at the head when it was woken and lost the
    /// connection to a newcomer, else at the tail.
    pub fn wait(&mut self, key: &PoolKey, session: ConnKey, head: bool) {
        let l = self.lending_mut(key);
        if head {
            l.waiting.push_front(session);
        } else {
            l.waiting.push_back(session);
        }
    }

    /// Whether `session` is still queued for `key` (not woken yet).
    pub fn is_waiting(&self, key: &PoolKey, session: ConnKey) -> bool {
        self.lending
            .get(key)
            .is_some_and(|l| l.waiting.contains(&session))
    }

    /// A queued session leaves (its client went away). If it had been woken already, the
    /// wake-up passes to the next in line.
    pub fn leave_queue(&mut self, key: &PoolKey, session: ConnKey) {
        let Some(l) = self.lending.get_mut(key) else {
            return;
        };
        match l.waiting.iter().position(|&s| s == session) {
            Some(at) => {
                l.waiting.remove(at);
            }
            None => self.wake_one(key),
        }
    }

    /// Sessions waiting for `key`.
    fn waiting(&self, key: &PoolKey) -> usize {
        self.lending.get(key).map_or(0, |l| l.waiting.len())
    }

    fn wake_one(&mut self, key: &PoolKey) {
        if let Some(session) = self
            .lending
            .get_mut(key)
            .and_then(|l| l.waiting.pop_front())
        {
            self.woken.push(session);
        }
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
            log::debug!("pooled connection to node {} dropped", p.key.node);
            self.drop_slot(slot, registry);
            return;
        }
        if let State::Resetting(0) = p.state {
            p.state = State::Idle;
            p.conn.ep.release_buffers();
            let key = p.key.clone();
            self.reset_done(&key);
            self.wake_one(&key);
            self.idle.entry(key).or_default().push(slot);
        }
    }

    /// Take a connection out of the pool and close it.
    fn drop_slot(&mut self, slot: usize, registry: &Registry) {
        let mut p = self.slots.remove(slot);
        if let Some(list) = self.idle.get_mut(&p.key) {
            list.retain(|&s| s != slot);
        }
        if let State::Resetting(_) = p.state {
            self.reset_done(&p.key);
        }
        p.conn.ep.transport.deregister(registry);
        p.conn.terminate();
        self.wake_one(&p.key);
    }

    /// Close every pooled connection to `database` (on any node): a statement that needs
    /// the database without other connections is about to run (`DROP DATABASE` & co,
    /// `request::databases_needed_alone`). Returns how many were closed.
    pub fn close_database(&mut self, database: &str, registry: &Registry) -> usize {
        let slots: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, p)| p.key.database == database)
            .map(|(slot, _)| slot)
            .collect();
        for &slot in &slots {
            self.drop_slot(slot, registry);
        }
        slots.len()
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

    /// Per key: idle connections, connections sessions hold (transaction pooling) and
    /// sessions waiting for one, for SHOW POOLS.
    pub fn counts(&self) -> Vec<(PoolKey, [usize; 3])> {
        let mut keys: Vec<&PoolKey> = self.idle.keys().chain(self.lending.keys()).collect();
        keys.sort_by(|a, b| (a.node, &a.database, &a.user).cmp(&(b.node, &b.database, &b.user)));
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                let idle = self.idle.get(k).map_or(0, Vec::len);
                let lent = self.lending.get(k).map_or(0, |l| l.lent);
                (k.clone(), [idle, lent, self.waiting(k)])
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PoolKey {
        PoolKey {
            node: 0,
            database: "db".into(),
            user: "u".into(),
        }
    }

    fn session(index: u32) -> ConnKey {
        ConnKey {
            index,
            generation: 1,
        }
    }

    #[test]
    fn lending_stops_at_max_and_wakes_the_queue_in_order() {
        let mut pool = Pool::default();
        let k = key();
        assert!(pool.lend(&k, 2, false));
        assert!(pool.lend(&k, 2, false));
        assert!(!pool.lend(&k, 2, false), "a third connection beyond max 2");
        pool.wait(&k, session(1), false);
        pool.wait(&k, session(2), false);
        assert!(pool.is_waiting(&k, session(1)));
        assert_eq!(pool.counts()[0].1, [0, 2, 2]);
        // One comes back: the head of the line is woken, and only it.
        pool.give_back(&k);
        assert_eq!(pool.woken, vec![session(1)]);
        assert!(!pool.is_waiting(&k, session(1)));
        // A newcomer does not jump the line while someone waits ...
        assert!(!pool.lend(&k, 2, false));
        // ... the woken session goes first.
        assert!(pool.lend(&k, 2, true));
        assert_eq!(pool.counts()[0].1, [0, 2, 1]);
    }

    #[test]
    fn a_woken_session_that_leaves_passes_the_wake_up_on() {
        let mut pool = Pool::default();
        let k = key();
        assert!(pool.lend(&k, 1, false));
        pool.wait(&k, session(1), false);
        pool.wait(&k, session(2), false);
        pool.wait(&k, session(3), false);
        // A queued session leaving is simply taken out of the line.
        pool.leave_queue(&k, session(2));
        assert!(!pool.is_waiting(&k, session(2)));
        assert!(pool.woken.is_empty());
        pool.give_back(&k);
        assert_eq!(std::mem::take(&mut pool.woken), vec![session(1)]);
        // Woken but gone before it ran: the next in line is woken instead.
        pool.leave_queue(&k, session(1));
        assert_eq!(pool.woken, vec![session(3)]);
        assert!(pool.lend(&k, 1, true));
    }

    #[test]
    fn a_woken_session_that_lost_the_race_waits_at_the_head() {
        let mut pool = Pool::default();
        let k = key();
        assert!(pool.lend(&k, 1, false));
        pool.wait(&k, session(1), false);
        pool.give_back(&k);
        assert_eq!(std::mem::take(&mut pool.woken), vec![session(1)]);
        // Before session 1 runs, a newcomer finds the line empty and room: it takes it.
        assert!(pool.lend(&k, 1, false));
        pool.wait(&k, session(2), false);
        // Session 1 runs, finds no room, and goes back in line ahead of session 2.
        assert!(!pool.lend(&k, 1, true));
        pool.wait(&k, session(1), true);
        pool.give_back(&k);
        assert_eq!(pool.woken, vec![session(1)]);
    }
}
