//! Prefetch: to the device and back, after munmap and re-mmap at the same address, and into a
//! peer's pagemap.

use crate::rig::*;
use gpusvm::platform::PagemapId;
use gpusvm::policy::PrefetchLoc;

// ---- prefetch ----------------------------------------------------------------------------

/// Prefetch 8 MiB to the device: the following device faults only bind (no migration, at most
/// one fault per range); prefetch back to system memory brings every page back.
#[test]
fn prefetch_large_interval_then_faults_hit() {
    let mut r = one_device(4096);
    let len = 8 * M;
    let buf = r.mmap(len);
    r.fill(buf, len, 0xbb);
    r.g(0)
        .svm
        .prefetch(buf, len, PrefetchLoc::Device)
        .expect("prefetch");
    r.check("prefetch device");
    let s = r.stats(0);
    assert_eq!(s.prefetches, 1);
    assert_eq!(s.migrations_to_devmem, 4, "{s:?}");
    assert_eq!(s.bytes_to_devmem, len as usize);
    assert_eq!(s.faults, 0);
    let nranges = r.ranges(0).len();
    assert_eq!(nranges, 4);
    for i in 0..(len / K64) {
        assert_eq!(r.loc(buf + i * K64), Some(PagemapId(0)));
    }
    for i in 0..(len / K64) {
        r.dev_read(0, buf + i * K64).expect("device read");
    }
    let s2 = r.stats(0);
    assert_eq!(
        s2.migrations_to_devmem, s.migrations_to_devmem,
        "no migration"
    );
    assert!(s2.faults <= nranges, "at most one fault per range: {s2:?}");

    r.g(0)
        .svm
        .prefetch(buf, len, PrefetchLoc::System)
        .expect("prefetch");
    r.check("prefetch system");
    for i in 0..(len / K64) {
        assert_eq!(r.loc(buf + i * K64), None);
    }
    let s3 = r.stats(0);
    assert_eq!(s3.prefetches, 2);
    assert_eq!(s3.bytes_to_ram, len as usize, "{s3:?}");
    assert!(r.g(0).dev.vram_used().is_empty());
    for i in 0..8 {
        r.cpu_read(buf + i * M);
    }
}

/// A prefetch over memory re-mapped at the address of a range that was unmapped since the last
/// GC run (no fault ran it in between) removes that range first and migrates the new pages
/// (found by the crate-backed Linux module: hmm-tests `migrate_multiple` maps, migrates and
/// unmaps the same address ten times; the stale range made the prefetch fail with `Again`).
#[test]
fn prefetch_after_munmap_and_remap_at_the_same_address() {
    let mut r = one_device(4096);
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0xc1);
    r.g(0)
        .svm
        .prefetch(buf, M2, PrefetchLoc::Device)
        .expect("prefetch");
    r.mm.munmap(buf, M2).expect("munmap");
    r.model.retain(|&a, _| a < buf || a >= buf + M2);
    let again = r.mm.mmap_fixed(buf, M2, RW, false).expect("mmap_fixed");
    assert_eq!(again, buf);
    r.fill(buf, M2, 0xc2);
    r.g(0)
        .svm
        .prefetch(buf, M2, PrefetchLoc::Device)
        .expect("prefetch after the re-map");
    r.check("prefetch after the re-map");
    for i in 0..(M2 / K64) {
        assert_eq!(r.loc(buf + i * K64), Some(PagemapId(0)));
    }
}

/// Prefetch into a peer's pagemap over the link.
#[test]
fn prefetch_to_peer_pagemap() {
    let mut r = three_devices();
    let buf = r.mmap(M2);
    r.fill(buf, M2, 0xbc);
    r.g(0)
        .svm
        .prefetch(buf, M2, PrefetchLoc::Pagemap(PagemapId(1)))
        .expect("prefetch");
    r.check("prefetch peer");
    assert_eq!(r.loc(buf), Some(PagemapId(1)));
    let m = r.stats(0).migrations_to_devmem;
    r.dev_read(0, buf + P).expect("A reads P2P");
    r.dev_read(1, buf + 2 * P).expect("B reads locally");
    assert_eq!(r.stats(0).migrations_to_devmem, m);
    assert_eq!(r.stats(1).migrations_to_devmem, 0);
}
