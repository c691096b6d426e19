//! Create, close and destroy an SVM.

use super::*;

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
