//! Writes replicated by their effect, for a simple Query: `effects::shape` and `effects::plan`
//! of each statement against a table the fuzzer describes (key, column types, triggers), the
//! lead's answers (RowDescription, DataRows with the hidden columns, CommandComplete / error)
//! fed to `EffectRuns` as the session feeds them, and the replicas' statement built from them
//! (`Effects::replica_sql`, `EffectRuns::replica`).
//!
//! Input: one flags byte (the table), the SQL text up to the first NUL, then the lead's
//! answers as records `kind, len, len bytes`.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use pgmulti::protocol::backend;
use pgmulti::protocol::framing::{begin_message, finish_message, message_header};
use pgmulti::protocol::frontend::parse_query;
use pgmulti::protocol::MAX_MESSAGE_LEN;
use pgmulti::replication::catalog::TableInfo;
use pgmulti::replication::effect_runs::EffectRuns;
use pgmulti::replication::effects::{self, failed_check, LeadRows};
use pgmulti::replication::extended::EffectExecute;
use pgmulti::replication::lexer::split_statements;

/// The table of `shape` as the lead's catalog could describe it, chosen by `flags`.
fn table_for(shape: &effects::Shape, flags: u8) -> TableInfo {
    let mut columns: Vec<String> = vec!["id".into()];
    for c in shape.set_columns.iter().chain(&shape.pinned) {
        if !columns.contains(c) {
            columns.push(c.clone());
        }
    }
    let key = match (flags >> 1) & 3 {
        0 => Vec::new(),
        1 => shape.pinned.clone(),
        2 => vec!["id".to_string()],
        _ => shape.set_columns.iter().take(1).cloned().collect(),
    };
    let mut triggers = Vec::new();
    if flags & 0x10 != 0 {
        let calls = if flags & 0x20 != 0 { "now()" } else { "" };
        triggers.push(("t".to_string(), "IUD".to_string(), calls.to_string()));
    }
    TableInfo {
        exists: flags & 1 == 0,
        // A view, a table with rules or row-level security: no hidden RETURNING.
        no_returning: flags & 0x80 != 0,
        system: false,
        volatile: Vec::new(),
        sequenced: flags & 0x40 != 0,
        // Without types (flag 8) the hidden columns cannot be typed: other plans.
        columns: if flags & 8 == 0 {
            columns
                .into_iter()
                .enumerate()
                .map(|(i, c)| (c, if i % 2 == 0 { "integer" } else { "text" }.to_string()))
                .collect()
        } else {
            Vec::new()
        },
        key,
        triggers,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A message with this tag and body, framed.
fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    let at = begin_message(&mut m, tag);
    m.extend_from_slice(body);
    finish_message(&mut m, at);
    m
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (sql, mut answers) = match rest.iter().position(|&b| b == 0) {
        Some(n) => (&rest[..n], &rest[n + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(sql) = std::str::from_utf8(sql) else {
        return;
    };
    let _ = failed_check(sql);

    // As `Session::effects_of`: every statement planned against its table.
    let mut tables = HashMap::new();
    let mut found = Vec::new();
    let mut statements = 0;
    for (i, statement) in split_statements(sql).enumerate() {
        statements += 1;
        let Some(shape) = effects::shape(statement) else {
            continue;
        };
        assert!(shape.end <= statement.len());
        if let Some((start, end)) = shape.set {
            assert!(start <= end && end <= statement.len());
        }
        let info = table_for(&shape, flags.wrapping_add(i as u8));
        let direct = effects::plan(statement, &info);
        tables.insert(shape.key.clone(), info);
        let planned = effects::plan_in(statement, &tables);
        assert_eq!(direct.is_ok(), planned.is_ok());
        let Ok(Some(e)) = planned else {
            continue;
        };
        let _ = (e.reruns(), e.keyed(), e.statement());
        assert!(e.hidden == 0 || e.lead_sql.contains("md5(ROW("));

        // Effects::replica_sql on its own, with rows that have exactly the hidden columns.
        let mut lead = LeadRows::default();
        for chunk in answers.chunks(17).take(4) {
            let md5 = hex(chunk);
            let mut hidden: Vec<Option<&[u8]>> = (1..e.hidden)
                .map(|k| chunk.get(k..).filter(|_| k % 3 != 0))
                .collect();
            hidden.push(Some(md5.as_bytes()));
            let _ = lead.add(&hidden);
        }
        let _ = e.replica_sql(&lead);
        let _ = e.replica_sql(&LeadRows::default());

        let start = statement.as_ptr() as usize - sql.as_ptr() as usize;
        found.push(EffectExecute::in_query(
            e,
            i,
            (start, start + statement.len()),
        ));
    }
    let Some(mut runs) = EffectRuns::query(sql.to_string(), found, statements) else {
        return;
    };
    let _ = runs.lead_query();
    let _ = runs.reruns();
    let _ = runs.statement();

    // The lead's answers, in order.
    let mut out = Vec::new();
    while let [kind, len, tail @ ..] = answers {
        let len = (*len as usize).min(tail.len());
        let (record, next) = tail.split_at(len);
        answers = next;
        match kind % 8 {
            // A DataRow of text values, the last one an md5 in hex when long enough.
            0 | 1 => {
                let texts: Vec<String> = record
                    .split(|&b| b == b',')
                    .map(|v| {
                        if v.len() >= 8 && kind % 8 == 0 {
                            hex(v)
                        } else {
                            String::from_utf8_lossy(v).into_owned()
                        }
                    })
                    .collect();
                let values: Vec<Option<&str>> = texts
                    .iter()
                    .map(|t| (t != "N").then_some(t.as_str()))
                    .collect();
                let mut m = Vec::new();
                backend::data_row(&mut m, &values);
                runs.lead_row(b'D', &m, &mut out);
            }
            2 => {
                let names: Vec<String> = record
                    .split(|&b| b == b',')
                    .map(|v| String::from_utf8_lossy(v).replace('\0', ""))
                    .collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let mut m = Vec::new();
                backend::row_description(&mut m, &names);
                runs.lead_row(b'T', &m, &mut out);
            }
            3 => {
                let tag = if *kind >= 128 { b'T' } else { b'D' };
                runs.lead_row(tag, &framed(tag, record), &mut out);
            }
            4 => {
                let tag = String::from_utf8_lossy(record).replace('\0', "");
                let mut m = Vec::new();
                backend::command_complete(&mut m, &tag);
                runs.lead_answered(b'C', &m);
            }
            5 => runs.lead_answered(b'E', &framed(b'E', record)),
            6 => {
                let tag = [b'I', b's', b'C', b'E'][(*kind as usize >> 3) % 4];
                runs.lead_answered(tag, &framed(tag, record));
            }
            _ => {
                let _ = runs.lead_row_streams(if *kind >= 128 { b'T' } else { b'D' }, len);
            }
        }
        // What the client gets of a row is a whole message.
        if !out.is_empty() {
            let (_, total) = message_header(&out, MAX_MESSAGE_LEN).unwrap().unwrap();
            assert_eq!(total, out.len());
        }
    }

    // The replicas run only when the lead's answer was readable (`Session::advance`).
    if runs.unreadable.is_none() {
        let replica = runs.replica(&[]);
        assert_eq!(replica.checked.len(), statements);
        let (tag, total) = message_header(&replica.bytes, MAX_MESSAGE_LEN)
            .unwrap()
            .unwrap();
        assert_eq!((tag, total), (b'Q', replica.bytes.len()));
        parse_query(&replica.bytes[5..]).expect("the replicas' Query is well formed");
    }
});
