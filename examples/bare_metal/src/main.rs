//! `gpusvm` embedded in a bare-metal binary: `#![no_std]`, `#![no_main]`, no OS, no `std`.
//!
//! Everything the crate needs comes from static memory:
//!
//! | what | here |
//! | --- | --- |
//! | memory | [`BarePool`]: a fixed pool in static memory ([`gpusvm::pool_allocator!`]); no heap, no `alloc` crate |
//! | [`AddressSpace`] | [`StaticMm`]: one VMA of [`N_PAGES`] pages, a fixed table of CPU PTEs, a fixed table of notifier slots |
//! | [`DmaMapper`] | [`IdentityDma`]: bus address = physical address, counts live mappings |
//! | [`DevicePageTable`] | [`StaticPt`]: an array of device PTEs, `zap` clears them |
//! | [`DeviceMemory`](gpusvm::platform::DeviceMemory) | [`NoDeviceMemory`]: the device has none |
//! | clock | a tick counter |
//!
//! `_start` drives the public API once — `Svm::new`, a device fault bound into the device page
//! table, a CPU `munmap` forwarded as `invalidate_begin/end`, `gc_run`, `close` — checks the
//! platform state after each step, stores the outcome in [`STATUS`] and halts. With the feature
//! `linux-exit` it instead exits with the outcome as status, so it can run as a Linux process.
//!
//! With the feature `no-panic-proof` the panic handler calls an undefined symbol: a release build
//! then links only if no panic path is reachable from `_start` (see README.md).
#![no_std]
#![no_main]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::undocumented_unsafe_blocks
)]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use gpusvm::pages::PageEntry;
use gpusvm::platform::{
    AddressSpace, CollectRequest, CpuPage, DevicePageTable, DmaDirection, DmaMapper,
    NoDeviceMemory, NotifierId, Platform, Vma, VmaFlags, PAGE_SIZE,
};
use gpusvm::{Access, Error, Event, Range, Result, Svm, SvmConfig, Window};

// ---------------------------------------------------------------------------------------------
// Memory: the crate allocates only through the host facet; here a fixed pool in static memory.
// ---------------------------------------------------------------------------------------------

gpusvm::pool_allocator!(
    /// The crate's memory: a 256 KiB pool of 64-byte blocks in static memory (no heap, no
    /// `alloc` crate).
    BarePool, 4096
);

/// The host facet: the crate's spinning locks and the static pool.
type BareHost = gpusvm::sync::SpinHost<BarePool>;

// ---------------------------------------------------------------------------------------------
// The CPU address space: one VMA over a fixed table of CPU page-table entries.
// ---------------------------------------------------------------------------------------------

/// Number of pages of the one VMA.
const N_PAGES: usize = 64;
/// Start of the VMA (inside the notifier interval `[1 GiB, 1.5 GiB)` with the default 512 MiB
/// notifier size).
const VA_BASE: u64 = 0x4000_0000;
/// End of the VMA.
const VA_END: u64 = VA_BASE + N_PAGES as u64 * PAGE_SIZE;
/// Frame number of the first page of the static page pool: page `i` of the VMA is backed by frame
/// `FIRST_PFN + i` once faulted in.
const FIRST_PFN: u64 = 0x1_0000;

/// CPU PTE bits: present, writable; the frame number is in the low bits.
const CPU_PRESENT: u64 = 1 << 63;
const CPU_WRITABLE: u64 = 1 << 62;
const CPU_PFN_MASK: u64 = (1 << 52) - 1;

/// Whether the VMA exists (cleared by [`cpu_munmap`]).
static VMA_MAPPED: AtomicBool = AtomicBool::new(true);
/// The CPU page table of the VMA: 0 = not present.
static CPU_PTES: [AtomicU64; N_PAGES] = [const { AtomicU64::new(0) }; N_PAGES];

/// A notifier registration (what Linux keeps in the mm's interval tree).
struct NotifierSlot {
    /// 0 free, 1 being filled, 2 live.
    state: AtomicU8,
    id: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
}

const SLOT_FREE: u8 = 0;
const SLOT_FILLING: u8 = 1;
const SLOT_LIVE: u8 = 2;
/// Number of notifier registrations the platform can hold.
const MAX_NOTIFIERS: usize = 4;

static NOTIFIERS: [NotifierSlot; MAX_NOTIFIERS] = [const {
    NotifierSlot {
        state: AtomicU8::new(SLOT_FREE),
        id: AtomicU64::new(0),
        start: AtomicU64::new(0),
        end: AtomicU64::new(0),
    }
}; MAX_NOTIFIERS];

/// Index of the page at `addr` in the VMA, if the VMA exists and contains it.
fn page_index(addr: u64) -> Option<usize> {
    if !VMA_MAPPED.load(Ordering::Acquire) || !(VA_BASE..VA_END).contains(&addr) {
        return None;
    }
    usize::try_from((addr - VA_BASE) / PAGE_SIZE).ok()
}

/// The CPU address space (a handle to the statics above).
struct StaticMm;

impl AddressSpace for StaticMm {
    /// The index of the notifier slot.
    type NotifierHandle = usize;

    fn find_vma(&self, addr: u64) -> Option<Vma> {
        page_index(addr).map(|_| Vma {
            start: VA_BASE,
            end: VA_END,
            flags: VmaFlags::READ | VmaFlags::WRITE,
        })
    }

    fn collect_pages(&self, req: &CollectRequest, out: &mut [CpuPage]) -> Result<()> {
        let npages = req.end.checked_sub(req.start).map(|len| len / PAGE_SIZE);
        let well_formed = req.start % PAGE_SIZE == 0
            && req.end % PAGE_SIZE == 0
            && npages.is_some_and(|n| n > 0 && n == out.len() as u64);
        if !well_formed {
            return Err(Error::Invalid);
        }
        let mut addr = req.start;
        for slot in out.iter_mut() {
            let pte = page_index(addr).and_then(|i| CPU_PTES.get(i).map(|p| (i, p)));
            *slot = match pte {
                None if req.fault => return Err(Error::Fault),
                None => CpuPage::Absent,
                Some((i, pte)) => {
                    let mut v = pte.load(Ordering::Acquire);
                    if v & CPU_PRESENT == 0 {
                        if !req.fault {
                            *slot = CpuPage::Absent;
                            addr = addr.wrapping_add(PAGE_SIZE);
                            continue;
                        }
                        // Fault the page in (the VMA is writable): its fixed frame, zeroed.
                        v = CPU_PRESENT | CPU_WRITABLE | (FIRST_PFN + i as u64);
                        pte.store(v, Ordering::Release);
                    }
                    CpuPage::System {
                        pfn: v & CPU_PFN_MASK,
                        order: 0,
                        writable: v & CPU_WRITABLE != 0,
                    }
                }
            };
            addr = addr.wrapping_add(PAGE_SIZE);
        }
        Ok(())
    }

    fn register_notifier(&self, id: NotifierId, start: u64, end: u64) -> Result<usize> {
        if start >= end {
            return Err(Error::Invalid);
        }
        for (i, s) in NOTIFIERS.iter().enumerate() {
            let claimed = s
                .state
                .compare_exchange(SLOT_FREE, SLOT_FILLING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
            if claimed {
                s.id.store(id.0, Ordering::Relaxed);
                s.start.store(start, Ordering::Relaxed);
                s.end.store(end, Ordering::Relaxed);
                s.state.store(SLOT_LIVE, Ordering::Release);
                return Ok(i);
            }
        }
        Err(Error::NoMem)
    }

    fn unregister_notifier(&self, handle: usize) {
        if let Some(s) = NOTIFIERS.get(handle) {
            s.state.store(SLOT_FREE, Ordering::Release);
        }
    }
    // The migration methods keep their defaults: without device memory nothing migrates.
}

/// Number of live notifier registrations.
fn live_notifiers() -> usize {
    NOTIFIERS
        .iter()
        .filter(|s| s.state.load(Ordering::Acquire) == SLOT_LIVE)
        .count()
}

/// The CPU unmaps `[start, end)`: what the OS does in `munmap`. Every live notifier overlapping
/// the interval gets `invalidate_begin` before the CPU page tables change and `invalidate_end`
/// after.
fn cpu_munmap(svm: &Svm<BarePlatform>, start: u64, end: u64) {
    let hit = |s: &NotifierSlot| {
        s.state.load(Ordering::Acquire) == SLOT_LIVE
            && s.start.load(Ordering::Relaxed) < end
            && start < s.end.load(Ordering::Relaxed)
    };
    for s in NOTIFIERS.iter().filter(|s| hit(s)) {
        let id = NotifierId(s.id.load(Ordering::Relaxed));
        svm.invalidate_begin(id, start, end, Event::Unmap);
    }
    for (i, pte) in CPU_PTES.iter().enumerate() {
        let va = VA_BASE + i as u64 * PAGE_SIZE;
        if start <= va && va < end {
            pte.store(0, Ordering::Release);
        }
    }
    if start <= VA_BASE && VA_END <= end {
        VMA_MAPPED.store(false, Ordering::Release);
    }
    for s in NOTIFIERS.iter().filter(|s| hit(s)) {
        let id = NotifierId(s.id.load(Ordering::Relaxed));
        svm.invalidate_end(id, start, end);
    }
}

// ---------------------------------------------------------------------------------------------
// DMA: identity mapping (no IOMMU): the bus address of a frame is its physical address.
// ---------------------------------------------------------------------------------------------

/// Live DMA mappings (each `map_page` is unmapped exactly once by the crate).
static DMA_LIVE: AtomicUsize = AtomicUsize::new(0);

/// The identity DMA mapper.
struct IdentityDma;

impl DmaMapper for IdentityDma {
    fn map_page(&self, pfn: u64, _order: u8, _dir: DmaDirection) -> Result<u64> {
        let addr = pfn.checked_mul(PAGE_SIZE).ok_or(Error::Fault)?;
        DMA_LIVE.fetch_add(1, Ordering::Relaxed);
        Ok(addr)
    }

    // Invalidation context: no allocation, no sleeping.
    fn unmap_page(&self, _addr: u64, _order: u8, _dir: DmaDirection) {
        DMA_LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The device page table: one PTE per page of the VMA.
// ---------------------------------------------------------------------------------------------

/// Device PTE bits: valid, writable; the bus address is in the page-aligned bits.
const DEV_VALID: u64 = 1;
const DEV_WRITE: u64 = 2;

static DEV_PTES: [AtomicU64; N_PAGES] = [const { AtomicU64::new(0) }; N_PAGES];
/// Number of zaps (each one stands for a device TLB invalidation).
static TLB_FLUSHES: AtomicUsize = AtomicUsize::new(0);

/// The device page table.
struct StaticPt;

impl DevicePageTable for StaticPt {
    // Invalidation context: no allocation, no sleeping.
    fn zap(&self, start: u64, end: u64) {
        for (i, pte) in DEV_PTES.iter().enumerate() {
            let va = VA_BASE + i as u64 * PAGE_SIZE;
            if start <= va && va < end {
                pte.store(0, Ordering::Release);
            }
        }
        TLB_FLUSHES.fetch_add(1, Ordering::Release);
    }
}

/// The driver's bind step: write the device PTEs of `range` from its page entries (run by
/// `Svm::bind` with the notifier lock held, so no invalidation completes meanwhile). Returns the
/// number of base pages mapped.
fn write_ptes(range: &Range<BareHost>, entries: &[PageEntry]) -> usize {
    let mut va = range.start();
    let mut mapped = 0usize;
    for e in entries {
        for k in 0..e.npages() {
            let off = k.wrapping_mul(PAGE_SIZE);
            let pte = page_index(va.wrapping_add(off)).and_then(|i| DEV_PTES.get(i));
            if let Some(pte) = pte {
                let w = if e.writable() { DEV_WRITE } else { 0 };
                pte.store(
                    e.addr().wrapping_add(off) | DEV_VALID | w,
                    Ordering::Release,
                );
                mapped = mapped.wrapping_add(1);
            }
        }
        va = va.wrapping_add(e.size());
    }
    mapped
}

/// Number of valid device PTEs.
fn valid_dev_ptes() -> usize {
    DEV_PTES
        .iter()
        .filter(|p| p.load(Ordering::Acquire) & DEV_VALID != 0)
        .count()
}

// ---------------------------------------------------------------------------------------------
// The platform.
// ---------------------------------------------------------------------------------------------

/// A monotonic "clock": every read advances it by 1 µs.
static TICKS: AtomicU64 = AtomicU64::new(0);

/// Everything the crate needs, over the statics above.
struct BarePlatform {
    mm: StaticMm,
    dma: IdentityDma,
    pt: StaticPt,
}

impl Platform for BarePlatform {
    type Mm = StaticMm;
    type Dma = IdentityDma;
    type Pt = StaticPt;
    type Mem = NoDeviceMemory;
    type Host = BareHost;

    fn mm(&self) -> &StaticMm {
        &self.mm
    }
    fn dma(&self) -> &IdentityDma {
        &self.dma
    }
    fn page_table(&self) -> &StaticPt {
        &self.pt
    }
    fn now_ns(&self) -> u64 {
        TICKS.fetch_add(1_000, Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// The entry point.
// ---------------------------------------------------------------------------------------------

/// The outcome, readable from a debugger: [`RUNNING`] until `_start` is done, then 0 if every
/// step passed, else the number of the first step that failed ([`PANICKED`] after a panic).
#[no_mangle]
pub static STATUS: AtomicU32 = AtomicU32::new(RUNNING);
const RUNNING: u32 = u32::MAX;
#[cfg_attr(feature = "no-panic-proof", allow(dead_code))]
const PANICKED: u32 = 101;

/// Drive the API once; returns 0 or the number of the failed step.
fn run() -> u32 {
    // 1. One device mirroring the whole 47-bit user address space, default chunk sizes.
    let platform = BarePlatform {
        mm: StaticMm,
        dma: IdentityDma,
        pt: StaticPt,
    };
    let Ok(svm) = Svm::new(platform, SvmConfig::new(0, 1 << 47)) else {
        return 1;
    };

    // 2. The device faults (write) on page 5 of the VMA: a range is created, its CPU pages are
    //    faulted in and DMA-mapped, and the driver writes its PTEs under the notifier lock.
    let fault_addr = VA_BASE + 5 * PAGE_SIZE;
    let Ok((range, mapped)) =
        svm.handle_fault_and_bind(fault_addr, Access::Write, Window::ALL, write_ptes)
    else {
        return 2;
    };
    let in_range = range.start() <= fault_addr && fault_addr < range.end();
    if !in_range
        || mapped == 0
        || valid_dev_ptes() != mapped
        || DMA_LIVE.load(Ordering::Relaxed) == 0
    {
        return 3;
    }
    drop(range);

    // 3. The CPU unmaps the VMA: invalidate_begin zaps the device PTEs, unmaps the DMA
    //    mappings and queues the range for the garbage collector; invalidate_end follows.
    cpu_munmap(&svm, VA_BASE, VA_END);
    if valid_dev_ptes() != 0 || DMA_LIVE.load(Ordering::Relaxed) != 0 || svm.gc_pending() != 1 {
        return 4;
    }

    // 4. The garbage collector destroys the range; its notifier, now empty, is unregistered.
    if svm.gc_run() != 1 || svm.counts() != (0, 0) || live_notifiers() != 0 {
        return 5;
    }

    // 5. A fault on the unmapped VMA fails cleanly.
    if svm
        .handle_fault(fault_addr, Access::Read, Window::ALL)
        .err()
        != Some(Error::Fault)
    {
        return 6;
    }

    // 6. Close: later calls report Closed.
    svm.close();
    if svm
        .handle_fault(fault_addr, Access::Read, Window::ALL)
        .err()
        != Some(Error::Closed)
    {
        return 7;
    }
    let stats = svm.stats();
    drop(svm);
    if stats.faults < 2 || TLB_FLUSHES.load(Ordering::Relaxed) == 0 || live_notifiers() != 0 {
        return 8;
    }
    // 7. Nothing leaked: every block the crate took from the pool is back.
    if BarePool::pool().used_blocks() != 0 {
        return 9;
    }
    0
}

/// The entry point (the loader must provide a stack).
#[no_mangle]
pub extern "C" fn _start() -> ! {
    let status = run();
    STATUS.store(status, Ordering::SeqCst);
    finish(status)
}

/// Stop: spin forever (bare metal), or exit the process (feature `linux-exit`).
fn finish(status: u32) -> ! {
    #[cfg(feature = "linux-exit")]
    exit_linux(status);
    #[cfg(not(feature = "linux-exit"))]
    {
        let _ = status;
        loop {
            core::hint::spin_loop();
        }
    }
}

/// `exit_group(status)`: lets the same binary run as a static Linux process for a smoke test.
#[cfg(feature = "linux-exit")]
fn exit_linux(status: u32) -> ! {
    // SAFETY: `exit_group` (syscall 231 on x86_64) takes one integer argument, touches no memory
    // of this process and does not return, so nothing it clobbers is ever observed.
    unsafe {
        core::arch::asm!(
            "syscall",
            in("rax") 231u64,
            in("rdi") u64::from(status),
            options(noreturn, nostack)
        )
    }
}

#[cfg(not(feature = "no-panic-proof"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    STATUS.store(PANICKED, Ordering::SeqCst);
    finish(PANICKED)
}

/// The no-panic proof: this handler calls a symbol that exists nowhere, so the binary links only
/// if the optimiser removed every call to the panic handler, i.e. no panic path is reachable from
/// `_start`.
#[cfg(feature = "no-panic-proof")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    extern "C" {
        fn gpusvm_no_panic_proof_failed_a_panic_path_is_reachable() -> !;
    }
    // SAFETY: never runs: the symbol is undefined, so a binary in which this call survives
    // optimisation does not link.
    unsafe { gpusvm_no_panic_proof_failed_a_panic_path_is_reachable() }
}
