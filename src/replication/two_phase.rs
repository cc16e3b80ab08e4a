//! Two-phase commit (`commit_protocol = two_phase`): a replicated transaction commits with
//! PREPARE TRANSACTION on every node, then — once every node has prepared and the decision
//! is on disk — COMMIT PREPARED on every node. If pgmulti dies in between, the decision log
//! tells the next start which of its prepared transactions (`pgmulti_…` in
//! `pg_prepared_xacts`) to commit; every other one of them is rolled back.
//!
//! The log (`two_phase_log`) is a text file of lines `commit <gid>` (fsynced before the
//! first COMMIT PREPARED) and `done <gid>`. It is emptied at start-up once every node's
//! in-doubt transactions are resolved.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::net::SocketAddr;

use crate::cluster::direct::Direct;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::net::tls::NodeTls;

/// Prefix of every transaction identifier pgmulti prepares.
pub const GID_PREFIX: &str = "pgmulti_";

pub struct DecisionLog {
    file: File,
    path: PathBuf,
    /// `pgmulti_<instance tag>_<epoch>_`: identifiers unique to this instance and this run.
    prefix: String,
    next: u64,
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
        })
    }

    /// A fresh global transaction identifier.
    pub fn new_gid(&mut self) -> String {
        self.next += 1;
        format!("{}{}", self.prefix, self.next)
    }

    /// Record, durably, that `gid` commits. Called before the first COMMIT PREPARED.
    pub fn decide_commit(&mut self, gid: &str) -> Result<(), String> {
        writeln!(self.file, "commit {gid}")
            .and_then(|_| self.file.sync_data())
            .map_err(|e| format!("two_phase_log {}: {e}", self.path.display()))
    }

    /// Every node has committed `gid`: nothing left to resolve (not synced: at worst the next
    /// start commits an already committed transaction, which finds nothing to do).
    pub fn done(&mut self, gid: &str) {
        let _ = writeln!(self.file, "done {gid}");
    }
}

/// The identifiers decided `commit` and not marked `done`.
pub fn undone_commits(text: &str) -> HashSet<String> {
    let mut decided = HashSet::new();
    for line in text.lines() {
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
        let log = "commit pgmulti_1_1\ncommit pgmulti_1_2\ndone pgmulti_1_1\ngarbage\ncommit pgmulti_1_3\n";
        let d = undone_commits(log);
        assert_eq!(d.len(), 2);
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
        log.decide_commit(&a).unwrap();
        log.done(&a);
        log.decide_commit(&b).unwrap();
        let text = std::fs::read_to_string(dir.join("log")).unwrap();
        assert_eq!(
            undone_commits(&text).into_iter().collect::<Vec<_>>(),
            vec![b]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
