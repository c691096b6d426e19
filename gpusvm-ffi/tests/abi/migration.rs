//! Device memory in the `abi` tests: a pagemap over the fake device memory; a range migrates to
//! it (device-local entries in bind, the live allocations walked), is evicted, migrates again and
//! comes back through the CPU-fault path (in the SVM's address space and in one given by a
//! platform table).

use core::ffi::{c_int, c_void};
use core::ptr::{null, null_mut};
use std::sync::atomic::Ordering::SeqCst;

use gpusvm_ffi::pagemap::*;
use gpusvm_ffi::svm::*;

use crate::bind::*;
use crate::host::*;
use crate::platform::*;

struct Walk {
    n: usize,
    start: u64,
    end: u64,
    live: u64,
}

unsafe extern "C" fn alloc_cb(ctx: *mut c_void, start: u64, end: u64, live: u64, _: u64) -> c_int {
    // SAFETY: `ctx` is the caller's `Walk`.
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    w.n += 1;
    (w.start, w.end, w.live) = (start, end, live);
    0
}

#[test]
fn migrate_to_devmem_and_evict() {
    let _g = serial();
    let f = Fake::new();
    let mut c = config();
    c.has_owner = true;
    c.owner = 1;
    let svm = create(&f, &c);
    let mut d = f.devmem_ops();
    let mut pm = null_mut();
    let mut r = null_mut();
    let mut rep = gpusvm_migrate_report::default();
    let (mut live, mut released) = (9u64, 9u64);
    // SAFETY: live handles and valid pointers throughout; the callbacks honour the contracts.
    unsafe {
        assert_eq!(gpusvm_migrate_to_devmem(svm, null(), null_mut()), EINVAL);
        d.copy = None; // required
        assert_eq!(gpusvm_pagemap_create(&d, 1, 1, &mut pm), EINVAL);
        assert!(pm.is_null());
        d = f.devmem_ops();
        assert_eq!(gpusvm_pagemap_create(&d, 1, 1, &mut pm), 0);
        f.pm.store(pm, SeqCst);
        assert_eq!(gpusvm_set_pagemap(svm, pm), 0);

        // A read fault in system memory, then the range moves to device memory.
        let mut seen = Seen::new(&f);
        let rc = gpusvm_handle_fault_and_bind(
            svm,
            BASE,
            GPUSVM_ACCESS_READ,
            0,
            u64::MAX,
            Some(bind_cb),
            seen.ctx(),
            &mut r,
        );
        assert_eq!(rc, 0);
        assert_eq!((seen.entries, seen.devmem), (CPAGES, 0));
        assert_eq!(gpusvm_migrate_to_devmem(svm, r, &mut rep), 0);
        assert_eq!(rep.pages, CPAGES as u64);
        assert!(rep.copy_runs >= 1);
        assert_eq!(rep.bytes, CHUNK);
        assert_eq!(f.copied_pages.get(), CPAGES as u64);
        assert_eq!(f.dev_allocs.get(), 1);
        assert_eq!(f.sys_frees.get(), CPAGES as i64);
        assert!(f.finalized.get() >= 1);
        assert!(f.on_dev[0].get() && f.on_dev[CPAGES - 1].get() && !f.on_dev[CPAGES].get());

        // Collected again: device-local entries.
        let pctx = gpusvm_pages_ctx {
            has_owner: true,
            owner: 1,
            ..Default::default()
        };
        assert_eq!(gpusvm_get_pages(svm, r, &pctx), 0);
        let mut seen = Seen::new(&f);
        assert_eq!(gpusvm_bind(svm, r, Some(bind_cb), seen.ctx()), 0);
        assert_eq!(seen.devmem, CPAGES);
        assert_eq!(seen.entries, CPAGES);
        assert_eq!(gpusvm_pagemap_counts(pm, &mut live, &mut released), 0);
        assert_eq!((live, released), (1, 0));
        let mut w = Walk {
            n: 0,
            start: 0,
            end: 0,
            live: 0,
        };
        let wp = core::ptr::from_mut(&mut w).cast();
        assert_eq!(gpusvm_pagemap_allocations(pm, Some(alloc_cb), wp), 0);
        assert_eq!(
            (w.n, w.start, w.end, w.live),
            (1, BASE, BASE + CHUNK, CPAGES as u64)
        );
        assert_eq!(gpusvm_pagemap_allocations(pm, None, null_mut()), EINVAL);

        // Evict: back to system memory; the device allocation is released once.
        rep = gpusvm_migrate_report::default();
        assert_eq!(gpusvm_evict(svm, r, &mut rep), 0);
        assert_eq!(rep.pages, CPAGES as u64);
        assert!(!f.on_dev[0].get() && !f.on_dev[CPAGES - 1].get());
        assert_eq!(f.dev_releases.get(), 1);
        assert_eq!(f.copied_pages.get(), 2 * CPAGES as u64);
        assert_eq!(gpusvm_pagemap_counts(pm, &mut live, &mut released), 0);
        assert_eq!((live, released), (0, 1));

        // Into device memory again, then a CPU fault on one of its pages (migrate_to_ram).
        assert_eq!(gpusvm_migrate_to_devmem(svm, r, null_mut()), 0);
        assert!(f.on_dev[7].get());
        rep = gpusvm_migrate_report::default();
        let va = BASE + 7 * PAGE;
        assert_eq!(
            gpusvm_pagemap_migrate_to_ram(pm, svm, va, f.dev[7].get(), &mut rep),
            0
        );
        assert!(rep.pages >= 1);
        assert!(!f.on_dev[7].get());
        assert_eq!(
            gpusvm_pagemap_migrate_to_ram(null(), svm, BASE, 0, null_mut()),
            EINVAL
        );
        // The same in an address space given by a platform table.
        assert_eq!(gpusvm_migrate_to_devmem(svm, r, null_mut()), 0);
        assert!(f.on_dev[9].get());
        let mut o = f.ops();
        let va = BASE + 9 * PAGE;
        assert_eq!(
            gpusvm_pagemap_migrate_to_ram_in(pm, &o, va, f.dev[9].get(), null_mut()),
            0
        );
        assert!(!f.on_dev[9].get());
        assert_eq!(
            gpusvm_pagemap_migrate_to_ram_in(pm, null(), BASE, 0, null_mut()),
            EINVAL
        );
        o.find_vma = None; // required
        assert_eq!(
            gpusvm_pagemap_migrate_to_ram_in(pm, &o, BASE, 0, null_mut()),
            EINVAL
        );
        assert_eq!(gpusvm_pagemap_page_free(null(), 0), EINVAL);
        // Whatever is left in device memory goes back before teardown.
        assert_eq!(gpusvm_evict(svm, r, null_mut()), 0);
        assert!(f.on_dev.iter().all(|d| !d.get()));

        // Teardown: the range, the SVM, then the last pagemap reference.
        assert_eq!(gpusvm_range_put(r), 0);
        assert_eq!(gpusvm_destroy(svm), 0);
        assert_eq!(gpusvm_pagemap_counts(pm, &mut live, &mut released), 0);
        assert_eq!(live, 0);
        assert_eq!(released as i64, f.dev_releases.get());
        assert_eq!(f.dev_allocs.get(), f.dev_releases.get());
        assert_eq!(gpusvm_pagemap_put(pm), 0);
    }
    assert_eq!(f.maps.get(), f.unmaps.get());
    assert_eq!(f.notifiers_live.get(), 0);
    assert_no_leak();
}
