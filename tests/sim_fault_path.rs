//! Scenario tests of the system-memory fault path on the simulator (issue 3): first-touch
//! faults, CPU/device coherence, munmap (whole, partial, many), mprotect, MADV_DONTNEED and
//! fork. Every step runs the invariant checker and the data model check (see `sim_support`).
//!
//! The munmap of a whole range runs in the conformance kit (`gpusvm::testkit::run_invalidation`,
//! in tests/testkit_sim.rs), like the kit's first-touch, partial and many-range munmap and
//! coherence scenarios. The tests here stay because they check what the kit's backend facet
//! cannot express: chunk sizes chosen from huge pages and page presence at VMA edges (fixed
//! addresses), DMA-mapping orders, `mprotect`, `MADV_DONTNEED`, fork, and device atomics on
//! system memory.
#![cfg(feature = "sim")]

mod sim_support;

use gpusvm::platform::{DmaDirection, HUGE_ORDER};
use gpusvm::range::RangeFlags;
use gpusvm::{Error, SvmConfig};
use sim_support::*;
use std::collections::BTreeMap;

fn orders(pairs: &[(u8, usize)]) -> BTreeMap<u8, usize> {
    pairs.iter().copied().collect()
}

// ---- first touch --------------------------------------------------------------------------

#[test]
fn first_touch_on_malloc_like_memory_picks_small_ranges_at_vma_edges() {
    let mut s = Sim::new();

    // A tiny allocation (3 pages): neither 2 MiB nor 64 KiB fits the VMA, so 4 KiB ranges.
    let a = s.mmap(3 * P, RW, false);
    assert_eq!(s.dev_read(a + 8), Ok(0));
    assert_eq!(s.ranges(), vec![(a, a + P)]);
    assert_eq!(s.dma_orders(), orders(&[(0, 1)]));
    assert_eq!(s.dev_ptes_in(a, a + 3 * P), 1);
    s.dev_write(a + 2 * P + 16, 7).unwrap();
    assert_eq!(s.ranges(), vec![(a, a + P), (a + 2 * P, a + 3 * P)]);
    assert_eq!(s.cpu_read(a + 2 * P + 16), Ok(7));
    // Just past the VMA end (the guard gap): Fault, and no range is created.
    assert_eq!(s.dev_read(a + 3 * P), Err(Error::Fault));
    assert_eq!(s.ranges().len(), 2);
    let st = s.stats();
    assert_eq!((st.faults, st.faults_read, st.faults_write), (3, 2, 1));
    assert_eq!((st.ranges_created, st.pages_committed), (2, 2));

    // A malloc'd and initialised buffer that starts and ends off any 64 KiB boundary.
    let base = 0x4000_0000u64;
    let b = s.mmap_fixed(base + 3 * P, 256 << 10, RW, false);
    let b_end = b + (256 << 10);
    s.cpu_fill(b, b_end, P, |x| tag(x, 1));
    // First page: the 64 KiB block around it starts before the VMA -> 4 KiB range.
    assert_eq!(s.dev_read(b), Ok(tag(b, 1)));
    assert_eq!(s.range(b).size(), P);
    // Inside: a full 64 KiB block whose pages are all present -> 64 KiB range, 16 entries.
    assert_eq!(
        s.dev_read(base + K64 + 8 * P),
        Ok(tag(base + K64 + 8 * P, 1))
    );
    let r = s.range(base + K64);
    assert_eq!((r.start(), r.end()), (base + K64, base + 2 * K64));
    assert_eq!(s.entries(base + K64).len(), 16);
    // Last page: the 64 KiB block runs past the VMA end -> 4 KiB range.
    assert_eq!(s.dev_read(b_end - P), Ok(tag(b_end - P, 1)));
    assert_eq!(
        (s.range(b_end - P).start(), s.range(b_end - P).end()),
        (b_end - P, b_end)
    );
    // The last full 64 KiB block inside the VMA.
    assert_eq!(s.dev_read(base + 3 * K64), Ok(tag(base + 3 * K64, 1)));
    assert_eq!(s.range(base + 3 * K64).size(), K64);

    // Fresh (never touched) memory: 64 KiB would fit, but its pages are absent -> 4 KiB.
    let c = s.mmap(256 << 10, RW, false);
    assert_eq!(s.dev_read(c + K64), Ok(0));
    assert_eq!(s.range(c + K64).size(), P);
    assert_eq!(s.dev_read(c + K64 + P), Ok(0));
    assert_eq!(
        (s.range(c + K64 + P).start(), s.range(c + K64 + P).size()),
        (c + K64 + P, P)
    );

    // Two notifiers (the 512 MiB blocks of `a`/`c` and of `base`), every page of every range
    // DMA-mapped once, at order 0 (4 KiB frames).
    let (notifiers, nranges) = s.gpu.svm.counts();
    assert_eq!((notifiers, nranges), (2, 8));
    let pages: u64 = s.ranges().iter().map(|(a, b)| (b - a) / P).sum();
    assert_eq!(s.dma_orders(), orders(&[(0, pages as usize)]));
    assert_eq!(s.gpu.dev.ptes().len() as u64, pages);
    assert_eq!(s.mm.notifiers().len(), 2);
}

#[test]
fn first_touch_on_large_mmap_creates_2m_ranges() {
    let mut s = Sim::new();
    let d = s.mmap(8 * M, RW, false);
    assert_eq!(d % M2, 0);
    assert_eq!(s.dev_read(d + 3 * M + 8), Ok(0));
    assert_eq!(s.ranges(), vec![(d + M2, d + 2 * M2)]);
    // 4 KiB frames: one entry and one DMA mapping per page.
    assert_eq!(s.dma_orders(), orders(&[(0, 512)]));
    assert_eq!(s.entries(d + M2).len(), 512);
    assert_eq!(s.dev_ptes_in(d + M2, d + 2 * M2), 512);
    assert!(s.all_dma_dir(DmaDirection::Bidirectional));

    s.dev_write(d + 5 * M, 9).unwrap();
    assert_eq!(
        s.ranges(),
        vec![(d + M2, d + 2 * M2), (d + 2 * M2, d + 3 * M2)]
    );
    assert_eq!(s.dma_orders(), orders(&[(0, 1024)]));
    assert_eq!(s.cpu_read(d + 5 * M), Ok(9));

    // Other pages of a mapped range are reached without another fault.
    let faults = s.stats().faults;
    for i in 0..16 {
        assert_eq!(s.dev_read(d + M2 + i * 32 * P + 8), Ok(0));
    }
    assert_eq!(s.stats().faults, faults);

    // A 3 MiB mapping: the second 2 MiB block runs past the VMA end, so the tail gets small
    // ranges (4 KiB while its pages are absent, 64 KiB once the CPU has touched them).
    let e = s.mmap(3 * M, RW, false);
    assert_eq!(s.dev_read(e + M2 + 8), Ok(0));
    assert_eq!(s.range(e + M2).size(), P);
    s.cpu_fill(e + M2 + K64, e + M2 + 2 * K64, P, |x| tag(x, 2));
    assert_eq!(s.dev_read(e + M2 + K64 + 8), Ok(0));
    assert_eq!(s.dev_read(e + M2 + K64), Ok(tag(e + M2 + K64, 2)));
    assert_eq!(s.range(e + M2 + K64).size(), K64);
    // The first block fits: 2 MiB.
    assert_eq!(s.dev_read(e), Ok(0));
    assert_eq!(s.range(e).size(), M2);
    assert_eq!(s.ranges().len(), 5);
}

#[test]
fn huge_page_backed_vma_maps_one_entry_per_2m() {
    let mut s = Sim::new();
    let h = s.mmap(6 * M, RW, true);
    assert_eq!(h % M2, 0);
    // The CPU touches the first huge page, then the device faults on it.
    s.cpu_write(h + 16, 1).unwrap();
    assert_eq!(s.mm.pte(h).map(|p| p.order), Some(HUGE_ORDER));
    assert_eq!(s.dev_read(h + 16), Ok(1));
    assert_eq!(s.ranges(), vec![(h, h + M2)]);
    assert_eq!(s.dma_orders(), orders(&[(HUGE_ORDER, 1)]));
    let e = s.entries(h);
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].order(), e[0].size()), (HUGE_ORDER, M2));
    let m = s.gpu.dev.dma_mappings()[0].1;
    assert_eq!(Some(m.pfn), s.mm.pte(h).map(|p| p.pfn));
    assert_eq!(m.pfn % 512, 0);
    assert_eq!(s.dev_ptes_in(h, h + M2), 512);

    // The device touches the second huge page first: collection faults a huge frame in.
    s.dev_write(h + M2 + P + 8, 2).unwrap();
    assert_eq!(s.mm.pte(h + M2).map(|p| p.order), Some(HUGE_ORDER));
    assert_eq!(s.dma_orders(), orders(&[(HUGE_ORDER, 2)]));
    assert_eq!(s.cpu_read(h + M2 + P + 8), Ok(2));
    // Device and CPU agree on every page of the huge page.
    s.cpu_write(h + M2 + 511 * P, 3).unwrap();
    assert_eq!(s.dev_read(h + M2 + 511 * P), Ok(3));
}

#[test]
fn huge_pages_under_small_ranges_are_clamped_to_the_range() {
    // Chunk sizes 64K/4K: ranges are smaller than the 2 MiB huge pages behind them.
    let cfg = SvmConfig::new(0, 1 << 47)
        .with_chunk_sizes(&[K64, P])
        .unwrap();
    let mut s = Sim::with_config(cfg);
    let h = s.mmap(4 * M, RW, true);
    // Fresh memory: the 64 KiB candidate has absent pages -> 4 KiB range; the collection faults
    // a whole huge page in but the entry is clamped to the range: order 0.
    assert_eq!(s.dev_read(h + 8), Ok(0));
    assert_eq!(s.ranges(), vec![(h, h + P)]);
    assert_eq!(s.mm.pte(h + M).map(|p| p.order), Some(HUGE_ORDER));
    assert_eq!(s.dma_orders(), orders(&[(0, 1)]));
    // Now every page of the huge page is present: 64 KiB ranges, one order-4 entry each.
    assert_eq!(s.dev_read(h + K64 + 8), Ok(0));
    assert_eq!(s.range(h + K64).size(), K64);
    assert_eq!(s.entries(h + K64).len(), 1);
    assert_eq!(s.entries(h + K64)[0].order(), 4);
    s.dev_write(h + 8 * K64 + 8, 5).unwrap();
    assert_eq!(s.dma_orders(), orders(&[(0, 1), (4, 2)]));
    assert_eq!(s.cpu_read(h + 8 * K64 + 8), Ok(5));
    // Each 64 KiB piece is naturally aligned inside the huge frame.
    for (_, m) in s.gpu.dev.dma_mappings() {
        assert_eq!(m.pfn % (1 << m.order), 0);
    }

    // A huge VMA that starts 1 MiB off a 2 MiB boundary: only the inner block is huge.
    let x = 0x8000_0000u64;
    let mut s = Sim::new();
    s.mmap_fixed(x + M, 4 * M, RW, true);
    s.cpu_fill(x + M, x + M + K64, P, |a| tag(a, 1));
    assert_eq!(s.mm.pte(x + M).map(|p| p.order), Some(0));
    assert_eq!(s.dev_read(x + M), Ok(tag(x + M, 1)));
    assert_eq!(s.range(x + M).size(), K64);
    assert_eq!(s.dev_read(x + M2 + 8), Ok(0));
    assert_eq!(s.range(x + M2).size(), M2);
    assert_eq!(s.entries(x + M2).len(), 1);
    assert_eq!(s.dev_read(x + 2 * M2 + 8), Ok(0));
    assert_eq!(s.range(x + 2 * M2).size(), P);
    assert_eq!(s.dma_orders(), orders(&[(0, 17), (HUGE_ORDER, 1)]));
}

// ---- coherence ----------------------------------------------------------------------------

#[test]
fn cpu_and_device_writes_interleaved_are_seen_by_the_other_side() {
    // This device has no memory of its own: its atomics work on system memory only where the
    // atomic policy is `Device` and the device supports them there.
    let mut cfg = SvmConfig::new(0, 1 << 47);
    cfg.policy.atomics_on_sysmem = true;
    let mut s = Sim::with_config(cfg);
    let d = s.mmap(4 * M, RW, false);
    let dev_atomics = gpusvm::policy::AttrUpdate {
        atomic: Some(gpusvm::policy::AtomicPolicy::Device),
        ..Default::default()
    };
    s.gpu.svm.set_attrs(d, 4 * M, &dev_atomics).unwrap();
    s.cpu_fill(d, d + M2, K64, |a| tag(a, 0));
    assert_eq!(s.dev_read(d), Ok(tag(d, 0)));
    let st0 = s.stats();
    for i in 0..32u64 {
        let a = d + i * K64 + 8 * i;
        s.cpu_write(a, tag(a, 1)).unwrap();
        assert_eq!(s.dev_read(a), Ok(tag(a, 1)));
        s.dev_write(a + 8, tag(a + 8, 2)).unwrap();
        assert_eq!(s.cpu_read(a + 8), Ok(tag(a + 8, 2)));
        assert_eq!(s.dev_atomic_add(a + 16, 3), Ok(0));
        assert_eq!(s.cpu_read(a + 16), Ok(3));
        s.cpu_write(a + 16, 10).unwrap();
        assert_eq!(s.dev_atomic_add(a + 16, 1), Ok(10));
        assert_eq!(s.cpu_read(a + 16), Ok(11));
    }
    // All of it went through the one mapping: no more faults, no invalidation.
    let st = s.stats();
    assert_eq!(st.faults, st0.faults);
    assert_eq!(st.invalidations, st0.invalidations);
    assert_eq!(s.ranges(), vec![(d, d + M2)]);
}

// ---- munmap -------------------------------------------------------------------------------

fn partial_munmap(huge: bool) {
    let mut s = Sim::new();
    let d = s.mmap(4 * M, RW, huge);
    s.cpu_fill(d, d + M2, 16 << 10, |a| tag(a, 0));
    assert_eq!(s.dev_read(d + 8), Ok(0));
    assert_eq!(s.ranges(), vec![(d, d + M2)]);
    if huge {
        assert_eq!(s.dma_orders(), orders(&[(HUGE_ORDER, 1)]));
    } else {
        assert_eq!(s.dma_orders(), orders(&[(0, 512)]));
    }
    let r = s.range(d);

    // Punch a 64 KiB hole into the middle of the range.
    let hole = d + (256 << 10);
    s.munmap(hole, K64);
    assert_eq!(
        r.flags() & (RangeFlags::UNMAPPED | RangeFlags::PARTIAL_UNMAP),
        RangeFlags::UNMAPPED | RangeFlags::PARTIAL_UNMAP
    );
    assert_eq!(s.gpu.svm.gc_pending(), 1);
    assert_eq!(s.dma_live(), 0);
    assert_eq!(s.dev_ptes_in(d, d + M2), 0);

    // The next fault (in the surviving part) removes the old range and creates a smaller one.
    assert_eq!(s.dev_read(d + 8), Ok(0));
    assert!(r.flags().contains(RangeFlags::REMOVED));
    assert_eq!(s.gpu.svm.gc_pending(), 0);
    assert_eq!(s.ranges(), vec![(d, d + K64)]);
    assert_eq!(s.dev_read(hole + 8), Err(Error::Fault));
    assert_eq!(s.dev_read(hole + K64 + 8), Ok(0));
    assert_eq!(s.range(hole + K64).size(), K64);
    assert_eq!(s.dev_read(hole - 8), Ok(0));
    assert_eq!(s.range(hole - 8).size(), K64);
    // The next 2 MiB block is untouched by the hole: 2 MiB again.
    assert_eq!(s.dev_read(d + M2 + 8), Ok(0));
    assert_eq!(s.range(d + M2).size(), M2);

    // Every value in the surviving part reaches the device intact.
    let addrs: Vec<u64> = s.model.range(d..d + M2).map(|(a, _)| *a).collect();
    assert_eq!(addrs.len(), 128 - 4);
    for a in addrs {
        assert_eq!(s.dev_read(a), Ok(tag(a, 0)));
    }
    for (a, b) in s.ranges() {
        if a < d + M2 {
            assert!(b - a <= K64, "survivor range {a:#x}-{b:#x} is not smaller");
            assert!(b <= hole || a >= hole + K64);
        }
    }
    // After the split the survivors are backed by 4 KiB mappings only.
    let o = s.dma_orders();
    assert_eq!(
        o.get(&0).copied(),
        Some((2048 - 64) / 4 + if huge { 0 } else { 512 })
    );
    assert_eq!(
        o.get(&HUGE_ORDER).copied(),
        if huge { Some(1) } else { None }
    );
}

#[test]
fn munmap_of_part_of_a_range_refaults_smaller_ranges() {
    partial_munmap(false);
}

#[test]
fn munmap_of_part_of_a_huge_page_range_refaults_smaller_ranges() {
    partial_munmap(true);
}

#[test]
fn munmap_of_many_ranges_at_once_while_faults_continue() {
    let mut cfg = SvmConfig::new(0, 1 << 47)
        .with_chunk_sizes(&[K64, P])
        .unwrap();
    cfg.check_pages_threshold = 0;
    let mut s = Sim::with_config(cfg);
    let d = s.mmap(4 * M, RW, false);
    s.cpu_fill(d, d + 4 * M, 16 << 10, |a| tag(a, 0));
    for i in 0..64 {
        assert_eq!(s.dev_read(d + i * K64 + 8), Ok(0));
    }
    assert_eq!(s.ranges().len(), 64);
    assert_eq!(s.dma_live(), 64 * 16);
    let rs: Vec<_> = (0..64).map(|i| s.range(d + i * K64)).collect();

    // One munmap hits 31 ranges: 10 and 40 partly, 11..=39 entirely.
    let lo = d + 10 * K64 + (32 << 10);
    let hi = d + 40 * K64 + (16 << 10);
    s.munmap(lo, hi - lo);
    assert_eq!(s.gpu.svm.gc_pending(), 31);
    for (i, r) in rs.iter().enumerate() {
        let f = r.flags();
        let hit = (10..=40).contains(&i);
        assert_eq!(f.contains(RangeFlags::UNMAPPED), hit, "range {i}");
        assert_eq!(
            f.contains(RangeFlags::PARTIAL_UNMAP),
            i == 10 || i == 40,
            "range {i}"
        );
        assert_eq!(s.gpu.svm.pages_valid(r), !hit, "range {i}");
    }
    assert_eq!(s.dma_live(), 33 * 16);

    // Faults continue: a fresh buffer faults in, and its fault runs the GC.
    let e = s.mmap(K64, RW, false);
    s.dev_write(e, 1).unwrap();
    assert_eq!(s.gpu.svm.gc_pending(), 0);
    assert_eq!(s.ranges().len(), 33 + 1);
    assert_eq!(s.stats().gc_ranges, 31);
    // Ranges that were not hit are still valid and were not touched.
    assert_eq!(s.dev_read(d + 50 * K64 + 8), Ok(0));
    assert!(s.gpu.svm.pages_valid(&rs[50]));
    // The survivors of the partly unmapped ranges refault as 4 KiB ranges (their 64 KiB block
    // crosses a VMA edge now), with their data.
    assert_eq!(s.dev_read(d + 10 * K64), Ok(tag(d + 10 * K64, 0)));
    assert_eq!(s.range(d + 10 * K64).size(), P);
    assert_eq!(s.dev_read(hi), Ok(tag(hi, 0)));
    assert_eq!(s.range(hi).size(), P);
    assert_eq!(s.dev_read(hi - 8), Err(Error::Fault));

    // Unmap one range at a time while faulting around it.
    for k in 0..8u64 {
        let gone = d + (45 + 2 * k) * K64;
        let kept = gone + K64;
        s.munmap(gone, K64);
        assert_eq!(s.gpu.svm.gc_pending(), 1);
        assert_eq!(s.dev_read(kept + 8), Ok(0));
        assert_eq!(s.dev_read(gone + 8), Err(Error::Fault));
        assert_eq!(s.gpu.svm.gc_pending(), 0);
        assert!(s.gpu.svm.find(gone).is_none());
    }
    assert_eq!(s.stats().gc_ranges, 31 + 8);

    // Map the big hole again: fresh zeroes, new ranges.
    s.mmap_fixed(lo, hi - lo, RW, false);
    assert_eq!(s.dev_read(d + 20 * K64 + 8), Ok(0));
    assert_eq!(s.range(d + 20 * K64).size(), K64);
    s.dev_write(lo, 77).unwrap();
    assert_eq!(s.range(lo).size(), P);
    assert_eq!(s.cpu_read(lo), Ok(77));
}

// ---- mprotect -----------------------------------------------------------------------------

#[test]
fn mprotect_read_only_refuses_device_writes_and_keeps_reads() {
    let mut s = Sim::new();
    let d = s.mmap(M2, RW, false);
    s.cpu_fill(d, d + M2, K64, |a| tag(a, 0));
    s.dev_write(d + 8, 1).unwrap();
    let r = s.range(d);
    let zaps = s.gpu.dev.zap_count();

    s.mprotect(d, M2, RO);
    assert!(s.gpu.dev.zap_count() > zaps);
    assert_eq!(s.dev_ptes_in(d, d + M2), 0);
    assert_eq!(s.dma_live(), 0);
    assert!(!r.flags().contains(RangeFlags::UNMAPPED));
    assert_eq!(s.gpu.svm.gc_pending(), 0);

    assert_eq!(s.dev_write(d + 16, 2), Err(Error::Perm));
    assert_eq!(s.dev_ptes_in(d, d + M2), 0);
    assert_eq!(s.dma_live(), 0);
    // Reads still work, through read-only mappings.
    assert_eq!(s.dev_read(d + 8), Ok(1));
    assert_eq!(s.dev_read(d + K64), Ok(tag(d + K64, 0)));
    assert_eq!(s.dev_pte(d + 8), Some(false));
    assert_eq!(s.dma_live(), 512);
    assert!(s.all_dma_dir(DmaDirection::ToDevice));
    assert_eq!(s.dev_write(d + 8, 3), Err(Error::Perm));
    assert_eq!(s.dev_atomic_add(d + 8, 1), Err(Error::Perm));
    assert_eq!(s.cpu_write(d + 8, 4), Err(Error::Perm));
    assert_eq!(s.dev_read(d + 8), Ok(1));
    assert!(gpusvm::heap::Arc::ptr_eq(&r, &s.range(d)), "same range");

    s.mprotect(d, M2, RW);
    assert_eq!(s.dev_ptes_in(d, d + M2), 0);
    s.dev_write(d + 8, 5).unwrap();
    assert_eq!(s.dev_pte(d + 8), Some(true));
    assert!(s.all_dma_dir(DmaDirection::Bidirectional));
    assert_eq!(s.cpu_read(d + 8), Ok(5));
    s.cpu_write(d + 16, 6).unwrap();
    assert_eq!(s.dev_read(d + 16), Ok(6));
    let st = s.stats();
    assert_eq!(st.ranges_created, 1);
    assert_eq!(st.faults_write, 4, "{st:?}");
}

// ---- madvise ------------------------------------------------------------------------------

#[test]
fn madvise_dontneed_gives_the_device_fresh_zero_pages() {
    let mut s = Sim::new();
    let d = s.mmap(4 * M, RW, false);
    s.cpu_fill(d, d + M2, 16 << 10, |a| tag(a, 0));
    assert_eq!(s.dev_read(d + 8), Ok(0));
    let old = s.mm.pte(d + K64).unwrap().pfn;
    let r = s.range(d);

    s.dontneed(d + K64, 2 * K64);
    assert_eq!(s.dev_ptes_in(d, d + M2), 0);
    assert_eq!(s.dma_live(), 0);
    assert!(s.mm.pte(d + K64).is_none());
    assert!(!r.flags().contains(RangeFlags::UNMAPPED));
    assert_eq!(s.gpu.svm.gc_pending(), 0);

    assert_eq!(s.dev_read(d + K64), Ok(0));
    assert_ne!(s.mm.pte(d + K64).unwrap().pfn, old);
    assert_eq!(s.dev_read(d + K64 + (16 << 10)), Ok(0));
    assert_eq!(s.dev_read(d), Ok(tag(d, 0)));
    assert_eq!(s.dev_read(d + 3 * K64), Ok(tag(d + 3 * K64, 0)));
    assert!(gpusvm::heap::Arc::ptr_eq(&r, &s.range(d)), "same range");
    // CPU writes into the fresh pages reach the device.
    s.cpu_write(d + K64 + 8, 5).unwrap();
    assert_eq!(s.dev_read(d + K64 + 8), Ok(5));
    assert_eq!(s.dma_live(), 512);
}

#[test]
fn madvise_dontneed_inside_a_huge_page() {
    let mut s = Sim::new();
    let h = s.mmap(M2, RW, true);
    s.cpu_fill(h, h + M2, 16 << 10, |a| tag(a, 0));
    assert_eq!(s.dev_read(h + 8), Ok(0));
    assert_eq!(s.dma_orders(), orders(&[(HUGE_ORDER, 1)]));
    s.dontneed(h + K64, K64);
    assert_eq!(s.dma_live(), 0);
    assert_eq!(s.dev_read(h + K64), Ok(0));
    assert_eq!(s.dev_read(h), Ok(tag(h, 0)));
    assert_eq!(s.dev_read(h + 2 * K64), Ok(tag(h + 2 * K64, 0)));
    // The huge mapping was split: the range is now mapped page by page.
    assert_eq!(s.dma_orders(), orders(&[(0, 512)]));
}

// ---- fork ---------------------------------------------------------------------------------

fn fork_cow(huge: bool) {
    let mut s = Sim::new();
    let d = s.mmap(4 * M, RW, huge);
    let (a, b) = (d + 8, d + K64);
    s.cpu_write(a, 1).unwrap();
    s.cpu_write(b, 2).unwrap();
    assert_eq!(s.dev_read(a), Ok(1));
    let old = s.mm.pte(a).unwrap().pfn;

    // fork write-protects the parent: the device mappings go.
    let child = s.fork();
    assert_eq!(s.dev_ptes_in(d, d + M2), 0);
    assert_eq!(s.dma_live(), 0);
    // Copy-on-write break in the parent: it gets a new frame with the new value.
    s.cpu_write(a, 10).unwrap();
    assert_ne!(s.mm.pte(a).unwrap().pfn, old);
    assert_eq!(child.read_u64(a), Ok(1));
    // The device sees the parent's new value (never the old frame, which the child keeps).
    let retries = s.stats().retries;
    assert_eq!(s.dev_read(a), Ok(10));
    // Its writable collection broke copy-on-write of the other pages of the range while it
    // ran: at least one collection was dropped and retried.
    assert!(s.stats().retries > retries, "{:?}", s.stats());
    assert_eq!(s.dev_read(b), Ok(2));
    // The child's writes stay in the child.
    child.write_u64(b, 777).unwrap();
    assert_eq!(s.dev_read(b), Ok(2));
    s.dev_write(b, 3).unwrap();
    assert_eq!(child.read_u64(b), Ok(777));
    assert_eq!(s.cpu_read(b), Ok(3));
    s.cpu_write(a, 11).unwrap();
    assert_eq!(s.dev_read(a), Ok(11));
    assert_eq!(child.read_u64(a), Ok(1));
    // No device mapping reaches a frame the parent does not map (checked every step), and the
    // parent's pages are all private again.
    for p in (d..d + M2).step_by(P as usize) {
        let pte = s.mm.pte(p).unwrap();
        assert!(pte.writable && !pte.cow, "page {p:#x}");
    }
}

#[test]
fn fork_then_parent_write_device_sees_the_parent_copy() {
    fork_cow(false);
}

#[test]
fn fork_of_huge_pages_then_parent_write_device_sees_the_parent_copy() {
    fork_cow(true);
}
