//! `mode = streaming`: a real primary and hot standbys (pg_basebackup, streaming
//! replication). Roles come from the nodes; writes reach the primary; reads go to standbys
//! that have the session's last commit.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The configuration of pgmulti in streaming mode over `nodes` (in this order: the primary
/// need not be first).
fn streaming_conf(nodes: &[&Node]) -> PgmultiConf {
    let mut conf = PgmultiConf::relay(nodes[0])
        .mode("streaming")
        .line("health_check_period = '1s'")
        .line("admin_users = 'postgres'");
    for n in &nodes[1..] {
        conf = conf.backend(n.host(), n.port());
    }
    conf
}

/// pgmulti in streaming mode over `nodes`, once it has found the primary.
fn streaming(nodes: &[&Node]) -> Pgmulti {
    let pm = Pgmulti::start(&streaming_conf(nodes));
    assert!(
        pm.wait_log(Duration::from_secs(10), |l| l.contains("is a primary")),
        "no primary found:\n{}",
        pm.log()
    );
    pm
}

/// pgbench through `pm` as postgres, database postgres.
fn pgbench_through(pm: &Pgmulti, args: &[&str]) -> (bool, String, String) {
    let port = pm.port().to_string();
    let conn = ["-h", pm.host(), "-p", &port, "-U", "postgres"];
    pgbench(&[&conn[..], args, &["postgres"]].concat(), &[])
}

/// What `sql` answers on `node` once it answers `want` (a standby catching up), or after
/// `secs` seconds whatever it answers then.
fn answer_within(node: &Node, sql: &str, want: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = node.psql("postgres", "postgres", sql);
        if got == want || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SHOW NODES rows: (port, role, reads, writes).
fn node_rows(pm: &Pgmulti) -> Vec<(u16, String, u64, u64)> {
    let out = pm.psql("postgres", "pgmulti", None, "SHOW NODES");
    assert!(out.success(), "{}", out.stderr);
    out.stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (
                f[2].parse().unwrap(),
                f[4].to_string(),
                f[6].parse().unwrap(),
                f[7].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn pgbench_writes_reach_the_primary_and_reads_the_standbys() {
    let primary = Node::start(NodeOptions::default());
    let s1 = Node::standby_of(&primary, &[]);
    let s2 = Node::standby_of(&primary, &[]);
    // The primary is listed second: roles are found, not configured.
    let pm = streaming(&[&s1, &primary, &s2]);
    let (ok, _, err) = pgbench_through(&pm, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i: {err}");
    for (args, what) in [
        (&["-c", "4", "-T", "4"][..], "TPC-B"),
        (&["-c", "4", "-T", "4", "-S"][..], "select-only"),
    ] {
        let (ok, out, err) = pgbench_through(&pm, args);
        assert!(ok, "{what}: {err}");
        let summary = parse_pgbench_summary(&out).expect("a pgbench summary");
        assert!(summary.processed > 100, "{what}: {out}");
        assert_eq!(summary.failed, 0, "{what}: {out}");
    }
    let rows = node_rows(&pm);
    let of = |port: u16| rows.iter().find(|r| r.0 == port).unwrap().clone();
    assert_eq!(of(primary.port()).1, "primary", "{rows:?}");
    assert_eq!(of(s1.port()).1, "standby", "{rows:?}");
    assert_eq!(
        (of(s1.port()).3, of(s2.port()).3),
        (0, 0),
        "no write on a standby: {rows:?}"
    );
    assert!(
        of(s1.port()).2 > 100 && of(s2.port()).2 > 100,
        "select-only spread over the standbys: {rows:?}"
    );
    // Everything the primary holds, the standbys hold.
    let sum = "SELECT sum(delta) || ' ' || count(*) FROM pgbench_history";
    let want = primary.psql("postgres", "postgres", sum);
    assert_eq!(answer_within(&s1, sum, &want, 20), want);
}

/// A standby that applies WAL 3 s late: a session that just committed never reads from it
/// an older snapshot than its own commit (its reads go to the primary until the standby
/// has replayed it), while sessions that wrote nothing read from the standby.
#[test]
fn a_session_reads_its_own_writes_from_a_delayed_standby() {
    let primary = Node::start(NodeOptions::default());
    let late = Node::standby_of(&primary, &["recovery_min_apply_delay = '3s'"]);
    let pm = streaming(&[&primary, &late]);
    let out = pm.psql(
        "postgres",
        "postgres",
        None,
        "CREATE TABLE ryw (id int PRIMARY KEY, c int)",
    );
    assert!(out.success(), "{}", out.stderr);
    let has_table = "SELECT count(*) FROM pg_class WHERE relname = 'ryw'";
    assert_eq!(answer_within(&late, has_table, "1", 15), "1");
    // The standby is late indeed: straight after a commit it does not have it.
    primary.psql("postgres", "postgres", "INSERT INTO ryw VALUES (-1, 0)");
    assert_eq!(
        late.psql(
            "postgres",
            "postgres",
            "SELECT count(*) FROM ryw WHERE id = -1"
        ),
        "0"
    );
    // 8 clients each insert or update a row and read it back at once.
    let stale_reads = |round: i32| -> usize {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let conn = pm.conn_str("postgres", "postgres");
                    s.spawn(move || {
                        let mut c = connect(&conn);
                        let mut stale = 0;
                        for i in 0..10 {
                            let id = round * 1000 + t * 100 + i;
                            c.execute("INSERT INTO ryw VALUES ($1, 0)", &[&id]).unwrap();
                            let n: i64 = c
                                .query_one("SELECT count(*) FROM ryw WHERE id = $1", &[&id])
                                .unwrap()
                                .get(0);
                            stale += usize::from(n != 1);
                            c.execute("UPDATE ryw SET c = c + 1 WHERE id = $1", &[&id])
                                .unwrap();
                            let v: Option<i32> = c
                                .query_opt("SELECT c FROM ryw WHERE id = $1", &[&id])
                                .unwrap()
                                .map(|r| r.get(0));
                            stale += usize::from(v != Some(1));
                        }
                        stale
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        })
    };
    let stale = stale_reads(0);
    assert_eq!(stale, 0, "reads older than the session's own commits");
    // The same with the check switched off (read_your_writes = off, by a reload): the
    // standby serves the reads, and most miss the session's own commit.
    pm.rewrite_conf(&streaming_conf(&[&primary, &late]).line("read_your_writes = off"));
    let out = pm.psql("postgres", "pgmulti", None, "RELOAD");
    assert!(out.success(), "{}", out.stderr);
    let stale = stale_reads(1);
    assert!(
        stale > 40,
        "only {stale} of 160 reads were stale without the check: is the standby late?"
    );
    // Still without it, but with max_standby_delay below the standby's 3 s: once a health
    // check has seen it replay that late, it serves no reads while the writes go on.
    pm.rewrite_conf(
        &streaming_conf(&[&primary, &late])
            .line("read_your_writes = off")
            .line("max_standby_delay = '1s'"),
    );
    let out = pm.psql("postgres", "pgmulti", None, "RELOAD");
    assert!(out.success(), "{}", out.stderr);
    primary.psql(
        "postgres",
        "postgres",
        "UPDATE ryw SET c = c + 1 WHERE id = -1",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let stale = stale_reads(2);
    assert_eq!(stale, 0, "reads from a standby replaying 3 s late");
    // A session that wrote nothing reads from the standby, once it has caught up (3 s
    // after the last write) and a health check has seen that.
    std::thread::sleep(Duration::from_secs(5));
    let mut reader = connect(&pm.conn_str("postgres", "postgres"));
    let ports: Vec<i32> = (0..20)
        .map(|_| {
            reader
                .query_one("SELECT inet_server_port()", &[])
                .unwrap()
                .get(0)
        })
        .collect();
    assert!(
        ports.iter().any(|&p| p == i32::from(late.port())),
        "reads never reached the standby: {ports:?}"
    );
}

/// The primary is killed under pgbench: the most advanced standby is promoted, the other
/// follows it (scripts/follow_primary.sh), clients go on, and every commit pgbench was told
/// of is on the new primary (the old one waited for both standbys: synchronous_standby_names).
#[test]
fn losing_the_primary_promotes_a_standby_and_the_other_follows() {
    let primary = Node::start(NodeOptions::default());
    let s1 = Node::standby_of(&primary, &[]);
    let s2 = Node::standby_of(&primary, &[]);
    // Set on the primary only, now that both standbys stream: a promoted standby must not
    // wait for standbys it no longer has.
    primary.psql(
        "postgres",
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = 'ANY 2 (*)'",
    );
    primary.psql(
        "postgres",
        "postgres",
        "ALTER SYSTEM SET synchronous_commit = on",
    );
    primary.psql("postgres", "postgres", "SELECT pg_reload_conf()");
    let follow = format!(
        "follow_primary_command = '{}/scripts/follow_primary.sh %h %p %H %r postgres'",
        env!("CARGO_MANIFEST_DIR")
    );
    let conf = PgmultiConf::relay(&primary)
        .mode("streaming")
        .backend(s1.host(), s1.port())
        .backend(s2.host(), s2.port())
        .line("health_check_period = '1s'")
        .line("health_check_timeout = '2s'")
        .line("health_check_max_retries = 1")
        .line("health_check_retry_delay = '500ms'")
        .line("admin_users = 'postgres'")
        .line(&follow);
    let pm = Pgmulti::start(&conf);
    assert!(pm.wait_log(Duration::from_secs(10), |l| l
        .matches("is a standby")
        .count()
        >= 2));
    let (ok, _, err) = pgbench_through(&pm, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i: {err}");
    let started = Instant::now();
    let bench = std::thread::scope(|s| {
        let run = s.spawn(|| pgbench_through(&pm, &["-c", "4", "-T", "15", "--max-tries", "10"]));
        std::thread::sleep(Duration::from_secs(4));
        primary.stop_immediate();
        run.join().unwrap()
    });
    let (_, out, err) = bench;
    let summary = parse_pgbench_summary(&out).unwrap_or_else(|| panic!("pgbench: {out}\n{err}"));
    eprintln!("pgbench through the failover:\n{out}\n{err}");
    assert!(!err.contains("aborted"), "a client gave up: {err}");
    assert!(
        pm.wait_log(Duration::from_secs(20), |l| l.contains("was promoted")),
        "no promotion:\n{}",
        pm.log()
    );
    let promoted = [&s1, &s2]
        .into_iter()
        .find(|n| n.psql("postgres", "postgres", "SELECT pg_is_in_recovery()") == "f")
        .expect("a standby was promoted");
    let other = if std::ptr::eq(promoted, &s1) {
        &s2
    } else {
        &s1
    };
    let history = "SELECT count(*) FROM pgbench_history";
    let on_new: i64 = promoted
        .psql("postgres", "postgres", history)
        .parse()
        .unwrap();
    assert!(
        on_new >= summary.processed as i64,
        "acknowledged commits lost: {on_new} rows, {} acknowledged",
        summary.processed
    );
    // Writes after the failover reach the new primary, and the other standby follows it.
    let out = pm.psql(
        "postgres",
        "postgres",
        None,
        "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (0, 0, 0, 0)",
    );
    assert!(out.success(), "a write after the failover: {}", out.stderr);
    let want = promoted.psql("postgres", "postgres", history);
    assert_eq!(
        answer_within(other, history, &want, 30),
        want,
        "the other standby follows"
    );
    assert_eq!(
        other.psql("postgres", "postgres", "SELECT pg_is_in_recovery()"),
        "t"
    );
    // From the primary's loss to the promoted standby answering as a primary, by the log.
    let at = |what: &str| -> f64 {
        let log = pm.log();
        let line = log.lines().find(|l| l.contains(what)).unwrap_or_default();
        let time = line.split_whitespace().nth(1).unwrap_or("0:0:0");
        time.split(':')
            .map(|x| x.parse::<f64>().unwrap_or(0.0))
            .fold(0.0, |acc, x| acc * 60.0 + x)
    };
    let recovery = at("was promoted") - at("is lost: promoting");
    // A slow promotion (once 5.1 s in this test) shows the log, to say why.
    if recovery > 1.0 {
        for line in pm
            .log()
            .lines()
            .filter(|l| !l.contains("waits for") && !l.contains("closing"))
        {
            eprintln!("{line}");
        }
    }
    eprintln!(
        "failover: pgbench {} processed, {} failed; {on_new} rows on the new primary; promoted {recovery:.2} s after the loss; {:?} in all",
        summary.processed,
        summary.failed,
        started.elapsed()
    );
}

/// The admin console's answer to `sql` (psql's unaligned rows, or the error).
fn admin(pm: &Pgmulti, sql: &str) -> CmdOutput {
    pm.psql("postgres", "pgmulti", None, sql)
}

/// SHOW NODES rows: (status, role, note) of `id`.
fn node_state(pm: &Pgmulti, id: usize) -> (String, String, String) {
    let out = admin(pm, "SHOW NODES");
    assert!(out.success(), "{}", out.stderr);
    let line = out.stdout.lines().nth(id).unwrap_or_default().to_string();
    let f: Vec<&str> = line.split('|').collect();
    (
        f[3].into(),
        f[4].into(),
        f.get(9).unwrap_or(&"").to_string(),
    )
}

/// Wait until node `id` has status and role `want` (e.g. ("up", "standby")).
fn wait_node(pm: &Pgmulti, id: usize, want: (&str, &str), secs: u64) -> (String, String, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = node_state(pm, id);
        if (got.0.as_str(), got.1.as_str()) == want || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SWITCHOVER under pgbench: new transactions wait while the standby catches up, the
/// primary is detached, the standby promoted and the other standby follows it; pgbench
/// loses nothing and fails nothing. The old primary, still a primary, is never taken back
/// (ATTACH NODE detaches it again at its first health check); RECOVER NODE rebuilds it as a
/// standby of the new primary (scripts/recovery_1st_stage.sh) and it serves reads again.
#[test]
fn switchover_loses_no_commit_and_recover_node_rebuilds_the_old_primary_as_a_standby() {
    let primary = Node::start(NodeOptions::default());
    let s1 = Node::standby_of(&primary, &[]);
    let s2 = Node::standby_of(&primary, &[]);
    let scripts = format!("{}/scripts", env!("CARGO_MANIFEST_DIR"));
    let mut conf = streaming_conf(&[&primary, &s1, &s2])
        .line("recovery_timeout = 60")
        .line(&format!(
            "follow_primary_command = '{scripts}/follow_primary.sh %h %p %H %r postgres'"
        ))
        .line(&format!(
            "recovery_1st_stage_command = '{scripts}/recovery_1st_stage.sh %d %h %p %D %m %H %r %R'"
        ));
    for (i, n) in [&primary, &s1, &s2].iter().enumerate() {
        let dir = format!("backend_data_directory{i} = '{}'", n.data_dir().display());
        conf = conf.line(&dir);
    }
    let pm = Pgmulti::start(&conf);
    assert_eq!(wait_node(&pm, 2, ("up", "standby"), 10).1, "standby");
    let (ok, _, err) = pgbench_through(&pm, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i: {err}");
    let refused = admin(&pm, "PROMOTE NODE 2");
    assert!(
        !refused.success()
            && refused.stderr.contains("node 0 is the primary")
            && refused.stderr.contains("SWITCHOVER 2"),
        "PROMOTE NODE beside a primary: {}",
        refused.stderr
    );

    let (bench, switchover, took) = std::thread::scope(|s| {
        let run = s.spawn(|| pgbench_through(&pm, &["-c", "4", "-T", "10", "--max-tries", "10"]));
        std::thread::sleep(Duration::from_secs(3));
        let t0 = Instant::now();
        let answer = admin(&pm, "SWITCHOVER 1");
        let took = t0.elapsed();
        (run.join().unwrap(), answer, took)
    });
    assert!(
        switchover.success(),
        "SWITCHOVER 1: {}\n{}",
        switchover.stderr,
        pm.log()
    );
    let (_, out, err) = bench;
    let summary = parse_pgbench_summary(&out).unwrap_or_else(|| panic!("pgbench: {out}\n{err}"));
    eprintln!("pgbench through the switchover ({took:?}):\n{out}\n{err}");
    assert_eq!(
        summary.failed, 0,
        "transactions failed across the switchover: {out}\n{err}"
    );
    let history = "SELECT count(*) FROM pgbench_history";
    assert_eq!(
        s1.psql("postgres", "postgres", history),
        summary.processed.to_string(),
        "the new primary holds exactly the acknowledged transactions"
    );
    assert_eq!(
        s1.psql("postgres", "postgres", "SELECT pg_is_in_recovery()"),
        "f"
    );
    assert_eq!(node_state(&pm, 1).1, "primary");
    let (status, _, note) = node_state(&pm, 0);
    assert_eq!(status, "down", "the old primary is detached: {note}");
    // The other standby follows the new primary.
    let out = pm.psql(
        "postgres",
        "postgres",
        None,
        "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (0, 0, 0, 0)",
    );
    assert!(
        out.success(),
        "a write after the switchover: {}",
        out.stderr
    );
    let want = s1.psql("postgres", "postgres", history);
    assert_eq!(
        answer_within(&s2, history, &want, 30),
        want,
        "node 2 follows node 1"
    );

    // The old primary is still a primary: attached again, it is detached at once.
    assert!(admin(&pm, "ATTACH NODE 0").success());
    let (status, _, note) = wait_node(&pm, 0, ("down", "-"), 10);
    assert!(
        status == "down" && note.contains("primary too"),
        "old primary taken back: {status} {note}"
    );
    assert_eq!(node_state(&pm, 1).1, "primary");

    // RECOVER NODE rebuilds it as a standby of node 1, and it serves reads.
    let out = admin(&pm, "RECOVER NODE 0");
    assert!(
        out.success(),
        "RECOVER NODE 0: {}\n{}",
        out.stderr,
        pm.log()
    );
    assert_eq!(wait_node(&pm, 0, ("up", "standby"), 10).1, "standby");
    assert_eq!(
        primary.psql("postgres", "postgres", "SELECT pg_is_in_recovery()"),
        "t"
    );
    assert_eq!(answer_within(&primary, history, &want, 30), want);
    let mut reader = connect(&pm.conn_str("postgres", "postgres"));
    let read_on_old = (0..40).any(|_| {
        let port: i32 = reader
            .query_one("SELECT inet_server_port()", &[])
            .unwrap()
            .get(0);
        port == i32::from(primary.port())
    });
    assert!(read_on_old, "the rebuilt node serves no reads");
    let refused = admin(&pm, "SWITCHOVER 1");
    assert!(
        !refused.success() && refused.stderr.contains("is the primary"),
        "{}",
        refused.stderr
    );
}

/// The primary is lost while no standby is up: nothing to promote. Once the standby is
/// attached again, PROMOTE NODE makes it the primary and writes go on.
#[test]
fn promote_node_makes_a_standby_the_primary_when_none_is_up() {
    let primary = Node::start(NodeOptions::default());
    let s1 = Node::standby_of(&primary, &[]);
    let conf = streaming_conf(&[&primary, &s1])
        .line("health_check_timeout = '2s'")
        .line("health_check_max_retries = 1")
        .line("health_check_retry_delay = '500ms'");
    let pm = Pgmulti::start(&conf);
    assert_eq!(wait_node(&pm, 1, ("up", "standby"), 10).1, "standby");
    assert!(admin(&pm, "DETACH NODE 1").success());
    primary.stop_immediate();
    assert!(
        pm.wait_log(Duration::from_secs(15), |l| l
            .contains("no standby is up to promote")),
        "{}",
        pm.log()
    );
    let out = pm.psql(
        "postgres",
        "postgres",
        None,
        "CREATE TABLE after_promote (id int)",
    );
    assert!(!out.success(), "a write without a primary succeeded");
    assert!(admin(&pm, "ATTACH NODE 1").success());
    assert_eq!(wait_node(&pm, 1, ("up", "standby"), 10).1, "standby");
    let out = admin(&pm, "PROMOTE NODE 1");
    assert!(
        out.success(),
        "PROMOTE NODE 1: {}\n{}",
        out.stderr,
        pm.log()
    );
    assert_eq!(node_state(&pm, 1).1, "primary");
    let out = pm.psql(
        "postgres",
        "postgres",
        None,
        "CREATE TABLE after_promote (id int); INSERT INTO after_promote VALUES (1)",
    );
    assert!(out.success(), "a write after PROMOTE NODE: {}", out.stderr);
    assert_eq!(
        s1.psql("postgres", "postgres", "SELECT count(*) FROM after_promote"),
        "1"
    );
}

/// A session that committed reads from a standby as soon as one has replayed its commit,
/// not a health check period later: pgmulti reads the standbys' positions when sessions
/// commit (at most every 100 ms). The health checks here come every 60 s, so without that
/// every read after a write would go to the primary.
#[test]
fn reads_after_a_commit_reach_a_standby_before_the_next_health_check() {
    let primary = Node::start(NodeOptions::default());
    let standby = Node::standby_of(&primary, &[]);
    let conf = PgmultiConf::relay(&primary)
        .mode("streaming")
        .backend(standby.host(), standby.port())
        .line("health_check_period = '60s'")
        .line("admin_users = 'postgres'");
    let pm = Pgmulti::start(&conf);
    assert_eq!(wait_node(&pm, 1, ("up", "standby"), 10).1, "standby");
    let mut c = connect(&pm.conn_str("postgres", "postgres"));
    c.batch_execute("CREATE TABLE fresh (id int)").unwrap();
    let mut on_standby = 0;
    for i in 0..10 {
        c.execute("INSERT INTO fresh VALUES ($1)", &[&i]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let (port, seen): (i32, i64) = {
            let row = c
                .query_one(
                    "SELECT inet_server_port(), (SELECT count(*) FROM fresh)",
                    &[],
                )
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!(
            seen,
            i64::from(i) + 1,
            "a read missed the session's own commit"
        );
        on_standby += usize::from(port == i32::from(standby.port()));
    }
    eprintln!("{on_standby} of 10 reads after a commit on the standby");
    assert!(
        on_standby >= 5,
        "only {on_standby} of 10 reads after a commit reached the standby"
    );
}
