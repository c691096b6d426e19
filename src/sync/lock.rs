//! `Mutex<L, T>` and `RwLock<L, T>`: data guarded by a host-supplied raw lock.
//!
//! The raw lock (from the host's [`Host`] facet) only excludes; these wrappers own the data and
//! hand out guards, which are the proof that the lock is held (as `kernel::sync::Guard` is):
//! the data is reachable only through a guard, and dropping the guard unlocks.

use super::{LockClass, RawMutex, RawRwLock};
use crate::Host;
use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

/// A mutual-exclusion lock of the host's facet `L` over a `T`.
pub struct Mutex<L: Host, T> {
    raw: L::Mutex,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `T` to one thread at a time (the raw mutex's contract),
// so sharing the lock between threads only moves `T` between them: `T: Send` suffices.
unsafe impl<L: Host, T: Send> Sync for Mutex<L, T> {}
// SAFETY: the raw lock is `Send` (trait bound of `RawMutex`); the data moves with it.
unsafe impl<L: Host, T: Send> Send for Mutex<L, T> {}

impl<L: Host, T> core::fmt::Debug for Mutex<L, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mutex").finish_non_exhaustive()
    }
}

/// Proof that a [`Mutex`] is held; unlocks on drop. Not `Send`: a host lock may require the
/// locking thread to unlock it.
pub struct MutexGuard<'a, L: Host, T> {
    lock: &'a Mutex<L, T>,
    _not_send: PhantomData<*const ()>,
}

impl<L: Host, T> Mutex<L, T> {
    /// A new unlocked mutex of lock class `class` holding `v`.
    ///
    /// Errors: [`Error::NoMem`](crate::Error::NoMem) when the host cannot create its raw lock
    /// (`v` is dropped).
    ///
    /// Context: may sleep if the host allocates its lock object (see [`RawMutex::new`]); so
    /// never under a spinning lock or a lock the invalidation path takes.
    pub fn new(class: &'static LockClass, v: T) -> crate::Result<Self> {
        Ok(Mutex {
            raw: L::Mutex::new(class)?,
            data: UnsafeCell::new(v),
        })
    }

    /// Lock, waiting (spinning or sleeping, as the host's lock does) until it is free.
    ///
    /// Context: may sleep if the host implements the class with a sleeping lock.
    pub fn lock(&self) -> MutexGuard<'_, L, T> {
        self.raw.lock();
        MutexGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Lock if it is free right now.
    ///
    /// Context: never sleeps or waits.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, L, T>> {
        // `then`, not `then_some`: a guard built eagerly would be dropped when the try fails,
        // and its drop would unlock a lock this caller does not hold.
        self.raw.try_lock().then(|| MutexGuard {
            lock: self,
            _not_send: PhantomData,
        })
    }

    /// The value, when the mutex is owned exclusively (no locking needed).
    ///
    /// Context: any; takes no lock (`&mut self` proves exclusive access), never sleeps.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

impl<L: Host, T> Deref for MutexGuard<'_, L, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the raw mutex is held, which excludes every other
        // guard of this mutex; `&self` borrows the guard, so no `&mut` from it is live.
        unsafe { &*self.lock.data.get() }
    }
}

impl<L: Host, T> DerefMut for MutexGuard<'_, L, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<L: Host, T> Drop for MutexGuard<'_, L, T> {
    fn drop(&mut self) {
        // SAFETY: this guard was created by a successful `lock`/`try_lock` and is dropped once.
        unsafe { self.lock.raw.unlock() }
    }
}

/// A reader-writer lock of the host's facet `L` over a `T`.
pub struct RwLock<L: Host, T> {
    raw: L::RwLock,
    data: UnsafeCell<T>,
}

// SAFETY: readers share `&T` across threads (`T: Sync`), a writer gets `&mut T` on one thread at
// a time (`T: Send`); the raw lock's contract keeps the two apart.
unsafe impl<L: Host, T: Send + Sync> Sync for RwLock<L, T> {}
// SAFETY: the raw lock is `Send`; the data moves with it.
unsafe impl<L: Host, T: Send> Send for RwLock<L, T> {}

impl<L: Host, T> core::fmt::Debug for RwLock<L, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RwLock").finish_non_exhaustive()
    }
}

/// Proof that an [`RwLock`] is held shared; unlocks on drop.
pub struct RwLockReadGuard<'a, L: Host, T> {
    lock: &'a RwLock<L, T>,
    _not_send: PhantomData<*const ()>,
}

/// Proof that an [`RwLock`] is held exclusively; unlocks on drop.
pub struct RwLockWriteGuard<'a, L: Host, T> {
    lock: &'a RwLock<L, T>,
    _not_send: PhantomData<*const ()>,
}

impl<L: Host, T> RwLock<L, T> {
    /// A new unlocked lock of lock class `class` holding `v`.
    ///
    /// Errors: [`Error::NoMem`](crate::Error::NoMem) when the host cannot create its raw lock
    /// (`v` is dropped).
    ///
    /// Context: may sleep if the host allocates its lock object (see [`RawRwLock::new`]); so
    /// never under a spinning lock or a lock the invalidation path takes.
    pub fn new(class: &'static LockClass, v: T) -> crate::Result<Self> {
        Ok(RwLock {
            raw: L::RwLock::new(class)?,
            data: UnsafeCell::new(v),
        })
    }

    /// Take the lock shared, waiting while a writer holds it.
    ///
    /// Context: may sleep if the host implements the class with a sleeping lock.
    pub fn read(&self) -> RwLockReadGuard<'_, L, T> {
        self.raw.read();
        RwLockReadGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Take the lock shared if that is possible right now.
    ///
    /// Context: never sleeps or waits.
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, L, T>> {
        // `then`, not `then_some`: see `Mutex::try_lock`.
        self.raw.try_read().then(|| RwLockReadGuard {
            lock: self,
            _not_send: PhantomData,
        })
    }

    /// Take the lock exclusively, waiting for readers and writers to leave.
    ///
    /// Context: may sleep if the host implements the class with a sleeping lock.
    pub fn write(&self) -> RwLockWriteGuard<'_, L, T> {
        self.raw.write();
        RwLockWriteGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Take the lock exclusively if it is free right now.
    ///
    /// Context: never sleeps or waits.
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, L, T>> {
        // `then`, not `then_some`: see `Mutex::try_lock`.
        self.raw.try_write().then(|| RwLockWriteGuard {
            lock: self,
            _not_send: PhantomData,
        })
    }

    /// The value, when the lock is owned exclusively (no locking needed).
    ///
    /// Context: any; takes no lock (`&mut self` proves exclusive access), never sleeps.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

impl<L: Host, T> Deref for RwLockReadGuard<'_, L, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held shared: no writer exists, so shared references are sound.
        unsafe { &*self.lock.data.get() }
    }
}

impl<L: Host, T> Drop for RwLockReadGuard<'_, L, T> {
    fn drop(&mut self) {
        // SAFETY: this guard holds one shared acquisition, released exactly once here.
        unsafe { self.lock.raw.unlock_read() }
    }
}

impl<L: Host, T> Deref for RwLockWriteGuard<'_, L, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held exclusively by this guard.
        unsafe { &*self.lock.data.get() }
    }
}

impl<L: Host, T> DerefMut for RwLockWriteGuard<'_, L, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held exclusively by this guard, and `&mut self` is unique.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<L: Host, T> Drop for RwLockWriteGuard<'_, L, T> {
    fn drop(&mut self) {
        // SAFETY: this guard holds the exclusive acquisition, released exactly once here.
        unsafe { self.lock.raw.unlock_write() }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::sync::{class, Mutex, RwLock, SpinHost};

    /// A failed try-lock leaves the lock to its holder (it once built the guard eagerly and
    /// dropped it, unlocking a lock held by someone else).
    #[test]
    fn a_failed_try_lock_does_not_unlock() {
        let m: Mutex<SpinHost, u32> = Mutex::new(&class::GC_QUEUE, 0).unwrap();
        let held = m.lock();
        assert!(m.try_lock().is_none());
        assert!(
            m.try_lock().is_none(),
            "the failed try_lock released the holder's lock"
        );
        drop(held);
        assert!(m.try_lock().is_some());

        let l: RwLock<SpinHost, u32> = RwLock::new(&class::NOTIFIER, 0).unwrap();
        let w = l.write();
        assert!(l.try_read().is_none());
        assert!(l.try_write().is_none());
        assert!(
            l.try_write().is_none(),
            "the failed try_write released the writer"
        );
        assert!(
            l.try_read().is_none(),
            "the failed try_read released the writer"
        );
        drop(w);
        let r = l.read();
        assert!(l.try_write().is_none());
        assert!(
            l.try_write().is_none(),
            "the failed try_write dropped the reader"
        );
        drop(r);
        assert!(l.try_write().is_some());
    }
}
