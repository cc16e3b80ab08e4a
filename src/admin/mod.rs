//! The admin console: database `pgmulti` on the normal port, for users in `admin_users`,
//! simple query protocol. Each command becomes a result set psql prints as a table (or an
//! ErrorResponse). This file turns commands into messages; the session carries them.

use crate::cluster::NodeStatus;
use crate::protocol::backend;
use crate::reactor::context::Shared;

/// The database name that opens the admin console.
pub const DATABASE: &str = "pgmulti";

/// Run one admin command; append the answer (without ReadyForQuery) to `out`.
pub fn execute(sql: &str, shared: &mut Shared, out: &mut Vec<u8>) {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] => backend::empty_query_response(out),
        ["SHOW", "NODES"] | ["SHOW", "POOL_NODES"] => show_nodes(shared, out),
        ["SHOW", "POOLS"] => show_pools(shared, out),
        ["SHOW", "STATS"] => show_stats(shared, out),
        ["SHOW", "CONFIG"] => show_config(shared, out),
        ["SHOW", "VERSION"] => table(out, &["version"], &[vec![format!("pgmulti {}", env!("CARGO_PKG_VERSION"))]], "SHOW"),
        ["DETACH", "NODE", n] => match node_id(n, shared) {
            Ok(id) => {
                if shared.cluster.detach(id, "DETACH NODE from the admin console") {
                    backend::command_complete(out, "DETACH NODE");
                } else {
                    backend::error_response(out, "ERROR", "55000", &format!("node {id} is already detached"), None, None);
                }
            }
            Err(e) => backend::error_response(out, "ERROR", "22023", &e, None, None),
        },
        ["ATTACH", "NODE", n] => match node_id(n, shared) {
            Ok(id) if shared.cluster.is_up(id) => {
                backend::error_response(out, "ERROR", "55000", &format!("node {id} is already attached"), None, None)
            }
            Ok(id) => {
                shared.cluster.attach(id);
                log::warn!("node {id} attached from the admin console: it must hold the same data as the others (use RECOVER NODE when it does not)");
                backend::command_complete(out, "ATTACH NODE");
            }
            Err(e) => backend::error_response(out, "ERROR", "22023", &e, None, None),
        },
        ["RELOAD"] => {
            shared.admin_asks.reload = true;
            backend::command_complete(out, "RELOAD");
        }
        ["SHUTDOWN"] => {
            shared.admin_asks.shutdown = true;
            backend::command_complete(out, "SHUTDOWN");
        }
        ["SHOW", "CLIENTS" | "SERVERS"] | ["PAUSE"] | ["RESUME"] | ["RECOVER", "NODE", _] | ["CHECK", "CONSISTENCY", ..] => {
            backend::error_response(out, "ERROR", "0A000", &format!("{} is not available in this version of pgmulti yet", words.join(" ")), None, None)
        }
        _ => backend::error_response(
            out,
            "ERROR",
            "42601",
            &format!("unknown admin command \"{}\"", sql.trim()),
            None,
            Some("SHOW NODES | POOLS | STATS | CONFIG | VERSION, DETACH NODE n, ATTACH NODE n, RELOAD, SHUTDOWN"),
        ),
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
            vec![
                n.id.to_string(),
                n.host.clone(),
                n.addr.port().to_string(),
                n.status.as_str().to_string(),
                if lead == Some(n.id) {
                    "lead"
                } else if n.status == NodeStatus::Up {
                    "replica"
                } else {
                    "-"
                }
                .to_string(),
                n.weight.to_string(),
                n.reads.to_string(),
                n.writes.to_string(),
                format!("{:.3}", n.latency_ms),
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
        ],
        &rows,
        "SHOW",
    );
}

fn show_pools(shared: &Shared, out: &mut Vec<u8>) {
    let rows: Vec<Vec<String>> = shared
        .pool
        .idle_counts()
        .into_iter()
        .map(|(k, idle)| vec![k.node.to_string(), k.database, k.user, idle.to_string()])
        .collect();
    table(out, &["node_id", "database", "user", "idle"], &rows, "SHOW");
}

fn show_stats(shared: &Shared, out: &mut Vec<u8>) {
    let s = &shared.stats;
    let mut rows = vec![
        vec!["sessions_accepted".into(), s.sessions_accepted.to_string()],
        vec!["sessions_closed".into(), s.sessions_closed.to_string()],
        vec!["state_transitions".into(), s.transitions.to_string()],
        vec!["protocol_errors".into(), s.protocol_errors.to_string()],
        vec!["pool_reused".into(), shared.pool.reused.to_string()],
    ];
    for n in &shared.cluster.nodes {
        rows.push(vec![format!("node{}_reads", n.id), n.reads.to_string()]);
        rows.push(vec![format!("node{}_writes", n.id), n.writes.to_string()]);
        rows.push(vec![
            format!("node{}_latency_ms", n.id),
            format!("{:.3}", n.latency_ms),
        ]);
    }
    table(out, &["name", "value"], &rows, "SHOW");
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
fn table(out: &mut Vec<u8>, columns: &[&str], rows: &[Vec<String>], command: &str) {
    backend::row_description(out, columns);
    for r in rows {
        let values: Vec<Option<&str>> = r.iter().map(|v| Some(v.as_str())).collect();
        backend::data_row(out, &values);
    }
    backend::command_complete(out, &format!("{command} {}", rows.len()));
}
