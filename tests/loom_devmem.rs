//! Loom models of the device-memory allocation refcount (SPEC §6, DESIGN invariant 5:
//! *every device-memory allocation is released exactly once, when its last page leaves it*).
//!
//! Run (a separate target dir keeps the normal build cache intact):
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=/work/target-loomdm cargo test --release --test loom_devmem`
//!
//! The actors are the platform's page-free paths: each thread calls
//! [`DevmemAlloc::put_page`] directly, or [`Pagemap::page_free`] (the run-index lookup, the
//! `put_page`, and — for the last page — removing the allocation from the index and calling
//! [`DeviceMemory::release`] of a mock device memory that records every release under a loom
//! mutex). The allocation under test is made by the real migration state machine
//! ([`gpusvm::migrate::to_devmem`] on a mock address space whose pages are all absent), so the
//! pagemap's bookkeeping is exactly what a driver gets.
//!
//! What each model proves, for every interleaving loom explores (all of them up to the
//! preemption bound, under the C11 memory model loom simulates for the atomics):
//! - [`put_page_disjoint_pages`]: two threads put the two pages of an allocation: exactly one
//!   sees [`PutPage::Last`], the other [`PutPage::Freed`]; the one that sees `Last` already
//!   sees every page gone (`page_live` false), so a release it triggers cannot precede a page's
//!   departure.
//! - [`put_page_same_page`]: two threads put the *same* page: exactly one `Freed`, one
//!   `AlreadyFree`, never `Last`; the live count drops by exactly one (a duplicate put never
//!   double-counts), so the allocation is not released while its other page is live.
//! - [`put_page_three_threads_with_duplicate`]: three threads put pages 0, 0 and 1 of a
//!   two-page allocation: exactly one `Last`, exactly one `AlreadyFree`.
//! - [`page_free_disjoint_pages`] / [`page_free_three_pages`]: two (three) threads free every
//!   page through the pagemap: the device memory is released exactly once, with exactly the
//!   allocation's frames, only after every page left (checked inside `release`), the pagemap
//!   counts one released and no live allocation, and no free is counted as stray.
//! - [`page_free_same_page`]: two threads free the same page of a two-page allocation: nothing
//!   is released, one free is counted stray, the allocation stays live (and findable); freeing
//!   the other page afterwards releases it exactly once.
//! - [`page_free_duplicate_racing_last`]: three threads free pages 0, 0 and 1: released exactly
//!   once, and the duplicate is counted stray whether it lands before or after the release.
#![cfg(loom)]

use gpusvm::heap::AllocCtx;
use gpusvm::migrate::{to_devmem, MigrateDetails};
use gpusvm::pagemap::{DevmemAlloc, Pagemap, PutPage};
use gpusvm::platform::{
    AddressSpace, CollectRequest, CopyError, CopyRun, CpuPage, DeviceMemory, MigrateRequest,
    MigrateSrc, NotifierId, NullDma, OwnerId, PagemapId, Vma, VmaFlags, PAGE_SIZE,
};
use gpusvm::{DefaultHost, HostArc, HostVec};
use gpusvm::{Error, Result};
use loom::sync::Mutex;
use loom::thread;

/// A shared allocation and a shared pagemap, on the default host's allocator.
type AllocArc = HostArc<DefaultHost, DevmemAlloc>;
type PmArc = HostArc<DefaultHost, Pagemap<MockMem>>;

/// An allocation of `frames` over `[0, 2 pages)`, shared.
fn alloc_of_frames(frames: &[u64]) -> AllocArc {
    let mut v = HostVec::<DefaultHost, u64>::new();
    v.extend_from_slice(frames, AllocCtx::MaySleep).unwrap();
    let a = DevmemAlloc::<DefaultHost>::new(PagemapId(1), 0, 2 * PAGE_SIZE, v).unwrap();
    AllocArc::try_new(a, AllocCtx::MaySleep).unwrap()
}

/// First device frame of the mock device memory.
const BASE: u64 = 0x1000;

/// An address space whose pages are all absent: every page isolates as `Absent`.
struct AbsentMm;

impl AddressSpace for AbsentMm {
    type NotifierHandle = ();
    fn find_vma(&self, _addr: u64) -> Option<Vma> {
        Some(Vma {
            start: 0,
            end: 1 << 40,
            flags: VmaFlags::READ | VmaFlags::WRITE,
        })
    }
    fn collect_pages(&self, _req: &CollectRequest, _out: &mut [CpuPage]) -> Result<()> {
        Err(Error::Fault)
    }
    fn register_notifier(&self, _id: NotifierId, _s: u64, _e: u64) -> Result<()> {
        Ok(())
    }
    fn unregister_notifier(&self, _h: ()) {}
    fn migrate_isolate(&self, _req: &MigrateRequest, src: &mut [MigrateSrc]) -> Result<()> {
        src.fill(MigrateSrc::Absent);
        Ok(())
    }
}

/// Device memory that hands out `BASE..` and records every release.
#[derive(Default)]
struct MockMem {
    released: Mutex<Vec<Vec<u64>>>,
    /// The allocation under test: `release` checks that all of its pages left.
    watch: Mutex<Option<AllocArc>>,
}

impl DeviceMemory for MockMem {
    type Dma = NullDma;
    fn dma(&self) -> &NullDma {
        &NullDma
    }
    fn alloc(&self, out: &mut [u64]) -> Result<()> {
        for (i, o) in out.iter_mut().enumerate() {
            *o = BASE + i as u64;
        }
        Ok(())
    }
    fn release(&self, dpfns: &[u64]) {
        if let Some(a) = self.watch.lock().unwrap().as_ref() {
            assert_eq!(a.live_pages(), 0, "released with live pages");
            for d in a.dpfns() {
                assert!(!a.page_live(*d), "released before page {d:#x} left");
            }
        }
        self.released.lock().unwrap().push(dpfns.to_vec());
    }
    fn copy(&self, _runs: &[CopyRun]) -> core::result::Result<(), CopyError> {
        Ok(())
    }
    fn now_ns(&self) -> u64 {
        0
    }
}

/// A pagemap holding one live allocation of `n` pages (frames `BASE..BASE+n`), made by the
/// migration state machine.
fn pagemap_with_alloc(n: u64) -> (PmArc, AllocArc) {
    let pm = Pagemap::new(PagemapId(1), OwnerId(1), MockMem::default()).unwrap();
    let rep = to_devmem(&AbsentMm, &pm, 0, n * PAGE_SIZE, &MigrateDetails::default()).unwrap();
    assert_eq!(rep.pages as u64, n);
    assert_eq!(pm.live_allocations(), 1);
    let a = pm.alloc_of(BASE).unwrap();
    *pm.mem().watch.lock().unwrap() = Some(a.clone());
    (pm, a)
}

fn spawn_put(a: &AllocArc, d: u64) -> thread::JoinHandle<PutPage> {
    let a = a.clone();
    thread::spawn(move || {
        let r = a.put_page(d);
        if r == PutPage::Last {
            // Whoever sees Last sees every page gone.
            for p in a.dpfns() {
                assert!(!a.page_live(*p), "Last while page {p:#x} is live");
            }
            assert_eq!(a.live_pages(), 0);
        }
        r
    })
}

fn count(rs: &[PutPage], what: PutPage) -> usize {
    rs.iter().filter(|r| **r == what).count()
}

#[test]
fn put_page_disjoint_pages() {
    loom::model(|| {
        let a = alloc_of_frames(&[10, 11]);
        let t1 = spawn_put(&a, 10);
        let t2 = spawn_put(&a, 11);
        let rs = [t1.join().unwrap(), t2.join().unwrap()];
        assert_eq!(count(&rs, PutPage::Last), 1, "{rs:?}");
        assert_eq!(count(&rs, PutPage::Freed), 1, "{rs:?}");
        assert_eq!(a.live_pages(), 0);
    });
}

#[test]
fn put_page_same_page() {
    loom::model(|| {
        let a = alloc_of_frames(&[10, 11]);
        let t1 = spawn_put(&a, 10);
        let t2 = spawn_put(&a, 10);
        let rs = [t1.join().unwrap(), t2.join().unwrap()];
        assert_eq!(count(&rs, PutPage::Freed), 1, "{rs:?}");
        assert_eq!(count(&rs, PutPage::AlreadyFree), 1, "{rs:?}");
        assert_eq!(a.live_pages(), 1, "a duplicate put never double-counts");
        assert!(a.page_live(11));
        assert_eq!(a.put_page(11), PutPage::Last);
        assert_eq!(a.put_page(11), PutPage::AlreadyFree);
        assert_eq!(a.live_pages(), 0);
    });
}

#[test]
fn put_page_three_threads_with_duplicate() {
    loom::model(|| {
        let a = alloc_of_frames(&[10, 11]);
        let t1 = spawn_put(&a, 10);
        let t2 = spawn_put(&a, 10);
        let t3 = spawn_put(&a, 11);
        let rs = [t1.join().unwrap(), t2.join().unwrap(), t3.join().unwrap()];
        assert_eq!(count(&rs, PutPage::Last), 1, "{rs:?}");
        assert_eq!(count(&rs, PutPage::AlreadyFree), 1, "{rs:?}");
        assert_eq!(count(&rs, PutPage::Freed), 1, "{rs:?}");
        assert_eq!(a.live_pages(), 0);
    });
}

fn spawn_free(pm: &PmArc, d: u64) -> thread::JoinHandle<()> {
    let pm = pm.clone();
    thread::spawn(move || pm.page_free(d))
}

/// After every page left: released exactly once, with exactly the allocation's frames.
fn assert_released_once(pm: &Pagemap<MockMem>, a: &DevmemAlloc) {
    let rel = pm.mem().released.lock().unwrap().clone();
    assert_eq!(rel.len(), 1, "released exactly once: {rel:?}");
    assert_eq!(rel[0], a.dpfns());
    assert_eq!(pm.live_allocations(), 0);
    assert_eq!(pm.released_allocations(), 1);
    assert!(pm.alloc_of(BASE).is_none(), "gone from the run index");
}

#[test]
fn page_free_disjoint_pages() {
    loom::model(|| {
        let (pm, a) = pagemap_with_alloc(2);
        let t1 = spawn_free(&pm, BASE);
        let t2 = spawn_free(&pm, BASE + 1);
        t1.join().unwrap();
        t2.join().unwrap();
        assert_released_once(&pm, &a);
        assert_eq!(pm.stray_frees(), 0);
    });
}

#[test]
fn page_free_three_pages() {
    loom::model(|| {
        let (pm, a) = pagemap_with_alloc(3);
        let ts = [
            spawn_free(&pm, BASE),
            spawn_free(&pm, BASE + 1),
            spawn_free(&pm, BASE + 2),
        ];
        for t in ts {
            t.join().unwrap();
        }
        assert_released_once(&pm, &a);
        assert_eq!(pm.stray_frees(), 0);
    });
}

#[test]
fn page_free_same_page() {
    loom::model(|| {
        let (pm, a) = pagemap_with_alloc(2);
        let t1 = spawn_free(&pm, BASE);
        let t2 = spawn_free(&pm, BASE);
        t1.join().unwrap();
        t2.join().unwrap();
        assert!(
            pm.mem().released.lock().unwrap().is_empty(),
            "released early"
        );
        assert_eq!(pm.stray_frees(), 1, "the duplicate is counted, not applied");
        assert_eq!(pm.live_allocations(), 1);
        assert_eq!(a.live_pages(), 1);
        assert!(pm.alloc_of(BASE + 1).is_some());
        pm.page_free(BASE + 1);
        assert_released_once(&pm, &a);
    });
}

#[test]
fn page_free_duplicate_racing_last() {
    loom::model(|| {
        let (pm, a) = pagemap_with_alloc(2);
        let ts = [
            spawn_free(&pm, BASE),
            spawn_free(&pm, BASE),
            spawn_free(&pm, BASE + 1),
        ];
        for t in ts {
            t.join().unwrap();
        }
        assert_released_once(&pm, &a);
        assert_eq!(pm.stray_frees(), 1);
    });
}
