//! The event loop: one thread, one mio `Poll`, a slab of connections keyed by index and
//! generation, a timer wheel, the signal pipe and the log drain. The loop owns everything;
//! handlers get `&mut` to one connection plus a `Context`.
//!
//! One pass: poll (timeout 0 when work is pending, else the next timer deadline), read the
//! clock once, note readiness and queue the connections, run the queue, fire due timers,
//! forward cancel requests, free closed connections, and write the log when idle.

pub mod cancel;
pub mod context;
pub mod log_queue;
pub mod metrics_http;
pub mod operations;
pub mod signals;
pub mod timer;
pub mod token;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use slab::Slab;

use crate::cluster::health::HealthCheck;
use crate::cluster::pool::PoolKey;
use crate::cluster::preconnect::Preconnect;
use crate::config::Config;
use crate::net::listener::Listener;
use crate::session::{Event, Session};
use cancel::CancelConn;
use context::{Context, LongAsk, Shared, TimerEvent};
use log_queue::LogDrain;
use metrics_http::MetricsConn;
use operations::{Operations, Outcome};
use signals::{Signal, SignalPipe};
use timer::TimerWheel;
use token::{
    decode, ConnKey, Side, LISTENER_TOKEN_BASE, MAX_LISTENERS, METRICS_TOKEN_BASE, POOL_TOKEN_BASE,
    SIGNAL_TOKEN, WAKER_TOKEN,
};

/// A handler's context from the loop's parts (a macro, so that the fields are borrowed
/// apart from `entries`).
macro_rules! context {
    ($reactor:expr, $key:expr, $now:expr) => {
        Context {
            now: $now,
            key: $key,
            registry: $reactor.poll.registry(),
            timers: &mut $reactor.timers,
            shared: &mut $reactor.shared,
            again: false,
        }
    };
}

/// The keys of the loop's own timers (health check rounds, operation deadlines); no
/// connection has generation 0.
const HEALTH_KEY: ConnKey = ConnKey {
    index: u32::MAX,
    generation: 0,
};
const OPERATIONS_KEY: ConnKey = ConnKey {
    index: u32::MAX - 1,
    generation: 0,
};
/// A health check retry of node n has key index `HEALTH_RETRY_BASE - n`, generation 0.
const HEALTH_RETRY_BASE: u32 = u32::MAX - 2;

/// `mode = streaming`: the standbys' replay positions are read at most this often for
/// sessions that committed (`probe_positions`).
const POSITION_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Called on SIGHUP: re-reads the configuration and applies what can change live.
pub type ReloadFn = fn(&mut Shared, &mut LogDrain);

/// Boxed variants keep every slab entry small (an entry per client connection).
enum Conn {
    Session(Box<Session>),
    Cancel(Box<CancelConn>),
    Preconnect(Box<Preconnect>),
    Health(Box<HealthCheck>),
    Metrics(Box<MetricsConn>),
}

struct Entry {
    generation: u32,
    conn: Conn,
    /// Already in the run queue for this pass.
    queued: bool,
    closed: bool,
}

/// What the loop is doing overall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    /// SIGTERM: not accepting; sessions finish their transaction, until the deadline.
    Draining {
        deadline: Instant,
    },
    Exit,
}

pub struct Reactor {
    poll: Poll,
    entries: Slab<Entry>,
    listeners: Vec<Listener>,
    metrics_listeners: Vec<Listener>,
    signals: SignalPipe,
    timers: TimerWheel<TimerEvent>,
    run_queue: VecDeque<(ConnKey, Event)>,
    next_pass: Vec<ConnKey>,
    to_free: Vec<usize>,
    shared: Shared,
    log: LogDrain,
    next_generation: u32,
    next_conn_id: u64,
    mode: Mode,
    reload: ReloadFn,
    operations: Operations,
    /// A thread reported: look at the operations' channel.
    woken: bool,
    /// A round of health checks is on the timer wheel.
    health_scheduled: bool,
    /// When the standbys' positions may be read again (`wanted_lsn`), and whether a wake-up
    /// for then is armed.
    next_position_probe: Instant,
    position_wakeup: bool,
    /// `Cluster::changes` when sessions were last woken for it.
    cluster_changes: u64,
}

impl Reactor {
    pub fn new(
        listeners: Vec<Listener>,
        metrics_listeners: Vec<Listener>,
        shared: Shared,
        log: LogDrain,
        reload: ReloadFn,
    ) -> std::io::Result<Reactor> {
        let poll = Poll::new()?;
        let (mut listeners, mut metrics_listeners) = (listeners, metrics_listeners);
        if listeners.len() > MAX_LISTENERS || metrics_listeners.len() > MAX_LISTENERS {
            return Err(std::io::Error::other("too many listen addresses"));
        }
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry().register(
                l.source(),
                Token(LISTENER_TOKEN_BASE + i),
                mio::Interest::READABLE,
            )?;
        }
        for (i, l) in metrics_listeners.iter_mut().enumerate() {
            poll.registry().register(
                l.source(),
                Token(METRICS_TOKEN_BASE - i),
                mio::Interest::READABLE,
            )?;
        }
        let signals = SignalPipe::install(poll.registry(), SIGNAL_TOKEN)?;
        let operations = Operations::new(mio::Waker::new(poll.registry(), WAKER_TOKEN)?);
        let mut shared = shared;
        if let Some(log) = shared.two_phase.as_mut() {
            log.start_syncer(operations.waker())
                .map_err(std::io::Error::other)?;
        }
        Ok(Reactor {
            poll,
            entries: Slab::with_capacity(1024),
            listeners,
            metrics_listeners,
            signals,
            timers: TimerWheel::new(Duration::from_millis(10), 1024, Instant::now()),
            run_queue: VecDeque::with_capacity(1024),
            next_pass: Vec::new(),
            cluster_changes: 0,
            to_free: Vec::new(),
            shared,
            log,
            next_generation: 1,
            next_conn_id: 1,
            mode: Mode::Running,
            reload,
            operations,
            woken: false,
            health_scheduled: false,
            next_position_probe: Instant::now(),
            position_wakeup: false,
        })
    }

    /// Run until shutdown. Returns when every session has ended (or the deadline passed).
    pub fn run(&mut self) -> std::io::Result<()> {
        let mut events = Events::with_capacity(1024);
        for l in &self.listeners {
            log::info!("listening on {}", l.describe());
        }
        for l in &self.metrics_listeners {
            log::info!("serving /metrics on {}", l.describe());
        }
        self.ask_preconnects();
        if self.shared.config.mode == crate::config::Mode::Streaming {
            // The nodes' roles are needed before the first write.
            self.start_health_checks(Instant::now());
        } else {
            self.schedule_health_checks(Instant::now());
        }
        loop {
            self.next_pass.append(&mut self.shared.pool.woken);
            self.next_pass.extend(self.shared.message_memory.woken());
            let timeout = if !self.next_pass.is_empty() {
                Some(Duration::ZERO)
            } else {
                self.timers
                    .next_deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()))
            };
            if timeout != Some(Duration::ZERO) && !self.log.is_empty() {
                self.log.drain();
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let now = Instant::now();
            self.shared.stats.log_lines_dropped = self.log.dropped();
            for key in std::mem::take(&mut self.next_pass) {
                self.enqueue(key, Event::ClientIo);
            }
            for ev in events.iter() {
                self.on_readiness(ev, now);
            }
            self.run_queue_until_empty(now);
            self.fire_timers(now);
            self.forward_cancels(now);
            self.open_preconnects(now);
            self.carry_out_admin_asks(now);
            self.advance_operations(now);
            if !self.shared.health_retries.is_empty() {
                self.schedule_health_retries(now);
            }
            for node in std::mem::take(&mut self.shared.health_now) {
                self.start_health_check(node, now);
            }
            if self.shared.wanted_lsn > 0 {
                self.probe_positions(now);
            }
            if let Some(node) = self.shared.cluster.promote_ask.take() {
                self.start_promotion(node, now);
            }
            self.wake_sessions_on_cluster_change();
            if let Some(log) = self.shared.two_phase.as_mut() {
                // Group commit: one sync for the decisions this pass wrote.
                self.next_pass.extend(log.flush());
            }
            self.free_closed();
            if self.log.pressing() {
                self.log.drain();
            }
            if self.check_mode(now) == Mode::Exit {
                break;
            }
        }
        log::info!("pgmulti exiting");
        self.log.drain();
        Ok(())
    }

    fn on_readiness(&mut self, ev: &mio::event::Event, now: Instant) {
        let t = ev.token();
        if t == SIGNAL_TOKEN {
            for s in self.signals.drain() {
                self.on_signal(s, now);
            }
            return;
        }
        if t == WAKER_TOKEN {
            self.woken = true;
            return;
        }
        if t.0 <= METRICS_TOKEN_BASE && t.0 > METRICS_TOKEN_BASE - MAX_LISTENERS {
            self.accept_metrics(METRICS_TOKEN_BASE - t.0, now);
            return;
        }
        if t.0 >= LISTENER_TOKEN_BASE {
            self.accept(t.0 - LISTENER_TOKEN_BASE, now);
            return;
        }
        if t.0 >= POOL_TOKEN_BASE {
            let read_closed = ev.is_read_closed() || ev.is_error();
            self.shared.pool.on_ready(
                t,
                ev.is_readable(),
                ev.is_writable(),
                read_closed,
                self.poll.registry(),
            );
            return;
        }
        let Some((key, side)) = decode(t) else { return };
        let Some(entry) = self.live_entry(key) else {
            return;
        };
        let read_closed = ev.is_read_closed() || ev.is_error();
        let readable = ev.is_readable() || read_closed;
        let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
        let event = match &mut entry.conn {
            Conn::Session(s) => {
                s.set_ready(side, readable, writable, read_closed);
                match side {
                    Side::Client => Event::ClientIo,
                    Side::Node(n) => Event::NodeIo(n),
                }
            }
            Conn::Cancel(c) => {
                c.set_ready(readable, writable);
                Event::ClientIo
            }
            Conn::Preconnect(p) => {
                p.set_ready(readable, writable, read_closed);
                Event::ClientIo
            }
            Conn::Health(h) => {
                h.set_ready(readable, writable, read_closed);
                Event::ClientIo
            }
            Conn::Metrics(m) => {
                m.set_ready(readable, writable, read_closed);
                Event::ClientIo
            }
        };
        self.enqueue(key, event);
    }

    fn live_entry(&mut self, key: ConnKey) -> Option<&mut Entry> {
        self.entries
            .get_mut(key.index as usize)
            .filter(|e| e.generation == key.generation && !e.closed)
    }

    fn enqueue(&mut self, key: ConnKey, event: Event) {
        if let Some(e) = self.live_entry(key) {
            e.queued = true;
            self.run_queue.push_back((key, event));
        }
    }

    fn run_queue_until_empty(&mut self, now: Instant) {
        loop {
            self.wake_pool_waiters();
            let Some((key, event)) = self.run_queue.pop_front() else {
                break;
            };
            self.dispatch(key, event, now);
        }
    }

    /// A node was detached or attached: every session runs in the next pass, so that one
    /// waiting on a detached node stops waiting at once.
    fn wake_sessions_on_cluster_change(&mut self) {
        if self.shared.cluster.changes == self.cluster_changes {
            return;
        }
        self.cluster_changes = self.shared.cluster.changes;
        for (index, e) in self.entries.iter() {
            if matches!(e.conn, Conn::Session(_)) && !e.closed {
                self.next_pass.push(ConnKey {
                    index: index as u32,
                    generation: e.generation,
                });
            }
        }
    }

    /// Sessions the pool woke (a connection of their key came back) run in this pass.
    fn wake_pool_waiters(&mut self) {
        while let Some(key) = self.shared.pool.woken.pop() {
            self.enqueue(key, Event::ClientIo);
        }
    }

    /// Hand one event to one connection; close it if its handler says so.
    fn dispatch(&mut self, key: ConnKey, event: Event, now: Instant) {
        let Some(entry) = self
            .entries
            .get_mut(key.index as usize)
            .filter(|e| e.generation == key.generation && !e.closed)
        else {
            return;
        };
        entry.queued = false;
        let mut cx = context!(self, key, now);
        let closed = match &mut entry.conn {
            Conn::Session(s) => match s.handle(event, &mut cx) {
                Some(reason) => {
                    s.close(&reason, &mut cx);
                    true
                }
                None => false,
            },
            Conn::Cancel(c) => c.drive(&mut cx),
            Conn::Preconnect(p) => p.drive(&mut cx),
            Conn::Health(h) => h.drive(&mut cx),
            Conn::Metrics(m) => m.drive(&mut cx),
        };
        let again = cx.again;
        if closed {
            entry.closed = true;
            self.to_free.push(key.index as usize);
        } else if again {
            self.next_pass.push(key);
        }
    }

    fn accept(&mut self, listener: usize, now: Instant) {
        loop {
            let Some(l) = self.listeners.get(listener) else {
                return;
            };
            let (socket, peer) = match l.accept() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("accept on {}: {e}", l.describe());
                    return;
                }
            };
            let sessions = self.entries.len();
            let key = self.new_key();
            let id = self.next_conn_id;
            self.next_conn_id += 1;
            let mut cx = context!(self, key, now);
            let mut session = Session::new(id, socket, peer, &mut cx);
            cx.shared.stats.sessions_accepted += 1;
            if let Err(e) = session.register(&mut cx) {
                log::warn!("{} cannot register socket: {e}", session.prefix());
                continue;
            }
            if sessions >= cx.shared.config.max_client_conn {
                session.refuse(&mut cx, "53300", "sorry, too many clients already");
                continue;
            }
            log::debug!("{} accepted", session.prefix());
            self.entries.insert(Entry {
                generation: key.generation,
                conn: Conn::Session(Box::new(session)),
                queued: false,
                closed: false,
            });
        }
    }

    /// A scrape of `/metrics`: a short connection of its own.
    fn accept_metrics(&mut self, listener: usize, now: Instant) {
        loop {
            let Some(l) = self.metrics_listeners.get(listener) else {
                return;
            };
            let socket = match l.accept() {
                Ok(Some((s, _))) => s,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("accept on {}: {e}", l.describe());
                    return;
                }
            };
            let key = self.new_key();
            let mut cx = context!(self, key, now);
            match MetricsConn::start(socket, &mut cx) {
                Ok(m) => {
                    self.entries.insert(Entry {
                        generation: key.generation,
                        conn: Conn::Metrics(Box::new(m)),
                        queued: false,
                        closed: false,
                    });
                    // The request may be there already.
                    self.next_pass.push(key);
                }
                Err(e) => log::warn!("metrics connection: {e}"),
            }
        }
    }

    /// The key the next `entries.insert` will get.
    fn new_key(&mut self) -> ConnKey {
        let generation = self.next_generation;
        // 31 bits: tokens of pooled connections live above 2^63.
        self.next_generation = (self.next_generation.wrapping_add(1) & 0x7fff_ffff).max(1);
        ConnKey {
            index: self.entries.vacant_key() as u32,
            generation,
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut fired = Vec::new();
        self.timers.expire(now, &mut fired);
        for t in fired {
            if t.key == HEALTH_KEY {
                self.start_health_checks(now);
                continue;
            }
            if t.key == OPERATIONS_KEY {
                // A deadline, or the next standby position probe: the pass looks at both.
                continue;
            }
            if t.key.generation == 0 {
                let node = HEALTH_RETRY_BASE.saturating_sub(t.key.index);
                self.start_health_check(node as u8, now);
                continue;
            }
            let helper = matches!(
                self.live_entry(t.key),
                Some(Entry {
                    conn: Conn::Cancel(_)
                        | Conn::Preconnect(_)
                        | Conn::Health(_)
                        | Conn::Metrics(_),
                    ..
                })
            );
            if helper {
                // A cancel, pooled connection or health check that did not finish in time.
                self.time_out_helper(t.key, now);
                continue;
            }
            self.dispatch(t.key, Event::Timer(t.kind), now);
        }
        // Handlers run by timers may have queued more work.
        self.run_queue_until_empty(now);
    }

    /// CancelRequests clients sent: check the key against the session it names and open a
    /// connection to that session's node to pass PostgreSQL's own key on; and the cancels
    /// sessions ask for themselves (`backend_cancels`).
    fn forward_cancels(&mut self, now: Instant) {
        for ask in std::mem::take(&mut self.shared.cancel_asks) {
            let Some(&key) = self.shared.cancel_index.get(&ask.process_id) else {
                log::info!("cancel request for unknown process {}", ask.process_id);
                continue;
            };
            let targets = match self.live_entry(key).map(|e| &e.conn) {
                Some(Conn::Session(s)) if ask.secret_key.is_none_or(|k| k == s.cancel_key.1) => {
                    s.node_cancel_targets(ask.except)
                }
                _ => {
                    log::info!(
                        "cancel request for process {} with a wrong key ignored",
                        ask.process_id
                    );
                    continue;
                }
            };
            self.shared.backend_cancels.extend(targets);
        }
        for (addr, pid, secret) in std::mem::take(&mut self.shared.backend_cancels) {
            let key = self.new_key();
            let mut cx = context!(self, key, now);
            match CancelConn::start(addr, pid, secret, &mut cx) {
                Ok(c) => {
                    self.entries.insert(Entry {
                        generation: key.generation,
                        conn: Conn::Cancel(Box::new(c)),
                        queued: false,
                        closed: false,
                    });
                }
                Err(e) => log::warn!("cancel request to {addr}: {e}"),
            }
        }
    }

    /// RELOAD and SHUTDOWN from the admin console, as SIGHUP and SIGTERM; the commands
    /// that take time go to `operations`.
    fn carry_out_admin_asks(&mut self, now: Instant) {
        let asks = std::mem::take(&mut self.shared.admin_asks);
        if asks.reload {
            self.on_signal(Signal::Reload, now);
        }
        if asks.shutdown {
            self.on_signal(Signal::Terminate, now);
        }
        let mut out = Outcome::default();
        for (asker, ask) in asks.long {
            match ask {
                LongAsk::ShowClients => {
                    let rows: Vec<Vec<String>> =
                        self.sessions().filter_map(|s| s.client_row()).collect();
                    let mut a = Vec::new();
                    crate::admin::table(
                        &mut a,
                        &[
                            "id",
                            "user",
                            "database",
                            "state",
                            "address",
                            "tls",
                            "connected_at",
                            "nodes",
                        ],
                        &rows,
                        "SHOW",
                    );
                    out.answers.push((asker, a));
                }
                LongAsk::ShowServers => {
                    let mut rows = Vec::new();
                    for s in self.sessions() {
                        s.server_rows(&mut rows);
                    }
                    self.shared.pool.server_rows(&mut rows);
                    let mut a = Vec::new();
                    crate::admin::table(
                        &mut a,
                        &[
                            "node_id",
                            "client_id",
                            "user",
                            "database",
                            "state",
                            "backend_pid",
                            "address",
                        ],
                        &rows,
                        "SHOW",
                    );
                    out.answers.push((asker, a));
                }
                ask => self
                    .operations
                    .start(asker, ask, &mut self.shared, now, &mut out),
            }
        }
        self.apply_outcome(out, now);
    }

    fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.entries.iter().filter_map(|(_, e)| match &e.conn {
            Conn::Session(s) if !e.closed => Some(s.as_ref()),
            _ => None,
        })
    }

    /// Threads' reports and the waits of PAUSE, ATTACH NODE and RECOVER NODE.
    fn advance_operations(&mut self, now: Instant) {
        if !std::mem::take(&mut self.woken) && !self.operations.waits_for_quiet() {
            return;
        }
        let entries = &self.entries;
        let mut busy = || {
            entries.iter().any(|(_, e)| match &e.conn {
                Conn::Session(s) => !e.closed && s.busy(),
                _ => false,
            })
        };
        let mut out = Outcome::default();
        self.operations
            .advance(&mut self.shared, now, &mut busy, &mut out);
        self.apply_outcome(out, now);
    }

    /// Answer the consoles, wake the sessions waiting at the gate, arm a deadline.
    fn apply_outcome(&mut self, out: Outcome, now: Instant) {
        for (key, answer) in out.answers {
            let Some(entry) = self
                .entries
                .get_mut(key.index as usize)
                .filter(|e| e.generation == key.generation && !e.closed)
            else {
                continue; // the console went away
            };
            let mut cx = context!(self, key, now);
            if let Conn::Session(s) = &mut entry.conn {
                s.admin_answer(&answer, &mut cx);
            }
            self.next_pass.push(key);
        }
        if out.wake_gate {
            for key in std::mem::take(&mut self.shared.gate.waiting) {
                if let Some(Entry {
                    conn: Conn::Session(s),
                    ..
                }) = self.live_entry(key)
                {
                    s.leave_gate();
                }
                self.next_pass.push(key);
            }
        }
        if let Some(at) = out.recheck_at {
            self.timers.schedule(
                at,
                TimerEvent {
                    key: OPERATIONS_KEY,
                    kind: context::TimerKind::Deadline,
                },
            );
        }
    }

    fn time_out_helper(&mut self, key: ConnKey, now: Instant) {
        let entry = self
            .entries
            .get_mut(key.index as usize)
            .filter(|e| e.generation == key.generation && !e.closed);
        if let Some(entry) = entry {
            if let Conn::Health(h) = &mut entry.conn {
                let mut cx = context!(self, key, now);
                if h.timed_out(&mut cx) {
                    return;
                }
            }
        }
        self.close_entry(key, now, "timed out");
    }

    fn schedule_health_checks(&mut self, now: Instant) {
        let period = self.shared.config.health_check_period;
        self.health_scheduled = false;
        if self.shared.config.mode != crate::config::Mode::Relay && !period.is_zero() {
            self.health_scheduled = true;
            self.timers.schedule(
                now + period,
                TimerEvent {
                    key: HEALTH_KEY,
                    kind: context::TimerKind::Health,
                },
            );
        }
    }

    /// A round of health checks: one per live node.
    fn start_health_checks(&mut self, now: Instant) {
        let live: Vec<u8> = self.shared.cluster.live().collect();
        for node in live {
            self.start_health_check(node, now);
        }
        self.schedule_health_checks(now);
    }

    /// A health check's (or promotion's) loop entry.
    fn insert_health(&mut self, key: ConnKey, h: HealthCheck) {
        self.entries.insert(Entry {
            generation: key.generation,
            conn: Conn::Health(Box::new(h)),
            queued: false,
            closed: false,
        });
    }

    /// `mode = streaming`: promote standby `node` (the primary was lost).
    fn start_promotion(&mut self, node: u8, now: Instant) {
        let key = self.new_key();
        let mut cx = context!(self, key, now);
        match HealthCheck::promote(node, &mut cx) {
            Ok(h) => self.insert_health(key, h),
            Err(e) => log::error!("node {node} could not be promoted: {e}"),
        }
    }

    /// `mode = streaming`: sessions committed up to `wanted_lsn`. Read the replay position
    /// of each live standby that had not replayed that far (a health check each), at most
    /// every `POSITION_PROBE_INTERVAL`, until all have: a session's reads then go to a
    /// standby about as soon as one has its commit, not a health check period later.
    fn probe_positions(&mut self, now: Instant) {
        let wanted = self.shared.wanted_lsn;
        let cluster = &self.shared.cluster;
        let behind: Vec<u8> = cluster
            .nodes
            .iter()
            .filter(|n| n.standby == Some(true) && cluster.is_up(n.id) && n.wal_lsn < wanted)
            .map(|n| n.id)
            .collect();
        if behind.is_empty() {
            self.shared.wanted_lsn = 0;
            return;
        }
        if now < self.next_position_probe {
            if !self.position_wakeup {
                self.position_wakeup = true;
                self.timers.schedule(
                    self.next_position_probe,
                    TimerEvent {
                        key: OPERATIONS_KEY,
                        kind: context::TimerKind::Deadline,
                    },
                );
            }
            return;
        }
        self.position_wakeup = false;
        self.next_position_probe = now + POSITION_PROBE_INTERVAL;
        for node in behind {
            self.start_health_check(node, now);
        }
    }

    /// Check `node` unless it is not live or a check of it is running.
    fn start_health_check(&mut self, node: u8, now: Instant) {
        let running = self
            .entries
            .iter()
            .any(|(_, e)| matches!(&e.conn, Conn::Health(h) if !e.closed && h.node() == node));
        if running || !self.shared.cluster.is_up(node) {
            return;
        }
        let key = self.new_key();
        let mut cx = context!(self, key, now);
        match HealthCheck::start(node, &mut cx) {
            Ok(h) => self.insert_health(key, h),
            Err(e) => {
                cx.shared
                    .cluster
                    .detach(node, &format!("health check could not connect: {e}"));
            }
        }
    }

    /// Failed health checks to try again after `health_check_retry_delay`.
    fn schedule_health_retries(&mut self, now: Instant) {
        let delay = self.shared.config.health_check_retry_delay;
        for node in std::mem::take(&mut self.shared.health_retries) {
            self.timers.schedule(
                now + delay,
                TimerEvent {
                    key: ConnKey {
                        index: HEALTH_RETRY_BASE - u32::from(node),
                        generation: 0,
                    },
                    kind: context::TimerKind::Health,
                },
            );
        }
    }

    /// At start-up: `min_pool_size` connections per live node for every `preconnect` pair.
    fn ask_preconnects(&mut self) {
        let shared = &mut self.shared;
        if shared.config.max_pool_size == 0 {
            return;
        }
        for (database, user) in &shared.config.preconnect {
            for node in shared.cluster.live() {
                let key = PoolKey {
                    node,
                    database: database.clone(),
                    user: user.clone(),
                };
                for _ in 0..shared.config.min_pool_size {
                    shared.preconnect_asks.push(key.clone());
                }
            }
        }
    }

    /// Open the pooled connections sessions or start-up asked for.
    fn open_preconnects(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.shared.preconnect_asks) {
            let ckey = self.new_key();
            let mut cx = context!(self, ckey, now);
            match Preconnect::start(key.clone(), &mut cx) {
                Ok(p) => {
                    self.entries.insert(Entry {
                        generation: ckey.generation,
                        conn: Conn::Preconnect(Box::new(p)),
                        queued: false,
                        closed: false,
                    });
                }
                Err(e) => log::warn!("pool {}/{}@node{}: {e}", key.database, key.user, key.node),
            }
        }
    }

    fn free_closed(&mut self) {
        for index in self.to_free.drain(..) {
            if self.entries.get(index).is_some_and(|e| e.closed) {
                self.entries.remove(index);
            }
        }
    }

    fn on_signal(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::Reload => {
                log::info!("received SIGHUP, reloading configuration");
                (self.reload)(&mut self.shared, &mut self.log);
                // Health checks switched on by the reload start now; a changed period
                // applies from the next round.
                if !self.health_scheduled {
                    self.schedule_health_checks(now);
                }
            }
            Signal::Terminate => {
                if let Mode::Running = self.mode {
                    let grace = self.shared.config.shutdown_timeout;
                    log::info!("received SIGTERM: no new connections; waiting up to {grace:?} for sessions to finish");
                    self.mode = Mode::Draining {
                        deadline: now + grace,
                    };
                    self.stop_listening();
                    let keys: Vec<ConnKey> = self.session_keys();
                    for key in keys {
                        self.dispatch(key, Event::Shutdown, now);
                    }
                }
            }
            Signal::Interrupt => {
                log::info!("received SIGINT: closing every session now");
                self.stop_listening();
                self.close_all(now, "fast shutdown");
                self.mode = Mode::Exit;
            }
        }
    }

    fn session_keys(&self) -> Vec<ConnKey> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.closed)
            .map(|(i, e)| ConnKey {
                index: i as u32,
                generation: e.generation,
            })
            .collect()
    }

    fn stop_listening(&mut self) {
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(l.source());
        }
    }

    fn close_all(&mut self, now: Instant, reason: &str) {
        for key in self.session_keys() {
            self.close_entry(key, now, reason);
        }
        self.free_closed();
    }

    fn close_entry(&mut self, key: ConnKey, now: Instant, reason: &str) {
        let Some(entry) = self
            .entries
            .get_mut(key.index as usize)
            .filter(|e| e.generation == key.generation && !e.closed)
        else {
            return;
        };
        let mut cx = context!(self, key, now);
        match &mut entry.conn {
            Conn::Session(s) => s.close(reason, &mut cx),
            Conn::Cancel(c) => c.close(cx.registry),
            Conn::Preconnect(p) => p.close(&mut cx),
            Conn::Health(h) => h.close(),
            Conn::Metrics(m) => m.close(&mut cx),
        }
        entry.closed = true;
        self.to_free.push(key.index as usize);
    }

    fn check_mode(&mut self, now: Instant) -> Mode {
        if let Mode::Draining { deadline } = self.mode {
            if self.entries.is_empty() {
                self.mode = Mode::Exit;
            } else if now >= deadline {
                log::warn!(
                    "shutdown_timeout reached: closing {} remaining sessions",
                    self.entries.len()
                );
                self.close_all(now, "shutdown_timeout reached");
                self.mode = Mode::Exit;
            }
        }
        self.mode
    }
}

/// Pids pgmulti makes up for clients (replication mode, transaction pooling) are unique
/// among live sessions and above Linux's highest process number (2^22), so they never name
/// a real backend on a node: a pid read from a node's pg_stat_activity is never mistaken
/// for a pgmulti session's.
const FIRST_OWN_PID: u32 = 1 << 22;

impl Shared {
    pub fn new_cancel_key(&mut self) -> (u32, u32) {
        loop {
            self.next_process_id = self.next_process_id.wrapping_add(1) & 0x7fff_ffff;
            if self.next_process_id <= FIRST_OWN_PID {
                self.next_process_id = FIRST_OWN_PID + 1;
            }
            if !self.cancel_index.contains_key(&self.next_process_id) {
                break;
            }
        }
        if self.secrets.is_empty() {
            // Drawn 64 at a time: the generator costs a system call per draw.
            let mut bytes = [0u8; 256];
            let _ = openssl::rand::rand_bytes(&mut bytes);
            self.secrets = bytes
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
        }
        let secret = self.secrets.pop().unwrap_or_default();
        (self.next_process_id, secret)
    }

    pub fn new(
        config: Config,
        users: crate::auth::userlist::UserList,
        client_tls: Option<crate::net::tls::ClientTls>,
        node_tls: crate::net::tls::NodeTls,
        cluster: crate::cluster::Cluster,
    ) -> Shared {
        Shared {
            config,
            users,
            client_tls,
            node_tls,
            cluster,
            cancel_index: HashMap::new(),
            cancel_asks: Vec::new(),
            backend_cancels: Vec::new(),
            pids: Default::default(),
            next_process_id: FIRST_OWN_PID + (std::process::id() & 0xffff),
            stats: Default::default(),
            scratch: String::with_capacity(4096),
            ddl_epoch: 0,
            pool: Default::default(),
            preconnect_asks: Vec::new(),
            two_phase: None,
            message_memory: Default::default(),
            admin_asks: Default::default(),
            out: Vec::with_capacity(4096),
            node_msg: Vec::with_capacity(4096),
            gate: Default::default(),
            health_retries: Vec::new(),
            health_now: Vec::new(),
            wanted_lsn: 0,
            secrets: Vec::new(),
            mock_nonce: {
                let mut n = [0u8; 32];
                let _ = openssl::rand::rand_bytes(&mut n);
                n
            },
            verifiers: HashMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    /// The loop keeps an entry per client connection (see `Conn`).
    #[test]
    fn a_connection_entry_stays_small() {
        assert!(std::mem::size_of::<super::Entry>() <= 24);
    }
}
