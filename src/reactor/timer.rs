//! The timer wheel: every timeout of the event loop (authentication, connect, idle, health
//! check, statement) is an entry here.
//!
//! A hashed timing wheel: `slots` buckets of `tick` width. A timer lives in the bucket of its
//! deadline's tick; a deadline further away than one turn of the wheel stays in that bucket
//! and is skipped until its own turn comes (its absolute tick number plays the role of a
//! "rounds" counter). Scheduling and cancelling are O(1); `expire` visits only the buckets
//! whose ticks have passed since the previous call, and returns at once while the earliest
//! deadline is still ahead.
//!
//! Time is always passed in: this module never reads the clock, so it is tested with
//! injected `Instant`s. It owns no sockets and knows nothing of what its items mean.

use std::time::{Duration, Instant};

/// "No entry" in the intrusive lists.
const NIL: usize = usize::MAX;

/// Names one scheduled timer. A generation makes an id for a timer that has already fired or
/// been cancelled harmless, even after its slab entry is reused by a newer timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    // u32: sessions hold several ids, and 8 bytes each keep them small.
    index: u32,
    generation: u32,
}

/// One slab entry: a pending timer while `item` is `Some`, otherwise a link in the free list.
struct Entry<T> {
    generation: u32,
    item: Option<T>,
    deadline: Instant,
    /// Absolute tick number of the bucket the timer is in (never before the cursor it was
    /// scheduled at).
    tick: u64,
    /// Order of scheduling, to fire equal deadlines first-scheduled first.
    seq: u64,
    /// Neighbours in the bucket's list; `next` doubles as the free-list link.
    prev: usize,
    next: usize,
}

/// A hashed timing wheel holding items of type `T` (typically a connection token plus the
/// kind of timeout).
pub struct TimerWheel<T> {
    tick_nanos: u128,
    origin: Instant,
    /// The tick whose bucket `expire` visits first. Invariant: every pending timer's `tick`
    /// is at least `cursor`.
    cursor: u64,
    /// First entry of each bucket's list.
    heads: Vec<usize>,
    entries: Vec<Entry<T>>,
    free_head: usize,
    len: usize,
    next_seq: u64,
    /// Never later than the earliest pending deadline; exact unless `earliest_stale` (the
    /// timer holding it was cancelled), in which case the next `expire` recomputes it.
    earliest: Option<Instant>,
    earliest_stale: bool,
    /// Reused buffer that sorts one `expire` call's timers by deadline.
    due: Vec<(Instant, u64, T)>,
}

impl<T> TimerWheel<T> {
    /// A wheel of `slots` buckets of `tick` width, starting at `now`. A zero `tick` is taken as
    /// one millisecond and zero `slots` as one. One turn (`tick * slots`) should cover the
    /// common timeouts: further deadlines work, but are looked at once per turn.
    pub fn new(tick: Duration, slots: usize, now: Instant) -> Self {
        let tick = if tick.is_zero() {
            Duration::from_millis(1)
        } else {
            tick
        };
        TimerWheel {
            tick_nanos: tick.as_nanos(),
            origin: now,
            cursor: 0,
            heads: vec![NIL; slots.max(1)],
            entries: Vec::new(),
            free_head: NIL,
            len: 0,
            next_seq: 0,
            earliest: None,
            earliest_stale: false,
            due: Vec::new(),
        }
    }

    /// Schedules `item` to fire at `deadline`. A deadline in the past fires on the next
    /// `expire`.
    pub fn schedule(&mut self, deadline: Instant, item: T) -> TimerId {
        let tick = self.tick_of(deadline).max(self.cursor);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let slot = self.slot_of(tick);
        let head = self.heads[slot];

        let index = if self.free_head != NIL {
            let index = self.free_head;
            let entry = &mut self.entries[index];
            self.free_head = entry.next;
            entry.item = Some(item);
            entry.deadline = deadline;
            entry.tick = tick;
            entry.seq = seq;
            entry.prev = NIL;
            entry.next = head;
            index
        } else {
            self.entries.push(Entry {
                generation: 0,
                item: Some(item),
                deadline,
                tick,
                seq,
                prev: NIL,
                next: head,
            });
            self.entries.len() - 1
        };
        if head != NIL {
            self.entries[head].prev = index;
        }
        self.heads[slot] = index;

        self.len += 1;
        self.earliest = Some(match self.earliest {
            Some(e) if e <= deadline => e,
            _ => deadline,
        });
        TimerId {
            index: index as u32,
            generation: self.entries[index].generation,
        }
    }

    /// Cancels a pending timer and returns its item; `None` if it already fired or was
    /// cancelled. O(1).
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let entry = self.entries.get(id.index as usize)?;
        if entry.generation != id.generation || entry.item.is_none() {
            return None;
        }
        let deadline = entry.deadline;
        let item = self.remove(id.index as usize);
        if self.len == 0 {
            self.earliest = None;
            self.earliest_stale = false;
        } else if self.earliest == Some(deadline) {
            // Recomputed lazily by the next `expire`; until then `next_deadline` is early,
            // which costs at most one spurious wake-up.
            self.earliest_stale = true;
        }
        item
    }

    /// Moves every item whose deadline is at or before `now` into `fired`, in deadline order
    /// (equal deadlines in scheduling order). Returns at once when nothing is due (after
    /// making `next_deadline` exact again if a cancel left it early).
    pub fn expire(&mut self, now: Instant, fired: &mut Vec<T>) {
        let now_tick = self.tick_of(now);
        if self.len == 0 {
            self.cursor = self.cursor.max(now_tick);
            return;
        }
        if self.earliest.is_some_and(|e| now < e) {
            if self.earliest_stale {
                self.recompute_earliest();
            }
            return;
        }
        // Visit the buckets of ticks cursor ..= end; a full turn visits every bucket.
        let end = self.cursor.max(now_tick);
        let buckets = (end - self.cursor)
            .saturating_add(1)
            .min(self.heads.len() as u64);
        for step in 0..buckets {
            let slot = self.slot_of(self.cursor.saturating_add(step));
            let mut index = self.heads[slot];
            while index != NIL {
                let entry = &self.entries[index];
                let next = entry.next;
                if entry.deadline <= now {
                    let (deadline, seq) = (entry.deadline, entry.seq);
                    if let Some(item) = self.remove(index) {
                        self.due.push((deadline, seq, item));
                    }
                }
                index = next;
            }
        }
        self.cursor = end;

        let fired_any = !self.due.is_empty();
        if fired_any {
            self.due.sort_unstable_by_key(|a| (a.0, a.1));
            fired.extend(self.due.drain(..).map(|(_, _, item)| item));
        }
        if fired_any || self.earliest_stale {
            self.recompute_earliest();
        }
    }

    /// The earliest pending deadline, for the poll timeout; `None` when nothing is pending.
    /// Never later than the true earliest deadline; exact after `expire`. A `cancel` of the
    /// earliest timer may leave it early until the next `expire` (at worst a spurious
    /// wake-up); cancelling stays O(1). May be in the past
    /// when an overdue timer is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.earliest
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn tick_of(&self, t: Instant) -> u64 {
        let ticks = t.saturating_duration_since(self.origin).as_nanos() / self.tick_nanos;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    fn slot_of(&self, tick: u64) -> usize {
        // The remainder is below `heads.len()`, so it fits a usize.
        (tick % self.heads.len() as u64) as usize
    }

    /// Unlinks a pending entry, puts it on the free list and returns its item.
    fn remove(&mut self, index: usize) -> Option<T> {
        let slot = self.slot_of(self.entries[index].tick);
        let entry = &mut self.entries[index];
        let (prev, next) = (entry.prev, entry.next);
        let item = entry.item.take();
        debug_assert!(item.is_some(), "removing a vacant timer entry");
        entry.generation = entry.generation.wrapping_add(1);
        entry.prev = NIL;
        entry.next = self.free_head;
        self.free_head = index;

        if prev != NIL {
            self.entries[prev].next = next;
        } else {
            self.heads[slot] = next;
        }
        if next != NIL {
            self.entries[next].prev = prev;
        }
        self.len -= 1;
        item
    }

    /// Finds the earliest deadline by walking buckets from the cursor: the first bucket that
    /// holds a timer of the current turn holds the earliest one. If no bucket does, every
    /// timer has been seen and the minimum over all of them is taken.
    fn recompute_earliest(&mut self) {
        self.earliest_stale = false;
        if self.len == 0 {
            self.earliest = None;
            return;
        }
        let mut overall: Option<Instant> = None;
        for step in 0..self.heads.len() as u64 {
            let tick = self.cursor.saturating_add(step);
            let mut this_turn: Option<Instant> = None;
            let mut index = self.heads[self.slot_of(tick)];
            while index != NIL {
                let entry = &self.entries[index];
                overall = Some(overall.map_or(entry.deadline, |o| o.min(entry.deadline)));
                if entry.tick <= tick {
                    this_turn = Some(this_turn.map_or(entry.deadline, |o| o.min(entry.deadline)));
                }
                index = entry.next;
            }
            if this_turn.is_some() {
                self.earliest = this_turn;
                return;
            }
        }
        self.earliest = overall;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn expire_at<T>(wheel: &mut TimerWheel<T>, now: Instant) -> Vec<T> {
        let mut fired = Vec::new();
        wheel.expire(now, &mut fired);
        fired
    }

    /// xorshift64*: deterministic randomness without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn fires_in_deadline_order() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 512, t0);
        wheel.schedule(t0 + ms(30), "c");
        wheel.schedule(t0 + ms(10), "a");
        wheel.schedule(t0 + ms(20), "b");
        wheel.schedule(t0 + ms(12), "a2");
        wheel.schedule(t0 + ms(20), "b2");
        assert_eq!(wheel.len(), 5);
        assert_eq!(
            expire_at(&mut wheel, t0 + ms(100)),
            ["a", "a2", "b", "b2", "c"]
        );
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn fires_exactly_at_the_deadline_not_before() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 512, t0);
        wheel.schedule(t0 + ms(50), 1);
        wheel.schedule(t0 + ms(55), 2);
        assert!(expire_at(&mut wheel, t0 + ms(49)).is_empty());
        assert_eq!(expire_at(&mut wheel, t0 + ms(50)), [1]);
        assert!(expire_at(&mut wheel, t0 + ms(55) - Duration::from_nanos(1)).is_empty());
        assert_eq!(expire_at(&mut wheel, t0 + ms(55)), [2]);
    }

    #[test]
    fn far_future_deadline_waits_many_rounds() {
        let t0 = Instant::now();
        // One turn is 80 ms; the deadline is 12.5 turns away.
        let mut wheel = TimerWheel::new(TICK, 8, t0);
        wheel.schedule(t0 + ms(1000), "far");
        wheel.schedule(t0 + ms(5), "near");
        let mut now = t0;
        let mut fired = Vec::new();
        while now < t0 + ms(995) {
            now += ms(5);
            wheel.expire(now, &mut fired);
            if now >= t0 + ms(5) {
                assert_eq!(fired, ["near"]);
            }
        }
        assert_eq!(fired, ["near"]);
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(1000)));
        now += ms(5);
        wheel.expire(now, &mut fired);
        assert_eq!(fired, ["near", "far"]);
    }

    #[test]
    fn a_jump_of_many_turns_fires_what_is_due_and_keeps_the_rest() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 4, t0);
        for d in [5, 35, 95, 1_000, 10_000, 10_001] {
            wheel.schedule(t0 + ms(d), d);
        }
        assert_eq!(expire_at(&mut wheel, t0 + ms(9_999)), [5, 35, 95, 1_000]);
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(10_000)));
        assert_eq!(expire_at(&mut wheel, t0 + ms(20_000)), [10_000, 10_001]);
    }

    #[test]
    fn cancel_before_fire() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 512, t0);
        let a = wheel.schedule(t0 + ms(10), "a");
        let b = wheel.schedule(t0 + ms(10), "b");
        let c = wheel.schedule(t0 + ms(10), "c");
        assert_eq!(wheel.cancel(b), Some("b"));
        assert_eq!(wheel.cancel(b), None);
        assert_eq!(wheel.len(), 2);
        assert_eq!(wheel.cancel(a), Some("a"));
        assert_eq!(expire_at(&mut wheel, t0 + ms(10)), ["c"]);
        assert_eq!(wheel.cancel(c), None, "already fired");
        assert!(wheel.is_empty());
    }

    #[test]
    fn stale_id_never_cancels_a_newer_timer_in_the_same_entry() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 512, t0);
        let old = wheel.schedule(t0 + ms(10), 1);
        assert_eq!(wheel.cancel(old), Some(1));
        let new = wheel.schedule(t0 + ms(20), 2);
        assert_eq!(new.index, old.index, "the entry is reused");
        assert_ne!(new, old);
        assert_eq!(wheel.cancel(old), None);
        assert_eq!(wheel.len(), 1);

        // The same after the timer fired rather than being cancelled.
        assert_eq!(expire_at(&mut wheel, t0 + ms(20)), [2]);
        let newer = wheel.schedule(t0 + ms(30), 3);
        assert_eq!(newer.index, new.index);
        assert_eq!(wheel.cancel(new), None);
        assert_eq!(wheel.cancel(newer), Some(3));
    }

    #[test]
    fn past_deadline_fires_on_the_next_expire() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 16, t0 + ms(1000));
        assert!(expire_at(&mut wheel, t0 + ms(2000)).is_empty());
        wheel.schedule(t0 + ms(1500), "past");
        wheel.schedule(t0, "before the wheel started");
        assert_eq!(wheel.next_deadline(), Some(t0));
        assert_eq!(
            expire_at(&mut wheel, t0 + ms(2000)),
            ["before the wheel started", "past"]
        );
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn time_going_backwards_fires_nothing_early() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 16, t0);
        wheel.schedule(t0 + ms(500), 1);
        assert!(expire_at(&mut wheel, t0 + ms(300)).is_empty());
        assert!(expire_at(&mut wheel, t0 + ms(100)).is_empty());
        assert!(expire_at(&mut wheel, t0).is_empty());
        assert_eq!(expire_at(&mut wheel, t0 + ms(500)), [1]);
    }

    #[test]
    fn zero_tick_and_zero_slots_do_not_panic() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(Duration::ZERO, 0, t0);
        wheel.schedule(t0 + ms(3), 'a');
        wheel.schedule(t0 + ms(1), 'b');
        assert_eq!(expire_at(&mut wheel, t0 + ms(2)), ['b']);
        assert_eq!(expire_at(&mut wheel, t0 + ms(3)), ['a']);
    }

    #[test]
    fn many_timers_fire_in_order_and_never_early() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 512, t0);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut expected = Vec::new();
        for _ in 0..20_000 {
            let d = t0 + ms(rng.below(60_000));
            wheel.schedule(d, d);
            expected.push(d);
        }
        expected.sort();
        let mut fired = Vec::new();
        let mut now = t0;
        while !wheel.is_empty() {
            now += ms(1 + rng.below(40));
            let before = fired.len();
            wheel.expire(now, &mut fired);
            assert!(fired[before..].iter().all(|&d| d <= now));
            if let Some(next) = wheel.next_deadline() {
                assert!(next > now);
            }
        }
        assert_eq!(fired, expected);
    }

    #[test]
    fn next_deadline_tracks_the_earliest_timer() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(TICK, 8, t0);
        assert_eq!(wheel.next_deadline(), None);
        let late = wheel.schedule(t0 + ms(5_000), 'l');
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(5_000)));
        let early = wheel.schedule(t0 + ms(37), 'e');
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(37)));
        wheel.schedule(t0 + ms(200), 'm');
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(37)));

        // Cancelling the earliest leaves an early (never late) answer until the next expire.
        assert_eq!(wheel.cancel(early), Some('e'));
        assert!(wheel.next_deadline().is_some_and(|d| d <= t0 + ms(200)));
        assert!(expire_at(&mut wheel, t0 + ms(37)).is_empty());
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(200)));

        assert_eq!(expire_at(&mut wheel, t0 + ms(200)), ['m']);
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(5_000)));
        assert_eq!(wheel.cancel(late), Some('l'));
        assert_eq!(wheel.next_deadline(), None);
    }

    /// Random schedules, cancels (some stale) and clock steps, checked against a plain list.
    #[test]
    fn matches_a_sorted_list_model() {
        for seed in 1..=20u64 {
            let t0 = Instant::now();
            let slots = [1, 3, 8, 64, 512][(seed % 5) as usize];
            let mut wheel = TimerWheel::new(TICK, slots, t0 + ms(1_000));
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            // (deadline, id, value) of every pending timer.
            let mut model: Vec<(Instant, TimerId, u64)> = Vec::new();
            let mut dead_ids: Vec<TimerId> = Vec::new();
            let mut now = t0 + ms(1_000);
            let mut value = 0u64;
            for _ in 0..5_000 {
                match rng.below(10) {
                    0..=4 => {
                        // Mostly future, sometimes past, sometimes many turns away.
                        let deadline = match rng.below(10) {
                            0 => now - ms(rng.below(1_000)),
                            1 => now + ms(rng.below(100_000)),
                            _ => now + ms(rng.below(3_000)),
                        };
                        value += 1;
                        let id = wheel.schedule(deadline, value);
                        model.push((deadline, id, value));
                    }
                    5 | 6 => {
                        if !model.is_empty() {
                            let i = rng.below(model.len() as u64) as usize;
                            let (_, id, v) = model.swap_remove(i);
                            assert_eq!(wheel.cancel(id), Some(v));
                            dead_ids.push(id);
                        }
                    }
                    7 => {
                        if !dead_ids.is_empty() {
                            let i = rng.below(dead_ids.len() as u64) as usize;
                            assert_eq!(wheel.cancel(dead_ids[i]), None);
                        }
                    }
                    _ => {
                        now += ms(rng.below(300));
                        let mut fired = Vec::new();
                        wheel.expire(now, &mut fired);
                        model.sort_by_key(|&(d, _, v)| (d, v));
                        let due = model.iter().take_while(|&&(d, _, _)| d <= now).count();
                        let expected: Vec<u64> = model.iter().take(due).map(|e| e.2).collect();
                        dead_ids.extend(model.drain(..due).map(|e| e.1));
                        assert_eq!(fired, expected, "seed {seed}");
                        // Exact right after an expire.
                        assert_eq!(wheel.next_deadline(), model.first().map(|e| e.0));
                    }
                }
                assert_eq!(wheel.len(), model.len());
                let true_earliest = model.iter().map(|e| e.0).min();
                match (wheel.next_deadline(), true_earliest) {
                    (None, None) => {}
                    (Some(got), Some(truth)) => assert!(got <= truth + TICK, "seed {seed}"),
                    (got, truth) => panic!("seed {seed}: next_deadline {got:?}, model {truth:?}"),
                }
            }
        }
    }
}
