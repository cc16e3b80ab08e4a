//! Replicating a write by its effect, not by its text. Under READ COMMITTED a statement's
//! outcome depends on what its node sees: `UPDATE … WHERE id = (SELECT min(id) …)`,
//! `FOR UPDATE SKIP LOCKED`, `DELETE … WHERE t < now() - …`, `SET n = (SELECT count(*) …)`
//! pick other rows or values on a replica whose snapshot holds a transaction the lead's did
//! not (yet). So pgmulti lets the lead decide and the replicas apply, and checks it:
//!
//! - The lead runs the statement with hidden RETURNING columns appended (`Effects::lead_sql`):
//!   the primary key and new values of the rows it changed, and an md5 of each row image.
//!   The session strips them before the client sees the answer.
//! - Each replica gets a statement built from those rows (`Effects::replica_sql`): an
//!   UPDATE/DELETE of exactly those keys with exactly those values (`Apply::ByKey`); for a
//!   table without a primary key, the statement itself with the lead's values in SET
//!   (`Apply::Uniform`, when every row got the same ones); otherwise the statement itself
//!   (`Apply::Rerun`: INSERT … SELECT, tables with triggers, statements calling a function
//!   that writes, such as `nextval()` or `lo_open()`, whose side effect the replica needs).
//! - Every replica statement is wrapped so that the node itself checks that it changed as
//!   many rows as the lead, with the same digest of row images; if not, it raises an error,
//!   so its transaction cannot commit a different effect. The session turns that into 40001
//!   for the client and rolls the transaction back everywhere.
//!
//! INSERT … VALUES needs none of this (which rows it writes does not depend on a snapshot;
//! unique conflicts wait on the lead) and runs as written. Pure logic, no I/O.

use super::catalog::TableInfo;
use super::lexer::{fold_ident, qualified_name, Lexer, Token, TokenKind, NAMEDATALEN};
use super::request::Refusal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Update,
    Delete,
    Insert,
}

/// What an UPDATE, DELETE or INSERT statement looks like, as far as replication needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub command: Command,
    /// `[ONLY] name [*]` as written.
    pub target: String,
    /// The table name as written (for the catalog lookup) and folded (the cache key).
    pub table: String,
    pub key: String,
    /// How RETURNING names the row: the alias, or the table's own (last) name.
    pub row: String,
    /// UPDATE: byte range of the assignments after SET, and their folded target columns.
    pub set: Option<(usize, usize)>,
    pub set_columns: Vec<String>,
    /// Byte offset of the client's RETURNING, if any.
    pub returning: Option<usize>,
    /// End of the statement text, before a trailing `;`.
    pub end: usize,
    /// `WHERE CURRENT OF cursor`.
    pub current_of: bool,
    /// A SELECT anywhere (INSERT … SELECT, sub-selects).
    pub selects: bool,
    /// Columns the WHERE clause pins to a constant (`col = 5`, `t.col = $1 + 2`), when it is
    /// a plain AND of conditions on the row itself: no sub-select, no other table (FROM,
    /// USING), no function call, no OR. Empty otherwise.
    pub pinned: Vec<String>,
}

/// The shape of `statement` if it is a single UPDATE, DELETE or INSERT, after a `WITH` of
/// queries that only read (`WITH next AS (SELECT … FOR UPDATE SKIP LOCKED) UPDATE …`). Not
/// one whose `WITH` writes too.
pub fn shape(statement: &str) -> Option<Shape> {
    let tokens: Vec<Token> = Lexer::new(statement).collect();
    let w = after_reading_with(&tokens)?;
    let first = tokens.get(w)?;
    let (command, mut i) = if first.is_kw("UPDATE") {
        (Command::Update, w + 1)
    } else if first.is_kw("DELETE") && tokens.get(w + 1)?.is_kw("FROM") {
        (Command::Delete, w + 2)
    } else if first.is_kw("INSERT") && tokens.get(w + 1)?.is_kw("INTO") {
        (Command::Insert, w + 2)
    } else {
        return None;
    };
    let target_start = tokens.get(i)?.start;
    if command != Command::Insert && tokens.get(i)?.is_kw("ONLY") {
        i += 1;
    }
    let (table, key, last, next) = qualified_name(&tokens, i)?;
    i = next;
    if tokens
        .get(i)
        .is_some_and(|t| t.kind == TokenKind::Operator && t.text == "*")
    {
        i += 1;
    }
    let target_end = tokens.get(i - 1)?.end();
    let mut row = last.to_string();
    if tokens.get(i).is_some_and(|t| t.is_kw("AS")) {
        i += 1;
    }
    let stop = |t: &Token| {
        [
            "SET",
            "WHERE",
            "USING",
            "RETURNING",
            "VALUES",
            "SELECT",
            "DEFAULT",
            "OVERRIDING",
        ]
        .iter()
        .any(|k| t.is_kw(k))
    };
    if let Some(t) = tokens.get(i).filter(|t| t.is_name() && !stop(t)) {
        row = t.text.to_string();
        i += 1;
    }
    let mut s = Shape {
        command,
        target: statement[target_start..target_end].to_string(),
        table,
        key,
        row,
        set: None,
        set_columns: Vec::new(),
        returning: None,
        end: 0,
        current_of: false,
        selects: false,
        pinned: Vec::new(),
    };
    if command == Command::Update {
        if !tokens.get(i)?.is_kw("SET") {
            return None;
        }
        i += 1;
        let (columns, end) = assignments(&tokens[i..])?;
        s.set = Some((tokens.get(i)?.start, end.unwrap_or(statement.len())));
        s.set_columns = columns;
    }
    let mut depth = 0u32;
    for (n, t) in tokens.iter().enumerate() {
        match t.kind {
            TokenKind::Punct(b'(') => depth += 1,
            TokenKind::Punct(b')') => depth = depth.saturating_sub(1),
            TokenKind::Punct(b';') if depth == 0 => {
                if tokens[n..].iter().any(|t| !t.is_punct(b';')) {
                    return None; // more than one statement
                }
                break;
            }
            _ => {}
        }
        s.end = t.end();
        s.selects |= t.is_kw("SELECT");
        if depth == 0 && t.is_kw("RETURNING") {
            s.returning = Some(t.start);
        }
        if depth == 0 && t.is_kw("CURRENT") && tokens.get(n + 1).is_some_and(|t| t.is_kw("OF")) {
            s.current_of = true;
        }
    }
    // Assignments that run to the end of the text end at its last token: a comment or
    // whitespace after it is not part of them.
    if let Some((_, set_end)) = &mut s.set {
        *set_end = (*set_end).min(s.end);
    }
    if w == 0 {
        // What a WITH's queries lock or see is not the row's own business.
        s.pinned = pinned_columns(&tokens, i);
    }
    Some(s)
}

/// The token after a leading `WITH [RECURSIVE] name [(columns)] AS [[NOT] MATERIALIZED]
/// (query), …` whose queries only read; 0 without WITH; None when one of them writes (or
/// the list is not of that form).
fn after_reading_with(tokens: &[Token]) -> Option<usize> {
    if !tokens.first()?.is_kw("WITH") {
        return Some(0);
    }
    let close = |open: usize| -> Option<usize> {
        let mut depth = 0u32;
        for (n, t) in tokens.iter().enumerate().skip(open) {
            match t.kind {
                TokenKind::Punct(b'(') => depth += 1,
                TokenKind::Punct(b')') => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(n);
                    }
                }
                _ => {}
            }
        }
        None
    };
    let mut i = 1 + usize::from(tokens.get(1)?.is_kw("RECURSIVE"));
    loop {
        if !tokens.get(i)?.is_name() {
            return None;
        }
        i += 1;
        if tokens.get(i)?.is_punct(b'(') {
            i = close(i)? + 1;
        }
        if !tokens.get(i)?.is_kw("AS") {
            return None;
        }
        i += 1;
        i += usize::from(tokens.get(i)?.is_kw("NOT"));
        i += usize::from(tokens.get(i)?.is_kw("MATERIALIZED"));
        if !tokens.get(i)?.is_punct(b'(') {
            return None;
        }
        let body = tokens.get(i + 1)?;
        if ["INSERT", "UPDATE", "DELETE", "MERGE"]
            .iter()
            .any(|k| body.is_kw(k))
        {
            return None;
        }
        i = close(i)? + 1;
        if !tokens.get(i)?.is_punct(b',') {
            return Some(i);
        }
        i += 1;
    }
}

/// See `Shape::pinned`; `from` is the token after the target (and SET's assignments are
/// among the tokens checked).
fn pinned_columns(tokens: &[Token], from: usize) -> Vec<String> {
    let rest = &tokens[from.min(tokens.len())..];
    let plain = rest.iter().enumerate().all(|(n, t)| {
        let call = t.is_name() && rest.get(n + 1).is_some_and(|t| t.is_punct(b'('));
        !call
            && !["SELECT", "FROM", "USING", "OR", "BETWEEN", "CURRENT"]
                .iter()
                .any(|k| t.is_kw(k))
    });
    let Some(at) = rest.iter().position(|t| t.is_kw("WHERE")).filter(|_| plain) else {
        return Vec::new();
    };
    let mut pinned = Vec::new();
    let mut depth = 0u32;
    let mut start = at + 1;
    for n in at + 1..=rest.len() {
        let t = rest.get(n);
        let end = match t {
            None => true,
            Some(t)
                if depth == 0 && (t.is_kw("AND") || t.is_kw("RETURNING") || t.is_punct(b';')) =>
            {
                true
            }
            Some(t) => {
                match t.kind {
                    TokenKind::Punct(b'(') => depth += 1,
                    TokenKind::Punct(b')') => depth = depth.saturating_sub(1),
                    _ => {}
                }
                false
            }
        };
        if end {
            pinned.extend(pinned_by(&rest[start..n]));
            start = n + 1;
            if t.is_some_and(|t| !t.is_kw("AND")) {
                break;
            }
        }
    }
    pinned
}

/// The column a condition `col = constant` (or `constant = t.col`) pins.
fn pinned_by(cond: &[Token]) -> Option<String> {
    let eq = cond
        .iter()
        .position(|t| t.kind == TokenKind::Operator && t.text == "=")?;
    let column = |side: &[Token]| -> Option<String> {
        match side {
            [c] if c.is_name() => Some(fold(c.text)),
            [_, dot, c] if dot.is_punct(b'.') && c.is_name() => Some(fold(c.text)),
            _ => None,
        }
    };
    let constant = |side: &[Token]| {
        !side.is_empty()
            && side.iter().enumerate().all(|(n, t)| {
                matches!(
                    t.kind,
                    TokenKind::Number
                        | TokenKind::String
                        | TokenKind::Param
                        | TokenKind::Operator
                        | TokenKind::Cast
                ) || t.is_punct(b'(')
                    || t.is_punct(b')')
                    || (t.kind == TokenKind::Ident && n > 0 && side[n - 1].kind == TokenKind::Cast)
            })
    };
    let (left, right) = (&cond[..eq], &cond[eq + 1..]);
    match (column(left), column(right)) {
        (Some(c), _) if constant(right) => Some(c),
        (_, Some(c)) if constant(left) => Some(c),
        _ => None,
    }
}

/// The folded target columns of an UPDATE's assignments (tokens after SET) and the offset
/// where they end (FROM, WHERE or RETURNING; None: the end of the statement).
fn assignments(tokens: &[Token]) -> Option<(Vec<String>, Option<usize>)> {
    let mut columns = Vec::new();
    let mut depth = 0u32;
    let mut expect_target = true;
    let mut prev: Option<&Token> = None;
    let mut i = 0;
    while let Some(t) = tokens.get(i) {
        if depth == 0 && !expect_target {
            let distinct_from = t.is_kw("FROM") && prev.is_some_and(|p| p.is_kw("DISTINCT"));
            if (t.is_kw("FROM") && !distinct_from)
                || t.is_kw("WHERE")
                || t.is_kw("RETURNING")
                || t.is_punct(b';')
            {
                return Some((columns, Some(t.start)));
            }
        }
        if expect_target {
            if t.is_punct(b'(') {
                // (a, b) = …
                i += 1;
                while let Some(t) = tokens.get(i) {
                    if t.is_punct(b')') {
                        break;
                    }
                    if t.is_name() {
                        columns.push(fold(t.text));
                    } else if !t.is_punct(b',') {
                        return None;
                    }
                    i += 1;
                }
            } else if t.is_name() {
                columns.push(fold(t.text));
            } else {
                return None;
            }
            expect_target = false;
            // Skip `.field` and `[subscript]` up to the `=`.
            i += 1;
            while let Some(t) = tokens.get(i) {
                if t.kind == TokenKind::Operator && t.text == "=" {
                    break;
                }
                i += 1;
            }
        } else {
            match t.kind {
                TokenKind::Punct(b'(') | TokenKind::Punct(b'[') => depth += 1,
                TokenKind::Punct(b')') | TokenKind::Punct(b']') => depth = depth.saturating_sub(1),
                TokenKind::Punct(b',') if depth == 0 => expect_target = true,
                _ => {}
            }
        }
        prev = tokens.get(i);
        i += 1;
    }
    (!columns.is_empty()).then_some((columns, None))
}

fn fold(text: &str) -> String {
    let mut buf = [0u8; NAMEDATALEN];
    fold_ident(text, &mut buf).to_string()
}

/// How the replicas reproduce the lead's effect.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Apply {
    /// The rows the lead changed, by primary key: `keys` then `values` are the hidden
    /// columns (name, type).
    ByKey {
        keys: Vec<(String, String)>,
        values: Vec<(String, String)>,
    },
    /// No primary key: the statement with the lead's values in its SET, when every row got
    /// the same ones.
    Uniform { values: Vec<(String, String)> },
    /// The statement itself.
    Rerun,
    /// The statement as written, unchecked, when the lead changed its one row; nothing
    /// when it changed none (see `plan_shape`).
    Keyed,
}

/// One write statement replicated by its effect (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effects {
    /// What the lead runs.
    pub lead_sql: String,
    /// How many columns at the end of each row the lead returns are pgmulti's.
    pub hidden: usize,
    /// The client asked for rows (RETURNING) itself.
    pub client_returning: bool,
    statement: String,
    shape: Shape,
    apply: Apply,
}

/// The hidden columns of the rows the lead returned: the values of `Apply` (text, None for
/// NULL) per row, up to `KEEP_ROWS` rows and `KEEP_BYTES` of values; the row count and the
/// digest of row images of all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadRows {
    pub rows: Vec<Vec<Option<String>>>,
    pub count: u64,
    pub digest: i128,
    /// More rows than are kept: the replicas re-run the statement (checked as always).
    pub overflow: bool,
    /// Every row had the values of the first (`Apply::Uniform`).
    pub uniform: bool,
    bytes: usize,
}

/// A bulk UPDATE or DELETE beyond this many rows (or bytes of values) is not applied by key:
/// the replicas re-run it, and check count and digest. Bounds pgmulti's memory per statement.
const KEEP_ROWS: usize = 10_000;
const KEEP_BYTES: usize = 4 << 20;

impl LeadRows {
    /// Take one returned row's hidden columns: values, then the row image's md5 (hex).
    pub fn add(&mut self, hidden: &[Option<&[u8]>]) -> Result<(), String> {
        let (md5, values) = hidden.split_last().ok_or("no hidden column")?;
        self.digest += row_digest(md5.unwrap_or_default())?;
        self.count += 1;
        if values.is_empty() || self.overflow {
            return Ok(());
        }
        let row: Vec<Option<String>> = values
            .iter()
            .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
            .collect();
        self.uniform = match self.rows.first() {
            None => true,
            Some(first) => self.uniform && *first == row,
        };
        self.bytes += values
            .iter()
            .map(|v| v.map_or(0, <[u8]>::len))
            .sum::<usize>();
        if self.rows.len() >= KEEP_ROWS || self.bytes > KEEP_BYTES {
            self.overflow = true;
            self.rows = Vec::new();
        } else {
            self.rows.push(row);
        }
        Ok(())
    }
}

/// The first 64 bits of a row's md5 as the signed number the replicas' check adds up
/// (`('x' || substr(h, 1, 16))::bit(64)::bigint`).
fn row_digest(md5_hex: &[u8]) -> Result<i128, String> {
    let hex = std::str::from_utf8(md5_hex.get(..16).ok_or("short md5")?).map_err(|_| "md5")?;
    let v = u64::from_str_radix(hex, 16).map_err(|_| format!("not an md5: {hex:?}"))?;
    Ok(v as i64 as i128)
}

/// How `statement` (already rewritten for non-determinism) must be replicated, given its
/// table. `Ok(None)`: as written. Refused when a trigger on the table calls a
/// non-deterministic function.
///
/// An UPDATE/DELETE that pins every primary-key column to a constant and otherwise looks
/// only at the row itself (`UPDATE accounts SET bal = bal - 7 WHERE id = 3 AND bal >= 7`,
/// TPC-B's statements) is `Apply::Keyed`: it names at most one row, and if the lead changed
/// it, the lead holds its lock until after every replica has run the statement, so every
/// node has the same version of it and the statement as written does the same there.
pub fn plan(statement: &str, info: &TableInfo) -> Result<Option<Effects>, Refusal> {
    match shape(statement) {
        Some(shape) => plan_shape(statement, shape, info),
        None => Ok(None),
    }
}

/// `plan` with the statement's table looked up in `tables` (as the session caches them);
/// `Ok(None)` also when the table is not known.
pub fn plan_in(
    statement: &str,
    tables: &std::collections::HashMap<String, TableInfo>,
) -> Result<Option<Effects>, Refusal> {
    let Some(shape) = shape(statement) else {
        return Ok(None);
    };
    match tables.get(&shape.key) {
        Some(info) => plan_shape(statement, shape, info),
        None => Ok(None),
    }
}

/// `plan` for a statement whose `shape` is known already.
pub fn plan_shape(
    statement: &str,
    shape: Shape,
    info: &TableInfo,
) -> Result<Option<Effects>, Refusal> {
    let event = match shape.command {
        Command::Update => 'U',
        Command::Delete => 'D',
        Command::Insert => 'I',
    };
    if let Some((trigger, calls)) = info.volatile_trigger(event) {
        return Err(Refusal {
            message: format!(
                "this statement cannot be replicated: trigger \"{trigger}\" on {} calls {calls}, which gives each node a different value",
                shape.table
            ),
            hint: "compute the value in the statement itself (pgmulti gives now(), random() and gen_random_uuid() in a statement one value on every node), or make the trigger deterministic".into(),
        });
    }
    // Where pgmulti may not add a RETURNING (views, rules, row-level security, no SELECT
    // right), or in a system catalog, whose rows hold OIDs that differ by node so that no
    // digest of them can agree, the statement runs as written, compared by row count.
    if !info.exists
        || info.no_returning
        || info.system
        || shape.current_of
        || (shape.command == Command::Insert && !shape.selects)
    {
        return Ok(None);
    }
    let keyed = !info.key.is_empty() && info.key.iter().all(|k| shape.pinned.contains(k));
    if keyed && info.triggers.is_empty() && shape.command != Command::Insert {
        return Ok(Some(Effects {
            lead_sql: statement.to_string(),
            hidden: 0,
            client_returning: shape.returning.is_some(),
            statement: statement.to_string(),
            shape,
            apply: Apply::Keyed,
        }));
    }
    let typed = |names: &[String]| -> Option<Vec<(String, String)>> {
        names
            .iter()
            .map(|n| Some((n.clone(), info.type_of(n)?.to_string())))
            .collect()
    };
    let keys = typed(&info.key).filter(|k| !k.is_empty());
    // Assignments that are not one whole value per column (`arr[1] = …, arr[2] = …`,
    // `SET a = DEFAULT` of an identity column) cannot be replaced by the lead's values.
    let whole_values = shape.set.is_some_and(|(from, to)| {
        let mut seen = std::collections::HashSet::new();
        shape.set_columns.iter().all(|c| seen.insert(c))
            && !Lexer::new(statement.get(from..to).unwrap_or_default())
                .any(|t| t.is_kw("default") || t.is_punct(b'['))
    });
    let set = typed(&shape.set_columns).filter(|_| whole_values);
    // What a writing function does besides its value (lo_open, nextval) would be lost on a
    // replica that only applied the lead's values.
    let side_effects = super::classify::classify(statement).calls_writing_function;
    let apply = match (shape.command, keys, set) {
        _ if !info.triggers.is_empty() || side_effects => Apply::Rerun,
        (Command::Delete, Some(keys), _) => Apply::ByKey {
            keys,
            values: Vec::new(),
        },
        (Command::Update, Some(keys), Some(values))
            if !values.iter().any(|(c, _)| info.key.contains(c)) =>
        {
            Apply::ByKey { keys, values }
        }
        (Command::Update, None, Some(values)) => Apply::Uniform { values },
        _ => Apply::Rerun,
    };
    let hidden_values: Vec<&(String, String)> = match &apply {
        Apply::ByKey { keys, values } => keys.iter().chain(values).collect(),
        Apply::Uniform { values } => values.iter().collect(),
        Apply::Rerun | Apply::Keyed => Vec::new(),
    };
    let row = &shape.row;
    let mut lead_sql = String::with_capacity(statement.len() + 64);
    lead_sql.push_str(&statement[..shape.end]);
    lead_sql.push_str(if shape.returning.is_some() {
        ", "
    } else {
        " RETURNING "
    });
    for (column, _) in &hidden_values {
        // As text, so that they read the same whatever result format a Bind asks for.
        lead_sql.push_str(&format!("{row}.{}::text, ", quote(column)));
    }
    lead_sql.push_str(&format!("md5(ROW({row}.*)::text)"));
    Ok(Some(Effects {
        lead_sql,
        hidden: hidden_values.len() + 1,
        client_returning: shape.returning.is_some(),
        statement: statement.to_string(),
        shape,
        apply,
    }))
}

impl Effects {
    /// The replicas run the statement itself: what they see may differ from what the lead
    /// saw, so a disagreement is possible without any fault.
    pub fn reruns(&self) -> bool {
        self.apply == Apply::Rerun
    }

    /// The statement as the client wrote it (non-determinism rewritten).
    pub fn statement(&self) -> &str {
        &self.statement
    }

    /// The replicas run the statement as written when the lead changed a row (its answer
    /// is compared as usual), nothing otherwise. `LeadRows::count` must be the lead's row
    /// count (this statement returns no hidden columns).
    pub fn keyed(&self) -> bool {
        self.apply == Apply::Keyed
    }

    /// What every replica runs, once the lead has returned `lead`'s rows.
    pub fn replica_sql(&self, lead: &LeadRows) -> String {
        let returning = format!("RETURNING md5(ROW({}.*)::text) AS h", self.shape.row);
        let mine = "RETURNING md5(ROW(pgm_t.*)::text) AS h";
        let rerun = || {
            format!(
                "{} {returning}",
                self.statement[..self.shape.returning.unwrap_or(self.shape.end)].trim_end()
            )
        };
        let body = match &self.apply {
            _ if lead.count == 0 && self.apply != Apply::Rerun => return "SELECT 1".into(),
            Apply::Keyed => return self.statement.clone(),
            _ if lead.overflow => rerun(),
            Apply::ByKey { keys, values } if lead.rows.len() == 1 => {
                // One row (the usual OLTP case): no join for the planner to consider.
                let row = &lead.rows[0];
                // SET names a column without the alias, WHERE with it.
                let assign =
                    |columns: &[(String, String)], values: &[Option<String>], alias, sep| {
                        columns
                            .iter()
                            .zip(values)
                            .map(|((c, ty), v)| {
                                format!("{alias}{} = {}", quote(c), typed(v.as_deref(), ty))
                            })
                            .collect::<Vec<_>>()
                            .join(sep)
                    };
                let matches = assign(keys, &row[..keys.len()], "pgm_t.", " AND ");
                let target = &self.shape.target;
                if self.shape.command == Command::Delete {
                    format!("DELETE FROM {target} AS pgm_t WHERE {matches} {mine}")
                } else {
                    let sets = assign(values, &row[keys.len()..], "", ", ");
                    format!("UPDATE {target} AS pgm_t SET {sets} WHERE {matches} {mine}")
                }
            }
            Apply::ByKey { keys, values } => {
                let columns: Vec<&(String, String)> = keys.iter().chain(values).collect();
                let names = columns
                    .iter()
                    .map(|(c, _)| quote(c))
                    .collect::<Vec<_>>()
                    .join(", ");
                let rows = lead
                    .rows
                    .iter()
                    .map(|r| format!("({})", typed_values(r, &columns)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let matches = keys
                    .iter()
                    .map(|(k, _)| format!("pgm_t.{0} = pgm_v.{0}", quote(k)))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let source = format!("(VALUES {rows}) AS pgm_v({names})");
                let target = &self.shape.target;
                if self.shape.command == Command::Delete {
                    format!("DELETE FROM {target} AS pgm_t USING {source} WHERE {matches} {mine}")
                } else {
                    let sets = values
                        .iter()
                        .map(|(c, _)| format!("{0} = pgm_v.{0}", quote(c)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!(
                        "UPDATE {target} AS pgm_t SET {sets} FROM {source} WHERE {matches} {mine}"
                    )
                }
            }
            Apply::Uniform { values } if lead.uniform => {
                let (start, end) = self.shape.set.unwrap_or_default();
                let sets = values
                    .iter()
                    .zip(&lead.rows[0])
                    .map(|((c, ty), v)| format!("{} = {}", quote(c), typed(v.as_deref(), ty)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let stop = self.shape.returning.unwrap_or(self.shape.end);
                let tail = self.statement.get(end..stop).unwrap_or_default().trim();
                let gap = if tail.is_empty() { "" } else { " " };
                format!("{}{sets}{gap}{tail} {returning}", &self.statement[..start])
            }
            _ => rerun(),
        };
        format!(
            "WITH pgm_w AS ({body}) SELECT CASE WHEN count(*) = {} AND coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint), 0) = {} THEN 1 ELSE CAST('{CHECK_FAILED}' || count(*) AS int) END FROM pgm_w",
            lead.count, lead.digest
        )
    }
}

/// How a replica's failed effect check starts its error message; the number of rows it
/// changed follows.
const CHECK_FAILED: &str = "pgmulti: this node changed other rows than the lead: ";

/// The row count of a replica's failed effect check, from its error message.
pub fn failed_check(message: &str) -> Option<u64> {
    let at = message.find(CHECK_FAILED)? + CHECK_FAILED.len();
    let digits: String = message[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// `CAST(E'…' AS type)` for each value, joined with ", ".
fn typed_values(row: &[Option<String>], columns: &[&(String, String)]) -> String {
    let values: Vec<String> = columns
        .iter()
        .zip(row)
        .map(|((_, ty), v)| typed(v.as_deref(), ty))
        .collect();
    values.join(", ")
}

fn typed(value: Option<&str>, ty: &str) -> String {
    match value {
        Some(v) => format!("CAST({} AS {ty})", literal(v)),
        None => format!("CAST(NULL AS {ty})"),
    }
}

/// A string constant that reads the same whatever `standard_conforming_strings` is.
fn literal(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 3);
    s.push_str("E'");
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\'' => s.push_str("''"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// A column name as a quoted identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> TableInfo {
        TableInfo {
            exists: true,
            columns: vec![
                ("id".into(), "integer".into()),
                ("status".into(), "text".into()),
                ("worker".into(), "integer".into()),
            ],
            key: vec!["id".into()],
            ..Default::default()
        }
    }

    fn rows(values: &[&[Option<&str>]], md5s: &[&str]) -> LeadRows {
        let mut lead = LeadRows::default();
        for (v, h) in values.iter().zip(md5s) {
            let mut hidden: Vec<Option<&[u8]>> = v.iter().map(|x| x.map(str::as_bytes)).collect();
            hidden.push(Some(h.as_bytes()));
            lead.add(&hidden).unwrap();
        }
        lead
    }

    #[test]
    fn shapes() {
        let s = shape("UPDATE ONLY public.jobs AS j SET status = 'x', (a, \"B\") = (1, 2), c[1] = 3 WHERE id = (SELECT min(id) FROM jobs) RETURNING id;").unwrap();
        assert_eq!(s.command, Command::Update);
        assert_eq!(
            (s.target.as_str(), s.key.as_str(), s.row.as_str()),
            ("ONLY public.jobs", "public.jobs", "j")
        );
        assert_eq!(s.set_columns, vec!["status", "a", "B", "c"]);
        assert!(s.selects && s.returning.is_some() && !s.current_of);
        let d = shape("delete from Sess where t < now() - interval '5 ms'").unwrap();
        assert_eq!(
            (d.command, d.row.as_str(), d.key.as_str()),
            (Command::Delete, "Sess", "sess")
        );
        let u =
            shape("UPDATE t SET a = x IS DISTINCT FROM y, b = 2 FROM u WHERE t.id = u.id").unwrap();
        assert_eq!(u.set_columns, vec!["a", "b"]);
        let w = shape("WITH RECURSIVE n (id) AS MATERIALIZED (SELECT id FROM jobs WHERE status = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED), m AS (SELECT 1) UPDATE jobs j SET status = 'running' FROM n WHERE j.id = n.id AND j.id = 4").unwrap();
        assert_eq!(
            (w.command, w.key.as_str(), w.row.as_str()),
            (Command::Update, "jobs", "j")
        );
        assert!(w.pinned.is_empty(), "a WITH is never keyed");
        assert!(
            shape("WITH x AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM x").is_none()
        );
        assert!(shape("WITH x AS (SELECT 1), y AS (UPDATE t SET a = 1) SELECT 1").is_none());
        assert!(shape("WITH x AS (SELECT 1) SELECT 1").is_none());
        assert!(shape("UPDATE t SET a = 1; UPDATE t SET a = 2").is_none());
        assert!(
            shape("UPDATE t SET a = 1 WHERE CURRENT OF c")
                .unwrap()
                .current_of
        );
        assert!(shape("INSERT INTO t AS x SELECT 1").unwrap().selects);
    }

    #[test]
    fn a_queue_claim_is_decided_by_the_lead_and_applied_by_key() {
        let sql = "UPDATE jobs SET status = 'running', worker = 3 WHERE id = (SELECT min(id) FROM jobs WHERE status = 'new')";
        let e = plan(sql, &jobs()).unwrap().unwrap();
        assert_eq!(
            e.lead_sql,
            format!("{sql} RETURNING jobs.\"id\"::text, jobs.\"status\"::text, jobs.\"worker\"::text, md5(ROW(jobs.*)::text)")
        );
        assert_eq!((e.hidden, e.client_returning), (4, false));
        let lead = rows(
            &[&[Some("7"), Some("it's"), None]],
            &["ffffffffffffffff0000"],
        );
        assert_eq!(lead.digest, -1);
        assert_eq!(
            e.replica_sql(&lead),
            "WITH pgm_w AS (UPDATE jobs AS pgm_t SET \"status\" = CAST(E'it''s' AS text), \"worker\" = CAST(NULL AS integer) \
             WHERE pgm_t.\"id\" = CAST(E'7' AS integer) RETURNING md5(ROW(pgm_t.*)::text) AS h) \
             SELECT CASE WHEN count(*) = 1 AND coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint), 0) = -1 THEN 1 \
             ELSE CAST('pgmulti: this node changed other rows than the lead: ' || count(*) AS int) END FROM pgm_w"
        );
        // Several rows: joined with a VALUES list.
        let two = rows(
            &[
                &[Some("7"), Some("a"), None],
                &[Some("8"), Some("b"), Some("1")],
            ],
            &["0000000000000000", "0000000000000000"],
        );
        assert!(e.replica_sql(&two).starts_with(
            "WITH pgm_w AS (UPDATE jobs AS pgm_t SET \"status\" = pgm_v.\"status\", \"worker\" = pgm_v.\"worker\" \
             FROM (VALUES (CAST(E'7' AS integer), CAST(E'a' AS text), CAST(NULL AS integer)), (CAST(E'8' AS integer), CAST(E'b' AS text), CAST(E'1' AS integer))) \
             AS pgm_v(\"id\", \"status\", \"worker\") WHERE pgm_t.\"id\" = pgm_v.\"id\" RETURNING"
        ));
        assert_eq!(e.replica_sql(&LeadRows::default()), "SELECT 1");
        let error = "invalid input syntax for type integer: \"pgmulti: this node changed other rows than the lead: 12\"";
        assert_eq!(failed_check(error), Some(12));
        assert_eq!(failed_check("division by zero"), None);
    }

    #[test]
    fn deletes_by_key_keep_the_clients_returning() {
        let e = plan(
            "DELETE FROM jobs j WHERE status = 'done' RETURNING j.worker;",
            &jobs(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.lead_sql, "DELETE FROM jobs j WHERE status = 'done' RETURNING j.worker, j.\"id\"::text, md5(ROW(j.*)::text)");
        assert!(e.client_returning);
        let lead = rows(
            &[&[Some("1")], &[Some("2")]],
            &["0000000000000001", "0000000000000002"],
        );
        let sql = e.replica_sql(&lead);
        assert!(sql.starts_with("WITH pgm_w AS (DELETE FROM jobs AS pgm_t USING (VALUES (CAST(E'1' AS integer)), (CAST(E'2' AS integer))) AS pgm_v(\"id\") WHERE pgm_t.\"id\" = pgm_v.\"id\" RETURNING"), "{sql}");
        assert!(
            sql.contains("count(*) = 2 AND") && sql.contains(") = 3 THEN"),
            "{sql}"
        );
    }

    #[test]
    fn without_a_key_the_lead_s_values_go_into_set() {
        let total = TableInfo {
            exists: true,
            columns: vec![("n".into(), "bigint".into())],
            ..Default::default()
        };
        let e = plan("UPDATE total SET n = (SELECT count(*) FROM ev)", &total)
            .unwrap()
            .unwrap();
        let same = rows(
            &[&[Some("42")], &[Some("42")]],
            &["0000000000000001", "0000000000000001"],
        );
        let sql = e.replica_sql(&same);
        assert!(sql.starts_with("WITH pgm_w AS (UPDATE total SET \"n\" = CAST(E'42' AS bigint) RETURNING md5(ROW(total.*)::text) AS h)"), "{sql}");
        // Different values per row: the statement itself, checked.
        let differ = rows(
            &[&[Some("1")], &[Some("2")]],
            &["0000000000000001", "0000000000000001"],
        );
        assert!(e.replica_sql(&differ).starts_with(
            "WITH pgm_w AS (UPDATE total SET n = (SELECT count(*) FROM ev) RETURNING"
        ));
    }

    #[test]
    fn reruns_inserts_that_select_and_refuses_volatile_triggers() {
        let e = plan("INSERT INTO jobs SELECT max(id) + 1 FROM jobs", &jobs())
            .unwrap()
            .unwrap();
        assert_eq!(e.hidden, 1);
        assert!(e.replica_sql(&rows(&[&[]], &["0000000000000005"])).starts_with(
            "WITH pgm_w AS (INSERT INTO jobs SELECT max(id) + 1 FROM jobs RETURNING md5(ROW(jobs.*)::text) AS h)"
        ));
        assert_eq!(plan("INSERT INTO jobs VALUES (1)", &jobs()), Ok(None));
        let mut stamped = jobs();
        stamped
            .triggers
            .push(("stamp".into(), "IU".into(), "clock_timestamp()".into()));
        let refused = plan("INSERT INTO jobs VALUES (1)", &stamped).unwrap_err();
        assert!(refused
            .message
            .contains("trigger \"stamp\" on jobs calls clock_timestamp()"));
        assert_eq!(
            plan("DELETE FROM jobs", &stamped).map(|e| e.is_some()),
            Ok(true)
        );
    }

    #[test]
    fn keyed_statements_run_as_written_when_the_lead_changed_their_row() {
        let accounts = TableInfo {
            exists: true,
            columns: vec![
                ("aid".into(), "integer".into()),
                ("abalance".into(), "integer".into()),
            ],
            key: vec!["aid".into()],
            ..Default::default()
        };
        let one = LeadRows {
            count: 1,
            ..Default::default()
        };
        for sql in [
            "UPDATE accounts SET abalance = abalance + -1234 WHERE aid = 77",
            "UPDATE accounts a SET abalance = abalance - 7 WHERE a.aid = 1 + 12345 % 20 AND abalance >= 7",
            "DELETE FROM accounts WHERE $1::int = aid RETURNING abalance",
        ] {
            let e = plan(sql, &accounts).unwrap().unwrap();
            assert!(e.keyed() && e.hidden == 0 && e.lead_sql == sql, "{sql}");
            assert_eq!(e.replica_sql(&one), sql);
            assert_eq!(e.replica_sql(&LeadRows::default()), "SELECT 1", "{sql}");
        }
        for sql in [
            "UPDATE accounts SET abalance = 0 WHERE aid = 1 OR aid = 2",
            "UPDATE accounts SET abalance = (SELECT 1) WHERE aid = 1",
            "UPDATE accounts SET abalance = f(abalance) WHERE aid = 1",
            "UPDATE accounts SET abalance = 0 WHERE aid = abalance",
            "UPDATE accounts SET abalance = 0 WHERE aid > 1",
            "DELETE FROM accounts USING b WHERE aid = 1",
        ] {
            assert!(!plan(sql, &accounts).unwrap().unwrap().keyed(), "{sql}");
        }
    }

    #[test]
    fn a_bulk_write_is_rerun_and_checked() {
        let e = plan("DELETE FROM jobs WHERE status = 'old'", &jobs())
            .unwrap()
            .unwrap();
        let mut lead = LeadRows::default();
        for id in 0..=KEEP_ROWS {
            let id = id.to_string();
            lead.add(&[Some(id.as_bytes()), Some(b"0000000000000001".as_slice())])
                .unwrap();
        }
        assert!(lead.overflow && lead.rows.is_empty());
        let sql = e.replica_sql(&lead);
        assert!(
            sql.starts_with("WITH pgm_w AS (DELETE FROM jobs WHERE status = 'old' RETURNING md5(ROW(jobs.*)::text) AS h)"),
            "{sql}"
        );
        assert!(
            sql.contains(&format!("count(*) = {} AND", KEEP_ROWS + 1)),
            "{sql}"
        );
    }

    #[test]
    fn updating_the_key_is_rerun() {
        let e = plan("UPDATE jobs SET id = id + 1", &jobs())
            .unwrap()
            .unwrap();
        assert_eq!(e.apply, Apply::Rerun);
        assert_eq!(
            plan("UPDATE nope SET a = 1", &TableInfo::default()),
            Ok(None)
        );
    }

    /// Found by fuzz/ (effects): a SET running to the end of the text, then a comment, made
    /// the replica statement slice past the statement's end.
    #[test]
    fn a_comment_after_the_last_assignment_is_not_part_of_it() {
        let total = TableInfo {
            exists: true,
            columns: vec![("n".into(), "bigint".into())],
            ..Default::default()
        };
        let e = plan(
            "UPDATE total SET n = (SELECT count(*) FROM ev) -- recount\n",
            &total,
        )
        .unwrap()
        .unwrap();
        let same = rows(&[&[Some("7")]], &["0000000000000001"]);
        let sql = e.replica_sql(&same);
        assert!(sql.contains("SET \"n\" = CAST(E'7' AS bigint)"), "{sql}");
        assert!(!sql.contains("recount"), "{sql}");
    }

    /// An UPDATE calling a function with a side effect (lo_open opens a descriptor the next
    /// statements use) runs on the replicas too, not only its values.
    #[test]
    fn a_writing_function_runs_on_the_replicas_too() {
        let stash = TableInfo {
            exists: true,
            columns: vec![
                ("loid".into(), "oid".into()),
                ("fd".into(), "integer".into()),
            ],
            ..Default::default()
        };
        let e = plan("UPDATE stash SET fd = lo_open(loid, 393216)", &stash)
            .unwrap()
            .unwrap();
        let same = rows(&[&[Some("0")]], &["0000000000000001"]);
        let sql = e.replica_sql(&same);
        assert!(sql.contains("SET fd = lo_open(loid, 393216)"), "{sql}");
        let plain = plan("UPDATE stash SET fd = 0", &stash).unwrap().unwrap();
        assert!(plain.replica_sql(&same).contains("CAST(E'0' AS integer)"));
    }

    /// Views, tables with rules, row-level security or no SELECT right, and system catalogs
    /// run as written; subscripted, repeated
    /// and DEFAULT assignments are re-run, not replaced by the lead's values.
    #[test]
    fn what_cannot_be_applied_by_value_runs_as_written() {
        let mut t = jobs();
        t.no_returning = true;
        assert_eq!(
            plan("UPDATE jobs SET status = 'x' WHERE id = (SELECT 1)", &t),
            Ok(None)
        );
        let mut t = jobs();
        t.system = true;
        assert_eq!(plan("DELETE FROM jobs WHERE worker = 3", &t), Ok(None));
        let arr = TableInfo {
            exists: true,
            columns: vec![
                ("id".into(), "integer".into()),
                ("a".into(), "integer[]".into()),
            ],
            key: vec!["id".into()],
            ..Default::default()
        };
        for sql in [
            "UPDATE arr SET a[1] = 42, a[2] = 77 WHERE id > 0",
            "UPDATE arr SET a = DEFAULT WHERE id > 0",
        ] {
            let e = plan(sql, &arr).unwrap().unwrap();
            let same = rows(&[&[Some("1")]], &["0000000000000001"]);
            assert!(
                e.replica_sql(&same)
                    .contains(&sql["UPDATE arr ".len()..sql.len() - 12]),
                "{sql}"
            );
        }
    }
}
