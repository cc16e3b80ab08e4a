//! Health checks: a node stopped with `pg_ctl stop -m immediate` is detached within
//! `health_check_period + health_check_timeout`, `failover_command` runs with the right
//! placeholders, clients go on with the other nodes, and a restarted pgmulti keeps the node
//! detached (status file).

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_dead_node_is_detached_by_the_health_check_and_failover_command_runs() {
    let nodes = [
        Node::start(NodeOptions::default()),
        Node::start(NodeOptions::default()),
        Node::start(NodeOptions::default()),
    ];
    let dir = temp_dir("health");
    let record = dir.join("failover.txt");
    let status = dir.join("status");
    let conf = PgmultiConf::relay(&nodes[0])
        .mode("replication")
        .backend(nodes[1].host(), nodes[1].port())
        .backend(nodes[2].host(), nodes[2].port())
        .line("admin_users = 'postgres'")
        .line("health_check_period = 1")
        .line("health_check_timeout = 2")
        .line(&format!("status_file = '{}'", status.display()))
        .line(&format!(
            "failover_command = 'echo %d %h %p %m %r %M >> {}'",
            record.display()
        ));
    let pm = Pgmulti::start(&conf);
    assert!(pm
        .psql("postgres", "postgres", None, "CREATE TABLE h (v int)")
        .success());
    nodes[1].stop_immediate();
    let stopped = Instant::now();
    // Nobody touches the node: only the health check can notice.
    let deadline = Duration::from_secs(1 + 2 + 2);
    loop {
        let out = pm.psql("postgres", "pgmulti", None, "SHOW NODES");
        if out
            .stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("|down|"))
        {
            break;
        }
        assert!(
            stopped.elapsed() < deadline,
            "node 1 not detached after {:?}:\n{}",
            stopped.elapsed(),
            pm.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let expected = format!("1 127.0.0.1 {} 0 {} 0", nodes[1].port(), nodes[0].port());
    let mut ran = String::new();
    for _ in 0..20 {
        ran = std::fs::read_to_string(&record).unwrap_or_default();
        if !ran.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ran.trim(), expected, "failover_command arguments");
    // Clients go on with the survivors.
    assert!(pm
        .psql("postgres", "postgres", None, "INSERT INTO h VALUES (1)")
        .success());
    assert_eq!(
        nodes[2].psql("postgres", "postgres", "SELECT count(*) FROM h"),
        "1"
    );

    // A restart keeps node 1 detached.
    drop(pm);
    let pm = Pgmulti::start(&conf);
    let out = pm.psql("postgres", "pgmulti", None, "SHOW NODES");
    assert!(
        out.stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("|down|")),
        "{}",
        out.stdout
    );
}
