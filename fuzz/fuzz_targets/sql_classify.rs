//! The SQL tokenizer and statement classifier on arbitrary text: `Lexer` (tokens in order,
//! each the slice it claims), `split_statements`, `classify` / `classify_with` on the whole
//! text and on each statement, identifier folding, qualified names, INSERT shapes and the
//! column-default checks, and `catalog::read_probe` over rows a node would return.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmulti::replication::catalog::read_probe;
use pgmulti::replication::classify::{classify, classify_with, Kind};
use pgmulti::replication::defaults::{draws_from_sequence, insert_shape, is_volatile};
use pgmulti::replication::lexer::{
    fold_ident, qualified_name, split_statements, Lexer, Nesting, Token, NAMEDATALEN,
};
use pgmulti::replication::request::is_plain_begin;

fn lex(sql: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut at = 0;
    let mut lexer = Lexer::new(sql);
    while let Some(t) = lexer.next() {
        assert!(t.start >= at, "tokens overlap or go back");
        assert!(t.end() <= sql.len(), "token past the end");
        assert!(!t.text.is_empty(), "empty token");
        assert_eq!(
            &sql[t.start..t.end()],
            t.text,
            "token text is not its slice"
        );
        assert!(lexer.offset() >= t.end());
        let _ = t.string_body();
        at = t.end();
        tokens.push(t);
        assert!(tokens.len() <= sql.len(), "more tokens than bytes");
    }
    tokens
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let tokens = lex(sql);

    let mut nesting = Nesting::default();
    let mut buf = [0u8; NAMEDATALEN];
    for (i, t) in tokens.iter().enumerate() {
        nesting.feed(t);
        let folded = fold_ident(t.text, &mut buf);
        assert!(folded.len() < NAMEDATALEN);
        if let Some((_written, _key, last, next)) = qualified_name(&tokens, i) {
            assert!(next > i && next <= tokens.len());
            assert!(!last.is_empty());
        }
    }
    let _ = nesting.depth();

    let whole = classify(sql);
    let hook = |name: &str| name.len() % 2 == 0;
    let with_hook = classify_with(sql, &hook);
    // The hook can only turn an unknown function into a read, never the reverse.
    if whole.kind == Kind::Read {
        assert_eq!(
            with_hook.kind,
            Kind::Read,
            "a read-only hook made a read a write"
        );
    }
    if let Some(body) = whole.body {
        let _ = classify(body);
    }

    let base = sql.as_ptr() as usize;
    for statement in split_statements(sql) {
        let offset = statement.as_ptr() as usize - base;
        assert!(
            offset + statement.len() <= sql.len(),
            "statement not inside the text"
        );
        assert!(!statement.is_empty());
        let c = classify(statement);
        let _ = lex(statement);
        if c.command == "INSERT" {
            if let Some(shape) = insert_shape(statement, offset) {
                if let Some(close) = shape.columns_close {
                    assert_eq!(sql.as_bytes()[close], b')');
                }
                for &row in shape.rows_close.iter().flatten() {
                    assert_eq!(sql.as_bytes()[row], b')');
                }
            }
        }
    }
    let _ = is_plain_begin(sql);
    let _ = is_volatile(sql);
    let _ = draws_from_sequence(sql);

    // The catalog probe's rows, as a node answers them: `table|kind|name|detail` per line.
    let rows: Vec<[String; 4]> = sql
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, '|').map(str::to_string);
            [(); 4].map(|_| f.next().unwrap_or_default())
        })
        .collect();
    if let Some(first) = rows.first() {
        let info = read_probe(&first[0], &rows);
        for e in ['I', 'U', 'D'] {
            let _ = info.volatile_trigger(e);
        }
        for (c, _) in &info.columns {
            assert!(info.type_of(c).is_some());
        }
    }
});
