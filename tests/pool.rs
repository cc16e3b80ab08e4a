//! Node connections are pooled: a client that leaves quietly hands its node connection back
//! (reset with ROLLBACK and DISCARD ALL) and the next client with the same database, user
//! and startup parameters gets it without a new login; nothing of the first session leaks.

mod common;

use common::*;

/// Run `sql` through pgmulti in a session of its own, then give pgmulti a moment to reset
/// the node connection the session leaves behind.
fn one(pm: &Pgmulti, sql: &str) -> String {
    let out = pm.psql("postgres", "postgres", None, sql);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(out.success(), "{sql}: {}", out.stderr);
    out.stdout.trim().to_string()
}

#[test]
fn a_quiet_connection_is_reused_and_reset() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let first = one(
        &pm,
        "SET search_path = nowhere; CREATE TEMP TABLE leftover (a int); PREPARE p AS SELECT 1; \
         LISTEN somewhere; SELECT pg_backend_pid()",
    );
    let second = one(&pm, "SELECT pg_backend_pid()");
    assert_eq!(first, second, "the node connection was not reused");
    assert_eq!(
        one(&pm, "SHOW search_path"),
        "\"$user\", public",
        "SET leaked into the next client"
    );
    assert_eq!(
        one(&pm, "SELECT count(*) FROM pg_prepared_statements"),
        "0",
        "PREPARE leaked"
    );
    assert_eq!(
        one(&pm, "SELECT count(*) FROM pg_listening_channels()"),
        "0",
        "LISTEN leaked"
    );
    assert_eq!(
        one(
            &pm,
            "SELECT count(*) FROM pg_class WHERE relname = 'leftover' AND relpersistence = 't'"
        ),
        "0",
        "a temp table leaked"
    );
}

#[test]
fn an_open_transaction_is_rolled_back_before_reuse() {
    let node = shared_node();
    node.fresh_db("pool_tx", "postgres");
    let pm = Pgmulti::start(&PgmultiConf::relay(node));
    let out = pm.psql("postgres", "pool_tx", None, "CREATE TABLE t (v int)");
    assert!(out.success(), "{}", out.stderr);
    // psql -c with BEGIN and no COMMIT: the client leaves inside the transaction.
    let out = pm.psql(
        "postgres",
        "pool_tx",
        None,
        "BEGIN; INSERT INTO t VALUES (1); SELECT pg_backend_pid()",
    );
    assert!(out.success(), "{}", out.stderr);
    let out2 = pm.psql(
        "postgres",
        "pool_tx",
        None,
        "SELECT count(*) || ' ' || pg_backend_pid() FROM t",
    );
    assert!(out2.success(), "{}", out2.stderr);
    assert_eq!(
        out2.stdout.trim(),
        format!("0 {}", out.stdout.trim()),
        "the insert leaked or the connection was not reused"
    );
}

#[test]
fn startup_parameters_follow_the_client_on_a_shared_connection() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let query = "SELECT pg_backend_pid() || ' ' || current_setting('application_name') || ' ' || current_setting('DateStyle') || ' ' || current_setting('search_path')";
    let run = |extra: &str, env: &[(&str, &str)]| {
        let conn = format!("{} {extra}", pm.conn_str("postgres", "postgres"));
        let out = psql(&[&conn, "-c", query], env);
        assert!(out.success(), "{}", out.stderr);
        std::thread::sleep(std::time::Duration::from_millis(200));
        out.stdout.trim().to_string()
    };
    let first = run("application_name=other", &[("PGDATESTYLE", "German, DMY")]);
    let pid = first.split(' ').next().unwrap().to_string();
    assert_eq!(first, format!("{pid} other German, DMY \"$user\", public"));
    let second = run("", &[]);
    assert_eq!(
        second,
        format!("{pid} psql ISO, MDY \"$user\", public"),
        "not reused, or parameters leaked"
    );
    // Command-line options cannot be SET afterwards: such a client gets its own connection.
    let third = run("options='-c search_path=elsewhere'", &[]);
    assert!(third.ends_with(" psql ISO, MDY elsewhere"), "{third}");
    assert!(
        !third.starts_with(&format!("{pid} ")),
        "a shared connection was used for options: {third}"
    );
}

#[test]
fn max_pool_size_zero_disables_pooling() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()).line("max_pool_size = 0"));
    let first = one(&pm, "SELECT pg_backend_pid()");
    let second = one(&pm, "SELECT pg_backend_pid()");
    assert_ne!(first, second);
}

/// The node-side pids of pgmulti's connections (TCP) to `db`.
fn pgmulti_backends(db: &str) -> Vec<String> {
    let list = shared_node().psql(
        "postgres",
        "postgres",
        &format!(
            "SELECT string_agg(pid::text, ' ' ORDER BY pid) FROM pg_stat_activity \
             WHERE datname = '{db}' AND client_addr IS NOT NULL"
        ),
    );
    list.split_whitespace().map(str::to_string).collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn preconnected_connections_are_ready_before_the_first_client() {
    let node = shared_node();
    node.fresh_db("pool_pre", "postgres");
    let pm = Pgmulti::start(
        &PgmultiConf::relay(node)
            .line("preconnect = 'pool_pre:postgres'")
            .line("min_pool_size = 2"),
    );
    wait_for("2 preconnected connections", || {
        pgmulti_backends("pool_pre").len() == 2
    });
    let ready = pgmulti_backends("pool_pre");
    let out = pm.psql("postgres", "pool_pre", None, "SELECT pg_backend_pid()");
    assert!(out.success(), "{}", out.stderr);
    assert!(
        ready.contains(&out.stdout.trim().to_string()),
        "the client did not get a preconnected connection: {} not in {ready:?}",
        out.stdout
    );
    // Taking one leaves fewer than min_pool_size idle: another is opened.
    wait_for("the pool to be topped up", || {
        pgmulti_backends("pool_pre").len() == 3
    });
}

/// `pool_mode = transaction`: idle clients hold no node connection, every client can still
/// run transactions, and what a transaction writes is committed.
#[test]
fn transaction_pooling_shares_few_node_connections_among_many_clients() {
    let node = Node::start(NodeOptions::default());
    let pm = Pgmulti::start(
        &PgmultiConf::relay(&node)
            .line("pool_mode = transaction")
            .line("max_pool_size = 2"),
    );
    node.psql(
        "postgres",
        "postgres",
        "CREATE TABLE tp (client int, v int)",
    );
    let backends = || {
        node.psql(
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND application_name = 'tp' AND pid <> pg_backend_pid()",
        )
        .parse::<usize>()
        .unwrap()
    };
    let conn = format!(
        "{} application_name=tp",
        pm.conn_str("postgres", "postgres")
    );
    let mut clients: Vec<postgres::Client> = (0..20).map(|_| connect(&conn)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let i = i as i32;
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO tp VALUES ({i}, 1); INSERT INTO tp VALUES ({i}, 2); COMMIT"
        ))
        .unwrap();
        let n: i64 = c
            .query_one("SELECT count(*) FROM tp WHERE client = $1", &[&i])
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let held = backends();
    assert!(
        held <= 2,
        "20 idle clients hold {held} node connections (max_pool_size = 2)"
    );
    assert_eq!(
        node.psql("postgres", "postgres", "SELECT count(*) FROM tp"),
        "40"
    );
    // A transaction keeps its connection until it ends, even while others run.
    clients[0]
        .batch_execute("BEGIN; INSERT INTO tp VALUES (100, 1)")
        .unwrap();
    clients[1]
        .batch_execute("INSERT INTO tp VALUES (101, 1)")
        .unwrap();
    clients[0]
        .batch_execute("INSERT INTO tp VALUES (100, 2); COMMIT")
        .unwrap();
    assert_eq!(
        node.psql(
            "postgres",
            "postgres",
            "SELECT count(*) FROM tp WHERE client = 100"
        ),
        "2"
    );
    // A Query larger than a buffer streams through and still keeps its connection until
    // its answer has come.
    let big = "x".repeat(200_000);
    for c in clients.iter_mut().take(3) {
        let rows = c.simple_query(&format!("SELECT length('{big}')")).unwrap();
        let n = rows.iter().find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(n.as_deref(), Some("200000"));
    }
    let (ok, _, err) = pgbench(
        &["-i", "-s", "1", &node.conn_str("postgres", "postgres")],
        &[],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = pgbench(
        &[
            "-S",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            "3",
            "-n",
            &pm.conn_str("postgres", "postgres"),
        ],
        &[],
    );
    assert!(
        ok && parse_pgbench_summary(&out).is_some_and(|s| s.failed == 0),
        "{out}{err}"
    );
}

/// `pool_mode = transaction`: a key never has more than `max_pool_size` node connections.
/// Clients beyond that wait in line (SHOW POOLS counts them) and go on, in order, as
/// transactions end; a waiting client that hangs up leaves the line without stalling it.
#[test]
fn transaction_pooling_queues_clients_beyond_max_pool_size() {
    let node = Node::start(NodeOptions::default());
    let pm = Pgmulti::start(
        &PgmultiConf::relay(&node)
            .line("pool_mode = transaction")
            .line("max_pool_size = 2")
            .line("admin_users = 'postgres'")
            .line("connect_timeout = 1s"),
    );
    node.psql(
        "postgres",
        "postgres",
        "CREATE TABLE q (id serial, who text)",
    );
    let conn = pm.conn_str("postgres", "postgres");
    let pools = || {
        let out = pm.psql("postgres", "pgmulti", None, "SHOW POOLS");
        assert!(out.success(), "{}", out.stderr);
        out.stdout
            .lines()
            .find(|l| l.starts_with("0|postgres|postgres|"))
            .map(|l| l.split('|').skip(3).map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    // Four clients log in; idle, they hold no connection.
    let mut clients: Vec<postgres::Client> = (0..4).map(|_| connect(&conn)).collect();
    let mut waiters = clients.split_off(2);
    let mut holders = clients;
    // Two open transactions: both connections are lent.
    for (i, c) in holders.iter_mut().enumerate() {
        c.batch_execute(&format!("BEGIN; INSERT INTO q (who) VALUES ('holder {i}')"))
            .unwrap();
    }
    // The other two want one: they wait (in threads, their statements block).
    let wait = |mut c: postgres::Client, name: &'static str| {
        std::thread::spawn(move || {
            c.batch_execute(&format!("INSERT INTO q (who) VALUES ('{name}')"))
                .map(|_| c)
        })
    };
    let second = waiters.pop().unwrap();
    let first = wait(waiters.pop().unwrap(), "first");
    wait_for("a client waiting", || pools() == ["0", "2", "1"]);
    let second = wait(second, "second");
    wait_for("two clients waiting", || pools() == ["0", "2", "2"]);
    let clients = pm.psql("postgres", "pgmulti", None, "SHOW CLIENTS");
    assert_eq!(
        clients.stdout.matches("|waiting (pool)|").count(),
        2,
        "{}",
        clients.stdout
    );
    let inserted = || {
        node.psql(
            "postgres",
            "postgres",
            "SELECT coalesce(string_agg(who, ',' ORDER BY id), '') FROM q",
        )
    };
    assert_eq!(inserted(), "", "a waiting client ran its statement");
    // A third client, logging in, waits too (a login needs a node connection), then gives
    // up (closes its socket): the line goes on without it.
    let mut quitter = std::net::TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    {
        use std::io::Write;
        // StartupMessage for user postgres, database postgres (trust on the test node).
        let mut body = Vec::new();
        body.extend_from_slice(&196608u32.to_be_bytes());
        for s in ["user", "postgres", "database", "postgres", ""] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        quitter.write_all(&msg).unwrap();
    }
    wait_for("three clients waiting", || pools() == ["0", "2", "3"]);
    drop(quitter);
    wait_for("the quitter to leave the line", || {
        pools() == ["0", "2", "2"]
    });
    // A transaction that ends lets the waiting clients in, first come first served: the
    // first hands the connection on to the second.
    holders[0].batch_execute("COMMIT").unwrap();
    let mut first = first.join().unwrap().expect("first waiter");
    let _second = second.join().unwrap().expect("second waiter");
    assert_eq!(inserted(), "holder 0,first,second");
    holders[1].batch_execute("COMMIT").unwrap();
    assert_eq!(inserted(), "holder 0,holder 1,first,second");
    // Idle longer than connect_timeout after taking a connection: still logged in.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for c in holders.iter_mut().chain([&mut first]) {
        c.batch_execute("SELECT 1").unwrap();
    }
    wait_for("nobody waiting", || pools() == ["2", "0", "0"]);
    // Under load the node never sees more than max_pool_size connections from pgmulti.
    let (ok, out, err) = pgbench(
        &["-i", "-s", "1", &node.conn_str("postgres", "postgres")],
        &[],
    );
    assert!(ok, "{err}");
    let (ok, out2, err2) = pgbench(&["-S", "-c", "16", "-j", "2", "-T", "3", "-n", &conn], &[]);
    assert!(
        ok && parse_pgbench_summary(&out2).is_some_and(|s| s.failed == 0),
        "{out}{out2}{err2}"
    );
    let backends = node.psql(
        "postgres",
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
         AND client_addr IS NOT NULL",
    );
    assert_eq!(
        backends, "2",
        "pgmulti's node connections after pgbench -c 16"
    );
}
