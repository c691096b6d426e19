//! Faults, binds, invalidations and the GC in the `abi` tests: a fault maps and binds a chunk;
//! invalidations (blocking, and non-blocking with the notifier lock held or free) zap and
//! DMA-unmap; an unmap queues the range for the GC; the fault path by hand (find or insert,
//! collect, bind, unmap and free the pages, remove, close); and two threads faulting while a
//! third invalidates and runs the GC, on the host's locks.

use core::ffi::{c_int, c_void};
use core::ptr::{null, null_mut};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use gpusvm_ffi::svm::*;

use crate::bind::*;
use crate::host::*;
use crate::platform::*;

#[test]
fn fault_bind_invalidate_gc() {
    let _g = serial();
    let f = Fake::new();
    let svm = create(&f, &config());
    let mut r: *mut gpusvm_range = null_mut();
    let mut r2: *mut gpusvm_range = null_mut();
    let (mut start, mut end) = (0u64, 0u64);
    let mut valid = false;
    let mut removed = 99usize;
    let id = || f.notifier_id.get();
    // SAFETY: live handles and valid pointers throughout; the callbacks honour the contracts.
    unsafe {
        // A write fault inside the first chunk: one range of a chunk, every page mapped.
        let mut seen = Seen::new(&f);
        let rc = gpusvm_handle_fault_and_bind(
            svm,
            BASE + 0x5000,
            GPUSVM_ACCESS_WRITE,
            0,
            u64::MAX,
            Some(bind_cb),
            seen.ctx(),
            &mut r,
        );
        assert_eq!(rc, 0);
        assert!(!r.is_null());
        assert_eq!(gpusvm_range_bounds(r, &mut start, &mut end), 0);
        assert_eq!((start, end), (BASE, BASE + CHUNK));
        assert_eq!(seen.entries, CPAGES);
        assert_eq!(seen.calls, CPAGES.div_ceil(64));
        assert_eq!(f.maps.get(), CPAGES as i64);
        assert_eq!(f.mapped_ptes(), CPAGES);
        assert_eq!(f.notifiers_live.get(), 1);
        assert_eq!(gpusvm_pages_valid(svm, r, &mut valid), 0);
        assert!(valid);

        // Bind again, with a non-blocking invalidation from inside bind: -EAGAIN, nothing
        // changes.
        let mut seen = Seen::new(&f);
        seen.try_nonblock = true;
        assert_eq!(gpusvm_bind(svm, r, Some(bind_cb), seen.ctx()), 0);
        assert_eq!(seen.entries, CPAGES);
        assert_eq!(seen.nonblock_rc, EAGAIN);
        assert_eq!((f.zaps.get(), f.unmaps.get()), (0, 0));
        assert_eq!(f.mapped_ptes(), CPAGES);
        assert_eq!(gpusvm_pages_valid(svm, r, &mut valid), 0);
        assert!(valid);

        // The same range is found again; past its end, nothing.
        assert_eq!(gpusvm_find(svm, BASE + CHUNK - 1, &mut r2), 0);
        assert_eq!(r2, r);
        assert_eq!(gpusvm_range_put(r2), 0);
        assert_eq!(gpusvm_find(svm, BASE + CHUNK, &mut r2), 0);
        assert!(r2.is_null());

        // Invalidate one page: the device mappings are zapped, the range's DMA unmapped.
        let ev = GPUSVM_EVENT_CLEAR;
        assert_eq!(
            gpusvm_invalidate_begin(svm, id(), BASE, BASE + PAGE, ev, false, 0),
            0
        );
        assert_eq!(gpusvm_invalidate_end(svm, id(), BASE, BASE + PAGE), 0);
        assert!(f.zaps.get() >= 1);
        assert_eq!(f.unmaps.get(), CPAGES as i64);
        assert_eq!(f.mapped_ptes(), 0);
        assert_eq!(gpusvm_pages_valid(svm, r, &mut valid), 0);
        assert!(!valid);
        let mut seen = Seen::new(&f);
        assert_eq!(gpusvm_bind(svm, r, Some(bind_cb), seen.ctx()), EAGAIN);
        assert_eq!(seen.entries, 0);

        // The non-blocking form with the lock free succeeds.
        assert_eq!(
            gpusvm_invalidate_begin_nonblock(svm, id(), BASE, BASE + PAGE, ev, false, 0),
            0
        );
        assert_eq!(gpusvm_invalidate_end(svm, id(), BASE, BASE + PAGE), 0);

        // Collected again and bound again.
        assert_eq!(gpusvm_get_pages(svm, r, null()), 0);
        assert_eq!(gpusvm_bind(svm, r, Some(bind_cb), seen.ctx()), 0);
        assert_eq!(seen.entries, CPAGES);
        assert_eq!(f.maps.get(), 2 * CPAGES as i64);
        assert_eq!(f.mapped_ptes(), CPAGES);

        // munmap: the range goes to the GC, which removes it and its notifier.
        let ev = GPUSVM_EVENT_UNMAP;
        assert_eq!(
            gpusvm_invalidate_begin(svm, id(), BASE, BASE + CHUNK, ev, false, 0),
            0
        );
        assert_eq!(gpusvm_invalidate_end(svm, id(), BASE, BASE + CHUNK), 0);
        assert_eq!(f.unmaps.get(), 2 * CPAGES as i64);
        assert_eq!(f.mapped_ptes(), 0);
        assert_eq!(gpusvm_gc_run(svm, &mut removed), 0);
        assert_eq!(removed, 1);
        assert_eq!(f.notifiers_live.get(), 0);
        assert_eq!(gpusvm_get_pages(svm, r, null()), EAGAIN); // removed: fault again
        assert_eq!(gpusvm_find(svm, BASE, &mut r2), 0);
        assert!(r2.is_null());

        let st = stats(svm);
        assert_eq!((st.faults, st.faults_write), (1, 1));
        assert_eq!((st.ranges_created, st.ranges_removed), (1, 1));
        assert!(st.invalidations >= 3);

        // A counted reference outlives the removal; the SVM goes with its last one.
        assert_eq!(gpusvm_range_get(r), 0);
        assert_eq!(gpusvm_range_put(r), 0);
        assert_eq!(gpusvm_range_put(r), 0);
        assert_eq!(gpusvm_destroy(svm), 0);
    }
    assert_eq!(f.maps.get(), f.unmaps.get());
    assert_no_leak();
}

#[test]
fn ranges_by_hand_unmap_free_remove_close() {
    let _g = serial();
    let f = Fake::new();
    let svm = create(&f, &config());
    let mut r = null_mut();
    let mut r2 = null_mut();
    let mut valid = true;
    // SAFETY: live handles and valid pointers throughout; the callbacks honour the contracts.
    unsafe {
        // The fault path by hand: find or insert, collect, bind.
        let pctx = gpusvm_pages_ctx::default();
        let va = BASE + CHUNK + PAGE;
        assert_eq!(
            gpusvm_find_or_insert(svm, va, 0, u64::MAX, &pctx, &mut r),
            0
        );
        assert!(!r.is_null());
        assert_eq!(gpusvm_pages_valid(svm, r, &mut valid), 0);
        assert!(!valid); // nothing collected yet
        assert_eq!(f.maps.get(), 0);
        assert_eq!(gpusvm_get_pages(svm, r, &pctx), 0);
        assert_eq!(f.maps.get(), CPAGES as i64);
        let mut seen = Seen::new(&f);
        assert_eq!(gpusvm_bind(svm, r, Some(bind_cb), seen.ctx()), 0);
        assert_eq!(seen.entries, CPAGES);
        assert_eq!(
            gpusvm_find_or_insert(svm, va + PAGE, 0, u64::MAX, null(), &mut r2),
            0
        );
        assert_eq!(r2, r); // the same range
        assert_eq!(gpusvm_range_put(r2), 0);

        // unmap_pages drops the DMA mappings, free_pages the page state; both leave the range.
        assert_eq!(gpusvm_unmap_pages(svm, r), 0);
        assert_eq!(f.unmaps.get(), CPAGES as i64);
        assert_eq!(gpusvm_pages_valid(svm, r, &mut valid), 0);
        assert!(!valid);
        assert_eq!(gpusvm_get_pages(svm, r, null()), 0);
        assert_eq!(f.maps.get(), 2 * CPAGES as i64);
        assert_eq!(gpusvm_free_pages(svm, r), 0);
        assert_eq!(f.unmaps.get(), 2 * CPAGES as i64);
        assert_eq!(gpusvm_find(svm, va, &mut r2), 0);
        assert_eq!(r2, r);
        assert_eq!(gpusvm_range_put(r2), 0);

        // remove takes it out of the SVM (and its notifier with it).
        assert_eq!(gpusvm_get_pages(svm, r, null()), 0);
        assert_eq!(f.notifiers_live.get(), 1);
        assert_eq!(gpusvm_remove(svm, r), 0);
        assert_eq!(f.maps.get(), f.unmaps.get());
        assert_eq!(f.notifiers_live.get(), 0);
        assert_eq!(gpusvm_find(svm, va, &mut r2), 0);
        assert!(r2.is_null());
        assert_eq!(gpusvm_unmap_pages(svm, null()), EINVAL);
        assert_eq!(gpusvm_free_pages(null_mut(), r), EINVAL);
        assert_eq!(gpusvm_range_put(r), 0);
        r = null_mut();

        // A closed SVM refuses faults; destroy still frees it.
        assert_eq!(gpusvm_close(svm), 0);
        let rc = gpusvm_handle_fault(svm, BASE, GPUSVM_ACCESS_READ, 0, u64::MAX, &mut r);
        assert!(rc < 0);
        assert!(r.is_null());
        assert_eq!(f.maps.get(), 3 * CPAGES as i64);
        assert_eq!(gpusvm_destroy(svm), 0);
    }
    assert_eq!(f.maps.get(), f.unmaps.get());
    assert_no_leak();
}

/// Writes the page table under the notifier lock (shared), as a driver would.
unsafe extern "C" fn race_bind(
    ctx: *mut c_void,
    _: *const gpusvm_range,
    e: *const gpusvm_page_entry,
    n: usize,
    _: usize,
) -> c_int {
    // SAFETY: the `Fake` given as ctx; `e` readable for `n` entries.
    let (f, e) = unsafe { (fake(ctx), std::slice::from_raw_parts(e, n)) };
    for e in e {
        f.pte[page_of(e.va)].set(e.addr | 1);
    }
    0
}

/// A raw SVM handle shared by the racing threads (every call on it is thread-safe).
#[derive(Clone, Copy)]
struct Shared(*mut gpusvm);
// SAFETY: the library's calls may run concurrently on one SVM, and the fake's state is behind
// locks; the handles outlive the threads.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Shared`).
    fn get(self) -> *mut gpusvm {
        self.0
    }
}

#[test]
fn faults_race_invalidations_on_host_locks() {
    let _g = serial();
    let f = Fake::new();
    let svm = Shared(create(&f, &config_small()));
    let (faults, invalidations) = if cfg!(miri) { (12, 12) } else { (2000, 2000) };
    let mut seen = Seen::new(&f);
    // SAFETY: a live SVM; the first fault registers the notifier the invalidator targets.
    let rc = unsafe {
        gpusvm_handle_fault_and_bind(
            svm.get(),
            BASE,
            GPUSVM_ACCESS_WRITE,
            0,
            u64::MAX,
            Some(bind_cb),
            seen.ctx(),
            null_mut(),
        )
    };
    assert_eq!(rc, 0);
    let stop = AtomicBool::new(false);
    let ctx = Shared(f.ctx().cast());
    std::thread::scope(|s| {
        let faulter = |seed: u64| {
            let (svm, ctx) = (svm, ctx);
            move || {
                let (mut ok, mut again) = (0, 0);
                for i in 0..faults {
                    let page = (seed * 7 + i * 5) % NPAGES as u64;
                    // SAFETY: a live SVM; `race_bind` honours the bind contract.
                    let rc = unsafe {
                        gpusvm_handle_fault_and_bind(
                            svm.get(),
                            BASE + page * PAGE,
                            GPUSVM_ACCESS_WRITE,
                            0,
                            u64::MAX,
                            Some(race_bind),
                            ctx.get().cast(),
                            null_mut(),
                        )
                    };
                    match rc {
                        0 => ok += 1,
                        EAGAIN | -16 => again += 1,
                        rc => panic!("fault: {rc}"),
                    }
                }
                (ok, again)
            }
        };
        let a = s.spawn(faulter(1));
        let b = s.spawn(faulter(2));
        let inv = s.spawn(|| {
            let id = f.notifier_id.get();
            let mut n = 0u64;
            while n < invalidations || !stop.load(SeqCst) {
                let start = BASE + (n * 3 % NPAGES as u64) * PAGE;
                let end = (start + (1 + n % 8) * PAGE).min(END);
                // SAFETY: a live SVM.
                unsafe {
                    match n % 4 {
                        0 => {
                            let ev = GPUSVM_EVENT_UNMAP;
                            assert_eq!(
                                gpusvm_invalidate_begin(svm.get(), id, start, end, ev, false, 0),
                                0
                            );
                            assert_eq!(gpusvm_invalidate_end(svm.get(), id, start, end), 0);
                            let mut removed = 0;
                            assert_eq!(gpusvm_gc_run(svm.get(), &mut removed), 0);
                        }
                        1 => {
                            let ev = GPUSVM_EVENT_CLEAR;
                            match gpusvm_invalidate_begin_nonblock(
                                svm.get(),
                                id,
                                start,
                                end,
                                ev,
                                false,
                                0,
                            ) {
                                0 => {
                                    assert_eq!(gpusvm_invalidate_end(svm.get(), id, start, end), 0)
                                }
                                rc => assert_eq!(rc, EAGAIN),
                            }
                        }
                        _ => {
                            let ev = GPUSVM_EVENT_CLEAR;
                            assert_eq!(
                                gpusvm_invalidate_begin(svm.get(), id, start, end, ev, false, 0),
                                0
                            );
                            assert_eq!(gpusvm_invalidate_end(svm.get(), id, start, end), 0);
                        }
                    }
                }
                n += 1;
                if cfg!(miri) && n >= invalidations {
                    break;
                }
            }
        });
        // Stop the invalidator before looking at the faulters' results, so that a failed
        // faulter fails the test instead of hanging it.
        let (a, b) = (a.join(), b.join());
        stop.store(true, SeqCst);
        inv.join().unwrap();
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.0 + b.0 > 0, "no fault went through: {a:?} {b:?}");
    });
    // Everything invalidated: no device mapping is left, every DMA mapping is unmapped.
    let id = f.notifier_id.get();
    // SAFETY: a live SVM, then destroyed.
    unsafe {
        let ev = GPUSVM_EVENT_CLEAR;
        assert_eq!(
            gpusvm_invalidate_begin(svm.get(), id, BASE, END, ev, false, 0),
            0
        );
        assert_eq!(f.mapped_ptes(), 0);
        assert_eq!(f.maps.get(), f.unmaps.get());
        assert_eq!(gpusvm_invalidate_end(svm.get(), id, BASE, END), 0);
        assert_eq!(gpusvm_destroy(svm.get()), 0);
    }
    assert_eq!(f.notifiers_live.get(), 0);
    assert_no_leak();
}
