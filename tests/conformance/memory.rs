//! Plain process memory on the device: anonymous reads and writes, protections, malloc / mmap /
//! C++ new style allocations, freeing memory while it is bound, remapping, teardown.

use crate::harness::*;
use gpusvm::platform::DmaDirection;
use gpusvm::range::RangeFlags;
use gpusvm::Error;

/// hmm-tests `anon_read`: the CPU initialises private anonymous memory and the device reads it
/// through the mirror. Each range faults exactly once (later reads hit the device page table),
/// the pages stay in RAM (the device has no memory of its own) and every page is DMA-mapped once.
#[test]
fn anon_read() {
    let mut m = Machine::new(&[]);
    m.join(0, 0);
    let buf = m.mmap(M);
    m.cpu_fill(buf, buf + M, P, 1);
    m.cpu_fill(buf + 8, buf + M, 4 * P, 2);
    for a in (buf..buf + M).step_by(P as usize) {
        m.dev_read(0, a);
    }
    m.dev_verify(0, buf, buf + M);
    let ranges = m.ranges(0);
    assert_eq!(ranges.len(), 16, "a 1 MiB VMA is mirrored in 64 KiB chunks");
    assert!(ranges.iter().all(|(s, e)| e - s == K64));
    let s = m.stats(0);
    assert_eq!(s.faults, 16, "one fault per range");
    assert_eq!(s.faults_read, 16);
    assert_eq!(s.migrations_to_devmem, 0);
    assert!(m.all_at(buf, buf + M, Loc::Ram));
    assert_eq!(m.dev_ptes(0, buf, buf + M), 256);
    let dma = m.dma_live(0);
    assert_eq!(dma.len(), 256, "one DMA mapping per 4 KiB page");
    assert!(dma.iter().all(|d| !d.peer && d.order == 0));
}

/// hmm-tests `anon_write`: the device writes private anonymous memory the CPU never touched and
/// the CPU sees every value. Unpopulated memory is mirrored page by page (a 64 KiB chunk needs
/// its CPU pages present), so every page faults once; the mappings are bidirectional and
/// writable, and CPU reads leave them in place.
#[test]
fn anon_write() {
    let mut m = Machine::new(&[]);
    m.join(0, 0);
    let buf = m.mmap(M);
    m.dev_fill(0, buf, buf + M, P, 2);
    m.dev_fill(0, buf + 16, buf + M, 8 * P, 3);
    m.cpu_verify(buf, buf + M);
    assert_eq!(m.ranges(0).len(), 256);
    assert_eq!(m.stats(0).faults_write, 256, "one write fault per page");
    assert!(m
        .dma_live(0)
        .iter()
        .all(|d| d.dir == DmaDirection::Bidirectional));
    assert_eq!(m.dev_pte(0, buf), Some(true));
    // The CPU reads did not disturb the device mappings (no invalidation for reads).
    assert_eq!(m.dev_ptes(0, buf, buf + M), 256);
}

/// hmm-tests `anon_read_prot`: memory protected with `PROT_NONE` cannot be read by the device
/// (`Fault`, nothing mapped, contents untouched); after `mprotect(PROT_READ)` the device reads
/// it through read-only mappings and a device write is refused with `Perm`.
#[test]
fn anon_read_prot() {
    let mut m = Machine::new(&[]);
    m.join(0, 0);
    let buf = m.mmap(4 * K64);
    m.cpu_fill(buf, buf + 4 * K64, P, 1);
    m.mprotect(buf, 4 * K64, NONE);
    assert_eq!(m.try_dev_read(0, buf + P), Err(Error::Fault));
    assert_eq!(m.dev_ptes(0, buf, buf + 4 * K64), 0);
    assert!(m.dma_live(0).is_empty());
    m.mprotect(buf, 4 * K64, RO);
    m.dev_verify(0, buf, buf + 4 * K64);
    assert_eq!(m.dev_pte(0, buf), Some(false), "read-only device mapping");
    assert!(m
        .dma_live(0)
        .iter()
        .all(|d| d.dir == DmaDirection::ToDevice));
    assert_eq!(m.try_dev_write(0, buf, 99), Err(Error::Perm));
    assert_eq!(
        m.cpu_read(buf),
        tag(buf, 1),
        "the refused write changed nothing"
    );
}

/// hmm-tests `anon_write_prot`: the device may read `PROT_READ` memory (zero-filled on first
/// touch) but its write is refused with `Perm`; after `mprotect(PROT_READ | PROT_WRITE)` the
/// device write goes through and the CPU sees it.
#[test]
fn anon_write_prot() {
    let mut m = Machine::new(&[]);
    m.join(0, 0);
    let buf = m.mmap_in(0, K64, RO, false);
    assert_eq!(m.dev_read(0, buf + 8), 0);
    assert_eq!(m.try_dev_write(0, buf + 8, 7), Err(Error::Perm));
    assert_eq!(
        m.dev_pte(0, buf),
        Some(false),
        "the refused write left the mapping alone"
    );
    assert!(m
        .dma_live(0)
        .iter()
        .all(|d| d.dir == DmaDirection::ToDevice));
    m.mprotect(buf, K64, RW);
    m.dev_fill(0, buf, buf + K64, P, 4);
    assert_eq!(m.dev_pte(0, buf), Some(true));
    m.cpu_verify(buf, buf + K64);
}

/// xe_exec_system_allocator `malloc`: the GPU stores into `malloc`ed memory the CPU
/// initialised. Ranges never reach past the heap VMA; 64 KiB chunks migrate to device memory
/// while the 4 KiB ranges at the heap's odd-sized tail stay in RAM (below the migration
/// threshold); the CPU reads every store.
#[test]
fn malloc() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let heap_len = M + 3 * P;
    let heap = m.mmap(heap_len);
    m.cpu_fill(heap, heap + heap_len, P, 1);
    // malloc'ed objects at odd offsets all over the heap, the last in the tail.
    let objs = [
        heap + 16,
        heap + 200 * 1024 + 48,
        heap + 640 * 1024 + 1000,
        heap + M + 2 * P + 8,
    ];
    for (i, &o) in objs.iter().enumerate() {
        let o = o & !7;
        m.dev_write(0, o, 0xA110C + i as u64);
        m.dev_write(0, o + 8, 0xB10C + i as u64);
    }
    let heap_end = heap + heap_len;
    for (s, e) in m.ranges(0) {
        assert!(
            heap <= s && e <= heap_end,
            "range [{s:#x}, {e:#x}) outside the heap"
        );
    }
    assert_eq!(m.loc(heap), Loc::Dev(0));
    assert_eq!(m.loc(heap + 200 * 1024), Loc::Dev(0));
    assert_eq!(
        m.loc(heap + M + 2 * P),
        Loc::Ram,
        "4 KiB tail range stays in RAM"
    );
    assert_eq!(m.stats(0).migrations_to_devmem, 3);
    m.cpu_verify(heap, heap_end);
    assert!(
        m.all_at(heap, heap_end, Loc::Ram),
        "the CPU pulled everything back"
    );
    assert_eq!(m.live_allocs(0), 0);
}

/// xe_exec_system_allocator `mmap`: the GPU writes a fresh 4 MiB anonymous mapping. Two 2 MiB
/// ranges are created and migrated (zero-filled, nothing to copy from); a CPU read pulls back
/// exactly the faulting 2 MiB allocation; the next GPU access migrates it again.
#[test]
fn mmap() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(2 * M2);
    m.dev_write(0, buf + 8, 1);
    m.dev_write(0, buf + M2 + 8, 2);
    assert_eq!(m.ranges(0), vec![(buf, buf + M2), (buf + M2, buf + 2 * M2)]);
    let s = m.stats(0);
    assert_eq!(
        (s.migrations_to_devmem, s.bytes_to_devmem),
        (2, 2 * M2 as usize)
    );
    assert_eq!(m.vram_used(0), 1024);
    assert_eq!(m.live_allocs(0), 2);
    assert_eq!(m.cpu_read(buf + 8), 1);
    assert!(m.all_at(buf, buf + M2, Loc::Ram));
    assert!(m.all_at(buf + M2, buf + 2 * M2, Loc::Dev(0)));
    let pm = m.g(0).svm.pagemap().unwrap();
    assert_eq!(pm.cpu_fault_migrations(), (1, M2 as usize));
    assert_eq!(m.live_allocs(0), 1);
    m.dev_read(0, buf + 8);
    assert_eq!(m.stats(0).migrations_to_devmem, 3);
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    m.cpu_verify(buf, buf + 2 * M2);
}

/// xe_exec_system_allocator `new`: objects created with C++ `new` are small and packed; the GPU
/// increments a counter in each with atomics. Atomics need device memory, so even the 4 KiB
/// ranges of the small heap (below the migration threshold) move there; the CPU then reads every
/// object's fields back.
#[test]
fn new() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let heap = m.mmap(3 * P);
    const OBJ: u64 = 48;
    let n = 3 * P / OBJ;
    for i in 0..n {
        m.procs[0].mm.write_u64(heap + i * OBJ, i).unwrap();
        m.procs[0].model.insert(heap + i * OBJ, i);
    }
    m.check("constructors");
    for i in 0..n {
        assert_eq!(m.dev_atomic(0, heap + i * OBJ + 8, 1), 0);
    }
    let s = m.stats(0);
    assert_eq!(m.ranges(0).len(), 3, "three 4 KiB ranges");
    assert_eq!(s.faults_atomic, 3);
    assert_eq!(s.migrations_to_devmem, 3);
    assert!(m.all_at(heap, heap + 3 * P, Loc::Dev(0)));
    m.cpu_verify(heap, heap + 3 * P);
    assert!(m.all_at(heap, heap + 3 * P, Loc::Ram));
    assert_eq!(m.g(0).svm.pagemap().unwrap().cpu_fault_migrations().0, 3);
    for i in (0..n).step_by(7) {
        assert_eq!(m.dev_atomic(0, heap + i * OBJ + 8, 1), 1);
    }
}

/// xe_exec_system_allocator `free`: memory is freed (munmap) while the GPU has it bound. The
/// unmap zaps the device page tables and unmaps the DMA pages at once, frees the device memory
/// the pages lived in, and marks the range unmapped; the garbage collector removes it at the
/// next fault; a later GPU access to the freed address faults.
#[test]
fn free_while_bound() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let big = m.mmap(M2);
    let small = m.mmap(4 * P);
    m.dev_fill(0, big, big + M2, K64, 1);
    m.cpu_fill(small, small + 4 * P, P, 2);
    m.dev_verify(0, small, small + 4 * P);
    assert_eq!(m.loc(big), Loc::Dev(0));
    assert_eq!(m.loc(small), Loc::Ram);
    assert_eq!(m.dma_live(0).len(), 4);
    assert_eq!(m.vram_used(0), 512);
    let gc0 = m.stats(0).gc_ranges;

    m.munmap(big, M2);
    assert_eq!(m.dev_ptes(0, big, big + M2), 0, "zapped by the unmap");
    assert_eq!(m.vram_used(0), 0, "device memory freed by the unmap");
    assert_eq!(m.live_allocs(0), 0);
    let r = m.range_flags(0);
    assert!(r
        .iter()
        .any(|&(s, _, f)| s == big && f.contains(RangeFlags::UNMAPPED)));
    m.munmap(small, 4 * P);
    assert!(m.dma_live(0).is_empty(), "DMA pages unmapped by the unmap");
    assert_eq!(m.stats(0).gc_ranges, gc0, "not collected yet");

    let other = m.mmap(K64);
    m.dev_write(0, other, 3);
    assert_eq!(
        m.stats(0).gc_ranges,
        gc0 + 5,
        "the next fault collected all five ranges"
    );
    assert_eq!(
        m.ranges(0),
        vec![(other, other + P)],
        "untouched memory: a 4 KiB range"
    );
    assert_eq!(m.try_dev_read(0, big), Err(Error::Fault));
    assert_eq!(m.try_dev_read(0, small), Err(Error::Fault));
    assert_eq!(m.g(0).svm.counts().1, 1);
}

/// xe_exec_system_allocator `mmap-remap` (and hmm-tests `migrate_remap_fault`): memory the GPU
/// wrote into device memory is unmapped and a new mapping is placed at the same address. The
/// GPU sees the new, zeroed memory — never the stale device pages — and the old range is
/// collected before the new one is created.
#[test]
fn mmap_remap() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    m.dev_fill(0, buf, buf + M2, 8 * P, 1);
    let s0 = m.stats(0);
    m.munmap(buf, M2);
    m.mmap_fixed(buf, M2, RW);
    for a in (buf..buf + M2).step_by(8 * P as usize) {
        assert_eq!(m.dev_read(0, a), 0, "new mapping, no stale data");
    }
    let s1 = m.stats(0);
    assert_eq!(s1.gc_ranges, s0.gc_ranges + 1);
    assert_eq!(s1.ranges_created, s0.ranges_created + 1);
    assert_eq!(m.live_allocs(0), 1, "one allocation: the new range's");
    m.cpu_write(buf + 8, 42);
    assert_eq!(m.dev_read(0, buf + 8), 42);
    m.dev_write(0, buf + 16, 43);
    m.cpu_verify(buf, buf + M2);
}

/// hmm-tests `anon_teardown`: devices are created, used and closed while their mirrors still
/// hold mappings, over and over. Closing releases every DMA mapping and device PTE; pages left
/// in a closed device's memory still come back when the CPU touches them; nothing leaks.
#[test]
fn anon_teardown() {
    let mut m = Machine::new(&[]);
    for k in 0..6u32 {
        let vram = if k % 2 == 0 { 512 } else { 0 };
        m.join(k, vram);
        let buf = m.mmap(M);
        m.cpu_fill(buf, buf + M, P, u64::from(k) + 1);
        m.dev_fill(k, buf + 8, buf + M, 8 * P, u64::from(k) + 100);
        m.dev_verify(k, buf, buf + M);
        assert!(m.stats(k).pages_committed > 0);
        if vram > 0 {
            assert_eq!(m.loc(buf), Loc::Dev(k));
        } else {
            assert!(!m.dma_live(k).is_empty());
        }
        m.close(k);
        assert_eq!(m.g(k).read_u64(buf), Err(Error::Closed));
        m.cpu_verify(buf, buf + M);
        assert!(m.all_at(buf, buf + M, Loc::Ram));
        m.munmap(buf, M);
        m.teardown(k);
    }
    assert_eq!(m.world.live_frames(), 0, "every frame went back");
}
