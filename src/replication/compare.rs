//! Comparing the nodes' answers to one write: each node's answer is summarised as the list of
//! its statement outcomes (CommandComplete with the tag's row count, or ErrorResponse with its
//! SQLSTATE). The majority wins; a tie goes to the side of the lead; nodes outside the
//! winning side are to be detached. Pure logic: no nodes, no I/O.

use std::fmt;

use crate::protocol::backend;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// CommandComplete (or EmptyQueryResponse) with the row count of the tag, if it has one.
    Complete(Option<u64>),
    /// ErrorResponse with its SQLSTATE.
    Error(String),
    /// A replica's effect check failed (`effects`): it changed this many rows, or other ones
    /// than the lead did; its statement was undone.
    Differs(u64),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Complete(Some(n)) => write!(f, "ok {n}"),
            Outcome::Complete(None) => f.write_str("ok"),
            Outcome::Error(code) => write!(f, "error {code}"),
            Outcome::Differs(n) => write!(f, "other rows than the lead's ({n})"),
        }
    }
}

/// A node's answer to a statement (CommandComplete, EmptyQueryResponse or ErrorResponse
/// message `msg`, tag `tag`) as the vote sees it. A replica's effect check that passed
/// (`checked`: the lead's outcome) did what the lead did.
pub fn outcome(tag: u8, msg: &[u8], checked: Option<&Outcome>) -> Outcome {
    let body = msg.get(5..).unwrap_or_default();
    match (tag, checked) {
        (b'C', Some(lead)) => lead.clone(),
        (b'C', _) => {
            let tag = body.split(|&b| b == 0).next().unwrap_or_default();
            Outcome::Complete(
                std::str::from_utf8(tag)
                    .ok()
                    .and_then(backend::command_tag_rows),
            )
        }
        // EmptyQueryResponse; FunctionCallResponse.
        (b'I' | b'V', _) => Outcome::Complete(None),
        _ => match backend::parse_error_fields(body) {
            Ok(f) => match super::effects::failed_check(f.message) {
                Some(rows) => Outcome::Differs(rows),
                None => Outcome::Error(f.code.to_string()),
            },
            Err(_) => Outcome::Error("?".into()),
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Nodes whose answer the majority shares (always contains the lead on a tie).
    pub agree: Vec<u8>,
    /// Nodes that answered differently: to be detached.
    pub differ: Vec<u8>,
}

/// Every node failed the request (each answer holds an error): whatever they disagree on,
/// none of them committed any of it, so no node is at fault (PREPARE TRANSACTION of a
/// transaction whose reads touched only one node's temporary table fails differently there).
pub fn all_failed(answers: &[(u8, Vec<Outcome>)]) -> bool {
    !answers.is_empty()
        && answers
            .iter()
            .all(|(_, o)| o.iter().any(|x| matches!(x, Outcome::Error(_))))
}

/// Some node lost a race with another client: an error PostgreSQL raises when concurrent
/// transactions collide (class 40: serialization failure, deadlock; 55P03: lock not
/// available). Under REPEATABLE READ or SERIALIZABLE a node may raise one where the others
/// do not, because their transactions met in another order there. Such a disagreement is
/// retried like any race, but is no sign that a node is at fault: it does not count
/// towards detaching one.
pub fn lost_a_race(answers: &[(u8, Vec<Outcome>)]) -> bool {
    answers
        .iter()
        .flat_map(|(_, o)| o)
        .any(|x| matches!(x, Outcome::Error(code) if code.starts_with("40") || code == "55P03"))
}

/// Every replica did the lead's statements and then failed its COMMIT with the same error
/// (a deferred constraint, checked at COMMIT): the lead's COMMIT, still to come, meets the
/// same data and fails the same way, so it is sent as COMMIT, not turned into ROLLBACK
/// and a 40001 that retrying would never cure. A race error (class 40) is not one of these.
pub fn replicas_failed_commit(answers: &[(u8, Vec<Outcome>)], lead: u8) -> bool {
    let Some((_, lead_did)) = answers.iter().find(|(n, _)| *n == lead) else {
        return false;
    };
    let mut replicas = answers.iter().filter(|(n, _)| *n != lead).peekable();
    let Some((_, first)) = replicas.peek() else {
        return false;
    };
    let Some((Outcome::Error(code), before)) = first.split_last() else {
        return false;
    };
    !code.starts_with("40") && before == lead_did.as_slice() && replicas.all(|(_, o)| o == first)
}

/// Vote over `answers` (node id, outcomes). `lead` breaks ties.
pub fn vote(answers: &[(u8, Vec<Outcome>)], lead: u8) -> Verdict {
    // Group equal answers; answers are few (one per node), so a quadratic scan is fine.
    let mut best: Option<(&Vec<Outcome>, usize, bool)> = None;
    for (_, outcomes) in answers {
        let size = answers.iter().filter(|(_, o)| o == outcomes).count();
        let has_lead = answers.iter().any(|(i, o)| *i == lead && o == outcomes);
        let better = match best {
            None => true,
            Some((_, s, l)) => size > s || (size == s && has_lead && !l),
        };
        if better {
            best = Some((outcomes, size, has_lead));
        }
    }
    let Some((winner, _, _)) = best else {
        return Verdict {
            agree: Vec::new(),
            differ: Vec::new(),
        };
    };
    let (agree, differ): (Vec<_>, Vec<_>) = answers.iter().partition(|(_, o)| o == winner);
    Verdict {
        agree: agree.into_iter().map(|(i, _)| *i).collect(),
        differ: differ.into_iter().map(|(i, _)| *i).collect(),
    }
}

/// What pgmulti's own COMMIT of an autocommit write does, given the answers so far.
#[derive(Debug, PartialEq, Eq)]
pub enum BeforeCommit {
    /// The nodes agree.
    Commit,
    /// They disagree, and no node has committed yet: roll back on every node (the client
    /// gets 40001 and may retry).
    RollBack,
    /// They disagree, but replicas have committed already (their phase ended with COMMIT):
    /// commit; the minority is detached.
    CommitAnyway,
}

/// `replicas_committed`: the replicas' phase ended with COMMIT (a replica whose statement
/// failed rolled back instead; one that succeeded has committed).
pub fn before_commit(
    answers: &[(u8, Vec<Outcome>)],
    lead: u8,
    replicas_committed: bool,
) -> BeforeCommit {
    if vote(answers, lead).differ.is_empty() {
        return BeforeCommit::Commit;
    }
    let committed = |(n, o): &(u8, Vec<Outcome>)| {
        *n != lead && !o.is_empty() && o.iter().all(|x| matches!(x, Outcome::Complete(_)))
    };
    if replicas_committed && answers.iter().any(committed) {
        BeforeCommit::CommitAnyway
    } else {
        BeforeCommit::RollBack
    }
}

/// How a request's answers settle once every node has answered (`settle`).
#[derive(Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The nodes agree.
    Agreed(Verdict),
    /// Every node failed: the client has the voice's own error; nobody is at fault for
    /// failing differently.
    AllFailed,
    /// They differ and nothing of it is committed anywhere (`contained`): it fails with
    /// 40001 as a race between clients; the nodes that differ count a disagreement.
    Race(Verdict),
    /// They differ and the majority has committed it: the nodes that differ lack it and are
    /// detached; `voice_differs`: what the client was told is not what the others did.
    Diverged {
        verdict: Verdict,
        voice_differs: bool,
    },
}

/// Settle `answers` (node id, outcomes). `contained`: nothing of the request is committed
/// on any node (pgmulti rolled its own transaction back, or the client's transaction is
/// still open and now fails).
pub fn settle(answers: &[(u8, Vec<Outcome>)], lead: u8, voice: u8, contained: bool) -> Settlement {
    let verdict = vote(answers, lead);
    if verdict.differ.is_empty() {
        Settlement::Agreed(verdict)
    } else if all_failed(answers) {
        Settlement::AllFailed
    } else if contained {
        Settlement::Race(verdict)
    } else {
        let voice_differs = verdict.differ.contains(&voice);
        Settlement::Diverged {
            verdict,
            voice_differs,
        }
    }
}

/// What the client is told when the node whose answers it gets (the voice) fails during a
/// request (`after_voice_lost`).
#[derive(Debug, PartialEq, Eq)]
pub enum VoiceLost {
    /// The request was a COMMIT that other nodes (which run it first) committed, and the
    /// client has seen no answer to it: it is told COMMIT.
    Committed,
    /// The voice failed while it ran a statement of the request: it fails with 40001.
    Fails,
    /// Nothing to add: the new voice goes on answering (or the client already has the
    /// answer).
    Nothing,
}

/// The voice `lost` failed; `new_voice` takes over. `unfinished`: the lost node was still
/// running a statement of the request (not only pgmulti's own BEGIN/COMMIT wrappers).
/// `answers` are the outcomes recorded so far (a replica's are not shown to the client).
pub fn after_voice_lost(
    commit: bool,
    answers: &[(u8, Vec<Outcome>)],
    lost: u8,
    new_voice: u8,
    unfinished: bool,
) -> VoiceLost {
    let committed = |n: u8| {
        answers.iter().any(|(id, o)| {
            *id == n && !o.is_empty() && o.iter().all(|x| matches!(x, Outcome::Complete(_)))
        })
    };
    let others_committed = answers.iter().any(|(id, _)| *id != lost && committed(*id));
    let shown = answers.iter().any(|(id, o)| *id == lost && !o.is_empty());
    match (commit, unfinished) {
        (true, true) if others_committed => VoiceLost::Committed,
        (_, true) => VoiceLost::Fails,
        // Its COMMIT was not sent yet: the new voice's answer to the replicas' COMMIT came
        // while it was not the voice, so the client never saw it.
        (true, false) if !shown && committed(new_voice) => VoiceLost::Committed,
        _ => VoiceLost::Nothing,
    }
}

/// "node 0: ok 1; node 1: ok 1; node 2: ok 0" for the WARNING line.
pub fn describe(answers: &[(u8, Vec<Outcome>)]) -> String {
    let mut s = String::new();
    for (i, (id, outcomes)) in answers.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&format!("node {id}: "));
        for (j, o) in outcomes.iter().enumerate() {
            if j > 0 {
                s.push_str(", ");
            }
            s.push_str(&o.to_string());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_every_replica_failed_alike_after_doing_what_the_lead_did() {
        let ok = Outcome::Complete(Some(1));
        let fk = Outcome::Error("23503".into());
        let failed = vec![ok.clone(), fk.clone()];
        let lead = (0, vec![ok.clone()]);
        assert!(replicas_failed_commit(
            &[lead.clone(), (1, failed.clone()), (2, failed.clone())],
            0
        ));
        // One replica committed: not alike.
        assert!(!replicas_failed_commit(
            &[lead.clone(), (1, failed.clone()), (2, vec![ok.clone()])],
            0
        ));
        // The statement itself failed on the replicas, not their COMMIT.
        assert!(!replicas_failed_commit(
            &[lead.clone(), (1, vec![fk.clone()]), (2, vec![fk])],
            0
        ));
        // A serialization failure at COMMIT is a race.
        let ser = vec![ok.clone(), Outcome::Error("40001".into())];
        assert!(!replicas_failed_commit(
            &[lead, (1, ser.clone()), (2, ser)],
            0
        ));
    }

    #[test]
    fn serialization_failures_and_deadlocks_are_races_other_errors_are_not() {
        let ok = || vec![Outcome::Complete(Some(1))];
        let err = |c: &str| vec![Outcome::Error(c.into())];
        for code in ["40001", "40P01", "55P03"] {
            assert!(
                lost_a_race(&[(0, ok()), (1, ok()), (2, err(code))]),
                "{code}"
            );
        }
        assert!(!lost_a_race(&[(0, ok()), (1, ok()), (2, err("23505"))]));
        assert!(!lost_a_race(&[
            (0, ok()),
            (1, ok()),
            (2, vec![Outcome::Differs(2)])
        ]));
    }
    use Outcome::*;

    fn a(id: u8, o: &[Outcome]) -> (u8, Vec<Outcome>) {
        (id, o.to_vec())
    }

    #[test]
    fn unanimous() {
        let v = vote(
            &[
                a(0, &[Complete(Some(1))]),
                a(1, &[Complete(Some(1))]),
                a(2, &[Complete(Some(1))]),
            ],
            0,
        );
        assert_eq!(v.agree, vec![0, 1, 2]);
        assert!(v.differ.is_empty());
    }

    #[test]
    fn replica_minority_is_detached() {
        let v = vote(
            &[
                a(0, &[Complete(Some(1))]),
                a(1, &[Complete(Some(1))]),
                a(2, &[Complete(Some(0))]),
            ],
            0,
        );
        assert_eq!(v.differ, vec![2]);
    }

    #[test]
    fn lead_minority_loses() {
        let v = vote(
            &[
                a(0, &[Error("23505".into())]),
                a(1, &[Complete(Some(1))]),
                a(2, &[Complete(Some(1))]),
            ],
            0,
        );
        assert_eq!(v.agree, vec![1, 2]);
        assert_eq!(v.differ, vec![0]);
    }

    #[test]
    fn tie_goes_to_the_lead() {
        let v = vote(&[a(1, &[Complete(Some(1))]), a(2, &[Complete(Some(2))])], 1);
        assert_eq!(v.agree, vec![1]);
        assert_eq!(v.differ, vec![2]);
        // Three different answers: the lead's side (itself) wins.
        let v = vote(
            &[
                a(0, &[Complete(Some(1))]),
                a(1, &[Complete(Some(2))]),
                a(2, &[Complete(Some(3))]),
            ],
            0,
        );
        assert_eq!(v.agree, vec![0]);
    }

    #[test]
    fn a_disagreement_is_rolled_back_unless_a_replica_committed() {
        let lead_ok = a(0, &[Complete(Some(1))]);
        let checked_out = a(1, &[Error("22P02".into())]);
        let agrees = a(2, &[Complete(Some(1))]);
        let all = [lead_ok.clone(), agrees.clone()];
        assert_eq!(before_commit(&all, 0, true), BeforeCommit::Commit);
        // The only replica failed its check: it rolled back, so the lead must too.
        let race = [lead_ok.clone(), checked_out.clone()];
        assert_eq!(before_commit(&race, 0, true), BeforeCommit::RollBack);
        // Another replica committed the lead's effect: the one that differs is the fault.
        let fault = [lead_ok.clone(), checked_out.clone(), agrees.clone()];
        assert_eq!(before_commit(&fault, 0, true), BeforeCommit::CommitAnyway);
        // Replicas that wait for the vote to commit: any disagreement rolls back.
        assert_eq!(before_commit(&fault, 0, false), BeforeCommit::RollBack);
    }

    #[test]
    fn statement_lists_compare_whole() {
        let v = vote(
            &[
                a(0, &[Complete(None), Complete(Some(3))]),
                a(1, &[Complete(None), Complete(Some(3))]),
                a(2, &[Complete(None)]),
            ],
            0,
        );
        assert_eq!(v.differ, vec![2]);
        assert_eq!(
            describe(&[
                a(0, &[Complete(None), Complete(Some(3))]),
                a(2, &[Error("XX000".into())])
            ]),
            "node 0: ok, ok 3; node 2: error XX000"
        );
    }

    #[test]
    fn nodes_that_all_failed_are_not_at_fault() {
        let e = |c: &str| Outcome::Error(c.into());
        assert!(all_failed(&[(0, vec![e("0A000")]), (1, vec![e("55000")])]));
        assert!(!all_failed(&[
            (0, vec![e("0A000")]),
            (1, vec![Outcome::Complete(None)])
        ]));
        assert!(!all_failed(&[]));
    }

    /// The races of docs/replication.md, as the nodes' answers arrive in the order the test
    /// chooses: what the request settles to.
    #[test]
    fn a_race_inside_a_transaction_fails_it_and_a_committed_divergence_detaches() {
        // Queue claim (`WHERE id = (SELECT min(id) …)`) inside BEGIN: replica 2 saw another
        // transaction's commit the lead did not and its effect check differs.
        let claim = [
            a(0, &[Complete(Some(1))]),
            a(1, &[Complete(Some(1))]),
            a(2, &[Differs(1)]),
        ];
        match settle(&claim, 0, 0, true) {
            Settlement::Race(v) => assert_eq!(v.differ, vec![2]),
            other => panic!("{other:?}"),
        }
        // The same as an autocommit write whose replicas committed before the vote: node 2
        // lacks what the others committed.
        assert_eq!(
            settle(&claim, 0, 0, false),
            Settlement::Diverged {
                verdict: Verdict {
                    agree: vec![0, 1],
                    differ: vec![2]
                },
                voice_differs: false
            }
        );
        // The lead alone saw the other rows: the client was told what the others did not.
        let lead_alone = [
            a(0, &[Complete(Some(0))]),
            a(1, &[Complete(Some(1))]),
            a(2, &[Complete(Some(1))]),
        ];
        assert!(matches!(
            settle(&lead_alone, 0, 0, false),
            Settlement::Diverged {
                voice_differs: true,
                ..
            }
        ));
        // Guarded transfer on two nodes: the lead deadlocked (40P01), the replica did not; a
        // tie goes to the lead's side, and it is a race.
        let transfer = [a(0, &[Error("40P01".into())]), a(1, &[Complete(Some(1))])];
        match settle(&transfer, 0, 0, true) {
            Settlement::Race(v) => assert_eq!((v.agree, v.differ), (vec![0], vec![1])),
            other => panic!("{other:?}"),
        }
        // A replica canceled by node_response_timeout (57014) inside a transaction.
        let late = [
            a(0, &[Complete(Some(1))]),
            a(1, &[Error("57014".into())]),
            a(2, &[Complete(Some(1))]),
        ];
        assert!(matches!(settle(&late, 0, 0, true), Settlement::Race(_)));
        // Every node failed, each its own way: nobody is at fault.
        let failed = [
            a(0, &[Error("23505".into())]),
            a(1, &[Error("40001".into())]),
        ];
        assert_eq!(settle(&failed, 0, 0, true), Settlement::AllFailed);
        assert_eq!(settle(&failed, 0, 0, false), Settlement::AllFailed);
        let agreed = [a(0, &[Complete(Some(3))]), a(1, &[Complete(Some(3))])];
        assert!(matches!(
            settle(&agreed, 0, 0, false),
            Settlement::Agreed(_)
        ));
    }

    /// The lead (the voice) dies at each point of a COMMIT, which the replicas run first.
    #[test]
    fn the_voice_lost_during_a_commit_is_answered_by_what_the_others_did() {
        let ok = || vec![Complete(None)];
        // Its COMMIT in flight, the replicas committed: the transaction is committed.
        let answers = [(1, ok()), (2, ok())];
        assert_eq!(
            after_voice_lost(true, &answers, 0, 1, true),
            VoiceLost::Committed
        );
        // Its COMMIT not sent yet: node 1 answered COMMIT while it was a replica (not shown
        // to the client), then the lead died; the client must still hear COMMIT.
        let answers = [(1, ok())];
        assert_eq!(
            after_voice_lost(true, &answers, 0, 1, false),
            VoiceLost::Committed
        );
        // ... but node 1 had not answered yet: its answer, as the new voice, will be shown.
        assert_eq!(after_voice_lost(true, &[], 0, 1, false), VoiceLost::Nothing);
        // The lead had answered (the client has its COMMIT) and died after: nothing twice.
        let answers = [(0, ok()), (1, ok())];
        assert_eq!(
            after_voice_lost(true, &answers, 0, 1, false),
            VoiceLost::Nothing
        );
        // Its COMMIT in flight and no replica committed (they failed): the COMMIT fails.
        let answers = [(1, vec![Error("40001".into())])];
        assert_eq!(
            after_voice_lost(true, &answers, 0, 1, true),
            VoiceLost::Fails
        );
        // A write the lead was running: it fails, whatever the replicas did.
        let answers = [(1, vec![Complete(Some(1))])];
        assert_eq!(
            after_voice_lost(false, &answers, 0, 1, true),
            VoiceLost::Fails
        );
        assert_eq!(
            after_voice_lost(false, &answers, 0, 1, false),
            VoiceLost::Nothing
        );
    }
}
