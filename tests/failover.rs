//! Nodes that die under a write load in `mode = replication`: the dead node is detached,
//! clients go on, the survivors stay identical and hold every acknowledged transaction.
//! Each test has three nodes of its own, since it kills one.

mod common;

use std::thread;
use std::time::Duration;

use common::*;

fn three_nodes() -> [Node; 3] {
    [
        Node::start(NodeOptions::default()),
        Node::start(NodeOptions::default()),
        Node::start(NodeOptions::default()),
    ]
}

fn conf(nodes: &[Node; 3]) -> PgmultiConf {
    PgmultiConf::relay(&nodes[0])
        .mode("replication")
        .backend(nodes[1].host(), nodes[1].port())
        .backend(nodes[2].host(), nodes[2].port())
}

fn table_sums(node: &Node) -> String {
    node.psql(
        "postgres",
        "postgres",
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || \
                (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || \
                (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || \
                (SELECT count(*) || '/' || sum(delta) FROM pgbench_history)",
    )
}

/// pgbench TPC-B for 12 s through pgmulti; `kill` runs 4 s in. Returns pgbench's summary.
fn load_and_kill(pm: &Pgmulti, victim: &Node) -> PgbenchSummary {
    let port = pm.port().to_string();
    let (ok, out, err) = pgbench(
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-i",
            "-s",
            "1",
            "postgres",
        ],
        &[],
    );
    assert!(ok, "pgbench -i:\n{out}\n{err}");
    let (_, out, err) = thread::scope(|scope| {
        scope.spawn(|| {
            thread::sleep(Duration::from_secs(4));
            victim.stop_immediate();
        });
        pgbench(
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-c",
                "4",
                "-j",
                "2",
                "-T",
                "12",
                "--max-tries",
                "10",
                "--failures-detailed",
                "postgres",
            ],
            &[],
        )
    });
    let summary =
        parse_pgbench_summary(&out).unwrap_or_else(|| panic!("no pgbench summary:\n{out}\n{err}"));
    assert!(
        !err.contains("aborted"),
        "a pgbench client was cut off:\n{err}"
    );
    summary
}

#[test]
fn a_replica_dies_under_load() {
    let nodes = three_nodes();
    let pm = Pgmulti::start(&conf(&nodes));
    let summary = load_and_kill(&pm, &nodes[2]);
    assert_eq!(summary.failed, 0, "clients saw errors when a replica died");
    assert!(summary.processed > 0);
    assert!(
        pm.wait_log(Duration::from_secs(5), |l| l.contains("node 2")
            && l.contains("detached")),
        "{}",
        pm.log()
    );
    let (a, b) = (table_sums(&nodes[0]), table_sums(&nodes[1]));
    assert_eq!(a, b, "survivors differ");
    let history: u64 = a
        .split(' ')
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        history, summary.processed,
        "acknowledged transactions missing on the survivors"
    );
}

#[test]
fn the_lead_dies_under_load() {
    let nodes = three_nodes();
    let pm = Pgmulti::start(&conf(&nodes));
    let summary = load_and_kill(&pm, &nodes[0]);
    assert!(summary.processed > 0);
    assert!(
        pm.wait_log(Duration::from_secs(5), |l| l.contains("node 0")
            && l.contains("detached")),
        "{}",
        pm.log()
    );
    let (a, b) = (table_sums(&nodes[1]), table_sums(&nodes[2]));
    assert_eq!(a, b, "survivors differ");
    let history: u64 = a
        .split(' ')
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        history, summary.processed,
        "acknowledged transactions missing on the survivors"
    );
    // New sessions work on the survivors.
    let out = pm.psql(
        "postgres",
        "postgres",
        None,
        "SELECT count(*) > 0 FROM pgbench_accounts",
    );
    assert_eq!(out.stdout.trim(), "t", "{}", out.stderr);
}
