//! The host facet: everything a host supplies besides the hardware (DESIGN "The host
//! contract") — its locks and its allocator, as one type-level bundle.
//!
//! ```text
//!   Platform::Host ──► Host::Mutex, Host::RwLock   (sync: RawMutex, RawRwLock, one LockClass each)
//!                      Host::Alloc                 (heap: Allocator → Vec, Arc)
//! ```
//!
//! The crate's lock- and memory-holding types ([`Range`](crate::Range),
//! [`Pagemap`](crate::pagemap::Pagemap), [`OwnerRegistry`](crate::pagemap::OwnerRegistry),
//! [`Userptr`](crate::Userptr), [`Svm`](crate::Svm)) take the host as a type parameter;
//! where it has a default, it is [`DefaultHost`].
//!
//! | host | locks | allocator |
//! | --- | --- | --- |
//! | [`SpinHost<A>`](crate::sync::SpinHost) | spinning | `A`, default [`DefaultAlloc`](crate::heap::DefaultAlloc) |
//! | `ParkingHost<A>` (feature `std`, or loom) | parking | `A`, default `DefaultAlloc` |
//! | `sim::SimHost` (feature `sim`) | parking, checking the lock order | counting, with failure injection |
//!
//! A Linux driver writes its own: `struct mutex`/`rw_semaphore`/`spinlock_t` with one
//! `lock_class_key` per [`LockClass`](crate::sync::LockClass), and `kmalloc`/`kfree`. A kernel
//! lock must not move, so its raw lock is a handle to a lock allocated and initialised in place
//! (creation fails with [`Error::NoMem`](crate::Error::NoMem); see
//! [`sync`](crate::sync#creating-a-lock-is-fallible)). The C ABI (`gpusvm-ffi`) is such a host.

use crate::heap::Allocator;
use crate::sync::{RawMutex, RawRwLock};

/// A host facet: which raw locks and which allocator the crate uses. A type-level bundle,
/// usually a unit struct.
pub trait Host: 'static {
    /// The raw mutex.
    type Mutex: RawMutex;
    /// The raw reader-writer lock.
    type RwLock: RawRwLock;
    /// The allocator: every allocation of the crate goes through it.
    type Alloc: Allocator;
}

/// The host used where none is named: [`SpinHost`](crate::sync::SpinHost) on
/// [`DefaultAlloc`](crate::heap::DefaultAlloc), or loom's locks under `--cfg loom`.
#[cfg(not(loom))]
pub type DefaultHost = crate::sync::SpinHost;
/// The host used where none is named: [`SpinHost`](crate::sync::SpinHost) on
/// [`DefaultAlloc`](crate::heap::DefaultAlloc), or loom's locks under `--cfg loom`.
#[cfg(loom)]
pub type DefaultHost = crate::sync::ParkingHost;

/// A [`heap::Arc`](crate::heap::Arc) on the allocator of host `H`.
pub type HostArc<H, T> = crate::heap::Arc<T, <H as Host>::Alloc>;
/// A [`heap::Vec`](crate::heap::Vec) on the allocator of host `H`.
pub type HostVec<H, T> = crate::heap::Vec<T, <H as Host>::Alloc>;
