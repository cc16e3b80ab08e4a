//! `Buf`: a bounded byte buffer for one direction of one connection (PgBouncer's sbuf idea).
//!
//! Bytes are appended at the end (socket reads, relayed messages) and consumed from the front.
//! The capacity is fixed when the buffer is made. Memory is allocated on first use, small,
//! and grows (doubling) up to the capacity only when the traffic needs it; it can be released
//! while the buffer is empty, so an idle connection costs only the struct. This file knows
//! nothing about sockets or the protocol.

/// Memory a buffer starts with: enough for a login and short queries.
const INITIAL: usize = 1024;

/// 32 bytes: every idle connection carries two of them.
pub struct Buf {
    /// The allocation; its length is the memory held.
    data: Box<[u8]>,
    start: u32,
    end: u32,
    cap: u32,
}

impl Buf {
    /// `cap` is at most 4 GiB − 1 (buffers here are tens of KiB).
    pub fn new(cap: usize) -> Buf {
        Buf {
            data: Box::new([]),
            start: 0,
            end: 0,
            cap: cap as u32,
        }
    }

    /// The bytes not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.data[self.start as usize..self.end as usize]
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// How many more bytes fit (after compaction).
    pub fn free(&self) -> usize {
        self.capacity().saturating_sub(self.len())
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity()
    }

    /// Drop `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len()) as u32;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Writable space at the end, compacting or growing first when that makes room. Empty
    /// when full.
    pub fn space(&mut self) -> &mut [u8] {
        if self.end as usize == self.data.len() {
            if self.start > 0 {
                self.compact();
            } else {
                self.grow(self.end as usize + 1);
            }
        }
        &mut self.data[self.end as usize..]
    }

    /// Make the allocation at least `needed` bytes (doubling, never beyond the capacity).
    fn grow(&mut self, needed: usize) {
        let size = self.data.len().max(INITIAL / 2);
        let mut new = size;
        while new < needed {
            new *= 2;
        }
        let new = new.max(INITIAL).min(self.capacity());
        if new > self.data.len() {
            let mut bigger = vec![0u8; new].into_boxed_slice();
            bigger[..self.end as usize].copy_from_slice(&self.data[..self.end as usize]);
            self.data = bigger;
        }
    }

    /// Mark `n` bytes of `space()` as filled.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end as usize + n <= self.data.len());
        self.end = (self.end as usize + n).min(self.data.len()) as u32;
    }

    /// Append `bytes` if they fit whole; false (and nothing written) otherwise.
    pub fn extend(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.free() {
            return false;
        }
        let end = self.end as usize;
        if end + bytes.len() > self.data.len() {
            self.compact();
            self.grow(self.end as usize + bytes.len());
        }
        let end = self.end as usize;
        self.data[end..end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len() as u32;
        true
    }

    /// Append `bytes` even beyond the capacity: for what must never be dropped (pgmulti's
    /// own ErrorResponse and ReadyForQuery, a few hundred bytes a request). The buffer then
    /// has no free space until it drains below its capacity.
    pub fn extend_always(&mut self, bytes: &[u8]) {
        if self.extend(bytes) {
            return;
        }
        self.compact();
        let end = self.end as usize;
        if end + bytes.len() > self.data.len() {
            let mut bigger = vec![0u8; end + bytes.len()].into_boxed_slice();
            bigger[..end].copy_from_slice(&self.data[..end]);
            self.data = bigger;
        }
        self.data[end..end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len() as u32;
    }

    /// Make sure the unconsumed bytes start at offset 0 so that a message of up to `cap`
    /// bytes can be completed in place.
    pub fn compact(&mut self) {
        if self.start > 0 {
            self.data
                .copy_within(self.start as usize..self.end as usize, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Free the memory of an empty buffer (an idle connection keeps only the struct).
    pub fn release(&mut self) {
        if self.is_empty() && !self.data.is_empty() {
            self.data = Box::new([]);
        }
    }

    /// Bytes of memory held.
    pub fn allocated(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_consume_compact() {
        let mut b = Buf::new(8);
        assert_eq!(b.allocated(), 0);
        assert!(b.extend(b"abcde"));
        assert_eq!(b.data(), b"abcde");
        b.consume(3);
        assert_eq!(b.free(), 6);
        assert!(b.extend(b"fghij"));
        assert_eq!(b.data(), b"defghij");
        assert!(!b.extend(b"xy"));
        b.consume(7);
        assert!(b.is_empty());
        b.release();
        assert_eq!(b.allocated(), 0);
    }

    #[test]
    fn what_must_be_sent_goes_past_the_capacity() {
        let mut b = Buf::new(8);
        assert!(b.extend(b"abcdefg"));
        b.consume(2);
        b.extend_always(b"0123");
        assert_eq!(b.data(), b"cdefg0123");
        assert!(b.is_full());
        assert_eq!(b.free(), 0);
        assert!(!b.extend(b"x"), "nothing else until it drains");
        assert!(b.space().is_empty());
        b.consume(5);
        assert_eq!(b.free(), 4);
    }

    #[test]
    fn memory_grows_with_traffic_only() {
        let mut b = Buf::new(64 * 1024);
        assert!(b.extend(b"hello"));
        assert_eq!(
            b.allocated(),
            INITIAL,
            "a small message needs only the initial block"
        );
        assert!(b.extend(&[0u8; 10_000]));
        assert_eq!(b.allocated(), 16 * 1024);
        assert_eq!(b.data().len(), 10_005);
        assert!(b.extend(&[1u8; 64 * 1024 - 10_005]));
        assert!(b.is_full());
        assert_eq!(b.allocated(), 64 * 1024);
        assert!(!b.extend(b"x"));
    }

    #[test]
    fn space_commit() {
        let mut b = Buf::new(4);
        let s = b.space();
        s[..3].copy_from_slice(b"abc");
        b.commit(3);
        b.consume(2);
        let s = b.space();
        assert_eq!(s.len(), 1);
        s[0] = b'd';
        b.commit(1);
        assert_eq!(b.space().len(), 2, "compaction makes room at the end");
        assert_eq!(b.data(), b"cd");
    }
}
