//! Memory footprint (issue 8): bytes per page-state entry, one entry per huge page, and the
//! heap bytes one 2 MiB range costs, 4 KiB-backed and 2 MiB-huge-page-backed.
//!
//! A `#[global_allocator]` keeps the live heap bytes of the current thread (thread-local
//! `Cell`s with const initialisers: other test threads do not disturb it), so the bytes a range
//! costs are measured, not computed: `find_or_insert` allocates exactly the `HostArc<Range>`
//! (the tree links are intrusive), and `get_pages` leaves exactly the entry array behind (the
//! CPU-page snapshot it collects into is freed before it returns).
//!
//! `struct_sizes` asserts the size of every struct the BENCHMARKS.md memory table quotes (on
//! 64-bit targets) and the heap bytes of the two 2 MiB ranges, so the table cannot go stale
//! silently. Run `cargo test --test footprint -- --nocapture` to see the figures it quotes.

use gpusvm::pages::{PageEntry, PageState, Protocol, Userptr};
use gpusvm::platform::{
    AddressSpace, CollectRequest, CpuPage, DevicePageTable, DmaDirection, DmaMapper,
    NoDeviceMemory, NotifierId, Platform, Vma, VmaFlags, HUGE_ORDER, PAGE_SHIFT, PAGE_SIZE,
};
use gpusvm::{PagesCtx, Range, Svm, SvmConfig, Window};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::mem::size_of;

// The packed entry is the contract (also asserted in the library); the rest is reported.
static_assertions::assert_eq_size!(PageEntry, u64);
static_assertions::assert_eq_align!(PageEntry, u64);

struct LiveBytes;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = LIVE.try_with(|l| l.set(l.get() + n));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the only
// addition is touching a const-initialised thread-local `Cell`, which neither allocates nor
// re-enters the allocator.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

fn live() -> isize {
    LIVE.with(Cell::get)
}

// ---- A minimal platform: one VMA over a flat table of frames of one order. ----

const BASE: u64 = 1 << 40;
const M2: u64 = 2 << 20;
const BASE_PFN: u64 = 0x10_0000;

struct Mm {
    len: u64,
    order: u8,
}
impl AddressSpace for Mm {
    type NotifierHandle = ();
    fn find_vma(&self, addr: u64) -> Option<Vma> {
        (BASE..BASE + self.len).contains(&addr).then_some(Vma {
            start: BASE,
            end: BASE + self.len,
            flags: VmaFlags::READ | VmaFlags::WRITE,
        })
    }
    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> gpusvm::Result<()> {
        let first = (req.start - BASE) >> PAGE_SHIFT;
        for (i, p) in out.iter_mut().enumerate() {
            *p = CpuPage::System {
                pfn: BASE_PFN + first + i as u64,
                order: self.order,
                writable: true,
            };
        }
        Ok(())
    }
    fn register_notifier(&self, _: NotifierId, _: u64, _: u64) -> gpusvm::Result<()> {
        Ok(())
    }
    fn unregister_notifier(&self, _: ()) {}
}
struct Dma;
impl DmaMapper for Dma {
    fn map_page(&self, pfn: u64, _: u8, _: DmaDirection) -> gpusvm::Result<u64> {
        Ok(pfn << PAGE_SHIFT)
    }
    fn unmap_page(&self, _: u64, _: u8, _: DmaDirection) {}
}
struct Pt;
impl DevicePageTable for Pt {
    fn zap(&self, _: u64, _: u64) {}
}
struct P {
    mm: Mm,
}
impl Platform for P {
    type Mm = Mm;
    type Dma = Dma;
    type Pt = Pt;
    type Mem = NoDeviceMemory;
    type Host = gpusvm::DefaultHost;
    fn mm(&self) -> &Mm {
        &self.mm
    }
    fn dma(&self) -> &Dma {
        &Dma
    }
    fn page_table(&self) -> &Pt {
        &Pt
    }
    fn now_ns(&self) -> u64 {
        0
    }
}

/// Heap bytes of one 2 MiB range over CPU pages of `order`: (range object, entry array), and
/// its entries.
fn range_bytes(order: u8) -> (usize, usize, Vec<PageEntry>) {
    let svm = Svm::new(
        P {
            mm: Mm { len: 2 * M2, order },
        },
        SvmConfig::new(0, 1 << 47),
    )
    .unwrap();
    let ctx = PagesCtx::default();
    // A first range creates the notifier (its allocation is not the range's).
    let other = svm.find_or_insert(BASE + M2, Window::ALL, &ctx).unwrap();
    // So does the slot of the notifier's range index that the range goes to: its array is
    // allocated on the first insertion there and kept (removal never frees under the notifier
    // lock), so a range is created and removed there first.
    let warm = svm.find_or_insert(BASE, Window::ALL, &ctx).unwrap();
    svm.remove(&warm).unwrap();
    drop(warm);
    let l0 = live();
    let r = svm.find_or_insert(BASE, Window::ALL, &ctx).unwrap();
    let l1 = live();
    svm.get_pages(&r, &ctx).unwrap();
    let l2 = live();
    let entries = svm.bind(&r, |_, e| e.to_vec()).unwrap();
    let l3 = live();
    svm.remove(&r).unwrap();
    drop(r);
    assert_eq!(
        live(),
        l3 - (l2 - l0),
        "removing the range frees all it held"
    );
    svm.remove(&other).unwrap();
    ((l1 - l0) as usize, (l2 - l1) as usize, entries)
}

#[test]
fn bytes_per_range() {
    // `HostArc` (gpusvm::heap::Arc): one count, no weak count.
    let arc_header = size_of::<usize>();
    let range_obj = arc_header + size_of::<Range>();
    let (obj4k, arr4k, e4k) = range_bytes(0);
    let (objh, arrh, eh) = range_bytes(HUGE_ORDER);

    // The range object: exactly one allocation, the HostArc (count + Range); tree links are
    // intrusive.
    assert_eq!(obj4k, range_obj);
    assert_eq!(objh, range_obj);
    // 4 KiB pages: one 8-byte entry per page, the array sized exactly.
    assert_eq!(e4k.len(), 512);
    assert!(e4k.iter().all(|e| e.order() == 0 && e.size() == PAGE_SIZE));
    assert_eq!(arr4k, 512 * size_of::<PageEntry>());
    // A 2 MiB huge page: one entry, and an 8-byte array.
    assert_eq!(eh.len(), 1);
    assert_eq!((eh[0].order(), eh[0].size()), (HUGE_ORDER, M2));
    assert_eq!(eh[0].protocol(), Protocol::SYSTEM);
    assert_eq!(arrh, size_of::<PageEntry>());
    // Not a contract (depends on the lock and link layouts): a regression guard.
    assert!(
        size_of::<Range>() <= 128,
        "Range grew to {}",
        size_of::<Range>()
    );

    println!("footprint of one 2 MiB range (bytes):");
    println!(
        "  size_of: PageEntry {}, Range {} (of which PageState {}), HostArc header {}, CpuPage {}",
        size_of::<PageEntry>(),
        size_of::<Range>(),
        size_of::<PageState>(),
        arc_header,
        size_of::<CpuPage>()
    );
    println!(
        "  4 KiB-backed: range object {obj4k} + entries {arr4k} ({} x 8) = {} B ({:.2} B per 4 KiB page)",
        e4k.len(),
        obj4k + arr4k,
        (obj4k + arr4k) as f64 / 512.0
    );
    println!(
        "  2 MiB huge-page-backed: range object {objh} + entries {arrh} ({} x 8) = {} B",
        eh.len(),
        objh + arrh
    );
    println!(
        "  transient during get_pages: CPU-page snapshot of 512 x {} = {} B (freed)",
        size_of::<CpuPage>(),
        512 * size_of::<CpuPage>()
    );
}

/// The sizes the BENCHMARKS.md memory table quotes, on a 64-bit target (x86_64 and aarch64 lay
/// these out alike), and what one 2 MiB range costs on the heap. Only `PageEntry`'s 8 bytes are
/// a contract of the library; the others follow the lock and intrusive-link layouts (a change
/// there moves them): when one changes on purpose, update the figure here and the table.
#[cfg(target_pointer_width = "64")]
#[test]
fn struct_sizes() {
    use gpusvm::pagemap::DevmemAlloc;
    use gpusvm::range::RangeTree;
    let arc_header = size_of::<usize>();
    let (obj4k, arr4k, _) = range_bytes(0);
    let (objh, arrh, _) = range_bytes(HUGE_ORDER);
    // (what, measured, expected)
    let sizes = [
        ("PageEntry", size_of::<PageEntry>(), 8),
        ("PageState (inside Range)", size_of::<PageState>(), 40),
        ("Range", size_of::<Range>(), 120),
        ("HostArc header", arc_header, 8),
        (
            "range object (HostArc header + Range)",
            arc_header + size_of::<Range>(),
            128,
        ),
        ("Userptr", size_of::<Userptr>(), 80),
        ("RangeTree", size_of::<RangeTree>(), 24),
        ("DevmemAlloc", size_of::<DevmemAlloc>(), 112),
        (
            "CpuPage (get_pages snapshot element)",
            size_of::<CpuPage>(),
            24,
        ),
        (
            "2 MiB range over 4 KiB pages (heap)",
            obj4k + arr4k,
            128 + 512 * 8,
        ),
        (
            "2 MiB range over one huge page (heap)",
            objh + arrh,
            128 + 8,
        ),
        (
            "transient get_pages snapshot of 2 MiB",
            512 * size_of::<CpuPage>(),
            512 * 24,
        ),
    ];
    println!("struct sizes (bytes, {}-bit):", usize::BITS);
    for (what, got, _) in &sizes {
        println!("  {what}: {got}");
    }
    let wrong: Vec<String> = sizes
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: {got}, expected {want}"))
        .collect();
    assert!(wrong.is_empty(), "sizes changed: {wrong:#?}");
}

/// One entry per huge page on the simulator too (its CPU maps a huge VMA with 2 MiB pages), and
/// one per 4 KiB page otherwise.
#[cfg(feature = "sim")]
#[test]
fn one_entry_per_huge_page_on_the_simulator() {
    use gpusvm::sim::{SimGpu, SimMm, SimWorld};
    use gpusvm::Access;
    let world = SimWorld::new();
    let mm = SimMm::new(&world);
    let gpu = SimGpu::with_defaults(&mm, 0).unwrap();
    for (huge, want_entries, want_order) in [(true, 1, HUGE_ORDER), (false, 512, 0)] {
        let buf = mm
            .mmap(4 * M2, VmaFlags::READ | VmaFlags::WRITE, huge)
            .unwrap();
        for off in (0..4 * M2).step_by(PAGE_SIZE as usize) {
            mm.write_u64(buf + off, off).unwrap();
        }
        for k in 0..4 {
            let addr = buf + k * M2 + 5 * PAGE_SIZE;
            let (range, entries) = gpu
                .svm
                .handle_fault_and_bind(addr, Access::Write, Window::ALL, |_, e| e.to_vec())
                .unwrap();
            assert_eq!(range.size(), M2);
            assert_eq!(entries.len(), want_entries, "huge {huge}");
            assert!(entries.iter().all(|e| e.order() == want_order));
            let covered: u64 = entries.iter().map(|e| e.size()).sum();
            assert_eq!(covered, M2);
        }
        gpu.check().unwrap();
    }
}
