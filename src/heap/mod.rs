//! The allocation facet and the crate's fallible containers: the only place the crate's memory
//! comes from (DESIGN "The host contract").
//!
//! The host supplies an [`Allocator`]: allocate and free by [`Layout`], with an [`AllocCtx`]
//! saying whether the caller may sleep (Linux `GFP_KERNEL`) or must not (`GFP_NOWAIT`, under a
//! spinning lock). Every allocation may fail; the crate then returns
//! [`Error::NoMem`] and leaves its state as it was. A platform names its
//! allocator in its host facet ([`Host::Alloc`](crate::Host::Alloc)); the crate never calls the
//! global allocator itself.
//!
//! ```text
//!   Host::Alloc ──► Allocator::allocate(layout, ctx) ─► Vec<T, A>   growable array, fallible growth only
//!                   Allocator::deallocate(ptr, layout)  Arc<T, A>   refcounted box, fallible constructor
//! ```
//!
//! Allocators shipped with the crate:
//!
//! | allocator | for |
//! | --- | --- |
//! | [`Global`] (feature `alloc`, on by default) | user space, the simulator, a kernel that builds the `alloc` crate: the global allocator, never its OOM handler |
//! | [`Pool`] through [`pool_allocator!`](crate::pool_allocator) | firmware without a heap: a fixed-capacity pool in static memory |
//! | [`NoAlloc`] | a core-only build that names no allocator: every allocation fails with `NoMem` |
//!
//! A Linux host implements [`Allocator`] over `kmalloc`/`kfree` (`krealloc` semantics are not
//! needed), mapping [`AllocCtx::MaySleep`] to `GFP_KERNEL` and [`AllocCtx::NoSleep`] to
//! `GFP_NOWAIT`.
//!
//! Why the crate's own containers and not `allocator-api2` or the `alloc` crate's: a kernel
//! since 6.13 has no `alloc` crate, and 6.1–6.12 build it without any infallible API; the
//! containers must exist in a core-only build, take the context on every growth (as the
//! kernel's `KVec::push(value, flags)` does) and be small enough to audit for panics. Only
//! what the crate needs is here: [`Vec`] and [`Arc`], and a panic-free sort ([`sort`]).

mod arc;
#[cfg(feature = "alloc")]
mod global;
mod pool;
pub mod sort;
mod vec;

pub use arc::Arc;
#[cfg(feature = "alloc")]
pub use global::Global;
pub use pool::{Pool, POOL_BLOCK};
pub use vec::{IntoIter, Vec};

use crate::{Error, Result};
use core::alloc::Layout;
use core::ptr::NonNull;

/// What the caller of an allocation may do while the allocator looks for memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllocCtx {
    /// The caller holds no spinning lock and may sleep: the allocator may reclaim or wait
    /// (Linux `GFP_KERNEL`).
    MaySleep,
    /// The caller must not sleep (a spinning lock is held, or an interrupt handler): the
    /// allocator must return at once, failing rather than waiting (Linux `GFP_NOWAIT`).
    NoSleep,
}

/// A host's allocator: a type-level facet (static functions, usually on a unit struct), in
/// the manner of the kernel's `Allocator` trait.
///
/// The crate never asks for a zero-sized layout.
///
/// # Safety
/// A successful [`allocate`](Self::allocate) returns memory valid for reads and writes of
/// `layout.size()` bytes, aligned to `layout.align()`, not overlapping any other live
/// allocation, and staying valid until it is passed to [`deallocate`](Self::deallocate). The
/// functions may be called from any thread concurrently and must not panic.
pub unsafe trait Allocator: 'static {
    /// Allocate memory for `layout` (never zero-sized).
    ///
    /// Errors: [`Error::NoMem`] when no memory is available (in [`AllocCtx::NoSleep`]: right
    /// now).
    ///
    /// Context: may sleep only with [`AllocCtx::MaySleep`].
    fn allocate(layout: Layout, ctx: AllocCtx) -> Result<NonNull<u8>>;

    /// Free memory returned by [`allocate`](Self::allocate).
    ///
    /// Context: never sleeps (it is called under spinning locks and from the invalidation
    /// path's callers).
    ///
    /// # Safety
    /// `ptr` was returned by `allocate` with this same `layout` and has not been freed yet.
    unsafe fn deallocate(ptr: NonNull<u8>, layout: Layout);
}

/// The allocator of a core-only build that names none: every allocation fails with
/// [`Error::NoMem`]. A host that allocates names its own allocator in its
/// [`Host`](crate::Host) facet.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAlloc;

// SAFETY: `allocate` never succeeds, so there is no memory to be wrong about.
unsafe impl Allocator for NoAlloc {
    fn allocate(_layout: Layout, _ctx: AllocCtx) -> Result<NonNull<u8>> {
        Err(Error::NoMem)
    }
    unsafe fn deallocate(_ptr: NonNull<u8>, _layout: Layout) {}
}

/// The allocator used where none is named: [`Global`] with the feature `alloc`, else
/// [`NoAlloc`].
#[cfg(feature = "alloc")]
pub type DefaultAlloc = Global;
/// The allocator used where none is named: [`Global`] with the feature `alloc`, else
/// [`NoAlloc`].
#[cfg(not(feature = "alloc"))]
pub type DefaultAlloc = NoAlloc;
