//! The garbage collector and the statistics.

use super::*;

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
