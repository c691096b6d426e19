//! Device → device migration rules: `populate` / `migrate_to_devmem` refusals,
//! `can_migrate_same_pagemap`, and all-or-nothing under injected failures.

use crate::machine::*;
use gpusvm::migrate::{self, MigrateDetails, ToDevmemState};
use gpusvm::platform::PagemapId;
use gpusvm::Error;

// ---- populate / migrate_to_devmem refusals ---------------------------------------------------

/// Populating B's memory with a range that holds pages of a foreign owner is refused with
/// `Busy` (SPEC §7 populate), whether the whole range or only part of it is foreign, through
/// `gpusvm::migrate::to_devmem`, `to_devmem_traced` with B's peers, and `Svm::migrate_to_devmem`.
/// Nothing moves: the CPU page table is unchanged, B allocated and copied nothing, and the
/// failed isolation went straight to restore.
#[test]
fn populate_busy_on_foreign_owner_pages() {
    let mut m = Machine::new(&[]);
    let a = m.join(0, VRAM);
    let b = m.join(1, VRAM);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    // A takes the first 64 KiB only (A with 64 KiB chunks would be simpler; instead migrate
    // directly), the rest stays in RAM.
    let view = m.mm.view(usize::MAX);
    let pa = a.svm.pagemap().unwrap();
    let pb = b.svm.pagemap().unwrap();
    let d = MigrateDetails::default();
    migrate::to_devmem(&view, &pa, buf, buf + K64, &d).expect("A takes 64 KiB");
    m.check("A takes 64 KiB");
    assert_eq!(m.where_is(buf), Some(0));
    assert_eq!(m.where_is(buf + K64), None);

    let before = m.frames();
    let vb = b.dev.vram_counts();
    let cb = m.copies(1);
    let db = b.dev.dma_counts();
    let va = a.dev.vram_used();
    for (s, e) in [
        (buf, buf + K64),
        (buf, buf + M2),
        (buf + K64 - P, buf + K64 + P),
    ] {
        assert_eq!(
            migrate::to_devmem(&view, &pb, s, e, &d),
            Err(Error::Busy),
            "[{s:#x}, {e:#x})"
        );
        m.check("populate blocked");
        let mut states = Vec::new();
        let peers = |id: PagemapId| b.svm.pagemap_by_id(id);
        let r = migrate::to_devmem_traced(
            &view,
            &pb,
            &peers,
            s,
            e,
            &d,
            Some(&mut |st| states.push(st)),
        );
        assert_eq!(r, Err(Error::Busy));
        assert_eq!(
            states,
            [
                ToDevmemState::Isolate,
                ToDevmemState::Restore,
                ToDevmemState::Done
            ],
            "isolation refused: straight to restore"
        );
        m.check("populate blocked (traced, with peers)");
        assert_eq!(m.frames(), before, "nothing moved");
        assert_eq!(b.dev.vram_counts(), vb, "B allocated nothing");
        assert_eq!(m.copies(1), cb, "B copied nothing");
        assert_eq!(b.dev.dma_counts(), db, "B mapped nothing");
        assert_eq!(a.dev.vram_used(), va);
    }
    // Through the Svm: B's fault creates its range (evicting A's pages to RAM on the way);
    // put A's pages back and force B's range.
    m.dev_read(1, buf + K64);
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    m.dev_read(0, buf);
    let rb = b.svm.find(buf).expect("B's range");
    let before = m.frames();
    let fails = m.stats(1).migrate_failures;
    assert_eq!(b.svm.migrate_to_devmem(&rb, &d), Err(Error::Busy));
    m.check("Svm::migrate_to_devmem blocked");
    assert_eq!(m.frames(), before);
    assert_eq!(m.stats(1).migrate_failures, fails + 1);
    m.dev_read_all(1, buf, buf + M2);
    m.cpu_read_all(buf, buf + M2);
}

/// `migrate::to_devmem` without a peer resolver cannot copy a peer's pages even in the same
/// owner (`Busy`, nothing moves); with the resolver it can.
#[test]
fn populate_needs_the_peer_resolver_for_same_owner_pages() {
    let mut m = Machine::new(&[(0, 1)]);
    let a = m.join(0, VRAM);
    let b = m.join(1, VRAM);
    let buf = m.mmap(M2);
    m.cpu_fill(buf, buf + M2, 4 * P, 1);
    m.dev_read(0, buf);
    let view = m.mm.view(usize::MAX);
    let pb = b.svm.pagemap().unwrap();
    let d = MigrateDetails::default();
    let before = m.frames();
    assert_eq!(
        migrate::to_devmem(&view, &pb, buf, buf + M2, &d),
        Err(Error::Busy)
    );
    m.check("populate without peers");
    assert_eq!(m.frames(), before);
    let peers = |id: PagemapId| b.svm.pagemap_by_id(id);
    let c0 = m.copies(0);
    let c1 = m.copies(1);
    let rep = migrate::to_devmem_traced(&view, &pb, &peers, buf, buf + M2, &d, None).unwrap();
    m.check("populate with peers");
    assert_eq!(rep.pages, 512);
    assert_eq!((m.copies(0), m.copies(1)), (c0, c1 + 1));
    assert!(m.placement(buf, buf + M2).iter().all(|d| *d == Some(1)));
    assert!(a.dev.vram_used().is_empty());
    m.dev_read_all(0, buf, buf + M2);
    m.dev_read_all(1, buf, buf + M2);
}

// ---- can_migrate_same_pagemap ----------------------------------------------------------------

/// A range partly in the target pagemap: refused with `Busy` unless `can_migrate_same_pagemap`,
/// in which case the resident pages are migrated again (to new frames) along with the rest and
/// their old allocation is released. A range entirely in the target is left alone either way.
#[test]
fn can_migrate_same_pagemap_direct() {
    for flag in [false, true] {
        let mut m = Machine::new(&[]);
        let a = m.join(0, VRAM);
        let buf = m.mmap(M2);
        m.cpu_fill(buf, buf + M2, 4 * P, 1);
        let view = m.mm.view(usize::MAX);
        let pa = a.svm.pagemap().unwrap();
        let d = MigrateDetails {
            can_migrate_same_pagemap: flag,
            ..MigrateDetails::default()
        };
        migrate::to_devmem(&view, &pa, buf + K64, buf + 2 * K64, &d).unwrap();
        m.check("part in A");
        let old: Vec<u64> = (buf + K64..buf + 2 * K64)
            .step_by(P as usize)
            .map(|x| m.mm.pte(x).unwrap().pfn)
            .collect();
        // Entirely resident: nothing to do, whatever the flag.
        let c = m.copies(0);
        let rep = migrate::to_devmem(&view, &pa, buf + K64, buf + 2 * K64, &d).unwrap();
        m.check("already there");
        assert!(rep.already_there);
        assert_eq!(m.copies(0), c);

        let before = m.frames();
        let r = migrate::to_devmem(&view, &pa, buf, buf + M2, &d);
        m.check("partly resident");
        if flag {
            let rep = r.unwrap();
            assert_eq!(rep.pages, 512);
            assert!(m.placement(buf, buf + M2).iter().all(|x| *x == Some(0)));
            let new: Vec<u64> = (buf + K64..buf + 2 * K64)
                .step_by(P as usize)
                .map(|x| m.mm.pte(x).unwrap().pfn)
                .collect();
            assert!(new.iter().all(|f| !old.contains(f)), "moved to new frames");
            assert_eq!(pa.live_allocations(), 1, "the old allocation was released");
            assert_eq!(a.dev.vram_used().len(), 512);
        } else {
            assert_eq!(r, Err(Error::Busy));
            assert_eq!(m.frames(), before, "nothing moved");
            assert_eq!(pa.live_allocations(), 1);
            assert_eq!(a.dev.vram_used().len(), 16);
        }
        m.dev_read_all(0, buf, buf + M2);
        m.cpu_read_all(buf, buf + M2);
    }
}

/// The same through the fault path with `SvmConfig::can_migrate_same_pagemap`: A's 2 MiB range
/// is partly in A's own memory; on A's fault the placement either migrates it in one go (flag
/// on) or fails with `Busy`, evicts the range and migrates it from RAM (flag off).
#[test]
fn can_migrate_same_pagemap_fault_path() {
    for flag in [false, true] {
        let mut m = Machine::new(&[]);
        let mut c = cfg(VRAM);
        c.can_migrate_same_pagemap = flag;
        let a = m.join_with(0, VRAM, c);
        let buf = m.mmap(M2);
        m.cpu_fill(buf, buf + M2, 4 * P, 1);
        let view = m.mm.view(usize::MAX);
        let pa = a.svm.pagemap().unwrap();
        migrate::to_devmem(&view, &pa, buf, buf + K64, &MigrateDetails::default()).unwrap();
        m.check("part in A");
        let s = m.stats(0);
        m.dev_read(0, buf + K64);
        let s2 = m.stats(0);
        assert!(m.placement(buf, buf + M2).iter().all(|x| *x == Some(0)));
        assert_eq!(s2.migrations_to_devmem, s.migrations_to_devmem + 1);
        if flag {
            assert_eq!(s2.migrate_failures, s.migrate_failures);
            assert_eq!(s2.evictions, s.evictions);
        } else {
            assert_eq!(s2.migrate_failures, s.migrate_failures + 1);
            assert_eq!(s2.evictions, s.evictions + 1);
        }
        assert_eq!(pa.live_allocations(), 1);
        m.dev_read_all(0, buf, buf + M2);
        m.cpu_read_all(buf, buf + M2);
    }
}

/// Device → device migration is all-or-nothing under injected failures: a copy failing in the
/// engine that runs it (the source's with `source_peer_migrates`, else the target's), before
/// or after part of its runs, and a failing allocation in the target. Each time the pages stay
/// in B's memory with their data, A's memory is empty again, nothing leaks (harness check),
/// and the next attempt succeeds.
#[test]
fn device_to_device_failures_restore() {
    for spm in [false, true] {
        for case in 0..3 {
            let mut m = Machine::new(&[(0, 1)]);
            m.join(0, VRAM);
            m.join(1, VRAM);
            let buf = m.mmap(M2);
            m.cpu_fill(buf, buf + M2, 4 * P, 1);
            m.dev_write(1, buf + 8, 0xB);
            m.dev_read(0, buf);
            let ra = m.g(0).svm.find(buf).unwrap();
            let d = MigrateDetails {
                source_peer_migrates: spm,
                ..MigrateDetails::default()
            };
            let engine = if spm { 1 } else { 0 };
            match case {
                0 => m.g(engine).dev.inject_copy_fail_at(1, 0),
                1 => m.g(engine).dev.inject_copy_fail_at(1, 1),
                _ => m.g(0).dev.inject_alloc_fail_at(1),
            }
            let before = m.frames();
            let r = m.g(0).svm.migrate_to_devmem(&ra, &d);
            m.check("failed device-to-device migration");
            // The engine's copy error (`Fault`) or the allocator's `NoMem`, passed through.
            let want = if case == 2 {
                Error::NoMem
            } else {
                Error::Fault
            };
            assert_eq!(r, Err(want), "spm {spm} case {case}");
            let keep: Vec<_> = before.iter().map(|f| (f.0, f.1, f.2)).collect();
            let now: Vec<_> = m.frames().iter().map(|f| (f.0, f.1, f.2)).collect();
            assert_eq!(now, keep, "spm {spm} case {case}: nothing moved");
            assert!(
                m.g(0).dev.vram_used().is_empty(),
                "A's frames were released"
            );
            m.dev_read_all(0, buf, buf + M2);
            m.dev_read_all(1, buf, buf + M2);
            let ra = m.g(0).svm.find(buf).unwrap();
            m.g(0)
                .svm
                .migrate_to_devmem(&ra, &d)
                .expect("second attempt");
            m.check("device-to-device migration");
            assert!(m.placement(buf, buf + M2).iter().all(|x| *x == Some(0)));
            m.dev_read_all(1, buf, buf + M2);
            m.cpu_read_all(buf, buf + M2);
        }
    }
}
