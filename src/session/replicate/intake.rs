//! Client messages in, requests out: reading whole messages (large ones within
//! `max_message_memory`), collecting extended-protocol batches, COPY data, and turning a
//! Query or batch into a planned `Request` on the lead, the read node or every node.

use super::*;

impl Session {
    /// Take client messages: one request at a time, COPY data while copying.
    pub(super) fn client_requests(&mut self, cx: &mut Context) -> Result<bool, Transition> {
        let mut progress = false;
        loop {
            let copying = self.repl.request.as_ref().is_some_and(|r| r.copy_in);
            if copying || self.repl.copy_rest > 0 {
                match self.stream_copy_data(copying) {
                    Some(true) => {
                        progress = true;
                        continue;
                    }
                    Some(false) => return Ok(progress),
                    None => {}
                }
            }
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
    pub(super) fn finish_probe(
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

    /// The next whole client message's (tag, length), collecting a large one if need be.
    pub(super) fn peek_client_message(
        &mut self,
        cx: &mut Context,
    ) -> Result<Option<(u8, usize)>, Transition> {
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
    pub(super) fn add_to_batch(
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

    pub(super) fn take_client_message(&mut self, len: usize) -> Vec<u8> {
        if !self.repl.large.is_empty() {
            return std::mem::take(&mut self.repl.large);
        }
        let msg = self.client.rx.data()[..len].to_vec();
        self.client.rx.consume(len);
        msg
    }

    /// COPY: a CopyData message larger than the receive buffer goes to the running nodes
    /// piece by piece, as it arrives and as far as every node has room: never held whole,
    /// so it may be as large as PostgreSQL takes (`MAX_COPY_DATA`), and costs no
    /// `max_message_memory`. Some(progress) while such a message is under way (the rest of
    /// one whose COPY ended meanwhile is dropped), None otherwise.
    pub(super) fn stream_copy_data(&mut self, copying: bool) -> Option<bool> {
        if self.repl.copy_rest == 0 {
            let data = self.client.rx.data();
            if !self.repl.large.is_empty() || data.first() != Some(&b'd') {
                return None;
            }
            match message_header(data, MAX_COPY_DATA) {
                Ok(Some((_, len))) if len > self.client.rx.capacity() => {
                    self.repl.copy_rest = len;
                }
                _ => return None,
            }
        }
        let targets: Vec<u8> = match self.repl.request.as_ref().filter(|_| copying) {
            Some(r) => r.running.iter().map(|run| run.node).collect(),
            None => Vec::new(),
        };
        let nodes = self.nodes.iter().filter(|n| targets.contains(&n.index));
        let room = nodes.map(NodeConn::room).min().unwrap_or(usize::MAX);
        let n = self.client.rx.len().min(self.repl.copy_rest).min(room);
        if n == 0 {
            return Some(false);
        }
        let piece = &self.client.rx.data()[..n];
        for node in self.nodes.iter_mut().filter(|c| targets.contains(&c.index)) {
            node.send(piece);
        }
        self.client.rx.consume(n);
        self.repl.copy_rest -= n;
        Some(true)
    }

    /// Pass one COPY message to every running node when all have room; false to wait.
    pub(super) fn copy_to_nodes(&mut self, tag: u8, len: usize, cx: &mut Context) -> bool {
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

    pub(super) fn start_request(
        &mut self,
        msg: Vec<u8>,
        cx: &mut Context,
    ) -> Result<(), Transition> {
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
        crate::session::close_pooled(&self.prefix, &request::databases_needed_alone(sql), cx);
        let signals = request::signals(sql);
        if !signals.is_empty() {
            return self.signal_session(sql, &signals, lead, cx);
        }
        let text = short(sql);
        let mut analysed = request::analyse(sql);
        let listens = request::listens(sql);
        let streaming = cx.shared.config.mode == Mode::Streaming;
        // A procedure (or DO block) that commits inside cannot run in pgmulti's own
        // transaction: it is tried as usual, and on "invalid transaction termination" run
        // again unwrapped (see `Request::retry`).
        let retry = (analysed.class == plan::Class::Write
            && !self.repl.tx.view.open
            && !streaming
            && request::calls_procedure(sql))
        .then(|| msg.clone());
        if std::mem::take(&mut self.repl.unwrapped_retry) {
            analysed.class = plan::Class::NoTransactionBlock;
        }
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
        let mut client_sql = None;
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
            let m = match (&effects, &rewritten) {
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
            };
            if m != msg {
                client_sql = Some(sql.to_string());
            }
            m
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
            r.client_sql = client_sql;
            r.retry = retry.filter(|_| r.class != plan::Class::NoTransactionBlock);
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
    pub(super) fn lost_commit(&self, class: plan::Class) -> Option<String> {
        let tx = &self.repl.tx;
        tx.lost
            .clone()
            .filter(|_| class == plan::Class::Commit && tx.view.failed)
    }

    /// COMMIT with `write_ack = async`: wait for the replicas to catch up (the request is
    /// parked), then compare; on disagreement run ROLLBACK everywhere instead. None: go on.
    pub(super) fn before_commit(
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
    pub(super) fn signal_session(
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
    pub(super) fn start_function_call(
        &mut self,
        msg: Vec<u8>,
        cx: &mut Context,
    ) -> Result<(), Transition> {
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
    pub(super) fn run_on_lead(
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
    pub(super) fn mark_terminating(&self, signals: &[(u32, bool)], cx: &mut Context) {
        for &(pid, terminates) in signals {
            if terminates {
                cx.shared.pids.mark_terminating(pid, cx.now);
            }
        }
    }

    /// The phases for a request of `class`; None when it was answered already (inside a
    /// failed transaction, with 25P02 as PostgreSQL would).
    pub(super) fn plan_or_refuse(&mut self, class: plan::Class, cx: &mut Context) -> Option<Plan> {
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
    pub(super) fn timestamps(&mut self) -> (request::Moment, request::Moment) {
        let now = crate::timestamp::now();
        (*self.repl.tx.timestamp.get_or_insert(now), now)
    }

    /// An extended-protocol batch (messages up to Sync): prepared, then planned like a Query.
    pub(super) fn start_batch(
        &mut self,
        msg: Vec<u8>,
        lead: u8,
        cx: &mut Context,
    ) -> Result<(), Transition> {
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
        crate::session::close_pooled(&self.prefix, &batch.databases_alone, cx);
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
    pub(super) fn read_node(&mut self, lead: u8, cx: &mut Context) -> u8 {
        let draw = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if cx.shared.config.mode == Mode::Streaming {
            let max_lag = (
                cx.shared.config.max_standby_lag,
                cx.shared.config.max_standby_delay,
            );
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

    /// Ask the lead's catalog about `tables` (`replication::catalog`) before running
    /// `original`.
    pub(super) fn start_probe(
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
    pub(super) fn refuse_statement(
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
    pub(super) fn tables_current(&mut self, cx: &Context) {
        if self.repl.tables_epoch != cx.shared.ddl_epoch {
            self.repl.tables.clear();
            self.repl.tables_epoch = cx.shared.ddl_epoch;
        }
    }

    /// How the statements of the write Query `sql` (rewritten already) are replicated by
    /// their effect; None: all as written. Refused when one cannot be replicated (a
    /// trigger calls a non-deterministic function).
    pub(super) fn effects_of(&self, sql: &str) -> Result<Option<EffectRuns>, request::Refusal> {
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
    pub(super) fn replicated_text(
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
