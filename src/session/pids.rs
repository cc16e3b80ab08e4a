//! Which node backends stand behind each process number pgmulti handed to a client.
//!
//! In relay mode with session pooling the client is shown its node backend's own pid, so
//! `pg_backend_pid()`, `pg_terminate_backend()` and NotificationResponse agree by themselves.
//! Where one client pid stands for several backends (replication mode) or for a backend
//! that changes (transaction pooling), this table translates: a notification's sender pid on
//! node `n` becomes the pid of the pgmulti session that owns that backend, and
//! `pg_terminate_backend(client pid)` is sent to the node with the backend's own pid.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A termination a session asked for counts this long: the terminated session closes when it
/// notices its lost node connection within it.
const TERMINATION_NOTICE: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Pids {
    /// (node, node pid) → client pid.
    owner: HashMap<(u8, u32), u32>,
    /// client pid → its backends (node, node pid).
    backends: HashMap<u32, Vec<(u8, u32)>>,
    /// client pids whose termination was asked for, when, and whether the node confirmed
    /// it (the call succeeded).
    terminating: HashMap<u32, (Instant, bool)>,
}

impl Pids {
    /// Record `client`'s backends now, replacing what was recorded before.
    pub fn publish(&mut self, client: u32, now: impl IntoIterator<Item = (u8, u32)>) {
        self.forget(client);
        let list: Vec<(u8, u32)> = now.into_iter().collect();
        for &b in &list {
            self.owner.insert(b, client);
        }
        if !list.is_empty() {
            self.backends.insert(client, list);
        }
    }

    /// `client` closed: nothing stands behind its pid any more.
    pub fn forget(&mut self, client: u32) {
        if let Some(old) = self.backends.remove(&client) {
            for b in old {
                if self.owner.get(&b) == Some(&client) {
                    self.owner.remove(&b);
                }
            }
        }
        self.terminating.remove(&client);
    }

    /// The client pid of the pgmulti session that owns backend `pid` on `node`.
    pub fn client_of(&self, node: u8, pid: u32) -> Option<u32> {
        self.owner.get(&(node, pid)).copied()
    }

    /// `client`'s backend on `node`.
    pub fn backend_on(&self, client: u32, node: u8) -> Option<u32> {
        self.backends
            .get(&client)?
            .iter()
            .find(|(n, _)| *n == node)
            .map(|&(_, pid)| pid)
    }

    /// Another session is about to terminate `client`'s backend.
    pub fn mark_terminating(&mut self, client: u32, now: Instant) {
        self.terminating.insert(client, (now, false));
    }

    /// The node terminated `client`'s backend: the session ends at its next request even
    /// if that would not touch the lost connection.
    pub fn confirm_terminated(&mut self, client: u32) {
        if let Some((_, confirmed)) = self.terminating.get_mut(&client) {
            *confirmed = true;
        }
    }

    /// Whether `client`'s termination was asked for lately (and forget the ask): asked, when
    /// it lost a connection; `confirmed`, at its next request.
    pub fn take_terminating(&mut self, client: u32, now: Instant, confirmed: bool) -> bool {
        let Some(&(at, done)) = self.terminating.get(&client) else {
            return false;
        };
        let fresh = now.saturating_duration_since(at) <= TERMINATION_NOTICE;
        if !fresh || done || !confirmed {
            self.terminating.remove(&client);
        }
        fresh && (done || !confirmed)
    }
}

/// A NotificationResponse ('A') with its sender's pid translated by `map` (unchanged when
/// `map` knows no better, or the message is not one).
pub fn translate_notification(msg: &mut [u8], map: impl Fn(u32) -> Option<u32>) {
    if msg.first() != Some(&b'A') {
        return;
    }
    let Some(bytes) = msg.get_mut(5..9) else {
        return;
    };
    let pid = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if let Some(client) = map(pid) {
        bytes.copy_from_slice(&client.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_map_both_ways_and_are_forgotten() {
        let mut p = Pids::default();
        p.publish(7, [(0, 1000), (1, 2000)]);
        p.publish(8, [(0, 1001)]);
        assert_eq!(p.client_of(0, 1000), Some(7));
        assert_eq!(p.client_of(1, 2000), Some(7));
        assert_eq!(p.client_of(1, 1000), None, "pids are per node");
        assert_eq!(p.backend_on(7, 1), Some(2000));
        // A reconnect to node 1 replaces the backend.
        p.publish(7, [(0, 1000), (1, 2500)]);
        assert_eq!(p.client_of(1, 2000), None);
        assert_eq!(p.backend_on(7, 1), Some(2500));
        p.forget(7);
        assert_eq!(p.client_of(0, 1000), None);
        assert_eq!(p.backend_on(7, 0), None);
        assert_eq!(p.client_of(0, 1001), Some(8));
    }

    #[test]
    fn a_termination_counts_for_a_while_and_once() {
        let mut p = Pids::default();
        let t = Instant::now();
        let soon = t + Duration::from_secs(1);
        p.mark_terminating(7, t);
        assert!(!p.take_terminating(7, soon, true), "not confirmed yet");
        assert!(
            p.take_terminating(7, soon, false),
            "the connection was lost"
        );
        assert!(!p.take_terminating(7, soon, false), "once");
        p.mark_terminating(7, t);
        p.confirm_terminated(7);
        assert!(p.take_terminating(7, soon, true));
        assert!(!p.take_terminating(7, soon, false));
        p.mark_terminating(7, t);
        assert!(
            !p.take_terminating(7, t + Duration::from_secs(11), false),
            "stale"
        );
    }

    #[test]
    fn notifications_name_the_client_pid() {
        let mut msg = vec![b'A', 0, 0, 0, 14, 0, 0, 3, 232, b'c', 0, b'x', 0];
        translate_notification(&mut msg, |pid| (pid == 1000).then_some(7));
        assert_eq!(&msg[5..9], &7u32.to_be_bytes());
        translate_notification(&mut msg, |_| None);
        assert_eq!(&msg[5..9], &7u32.to_be_bytes(), "unknown: unchanged");
        let mut short = vec![b'A', 0, 0, 0, 5];
        translate_notification(&mut short, |_| Some(1));
        assert_eq!(short, vec![b'A', 0, 0, 0, 5]);
    }
}
