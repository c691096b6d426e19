//! Explicit migration to device memory and back (SPEC §7): the hmm-tests `migrate*` family on
//! plain (not huge) anonymous memory, and ranges whose pages are of mixed kinds.

use crate::harness::*;
use gpusvm::migrate::{self, MigrateDetails};
use gpusvm::policy::PrefetchLoc;

/// hmm-tests `migrate`: private anonymous memory the CPU initialised is migrated to device
/// memory. Every page is then device-resident (the CPU page table holds device-private entries
/// of the device's pagemap), the device reads it locally without any DMA mapping, and the data
/// is intact.
#[test]
fn migrate() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M);
    m.cpu_fill(buf, buf + M, P, 1);
    m.prefetch(0, buf, M, PrefetchLoc::Device).unwrap();
    assert!(m.all_at(buf, buf + M, Loc::Dev(0)));
    let s = m.stats(0);
    assert_eq!(s.migrations_to_devmem, 16, "sixteen 64 KiB ranges");
    assert_eq!(s.bytes_to_devmem, M as usize);
    assert_eq!(m.vram_used(0), 256);
    m.dev_verify(0, buf, buf + M);
    assert!(
        m.dma_live(0).is_empty(),
        "device memory needs no DMA mapping"
    );
    assert_eq!(m.dev_ptes(0, buf, buf + M), 256);
    assert_eq!(m.world.live_frames(), 0, "the RAM copies were freed");
}

/// hmm-tests `migrate_fault`: after a migration to device memory the CPU reads every page back
/// (each CPU fault migrates the faulting allocation's window), then the buffer is migrated
/// again and the device reads it.
#[test]
fn migrate_fault() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M);
    m.cpu_fill(buf, buf + M, P, 1);
    m.prefetch(0, buf, M, PrefetchLoc::Device).unwrap();
    m.cpu_verify(buf, buf + M);
    assert!(m.all_at(buf, buf + M, Loc::Ram));
    let pm = m.g(0).svm.pagemap().unwrap();
    assert_eq!(
        pm.cpu_fault_migrations(),
        (16, M as usize),
        "one per 64 KiB allocation"
    );
    assert_eq!(m.live_allocs(0), 0);
    assert_eq!(
        m.dev_ptes(0, buf, buf + M),
        0,
        "the device mappings were invalidated"
    );
    m.prefetch(0, buf, M, PrefetchLoc::Device).unwrap();
    m.dev_verify(0, buf, buf + M);
    assert!(m.all_at(buf, buf + M, Loc::Dev(0)));
}

/// hmm-tests `migrate_multiple`: the same buffer goes to device memory and back many times,
/// with the CPU and the device both writing in between. Each trip moves the data intact, frees
/// what it leaves, and device memory is released exactly once per allocation.
#[test]
fn migrate_multiple() {
    let mut m = Machine::new(&[]);
    m.join(0, 4096);
    let buf = m.mmap(M2);
    for k in 0..6u64 {
        m.cpu_fill(buf, buf + M2, 32 * P, 2 * k + 1);
        m.prefetch(0, buf, M2, PrefetchLoc::Device).unwrap();
        assert!(m.all_at(buf, buf + M2, Loc::Dev(0)), "trip {k}");
        m.dev_fill(0, buf + 8, buf + M2, 64 * P, 2 * k + 2);
        m.cpu_verify(buf, buf + M2);
        assert!(m.all_at(buf, buf + M2, Loc::Ram), "trip {k}");
        assert_eq!(m.live_allocs(0), 0);
    }
    let s = m.stats(0);
    assert_eq!(s.migrations_to_devmem, 6);
    let (allocs, releases) = m.g(0).dev.vram_counts();
    assert_eq!((allocs, releases), (6, 6));
    assert_eq!(m.g(0).svm.pagemap().unwrap().released_allocations(), 6);
}

/// A range whose pages are of different kinds — half in device 0's memory, half in RAM — the
/// case drm_gpusvm refuses without `allow_mixed` (SPEC §3; the nearest hmm-tests case is
/// `mixedmap`, a mirror over pages of different kinds). Device 1 (linked, no memory) faulting
/// it gets `NotSupported` from the collection, evicts the range to RAM and maps it from there;
/// device 0 faulting a second such range finds it partly resident (`Busy`), evicts it and
/// migrates it whole.
#[test]
fn mixed_residency() {
    let mut m = Machine::new(&[(0, 1)]);
    m.join(0, 4096);
    m.join(1, 0);
    let view = m.mm().view(usize::MAX);
    let pm = m.g(0).svm.pagemap().unwrap();
    let [a, b] = [0; 2].map(|_| m.mmap(M2));
    for x in [a, b] {
        m.cpu_fill(x, x + M2, P, 1);
        let r = m.step("migrate half", |_| {
            migrate::to_devmem(&view, &pm, x, x + M, &MigrateDetails::default())
        });
        assert_eq!(r.unwrap().pages, 256);
        assert!(m.all_at(x, x + M, Loc::Dev(0)) && m.all_at(x + M, x + M2, Loc::Ram));
    }

    m.dev_verify(1, a, a + M2);
    assert!(
        m.all_at(a, a + M2, Loc::Ram),
        "mixed: evicted, then mapped from RAM"
    );
    assert_eq!(m.stats(1).evictions, 1);
    assert!(m.dma_live(1).iter().all(|d| !d.peer));
    assert_eq!(m.dma_live(1).len(), 512);

    let s0 = m.stats(0);
    m.dev_verify(0, b, b + M2);
    let s1 = m.stats(0);
    assert!(
        m.all_at(b, b + M2, Loc::Dev(0)),
        "partly resident: evicted, migrated whole"
    );
    assert_eq!(s1.evictions, s0.evictions + 1);
    assert_eq!(s1.migrations_to_devmem, s0.migrations_to_devmem + 1);
    assert_eq!(m.live_allocs(0), 1);
    m.cpu_verify(a, a + M2);
    m.cpu_verify(b, b + M2);
}
