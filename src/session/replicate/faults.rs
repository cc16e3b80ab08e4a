//! A node connection that fails, a node that is lost, and nodes that are late: the
//! statements in flight fail with 40001 (never the node's own FATAL), late statements are
//! canceled, and a node is detached only when a health check confirms it is down or it
//! keeps disagreeing with the majority.

use super::*;

impl Session {
    /// `node_response_timeout`, from the session's 1 s sweep while a request runs: nodes
    /// still running a phase whose voice answered more than the limit ago have their
    /// statement canceled (a lock wait only they have, a stuck backend). Their answer then
    /// comes at once (an error: the nodes disagree, the request is rolled back everywhere
    /// and fails with 40001, as for a race) and is voted on as usual: canceling a statement
    /// that had just finished changes nothing. A node that does not answer the cancel
    /// within the limit either loses this session's connection (`lose_connection`: 40001,
    /// health-checked; detached only if a COMMIT was sent to it).
    pub(in crate::session) fn check_late_nodes(
        &mut self,
        cx: &mut Context,
    ) -> Result<(), Transition> {
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
    pub(super) fn cancel_statements(&self, nodes: &[u8], cx: &mut Context) {
        for n in self.nodes.iter().filter(|n| nodes.contains(&n.index)) {
            if let Some((pid, secret)) = n.backend_key {
                cx.shared.backend_cancels.push((n.addr, pid, secret));
            }
        }
    }

    pub(super) fn lose_connections(
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
    pub(super) fn check_late_behind(
        &mut self,
        limit: Duration,
        cx: &mut Context,
    ) -> Result<(), Transition> {
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
    pub(super) fn lose_connection(
        &mut self,
        id: u8,
        why: &str,
        cx: &mut Context,
    ) -> Result<(), Transition> {
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
    pub(super) fn lose_node(
        &mut self,
        id: u8,
        why: &str,
        cx: &mut Context,
    ) -> Result<(), Transition> {
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

    pub(super) fn drop_node(&mut self, id: u8, cx: &mut Context) {
        if self.repl.listen_node == Some(id) {
            self.repl.listen_node = None;
        }
        if let Some(pos) = self.nodes.iter().position(|n| n.index == id) {
            let mut n = self.nodes.remove(pos);
            n.terminate();
            self.publish_pids(cx);
        }
    }

    /// Detach nodes that differed from the majority too many times in a row.
    pub(super) fn detach_disagreeing(&mut self, faulty: &[u8], cx: &mut Context) {
        for &id in faulty {
            let why = format!(
                "its answers differed from the majority's {} times in a row",
                crate::cluster::DISAGREEMENTS_BEFORE_DETACH
            );
            cx.shared.cluster.detach(id, &why);
            self.drop_node(id, cx);
        }
    }
}
