//! Pagemaps: device memory over a [`gpusvm_devmem_ops`] table, attached to SVMs, and
//! migration between system and device memory (to device memory, eviction, the CPU-fault path,
//! `page_free`).

use crate::host::{FfiAlloc, FfiHost};
use crate::platform::{gpusvm_devmem_ops, gpusvm_platform_ops, FfiDevmem, FfiPlatform};
use crate::ret;
use crate::svm::{gpusvm, gpusvm_range, put, svm_ref};
use ::gpusvm::heap::Arc as HeapArc;
use ::gpusvm::migrate::{MigrateDetails, MigrateReport};
use ::gpusvm::pagemap::Pagemap;
use ::gpusvm::platform::{OwnerId, PagemapId};
use ::gpusvm::range::Range;
use ::gpusvm::{Error, Result};
use core::ffi::{c_int, c_void};

/// A pagemap: the device memory of one device (or tile). A counted reference, released with
/// [`gpusvm_pagemap_put`]. Opaque.
pub struct gpusvm_pagemap {
    _opaque: [u8; 0],
}

type PagemapArc = HeapArc<Pagemap<FfiDevmem, FfiHost>, FfiAlloc>;

/// What a migration did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gpusvm_migrate_report {
    /// Pages moved.
    pub pages: u64,
    /// Copy commands issued.
    pub copy_runs: u64,
    /// Bytes copied or cleared.
    pub bytes: u64,
    /// Pages selected but not isolated (to system memory only).
    pub busy: u64,
    /// Every page already was in the target: nothing was done.
    pub already_there: bool,
}

fn report_to_c(r: &MigrateReport) -> gpusvm_migrate_report {
    let c = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    gpusvm_migrate_report {
        pages: c(r.pages),
        copy_runs: c(r.copy_runs),
        bytes: r.bytes,
        busy: c(r.busy),
        already_there: r.already_there,
    }
}

/// Write `r` to `out` unless `out` is NULL.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn report(out: *mut gpusvm_migrate_report, r: &MigrateReport) -> Result<()> {
    if out.is_null() {
        return Ok(());
    }
    // SAFETY: forwarded from the caller.
    unsafe { put(out, report_to_c(r)) }
}

fn check_opt_out<T>(out: *mut T) -> Result<()> {
    if !out.is_null() && !out.is_aligned() {
        return Err(Error::Invalid);
    }
    Ok(())
}

/// The pagemap behind `p`.
///
/// # Safety
/// `p` is NULL or a live pagemap reference.
unsafe fn pm_ref<'a>(p: *const gpusvm_pagemap) -> Result<&'a Pagemap<FfiDevmem, FfiHost>> {
    let q = p.cast::<Pagemap<FfiDevmem, FfiHost>>();
    if q.is_null() || !q.is_aligned() {
        return Err(Error::Invalid);
    }
    // SAFETY: non-null, aligned and live by the caller's contract.
    Ok(unsafe { &*q })
}

/// A new counted reference to the pagemap behind `p` (the caller's stays).
///
/// # Safety
/// `p` is a live pagemap reference (checked with [`pm_ref`]).
unsafe fn pm_clone(p: *const gpusvm_pagemap) -> PagemapArc {
    // SAFETY: `p` came from `PagemapArc::into_raw`; the temporary is not dropped, so only the
    // clone adds a count.
    let a = core::mem::ManuallyDrop::new(unsafe { PagemapArc::from_raw(p.cast()) });
    PagemapArc::clone(&a)
}

/// The range behind `p`.
///
/// # Safety
/// `p` is NULL or a live range reference.
unsafe fn range_ref<'a>(p: *const gpusvm_range) -> Result<&'a Range<FfiHost>> {
    let r = p.cast::<Range<FfiHost>>();
    if r.is_null() || !r.is_aligned() {
        return Err(Error::Invalid);
    }
    // SAFETY: non-null, aligned, live by the caller's contract.
    Ok(unsafe { &*r })
}

/// Create a pagemap `id` of owner `owner` over the device memory `ops` (copied; `ops->ctx`
/// must outlive the pagemap). The reference goes to `*out`.
///
/// Returns 0, `-EINVAL` (NULL/misaligned pointer, missing required function) or `-ENOMEM`.
///
/// Context: may sleep (allocates the pagemap and its lock); takes no lock.
///
/// # Safety
/// `ops` NULL or readable; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_pagemap_create(
    ops: *const gpusvm_devmem_ops,
    id: u32,
    owner: u32,
    out: *mut *mut gpusvm_pagemap,
) -> c_int {
    let r = (|| -> Result<()> {
        crate::svm::check_out(out)?;
        if ops.is_null() || !ops.is_aligned() {
            return Err(Error::Invalid);
        }
        // SAFETY: non-null and aligned, readable by the caller's contract.
        let mem = FfiDevmem::new(unsafe { &*ops }).ok_or(Error::Invalid)?;
        let pm: PagemapArc = Pagemap::new(PagemapId(id), OwnerId(owner), mem)?;
        let p = PagemapArc::into_raw(pm).cast_mut().cast();
        // SAFETY: checked above.
        unsafe { put(out, p) }
    })();
    ret(r)
}

/// Release a pagemap reference; the last one frees the pagemap.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: any that may free memory.
///
/// # Safety
/// `pm` NULL or a live reference, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_pagemap_put(pm: *mut gpusvm_pagemap) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { pm_ref(pm) }?;
        // SAFETY: the pointer came from `into_raw` and is turned back once.
        drop(unsafe { PagemapArc::from_raw(pm.cast_const().cast()) });
        Ok(())
    })();
    ret(r)
}

/// Make `pm` the SVM's own device memory (NULL: none); the SVM keeps its own reference.
///
/// Returns 0, `-EINVAL` (bad handle; a different pagemap attached under the same id) or
/// `-ENOMEM`; on error nothing changes.
///
/// Context: may sleep; takes the pagemap-set lock, and the notifier lock if a pagemap went
/// away.
///
/// # Safety
/// `svm` NULL or live; `pm` NULL or a live reference.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_set_pagemap(svm: *mut gpusvm, pm: *const gpusvm_pagemap) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        let a = if pm.is_null() {
            None
        } else {
            // SAFETY: forwarded from the caller; checked before the clone.
            unsafe { pm_ref(pm) }?;
            // SAFETY: checked live above.
            Some(unsafe { pm_clone(pm) })
        };
        s.svm.set_pagemap(a)
    })();
    ret(r)
}

/// Attach a peer's pagemap to the SVM (its pages may then be mapped peer-to-peer or evicted).
///
/// Returns 0, `-EINVAL` or `-ENOMEM`; on error nothing changes.
///
/// Context: may sleep; takes the pagemap-set lock.
///
/// # Safety
/// `svm` NULL or live; `pm` NULL or a live reference.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_attach_pagemap(
    svm: *mut gpusvm,
    pm: *const gpusvm_pagemap,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let s = unsafe { svm_ref(svm) }?;
        // SAFETY: forwarded from the caller.
        unsafe { pm_ref(pm) }?;
        // SAFETY: checked live above.
        s.svm.attach_pagemap(unsafe { pm_clone(pm) })
    })();
    ret(r)
}

/// Detach the pagemap `id` from the SVM (ranges with its pages are zapped and unmapped).
/// Detaching an unknown id does nothing.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: may sleep; takes the pagemap-set lock, then the notifier lock.
///
/// # Safety
/// `svm` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_detach_pagemap(svm: *mut gpusvm, id: u32) -> c_int {
    // SAFETY: forwarded from the caller.
    ret(unsafe { svm_ref(svm) }.map(|s| drop(s.svm.detach_pagemap(PagemapId(id)))))
}

/// Migrate `range` into the SVM's device memory; collect its pages again afterwards. The
/// report goes to `*out` unless it is NULL.
///
/// Returns 0; `-EOPNOTSUPP` (no pagemap), `-EINVAL`/`-EAGAIN` (range not live), `-EBUSY`,
/// `-ENOMEM`, copy errors; on error nothing is lost.
///
/// Context: may sleep; no library lock held across platform calls.
///
/// # Safety
/// `svm` NULL or live; `range` NULL or a live reference; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_migrate_to_devmem(
    svm: *mut gpusvm,
    range: *const gpusvm_range,
    out: *mut gpusvm_migrate_report,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let (s, rg) = unsafe { (svm_ref(svm)?, range_ref(range)?) };
        check_opt_out(out)?;
        let cfg = s.svm.config();
        let details = MigrateDetails {
            timeslice_ns: 0,
            can_migrate_same_pagemap: cfg.can_migrate_same_pagemap,
            source_peer_migrates: cfg.source_peer_migrates,
        };
        let rep = s.svm.migrate_to_devmem(rg, &details)?;
        // SAFETY: checked above.
        unsafe { report(out, &rep) }
    })();
    ret(r)
}

/// Evict `range` from device memory to system memory. The report goes to `*out` unless NULL.
///
/// Returns 0; `-ENODEV`, `-EINVAL` (not in this SVM), `-EBUSY`, `-ENOMEM`, copy errors; on
/// error nothing is lost.
///
/// Context: may sleep; no library lock held across platform calls.
///
/// # Safety
/// `svm` NULL or live; `range` NULL or a live reference; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_evict(
    svm: *mut gpusvm,
    range: *const gpusvm_range,
    out: *mut gpusvm_migrate_report,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let (s, rg) = unsafe { (svm_ref(svm)?, range_ref(range)?) };
        check_opt_out(out)?;
        let rep = s.svm.evict(rg)?;
        // SAFETY: checked above.
        unsafe { report(out, &rep) }
    })();
    ret(r)
}

/// The platform freed the device page `dpfn` of `pm` (Linux `page_free`): the last page of an
/// allocation releases it through `release`. Unknown or twice-freed frames are ignored.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: any (may be called in atomic context); never sleeps or allocates.
///
/// # Safety
/// `pm` NULL or a live reference.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_pagemap_page_free(pm: *const gpusvm_pagemap, dpfn: u64) -> c_int {
    // SAFETY: forwarded from the caller.
    ret(unsafe { pm_ref(pm) }.map(|p| p.page_free(dpfn)))
}

/// The CPU faulted at `fault_addr` on the device page `dpfn` of `pm` (Linux `migrate_to_ram`)
/// in the address space of `svm`: migrate the faulting allocation's window back to system
/// memory. The report goes to `*out` unless NULL.
///
/// Returns 0; `-EAGAIN` (timeslice running, or pages not isolated: retry), `-EFAULT` (no VMA),
/// `-ENOMEM`, copy errors, `-EINVAL`; on error nothing is lost.
///
/// Context: may sleep; no library lock held across platform calls.
///
/// # Safety
/// `pm` NULL or a live reference; `svm` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_pagemap_migrate_to_ram(
    pm: *const gpusvm_pagemap,
    svm: *mut gpusvm,
    fault_addr: u64,
    dpfn: u64,
    out: *mut gpusvm_migrate_report,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let (p, s) = unsafe { (pm_ref(pm)?, svm_ref(svm)?) };
        check_opt_out(out)?;
        let rep = p.migrate_to_ram(
            ::gpusvm::platform::Platform::mm(s.svm.platform()),
            fault_addr,
            dpfn,
        )?;
        // SAFETY: checked above.
        unsafe { report(out, &rep) }
    })();
    ret(r)
}

/// [`gpusvm_pagemap_migrate_to_ram`] in an address space given by a platform table `ops` (its
/// address-space functions; copied for the call) instead of an SVM's: the CPU that faults on
/// a device page may run in an address space no SVM mirrors (Linux: a forked child touching a
/// device-private page it inherited; its `migrate_to_ram` gets the child's `vm_area_struct`).
///
/// Returns as [`gpusvm_pagemap_migrate_to_ram`]; `-EINVAL` also for a NULL or misaligned `ops`
/// or a missing required function.
///
/// Context: as [`gpusvm_pagemap_migrate_to_ram`]; `ops` is used only during the call.
///
/// # Safety
/// `pm` NULL or a live reference; `ops` NULL or readable, its functions honouring
/// `gpusvm_platform_ops`; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_pagemap_migrate_to_ram_in(
    pm: *const gpusvm_pagemap,
    ops: *const gpusvm_platform_ops,
    fault_addr: u64,
    dpfn: u64,
    out: *mut gpusvm_migrate_report,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let p = unsafe { pm_ref(pm) }?;
        check_opt_out(out)?;
        if ops.is_null() || !ops.is_aligned() {
            return Err(Error::Invalid);
        }
        // SAFETY: checked non-null and aligned; readable by the caller's contract.
        let platform = FfiPlatform::new(unsafe { &*ops }).ok_or(Error::Invalid)?;
        let rep = p.migrate_to_ram(
            ::gpusvm::platform::Platform::mm(&platform),
            fault_addr,
            dpfn,
        )?;
        // SAFETY: checked above.
        unsafe { report(out, &rep) }
    })();
    ret(r)
}

/// The pagemap's counters: live allocations and allocations released (either may be NULL).
///
/// Returns 0 or `-EINVAL`.
///
/// Context: any; atomic loads.
///
/// # Safety
/// `pm` NULL or a live reference; the out-pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_pagemap_counts(
    pm: *const gpusvm_pagemap,
    live: *mut u64,
    released: *mut u64,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let p = unsafe { pm_ref(pm) }?;
        check_opt_out(live)?;
        check_opt_out(released)?;
        let c = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        if !live.is_null() {
            // SAFETY: checked above.
            unsafe { put(live, c(p.live_allocations())) }?;
        }
        if !released.is_null() {
            // SAFETY: checked above.
            unsafe { put(released, c(p.released_allocations())) }?;
        }
        Ok(())
    })();
    ret(r)
}

/// Receives one live device-memory allocation of a pagemap: the virtual interval
/// `[va_start, va_end)` it was made for, its number of live pages and its first device frame.
/// Called with no library lock held (it may call into the library, for example to evict the
/// interval). Returning non-zero stops the walk; a negative value is returned by the caller.
pub type gpusvm_allocation_fn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        va_start: u64,
        va_end: u64,
        live_pages: u64,
        first_dpfn: u64,
    ) -> c_int,
>;

/// Walk the live allocations of `pm` (a snapshot, in the order of their lowest frame): what a
/// host evicts, by address, before it tears the device memory down.
///
/// Returns 0, the first negative value of `f`, `-EINVAL` or `-ENOMEM` (the snapshot).
///
/// Context: may sleep; allocates the snapshot with no lock held; `f` runs with no library
/// lock held.
///
/// # Safety
/// `pm` NULL or a live reference; `f` honours [`gpusvm_allocation_fn`].
#[no_mangle]
pub unsafe extern "C" fn gpusvm_pagemap_allocations(
    pm: *const gpusvm_pagemap,
    f: gpusvm_allocation_fn,
    ctx: *mut c_void,
) -> c_int {
    let r = (|| -> Result<c_int> {
        // SAFETY: forwarded from the caller.
        let p = unsafe { pm_ref(pm) }?;
        let f = f.ok_or(Error::Invalid)?;
        let all = p.allocations()?;
        for a in all.as_slice() {
            let (s, e) = a.va();
            let live = u64::try_from(a.live_pages()).unwrap_or(u64::MAX);
            let first = a.dpfns().first().copied().unwrap_or(0);
            // SAFETY: the callback honours `gpusvm_allocation_fn`; no lock is held.
            let rc = unsafe { f(ctx, s, e, live, first) };
            if rc != 0 {
                return Ok(rc.min(0));
            }
        }
        Ok(0)
    })();
    match r {
        Ok(rc) => rc,
        Err(e) => e.errno(),
    }
}
