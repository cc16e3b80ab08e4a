//! How one client request is executed across the nodes: a sequence of phases, each sending
//! the same statements to a set of nodes at once (one round trip) and ending when all of
//! them have answered. This file decides the phases from the request's class and the
//! transaction's state; `session/replicate/` carries them out. Pure logic, tested alone.
//! The table in docs/replication.md is this file in prose.

/// What a whole request (a simple Query, possibly several statements) is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Only reads (or empty): one node.
    Read,
    /// Writes rows; DDL is executed the same way.
    Write,
    /// COPY … FROM STDIN: data follows from the client and goes to every node.
    CopyIn,
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT, RELEASE and two-phase commands: every node at once.
    Savepoint,
    /// ROLLBACK TO SAVEPOINT: every node at once; allowed in a failed transaction.
    RollbackTo,
    /// SET, PREPARE, DISCARD, temp tables…: every node, never wrapped in a transaction.
    SessionState,
    /// VACUUM, CREATE DATABASE, …: every node, never wrapped.
    NoTransactionBlock,
    /// LISTEN, UNLISTEN, NOTIFY: the lead only.
    LeadOnly,
    /// Several statements including transaction control: lead, then replicas, unwrapped.
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    Lead,
    Replicas,
    All,
    /// The node chosen for reads.
    ReadNode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// The client's statements; their answers are compared and the voice's go to the client.
    Main,
    /// Statements pgmulti adds (BEGIN/COMMIT around an autocommit write); answers swallowed.
    Wrapper(&'static str),
    /// Like `Main`, but with this text instead of the client's (COMMIT of a failed
    /// transaction becomes ROLLBACK).
    MainAs(&'static str),
    /// Two-phase commit: PREPARE TRANSACTION with the request's identifier.
    Prepare,
    /// Extended protocol, the lead failed the batch: only its named Parses (and a Sync), so
    /// the replicas know the statements the lead kept. Answers swallowed.
    ParsesOnly,
    /// COMMIT PREPARED — or, when a node could not prepare, ROLLBACK PREPARED on those that
    /// did. The session decides (and writes the decision down) before sending it.
    CommitPrepared,
    /// `mode = streaming`: after a commit, the primary's WAL position (pipelined
    /// `SELECT pg_current_wal_insert_lsn()`), which the session's next reads wait for on a
    /// standby. Answers swallowed.
    WalPosition,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub targets: Targets,
    pub segments: Vec<Segment>,
    /// Not run when the lead's Main failed (the replicas must not run what failed there).
    pub skip_if_lead_failed: bool,
    /// Run only when the lead's Main failed (to end pgmulti's own transaction there).
    pub only_if_lead_failed: bool,
    /// With `write_ack = async` the request does not wait for this phase: the client gets
    /// the lead's answer and these nodes run behind; their answers are checked at COMMIT.
    pub behind_in_async: bool,
    /// pgmulti's own COMMIT of an autocommit write: the answers so far are voted on first,
    /// and the COMMIT becomes ROLLBACK when the nodes disagree (see `compare::before_commit`).
    pub after_vote: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub phases: Vec<Phase>,
    /// Whose answer the client sees: the lead, or the read node.
    pub voice: Targets,
    pub writes: bool,
}

/// What the session knows of the client's transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxView {
    pub open: bool,
    /// The transaction failed (the client saw status 'E').
    pub failed: bool,
    /// A write ran in it: reads now go to the lead.
    pub wrote: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    Run(Plan),
    /// Inside a failed transaction: answer 25P02 without asking any node, as PostgreSQL would.
    RefuseInFailedTransaction,
}

/// A phase sending `segments` to `targets`, waited for, run whatever happened before.
pub fn phase(targets: Targets, segments: &[Segment]) -> Phase {
    Phase {
        targets,
        segments: segments.to_vec(),
        skip_if_lead_failed: false,
        only_if_lead_failed: false,
        behind_in_async: false,
        after_vote: false,
    }
}

fn lead_then_replicas(lead: &[Segment], replicas: &[Segment]) -> Vec<Phase> {
    let mut replicas = phase(Targets::Replicas, replicas);
    replicas.skip_if_lead_failed = true;
    vec![phase(Targets::Lead, lead), replicas]
}

/// The phases of a two-phase commit, after the statements ran: prepare everywhere, then
/// commit (or roll back) the prepared transaction everywhere.
fn two_phase_commit(phases: &mut Vec<Phase>, after_lead: bool) {
    for seg in [Segment::Prepare, Segment::CommitPrepared] {
        let mut p = phase(Targets::All, &[seg]);
        p.skip_if_lead_failed = after_lead;
        phases.push(p);
    }
}

/// The replicas' phase of a statement the lead failed whose failure still left something
/// behind there (a sequence drawn from, an invalid index of CREATE INDEX CONCURRENTLY): the
/// replicas run it too, so that they fail alike and are left alike, and what pgmulti's own
/// transaction wrapped is rolled back, not committed.
pub fn fail_alike(segments: &mut Vec<Segment>) {
    let mut ended = false;
    for s in segments.iter_mut() {
        if *s == Segment::Wrapper("COMMIT") {
            *s = Segment::Wrapper("ROLLBACK");
            ended = true;
        }
    }
    if !ended && segments.first() == Some(&Segment::Wrapper("BEGIN")) {
        segments.push(Segment::Wrapper("ROLLBACK"));
    }
}

/// `mode = streaming`: one node (the primary) runs writes and transactions; reads outside a
/// transaction block go to a standby that has the session's last commit; session state
/// reaches every node. With `read_your_writes`, a request that may commit ends by asking for
/// the WAL position.
pub fn plan_streaming(class: Class, tx: TxView, read_your_writes: bool) -> Plan {
    use Segment::*;
    let (targets, voice, writes) = match class {
        Class::Read if !tx.open => (Targets::ReadNode, Targets::ReadNode, false),
        Class::Read => (Targets::Lead, Targets::Lead, false),
        Class::SessionState => (Targets::All, Targets::Lead, false),
        Class::Begin
        | Class::Commit
        | Class::Rollback
        | Class::RollbackTo
        | Class::Savepoint
        | Class::LeadOnly => (Targets::Lead, Targets::Lead, false),
        Class::Write | Class::CopyIn | Class::NoTransactionBlock | Class::Mixed => {
            (Targets::Lead, Targets::Lead, true)
        }
    };
    let commits = match class {
        Class::Commit => true,
        Class::Write | Class::CopyIn | Class::NoTransactionBlock | Class::Mixed => !tx.open,
        _ => false,
    };
    let mut segments = vec![Main];
    if read_your_writes && commits && targets == Targets::Lead {
        segments.push(WalPosition);
    }
    Plan {
        phases: vec![phase(targets, &segments)],
        voice,
        writes,
    }
}

/// `two_phase`: `commit_protocol = two_phase`.
pub fn plan(class: Class, tx: TxView, two_phase: bool) -> Planned {
    use Segment::*;
    if tx.failed {
        return match class {
            Class::Rollback | Class::RollbackTo => Planned::Run(everywhere(&[Main], false)),
            Class::Commit => Planned::Run(everywhere(&[MainAs("ROLLBACK")], false)),
            _ => Planned::RefuseInFailedTransaction,
        };
    }
    let run = |phases: Vec<Phase>, writes: bool| {
        Planned::Run(Plan {
            phases,
            voice: Targets::Lead,
            writes,
        })
    };
    match class {
        Class::Read if tx.wrote => run(vec![phase(Targets::Lead, &[Main])], false),
        Class::Read => Planned::Run(Plan {
            phases: vec![phase(Targets::ReadNode, &[Main])],
            voice: Targets::ReadNode,
            writes: false,
        }),
        Class::Write if tx.open => {
            let mut phases = lead_then_replicas(&[Main], &[Main]);
            phases[1].behind_in_async = true;
            run(phases, true)
        }
        Class::Write if two_phase => {
            let mut phases =
                lead_then_replicas(&[Wrapper("BEGIN"), Main], &[Wrapper("BEGIN"), Main]);
            two_phase_commit(&mut phases, true);
            // The lead's statement failed: end pgmulti's transaction there.
            let mut end = phase(Targets::Lead, &[Wrapper("ROLLBACK")]);
            end.only_if_lead_failed = true;
            phases.push(end);
            run(phases, true)
        }
        // Autocommit: wrapped so the lead commits only after every replica has executed it.
        Class::Write => {
            let mut phases = lead_then_replicas(
                &[Wrapper("BEGIN"), Main],
                &[Wrapper("BEGIN"), Main, Wrapper("COMMIT")],
            );
            let mut commit = phase(Targets::Lead, &[Wrapper("COMMIT")]);
            commit.after_vote = true;
            phases.push(commit);
            run(phases, true)
        }
        Class::CopyIn if tx.open => run(vec![phase(Targets::All, &[Main])], true),
        Class::CopyIn if two_phase => {
            let mut phases = vec![phase(Targets::All, &[Wrapper("BEGIN"), Main])];
            two_phase_commit(&mut phases, false);
            run(phases, true)
        }
        Class::CopyIn => run(
            vec![
                phase(Targets::All, &[Wrapper("BEGIN"), Main]),
                phase(Targets::Replicas, &[Wrapper("COMMIT")]),
                phase(Targets::Lead, &[Wrapper("COMMIT")]),
            ],
            true,
        ),
        Class::Begin | Class::Rollback | Class::Savepoint | Class::RollbackTo => {
            Planned::Run(everywhere(&[Main], false))
        }
        Class::Commit if two_phase => {
            let mut phases = Vec::new();
            two_phase_commit(&mut phases, false);
            run(phases, false)
        }
        Class::Commit => run(
            vec![
                phase(Targets::Replicas, &[Main]),
                phase(Targets::Lead, &[Main]),
            ],
            false,
        ),
        Class::SessionState | Class::NoTransactionBlock | Class::Mixed => {
            run(lead_then_replicas(&[Main], &[Main]), true)
        }
        Class::LeadOnly => run(vec![phase(Targets::Lead, &[Main])], false),
    }
}

/// An autocommit write whose replicas may see something else than the lead did (a statement
/// re-run there, `effects::Apply::Rerun`): the replicas commit only after the vote too, so a
/// disagreement can still be rolled back on every node. One round trip more.
pub fn replicas_commit_after_vote(plan: &mut Plan) {
    let Some(at) = plan.phases.iter().position(|p| {
        p.targets == Targets::Replicas && p.segments.last() == Some(&Segment::Wrapper("COMMIT"))
    }) else {
        return;
    };
    plan.phases[at].segments.pop();
    let mut commit = phase(Targets::Replicas, &[Segment::Wrapper("COMMIT")]);
    commit.skip_if_lead_failed = true;
    commit.after_vote = true;
    plan.phases.insert(at + 1, commit);
}

fn everywhere(segments: &[Segment], writes: bool) -> Plan {
    Plan {
        phases: vec![phase(Targets::All, segments)],
        voice: Targets::Lead,
        writes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Segment::*;

    fn phases(p: Planned) -> Vec<(Targets, Vec<Segment>)> {
        match p {
            Planned::Run(p) => p
                .phases
                .into_iter()
                .map(|p| (p.targets, p.segments))
                .collect(),
            other => panic!("expected a plan, got {other:?}"),
        }
    }

    const IDLE: TxView = TxView {
        open: false,
        failed: false,
        wrote: false,
    };
    const OPEN: TxView = TxView {
        open: true,
        failed: false,
        wrote: false,
    };

    #[test]
    fn autocommit_write_commits_on_the_lead_last() {
        let p = phases(plan(Class::Write, IDLE, false));
        assert_eq!(
            p,
            vec![
                (Targets::Lead, vec![Wrapper("BEGIN"), Main]),
                (
                    Targets::Replicas,
                    vec![Wrapper("BEGIN"), Main, Wrapper("COMMIT")]
                ),
                (Targets::Lead, vec![Wrapper("COMMIT")]),
            ]
        );
    }

    #[test]
    fn a_rerun_write_commits_nowhere_before_the_vote() {
        let Planned::Run(mut p) = plan(Class::Write, IDLE, false) else {
            panic!()
        };
        replicas_commit_after_vote(&mut p);
        let votes: Vec<bool> = p.phases.iter().map(|p| p.after_vote).collect();
        assert_eq!(
            phases(Planned::Run(p)),
            vec![
                (Targets::Lead, vec![Wrapper("BEGIN"), Main]),
                (Targets::Replicas, vec![Wrapper("BEGIN"), Main]),
                (Targets::Replicas, vec![Wrapper("COMMIT")]),
                (Targets::Lead, vec![Wrapper("COMMIT")]),
            ]
        );
        assert_eq!(votes, vec![false, false, true, true]);
    }

    #[test]
    fn commit_goes_to_replicas_first() {
        let p = phases(plan(Class::Commit, OPEN, false));
        assert_eq!(
            p,
            vec![(Targets::Replicas, vec![Main]), (Targets::Lead, vec![Main])]
        );
    }

    #[test]
    fn reads_follow_the_transaction() {
        assert_eq!(
            phases(plan(Class::Read, IDLE, false)),
            vec![(Targets::ReadNode, vec![Main])]
        );
        assert_eq!(
            phases(plan(Class::Read, OPEN, false)),
            vec![(Targets::ReadNode, vec![Main])]
        );
        let wrote = TxView {
            wrote: true,
            ..OPEN
        };
        assert_eq!(
            phases(plan(Class::Read, wrote, false)),
            vec![(Targets::Lead, vec![Main])]
        );
    }

    #[test]
    fn failed_transaction() {
        let failed = TxView {
            failed: true,
            ..OPEN
        };
        assert_eq!(
            plan(Class::Write, failed, false),
            Planned::RefuseInFailedTransaction
        );
        assert_eq!(
            plan(Class::Read, failed, false),
            Planned::RefuseInFailedTransaction
        );
        assert_eq!(
            phases(plan(Class::Commit, failed, false)),
            vec![(Targets::All, vec![MainAs("ROLLBACK")])]
        );
        assert_eq!(
            phases(plan(Class::RollbackTo, failed, false)),
            vec![(Targets::All, vec![Main])]
        );
        assert_eq!(
            plan(Class::Savepoint, failed, false),
            Planned::RefuseInFailedTransaction
        );
    }

    #[test]
    fn replicas_skip_what_failed_on_the_lead() {
        let Planned::Run(p) = plan(Class::Write, OPEN, false) else {
            panic!()
        };
        assert!(p.phases[1].skip_if_lead_failed);
        let Planned::Run(p) = plan(Class::SessionState, IDLE, false) else {
            panic!()
        };
        assert_eq!(p.phases.len(), 2, "session state is never wrapped");
    }
}

#[cfg(test)]
mod two_phase_tests {
    use super::*;
    use Segment::*;

    #[test]
    fn two_phase_commit_prepares_everywhere_then_commits() {
        let open = TxView {
            open: true,
            ..Default::default()
        };
        let Planned::Run(p) = plan(Class::Commit, open, true) else {
            panic!()
        };
        let segs: Vec<_> = p
            .phases
            .iter()
            .map(|p| (p.targets, p.segments.clone()))
            .collect();
        assert_eq!(
            segs,
            vec![
                (Targets::All, vec![Prepare]),
                (Targets::All, vec![CommitPrepared])
            ]
        );
        let Planned::Run(p) = plan(Class::Write, TxView::default(), true) else {
            panic!()
        };
        assert_eq!(p.phases.len(), 5);
        assert!(p.phases[4].only_if_lead_failed && p.phases[2].skip_if_lead_failed);
    }

    #[test]
    fn a_statement_failed_alike_is_rolled_back_on_the_replicas() {
        use Segment::*;
        let mut autocommit = vec![Wrapper("BEGIN"), Main, Wrapper("COMMIT")];
        fail_alike(&mut autocommit);
        assert_eq!(
            autocommit,
            vec![Wrapper("BEGIN"), Main, Wrapper("ROLLBACK")]
        );
        let mut two_phase = vec![Wrapper("BEGIN"), Main];
        fail_alike(&mut two_phase);
        assert_eq!(two_phase, vec![Wrapper("BEGIN"), Main, Wrapper("ROLLBACK")]);
        let mut in_tx = vec![Main];
        fail_alike(&mut in_tx);
        assert_eq!(
            in_tx,
            vec![Main],
            "the client's transaction fails there too"
        );
    }

    #[test]
    fn streaming_sends_writes_to_the_primary_and_asks_where_its_wal_ends() {
        let idle = TxView::default();
        let open = TxView {
            open: true,
            ..TxView::default()
        };
        let read = plan_streaming(Class::Read, idle, true);
        assert_eq!(
            (read.phases[0].targets, read.voice),
            (Targets::ReadNode, Targets::ReadNode)
        );
        assert_eq!(
            plan_streaming(Class::Read, open, true).phases[0].targets,
            Targets::Lead
        );
        let write = plan_streaming(Class::Write, idle, true);
        assert_eq!(write.phases[0].targets, Targets::Lead);
        assert_eq!(
            write.phases[0].segments,
            vec![Segment::Main, Segment::WalPosition]
        );
        assert_eq!(
            plan_streaming(Class::Write, open, true).phases[0].segments,
            vec![Segment::Main]
        );
        assert_eq!(
            plan_streaming(Class::Commit, open, true).phases[0].segments,
            vec![Segment::Main, Segment::WalPosition]
        );
        assert_eq!(
            plan_streaming(Class::SessionState, open, true).phases[0].targets,
            Targets::All
        );
        assert_eq!(
            plan_streaming(Class::Write, idle, false).phases[0].segments,
            vec![Segment::Main],
            "read_your_writes = off asks for no WAL position"
        );
    }
}
