//! What the nodes answer: each message is read from a node connection, checked against what
//! that node was asked (`Running::pending`), recorded for the vote, and, from the voice
//! only, passed on to the client.

use super::*;

impl Session {
    /// Process what the nodes answered. The voice's messages wait while the client's send
    /// buffer has no room for them (back-pressure on the node).
    pub(super) fn node_replies(&mut self, cx: &mut Context) -> Result<bool, Transition> {
        let mut progress = false;
        let voice = match &self.repl.request {
            Some(r) => Some(r.voice),
            None => self.nodes.first().map(|n| n.index),
        };
        for i in 0..self.nodes.len() {
            loop {
                let node = &mut self.nodes[i];
                let id = node.index;
                if !node.collecting.is_empty() {
                    let want = message_len(&node.collecting);
                    let n = (want - node.collecting.len()).min(node.ep.rx.len());
                    if n == 0 {
                        break;
                    }
                    node.collecting.extend_from_slice(&node.ep.rx.data()[..n]);
                    node.ep.rx.consume(n);
                    progress = true;
                    if node.collecting.len() == want {
                        let msg = std::mem::take(&mut node.collecting);
                        self.on_node_message(id, msg[0], &msg, cx)?;
                        if self.nodes.get(i).is_none_or(|n| n.index != id) {
                            break; // the node was dropped
                        }
                    }
                    continue;
                }
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
                            // Hidden columns are read from the whole row: collected, up to
                            // the size of a statement pgmulti takes; beyond it the write
                            // fails (`EffectRuns::unreadable`).
                            if len <= MAX_REPLICATED_MESSAGE && fx.hides(tag) {
                                node.passing = 0;
                                node.collecting.reserve_exact(len);
                                node.collecting.extend_from_slice(data);
                                let n = data.len();
                                node.ep.rx.consume(n);
                                continue;
                            }
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

    pub(super) fn on_node_message(
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
                    r.record_answer(id, outcome, main);
                }
            }
            b'G' if main && voice => r.copy_in = true,
            _ => {}
        }
        if tag == b'E' && main && id == r.lead && r.retry.is_some() {
            let code = backend::error_field(msg.get(5..).unwrap_or_default(), b'C');
            if code == Some(&b"2D000"[..]) {
                r.retry_now = true;
                return Ok(());
            }
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
                b'E' if main => {
                    if let Some(fixed) = r
                        .client_sql
                        .as_deref()
                        .and_then(|sql| client_position(msg, sql, &r.main, &mut cx.shared.out))
                    {
                        self.client.tx.extend_always(fixed);
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

    /// At COMMIT with `write_ack = async`: compare what every node answered to the statements
    /// that ran behind; detach the minority. Some(message) when the transaction must fail.
    pub(super) fn check_async_answers(&mut self, lead: u8, cx: &mut Context) -> Option<String> {
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
}

/// The node's ErrorResponse `msg` to `main` (the Query the node ran) with its position
/// moved back into the client's own text `sql` (`replication::position`), built in `out`;
/// None when it has no position or it cannot be told.
fn client_position<'o>(
    msg: &[u8],
    sql: &str,
    main: &[u8],
    out: &'o mut Vec<u8>,
) -> Option<&'o [u8]> {
    let at: usize = std::str::from_utf8(backend::error_field(msg.get(5..)?, b'P')?)
        .ok()?
        .parse()
        .ok()?;
    let ran = std::str::from_utf8(main.get(5..main.len().checked_sub(1)?)?).ok()?;
    let moved = crate::replication::position::original_position(sql, ran, at)?;
    out.clear();
    backend::with_error_field(msg, b'P', &moved.to_string(), out);
    Some(out)
}
