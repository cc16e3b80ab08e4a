//! The `/metrics` endpoint (`metrics_port`): one short HTTP connection per scrape, served by
//! the loop like any other connection — read the request head (at most 8 KiB), answer with
//! the Prometheus text of the moment, close. A scrape that does not finish within
//! `METRICS_TIMEOUT` is dropped. What is exposed is listed in `render`.

use std::time::Duration;

use super::context::{Context, Shared, TimerKind};
use crate::metrics::{self, Exposition, HttpRequest, Kind};
use crate::net::endpoint::Endpoint;
use crate::net::transport::{Socket, Transport};
use crate::reactor::token::{token, Side};

pub const METRICS_TIMEOUT: Duration = Duration::from_secs(10);

pub struct MetricsConn {
    ep: Endpoint,
    /// The whole response, moved into the send buffer as it drains.
    response: Vec<u8>,
    sent: usize,
    answered: bool,
}

impl MetricsConn {
    pub fn start(socket: Socket, cx: &mut Context) -> std::io::Result<MetricsConn> {
        let mut ep = Endpoint::new(Transport::new(socket));
        ep.transport
            .register(cx.registry, token(cx.key, Side::Client))?;
        cx.schedule(METRICS_TIMEOUT, TimerKind::Connect);
        Ok(MetricsConn {
            ep,
            response: Vec::new(),
            sent: 0,
            answered: false,
        })
    }

    pub fn set_ready(&mut self, readable: bool, writable: bool, read_closed: bool) {
        self.ep.set_ready(readable, writable, read_closed);
    }

    /// Returns true when finished (answered and flushed, or the peer went away).
    pub fn drive(&mut self, cx: &mut Context) -> bool {
        if !self.answered {
            let filled = self.ep.fill();
            let request = metrics::parse_request(self.ep.rx.data());
            let (status, reason, body, head) = match request {
                HttpRequest::Incomplete if filled.is_ok() => return false,
                HttpRequest::Incomplete => return true,
                HttpRequest::Get {
                    path: "/metrics",
                    head,
                } => (200, "OK", render(cx.shared).into_bytes(), head),
                HttpRequest::Get { head, .. } => (
                    404,
                    "Not Found",
                    b"pgmulti serves /metrics only\n".to_vec(),
                    head,
                ),
                HttpRequest::Bad(why) => {
                    (400, "Bad Request", format!("{why}\n").into_bytes(), false)
                }
            };
            let content_type = if status == 200 {
                metrics::CONTENT_TYPE
            } else {
                "text/plain; charset=utf-8"
            };
            metrics::response(&mut self.response, status, reason, content_type, &body);
            if head {
                // HEAD: the same headers (Content-Length included), no body.
                self.response.truncate(self.response.len() - body.len());
            }
            self.answered = true;
        }
        loop {
            let rest = &self.response[self.sent..];
            let n = rest.len().min(self.ep.tx.free());
            if n > 0 && self.ep.tx.extend(&rest[..n]) {
                self.sent += n;
            }
            match self.ep.flush() {
                Err(_) => return true,
                Ok(_) if self.sent == self.response.len() && self.ep.tx.is_empty() => return true,
                Ok(0) => return false,
                Ok(_) => {}
            }
        }
    }

    pub fn close(&mut self, cx: &mut Context) {
        self.ep.transport.shutdown();
        self.ep.transport.deregister(cx.registry);
    }
}

/// The metrics: per node status, requests, reads, writes, errors, bytes and a latency
/// histogram; client sessions, sessions waiting at the gate, pooled connections, protocol
/// errors and log lines dropped.
pub fn render(shared: &Shared) -> String {
    let mut e = Exposition::new();
    let nodes = &shared.cluster.nodes;
    let lead = shared.cluster.lead();
    e.family(
        "pgmulti_node_up",
        Kind::Gauge,
        "1 when the node is attached (up), else 0.",
    );
    for n in nodes {
        let id = n.id.to_string();
        let up = f64::from(u8::from(n.status == crate::cluster::NodeStatus::Up));
        e.sample(
            "pgmulti_node_up",
            &[("node", &id), ("status", n.status.as_str())],
            up,
        );
    }
    e.family("pgmulti_node_lead", Kind::Gauge, "1 for the lead node.");
    for n in nodes {
        let id = n.id.to_string();
        let is_lead = f64::from(u8::from(lead == Some(n.id)));
        e.sample("pgmulti_node_lead", &[("node", &id)], is_lead);
    }
    type Counter = (&'static str, &'static str, fn(&crate::cluster::Node) -> u64);
    let counters: [Counter; 6] = [
        (
            "pgmulti_node_queries_total",
            "Requests the node ran.",
            |n| n.queries,
        ),
        (
            "pgmulti_node_reads_total",
            "Reads routed to the node.",
            |n| n.reads,
        ),
        ("pgmulti_node_writes_total", "Writes the node ran.", |n| {
            n.writes
        }),
        (
            "pgmulti_node_errors_total",
            "ErrorResponses the node sent.",
            |n| n.errors,
        ),
        (
            "pgmulti_node_received_bytes_total",
            "Bytes read from the node.",
            |n| n.bytes_in,
        ),
        (
            "pgmulti_node_sent_bytes_total",
            "Bytes written to the node.",
            |n| n.bytes_out,
        ),
    ];
    for (name, help, value) in counters {
        e.family(name, Kind::Counter, help);
        for n in nodes {
            let id = n.id.to_string();
            e.sample(name, &[("node", &id)], value(n) as f64);
        }
    }
    e.family(
        "pgmulti_node_latency_seconds",
        Kind::Histogram,
        "Round trips of requests on the node.",
    );
    for n in nodes {
        let id = n.id.to_string();
        e.histogram("pgmulti_node_latency_seconds", &[("node", &id)], &n.latency);
    }
    let s = &shared.stats;
    let gauges = [
        (
            "pgmulti_clients",
            "Client connections open (including admin consoles).",
            s.sessions_accepted.saturating_sub(s.sessions_closed),
        ),
        (
            "pgmulti_clients_waiting",
            "Sessions waiting for PAUSE or a node change to end.",
            shared.gate.waiting.len() as u64,
        ),
        (
            "pgmulti_paused",
            "1 while new transactions are held back.",
            u64::from(shared.gate.closed()),
        ),
    ];
    for (name, help, value) in gauges {
        e.family(name, Kind::Gauge, help);
        e.sample(name, &[], value as f64);
    }
    let counts = shared.pool.counts();
    let families = [
        (
            "pgmulti_pool_idle_connections",
            "Idle pooled node connections.",
        ),
        (
            "pgmulti_pool_active_connections",
            "Node connections sessions hold (pool_mode = transaction).",
        ),
        (
            "pgmulti_pool_waiting_clients",
            "Sessions waiting for a node connection (pool_mode = transaction).",
        ),
    ];
    for (i, (name, help)) in families.into_iter().enumerate() {
        e.family(name, Kind::Gauge, help);
        for (k, n) in &counts {
            let id = k.node.to_string();
            e.sample(
                name,
                &[("node", &id), ("database", &k.database), ("user", &k.user)],
                n[i] as f64,
            );
        }
    }
    let totals = [
        (
            "pgmulti_clients_accepted_total",
            "Client connections accepted.",
            s.sessions_accepted,
        ),
        (
            "pgmulti_pool_reused_total",
            "Node connections taken from the pool.",
            shared.pool.reused,
        ),
        (
            "pgmulti_protocol_errors_total",
            "Clients that broke the protocol.",
            s.protocol_errors,
        ),
        (
            "pgmulti_log_lines_dropped_total",
            "Log lines dropped because the log queue was full.",
            s.log_lines_dropped,
        ),
    ];
    for (name, help, value) in totals {
        e.family(name, Kind::Counter, help);
        e.sample(name, &[], value as f64);
    }
    e.finish()
}
