//! What a connection's handler may touch besides itself: the clock reading of this loop pass,
//! its own key, the mio registry, the timer wheel and the shared, loop-owned state. Handlers
//! never reach into other connections; they leave requests (a cancel to forward) here for
//! the loop to carry out after the handler returns.

use std::collections::HashMap;
use std::time::Instant;

use mio::Registry;

use super::timer::{TimerId, TimerWheel};
use super::token::ConnKey;
use crate::auth::userlist::UserList;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::net::tls::{ClientTls, NodeTls};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// `authentication_timeout`: from accept until the session is relaying.
    Authentication,
    /// `connect_timeout`: from the node connect until the node is ready.
    Connect,
    /// Idle housekeeping: release buffers, enforce `client_idle_timeout`.
    Idle,
    /// Time for the next round of health checks (on the loop's own key).
    Health,
    /// A deadline of an admin operation (see `operations`).
    Deadline,
}

#[derive(Debug, Clone, Copy)]
pub struct TimerEvent {
    pub key: ConnKey,
    pub kind: TimerKind,
}

/// A CancelRequest a client sent; the loop finds the session and forwards it.
#[derive(Debug, Clone, Copy)]
pub struct CancelAsk {
    pub process_id: u32,
    /// What the client's CancelRequest carried; `None`: pgmulti's own ask, after a node
    /// allowed `pg_cancel_backend()` of that session.
    pub secret_key: Option<u32>,
    /// A node not to ask: the lead, whose `pg_cancel_backend()` already signaled that
    /// backend. A second signal could reach the client's next statement there.
    pub except: Option<u8>,
}

/// Requests from the admin console that the loop carries out (it owns reload and exit).
#[derive(Default, Debug)]
pub struct AdminAsks {
    pub reload: bool,
    pub shutdown: bool,
    /// Commands that take time; the loop answers the asking session when they are done.
    pub long: Vec<(ConnKey, LongAsk)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LongAsk {
    Pause,
    Resume,
    Attach(u8),
    Recover(u8),
    /// `mode = streaming`, no primary up: promote this standby.
    Promote(u8),
    /// `mode = streaming`: hand the primary's role to this standby.
    Switchover(u8),
    CheckConsistency(Option<String>),
    ShowClients,
    ShowServers,
}

/// Holds new transactions back (PAUSE, and while a node is attached or recovered): a
/// session about to start a transaction waits here; running transactions go on.
#[derive(Default, Debug)]
pub struct Gate {
    /// PAUSE from the admin console, until RESUME.
    pub paused: bool,
    /// Node changes (attach, recovery stage 2) and consistency checks taking their
    /// snapshots that hold it closed.
    pub holds: usize,
    /// Sessions waiting for the gate to open.
    pub waiting: Vec<ConnKey>,
}

impl Gate {
    pub fn closed(&self) -> bool {
        self.paused || self.holds > 0
    }
}

#[derive(Default, Debug)]
pub struct Stats {
    pub sessions_accepted: u64,
    pub sessions_closed: u64,
    pub transitions: u64,
    pub protocol_errors: u64,
    /// Copied from the log queue every loop pass.
    pub log_lines_dropped: u64,
}

/// State owned by the loop and shared by all handlers (single-threaded, no locks).
pub struct Shared {
    pub config: Config,
    pub users: UserList,
    pub client_tls: Option<ClientTls>,
    pub node_tls: NodeTls,
    pub cluster: Cluster,
    /// pgmulti-issued process id → session, for CancelRequest.
    pub cancel_index: HashMap<u32, ConnKey>,
    pub cancel_asks: Vec<CancelAsk>,
    /// Node backends (address, pid, secret) whose running statement pgmulti cancels
    /// itself (`node_response_timeout`).
    pub backend_cancels: Vec<(std::net::SocketAddr, u32, u32)>,
    /// The node backends behind each client pid (notifications, pg_terminate_backend).
    pub pids: crate::session::pids::Pids,
    pub next_process_id: u32,
    pub stats: Stats,
    /// Reused for formatting trace lines.
    pub scratch: String,
    /// Bumped whenever a session changes the schema: cached column defaults are stale.
    pub ddl_epoch: u64,
    /// Idle node connections for reuse.
    pub pool: crate::cluster::pool::Pool,
    /// What the admin console asked the loop to do.
    pub admin_asks: AdminAsks,
    /// `commit_protocol = two_phase`: where commit decisions are written.
    pub two_phase: Option<crate::replication::two_phase::DecisionLog>,
    /// Memory held for client messages larger than a receive buffer (`max_message_memory`).
    pub message_memory: crate::session::budget::MessageMemory,
    /// Pool keys that need a connection opened ahead of clients (`preconnect`).
    pub preconnect_asks: Vec<crate::cluster::pool::PoolKey>,
    /// Reused for building messages pgmulti sends itself.
    pub out: Vec<u8>,
    /// Reused for each node message replication mode reads (see `session::replicate`).
    pub node_msg: Vec<u8>,
    pub gate: Gate,
    /// Nodes whose failed health check is to be retried.
    pub health_retries: Vec<u8>,
    /// Nodes to check now: a session lost its connection to them.
    pub health_now: Vec<u8>,
    /// `mode = streaming`: the furthest commit position a session's reads wait for a
    /// standby to replay; 0 when none. The loop reads the positions of standbys that have
    /// not replayed it yet sooner than the next health check (`POSITION_PROBE_INTERVAL`).
    pub wanted_lsn: u64,
    /// Random cancel-key secrets not handed out yet.
    pub secrets: Vec<u32>,
    /// Drawn once: makes the SCRAM salt of a user that does not exist stable, as
    /// PostgreSQL's mock authentication does (`ScramServer::mock`).
    pub mock_nonce: [u8; 32],
    /// SCRAM verifiers made for plaintext passwords of the auth file, by user (with the
    /// password they were made of): PBKDF2 runs once per user, not once per login.
    pub verifiers: HashMap<String, (String, crate::auth::userlist::ScramSecret)>,
}

pub struct Context<'a> {
    pub now: Instant,
    pub key: ConnKey,
    pub registry: &'a Registry,
    pub timers: &'a mut TimerWheel<TimerEvent>,
    pub shared: &'a mut Shared,
    /// Set by a handler that stopped because its budget ran out: run it again next pass.
    pub again: bool,
}

impl Context<'_> {
    pub fn schedule(&mut self, after: std::time::Duration, kind: TimerKind) -> TimerId {
        let key = self.key;
        self.timers
            .schedule(self.now + after, TimerEvent { key, kind })
    }

    pub fn cancel(&mut self, timer: &mut Option<TimerId>) {
        if let Some(id) = timer.take() {
            self.timers.cancel(id);
        }
    }
}
