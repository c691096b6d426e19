//! Partial unmaps of memory the device has bound: the front, the middle or the back of a range,
//! and an unmap across several ranges. The unmap zaps and unmaps at once; the garbage collector
//! later evicts the surviving part of a range to RAM and removes the range; a new fault builds
//! smaller ranges inside what is left.

use crate::harness::*;
use gpusvm::range::RangeFlags;
use gpusvm::Error;

/// The flags of the range of device `id` starting at `start`.
fn flags_at(m: &Machine, id: u32, start: u64) -> RangeFlags {
    m.range_flags(id)
        .into_iter()
        .find(|r| r.0 == start)
        .map(|r| r.2)
        .unwrap_or_else(|| panic!("no range at {start:#x}"))
}

/// Live pages of each live allocation of device 0's memory, in address order.
fn live_pages(m: &Machine) -> Vec<usize> {
    let mut a = m.g(0).svm.pagemap().unwrap().allocations().unwrap();
    a.sort_by_key(|x| x.va().0);
    a.iter().map(|x| x.live_pages()).collect()
}

/// xe_exec_system_allocator `partial-munmap-cpu-fault` (and hmm-tests
/// `migrate_partial_unmap_fault` at offset 0): the front half of a 2 MiB range in device memory
/// is unmapped. The device mappings of the whole range go at once; the range is marked
/// unmapped and partially unmapped; the surviving half stays in device memory until the CPU
/// touches it (it comes back as one allocation window clamped to the VMA); the next device
/// fault collects the old range and builds a 64 KiB one in the survivor.
#[test]
fn partial_munmap_front() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_write(0, buf + 8, 2);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    let s0 = m.stats(0);

    m.munmap(buf, M);
    assert_eq!(m.dev_ptes(0, buf, buf + M2), 0);
    let f = flags_at(&m, 0, buf);
    assert!(
        f.contains(RangeFlags::UNMAPPED | RangeFlags::PARTIAL_UNMAP),
        "{f:?}"
    );
    assert!(m.all_at(buf + M, buf + M2, Loc::Dev(0)));
    assert_eq!(m.live_allocs(0), 1);
    assert_eq!(
        live_pages(&m),
        vec![256],
        "the unmapped half's device pages were freed; the allocation lives on"
    );

    m.cpu_verify(buf + M, buf + M2);
    assert!(m.all_at(buf + M, buf + M2, Loc::Ram));
    assert_eq!(m.live_allocs(0), 0);
    let pm = m.g(0).svm.pagemap().unwrap();
    assert_eq!(pm.cpu_fault_migrations(), (1, M as usize));

    m.dev_read(0, buf + M + 8 * P);
    let s1 = m.stats(0);
    assert_eq!(s1.gc_ranges, s0.gc_ranges + 1);
    assert_eq!(m.ranges(0), vec![(buf + M, buf + M + K64)]);
    assert_eq!(m.loc(buf + M), Loc::Dev(0));
    assert_eq!(m.try_dev_read(0, buf), Err(Error::Fault));
    m.dev_verify(0, buf + M, buf + M2);
}

/// xe_exec_system_allocator `partial-middle-munmap-no-cpu-fault` (hmm-tests
/// `migrate_partial_unmap_fault` at offset 512 KiB): the middle 1 MiB of a 2 MiB range in
/// device memory is unmapped and only the device touches the rest. The fault's garbage
/// collection evicts both survivors to RAM (SPEC §5) before removing the range; new 64 KiB
/// ranges then form inside each surviving VMA.
#[test]
fn partial_munmap_middle() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    m.dev_fill(0, buf, buf + M2, 4 * P, 1);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    let s0 = m.stats(0);

    let (hole, hole_end) = (buf + 512 * 1024, buf + 1536 * 1024);
    m.munmap(hole, M);
    assert!(flags_at(&m, 0, buf).contains(RangeFlags::PARTIAL_UNMAP));
    assert_eq!(m.dev_ptes(0, buf, buf + M2), 0);
    assert_eq!(live_pages(&m), vec![256]);

    m.dev_read(0, buf + 8 * P);
    let s1 = m.stats(0);
    assert_eq!(s1.gc_ranges, s0.gc_ranges + 1);
    assert_eq!(
        s1.evictions,
        s0.evictions + 1,
        "survivors evicted by the GC"
    );
    assert_eq!(s1.bytes_to_ram - s0.bytes_to_ram, M as usize);
    assert_eq!(m.ranges(0), vec![(buf, buf + K64)]);
    assert_eq!(m.loc(buf), Loc::Dev(0));
    assert!(m.all_at(buf + K64, hole, Loc::Ram));
    assert!(m.all_at(hole_end, buf + M2, Loc::Ram));
    m.dev_verify(0, buf, hole);
    m.dev_verify(0, hole_end, buf + M2);
    for (s, e) in m.ranges(0) {
        assert!(
            e <= hole || s >= hole_end,
            "range [{s:#x}, {e:#x}) in the hole"
        );
        assert_eq!(e - s, K64);
    }
    assert_eq!(m.try_dev_read(0, hole + P), Err(Error::Fault));
    m.cpu_verify(buf, buf + M2);
}

/// xe_exec_system_allocator `partial-munmap-no-cpu-fault` on `mmap-huge` memory (hmm-tests
/// `migrate_partial_unmap_fault` at offset 1 MiB, in RAM): the back half of a THP-backed range
/// bound from system memory (one 2 MiB DMA mapping) is unmapped. The DMA mapping goes at once,
/// the huge page is split, and the device remaps the front with 4 KiB DMA mappings.
#[test]
fn partial_munmap_back_huge() {
    let mut m = Machine::new(&[]);
    m.join(0, 0);
    let buf = m.mmap_huge(M2);
    m.cpu_fill(buf, buf + M2, 8 * P, 1);
    m.dev_verify(0, buf, buf + M2);
    let dma = m.dma_live(0);
    assert_eq!(dma.len(), 1);
    assert_eq!(dma[0].order, 9);

    m.munmap(buf + M, M);
    assert!(
        m.dma_live(0).is_empty(),
        "the 2 MiB DMA mapping went with the unmap"
    );
    assert_eq!(m.procs[0].mm.pte(buf).unwrap().order, 0, "huge page split");
    m.dev_verify(0, buf, buf + M);
    let dma = m.dma_live(0);
    assert!(!dma.is_empty() && dma.iter().all(|d| d.order == 0));
    assert_eq!(m.dev_ptes(0, buf + M, buf + M2), 0);
    for (_, e) in m.ranges(0) {
        assert!(e <= buf + M);
    }
    m.cpu_verify(buf, buf + M);
}

/// xe_exec_system_allocator partial unmaps across allocations (hmm-tests `migrate_multiple`
/// followed by a partial unmap): one unmap covers the back of one 2 MiB device range, two whole
/// ranges and the front of a fourth. The two whole ranges' device memory is freed by the unmap
/// itself; the garbage collector evicts the two survivors and removes all four ranges.
#[test]
fn munmap_across_ranges() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(4 * M2);
    for i in 0..4 {
        m.dev_fill(0, buf + i * M2, buf + (i + 1) * M2, 16 * P, i + 1);
    }
    assert_eq!(m.ranges(0).len(), 4);
    assert_eq!(m.live_allocs(0), 4);
    let s0 = m.stats(0);

    m.munmap(buf + M, 6 * M);
    assert_eq!(m.live_allocs(0), 2, "the two whole ranges' memory is freed");
    assert_eq!(m.vram_used(0), 1024);
    assert_eq!(live_pages(&m), vec![256, 256]);
    let unmapped = m
        .range_flags(0)
        .iter()
        .filter(|r| r.2.contains(RangeFlags::UNMAPPED))
        .count();
    assert_eq!(unmapped, 4);
    assert_eq!(m.dev_ptes(0, buf, buf + 4 * M2), 0);

    let n = m.g(0).svm.gc_run();
    m.check("gc");
    assert_eq!(n, 4);
    let s1 = m.stats(0);
    assert_eq!(s1.gc_ranges, s0.gc_ranges + 4);
    assert_eq!(s1.evictions, s0.evictions + 2);
    assert!(m.ranges(0).is_empty());
    assert_eq!(m.live_allocs(0), 0);
    assert!(m.all_at(buf, buf + M, Loc::Ram));
    assert!(m.all_at(buf + 7 * M, buf + 8 * M, Loc::Ram));
    m.dev_verify(0, buf, buf + M);
    m.dev_verify(0, buf + 7 * M, buf + 8 * M);
    assert_eq!(m.ranges(0).len(), 32);
    assert_eq!(
        m.live_allocs(0),
        32,
        "each new 64 KiB range migrated back in"
    );
    m.cpu_verify(buf, buf + 4 * M2);
}
