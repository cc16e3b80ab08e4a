//! The admin console: database `pgmulti` on the normal port, for users in `admin_users`,
//! simple query protocol. Each command becomes a result set psql prints as a table (or an
//! ErrorResponse). This file turns commands into messages; the session carries them.

use crate::cluster::NodeStatus;
use crate::config::Mode;
use crate::protocol::backend;
use crate::reactor::context::{LongAsk, Shared};

/// The database name that opens the admin console.
pub const DATABASE: &str = "pgmulti";

/// Run one admin command: append the answer (without ReadyForQuery) to `out`, or return
/// what the loop must carry out first (it answers when done).
pub fn execute(sql: &str, shared: &mut Shared, out: &mut Vec<u8>) -> Option<LongAsk> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let replication = shared.config.mode == Mode::Replication;
    let streaming = shared.config.mode == Mode::Streaming;
    let refuse = |out: &mut Vec<u8>, code: &str, message: &str| {
        backend::error_response(out, "ERROR", code, message, None, None);
        None
    };
    match words.as_slice() {
        [] => backend::empty_query_response(out),
        ["SHOW", "NODES"] | ["SHOW", "POOL_NODES"] => show_nodes(shared, out),
        ["SHOW", "POOLS"] => show_pools(shared, out),
        ["SHOW", "STATS"] => show_stats(shared, out),
        ["SHOW", "CONFIG"] => show_config(shared, out),
        ["SHOW", "VERSION"] => table(out, &["version"], &[vec![format!("pgmulti {}", env!("CARGO_PKG_VERSION"))]], "SHOW"),
        ["SHOW", "CLIENTS"] => return Some(LongAsk::ShowClients),
        ["SHOW", "SERVERS"] => return Some(LongAsk::ShowServers),
        ["DETACH", "NODE", n] => match node_id(n, shared) {
            Ok(id) if shared.cluster.lead() == Some(id) && shared.cluster.live().count() == 1 => {
                return refuse(out, "55000", &format!("node {id} is the last node up"));
            }
            Ok(id) => {
                if shared.cluster.detach(id, "DETACH NODE from the admin console") {
                    backend::command_complete(out, "DETACH NODE");
                } else {
                    return refuse(out, "55000", &format!("node {id} is not attached"));
                }
            }
            Err(e) => return refuse(out, "22023", &e),
        },
        ["ATTACH", "NODE", n] => match node_id(n, shared) {
            Ok(id) if shared.cluster.nodes[id as usize].status != NodeStatus::Down => {
                let status = shared.cluster.nodes[id as usize].status.as_str();
                return refuse(out, "55000", &format!("node {id} is {status}, not down"));
            }
            Ok(id) => return Some(LongAsk::Attach(id)),
            Err(e) => return refuse(out, "22023", &e),
        },
        ["RECOVER", "NODE", n] => match node_id(n, shared) {
            _ if !replication && !streaming => {
                return refuse(out, "0A000", "RECOVER NODE needs mode = replication or streaming");
            }
            Ok(id) if shared.cluster.nodes[id as usize].status != NodeStatus::Down => {
                let status = shared.cluster.nodes[id as usize].status.as_str();
                return refuse(out, "55000", &format!("node {id} is {status}, not down"));
            }
            Ok(_) if streaming && shared.config.recovery_1st_stage_command.trim().is_empty() => {
                return refuse(out, "55000", "recovery_1st_stage_command must be set (it rebuilds the node as a standby)");
            }
            Ok(_) if replication
                && (shared.config.recovery_1st_stage_command.trim().is_empty()
                    || shared.config.recovery_2nd_stage_command.trim().is_empty()) =>
            {
                return refuse(out, "55000", "recovery_1st_stage_command and recovery_2nd_stage_command must be set");
            }
            Ok(_) if shared.cluster.lead().is_none() => {
                let what = if streaming { "no primary is up" } else { "no node is up" };
                return refuse(out, "55000", &format!("{what} to recover from"));
            }
            Ok(id) => return Some(LongAsk::Recover(id)),
            Err(e) => return refuse(out, "22023", &e),
        },
        ["PROMOTE", "NODE", n] | ["SWITCHOVER", n] => {
            let switchover = words[0] == "SWITCHOVER";
            let what = if switchover { "SWITCHOVER" } else { "PROMOTE NODE" };
            let id = match node_id(n, shared) {
                _ if !streaming => return refuse(out, "0A000", &format!("{what} needs mode = streaming")),
                Ok(id) => id,
                Err(e) => return refuse(out, "22023", &e),
            };
            let node = &shared.cluster.nodes[id as usize];
            let primary = shared.cluster.lead();
            if let Some(p) = shared.cluster.promoting.or(shared.cluster.promote_ask) {
                return refuse(out, "55006", &format!("node {p} is being promoted"));
            }
            if node.status != NodeStatus::Up || node.standby != Some(true) {
                let is = if node.status != NodeStatus::Up { node.status.as_str() } else if primary == Some(id) { "the primary" } else { "of unknown role (no health check yet)" };
                return refuse(out, "55000", &format!("node {id} is {is}, not a standby that is up"));
            }
            return match (switchover, primary) {
                (false, Some(p)) => {
                    backend::error_response(
                        out,
                        "ERROR",
                        "55000",
                        &format!("node {p} is the primary: promoting node {id} beside it would make two"),
                        None,
                        Some(&format!("SWITCHOVER {id} hands the primary's role to node {id} without losing a commit")),
                    );
                    None
                }
                (false, None) => Some(LongAsk::Promote(id)),
                (true, None) => refuse(out, "55000", &format!("no primary is up to hand over from: PROMOTE NODE {id}")),
                (true, Some(_)) => Some(LongAsk::Switchover(id)),
            };
        }
        ["CHECK", "CONSISTENCY", ..] if !replication => {
            return refuse(out, "0A000", "CHECK CONSISTENCY needs mode = replication");
        }
        ["CHECK", "CONSISTENCY"] => return Some(LongAsk::CheckConsistency(None)),
        ["CHECK", "CONSISTENCY", ..] => match database_argument(sql) {
            Some(db) => return Some(LongAsk::CheckConsistency(Some(db))),
            None => {
                return refuse(out, "42601", "CHECK CONSISTENCY takes one database name (double-quoted if it has spaces)");
            }
        },
        ["PAUSE"] if shared.gate.paused => return refuse(out, "55000", "already paused"),
        ["PAUSE"] => return Some(LongAsk::Pause),
        ["RESUME"] if !shared.gate.paused => return refuse(out, "55000", "not paused"),
        ["RESUME"] => return Some(LongAsk::Resume),
        ["RELOAD"] => {
            shared.admin_asks.reload = true;
            backend::command_complete(out, "RELOAD");
        }
        ["SHUTDOWN"] => {
            shared.admin_asks.shutdown = true;
            backend::command_complete(out, "SHUTDOWN");
        }
        _ => backend::error_response(
            out,
            "ERROR",
            "42601",
            &format!("unknown admin command \"{}\"", sql.trim()),
            None,
            Some("SHOW NODES | POOLS | CLIENTS | SERVERS | STATS | CONFIG | VERSION, DETACH NODE n, ATTACH NODE n, RECOVER NODE n, PROMOTE NODE n, SWITCHOVER n, CHECK CONSISTENCY [db], PAUSE, RESUME, RELOAD, SHUTDOWN"),
        ),
    }
    None
}

/// The database named after `CHECK CONSISTENCY`: one word as written, or a double-quoted
/// name (`""` for a quote inside).
fn database_argument(sql: &str) -> Option<String> {
    let mut rest = sql.trim().trim_end_matches(';').trim();
    for _ in 0..2 {
        rest = rest.split_once(char::is_whitespace)?.1.trim_start();
    }
    match rest.strip_prefix('"') {
        Some(quoted) => {
            let end = quoted.strip_suffix('"')?;
            // Inside, a lone quote would end the name early.
            let name = end.replace("\"\"", "\"");
            (!end.replace("\"\"", "").contains('"') && !name.is_empty()).then_some(name)
        }
        None => (!rest.contains(char::is_whitespace)).then(|| rest.to_string()),
    }
}

fn node_id(word: &str, shared: &Shared) -> Result<u8, String> {
    match word.parse::<u8>() {
        Ok(id) if (id as usize) < shared.cluster.nodes.len() => Ok(id),
        _ => Err(format!(
            "there is no node \"{word}\" (nodes are 0 to {})",
            shared.cluster.nodes.len().saturating_sub(1)
        )),
    }
}

fn show_nodes(shared: &Shared, out: &mut Vec<u8>) {
    let lead = shared.cluster.lead();
    let rows: Vec<Vec<String>> = shared
        .cluster
        .nodes
        .iter()
        .map(|n| {
            let up = n.status == NodeStatus::Up;
            vec![
                n.id.to_string(),
                n.host.clone(),
                n.addr.port().to_string(),
                n.status.as_str().to_string(),
                match (shared.cluster.streaming, n.standby) {
                    // A detached node's role is what it was: not shown.
                    (true, _) if !up => "-",
                    (true, Some(false)) => "primary",
                    (true, Some(true)) => "standby",
                    (true, None) => "unknown",
                    _ if lead == Some(n.id) => "lead",
                    _ if up => "replica",
                    _ => "-",
                }
                .to_string(),
                n.weight.to_string(),
                n.reads.to_string(),
                n.writes.to_string(),
                format!("{:.3}", n.latency_ms),
                n.note.clone(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "node_id",
            "host",
            "port",
            "status",
            "role",
            "weight",
            "reads",
            "writes",
            "latency_ms",
            "note",
        ],
        &rows,
        "SHOW",
    );
}

fn show_pools(shared: &Shared, out: &mut Vec<u8>) {
    let rows: Vec<Vec<String>> = shared
        .pool
        .counts()
        .into_iter()
        .map(|(k, [idle, active, waiting])| {
            vec![
                k.node.to_string(),
                k.database,
                k.user,
                idle.to_string(),
                active.to_string(),
                waiting.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &["node_id", "database", "user", "idle", "active", "waiting"],
        &rows,
        "SHOW",
    );
}

/// Per node and in total: requests, reads, writes, bytes each way, errors, and the
/// average round trip since start. Session counters follow as totals.
fn show_stats(shared: &Shared, out: &mut Vec<u8>) {
    let mut rows = Vec::new();
    let mut total = [0u64; 6];
    let (mut latency_sum, mut samples) = (0.0, 0u64);
    for n in &shared.cluster.nodes {
        let counts = [
            n.queries,
            n.reads,
            n.writes,
            n.bytes_in,
            n.bytes_out,
            n.errors,
        ];
        for (t, c) in total.iter_mut().zip(counts) {
            *t += c;
        }
        latency_sum += n.latency.sum_ms();
        samples += n.latency.count();
        let mut row = vec![n.id.to_string()];
        row.extend(counts.iter().map(u64::to_string));
        let mean = if n.latency.count() == 0 {
            0.0
        } else {
            n.latency.sum_ms() / n.latency.count() as f64
        };
        row.push(format!("{mean:.3}"));
        rows.push(row);
    }
    let mut row = vec!["total".to_string()];
    row.extend(total.iter().map(u64::to_string));
    row.push(format!(
        "{:.3}",
        if samples == 0 {
            0.0
        } else {
            latency_sum / samples as f64
        }
    ));
    rows.push(row);
    table(
        out,
        &[
            "node",
            "queries",
            "reads",
            "writes",
            "bytes_received",
            "bytes_sent",
            "errors",
            "avg_latency_ms",
        ],
        &rows,
        "SHOW",
    );
    let s = &shared.stats;
    let sessions = vec![
        vec!["sessions_accepted".into(), s.sessions_accepted.to_string()],
        vec!["sessions_closed".into(), s.sessions_closed.to_string()],
        vec!["state_transitions".into(), s.transitions.to_string()],
        vec!["protocol_errors".into(), s.protocol_errors.to_string()],
        vec!["pool_reused".into(), shared.pool.reused.to_string()],
        vec!["log_lines_dropped".into(), s.log_lines_dropped.to_string()],
    ];
    // A second result set (psql prints both).
    table(out, &["name", "value"], &sessions, "SHOW");
}

fn show_config(shared: &Shared, out: &mut Vec<u8>) {
    let rows: Vec<Vec<String>> = shared
        .config
        .settings()
        .into_iter()
        .map(|(k, v)| {
            let masked = k.contains("password") && !v.is_empty();
            vec![k, if masked { "********".into() } else { v }]
        })
        .collect();
    table(out, &["name", "value"], &rows, "SHOW");
}

/// A text result set and its CommandComplete.
pub fn table(out: &mut Vec<u8>, columns: &[&str], rows: &[Vec<String>], command: &str) {
    backend::row_description(out, columns);
    for r in rows {
        let values: Vec<Option<&str>> = r.iter().map(|v| Some(v.as_str())).collect();
        backend::data_row(out, &values);
    }
    backend::command_complete(out, &format!("{command} {}", rows.len()));
}

#[cfg(test)]
mod tests {
    use super::database_argument;

    #[test]
    fn check_consistency_takes_one_database_name() {
        assert_eq!(
            database_argument("CHECK CONSISTENCY app").as_deref(),
            Some("app")
        );
        assert_eq!(
            database_argument("check  consistency  App;").as_deref(),
            Some("App")
        );
        assert_eq!(
            database_argument("CHECK CONSISTENCY \"my \"\"db\"\"\"").as_deref(),
            Some("my \"db\"")
        );
        assert_eq!(database_argument("CHECK CONSISTENCY a b"), None);
        assert_eq!(database_argument("CHECK CONSISTENCY \"a\" b\""), None);
        assert_eq!(database_argument("CHECK CONSISTENCY \"\""), None);
    }
}
