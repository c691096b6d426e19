//! The fault service and range lookup: handle a device fault (and bind), find or insert a
//! range, find one.

use super::*;

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
