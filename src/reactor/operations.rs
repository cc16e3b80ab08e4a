//! Admin commands that take time, carried out by the loop: PAUSE and RESUME, ATTACH NODE,
//! RECOVER NODE, PROMOTE NODE, SWITCHOVER, CHECK CONSISTENCY, and SHOW CLIENTS / SERVERS
//! (only the loop sees every session). The admin console that asked waits; the loop answers it when done.
//!
//! - PAUSE closes the gate (`context::Gate`): sessions starting a transaction wait; it is
//!   answered once no session is inside one.
//! - ATTACH NODE holds the gate, waits (up to `recovery_timeout`) until no session is
//!   inside a transaction, marks the node up, and opens the gate. Sessions bring the node
//!   in before their next transaction (`session::join`), so none runs without it.
//! - RECOVER NODE: status `recovering`; stage 1 (`recovery_1st_stage_command`) runs in a
//!   thread while clients write; then the gate is held and the loop waits for running
//!   transactions; stage 2 (`recovery_2nd_stage_command`, then waiting for the node to
//!   accept connections and comparing it with the lead) runs in a thread; then the node is
//!   attached as above. Any failure leaves it down, and the log and the console say why.
//!   In streaming mode stage 1 (a base backup of the primary, started as its standby) is
//!   all: the node is attached when it is done, and its health check finds it a standby.
//! - PROMOTE NODE (streaming, no primary up): the loop promotes the standby
//!   (`HealthCheck::promote`); answered once the node is the primary.
//! - SWITCHOVER (streaming): holds the gate, waits for running transactions, then a thread
//!   waits until the standby has replayed all the primary's WAL; the primary is detached
//!   (`Cluster::hand_over`), the standby promoted, the other standbys follow it
//!   (`follow_primary_command`), and the gate opens: no commit is lost.
//! - CHECK CONSISTENCY holds the gate until no transaction runs (at most
//!   `CHECK_QUIET_WAIT`), then runs `cluster::consistency` in a thread, which takes a
//!   snapshot on every node and calls back; the gate opens and the tables are read in those
//!   snapshots while clients go on.
//!
//! Threads report over a channel and wake the loop through `mio::Waker`; the loop never
//! waits for them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::{LongAsk, Shared};
use super::token::ConnKey;
use crate::cluster::consistency::{self, Login, Target};
use crate::cluster::direct::Direct;
use crate::cluster::health::parse_lsn;
use crate::cluster::NodeStatus;
use crate::protocol::backend;

/// What a thread reports.
pub enum Done {
    /// A recovery stage finished.
    Stage {
        node: u8,
        stage: u8,
        result: Result<(), String>,
    },
    /// CHECK CONSISTENCY's answer for `asker`.
    Check { asker: ConnKey, answer: Vec<u8> },
    /// A consistency check took its snapshots: its hold on the gate ends.
    Aligned,
    /// SWITCHOVER: the standby has replayed the primary's WAL (Ok: up to where).
    CaughtUp {
        node: u8,
        result: Result<String, String>,
    },
}

/// CHECK CONSISTENCY waiting until no transaction runs to take its snapshots.
struct PendingCheck {
    asker: ConnKey,
    database: Option<String>,
    deadline: Instant,
}

/// How long CHECK CONSISTENCY holds new transactions back waiting for running ones; after
/// that it reads without aligned snapshots (and says so) rather than stall clients longer.
const CHECK_QUIET_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Attach,
    Recover,
    Promote,
    Switchover,
}

impl Kind {
    fn command(self) -> &'static str {
        match self {
            Kind::Attach => "ATTACH NODE",
            Kind::Recover => "RECOVER NODE",
            Kind::Promote => "PROMOTE NODE",
            Kind::Switchover => "SWITCHOVER",
        }
    }
}

enum Step {
    FirstStage,
    /// The gate is held; waiting for running transactions (until the deadline).
    Quiescing {
        deadline: Instant,
    },
    SecondStage,
    /// SWITCHOVER: a thread waits until the standby has replayed the primary's WAL.
    CatchingUp,
    /// Waiting until the node answers as the primary.
    Promoting {
        deadline: Instant,
    },
}

/// The node being attached, recovered or promoted (one at a time).
struct Change {
    node: u8,
    kind: Kind,
    asker: ConnKey,
    /// The node recovery copies from, or the primary a switchover hands over from; it must
    /// still lead when stage 2 (or the hand-over) starts.
    lead: u8,
    step: Step,
    started: Instant,
    /// Whether this change holds the gate (to release when it ends).
    holds_gate: bool,
}

pub struct Operations {
    waker: Arc<mio::Waker>,
    tx: Sender<Done>,
    rx: Receiver<Done>,
    /// Consoles waiting for PAUSE to take effect.
    pausing: Vec<ConnKey>,
    change: Option<Change>,
    checks: Vec<PendingCheck>,
}

/// What the loop must do after `advance`: answer consoles, wake sessions at the gate.
#[derive(Default)]
pub struct Outcome {
    pub answers: Vec<(ConnKey, Vec<u8>)>,
    pub wake_gate: bool,
    /// Ask the loop to come back at this time (a deadline).
    pub recheck_at: Option<Instant>,
}

impl Operations {
    pub fn new(waker: mio::Waker) -> Operations {
        let (tx, rx) = channel();
        Operations {
            waker: Arc::new(waker),
            tx,
            rx,
            pausing: Vec::new(),
            change: None,
            checks: Vec::new(),
        }
    }

    /// The loop's waker, for other threads that report to the loop.
    pub fn waker(&self) -> Arc<mio::Waker> {
        Arc::clone(&self.waker)
    }

    /// Whether `advance` must run on every pass: it needs to know if any session is inside
    /// a transaction, or watches a promotion.
    pub fn waits_for_quiet(&self) -> bool {
        !self.pausing.is_empty()
            || !self.checks.is_empty()
            || matches!(
                self.change,
                Some(Change {
                    step: Step::Quiescing { .. } | Step::Promoting { .. },
                    ..
                })
            )
    }

    /// Start what a console asked for. SHOW CLIENTS / SERVERS are answered by the loop.
    pub fn start(
        &mut self,
        asker: ConnKey,
        ask: LongAsk,
        shared: &mut Shared,
        now: Instant,
        out: &mut Outcome,
    ) {
        let mut answer = Vec::new();
        match ask {
            LongAsk::Pause => {
                shared.gate.paused = true;
                log::info!("PAUSE: new transactions wait");
                self.pausing.push(asker);
                return;
            }
            LongAsk::Resume => {
                shared.gate.paused = false;
                log::info!("RESUME: transactions may start");
                for k in self.pausing.drain(..) {
                    let mut a = Vec::new();
                    error(&mut a, "57014", "PAUSE canceled by RESUME");
                    out.answers.push((k, a));
                }
                out.wake_gate = !shared.gate.closed();
                backend::command_complete(&mut answer, "RESUME");
            }
            LongAsk::Attach(_)
            | LongAsk::Recover(_)
            | LongAsk::Promote(_)
            | LongAsk::Switchover(_)
                if self.change.is_some() =>
            {
                let (busy, what) = self
                    .change
                    .as_ref()
                    .map_or((0, ""), |c| (c.node, c.kind.command()));
                error(
                    &mut answer,
                    "55006",
                    &format!("{what} {busy} is running; try again when it is done (SHOW NODES)"),
                );
            }
            LongAsk::Attach(node) | LongAsk::Switchover(node) => {
                let kind = match ask {
                    LongAsk::Attach(_) => Kind::Attach,
                    _ => Kind::Switchover,
                };
                shared.gate.holds += 1;
                log::info!(
                    "{} {node}: new transactions wait; waiting for running ones",
                    kind.command()
                );
                self.change = Some(Change {
                    node,
                    kind,
                    asker,
                    lead: shared.cluster.lead().unwrap_or(node),
                    step: Step::Quiescing {
                        deadline: now + shared.config.recovery_timeout,
                    },
                    started: now,
                    holds_gate: true,
                });
                out.recheck_at = Some(now + shared.config.recovery_timeout);
                return;
            }
            LongAsk::Promote(node) => {
                log::info!("PROMOTE NODE {node}: promoting it (no primary is up)");
                shared.cluster.promote_ask = Some(node);
                let deadline = now + PROMOTION_DEADLINE;
                self.change = Some(Change {
                    node,
                    kind: Kind::Promote,
                    asker,
                    lead: node,
                    step: Step::Promoting { deadline },
                    started: now,
                    holds_gate: false,
                });
                out.recheck_at = Some(deadline);
                return;
            }
            LongAsk::Recover(node) => match shared.cluster.lead() {
                None => error(&mut answer, "55000", "no node is up to recover from"),
                Some(lead) => {
                    shared.cluster.set_status(node, NodeStatus::Recovering);
                    shared.cluster.nodes[node as usize].note =
                        "recovery stage 1 running".to_string();
                    let cmd = shared.cluster.recovery_command(
                        &shared.config.recovery_1st_stage_command,
                        node,
                        lead,
                    );
                    log::info!("RECOVER NODE {node} from node {lead}: stage 1: {cmd}");
                    self.change = Some(Change {
                        node,
                        kind: Kind::Recover,
                        asker,
                        lead,
                        step: Step::FirstStage,
                        started: now,
                        holds_gate: false,
                    });
                    let report = self.reporter();
                    spawn(format!("recovery stage 1 node {node}"), move || {
                        let label = format!("recovery node {node} stage 1");
                        let result = run_command(&label, &cmd, None);
                        report(Done::Stage {
                            node,
                            stage: 1,
                            result,
                        });
                    });
                    return;
                }
            },
            LongAsk::CheckConsistency(database) => {
                shared.gate.holds += 1;
                let deadline = now + CHECK_QUIET_WAIT;
                self.checks.push(PendingCheck {
                    asker,
                    database,
                    deadline,
                });
                out.recheck_at = Some(deadline);
                return;
            }
            // The loop answers these itself (it sees the sessions); never sent here.
            LongAsk::ShowClients | LongAsk::ShowServers => error(
                &mut answer,
                "XX000",
                "internal error: listing sent to operations",
            ),
        }
        out.answers.push((asker, answer));
    }

    /// A closure threads call to report and wake the loop.
    fn reporter(&self) -> impl Fn(Done) + Send + 'static {
        let tx = self.tx.clone();
        let waker = Arc::clone(&self.waker);
        move |done| {
            let _ = tx.send(done);
            let _ = waker.wake();
        }
    }

    /// Take in what threads reported and move the running change on. `busy`: some session
    /// is inside a transaction (only asked when `waits_for_quiet`).
    pub fn advance(
        &mut self,
        shared: &mut Shared,
        now: Instant,
        busy: &mut dyn FnMut() -> bool,
        out: &mut Outcome,
    ) {
        while let Ok(done) = self.rx.try_recv() {
            match done {
                Done::Check { asker, answer } => out.answers.push((asker, answer)),
                Done::Aligned => {
                    shared.gate.holds = shared.gate.holds.saturating_sub(1);
                    out.wake_gate = !shared.gate.closed();
                }
                Done::Stage {
                    node,
                    stage,
                    result,
                } => self.stage_done(node, stage, result, shared, now, out),
                Done::CaughtUp { node, result } => self.caught_up(node, result, shared, now, out),
            }
        }
        if !self.waits_for_quiet() {
            return;
        }
        let quiet = !busy();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.checks)
            .into_iter()
            .partition(|c| quiet || now >= c.deadline);
        self.checks = waiting;
        for check in due {
            self.start_check(check, quiet, shared, out);
        }
        if quiet && !self.pausing.is_empty() {
            log::info!("PAUSE: no transaction is running");
            for k in self.pausing.drain(..) {
                let mut a = Vec::new();
                backend::command_complete(&mut a, "PAUSE");
                out.answers.push((k, a));
            }
        }
        let Some(c) = &mut self.change else { return };
        if let Step::Promoting { deadline } = c.step {
            let cluster = &shared.cluster;
            if cluster.lead() == Some(c.node) {
                self.finish(shared, now, out);
            } else if cluster.promote_ask.is_none() && cluster.promoting != Some(c.node) {
                self.fail("the promotion failed (the log says why)", shared, out);
            } else if now >= deadline {
                self.fail("the node did not become the primary in time", shared, out);
            }
            return;
        }
        let Step::Quiescing { deadline } = c.step else {
            return;
        };
        let node = c.node;
        if !quiet {
            if now >= deadline {
                let why = format!(
                    "transactions were still running after recovery_timeout ({:?})",
                    shared.config.recovery_timeout
                );
                self.fail(&why, shared, out);
            }
            return;
        }
        match c.kind {
            Kind::Attach => self.finish(shared, now, out),
            Kind::Promote => {}
            Kind::Switchover if shared.cluster.lead() != Some(c.lead) => {
                let why = format!("node {} stopped being the primary", c.lead);
                self.fail(&why, shared, out);
            }
            Kind::Switchover => {
                c.step = Step::CatchingUp;
                let pair = targets(shared, vec![c.lead, node]);
                let login = login(shared);
                let timeout = shared.config.recovery_timeout;
                log::info!("SWITCHOVER {node}: no transaction runs; waiting until node {node} has replayed all of node {}'s WAL", c.lead);
                let report = self.reporter();
                spawn(format!("switchover to node {node}"), move || {
                    let result = catch_up(&pair, &login, timeout);
                    report(Done::CaughtUp { node, result });
                });
            }
            Kind::Recover if shared.cluster.lead() != Some(c.lead) => {
                let why = format!("node {} stopped leading during the recovery", c.lead);
                self.fail(&why, shared, out);
            }
            Kind::Recover => {
                c.step = Step::SecondStage;
                let lead = c.lead;
                shared.cluster.nodes[node as usize].note = "recovery stage 2 running".into();
                let cmd = shared.cluster.recovery_command(
                    &shared.config.recovery_2nd_stage_command,
                    node,
                    lead,
                );
                log::info!("RECOVER NODE {node}: transactions paused; stage 2: {cmd}");
                let pair = targets(shared, vec![lead, node]);
                let login = login(shared);
                let timeout = shared.config.recovery_timeout;
                let report = self.reporter();
                spawn(format!("recovery stage 2 node {node}"), move || {
                    let label = format!("recovery node {node} stage 2");
                    let result = run_command(&label, &cmd, Some(timeout))
                        .and_then(|()| verify(&pair, &login, timeout));
                    report(Done::Stage {
                        node,
                        stage: 2,
                        result,
                    });
                });
            }
        }
    }

    /// Run a consistency check in a thread. `quiet`: no transaction runs, so the snapshots
    /// it takes before it calls back are aligned; else the hold ends now and the verdict
    /// says the check read while transactions ran.
    fn start_check(
        &mut self,
        c: PendingCheck,
        quiet: bool,
        shared: &mut Shared,
        out: &mut Outcome,
    ) {
        let targets = targets(shared, shared.cluster.live().collect());
        let login = login(shared);
        log::info!(
            "CHECK CONSISTENCY {} on nodes {:?}{}",
            c.database.as_deref().unwrap_or("(every database)"),
            targets.iter().map(|t| t.id).collect::<Vec<_>>(),
            if quiet { "" } else { " while transactions run" }
        );
        let mut aligned = AlignedOnce(None);
        if quiet {
            aligned.0 = Some(Box::new(self.reporter()));
        } else {
            shared.gate.holds = shared.gate.holds.saturating_sub(1);
            out.wake_gate = !shared.gate.closed();
        }
        let report = self.reporter();
        let (asker, database) = (c.asker, c.database);
        spawn("consistency check".into(), move || {
            let mut r = consistency::check(&targets, &login, database.as_deref(), &mut || {
                aligned.fire()
            });
            drop(aligned);
            if !quiet {
                r.verdict.push_str(
                    " (read while transactions ran: a difference may be a write in flight)",
                );
            }
            log::info!("CHECK CONSISTENCY: {}", r.verdict);
            report(Done::Check {
                asker,
                answer: report_table(&r),
            });
        });
    }

    fn stage_done(
        &mut self,
        node: u8,
        stage: u8,
        result: Result<(), String>,
        shared: &mut Shared,
        now: Instant,
        out: &mut Outcome,
    ) {
        let Some(c) = self.change.as_mut().filter(|c| c.node == node) else {
            return;
        };
        if let Err(e) = result {
            self.fail(&format!("stage {stage}: {e}"), shared, out);
            return;
        }
        if stage == 1 && shared.config.mode == crate::config::Mode::Streaming {
            log::info!(
                "RECOVER NODE {node}: stage 1 done after {:.1} s; the node is a standby",
                now.saturating_duration_since(c.started).as_secs_f64()
            );
            self.finish(shared, now, out);
        } else if stage == 1 {
            log::info!(
                "RECOVER NODE {node}: stage 1 done after {:.1} s; pausing new transactions",
                now.saturating_duration_since(c.started).as_secs_f64()
            );
            shared.gate.holds += 1;
            c.holds_gate = true;
            shared.cluster.nodes[node as usize].note = "waiting for running transactions".into();
            let deadline = now + shared.config.recovery_timeout;
            c.step = Step::Quiescing { deadline };
            out.recheck_at = Some(deadline);
        } else {
            self.finish(shared, now, out);
        }
    }

    /// SWITCHOVER: the standby has all of the primary's WAL (or not, in time). The primary
    /// is detached and the standby promoted while the gate still holds new transactions.
    fn caught_up(
        &mut self,
        node: u8,
        result: Result<String, String>,
        shared: &mut Shared,
        now: Instant,
        out: &mut Outcome,
    ) {
        let Some(c) = self.change.as_mut().filter(|c| c.node == node) else {
            return;
        };
        let cluster = &mut shared.cluster;
        let standby = cluster.is_up(node) && cluster.nodes[node as usize].standby == Some(true);
        match result {
            Err(e) => self.fail(&e, shared, out),
            Ok(_) if cluster.lead() != Some(c.lead) => {
                let why = format!("node {} stopped being the primary", c.lead);
                self.fail(&why, shared, out);
            }
            Ok(_) if !standby => {
                self.fail("the node is no longer a standby that is up", shared, out)
            }
            Ok(at) => {
                log::info!("SWITCHOVER {node}: node {node} has replayed up to {at}");
                cluster.hand_over(c.lead, node);
                let deadline = now + PROMOTION_DEADLINE;
                c.step = Step::Promoting { deadline };
                out.recheck_at = Some(deadline);
            }
        }
    }

    /// The change succeeded. An attached or recovered node is up (sessions bring it in
    /// before their next transaction); a promoted one is the primary.
    fn finish(&mut self, shared: &mut Shared, now: Instant, out: &mut Outcome) {
        let Some(c) = self.change.take() else { return };
        let took = now.saturating_duration_since(c.started).as_secs_f64();
        let note = match c.kind {
            Kind::Attach => "attached from the admin console".to_string(),
            Kind::Recover => format!("recovered from node {} in {took:.1} s", c.lead),
            Kind::Promote => format!("promoted by PROMOTE NODE in {took:.1} s"),
            Kind::Switchover => format!("took over from node {} in {took:.1} s", c.lead),
        };
        if matches!(c.kind, Kind::Attach | Kind::Recover) {
            shared.cluster.set_status(c.node, NodeStatus::Up);
            // Its role (streaming) and latency from a check now, not a period later.
            shared.health_now.push(c.node);
        }
        let tag = c.kind.command();
        let outcome = match c.kind {
            Kind::Attach | Kind::Recover => "node is up",
            Kind::Promote | Kind::Switchover => "node is the primary",
        };
        log::info!("{tag} {}: {outcome} ({note})", c.node);
        shared.cluster.nodes[c.node as usize].note = note;
        let mut a = Vec::new();
        backend::command_complete(&mut a, tag);
        out.answers.push((c.asker, a));
        self.release(&c, shared, out);
    }

    fn fail(&mut self, why: &str, shared: &mut Shared, out: &mut Outcome) {
        let Some(c) = self.change.take() else { return };
        let what = c.kind.command();
        let outcome = match c.kind {
            Kind::Attach | Kind::Recover => ", the node stays detached".to_string(),
            Kind::Promote => String::new(),
            // Failed after the hand-over: no primary is up (the old one is detached).
            Kind::Switchover if !shared.cluster.is_up(c.lead) => format!(
                "; no node is the primary now: PROMOTE NODE a standby, or ATTACH NODE {} (the old primary)",
                c.lead
            ),
            Kind::Switchover => format!(", node {} stays the primary", c.lead),
        };
        log::error!("{what} {} failed{outcome}: {why}", c.node);
        if shared.cluster.nodes[c.node as usize].status == NodeStatus::Recovering {
            shared.cluster.set_status(c.node, NodeStatus::Down);
        }
        shared.cluster.nodes[c.node as usize].note = format!("{what} failed: {why}");
        let mut a = Vec::new();
        error(
            &mut a,
            "58000",
            &format!("{what} {} failed{outcome}: {why}", c.node),
        );
        out.answers.push((c.asker, a));
        self.release(&c, shared, out);
    }

    /// A change that held the gate opens it (unless something else still holds it).
    fn release(&self, c: &Change, shared: &mut Shared, out: &mut Outcome) {
        if c.holds_gate {
            shared.gate.holds = shared.gate.holds.saturating_sub(1);
            out.wake_gate = !shared.gate.closed();
        }
    }
}

/// How long PROMOTE NODE and SWITCHOVER wait for the node to answer as the primary.
const PROMOTION_DEADLINE: Duration = Duration::from_secs(70);

/// Reports `Done::Aligned` once: when the check calls back, or when it ends without doing so
/// (a panic), so the gate never stays held.
struct AlignedOnce(Option<Box<dyn Fn(Done) + Send>>);

impl AlignedOnce {
    fn fire(&mut self) {
        if let Some(report) = self.0.take() {
            report(Done::Aligned);
        }
    }
}

impl Drop for AlignedOnce {
    fn drop(&mut self) {
        self.fire();
    }
}

fn error(out: &mut Vec<u8>, code: &str, message: &str) {
    backend::error_response(out, "ERROR", code, message, None, None);
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.clone()).spawn(f) {
        log::error!("{name}: cannot start a thread: {e}");
    }
}

fn targets(shared: &Shared, ids: Vec<u8>) -> Vec<Target> {
    ids.into_iter()
        .filter_map(|id| shared.cluster.nodes.get(id as usize))
        .map(|n| Target {
            id: n.id,
            host: n.host.clone(),
            addr: n.addr,
        })
        .collect()
}

/// How pgmulti logs in on its own: `health_check_user` with `health_check_password`, or
/// the auth_file entry.
fn login(shared: &Shared) -> Login {
    Login {
        user: shared.config.health_check_user.clone(),
        password: crate::cluster::direct::own_password(&shared.config, &shared.users),
        tls: shared.node_tls.clone(),
    }
}

/// Run `sh -c cmd` in a process group of its own, logging its output line by line. With a
/// time limit, the whole group is terminated when it passes (stage 2 holds every new
/// transaction back, so it must end). Err says why it failed.
fn run_command(label: &str, cmd: &str, limit: Option<Duration>) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run the command: {e}"))?;
    let log_lines = |pipe: Option<Box<dyn std::io::Read + Send>>, label: String, warn: bool| {
        std::thread::spawn(move || {
            let mut last = String::new();
            if let Some(p) = pipe {
                for line in BufReader::new(p).lines().map_while(Result::ok) {
                    if warn {
                        log::warn!("{label}: {line}");
                    } else {
                        log::info!("{label}: {line}");
                    }
                    last = line;
                }
            }
            last
        })
    };
    let out = log_lines(
        child.stdout.take().map(|p| Box::new(p) as _),
        label.into(),
        false,
    );
    let err = log_lines(
        child.stderr.take().map(|p| Box::new(p) as _),
        label.into(),
        true,
    );
    let deadline = limit.map(|l| Instant::now() + l);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                let group = -(child.id() as i32);
                // SAFETY: kill(2) on the process group this function created.
                unsafe { libc::kill(group, libc::SIGTERM) };
                std::thread::sleep(Duration::from_secs(5));
                unsafe { libc::kill(group, libc::SIGKILL) };
                let _ = child.wait();
                break Err(format!(
                    "the command did not finish within {:?}",
                    limit.unwrap_or_default()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(e.to_string()),
        }
    };
    let _ = out.join();
    let last = err.join().unwrap_or_default();
    match status? {
        s if s.success() => Ok(()),
        s if last.is_empty() => Err(format!("the command failed ({s})")),
        s => Err(format!("the command failed ({s}): {last}")),
    }
}

/// SWITCHOVER, while no transaction runs (`pair` = [primary, standby]): wait (up to
/// `timeout`) until the standby has replayed everything the primary has inserted into its
/// WAL. Ok: the position reached.
fn catch_up(pair: &[Target], login: &Login, timeout: Duration) -> Result<String, String> {
    let [primary, standby] = pair else {
        return Err("no primary and standby to compare".into());
    };
    let connect = |t: &Target| {
        Direct::connect(
            t.addr,
            &t.host,
            &login.user,
            login.password.as_deref(),
            "postgres",
            &login.tls,
        )
        .map_err(|e| format!("cannot connect to node {}: {e}", t.id))
    };
    let first = |rows: crate::cluster::direct::Rows| {
        rows.into_iter()
            .next()
            .unwrap_or_default()
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect::<Vec<String>>()
    };
    let target = first(connect(primary)?.query("SELECT pg_current_wal_insert_lsn()")?);
    let target_text = target.first().cloned().unwrap_or_default();
    let target = parse_lsn(&target_text)
        .ok_or_else(|| format!("node {}: bad WAL position {target_text:?}", primary.id))?;
    let mut conn = connect(standby)?;
    let deadline = Instant::now() + timeout;
    loop {
        let row = first(
            conn.query("SELECT pg_last_wal_replay_lsn(), current_setting('wal_block_size')")?,
        );
        let replayed = row.first().and_then(|t| parse_lsn(t)).unwrap_or(0);
        let block = row
            .get(1)
            .and_then(|b| b.parse::<u64>().ok())
            .unwrap_or(8192);
        if replayed_up_to(replayed, target, block) {
            return Ok(row[0].clone());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {} replayed only up to {} of the primary's {target_text} within {timeout:?}",
                standby.id,
                row.first().map_or("-", |s| s.as_str())
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a standby that replayed up to `replayed` has everything the primary inserted up
/// to `inserted`. When the last record ends exactly on a WAL page boundary the insert
/// position is reported after the next page's header (24 bytes, 40 at a segment's start),
/// where no record will end: that counts too.
fn replayed_up_to(replayed: u64, inserted: u64, block: u64) -> bool {
    let header = |lsn: u64| matches!(lsn % block.max(1), 24 | 40);
    replayed >= inserted
        || (replayed.is_multiple_of(block.max(1))
            && matches!(inserted - replayed, 24 | 40)
            && header(inserted))
}

/// After stage 2: the node accepts connections (within `timeout`), is not a standby, and
/// holds exactly the lead's data (`pair` = [lead, node]).
fn verify(pair: &[Target], login: &Login, timeout: Duration) -> Result<(), String> {
    let node = pair.get(1).ok_or("no node to verify")?;
    let deadline = Instant::now() + timeout;
    let mut conn = loop {
        match Direct::connect(
            node.addr,
            &node.host,
            &login.user,
            login.password.as_deref(),
            "postgres",
            &login.tls,
        ) {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("node {} does not accept connections: {e}", node.id))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let rows = conn.query("SELECT pg_is_in_recovery()")?;
    if rows
        .first()
        .and_then(|r| r.first())
        .cloned()
        .flatten()
        .as_deref()
        != Some("f")
    {
        return Err(format!("node {} is still a standby (in recovery)", node.id));
    }
    // Transactions are held back during stage 2: the snapshots are aligned anyway.
    let report = consistency::check(pair, login, None, &mut || {});
    if !report.consistent {
        return Err(format!(
            "the node differs from the lead: {}",
            report.verdict
        ));
    }
    log::info!(
        "recovered node {} verified against the lead: {}",
        node.id,
        report.verdict
    );
    Ok(())
}

/// CHECK CONSISTENCY's result set: one row per object and node, then the verdict as a
/// NOTICE-free last row.
fn report_table(r: &consistency::Report) -> Vec<u8> {
    let mut rows: Vec<Vec<String>> = r
        .lines
        .iter()
        .map(|l| {
            vec![
                l.database.clone(),
                l.object.clone(),
                l.kind.to_string(),
                l.node.to_string(),
                l.rows.map_or(String::new(), |n| n.to_string()),
                l.checksum.clone().unwrap_or_default(),
                l.status.clone(),
            ]
        })
        .collect();
    rows.push(vec![
        String::new(),
        "(verdict)".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        r.verdict.clone(),
    ]);
    let mut out = Vec::new();
    crate::admin::table(
        &mut out,
        &[
            "database", "object", "kind", "node_id", "rows", "checksum", "status",
        ],
        &rows,
        "CHECK CONSISTENCY",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::replayed_up_to;

    #[test]
    fn a_standby_has_caught_up_at_the_insert_position_or_just_before_a_page_header() {
        let block = 8192;
        assert!(replayed_up_to(0x5000_0100, 0x5000_0100, block));
        assert!(replayed_up_to(0x5000_0200, 0x5000_0100, block));
        assert!(!replayed_up_to(0x5000_00f0, 0x5000_0100, block));
        // The last record ended on the page boundary; the insert position is past the next
        // page's header (24 bytes; 40 at a segment's first page).
        assert!(replayed_up_to(0x5000_2000, 0x5000_2018, block));
        assert!(replayed_up_to(0x5100_0000, 0x5100_0028, block));
        // Not on a boundary, or more than a header behind: not caught up.
        assert!(!replayed_up_to(0x5000_2008, 0x5000_2020, block));
        assert!(!replayed_up_to(0x5000_2000, 0x5000_2030, block));
    }
}
