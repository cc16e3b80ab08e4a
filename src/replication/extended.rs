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
//! - A write replicated by its effect (`effects.rs`) is planned at Parse: every node
//!   prepares it with the lead's hidden RETURNING columns, which pgmulti strips from
//!   RowDescriptions and rows. Each replica runs its Executes as pgmulti's own statement,
//!   made from what the lead returned (`replica_batch`), with the Bind's parameters.
//!
//! Pure logic over message bytes; the session carries batches out.

use std::collections::HashMap;
use std::sync::Arc;

use super::catalog::TableInfo;
use super::defaults;
use super::effects::{self, Effects};
use super::plan::Class;
use super::request::{self, analyse, fold, Parameters, Refusal, Value, Values};
use crate::protocol::framing::{begin_message, finish_message, message_header, put_i16};
use crate::protocol::frontend::{
    self, parse_bind, parse_describe_or_close, parse_execute, parse_parse,
};
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
    /// A write replicated by its effect: the nodes prepared its `lead_sql`.
    pub effects: Option<Arc<Effects>>,
    /// The parameter types the client declared (its replicas' statements declare them too).
    pub param_types: Vec<u32>,
    /// A statement calling `pg_terminate_backend` / `pg_cancel_backend` with a pgmulti
    /// client pid: it runs on the lead only, with the lead's pid in its place. Listed: the
    /// parameters (from 0) that name one, which each Bind replaces, and whether the call
    /// terminates.
    pub signals: Option<Vec<(usize, bool)>>,
}

impl Statement {
    /// Columns at the end of each row that are pgmulti's.
    fn hidden(&self) -> usize {
        self.effects.as_ref().map_or(0, |e| e.hidden)
    }
}

/// A bound portal.
struct Portal {
    statement: String,
    /// What the Bind gave a statement replicated by its effect.
    args: Option<Args>,
}

/// The parameters of a Bind as the nodes got it (pgmulti's values appended).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    formats: Vec<i16>,
    values: Vec<Option<Vec<u8>>>,
}

/// An Execute of a write replicated by its effect, in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectExecute {
    /// Shared with the statement: one plan however often it runs.
    pub effects: Arc<Effects>,
    /// Its place among the batch's Executes.
    pub execute: usize,
    /// Where the Execute message is in `Batch::bytes` (a Query: the statement in its text).
    at: (usize, usize),
    args: Args,
    param_types: Vec<u32>,
}

impl EffectExecute {
    /// A write in a simple Query: the `index`th statement, at `span` (bytes) of its text.
    pub fn in_query(effects: Effects, index: usize, span: (usize, usize)) -> EffectExecute {
        EffectExecute {
            effects: Arc::new(effects),
            execute: index,
            at: span,
            args: Args::default(),
            param_types: Vec::new(),
        }
    }

    /// Where it is: the Execute message in the batch, or the statement in a Query's text.
    pub fn span(&self) -> (usize, usize) {
        self.at
    }
}

/// How the voice's answer to one Describe reaches the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescribeFix {
    /// A statement's ParameterDescription is trimmed to the client's parameters.
    pub params: Option<usize>,
    /// The RowDescription loses this many columns at its end (NoData if none is left).
    pub hidden: usize,
}

/// The session's prepared statements and portals.
#[derive(Default)]
pub struct Statements {
    /// `mode = streaming`: statements run as the client wrote them (no catalog lookups,
    /// rewrites or effect checks: one node writes).
    pub as_written: bool,
    statements: HashMap<String, Statement>,
    portals: HashMap<String, Portal>,
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
    /// For each Describe in the batch, in order: what of the answer the client sees.
    pub describes: Vec<DescribeFix>,
    /// The node the batch must run on (it uses a statement or portal that lives only there).
    pub pinned: Option<u8>,
    /// Unnamed statement parsed and executed here as a read: it will live on the read node.
    pub unnamed_read: bool,
    /// The Executes of writes replicated by their effect.
    pub effects: Vec<EffectExecute>,
    /// How many Executes the batch has.
    pub executes: usize,
    /// The batch's named Parse messages and a Sync: what the replicas still need when the
    /// lead failed the batch (a Parse before the error survives it on the lead).
    pub parses_only: Option<Vec<u8>>,
    /// The batch ends with Flush, not Sync: the nodes answer without ReadyForQuery, and
    /// this many messages end their answers (ParseComplete, BindComplete, CloseComplete,
    /// ParameterDescription + RowDescription/NoData, CommandComplete…; or an error).
    pub flush_replies: Option<usize>,
    /// Client pids the batch signals, and whether it terminates them
    /// (`pg_terminate_backend`) or cancels their statements (`pg_cancel_backend`).
    pub signals: Vec<(u32, bool)>,
    /// Databases a parsed statement needs without other connections
    /// (`request::databases_needed_alone`).
    pub databases_alone: Vec<String>,
    /// What its LISTEN / UNLISTEN statements do (`request::listens`).
    pub listens: Vec<request::Listen>,
}

/// What a batch needs before it can be prepared.
pub enum Prepared {
    Ready(Batch),
    /// These tables (as written, folded) must be looked up in the catalog first.
    NeedTables(Vec<(String, String)>),
    Refused(Refusal),
}

/// Prepare a batch (`messages`: whole frontend messages ending with Sync). `tables`: what
/// the session knows of tables from the lead's catalog (`catalog.rs`); a batch that parses
/// a write to a table not in it needs the lookup first. Non-deterministic column defaults
/// are written into INSERTs as for the simple protocol; a table that draws from a sequence
/// makes its inserts take the ordering lock.
pub fn prepare(
    messages: &[u8],
    statements: &mut Statements,
    tables: &HashMap<String, TableInfo>,
    values: &mut Values,
) -> Prepared {
    let mut unknown = Vec::new();
    for (tag, body) in Messages(messages).filter(|_| !statements.as_written) {
        if tag == b'P' {
            if let Ok(p) = parse_parse(body) {
                let a = analyse(p.query);
                let inserts = a.inserts.into_iter().map(|i| (i.table, i.key));
                unknown.extend(
                    inserts
                        .chain(a.written)
                        .filter(|(_, key)| !tables.contains_key(key)),
                );
            }
        }
    }
    if !unknown.is_empty() {
        unknown.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        unknown.dedup_by(|a, b| a.1 == b.1);
        return Prepared::NeedTables(unknown);
    }
    let sequenced = |key: &str| tables.get(key).is_none_or(|t| t.sequenced);
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
        effects: Vec::new(),
        executes: 0,
        parses_only: None,
        flush_replies: None,
        signals: Vec::new(),
        databases_alone: Vec::new(),
        listens: Vec::new(),
    };
    let mut replies = 0;
    let mut ends_with_flush = false;
    let mut parses = Vec::new();
    let mut parsed_here: Vec<String> = Vec::new();
    let mut locks: Vec<String> = Vec::new();
    let mut signal_executes = false;
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
                batch
                    .databases_alone
                    .extend(request::databases_needed_alone(p.query));
                batch.listens.extend(request::listens(p.query));
                let signals = request::signals(p.query);
                if !signals.is_empty() {
                    let text = match request::signal_text(p.query, &signals, values.backend) {
                        Ok(text) => text,
                        Err(refusal) => return Prepared::Refused(refusal),
                    };
                    let mut signalled = Vec::new();
                    for s in &signals {
                        let terminates = s.function == "pg_terminate_backend";
                        match s.target {
                            request::SignalTarget::Param(n) => signalled.push((n - 1, terminates)),
                            request::SignalTarget::Literal(_, pid) => {
                                batch.signals.push((pid, terminates))
                            }
                            request::SignalTarget::Expression => {}
                        }
                    }
                    let param_types: Vec<u32> = p.param_types.iter().collect();
                    frontend::parse_message(&mut out, p.statement, &text, &param_types);
                    if !p.statement.is_empty() {
                        parses.extend_from_slice(&out[start..]);
                    }
                    parsed_here.push(p.statement.to_string());
                    statements.statements.insert(
                        p.statement.to_string(),
                        Statement {
                            class: Class::LeadOnly,
                            client_params: max_param(&text),
                            extras: Vec::new(),
                            ordering_lock: None,
                            ddl: false,
                            only_on: None,
                            parse: if p.statement.is_empty() {
                                Vec::new()
                            } else {
                                out[start..].to_vec()
                            },
                            effects: None,
                            param_types: Vec::new(),
                            signals: Some(signalled),
                        },
                    );
                    continue;
                }
                let inserts = analyse(p.query).inserts;
                let as_written = statements.as_written;
                let filled = if as_written {
                    Ok(None)
                } else {
                    defaults::fill(p.query, &inserts, &|key| {
                        tables
                            .get(key)
                            .map(|t| t.volatile.clone())
                            .unwrap_or_default()
                    })
                };
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
                let mut effects = None;
                let rewritten = if analysed.class == Class::Read || as_written {
                    None
                } else {
                    let rewritten = match request::rewrite(&text, &analysed, &mut params) {
                        Ok(r) => r,
                        Err(refusal) => return Prepared::Refused(refusal),
                    };
                    match effects::plan_in(rewritten.as_deref().unwrap_or(&text), tables) {
                        Ok(e) => effects = e.map(Arc::new),
                        Err(refusal) => return Prepared::Refused(refusal),
                    }
                    rewritten
                };
                let sql = match &effects {
                    Some(e) => e.lead_sql.as_str(),
                    None => rewritten.as_deref().unwrap_or(&text),
                };
                let param_types: Vec<u32> = p.param_types.iter().collect();
                if sql == p.query {
                    copy(&mut out, tag, body);
                } else {
                    frontend::parse_message(&mut out, p.statement, sql, &param_types);
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
                        ordering_lock: request::ordering_lock(&analysed, &sequenced),
                        ddl: analysed.ddl,
                        only_on: None,
                        parse: if p.statement.is_empty() {
                            Vec::new()
                        } else {
                            out[start..].to_vec()
                        },
                        param_types: if effects.is_some() {
                            param_types
                        } else {
                            Vec::new()
                        },
                        effects,
                        signals: None,
                    },
                );
            }
            b'B' => {
                let Ok(b) = parse_bind(body) else {
                    copy(&mut out, tag, body);
                    continue;
                };
                statements.portal_node.remove(b.portal);
                let st = statements.statements.get(b.statement);
                // The counts of a Bind are Int16: pgmulti's values must fit beside the client's.
                if st.is_some_and(|st| b.params.len() + st.extras.len() > i16::MAX as usize) {
                    return Prepared::Refused(Refusal {
                        message: format!(
                            "this statement cannot be replicated with {} parameters: pgmulti adds {} of its own, and a Bind holds at most {}",
                            b.params.len(),
                            st.map_or(0, |st| st.extras.len()),
                            i16::MAX
                        ),
                        hint: "bind fewer parameters, or compute now(), random() and similar in the client".into(),
                    });
                }
                if let Some(signals) = st.and_then(|st| st.signals.as_ref()) {
                    match signal_bind(&mut out, &b, signals, values.backend) {
                        Ok(signalled) => batch.signals.extend(signalled),
                        Err(refusal) => return Prepared::Refused(refusal),
                    }
                }
                let args = st.and_then(|st| bind(&mut out, &b, st, values));
                if out.len() == start {
                    copy(&mut out, tag, body);
                }
                if let Some(n) = st
                    .and_then(|st| st.only_on)
                    .filter(|_| !parsed_here.iter().any(|s| s == b.statement))
                {
                    batch.pinned = Some(n);
                }
                statements.portals.insert(
                    b.portal.to_string(),
                    Portal {
                        statement: b.statement.to_string(),
                        args,
                    },
                );
            }
            b'E' => {
                let Ok((portal, max_rows)) = parse_execute(body) else {
                    copy(&mut out, tag, body);
                    continue;
                };
                if let Some(&n) = statements.portal_node.get(portal) {
                    batch.pinned = Some(n);
                }
                let bound = statements.portals.get(portal);
                let st = bound.and_then(|p| statements.statements.get(&p.statement));
                classes.push(st.map_or(Class::Write, |s| s.class));
                signal_executes |= st.is_some_and(|s| s.signals.is_some());
                if let Some(lock) = st.and_then(|s| s.ordering_lock.clone()) {
                    locks.push(lock);
                }
                batch.ddl |= st.is_some_and(|s| s.ddl);
                let effect = st.and_then(|st| Some((st, st.effects.as_ref()?)));
                match (effect, bound.and_then(|p| p.args.as_ref())) {
                    (Some((st, effects)), Some(args)) => {
                        // The lead's rows all come at once: its hidden columns are needed
                        // before the replicas can run (PostgreSQL runs the write whole at
                        // the first Execute anyway).
                        let max_rows = if effects.hidden > 0 { 0 } else { max_rows };
                        frontend::execute_message(&mut out, portal, max_rows);
                        batch.effects.push(EffectExecute {
                            effects: Arc::clone(effects),
                            execute: batch.executes,
                            at: (start, out.len()),
                            args: args.clone(),
                            param_types: st.param_types.clone(),
                        });
                    }
                    _ => copy(&mut out, tag, body),
                }
                batch.executes += 1;
            }
            b'D' => {
                copy(&mut out, tag, body);
                let fix = match parse_describe_or_close(body) {
                    Ok((b'S', name)) => statements.statements.get(name).map(|s| DescribeFix {
                        params: (!s.extras.is_empty()).then_some(s.client_params),
                        hidden: s.hidden(),
                    }),
                    Ok((_, name)) => statements
                        .portals
                        .get(name)
                        .and_then(|p| statements.statements.get(&p.statement))
                        .map(|s| DescribeFix {
                            params: None,
                            hidden: s.hidden(),
                        }),
                    Err(_) => None,
                };
                batch.describes.push(fix.unwrap_or_default());
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
    // The lead's pids in a signal mean other backends, or none, on the other nodes.
    if signal_executes {
        if !one_node {
            return Prepared::Refused(Refusal {
                message: "pg_terminate_backend() and pg_cancel_backend() run on one node: they cannot be executed in one batch with statements that change data or session state".into(),
                hint: "send them in a batch of their own (Sync before and after)".into(),
            });
        }
        batch.class = Class::LeadOnly;
    } else if one_node {
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
        frontend::sync(&mut parses);
        batch.parses_only = Some(parses);
    }
    Prepared::Ready(batch)
}

/// Write the Bind `b` of `st` as the nodes need it, when they need it otherwise than the
/// client sent it (nothing written): pgmulti's values appended to the client's, text result
/// columns for pgmulti's hidden ones. Returns the parameters of a statement replicated by
/// its effect.
fn bind(
    out: &mut Vec<u8>,
    b: &frontend::Bind,
    st: &Statement,
    values: &mut Values,
) -> Option<Args> {
    // One result format code covers the hidden columns too (they are text, which reads the
    // same in either format); one code per column needs theirs added.
    let hidden = if b.result_formats.len() > 1 {
        st.hidden()
    } else {
        0
    };
    if st.extras.is_empty() && hidden == 0 && st.effects.is_none() {
        return None;
    }
    let given = b.params.len();
    let extras: Vec<String> = st.extras.iter().map(|&e| values.text(e)).collect();
    // Format codes: none or one shared code cannot cover text extras if the client's are
    // binary: write one code per parameter.
    let mut formats: Vec<i16> = match b.param_formats.len() {
        0 => Vec::new(),
        1 => vec![b.param_formats.iter().next().unwrap_or(0); given],
        _ => b.param_formats.iter().collect(),
    };
    if !formats.is_empty() {
        formats.extend(std::iter::repeat_n(0, extras.len()));
    }
    let params: Vec<Option<&[u8]>> = b
        .params
        .iter()
        .chain(extras.iter().map(|e| Some(e.as_bytes())))
        .collect();
    let mut results: Vec<i16> = b.result_formats.iter().collect();
    results.extend(std::iter::repeat_n(0, hidden));
    if !st.extras.is_empty() || hidden > 0 {
        frontend::bind_message(out, b.portal, b.statement, &formats, &params, &results);
    }
    st.effects.as_ref().map(|_| Args {
        formats,
        values: params.iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
    })
}

/// A Bind of a statement that signals backends, with each pgmulti client pid among its
/// parameters replaced by the lead's pid (`backend`), text or binary as the client sent it.
/// Returns the pids it signals (and whether it terminates them), or the refusal of a number
/// pgmulti did not hand out.
fn signal_bind(
    out: &mut Vec<u8>,
    b: &frontend::Bind,
    signals: &[(usize, bool)],
    backend: &dyn Fn(u32) -> Option<u32>,
) -> Result<Vec<(u32, bool)>, Refusal> {
    let formats: Vec<i16> = b.param_formats.iter().collect();
    let mut values: Vec<Option<Vec<u8>>> = b.params.iter().map(|v| v.map(<[u8]>::to_vec)).collect();
    let mut signalled = Vec::new();
    for &(i, terminates) in signals {
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i) == Some(&1),
        };
        let Some(Some(value)) = values.get_mut(i) else {
            continue; // NULL (or missing, which the node refuses): nothing is signalled
        };
        let pid = if binary {
            <[u8; 4]>::try_from(value.as_slice())
                .ok()
                .map(u32::from_be_bytes)
        } else {
            std::str::from_utf8(value)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
        };
        let function = if terminates {
            "pg_terminate_backend"
        } else {
            "pg_cancel_backend"
        };
        let refusal = || {
            request::Signal {
                function,
                target: request::SignalTarget::Param(i + 1),
            }
            .refusal()
        };
        let node_pid = pid.and_then(backend).ok_or_else(refusal)?;
        *value = if binary {
            node_pid.to_be_bytes().to_vec()
        } else {
            node_pid.to_string().into_bytes()
        };
        signalled.extend(pid.map(|pid| (pid, terminates)));
    }
    let params: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
    let results: Vec<i16> = b.result_formats.iter().collect();
    frontend::bind_message(out, b.portal, b.statement, &formats, &params, &results);
    Ok(signalled)
}

/// The statement and portal pgmulti prepares on a replica for an Execute it replaces.
const APPLY: &str = "pgmulti apply";

/// The batch as a replica runs it: the Execute of each write replicated by its effect
/// (`effects[i]`) becomes pgmulti's statement `sqls[i]`, bound to the client's parameters
/// (`None`: the client's Execute as it was). Also returns how many more messages end the
/// replica's answer than the lead's.
pub fn replica_batch(
    bytes: &[u8],
    effects: &[&EffectExecute],
    sqls: &[Option<String>],
) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(bytes.len() + 256 * effects.len());
    let mut extra = 0;
    let mut from = 0;
    for (fx, sql) in effects.iter().zip(sqls) {
        let Some(sql) = sql else {
            continue;
        };
        let (start, end) = fx.at;
        out.extend_from_slice(&bytes[from..start]);
        from = end;
        let types = apply_types(sql, &fx.args, &fx.param_types);
        frontend::close_message(&mut out, b'S', APPLY);
        frontend::close_message(&mut out, b'P', APPLY);
        frontend::parse_message(&mut out, APPLY, sql, &types);
        let values: Vec<Option<&[u8]>> = fx.args.values.iter().map(|v| v.as_deref()).collect();
        frontend::bind_message(&mut out, APPLY, APPLY, &fx.args.formats, &values, &[]);
        frontend::execute_message(&mut out, APPLY, 0);
        // CloseComplete ×2, ParseComplete, BindComplete, then the Execute's own answer.
        extra += 4;
    }
    out.extend_from_slice(&bytes[from..]);
    (out, extra)
}

/// The parameter types of a replica's statement bound to the client's parameters: what
/// the client declared; for a parameter the statement no longer mentions (pgmulti's own
/// statements name the lead's values instead), a type that takes any value in its format,
/// so that the Bind still fits.
fn apply_types(sql: &str, args: &Args, declared: &[u32]) -> Vec<u32> {
    const TEXT: u32 = 25;
    const BYTEA: u32 = 17;
    let mut used = vec![false; args.values.len()];
    for t in super::lexer::Lexer::new(sql).filter(|t| t.kind == super::lexer::TokenKind::Param) {
        if let Some(n) = t.text.get(1..).and_then(|n| n.parse::<usize>().ok()) {
            if let Some(u) = n.checked_sub(1).and_then(|i| used.get_mut(i)) {
                *u = true;
            }
        }
    }
    let format = |i: usize| match args.formats.len() {
        0 => 0,
        1 => args.formats[0],
        _ => args.formats.get(i).copied().unwrap_or(0),
    };
    (0..args.values.len())
        .map(|i| match declared.get(i).copied().unwrap_or(0) {
            0 if used[i] => 0,
            0 if format(i) == 1 => BYTEA,
            0 => TEXT,
            oid => oid,
        })
        .collect()
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
    let oids = msg.get(7..).unwrap_or_default();
    let oids = oids.get(..n.saturating_mul(4)).unwrap_or(oids);
    let mut out = Vec::with_capacity(7 + oids.len());
    let at = begin_message(&mut out, b't');
    put_i16(&mut out, (oids.len() / 4) as i16);
    out.extend_from_slice(oids);
    finish_message(&mut out, at);
    out
}

/// A RowDescription (`msg`, whole) without its last `hidden` columns, into `out`: NoData
/// when no column is left (the client's statement returns no rows). Unreadable: as it was.
pub fn cut_row_description(msg: &[u8], hidden: usize, out: &mut Vec<u8>) {
    let body = &msg[5..];
    let ends = crate::protocol::backend::row_description_ends(body).unwrap_or_default();
    match ends.len().checked_sub(hidden) {
        Some(0) => crate::protocol::backend::empty_message(out, b'n'),
        Some(keep) => crate::protocol::backend::cut_row(out, b'T', body, keep, ends[keep - 1]),
        None => out.extend_from_slice(msg),
    }
}

/// The highest `$n` in a statement. PostgreSQL refuses a number above `i32::MAX`; so does
/// this (it is not counted), which also keeps `max_param(..) + 1` from overflowing.
fn max_param(sql: &str) -> usize {
    super::lexer::Lexer::new(sql)
        .filter(|t| t.kind == super::lexer::TokenKind::Param)
        .filter_map(|t| t.text.get(1..)?.parse::<i32>().ok())
        .filter_map(|n| usize::try_from(n).ok())
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
    use crate::protocol::framing::{put_cstr, put_i32};

    fn parse(out: &mut Vec<u8>, name: &str, sql: &str) {
        frontend::parse_message(out, name, sql, &[]);
    }

    fn bind(out: &mut Vec<u8>, portal: &str, name: &str, params: &[&str], formats: &[i16]) {
        let values: Vec<Option<&[u8]>> = params.iter().map(|p| Some(p.as_bytes())).collect();
        frontend::bind_message(out, portal, name, formats, &values, &[]);
    }

    fn execute(out: &mut Vec<u8>, portal: &str) {
        frontend::execute_message(out, portal, 0);
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

    /// Tables as the catalog describes them: `h` and `a` plain, `jobs` with a primary key.
    fn tables() -> HashMap<String, TableInfo> {
        let plain = TableInfo {
            exists: true,
            sequenced: true,
            ..TableInfo::default()
        };
        let jobs = TableInfo {
            exists: true,
            columns: vec![
                ("id".into(), "integer".into()),
                ("status".into(), "text".into()),
            ],
            key: vec!["id".into()],
            ..TableInfo::default()
        };
        let mut t = HashMap::new();
        t.insert("h".to_string(), plain.clone());
        t.insert("a".to_string(), plain.clone());
        t.insert("t".to_string(), plain);
        t.insert("jobs".to_string(), jobs);
        t
    }

    /// `prepare` with `tables()` and fixed times and random bits.
    fn prepared(messages: &[u8], st: &mut Statements) -> Prepared {
        let mut n = 0u64;
        let mut random = move || {
            n += 1;
            n << 40
        };
        let mut values = Values {
            transaction_ts: (1795240800, 1),
            statement_ts: (1795240805, 0),
            random: &mut random,
            backend: &|pid| (pid < 100).then_some(pid + 1000),
        };
        prepare(messages, st, &tables(), &mut values)
    }

    fn run(messages: &[u8], st: &mut Statements) -> Batch {
        match prepared(messages, st) {
            Prepared::Ready(b) => b,
            Prepared::NeedTables(t) => panic!("tables {t:?}"),
            Prepared::Refused(r) => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn a_write_to_an_unknown_table_needs_the_catalog_first() {
        let mut m = Vec::new();
        parse(&mut m, "u", "UPDATE other SET x = 1 WHERE y = (SELECT 2)");
        parse(&mut m, "i", "INSERT INTO Other VALUES (1)");
        frontend::sync(&mut m);
        match prepared(&m, &mut Statements::default()) {
            Prepared::NeedTables(t) => assert_eq!(t, vec![("other".into(), "other".into())]),
            _ => panic!("prepared without the catalog"),
        }
    }

    /// Messages (tag, body) of a buffer.
    fn messages(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        Messages(bytes).map(|(t, b)| (t, b.to_vec())).collect()
    }

    #[test]
    fn a_prepared_claim_is_decided_by_the_lead_and_applied_by_key() {
        let mut st = Statements::default();
        let claim = "UPDATE jobs SET status = $1 WHERE id = (SELECT min(id) FROM jobs WHERE status = 'new')";
        let mut m = Vec::new();
        parse(&mut m, "claim", claim);
        let at = begin_message(&mut m, b'D');
        m.push(b'S');
        put_cstr(&mut m, b"claim");
        finish_message(&mut m, at);
        frontend::sync(&mut m);
        let b = run(&m, &mut st);
        let msgs = messages(&b.bytes);
        let parsed = parse_parse(&msgs[0].1).unwrap();
        assert_eq!(
            parsed.query,
            format!("{claim} RETURNING jobs.\"id\"::text, jobs.\"status\"::text, md5(ROW(jobs.*)::text)"),
            "every node prepares the lead's statement"
        );
        assert_eq!(
            b.describes,
            vec![DescribeFix {
                params: None,
                hidden: 3
            }],
            "the hidden columns are cut from its RowDescription"
        );
        assert!(b.effects.is_empty(), "nothing executed yet");

        // Bound with binary parameters and two result format codes, run with a row limit.
        let mut m = Vec::new();
        frontend::bind_message(&mut m, "p", "claim", &[1], &[Some(b"running")], &[1, 1]);
        frontend::execute_message(&mut m, "p", 5);
        frontend::sync(&mut m);
        let b = run(&m, &mut st);
        assert_eq!(b.class, Class::Write);
        assert_eq!(b.executes, 1);
        let msgs = messages(&b.bytes);
        let bound = parse_bind(&msgs[0].1).unwrap();
        assert_eq!(
            bound.result_formats.iter().collect::<Vec<_>>(),
            vec![1, 1, 0, 0, 0],
            "the hidden columns come as text"
        );
        assert_eq!(
            parse_execute(&msgs[1].1).unwrap(),
            ("p", 0),
            "the lead returns every row at once"
        );
        assert_eq!(b.effects.len(), 1);
        let fx = &b.effects[0];
        assert_eq!(fx.execute, 0);

        // The replicas run pgmulti's statement instead of the Execute, with the same
        // parameters; one the statement no longer names is typed to take any bytes.
        let apply = "UPDATE jobs AS pgm_t SET status = CAST(E'running' AS text) WHERE pgm_t.id = CAST(E'4' AS integer)".to_string();
        let (replica, extra) = replica_batch(&b.bytes, &[fx], &[Some(apply.clone())]);
        assert_eq!(extra, 4);
        let tags: Vec<u8> = messages(&replica).iter().map(|(t, _)| *t).collect();
        assert_eq!(
            tags, b"BCCPBES",
            "Bind, Close ×2, Parse, Bind, Execute, Sync"
        );
        let msgs = messages(&replica);
        let p = parse_parse(&msgs[3].1).unwrap();
        assert_eq!(p.query, apply);
        assert_eq!(p.param_types.iter().collect::<Vec<_>>(), vec![17]);
        let bound = parse_bind(&msgs[4].1).unwrap();
        assert_eq!(bound.portal, APPLY);
        assert_eq!(
            bound.params.iter().collect::<Vec<_>>(),
            vec![Some(&b"running"[..])]
        );
        assert!(bound.result_formats.is_empty());
        // As written (a keyed statement the lead changed): the batch is unchanged.
        let (same, extra) = replica_batch(&b.bytes, &[fx], &[None]);
        assert_eq!((same, extra), (b.bytes.clone(), 0));
    }

    #[test]
    fn replica_statements_keep_the_clients_parameter_types() {
        let args = Args {
            formats: vec![0, 1, 0],
            values: vec![Some(b"1".to_vec()), Some(vec![0, 0, 0, 2]), None],
        };
        assert_eq!(apply_types("SELECT $1, $3", &args, &[]), vec![0, 17, 0]);
        assert_eq!(apply_types("SELECT 1", &args, &[23, 0]), vec![23, 17, 25]);
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
        assert!(matches!(prepared(&m, &mut st), Prepared::Refused(_)));
    }

    /// Found by fuzz/ (extended): a parameter number near usize::MAX overflowed, and a
    /// Bind whose parameters plus pgmulti's own did not fit an Int16 count wrapped.
    #[test]
    fn parameter_counts_that_do_not_fit_are_refused_not_wrapped() {
        assert_eq!(max_param("SELECT $18446744073709551615, $2"), 2);
        let mut st = Statements::default();
        let mut m = Vec::new();
        parse(&mut m, "s", "INSERT INTO t VALUES ($1, now())");
        frontend::sync(&mut m);
        run(&m, &mut st);
        let mut m = Vec::new();
        let params: Vec<String> = (0..i16::MAX).map(|i| i.to_string()).collect();
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        bind(&mut m, "", "s", &params, &[]);
        execute(&mut m, "");
        frontend::sync(&mut m);
        match prepared(&m, &mut st) {
            Prepared::Refused(r) => assert!(r.message.contains("parameters"), "{r:?}"),
            _ => panic!("a Bind that cannot hold pgmulti's values was prepared"),
        }
        let mut d = Vec::new();
        let at = begin_message(&mut d, b't');
        put_i16(&mut d, 1);
        put_i32(&mut d, 23);
        finish_message(&mut d, at);
        let trimmed = trim_parameter_description(&d, 5);
        assert_eq!(trimmed, d, "asked for more than there are: what there is");
    }

    /// The Bind values a batch sends, per Bind.
    fn bound_values(bytes: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
        Messages(bytes)
            .filter(|(t, _)| *t == b'B')
            .map(|(_, body)| {
                let b = parse_bind(body).unwrap();
                b.params.iter().map(|v| v.map(<[u8]>::to_vec)).collect()
            })
            .collect()
    }

    #[test]
    fn a_signal_names_the_leads_backend_and_runs_there_only() {
        // `prepared` maps client pids below 100 to lead pid + 1000.
        let mut st = Statements::default();
        let mut m = Vec::new();
        parse(&mut m, "", "SELECT pg_terminate_backend($1)");
        bind(&mut m, "", "", &["7"], &[]);
        execute(&mut m, "");
        frontend::sync(&mut m);
        let b = run(&m, &mut st);
        assert_eq!(b.class, Class::LeadOnly);
        assert_eq!(bound_values(&b.bytes), vec![vec![Some(b"1007".to_vec())]]);
        assert_eq!(b.signals, vec![(7, true)]);

        let mut m = Vec::new();
        parse(
            &mut m,
            "c",
            "SELECT pg_cancel_backend($1::int), pg_cancel_backend(8)",
        );
        let values: Vec<Option<&[u8]>> = vec![Some(&[0, 0, 0, 9])];
        frontend::bind_message(&mut m, "", "c", &[1], &values, &[]);
        execute(&mut m, "");
        frontend::sync(&mut m);
        let b = run(&m, &mut st);
        assert_eq!(b.class, Class::LeadOnly, "a named Parse is not widened");
        assert_eq!(b.signals, vec![(8, false), (9, false)]);
        assert_eq!(
            bound_values(&b.bytes),
            vec![vec![Some(1009u32.to_be_bytes().to_vec())]]
        );
        let parsed = Messages(&b.bytes).find(|(t, _)| *t == b'P').unwrap().1;
        assert!(parse_parse(parsed)
            .unwrap()
            .query
            .contains("pg_cancel_backend(1008)"));

        // Not a pid pgmulti handed out; a signal beside a write.
        let mut m = Vec::new();
        bind(&mut m, "", "c", &["500"], &[]);
        execute(&mut m, "");
        frontend::sync(&mut m);
        assert!(matches!(prepared(&m, &mut st), Prepared::Refused(_)));
        let mut m = Vec::new();
        parse(&mut m, "", "INSERT INTO h VALUES (1)");
        bind(&mut m, "", "", &[], &[]);
        execute(&mut m, "");
        bind(&mut m, "", "c", &["9"], &[]);
        execute(&mut m, "");
        frontend::sync(&mut m);
        assert!(matches!(prepared(&m, &mut st), Prepared::Refused(_)));
    }
}
