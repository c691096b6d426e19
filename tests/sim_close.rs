//! Closing (and dropping) an `Svm` with live mappings: nothing leaks, later calls fail with
//! `Closed`, the CPU side carries on. Every step runs the invariant checker and the data model
//! check (see `sim_support`). Closing with live mappings, the `Closed` errors of later calls and
//! `remove` run in the conformance kit (`gpusvm::testkit::run_teardown` and `run_gc`, in
//! tests/testkit_sim.rs); what stays here needs the simulator: dropping the `Svm` and checking
//! the device afterwards, `mprotect`/`MADV_DONTNEED` after close, exact DMA-mapping counts.
#![cfg(feature = "sim")]

mod sim_support;

use gpusvm::platform::{NotifierId, PAGE_SIZE};
use gpusvm::sim::{check_closed, check_invariants, SimGpu, SimMm, SimWorld};
use gpusvm::{Error, PagesCtx, Window};
use sim_support::*;
use std::sync::Arc;

/// The CPU-side changes the kit's backend facet has no call for (`mprotect`,
/// `MADV_DONTNEED`) no longer reach a closed instance either; the rest of closing with live
/// mappings runs in the conformance kit (`gpusvm::testkit::run_teardown`).
#[test]
fn protection_changes_after_close_reach_nothing() {
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
    // Exact mapping counts: 4 KiB frames for the 2 MiB ranges of `d`, one huge page, one page.
    let (maps, _) = s.gpu.dev.dma_counts();
    assert_eq!(maps, 4 * 512 + 2);
    assert_eq!(s.mm.notifiers().len(), 1);
    s.step("close", |s| s.gpu.svm.close());
    check_closed(&s.gpu).unwrap();
    assert!(s.mm.notifiers().is_empty());
    let ctx = PagesCtx::default();
    assert_eq!(
        s.gpu.svm.find_or_insert(d, Window::ALL, &ctx).err(),
        Some(Error::Closed)
    );
    let inv = s.stats().invalidations;
    s.mprotect(h, M2, RO);
    s.dontneed(small, P);
    s.munmap(d, M2);
    assert_eq!(s.stats().invalidations, inv);
    assert_eq!(s.cpu_read(d + M2), Ok(tag(d + M2, 0)));
    assert_eq!(s.cpu_read(h + 8), Ok(1));
    s.step("close again", |s| s.gpu.svm.close());
    check_closed(&s.gpu).unwrap();
    assert_eq!(s.gpu.dev.dma_counts(), (maps, maps));
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
