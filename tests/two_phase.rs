//! `commit_protocol = two_phase` over three real nodes: PREPARE TRANSACTION everywhere, the
//! decision on disk, COMMIT PREPARED everywhere — and a pgmulti killed at any moment leaves
//! nothing prepared behind after its restart, loses no acknowledged commit, and the nodes
//! stay identical.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use common::*;

fn nodes() -> &'static [Node; 3] {
    static NODES: OnceLock<[Node; 3]> = OnceLock::new();
    NODES.get_or_init(|| {
        let opts = || NodeOptions {
            extra_conf: vec!["max_prepared_transactions = 50".into()],
            ..Default::default()
        };
        [
            Node::start(opts()),
            Node::start(opts()),
            Node::start(opts()),
        ]
    })
}

fn conf(state_dir: &std::path::Path) -> PgmultiConf {
    let [n0, n1, n2] = nodes();
    PgmultiConf::relay(n0)
        .mode("replication")
        .backend(n1.host(), n1.port())
        .backend(n2.host(), n2.port())
        .line("commit_protocol = two_phase")
        .line(&format!(
            "two_phase_log = '{}'",
            state_dir.join("decisions").display()
        ))
        .line(&format!(
            "status_file = '{}'",
            state_dir.join("status").display()
        ))
}

fn prepared_left(db: &str) -> Vec<String> {
    nodes()
        .iter()
        .map(|n| {
            n.psql(
                "postgres",
                db,
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
            )
        })
        .collect()
}

/// A PREPARE sent just before a kill can reach a node after the restart looked: pgmulti
/// looks again for a while, so give it a few seconds.
fn wait_nothing_prepared(db: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = prepared_left(db);
        if left == ["0", "0", "0"] {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: prepared transactions left behind: {left:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn checksum(node: &Node, db: &str, table: &str) -> String {
    node.psql("postgres", db, &format!("SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') FROM {table} t"))
}

#[test]
fn tpcb_with_two_phase_commit_is_consistent_and_leaves_nothing_prepared() {
    for n in nodes() {
        n.fresh_db("tpc", "postgres");
    }
    let pm = Pgmulti::start(&conf(&temp_dir("2pc-tpcb")));
    let port = pm.port().to_string();
    let base = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    let (ok, out, err) = pgbench(&[&base[..], &["-i", "-s", "1", "tpc"]].concat(), &[]);
    assert!(ok, "pgbench -i:\n{out}\n{err}");
    for mode in ["simple", "prepared"] {
        let (ok, out, err) = pgbench(
            &[
                &base[..],
                &["-M", mode, "-c", "4", "-j", "2", "-T", "6", "tpc"],
            ]
            .concat(),
            &[],
        );
        assert!(ok, "{out}\n{err}");
        let s = parse_pgbench_summary(&out).expect("summary");
        assert_eq!(s.failed, 0, "{out}");
        assert!(s.processed > 0);
    }
    assert_eq!(prepared_left("tpc"), ["0", "0", "0"]);
    for table in [
        "pgbench_accounts",
        "pgbench_tellers",
        "pgbench_branches",
        "pgbench_history",
    ] {
        let first = checksum(&nodes()[0], "tpc", table);
        for n in &nodes()[1..] {
            assert_eq!(checksum(n, "tpc", table), first, "{table} differs");
        }
    }
}

#[test]
fn refuses_to_start_without_prepared_transactions() {
    let node = Node::start(NodeOptions::default());
    let dir = temp_dir("2pc-refuse");
    let c = PgmultiConf::relay(&node)
        .mode("replication")
        .line("commit_protocol = two_phase")
        .line(&format!(
            "two_phase_log = '{}'",
            dir.join("decisions").display()
        ));
    let file = c.write(&dir, free_port());
    let out = std::process::Command::new(pgmulti_bin())
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_prepared_transactions = 0"), "{stderr}");
}

/// Clients insert numbered rows (autocommit, so each is a two-phase commit); pgmulti is
/// killed at a random moment; after a restart every acknowledged row is on every node.
#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_commit() {
    for n in nodes() {
        n.fresh_db("crash", "postgres");
        n.psql(
            "postgres",
            "crash",
            "CREATE TABLE acked (client int, n int, PRIMARY KEY (client, n))",
        );
    }
    let state = temp_dir("2pc-crash");
    let acked: Arc<Mutex<Vec<(i32, i32)>>> = Arc::default();
    let mut seed = std::process::id() as u64;
    for round in 0..20 {
        let mut pm = Pgmulti::start(&conf(&state));
        wait_nothing_prepared("crash", &format!("round {round}"));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|client| {
                let conn = pm.conn_str("postgres", "crash");
                let acked = acked.clone();
                let stop = stop.clone();
                thread::spawn(move || {
                    let Ok(mut c) = postgres::Client::connect(&conn, postgres::NoTls) else {
                        return;
                    };
                    let mut n = round * 100_000;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        if c.execute("INSERT INTO acked VALUES ($1, $2)", &[&client, &n])
                            .is_err()
                        {
                            return;
                        }
                        acked.lock().unwrap().push((client, n));
                    }
                })
            })
            .collect();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        thread::sleep(Duration::from_millis(150 + (seed >> 33) % 600));
        pm.signal(libc::SIGKILL);
        pm.wait_exit(Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
    }
    // A last restart resolves what the last kill left in doubt.
    let _pm = Pgmulti::start(&conf(&state));
    wait_nothing_prepared("crash", "after the last restart");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "too little load to mean anything: {}",
        acked.len()
    );
    let first = checksum(&nodes()[0], "crash", "acked");
    for n in &nodes()[1..] {
        assert_eq!(checksum(n, "crash", "acked"), first, "the nodes differ");
    }
    for n in nodes() {
        let rows: std::collections::HashSet<(i32, i32)> = n
            .psql(
                "postgres",
                "crash",
                "SELECT string_agg(client || ':' || n, ' ') FROM acked",
            )
            .split_whitespace()
            .filter_map(|p| p.split_once(':'))
            .map(|(c, n)| (c.parse().unwrap(), n.parse().unwrap()))
            .collect();
        let missing: Vec<_> = acked.iter().filter(|a| !rows.contains(a)).take(5).collect();
        assert!(
            missing.is_empty(),
            "acknowledged commits missing on a node: {missing:?}"
        );
    }
}

#[test]
fn a_failing_prepare_rolls_back_everywhere_and_the_client_gets_the_error() {
    for n in nodes() {
        n.fresh_db("prepfail", "postgres");
    }
    let pm = Pgmulti::start(&conf(&temp_dir("2pc-prepfail")));
    let mut client = connect(&pm.conn_str("postgres", "prepfail"));
    client
        .batch_execute(
            "CREATE TABLE u (v int UNIQUE DEFERRABLE INITIALLY DEFERRED); INSERT INTO u VALUES (1)",
        )
        .unwrap();
    // The duplicate is only detected when the transaction prepares.
    client
        .batch_execute("BEGIN; INSERT INTO u VALUES (1); INSERT INTO u VALUES (2)")
        .unwrap();
    let err = client.batch_execute("COMMIT").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23505"), "{err}");
    assert_eq!(prepared_left("prepfail"), ["0", "0", "0"]);
    for n in nodes() {
        assert_eq!(
            n.psql(
                "postgres",
                "prepfail",
                "SELECT string_agg(v::text, ',' ORDER BY v) FROM u"
            ),
            "1"
        );
    }
    // The session goes on.
    client.batch_execute("INSERT INTO u VALUES (3)").unwrap();
    assert_eq!(
        nodes()[2].psql("postgres", "prepfail", "SELECT count(*) FROM u"),
        "2"
    );
}

/// A client that goes away during its COMMIT: what the nodes prepared is still committed (or
/// rolled back) everywhere, not left prepared with its locks until pgmulti restarts.
#[test]
fn a_client_gone_during_its_commit_leaves_nothing_prepared() {
    for n in nodes() {
        n.fresh_db("prepgone", "postgres");
    }
    let pm = Pgmulti::start(&conf(&temp_dir("2pc-gone")));
    let mut setup = connect(&pm.conn_str("postgres", "prepgone"));
    setup
        .batch_execute("CREATE TABLE u (v int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        .unwrap();
    // On node 2 alone, an open transaction holds v = 5: the deferred check there, at
    // PREPARE, waits for it.
    let mut blocker = connect(&nodes()[2].conn_str("postgres", "prepgone"));
    blocker
        .batch_execute("BEGIN; INSERT INTO u VALUES (5)")
        .unwrap();
    let mut client = RawClient::connect(pm.port(), "postgres", "prepgone");
    client.query("BEGIN");
    client.query("INSERT INTO u VALUES (5)");
    client.send(&message(b'Q', b"COMMIT\0"));
    thread::sleep(Duration::from_millis(500));
    drop(client);
    thread::sleep(Duration::from_millis(300));
    blocker.batch_execute("ROLLBACK").unwrap();
    wait_nothing_prepared("prepgone", "after the client left during its COMMIT");
    let rows: Vec<String> = nodes()
        .iter()
        .map(|n| {
            n.psql(
                "postgres",
                "prepgone",
                "SELECT string_agg(v::text, ',') FROM u",
            )
        })
        .collect();
    assert_eq!(rows, ["5", "5", "5"], "{}", pm.log());
}
