//! The node table: where each node is, whether it is part of the cluster (`up`) or detached
//! (`down`), its read weight, observed latency and counters, and which node is the lead (the
//! live node with the lowest id). Detaching is persisted to `status_file` at once so a
//! detached node stays detached across a restart. No I/O besides that file.

pub mod consistency;
pub mod direct;
pub mod health;
pub mod own_connection;
pub mod pool;
pub mod preconnect;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Up,
    Down,
    /// `RECOVER NODE` is running: not part of the cluster yet (persisted as `down`).
    Recovering,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Down => "down",
            NodeStatus::Recovering => "recovering",
        }
    }
}

pub struct Node {
    pub id: u8,
    pub host: String,
    /// `backend_data_directoryN` (for `%D` in `failover_command`).
    pub data_directory: String,
    pub addr: SocketAddr,
    pub weight: f64,
    pub status: NodeStatus,
    /// Moving average of observed round trips, in milliseconds (0 = none yet).
    pub latency_ms: f64,
    /// Requests the node ran, of them reads (routed to it) and writes.
    pub queries: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// ErrorResponses the node sent.
    pub errors: u64,
    /// Every observed round trip, for the average and `/metrics`.
    pub latency: crate::metrics::Histogram,
    /// Why the node has its status (detach reason, recovery progress), for SHOW NODES.
    pub note: String,
    /// Health checks failed in a row.
    pub health_failures: usize,
    /// Votes in a row (in any session) in which this node's answer differed from the
    /// majority's and the transaction was rolled back (`Cluster::disagreed`).
    pub disagreements: u32,
    /// `mode = streaming`: whether the last health check found the node in recovery (a
    /// standby); `None` before the first one.
    pub standby: Option<bool>,
    /// `mode = streaming`: the node's WAL position at the last health check (the primary's
    /// current position, a standby's replay position).
    pub wal_lsn: u64,
    /// `mode = streaming`: how far a standby's replay was behind in time at the last health
    /// check (0 when it had replayed everything it received).
    pub replay_delay: Duration,
}

impl Node {
    pub fn new(
        id: u8,
        host: String,
        data_directory: String,
        addr: SocketAddr,
        weight: f64,
    ) -> Node {
        Node {
            id,
            host,
            data_directory,
            addr,
            weight,
            status: NodeStatus::Up,
            latency_ms: 0.0,
            queries: 0,
            reads: 0,
            writes: 0,
            bytes_in: 0,
            bytes_out: 0,
            errors: 0,
            latency: Default::default(),
            note: String::new(),
            health_failures: 0,
            disagreements: 0,
            standby: None,
            wal_lsn: 0,
            replay_delay: Duration::ZERO,
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    status_file: Option<PathBuf>,
    /// `failover_command`, run on every detach.
    pub failover_command: String,
    /// Commands started and not yet reaped.
    children: Vec<std::process::Child>,
    /// Bumped by every status change: sessions compare it to notice attached nodes.
    pub changes: u64,
    /// `mode = streaming`: the lead is the primary, as the nodes say (`Node::standby`).
    pub streaming: bool,
    /// `mode = streaming`: the primary was lost and this standby is to be promoted (the
    /// loop runs `pg_promote()` on it, then `promoted`).
    pub promote_ask: Option<u8>,
    /// `mode = streaming`: the standby whose promotion started, until a health check finds
    /// it a primary.
    pub promoting: Option<u8>,
    /// `follow_primary_command`, run for every other standby once one was promoted.
    pub follow_primary_command: String,
}

/// A node whose answers differ from the majority's in this many votes in a row is detached:
/// once is a race between clients, again and again is a node that no longer holds the same
/// data.
pub const DISAGREEMENTS_BEFORE_DETACH: u32 = 3;

/// Weight of a new latency sample in the moving average.
const LATENCY_ALPHA: f64 = 0.2;

/// The least share of its weight a slow node keeps, so that it stays measured: a node that
/// was slow once gets reads again when it is fast again.
const SLOW_NODE_SHARE: f64 = 0.02;

/// A node's part of the reads: its weight, times fastest / its latency (unmeasured counts as
/// fastest), at least `SLOW_NODE_SHARE` of its weight.
fn read_share(n: &Node, fastest: f64) -> f64 {
    let speed = if n.latency_ms > 0.0 && fastest.is_finite() {
        (fastest / n.latency_ms).clamp(SLOW_NODE_SHARE, 1.0)
    } else {
        1.0
    };
    n.weight * speed
}

impl Cluster {
    /// Build the table; node status comes from `status_file` when it exists.
    pub fn new(nodes: Vec<Node>, status_file: Option<PathBuf>) -> Result<Cluster, String> {
        let mut c = Cluster {
            nodes,
            status_file,
            failover_command: String::new(),
            children: Vec::new(),
            changes: 0,
            streaming: false,
            promote_ask: None,
            promoting: None,
            follow_primary_command: String::new(),
        };
        if let Some(path) = c.status_file.clone() {
            if path.exists() {
                c.read_status(&path)?;
            }
        }
        Ok(c)
    }

    fn read_status(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("status_file {}: {e}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(id), Some(status)) = (words.next(), words.next()) else {
                return Err(format!(
                    "{}:{}: expected \"<node id> up|down\"",
                    path.display(),
                    i + 1
                ));
            };
            let id: usize = id
                .parse()
                .map_err(|_| format!("{}:{}: bad node id {id:?}", path.display(), i + 1))?;
            let status = match status {
                "up" => NodeStatus::Up,
                "down" => NodeStatus::Down,
                other => {
                    return Err(format!(
                        "{}:{}: bad status {other:?}",
                        path.display(),
                        i + 1
                    ))
                }
            };
            // A node no longer configured is ignored; a new node starts up.
            if let Some(n) = self.nodes.get_mut(id) {
                n.status = status;
            }
        }
        Ok(())
    }

    fn write_status(&self) {
        let Some(path) = &self.status_file else {
            return;
        };
        let mut text =
            String::from("# pgmulti node status: <node id> up|down (written by pgmulti)\n");
        for n in &self.nodes {
            let status = match n.status {
                NodeStatus::Up => "up",
                NodeStatus::Down | NodeStatus::Recovering => "down",
            };
            text.push_str(&format!("{} {status}\n", n.id));
        }
        let tmp = path.with_extension("tmp");
        let result = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            log::error!("cannot write status_file {}: {e}", path.display());
        }
    }

    pub fn is_up(&self, id: u8) -> bool {
        self.nodes
            .get(id as usize)
            .is_some_and(|n| n.status == NodeStatus::Up)
    }

    /// The live node with the lowest id.
    pub fn lead(&self) -> Option<u8> {
        self.nodes
            .iter()
            .find(|n| n.status == NodeStatus::Up && (!self.streaming || n.standby == Some(false)))
            .map(|n| n.id)
    }

    /// `mode = streaming`: a node that may serve a read of a session whose last commit
    /// ended at `lsn`: a standby that has replayed it, lags at most `lag.0` bytes behind the
    /// primary and at most `lag.1` in time (zero: no limit), by the health checks' readings,
    /// chosen as `read_node` chooses (`pick` uniform in [0, 1)); None: the primary.
    pub fn standby_for(&self, lsn: u64, lag: (u64, Duration), pick: f64) -> Option<u8> {
        let primary = self.nodes.iter().find(|n| Some(n.id) == self.lead())?;
        let (max_bytes, max_delay) = lag;
        let eligible = |n: &&Node| {
            n.status == NodeStatus::Up
                && n.weight > 0.0
                && n.standby == Some(true)
                && n.wal_lsn >= lsn
                && primary.wal_lsn.saturating_sub(n.wal_lsn) <= max_bytes
                && (max_delay.is_zero() || n.replay_delay <= max_delay)
        };
        let fastest = self
            .nodes
            .iter()
            .filter(eligible)
            .map(|n| n.latency_ms)
            .filter(|&l| l > 0.0)
            .fold(f64::INFINITY, f64::min);
        let total: f64 = self
            .nodes
            .iter()
            .filter(eligible)
            .map(|n| read_share(n, fastest))
            .sum();
        let mut at = pick.clamp(0.0, 1.0) * total;
        let mut chosen = None;
        for n in self.nodes.iter().filter(eligible) {
            chosen = Some(n.id);
            at -= read_share(n, fastest);
            if at < 0.0 {
                break;
            }
        }
        chosen
    }

    pub fn live(&self) -> impl Iterator<Item = u8> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Up)
            .map(|n| n.id)
    }

    /// Take a node out of the cluster. Returns false if it was already down. In streaming
    /// mode, losing the primary asks for the most advanced standby's promotion.
    pub fn detach(&mut self, id: u8, reason: &str) -> bool {
        let Some(old_lead) = self.take_out(id, reason) else {
            return false;
        };
        if self.streaming && old_lead == Some(id) {
            self.promote_ask = self.most_advanced_standby();
            match self.promote_ask {
                Some(s) => log::warn!("the primary (node {id}) is lost: promoting node {s}, the most advanced standby"),
                None => log::error!("the primary (node {id}) is lost and no standby is up to promote"),
            }
        }
        true
    }

    /// `mode = streaming`, SWITCHOVER: the primary `from` is detached (it stays so until
    /// rebuilt as a standby) and standby `to`, which has replayed all of its WAL, is
    /// promoted.
    pub fn hand_over(&mut self, from: u8, to: u8) {
        let reason = format!("SWITCHOVER: node {to} takes over as the primary");
        if self.take_out(from, &reason).is_some() {
            log::warn!("SWITCHOVER: promoting node {to}");
            self.promote_ask = Some(to);
        }
    }

    /// Mark a live node down, persisted, and run `failover_command`. Returns the lead
    /// before, or None if the node was not up.
    fn take_out(&mut self, id: u8, reason: &str) -> Option<Option<u8>> {
        if !self.is_up(id) {
            return None;
        }
        let old_lead = self.lead();
        self.changes += 1;
        let n = &mut self.nodes[id as usize];
        n.status = NodeStatus::Down;
        n.note = format!("detached: {reason}");
        log::warn!("node {id} ({}) detached: {reason}", n.addr);
        self.write_status();
        match self.lead() {
            Some(lead) => log::info!("lead node is now node {lead}"),
            None if self.streaming && self.live().next().is_some() => {}
            None => log::error!("no node is left up"),
        }
        self.run_failover_command(id, old_lead);
        Some(old_lead)
    }

    /// `mode = streaming`: the live standby with the furthest replay position (by the last
    /// health checks), the lowest id on a tie.
    pub fn most_advanced_standby(&self) -> Option<u8> {
        self.nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Up && n.standby == Some(true))
            .fold(None::<&Node>, |best, n| match best {
                Some(b) if b.wal_lsn >= n.wal_lsn => Some(b),
                _ => Some(n),
            })
            .map(|n| n.id)
    }

    /// `mode = streaming`: node `id`, promoted, answers as a primary. Every other live
    /// standby gets `follow_primary_command` (placeholders as
    /// `failover_command`'s: `%d %h %p %D` the standby, `%m %H %r` the new primary).
    pub fn promoted(&mut self, id: u8) {
        let Some(n) = self.nodes.get_mut(id as usize) else {
            return;
        };
        n.standby = Some(false);
        self.changes += 1;
        log::warn!("node {id} was promoted: it is the primary now");
        if self.follow_primary_command.is_empty() {
            return;
        }
        let followers: Vec<u8> = self
            .nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Up && n.standby == Some(true))
            .map(|n| n.id)
            .collect();
        for f in followers {
            let cmd = failover_placeholders(&self.follow_primary_command, self, f, None);
            self.spawn(&format!("follow_primary_command for node {f}"), &cmd);
        }
    }

    /// A vote on a write found `differ` outside the majority `agree`, and the transaction
    /// was rolled back on every node (a race between clients looks like this too). The
    /// nodes that have now differed `DISAGREEMENTS_BEFORE_DETACH` times in a row are
    /// returned, to be detached — never all the live nodes.
    pub fn disagreed(&mut self, differ: &[u8], agree: &[u8]) -> Vec<u8> {
        self.agreed(agree);
        let mut out = Vec::new();
        for &id in differ {
            if let Some(n) = self.nodes.get_mut(id as usize) {
                n.disagreements += 1;
                if n.disagreements >= DISAGREEMENTS_BEFORE_DETACH {
                    out.push(id);
                }
            }
        }
        if out.len() >= self.live().count() {
            out.clear();
        }
        out
    }

    /// These nodes' answers agreed with the majority.
    pub fn agreed(&mut self, agree: &[u8]) {
        for &id in agree {
            if let Some(n) = self.nodes.get_mut(id as usize) {
                n.disagreements = 0;
            }
        }
    }

    /// Start `failover_command` for a detached node, without waiting for it.
    fn run_failover_command(&mut self, failed: u8, old_lead: Option<u8>) {
        self.children
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        if self.failover_command.trim().is_empty() {
            return;
        }
        let cmd = failover_placeholders(&self.failover_command, self, failed, old_lead);
        self.spawn("failover_command", &cmd);
    }

    /// Start `cmd` with `sh -c`, not waited for (reaped later); `what` names it in the log.
    fn spawn(&mut self, what: &str, cmd: &str) {
        match std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => {
                log::info!("{what} started: {cmd}");
                self.children.push(child);
            }
            Err(e) => log::error!("{what} could not start: {e}"),
        }
    }

    /// Set a node's status (ATTACH NODE, RECOVER NODE; never automatic), persisted; in
    /// streaming mode its role is unknown until a health check reads it.
    pub fn set_status(&mut self, id: u8, status: NodeStatus) {
        if let Some(n) = self.nodes.get_mut(id as usize) {
            n.status = status;
            // Its role is what its next health check says, never what it was.
            n.standby = None;
            self.changes += 1;
            self.write_status();
        }
    }

    /// A node added by a reload: it starts detached, and RECOVER NODE or ATTACH NODE brings
    /// it in.
    pub fn add(&mut self, mut node: Node) {
        node.status = NodeStatus::Down;
        log::info!("node {} ({}) added, detached", node.id, node.addr);
        self.nodes.push(node);
        self.changes += 1;
        self.write_status();
    }

    /// `%d %h %p %D` of `node` and `%m %H %r %R` of `lead` (RECOVER NODE's commands).
    pub fn recovery_command(&self, template: &str, node: u8, lead: u8) -> String {
        let lead_dir = self
            .nodes
            .get(lead as usize)
            .map_or("", |n| n.data_directory.as_str());
        failover_placeholders(
            &template.replace("%R", &lead_dir.replace('%', "%%")),
            self,
            node,
            Some(lead),
        )
    }

    /// Where a read goes, for `pick` uniform in [0, 1): live nodes of positive weight share
    /// the reads in proportion to their weight, scaled down by how much slower than the
    /// fastest of them each one answers (`read_share`). No node with a positive weight: the
    /// lead.
    pub fn read_node(&self, pick: f64) -> Option<u8> {
        let live = || {
            self.nodes
                .iter()
                .filter(|n| n.status == NodeStatus::Up && n.weight > 0.0)
        };
        let fastest = live()
            .map(|n| n.latency_ms)
            .filter(|&l| l > 0.0)
            .fold(f64::INFINITY, f64::min);
        let total: f64 = live().map(|n| read_share(n, fastest)).sum();
        let mut at = pick.clamp(0.0, 1.0) * total;
        let mut chosen = None;
        for n in live() {
            chosen = Some(n.id);
            at -= read_share(n, fastest);
            if at < 0.0 {
                break;
            }
        }
        chosen.or_else(|| self.lead())
    }

    /// Record one observed round trip of a node.
    pub fn observe_latency(&mut self, id: u8, ms: f64) {
        if let Some(n) = self.nodes.get_mut(id as usize) {
            n.latency.observe(ms);
            n.latency_ms = if n.latency_ms == 0.0 {
                ms
            } else {
                n.latency_ms + LATENCY_ALPHA * (ms - n.latency_ms)
            };
        }
    }
}

/// `%d %h %p %D` failed node, `%m %H %r` new lead, `%M` old lead, `%%` a percent sign.
fn failover_placeholders(template: &str, c: &Cluster, failed: u8, old_lead: Option<u8>) -> String {
    let node = |id: Option<u8>| id.and_then(|i| c.nodes.get(i as usize));
    let lead = node(c.lead());
    let f = node(Some(failed));
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&failed.to_string()),
            Some('h') => out.push_str(f.map_or("", |n| n.host.as_str())),
            Some('p') => out.push_str(&f.map_or(String::new(), |n| n.addr.port().to_string())),
            Some('D') => out.push_str(f.map_or("", |n| n.data_directory.as_str())),
            Some('m') => out.push_str(&c.lead().map_or("-1".into(), |l| l.to_string())),
            Some('H') => out.push_str(lead.map_or("", |n| n.host.as_str())),
            Some('r') => out.push_str(&lead.map_or(String::new(), |n| n.addr.port().to_string())),
            Some('M') => out.push_str(&old_lead.map_or("-1".into(), |l| l.to_string())),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(weights: &[f64]) -> Cluster {
        let nodes = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Node::new(
                    i as u8,
                    "127.0.0.1".into(),
                    format!("/data/{i}"),
                    SocketAddr::from(([127, 0, 0, 1], 5432 + i as u16)),
                    w,
                )
            })
            .collect();
        Cluster::new(nodes, None).unwrap()
    }

    #[test]
    fn a_node_is_at_fault_only_after_disagreeing_again_and_again() {
        let mut c = cluster(&[1.0, 1.0, 1.0]);
        // Two races, then an agreement: the run starts over.
        assert!(c.disagreed(&[2], &[0, 1]).is_empty());
        assert!(c.disagreed(&[2], &[0, 1]).is_empty());
        c.agreed(&[0, 1, 2]);
        assert!(c.disagreed(&[2], &[0, 1]).is_empty());
        assert!(c.disagreed(&[2], &[0, 1]).is_empty());
        assert_eq!(c.disagreed(&[2], &[0, 1]), vec![2]);
        // Never every live node, whoever disagreed.
        let mut two = cluster(&[1.0, 1.0]);
        assert!(two.detach(1, "test"));
        for _ in 0..DISAGREEMENTS_BEFORE_DETACH {
            assert!(two.disagreed(&[0], &[]).is_empty());
        }
    }

    /// Streaming: a standby behind the session's commit, too many bytes behind the primary,
    /// or (with a limit) too long behind in time serves no read.
    #[test]
    fn standbys_too_far_behind_serve_no_reads() {
        let mut c = cluster(&[1.0, 1.0, 1.0]);
        c.streaming = true;
        for (n, (standby, lsn)) in c
            .nodes
            .iter_mut()
            .zip([(false, 1000), (true, 990), (true, 400)])
        {
            n.standby = Some(standby);
            n.wal_lsn = lsn;
        }
        c.nodes[1].replay_delay = Duration::from_secs(5);
        let pick = |c: &Cluster, lsn, lag| {
            let mut got: Vec<Option<u8>> = (0..10)
                .map(|i| c.standby_for(lsn, lag, i as f64 / 10.0))
                .collect();
            got.sort();
            got.dedup();
            got
        };
        let no_time = Duration::ZERO;
        assert_eq!(pick(&c, 0, (1 << 20, no_time)), vec![Some(1), Some(2)]);
        assert_eq!(
            pick(&c, 900, (1 << 20, no_time)),
            vec![Some(1)],
            "node 2 lacks the commit"
        );
        assert_eq!(
            pick(&c, 0, (100, no_time)),
            vec![Some(1)],
            "node 2 is 600 bytes behind"
        );
        assert_eq!(
            pick(&c, 0, (1 << 20, Duration::from_secs(1))),
            vec![Some(2)],
            "node 1 replays 5 s late"
        );
        assert_eq!(pick(&c, 900, (1 << 20, Duration::from_secs(1))), vec![None]);
    }

    #[test]
    fn lead_is_lowest_live_id() {
        let mut c = cluster(&[1.0, 1.0, 1.0]);
        assert_eq!(c.lead(), Some(0));
        assert!(c.detach(0, "test"));
        assert!(!c.detach(0, "again"));
        assert_eq!(c.lead(), Some(1));
        assert_eq!(c.live().collect::<Vec<_>>(), vec![1, 2]);
    }

    /// How many of 1,000 evenly spread picks each node gets.
    fn spread(c: &Cluster) -> Vec<usize> {
        let mut counts = vec![0; c.nodes.len()];
        for i in 0..1000 {
            counts[c.read_node(i as f64 / 1000.0).unwrap() as usize] += 1;
        }
        counts
    }

    #[test]
    fn reads_spread_by_weight_and_speed() {
        let mut c = cluster(&[1.0, 3.0, 0.0]);
        assert_eq!(
            spread(&c),
            vec![250, 750, 0],
            "by weight; weight 0 never reads"
        );
        c.observe_latency(2, 0.1);
        c.observe_latency(0, 1.0);
        c.observe_latency(1, 2.0);
        assert_eq!(
            spread(&c),
            vec![400, 600, 0],
            "a node twice as slow gets half its share"
        );
        c.observe_latency(1, 500.0);
        let slow = spread(&c)[1];
        assert!(
            (40..=80).contains(&slow),
            "a very slow node keeps a few reads: {slow}"
        );
        for _ in 0..30 {
            c.observe_latency(1, 1.0);
        }
        let back = spread(&c)[1];
        assert!(
            back >= 700,
            "and gets its share back when it is fast: {back}"
        );
        assert_eq!(c.read_node(0.9999), Some(1));
        let mut c = cluster(&[0.0, 0.0]);
        c.detach(0, "test");
        assert_eq!(c.read_node(0.5), Some(1), "no weighted node: the lead");
    }

    #[test]
    fn failover_placeholders_name_the_nodes() {
        let mut c = cluster(&[1.0, 1.0, 1.0]);
        c.nodes[0].status = NodeStatus::Down;
        let s = failover_placeholders("%d %h %p %D -> %m %H %r (was %M) 100%% %x", &c, 0, Some(0));
        assert_eq!(
            s,
            "0 127.0.0.1 5432 /data/0 -> 1 127.0.0.1 5433 (was 0) 100% %x"
        );
    }

    #[test]
    fn status_file_round_trip() {
        let dir = std::env::temp_dir().join(format!("pgmulti-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("status");
        let mut c = cluster(&[1.0, 1.0, 1.0]);
        c.status_file = Some(path.clone());
        c.detach(1, "test");
        let again = Cluster::new(cluster(&[1.0, 1.0, 1.0]).nodes, Some(path.clone())).unwrap();
        assert_eq!(again.live().collect::<Vec<_>>(), vec![0, 2]);
        std::fs::write(&path, "1 sideways\n").unwrap();
        let err = Cluster::new(cluster(&[1.0]).nodes, Some(path.clone()))
            .err()
            .unwrap();
        assert!(err.contains(":1: bad status"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
