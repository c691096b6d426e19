//! The pages of a range: collect, check, bind, unmap, free, remove the range.

use super::*;

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
