//! Health checks (`health_check_period`, `health_check_timeout`): every period each live
//! node gets a short-lived loop entry that connects (nonblocking), logs in as
//! `health_check_user` and runs `SELECT 1`. A check that fails or times out is retried
//! `health_check_max_retries` times, `health_check_retry_delay` apart; then the node is
//! detached (which runs `failover_command`). Sessions keep working on the other nodes. The
//! `SELECT 1` round trip is also a latency sample for read routing.

use std::time::Duration;

use super::own_connection::OwnConnection;
use crate::protocol::framing::message_header;
use crate::protocol::frontend;
use crate::reactor::context::{Context, TimerKind};
use crate::session::node::{Credentials, LoginStep};

/// `mode = streaming`: the check also reads the node's role and WAL position, and how far
/// a standby's replay is behind in time: 0 when it has replayed all the WAL it received,
/// else the age of the last transaction it replayed (the usual measure of replay lag).
const ROLE_AND_POSITION: &str = "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() \
     THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, \
     CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn() \
     THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) ELSE 0 END";

/// (in recovery, WAL position, replay delay in seconds) from the DataRow answering
/// `ROLE_AND_POSITION`.
fn read_role_and_position(body: &[u8]) -> Option<(bool, u64, f64)> {
    let fields = crate::protocol::backend::data_row_fields(body).ok()?;
    let text = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.0)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    let standby = text(0)? == "t";
    let lsn = text(1).and_then(parse_lsn).unwrap_or(0);
    let delay = text(2)
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|d| d.is_finite() && *d > 0.0)
        .unwrap_or(0.0);
    Some((standby, lsn, delay))
}

/// A WAL position as PostgreSQL writes it (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// How many more `health_check_timeout`s a check gets when its node answered during the
/// last one but the check is not done (see `HealthCheck::timed_out`). A loop busy for
/// seconds per pass gives a check one step per period; its login and `SELECT 1` take four
/// or five. A node that answers nothing in a period still fails at its end.
const MAX_EXTENSIONS: u8 = 10;

/// How long a promotion may take (`pg_promote`'s wait), whether after the primary's loss or
/// asked for by PROMOTE NODE / SWITCHOVER.
pub const PROMOTE_WAIT: Duration = Duration::from_secs(60);
const PROMOTE: &str = "SELECT pg_promote(true, 60)";

pub struct HealthCheck {
    node: u8,
    own: OwnConnection,
    /// Not a check: `pg_promote()` of this standby (`mode = streaming`, the primary lost).
    promote: bool,
    /// When `SELECT 1` was sent: its round trip is a latency sample, so that a node that
    /// serves no reads is still measured (`Cluster::read_node`).
    asked: Option<std::time::Instant>,
    /// The node's socket became readable or writable since the last timeout.
    heard: bool,
    /// Timeouts survived because the node was heard from (`timed_out`).
    extensions: u8,
}

impl HealthCheck {
    pub fn start(node: u8, cx: &mut Context) -> Result<HealthCheck, String> {
        let timeout = cx.shared.config.health_check_timeout;
        HealthCheck::connect(node, timeout, cx)
    }

    /// `pg_promote()` on standby `node`, over a connection like a health check's, waiting
    /// (up to `PROMOTE_WAIT`) until the node has left recovery: then `Cluster::promoted`.
    pub fn promote(node: u8, cx: &mut Context) -> Result<HealthCheck, String> {
        cx.shared.cluster.promoting = Some(node);
        let mut h = HealthCheck::connect(node, PROMOTE_WAIT + Duration::from_secs(5), cx)
            .inspect_err(|_| cx.shared.cluster.promoting = None)?;
        h.promote = true;
        Ok(h)
    }

    fn connect(node: u8, timeout: Duration, cx: &mut Context) -> Result<HealthCheck, String> {
        let c = &cx.shared.config;
        let credentials = if c.health_check_password.is_empty() {
            Credentials::from_secret(cx.shared.users.get(&c.health_check_user))
        } else {
            Credentials {
                password: Some(c.health_check_password.clone()),
                ..Default::default()
            }
        };
        let (user, database) = (c.health_check_user.clone(), c.health_check_database.clone());
        let prefix = format!("health check node{node}");
        let own = OwnConnection::start(node, &user, &database, credentials, prefix, timeout, cx)?;
        Ok(HealthCheck {
            node,
            own,
            promote: false,
            asked: None,
            heard: false,
            extensions: 0,
        })
    }

    pub fn node(&self) -> u8 {
        self.node
    }

    pub fn set_ready(&mut self, readable: bool, writable: bool, read_closed: bool) {
        self.heard |= readable || writable;
        self.own.set_ready(readable, writable, read_closed);
    }

    /// Returns true when finished (healthy, or the node was detached).
    pub fn drive(&mut self, cx: &mut Context) -> bool {
        if self.own.conn.is_none() {
            return true;
        }
        if self.asked.is_none() {
            match self.own.login(cx) {
                LoginStep::Pending => return false,
                // Refused for its credentials or database: pgmulti's configuration is wrong,
                // not the node; it stays attached and the log says so.
                LoginStep::Failed {
                    reason,
                    refused: Some(code),
                } if code.starts_with("28") || code == "3D000" => {
                    log::error!(
                        "{}: {reason}; check health_check_user, health_check_password and health_check_database",
                        self.own.prefix()
                    );
                    self.close();
                    return true;
                }
                LoginStep::Failed { reason, .. } => return self.fail(&reason, cx),
                LoginStep::Ready => {
                    let mut q = Vec::new();
                    let check = if self.promote {
                        PROMOTE
                    } else if cx.shared.config.mode == crate::config::Mode::Streaming {
                        ROLE_AND_POSITION
                    } else {
                        "SELECT 1"
                    };
                    frontend::query(&mut q, check);
                    if let Some(conn) = self.own.conn.as_mut() {
                        conn.send(&q);
                    }
                    self.asked = Some(cx.now);
                }
            }
        }
        let Some(conn) = self.own.conn.as_mut() else {
            return true;
        };
        if conn.flush().is_err() {
            return self.fail("connection lost", cx);
        }
        let filled = conn.ep.fill();
        self.heard |= matches!(filled, Ok(n) if n > 0);
        loop {
            let data = conn.ep.rx.data();
            match message_header(data, conn.ep.rx.capacity()) {
                Ok(Some((tag, len))) if data.len() >= len => {
                    // `SELECT 1` in replication mode says nothing of a role.
                    let reading = (tag == b'D' && (self.promote || cx.shared.cluster.streaming))
                        .then(|| read_role_and_position(&data[5..len]))
                        .flatten();
                    let failure = (tag == b'E').then(|| {
                        crate::protocol::backend::parse_error_fields(&data[5..len])
                            .map_or_else(|e| e.to_string(), |f| f.message.to_string())
                    });
                    conn.ep.rx.consume(len);
                    if self.promote {
                        let cluster = &mut cx.shared.cluster;
                        match (tag, reading) {
                            // pg_promote(true, …) answers true once the node left recovery;
                            // a health check may have seen it first.
                            (b'D', Some((true, _, _))) if cluster.promoting == Some(self.node) => {
                                cluster.promoting = None;
                                cluster.promoted(self.node);
                            }
                            (b'D', Some((true, _, _))) => {}
                            (b'D', _) => log::error!(
                                "node {}: pg_promote() did not finish within {PROMOTE_WAIT:?}",
                                self.node
                            ),
                            (b'E', _) => log::error!(
                                "node {}: pg_promote() failed: {}",
                                self.node,
                                failure.unwrap_or_default()
                            ),
                            (b'Z', _) => {
                                self.close();
                                if cluster.promoting == Some(self.node) {
                                    cluster.promoting = None;
                                }
                                return true;
                            }
                            _ => {}
                        }
                        continue;
                    }
                    match tag {
                        b'Z' => {
                            self.close();
                            if let Some(n) = cx.shared.cluster.nodes.get_mut(self.node as usize) {
                                n.health_failures = 0;
                            }
                            if let Some(at) = self.asked {
                                let ms = cx.now.saturating_duration_since(at).as_secs_f64() * 1e3;
                                cx.shared.cluster.observe_latency(self.node, ms);
                            }
                            return true;
                        }
                        b'D' => {
                            if let Some((standby, lsn, delay)) = reading {
                                let cluster = &mut cx.shared.cluster;
                                // Never two primaries: one that appears beside the primary
                                // (promoted behind pgmulti's back, or an old primary
                                // attached again) has another history from some point on.
                                let other = cluster.lead().filter(|&l| l != self.node);
                                if let (false, Some(primary), false) =
                                    (standby, other, cluster.promoting == Some(self.node))
                                {
                                    let why = format!(
                                        "it is a primary too, beside node {primary}; rebuild it as a standby (RECOVER NODE {})",
                                        self.node
                                    );
                                    cluster.detach(self.node, &why);
                                    self.close();
                                    return true;
                                }
                                if let Some(n) = cluster.nodes.get_mut(self.node as usize) {
                                    if n.standby != Some(standby) {
                                        log::info!(
                                            "node {} is a {}",
                                            self.node,
                                            if standby { "standby" } else { "primary" }
                                        );
                                        cluster.changes += 1;
                                    }
                                    n.standby = Some(standby);
                                    n.wal_lsn = lsn;
                                    n.replay_delay = Duration::from_secs_f64(delay);
                                    if !standby && cluster.promoting == Some(self.node) {
                                        cluster.promoting = None;
                                        cluster.promoted(self.node);
                                    }
                                }
                            }
                        }
                        b'E' => return self.fail("SELECT 1 failed", cx),
                        _ => {}
                    }
                }
                Ok(_) => break,
                Err(e) => return self.fail(&e.to_string(), cx),
            }
        }
        match filled {
            Ok(_) => false,
            Err(e) => self.fail(&e.to_string(), cx),
        }
    }

    /// A failed check: retried `health_check_max_retries` times, `health_check_retry_delay`
    /// apart, before the node is detached.
    fn fail(&mut self, why: &str, cx: &mut Context) -> bool {
        self.close();
        if self.promote {
            log::error!("node {} could not be promoted: {why}", self.node);
            if cx.shared.cluster.promoting == Some(self.node) {
                cx.shared.cluster.promoting = None;
            }
            return true;
        }
        let retries = cx.shared.config.health_check_max_retries;
        let Some(n) = cx.shared.cluster.nodes.get_mut(self.node as usize) else {
            return true;
        };
        n.health_failures += 1;
        if n.health_failures <= retries {
            log::warn!(
                "health check of node {} failed (retry {} of {retries} in {:?}): {why}",
                self.node,
                n.health_failures,
                cx.shared.config.health_check_retry_delay
            );
            cx.shared.health_retries.push(self.node);
            return true;
        }
        n.health_failures = 0;
        cx.shared
            .cluster
            .detach(self.node, &format!("health check failed: {why}"));
        true
    }

    /// The check ran out of time: the node is detached — unless it is not the node that was
    /// slow. A loop kept busy by pgmulti's own work (a flood of huge statements) reaches the
    /// timer before it reads an answer already here, and gives the check's next step its
    /// turn late. So the check first reads what has come; if the node answered during this
    /// period but the check is not done, it gets another period (`MAX_EXTENSIONS` at most).
    /// A node that answers nothing fails at the first one. Returns true when the check goes
    /// on (the timer is set again).
    pub fn timed_out(&mut self, cx: &mut Context) -> bool {
        self.own.set_ready(true, true, false);
        let logged_in = self.asked.is_some();
        if self.drive(cx) {
            return false;
        }
        // What came just now counts too (it arrived after this pass's events were read).
        let heard = std::mem::take(&mut self.heard) || self.asked.is_some() != logged_in;
        let t = cx.shared.config.health_check_timeout;
        if heard && self.extensions < MAX_EXTENSIONS {
            self.extensions += 1;
            cx.schedule(t, TimerKind::Connect);
            return true;
        }
        self.fail(&format!("no answer within {t:?}"), cx);
        false
    }

    pub fn close(&mut self) {
        self.own.close();
    }
}
