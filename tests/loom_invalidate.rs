//! Loom model: invalidation against page collection and commit (DESIGN invariants 3 and 6, SPEC
//! §3-§4), on the real [`Svm`] over the tiny platform of `loom_support`.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_invalidate`.
//!
//! One range of two 4 KiB pages exists before the threads start. A collector thread runs
//! `get_pages` (sequence read, lock-free collection of the pages' frames, DMA map, commit under
//! the notifier lock); an invalidator thread runs `invalidate_begin`, changes the CPU frame of
//! page 0 (the platform's page-table update, a `Relaxed` loom atomic: only the crate's protocol
//! orders it against the collector), then `invalidate_end`. Loom explores every interleaving
//! (up to `LOOM_MAX_PREEMPTIONS` forced preemptions) and every memory-model outcome of the
//! crate's atomics. In every execution:
//!
//! - **No stale commit** (invariant 6): whenever the range's pages are valid — checked inside
//!   `bind`, i.e. under the notifier lock, by the collector right after its `get_pages` and by
//!   the main thread after both threads finished — every entry maps the frame the CPU maps
//!   *now*, never the frame replaced by the invalidation.
//! - **DMA mappings are unmapped at most once** (invariant 3): every `unmap_page` hits a live
//!   mapping (a double unmap by the commit's "replace the old state" path and the
//!   invalidation's unmap would be caught), and the mappings still live at the end are exactly
//!   the committed entries (nothing leaked by a dropped collection, nothing committed unmapped).
//! - The invalidation zaps the device page table exactly once over the range, the collector
//!   ends with `Ok` or `Busy` (its cut-down retry budget) and nothing else, and after the race a
//!   new `get_pages` succeeds (the sequence counter is even again) and maps the current frames.
//! - With `Event::Unmap`, a collection can never be committed into the unmapped range: nothing
//!   stays mapped, the range is queued for the GC once, and `get_pages`/`bind` say `Again`.
//! - `bind` by the driver, racing an invalidation of committed pages, sees either the old pages
//!   before the CPU changed them or no pages at all.
//!
//! - **The first fault in a notifier interval** (which registers the notifier) racing a platform
//!   invalidation that follows the registration contract to the letter (`platform_invalidate`:
//!   registration locked out during an invalidation, `begin`/`end` delivered to every notifier
//!   registered when the change starts) never commits the replaced frame. This model found a
//!   real bug, fixed in `Svm::find_or_insert`: the notifier entered the tree only after
//!   `register_notifier` returned, so a `begin` delivered in between was dropped as "unknown
//!   id" and the collection in the new notifier committed across the invalidation.
//! - A non-blockable invalidation (`invalidate_begin_nonblock`) racing a commit either
//!   returns `Again` having changed nothing (no zap, no counter), or invalidates as the
//!   blocking call does; the invariants above hold either way.
//! - A commit racing `remove` or `close` (which do not move the sequence counter) never
//!   installs pages into a range that is gone: every mapping it made is unmapped.
//!
//! Each model also records which outcomes its executions reached and asserts that the
//! interesting ones occurred (e.g. "retried after the sequence moved, committed the
//! new one"), so a model that stopped exploring the race would fail rather than pass vacuously.
//! Mutations of the crate that these models catch (checked while writing them): commit without
//! the sequence check, `read_begin` with a `Relaxed` load, unmap of old entries without the
//! "has DMA mapping" guard (double unmap), page flags not cleared by unmap.
//!
//! The collector's retry budget is cut to a few attempts (`SvmConfig.retry.max_attempts`): while
//! the invalidation runs, `read_begin` returns `None` and the loop yields (`spin_hint` is
//! `loom::thread::yield_now` under loom), so the budget keeps every execution finite.
#![cfg(loom)]

mod loom_support;

use gpusvm::range::RangeArc;
use gpusvm::range::RangeFlags;
use gpusvm::{Error, Event, PagesCtx, Range, Svm, Window};
use loom::thread;
use loom_support::*;
use std::sync::Arc;

/// Frame page 0 gets from the invalidating thread.
const NEW_FRAME: u64 = 0x200;

type S = Svm<LoomPlatform>;

fn setup(max_attempts: u32) -> (Arc<S>, RangeArc) {
    let svm = Arc::new(new_svm(max_attempts));
    let range = svm
        .find_or_insert(BASE, Window::ALL, &PagesCtx::default())
        .unwrap_or_else(|e| panic!("find_or_insert: {e:?}"));
    assert_eq!((range.start(), range.end()), (BASE, END));
    (svm, range)
}

/// The invalidating thread: begin, the CPU changes page 0's frame, end.
fn spawn_invalidator(svm: &Arc<S>, event: Event, start: u64, end: u64) -> thread::JoinHandle<()> {
    let svm = svm.clone();
    thread::spawn(move || {
        svm.invalidate_begin(NID, start, end, event);
        svm.platform().mm.set_frame(0, NEW_FRAME);
        svm.invalidate_end(NID, start, end);
    })
}

/// The collecting thread: `get_pages`, then (if it succeeded) check what `bind` shows.
fn spawn_collector(
    svm: &Arc<S>,
    range: &RangeArc,
    ctx: PagesCtx,
) -> thread::JoinHandle<Result<(), Error>> {
    let (svm, range) = (svm.clone(), range.clone());
    thread::spawn(move || {
        let r = svm.get_pages(&range, &ctx);
        if r.is_ok() {
            assert_bound_pages_current(&svm, &range);
        }
        r
    })
}

/// After the threads: pages (if valid) are current, DMA bookkeeping is exact, one zap.
fn check_after(svm: &S, range: &Range) {
    assert_bound_pages_current(svm, range);
    assert_dma_consistent(svm, range);
    assert_eq!(
        svm.platform().pt.zaps(),
        vec![(BASE, END)],
        "one zap over the range"
    );
    assert_eq!(svm.stats().invalidations, 1);
}

/// Nothing is racing any more: a new collection must succeed and map the current frames.
fn check_recovers(svm: &S, range: &Range) {
    svm.get_pages(range, &PagesCtx::default())
        .unwrap_or_else(|e| panic!("get_pages after the race: {e:?}"));
    assert!(
        assert_bound_pages_current(svm, range),
        "pages valid after get_pages"
    );
    assert_eq!(svm.platform().mm.frame(0), NEW_FRAME);
    assert_dma_consistent(svm, range);
}

/// Since issue 16 the sequence is checked before the pages are mapped (mapping and commit run
/// under one shared hold of the notifier's lock), so a stale collection is dropped unmapped:
/// the collector retried and then committed the current frames.
const STALE_DROPPED: &str = "retried after the sequence moved, committed the new frames";
const AFTER: &str = "collected after the invalidation";
const BEFORE: &str = "committed before the invalidation, then invalidated";
const BUSY: &str = "gave up (Busy)";

/// Classify one collector's outcome (call before `check_recovers`).
fn classify(cov: &Coverage, svm: &S, range: &Range, r: &Result<(), Error>) {
    let old = FRAME0 << 12;
    let mapped_old = svm.platform().dma.log().iter().any(|m| m.addr == old);
    let retried = svm.stats().retries > 0;
    let valid = committed(svm, range).is_some();
    cov.hit(match (r, valid) {
        (Ok(()), true) if retried => STALE_DROPPED,
        (Ok(()), true) if mapped_old => "mapped the replaced frame, then committed the new one",
        (Ok(()), true) => AFTER,
        (Ok(()), false) => BEFORE,
        (Err(Error::Busy), _) => BUSY,
        (Err(_), _) => "other error",
    });
    cov.execution();
}

fn join<T>(h: thread::JoinHandle<T>) -> T {
    h.join()
        .unwrap_or_else(|_| panic!("a model thread panicked"))
}

/// A first collection of an empty range races a `Clear` invalidation of the whole range.
#[test]
fn commit_vs_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup(3);
        let a = spawn_collector(&svm, &range, PagesCtx::default());
        let b = spawn_invalidator(&svm, Event::Clear, BASE, END);
        let ra = join(a);
        join(b);
        assert!(matches!(ra, Ok(()) | Err(Error::Busy)), "collector: {ra:?}");
        assert_eq!(svm.stats().pages_committed, usize::from(ra.is_ok()));
        check_after(&svm, &range);
        classify(&c, &svm, &range, &ra);
        check_recovers(&svm, &range);
    });
    let n = cov.expect(&[STALE_DROPPED, AFTER, BEFORE]);
    println!("commit_vs_invalidate: {n} executions");
}

const REFUSED: &str = "non-blockable begin refused (Again), nothing changed";
const NONBLOCK_OK: &str = "non-blockable begin took the free lock";

/// A first collection races a *non-blockable* invalidation (`invalidate_begin_nonblock`, the OOM
/// reaper's case): when the collector holds the notifier lock, the begin returns `Again` having
/// changed nothing (no zap, no sequence move, no counter), and the platform retries later (here:
/// with the blocking call); otherwise it is the ordinary invalidation. Either way the
/// invariants of `commit_vs_invalidate` hold.
#[test]
fn commit_vs_nonblocking_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup(3);
        let a = spawn_collector(&svm, &range, PagesCtx::default());
        let s = svm.clone();
        let c2 = c.clone();
        let b = thread::spawn(move || {
            match s.invalidate_begin_nonblock(NID, BASE, END, Event::Clear) {
                Ok(()) => c2.hit(NONBLOCK_OK),
                Err(e) => {
                    assert_eq!(e, Error::Again);
                    assert!(s.platform().pt.zaps().is_empty(), "refused, yet zapped");
                    assert_eq!(s.stats().invalidations, 0, "refused, yet counted");
                    c2.hit(REFUSED);
                    s.invalidate_begin(NID, BASE, END, Event::Clear);
                }
            }
            s.platform().mm.set_frame(0, NEW_FRAME);
            s.invalidate_end(NID, BASE, END);
        });
        let ra = join(a);
        join(b);
        assert!(matches!(ra, Ok(()) | Err(Error::Busy)), "collector: {ra:?}");
        check_after(&svm, &range);
        classify(&c, &svm, &range, &ra);
        check_recovers(&svm, &range);
    });
    let n = cov.expect(&[REFUSED, NONBLOCK_OK, AFTER, BEFORE]);
    println!("commit_vs_nonblocking_invalidate: {n} executions");
}

/// The invalidation covers only page 0 (the page whose frame changes); the range's page state
/// is one unit, so the whole range is invalidated.
#[test]
fn commit_vs_partial_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup(3);
        let a = spawn_collector(&svm, &range, PagesCtx::default());
        let b = spawn_invalidator(&svm, Event::Protection, BASE, BASE + 4096);
        let ra = join(a);
        join(b);
        assert!(matches!(ra, Ok(()) | Err(Error::Busy)), "collector: {ra:?}");
        check_after(&svm, &range);
        classify(&c, &svm, &range, &ra);
        check_recovers(&svm, &range);
    });
    let n = cov.expect(&[STALE_DROPPED, AFTER, BEFORE]);
    println!("commit_vs_partial_invalidate: {n} executions");
}

/// Pages are already committed read-only; the collector wants them writable, so it collects
/// again and its commit replaces (and unmaps) the old state, while the invalidation unmaps the
/// old state too: each old mapping must be unmapped exactly once.
#[test]
fn recommit_vs_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup(3);
        let ro = PagesCtx {
            read_only: true,
            ..PagesCtx::default()
        };
        svm.get_pages(&range, &ro)
            .unwrap_or_else(|e| panic!("initial get_pages: {e:?}"));
        assert_eq!(svm.platform().dma.log().len(), NPAGES);
        let a = spawn_collector(&svm, &range, PagesCtx::default());
        let b = spawn_invalidator(&svm, Event::Clear, BASE, END);
        let ra = join(a);
        join(b);
        assert!(matches!(ra, Ok(()) | Err(Error::Busy)), "collector: {ra:?}");
        // The read-only mappings are gone, whoever unmapped them (exactly once: no violation).
        let log = svm.platform().dma.log();
        assert!(
            log.iter().take(NPAGES).all(|m| m.unmapped),
            "old mappings leaked: {log:?}"
        );
        check_after(&svm, &range);
        // The read-only mapping of the old frame is in the log in every execution: classify by
        // what the collector itself mapped.
        let mapped_old = log.iter().skip(NPAGES).any(|m| m.addr == FRAME0 << 12);
        let retried = svm.stats().retries > 0;
        let valid = committed(&svm, &range).is_some();
        c.hit(match (&ra, valid) {
            (Ok(()), true) if retried => STALE_DROPPED,
            (Ok(()), true) if mapped_old => "mapped the replaced frame, then committed the new one",
            (Ok(()), true) => AFTER,
            (Ok(()), false) => BEFORE,
            _ => BUSY,
        });
        c.execution();
        check_recovers(&svm, &range);
    });
    let n = cov.expect(&[STALE_DROPPED, AFTER, BEFORE]);
    println!("recommit_vs_invalidate: {n} executions");
}

/// The invalidation is an `Unmap` of page 0: whatever the interleaving, nothing may be committed
/// into the (now partially unmapped) range, it is queued for the GC exactly once, and the range
/// refuses further use with `Again`.
#[test]
fn commit_vs_unmap() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup(3);
        let a = spawn_collector(&svm, &range, PagesCtx::default());
        let b = spawn_invalidator(&svm, Event::Unmap, BASE, BASE + 4096);
        let ra = join(a);
        join(b);
        // Ok (committed before the unmap began, then unmapped by it), Again (the collector
        // found the range unmapped), or Busy.
        assert!(
            matches!(ra, Ok(()) | Err(Error::Again) | Err(Error::Busy)),
            "collector: {ra:?}"
        );
        c.hit(match ra {
            Ok(()) => "committed, then unmapped",
            Err(Error::Again) => "found the range unmapped",
            _ => BUSY,
        });
        c.execution();
        let f = range.flags();
        assert!(
            f.contains(RangeFlags::UNMAPPED | RangeFlags::PARTIAL_UNMAP | RangeFlags::IN_GC),
            "{f:?}"
        );
        assert_eq!(svm.platform().dma.violations(), Vec::<String>::new());
        assert_eq!(
            svm.platform().dma.live(),
            vec![],
            "mapping live in an unmapped range"
        );
        assert_eq!(svm.platform().pt.zaps(), vec![(BASE, END)]);
        assert_eq!(svm.gc_pending(), 1);
        assert_eq!(
            svm.get_pages(&range, &PagesCtx::default()),
            Err(Error::Again)
        );
        assert!(!assert_bound_pages_current(&svm, &range));
    });
    let n = cov.expect(&["committed, then unmapped", "found the range unmapped"]);
    println!("commit_vs_unmap: {n} executions");
}

/// Pages are committed; the driver binds them (reading the CPU frame inside `bind`) while an
/// invalidation changes the frame: `bind` sees the pages only while they are current.
#[test]
fn bind_vs_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup(3);
        svm.get_pages(&range, &PagesCtx::default())
            .unwrap_or_else(|e| panic!("initial get_pages: {e:?}"));
        let a = {
            let (svm, range) = (svm.clone(), range.clone());
            thread::spawn(move || assert_bound_pages_current(&svm, &range))
        };
        let b = spawn_invalidator(&svm, Event::Clear, BASE, END);
        let bound = join(a);
        join(b);
        c.hit(if bound { "bound" } else { "refused (Again)" });
        c.execution();
        assert!(
            !svm.pages_valid(&range),
            "the invalidation left the pages valid"
        );
        check_after(&svm, &range);
        check_recovers(&svm, &range);
    });
    let n = cov.expect(&["bound", "refused (Again)"]);
    println!("bind_vs_invalidate: {n} executions");
}

/// Two collectors race each other and an invalidation (the second commit replaces the first and
/// must unmap it exactly once; neither may commit a stale frame).
#[test]
fn two_commits_vs_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup(2);
        let a1 = spawn_collector(&svm, &range, PagesCtx::default());
        let a2 = spawn_collector(&svm, &range, PagesCtx::default());
        let b = spawn_invalidator(&svm, Event::Clear, BASE, END);
        let mut oks = 0;
        for a in [a1, a2] {
            let r = join(a);
            assert!(matches!(r, Ok(()) | Err(Error::Busy)), "collector: {r:?}");
            oks += usize::from(r.is_ok());
        }
        join(b);
        // A collector that finds valid pages (the other's commit) reuses them.
        c.hit(match svm.stats().pages_committed {
            2 => "both committed",
            1 if oks == 2 => "one committed, the other reused it",
            _ => "other",
        });
        c.execution();
        check_after(&svm, &range);
        check_recovers(&svm, &range);
    });
    let n = cov.expect(&["both committed", "one committed, the other reused it"]);
    println!("two_commits_vs_invalidate: {n} executions");
}

/// A collection races `remove` of its range (which does not move the sequence counter; a
/// bystander range keeps the notifier alive, so only the commit's own check can notice): the
/// commit must see the range is gone, and every mapping it made must be unmapped.
#[test]
fn commit_vs_remove() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup(3);
        let other = svm
            .find_or_insert(END, Window::ALL, &PagesCtx::default())
            .unwrap_or_else(|e| panic!("bystander: {e:?}"));
        assert_eq!((other.start(), other.end()), (END, VMA_END));
        let a = spawn_collector(&svm, &range, PagesCtx::default());
        let b = {
            let (svm, range) = (svm.clone(), range.clone());
            thread::spawn(move || svm.remove(&range))
        };
        let ra = join(a);
        let rb = join(b);
        assert_eq!(rb, Ok(()));
        assert!(
            matches!(ra, Ok(()) | Err(Error::Again) | Err(Error::Invalid)),
            "collector: {ra:?}"
        );
        c.hit(match ra {
            Ok(()) => "committed, then removed",
            _ => "found the range removed",
        });
        c.execution();
        let dma = &svm.platform().dma;
        assert_eq!(dma.violations(), Vec::<String>::new());
        assert_eq!(
            dma.live(),
            vec![],
            "mapping leaked by a commit into a removed range"
        );
        assert_eq!(svm.counts(), (1, 1));
        assert!(svm.find(BASE).is_none());
    });
    let n = cov.expect(&["committed, then removed", "found the range removed"]);
    println!("commit_vs_remove: {n} executions");
}

/// A collection races `close`: nothing may stay mapped and nothing may be committed after it.
#[test]
fn commit_vs_close() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup(3);
        let a = spawn_collector(&svm, &range, PagesCtx::default());
        let b = {
            let svm = svm.clone();
            thread::spawn(move || svm.close())
        };
        let ra = join(a);
        join(b);
        assert!(
            matches!(
                ra,
                Ok(()) | Err(Error::Again) | Err(Error::Closed) | Err(Error::Invalid)
            ),
            "collector: {ra:?}"
        );
        c.hit(match ra {
            Ok(()) => "committed, then closed",
            _ => "found the instance closed",
        });
        c.execution();
        let dma = &svm.platform().dma;
        assert_eq!(dma.violations(), Vec::<String>::new());
        assert_eq!(
            dma.live(),
            vec![],
            "mapping leaked by a commit racing close"
        );
        assert_eq!(svm.counts(), (0, 0));
        assert_eq!(svm.gc_pending(), 0);
        assert_eq!(svm.platform().mm.registrations(), (0, 1));
    });
    let n = cov.expect(&["committed, then closed", "found the instance closed"]);
    println!("commit_vs_close: {n} executions");
}

/// Two overlapping invalidations nest (the counter stays odd until the last one ends), each
/// changing one page's frame, while a collection runs: whatever it commits maps both current
/// frames.
#[test]
fn commit_vs_nested_invalidations() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup(3);
        let a = spawn_collector(&svm, &range, PagesCtx::default());
        let bs: Vec<_> = (0..2)
            .map(|i| {
                let svm = svm.clone();
                thread::spawn(move || {
                    svm.invalidate_begin(NID, BASE, END, Event::Clear);
                    svm.platform().mm.set_frame(i, NEW_FRAME + i as u64);
                    svm.invalidate_end(NID, BASE, END);
                })
            })
            .collect();
        let ra = join(a);
        for b in bs {
            join(b);
        }
        assert!(matches!(ra, Ok(()) | Err(Error::Busy)), "collector: {ra:?}");
        assert_bound_pages_current(&svm, &range);
        assert_dma_consistent(&svm, &range);
        assert_eq!(svm.platform().pt.zaps(), vec![(BASE, END), (BASE, END)]);
        assert_eq!(svm.stats().invalidations, 2);
        c.hit(match (&ra, committed(&svm, &range).is_some()) {
            (Ok(()), true) => "committed after both",
            (Ok(()), false) => BEFORE,
            _ => BUSY,
        });
        c.execution();
        svm.get_pages(&range, &PagesCtx::default())
            .unwrap_or_else(|e| panic!("get_pages after the race: {e:?}"));
        assert!(assert_bound_pages_current(&svm, &range));
    });
    let n = cov.expect(&["committed after both", BEFORE]);
    println!("commit_vs_nested_invalidations: {n} executions");
}

/// The first fault in a notifier interval (which registers the notifier with the platform)
/// races a platform invalidation of that interval. The platform follows its contract to the
/// letter (`platform_invalidate`: registration is locked out during an invalidation, and
/// `invalidate_begin`/`_end` are called on every notifier registered when the change starts),
/// so the crate must not commit the frame the invalidation replaces.
#[test]
fn first_fault_vs_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let svm = Arc::new(new_svm(3));
        let a = {
            let svm = svm.clone();
            thread::spawn(move || {
                let ctx = PagesCtx::default();
                let range = svm
                    .find_or_insert(BASE, Window::ALL, &ctx)
                    .unwrap_or_else(|e| panic!("find_or_insert: {e:?}"));
                let r = svm.get_pages(&range, &ctx);
                if r.is_ok() {
                    assert_bound_pages_current(&svm, &range);
                }
                (range, r)
            })
        };
        let b = {
            let svm = svm.clone();
            thread::spawn(move || {
                platform_invalidate(&svm, BASE, END, Event::Clear, |mm| {
                    mm.set_frame(0, NEW_FRAME)
                })
            })
        };
        let (range, ra) = join(a);
        join(b);
        assert!(matches!(ra, Ok(()) | Err(Error::Busy)), "collector: {ra:?}");
        assert_bound_pages_current(&svm, &range);
        assert_dma_consistent(&svm, &range);
        c.hit(match (&ra, committed(&svm, &range).is_some()) {
            (Ok(()), true) => "valid at the end",
            (Ok(()), false) => BEFORE,
            _ => BUSY,
        });
        c.execution();
        check_recovers(&svm, &range);
    });
    let n = cov.expect(&["valid at the end", BEFORE]);
    println!("first_fault_vs_invalidate: {n} executions");
}
