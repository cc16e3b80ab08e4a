//! Moving messages between the client and the node in `Relaying`, and the protocol trace.
//!
//! `pump` frames the messages at the front of one side's receive buffer and copies whole
//! messages into the other side's send buffer while it has room (back-pressure: when it is
//! full the source is simply not read until it drains). A message larger than a buffer is
//! streamed through in pieces. Every message passing is traced (see `crate::trace`).

use super::node::{LoginContext, LoginStep};
use super::{close_pooled, Session, Transition};
use crate::cluster::pool::PoolKey;
use crate::config::{Mode, PoolMode};
use crate::net::buffer::Buf;
use crate::net::endpoint::Broken;
use crate::protocol::framing::message_header;
use crate::protocol::frontend;
use crate::protocol::{Direction, MAX_MESSAGE_LEN};
use crate::reactor::context::{Context, TimerKind};
use crate::replication::request;
use crate::trace::{direction, trace_message, Peer};

/// Relay passes per wakeup before yielding to other sessions.
const PASSES: usize = 8;

/// What a pump saw besides moving bytes.
#[derive(Default)]
pub struct Pumped {
    pub bytes: usize,
    /// The client sent Terminate (forwarded; the session ends once it is flushed).
    pub terminate: bool,
    /// Status byte of the last ReadyForQuery that passed.
    pub ready: Option<u8>,
    /// Messages that each bring a ReadyForQuery (Query, Sync, FunctionCall), and
    /// ReadyForQuery messages passed.
    pub requests: u32,
    pub readies: u32,
    /// ErrorResponses passed.
    pub errors: u32,
    /// Client messages passed, and whether the last one was not a Query, Sync or
    /// FunctionCall (an extended-protocol batch is still open).
    pub messages: u32,
    pub open_batch: bool,
    /// Databases a client statement needs without other connections (`DROP DATABASE` &
    /// co): pgmulti's idle pooled connections to them are closed.
    pub databases_alone: Vec<String>,
}

/// Copy messages from `src` to `dst` while whole messages fit; stream oversized ones.
pub fn pump(
    src: &mut Buf,
    stream_left: &mut usize,
    dst: &mut Buf,
    from: Peer,
    to: Peer,
    prefix: &str,
    scratch: &mut String,
) -> Result<Pumped, String> {
    let mut out = Pumped::default();
    let dir = direction(from, to);
    loop {
        if *stream_left > 0 {
            let n = (*stream_left).min(src.len()).min(dst.free());
            if n == 0 {
                break;
            }
            dst.extend(&src.data()[..n]);
            src.consume(n);
            *stream_left -= n;
            out.bytes += n;
            continue;
        }
        let data = src.data();
        let (tag, len) = match message_header(data, MAX_MESSAGE_LEN) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        };
        if len > src.capacity() {
            // Too large to hold whole: trace what is here, then stream it through.
            let n = data.len().min(dst.free());
            if n < 5 {
                break;
            }
            trace_message(prefix, from, to, tag, &data[5..n], len, scratch);
            if dir == Direction::ToBackend {
                // A large Query or FunctionCall is a request like any other.
                out.messages += 1;
                out.open_batch = !matches!(tag, b'Q' | b'F');
                out.requests += u32::from(matches!(tag, b'Q' | b'F'));
            }
            dst.extend(&data[..n]);
            src.consume(n);
            *stream_left = len - n;
            out.bytes += n;
            continue;
        }
        if data.len() < len || dst.free() < len {
            break;
        }
        let msg = &data[..len];
        trace_message(prefix, from, to, tag, &msg[5..], len, scratch);
        match (dir, tag) {
            // Not passed on: the node connection may serve another client.
            (Direction::ToBackend, b'X') => {
                out.terminate = true;
                src.consume(len);
                break;
            }
            (Direction::ToBackend, b'Q' | b'S' | b'F') => {
                out.requests += 1;
                out.open_batch = false;
                if tag == b'Q' {
                    if let Ok(sql) = frontend::parse_query(&msg[5..]) {
                        out.databases_alone
                            .extend(request::databases_needed_alone(sql));
                    }
                }
            }
            (Direction::ToBackend, b'P') => {
                out.open_batch = true;
                if let Ok(p) = frontend::parse_parse(&msg[5..]) {
                    out.databases_alone
                        .extend(request::databases_needed_alone(p.query));
                }
            }
            (Direction::ToBackend, _) => out.open_batch = true,
            (Direction::ToClient, b'Z') => {
                out.ready = msg.get(5).copied();
                out.readies += 1;
            }
            (Direction::ToClient, b'E') => out.errors += 1,
            _ => {}
        }
        if dir == Direction::ToBackend {
            out.messages += 1;
        }
        dst.extend(msg);
        src.consume(len);
        out.bytes += len;
    }
    Ok(out)
}

impl Session {
    pub(super) fn on_relay(&mut self, cx: &mut Context) -> Transition {
        let per_transaction = cx.shared.config.pool_mode == PoolMode::Transaction;
        if per_transaction {
            match self.node_for_transaction(cx) {
                Ok(true) => {}
                Ok(false) => return self.close_if_drained(cx),
                Err(t) => return t,
            }
        }
        let t = self.relay_passes(cx);
        if per_transaction && matches!(t, Transition::Stay) {
            self.release_between_transactions(cx);
        }
        t
    }

    /// `pool_mode = transaction`: a session holds a node connection only while the client
    /// has something running. With none, the client's next message takes one (from the pool,
    /// or a new one, logging in and applying the session's settings first). Ok(true): the
    /// connection is ready to relay; Ok(false): wait (nothing to send, paused, or logging in).
    fn node_for_transaction(&mut self, cx: &mut Context) -> Result<bool, Transition> {
        if self.nodes.is_empty() {
            match self.client.fill() {
                Ok(_) => {}
                Err(Broken::Closed) => {
                    return Err(Transition::Close("client closed the connection".into()))
                }
                Err(Broken::Error(e)) => {
                    return Err(Transition::Close(format!("client read error: {e}")))
                }
            }
            match self.client.rx.data().first() {
                None => return Ok(false),
                Some(b'X') => return Err(Transition::Close("client sent Terminate".into())),
                Some(_) => {}
            }
            // Made once: this runs for every transaction.
            let key = self.pool_key(0);
            if !self.gate_open(cx) || !self.may_take_node(key.as_ref(), cx) {
                return Ok(false);
            }
            match self.open_node_keyed(0, key, cx) {
                Ok(conn) => self.nodes.push(conn),
                Err(e) => {
                    self.fatal(cx, "08006", &e);
                    return Err(Transition::Close(e));
                }
            }
            let timeout = cx.shared.config.connect_timeout;
            if !timeout.is_zero() {
                cx.cancel(&mut self.connect_timer);
                self.connect_timer = Some(cx.schedule(timeout, TimerKind::Connect));
            }
        }
        let Some(node) = self.nodes.first_mut() else {
            return Ok(false);
        };
        if node.is_ready() && node.configured {
            cx.cancel(&mut self.connect_timer);
            return Ok(true);
        }
        // Messages of the login are not the client's: it was logged in long ago.
        let mut discard = Buf::new(64 * 1024);
        let mut lc = LoginContext {
            prefix: &self.prefix,
            user: super::startup::find_param(&self.params, "user").unwrap_or_default(),
            params: &self.params[..self.node_param_count],
            credentials: &self.credentials,
            client_tx: &mut discard,
            voice: false,
        };
        let settings = &self.params[self.node_param_count..];
        match node.login_and_configure(&mut lc, settings, cx) {
            LoginStep::Ready => {
                cx.cancel(&mut self.connect_timer);
                Ok(true)
            }
            LoginStep::Pending => Ok(false),
            LoginStep::Failed { reason, .. } => {
                self.fatal(cx, "08006", &reason);
                Err(Transition::Close(reason))
            }
        }
    }

    /// `pool_mode = transaction`: whether this session may take a node connection now. A pool
    /// key has at most `max_pool_size` connections (PgBouncer's pool_size); a session that
    /// finds none idle and no room queues, and the pool wakes it when one comes back.
    /// `key`: the session's pool key for node 0.
    pub(super) fn may_take_node(&mut self, key: Option<&PoolKey>, cx: &mut Context) -> bool {
        let config = &cx.shared.config;
        if config.pool_mode != PoolMode::Transaction || config.mode != Mode::Relay {
            return true;
        }
        let max = config.max_pool_size.max(1);
        let Some(key) = key else {
            return true;
        };
        let pool = &mut cx.shared.pool;
        if self.pool_queued && pool.is_waiting(key, cx.key) {
            return false;
        }
        let woken = std::mem::take(&mut self.pool_queued);
        if pool.lend(key, max, woken) {
            self.lent = true;
            return true;
        }
        pool.wait(key, cx.key, woken);
        self.pool_queued = true;
        if !woken {
            log::debug!("{} waits for a node connection ({max} in use)", self.prefix);
        }
        false
    }

    /// The session no longer holds a lent connection (it goes back to the pool or is closed)
    /// nor waits for one. `key`: this session's pool key (None: its connections are not
    /// pooled, so never lent).
    pub(super) fn leave_lending(&mut self, key: Option<&PoolKey>, cx: &mut Context) {
        let Some(key) = key else {
            return;
        };
        if std::mem::take(&mut self.lent) {
            cx.shared.pool.give_back(key);
        }
        if std::mem::take(&mut self.pool_queued) {
            cx.shared.pool.leave_queue(key, cx.key);
        }
    }

    /// `pool_mode = transaction`: the node connection taken for the next transaction did not
    /// get ready within `connect_timeout`.
    pub(super) fn on_relay_connect_timeout(&mut self, cx: &mut Context) -> Transition {
        self.connect_timer = None;
        // Already back in the pool, or ready: the timer is stale.
        if self
            .nodes
            .first()
            .is_none_or(|n| n.is_ready() && n.configured)
        {
            return Transition::Stay;
        }
        let msg = format!(
            "could not connect to node 0: timeout after {:?}",
            cx.shared.config.connect_timeout
        );
        self.fatal(cx, "08006", &msg);
        Transition::Close(msg)
    }

    /// `pool_mode = transaction`: between transactions, with nothing in flight either way,
    /// the node connection goes back to the pool as it is (no reset).
    fn release_between_transactions(&mut self, cx: &mut Context) {
        // A client between Parse/Bind/Describe/Flush and its Sync is inside a batch: its
        // unnamed statement and portal live on this connection.
        let between = self.tx_status == b'I'
            && self.awaiting_ready == 0
            && !self.open_batch
            && self.client_stream_left == 0
            && self.node_stream_left == 0
            && self.client.rx.is_empty()
            && self.nodes.first().is_some_and(|n| n.is_quiet());
        if !between {
            return;
        }
        let Some(key) = self.pool_key(0) else {
            return;
        };
        self.leave_lending(Some(&key), cx);
        if let Some(node) = self.nodes.pop() {
            let max = cx.shared.config.max_pool_size.max(1);
            cx.shared.pool.put(
                key,
                node,
                &self.params[self.node_param_count..],
                false,
                max,
                cx.registry,
            );
        }
        self.nodes = Vec::new();
    }

    /// Relay passes while messages move (the node connection is ready).
    fn relay_passes(&mut self, cx: &mut Context) -> Transition {
        let Some(node) = self.nodes.first_mut() else {
            return Transition::Close("relaying without a node connection".into());
        };
        let from_node = Peer::Node(node.index);
        let mut exhausted = true;
        let mut node_gone = None;
        for _ in 0..PASSES {
            let mut moved = 0;
            match self.client.fill() {
                Ok(n) => moved += n,
                Err(Broken::Closed) => {
                    return Transition::Close("client closed the connection".into())
                }
                Err(Broken::Error(e)) => {
                    return Transition::Close(format!("client read error: {e}"))
                }
            }
            // Between transactions while paused: the client's next request waits.
            let gated = cx.shared.gate.closed()
                && self.tx_status == b'I'
                && self.awaiting_ready == 0
                && self.client_stream_left == 0
                && !matches!(self.client.rx.data().first(), None | Some(b'X'));
            if gated && !self.at_gate {
                self.at_gate = true;
                cx.shared.gate.waiting.push(cx.key);
            }
            let up = if gated {
                Pumped::default()
            } else {
                self.at_gate = false;
                match pump(
                    &mut self.client.rx,
                    &mut self.client_stream_left,
                    &mut node.ep.tx,
                    Peer::Client,
                    from_node,
                    &self.prefix,
                    &mut cx.shared.scratch,
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        cx.shared.stats.protocol_errors += 1;
                        self.fatal(cx, "08P01", &format!("invalid message from client: {e}"));
                        return Transition::Close(format!("invalid message from client: {e}"));
                    }
                }
            };
            moved += up.bytes;
            if !up.databases_alone.is_empty() {
                close_pooled(&self.prefix, &up.databases_alone, cx);
            }
            let stats = &mut cx.shared.cluster.nodes[node.index as usize];
            stats.queries += u64::from(up.requests);
            if up.requests > 0 && self.awaiting_ready == 0 {
                self.request_started = cx.now;
            }
            self.awaiting_ready += i64::from(up.requests);
            if up.messages > 0 {
                self.open_batch = up.open_batch;
            }
            match node.ep.flush() {
                Ok(n) => {
                    moved += n;
                    stats.bytes_out += n as u64;
                }
                Err(e) => node_gone = Some(e),
            }
            if up.terminate {
                return Transition::Close("client sent Terminate".into());
            }
            if node_gone.is_none() {
                match node.ep.fill() {
                    Ok(n) => {
                        moved += n;
                        stats.bytes_in += n as u64;
                    }
                    Err(e) => node_gone = Some(e),
                }
            }
            let down = match pump(
                &mut node.ep.rx,
                &mut self.node_stream_left,
                &mut self.client.tx,
                from_node,
                Peer::Client,
                &self.prefix,
                &mut cx.shared.scratch,
            ) {
                Ok(p) => p,
                Err(e) => {
                    return Transition::Close(format!(
                        "invalid message from node {}: {e}",
                        node.index
                    ))
                }
            };
            moved += down.bytes;
            self.awaiting_ready -= i64::from(down.readies);
            let stats = &mut cx.shared.cluster.nodes[node.index as usize];
            stats.errors += u64::from(down.errors);
            if down.readies > 0 && self.awaiting_ready <= 0 {
                let ms = cx
                    .now
                    .saturating_duration_since(self.request_started)
                    .as_secs_f64()
                    * 1000.0;
                cx.shared.cluster.observe_latency(node.index, ms);
            }
            if let Some(status) = down.ready {
                self.tx_status = status;
            }
            match self.client.flush() {
                Ok(n) => moved += n,
                Err(Broken::Closed) => {
                    return Transition::Close("client closed the connection".into())
                }
                Err(Broken::Error(e)) => {
                    return Transition::Close(format!("client write error: {e}"))
                }
            }
            if let Some(e) = &node_gone {
                if node.ep.rx.is_empty() || self.client.tx.is_full() {
                    // Whatever the node said last (often a FATAL error) has been passed on.
                    return Transition::Close(format!("node {} connection lost: {e}", node.index));
                }
            }
            if moved == 0 {
                exhausted = false;
                break;
            }
        }
        self.end_of_passes(exhausted, cx)
    }
}
