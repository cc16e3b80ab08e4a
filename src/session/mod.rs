//! The client session: one client connection and the node connection it relays to, driven
//! by an event × state table. `Session::handle` is the only entry point; `table` names the
//! handler of every (state, event) cell; `apply` is the only place a state changes — it logs
//! `A -(event)-> B`, counts it and runs the entry actions of the new state.
//!
//! Handlers live beside this file by subject: `startup` (first packets, client TLS),
//! `client_auth` (pgmulti authenticating the client), `node` (the node connection and its
//! login), `relay` (moving messages and tracing them).

mod admin;
pub mod budget;
mod client_auth;
mod join;
mod login;
pub mod node;
pub mod pids;
mod relay;
mod replicate;
mod startup;

use std::time::{Duration, Instant};

use crate::net::endpoint::Endpoint;
use crate::net::transport::{Socket, Transport};
use crate::protocol::backend;
use crate::reactor::context::{Context, TimerKind};
use crate::reactor::timer::TimerId;
use crate::reactor::token::{token, Side};
use crate::trace;

use crate::cluster::pool::PoolKey;
use client_auth::ClientAuth;
use node::Credentials;
use node::NodeConn;

/// Close pgmulti's idle pooled connections to `databases`: a client statement needs them
/// without other connections (`replication::request::databases_needed_alone`).
fn close_pooled(prefix: &str, databases: &[String], cx: &mut Context) {
    for database in databases {
        let closed = cx.shared.pool.close_database(database, cx.registry);
        if closed > 0 {
            log::info!(
                "{prefix} closed {closed} pooled connection(s) to database \"{database}\" for this statement"
            );
        }
    }
}

/// After this long without traffic a session frees its buffers.
const IDLE_SWEEP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for SSLRequest / GSSENCRequest / CancelRequest / StartupMessage.
    Startup,
    /// TLS handshake with the client after answering 'S'.
    ClientTls,
    /// pgmulti checks the client's password (cleartext, MD5 or SCRAM exchange).
    Authenticating,
    /// Connecting and logging in to the node; the client waits.
    NodeLogin,
    /// Messages flow both ways (relay mode).
    Relaying,
    /// Requests are replicated over every live node (replication mode).
    Replicating,
    /// The admin console (database `pgmulti`): commands answered by pgmulti itself.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    ClientIo,
    NodeIo(u8),
    Timer(TimerKind),
    /// SIGTERM: finish the running transaction, then leave.
    Shutdown,
}

/// What a handler decided.
pub enum Transition {
    Stay,
    Goto(State),
    Close(String),
}

pub struct Session {
    pub id: u64,
    /// "C-<id> <database>/<user>@<peer>", the start of its log lines; also where the peer's
    /// address is kept.
    prefix: String,
    state: State,
    client: Endpoint,
    client_tls: bool,
    /// Connections to the nodes this session uses (relay: node 0; replication: every live
    /// node), in node id order.
    nodes: Vec<NodeConn>,
    /// The client's startup parameters. The first `node_param_count` go into the nodes'
    /// StartupMessage (user and database when the session's node connections can be pooled,
    /// else all); the others are applied with SET after login (see `NodeConn::configure`).
    params: Vec<node::Param>,
    node_param_count: usize,
    /// Its node connections can come from and go back to the pool.
    poolable: bool,
    /// The client asked for the admin console.
    admin: bool,
    auth: Option<ClientAuth>,
    credentials: Credentials,
    /// The (process id, secret key) pgmulti gave the client for CancelRequest.
    pub cancel_key: (u32, u32),
    auth_timer: Option<TimerId>,
    connect_timer: Option<TimerId>,
    idle_timer: Option<TimerId>,
    last_activity: Instant,
    /// Bytes of a large message still to stream through, per direction.
    client_stream_left: usize,
    node_stream_left: usize,
    /// Transaction status of the last ReadyForQuery relayed ('I', 'T', 'E').
    tx_status: u8,
    /// Relay: ReadyForQuery messages the node still owes the client.
    awaiting_ready: i64,
    /// Relay: when the node was last given work with none in flight (for latency).
    request_started: Instant,
    /// Relay: the client's last message was not a Query, Sync or FunctionCall — an
    /// extended-protocol batch is open (`pool_mode = transaction` keeps the connection).
    open_batch: bool,
    repl: replicate::LazyReplication,
    /// Waiting at the gate (see `reactor::context::Gate`) with a request not yet started.
    at_gate: bool,
    /// `pool_mode = transaction`: holds a node connection counted against `max_pool_size`
    /// (see `Pool::lend`), or is queued for one.
    lent: bool,
    pool_queued: bool,
    /// Logged in, its first request not started yet (see `handle`).
    just_logged_in: bool,
    /// The admin console is waiting for the loop to finish a command.
    admin_waiting: bool,
    /// Unix seconds (SHOW CLIENTS shows no more).
    connected_at: u64,
    draining: bool,
    closed: bool,
}

impl Session {
    pub fn new(id: u64, socket: Socket, peer: String, cx: &mut Context) -> Session {
        let transport = Transport::new(socket);
        let timeout = cx.shared.config.authentication_timeout;
        let auth_timer =
            (!timeout.is_zero()).then(|| cx.schedule(timeout, TimerKind::Authentication));
        Session {
            id,
            prefix: format!("C-{id} ?@{peer}"),
            state: State::Startup,
            client: Endpoint::new(transport),
            client_tls: false,
            nodes: Vec::new(),
            params: Vec::new(),
            node_param_count: 0,
            poolable: false,
            admin: false,
            auth: None,
            credentials: Credentials::default(),
            cancel_key: (0, 0),
            auth_timer,
            connect_timer: None,
            idle_timer: None,
            last_activity: cx.now,
            client_stream_left: 0,
            node_stream_left: 0,
            tx_status: b'I',
            awaiting_ready: 0,
            request_started: cx.now,
            open_batch: false,
            repl: Default::default(),
            at_gate: false,
            lent: false,
            pool_queued: false,
            just_logged_in: false,
            admin_waiting: false,
            connected_at: crate::timestamp::now().0,
            draining: false,
            closed: false,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The client's address (kept at the end of the prefix).
    fn peer(&self) -> &str {
        self.prefix.rsplit_once('@').map_or("", |(_, peer)| peer)
    }

    pub fn register(&mut self, cx: &mut Context) -> std::io::Result<()> {
        self.client
            .transport
            .register(cx.registry, token(cx.key, Side::Client))
    }

    /// Record readiness reported by the poller for one of this session's sockets.
    pub fn set_ready(&mut self, side: Side, readable: bool, writable: bool, read_closed: bool) {
        let ep = match side {
            Side::Client => Some(&mut self.client),
            Side::Node(id) => self.node_mut(id).map(|n| &mut n.ep),
        };
        if let Some(ep) = ep {
            ep.set_ready(readable, writable, read_closed);
        }
    }

    fn node_mut(&mut self, id: u8) -> Option<&mut NodeConn> {
        if self.nodes.iter().any(|n| n.index == id) {
            return self.nodes.iter_mut().find(|n| n.index == id);
        }
        self.joining_mut(id)
    }

    /// Where a CancelRequest for this session must go: each node's address and its own key,
    /// but not to `except`.
    pub fn node_cancel_targets(&self, except: Option<u8>) -> Vec<(std::net::SocketAddr, u32, u32)> {
        self.nodes
            .iter()
            .filter(|n| Some(n.index) != except)
            .filter_map(|n| n.backend_key.map(|(pid, secret)| (n.addr, pid, secret)))
            .collect()
    }

    /// Record which node backends stand behind the pid the client was given (after login and
    /// whenever a node connection is dropped or joins).
    fn publish_pids(&self, cx: &mut Context) {
        let backends = self
            .nodes
            .iter()
            .filter_map(|n| n.backend_key.map(|(pid, _)| (n.index, pid)));
        cx.shared.pids.publish(self.cancel_key.0, backends);
    }

    /// In a transaction or running a request: what PAUSE and node changes wait for.
    pub fn busy(&self) -> bool {
        match self.state {
            State::Relaying => {
                self.tx_status != b'I' || self.awaiting_ready > 0 || self.client_stream_left > 0
            }
            State::Replicating => self.repl.busy(),
            _ => false,
        }
    }

    /// Whether a new transaction may start now; if not, the session waits at the gate and
    /// the loop wakes it when the gate opens.
    fn gate_open(&mut self, cx: &mut Context) -> bool {
        if !cx.shared.gate.closed() {
            self.at_gate = false;
            return true;
        }
        if !self.at_gate {
            self.at_gate = true;
            cx.shared.gate.waiting.push(cx.key);
            log::debug!("{} waits: new transactions are paused", self.prefix);
        }
        false
    }

    /// Woken by the loop: the gate opened.
    pub fn leave_gate(&mut self) {
        self.at_gate = false;
    }

    /// A row of SHOW CLIENTS.
    pub fn client_row(&self) -> Option<Vec<String>> {
        let state = match self.state {
            State::Admin => "admin",
            State::Relaying | State::Replicating if self.at_gate => "waiting (paused)",
            _ if self.pool_queued => "waiting (pool)",
            State::Relaying | State::Replicating if self.busy() => match self.tx_status {
                b'T' => "in transaction",
                b'E' => "in failed transaction",
                _ => "active",
            },
            State::Relaying | State::Replicating => "idle",
            _ => "logging in",
        };
        let since = crate::timestamp::format_utc(self.connected_at, 0)[..19].to_string();
        Some(vec![
            self.id.to_string(),
            self.param("user").unwrap_or_default().to_string(),
            self.param("database").unwrap_or_default().to_string(),
            state.to_string(),
            self.peer().to_string(),
            if self.client_tls { "on" } else { "off" }.to_string(),
            since,
            self.nodes
                .iter()
                .map(|n| n.index.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ])
    }

    /// Rows of SHOW SERVERS: this session's node connections.
    pub fn server_rows(&self, rows: &mut Vec<Vec<String>>) {
        for n in &self.nodes {
            rows.push(vec![
                n.index.to_string(),
                self.id.to_string(),
                self.param("user").unwrap_or_default().to_string(),
                self.param("database").unwrap_or_default().to_string(),
                if !n.is_ready() {
                    "login"
                } else if self.busy() {
                    "active"
                } else {
                    "idle"
                }
                .to_string(),
                n.backend_key
                    .map_or(String::new(), |(pid, _)| pid.to_string()),
                n.addr.to_string(),
            ]);
        }
    }

    /// Run one event through the table. Returns the close reason when the session ended.
    pub fn handle(&mut self, event: Event, cx: &mut Context) -> Option<String> {
        if self.closed {
            return None;
        }
        let t = self.table(event, cx);
        let closed = self.apply(event, t, cx);
        if closed.is_none() && !self.client.tx.is_empty() && !self.holds_client_output() {
            // Whatever a handler queued for the client (auth requests, errors) goes out now.
            if let Err(e) = self.client.flush() {
                return Some(format!("client write error: {e}"));
            }
        }
        if self.just_logged_in && closed.is_none() && self.is_quiet() {
            // Logged in and nothing asked yet: the login's buffers go now rather than after
            // IDLE_SWEEP. Freed while few other logins are running, their memory is reused
            // by the next ones instead of leaving holes between thousands of idle sessions.
            self.just_logged_in = false;
            self.release_buffers();
        }
        closed
    }

    /// The event × state table: every cell names its handler.
    fn table(&mut self, event: Event, cx: &mut Context) -> Transition {
        use Event::*;
        use State::*;
        match (self.state, event) {
            (Startup, ClientIo) => self.on_startup_packet(cx),
            (ClientTls, ClientIo) => self.on_client_tls(cx),
            (Authenticating, ClientIo) => self.on_auth_message(cx),
            (NodeLogin, ClientIo) => self.on_client_during_login(cx),
            (NodeLogin, NodeIo(id)) => self.on_node_login(id, cx),
            (Relaying, ClientIo | NodeIo(_)) => self.on_relay(cx),
            (Replicating, ClientIo | NodeIo(_)) => self.on_replicate(cx),
            (Admin, ClientIo) => self.on_admin(cx),
            (
                Startup | ClientTls | Authenticating | NodeLogin,
                Timer(TimerKind::Authentication),
            ) => {
                self.auth_timer = None;
                self.fatal(cx, "08006", "canceling authentication due to timeout");
                Transition::Close("authentication timeout".into())
            }
            (NodeLogin, Timer(TimerKind::Connect)) => {
                self.connect_timer = None;
                let msg = format!(
                    "could not connect to node 0: timeout after {:?}",
                    cx.shared.config.connect_timeout
                );
                self.fatal(cx, "08006", &msg);
                Transition::Close(msg)
            }
            (Relaying | Replicating, Timer(TimerKind::Idle)) => self.on_idle_timer(cx),
            (Replicating, Timer(TimerKind::Connect)) => self.on_join_timeout(cx),
            (Relaying, Timer(TimerKind::Connect)) => self.on_relay_connect_timeout(cx),
            (Relaying | Replicating, Shutdown) => {
                self.draining = true;
                self.close_if_drained(cx)
            }
            (_, Shutdown) => {
                self.fatal(
                    cx,
                    "57P01",
                    "terminating connection due to administrator command",
                );
                Transition::Close("server shutting down".into())
            }
            // No node socket yet, or a timer that no longer applies to this state.
            (Startup | ClientTls | Authenticating | Admin, NodeIo(_)) | (_, Timer(_)) => {
                Transition::Stay
            }
        }
    }

    /// The only place a state changes.
    fn apply(&mut self, event: Event, t: Transition, cx: &mut Context) -> Option<String> {
        match t {
            Transition::Stay => None,
            Transition::Close(reason) => Some(reason),
            Transition::Goto(next) => {
                let from = self.state;
                self.state = next;
                cx.shared.stats.transitions += 1;
                log::debug!("{} {:?} -({:?})-> {:?}", self.prefix, from, event, next);
                match self.enter(next, cx) {
                    Transition::Stay => None,
                    chained => self.apply(event, chained, cx),
                }
            }
        }
    }

    /// Entry actions of each state.
    fn enter(&mut self, state: State, cx: &mut Context) -> Transition {
        match state {
            // Bytes may already be buffered (or held by TLS): look at them now.
            State::Startup | State::Authenticating => {
                cx.again = true;
                Transition::Stay
            }
            State::ClientTls => self.on_client_tls(cx),
            State::NodeLogin if self.admin => Transition::Goto(State::Admin),
            State::NodeLogin => self.start_node_login(cx),
            State::Admin => self.open_admin(cx),
            State::Relaying | State::Replicating => {
                self.just_logged_in = true;
                cx.cancel(&mut self.auth_timer);
                cx.cancel(&mut self.connect_timer);
                cx.shared.cancel_index.insert(self.cancel_key.0, cx.key);
                self.publish_pids(cx);
                self.last_activity = cx.now;
                self.idle_timer = Some(cx.schedule(IDLE_SWEEP, TimerKind::Idle));
                cx.again = true;
                Transition::Stay
            }
        }
    }

    /// Queue a FATAL ErrorResponse for the client (sent by the close path's last flush).
    fn fatal(&mut self, cx: &mut Context, code: &str, message: &str) {
        self.send_error(cx, "FATAL", code, message, None);
    }

    fn send_error(
        &mut self,
        cx: &mut Context,
        severity: &str,
        code: &str,
        message: &str,
        hint: Option<&str>,
    ) {
        // TLS not finished, or the client never spoke the protocol: nothing sensible to send.
        if self.state == State::ClientTls {
            return;
        }
        let out = &mut cx.shared.out;
        out.clear();
        backend::error_response(out, severity, code, message, None, hint);
        self.send_to_client(cx);
    }

    /// Append `cx.shared.out` (messages pgmulti built) to the client's send buffer, traced.
    /// The user the client logged in as ("" before its startup message).
    fn user_name(&self) -> &str {
        startup::find_param(&self.params, "user").unwrap_or_default()
    }

    fn send_to_client(&mut self, cx: &mut Context) {
        trace::trace_built(
            &self.prefix,
            trace::Peer::Pgmulti,
            trace::Peer::Client,
            &cx.shared.out,
            &mut cx.shared.scratch,
        );
        // Never dropped, even when a client that does not read has filled its buffer.
        self.client.tx.extend_always(&cx.shared.out);
    }

    /// Turn the client away right after accept (too many clients, shutting down).
    pub fn refuse(&mut self, cx: &mut Context, code: &str, message: &str) {
        self.fatal(cx, code, message);
        self.close(message, cx);
    }

    /// Final: flush what can be flushed without blocking, unregister, forget timers.
    pub fn close(&mut self, reason: &str, cx: &mut Context) {
        if self.closed {
            return;
        }
        self.closed = true;
        let _ = self.client.flush();
        // Closing the socket (when the session is freed) also takes it out of the poller.
        self.client.transport.shutdown();
        self.release_nodes(cx);
        if let Some(repl) = self.repl.made() {
            for mut j in std::mem::take(&mut repl.joining) {
                j.close();
            }
        }
        cx.cancel(&mut self.auth_timer);
        cx.cancel(&mut self.connect_timer);
        cx.cancel(&mut self.idle_timer);
        if cx.shared.cancel_index.get(&self.cancel_key.0) == Some(&cx.key) {
            cx.shared.cancel_index.remove(&self.cancel_key.0);
            cx.shared.pids.forget(self.cancel_key.0);
        }
        cx.shared.stats.sessions_closed += 1;
        log::info!("{} closing: {}", self.prefix, reason);
    }

    /// Split the client's startup parameters into what the nodes' StartupMessage carries
    /// and what is SET afterwards. Parameters that cannot be SET (`options`, `replication`,
    /// protocol options) keep the connections out of the pool.
    fn split_startup_params(&mut self) {
        let poolable = self.params.iter().all(|(k, _)| {
            !matches!(k.as_ref(), "options" | "replication") && !k.starts_with("_pq_.")
        });
        // Stable: node parameters first, each group in the client's order.
        self.params
            .sort_by_key(|(k, _)| !(!poolable || k == "user" || k == "database"));
        self.node_param_count = self
            .params
            .iter()
            .filter(|(k, _)| !poolable || k == "user" || k == "database")
            .count();
        self.params.shrink_to_fit();
        self.poolable = poolable;
    }

    /// The parameters applied with SET after login.
    fn settings(&self) -> &[node::Param] {
        &self.params[self.node_param_count..]
    }

    /// The pool key for this session's connection to `node`; None when its connections
    /// cannot be shared (see `split_startup_params`).
    fn pool_key(&self, node: u8) -> Option<PoolKey> {
        let get = |name: &str| self.param(name).unwrap_or_default().to_string();
        self.poolable.then(|| PoolKey {
            node,
            database: get("database"),
            user: get("user"),
        })
    }

    /// At the end: node connections with nothing in flight go back to the pool, the others
    /// are closed.
    fn release_nodes(&mut self, cx: &mut Context) {
        let quiet = match self.state {
            State::Relaying => {
                self.awaiting_ready == 0
                    && self.client_stream_left == 0
                    && self.node_stream_left == 0
            }
            State::Replicating => self.repl.is_idle(),
            _ => false,
        };
        if self.lent || self.pool_queued {
            self.leave_lending(self.pool_key(0).as_ref(), cx);
        }
        let max = cx.shared.config.max_pool_size;
        for mut node in std::mem::take(&mut self.nodes) {
            let key = self.pool_key(node.index);
            match key {
                Some(key)
                    if quiet
                        && max > 0
                        && node.is_quiet()
                        && cx.shared.cluster.is_up(node.index) =>
                {
                    cx.shared
                        .pool
                        .put(key, node, self.settings(), true, max, cx.registry)
                }
                _ => node.terminate(),
            }
        }
    }

    fn on_idle_timer(&mut self, cx: &mut Context) -> Transition {
        self.idle_timer = None;
        if self.state == State::Replicating
            && (!self.repl.is_idle() || self.repl.primary_wait.is_some())
        {
            if let Err(t) = self.check_late_nodes(cx) {
                return t;
            }
            // Keep sweeping while a request runs: no node answer may wake the session.
            self.idle_timer = Some(cx.schedule(IDLE_SWEEP, TimerKind::Idle));
            return self.on_replicate(cx);
        }
        let idle_for = cx.now.saturating_duration_since(self.last_activity);
        let limit = cx.shared.config.client_idle_timeout;
        if !limit.is_zero() && idle_for >= limit && self.tx_status == b'I' {
            self.fatal(
                cx,
                "57P05",
                "terminating connection due to idle timeout (client_idle_timeout)",
            );
            return Transition::Close(format!("client idle for {idle_for:?}"));
        }
        if idle_for >= IDLE_SWEEP {
            self.release_buffers();
        }
        let next = if limit.is_zero() {
            if idle_for >= IDLE_SWEEP {
                return Transition::Stay; // buffers released; the next activity re-arms
            }
            IDLE_SWEEP - idle_for
        } else {
            limit
                .saturating_sub(idle_for)
                .min(IDLE_SWEEP)
                .max(Duration::from_millis(10))
        };
        self.idle_timer = Some(cx.schedule(next, TimerKind::Idle));
        Transition::Stay
    }

    fn release_buffers(&mut self) {
        if self.client_stream_left == 0 && self.node_stream_left == 0 {
            self.client.release_buffers();
            for n in &mut self.nodes {
                n.ep.release_buffers();
            }
        }
    }

    /// Nothing in flight and the node idle: a draining session may go now.
    fn is_quiet(&self) -> bool {
        self.tx_status == b'I'
            && self.repl.is_idle()
            && self.client.rx.is_empty()
            && self.client.tx.is_empty()
            && self
                .nodes
                .iter()
                .all(|n| n.ep.rx.is_empty() && n.ep.tx.is_empty())
    }

    /// After a handler's passes over client and nodes: if it stopped with work left
    /// (`exhausted`), it runs again in the next pass of the loop; the activity keeps the idle
    /// sweep away; a draining session whose work is done closes.
    fn end_of_passes(&mut self, exhausted: bool, cx: &mut Context) -> Transition {
        if exhausted {
            cx.again = true;
        }
        self.last_activity = cx.now;
        if self.idle_timer.is_none() {
            self.idle_timer = Some(cx.schedule(IDLE_SWEEP, TimerKind::Idle));
        }
        self.close_if_drained(cx)
    }

    fn close_if_drained(&mut self, cx: &mut Context) -> Transition {
        // A request waiting at the gate has not started: it is not run during a shutdown.
        if self.draining && (self.is_quiet() || self.at_gate) {
            self.fatal(
                cx,
                "57P01",
                "terminating connection due to administrator command",
            );
            return Transition::Close("server shutting down".into());
        }
        Transition::Stay
    }
}

#[cfg(test)]
mod tests {
    /// An idle client costs about its session: the memory goal (per idle client no more
    /// than PgBouncer's, docs/benchmarks.md) is met with these sizes. Growing them needs a
    /// reason and a new measurement.
    #[test]
    fn an_idle_session_stays_small() {
        use std::mem::size_of;
        assert!(
            size_of::<super::Session>() <= 400,
            "{}",
            size_of::<super::Session>()
        );
        assert!(size_of::<crate::net::buffer::Buf>() <= 32);
        assert!(size_of::<super::node::Credentials>() <= 56);
    }
}
