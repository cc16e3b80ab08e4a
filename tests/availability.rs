//! Losing one connection to a node is not losing the node (`mode = replication`): a client
//! that terminates its own backend, a DBA who terminates one, a node's
//! `idle_session_timeout` — the client gets a retryable 40001 for what was in flight, its
//! session goes on (reconnected to the node before its next transaction), no node is
//! detached and the nodes stay identical.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;

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

/// pgmulti over the three nodes, with `db` fresh on each (then `on_node1` run on node 1)
/// and `t (id 1, n 0)` in it.
fn setup(db: &str, on_node1: &str) -> Pgmulti {
    setup_with(db, on_node1, &[])
}

/// As `setup`, with more configuration lines.
fn setup_with(db: &str, on_node1: &str, lines: &[&str]) -> Pgmulti {
    let [n0, n1, n2] = nodes();
    for n in nodes() {
        n.fresh_db(db, "postgres");
    }
    if !on_node1.is_empty() {
        n1.psql("postgres", "postgres", on_node1);
    }
    let mut conf = PgmultiConf::relay(n0)
        .mode("replication")
        .backend(n1.host(), n1.port())
        .backend(n2.host(), n2.port())
        .line("admin_users = 'postgres'");
    for l in lines {
        conf = conf.line(l);
    }
    let pm = Pgmulti::start(&conf);
    let out = pm.psql(
        "postgres",
        db,
        None,
        "CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t VALUES (1, 0)",
    );
    assert!(out.success(), "{}", out.stderr);
    pm
}

/// Every node is up, and each holds `n` in t.
fn all_up_with(pm: &Pgmulti, db: &str, n: i32) {
    let show = pm.psql("postgres", "pgmulti", None, "SHOW NODES");
    assert_eq!(
        show.stdout.lines().filter(|l| l.contains("|up|")).count(),
        3,
        "a node was detached:\n{}\n{}",
        show.stdout,
        pm.log()
    );
    for node in nodes() {
        assert_eq!(
            node.psql("postgres", db, "SELECT n FROM t"),
            n.to_string(),
            "node on port {}",
            node.port()
        );
    }
}

fn bump(c: &mut postgres::Client) -> Result<u64, postgres::Error> {
    c.execute("UPDATE t SET n = n + 1 WHERE id = 1", &[])
}

fn is_retryable(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
}

/// Terminate the backends of `db` on `node` (not the one asking); how many there were.
fn terminate_backends(node: &Node, db: &str) -> u32 {
    node.psql(
        "postgres",
        db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .parse()
    .unwrap()
}

#[test]
fn a_client_terminating_its_own_backend_fails_its_statement_not_the_node() {
    let pm = setup("own", "");
    let mut c = connect(&pm.conn_str("postgres", "own"));
    for round in 1..=3 {
        let e = c
            .simple_query("SELECT pg_terminate_backend(pg_backend_pid())")
            .expect_err("the statement's backend is gone");
        assert!(is_retryable(&e), "round {round}: {e:?}");
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("was lost")),
            "one message of pgmulti's, not the node's FATAL: {e:?}"
        );
        assert_eq!(bump(&mut c).unwrap(), 1, "the session goes on");
    }
    all_up_with(&pm, "own", 3);
}

#[test]
fn a_dba_terminating_a_backend_detaches_nothing() {
    let pm = setup("dba", "");
    let mut c = connect(&pm.conn_str("postgres", "dba"));
    bump(&mut c).unwrap();
    // Between transactions: the next statement simply runs.
    assert!(terminate_backends(&nodes()[1], "dba") >= 1);
    std::thread::sleep(Duration::from_millis(200));
    bump(&mut c).unwrap();
    // Inside a transaction: it fails as a whole, retryably; the next one runs.
    c.batch_execute("BEGIN").unwrap();
    bump(&mut c).unwrap();
    assert!(terminate_backends(&nodes()[2], "dba") >= 1);
    std::thread::sleep(Duration::from_millis(200));
    let e = bump(&mut c).expect_err("the transaction lost node 2's part");
    assert!(is_retryable(&e), "{e:?}");
    c.batch_execute("ROLLBACK").unwrap();
    bump(&mut c).unwrap();
    // Lost between the last statement and COMMIT: the COMMIT fails (it is not a silent
    // ROLLBACK), and nothing of the transaction is anywhere.
    c.batch_execute("BEGIN").unwrap();
    bump(&mut c).unwrap();
    assert!(terminate_backends(&nodes()[0], "dba") >= 1);
    std::thread::sleep(Duration::from_millis(200));
    let e = c
        .batch_execute("COMMIT")
        .expect_err("the lead lost its part");
    assert!(is_retryable(&e), "{e:?}");
    bump(&mut c).unwrap();
    all_up_with(&pm, "dba", 4);
}

#[test]
fn a_nodes_idle_session_timeout_detaches_nothing() {
    let pm = setup(
        "idle",
        "ALTER DATABASE idle SET idle_session_timeout = '300ms'",
    );
    let mut c = connect(&pm.conn_str("postgres", "idle"));
    for _ in 0..3 {
        bump(&mut c).unwrap();
        std::thread::sleep(Duration::from_millis(800));
    }
    assert!(
        pm.log().contains("idle-session timeout"),
        "node 1 did end the session's connection:\n{}",
        pm.log()
    );
    all_up_with(&pm, "idle", 3);
}

/// `pg_terminate_backend(N)` would hit whatever process N is on each node: refused, and
/// the node's backend with that number lives on.
#[test]
fn a_given_process_number_reaches_no_node() {
    let pm = setup("pids", "");
    let mut direct = connect(&nodes()[1].conn_str("postgres", "pids"));
    let pid: i32 = direct
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let mut c = connect(&pm.conn_str("postgres", "pids"));
    for sql in [
        format!("SELECT pg_terminate_backend({pid})"),
        format!("SELECT pg_cancel_backend({pid})"),
    ] {
        let e = c.simple_query(&sql).expect_err("refused");
        assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e:?}");
        let e = c
            .execute(&sql, &[])
            .expect_err("refused as a prepared statement too");
        assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e:?}");
    }
    let alive: i32 = direct.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(alive, 1, "the node's backend {pid} was not touched");
    bump(&mut c).unwrap();
    all_up_with(&pm, "pids", 1);
}

/// An error longer than pgmulti's buffers reaches the client (shortened, with its SQLSTATE),
/// never just a ReadyForQuery that looks like success.
#[test]
fn an_error_larger_than_a_buffer_reaches_the_client() {
    let pm = setup("bigerr", "");
    let mut c = connect(&pm.conn_str("postgres", "bigerr"));
    for _ in 0..2 {
        let e = c
            .simple_query("SELECT repeat('x', 100000)::int")
            .expect_err("not an integer");
        let db = e.as_db_error().expect("an error from the server side");
        assert_eq!(db.code(), &SqlState::INVALID_TEXT_REPRESENTATION, "{db:?}");
        assert!(db
            .message()
            .starts_with("invalid input syntax for type integer"));
        assert!(db.message().contains("cut by pgmulti"), "{}", db.message());
        let e = c
            .execute("UPDATE t SET n = repeat('y', 100000)::int", &[])
            .expect_err("not an integer");
        assert_eq!(e.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
        // A short message with a huge detail: the message arrives whole, the detail cut.
        let e = c
            .simple_query(
                "DO $$ BEGIN RAISE EXCEPTION 'short' USING ERRCODE = '22023', DETAIL = repeat('d', 100000); END $$",
            )
            .expect_err("raised");
        let db = e.as_db_error().expect("an error from the server side");
        assert_eq!(db.code(), &SqlState::INVALID_PARAMETER_VALUE, "{db:?}");
        assert_eq!(db.message(), "short");
        let detail = db.detail().unwrap_or_default();
        assert!(
            detail.starts_with("ddd") && detail.contains("cut by pgmulti"),
            "{db:?}"
        );
    }
    bump(&mut c).unwrap();
    all_up_with(&pm, "bigerr", 1);
}

/// A Query (or any message but CopyData, CopyDone, CopyFail, Flush, Sync) in the middle of
/// COPY FROM STDIN fails the COPY, as PostgreSQL does: the client gets an error and
/// ReadyForQuery, nothing of the COPY stays, and no lock is left behind.
#[test]
fn a_query_during_copy_fails_the_copy_instead_of_hanging() {
    let pm = setup("copyq", "");
    let mut raw = RawClient::connect(pm.port(), "postgres", "copyq");
    raw.send(&message(b'Q', b"COPY t FROM STDIN\0"));
    assert_eq!(raw.read_message().0, b'G', "CopyInResponse");
    raw.send(&message(b'd', b"2\t5\n"));
    raw.send(&message(b'Q', b"SELECT 1\0"));
    let (tags, status) = raw.read_until_ready();
    assert!(tags.contains(&b'E'), "an error: {tags:?}");
    assert_eq!(status, b'I');
    raw.send(&message(b'Q', b"SELECT 1\0"));
    let (tags, _) = raw.read_until_ready();
    assert_eq!(tags, b"TDCZ", "the session goes on");
    // No lock left: another session writes the table at once.
    let mut c = connect(&pm.conn_str("postgres", "copyq"));
    c.batch_execute("SET lock_timeout = '5s'").unwrap();
    bump(&mut c).unwrap();
    all_up_with(&pm, "copyq", 1);
    for node in nodes() {
        assert_eq!(
            node.psql("postgres", "copyq", "SELECT count(*) FROM t"),
            "1"
        );
    }
}

/// psycopg's executemany: two statements prepared with other parameter types, Sync, then a
/// lone Flush; the Flush has nothing to answer, and the session goes on.
#[test]
fn a_flush_after_sync_does_not_hang_the_session() {
    let pm = setup("flush", "");
    let mut raw = RawClient::connect(pm.port(), "postgres", "flush");
    let mut batch = Vec::new();
    for (name, oid, value) in [("s0", 21u32, vec![0u8, 7]), ("s1", 23, vec![0, 0, 0, 8])] {
        let mut parse = format!("{name}\0INSERT INTO t VALUES ($1, 0)\0").into_bytes();
        parse.extend(1u16.to_be_bytes());
        parse.extend(oid.to_be_bytes());
        batch.extend(message(b'P', &parse));
        let mut bind = format!("\0{name}\0").into_bytes();
        bind.extend([0, 1, 0, 1, 0, 1]); // one binary format, one parameter
        bind.extend((value.len() as u32).to_be_bytes());
        bind.extend(&value);
        bind.extend([0, 0]);
        batch.extend(message(b'B', &bind));
        batch.extend(message(b'D', b"P\0"));
        batch.extend(message(b'E', b"\0\0\0\0\0"));
    }
    batch.extend(message(b'S', b""));
    batch.extend(message(b'H', b""));
    raw.send(&batch);
    let (tags, status) = raw.read_until_ready();
    assert_eq!(tags, b"12nC12nCZ", "{tags:?}");
    assert_eq!(status, b'I');
    raw.send(&message(b'Q', b"SELECT count(*) FROM t\0"));
    let (tags, _) = raw.read_until_ready();
    assert_eq!(tags, b"TDCZ", "answered after the Flush");
    for node in nodes() {
        assert_eq!(
            node.psql("postgres", "flush", "SELECT count(*) FROM t"),
            "3"
        );
    }
}

/// A replica whose statement waits on a lock only it has (a DBA's session on that node):
/// the lead answered, the replica never does. With `node_response_timeout` the statement
/// there is canceled and the client never waits forever. Inside a transaction nothing was
/// committed anywhere: the client gets a retryable 40001, no node is detached, and once the
/// lock is gone the retry succeeds on every node. An autocommit write the other replicas
/// have already committed cannot be undone: the late node is detached (saying why) and the
/// client's write succeeds.
#[test]
fn a_replica_that_does_not_answer_in_time_is_canceled_instead_of_waited_for() {
    late_replica("sync", "late_replica");
}

/// The same with `write_ack = async`, where the COMMIT waits for the replicas running the
/// transaction's statements behind the lead.
#[test]
fn a_replica_behind_an_async_commit_is_canceled_instead_of_waited_for() {
    late_replica("async", "late_replica_async");
}

fn late_replica(write_ack: &str, db: &str) {
    let [n0, n1, n2] = nodes();
    let ack = format!("write_ack = {write_ack}");
    let pm = setup_with(db, "", &[&ack, "node_response_timeout = '2s'"]);
    let mut dba = connect(&n1.conn_str("postgres", db));
    // Run `f` on a client of pgmulti; its outcome, or a panic if it waits 30 s.
    let within = |f: fn(&mut postgres::Client) -> Result<u64, postgres::Error>| {
        let conn = pm.conn_str("postgres", db);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut c = connect(&conn);
            let started = std::time::Instant::now();
            let outcome = f(&mut c).map_err(|e| {
                let message = e
                    .as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_string());
                (is_retryable(&e), message)
            });
            let _ = tx.send((outcome, started.elapsed()));
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the client still waits for the replica after 30 s")
    };

    dba.batch_execute("BEGIN; SELECT * FROM t WHERE id = 1 FOR UPDATE")
        .unwrap();
    let (outcome, took) = within(|c| {
        c.batch_execute("BEGIN")?;
        let n = bump(c)?;
        c.batch_execute("COMMIT")?;
        Ok(n)
    });
    let (retryable, message) =
        outcome.expect_err("the transaction committed while node 1 could not run it");
    assert!(
        retryable && message.contains("node_response_timeout"),
        "after {took:?}: {message}\n{}",
        pm.log()
    );
    eprintln!("in a transaction: failed after {took:?}: {message}");
    dba.batch_execute("COMMIT").unwrap();
    all_up_with(&pm, db, 0);
    let mut c = connect(&pm.conn_str("postgres", db));
    assert_eq!(bump(&mut c).unwrap(), 1);
    all_up_with(&pm, db, 1);

    if write_ack == "async" {
        return; // an autocommit write is not run behind
    }
    dba.batch_execute("BEGIN; SELECT * FROM t WHERE id = 1 FOR UPDATE")
        .unwrap();
    let (outcome, took) = within(bump);
    assert_eq!(outcome, Ok(1), "after {took:?}");
    let show = pm.psql("postgres", "pgmulti", None, "SHOW NODES").stdout;
    let node1 = show.lines().nth(1).unwrap_or_default();
    assert!(
        node1.contains("|down|") && node1.contains("node_response_timeout"),
        "{show}"
    );
    dba.batch_execute("COMMIT").unwrap();
    for n in [n0, n2] {
        assert_eq!(n.psql("postgres", db, "SELECT n FROM t"), "2");
    }
}

/// A session that only waits for notifications keeps getting them after its connection to
/// the lead is lost (a DBA terminates its backend): pgmulti connects it to the lead again
/// and runs its LISTENs there by itself, though the client sends nothing. UNLISTEN is
/// followed too: a channel left is not listened to again.
#[test]
fn a_listening_session_gets_notifications_after_losing_its_lead_connection() {
    let pm = setup("listen_again", "");
    let [n0, ..] = nodes();
    let mut waiter = connect(&pm.conn_str("postgres", "listen_again"));
    waiter
        .batch_execute("LISTEN Jobs; LISTEN other; UNLISTEN other")
        .unwrap();
    // A LISTEN counts only once its transaction commits.
    waiter
        .batch_execute("BEGIN; LISTEN lost; ROLLBACK; BEGIN; LISTEN kept; COMMIT")
        .unwrap();
    let mut sender = connect(&pm.conn_str("postgres", "listen_again"));
    assert!(terminate_backends(n0, "listen_again") >= 1);
    std::thread::sleep(Duration::from_millis(500));
    // The sender's own lead connection was lost too: its first statement may fail (40001).
    let notify = |c: &mut postgres::Client, payload: &str| {
        for _ in 0..5 {
            let sql = format!(
                "NOTIFY jobs, '{payload}'; NOTIFY other, 'no'; NOTIFY lost, 'no'; NOTIFY kept, 'yes'"
            );
            match c.batch_execute(&sql) {
                Ok(()) => return,
                Err(e) if is_retryable(&e) => continue,
                Err(e) => panic!("NOTIFY: {e}"),
            }
        }
        panic!("NOTIFY kept failing");
    };
    notify(&mut sender, "after");
    let mut got = Vec::new();
    let mut notes = waiter.notifications();
    let mut it = notes.timeout_iter(Duration::from_secs(5));
    while let Some(n) = it.next().unwrap() {
        got.push(format!("{}:{}", n.channel(), n.payload()));
    }
    assert_eq!(got, ["jobs:after", "kept:yes"], "{}", pm.log());
    all_up_with(&pm, "listen_again", 0);
}

/// Ten clients each sending an 8 MB statement at once: replication mode keeps each whole
/// (and a copy per node on its way), so without a bound they held about 10 × 10 MB at once.
/// Within `max_message_memory` they take turns; every one is answered.
#[test]
fn large_statements_from_many_clients_stay_within_max_message_memory() {
    let pm = setup_with("bigmsg", "", &["max_message_memory = '32MB'"]);
    let size = 8 << 20;
    let sql = format!("SELECT length('{}')", "x".repeat(size));
    let answers: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..10)
            .map(|_| {
                s.spawn(|| {
                    let mut c = connect(&pm.conn_str("postgres", "bigmsg"));
                    let rows = c.simple_query(&sql).unwrap();
                    rows.iter()
                        .find_map(|m| match m {
                            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                            _ => None,
                        })
                        .unwrap_or_default()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(answers, vec![size.to_string(); 10]);
    let peak_kb = peak_memory_kb(&pm);
    // One 8 MB statement at a time is about 8 MB × (1 + 3 nodes) at most.
    eprintln!("pgmulti's peak memory: {} MB", peak_kb / 1024);
    assert!(
        peak_kb < 60 * 1024,
        "pgmulti's peak memory was {} MB",
        peak_kb / 1024
    );
    all_up_with(&pm, "bigmsg", 0);
}

/// A flood of huge statements keeps pgmulti's loop busy for seconds (each is lexed and
/// rewritten whole, slowly in a debug build). Health checks that answered in time but were
/// read late took that for the nodes' fault and detached every one of them.
#[test]
fn a_loop_busy_with_huge_statements_detaches_no_node() {
    let pm = setup_with(
        "flood",
        "",
        &[
            "health_check_period = 1",
            "health_check_timeout = 1",
            "max_message_memory = '2GB'",
        ],
    );
    let size = 20 << 20;
    let sql = format!("SELECT length('{}')", "x".repeat(size));
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let mut c = connect(&pm.conn_str("postgres", "flood"));
                c.query(&sql, &[]).unwrap();
            });
        }
    });
    all_up_with(&pm, "flood", 0);
}

/// A single CopyData message of 80 MB (rust-postgres sends what one `write` is given as
/// one; PostgreSQL takes up to 1 GB): streamed to the nodes as it arrives instead of held
/// whole. Before, replication mode refused any message over 64 MB as a protocol violation,
/// and held a smaller one whole plus a copy per node.
#[test]
fn a_copy_data_message_larger_than_any_buffer_streams_to_the_nodes() {
    use std::io::Write;
    let pm = setup_with("bigcopy", "", &["max_message_memory = '16MB'"]);
    let out = pm.psql(
        "postgres",
        "bigcopy",
        None,
        "CREATE TABLE blob (id int PRIMARY KEY, v text)",
    );
    assert!(out.success(), "{}", out.stderr);
    let size = 80 << 20;
    let mut row = b"1\t".to_vec();
    row.resize(2 + size, b'x');
    row.push(b'\n');
    let mut c = connect(&pm.conn_str("postgres", "bigcopy"));
    let mut w = c.copy_in("COPY blob FROM STDIN").unwrap();
    w.write_all(&row).unwrap();
    assert_eq!(w.finish().unwrap(), 1, "{}", pm.log());
    // One that fails on the nodes (a column too many) fails for the client; the session
    // goes on.
    row[0] = b'2';
    row.splice(size..size, b"\textra".iter().copied());
    let mut w = c.copy_in("COPY blob FROM STDIN").unwrap();
    let failed = w.write_all(&row).map_err(|e| e.to_string()).and_then(|_| {
        w.finish().map_err(|e| {
            e.as_db_error()
                .map_or(e.to_string(), |d| d.code().code().to_string())
        })
    });
    assert_eq!(failed, Err("22P04".to_string()), "{}", pm.log());
    assert_eq!(c.execute("SELECT 1", &[]).unwrap(), 1);
    for node in nodes() {
        assert_eq!(
            node.psql("postgres", "bigcopy", "SELECT length(v) FROM blob"),
            size.to_string()
        );
    }
    let peak_kb = peak_memory_kb(&pm);
    eprintln!("pgmulti's peak memory: {} MB", peak_kb / 1024);
    assert!(peak_kb < 48 * 1024, "peak memory {} MB", peak_kb / 1024);
    all_up_with(&pm, "bigcopy", 0);
}

/// pgmulti's peak resident memory so far (VmHWM), in kB.
fn peak_memory_kb(pm: &Pgmulti) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pm.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `write_ack = async`: inside a transaction the replicas run the client's writes behind
/// the lead. A replica that cannot run them (here a DBA's lock holds it) must not make
/// pgmulti pile them up: past the backlog cap (4 MB per node) the session stops reading
/// its client, which then waits, as it would on a slow server. Without the cap, all 64
/// statements of 1 MB were taken in while the replica stood still, and held in memory.
#[test]
fn a_stalled_replica_in_an_async_transaction_pushes_back_on_its_client() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pm = setup_with("backlog", "", &["write_ack = async"]);
    let out = pm.psql(
        "postgres",
        "backlog",
        None,
        "CREATE TABLE big (id int PRIMARY KEY, v text)",
    );
    assert!(out.success(), "{}", out.stderr);
    let mut dba = connect(&nodes()[1].conn_str("postgres", "backlog"));
    dba.batch_execute("BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    const STATEMENTS: usize = 64;
    let done = AtomicUsize::new(0);
    let (stalled_at, peak_kb, outcome) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut c = connect(&pm.conn_str("postgres", "backlog"));
            let big = "x".repeat(1 << 20);
            c.batch_execute("BEGIN")?;
            for i in 0..STATEMENTS {
                c.batch_execute(&format!("INSERT INTO big VALUES ({i}, '{big}')"))?;
                done.fetch_add(1, Ordering::SeqCst);
            }
            c.batch_execute("COMMIT")
        });
        // Wait until the writer is done or has made no progress for 3 s.
        let (mut last, mut since) = (usize::MAX, std::time::Instant::now());
        let started = std::time::Instant::now();
        loop {
            let now = done.load(Ordering::SeqCst);
            if now == STATEMENTS || started.elapsed() > Duration::from_secs(25) {
                break;
            }
            if now != last {
                (last, since) = (now, std::time::Instant::now());
            } else if since.elapsed() > Duration::from_secs(3) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let stalled_at = done.load(Ordering::SeqCst);
        let peak_kb = peak_memory_kb(&pm);
        dba.batch_execute("COMMIT").unwrap();
        (stalled_at, peak_kb, writer.join().unwrap())
    });
    eprintln!(
        "taken in while the replica was held: {stalled_at} of {STATEMENTS} MB; peak memory {} MB",
        peak_kb / 1024
    );
    assert!(
        stalled_at < STATEMENTS / 2,
        "{stalled_at} statements of 1 MB were taken in while a replica ran none\n{}",
        pm.log()
    );
    assert!(peak_kb < 48 * 1024, "peak memory {} MB", peak_kb / 1024);
    outcome.expect("the transaction commits once the replica runs again");
    for node in nodes() {
        assert_eq!(
            node.psql("postgres", "backlog", "SELECT count(*) FROM big"),
            STATEMENTS.to_string()
        );
    }
    all_up_with(&pm, "backlog", 0);
}

/// A session with a temporary table that loses one node's connection cannot be joined to
/// that node again (the table is gone there): it ends with a clear error, as a direct
/// client's session ends with its backend, instead of going on with nodes that differ.
#[test]
fn a_session_with_temporary_tables_ends_when_a_node_must_rejoin_it() {
    let pm = setup("tempgone", "");
    // Raw protocol: a driver may report a FATAL that comes with the close as just "closed".
    let mut c = RawClient::connect(pm.port(), "postgres", "tempgone");
    let made = c.query("CREATE TEMP TABLE scratch (v int); INSERT INTO scratch VALUES (1)");
    assert!(made.iter().all(|(tag, _)| *tag != b'E'), "{made:?}");
    assert!(terminate_backends(&nodes()[1], "tempgone") >= 1);
    std::thread::sleep(Duration::from_millis(300));
    let mut errors = Vec::new();
    'requests: for _ in 0..3 {
        c.send(&message(b'Q', b"INSERT INTO scratch VALUES (2)\0"));
        loop {
            let (tag, body) = c.read_message();
            match tag {
                b'E' => {
                    let text = String::from_utf8_lossy(&body).to_string();
                    errors.push(text.clone());
                    if text.contains("FATAL") {
                        break 'requests;
                    }
                }
                b'Z' => break,
                _ => {}
            }
        }
    }
    let fatal = errors.last().cloned().unwrap_or_default();
    assert!(
        fatal.contains("C08006") && fatal.contains("temporary tables"),
        "{errors:?}\n{}",
        pm.log()
    );
    let mut rest = Vec::new();
    let closed = std::io::Read::read_to_end(&mut c.stream, &mut rest);
    assert!(closed.is_ok() && rest.is_empty(), "the session is closed");
    // Other sessions and every node go on.
    let mut other = connect(&pm.conn_str("postgres", "tempgone"));
    bump(&mut other).unwrap();
    all_up_with(&pm, "tempgone", 1);
}
