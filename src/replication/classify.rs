//! The statement classifier: what one SQL statement is, for routing in replication mode.
//!
//! Owns: the decision read / write / transaction control / session state / DDL / outside a
//! transaction block / lead-only / empty, plus the non-deterministic constructs a statement
//! contains. It works on tokens from `lexer` only (no regexes), never allocates, never panics,
//! and knows nothing of nodes, sockets or sessions: callers route on the answer.
//!
//! **Unsure means write.** Whatever the classifier cannot prove to be a read is `Kind::Write`:
//! unknown commands, unterminated quotes or comments, several statements in one string, and any
//! function call in a query that is not on the built-in list of read-only functions (aggregates,
//! string, math, date/time, JSON, catalog look-ups, `pg_sleep`, `version`, `current_setting`,
//! …) and not accepted by the caller's `read_only_functions` hook (see [`classify_with`]).
//! Functions known to write or to change session/server state (`nextval`, `setval`,
//! `setseed`, `set_config`, `pg_advisory_*lock*`, `lo_*`, `dblink*`, `pg_terminate_backend`,
//! `pg_reload_conf`, …) make a query a write even if the hook accepts them; `pg_notify` makes
//! an otherwise read-only query `LeadOnly`. The read-only list applies to unqualified and
//! `pg_catalog.`-qualified names; `public.lower()` is a user function, decided by the hook.
//!
//! Decisions where PostgreSQL leaves room:
//! - `SET` in every form (including `SET LOCAL`, `SET TRANSACTION`, `SET SESSION
//!   CHARACTERISTICS`, `SET ROLE`, `SET CONSTRAINTS`), `RESET`, `DISCARD`, `LOAD` are
//!   `SessionState`: they run on every node, so each node's session (and transaction) settings
//!   stay alike. `DISCARD ALL` cannot run in a transaction block; session state is never wrapped.
//! - `PREPARE name AS stmt` is `SessionState` with `prepared_name` and `body` (classify the body
//!   to learn what `EXECUTE` will do). `EXECUTE` is `Write` with `prepared_name`: the caller looks
//!   the prepared statement up and may downgrade it. `DEALLOCATE` is `SessionState`.
//! - Cursors are session state: `DECLARE`, `FETCH`, `MOVE`, `CLOSE` are `SessionState` (every
//!   node holds the cursor, so a `FETCH` works on any node and the lead's rows are the answer),
//!   except a `DECLARE` whose query writes or locks (`FOR UPDATE`, writing functions), which is
//!   `Write`. Routing a cursor to the lead only would be cheaper but breaks when the cursor's
//!   query writes, which a stateless classifier cannot tell at `FETCH` time.
//! - `CREATE TEMP|TEMPORARY TABLE/VIEW/SEQUENCE …` and `SELECT … INTO TEMP …` are
//!   `SessionState` (unless their query writes: then `Write`); `CREATE [UNLOGGED] TABLE … AS`,
//!   `CREATE MATERIALIZED VIEW … AS`, `SELECT … INTO` and `REFRESH MATERIALIZED VIEW` are `Write`.
//! - `ANALYZE`, `CHECKPOINT` are `Ddl` (every node).
//!   `NoTransactionBlock`: `VACUUM`, `CREATE|DROP DATABASE`, `CREATE|DROP TABLESPACE`,
//!   `CREATE|DROP SUBSCRIPTION`, `ALTER SUBSCRIPTION … PUBLICATION|REFRESH`,
//!   `CREATE INDEX CONCURRENTLY`, `DROP INDEX CONCURRENTLY`, every `REINDEX` and `CLUSTER`
//!   (of a partitioned table they refuse a transaction block, which a classifier cannot
//!   tell), `ALTER TABLE … DETACH PARTITION … CONCURRENTLY`, `ALTER SYSTEM`,
//!   `ALTER DATABASE … SET TABLESPACE`.
//! - `currval()`/`lastval()` and `random()`, `gen_random_uuid()`, `now()`, … in a query keep it
//!   a `Read`; the flags tell the caller. `setseed()` is a `Write` (it changes session state).
//! - `EXPLAIN` without `ANALYZE` is `Read`; `EXPLAIN ANALYZE stmt` has the kind of `stmt` (a
//!   write, `LeadOnly` or `Read`; anything else becomes `Write`).
//! - `COPY … FROM` is `Write`; `COPY … TO` is `Read` unless its query writes.
//!
//! Non-determinism flags record what appears in the statement text outside strings and comments
//! (whatever the kind: a `DEFAULT now()` in `CREATE TABLE` is harmless, in `ALTER TABLE … ADD
//! COLUMN` it is evaluated for every existing row; the caller decides). A `'now'`, `'today'`,
//! `'tomorrow'` or `'yesterday'` literal sets `now` when it is visibly cast to a date/time type
//! (`'now'::timestamptz`, `timestamp 'now'`, `CAST('now' AS …)`) and `maybe_now` when it is a
//! bare literal whose type depends on the column it lands in. Column defaults (SERIAL, IDENTITY,
//! `DEFAULT now()`) are invisible here: the statement text does not name them.

use super::lexer::{fold_ident, Lexer, Nesting, Token, TokenKind, NAMEDATALEN};

/// Which transaction-control statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tx {
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
    /// `SAVEPOINT name` (name in `Classified::name`).
    Savepoint,
    /// `RELEASE [SAVEPOINT] name`.
    Release,
    /// `ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo,
    /// `PREPARE TRANSACTION 'gid'` (the gid string token in `Classified::name`).
    PrepareTransaction,
    /// `COMMIT PREPARED 'gid'`.
    CommitPrepared,
    /// `ROLLBACK PREPARED 'gid'`.
    RollbackPrepared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A query that changes nothing: one node may answer.
    Read,
    /// Changes data, or might: every node, lead first, results compared.
    Write,
    /// Transaction control.
    Transaction(Tx),
    /// Changes session state only: every node.
    SessionState,
    /// Schema and maintenance commands: every node, compared.
    Ddl,
    /// Cannot run inside a transaction block: every node, never wrapped.
    NoTransactionBlock,
    /// LISTEN / UNLISTEN / NOTIFY / `pg_notify()` / `pg_listening_channels()`: the lead only.
    LeadOnly,
    /// Only whitespace, comments and semicolons.
    Empty,
}

/// Non-deterministic constructs found in a statement (see the module comment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Nondeterminism {
    /// `now()`, `CURRENT_TIMESTAMP/DATE/TIME`, `LOCALTIME[STAMP]`, `transaction_timestamp()`,
    /// `statement_timestamp()`, `'now'`/`'today'`/`'tomorrow'`/`'yesterday'` cast to a date/time.
    pub now: bool,
    /// `clock_timestamp()`, `timeofday()`.
    pub clock: bool,
    /// `random()`, `random_normal()`, `setseed()`.
    pub random: bool,
    /// `gen_random_uuid()`, `uuid_generate_v1/v1mc/v4()`.
    pub uuid: bool,
    /// `nextval()`, `setval()`, `currval()`, `lastval()`.
    pub sequence: bool,
    /// A bare `'now'`/`'today'`/… literal: non-deterministic if it lands in a date/time column.
    pub maybe_now: bool,
    /// `lo_creat()`, `lo_create()`, `lo_from_bytea()`, `lo_import()`: a new large object whose
    /// OID the node may choose.
    pub large_object: bool,
}

impl Nondeterminism {
    /// Any flag set?
    pub fn any(&self) -> bool {
        self.now
            || self.clock
            || self.random
            || self.uuid
            || self.sequence
            || self.maybe_now
            || self.large_object
    }

    /// Add the constructs `o` found.
    pub fn merge(&mut self, o: Nondeterminism) {
        self.now |= o.now;
        self.clock |= o.clock;
        self.random |= o.random;
        self.uuid |= o.uuid;
        self.sequence |= o.sequence;
        self.maybe_now |= o.maybe_now;
        self.large_object |= o.large_object;
    }
}

/// The classifier's answer for one statement. Names are token texts as written (quoted names
/// keep their quotes; fold them with [`fold_ident`] to compare as PostgreSQL does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified<'a> {
    pub kind: Kind,
    pub nondeterministic: Nondeterminism,
    /// The prepared statement named by `PREPARE`, `EXECUTE`, `DEALLOCATE` (`None` for `ALL`).
    pub prepared_name: Option<&'a str>,
    /// The other object a command names: savepoint (`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`), gid
    /// string literal (`PREPARE TRANSACTION`, `COMMIT/ROLLBACK PREPARED`), cursor (`DECLARE`,
    /// `FETCH`, `MOVE`, `CLOSE`), channel (`LISTEN`, `UNLISTEN`, `NOTIFY`).
    pub name: Option<&'a str>,
    /// The statement inside: `PREPARE … AS body`, `DECLARE … FOR body`, `EXPLAIN … body`.
    pub body: Option<&'a str>,
    /// The command in PostgreSQL's words, upper case: the leading key word ("SELECT" for
    /// VALUES/TABLE/parenthesised queries; the main statement's for WITH; "COMMIT" for END,
    /// "ROLLBACK" for ABORT), "" for `Empty`, "UNKNOWN" for an unrecognised command.
    pub command: &'static str,
    /// It calls a function that writes or may (`nextval`, `lo_open`, a user's function not
    /// known to be read-only): a replica must run it too, not only apply what the lead did.
    pub calls_writing_function: bool,
}

impl<'a> Classified<'a> {
    fn new(kind: Kind, command: &'static str) -> Self {
        Classified {
            kind,
            nondeterministic: Nondeterminism::default(),
            prepared_name: None,
            name: None,
            body: None,
            command,
            calls_writing_function: false,
        }
    }
}

/// Classifies one statement; functions not known to be read-only are assumed to write.
pub fn classify(sql: &str) -> Classified<'_> {
    classify_with(sql, &|_| false)
}

/// Classifies one statement (a trailing `;` is fine; further statements make it `Write`:
/// split first with [`super::lexer::split_statements`]).
///
/// `read_only_functions` is asked about each function called in a query that is neither on the
/// built-in read-only list nor on the writing list. It receives the folded name
/// (`"my_func"`, or `"schema.my_func"` when qualified; quoted names keep their case) and answers
/// true when the function is known not to write (e.g. a configured list of the application's
/// STABLE/IMMUTABLE functions). Unknown functions make the query a `Write`.
pub fn classify_with<'a>(
    sql: &'a str,
    read_only_functions: &dyn Fn(&str) -> bool,
) -> Classified<'a> {
    classify_depth(sql, read_only_functions, 0)
}

/// How deep `EXPLAIN ANALYZE` nesting is followed before giving up (Write).
const MAX_DEPTH: u32 = 4;

fn classify_depth<'a>(sql: &'a str, hook: &dyn Fn(&str) -> bool, depth: u32) -> Classified<'a> {
    let mut lx = Lexer::new(sql);
    let mut first = None;
    let mut any = false;
    for t in lx.by_ref() {
        any = true;
        if !t.is_punct(b'(') {
            first = Some(t);
            break;
        }
    }
    let first = match first {
        Some(t) => t,
        None if !any => return Classified::new(Kind::Empty, ""),
        None => return Classified::new(Kind::Write, "UNKNOWN"),
    };
    if first.is_punct(b';') && Lexer::new(sql).all(|t| t.is_punct(b';')) {
        return Classified::new(Kind::Empty, "");
    }
    let scan = scan(sql, hook);
    let mut c = dispatch(sql, first, lx, &scan, hook, depth);
    c.nondeterministic.merge(scan.flags);
    c.calls_writing_function = scan.calls_writing_function;
    if scan.unterminated || scan.multi {
        c.kind = Kind::Write;
    }
    c
}

/// Word after word (or punctuation) look-ahead over a cloned lexer.
fn peek<'a>(lx: &Lexer<'a>) -> Option<Token<'a>> {
    lx.clone().next()
}

fn is_kw(t: Option<Token<'_>>, kw: &str) -> bool {
    t.is_some_and(|t| t.is_kw(kw))
}

/// The next token if it is a name (identifier or quoted identifier).
fn name_of<'a>(t: Option<Token<'a>>) -> Option<&'a str> {
    t.filter(|t| t.is_name()).map(|t| t.text)
}

fn query_kind(scan: &Scan, temp_ok: bool) -> Kind {
    if scan.writes {
        Kind::Write
    } else if let Some(temp) = scan.into {
        if temp && temp_ok {
            Kind::SessionState
        } else {
            Kind::Write
        }
    } else if scan.notify {
        Kind::LeadOnly
    } else {
        Kind::Read
    }
}

/// Text from `t` to the end, without a trailing `;` and whitespace.
fn rest_from<'a>(sql: &'a str, t: Token<'a>) -> &'a str {
    let s = sql.get(t.start..).unwrap_or("");
    s.trim_end_matches(|c: char| c == ';' || c.is_ascii_whitespace())
}

fn dispatch<'a>(
    sql: &'a str,
    first: Token<'a>,
    mut lx: Lexer<'a>,
    scan: &Scan,
    hook: &dyn Fn(&str) -> bool,
    depth: u32,
) -> Classified<'a> {
    use Kind::*;
    if first.kind != TokenKind::Ident {
        return Classified::new(Write, "UNKNOWN");
    }
    let mut buf = [0u8; NAMEDATALEN];
    let word = fold_ident(first.text, &mut buf);
    let next = peek(&lx);
    match word {
        "select" | "values" | "table" => Classified::new(query_kind(scan, true), "SELECT"),
        "with" => match scan.main {
            Some(cmd @ ("INSERT" | "UPDATE" | "DELETE" | "MERGE")) => Classified::new(Write, cmd),
            Some(_) => Classified::new(query_kind(scan, true), "SELECT"),
            None => Classified::new(Write, "SELECT"),
        },
        "insert" => Classified::new(Write, "INSERT"),
        "update" => Classified::new(Write, "UPDATE"),
        "delete" => Classified::new(Write, "DELETE"),
        "merge" => Classified::new(Write, "MERGE"),
        "truncate" => Classified::new(Write, "TRUNCATE"),
        "call" => Classified::new(Write, "CALL"),
        "do" => Classified::new(Write, "DO"),
        "lock" => Classified::new(Write, "LOCK"),
        "refresh" => Classified::new(Write, "REFRESH MATERIALIZED VIEW"),
        "copy" => copy(sql, lx, hook),
        "explain" => explain(sql, lx, hook, depth),
        "show" => Classified::new(Read, "SHOW"),
        "begin" => Classified::new(Transaction(Tx::Begin), "BEGIN"),
        "start" if is_kw(next, "transaction") => {
            Classified::new(Transaction(Tx::Begin), "START TRANSACTION")
        }
        "commit" | "end" if word == "commit" && is_kw(next, "prepared") => {
            lx.next();
            let mut c = Classified::new(Transaction(Tx::CommitPrepared), "COMMIT PREPARED");
            c.name = lx
                .next()
                .filter(|t| t.kind == TokenKind::String)
                .map(|t| t.text);
            c
        }
        "commit" | "end" => Classified::new(Transaction(Tx::Commit), "COMMIT"),
        "abort" => Classified::new(Transaction(Tx::Rollback), "ROLLBACK"),
        "rollback" => rollback(lx),
        "savepoint" => {
            let mut c = Classified::new(Transaction(Tx::Savepoint), "SAVEPOINT");
            c.name = name_of(next);
            c
        }
        "release" => {
            if is_kw(next, "savepoint") {
                lx.next();
            }
            let mut c = Classified::new(Transaction(Tx::Release), "RELEASE");
            c.name = name_of(lx.next());
            c
        }
        "prepare" => prepare(sql, lx),
        "execute" => {
            let mut c = Classified::new(Write, "EXECUTE");
            c.prepared_name = name_of(next);
            c
        }
        "deallocate" => {
            if is_kw(next, "prepare") {
                lx.next();
            }
            let mut c = Classified::new(SessionState, "DEALLOCATE");
            c.prepared_name = lx
                .next()
                .filter(|t| t.is_name() && !t.is_kw("all"))
                .map(|t| t.text);
            c
        }
        "set" => Classified::new(SessionState, "SET"),
        "reset" => Classified::new(SessionState, "RESET"),
        "discard" => Classified::new(SessionState, "DISCARD"),
        "load" => Classified::new(SessionState, "LOAD"),
        "declare" => declare(sql, lx, hook),
        "fetch" | "move" | "close" => {
            let command = match word {
                "fetch" => "FETCH",
                "move" => "MOVE",
                _ => "CLOSE",
            };
            let mut c = Classified::new(SessionState, command);
            // The cursor is the last name: FETCH [direction] [FROM | IN] cursor.
            c.name = lx
                .filter(|t| t.is_name())
                .last()
                .filter(|t| !(command == "CLOSE" && t.is_kw("all")))
                .map(|t| t.text);
            c
        }
        "listen" | "unlisten" | "notify" => {
            let command = match word {
                "listen" => "LISTEN",
                "unlisten" => "UNLISTEN",
                _ => "NOTIFY",
            };
            let mut c = Classified::new(LeadOnly, command);
            c.name = name_of(next);
            c
        }
        "vacuum" => Classified::new(NoTransactionBlock, "VACUUM"),
        "analyze" | "analyse" => Classified::new(Ddl, "ANALYZE"),
        "checkpoint" => Classified::new(Ddl, "CHECKPOINT"),
        // Of a partitioned table (which a classifier cannot tell), concurrently, or of a
        // whole schema or database, these refuse a transaction block; any of them runs
        // fine outside one, so none is wrapped in pgmulti's.
        "cluster" => Classified::new(NoTransactionBlock, "CLUSTER"),
        "reindex" => Classified::new(NoTransactionBlock, "REINDEX"),
        "create" => create(sql, lx, hook),
        "drop" => {
            let what = lx.next();
            let no_tx = ["database", "tablespace", "subscription"]
                .iter()
                .any(|w| is_kw(what, w))
                || (is_kw(what, "index") && is_kw(lx.next(), "concurrently"));
            Classified::new(if no_tx { NoTransactionBlock } else { Ddl }, "DROP")
        }
        "alter" => {
            let what = lx.next();
            let no_tx = is_kw(what, "system")
                || (is_kw(what, "subscription")
                    && top_level(lx.clone()).any(|t| t.is_kw("publication") || t.is_kw("refresh")))
                || (is_kw(what, "table")
                    && top_level(lx.clone()).any(|t| t.is_kw("detach"))
                    && top_level(lx.clone()).any(|t| t.is_kw("concurrently")))
                || (is_kw(what, "database") && set_tablespace(lx));
            Classified::new(if no_tx { NoTransactionBlock } else { Ddl }, "ALTER")
        }
        "comment" => Classified::new(Ddl, "COMMENT"),
        "grant" => Classified::new(Ddl, "GRANT"),
        "revoke" => Classified::new(Ddl, "REVOKE"),
        "security" => Classified::new(Ddl, "SECURITY LABEL"),
        "reassign" => Classified::new(Ddl, "REASSIGN OWNED"),
        "import" => Classified::new(Ddl, "IMPORT FOREIGN SCHEMA"),
        _ => Classified::new(Write, "UNKNOWN"),
    }
}

/// The tokens at parenthesis depth 0 (parenthesised groups skipped).
fn top_level(lx: Lexer<'_>) -> impl Iterator<Item = Token<'_>> {
    let mut depth = 0u32;
    lx.filter(move |t| {
        let was = depth;
        if t.is_punct(b'(') {
            depth = depth.saturating_add(1);
        } else if t.is_punct(b')') {
            depth = depth.saturating_sub(1);
            return false;
        }
        was == 0 && depth == 0
    })
}

fn set_tablespace(lx: Lexer<'_>) -> bool {
    let mut prev_set = false;
    for t in top_level(lx) {
        if prev_set && t.is_kw("tablespace") {
            return true;
        }
        prev_set = t.is_kw("set");
    }
    false
}

fn rollback(mut lx: Lexer<'_>) -> Classified<'_> {
    let mut t = lx.next();
    if is_kw(t, "prepared") {
        let mut c = Classified::new(Kind::Transaction(Tx::RollbackPrepared), "ROLLBACK PREPARED");
        c.name = lx
            .next()
            .filter(|t| t.kind == TokenKind::String)
            .map(|t| t.text);
        return c;
    }
    if is_kw(t, "work") || is_kw(t, "transaction") {
        t = lx.next();
    }
    if is_kw(t, "to") {
        t = lx.next();
        if is_kw(t, "savepoint") {
            t = lx.next();
        }
        let mut c = Classified::new(Kind::Transaction(Tx::RollbackTo), "ROLLBACK");
        c.name = name_of(t);
        return c;
    }
    Classified::new(Kind::Transaction(Tx::Rollback), "ROLLBACK")
}

fn prepare<'a>(sql: &'a str, mut lx: Lexer<'a>) -> Classified<'a> {
    let name = lx.next();
    if is_kw(name, "transaction") {
        let mut c = Classified::new(
            Kind::Transaction(Tx::PrepareTransaction),
            "PREPARE TRANSACTION",
        );
        c.name = lx
            .next()
            .filter(|t| t.kind == TokenKind::String)
            .map(|t| t.text);
        return c;
    }
    let mut c = Classified::new(Kind::SessionState, "PREPARE");
    c.prepared_name = name_of(name);
    // PREPARE name [ ( type, … ) ] AS statement
    let mut rest = top_level(lx);
    if rest.any(|t| t.is_kw("as")) {
        // The body's flags are already in the whole-statement scan.
        c.body = rest.next().map(|body| rest_from(sql, body));
    }
    c
}

fn declare<'a>(sql: &'a str, mut lx: Lexer<'a>, hook: &dyn Fn(&str) -> bool) -> Classified<'a> {
    let name = lx.next();
    // DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR [{WITH|WITHOUT} HOLD] FOR query
    let body = lx.by_ref().find(|t| t.is_kw("for")).and_then(|_| lx.next());
    let mut c = Classified::new(Kind::SessionState, "DECLARE CURSOR");
    c.name = name_of(name);
    if let Some(b) = body {
        let text = rest_from(sql, b);
        c.body = Some(text);
        let s = scan(text, hook);
        if s.writes || s.into.is_some() {
            c.kind = Kind::Write;
        }
    } else {
        c.kind = Kind::Write;
    }
    c
}

fn copy<'a>(sql: &'a str, lx: Lexer<'a>, hook: &dyn Fn(&str) -> bool) -> Classified<'a> {
    // COPY table [(cols)] {FROM|TO} … or COPY (query) TO …
    let query = peek(&lx).filter(|t| t.is_punct(b'(')).map(|t| t.start);
    let direction = top_level(lx).find(|t| t.is_kw("from") || t.is_kw("to"));
    match direction {
        Some(t) if t.is_kw("to") => {
            let kind = match query {
                Some(q) => {
                    let text = sql.get(q..t.start).unwrap_or("");
                    match query_kind(&scan(text, hook), false) {
                        Kind::Read => Kind::Read,
                        _ => Kind::Write,
                    }
                }
                None => Kind::Read,
            };
            Classified::new(kind, "COPY")
        }
        _ => Classified::new(Kind::Write, "COPY"),
    }
}

fn explain<'a>(
    sql: &'a str,
    lx: Lexer<'a>,
    hook: &dyn Fn(&str) -> bool,
    depth: u32,
) -> Classified<'a> {
    let mut it = lx.peekable();
    let mut analyze = false;
    if it.peek().is_some_and(|t| t.is_punct(b'(')) {
        // EXPLAIN ( option [ value ] [, …] ) statement
        it.next();
        let mut option_start = true;
        let mut in_analyze = false;
        for t in it.by_ref() {
            if t.is_punct(b')') {
                break;
            }
            if t.is_punct(b',') {
                option_start = true;
                in_analyze = false;
                continue;
            }
            if option_start {
                in_analyze = t.is_kw("analyze") || t.is_kw("analyse");
                analyze |= in_analyze;
            } else if in_analyze {
                let off = ["false", "off", "no", "0"]
                    .iter()
                    .any(|w| t.text.eq_ignore_ascii_case(w));
                if off {
                    analyze = false;
                }
            }
            option_start = false;
        }
    } else {
        while let Some(t) = it.peek() {
            if t.is_kw("analyze") || t.is_kw("analyse") {
                analyze = true;
            } else if !t.is_kw("verbose") {
                break;
            }
            it.next();
        }
    }
    let inner = it.next();
    let mut c = Classified::new(Kind::Read, "EXPLAIN");
    let Some(inner) = inner else {
        c.kind = Kind::Write;
        return c;
    };
    let body = rest_from(sql, inner);
    c.body = Some(body);
    if analyze {
        c.kind = if depth >= MAX_DEPTH {
            Kind::Write
        } else {
            match classify_depth(body, hook, depth + 1).kind {
                k @ (Kind::Read | Kind::LeadOnly) => k,
                _ => Kind::Write,
            }
        };
    }
    c
}

fn create<'a>(sql: &'a str, mut lx: Lexer<'a>, hook: &dyn Fn(&str) -> bool) -> Classified<'a> {
    use Kind::*;
    let mut t = lx.next();
    if is_kw(t, "or") {
        lx.next(); // REPLACE
        t = lx.next();
    }
    if is_kw(t, "local") || is_kw(t, "global") {
        t = lx.next();
    }
    let temp = is_kw(t, "temp") || is_kw(t, "temporary");
    if ["database", "tablespace", "subscription"]
        .iter()
        .any(|w| is_kw(t, w))
    {
        return Classified::new(NoTransactionBlock, "CREATE");
    }
    if is_kw(t, "unique") {
        t = lx.next();
    }
    if is_kw(t, "index") {
        let kind = if is_kw(lx.next(), "concurrently") {
            NoTransactionBlock
        } else {
            Ddl
        };
        return Classified::new(kind, "CREATE");
    }
    let unlogged = is_kw(t, "unlogged");
    let what = if temp || unlogged { lx.next() } else { t };
    let table = is_kw(what, "table");
    let matview = is_kw(what, "materialized");
    // … AS query at the top level: the query runs now.
    let query = if table || matview || temp {
        top_level_as_query(lx)
    } else {
        None
    };
    let query_writes = query.is_some_and(|q| scan(rest_from(sql, q), hook).writes);
    if temp {
        // Temporary objects are session-local but exist on every node.
        let is_view = is_kw(what, "view") || is_kw(what, "recursive");
        let kind = if query_writes && !is_view {
            Write
        } else {
            SessionState
        };
        return Classified::new(kind, "CREATE");
    }
    if query.is_some() && (table || matview) {
        return Classified::new(Write, "CREATE");
    }
    Classified::new(Ddl, "CREATE")
}

/// The first token after a top-level `AS` (the query of `CREATE TABLE … AS query`).
fn top_level_as_query(lx: Lexer<'_>) -> Option<Token<'_>> {
    let mut depth = 0u32;
    let mut prev_as = false;
    for t in lx {
        if depth == 0 && prev_as {
            return Some(t);
        }
        prev_as = depth == 0 && t.is_kw("as");
        if t.is_punct(b'(') {
            depth = depth.saturating_add(1);
        } else if t.is_punct(b')') {
            depth = depth.saturating_sub(1);
        }
    }
    None
}

/// What one pass over a statement's tokens found.
#[derive(Debug, Default)]
struct Scan {
    /// A writing or unknown function, a locking clause, or a data-modifying sub-statement.
    writes: bool,
    /// A writing or unknown function.
    calls_writing_function: bool,
    /// `pg_notify()` was called.
    notify: bool,
    /// `SELECT … INTO`: `Some(true)` for a temporary table.
    into: Option<bool>,
    flags: Nondeterminism,
    unterminated: bool,
    /// Another statement follows a top-level `;`.
    multi: bool,
    /// For a statement starting with WITH: the main command ("SELECT", "INSERT", …).
    main: Option<&'static str>,
}

/// The last few significant tokens, most recent first.
struct History<'a> {
    ring: [Option<Token<'a>>; 4],
    n: usize,
}

impl<'a> History<'a> {
    fn push(&mut self, t: Token<'a>) {
        self.ring[self.n % 4] = Some(t);
        self.n = self.n.wrapping_add(1);
    }

    /// `back(1)` is the previous token.
    fn back(&self, k: usize) -> Option<Token<'a>> {
        if k == 0 || k > 4 || k > self.n {
            return None;
        }
        self.ring[(self.n - k) % 4]
    }
}

fn scan(sql: &str, hook: &dyn Fn(&str) -> bool) -> Scan {
    let mut s = Scan::default();
    let mut lx = Lexer::new(sql);
    let mut hist = History {
        ring: [None; 4],
        n: 0,
    };
    let mut nesting = Nesting::default();
    let mut ended = false;
    let mut with_list = false;
    let mut with_depth = 0u32;
    let mut prefix = true;
    // A now-word literal waiting for the next token: Some(exact) until a cast decides.
    let mut pending_now: Option<bool> = None;
    let mut buf = [0u8; NAMEDATALEN];
    while let Some(t) = lx.next() {
        if ended {
            s.multi = true;
            break;
        }
        let depth = nesting.depth();
        if nesting.feed(&t) {
            ended = true;
            continue;
        }
        s.unterminated |= t.unterminated;
        if let Some(exact) = pending_now.take() {
            if t.kind == TokenKind::Cast || t.is_kw("as") {
                s.flags.now = true;
            } else if exact {
                s.flags.maybe_now = true;
            }
        }
        let p1 = hist.back(1);
        let at_start = prefix;
        prefix = prefix && t.is_punct(b'(');
        match t.kind {
            TokenKind::Ident if scan_word(t.text) => {
                let w = fold_ident(t.text, &mut buf);
                if at_start && w == "with" {
                    with_list = true;
                    with_depth = depth;
                }
                let after_paren = p1.is_some_and(|p| p.is_punct(b'(') || p.is_punct(b')'));
                let main_pos = with_list && depth == with_depth && s.main.is_none();
                match w {
                    "current_timestamp" | "current_date" | "current_time" | "localtime"
                    | "localtimestamp" => s.flags.now = true,
                    "update" => {
                        let p2 = hist.back(2);
                        let locking = is_kw(p1, "for")
                            || (is_kw(p1, "key") && is_kw(p2, "no") && is_kw(hist.back(3), "for"));
                        if locking || after_paren || main_pos {
                            s.writes = true;
                        }
                        if main_pos && !locking {
                            s.main = Some("UPDATE");
                        }
                    }
                    "share"
                        if is_kw(p1, "for") || (is_kw(p1, "key") && is_kw(hist.back(2), "for")) =>
                    {
                        s.writes = true
                    }
                    "insert" | "delete" | "merge" => {
                        if after_paren || main_pos {
                            s.writes = true;
                        }
                        if main_pos {
                            s.main = Some(match w {
                                "insert" => "INSERT",
                                "delete" => "DELETE",
                                _ => "MERGE",
                            });
                        }
                    }
                    "select" | "values" | "table" if main_pos => s.main = Some("SELECT"),
                    "into" if !is_kw(p1, "insert") && !is_kw(p1, "merge") => {
                        let next = peek(&lx);
                        let temp = ["temp", "temporary", "local", "global"]
                            .iter()
                            .any(|w| is_kw(next, w));
                        s.into = Some(temp);
                    }
                    _ => {}
                }
            }
            TokenKind::String => {
                if let Some(exact) = now_word(t.string_body()) {
                    let typed = p1.is_some_and(|p| {
                        ["date", "time", "timestamp", "timestamptz", "timetz", "zone"]
                            .iter()
                            .any(|w| p.is_kw(w))
                    }) || (p1.is_some_and(|p| p.is_punct(b'('))
                        && is_kw(hist.back(2), "cast"));
                    if typed {
                        s.flags.now = true;
                    } else {
                        pending_now = Some(exact);
                    }
                }
            }
            TokenKind::Punct(b'(') => {
                let cte_name = with_list && s.main.is_none() && depth == with_depth;
                call(&hist, cte_name, hook, &mut s)
            }
            _ => {}
        }
        hist.push(t);
    }
    if pending_now == Some(true) {
        s.flags.maybe_now = true;
    }
    s
}

/// Could this identifier be one of the key words `scan` looks at? A cheap filter on length
/// and first letter that spares folding most names.
#[inline]
fn scan_word(text: &str) -> bool {
    let first = text.as_bytes().first().map_or(0, |b| b | 0x20);
    matches!(
        (text.len(), first),
        (4, b'i' | b'w')
            | (5, b's' | b'm' | b't')
            | (6, b'u' | b'i' | b'd' | b's' | b'v')
            | (9 | 14, b'l')
            | (12 | 17, b'c')
    )
}

/// `'now'`, `'today'`, `'tomorrow'`, `'yesterday'` (any case, surrounding blanks): `Some(true)`
/// when the literal is exactly the word, `Some(false)` when the word is followed by more
/// (`'today 10:00'`), else `None`.
fn now_word(body: &str) -> Option<bool> {
    let body = body.trim();
    let word = body
        .split(|c: char| c.is_ascii_whitespace())
        .next()
        .unwrap_or("");
    let hit = ["now", "today", "tomorrow", "yesterday"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w));
    hit.then_some(word.len() == body.len())
}

/// At a `(`: if the tokens before it name a function being called, account for the call.
fn call(hist: &History<'_>, cte_name: bool, hook: &dyn Fn(&str) -> bool, s: &mut Scan) {
    let Some(name) = hist.back(1).filter(|t| t.is_name()) else {
        return;
    };
    let qualified = hist.back(2).is_some_and(|t| t.is_punct(b'.'));
    let schema = if qualified {
        hist.back(3).filter(|t| t.is_name())
    } else {
        None
    };
    if qualified && schema.is_none() {
        // `x.(` or `"a".b.c(`: not something we understand; unsure.
        s.writes = true;
        s.calls_writing_function = true;
        return;
    }
    let before = if qualified {
        hist.back(4)
    } else {
        hist.back(2)
    };
    if !qualified
        && name.kind == TokenKind::Ident
        && NOT_CALLS.binary_search(&lower(name.text).as_str()).is_ok()
    {
        return;
    }
    if let Some(b) = before {
        let alias_or_type = b.is_punct(b')')
            || b.kind == TokenKind::Cast
            || ["as", "ordinality", "into", "table", "references"]
                .iter()
                .any(|w| b.is_kw(w));
        if alias_or_type {
            return;
        }
    }
    if cte_name {
        // WITH name ( columns ) AS ( … )
        return;
    }
    let mut nbuf = [0u8; NAMEDATALEN];
    let fname = fold_ident(name.text, &mut nbuf);
    let mut sbuf = [0u8; NAMEDATALEN];
    let sname = schema.map(|t| fold_ident(t.text, &mut sbuf));
    let catalog = sname.is_none_or(|s| s == "pg_catalog");

    match effect(fname) {
        Effect::Writes(flag) => {
            s.writes = true;
            s.calls_writing_function = true;
            set_flag(&mut s.flags, flag);
            return;
        }
        Effect::Notify => {
            s.notify = true;
            return;
        }
        Effect::ReadOnly(flag) => {
            set_flag(&mut s.flags, flag);
            if catalog || flag == Flag::Uuid {
                return;
            }
        }
        Effect::Unknown => {
            if catalog && is_read_only_builtin(fname) {
                return;
            }
        }
    }
    let read_only = match sname {
        None => hook(fname),
        Some(schema) => {
            let mut q = [0u8; 2 * NAMEDATALEN];
            let (a, b) = (schema.as_bytes(), fname.as_bytes());
            q[..a.len()].copy_from_slice(a);
            q[a.len()] = b'.';
            q[a.len() + 1..a.len() + 1 + b.len()].copy_from_slice(b);
            hook(std::str::from_utf8(&q[..a.len() + 1 + b.len()]).unwrap_or(""))
        }
    };
    if !read_only {
        s.writes = true;
        s.calls_writing_function = true;
    }
}

/// A short ASCII-lowercased copy for key-word look-up (non-allocating: fixed buffer).
struct Lower {
    buf: [u8; 24],
    len: usize,
}

impl Lower {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

fn lower(text: &str) -> Lower {
    let mut l = Lower {
        buf: [0; 24],
        len: 0,
    };
    if text.len() <= l.buf.len() && text.is_ascii() {
        for (d, s) in l.buf.iter_mut().zip(text.bytes()) {
            *d = s.to_ascii_lowercase();
        }
        l.len = text.len();
    }
    l
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    None,
    Now,
    Clock,
    Random,
    Uuid,
    Sequence,
    LargeObject,
}

fn set_flag(f: &mut Nondeterminism, flag: Flag) {
    match flag {
        Flag::None => {}
        Flag::Now => f.now = true,
        Flag::Clock => f.clock = true,
        Flag::Random => f.random = true,
        Flag::Uuid => f.uuid = true,
        Flag::Sequence => f.sequence = true,
        Flag::LargeObject => f.large_object = true,
    }
}

enum Effect {
    /// Writes or changes state, whatever the hook says.
    Writes(Flag),
    Notify,
    /// Read-only but non-deterministic (when it is the built-in one).
    ReadOnly(Flag),
    Unknown,
}

fn effect(name: &str) -> Effect {
    match name {
        "nextval" | "setval" => Effect::Writes(Flag::Sequence),
        "setseed" => Effect::Writes(Flag::Random),
        "lo_creat" | "lo_create" | "lo_from_bytea" | "lo_import" => {
            Effect::Writes(Flag::LargeObject)
        }
        // The session's LISTENs run on the lead only: so must the question which they are.
        "pg_notify" | "pg_listening_channels" => Effect::Notify,
        "now"
        | "transaction_timestamp"
        | "statement_timestamp"
        | "current_timestamp"
        | "current_date"
        | "current_time"
        | "localtime"
        | "localtimestamp" => Effect::ReadOnly(Flag::Now),
        "clock_timestamp" | "timeofday" => Effect::ReadOnly(Flag::Clock),
        "random" | "random_normal" => Effect::ReadOnly(Flag::Random),
        "gen_random_uuid" | "uuid_generate_v1" | "uuid_generate_v1mc" | "uuid_generate_v4"
        | "uuidv4" | "uuidv7" => Effect::ReadOnly(Flag::Uuid),
        "currval" | "lastval" => Effect::ReadOnly(Flag::Sequence),
        _ if WRITING.binary_search(&name).is_ok()
            || WRITING_PREFIXES.iter().any(|p| name.starts_with(p)) =>
        {
            Effect::Writes(Flag::None)
        }
        _ => Effect::Unknown,
    }
}

fn is_read_only_builtin(name: &str) -> bool {
    READ_ONLY.binary_search(&name).is_ok() || READ_ONLY_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Functions that write or change session or server state (sorted).
const WRITING: &[&str] = &[
    "dblink",
    "dblink_exec",
    "dblink_send_query",
    "pg_cancel_backend",
    "pg_import_system_collations",
    "pg_promote",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_terminate_backend",
    "set_config",
];

const WRITING_PREFIXES: &[&str] = &[
    "brin_",
    "dblink_",
    "gin_clean",
    "lo_",
    "pg_advisory",
    "pg_backup_",
    "pg_create_",
    "pg_drop_",
    "pg_file_",
    "pg_log_",
    "pg_logical_",
    "pg_replication_",
    "pg_start_backup",
    "pg_stat_reset",
    "pg_stop_backup",
    "pg_try_advisory",
    "pg_wal_replay_",
];

/// Built-in functions whose name prefix says they only compute.
const READ_ONLY_PREFIXES: &[&str] = &[
    "array_",
    "date_",
    "has_",
    "json_",
    "jsonb_",
    "pg_get_",
    "pg_stat_get_",
    "regexp_",
    "string_",
    "to_",
];

/// Key words that may stand before `(` without being a function call (sorted).
#[rustfmt::skip]
const NOT_CALLS: &[&str] = &[
    "all", "and", "any", "array", "as", "asc", "between", "by", "case", "cast", "check", "collate",
    "conflict", "constraint", "cube", "default", "delete", "desc", "distinct", "do", "else", "end",
    "escape", "except", "exclude", "exists", "filter", "first", "following", "for", "from", "group",
    "groups", "having", "ilike", "in", "insert", "intersect", "into", "is", "join", "key", "last",
    "lateral", "like", "limit", "materialized", "merge", "not", "nulls", "of", "offset", "on",
    "only", "operator", "or", "order", "others", "over", "overlaps", "partition", "preceding",
    "primary", "range", "recursive", "references", "returning", "rollup", "row", "rows", "select",
    "set", "sets", "similar", "some", "table", "tablesample", "then", "ties", "to", "unbounded",
    "union", "unique", "update", "using", "values", "when", "where", "window", "with", "within",
];

/// Built-in functions that only compute (sorted): aggregates, window, string, math, date/time,
/// network, range, text search, XML, type casts written as calls, and catalog look-ups.
#[rustfmt::skip]
const READ_ONLY: &[&str] = &[
    "abbrev", "abs", "acos", "acosd", "acosh", "age", "any_value", "ascii", "asin", "asind",
    "asinh", "atan", "atan2", "atan2d", "atand", "atanh", "avg", "bernoulli", "bit", "bit_and",
    "bit_count", "bit_length", "bit_or", "bit_xor", "bool", "bool_and", "bool_or", "bound_box",
    "box", "bpchar", "broadcast", "btrim", "bytea", "cardinality", "cbrt", "ceil", "ceiling",
    "center", "char", "char_length", "character", "character_length", "chr", "circle",
    "clock_timestamp", "coalesce", "col_description", "concat", "concat_ws", "convert",
    "convert_from", "convert_to", "corr", "cos", "cosd", "cosh", "cot", "cotd", "count",
    "covar_pop", "covar_samp", "crc32", "crc32c", "cume_dist", "current_catalog",
    "current_database", "current_date", "current_query", "current_role", "current_schema",
    "current_schemas", "current_setting", "current_time", "current_timestamp", "current_user",
    "date", "datemultirange", "daterange", "decimal", "decode", "degrees", "dense_rank",
    "diameter", "div", "double", "encode", "enum_first", "enum_last", "enum_range", "erf", "erfc",
    "every", "exp", "extract", "factorial", "family", "first_value", "float", "float4", "float8",
    "floor", "format", "format_type", "gcd", "gen_random_uuid", "generate_series",
    "generate_subscripts", "get_bit", "get_byte", "get_current_ts_config", "greatest", "grouping",
    "hash_array", "hash_numeric", "hashtext", "height", "host", "hostmask", "inet",
    "inet_client_addr", "inet_client_port", "inet_merge", "inet_same_family", "inet_server_addr",
    "inet_server_port", "initcap", "int", "int2", "int4", "int4multirange", "int4range", "int8",
    "int8multirange", "int8range", "integer", "interval", "isclosed", "isempty", "isfinite",
    "isopen", "justify_days", "justify_hours", "justify_interval", "lag", "last_value", "lastval",
    "lcm", "lead", "least", "left", "length", "line", "ln", "localtime", "localtimestamp", "log",
    "log10", "lower", "lower_inc", "lower_inf", "lpad", "lseg", "ltrim", "macaddr8_set7bit",
    "make_date", "make_interval", "make_time", "make_timestamp", "make_timestamptz", "masklen",
    "max", "md5", "min", "min_scale", "mod", "mode", "multirange", "netmask", "network",
    "nextafter", "normalize", "now", "npoints", "nth_value", "ntile", "nullif", "num_nonnulls",
    "num_nulls", "numeric", "numnode", "numrange", "obj_description", "octet_length", "overlay",
    "parse_ident", "path", "percent_rank", "percentile_cont", "percentile_disc", "pg_backend_pid",
    "pg_blocking_pids", "pg_char_to_encoding", "pg_client_encoding", "pg_collation_is_visible",
    "pg_column_compression", "pg_column_is_updatable", "pg_column_size", "pg_conf_load_time",
    "pg_conversion_is_visible", "pg_current_snapshot", "pg_current_wal_insert_lsn",
    "pg_current_wal_lsn", "pg_current_xact_id", "pg_current_xact_id_if_assigned",
    "pg_database_size", "pg_describe_object", "pg_encoding_to_char", "pg_function_is_visible",
    "pg_get_object_address", "pg_has_role", "pg_identify_object", "pg_identify_object_as_address",
    "pg_index_column_has_property", "pg_index_has_property", "pg_indexam_has_property",
    "pg_indexes_size", "pg_input_error_info", "pg_input_is_valid", "pg_is_in_recovery",
    "pg_is_other_temp_schema", "pg_is_wal_replay_paused", "pg_jit_available",
    "pg_last_committed_xact", "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp", "pg_listening_channels", "pg_my_temp_schema",
    "pg_notification_queue_usage", "pg_opclass_is_visible", "pg_operator_is_visible",
    "pg_opfamily_is_visible", "pg_options_to_table", "pg_partition_ancestors", "pg_partition_root",
    "pg_partition_tree", "pg_postmaster_start_time", "pg_relation_filenode",
    "pg_relation_filepath", "pg_relation_is_publishable", "pg_relation_is_updatable",
    "pg_relation_size", "pg_safe_snapshot_blocking_pids", "pg_settings_get_flags",
    "pg_show_all_settings", "pg_size_bytes", "pg_size_pretty", "pg_sleep", "pg_sleep_for",
    "pg_sleep_until", "pg_snapshot_xip", "pg_snapshot_xmax", "pg_snapshot_xmin",
    "pg_statistics_obj_is_visible", "pg_table_is_visible", "pg_table_size",
    "pg_tablespace_databases", "pg_tablespace_location", "pg_tablespace_size",
    "pg_total_relation_size", "pg_trigger_depth", "pg_ts_config_is_visible",
    "pg_ts_dict_is_visible", "pg_ts_parser_is_visible", "pg_ts_template_is_visible",
    "pg_type_is_visible", "pg_typeof", "pg_visible_in_snapshot", "pg_wal_lsn_diff",
    "pg_xact_commit_timestamp", "pg_xact_status", "phraseto_tsquery", "pi", "plainto_tsquery",
    "point", "polygon", "popen", "position", "power", "querytree", "quote_ident", "quote_literal",
    "quote_nullable", "radians", "radius", "random", "random_normal", "range_agg",
    "range_intersect_agg", "range_merge", "rank", "real", "regclass", "regr_avgx", "regr_avgy",
    "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx", "regr_sxy", "regr_syy",
    "repeat", "replace", "reverse", "right", "round", "row_number", "row_to_json", "rpad", "rtrim",
    "scale", "session_user", "set_bit", "set_byte", "set_masklen", "setweight", "sha224", "sha256",
    "sha384", "sha512", "shobj_description", "sign", "similar_escape", "sin", "sind", "sinh",
    "slope", "smallint", "split_part", "sqrt", "starts_with", "statement_timestamp", "stddev",
    "stddev_pop", "stddev_samp", "strip", "strpos", "substr", "substring", "sum", "system",
    "system_user", "tan", "tand", "tanh", "text", "time", "timeofday", "timestamp", "timestamptz",
    "timetz", "timezone", "transaction_timestamp", "translate", "trim", "trim_scale", "trunc",
    "ts_debug", "ts_delete", "ts_filter", "ts_headline", "ts_lexize", "ts_parse", "ts_rank",
    "ts_rank_cd", "ts_token_type", "tsquery_phrase", "tsrange", "tstzmultirange", "tstzrange",
    "tsvector_to_array", "txid_current", "txid_current_if_assigned", "txid_current_snapshot",
    "txid_snapshot_xip", "txid_snapshot_xmax", "txid_snapshot_xmin", "txid_status",
    "txid_visible_in_snapshot", "unistr", "unnest", "upper", "upper_inc", "upper_inf", "user",
    "uuid_extract_timestamp", "uuid_extract_version", "uuid_generate_v1", "uuid_generate_v1mc",
    "uuid_generate_v3", "uuid_generate_v4", "uuid_generate_v5", "uuid_nil", "uuid_ns_dns",
    "uuid_ns_oid", "uuid_ns_url", "uuid_ns_x500", "var_pop", "var_samp", "varbit", "varchar",
    "variance", "version", "websearch_to_tsquery", "width", "width_bucket", "xml_is_well_formed",
    "xml_is_well_formed_content", "xml_is_well_formed_document", "xmlagg", "xmlcomment",
    "xmlconcat", "xmlelement", "xmlexists", "xmlforest", "xmlparse", "xmlpi", "xmlroot",
    "xmlserialize", "xmltext", "xpath", "xpath_exists",
];

#[cfg(test)]
mod tests {
    use super::super::lexer::split_statements;
    use super::*;
    use Kind::*;

    /// Flags from a comma-separated list: now, clock, random, uuid, seq, maybe, lo.
    fn flags(spec: &str) -> Nondeterminism {
        let mut f = Nondeterminism::default();
        for w in spec.split(',').filter(|w| !w.is_empty()) {
            match w {
                "now" => f.now = true,
                "clock" => f.clock = true,
                "random" => f.random = true,
                "uuid" => f.uuid = true,
                "seq" => f.sequence = true,
                "maybe" => f.maybe_now = true,
                "lo" => f.large_object = true,
                _ => panic!("bad flag {w}"),
            }
        }
        f
    }

    const CASES: &[(&str, Kind, &str)] = &[
        // Plain reads.
        ("SELECT 1", Read, ""),
        ("select a, b from t where id = $1", Read, ""),
        ("  SeLeCt * FROM t;  ", Read, ""),
        ("VALUES (1, 'a'), (2, 'b')", Read, ""),
        ("TABLE t", Read, ""),
        ("(SELECT 1) UNION (SELECT 2)", Read, ""),
        ("SELECT count(*), sum(x), avg(x), min(x), max(x) FROM t GROUP BY y HAVING count(*) > 1", Read, ""),
        ("SELECT coalesce(a, b), lower(s), upper(s), length(s), substr(s, 1, 2), md5(s), abs(-1)", Read, ""),
        ("SELECT pg_sleep(1), version(), current_setting('x'), pg_backend_pid()", Read, ""),
        ("SELECT pg_catalog.lower('A')", Read, ""),
        ("SELECT \"lower\"('A')", Read, ""),
        ("SELECT x::numeric(10,2), CAST(y AS varchar(20)), z::timestamp(3) FROM t", Read, ""),
        ("SELECT * FROM generate_series(1, 3) g(i)", Read, ""),
        ("SELECT * FROM generate_series(1, 3) AS g(i) JOIN unnest(ARRAY[1]) WITH ORDINALITY u(x, n) ON true", Read, ""),
        ("SELECT * FROM (VALUES (1, 2)) v(a, b)", Read, ""),
        ("SELECT a FROM t WHERE b IN (1, 2) AND EXISTS (SELECT 1) OR NOT (a = ANY (ARRAY[1]))", Read, ""),
        ("SELECT row_number() OVER (PARTITION BY a ORDER BY b), count(*) FILTER (WHERE c) FROM t", Read, ""),
        ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM t", Read, ""),
        ("SELECT substring(s FROM 1 FOR 2), extract(year FROM d), position('a' IN s), trim(both 'x' FROM s)", Read, ""),
        ("SELECT json_build_object('a', 1), jsonb_agg(x), to_char(d, 'YYYY'), array_agg(x), string_agg(s, ',')", Read, ""),
        ("SELECT a FROM t GROUP BY GROUPING SETS ((a), ()), CUBE (a, b), ROLLUP (a)", Read, ""),
        ("SELECT * FROM t TABLESAMPLE bernoulli (10)", Read, ""),
        ("SELECT pg_get_userbyid(1), has_table_privilege('t', 'select'), pg_table_is_visible(1)", Read, ""),
        ("WITH x AS (SELECT 1) SELECT * FROM x", Read, ""),
        ("WITH RECURSIVE r(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT n FROM r", Read, ""),
        ("WITH a AS MATERIALIZED (SELECT 1), b(x) AS NOT MATERIALIZED (SELECT 2) SELECT * FROM a, b", Read, ""),
        ("SHOW search_path", Read, ""),
        ("SHOW ALL", Read, ""),
        ("SELECT 1 FROM t ORDER BY a NULLS FIRST LIMIT (5) OFFSET (1)", Read, ""),
        ("SELECT CASE WHEN a THEN (1) ELSE (2) END FROM t", Read, ""),
        ("SELECT (a).b, t.c FROM t", Read, ""),
        // What psql's \dt and the JDBC driver send.
        ("SELECT n.nspname as \"Schema\", c.relname as \"Name\", CASE c.relkind WHEN 'r' THEN 'table' END as \"Type\", \
          pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\" FROM pg_catalog.pg_class c \
          LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','') \
          AND n.nspname <> 'pg_catalog' AND n.nspname !~ '^pg_toast' AND c.relname OPERATOR(pg_catalog.~) '^(t)$' \
          COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2;", Read, ""),
        ("SELECT typinput='pg_catalog.array_in'::regproc as is_array, typtype, typname, pg_type.oid \
          FROM pg_catalog.pg_type LEFT JOIN (select ns.oid as nspoid, ns.nspname, r.r from pg_namespace as ns \
          join ( select s.r, (current_schemas(false))[s.r] as nspname from \
          generate_series(1, array_upper(current_schemas(false), 1)) as s(r) ) as r using ( nspname ) ) as sp \
          ON sp.nspoid = typnamespace WHERE pg_type.oid = $1 ORDER BY sp.r, pg_type.oid DESC", Read, ""),
        // Keywords hidden in strings, comments, dollar quotes, quoted identifiers.
        ("SELECT 'DELETE FROM t'", Read, ""),
        ("SELECT $$ nextval('s') $$", Read, ""),
        ("SELECT $tag$ ; insert into t values (1); $tag$", Read, ""),
        ("/* insert */ select 1", Read, ""),
        ("-- update t set a = 1\nselect 1", Read, ""),
        ("SELECT \"insert\" FROM t", Read, ""),
        ("SELECT E'it\\'s nextval(''s'')'", Read, ""),
        ("SELECT 1 /* FOR UPDATE */", Read, ""),
        // Nondeterminism in reads.
        ("SELECT now()", Read, "now"),
        ("SELECT CURRENT_TIMESTAMP, current_date, Current_Time, localtime, LOCALTIMESTAMP(2)", Read, "now"),
        ("SELECT transaction_timestamp(), statement_timestamp()", Read, "now"),
        ("SELECT pg_catalog.now()", Read, "now"),
        ("SELECT clock_timestamp(), timeofday()", Read, "clock"),
        ("SELECT random()", Read, "random"),
        ("SELECT gen_random_uuid(), uuid_generate_v4()", Read, "uuid"),
        ("SELECT extensions.uuid_generate_v4()", Read, "uuid"),
        ("SELECT currval('s'), lastval()", Read, "seq"),
        ("SELECT 'now'::timestamptz", Read, "now"),
        ("SELECT timestamp 'now', date 'today', 'tomorrow'::date, CAST('yesterday' AS date)", Read, "now"),
        ("SELECT TIMESTAMP WITH TIME ZONE 'now'", Read, "now"),
        ("SELECT 'today 10:00'::timestamp", Read, "now"),
        ("SELECT $$now$$::date", Read, "now"),
        ("SELECT 'now'", Read, "maybe"),
        ("SELECT 'nowhere', 'today is a good day'", Read, ""),
        // Writes.
        ("INSERT INTO t VALUES (1)", Write, ""),
        ("insert into t(a, b) select a, b from u", Write, ""),
        ("UPDATE t SET a = 1 WHERE id = 2", Write, ""),
        ("DELETE FROM t", Write, ""),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a", Write, ""),
        ("TRUNCATE t", Write, ""),
        ("CALL p(1)", Write, ""),
        ("DO $$ BEGIN PERFORM 1; END $$", Write, ""),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", Write, ""),
        ("REFRESH MATERIALIZED VIEW mv", Write, ""),
        ("INSERT INTO t (ts, id, u, r) VALUES (now(), nextval('s'), gen_random_uuid(), random())", Write, "now,seq,uuid,random"),
        ("INSERT INTO t (d) VALUES ('now')", Write, "maybe"),
        ("INSERT INTO t (d) VALUES ('now'::date)", Write, "now"),
        ("UPDATE t SET ts = clock_timestamp()", Write, "clock"),
        ("INSERT INTO now (a) VALUES (1)", Write, ""),
        ("SELECT nextval('s')", Write, "seq"),
        ("SELECT pg_catalog.nextval('s')", Write, "seq"),
        ("SELECT \"nextval\"('s')", Write, "seq"),
        ("SELECT setval('s', 10)", Write, "seq"),
        ("SELECT setseed(0.5)", Write, "random"),
        ("SELECT set_config('a.b', 'c', false)", Write, ""),
        ("SELECT pg_advisory_lock(1)", Write, ""),
        ("SELECT pg_try_advisory_xact_lock(1)", Write, ""),
        ("SELECT lo_import('/tmp/x')", Write, "lo"),
        ("SELECT dblink_exec('c', 'insert')", Write, ""),
        ("SELECT pg_terminate_backend(1), pg_cancel_backend(2)", Write, ""),
        ("SELECT pg_reload_conf()", Write, ""),
        ("SELECT my_function(1)", Write, ""),
        ("SELECT public.lower('A')", Write, ""),
        ("SELECT \"Lower\"('A')", Write, ""),
        ("SELECT myschema.now()", Write, "now"),
        ("SELECT a FROM t WHERE f(a) > 0", Write, ""),
        ("SELECT * FROM t FOR UPDATE", Write, ""),
        ("SELECT * FROM t FOR NO KEY UPDATE OF t SKIP LOCKED", Write, ""),
        ("SELECT * FROM t for share", Write, ""),
        ("SELECT * FROM t FOR KEY SHARE NOWAIT", Write, ""),
        ("SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)", Write, ""),
        ("SELECT * INTO new_t FROM t", Write, ""),
        ("SELECT * INTO UNLOGGED new_t FROM t", Write, ""),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", Write, ""),
        ("WITH i AS (insert into t values (1) returning id) select id from i", Write, ""),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", Write, ""),
        ("WITH x AS (SELECT 1) UPDATE t SET a = 1", Write, ""),
        ("WITH x AS (SELECT 1) DELETE FROM t", Write, ""),
        ("WITH a AS (WITH b AS (SELECT 1) INSERT INTO t SELECT * FROM b RETURNING *) SELECT * FROM a", Write, ""),
        ("EXPLAIN ANALYZE DELETE FROM t", Write, ""),
        ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", Write, ""),
        ("EXPLAIN (ANALYZE true) INSERT INTO t VALUES (1)", Write, ""),
        ("explain analyse verbose select nextval('s')", Write, "seq"),
        ("COPY t FROM STDIN", Write, ""),
        ("COPY t (a, b) FROM '/tmp/x' WITH (FORMAT csv)", Write, ""),
        ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", Write, ""),
        ("COPY (SELECT nextval('s')) TO STDOUT", Write, "seq"),
        ("CREATE TABLE t2 AS SELECT * FROM t", Write, ""),
        ("CREATE TABLE t2 AS (SELECT 1)", Write, ""),
        ("CREATE UNLOGGED TABLE t2 AS SELECT now()", Write, "now"),
        ("CREATE MATERIALIZED VIEW mv AS SELECT 1", Write, ""),
        ("EXECUTE p(1, 2)", Write, ""),
        ("FROBNICATE t", Write, ""),
        ("SELECT 1; DELETE FROM t", Write, ""),
        ("SELECT 'unterminated", Write, ""),
        ("SELECT 1 /* unterminated", Write, ""),
        ("SELECT $$ unterminated", Write, ""),
        ("SELECT \"unterminated", Write, ""),
        ("(((", Write, ""),
        ("'string first'", Write, ""),
        ("START something", Write, ""),
        ("WITH x AS (SELECT 1)", Write, ""),
        // LeadOnly.
        ("LISTEN ch", LeadOnly, ""),
        ("UNLISTEN *", LeadOnly, ""),
        ("NOTIFY ch, 'payload'", LeadOnly, ""),
        ("SELECT pg_notify('ch', 'x')", LeadOnly, ""),
        ("SELECT * FROM pg_listening_channels()", LeadOnly, ""),
        ("EXPLAIN ANALYZE SELECT pg_notify('ch', 'x')", LeadOnly, ""),
        ("SELECT pg_notify('ch', 'x'), nextval('s')", Write, "seq"),
        // Transactions.
        ("BEGIN", Transaction(Tx::Begin), ""),
        ("begin isolation level serializable", Transaction(Tx::Begin), ""),
        ("START TRANSACTION READ ONLY", Transaction(Tx::Begin), ""),
        ("COMMIT", Transaction(Tx::Commit), ""),
        ("END", Transaction(Tx::Commit), ""),
        ("commit work", Transaction(Tx::Commit), ""),
        ("ROLLBACK", Transaction(Tx::Rollback), ""),
        ("ABORT", Transaction(Tx::Rollback), ""),
        ("SAVEPOINT sp1", Transaction(Tx::Savepoint), ""),
        ("RELEASE SAVEPOINT sp1", Transaction(Tx::Release), ""),
        ("RELEASE sp1", Transaction(Tx::Release), ""),
        ("ROLLBACK TO SAVEPOINT sp1", Transaction(Tx::RollbackTo), ""),
        ("ROLLBACK WORK TO sp1", Transaction(Tx::RollbackTo), ""),
        ("PREPARE TRANSACTION 'gid1'", Transaction(Tx::PrepareTransaction), ""),
        ("COMMIT PREPARED 'gid1'", Transaction(Tx::CommitPrepared), ""),
        ("ROLLBACK PREPARED 'gid1'", Transaction(Tx::RollbackPrepared), ""),
        // Session state.
        ("SET search_path = a, b", SessionState, ""),
        ("SET LOCAL statement_timeout = 0", SessionState, ""),
        ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", SessionState, ""),
        ("SET SESSION AUTHORIZATION alice", SessionState, ""),
        ("RESET ALL", SessionState, ""),
        ("DISCARD ALL", SessionState, ""),
        ("LOAD 'auto_explain'", SessionState, ""),
        ("PREPARE p (int) AS SELECT * FROM t WHERE id = $1", SessionState, ""),
        ("PREPARE p AS INSERT INTO t VALUES (now())", SessionState, "now"),
        ("DEALLOCATE p", SessionState, ""),
        ("DEALLOCATE ALL", SessionState, ""),
        ("DECLARE c CURSOR FOR SELECT * FROM t", SessionState, ""),
        ("DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT * FROM t", SessionState, ""),
        ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", Write, ""),
        ("DECLARE c CURSOR FOR SELECT nextval('s')", Write, "seq"),
        ("FETCH 10 FROM c", SessionState, ""),
        ("MOVE NEXT IN c", SessionState, ""),
        ("CLOSE c", SessionState, ""),
        ("CLOSE ALL", SessionState, ""),
        ("CREATE TEMP TABLE tt (a int)", SessionState, ""),
        ("CREATE TEMPORARY TABLE tt (a int DEFAULT f())", SessionState, ""),
        ("CREATE LOCAL TEMP TABLE tt AS SELECT * FROM t", SessionState, ""),
        ("CREATE TEMP TABLE tt AS SELECT nextval('s')", Write, "seq"),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT f()", SessionState, ""),
        ("CREATE TEMP SEQUENCE s", SessionState, ""),
        ("SELECT * INTO TEMP tt FROM t", SessionState, ""),
        ("SELECT * INTO TEMPORARY TABLE tt FROM t", SessionState, ""),
        // DDL.
        ("CREATE TABLE t (id serial PRIMARY KEY, ts timestamptz DEFAULT now())", Ddl, "now"),
        ("CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY)", Ddl, ""),
        ("create index i on t (a)", Ddl, ""),
        ("CREATE UNIQUE INDEX i ON t (a)", Ddl, ""),
        ("CREATE VIEW v AS SELECT nextval('s')", Ddl, "seq"),
        ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql", Ddl, ""),
        ("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END", Ddl, ""),
        ("ALTER TABLE t ADD COLUMN c timestamptz DEFAULT clock_timestamp()", Ddl, "clock"),
        ("DROP TABLE t", Ddl, ""),
        ("DROP INDEX i", Ddl, ""),
        ("COMMENT ON TABLE t IS 'x'", Ddl, ""),
        ("GRANT SELECT ON t TO bob", Ddl, ""),
        ("REVOKE ALL ON t FROM bob", Ddl, ""),
        ("ANALYZE t", Ddl, ""),
        ("CHECKPOINT", Ddl, ""),
        ("CLUSTER t USING i", NoTransactionBlock, ""),
        ("CLUSTER VERBOSE t", NoTransactionBlock, ""),
        ("REINDEX TABLE t", NoTransactionBlock, ""),
        ("REINDEX (VERBOSE) INDEX i", NoTransactionBlock, ""),
        ("ALTER DATABASE d SET search_path = a", Ddl, ""),
        ("ALTER SUBSCRIPTION s DISABLE", Ddl, ""),
        // Outside a transaction block.
        ("VACUUM", NoTransactionBlock, ""),
        ("vacuum (analyze, verbose) t", NoTransactionBlock, ""),
        ("CREATE DATABASE d", NoTransactionBlock, ""),
        ("DROP DATABASE d", NoTransactionBlock, ""),
        ("CREATE TABLESPACE ts LOCATION '/x'", NoTransactionBlock, ""),
        ("DROP TABLESPACE ts", NoTransactionBlock, ""),
        ("CREATE INDEX CONCURRENTLY i ON t (a)", NoTransactionBlock, ""),
        ("CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)", NoTransactionBlock, ""),
        ("DROP INDEX CONCURRENTLY i", NoTransactionBlock, ""),
        ("REINDEX TABLE CONCURRENTLY t", NoTransactionBlock, ""),
        ("REINDEX (CONCURRENTLY) INDEX i", NoTransactionBlock, ""),
        ("REINDEX TABLE partitioned", NoTransactionBlock, ""),
        ("CLUSTER partitioned USING i", NoTransactionBlock, ""),
        ("ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY", NoTransactionBlock, ""),
        ("ALTER TABLE p DETACH PARTITION p1", Ddl, ""),
        ("ALTER SUBSCRIPTION s REFRESH PUBLICATION", NoTransactionBlock, ""),
        ("REINDEX (VERBOSE) DATABASE d", NoTransactionBlock, ""),
        ("REINDEX SYSTEM", NoTransactionBlock, ""),
        ("REINDEX SCHEMA s", NoTransactionBlock, ""),
        ("ALTER SYSTEM SET work_mem = '1MB'", NoTransactionBlock, ""),
        ("ALTER DATABASE d SET TABLESPACE ts", NoTransactionBlock, ""),
        ("CLUSTER", NoTransactionBlock, ""),
        ("CLUSTER VERBOSE", NoTransactionBlock, ""),
        ("CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p", NoTransactionBlock, ""),
        ("ALTER SUBSCRIPTION s REFRESH PUBLICATION", NoTransactionBlock, ""),
        // Reads that only look like writes.
        ("EXPLAIN DELETE FROM t", Read, ""),
        ("EXPLAIN (ANALYZE false) DELETE FROM t", Read, ""),
        ("EXPLAIN (ANALYZE off, COSTS off) UPDATE t SET a = 1", Read, ""),
        ("EXPLAIN ANALYZE SELECT * FROM t", Read, ""),
        ("EXPLAIN VERBOSE SELECT * FROM t", Read, ""),
        ("COPY t TO STDOUT", Read, ""),
        ("COPY t (a) TO STDOUT WITH (FORMAT csv)", Read, ""),
        ("COPY (SELECT a FROM t WHERE b IN (SELECT 1)) TO STDOUT", Read, ""),
        // Empty.
        ("", Empty, ""),
        ("   \n\t", Empty, ""),
        ("-- just a comment", Empty, ""),
        ("/* a /* nested */ comment */", Empty, ""),
        (";", Empty, ""),
        (" ; ; ", Empty, ""),
    ];

    #[test]
    fn table() {
        let mut failures = Vec::new();
        for &(sql, kind, spec) in CASES {
            let c = classify(sql);
            if c.kind != kind || c.nondeterministic != flags(spec) {
                failures.push(format!(
                    "{sql:?}: got {:?} {:?}, want {kind:?} {spec:?}",
                    c.kind, c.nondeterministic
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn case_variations() {
        for sql in ["select 1", "SELECT 1", "SeLeCt 1", "\n\tselect\n1\n"] {
            assert_eq!(classify(sql).kind, Read);
        }
        for sql in [
            "insert into t values (1)",
            "INSERT INTO T VALUES (1)",
            "InSeRt InTo t VaLuEs (1)",
        ] {
            assert_eq!(classify(sql).kind, Write);
        }
        for sql in [
            "SELECT NEXTVAL('s')",
            "select NextVal('s')",
            "SELECT Pg_Catalog.NEXTVAL('s')",
        ] {
            let c = classify(sql);
            assert_eq!(c.kind, Write);
            assert!(c.nondeterministic.sequence);
        }
    }

    #[test]
    fn hook_decides_unknown_functions() {
        let hook = |name: &str| matches!(name, "my_read" | "app.report");
        assert_eq!(classify_with("SELECT my_read(1)", &hook).kind, Read);
        assert_eq!(classify_with("SELECT app.report()", &hook).kind, Read);
        assert_eq!(classify_with("SELECT \"App\".report()", &hook).kind, Write);
        assert_eq!(classify_with("SELECT MY_READ(1)", &hook).kind, Read);
        assert_eq!(classify_with("SELECT other(1)", &hook).kind, Write);
        // The writing list wins over the hook.
        let yes = |_: &str| true;
        assert_eq!(classify_with("SELECT nextval('s')", &yes).kind, Write);
        assert_eq!(
            classify_with("SELECT pg_advisory_lock(1)", &yes).kind,
            Write
        );
        assert_eq!(classify_with("SELECT anything(1)", &yes).kind, Read);
        // The hook sees schema-qualified names folded.
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |name: &str| {
            seen.borrow_mut().push(name.to_string());
            false
        };
        classify_with(
            "SELECT MySchema.MyFunc(1), \"Quoted\"(2), public.lower('x')",
            &record,
        );
        assert_eq!(
            *seen.borrow(),
            vec!["myschema.myfunc", "Quoted", "public.lower"]
        );
    }

    #[test]
    fn names_and_commands() {
        let c = classify("EXECUTE my_plan (1)");
        assert_eq!(
            (c.kind, c.command, c.prepared_name),
            (Write, "EXECUTE", Some("my_plan"))
        );
        let c = classify("PREPARE \"Plan\" (int) AS UPDATE t SET a = $1;");
        assert_eq!(c.prepared_name, Some("\"Plan\""));
        assert_eq!(c.body, Some("UPDATE t SET a = $1"));
        assert_eq!(classify(c.body.unwrap()).kind, Write);
        let c = classify("DEALLOCATE PREPARE p1");
        assert_eq!(c.prepared_name, Some("p1"));
        assert_eq!(classify("DEALLOCATE ALL").prepared_name, None);
        assert_eq!(classify("SAVEPOINT s1").name, Some("s1"));
        assert_eq!(classify("ROLLBACK TO SAVEPOINT s2").name, Some("s2"));
        assert_eq!(classify("RELEASE s3").name, Some("s3"));
        assert_eq!(classify("PREPARE TRANSACTION 'g1'").name, Some("'g1'"));
        assert_eq!(classify("COMMIT PREPARED 'g2'").name, Some("'g2'"));
        assert_eq!(classify("ROLLBACK PREPARED 'g3'").name, Some("'g3'"));
        assert_eq!(classify("LISTEN \"Ch\"").name, Some("\"Ch\""));
        assert_eq!(classify("FETCH FORWARD 5 FROM cur").name, Some("cur"));
        assert_eq!(classify("CLOSE ALL").name, None);
        let c = classify("DECLARE cur CURSOR FOR SELECT 1");
        assert_eq!((c.name, c.body), (Some("cur"), Some("SELECT 1")));
        assert_eq!(classify("EXPLAIN ANALYZE SELECT 1").body, Some("SELECT 1"));

        let commands = [
            ("select 1", "SELECT"),
            ("values (1)", "SELECT"),
            ("(select 1)", "SELECT"),
            (
                "with x as (select 1) insert into t select * from x",
                "INSERT",
            ),
            ("with x as (select 1) select * from x", "SELECT"),
            ("end", "COMMIT"),
            ("abort", "ROLLBACK"),
            ("start transaction", "START TRANSACTION"),
            ("create table t (a int)", "CREATE"),
            ("analyse", "ANALYZE"),
            ("frobnicate", "UNKNOWN"),
            ("", ""),
        ];
        for (sql, command) in commands {
            assert_eq!(classify(sql).command, command, "{sql}");
        }
    }

    #[test]
    fn multi_statement_strings() {
        let sql = "BEGIN; UPDATE t SET a=1; SELECT 1; COMMIT;";
        let kinds: Vec<Kind> = split_statements(sql).map(|s| classify(s).kind).collect();
        assert_eq!(
            kinds,
            vec![Transaction(Tx::Begin), Write, Read, Transaction(Tx::Commit)]
        );

        let sql = "SELECT ';'; SELECT $x$;$x$; /* ; */ SELECT (1); -- ;\n \
                   CREATE FUNCTION f() RETURNS void AS $$ BEGIN UPDATE t SET a = 1; END; $$ LANGUAGE plpgsql;";
        let parts: Vec<&str> = split_statements(sql).collect();
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert_eq!(classify(parts[0]).kind, Read);
        assert_eq!(classify(parts[1]).kind, Read);
        assert_eq!(classify(parts[2]).kind, Read);
        assert_eq!(classify(parts[3]).kind, Ddl);
        assert!(parts[3].ends_with("LANGUAGE plpgsql"));

        let atomic = "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); UPDATE t SET a = 2; END; CALL p();";
        let parts: Vec<&str> = split_statements(atomic).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(classify(parts[0]).kind, Ddl);
        assert_eq!(classify(parts[1]).kind, Write);

        // Unsplit multi-statement text is never mistaken for its first statement.
        assert_eq!(classify("SELECT 1; SELECT 2").kind, Write);
        assert_eq!(classify("BEGIN; DELETE FROM t").kind, Write);
        assert_eq!(classify("SELECT 1;").kind, Read);
        assert_eq!(classify("SELECT 1; -- trailing comment").kind, Read);
    }

    #[test]
    fn sorted_lists() {
        for list in [READ_ONLY, WRITING, NOT_CALLS] {
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "unsorted or duplicate near {:?}",
                list.windows(2).find(|w| w[0] >= w[1])
            );
            assert!(list
                .iter()
                .all(|n| n.len() < NAMEDATALEN && n.bytes().all(|b| !b.is_ascii_uppercase())));
        }
    }

    /// A tiny xorshift generator: deterministic fuzzing without dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const PIECES: &[&str] = &[
        "'",
        "\"",
        "$",
        "$$",
        "$a$",
        "-",
        "--",
        "/",
        "*",
        "/*",
        "*/",
        ";",
        "(",
        ")",
        ":",
        "::",
        ".",
        ",",
        "\\",
        "E'",
        "U&'",
        "U&\"",
        "e",
        "x",
        "b",
        "n",
        "u",
        "&",
        "$1",
        "1",
        "1.5e",
        " ",
        "\n",
        "\t",
        "\r",
        "é",
        "日本",
        "\u{0}",
        "\u{7f}",
        "select",
        "insert",
        "with",
        "for",
        "update",
        "share",
        "key",
        "no",
        "into",
        "temp",
        "nextval",
        "now",
        "'now'",
        "explain",
        "analyze",
        "(analyze",
        "create",
        "temp",
        "table",
        "as",
        "begin",
        "atomic",
        "end",
        "case",
        "function",
        "copy",
        "to",
        "from",
        "prepare",
        "declare",
        "cursor",
        "pg_catalog",
        "execute",
        "rollback",
        "savepoint",
        "release",
        "cluster",
        "reindex",
        "drop",
        "alter",
        "set",
        "tablespace",
    ];

    fn random_sql(rng: &mut Rng) -> String {
        let mut s = String::new();
        let n = rng.below(40);
        for _ in 0..n {
            if rng.below(4) == 0 {
                // A random char, including multi-byte ones.
                let c = char::from_u32(rng.below(0x3000) as u32).unwrap_or('?');
                s.push(c);
            } else {
                s.push_str(PIECES[rng.below(PIECES.len())]);
            }
            if rng.below(3) == 0 {
                s.push(' ');
            }
        }
        s
    }

    #[test]
    fn fuzz_is_total() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let hook = |name: &str| name.contains('a');
        for _ in 0..50_000 {
            let sql = random_sql(&mut rng);
            for t in super::super::lexer::Lexer::new(&sql) {
                assert_eq!(&sql[t.start..t.end()], t.text);
                let _ = t.string_body();
                let mut buf = [0u8; NAMEDATALEN];
                let _ = fold_ident(t.text, &mut buf);
            }
            for stmt in split_statements(&sql) {
                assert!(!stmt.is_empty());
                assert!(sql.contains(stmt));
                let c = classify_with(stmt, &hook);
                let _ = classify(stmt);
                if c.kind == Empty {
                    assert_eq!(c.command, "");
                }
            }
            let _ = classify(&sql);
            // Raw text, not just token texts, through the public helpers.
            let mut buf = [0u8; NAMEDATALEN];
            let _ = fold_ident(&sql, &mut buf);
            let _ = fold_ident(&format!("\"{sql}"), &mut buf);
            let _ = fold_ident(&format!("U&\"{sql}"), &mut buf);
        }
        // Nesting deep enough to matter for recursion and counters.
        let deep = "EXPLAIN ANALYZE ".repeat(10_000) + "SELECT 1";
        assert_eq!(classify(&deep).kind, Write);
        let parens = "(".repeat(100_000) + "SELECT 1" + &")".repeat(100_000);
        assert_eq!(classify(&parens).kind, Read);
        let comments = "/*".repeat(100_000);
        assert_eq!(classify(&comments).kind, Write);
    }

    #[test]
    fn many_statements_loop() {
        let statements = [
            "SELECT a, b FROM t WHERE id = $1",
            "UPDATE t SET a = a + 1 WHERE id = 7",
            "INSERT INTO h (tid, delta, mtime) VALUES (1, 2, CURRENT_TIMESTAMP)",
            "BEGIN",
            "COMMIT",
        ];
        let mut reads = 0;
        for i in 0..10_000 {
            if classify(statements[i % statements.len()]).kind == Read {
                reads += 1;
            }
        }
        assert_eq!(reads, 2_000);
    }
}
