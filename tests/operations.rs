//! Operating a cluster through the admin console, on 3 real nodes: PAUSE and RESUME around
//! running transactions, SHOW CLIENTS / SERVERS / STATS, a node added by RELOAD and brought
//! in with ATTACH NODE while sessions stay open (their prepared statements follow),
//! CHECK CONSISTENCY finding a row changed behind pgmulti's back, `/metrics`, and online
//! recovery (RECOVER NODE) of a wiped node under a pgbench write load.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn three_nodes() -> [Node; 3] {
    [
        Node::start(NodeOptions::default()),
        Node::start(NodeOptions::default()),
        Node::start(NodeOptions::default()),
    ]
}

/// Replication over `nodes` with data directories (for the recovery commands), the admin
/// console for postgres, and the repository's recovery scripts.
fn cluster_conf(nodes: &[&Node]) -> PgmultiConf {
    let mut conf = PgmultiConf::relay(nodes[0])
        .mode("replication")
        .line("admin_users = 'postgres'")
        .line("recovery_timeout = 60");
    for n in &nodes[1..] {
        conf = conf.backend(n.host(), n.port());
    }
    for (i, n) in nodes.iter().enumerate() {
        conf = conf.line(&format!(
            "backend_data_directory{i} = '{}'",
            n.data_dir().display()
        ));
    }
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    conf.line(&format!(
        "recovery_1st_stage_command = '{}/recovery_1st_stage.sh %d %h %p %D %m %H %r %R'",
        scripts.display()
    ))
    .line(&format!(
        "recovery_2nd_stage_command = '{}/recovery_2nd_stage.sh %d %h %p %D %m %H %r %R'",
        scripts.display()
    ))
}

fn admin(pm: &Pgmulti, sql: &str) -> CmdOutput {
    pm.psql("postgres", "pgmulti", None, sql)
}

fn admin_ok(pm: &Pgmulti, sql: &str) -> String {
    let out = admin(pm, sql);
    assert!(out.success(), "{sql}: {}\n{}", out.stderr, pm.log());
    out.stdout
}

/// The SHOW NODES row of node `id`, split at `|`.
fn node_row(pm: &Pgmulti, id: usize) -> Vec<String> {
    admin_ok(pm, "SHOW NODES")
        .lines()
        .nth(id)
        .unwrap_or_default()
        .split('|')
        .map(str::to_string)
        .collect()
}

/// Row count and an order-independent checksum of `table` on `node`, over TCP.
fn fingerprint(node: &Node, db: &str, table: &str) -> String {
    let out = psql(
        &[
            &node.conn_str("postgres", db),
            "-c",
            &format!(
                "SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint::numeric), 0) FROM {table} t"
            ),
        ],
        &[],
    );
    assert!(
        out.success(),
        "{table} on port {}: {}",
        node.port(),
        out.stderr
    );
    out.stdout.trim().to_string()
}

#[test]
fn pause_resume_clients_servers_stats_and_refusals() {
    let nodes = three_nodes();
    let pm = Pgmulti::start(&cluster_conf(&[&nodes[0], &nodes[1], &nodes[2]]));
    let conn = pm.conn_str("postgres", "postgres");
    let mut client = connect(&conn);
    client
        .batch_execute("CREATE TABLE p (v int); BEGIN; INSERT INTO p VALUES (1)")
        .unwrap();

    std::thread::scope(|s| {
        // PAUSE waits for the open transaction.
        let pause = s.spawn(|| admin(&pm, "PAUSE"));
        std::thread::sleep(Duration::from_millis(800));
        assert!(
            !pause.is_finished(),
            "PAUSE returned while a transaction ran"
        );
        let clients = admin_ok(&pm, "SHOW CLIENTS");
        assert!(clients.contains("|in transaction|"), "{clients}");
        client.batch_execute("COMMIT").unwrap();
        let out = pause.join().unwrap();
        assert!(out.success(), "PAUSE: {}", out.stderr);

        // A new transaction waits until RESUME.
        let waiting = s.spawn(|| pm.psql("postgres", "postgres", None, "INSERT INTO p VALUES (2)"));
        std::thread::sleep(Duration::from_millis(800));
        assert!(!waiting.is_finished(), "a transaction started while paused");
        let clients = admin_ok(&pm, "SHOW CLIENTS");
        assert!(clients.contains("|waiting (paused)|"), "{clients}");
        let again = admin(&pm, "PAUSE");
        assert!(
            !again.success() && again.stderr.contains("already paused"),
            "{}",
            again.stderr
        );
        admin_ok(&pm, "RESUME");
        let out = waiting.join().unwrap();
        assert!(out.success(), "the waiting INSERT: {}", out.stderr);
    });
    let out = admin(&pm, "RESUME");
    assert!(
        !out.success() && out.stderr.contains("not paused"),
        "{}",
        out.stderr
    );
    for n in &nodes {
        assert_eq!(
            n.psql("postgres", "postgres", "SELECT count(*) FROM p"),
            "2"
        );
    }

    // SHOW SERVERS: the open session's three node connections.
    let servers = admin_ok(&pm, "SHOW SERVERS");
    for id in 0..3 {
        assert!(
            servers
                .lines()
                .any(|l| l.starts_with(&format!("{id}|")) && l.contains("|postgres|postgres|")),
            "node {id} missing from:\n{servers}"
        );
    }
    // SHOW STATS: a row per node and a total; writes went to every node.
    let stats = admin_ok(&pm, "SHOW STATS");
    let total: Vec<&str> = stats
        .lines()
        .find(|l| l.starts_with("total|"))
        .unwrap_or_else(|| panic!("{stats}"))
        .split('|')
        .collect();
    assert!(total[1].parse::<u64>().unwrap() >= 6, "queries: {stats}");
    assert!(total[3].parse::<u64>().unwrap() >= 6, "writes: {stats}");
    for id in 0..3 {
        assert!(
            stats.lines().any(|l| l.starts_with(&format!("{id}|"))),
            "{stats}"
        );
    }

    // Refusals and bad arguments.
    for (sql, says) in [
        ("ATTACH NODE 1", "not down"),
        ("RECOVER NODE 1", "not down"),
        ("RECOVER NODE 7", "there is no node"),
        ("DETACH NODE x", "there is no node"),
        ("CHECK CONSISTENCY a b", "takes one database name"),
        ("SHOW EVERYTHING", "unknown admin command"),
    ] {
        let out = admin(&pm, sql);
        assert!(
            !out.success() && out.stderr.contains(says),
            "{sql}: {}",
            out.stderr
        );
    }
    for sql in [
        "SHOW NODES",
        "PAUSE",
        "RESUME",
        "RECOVER NODE 1",
        "SHUTDOWN",
    ] {
        let out = pm.psql("alice", "pgmulti", None, sql);
        assert!(
            !out.success() && out.stderr.contains("not in admin_users"),
            "{sql} as alice: {}",
            out.stderr
        );
    }
    assert!(
        pm.psql("postgres", "postgres", None, "SELECT 1").success(),
        "still serving"
    );
}

#[test]
fn reload_adds_a_node_and_attach_brings_it_into_open_sessions() {
    let nodes = three_nodes();
    let two = cluster_conf(&[&nodes[0], &nodes[1]]);
    let pm = Pgmulti::start(&two);
    assert!(pm
        .psql(
            "postgres",
            "postgres",
            None,
            "CREATE TABLE j (id int PRIMARY KEY, v text)"
        )
        .success());
    nodes[2].psql(
        "postgres",
        "postgres",
        "CREATE TABLE j (id int PRIMARY KEY, v text)",
    );

    // An open session with a prepared statement and a session setting.
    let mut client = connect(&pm.conn_str("postgres", "postgres"));
    client
        .batch_execute("SET application_name = 'joiner'")
        .unwrap();
    let insert = client.prepare("INSERT INTO j VALUES ($1, $2)").unwrap();
    client.execute(&insert, &[&1i32, &"before"]).unwrap();

    // The third node arrives with a reload: detached.
    pm.rewrite_conf(&cluster_conf(&[&nodes[0], &nodes[1], &nodes[2]]));
    admin_ok(&pm, "RELOAD");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_row(&pm, 2).get(3).map(String::as_str) != Some("down") {
        assert!(Instant::now() < deadline, "node 2 not added:\n{}", pm.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes[2].psql("postgres", "postgres", "INSERT INTO j VALUES (1, 'before')");
    admin_ok(&pm, "ATTACH NODE 2");
    assert_eq!(node_row(&pm, 2)[3], "up");

    // The open session's next transaction runs on node 2 as well, prepared statement and all.
    client.execute(&insert, &[&2i32, &"after"]).unwrap();
    let name: String = client
        .query_one("SHOW application_name", &[])
        .unwrap()
        .get(0);
    assert_eq!(name, "joiner");
    for n in &nodes {
        assert_eq!(
            n.psql(
                "postgres",
                "postgres",
                "SELECT string_agg(v, ',' ORDER BY id) FROM j"
            ),
            "before,after",
            "node on port {}",
            n.port()
        );
    }
    assert!(pm.log().contains("node 2 joined"), "{}", pm.log());
}

#[test]
fn check_consistency_names_the_changed_table_and_node() {
    let nodes = three_nodes();
    let pm = Pgmulti::start(&cluster_conf(&[&nodes[0], &nodes[1], &nodes[2]]));
    for sql in [
        "CREATE TABLE c1 (id serial PRIMARY KEY, v text)",
        "CREATE TABLE c2 (v int)",
        "INSERT INTO c1 (v) SELECT 'row ' || g FROM generate_series(1, 500) g",
        "INSERT INTO c2 SELECT g FROM generate_series(1, 100) g",
    ] {
        let out = pm.psql("postgres", "postgres", None, sql);
        assert!(out.success(), "{sql}: {}", out.stderr);
    }
    let report = admin_ok(&pm, "CHECK CONSISTENCY postgres");
    let verdict = report.lines().last().unwrap_or_default();
    assert!(verdict.contains("|consistent"), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("postgres|public.c1|table|2|500|")),
        "{report}"
    );

    // Under a write load the nodes are read in snapshots taken while no transaction ran, so
    // nothing in flight shows up as a difference.
    let conn = pm.conn_str("postgres", "postgres");
    let (ok, _, err) = pgbench(&["-i", "-s", "1", &conn], &[]);
    assert!(ok, "pgbench -i: {err}");
    std::thread::scope(|s| {
        let load = s.spawn(|| pgbench(&["-c", "4", "-j", "2", "-T", "8", "-n", &conn], &[]));
        std::thread::sleep(Duration::from_secs(2));
        for _ in 0..2 {
            let report = admin_ok(&pm, "CHECK CONSISTENCY postgres");
            let verdict = report.lines().last().unwrap_or_default();
            assert!(
                verdict.contains("|consistent: 3 nodes") && !verdict.contains("transactions ran"),
                "{report}"
            );
        }
        let (ok, out, err) = load.join().unwrap();
        assert!(ok, "{out}{err}");
        assert_eq!(parse_pgbench_summary(&out).unwrap().failed, 0);
    });

    nodes[2].psql(
        "postgres",
        "postgres",
        "UPDATE c1 SET v = 'changed' WHERE id = 7",
    );
    let report = admin_ok(&pm, "CHECK CONSISTENCY");
    let differs: Vec<&str> = report.lines().filter(|l| l.ends_with("|DIFFERS")).collect();
    assert_eq!(differs.len(), 1, "{report}");
    assert!(
        differs[0].starts_with("postgres|public.c1|table|2|500|"),
        "{report}"
    );
    let verdict = report.lines().last().unwrap_or_default();
    assert!(
        verdict.contains("NOT consistent")
            && verdict.contains("public.c1")
            && verdict.contains("node 2"),
        "{report}"
    );
    let out = admin(&pm, "CHECK CONSISTENCY no_such_db");
    assert!(
        out.stdout.contains("error") || !out.success(),
        "a missing database is reported: {}{}",
        out.stdout,
        out.stderr
    );
}

/// GET (or HEAD) `path` from the metrics port: (status line, body).
fn http(port: u16, method: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics_port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

#[test]
fn metrics_parse_as_prometheus_text_and_counts_move() {
    let nodes = three_nodes();
    let port = free_port();
    let pm = Pgmulti::start(
        &cluster_conf(&[&nodes[0], &nodes[1], &nodes[2]]).line(&format!("metrics_port = {port}")),
    );
    let scrape = || {
        let (status, body) = http(port, "GET", "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        prometheus::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
    };
    let before = scrape();
    assert_eq!(
        prometheus::value(&before, "pgmulti_node_up", &[("node", "1")]),
        Some(1.0)
    );
    assert_eq!(
        prometheus::value(&before, "pgmulti_node_lead", &[("node", "0")]),
        Some(1.0)
    );
    for sql in [
        "CREATE TABLE m (v int)",
        "INSERT INTO m VALUES (1)",
        "SELECT * FROM m",
        "SELECT 1/0",
    ] {
        let _ = pm.psql("postgres", "postgres", None, sql);
    }
    let after = scrape();
    let grew = |name: &str| prometheus::sum(&after, name) > prometheus::sum(&before, name);
    for name in [
        "pgmulti_node_queries_total",
        "pgmulti_node_writes_total",
        "pgmulti_node_errors_total",
        "pgmulti_node_received_bytes_total",
        "pgmulti_node_latency_seconds_count",
        "pgmulti_clients_accepted_total",
    ] {
        assert!(grew(name), "{name} did not grow");
    }
    assert_eq!(
        prometheus::value(&after, "pgmulti_node_writes_total", &[("node", "2")]),
        Some(2.0),
        "CREATE and INSERT reached node 2"
    );
    assert!(prometheus::value(&after, "pgmulti_log_lines_dropped_total", &[]).is_some());
    let (status, _) = http(port, "GET", "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, body) = http(port, "HEAD", "/metrics");
    assert!(
        status.ends_with("200 OK") && body.is_empty(),
        "{status} {body:?}"
    );
    let (status, _) = http(port, "POST", "/metrics");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert!(pm.psql("postgres", "postgres", None, "SELECT 1").success());
}

#[test]
fn online_recovery_of_a_wiped_node_under_pgbench_load() {
    let nodes = three_nodes();
    let pm = Pgmulti::start(
        &cluster_conf(&[&nodes[0], &nodes[1], &nodes[2]]).line("health_check_period = 1"),
    );
    let conn = pm.conn_str("postgres", "postgres");
    let (ok, _, err) = pgbench(&["-i", "-s", "2", &conn], &[]);
    assert!(ok, "pgbench -i: {err}");

    let summary = std::thread::scope(|s| {
        let load = s.spawn(|| {
            pgbench(
                &[
                    "-c",
                    "8",
                    "-j",
                    "2",
                    "-T",
                    "60",
                    "--max-tries",
                    "20",
                    "-n",
                    &conn,
                ],
                &[],
            )
        });
        std::thread::sleep(Duration::from_secs(5));
        nodes[2].stop_immediate();
        let data = nodes[2].data_dir();
        for entry in std::fs::read_dir(data).unwrap() {
            let path = entry.unwrap().path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while node_row(&pm, 2)[3] != "down" {
            assert!(
                Instant::now() < deadline,
                "node 2 not detached:\n{}",
                pm.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let recover = s.spawn(|| admin(&pm, "RECOVER NODE 2"));
        let mut seen_recovering = false;
        while !recover.is_finished() {
            seen_recovering |= node_row(&pm, 2)[3] == "recovering";
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = recover.join().unwrap();
        assert!(
            out.success(),
            "RECOVER NODE 2: {}\n{}",
            out.stderr,
            pm.log()
        );
        nodes[2].mark_running();
        assert!(seen_recovering, "SHOW NODES never said recovering");
        assert_eq!(node_row(&pm, 2)[3], "up", "{}", pm.log());
        let (ok, stdout, stderr) = load.join().unwrap();
        assert!(ok, "pgbench: {stdout}\n{stderr}");
        parse_pgbench_summary(&stdout).unwrap_or_else(|| panic!("{stdout}"))
    });
    assert_eq!(summary.failed, 0, "pgbench saw failures");
    assert!(summary.processed > 0);

    let report = admin_ok(&pm, "CHECK CONSISTENCY postgres");
    let verdict = report.lines().last().unwrap_or_default();
    assert!(verdict.contains("|consistent: 3 nodes"), "{report}");
    // Every acknowledged transaction is in the history, on every node, the recovered one too.
    for n in &nodes {
        assert_eq!(
            fingerprint(n, "postgres", "pgbench_history"),
            fingerprint(&nodes[0], "postgres", "pgbench_history")
        );
    }
    let history = fingerprint(&nodes[2], "postgres", "pgbench_history");
    assert!(
        history.starts_with(&format!("{}|", summary.processed)),
        "history {history} vs {} processed",
        summary.processed
    );
    let log = pm.log();
    assert!(log.contains("RECOVER NODE 2: node is up"), "{log}");
    for line in log
        .lines()
        .filter(|l| l.contains("RECOVER NODE") || l.contains("verified"))
    {
        eprintln!("{line}");
    }
    eprintln!("pgbench during the recovery: {summary:?}");
}

#[test]
fn pause_and_resume_in_relay_mode() {
    let node = Node::start(NodeOptions::default());
    let pm = Pgmulti::start(&PgmultiConf::relay(&node).line("admin_users = 'postgres'"));
    let mut client = connect(&pm.conn_str("postgres", "postgres"));
    client
        .batch_execute("CREATE TABLE r (v int); BEGIN; INSERT INTO r VALUES (1)")
        .unwrap();
    std::thread::scope(|s| {
        let pause = s.spawn(|| admin(&pm, "PAUSE"));
        std::thread::sleep(Duration::from_millis(800));
        assert!(
            !pause.is_finished(),
            "PAUSE returned while a transaction ran"
        );
        client.batch_execute("COMMIT").unwrap();
        let out = pause.join().unwrap();
        assert!(out.success(), "PAUSE: {}", out.stderr);
        // The open session's next transaction waits too.
        let waiting = s.spawn(|| client.batch_execute("INSERT INTO r VALUES (2)"));
        std::thread::sleep(Duration::from_millis(800));
        assert!(!waiting.is_finished(), "a transaction started while paused");
        assert_eq!(
            node.psql("postgres", "postgres", "SELECT count(*) FROM r"),
            "1"
        );
        admin_ok(&pm, "RESUME");
        waiting.join().unwrap().unwrap();
    });
    assert_eq!(
        node.psql("postgres", "postgres", "SELECT count(*) FROM r"),
        "2"
    );
}
