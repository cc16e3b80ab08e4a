//! Extended-protocol batches in replication mode: `extended::prepare` over message buffers,
//! several batches through the same `Statements` (named statements, portals, unnamed reads
//! pinned to a node, ends of transactions), the catalog look-up it asks for answered with
//! fuzzer-described tables, the Describe fixes applied to node answers, and for writes
//! replicated by their effect, the replicas' batch (`extended::replica_batch`, directly and
//! through `EffectRuns`).
//!
//! Input: one flags byte (the tables), then records `op, len, len bytes`; most ops append one
//! message built from the record (so the fuzzer works on fields, not on framing), one appends
//! raw bytes, Sync and Flush end a batch.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use pgmulti::protocol::backend;
use pgmulti::protocol::framing::{begin_message, finish_message, message_header, put_i16, put_u32};
use pgmulti::protocol::frontend::{
    self, parse_bind, parse_describe_or_close, parse_execute, parse_parse,
};
use pgmulti::protocol::MAX_MESSAGE_LEN;
use pgmulti::replication::catalog::TableInfo;
use pgmulti::replication::defaults::VolatileDefault;
use pgmulti::replication::effect_runs::EffectRuns;
use pgmulti::replication::effects::LeadRows;
use pgmulti::replication::extended::{
    cut_row_description, plain_begin_answer, prepare, ran_on, replica_batch,
    trim_parameter_description, EffectExecute, Prepared, Statements,
};
use pgmulti::replication::request::Values;

const NAMES: [&str; 4] = ["", "s1", "s2", "p1"];

fn name(b: Option<&u8>) -> &'static str {
    NAMES[b.copied().unwrap_or(0) as usize % NAMES.len()]
}

/// A table as the lead's catalog could describe it.
fn table(flags: u8) -> TableInfo {
    let columns = ["id", "status", "a", "at", "n"];
    let types = [
        "integer",
        "text",
        "text",
        "timestamp with time zone",
        "bigint",
    ];
    TableInfo {
        exists: flags & 1 == 0,
        // A view, a table with rules or row-level security: no hidden RETURNING.
        no_returning: flags & 0x80 != 0,
        system: false,
        volatile: if flags & 2 != 0 {
            vec![VolatileDefault {
                column: "at".into(),
                expression: "now()".into(),
            }]
        } else {
            Vec::new()
        },
        sequenced: flags & 4 != 0,
        columns: columns
            .iter()
            .zip(types)
            .map(|(c, t)| (c.to_string(), t.to_string()))
            .collect(),
        key: match (flags >> 3) & 3 {
            0 => Vec::new(),
            1 => vec!["id".into()],
            2 => vec!["id".into(), "a".into()],
            _ => vec!["status".into()],
        },
        triggers: if flags & 0x20 != 0 {
            let calls = if flags & 0x40 != 0 { "random()" } else { "" };
            vec![("trg".into(), "IUD".into(), calls.into())]
        } else {
            Vec::new()
        },
    }
}

fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    let at = begin_message(&mut m, tag);
    m.extend_from_slice(body);
    finish_message(&mut m, at);
    m
}

/// (tag, body) of each whole message, and whether the bytes are exactly whole messages.
fn messages(mut bytes: &[u8]) -> (Vec<(u8, &[u8])>, bool) {
    let mut out = Vec::new();
    while let Ok(Some((tag, len))) = message_header(bytes, MAX_MESSAGE_LEN) {
        let Some(msg) = bytes.get(..len) else {
            break;
        };
        out.push((tag, &msg[5..]));
        bytes = &bytes[len..];
    }
    (out, bytes.is_empty())
}

/// Every message pgmulti writes for the nodes is one they can read.
fn check_well_formed(bytes: &[u8], what: &str) {
    let (msgs, whole) = messages(bytes);
    assert!(whole, "{what}: not whole messages");
    for (tag, body) in msgs {
        let ok = match tag {
            b'P' => parse_parse(body).is_ok(),
            b'B' => parse_bind(body).is_ok_and(|b| b.params.iter().count() == b.params.len()),
            b'E' => parse_execute(body).is_ok(),
            b'D' | b'C' => parse_describe_or_close(body).is_ok(),
            _ => true,
        };
        assert!(
            ok,
            "{what}: malformed {:?} message of {} bytes, starting {:?}",
            tag as char,
            body.len(),
            &body[..body.len().min(64)]
        );
    }
}

struct Session {
    statements: Statements,
    tables: HashMap<String, TableInfo>,
    flags: u8,
    n: u64,
}

impl Session {
    fn run(&mut self, batch: &[u8], clean: bool, answers: &[u8]) {
        let _ = plain_begin_answer(batch, &self.statements);
        let mut n = self.n;
        let mut random = move || {
            n = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
            n
        };
        let mut prepared = None;
        // A batch that needs the catalog first is prepared again once the tables are known.
        for _ in 0..2 {
            let mut values = Values {
                transaction_ts: (1_795_240_800, 1),
                statement_ts: (1_795_240_805, 2),
                random: &mut random,
                backend: &|_| None,
            };
            match prepare(batch, &mut self.statements, &self.tables, &mut values) {
                Prepared::NeedTables(needed) => {
                    assert!(!needed.is_empty());
                    for (i, (_, key)) in needed.into_iter().enumerate() {
                        let info = table(self.flags.rotate_left(i as u32));
                        self.tables.insert(key, info);
                    }
                }
                other => {
                    prepared = Some(other);
                    break;
                }
            }
        }
        self.n = self.n.wrapping_add(1);
        let Some(Prepared::Ready(b)) = prepared else {
            return;
        };
        if clean {
            check_well_formed(&b.bytes, "batch");
        }
        if let Some(p) = &b.parses_only {
            check_well_formed(p, "parses_only");
        }
        assert!(b.effects.len() <= b.executes);

        // What the voice answers to each Describe, fixed for the client.
        for (i, fix) in b.describes.iter().enumerate() {
            let body = answers.get(i * 8..).unwrap_or_default();
            if let Some(n) = fix.params.filter(|&n| n <= 65_535) {
                let mut t = Vec::new();
                let at = begin_message(&mut t, b't');
                let count = (body.len() / 4).min(1000);
                put_i16(&mut t, count as i16);
                for c in body.chunks_exact(4).take(count) {
                    put_u32(&mut t, u32::from_be_bytes(c.try_into().unwrap()));
                }
                finish_message(&mut t, at);
                let trimmed = trim_parameter_description(&t, n);
                let (_, total) = message_header(&trimmed, MAX_MESSAGE_LEN).unwrap().unwrap();
                assert_eq!(total, trimmed.len());
            }
            if fix.hidden > 0 {
                let mut out = Vec::new();
                let names: Vec<String> = body
                    .split(|&b| b == b',')
                    .map(|v| String::from_utf8_lossy(v).replace('\0', ""))
                    .collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let mut t = Vec::new();
                backend::row_description(&mut t, &names);
                cut_row_description(&t, fix.hidden, &mut out);
                cut_row_description(&framed(b'T', body), fix.hidden, &mut out);
            }
        }

        if !b.effects.is_empty() {
            // Directly: every other write applied by pgmulti's own statement.
            let refs: Vec<&EffectExecute> = b.effects.iter().collect();
            let sqls: Vec<Option<String>> = b
                .effects
                .iter()
                .enumerate()
                .map(|(i, fx)| (i % 2 == 0).then(|| fx.effects.replica_sql(&LeadRows::default())))
                .collect();
            let (replica, extra) = replica_batch(&b.bytes, &refs, &sqls);
            assert_eq!(extra, 4 * sqls.iter().flatten().count());
            if clean {
                check_well_formed(&replica, "replica batch");
            }
            // Through EffectRuns, with the lead's rows taken from the input.
            if let Some(mut runs) = EffectRuns::batch(b.effects.clone(), b.executes) {
                let mut out = Vec::new();
                for (k, chunk) in answers.chunks(24).enumerate() {
                    match chunk.first().map(|c| c % 4) {
                        Some(0) | Some(1) => {
                            let hex: String = chunk.iter().map(|b| format!("{b:02x}")).collect();
                            let mut vals: Vec<Option<&str>> =
                                vec![Some("1"); (chunk[0] >> 2) as usize % 6];
                            vals.push(Some(hex.as_str()));
                            let mut m = Vec::new();
                            backend::data_row(&mut m, &vals);
                            runs.lead_row(b'D', &m, &mut out);
                        }
                        Some(2) => {
                            runs.lead_row(b'D', &framed(b'D', chunk), &mut out);
                        }
                        _ => {
                            let mut m = Vec::new();
                            backend::command_complete(&mut m, &format!("UPDATE {k}"));
                            runs.lead_answered(b'C', &m);
                        }
                    }
                }
                if runs.unreadable.is_none() {
                    let replica = runs.replica(&b.bytes);
                    assert_eq!(replica.checked.len(), b.executes);
                    if clean {
                        check_well_formed(&replica.bytes, "EffectRuns replica batch");
                    }
                }
            }
        }
        ran_on(&mut self.statements, &b.bytes, b.unnamed_read, 1);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut s = Session {
        statements: Statements::default(),
        tables: HashMap::new(),
        flags,
        n: 0,
    };
    let mut batch = Vec::new();
    let mut clean = true;
    let mut batches = 0;
    while let [op, len, tail @ ..] = rest {
        let len = (*len as usize).min(tail.len());
        let (r, next) = tail.split_at(len);
        rest = next;
        match op % 12 {
            // Parse: statement name, then the SQL text; the op's high bits declare types.
            0 | 1 => {
                let sql = String::from_utf8_lossy(r.get(1..).unwrap_or_default()).replace('\0', "");
                let types: Vec<u32> = (0..(op >> 5))
                    .map(|i| [0, 23, 25, 1184][i as usize % 4])
                    .collect();
                frontend::parse_message(&mut batch, name(r.first()), &sql, &types);
            }
            // Bind: portal, statement, formats, then comma-separated values ("N": NULL).
            2 | 3 => {
                let formats: Vec<i16> = (0..r.get(2).map_or(0, |f| f % 4))
                    .map(|i| i16::from(r.get(3).is_some_and(|f| f >> i & 1 == 1)))
                    .collect();
                let vals: Vec<Option<&[u8]>> = r
                    .get(4..)
                    .unwrap_or_default()
                    .split(|&b| b == b',')
                    .filter(|_| len > 4)
                    .map(|v| (v != b"N").then_some(v))
                    .collect();
                let results: Vec<i16> = (0..r.get(3).map_or(0, |f| f >> 6))
                    .map(|i| i16::from(i % 2 == 1))
                    .collect();
                frontend::bind_message(
                    &mut batch,
                    name(r.get(1)),
                    name(r.first()),
                    &formats,
                    &vals,
                    &results,
                );
            }
            // A Bind with many NULL parameters. Capped at 31,900 so that pgmulti's own values
            // (at most one per call in a <= 4 KB statement) keep the count below 32,768: above,
            // known finding 1 (README), the rewritten Bind's Int16 counts wrap.
            4 => {
                let count = r
                    .get(..2)
                    .map_or(0, |c| u16::from_le_bytes([c[0], c[1]]) & 0x7fff)
                    .min(31_900);
                let vals = vec![None; count as usize];
                let formats: Vec<i16> = if r.get(2).is_some_and(|f| f & 1 == 1) {
                    vec![1]
                } else {
                    Vec::new()
                };
                frontend::bind_message(
                    &mut batch,
                    name(r.get(3)),
                    name(r.get(4)),
                    &formats,
                    &vals,
                    &[],
                );
            }
            5 => frontend::execute_message(
                &mut batch,
                name(r.first()),
                r.get(1).map_or(0, |&m| i32::from(m) - 1),
            ),
            6 | 7 => {
                let tag = if op % 12 == 6 { b'D' } else { b'C' };
                let at = begin_message(&mut batch, tag);
                batch.push(if r.first().is_some_and(|k| k & 1 == 1) {
                    b'P'
                } else {
                    b'S'
                });
                batch.extend_from_slice(name(r.get(1)).as_bytes());
                batch.push(0);
                finish_message(&mut batch, at);
            }
            // Sync or Flush: the batch goes.
            8 | 9 => {
                if op % 12 == 8 {
                    frontend::sync(&mut batch);
                } else {
                    frontend::flush(&mut batch);
                }
                s.run(&batch, clean, r);
                batch.clear();
                clean = true;
                batches += 1;
                if batches > 16 {
                    return;
                }
            }
            // A raw message (any tag and body), or raw bytes.
            10 => {
                let (tag, body) = r.split_first().map_or((b'Q', &[][..]), |(t, b)| (*t, b));
                batch.extend_from_slice(&framed(tag, body));
                clean = false;
            }
            _ => match r.first().map(|c| c % 3) {
                Some(0) => s.statements.end_transaction(),
                Some(1) => s.statements.forget_all(),
                _ => {
                    batch.extend_from_slice(r);
                    clean = false;
                }
            },
        }
    }
    if !batch.is_empty() {
        s.run(&batch, clean, &[]);
    }
    let mut replay = Vec::new();
    if s.statements.replay(&mut replay) {
        check_well_formed(&replay, "replay");
    }
});
