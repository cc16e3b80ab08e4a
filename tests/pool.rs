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
