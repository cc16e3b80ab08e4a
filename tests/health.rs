//! Health checks and failover: under a pgbench write load, a node stopped with
//! `pg_ctl stop -m immediate` is detached within `health_check_period +
//! health_check_timeout`, `failover_command` runs with the right placeholders, pgbench sees
//! no failed transaction, the survivors are identical, and a restarted pgmulti keeps the
//! node detached (status file).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Row count and order-independent checksum of `table` on `node`.
fn fingerprint(node: &Node, table: &str) -> String {
    node.psql(
        "postgres",
        "postgres",
        &format!("SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint::numeric), 0) FROM {table} t"),
    )
}

#[test]
fn a_dead_node_is_detached_under_write_load_and_failover_command_runs() {
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
    let conn = pm.conn_str("postgres", "postgres");
    let (ok, _, err) = pgbench(&["-i", "-s", "1", &conn], &[]);
    assert!(ok, "pgbench -i: {err}");

    let (summary, detached_after) = std::thread::scope(|s| {
        // Transactions cut by the failure fail with 40001 (retryable): pgbench retries them.
        let load = s.spawn(|| {
            pgbench(
                &[
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-T",
                    "10",
                    "--max-tries",
                    "10",
                    "-n",
                    &conn,
                ],
                &[],
            )
        });
        std::thread::sleep(Duration::from_secs(3));
        nodes[1].stop_immediate();
        let stopped = Instant::now();
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
            std::thread::sleep(Duration::from_millis(100));
        }
        let detached_after = stopped.elapsed();
        let (ok, stdout, stderr) = load.join().unwrap();
        assert!(ok, "pgbench: {stdout}\n{stderr}");
        (parse_pgbench_summary(&stdout).unwrap(), detached_after)
    });
    eprintln!("node 1 detached {detached_after:?} after it stopped; pgbench {summary:?}");
    assert_eq!(summary.failed, 0, "pgbench clients saw errors");

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

    // The survivors are identical and hold every acknowledged transaction.
    for table in [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ] {
        assert_eq!(
            fingerprint(&nodes[0], table),
            fingerprint(&nodes[2], table),
            "{table}"
        );
    }
    let history = fingerprint(&nodes[2], "pgbench_history");
    assert!(
        history.starts_with(&format!("{}|", summary.processed)),
        "{history} vs {summary:?}"
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
    assert!(pm
        .psql(
            "postgres",
            "postgres",
            None,
            "SELECT count(*) FROM pgbench_branches"
        )
        .success());
}

#[test]
fn a_failed_health_check_is_retried_before_the_node_is_detached() {
    let nodes = [
        Node::start(NodeOptions::default()),
        Node::start(NodeOptions::default()),
    ];
    let conf = PgmultiConf::relay(&nodes[0])
        .mode("replication")
        .backend(nodes[1].host(), nodes[1].port())
        .line("admin_users = 'postgres'")
        .line("health_check_period = 1")
        .line("health_check_timeout = 1")
        .line("health_check_max_retries = 2")
        .line("health_check_retry_delay = 1");
    let pm = Pgmulti::start(&conf);
    nodes[1].stop_immediate();
    assert!(
        pm.wait_log(Duration::from_secs(20), |l| l.contains("node 1")
            && l.contains("detached: health check failed")),
        "node 1 not detached:\n{}",
        pm.log()
    );
    let log = pm.log();
    let retry1 = log.find("health check of node 1 failed (retry 1 of 2");
    let retry2 = log.find("health check of node 1 failed (retry 2 of 2");
    let detached = log.find("detached: health check failed");
    assert!(
        retry1.is_some() && retry1 < retry2 && retry2 < detached,
        "two retries, then the detach:\n{log}"
    );
    assert!(pm.psql("postgres", "postgres", None, "SELECT 1").success());
}
