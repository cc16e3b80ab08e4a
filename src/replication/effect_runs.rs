//! One request's writes replicated by their effect (`effects.rs`), as the session runs
//! them: what the lead answered to each (its hidden columns, its outcome), and the request
//! each replica runs instead, made from that once the lead is done.
//!
//! In a simple Query each statement may be one; in an extended-protocol batch each Execute
//! of such a statement (`extended::EffectExecute`). The lead's answers arrive in the order
//! of the request's statements or Executes, each ended by CommandComplete,
//! EmptyQueryResponse, an error or PortalSuspended: that is how a row is matched to its
//! write. Pure logic over message bytes.

use super::compare::{self, Outcome};
use super::effects::{Effects, LeadRows};
use super::extended::{self, EffectExecute};
use crate::protocol::{backend, frontend};

/// The writes of one request replicated by their effect.
pub struct EffectRuns {
    runs: Vec<Run>,
    /// How many Executes (a Query: statements) the request has.
    executes: usize,
    /// An extended-protocol batch (else a simple Query).
    batch: bool,
    /// A Query: its text (as rewritten for non-determinism), where the writes are.
    text: String,
    /// The Execute the lead is answering now.
    lead_at: usize,
    replica: Option<Replica>,
    /// The lead's hidden columns could not be read: the replicas must not run.
    pub unreadable: Option<String>,
}

struct Run {
    exec: EffectExecute,
    lead: LeadRows,
    /// The lead's outcome of this Execute.
    outcome: Option<Outcome>,
}

/// What every replica runs for the request, and, for each of its Executes in order, the
/// lead's outcome that a passed check of pgmulti's stands for (None: compare its own).
pub struct Replica {
    pub bytes: Vec<u8>,
    pub checked: Vec<Option<Outcome>>,
    /// How many more messages end a replica's answer than the lead's (Flush batches).
    pub extra_replies: usize,
}

impl EffectRuns {
    /// A Query (`text`) of `statements` statements, of which these are writes replicated
    /// by their effect (`EffectExecute::in_query`); None when there are none.
    pub fn query(
        text: String,
        effects: Vec<EffectExecute>,
        statements: usize,
    ) -> Option<EffectRuns> {
        let mut runs = EffectRuns::batch(effects, statements)?;
        runs.batch = false;
        runs.text = text;
        Some(runs)
    }

    /// A batch with `executes` Executes, of which these are writes replicated by effect;
    /// None when there are none.
    pub fn batch(effects: Vec<EffectExecute>, executes: usize) -> Option<EffectRuns> {
        (!effects.is_empty()).then(|| EffectRuns::new(effects, executes))
    }

    fn new(effects: Vec<EffectExecute>, executes: usize) -> EffectRuns {
        EffectRuns {
            runs: effects
                .into_iter()
                .map(|exec| Run {
                    exec,
                    lead: LeadRows::default(),
                    outcome: None,
                })
                .collect(),
            executes,
            batch: true,
            text: String::new(),
            lead_at: 0,
            replica: None,
            unreadable: None,
        }
    }

    /// A Query as the lead runs it: each write with hidden columns as `Effects::lead_sql`.
    pub fn lead_query(&self) -> String {
        let parts = self.runs.iter().filter(|r| r.exec.effects.hidden > 0);
        splice(
            &self.text,
            parts.map(|r| (r.exec.span(), r.exec.effects.lead_sql.as_str())),
        )
    }

    /// Some write re-runs on the replicas (it may disagree without any fault).
    pub fn reruns(&self) -> bool {
        self.runs.iter().any(|r| r.exec.effects.reruns())
    }

    /// The first write's statement (for messages).
    pub fn statement(&self) -> &str {
        self.runs.first().map_or("", |r| r.exec.effects.statement())
    }

    /// The write the lead answers now, if it carries hidden columns.
    fn hiding(&mut self) -> Option<&mut Run> {
        let at = self.lead_at;
        self.runs
            .iter_mut()
            .find(|r| r.exec.execute == at)
            .filter(|r| r.exec.effects.hidden > 0)
    }

    /// Whether this message of the lead (a DataRow, or a Query's RowDescription) carries
    /// hidden columns: then it must be read whole (`lead_row`).
    pub fn hides(&mut self, tag: u8) -> bool {
        !(tag == b'T' && self.batch) && self.hiding().is_some()
    }

    /// A row (or a Query's RowDescription) of the lead too large to be read whole.
    pub fn lead_row_streams(&mut self, tag: u8, len: usize) -> bool {
        let hides = self.hides(tag);
        if hides {
            self.unreadable
                .get_or_insert_with(|| format!("a row of {len} bytes"));
        }
        hides
    }

    /// A DataRow, or a Query's RowDescription, from the lead. True when it belongs to a
    /// write with hidden columns: they are kept, and what the client asked for of the row
    /// (if it asked) is in `out`. (A batch's RowDescriptions answer Describes:
    /// `extended::DescribeFix`.)
    pub fn lead_row(&mut self, tag: u8, msg: &[u8], out: &mut Vec<u8>) -> bool {
        if tag == b'T' && self.batch {
            return false;
        }
        let Some(run) = self.hiding() else {
            return false;
        };
        out.clear();
        if let Err(e) = cut_hidden(&run.exec.effects, &mut run.lead, tag, msg, out) {
            self.unreadable.get_or_insert(e);
        }
        true
    }

    /// A message from the lead that ends one Execute's answer (C, I, E or s).
    pub fn lead_answered(&mut self, tag: u8, msg: &[u8]) {
        let at = self.lead_at;
        self.lead_at += 1;
        if tag == b's' {
            return;
        }
        if let Some(run) = self.runs.iter_mut().find(|r| r.exec.execute == at) {
            let outcome = compare::outcome(tag, msg, None);
            if run.exec.effects.keyed() {
                // No hidden rows: the tag says whether the lead changed its row.
                run.lead.count = match outcome {
                    Outcome::Complete(Some(n)) => n,
                    _ => 0,
                };
            }
            run.outcome = Some(outcome);
        }
    }

    /// The replicas' request, made once from the lead's answers; `main` is what the lead
    /// ran (a batch's bytes; ignored for a Query).
    pub fn replica(&mut self, main: &[u8]) -> &Replica {
        self.replica.get_or_insert_with(|| {
            let mut checked = vec![None; self.executes];
            let sqls: Vec<Option<String>> = self
                .runs
                .iter()
                .map(|run| {
                    let effects = &run.exec.effects;
                    // A keyed statement run as written answers for itself.
                    if effects.keyed() && run.lead.count > 0 {
                        return None;
                    }
                    if let Some(c) = checked.get_mut(run.exec.execute) {
                        *c = run.outcome.clone();
                    }
                    Some(effects.replica_sql(&run.lead))
                })
                .collect();
            if self.batch {
                let execs: Vec<&EffectExecute> = self.runs.iter().map(|r| &r.exec).collect();
                let (bytes, extra_replies) = extended::replica_batch(main, &execs, &sqls);
                Replica {
                    bytes,
                    checked,
                    extra_replies,
                }
            } else {
                let parts = self.runs.iter().zip(&sqls);
                let sql = splice(
                    &self.text,
                    parts.filter_map(|(r, sql)| Some((r.exec.span(), sql.as_deref()?))),
                );
                let mut bytes = Vec::with_capacity(sql.len() + 6);
                frontend::query(&mut bytes, &sql);
                Replica {
                    bytes,
                    checked,
                    extra_replies: 0,
                }
            }
        })
    }
}

/// `text` with each `(span, replacement)` (in order, not overlapping) put in.
fn splice<'a>(text: &str, parts: impl Iterator<Item = ((usize, usize), &'a str)>) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    let mut from = 0;
    for ((start, end), with) in parts {
        out.push_str(&text[from..start]);
        out.push_str(with);
        from = end;
    }
    out.push_str(&text[from..]);
    out
}

/// One RowDescription or DataRow the lead sent for a write with hidden columns: they go
/// into `lead`, what the client asked for (if it asked) into `out`.
fn cut_hidden(
    effects: &Effects,
    lead: &mut LeadRows,
    tag: u8,
    msg: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let body = &msg[5..];
    let hidden = effects.hidden;
    let ends: Vec<usize> = if tag == b'T' {
        backend::row_description_ends(body).map_err(|e| e.to_string())?
    } else {
        let fields = backend::data_row_fields(body).map_err(|e| e.to_string())?;
        let at = fields.len().checked_sub(hidden).ok_or("too few columns")?;
        let values: Vec<Option<&[u8]>> = fields[at..].iter().map(|(v, _)| *v).collect();
        lead.add(&values)?;
        fields.iter().map(|(_, end)| *end).collect()
    };
    let keep = ends.len().checked_sub(hidden).ok_or("too few columns")?;
    if effects.client_returning {
        let end = if keep == 0 { 2 } else { ends[keep - 1] };
        backend::cut_row(out, tag, body, keep, end);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::catalog::TableInfo;
    use crate::replication::effects;

    fn jobs() -> TableInfo {
        TableInfo {
            exists: true,
            columns: vec![("id".into(), "integer".into()), ("s".into(), "text".into())],
            key: vec!["id".into()],
            ..TableInfo::default()
        }
    }

    fn planned(statement: &str) -> Effects {
        effects::plan(statement, &jobs())
            .unwrap()
            .expect("by effect")
    }

    fn query_of(bytes: &[u8]) -> String {
        frontend::parse_query(&bytes[5..]).unwrap().to_string()
    }

    fn message(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut m = Vec::new();
        build(&mut m);
        m
    }

    /// A Query of a read, a claim decided by the lead and a keyed update: the lead's rows
    /// go to the right write, the client sees its own columns, and the replicas get the
    /// claim applied by key, the keyed update as written.
    #[test]
    fn each_statement_of_a_query_gets_its_own_rows() {
        let claim = "UPDATE jobs SET s = 'run' WHERE id = (SELECT min(id) FROM jobs WHERE s = 'new') RETURNING id";
        let keyed = "UPDATE jobs SET s = 'x' WHERE id = 9";
        let text = format!("SELECT 1; {claim}; {keyed}");
        let at = |s: &str| {
            let start = text.find(s).unwrap();
            (start, start + s.len())
        };
        let found = vec![
            EffectExecute::in_query(planned(claim), 1, at(claim)),
            EffectExecute::in_query(planned(keyed), 2, at(keyed)),
        ];
        let mut runs = EffectRuns::query(text.clone(), found, 3).unwrap();
        assert!(!runs.reruns());
        let lead = runs.lead_query();
        assert!(lead.starts_with("SELECT 1; UPDATE jobs"), "{lead}");
        assert!(
            lead.ends_with("RETURNING id, jobs.\"id\"::text, jobs.\"s\"::text, md5(ROW(jobs.*)::text); UPDATE jobs SET s = 'x' WHERE id = 9"),
            "{lead}"
        );
        let mut out = Vec::new();
        // SELECT 1: nobody's hidden columns.
        let t = message(|m| backend::row_description(m, &["?column?"]));
        assert!(!runs.lead_row(b'T', &t, &mut out));
        let d = message(|m| backend::data_row(m, &[Some("1")]));
        assert!(!runs.lead_row(b'D', &d, &mut out));
        runs.lead_answered(b'C', &message(|m| backend::command_complete(m, "SELECT 1")));
        // The claim: its RowDescription and row are cut to the client's `id`.
        let t = message(|m| backend::row_description(m, &["id", "id", "s", "md5"]));
        assert!(runs.lead_row(b'T', &t, &mut out));
        assert_eq!(
            out,
            message(|m| backend::row_description(m, &["id"])),
            "only the client's column"
        );
        let d = message(|m| {
            backend::data_row(
                m,
                &[
                    Some("4"),
                    Some("4"),
                    Some("run"),
                    Some("0123456789abcdef0123456789abcdef"),
                ],
            )
        });
        assert!(runs.lead_row(b'D', &d, &mut out));
        assert_eq!(out, message(|m| backend::data_row(m, &[Some("4")])));
        runs.lead_answered(b'C', &message(|m| backend::command_complete(m, "UPDATE 1")));
        runs.lead_answered(b'C', &message(|m| backend::command_complete(m, "UPDATE 1")));
        assert!(runs.unreadable.is_none());

        let replica = runs.replica(&[]);
        let sql = query_of(&replica.bytes);
        assert!(sql.starts_with("SELECT 1; WITH pgm_w AS (UPDATE jobs AS pgm_t SET \"s\" = CAST(E'run' AS text) WHERE pgm_t.\"id\" = CAST(E'4' AS integer)"), "{sql}");
        assert!(sql.ends_with(&format!("; {keyed}")), "{sql}");
        assert_eq!(
            replica.checked,
            vec![None, Some(Outcome::Complete(Some(1))), None],
            "the claim's check stands for the lead's answer; the keyed update answers itself"
        );
    }

    /// A keyed statement the lead changed nothing with runs nowhere else; a lead row that
    /// cannot be read stops the replicas.
    #[test]
    fn a_keyed_miss_runs_nothing_and_an_unreadable_row_stops_the_replicas() {
        let keyed = "UPDATE jobs SET s = 'x' WHERE id = 9";
        let found = vec![EffectExecute::in_query(planned(keyed), 0, (0, keyed.len()))];
        let mut runs = EffectRuns::query(keyed.into(), found, 1).unwrap();
        assert_eq!(runs.lead_query(), keyed);
        runs.lead_answered(b'C', &message(|m| backend::command_complete(m, "UPDATE 0")));
        let replica = runs.replica(&[]);
        assert_eq!(query_of(&replica.bytes), "SELECT 1");
        assert_eq!(replica.checked, vec![Some(Outcome::Complete(Some(0)))]);

        let claim = "DELETE FROM jobs WHERE s = (SELECT 'old')";
        let found = vec![EffectExecute::in_query(planned(claim), 0, (0, claim.len()))];
        let mut runs = EffectRuns::query(claim.into(), found, 1).unwrap();
        let mut out = Vec::new();
        let short = message(|m| backend::data_row(m, &[Some("4")]));
        assert!(runs.lead_row(b'D', &short, &mut out));
        assert!(
            runs.unreadable.is_some(),
            "a row without the hidden columns"
        );
        let mut runs = EffectRuns::query(
            claim.into(),
            vec![EffectExecute::in_query(planned(claim), 0, (0, claim.len()))],
            1,
        )
        .unwrap();
        assert!(runs.lead_row_streams(b'D', 1 << 20));
        assert!(runs.unreadable.is_some(), "a row too large to read");
    }
}
