//! The crate's lock classes: one static descriptor per lock the crate takes.

/// A lock class: the static identity of one of the crate's locks. Every lock the crate creates
/// is created with its class ([`RawMutex::new`](super::RawMutex::new),
/// [`RawRwLock::new`](super::RawRwLock::new)); a host maps it onto its own lock class (Linux:
/// one `lock_class_key` per class, named [`name`](Self::name)) so that its lock checker sees
/// the crate's locks by name.
#[derive(Debug)]
pub struct LockClass {
    /// A stable name, `gpusvm.<lock>`.
    pub name: &'static str,
    /// Position in the lock order: a lock of this class may be taken (blocking) only while
    /// every lock held has a smaller rank. Try-locks are exempt, as in lockdep.
    pub rank: u8,
    /// Whether the host may implement this class with a sleeping lock (a mutex, an
    /// `rw_semaphore`). `false`: it must be a spinning lock, because the crate takes it in a
    /// context that must not sleep (the non-blockable invalidation path, or under a spinning
    /// lock).
    pub may_sleep: bool,
    /// Whether [`Svm::invalidate_begin`](crate::Svm::invalidate_begin) /
    /// [`invalidate_end`](crate::Svm::invalidate_end) (or a userptr's) take it.
    pub invalidation: bool,
}

impl PartialEq for LockClass {
    fn eq(&self, other: &Self) -> bool {
        core::ptr::eq(self, other)
    }
}
impl Eq for LockClass {}

/// `Svm`'s structure lock: serialises range creation and removal (Linux: the driver's lock
/// around `drm_gpusvm_range_find_or_insert`/`_remove`). Mutex.
pub static STRUCTURE: LockClass = LockClass {
    name: "gpusvm.structure",
    rank: 10,
    may_sleep: true,
    invalidation: false,
};

/// `Svm`'s owner (interconnect group). Reader-writer lock.
pub static OWNER: LockClass = LockClass {
    name: "gpusvm.owner",
    rank: 22,
    may_sleep: true,
    invalidation: false,
};

/// `Svm`'s notifier array (which notifiers exist, their registration handles): shared by every
/// lookup, fault and invalidation on the way to one notifier's lock; exclusive only to add or
/// drop a notifier and to close. Reader-writer lock. It may sleep: the non-blockable
/// invalidation ([`Svm::invalidate_begin_nonblock`]) only try-locks it.
///
/// [`Svm::invalidate_begin_nonblock`]: crate::Svm::invalidate_begin_nonblock
pub static NOTIFIERS: LockClass = LockClass {
    name: "gpusvm.notifiers",
    rank: 28,
    may_sleep: true,
    invalidation: true,
};

/// One notifier's lock (Linux has one `drm_gpusvm.notifier_lock` per instance; here there is
/// one per notifier, so faults, commits and invalidations on different notifiers run in
/// parallel): its range index and, under it, its ranges' page state. Shared for page commits,
/// `bind` and lookups; exclusive for invalidation and range insertion and removal.
/// Reader-writer lock. It may sleep: the non-blockable invalidation
/// ([`Svm::invalidate_begin_nonblock`]) only try-locks it.
///
/// [`Svm::invalidate_begin_nonblock`]: crate::Svm::invalidate_begin_nonblock
pub static NOTIFIER: LockClass = LockClass {
    name: "gpusvm.notifier",
    rank: 30,
    may_sleep: true,
    invalidation: true,
};

/// A userptr's page-state lock (the userptr's own notifier lock). Reader-writer lock.
pub static USERPTR: LockClass = LockClass {
    name: "gpusvm.userptr",
    rank: 32,
    may_sleep: true,
    invalidation: true,
};

/// `Svm`'s set of pagemaps (its own device memory and the peers' it met), read under the
/// notifier lock while collected device pages are resolved. Reader-writer lock.
pub static PAGEMAPS: LockClass = LockClass {
    name: "gpusvm.pagemaps",
    rank: 34,
    may_sleep: true,
    invalidation: false,
};

/// A range's page-state lock, taken under the notifier lock, also inside invalidation.
/// Mutex; must spin.
pub static RANGE_PAGES: LockClass = LockClass {
    name: "gpusvm.range_pages",
    rank: 40,
    may_sleep: false,
    invalidation: true,
};

/// `Svm`'s policy attribute store (the madvise interval map). Read by
/// [`Svm::device_atomics`](crate::Svm::device_atomics), which drivers call inside the `bind`
/// closure (under the notifier and range-pages locks), so it must spin. Reader-writer lock.
pub static ATTRS: LockClass = LockClass {
    name: "gpusvm.attrs",
    rank: 45,
    may_sleep: false,
    invalidation: false,
};

/// The garbage-collector queue, pushed to by invalidation under the notifier lock (which
/// holds it across the page-state locks of the ranges it unmaps). Mutex; must spin.
pub static GC_QUEUE: LockClass = LockClass {
    name: "gpusvm.gc_queue",
    rank: 36,
    may_sleep: false,
    invalidation: true,
};

/// A pagemap's index of live device-memory allocations, taken by `page_free` (which Linux may
/// call in atomic context) and by migration. Mutex; must spin.
pub static PAGEMAP_RUNS: LockClass = LockClass {
    name: "gpusvm.pagemap_runs",
    rank: 60,
    may_sleep: false,
    invalidation: false,
};

/// The owner registry's groups. Mutex.
pub static OWNER_REGISTRY: LockClass = LockClass {
    name: "gpusvm.owner_registry",
    rank: 70,
    may_sleep: true,
    invalidation: false,
};

/// Every class, in lock order (outermost first).
pub static ALL: [&LockClass; 11] = [
    &STRUCTURE,
    &OWNER,
    &NOTIFIERS,
    &NOTIFIER,
    &USERPTR,
    &PAGEMAPS,
    &GC_QUEUE,
    &RANGE_PAGES,
    &ATTRS,
    &PAGEMAP_RUNS,
    &OWNER_REGISTRY,
];
