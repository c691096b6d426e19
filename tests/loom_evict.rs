//! Loom models: eviction and CPU-fault migration of a range in device memory racing a device
//! fault on the same range (SPEC §3, §6, §7; DESIGN invariants 3, 5 and 6), on the real
//! [`Svm`], [`Pagemap`] and migration state machine over the device-memory platform of
//! `loom_support::dev`.
//!
//! Run (the shared loom target dir keeps the normal build cache intact):
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom cargo test --release --test loom_evict -- --nocapture`
//!
//! Before the threads start, the range `[BASE, END)` (two 4 KiB pages holding `VAL0`,
//! `VAL0 + 1`) is migrated into the device's own pagemap by [`Svm::migrate_to_devmem`] (one
//! two-page allocation). Then one thread moves it back to system memory while a device-fault
//! thread collects it (`get_pages` with the device's owner, so device pages are used in
//! place) and, if that succeeded, binds it and has the device write [`DEV_VAL`] into page 0
//! through the committed entry (inside `bind`, as a device would after the driver wrote its
//! page-table entries; the write lands in whatever frame the entry reaches).
//!
//! - [`evict_vs_device_fault`]: the mover is [`Svm::evict`] (`migrate::to_ram` through the
//!   platform's isolate → copy → finalize, the isolation delivering an `Event::Migrate`
//!   invalidation).
//! - [`cpu_fault_vs_device_fault`]: the mover is the CPU-fault path
//!   [`Pagemap::migrate_to_ram`] on page 1, after which the CPU writes [`CPU_VAL`] into page 1.
//!
//! In every execution loom explores (every interleaving up to the preemption bound, every
//! outcome of the `Relaxed` page-table atomics and of the crate's atomics):
//!
//! - **No stale commit**: whenever `bind` shows entries (in the fault thread, and at the end)
//!   each reaches exactly the frame the CPU page table maps *now*: never a device frame that was
//!   migrated away (or freed and reusable), never a system frame that is not the current one.
//! - **No data lost**: at the end the CPU maps system pages, page 0 holds [`DEV_VAL`] if the
//!   device's write happened and `VAL0` otherwise, page 1 holds `VAL0 + 1` (or [`CPU_VAL`] when
//!   the CPU wrote it): a device write through a committed device-memory entry is always copied
//!   back, never dropped by a copy that ran before it.
//! - **Released exactly once**: the device-memory allocation is released exactly once, with
//!   exactly its frames (the free list gets every frame back, none twice), the pagemap counts 0
//!   live / 1 released and no stray free; every DMA mapping of the device is unmapped at most
//!   once and the live ones are exactly the committed entries; every copy-engine DMA mapping is
//!   gone; the mover frees each system frame it allocated but did not install.
//! - **Fault outcome**: `get_pages` ends in `Ok` or `Busy` (its cut-down retry budget: the
//!   documented retryable outcome while a migration holds the pages), `bind` in `Ok` or
//!   `Again` (an invalidation ran since the commit: fault again); the mover ends in `Ok`.
//!
//! [`Coverage`] asserts that the interesting interleavings were reached: the fault committing
//! the device pages before the move (and its write then being copied back), the fault
//! committing the system pages after it, a commit invalidated before the bind, and the fault's
//! collection meeting the migration (retry).
//!
//! `loom_devmem.rs` models only the allocation refcount (`put_page`/`page_free` between
//! themselves); neither of these races is covered there.
#![cfg(loom)]

mod loom_support;

use gpusvm::migrate::MigrateDetails;
use gpusvm::platform::PAGE_SIZE;
use gpusvm::range::RangeArc;
use gpusvm::{Error, PageEntry, PagesCtx, Range, Window};
use loom::thread;
use loom_support::dev::*;
use loom_support::{Coverage, BASE, END, NPAGES};
use std::sync::Arc;

/// What the device writes into page 0.
const DEV_VAL: u64 = 100;
/// What the CPU writes into page 1 after its fault.
const CPU_VAL: u64 = 200;
/// First device frame of the local pagemap.
const DEV0: u64 = LOCAL.0 as u64 * DEV_STRIDE;

fn ctx() -> PagesCtx {
    PagesCtx {
        owner: Some(OWNER),
        ..PagesCtx::default()
    }
}

/// An `Svm` whose range lives in its own device memory (one allocation, frames `DEV0..+2`).
fn setup() -> (Arc<DevSvm>, RangeArc, DevPagemap) {
    let (svm, local, _peer) = new_dev_svm(3, NPAGES as u64);
    let range = svm
        .find_or_insert(BASE, Window::ALL, &ctx())
        .unwrap_or_else(|e| panic!("find_or_insert: {e:?}"));
    assert_eq!((range.start(), range.end()), (BASE, END));
    let rep = svm
        .migrate_to_devmem(&range, &MigrateDetails::default())
        .unwrap_or_else(|e| panic!("migrate_to_devmem: {e:?}"));
    assert_eq!(rep.pages, NPAGES);
    for i in 0..NPAGES {
        assert_eq!(svm.platform().mm.pte(i), Pte::Dev(LOCAL, DEV0 + i as u64));
        assert_eq!(svm.platform().mm.cpu_read(i), VAL0 + i as u64);
    }
    assert_eq!(local.live_allocations(), 1);
    assert!(!svm.pages_valid(&range));
    (svm, range, local)
}

/// What the fault thread saw.
#[derive(Debug, Clone, Copy)]
struct FaultOutcome {
    got: Result<(), Error>,
    /// `bind` result: `Some(frame written)` if the device wrote.
    wrote: Option<Frame>,
    bind_again: bool,
}

/// The device fault: collect, then bind and write `DEV_VAL` into page 0 through its entry.
fn spawn_fault(svm: &Arc<DevSvm>, range: &RangeArc) -> thread::JoinHandle<FaultOutcome> {
    let (svm, range) = (svm.clone(), range.clone());
    thread::spawn(move || {
        let got = svm.get_pages(&range, &ctx());
        assert!(
            matches!(got, Ok(()) | Err(Error::Busy)),
            "get_pages ended in {got:?}"
        );
        let mut out = FaultOutcome {
            got,
            wrote: None,
            bind_again: false,
        };
        if got.is_ok() {
            match svm.bind(&range, |_, es: &[PageEntry]| {
                let frames = assert_entries_current(&svm, es);
                svm.platform().mm.write(frames[0], DEV_VAL);
                frames[0]
            }) {
                Ok(f) => out.wrote = Some(f),
                Err(Error::Again) => out.bind_again = true,
                Err(e) => panic!("bind ended in {e:?}"),
            }
        }
        out
    })
}

/// Record the fault's outcome.
fn cover(c: &Coverage, f: &FaultOutcome, svm: &DevSvm) {
    match f.wrote {
        Some(Frame::Dev(..)) => c.hit("device wrote device memory, then it moved"),
        Some(Frame::Sys(_)) => c.hit("fault committed the system pages after the move"),
        None if f.bind_again => c.hit("commit invalidated before bind"),
        None => {
            assert_eq!(f.got, Err(Error::Busy), "{f:?}");
            c.hit("fault gave up (Busy)")
        }
    }
    if svm.stats().retries > 0 {
        c.hit("collection met the migration and retried");
    }
}

/// The end-of-model checks shared by both models.
fn check_after(svm: &DevSvm, range: &Range, local: &DevPagemap, f: &FaultOutcome) {
    let mm = &svm.platform().mm;
    // Everything is in system memory now.
    for i in 0..NPAGES {
        assert!(
            matches!(mm.pte(i), Pte::Sys(_)),
            "page {i}: {:?}",
            mm.pte(i)
        );
    }
    // No data lost.
    let want0 = if f.wrote.is_some() { DEV_VAL } else { VAL0 };
    assert_eq!(mm.cpu_read(0), want0, "page 0 lost a write ({f:?})");
    // Entries still valid are current.
    let _ = svm.bind(range, |_, es: &[PageEntry]| assert_entries_current(svm, es));
    // The allocation: released exactly once, with its frames; nothing leaked.
    assert_eq!(local.live_allocations(), 0);
    assert_eq!(local.released_allocations(), 1);
    assert_eq!(local.stray_frees(), 0);
    assert_eq!(local.mem().releases(), vec![vec![DEV0, DEV0 + 1]]);
    assert_eq!(local.mem().free_frames(), vec![DEV0, DEV0 + 1]);
    assert!(local.alloc_of(DEV0).is_none());
    assert_dma_clean(svm, range, &[local]);
    // The initial system frames went when the pages moved in; the mover's frames are
    // installed, none freed.
    let mut freed = mm.freed_sys.lock().unwrap().clone();
    freed.sort_unstable();
    assert_eq!(freed, vec![SYS0, SYS0 + 1]);
    // The fault's state can always be rebuilt afterwards.
    svm.get_pages(range, &ctx())
        .unwrap_or_else(|e| panic!("get_pages after the race: {e:?}"));
    let _ = svm.bind(range, |_, es: &[PageEntry]| {
        let fr = assert_entries_current(svm, es);
        assert!(fr.iter().all(|f| matches!(f, Frame::Sys(_))), "{fr:?}");
    });
}

const EXPECT: &[&str] = &[
    "device wrote device memory, then it moved",
    "fault committed the system pages after the move",
    "commit invalidated before bind",
    "collection met the migration and retried",
];

#[test]
fn evict_vs_device_fault() {
    let cov = Coverage::default();
    let c = cov.clone();
    let t0 = std::time::Instant::now();
    loom::model(move || {
        let (svm, range, local) = setup();
        let ev = {
            let (svm, range) = (svm.clone(), range.clone());
            thread::spawn(move || svm.evict(&range))
        };
        let fa = spawn_fault(&svm, &range);
        let rep = ev
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("evict: {e:?}"));
        let f = fa.join().unwrap();
        assert_eq!(rep.pages, NPAGES, "{rep:?}");
        assert_eq!(svm.platform().mm.cpu_read(1), VAL0 + 1);
        check_after(&svm, &range, &local, &f);
        cover(&c, &f, &svm);
        c.execution();
    });
    let n = cov.expect(EXPECT);
    println!(
        "evict_vs_device_fault: {n} executions in {:?}",
        t0.elapsed()
    );
}

#[test]
fn cpu_fault_vs_device_fault() {
    let cov = Coverage::default();
    let c = cov.clone();
    let t0 = std::time::Instant::now();
    loom::model(move || {
        let (svm, range, local) = setup();
        let cpu = {
            let (svm, local) = (svm.clone(), local.clone());
            thread::spawn(move || {
                let mm = &svm.platform().mm;
                let r = local.migrate_to_ram(mm, BASE + PAGE_SIZE, DEV0 + 1);
                // The faulting CPU access: page 1 is in system memory now.
                assert!(mm.cpu_write(1, CPU_VAL), "page 1 still not in RAM: {r:?}");
                r
            })
        };
        let fa = spawn_fault(&svm, &range);
        let rep = cpu
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("migrate_to_ram: {e:?}"));
        let f = fa.join().unwrap();
        assert_eq!(
            rep.pages, NPAGES,
            "the whole allocation window moves: {rep:?}"
        );
        assert_eq!(local.cpu_fault_migrations().0, 1);
        assert_eq!(svm.platform().mm.cpu_read(1), CPU_VAL);
        check_after(&svm, &range, &local, &f);
        cover(&c, &f, &svm);
        c.execution();
    });
    let n = cov.expect(EXPECT);
    println!(
        "cpu_fault_vs_device_fault: {n} executions in {:?}",
        t0.elapsed()
    );
}
