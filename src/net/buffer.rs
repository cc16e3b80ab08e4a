//! `Buf`: a bounded byte buffer for one direction of one connection (PgBouncer's sbuf idea).
//!
//! Bytes are appended at the end (socket reads, relayed messages) and consumed from the front.
//! The capacity is fixed when the buffer is made. Memory is allocated on first use, small,
//! and grows (doubling) up to the capacity only when the traffic needs it; it can be released
//! while the buffer is empty, so an idle connection costs only the struct. This file knows
//! nothing about sockets or the protocol.

/// Memory a buffer starts with: enough for a login and short queries.
const INITIAL: usize = 1024;

pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    cap: usize,
}

impl Buf {
    pub const fn new(cap: usize) -> Buf {
        Buf {
            data: Vec::new(),
            start: 0,
            end: 0,
            cap,
        }
    }

    /// The bytes not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// How many more bytes fit (after compaction).
    pub fn free(&self) -> usize {
        self.cap - self.len()
    }

    pub fn is_full(&self) -> bool {
        self.len() == self.cap
    }

    /// Drop `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Writable space at the end, compacting or growing first when that makes room. Empty
    /// when full.
    pub fn space(&mut self) -> &mut [u8] {
        if self.end == self.data.len() {
            if self.start > 0 {
                self.compact();
            } else {
                self.grow(self.end + 1);
            }
        }
        &mut self.data[self.end..]
    }

    /// Make the allocation at least `needed` bytes (doubling, never beyond the capacity).
    fn grow(&mut self, needed: usize) {
        let size = self.data.len().max(INITIAL / 2);
        let mut new = size;
        while new < needed {
            new *= 2;
        }
        let new = new.max(INITIAL).min(self.cap);
        if new > self.data.len() {
            self.data.resize(new, 0);
        }
    }

    /// Mark `n` bytes of `space()` as filled.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.data.len());
        self.end = (self.end + n).min(self.data.len());
    }

    /// Append `bytes` if they fit whole; false (and nothing written) otherwise.
    pub fn extend(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.free() {
            return false;
        }
        if self.end + bytes.len() > self.data.len() {
            self.compact();
            self.grow(self.end + bytes.len());
        }
        self.data[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
        true
    }

    /// Make sure the unconsumed bytes start at offset 0 so that a message of up to `cap`
    /// bytes can be completed in place.
    pub fn compact(&mut self) {
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Free the memory of an empty buffer (an idle connection keeps only the struct).
    pub fn release(&mut self) {
        if self.is_empty() && !self.data.is_empty() {
            self.data = Vec::new();
        }
    }

    /// Bytes of memory held.
    pub fn allocated(&self) -> usize {
        self.data.capacity()
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
