//! The SVM entry points: create/destroy, invalidation, the fault service, ranges, pages, GC,
//! statistics.
//!
//! This file holds the handles, the `#[repr(C)]` types and constants of the header, and the
//! handle checks; the functions are in the submodules (`src/svm/`), re-exported here:
//!
//! | module | holds |
//! | --- | --- |
//! | `lifecycle` | `gpusvm_create`, `gpusvm_close`, `gpusvm_destroy` |
//! | `invalidate` | `gpusvm_invalidate_begin[_nonblock]`, `gpusvm_invalidate_end` |
//! | `fault` | `gpusvm_handle_fault[_and_bind]`, `gpusvm_find_or_insert`, `gpusvm_find` |
//! | `pages` | `gpusvm_get_pages`, `gpusvm_pages_valid`, `gpusvm_bind`, `gpusvm_unmap_pages`, `gpusvm_free_pages`, `gpusvm_remove` |
//! | `gc_stats` | `gpusvm_gc_run`, `gpusvm_stats` |
//! | `range` | `gpusvm_range_bounds`, `gpusvm_range_get`, `gpusvm_range_put` |
//! | `convert` | C arguments to the crate's types, the batched walk of page entries for a bind callback |

use crate::host::{FfiAlloc, FfiHost};
use crate::platform::{dir_to_c, gpusvm_platform_ops, FfiPlatform};
use crate::{errno, ret};
use ::gpusvm::heap::{AllocCtx, Arc as HeapArc};
use ::gpusvm::pages::{PageEntry, PagesCtx};
use ::gpusvm::platform::{NotifierId, OwnerId, PAGE_SIZE};
use ::gpusvm::range::Range;
use ::gpusvm::{Access, Error, Event, Result, Svm, SvmConfig, Window};
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicU64, Ordering};

/// An SVM: one device mirroring one CPU address space. Opaque; made by [`gpusvm_create`],
/// freed by [`gpusvm_destroy`].
pub struct gpusvm {
    magic: AtomicU64,
    pub(crate) svm: Svm<FfiPlatform>,
}

/// A range of an SVM: a counted reference, given out by the fault and lookup functions and
/// released with [`gpusvm_range_put`]. Opaque.
pub struct gpusvm_range {
    _opaque: [u8; 0],
}

const MAGIC: u64 = 0x6770_7573_766d_4646;

pub(crate) type SvmArc = HeapArc<gpusvm, FfiAlloc>;
type RangeArc = HeapArc<Range<FfiHost>, FfiAlloc>;

/// The configuration of an SVM. Zero in a field marked "0: default" picks the library's
/// default.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gpusvm_config {
    /// Start of the mirrored CPU interval (page aligned).
    pub mm_start: u64,
    /// Its length (page aligned, non-zero).
    pub mm_range: u64,
    /// Size of one notifier, a power of two (0: default, 512 MiB).
    pub notifier_size: u64,
    /// Chunk sizes for new ranges, strictly descending powers of two ending with 4096, at most
    /// 8 (NULL with `n_chunk_sizes` 0: default, 2 MiB, 64 KiB, 4 KiB).
    pub chunk_sizes: *const u64,
    /// Number of entries of `chunk_sizes`.
    pub n_chunk_sizes: usize,
    /// Candidate chunks up to this size need every CPU page present (0: default, 64 KiB).
    pub check_pages_threshold: u64,
    /// Give up a page collection raced by invalidations after this long (0: default, 1 s).
    pub retry_deadline_ns: u64,
    /// ... or after this many attempts (0: default, 1000).
    pub retry_max_attempts: u32,
    /// Place faulting ranges in device memory when the SVM has a pagemap.
    pub prefer_devmem: bool,
    /// Whether `owner` is set (the device's interconnect group).
    pub has_owner: bool,
    /// The owner, if `has_owner`.
    pub owner: u32,
    /// Minimum residency in device memory after a migration caused by an atomic fault, before
    /// a CPU fault may pull the pages back (0: default, 5 ms).
    pub atomic_timeslice_ns: u64,
    /// In device-to-device migrations the source's copy engine copies (else the target's).
    pub source_peer_migrates: bool,
    /// Pages already in the target pagemap may be migrated again instead of making a
    /// partly-resident range fail with `-EBUSY`.
    pub can_migrate_same_pagemap: bool,
}

/// What a page collection wants.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_pages_ctx {
    /// Collect read-only.
    pub read_only: bool,
    /// Fail with `-EFAULT` unless every page is in device memory.
    pub devmem_only: bool,
    /// Accept system and device pages mixed in one range.
    pub allow_mixed: bool,
    /// Whether `owner` is set: device-private pages of that owner are used in place.
    pub has_owner: bool,
    /// The owner, if `has_owner`.
    pub owner: u32,
}

/// One page entry of a range, as the device maps it: `size` bytes at device virtual address
/// `va`, backed by `addr` (a bus address for system memory, a device address otherwise).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_page_entry {
    /// Virtual address of the first byte.
    pub va: u64,
    /// Bus or device address of the first byte.
    pub addr: u64,
    /// Size in bytes (`4096 << order`).
    pub size: u64,
    /// Page order.
    pub order: u8,
    /// `GPUSVM_DMA_*` direction of the mapping.
    pub dir: u8,
    /// How the device reaches the memory: 0 system (DMA), 1 its own memory, 2..=7 peer.
    pub protocol: u8,
    /// Whether the device may write.
    pub writable: bool,
}

/// Receives the page entries of a range under the notifier lock (held shared) and the range's
/// page-state lock: it must not sleep or call into the library (except
/// `gpusvm_device_atomics`-style queries documented as allowed). Called one or more times with
/// consecutive batches: `entries[0..n]` are entries `first..first + n` of the range, in address
/// order. Returning non-zero stops the walk; a negative value is returned by the caller.
pub type gpusvm_bind_fn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        range: *const gpusvm_range,
        entries: *const gpusvm_page_entry,
        n: usize,
        first: usize,
    ) -> c_int,
>;

/// Entries handed to a bind callback per call (a stack buffer: nothing is allocated under the
/// lock).
const BIND_BATCH: usize = 64;

/// `access` of [`gpusvm_handle_fault`]: a read.
pub const GPUSVM_ACCESS_READ: u32 = 0;
/// `access`: a write.
pub const GPUSVM_ACCESS_WRITE: u32 = 1;
/// `access`: an atomic read-modify-write.
pub const GPUSVM_ACCESS_ATOMIC: u32 = 2;

/// `event` of [`gpusvm_invalidate_begin`]: the interval is unmapped (ranges go to the GC).
pub const GPUSVM_EVENT_UNMAP: u32 = 0;
/// `event`: pages are cleared (MADV_DONTNEED, reclaim, copy-on-write).
pub const GPUSVM_EVENT_CLEAR: u32 = 1;
/// `event`: protection changes.
pub const GPUSVM_EVENT_PROTECTION: u32 = 2;
/// `event`: pages migrate (by the owner given, if any).
pub const GPUSVM_EVENT_MIGRATE: u32 = 3;
/// `event`: the address space is torn down.
pub const GPUSVM_EVENT_RELEASE: u32 = 4;

/// The counters of an SVM (a snapshot).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_stats {
    /// Device faults serviced.
    pub faults: u64,
    /// Read faults.
    pub faults_read: u64,
    /// Write faults.
    pub faults_write: u64,
    /// Atomic faults.
    pub faults_atomic: u64,
    /// Page collections retried after an invalidation race.
    pub retries: u64,
    /// Ranges created.
    pub ranges_created: u64,
    /// Ranges removed.
    pub ranges_removed: u64,
    /// Invalidations that reached a notifier.
    pub invalidations: u64,
    /// GC runs that found work.
    pub gc_runs: u64,
    /// Ranges processed by the GC.
    pub gc_ranges: u64,
    /// Page collections committed.
    pub pages_committed: u64,
    /// Migrations into device memory.
    pub migrations_to_devmem: u64,
    /// Bytes copied into device memory.
    pub bytes_to_devmem: u64,
    /// Migrations to system memory.
    pub migrations_to_ram: u64,
    /// Bytes copied to system memory.
    pub bytes_to_ram: u64,
    /// Copy commands issued.
    pub copy_runs: u64,
    /// Ranges evicted.
    pub evictions: u64,
    /// Failed migrations to device memory.
    pub migrate_failures: u64,
    /// Device-memory-only retries.
    pub devmem_retries: u64,
    /// Prefetches served.
    pub prefetches: u64,
    /// Attribute changes.
    pub attr_changes: u64,
}

/// A shared reference to the SVM behind `p`.
///
/// # Safety
/// `p` is NULL or a pointer from [`gpusvm_create`] not yet passed to [`gpusvm_destroy`].
pub(crate) unsafe fn svm_ref<'a>(p: *const gpusvm) -> Result<&'a gpusvm> {
    if p.is_null() || !p.is_aligned() {
        return Err(Error::Invalid);
    }
    // SAFETY: non-null, aligned, and live by the caller's contract.
    let s = unsafe { &*p };
    if s.magic.load(Ordering::Relaxed) != MAGIC {
        return Err(Error::Invalid);
    }
    Ok(s)
}

/// The range behind `p`.
///
/// # Safety
/// `p` is NULL or a range reference not yet released with [`gpusvm_range_put`].
unsafe fn range_ref<'a>(p: *const gpusvm_range) -> Result<&'a Range<FfiHost>> {
    let r = p.cast::<Range<FfiHost>>();
    if r.is_null() || !r.is_aligned() {
        return Err(Error::Invalid);
    }
    // SAFETY: non-null, aligned, and a live counted reference by the caller's contract.
    Ok(unsafe { &*r })
}

/// Call `f` with the SVM behind `svm` and the range behind `range`; its result as a return
/// value (`-EINVAL` for a bad handle, `f` not called).
///
/// # Safety
/// `svm` NULL or live; `range` NULL or a live reference.
unsafe fn on_range(
    svm: *const gpusvm,
    range: *const gpusvm_range,
    f: impl FnOnce(&Svm<FfiPlatform>, &Range<FfiHost>) -> Result<()>,
) -> c_int {
    // SAFETY: forwarded from the caller.
    let handles = unsafe { svm_ref(svm).and_then(|s| Ok((s, range_ref(range)?))) };
    ret(handles.and_then(|(s, rg)| f(&s.svm, rg)))
}

fn range_handle(r: RangeArc) -> *mut gpusvm_range {
    RangeArc::into_raw(r).cast_mut().cast()
}

/// Write `v` through the out-pointer `out` if it is valid.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(out: *mut T, v: T) -> Result<()> {
    if out.is_null() || !out.is_aligned() {
        return Err(Error::Invalid);
    }
    // SAFETY: non-null and aligned (checked), writable by the caller's contract.
    unsafe { out.write(v) };
    Ok(())
}

/// Check an out-pointer before doing any work.
pub(crate) fn check_out<T>(out: *mut T) -> Result<()> {
    if out.is_null() || !out.is_aligned() {
        return Err(Error::Invalid);
    }
    Ok(())
}

// The entry points by family. cbindgen writes the functions into include/gpusvm.h in the order
// it meets them, module by module in declaration order: keep these in the header's order (one
// per group, so that rustfmt does not sort them).
mod lifecycle;

mod invalidate;

mod fault;

mod pages;

mod gc_stats;

mod range;

mod convert;

use convert::{access, config_from_c, event, walk_entries, window};
pub(crate) use convert::{pages_ctx, walk_entries_at};
pub use fault::*;
pub use gc_stats::*;
pub use invalidate::*;
pub use lifecycle::*;
pub use pages::*;
pub use range::*;

const _: () = assert!(PAGE_SIZE == 4096);
