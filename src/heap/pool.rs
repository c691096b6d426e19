//! [`Pool`]: a fixed-capacity allocator over static memory, for firmware without a heap.

use crate::atomic::{AtomicBool, AtomicUsize, Ordering};
use core::alloc::Layout;
use core::cell::UnsafeCell;
/// The used-block table's cell: loom's under `--cfg loom`, so the model sees unsynchronised
/// access to it.
#[cfg(loom)]
type TableCell<T> = loom::cell::UnsafeCell<T>;
#[cfg(not(loom))]
type TableCell<T> = UnsafeCell<T>;
use core::ptr::NonNull;

/// Size and alignment of a pool block.
pub const POOL_BLOCK: usize = 64;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; POOL_BLOCK]);

/// A fixed pool of `BLOCKS` blocks of [`POOL_BLOCK`] bytes: first fit over a used-flag per
/// block, behind a spin flag held only for the scan. Allocation and free never sleep and never
/// panic; an allocation that finds no run of free blocks fails (loom model of the flag:
/// `tests/loom_pool.rs`). Alignments above
/// [`POOL_BLOCK`] are honoured by starting the run on a suitably aligned block.
///
/// Turn a pool into an [`Allocator`](super::Allocator) with
/// [`pool_allocator!`](crate::pool_allocator), which puts it in a `static`:
///
/// ```
/// gpusvm::pool_allocator!(
///     /// 64 KiB for the SVM state.
///     pub FwAlloc, 1024
/// );
/// use gpusvm::heap::{AllocCtx, Vec};
/// let mut v: Vec<u64, FwAlloc> = Vec::new();
/// v.push(1, AllocCtx::NoSleep)?;
/// assert_eq!(FwAlloc::pool().used_blocks(), 1);
/// drop(v);
/// assert_eq!(FwAlloc::pool().used_blocks(), 0);
/// # Ok::<(), gpusvm::Error>(())
/// ```
pub struct Pool<const BLOCKS: usize> {
    lock: AtomicBool,
    used: TableCell<[bool; BLOCKS]>,
    mem: UnsafeCell<[Block; BLOCKS]>,
    in_use: AtomicUsize,
}

// SAFETY: `used` is read and written only with `lock` held (acquired with Acquire, released
// with Release); `mem` is never accessed by the pool, only handed out in disjoint runs of
// blocks, each to one owner at a time.
unsafe impl<const BLOCKS: usize> Sync for Pool<BLOCKS> {}

impl<const BLOCKS: usize> Default for Pool<BLOCKS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const BLOCKS: usize> Pool<BLOCKS> {
    /// An empty pool (all blocks free); usable in a `static`.
    ///
    /// Context: const; usable in a `static`.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Pool {
            lock: AtomicBool::new(false),
            used: TableCell::new([false; BLOCKS]),
            mem: UnsafeCell::new([Block([0; POOL_BLOCK]); BLOCKS]),
            in_use: AtomicUsize::new(0),
        }
    }

    /// An empty pool (all blocks free). Under `--cfg loom` (loom's atomics are not `const`),
    /// for the loom model of the pool's lock.
    ///
    /// Context: any; allocates nothing.
    #[cfg(loom)]
    pub fn new() -> Self {
        Pool {
            lock: AtomicBool::new(false),
            used: TableCell::new([false; BLOCKS]),
            mem: UnsafeCell::new([Block([0; POOL_BLOCK]); BLOCKS]),
            in_use: AtomicUsize::new(0),
        }
    }

    /// Blocks currently handed out.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub fn used_blocks(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Total blocks.
    ///
    /// Context: any; never sleeps, allocates nothing, takes no lock.
    pub const fn blocks(&self) -> usize {
        BLOCKS
    }

    fn with_used<R>(&self, f: impl FnOnce(&mut [bool; BLOCKS]) -> R) -> R {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            crate::atomic::spin_hint();
        }
        // SAFETY: the flag is held: this is the only access to `used`.
        #[cfg(not(loom))]
        let r = f(unsafe { &mut *self.used.get() });
        // SAFETY: as above (loom checks it).
        #[cfg(loom)]
        let r = self.used.with_mut(|t| f(unsafe { &mut *t }));
        self.lock.store(false, Ordering::Release);
        r
    }

    /// Blocks a layout needs (at least one).
    fn blocks_for(layout: Layout) -> Option<usize> {
        let n = layout.size().checked_add(POOL_BLOCK - 1)? / POOL_BLOCK;
        Some(n.max(1))
    }

    /// First-fit allocation of `layout`; `None` when no suitable run of free blocks exists.
    ///
    /// Context: never sleeps (spins only while another CPU scans the pool).
    pub fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        let need = Self::blocks_for(layout)?;
        let base = self.mem.get().cast::<Block>();
        let start = self.with_used(|used| {
            let mut s = 0usize;
            while s.checked_add(need)? <= BLOCKS {
                // The run must start on an address aligned to `layout.align()`.
                // SAFETY: `s < BLOCKS`: inside the array; only the address is computed.
                let addr = unsafe { base.add(s) } as usize;
                if addr.checked_rem(layout.align()) != Some(0) {
                    s = s.checked_add(1)?;
                    continue;
                }
                match used.get(s..s.checked_add(need)?)?.iter().rposition(|&u| u) {
                    None => {
                        used.get_mut(s..s.checked_add(need)?)?.fill(true);
                        return Some(s);
                    }
                    Some(busy) => {
                        s = s.checked_add(busy)?.checked_add(1)?;
                    }
                }
            }
            None
        })?;
        self.in_use.fetch_add(need, Ordering::Relaxed);
        // SAFETY: `start + need <= BLOCKS`: the run is inside the array.
        NonNull::new(unsafe { base.add(start) }.cast::<u8>())
    }

    /// Return memory obtained from [`allocate`](Self::allocate).
    ///
    /// Context: never sleeps.
    ///
    /// # Safety
    /// `ptr` was returned by this pool's `allocate` with `layout` and not freed since.
    pub unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let base = self.mem.get() as usize;
        let (Some(need), Some(off)) = (
            Self::blocks_for(layout),
            (ptr.as_ptr() as usize).checked_sub(base),
        ) else {
            return;
        };
        let first = off / POOL_BLOCK;
        let freed = self.with_used(|used| {
            let run = used.get_mut(first..first.checked_add(need)?)?;
            run.fill(false);
            Some(need)
        });
        if let Some(n) = freed {
            self.in_use.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// Define a unit type that is an [`Allocator`](crate::heap::Allocator) over a
/// [`Pool`](crate::heap::Pool) of `blocks` blocks in a `static` (`pool()` returns it).
///
/// `pool_allocator!(pub Name, blocks);` — attributes and doc comments may precede the name.
#[macro_export]
macro_rules! pool_allocator {
    ($(#[$meta:meta])* $vis:vis $name:ident, $blocks:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default)]
        $vis struct $name;

        impl $name {
            /// The pool behind this allocator.
            $vis fn pool() -> &'static $crate::heap::Pool<{ $blocks }> {
                static POOL: $crate::heap::Pool<{ $blocks }> = $crate::heap::Pool::new();
                &POOL
            }
        }

        // SAFETY: `Pool` hands out disjoint, aligned runs of its static memory and takes back
        // only what it handed out.
        unsafe impl $crate::heap::Allocator for $name {
            fn allocate(
                layout: ::core::alloc::Layout,
                _ctx: $crate::heap::AllocCtx,
            ) -> $crate::Result<::core::ptr::NonNull<u8>> {
                Self::pool().allocate(layout).ok_or($crate::Error::NoMem)
            }
            unsafe fn deallocate(ptr: ::core::ptr::NonNull<u8>, layout: ::core::alloc::Layout) {
                // SAFETY: forwarded from the caller of `Allocator::deallocate`.
                unsafe { Self::pool().deallocate(ptr, layout) }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_alignment_exhaustion_and_reuse() {
        let p: Pool<8> = Pool::new();
        let l1 = Layout::from_size_align(100, 8).unwrap(); // two blocks
        let a = p.allocate(l1).unwrap();
        assert_eq!(p.used_blocks(), 2);
        let big = Layout::from_size_align(128, 128).unwrap();
        let b = p.allocate(big).unwrap();
        assert_eq!(b.as_ptr() as usize % 128, 0);
        assert!(p
            .allocate(Layout::from_size_align(8 * 64, 8).unwrap())
            .is_none());
        // SAFETY: both came from this pool with these layouts.
        unsafe {
            p.deallocate(a, l1);
            p.deallocate(b, big);
        }
        assert_eq!(p.used_blocks(), 0);
        let all = p
            .allocate(Layout::from_size_align(8 * 64, 64).unwrap())
            .unwrap();
        assert_eq!(p.used_blocks(), 8);
        assert!(p.allocate(Layout::new::<u8>()).is_none());
        // SAFETY: as above.
        unsafe { p.deallocate(all, Layout::from_size_align(8 * 64, 64).unwrap()) };
        assert_eq!(p.used_blocks(), 0);
    }
}
