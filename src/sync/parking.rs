//! [`ParkingHost`]: sleeping locks built from a mutex and a condition variable: `std::sync`'s
//! with the `std` feature, loom's under `--cfg loom` (so the models explore every lock the crate
//! takes). A waiter parks instead of spinning. Poisoning is ignored (no code of the crate
//! panics while holding a lock), and no path panics.

#[cfg(loom)]
use loom::sync::{Condvar, Mutex as Inner, MutexGuard as InnerGuard};
#[cfg(not(loom))]
use std::sync::{Condvar, Mutex as Inner, MutexGuard as InnerGuard};

use super::{LockClass, RawMutex, RawRwLock};
use crate::heap::{Allocator, DefaultAlloc};
use crate::Host;
use core::marker::PhantomData;

/// The parking lock facet: `std::sync` (or loom) mutexes and condition variables.
///
/// ```
/// use gpusvm::sync::{class, ParkingHost, RwLock};
/// let l: RwLock<ParkingHost, u32> = RwLock::new(&class::NOTIFIER, 1).unwrap();
/// *l.write() += 1;
/// let (a, b) = (l.read(), l.read());
/// assert_eq!(*a + *b, 4);
/// assert!(l.try_write().is_none());
/// ```
///
/// `A` is the allocator of the facet (default [`DefaultAlloc`]: the global allocator with the
/// feature `alloc`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ParkingHost<A = DefaultAlloc>(PhantomData<fn() -> A>);

impl<A: Allocator> Host for ParkingHost<A> {
    type Mutex = ParkingMutex;
    type RwLock = ParkingRwLock;
    type Alloc = A;
}

fn lock<T>(m: &Inner<T>) -> InnerGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn wait<'a, T>(cv: &Condvar, g: InnerGuard<'a, T>) -> InnerGuard<'a, T> {
    match cv.wait(g) {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The raw mutex of [`ParkingHost`].
#[derive(Debug)]
pub struct ParkingMutex {
    held: Inner<bool>,
    cv: Condvar,
}

// SAFETY: `held` is read and written only under the inner mutex; `lock` waits until it is
// false and sets it, `unlock` clears it: one holder at a time. The inner mutex orders the
// holders' accesses.
unsafe impl RawMutex for ParkingMutex {
    fn new(_class: &'static LockClass) -> crate::Result<Self> {
        Ok(ParkingMutex {
            held: Inner::new(false),
            cv: Condvar::new(),
        })
    }
    fn lock(&self) {
        let mut g = lock(&self.held);
        while *g {
            g = wait(&self.cv, g);
        }
        *g = true;
    }
    fn try_lock(&self) -> bool {
        let mut g = lock(&self.held);
        !core::mem::replace(&mut *g, true)
    }
    unsafe fn unlock(&self) {
        *lock(&self.held) = false;
        self.cv.notify_one();
    }
}

#[derive(Debug, Default)]
struct RwState {
    readers: usize,
    writer: bool,
    writers_waiting: usize,
}

/// The raw reader-writer lock of [`ParkingHost`] (writers preferred).
#[derive(Debug)]
pub struct ParkingRwLock {
    state: Inner<RwState>,
    cv: Condvar,
}

impl ParkingRwLock {
    fn readable(s: &RwState) -> bool {
        !s.writer && s.writers_waiting == 0 && s.readers < usize::MAX
    }
}

// SAFETY: the state is changed only under the inner mutex; a reader enters only without a
// writer, a writer only without readers and writers.
unsafe impl RawRwLock for ParkingRwLock {
    fn new(_class: &'static LockClass) -> crate::Result<Self> {
        Ok(ParkingRwLock {
            state: Inner::new(RwState::default()),
            cv: Condvar::new(),
        })
    }
    fn read(&self) {
        let mut g = lock(&self.state);
        while !Self::readable(&g) {
            g = wait(&self.cv, g);
        }
        g.readers = g.readers.saturating_add(1);
    }
    fn try_read(&self) -> bool {
        let mut g = lock(&self.state);
        let ok = Self::readable(&g);
        if ok {
            g.readers = g.readers.saturating_add(1);
        }
        ok
    }
    unsafe fn unlock_read(&self) {
        let last = {
            let mut g = lock(&self.state);
            g.readers = g.readers.saturating_sub(1);
            g.readers == 0
        };
        if last {
            self.cv.notify_all();
        }
    }
    fn write(&self) {
        let mut g = lock(&self.state);
        g.writers_waiting = g.writers_waiting.saturating_add(1);
        while g.writer || g.readers > 0 {
            g = wait(&self.cv, g);
        }
        g.writers_waiting = g.writers_waiting.saturating_sub(1);
        g.writer = true;
    }
    fn try_write(&self) -> bool {
        let mut g = lock(&self.state);
        let ok = !g.writer && g.readers == 0;
        if ok {
            g.writer = true;
        }
        ok
    }
    unsafe fn unlock_write(&self) {
        lock(&self.state).writer = false;
        self.cv.notify_all();
    }
}
