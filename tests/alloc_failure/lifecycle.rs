//! Scenarios: an invalidation during a fault, the GC after a partial unmap, teardown, and
//! `close` (which allocates nothing).

use crate::fixture::*;
use crate::harness::*;
use gpusvm::sim::{check_closed, SimAlloc, SimGpu, SimMm};
use gpusvm::{Access, Event};
use std::sync::{Arc, Mutex};

// ---- invalidation during a fault ------------------------------------------------------------

/// A fault whose page collection is overlapped by an invalidation (`Clear`, issued by the
/// simulator's collection hook straight after the collection of the inserted range, before the
/// commit): the commit is refused and the fault collects again. The invalidation itself makes
/// no allocation attempt ([`SimAlloc::without_memory`]).
#[test]
fn invalidation_during_fault() {
    run(&Scenario {
        name: "invalidation during a fault",
        setup: || Fx::ram(K64),
        step: |fx| {
            let svm = Arc::downgrade(&fx.g(0).svm);
            let (s, e) = (fx.buf, fx.buf + fx.len);
            // Invalidations issued, and allocation attempts they made.
            let seen = Arc::new(Mutex::new((0u64, 0u64)));
            let hook_seen = seen.clone();
            fx.mm
                .set_collect_hook(Some(Box::new(move |mm: &Arc<SimMm>| {
                    let Some(svm) = svm.upgrade() else {
                        return;
                    };
                    // Once, and only for the collection of the range's pages (the chunk selection
                    // snapshots pages before the range exists).
                    let mut seen = hook_seen.lock().unwrap();
                    if seen.0 > 0 || svm.find(s).is_none() {
                        return;
                    }
                    let ((), attempts) = SimAlloc::without_memory(|| {
                        for (_, id, ns, ne) in mm.notifiers() {
                            if ns < e && s < ne {
                                svm.invalidate_begin(id, s, e, Event::Clear);
                                svm.invalidate_end(id, s, e);
                            }
                        }
                    });
                    seen.0 += 1;
                    seen.1 += attempts;
                })));
            let retries = fx.g(0).svm.stats().retries;
            let fresh = fx.g(0).svm.find(s).is_none();
            let got = fx.fault(0, s, Access::Read);
            fx.mm.set_collect_hook(None);
            let (fired, attempts) = *seen.lock().unwrap();
            assert_eq!(attempts, 0, "the invalidation path tried to allocate");
            let got = got?;
            if fresh {
                assert_eq!(fired, 1, "the invalidation was not issued");
                assert!(
                    fx.g(0).svm.stats().retries > retries,
                    "the fault collected again after the invalidation"
                );
            }
            Ok(got)
        },
        atomic: true,
        absorbs: None,
        placement_may_differ: None,
    });
}

// ---- GC -------------------------------------------------------------------------------------

/// The CPU unmaps the second half of a 128 KiB range in device memory... (set-up); `gc_run`
/// evicts the surviving part to system memory and removes the range.
///
/// Absorbed: `gc_run` cannot fail; when the eviction fails, the surviving pages stay in device
/// memory, still mapped by the CPU (a CPU fault brings them back), and the range is removed
/// anyway. The step's result is the number of ranges left (0).
#[test]
fn gc_partial_unmap() {
    run(&Scenario {
        name: "GC of a partly unmapped range in device memory",
        setup: || {
            let mut fx = Fx::new(2 * K64, |_, mm| {
                let g = SimGpu::new(mm, 0, cfg(true).with_chunk_sizes(&[2 * K64, P]).unwrap())
                    .expect("device");
                g.add_devmem(VRAM, 0).expect("device memory");
                vec![g]
            });
            fx.fault(0, fx.buf, Access::Read).expect("set-up fault");
            assert_eq!(fx.range(0, fx.buf).size(), 2 * K64);
            fx.mm.munmap(fx.buf + K64, K64).expect("munmap");
            fx.len = K64;
            fx.data.retain(|&(a, _)| a < fx.buf + K64);
            assert_eq!(fx.g(0).svm.gc_pending(), 1);
            fx
        },
        step: |fx| {
            fx.g(0).svm.gc_run();
            Ok(format!("{} ranges left", fx.g(0).svm.counts().1))
        },
        atomic: false,
        absorbs: Some("gc_run cannot fail: a failed eviction leaves the pages in device memory"),
        placement_may_differ: Some("pages a failed eviction left stay in device memory"),
    });
}

// ---- teardown -------------------------------------------------------------------------------

/// `SimGpu::teardown` of a device whose memory holds a range: its pages go back to system
/// memory (`Pagemap::allocations`, `migrate::to_ram`), the pagemap is detached, the `Svm`
/// closed.
#[test]
fn teardown() {
    run(&Scenario {
        name: "teardown of a device holding pages",
        setup: || {
            let fx = Fx::devmem(2 * K64, true);
            fx.fault_all(0);
            fx
        },
        step: |fx| {
            fx.g(0).teardown()?;
            Ok(format!("closed {}", fx.g(0).svm.is_closed()))
        },
        atomic: false,
        absorbs: None,
        placement_may_differ: None,
    });
}

/// `Svm::close` of a device with bound ranges allocates nothing.
#[test]
fn close_allocates_nothing() {
    SimAlloc::reset();
    let fx = Fx::ram(2 * K64);
    fx.fault_all(0);
    let before = SimAlloc::stats();
    SimAlloc::fail_next(u64::MAX);
    fx.g(0).svm.close();
    SimAlloc::stop_failing();
    let (n, failed) = allocs_since(before);
    assert_eq!((n, failed), (0, 0), "close allocated");
    check_closed(fx.g(0)).unwrap();
    fx.teardown().unwrap();
    no_leak("close").unwrap();
}
