//! The phase runner: once every node has answered a phase, the next one starts (wrappers,
//! the statement, the replicas' apply, PREPARE / COMMIT PREPARED); after the last, the vote
//! (`replication::compare`), the detach of who differs, and the answer to the client.

use super::*;

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
    pub(super) fn vote_before_commit(r: &mut Request, phase: &mut plan::Phase, prefix: &str) {
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
