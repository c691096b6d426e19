//! Attributes, prefetch and userptr in the `abi` tests: attributes are set (one bad entry
//! changes nothing) and read back; a prefetch moves a chunk to device memory and back; a userptr
//! collects, binds (a non-blocking invalidation from inside bind is `-EAGAIN`), is invalidated
//! and collected again.

use core::ffi::{c_int, c_void};
use core::ptr::{null, null_mut};
use std::sync::atomic::Ordering::SeqCst;

use gpusvm_ffi::pagemap::*;
use gpusvm_ffi::policy::*;
use gpusvm_ffi::svm::*;
use gpusvm_ffi::userptr::*;

use crate::bind::*;
use crate::host::*;
use crate::platform::*;

struct UpBind<'a> {
    seen: Seen<'a>,
    up: *mut gpusvm_userptr,
    svm: *mut gpusvm,
    nonblock_rc: c_int,
}

unsafe extern "C" fn up_bind_cb(
    ctx: *mut c_void,
    range: *const gpusvm_range,
    e: *const gpusvm_page_entry,
    n: usize,
    first: usize,
) -> c_int {
    // SAFETY: `ctx` is the caller's `UpBind`.
    let b = unsafe { &mut *ctx.cast::<UpBind>() };
    assert!(range.is_null());
    if first == 0 {
        // The userptr's lock is held shared: a non-blocking invalidation refuses.
        // SAFETY: live handles.
        b.nonblock_rc = unsafe { gpusvm_userptr_invalidate_begin(b.up, b.svm, 0, u64::MAX, true) };
    }
    // SAFETY: forwarded, with the `Seen` inside.
    unsafe { bind_cb(b.seen.ctx(), range, e, n, first) }
}

#[test]
fn attrs_prefetch_userptr() {
    let _g = serial();
    let f = Fake::new();
    let mut c = config();
    c.has_owner = true;
    c.owner = 1;
    let svm = create(&f, &c);
    let d = f.devmem_ops();
    let mut pm = null_mut();
    let mut at = gpusvm_attrs {
        preferred_loc: 9,
        migration: 9,
        atomic: 9,
    };
    let mut up = null_mut();
    let mut valid = false;
    // SAFETY: live handles and valid pointers throughout; the callbacks honour the contracts.
    unsafe {
        assert_eq!(gpusvm_pagemap_create(&d, 1, 1, &mut pm), 0);
        f.pm.store(pm, SeqCst);
        assert_eq!(gpusvm_set_pagemap(svm, pm), 0);

        // The second chunk prefers system memory and global atomics.
        let mut a = [
            gpusvm_attr {
                kind: GPUSVM_ATTR_PREFERRED_LOC,
                value: 1,
                reserved: 0,
            },
            gpusvm_attr {
                kind: GPUSVM_ATTR_ATOMIC,
                value: 2,
                reserved: 0,
            },
        ];
        let (c1, ap) = (BASE + CHUNK, a.as_ptr());
        assert_eq!(gpusvm_set_attrs(svm, c1, CHUNK, ap, 2), 0);
        assert_eq!(gpusvm_attrs_at(svm, c1 + PAGE, &mut at), 0);
        assert_eq!((at.preferred_loc, at.migration, at.atomic), (1, 0, 2));
        assert_eq!(gpusvm_attrs_at(svm, BASE, &mut at), 0);
        assert_eq!(at.preferred_loc, 0);
        a[1].reserved = 1; // one bad entry: nothing changes
        a[0].value = 0;
        assert_eq!(gpusvm_set_attrs(svm, c1, CHUNK, a.as_ptr(), 2), EINVAL);
        assert_eq!(gpusvm_attrs_at(svm, c1, &mut at), 0);
        assert_eq!(at.preferred_loc, 1);
        assert_eq!(gpusvm_set_attrs(svm, c1, CHUNK, a.as_ptr(), 0), EINVAL);
        assert_eq!(gpusvm_set_attrs(svm, c1, CHUNK, null(), 1), EINVAL);
        assert_eq!(
            gpusvm_set_attrs(svm, BASE + 1, CHUNK, a.as_ptr(), 1),
            EINVAL
        );
        assert_eq!(gpusvm_attrs_at(svm, BASE, null_mut()), EINVAL);

        // Prefetch the first chunk into device memory and back.
        assert_eq!(
            gpusvm_prefetch(svm, BASE, CHUNK, GPUSVM_PREFETCH_DEVICE, 0),
            0
        );
        assert!(f.on_dev[0].get() && f.on_dev[CPAGES - 1].get());
        assert_eq!(
            gpusvm_prefetch(svm, BASE, CHUNK, GPUSVM_PREFETCH_SYSTEM, 0),
            0
        );
        assert!(!f.on_dev[0].get() && !f.on_dev[CPAGES - 1].get());
        assert_eq!(f.dev_allocs.get(), f.dev_releases.get());
        assert_eq!(gpusvm_prefetch(svm, BASE, CHUNK, 9, 0), EINVAL);
        assert_eq!(
            gpusvm_prefetch(svm, BASE, CHUNK, GPUSVM_PREFETCH_PAGEMAP, 77),
            EINVAL
        );

        // A userptr of a few pages in system memory.
        const UP_PAGES: usize = 4;
        let us = BASE + CHUNK + CHUNK / 2;
        let ue = us + UP_PAGES as u64 * PAGE;
        assert_eq!(gpusvm_userptr_create(us, us + 1, &mut up), EINVAL);
        assert!(up.is_null());
        assert_eq!(gpusvm_userptr_create(us, ue, &mut up), 0);
        let mut seen = Seen::new(&f);
        assert_eq!(gpusvm_userptr_bind(up, Some(bind_cb), seen.ctx()), EAGAIN); // not collected
        assert_eq!(seen.entries, 0);
        assert_eq!(gpusvm_userptr_get_pages(up, svm, null()), 0);
        let mut b = UpBind {
            seen: Seen::new(&f),
            up,
            svm,
            nonblock_rc: 1,
        };
        let bp = core::ptr::from_mut(&mut b).cast();
        assert_eq!(gpusvm_userptr_bind(up, Some(up_bind_cb), bp), 0);
        assert_eq!(b.seen.entries, UP_PAGES);
        assert_eq!(b.nonblock_rc, EAGAIN);
        assert_eq!(gpusvm_userptr_pages_valid(up, &mut valid), 0);
        assert!(valid); // the refused invalidation changed nothing
        let unmaps = f.unmaps.get();
        assert_eq!(
            gpusvm_userptr_invalidate_begin(up, svm, us, us + PAGE, false),
            0
        );
        assert_eq!(f.unmaps.get() - unmaps, UP_PAGES as i64);
        assert_eq!(gpusvm_userptr_invalidate_end(up), 0);
        assert_eq!(gpusvm_userptr_pages_valid(up, &mut valid), 0);
        assert!(!valid);
        assert_eq!(gpusvm_userptr_get_pages(up, svm, null()), 0);
        assert_eq!(gpusvm_userptr_pages_valid(up, &mut valid), 0);
        assert!(valid);
        assert_eq!(gpusvm_userptr_destroy(up, svm), 0);
        assert_eq!(gpusvm_userptr_destroy(null_mut(), svm), EINVAL);

        assert_eq!(gpusvm_destroy(svm), 0);
        assert_eq!(gpusvm_pagemap_put(pm), 0);
    }
    assert_eq!(f.maps.get(), f.unmaps.get());
    assert_no_leak();
}
