//! Memory for client messages larger than a receive buffer. Replication and streaming modes
//! keep such a statement whole until every node has run it, and each node's copy waits in
//! that node's send queue: a 50 MB Query costs about 50 MB × (1 + nodes). All sessions
//! together hold at most `max_message_memory` for them. A session whose message would go
//! beyond waits with its client unread (TCP pushes back on the client) and is woken when
//! memory is given back. A session gets its share anyway when nobody else holds any, or when
//! it holds some already (the rest of one extended-protocol batch): no session waits for
//! itself, and one message alone always passes.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::reactor::token::ConnKey;

#[derive(Default)]
struct Inner {
    used: u64,
    waiting: Vec<ConnKey>,
    woken: Vec<ConnKey>,
}

/// The loop's account of that memory (one per pgmulti, in `Shared`).
#[derive(Default)]
pub struct MessageMemory(Arc<Mutex<Inner>>);

/// A session's share; given back when dropped.
pub struct Held {
    account: Arc<Mutex<Inner>>,
    bytes: u64,
}

/// (Only the loop's thread uses it; the lock is never contended.)
fn lock(a: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    a.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MessageMemory {
    /// Add `bytes` to `held` within `limit`; false when the session must wait (it is in
    /// `woken` once memory is given back).
    pub fn reserve(
        &self,
        held: &mut Option<Held>,
        bytes: u64,
        limit: u64,
        session: ConnKey,
    ) -> bool {
        let mut a = lock(&self.0);
        let free_pass = a.used == 0 || held.is_some();
        if !free_pass && a.used.saturating_add(bytes) > limit {
            if !a.waiting.contains(&session) {
                a.waiting.push(session);
            }
            return false;
        }
        a.used += bytes;
        match held {
            Some(h) => h.bytes += bytes,
            None => {
                *held = Some(Held {
                    account: Arc::clone(&self.0),
                    bytes,
                })
            }
        }
        true
    }

    /// Sessions to run again: memory was given back since they had to wait.
    pub fn woken(&self) -> Vec<ConnKey> {
        std::mem::take(&mut lock(&self.0).woken)
    }

    pub fn used(&self) -> u64 {
        lock(&self.0).used
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut a = lock(&self.account);
        a.used -= self.bytes;
        let waiting = std::mem::take(&mut a.waiting);
        a.woken.extend(waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u32) -> ConnKey {
        ConnKey {
            index,
            generation: 1,
        }
    }

    #[test]
    fn sessions_wait_beyond_the_limit_and_are_woken_when_memory_comes_back() {
        let m = MessageMemory::default();
        let (mut a, mut b, mut c) = (None, None, None);
        // Alone, a session gets even more than the limit.
        assert!(m.reserve(&mut a, 300, 256, key(1)));
        assert!(!m.reserve(&mut b, 10, 256, key(2)), "over the limit: wait");
        assert!(!m.reserve(&mut c, 10, 256, key(3)));
        // The rest of a batch is never refused to the session that holds part of it.
        assert!(m.reserve(&mut a, 50, 256, key(1)));
        assert_eq!(m.used(), 350);
        assert!(m.woken().is_empty());
        a = None;
        assert_eq!(m.used(), 0);
        assert_eq!(m.woken(), vec![key(2), key(3)]);
        assert!(m.reserve(&mut b, 200, 256, key(2)));
        assert!(m.reserve(&mut c, 56, 256, key(3)), "within the limit");
        assert!(!m.reserve(&mut a, 1, 256, key(1)));
        drop((b, c));
        assert_eq!((m.used(), m.woken()), (0, vec![key(1)]));
    }
}
