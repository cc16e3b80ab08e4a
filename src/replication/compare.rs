//! Comparing the nodes' answers to one write: each node's answer is summarised as the list of
//! its statement outcomes (CommandComplete with the tag's row count, or ErrorResponse with its
//! SQLSTATE). The majority wins; a tie goes to the side of the lead; nodes outside the
//! winning side are to be detached. Pure logic: no nodes, no I/O.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// CommandComplete (or EmptyQueryResponse) with the row count of the tag, if it has one.
    Complete(Option<u64>),
    /// ErrorResponse with its SQLSTATE.
    Error(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Complete(Some(n)) => write!(f, "ok {n}"),
            Outcome::Complete(None) => f.write_str("ok"),
            Outcome::Error(code) => write!(f, "error {code}"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Nodes whose answer the majority shares (always contains the lead on a tie).
    pub agree: Vec<u8>,
    /// Nodes that answered differently: to be detached.
    pub differ: Vec<u8>,
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
}
