//! Loom model: the userptr page state ([`gpusvm::Userptr`], SPEC §3) — `get_pages` (sequence
//! read, lock-free collection, DMA map under the userptr lock held shared, commit under it held
//! exclusively with the sequence check) racing the driver's forwarded notifier callbacks
//! (`invalidate_begin`/`invalidate_end`, `invalidate_begin_nonblock`) and `bind` racing an
//! invalidation. The real `Userptr` code runs over the tiny platform of `loom_support` (its
//! lock is the crate's `RwLock` on `DefaultHost`, i.e. loom's mutex + condvar under
//! `--cfg loom`; its sequence counter is loom atomics).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom cargo test --release --test loom_userptr -- --nocapture`.
//!
//! One userptr over the two pages `[BASE, END)`. The invalidating thread plays the driver's
//! interval notifier: `invalidate_begin`, the CPU changes page 0's frame (a `Relaxed` loom
//! atomic, ordered against the collector only by the userptr's protocol), `invalidate_end`.
//! In every execution loom explores:
//!
//! - **No stale commit**: whenever the userptr's pages are valid (checked inside `bind`, i.e.
//!   under its lock, by the collector right after a successful `get_pages` and by the main
//!   thread after the race) every entry maps the frame the CPU maps *now*.
//! - **DMA mappings unmapped exactly once, nothing leaked**: every `unmap_page` hits a live
//!   mapping (no double unmap between the commit's "replace the old state", the invalidation's
//!   unmap and a dropped collection), and the live mappings at the end are exactly the
//!   committed entries (none if the pages are not valid).
//! - The collector ends `Ok` or `Busy` (its retry budget is cut to 3 attempts so every
//!   execution is finite), and **recovery**: after the race a new `get_pages` succeeds (the
//!   sequence is even again) and maps the current frames, with the DMA bookkeeping still exact.
//! - `invalidate_begin_nonblock` either invalidates like the blocking call or returns `Again`
//!   **having changed nothing**: the platform then does not change the page (Linux: the
//!   notifier returned `false`, the OOM reaper skips the VMA) and never calls `invalidate_end`,
//!   so a sequence bump or an unmap by the refused call would show as a collector that cannot
//!   commit / pages invalid at the end / a recovery that stays `Busy` — all asserted against.
//! - `bind` racing an invalidation sees the pages only while they are current.
//!
//! Coverage (asserted after the exploration, so the models cannot pass vacuously): the
//! collector was seen to collect the replaced frame, drop it and commit the new one; to commit
//! before the invalidation (then be invalidated); to collect after it; the non-blockable begin
//! was seen both refused and succeeding; `bind` both bound and refused.
//!
//! Mutations of `src/pages/` these models catch (checked on a copy of the crate while writing
//! them): the commit without its sequence check (stale commit), `PageState::unmap` without the
//! "has DMA mapping" guard (double unmap), a refused `invalidate_begin_nonblock` that bumps the
//! sequence anyway (the recovery stays `Busy`).
#![cfg(loom)]

mod loom_support;

use gpusvm::pages::RetryPolicy;
use gpusvm::platform::PAGE_SHIFT;
use gpusvm::{Error, PageEntry, PagesCtx, Svm, Userptr};
use loom::thread;
use loom_support::*;
use std::sync::Arc;

/// Frame page 0 gets from the invalidating thread.
const NEW_FRAME: u64 = 0x200;

type S = Svm<LoomPlatform>;

struct Model {
    svm: S,
    u: Userptr,
}

fn setup() -> Arc<Model> {
    Arc::new(Model {
        // The Svm only carries the platform here (the userptr needs no range tree).
        svm: new_svm(3),
        u: Userptr::new(BASE, END).unwrap_or_else(|e| panic!("Userptr::new: {e:?}")),
    })
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        deadline_ns: u64::MAX / 2,
        max_attempts: 3,
    }
}

impl Model {
    fn dma(&self) -> &LoomDma {
        &self.svm.platform().dma
    }
    fn get_pages(&self, ctx: &PagesCtx) -> Result<(), Error> {
        self.u.get_pages(self.svm.platform(), ctx, &policy())
    }
    fn invalidate_begin(&self) {
        self.u.invalidate_begin(self.dma(), BASE, END);
    }
    fn invalidate(&self) {
        self.invalidate_begin();
        self.svm.platform().mm.set_frame(0, NEW_FRAME);
        self.u.invalidate_end();
    }
    /// Inside `bind` (the userptr lock held shared): valid pages map the current frames.
    /// Returns whether the pages were valid.
    fn assert_bound_current(&self) -> bool {
        self.u
            .bind(|start, entries: &[PageEntry]| {
                assert_eq!(start, BASE);
                assert_eq!(entries.len(), NPAGES, "one 4 KiB entry per page");
                for (i, e) in entries.iter().enumerate() {
                    let cur = self.svm.platform().mm.frame(i);
                    assert_eq!(
                        e.addr() >> PAGE_SHIFT,
                        cur,
                        "STALE COMMIT: userptr page {i} maps frame {:#x}, the CPU maps {cur:#x}",
                        e.addr() >> PAGE_SHIFT
                    );
                }
            })
            .is_ok()
    }
    fn committed(&self) -> Option<Vec<(u64, u8)>> {
        self.u
            .bind(|_, entries: &[PageEntry]| {
                let mut v: Vec<(u64, u8)> = entries.iter().map(|e| (e.addr(), e.order())).collect();
                v.sort_unstable();
                v
            })
            .ok()
    }
    /// No unmap violation; live mappings are exactly the committed entries.
    fn assert_dma_consistent(&self) {
        assert_eq!(
            self.dma().violations(),
            Vec::<String>::new(),
            "DMA unmap violations"
        );
        assert_eq!(
            self.u.pages_valid(),
            self.committed().is_some(),
            "pages_valid disagrees with bind"
        );
        let live = self.dma().live();
        match self.committed() {
            Some(c) => assert_eq!(
                live, c,
                "live DMA mappings differ from the committed entries"
            ),
            None => assert_eq!(
                live,
                vec![],
                "DMA mappings live although the pages are not valid"
            ),
        }
    }
    /// Nothing races any more: a new collection (forced: the pages are unmapped first, so it
    /// cannot just reuse them) succeeds within its 3 attempts — the sequence is even — and maps
    /// the current frames.
    fn check_recovers(&self) {
        self.u.unmap_pages(self.dma());
        assert_eq!(self.dma().live(), vec![], "unmap_pages left a mapping live");
        self.get_pages(&PagesCtx::default())
            .unwrap_or_else(|e| panic!("get_pages after the race: {e:?}"));
        assert!(self.assert_bound_current(), "pages valid after get_pages");
        self.assert_dma_consistent();
        // And the userptr can be torn down without leaking.
        self.u.free_pages(self.dma());
        assert_eq!(self.dma().live(), vec![], "free_pages leaked a mapping");
        assert_eq!(self.dma().violations(), Vec::<String>::new());
    }
}

fn spawn_collector(m: &Arc<Model>, ctx: PagesCtx) -> thread::JoinHandle<Result<(), Error>> {
    let m = m.clone();
    thread::spawn(move || {
        let r = m.get_pages(&ctx);
        if r.is_ok() {
            // Ok means the pages were valid at the commit; an invalidation may have unmapped
            // them since, but if they are still valid they must be current.
            m.assert_bound_current();
        }
        r
    })
}

fn join<T>(h: thread::JoinHandle<T>) -> T {
    h.join()
        .unwrap_or_else(|_| panic!("a model thread panicked"))
}

const STALE_DROPPED: &str = "collected the replaced frame, dropped it, committed the new one";
const AFTER: &str = "collected after the invalidation";
const BEFORE: &str = "committed before the invalidation, then invalidated";
const BUSY: &str = "gave up (Busy)";

/// Classify a collector's outcome by what it mapped (`skip`: mappings made before the race).
fn classify(cov: &Coverage, m: &Model, r: &Result<(), Error>, skip: usize) {
    let mapped_old = m
        .dma()
        .log()
        .iter()
        .skip(skip)
        .any(|x| x.addr == FRAME0 << PAGE_SHIFT);
    cov.hit(match (r, m.committed().is_some()) {
        (Ok(()), true) if mapped_old => STALE_DROPPED,
        (Ok(()), true) => AFTER,
        (Ok(()), false) => BEFORE,
        (Err(Error::Busy), _) => BUSY,
        (Err(_), _) => "other error",
    });
    cov.execution();
}

/// A first `get_pages` of an empty userptr races a whole invalidation.
#[test]
fn get_pages_vs_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let m = setup();
        let a = spawn_collector(&m, PagesCtx::default());
        let b = {
            let m = m.clone();
            thread::spawn(move || m.invalidate())
        };
        let ra = join(a);
        join(b);
        assert!(matches!(ra, Ok(()) | Err(Error::Busy)), "collector: {ra:?}");
        m.assert_bound_current();
        m.assert_dma_consistent();
        classify(&c, &m, &ra, 0);
        m.check_recovers();
    });
    let n = cov.expect(&[STALE_DROPPED, AFTER, BEFORE]);
    println!("get_pages_vs_invalidate: {n} executions");
}

/// Pages are committed read-only; the collector wants them writable, so its commit replaces
/// (and unmaps) the old state while the invalidation unmaps it too: each old mapping is
/// unmapped exactly once, whoever does it.
#[test]
fn recommit_vs_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let m = setup();
        let ro = PagesCtx {
            read_only: true,
            ..PagesCtx::default()
        };
        m.get_pages(&ro)
            .unwrap_or_else(|e| panic!("initial get_pages: {e:?}"));
        assert_eq!(m.dma().log().len(), NPAGES);
        let a = spawn_collector(&m, PagesCtx::default());
        let b = {
            let m = m.clone();
            thread::spawn(move || m.invalidate())
        };
        let ra = join(a);
        join(b);
        assert!(matches!(ra, Ok(()) | Err(Error::Busy)), "collector: {ra:?}");
        let log = m.dma().log();
        assert!(
            log.iter().take(NPAGES).all(|x| x.unmapped),
            "read-only mappings leaked: {log:?}"
        );
        m.assert_bound_current();
        m.assert_dma_consistent();
        classify(&c, &m, &ra, NPAGES);
        m.check_recovers();
    });
    let n = cov.expect(&[STALE_DROPPED, AFTER, BEFORE]);
    println!("recommit_vs_invalidate: {n} executions");
}

const REFUSED: &str = "non-blockable begin refused (Again), nothing changed";
const NONBLOCK_OK: &str = "non-blockable begin took the free lock";
const REFUSED_THEN_COMMITTED: &str = "refused, and the collector committed the old frame";

/// A first `get_pages` races a *non-blockable* invalidation. Refused (`Again`), the platform
/// leaves the page as it is and calls no `invalidate_end`: if the refused call had moved the
/// sequence or unmapped anything, the collection could not commit, the pages would be invalid
/// at the end, or the recovery would stay `Busy` on an odd sequence.
#[test]
fn get_pages_vs_nonblocking_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let m = setup();
        let a = spawn_collector(&m, PagesCtx::default());
        let b = {
            let m = m.clone();
            thread::spawn(
                move || match m.u.invalidate_begin_nonblock(m.dma(), BASE, END) {
                    Ok(()) => {
                        m.svm.platform().mm.set_frame(0, NEW_FRAME);
                        m.u.invalidate_end();
                        true
                    }
                    Err(e) => {
                        assert_eq!(e, Error::Again, "nonblock begin");
                        false
                    }
                },
            )
        };
        let ra = join(a);
        let invalidated = join(b);
        m.assert_bound_current();
        m.assert_dma_consistent();
        if invalidated {
            c.hit(NONBLOCK_OK);
            assert!(matches!(ra, Ok(()) | Err(Error::Busy)), "collector: {ra:?}");
        } else {
            c.hit(REFUSED);
            // Refusal happens only while the collector holds the lock, so the collector was
            // running; nothing invalidated it, so its commit stands (3 attempts are plenty:
            // the sequence never moved).
            assert_eq!(ra, Ok(()), "refused, yet the collector did not commit");
            assert_eq!(
                m.committed(),
                Some(vec![
                    (FRAME0 << PAGE_SHIFT, 0),
                    ((FRAME0 + 1) << PAGE_SHIFT, 0)
                ]),
                "refused, yet the committed pages were unmapped or changed"
            );
            assert!(
                m.dma().log().iter().all(|x| !x.unmapped),
                "refused, yet something was unmapped"
            );
            c.hit(REFUSED_THEN_COMMITTED);
        }
        c.execution();
        m.check_recovers();
    });
    let n = cov.expect(&[REFUSED, NONBLOCK_OK, REFUSED_THEN_COMMITTED]);
    println!("get_pages_vs_nonblocking_invalidate: {n} executions");
}

/// The non-blockable begin while a `bind` holds the lock (the driver writing its page table)
/// is always refused with nothing changed; outside it, it invalidates.
#[test]
fn nonblocking_invalidate_vs_bind() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let m = setup();
        m.get_pages(&PagesCtx::default())
            .unwrap_or_else(|e| panic!("initial get_pages: {e:?}"));
        // Set by the invalidator after its attempt; the binder holds the lock until then.
        let tried = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let a = {
            let (m, tried) = (m.clone(), tried.clone());
            thread::spawn(move || {
                m.u.bind(|_, _| {
                    while !tried.load(loom::sync::atomic::Ordering::Acquire) {
                        thread::yield_now();
                    }
                })
                .is_ok()
            })
        };
        let b = {
            let (m, tried) = (m.clone(), tried.clone());
            thread::spawn(move || {
                let r = m.u.invalidate_begin_nonblock(m.dma(), BASE, END);
                tried.store(true, loom::sync::atomic::Ordering::Release);
                if r.is_ok() {
                    m.svm.platform().mm.set_frame(0, NEW_FRAME);
                    m.u.invalidate_end();
                }
                r
            })
        };
        let bound = join(a);
        let rb = join(b);
        match (bound, rb) {
            (true, Err(Error::Again)) => {
                c.hit("refused while bound");
                assert!(m.u.pages_valid(), "refused, yet the pages were unmapped");
                assert!(m.dma().log().iter().all(|x| !x.unmapped));
            }
            (false, Ok(())) => {
                c.hit("invalidated before the bind");
                assert!(!m.u.pages_valid());
            }
            (true, Ok(())) => panic!("the non-blockable begin took the lock while bind held it"),
            (bound, r) => panic!("unexpected outcome: bound {bound}, nonblock {r:?}"),
        }
        c.execution();
        m.assert_bound_current();
        m.assert_dma_consistent();
        m.check_recovers();
    });
    let n = cov.expect(&["refused while bound", "invalidated before the bind"]);
    println!("nonblocking_invalidate_vs_bind: {n} executions");
}

/// Pages are committed; the driver binds them (reading the CPU frame inside `bind`) while an
/// invalidation changes the frame: `bind` sees the pages only while they are current.
#[test]
fn bind_vs_invalidate() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let m = setup();
        m.get_pages(&PagesCtx::default())
            .unwrap_or_else(|e| panic!("initial get_pages: {e:?}"));
        let a = {
            let m = m.clone();
            thread::spawn(move || m.assert_bound_current())
        };
        let b = {
            let m = m.clone();
            thread::spawn(move || m.invalidate())
        };
        let bound = join(a);
        join(b);
        c.hit(if bound { "bound" } else { "refused (Again)" });
        c.execution();
        assert!(!m.u.pages_valid(), "the invalidation left the pages valid");
        m.assert_dma_consistent();
        m.check_recovers();
    });
    let n = cov.expect(&["bound", "refused (Again)"]);
    println!("bind_vs_invalidate: {n} executions");
}

/// Two nested invalidations on two threads (the sequence stays odd until the last one ends),
/// each changing one page, race a collection: whatever it commits maps both current frames.
#[test]
fn get_pages_vs_nested_invalidations() {
    let cov = Coverage::default();
    let c = cov.clone();
    loom::model(move || {
        let m = setup();
        let a = spawn_collector(&m, PagesCtx::default());
        let bs: Vec<_> = (0..2u64)
            .map(|i| {
                let m = m.clone();
                thread::spawn(move || {
                    m.invalidate_begin();
                    m.svm.platform().mm.set_frame(i as usize, NEW_FRAME + i);
                    m.u.invalidate_end();
                })
            })
            .collect();
        let ra = join(a);
        for b in bs {
            join(b);
        }
        assert!(matches!(ra, Ok(()) | Err(Error::Busy)), "collector: {ra:?}");
        m.assert_bound_current();
        m.assert_dma_consistent();
        c.hit(match (&ra, m.committed().is_some()) {
            (Ok(()), true) => "committed after both",
            (Ok(()), false) => BEFORE,
            _ => BUSY,
        });
        c.execution();
        m.check_recovers();
    });
    let n = cov.expect(&["committed after both", BEFORE]);
    println!("get_pages_vs_nested_invalidations: {n} executions");
}
