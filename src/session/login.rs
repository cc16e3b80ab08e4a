//! The session while its node connections log in: start them on entering `NodeLogin` (relay:
//! node 0; replication: every live node, in parallel), drive each on its I/O, and when all
//! are ready give the client pgmulti's BackendKeyData and ReadyForQuery. The client is
//! watched meanwhile (it may hang up).

use super::node::{LoginContext, LoginStep, NodeConn};
use super::{Session, State, Transition};
use crate::cluster::pool::PoolKey;
use crate::config::{Mode, PoolMode};
use crate::net::endpoint::Broken;
use crate::protocol::backend;
use crate::reactor::context::{Context, TimerKind};
use crate::reactor::token::{token, Side};

impl Session {
    pub(super) fn start_node_login(&mut self, cx: &mut Context) -> Transition {
        let targets: Vec<u8> = match cx.shared.config.mode {
            Mode::Relay => vec![0],
            Mode::Replication | Mode::Streaming => cx.shared.cluster.live().collect(),
        };
        if targets.is_empty() {
            self.fatal(cx, "08006", "no node is available: every node is detached");
            return Transition::Close("no node available".into());
        }
        if !self.may_take_node(self.pool_key(0).as_ref(), cx) {
            return Transition::Stay; // woken by the pool (`on_client_during_login`)
        }
        self.nodes.reserve_exact(targets.len());
        for id in targets {
            match self.open_node(id, cx) {
                Ok(conn) => self.nodes.push(conn),
                Err(e)
                    if cx.shared.config.mode != Mode::Relay
                        && cx.shared.cluster.live().count() > 1 =>
                {
                    cx.shared.cluster.detach(id, &e);
                }
                Err(e) => {
                    self.fatal(cx, "08006", &e);
                    return Transition::Close(e);
                }
            }
        }
        if self.nodes.is_empty() {
            self.fatal(cx, "08006", "no node could be reached");
            return Transition::Close("no node could be reached".into());
        }
        self.cancel_key = cx.shared.new_cancel_key();
        if self.nodes.iter().all(|n| n.is_ready() && n.configured) {
            return self.login_done(cx);
        }
        let timeout = cx.shared.config.connect_timeout;
        if !timeout.is_zero() {
            self.connect_timer = Some(cx.schedule(timeout, TimerKind::Connect));
        }
        // Pooled connections already have their SETs queued: get them going.
        cx.again = true;
        Transition::Stay
    }

    /// A connection to node `id` for this session, registered with the poller: from the
    /// pool (its SETs for the session's settings queued), or a new one starting to connect.
    pub(super) fn open_node(&mut self, id: u8, cx: &mut Context) -> Result<NodeConn, String> {
        let key = self.pool_key(id);
        self.open_node_keyed(id, key, cx)
    }

    /// `open_node` with the session's pool key for node `id` already made.
    pub(super) fn open_node_keyed(
        &mut self,
        id: u8,
        key: Option<PoolKey>,
        cx: &mut Context,
    ) -> Result<NodeConn, String> {
        let node_token = token(cx.key, Side::Node(id));
        if let Some(mut conn) = key.as_ref().and_then(|k| {
            cx.shared.pool.take(
                k,
                &self.params[self.node_param_count..],
                cx.registry,
                node_token,
            )
        }) {
            log::debug!("{} node {id}: connection from the pool", self.prefix);
            if let Some(k) = key.filter(|k| preconnected(cx, k)) {
                if cx.shared.pool.wants(&k, cx.shared.config.min_pool_size) {
                    cx.shared.preconnect_asks.push(k);
                }
            }
            if !conn.configured {
                conn.configure(&self.params[self.node_param_count..], true);
            }
            return Ok(conn);
        }
        let Some(node) = cx.shared.cluster.nodes.get(id as usize) else {
            return Err(format!("node {id} is not configured"));
        };
        let mut conn = NodeConn::connect(id, &node.host.clone(), node.addr)?;
        conn.ep
            .transport
            .register(cx.registry, node_token)
            .map_err(|e| format!("register node socket: {e}"))?;
        Ok(conn)
    }

    /// Every node connection is ready: the client gets the lead's parameters, pgmulti's
    /// BackendKeyData and ReadyForQuery.
    fn login_done(&mut self, cx: &mut Context) -> Transition {
        let out = &mut cx.shared.out;
        out.clear();
        if let Some(lead) = self.nodes.first() {
            for (name, value) in lead.server_params.iter() {
                backend::parameter_status(out, name, value);
            }
        }
        // Session pooling in relay mode: the client is shown its backend's own pid, so that
        // pg_backend_pid(), pg_terminate_backend() and notifications agree (pgmulti keeps
        // its own secret, which CancelRequest is checked against).
        if cx.shared.config.mode == Mode::Relay && cx.shared.config.pool_mode == PoolMode::Session {
            if let Some((pid, _)) = self.nodes.first().and_then(|n| n.backend_key) {
                if pid != 0 && !cx.shared.cancel_index.contains_key(&pid) {
                    self.cancel_key.0 = pid;
                }
            }
        }
        backend::backend_key_data(out, self.cancel_key.0, self.cancel_key.1);
        backend::ready_for_query(out, b'I');
        self.send_to_client(cx);
        Transition::Goto(match cx.shared.config.mode {
            Mode::Relay => State::Relaying,
            Mode::Replication | Mode::Streaming => State::Replicating,
        })
    }

    pub(super) fn on_node_login(&mut self, id: u8, cx: &mut Context) -> Transition {
        let voice = self.nodes.first().map(|n| n.index) == Some(id);
        let Some(node) = self.nodes.iter_mut().find(|n| n.index == id) else {
            return Transition::Stay;
        };
        let mut lc = LoginContext {
            prefix: &self.prefix,
            user: super::startup::find_param(&self.params, "user").unwrap_or_default(),
            params: &self.params[..self.node_param_count],
            credentials: &self.credentials,
            client_tx: &mut self.client.tx,
            voice,
        };
        let settings = &self.params[self.node_param_count..];
        let step = match node.login_and_configure(&mut lc, settings, cx) {
            // In replication mode a node that cannot be reached is detached; the session goes
            // on with the others. A node that refuses the login (ErrorResponse) is not down.
            LoginStep::Failed {
                reason,
                refused: None,
            } if cx.shared.config.mode != Mode::Relay && self.nodes.len() > 1 => {
                cx.shared.cluster.detach(id, &reason);
                if let Some(pos) = self.nodes.iter().position(|n| n.index == id) {
                    let mut gone = self.nodes.remove(pos);
                    gone.terminate();
                }
                LoginStep::Ready
            }
            other => other,
        };
        match step {
            LoginStep::Pending => Transition::Stay,
            LoginStep::Ready if self.nodes.iter().all(|n| n.is_ready() && n.configured) => {
                self.login_done(cx)
            }
            LoginStep::Ready => Transition::Stay,
            LoginStep::Failed { reason, refused } => {
                if refused.is_none() {
                    self.fatal(cx, "08006", &reason);
                }
                Transition::Close(reason)
            }
        }
    }

    /// The client should be waiting; read only to notice it hanging up (bytes it pipelined
    /// stay buffered for later).
    /// Also where a session queued for a node connection (`pool_mode = transaction`) is woken.
    pub(super) fn on_client_during_login(&mut self, cx: &mut Context) -> Transition {
        match self.client.fill() {
            Ok(_) if self.pool_queued => self.start_node_login(cx),
            Ok(_) => Transition::Stay,
            Err(Broken::Closed) => {
                Transition::Close("client closed the connection during node login".into())
            }
            Err(Broken::Error(e)) => Transition::Close(format!("client read error: {e}")),
        }
    }
}

/// Whether `key` is a `preconnect` pair (kept at `min_pool_size` idle connections).
fn preconnected(cx: &Context, key: &crate::cluster::pool::PoolKey) -> bool {
    cx.shared
        .config
        .preconnect
        .iter()
        .any(|(d, u)| *d == key.database && *u == key.user)
}
