//! One request's writes replicated by their effect (`effects.rs`), as the session runs
//! them: what the lead answered to each (its hidden columns, its outcome), and the request
//! each replica runs instead, made from that once the lead is done.
//!
//! A simple Query has at most one such write; an extended-protocol batch one per Execute of
//! such a statement (`extended::EffectExecute`). The lead's answers arrive in the order of
//! the request's Executes, each ended by CommandComplete, EmptyQueryResponse, an error or
//! PortalSuspended: that is how a row is matched to its write. Pure logic over message bytes.

use super::compare::{self, Outcome};
use super::effects::{Effects, LeadRows};
use super::extended::{self, EffectExecute};
use crate::protocol::{backend, frontend};

/// The writes of one request replicated by their effect.
pub struct EffectRuns {
    runs: Vec<Run>,
    /// How many Executes the request has (a Query: 1).
    executes: usize,
    /// An extended-protocol batch (else a simple Query).
    batch: bool,
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
    /// A Query of one write replicated by its effect.
    pub fn query(effects: Effects) -> EffectRuns {
        EffectRuns::new(vec![EffectExecute::alone(effects)], 1, false)
    }

    /// A batch with `executes` Executes, of which these are writes replicated by effect;
    /// None when there are none.
    pub fn batch(effects: Vec<EffectExecute>, executes: usize) -> Option<EffectRuns> {
        (!effects.is_empty()).then(|| EffectRuns::new(effects, executes, true))
    }

    fn new(effects: Vec<EffectExecute>, executes: usize, batch: bool) -> EffectRuns {
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
            batch,
            lead_at: 0,
            replica: None,
            unreadable: None,
        }
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

    /// A row (or a Query's RowDescription) of the lead too large to be read whole.
    pub fn lead_row_streams(&mut self, tag: u8, len: usize) -> bool {
        if tag == b'T' && self.batch {
            return false;
        }
        let hides = self.hiding().is_some();
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
                let run = &self.runs[0];
                let sql = sqls[0]
                    .clone()
                    .unwrap_or_else(|| run.exec.effects.lead_sql.clone());
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
