//! Behaviour of the Svm core (SPEC §1–§5) on the mock platform of `tests/common`.

mod common;

use common::*;
use gpusvm::pages::{PageEntry, Protocol, RetryPolicy};
use gpusvm::platform::{DmaDirection, NotifierId};
use gpusvm::range::{Range, RangeFlags};
use gpusvm::{Access, Error, Event, PagesCtx, Svm, SvmConfig, Window};

const CTX: PagesCtx = PagesCtx {
    read_only: false,
    devmem_only: false,
    allow_mixed: false,
    owner: None,
};

fn bounds(r: &Range<TestHost>) -> (u64, u64) {
    (r.start(), r.end())
}

fn entries(svm: &MockSvm, r: &Range<TestHost>) -> Vec<PageEntry> {
    svm.bind(r, |_, e| e.to_vec()).unwrap()
}

fn window(start: u64, end: u64) -> Window {
    Window { start, end }
}

// ---------------------------------------------------------------------------------------------
// SvmConfig::validate
// ---------------------------------------------------------------------------------------------

#[test]
fn config_validate_table() {
    let base = SvmConfig::new(0, 1 << 47);
    let chunks = |s: &[u64]| base.clone().with_chunk_sizes(s).unwrap();
    let with = |f: &dyn Fn(&mut SvmConfig)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let bad: Vec<(&str, SvmConfig)> = vec![
        ("empty chunk list", chunks(&[])),
        ("unsorted chunks", chunks(&[K64, M2, P])),
        ("ascending chunks", chunks(&[P, K64, M2])),
        ("duplicate chunk", chunks(&[M2, K64, K64, P])),
        ("duplicate page size", chunks(&[M2, P, P])),
        ("non-power-of-two chunk", chunks(&[M2, 96 << 10, P])),
        ("non-power-of-two first chunk", chunks(&[3 * M, K64, P])),
        ("last chunk is not the page size", chunks(&[M2, K64])),
        ("chunk below the page size", chunks(&[M2, K64, P, 2048])),
        ("zero chunk", chunks(&[M2, 0])),
        ("1 GiB chunk, 512 MiB notifier", chunks(&[G, M2, K64, P])),
        (
            "notifier smaller than the largest chunk",
            with(&|c| c.notifier_size = M),
        ),
        (
            "notifier not a power of two",
            with(&|c| c.notifier_size = 3 << 28),
        ),
        ("notifier size 0", with(&|c| c.notifier_size = 0)),
        ("misaligned mm_start", with(&|c| c.mm_start = 1)),
        ("misaligned mm_start (2K)", with(&|c| c.mm_start = 2048)),
        ("misaligned mm_range", with(&|c| c.mm_range = P + 1)),
        ("empty mm interval", with(&|c| c.mm_range = 0)),
        (
            "overflowing mm interval",
            with(&|c| {
                c.mm_start = u64::MAX - P + 1;
                c.mm_range = 2 * P;
            }),
        ),
        (
            "mm interval ending past 2^64",
            with(&|c| {
                c.mm_start = 1 << 63;
                c.mm_range = 1 << 63;
            }),
        ),
        ("mm_range u64::MAX", with(&|c| c.mm_range = u64::MAX)),
        (
            "mm interval is the last page (its end, 2^64, is not representable)",
            with(&|c| {
                c.mm_start = u64::MAX - P + 1;
                c.mm_range = P;
            }),
        ),
    ];
    for (name, cfg) in bad {
        assert_eq!(cfg.validate(), Err(Error::Invalid), "{name}");
        let e = Svm::new(MockPlatform::new(), cfg).unwrap_err();
        assert_eq!(e, Error::Invalid, "Svm::new: {name}");
    }
    let good: Vec<(&str, SvmConfig)> = vec![
        ("defaults", base.clone()),
        ("page-size chunks only", chunks(&[P])),
        ("notifier == largest chunk", with(&|c| c.notifier_size = M2)),
        ("1 GiB chunk, 1 GiB notifier", {
            let mut c = chunks(&[G, M2, K64, P]);
            c.notifier_size = G;
            c
        }),
        ("notifier of 2^63", with(&|c| c.notifier_size = 1 << 63)),
        (
            "mm interval up to the last page",
            with(&|c| c.mm_range = u64::MAX - P + 1),
        ),
        (
            "mm interval is the page before the last page",
            with(&|c| {
                c.mm_start = u64::MAX - 2 * P + 1;
                c.mm_range = P;
            }),
        ),
        (
            "eight chunk sizes",
            chunks(&[
                1 << 19,
                1 << 18,
                1 << 17,
                1 << 16,
                1 << 15,
                1 << 14,
                1 << 13,
                P,
            ]),
        ),
    ];
    for (name, cfg) in good {
        assert_eq!(cfg.validate(), Ok(()), "{name}");
        assert!(Svm::new(MockPlatform::new(), cfg).is_ok(), "{name}");
    }
    assert_eq!(
        base.clone().with_chunk_sizes(&[1 << 20; 9]).unwrap_err(),
        Error::Invalid,
        "more than MAX_CHUNK_SIZES"
    );
}

// ---------------------------------------------------------------------------------------------
// find_or_insert
// ---------------------------------------------------------------------------------------------

#[test]
fn find_or_insert_creates_2m_in_big_vma_and_registers_notifier_once() {
    let svm = svm_default();
    let r = svm.find_or_insert(5 * M + 123, Window::ALL, &CTX).unwrap();
    assert_eq!(bounds(&r), (4 * M, 6 * M));
    assert!(r.is_linked());
    assert_eq!(r.flags(), RangeFlags::empty());
    let mm = &svm.platform().mm;
    assert_eq!(mm.registered(), [(NotifierId(0), 0, N512)]);
    // Same Arc for any address inside it.
    for a in [4 * M, 5 * M, 6 * M - 1] {
        let again = svm.find_or_insert(a, Window::ALL, &CTX).unwrap();
        assert!(gpusvm::heap::Arc::ptr_eq(&r, &again), "{a:#x}");
        assert!(gpusvm::heap::Arc::ptr_eq(&r, &svm.find(a).unwrap()));
    }
    // More ranges in the same notifier: still one registration.
    let r2 = svm.find_or_insert(6 * M, Window::ALL, &CTX).unwrap();
    let r3 = svm.find_or_insert(100 * M + 1, Window::ALL, &CTX).unwrap();
    assert_eq!(bounds(&r2), (6 * M, 8 * M));
    assert_eq!(bounds(&r3), (100 * M, 102 * M));
    assert_eq!(mm.state().registered_log.len(), 1);
    assert_eq!(svm.counts(), (1, 3));
    assert_eq!(svm.stats().ranges_created, 3);
    // A second notifier for the next 512 MiB block.
    let r4 = svm.find_or_insert(N512 + 5, Window::ALL, &CTX).unwrap();
    assert_eq!(bounds(&r4), (N512, N512 + M2));
    assert_eq!(
        mm.registered(),
        [(NotifierId(0), 0, N512), (NotifierId(N512), N512, G)]
    );
    assert_eq!(svm.counts(), (2, 4));
    // No collection was needed for 2 MiB candidates (above the threshold).
    assert_eq!(mm.state().snapshot_collects, 0);
    assert_eq!(mm.state().fault_collects, 0);
    svm.platform().assert_clean();
}

#[test]
fn find_or_insert_64k_and_4k_at_vma_edges() {
    let svm = svm_with(0, 4 * G);
    let mm = &svm.platform().mm;
    // VMA starting 64K into a 2M block, its first 64K present.
    mm.add_vma(4 * M + K64, 8 * M, true);
    mm.populate(4 * M + K64, 4 * M + 2 * K64, true);
    let r = svm.find_or_insert(4 * M + K64, Window::ALL, &CTX).unwrap();
    assert_eq!(bounds(&r), (4 * M + K64, 4 * M + 2 * K64));
    // Next 64K block not present: the threshold check falls back to 4K.
    let r = svm
        .find_or_insert(4 * M + 2 * K64 + P, Window::ALL, &CTX)
        .unwrap();
    assert_eq!(bounds(&r), (4 * M + 2 * K64 + P, 4 * M + 2 * K64 + 2 * P));
    // One page missing in an otherwise present 64K block: 4K.
    mm.populate(5 * M, 5 * M + K64, true);
    mm.zap_cpu_page(5 * M + K64 - P);
    let r = svm.find_or_insert(5 * M, Window::ALL, &CTX).unwrap();
    assert_eq!(bounds(&r), (5 * M, 5 * M + P));
    // The aligned 2M block inside the VMA: 2M without any presence check.
    let r = svm.find_or_insert(7 * M, Window::ALL, &CTX).unwrap();
    assert_eq!(bounds(&r), (6 * M, 8 * M));
    // Tiny VMA at the end: 4K.
    mm.add_vma(10 * M, 10 * M + 2 * P, true);
    mm.populate(10 * M, 10 * M + 2 * P, true);
    let r = svm
        .find_or_insert(10 * M + 2 * P - 1, Window::ALL, &CTX)
        .unwrap();
    assert_eq!(bounds(&r), (10 * M + P, 10 * M + 2 * P));
    // Window narrower than a chunk.
    mm.add_vma(20 * M, 30 * M, true);
    mm.populate(20 * M, 30 * M, true);
    let r = svm
        .find_or_insert(21 * M, window(21 * M, 21 * M + 3 * K64), &CTX)
        .unwrap();
    assert_eq!(bounds(&r), (21 * M, 21 * M + K64));
    assert_eq!(svm.counts(), (1, 6));
    assert_eq!(mm.state().registered_log.len(), 1);
    // Ranges never overlap.
    let mut prev_end = 0;
    svm.for_each_range(|_, r| {
        assert!(r.start() >= prev_end);
        prev_end = r.end();
    });
    svm.platform().assert_clean();
}

#[test]
fn find_or_insert_clips_the_notifier_to_the_mirrored_interval() {
    let svm = svm_with(M, 3 * M);
    svm.platform().mm.add_vma(0, G, true);
    svm.platform().mm.populate(0, 8 * M, true);
    let r = svm.find_or_insert(M + 5, Window::ALL, &CTX).unwrap();
    // [0, 2M) starts before the mirrored interval: 64K.
    assert_eq!(bounds(&r), (M, M + K64));
    assert_eq!(svm.platform().mm.registered(), [(NotifierId(M), M, 4 * M)]);
    let r = svm.find_or_insert(2 * M, Window::ALL, &CTX).unwrap();
    assert_eq!(bounds(&r), (2 * M, 4 * M));
    // The last byte of the mirrored interval.
    svm.remove(&r).unwrap();
    let r = svm.find_or_insert(4 * M - 1, Window::ALL, &CTX).unwrap();
    assert_eq!(bounds(&r), (2 * M, 4 * M));
    assert_eq!(
        svm.find_or_insert(4 * M, Window::ALL, &CTX).unwrap_err(),
        Error::Invalid
    );
    assert_eq!(
        svm.find_or_insert(M - 1, Window::ALL, &CTX).unwrap_err(),
        Error::Invalid
    );
    svm.platform().assert_clean();
}

#[test]
fn find_or_insert_refuses_outside_mm_vma_window() {
    let svm = svm_with(G, G);
    let mm = &svm.platform().mm;
    mm.add_vma(0, G + M2, true);
    mm.add_vma(G + 4 * M, 4 * G, true);
    // Outside the mirrored interval (with and without a VMA there).
    for a in [0, G - 1, 2 * G, 3 * G, u64::MAX] {
        assert_eq!(
            svm.find_or_insert(a, Window::ALL, &CTX).unwrap_err(),
            Error::Invalid,
            "{a:#x}"
        );
    }
    // Inside it, no VMA.
    for a in [G + M2, G + 3 * M, G + 4 * M - 1] {
        assert_eq!(
            svm.find_or_insert(a, Window::ALL, &CTX).unwrap_err(),
            Error::Fault,
            "{a:#x}"
        );
    }
    // Outside the window / empty / reversed window.
    for w in [
        window(0, G),
        window(G + M, G + 2 * M),
        window(G, G),
        window(G + M2, G),
    ] {
        assert_eq!(
            svm.find_or_insert(G + 5, w, &CTX).unwrap_err(),
            Error::Invalid,
            "{w:?}"
        );
    }
    assert_eq!(svm.counts(), (0, 0));
    assert!(mm.registered().is_empty());
    assert!(mm.state().registered_log.is_empty());
    // And a good one still works.
    let r = svm.find_or_insert(G + 5, Window::ALL, &CTX).unwrap();
    assert_eq!(bounds(&r), (G, G + M2));
    svm.platform().assert_clean();
}

// ---------------------------------------------------------------------------------------------
// remove
// ---------------------------------------------------------------------------------------------

#[test]
fn remove_unlinks_zaps_unmaps_and_drops_the_notifier_with_its_last_range() {
    let svm = svm_default();
    let p = svm.platform();
    let a = svm.find_or_insert(4 * M, Window::ALL, &CTX).unwrap();
    let b = svm.find_or_insert(8 * M, Window::ALL, &CTX).unwrap();
    svm.get_pages(&a, &CTX).unwrap();
    svm.get_pages(&b, &CTX).unwrap();
    assert_eq!(p.dma.live_count(), 1024, "two 2 MiB ranges of 4 KiB pages");
    let b_entries = entries(&svm, &b);

    svm.remove(&a).unwrap();
    assert!(!a.is_linked());
    assert!(a.flags().contains(RangeFlags::REMOVED));
    assert!(svm.find(4 * M).is_none());
    assert!(p.pt.zapped(4 * M, 6 * M));
    assert_eq!(p.dma.live_count(), 512);
    assert!(b_entries
        .iter()
        .all(|e| p.dma.live().contains_key(&e.addr())));
    assert_eq!(p.mm.registered().len(), 1, "b still uses the notifier");
    assert_eq!(svm.counts(), (1, 1));
    assert_eq!(svm.remove(&a), Err(Error::Invalid), "second remove");

    svm.remove(&b).unwrap();
    assert_eq!(p.dma.live_count(), 0);
    assert!(p.mm.registered().is_empty());
    assert_eq!(p.mm.state().unregistered_log, [(NotifierId(0), 0, N512)]);
    assert_eq!(svm.counts(), (0, 0));
    assert_eq!(svm.remove(&b), Err(Error::Invalid));
    assert_eq!(svm.stats().ranges_removed, 2);
    // A removed range is dead for every call.
    assert_eq!(svm.get_pages(&a, &CTX), Err(Error::Again));
    assert_eq!(svm.bind(&a, |_, _| ()), Err(Error::Again));
    assert!(!svm.pages_valid(&a));
    // A new fault at the same place makes a new range and re-registers the notifier.
    let c = svm.find_or_insert(4 * M, Window::ALL, &CTX).unwrap();
    assert!(!gpusvm::heap::Arc::ptr_eq(&a, &c));
    assert_eq!(p.mm.state().registered_log.len(), 2);
    p.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// get_pages
// ---------------------------------------------------------------------------------------------

#[test]
fn get_pages_maps_a_huge_page_as_one_entry() {
    let svm = svm_default();
    let p = svm.platform();
    let pfn = p.mm.populate_huge(2 * M, true);
    let r = svm.find_or_insert(2 * M + 5, Window::ALL, &CTX).unwrap();
    assert_eq!(bounds(&r), (2 * M, 4 * M));
    svm.get_pages(&r, &CTX).unwrap();
    assert!(svm.pages_valid(&r));
    let e = entries(&svm, &r);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].order(), 9);
    assert_eq!(e[0].size(), M2);
    assert_eq!(e[0].dir(), DmaDirection::Bidirectional);
    assert_eq!(e[0].protocol(), Protocol::SYSTEM);
    let live = p.dma.live();
    assert_eq!(live.len(), 1);
    let m = live[&e[0].addr()];
    assert_eq!((m.pfn, m.order), (pfn, 9));
    assert_eq!(svm.stats().pages_committed, 1);
    p.assert_clean();
}

#[test]
fn get_pages_64k_range_inside_a_huge_page_is_one_order_4_entry() {
    let svm = svm_default();
    let p = svm.platform();
    let pfn = p.mm.populate_huge(2 * M, true);
    for (i, off) in [0, K64, 31 * K64].into_iter().enumerate() {
        let w = window(2 * M + off, 2 * M + off + K64);
        let r = svm.find_or_insert(2 * M + off, w, &CTX).unwrap();
        assert_eq!(bounds(&r), (2 * M + off, 2 * M + off + K64));
        svm.get_pages(&r, &CTX).unwrap();
        let e = entries(&svm, &r);
        assert_eq!(e.len(), 1, "offset {off:#x}");
        assert_eq!(e[0].order(), 4);
        let m = p.dma.live()[&e[0].addr()];
        assert_eq!((m.pfn, m.order), (pfn + off / P, 4));
        assert_eq!(p.dma.live_count(), i + 1);
    }
    p.assert_clean();
}

#[test]
fn get_pages_4k_pages_one_entry_each_and_entries_cover_the_range() {
    let svm = svm_default();
    let p = svm.platform();
    p.mm.populate(3 * M, 3 * M + K64, true);
    let r = svm
        .find_or_insert(3 * M, window(3 * M, 3 * M + K64), &CTX)
        .unwrap();
    svm.get_pages(&r, &CTX).unwrap();
    let e = entries(&svm, &r);
    assert_eq!(e.len(), 16);
    assert!(e.iter().all(|e| e.order() == 0));
    assert_eq!(e.iter().map(|e| e.size()).sum::<u64>(), r.size());
    // Pages not present are faulted in by get_pages (2 MiB range, nothing populated).
    let r2 = svm.find_or_insert(10 * M, Window::ALL, &CTX).unwrap();
    svm.get_pages(&r2, &CTX).unwrap();
    assert_eq!(entries(&svm, &r2).len(), 512);
    assert_eq!(p.dma.live_count(), 16 + 512);
    p.assert_clean();
}

#[test]
fn get_pages_reuses_a_valid_state_without_collecting_again() {
    let svm = svm_default();
    let p = svm.platform();
    let r = svm.find_or_insert(4 * M, Window::ALL, &CTX).unwrap();
    svm.get_pages(&r, &CTX).unwrap();
    let (collects, maps) = (p.mm.state().fault_collects, p.dma.state().maps);
    let before = entries(&svm, &r);
    for _ in 0..3 {
        svm.get_pages(&r, &CTX).unwrap();
    }
    // A read-only request is satisfied by a writable state.
    let ro = PagesCtx {
        read_only: true,
        ..CTX
    };
    svm.get_pages(&r, &ro).unwrap();
    assert_eq!(p.mm.state().fault_collects, collects);
    assert_eq!(p.dma.state().maps, maps);
    assert_eq!(entries(&svm, &r), before);
    assert_eq!(svm.stats().pages_committed, 1);
    // A read-only state does not satisfy a writable request: collected again, old one unmapped.
    let r2 = svm.find_or_insert(8 * M, Window::ALL, &CTX).unwrap();
    svm.get_pages(&r2, &ro).unwrap();
    assert!(entries(&svm, &r2)
        .iter()
        .all(|e| e.dir() == DmaDirection::ToDevice));
    svm.get_pages(&r2, &CTX).unwrap();
    assert!(entries(&svm, &r2)
        .iter()
        .all(|e| e.dir() == DmaDirection::Bidirectional));
    assert_eq!(p.dma.live_count(), 1024);
    p.assert_clean();
}

#[test]
fn get_pages_gives_up_with_busy_while_an_invalidation_runs() {
    let p = MockPlatform::new();
    p.mm.add_vma(0, G, true);
    let mut cfg = SvmConfig::new(0, 4 * G);
    cfg.retry = RetryPolicy {
        deadline_ns: u64::MAX,
        max_attempts: 7,
    };
    let svm = Svm::new(p, cfg).unwrap();
    let r = svm.find_or_insert(4 * M, Window::ALL, &CTX).unwrap();
    svm.invalidate_begin(NotifierId(0), 100 * M, 101 * M, Event::Clear);
    assert_eq!(svm.get_pages(&r, &CTX), Err(Error::Busy));
    assert_eq!(svm.platform().dma.live_count(), 0);
    assert_eq!(svm.platform().mm.state().fault_collects, 0);
    svm.invalidate_end(NotifierId(0), 100 * M, 101 * M);
    svm.get_pages(&r, &CTX).unwrap();
    svm.platform().assert_clean();

    // The deadline in platform time, with a clock that moves on every read.
    let p = MockPlatform::new();
    p.mm.add_vma(0, G, true);
    p.set_tick(1000);
    let mut cfg = SvmConfig::new(0, 4 * G);
    cfg.retry = RetryPolicy {
        deadline_ns: 10_000,
        max_attempts: u32::MAX,
    };
    let svm = Svm::new(p, cfg).unwrap();
    let r = svm.find_or_insert(4 * M, Window::ALL, &CTX).unwrap();
    svm.invalidate_begin(NotifierId(0), 0, 1, Event::Protection);
    assert_eq!(svm.get_pages(&r, &CTX), Err(Error::Busy));
    assert!(svm.stats().retries > 0);
    svm.invalidate_end(NotifierId(0), 0, 1);
    svm.get_pages(&r, &CTX).unwrap();
    svm.platform().assert_clean();
}

// ---------------------------------------------------------------------------------------------
// invalidation and GC
// ---------------------------------------------------------------------------------------------

#[test]
fn unmap_event_over_part_of_a_range_marks_zaps_unmaps_and_queues_once() {
    let svm = svm_default();
    let p = svm.platform();
    let r = svm.find_or_insert(2 * M, Window::ALL, &CTX).unwrap();
    let other = svm.find_or_insert(8 * M, Window::ALL, &CTX).unwrap();
    svm.get_pages(&r, &CTX).unwrap();
    svm.get_pages(&other, &CTX).unwrap();
    assert_eq!(p.dma.live_count(), 1024);
    let zaps_before = p.pt.zaps().len();

    svm.invalidate_begin(NotifierId(0), 3 * M, 3 * M + P, Event::Unmap);
    let f = r.flags();
    assert!(f.contains(RangeFlags::UNMAPPED | RangeFlags::PARTIAL_UNMAP | RangeFlags::IN_GC));
    assert!(p.pt.zapped(2 * M, 4 * M));
    assert_eq!(p.pt.zaps().len(), zaps_before + 1);
    assert_eq!(p.dma.live_count(), 512, "only the other range stays mapped");
    assert!(!svm.pages_valid(&r));
    assert!(svm.pages_valid(&other));
    assert_eq!(other.flags(), RangeFlags::empty());
    assert_eq!(svm.gc_pending(), 1);
    // A second unmap of (another part of) the same range: queued once.
    svm.invalidate_begin(NotifierId(0), 2 * M, 2 * M + P, Event::Unmap);
    assert_eq!(svm.gc_pending(), 1);
    svm.invalidate_end(NotifierId(0), 2 * M, 2 * M + P);
    svm.invalidate_end(NotifierId(0), 3 * M, 3 * M + P);
    // bind refuses; get_pages too (find it again).
    assert_eq!(svm.bind(&r, |_, _| ()), Err(Error::Again));
    assert_eq!(svm.get_pages(&r, &CTX), Err(Error::Again));
    // The GC removes it.
    assert_eq!(svm.gc_run(), 1);
    assert!(!r.is_linked());
    assert!(r.flags().contains(RangeFlags::REMOVED));
    assert!(!r.flags().contains(RangeFlags::IN_GC));
    assert_eq!(svm.gc_pending(), 0);
    assert_eq!(svm.counts(), (1, 1));
    assert_eq!(svm.gc_run(), 0);
    let s = svm.stats();
    assert_eq!((s.gc_runs, s.gc_ranges, s.ranges_removed), (1, 1, 1));
    p.assert_clean();
}

#[test]
fn full_unmap_is_not_partial_and_gc_drops_the_notifier() {
    let svm = svm_default();
    let p = svm.platform();
    let a = svm.find_or_insert(2 * M, Window::ALL, &CTX).unwrap();
    let b = svm.find_or_insert(4 * M, Window::ALL, &CTX).unwrap();
    svm.get_pages(&a, &CTX).unwrap();
    // One event covering both ranges exactly (and a gap after them).
    svm.invalidate_begin(NotifierId(0), 2 * M, 7 * M, Event::Unmap);
    for r in [&a, &b] {
        let f = r.flags();
        assert!(f.contains(RangeFlags::UNMAPPED | RangeFlags::IN_GC));
        assert!(!f.contains(RangeFlags::PARTIAL_UNMAP));
    }
    assert_eq!(svm.gc_pending(), 2);
    svm.invalidate_end(NotifierId(0), 2 * M, 7 * M);
    assert_eq!(p.dma.live_count(), 0);
    assert_eq!(svm.gc_run(), 2);
    assert_eq!(svm.counts(), (0, 0));
    assert!(p.mm.registered().is_empty());
    p.assert_clean();
}

#[test]
fn clear_event_unmaps_without_queuing_and_pages_can_be_collected_again() {
    let svm = svm_default();
    let p = svm.platform();
    let r = svm.find_or_insert(2 * M, Window::ALL, &CTX).unwrap();
    svm.get_pages(&r, &CTX).unwrap();
    assert_eq!(svm.bind(&r, |_, e| e.len()), Ok(512));
    for ev in [
        Event::Clear,
        Event::Protection,
        Event::Migrate { owner: None },
    ] {
        svm.invalidate_begin(NotifierId(0), 3 * M, 3 * M + P, ev);
        assert!(p.pt.zapped(2 * M, 4 * M));
        assert_eq!(p.dma.live_count(), 0, "{ev:?}");
        assert_eq!(svm.gc_pending(), 0, "{ev:?}");
        assert_eq!(r.flags(), RangeFlags::empty(), "{ev:?}");
        assert!(!svm.pages_valid(&r));
        // bind returns Again after an invalidation, even before it ends.
        assert_eq!(svm.bind(&r, |_, _| ()), Err(Error::Again));
        svm.invalidate_end(NotifierId(0), 3 * M, 3 * M + P);
        assert_eq!(svm.bind(&r, |_, _| ()), Err(Error::Again));
        svm.get_pages(&r, &CTX).unwrap();
        assert_eq!(svm.bind(&r, |_, e| e.len()), Ok(512));
        assert_eq!(p.dma.live_count(), 512);
    }
    assert_eq!(svm.counts(), (1, 1));
    p.assert_clean();
}

#[test]
fn invalidation_missing_every_range_zaps_nothing() {
    let svm = svm_default();
    let p = svm.platform();
    let r = svm.find_or_insert(2 * M, Window::ALL, &CTX).unwrap();
    svm.get_pages(&r, &CTX).unwrap();
    let zaps = p.pt.zaps().len();
    // Adjacent on both sides, and far away.
    for (s, e) in [(0, 2 * M), (4 * M, 6 * M), (100 * M, 200 * M)] {
        svm.invalidate_begin(NotifierId(0), s, e, Event::Unmap);
        svm.invalidate_end(NotifierId(0), s, e);
    }
    assert_eq!(p.pt.zaps().len(), zaps);
    assert_eq!(p.dma.live_count(), 512);
    assert_eq!(r.flags(), RangeFlags::empty());
    assert_eq!(svm.gc_pending(), 0);
    assert!(svm.pages_valid(&r));
    p.assert_clean();
}

#[test]
fn handle_fault_read_only_vma() {
    let p = MockPlatform::new();
    p.mm.add_vma(0, G, false);
    let svm = Svm::new(p, SvmConfig::new(0, 4 * G)).unwrap();
    for acc in [Access::Write, Access::Atomic] {
        assert_eq!(
            svm.handle_fault(5 * M, acc, Window::ALL).unwrap_err(),
            Error::Perm
        );
    }
    assert_eq!(svm.counts(), (0, 0));
    let r = svm.handle_fault(5 * M, Access::Read, Window::ALL).unwrap();
    assert_eq!(bounds(&r), (4 * M, 6 * M));
    let e = entries(&svm, &r);
    assert!(e
        .iter()
        .all(|e| e.dir() == DmaDirection::ToDevice && !e.writable()));
    let s = svm.stats();
    assert_eq!(
        (s.faults, s.faults_read, s.faults_write, s.faults_atomic),
        (3, 1, 1, 1)
    );
    svm.platform().assert_clean();
}

#[test]
fn handle_fault_runs_the_gc_and_refaults_a_smaller_range() {
    let svm = svm_default();
    let p = svm.platform();
    let (r, n) = svm
        .handle_fault_and_bind(5 * M, Access::Write, Window::ALL, |_, e| e.len())
        .unwrap();
    assert_eq!((bounds(&r), n), ((4 * M, 6 * M), 512));
    // munmap of the first 1 MiB of it.
    svm.invalidate_begin(NotifierId(0), 4 * M, 5 * M, Event::Unmap);
    p.mm.remove_vma(0, G);
    p.mm.add_vma(5 * M, G, true);
    svm.invalidate_end(NotifierId(0), 4 * M, 5 * M);
    assert_eq!(svm.gc_pending(), 1);
    let r2 = svm.handle_fault(5 * M, Access::Write, Window::ALL).unwrap();
    assert_eq!(svm.gc_pending(), 0);
    assert!(r.flags().contains(RangeFlags::REMOVED));
    // [4M, 6M) no longer fits in the VMA; the surviving part gets smaller ranges.
    assert!(r2.size() < M2);
    assert_eq!(r2.start(), 5 * M);
    assert_eq!(
        svm.handle_fault(4 * M, Access::Read, Window::ALL)
            .unwrap_err(),
        Error::Fault
    );
    p.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// close
// ---------------------------------------------------------------------------------------------

#[test]
fn close_unmaps_everything_unregisters_and_later_calls_are_closed() {
    let svm = svm_default();
    let p = svm.platform();
    let a = svm.find_or_insert(2 * M, Window::ALL, &CTX).unwrap();
    let b = svm.find_or_insert(20 * M, Window::ALL, &CTX).unwrap();
    let c = svm.find_or_insert(N512 + M, Window::ALL, &CTX).unwrap();
    let d = svm
        .find_or_insert(N512 + 10 * M, Window::ALL, &CTX)
        .unwrap();
    for r in [&a, &b, &c] {
        svm.get_pages(r, &CTX).unwrap();
    }
    // d is unmapped and waits for the GC.
    svm.invalidate_begin(NotifierId(N512), N512 + 10 * M, N512 + 11 * M, Event::Unmap);
    svm.invalidate_end(NotifierId(N512), N512 + 10 * M, N512 + 11 * M);
    assert_eq!(svm.gc_pending(), 1);
    assert_eq!(p.dma.live_count(), 3 * 512);
    assert_eq!(p.mm.registered().len(), 2);

    svm.close();
    assert!(svm.is_closed());
    assert_eq!(p.dma.live_count(), 0);
    assert!(p.mm.registered().is_empty());
    assert_eq!(p.mm.state().unregistered_log.len(), 2);
    assert_eq!(svm.counts(), (0, 0));
    assert_eq!(svm.gc_pending(), 0);
    for r in [&a, &b, &c, &d] {
        assert!(!r.is_linked());
        assert!(r.flags().contains(RangeFlags::REMOVED));
        assert!(!r.flags().contains(RangeFlags::IN_GC));
        assert!(p.pt.zapped(r.start(), r.end()));
    }

    let closed = Err(Error::Closed);
    assert_eq!(
        svm.find_or_insert(2 * M, Window::ALL, &CTX).map(|_| ()),
        closed
    );
    assert_eq!(svm.get_pages(&a, &CTX), closed);
    assert_eq!(svm.bind(&a, |_, _| ()), closed);
    assert_eq!(svm.remove(&a), closed);
    assert_eq!(svm.unmap_pages(&a), closed);
    assert_eq!(svm.free_pages(&a), closed);
    assert_eq!(
        svm.handle_fault(2 * M, Access::Read, Window::ALL)
            .map(|_| ()),
        closed
    );
    assert_eq!(
        svm.handle_fault_and_bind(2 * M, Access::Read, Window::ALL, |_, _| ())
            .map(|_| ()),
        closed
    );
    assert!(!svm.pages_valid(&a));
    assert!(svm.find(2 * M).is_none());
    assert_eq!(svm.gc_run(), 0);
    // Invalidations after close are ignored.
    svm.invalidate_begin(NotifierId(0), 0, G, Event::Unmap);
    svm.invalidate_end(NotifierId(0), 0, G);
    assert_eq!(svm.gc_pending(), 0);
    // Idempotent.
    let zaps = p.pt.zaps().len();
    svm.close();
    assert_eq!(p.pt.zaps().len(), zaps);
    assert_eq!(p.mm.state().unregistered_log.len(), 2);
    assert_eq!(svm.stats().ranges_removed, 4);
    p.assert_clean();
}
