//! From a client's Query text to what replication needs: the class of the whole request
//! (`analyse`, over every statement in it) and the text every node must run (`rewrite`):
//! non-deterministic values replaced by literals pgmulti chooses once, so that every node
//! computes the same thing, or a refusal with a hint when that cannot be done safely.
//! Pure logic over the tokenizer; no I/O.

use super::classify::{classify, Kind, Nondeterminism, Tx};
use super::defaults::{insert_shape, InsertShape};
use super::effects::{self, Command};
use super::lexer::{
    fold_ident, qualified_name, split_statements, Lexer, Token, TokenKind, NAMEDATALEN,
};
use super::plan::Class;

pub struct Analysed {
    pub class: Class,
    pub nondeterminism: Nondeterminism,
    /// The INSERT statements of this request (for column defaults and ordering locks).
    pub inserts: Vec<InsertShape>,
    /// It changes the schema (DDL, temp tables).
    pub ddl: bool,
    /// UPDATE and DELETE targets: (table as written, folded key), for the catalog lookup.
    pub written: Vec<(String, String)>,
    /// A table this request defines (defaults, sequences, triggers) and then writes to: the
    /// catalog lookup cannot see it yet, so the request is refused.
    pub defines_then_writes: Option<String>,
    /// `COPY … FROM STDIN` beside other statements in one Query: pgmulti copies one COPY at
    /// a time, between requests, so such a request is refused.
    pub copy_among_others: bool,
}

/// Classify a whole Query (one or more statements). Unsure means write.
pub fn analyse(sql: &str) -> Analysed {
    let mut classes = Vec::new();
    let mut nondeterminism = Nondeterminism::default();
    let mut inserts = Vec::new();
    let mut ddl = false;
    let mut written = Vec::new();
    let mut defined: Vec<String> = Vec::new();
    let mut defines_then_writes = None;
    for statement in split_statements(sql) {
        let c = classify(statement);
        if c.kind == Kind::Empty {
            continue;
        }
        if matches!(c.kind, Kind::Ddl | Kind::SessionState) {
            defined.extend(defined_table(statement, c.nondeterministic));
        } else if let Some(shape) = effects::shape(statement) {
            if defined.contains(&shape.key) {
                defines_then_writes.get_or_insert(shape.table.clone());
            }
            if shape.command != Command::Insert {
                written.push((shape.table, shape.key));
            }
        }
        nondeterminism.merge(c.nondeterministic);
        ddl |= matches!(
            c.kind,
            Kind::Ddl | Kind::SessionState | Kind::NoTransactionBlock
        );
        if c.command == "INSERT" {
            let offset = statement.as_ptr() as usize - sql.as_ptr() as usize;
            inserts.extend(insert_shape(statement, offset));
        }
        classes.push(match c.kind {
            Kind::Read => Class::Read,
            Kind::Write if c.command == "COPY" => Class::CopyIn,
            Kind::Write | Kind::Ddl => Class::Write,
            Kind::Transaction(Tx::Begin) => Class::Begin,
            Kind::Transaction(Tx::Commit) => Class::Commit,
            Kind::Transaction(Tx::Rollback) => Class::Rollback,
            Kind::Transaction(Tx::RollbackTo) => Class::RollbackTo,
            Kind::Transaction(_) => Class::Savepoint,
            Kind::SessionState => Class::SessionState,
            Kind::NoTransactionBlock => Class::NoTransactionBlock,
            Kind::LeadOnly => Class::LeadOnly,
            Kind::Empty => continue,
        });
    }
    let class = fold(&classes);
    let copy_among_others = classes.len() > 1 && classes.contains(&Class::CopyIn);
    Analysed {
        copy_among_others,
        class,
        nondeterminism,
        inserts,
        ddl,
        written,
        defines_then_writes,
    }
}

/// The folded name of the table a DDL statement gives non-deterministic column defaults
/// (`CREATE TABLE t (… DEFAULT now())`, `ALTER TABLE t … SET DEFAULT random()`) or a
/// trigger (`CREATE TRIGGER … ON t`). Sequences need nothing: nobody else sees the new table
/// before the request commits, so every node draws the same values.
fn defined_table(statement: &str, n: Nondeterminism) -> Option<String> {
    let tokens: Vec<Token> = Lexer::new(statement).collect();
    let defines = n.now || n.clock || n.random || n.uuid || n.maybe_now;
    let trigger = tokens.iter().take(4).any(|t| t.is_kw("TRIGGER"));
    let at = if trigger {
        tokens.iter().position(|t| t.is_kw("ON"))? + 1
    } else if defines {
        let table = tokens.iter().position(|t| t.is_kw("TABLE"))?;
        let mut i = table + 1;
        while tokens
            .get(i)
            .is_some_and(|t| ["IF", "NOT", "EXISTS", "ONLY"].iter().any(|k| t.is_kw(k)))
        {
            i += 1;
        }
        i
    } else {
        return None;
    };
    qualified_name(&tokens, at).map(|(_, key, _, _)| key)
}

/// `BEGIN`, `BEGIN WORK`, `BEGIN TRANSACTION` or `START TRANSACTION` without options: it
/// cannot fail, so pgmulti may answer it and send it later.
pub fn is_plain_begin(sql: &str) -> bool {
    let mut words = sql.trim().trim_end_matches(';').split_whitespace();
    let first = words.next().unwrap_or_default();
    let second = words.next();
    words.next().is_none()
        && match second {
            None => first.eq_ignore_ascii_case("BEGIN"),
            Some(w) if first.eq_ignore_ascii_case("BEGIN") => {
                w.eq_ignore_ascii_case("WORK") || w.eq_ignore_ascii_case("TRANSACTION")
            }
            Some(w) => first.eq_ignore_ascii_case("START") && w.eq_ignore_ascii_case("TRANSACTION"),
        }
}

/// Advisory-lock key class pgmulti uses for ordering (ASCII "pm").
const ORDERING_LOCK_CLASS: u32 = 0x706d;

/// The statement the lead runs before a write whose effect depends on the order of
/// concurrent writers: sequences (nextval, SERIAL, IDENTITY). A transaction-scoped advisory
/// lock per inserted table that draws from a sequence (`sequenced`: true for a table not
/// known yet) and one for explicit sequence calls is taken on the lead; the lead commits
/// last, so concurrent inserters reach every replica in the lead's order and draw the same
/// sequence values. Inserts into other tables need no order and take no lock. Keys are
/// sorted so two requests cannot deadlock on them.
pub fn ordering_lock(analysed: &Analysed, sequenced: &dyn Fn(&str) -> bool) -> Option<String> {
    let mut keys: Vec<&str> = analysed
        .inserts
        .iter()
        .map(|i| i.key.as_str())
        .filter(|k| sequenced(k))
        .collect();
    if analysed.nondeterminism.sequence {
        keys.push(" sequences");
    }
    if keys.is_empty() {
        return None;
    }
    keys.sort_unstable();
    keys.dedup();
    let calls: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "pg_advisory_xact_lock({ORDERING_LOCK_CLASS}, hashtext('{}'))",
                k.replace('\'', "''")
            )
        })
        .collect();
    Some(format!("SELECT {}", calls.join(", ")))
}

/// `INSERT INTO … VALUES (…)` with no SELECT feeding it.
fn is_insert_values(statement: &str) -> bool {
    let mut saw_values = false;
    for t in Lexer::new(statement) {
        if t.is_kw("SELECT") {
            return false;
        }
        saw_values |= t.is_kw("VALUES");
    }
    saw_values
}

/// A Query of one `CALL` or `DO` statement: a procedure may end transactions itself.
pub fn calls_procedure(sql: &str) -> bool {
    let mut statements = split_statements(sql).filter(|s| !s.trim().is_empty());
    let first = statements.next().and_then(|s| Lexer::new(s).next());
    statements.next().is_none() && first.is_some_and(|t| t.is_kw("call") || t.is_kw("do"))
}

/// `COMMIT AND CHAIN` / `ROLLBACK AND CHAIN` (not `AND NO CHAIN`).
pub fn chains(sql: &str) -> bool {
    let tokens: Vec<Token> = Lexer::new(sql).filter(|t| !t.is_punct(b';')).collect();
    matches!(tokens.as_slice(), [.., and, chain] if and.is_kw("and") && chain.is_kw("chain"))
}

/// Whether each call in `statement` runs once: INSERT … VALUES, or a SELECT (or INSERT …
/// SELECT) without FROM.
fn runs_once(statement: &str, command: &str) -> bool {
    if command == "INSERT" && is_insert_values(statement) {
        return true;
    }
    let mut depth = 0i32;
    let from = Lexer::new(statement).any(|t| {
        match t.kind {
            TokenKind::Punct(b'(') => depth += 1,
            TokenKind::Punct(b')') => depth -= 1,
            _ => {}
        }
        depth == 0 && t.is_kw("FROM")
    });
    matches!(command, "SELECT" | "INSERT") && !from
}

/// Why a statement cannot be replicated as written.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub hint: String,
}

/// A call of `pg_terminate_backend` or `pg_cancel_backend` with a process number the client
/// gave (`pg_terminate_backend(12345)`, `pg_cancel_backend($1)`). The number is one pgmulti
/// handed out: it names a different backend, or none, on each node, so such a call runs only
/// where pgmulti can put the node's own pid in its place (`Signal::target`). Numbers a node
/// computes itself (`pg_backend_pid()`, `pid` from `pg_stat_activity`) are not signals here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub function: &'static str,
    pub target: SignalTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    /// A number literal: where it is in the text, and its value.
    Literal(std::ops::Range<usize>, u32),
    /// `$n` (counted from 1), possibly cast.
    Param(usize),
    /// Anything else made of numbers, parameters and casts.
    Expression,
}

impl Signal {
    pub fn refusal(&self) -> Refusal {
        Refusal {
            message: format!("{}() with a process number pgmulti did not hand out cannot be run through pgmulti: the number names a different backend, or none, on each node", self.function),
            hint: "give the pid of a pgmulti session (as its BackendKeyData or NotificationResponse showed it) as a literal or a parameter, connect to the node itself, or select the process from pg_stat_activity in the same statement (… FROM pg_stat_activity WHERE …)".into(),
        }
    }
}

/// Every call in `sql` that signals a process the client named (see `Signal`).
pub fn signals(sql: &str) -> Vec<Signal> {
    // Most queries name neither function: no lexing for them.
    if !sql
        .as_bytes()
        .windows(8)
        .any(|w| w.eq_ignore_ascii_case(b"_backend"))
    {
        return Vec::new();
    }
    let tokens: Vec<Token> = Lexer::new(sql).collect();
    let mut found = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let function = ["pg_terminate_backend", "pg_cancel_backend"]
            .into_iter()
            .find(|f| t.is_kw(f));
        let Some(function) = function else {
            continue;
        };
        if !tokens.get(i + 1).is_some_and(|t| t.is_punct(b'(')) {
            continue;
        }
        let mut depth = 0u32;
        let argument: Vec<&Token> = tokens[i + 1..]
            .iter()
            .take_while(|t| {
                match t.kind {
                    TokenKind::Punct(b'(') => depth += 1,
                    TokenKind::Punct(b')') => depth -= 1,
                    TokenKind::Punct(b',') if depth == 1 => return false,
                    _ => {}
                }
                depth > 0
            })
            .skip(1)
            .collect();
        let given = !argument.is_empty()
            && argument.iter().all(|t| {
                matches!(
                    t.kind,
                    TokenKind::Number | TokenKind::Param | TokenKind::Operator | TokenKind::Cast
                ) || t.is_punct(b'(')
                    || t.is_punct(b')')
                    || t.is_kw("int")
                    || t.is_kw("integer")
                    || t.is_kw("int4")
            });
        if !given {
            continue;
        }
        // What is cast to int stays the same number.
        let core: Vec<&&Token> = argument
            .iter()
            .take_while(|t| t.kind != TokenKind::Cast)
            .collect();
        let target = match core.as_slice() {
            [n] if n.kind == TokenKind::Number => match n.text.parse::<u32>() {
                Ok(pid) => SignalTarget::Literal(n.start..n.start + n.text.len(), pid),
                Err(_) => SignalTarget::Expression,
            },
            [p] if p.kind == TokenKind::Param => match p.text[1..].parse::<usize>() {
                Ok(n) if n > 0 => SignalTarget::Param(n),
                _ => SignalTarget::Expression,
            },
            _ => SignalTarget::Expression,
        };
        found.push(Signal { function, target });
    }
    found
}

/// `sql` with each signalled process number replaced by the node's own pid for it
/// (`backend`), or the refusal of the first call that cannot be: an expression, or not a
/// pid pgmulti handed out. Parameters (`$n`) are left for the Bind (`extended.rs`).
pub fn signal_text(
    sql: &str,
    calls: &[Signal],
    backend: impl Fn(u32) -> Option<u32>,
) -> Result<String, Refusal> {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut copied = 0;
    for c in calls {
        let (at, pid) = match &c.target {
            SignalTarget::Literal(at, pid) => (at, pid),
            SignalTarget::Param(_) => continue,
            SignalTarget::Expression => return Err(c.refusal()),
        };
        let Some(node_pid) = backend(*pid) else {
            return Err(c.refusal());
        };
        out.push_str(&sql[copied..at.start]);
        out.push_str(&node_pid.to_string());
        copied = at.end;
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// What a LISTEN or UNLISTEN statement does to the session's channels (the name as
/// written, quotes included, to be run again as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Add(String),
    Remove(String),
    RemoveAll,
    /// A COMMIT or ROLLBACK among them: the ones before it in its transaction count or not.
    Commit,
    Rollback,
}

/// The LISTEN / UNLISTEN statements of `sql`, in order, with the transaction ends between
/// them.
pub fn listens(sql: &str) -> Vec<Listen> {
    if !sql
        .as_bytes()
        .windows(6)
        .any(|w| w.eq_ignore_ascii_case(b"listen"))
    {
        return Vec::new();
    }
    // Unquoted, a channel name folds to lower case: `LISTEN Jobs` and `UNLISTEN jobs` name
    // one channel.
    let folded = |name: &str| match name.starts_with('"') {
        true => name.to_string(),
        false => name.to_lowercase(),
    };
    split_statements(sql)
        .map(classify)
        .filter_map(|c| match (c.command, c.name) {
            ("LISTEN", Some(name)) => Some(Listen::Add(folded(name))),
            ("UNLISTEN", Some(name)) => Some(Listen::Remove(folded(name))),
            ("UNLISTEN", None) => Some(Listen::RemoveAll),
            _ => match c.kind {
                Kind::Transaction(Tx::Commit) => Some(Listen::Commit),
                Kind::Transaction(Tx::Rollback) => Some(Listen::Rollback),
                _ => None,
            },
        })
        .collect()
}

/// Whether `sql` makes objects that live only in this session's backends: temporary tables,
/// views and sequences (`CREATE TEMP …`, `SELECT … INTO TEMP …`) and cursors `WITH HOLD`.
/// pgmulti cannot copy them to a node that joins the session later (a new connection after
/// a lost one, an attached node). Cheap unless the text says TEMP or HOLD.
pub fn keeps_session_objects(sql: &str) -> bool {
    let says_temp_or_hold = sql
        .as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"temp") || w.eq_ignore_ascii_case(b"hold"));
    if !says_temp_or_hold {
        return false;
    }
    split_statements(sql).any(|statement| {
        let t: Vec<Token> = Lexer::new(statement).collect();
        let kw = |i: usize, k: &str| t.get(i).is_some_and(|t| t.is_kw(k));
        let temp = |i: usize| kw(i, "temp") || kw(i, "temporary");
        if kw(0, "create") {
            // CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP …
            let mut i = 1;
            while ["or", "replace", "global", "local"]
                .iter()
                .any(|k| kw(i, k))
            {
                i += 1;
            }
            return temp(i);
        }
        if kw(0, "declare") {
            return (1..t.len()).any(|i| kw(i, "with") && kw(i + 1, "hold"));
        }
        kw(0, "select") && (1..t.len()).any(|i| kw(i, "into") && temp(i + 1))
    })
}

/// The databases a statement needs without other connections: PostgreSQL refuses
/// `DROP DATABASE d`, `ALTER DATABASE d RENAME` / `SET TABLESPACE` and `CREATE DATABASE …
/// TEMPLATE t` (template1 by default) while any other backend is connected to `d` or `t`.
/// pgmulti closes its idle pooled connections to them before such a statement runs.
/// Cheap for everything else: no lexing unless the text says DATABASE.
pub fn databases_needed_alone(sql: &str) -> Vec<String> {
    if !sql
        .as_bytes()
        .windows(8)
        .any(|w| w.eq_ignore_ascii_case(b"database"))
    {
        return Vec::new();
    }
    let mut found = Vec::new();
    for statement in split_statements(sql) {
        let t: Vec<Token> = Lexer::new(statement).collect();
        let name = |i: usize| {
            let tok = t.get(i).filter(|t| t.is_name())?;
            let mut buf = [0u8; NAMEDATALEN];
            Some(fold_ident(tok.text, &mut buf).to_string())
        };
        let kw = |i: usize, k: &str| t.get(i).is_some_and(|t| t.is_kw(k));
        if !kw(1, "database") {
            continue;
        }
        if kw(0, "drop") {
            let at = if kw(2, "if") && kw(3, "exists") { 4 } else { 2 };
            found.extend(name(at));
        } else if kw(0, "alter") {
            let renames = kw(3, "rename") || (kw(3, "set") && kw(4, "tablespace"));
            if renames {
                found.extend(name(2));
            }
        } else if kw(0, "create") {
            let template = (3..t.len()).find(|&i| kw(i, "template")).map(|i| {
                let at = if t.get(i + 1).is_some_and(|t| t.text == "=") {
                    i + 2
                } else {
                    i + 1
                };
                name(at)
            });
            match template {
                Some(Some(t)) => found.push(t),
                Some(None) => {}
                None => found.push("template1".into()),
            }
        }
    }
    found
}

/// A moment on pgmulti's clock: seconds since the Unix epoch, and microseconds.
pub type Moment = (u64, u32);

/// `moment` as the body of a timestamptz literal (UTC, microseconds).
pub fn timestamp_literal((secs, micros): Moment) -> String {
    format!("{}+00", crate::timestamp::format_utc(secs, micros))
}

/// A value pgmulti chooses once for every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// now(), CURRENT_TIMESTAMP & co: the transaction's timestamp.
    TransactionTs,
    /// statement_timestamp(), clock_timestamp().
    StatementTs,
    /// random(): a float8 in [0, 1).
    Random,
    /// gen_random_uuid().
    Uuid,
    /// The OID of a new large object (`large_objects::new_oid`).
    LargeObject,
}

impl Value {
    pub fn type_name(self) -> &'static str {
        match self {
            Value::TransactionTs | Value::StatementTs => "timestamptz",
            Value::Random => "float8",
            Value::Uuid => "uuid",
            Value::LargeObject => "oid",
        }
    }
}

/// How a rewrite writes a chosen value into SQL: as a typed expression without outer
/// parentheses (`'…'::timestamptz` for the simple protocol, `$5::timestamptz` for a
/// prepared statement whose values are bound at each execution).
pub trait Substitute {
    fn expr(&mut self, v: Value) -> String;
}

/// Values a rewrite draws on: the transaction's timestamp (now() & co), this statement's
/// (statement_timestamp(), clock_timestamp()), and a source of random bytes.
pub struct Values<'a> {
    pub transaction_ts: Moment,
    pub statement_ts: Moment,
    pub random: &'a mut dyn FnMut() -> u64,
    /// The lead's pid of the backend behind a client pid pgmulti handed out
    /// (`pg_terminate_backend` & co, see `Signal`).
    pub backend: &'a dyn Fn(u32) -> Option<u32>,
}

impl Values<'_> {
    /// The text of a value (as a Bind parameter or inside a literal).
    pub fn text(&mut self, v: Value) -> String {
        match v {
            // Formatted only here: most statements use neither.
            Value::TransactionTs => timestamp_literal(self.transaction_ts),
            Value::StatementTs => timestamp_literal(self.statement_ts),
            Value::Random => {
                let r = (self.random)() >> 11; // 53 random bits
                format!("{:.17}", r as f64 / (1u64 << 53) as f64)
            }
            Value::Uuid => uuid_v4(self.random),
            Value::LargeObject => super::large_objects::new_oid((self.random)()).to_string(),
        }
    }
}

/// Literals, for the simple protocol.
impl Substitute for Values<'_> {
    fn expr(&mut self, v: Value) -> String {
        let text = self.text(v);
        match v {
            Value::Random => format!("{text}::float8"),
            _ => format!("'{text}'::{}", v.type_name()),
        }
    }
}

/// Parameters after the client's own, for a prepared statement: `$first`, `$first + 1`, …
pub struct Parameters {
    pub first: usize,
    pub values: Vec<Value>,
}

impl Substitute for Parameters {
    fn expr(&mut self, v: Value) -> String {
        self.values.push(v);
        format!("${}::{}", self.first + self.values.len() - 1, v.type_name())
    }
}

/// The text every node runs, or `None` when the client's text is already deterministic.
pub fn rewrite(
    sql: &str,
    analysed: &Analysed,
    values: &mut dyn Substitute,
) -> Result<Option<String>, Refusal> {
    if !analysed.nondeterminism.any() {
        return Ok(None);
    }
    let mut out = String::new();
    let mut copied = 0;
    for statement in split_statements(sql) {
        let c = classify(statement);
        let n = c.nondeterministic;
        if !n.any() {
            continue;
        }
        match c.command {
            // A definition keeps its expressions: a DEFAULT now() must stay now().
            "CREATE" if c.kind != Kind::Write && !creates_from_query(statement) => continue,
            // Existing rows would get each node's own value.
            "ALTER" if (n.now || n.clock || n.random || n.uuid) && fills_rows(statement) => {
                return Err(Refusal {
                    message: "this ALTER cannot be replicated: it would fill existing rows with a value each node computes itself".into(),
                    hint: "add the column without the default, set the default with ALTER COLUMN … SET DEFAULT, then fill existing rows with an UPDATE".into(),
                })
            }
            "ALTER" | "COMMENT" | "GRANT" | "REVOKE" | "DROP" => continue,
            // Every EXECUTE would compute its own values on each node.
            "PREPARE" => {
                return Err(Refusal {
                    message: "a prepared statement using now(), random() or similar cannot be replicated: each EXECUTE would compute its own values on each node".into(),
                    hint: "pass the value as a parameter of EXECUTE instead".into(),
                })
            }
            _ => {}
        }
        if n.large_object && !runs_once(statement, c.command) {
            return Err(Refusal {
                message: "a large object created in this statement cannot be replicated: the statement may create several, and each node would choose their OIDs".into(),
                hint: "create one per statement (SELECT lo_creat(-1), or INSERT … VALUES (lo_create(0))), or give the OID: lo_create(12345)".into(),
            });
        }
        if (n.random || n.uuid) && !(c.command == "INSERT" && is_insert_values(statement)) {
            return Err(Refusal {
                message: "random() and gen_random_uuid() cannot be replicated in this statement: each node would compute different values".into(),
                hint: "use them in INSERT … VALUES (pgmulti then chooses one value per call for every node), or compute the value in the client".into(),
            });
        }
        let new = rewrite_statement(statement, &n, values)?;
        // What the classifier finds and rewrite_statement cannot replace (a call with
        // arguments, a quoted name, random_normal(), uuidv7(), CAST('now' AS …)) would run
        // on every node with that node's own value.
        let left = classify(new.as_deref().unwrap_or(statement)).nondeterministic;
        if left.now || left.clock || left.random || left.uuid {
            return Err(Refusal {
                message: "this statement calls a non-deterministic function that pgmulti cannot replace with one value for every node".into(),
                hint: "write now(), random() or gen_random_uuid() without arguments or quotes, or compute the value in the client".into(),
            });
        }
        if let Some(new) = new {
            let offset = statement.as_ptr() as usize - sql.as_ptr() as usize;
            out.push_str(&sql[copied..offset]);
            out.push_str(&new);
            copied = offset + statement.len();
        }
    }
    if copied == 0 {
        return Ok(None);
    }
    out.push_str(&sql[copied..]);
    Ok(Some(out))
}

/// The class of a request made of statements of these classes. Unsure means write.
pub fn fold(classes: &[Class]) -> Class {
    match classes {
        [] => Class::Read,
        [one] => *one,
        many => {
            let any = |c: Class| many.contains(&c);
            let control = [
                Class::Begin,
                Class::Commit,
                Class::Rollback,
                Class::RollbackTo,
                Class::Savepoint,
            ];
            if control.iter().any(|&c| any(c)) || any(Class::CopyIn) {
                Class::Mixed
            } else if any(Class::NoTransactionBlock) {
                Class::NoTransactionBlock
            } else if many.iter().all(|&c| c == Class::Read) {
                Class::Read
            } else if any(Class::Write) {
                Class::Write
            } else if any(Class::SessionState) {
                Class::SessionState
            } else {
                Class::LeadOnly
            }
        }
    }
}

/// An ALTER that computes values for existing rows: `ALTER TABLE … ADD [COLUMN] … DEFAULT f()` or `… TYPE … USING f()`: computed for every
/// existing row. Other ALTERs with ADD keep their expressions as definitions (`ALTER
/// PUBLICATION … ADD TABLE t WHERE (…)`, which PostgreSQL judges itself).
fn fills_rows(statement: &str) -> bool {
    let mut tokens = Lexer::new(statement);
    tokens.nth(1).is_some_and(|t| t.is_kw("TABLE"))
        && tokens.any(|t| t.is_kw("ADD") || t.is_kw("USING"))
}

/// `CREATE [TEMP] TABLE … AS query` / `CREATE MATERIALIZED VIEW … AS query`: data, not a
/// definition.
fn creates_from_query(statement: &str) -> bool {
    let mut depth = 0u32;
    let mut after_as = false;
    let mut view = false;
    for t in Lexer::new(statement) {
        // A view keeps its query, now() included, as PostgreSQL stores it; a materialized
        // view's rows are made now.
        if depth == 0 && !after_as && t.is_kw("VIEW") {
            view = true;
        }
        if depth == 0 && !after_as && t.is_kw("MATERIALIZED") {
            return true;
        }
        if view {
            continue;
        }
        if t.is_punct(b'(') {
            if after_as && depth == 0 {
                return true;
            }
            depth += 1;
        } else if t.is_punct(b')') {
            depth = depth.saturating_sub(1);
        } else if depth == 0 {
            if after_as
                && (t.is_kw("SELECT") || t.is_kw("WITH") || t.is_kw("VALUES") || t.is_kw("TABLE"))
            {
                return true;
            }
            after_as = t.is_kw("AS");
        }
    }
    false
}

/// A call at `tokens[at]` that lets the node choose a new large object's OID, rewritten
/// with the OID pgmulti chose: (start, end) bytes of what it replaces, and the new text.
/// `lo_creat(mode)` → `lo_create(oid)`, `lo_create(0)` → `lo_create(oid)`,
/// `lo_from_bytea(0, data)` → `lo_from_bytea(oid, data)`, `lo_import(path)` →
/// `lo_import(path, oid)`.
fn large_object_call(
    tokens: &[Token],
    at: usize,
    values: &mut dyn Substitute,
) -> Option<(usize, usize, String)> {
    let name = tokens.get(at)?;
    let function = ["lo_creat", "lo_create", "lo_from_bytea", "lo_import"]
        .into_iter()
        .find(|f| name.is_kw(f))?;
    if !tokens.get(at + 1)?.is_punct(b'(') {
        return None;
    }
    // The arguments' top-level commas and the closing parenthesis.
    let mut depth = 0;
    let mut commas = Vec::new();
    let mut close = None;
    for (k, t) in tokens.iter().enumerate().skip(at + 1) {
        match t.kind {
            TokenKind::Punct(b'(') => depth += 1,
            TokenKind::Punct(b')') => {
                depth -= 1;
                if depth == 0 {
                    close = Some(k);
                    break;
                }
            }
            TokenKind::Punct(b',') if depth == 1 => commas.push(k),
            _ => {}
        }
    }
    let close = close?;
    let first_is_zero = tokens.get(at + 2).is_some_and(|t| t.text == "0")
        && (commas.first() == Some(&(at + 3)) || close == at + 3);
    let (start, end) = (name.start, tokens[close].end());
    match function {
        "lo_creat" => Some((
            start,
            end,
            format!("lo_create({})", values.expr(Value::LargeObject)),
        )),
        "lo_create" if first_is_zero && commas.is_empty() => Some((
            start,
            end,
            format!("lo_create({})", values.expr(Value::LargeObject)),
        )),
        "lo_from_bytea" if first_is_zero && commas.len() == 1 => {
            let zero = &tokens[at + 2];
            Some((zero.start, zero.end(), values.expr(Value::LargeObject)))
        }
        "lo_import" if commas.is_empty() && close > at + 2 => {
            let at_close = tokens[close].start;
            Some((
                at_close,
                at_close,
                format!(", {}", values.expr(Value::LargeObject)),
            ))
        }
        _ => None,
    }
}

/// Replace the non-deterministic calls of one data statement by literals.
fn rewrite_statement(
    sql: &str,
    n: &Nondeterminism,
    values: &mut dyn Substitute,
) -> Result<Option<String>, Refusal> {
    let tokens: Vec<Token> = Lexer::new(sql).collect();
    let mut out = String::with_capacity(sql.len() + 64);
    let mut copied = 0;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        let next = |k: usize| tokens.get(i + k);
        // A call `name ( )`, optionally schema-qualified with pg_catalog.
        let is_call = |k: usize| {
            next(k).is_some_and(|p| p.is_punct(b'('))
                && next(k + 1).is_some_and(|p| p.is_punct(b')'))
        };
        let qualified = t.is_kw("pg_catalog") && next(1).is_some_and(|p| p.is_punct(b'.'));
        let (name, name_at) = if qualified {
            (next(2).copied(), 2)
        } else {
            (Some(t), 0)
        };
        let Some(name) = name.filter(|t| t.kind == TokenKind::Ident) else {
            // 'now' & co as a date/time input: `'now'::timestamp`, `timestamp 'now'`, or a bare
            // literal the classifier could not place (it may land in a date/time column).
            let as_time = next(1).is_some_and(|p| p.kind == TokenKind::Cast)
                || i.checked_sub(1)
                    .is_some_and(|p| tokens[p].kind == TokenKind::Ident)
                || n.maybe_now;
            if t.kind == TokenKind::String && as_time && is_now_word(t.string_body()) {
                return Err(Refusal {
                    message: format!("the literal {} cannot be replicated: each node would read its own clock", t.text),
                    hint: "write now() (or CURRENT_DATE) instead; pgmulti replaces those with one value for every node".into(),
                });
            }
            i += 1;
            continue;
        };
        if let Some((start, end, text)) = large_object_call(&tokens, i + name_at, values) {
            out.push_str(&sql[copied..start]);
            out.push_str(&text);
            copied = end;
            i = tokens
                .iter()
                .position(|t| t.start >= end)
                .unwrap_or(tokens.len());
            continue;
        }
        let mut replacement = None;
        let mut end_token = i + name_at;
        // `myschema.now()` is the user's function, not the built-in: leave it alone.
        let other_schema = !qualified && i.checked_sub(1).is_some_and(|p| tokens[p].is_punct(b'.'));
        if is_call(name_at + 1) && !other_schema {
            let value = if name.is_kw("now") || name.is_kw("transaction_timestamp") {
                Some(Value::TransactionTs)
            } else if name.is_kw("statement_timestamp") || name.is_kw("clock_timestamp") {
                Some(Value::StatementTs)
            } else if name.is_kw("random") {
                Some(Value::Random)
            } else if name.is_kw("gen_random_uuid") || name.is_kw("uuid_generate_v4") {
                Some(Value::Uuid)
            } else if name.is_kw("timeofday") {
                return Err(Refusal {
                    message: "timeofday() cannot be replicated: each node would read its own clock"
                        .into(),
                    hint: "use clock_timestamp() or now() instead".into(),
                });
            } else {
                None
            };
            if let Some(v) = value {
                replacement = Some(format!("({})", values.expr(v)));
                end_token = i + name_at + 2;
            }
        } else if !qualified {
            // SQL-standard value functions, with an optional precision: CURRENT_TIMESTAMP(3).
            let cast = if t.is_kw("CURRENT_TIMESTAMP") {
                Some("")
            } else if t.is_kw("CURRENT_DATE") {
                Some("::date")
            } else if t.is_kw("CURRENT_TIME") {
                Some("::timetz")
            } else if t.is_kw("LOCALTIME") {
                Some("::time")
            } else if t.is_kw("LOCALTIMESTAMP") {
                Some("::timestamp")
            } else {
                None
            };
            if let Some(cast) = cast {
                let mut precision = String::new();
                if next(1).is_some_and(|p| p.is_punct(b'('))
                    && next(2).is_some_and(|p| p.kind == TokenKind::Number)
                    && next(3).is_some_and(|p| p.is_punct(b')'))
                    && !t.is_kw("CURRENT_DATE")
                {
                    precision = format!("({})", tokens[i + 2].text);
                    end_token = i + 3;
                }
                let ts = values.expr(Value::TransactionTs);
                replacement = Some(format!("({ts}{cast}{precision})"));
            }
        }
        match replacement {
            Some(r) => {
                out.push_str(&sql[copied..t.start]);
                out.push_str(&r);
                copied = tokens[end_token].end();
                i = end_token + 1;
            }
            None => i += 1,
        }
    }
    if copied == 0 {
        return Ok(None);
    }
    out.push_str(&sql[copied..]);
    Ok(Some(out))
}

fn is_now_word(s: &str) -> bool {
    ["now", "today", "tomorrow", "yesterday"]
        .iter()
        .any(|w| s.trim().eq_ignore_ascii_case(w))
}

fn uuid_v4(random: &mut dyn FnMut() -> u64) -> String {
    let (a, b) = (random(), random());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_process_number_is_found_with_its_place() {
        let sql = "SELECT pg_terminate_backend(12345)";
        assert_eq!(
            signals(sql),
            vec![Signal {
                function: "pg_terminate_backend",
                target: SignalTarget::Literal(28..33, 12345)
            }]
        );
        assert_eq!(
            signals("select PG_CANCEL_BACKEND($1::int)")[0].target,
            SignalTarget::Param(1)
        );
        assert_eq!(
            signals("SELECT pg_terminate_backend(42, 1000)")[0].target,
            SignalTarget::Literal(28..30, 42)
        );
        assert_eq!(
            signals("SELECT pg_cancel_backend(1 + 2)")[0].target,
            SignalTarget::Expression
        );
        let calls = signals("SELECT pg_cancel_backend(7), pg_terminate_backend(8::int)");
        let text = signal_text(
            "SELECT pg_cancel_backend(7), pg_terminate_backend(8::int)",
            &calls,
            |pid| Some(pid * 1000),
        );
        assert_eq!(
            text.unwrap(),
            "SELECT pg_cancel_backend(7000), pg_terminate_backend(8000::int)"
        );
        assert!(
            signal_text(sql, &signals(sql), |_| None).is_err(),
            "not ours"
        );
        let p = "SELECT pg_cancel_backend($1)";
        assert_eq!(
            signal_text(p, &signals(p), |_| None).unwrap(),
            p,
            "for the Bind"
        );
        let e = "SELECT pg_cancel_backend(1 + 2)";
        assert!(signal_text(e, &signals(e), |_| Some(1)).is_err());
        for sql in [
            "SELECT pg_terminate_backend(pg_backend_pid())",
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = 'x'",
            "SELECT 'pg_terminate_backend(1)'",
            "SELECT 12345",
        ] {
            assert!(signals(sql).is_empty(), "{sql}");
        }
    }

    fn rw(sql: &str) -> Result<Option<String>, Refusal> {
        let mut n = 0u64;
        let mut random = move || {
            n += 1;
            n << 40
        };
        let mut v = Values {
            transaction_ts: (1795240800, 1),
            statement_ts: (1795240805, 2),
            random: &mut random,
            backend: &|_| None,
        };
        rewrite(sql, &analyse(sql), &mut v)
    }

    #[test]
    fn ordering_locks_cover_inserts_and_sequences() {
        assert_eq!(
            ordering_lock(&analyse("update t set a = 1"), &|_| true),
            None
        );
        // A table with no sequence behind it needs no order.
        assert_eq!(
            ordering_lock(&analyse("insert into h values (1)"), &|_| false),
            None
        );
        assert_eq!(
            ordering_lock(&analyse("insert into Public.\"Hist\" values (1); insert into b values (2)"), &|_| true).unwrap(),
            "SELECT pg_advisory_xact_lock(28781, hashtext('b')), pg_advisory_xact_lock(28781, hashtext('public.Hist'))"
        );
        assert_eq!(
            ordering_lock(&analyse("select nextval('s')"), &|_| false).unwrap(),
            "SELECT pg_advisory_xact_lock(28781, hashtext(' sequences'))"
        );
    }

    #[test]
    fn classes() {
        assert_eq!(analyse("select 1").class, Class::Read);
        assert_eq!(analyse("").class, Class::Read);
        assert_eq!(analyse("update t set a = 1").class, Class::Write);
        assert_eq!(
            analyse("BEGIN; UPDATE t SET a=1; SELECT 1; COMMIT;").class,
            Class::Mixed
        );
        assert_eq!(analyse("select 1; select 2").class, Class::Read);
        assert_eq!(
            analyse("insert into t values (1); select 1").class,
            Class::Write
        );
        assert_eq!(analyse("copy t from stdin").class, Class::CopyIn);
        assert!(!analyse("copy t from stdin").copy_among_others);
        assert!(analyse("select 0; copy t from stdin; select 1").copy_among_others);
        assert!(chains("COMMIT AND CHAIN;") && chains("end and chain"));
        assert!(!chains("COMMIT AND NO CHAIN") && !chains("COMMIT"));
        assert_eq!(analyse("copy t to stdout").class, Class::Read);
        assert_eq!(analyse("vacuum").class, Class::NoTransactionBlock);
        assert_eq!(analyse("set search_path = x").class, Class::SessionState);
        assert_eq!(analyse("create table t (a int)").class, Class::Write);
        assert_eq!(analyse("listen ch").class, Class::LeadOnly);
        assert_eq!(analyse("rollback to savepoint s").class, Class::RollbackTo);
        assert_eq!(analyse("end").class, Class::Commit);
    }

    #[test]
    fn time_functions_become_the_transaction_timestamp() {
        assert_eq!(
            rw("insert into h values (1, CURRENT_TIMESTAMP)")
                .unwrap()
                .unwrap(),
            "insert into h values (1, ('2026-11-21 06:00:00.000001+00'::timestamptz))"
        );
        assert_eq!(
            rw("update t set d = current_date, t = now(), c = pg_catalog.clock_timestamp()").unwrap().unwrap(),
            "update t set d = ('2026-11-21 06:00:00.000001+00'::timestamptz::date), t = ('2026-11-21 06:00:00.000001+00'::timestamptz), c = ('2026-11-21 06:00:05.000002+00'::timestamptz)"
        );
        assert_eq!(
            rw("update t set a = localtimestamp(2), b = current_time").unwrap().unwrap(),
            "update t set a = ('2026-11-21 06:00:00.000001+00'::timestamptz::timestamp(2)), b = ('2026-11-21 06:00:00.000001+00'::timestamptz::timetz)"
        );
    }

    #[test]
    fn definitions_keep_their_expressions() {
        assert_eq!(
            rw("create table t (at timestamptz default now(), u uuid default gen_random_uuid())")
                .unwrap(),
            None
        );
        assert!(rw("create table c as select now() as at")
            .unwrap()
            .unwrap()
            .contains("'::timestamptz)"));
        assert!(rw("alter table t add column at timestamptz default now()").is_err());
        assert!(rw("alter table t alter column at type timestamptz using now()").is_err());
        assert_eq!(
            rw("alter table t alter column at set default now()").unwrap(),
            None
        );
        assert!(rw("prepare p as insert into t values (now())").is_err());
        assert_eq!(
            rw("create or replace temp view v as select current_date as d, now() as n").unwrap(),
            None,
            "a view keeps its definition"
        );
        assert!(rw("create materialized view m as select now() as n")
            .unwrap()
            .is_some());
        assert_eq!(
            rw("create table x (a timestamptz default now()); insert into x values (now())").unwrap().unwrap(),
            "create table x (a timestamptz default now()); insert into x values (('2026-11-21 06:00:00.000001+00'::timestamptz))"
        );
    }

    #[test]
    fn quoted_and_commented_text_is_left_alone() {
        assert_eq!(rw("insert into t values ('now()')").unwrap(), None);
        assert_eq!(rw("update t set \"now\" = 1 -- now()").unwrap(), None);
        assert_eq!(rw("update t set a = $$ now() $$").unwrap(), None);
    }

    #[test]
    fn random_values_only_where_they_run_once() {
        let r = rw("insert into t values (random(), gen_random_uuid())")
            .unwrap()
            .unwrap();
        assert!(r.starts_with("insert into t values (("), "{r}");
        assert!(r.contains("::float8), ('") && r.contains("-4"), "{r}");
        assert!(rw("update t set r = random()").is_err());
        assert!(rw("insert into t select random() from generate_series(1, 3)").is_err());
    }

    #[test]
    fn now_literals_are_refused() {
        let e = rw("insert into t values ('now'::timestamp)").unwrap_err();
        assert!(e.message.contains("'now'"), "{e:?}");
        assert!(rw("update t set a = timeofday()").is_err());
    }

    /// Found by fuzz/ (sql_request): what the classifier calls non-deterministic and the
    /// rewrite cannot replace with one value used to run on every node with its own.
    #[test]
    fn calls_the_rewrite_cannot_replace_are_refused() {
        for sql in [
            "insert into t values (random(1, 10))",
            "insert into t values (\"now\"())",
            "insert into t values (random_normal())",
            "insert into t values(random(",
        ] {
            assert!(rw(sql).is_err(), "{sql} accepted");
        }
        // Another schema's now() is not the built-in: not replaced, and refused as unsure.
        assert!(rw("insert into t values (myschema.now())").is_err());
    }

    /// ALTER TABLE fills existing rows with a new column's default or a USING expression:
    /// each node would compute its own. ALTER PUBLICATION … ADD TABLE … WHERE keeps its
    /// expression as a definition (pg_regress publication: PostgreSQL refuses random()
    /// there itself, with its own message).
    #[test]
    fn only_alter_table_fills_rows() {
        for sql in [
            "ALTER TABLE t ADD COLUMN c float DEFAULT random()",
            "alter table only t alter column c type float using random()",
        ] {
            assert!(rw(sql).is_err(), "{sql} accepted");
        }
        for sql in [
            "ALTER PUBLICATION p ADD TABLE t WHERE (a < random())",
            "ALTER TABLE t ALTER COLUMN c SET DEFAULT random()",
        ] {
            assert!(rw(sql).is_ok(), "{sql} refused");
        }
    }

    #[test]
    fn a_call_or_do_alone_may_end_transactions() {
        assert!(calls_procedure("CALL p()"));
        assert!(calls_procedure("  call s.p(1);  "));
        assert!(calls_procedure("DO $$ BEGIN COMMIT; END $$"));
        assert!(!calls_procedure("CALL p(); SELECT 1"));
        assert!(!calls_procedure("SELECT do_it()"));
    }

    #[test]
    fn databases_that_must_have_no_other_connection() {
        let d = databases_needed_alone;
        assert_eq!(
            d("DROP DATABASE IF EXISTS \"Regress\" WITH (FORCE)"),
            ["Regress"]
        );
        assert_eq!(d("drop database regression"), ["regression"]);
        assert_eq!(d("ALTER DATABASE a RENAME TO b"), ["a"]);
        assert_eq!(d("alter database a set tablespace t"), ["a"]);
        assert!(d("ALTER DATABASE a SET work_mem = '1MB'").is_empty());
        assert_eq!(
            d("CREATE DATABASE x TEMPLATE = tpl ENCODING 'UTF8'"),
            ["tpl"]
        );
        assert_eq!(d("CREATE DATABASE x WITH OWNER bob"), ["template1"]);
        assert_eq!(
            d("SELECT 1; DROP DATABASE y; CREATE DATABASE y TEMPLATE template0"),
            ["y", "template0"]
        );
        assert!(d("SELECT current_database()").is_empty());
    }

    #[test]
    fn session_objects_are_recognised() {
        for yes in [
            "CREATE TEMP TABLE t (a int)",
            "create temporary table t as select 1",
            "CREATE GLOBAL TEMPORARY TABLE t (a int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "CREATE TEMP SEQUENCE s",
            "SELECT 1; DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1",
            "SELECT * INTO TEMP TABLE t FROM x",
        ] {
            assert!(keeps_session_objects(yes), "{yes}");
        }
        for no in [
            "CREATE TABLE temperature (a int)",
            "SELECT 'temp', 'with hold'",
            "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
            "CREATE TABLE t (temp int)",
            "INSERT INTO temp_log VALUES (1)",
            "SELECT * INTO t FROM temp",
        ] {
            assert!(!keeps_session_objects(no), "{no}");
        }
    }

    #[test]
    fn a_new_large_object_gets_an_oid_chosen_once_for_every_node() {
        let r = rw("INSERT INTO lotest (loid) SELECT lo_creat(42)")
            .unwrap()
            .unwrap();
        assert!(
            r.starts_with("INSERT INTO lotest (loid) SELECT lo_create('"),
            "{r}"
        );
        assert!(r.ends_with("'::oid)"), "{r}");
        let oid: u32 = r.split('\'').nth(1).unwrap().parse().unwrap();
        assert!(oid >= 1 << 31);
        assert!(rw("select lo_create(0)")
            .unwrap()
            .unwrap()
            .contains("lo_create('"));
        assert_eq!(rw("select lo_create(4242)").unwrap(), None, "its own OID");
        let b = rw("SELECT lo_from_bytea(0, '\\x00'::bytea)")
            .unwrap()
            .unwrap();
        assert!(
            b.starts_with("SELECT lo_from_bytea('") && b.ends_with("'::oid, '\\x00'::bytea)"),
            "{b}"
        );
        let i = rw("select lo_import('/tmp/f')").unwrap().unwrap();
        assert!(
            i.starts_with("select lo_import('/tmp/f', '") && i.ends_with("'::oid)"),
            "{i}"
        );
        assert_eq!(rw("select lo_import('/tmp/f', 77)").unwrap(), None);
        assert!(
            rw("UPDATE t SET loid = lo_creat(-1)").is_err(),
            "once per row"
        );
        assert!(rw("SELECT lo_creat(-1) FROM generate_series(1, 3)").is_err());
    }

    #[test]
    fn listen_and_unlisten_statements_name_their_channels_as_postgresql_folds_them() {
        use Listen::*;
        assert_eq!(
            listens("LISTEN Jobs; select 1; LISTEN \"Mixed\"; UNLISTEN jobs; UNLISTEN *"),
            vec![
                Add("jobs".into()),
                Add("\"Mixed\"".into()),
                Remove("jobs".into()),
                RemoveAll
            ]
        );
        assert!(listens("NOTIFY jobs; SELECT 'listen'").is_empty());
        assert!(listens("SELECT 1").is_empty());
        // Transaction ends among them say which count (ROLLBACK TO does not end one).
        assert_eq!(
            listens("BEGIN; LISTEN a; ABORT; BEGIN; LISTEN b; SAVEPOINT s; ROLLBACK TO s; END"),
            vec![Add("a".into()), Rollback, Add("b".into()), Commit]
        );
    }
}
