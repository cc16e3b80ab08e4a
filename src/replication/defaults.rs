//! Column defaults that are not deterministic (`DEFAULT now()`, `DEFAULT gen_random_uuid()`,
//! …): invisible in an INSERT's text, they would let every node store a different value.
//! pgmulti learns from the lead which columns of an inserted table have such defaults
//! (`catalog`, cached per session), then writes the default expression into the INSERT itself
//! (`fill`) so that the usual rewrite turns it into one literal for every node. Forms it
//! cannot fill (INSERT … SELECT, DEFAULT VALUES, no column list) are refused with a hint.
//! Sequence defaults (SERIAL, IDENTITY) are left alone: the ordering lock handles them.

use super::classify::classify;
use super::lexer::{fold_ident, qualified_name, Lexer, Token, TokenKind, NAMEDATALEN};

/// Where an INSERT statement can take extra columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertShape {
    /// The table as written (quotes kept), for `to_regclass`.
    pub table: String,
    /// The folded name: the cache key and the ordering-lock key.
    pub key: String,
    /// Folded names of the column list, if one is given.
    pub columns: Option<Vec<String>>,
    /// Byte offset (in the whole query) of the `)` closing the column list.
    pub columns_close: Option<usize>,
    /// Byte offsets of the `)` closing each `VALUES` row; `None` when the rows come from a
    /// query, `DEFAULT VALUES`, or anything else.
    pub rows_close: Option<Vec<usize>>,
    /// `DEFAULT` appears among the values (or `DEFAULT VALUES`).
    pub default_keyword: bool,
}

/// A column whose default is not deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolatileDefault {
    pub column: String,
    pub expression: String,
}

/// Read the shape of the INSERT in `statement`, which starts at `offset` in the query.
pub fn insert_shape(statement: &str, offset: usize) -> Option<InsertShape> {
    let tokens: Vec<Token> = Lexer::new(statement).collect();
    let into = tokens.iter().position(|t| t.is_kw("INTO"))?;
    let (table, key, _, mut i) = qualified_name(&tokens, into + 1)?;
    if tokens.get(i).is_some_and(|t| t.is_kw("AS")) {
        i += 2;
    }
    let mut shape = InsertShape {
        table,
        key,
        columns: None,
        columns_close: None,
        rows_close: None,
        default_keyword: false,
    };
    if tokens.get(i).is_some_and(|t| t.is_punct(b'(')) {
        let mut cols = Vec::new();
        i += 1;
        while let Some(t) = tokens.get(i) {
            if t.is_punct(b')') {
                shape.columns_close = Some(offset + t.start);
                break;
            }
            if matches!(t.kind, TokenKind::Ident | TokenKind::QuotedIdent) {
                let mut buf = [0u8; NAMEDATALEN];
                cols.push(fold_ident(t.text, &mut buf).to_string());
            } else if !t.is_punct(b',') {
                return Some(shape); // col[1] or col.field: leave it as "cannot fill"
            }
            i += 1;
        }
        shape.columns = Some(cols);
        i += 1;
    }
    if tokens.get(i).is_some_and(|t| t.is_kw("OVERRIDING")) {
        i += 3;
    }
    match tokens.get(i) {
        Some(t) if t.is_kw("DEFAULT") => shape.default_keyword = true,
        Some(t) if t.is_kw("VALUES") => {
            let mut rows = Vec::new();
            let mut depth = 0u32;
            for t in &tokens[i + 1..] {
                if t.is_punct(b'(') || t.is_punct(b'[') {
                    depth += 1;
                } else if t.is_punct(b')') || t.is_punct(b']') {
                    depth = depth.saturating_sub(1);
                    if depth == 0 && t.is_punct(b')') {
                        rows.push(offset + t.start);
                    }
                } else if depth == 0 && !t.is_punct(b',') {
                    break; // ON CONFLICT, RETURNING, ;
                } else if depth == 1 && t.is_kw("DEFAULT") {
                    shape.default_keyword = true;
                } else if t.is_kw("SELECT") {
                    return Some(shape); // a sub-select feeding the rows: treat as "cannot fill"
                }
            }
            shape.rows_close = Some(rows);
        }
        _ => {}
    }
    Some(shape)
}

/// Whether a default may draw from a sequence — SERIAL, IDENTITY, an explicit nextval, or a
/// call pgmulti does not fill in itself (a function may call nextval): inserts that may use
/// it take the ordering lock (`request::ordering_lock`). Literals, casts and the
/// non-deterministic calls pgmulti fills in (now(), random(), …) do not.
pub fn draws_from_sequence(expression: &str) -> bool {
    let nextval = expression
        .as_bytes()
        .windows(8)
        .any(|w| w.eq_ignore_ascii_case(b"nextval("));
    nextval || (expression.contains('(') && !is_volatile(expression))
}

/// Whether a default expression must be made deterministic (sequences are not: the
/// ordering lock makes them agree).
pub fn is_volatile(expression: &str) -> bool {
    let n = classify(&format!("SELECT {expression}")).nondeterministic;
    n.now || n.clock || n.random || n.uuid || n.maybe_now
}

/// Why an INSERT cannot be filled in.
pub fn refusal_hint(table: &str, column: &str) -> (String, String) {
    (
        format!(
            "this INSERT cannot be replicated: the default of column \"{column}\" of {table} is not deterministic and the INSERT leaves it to each node"
        ),
        format!(
            "name the column and give it a value (for example now()), in INSERT INTO {table} (…, {column}) VALUES (…)"
        ),
    )
}

/// Write the volatile defaults an INSERT leaves out into its text: the column into the
/// column list and the default expression into every VALUES row. `Ok(None)`: nothing to do.
pub fn fill(
    sql: &str,
    inserts: &[InsertShape],
    defaults: &dyn Fn(&str) -> Vec<VolatileDefault>,
) -> Result<Option<String>, (String, String)> {
    let mut edits: Vec<(usize, String)> = Vec::new();
    for shape in inserts {
        let wanted = defaults(&shape.key);
        let missing: Vec<&VolatileDefault> = wanted
            .iter()
            .filter(|d| {
                shape
                    .columns
                    .as_ref()
                    .is_none_or(|cols| !cols.contains(&d.column))
            })
            .collect();
        if wanted.is_empty() {
            continue;
        }
        if shape.default_keyword {
            return Err(refusal_hint(&shape.table, &wanted[0].column));
        }
        let Some(first) = missing.first() else {
            continue;
        };
        let (Some(close), Some(rows)) = (shape.columns_close, &shape.rows_close) else {
            return Err(refusal_hint(&shape.table, &first.column));
        };
        let names: String = missing
            .iter()
            .map(|d| format!(", {}", quote_ident(&d.column)))
            .collect();
        edits.push((close, names));
        let values: String = missing
            .iter()
            .map(|d| format!(", {}", d.expression))
            .collect();
        for &row in rows {
            edits.push((row, values.clone()));
        }
    }
    if edits.is_empty() {
        return Ok(None);
    }
    edits.sort_by_key(|(at, _)| *at);
    let mut out = String::with_capacity(sql.len() + 64 * edits.len());
    let mut copied = 0;
    for (at, text) in edits {
        out.push_str(&sql[copied..at]);
        out.push_str(&text);
        copied = at;
    }
    out.push_str(&sql[copied..]);
    Ok(Some(out))
}

fn quote_ident(name: &str) -> String {
    let plain = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()));
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults_of(key: &str) -> Vec<VolatileDefault> {
        match key {
            "events" => vec![VolatileDefault {
                column: "at".into(),
                expression: "now()".into(),
            }],
            "Tok" => vec![
                VolatileDefault {
                    column: "u".into(),
                    expression: "gen_random_uuid()".into(),
                },
                VolatileDefault {
                    column: "Made At".into(),
                    expression: "clock_timestamp()".into(),
                },
            ],
            _ => vec![],
        }
    }

    fn fill_one(sql: &str) -> Result<Option<String>, (String, String)> {
        let shapes: Vec<InsertShape> = insert_shape(sql, 0).into_iter().collect();
        fill(sql, &shapes, &defaults_of)
    }

    #[test]
    fn shape_of_an_insert() {
        let s = insert_shape(
            "insert into public.\"Tok\" as x (a, \"B\") values (1, (2)), (3, DEFAULT) returning *",
            0,
        )
        .unwrap();
        assert_eq!(s.table, "public.\"Tok\"");
        assert_eq!(s.key, "public.Tok");
        assert_eq!(s.columns, Some(vec!["a".to_string(), "B".to_string()]));
        assert_eq!(s.rows_close.as_ref().map(Vec::len), Some(2));
        assert!(s.default_keyword);
        let s = insert_shape("insert into t select 1", 0).unwrap();
        assert_eq!(s.rows_close, None);
    }

    #[test]
    fn omitted_volatile_defaults_are_written_in() {
        assert_eq!(
            fill_one("INSERT INTO events (id) VALUES (1), (2) RETURNING at")
                .unwrap()
                .unwrap(),
            "INSERT INTO events (id, at) VALUES (1, now()), (2, now()) RETURNING at"
        );
        assert_eq!(
            fill_one("insert into \"Tok\" (a) values ($$)$$)").unwrap().unwrap(),
            "insert into \"Tok\" (a, u, \"Made At\") values ($$)$$, gen_random_uuid(), clock_timestamp())"
        );
        assert_eq!(
            fill_one("insert into events (id, at) values (1, now())").unwrap(),
            None
        );
        assert_eq!(fill_one("insert into other (id) values (1)").unwrap(), None);
    }

    #[test]
    fn forms_that_cannot_be_filled_are_refused() {
        for sql in [
            "insert into events select 1",
            "insert into events values (1)",
            "insert into events (id, at) values (1, DEFAULT)",
            "insert into events default values",
        ] {
            let (message, hint) = fill_one(sql).unwrap_err();
            assert!(
                message.contains("\"at\"") && hint.contains("now()"),
                "{sql}: {message} / {hint}"
            );
        }
    }

    #[test]
    fn volatile_expressions() {
        assert!(is_volatile("now()"));
        assert!(is_volatile("CURRENT_TIMESTAMP"));
        assert!(is_volatile("(now() + '1 day'::interval)"));
        assert!(is_volatile("gen_random_uuid()"));
        assert!(!is_volatile("nextval('t_id_seq'::regclass)"));
        assert!(draws_from_sequence("nextval('t_id_seq'::regclass)"));
        assert!(!draws_from_sequence("now()"));
        assert!(!draws_from_sequence("'none'::text"));
        assert!(
            draws_from_sequence("my_id()"),
            "a function may call nextval"
        );
        assert!(!is_volatile("'x'::text"));
        assert!(!is_volatile("0"));
    }
}
