//! `mode = streaming`: a real primary and hot standbys (pg_basebackup, streaming
//! replication). Roles come from the nodes; writes reach the primary; reads go to standbys
//! that have the session's last commit.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// pgmulti in streaming mode over `nodes` (in this order: the primary need not be first).
fn streaming(nodes: &[&Node]) -> Pgmulti {
    let mut conf = PgmultiConf::relay(nodes[0])
        .mode("streaming")
        .line("health_check_period = '1s'")
        .line("admin_users = 'postgres'");
    for n in &nodes[1..] {
        conf = conf.backend(n.host(), n.port());
    }
    let pm = Pgmulti::start(&conf);
    assert!(
        pm.wait_log(Duration::from_secs(10), |l| l.contains("is a primary")),
        "no primary found:\n{}",
        pm.log()
    );
    pm
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
    let conn = [
        "-h",
        pm.host(),
        "-p",
        &pm.port().to_string(),
        "-U",
        "postgres",
    ];
    let (ok, _, err) = pgbench(
        &[&conn[..], &["-i", "-s", "1", "-q", "postgres"]].concat(),
        &[],
    );
    assert!(ok, "pgbench -i: {err}");
    for (args, what) in [
        (&["-c", "4", "-T", "4"][..], "TPC-B"),
        (&["-c", "4", "-T", "4", "-S"][..], "select-only"),
    ] {
        let (ok, out, err) = pgbench(&[&conn[..], args, &["postgres"]].concat(), &[]);
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while s1.psql("postgres", "postgres", sum) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s1.psql("postgres", "postgres", sum), want);
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
    let deadline = Instant::now() + Duration::from_secs(15);
    while late.psql("postgres", "postgres", has_table) != "1" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let stale: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let conn = pm.conn_str("postgres", "postgres");
                s.spawn(move || {
                    let mut c = connect(&conn);
                    let mut stale = 0;
                    for i in 0..10 {
                        let id = t * 100 + i;
                        c.execute("INSERT INTO ryw VALUES ($1, 0)", &[&id]).unwrap();
                        let n: i64 = c
                            .query_one("SELECT count(*) FROM ryw WHERE id = $1", &[&id])
                            .unwrap()
                            .get(0);
                        stale += usize::from(n != 1);
                        c.execute("UPDATE ryw SET c = c + 1 WHERE id = $1", &[&id])
                            .unwrap();
                        let v: i32 = c
                            .query_one("SELECT c FROM ryw WHERE id = $1", &[&id])
                            .unwrap()
                            .get(0);
                        stale += usize::from(v != 1);
                    }
                    stale
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(stale, 0, "reads older than the session's own commits");
    // A session that wrote nothing reads from the standby.
    std::thread::sleep(Duration::from_secs(2));
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
