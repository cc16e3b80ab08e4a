//! The session in replication mode (`State::Replicating`): it takes one client request at a
//! time, plans it (`replication::plan`), runs the phases over its node connections, passes
//! the answer of one node (the voice) to the client, compares the others' answers, detaches
//! the nodes that disagree with the majority, and ends the request with its own
//! ReadyForQuery. Requests the client pipelines wait in its receive buffer.
//!
//! What a statement is comes from `replication::request`; how phases are chosen from
//! `replication::plan`; the vote from `replication::compare`. These files only move
//! messages, along the seams of a request's life:
//!
//! - `intake`: client messages in, a planned `Request` out;
//! - `runner`: its phases one after the other, the two-phase decision, the vote and the end;
//! - `answers`: what each node says, checked and recorded, the voice's passed on;
//! - `faults`: lost connections, lost nodes, late nodes;
//! - here: the session's state, and the pass over client and nodes that drives the rest.

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

mod answers;
mod faults;
mod intake;
mod runner;

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

/// The largest CopyData message, as in PostgreSQL (`PQ_LARGE_MESSAGE_LIMIT`). One larger
/// than the receive buffer is streamed to the nodes as it arrives, never held whole.
pub const MAX_COPY_DATA: usize = (1 << 30) - 1;

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
    /// The session made temporary tables or WITH HOLD cursors (`request::keeps_session_objects`):
    /// no node can join it later, since they cannot be copied there.
    pub(super) session_objects: bool,
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
    /// COPY: bytes of a CopyData message larger than the receive buffer still to pass on
    /// to the nodes (`Session::stream_copy_data`).
    copy_rest: usize,
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
    /// The next request is a procedure call run again unwrapped (`Request::retry`).
    unwrapped_retry: bool,
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
    /// LISTEN / UNLISTEN run in this transaction: they count when it commits.
    listens: Vec<request::Listen>,
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
    /// A simple Query the nodes run in another text than the client's (`main`): the
    /// client's, so that an error's position is moved back into it.
    client_sql: Option<String>,
    /// An autocommit CALL or DO: the client's message, to run it again outside pgmulti's
    /// own transaction if the lead says "invalid transaction termination" (2D000: the
    /// procedure commits inside, which PostgreSQL refuses in a transaction block), and
    /// whether that happened. The client never sees that first error.
    retry: Option<Vec<u8>>,
    retry_now: bool,
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
            client_sql: None,
            retry: None,
            retry_now: false,
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
        self.end_of_passes(exhausted, cx)
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

    /// End a request: ReadyForQuery with `status`, remembered for idle and shutdown checks.
    fn ready_for_query(&mut self, status: u8, cx: &mut Context) {
        self.tx_status = status;
        let out = &mut cx.shared.out;
        out.clear();
        backend::ready_for_query(out, status);
        self.send_to_client(cx);
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
