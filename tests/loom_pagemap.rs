//! Loom models: pagemap attach/detach against device faults, and the pagemap's run index
//! (`runs` mutex) against page frees and new allocations (SPEC §6, DESIGN invariant 5), on the
//! real [`Svm`], [`Pagemap`] and migration state machine over the device-memory platform of
//! `loom_support::dev`.
//!
//! Run (the shared loom target dir keeps the normal build cache intact):
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom cargo test --release --test loom_pagemap -- --nocapture`
//!
//! The range `[BASE, END)` (two 4 KiB pages) is migrated before the threads start into a
//! pagemap of the device's owner: the device's own ([`LOCAL`], set with `set_pagemap`) or a
//! peer's ([`PEER`]). A fault thread then runs `get_pages` with that owner, so the device pages
//! are used in place: `resolve_device_page` reads the `pagemaps` set (shared) and the pagemap's
//! run index through `alloc_of`, under the notifier lock; a peer page is mapped with
//! `device_map` + `map_peer`.
//!
//! - [`attach_vs_fault`]: `attach_pagemap(PEER)` races the fault: the fault either fails
//!   cleanly with `Busy` (resolved before the attach) or commits entries that reach the peer's
//!   current frames through live peer mappings; both happen.
//! - [`evict_then_detach_vs_fault`]: the documented teardown order (the peer evicts its pages
//!   with `migrate::to_ram`, then `detach_pagemap`) races the fault: once the teardown is done,
//!   no entry of the detached pagemap is committed or can be committed; the fault ends `Ok` or
//!   `Busy`; the peer's allocation is released exactly once; no data lost.
//! - [`detach_vs_fault`] / [`set_pagemap_none_vs_fault`]: a bare `detach_pagemap(PEER)` (or
//!   `set_pagemap(None)` for the local pagemap) with the pages still in it races the fault. What
//!   holds in every execution: entries are current, DMA bookkeeping exact, the fault ends `Ok`
//!   or `Busy`. The `_strict` variants also assert that once the detach returned no committed
//!   entry points into the detached pagemap. They found a real bug (fixed in
//!   `Svm::change_pagemaps`): detaching took only the `pagemaps` lock and did not move the
//!   sequence counter, so a collection that resolved the page before the detach committed it
//!   after `detach_pagemap` returned. Now a detach (or a `set_pagemap` that replaces the local
//!   pagemap) moves every notifier's sequence and unmaps ranges with device pages under the
//!   notifier lock; with that step disabled both strict models fail.
//! - [`page_free_vs_track_and_alloc_of`]: the two pages of an allocation are freed by two
//!   threads (`page_free`: `alloc_of`, `put_page`, and for the last page removal from the
//!   `runs` index and `release`) while a third migrates two other pages into the same pagemap
//!   (`alloc` from the device memory, which hands out the released frames at once, then
//!   `track`) and the main thread looks the first frame up (`alloc_of`). The old allocation is
//!   released exactly once; the new one either gets the reused frames and is the only live
//!   allocation (and `alloc_of` finds it, not the old one), or fails cleanly with `NoMem` having
//!   changed nothing; `alloc_of` only ever returns an allocation that holds the frame; live and
//!   released counts agree; no frame leaks; no free is stray.
//!
//! Every model checks its outcome inside each execution and records with [`Coverage`] which
//! interleavings it reached, asserting the interesting ones did.
#![cfg(loom)]

mod loom_support;

use gpusvm::migrate::{to_devmem, to_ram, MigrateDetails};
use gpusvm::pagemap::Pagemap;
use gpusvm::platform::PAGE_SIZE;
use gpusvm::range::RangeArc;
use gpusvm::{Error, PageEntry, PagesCtx, Range, Window};
use loom::thread;
use loom_support::dev::*;
use loom_support::{Coverage, BASE, END, NPAGES};
use std::sync::Arc;

/// An allocation of the model's device memory, shared.
type DevPagemapAlloc = gpusvm::HostArc<gpusvm::DefaultHost, gpusvm::pagemap::DevmemAlloc>;

fn ctx() -> PagesCtx {
    PagesCtx {
        owner: Some(OWNER),
        ..PagesCtx::default()
    }
}

fn dev0(pm: &Pagemap<DevMem>) -> u64 {
    u64::from(pm.id().0) * DEV_STRIDE
}

/// What `setup` builds: the `Svm`, its range, the local and the peer pagemap.
type Setup = (Arc<DevSvm>, RangeArc, DevPagemap, DevPagemap);

/// What the fault thread returns: `get_pages`' result and the frames `bind` saw.
type FaultOutcome = (Result<(), Error>, Option<Vec<Frame>>);

/// An `Svm` with the range, whose pages were migrated into `into` (local or peer); `attach`
/// attaches the peer first.
fn setup(into_peer: bool, attach: bool) -> Setup {
    let (svm, local, peer) = new_dev_svm(3, NPAGES as u64);
    let range = svm
        .find_or_insert(BASE, Window::ALL, &ctx())
        .unwrap_or_else(|e| panic!("find_or_insert: {e:?}"));
    let pm = if into_peer { &peer } else { &local };
    let rep = to_devmem(
        &svm.platform().mm,
        pm,
        BASE,
        END,
        &MigrateDetails::default(),
    )
    .unwrap_or_else(|e| panic!("to_devmem: {e:?}"));
    assert_eq!(rep.pages, NPAGES);
    if attach {
        svm.attach_pagemap(peer.clone())
            .unwrap_or_else(|e| panic!("attach: {e:?}"));
    }
    assert!(!svm.pages_valid(&range));
    (svm, range, local, peer)
}

/// The fault: `get_pages`; Ok or Busy only. If Ok, the entries (if still valid) are current.
/// Returns the result and the pagemaps of the entries committed (seen through `bind`).
fn spawn_fault(svm: &Arc<DevSvm>, range: &RangeArc) -> thread::JoinHandle<FaultOutcome> {
    let (svm, range) = (svm.clone(), range.clone());
    thread::spawn(move || {
        let r = svm.get_pages(&range, &ctx());
        assert!(matches!(r, Ok(()) | Err(Error::Busy)), "get_pages: {r:?}");
        let seen = if r.is_ok() {
            svm.bind(&range, |_, es: &[PageEntry]| {
                assert_entries_current(&svm, es)
            })
            .ok()
        } else {
            None
        };
        (r, seen)
    })
}

fn of_pagemap(frames: &[Frame], id: gpusvm::platform::PagemapId) -> bool {
    frames
        .iter()
        .any(|f| matches!(f, Frame::Dev(p, _) if *p == id))
}

/// The committed frames now (None if not valid), checked current.
fn committed(svm: &DevSvm, range: &Range) -> Option<Vec<Frame>> {
    svm.bind(range, |_, es: &[PageEntry]| assert_entries_current(svm, es))
        .ok()
}

#[test]
fn attach_vs_fault() {
    let cov = Coverage::default();
    let c = cov.clone();
    let t0 = std::time::Instant::now();
    loom::model(move || {
        let (svm, range, local, peer) = setup(true, false);
        let at = {
            let (svm, peer) = (svm.clone(), peer.clone());
            thread::spawn(move || svm.attach_pagemap(peer))
        };
        let fa = spawn_fault(&svm, &range);
        at.join().unwrap().unwrap();
        let (r, _) = fa.join().unwrap();
        match r {
            Ok(()) => {
                let fr = committed(&svm, &range).expect("nothing invalidated it");
                assert!(fr
                    .iter()
                    .all(|f| matches!(f, Frame::Dev(p, _) if *p == PEER)));
                c.hit("resolved after the attach: peer pages committed");
            }
            Err(_) => {
                assert!(!svm.pages_valid(&range));
                c.hit("resolved before the attach: Busy");
            }
        }
        assert!(svm.pagemap_by_id(PEER).is_some());
        assert_dma_clean(&svm, &range, &[&local, &peer]);
        assert_eq!(peer.live_allocations(), 1);
        c.execution();
    });
    let n = cov.expect(&[
        "resolved after the attach: peer pages committed",
        "resolved before the attach: Busy",
    ]);
    println!("attach_vs_fault: {n} executions in {:?}", t0.elapsed());
}

#[test]
fn evict_then_detach_vs_fault() {
    let cov = Coverage::default();
    let c = cov.clone();
    let t0 = std::time::Instant::now();
    loom::model(move || {
        let (svm, range, local, peer) = setup(true, true);
        let td = {
            let (svm, peer, range) = (svm.clone(), peer.clone(), range.clone());
            thread::spawn(move || {
                // The peer's teardown: evict, then detach.
                let rep = to_ram(&svm.platform().mm, &peer, BASE, END)
                    .unwrap_or_else(|e| panic!("to_ram: {e:?}"));
                assert_eq!(rep.pages, NPAGES, "{rep:?}");
                assert_eq!(peer.live_allocations(), 0);
                assert!(svm.detach_pagemap(PEER).is_some());
                // From here on, no entry of the detached pagemap may be committed.
                let fr = committed(&svm, &range);
                assert!(
                    !fr.as_deref().is_some_and(|f| of_pagemap(f, PEER)),
                    "entries of the detached pagemap committed: {fr:?}"
                );
            })
        };
        let fa = spawn_fault(&svm, &range);
        td.join().unwrap();
        let (r, seen) = fa.join().unwrap();
        let fr = committed(&svm, &range);
        assert!(
            !fr.as_deref().is_some_and(|f| of_pagemap(f, PEER)),
            "entries of the detached pagemap committed: {fr:?}"
        );
        c.hit(match (r, seen.as_deref()) {
            (Err(_), _) => "fault gave up (Busy)",
            (Ok(()), Some(f)) if of_pagemap(f, PEER) => {
                "fault committed peer pages before the eviction"
            }
            (Ok(()), Some(_)) => "fault committed the system pages after the eviction",
            (Ok(()), None) => "fault's commit invalidated by the eviction",
        });
        // No data lost, released exactly once, nothing leaked.
        for i in 0..NPAGES {
            assert!(matches!(svm.platform().mm.pte(i), Pte::Sys(_)));
            assert_eq!(svm.platform().mm.cpu_read(i), VAL0 + i as u64);
        }
        let d = dev0(&peer);
        assert_eq!(peer.mem().releases(), vec![vec![d, d + 1]]);
        assert_eq!(peer.released_allocations(), 1);
        assert_eq!(peer.stray_frees(), 0);
        assert_dma_clean(&svm, &range, &[&local, &peer]);
        c.execution();
    });
    let n = cov.expect(&[
        "fault committed peer pages before the eviction",
        "fault committed the system pages after the eviction",
        "fault's commit invalidated by the eviction",
    ]);
    println!(
        "evict_then_detach_vs_fault: {n} executions in {:?}",
        t0.elapsed()
    );
}

/// A bare detach (`peer`: `detach_pagemap(PEER)`; else `set_pagemap(None)`) with the pages
/// still in the pagemap races the fault. `strict`: assert that no device page of the pagemap
/// is committed after the detach returned.
fn bare_detach(peer_variant: bool, strict: bool, name: &str) {
    let cov = Coverage::default();
    let c = cov.clone();
    let t0 = std::time::Instant::now();
    let id = if peer_variant { PEER } else { LOCAL };
    loom::model(move || {
        let (svm, range, local, peer) = setup(peer_variant, peer_variant);
        let td = {
            let (svm, range) = (svm.clone(), range.clone());
            thread::spawn(move || {
                if peer_variant {
                    assert!(svm.detach_pagemap(PEER).is_some());
                } else {
                    svm.set_pagemap(None).unwrap();
                }
                // Whether the fault had committed when the detach returned (its commit takes
                // the range's page-state lock, which this takes too).
                svm.pages_valid(&range)
            })
        };
        let fa = spawn_fault(&svm, &range);
        let valid_at_detach = td.join().unwrap();
        let (r, seen) = fa.join().unwrap();
        let committed_detached = seen.as_deref().is_some_and(|f| of_pagemap(f, id));
        // Whatever the fault did, once both are done no committed entry may point into the
        // detached pagemap: a commit before the detach is unmapped by it, one after retries.
        let now = committed(&svm, &range);
        if strict {
            assert!(
                !now.as_deref().is_some_and(|f| of_pagemap(f, id)),
                "COMMIT AFTER DETACH: r={r:?} seen={seen:?} valid_at_detach={valid_at_detach}: entries {now:?} of {id:?} are committed after the \
                 detach returned"
            );
        }
        if committed_detached && !valid_at_detach {
            c.hit("committed before the detach, unmapped by it");
        } else if r.is_err() {
            c.hit("resolved after the detach: Busy");
        } else {
            c.hit("committed before the detach");
        }
        assert!(svm.pagemap_by_id(id).is_none());
        assert_dma_clean(&svm, &range, &[&local, &peer]);
        c.execution();
    });
    let n = cov.expect(&[
        "resolved after the detach: Busy",
        "committed before the detach",
    ]);
    println!("{name}: {n} executions in {:?}", t0.elapsed());
}

#[test]
fn detach_vs_fault() {
    bare_detach(true, false, "detach_vs_fault");
}

#[test]
fn set_pagemap_none_vs_fault() {
    bare_detach(false, false, "set_pagemap_none_vs_fault");
}

#[test]
fn detach_vs_fault_strict() {
    bare_detach(true, true, "detach_vs_fault_strict");
}

#[test]
fn set_pagemap_none_vs_fault_strict() {
    bare_detach(false, true, "set_pagemap_none_vs_fault_strict");
}

#[test]
fn page_free_vs_track_and_alloc_of() {
    let cov = Coverage::default();
    let c = cov.clone();
    let t0 = std::time::Instant::now();
    loom::model(move || {
        let (svm, _range, local, _peer) = setup(false, false);
        let d = dev0(&local);
        let a = local.alloc_of(d).expect("the allocation");
        let frees: Vec<_> = [d, d + 1]
            .into_iter()
            .map(|f| {
                let pm = local.clone();
                thread::spawn(move || pm.page_free(f))
            })
            .collect();
        let mig = {
            let (svm, pm) = (svm.clone(), local.clone());
            thread::spawn(move || {
                let s = END;
                to_devmem(
                    &svm.platform().mm,
                    &pm,
                    s,
                    s + 2 * PAGE_SIZE,
                    &MigrateDetails::default(),
                )
            })
        };
        // The lookup (what resolve_device_page does) races all of it.
        let seen = local.alloc_of(d);
        if let Some(x) = &seen {
            assert!(
                x.contains(d),
                "alloc_of returned an allocation without the frame"
            );
            c.hit(if DevPagemapAlloc::ptr_eq(x, &a) {
                "alloc_of saw the old allocation"
            } else {
                "alloc_of saw the new allocation on the reused frame"
            });
        } else {
            c.hit("alloc_of saw no allocation");
        }
        for t in frees {
            t.join().unwrap();
        }
        let m = mig.join().unwrap();
        let mm = &svm.platform().mm;
        assert_eq!(local.stray_frees(), 0);
        assert_eq!(
            local.mem().releases()[0],
            vec![d, d + 1],
            "old released first"
        );
        match m {
            Ok(rep) => {
                c.hit("new allocation got the released frames");
                assert_eq!(rep.pages, 2);
                let b = local.alloc_of(d).expect("new allocation tracked");
                assert!(!DevPagemapAlloc::ptr_eq(&a, &b));
                assert_eq!(b.dpfns(), &[d, d + 1]);
                assert_eq!(local.live_allocations(), 1);
                assert_eq!(local.released_allocations(), 1);
                assert_eq!(local.mem().releases().len(), 1);
                assert_eq!(mm.pte(2), Pte::Dev(LOCAL, d));
                assert_eq!(mm.cpu_read(2), VAL0 + 2);
                assert_eq!(mm.cpu_read(3), VAL0 + 3);
                // Its pages go too: released exactly once more, nothing leaks.
                local.page_free(d + 1);
                local.page_free(d);
                assert_eq!(local.released_allocations(), 2);
                assert_eq!(local.mem().releases(), vec![vec![d, d + 1], vec![d, d + 1]]);
            }
            Err(e) => {
                assert_eq!(e, Error::NoMem, "to_devmem: {e:?}");
                c.hit("new allocation refused (NoMem), nothing changed");
                assert_eq!(local.released_allocations(), 1);
                assert_eq!(local.mem().releases().len(), 1);
                assert_eq!(mm.pte(2), Pte::Sys(SYS0 + 2));
                assert_eq!(mm.cpu_read(2), VAL0 + 2);
            }
        }
        assert_eq!(local.live_allocations(), 0);
        assert!(local.alloc_of(d).is_none());
        assert_eq!(local.mem().free_frames(), vec![d, d + 1]);
        assert_eq!(a.live_pages(), 0);
        assert_eq!(local.mem().dma.live(), vec![]);
        assert_eq!(local.mem().dma.violations(), Vec::<String>::new());
        c.execution();
    });
    let n = cov.expect(&[
        "alloc_of saw the old allocation",
        "alloc_of saw no allocation",
        "alloc_of saw the new allocation on the reused frame",
        "new allocation got the released frames",
        "new allocation refused (NoMem), nothing changed",
    ]);
    println!(
        "page_free_vs_track_and_alloc_of: {n} executions in {:?}",
        t0.elapsed()
    );
}
