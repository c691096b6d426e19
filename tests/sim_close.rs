//! Closing (and dropping) an `Svm` with live mappings: nothing leaks, later calls fail with
//! `Closed`, the CPU side carries on. Every step runs the invariant checker and the data model
//! check (see `sim_support`).
#![cfg(feature = "sim")]

mod sim_support;

use gpusvm::platform::{NotifierId, PAGE_SIZE};
use gpusvm::range::RangeFlags;
use gpusvm::sim::{check_closed, check_invariants, SimGpu, SimMm, SimWorld};
use gpusvm::{Access, Error, PagesCtx, Window};
use sim_support::*;
use std::sync::Arc;

#[test]
fn close_with_live_mappings_releases_everything() {
    let mut s = Sim::new();
    let d = s.mmap(8 * M, RW, false);
    let h = s.mmap(4 * M, RW, true);
    let small = s.mmap(3 * P, RW, false);
    s.cpu_fill(d, d + 8 * M, K64, |a| tag(a, 0));
    for i in 0..4 {
        assert_eq!(s.dev_read(d + i * M2 + 8), Ok(0));
    }
    s.dev_write(h + 8, 1).unwrap();
    s.dev_write(small, 2).unwrap();
    // One range is unmapped and waits in the GC queue.
    s.munmap(d + 3 * M2 + K64, K64);
    assert_eq!(s.gpu.svm.gc_pending(), 1);
    let kept = s.range(d);
    assert!(s.dma_live() > 0);
    assert!(!s.gpu.dev.ptes().is_empty());
    assert_eq!(s.mm.notifiers().len(), 1);
    let created = s.stats().ranges_created;
    assert_eq!(created, 6);

    s.step("close", |s| s.gpu.svm.close());
    check_closed(&s.gpu).unwrap();
    assert!(s.gpu.svm.is_closed());
    assert_eq!(s.gpu.svm.gc_pending(), 0);
    assert!(s.mm.notifiers().is_empty());
    assert!(s.gpu.svm.find(d).is_none());
    assert!(kept.flags().contains(RangeFlags::REMOVED));
    assert_eq!(s.stats().ranges_removed, created);
    let (maps, unmaps) = s.gpu.dev.dma_counts();
    assert_eq!(maps, unmaps);
    assert_eq!(maps, 4 * 512 + 2);

    // Every later call that needs the instance fails with Closed and maps nothing.
    assert_eq!(s.dev_read(d + 8), Err(Error::Closed));
    assert_eq!(s.dev_write(h, 3), Err(Error::Closed));
    let ctx = PagesCtx::default();
    assert_eq!(
        s.gpu.svm.find_or_insert(d, Window::ALL, &ctx).err(),
        Some(Error::Closed)
    );
    assert_eq!(s.gpu.svm.get_pages(&kept, &ctx), Err(Error::Closed));
    assert_eq!(s.gpu.svm.bind(&kept, |_, _| ()), Err(Error::Closed));
    assert_eq!(
        s.gpu.svm.handle_fault(h, Access::Atomic, Window::ALL).err(),
        Some(Error::Closed)
    );
    assert!(!s.gpu.svm.pages_valid(&kept));
    assert_eq!(s.gpu.svm.gc_run(), 0);
    check_closed(&s.gpu).unwrap();

    // The CPU carries on; its invalidations no longer reach the closed instance.
    let inv = s.stats().invalidations;
    s.cpu_write(d + 8, 9).unwrap();
    s.munmap(d, M2);
    s.mprotect(h, M2, RO);
    s.dontneed(small, P);
    assert_eq!(s.stats().invalidations, inv);
    assert_eq!(s.cpu_read(d + M2), Ok(tag(d + M2, 0)));
    // close is idempotent.
    s.step("close again", |s| s.gpu.svm.close());
    check_closed(&s.gpu).unwrap();
    assert_eq!(s.gpu.dev.dma_counts(), (maps, unmaps));
}

#[test]
fn close_of_an_unused_instance_and_remove_after_close() {
    let mut s = Sim::new();
    let d = s.mmap(M2, RW, false);
    assert_eq!(s.dev_read(d), Ok(0));
    let r = s.range(d);
    s.step("remove", |s| s.gpu.svm.remove(&r).unwrap());
    assert_eq!(s.gpu.svm.counts(), (0, 0));
    assert!(s.mm.notifiers().is_empty());
    assert_eq!(s.dma_live(), 0);
    assert!(
        s.gpu.svm.remove(&r).is_err(),
        "a removed range cannot be removed again"
    );
    s.step("close", |s| s.gpu.svm.close());
    check_closed(&s.gpu).unwrap();
}

#[test]
fn dropping_the_svm_without_close_leaves_nothing_behind() {
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_defaults(&mm, 0).unwrap();
    let d = mm.mmap(8 * M, RW, false).unwrap();
    let h = mm.mmap(4 * M, RW, true).unwrap();
    for i in 0..4 {
        mm.write_u64(d + i * M2, i).unwrap();
        assert_eq!(gpu.read_u64(d + i * M2), Ok(i));
        gpu.check().unwrap();
    }
    gpu.write_u64(h + PAGE_SIZE, 5).unwrap();
    gpu.check().unwrap();
    mm.munmap(d, K64).unwrap();
    gpu.check().unwrap();
    let dev = gpu.dev.clone();
    assert_eq!(dev.dma_mappings().len(), 3 * 512 + 1);
    assert_eq!(mm.notifiers().len(), 1);
    let (_, id, _, _) = mm.notifiers()[0];
    assert_eq!(id, NotifierId(0));

    let weak = Arc::downgrade(&gpu.svm);
    drop(gpu);
    assert!(weak.upgrade().is_none(), "the Svm is gone");
    assert!(dev.dma_mappings().is_empty());
    let (maps, unmaps) = dev.dma_counts();
    assert_eq!(maps, unmaps);
    assert!(dev.dma_violations().is_empty());
    assert!(dev.ptes().is_empty());
    assert!(mm.notifiers().is_empty());
    // The CPU side keeps working, with its data.
    mm.munmap(d + M2, M2).unwrap();
    assert_eq!(mm.read_u64(d + 2 * M2), Ok(2));
    assert_eq!(mm.read_u64(h + PAGE_SIZE), Ok(5));
    check_invariants(&mm, &[]).unwrap();
}
