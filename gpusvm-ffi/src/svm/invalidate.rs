//! The notifier callbacks: begin (blocking or not) and end of an invalidation.

use super::*;

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
