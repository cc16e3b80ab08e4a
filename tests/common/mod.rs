//! Integration-test harness: real PostgreSQL 15 nodes, a running `pgmulti` binary, and the
//! client tools (psql, pgbench) that drive them.
//!
//! Everything a test starts lives under the system temp dir in
//! `pgmulti-test-<test pid>-<n>-<tag>/` and is stopped and removed when the test binary exits,
//! even when tests fail: an `atexit` hook does it on a normal exit, and a detached watchdog
//! shell does it if the test binary is killed. Set `PGMULTI_KEEP_TMP=1` to keep the dirs.
//!
//! PostgreSQL refuses to run as root: when the effective uid is 0, initdb/pg_ctl run through
//! `runuser -u postgres --` and node dirs are chowned to `postgres`. As an ordinary user they
//! run directly.

#![allow(dead_code)]

pub mod prometheus;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Where Debian puts the PostgreSQL 15 server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Roles every node gets (see `Node::start`).
pub const ALICE_PASSWORD: &str = "alicepw";
pub const BOB_PASSWORD: &str = "bobpw";

/// How long a psql call may take before the harness kills it (a hung proxy must fail a test,
/// not hang the suite).
pub const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
/// The same for pgbench (runs of `-T 10` plus connection set-up and `-i`).
pub const PGBENCH_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Process-wide bookkeeping: temp dirs, running nodes, cleanup at exit.
// ---------------------------------------------------------------------------------------------

/// Data dirs of nodes that are running (stopped by the exit hook).
static RUNNING_NODES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Every temp dir handed out (removed by the exit hook).
static TEMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Ports handed out by `free_port`, so two parallel tests never get the same one.
static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);
static CLEANUP_ONCE: Once = Once::new();

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn keep_tmp() -> bool {
    std::env::var_os("PGMULTI_KEEP_TMP").is_some_and(|v| v != "0" && !v.is_empty())
}

/// uid/gid of the `postgres` system user (used only when running as root).
fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("run id");
            assert!(out.status.success(), "no `postgres` system user");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        (id("-u"), id("-g"))
    })
}

/// A Command for a PostgreSQL server program (initdb, pg_ctl): as `postgres` when we are root.
fn pg_server_command(program: &str) -> Command {
    let path = format!("{PG_BIN}/{program}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

/// Stops every running node and removes every temp dir. Runs from `atexit`, so it must not
/// panic.
extern "C" fn cleanup_at_exit() {
    let nodes: Vec<PathBuf> = lock(&RUNNING_NODES).drain(..).collect();
    for data in nodes {
        let _ = pg_server_command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if !keep_tmp() {
        for dir in lock(&TEMP_DIRS).drain(..) {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Registers the exit hook and starts the watchdog, once per test binary.
///
/// The watchdog is a detached shell (own session, so a Ctrl-C to the test does not reach it)
/// that polls the test process once a second; when it is gone (crash, SIGKILL) it stops every
/// node under our temp dirs and removes the dirs. pgmulti children die with the test through
/// PR_SET_PDEATHSIG instead (see `Pgmulti::start`).
fn ensure_cleanup() {
    CLEANUP_ONCE.call_once(|| {
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
        let pid = std::process::id();
        let pattern = format!("{}/pgmulti-test-{pid}-", std::env::temp_dir().display());
        let pg_ctl = if is_root() {
            format!("runuser -u postgres -- {PG_BIN}/pg_ctl")
        } else {
            format!("{PG_BIN}/pg_ctl")
        };
        let remove = if keep_tmp() { "true" } else { "rm -rf \"$d\"" };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done
             for d in {pattern}*; do
               [ -d \"$d\" ] || continue
               [ -f \"$d/data/postmaster.pid\" ] && {pg_ctl} -D \"$d/data\" -m immediate stop
               {remove}
             done"
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; it only detaches the child from our session.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        // Not waited for: it outlives us by design. Dropping a Child does not kill it.
        let _ = cmd.spawn();
    });
}

/// A fresh directory `<tmp>/pgmulti-test-<pid>-<n>-<tag>/`, removed when the test binary exits.
pub fn temp_dir(tag: &str) -> PathBuf {
    ensure_cleanup();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("pgmulti-test-{}-{n}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create temp dir");
    lock(&TEMP_DIRS).push(dir.clone());
    dir
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind :0, read the port, drop). Ports are
/// never handed out twice within one test binary.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .unwrap()
            .port();
        if lock(&USED_PORTS)
            .get_or_insert_with(HashSet::new)
            .insert(port)
        {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running client programs with a deadline.
// ---------------------------------------------------------------------------------------------

/// Output of a finished client program.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `cmd` with `stdin` fed in, collecting stdout/stderr; kills it after `timeout`.
/// PG* environment variables of the caller are removed so they cannot change the target.
pub fn run_with_timeout(mut cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> CmdOutput {
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGSSLMODE",
        "PGSERVICE",
        "PGOPTIONS",
        "PGAPPNAME",
        "PGSERVICEFILE",
        "PGTARGETSESSIONATTRS",
    ] {
        if !cmd.get_envs().any(|(k, _)| k == std::ffi::OsStr::new(var)) {
            cmd.env_remove(var);
        }
    }
    if !cmd
        .get_envs()
        .any(|(k, _)| k == std::ffi::OsStr::new("PGPASSFILE"))
    {
        // A missing file is ignored silently (/dev/null draws a libpq warning).
        cmd.env("PGPASSFILE", "/nonexistent/pgmulti-tests/pgpass");
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let program = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{program} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    CmdOutput {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `psql -X -A -t -q -v ON_ERROR_STOP=1 <args>` with extra environment (e.g. PGPASSWORD).
pub fn psql(args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(args);
    cmd.env("PGCONNECT_TIMEOUT", "10");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, None, PSQL_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------------------------

/// Runs pgbench with `args` and extra environment; returns (success, stdout, stderr).
pub fn pgbench(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new("pgbench");
    cmd.args(args);
    cmd.env("PGCONNECT_TIMEOUT", "10");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_timeout(cmd, None, PGBENCH_TIMEOUT);
    (out.status.success(), out.stdout, out.stderr)
}

/// The numbers of a pgbench run summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgbenchSummary {
    /// `number of transactions actually processed: N` (or `N/M` with `-t`).
    pub processed: u64,
    /// `number of failed transactions: N (x%)`; pgbench 15 prints it, absent means 0.
    pub failed: u64,
    /// `tps = X (without initial connection time)`.
    pub tps: f64,
}

/// Parses pgbench's summary; None if there is no "actually processed" line.
pub fn parse_pgbench_summary(stdout: &str) -> Option<PgbenchSummary> {
    fn leading_number(s: &str) -> Option<&str> {
        let s = s.trim_start();
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        (end > 0).then(|| &s[..end])
    }
    let mut processed = None;
    let mut failed = 0;
    let mut tps = 0.0;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            processed = leading_number(rest)?.parse().ok();
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = leading_number(rest)?.parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("tps =") {
            tps = leading_number(rest)?.parse().ok()?;
        }
    }
    Some(PgbenchSummary {
        processed: processed?,
        failed,
        tps,
    })
}

// ---------------------------------------------------------------------------------------------
// Node: one real PostgreSQL 15 server.
// ---------------------------------------------------------------------------------------------

/// How to set up a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// pg_hba method for TCP connections: "trust", "md5" or "scram-sha-256". The local socket
    /// is always trust.
    pub host_auth: String,
    /// Extra postgresql.conf lines.
    pub extra_conf: Vec<String>,
    /// Serve TLS with the `test_cert` certificate.
    pub ssl: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            host_auth: "trust".into(),
            extra_conf: Vec::new(),
            ssl: false,
        }
    }
}

impl NodeOptions {
    pub fn host_auth(method: &str) -> Self {
        NodeOptions {
            host_auth: method.into(),
            ..Default::default()
        }
    }
}

/// A running PostgreSQL 15 server on 127.0.0.1 with roles `alice` (password 'alicepw',
/// stored as SCRAM) and `bob` ('bobpw', stored as md5), both LOGIN CREATEDB, and database
/// `app` owned by alice. Stopped on drop; see `shared_node` for the per-binary shared one.
pub struct Node {
    /// `<tmp>/pgmulti-test-…-node/`: holds data/, postgres.log and the Unix socket.
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    stopped: AtomicBool,
}

impl Node {
    /// initdb + configure + start + create roles. Panics with the server log on failure.
    pub fn start(opts: NodeOptions) -> Node {
        let dir = temp_dir("node");
        let data = dir.join("data");
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown node dir");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();

        let mut initdb = pg_server_command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ]);
        let out = run_with_timeout(initdb, None, Duration::from_secs(120));
        assert!(
            out.success(),
            "initdb failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );

        // Trust on the socket; the requested method on TCP.
        // Replication connections too, for the online recovery scripts' pg_basebackup.
        let hba = format!(
            "local all all trust\n\
             host all all 127.0.0.1/32 {m}\n\
             host all all ::1/128 {m}\n\
             local replication all trust\n\
             host replication all 127.0.0.1/32 {m}\n",
            m = opts.host_auth
        );
        fs::write(data.join("pg_hba.conf"), hba).unwrap();

        let mut conf = format!(
            "\n# pgmulti test harness\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 200\n\
             shared_buffers = 16MB\n\
             password_encryption = 'scram-sha-256'\n\
             log_min_messages = warning\n",
            dir.display()
        );
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        if opts.ssl {
            // The server wants its key private and its own: copy both into the data dir.
            let (cert, key) = test_cert();
            for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                let to = data.join(name);
                fs::copy(from, &to).expect("copy TLS material");
                fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
                if is_root() {
                    let (uid, gid) = postgres_ids();
                    std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
                }
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        append(&data.join("postgresql.conf"), &conf);

        let port = start_server(&data, &dir.join("postgres.log"));

        let node = Node {
            dir,
            data,
            port,
            stopped: AtomicBool::new(false),
        };
        node.psql(
            "postgres",
            "postgres",
            "CREATE ROLE alice LOGIN CREATEDB PASSWORD 'alicepw'",
        );
        node.psql(
            "postgres",
            "postgres",
            "SET password_encryption = 'md5'; CREATE ROLE bob LOGIN CREATEDB PASSWORD 'bobpw'",
        );
        node.psql("postgres", "postgres", "CREATE DATABASE app OWNER alice");
        node
    }

    /// A hot standby of `primary` (pg_basebackup -R, streaming), with extra
    /// postgresql.conf lines (`recovery_min_apply_delay = '2s'`). Started and in recovery.
    pub fn standby_of(primary: &Node, extra_conf: &[&str]) -> Node {
        let dir = temp_dir("standby");
        let data = dir.join("data");
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown standby dir");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let mut backup = pg_server_command("pg_basebackup");
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast"]);
        let out = run_with_timeout(backup, None, Duration::from_secs(120));
        assert!(
            out.success(),
            "pg_basebackup failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        let mut conf = format!(
            "\n# standby\nunix_socket_directories = '{}'\nhot_standby = on\n",
            dir.display()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);
        let port = start_server(&data, &dir.join("postgres.log"));
        let node = Node {
            dir,
            data,
            port,
            stopped: AtomicBool::new(false),
        };
        assert_eq!(
            node.psql("postgres", "postgres", "SELECT pg_is_in_recovery()"),
            "t"
        );
        node
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory holding the node's Unix socket (`psql -h <this>`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// libpq connection string straight to the node over TCP.
    pub fn conn_str(&self, user: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={db} sslmode=disable",
            self.port
        )
    }

    /// Runs `sql` as `user` on `db` over the local socket (always trust) and returns psql's
    /// trimmed unaligned tuples-only output. Panics with stderr on failure.
    pub fn psql(&self, user: &str, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let host = self.dir.to_str().unwrap();
        let out = psql(
            &["-h", host, "-p", &port, "-U", user, "-d", db, "-c", sql],
            &[],
        );
        assert!(
            out.success(),
            "psql on node failed for {sql:?}:\n{}",
            out.stderr
        );
        out.stdout.trim().to_string()
    }

    /// `rolpassword` of `role` from pg_authid (a `SCRAM-SHA-256$…` verifier or `md5…` hash).
    fn rolpassword(&self, role: &str) -> String {
        let sql = format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'");
        self.psql("postgres", "postgres", &sql)
    }

    /// The SCRAM verifier stored for `role` (`SCRAM-SHA-256$4096:…`).
    pub fn scram_verifier(&self, role: &str) -> String {
        self.rolpassword(role)
    }

    /// The md5 hash stored for `role` (`md5` + 32 hex digits).
    pub fn md5_hash(&self, role: &str) -> String {
        self.rolpassword(role)
    }

    /// Drops (if present) and creates database `name` owned by `owner`; a test that writes
    /// takes its own database on the shared node so parallel tests do not collide.
    pub fn fresh_db(&self, name: &str, owner: &str) {
        self.psql(
            "postgres",
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        self.psql(
            "postgres",
            "postgres",
            &format!("CREATE DATABASE {name} OWNER {owner}"),
        );
    }

    /// The node was started again outside the harness (online recovery): stop it at the end.
    pub fn mark_running(&self) {
        if self.stopped.swap(false, Ordering::SeqCst) {
            lock(&RUNNING_NODES).push(self.data.clone());
        }
    }

    /// Fast shutdown. Idempotent.
    pub fn stop(&self) {
        self.stop_with("fast");
    }

    /// `pg_ctl stop -m immediate`: the server dies without a shutdown checkpoint, as in a
    /// crash; its connections are cut.
    pub fn stop_immediate(&self) {
        self.stop_with("immediate");
    }

    fn stop_with(&self, mode: &str) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut pg_ctl = pg_server_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "stop"]);
        let _ = run_with_timeout(pg_ctl, None, Duration::from_secs(60));
        lock(&RUNNING_NODES).retain(|d| d != &self.data);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        if !keep_tmp() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The node shared by every test of this binary that needs no special auth (TCP trust).
/// Started on first use, stopped by the exit hook.
pub fn shared_node() -> &'static Node {
    static SHARED: OnceLock<Node> = OnceLock::new();
    SHARED.get_or_init(|| Node::start(NodeOptions::default()))
}

/// Start the server in `data` on a free port (appended to its postgresql.conf) and register
/// it for the exit cleanup. A free port can be taken by someone else before the postmaster
/// binds it: retried. Panics with the server log after three tries.
fn start_server(data: &Path, log: &Path) -> u16 {
    for _ in 0..3 {
        let port = free_port();
        append(&data.join("postgresql.conf"), &format!("port = {port}\n"));
        let mut pg_ctl = pg_server_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(log)
            .args(["-w", "-t", "60", "start"]);
        let out = run_with_timeout(pg_ctl, None, Duration::from_secs(90));
        if out.success() {
            lock(&RUNNING_NODES).push(data.to_path_buf());
            return port;
        }
        eprintln!("pg_ctl start failed:\n{}\n{}", out.stdout, out.stderr);
    }
    panic!(
        "pg_ctl start failed three times; server log:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

fn append(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// TLS material for pgmulti's `ssl = on`.
// ---------------------------------------------------------------------------------------------

/// A self-signed certificate and key (CN=localhost), generated once per test binary with the
/// openssl CLI. Returns (cert, key).
pub fn test_cert() -> &'static (PathBuf, PathBuf) {
    static CERT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CERT.get_or_init(|| {
        let dir = temp_dir("tls");
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        let mut cmd = Command::new("openssl");
        cmd.args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
        let out = run_with_timeout(cmd, None, Duration::from_secs(60));
        assert!(out.success(), "openssl req failed:\n{}", out.stderr);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        (cert, key)
    })
}

// ---------------------------------------------------------------------------------------------
// Pgmulti: the binary under test.
// ---------------------------------------------------------------------------------------------

/// Path of the pgmulti binary cargo built for this test run.
pub fn pgmulti_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgmulti")
}

/// Builder for a pgmulti config file.
#[derive(Debug, Clone)]
pub struct PgmultiConf {
    pub mode: String,
    /// (host, port) of node 0, 1, …
    pub backends: Vec<(String, u16)>,
    pub client_auth: String,
    /// Contents of the users file (PgBouncer userlist format); None: no `auth_file` line.
    pub auth_file: Option<String>,
    pub ssl: bool,
    pub backend_sslmode: Option<String>,
    pub log_level: String,
    /// Raw lines appended at the end.
    pub extra: Vec<String>,
}

impl Default for PgmultiConf {
    fn default() -> Self {
        PgmultiConf {
            mode: "relay".into(),
            backends: Vec::new(),
            client_auth: "trust".into(),
            auth_file: None,
            ssl: false,
            backend_sslmode: None,
            log_level: "info".into(),
            extra: Vec::new(),
        }
    }
}

impl PgmultiConf {
    /// Relay mode in front of `node`, client_auth trust, log_level info.
    pub fn relay(node: &Node) -> Self {
        PgmultiConf::default().backend(node.host(), node.port())
    }

    pub fn backend(mut self, host: &str, port: u16) -> Self {
        self.backends.push((host.into(), port));
        self
    }

    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = mode.into();
        self
    }

    pub fn client_auth(mut self, method: &str) -> Self {
        self.client_auth = method.into();
        self
    }

    /// Users file contents, e.g. `"alice" "alicepw"\n`.
    pub fn auth_file(mut self, contents: &str) -> Self {
        self.auth_file = Some(contents.into());
        self
    }

    /// `ssl = on` with the harness's self-signed certificate.
    pub fn ssl(mut self, on: bool) -> Self {
        self.ssl = on;
        self
    }

    pub fn backend_sslmode(mut self, mode: &str) -> Self {
        self.backend_sslmode = Some(mode.into());
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }

    /// A raw config line appended as is.
    pub fn line(mut self, raw: &str) -> Self {
        self.extra.push(raw.into());
        self
    }

    /// The config text for a pgmulti that lives in `dir` and listens on `port`. Writes the
    /// users file into `dir` as a side effect when one is configured.
    pub fn render(&self, dir: &Path, port: u16) -> String {
        let d = dir.display();
        let mut s = String::from("# pgmulti config written by the test harness\n");
        s += "listen_addresses = '127.0.0.1'\n";
        s += &format!("port = {port}\n");
        s += &format!("unix_socket_directories = '{d}'\n");
        s += &format!("mode = '{}'\n", self.mode);
        for (i, (host, p)) in self.backends.iter().enumerate() {
            s += &format!("backend_hostname{i} = '{host}'\n");
            s += &format!("backend_port{i} = {p}\n");
        }
        s += &format!("client_auth = '{}'\n", self.client_auth);
        if let Some(users) = &self.auth_file {
            let path = dir.join("userlist.txt");
            fs::write(&path, users).expect("write auth_file");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            s += &format!("auth_file = '{}'\n", path.display());
        }
        if self.ssl {
            let (cert, key) = test_cert();
            s += "ssl = on\n";
            s += &format!("ssl_cert_file = '{}'\n", cert.display());
            s += &format!("ssl_key_file = '{}'\n", key.display());
        }
        if let Some(mode) = &self.backend_sslmode {
            s += &format!("backend_sslmode = '{mode}'\n");
        }
        s += &format!("log_file = '{d}/pgmulti.log'\n");
        s += &format!("log_level = '{}'\n", self.log_level);
        for line in &self.extra {
            s += line;
            s.push('\n');
        }
        s
    }

    /// Writes `<dir>/pgmulti.conf` and returns its path.
    pub fn write(&self, dir: &Path, port: u16) -> PathBuf {
        let path = dir.join("pgmulti.conf");
        fs::write(&path, self.render(dir, port)).expect("write pgmulti.conf");
        path
    }
}

/// A running pgmulti process. Killed on drop; its log goes to stderr if the test panicked.
pub struct Pgmulti {
    child: Option<Child>,
    exit: Option<ExitStatus>,
    dir: PathBuf,
    port: u16,
    conf_path: PathBuf,
}

impl Pgmulti {
    /// Writes the config into a fresh temp dir, spawns `pgmulti -f <file>` and waits (≤ 10 s)
    /// until its TCP port accepts a connection. Panics with the log if it exits or times out.
    pub fn start(conf: &PgmultiConf) -> Pgmulti {
        let dir = temp_dir("pgmulti");
        let port = free_port();
        let conf_path = conf.write(&dir, port);
        let stdout = fs::File::create(dir.join("stdout.log")).unwrap();
        let stderr = stdout.try_clone().unwrap();
        let mut cmd = Command::new(pgmulti_bin());
        cmd.arg("-f")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // Dies with the test binary even when that is SIGKILLed. (PDEATHSIG fires when the
        // spawning *thread* exits; each test owns its Pgmulti, so that is the test's end.)
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn pgmulti");
        let mut pm = Pgmulti {
            child: Some(child),
            exit: None,
            dir,
            port,
            conf_path,
        };

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = pm.try_wait() {
                panic!(
                    "pgmulti exited during start-up ({status}):\n{}",
                    pm.output()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return pm;
            }
            if Instant::now() > deadline {
                panic!(
                    "pgmulti did not accept connections within 10 s:\n{}",
                    pm.output()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Directory of pgmulti's Unix socket (`psql -h <this> -p <port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn conf_path(&self) -> &Path {
        &self.conf_path
    }

    /// Rewrites the config file (same dir and port), e.g. before a SIGHUP.
    pub fn rewrite_conf(&self, conf: &PgmultiConf) {
        conf.write(&self.dir, self.port);
    }

    /// The log file's current contents.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("pgmulti.log")).unwrap_or_default()
    }

    /// Polls the log (≤ `timeout`) until `pred` holds for it; returns whether it did. Log
    /// lines are written when pgmulti's loop is idle, so they may lag a little.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.log()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Log plus whatever pgmulti wrote to stdout/stderr (for failure messages).
    pub fn output(&self) -> String {
        let stdio = fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default();
        format!(
            "--- pgmulti stdout/stderr ---\n{stdio}--- pgmulti log ---\n{}",
            self.log()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("pgmulti has been reaped")
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.exit = child.try_wait().expect("try_wait pgmulti");
            }
        }
        self.exit
    }

    /// libpq connection string to pgmulti over TCP without TLS.
    pub fn conn_str(&self, user: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={db} sslmode=disable",
            self.port
        )
    }

    /// psql over TCP (sslmode=disable) running `sql`; `password` becomes PGPASSWORD.
    pub fn psql(&self, user: &str, db: &str, password: Option<&str>, sql: &str) -> CmdOutput {
        let conn = self.conn_str(user, db);
        let env: Vec<(&str, &str)> = password.map(|p| ("PGPASSWORD", p)).into_iter().collect();
        psql(&[&conn, "-c", sql], &env)
    }

    /// psql over pgmulti's Unix socket running `sql`.
    pub fn psql_socket(
        &self,
        user: &str,
        db: &str,
        password: Option<&str>,
        sql: &str,
    ) -> CmdOutput {
        let port = self.port.to_string();
        let host = self.dir.to_str().unwrap();
        let env: Vec<(&str, &str)> = password.map(|p| ("PGPASSWORD", p)).into_iter().collect();
        psql(
            &["-h", host, "-p", &port, "-U", user, "-d", db, "-c", sql],
            &env,
        )
    }

    /// Sends a signal (libc::SIGTERM, SIGHUP, …).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pgmulti {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            // Keep the evidence: the tail of the log (trace logs can be huge).
            let out = self.output();
            let lines: Vec<&str> = out.lines().collect();
            let tail = &lines[lines.len().saturating_sub(400)..];
            eprintln!(
                "==== pgmulti on port {} (last {} lines) ====",
                self.port,
                tail.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
            if let Some(status) = self.exit {
                eprintln!(
                    "==== pgmulti had exited: {status} (signal {:?})",
                    status.signal()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rust client helpers (the `postgres` crate, sync, no TLS).
// ---------------------------------------------------------------------------------------------

/// How long a `postgres` crate connection attempt may take. The crate's `connect_timeout`
/// covers only the TCP connect, so a proxy that stalls during authentication would otherwise
/// hang the test forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// `postgres::Client::connect` bounded by `CONNECT_TIMEOUT` (panics when it is exceeded; the
/// stuck attempt is left behind in its thread).
fn connect_within_deadline(conn: &str) -> Result<postgres::Client, postgres::Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let conn_owned = conn.to_string();
    thread::spawn(move || {
        let _ = tx.send(postgres::Client::connect(&conn_owned, postgres::NoTls));
    });
    rx.recv_timeout(CONNECT_TIMEOUT)
        .unwrap_or_else(|_| panic!("connect {conn:?} did not finish within {CONNECT_TIMEOUT:?}"))
}

/// Connects with the `postgres` crate; panics with the error on failure.
pub fn connect(conn: &str) -> postgres::Client {
    connect_within_deadline(conn)
        .unwrap_or_else(|e| panic!("connect {conn:?}: {e} ({:?})", e.code()))
}

/// Connects with the `postgres` crate expecting failure; returns the error.
pub fn connect_error(conn: &str) -> postgres::Error {
    match connect_within_deadline(conn) {
        Ok(_) => panic!("connect {conn:?} unexpectedly succeeded"),
        Err(e) => e,
    }
}

/// One protocol message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend(((body.len() + 4) as u32).to_be_bytes());
    m.extend(body);
    m
}

/// A client that speaks the protocol byte by byte, for what no driver sends. Logs in with
/// trust authentication over TCP.
pub struct RawClient {
    pub stream: TcpStream,
    /// The process number BackendKeyData gave.
    pub pid: u32,
}

impl RawClient {
    pub fn connect(port: u16, user: &str, database: &str) -> RawClient {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut body = 196608u32.to_be_bytes().to_vec();
        body.extend(format!("user\0{user}\0database\0{database}\0\0").as_bytes());
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend(body);
        stream.write_all(&startup).unwrap();
        let mut c = RawClient { stream, pid: 0 };
        loop {
            let (tag, body) = c.read_message();
            match tag {
                b'K' => c.pid = u32::from_be_bytes(body[..4].try_into().unwrap()),
                b'E' => panic!("login refused: {}", String::from_utf8_lossy(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next message: tag and body (panics after the read timeout).
    pub fn read_message(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 5];
        self.stream.read_exact(&mut h).expect("an answer in time");
        let len = u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0; len - 4];
        self.stream.read_exact(&mut body).unwrap();
        (h[0], body)
    }

    /// A simple Query; the messages up to ReadyForQuery.
    pub fn query(&mut self, sql: &str) -> Vec<(u8, Vec<u8>)> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(&message(b'Q', &body));
        let mut got = Vec::new();
        loop {
            let m = self.read_message();
            let done = m.0 == b'Z';
            got.push(m);
            if done {
                return got;
            }
        }
    }

    /// The first column of the first DataRow of a simple Query, as text.
    pub fn query_value(&mut self, sql: &str) -> String {
        let got = self.query(sql);
        let Some((_, row)) = got.iter().find(|(t, _)| *t == b'D') else {
            panic!("no row for {sql}: {got:?}");
        };
        let len = i32::from_be_bytes(row[2..6].try_into().unwrap());
        String::from_utf8_lossy(&row[6..6 + len.max(0) as usize]).into_owned()
    }

    /// The tags of the messages up to ReadyForQuery, and its status.
    pub fn read_until_ready(&mut self) -> (Vec<u8>, u8) {
        let mut tags = Vec::new();
        loop {
            let (tag, body) = self.read_message();
            tags.push(tag);
            if tag == b'Z' {
                return (tags, body[0]);
            }
        }
    }
}
