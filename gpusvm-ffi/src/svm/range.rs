//! Range handles: bounds, take and release a reference.

use super::*;

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
