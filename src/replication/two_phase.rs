//! Two-phase commit (`commit_protocol = two_phase`): a replicated transaction commits with
//! PREPARE TRANSACTION on every node, then — once every node has prepared and the decision
//! is on disk — COMMIT PREPARED on every node. If pgmulti dies in between, the decision log
//! tells the next start which of its prepared transactions (`pgmulti_…` in
//! `pg_prepared_xacts`) to commit; every other one of them is rolled back.
//!
//! The log (`two_phase_log`) is a text file of lines `commit <gid>` (on disk before the
//! first COMMIT PREPARED) and `done <gid>`. It is emptied at start-up once every node's
//! in-doubt transactions are resolved. Decisions are group-committed: the loop writes them
//! as sessions make them and a thread syncs the file once per pass of the loop, so one
//! fsync carries every decision of that pass and the loop never waits for the disk.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::net::SocketAddr;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use crate::cluster::direct::Direct;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::net::tls::NodeTls;
use crate::reactor::token::ConnKey;

/// Prefix of every transaction identifier pgmulti prepares.
pub const GID_PREFIX: &str = "pgmulti_";

pub struct DecisionLog {
    file: File,
    path: PathBuf,
    /// `pgmulti_<instance tag>_<epoch>_`: identifiers unique to this instance and this run.
    prefix: String,
    next: u64,
    /// Decisions written (numbered from 1), and how far they are known to be on disk.
    written: u64,
    synced: u64,
    /// The number up to which a sync failed: those decisions never count as made.
    failed: u64,
    failure: Option<String>,
    /// The thread that syncs the file, and whether a sync is running.
    syncer: Option<Syncer>,
    syncing: bool,
    /// Sessions waiting for their decision to reach the disk.
    waiting: Vec<ConnKey>,
}

/// Group commit: the loop writes decisions as sessions make them and asks this thread to
/// sync the file once per pass; every decision written before a sync started is durable
/// when it ends. The loop never waits for the disk.
struct Syncer {
    ask: Sender<u64>,
    done: Receiver<(u64, Result<(), String>)>,
}

/// Whether a decision written with `write_commit` is durable yet.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Waiting,
    Durable,
    Failed(String),
}

impl DecisionLog {
    /// `prefix` from `check_and_recover`; `epoch` the same as given to it.
    pub fn open(path: &Path, prefix: &str, epoch: u64) -> Result<DecisionLog, String> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("two_phase_log {}: {e}", path.display()))?;
        Ok(DecisionLog {
            file,
            path: path.to_path_buf(),
            prefix: format!("{prefix}{epoch}_"),
            next: 0,
            written: 0,
            synced: 0,
            failed: 0,
            failure: None,
            syncer: None,
            syncing: false,
            waiting: Vec::new(),
        })
    }

    /// Sync from a thread of its own from now on; it wakes the loop when a sync ends.
    /// Without it (unit tests), `flush` syncs in place.
    pub fn start_syncer(&mut self, waker: Arc<mio::Waker>) -> Result<(), String> {
        let file = self.file.try_clone().map_err(|e| self.error(e))?;
        let path = self.path.clone();
        let (ask, asks) = channel::<u64>();
        let (report, done) = channel();
        std::thread::Builder::new()
            .name("pgmulti-2pc-sync".into())
            .spawn(move || {
                for upto in asks {
                    let result = file
                        .sync_data()
                        .map_err(|e| format!("two_phase_log {}: {e}", path.display()));
                    if report.send((upto, result)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            })
            .map_err(|e| self.error(e))?;
        self.syncer = Some(Syncer { ask, done });
        Ok(())
    }

    fn error(&self, e: std::io::Error) -> String {
        format!("two_phase_log {}: {e}", self.path.display())
    }

    /// A fresh global transaction identifier.
    pub fn new_gid(&mut self) -> String {
        self.next += 1;
        format!("{}{}", self.prefix, self.next)
    }

    /// Write down that `gid` commits; it counts once `decision` says it is durable, before
    /// the first COMMIT PREPARED. Returns the decision's number.
    pub fn write_commit(&mut self, gid: &str) -> Result<u64, String> {
        // One write per line, so that a crash cannot leave half a line naming another gid.
        let line = format!("commit {gid}\n");
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| self.error(e))?;
        self.written += 1;
        Ok(self.written)
    }

    /// Where decision `number` stands; `session` is woken when that changes.
    pub fn decision(&mut self, number: u64, session: ConnKey) -> Decision {
        if number <= self.failed {
            return Decision::Failed(self.failure.clone().unwrap_or_default());
        }
        if number <= self.synced {
            return Decision::Durable;
        }
        if !self.waiting.contains(&session) {
            self.waiting.push(session);
        }
        Decision::Waiting
    }

    /// Once per pass of the loop: take in the sync that ended and start the next one for
    /// the decisions written since. Returns the sessions to wake.
    pub fn flush(&mut self) -> Vec<ConnKey> {
        let reports: Vec<_> = self
            .syncer
            .as_ref()
            .map(|s| s.done.try_iter().collect())
            .unwrap_or_default();
        let mut ended = !reports.is_empty();
        for (upto, result) in reports {
            self.syncing = false;
            self.record(upto, result);
        }
        if !self.syncing && self.written > self.synced.max(self.failed) {
            let upto = self.written;
            match &self.syncer {
                Some(s) if s.ask.send(upto).is_ok() => self.syncing = true,
                Some(_) => self.record(upto, Err("the sync thread is gone".into())),
                None => {
                    let result = self.file.sync_data().map_err(|e| self.error(e));
                    self.record(upto, result);
                    ended = true;
                }
            }
        }
        if ended {
            std::mem::take(&mut self.waiting)
        } else {
            Vec::new()
        }
    }

    fn record(&mut self, upto: u64, result: Result<(), String>) {
        match result {
            Ok(()) => self.synced = self.synced.max(upto),
            Err(e) => {
                log::error!("{e}");
                self.failed = self.failed.max(upto);
                self.failure = Some(e);
            }
        }
    }

    /// Every node has committed `gid`, or a decision that never became durable was given
    /// up (its transaction is rolled back): nothing left to resolve (not synced: at worst
    /// the next start commits an already committed transaction, which finds nothing to do).
    pub fn done(&mut self, gid: &str) {
        let _ = self.file.write_all(format!("done {gid}\n").as_bytes());
    }
}

/// The identifiers decided `commit` and not marked `done`. A last line without its newline
/// was cut by a crash and counts for nothing (its decision was never on disk whole).
pub fn undone_commits(text: &str) -> HashSet<String> {
    let mut decided = HashSet::new();
    for line in text
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
    {
        match line.split_once(' ') {
            Some(("commit", gid)) => {
                decided.insert(gid.trim().to_string());
            }
            Some(("done", gid)) => {
                decided.remove(gid.trim());
            }
            _ => {}
        }
    }
    decided
}

/// The identifier prefix of this pgmulti instance (`pgmulti_<tag>_`), so that instances
/// sharing nodes never resolve each other's transactions: the tag comes from the path of
/// the instance's decision log.
pub fn gid_prefix(log: &Path) -> String {
    let path = std::fs::canonicalize(log.parent().unwrap_or(Path::new(".")))
        .map(|d| d.join(log.file_name().unwrap_or_default()))
        .unwrap_or_else(|_| log.to_path_buf());
    let tag = crate::auth::md5::md5_hex(path.display().to_string().as_bytes());
    format!("{GID_PREFIX}{}_", &tag[..8])
}

/// Resolving the in-doubt transactions a previous run of this instance left on the nodes.
#[derive(Clone)]
struct Resolver {
    nodes: Vec<(u8, SocketAddr, String)>,
    user: String,
    password: Option<String>,
    database: String,
    tls: NodeTls,
    /// Decided `commit` and not done, per the log.
    decided: HashSet<String>,
    /// This instance's identifiers, and those of the run now starting (left alone).
    prefix: String,
    current: String,
}

impl Resolver {
    fn connect(&self, node: &(u8, SocketAddr, String), db: &str) -> Result<Direct, String> {
        Direct::connect(
            node.1,
            &node.2,
            &self.user,
            self.password.as_deref(),
            db,
            &self.tls,
        )
    }

    /// Commit or roll back every earlier transaction of this instance found prepared.
    /// Returns whether every node could be asked.
    fn resolve_once(&self) -> bool {
        let mut all_reached = true;
        for node in &self.nodes {
            let id = node.0;
            let pending = self.connect(node, &self.database).and_then(|mut c| {
                c.query(&format!(
                    "SELECT gid, database FROM pg_prepared_xacts WHERE gid LIKE '{}%'",
                    self.prefix.replace('_', "\\_")
                ))
            });
            let pending = match pending {
                Ok(p) => p,
                Err(e) => {
                    log::warn!("two-phase commit: node {id} cannot be checked now ({e}); its in-doubt transactions wait");
                    all_reached = false;
                    continue;
                }
            };
            for row in pending {
                let (Some(Some(gid)), Some(Some(db))) = (row.first(), row.get(1)) else {
                    continue;
                };
                if gid.starts_with(&self.current) {
                    continue;
                }
                let commit = self.decided.contains(gid.as_str());
                let verb = if commit { "COMMIT" } else { "ROLLBACK" };
                let sql = format!("{verb} PREPARED '{}'", gid.replace('\'', "''"));
                match self.connect(node, db).and_then(|mut d| d.query(&sql)) {
                    Ok(_) => log::warn!(
                        "two-phase commit: node {id}: in-doubt transaction {gid} {}",
                        if commit { "committed" } else { "rolled back" }
                    ),
                    Err(e) => {
                        log::error!("two-phase commit: node {id}: {sql} failed: {e}");
                        all_reached = false;
                    }
                }
            }
        }
        all_reached
    }
}

/// Before the loop starts: every live node must allow prepared transactions, and every
/// in-doubt transaction an earlier run of this instance prepared is committed (if decided)
/// or rolled back. A PREPARE the earlier run sent just before it died may still reach a
/// node after this (the node reads it before it notices the lost connection), so a thread
/// looks again for a while and resolves those too. Returns the prefix for new identifiers.
pub fn check_and_recover(
    config: &Config,
    cluster: &Cluster,
    tls: &NodeTls,
    password: Option<&str>,
    current_epoch: u64,
) -> Result<String, String> {
    let log = std::fs::read_to_string(&config.two_phase_log).unwrap_or_default();
    let prefix = gid_prefix(&config.two_phase_log);
    let resolver = Resolver {
        nodes: cluster
            .live()
            .map(|id| {
                let n = &cluster.nodes[id as usize];
                (id, n.addr, n.host.clone())
            })
            .collect(),
        user: config.health_check_user.clone(),
        password: password.map(str::to_string),
        database: config.health_check_database.clone(),
        tls: tls.clone(),
        decided: undone_commits(&log),
        current: format!("{prefix}{current_epoch}_"),
        prefix: prefix.clone(),
    };
    for node in &resolver.nodes {
        let Ok(mut c) = resolver.connect(node, &resolver.database) else {
            continue;
        };
        let max = c.query("SHOW max_prepared_transactions")?;
        let max = max
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default();
        if max.trim() == "0" {
            return Err(format!(
                "commit_protocol = two_phase needs prepared transactions, but node {} ({}) has max_prepared_transactions = 0; set it (e.g. to max_connections) and restart that node",
                node.0, node.1
            ));
        }
    }
    let all_reached = resolver.resolve_once();
    let later = resolver.clone();
    std::thread::spawn(move || {
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(500));
            later.resolve_once();
        }
    });
    if all_reached {
        // Every decision is carried out (the follow-up only finds undecided ones).
        let kept: String = resolver
            .decided
            .iter()
            .map(|g| format!("commit {g}\n"))
            .collect();
        std::fs::write(&config.two_phase_log, kept)
            .map_err(|e| format!("two_phase_log {}: {e}", config.two_phase_log.display()))?;
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_not_done_are_kept() {
        let log = "commit pgmulti_1_1\ncommit pgmulti_1_2\ndone pgmulti_1_1\ngarbage\ncommit pgmulti_1_3\ncommit pgmulti_1_4";
        let d = undone_commits(log);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.contains("pgmulti_1_2") && d.contains("pgmulti_1_3"));
    }

    #[test]
    fn gids_are_unique_and_prefixed() {
        let dir = std::env::temp_dir().join(format!("pgmulti-2pc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = gid_prefix(&dir.join("log"));
        let mut log = DecisionLog::open(&dir.join("log"), &prefix, 7).unwrap();
        let (a, b) = (log.new_gid(), log.new_gid());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{prefix}7_")) && prefix.starts_with(GID_PREFIX));
        assert_ne!(
            prefix,
            gid_prefix(&dir.join("other")),
            "instances get their own prefix"
        );
        log.write_commit(&a).unwrap();
        log.done(&a);
        log.write_commit(&b).unwrap();
        log.flush();
        let text = std::fs::read_to_string(dir.join("log")).unwrap();
        assert_eq!(
            undone_commits(&text).into_iter().collect::<Vec<_>>(),
            vec![b]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn key(index: u32) -> ConnKey {
        ConnKey {
            index,
            generation: 1,
        }
    }

    /// Group commit: decisions count only after a sync that started after they were
    /// written; one sync carries all of them; their sessions are woken when it ends.
    #[test]
    fn one_sync_carries_every_decision_written_before_it() {
        let dir = std::env::temp_dir().join(format!("pgmulti-2pc-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = DecisionLog::open(&dir.join("log"), "pgmulti_x_", 1).unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(7)).unwrap());
        log.start_syncer(waker).unwrap();

        let first = log.write_commit("g1").unwrap();
        let second = log.write_commit("g2").unwrap();
        assert_eq!(log.decision(first, key(1)), Decision::Waiting);
        assert_eq!(log.decision(second, key(2)), Decision::Waiting);
        assert!(log.flush().is_empty(), "the sync has only been asked for");
        // Written while that sync runs: it waits for the next one.
        let third = log.write_commit("g3").unwrap();
        assert_eq!(log.decision(third, key(3)), Decision::Waiting);

        let mut events = mio::Events::with_capacity(4);
        let mut woken = Vec::new();
        let mut syncs = 0;
        while woken.len() < 3 {
            poll.poll(&mut events, Some(std::time::Duration::from_secs(10)))
                .unwrap();
            assert!(!events.is_empty(), "the sync thread wakes the loop");
            let now = log.flush();
            syncs += usize::from(!now.is_empty());
            for k in now {
                // One still waiting has asked to be woken again.
                match log.decision(k.index as u64, k) {
                    Decision::Durable => woken.push(k.index),
                    Decision::Waiting => {}
                    Decision::Failed(e) => panic!("decision {}: {e}", k.index),
                }
            }
        }
        woken.sort();
        assert_eq!(woken, vec![1, 2, 3]);
        assert!(syncs <= 2, "{syncs} syncs for 3 decisions");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_sync_fails_its_decisions() {
        let dir = std::env::temp_dir().join(format!("pgmulti-2pc-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = DecisionLog::open(&dir.join("log"), "pgmulti_x_", 1).unwrap();
        let n = log.write_commit("g1").unwrap();
        log.record(n, Err("disk full".into()));
        assert_eq!(
            log.decision(n, key(1)),
            Decision::Failed("disk full".into())
        );
        // A later decision is synced on its own.
        let m = log.write_commit("g2").unwrap();
        assert_eq!(log.decision(m, key(2)), Decision::Waiting);
        assert_eq!(log.flush(), vec![key(2)]);
        assert_eq!(log.decision(m, key(2)), Decision::Durable);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
