//! [`Arc`]: a reference-counted box whose constructor is fallible.

use super::{AllocCtx, Allocator};
use crate::atomic::{AtomicUsize, Ordering};
use crate::Result;
use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::{self, NonNull};

/// The shared allocation: the count, then the value.
struct Inner<T> {
    count: AtomicUsize,
    value: T,
}

/// A thread-safe reference-counted pointer on the allocator `A`; the value is dropped and the
/// memory freed when the last `Arc` goes.
///
/// Unlike the standard library's `Arc`, [`try_new`](Self::try_new) returns
/// [`Error::NoMem`](crate::Error::NoMem) instead of aborting, and the count saturates instead
/// of aborting: a value whose count reached `usize::MAX` (only possible by leaking clones) is
/// never freed.
///
/// ```
/// # #[cfg(feature = "alloc")] {
/// use gpusvm::heap::{AllocCtx, Arc, Global};
/// let a: Arc<u32, Global> = Arc::try_new(7, AllocCtx::MaySleep)?;
/// let b = a.clone();
/// assert!(Arc::ptr_eq(&a, &b));
/// assert_eq!(Arc::strong_count(&a), 2);
/// assert_eq!(*b, 7);
/// # }
/// # Ok::<(), gpusvm::Error>(())
/// ```
pub struct Arc<T, A: Allocator> {
    inner: NonNull<Inner<T>>,
    _owns: PhantomData<(Inner<T>, A)>,
}

// SAFETY: as the standard library's `Arc`: the value is shared between threads (needs `Sync`) and may
// be dropped on any of them (needs `Send`); the count is atomic.
unsafe impl<T: Send + Sync, A: Allocator> Send for Arc<T, A> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync, A: Allocator> Sync for Arc<T, A> {}

impl<T, A: Allocator> Arc<T, A> {
    /// Move `value` into a new shared allocation with a count of one.
    ///
    /// Errors: [`Error::NoMem`](crate::Error::NoMem) when the allocator fails (`value` is
    /// dropped).
    ///
    /// Context: allocates with `ctx`.
    pub fn try_new(value: T, ctx: AllocCtx) -> Result<Self> {
        let layout = Layout::new::<Inner<T>>();
        let inner: NonNull<Inner<T>> = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            A::allocate(layout, ctx)?.cast()
        };
        // SAFETY: `inner` is valid for a write of `Inner<T>` (fresh allocation of its layout,
        // or dangling-but-aligned for a zero-sized one).
        unsafe {
            inner.as_ptr().write(Inner {
                count: AtomicUsize::new(1),
                value,
            })
        };
        Ok(Arc {
            inner,
            _owns: PhantomData,
        })
    }

    fn inner(&self) -> &Inner<T> {
        // SAFETY: the allocation lives while this `Arc` holds its count.
        unsafe { self.inner.as_ref() }
    }

    /// Whether `a` and `b` point to the same allocation.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        a.inner == b.inner
    }

    /// The address of the value (stable while any `Arc` lives).
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn as_ptr(this: &Self) -> *const T {
        // SAFETY: `inner` is a valid allocation; only the field address is computed.
        unsafe { ptr::addr_of!((*this.inner.as_ptr()).value) }
    }

    /// The number of `Arc`s to this value (a snapshot).
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn strong_count(this: &Self) -> usize {
        this.inner().count.load(Ordering::Acquire)
    }

    /// Give up this `Arc` without dropping its count: the value pointer, to be turned back
    /// with [`from_raw`](Self::from_raw) (used by intrusive containers).
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn into_raw(this: Self) -> *const T {
        let p = Self::as_ptr(&this);
        core::mem::forget(this);
        p
    }

    /// Take back an `Arc` given up with [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    /// `ptr` came from `into_raw` of an `Arc<T, A>` with the same `T` and `A`, and each such
    /// pointer is turned back at most once.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub unsafe fn from_raw(ptr: *const T) -> Self {
        let offset = core::mem::offset_of!(Inner<T>, value);
        // SAFETY: `ptr` points at the `value` field of an `Inner<T>` (caller's contract), so
        // stepping back by the field offset gives the allocation's start, which is non-null.
        let inner =
            unsafe { NonNull::new_unchecked(ptr.cast::<u8>().sub(offset).cast_mut().cast()) };
        Arc {
            inner,
            _owns: PhantomData,
        }
    }

    /// A mutable reference if this is the only `Arc` to the value.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn get_mut(this: &mut Self) -> Option<&mut T> {
        if this.inner().count.load(Ordering::Acquire) == 1 {
            // SAFETY: the count is one and we hold it mutably: no other reference exists.
            Some(unsafe { &mut (*this.inner.as_ptr()).value })
        } else {
            None
        }
    }
}

impl<T, A: Allocator> Clone for Arc<T, A> {
    /// Another `Arc` to the same value. Never allocates; the count saturates at `usize::MAX`
    /// (the value is then never freed) instead of overflowing.
    fn clone(&self) -> Self {
        let count = &self.inner().count;
        let mut cur = count.load(Ordering::Relaxed);
        while cur != usize::MAX {
            match count.compare_exchange_weak(
                cur,
                cur.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        Arc {
            inner: self.inner,
            _owns: PhantomData,
        }
    }
}

impl<T, A: Allocator> Drop for Arc<T, A> {
    fn drop(&mut self) {
        let count = &self.inner().count;
        let mut cur = count.load(Ordering::Relaxed);
        loop {
            if cur == usize::MAX {
                return; // saturated: leaked for good
            }
            match count.compare_exchange_weak(
                cur,
                cur.wrapping_sub(1),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur != 1 {
            return;
        }
        // Synchronise with every other holder's Release decrement before dropping.
        count.load(Ordering::Acquire);
        let layout = Layout::new::<Inner<T>>();
        // SAFETY: the count went from one to zero: this was the last `Arc`, nobody else can
        // reach the allocation; the value is dropped once and the memory (allocated with
        // this layout unless zero-sized) freed once.
        unsafe {
            ptr::drop_in_place(self.inner.as_ptr());
            if layout.size() != 0 {
                A::deallocate(self.inner.cast(), layout);
            }
        }
    }
}

impl<T, A: Allocator> Deref for Arc<T, A> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner().value
    }
}

impl<T, A: Allocator> AsRef<T> for Arc<T, A> {
    fn as_ref(&self) -> &T {
        self
    }
}

impl<T: fmt::Debug, A: Allocator> fmt::Debug for Arc<T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::super::Global;
    use super::*;
    use core::cell::Cell;

    #[test]
    fn count_clone_drop_raw_round_trip() {
        struct D<'a>(&'a Cell<u32>);
        impl Drop for D<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let n = Cell::new(0);
        let a: Arc<D<'_>, Global> = Arc::try_new(D(&n), AllocCtx::MaySleep).unwrap();
        let b = a.clone();
        assert_eq!(Arc::strong_count(&a), 2);
        let raw = Arc::into_raw(b);
        assert_eq!(raw, Arc::as_ptr(&a));
        // SAFETY: `raw` came from `into_raw` just above and is turned back once.
        let b = unsafe { Arc::from_raw(raw) };
        assert!(Arc::ptr_eq(&a, &b));
        drop(a);
        assert_eq!(n.get(), 0);
        let mut b = b;
        assert!(Arc::get_mut(&mut b).is_some());
        drop(b);
        assert_eq!(n.get(), 1);
    }

    #[test]
    fn zero_sized_values() {
        let a: Arc<(), Global> = Arc::try_new((), AllocCtx::MaySleep).unwrap();
        let b = a.clone();
        assert_eq!(Arc::strong_count(&b), 2);
    }
}
