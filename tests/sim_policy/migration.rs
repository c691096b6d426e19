//! When pages migrate: the migration policy (`SystemPagesOnly` / `AllPages`), the size
//! threshold and "migrate once".

use crate::rig::*;
use gpusvm::platform::{PagemapId, VmaFlags};
use gpusvm::policy::{AtomicPolicy, Attrs, MigrationPolicy, PreferredLoc};
use gpusvm::range::RangeFlags;

// ---- migration policy --------------------------------------------------------------------

/// `SystemPagesOnly`: a range already holding (peer) device pages is left where it is, a
/// range of system pages migrates; with `AllPages` the peer pages move.
#[test]
fn migration_policy_system_pages_only() {
    let mut r = three_devices();
    let buf = r.mmap(3 * M2);
    r.fill(buf, 3 * M2, 0x88);
    let (peer_all, peer_sys, sys) = (buf, buf + M2, buf + 2 * M2);
    // B pulls the first two ranges into its memory.
    r.dev_read(1, peer_all).expect("B reads");
    r.dev_read(1, peer_sys).expect("B reads");
    assert_eq!(r.loc(peer_all), Some(PagemapId(1)));
    assert_eq!(r.loc(peer_sys), Some(PagemapId(1)));
    let svm = r.g(0).svm.clone();
    let here = pref(PreferredLoc::Pagemap(PagemapId(0)));
    svm.set_attrs(buf, 3 * M2, &here).expect("set_attrs");
    svm.set_attrs(
        peer_sys,
        2 * M2,
        &migration(MigrationPolicy::SystemPagesOnly),
    )
    .expect("set_attrs");
    r.check("set_attrs migration");
    assert_eq!(
        svm.attrs_at(sys),
        Attrs {
            preferred: PreferredLoc::Pagemap(PagemapId(0)),
            migration: MigrationPolicy::SystemPagesOnly,
            atomic: AtomicPolicy::Undefined,
        }
    );

    let m0 = r.stats(0).migrations_to_devmem;
    r.dev_read(0, peer_sys).expect("A reads");
    assert_eq!(r.loc(peer_sys), Some(PagemapId(1)), "device pages stay");
    assert_eq!(r.stats(0).migrations_to_devmem, m0, "not migrated");

    r.dev_read(0, sys).expect("A reads");
    assert_eq!(r.loc(sys), Some(PagemapId(0)), "system pages migrate");
    assert_eq!(r.stats(0).migrations_to_devmem, m0 + 1);

    r.dev_read(0, peer_all).expect("A reads");
    assert_eq!(
        r.loc(peer_all),
        Some(PagemapId(0)),
        "all pages: peer pages move"
    );
    assert_eq!(r.stats(0).migrations_to_devmem, m0 + 2);

    // Data intact everywhere.
    r.dev_write(0, peer_sys + 8, 1).expect("A writes P2P");
    assert_eq!(r.dev_read(1, peer_sys + 8), Ok(1));
    for i in 0..6 {
        r.cpu_read(buf + i * M);
    }
}

// ---- size threshold and "migrate once" ---------------------------------------------------

/// A 16 KiB allocation gets 4 KiB ranges, below the 64 KiB threshold: it stays in system
/// memory. An atomic (device memory required) ignores the threshold.
#[test]
fn small_allocation_below_threshold_stays_in_ram() {
    let mut r = one_device(4096);
    let buf = r.mmap(4 * P);
    r.fill(buf, 4 * P, 0xcc);
    for i in 0..4 {
        r.dev_read(0, buf + i * P).expect("device read");
        r.dev_write(0, buf + i * P + 8, i).expect("device write");
    }
    let ranges = r.ranges(0);
    assert_eq!(ranges.len(), 4, "{ranges:?}");
    assert!(ranges.iter().all(|(s, e, _)| e - s == P));
    for i in 0..4 {
        assert_eq!(r.loc(buf + i * P), None);
    }
    assert_eq!(r.stats(0).migrations_to_devmem, 0);
    // A 64 KiB allocation (at the threshold) migrates.
    let b64 = r.mmap(K64);
    r.fill(b64, K64, 0xcd);
    r.dev_read(0, b64).expect("device read");
    assert_eq!(r.loc(b64), Some(PagemapId(0)));
    assert_eq!(r.stats(0).migrations_to_devmem, 1);
    // An atomic on a small range needs device memory regardless of size.
    let small = r.mmap(P);
    r.fill(small, P, 0xce);
    r.dev_atomic(0, small, 1).expect("atomic");
    assert_eq!(r.loc(small), Some(PagemapId(0)));
}

/// Invalidate a range's device mappings without removing it (an mprotect round trip).
fn drop_mappings(r: &mut Rig, start: u64, len: u64) {
    r.step("mprotect ro", |r| {
        r.mm.mprotect(start, len, VmaFlags::READ).expect("mprotect")
    });
    r.step("mprotect rw", |r| {
        r.mm.mprotect(start, len, RW).expect("mprotect")
    });
}

/// "Migrate once": a range whose migration failed is not retried on its next fault, unless an
/// atomic demands device memory.
#[test]
fn migrate_once_unless_atomic_demands_devmem() {
    for inject in ["alloc", "copy"] {
        let mut r = one_device(4096);
        let buf = r.mmap(M2);
        r.fill(buf, M2, 0xdd);
        match inject {
            "alloc" => r.g(0).dev.inject_alloc_fail_at(1),
            _ => r.g(0).dev.inject_copy_fail_at(1, 1),
        }
        r.dev_read(0, buf).expect("falls back to system memory");
        let s = r.stats(0);
        assert_eq!(s.migrate_failures, 1, "{inject}: {s:?}");
        assert_eq!(r.loc(buf), None, "{inject}: fell back to system memory");
        assert_eq!(s.migrations_to_devmem, 0, "{inject}: {s:?}");
        let flags = r.ranges(0)[0].2;
        assert!(flags.contains(RangeFlags::MIGRATE_FAILED), "{flags:?}");
        assert!(
            r.g(0).dev.vram_used().is_empty(),
            "{inject}: nothing leaked"
        );
        r.cpu_read(buf + 3 * P);

        // The next fault does not try again.
        drop_mappings(&mut r, buf, M2);
        assert_eq!(r.dev_ptes(0, buf, buf + M2), 0);
        let f = r.stats(0).faults;
        r.dev_read(0, buf + P).expect("device read");
        let s = r.stats(0);
        assert_eq!(s.faults, f + 1, "refaulted");
        assert_eq!(s.migrate_failures, 1, "{inject}: not retried");
        assert_eq!(s.migrations_to_devmem, 0);
        assert_eq!(r.loc(buf), None);

        // An atomic demands device memory: it migrates despite the history.
        drop_mappings(&mut r, buf, M2);
        r.dev_atomic(0, buf + 16, 2).expect("atomic");
        let s = r.stats(0);
        assert_eq!(s.migrations_to_devmem, 1, "{inject}: {s:?}");
        assert_eq!(s.migrate_failures, 1);
        assert_eq!(r.loc(buf), Some(PagemapId(0)));
        r.cpu_read(buf + 16);
    }
}
