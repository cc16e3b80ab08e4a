//! What drivers rely on, through pgmulti as directly: the startup phase, the process number
//! BackendKeyData gives (pg_backend_pid, pg_terminate_backend, NotificationResponse), in
//! relay and replication mode, with raw protocol clients and the `postgres` crate.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

fn replication_conf() -> PgmultiConf {
    let [n0, n1, n2] = nodes();
    PgmultiConf::relay(n0)
        .mode("replication")
        .line("admin_users = 'postgres'")
        .backend(n1.host(), n1.port())
        .backend(n2.host(), n2.port())
}

/// (Each test listens on its own channel: the nodes are shared.)
/// The sender pid and channel of a NotificationResponse body.
fn notification(body: &[u8]) -> (u32, String) {
    let pid = u32::from_be_bytes(body[..4].try_into().unwrap());
    let channel = body[4..].split(|&b| b == 0).next().unwrap();
    (pid, String::from_utf8_lossy(channel).into_owned())
}

/// The NotificationResponse a session gets for its own NOTIFY (before its ReadyForQuery).
fn notify_self(c: &mut RawClient, sql: &str) -> (u32, String) {
    let got = c.query(sql);
    let Some((_, body)) = got.iter().find(|(t, _)| *t == b'A') else {
        panic!("no notification in {got:?}");
    };
    notification(body)
}

/// The next NotificationResponse, skipping anything else.
fn next_notification(c: &mut RawClient) -> (u32, String) {
    loop {
        let (tag, body) = c.read_message();
        if tag == b'A' {
            return notification(&body);
        }
    }
}

/// The SQLSTATE of an ErrorResponse body.
fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// What a terminated session sees on its next query: FATAL 57P01, then the end.
fn assert_terminated(c: &mut RawClient) {
    let _ = std::io::Write::write_all(&mut c.stream, &message(b'Q', b"SELECT 1\0"));
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut c.stream, &mut buf);
    assert!(
        buf.first() == Some(&b'E') && sqlstate(&buf[5..]) == "57P01",
        "the terminated session got {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn relay_sessions_are_shown_their_backends_own_pid() {
    let node = &nodes()[0];
    let pm = Pgmulti::start(&PgmultiConf::relay(node));
    let mut a = RawClient::connect(pm.port(), "postgres", "postgres");
    let mut b = RawClient::connect(pm.port(), "postgres", "postgres");
    assert_eq!(a.query_value("SELECT pg_backend_pid()"), a.pid.to_string());
    // A notification's sender is the pid the client knows.
    a.query("LISTEN ch");
    assert_eq!(notify_self(&mut a, "NOTIFY ch"), (a.pid, "ch".into()));
    b.query("NOTIFY ch");
    assert_eq!(next_notification(&mut a), (b.pid, "ch".into()));
    // One session ends another by the pid it was given.
    assert_eq!(
        b.query_value(&format!("SELECT pg_terminate_backend({})", a.pid)),
        "t"
    );
    assert_terminated(&mut a);
}

#[test]
fn replication_maps_the_pid_it_hands_out() {
    let pm = Pgmulti::start(&replication_conf());
    let mut a = RawClient::connect(pm.port(), "postgres", "postgres");
    let mut b = RawClient::connect(pm.port(), "postgres", "postgres");
    assert_ne!(a.pid, b.pid);
    a.query("LISTEN rch");
    assert_eq!(
        notify_self(&mut a, "NOTIFY rch"),
        (a.pid, "rch".into()),
        "a driver tells its own notifications by the pid"
    );
    b.query("NOTIFY rch, 'from b'");
    assert_eq!(next_notification(&mut a), (b.pid, "rch".into()));

    // pg_cancel_backend with a parameter, from a real driver: the sleeping session's
    // statement is cancelled on the lead.
    let mut sleeper = RawClient::connect(pm.port(), "postgres", "postgres");
    sleeper.send(&message(b'Q', b"SELECT pg_sleep(30)\0"));
    std::thread::sleep(Duration::from_millis(500));
    let mut driver = connect(&pm.conn_str("postgres", "postgres"));
    let started = Instant::now();
    let row = driver
        .query_one("SELECT pg_cancel_backend($1)", &[&(sleeper.pid as i32)])
        .unwrap();
    assert!(row.get::<_, bool>(0), "the lead found the backend");
    let (tag, body) = loop {
        let (tag, body) = sleeper.read_message();
        if tag != b'T' {
            break (tag, body);
        }
    };
    assert_eq!((tag, sqlstate(&body)), (b'E', "57014".into()));
    assert!(started.elapsed() < Duration::from_secs(20));
    sleeper.read_until_ready();
    assert_eq!(
        sleeper.query_value("SELECT 2"),
        "2",
        "a cancel ends a statement only"
    );

    // A pid pgmulti did not hand out is refused, not sent to every node.
    let err = driver
        .query_one("SELECT pg_terminate_backend(1)", &[])
        .unwrap_err();
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("did not hand out")),
        "{err}"
    );

    // Terminate by literal: the session ends with PostgreSQL's FATAL; no node is detached.
    assert_eq!(
        b.query_value(&format!("SELECT pg_terminate_backend({})", a.pid)),
        "t"
    );
    assert_terminated(&mut a);
    let admin = pm.psql("postgres", "pgmulti", None, "SHOW NODES");
    assert!(admin.success(), "{}", admin.stderr);
    assert_eq!(
        admin.stdout.matches("up").count(),
        3,
        "every node still up:\n{}",
        admin.stdout
    );
    assert_eq!(b.query_value("SELECT 3"), "3");
}

/// A database that pgmulti's idle pooled connections still hold can be dropped, renamed
/// and used as a template, as directly: the pool lets go of it first.
fn databases_held_by_the_pool_can_be_dropped(pm: &Pgmulti, tag: &str) {
    let (a, b, c) = (format!("{tag}_a"), format!("{tag}_b"), format!("{tag}_c"));
    let admin = |sql: &str| {
        let out = pm.psql("postgres", "postgres", None, sql);
        assert!(out.success(), "{sql}: {}", out.stderr);
    };
    for db in [&a, &b, &c] {
        admin(&format!("DROP DATABASE IF EXISTS {db}"));
    }
    admin(&format!("DROP DATABASE IF EXISTS {a}_renamed"));
    for db in [&a, &b, &c] {
        admin(&format!("CREATE DATABASE {db}"));
        // A client comes and goes: its node connections stay in the pool.
        let out = pm.psql("postgres", db, None, "SELECT 1");
        assert!(out.success(), "{}", out.stderr);
    }
    let log_before = pm.log().matches("pooled connection(s) to database").count();
    admin(&format!("DROP DATABASE {a}"));
    admin(&format!("ALTER DATABASE {b} RENAME TO {a}_renamed"));
    // The extended protocol, as drivers send it.
    let mut driver = connect(&pm.conn_str("postgres", "postgres"));
    driver
        .execute(&format!("CREATE DATABASE {a} TEMPLATE {c}"), &[])
        .unwrap();
    assert!(pm.log().matches("pooled connection(s) to database").count() >= log_before + 3);
    for db in [a.clone(), format!("{a}_renamed"), c] {
        admin(&format!("DROP DATABASE {db}"));
    }
}

#[test]
fn relay_pool_lets_go_of_a_database_being_dropped() {
    let pm = Pgmulti::start(&PgmultiConf::relay(&nodes()[0]));
    databases_held_by_the_pool_can_be_dropped(&pm, "relaydrop");
}

#[test]
fn replication_pool_lets_go_of_a_database_being_dropped() {
    let pm = Pgmulti::start(&replication_conf());
    databases_held_by_the_pool_can_be_dropped(&pm, "repldrop");
}

/// A Python interpreter with psycopg and asyncpg: Debian's (`.ci/run` installs
/// python3-psycopg and python3-asyncpg), else whichever `python3` comes first.
fn python() -> &'static str {
    for p in ["/usr/bin/python3", "python3"] {
        let ok = std::process::Command::new(p)
            .args(["-c", "import psycopg, asyncpg"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return p;
        }
    }
    panic!("no python3 with psycopg and asyncpg: apt-get install python3-psycopg python3-asyncpg");
}

/// Run `tests/python/<script>` against `port`/`db`; its stdout.
fn run_suite(script: &str, port: u16, db: &str) -> String {
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new(python());
    cmd.args([&path, "127.0.0.1", &port.to_string(), db]);
    let out = run_with_timeout(cmd, None, Duration::from_secs(120));
    assert!(out.success(), "{script} on port {port}: {}", out.stderr);
    out.stdout
}

/// What psycopg and asyncpg applications see through pgmulti in replication mode equals
/// what they see from PostgreSQL directly, and the nodes end identical.
#[test]
fn python_drivers_see_what_they_see_directly() {
    let pm = Pgmulti::start(&replication_conf());
    for (script, db) in [
        ("psycopg_suite.py", "py_psycopg"),
        ("asyncpg_suite.py", "py_asyncpg"),
    ] {
        for n in nodes() {
            n.fresh_db(db, "postgres");
        }
        let direct = run_suite(script, nodes()[0].port(), db);
        for n in nodes() {
            n.fresh_db(db, "postgres");
        }
        let through = run_suite(script, pm.port(), db);
        assert_eq!(through, direct, "{script}: through pgmulti vs directly");
        assert!(direct.lines().count() >= 8, "{script} printed {direct}");
        let sums: Vec<String> = nodes()
            .iter()
            .map(|n| {
                n.psql(
                    "postgres",
                    db,
                    "SELECT string_agg(t, ' ') FROM (SELECT c.relname || ':' || \
                     (xpath('/row/c/text()', query_to_xml(format('SELECT md5(string_agg(x::text, '','' ORDER BY x::text)) AS c FROM %I x', c.relname), false, true, '')))[1]::text AS t \
                     FROM pg_class c WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 1) s",
                )
            })
            .collect();
        assert!(
            sums.iter().all(|s| s == &sums[0]) && !sums[0].is_empty(),
            "{script}: nodes differ: {sums:?}"
        );
    }
}

/// psql's \lo_import / \lo_export / \lo_unlink (libpq's fast-path FunctionCalls) in
/// replication mode: every node holds the same object under the same OID; the export reads
/// back the file; a failing call fails alike everywhere; other functions are refused.
#[test]
fn large_objects_through_the_function_call_protocol() {
    let pm = Pgmulti::start(&replication_conf());
    for n in nodes() {
        n.fresh_db("lo", "postgres");
    }
    let dir = temp_dir("lo");
    let file = dir.join("in.txt");
    let data: String = (0..30_000).map(|i| format!("{i}\n")).collect();
    std::fs::write(&file, &data).unwrap();
    let psql = |cmd: &str| {
        let out = pm.psql("postgres", "lo", None, cmd);
        assert!(out.success(), "{cmd}: {}", out.stderr);
        out.stdout
    };
    psql(&format!("\\lo_import {}", file.display()));
    let oid: u32 = nodes()[0]
        .psql("postgres", "lo", "SELECT oid FROM pg_largeobject_metadata")
        .parse()
        .unwrap();
    assert!(
        oid >= 1 << 31,
        "the OID pgmulti chose, not the node's: {oid}"
    );
    let per_node: Vec<String> = nodes()
        .iter()
        .map(|n| {
            n.psql(
                "postgres",
                "lo",
                "SELECT m.oid || ' ' || md5(string_agg(data, ''::bytea ORDER BY pageno)) \
                 FROM pg_largeobject_metadata m JOIN pg_largeobject l ON l.loid = m.oid GROUP BY m.oid",
            )
        })
        .collect();
    assert!(per_node[0].starts_with(&format!("{oid} ")), "{per_node:?}");
    assert!(per_node.iter().all(|s| s == &per_node[0]), "{per_node:?}");
    let out = dir.join("out.txt");
    psql(&format!("\\lo_export {oid} {}", out.display()));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), data);
    let missing = pm.psql("postgres", "lo", None, "\\lo_export 12345 /dev/null");
    assert!(
        !missing.success() && missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );
    psql(&format!("\\lo_unlink {oid}"));
    for n in nodes() {
        assert_eq!(
            n.psql(
                "postgres",
                "lo",
                "SELECT count(*) FROM pg_largeobject_metadata"
            ),
            "0"
        );
    }
    // The same in SQL, as PostgreSQL's largeobject regression test writes it: the OID is
    // chosen once, and lo_open's descriptor exists on every node.
    psql(
        "CREATE TABLE stash (loid oid, fd integer);
         INSERT INTO stash (loid) SELECT lo_creat(42);
         BEGIN;
         UPDATE stash SET fd = lo_open(loid, CAST(x'20000' | x'40000' AS integer));
         SELECT lowrite(fd, 'I wandered lonely as a cloud') FROM stash;
         SELECT lo_lseek(fd, 2, 0) FROM stash;
         SELECT lo_close(fd) FROM stash;
         END;",
    );
    assert_eq!(
        psql("SELECT convert_from(lo_get(loid), 'UTF8') FROM stash").trim(),
        "I wandered lonely as a cloud"
    );
    let stash: Vec<String> = nodes()
        .iter()
        .map(|n| {
            n.psql(
                "postgres",
                "lo",
                "SELECT loid || ' ' || md5(lo_get(loid)) FROM stash",
            )
        })
        .collect();
    assert!(stash.iter().all(|s| s == &stash[0]), "{stash:?}");
    let refused = pm.psql(
        "postgres",
        "lo",
        None,
        "SELECT lo_creat(-1) FROM generate_series(1, 2)",
    );
    assert!(
        !refused.success() && refused.stderr.contains("large object"),
        "{}",
        refused.stderr
    );
    // random() by the fast path: what it does is not pgmulti's to know.
    let mut raw = RawClient::connect(pm.port(), "postgres", "lo");
    let mut call = Vec::new();
    call.extend(1598u32.to_be_bytes());
    call.extend([0, 0, 0, 0, 0, 1]);
    raw.send(&message(b'F', &call));
    let (tags, status) = raw.read_until_ready();
    assert_eq!((tags, status), (vec![b'E', b'Z'], b'I'));
    let admin = pm.psql("postgres", "pgmulti", None, "SHOW NODES");
    assert_eq!(admin.stdout.matches("up").count(), 3, "{}", admin.stdout);
}

/// psql's `\d` looks a table's OID up, then asks for its columns by that OID: the session's
/// reads must reach one node, whose OIDs they are.
#[test]
fn psql_describe_shows_what_it_shows_directly() {
    let pm = Pgmulti::start(&replication_conf());
    for n in nodes() {
        n.fresh_db("describe", "postgres");
    }
    let out = pm.psql(
        "postgres",
        "describe",
        None,
        "CREATE TABLE d (id int PRIMARY KEY, name text NOT NULL, at timestamptz DEFAULT now());
         CREATE INDEX ON d (name)",
    );
    assert!(out.success(), "{}", out.stderr);
    let direct = std::process::Command::new("psql")
        .args([
            "-X",
            "-h",
            nodes()[0].host(),
            "-p",
            &nodes()[0].port().to_string(),
        ])
        .args(["-U", "postgres", "-d", "describe", "-c", "\\d d"])
        .output()
        .unwrap();
    let direct = String::from_utf8_lossy(&direct.stdout).into_owned();
    assert!(direct.contains("timestamptz") || direct.contains("timestamp with time zone"));
    for _ in 0..6 {
        let through = pm.psql("postgres", "describe", None, "\\d d");
        assert!(through.success(), "{}", through.stderr);
        let shown = |s: &str| s.lines().filter(|l| l.contains('|')).count();
        assert_eq!(
            shown(&through.stdout),
            shown(&direct) - 1,
            "{}\nvs\n{direct}",
            through.stdout
        );
    }
}

/// Patterns from PostgreSQL's regression suite that replication mode got wrong: each one
/// answered as PostgreSQL answers it, no node detached, the nodes identical.
#[test]
fn regression_suite_patterns_run_as_directly() {
    let pm = Pgmulti::start(&replication_conf());
    for n in nodes() {
        n.fresh_db("patterns", "postgres");
    }
    let ok = |sql: &str| {
        let out = pm.psql("postgres", "patterns", None, sql);
        assert!(out.success(), "{sql}: {}", out.stderr);
        out.stdout.trim().to_string()
    };
    // A view keeps now() and current_date in its definition.
    ok("CREATE VIEW v AS SELECT current_date AS d, now() AS n");
    assert!(ok("SELECT pg_get_viewdef('v')").contains("CURRENT_DATE"));
    // A user function whose name starts like a built-in's (make_…) may write.
    ok("CREATE TABLE made (x int);
        CREATE FUNCTION make_row() RETURNS int LANGUAGE sql AS 'INSERT INTO made VALUES (1) RETURNING x'");
    ok("SELECT make_row()");
    for n in nodes() {
        assert_eq!(
            n.psql("postgres", "patterns", "SELECT count(*) FROM made"),
            "1"
        );
    }
    // REINDEX and CLUSTER of a partitioned table refuse a transaction block.
    ok(
        "CREATE TABLE p (id int PRIMARY KEY) PARTITION BY RANGE (id);
        CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100);
        INSERT INTO p VALUES (1), (2)",
    );
    ok("REINDEX TABLE p");
    // Arrays assigned element by element; a table with a rule; a catalog row by its OID.
    ok("CREATE TABLE arr (id int PRIMARY KEY, a int[]); INSERT INTO arr VALUES (1, '{1,2,3}')");
    ok("UPDATE arr SET a[1] = 42, a[2] = 77 WHERE id = (SELECT min(id) FROM arr)");
    assert_eq!(ok("SELECT a FROM arr"), "{42,77,3}");
    ok(
        "CREATE TABLE log (n int); CREATE TABLE ruled (id int PRIMARY KEY, v int);
        CREATE RULE also_log AS ON UPDATE TO ruled DO ALSO INSERT INTO log VALUES (NEW.v);
        INSERT INTO ruled VALUES (1, 0)",
    );
    ok("UPDATE ruled SET v = v + 1 WHERE id = (SELECT min(id) FROM ruled)");
    ok("UPDATE pg_class SET reltuples = 7 WHERE relname = 'arr'");
    for n in nodes() {
        assert_eq!(
            n.psql(
                "postgres",
                "patterns",
                "SELECT reltuples FROM pg_class WHERE relname = 'arr'"
            ),
            "7"
        );
        assert_eq!(n.psql("postgres", "patterns", "SELECT v FROM ruled"), "1");
    }
    // COMMIT AND CHAIN of a failed transaction starts the next one, as it was.
    let chain = |port: u16| {
        let mut raw = RawClient::connect(port, "postgres", "patterns");
        raw.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
        raw.query("SELECT 1/0");
        let (_, status) = raw.query("COMMIT AND CHAIN").pop().unwrap();
        let isolation = raw.query_value("SHOW transaction_isolation");
        raw.query("COMMIT");
        (status, isolation)
    };
    let direct = chain(nodes()[0].port());
    assert_eq!(direct.0, b"T", "a chained transaction is open");
    assert_eq!(chain(pm.port()), direct);
    let mut raw = RawClient::connect(pm.port(), "postgres", "patterns");
    // COPY FROM STDIN inside a multi-statement query: a clear error, not a hang.
    let got = raw.query("SELECT 0; COPY made FROM STDIN; SELECT 1");
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags.last(), Some(&b'Z'));
    assert!(tags.contains(&b'E'), "{tags:?}");
    let admin = pm.psql("postgres", "pgmulti", None, "SHOW NODES");
    assert_eq!(admin.stdout.matches("up").count(), 3, "{}", admin.stdout);
    let sums: Vec<String> = nodes()
        .iter()
        .map(|n| n.psql("postgres", "patterns", "SELECT md5(string_agg(t::text, ',')) FROM (SELECT * FROM arr UNION ALL SELECT id, ARRAY[v] FROM ruled) t"))
        .collect();
    assert!(sums.iter().all(|s| s == &sums[0]), "{sums:?}");
}
