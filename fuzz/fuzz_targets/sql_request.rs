//! A client's simple Query as replication mode handles it: `request::analyse`, the refusal of
//! `pg_terminate_backend(<number>)`, the ordering lock, non-deterministic column defaults
//! written in (`defaults::fill`), and `request::rewrite` with literal values (simple protocol)
//! and with parameters (prepared statements).
//!
//! Besides "no panic", one property: what `rewrite` accepts for a request that writes must
//! leave no non-deterministic call in its INSERT/UPDATE/DELETE statements (otherwise each node
//! computes its own value). Set FUZZ_NO_DETERMINISM_CHECK=1 to check only for panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgmulti::replication::classify::{classify, Kind};
use pgmulti::replication::defaults::{fill, VolatileDefault};
use pgmulti::replication::lexer::split_statements;
use pgmulti::replication::plan::Class;
use pgmulti::replication::request::{
    analyse, ordering_lock, rewrite, signal_text, signals, Parameters, Values,
};

fn check_determinism() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_NO_DETERMINISM_CHECK").is_none())
}

/// The data statements of `text` that still compute a value per node.
fn still_nondeterministic(text: &str) -> Option<&str> {
    split_statements(text).find(|s| {
        let c = classify(s);
        let n = c.nondeterministic;
        c.kind == Kind::Write
            && matches!(c.command, "INSERT" | "UPDATE" | "DELETE")
            && (n.now || n.clock || n.random || n.uuid)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let calls = signals(sql);
    let _ = signal_text(sql, &calls, |pid| pid.checked_mul(3));
    let analysed = analyse(sql);
    for shape in &analysed.inserts {
        // Offsets are into the whole request.
        for &at in shape
            .columns_close
            .iter()
            .chain(shape.rows_close.iter().flatten())
        {
            assert_eq!(sql.as_bytes().get(at), Some(&b')'), "insert offset off");
        }
    }
    let _ = ordering_lock(&analysed, &|k| k.len() % 2 == 0);

    // Every inserted table has volatile defaults the INSERT may leave out.
    let filled = fill(sql, &analysed.inserts, &|key| {
        if key.len() % 3 == 0 {
            Vec::new()
        } else {
            vec![
                VolatileDefault {
                    column: "at".into(),
                    expression: "now()".into(),
                },
                VolatileDefault {
                    column: "Id".into(),
                    expression: "gen_random_uuid()".into(),
                },
            ]
        }
    });
    let reanalysed;
    let (text, analysed) = match &filled {
        Ok(Some(f)) => {
            reanalysed = analyse(f);
            (f.as_str(), &reanalysed)
        }
        _ => (sql, &analysed),
    };

    let mut n = 0u64;
    let mut random = move || {
        n = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        n
    };
    let mut values = Values {
        transaction_ts: (1_795_240_800, 1),
        statement_ts: (1_795_240_805, 999_999),
        random: &mut random,
        backend: &|_| None,
    };
    let literal = rewrite(text, analysed, &mut values);
    if let Ok(Some(new)) = &literal {
        assert_ne!(new, text, "a rewrite that changes nothing");
        let _ = analyse(new);
        // An error position in the rewritten text moves back inside the client's. (The
        // matching is quadratic: short texts only, or the target runs 20 times slower.)
        let chars = text.chars().count();
        let short = text.len() <= 256;
        for at in [1, new.chars().count() / 2 + 1, new.chars().count()]
            .into_iter()
            .filter(|_| short)
        {
            if let Some(p) = pgmulti::replication::position::original_position(text, new, at) {
                assert!((1..=chars + 1).contains(&p), "{at} -> {p}");
            }
        }
    }
    let mut params = Parameters {
        first: 1,
        values: Vec::new(),
    };
    let prepared = rewrite(text, analysed, &mut params);
    assert_eq!(
        literal.is_ok(),
        prepared.is_ok(),
        "literal and parameter rewrites disagree on refusing"
    );

    // Only requests that write are rewritten (`Session::replicated_text`).
    let writes = !matches!(analysed.class, Class::Read | Class::LeadOnly);
    if writes && check_determinism() {
        if let Ok(result) = &literal {
            let runs = result.as_deref().unwrap_or(text);
            if let Some(s) = still_nondeterministic(runs) {
                panic!("rewrite accepted a statement every node computes differently: {s:?}\n(request: {text:?})");
            }
        }
    }
});
