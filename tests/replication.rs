//! `mode = replication` over three real PostgreSQL nodes: writes reach every node in the same
//! order, reads go to one, non-deterministic values are made identical (or refused), and a
//! node that disagrees is detached. Each test works in its own database on all three nodes
//! and starts its own pgmulti.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;

/// Three nodes shared by the tests of this binary.
fn nodes() -> &'static [Node; 3] {
    static NODES: OnceLock<[Node; 3]> = OnceLock::new();
    NODES.get_or_init(|| {
        [
            Node::start(NodeOptions::default()),
            Node::start(NodeOptions::default()),
            Node::start(NodeOptions::default()),
        ]
    })
}

/// A database of this name, fresh on every node.
fn fresh_db(name: &str) {
    for n in nodes() {
        n.fresh_db(name, "postgres");
    }
}

fn replication_conf() -> PgmultiConf {
    let [n0, n1, n2] = nodes();
    PgmultiConf::relay(n0)
        .mode("replication")
        .backend(n1.host(), n1.port())
        .backend(n2.host(), n2.port())
}

/// Run SQL through pgmulti; panic with stderr on failure; -At output.
fn sql(pm: &Pgmulti, db: &str, sql: &str) -> String {
    let out = pm.psql("postgres", db, None, sql);
    assert!(out.success(), "{sql}: {}", out.stderr);
    out.stdout.trim().to_string()
}

/// One checksum per user table: row count and md5 of all rows in a stable order.
fn checksums(node: &Node, db: &str) -> Vec<String> {
    let tables = node.psql(
        "postgres",
        db,
        "SELECT string_agg(quote_ident(relname), ' ' ORDER BY relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE relkind = 'r' AND nspname = 'public'",
    );
    tables
        .split_whitespace()
        .map(|t| {
            let sum = node.psql(
                "postgres",
                db,
                &format!("SELECT count(*) || ' ' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '-') FROM {t} x"),
            );
            format!("{t}: {sum}")
        })
        .collect()
}

fn assert_identical(db: &str, on: &[usize]) {
    let all = nodes();
    let first = checksums(&all[on[0]], db);
    assert!(!first.is_empty(), "no tables in {db}");
    for &i in &on[1..] {
        assert_eq!(
            checksums(&all[i], db),
            first,
            "node {i} differs from node {} in {db}",
            on[0]
        );
    }
}

#[test]
fn pgbench_tpcb_keeps_every_table_identical() {
    fresh_db("tpcb");
    let pm = Pgmulti::start(&replication_conf());
    let conn = ["-h", "127.0.0.1", "-p"];
    let port = pm.port().to_string();
    let (ok, out, err) = pgbench(
        &[
            conn[0], conn[1], conn[2], &port, "-U", "postgres", "-i", "-s", "2", "tpcb",
        ],
        &[],
    );
    assert!(ok, "pgbench -i through pgmulti failed:\n{out}\n{err}");
    let (ok, out, err) = pgbench(
        &[
            conn[0], conn[1], conn[2], &port, "-U", "postgres", "-c", "8", "-j", "2", "-T", "10",
            "-M", "simple", "tpcb",
        ],
        &[],
    );
    assert!(ok, "pgbench failed:\n{out}\n{err}");
    let summary = parse_pgbench_summary(&out).expect("pgbench summary");
    assert!(summary.processed > 0, "{out}");
    assert_eq!(summary.failed, 0, "{out}");
    assert_identical("tpcb", &[0, 1, 2]);
    let history = nodes()[2].psql("postgres", "tpcb", "SELECT count(*) FROM pgbench_history");
    assert_eq!(
        history,
        summary.processed.to_string(),
        "every acknowledged transaction is on node 2"
    );
}

#[test]
fn nondeterministic_values_are_identical_on_every_node() {
    fresh_db("nondet");
    let pm = Pgmulti::start(&replication_conf());
    sql(
        &pm,
        "nondet",
        "CREATE TABLE serial_t (id serial PRIMARY KEY, client int, at timestamptz, clock timestamptz);
         CREATE TABLE ident_t (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, r float8, u uuid, d date);
         CREATE SEQUENCE explicit_seq;
         CREATE TABLE seq_t (v bigint, client int);
         CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL, touched timestamptz);
         CREATE TABLE defaulted (id bigserial PRIMARY KEY, client int, at timestamptz DEFAULT now(),
                                 u uuid NOT NULL DEFAULT gen_random_uuid(), day date DEFAULT CURRENT_DATE);
         CREATE SEQUENCE hidden_seq;
         CREATE FUNCTION next_hidden() RETURNS bigint LANGUAGE sql AS 'SELECT nextval(''hidden_seq'')';
         CREATE TABLE hidden_t (id bigint DEFAULT next_hidden(), client int);
         INSERT INTO counters SELECT g, 0, now() FROM generate_series(0, 2) g;",
    );
    let script = temp_dir("nondet").join("script.sql");
    std::fs::write(
        &script,
        "INSERT INTO serial_t (client, at, clock) VALUES (:client_id, now(), clock_timestamp());\n\
         INSERT INTO ident_t (r, u, d) VALUES (random(), gen_random_uuid(), CURRENT_DATE);\n\
         INSERT INTO seq_t VALUES (nextval('explicit_seq'), :client_id);\n\
         SELECT nextval('explicit_seq');\n\
         UPDATE counters SET n = n + 1, touched = CURRENT_TIMESTAMP WHERE id = :client_id % 3;\n\
         INSERT INTO defaulted (client) VALUES (:client_id), (:client_id + 100);\n\
         INSERT INTO hidden_t (client) VALUES (:client_id);\n",
    )
    .unwrap();
    let port = pm.port().to_string();
    // The same workload through the simple and the extended protocol (prepared statements
    // get fresh values at each execution).
    for mode in ["simple", "prepared"] {
        let (ok, out, err) = pgbench(
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-n",
                "-M",
                mode,
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                "5",
                "-f",
                script.to_str().unwrap(),
                "nondet",
            ],
            &[],
        );
        assert!(ok, "pgbench -M {mode} failed:\n{out}\n{err}");
        let summary = parse_pgbench_summary(&out).expect("pgbench summary");
        assert_eq!(summary.failed, 0, "-M {mode}: {out}");
        assert!(summary.processed > 0);
    }
    assert_identical("nondet", &[0, 1, 2]);
    // Values really vary between executions (not one frozen literal).
    let n0 = &nodes()[0];
    assert_eq!(
        n0.psql(
            "postgres",
            "nondet",
            "SELECT count(DISTINCT u) = count(*) FROM ident_t"
        ),
        "t"
    );
    assert_eq!(
        n0.psql(
            "postgres",
            "nondet",
            "SELECT count(DISTINCT clock) > 1 FROM serial_t"
        ),
        "t"
    );
    assert_eq!(
        n0.psql(
            "postgres",
            "nondet",
            "SELECT count(DISTINCT u) = count(*) AND count(*) > 0 FROM defaulted"
        ),
        "t"
    );
}

#[test]
fn what_cannot_be_replicated_is_refused_with_a_hint() {
    fresh_db("refuse");
    let pm = Pgmulti::start(&replication_conf());
    sql(&pm, "refuse", "CREATE TABLE t (id int PRIMARY KEY, r float8, at timestamp); INSERT INTO t VALUES (1, 0, NULL)");
    sql(
        &pm,
        "refuse",
        "CREATE TABLE d (id int, at timestamptz DEFAULT clock_timestamp())",
    );
    for statement in [
        "UPDATE t SET r = random()",
        "INSERT INTO t SELECT 2, random(), NULL",
        "UPDATE t SET at = 'now'::timestamp",
        "INSERT INTO d SELECT 1",
        "INSERT INTO d (id, at) VALUES (2, DEFAULT)",
    ] {
        let out = pm.psql("postgres", "refuse", None, statement);
        assert!(!out.success(), "{statement} was not refused");
        assert!(
            out.stderr.contains("cannot be replicated"),
            "{statement}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("HINT"),
            "{statement}: no hint: {}",
            out.stderr
        );
    }
    assert_identical("refuse", &[0, 1, 2]);
    assert_eq!(
        nodes()[1].psql("postgres", "refuse", "SELECT r FROM t"),
        "0"
    );
}

/// The same psql script through pgmulti and directly against one PostgreSQL: same output.
#[test]
fn sql_features_answer_as_postgresql_and_stay_identical() {
    fresh_db("features");
    nodes()[0].fresh_db("features_direct", "postgres");
    let pm = Pgmulti::start(&replication_conf());
    let script = "\
CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0));
INSERT INTO acct SELECT g, 100 FROM generate_series(1, 10) g;
BEGIN; UPDATE acct SET balance = balance - 10 WHERE id = 1; SELECT balance FROM acct WHERE id = 1; COMMIT;
SET application_name = 'features';
SHOW application_name;
CREATE TEMP TABLE scratch AS SELECT id FROM acct WHERE id <= 3;
INSERT INTO acct SELECT id + 100, 1 FROM scratch;
BEGIN;
UPDATE acct SET balance = balance + 5 WHERE id = 2;
SAVEPOINT s1;
UPDATE acct SET balance = balance - 1000 WHERE id = 3;
ROLLBACK TO SAVEPOINT s1;
UPDATE acct SET balance = balance + 1 WHERE id = 3;
COMMIT;
BEGIN;
UPDATE acct SET balance = 0 WHERE id = 4;
SELECT 1/0;
SELECT 'not reached';
ROLLBACK;
PREPARE bump(int) AS UPDATE acct SET balance = balance + $1 WHERE id = 5;
EXECUTE bump(7);
EXECUTE bump(8);
DEALLOCATE bump;
ALTER TABLE acct ADD COLUMN note text DEFAULT 'x';
SELECT id, balance, note FROM acct ORDER BY id;
";
    let run = |conn: String| {
        let mut cmd = std::process::Command::new("psql");
        cmd.args(["-X", "-A", "-t", "-q", &conn, "-f", "-"]);
        run_with_timeout(
            cmd,
            Some(script.as_bytes().to_vec()),
            Duration::from_secs(60),
        )
    };
    let through = run(pm.conn_str("postgres", "features"));
    let n0 = &nodes()[0];
    let direct = run(format!(
        "host=127.0.0.1 port={} user=postgres dbname=features_direct",
        n0.port()
    ));
    assert_eq!(
        through.stdout, direct.stdout,
        "stdout differs from PostgreSQL's"
    );
    let strip_db = |s: &str| s.replace("features_direct", "features");
    assert_eq!(
        through.stderr,
        strip_db(&direct.stderr),
        "errors differ from PostgreSQL's"
    );
    assert!(
        through.stderr.contains("division by zero"),
        "{}",
        through.stderr
    );
    assert!(
        through.stderr.contains("current transaction is aborted"),
        "{}",
        through.stderr
    );
    assert_identical("features", &[0, 1, 2]);
}

#[test]
fn a_node_that_disagrees_is_detached_and_stays_detached() {
    fresh_db("diverge");
    let status_file = temp_dir("diverge-status").join("node_status");
    let conf = replication_conf().line(&format!("status_file = '{}'", status_file.display()));
    let pm = Pgmulti::start(&conf);
    sql(&pm, "diverge", "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, 0 FROM generate_series(1, 10) g");
    // Someone changes node 2 behind pgmulti's back.
    nodes()[2].psql("postgres", "diverge", "DELETE FROM t WHERE id = 7");
    let out = pm.psql("postgres", "diverge", None, "UPDATE t SET v = v + 1");
    assert!(
        out.success(),
        "the client must not see an error: {}",
        out.stderr
    );
    // Node 2's own check of the effect failed (9 rows where the lead changed 10) while
    // node 1 committed it: node 2 no longer holds the same data.
    assert!(
        pm.wait_log(Duration::from_secs(5), |l| l.contains("WARN")
            && l.contains("UPDATE t SET v = v + 1")
            && l.contains("node 1: ok 10")
            && l.contains("node 2: other rows than the lead's (9)")),
        "no WARNING naming the statement and the counts:\n{}",
        pm.log()
    );
    let status = std::fs::read_to_string(&status_file).unwrap();
    assert!(
        status.lines().any(|l| l == "2 down"),
        "status_file:\n{status}"
    );
    assert!(
        status.lines().any(|l| l == "0 up") && status.lines().any(|l| l == "1 up"),
        "{status}"
    );
    // Writes continue on nodes 0 and 1 only.
    sql(&pm, "diverge", "INSERT INTO t VALUES (11, 0)");
    assert_identical("diverge", &[0, 1]);
    assert_eq!(
        nodes()[2].psql(
            "postgres",
            "diverge",
            "SELECT count(*) FROM t WHERE id = 11"
        ),
        "0"
    );

    // A restarted pgmulti reads the status file: node 2 stays out.
    drop(pm);
    let pm = Pgmulti::start(&conf);
    sql(&pm, "diverge", "INSERT INTO t VALUES (12, 0)");
    assert_identical("diverge", &[0, 1]);
    assert_eq!(
        nodes()[2].psql(
            "postgres",
            "diverge",
            "SELECT count(*) FROM t WHERE id = 12"
        ),
        "0"
    );
}

#[test]
fn reads_skip_weight_zero_and_writes_reach_every_node() {
    fresh_db("weights");
    let [n0, n1, n2] = nodes();
    let conf = replication_conf().line("backend_weight2 = 0");
    let pm = Pgmulti::start(&conf);
    sql(&pm, "weights", "CREATE TABLE t (v int)");
    let mut ports = std::collections::BTreeSet::new();
    for _ in 0..20 {
        ports.insert(sql(&pm, "weights", "SELECT inet_server_port()"));
    }
    assert!(
        !ports.contains(&n2.port().to_string()),
        "node 2 (weight 0) served a read: {ports:?}"
    );
    assert!(ports
        .iter()
        .all(|p| *p == n0.port().to_string() || *p == n1.port().to_string()));
    sql(&pm, "weights", "INSERT INTO t VALUES (1)");
    assert_eq!(
        n2.psql("postgres", "weights", "SELECT count(*) FROM t"),
        "1"
    );
}

#[test]
fn pgbench_extended_and_prepared_keep_every_table_identical() {
    fresh_db("tpcb_ext");
    let pm = Pgmulti::start(&replication_conf());
    let port = pm.port().to_string();
    let base = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    let (ok, out, err) = pgbench(&[&base[..], &["-i", "-s", "1", "tpcb_ext"]].concat(), &[]);
    assert!(ok, "pgbench -i:\n{out}\n{err}");
    for mode in ["extended", "prepared"] {
        let (ok, out, err) = pgbench(
            &[
                &base[..],
                &["-M", mode, "-c", "8", "-j", "2", "-T", "5", "tpcb_ext"],
            ]
            .concat(),
            &[],
        );
        assert!(ok, "pgbench -M {mode}:\n{out}\n{err}");
        let summary = parse_pgbench_summary(&out).expect("pgbench summary");
        assert_eq!(summary.failed, 0, "-M {mode}: {out}");
        assert!(summary.processed > 0);
    }
    assert_identical("tpcb_ext", &[0, 1, 2]);
}

#[test]
fn prepared_statements_get_fresh_identical_values_each_execution() {
    fresh_db("prepared");
    let pm = Pgmulti::start(&replication_conf());
    let mut client = connect(&pm.conn_str("postgres", "prepared"));
    client
        .batch_execute("CREATE TABLE ev (id bigserial PRIMARY KEY, n int, at timestamptz, r float8, u uuid, made timestamptz DEFAULT clock_timestamp())")
        .unwrap();
    let insert = client
        .prepare("INSERT INTO ev (n, at, r, u) VALUES ($1, now(), random(), gen_random_uuid())")
        .unwrap();
    assert_eq!(
        insert.params().len(),
        1,
        "pgmulti's own parameters must not show in the statement's description"
    );
    for n in 0..20i32 {
        client.execute(&insert, &[&n]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    // Binary parameters and results through a read.
    let row = client
        .query_one("SELECT count(*), max(n) FROM ev WHERE n >= $1", &[&0i32])
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, Option<i32>>(1)),
        (20, Some(19))
    );
    assert_identical("prepared", &[0, 1, 2]);
    let n0 = &nodes()[0];
    assert_eq!(
        n0.psql("postgres", "prepared", "SELECT count(DISTINCT at) > 1 AND count(DISTINCT u) = 20 AND count(DISTINCT made) > 1 FROM ev"),
        "t",
        "values were frozen at Parse time"
    );
}

#[test]
fn an_error_in_a_prepared_transaction_rolls_back_everywhere() {
    fresh_db("preperr");
    let pm = Pgmulti::start(&replication_conf());
    let mut client = connect(&pm.conn_str("postgres", "preperr"));
    client
        .batch_execute("CREATE TABLE p (id int PRIMARY KEY)")
        .unwrap();
    let insert = client.prepare("INSERT INTO p VALUES ($1)").unwrap();
    let mut tx = client.transaction().unwrap();
    for i in 0..100 {
        tx.execute(&insert, &[&i]).unwrap();
    }
    let dup = tx.execute(&insert, &[&5]).unwrap_err();
    assert_eq!(dup.code().map(|c| c.code()), Some("23505"), "{dup}");
    drop(tx); // rolled back
    client.execute(&insert, &[&1000]).unwrap();
    assert_identical("preperr", &[0, 1, 2]);
    assert_eq!(
        nodes()[2].psql("postgres", "preperr", "SELECT count(*) FROM p"),
        "1"
    );
}

/// A deferred constraint fails at COMMIT, on every node alike: an autocommit write that
/// breaks one gets the constraint's error, as directly — simple and extended protocol, and
/// a re-run INSERT … SELECT too. Before, it got a 40001 "retry", which never succeeds.
#[test]
fn a_deferred_constraint_fails_an_autocommit_write_with_its_own_error() {
    fresh_db("deferred");
    let pm = Pgmulti::start(&replication_conf().line("admin_users = 'postgres'"));
    let mut c = connect(&pm.conn_str("postgres", "deferred"));
    c.batch_execute(
        "CREATE TABLE parent (id int PRIMARY KEY); INSERT INTO parent VALUES (1);
         CREATE TABLE child (id int PRIMARY KEY,
             p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
    )
    .unwrap();
    let code =
        |r: Result<u64, postgres::Error>| r.map_err(|e| e.code().map(|c| c.code().to_string()));
    let simple = c
        .batch_execute("INSERT INTO child VALUES (1, 42)")
        .map(|_| 0);
    assert_eq!(code(simple), Err(Some("23503".into())), "{}", pm.log());
    let extended = c.execute("INSERT INTO child VALUES ($1, 43)", &[&2i32]);
    assert_eq!(code(extended), Err(Some("23503".into())), "{}", pm.log());
    let rerun = c.execute("INSERT INTO child SELECT 3, max(id) + 50 FROM parent", &[]);
    assert_eq!(code(rerun), Err(Some("23503".into())), "{}", pm.log());
    assert_eq!(
        c.execute("INSERT INTO child VALUES (4, 1)", &[]).unwrap(),
        1
    );
    assert_identical("deferred", &[0, 1, 2]);
    let show = sql(&pm, "pgmulti", "SHOW NODES");
    assert_eq!(
        show.lines().filter(|l| l.contains("|up|")).count(),
        3,
        "{show}"
    );
}

/// A Query that commits part of itself and then fails (pg_regress transactions): what it
/// committed is on every node. Before, the lead alone had it: the replicas skipped the
/// Query because the lead failed it, and reads from a replica missed the row.
#[test]
fn a_query_that_commits_then_fails_leaves_the_same_on_every_node() {
    fresh_db("partcommit");
    let pm = Pgmulti::start(&replication_conf());
    let mut c = connect(&pm.conn_str("postgres", "partcommit"));
    c.batch_execute("CREATE TABLE i (f int)").unwrap();
    let e = c
        .batch_execute("insert into i values (7); commit; insert into i values (8); select 1/0")
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e}");
    for n in nodes() {
        assert_eq!(
            n.psql(
                "postgres",
                "partcommit",
                "SELECT string_agg(f::text, ',') FROM i"
            ),
            "7"
        );
    }
    assert_identical("partcommit", &[0, 1, 2]);
}

/// A write replicated by its effect returns the lead's new values to pgmulti (hidden
/// columns). A row of them larger than a receive buffer (an UPDATE setting a 1.2 MB value,
/// pg_regress rowtypes and indirect_toast) is read whole; before, the write failed with
/// "the lead's answer could not be read".
#[test]
fn a_decided_write_with_values_larger_than_a_buffer_replicates() {
    fresh_db("bigrow");
    let pm = Pgmulti::start(&replication_conf());
    let mut c = connect(&pm.conn_str("postgres", "bigrow"));
    c.batch_execute(
        "CREATE TABLE doc (id int PRIMARY KEY, kind text, body text);
         INSERT INTO doc VALUES (1, 'a', 'x'), (2, 'a', 'y'), (3, 'b', 'z')",
    )
    .unwrap();
    let n = c
        .execute(
            "UPDATE doc SET body = body || repeat('w', 1200000) WHERE kind = (SELECT min(kind) FROM doc)",
            &[],
        )
        .unwrap();
    assert_eq!(n, 2);
    let rows = c
        .query(
            "UPDATE doc SET body = repeat('v', 700000) WHERE id IN (SELECT id FROM doc WHERE kind = 'b') RETURNING id, length(body)",
            &[],
        )
        .unwrap();
    assert_eq!(
        (rows[0].get::<_, i32>(0), rows[0].get::<_, i32>(1)),
        (3, 700000)
    );
    assert_identical("bigrow", &[0, 1, 2]);
    assert_eq!(
        nodes()[2].psql(
            "postgres",
            "bigrow",
            "SELECT string_agg(length(body)::text, ',' ORDER BY id) FROM doc"
        ),
        "1200001,1200001,700000"
    );
}

/// A procedure (or DO block) that commits inside cannot run in pgmulti's own transaction
/// ("invalid transaction termination"): it is run again outside it, on every node, and the
/// client sees it succeed, as directly. Inside the client's own transaction it fails as
/// directly.
#[test]
fn procedures_that_commit_inside_run_on_every_node() {
    fresh_db("proccommit");
    let pm = Pgmulti::start(&replication_conf());
    let mut c = connect(&pm.conn_str("postgres", "proccommit"));
    c.batch_execute(
        "CREATE TABLE pc (v int);
         CREATE PROCEDURE batches() LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO pc VALUES (1); COMMIT; INSERT INTO pc VALUES (2); END $$",
    )
    .unwrap();
    c.batch_execute("CALL batches()").unwrap();
    c.batch_execute(
        "DO $$ BEGIN INSERT INTO pc VALUES (3); COMMIT; INSERT INTO pc VALUES (4); END $$",
    )
    .unwrap();
    let e = c.batch_execute("BEGIN; CALL batches()").unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("2D000"), "{e}");
    c.batch_execute("ROLLBACK").unwrap();
    for n in nodes() {
        assert_eq!(
            n.psql(
                "postgres",
                "proccommit",
                "SELECT string_agg(v::text, ',' ORDER BY v) FROM pc"
            ),
            "1,2,3,4"
        );
    }
    assert_identical("proccommit", &[0, 1, 2]);
}

/// The nodes may run another text than the client sent (a column default written into
/// the INSERT, now() replaced by a value, hidden RETURNING columns); the position of an
/// error (psql's `LINE 1:` caret) is still the one in the client's text, as directly.
#[test]
fn error_positions_point_into_the_clients_own_text() {
    fresh_db("errpos");
    let pm = Pgmulti::start(&replication_conf());
    let mut c = connect(&pm.conn_str("postgres", "errpos"));
    c.batch_execute("CREATE TABLE g (id int PRIMARY KEY, u uuid, t text DEFAULT now())")
        .unwrap();
    c.batch_execute("INSERT INTO g (id) VALUES (1)").unwrap();
    let mut direct = connect(&nodes()[0].conn_str("postgres", "errpos"));
    let position = |c: &mut postgres::Client, sql: &str| match c.batch_execute(sql) {
        Ok(()) => panic!("{sql}: no error"),
        Err(e) => match e.as_db_error().and_then(|d| d.position()) {
            Some(postgres::error::ErrorPosition::Original(p)) => *p,
            other => panic!("{sql}: {e} at {other:?}"),
        },
    };
    for sql in [
        "INSERT INTO g(id, u) VALUES (2, '1111-bad')",
        "UPDATE g SET t = now()::text, u = 'é-bad' WHERE id = 1",
        "DELETE FROM g WHERE u = 'bad' AND t < now()::text",
    ] {
        assert_eq!(position(&mut c, sql), position(&mut direct, sql), "{sql}");
    }
    assert_identical("errpos", &[0, 1, 2]);
}

/// A TCP relay that delays every chunk by `delay`: a slow network path to one node.
fn slow_path_to(port: u16, delay: Duration) -> u16 {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(node) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), node.try_clone().unwrap()),
                (node, client),
            ] {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        std::thread::sleep(delay);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    local
}

#[test]
fn reads_avoid_a_slow_node() {
    fresh_db("latency");
    let [n0, n1, n2] = nodes();
    let slow = slow_path_to(n0.port(), Duration::from_millis(30));
    let conf = PgmultiConf {
        backends: vec![
            ("127.0.0.1".into(), slow),
            (n1.host().into(), n1.port()),
            (n2.host().into(), n2.port()),
        ],
        ..replication_conf()
    };
    let pm = Pgmulti::start(&conf);
    // Writes reach every node and measure each one's round trips.
    sql(&pm, "latency", "CREATE TABLE t (v int)");
    for i in 0..5 {
        sql(&pm, "latency", &format!("INSERT INTO t VALUES ({i})"));
    }
    // A session keeps its read node (catalog OIDs and the like agree between its
    // statements); sessions spread over the nodes.
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..150 {
        let mut c = connect(&pm.conn_str("postgres", "latency"));
        let ports: Vec<i32> = (0..2)
            .map(|_| {
                c.query_one("SELECT inet_server_port()", &[])
                    .unwrap()
                    .get(0)
            })
            .collect();
        assert_eq!(ports[0], ports[1], "one session, one read node");
        *served.entry(ports[0] as u16).or_insert(0) += 1;
    }
    let of = |p: u16| served.get(&p).copied().unwrap_or(0);
    // The slow node keeps a few reads (so that it stays measured), the others share the rest.
    assert!(
        of(n0.port()) <= 15,
        "the slow node (the lead) served many sessions' reads: {served:?}"
    );
    assert!(
        of(n1.port()) >= 45 && of(n2.port()) >= 45,
        "the fast nodes share the reads: {served:?}"
    );
    assert_eq!(served.values().sum::<i32>(), 150);
    assert_identical("latency", &[0, 1, 2]);
}

#[test]
fn statements_outside_transaction_blocks_reach_every_node() {
    fresh_db("notx");
    let pm = Pgmulti::start(&replication_conf());
    sql(
        &pm,
        "notx",
        "CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 100)",
    );
    sql(&pm, "notx", "VACUUM ANALYZE t");
    sql(&pm, "notx", "CREATE DATABASE notx_created");
    for n in nodes() {
        assert_eq!(
            n.psql(
                "postgres",
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname = 'notx_created'"
            ),
            "1"
        );
        assert_ne!(n.psql("postgres", "notx", "SELECT coalesce(last_vacuum::text, '') FROM pg_stat_user_tables WHERE relname = 't'"), "");
    }
    sql(&pm, "notx", "DROP DATABASE notx_created");
    for n in nodes() {
        assert_eq!(
            n.psql(
                "postgres",
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname = 'notx_created'"
            ),
            "0"
        );
    }
    // Inside a transaction block they fail as on PostgreSQL, and nothing diverges.
    let out = pm.psql("postgres", "notx", None, "BEGIN; VACUUM t; COMMIT");
    assert!(
        out.stderr.contains("cannot run inside a transaction block"),
        "{}",
        out.stderr
    );
}

#[test]
fn copy_in_reaches_every_node_and_copy_out_comes_from_one() {
    fresh_db("copies");
    let pm = Pgmulti::start(&replication_conf());
    sql(&pm, "copies", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    let rows: String = (1..=20_000).map(|i| format!("{i}\tvalue {i}\n")).collect();
    let mut cmd = std::process::Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        &pm.conn_str("postgres", "copies"),
        "-c",
        "COPY t FROM STDIN",
    ]);
    let out = run_with_timeout(
        cmd,
        Some(rows.clone().into_bytes()),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.stderr);
    assert_identical("copies", &[0, 1, 2]);
    assert_eq!(
        nodes()[2].psql("postgres", "copies", "SELECT count(*) FROM t"),
        "20000"
    );
    let mut cmd = std::process::Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        &pm.conn_str("postgres", "copies"),
        "-c",
        "COPY (SELECT * FROM t ORDER BY id) TO STDOUT",
    ]);
    let out = run_with_timeout(cmd, None, Duration::from_secs(60));
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout, rows);
}

#[test]
fn async_acks_keep_every_table_identical() {
    fresh_db("tpcb_async");
    let pm = Pgmulti::start(&replication_conf().line("write_ack = async"));
    let port = pm.port().to_string();
    let base = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    let (ok, out, err) = pgbench(&[&base[..], &["-i", "-s", "1", "tpcb_async"]].concat(), &[]);
    assert!(ok, "pgbench -i:\n{out}\n{err}");
    for mode in ["simple", "prepared"] {
        let (ok, out, err) = pgbench(
            &[
                &base[..],
                &["-M", mode, "-c", "8", "-j", "2", "-T", "5", "tpcb_async"],
            ]
            .concat(),
            &[],
        );
        assert!(ok, "pgbench -M {mode}:\n{out}\n{err}");
        let summary = parse_pgbench_summary(&out).expect("pgbench summary");
        assert_eq!(summary.failed, 0, "-M {mode}: {out}");
        assert!(summary.processed > 0);
    }
    assert_identical("tpcb_async", &[0, 1, 2]);
}

/// `write_ack = async`: inside a transaction the replicas get its statements only when
/// something needs them (here the COMMIT), in one write, or when they fill half a send
/// buffer; either way every node ends up with the same rows.
#[test]
fn async_replicas_run_a_transaction_at_commit() {
    fresh_db("async_defer");
    let pm = Pgmulti::start(&replication_conf().line("write_ack = async"));
    sql(&pm, "async_defer", "CREATE TABLE t (id int PRIMARY KEY, v int, pad text); INSERT INTO t SELECT g, 0 FROM generate_series(1, 5) g");
    let mut c = connect(&pm.conn_str("postgres", "async_defer"));
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute("UPDATE t SET v = 1 WHERE id = 1").unwrap();
    // The lead holds the row lock; the replica has not run the UPDATE yet.
    let lock = |node: usize| {
        nodes()[node].psql(
            "postgres",
            "async_defer",
            "SET lock_timeout = '100ms'; SELECT v FROM t WHERE id = 1 FOR UPDATE",
        )
    };
    assert_eq!(lock(1), "0", "the replica ran the UPDATE before COMMIT");
    // A transaction larger than half a send buffer goes out as it grows.
    for i in 0..2000 {
        c.batch_execute(&format!(
            "INSERT INTO t VALUES ({}, {i}, repeat('x', 200))",
            i + 100
        ))
        .unwrap();
    }
    c.batch_execute("COMMIT").unwrap();
    for n in 0..3 {
        assert_eq!(
            nodes()[n].psql("postgres", "async_defer", "SELECT count(*), sum(v) FROM t"),
            "2005|1999001",
            "node {n}"
        );
    }
    assert_identical("async_defer", &[0, 1, 2]);
}

/// A replica that lacks a row fails its effect check: the COMMIT fails with 40001 and
/// nothing is committed anywhere, as after a race between clients. Only when it keeps
/// disagreeing (three transactions in a row) is it detached.
#[test]
fn async_disagreement_fails_the_commit_everywhere() {
    fresh_db("async_diverge");
    let pm = Pgmulti::start(&replication_conf().line("write_ack = async"));
    sql(&pm, "async_diverge", "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, 0 FROM generate_series(1, 5) g");
    nodes()[2].psql("postgres", "async_diverge", "DELETE FROM t WHERE id = 3");
    // One statement per Query: the UPDATEs are acknowledged from the lead alone.
    let transfer = || {
        let mut cmd = std::process::Command::new("psql");
        cmd.args([
            "-X",
            "-q",
            &pm.conn_str("postgres", "async_diverge"),
            "-f",
            "-",
        ]);
        let script = "BEGIN;\nUPDATE t SET v = 10 WHERE id = 3;\nUPDATE t SET v = 20 WHERE id = 4;\nCOMMIT;\n";
        run_with_timeout(
            cmd,
            Some(script.as_bytes().to_vec()),
            Duration::from_secs(30),
        )
    };
    for attempt in 1..=3 {
        let out = transfer();
        assert!(
            out.stderr.contains("COMMIT failed") && out.stderr.contains("can be retried"),
            "attempt {attempt}: the COMMIT must fail: {}",
            out.stderr
        );
        for n in &nodes()[..2] {
            assert_eq!(
                n.psql("postgres", "async_diverge", "SELECT v FROM t WHERE id = 4"),
                "0",
                "attempt {attempt}: the failed transaction was committed"
            );
        }
        assert_identical("async_diverge", &[0, 1]);
        let detached = pm
            .log()
            .lines()
            .any(|l| l.contains("node 2") && l.contains("detached"));
        assert_eq!(detached, attempt == 3, "attempt {attempt}:\n{}", pm.log());
    }
    // Without node 2 the transaction goes through.
    let out = transfer();
    assert!(out.success() && out.stderr.is_empty(), "{}", out.stderr);
    assert_eq!(
        nodes()[1].psql("postgres", "async_diverge", "SELECT v FROM t WHERE id = 4"),
        "20"
    );
    assert_identical("async_diverge", &[0, 1]);
}

/// Raw protocol: 100 INSERTs and a failing statement pipelined before one Sync, then a
/// second batch; PostgreSQL's answer stream, and no node diverges.
#[test]
fn a_pipelined_batch_with_an_error_recovers() {
    fresh_db("pipe");
    let pm = Pgmulti::start(&replication_conf());
    sql(&pm, "pipe", "CREATE TABLE p (id int PRIMARY KEY)");
    let mut s = RawClient::connect(pm.port(), "postgres", "pipe");
    let msg = message;
    let mut batch = msg(b'P', b"ins\0INSERT INTO p VALUES ($1)\0\0\0");
    for i in 0..100 {
        let v = i.to_string();
        let mut b = b"\0ins\0\0\0\0\x01".to_vec();
        b.extend((v.len() as u32).to_be_bytes());
        b.extend(v.as_bytes());
        b.extend([0, 0]);
        batch.extend(msg(b'B', &b));
        batch.extend(msg(b'E', b"\0\0\0\0\0"));
    }
    batch.extend(msg(b'P', b"\0SELECT 1/0\0\0\0"));
    batch.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(msg(b'E', b"\0\0\0\0\0"));
    batch.extend(msg(b'S', b""));
    s.send(&batch);
    let (tags, status) = s.read_until_ready();
    assert_eq!(
        tags.iter().filter(|&&t| t == b'C').count(),
        100,
        "100 INSERTs complete"
    );
    assert_eq!(tags.iter().filter(|&&t| t == b'E').count(), 1, "one error");
    assert_eq!(status, b'I');
    // The implicit transaction of the batch failed: nothing of it stays.
    for n in nodes() {
        assert_eq!(n.psql("postgres", "pipe", "SELECT count(*) FROM p"), "0");
    }
    // The session recovers: a new batch commits.
    let mut again = Vec::new();
    let mut b = b"\0ins\0\0\0\0\x01".to_vec();
    b.extend(4u32.to_be_bytes());
    b.extend(b"1000");
    b.extend([0, 0]);
    again.extend(msg(b'B', &b));
    again.extend(msg(b'E', b"\0\0\0\0\0"));
    again.extend(msg(b'S', b""));
    s.send(&again);
    let (tags, _) = s.read_until_ready();
    assert!(tags.contains(&b'C') && !tags.contains(&b'E'), "{tags:?}");
    assert_identical("pipe", &[0, 1, 2]);
    assert_eq!(
        nodes()[2].psql("postgres", "pipe", "SELECT count(*) FROM p"),
        "1"
    );
}

#[test]
fn a_portal_is_fetched_ten_rows_at_a_time() {
    fresh_db("portal");
    let pm = Pgmulti::start(&replication_conf());
    let mut client = connect(&pm.conn_str("postgres", "portal"));
    client
        .batch_execute("CREATE TABLE r AS SELECT g AS v FROM generate_series(1, 35) g")
        .unwrap();
    let mut tx = client.transaction().unwrap();
    let portal = tx.bind("SELECT v FROM r ORDER BY v", &[]).unwrap();
    let mut got = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 10).unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 10);
        got.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    tx.commit().unwrap();
    assert_eq!(got, (1..=35).collect::<Vec<_>>());
}

#[test]
fn copy_through_the_extended_protocol() {
    use std::io::{Read, Write};
    fresh_db("copyext");
    let pm = Pgmulti::start(&replication_conf());
    let mut client = connect(&pm.conn_str("postgres", "copyext"));
    client
        .batch_execute("CREATE TABLE c (id int, v text)")
        .unwrap();
    let mut w = client.copy_in("COPY c FROM STDIN").unwrap();
    for i in 0..5000 {
        writeln!(w, "{i}\tv{i}").unwrap();
    }
    assert_eq!(w.finish().unwrap(), 5000);
    let mut out = String::new();
    client
        .copy_out("COPY (SELECT count(*), sum(id) FROM c) TO STDOUT")
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.trim(), "5000\t12497500");
    assert_identical("copyext", &[0, 1, 2]);
}

/// Raw protocol: Parse + Describe + Flush (as JDBC does to learn parameter types) is
/// answered without ReadyForQuery; the Bind/Execute/Sync that follows runs everywhere.
#[test]
fn a_flush_gets_answers_before_sync() {
    use std::io::{Read, Write};
    fresh_db("flush");
    let pm = Pgmulti::start(&replication_conf());
    sql(&pm, "flush", "CREATE TABLE f (id int, at timestamptz)");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let msg = |tag: u8, body: &[u8]| {
        let mut m = vec![tag];
        m.extend(((body.len() + 4) as u32).to_be_bytes());
        m.extend(body);
        m
    };
    let mut body = 196608u32.to_be_bytes().to_vec();
    body.extend(b"user\0postgres\0database\0flush\0\0");
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend(body);
    s.write_all(&startup).unwrap();
    let read = |s: &mut std::net::TcpStream| {
        let mut h = [0u8; 5];
        s.read_exact(&mut h).unwrap();
        let len = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).unwrap();
        (h[0], body)
    };
    while read(&mut s).0 != b'Z' {}
    let mut first = msg(b'P', b"ins\0INSERT INTO f VALUES ($1, now())\0\0\0");
    first.extend(msg(b'D', b"Sins\0"));
    first.extend(msg(b'H', b""));
    s.write_all(&first).unwrap();
    let mut tags = Vec::new();
    for _ in 0..3 {
        let (tag, body) = read(&mut s);
        if tag == b't' {
            assert_eq!(
                &body[..2],
                &[0, 1],
                "the client sees its one parameter, not pgmulti's"
            );
        }
        tags.push(tag);
    }
    assert_eq!(tags, vec![b'1', b't', b'n']);
    let mut second = msg(b'B', b"\0ins\0\0\0\0\x01\0\0\0\x017\0\0");
    second.extend(msg(b'E', b"\0\0\0\0\0"));
    second.extend(msg(b'S', b""));
    s.write_all(&second).unwrap();
    let mut tags = Vec::new();
    loop {
        let (tag, _) = read(&mut s);
        tags.push(tag);
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(tags, vec![b'2', b'C', b'Z']);
    assert_identical("flush", &[0, 1, 2]);
    assert_eq!(
        nodes()[1].psql("postgres", "flush", "SELECT id FROM f"),
        "7"
    );
}

#[test]
fn the_trace_shows_which_nodes_each_extended_message_went_to() {
    fresh_db("tracex");
    let pm = Pgmulti::start(&replication_conf().log_level("trace"));
    let mut client = connect(&pm.conn_str("postgres", "tracex"));
    client.batch_execute("CREATE TABLE t (v int)").unwrap();
    client
        .execute("INSERT INTO t VALUES ($1)", &[&1i32])
        .unwrap();
    let log = pm.log();
    for node in ["node0", "node1", "node2"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("pgmulti > {node} Bind")) && l.contains(" C-")),
            "no Bind traced to {node}:\n{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{node} > pgmulti BindComplete"))),
            "{node}"
        );
    }
    assert!(log.lines().any(|l| l.contains("client > pgmulti Bind")));
}

/// Server-side cursors answer as PostgreSQL does, and two Sync cycles pipelined in one
/// write are answered in order.
#[test]
fn cursors_and_pipelined_syncs() {
    use std::io::{Read, Write};
    fresh_db("cursor");
    nodes()[0].fresh_db("cursor_direct", "postgres");
    let pm = Pgmulti::start(&replication_conf());
    let script = "\
CREATE TABLE r AS SELECT g AS v FROM generate_series(1, 25) g;
BEGIN;
DECLARE c CURSOR FOR SELECT v FROM r ORDER BY v;
FETCH 10 FROM c;
MOVE 5 IN c;
FETCH 3 FROM c;
CLOSE c;
COMMIT;
";
    let run = |conn: String| {
        let mut cmd = std::process::Command::new("psql");
        cmd.args(["-X", "-A", "-t", "-q", &conn, "-f", "-"]);
        run_with_timeout(
            cmd,
            Some(script.as_bytes().to_vec()),
            Duration::from_secs(30),
        )
    };
    let through = run(pm.conn_str("postgres", "cursor"));
    let direct = run(format!(
        "host=127.0.0.1 port={} user=postgres dbname=cursor_direct",
        nodes()[0].port()
    ));
    assert!(through.success(), "{}", through.stderr);
    assert_eq!(through.stdout, direct.stdout);
    assert!(
        through.stdout.starts_with("1\n2\n") && through.stdout.ends_with("16\n17\n18\n"),
        "{}",
        through.stdout
    );

    // Two Execute/Sync cycles in one write.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let msg = |tag: u8, body: &[u8]| {
        let mut m = vec![tag];
        m.extend(((body.len() + 4) as u32).to_be_bytes());
        m.extend(body);
        m
    };
    let mut body = 196608u32.to_be_bytes().to_vec();
    body.extend(b"user\0postgres\0database\0cursor\0\0");
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend(body);
    s.write_all(&startup).unwrap();
    let mut readies = 0;
    let mut both = Vec::new();
    for v in ["SELECT count(*) FROM r", "SELECT max(v) FROM r"] {
        both.extend(msg(b'P', format!("\0{v}\0\0\0").as_bytes()));
        both.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        both.extend(msg(b'E', b"\0\0\0\0\0"));
        both.extend(msg(b'S', b""));
    }
    let mut sent = false;
    let mut rows = Vec::new();
    while readies < 3 {
        let mut h = [0u8; 5];
        s.read_exact(&mut h).unwrap();
        let len = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
        let mut b = vec![0; len - 4];
        s.read_exact(&mut b).unwrap();
        if h[0] == b'Z' {
            readies += 1;
            if !sent {
                s.write_all(&both).unwrap();
                sent = true;
            }
        }
        if h[0] == b'D' {
            rows.push(String::from_utf8_lossy(&b[6..]).into_owned());
        }
    }
    assert_eq!(rows, vec!["25", "25"]);
}

/// A plain BEGIN is answered by pgmulti and reaches each node pipelined with the
/// transaction's first statement there: the transaction still exists on every node
/// (ROLLBACK undoes everything), an empty BEGIN/COMMIT draws no warning, and the trace shows
/// no round trip for BEGIN alone.
#[test]
fn begin_travels_with_the_first_statement() {
    fresh_db("deferred_begin");
    let pm = Pgmulti::start(&replication_conf().log_level("trace"));
    sql(&pm, "deferred_begin", "CREATE TABLE d (v int)");
    let mut c = connect(&pm.conn_str("postgres", "deferred_begin"));
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute("INSERT INTO d VALUES (1)").unwrap();
    c.batch_execute("ROLLBACK").unwrap();
    c.batch_execute("START TRANSACTION").unwrap();
    c.batch_execute("INSERT INTO d VALUES (2)").unwrap();
    c.batch_execute("COMMIT").unwrap();
    for n in nodes() {
        assert_eq!(
            n.psql(
                "postgres",
                "deferred_begin",
                "SELECT string_agg(v::text, ',') FROM d"
            ),
            "2"
        );
    }
    let out = pm.psql("postgres", "deferred_begin", None, "BEGIN; COMMIT;");
    assert!(
        out.success() && !out.stderr.contains("WARNING"),
        "{}",
        out.stderr
    );
    let out = pm.psql("postgres", "deferred_begin", None, "BEGIN");
    assert!(out.success(), "{}", out.stderr);

    // Each node's BEGIN is followed by the INSERT before the node answers anything.
    let log = pm.log();
    let begin_line = log
        .lines()
        .find(|l| l.contains("pgmulti > node0 Query \"START TRANSACTION\""))
        .unwrap_or_else(|| panic!("no START TRANSACTION sent to node0:\n{log}"));
    let session = begin_line.split(" TRACE ").nth(1).unwrap_or_default();
    let session = session.split(' ').next().unwrap_or_default();
    let to_node0: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!(" {session} ")) && l.contains(" node0 "))
        .collect();
    let begin = to_node0
        .iter()
        .position(|l| l.contains("pgmulti > node0 Query \"START TRANSACTION\""))
        .unwrap_or_else(|| panic!("{}", to_node0.join("\n")));
    assert!(
        to_node0[begin + 1].contains("pgmulti > node0 Query \"INSERT INTO d VALUES (2)\""),
        "{}",
        to_node0.join("\n")
    );
}

/// A statement the lead fails can still leave something behind there: a value drawn from a
/// sequence, the invalid index of a failed CREATE INDEX CONCURRENTLY. The replicas run it
/// too and fail alike, so the next INSERT gets the same id everywhere.
#[test]
fn a_failure_with_side_effects_happens_on_every_node() {
    fresh_db("failalike");
    let pm = Pgmulti::start(&replication_conf());
    let run = |s: &str| pm.psql("postgres", "failalike", None, s);
    assert!(run("CREATE TABLE s (id serial PRIMARY KEY, u int UNIQUE)").success());
    assert!(run("INSERT INTO s (u) VALUES (1)").success());
    let dup = run("INSERT INTO s (u) VALUES (1)");
    assert!(dup.stderr.contains("duplicate key"), "{}", dup.stderr);
    let dup = run("BEGIN; INSERT INTO s (u) VALUES (1); COMMIT");
    assert!(dup.stderr.contains("duplicate key"), "{}", dup.stderr);
    assert!(run("INSERT INTO s (u) VALUES (2)").success());
    for n in nodes() {
        assert_eq!(
            n.psql(
                "postgres",
                "failalike",
                "SELECT string_agg(id || ':' || u, ',' ORDER BY id) FROM s"
            ),
            "1:1,4:2",
            "every node drew the failed INSERTs' ids"
        );
    }
    assert!(run("INSERT INTO s (u) VALUES (2), (3)")
        .stderr
        .contains("duplicate key"));
    let ci = run("CREATE UNIQUE INDEX CONCURRENTLY s_positive ON s ((u > 0))");
    assert!(!ci.success(), "duplicate values: the index build fails");
    for n in nodes() {
        assert_eq!(
            n.psql(
                "postgres",
                "failalike",
                "SELECT count(*) FROM pg_index WHERE NOT indisvalid"
            ),
            "1",
            "the invalid index is left on every node"
        );
    }
    assert_identical("failalike", &[0, 1, 2]);
    let admin = pm.psql("postgres", "failalike", None, "SHOW POOL_NODES");
    assert_eq!(admin.stdout.matches("up").count(), 3, "{}", admin.stdout);
}

/// pgmulti's own RETURNING (the lead's effect, told to the replicas) must not ask for more
/// than the user's statement does: a user with UPDATE but no SELECT right, and a table whose
/// SELECT policies would reject the updated rows, update through pgmulti as directly.
#[test]
fn writes_without_select_rights_or_under_row_security_run_as_directly() {
    let db = "rights";
    fresh_db(db);
    let pm = Pgmulti::start(&replication_conf());
    sql(
        &pm,
        db,
        "CREATE ROLE clerk LOGIN; \
         CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t VALUES (1, 0), (2, 0); \
         GRANT UPDATE ON t TO clerk; \
         CREATE TABLE r (id int PRIMARY KEY, n int); INSERT INTO r VALUES (1, 1), (2, 2); \
         ALTER TABLE r ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY seen ON r FOR SELECT USING (n < 10); \
         CREATE POLICY changed ON r FOR UPDATE USING (true); \
         GRANT SELECT, UPDATE ON r TO clerk",
    );
    for statement in ["UPDATE t SET n = 7", "UPDATE r SET n = 20"] {
        let out = pm.psql("clerk", db, None, statement);
        assert!(out.success(), "{statement}: {}", out.stderr);
    }
    for n in nodes() {
        let rows = n.psql(
            "postgres",
            db,
            "SELECT (SELECT string_agg(id || ':' || n, ',' ORDER BY id) FROM t) || ' ' || \
             (SELECT string_agg(id || ':' || n, ',' ORDER BY id) FROM r)",
        );
        assert_eq!(rows, "1:7,2:7 1:20,2:20");
    }
    assert_identical(db, &[0, 1, 2]);
}
