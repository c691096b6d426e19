//! Hostile input to every public function that takes input: each returns its typed `Error`
//! (or, for the notifier callbacks that return nothing, ignores it) and leaves the state as it
//! was — same ranges, same notifier registrations, same live DMA mappings, same counters
//! (DESIGN invariant 8, issue 2).

mod common;

use common::*;
use gpusvm::pages::{PageEntry, Protocol, RetryPolicy};
use gpusvm::platform::{DmaDirection, NotifierId, MAX_ORDER};
use gpusvm::range::{select_chunk, ChunkQuery, Range, RangeTree};
use gpusvm::{Access, Error, Event, PagesCtx, Svm, SvmConfig, Userptr, Window};

const CTX: PagesCtx = PagesCtx {
    read_only: false,
    devmem_only: false,
    allow_mixed: false,
    owner: None,
};

const TOP: u64 = u64::MAX - P + 1;

/// Hostile `[start, end)` pairs for constructors that need a non-empty page-aligned interval.
const BAD_INTERVALS: &[(u64, u64)] = &[
    (0, 0),
    (P, P),
    (2 * P, P),
    (u64::MAX, 0),
    (u64::MAX, u64::MAX),
    (0, u64::MAX),
    (1, P),
    (0, P + 1),
    (P - 1, 2 * P),
    (TOP, u64::MAX),
    (TOP, 0),
    (u64::MAX - 1, u64::MAX),
    (2048, 4096),
];

const GOOD_INTERVALS: &[(u64, u64)] = &[(0, P), (0, TOP), (TOP - P, TOP), (M, M + M2)];

/// An Svm (default config over [0, 4 GiB), VMA [0, 1 GiB)) with a few ranges, some mapped, and
/// a retry budget small enough that a stuck sequence fails fast.
fn busy_svm() -> (MockSvm, Vec<gpusvm::HostArc<TestHost, Range<TestHost>>>) {
    let p = MockPlatform::new();
    p.mm.add_vma(0, G, true);
    let mut cfg = SvmConfig::new(0, 4 * G);
    cfg.retry = RetryPolicy {
        deadline_ns: u64::MAX,
        max_attempts: 4,
    };
    let svm = Svm::new(p, cfg).unwrap();
    let a = svm.find_or_insert(2 * M, Window::ALL, &CTX).unwrap();
    let b = svm.find_or_insert(8 * M, Window::ALL, &CTX).unwrap();
    let c = svm.find_or_insert(N512 + M, Window::ALL, &CTX).unwrap();
    svm.get_pages(&a, &CTX).unwrap();
    svm.get_pages(&c, &CTX).unwrap();
    (svm, vec![a, b, c])
}

#[test]
fn error_from_errno_hostile_values() {
    for e in [
        0,
        2,
        -2,
        -4095,
        4096,
        i32::MIN,
        i32::MAX,
        i32::MIN + 1,
        -1000,
        -108 + 1,
    ] {
        assert_eq!(Error::from_errno(e), None, "{e}");
    }
    let all = [
        Error::Busy,
        Error::Again,
        Error::Fault,
        Error::NoMem,
        Error::Invalid,
        Error::NotSupported,
        Error::Perm,
        Error::Access,
        Error::NoLink,
        Error::Closed,
    ];
    for e in all {
        assert_eq!(Error::from_errno(e.errno()), Some(e));
        assert_eq!(Error::from_errno(-e.errno()), Some(e));
    }
    assert_eq!(Error::from_errno(-108), Some(Error::Closed), "ESHUTDOWN");
}

#[test]
fn range_new_and_userptr_new_refuse_bad_intervals() {
    for &(s, e) in BAD_INTERVALS {
        assert_eq!(
            Range::new(s, e).unwrap_err(),
            Error::Invalid,
            "{s:#x}..{e:#x}"
        );
        assert_eq!(
            Userptr::new(s, e).unwrap_err(),
            Error::Invalid,
            "{s:#x}..{e:#x}"
        );
    }
    for &(s, e) in GOOD_INTERVALS {
        let r = Range::new(s, e).unwrap();
        assert_eq!((r.start(), r.end(), r.size()), (s, e, e - s));
        assert!(!r.is_linked());
        let u = Userptr::new(s, e).unwrap();
        assert_eq!((u.start(), u.end()), (s, e));
    }
}

#[test]
fn page_entry_new_refuses_bad_fields() {
    let dirs = [
        DmaDirection::ToDevice,
        DmaDirection::FromDevice,
        DmaDirection::Bidirectional,
    ];
    for dir in dirs {
        for addr in [1, P - 1, P + 1, u64::MAX, TOP + 1, 0x800] {
            assert_eq!(
                PageEntry::new(addr, 0, dir, Protocol::SYSTEM).unwrap_err(),
                Error::Invalid,
                "{addr:#x}"
            );
        }
        for order in [MAX_ORDER + 1, 31, 32, u8::MAX] {
            assert_eq!(
                PageEntry::new(0, order, dir, Protocol::SYSTEM).unwrap_err(),
                Error::Invalid,
                "order {order}"
            );
        }
        for proto in [Protocol::MAX + 1, u8::MAX] {
            assert_eq!(
                PageEntry::new(0, 0, dir, Protocol(proto)).unwrap_err(),
                Error::Invalid,
                "proto {proto}"
            );
        }
        // Extremes that are valid round-trip exactly.
        let e = PageEntry::new(TOP, MAX_ORDER, dir, Protocol(Protocol::MAX)).unwrap();
        assert_eq!(
            (e.addr(), e.order(), e.dir(), e.protocol()),
            (TOP, MAX_ORDER, dir, Protocol(Protocol::MAX))
        );
    }
}

fn tree_bounds(t: &RangeTree) -> Vec<(u64, u64)> {
    t.iter().map(|r| (r.start(), r.end())).collect()
}

#[test]
fn range_tree_insert_remove_overlapping_hostile() {
    let mut t = RangeTree::new();
    let a = Range::new(P, 4 * P).unwrap();
    let b = Range::new(8 * P, 9 * P).unwrap();
    let top = Range::new(TOP - P, TOP).unwrap();
    t.insert(a.clone()).unwrap();
    t.insert(b.clone()).unwrap();
    t.insert(top.clone()).unwrap();
    let before = tree_bounds(&t);

    // Overlapping inserts, exact duplicates, a range enclosing everything.
    for (s, e) in [
        (P, 4 * P),
        (0, 2 * P),
        (3 * P, 5 * P),
        (2 * P, 3 * P),
        (0, TOP),
        (8 * P, 9 * P),
        (TOP - 2 * P, TOP),
    ] {
        let r = Range::new(s, e).unwrap();
        assert_eq!(t.insert(r.clone()), Err(Error::Invalid), "{s:#x}..{e:#x}");
        assert!(!r.is_linked());
        assert_eq!(tree_bounds(&t), before);
    }
    // The same object again; an object linked into another tree.
    assert_eq!(t.insert(a.clone()), Err(Error::Invalid));
    let mut other = RangeTree::new();
    let c = Range::new(100 * P, 101 * P).unwrap();
    other.insert(c.clone()).unwrap();
    assert_eq!(t.insert(c.clone()), Err(Error::Invalid));
    assert_eq!(tree_bounds(&t), before);
    assert_eq!(tree_bounds(&other), [(100 * P, 101 * P)]);
    assert_eq!(t.len(), 3);

    // Remove: a look-alike (same bounds, other object), a range of another tree, a stranger.
    let lookalike = Range::new(P, 4 * P).unwrap();
    assert!(t.remove(&lookalike).is_none());
    assert!(t.remove(&c).is_none());
    assert!(t.remove(&Range::new(50 * P, 51 * P).unwrap()).is_none());
    assert_eq!(tree_bounds(&t), before);
    assert!(c.is_linked(), "the other tree still holds c");
    assert_eq!(other.len(), 1);
    // Remove twice.
    let got = t.remove(&b).unwrap();
    assert!(gpusvm::heap::Arc::ptr_eq(&got, &b));
    assert!(t.remove(&b).is_none());
    assert_eq!(t.len(), 2);

    // Overlapping with reversed, empty and extreme intervals.
    for (s, e) in [
        (4 * P, P),
        (2 * P, 2 * P),
        (u64::MAX, 0),
        (u64::MAX, u64::MAX),
        (TOP, u64::MAX),
        (4 * P, 8 * P),
    ] {
        assert_eq!(t.overlapping(s, e).count(), 0, "{s:#x}..{e:#x}");
        assert!(!t.any_overlap(s, e));
        assert!(t.overlapping(s, e).peek_arc().is_none());
    }
    assert_eq!(t.overlapping(0, u64::MAX).count(), 2);
    assert_eq!(t.overlapping(TOP - 1, u64::MAX).count(), 1);
    assert!(t.find(u64::MAX).is_none());
    assert!(t.find_arc(0).is_none());
    assert!(RangeTree::new().overlapping(0, u64::MAX).next().is_none());
}

#[test]
fn config_and_svm_new_hostile() {
    let base = SvmConfig::new(0, 1 << 47);
    for n in [9usize, 16, 40] {
        let sizes: Vec<u64> = (0..n as u32).rev().map(|i| P << i).collect();
        assert_eq!(
            base.clone().with_chunk_sizes(&sizes).unwrap_err(),
            Error::Invalid
        );
    }
    for (start, range) in [
        (0, 0),
        (u64::MAX, 0),
        (0, u64::MAX),
        (u64::MAX, u64::MAX),
        (TOP, P),
        (1, P),
        (0, 1),
    ] {
        let cfg = SvmConfig::new(start, range);
        assert_eq!(cfg.validate(), Err(Error::Invalid), "{start:#x}+{range:#x}");
        let p = MockPlatform::new();
        assert_eq!(Svm::new(p, cfg).unwrap_err(), Error::Invalid);
    }
    let mut cfg = base.clone();
    cfg.notifier_size = u64::MAX;
    assert_eq!(cfg.validate(), Err(Error::Invalid));
}

#[test]
fn find_or_insert_hostile_leaves_state_unchanged() {
    let (svm, _ranges) = busy_svm();
    let before = snapshot(&svm);
    let w = |start, end| Window { start, end };
    let cases: Vec<(u64, Window, Error)> = vec![
        (4 * G, Window::ALL, Error::Invalid),
        (u64::MAX, Window::ALL, Error::Invalid),
        (TOP, Window::ALL, Error::Invalid),
        (5 * G, Window::ALL, Error::Invalid),
        (G, Window::ALL, Error::Fault),
        (2 * G, Window::ALL, Error::Fault),
        (4 * G - 1, Window::ALL, Error::Fault),
        (20 * M, w(0, 0), Error::Invalid),
        (20 * M, w(u64::MAX, u64::MAX), Error::Invalid),
        (20 * M, w(u64::MAX, 0), Error::Invalid),
        (20 * M, w(21 * M, 20 * M), Error::Invalid),
        (20 * M, w(20 * M, 20 * M), Error::Invalid),
        (20 * M, w(0, 20 * M), Error::Invalid),
        (20 * M, w(20 * M + 1, G), Error::Invalid),
        (20 * M, w(20 * M, 20 * M + 16), Error::Invalid),
        // A window not reaching the page of the address: no chunk fits.
        (20 * M + P - 1, w(20 * M + 8, 20 * M + P), Error::Invalid),
    ];
    // Lookups of hostile addresses find nothing and change nothing.
    for a in [u64::MAX, TOP, 4 * G, G, 6 * M, 2 * N512] {
        assert!(svm.find(a).is_none(), "{a:#x}");
    }
    assert!(svm.find(0).is_none(), "no range at 0");
    assert!(svm.find(4 * M - 1).is_some());
    assert_unchanged(&svm, &before, "find");
    for (addr, win, want) in cases {
        assert_eq!(
            svm.find_or_insert(addr, win, &CTX).unwrap_err(),
            want,
            "{addr:#x} {win:?}"
        );
        assert_unchanged(&svm, &before, &format!("{addr:#x} {win:?}"));
    }
    svm.platform().assert_clean();
}

#[test]
fn find_or_insert_with_failing_notifier_registration_changes_nothing() {
    let (svm, _ranges) = busy_svm();
    svm.platform().mm.add_vma(G, 2 * G, true);
    for e in [Error::NoMem, Error::Invalid] {
        let before = snapshot(&svm);
        svm.platform().mm.state().fail_register = Some(e);
        // A new notifier is needed at 1 GiB: the registration error comes back.
        assert_eq!(svm.find_or_insert(G + 5, Window::ALL, &CTX).unwrap_err(), e);
        assert_unchanged(&svm, &before, "failed registration");
        // An existing notifier needs no registration.
        let r = svm.find_or_insert(20 * M, Window::ALL, &CTX).unwrap();
        svm.remove(&r).unwrap();
        svm.platform().mm.state().fail_register = None;
    }
    svm.platform().assert_clean();
}

#[test]
fn remove_hostile() {
    let (svm, ranges) = busy_svm();
    let (other, oranges) = busy_svm();
    let before = snapshot(&svm);
    let obefore = snapshot(&other);
    // A fresh range with the bounds of a live one; another Svm's live range with the same
    // bounds; ranges nowhere near anything.
    let strangers = [
        Range::with_host(2 * M, 4 * M).unwrap(),
        Range::with_host(TOP - P, TOP).unwrap(),
        Range::with_host(0, P).unwrap(),
        oranges[0].clone(),
        oranges[1].clone(),
    ];
    for r in &strangers {
        assert_eq!(svm.remove(r), Err(Error::Invalid), "{r:?}");
        assert_unchanged(&svm, &before, "");
        assert_unchanged(&other, &obefore, "");
    }
    // Removed: a second remove is refused and changes nothing.
    svm.remove(&ranges[1]).unwrap();
    let after = snapshot(&svm);
    assert_eq!(svm.remove(&ranges[1]), Err(Error::Invalid));
    assert_unchanged(&svm, &after, "");
    svm.platform().assert_clean();
    other.platform().assert_clean();
}

#[test]
fn get_pages_and_bind_hostile_ranges() {
    let (svm, ranges) = busy_svm();
    let (other, oranges) = busy_svm();
    let before = snapshot(&svm);
    let obefore = snapshot(&other);
    let maps = svm.platform().dma.state().maps;
    let omaps = other.platform().dma.state().maps;
    let strangers = [
        Range::with_host(2 * M, 4 * M).unwrap(),
        Range::with_host(20 * M, 20 * M + P).unwrap(),
        oranges[0].clone(),
        oranges[1].clone(),
    ];
    for r in &strangers {
        assert_eq!(svm.get_pages(r, &CTX), Err(Error::Invalid), "{r:?}");
        let mut called = false;
        assert_eq!(svm.bind(r, |_, _| called = true), Err(Error::Invalid));
        assert!(!called);
        assert!(
            !svm.pages_valid(r),
            "pages_valid of a range not in this Svm"
        );
        assert_eq!(svm.unmap_pages(r), Err(Error::Invalid));
        assert_eq!(svm.free_pages(r), Err(Error::Invalid));
        assert_unchanged(&svm, &before, "");
        assert_unchanged(&other, &obefore, "the other Svm's mappings untouched");
    }
    assert!(other.pages_valid(&oranges[0]));
    assert_eq!(svm.platform().dma.state().maps, maps);
    assert_eq!(other.platform().dma.state().maps, omaps);
    // A never-collected range of this Svm: bind says Again and does not call the closure.
    let mut called = false;
    assert_eq!(
        svm.bind(&ranges[1], |_, _| called = true),
        Err(Error::Again)
    );
    assert!(!called);
    // A removed range: get_pages says Again (find it again), bind too, nothing mapped.
    svm.remove(&ranges[0]).unwrap();
    let after = snapshot(&svm);
    assert_eq!(svm.get_pages(&ranges[0], &CTX), Err(Error::Again));
    assert_eq!(svm.bind(&ranges[0], |_, _| ()), Err(Error::Again));
    assert_eq!(svm.unmap_pages(&ranges[0]), Err(Error::Invalid));
    assert_unchanged(&svm, &after, "");
    svm.platform().assert_clean();
    other.platform().assert_clean();
}

#[test]
fn get_pages_platform_failures_leave_nothing_mapped() {
    let (svm, ranges) = busy_svm();
    let p = svm.platform();
    let r = &ranges[1]; // [8M, 10M), never collected
    let before = snapshot(&svm);
    let maps = p.dma.state().maps;

    // DMA space runs out half way: NoMem, every mapping made so far undone.
    p.dma.state().fail_after = Some(100);
    assert_eq!(svm.get_pages(r, &CTX), Err(Error::NoMem));
    p.dma.state().fail_after = None;
    assert_eq!(p.dma.state().maps, maps + 100);
    assert_unchanged(&svm, &before, "");

    // A broken IOMMU returning misaligned bus addresses: Invalid, the mapping undone with
    // exactly the address it returned.
    p.dma.state().misaligned = true;
    assert_eq!(svm.get_pages(r, &CTX), Err(Error::Invalid));
    p.dma.state().misaligned = false;
    assert_unchanged(&svm, &before, "");
    p.assert_clean();

    // The VMA went away without an invalidation (a platform bug): Fault, nothing mapped.
    p.mm.remove_vma(8 * M, 10 * M);
    assert_eq!(svm.get_pages(r, &CTX), Err(Error::Fault));
    assert_unchanged(&svm, &before, "");

    // Write access to a read-only VMA: Perm.
    p.mm.add_vma(8 * M, 10 * M, false);
    assert_eq!(svm.get_pages(r, &CTX), Err(Error::Perm));
    assert_unchanged(&svm, &before, "");
    // Read-only works.
    let ro = PagesCtx {
        read_only: true,
        ..CTX
    };
    svm.get_pages(r, &ro).unwrap();
    assert!(svm.pages_valid(r));
    p.assert_clean();
}

#[test]
fn handle_fault_hostile_changes_nothing() {
    let (svm, ranges) = busy_svm();
    let p = svm.platform();
    p.mm.add_vma(5 * G, 6 * G, true); // a VMA outside the mirrored interval
    p.mm.add_vma(3 * G, 3 * G + M, false); // read-only
                                           // Queue one range for the GC: a rejected fault must not run it.
    svm.invalidate_begin(NotifierId(0), 2 * M, 3 * M, Event::Unmap);
    svm.invalidate_end(NotifierId(0), 2 * M, 3 * M);
    assert_eq!(svm.gc_pending(), 1);
    let before = snapshot(&svm);
    let w = |start, end| Window { start, end };
    for acc in [Access::Read, Access::Write, Access::Atomic] {
        for (addr, win) in [
            (4 * G, Window::ALL),
            (5 * G + M, Window::ALL), // VMA there, but outside the mirrored interval
            (u64::MAX, Window::ALL),
            (TOP, Window::ALL),
            (20 * M, w(0, 0)),
            (20 * M, w(G, 0)),
            (20 * M, w(0, 20 * M)),
            (G + 5, w(0, G)), // no VMA and outside the window: the window wins
            (3 * G, w(0, G)), // read-only VMA outside the window: the window wins
        ] {
            assert_eq!(
                svm.handle_fault(addr, acc, win).unwrap_err(),
                Error::Invalid,
                "{acc:?} {addr:#x} {win:?}"
            );
            assert_eq!(
                svm.handle_fault_and_bind(addr, acc, win, |_, _| ())
                    .unwrap_err(),
                Error::Invalid
            );
            assert_unchanged(&svm, &before, &format!("{acc:?} {addr:#x} {win:?}"));
        }
    }
    // Well-formed faults that fail: the fault and the GC run are counted, nothing is created.
    assert_eq!(
        svm.handle_fault(G + 5, Access::Read, Window::ALL)
            .unwrap_err(),
        Error::Fault
    );
    assert_eq!(svm.gc_pending(), 0);
    assert!(ranges[0]
        .flags()
        .contains(gpusvm::range::RangeFlags::REMOVED));
    let before = snapshot(&svm);
    assert_eq!(
        svm.handle_fault(3 * G, Access::Write, Window::ALL)
            .unwrap_err(),
        Error::Perm
    );
    let after = snapshot(&svm);
    assert_eq!(after.stats.faults, before.stats.faults + 1);
    assert_eq!(
        (after.ranges, after.registered, after.live_dma),
        (before.ranges, before.registered, before.live_dma)
    );
    p.assert_clean();
}

#[test]
fn invalidate_hostile_ids_and_intervals_are_ignored() {
    let (svm, ranges) = busy_svm();
    let p = svm.platform();
    let before = snapshot(&svm);
    // Ids that name no notifier: a start inside one, the next block, extremes.
    for id in [1, P, 2 * M, N512 + P, 2 * N512, G, u64::MAX, TOP] {
        for (s, e) in [(0, u64::MAX), (2 * M, 4 * M), (u64::MAX, 0)] {
            for ev in [Event::Unmap, Event::Clear, Event::Release] {
                svm.invalidate_begin(NotifierId(id), s, e, ev);
                svm.invalidate_end(NotifierId(id), s, e);
            }
            assert_unchanged(&svm, &before, &format!("id {id:#x} {s:#x}..{e:#x}"));
        }
    }
    // A real id with reversed, empty, or out-of-notifier intervals: nothing is zapped,
    // unmapped or queued (the sequence moves, as for any invalidation).
    let mut n = 0;
    for (s, e) in [
        (4 * M, 2 * M),
        (u64::MAX, 0),
        (3 * M, 3 * M),
        (N512, G),
        (N512 + M, N512 + 3 * M), // a range of the *other* notifier
        (u64::MAX, u64::MAX),
        (TOP, u64::MAX),
    ] {
        for ev in [Event::Unmap, Event::Release, Event::Clear] {
            svm.invalidate_begin(NotifierId(0), s, e, ev);
            svm.invalidate_end(NotifierId(0), s, e);
            n += 1;
        }
    }
    let mut after = snapshot(&svm);
    assert_eq!(after.stats.invalidations, before.stats.invalidations + n);
    after.stats.invalidations = before.stats.invalidations;
    assert_eq!(after, before);
    // Unbalanced ends are ignored: the sequence is even, collections still succeed...
    for _ in 0..3 {
        svm.invalidate_end(NotifierId(0), 0, u64::MAX);
    }
    svm.get_pages(&ranges[1], &CTX).unwrap();
    // ...and an end for a bogus id does not end a real invalidation.
    svm.invalidate_begin(NotifierId(0), 100 * M, 101 * M, Event::Clear);
    svm.invalidate_end(NotifierId(1), 100 * M, 101 * M);
    svm.invalidate_end(NotifierId(N512), 100 * M, 101 * M);
    svm.unmap_pages(&ranges[1]).unwrap();
    assert_eq!(svm.get_pages(&ranges[1], &CTX), Err(Error::Busy));
    svm.invalidate_end(NotifierId(0), 100 * M, 101 * M);
    svm.get_pages(&ranges[1], &CTX).unwrap();
    p.assert_clean();
}

#[test]
fn unmap_and_free_pages_only_touch_own_ranges() {
    let (svm, ranges) = busy_svm();
    let p = svm.platform();
    // Own range: idempotent.
    svm.unmap_pages(&ranges[0]).unwrap();
    svm.unmap_pages(&ranges[0]).unwrap();
    assert!(!svm.pages_valid(&ranges[0]));
    assert_eq!(p.dma.live_count(), 512);
    svm.free_pages(&ranges[2]).unwrap();
    svm.free_pages(&ranges[2]).unwrap();
    assert_eq!(p.dma.live_count(), 0);
    assert_eq!(svm.counts(), (2, 3), "unmap/free keep the ranges");
    p.assert_clean();
}

#[test]
fn userptr_hostile() {
    let p = MockPlatform::new();
    p.mm.add_vma(0, M, true);
    p.mm.add_vma(M, 2 * M, false);
    let policy = RetryPolicy::default();
    // Never collected: bind says Again.
    let u = Userptr::new(0, K64).unwrap();
    assert!(!u.pages_valid());
    assert_eq!(u.bind(|_, _| ()), Err(Error::Again));
    // No VMA for part of it: Fault, nothing mapped.
    let read = PagesCtx {
        read_only: true,
        ..CTX
    };
    let gap = Userptr::new(2 * M - P, 2 * M + P).unwrap();
    assert_eq!(gap.get_pages(&p, &read, &policy), Err(Error::Fault));
    assert_eq!(p.dma.live_count(), 0);
    // Read-only VMA, write access: Perm.
    let ro = Userptr::new(M, M + K64).unwrap();
    assert_eq!(ro.get_pages(&p, &CTX, &policy), Err(Error::Perm));
    // DMA failure half way: NoMem, nothing left mapped.
    p.dma.state().fail_after = Some(5);
    assert_eq!(u.get_pages(&p, &CTX, &policy), Err(Error::NoMem));
    p.dma.state().fail_after = None;
    assert_eq!(p.dma.live_count(), 0);
    assert!(!u.pages_valid());
    // A zero retry budget: Busy, nothing mapped.
    let none = RetryPolicy {
        deadline_ns: 0,
        max_attempts: 0,
    };
    assert_eq!(u.get_pages(&p, &CTX, &none), Err(Error::Busy));
    assert_eq!(p.dma.live_count(), 0);
    // Works; then invalidations with reversed/disjoint intervals leave it mapped.
    u.get_pages(&p, &CTX, &policy).unwrap();
    assert_eq!(p.dma.live_count(), 16);
    for (s, e) in [
        (K64, 0),
        (K64, 2 * K64),
        (u64::MAX, 0),
        (u64::MAX, u64::MAX),
    ] {
        u.invalidate_begin(&p.dma, s, e);
        u.invalidate_end();
        assert!(u.pages_valid(), "{s:#x}..{e:#x}");
    }
    assert_eq!(p.dma.live_count(), 16);
    u.invalidate_begin(&p.dma, 0, u64::MAX);
    u.invalidate_end();
    assert_eq!(p.dma.live_count(), 0);
    u.free_pages(&p.dma);
    u.unmap_pages(&p.dma);
    p.assert_clean();
}

#[test]
fn select_chunk_hostile_extremes() {
    let everything = (0, u64::MAX);
    for addr in [0, 1, TOP, u64::MAX - 1, u64::MAX] {
        for chunks in [&[][..], &[0], &[u64::MAX], &[1 << 63, P], &[P, P]] {
            for th in [0, u64::MAX] {
                let q = ChunkQuery {
                    addr,
                    vma: everything,
                    notifier: everything,
                    window: everything,
                    chunk_sizes: chunks,
                    check_pages_threshold: th,
                };
                let got = select_chunk(&q, |_, _| false, |_, _| false);
                if let Ok((s, e)) = got {
                    assert!(s <= addr && addr < e && s < e, "{addr:#x} {chunks:?}");
                } else {
                    assert!(
                        matches!(got, Err(Error::Invalid) | Err(Error::Fault)),
                        "{got:?}"
                    );
                }
            }
        }
    }
    // Reversed intervals everywhere.
    let q = ChunkQuery {
        addr: 5 * M,
        vma: (u64::MAX, 0),
        notifier: (u64::MAX, 0),
        window: (u64::MAX, 0),
        chunk_sizes: &[M2, K64, P],
        check_pages_threshold: K64,
    };
    assert_eq!(
        select_chunk(&q, |_, _| false, |_, _| true),
        Err(Error::Fault)
    );
}
