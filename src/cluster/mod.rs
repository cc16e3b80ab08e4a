//! The node table: where each node is, whether it is part of the cluster (`up`) or detached
//! (`down`), its read weight, observed latency and counters, and which node is the lead (the
//! live node with the lowest id). Detaching is persisted to `status_file` at once so a
//! detached node stays detached across a restart. No I/O besides that file.

pub mod direct;
pub mod pool;
pub mod preconnect;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Up,
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Down => "down",
        }
    }
}

pub struct Node {
    pub id: u8,
    pub host: String,
    pub addr: SocketAddr,
    pub weight: f64,
    pub status: NodeStatus,
    /// Moving average of observed round trips, in milliseconds (0 = none yet).
    pub latency_ms: f64,
    pub reads: u64,
    pub writes: u64,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    status_file: Option<PathBuf>,
}

/// Weight of a new latency sample in the moving average.
const LATENCY_ALPHA: f64 = 0.2;

impl Cluster {
    /// Build the table; node status comes from `status_file` when it exists.
    pub fn new(nodes: Vec<Node>, status_file: Option<PathBuf>) -> Result<Cluster, String> {
        let mut c = Cluster { nodes, status_file };
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
            text.push_str(&format!("{} {}\n", n.id, n.status.as_str()));
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
            .find(|n| n.status == NodeStatus::Up)
            .map(|n| n.id)
    }

    pub fn live(&self) -> impl Iterator<Item = u8> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Up)
            .map(|n| n.id)
    }

    /// Take a node out of the cluster. Returns false if it was already down.
    pub fn detach(&mut self, id: u8, reason: &str) -> bool {
        let Some(n) = self.nodes.get_mut(id as usize) else {
            return false;
        };
        if n.status == NodeStatus::Down {
            return false;
        }
        n.status = NodeStatus::Down;
        log::warn!("node {id} ({}) detached: {reason}", n.addr);
        self.write_status();
        match self.lead() {
            Some(lead) => log::info!("lead node is now node {lead}"),
            None => log::error!("no node is left up"),
        }
        true
    }

    /// Put a node back (admin ATTACH; never automatic).
    pub fn attach(&mut self, id: u8) -> bool {
        let Some(n) = self.nodes.get_mut(id as usize) else {
            return false;
        };
        n.status = NodeStatus::Up;
        self.write_status();
        true
    }

    /// Where a read goes: among live nodes of the highest positive weight, the one with the
    /// lowest observed latency (unmeasured counts as fastest, so every node gets measured).
    /// No node with a positive weight: the lead.
    pub fn read_node(&self) -> Option<u8> {
        let live = || {
            self.nodes
                .iter()
                .filter(|n| n.status == NodeStatus::Up && n.weight > 0.0)
        };
        let top = live().map(|n| n.weight).fold(0.0, f64::max);
        live()
            .filter(|n| n.weight == top)
            .min_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms))
            .map(|n| n.id)
            .or_else(|| self.lead())
    }

    /// Record one observed round trip of a node.
    pub fn observe_latency(&mut self, id: u8, ms: f64) {
        if let Some(n) = self.nodes.get_mut(id as usize) {
            n.latency_ms = if n.latency_ms == 0.0 {
                ms
            } else {
                n.latency_ms + LATENCY_ALPHA * (ms - n.latency_ms)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(weights: &[f64]) -> Cluster {
        let nodes = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Node {
                id: i as u8,
                host: "127.0.0.1".into(),
                addr: SocketAddr::from(([127, 0, 0, 1], 5432 + i as u16)),
                weight: w,
                status: NodeStatus::Up,
                latency_ms: 0.0,
                reads: 0,
                writes: 0,
            })
            .collect();
        Cluster::new(nodes, None).unwrap()
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

    #[test]
    fn reads_go_to_fastest_of_highest_weight() {
        let mut c = cluster(&[1.0, 1.0, 0.0]);
        c.observe_latency(0, 5.0);
        c.observe_latency(1, 1.0);
        c.observe_latency(2, 0.1);
        assert_eq!(c.read_node(), Some(1), "weight 0 never reads");
        c.observe_latency(1, 50.0);
        assert_eq!(c.read_node(), Some(0), "moving average follows");
        let mut c = cluster(&[0.0, 0.0]);
        c.detach(0, "test");
        assert_eq!(c.read_node(), Some(1), "no weighted node: the lead");
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
