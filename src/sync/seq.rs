//! The per-notifier sequence counter (SPEC §4, DESIGN "Concurrency model").
//!
//! The counter is even while no invalidation of the notifier's interval is in progress and odd
//! while one is. A page collection reads the counter before it starts ([`SeqCounter::read_begin`];
//! an odd value means "an invalidation is running, try again"), collects without holding any
//! lock, and commits under the notifier lock only if [`SeqCounter::read_retry`] says the counter
//! did not move. Invalidations nest: the counter turns odd at the first `begin` and even again at
//! the last `end`.
//!
//! Locking: `begin` is called with the notifier lock held for write, `end` with it held (shared
//! is enough: concurrent `end`s are safe, and `begin` stays excluded); `read_retry` with the
//! notifier lock held (read or write); `read_begin` needs no lock.

use crate::sync::{AtomicUsize, Ordering};

/// A sequence counter with nesting (see the module docs).
///
/// ```
/// use gpusvm::range::SeqCounter;
/// let s = SeqCounter::new();
/// let seq = s.read_begin().unwrap();
/// s.begin();                         // an invalidation starts
/// assert!(s.read_begin().is_none()); // collections must wait
/// s.end();
/// assert!(s.read_retry(seq));        // the collection started before it must not commit
/// ```
#[derive(Debug, Default)]
pub struct SeqCounter {
    seq: AtomicUsize,
    active: AtomicUsize,
}

impl SeqCounter {
    /// A counter at 0 (even: no invalidation running).
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn new() -> Self {
        SeqCounter {
            seq: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        }
    }

    /// Start a read section: `Some(seq)` if no invalidation is running, `None` otherwise.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn read_begin(&self) -> Option<usize> {
        let s = self.seq.load(Ordering::Acquire);
        if s & 1 == 1 {
            None
        } else {
            Some(s)
        }
    }

    /// Whether an invalidation started (or is running) since `read_begin` returned `seq`: the
    /// collected result must then be dropped. Call with the notifier lock held.
    ///
    /// Context: never sleeps, allocates nothing; call with the notifier lock held (shared or
    /// exclusive) to commit.
    pub fn read_retry(&self, seq: usize) -> bool {
        self.seq.load(Ordering::Acquire) != seq
    }

    /// The raw counter value (for diagnostics).
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn current(&self) -> usize {
        self.seq.load(Ordering::Acquire)
    }

    /// Whether an invalidation is in progress.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn in_progress(&self) -> bool {
        self.active.load(Ordering::Acquire) != 0
    }

    /// An invalidation begins (notifier lock held for write).
    ///
    /// `active` and `seq` are two atomics: `begin` must never run concurrently with `end` (the
    /// write lock guarantees it), or the counter could turn even while an invalidation runs.
    ///
    /// Context: never sleeps, allocates nothing; call with the notifier lock held exclusively
    /// (the invalidation path).
    pub fn begin(&self) {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            self.seq.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// An invalidation ends. An `end` without a matching `begin` is ignored.
    ///
    /// Context: never sleeps, allocates nothing; call with the notifier lock held exclusively.
    pub fn end(&self) {
        let mut cur = self.active.load(Ordering::Acquire);
        loop {
            if cur == 0 {
                return;
            }
            match self.active.compare_exchange(
                cur,
                cur.wrapping_sub(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur == 1 {
            self.seq.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn nesting_keeps_counter_odd_until_last_end() {
        let s = SeqCounter::new();
        let r = s.read_begin();
        assert_eq!(r, Some(0));
        s.begin();
        s.begin();
        assert!(s.read_begin().is_none());
        s.end();
        assert!(s.read_begin().is_none(), "still one invalidation running");
        assert!(s.in_progress());
        s.end();
        assert_eq!(s.read_begin(), Some(2));
        assert!(s.read_retry(0));
        assert!(!s.read_retry(2));
    }

    /// The counter wraps (atomic adds wrap, they never overflow-panic) and stays correct
    /// across the wrap: even/odd alternate and a collection across the wrap is refused. On
    /// 32-bit targets `usize` wraps after 2^31 invalidations; see `sync::atomic`.
    #[test]
    fn wraps_around_without_panicking() {
        let s = SeqCounter::new();
        s.seq.store(usize::MAX - 1, Ordering::Relaxed);
        let r = s.read_begin().unwrap();
        s.begin();
        assert_eq!(s.current(), usize::MAX);
        assert!(s.read_begin().is_none());
        s.end();
        assert_eq!(s.read_begin(), Some(0), "even again after the wrap");
        assert!(s.read_retry(r));
        s.begin();
        s.end();
        assert_eq!(s.read_begin(), Some(2));
    }

    #[test]
    fn unbalanced_end_is_ignored() {
        let s = SeqCounter::new();
        s.end();
        assert_eq!(s.read_begin(), Some(0));
        assert!(!s.in_progress());
    }
}
