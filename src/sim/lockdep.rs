//! [`SimHost`]: the simulator's lock facet, a small lockdep.
//!
//! Each lock is a [`ParkingHost`](crate::sync::ParkingHost) lock that also checks, on every blocking acquisition, the
//! rules of the crate's lock table ([`crate::sync`]):
//!
//! * **order**: every lock this thread holds has a smaller [`rank`](LockClass::rank) than the
//!   one being taken (a lock of the same class counts as an inversion too: two locks of one
//!   class have no order between them);
//! * **sleeping in atomic context**: a class that may sleep is not taken while a class that
//!   must spin is held.
//!
//! Try-locks are exempt from both (they cannot deadlock), as in Linux's lockdep, but what they
//! take counts as held. A violation panics with both classes named, so every test, property
//! test and fuzz replay that runs on the simulator fails on it. Every ordered pair of classes
//! seen (held → taken) is recorded and can be read with [`observed_order`].

// A lock-order violation in the simulator is a failed test: the checker panics on purpose.
#![allow(clippy::panic)]

use crate::sync::{class, AtomicBool, LockClass, Ordering};
use crate::sync::{ParkingMutex, ParkingRwLock, RawMutex, RawRwLock};
use crate::Host;
use std::cell::RefCell;
use std::vec::Vec;

/// The simulator's host facet: [`ParkingHost`](crate::sync::ParkingHost)'s locks with lock-order
/// checking (see the module docs), and the counting, failure-injecting [`SimAlloc`](super::SimAlloc).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimHost;

impl Host for SimHost {
    type Mutex = CheckedMutex;
    type RwLock = CheckedRwLock;
    type Alloc = super::SimAlloc;
}

/// Most locks one thread may hold at once (the crate nests at most a handful).
const MAX_HELD: usize = 16;

/// The locks one thread holds: (class, address of the raw lock), in acquisition order. A fixed
/// array, so that checking never allocates: the invalidation path is checked for allocations
/// too (`tests/no_alloc_invalidate.rs`).
struct Held {
    locks: [Option<(&'static LockClass, usize)>; MAX_HELD],
    len: usize,
}

std::thread_local! {
    static HELD: RefCell<Held> = const {
        RefCell::new(Held { locks: [None; MAX_HELD], len: 0 })
    };
}

/// Number of classes in [`class::ALL`].
const N: usize = class::ALL.len();

/// `EDGES[a][b]`: a lock of class `ALL[b]` was taken while one of class `ALL[a]` was held.
static EDGES: [[AtomicBool; N]; N] = [const { [const { AtomicBool::new(false) }; N] }; N];

fn index(c: &'static LockClass) -> Option<usize> {
    class::ALL.iter().position(|k| core::ptr::eq(*k, c))
}

fn held_list() -> Vec<&'static LockClass> {
    HELD.with(|h| {
        let h = h.borrow();
        h.locks[..h.len].iter().flatten().map(|e| e.0).collect()
    })
}

/// Every ordered pair of lock classes (held → taken by a blocking acquisition) the checker
/// has seen in this process, by name.
pub fn observed_order() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for (a, row) in EDGES.iter().enumerate() {
        for (b, e) in row.iter().enumerate() {
            if e.load(Ordering::Relaxed) {
                out.push((class::ALL[a].name, class::ALL[b].name));
            }
        }
    }
    out
}

/// The classes this thread holds right now, outermost first.
pub fn held_classes() -> Vec<&'static str> {
    held_list().iter().map(|c| c.name).collect()
}

/// Check the rules for a blocking acquisition of `class`; panics on a violation. Allocates
/// nothing unless it panics.
fn check(class: &'static LockClass) {
    HELD.with(|h| {
        let h = h.borrow();
        for &(held, _) in h.locks[..h.len].iter().flatten() {
            if held.rank >= class.rank {
                panic!(
                    "lock order violation: taking {} (rank {}) while holding {} (rank {}); held: {:?}",
                    class.name,
                    class.rank,
                    held.name,
                    held.rank,
                    h.locks[..h.len].iter().flatten().map(|e| e.0.name).collect::<Vec<_>>()
                );
            }
            if class.may_sleep && !held.may_sleep {
                panic!(
                    "sleeping in atomic context: taking {} (may sleep) while holding {} (spinning)",
                    class.name, held.name
                );
            }
            if let (Some(a), Some(b)) = (index(held), index(class)) {
                EDGES[a][b].store(true, Ordering::Relaxed);
            }
        }
    });
}

fn push(class: &'static LockClass, addr: usize) {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        let n = h.len;
        assert!(n < MAX_HELD, "lockdep: more than {MAX_HELD} locks held");
        h.locks[n] = Some((class, addr));
        h.len = n + 1;
    });
}

/// Forget the most recent hold of the lock at `addr` (guards may drop out of order).
fn pop(addr: usize) {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        let n = h.len;
        if let Some(i) = h.locks[..n]
            .iter()
            .rposition(|e| e.is_some_and(|e| e.1 == addr))
        {
            h.locks.copy_within(i + 1..n, i);
            h.locks[n - 1] = None;
            h.len = n - 1;
        }
    });
}

/// The raw mutex of [`SimHost`].
#[derive(Debug)]
pub struct CheckedMutex {
    class: &'static LockClass,
    inner: ParkingMutex,
}

impl CheckedMutex {
    fn addr(&self) -> usize {
        core::ptr::from_ref(self) as usize
    }
}

// SAFETY: exclusion is `ParkingMutex`'s; the checks only read and write thread-local state.
unsafe impl RawMutex for CheckedMutex {
    fn new(class: &'static LockClass) -> crate::Result<Self> {
        // Creating a lock is an allocation for a host whose locks must not move (a kernel's):
        // the same lock rules as `SimAlloc`'s apply.
        super::SimAlloc::check_lock_creation();
        Ok(CheckedMutex {
            class,
            inner: ParkingMutex::new(class)?,
        })
    }
    fn lock(&self) {
        check(self.class);
        self.inner.lock();
        push(self.class, self.addr());
    }
    fn try_lock(&self) -> bool {
        let ok = self.inner.try_lock();
        if ok {
            push(self.class, self.addr());
        }
        ok
    }
    unsafe fn unlock(&self) {
        pop(self.addr());
        // SAFETY: forwarded from the caller, who holds the lock.
        unsafe { self.inner.unlock() }
    }
}

/// The raw reader-writer lock of [`SimHost`].
#[derive(Debug)]
pub struct CheckedRwLock {
    class: &'static LockClass,
    inner: ParkingRwLock,
}

impl CheckedRwLock {
    fn addr(&self) -> usize {
        core::ptr::from_ref(self) as usize
    }
}

// SAFETY: exclusion is `ParkingRwLock`'s; the checks only read and write thread-local state.
unsafe impl RawRwLock for CheckedRwLock {
    fn new(class: &'static LockClass) -> crate::Result<Self> {
        super::SimAlloc::check_lock_creation();
        Ok(CheckedRwLock {
            class,
            inner: ParkingRwLock::new(class)?,
        })
    }
    fn read(&self) {
        check(self.class);
        self.inner.read();
        push(self.class, self.addr());
    }
    fn try_read(&self) -> bool {
        let ok = self.inner.try_read();
        if ok {
            push(self.class, self.addr());
        }
        ok
    }
    unsafe fn unlock_read(&self) {
        pop(self.addr());
        // SAFETY: forwarded from the caller, who holds the lock shared.
        unsafe { self.inner.unlock_read() }
    }
    fn write(&self) {
        check(self.class);
        self.inner.write();
        push(self.class, self.addr());
    }
    fn try_write(&self) -> bool {
        let ok = self.inner.try_write();
        if ok {
            push(self.class, self.addr());
        }
        ok
    }
    unsafe fn unlock_write(&self) {
        pop(self.addr());
        // SAFETY: forwarded from the caller, who holds the lock exclusively.
        unsafe { self.inner.unlock_write() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{class, Mutex as M, RwLock as R};

    #[test]
    fn documented_order_passes_and_is_recorded() {
        let n: R<SimHost, u32> = R::new(&class::NOTIFIER, 0).unwrap();
        let p: M<SimHost, u32> = M::new(&class::RANGE_PAGES, 0).unwrap();
        let g = n.write();
        let q = p.lock();
        assert_eq!(held_classes(), ["gpusvm.notifier", "gpusvm.range_pages"]);
        drop(g); // out of order
        drop(q);
        assert!(held_classes().is_empty());
        assert!(observed_order().contains(&("gpusvm.notifier", "gpusvm.range_pages")));
    }

    #[test]
    #[should_panic(expected = "lock order violation: taking gpusvm.notifier")]
    fn inversion_panics() {
        let n: R<SimHost, u32> = R::new(&class::NOTIFIER, 0).unwrap();
        let p: M<SimHost, u32> = M::new(&class::GC_QUEUE, 0).unwrap();
        let _q = p.lock();
        let _g = n.read();
    }

    #[test]
    #[should_panic(expected = "lock order violation: taking gpusvm.range_pages")]
    fn same_class_nesting_panics() {
        let a: M<SimHost, u32> = M::new(&class::RANGE_PAGES, 0).unwrap();
        let b: M<SimHost, u32> = M::new(&class::RANGE_PAGES, 0).unwrap();
        let _x = a.lock();
        let _y = b.lock();
    }

    #[test]
    fn try_locks_are_exempt_but_held() {
        let n: R<SimHost, u32> = R::new(&class::NOTIFIER, 0).unwrap();
        let p: M<SimHost, u32> = M::new(&class::GC_QUEUE, 0).unwrap();
        let _q = p.lock();
        let g = n.try_write();
        assert!(g.is_some());
        assert_eq!(held_classes(), ["gpusvm.gc_queue", "gpusvm.notifier"]);
    }
}
