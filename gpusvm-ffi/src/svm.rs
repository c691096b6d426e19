//! The SVM entry points: create/destroy, invalidation, the fault service, ranges, pages, GC,
//! statistics.

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

fn owner(has: bool, o: u32) -> Option<OwnerId> {
    has.then_some(OwnerId(o))
}

fn config_from_c(c: &gpusvm_config) -> Result<SvmConfig> {
    let mut cfg = SvmConfig::new(c.mm_start, c.mm_range);
    if !c.chunk_sizes.is_null() || c.n_chunk_sizes != 0 {
        if c.chunk_sizes.is_null() || !c.chunk_sizes.is_aligned() {
            return Err(Error::Invalid);
        }
        if c.n_chunk_sizes > ::gpusvm::MAX_CHUNK_SIZES {
            return Err(Error::Invalid);
        }
        // SAFETY: non-null, aligned, at most MAX_CHUNK_SIZES entries readable by the caller's
        // contract.
        let sizes = unsafe { core::slice::from_raw_parts(c.chunk_sizes, c.n_chunk_sizes) };
        cfg = cfg.with_chunk_sizes(sizes)?;
    }
    if c.notifier_size != 0 {
        cfg.notifier_size = c.notifier_size;
    }
    if c.check_pages_threshold != 0 {
        cfg.check_pages_threshold = c.check_pages_threshold;
    }
    if c.retry_deadline_ns != 0 {
        cfg.retry.deadline_ns = c.retry_deadline_ns;
    }
    if c.retry_max_attempts != 0 {
        cfg.retry.max_attempts = c.retry_max_attempts;
    }
    if c.atomic_timeslice_ns != 0 {
        cfg.atomic_timeslice_ns = c.atomic_timeslice_ns;
    }
    cfg.prefer_devmem = c.prefer_devmem;
    cfg.source_peer_migrates = c.source_peer_migrates;
    cfg.can_migrate_same_pagemap = c.can_migrate_same_pagemap;
    cfg.owner = owner(c.has_owner, c.owner);
    cfg.validate()?;
    Ok(cfg)
}

pub(crate) fn pages_ctx(p: *const gpusvm_pages_ctx) -> Result<PagesCtx> {
    if p.is_null() {
        return Ok(PagesCtx::default());
    }
    if !p.is_aligned() {
        return Err(Error::Invalid);
    }
    // SAFETY: non-null and aligned; readable by the caller's contract (documented on every
    // function taking it).
    let c = unsafe { &*p };
    Ok(PagesCtx {
        read_only: c.read_only,
        devmem_only: c.devmem_only,
        allow_mixed: c.allow_mixed,
        owner: owner(c.has_owner, c.owner),
    })
}

fn access(a: u32) -> Result<Access> {
    Ok(match a {
        GPUSVM_ACCESS_READ => Access::Read,
        GPUSVM_ACCESS_WRITE => Access::Write,
        GPUSVM_ACCESS_ATOMIC => Access::Atomic,
        _ => return Err(Error::Invalid),
    })
}

fn window(start: u64, end: u64) -> Result<Window> {
    if start >= end {
        return Err(Error::Invalid);
    }
    Ok(Window { start, end })
}

fn event(e: u32, has_owner: bool, o: u32) -> Result<Event> {
    Ok(match e {
        GPUSVM_EVENT_UNMAP => Event::Unmap,
        GPUSVM_EVENT_CLEAR => Event::Clear,
        GPUSVM_EVENT_PROTECTION => Event::Protection,
        GPUSVM_EVENT_MIGRATE => Event::Migrate {
            owner: owner(has_owner, o),
        },
        GPUSVM_EVENT_RELEASE => Event::Release,
        _ => return Err(Error::Invalid),
    })
}

fn entry_to_c(va: u64, e: PageEntry) -> gpusvm_page_entry {
    gpusvm_page_entry {
        va,
        addr: e.addr(),
        size: e.size(),
        order: e.order(),
        dir: u8::try_from(dir_to_c(e.dir())).unwrap_or(u8::MAX),
        protocol: e.protocol().0,
        writable: e.writable(),
    }
}

/// Hand `entries` of `range` to the C callback in batches; the first non-zero return stops.
fn walk_entries(
    f: BindFn,
    ctx: *mut c_void,
    range: &Range<FfiHost>,
    entries: &[PageEntry],
) -> c_int {
    walk_entries_at(
        f,
        ctx,
        core::ptr::from_ref(range).cast(),
        range.start(),
        entries,
    )
}

/// The function type behind [`gpusvm_bind_fn`].
pub(crate) type BindFn = unsafe extern "C" fn(
    *mut c_void,
    *const gpusvm_range,
    *const gpusvm_page_entry,
    usize,
    usize,
) -> c_int;

/// Hand `entries`, the first at virtual address `start`, to the C callback in batches, with
/// `handle` as its range argument; the first non-zero return stops.
pub(crate) fn walk_entries_at(
    f: BindFn,
    ctx: *mut c_void,
    handle: *const gpusvm_range,
    start: u64,
    entries: &[PageEntry],
) -> c_int {
    let mut buf = [gpusvm_page_entry::default(); BIND_BATCH];
    let mut va = start;
    let mut first = 0usize;
    for chunk in entries.chunks(BIND_BATCH) {
        let n = chunk.len();
        for (b, e) in buf.iter_mut().zip(chunk) {
            *b = entry_to_c(va, *e);
            va = va.wrapping_add(e.size());
        }
        // SAFETY: `buf` holds `n` initialised entries; the callback honours `gpusvm_bind_fn`.
        let rc = unsafe { f(ctx, handle, buf.as_ptr(), n, first) };
        if rc != 0 {
            return rc;
        }
        first = first.saturating_add(n);
    }
    0
}

/// Create an SVM over the platform `ops` (copied; `ops->ctx` must outlive the SVM) with the
/// configuration `config`; the handle goes to `*out`.
///
/// Returns 0; `-EINVAL` for a NULL or misaligned pointer, a missing required function or a bad
/// configuration; `-ENOMEM` if the host allocator or lock creation fails (or the host is not
/// initialised). On error `*out` is untouched and nothing is left allocated.
///
/// Context: may sleep (allocates the SVM and its locks); takes no lock.
///
/// # Safety
/// Each pointer is NULL or valid for its use (`ops`, `config` and `config->chunk_sizes`
/// readable, `out` writable).
#[no_mangle]
pub unsafe extern "C" fn gpusvm_create(
    ops: *const gpusvm_platform_ops,
    config: *const gpusvm_config,
    out: *mut *mut gpusvm,
) -> c_int {
    let r = (|| -> Result<()> {
        check_out(out)?;
        if ops.is_null() || !ops.is_aligned() || config.is_null() || !config.is_aligned() {
            return Err(Error::Invalid);
        }
        // SAFETY: checked non-null and aligned; readable by the caller's contract.
        let (ops, config) = unsafe { (&*ops, &*config) };
        let platform = FfiPlatform::new(ops).ok_or(Error::Invalid)?;
        let cfg = config_from_c(config)?;
        let svm = Svm::new(platform, cfg)?;
        let a = SvmArc::try_new(
            gpusvm {
                magic: AtomicU64::new(MAGIC),
                svm,
            },
            AllocCtx::MaySleep,
        )?;
        let p = SvmArc::into_raw(a).cast_mut();
        // SAFETY: `out` was checked above and is writable by the caller's contract.
        unsafe { put(out, p) }
    })();
    ret(r)
}

/// Close an SVM: unmap and free every range's pages, unregister its notifiers; later calls
/// (other than destroy) fail with `-ENODEV`. Idempotent.
///
/// Returns 0 or `-EINVAL` (bad handle).
///
/// Context: may sleep; takes the structure and notifier locks.
///
/// # Safety
/// `svm` is NULL or a live handle from [`gpusvm_create`].
#[no_mangle]
pub unsafe extern "C" fn gpusvm_close(svm: *mut gpusvm) -> c_int {
    // SAFETY: forwarded from the caller.
    ret(unsafe { svm_ref(svm) }.map(|s| s.svm.close()))
}

/// Destroy an SVM: close it and free it. Range references still held stay valid as memory
/// (release them with [`gpusvm_range_put`]) but no call accepts them any more.
///
/// Returns 0 or `-EINVAL` (bad handle; nothing happens).
///
/// Context: may sleep; takes the SVM's locks, then destroys them.
///
/// # Safety
/// `svm` is NULL or a live handle from [`gpusvm_create`]; no other call on it runs or follows.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_destroy(svm: *mut gpusvm) -> c_int {
    // SAFETY: forwarded from the caller.
    let r = unsafe { svm_ref(svm) }.map(|s| s.magic.store(0, Ordering::Relaxed));
    // The SVM is freed only here, after the reference from `svm_ref` is gone: freeing it
    // inside the closure above, while its argument `&gpusvm` (a protected reference) points
    // into the allocation, is undefined behaviour (found by miri, tests/abi.rs).
    if r.is_ok() {
        // SAFETY: the handle came from `SvmArc::into_raw` in `gpusvm_create` and is turned
        // back once (the caller's contract); no reference to it is live.
        drop(unsafe { SvmArc::from_raw(svm.cast_const()) });
    }
    ret(r)
}

/// Forward the platform's notifier callback: the CPU page tables of `[start, end)` of notifier
/// `id` are about to change for `event` (`GPUSVM_EVENT_*`; `has_owner`/`owner` for a migrate
/// event). Zaps device mappings and unmaps DMA of the overlapped ranges; an unmap queues them
/// for the GC.
///
/// Returns 0, or `-EINVAL` (bad handle or event; nothing happens).
///
/// Context: may sleep if the host's notifier lock sleeps (takes it exclusively); allocates
/// nothing; calls `zap` and `dma.unmap_page` under it.
///
/// # Safety
/// `svm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_invalidate_begin(
    svm: *mut gpusvm,
    id: u64,
    start: u64,
    end: u64,
    event_kind: u32,
    has_owner: bool,
    owner_id: u32,
) -> c_int {
    // SAFETY: forwarded from the caller.
    let r = unsafe { svm_ref(svm) }.and_then(|s| {
        let e = event(event_kind, has_owner, owner_id)?;
        s.svm.invalidate_begin(NotifierId(id), start, end, e);
        Ok(())
    });
    ret(r)
}

/// [`gpusvm_invalidate_begin`] for a caller that must not sleep (Linux: a non-blockable
/// notifier call): only try-locks the notifier lock.
///
/// Returns 0; `-EAGAIN` if the notifier lock is held right now (nothing changed: report "try
/// again" to the caller); `-EINVAL` (bad handle or event).
///
/// Context: never sleeps; allocates nothing.
///
/// # Safety
/// `svm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_invalidate_begin_nonblock(
    svm: *mut gpusvm,
    id: u64,
    start: u64,
    end: u64,
    event_kind: u32,
    has_owner: bool,
    owner_id: u32,
) -> c_int {
    // SAFETY: forwarded from the caller.
    let r = unsafe { svm_ref(svm) }.and_then(|s| {
        let e = event(event_kind, has_owner, owner_id)?;
        s.svm
            .invalidate_begin_nonblock(NotifierId(id), start, end, e)
    });
    ret(r)
}

/// End of an invalidation begun with [`gpusvm_invalidate_begin`] (or a successful nonblock
/// one).
///
/// Returns 0 or `-EINVAL` (bad handle).
///
/// Context: takes the notifier lock shared; allocates nothing.
///
/// # Safety
/// `svm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_invalidate_end(
    svm: *mut gpusvm,
    id: u64,
    start: u64,
    end: u64,
) -> c_int {
    // SAFETY: forwarded from the caller.
    ret(unsafe { svm_ref(svm) }.map(|s| s.svm.invalidate_end(NotifierId(id), start, end)))
}

/// Service a device fault at `addr` (`GPUSVM_ACCESS_*`) inside the device-VA window
/// `[window_start, window_end)` (use 0 and `UINT64_MAX` for any): run the GC, find or create the
/// range, place it, make its pages valid. A reference to the range goes to `*range_out`
/// (release it with [`gpusvm_range_put`]); then bind it with [`gpusvm_bind`].
///
/// Returns 0 or a negative errno: `-EINVAL` (bad handle, pointer, access, address or window),
/// `-ENODEV` (closed), `-EFAULT` (no VMA), `-EPERM` (write to read-only memory), `-EBUSY` (retry
/// budget), `-ENOMEM`, or the platform's errors. On error no mapping is left behind and
/// `*range_out` is untouched.
///
/// Context: may sleep (platform calls, copies, allocation); no library lock held on return.
///
/// # Safety
/// `svm` is NULL or a live handle; `range_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_handle_fault(
    svm: *mut gpusvm,
    addr: u64,
    access_kind: u32,
    window_start: u64,
    window_end: u64,
    range_out: *mut *mut gpusvm_range,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        check_out(range_out)?;
        let a = access(access_kind)?;
        let w = window(window_start, window_end)?;
        let range = s.svm.handle_fault(addr, a, w)?;
        // SAFETY: checked above, writable by the caller's contract.
        unsafe { put(range_out, range_handle(range)) }
    })();
    ret(r)
}

/// [`gpusvm_handle_fault`] followed by [`gpusvm_bind`], retried while an invalidation slips in
/// between: `bind` receives the page entries. `range_out` may be NULL (no reference is kept).
///
/// Returns 0, the first negative value `bind` returned, or the errors of
/// [`gpusvm_handle_fault`] and [`gpusvm_bind`].
///
/// Context: as [`gpusvm_handle_fault`]; `bind` runs under the notifier lock (shared) and the
/// range's page-state lock: it must not sleep.
///
/// # Safety
/// `svm` is NULL or a live handle; `bind` honours [`gpusvm_bind_fn`]; `range_out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_handle_fault_and_bind(
    svm: *mut gpusvm,
    addr: u64,
    access_kind: u32,
    window_start: u64,
    window_end: u64,
    bind: gpusvm_bind_fn,
    bind_ctx: *mut c_void,
    range_out: *mut *mut gpusvm_range,
) -> c_int {
    let r = (|| -> Result<c_int> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        let f = bind.ok_or(Error::Invalid)?;
        if !range_out.is_null() && !range_out.is_aligned() {
            return Err(Error::Invalid);
        }
        let a = access(access_kind)?;
        let w = window(window_start, window_end)?;
        let (range, rc) = s
            .svm
            .handle_fault_and_bind(addr, a, w, |r, e| walk_entries(f, bind_ctx, r, e))?;
        if !range_out.is_null() {
            // SAFETY: non-null and aligned (checked), writable by the caller's contract.
            unsafe { range_out.write(range_handle(range)) };
        }
        Ok(rc.min(0))
    })();
    match r {
        Ok(rc) => rc,
        Err(e) => errno(e),
    }
}

/// The range containing `addr`, or create one (without collecting pages), within the window
/// `[window_start, window_end)`; `ctx` may be NULL (defaults). The reference goes to `*out`.
///
/// Returns 0; `-EINVAL`, `-ENODEV`, `-EFAULT` (no VMA), `-EBUSY`, `-ENOMEM` or the platform's
/// errors (nothing created).
///
/// Context: may sleep; takes the structure lock, then the notifier lock.
///
/// # Safety
/// `svm` is NULL or a live handle; `ctx` NULL or readable; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_find_or_insert(
    svm: *mut gpusvm,
    addr: u64,
    window_start: u64,
    window_end: u64,
    ctx: *const gpusvm_pages_ctx,
    out: *mut *mut gpusvm_range,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        check_out(out)?;
        let w = window(window_start, window_end)?;
        let c = pages_ctx(ctx)?;
        let range = s.svm.find_or_insert(addr, w, &c)?;
        // SAFETY: checked above, writable by the caller's contract.
        unsafe { put(out, range_handle(range)) }
    })();
    ret(r)
}

/// The range containing `addr` in `*out`, or NULL in `*out` if there is none.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: takes the notifier lock shared; allocates nothing.
///
/// # Safety
/// `svm` is NULL or a live handle; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_find(
    svm: *mut gpusvm,
    addr: u64,
    out: *mut *mut gpusvm_range,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        check_out(out)?;
        let p = s.svm.find(addr).map_or(core::ptr::null_mut(), range_handle);
        // SAFETY: checked above, writable by the caller's contract.
        unsafe { put(out, p) }
    })();
    ret(r)
}

/// Collect and DMA-map the pages of `range` (`ctx` may be NULL).
///
/// Returns 0; `-EINVAL` (bad handle, range of another SVM), `-ENODEV`, `-EAGAIN` (the range
/// was removed or unmapped: fault again), `-EBUSY`, `-EOPNOTSUPP` (mixed pages), `-EFAULT`,
/// `-EPERM`, `-ENOMEM`, or the platform's errors; then nothing new stays mapped.
///
/// Context: may sleep (collects with no library lock held); takes the notifier lock shared.
///
/// # Safety
/// `svm` NULL or live; `range` NULL or a live range reference; `ctx` NULL or readable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_get_pages(
    svm: *mut gpusvm,
    range: *const gpusvm_range,
    ctx: *const gpusvm_pages_ctx,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let (s, rg) = unsafe { (svm_ref(svm)?, range_ref(range)?) };
        let c = pages_ctx(ctx)?;
        s.svm.get_pages(rg, &c)
    })();
    ret(r)
}

/// Whether the pages of `range` are valid for the device right now, in `*out`.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: takes the notifier lock shared and the range's page-state lock.
///
/// # Safety
/// `svm` NULL or live; `range` NULL or a live reference; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_pages_valid(
    svm: *mut gpusvm,
    range: *const gpusvm_range,
    out: *mut bool,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let (s, rg) = unsafe { (svm_ref(svm)?, range_ref(range)?) };
        check_out(out)?;
        // SAFETY: checked above.
        unsafe { put(out, s.svm.pages_valid(rg)) }
    })();
    ret(r)
}

/// Hand the committed page entries of `range` to `bind` while the notifier lock is held
/// shared, so no invalidation completes meanwhile: write the device page tables here.
///
/// Returns 0, the first negative value `bind` returned, `-EAGAIN` (the pages are no longer
/// valid: fault again), `-ENODEV`, or `-EINVAL`.
///
/// Context: `bind` runs under the notifier lock (shared) and the range's page-state lock: it
/// must not sleep; allocates nothing.
///
/// # Safety
/// `svm` NULL or live; `range` NULL or a live reference; `bind` honours [`gpusvm_bind_fn`].
#[no_mangle]
pub unsafe extern "C" fn gpusvm_bind(
    svm: *mut gpusvm,
    range: *const gpusvm_range,
    bind: gpusvm_bind_fn,
    bind_ctx: *mut c_void,
) -> c_int {
    let r = (|| -> Result<c_int> {
        // SAFETY: forwarded from the caller.
        let (s, rg) = unsafe { (svm_ref(svm)?, range_ref(range)?) };
        let f = bind.ok_or(Error::Invalid)?;
        s.svm.bind(rg, |r, e| walk_entries(f, bind_ctx, r, e))
    })();
    match r {
        Ok(rc) => rc.min(0),
        Err(e) => errno(e),
    }
}

/// DMA-unmap the pages of `range` (the caller zapped its device mappings first). Idempotent.
///
/// Returns 0, `-ENODEV` or `-EINVAL` (also for a removed range: its pages are already freed).
///
/// Context: takes the notifier lock exclusively; allocates nothing.
///
/// # Safety
/// `svm` NULL or live; `range` NULL or a live reference.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_unmap_pages(svm: *mut gpusvm, range: *const gpusvm_range) -> c_int {
    // SAFETY: forwarded from the caller.
    unsafe { on_range(svm, range, |s, rg| s.unmap_pages(rg)) }
}

/// Unmap and free the page state of `range`.
///
/// Returns 0, `-ENODEV` or `-EINVAL`.
///
/// Context: takes the notifier lock exclusively; frees memory, allocates none.
///
/// # Safety
/// `svm` NULL or live; `range` NULL or a live reference.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_free_pages(svm: *mut gpusvm, range: *const gpusvm_range) -> c_int {
    // SAFETY: forwarded from the caller.
    unsafe { on_range(svm, range, |s, rg| s.free_pages(rg)) }
}

/// Remove `range` from the SVM (unmap and free its pages, unlink it; the last range of a
/// notifier unregisters it). The caller's reference stays valid until put.
///
/// Returns 0, `-ENODEV` or `-EINVAL` (not in this SVM).
///
/// Context: may sleep; takes the structure lock, then the notifier lock.
///
/// # Safety
/// `svm` NULL or live; `range` NULL or a live reference.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_remove(svm: *mut gpusvm, range: *const gpusvm_range) -> c_int {
    // SAFETY: forwarded from the caller.
    unsafe { on_range(svm, range, |s, rg| s.remove(rg)) }
}

/// Run the garbage collector: remove the ranges unmapped since the last run. The number
/// removed goes to `*removed` unless it is NULL.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: may sleep; takes the structure lock, the notifier lock and the GC-queue lock.
///
/// # Safety
/// `svm` NULL or live; `removed` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_gc_run(svm: *mut gpusvm, removed: *mut usize) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        if !removed.is_null() && !removed.is_aligned() {
            return Err(Error::Invalid);
        }
        let n = s.svm.gc_run();
        if !removed.is_null() {
            // SAFETY: non-null and aligned (checked), writable by the caller's contract.
            unsafe { removed.write(n) };
        }
        Ok(())
    })();
    ret(r)
}

/// A snapshot of the SVM's counters in `*out`.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: any; relaxed atomic loads, no lock, no allocation.
///
/// # Safety
/// `svm` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_stats(svm: *mut gpusvm, out: *mut gpusvm_stats) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        let x = s.svm.stats();
        let c = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let st = gpusvm_stats {
            faults: c(x.faults),
            faults_read: c(x.faults_read),
            faults_write: c(x.faults_write),
            faults_atomic: c(x.faults_atomic),
            retries: c(x.retries),
            ranges_created: c(x.ranges_created),
            ranges_removed: c(x.ranges_removed),
            invalidations: c(x.invalidations),
            gc_runs: c(x.gc_runs),
            gc_ranges: c(x.gc_ranges),
            pages_committed: c(x.pages_committed),
            migrations_to_devmem: c(x.migrations_to_devmem),
            bytes_to_devmem: c(x.bytes_to_devmem),
            migrations_to_ram: c(x.migrations_to_ram),
            bytes_to_ram: c(x.bytes_to_ram),
            copy_runs: c(x.copy_runs),
            evictions: c(x.evictions),
            migrate_failures: c(x.migrate_failures),
            devmem_retries: c(x.devmem_retries),
            prefetches: c(x.prefetches),
            attr_changes: c(x.attr_changes),
        };
        // SAFETY: writable by the caller's contract (checked inside).
        unsafe { put(out, st) }
    })();
    ret(r)
}

/// The interval `[*start, *end)` of `range` (either pointer may be NULL).
///
/// Returns 0 or `-EINVAL`.
///
/// Context: any; no lock, no allocation.
///
/// # Safety
/// `range` NULL or a live reference; `start`/`end` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_range_bounds(
    range: *const gpusvm_range,
    start: *mut u64,
    end: *mut u64,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let rg = unsafe { range_ref(range) }?;
        for p in [start, end] {
            if !p.is_null() && !p.is_aligned() {
                return Err(Error::Invalid);
            }
        }
        if !start.is_null() {
            // SAFETY: non-null and aligned, writable by the caller's contract.
            unsafe { start.write(rg.start()) };
        }
        if !end.is_null() {
            // SAFETY: as above.
            unsafe { end.write(rg.end()) };
        }
        Ok(())
    })();
    ret(r)
}

/// Take another reference to `range` (release each with [`gpusvm_range_put`]).
///
/// Returns 0 or `-EINVAL` (NULL).
///
/// Context: any; an atomic increment.
///
/// # Safety
/// `range` NULL or a live reference.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_range_get(range: *const gpusvm_range) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: checks NULL and alignment; live by the caller's contract.
        unsafe { range_ref(range) }?;
        // SAFETY: the pointer came from `RangeArc::into_raw`; the `Arc` is forgotten again, so
        // the count only goes up by the clone.
        let a = core::mem::ManuallyDrop::new(unsafe { RangeArc::from_raw(range.cast()) });
        let _ = RangeArc::into_raw(RangeArc::clone(&a));
        Ok(())
    })();
    ret(r)
}

/// Release a range reference (from a fault, a lookup or [`gpusvm_range_get`]); the last one
/// frees the range.
///
/// Returns 0 or `-EINVAL` (NULL).
///
/// Context: any that may free memory; no lock.
///
/// # Safety
/// `range` NULL or a live reference, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_range_put(range: *mut gpusvm_range) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: checks NULL and alignment; live by the caller's contract.
        unsafe { range_ref(range) }?;
        // SAFETY: the pointer came from `RangeArc::into_raw` and is turned back once.
        drop(unsafe { RangeArc::from_raw(range.cast_const().cast()) });
        Ok(())
    })();
    ret(r)
}

const _: () = assert!(PAGE_SIZE == 4096);
