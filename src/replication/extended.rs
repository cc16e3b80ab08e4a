//! The extended query protocol in replication mode. A client's messages up to Sync form one
//! *batch*, planned like a simple Query (`plan.rs`) and sent whole to each node in a phase:
//! the batch's Sync ends it with one ReadyForQuery per node.
//!
//! - A statement is classified at Parse; what it is stays known by name (`Statements`).
//!   Parse and Close reach every node (any node may later execute the statement), except
//!   the unnamed statement parsed and executed as a read in one batch, which stays on the
//!   read node.
//! - Bind and Execute follow the executed statement's class: writes lead first then
//!   replicas, reads one node (the node a portal or unnamed statement lives on, if any).
//! - Non-deterministic calls in a prepared statement become parameters after the client's
//!   own (`$n::timestamptz`, …); every Bind gets fresh values appended, the same for every
//!   node, so each execution sees new, identical values. A statement describe
//!   (ParameterDescription) is trimmed back to the client's parameters.
//!
//! Pure logic over message bytes; the session carries batches out.

use std::collections::HashMap;

use super::defaults::{self, InsertShape, VolatileDefault};
use super::plan::Class;
use super::request::{self, analyse, fold, Parameters, Refusal, Value, Values};
use crate::protocol::framing::{
    begin_message, finish_message, message_header, put_cstr, put_i16, put_i32,
};
use crate::protocol::frontend::{parse_bind, parse_describe_or_close, parse_execute, parse_parse};
use crate::protocol::MAX_MESSAGE_LEN;

/// What pgmulti knows of one prepared statement of a session.
#[derive(Debug, Clone)]
pub struct Statement {
    pub class: Class,
    /// Parameters the client binds.
    pub client_params: usize,
    /// Values pgmulti appends to every Bind, in order.
    pub extras: Vec<Value>,
    pub ordering_lock: Option<String>,
    pub ddl: bool,
    /// The node the statement exists on, if only one (an unnamed read).
    pub only_on: Option<u8>,
    /// A named statement's Parse as the nodes got it: replayed to a node that joins the
    /// session later (see `session::join`).
    pub parse: Vec<u8>,
}

/// The session's prepared statements and portals.
#[derive(Default)]
pub struct Statements {
    statements: HashMap<String, Statement>,
    /// Portal name → statement name.
    portals: HashMap<String, String>,
    /// Portals bound by a read on one node.
    portal_node: HashMap<String, u8>,
}

impl Statements {
    /// The transaction ended: portals are gone.
    pub fn end_transaction(&mut self) {
        self.portals.clear();
        self.portal_node.clear();
    }

    /// The Parse messages of the named statements, then Sync: what a node joining the
    /// session needs to run them. False when there are none.
    pub fn replay(&self, out: &mut Vec<u8>) -> bool {
        let mut any = false;
        for st in self.statements.values().filter(|s| !s.parse.is_empty()) {
            out.extend_from_slice(&st.parse);
            any = true;
        }
        if any {
            crate::protocol::frontend::sync(out);
        }
        any
    }

    /// DISCARD ALL / DEALLOCATE ALL through a simple Query.
    pub fn forget_all(&mut self) {
        self.statements.clear();
        self.end_transaction();
    }
}

/// A batch ready to send.
pub struct Batch {
    /// The messages to send to the nodes (Parse and Bind rewritten where needed).
    pub bytes: Vec<u8>,
    pub class: Class,
    pub ordering_lock: Option<String>,
    pub ddl: bool,
    /// For each statement Describe in the batch, in order: how many parameters the client
    /// knows of, when pgmulti added some (the ParameterDescription is trimmed to that).
    pub describes: Vec<Option<usize>>,
    /// The node the batch must run on (it uses a statement or portal that lives only there).
    pub pinned: Option<u8>,
    /// Unnamed statement parsed and executed here as a read: it will live on the read node.
    pub unnamed_read: bool,
    /// INSERTs whose column defaults must be known first (folded table names).
    pub inserts: Vec<InsertShape>,
    /// The batch's named Parse messages and a Sync: what the replicas still need when the
    /// lead failed the batch (a Parse before the error survives it on the lead).
    pub parses_only: Option<Vec<u8>>,
    /// The batch ends with Flush, not Sync: the nodes answer without ReadyForQuery, and
    /// this many messages end their answers (ParseComplete, BindComplete, CloseComplete,
    /// ParameterDescription + RowDescription/NoData, CommandComplete…; or an error).
    pub flush_replies: Option<usize>,
}

/// What a batch needs before it can be prepared.
pub enum Prepared {
    Ready(Batch),
    /// Column defaults of these INSERTs must be looked up first (see `defaults.rs`).
    NeedDefaults(Vec<InsertShape>),
    Refused(Refusal),
}

/// Prepare a batch (`messages`: whole frontend messages ending with Sync).
/// `defaults_of` gives a table's cached non-deterministic defaults (None: not known yet);
/// they are written into INSERTs as for the simple protocol. `sequenced`: whether a table
/// draws from a sequence (its inserts take the ordering lock).
pub fn prepare(
    messages: &[u8],
    statements: &mut Statements,
    defaults_of: &dyn Fn(&str) -> Option<Vec<VolatileDefault>>,
    sequenced: &dyn Fn(&str) -> bool,
    values: &mut Values,
) -> Prepared {
    // First pass: any INSERT whose table's defaults are unknown?
    let mut unknown = Vec::new();
    for (tag, body) in Messages(messages) {
        if tag == b'P' {
            if let Ok(p) = parse_parse(body) {
                let a = analyse(p.query);
                unknown.extend(
                    a.inserts
                        .into_iter()
                        .filter(|i| defaults_of(&i.key).is_none()),
                );
            }
        }
    }
    if !unknown.is_empty() {
        return Prepared::NeedDefaults(unknown);
    }
    let mut out = Vec::with_capacity(messages.len() + 64);
    let mut classes = Vec::new();
    let mut batch = Batch {
        bytes: Vec::new(),
        class: Class::Read,
        ordering_lock: None,
        ddl: false,
        describes: Vec::new(),
        pinned: None,
        unnamed_read: false,
        inserts: Vec::new(),
        parses_only: None,
        flush_replies: None,
    };
    let mut replies = 0;
    let mut ends_with_flush = false;
    let mut parses = Vec::new();
    let mut parsed_here: Vec<String> = Vec::new();
    let mut locks: Vec<String> = Vec::new();
    for (tag, body) in Messages(messages) {
        let start = out.len();
        replies += match tag {
            b'P' | b'B' | b'C' | b'E' => 1,
            b'D' if body.first() == Some(&b'S') => 2,
            b'D' => 1,
            _ => 0,
        };
        ends_with_flush = tag == b'H';
        match tag {
            b'P' => {
                let Ok(p) = parse_parse(body) else {
                    copy(&mut out, tag, body);
                    continue;
                };
                let inserts = analyse(p.query).inserts;
                let filled = defaults::fill(p.query, &inserts, &|key| {
                    defaults_of(key).unwrap_or_default()
                });
                let (text, analysed) = match filled {
                    Ok(Some(filled)) => {
                        let a = analyse(&filled);
                        (filled, a)
                    }
                    Ok(None) => (p.query.to_string(), analyse(p.query)),
                    Err((message, hint)) => return Prepared::Refused(Refusal { message, hint }),
                };
                let client_params = max_param(&text);
                let mut params = Parameters {
                    first: client_params + 1,
                    values: Vec::new(),
                };
                let rewritten = if analysed.class == Class::Read {
                    None
                } else {
                    match request::rewrite(&text, &analysed, &mut params) {
                        Ok(r) => r,
                        Err(refusal) => return Prepared::Refused(refusal),
                    }
                };
                if rewritten.is_none() && text == p.query {
                    copy(&mut out, tag, body);
                } else {
                    let at = begin_message(&mut out, b'P');
                    put_cstr(&mut out, p.statement.as_bytes());
                    put_cstr(&mut out, rewritten.as_deref().unwrap_or(&text).as_bytes());
                    put_i16(&mut out, p.param_types.len() as i16);
                    for oid in p.param_types.iter() {
                        put_i32(&mut out, oid as i32);
                    }
                    finish_message(&mut out, at);
                }
                // No ordering lock for a Parse: it must never wait (clients such as pgbench
                // prepare synchronously); the Execute takes it.
                if !p.statement.is_empty() {
                    parses.extend_from_slice(&out[start..]);
                }
                batch.ddl |= analysed.ddl;
                parsed_here.push(p.statement.to_string());
                statements.statements.insert(
                    p.statement.to_string(),
                    Statement {
                        class: analysed.class,
                        client_params,
                        extras: params.values,
                        ordering_lock: request::ordering_lock(&analysed, sequenced),
                        ddl: analysed.ddl,
                        only_on: None,
                        parse: if p.statement.is_empty() {
                            Vec::new()
                        } else {
                            out[start..].to_vec()
                        },
                    },
                );
            }
            b'B' => {
                let Ok(b) = parse_bind(body) else {
                    copy(&mut out, tag, body);
                    continue;
                };
                statements
                    .portals
                    .insert(b.portal.to_string(), b.statement.to_string());
                statements.portal_node.remove(b.portal);
                let Some(st) = statements.statements.get(b.statement) else {
                    copy(&mut out, tag, body);
                    continue;
                };
                if !parsed_here.iter().any(|s| s == b.statement) {
                    if let Some(n) = st.only_on {
                        batch.pinned = Some(n);
                    }
                }
                if st.extras.is_empty() {
                    copy(&mut out, tag, body);
                    continue;
                }
                let extras = st.extras.clone();
                let at = begin_message(&mut out, b'B');
                put_cstr(&mut out, b.portal.as_bytes());
                put_cstr(&mut out, b.statement.as_bytes());
                let given = b.params.len();
                // Format codes: none or one shared code cannot cover text extras if the
                // client's are binary: write one code per parameter.
                let formats: Vec<i16> = match b.param_formats.len() {
                    0 => Vec::new(),
                    1 => {
                        let f = b.param_formats.iter().next().unwrap_or(0);
                        let mut v = vec![f; given];
                        v.extend(std::iter::repeat_n(0, extras.len()));
                        v
                    }
                    _ => {
                        let mut v: Vec<i16> = b.param_formats.iter().collect();
                        v.extend(std::iter::repeat_n(0, extras.len()));
                        v
                    }
                };
                put_i16(&mut out, formats.len() as i16);
                for f in &formats {
                    put_i16(&mut out, *f);
                }
                put_i16(&mut out, (given + extras.len()) as i16);
                for v in b.params.iter() {
                    match v {
                        Some(bytes) => {
                            put_i32(&mut out, bytes.len() as i32);
                            out.extend_from_slice(bytes);
                        }
                        None => put_i32(&mut out, -1),
                    }
                }
                for e in extras {
                    let text = values.text(e);
                    put_i32(&mut out, text.len() as i32);
                    out.extend_from_slice(text.as_bytes());
                }
                put_i16(&mut out, b.result_formats.len() as i16);
                for f in b.result_formats.iter() {
                    put_i16(&mut out, f);
                }
                finish_message(&mut out, at);
            }
            b'E' => {
                copy(&mut out, tag, body);
                let Ok((portal, _)) = parse_execute(body) else {
                    continue;
                };
                if let Some(&n) = statements.portal_node.get(portal) {
                    batch.pinned = Some(n);
                }
                let statement = statements.portals.get(portal);
                let st = statement.and_then(|s| statements.statements.get(s));
                classes.push(st.map_or(Class::Write, |s| s.class));
                if let Some(lock) = st.and_then(|s| s.ordering_lock.clone()) {
                    locks.push(lock);
                }
                batch.ddl |= st.is_some_and(|s| s.ddl);
            }
            b'D' => {
                copy(&mut out, tag, body);
                if let Ok((b'S', name)) = parse_describe_or_close(body) {
                    let st = statements.statements.get(name);
                    batch
                        .describes
                        .push(st.filter(|s| !s.extras.is_empty()).map(|s| s.client_params));
                }
            }
            b'C' => {
                copy(&mut out, tag, body);
                match parse_describe_or_close(body) {
                    Ok((b'S', name)) => {
                        statements.statements.remove(name);
                    }
                    Ok((_, name)) => {
                        statements.portals.remove(name);
                        statements.portal_node.remove(name);
                    }
                    Err(_) => {}
                }
                classes.push(Class::SessionState);
            }
            _ => copy(&mut out, tag, body),
        }
        debug_assert!(out.len() >= start);
    }
    // A statement parsed here must exist wherever it may run later. A batch that executes
    // a write, transaction control & co already reaches every node in its own order (a
    // COMMIT must stay replicas-first): only a batch that would run on one node (reads,
    // LISTEN) or nothing is widened to every node. The unnamed statement executed here as
    // a read may stay on the read node.
    let executed = fold(&classes);
    let one_node = classes.is_empty() || matches!(executed, Class::Read | Class::LeadOnly);
    batch.class = executed;
    if one_node {
        let named = parsed_here.iter().any(|n| !n.is_empty());
        let unnamed = parsed_here.iter().any(|n| n.is_empty());
        if named || (unnamed && (classes.is_empty() || executed != Class::Read)) {
            batch.class = fold(&[classes.as_slice(), &[Class::SessionState]].concat());
        } else if unnamed {
            batch.unnamed_read = true;
        }
    }
    locks.sort();
    locks.dedup();
    batch.ordering_lock = (!locks.is_empty()).then(|| locks.join("; "));
    batch.bytes = out;
    batch.flush_replies = ends_with_flush.then_some(replies);
    if !parses.is_empty() {
        crate::protocol::frontend::sync(&mut parses);
        batch.parses_only = Some(parses);
    }
    Prepared::Ready(batch)
}

/// What PostgreSQL answers to a batch that only runs a prepared plain BEGIN — Bind, an
/// optional Describe of the portal, Execute, Sync, as libpq's PQexecPrepared sends it — so
/// that pgmulti can answer it and send the batch with the transaction's first statement, as
/// for a simple-protocol BEGIN. None for any other batch.
pub fn plain_begin_answer(messages: &[u8], statements: &Statements) -> Option<Vec<u8>> {
    let mut msgs = Messages(messages);
    let (b'B', bind) = msgs.next()? else {
        return None;
    };
    let bind = parse_bind(bind).ok()?;
    let statement = statements.statements.get(bind.statement)?;
    if statement.class != Class::Begin || statement.parse.len() < 5 {
        return None;
    }
    let text = parse_parse(&statement.parse[5..]).ok()?.query;
    if !request::is_plain_begin(text) {
        return None;
    }
    let mut answer = Vec::with_capacity(40);
    crate::protocol::backend::empty_message(&mut answer, b'2');
    let mut next = msgs.next()?;
    if next.0 == b'D' {
        if parse_describe_or_close(next.1).ok()? != (b'P', bind.portal) {
            return None;
        }
        crate::protocol::backend::empty_message(&mut answer, b'n');
        next = msgs.next()?;
    }
    let (b'E', execute) = next else {
        return None;
    };
    if parse_execute(execute).ok()?.0 != bind.portal {
        return None;
    }
    let (b'S', _) = msgs.next()? else {
        return None;
    };
    if msgs.next().is_some() {
        return None;
    }
    crate::protocol::backend::command_complete(&mut answer, "BEGIN");
    crate::protocol::backend::ready_for_query(&mut answer, b'T');
    Some(answer)
}

/// After a batch ran: statements and portals that now live on one node only.
pub fn ran_on(statements: &mut Statements, batch_bytes: &[u8], unnamed_read: bool, node: u8) {
    for (tag, body) in Messages(batch_bytes) {
        match tag {
            b'P' if unnamed_read => {
                if let Some(s) = parse_parse(body).ok().filter(|p| p.statement.is_empty()) {
                    if let Some(st) = statements.statements.get_mut(s.statement) {
                        st.only_on = Some(node);
                    }
                }
            }
            b'B' if unnamed_read => {
                if let Ok(b) = parse_bind(body) {
                    statements.portal_node.insert(b.portal.to_string(), node);
                }
            }
            _ => {}
        }
    }
}

/// Trim a ParameterDescription to the client's `n` parameters.
pub fn trim_parameter_description(msg: &[u8], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + 4 * n);
    let at = begin_message(&mut out, b't');
    put_i16(&mut out, n as i16);
    let oids = msg.get(7..).unwrap_or_default();
    out.extend_from_slice(oids.get(..4 * n).unwrap_or(oids));
    finish_message(&mut out, at);
    out
}

/// The highest `$n` in a statement.
fn max_param(sql: &str) -> usize {
    super::lexer::Lexer::new(sql)
        .filter(|t| t.kind == super::lexer::TokenKind::Param)
        .filter_map(|t| t.text.get(1..)?.parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

fn copy(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Iterate the (tag, body) of whole messages in a buffer.
struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = (u8, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let (tag, len) = message_header(self.0, MAX_MESSAGE_LEN).ok()??;
        let msg = self.0.get(..len)?;
        self.0 = &self.0[len..];
        Some((tag, &msg[5..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frontend;

    fn parse(out: &mut Vec<u8>, name: &str, sql: &str) {
        let at = begin_message(out, b'P');
        put_cstr(out, name.as_bytes());
        put_cstr(out, sql.as_bytes());
        put_i16(out, 0);
        finish_message(out, at);
    }

    fn bind(out: &mut Vec<u8>, portal: &str, name: &str, params: &[&str], formats: &[i16]) {
        let at = begin_message(out, b'B');
        put_cstr(out, portal.as_bytes());
        put_cstr(out, name.as_bytes());
        put_i16(out, formats.len() as i16);
        for f in formats {
            put_i16(out, *f);
        }
        put_i16(out, params.len() as i16);
        for p in params {
            put_i32(out, p.len() as i32);
            out.extend_from_slice(p.as_bytes());
        }
        put_i16(out, 0);
        finish_message(out, at);
    }

    fn execute(out: &mut Vec<u8>, portal: &str) {
        let at = begin_message(out, b'E');
        put_cstr(out, portal.as_bytes());
        put_i32(out, 0);
        finish_message(out, at);
    }

    #[test]
    fn a_prepared_plain_begin_is_answered_as_postgresql_would() {
        let mut st = Statements::default();
        let mut m = Vec::new();
        parse(&mut m, "b", "BEGIN;");
        parse(&mut m, "s", "BEGIN ISOLATION LEVEL SERIALIZABLE");
        frontend::sync(&mut m);
        run(&m, &mut st);
        let batch = |name: &str, describe: bool| {
            let mut m = Vec::new();
            bind(&mut m, "", name, &[], &[]);
            if describe {
                let at = begin_message(&mut m, b'D');
                m.push(b'P');
                put_cstr(&mut m, b"");
                finish_message(&mut m, at);
            }
            execute(&mut m, "");
            frontend::sync(&mut m);
            m
        };
        let answer = plain_begin_answer(&batch("b", true), &st).expect("answered");
        let tags: Vec<u8> = Messages(&answer).map(|(t, _)| t).collect();
        assert_eq!(tags, b"2nCZ");
        assert_eq!(answer.last(), Some(&b'T'));
        let answer = plain_begin_answer(&batch("b", false), &st).expect("answered");
        assert_eq!(
            Messages(&answer).map(|(t, _)| t).collect::<Vec<u8>>(),
            b"2CZ"
        );
        assert!(
            plain_begin_answer(&batch("s", true), &st).is_none(),
            "options can fail"
        );
        assert!(plain_begin_answer(&batch("nope", true), &st).is_none());
    }

    fn run(messages: &[u8], st: &mut Statements) -> Batch {
        let mut n = 0u64;
        let mut random = move || {
            n += 1;
            n << 40
        };
        let mut values = Values {
            transaction_ts: (1795240800, 1),
            statement_ts: (1795240805, 0),
            random: &mut random,
        };
        match prepare(messages, st, &|_| Some(Vec::new()), &|_| true, &mut values) {
            Prepared::Ready(b) => b,
            Prepared::NeedDefaults(_) => panic!("defaults"),
            Prepared::Refused(r) => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn a_prepared_insert_gets_fresh_values_as_parameters() {
        let mut st = Statements::default();
        let mut m = Vec::new();
        parse(
            &mut m,
            "ins",
            "INSERT INTO h (a, at) VALUES ($1, CURRENT_TIMESTAMP)",
        );
        frontend::sync(&mut m);
        let b = run(&m, &mut st);
        assert_eq!(
            b.class,
            Class::SessionState,
            "a named Parse reaches every node"
        );
        let (tag, body) = Messages(&b.bytes).next().unwrap();
        assert_eq!(tag, b'P');
        assert_eq!(
            parse_parse(body).unwrap().query,
            "INSERT INTO h (a, at) VALUES ($1, ($2::timestamptz))"
        );

        let mut m = Vec::new();
        bind(&mut m, "", "ins", &["7"], &[1]);
        execute(&mut m, "");
        frontend::sync(&mut m);
        let b = run(&m, &mut st);
        assert_eq!(b.class, Class::Write);
        let (_, body) = Messages(&b.bytes).next().unwrap();
        let bound = parse_bind(body).unwrap();
        let values: Vec<_> = bound
            .params
            .iter()
            .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
            .collect();
        assert_eq!(
            values,
            vec![
                Some("7".into()),
                Some("2026-11-21 06:00:00.000001+00".into())
            ]
        );
        assert_eq!(
            bound.param_formats.iter().collect::<Vec<_>>(),
            vec![1, 0],
            "the client's binary code stays its own"
        );
    }

    #[test]
    fn a_parse_alone_takes_no_ordering_lock() {
        let mut st = Statements::default();
        let mut m = Vec::new();
        parse(&mut m, "ins", "INSERT INTO h VALUES ($1)");
        frontend::sync(&mut m);
        assert_eq!(run(&m, &mut st).ordering_lock, None);
        let mut m = Vec::new();
        bind(&mut m, "", "ins", &["1"], &[]);
        execute(&mut m, "");
        frontend::sync(&mut m);
        assert!(run(&m, &mut st)
            .ordering_lock
            .unwrap()
            .contains("hashtext('h')"));
    }

    #[test]
    fn a_first_commit_keeps_its_order() {
        let mut st = Statements::default();
        for name in ["", "end"] {
            let mut m = Vec::new();
            parse(&mut m, name, "END");
            bind(&mut m, "", name, &[], &[]);
            execute(&mut m, "");
            frontend::sync(&mut m);
            assert_eq!(
                run(&m, &mut st).class,
                Class::Commit,
                "Parse {name:?} + Execute END"
            );
        }
    }

    #[test]
    fn unnamed_reads_stay_on_one_node() {
        let mut st = Statements::default();
        let mut m = Vec::new();
        parse(&mut m, "", "SELECT abalance FROM a WHERE aid = $1");
        bind(&mut m, "", "", &["1"], &[]);
        execute(&mut m, "");
        frontend::sync(&mut m);
        let b = run(&m, &mut st);
        assert_eq!(b.class, Class::Read);
        assert!(b.unnamed_read);
        let mut m = Vec::new();
        parse(&mut m, "s1", "SELECT 1");
        bind(&mut m, "", "s1", &[], &[]);
        execute(&mut m, "");
        frontend::sync(&mut m);
        assert_eq!(
            run(&m, &mut st).class,
            Class::SessionState,
            "named: parsed everywhere"
        );
        let mut m = Vec::new();
        bind(&mut m, "", "s1", &[], &[]);
        execute(&mut m, "");
        frontend::sync(&mut m);
        assert_eq!(run(&m, &mut st).class, Class::Read);
    }

    #[test]
    fn describe_is_trimmed_to_the_clients_parameters() {
        let msg = {
            let mut out = Vec::new();
            let at = begin_message(&mut out, b't');
            put_i16(&mut out, 2);
            put_i32(&mut out, 23);
            put_i32(&mut out, 1184);
            finish_message(&mut out, at);
            out
        };
        let t = trim_parameter_description(&msg, 1);
        assert_eq!(t, vec![b't', 0, 0, 0, 10, 0, 1, 0, 0, 0, 23]);
    }

    #[test]
    fn refusals_come_back() {
        let mut st = Statements::default();
        let mut m = Vec::new();
        parse(&mut m, "", "UPDATE t SET r = random()");
        frontend::sync(&mut m);
        let mut r = || 1u64;
        let mut values = Values {
            transaction_ts: (0, 0),
            statement_ts: (0, 0),
            random: &mut r,
        };
        assert!(matches!(
            prepare(&m, &mut st, &|_| Some(Vec::new()), &|_| true, &mut values),
            Prepared::Refused(_)
        ));
    }
}
