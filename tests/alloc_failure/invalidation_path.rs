//! The invalidation path makes no allocation attempt through [`SimAlloc`], even with every
//! allocation failing.

use crate::fixture::*;
use crate::harness::*;
use gpusvm::migrate::MigrateDetails;
use gpusvm::platform::VmaFlags;
use gpusvm::sim::{SimAlloc, SimGpu};
use gpusvm::Event;

// ---- the invalidation path ------------------------------------------------------------------

/// `invalidate_begin`/`invalidate_begin_nonblock`/`invalidate_end` for every event, over ranges
/// in system memory and in device memory, whole and partial, allocate nothing through the host
/// allocator — even with every allocation failing — and `Unmap` queues ranges for the GC
/// without allocating.
#[test]
fn invalidation_allocates_nothing() {
    SimAlloc::reset();
    let fx = Fx::new(4 * K64, |_, mm| {
        let g = SimGpu::new(mm, 0, cfg(false)).expect("device");
        g.add_devmem(VRAM, 0).expect("device memory");
        vec![g]
    });
    let svm = &fx.g(0).svm;
    let events = [
        Event::Clear,
        Event::Protection,
        Event::Migrate { owner: None },
        Event::Unmap,
        Event::Release,
    ];
    for event in events {
        // Two ranges in system memory, two in device memory, all bound.
        svm.gc_run();
        fx.fault_all(0);
        for a in [fx.buf + 2 * K64, fx.buf + 3 * K64] {
            let r = fx.range(0, a);
            svm.migrate_to_devmem(&r, &MigrateDetails::default())
                .expect("set-up migration");
        }
        fx.read_back().unwrap();
        let notifiers = fx.mm.notifiers();
        assert!(!notifiers.is_empty());
        let intervals = [
            (fx.buf, fx.buf + fx.len),
            (fx.buf + P, fx.buf + 2 * P),
            (fx.buf + K64 - P, fx.buf + 3 * K64 + P),
            (fx.buf + 3 * K64, fx.buf + 4 * K64),
        ];
        let before = SimAlloc::stats();
        SimAlloc::fail_next(u64::MAX);
        for (i, (s, e)) in intervals.into_iter().enumerate() {
            for &(_, id, ns, ne) in &notifiers {
                if ns < e && s < ne {
                    // Every other interval through the non-blocking entry (nothing holds the
                    // notifier lock here: it succeeds).
                    if i % 2 == 0 {
                        svm.invalidate_begin(id, s, e, event);
                    } else {
                        svm.invalidate_begin_nonblock(id, s, e, event)
                            .expect("uncontended");
                    }
                    svm.invalidate_end(id, s, e);
                }
            }
        }
        SimAlloc::stop_failing();
        let after = SimAlloc::stats();
        assert_eq!(
            (after.allocs, after.failed),
            (before.allocs, before.failed),
            "{event:?}: the invalidation path allocated ({before:?} -> {after:?})"
        );
        if matches!(event, Event::Unmap | Event::Release) {
            assert_eq!(svm.gc_pending(), 4, "{event:?} queued every range");
        }
        fx.check().unwrap();
    }
    // Through the simulated CPU: mprotect and munmap notify the same way.
    svm.gc_run();
    fx.fault_all(0);
    let before = SimAlloc::stats();
    SimAlloc::fail_next(u64::MAX);
    fx.mm.mprotect(fx.buf, K64, VmaFlags::READ).unwrap();
    fx.mm.munmap(fx.buf + 3 * K64, K64).unwrap();
    SimAlloc::stop_failing();
    let after = SimAlloc::stats();
    assert_eq!(
        (after.allocs, after.failed),
        (before.allocs, before.failed),
        "CPU-side invalidation allocated"
    );
    fx.teardown().unwrap();
    no_leak("invalidation").unwrap();
}
