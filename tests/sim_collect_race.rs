//! Page collections raced by invalidations (DESIGN invariant 6: a collection that an
//! invalidation overlapped is never committed), injected collection retries and their budget,
//! and injected DMA-map failures. Every step runs the invariant checker and the data model
//! check (see `sim_support`).
#![cfg(feature = "sim")]

mod sim_support;

use gpusvm::platform::{DmaDirection, HUGE_ORDER};
use gpusvm::sim::SimMm;
use gpusvm::{Access, Error, SvmConfig};
use sim_support::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Hook = Box<dyn FnMut(&Arc<SimMm>) + Send>;

/// A collect hook that runs `f` once, at the first collection after it is installed.
fn once(f: impl FnOnce(&Arc<SimMm>) + Send + 'static) -> Hook {
    let mut f = Some(f);
    Box::new(move |mm| {
        if let Some(f) = f.take() {
            f(mm);
        }
    })
}

#[test]
fn collection_raced_by_madvise_dontneed_commits_only_the_new_pages() {
    let mut s = Sim::new();
    let d = s.mmap(M2, RW, false);
    s.cpu_fill(d, d + M2, K64, |a| tag(a, 0));
    // During the first collection the CPU drops the first 64 KiB and writes a new value there.
    let fired = Arc::new(AtomicBool::new(false));
    let f2 = fired.clone();
    s.mm.set_collect_hook(Some(once(move |mm| {
        mm.madvise_dontneed(d, K64).unwrap();
        mm.write_u64(d + 8, 42).unwrap();
        f2.store(true, Ordering::SeqCst);
    })));
    s.model.retain(|a, _| !(d..d + K64).contains(a));
    s.model.insert(d + 8, 42);
    let retries = s.stats().retries;
    assert_eq!(s.dev_read(d + 8), Ok(42));
    assert!(fired.load(Ordering::SeqCst));
    assert!(s.stats().retries > retries, "{:?}", s.stats());
    assert_eq!(s.dev_read(d), Ok(0));
    assert_eq!(s.dev_read(d + K64), Ok(tag(d + K64, 0)));
    assert_eq!(s.dma_live(), 512);
    assert_eq!(s.stats().pages_committed, 1);
}

#[test]
fn collection_raced_by_fork_commits_the_parent_copies() {
    let mut s = Sim::new();
    let d = s.mmap(M2, RW, false);
    s.cpu_fill(d, d + M2, K64, |a| tag(a, 0));
    let child: Arc<Mutex<Option<Arc<SimMm>>>> = Arc::default();
    let c2 = child.clone();
    s.mm.set_collect_hook(Some(once(move |mm| {
        *c2.lock().unwrap() = Some(mm.fork());
    })));
    let retries = s.stats().retries;
    assert_eq!(s.dev_read(d), Ok(tag(d, 0)));
    let child = child.lock().unwrap().take().expect("the hook forked");
    // Dropped once for the fork, once more because the writable collection broke
    // copy-on-write in the parent while it ran.
    assert!(s.stats().retries >= retries + 2, "{:?}", s.stats());
    // What is bound is the parent's private copy: writable and not shared with the child.
    for p in (d..d + M2).step_by(P as usize) {
        let pte = s.mm.pte(p).unwrap();
        assert!(pte.writable && !pte.cow);
        assert_ne!(Some(pte.pfn), child.pte(p).map(|c| c.pfn));
    }
    child.write_u64(d, 999).unwrap();
    assert_eq!(s.dev_read(d), Ok(tag(d, 0)));
    let faults = s.stats().faults;
    s.cpu_write(d + K64, 5).unwrap();
    assert_eq!(s.dev_read(d + K64), Ok(5));
    assert_eq!(s.stats().faults, faults, "the binding stayed valid");
    assert_eq!(child.read_u64(d + K64), Ok(tag(d + K64, 0)));
}

#[test]
fn collection_raced_by_mprotect_fails_with_perm_and_leaves_nothing() {
    let mut s = Sim::new();
    let d = s.mmap(M2, RW, false);
    s.cpu_fill(d, d + M2, K64, |a| tag(a, 0));
    s.mm.set_collect_hook(Some(once(move |mm| {
        mm.mprotect(d, M2, RO).unwrap();
    })));
    let retries = s.stats().retries;
    // The write fault collected writable pages; the CPU made them read-only before the
    // commit: the collection is dropped, and the retry finds the pages read-only.
    assert_eq!(s.dev_write(d + 8, 1), Err(Error::Perm));
    assert!(s.stats().retries > retries);
    assert_eq!(s.dma_live(), 0);
    assert_eq!(s.dev_ptes_in(d, d + M2), 0);
    // The range may stay (invalid) or be rebuilt later: either way nothing is valid.
    assert!(s.gpu.svm.find(d).is_none_or(|r| !s.gpu.svm.pages_valid(&r)));
    // Reading works, read-only.
    assert_eq!(s.dev_read(d + K64), Ok(tag(d + K64, 0)));
    assert!(s.all_dma_dir(DmaDirection::ToDevice));
}

#[test]
fn injected_collection_retries_then_succeed() {
    let mut s = Sim::new();
    let d = s.mmap(4 * M, RW, false);
    s.cpu_write(d + 8, 1).unwrap();
    s.mm.inject_collect_again(3);
    let r0 = s.stats().retries;
    assert_eq!(s.dev_read(d + 8), Ok(1));
    assert_eq!(s.stats().retries, r0 + 3);
    assert_eq!(s.stats().pages_committed, 1);
    // More retries than a handful: still within the budget.
    s.mm.inject_collect_again(20);
    assert_eq!(s.dev_write(d + M2 + 8, 2), Ok(()));
    assert_eq!(s.stats().retries, r0 + 3 + 20);
    assert_eq!(s.cpu_read(d + M2 + 8), Ok(2));
    assert_eq!(s.dma_live(), 1024);
}

#[test]
fn endless_collection_retries_with_a_frozen_clock_end_busy_without_mappings() {
    let mut s = Sim::new();
    let d = s.mmap(M2, RW, false);
    s.cpu_write(d + 8, 1).unwrap();
    s.world.set_clock_step(0);
    s.mm.inject_collect_again(u32::MAX);
    let r0 = s.stats().retries;
    assert_eq!(s.dev_read(d + 8), Err(Error::Busy));
    // The attempt budget (max_attempts) ended it, not the deadline.
    let budget = s.gpu.svm.config().retry.max_attempts as usize;
    assert!(s.stats().retries - r0 >= budget - 1, "{:?}", s.stats());
    assert_eq!(s.dma_live(), 0);
    assert_eq!(s.gpu.dev.dma_counts(), (0, 0));
    assert_eq!(s.dev_ptes_in(d, d + M2), 0);
    assert_eq!(s.stats().pages_committed, 0);
    // Once the platform stops refusing, the same fault succeeds.
    s.mm.inject_collect_again(0);
    s.world.set_clock_step(1_000);
    assert_eq!(s.dev_read(d + 8), Ok(1));
    assert_eq!(s.stats().pages_committed, 1);
}

#[test]
fn collection_retries_stop_at_the_deadline() {
    let mut s = Sim::new();
    let d = s.mmap(M2, RW, false);
    // Every clock reading advances 300 ms: the 1 s deadline passes after a few attempts.
    s.world.set_clock_step(300_000_000);
    s.mm.inject_collect_again(u32::MAX);
    let r0 = s.stats().retries;
    assert_eq!(s.dev_fault(d, Access::Read), Err(Error::Busy));
    let n = s.stats().retries - r0;
    assert!((1..10).contains(&n), "{n} retries");
    assert_eq!(s.gpu.dev.dma_counts(), (0, 0));
}

#[test]
fn random_collection_retries_never_lose_data() {
    let mut s = Sim::new();
    let d = s.mmap(8 * M, RW, false);
    s.mm.inject_collect_again_rate(300_000, 7);
    for i in 0..128u64 {
        let a = d + i * K64 + 8;
        if i % 2 == 0 {
            s.cpu_write(a, tag(a, 1)).unwrap();
            assert_eq!(s.dev_read(a), Ok(tag(a, 1)));
        } else {
            s.dev_write(a, tag(a, 2)).unwrap();
            assert_eq!(s.cpu_read(a), Ok(tag(a, 2)));
        }
        if i % 4 == 3 && i < 127 {
            // Invalidate the range the next access uses, so that it faults again.
            s.dontneed(d + (i + 1) * K64 + K64 / 2, P);
        }
    }
    assert!(s.stats().retries > 0, "{:?}", s.stats());
}

// ---- DMA map failures ---------------------------------------------------------------------

#[test]
fn dma_map_failure_mid_range_unmaps_everything_then_a_later_fault_succeeds() {
    let mut s = Sim::new();
    let d = s.mmap(4 * M, RW, false);
    s.cpu_fill(d, d + M2, K64, |a| tag(a, 0));
    s.gpu.dev.inject_dma_fail_at(100);
    assert_eq!(s.dev_read(d + K64), Err(Error::NoMem));
    assert_eq!(s.dma_live(), 0);
    assert_eq!(s.gpu.dev.dma_counts(), (99, 99));
    assert_eq!(s.dev_ptes_in(d, d + M2), 0);
    assert!(!s.gpu.svm.pages_valid(&s.range(d)));
    assert_eq!(s.stats().pages_committed, 0);
    // A failed device write changes nothing either.
    s.gpu.dev.inject_dma_fail_at(1);
    assert_eq!(s.dev_write(d + K64, 5), Err(Error::NoMem));
    assert_eq!(s.gpu.dev.dma_counts(), (99, 99));
    // The next fault succeeds.
    assert_eq!(s.dev_read(d + K64), Ok(tag(d + K64, 0)));
    assert_eq!(s.dma_live(), 512);
    assert_eq!(s.gpu.dev.dma_counts(), (99 + 512, 99));

    // A range that was valid, invalidated, then fails to remap: nothing stale stays.
    s.dontneed(d, K64);
    s.gpu.dev.inject_dma_fail_at(300);
    assert_eq!(s.dev_read(d + 8), Err(Error::NoMem));
    assert_eq!(s.dma_live(), 0);
    assert_eq!(s.dev_read(d + 8), Ok(0));
    assert_eq!(s.dev_read(d + K64), Ok(tag(d + K64, 0)));
}

#[test]
fn dma_map_failure_on_huge_pages() {
    let mut s = Sim::new();
    let h = s.mmap(4 * M, RW, true);
    s.cpu_write(h, 1).unwrap();
    s.cpu_write(h + M2, 2).unwrap();
    assert_eq!(s.dev_read(h), Ok(1));
    s.gpu.dev.inject_dma_fail_at(1);
    assert_eq!(s.dev_read(h + M2), Err(Error::NoMem));
    assert_eq!(s.dma_orders().get(&HUGE_ORDER), Some(&1));
    assert_eq!(s.dev_read(h + M2), Ok(2));
    assert_eq!(s.dma_orders().get(&HUGE_ORDER), Some(&2));
}

#[test]
fn random_dma_failures_leave_consistent_state() {
    // 64 KiB ranges (16 DMA maps each) without the presence check.
    let mut cfg = SvmConfig::new(0, 1 << 47)
        .with_chunk_sizes(&[K64, P])
        .unwrap();
    cfg.check_pages_threshold = 0;
    let mut s = Sim::with_config(cfg);
    let bufs: Vec<u64> = (0..6).map(|_| s.mmap(M, RW, false)).collect();
    for &b in &bufs {
        s.cpu_fill(b, b + M, 16 << 10, |a| tag(a, 0));
    }
    s.gpu.dev.inject_dma_fail_rate(5_000, 11);
    let (mut ok, mut failed) = (0, 0);
    for round in 0..4u64 {
        for (i, &b) in bufs.iter().enumerate() {
            for k in 0..16u64 {
                let a = b + k * K64 + 8 * (round + 1);
                let r = if (i as u64 + k + round) % 3 == 0 {
                    s.dev_write(a, tag(a, round + 1))
                } else {
                    s.dev_read(a).map(|_| ())
                };
                match r {
                    Ok(()) => ok += 1,
                    Err(Error::NoMem) => failed += 1,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            if round % 2 == 1 {
                s.dontneed(b + (i as u64 % 4) * K64, K64);
            }
        }
    }
    assert!(ok > 0 && failed > 0, "ok {ok} failed {failed}");
    s.gpu.dev.inject_dma_fail_rate(0, 0);
    let addrs: Vec<u64> = s.model.keys().copied().collect();
    for a in addrs {
        assert_eq!(s.dev_read(a), Ok(s.expect(a)));
    }
}
