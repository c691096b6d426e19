//! Transparent-huge-page-backed memory: 2 MiB CPU mappings are mirrored with one DMA mapping,
//! migrated with one copy run into naturally aligned device memory and installed as order-9
//! device pages; a failed copy of a huge page loses nothing.

use crate::harness::*;
use gpusvm::policy::PrefetchLoc;
use gpusvm::range::RangeFlags;

/// hmm-tests `anon_write_huge`: the device writes a THP-backed buffer through the mirror. Each
/// 2 MiB range is backed by one huge CPU page and DMA-mapped as a single order-9 mapping; the
/// CPU sees every value.
#[test]
fn anon_write_huge() {
    let mut m = Machine::new(&[]);
    m.join(0, 0);
    let buf = m.mmap_huge(2 * M2);
    m.dev_fill(0, buf, buf + 2 * M2, 8 * P, 1);
    assert_eq!(m.ranges(0), vec![(buf, buf + M2), (buf + M2, buf + 2 * M2)]);
    let dma = m.dma_live(0);
    assert_eq!(dma.len(), 2, "one DMA mapping per 2 MiB");
    assert!(dma.iter().all(|d| d.order == 9));
    assert_eq!(m.dev_ptes(0, buf, buf + 2 * M2), 1024);
    for a in (buf..buf + 2 * M2).step_by(64 * P as usize) {
        assert_eq!(m.procs[0].mm.pte(a).unwrap().order, 9);
    }
    assert_eq!(m.stats(0).faults, 2);
    m.cpu_verify(buf, buf + 2 * M2);
}

/// hmm-tests `migrate_anon_huge_fault`: a THP-backed buffer is migrated to device memory and
/// the CPU then faults on it. Each 2 MiB range moves in one copy command of one run into a
/// 2 MiB-aligned contiguous block of device memory and is installed as order-9 device pages;
/// the CPU fault brings the whole 2 MiB back in one migration.
#[test]
fn migrate_anon_huge_fault() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap_huge(2 * M2);
    m.cpu_fill(buf, buf + 2 * M2, 4 * P, 1);
    let (calls0, runs0) = m.g(0).dev.copy_counts();
    m.prefetch(0, buf, 2 * M2, PrefetchLoc::Device).unwrap();
    let (calls1, runs1) = m.g(0).dev.copy_counts();
    assert_eq!(
        (calls1 - calls0, runs1 - runs0),
        (2, 2),
        "one run per 2 MiB"
    );
    assert_eq!(m.stats(0).bytes_to_devmem, 2 * M2 as usize);
    for a in (buf..buf + 2 * M2).step_by(P as usize) {
        let p = m.procs[0].mm.pte(a).unwrap();
        assert!(
            p.dev.is_some() && p.order == 9,
            "order-9 device page at {a:#x}"
        );
    }
    let vram = m.g(0).dev.vram_used();
    assert_eq!(vram.len(), 1024);
    assert!(vram
        .chunks(512)
        .all(|c| c[0] % 512 == 0 && c[511] == c[0] + 511));
    m.dev_verify(0, buf, buf + 2 * M2);
    assert_eq!(m.cpu_read(buf + M2 + 4 * P), tag(buf + M2 + 4 * P, 1));
    assert!(m.all_at(buf + M2, buf + 2 * M2, Loc::Ram));
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    let pm = m.g(0).svm.pagemap().unwrap();
    assert_eq!(pm.cpu_fault_migrations(), (1, M2 as usize));
    m.cpu_verify(buf, buf + 2 * M2);
}

/// hmm-tests `migrate_anon_huge_empty` and `migrate_anon_huge_zero`: a THP region nobody
/// touched, and one the CPU only read (zero-filled), are migrated to device memory. Nothing is
/// copied from RAM for the untouched block (its device pages are zero-filled), both are
/// installed as order-9 device pages, and every read on either side returns zero.
#[test]
fn migrate_anon_huge_empty() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap_huge(2 * M2);
    let zero = buf + M2;
    for a in (zero..zero + M2).step_by(64 * P as usize) {
        assert_eq!(m.cpu_read(a), 0);
    }
    assert_eq!(m.procs[0].mm.pte(zero).unwrap().order, 9);
    assert!(m.procs[0].mm.pte(buf).is_none());
    let frames0 = m.world.live_frames();
    m.prefetch(0, buf, 2 * M2, PrefetchLoc::Device).unwrap();
    assert_eq!(
        m.world.live_frames(),
        frames0 - 512,
        "the zero page's frames were freed"
    );
    for a in (buf..buf + 2 * M2).step_by(P as usize) {
        let p = m.procs[0].mm.pte(a).unwrap();
        assert!(p.dev.is_some() && p.order == 9);
    }
    for a in (buf..buf + 2 * M2).step_by(32 * P as usize) {
        assert_eq!(m.dev_read(0, a + 8), 0);
    }
    for a in (buf..buf + 2 * M2).step_by(128 * P as usize) {
        assert_eq!(m.cpu_read(a + 16), 0);
    }
}

/// hmm-tests `migrate_anon_huge_err`: the copy of a huge page fails. The migration is all or
/// nothing: every page stays in RAM (still one huge mapping) with its data, the allocation is
/// released, and the range is marked "migrate once" failed; the device maps the huge page from
/// RAM with one order-9 DMA mapping; a later prefetch succeeds.
#[test]
fn migrate_anon_huge_err() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap_huge(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.g(0).dev.inject_copy_fail_at(1, 0);
    m.dev_verify(0, buf, buf + M2);
    let s = m.stats(0);
    assert_eq!((s.migrate_failures, s.migrations_to_devmem), (1, 0));
    assert!(m.all_at(buf, buf + M2, Loc::Ram));
    assert_eq!(
        m.procs[0].mm.pte(buf).unwrap().order,
        9,
        "still one huge page"
    );
    assert_eq!(m.live_allocs(0), 0);
    assert_eq!(m.vram_used(0), 0);
    let f = m.range_flags(0);
    assert!(f[0].2.contains(RangeFlags::MIGRATE_FAILED));
    let dma = m.dma_live(0);
    assert_eq!(dma.len(), 1);
    assert_eq!(dma[0].order, 9);

    m.prefetch(0, buf, M2, PrefetchLoc::Device).unwrap();
    assert!(m.all_at(buf, buf + M2, Loc::Dev(0)));
    assert!(m.dma_live(0).is_empty());
    m.dev_verify(0, buf, buf + M2);
    m.cpu_verify(buf, buf + M2);
}
