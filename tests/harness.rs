//! Proves the test harness itself (tests/common) against real PostgreSQL nodes, without
//! pgmulti: node start-up, roles and auth methods, psql/pgbench helpers, the Rust client.

mod common;

use common::*;
use postgres::error::SqlState;
use postgres::{Client, NoTls};

#[test]
fn shared_node_answers_psql() {
    let node = shared_node();
    assert_eq!(node.psql("postgres", "postgres", "SELECT 1"), "1");
    assert_eq!(node.psql("alice", "app", "SELECT current_user"), "alice");
    assert_eq!(
        node.psql(
            "postgres",
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'"
        ),
        "alice"
    );
}

#[test]
fn shared_node_over_tcp_with_rust_client() {
    let node = shared_node();
    let mut client = Client::connect(&node.conn_str("postgres", "postgres"), NoTls).unwrap();
    let row = client.query_one("SELECT $1::int + 1", &[&41i32]).unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let version: String = client.query_one("SHOW server_version", &[]).unwrap().get(0);
    assert!(version.starts_with("15"), "server_version {version}");
}

#[test]
fn stored_password_formats() {
    let node = shared_node();
    let verifier = node.scram_verifier("alice");
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    let md5 = node.md5_hash("bob");
    assert!(md5.starts_with("md5") && md5.len() == 35, "{md5}");
}

#[test]
fn scram_node_checks_passwords_over_tcp() {
    let node = Node::start(NodeOptions::host_auth("scram-sha-256"));
    let conn = node.conn_str("alice", "app");
    let ok = psql(
        &[&conn, "-c", "SELECT current_user"],
        &[("PGPASSWORD", ALICE_PASSWORD)],
    );
    assert!(ok.success(), "{}", ok.stderr);
    assert_eq!(ok.stdout.trim(), "alice");

    let bad = psql(&[&conn, "-c", "SELECT 1"], &[("PGPASSWORD", "wrong")]);
    assert!(!bad.success());
    assert!(
        bad.stderr
            .contains("password authentication failed for user \"alice\""),
        "{}",
        bad.stderr
    );

    let err = connect_error(&format!("{conn} password=wrong"));
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    let mut client = Client::connect(&format!("{conn} password={ALICE_PASSWORD}"), NoTls).unwrap();
    client.simple_query("SELECT 1").unwrap();

    // The local socket stays trust.
    assert_eq!(node.psql("alice", "app", "SELECT 2"), "2");
    node.stop();
}

#[test]
fn md5_node_checks_passwords_over_tcp() {
    let node = Node::start(NodeOptions::host_auth("md5"));
    let conn = node.conn_str("bob", "postgres");
    let ok = psql(
        &[&conn, "-c", "SELECT current_user"],
        &[("PGPASSWORD", BOB_PASSWORD)],
    );
    assert!(ok.success(), "{}", ok.stderr);
    assert_eq!(ok.stdout.trim(), "bob");
    let err = connect_error(&format!("{conn} password=wrong"));
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
}

#[test]
fn pgbench_runs_and_summary_parses() {
    let node = shared_node();
    node.fresh_db("harness_bench", "postgres");
    let port = node.port().to_string();
    let base = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    let (ok, _, err) = pgbench(
        &[&base[..], &["-i", "-q", "-s", "1", "harness_bench"]].concat(),
        &[],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = pgbench(
        &[&base[..], &["-t", "20", "-c", "2", "harness_bench"]].concat(),
        &[],
    );
    assert!(ok, "{err}");
    let summary = parse_pgbench_summary(&out).expect("summary");
    assert_eq!(summary.processed, 40);
    assert_eq!(summary.failed, 0);
    assert!(summary.tps > 0.0);
    assert_eq!(
        node.psql(
            "postgres",
            "harness_bench",
            "SELECT count(*) FROM pgbench_history"
        ),
        "40"
    );
}

#[test]
fn pgbench_summary_parser() {
    let text = "transaction type: <builtin: TPC-B (sort of)>\n\
                number of transactions actually processed: 1234\n\
                number of failed transactions: 3 (0.243%)\n\
                latency average = 6.4 ms\n\
                tps = 1234.567890 (without initial connection time)\n";
    let s = parse_pgbench_summary(text).unwrap();
    assert_eq!((s.processed, s.failed), (1234, 3));
    assert!((s.tps - 1234.56789).abs() < 1e-6);
    let s =
        parse_pgbench_summary("number of transactions actually processed: 10/10\ntps = 5.0 (x)\n")
            .unwrap();
    assert_eq!((s.processed, s.failed), (10, 0));
    assert!(parse_pgbench_summary("pgbench: error: connection failed\n").is_none());
}

#[test]
fn free_ports_and_temp_dirs_are_distinct() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
    let d1 = temp_dir("x");
    let d2 = temp_dir("x");
    assert_ne!(d1, d2);
    assert!(d1.is_dir() && d2.is_dir());
}

#[test]
fn self_signed_cert_exists() {
    let (cert, key) = test_cert();
    assert!(std::fs::read_to_string(cert)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert!(std::fs::read_to_string(key)
        .unwrap()
        .contains("PRIVATE KEY"));
}
