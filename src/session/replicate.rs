//! The session in replication mode (`State::Replicating`): it takes one client request at a
//! time, plans it (`replication::plan`), runs the phases over its node connections, passes
//! the answer of one node (the voice) to the client, compares the others' answers, detaches
//! the nodes that disagree with the majority, and ends the request with its own
//! ReadyForQuery. Requests the client pipelines wait in its receive buffer.
//!
//! What a statement is comes from `replication::request`; how phases are chosen from
//! `replication::plan`; the vote from `replication::compare`. This file only moves messages.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::node::NodeConn;
use super::pids;
use super::{Session, Transition};
use crate::config::Mode;
use crate::net::endpoint::Broken;
use crate::protocol::backend;
use crate::protocol::framing::message_header;
use crate::protocol::frontend;
use crate::reactor::context::Context;
use crate::replication::catalog::{self, TableInfo};
use crate::replication::compare::{self, Outcome};
use crate::replication::defaults;
use crate::replication::effect_runs::EffectRuns;
use crate::replication::effects;
use crate::replication::extended::{self, Statements};
use crate::replication::large_objects;
use crate::replication::lexer::split_statements;
use crate::replication::plan::{self, Plan, Planned, Segment, Targets, TxView};
use crate::replication::request;
use crate::replication::two_phase;
use crate::trace::{trace_message, Peer};

/// Passes over client and nodes per wakeup before yielding to other sessions.
const PASSES: usize = 8;

/// The client's share of an answer held back while other nodes finish (see
/// `Session::holds_client_output`) is sent at once beyond this size.
const HOLD_MAX: usize = 16 * 1024;

/// A node message buffer larger than this (after a big row) is not kept for reuse.
const NODE_MSG_KEEP: usize = 64 * 1024;

/// `write_ack = async`: a session whose statements wait unsent for a node (one running
/// behind, or stopped) beyond this many bytes takes no further request until they drain,
/// so that the backlog of a slow replica stays bounded and the client is pushed back.
const NODE_BACKLOG_MAX: usize = 4 * 1024 * 1024;

/// The largest client message accepted in replication mode: a statement is kept whole
/// until every node has run it.
pub const MAX_REPLICATED_MESSAGE: usize = 64 * 1024 * 1024;

/// Per-session replication state.
#[derive(Default)]
pub struct Replication {
    request: Option<Box<Request>>,
    tx: Tx,
    /// The node this session's reads go to, chosen at its first read (weights × speed) and
    /// kept while it stays in the session: OIDs a catalog query returned, txid_current(),
    /// pg_relation_size() and the like then agree from one statement to the next, as psql's
    /// `\d` needs (pgpool-II balances per session too).
    read_node: Option<u8>,
    /// The channels the session listens on (as written), and the node whose connection
    /// holds those LISTENs: the lead; when the lead changes (or its connection is made
    /// again) the next request outside a transaction runs them there first, so that
    /// notifications keep coming (only the lead's reach the client).
    listening: Vec<String>,
    listen_node: Option<u8>,
    /// `mode = streaming`: since when the next request waits for a standby's promotion.
    pub(super) primary_wait: Option<Instant>,
    /// `mode = streaming`: where the primary's WAL ended after this session's last commit;
    /// its reads go to a standby that has replayed that far.
    wal_lsn: u64,
    /// A client message larger than the receive buffer, being collected, and the memory
    /// held for it (and for its copies to the nodes) until its request ends.
    large: Vec<u8>,
    large_held: Option<super::budget::Held>,
    /// What the lead's catalog says of the tables this session wrote to, by folded name;
    /// valid while `tables_epoch` equals the cluster-wide DDL epoch.
    tables: HashMap<String, TableInfo>,
    tables_epoch: u64,
    /// `write_ack = async`: replicas still running statements whose answer the client has.
    behind: Vec<Running>,
    /// Extended-protocol messages received since the last Sync.
    batch: Vec<u8>,
    /// The session's prepared statements and portals.
    statements: Statements,
    /// A COMMIT waiting for `behind` to finish.
    parked: Option<Vec<u8>>,
    /// `node_response_timeout` for the parked COMMIT: since when it waits, and whether the
    /// late replicas' statements were canceled.
    parked_late: Option<(Instant, bool)>,

    /// Session-state statements (SET, PREPARE, …) sent as simple Queries, oldest first,
    /// each once: replayed to a node that joins the session.
    pub(super) session_sql: Vec<Vec<u8>>,
    /// Nodes attached since the session logged in, being connected (see `join`).
    pub(super) joining: Vec<super::join::Joining>,
    /// `Cluster::changes` when the session last compared its nodes with the live ones.
    pub(super) cluster_seen: u64,
    /// The session lost a connection to a live node: it connects again between
    /// transactions (see `join`).
    pub(super) reconnect: bool,
    /// The FATAL error a node sent before closing a connection (it explains the loss).
    node_fatal: Option<(u8, String)>,
}

/// A relay session never uses its `Replication`: it is made on first use, so that idle relay
/// sessions do not carry it.
#[derive(Default)]
pub struct LazyReplication(Option<Box<Replication>>);

impl LazyReplication {
    /// The state if it was ever made (no allocation).
    pub(super) fn made(&mut self) -> Option<&mut Replication> {
        self.0.as_deref_mut()
    }
}

impl std::ops::Deref for LazyReplication {
    type Target = Replication;
    fn deref(&self) -> &Replication {
        static NONE: std::sync::OnceLock<Replication> = std::sync::OnceLock::new();
        self.0
            .as_deref()
            .unwrap_or_else(|| NONE.get_or_init(Replication::default))
    }
}

impl std::ops::DerefMut for LazyReplication {
    fn deref_mut(&mut self) -> &mut Replication {
        self.0.get_or_insert_with(Box::default)
    }
}

/// Distinct session-state statements remembered for replay; beyond this the session cannot
/// take a joining node and ends when one is attached.
pub(super) const SESSION_SQL_LIMIT: usize = 256;

#[derive(Default)]
struct Tx {
    view: TxView,
    /// The transaction's timestamp for rewritten now() & co.
    timestamp: Option<request::Moment>,
    /// `write_ack = async`: every node's answers to the statements that ran behind, compared
    /// at COMMIT.
    async_answers: Vec<(u8, Vec<Outcome>)>,
    /// A plain BEGIN pgmulti answered itself: each node gets it (pipelined, ahead of the
    /// first statement sent to it) when the transaction first reaches it. Saves every
    /// transaction one round trip to every node.
    begin: Option<Vec<u8>>,
    /// The nodes that got `begin`.
    begun: Vec<u8>,
    /// A node's connection was lost while the transaction was open: its statements are
    /// answered with this (40001), not 25P02, until it ends.
    lost: Option<String>,
    /// `write_ack = async`: statements of the transaction were canceled on late replicas
    /// (`node_response_timeout`); what its COMMIT's failure says.
    late_note: Option<String>,
}

impl Tx {
    /// An error pgmulti raised itself: inside a transaction block it aborts the transaction,
    /// as an error from PostgreSQL would.
    fn fail(&mut self) {
        if self.view.open {
            self.view.failed = true;
        }
    }

    /// The ReadyForQuery status byte of this state.
    fn status(&self) -> u8 {
        match (self.view.open, self.view.failed) {
            (false, _) => b'I',
            (true, false) => b'T',
            (true, true) => b'E',
        }
    }
}

impl Replication {
    pub fn is_idle(&self) -> bool {
        self.request.is_none() && self.behind.is_empty() && self.parked.is_none()
    }

    /// In a transaction, or a request or batch under way.
    pub fn busy(&self) -> bool {
        !self.is_idle() || self.tx.view.open || !self.batch.is_empty() || !self.large.is_empty()
    }

    pub(super) fn statements(&self) -> &Statements {
        &self.statements
    }
}

/// Add `outcome` to `node`'s list.
fn record(answers: &mut Vec<(u8, Vec<Outcome>)>, node: u8, outcome: Outcome) {
    match answers.iter_mut().find(|(n, _)| *n == node) {
        Some((_, o)) => o.push(outcome),
        None => answers.push((node, vec![outcome])),
    }
}

struct Request {
    /// The Query message sent as `Segment::Main` (rewritten where needed).
    main: Vec<u8>,
    /// The statement text for log lines.
    text: String,
    /// Run on the lead just before Main: locks that order concurrent writers (sequences).
    ordering_lock: Option<String>,
    plan: Plan,
    next_phase: usize,
    running: Vec<Running>,
    /// Node ids that ran Main, with their outcomes (for the vote).
    answers: Vec<(u8, Vec<Outcome>)>,
    lead: u8,
    voice: u8,
    lead_failed: bool,
    /// Client pids this request signals (`pg_terminate_backend` / `pg_cancel_backend`),
    /// and whether it terminates them. A cancel the lead allowed reaches every node the
    /// session runs on, as its own CancelRequest would.
    signals: Vec<(u32, bool)>,
    /// `mode = streaming`: the primary's WAL position after this request committed.
    wal_lsn: Option<u64>,
    /// The voice's last ReadyForQuery status.
    status: u8,
    /// The client is sending COPY data for the running nodes.
    copy_in: bool,
    /// An error pgmulti reports before ReadyForQuery.
    error: Option<(&'static str, String)>,
    phase_started: Instant,
    /// `node_response_timeout`: since when (first seen by the sweep) the voice has
    /// answered the phase that started at `.0` while other nodes still run it, and whether
    /// their statements were canceled.
    others_late_since: Option<(Instant, Instant, bool)>,
    /// The late nodes' statements were canceled: what the client is told if it fails.
    late_note: Option<String>,
    /// What its LISTEN / UNLISTEN statements do, once the lead ran them.
    listens: Vec<request::Listen>,
    /// pgmulti's own request (the session's LISTENs run again on a new lead): nothing of
    /// it is answered to the client.
    internal: bool,
    /// This request is pgmulti's own catalog query, run before the client's `original`.
    probe: Option<Probe>,
    /// The request changes the schema: cached column defaults are stale afterwards.
    ddl: bool,
    /// The node that answered the client failed during this request.
    voice_lost: Option<u8>,
    /// What the request is (COMMIT needs care when the lead fails).
    class: plan::Class,
    /// A CommandComplete pgmulti sends for a voice that failed after the outcome was known.
    complete_tag: Option<&'static str>,
    /// Replicas ran this request's last phase behind (`write_ack = async`).
    ran_behind: bool,
    /// The ReadyForQuery status to report, when pgmulti decides it.
    final_status: Option<u8>,
    /// Extended protocol: what the client sees of the voice's answer to each Describe.
    describes: VecDeque<extended::DescribeFix>,
    /// The batch ran an unnamed statement as a read: it now lives on the voice only.
    unnamed_read: bool,
    /// See `extended::Batch::parses_only`.
    parses_only: Option<Vec<u8>>,
    /// See `extended::Batch::flush_replies`: no ReadyForQuery ends this request.
    flush_replies: Option<usize>,
    /// Two-phase commit: the transaction identifier, the nodes that prepared it, the first
    /// PREPARE error, whether the commit was decided, or the rollback chosen instead.
    gid: Option<String>,
    /// The commit decision's number in the decision log, once written.
    decision: Option<u64>,
    prepared: Vec<u8>,
    prepare_error: Option<String>,
    committed: bool,
    rolling_back: bool,
    voice_prepare_failed: bool,
    /// Writes replicated by their effect (see `replication::effects`).
    effects: Option<Box<EffectRuns>>,
    /// The nodes disagreed and pgmulti's own transaction was rolled back on every node.
    rolled_back: bool,
}

/// Looking up tables in the lead's catalog before a write (see `replication::catalog`).
struct Probe {
    original: Vec<u8>,
    /// (table as written, folded key) asked about.
    tables: Vec<(String, String)>,
    /// The rows of the answer (table as written, kind, name, detail).
    rows: Vec<[String; 4]>,
    error: Option<String>,
}

impl Request {
    /// The voice has given its whole answer to this phase and other nodes are still running
    /// theirs (sync replicas after the lead). Not while COPY data or a Flush batch needs the
    /// client to act on what it has.
    fn waits_for_others(&self) -> bool {
        !self.copy_in
            && self.flush_replies.is_none()
            && self
                .running
                .iter()
                .all(|run| run.node != self.voice || run.pending.is_empty())
            && self.running.iter().any(|run| !run.pending.is_empty())
    }

    /// The 40001 message when the nodes' results differed (`race_message`), saying so when
    /// a late node's statement was canceled.
    fn race_message(&self) -> String {
        match &self.late_note {
            Some(note) => format!(
                "could not replicate \"{}\": {note}; it was rolled back on every node and can be retried",
                self.text
            ),
            None => race_message(&self.text),
        }
    }

    fn new(main: Vec<u8>, text: String, plan: Plan, lead: u8, voice: u8, now: Instant) -> Request {
        Request {
            main,
            text,
            ordering_lock: None,
            plan,
            next_phase: 0,
            running: Vec::new(),
            answers: Vec::new(),
            lead,
            voice,
            lead_failed: false,
            signals: Vec::new(),
            wal_lsn: None,
            status: b'I',
            copy_in: false,
            error: None,
            phase_started: now,
            others_late_since: None,
            late_note: None,
            listens: Vec::new(),
            internal: false,
            probe: None,
            ddl: false,
            voice_lost: None,
            class: plan::Class::Read,
            complete_tag: None,
            ran_behind: false,
            final_status: None,
            describes: VecDeque::new(),
            unnamed_read: false,
            parses_only: None,
            flush_replies: None,
            gid: None,
            decision: None,
            prepared: Vec::new(),
            prepare_error: None,
            committed: false,
            rolling_back: false,
            voice_prepare_failed: false,
            effects: None,
            rolled_back: false,
        }
    }
}

impl Request {
    /// See `Session::lost_commit`.
    fn fail_commit(&mut self, lost: Option<String>) {
        if let Some(lost) = lost {
            self.error = Some(("40001", lost));
            self.final_status = Some(b'I');
        }
    }
}

struct Running {
    node: u8,
    pending: VecDeque<Segment>,
    /// Flush batches: messages that ended an answer so far.
    replies: usize,
    /// Per statement (Execute) of Main still to answer: the node runs an effect-checked
    /// statement, and when it succeeds, it did what the lead did, and this (the lead's
    /// outcome) is recorded for it.
    checked: VecDeque<Option<Outcome>>,
    /// Flush batches: how many more messages end this node's answer than the lead's.
    extra_replies: usize,
}

impl Session {
    /// The voice's answer waits in the client's send buffer until the replicas have answered
    /// too: it goes out with pgmulti's ReadyForQuery in one write, and the client wakes once
    /// per statement instead of twice.
    pub(super) fn holds_client_output(&self) -> bool {
        self.client.tx.len() < HOLD_MAX
            && self
                .repl
                .request
                .as_ref()
                .is_some_and(|r| r.waits_for_others())
    }

    pub(super) fn on_replicate(&mut self, cx: &mut Context) -> Transition {
        let mut exhausted = true;
        for _ in 0..PASSES {
            let mut progress = false;
            let gone = match self.client.fill() {
                Ok(n) => {
                    progress |= n > 0;
                    None
                }
                Err(Broken::Closed) => Some("client closed the connection".to_string()),
                Err(Broken::Error(e)) => Some(format!("client read error: {e}")),
            };
            if let Some(why) = gone {
                return self.finish_two_phase_then_close(why, cx);
            }
            match self.node_io(cx) {
                Ok(p) => progress |= p,
                Err(t) => return t,
            }
            match self.node_replies(cx) {
                Ok(p) => progress |= p,
                Err(t) => return t,
            }
            match self.client_requests(cx) {
                Ok(p) => progress |= p,
                Err(t) => return t,
            }
            if let Err(t) = self.listen_again(cx) {
                return t;
            }
            match self.node_io(cx) {
                Ok(p) => progress |= p,
                Err(t) => return t,
            }
            if !self.holds_client_output() {
                match self.client.flush() {
                    Ok(n) => progress |= n > 0,
                    Err(e) => return Transition::Close(format!("client write error: {e}")),
                }
            }
            if !progress {
                exhausted = false;
                break;
            }
        }
        if exhausted {
            cx.again = true;
        }
        self.last_activity = cx.now;
        if self.idle_timer.is_none() {
            self.idle_timer =
                Some(cx.schedule(super::IDLE_SWEEP, crate::reactor::context::TimerKind::Idle));
        }
        self.close_if_drained(cx)
    }

    /// The client is gone. A two-phase commit under way is carried to its end first (the
    /// session stays until the nodes have answered), so that what the nodes prepared is
    /// committed or rolled back now, not left prepared, holding its locks, until a restart.
    fn finish_two_phase_then_close(&mut self, why: String, cx: &mut Context) -> Transition {
        let in_two_phase = |s: &Self| s.repl.request.as_ref().is_some_and(|r| r.gid.is_some());
        if !in_two_phase(self) {
            return Transition::Close(why);
        }
        // Its answer reaches nobody; the buffer must not fill and hold the nodes' replies up.
        self.client.tx.consume(self.client.tx.len());
        for step in [Self::node_io, Self::node_replies, Self::node_io] {
            if let Err(t) = step(self, cx) {
                return t;
            }
            self.client.tx.consume(self.client.tx.len());
        }
        if in_two_phase(self) {
            Transition::Stay
        } else {
            Transition::Close(why)
        }
    }

    /// `write_ack = async`, inside a transaction: the statements replicas run behind stay in
    /// their send buffers (up to half of one) until something needs them — the COMMIT,
    /// parked until they are done, or a request for that node. Each replica then gets the
    /// transaction's statements in one write and wakes once instead of once per statement.
    /// A bit per node id.
    fn held_replicas(&self, cx: &Context) -> u128 {
        if cx.shared.config.write_ack != crate::config::WriteAck::Async
            || self.repl.parked.is_some()
        {
            return 0;
        }
        let mut held = 0u128;
        for b in &self.repl.behind {
            held |= 1 << b.node;
        }
        if let Some(r) = &self.repl.request {
            for run in &r.running {
                held &= !(1 << run.node);
            }
        }
        held
    }

    /// Flush and fill every node connection; drop the nodes detached elsewhere
    /// (`lose_node`) and the connections that broke (`lose_connection`).
    fn node_io(&mut self, cx: &mut Context) -> Result<bool, Transition> {
        let mut progress = false;
        // Detached by a health check or another session: nothing waits on it any longer.
        let detached: Vec<u8> = self
            .nodes
            .iter()
            .map(|n| n.index)
            .filter(|&id| !cx.shared.cluster.is_up(id))
            .collect();
        for id in detached {
            self.lose_node(id, "it was detached", cx)?;
            progress = true;
        }
        let mut lost = Vec::new();
        let held = self.held_replicas(cx);
        for n in &mut self.nodes {
            let stats = &mut cx.shared.cluster.nodes[n.index as usize];
            let hold = held & (1 << n.index) != 0 && n.has_room(n.ep.tx.capacity() / 2);
            match if hold { Ok(0) } else { n.flush() } {
                Ok(k) => {
                    progress |= k > 0;
                    stats.bytes_out += k as u64;
                }
                Err(e) => {
                    lost.push((n.index, e.to_string()));
                    continue;
                }
            }
            match n.ep.fill() {
                Ok(k) => {
                    progress |= k > 0;
                    stats.bytes_in += k as u64;
                }
                // What the node sent before it went away is still read below.
                Err(e) => lost.push((n.index, e.to_string())),
            }
        }
        for (id, why) in lost {
            // Answers already buffered are processed first; then the connection goes.
            self.node_replies(cx)?;
            let why = match self.repl.node_fatal.take() {
                Some((n, fatal)) if n == id => fatal,
                _ => format!("connection lost: {why}"),
            };
            self.lose_connection(id, &why, cx)?;
            progress = true;
        }
        Ok(progress)
    }

    /// `node_response_timeout`, from the session's 1 s sweep while a request runs: nodes
    /// still running a phase whose voice answered more than the limit ago have their
    /// statement canceled (a lock wait only they have, a stuck backend). Their answer then
    /// comes at once (an error: the nodes disagree, the request is rolled back everywhere
    /// and fails with 40001, as for a race) and is voted on as usual: canceling a statement
    /// that had just finished changes nothing. A node that does not answer the cancel
    /// within the limit either loses this session's connection (`lose_connection`: 40001,
    /// health-checked; detached only if a COMMIT was sent to it).
    pub(super) fn check_late_nodes(&mut self, cx: &mut Context) -> Result<(), Transition> {
        let limit = cx.shared.config.node_response_timeout;
        if limit.is_zero() {
            return Ok(());
        }
        if self.repl.request.is_none() && self.repl.parked.is_some() {
            return self.check_late_behind(limit, cx);
        }
        let Some(r) = self.repl.request.as_mut() else {
            return Ok(());
        };
        if !r.waits_for_others() {
            r.others_late_since = None;
            return Ok(());
        }
        let (since, canceled) = match r.others_late_since {
            Some((phase, since, canceled)) if phase == r.phase_started => (since, canceled),
            _ => {
                r.others_late_since = Some((r.phase_started, cx.now, false));
                (cx.now, false)
            }
        };
        let waited = cx.now.saturating_duration_since(since);
        if waited < limit {
            return Ok(());
        }
        let voice = r.voice;
        let late: Vec<u8> = r
            .running
            .iter()
            .filter(|run| run.node != voice && !run.pending.is_empty())
            .map(|run| run.node)
            .collect();
        let limit_text = crate::config::format_duration(limit);
        if !canceled {
            r.others_late_since = Some((r.phase_started, since, true));
            let note = format!(
                "node(s) {late:?} did not answer within node_response_timeout ({limit_text}) after node {voice} did, and the statement was canceled there"
            );
            log::warn!("{} \"{}\": {note}", self.prefix, r.text);
            r.late_note = Some(note.clone());
            if cx.shared.config.write_ack == crate::config::WriteAck::Async {
                // A disagreement may only show at COMMIT.
                self.repl.tx.late_note = Some(note);
            }
            self.cancel_statements(&late, cx);
            return Ok(());
        }
        if waited < 2 * limit {
            return Ok(());
        }
        let why = format!(
            "no answer within node_response_timeout ({limit_text}) after node {voice} answered, nor to the cancel of its statement"
        );
        self.lose_connections(&late, &why, cx)
    }

    /// Cancel what this session's backends on `nodes` are running (`node_response_timeout`).
    fn cancel_statements(&self, nodes: &[u8], cx: &mut Context) {
        for n in self.nodes.iter().filter(|n| nodes.contains(&n.index)) {
            if let Some((pid, secret)) = n.backend_key {
                cx.shared.backend_cancels.push((n.addr, pid, secret));
            }
        }
    }

    fn lose_connections(
        &mut self,
        nodes: &[u8],
        why: &str,
        cx: &mut Context,
    ) -> Result<(), Transition> {
        for &id in nodes {
            self.lose_connection(id, why, cx)?;
        }
        Ok(())
    }

    /// `write_ack = async`: the COMMIT waits for replicas still running the transaction's
    /// statements (`behind`). As `check_late_nodes`: after `limit` their statements are
    /// canceled (the COMMIT then fails with 40001 as the answers differ), after twice that
    /// they lose this session's connection.
    fn check_late_behind(&mut self, limit: Duration, cx: &mut Context) -> Result<(), Transition> {
        let Some((since, canceled)) = self.repl.parked_late else {
            return Ok(());
        };
        let waited = cx.now.saturating_duration_since(since);
        if waited < limit {
            return Ok(());
        }
        let late: Vec<u8> = self
            .repl
            .behind
            .iter()
            .filter(|b| !b.pending.is_empty())
            .map(|b| b.node)
            .collect();
        let limit_text = crate::config::format_duration(limit);
        if !canceled {
            let text = format!(
                "node(s) {late:?} had not run the transaction's statements within node_response_timeout ({limit_text}) of the COMMIT, and they were canceled there"
            );
            log::warn!("{} {text}", self.prefix);
            self.repl.parked_late = Some((since, true));
            self.repl.tx.late_note = Some(text);
            self.cancel_statements(&late, cx);
            return Ok(());
        }
        if waited < limit * 2 {
            return Ok(());
        }
        let why = format!(
            "the transaction's statements did not finish within node_response_timeout ({limit_text}) of the COMMIT, nor after they were canceled"
        );
        self.lose_connections(&late, &why, cx)
    }

    /// This session's connection to a node failed. One lost connection is not a lost node
    /// (a terminated backend, `idle_session_timeout`): the node is health-checked at once and
    /// detached only if that fails. The session goes on without the connection: what was in
    /// flight fails with 40001 (an open transaction as a whole, since the node lost its part
    /// of it), and the session connects to the node again before its next transaction. Only
    /// when a COMMIT of the request was sent (to this node or others) is the node detached at
    /// once: it may hold or lack a commit the others made.
    fn lose_connection(&mut self, id: u8, why: &str, cx: &mut Context) -> Result<(), Transition> {
        if cx
            .shared
            .pids
            .take_terminating(self.cancel_key.0, cx.now, false)
        {
            let msg = "terminating connection due to administrator command";
            self.fatal(cx, "57P01", msg);
            return Err(Transition::Close(format!("{msg} (node {id}: {why})")));
        }
        let may_have_committed = self.repl.request.as_ref().is_some_and(|r| {
            r.plan.phases[..r.next_phase]
                .iter()
                .any(|p| p.segments.iter().any(|&s| commits(s, r.class)))
        });
        if may_have_committed || !cx.shared.cluster.is_up(id) {
            return self.lose_node(id, why, cx);
        }
        log::warn!(
            "{} lost its connection to node {id} ({why}); the node is checked",
            self.prefix
        );
        cx.shared.health_now.push(id);
        self.drop_node(id, cx);
        self.repl.reconnect = true;
        let Some(new_lead) = self.nodes.first().map(|n| n.index) else {
            let msg = format!("the connection to node {id} was lost and no other is left: {why}");
            self.fatal(cx, "08006", &msg);
            return Err(Transition::Close(msg));
        };
        self.repl.behind.retain(|b| b.node != id);
        self.repl.tx.async_answers.retain(|(n, _)| *n != id);
        if self.repl.read_node == Some(id) {
            self.repl.read_node = None;
        }
        let open = self.repl.tx.view.open;
        let message = format!(
            "the connection to node {id} was lost ({why}); the {} was rolled back and can be retried",
            if open { "transaction" } else { "statement" }
        );
        self.repl.tx.fail();
        if open {
            self.repl.tx.lost = Some(message.clone());
        }
        let Some(r) = self.repl.request.as_mut() else {
            return Ok(());
        };
        r.running.retain(|run| run.node != id);
        r.answers.retain(|(n, _)| *n != id);
        if r.lead == id {
            r.lead = new_lead;
        }
        if r.voice == id {
            r.voice = new_lead;
        }
        r.error = Some(("40001", message));
        // Nothing more of this request runs; survivors inside pgmulti's own BEGIN roll back.
        let others_began = r.next_phase > 1
            || r.plan
                .phases
                .first()
                .is_some_and(|p| p.targets == Targets::All);
        r.next_phase = r.plan.phases.len();
        if !open && r.plan.writes && others_began {
            r.plan
                .phases
                .push(plan::phase(Targets::All, &[Segment::Wrapper("ROLLBACK")]));
        }
        Ok(())
    }

    /// A node is down (detached by a health check or another session), or this session's
    /// connection to it broke while a commit was in flight: it is detached everywhere and the
    /// session goes on with the others. If it was answering the client and had not finished, the request fails
    /// (nothing more of it runs; an autocommit wrapper is rolled back on the survivors); if
    /// it had finished, the survivors' answers decide. A lost lead is replaced by the next.
    fn lose_node(&mut self, id: u8, why: &str, cx: &mut Context) -> Result<(), Transition> {
        cx.shared.cluster.detach(id, why);
        self.drop_node(id, cx);
        if self.nodes.is_empty() {
            let msg = format!("node {id} failed and no node is left: {why}");
            self.fatal(cx, "08006", &msg);
            return Err(Transition::Close(msg));
        }
        let new_lead = self.nodes[0].index;
        self.repl.behind.retain(|b| b.node != id);
        self.repl.tx.async_answers.retain(|(n, _)| *n != id);
        if self.repl.read_node == Some(id) {
            self.repl.read_node = None;
        }
        let autocommit = !self.repl.tx.view.open;
        let Some(r) = self.repl.request.as_mut() else {
            return Ok(());
        };
        let unfinished = r.running.iter().any(|run| {
            run.node == id
                && run
                    .pending
                    .iter()
                    .any(|s| !matches!(s, Segment::Wrapper(_)))
        });
        r.running.retain(|run| run.node != id);
        let was_voice = r.voice == id;
        if r.lead == id {
            r.lead = new_lead;
            let ran = r.answers.iter().any(|(n, _)| *n == new_lead)
                || r.running.iter().any(|run| run.node == new_lead);
            if ran {
                // The new lead runs or ran this request as a replica (COMMIT runs on the
                // replicas first): what was left for the lead is done there.
                let rest = r.plan.phases.split_off(r.next_phase);
                let rest = rest.into_iter().filter(|p| p.targets != Targets::Lead);
                r.plan.phases.extend(rest);
            }
        }
        if was_voice {
            r.voice = new_lead;
            r.voice_lost = Some(id);
            let commit = r.class == plan::Class::Commit;
            match compare::after_voice_lost(commit, &r.answers, id, new_lead, unfinished) {
                compare::VoiceLost::Committed => {
                    log::warn!(
                        "{} node {id} failed during COMMIT; the other nodes had committed",
                        self.prefix
                    );
                    r.complete_tag = Some("COMMIT");
                }
                compare::VoiceLost::Fails => {
                    log::warn!(
                        "{} node {id} failed while answering \"{}\"; the statement fails",
                        self.prefix,
                        r.text
                    );
                    r.error = Some((
                        "40001",
                        format!("node {id} failed while running this statement ({why}); it was not committed and can be retried"),
                    ));
                    // Nothing more of this request runs; survivors inside pgmulti's own BEGIN roll back.
                    r.next_phase = r.plan.phases.len();
                    if autocommit {
                        r.plan
                            .phases
                            .push(plan::phase(Targets::All, &[Segment::Wrapper("ROLLBACK")]));
                    }
                }
                compare::VoiceLost::Nothing => {}
            }
        }
        Ok(())
    }

    /// The node that runs this session's writes: the first of its nodes, or in streaming
    /// mode the primary. While the session has no primary, the first node stands in as the
    /// voice of reads; `plan_or_refuse` refuses whatever needs the primary (40001).
    fn lead_node(&self, cx: &Context) -> Option<u8> {
        let primary =
            cx.shared.cluster.lead().filter(|id| {
                cx.shared.cluster.streaming && self.nodes.iter().any(|n| n.index == *id)
            });
        primary.or_else(|| self.nodes.first().map(|n| n.index))
    }

    /// `mode = streaming`, between transactions: while a standby is being promoted after the
    /// primary's loss, the next request waits (at most `health_check_timeout`) instead of
    /// failing with 40001; reads wait too, for the short time a promotion takes. The
    /// promotion wakes every session (a cluster change); the 1 s sweep ends the wait.
    fn waits_for_primary(&mut self, cx: &mut Context) -> bool {
        let cluster = &cx.shared.cluster;
        let promoting = cluster.promoting.is_some() || cluster.promote_ask.is_some();
        let connected = cluster
            .lead()
            .is_some_and(|p| self.nodes.iter().any(|n| n.index == p));
        if !cluster.streaming || connected || !promoting {
            self.repl.primary_wait = None;
            return false;
        }
        if self.repl.primary_wait.is_none() {
            log::info!("{} waits for a standby's promotion", self.prefix);
        }
        let since = *self.repl.primary_wait.get_or_insert(cx.now);
        cx.now.saturating_duration_since(since) < cx.shared.config.health_check_timeout
    }

    /// Between requests, outside a transaction: when the session listens on channels, it
    /// gets back its connections to every live node at once, and when its lead is not the
    /// node that ran its LISTENs (that connection was lost, or another node leads now), runs
    /// them on the lead, as pgmulti's own request. A session that only waits for
    /// notifications sends nothing that would bring either back.
    fn listen_again(&mut self, cx: &mut Context) -> Result<(), Transition> {
        let repl = &self.repl;
        if repl.listening.is_empty()
            || !repl.is_idle()
            || repl.tx.view.open
            || !repl.batch.is_empty()
            || !repl.large.is_empty()
        {
            return Ok(());
        }
        // First back to every live node (the one that lost this session's connection is
        // most likely still the lead, where NOTIFY runs).
        if !self.join_attached(cx)? {
            return Ok(());
        }
        let Some(lead) = self.lead_node(cx) else {
            return Ok(());
        };
        // Streaming mode without a primary: a standby refuses LISTEN.
        let streaming_without_primary =
            cx.shared.cluster.streaming && cx.shared.cluster.lead() != Some(lead);
        if self.repl.listen_node == Some(lead) || streaming_without_primary {
            return Ok(());
        }
        let plan = Plan {
            phases: vec![plan::phase(Targets::Lead, &[])],
            voice: Targets::Lead,
            writes: false,
        };
        let mut r = Request::new(Vec::new(), "LISTEN again".into(), plan, lead, lead, cx.now);
        r.internal = true;
        log::info!(
            "{} listens again on node {lead}: {}",
            self.prefix,
            self.repl.listening.join(", ")
        );
        self.repl.request = Some(Box::new(r));
        self.advance(cx)
    }

    fn drop_node(&mut self, id: u8, cx: &mut Context) {
        if self.repl.listen_node == Some(id) {
            self.repl.listen_node = None;
        }
        if let Some(pos) = self.nodes.iter().position(|n| n.index == id) {
            let mut n = self.nodes.remove(pos);
            n.terminate();
            self.publish_pids(cx);
        }
    }

    /// Process what the nodes answered. The voice's messages wait while the client's send
    /// buffer has no room for them (back-pressure on the node).
    fn node_replies(&mut self, cx: &mut Context) -> Result<bool, Transition> {
        let mut progress = false;
        let voice = match &self.repl.request {
            Some(r) => Some(r.voice),
            None => self.nodes.first().map(|n| n.index),
        };
        for i in 0..self.nodes.len() {
            loop {
                let node = &mut self.nodes[i];
                let id = node.index;
                if node.passing > 0 {
                    let room = if node.passing_to_client {
                        self.client.tx.free()
                    } else {
                        usize::MAX
                    };
                    let n = node.passing.min(node.ep.rx.len()).min(room);
                    if n == 0 {
                        break;
                    }
                    if node.passing_to_client {
                        self.client.tx.extend(&node.ep.rx.data()[..n]);
                    }
                    node.ep.rx.consume(n);
                    node.passing -= n;
                    progress = true;
                    continue;
                }
                let data = node.ep.rx.data();
                let (tag, len) = match message_header(data, crate::protocol::MAX_MESSAGE_LEN) {
                    Ok(Some(h)) if data.len() >= h.1 => h,
                    Ok(Some((b'E', len))) if len > node.ep.rx.capacity() => {
                        // An error larger than the buffer: what it says comes first; the
                        // session (and the client) get that much of it, the rest is skipped.
                        let mut msg = Vec::new();
                        backend::shortened_error(&data[5..], len, &mut msg);
                        node.passing = len;
                        node.passing_to_client = false;
                        self.on_node_message(id, b'E', &msg, cx)?;
                        progress = true;
                        continue;
                    }
                    Ok(Some((tag, len))) if len > node.ep.rx.capacity() => {
                        // A large row or copy chunk: only the voice's goes on, streamed.
                        trace_message(
                            &self.prefix,
                            Peer::Node(id),
                            Peer::Pgmulti,
                            tag,
                            &data[5..],
                            len,
                            &mut cx.shared.scratch,
                        );
                        node.passing = len;
                        node.passing_to_client =
                            voice == Some(id) && !matches!(tag, b'C' | b'E' | b'Z');
                        // Only the lead's rows carry hidden columns (a keyed statement's none).
                        if let Some(fx) = self
                            .repl
                            .request
                            .as_mut()
                            .filter(|r| r.lead == id && matches!(tag, b'D' | b'T'))
                            .and_then(|r| r.effects.as_mut())
                        {
                            // Hidden columns cannot be read from a streamed row.
                            if fx.lead_row_streams(tag, len) {
                                node.passing_to_client = false;
                            }
                        }
                        continue;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        let why = format!("invalid message: {e}");
                        self.lose_node(id, &why, cx)?;
                        return Ok(true);
                    }
                };
                if voice == Some(id) && self.client.tx.free() < len {
                    break;
                }
                // Copied out of the node's buffer into a reused one: no allocation per message.
                let mut msg = std::mem::take(&mut cx.shared.node_msg);
                msg.clear();
                msg.extend_from_slice(&data[..len]);
                node.ep.rx.consume(len);
                progress = true;
                // The sender is named as the client knows it: its pgmulti session's pid.
                pids::translate_notification(&mut msg, |pid| cx.shared.pids.client_of(id, pid));
                let handled = self.on_node_message(id, tag, &msg, cx);
                if msg.capacity() <= NODE_MSG_KEEP {
                    cx.shared.node_msg = msg;
                }
                handled?;
                if self.nodes.get(i).is_none_or(|n| n.index != id) {
                    break; // the node was dropped
                }
            }
        }
        self.advance(cx)?;
        self.repl.behind.retain(|b| !b.pending.is_empty());
        if self.repl.behind.is_empty() && self.repl.request.is_none() {
            if let Some(commit) = self.repl.parked.take() {
                self.start_request(commit, cx)?;
            }
        }
        if self.repl.large_held.is_some()
            && self.repl.is_idle()
            && self.repl.batch.is_empty()
            && self.repl.large.is_empty()
        {
            // Every node has the large message (and answered): its memory is free again.
            self.repl.large_held = None;
        }
        Ok(progress)
    }

    fn on_node_message(
        &mut self,
        id: u8,
        tag: u8,
        msg: &[u8],
        cx: &mut Context,
    ) -> Result<(), Transition> {
        trace_message(
            &self.prefix,
            Peer::Node(id),
            Peer::Pgmulti,
            tag,
            &msg[5..],
            msg.len(),
            &mut cx.shared.scratch,
        );
        if tag == b'E' {
            cx.shared.cluster.nodes[id as usize].errors += 1;
            let fields = backend::parse_error_fields(&msg[5..]).ok();
            if let Some(f) = fields.filter(|f| matches!(f.severity, "FATAL" | "PANIC")) {
                // The node ends this connection: the session says what that means for the
                // client when it closes (`lose_connection`), not the node.
                self.repl.node_fatal =
                    Some((id, format!("{} {} {}", f.severity, f.code, f.message)));
                return Ok(());
            }
        }
        let lead = self.lead_node(cx);
        if let Some(b) = self
            .repl
            .behind
            .iter_mut()
            .find(|b| b.node == id && !b.pending.is_empty())
        {
            // A statement the client already has the lead's answer to (write_ack = async).
            let main = matches!(b.pending.front(), Some(Segment::Main | Segment::MainAs(_)));
            match tag {
                b'Z' => {
                    b.pending.pop_front();
                }
                b'C' | b'I' | b's' | b'V' if !main => {}
                b'C' | b'I' | b'E' | b's' | b'V' => {
                    let checked = b.checked.pop_front().flatten();
                    if tag != b's' {
                        let outcome = compare::outcome(tag, msg, checked.as_ref());
                        record(&mut self.repl.tx.async_answers, id, outcome);
                    }
                }
                _ => {}
            }
            return Ok(());
        }
        let Some(r) = self.repl.request.as_mut() else {
            // Between requests only asynchronous messages come: the lead's reach the client.
            if matches!(tag, b'A' | b'N' | b'S') && lead == Some(id) {
                self.client.tx.extend(msg);
            }
            return Ok(());
        };
        let Some(run) = r.running.iter_mut().find(|run| run.node == id) else {
            if matches!(tag, b'A' | b'N' | b'S') && r.voice == id {
                self.client.tx.extend(msg);
            }
            return Ok(());
        };
        let Some(&segment) = run.pending.front() else {
            return Ok(());
        };
        let main = matches!(segment, Segment::Main | Segment::MainAs(_));
        let two_phase_step = matches!(
            segment,
            Segment::Prepare | Segment::CommitPrepared | Segment::ParsesOnly
        );
        let voice = r.voice == id;
        if segment == Segment::Prepare {
            match tag {
                b'C' => r.prepared.push(id),
                b'E' => {
                    r.prepare_error = Some(format!("node {id}: {}", error_message(msg)));
                    // The client sees the voice's own error; pgmulti adds none then.
                    r.voice_prepare_failed |= id == r.voice;
                }
                _ => {}
            }
        }
        if segment == Segment::WalPosition && tag == b'D' {
            let lsn = backend::data_row_fields(&msg[5..])
                .ok()
                .and_then(|f| f.first().and_then(|v| v.0))
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(crate::cluster::health::parse_lsn);
            r.wal_lsn = r.wal_lsn.max(lsn);
            return Ok(());
        }
        if let Some(probe) = r.probe.as_mut() {
            // pgmulti's own query: its answer is kept, never shown to the client.
            match tag {
                b'D' => probe.rows.extend(data_row_4(msg)),
                b'E' => probe.error = Some(error_message(msg)),
                b'Z' => {
                    run.pending.pop_front();
                    r.status = msg.get(5).copied().unwrap_or(b'I');
                }
                _ => {}
            }
            return Ok(());
        }
        if let Some(fx) = r.effects.as_mut().filter(|_| main && id == r.lead) {
            match tag {
                b'T' | b'D' => {
                    // The rows of a write replicated by its effect: the lead's hidden columns
                    // are kept, the client gets the rest if it asked for rows.
                    let out = &mut cx.shared.out;
                    if fx.lead_row(tag, msg, out) {
                        if voice && !out.is_empty() {
                            self.client.tx.extend_always(out);
                        }
                        return Ok(());
                    }
                }
                b'C' | b'I' | b'E' | b's' => fx.lead_answered(tag, msg),
                _ => {}
            }
        }
        if main && id != r.lead && r.effects.is_some() && matches!(tag, b'T' | b'D') {
            return Ok(()); // a replica's check row is nobody's
        }
        // A batch ending with Flush gets no ReadyForQuery: count the answers instead.
        let mut flush_done = false;
        if let (Some(n), Segment::Main) = (r.flush_replies, segment) {
            if matches!(
                tag,
                b'1' | b'2' | b'3' | b't' | b'T' | b'n' | b'C' | b'I' | b's' | b'E'
            ) {
                run.replies += 1;
            }
            flush_done = tag == b'E' || run.replies >= n + run.extra_replies;
        }
        if flush_done {
            run.pending.pop_front();
        }
        match tag {
            b'Z' => {
                run.pending.pop_front();
                if voice {
                    r.status = msg.get(5).copied().unwrap_or(b'I');
                }
                if run.pending.is_empty() {
                    let ms = cx
                        .now
                        .saturating_duration_since(r.phase_started)
                        .as_secs_f64()
                        * 1000.0;
                    cx.shared.cluster.observe_latency(id, ms);
                }
                return Ok(());
            }
            b's' if main => {
                run.checked.pop_front();
            }
            b'C' | b'I' | b'E' | b'V' => {
                let checked = if main {
                    run.checked.pop_front().flatten()
                } else {
                    None
                };
                let outcome = compare::outcome(tag, msg, checked.as_ref());
                if main || (tag == b'E' && !two_phase_step) {
                    if main && id == r.lead && tag == b'E' {
                        r.lead_failed = true;
                    }
                    record(&mut r.answers, id, outcome);
                }
            }
            b'G' if main && voice => r.copy_in = true,
            _ => {}
        }
        let silent = segment == Segment::CommitPrepared && r.rolling_back;
        if voice && !silent && (main || matches!(tag, b'E' | b'A' | b'N' | b'S')) {
            // Room was checked before the message was taken.
            match tag {
                b't' => {
                    if let Some(n) = r.describes.front().and_then(|d| d.params) {
                        self.client
                            .tx
                            .extend(&extended::trim_parameter_description(msg, n));
                        return Ok(());
                    }
                }
                b'T' | b'n' => {
                    let hidden = r.describes.pop_front().map_or(0, |d| d.hidden);
                    if tag == b'T' && hidden > 0 {
                        let out = &mut cx.shared.out;
                        out.clear();
                        extended::cut_row_description(msg, hidden, out);
                        self.client.tx.extend_always(out);
                        return Ok(());
                    }
                }
                _ => {}
            }
            // Room was checked for the node's own messages; a shortened error may exceed it.
            self.client.tx.extend_always(msg);
        }
        Ok(())
    }

    /// Start the next phase when the running one is done; finish the request at the end.
    fn advance(&mut self, cx: &mut Context) -> Result<(), Transition> {
        let async_ack = cx.shared.config.write_ack == crate::config::WriteAck::Async;
        loop {
            let repl = &mut *self.repl;
            let Some(r) = repl.request.as_mut() else {
                return Ok(());
            };
            if r.running.iter().any(|run| !run.pending.is_empty()) {
                return Ok(());
            }
            r.running.clear();
            if r.next_phase == r.plan.phases.len() {
                return self.finish_request(cx);
            }
            let phase = r.plan.phases[r.next_phase].clone();
            r.next_phase += 1;
            let mut phase = phase;
            if phase.skip_if_lead_failed && r.lead_failed {
                let replicas_main =
                    phase.targets == Targets::Replicas && phase.segments.contains(&Segment::Main);
                // A failure that still drew from a sequence (the ordering lock says it
                // draws) or left an invalid index behind must happen on the replicas too.
                let fails_alike = replicas_main
                    && (r.ordering_lock.is_some() || r.class == plan::Class::NoTransactionBlock);
                // The replicas must still learn the statements a failed batch prepared.
                let keeps_parses = replicas_main && r.parses_only.is_some();
                if fails_alike {
                    plan::fail_alike(&mut phase.segments);
                    r.rolled_back |= !repl.tx.view.open;
                } else if keeps_parses {
                    phase.segments = vec![Segment::ParsesOnly];
                } else {
                    continue;
                }
            }
            if phase.only_if_lead_failed && !r.lead_failed {
                continue;
            }
            if let Some(why) = r.effects.as_ref().and_then(|fx| fx.unreadable.as_ref()) {
                if phase.targets == Targets::Replicas && phase.segments.contains(&Segment::Main) {
                    // The replicas cannot be told what the lead did: the write fails.
                    log::warn!(
                        "{} the lead's answer to \"{}\" could not be read: {why}",
                        self.prefix,
                        r.text
                    );
                    r.rolled_back = true;
                    r.error.get_or_insert((
                        "40001",
                        format!("the write could not be replicated: the lead's answer could not be read ({why}); it was rolled back"),
                    ));
                    continue;
                }
            }
            if phase.after_vote {
                Self::vote_before_commit(r, &mut phase, &self.prefix);
            }
            let mut only = None;
            if phase.segments.contains(&Segment::CommitPrepared) {
                match Self::decide_two_phase(r, cx) {
                    Some(nodes) => only = Some(nodes),
                    None => {
                        // This phase starts when the decision is on disk.
                        r.next_phase -= 1;
                        return Ok(());
                    }
                }
            }
            let targets: Vec<u8> = match phase.targets {
                Targets::Lead => vec![r.lead],
                Targets::ReadNode => vec![r.voice],
                Targets::All => self.nodes.iter().map(|n| n.index).collect(),
                Targets::Replicas => self
                    .nodes
                    .iter()
                    .map(|n| n.index)
                    .filter(|&n| n != r.lead)
                    .collect(),
            };
            r.phase_started = cx.now;
            for id in targets {
                if only.as_ref().is_some_and(|o: &Vec<u8>| !o.contains(&id)) {
                    continue;
                }
                let Some(node) = self.nodes.iter_mut().find(|n| n.index == id) else {
                    continue;
                };
                let mut out = Vec::new();
                let mut checked = VecDeque::new();
                let mut extra_replies = 0;
                let mut pending = VecDeque::with_capacity(phase.segments.len() + 2);
                // (Never on a standby standing in for a lost primary: it refuses LISTEN.)
                if id == r.lead
                    && repl.listen_node != Some(id)
                    && !repl.listening.is_empty()
                    && !repl.tx.view.open
                    && (!cx.shared.cluster.streaming || cx.shared.cluster.lead() == Some(id))
                {
                    let sql: Vec<String> = repl
                        .listening
                        .iter()
                        .map(|c| format!("LISTEN {c}"))
                        .collect();
                    frontend::query(&mut out, &sql.join("; "));
                    pending.push_back(Segment::Wrapper("LISTEN"));
                    repl.listen_node = Some(id);
                }
                let tx = &mut repl.tx;
                if let Some(begin) = tx.begin.as_deref().filter(|_| !tx.begun.contains(&id)) {
                    out.extend_from_slice(begin);
                    pending.push_back(Segment::Wrapper("BEGIN"));
                    tx.begun.push(id);
                }
                for &seg in &phase.segments {
                    match seg {
                        Segment::Main => {
                            if let Some(lock) = r.ordering_lock.as_deref().filter(|_| id == r.lead)
                            {
                                frontend::query(&mut out, lock);
                                pending.push_back(Segment::Wrapper("ordering lock"));
                            }
                            match r.effects.as_mut().filter(|_| id != r.lead) {
                                Some(fx) => {
                                    let replica = fx.replica(&r.main);
                                    out.extend_from_slice(&replica.bytes);
                                    checked = replica.checked.iter().cloned().collect();
                                    extra_replies = replica.extra_replies;
                                }
                                None => out.extend_from_slice(&r.main),
                            }
                        }
                        Segment::Wrapper(text) | Segment::MainAs(text) => {
                            frontend::query(&mut out, text)
                        }
                        Segment::ParsesOnly => {
                            out.extend_from_slice(r.parses_only.as_deref().unwrap_or_default())
                        }
                        Segment::WalPosition => {
                            frontend::query(&mut out, "SELECT pg_current_wal_insert_lsn()")
                        }
                        Segment::Prepare => {
                            let gid = r.gid.get_or_insert_with(|| {
                                cx.shared
                                    .two_phase
                                    .as_mut()
                                    .map_or_else(String::new, |l| l.new_gid())
                            });
                            frontend::query(&mut out, &format!("PREPARE TRANSACTION '{gid}'"));
                        }
                        Segment::CommitPrepared => {
                            let verb = if r.rolling_back { "ROLLBACK" } else { "COMMIT" };
                            let gid = r.gid.as_deref().unwrap_or_default();
                            frontend::query(&mut out, &format!("{verb} PREPARED '{gid}'"));
                        }
                    }
                    pending.push_back(seg);
                }
                crate::trace::trace_built(
                    &self.prefix,
                    Peer::Pgmulti,
                    Peer::Node(id),
                    &out,
                    &mut cx.shared.scratch,
                );
                node.send(&out);
                if phase.behind_in_async && async_ack {
                    r.ran_behind = true;
                    repl.behind.push(Running {
                        node: id,
                        pending,
                        replies: 0,
                        checked,
                        extra_replies,
                    });
                } else {
                    r.running.push(Running {
                        node: id,
                        pending,
                        replies: 0,
                        checked,
                        extra_replies,
                    });
                }
                let stats = &mut cx.shared.cluster.nodes[id as usize];
                stats.queries += 1;
                if r.plan.writes {
                    stats.writes += 1;
                } else if phase.targets == Targets::ReadNode {
                    stats.reads += 1;
                }
            }
            if !r.running.is_empty() {
                return Ok(());
            }
        }
    }

    /// pgmulti's own COMMIT of an autocommit write (`Phase::after_vote`): it becomes
    /// ROLLBACK when the nodes' answers so far disagree and nothing is committed yet.
    fn vote_before_commit(r: &mut Request, phase: &mut plan::Phase, prefix: &str) {
        let replicas_commit_later = r
            .plan
            .phases
            .iter()
            .any(|p| p.after_vote && p.targets == Targets::Replicas);
        let roll_back = r.rolled_back
            || compare::before_commit(&r.answers, r.lead, !replicas_commit_later)
                == compare::BeforeCommit::RollBack;
        if !roll_back {
            return;
        }
        if !r.rolled_back {
            r.rolled_back = true;
            log::info!(
                "{prefix} nodes disagree on \"{}\": {}; rolled back on every node",
                r.text,
                compare::describe(&r.answers)
            );
            r.error.get_or_insert(("40001", r.race_message()));
        }
        for seg in &mut phase.segments {
            if *seg == Segment::Wrapper("COMMIT") {
                *seg = Segment::Wrapper("ROLLBACK");
            }
        }
    }

    /// Detach nodes that differed from the majority too many times in a row.
    fn detach_disagreeing(&mut self, faulty: &[u8], cx: &mut Context) {
        for &id in faulty {
            let why = format!(
                "its answers differed from the majority's {} times in a row",
                crate::cluster::DISAGREEMENTS_BEFORE_DETACH
            );
            cx.shared.cluster.detach(id, &why);
            self.drop_node(id, cx);
        }
    }

    /// Before COMMIT PREPARED: if every node prepared, write the decision down and, once it
    /// is on disk (group commit: `two_phase::DecisionLog::flush`), commit everywhere;
    /// otherwise roll back what was prepared and fail the request. Returns the nodes the
    /// last phase goes to, or None while the decision is on its way to the disk (the
    /// session is woken when it is there).
    fn decide_two_phase(r: &mut Request, cx: &mut Context) -> Option<Vec<u8>> {
        let gid = r.gid.clone().unwrap_or_default();
        let number = match r.decision {
            Some(n) => n,
            None => {
                if r.prepare_error.is_none() && !compare::vote(&r.answers, r.lead).differ.is_empty()
                {
                    r.rolled_back = true;
                    r.prepare_error = Some(format!(
                        "the nodes' results differed ({})",
                        compare::describe(&r.answers)
                    ));
                }
                let everyone = r.prepare_error.is_none() && !r.prepared.is_empty();
                let written = match (everyone, cx.shared.two_phase.as_mut()) {
                    (true, Some(log)) => log.write_commit(&gid).map_err(|e| {
                        log::error!("{e}");
                        format!("the commit decision could not be written: {e}")
                    }),
                    (true, None) => Err("two-phase commit is not configured".into()),
                    (false, _) => Err(r
                        .prepare_error
                        .clone()
                        .unwrap_or_else(|| "no node prepared the transaction".into())),
                };
                match written {
                    Ok(n) => *r.decision.insert(n),
                    Err(why) => {
                        Self::roll_back_prepared(r, &why);
                        return Some(r.prepared.clone());
                    }
                }
            }
        };
        let Some(log) = cx.shared.two_phase.as_mut() else {
            // (A decision number comes from the log.)
            Self::roll_back_prepared(r, "two-phase commit is not configured");
            return Some(r.prepared.clone());
        };
        match log.decision(number, cx.key) {
            two_phase::Decision::Waiting => return None,
            two_phase::Decision::Durable => r.committed = true,
            two_phase::Decision::Failed(e) => {
                // Never counts as decided, even if the line reached the disk after all.
                log.done(&gid);
                Self::roll_back_prepared(
                    r,
                    &format!("the commit decision could not be written: {e}"),
                );
            }
        }
        Some(r.prepared.clone())
    }

    fn roll_back_prepared(r: &mut Request, why: &str) {
        r.rolling_back = true;
        if !r.voice_prepare_failed {
            r.error.get_or_insert((
                "40001",
                format!("COMMIT failed, the transaction was rolled back on every node: {why}"),
            ));
        }
        r.final_status = Some(b'I');
    }

    /// Every phase ran: vote, detach who differs, update the transaction, answer the client.
    fn finish_request(&mut self, cx: &mut Context) -> Result<(), Transition> {
        let Some(mut r) = self.repl.request.take() else {
            return Ok(());
        };
        if r.internal {
            return Ok(());
        }
        if let Some(probe) = r.probe.take() {
            if let Some((code, msg)) = r.error.take() {
                // The lookup lost a connection (`lose_connection`): the statement does not
                // run now, on fewer nodes than are up; the session reconnects first.
                self.send_error(cx, "ERROR", code, &msg, None);
                self.ready_for_query(self.repl.tx.status(), cx);
                return Ok(());
            }
            return self.finish_probe(probe, r.status, cx);
        }
        if r.ddl {
            cx.shared.ddl_epoch += 1;
        }
        if let Some(lsn) = r.wal_lsn {
            self.repl.wal_lsn = self.repl.wal_lsn.max(lsn);
            // Its next reads go to a standby once one is known to have replayed this.
            cx.shared.wanted_lsn = cx.shared.wanted_lsn.max(lsn);
        }
        if r.ran_behind {
            // The replicas' answers come later; the lead's are kept to compare at COMMIT.
            if let Some((_, lead_answers)) = r.answers.iter().find(|(n, _)| *n == r.lead) {
                for o in lead_answers.clone() {
                    record(&mut self.repl.tx.async_answers, r.lead, o);
                }
            }
            r.answers.clear();
        }
        // What the client was shown by a voice that failed afterwards.
        let shown = r
            .voice_lost
            .and_then(|id| r.answers.iter().find(|(n, _)| *n == id))
            .map(|(_, o)| o.clone());
        r.answers.retain(|(n, _)| cx.shared.cluster.is_up(*n));
        // Streaming mode: the standbys only ever run session state and reads; PostgreSQL's
        // own replication keeps their data, so their answers are not voted on.
        if r.answers.len() > 1 && !cx.shared.cluster.streaming {
            // Nothing of the write is committed anywhere when pgmulti rolled its own
            // transaction back or the client's is still open (it fails now): a race between
            // clients looks like this, so the nodes are not at fault yet.
            let contained =
                r.rolled_back || (self.repl.tx.view.open && r.class == plan::Class::Write);
            match compare::settle(&r.answers, r.lead, r.voice, contained) {
                // Only agreeing on data ends a run of disagreements (not SET or ROLLBACK).
                compare::Settlement::Agreed(verdict) => {
                    if matches!(r.class, plan::Class::Write | plan::Class::CopyIn) {
                        cx.shared.cluster.agreed(&verdict.agree);
                    }
                }
                compare::Settlement::AllFailed => {}
                compare::Settlement::Race(verdict) => {
                    if !r.rolled_back {
                        log::info!(
                            "{} nodes disagree on \"{}\": {}; the transaction fails",
                            self.prefix,
                            r.text,
                            compare::describe(&r.answers)
                        );
                    }
                    r.error.get_or_insert(("40001", r.race_message()));
                    let faulty = cx.shared.cluster.disagreed(&verdict.differ, &verdict.agree);
                    self.detach_disagreeing(&faulty, cx);
                }
                compare::Settlement::Diverged {
                    verdict,
                    voice_differs,
                } => {
                    log::warn!(
                        "{} nodes disagree on \"{}\": {}; detaching node(s) {:?}",
                        self.prefix,
                        r.text,
                        compare::describe(&r.answers),
                        verdict.differ
                    );
                    // The nodes that differ lack what the others committed.
                    let why = match &r.late_note {
                        Some(_) => format!("it did not answer \"{}\" within node_response_timeout and its statement was canceled, while the other nodes committed it", r.text),
                        None => format!("its answer differed from the majority on \"{}\"", r.text),
                    };
                    for id in &verdict.differ {
                        cx.shared.cluster.detach(*id, &why);
                        self.drop_node(*id, cx);
                    }
                    if voice_differs {
                        r.error = Some((
                            "40003",
                            format!("node {} answered differently from the other nodes and was detached; this statement's outcome on the remaining nodes differs from what was reported", r.voice),
                        ));
                    }
                }
            }
        }
        if let (Some(shown), None) = (&shown, &r.error) {
            let survivors = r.answers.iter().find(|(n, _)| cx.shared.cluster.is_up(*n));
            if survivors.is_some_and(|(_, o)| o != shown) {
                r.error = Some((
                    "40003",
                    "the node that answered failed, and the remaining nodes' outcome differs from what was reported".into(),
                ));
            }
        }
        if self.nodes.is_empty() {
            self.fatal(cx, "08006", "no node is left");
            return Err(Transition::Close("no node is left".into()));
        }
        let tx = &mut self.repl.tx;
        let mut status = r.status;
        if let Some(s) = r.final_status {
            status = s;
        } else if r.error.is_some() {
            // An error pgmulti reports aborts an open transaction; an autocommit one is over.
            status = if tx.view.open { b'E' } else { b'I' };
        }
        if r.unnamed_read {
            extended::ran_on(&mut self.repl.statements, &r.main, true, r.voice);
        }
        if r.flush_replies.is_some() {
            // Answers to a Flush end without ReadyForQuery; the client's Sync comes later.
            return Ok(());
        }
        if status == b'I' {
            self.repl.statements.end_transaction();
        }
        let tx = &mut self.repl.tx;
        match status {
            b'I' => *tx = Tx::default(),
            // COMMIT/ROLLBACK AND CHAIN: a new transaction, already open on every node.
            b'T' if matches!(r.class, plan::Class::Commit | plan::Class::Rollback) => {
                *tx = Tx::default();
                tx.view.open = true;
            }
            b'T' => {
                // Also after ROLLBACK TO SAVEPOINT, which recovers a failed transaction.
                tx.view.open = true;
                tx.view.failed = false;
                tx.view.wrote |= r.plan.writes;
            }
            _ => {
                tx.view.open = true;
                tx.view.failed = true;
            }
        }
        if r.committed {
            if let (Some(log), Some(gid)) = (cx.shared.two_phase.as_mut(), r.gid.as_deref()) {
                log.done(gid);
            }
            if r.class == plan::Class::Commit && r.error.is_none() {
                r.complete_tag = Some("COMMIT");
            }
        }
        if r.error.is_none() && !r.lead_failed {
            for &(process_id, terminates) in &r.signals {
                if terminates {
                    cx.shared.pids.confirm_terminated(process_id);
                } else {
                    cx.shared
                        .cancel_asks
                        .push(crate::reactor::context::CancelAsk {
                            process_id,
                            secret_key: None,
                        });
                }
            }
        }
        if r.error.is_none() && !r.lead_failed && !r.listens.is_empty() {
            let listening = &mut self.repl.listening;
            for l in std::mem::take(&mut r.listens) {
                match l {
                    request::Listen::Add(c) if !listening.contains(&c) => listening.push(c),
                    request::Listen::Add(_) => {}
                    request::Listen::Remove(c) => listening.retain(|x| *x != c),
                    request::Listen::RemoveAll => listening.clear(),
                }
            }
            self.repl.listen_node = Some(r.lead);
        }
        if let Some((code, msg)) = &r.error {
            self.send_error(cx, "ERROR", code, msg, None);
        } else if let Some(tag) = r.complete_tag {
            let out = &mut cx.shared.out;
            out.clear();
            backend::command_complete(out, tag);
            self.send_to_client(cx);
        }
        self.ready_for_query(status, cx);
        Ok(())
    }

    /// Take client messages: one request at a time, COPY data while copying.
    fn client_requests(&mut self, cx: &mut Context) -> Result<bool, Transition> {
        let mut progress = false;
        loop {
            let copying = self.repl.request.as_ref().is_some_and(|r| r.copy_in);
            if (self.repl.request.is_some() || self.repl.parked.is_some()) && !copying {
                return Ok(progress);
            }
            // A client that does not read its answers sends no more requests for now: what
            // pgmulti must answer (`Buf::extend_always`) stays a few messages.
            if !copying && self.client.tx.is_full() {
                return Ok(progress);
            }
            if !copying && self.nodes.iter().any(|n| n.queued() > NODE_BACKLOG_MAX) {
                return Ok(progress);
            }
            // Between transactions: wait while paused, and bring in nodes attached since.
            if !copying
                && !self.repl.busy()
                && !matches!(self.client.rx.data().first(), None | Some(b'X'))
                && (!self.gate_open(cx) || !self.join_attached(cx)? || self.waits_for_primary(cx))
            {
                return Ok(progress);
            }
            let unread = self.client.rx.len();
            let Some((tag, len)) = self.peek_client_message(cx)? else {
                // Part of a large message taken in makes room for the next read.
                return Ok(progress || self.client.rx.len() < unread);
            };
            if copying {
                if !self.copy_to_nodes(tag, len, cx) {
                    return Ok(progress);
                }
                progress = true;
                continue;
            }
            progress = true;
            if matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S')
                && self.repl.large.is_empty()
            {
                self.add_to_batch(tag, len, None, cx)?;
                continue;
            }
            let msg = self.take_client_message(len);
            trace_from_client(&self.prefix, tag, &msg, &mut cx.shared.scratch);
            match tag {
                b'Q' if self.repl.batch.is_empty() => self.start_request(msg, cx)?,
                b'Q' => {
                    return Err(self.protocol_violation(
                        cx,
                        "Query inside an unfinished extended-protocol batch (no Sync)",
                    ));
                }
                b'X' => return Err(Transition::Close("client sent Terminate".into())),
                // A message larger than the receive buffer, collected in `large`.
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S' => {
                    self.add_to_batch(tag, msg.len(), Some(&msg), cx)?;
                }
                b'F' => self.start_function_call(msg, cx)?,
                // Copy messages outside COPY are ignored, as PostgreSQL does after an error.
                b'd' | b'c' | b'f' => {}
                other => {
                    return Err(self.protocol_violation(
                        cx,
                        &format!("unexpected message type {:?}", other as char),
                    ));
                }
            }
        }
    }

    /// The catalog lookup answered: cache it, then run the client's statement for real.
    fn finish_probe(
        &mut self,
        probe: Probe,
        status: u8,
        cx: &mut Context,
    ) -> Result<(), Transition> {
        if let Some(e) = probe.error {
            // The lookup failed on the lead (and aborted an open transaction there).
            self.send_error(
                cx,
                "ERROR",
                "XX000",
                &format!("looking up the written tables in the catalog failed: {e}"),
                None,
            );
            if status == b'E' {
                self.repl.tx.fail();
            }
            self.ready_for_query(self.repl.tx.status(), cx);
            return Ok(());
        }
        for (table, key) in &probe.tables {
            let info = catalog::read_probe(table, &probe.rows);
            self.repl.tables.insert(key.clone(), info);
        }
        self.start_request(probe.original, cx)
    }

    /// End a request: ReadyForQuery with `status`, remembered for idle and shutdown checks.
    fn ready_for_query(&mut self, status: u8, cx: &mut Context) {
        self.tx_status = status;
        let out = &mut cx.shared.out;
        out.clear();
        backend::ready_for_query(out, status);
        self.send_to_client(cx);
    }

    /// The next whole client message's (tag, length), collecting a large one if need be.
    fn peek_client_message(&mut self, cx: &mut Context) -> Result<Option<(u8, usize)>, Transition> {
        if !self.repl.large.is_empty() {
            let want = message_len(&self.repl.large);
            let take = (want - self.repl.large.len()).min(self.client.rx.len());
            self.repl
                .large
                .extend_from_slice(&self.client.rx.data()[..take]);
            self.client.rx.consume(take);
            return Ok((self.repl.large.len() == want).then(|| (self.repl.large[0], want)));
        }
        let data = self.client.rx.data();
        match message_header(data, MAX_REPLICATED_MESSAGE) {
            Ok(Some((tag, len))) if data.len() >= len => Ok(Some((tag, len))),
            Ok(Some((_, len))) if len > self.client.rx.capacity() => {
                let copies = 1 + self.nodes.len() as u64;
                if !cx.shared.message_memory.reserve(
                    &mut self.repl.large_held,
                    len as u64 * copies,
                    cx.shared.config.max_message_memory,
                    cx.key,
                ) {
                    return Ok(None);
                }
                self.repl.large.reserve_exact(len);
                self.repl.large.extend_from_slice(data);
                let n = data.len();
                self.client.rx.consume(n);
                Ok(None)
            }
            Ok(_) => Ok(None),
            Err(e) => Err(self.protocol_violation(cx, &e.to_string())),
        }
    }

    /// Extended protocol: collect messages up to Sync (or Flush: the client waits for the
    /// answers so far, as JDBC's describe), then run the batch as one request. `large` is
    /// the message when it was collected whole beside the receive buffer; otherwise it is
    /// copied straight from there (no allocation per message).
    fn add_to_batch(
        &mut self,
        tag: u8,
        len: usize,
        large: Option<&[u8]>,
        cx: &mut Context,
    ) -> Result<(), Transition> {
        if self.repl.batch.len() + len > MAX_REPLICATED_MESSAGE {
            return Err(
                self.protocol_violation(cx, "extended-protocol batch without Sync exceeds 64 MB")
            );
        }
        let batch = &mut self.repl.batch;
        if batch.is_empty() {
            batch.reserve(len.max(256));
        }
        match large {
            Some(msg) => batch.extend_from_slice(msg),
            None => {
                let msg = &self.client.rx.data()[..len];
                trace_from_client(&self.prefix, tag, msg, &mut cx.shared.scratch);
                batch.extend_from_slice(msg);
                self.client.rx.consume(len);
            }
        }
        if matches!(tag, b'H' | b'S') {
            let batch = std::mem::take(&mut self.repl.batch);
            self.start_request(batch, cx)?;
        }
        Ok(())
    }

    fn take_client_message(&mut self, len: usize) -> Vec<u8> {
        if !self.repl.large.is_empty() {
            return std::mem::take(&mut self.repl.large);
        }
        let msg = self.client.rx.data()[..len].to_vec();
        self.client.rx.consume(len);
        msg
    }

    /// Pass one COPY message to every running node when all have room; false to wait.
    fn copy_to_nodes(&mut self, tag: u8, len: usize, cx: &mut Context) -> bool {
        let Some(r) = self.repl.request.as_ref() else {
            return false;
        };
        let targets: Vec<u8> = r.running.iter().map(|run| run.node).collect();
        // A COPY started by an extended-protocol batch: the nodes ignore the batch's Sync
        // while copying and wait for the one the client sends after CopyDone, which ends it.
        let extended = r.main.first() != Some(&b'Q');
        if tag == b'H' || (tag == b'S' && !extended) {
            // Flush (and a Sync in a simple-protocol COPY) are ignored, as PostgreSQL does.
            let _ = self.take_client_message(len);
            return true;
        }
        if !matches!(tag, b'd' | b'c' | b'f' | b'S') {
            // Anything else fails the COPY, as in PostgreSQL, and is lost with it.
            let _ = self.take_client_message(len);
            let mut fail = Vec::new();
            let reason = format!("unexpected message type 0x{tag:02X} during COPY from stdin");
            frontend::copy_fail(&mut fail, &reason);
            log::info!("{} {reason}", self.prefix);
            if let Some(r) = self.repl.request.as_mut() {
                r.copy_in = extended;
            }
            for n in self.nodes.iter_mut().filter(|n| targets.contains(&n.index)) {
                n.send(&fail);
            }
            return true;
        }
        let waiting = self.nodes.iter().filter(|n| targets.contains(&n.index));
        if len <= self.client.rx.capacity() && !waiting.clone().all(|n| n.has_room(len)) {
            return false;
        }
        let msg = self.take_client_message(len);
        let ends = match tag {
            b'd' => false,
            b'S' => true,
            _ => !extended,
        };
        if tag != b'd' {
            if let Some(r) = self.repl.request.as_mut() {
                r.copy_in = !ends;
            }
            trace_from_client(&self.prefix, tag, &msg, &mut cx.shared.scratch);
        }
        for n in self.nodes.iter_mut().filter(|n| targets.contains(&n.index)) {
            n.send(&msg);
        }
        true
    }

    fn start_request(&mut self, msg: Vec<u8>, cx: &mut Context) -> Result<(), Transition> {
        if cx
            .shared
            .pids
            .take_terminating(self.cancel_key.0, cx.now, true)
        {
            let msg = "terminating connection due to administrator command";
            self.fatal(cx, "57P01", msg);
            return Err(Transition::Close(msg.into()));
        }
        // (Nodes detached elsewhere were dropped by `node_io` in this pass.)
        let Some(lead) = self.lead_node(cx) else {
            self.fatal(cx, "08006", "no node is left");
            return Err(Transition::Close("no node is left".into()));
        };
        if msg.first() != Some(&b'Q') {
            return self.start_batch(msg, lead, cx);
        }
        let sql = match frontend::parse_query(&msg[5..]) {
            Ok(s) => s,
            Err(e) => return Err(self.protocol_violation(cx, &e.to_string())),
        };
        // pgpool-II's users ask any connection for the node table.
        if sql
            .trim()
            .trim_end_matches(';')
            .trim()
            .eq_ignore_ascii_case("SHOW POOL_NODES")
        {
            let mut answer = Vec::new();
            crate::admin::execute("SHOW NODES", cx.shared, &mut answer);
            cx.shared.out.clear();
            cx.shared.out.extend_from_slice(&answer);
            self.send_to_client(cx);
            self.ready_for_query(self.repl.tx.status(), cx);
            return Ok(());
        }
        super::close_pooled(&self.prefix, &request::databases_needed_alone(sql), cx);
        let signals = request::signals(sql);
        if !signals.is_empty() {
            return self.signal_session(sql, &signals, lead, cx);
        }
        let text = short(sql);
        let analysed = request::analyse(sql);
        let listens = request::listens(sql);
        let streaming = cx.shared.config.mode == Mode::Streaming;
        if analysed.copy_among_others && !streaming {
            return self.refuse_statement(
                "COPY … FROM STDIN cannot be replicated together with other statements in one query",
                "send the COPY as a query of its own (in psql, not joined to others with \\;)",
                cx,
            );
        }
        if analysed.class == plan::Class::Begin
            && !self.repl.tx.view.open
            && request::is_plain_begin(sql)
        {
            // Answered here; the nodes get it with the transaction's first statement.
            self.repl.tx.begin = Some(msg);
            self.repl.tx.view.open = true;
            let out = &mut cx.shared.out;
            out.clear();
            backend::command_complete(out, "BEGIN");
            self.send_to_client(cx);
            self.ready_for_query(b'T', cx);
            return Ok(());
        }
        if analysed.class == plan::Class::Commit {
            if let Some(done) = self.before_commit(&msg, &text, lead, cx) {
                return done;
            }
        }
        let says = |word: &[u8]| {
            sql.as_bytes()
                .windows(word.len())
                .any(|w| w.eq_ignore_ascii_case(word))
        };
        if analysed.class == plan::Class::SessionState && (says(b"DISCARD") || says(b"DEALLOCATE"))
        {
            self.repl.statements.forget_all();
        }
        if analysed.class == plan::Class::SessionState {
            if says(b"DISCARD ALL") {
                self.repl.session_sql.clear();
            } else if self.repl.session_sql.len() <= SESSION_SQL_LIMIT {
                self.repl.session_sql.retain(|m| *m != msg);
                self.repl.session_sql.push(msg.clone());
            }
        }
        let Some(plan) = self.plan_or_refuse(analysed.class, cx) else {
            return Ok(());
        };
        let mut plan = plan;
        if analysed.class == plan::Class::Commit && request::chains(sql) {
            // COMMIT AND CHAIN of a failed transaction: rolled back, and chained all the same.
            for s in plan.phases.iter_mut().flat_map(|p| p.segments.iter_mut()) {
                if *s == Segment::MainAs("ROLLBACK") {
                    *s = Segment::MainAs("ROLLBACK AND CHAIN");
                }
            }
        }
        // Streaming mode: one node writes; nothing is rewritten, checked or looked up.
        let replicated = plan.writes && !streaming;
        if replicated {
            if let Some(table) = &analysed.defines_then_writes {
                let message = format!("this query defines a non-deterministic default or a trigger for {table} and writes to it: pgmulti cannot see the new definition before it runs, so the nodes could store different values");
                let hint = "send the CREATE/ALTER TABLE or CREATE TRIGGER and the statements that write to the table as separate queries";
                return self.refuse_statement(&message, hint, cx);
            }
            self.tables_current(cx);
            let mut unknown: Vec<(String, String)> = analysed
                .inserts
                .iter()
                .map(|i| (i.table.clone(), i.key.clone()))
                .chain(analysed.written.iter().cloned())
                .filter(|(_, key)| !self.repl.tables.contains_key(key))
                .collect();
            unknown.sort_unstable_by(|a, b| a.1.cmp(&b.1));
            unknown.dedup_by(|a, b| a.1 == b.1);
            if !unknown.is_empty() {
                return self.start_probe(msg.clone(), unknown, lead, cx);
            }
        }
        let mut effects = None;
        let main = if replicated {
            let rewritten = match self.replicated_text(sql, &analysed) {
                Ok(r) => r,
                Err((message, hint)) => return self.refuse_statement(&message, &hint, cx),
            };
            if let Some(rewritten) = &rewritten {
                log::debug!(
                    "{} rewritten for replication: {}",
                    self.prefix,
                    short(rewritten)
                );
            }
            match self.effects_of(rewritten.as_deref().unwrap_or(sql)) {
                Ok(e) => effects = e,
                Err(refusal) => return self.refuse_statement(&refusal.message, &refusal.hint, cx),
            }
            match (&effects, &rewritten) {
                (Some(e), _) => {
                    if e.reruns() && !self.repl.tx.view.open {
                        plan::replicas_commit_after_vote(&mut plan);
                    }
                    let lead_sql = e.lead_query();
                    let mut m = Vec::with_capacity(lead_sql.len() + 6);
                    frontend::query(&mut m, &lead_sql);
                    m
                }
                (None, Some(rewritten)) => {
                    let mut m = Vec::with_capacity(rewritten.len() + 6);
                    frontend::query(&mut m, rewritten);
                    m
                }
                (None, None) => msg.clone(),
            }
        } else {
            msg
        };
        let voice = match plan.voice {
            Targets::ReadNode => self.read_node(lead, cx),
            _ => lead,
        };
        let ordering_lock = if replicated {
            let tables = &self.repl.tables;
            // A table not probed (it is always probed first) counts as drawing from one.
            request::ordering_lock(&analysed, &|k| tables.get(k).is_none_or(|t| t.sequenced))
        } else {
            None
        };
        self.repl.request = Some(Box::new(Request::new(
            main, text, plan, lead, voice, cx.now,
        )));
        let lost = self.lost_commit(analysed.class);
        if let Some(r) = self.repl.request.as_mut() {
            r.ordering_lock = ordering_lock;
            r.ddl = analysed.ddl;
            r.class = analysed.class;
            r.effects = effects.map(Box::new);
            r.listens = listens;
            r.fail_commit(lost);
        }
        self.advance(cx)
    }

    /// A COMMIT of a transaction that lost a node's connection while the client was not
    /// looking (between its statements): it is rolled back everywhere like any failed
    /// transaction's, but the client must hear why — it saw no error before.
    fn lost_commit(&self, class: plan::Class) -> Option<String> {
        let tx = &self.repl.tx;
        tx.lost
            .clone()
            .filter(|_| class == plan::Class::Commit && tx.view.failed)
    }

    /// COMMIT with `write_ack = async`: wait for the replicas to catch up (the request is
    /// parked), then compare; on disagreement run ROLLBACK everywhere instead. None: go on.
    fn before_commit(
        &mut self,
        msg: &[u8],
        text: &str,
        lead: u8,
        cx: &mut Context,
    ) -> Option<Result<(), Transition>> {
        if !self.repl.behind.is_empty() {
            self.repl.parked = Some(msg.to_vec());
            self.repl.parked_late = Some((cx.now, false));
            return Some(Ok(()));
        }
        self.repl.parked_late = None;
        if self.repl.tx.async_answers.is_empty() {
            self.repl.tx.late_note = None;
            return None;
        }
        let error = self.check_async_answers(lead, cx)?;
        let Some(lead) = self.lead_node(cx) else {
            self.fatal(cx, "08006", "no node is left");
            return Some(Err(Transition::Close("no node is left".into())));
        };
        // Roll the whole transaction back everywhere: COMMIT fails.
        let plan = Plan {
            phases: vec![plan::phase(Targets::All, &[Segment::MainAs("ROLLBACK")])],
            voice: Targets::Lead,
            writes: false,
        };
        let mut r = Request::new(Vec::new(), text.to_string(), plan, lead, lead, cx.now);
        r.error = Some(("40001", error));
        r.final_status = Some(b'I');
        self.repl.request = Some(Box::new(r));
        Some(self.advance(cx))
    }

    /// `pg_terminate_backend(N)` / `pg_cancel_backend(N)` naming pgmulti sessions: run on the
    /// lead with the lead's pid of each session's backend, where the node checks the
    /// permission. A terminated session closes when it notices its lost connection.
    fn signal_session(
        &mut self,
        sql: &str,
        signals: &[request::Signal],
        lead: u8,
        cx: &mut Context,
    ) -> Result<(), Transition> {
        let pids = &cx.shared.pids;
        let text = match request::signal_text(sql, signals, |pid| pids.backend_on(pid, lead)) {
            Ok(text) => text,
            Err(refusal) => return self.refuse_statement(&refusal.message, &refusal.hint, cx),
        };
        let Some(plan) = self.plan_or_refuse(plan::Class::LeadOnly, cx) else {
            return Ok(());
        };
        let signals: Vec<(u32, bool)> = signals
            .iter()
            .filter_map(|s| match s.target {
                request::SignalTarget::Literal(_, pid) => {
                    Some((pid, s.function == "pg_terminate_backend"))
                }
                _ => None,
            })
            .collect();
        self.mark_terminating(&signals, cx);
        log::debug!(
            "{} signal sent to node {lead} as: {}",
            self.prefix,
            short(&text)
        );
        let mut msg = Vec::with_capacity(text.len() + 6);
        frontend::query(&mut msg, &text);
        let mut r = Request::new(msg, short(&text), plan, lead, lead, cx.now);
        r.signals = signals;
        self.run_on_lead(r, plan::Class::LeadOnly, cx)
    }

    /// A FunctionCall: a large-object function runs on every node like a write, a new
    /// object with the OID pgmulti chose (`large_objects`); anything else is refused.
    fn start_function_call(&mut self, msg: Vec<u8>, cx: &mut Context) -> Result<(), Transition> {
        let Some(lead) = self.lead_node(cx) else {
            self.fatal(cx, "08006", "no node is left");
            return Err(Transition::Close("no node is left".into()));
        };
        let oid = large_objects::new_oid(random_u64());
        let main = match large_objects::function_call(msg.get(5..).unwrap_or_default(), oid) {
            large_objects::Call::AsIs => msg,
            large_objects::Call::Rewritten(m) => m,
            large_objects::Call::Refused(message) => {
                return self.refuse_statement(
                    &message,
                    "call the function with SELECT (or connect to a node directly)",
                    cx,
                );
            }
        };
        let Some(plan) = self.plan_or_refuse(plan::Class::Write, cx) else {
            return Ok(());
        };
        let r = Request::new(main, "function call".into(), plan, lead, lead, cx.now);
        self.run_on_lead(r, plan::Class::Write, cx)
    }

    /// Run `r`, a request pgmulti made whose voice is the lead, as a request of `class`.
    fn run_on_lead(
        &mut self,
        mut r: Request,
        class: plan::Class,
        cx: &mut Context,
    ) -> Result<(), Transition> {
        r.class = class;
        r.fail_commit(self.lost_commit(class));
        self.repl.request = Some(Box::new(r));
        self.advance(cx)
    }

    /// The sessions a request terminates close when they notice their lost connection.
    fn mark_terminating(&self, signals: &[(u32, bool)], cx: &mut Context) {
        for &(pid, terminates) in signals {
            if terminates {
                cx.shared.pids.mark_terminating(pid, cx.now);
            }
        }
    }

    /// The phases for a request of `class`; None when it was answered already (inside a
    /// failed transaction, with 25P02 as PostgreSQL would).
    fn plan_or_refuse(&mut self, class: plan::Class, cx: &mut Context) -> Option<Plan> {
        if cx.shared.config.mode == Mode::Streaming {
            let ryw = cx.shared.config.read_your_writes;
            let plan = plan::plan_streaming(class, self.repl.tx.view, ryw);
            let needs_primary = plan.phases.iter().any(|p| p.targets == Targets::Lead);
            // No primary, or not one this session is connected to (it lost the connection
            // and reconnects between transactions): never a standby in its place.
            let primary = cx.shared.cluster.lead();
            let connected = primary.is_some_and(|p| self.nodes.iter().any(|n| n.index == p));
            if needs_primary && !connected {
                if matches!(class, plan::Class::Rollback | plan::Class::Commit) {
                    // The transaction was on the lost primary: it is gone. ROLLBACK says
                    // so; COMMIT fails (never a "ROLLBACK" tag a client could take for a
                    // commit), retryable.
                    self.repl.tx = Tx::default();
                    if class == plan::Class::Commit {
                        let lost = "the transaction was lost with the primary (a standby is being promoted); it was not committed and can be retried";
                        self.send_error(cx, "ERROR", "40001", lost, None);
                    } else {
                        let out = &mut cx.shared.out;
                        out.clear();
                        backend::command_complete(out, "ROLLBACK");
                        self.send_to_client(cx);
                    }
                    self.ready_for_query(b'I', cx);
                    return None;
                }
                // Between the primary's loss and a standby's promotion: retryable.
                self.repl.tx.fail();
                self.send_error(
                    cx,
                    "ERROR",
                    "40001",
                    "no primary to run this on: the primary was lost (a standby is being promoted) or this session is reconnecting to it; retry",
                    None,
                );
                self.ready_for_query(self.repl.tx.status(), cx);
                return None;
            }
            return Some(plan);
        }
        match plan::plan(class, self.repl.tx.view, cx.shared.two_phase.is_some()) {
            Planned::Run(p) => Some(p),
            Planned::RefuseInFailedTransaction => {
                // Until the transaction ends, so that a retry loop sees why whatever it sends.
                match self.repl.tx.lost.clone() {
                    Some(lost) => self.send_error(cx, "ERROR", "40001", &lost, None),
                    None => self.send_error(cx, "ERROR", "25P02", "current transaction is aborted, commands ignored until end of transaction block", None),
                }
                self.ready_for_query(b'E', cx);
                None
            }
        }
    }

    /// The transaction's timestamp (taken at its first write, kept until it ends) and this
    /// statement's, for rewritten now() & co.
    fn timestamps(&mut self) -> (request::Moment, request::Moment) {
        let now = crate::timestamp::now();
        (*self.repl.tx.timestamp.get_or_insert(now), now)
    }

    /// An extended-protocol batch (messages up to Sync): prepared, then planned like a Query.
    fn start_batch(&mut self, msg: Vec<u8>, lead: u8, cx: &mut Context) -> Result<(), Transition> {
        if !self.repl.tx.view.open {
            if let Some(answer) = extended::plain_begin_answer(&msg, &self.repl.statements) {
                // As for a simple-protocol BEGIN: the nodes get the batch later.
                self.repl.tx.begin = Some(msg);
                self.repl.tx.view.open = true;
                self.tx_status = b'T';
                cx.shared.out.clear();
                cx.shared.out.extend_from_slice(&answer);
                self.send_to_client(cx);
                return Ok(());
            }
        }
        self.tables_current(cx);
        let (transaction_ts, statement_ts) = self.timestamps();
        let repl = &mut *self.repl;
        let tables = &repl.tables;
        let mut random = random_u64;
        repl.statements.as_written = cx.shared.config.mode == Mode::Streaming;
        let pids = &cx.shared.pids;
        let mut values = request::Values {
            transaction_ts,
            statement_ts,
            random: &mut random,
            backend: &|pid| pids.backend_on(pid, lead),
        };
        let prepared = extended::prepare(&msg, &mut repl.statements, tables, &mut values);
        let batch = match prepared {
            extended::Prepared::Ready(b) => b,
            extended::Prepared::NeedTables(tables) => {
                return self.start_probe(msg, tables, lead, cx);
            }
            extended::Prepared::Refused(refusal) => {
                return self.refuse_statement(&refusal.message, &refusal.hint, cx);
            }
        };
        let signals = batch.signals.clone();
        self.mark_terminating(&signals, cx);
        super::close_pooled(&self.prefix, &batch.databases_alone, cx);
        if batch.flush_replies == Some(0) {
            // Only Flush: nothing is pending, so nothing is answered (psycopg sends one
            // after Sync).
            return Ok(());
        }
        if batch.class == plan::Class::Commit {
            if let Some(done) = self.before_commit(&msg, "COMMIT", lead, cx) {
                return done;
            }
        }
        let Some(mut plan) = self.plan_or_refuse(batch.class, cx) else {
            return Ok(());
        };
        let effects = EffectRuns::batch(batch.effects, batch.executes).filter(|_| plan.writes);
        if effects.as_ref().is_some_and(|e| e.reruns()) && !self.repl.tx.view.open {
            plan::replicas_commit_after_vote(&mut plan);
        }
        let text = match &effects {
            Some(e) => short(e.statement()),
            None => "(extended protocol batch)".into(),
        };
        let voice = match plan.voice {
            Targets::ReadNode => batch
                .pinned
                .filter(|n| self.nodes.iter().any(|c| c.index == *n))
                .unwrap_or_else(|| self.read_node(lead, cx)),
            _ => lead,
        };
        let writes = plan.writes;
        let mut r = Request::new(batch.bytes, text, plan, lead, voice, cx.now);
        r.effects = effects.map(Box::new);
        r.ordering_lock = batch
            .ordering_lock
            .filter(|_| writes && cx.shared.config.mode != Mode::Streaming);
        r.ddl = batch.ddl;
        r.class = batch.class;
        r.signals = signals;
        r.describes = batch.describes.into();
        r.unnamed_read = batch.unnamed_read;
        r.parses_only = batch.parses_only;
        r.flush_replies = batch.flush_replies;
        r.listens = batch.listens;
        r.fail_commit(self.lost_commit(batch.class));
        self.repl.request = Some(Box::new(r));
        self.advance(cx)
    }

    /// The node for a read: the transaction's read node, or one drawn by weight and speed.
    fn read_node(&mut self, lead: u8, cx: &mut Context) -> u8 {
        let draw = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if cx.shared.config.mode == Mode::Streaming {
            let max_lag = cx.shared.config.max_standby_lag;
            let since = if cx.shared.config.read_your_writes {
                self.repl.wal_lsn
            } else {
                0
            };
            return cx
                .shared
                .cluster
                .standby_for(since, max_lag, draw)
                .filter(|id| self.nodes.iter().any(|n| n.index == *id))
                .unwrap_or(lead);
        }
        let pick = |c: &crate::cluster::Cluster, nodes: &[NodeConn]| {
            c.read_node(draw)
                .filter(|id| nodes.iter().any(|n| n.index == *id))
                .unwrap_or(lead)
        };
        let kept = self
            .repl
            .read_node
            .filter(|id| self.nodes.iter().any(|n| n.index == *id) && cx.shared.cluster.is_up(*id));
        let id = kept.unwrap_or_else(|| pick(&cx.shared.cluster, &self.nodes));
        self.repl.read_node = Some(id);
        id
    }

    /// At COMMIT with `write_ack = async`: compare what every node answered to the statements
    /// that ran behind; detach the minority. Some(message) when the transaction must fail.
    fn check_async_answers(&mut self, lead: u8, cx: &mut Context) -> Option<String> {
        let late_note = self.repl.tx.late_note.take();
        let mut answers = std::mem::take(&mut self.repl.tx.async_answers);
        answers.retain(|(n, _)| cx.shared.cluster.is_up(*n));
        // A node that ran nothing behind (the lead's statements all failed) has no entry.
        for n in &self.nodes {
            if !answers.iter().any(|(id, _)| *id == n.index) {
                answers.push((n.index, Vec::new()));
            }
        }
        let verdict = compare::vote(&answers, lead);
        if verdict.differ.is_empty() {
            cx.shared.cluster.agreed(&verdict.agree);
            return None;
        }
        log::info!(
            "{} nodes disagree on the transaction's statements: {}; COMMIT becomes ROLLBACK",
            self.prefix,
            compare::describe(&answers),
        );
        let faulty = cx.shared.cluster.disagreed(&verdict.differ, &verdict.agree);
        self.detach_disagreeing(&faulty, cx);
        let why = match late_note {
            Some(note) => note,
            None => "the nodes' results for the transaction's statements differed (a concurrent transaction changed what they saw)".into(),
        };
        Some(format!(
            "COMMIT failed: {why}; it was rolled back on every node and can be retried"
        ))
    }

    /// Ask the lead's catalog about `tables` (`replication::catalog`) before running
    /// `original`.
    fn start_probe(
        &mut self,
        original: Vec<u8>,
        tables: Vec<(String, String)>,
        lead: u8,
        cx: &mut Context,
    ) -> Result<(), Transition> {
        let names: Vec<&str> = tables.iter().map(|(t, _)| t.as_str()).collect();
        let sql = catalog::probe_sql(&names);
        let mut main = Vec::with_capacity(sql.len() + 6);
        frontend::query(&mut main, &sql);
        let plan = Plan {
            phases: vec![plan::phase(Targets::Lead, &[Segment::Main])],
            voice: Targets::Lead,
            writes: false,
        };
        let mut r = Request::new(main, "catalog lookup".into(), plan, lead, lead, cx.now);
        r.probe = Some(Probe {
            original,
            tables,
            rows: Vec::new(),
            error: None,
        });
        self.repl.request = Some(Box::new(r));
        self.advance(cx)
    }

    /// Answer a statement pgmulti will not run with 0A000 and a hint; it fails an open
    /// transaction, as an error from PostgreSQL would.
    fn refuse_statement(
        &mut self,
        message: &str,
        hint: &str,
        cx: &mut Context,
    ) -> Result<(), Transition> {
        self.send_error(cx, "ERROR", "0A000", message, Some(hint));
        self.repl.tx.fail();
        self.ready_for_query(self.repl.tx.status(), cx);
        Ok(())
    }

    /// Forget what the catalog said when DDL ran through pgmulti since it was asked.
    fn tables_current(&mut self, cx: &Context) {
        if self.repl.tables_epoch != cx.shared.ddl_epoch {
            self.repl.tables.clear();
            self.repl.tables_epoch = cx.shared.ddl_epoch;
        }
    }

    /// How the statements of the write Query `sql` (rewritten already) are replicated by
    /// their effect; None: all as written. Refused when one cannot be replicated (a
    /// trigger calls a non-deterministic function).
    fn effects_of(&self, sql: &str) -> Result<Option<EffectRuns>, request::Refusal> {
        let mut found = Vec::new();
        let mut statements = 0;
        for (i, statement) in split_statements(sql).enumerate() {
            statements += 1;
            if let Some(e) = effects::plan_in(statement, &self.repl.tables)? {
                // A sub-slice of `sql`: its place in the text.
                let start = statement.as_ptr() as usize - sql.as_ptr() as usize;
                let span = (start, start + statement.len());
                found.push(extended::EffectExecute::in_query(e, i, span));
            }
        }
        Ok(EffectRuns::query(sql.to_string(), found, statements))
    }

    /// The text every node runs for a write: non-deterministic column defaults written in,
    /// then non-deterministic calls replaced by literals. `Ok(None)`: the client's text as is.
    fn replicated_text(
        &mut self,
        sql: &str,
        analysed: &request::Analysed,
    ) -> Result<Option<String>, (String, String)> {
        let tables = &self.repl.tables;
        let filled = defaults::fill(sql, &analysed.inserts, &|key| {
            tables
                .get(key)
                .map(|t| t.volatile.clone())
                .unwrap_or_default()
        })?;
        let reanalysed;
        let (text, analysed) = match &filled {
            Some(f) => {
                reanalysed = request::analyse(f);
                (f.as_str(), &reanalysed)
            }
            None => (sql, analysed),
        };
        let (transaction_ts, statement_ts) = self.timestamps();
        let mut random = random_u64;
        let mut values = request::Values {
            transaction_ts,
            statement_ts,
            random: &mut random,
            backend: &|_| None,
        };
        match request::rewrite(text, analysed, &mut values) {
            Ok(Some(r)) => Ok(Some(r)),
            Ok(None) => Ok(filled),
            Err(refusal) => Err((refusal.message, refusal.hint)),
        }
    }
}

fn message_len(header: &[u8]) -> usize {
    match message_header(header, MAX_REPLICATED_MESSAGE) {
        Ok(Some((_, len))) => len,
        _ => header.len(),
    }
}

/// The row count in a CommandComplete message's tag.
/// Trace a whole client message replication mode took in (it handles them, not relays them).
fn trace_from_client(prefix: &str, tag: u8, msg: &[u8], scratch: &mut String) {
    trace_message(
        prefix,
        Peer::Client,
        Peer::Pgmulti,
        tag,
        &msg[5..],
        msg.len(),
        scratch,
    );
}

/// Whether a node running `segment` (of a request of `class`) may be committing.
fn commits(segment: Segment, class: plan::Class) -> bool {
    match segment {
        Segment::Wrapper(w) | Segment::MainAs(w) => w == "COMMIT",
        Segment::Prepare | Segment::CommitPrepared => true,
        Segment::Main => matches!(class, plan::Class::Commit | plan::Class::Mixed),
        Segment::ParsesOnly => false,
        // Streaming mode: it follows a statement that commits by itself on the primary.
        Segment::WalPosition => true,
    }
}

/// What the client is told when the nodes' results for `statement` differed and nothing
/// was committed: SQLSTATE 40001, so that retry loops retry it.
fn race_message(statement: &str) -> String {
    format!("could not replicate \"{statement}\": the nodes' results differed (a concurrent transaction changed what they saw); it was rolled back on every node and can be retried")
}

/// A statement shortened for log lines.
fn short(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() > 200 {
        let mut end = 200;
        while !one_line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &one_line[..end])
    } else {
        one_line
    }
}

/// The first four text columns of a DataRow (NULL as empty).
fn data_row_4(msg: &[u8]) -> Option<[String; 4]> {
    let fields = backend::data_row_fields(msg.get(5..)?).ok()?;
    let text = |i: usize| {
        let v = fields.get(i)?.0.unwrap_or_default();
        Some(String::from_utf8_lossy(v).into_owned())
    };
    Some([text(0)?, text(1)?, text(2)?, text(3)?])
}

fn error_message(msg: &[u8]) -> String {
    backend::parse_error_fields(msg.get(5..).unwrap_or_default())
        .map(|f| format!("{} {}", f.code, f.message))
        .unwrap_or_else(|_| "unreadable error".into())
}

/// Random bits for random() and UUIDs pgmulti chooses.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = openssl::rand::rand_bytes(&mut b);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use crate::replication::request::is_plain_begin;

    #[test]
    fn only_plain_begins_are_answered_by_pgmulti() {
        for sql in [
            "BEGIN",
            "begin;",
            " BEGIN WORK ",
            "begin transaction;",
            "START TRANSACTION",
        ] {
            assert!(is_plain_begin(sql), "{sql}");
        }
        for sql in [
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "START TRANSACTION READ ONLY",
            "BEGIN; SELECT 1",
            "BEGINX",
            "START",
            "COMMIT",
        ] {
            assert!(!is_plain_begin(sql), "{sql}");
        }
    }
}
