//! Loom model: the garbage-collector queue (SPEC §5, DESIGN "Concurrency model") on the real
//! [`Svm`] over the tiny platform of `loom_support`.
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_gc`.
//!
//! The range `[BASE, END)` exists with committed (DMA-mapped) pages before the threads start.
//! `Event::Unmap` invalidations mark it unmapped and queue it (through its intrusive link, under
//! the notifier lock); `gc_run` pops it and removes it (structure lock, then notifier lock);
//! `close` drains everything. Loom explores every interleaving of these (up to
//! `LOOM_MAX_PREEMPTIONS` preemptions) and the memory-model outcomes of the crate's atomics
//! (range flags, `closed`). In every execution:
//!
//! - **Queued at most once**: the range is never in the queue twice at the same time (the
//!   intrusive list would panic on a double insert, and `gc_pending()` never exceeds 1), and no
//!   entry for it outlives its removal: once removed, the queue is empty. (An unmap that slips
//!   in after `gc_run` popped the range and cleared `IN_GC`, but before it removed the range,
//!   queues it a second time; the same `gc_run` loop pops that entry next and skips it as
//!   `REMOVED`, so it is transient and harmless — the model checks exactly that.)
//! - **Removed exactly once**: whichever of the racing `gc_run`s / `close` gets it, the
//!   `ranges_removed` counter ends at 1 (`gc_ranges` at 1 when a GC run removed it), the
//!   notifier is unregistered exactly once, and a final `gc_run` leaves `gc_pending() == 0`.
//! - **Nothing lost**: an unmap that races a GC run is never left behind (the range does not
//!   stay in the tree, unmapped and unqueued).
//! - **DMA**: every mapping of the range is unmapped exactly once (by the invalidation, or by
//!   the removal), none stays live.
//! - `close` racing an invalidation or a GC run never panics, leaves nothing queued, no range,
//!   no registration and no live mapping.
//!
//! Each model records the outcomes its executions reached and asserts that the interesting
//! ones occurred, so it cannot pass vacuously.
#![cfg(loom)]

mod loom_support;

use gpusvm::range::RangeArc;
use gpusvm::range::RangeFlags;
use gpusvm::{Event, PagesCtx, Range, Svm, Window};
use loom::thread;
use loom_support::*;
use std::sync::Arc;

type S = Svm<LoomPlatform>;

/// A fresh instance with one range whose pages are committed.
fn setup() -> (Arc<S>, RangeArc) {
    let svm = Arc::new(new_svm(3));
    let ctx = PagesCtx::default();
    let range = svm
        .find_or_insert(BASE, Window::ALL, &ctx)
        .unwrap_or_else(|e| panic!("find_or_insert: {e:?}"));
    svm.get_pages(&range, &ctx)
        .unwrap_or_else(|e| panic!("get_pages: {e:?}"));
    assert_eq!(svm.platform().dma.live().len(), NPAGES);
    (svm, range)
}

fn join<T>(h: thread::JoinHandle<T>) -> T {
    h.join()
        .unwrap_or_else(|_| panic!("a model thread panicked"))
}

/// An `Event::Unmap` invalidation of `[start, end)`; checks the queue never holds the range
/// twice.
fn spawn_unmap(svm: &Arc<S>, start: u64, end: u64) -> thread::JoinHandle<()> {
    let svm = svm.clone();
    thread::spawn(move || {
        svm.invalidate_begin(NID, start, end, Event::Unmap);
        assert!(svm.gc_pending() <= 1, "range queued twice");
        svm.invalidate_end(NID, start, end);
    })
}

fn spawn_gc(svm: &Arc<S>) -> thread::JoinHandle<usize> {
    let svm = svm.clone();
    thread::spawn(move || svm.gc_run())
}

/// The range is gone exactly once and nothing is left behind.
fn check_removed_once(svm: &S, range: &Range) {
    let st = svm.stats();
    assert_eq!(st.ranges_removed, 1, "removed exactly once: {st:?}");
    assert_eq!(svm.gc_pending(), 0);
    assert_eq!(svm.counts(), (0, 0));
    assert!(svm.find(BASE).is_none());
    let f = range.flags();
    assert!(f.contains(RangeFlags::REMOVED), "{f:?}");
    assert!(!f.contains(RangeFlags::IN_GC), "{f:?}");
    assert_eq!(
        svm.platform().mm.registrations(),
        (0, 1),
        "unregistered once"
    );
    let dma = &svm.platform().dma;
    assert_eq!(dma.violations(), Vec::<String>::new());
    assert_eq!(dma.live(), vec![]);
}

/// Before the final `gc_run`: if the range was already removed, it must not be queued again
/// (a stale queue entry means it was queued a second time while being collected).
fn check_not_requeued(svm: &S, range: &Range) {
    if range.flags().contains(RangeFlags::REMOVED) {
        assert_eq!(
            svm.gc_pending(),
            0,
            "range queued again after the GC took it (flags {:?})",
            range.flags()
        );
    }
}

/// An unmap of the whole range races a GC run.
#[test]
fn unmap_vs_gc_run() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup();
        let b = spawn_unmap(&svm, BASE, END);
        let g = spawn_gc(&svm);
        join(b);
        let n = join(g);
        check_not_requeued(&svm, &range);
        let m = svm.gc_run();
        assert_eq!(n + m, 1, "removed once (concurrent run {n}, final run {m})");
        c.hit(if n == 1 {
            "the concurrent GC run removed it"
        } else {
            "the final GC run removed it"
        });
        c.execution();
        assert_eq!(svm.stats().gc_ranges, 1);
        check_removed_once(&svm, &range);
        assert_eq!(
            svm.platform().pt.zaps(),
            vec![(BASE, END), (BASE, END)],
            "zapped by the invalidation and by the removal"
        );
    });
    let n = cov.expect(&[
        "the concurrent GC run removed it",
        "the final GC run removed it",
    ]);
    println!("unmap_vs_gc_run: {n} executions");
}

/// Two partial unmaps (page 0, page 1) race each other and a GC run: the range is queued by
/// the first, must not be queued twice, and must not be queued again while or after the GC
/// removes it.
#[test]
fn two_unmaps_vs_gc_run() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup();
        let b1 = spawn_unmap(&svm, BASE, BASE + 4096);
        let b2 = spawn_unmap(&svm, BASE + 4096, END);
        let g = spawn_gc(&svm);
        join(b1);
        join(b2);
        let n = join(g);
        check_not_requeued(&svm, &range);
        let m = svm.gc_run();
        assert_eq!(n + m, 1, "removed once (concurrent run {n}, final run {m})");
        c.hit(if n == 1 {
            "the concurrent GC run removed it"
        } else {
            "the final GC run removed it"
        });
        c.execution();
        assert_eq!(svm.stats().gc_ranges, 1);
        // The second invalidation finds no notifier if the GC already removed the range (and
        // with it the notifier): it is then ignored.
        let inv = svm.stats().invalidations;
        assert!(inv == 2 || (inv == 1 && n == 1), "invalidations {inv}");
        check_removed_once(&svm, &range);
    });
    let n = cov.expect(&[
        "the concurrent GC run removed it",
        "the final GC run removed it",
    ]);
    println!("two_unmaps_vs_gc_run: {n} executions");
}

/// Two GC workers race for one queued range: exactly one removes it.
#[test]
fn gc_run_vs_gc_run() {
    loom::model(|| {
        let (svm, range) = setup();
        svm.invalidate_begin(NID, BASE, END, Event::Unmap);
        svm.invalidate_end(NID, BASE, END);
        assert_eq!(svm.gc_pending(), 1);
        let g1 = spawn_gc(&svm);
        let g2 = spawn_gc(&svm);
        let n = join(g1) + join(g2);
        assert_eq!(n, 1);
        assert_eq!(svm.gc_run(), 0);
        assert_eq!(svm.stats().gc_ranges, 1);
        check_removed_once(&svm, &range);
    });
}

/// `close` races an unmap: no panic, nothing left queued, the range dropped exactly once.
#[test]
fn close_vs_unmap() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup();
        let b = spawn_unmap(&svm, BASE, END);
        let cl = {
            let svm = svm.clone();
            thread::spawn(move || svm.close())
        };
        join(b);
        join(cl);
        c.hit(if range.flags().contains(RangeFlags::UNMAPPED) {
            "unmapped before the close"
        } else {
            "closed before the unmap"
        });
        c.execution();
        assert_eq!(svm.gc_pending(), 0, "close left the range queued");
        assert_eq!(svm.gc_run(), 0);
        check_removed_once(&svm, &range);
    });
    let n = cov.expect(&["unmapped before the close", "closed before the unmap"]);
    println!("close_vs_unmap: {n} executions");
}

/// `close` races a GC run that has a queued range: removed exactly once, by one of them.
#[test]
fn close_vs_gc_run() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let (svm, range) = setup();
        svm.invalidate_begin(NID, BASE, END, Event::Unmap);
        svm.invalidate_end(NID, BASE, END);
        let g = spawn_gc(&svm);
        let cl = {
            let svm = svm.clone();
            thread::spawn(move || svm.close())
        };
        let n = join(g);
        join(cl);
        c.hit(if n == 1 {
            "the GC run removed it"
        } else {
            "close removed it"
        });
        c.execution();
        assert_eq!(svm.stats().gc_ranges, n);
        assert_eq!(svm.gc_pending(), 0, "close left the range queued");
        assert_eq!(svm.gc_run(), 0);
        check_removed_once(&svm, &range);
    });
    let n = cov.expect(&["the GC run removed it", "close removed it"]);
    println!("close_vs_gc_run: {n} executions");
}
