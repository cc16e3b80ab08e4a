//! The phase runner: once every node has answered a phase, the next one starts (wrappers,
//! the statement, the replicas' apply, PREPARE / COMMIT PREPARED); after the last, the vote
//! (`replication::compare`), the detach of who differs, and the answer to the client.

use super::*;

impl Request {
    /// The next phase to run, made of what the nodes answered so far (skipped when the
    /// lead failed, failing alike, ParsesOnly, pgmulti's COMMIT become ROLLBACK after a
    /// vote); None when every phase has run. Pure: it reads and changes the request only,
    /// so the unit tests below drive it with injected node answers. `tx_open`: the client's
    /// transaction was open before this request.
    pub(super) fn take_phase(&mut self, tx_open: bool, prefix: &str) -> Option<plan::Phase> {
        while self.next_phase < self.plan.phases.len() {
            let mut phase = self.plan.phases[self.next_phase].clone();
            self.next_phase += 1;
            if phase.skip_if_lead_failed && self.lead_failed {
                let replicas_main =
                    phase.targets == Targets::Replicas && phase.segments.contains(&Segment::Main);
                // A failure that still drew from a sequence (the ordering lock says it
                // draws) or left an invalid index behind must happen on the replicas too.
                let fails_alike = replicas_main
                    && (self.ordering_lock.is_some()
                        || self.class == plan::Class::NoTransactionBlock);
                // The replicas must still learn the statements a failed batch prepared.
                let keeps_parses = replicas_main && self.parses_only.is_some();
                // A Query whose COMMIT the lead ran before the failing statement: what
                // came before is committed there, so the replicas run it too, and fail at
                // the same statement (`insert …; commit; insert …; select 1/0`).
                if replicas_main && self.lead_committed_part() {
                    return Some(phase);
                }
                if fails_alike {
                    plan::fail_alike(&mut phase.segments);
                    self.rolled_back |= !tx_open;
                } else if keeps_parses {
                    phase.segments = vec![Segment::ParsesOnly];
                } else {
                    continue;
                }
            }
            if phase.only_if_lead_failed && !self.lead_failed {
                continue;
            }
            if let Some(why) = self.effects.as_ref().and_then(|fx| fx.unreadable.as_ref()) {
                if phase.targets == Targets::Replicas && phase.segments.contains(&Segment::Main) {
                    // The replicas cannot be told what the lead did: the write fails.
                    log::warn!(
                        "{} the lead's answer to \"{}\" could not be read: {why}",
                        prefix,
                        self.text
                    );
                    self.rolled_back = true;
                    self.error.get_or_insert((
                        "40001",
                        format!("the write could not be replicated: the lead's answer could not be read ({why}); it was rolled back"),
                    ));
                    continue;
                }
            }
            if phase.after_vote {
                self.vote_before_commit(&mut phase, prefix);
            }
            return Some(phase);
        }
        None
    }

    /// A multi-statement Query (`Class::Mixed`) the lead failed after a COMMIT among the
    /// statements it completed.
    fn lead_committed_part(&self) -> bool {
        if self.class != plan::Class::Mixed || self.main.first() != Some(&b'Q') {
            return false;
        }
        let Some((_, lead)) = self.answers.iter().find(|(n, _)| *n == self.lead) else {
            return false;
        };
        let done = lead
            .iter()
            .take_while(|o| matches!(o, Outcome::Complete(_)))
            .count();
        let Some(sql) = frontend::parse_query(&self.main[5..]).ok() else {
            return false;
        };
        split_statements(sql).take(done).any(|st| {
            matches!(
                crate::replication::classify::classify(st).kind,
                crate::replication::classify::Kind::Transaction(
                    crate::replication::classify::Tx::Commit
                )
            )
        })
    }

    /// A node's answer to a statement, for the vote; `main`: to the client's statements
    /// (an error of the lead there fails the request's later phases).
    pub(super) fn record_answer(&mut self, node: u8, outcome: Outcome, main: bool) {
        if main && node == self.lead && !matches!(outcome, Outcome::Complete(_)) {
            self.lead_failed = true;
        }
        record(&mut self.answers, node, outcome);
    }

    /// The vote once every phase ran. Nothing of the write is committed anywhere when
    /// pgmulti rolled its own transaction back or the client's is still open (it fails
    /// now): a race between clients looks like this, so the nodes are not at fault yet.
    pub(super) fn settle(&self, tx_open: bool) -> compare::Settlement {
        let contained = self.rolled_back || (tx_open && self.class == plan::Class::Write);
        compare::settle(&self.answers, self.lead, self.voice, contained)
    }

    /// pgmulti's own COMMIT of an autocommit write (`Phase::after_vote`): it becomes
    /// ROLLBACK when the nodes' answers so far disagree and nothing is committed yet.
    fn vote_before_commit(&mut self, phase: &mut plan::Phase, prefix: &str) {
        let replicas_commit_later = self
            .plan
            .phases
            .iter()
            .any(|p| p.after_vote && p.targets == Targets::Replicas);
        let roll_back = self.rolled_back
            || (compare::before_commit(&self.answers, self.lead, !replicas_commit_later)
                == compare::BeforeCommit::RollBack
                && !compare::replicas_failed_commit(&self.answers, self.lead));
        if !roll_back {
            return;
        }
        if !self.rolled_back {
            self.rolled_back = true;
            log::info!(
                "{prefix} nodes disagree on \"{}\": {}; rolled back on every node",
                self.text,
                compare::describe(&self.answers)
            );
            self.error.get_or_insert(("40001", self.race_message()));
        }
        for seg in &mut phase.segments {
            if *seg == Segment::Wrapper("COMMIT") {
                *seg = Segment::Wrapper("ROLLBACK");
            }
        }
    }
}

impl Session {
    /// Start the next phase when the running one is done; finish the request at the end.
    pub(super) fn advance(&mut self, cx: &mut Context) -> Result<(), Transition> {
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
            let Some(phase) = r.take_phase(repl.tx.view.open, &self.prefix) else {
                return self.finish_request(cx);
            };
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

    /// Before COMMIT PREPARED: if every node prepared, write the decision down and, once it
    /// is on disk (group commit: `two_phase::DecisionLog::flush`), commit everywhere;
    /// otherwise roll back what was prepared and fail the request. Returns the nodes the
    /// last phase goes to, or None while the decision is on its way to the disk (the
    /// session is woken when it is there).
    pub(super) fn decide_two_phase(r: &mut Request, cx: &mut Context) -> Option<Vec<u8>> {
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

    pub(super) fn roll_back_prepared(r: &mut Request, why: &str) {
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
    pub(super) fn finish_request(&mut self, cx: &mut Context) -> Result<(), Transition> {
        let Some(mut r) = self.repl.request.take() else {
            return Ok(());
        };
        if r.internal {
            return Ok(());
        }
        if let Some(msg) = r.retry.take().filter(|_| r.retry_now) {
            // The procedure commits inside: nothing of it stayed (pgmulti's transaction
            // was rolled back); run it again unwrapped, lead then replicas, failing alike.
            log::info!(
                "{} \"{}\" ends transactions itself: run again outside pgmulti's transaction",
                self.prefix,
                r.text
            );
            self.repl.unwrapped_retry = true;
            return self.start_request(msg, cx);
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
            match r.settle(self.repl.tx.view.open) {
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
                    let differ: &[u8] = if compare::lost_a_race(&r.answers) {
                        &[]
                    } else {
                        &verdict.differ
                    };
                    let faulty = cx.shared.cluster.disagreed(differ, &verdict.agree);
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
        // LISTEN and UNLISTEN take effect when their transaction commits, as in PostgreSQL:
        // until then they wait with it, and a rollback drops them.
        let tx = &mut self.repl.tx;
        let mut listens = Vec::new();
        if r.error.is_none() && !r.lead_failed {
            for l in std::mem::take(&mut r.listens) {
                match l {
                    request::Listen::Commit => listens.append(&mut tx.listens),
                    request::Listen::Rollback => tx.listens.clear(),
                    l => tx.listens.push(l),
                }
            }
        }
        let ended = status == b'I'
            || (status == b'T' && matches!(r.class, plan::Class::Commit | plan::Class::Rollback));
        let committed = ended
            && r.class != plan::Class::Rollback
            && !tx.view.failed
            && r.error.is_none()
            && !r.lead_failed;
        if committed {
            listens.append(&mut tx.listens);
        }
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
                            except: Some(r.lead),
                        });
                }
            }
        }
        // Once a session is known to hold such objects, its requests are not scanned again.
        if !self.repl.session_objects
            && r.error.is_none()
            && !r.lead_failed
            && request::keeps_session_objects(&r.text)
        {
            self.repl.session_objects = true;
        }
        if !listens.is_empty() {
            let listening = &mut self.repl.listening;
            for l in listens {
                match l {
                    request::Listen::Add(c) if !listening.contains(&c) => listening.push(c),
                    request::Listen::Remove(c) => listening.retain(|x| *x != c),
                    request::Listen::RemoveAll => listening.clear(),
                    _ => {}
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
}

/// The runner driven by injected node answers: node 0 is the lead, 1 and 2 the replicas.
/// Each test chooses what every node answers to the client's statement in each phase —
/// the outcomes the races of docs/replication.md produce — and checks the phases that
/// follow and the vote at the end.
#[cfg(test)]
mod tests {
    use super::*;
    use compare::Settlement;
    use plan::Class;
    use Segment::{Main, Wrapper};

    const LEAD: u8 = 0;
    const NODES: [u8; 3] = [0, 1, 2];

    fn request(class: Class, tx: TxView) -> Request {
        let Planned::Run(plan) = plan::plan(class, tx, false) else {
            panic!("no plan");
        };
        let mut r = Request::new(
            Vec::new(),
            "UPDATE jobs …".into(),
            plan,
            LEAD,
            LEAD,
            Instant::now(),
        );
        r.class = class;
        r
    }

    /// Runs every phase; in each, a node that runs the client's statement answers
    /// `answer(node)`. Returns the phases as they went out: (nodes, segments).
    fn run(
        r: &mut Request,
        tx_open: bool,
        answer: impl Fn(u8) -> Outcome,
    ) -> Vec<(Vec<u8>, Vec<Segment>)> {
        let mut sent = Vec::new();
        while let Some(phase) = r.take_phase(tx_open, "test") {
            let nodes: Vec<u8> = match phase.targets {
                Targets::Lead | Targets::ReadNode => vec![LEAD],
                Targets::All => NODES.to_vec(),
                Targets::Replicas => NODES[1..].to_vec(),
            };
            for &n in &nodes {
                if phase.segments.contains(&Main) {
                    r.record_answer(n, answer(n), true);
                }
            }
            sent.push((nodes, phase.segments));
        }
        sent
    }

    fn ok(n: u64) -> Outcome {
        Outcome::Complete(Some(n))
    }

    #[test]
    fn an_autocommit_write_all_agree_on_commits_on_the_lead_last() {
        let mut r = request(Class::Write, TxView::default());
        let sent = run(&mut r, false, |_| ok(1));
        assert_eq!(
            sent,
            vec![
                (vec![0], vec![Wrapper("BEGIN"), Main]),
                (vec![1, 2], vec![Wrapper("BEGIN"), Main, Wrapper("COMMIT")]),
                (vec![0], vec![Wrapper("COMMIT")]),
            ]
        );
        assert!(matches!(r.settle(false), Settlement::Agreed(_)));
        assert_eq!(r.error, None);
    }

    /// A re-run statement (INSERT … SELECT, a table with triggers) whose replica saw a row
    /// the lead did not: nobody has committed, so it is a race, rolled back everywhere,
    /// and the client gets 40001; no node is at fault.
    #[test]
    fn a_rerun_write_a_replica_does_differently_is_rolled_back_everywhere_as_a_race() {
        let mut r = request(Class::Write, TxView::default());
        plan::replicas_commit_after_vote(&mut r.plan);
        let sent = run(&mut r, false, |n| if n == 2 { ok(2) } else { ok(1) });
        assert_eq!(
            sent,
            vec![
                (vec![0], vec![Wrapper("BEGIN"), Main]),
                (vec![1, 2], vec![Wrapper("BEGIN"), Main]),
                (vec![1, 2], vec![Wrapper("ROLLBACK")]),
                (vec![0], vec![Wrapper("ROLLBACK")]),
            ]
        );
        assert_eq!(r.error.as_ref().map(|e| e.0), Some("40001"));
        match r.settle(false) {
            Settlement::Race(v) => assert_eq!(v.differ, vec![2]),
            other => panic!("{other:?}"),
        }
    }

    /// A write the lead decided (applied by key, checked by the replica) that one replica
    /// still does differently: the other replica has committed it, so the lead commits
    /// too and the replica that differs lacks it — a fault, detached.
    #[test]
    fn a_decided_write_a_replica_applies_differently_is_a_fault_of_that_replica() {
        let mut r = request(Class::Write, TxView::default());
        let sent = run(&mut r, false, |n| {
            if n == 2 {
                Outcome::Differs(0)
            } else {
                ok(1)
            }
        });
        assert_eq!(sent.last(), Some(&(vec![0], vec![Wrapper("COMMIT")])));
        assert_eq!(r.error, None);
        match r.settle(false) {
            Settlement::Diverged {
                verdict,
                voice_differs,
            } => {
                assert_eq!(verdict.differ, vec![2]);
                assert!(!voice_differs);
            }
            other => panic!("{other:?}"),
        }
    }

    /// The lead fails the statement (a deadlock, a unique violation against a concurrent
    /// insert): the replicas never run it, and pgmulti's transaction ends on the lead.
    #[test]
    fn a_write_the_lead_fails_never_reaches_the_replicas() {
        let mut r = request(Class::Write, TxView::default());
        let sent = run(&mut r, false, |_| Outcome::Error("40P01".into()));
        assert_eq!(
            sent,
            vec![
                (vec![0], vec![Wrapper("BEGIN"), Main]),
                (vec![0], vec![Wrapper("COMMIT")]),
            ]
        );
        assert!(r.lead_failed);
        assert!(matches!(r.settle(false), Settlement::Agreed(_)));
    }

    /// …unless the failure still drew from a sequence (the ordering lock is taken for such
    /// statements): the replicas run it too, to fail alike, and roll their part back.
    #[test]
    fn a_failed_write_that_drew_from_a_sequence_fails_alike_on_the_replicas() {
        let mut r = request(Class::Write, TxView::default());
        r.ordering_lock = Some("SELECT pg_advisory_xact_lock(1)".into());
        let sent = run(&mut r, false, |_| Outcome::Error("23505".into()));
        assert_eq!(
            sent[1],
            (
                vec![1, 2],
                vec![Wrapper("BEGIN"), Main, Wrapper("ROLLBACK")]
            )
        );
        assert!(r.rolled_back);
        assert!(matches!(r.settle(false), Settlement::Agreed(_)));
    }

    /// Inside the client's transaction (SKIP LOCKED claiming another row on a replica):
    /// nothing is committed, the transaction fails with 40001, nobody is detached.
    #[test]
    fn a_write_in_a_transaction_that_differs_is_a_race_the_client_retries() {
        let open = TxView {
            open: true,
            ..TxView::default()
        };
        let mut r = request(Class::Write, open);
        let sent = run(&mut r, true, |n| {
            if n == 1 {
                Outcome::Differs(1)
            } else {
                ok(1)
            }
        });
        assert_eq!(sent, vec![(vec![0], vec![Main]), (vec![1, 2], vec![Main])]);
        match r.settle(true) {
            Settlement::Race(v) => assert_eq!(v.differ, vec![1]),
            other => panic!("{other:?}"),
        }
    }

    /// A deferred constraint (a DEFERRABLE foreign key) fails at COMMIT: on the replicas
    /// first. The lead then commits too, and fails the same way; the client gets the
    /// constraint's error, as directly, not a 40001 to retry forever.
    #[test]
    fn a_deferred_constraint_failing_every_replicas_commit_fails_the_leads_too() {
        let mut r = request(Class::Write, TxView::default());
        let mut sent = Vec::new();
        while let Some(phase) = r.take_phase(false, "test") {
            let nodes: Vec<u8> = match phase.targets {
                Targets::Lead => vec![LEAD],
                _ => NODES[1..].to_vec(),
            };
            for &n in &nodes {
                if phase.segments.contains(&Main) {
                    r.record_answer(n, ok(1), true);
                }
                if phase.segments.contains(&Wrapper("COMMIT")) {
                    r.record_answer(n, Outcome::Error("23503".into()), false);
                }
            }
            sent.push((nodes, phase.segments));
        }
        assert_eq!(sent.last(), Some(&(vec![0], vec![Wrapper("COMMIT")])));
        assert_eq!(r.error, None);
        assert!(matches!(r.settle(false), Settlement::Agreed(_)));
    }

    /// `insert …; commit; insert …; select 1/0` as one Query: the lead committed the first
    /// insert before it failed. The replicas must run it too (and fail alike), or they
    /// lack what the lead committed. Failing before any COMMIT, nothing is left anywhere
    /// and the replicas need not run it.
    #[test]
    fn a_query_the_lead_failed_after_its_commit_still_runs_on_the_replicas() {
        for (sql, replicas_run) in [
            (
                "insert into t values (7); commit; insert into t values (8); select 1/0",
                true,
            ),
            ("begin; insert into t values (7); select 1/0; commit", false),
        ] {
            let mut r = request(Class::Mixed, TxView::default());
            frontend::query(&mut r.main, sql);
            let first = r.take_phase(false, "test").unwrap();
            assert_eq!((first.targets, first.segments), (Targets::Lead, vec![Main]));
            let lead = if replicas_run {
                vec![ok(1), Outcome::Complete(None), ok(1)]
            } else {
                vec![Outcome::Complete(None), ok(1)]
            };
            for o in lead {
                r.record_answer(LEAD, o, true);
            }
            r.record_answer(LEAD, Outcome::Error("22012".into()), true);
            let second = r.take_phase(false, "test");
            assert_eq!(
                second.map(|p| (p.targets, p.segments)),
                replicas_run.then_some((Targets::Replicas, vec![Main])),
                "{sql}"
            );
        }
    }

    /// REPEATABLE READ: one replica fails the statement with a serialization error the
    /// others did not raise (their transactions met in another order there). A race: the
    /// client retries, and it does not count towards detaching that replica.
    #[test]
    fn a_serialization_failure_on_one_node_is_a_race_that_counts_against_nobody() {
        let open = TxView {
            open: true,
            ..TxView::default()
        };
        let mut r = request(Class::Write, open);
        run(&mut r, true, |n| {
            if n == 2 {
                Outcome::Error("40001".into())
            } else {
                ok(1)
            }
        });
        assert!(matches!(r.settle(true), Settlement::Race(_)));
        assert!(compare::lost_a_race(&r.answers));
    }

    /// Every node failed, each its own way (a lock timeout here, a deadlock there): none
    /// committed anything, nobody is at fault.
    #[test]
    fn every_node_failing_differently_is_nobodys_fault() {
        let open = TxView {
            open: true,
            ..TxView::default()
        };
        let mut r = request(Class::Write, open);
        r.plan.phases[1].skip_if_lead_failed = false;
        run(&mut r, true, |n| {
            Outcome::Error(if n == 0 { "55P03" } else { "40P01" }.into())
        });
        assert!(matches!(r.settle(true), Settlement::AllFailed));
    }

    /// The client's COMMIT: the replicas commit first, then the lead. A replica whose
    /// COMMIT failed lacks a transaction the others committed: detached.
    #[test]
    fn a_replica_that_fails_the_clients_commit_is_a_fault() {
        let open = TxView {
            open: true,
            wrote: true,
            ..TxView::default()
        };
        let mut r = request(Class::Commit, open);
        let sent = run(&mut r, true, |n| {
            if n == 1 {
                Outcome::Error("40001".into())
            } else {
                Outcome::Complete(None)
            }
        });
        assert_eq!(sent, vec![(vec![1, 2], vec![Main]), (vec![0], vec![Main])]);
        match r.settle(true) {
            Settlement::Diverged { verdict, .. } => assert_eq!(verdict.differ, vec![1]),
            other => panic!("{other:?}"),
        }
    }

    /// The same number of rows but other ones (the queue claim taking another job on a
    /// replica): the replica's own check reports it, and the vote sees it.
    #[test]
    fn other_rows_with_the_same_count_are_a_difference() {
        let mut r = request(Class::Write, TxView::default());
        plan::replicas_commit_after_vote(&mut r.plan);
        run(&mut r, false, |n| {
            if n == 1 {
                Outcome::Differs(1)
            } else {
                ok(1)
            }
        });
        assert_eq!(r.error.as_ref().map(|e| e.0), Some("40001"));
        assert!(r.rolled_back);
    }
}
