//! The relay's node-side TLS (`backend_sslmode`) and its timers (`authentication_timeout`,
//! `client_idle_timeout`, `connect_timeout`), against real PostgreSQL nodes.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Reads until EOF (or reset) and returns everything received; fails after `limit`.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("connection still open after {limit:?} ({e}); received {got:?}"),
        }
    }
}

#[test]
fn node_connection_uses_tls_when_required() {
    let node = Node::start(NodeOptions {
        ssl: true,
        ..Default::default()
    });
    let pm = Pgmulti::start(&PgmultiConf::relay(&node).backend_sslmode("require"));
    let out = pm.psql(
        "postgres",
        "postgres",
        None,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "t",
        "pgmulti's node connection is not TLS"
    );

    // `disable` talks plaintext to the same node.
    let plain = Pgmulti::start(&PgmultiConf::relay(&node).backend_sslmode("disable"));
    let out = plain.psql(
        "postgres",
        "postgres",
        None,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert_eq!(out.stdout.trim(), "f", "{}", out.stderr);
}

#[test]
fn require_fails_clearly_against_a_node_without_tls() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()).backend_sslmode("require"));
    let out = pm.psql("postgres", "postgres", None, "SELECT 1");
    assert!(!out.success(), "login should fail without TLS on the node");
    assert!(
        out.stderr.contains("does not support SSL"),
        "unclear error: {}",
        out.stderr
    );
}

#[test]
fn silent_client_is_dropped_after_authentication_timeout() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()).line("authentication_timeout = 1"));
    let mut s = TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    assert_eq!(
        got.first(),
        Some(&b'E'),
        "expected a FATAL ErrorResponse first: {got:?}"
    );
    assert!(pm.wait_log(Duration::from_secs(5), |l| l
        .contains("closing: authentication timeout")));
    // Others are unaffected.
    assert_eq!(
        pm.psql("postgres", "postgres", None, "SELECT 1")
            .stdout
            .trim(),
        "1"
    );
}

#[test]
fn idle_client_is_closed_after_client_idle_timeout() {
    let pm = Pgmulti::start(&PgmultiConf::relay(shared_node()).line("client_idle_timeout = 1"));
    let mut client = connect(&pm.conn_str("postgres", "postgres"));
    client.batch_execute("SELECT 1").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let err = client.batch_execute("SELECT 1").unwrap_err();
    assert!(
        err.is_closed() || err.code().is_some(),
        "expected the idle session to be gone: {err}"
    );
    assert!(pm.wait_log(Duration::from_secs(5), |l| l
        .contains("closing: client idle")));

    // A session inside a transaction is not idle-closed while the client thinks.
    let mut busy = connect(&pm.conn_str("postgres", "postgres"));
    busy.batch_execute("SELECT 1").unwrap();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(500));
        busy.batch_execute("SELECT 1").unwrap();
    }
}

#[test]
fn node_that_never_answers_fails_after_connect_timeout() {
    // A listener that never accepts: the TCP connect completes (backlog), the login never does.
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = black_hole.local_addr().unwrap().port();
    let conf = PgmultiConf {
        backends: vec![("127.0.0.1".into(), port)],
        ..PgmultiConf::relay(shared_node())
    };
    let pm = Pgmulti::start(&conf.line("connect_timeout = 1"));
    let started = Instant::now();
    let out = pm.psql("postgres", "postgres", None, "SELECT 1");
    assert!(!out.success());
    assert!(
        out.stderr.contains("timeout"),
        "unclear error: {}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    drop(black_hole);
}

#[test]
fn closed_node_port_fails_at_once_with_a_clear_error() {
    let unused = free_port();
    let pm = Pgmulti::start(&PgmultiConf {
        backends: vec![("127.0.0.1".into(), unused)],
        ..PgmultiConf::relay(shared_node())
    });
    let mut s = TcpStream::connect(("127.0.0.1", pm.port())).unwrap();
    let mut startup = Vec::new();
    let body: Vec<u8> = [&196608u32.to_be_bytes()[..], b"user\0postgres\0\0"].concat();
    startup.extend(((body.len() + 4) as u32).to_be_bytes());
    startup.extend(body);
    s.write_all(&startup).unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("could not connect"), "{text}");
}
