//! [`SpinHost`]: the bare-metal default: spinning locks over the crate's atomics that never
//! panic, never allocate and never sleep.

use super::atomic::{AtomicBool, AtomicUsize, Ordering};
use super::{spin_hint, LockClass, RawMutex, RawRwLock};
use crate::heap::{Allocator, DefaultAlloc};
use crate::Host;
use core::marker::PhantomData;

/// The spinning lock facet (bare metal, firmware, any context that may spin). A mutex is one
/// atomic flag; a reader-writer lock is one atomic word that prefers writers (a waiting writer
/// stops new readers, so a stream of faults cannot starve an invalidation). Reader overflow
/// waits instead of panicking.
///
/// ```
/// use gpusvm::sync::{class, Mutex, SpinHost};
/// let m: Mutex<SpinHost, u32> = Mutex::new(&class::GC_QUEUE, 1).unwrap();
/// *m.lock() += 1;
/// assert_eq!(*m.try_lock().unwrap(), 2);
/// ```
///
/// `A` is the allocator of the facet (default [`DefaultAlloc`]: the global allocator with the
/// feature `alloc`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SpinHost<A = DefaultAlloc>(PhantomData<fn() -> A>);

impl<A: Allocator> Host for SpinHost<A> {
    type Mutex = SpinMutex;
    type RwLock = SpinRwLock;
    type Alloc = A;
}

/// The raw mutex of [`SpinHost`].
#[derive(Debug)]
pub struct SpinMutex {
    held: AtomicBool,
}

// SAFETY: `lock`/`try_lock` succeed only by swinging `held` from false to true with Acquire,
// and `unlock` stores false with Release: one holder at a time, and its writes are visible to
// the next holder.
unsafe impl RawMutex for SpinMutex {
    fn new(_class: &'static LockClass) -> crate::Result<Self> {
        Ok(SpinMutex {
            held: AtomicBool::new(false),
        })
    }
    fn lock(&self) {
        while !self.try_lock() {
            while self.held.load(Ordering::Relaxed) {
                spin_hint();
            }
        }
    }
    fn try_lock(&self) -> bool {
        self.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
    unsafe fn unlock(&self) {
        self.held.store(false, Ordering::Release);
    }
}

/// The raw reader-writer lock of [`SpinHost`].
#[derive(Debug)]
pub struct SpinRwLock {
    /// `WRITER` | `PENDING` | readers × `READER`.
    state: AtomicUsize,
}

const WRITER: usize = 1;
const PENDING: usize = 2;
const READER: usize = 4;

// SAFETY: a reader is admitted only while `WRITER` is clear (CAS with Acquire) and counts
// itself in; a writer is admitted only when no reader and no writer is counted (CAS to
// `WRITER` with Acquire). Releases use Release. So a writer excludes everyone, readers exclude
// writers, and the holder's writes are visible to the next holder.
unsafe impl RawRwLock for SpinRwLock {
    fn new(_class: &'static LockClass) -> crate::Result<Self> {
        Ok(SpinRwLock {
            state: AtomicUsize::new(0),
        })
    }
    fn read(&self) {
        while !self.try_read() {
            spin_hint();
        }
    }
    fn try_read(&self) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            // At usize::MAX / 4 readers the count would overflow: refuse (`read` waits) instead
            // of panicking.
            let n = match s.checked_add(READER) {
                Some(n) if s & (WRITER | PENDING) == 0 => n,
                _ => return false,
            };
            match self
                .state
                .compare_exchange_weak(s, n, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                // A spurious failure or another reader: look again.
                Err(now) => s = now,
            }
        }
    }
    unsafe fn unlock_read(&self) {
        self.state.fetch_sub(READER, Ordering::Release);
    }
    fn write(&self) {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & !PENDING == 0 {
                // Acquiring clears PENDING; other waiting writers set it again.
                if self
                    .state
                    .compare_exchange_weak(s, WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            } else if s & PENDING == 0 {
                self.state.fetch_or(PENDING, Ordering::Relaxed);
            }
            spin_hint();
        }
    }
    fn try_write(&self) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        while s & !PENDING == 0 {
            match self
                .state
                .compare_exchange_weak(s, WRITER, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
        false
    }
    unsafe fn unlock_write(&self) {
        self.state.fetch_and(!WRITER, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::class;

    #[test]
    fn rwlock_excludes_and_prefers_writers() {
        let l = SpinRwLock::new(&class::NOTIFIER).unwrap();
        l.read();
        assert!(l.try_read());
        assert!(!l.try_write());
        // SAFETY: two shared acquisitions above.
        unsafe {
            l.unlock_read();
            l.unlock_read();
        }
        assert!(l.try_write());
        assert!(!l.try_read());
        assert!(!l.try_write());
        // SAFETY: held exclusively.
        unsafe { l.unlock_write() };
        // A pending writer blocks new readers but not an acquiring writer.
        l.state.fetch_or(PENDING, Ordering::Relaxed);
        assert!(!l.try_read());
        assert!(l.try_write());
        assert_eq!(l.state.load(Ordering::Relaxed), WRITER);
        // SAFETY: held exclusively.
        unsafe { l.unlock_write() };
    }

    #[test]
    fn reader_overflow_refuses_instead_of_panicking() {
        let l = SpinRwLock::new(&class::NOTIFIER).unwrap();
        l.state
            .store(usize::MAX & !(WRITER | PENDING), Ordering::Relaxed);
        assert!(!l.try_read());
        let m = SpinMutex::new(&class::GC_QUEUE).unwrap();
        assert!(m.try_lock());
        assert!(!m.try_lock());
        // SAFETY: held.
        unsafe { m.unlock() };
        assert!(m.try_lock());
    }
}
