//! The admin console (database `pgmulti`) through psql: node status, detach and attach,
//! pools, stats, config, version; users outside `admin_users` are refused.

mod common;

use common::*;

fn nodes() -> &'static [Node; 3] {
    static NODES: std::sync::OnceLock<[Node; 3]> = std::sync::OnceLock::new();
    NODES.get_or_init(|| {
        [
            Node::start(NodeOptions::default()),
            Node::start(NodeOptions::default()),
            Node::start(NodeOptions::default()),
        ]
    })
}

fn start() -> (Pgmulti, std::path::PathBuf) {
    let [n0, n1, n2] = nodes();
    let status = temp_dir("admin").join("status");
    let conf = PgmultiConf::relay(n0)
        .mode("replication")
        .backend(n1.host(), n1.port())
        .backend(n2.host(), n2.port())
        .line("admin_users = 'postgres'")
        .line("health_check_password = 'secret'")
        .line(&format!("status_file = '{}'", status.display()));
    (Pgmulti::start(&conf), status)
}

fn admin(pm: &Pgmulti, sql: &str) -> CmdOutput {
    pm.psql("postgres", "pgmulti", None, sql)
}

#[test]
fn show_nodes_detach_and_attach() {
    let (pm, status) = start();
    let out = admin(&pm, "SHOW NODES");
    assert!(out.success(), "{}", out.stderr);
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    assert!(
        rows[0].starts_with("0|127.0.0.1|") && rows[0].contains("|up|lead|"),
        "{}",
        rows[0]
    );
    assert!(rows[2].contains("|up|replica|"), "{}", rows[2]);

    let out = admin(&pm, "DETACH NODE 2");
    assert!(out.success(), "{}", out.stderr);
    assert!(admin(&pm, "SHOW NODES")
        .stdout
        .lines()
        .nth(2)
        .unwrap()
        .contains("|down|"));
    assert!(std::fs::read_to_string(&status)
        .unwrap()
        .lines()
        .any(|l| l == "2 down"));
    // Writes now skip node 2.
    assert!(pm
        .psql("postgres", "postgres", None, "CREATE TABLE admin_t (v int)")
        .success());
    assert_eq!(
        nodes()[2].psql(
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relname = 'admin_t'"
        ),
        "0"
    );
    assert_eq!(
        nodes()[1].psql(
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relname = 'admin_t'"
        ),
        "1"
    );

    // Bring it back in line by hand, then attach it.
    nodes()[2].psql("postgres", "postgres", "CREATE TABLE admin_t (v int)");
    let out = admin(&pm, "ATTACH NODE 2");
    assert!(out.success(), "{}", out.stderr);
    let row = admin(&pm, "SHOW NODES")
        .stdout
        .lines()
        .nth(2)
        .unwrap()
        .to_string();
    assert!(row.contains("|up|replica|"), "{row}");
    assert!(pm
        .psql("postgres", "postgres", None, "DROP TABLE admin_t")
        .success());
    assert_eq!(
        nodes()[2].psql(
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relname = 'admin_t'"
        ),
        "0"
    );

    // pgpool-II's SHOW POOL_NODES works on an ordinary connection too.
    let out = pm.psql("postgres", "postgres", None, "SHOW POOL_NODES");
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);

    let out = admin(&pm, "DETACH NODE 9");
    assert!(
        !out.success() && out.stderr.contains("there is no node"),
        "{}",
        out.stderr
    );
}

#[test]
fn other_commands_and_errors() {
    let (pm, _) = start();
    assert!(admin(&pm, "SHOW VERSION").stdout.starts_with("pgmulti "));
    let config = admin(&pm, "SHOW CONFIG").stdout;
    assert!(config.lines().any(|l| l == "mode|replication"), "{config}");
    assert!(
        config
            .lines()
            .any(|l| l == "health_check_password|********"),
        "passwords are masked: {config}"
    );
    assert!(pm.psql("postgres", "postgres", None, "SELECT 1").success());
    let stats = admin(&pm, "SHOW STATS").stdout;
    assert!(
        stats.lines().any(|l| l.starts_with("sessions_accepted|")),
        "{stats}"
    );
    assert!(admin(&pm, "SHOW POOLS")
        .stdout
        .lines()
        .any(|l| l.contains("|postgres|postgres|")));
    let out = admin(&pm, "FLY TO THE MOON");
    assert!(
        !out.success() && out.stderr.contains("unknown admin command"),
        "{}",
        out.stderr
    );
    // Not an admin user: refused.
    let out = pm.psql("alice", "pgmulti", None, "SHOW NODES");
    assert!(
        !out.success() && out.stderr.contains("not in admin_users"),
        "{}",
        out.stderr
    );
}

#[test]
fn shutdown_from_the_console() {
    let (mut pm, _) = start();
    let _ = admin(&pm, "SHUTDOWN");
    let status = pm.wait_exit(std::time::Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "pgmulti did not exit 0 after SHUTDOWN: {status:?}"
    );
}
