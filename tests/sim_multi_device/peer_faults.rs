//! Device A faults on pages resident in device B's memory, linked or not, with either copy
//! engine: by a fault and forced, and through the fault path's migration.

use crate::machine::*;
use gpusvm::migrate::MigrateDetails;
use gpusvm::Error;

// ---- device A faults on pages resident in B's memory ----------------------------------------

/// A (device 0) faults on pages that live entirely in B's memory (device 1), for one
/// combination of link and `source_peer_migrates`; then a migration to A is forced with
/// `Svm::migrate_to_devmem`.
///
/// - Linked (one owner): A's fault maps B's pages P2P, no copy; the forced migration copies
///   device → device over the link with B's engine if `source_peer_migrates`, else A's, and
///   leaves B's memory empty; B then maps A's pages P2P.
/// - Not linked: A's fault evicts B's pages (B's engine, to RAM) and migrates them in (A's
///   engine): `source_peer_migrates` plays no part; the forced migration of a range already in
///   A does nothing; a forced migration to B of pages in A is refused with `Busy` and moves
///   nothing.
fn fault_on_peer_resident(link: bool, spm: bool) {
    let links: &[(u32, u32)] = if link { &[(0, 1)] } else { &[] };
    let mut m = Machine::new(links);
    let mut ca = cfg(VRAM);
    ca.source_peer_migrates = spm;
    m.join_with(0, VRAM, ca.clone());
    let mut cb = cfg(VRAM);
    cb.source_peer_migrates = spm;
    m.join_with(1, VRAM, cb);
    assert_eq!(m.g(0).svm.owner() == m.g(1).svm.owner(), link);

    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_write(1, buf + 8, 0xB);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    let (c0, c1) = (m.copies(0), m.copies(1));
    let s0 = m.stats(0);

    m.dev_read_all(0, buf, buf + M2);
    let s0b = m.stats(0);
    if link {
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
        assert!(!m.peer_maps(0).is_empty());
        assert_eq!((m.copies(0), m.copies(1)), (c0, c1), "no copy at all");
        assert_eq!(s0b.migrations_to_devmem, s0.migrations_to_devmem);
        assert_eq!(s0b.migrate_failures, s0.migrate_failures);

        // Force A to take the pages: device → device over the link.
        let range = m.g(0).svm.find(buf).expect("A's range");
        let details = MigrateDetails {
            source_peer_migrates: spm,
            ..MigrateDetails::default()
        };
        let rep = m
            .g(0)
            .svm
            .migrate_to_devmem(&range, &details)
            .expect("migrate");
        m.check("forced device-to-device migration");
        assert_eq!(rep.pages, 512);
        assert!(!rep.already_there);
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
        if spm {
            assert_eq!(
                (m.copies(0), m.copies(1)),
                (c0, c1 + 1),
                "B's engine copied"
            );
        } else {
            assert_eq!(
                (m.copies(0), m.copies(1)),
                (c0 + 1, c1),
                "A's engine copied"
            );
        }
        assert!(m.g(1).dev.vram_used().is_empty());
        assert_eq!(m.g(1).svm.pagemap().unwrap().live_allocations(), 0);
        assert_eq!(m.stats(0).migrations_to_devmem, s0.migrations_to_devmem + 1);
        assert!(
            m.peer_maps(0).is_empty(),
            "the migration invalidated A's peer mappings"
        );
        m.dev_read_all(0, buf, buf + M2);
        assert!(m.peer_maps(0).is_empty(), "A now uses its own memory");
        m.dev_read_all(1, buf, buf + M2);
        assert!(m.peer_maps(1).iter().all(|p| dev_of(p.pfn) == 0));
        assert!(!m.peer_maps(1).is_empty());
        assert_eq!(
            m.stats(1).migrations_to_devmem,
            1,
            "B did not take them back"
        );
    } else {
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
        assert!(m.peer_maps(0).is_empty() && m.peer_maps(1).is_empty());
        assert_eq!(
            s0b.migrate_failures,
            s0.migrate_failures + 1,
            "first try: Busy"
        );
        assert_eq!(s0b.evictions, s0.evictions + 1);
        assert_eq!(s0b.migrations_to_ram, s0.migrations_to_ram + 1);
        assert_eq!(s0b.migrations_to_devmem, s0.migrations_to_devmem + 1);
        assert_eq!(m.copies(1), c1 + 1, "B's engine copied its pages to RAM");
        assert_eq!(m.copies(0), c0 + 1, "A's engine copied them in");
        assert!(m.g(1).dev.vram_used().is_empty());

        // Forcing A again: already there.
        let range = m.g(0).svm.find(buf).expect("A's range");
        let details = MigrateDetails {
            source_peer_migrates: spm,
            ..MigrateDetails::default()
        };
        let rep = m
            .g(0)
            .svm
            .migrate_to_devmem(&range, &details)
            .expect("noop");
        m.check("forced migration of a resident range");
        assert!(rep.already_there);
        assert_eq!(rep.pages, 0);
        // Forcing B: A's pages are foreign to B → Busy, nothing moves.
        let rb = m.g(1).svm.find(buf).expect("B's range");
        let before = m.frames();
        let (c0, c1) = (m.copies(0), m.copies(1));
        assert_eq!(
            m.g(1).svm.migrate_to_devmem(&rb, &details),
            Err(Error::Busy)
        );
        m.check("forced migration blocked by a foreign owner");
        assert_eq!(m.frames(), before);
        assert_eq!((m.copies(0), m.copies(1)), (c0, c1));
        m.dev_read_all(1, buf, buf + M2);
        assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    }
    m.cpu_read_all(buf, buf + M2);
}

#[test]
fn fault_on_peer_pages_linked_target_copies() {
    fault_on_peer_resident(true, false);
}

#[test]
fn fault_on_peer_pages_linked_source_copies() {
    fault_on_peer_resident(true, true);
}

#[test]
fn fault_on_peer_pages_unlinked_target_copies() {
    fault_on_peer_resident(false, false);
}

#[test]
fn fault_on_peer_pages_unlinked_source_copies() {
    fault_on_peer_resident(false, true);
}

/// The fault path itself migrates device → device: B (64 KiB chunks) holds the first 64 KiB
/// of a 2 MiB block; A (2 MiB chunks, `SvmConfig::source_peer_migrates = spm`) faults on the
/// block, whose range is then partly in B and partly in RAM, so A's placement migrates it all:
/// B's 16 pages over the link (by B's engine iff `spm`), the rest from RAM (A's engine).
/// Without a link the first attempt is `Busy`, the range is evicted and migrated from RAM.
fn fault_path_migrates_partly_peer_resident(link: bool, spm: bool) {
    let links: &[(u32, u32)] = if link { &[(0, 1)] } else { &[] };
    let mut m = Machine::new(links);
    let mut ca = cfg(VRAM);
    ca.source_peer_migrates = spm;
    m.join_with(0, VRAM, ca);
    let cb = cfg(VRAM).with_chunk_sizes(&[K64, P]).unwrap();
    m.join_with(1, VRAM, cb);

    let buf = m.mmap(M2);
    // Every page present, so that B's 64 KiB chunk qualifies (check_pages_threshold).
    m.cpu_fill(buf, buf + M2, P, 1);
    m.dev_write(1, buf + 8, 0xB);
    let want_b: Vec<Option<u32>> = (0..512).map(|i| (i < 16).then_some(1)).collect();
    assert_eq!(m.placement(buf, buf + M2), want_b);
    let (c0, c1) = (m.copies(0), m.copies(1));
    let s0 = m.stats(0);

    m.dev_read(0, buf + 8);
    let s0b = m.stats(0);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(0)));
    assert!(m.g(1).dev.vram_used().is_empty());
    assert_eq!(s0b.migrations_to_devmem, s0.migrations_to_devmem + 1);
    if link {
        assert_eq!(s0b.migrate_failures, s0.migrate_failures);
        assert_eq!(s0b.evictions, s0.evictions);
        if spm {
            assert_eq!(
                m.copies(1),
                c1 + 1,
                "B's engine copied its pages over the link"
            );
            assert_eq!(m.copies(0), c0 + 1, "A's engine copied from RAM");
        } else {
            assert_eq!(m.copies(1), c1, "B's engine idle");
            assert_eq!(
                m.copies(0),
                c0 + 1,
                "A's engine copied everything in one batch"
            );
        }
    } else {
        assert_eq!(s0b.migrate_failures, s0.migrate_failures + 1);
        assert_eq!(s0b.evictions, s0.evictions + 1);
        assert_eq!(m.copies(1), c1 + 1, "B's engine evicted to RAM");
        assert_eq!(m.copies(0), c0 + 1);
    }
    m.dev_read_all(0, buf, buf + M2);
    m.dev_read_all(1, buf, buf + K64);
    assert_eq!(
        !m.peer_maps(1).is_empty(),
        link,
        "B maps A's pages P2P iff linked"
    );
    m.cpu_read_all(buf, buf + M2);
}

#[test]
fn fault_path_peer_migration_linked_target_copies() {
    fault_path_migrates_partly_peer_resident(true, false);
}

#[test]
fn fault_path_peer_migration_linked_source_copies() {
    fault_path_migrates_partly_peer_resident(true, true);
}

#[test]
fn fault_path_peer_migration_unlinked_target_copies() {
    fault_path_migrates_partly_peer_resident(false, false);
}

#[test]
fn fault_path_peer_migration_unlinked_source_copies() {
    fault_path_migrates_partly_peer_resident(false, true);
}
