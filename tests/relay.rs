//! `mode = relay`: pgmulti between real clients (psql, pgbench, the `postgres` crate, raw
//! sockets) and one real PostgreSQL node. Every test asserts what a client or an operator can
//! observe: query results, SQLSTATEs, timings, the log file, the process's RSS and CPU time.

mod common;

use common::*;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Users file with alice's plaintext password.
fn alice_plaintext() -> String {
    format!("\"alice\" \"{ALICE_PASSWORD}\"\n")
}

fn assert_output(out: &CmdOutput, expected: &str, what: &str) {
    assert!(out.success(), "{what}: psql failed: {}", out.stderr);
    assert_eq!(out.stdout.trim(), expected, "{what}");
}

/// StartupMessage, protocol 3.0.
fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Reads one backend message (tag, body).
fn read_message(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    s.read_exact(&mut header)?;
    let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
    assert!(
        (4..1 << 24).contains(&len),
        "implausible message length {len}"
    );
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body)?;
    Ok((header[0], body))
}

/// A raw client logged in through pgmulti (client_auth trust) and idle at ReadyForQuery.
fn raw_login(pm: &Pgmulti) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&startup_packet("postgres", "postgres"))
        .unwrap();
    loop {
        let (tag, body) = read_message(&mut s).expect("read during login");
        match tag {
            b'Z' => return s,
            b'R' => assert_eq!(body, [0, 0, 0, 0], "expected AuthenticationOk (trust)"),
            b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}

#[derive(Debug, PartialEq)]
enum Answer {
    ErrorResponse,
    Closed,
}

/// What pgmulti does within 5 s after bad input: answers with an ErrorResponse first, or
/// closes the connection (EOF or reset, possibly after non-'E' bytes such as a TLS alert).
/// Silence for 5 s fails the test.
fn expect_error_or_close(s: &mut TcpStream) -> Answer {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Answer::Closed,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got[0] == b'E' {
                    return Answer::ErrorResponse;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return Answer::Closed
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(
                    Instant::now() < deadline,
                    "no ErrorResponse and no close within 5 s; received {got:?}"
                );
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// True if `line` names the peer `127.0.0.1:<port>` (and not a longer port number).
fn mentions_peer(line: &str, port: u16) -> bool {
    let peer = format!("127.0.0.1:{port}");
    line.match_indices(&peer)
        .any(|(i, _)| !line[i + peer.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// After bad input from the client on local port `client_port`: pgmulti is alive, still
/// serves `SELECT 1`, and logged exactly one "closing" line for that connection.
fn assert_survived(pm: &mut Pgmulti, client_port: u16) {
    assert!(pm.is_running(), "pgmulti died:\n{}", pm.output());
    assert_output(
        &pm.psql("postgres", "postgres", None, "SELECT 1"),
        "1",
        "SELECT 1 afterwards",
    );
    let closing = |log: &str| {
        log.lines()
            .filter(|l| l.contains("closing") && mentions_peer(l, client_port))
            .count()
    };
    assert!(
        pm.wait_log(Duration::from_secs(5), |log| closing(log) > 0),
        "no \"closing\" line for 127.0.0.1:{client_port}:\n{}",
        pm.output()
    );
    assert_eq!(
        closing(&pm.log()),
        1,
        "one \"closing\" line per connection:\n{}",
        pm.log()
    );
    assert!(pm.is_running(), "pgmulti died:\n{}", pm.output());
}

fn local_port(s: &TcpStream) -> u16 {
    s.local_addr().unwrap().port()
}

/// VmRSS of a process in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// utime + stime of a process in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

// ---------------------------------------------------------------------------------------------
// 1. Connecting: TCP, Unix socket, TLS, client_auth methods
// ---------------------------------------------------------------------------------------------

#[test]
fn psql_over_tcp_and_unix_socket() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    assert_output(
        &pm.psql("postgres", "postgres", None, "SELECT 1"),
        "1",
        "TCP",
    );
    assert_output(
        &pm.psql_socket("postgres", "postgres", None, "SELECT 1"),
        "1",
        "Unix socket",
    );
}

#[test]
fn tls_with_scram_client_auth() {
    let conf = PgmultiConf::relay(shared_node())
        .ssl(true)
        .client_auth("scram-sha-256")
        .auth_file(&alice_plaintext());
    let pm = Pgmulti::start(&conf);
    let conn = format!(
        "host=127.0.0.1 port={} user=alice dbname=app sslmode=require",
        pm.port()
    );

    // sslmode=require: libpq fails unless the TLS handshake succeeded.
    let out = psql(
        &[&conn, "-c", "SELECT current_user", "-c", "\\conninfo"],
        &[("PGPASSWORD", ALICE_PASSWORD)],
    );
    assert!(out.success(), "psql with sslmode=require: {}", out.stderr);
    assert!(out.stdout.starts_with("alice\n"), "{}", out.stdout);
    assert!(
        out.stdout.contains("SSL connection"),
        "\\conninfo: {}",
        out.stdout
    );

    let bad = psql(&[&conn, "-c", "SELECT 1"], &[("PGPASSWORD", "not-alicepw")]);
    assert!(!bad.success());
    assert!(
        bad.stderr
            .contains("password authentication failed for user \"alice\""),
        "{}",
        bad.stderr
    );
}

#[test]
fn scram_client_auth_rejects_wrong_password_with_28p01() {
    let conf = PgmultiConf::relay(shared_node())
        .client_auth("scram-sha-256")
        .auth_file(&alice_plaintext());
    let pm = Pgmulti::start(&conf);
    let conn = pm.conn_str("alice", "app");
    let err = connect_error(&format!("{conn} password=wrong"));
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    let mut ok = connect(&format!("{conn} password={ALICE_PASSWORD}"));
    let user: String = ok
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(user, "alice");
}

#[test]
fn md5_client_auth() {
    let conf = PgmultiConf::relay(shared_node())
        .client_auth("md5")
        .auth_file(&alice_plaintext());
    let pm = Pgmulti::start(&conf);
    let conn = pm.conn_str("alice", "app");
    let out = psql(
        &[&conn, "-c", "SELECT current_user"],
        &[("PGPASSWORD", ALICE_PASSWORD)],
    );
    assert_output(&out, "alice", "md5 with the right password");
    let err = connect_error(&format!("{conn} password=wrong"));
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[test]
fn trust_client_auth() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()).client_auth("trust"));
    let mut client = connect(&pm.conn_str("alice", "app"));
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(user, "alice");
}

// ---------------------------------------------------------------------------------------------
// 2. Logging into nodes that require passwords, with what the users file holds
// ---------------------------------------------------------------------------------------------

#[test]
fn scram_node_with_verifier_in_auth_file() {
    let node = Node::start(NodeOptions::host_auth("scram-sha-256"));
    let users = format!("\"alice\" \"{}\"\n", node.scram_verifier("alice"));
    let conf = PgmultiConf::relay(&node)
        .client_auth("scram-sha-256")
        .auth_file(&users);
    let pm = Pgmulti::start(&conf);
    // pgmulti has no password, only the verifier: it must log into the node with the keys it
    // captured from the client's SCRAM exchange.
    let out = pm.psql("alice", "app", Some(ALICE_PASSWORD), "SELECT current_user");
    assert_output(&out, "alice", "psql through pgmulti to a SCRAM node");
    let mut client = connect(&format!(
        "{} password={ALICE_PASSWORD}",
        pm.conn_str("alice", "app")
    ));
    let n: i32 = client.query_one("SELECT 7", &[]).unwrap().get(0);
    assert_eq!(n, 7);
    let err = connect_error(&format!("{} password=wrong", pm.conn_str("alice", "app")));
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[test]
fn md5_node_with_hash_in_auth_file() {
    let node = Node::start(NodeOptions::host_auth("md5"));
    let users = format!("\"bob\" \"{}\"\n", node.md5_hash("bob"));
    let conf = PgmultiConf::relay(&node)
        .client_auth("md5")
        .auth_file(&users);
    let pm = Pgmulti::start(&conf);
    let out = pm.psql("bob", "postgres", Some(BOB_PASSWORD), "SELECT current_user");
    assert_output(&out, "bob", "psql through pgmulti to an md5 node");
    let err = connect_error(&format!(
        "{} password=wrong",
        pm.conn_str("bob", "postgres")
    ));
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 3. pgbench in all three query modes
// ---------------------------------------------------------------------------------------------

#[test]
fn pgbench_simple_extended_prepared() {
    let node = shared_node();
    node.fresh_db("relay_bench", "postgres");
    let pm = Pgmulti::start(&PgmultiConf::relay(node));
    let port = pm.port().to_string();
    let target = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];

    let (ok, out, err) = pgbench(
        &[&target[..], &["-i", "-q", "-s", "2", "relay_bench"]].concat(),
        &[],
    );
    assert!(ok, "pgbench -i through pgmulti:\n{out}\n{err}");

    // pgbench truncates pgbench_history before each run (no -n): remember the last run.
    let mut last_run = 0;
    for mode in ["simple", "extended", "prepared"] {
        let args = ["-T", "10", "-c", "8", "-j", "2", "-M", mode, "relay_bench"];
        let (ok, out, err) = pgbench(&[&target[..], &args[..]].concat(), &[]);
        assert!(ok, "pgbench -M {mode}:\n{out}\n{err}");
        let s = parse_pgbench_summary(&out).unwrap_or_else(|| panic!("no summary:\n{out}"));
        assert_eq!(s.failed, 0, "-M {mode}: failed transactions\n{out}\n{err}");
        assert!(s.processed > 0, "-M {mode}: nothing processed\n{out}");
        last_run = s.processed;
    }

    let q = "SELECT a.s, a.c, b.s, b.c, t.s, t.c, h.s, h.c FROM \
             (SELECT sum(abalance) s, count(*) c FROM pgbench_accounts) a, \
             (SELECT sum(bbalance) s, count(*) c FROM pgbench_branches) b, \
             (SELECT sum(tbalance) s, count(*) c FROM pgbench_tellers) t, \
             (SELECT coalesce(sum(delta), 0) s, count(*) c FROM pgbench_history) h";
    let through = pm.psql("postgres", "relay_bench", None, q);
    let direct = node.psql("postgres", "relay_bench", q);
    assert_output(
        &through,
        &direct,
        "totals through pgmulti vs. directly on the node",
    );

    // TPC-B invariants: every committed transaction added the same delta to one account,
    // teller and branch, and (in the last run) one history row.
    let v: Vec<i64> = direct.split('|').map(|x| x.parse().unwrap()).collect();
    assert_eq!((v[1], v[3], v[5]), (200_000, 2, 20), "row counts: {direct}");
    assert!(v[0] == v[2] && v[2] == v[4], "balances diverge: {direct}");
    assert_eq!(
        v[7] as u64, last_run,
        "history rows vs. transactions of the last run"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. COPY, LISTEN/NOTIFY, errors in transactions, big values
// ---------------------------------------------------------------------------------------------

#[test]
fn copy_to_stdout_100k_rows() {
    let node = shared_node();
    let pm = Pgmulti::start(&PgmultiConf::relay(node));
    let sql = "COPY (SELECT g, md5(g::text) FROM generate_series(1,100000) g) TO STDOUT";
    let through = pm.psql("postgres", "postgres", None, sql);
    assert!(through.success(), "{}", through.stderr);
    let direct = node.psql("postgres", "postgres", sql);
    assert_eq!(through.stdout.lines().count(), 100_000);
    assert!(
        through.stdout.trim() == direct,
        "COPY output through pgmulti differs from direct"
    );
}

#[test]
fn copy_from_stdin_100k_rows() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut client = connect(&pm.conn_str("postgres", "postgres"));
    client
        .batch_execute("CREATE TEMP TABLE copied (g int, s text)")
        .unwrap();
    let data: String = (1..=100_000).map(|g| format!("{g}\trow-{g}\n")).collect();
    let mut writer = client.copy_in("COPY copied (g, s) FROM STDIN").unwrap();
    writer.write_all(data.as_bytes()).unwrap();
    assert_eq!(writer.finish().unwrap(), 100_000);

    let got = client
        .query_one(
            "SELECT count(*), md5(string_agg(g || ':' || s, ',' ORDER BY g)) FROM copied",
            &[],
        )
        .unwrap();
    let want = client
        .query_one(
            "SELECT count(*), md5(string_agg(g || ':row-' || g, ',' ORDER BY g)) \
             FROM generate_series(1, 100000) g",
            &[],
        )
        .unwrap();
    assert_eq!(got.get::<_, i64>(0), want.get::<_, i64>(0));
    assert_eq!(got.get::<_, String>(1), want.get::<_, String>(1));
}

#[test]
fn listen_notify_is_delivered() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let conn = pm.conn_str("postgres", "postgres");
    let mut listener = connect(&conn);
    listener.batch_execute("LISTEN relay_channel").unwrap();
    let mut notifier = connect(&conn);
    notifier
        .batch_execute("NOTIFY relay_channel, 'hello through pgmulti'")
        .unwrap();

    let mut notifications = listener.notifications();
    let n = notifications
        .timeout_iter(Duration::from_secs(5))
        .next()
        .expect("reading notifications")
        .expect("no notification within 5 s");
    assert_eq!(n.channel(), "relay_channel");
    assert_eq!(n.payload(), "hello through pgmulti");
}

#[test]
fn error_in_transaction_then_rollback() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut client = connect(&pm.conn_str("postgres", "postgres"));
    client.batch_execute("BEGIN").unwrap();
    let err = client.batch_execute("SELECT 1/0").unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
    let err = client.query("SELECT $1::int", &[&1i32]).unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{err}"
    );
    client.batch_execute("ROLLBACK").unwrap();
    let n: i32 = client
        .query_one("SELECT $1::int + 1", &[&41i32])
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
    let rows = client.simple_query("SELECT 'still usable'").unwrap();
    assert!(!rows.is_empty());
}

#[test]
fn fifty_megabyte_value_round_trips() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut client = connect(&pm.conn_str("postgres", "postgres"));
    client
        .batch_execute("CREATE TEMP TABLE big (v text)")
        .unwrap();
    let reps = 5 * 1024 * 1024; // "0123456789" × reps = 50 MiB
    let value = "0123456789".repeat(reps);
    client
        .execute("INSERT INTO big VALUES ($1)", &[&value])
        .unwrap();

    let row = client
        .query_one(
            "SELECT length(v), md5(v) = md5(repeat('0123456789', $1)) FROM big",
            &[&(reps as i32)],
        )
        .unwrap();
    assert_eq!(row.get::<_, i32>(0) as usize, value.len());
    assert!(row.get::<_, bool>(1), "md5 of the stored value differs");

    let back: String = client.query_one("SELECT v FROM big", &[]).unwrap().get(0);
    assert!(
        back == value,
        "value read back differs (length {})",
        back.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Cancel
// ---------------------------------------------------------------------------------------------

#[test]
fn cancel_request_reaches_the_node() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut client = connect(&pm.conn_str("postgres", "postgres"));
    let token = client.cancel_token();
    let canceller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(500));
        token.cancel_query(postgres::NoTls)
    });
    let started = Instant::now();
    let err = client.batch_execute("SELECT pg_sleep(60)").unwrap_err();
    let took = started.elapsed();
    canceller
        .join()
        .unwrap()
        .expect("sending the CancelRequest");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(took < Duration::from_secs(5), "cancel took {took:?}");
    // The session survives a cancel.
    let n: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(n, 1);
}

// ---------------------------------------------------------------------------------------------
// 6. Protocol trace
// ---------------------------------------------------------------------------------------------

/// Message names a trace line may carry.
const MESSAGE_NAMES: &[&str] = &[
    "Parse",
    "Bind",
    "Describe",
    "Execute",
    "Sync",
    "Query",
    "Terminate",
    "Flush",
    "Close",
    "ParseComplete",
    "BindComplete",
    "RowDescription",
    "NoData",
    "DataRow",
    "CommandComplete",
    "ReadyForQuery",
    "ParameterDescription",
    "ErrorResponse",
    "NoticeResponse",
];

/// (connection id, direction, message name) of a trace line. Direction is '>' for
/// client→node and '<' for node→client. Both spellings are understood:
/// `… C-3 alice/db@127.0.0.1:5555 > Parse …` and `… C-3 db/alice@… client > node0 Parse …`
/// (a `<from> > <to>` pair; messages between pgmulti and a node alone are skipped).
fn trace_event(line: &str) -> Option<(String, char, String)> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let is_conn_id = |t: &str| {
        let t = t.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        t.strip_prefix("C-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let is_party = |t: &str| {
        matches!(t, "client" | "pgmulti" | "server")
            || t.starts_with("node")
            || t.starts_with("backend")
    };
    let c = tokens.iter().position(|t| is_conn_id(t))?;
    let d = c
        + 1
        + tokens[c + 1..]
            .iter()
            .position(|t| *t == ">" || *t == "<")?;
    let (dir, word) = match (tokens.get(d - 1), tokens.get(d + 1)) {
        (Some(from), Some(to)) if d > c + 1 && is_party(from) && is_party(to) => {
            let dir = if *from == "client" {
                '>'
            } else if *to == "client" {
                '<'
            } else {
                return None;
            };
            (dir, tokens.get(d + 2)?)
        }
        (_, Some(word)) => (tokens[d].chars().next().unwrap(), word),
        _ => return None,
    };
    let name: String = word
        .chars()
        .take_while(|ch| ch.is_ascii_alphanumeric())
        .collect();
    MESSAGE_NAMES.contains(&name.as_str()).then(|| {
        let conn = tokens[c]
            .trim_matches(|ch: char| !ch.is_ascii_alphanumeric())
            .to_string();
        (conn, dir, name)
    })
}

/// True if `wanted` (alternatives separated by '|') occur in order among `names`.
fn in_order(names: &[&str], wanted: &[&str]) -> bool {
    let mut it = names.iter();
    wanted
        .iter()
        .all(|w| it.any(|n| w.split('|').any(|alt| alt == *n)))
}

#[test]
fn trace_logs_each_message_and_no_secrets() {
    let node = shared_node();
    node.fresh_db("relay_trace", "alice");
    // Tables made directly on the node, so the trace holds just the run under test.
    let node_port = node.port().to_string();
    let node_host = node.socket_dir().to_str().unwrap();
    let init = [
        "-i",
        "-q",
        "-s",
        "1",
        "-h",
        node_host,
        "-p",
        &node_port,
        "-U",
        "alice",
        "relay_trace",
    ];
    let (ok, _, err) = pgbench(&init, &[]);
    assert!(ok, "pgbench -i on the node: {err}");

    let conf = PgmultiConf::relay(node)
        .log_level("trace")
        .client_auth("scram-sha-256")
        .auth_file(&alice_plaintext());
    let pm = Pgmulti::start(&conf);
    let port = pm.port().to_string();
    let run = [
        "-M",
        "extended",
        "-t",
        "1",
        "-c",
        "1",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "alice",
        "relay_trace",
    ];
    let (ok, out, err) = pgbench(&run, &[("PGPASSWORD", ALICE_PASSWORD)]);
    assert!(ok, "pgbench through pgmulti:\n{out}\n{err}");
    let s = parse_pgbench_summary(&out).expect("summary");
    assert_eq!((s.processed, s.failed), (1, 0));

    let has_flow = |log: &str| {
        let events: Vec<_> = log.lines().filter_map(trace_event).collect();
        let mut conns: Vec<&String> = events.iter().map(|e| &e.0).collect();
        conns.dedup();
        conns.iter().any(|conn| {
            let of = |dir: char| -> Vec<&str> {
                events
                    .iter()
                    .filter(|e| &e.0 == *conn && e.1 == dir)
                    .map(|e| e.2.as_str())
                    .collect()
            };
            in_order(&of('>'), &["Parse", "Bind", "Describe", "Execute", "Sync"])
                && in_order(
                    &of('<'),
                    &[
                        "ParseComplete",
                        "BindComplete",
                        "RowDescription|NoData",
                        "DataRow",
                        "CommandComplete",
                        "ReadyForQuery",
                    ],
                )
        })
    };
    assert!(
        pm.wait_log(Duration::from_secs(5), has_flow),
        "no connection with the extended-protocol flow in the trace:\n{}",
        pm.log()
    );

    let log = pm.log();
    assert!(!log.contains(ALICE_PASSWORD), "password in the log");
    assert!(!log.contains(",p="), "SCRAM client proof in the log");
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input from clients
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_input_startup_length_2_pow_31() {
    let mut pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut s = TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    let port = local_port(&s);
    s.write_all(&[0x80, 0, 0, 0, 0, 3, 0, 0]).unwrap();
    expect_error_or_close(&mut s);
    drop(s);
    assert_survived(&mut pm, port);
}

/// All a server sends after `packet` until it closes (or "<waits>" if it still waits after
/// 1 s), ErrorResponses reduced to severity, code and message (PostgreSQL adds its source
/// file and line), NegotiateProtocolVersion and old-style errors kept whole.
fn startup_answer(port: u16, packet: &[u8]) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(packet).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let waits = loop {
        match s.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true
            }
            Err(_) => break false,
        }
    };
    let mut out = Vec::new();
    let mut rest = &got[..];
    while let Some(&tag) = rest.first() {
        if tag == b'E' && rest.get(1).is_some_and(|b| b.is_ascii_alphabetic()) {
            out.push(String::from_utf8_lossy(rest).into_owned());
            break;
        }
        let Some(len) = rest
            .get(1..5)
            .map(|l| u32::from_be_bytes(l.try_into().unwrap()) as usize)
        else {
            out.push(format!("{rest:?}"));
            break;
        };
        let body = &rest[5..(1 + len).min(rest.len())];
        out.push(match tag {
            b'E' => body
                .split(|&b| b == 0)
                .filter(|f| matches!(f.first(), Some(b'S' | b'C' | b'M')))
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            b'v' => format!("v {body:?}"),
            // The login goes on: the first message of it is enough.
            t => {
                out.push(format!("{}", t as char));
                return out;
            }
        });
        rest = &rest[(1 + len).min(rest.len())..];
    }
    if waits {
        out.push("<waits>".into());
    }
    out
}

/// A StartupMessage with any version and parameters.
fn startup_with(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(format!("{k}\0{v}\0").as_bytes());
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

#[test]
fn startup_refusals_match_postgresql_message_for_message() {
    let node = shared_node();
    let pm = Pgmulti::start(&PgmultiConf::relay(node));
    let mut no_terminator = startup_with(3 << 16, &[("user", "postgres")]);
    no_terminator.pop();
    let n = no_terminator.len() as u32;
    no_terminator[..4].copy_from_slice(&n.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length 2^31", vec![0x80, 0, 0, 0, 0, 3, 0, 0]),
        ("length 4", vec![0, 0, 0, 4]),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "protocol 2.0",
            startup_with(2 << 16, &[("user", "postgres")]),
        ),
        (
            "protocol 4.0",
            startup_with(4 << 16, &[("user", "postgres")]),
        ),
        ("no terminator", no_terminator),
        (
            "no user",
            startup_with(3 << 16, &[("database", "postgres")]),
        ),
        (
            "3.1 and an option",
            startup_with((3 << 16) | 1, &[("user", "postgres"), ("_pq_.x", "1")]),
        ),
        (
            "short cancel",
            [16u32, 80877102, 1]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect(),
        ),
    ];
    for (what, packet) in cases {
        let direct = startup_answer(node.port(), &packet);
        let through = startup_answer(pm.port(), &packet);
        assert_eq!(through, direct, "{what}");
    }
}

#[test]
fn bad_input_message_length_below_4_after_login() {
    let mut pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut s = raw_login(&pm);
    let port = local_port(&s);
    s.write_all(&[b'Q', 0, 0, 0, 2]).unwrap();
    expect_error_or_close(&mut s);
    drop(s);
    assert_survived(&mut pm, port);
}

#[test]
fn bad_input_unknown_message_type_after_login() {
    let mut pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut s = raw_login(&pm);
    let port = local_port(&s);
    s.write_all(&[b'!', 0, 0, 0, 8, 1, 2, 3, 4]).unwrap();
    expect_error_or_close(&mut s);
    drop(s);
    assert_survived(&mut pm, port);
}

#[test]
fn bad_input_garbage_instead_of_startup() {
    let mut pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut s = TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    let port = local_port(&s);
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    expect_error_or_close(&mut s);
    drop(s);
    assert_survived(&mut pm, port);
}

#[test]
fn bad_input_plaintext_after_ssl_request() {
    let mut pm = Pgmulti::start(&PgmultiConf::relay(shared_node()).ssl(true));
    let mut s = TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = local_port(&s);
    s.write_all(&SSL_REQUEST).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], b'S', "SSLRequest answer with ssl = on");
    s.write_all(&startup_packet("postgres", "postgres"))
        .unwrap();
    expect_error_or_close(&mut s);
    drop(s);
    assert_survived(&mut pm, port);
}

#[test]
fn bad_input_connection_closed_mid_message() {
    let mut pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));

    // Mid StartupMessage: the length says 40 bytes, 10 arrive, then EOF.
    let mut s = TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    let mid_startup = local_port(&s);
    s.write_all(&[0, 0, 0, 40, 0, 3, 0, 0, b'u', b's']).unwrap();
    drop(s);
    assert_survived(&mut pm, mid_startup);

    // Mid Query after login: the length says 100 bytes, 8 arrive, then EOF.
    let mut s = raw_login(&pm);
    let mid_query = local_port(&s);
    s.write_all(&[b'Q', 0, 0, 0, 100, b'S', b'E', b'L', b'E'])
        .unwrap();
    drop(s);
    assert_survived(&mut pm, mid_query);
}

#[test]
fn client_that_never_reads_does_not_grow_memory() {
    let mut pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut s = raw_login(&pm);
    let port = local_port(&s);
    let sql = b"SELECT repeat('x', 1000) FROM generate_series(1, 2000000)\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
    query.extend_from_slice(sql);
    s.write_all(&query).unwrap();

    // 2 GB of rows are waiting; we read none of them for 5 s.
    let mut max_rss = 0;
    let started = Instant::now();
    let mut other_session_ok = false;
    while started.elapsed() < Duration::from_secs(5) {
        max_rss = max_rss.max(rss_kb(pm.pid()));
        if !other_session_ok && started.elapsed() > Duration::from_secs(2) {
            assert_output(
                &pm.psql("postgres", "postgres", None, "SELECT 1"),
                "1",
                "other session",
            );
            other_session_ok = true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    max_rss = max_rss.max(rss_kb(pm.pid()));
    assert!(max_rss < 100 * 1024, "pgmulti RSS reached {max_rss} kB");
    drop(s);
    assert_survived(&mut pm, port);
}

// ---------------------------------------------------------------------------------------------
// 8. Idle cost
// ---------------------------------------------------------------------------------------------

#[test]
fn hundred_idle_clients_cost_no_cpu() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let conn = pm.conn_str("postgres", "postgres");
    let mut clients: Vec<_> = (0..100).map(|_| connect(&conn)).collect();
    thread::sleep(Duration::from_secs(1));
    let before = cpu_seconds(pm.pid());
    thread::sleep(Duration::from_secs(10));
    let used = cpu_seconds(pm.pid()) - before;
    assert!(
        used < 0.1,
        "pgmulti used {used:.3} s of CPU in 10 s with 100 idle clients"
    );
    for client in &mut clients {
        client.simple_query("SELECT 1").unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Config check and version
// ---------------------------------------------------------------------------------------------

fn pgmulti_cli(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(pgmulti_bin());
    cmd.args(args);
    run_with_timeout(cmd, None, Duration::from_secs(30))
}

/// Writes `text` to `<dir>/<name>` and runs `pgmulti --check -f` on it.
fn check(dir: &std::path::Path, name: &str, text: &str) -> (String, CmdOutput) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    let out = pgmulti_cli(&["--check", "-f", &path]);
    (path, out)
}

#[test]
fn config_check_reports_file_and_line() {
    let dir = temp_dir("check");
    let good = PgmultiConf::default()
        .backend("127.0.0.1", 5432)
        .render(&dir, 6543);

    let (_, out) = check(&dir, "good.conf", &good);
    assert_eq!(
        out.status.code(),
        Some(0),
        "good file rejected: {}",
        out.stderr
    );

    // Unknown key after a comment and a blank line: its line number must count both.
    let unknown = format!("{good}# a comment\n\nno_such_setting = 1\n");
    let line = good.lines().count() + 3;
    let (path, out) = check(&dir, "unknown.conf", &unknown);
    assert_eq!(out.status.code(), Some(1), "unknown key accepted");
    assert!(
        out.stderr.contains(&format!("{path}:{line}:")),
        "want {path}:{line}: in {}",
        out.stderr
    );

    // Bad value in place of a good one.
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    let idx = lines
        .iter()
        .position(|l| l.starts_with("log_level"))
        .unwrap();
    lines[idx] = "log_level = 'loudest'".into();
    let (path, out) = check(&dir, "badvalue.conf", &(lines.join("\n") + "\n"));
    assert_eq!(out.status.code(), Some(1), "bad log_level accepted");
    assert!(
        out.stderr.contains(&format!("{path}:{}:", idx + 1)),
        "want {path}:{}: in {}",
        idx + 1,
        out.stderr
    );

    // Missing required key.
    let missing = PgmultiConf::default().render(&dir, 6543);
    let (path, out) = check(&dir, "missing.conf", &missing);
    assert_eq!(
        out.status.code(),
        Some(1),
        "file without backend_hostname0 accepted"
    );
    let located = out.stderr.lines().any(|l| {
        l.strip_prefix(&format!("{path}:"))
            .and_then(|rest| rest.split(':').next())
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    assert!(located, "want {path}:LINE: in {}", out.stderr);
    assert!(out.stderr.contains("backend_hostname0"), "{}", out.stderr);
}

#[test]
fn version_is_printed() {
    let out = pgmulti_cli(&["--version"]);
    assert!(out.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Signals
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_with_idle_session_exits_0() {
    let mut pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut idle = connect(&pm.conn_str("postgres", "postgres"));
    idle.simple_query("SELECT 1").unwrap();
    pm.signal(libc::SIGTERM);
    // An idle session holds no transaction, so nothing should delay the exit for long.
    let status = pm
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", pm.output()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}:\n{}",
        pm.output()
    );
    assert!(
        idle.simple_query("SELECT 1").is_err(),
        "session still served after exit"
    );
}

#[test]
fn sighup_reloads_log_level() {
    let conf = PgmultiConf::relay(shared_node());
    let mut pm = Pgmulti::start(&conf);
    let has_debug = |text: &str| {
        text.lines()
            .any(|l| l.split_whitespace().any(|t| t == "DEBUG"))
    };
    assert_output(
        &pm.psql("postgres", "postgres", None, "SELECT 1"),
        "1",
        "before reload",
    );
    thread::sleep(Duration::from_millis(500));
    let before = pm.log();
    assert!(
        !has_debug(&before),
        "DEBUG lines at log_level = 'info':\n{before}"
    );

    pm.rewrite_conf(&conf.clone().log_level("debug"));
    pm.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(500));
    assert_output(
        &pm.psql("postgres", "postgres", None, "SELECT 1"),
        "1",
        "after reload",
    );
    let reloaded = pm.wait_log(Duration::from_secs(5), |log| {
        has_debug(log.get(before.len()..).unwrap_or(""))
    });
    assert!(reloaded, "no DEBUG line after SIGHUP:\n{}", pm.log());
    assert!(pm.is_running(), "SIGHUP stopped pgmulti:\n{}", pm.output());
}

#[test]
fn sighup_reloads_the_auth_file() {
    let conf = PgmultiConf::relay(shared_node())
        .client_auth("scram-sha-256")
        .auth_file(&alice_plaintext());
    let pm = Pgmulti::start(&conf);
    let alice = |password: &str| pm.psql("alice", "postgres", Some(password), "SELECT 1");
    assert_output(&alice(ALICE_PASSWORD), "1", "before reload");

    pm.rewrite_conf(&conf.clone().auth_file("\"alice\" \"rotated-pw\"\n"));
    pm.signal(libc::SIGHUP);
    assert!(
        pm.wait_log(Duration::from_secs(5), |l| l
            .contains("configuration reloaded")),
        "no reload line:\n{}",
        pm.log()
    );
    let old = alice(ALICE_PASSWORD);
    assert!(!old.success(), "the old password still works after reload");
    assert!(
        old.stderr.contains("password authentication failed"),
        "{}",
        old.stderr
    );
    assert_output(&alice("rotated-pw"), "1", "new password after reload");

    // A broken file is refused and the running users stay.
    pm.rewrite_conf(&conf.clone().auth_file("\"alice\" unquoted\n"));
    pm.signal(libc::SIGHUP);
    assert!(
        pm.wait_log(Duration::from_secs(5), |l| l.contains("reload failed")),
        "no reload failure line:\n{}",
        pm.log()
    );
    assert_output(&alice("rotated-pw"), "1", "after a failed reload");
}

#[test]
fn gssenc_request_is_refused_and_login_goes_on() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()));
    let mut s = TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // GSSENCRequest: length 8, code 80877104.
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], b'N', "GSSENCRequest must be answered 'N'");
    s.write_all(&startup_packet("postgres", "postgres"))
        .unwrap();
    loop {
        let (tag, body) = read_message(&mut s).expect("login after GSSENCRequest");
        match tag {
            b'Z' => break,
            b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}

/// The salt a SCRAM exchange offers `user` (its server-first-message's `s=`).
fn scram_salt(port: u16, user: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = 196608u32.to_be_bytes().to_vec();
    body.extend(format!("user\0{user}\0database\0app\0\0").as_bytes());
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend(body);
    s.write_all(&startup).unwrap();
    let read = |s: &mut TcpStream| {
        let mut h = [0u8; 5];
        s.read_exact(&mut h).unwrap();
        let mut body = vec![0; u32::from_be_bytes(h[1..5].try_into().unwrap()) as usize - 4];
        s.read_exact(&mut body).unwrap();
        (h[0], body)
    };
    let (tag, sasl) = read(&mut s);
    assert_eq!((tag, &sasl[..4]), (b'R', &10u32.to_be_bytes()[..]), "SASL");
    let first = b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend((first.len() as u32).to_be_bytes());
    body.extend(first);
    s.write_all(&message(b'p', &body)).unwrap();
    let (tag, cont) = read(&mut s);
    assert_eq!(
        (tag, &cont[..4]),
        (b'R', &11u32.to_be_bytes()[..]),
        "SASLContinue"
    );
    let text = String::from_utf8(cont[4..].to_vec()).unwrap();
    text.split(',')
        .find_map(|a| a.strip_prefix("s="))
        .unwrap()
        .to_string()
}

/// A user that does not exist gets the same salt each time, as a real one does (PostgreSQL's
/// mock authentication): the reply does not tell them apart. A plaintext password's verifier
/// is made once, not at every login.
#[test]
fn scram_salts_do_not_tell_unknown_users_apart() {
    let conf = PgmultiConf::relay(shared_node())
        .client_auth("scram-sha-256")
        .auth_file(&alice_plaintext());
    let pm = Pgmulti::start(&conf);
    let ghost = scram_salt(pm.port(), "ghost");
    assert_eq!(
        ghost,
        scram_salt(pm.port(), "ghost"),
        "stable for an unknown user"
    );
    assert_ne!(ghost, scram_salt(pm.port(), "phantom"), "one per name");
    let alice = scram_salt(pm.port(), "alice");
    assert_eq!(
        alice,
        scram_salt(pm.port(), "alice"),
        "stable for a plaintext user"
    );
    let out = psql(
        &[
            &format!("host=127.0.0.1 port={} user=alice dbname=app", pm.port()),
            "-c",
            "SELECT 1",
        ],
        &[("PGPASSWORD", ALICE_PASSWORD)],
    );
    assert!(out.success(), "{}", out.stderr);
}
