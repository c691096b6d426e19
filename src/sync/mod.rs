//! The lock facet and the atomics: the only place the crate's synchronisation comes from.
//!
//! The host supplies the locks. Its [`Host`] facet names a raw mutex and a raw
//! reader-writer lock ([`RawMutex`], [`RawRwLock`]: lock, try-lock, unlock, nothing else) —
//! besides its allocator; the crate wraps them in [`Mutex`] and [`RwLock`], which own the data
//! and hand out guards. A platform picks its host with
//! [`Platform::Host`](crate::platform::Platform::Host); the crate's lock-holding types
//! ([`Range`](crate::Range), [`Pagemap`](crate::pagemap::Pagemap),
//! [`OwnerRegistry`](crate::pagemap::OwnerRegistry), [`Userptr`](crate::Userptr)) take the
//! host as a type parameter that defaults to [`DefaultHost`].
//!
//! Every lock is created with its static [`LockClass`] (module [`class`]): a name the host
//! maps to a lock class of its own (a lockdep key), its rank in the lock order, and whether it
//! may sleep. Facets shipped with the crate:
//!
//! | facet | for | waits by |
//! | --- | --- | --- |
//! | [`SpinHost`] | bare metal, firmware; the default ([`DefaultHost`]) | spinning |
//! | `ParkingHost` (feature `std`) | user space | parking on a condition variable |
//! | `ParkingHost` under `--cfg loom` | the loom models; [`DefaultHost`] there | loom's scheduler |
//! | `sim::SimHost` (feature `sim`) | the simulator and the tests | `ParkingHost`, checking the lock order (a small lockdep) |
//!
//! A Linux host implements the raw traits over `struct mutex`, `struct rw_semaphore` and
//! `spinlock_t` with one `lock_class_key` per [`LockClass`]; classes with
//! [`may_sleep`](LockClass::may_sleep) `false` must be spinlocks.
//!
//! ## Creating a lock is fallible
//!
//! The crate moves its locks by value (into an [`Svm`](crate::Svm), into the shared allocation
//! of a [`Range`](crate::Range), ...), but a kernel lock must not move once initialised (its
//! wait list points to itself; lockdep knows it by address). A C or Linux host therefore
//! allocates its lock object, initialises it in place, and returns a handle to it (a pointer)
//! as its [`RawMutex`]/[`RawRwLock`]; dropping the handle destroys the lock and frees it. So
//! [`RawMutex::new`] and [`RawRwLock::new`] return a `Result` ([`Error::NoMem`](crate::Error::NoMem)
//! when the host cannot create the lock), and so do [`Mutex::new`], [`RwLock::new`] and every
//! constructor of a lock-holding type. Creating a lock counts as a
//! [`MaySleep`](crate::heap::AllocCtx::MaySleep) allocation: the crate creates locks only in
//! constructors, never while it holds a lock the invalidation path takes or a spinning lock
//! (a range is created before `find_or_insert` takes the structure and notifier locks);
//! `sim::SimHost` checks this as it checks allocations. The facets shipped here create their
//! locks in place and never fail.
//!
//! ## The locks, in lock order
//!
//! A lock may be taken only while every lock held has a smaller rank (try-locks excepted).
//! "Inv." says whether the invalidation path takes it; "sleep" whether the host may implement
//! it with a sleeping lock; the last column names the loom models that drive the real code
//! paths taking it (under `--cfg loom` every lock of this table is loom's, so every model
//! explores all of them).
//!
//! | rank | class | kind | protects | taken by | inv. | sleep | loom model (`tests/loom_*.rs`) |
//! | ---: | --- | --- | --- | --- | :---: | :---: | --- |
//! | 10 | [`class::STRUCTURE`] | mutex | range creation / removal | `find_or_insert` (insert), `remove`, `gc_run`, `close` | no | yes | `loom_invalidate` (`commit_vs_remove`, `commit_vs_close`, `first_fault_vs_invalidate`), `loom_attrs` |
//! | 22 | [`class::OWNER`] | rw | the `Svm`'s owner | shared: fault, placement; exclusive: `set_owner` | no | yes | none: one value read and written whole, no protocol around it |
//! | 28 | [`class::NOTIFIERS`] | rw | the notifier array (which notifiers exist, their handles) | shared: every path to one notifier's lock (lookups, faults, commits, `bind`, invalidation); exclusive: adding or dropping a notifier, `close` | yes | yes¹ | `loom_notifiers`, `loom_invalidate` (`first_fault_vs_invalidate`), `loom_insert` |
//! | 30 | [`class::NOTIFIER`] | rw | one notifier's range index, sequence begin, and (under it) its ranges' page state — one lock per notifier | shared: `find`, commit, `bind`; exclusive: `invalidate_begin`, range insert, remove, `unmap_pages`, `free_pages`, `close`, after a detach / `set_pagemap` (sequence move) | yes | yes¹ | `loom_notifiers` (an invalidation and a fault on two notifiers), `loom_seq`, `loom_invalidate`, `loom_gc`, `loom_evict` |
//! | 32 | [`class::USERPTR`] | rw | a userptr's pages | shared: `bind`; exclusive: commit, invalidation | yes | yes¹ | `loom_userptr` |
//! | 34 | [`class::PAGEMAPS`] | rw | local and peer pagemaps | shared: fault, eviction; exclusive: attach / detach | no | yes | `loom_pagemap` (attach / detach / `set_pagemap` vs fault) |
//! | 36 | [`class::GC_QUEUE`] | mutex | the GC queue | invalidation (push), `gc_run` (pop), `close` | yes | no | `loom_gc` |
//! | 40 | [`class::RANGE_PAGES`] | mutex | a range's page state | under the notifier lock: commit, `bind`, unmap, invalidation | yes | no | `loom_seq` (`collectors_of_two_ranges_commit_in_parallel`), `loom_invalidate` |
//! | 45 | [`class::ATTRS`] | rw | attribute intervals | shared: fault, `find_or_insert` (again under the notifier lock before inserting); exclusive: `set_attrs`; shared inside `bind` (`device_atomics`) | no | no | `loom_attrs` |
//! | 60 | [`class::PAGEMAP_RUNS`] | mutex | a pagemap's live allocations | migration (track), `page_free`, CPU-fault migration | no | no | `loom_pagemap` (`page_free_vs_track_and_alloc_of`), `loom_devmem`, `loom_evict` |
//! | 70 | [`class::OWNER_REGISTRY`] | mutex | owner groups | `join`, `leave`, `owner_of` | no | yes | `loom_owner` |
//!
//! ¹ The non-blockable invalidation ([`Svm::invalidate_begin_nonblock`](crate::Svm::invalidate_begin_nonblock),
//! for Linux's `mmu_notifier_range_blockable() == false`) only *try*-locks these and returns
//! [`Error::Again`](crate::Error::Again) when they are taken, so they may sleep; what it takes
//! under them (range pages, GC queue) must spin.
//!
//! No lock is held across a call into the platform's
//! [`AddressSpace`](crate::platform::AddressSpace) or across a copy, so the platform may sleep
//! there. The invalidation path calls [`DevicePageTable::zap`](crate::platform::DevicePageTable::zap)
//! and the DMA unmap under the notifier lock.
//!
//! ## Atomics
//!
//! Module [`atomic`]: `core`'s by default, loom's under `--cfg loom`, `portable-atomic`'s
//! `AtomicU64` on targets without 64-bit atomics; a kernel build replaces that one file.

/// The crate's atomics (they live at the bottom layer, [`crate::atomic`]).
pub use crate::atomic;
pub mod class;
mod host;
mod lock;
#[cfg(any(feature = "std", loom))]
mod parking;
mod seq;
mod spin;

pub use crate::atomic::{spin_hint, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
pub use class::LockClass;
pub use host::{DefaultHost, Host, HostArc, HostVec};
pub use lock::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
#[cfg(any(feature = "std", loom))]
pub use parking::{ParkingHost, ParkingMutex, ParkingRwLock};
pub use seq::SeqCounter;
pub use spin::{SpinHost, SpinMutex, SpinRwLock};

/// A host's raw mutex: excludes, holds no data.
///
/// Context: `lock` may sleep if the host's lock sleeps (allowed only for classes with
/// [`LockClass::may_sleep`]); `try_lock` and `unlock` never sleep. No method may panic.
///
/// # Safety
/// Between a successful `lock`/`try_lock` and the matching `unlock`, no other `lock`/`try_lock`
/// of the same lock succeeds, and the holder's memory accesses happen-before those of the next
/// holder (acquire/release semantics).
pub unsafe trait RawMutex: Send + Sync + Sized {
    /// A new unlocked lock of class `class`.
    ///
    /// Errors: [`Error::NoMem`](crate::Error::NoMem) when the host cannot create the lock (a
    /// host whose locks must not move allocates the lock object and returns a handle to it).
    ///
    /// Context: may sleep if the host allocates the lock (as with
    /// [`AllocCtx::MaySleep`](crate::heap::AllocCtx::MaySleep)); the crate never creates a lock
    /// while it holds a lock the invalidation path takes, nor under a spinning lock.
    fn new(class: &'static LockClass) -> crate::Result<Self>;
    /// Lock, waiting until it is free.
    fn lock(&self);
    /// Lock if it is free right now; whether it was.
    fn try_lock(&self) -> bool;
    /// Unlock.
    ///
    /// # Safety
    /// The caller holds the lock (by a `lock` or a successful `try_lock` not yet undone).
    unsafe fn unlock(&self);
}

/// A host's raw reader-writer lock: excludes, holds no data.
///
/// Context: `read`/`write` may sleep if the host's lock sleeps (allowed only for classes with
/// [`LockClass::may_sleep`]); the others never sleep. No method may panic; a host whose reader
/// count can overflow makes the reader wait (or `try_read` fail) instead.
///
/// # Safety
/// While a writer holds the lock, no `read`/`try_read`/`write`/`try_write` succeeds; while
/// readers hold it, no `write`/`try_write` succeeds; accesses made under the lock happen-before
/// those of the next conflicting holder.
pub unsafe trait RawRwLock: Send + Sync + Sized {
    /// A new unlocked lock of class `class`.
    ///
    /// Errors: [`Error::NoMem`](crate::Error::NoMem) when the host cannot create the lock.
    ///
    /// Context: as [`RawMutex::new`].
    fn new(class: &'static LockClass) -> crate::Result<Self>;
    /// Take the lock shared, waiting while a writer holds it.
    fn read(&self);
    /// Take the lock shared if possible right now; whether it was.
    fn try_read(&self) -> bool;
    /// Release a shared hold.
    ///
    /// # Safety
    /// The caller holds the lock shared.
    unsafe fn unlock_read(&self);
    /// Take the lock exclusively, waiting for every holder to leave.
    fn write(&self);
    /// Take the lock exclusively if it is free right now; whether it was.
    fn try_write(&self) -> bool;
    /// Release the exclusive hold.
    ///
    /// # Safety
    /// The caller holds the lock exclusively.
    unsafe fn unlock_write(&self);
}
