//! Userptrs: pages of `[start, end)` mirrored without a range tree (the driver registers its own
//! interval notifier and forwards its callbacks).

use crate::host::{FfiAlloc, FfiHost};
use crate::ret;
use crate::svm::{
    gpusvm, gpusvm_bind_fn, gpusvm_pages_ctx, pages_ctx, put, svm_ref, walk_entries_at,
};
use ::gpusvm::heap::{AllocCtx, Arc as HeapArc};
use ::gpusvm::platform::Platform;
use ::gpusvm::{Error, Result, Userptr};
use core::ffi::{c_int, c_void};

/// A userptr: the page state of one interval of user memory. Opaque; made by
/// [`gpusvm_userptr_create`], freed by [`gpusvm_userptr_destroy`].
pub struct gpusvm_userptr {
    _opaque: [u8; 0],
}

type UserptrBox = HeapArc<Userptr<FfiHost>, FfiAlloc>;

/// The userptr behind `p`.
///
/// # Safety
/// `p` is NULL or a live userptr.
unsafe fn up_ref<'a>(p: *const gpusvm_userptr) -> Result<&'a Userptr<FfiHost>> {
    let q = p.cast::<Userptr<FfiHost>>();
    if q.is_null() || !q.is_aligned() {
        return Err(Error::Invalid);
    }
    // SAFETY: non-null, aligned, live by the caller's contract.
    Ok(unsafe { &*q })
}

/// Create a userptr over `[start, end)` (page aligned, non-empty); the handle goes to `*out`.
///
/// Returns 0, `-EINVAL` or `-ENOMEM`.
///
/// Context: may sleep (allocates the userptr and its lock).
///
/// # Safety
/// `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_userptr_create(
    start: u64,
    end: u64,
    out: *mut *mut gpusvm_userptr,
) -> c_int {
    let r = (|| -> Result<()> {
        crate::svm::check_out(out)?;
        let u = Userptr::<FfiHost>::with_host(start, end)?;
        let b = UserptrBox::try_new(u, AllocCtx::MaySleep)?;
        let p = UserptrBox::into_raw(b).cast_mut().cast();
        // SAFETY: checked above.
        unsafe { put(out, p) }
    })();
    ret(r)
}

/// Unmap and free the userptr's pages through the DMA mapper of `svm`, then free it.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: may sleep; takes the userptr's lock.
///
/// # Safety
/// `up` NULL or live, not used after; `svm` NULL or live (the SVM whose device mapped it).
#[no_mangle]
pub unsafe extern "C" fn gpusvm_userptr_destroy(
    up: *mut gpusvm_userptr,
    svm: *mut gpusvm,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let (u, s) = unsafe { (up_ref(up)?, svm_ref(svm)?) };
        u.free_pages(s.svm.platform().dma());
        // SAFETY: the pointer came from `into_raw` and is turned back once.
        drop(unsafe { UserptrBox::from_raw(up.cast_const().cast()) });
        Ok(())
    })();
    ret(r)
}

/// Collect and DMA-map the userptr's pages through the platform of `svm` (`ctx` may be NULL),
/// retrying within the SVM's retry budget while invalidations race.
///
/// Returns 0 or the errors of [`gpusvm_get_pages`](crate::svm::gpusvm_get_pages).
///
/// Context: may sleep (collects with no lock held); takes the userptr's lock.
///
/// # Safety
/// `up`, `svm` NULL or live; `ctx` NULL or readable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_userptr_get_pages(
    up: *mut gpusvm_userptr,
    svm: *mut gpusvm,
    ctx: *const gpusvm_pages_ctx,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let (u, s) = unsafe { (up_ref(up)?, svm_ref(svm)?) };
        let c = pages_ctx(ctx)?;
        u.get_pages(s.svm.platform(), &c, &s.svm.config().retry)
    })();
    ret(r)
}

/// Hand the userptr's page entries to `bind` (its range argument is NULL) under the userptr's
/// lock (shared): must not sleep.
///
/// Returns 0, the first negative value of `bind`, `-EAGAIN` (not valid: collect again) or
/// `-EINVAL`.
///
/// Context: `bind` runs under the userptr's lock.
///
/// # Safety
/// `up` NULL or live; `bind` honours [`gpusvm_bind_fn`].
#[no_mangle]
pub unsafe extern "C" fn gpusvm_userptr_bind(
    up: *mut gpusvm_userptr,
    bind: gpusvm_bind_fn,
    bind_ctx: *mut c_void,
) -> c_int {
    let r = (|| -> Result<c_int> {
        // SAFETY: forwarded from the caller.
        let u = unsafe { up_ref(up) }?;
        let f = bind.ok_or(Error::Invalid)?;
        u.bind(|start, e| walk_entries_at(f, bind_ctx, core::ptr::null(), start, e))
    })();
    match r {
        Ok(rc) => rc.min(0),
        Err(e) => e.errno(),
    }
}

/// The driver's notifier for the userptr fired: DMA-unmap (through `svm`'s mapper) if
/// `[start, end)` overlaps it; `nonblock`: only try the lock (`-EAGAIN` if taken, nothing
/// changed). Follow with [`gpusvm_userptr_invalidate_end`].
///
/// Returns 0, `-EAGAIN` (nonblock) or `-EINVAL`.
///
/// Context: allocates nothing; takes the userptr's lock (or tries it).
///
/// # Safety
/// `up`, `svm` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_userptr_invalidate_begin(
    up: *mut gpusvm_userptr,
    svm: *mut gpusvm,
    start: u64,
    end: u64,
    nonblock: bool,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let (u, s) = unsafe { (up_ref(up)?, svm_ref(svm)?) };
        let dma = s.svm.platform().dma();
        if nonblock {
            u.invalidate_begin_nonblock(dma, start, end)
        } else {
            u.invalidate_begin(dma, start, end);
            Ok(())
        }
    })();
    ret(r)
}

/// End of a userptr invalidation.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: takes the userptr's lock.
///
/// # Safety
/// `up` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_userptr_invalidate_end(up: *mut gpusvm_userptr) -> c_int {
    // SAFETY: forwarded from the caller.
    ret(unsafe { up_ref(up) }.map(|u| u.invalidate_end()))
}

/// Whether the userptr's pages are valid right now, in `*out`.
///
/// Returns 0 or `-EINVAL`.
///
/// Context: takes the userptr's lock shared.
///
/// # Safety
/// `up` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gpusvm_userptr_pages_valid(
    up: *mut gpusvm_userptr,
    out: *mut bool,
) -> c_int {
    let r = (|| -> Result<()> {
        // SAFETY: forwarded from the caller.
        let u = unsafe { up_ref(up) }?;
        // SAFETY: checked inside.
        unsafe { put(out, u.pages_valid()) }
    })();
    ret(r)
}
