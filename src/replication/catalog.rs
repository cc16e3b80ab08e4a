//! What replication must know of a table that its statements do not say: non-deterministic
//! column defaults, columns drawing from a sequence, the column types, the primary key, and
//! triggers whose functions call non-deterministic functions. pgmulti asks the lead once per
//! session and table (`probe_sql`, cached until DDL runs through pgmulti) and reads the answer
//! into a `TableInfo` per table (`read_probe`). Pure logic; the session runs the query.

use super::classify::classify;
use super::defaults::{draws_from_sequence, is_volatile, VolatileDefault};

/// One table, as the lead's catalog describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableInfo {
    /// The name resolved to a table (`to_regclass`); false: every other field is empty.
    pub exists: bool,
    /// pgmulti must not add a RETURNING of its own: a view or a table with rules (it may be
    /// refused there), a table whose row-level security applies to this session's user
    /// (its SELECT policies would judge the changed rows, which the user's statement alone
    /// does not ask for), or one the user may not SELECT from (RETURNING needs it).
    pub no_returning: bool,
    /// A system catalog (pg_catalog): its OIDs, hence its rows, differ from node to node.
    pub system: bool,
    /// Columns whose default is not deterministic (written into INSERTs).
    pub volatile: Vec<VolatileDefault>,
    /// A column may draw from a sequence (SERIAL, IDENTITY, a function default).
    pub sequenced: bool,
    /// Every column, in order: (name, type as `format_type` writes it).
    pub columns: Vec<(String, String)>,
    /// The primary key's columns; empty: the table has none.
    pub key: Vec<String>,
    /// Enabled user triggers: (name, events as letters of `IUD`, what is non-deterministic in
    /// their function's source; empty when nothing is).
    pub triggers: Vec<(String, String, String)>,
}

impl TableInfo {
    /// The type of `column`, if the table has it.
    pub fn type_of(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, t)| t.as_str())
    }

    /// The first trigger firing on `event` (`I`, `U` or `D`) whose function is not
    /// deterministic: (trigger name, what it calls).
    pub fn volatile_trigger(&self, event: char) -> Option<(&str, &str)> {
        self.triggers
            .iter()
            .find(|(_, events, calls)| events.contains(event) && !calls.is_empty())
            .map(|(name, _, calls)| (name.as_str(), calls.as_str()))
    }
}

/// The catalog query for `tables` (as written). Rows: table as asked, kind, name, detail —
/// `table` (it exists), `default` (column, expression), `identity` (column), `column`
/// (column, type), `key` (column), `trigger <events>` (trigger name, function source).
pub fn probe_sql(tables: &[&str]) -> String {
    let list: Vec<String> = tables
        .iter()
        .map(|t| format!("('{}')", t.replace('\'', "''")))
        .collect();
    let list = list.join(", ");
    let from = format!("FROM (VALUES {list}) AS t(name)");
    format!(
        "SELECT t.name, 'table', CASE WHEN c.relhasrules OR row_security_active(c.oid) \
         OR NOT has_table_privilege(c.oid, 'SELECT') THEN 'no returning' ELSE '' END, \
         CASE WHEN c.relnamespace = 'pg_catalog'::regnamespace THEN 'system' ELSE '' END {from} \
         JOIN pg_class c ON c.oid = to_regclass(t.name) \
         UNION ALL \
         SELECT t.name, 'default', a.attname, pg_get_expr(d.adbin, d.adrelid) {from} \
         JOIN pg_attrdef d ON d.adrelid = to_regclass(t.name) \
         JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
         WHERE NOT a.attisdropped AND a.attgenerated = '' \
         UNION ALL \
         SELECT t.name, 'identity', a.attname, '' {from} \
         JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) \
         WHERE NOT a.attisdropped AND a.attidentity <> '' \
         UNION ALL \
         SELECT t.name, 'column', a.attname, format_type(a.atttypid, a.atttypmod) {from} \
         JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) \
         WHERE a.attnum > 0 AND NOT a.attisdropped \
         UNION ALL \
         SELECT t.name, 'key', a.attname, '' {from} \
         JOIN pg_index i ON i.indrelid = to_regclass(t.name) AND i.indisprimary \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
         UNION ALL \
         SELECT t.name, 'trigger ' \
         || CASE WHEN g.tgtype & 4 <> 0 THEN 'I' ELSE '' END \
         || CASE WHEN g.tgtype & 16 <> 0 THEN 'U' ELSE '' END \
         || CASE WHEN g.tgtype & 8 <> 0 THEN 'D' ELSE '' END, g.tgname, p.prosrc {from} \
         JOIN pg_trigger g ON g.tgrelid = to_regclass(t.name) \
         AND NOT g.tgisinternal AND g.tgenabled <> 'D' \
         JOIN pg_proc p ON p.oid = g.tgfoid"
    )
}

/// The `TableInfo` of `table` (as asked) from the probe's rows (table, kind, name, detail).
pub fn read_probe(table: &str, rows: &[[String; 4]]) -> TableInfo {
    let mut info = TableInfo::default();
    for [t, kind, name, detail] in rows.iter().filter(|r| r[0] == table) {
        debug_assert_eq!(t, table);
        match kind.as_str() {
            "table" => {
                info.exists = true;
                info.no_returning = name == "no returning";
                info.system = detail == "system";
            }
            "default" => {
                if is_volatile(detail) {
                    info.volatile.push(VolatileDefault {
                        column: name.clone(),
                        expression: detail.clone(),
                    });
                }
                info.sequenced |= draws_from_sequence(detail);
            }
            "identity" => info.sequenced = true,
            "column" => info.columns.push((name.clone(), detail.clone())),
            "key" => info.key.push(name.clone()),
            k => {
                if let Some(events) = k.strip_prefix("trigger ") {
                    info.triggers
                        .push((name.clone(), events.to_string(), volatile_calls(detail)));
                }
            }
        }
    }
    info
}

/// What in a function's source makes its effect differ per node ("" when nothing does).
fn volatile_calls(source: &str) -> String {
    let n = classify(source).nondeterministic;
    let mut calls = Vec::new();
    if n.now {
        calls.push("now()");
    }
    if n.clock {
        calls.push("clock_timestamp()");
    }
    if n.random {
        calls.push("random()");
    }
    if n.uuid {
        calls.push("gen_random_uuid()");
    }
    if n.sequence {
        calls.push("nextval()");
    }
    calls.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: &str, k: &str, n: &str, d: &str) -> [String; 4] {
        [t.into(), k.into(), n.into(), d.into()]
    }

    #[test]
    fn probe_rows_make_a_table() {
        let rows = vec![
            row("jobs", "table", "", ""),
            row("v", "table", "no returning", ""),
            row("pg_class", "table", "", "system"),
            row("jobs", "column", "id", "integer"),
            row("jobs", "column", "at", "timestamp with time zone"),
            row("jobs", "default", "id", "nextval('jobs_id_seq'::regclass)"),
            row("jobs", "default", "at", "now()"),
            row("jobs", "key", "id", ""),
            row(
                "jobs",
                "trigger IU",
                "stamp",
                "BEGIN NEW.at := clock_timestamp(); RETURN NEW; END",
            ),
            row(
                "jobs",
                "trigger D",
                "audit",
                "BEGIN INSERT INTO a VALUES (OLD.id); END",
            ),
            row("other", "table", "", ""),
        ];
        let info = read_probe("jobs", &rows);
        assert!(info.exists && info.sequenced);
        assert_eq!(info.key, vec!["id"]);
        assert_eq!(info.type_of("at"), Some("timestamp with time zone"));
        assert_eq!(info.volatile.len(), 1);
        assert_eq!(
            info.volatile_trigger('U'),
            Some(("stamp", "clock_timestamp()"))
        );
        assert_eq!(info.volatile_trigger('D'), None);
        assert!(!read_probe("missing", &rows).exists);
        assert!(!info.no_returning && !info.system);
        assert!(read_probe("v", &rows).no_returning && read_probe("pg_class", &rows).system);
    }

    #[test]
    fn probe_names_are_quoted_as_sql_strings() {
        let sql = probe_sql(&["o'brien", "public.t"]);
        assert!(sql.contains("('o''brien'), ('public.t')"));
    }
}
