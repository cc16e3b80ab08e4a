//! A node attached while a session was open (ATTACH NODE, RECOVER NODE), or one the session
//! lost its connection to while the node stayed up, joins the session between two of its
//! transactions: pgmulti connects and logs in as the session's user,
//! applies its startup settings, then replays what the session set up on the other nodes —
//! its session-state statements (SET, PREPARE, …) and the Parse of each named prepared
//! statement — before the next request runs on every node. Until then the request waits.
//!
//! The loop attaches a node only when no session is inside a transaction (see
//! `reactor::operations`), so no transaction ever runs on a node that missed part of it.
//! Temporary tables and cursors WITH HOLD cannot be replayed: a session that made one is
//! ended (08006) instead of joined, as a direct client loses its connection with its
//! backend. LISTENs follow the lead (`listen_again` in replicate/mod.rs).

use super::node::{LoginContext, LoginStep, NodeConn};
use super::replicate::SESSION_SQL_LIMIT;
use super::{Session, Transition};
use crate::net::buffer::Buf;
use crate::protocol::framing::message_header;
use crate::protocol::MAX_MESSAGE_LEN;
use crate::reactor::context::{Context, TimerKind};

pub(super) struct Joining {
    conn: NodeConn,
    /// ReadyForQuery messages the replay still owes; None until it is sent.
    replay_left: Option<usize>,
}

impl Joining {
    pub(super) fn close(&mut self) {
        self.conn.terminate();
    }
}

impl Session {
    /// Whether the session has a connection to every live node. When it lacks some, their
    /// connections are started (or driven on) and the caller waits.
    pub(super) fn join_attached(&mut self, cx: &mut Context) -> Result<bool, Transition> {
        if self.repl.joining.is_empty() {
            if self.repl.cluster_seen == cx.shared.cluster.changes && !self.repl.reconnect {
                return Ok(true);
            }
            self.repl.cluster_seen = cx.shared.cluster.changes;
            self.repl.reconnect = false;
            let missing: Vec<u8> = cx
                .shared
                .cluster
                .live()
                .filter(|id| self.nodes.iter().all(|n| n.index != *id))
                .collect();
            if missing.is_empty() {
                return Ok(true);
            }
            if self.repl.session_objects {
                // The joining node would lack them. A direct client's session ends with the
                // backend that held them; this one ends with them too.
                let msg = format!(
                    "node(s) {missing:?} must join this session, but its temporary tables or WITH HOLD cursors cannot be copied there; reconnect"
                );
                self.fatal(cx, "08006", &msg);
                return Err(Transition::Close(msg));
            }
            if self.repl.session_sql.len() > SESSION_SQL_LIMIT {
                let msg = "a node was attached and this session set too much session state to copy to it; reconnect";
                self.fatal(cx, "57P01", msg);
                return Err(Transition::Close(msg.into()));
            }
            for id in missing {
                match self.open_node(id, cx) {
                    Ok(conn) => {
                        log::info!("{} node {id} joins the session", self.prefix);
                        self.repl.joining.push(Joining {
                            conn,
                            replay_left: None,
                        });
                    }
                    Err(e) => {
                        cx.shared.cluster.detach(id, &e);
                    }
                }
            }
            let timeout = cx.shared.config.connect_timeout;
            if !timeout.is_zero() && !self.repl.joining.is_empty() {
                cx.cancel(&mut self.connect_timer);
                self.connect_timer = Some(cx.schedule(timeout, TimerKind::Connect));
            }
        }
        self.drive_joins(cx)
    }

    /// Advance each joining connection: login, settings, replay. Ready ones join `nodes`.
    fn drive_joins(&mut self, cx: &mut Context) -> Result<bool, Transition> {
        let mut i = 0;
        while i < self.repl.joining.len() {
            match self.drive_join(i, cx)? {
                Some(true) => {
                    let j = self.repl.joining.remove(i);
                    let at = self
                        .nodes
                        .iter()
                        .position(|n| n.index > j.conn.index)
                        .unwrap_or(self.nodes.len());
                    log::info!("{} node {} joined", self.prefix, j.conn.index);
                    self.nodes.insert(at, j.conn);
                    self.publish_pids(cx);
                }
                Some(false) => i += 1,
                None => {
                    let mut j = self.repl.joining.remove(i);
                    j.conn.terminate();
                }
            }
        }
        if self.repl.joining.is_empty() {
            cx.cancel(&mut self.connect_timer);
            return Ok(true);
        }
        Ok(false)
    }

    /// One joining connection: Some(true) ready, Some(false) not yet, None dropped (its node
    /// could not be reached and was detached).
    fn drive_join(&mut self, i: usize, cx: &mut Context) -> Result<Option<bool>, Transition> {
        let settings = &self.params[self.node_param_count..];
        let j = &mut self.repl.joining[i];
        let id = j.conn.index;
        if !(j.conn.is_ready() && j.conn.configured) {
            // Messages of the login (a refusal's ErrorResponse) are not the client's business.
            let mut discard = Buf::new(64 * 1024);
            let mut lc = LoginContext {
                prefix: &self.prefix,
                user: super::startup::find_param(&self.params, "user").unwrap_or_default(),
                params: &self.params[..self.node_param_count],
                credentials: &self.credentials,
                client_tx: &mut discard,
                voice: false,
            };
            match j.conn.login_and_configure(&mut lc, settings, cx) {
                LoginStep::Pending => return Ok(Some(false)),
                LoginStep::Ready => {}
                // Unreachable, or going away (shutting down, in recovery): the node is down.
                LoginStep::Failed { reason, refused }
                    if refused
                        .as_deref()
                        .is_none_or(|c| c == "57P03" || c.starts_with("08")) =>
                {
                    cx.shared.cluster.detach(id, &reason);
                    return Ok(None);
                }
                LoginStep::Failed { reason, .. } => {
                    let msg = format!("node {id} refused this session: {reason}");
                    self.fatal(cx, "57P01", &msg);
                    return Err(Transition::Close(msg));
                }
            }
        }
        if j.replay_left.is_none() {
            let mut out = Vec::new();
            for m in &self.repl.session_sql {
                out.extend_from_slice(m);
            }
            let mut owed = self.repl.session_sql.len();
            if self.repl.statements().replay(&mut out) {
                owed += 1;
            }
            let j = &mut self.repl.joining[i];
            j.conn.send(&out);
            j.replay_left = Some(owed);
        }
        let j = &mut self.repl.joining[i];
        if let Err(e) = j.conn.flush() {
            cx.shared
                .cluster
                .detach(id, &format!("connection lost: {e}"));
            return Ok(None);
        }
        let filled = j.conn.ep.fill();
        loop {
            let data = j.conn.ep.rx.data();
            let (tag, len) = match message_header(data, MAX_MESSAGE_LEN) {
                Ok(Some(h)) if data.len() >= h.1 => h,
                Ok(_) => break,
                Err(e) => {
                    cx.shared
                        .cluster
                        .detach(id, &format!("invalid message: {e}"));
                    return Ok(None);
                }
            };
            match tag {
                b'Z' => {
                    if let Some(left) = j.replay_left.as_mut() {
                        *left = left.saturating_sub(1);
                    }
                }
                // The statement failed on the other nodes too when they share the schema.
                b'E' => log::warn!(
                    "{} node {id}: replaying the session's state gave an error: {}",
                    self.prefix,
                    crate::protocol::backend::parse_error_fields(&data[5..len])
                        .map(|f| f.message.to_string())
                        .unwrap_or_default()
                ),
                _ => {}
            }
            j.conn.ep.rx.consume(len);
        }
        if let Err(e) = filled {
            cx.shared
                .cluster
                .detach(id, &format!("connection lost: {e}"));
            return Ok(None);
        }
        Ok(Some(j.replay_left == Some(0)))
    }

    /// `connect_timeout` passed with nodes still joining: they are detached.
    pub(super) fn on_join_timeout(&mut self, cx: &mut Context) -> Transition {
        self.connect_timer = None;
        for mut j in std::mem::take(&mut self.repl.joining) {
            let id = j.conn.index;
            cx.shared
                .cluster
                .detach(id, "joining a session timed out (connect_timeout)");
            j.conn.terminate();
        }
        cx.again = true;
        Transition::Stay
    }

    pub(super) fn joining_mut(&mut self, id: u8) -> Option<&mut NodeConn> {
        self.repl
            .joining
            .iter_mut()
            .map(|j| &mut j.conn)
            .find(|n| n.index == id)
    }
}
