//! Non-blockable invalidation (`Svm::invalidate_begin_nonblock`, Linux's
//! `mmu_notifier_range_blockable() == false`): while anyone holds the notifier lock it returns
//! `Error::Again` and changes nothing — the sequence, the device page tables, the DMA
//! mappings, the range flags, the GC queue and the counters stay exactly as they were; when the
//! lock is free it does what `invalidate_begin` does.
#![cfg(feature = "sim")]

use gpusvm::platform::{NotifierId, Platform, VmaFlags};
use gpusvm::sim::{SimGpu, SimMm, SimWorld};
use gpusvm::{Error, Event};
use std::sync::{mpsc, Arc};

const M2: u64 = 2 << 20;

/// Everything an invalidation may change, as seen from outside.
#[derive(Debug, PartialEq)]
struct Snapshot {
    ptes: usize,
    dma: usize,
    valid: bool,
    flags: gpusvm::range::RangeFlags,
    gc: usize,
    invalidations: usize,
}

fn snapshot(gpu: &SimGpu, addr: u64) -> Snapshot {
    let r = gpu.svm.find(addr).expect("range");
    Snapshot {
        ptes: gpu.dev.ptes().len(),
        dma: gpu.dev.dma_mappings().len(),
        valid: gpu.svm.pages_valid(&r),
        flags: r.flags(),
        gc: gpu.svm.gc_pending(),
        invalidations: gpu.svm.stats().invalidations,
    }
}

/// A bound 2 MiB range of system memory: (gpu, its address, its notifier).
fn bound() -> (Arc<SimMm>, SimGpu, u64, NotifierId) {
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_defaults(&mm, 0).unwrap();
    let buf = mm
        .mmap(M2, VmaFlags::READ | VmaFlags::WRITE, false)
        .unwrap();
    mm.write_u64(buf, 11).unwrap();
    assert_eq!(gpu.read_u64(buf).unwrap(), 11);
    let (_, id, _, _) = mm.notifiers()[0];
    (mm, gpu, buf, id)
}

#[test]
fn contended_lock_returns_again_and_changes_nothing() {
    let (_mm, gpu, buf, id) = bound();
    let before = snapshot(&gpu, buf);
    assert!(before.ptes > 0 && before.dma > 0 && before.valid);
    let r = gpu.svm.find(buf).unwrap();
    // `bind` holds the notifier lock shared while its closure runs.
    let got = gpu
        .svm
        .bind(&r, |_, _| {
            gpu.svm
                .invalidate_begin_nonblock(id, buf, buf + M2, Event::Unmap)
        })
        .unwrap();
    assert_eq!(got, Err(Error::Again));
    assert_eq!(snapshot(&gpu, buf), before);
    // The device still reads through its mapping, without a new fault.
    let faults = gpu.svm.stats().faults;
    assert_eq!(gpu.read_u64(buf).unwrap(), 11);
    assert_eq!(gpu.svm.stats().faults, faults);
    gpu.check().unwrap();
}

#[test]
fn contended_from_another_thread_returns_again() {
    let (_mm, gpu, buf, id) = bound();
    let before = snapshot(&gpu, buf);
    let (held_tx, held_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let g = &gpu;
        s.spawn(move || {
            // Hold the notifier lock (shared) until told to let go.
            g.svm.for_each_range(|_, _| {
                held_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            });
        });
        held_rx.recv().unwrap();
        assert_eq!(
            gpu.svm
                .invalidate_begin_nonblock(id, buf, buf + M2, Event::Clear),
            Err(Error::Again)
        );
        assert_eq!(snapshot(&gpu, buf), before);
        go_tx.send(()).unwrap();
    });
}

#[test]
fn free_lock_invalidates_like_the_blocking_call() {
    let (_mm, gpu, buf, id) = bound();
    gpu.svm
        .invalidate_begin_nonblock(id, buf, buf + M2, Event::Unmap)
        .unwrap();
    let after = snapshot(&gpu, buf);
    assert_eq!(after.ptes, 0, "device mappings zapped");
    assert_eq!(after.dma, 0, "DMA mappings undone");
    assert!(!after.valid);
    assert!(after
        .flags
        .contains(gpusvm::range::RangeFlags::UNMAPPED | gpusvm::range::RangeFlags::IN_GC));
    assert_eq!(after.gc, 1);
    gpu.svm.invalidate_end(id, buf, buf + M2);
    gpu.svm.gc_run();
    assert!(gpu.svm.find(buf).is_none());
    // An unknown notifier is ignored, as by the blocking call.
    assert_eq!(
        gpu.svm.invalidate_begin_nonblock(
            NotifierId(1 << 46),
            1 << 46,
            (1 << 46) + M2,
            Event::Clear
        ),
        Ok(())
    );
}

#[test]
fn userptr_nonblock_refuses_while_bound_and_works_when_free() {
    use gpusvm::pages::RetryPolicy;
    use gpusvm::{PagesCtx, Userptr};
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_defaults(&mm, 0).unwrap();
    let buf = mm
        .mmap(M2, VmaFlags::READ | VmaFlags::WRITE, false)
        .unwrap();
    mm.write_u64(buf, 5).unwrap();
    let u = Userptr::new(buf, buf + 16 * 4096).unwrap();
    let ctx = PagesCtx {
        read_only: false,
        devmem_only: false,
        allow_mixed: false,
        owner: None,
    };
    u.get_pages(gpu.svm.platform(), &ctx, &RetryPolicy::default())
        .unwrap();
    let dma = gpu.svm.platform().dma();
    let mapped = gpu.dev.dma_mappings().len();
    assert!(mapped >= 16);
    let got = u
        .bind(|_, _| u.invalidate_begin_nonblock(dma, buf, buf + 4096))
        .unwrap();
    assert_eq!(got, Err(Error::Again));
    assert!(u.pages_valid());
    assert_eq!(gpu.dev.dma_mappings().len(), mapped);
    u.invalidate_begin_nonblock(dma, buf, buf + 4096).unwrap();
    assert!(!u.pages_valid());
    assert_eq!(gpu.dev.dma_mappings().len(), mapped - 16);
    u.invalidate_end();
    u.free_pages(dma);
}
