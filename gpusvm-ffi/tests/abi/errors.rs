//! Error paths of the `abi` tests: bad input (NULL or misaligned pointers, unknown values, a
//! handle that is not an SVM) is `-EINVAL` and changes nothing; failing each allocation or lock
//! creation of a whole scenario in turn is `-ENOMEM`, with nothing leaked or left mapped.

use core::ffi::c_int;
use core::ptr::{null, null_mut};
use std::sync::atomic::Ordering::SeqCst;

use gpusvm_ffi::pagemap::*;
use gpusvm_ffi::svm::*;

use crate::bind::*;
use crate::host::*;
use crate::platform::*;

#[test]
fn bad_input_is_einval_and_changes_nothing() {
    let _g = serial();
    let f = Fake::new();
    let mut o = f.ops();
    let mut c = config();
    let mut svm: *mut gpusvm = null_mut();
    let mut r: *mut gpusvm_range = null_mut();
    let mut st = gpusvm_stats::default();
    let nine = [0u64; 9];
    // SAFETY: every pointer is NULL, misaligned or valid; the callbacks honour the contracts.
    unsafe {
        assert_eq!(gpusvm_create(null(), &c, &mut svm), EINVAL);
        assert_eq!(gpusvm_create(&o, null(), &mut svm), EINVAL);
        assert_eq!(gpusvm_create(&o, &c, null_mut()), EINVAL);
        let misaligned = core::ptr::from_ref(&o).cast::<u8>().add(1).cast();
        assert_eq!(gpusvm_create(misaligned, &c, &mut svm), EINVAL);
        c.mm_start = 123; // not page aligned
        assert_eq!(gpusvm_create(&o, &c, &mut svm), EINVAL);
        c = config();
        c.chunk_sizes = nine.as_ptr();
        c.n_chunk_sizes = 9; // more than 8
        assert_eq!(gpusvm_create(&o, &c, &mut svm), EINVAL);
        c = config();
        o.zap = None; // required
        assert_eq!(gpusvm_create(&o, &c, &mut svm), EINVAL);
        assert!(svm.is_null());

        svm = create(&f, &c);
        let fault =
            |svm, addr, access, ws, we, out| gpusvm_handle_fault(svm, addr, access, ws, we, out);
        assert_eq!(
            fault(null_mut(), BASE, GPUSVM_ACCESS_READ, 0, u64::MAX, &mut r),
            EINVAL
        );
        assert_eq!(fault(svm, BASE, 7, 0, u64::MAX, &mut r), EINVAL); // no such access
        assert_eq!(fault(svm, BASE, GPUSVM_ACCESS_READ, 5, 5, &mut r), EINVAL); // empty window
        assert_eq!(
            fault(svm, BASE, GPUSVM_ACCESS_READ, 0, u64::MAX, null_mut()),
            EINVAL
        );
        let mis_out = core::ptr::from_mut(&mut st).cast::<u8>().add(1).cast();
        assert_eq!(
            fault(svm, BASE, GPUSVM_ACCESS_READ, 0, u64::MAX, mis_out),
            EINVAL
        );
        assert_eq!(
            fault(svm, 1 << 48, GPUSVM_ACCESS_READ, 0, u64::MAX, &mut r),
            EINVAL
        ); // outside
        assert!(r.is_null());
        assert_eq!(
            gpusvm_invalidate_begin(svm, 0, BASE, BASE + PAGE, 99, false, 0),
            EINVAL
        );
        assert_eq!(gpusvm_bind(svm, null(), Some(bind_cb), null_mut()), EINVAL);
        assert_eq!(gpusvm_get_pages(svm, null(), null()), EINVAL);
        assert_eq!(gpusvm_range_put(null_mut()), EINVAL);
        assert_eq!(gpusvm_stats(svm, null_mut()), EINVAL);
        assert_eq!(gpusvm_stats(svm, mis_out.cast()), EINVAL);
        let mis_svm = svm.cast::<u8>().add(1).cast::<gpusvm>();
        assert_eq!(gpusvm_stats(mis_svm, &mut st), EINVAL);
        assert_eq!(gpusvm_destroy(mis_svm), EINVAL);
        // A handle that is not an SVM: zeroed memory of an SVM's size (no magic).
        let mut not_svm = vec![0u64; core::mem::size_of::<gpusvm>().div_ceil(8) + 1];
        let bad = not_svm.as_mut_ptr().cast::<gpusvm>();
        assert_eq!(gpusvm_stats(bad, &mut st), EINVAL);
        assert_eq!(gpusvm_destroy(bad), EINVAL);
        assert_eq!(gpusvm_gc_run(bad, null_mut()), EINVAL);
        assert!(not_svm.iter().all(|w| *w == 0));
        assert_eq!(gpusvm_pagemap_put(null_mut()), EINVAL);
        assert_eq!(
            gpusvm_pagemap_counts(null(), null_mut(), null_mut()),
            EINVAL
        );
        // Nothing of the above reached the platform.
        st = stats(svm);
        assert_eq!(st.faults, 0);
        assert_eq!((f.maps.get(), f.notifiers_live.get()), (0, 0));
        assert_eq!(gpusvm_destroy(svm), 0);
        assert_eq!(gpusvm_destroy(null_mut()), EINVAL);
    }
    assert_no_leak();
}

/// One scenario: create, fault a range and bind it, drop it, destroy. 0 or the first error.
fn scenario(f: &Fake) -> c_int {
    let o = f.ops();
    let c = config_small();
    let mut svm = null_mut();
    let mut r = null_mut();
    // SAFETY: valid pointers; `f` outlives the SVM.
    unsafe {
        let rc = gpusvm_create(&o, &c, &mut svm);
        if rc != 0 {
            assert!(svm.is_null());
            return rc;
        }
        f.svm.store(svm, SeqCst);
        let mut seen = Seen::new(f);
        let rc = gpusvm_handle_fault_and_bind(
            svm,
            BASE + CHUNK + 0x3000,
            GPUSVM_ACCESS_READ,
            0,
            u64::MAX,
            Some(bind_cb),
            seen.ctx(),
            &mut r,
        );
        if rc == 0 {
            // One chunk around the fault, every page bound.
            let (mut start, mut end) = (0, 0);
            assert_eq!(gpusvm_range_bounds(r, &mut start, &mut end), 0);
            assert!(start <= BASE + CHUNK + 0x3000 && BASE + CHUNK + 0x3000 < end);
            assert_eq!(end - start, SMALL);
            assert_eq!(seen.entries as u64, SMALL / PAGE);
            assert_eq!(gpusvm_range_put(r), 0);
        } else {
            assert!(r.is_null());
            assert_eq!(seen.entries, 0);
        }
        assert_eq!(gpusvm_destroy(svm), 0);
        rc
    }
}

#[test]
fn every_allocation_failure_is_enomem_without_leaks() {
    let _g = serial();
    // The dry run: how many allocation and lock-creation attempts the scenario makes.
    ATTEMPTS.store(0, SeqCst);
    let f = Fake::new();
    assert_eq!(scenario(&f), 0);
    let attempts = ATTEMPTS.load(SeqCst);
    assert!(attempts > 5);
    assert_no_leak();

    // Fail the k-th attempt, for every k: -ENOMEM, nothing leaked, nothing left mapped.
    for k in 0..attempts {
        let f = Fake::new();
        ATTEMPTS.store(0, SeqCst);
        FAIL_AT.store(k, SeqCst);
        let rc = scenario(&f);
        FAIL_AT.store(-1, SeqCst);
        assert_eq!(rc, ENOMEM, "attempt {k}");
        assert_no_leak();
        assert_eq!(f.maps.get(), f.unmaps.get(), "attempt {k}");
        assert_eq!(f.notifiers_live.get(), 0, "attempt {k}");
    }
}
