//! DESIGN invariant 7 / SPEC §4: the invalidation path (`Svm::invalidate_begin` and
//! `Svm::invalidate_end`) performs **zero heap allocations**, whatever the event, the interval
//! and the state of the garbage-collector queue.
//!
//! A counting `#[global_allocator]` counts allocations (`alloc`, `alloc_zeroed`, `realloc`) made
//! by the current thread while counting is switched on (thread-local `Cell`s with const
//! initialisers, so the counter itself never allocates and other test threads do not disturb
//! it). A simulated machine gets many bound ranges — 2 MiB ranges backed by 2 MiB huge frames
//! (one entry each), 2 MiB ranges backed by 4 KiB frames (512 entries each), and 4 KiB ranges of
//! small VMAs — and then `invalidate_begin`/`invalidate_end` are called directly on the `Svm`
//! (as a kernel MMU notifier would), counting around each call, for:
//! `Clear`, `Protection`, `Migrate`, `Unmap` and `Release` events; whole notifiers, single
//! ranges, parts of ranges, intervals straddling several ranges, empty and unknown intervals;
//! nested invalidations; already-unmapped pages; and `Unmap` while the GC queue already holds
//! ranges (including the very ranges being unmapped again).
//!
//! The calls include the platform's callbacks (`zap`, `unmap_page`): the simulator's are
//! allocation-free too, as the platform contract requires of invalidation-context methods.
//! Deallocations are allowed (freeing IOMMU bookkeeping is not allocating) and are not counted.
#![cfg(feature = "sim")]

use gpusvm::platform::{NotifierId, OwnerId, VmaFlags, PAGE_SIZE};
use gpusvm::sim::{SimGpu, SimMm, SimWorld};
use gpusvm::Event;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

struct CountingAlloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc() {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let on = COUNTING.try_with(Cell::get).unwrap_or(false);
    if on {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the only
// addition is touching const-initialised thread-local `Cell`s, which neither allocates nor
// re-enters the allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Run `f` with allocation counting on (this thread only); returns what it returned and the
/// number of allocations it made.
fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, usize) {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.with(Cell::get))
}

const RW: VmaFlags = VmaFlags::READ.union(VmaFlags::WRITE);
const M2: u64 = 2 << 20;
const NOTIFIER: u64 = 512 << 20;

/// A machine with many bound ranges of every shape.
struct Bound {
    _world: Arc<SimWorld>,
    mm: Arc<SimMm>,
    gpu: SimGpu,
    /// 2 MiB ranges over 2 MiB huge frames.
    huge: Vec<u64>,
    /// 2 MiB ranges over 4 KiB frames.
    small_frames: Vec<u64>,
    /// 4 KiB ranges (small VMAs).
    pages: Vec<u64>,
}

impl Bound {
    fn new() -> Bound {
        let world = SimWorld::new();
        let mm = SimMm::new(&world);
        let gpu = SimGpu::with_defaults(&mm, 0).unwrap();
        let h = mm.mmap(8 * M2, RW, true).unwrap();
        let huge: Vec<u64> = (0..8).map(|i| h + i * M2).collect();
        let s = mm.mmap(4 * M2, RW, false).unwrap();
        let small_frames: Vec<u64> = (0..4).map(|i| s + i * M2).collect();
        let mut pages = Vec::new();
        for _ in 0..16 {
            let v = mm.mmap(3 * PAGE_SIZE, RW, false).unwrap();
            pages.extend((0..3).map(|i| v + i * PAGE_SIZE));
        }
        let b = Bound {
            _world: world,
            mm,
            gpu,
            huge,
            small_frames,
            pages,
        };
        b.bind_all();
        b
    }

    /// Device-touch every range (re-creating and re-binding whatever an invalidation or the GC
    /// took away).
    fn bind_all(&self) {
        self.gpu.svm.gc_run();
        for &a in self
            .huge
            .iter()
            .chain(&self.small_frames)
            .chain(&self.pages)
        {
            self.mm.write_u64(a, a).unwrap();
            assert_eq!(self.gpu.read_u64(a).unwrap(), a);
        }
        self.gpu.check().unwrap();
    }

    fn ranges(&self) -> Vec<(u64, u64, usize, bool)> {
        // `for_each_range` holds the notifier lock: look each range up again outside it.
        let mut starts = Vec::new();
        self.gpu.svm.for_each_range(|_, r| starts.push(r.start()));
        let mut v = Vec::new();
        for s in starts {
            let r = self.gpu.svm.find(s).unwrap();
            let st = self.gpu.svm.bind(&r, |_, e| e.len());
            v.push((r.start(), r.end(), st.unwrap_or(0), st.is_ok()))
        }
        v
    }

    fn notifiers(&self) -> Vec<(NotifierId, u64, u64)> {
        self.mm
            .notifiers()
            .into_iter()
            .map(|(_, id, s, e)| (id, s, e))
            .collect()
    }

    /// Invalidate `[start, end)` of the notifier containing `start`, counting allocations of
    /// the begin and the end calls.
    fn invalidate(&self, start: u64, end: u64, event: Event) {
        let id = NotifierId(start & !(NOTIFIER - 1));
        let svm = &self.gpu.svm;
        let ((), n) = count_allocs(|| svm.invalidate_begin(id, start, end, event));
        assert_eq!(
            n, 0,
            "invalidate_begin({start:#x}..{end:#x}, {event:?}) allocated {n}x"
        );
        let ((), n) = count_allocs(|| svm.invalidate_end(id, start, end));
        assert_eq!(
            n, 0,
            "invalidate_end({start:#x}..{end:#x}, {event:?}) allocated {n}x"
        );
    }

    fn all_valid(&self) -> bool {
        self.ranges().iter().all(|r| r.3)
    }
}

#[test]
fn the_counter_sees_allocations() {
    let (v, n) = count_allocs(|| Vec::<u64>::with_capacity(4));
    assert!(n >= 1, "counting allocator missed an allocation");
    drop(v);
    let ((), n) = count_allocs(|| {});
    assert_eq!(n, 0);
}

#[test]
fn setup_has_ranges_of_every_shape() {
    let b = Bound::new();
    let r = b.ranges();
    // 8 huge-backed 2 MiB ranges (1 entry), 4 small-frame 2 MiB ranges (512 entries), and the
    // 4 KiB ranges of the small VMAs (1 entry).
    assert_eq!(
        r.iter().filter(|x| x.1 - x.0 == M2 && x.2 == 1).count(),
        8,
        "{r:x?}"
    );
    assert_eq!(
        r.iter().filter(|x| x.1 - x.0 == M2 && x.2 == 512).count(),
        4
    );
    assert_eq!(r.iter().filter(|x| x.1 - x.0 == PAGE_SIZE).count(), 48);
    assert!(b.all_valid());
}

/// `Clear`, `Protection` and `Migrate` over whole notifiers, single ranges, parts of ranges
/// and intervals straddling ranges: no allocation, and the pages are invalidated.
#[test]
fn clear_protection_migrate_allocate_nothing() {
    let b = Bound::new();
    let events = [
        Event::Clear,
        Event::Protection,
        Event::Migrate { owner: None },
        Event::Migrate {
            owner: Some(OwnerId(7)),
        },
    ];
    for event in events {
        // Whole notifiers.
        for (_, s, e) in b.notifiers() {
            b.invalidate(s, e, event);
        }
        assert!(
            b.ranges().iter().all(|r| !r.3),
            "{event:?} left pages valid"
        );
        b.bind_all();
        // One range at a time, part of a range, a straddling interval.
        for &a in b.huge.iter().chain(&b.small_frames) {
            b.invalidate(a, a + M2, event);
            b.invalidate(a + 3 * PAGE_SIZE, a + 5 * PAGE_SIZE, event);
            b.invalidate(a + M2 - PAGE_SIZE, a + M2 + PAGE_SIZE, event);
        }
        for &a in &b.pages {
            b.invalidate(a, a + PAGE_SIZE, event);
        }
        // Again, with everything already invalid (nothing left to unmap).
        b.invalidate(b.huge[0], b.huge[7] + M2, event);
        b.bind_all();
    }
}

/// Nested invalidations, empty intervals, intervals with no range, unknown notifiers.
#[test]
fn nested_empty_and_unknown_allocate_nothing() {
    let b = Bound::new();
    let svm = &b.gpu.svm;
    let (id, s, e) = b.notifiers()[0];
    let ((), n) = count_allocs(|| {
        svm.invalidate_begin(id, s, e, Event::Clear);
        svm.invalidate_begin(id, s, s + M2, Event::Protection);
        svm.invalidate_begin(id, s, s, Event::Unmap);
        svm.invalidate_end(id, s, s);
        svm.invalidate_end(id, s, s + M2);
        svm.invalidate_end(id, s, e);
        // An unknown notifier, and an end without a begin.
        svm.invalidate_begin(NotifierId(1 << 46), 1 << 46, (1 << 46) + M2, Event::Unmap);
        svm.invalidate_end(NotifierId(1 << 46), 1 << 46, (1 << 46) + M2);
        svm.invalidate_end(id, s, e);
    });
    assert_eq!(n, 0, "allocated {n}x");
    // An interval of a known notifier that holds no range.
    let hole = b.huge[7] + 64 * M2;
    b.invalidate(hole, hole + M2, Event::Unmap);
    assert_eq!(svm.gc_pending(), 0);
    b.bind_all();
}

/// `Unmap` (and `Release`) queue ranges for the GC through the intrusive link: no allocation,
/// also for partial unmaps, when the queue already holds other ranges, and when the ranges
/// being unmapped are already queued.
#[test]
fn unmap_and_release_queue_without_allocating() {
    let b = Bound::new();
    let svm = &b.gpu.svm;
    for event in [Event::Unmap, Event::Release] {
        assert_eq!(svm.gc_pending(), 0);
        // Partial unmaps of two huge-backed and one small-frame range.
        b.invalidate(b.huge[0] + PAGE_SIZE, b.huge[0] + 2 * PAGE_SIZE, event);
        b.invalidate(b.huge[1] + M2 - PAGE_SIZE, b.huge[2] + PAGE_SIZE, event);
        b.invalidate(b.small_frames[0], b.small_frames[0] + 64 * PAGE_SIZE, event);
        assert_eq!(svm.gc_pending(), 4, "{:x?}", b.ranges());
        // With the queue non-empty: whole ranges, many at once, and the queued ones again.
        b.invalidate(b.huge[3], b.huge[7] + M2, event);
        b.invalidate(b.small_frames[1], b.small_frames[3] + M2, event);
        b.invalidate(b.huge[0], b.huge[2] + M2, event);
        for &a in &b.pages {
            b.invalidate(a, a + PAGE_SIZE, event);
        }
        let total = 8 + 4 + b.pages.len();
        assert_eq!(svm.gc_pending(), total, "every range queued exactly once");
        // Nothing bound survives an unmap.
        assert!(b.ranges().iter().all(|r| !r.3));
        // The GC (outside the invalidation path: it may allocate) takes them all away.
        assert_eq!(svm.gc_run(), total);
        assert_eq!(svm.counts().1, 0);
        b.bind_all();
    }
}
