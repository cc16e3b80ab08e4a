//! Moving messages between the client and the node in `Relaying`, and the protocol trace.
//!
//! `pump` frames the messages at the front of one side's receive buffer and copies whole
//! messages into the other side's send buffer while it has room (back-pressure: when it is
//! full the source is simply not read until it drains). A message larger than a buffer is
//! streamed through in pieces. Every message passing is traced (see `crate::trace`).

use super::{Session, Transition};
use crate::net::buffer::Buf;
use crate::net::endpoint::Broken;
use crate::protocol::framing::message_header;
use crate::protocol::{Direction, MAX_MESSAGE_LEN};
use crate::reactor::context::{Context, TimerKind};
use crate::trace::{direction, trace_message, Peer};

/// Relay passes per wakeup before yielding to other sessions.
const PASSES: usize = 8;

/// What a pump saw besides moving bytes.
#[derive(Default)]
pub struct Pumped {
    pub bytes: usize,
    /// The client sent Terminate (forwarded; the session ends once it is flushed).
    pub terminate: bool,
    /// Status byte of the last ReadyForQuery that passed.
    pub ready: Option<u8>,
    /// Messages that each bring a ReadyForQuery (Query, Sync, FunctionCall), and
    /// ReadyForQuery messages passed.
    pub requests: u32,
    pub readies: u32,
    /// ErrorResponses passed.
    pub errors: u32,
}

/// Copy messages from `src` to `dst` while whole messages fit; stream oversized ones.
pub fn pump(
    src: &mut Buf,
    stream_left: &mut usize,
    dst: &mut Buf,
    from: Peer,
    to: Peer,
    prefix: &str,
    scratch: &mut String,
) -> Result<Pumped, String> {
    let mut out = Pumped::default();
    let dir = direction(from, to);
    loop {
        if *stream_left > 0 {
            let n = (*stream_left).min(src.len()).min(dst.free());
            if n == 0 {
                break;
            }
            dst.extend(&src.data()[..n]);
            src.consume(n);
            *stream_left -= n;
            out.bytes += n;
            continue;
        }
        let data = src.data();
        let (tag, len) = match message_header(data, MAX_MESSAGE_LEN) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        };
        if len > src.capacity() {
            // Too large to hold whole: trace what is here, then stream it through.
            let n = data.len().min(dst.free());
            if n < 5 {
                break;
            }
            trace_message(prefix, from, to, tag, &data[5..n], len, scratch);
            dst.extend(&data[..n]);
            src.consume(n);
            *stream_left = len - n;
            out.bytes += n;
            continue;
        }
        if data.len() < len || dst.free() < len {
            break;
        }
        let msg = &data[..len];
        trace_message(prefix, from, to, tag, &msg[5..], len, scratch);
        match (dir, tag) {
            // Not passed on: the node connection may serve another client.
            (Direction::ToBackend, b'X') => {
                out.terminate = true;
                src.consume(len);
                break;
            }
            (Direction::ToBackend, b'Q' | b'S' | b'F') => out.requests += 1,
            (Direction::ToClient, b'Z') => {
                out.ready = msg.get(5).copied();
                out.readies += 1;
            }
            (Direction::ToClient, b'E') => out.errors += 1,
            _ => {}
        }
        dst.extend(msg);
        src.consume(len);
        out.bytes += len;
    }
    Ok(out)
}

impl Session {
    pub(super) fn on_relay(&mut self, cx: &mut Context) -> Transition {
        let Some(node) = self.nodes.first_mut() else {
            return Transition::Close("relaying without a node connection".into());
        };
        let from_node = Peer::Node(node.index);
        let mut exhausted = true;
        let mut node_gone = None;
        for _ in 0..PASSES {
            let mut moved = 0;
            match self.client.fill() {
                Ok(n) => moved += n,
                Err(Broken::Closed) => {
                    return Transition::Close("client closed the connection".into())
                }
                Err(Broken::Error(e)) => {
                    return Transition::Close(format!("client read error: {e}"))
                }
            }
            // Between transactions while paused: the client's next request waits.
            let gated = cx.shared.gate.closed()
                && self.tx_status == b'I'
                && self.awaiting_ready == 0
                && self.client_stream_left == 0
                && !matches!(self.client.rx.data().first(), None | Some(b'X'));
            if gated && !self.at_gate {
                self.at_gate = true;
                cx.shared.gate.waiting.push(cx.key);
            }
            let up = if gated {
                Pumped::default()
            } else {
                self.at_gate = false;
                match pump(
                    &mut self.client.rx,
                    &mut self.client_stream_left,
                    &mut node.ep.tx,
                    Peer::Client,
                    from_node,
                    &self.prefix,
                    &mut cx.shared.scratch,
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        cx.shared.stats.protocol_errors += 1;
                        self.fatal(cx, "08P01", &format!("invalid message from client: {e}"));
                        return Transition::Close(format!("invalid message from client: {e}"));
                    }
                }
            };
            moved += up.bytes;
            let stats = &mut cx.shared.cluster.nodes[node.index as usize];
            stats.queries += u64::from(up.requests);
            if up.requests > 0 && self.awaiting_ready == 0 {
                self.request_started = cx.now;
            }
            self.awaiting_ready += i64::from(up.requests);
            match node.ep.flush() {
                Ok(n) => {
                    moved += n;
                    stats.bytes_out += n as u64;
                }
                Err(e) => node_gone = Some(e),
            }
            if up.terminate {
                return Transition::Close("client sent Terminate".into());
            }
            if node_gone.is_none() {
                match node.ep.fill() {
                    Ok(n) => {
                        moved += n;
                        stats.bytes_in += n as u64;
                    }
                    Err(e) => node_gone = Some(e),
                }
            }
            let down = match pump(
                &mut node.ep.rx,
                &mut self.node_stream_left,
                &mut self.client.tx,
                from_node,
                Peer::Client,
                &self.prefix,
                &mut cx.shared.scratch,
            ) {
                Ok(p) => p,
                Err(e) => {
                    return Transition::Close(format!(
                        "invalid message from node {}: {e}",
                        node.index
                    ))
                }
            };
            moved += down.bytes;
            self.awaiting_ready -= i64::from(down.readies);
            let stats = &mut cx.shared.cluster.nodes[node.index as usize];
            stats.errors += u64::from(down.errors);
            if down.readies > 0 && self.awaiting_ready <= 0 {
                let ms = cx
                    .now
                    .saturating_duration_since(self.request_started)
                    .as_secs_f64()
                    * 1000.0;
                cx.shared.cluster.observe_latency(node.index, ms);
            }
            if let Some(status) = down.ready {
                self.tx_status = status;
            }
            match self.client.flush() {
                Ok(n) => moved += n,
                Err(Broken::Closed) => {
                    return Transition::Close("client closed the connection".into())
                }
                Err(Broken::Error(e)) => {
                    return Transition::Close(format!("client write error: {e}"))
                }
            }
            if let Some(e) = &node_gone {
                if node.ep.rx.is_empty() || self.client.tx.is_full() {
                    // Whatever the node said last (often a FATAL error) has been passed on.
                    return Transition::Close(format!("node {} connection lost: {e}", node.index));
                }
            }
            if moved == 0 {
                exhausted = false;
                break;
            }
        }
        if exhausted {
            cx.again = true;
        }
        self.last_activity = cx.now;
        if self.idle_timer.is_none() {
            self.idle_timer = Some(cx.schedule(super::IDLE_SWEEP, TimerKind::Idle));
        }
        self.close_if_drained(cx)
    }
}
